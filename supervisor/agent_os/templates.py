"""Compliance templates: ``hipaa_standard``, ``soc2_compliant`` and ``k12_safe``.

Each template is a ``Policy`` built from the rule tables below; every rule names the control it
implements in its ``metadata`` (``framework``, ``control``), and docs/templates.md maps each one
and says what no policy at this layer can enforce. Templates are overlays: they only *deny* (or
warn), never grant, so they compose in a ``PolicyStack`` or a strict merge above a sandbox policy
such as strict. Conditions carry the evidence: an action on protected data passes only when the
caller's context says so (``audit_logged``, ``encrypted``, ``mfa_verified``, ``confirmed``,
``method``); missing evidence never passes. ``SOC2Policy.enable_criteria`` and
``K12Policy.configure`` add and replace real patterns; they keep no state outside the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .policy import Pattern, Policy, Severity

# --- shared regex building blocks -------------------------------------------------------------

# A URL's scheme and optional userinfo, before the host.
_URL_START = r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^/?#@]*@)?"
# A command in command position: at the start, after a shell separator or `-c `, optionally
# behind one wrapper (env, nohup, xargs, ...) and a directory. Linear time (see test_templates).
_COMMAND = (
    r"(?:.*?(?:[;&|\n(){}`!]|\$\(|\s-c\s)\s*)?['\"]?"
    r"(?:(?:env|nohup|exec|command|nice|time|timeout|xargs|stdbuf|setsid|busybox)\s+"
    r"(?:[^;&|\n]*?\s)?)?(?:[^\s;&|]*/)?"
)


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(word.replace(".", r"\.") for word in words)


def url_of_domains(domains: Iterable[str]) -> str:
    """A regex matching any URL whose host is one of ``domains`` or a subdomain of one."""
    return (
        _URL_START
        + r"(?:[^/?#:@]*\.)?(?:"
        + _alternatives(domains)
        + r")\.?(?::[0-9]+)?(?:[/?#].*)?$"
    )


def host_of_domains(domains: Iterable[str]) -> str:
    """A regex matching a ``network_connect`` name target ``host:port`` for ``domains``."""
    return r"^(?:[^:/]*\.)?(?:" + _alternatives(domains) + r")\.?:[0-9]+$"


def command(names: Iterable[str], rest: str = r"(?:\s.*|$)") -> str:
    """A regex matching a command line that runs one of ``names`` anywhere in command position."""
    return _COMMAND + r"(?:" + "|".join(names) + r")" + rest


def _rule(
    framework: str,
    control: str,
    id: str,
    action_type: str,
    pattern: str,
    message: str,
    *,
    action: str = "deny",
    severity: str = "high",
    conditions: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": id,
        "action_type": action_type,
        "pattern": pattern,
        "action": action,
        "severity": severity,
        "message": message,
        "conditions": dict(conditions or {}),
        "metadata": {"framework": framework, "control": control, **extra},
    }


def _pattern(rule: Mapping[str, Any]) -> Pattern:
    return Pattern(
        id=rule["id"],
        action_type=rule["action_type"],
        pattern=rule["pattern"],
        action=rule["action"],
        severity=Severity.parse(rule["severity"]),
        message=rule["message"],
        conditions=rule["conditions"] or None,
        metadata=rule["metadata"],
    )


# --- HIPAA --------------------------------------------------------------------------------------

PHI_SQL = (
    r"(?i).*\b(?:patients?|patient_records|medical_records?|health_records?|diagnos[ie]s"
    r"|prescriptions?|medications?|lab_results|encounters|clinical_notes|phi)\b.*"
)
PHI_PATH = (
    r"(?i)(?:.*/(?:phi|ephi|patients?|patient_records|medical_records|health_records"
    r"|ehr|emr|hl7|fhir)/.*|.*\.(?:hl7|dcm|ccda|ccd)$)"
)
_PHI_DIRS = (
    r"(?:phi|ephi|patients?|patient_records|medical_records|health_records|ehr|emr|hl7|fhir)"
)


def _hipaa(control: str, id: str, action_type: str, pattern: str, message: str, **kw: Any):
    return _rule("HIPAA", control, id, action_type, pattern, message, **kw)


# Rule tables: one control a row: laid out by hand.
# fmt: off
HIPAA_RULES: tuple[dict[str, Any], ...] = (
    _hipaa("45 CFR 164.312(b) audit controls", "hipaa_phi_read_audit", "database_read", PHI_SQL,
           "PHI queries must be audit-logged (context audit_logged=true)",
           conditions={"require_audit_log": True}),
    _hipaa("45 CFR 164.312(e)(1) transmission security", "hipaa_phi_read_encrypted",
           "database_read", PHI_SQL,
           "PHI must travel over an encrypted connection (context encrypted=true)",
           conditions={"require_encryption": True}),
    _hipaa("45 CFR 164.312(b) audit controls; 164.312(c)(1) integrity", "hipaa_phi_write_audit",
           "database_write", PHI_SQL, "PHI changes must be audit-logged (audit_logged=true)",
           conditions={"require_audit_log": True}),
    _hipaa("45 CFR 164.312(a)(2)(iv) encryption and decryption", "hipaa_phi_write_encrypted",
           "database_write", PHI_SQL, "PHI must be written encrypted (encrypted=true)",
           conditions={"require_encryption": True}),
    _hipaa("45 CFR 164.312(d) person or entity authentication", "hipaa_phi_write_authenticated",
           "database_write", PHI_SQL,
           "PHI changes need an authenticated, MFA-verified approver (mfa_verified=true)",
           conditions={"require_mfa": True}),
    _hipaa("45 CFR 164.312(c)(1) integrity", "hipaa_phi_delete", "database_delete", PHI_SQL,
           "Deleting PHI is blocked; it requires elevated privileges"),
    _hipaa("45 CFR 164.312(c)(1) integrity", "hipaa_phi_schema_change", "database_execute",
           PHI_SQL, "DDL on PHI tables is blocked; it requires elevated privileges"),
    _hipaa("45 CFR 164.312(b) audit controls", "hipaa_phi_file_read_audit", "file_read",
           PHI_PATH, "PHI files may be read only when audit-logged (audit_logged=true)",
           conditions={"require_audit_log": True}),
    _hipaa("45 CFR 164.312(a)(2)(iv) encryption and decryption", "hipaa_phi_file_write_encrypted",
           "file_write", PHI_PATH, "PHI files must be written encrypted (encrypted=true)",
           conditions={"require_encryption": True}),
    _hipaa("45 CFR 164.312(c)(1) integrity", "hipaa_phi_file_delete", "file_delete", PHI_PATH,
           "Deleting PHI files is blocked; it requires elevated privileges"),
    _hipaa("45 CFR 164.312(a)(1) access control; 164.502(b) minimum necessary",
           "hipaa_phi_move_out", "file_move",
           r"(?i)(?=(?:(?! -> ).)*/" + _PHI_DIRS + r"/)(?:(?! -> ).)* -> (?!.*/" + _PHI_DIRS
           + r"/).*",
           "Moving PHI out of a PHI location is blocked"),
    _hipaa("45 CFR 164.312(e)(1) transmission security; 164.312(e)(2)(ii) encryption",
           "hipaa_require_tls", "network_request", r"^[a-zA-Z][a-zA-Z0-9+.-]*:.*",
           "Requests must use TLS (https://, wss://, ...)",
           conditions={"require_encryption": True}),
    _hipaa("45 CFR 164.312(e)(1) transmission security", "hipaa_plaintext_ports",
           "network_connect", r"^.*:(?:21|23|80|110|143|389|512|513|514)$",
           "Plaintext protocols (FTP, telnet, HTTP, POP3, IMAP, LDAP, r-services) are blocked"),
)
# fmt: on


def hipaa_standard() -> Policy:
    """HIPAA Security Rule technical safeguards (45 CFR 164.312) as patterns.

    Default deny (minimum necessary): add ``allow`` patterns for the data the agent needs; PHI
    access then still needs ``audit_logged``, ``encrypted`` (and ``mfa_verified`` for writes) in
    the evaluation context.
    """
    return Policy(
        name="hipaa_standard",
        description="HIPAA Security Rule technical safeguards (45 CFR 164.312)",
        version="1.0.0",
        default_action="deny",
        patterns=[_pattern(rule) for rule in HIPAA_RULES],
        metadata={
            "template": "hipaa_standard",
            "framework": "HIPAA",
            "docs": "docs/templates.md#hipaa_standard",
        },
    )


# --- SOC 2 --------------------------------------------------------------------------------------

SECRET_ENV = (
    r"(?i).*(?:SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|PRIVATE_?KEY"
    r"|ACCESS_?KEY|CREDENTIAL).*"
)
PASTE_SITES = (
    "pastebin.com",
    "paste.ee",
    "hastebin.com",
    "ghostbin.co",
    "transfer.sh",
    "file.io",
    "0x0.st",
    "termbin.com",
    "anonfiles.com",
    "dpaste.com",
    "dpaste.org",
    "wetransfer.com",
)
TRACKERS = (
    "google-analytics.com",
    "googletagmanager.com",
    "doubleclick.net",
    "connect.facebook.net",
    "segment.io",
    "segment.com",
    "mixpanel.com",
    "hotjar.com",
    "amplitude.com",
    "fullstory.com",
)


def _soc2(control: str, id: str, action_type: str, pattern: str, message: str, **kw: Any):
    return _rule("SOC 2", control, id, action_type, pattern, message, **kw)


# Rule tables: laid out by hand.
# fmt: off
SOC2_CRITERIA: dict[str, tuple[dict[str, Any], ...]] = {
    "security": (
        _soc2("CC6.1 logical access security", "soc2_sec_credential_files", "file_read",
              r".*/\.ssh/.*|^/etc/(?:shadow|gshadow)$|.*/(?:\.netrc|\.pgpass|\.git-credentials"
              r"|\.aws/credentials)$|^(?!.*/certifi/cacert\.pem$|/etc/ssl/certs/).*\.(?:pem|key)$",
              "Credential files (SSH keys, password hashes, private keys) are not readable"),
        _soc2("CC6.1 logical access security", "soc2_sec_secret_env", "env_read", SECRET_ENV,
              "Environment variables holding secrets are not readable"),
        _soc2("CC6.3 least privilege", "soc2_sec_privilege_escalation", "shell_execute",
              command(("sudo", "sudoedit", "su", "doas", "pkexec", "run0")),
              "Privilege escalation is not permitted"),
        _soc2("CC6.2 user registration and authorization", "soc2_sec_access_provisioning",
              "database_execute",
              r"(?i).*\b(?:GRANT|REVOKE|(?:CREATE|ALTER|DROP)\s+(?:USER|ROLE))\b.*",
              "Granting access or creating accounts requires the authorization process"),
        _soc2("CC6.6 boundary protection", "soc2_sec_cloud_metadata", "network_connect",
              r"^(?:169\.254\.169\.254|\[fd00:ec2::254\]|metadata\.google\.internal):[0-9]+$",
              "The cloud instance metadata service (credentials) is not reachable"),
        _soc2("CC6.7 transmission protection", "soc2_sec_plaintext_http", "network_request",
              r"^http://.*", "Plaintext HTTP is not allowed"),
        _soc2("CC6.8 unauthorized or malicious software", "soc2_sec_download_and_run",
              "shell_execute",
              r"(?=.*\b(?:curl|wget)\b).*\|\s*(?:sudo\s+)?(?:sh|bash|dash|zsh|python3?)\b.*",
              "Piping a download into an interpreter is not allowed"),
        _soc2("CC6.8 unauthorized or malicious software", "soc2_sec_exec_from_tmp",
              "process_spawn", r"^/(?:tmp|var/tmp|dev/shm)/.*",
              "Running programs from world-writable temporary directories is not allowed"),
        _soc2("CC7.2 monitoring of system components", "soc2_sec_log_deletion", "file_delete",
              r"^/var/log/.*", "Deleting system logs is not allowed"),
        _soc2("CC7.2 monitoring of system components", "soc2_sec_disable_monitoring",
              "shell_execute",
              r".*(?:\bhistory\s+-c\b|\bunset\s+HISTFILE\b|\bauditctl\s+-[De]\s*0?\b"
              r"|\bsystemctl\s+(?:stop|disable|mask)\s+(?:auditd|rsyslog|syslog"
              r"|systemd-journald)\b).*",
              "Disabling audit logging or shell history is not allowed"),
        _soc2("CC8.1 change management", "soc2_sec_force_push", "shell_execute",
              command(("git",), r"\s(?=[^;&|\n]*\bpush\b)(?=[^;&|\n]*\s(?:-f|--force"
                                r"(?:-with-lease)?|\+[^\s]+)(?:\s|$|=)).*"),
              "Force-pushing rewrites reviewed history; changes go through review"),
    ),
    "availability": (
        _soc2("A1.2 data backup and recovery", "soc2_avail_drop_data", "database_execute",
              r"(?i).*\b(?:DROP\s+(?:DATABASE|SCHEMA|TABLE)|TRUNCATE)\b.*",
              "Dropping or truncating data stores requires elevated privileges"),
        _soc2("A1.2 data backup and recovery", "soc2_avail_backup_deletion", "file_delete",
              r"(?i).*(?:/backups?/.*|\.(?:bak|backup|dump|snapshot)$)",
              "Deleting backups is not allowed"),
        _soc2("A1.1 capacity management", "soc2_avail_resource_exhaustion", "shell_execute",
              r".*(?::\(\)\s*\{[^}]{0,64}:\s*\|\s*:|\bstress(?:-ng)?\s).*",
              "Resource exhaustion (fork bombs, stress tests) is not allowed"),
        _soc2("A1.2 recovery infrastructure", "soc2_avail_service_disruption", "shell_execute",
              command(("shutdown", "reboot", "halt", "poweroff", "killall",
                       r"kill\s+-(?:9|KILL)\s+-1", r"systemctl\s+(?:stop|disable|mask|poweroff"
                                                   r"|reboot|halt)")),
              "Stopping services or the host is not allowed"),
        _soc2("A1.1 capacity management", "soc2_avail_write_rate", "database_write",
              r"(?s)\s*\S.*", "More than 600 database writes a minute exceed the capacity plan",
              conditions={"max_operations_per_minute": 600}),
    ),
    "processing_integrity": (
        _soc2("PI1.3 processing is complete and accurate", "soc2_pi_update_without_where",
              "database_write", r"(?i)\s*UPDATE\b.*",
              "UPDATE without a WHERE clause is not allowed",
              conditions={"require_where_clause": True}),
        _soc2("PI1.3 processing is complete and accurate", "soc2_pi_delete_without_where",
              "database_delete", r"(?i)\s*DELETE\b.*",
              "DELETE without a WHERE clause is not allowed",
              conditions={"require_where_clause": True}),
        _soc2("PI1.4 outputs are complete and accurate", "soc2_pi_bulk_update", "database_write",
              r"(?i)\s*UPDATE\b.*", "UPDATE of more than 1000 rows (or an unknown count)",
              action="warn", severity="medium", conditions={"max_affected_rows": 1000}),
        _soc2("PI1.4 outputs are complete and accurate", "soc2_pi_bulk_delete", "database_delete",
              r"(?i)\s*DELETE\b.*", "DELETE of more than 1000 rows (or an unknown count)",
              action="warn", severity="medium", conditions={"max_affected_rows": 1000}),
    ),
    "confidentiality": (
        _soc2("C1.1 identifies and protects confidential information", "soc2_conf_paste_sites",
              "network_request", url_of_domains(PASTE_SITES),
              "Uploading to paste and anonymous file-sharing sites is not allowed"),
        _soc2("C1.1 identifies and protects confidential information", "soc2_conf_paste_hosts",
              "network_connect", host_of_domains(PASTE_SITES),
              "Connecting to paste and anonymous file-sharing sites is not allowed"),
        _soc2("C1.1 identifies and protects confidential information", "soc2_conf_exfil_tools",
              "shell_execute", command(("scp", "sftp", "rsync", "nc", "ncat", "netcat", "socat",
                                        "ftp")),
              "Raw file-transfer tools bypass the approved APIs"),
        _soc2("C1.1 identifies and protects confidential information",
              "soc2_conf_sensitive_columns", "database_read",
              r"(?i).*\b(?:ssn|social_security|credit_card|card_number|cvv|password_hash"
              r"|salary|bank_account|iban)\b.*",
              "Confidential columns may be read only when audit-logged (audit_logged=true)",
              conditions={"require_audit_log": True}),
        _soc2("C1.1 identifies and protects confidential information", "soc2_conf_file_read",
              "file_read", r"(?i).*/(?:confidential|restricted)/.*",
              "Confidential files may be read only when audit-logged (audit_logged=true)",
              conditions={"require_audit_log": True}),
        _soc2("C1.2 disposes of confidential information", "soc2_conf_disposal", "file_delete",
              r"(?i).*/(?:confidential|restricted)/.*",
              "Disposing of confidential files needs confirmation (confirmed=true)",
              conditions={"require_confirmation": True}),
    ),
    "privacy": (
        _soc2("P6.1 disclosure to third parties", "soc2_priv_trackers", "network_request",
              url_of_domains(TRACKERS), "Sending data to analytics and ad trackers is not allowed"),
        _soc2("P6.1 disclosure to third parties", "soc2_priv_tracker_hosts", "network_connect",
              host_of_domains(TRACKERS), "Connecting to analytics and ad trackers is not allowed"),
        _soc2("P4.1 use of personal information", "soc2_priv_pii_read", "database_read",
              r"(?i).*\b(?:email|phone|address|date_of_birth|dob|birth_date|national_id"
              r"|passport)\b.*",
              "Personal data may be read only when audit-logged (audit_logged=true)",
              conditions={"require_audit_log": True}),
        _soc2("P4.3 secure disposal of personal information", "soc2_priv_pii_delete",
              "database_delete",
              r"(?i).*\b(?:users|customers|contacts|profiles|people|persons|subscribers)\b.*",
              "Deleting personal data needs confirmation and an audit log",
              conditions={"require_confirmation": True, "require_audit_log": True}),
    ),
}
# fmt: on


class SOC2Policy(Policy):
    """SOC 2 trust services criteria as patterns; "security" (the common criteria) is always on."""

    CRITERIA = tuple(SOC2_CRITERIA)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("name", "soc2_compliant")
        kwargs.setdefault("description", "SOC 2 trust services criteria (AICPA TSC 2017)")
        kwargs.setdefault("default_action", "deny")
        kwargs.setdefault(
            "metadata",
            {
                "template": "soc2_compliant",
                "framework": "SOC 2",
                "docs": "docs/templates.md#soc2_compliant",
            },
        )
        super().__init__(**kwargs)
        self._criteria: list[str] = []
        self.enable_criteria(["security"])

    @property
    def enabled_criteria(self) -> tuple[str, ...]:
        return tuple(self._criteria)

    def enable_criteria(self, criteria: Iterable[str] | str) -> SOC2Policy:
        """Add the patterns of each criterion; enabling one twice is a no-op.

        Raises ValueError, before changing anything, for an unknown criterion.
        """
        names = [criteria] if isinstance(criteria, str) else list(criteria)
        unknown = [name for name in names if name not in SOC2_CRITERIA]
        if unknown:
            raise ValueError(
                f"unknown SOC 2 criteria {unknown!r}; valid: {', '.join(SOC2_CRITERIA)}"
            )
        for name in names:
            if name in self._criteria:
                continue
            for rule in SOC2_CRITERIA[name]:
                self.add_pattern(_pattern(rule))
            self._criteria.append(name)
        self.settings["soc2_criteria"] = list(self._criteria)
        return self


def soc2_compliant() -> SOC2Policy:
    """A SOC 2 policy with the security criteria on; ``enable_criteria([...])`` adds the others."""
    return SOC2Policy()


# --- K-12 (CIPA) ----------------------------------------------------------------------------------

ADULT_DOMAINS = (
    "pornhub.com",
    "xvideos.com",
    "xnxx.com",
    "xhamster.com",
    "redtube.com",
    "youporn.com",
    "onlyfans.com",
    "chaturbate.com",
    "livejasmin.com",
    "stripchat.com",
    "spankbang.com",
    "brazzers.com",
    "rule34.xxx",
    "e-hentai.org",
    "nhentai.net",
    "xxx",
    "adult",
    "porn",
    "sex",
)  # the last four are TLDs
GAMBLING_DOMAINS = (
    "bet365.com",
    "pokerstars.com",
    "draftkings.com",
    "fanduel.com",
    "stake.com",
    "betway.com",
    "williamhill.com",
    "888casino.com",
    "casino.com",
    "bovada.lv",
)
CIRCUMVENTION_DOMAINS = (
    "torproject.org",
    "hidemyass.com",
    "kproxy.com",
    "proxysite.com",
    "hide.me",
    "croxyproxy.com",
    "vpnbook.com",
    "4everproxy.com",
    "hidester.com",
    "whoer.net",
)
DATING_DOMAINS = (
    "tinder.com",
    "bumble.com",
    "match.com",
    "okcupid.com",
    "grindr.com",
    "hinge.co",
    "pof.com",
)
CHAT_DOMAINS = (
    "omegle.com",
    "ome.tv",
    "chatroulette.com",
    "chatrandom.com",
    "emeraldchat.com",
    "4chan.org",
    "8kun.top",
)
SOCIAL_DOMAINS = (
    "facebook.com",
    "instagram.com",
    "tiktok.com",
    "snapchat.com",
    "twitter.com",
    "x.com",
    "reddit.com",
    "discord.com",
    "discord.gg",
    "tumblr.com",
    "threads.net",
    "telegram.org",
    "t.me",
    "whatsapp.com",
    "twitch.tv",
    "kick.com",
)
SEARCH_URLS = (
    r"(?:www\.)?google\.[a-z.]+/search",
    r"(?:www\.)?bing\.com/search",
    r"(?:html\.|www\.)?duckduckgo\.com",
    r"search\.yahoo\.com",
    r"yandex\.[a-z.]+",
    r"(?:www\.)?baidu\.com",
    r"(?:www\.)?ecosia\.org",
    r"(?:www\.)?startpage\.com",
    r"search\.brave\.com",
)
HACKING_TOOLS = (
    "nmap",
    "masscan",
    "hydra",
    "sqlmap",
    "msfconsole",
    "msfvenom",
    "john",
    "hashcat",
    "aircrack-ng",
    "nikto",
    "tor",
    "proxychains4?",
)

AGE_GROUPS = ("elementary", "middle", "high")
FILTER_LEVELS = ("strict", "moderate", "minimal")
_AGE_DEFAULT_FILTER = {"elementary": "strict", "middle": "moderate", "high": "minimal"}
_CIPA = "CIPA 47 USC 254(h)(5)(B)"  # the technology protection measure for minors


def _k12(control: str, id: str, action_type: str, pattern: str, message: str, **kw: Any):
    return _rule("CIPA", control, id, action_type, pattern, message, **kw)


def _domain_rules(control: str, id: str, domains: Iterable[str], what: str):
    domains = tuple(domains)
    return (
        _k12(control, id, "network_request", url_of_domains(domains), f"{what} is blocked"),
        _k12(
            control,
            id + "_connect",
            "network_connect",
            host_of_domains(domains),
            f"{what} is blocked",
        ),
    )


def _k12_rules(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    # Long because it is data: one entry per CIPA / COPPA / FERPA requirement, read as a table.
    rules: list[dict[str, Any]] = [
        *_domain_rules(
            f"{_CIPA}: obscene, child pornography, harmful to minors",
            "k12_adult_content",
            ADULT_DOMAINS,
            "Adult content",
        ),
        *_domain_rules(
            "CIPA 47 USC 254(l)(1)(A)(ii): safety in chat rooms",
            "k12_unmoderated_chat",
            CHAT_DOMAINS,
            "Anonymous and unmoderated chat",
        ),
        _k12(
            "CIPA 47 USC 254(l)(1)(A)(iii): unauthorized access, hacking",
            "k12_hacking_tools",
            "shell_execute",
            command(HACKING_TOOLS),
            "Scanning, password-cracking and anonymising tools are blocked",
        ),
        _k12(
            "CIPA 47 USC 254(l)(1)(A)(iv): disclosure of minors' personal information",
            "k12_personal_info_in_url",
            "network_request",
            r"(?i)(?:.*\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b.*|.*[?&](?:ssn|social_security|dob"
            r"|date_of_birth|birth_?date|home_address|street_address|phone(?:_number)?"
            r"|student_id)=.*)",
            "Sending personal information (SSN, birth date, address, phone) is blocked",
        ),
        _k12(
            "FERPA 34 CFR 99.32: record of access to education records",
            "k12_student_records",
            "database_read",
            r"(?i).*\b(?:students?|grades|transcripts?|attendance|iep|discipline)\b.*",
            "Student records may be read only when audit-logged (audit_logged=true)",
            conditions={"require_audit_log": True},
        ),
    ]
    if config["age_group"] == "elementary":
        rules.append(
            _k12(
                "CIPA 47 USC 254(l)(1)(A)(iv); COPPA 16 CFR 312 (under 13)",
                "k12_elementary_read_only_web",
                "network_request",
                r".*",
                "Elementary: no form submissions or uploads (GET and HEAD only)",
                conditions={"allowed_methods": ["GET", "HEAD"]},
            )
        )
    level = config["content_filter_level"]
    if level in ("moderate", "strict"):
        rules += [
            *_domain_rules(
                f"{_CIPA}: harmful to minors (gambling)",
                "k12_gambling",
                GAMBLING_DOMAINS,
                "Gambling",
            ),
            *_domain_rules(
                f"{_CIPA}: circumvention of the protection measure",
                "k12_circumvention",
                CIRCUMVENTION_DOMAINS,
                "Proxies and anonymisers",
            ),
            *_domain_rules(
                f"{_CIPA}: harmful to minors (dating)", "k12_dating", DATING_DOMAINS, "Dating sites"
            ),
        ]
    if level == "strict":
        rules.append(
            _k12(
                f"{_CIPA}: keyword filter",
                "k12_keyword_filter",
                "network_request",
                r"(?i).*(?:^|[^a-z])(?:porn|xxx|nsfw|hentai|nude|nudes|naked|sex|casino"
                r"|gambling|betting|escort)(?:[^a-z]|$).*",
                "URL contains a filtered keyword (strict filter; over-blocks by design)",
            )
        )
    if not config["allow_social_media"]:
        rules += list(
            _domain_rules(
                "CIPA 47 USC 254(l)(1)(A)(ii); district social media policy",
                "k12_social_media",
                SOCIAL_DOMAINS,
                "Social media",
            )
        )
    search = _URL_START + r"(?:" + "|".join(SEARCH_URLS) + r")"
    if not config["allow_external_search"]:
        rules.append(
            _k12(
                f"{_CIPA}: district search policy",
                "k12_external_search",
                "network_request",
                search + r"(?:[:/?#].*)?$",
                "External search engines are blocked",
            )
        )
    else:
        rules.append(
            _k12(
                f"{_CIPA}: safe search enforcement",
                "k12_safe_search",
                "network_request",
                _URL_START + r"(?:(?:www\.)?google\.[a-z.]+/search"
                r"(?![^#]*[?&]safe=(?:active|strict)\b)|(?:www\.)?bing\.com/search"
                r"(?![^#]*[?&]adlt=strict\b)|(?:html\.|www\.)?duckduckgo\.com/?"
                r"(?![^#]*[?&]kp=1\b)\?).*",
                "Search without SafeSearch (safe=active, adlt=strict, kp=1) is blocked",
            )
        )
    return rules


class K12Policy(Policy):
    """CIPA-oriented content filter and safety controls for K-12; ``configure`` rebuilds them."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("name", "k12_safe")
        kwargs.setdefault("description", "K-12 safety: CIPA content filtering and protections")
        # A content filter blocks categories over an otherwise open web: default allow. Put it
        # above strict (PolicyStack or strict merge) to also sandbox files and commands.
        kwargs.setdefault("default_action", "allow")
        kwargs.setdefault(
            "metadata",
            {"template": "k12_safe", "framework": "CIPA", "docs": "docs/templates.md#k12_safe"},
        )
        super().__init__(**kwargs)
        self._configured_ids: list[str] = []
        self._config: dict[str, Any] = {}
        self.configure(
            age_group="elementary",
            allow_social_media=False,
            allow_external_search=False,
            content_filter_level="strict",
        )

    @property
    def configuration(self) -> dict[str, Any]:
        return dict(self._config)

    def configure(
        self,
        age_group: str | None = None,
        allow_social_media: bool | None = None,
        allow_external_search: bool | None = None,
        content_filter_level: str | None = None,
    ) -> K12Policy:
        """Replace the template's patterns for these settings; omitted ones keep their value
        (the filter level follows a changed age group unless given). Bad values: ValueError."""
        config = dict(self._config)
        if age_group is not None:
            if age_group not in AGE_GROUPS:
                raise ValueError(
                    f"age_group must be one of {', '.join(AGE_GROUPS)}; got {age_group!r}"
                )
            if content_filter_level is None and age_group != config.get("age_group"):
                config["content_filter_level"] = _AGE_DEFAULT_FILTER[age_group]
            config["age_group"] = age_group
        for name, value in (
            ("allow_social_media", allow_social_media),
            ("allow_external_search", allow_external_search),
        ):
            if value is not None:
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be True or False, got {value!r}")
                config[name] = value
        if content_filter_level is not None:
            if content_filter_level not in FILTER_LEVELS:
                raise ValueError(
                    f"content_filter_level must be one of "
                    f"{', '.join(FILTER_LEVELS)}; got {content_filter_level!r}"
                )
            config["content_filter_level"] = content_filter_level
        patterns = [_pattern(rule) for rule in _k12_rules(config)]  # build all before changing
        for pattern_id in self._configured_ids:
            if self.has_pattern(pattern_id):
                self.remove_pattern(pattern_id)
        for pattern in patterns:
            self.add_pattern(pattern)
        self._configured_ids = [p.id for p in patterns]
        self._config = config
        self.settings["k12"] = dict(config)
        return self


def k12_safe() -> K12Policy:
    """The K-12 template, configured for the most protective setting until ``configure``."""
    return K12Policy()


__all__ = [
    "hipaa_standard",
    "soc2_compliant",
    "k12_safe",
    "SOC2Policy",
    "K12Policy",
    "HIPAA_RULES",
    "SOC2_CRITERIA",
    "AGE_GROUPS",
    "FILTER_LEVELS",
]
