"""Host side of scripts/vm-test: builds (or reuses) the Debian 12 test image, boots it in QEMU
with the project on a second disk, and reads the result of the in-VM suite (tests/vm) back.

The image is built by vm/build-image and cached under vm/.cache/image-<key>, the key being a
hash of the recipe (vm/build-image, everything in vm/image/, the Python requirements), so a
rerun boots at once and a changed recipe rebuilds. The project travels as a raw tar archive on
a read-only virtio disk (serial "agentd-project"); the results come back as a raw tar archive
on a second disk (serial "agentd-results"): block devices need no guest driver beyond
virtio-blk, work the same under KVM and TCG, and give the guest no path into the host's files.
The VM has no network device at all. Boot is direct kernel boot; KVM is tried first (unless the
host is known to hang under it) with a short boot deadline, then TCG. Standard library only:
this runs with the system python3 before any venv exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import io
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET

VM_DIR = pathlib.Path(__file__).resolve().parent
REPO = VM_DIR.parent
IMAGE_RECIPE_FILES = ("build-image",)  # plus everything under vm/image/

KERNEL_STARTED = re.compile(rb"Linux version \d")
GUEST_STARTED = re.compile(rb"agentd-vmtest: started")
GUEST_MARKER = re.compile(rb"@@AGENTD-VMTEST (\w+)(?: ([^@]*))?@@")

RESULTS_DISK_BYTES = 256 * 1024 * 1024  # sparse; the guest's tar of logs and junit.xml

# Exit statuses of scripts/vm-test.
EXIT_PASSED, EXIT_FAILED, EXIT_HARNESS_ERROR = 0, 1, 2


class HarnessError(Exception):
    """The VM run could not produce a test result (build, boot, timeout, missing results)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    timeout: float  # the whole VM run, all boot attempts together
    accel: str  # auto | kvm | tcg
    kvm_kernel_timeout: float  # KVM: first kernel message, else it is taken as hung
    kvm_boot_timeout: float  # KVM: the test unit started, else fall back to TCG
    tcg_boot_timeout: float  # TCG: the test unit started, else the run fails
    memory_mib: int
    cpus: int
    rebuild: bool
    verbose: bool
    pytest_args: tuple[str, ...]


@dataclasses.dataclass
class BootOutcome:
    accel: str
    reached: str  # "nothing" | "kernel" | "guest" | "end"
    exit_status: int | None
    boot_seconds: float | None  # QEMU start -> agentd-vmtest started
    run_seconds: float  # QEMU start -> QEMU gone
    summary: str | None  # the guest's SUMMARY marker
    reason: str  # why it ended, for the report


def shown(path: pathlib.Path) -> str:
    """A path as the user would type it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def log(message: str) -> None:
    print(f"vm-test: {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Image


def requirements_text() -> str:
    """The Python requirements of the image: pyproject's dependencies and [test] extra, plus
    vm/image/requirements-vm.txt, one a line, in a stable order."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project.get("dependencies", []))
    wanted += project.get("optional-dependencies", {}).get("test", [])
    extra = (VM_DIR / "image" / "requirements-vm.txt").read_text().splitlines()
    wanted += [line.strip() for line in extra if line.strip() and not line.startswith("#")]
    return "".join(f"{req}\n" for req in sorted(set(wanted), key=str.lower))


