"""The daemon's configuration (agentd/daemon/config.py): documented defaults, unknown keys rejected
with their place named, grants decide who may launch which policy."""

from __future__ import annotations

import grp

import pytest

from agentd.daemon.config import ConfigError, DaemonConfig, Grant, load_config


def test_every_field_has_a_default_and_a_description():
    for model in (DaemonConfig, Grant, DaemonConfig.model_fields["audit"].annotation):
        for name, info in model.model_fields.items():
            assert not info.is_required(), f"{model.__name__}.{name} has no default"
            if name != "audit":
                assert info.description, f"{model.__name__}.{name} is undocumented"
    config = DaemonConfig()
    assert config.policy_dir == "/etc/agentd/policies"
    assert config.socket_path == "/run/agentd/agentd.sock"
    assert config.audit.path == "/var/log/agentd/flight.jsonl"
    assert config.grants == []


def test_unknown_keys_are_rejected_with_their_place(tmp_path):
    path = tmp_path / "agentd.yaml"
    path.write_text("policy_dir: /x\naudit:\n  fsynk: always\nsocket_pth: /y\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    message = str(exc.value)
    assert f"{path}: audit.fsynk" in message
    assert f"{path}: socket_pth" in message


def test_bad_values_and_bad_yaml_name_the_file(tmp_path):
    path = tmp_path / "agentd.yaml"
    path.write_text("audit: {fsync: sometimes}\n")
    with pytest.raises(ConfigError, match="audit.fsync"):
        load_config(str(path))
    path.write_text("grants: [\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(str(path))
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(path))


def test_missing_default_file_means_defaults_but_an_explicit_one_must_exist(tmp_path, monkeypatch):
    monkeypatch.setattr("agentd.daemon.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.yaml"))
    assert load_config() == DaemonConfig()
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(str(tmp_path / "absent.yaml"))


def test_grants_by_user_group_policy_and_audit_mode():
    staff_gid = grp.getgrnam("nogroup").gr_gid
    config = DaemonConfig(grants=[
        Grant(users=["nobody"], policies=["strict"]),
        Grant(groups=["nogroup"], policies=["read_only"], audit_mode=True),
        Grant(users=["4242"], policies=["*"]),
    ])
    nobody = 65534
    assert config.may_launch(0, {0}, "anything", "audit") is None          # root: always
    assert config.may_launch(nobody, set(), "strict", "enforce") is None
    assert "not granted" in config.may_launch(nobody, set(), "permissive", "enforce")
    assert "--mode audit" in config.may_launch(nobody, set(), "strict", "audit")
    assert config.may_launch(1234, {staff_gid}, "read_only", "audit") is None
    assert "not granted" in config.may_launch(1234, {1234}, "read_only", "enforce")
    assert config.may_launch(4242, set(), "permissive", "enforce") is None
