"""Run a command the way the chart runs the operator's container, without a container engine:

- every filesystem read-only (`readOnlyRootFilesystem: true`; the chart mounts no writable
  volume), except /proc, /sys and /dev, which a container runtime provides too;
- user 65532, group 65532, no supplementary groups (`runAsUser`, `runAsGroup`);
- no capabilities, and none to gain (`capabilities: drop: [ALL]`,
  `allowPrivilegeEscalation: false`, which is the kernel's no_new_privs).

    python tools/devcluster/sandbox.py -- python -m sidecarless run

It must start as root (the test harness is root on this machine). It makes a private mount
namespace and remounts everything read-only, then enters a new user namespace in which it
is user 65532 and executes the command, which so holds no capability anywhere. User 65532
of that namespace is root outside it: that is what lets the command read the interpreter and
the test cluster's files, which sit under a directory only root may open. A container image
makes them readable by everyone instead; either way nothing is writable.

Stdlib only: it runs before the command's own PYTHONPATH matters.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

USER = 65532
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
# What a container runtime mounts itself: left as they are.
RUNTIME_MOUNTS = ("/proc", "/sys", "/dev")
# Per-mount flags a read-only remount must keep (the kernel refuses to clear some of them).
KEPT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def mounts() -> list[tuple[str, int]]:
    """(mount point, flags to keep) of every mount this process sees, parents first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, options = _unescape(fields[4]), fields[5].split(",")
        flags = 0
        for option in options:
            flags |= KEPT_FLAGS.get(option, 0)
        found.append((point, flags))
    return found


def is_runtime_mount(point: str) -> bool:
    return any(point == top or point.startswith(top + "/") for top in RUNTIME_MOUNTS)


def make_read_only() -> None:
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for point, flags in mounts():
        if is_runtime_mount(point):
            continue
        _check(
            libc.mount(None, point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None),
            f"remount {point} read-only",
        )


def become_unprivileged_user() -> None:
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    _check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{USER} {outer_uid} 1")
    Path("/proc/self/gid_map").write_text(f"{USER} {outer_gid} 1")
    # Leaving the first user namespace cleared the parent-death signal the harness set.
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    last_capability = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for capability in range(last_capability + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0), f"drop capability {capability}")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: sandbox.py -- COMMAND [ARG ...]")
    make_read_only()
    become_unprivileged_user()
    # A user other than 0 loses every capability at exec: the command starts with none.
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