def image_key(requirements: str) -> str:
    digest = hashlib.sha256()
    recipe = [VM_DIR / name for name in IMAGE_RECIPE_FILES]
    recipe += sorted(p for p in (VM_DIR / "image").rglob("*") if p.is_file())
    for path in recipe:
        digest.update(str(path.relative_to(VM_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(requirements.encode())
    for name in ("VM_TEST_MIRROR", "VM_TEST_SECURITY_MIRROR", "VM_TEST_IMAGE_SIZE",
                 "VM_TEST_KERNEL"):
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return digest.hexdigest()[:16]


def ensure_image(cache: pathlib.Path, rebuild: bool,
                 build_timeout: float) -> tuple[pathlib.Path, float | None]:
    """Returns the image directory and the build time (None when the cached one was used)."""
    requirements = requirements_text()
    image = cache / f"image-{image_key(requirements)}"
    with open(cache / "build.lock", "w") as lock:
        # INVARIANT: one build at a time per cache; a second run waits and then reuses it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.is_dir() and rebuild:
            shutil.rmtree(image)
        if image.is_dir():
            log(f"image: cached {shown(image)}")
            return image, None
        log(f"image: building {shown(image)} (Debian 12, mmdebstrap)")
        started = time.monotonic()
        with tempfile.NamedTemporaryFile("w", dir=cache, suffix=".txt") as req_file:
            req_file.write(requirements)
            req_file.flush()
            build = subprocess.Popen([str(VM_DIR / "build-image"), str(image), req_file.name],
                                     start_new_session=True)
            try:
                status = build.wait(timeout=build_timeout)
            except subprocess.TimeoutExpired:
                # mmdebstrap, apt and pip under it too; TERM first so that they clean up.
                os.killpg(build.pid, signal.SIGTERM)
                try:
                    build.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(build.pid, signal.SIGKILL)
                    build.wait()
                raise HarnessError(f"vm/build-image took longer than {build_timeout:.0f} s "
                                   f"(VM_TEST_BUILD_TIMEOUT)") from None
        if status != 0:
            raise HarnessError(f"vm/build-image failed with status {status}")
        elapsed = time.monotonic() - started
        for old in cache.glob("image-*"):
            if old != image and old.is_dir():
                shutil.rmtree(old)  # older recipes: a few GiB each, never used again
        log(f"image: built in {elapsed:.0f} s")
        return image, elapsed


# ---------------------------------------------------------------------------------------------
# Disks


def project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore, so that a new test file in
    tests/vm/ runs before it is committed (a fresh clone has none of the latter)."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout
    names = sorted({name for name in listing.decode().split("\0") if name})
    return [name for name in names if (REPO / name).is_file() or (REPO / name).is_symlink()]


def write_project_disk(path: pathlib.Path, pytest_args: tuple[str, ...]) -> int:
    """The project as a raw tar archive (a multiple of 512 bytes: a valid disk image)."""
    files = project_files()
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in files:
            tar.add(REPO / name, arcname=name, recursive=False)
        args = "".join(f"{arg}\n" for arg in pytest_args).encode()
        info = tarfile.TarInfo(".agentd-vmtest/pytest-args")
        info.size, info.mode, info.mtime = len(args), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(args))
    size = path.stat().st_size
    if size % 512:
        with open(path, "ab") as disk:
            disk.write(b"\0" * (512 - size % 512))
    return len(files)


def read_results_disk(disk: pathlib.Path, into: pathlib.Path) -> list[str]:
    try:
        with tarfile.open(disk, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for member in members:
                # Names come from the guest: keep base names only, never a path.
                data = tar.extractfile(member).read()
                (into / pathlib.Path(member.name).name).write_bytes(data)
            return [pathlib.Path(m.name).name for m in members]
    except tarfile.ReadError:
        return []  # the guest wrote nothing (all zeroes)


# ---------------------------------------------------------------------------------------------
# QEMU


def qemu_command(image: pathlib.Path, run_dir: pathlib.Path, accel: str, settings: Settings,
                 *, interactive: bool = False) -> list[str]:
    append = "console=ttyS0 root=/dev/vda rw panic=-1"
    if interactive:
        append += " systemd.mask=agentd-vmtest.service"
    else:
        # The login prompt would only interleave with the markers on the one serial line.
        append += " systemd.mask=serial-getty@ttyS0.service"
    # VM_TEST_KVM_CPU: another model for hosts whose KVM rejects "host" (here: an MSR assertion).
    cpu = os.environ.get("VM_TEST_KVM_CPU", "host") if accel == "kvm" else "max"
    return [
        "qemu-system-x86_64", "-accel", accel, "-cpu", cpu,
        "-m", str(settings.memory_mib), "-smp", str(settings.cpus),
        "-nographic", "-monitor", "none",
        "-serial", "mon:stdio" if interactive else "stdio",
        "-no-reboot", "-nic", "none",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", append,
        # snapshot=on: the guest's writes go to a temporary overlay; the cached image stays pristine.
        "-drive", f"file={image / 'rootfs.img'},format=raw,if=none,id=root,snapshot=on",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"file={run_dir / 'project.tar'},format=raw,if=none,id=project,readonly=on",
        "-device", "virtio-blk-pci,drive=project,serial=agentd-project",
        "-drive", f"file={run_dir / 'results.img'},format=raw,if=none,id=results",
        "-device", "virtio-blk-pci,drive=results,serial=agentd-results",
        "-device", "virtio-rng-pci",
    ]


def boot(image: pathlib.Path, run_dir: pathlib.Path, accel: str, settings: Settings,
         deadline: float) -> BootOutcome:
    """Runs one VM to its end, following the serial console. No sleeping: select() on QEMU's
    serial output with a timeout that is the nearest deadline."""
    serial_log = open(run_dir / "serial.log", "ab")
    serial_log.write(f"\n===== vm-test: booting with {accel} =====\n".encode())
    qemu_log = open(run_dir / "qemu.log", "ab")
    started = time.monotonic()
    proc = subprocess.Popen(qemu_command(image, run_dir, accel, settings),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=qemu_log,
                            start_new_session=True)
    if accel == "kvm":
        stage_deadlines = {"nothing": started + settings.kvm_kernel_timeout,
                           "kernel": started + settings.kvm_boot_timeout}
    else:
        stage_deadlines = {"nothing": started + settings.tcg_boot_timeout,
                           "kernel": started + settings.tcg_boot_timeout}
    reached, boot_seconds, summary, reason = "nothing", None, None, "QEMU exited"
    pending = b""
    try:
        while True:
            limit = min(deadline, stage_deadlines.get(reached, deadline))
            now = time.monotonic()
            if now >= limit:
                reason = ("hard timeout for the whole VM run" if limit == deadline else
                          f"no {'kernel output' if reached == 'nothing' else 'test unit start'} "
                          f"after {now - started:.0f} s")
                break
            ready, _, _ = select.select([proc.stdout], [], [], limit - now)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # QEMU closed its serial output: it has exited
            serial_log.write(chunk)
            serial_log.flush()
            if settings.verbose:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if reached == "nothing" and KERNEL_STARTED.search(line):
                    reached = "kernel"
                if reached in ("nothing", "kernel") and GUEST_STARTED.search(line):
                    reached, boot_seconds = "guest", time.monotonic() - started
                    log(f"{accel}: test unit started {boot_seconds:.0f} s after QEMU start")
                match = GUEST_MARKER.search(line)
                if match and match.group(1) == b"INSTALLED" and not settings.verbose:
                    log(f"{accel}: project installed, running tests/vm "
                        f"({time.monotonic() - started:.0f} s)")
                if match and match.group(1) == b"SUMMARY":
                    summary = (match.group(2) or b"").decode(errors="replace")
                if match and match.group(1) == b"END":
                    reached = "end"
                    # The guest powers off now; give it a bounded moment to do so.
                    stage_deadlines["end"] = time.monotonic() + 60
    finally:
        try:
            # Serial output closes a moment before QEMU exits; a guest that powered off
            # ends QEMU by itself.
            exit_status = proc.wait(timeout=10 if reached == "end" else 0.1)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            exit_status = proc.wait()
        proc.stdout.close()
        serial_log.close()
        qemu_log.close()
    if reached == "end":
        reason = "the suite finished"
    return BootOutcome(accel, reached, exit_status, boot_seconds,
                       time.monotonic() - started, summary, reason)


def kvm_verdict_file(cache: pathlib.Path) -> pathlib.Path:
    """Where this host's 'KVM hangs' finding is kept, keyed by what decides it."""
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    key = hashlib.sha256(f"{os.uname().release}\0{qemu.stdout}".encode()).hexdigest()[:12]
    return cache / f"kvm-unusable-{key}"


def accelerators(settings: Settings, cache: pathlib.Path) -> list[str]:
    if settings.accel != "auto":
        return [settings.accel]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("kvm: /dev/kvm not usable; TCG (software emulation)")
        return ["tcg"]
    verdict = kvm_verdict_file(cache)
    if verdict.exists():
        log(f"kvm: skipped, it failed on this host before ({verdict.read_text().strip()}; "
            f"remove {shown(verdict)} or pass --accel kvm to try again); TCG")
        return ["tcg"]
    return ["kvm", "tcg"]


def _died_booting(outcome: BootOutcome) -> bool:
    """QEMU exited before the test unit started, on its own (not a timeout): worth one more
    boot under TCG, whose emulation of a kernel patching its own text is not flawless."""
    return outcome.reached in ("nothing", "kernel") and outcome.reason == "QEMU exited"


def _panicked(run_dir: pathlib.Path) -> bool:
    return "Kernel panic" in tail(run_dir / "serial.log", 200)


def run_vm(image: pathlib.Path, run_dir: pathlib.Path, settings: Settings,
           cache: pathlib.Path) -> BootOutcome:
    deadline = time.monotonic() + settings.timeout
    outcome = None
    for accel in accelerators(settings, cache):
        for attempt in (1, 2):
            # An attempt that died may have written part of the results; start clean.
            with open(run_dir / "results.img", "wb") as results:
                results.truncate(RESULTS_DISK_BYTES)
            log(f"{accel}: booting (serial console in {shown(run_dir / 'serial.log')})")
            outcome = boot(image, run_dir, accel, settings, deadline)
            if not _died_booting(outcome) or accel == "kvm" or attempt == 2:
                break
            # Seen once (2026-12-08): the Debian guest kernel's int3 Oops in sched_clock_cpu
            # while it patched its own text, under multi-threaded TCG, 3 s into the boot.
            log(f"tcg: the guest died while booting ({outcome.reason} after "
                f"{outcome.run_seconds:.0f} s, reached: {outcome.reached}; serial.log has "
                f"{'a kernel panic' if _panicked(run_dir) else 'no panic'}); booting once more")
        if outcome.reached in ("guest", "end") or accel != "kvm":
            return outcome
        qemu_said = tail(run_dir / "qemu.log", 1).strip()
        log(f"kvm: gave up ({outcome.reason}, reached: {outcome.reached}"
            f"{'; QEMU: ' + qemu_said if qemu_said else ''}); falling back to TCG")
        if settings.accel == "auto":
            kvm_verdict_file(cache).write_text(
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {outcome.reason}\n")
    return outcome


# ---------------------------------------------------------------------------------------------
# Results


def junit_counts(junit: pathlib.Path) -> tuple[dict[str, int], list[str]]:
    root = ET.parse(junit).getroot()
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            counts["failed"] += 1
            message = (problem.get("message") or "").splitlines()
            failures.append(f"{name}: {message[0] if message else problem.tag}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failures


def tail(path: pathlib.Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} missing)"


def report(outcome: BootOutcome, run_dir: pathlib.Path, build_seconds: float | None,
           total_started: float) -> int:
    files = read_results_disk(run_dir / "results.img", run_dir)
    log(f"{outcome.accel}: VM ended: {outcome.reason} "
        f"(QEMU status {outcome.exit_status}, {outcome.run_seconds:.0f} s)")
    timing = [f"image {'cached' if build_seconds is None else f'built in {build_seconds:.0f} s'}"]
    if outcome.boot_seconds is not None:
        timing.append(f"boot to tests {outcome.boot_seconds:.0f} s ({outcome.accel})")
    timing.append(f"VM {outcome.run_seconds:.0f} s")
    timing.append(f"total {time.monotonic() - total_started:.0f} s")
    log("timing: " + ", ".join(timing))
    if "junit.xml" not in files:
        log(f"no test results came back (results disk: {files or 'empty'}; "
            f"console summary: {outcome.summary or 'none'})")
        print(tail(run_dir / "serial.log", 60))
        if "install.log" in files:
            print(tail(run_dir / "install.log", 30))
        log(f"artefacts in {shown(run_dir)}")
        return EXIT_HARNESS_ERROR
    counts, failures = junit_counts(run_dir / "junit.xml")
    status = re.search(r"status=(\d+)", (run_dir / "summary.txt").read_text()
                       if "summary.txt" in files else "")
    pytest_status = int(status.group(1)) if status else None
    for failure in failures:
        log(f"FAILED {failure}")
    if counts["failed"]:
        print(tail(run_dir / "pytest.log", 80))
    log(f"artefacts in {shown(run_dir)} (pytest.log, junit.xml, journal.txt, serial.log)")
    print(f"vm-test: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped", flush=True)
    if counts["failed"] or pytest_status != 0 or counts["passed"] == 0:
        if not counts["failed"]:
            log(f"pytest in the VM ended with status {pytest_status}")
        return EXIT_FAILED
    return EXIT_PASSED


# ---------------------------------------------------------------------------------------------
# Entry


def parse_args(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="scripts/vm-test",
        description="Run tests/vm inside a Debian 12 QEMU VM under systemd. "
                    "Arguments after -- go to pytest in the VM (e.g. -- -k smoke).")
    parser.add_argument("--timeout", type=float, default=float(env("VM_TEST_TIMEOUT", 720)),
                        help="hard limit in seconds for the VM run, all boots together "
                             "(env VM_TEST_TIMEOUT, default 720)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"),
                        default=env("VM_TEST_ACCEL", "auto"),
                        help="auto: KVM, falling back to TCG if it fails or hangs (env VM_TEST_ACCEL)")
    parser.add_argument("--kvm-boot-timeout", type=float, default=60.0,
                        help="seconds for a KVM guest to reach the test unit (default 60)")
    parser.add_argument("--tcg-boot-timeout", type=float, default=300.0,
                        help="seconds for a TCG guest to reach the test unit (default 300)")
    parser.add_argument("--memory", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    parser.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the image even if cached")
    parser.add_argument("--build-only", action="store_true", help="build the image and stop")
    parser.add_argument("--shell", action="store_true",
                        help="boot the image interactively (root, no password; the test unit "
                             "is masked; the project disk is attached; Ctrl-A X quits)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="copy the serial console to stdout as it comes")
    parser.add_argument("--print-requirements", action="store_true",
                        help="print the image's Python requirements and stop (vm/Vagrantfile)")
    parser.add_argument("pytest_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = Settings(timeout=args.timeout, accel=args.accel, kvm_kernel_timeout=15.0,
                        kvm_boot_timeout=args.kvm_boot_timeout,
                        tcg_boot_timeout=args.tcg_boot_timeout, memory_mib=args.memory,
                        cpus=args.cpus, rebuild=args.rebuild, verbose=args.verbose,
                        pytest_args=tuple(args.pytest_args))
    return settings, args


def main(argv: list[str]) -> int:
    total_started = time.monotonic()
    settings, args = parse_args(argv)
    if args.print_requirements:
        print(requirements_text(), end="")
        return EXIT_PASSED
    if os.geteuid() != 0:
        log("needs root (mmdebstrap --mode=root, mkfs); run it as root")
        return EXIT_HARNESS_ERROR
    # VM_TEST_CACHE: a cache outside the work tree outlives fresh clones (CI on a kept machine).
    cache = pathlib.Path(os.environ.get("VM_TEST_CACHE") or VM_DIR / ".cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        image, build_seconds = ensure_image(
            cache, settings.rebuild, float(os.environ.get("VM_TEST_BUILD_TIMEOUT", 900)))
        if args.build_only:
            return EXIT_PASSED
        run_dir = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=cache))
        count = write_project_disk(run_dir / "project.tar", settings.pytest_args)
        log(f"project: {count} files on the project disk")
        if args.shell:
            with open(run_dir / "results.img", "wb") as results:
                results.truncate(RESULTS_DISK_BYTES)
            accel = "tcg" if settings.accel == "auto" else settings.accel
            try:
                return subprocess.run(qemu_command(image, run_dir, accel, settings,
                                                   interactive=True)).returncode
            finally:
                shutil.rmtree(run_dir)
        outcome = run_vm(image, run_dir, settings, cache)
        # Keep the artefacts of the last run only, under a fixed name.
        last = cache / "last-run"
        if last.exists():
            shutil.rmtree(last)
        run_dir.rename(last)
        status = report(outcome, last, build_seconds, total_started)
        for bulky in ("project.tar", "results.img"):
            (last / bulky).unlink(missing_ok=True)
        return status
    except HarnessError as error:
        log(f"ERROR: {error}")
        return EXIT_HARNESS_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
