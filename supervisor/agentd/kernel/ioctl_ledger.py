"""The ioctl request-code ledger: which ``ioctl(2)`` commands change a file, a file system or a
device, and how agentd handles each. Data, read by the seccomp filter and the syscall table.

An ioctl acts on a descriptor, and some act on the file behind a descriptor that was opened for
*reading* (``chattr +i`` is ``FS_IOC_SETFLAGS`` on an ``O_RDONLY`` descriptor), so the decision
made at the open says nothing about them. Each code here has one ``handling``:

- ``TRACED``: the filter stops for it and the tracer judges it as a ``file_write`` of the
  descriptor's path (``trace/syscall_table.py``), so the agent may still chattr its own files
  where the policy lets it write them, and nowhere else.
- ``REFUSED``: refused in the kernel (EPERM, ``seccomp.TRACER_INVARIANTS``): it changes a whole
  file system, a shared keyring or another process, not one file a policy could name.
- ``WRITE_FD``: allowed without a stop, because the kernel itself requires a descriptor open for
  writing (``generic_file_rw_checks``), whose open the tracer already judged as a ``file_write``.

Every other ioctl runs without a tracer stop (``TCGETS``, ``FIONREAD``, ``FIONBIO``,
``TIOCGWINSZ`` ...). Codes are the x86_64 values of ``linux/fs.h``, ``fsverity.h``,
``fscrypt.h``, ``btrfs.h``, ``blkpg.h``, ``blkzoned.h``, ``pr.h``, ``loop.h``, ``sockios.h``
and ext4's ``EXT4_IOC_*``; a test compiles the headers and compares. The kernel reads the
command as a 32-bit int: every rule compares the low 32 bits only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IoctlRequest", "LEDGER", "TRACED", "REFUSED", "WRITE_FD", "codes"]

TRACED = "traced"
REFUSED = "refused"
WRITE_FD = "write_fd"


@dataclass(frozen=True, slots=True)
class IoctlRequest:
    """One request code: its name, what it changes, how agentd handles it, and why."""

    name: str
    code: int
    changes: str
    handling: str
    reason: str = ""


def _traced(name: str, code: int, changes: str) -> IoctlRequest:
    return IoctlRequest(name, code, changes, TRACED, "file_write of the descriptor's path")


def _refused(name: str, code: int, changes: str, reason: str) -> IoctlRequest:
    return IoctlRequest(name, code, changes, REFUSED, reason)


_FS_WIDE = "changes the whole file system, not a file a policy names"
_KEYRING = "the file system's shared encryption keyring, not a file"

# The ledger: one code a line, laid out by hand.
# fmt: off
LEDGER: tuple[IoctlRequest, ...] = (
    # --- attributes and state of one file or directory (an O_RDONLY descriptor suffices) ------
    _traced("FS_IOC_SETFLAGS", 0x40086602, "inode flags: immutable, append-only, nodump, ..."),
    _traced("FS_IOC32_SETFLAGS", 0x40046602, "inode flags (the 32-bit spelling)"),
    _traced("FS_IOC_SETVERSION", 0x40087602, "the inode generation number"),
    _traced("FS_IOC32_SETVERSION", 0x40047602, "the inode generation number (32-bit)"),
    _traced("EXT4_IOC_SETVERSION", 0x40086604, "the inode generation number (ext4's number)"),
    _traced("EXT4_IOC32_SETVERSION", 0x40046604, "the inode generation number (ext4, 32-bit)"),
    _traced("FS_IOC_FSSETXATTR", 0x401C5820, "xflags (immutable, append), project id, hints"),
    _traced("FS_IOC_ENABLE_VERITY", 0x40806685, "makes the file read-only for ever (fs-verity)"),
    _traced("FS_IOC_SET_ENCRYPTION_POLICY", 0x800C6613, "encrypts an empty directory (fscrypt)"),
    _traced("EXT4_IOC_MIGRATE", 0x00006609, "the file's on-disk block map"),
    _traced("EXT4_IOC_ALLOC_DA_BLKS", 0x0000660C, "allocates the file's delayed blocks"),
    _traced("BTRFS_IOC_DEFRAG", 0x50009402, "rewrites the file's extents"),
    _traced("BTRFS_IOC_DEFRAG_RANGE", 0x40309410, "rewrites the file's extents"),
    _traced("BTRFS_IOC_SNAP_CREATE", 0x50009401, "a new subvolume (snapshot) in the directory"),
    _traced("BTRFS_IOC_SNAP_CREATE_V2", 0x50009417, "a new subvolume (snapshot) in the directory"),
    _traced("BTRFS_IOC_SUBVOL_CREATE", 0x5000940E, "a new subvolume in the directory"),
    _traced("BTRFS_IOC_SUBVOL_CREATE_V2", 0x50009418, "a new subvolume in the directory"),
    _traced("BTRFS_IOC_SNAP_DESTROY", 0x5000940F, "deletes a subvolume of the directory"),
    _traced("BTRFS_IOC_SNAP_DESTROY_V2", 0x5000943F, "deletes a subvolume of the directory"),
    _traced("BTRFS_IOC_SUBVOL_SETFLAGS", 0x4008941A, "makes a subvolume read-only or writable"),
    _traced("BTRFS_IOC_SET_RECEIVED_SUBVOL", 0xC0C89425, "a subvolume's received UUID"),
    # --- block devices and loop devices: the descriptor's path is the device -------------------
    # (most also need CAP_SYS_ADMIN, which no agent keeps: kernel/capabilities.py)
    _traced("BLKROSET", 0x0000125D, "the device's read-only flag"),
    _traced("BLKRRPART", 0x0000125F, "re-reads the partition table"),
    _traced("BLKFLSBUF", 0x00001261, "flushes the device's buffers"),
    _traced("BLKRASET", 0x00001262, "the device's read-ahead"),
    _traced("BLKFRASET", 0x00001264, "the device's file read-ahead"),
    _traced("BLKPG", 0x00001269, "adds, removes or resizes partitions"),
    _traced("BLKBSZSET", 0x40081271, "the device's block size"),
    _traced("BLKTRACESETUP", 0xC0481273, "starts block tracing of the device"),
    _traced("BLKTRACESTART", 0x00001274, "block tracing"),
    _traced("BLKTRACESTOP", 0x00001275, "block tracing"),
    _traced("BLKTRACETEARDOWN", 0x00001276, "block tracing"),
    _traced("BLKDISCARD", 0x00001277, "discards blocks: their data is lost"),
    _traced("BLKSECDISCARD", 0x0000127D, "securely discards blocks"),
    _traced("BLKZEROOUT", 0x0000127F, "zeroes blocks"),
    _traced("BLKRESETZONE", 0x40101283, "resets zones of a zoned device"),
    _traced("BLKOPENZONE", 0x40101286, "opens zones"),
    _traced("BLKCLOSEZONE", 0x40101287, "closes zones"),
    _traced("BLKFINISHZONE", 0x40101288, "finishes zones"),
    _traced("IOC_PR_REGISTER", 0x401870C8, "persistent reservations of the device"),
    _traced("IOC_PR_RESERVE", 0x401070C9, "persistent reservations"),
    _traced("IOC_PR_RELEASE", 0x401070CA, "persistent reservations"),
    _traced("IOC_PR_PREEMPT", 0x401870CB, "persistent reservations"),
    _traced("IOC_PR_PREEMPT_ABORT", 0x401870CC, "persistent reservations"),
    _traced("IOC_PR_CLEAR", 0x401070CD, "persistent reservations"),
    _traced("LOOP_SET_FD", 0x00004C00, "binds a file to the loop device"),
    _traced("LOOP_CLR_FD", 0x00004C01, "detaches the loop device"),
    _traced("LOOP_SET_STATUS", 0x00004C02, "the loop device's offset, limit, flags"),
    _traced("LOOP_SET_STATUS64", 0x00004C04, "the loop device's offset, limit, flags"),
    _traced("LOOP_CHANGE_FD", 0x00004C06, "the loop device's backing file"),
    _traced("LOOP_SET_CAPACITY", 0x00004C07, "the loop device's size"),
    _traced("LOOP_SET_DIRECT_IO", 0x00004C08, "the loop device's I/O mode"),
    _traced("LOOP_SET_BLOCK_SIZE", 0x00004C09, "the loop device's block size"),
    _traced("LOOP_CONFIGURE", 0x00004C0A, "binds and configures the loop device"),
    _traced("LOOP_CTL_ADD", 0x00004C80, "creates a loop device (/dev/loop-control)"),
    _traced("LOOP_CTL_REMOVE", 0x00004C81, "removes a loop device (/dev/loop-control)"),
    # --- the whole file system or a shared keyring: no file for a rule to name ----------------
    _refused("FIFREEZE", 0xC0045877, "freezes every write to the file system", _FS_WIDE),
    _refused("FITHAW", 0xC0045878, "thaws the file system", _FS_WIDE),
    _refused("FITRIM", 0xC0185879, "discards the file system's free blocks", _FS_WIDE),
    _refused("FS_IOC_SETFSLABEL", 0x41009432, "the file system's label", _FS_WIDE),
    _refused("EXT4_IOC_SETFSUUID", 0x4008662C, "the file system's UUID", _FS_WIDE),
    _refused("EXT4_IOC_SHUTDOWN", 0x8004587D, "shuts the file system down (also XFS's GOINGDOWN)",
             _FS_WIDE),
    _refused("EXT4_IOC_RESIZE_FS", 0x40086610, "grows the file system", _FS_WIDE),
    _refused("EXT4_IOC_GROUP_EXTEND", 0x40086607, "grows the file system", _FS_WIDE),
    _refused("EXT4_IOC_GROUP_ADD", 0x40286608, "grows the file system", _FS_WIDE),
    _refused("EXT4_IOC_CHECKPOINT", 0x4004662B, "checkpoints (and may discard) the journal",
             _FS_WIDE),
    _refused("EXT4_IOC_SWAP_BOOT", 0x00006611, "swaps the file with the boot loader inode",
             _FS_WIDE),
    _refused("BTRFS_IOC_RESIZE", 0x50009403, "resizes a device of the file system", _FS_WIDE),
    _refused("BTRFS_IOC_DEFAULT_SUBVOL", 0x40089413, "the subvolume mounted by default",
             _FS_WIDE),
    _refused("FS_IOC_ADD_ENCRYPTION_KEY", 0xC0506617, "unlocks encrypted directories", _KEYRING),
    _refused("FS_IOC_REMOVE_ENCRYPTION_KEY", 0xC0406618, "locks encrypted directories",
             _KEYRING),
    _refused("FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS", 0xC0406619, "locks them for every user",
             _KEYRING),
    # FIDEDUPERANGE's destinations are descriptors in memory, which may be read-only (their
    # owner may dedupe), and which a filter cannot see: refused rather than half-judged.
    _refused("FIDEDUPERANGE", 0xC0189436, "shares extents with files named only in memory",
             "destination descriptors live in memory, unjudged; dedupe tools only"),
    # --- whom SIGIO/SIGURG reach: another process (the process family) -------------------------
    _refused("FIOSETOWN", 0x00008901, "the process a socket's SIGIO/SIGURG goes to",
             "the target pid is in memory, where the tracer cannot pin it; fcntl(F_SETOWN) "
             "is traced and judged instead"),
    _refused("SIOCSPGRP", 0x00008902, "the process a socket's SIGIO/SIGURG goes to",
             "as FIOSETOWN"),
    _refused("FIOASYNC", 0x00005452, "turns SIGIO on for the descriptor",
             "on a terminal the kernel sends SIGIO to its foreground process group, which "
             "holds the supervisor and the user's other commands; fcntl(F_SETFL, O_ASYNC) is "
             "refused alike"),
    # --- need a descriptor open for writing: the open was the decision -------------------------
    IoctlRequest("FICLONE", 0x40049409, "the destination's content (reflink copy)", WRITE_FD,
                 "the destination must be open for writing (cp --reflink uses it)"),
    IoctlRequest("FICLONERANGE", 0x4020940D, "a range of the destination's content", WRITE_FD,
                 "the destination must be open for writing"),
)
# fmt: on


def codes(handling: str) -> tuple[int, ...]:
    """The request codes of one handling, in ledger order, without repeats."""
    return tuple(dict.fromkeys(r.code for r in LEDGER if r.handling == handling))


# INVARIANT: one code, one handling (a code refused and traced would be refused, silently).
assert len({r.code for r in LEDGER}) == len({(r.code, r.handling) for r in LEDGER})
