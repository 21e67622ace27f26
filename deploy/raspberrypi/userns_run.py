"""Run a command in a private user, mount and PID namespace with its own binfmt_misc.

WHY: building an arm64 root on an x86_64 host needs the kernel to hand every
aarch64 executable to qemu-aarch64-static (debootstrap's second stage and the
install script spawn hundreds of processes). Hosts without a global
binfmt_misc registration (CI machines, VMs) cannot do that, and registering one
globally changes the machine for everybody. Since Linux 6.7 binfmt_misc can be
mounted per user namespace: the registration made here is seen only by this
command and its children and disappears with them, as do the /proc mounts made
inside the namespace, so nothing is left mounted on the host after a crash.

The namespace maps uids/gids 0-65535 onto the same ids outside (we are root on
the host), so files created in the root get their real owners (dpkg chowns to
system users such as _apt or shadow).

Usage: python3 userns_run.py [--qemu PATH] [--proc ROOT] -- COMMAND [ARG...]
  --qemu PATH  register PATH (qemu-aarch64-static) as the aarch64 interpreter
  --proc ROOT  mount a fresh proc on ROOT/proc before running (never /sys)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
ID_RANGE = 65536
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
# The standard aarch64 ELF magic and mask (as in Debian's qemu-user-static binfmt entry).
AARCH64_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


def fail(message: str) -> None:
    print(f"userns_run: {message}", file=sys.stderr)
    sys.exit(125)


def run(argv: list[str]) -> None:
    result = subprocess.run(argv)
    if result.returncode != 0:
        fail(f"{' '.join(argv)} failed with exit code {result.returncode}")


def inside(args: argparse.Namespace) -> int:
    """In the new namespaces, as uid 0 with full capabilities there: mount, register, exec."""
    run(["mount", "--make-rprivate", "/"])
    if args.proc:
        target = os.path.join(args.proc, "proc")
        if os.path.islink(target) or not os.path.isdir(target):
            fail(f"{target} is not a directory (debootstrap makes it a symlink to /proc in containers)")
        # Before binfmt_misc is mounted: a new proc is only allowed while the host's proc is fully visible.
        run(["mount", "-t", "proc", "proc", target])
    if args.qemu:
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])
        # F: the kernel opens the interpreter now, so it works inside any chroot.
        rule = f":qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{os.path.abspath(args.qemu)}:F"
        with open(os.path.join(BINFMT_DIR, "register"), "w") as handle:
            handle.write(rule)
    os.execvp(args.command[0], args.command)
    return 127


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qemu", help="qemu-aarch64-static to register for aarch64 ELF binaries")
    parser.add_argument("--proc", help="root directory on whose /proc a fresh proc is mounted")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given")
    if os.geteuid() != 0:
        fail("must run as root (it maps the host's uids 0-65535 into the namespace)")

    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.close(go_w)
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) != 0:
            err = ctypes.get_errno()
            fail(f"unshare(user, mount, pid) failed: {os.strerror(err)}")
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            fail("parent could not write the uid/gid maps")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        # The first child in a new PID namespace is its init; fork once so it can reap and exit cleanly.
        grandchild = os.fork()
        if grandchild == 0:
            try:
                sys.exit(inside(args))
            except OSError as exc:
                fail(f"setting up the namespace failed: {exc}")
        _, status = os.waitpid(grandchild, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.waitstatus_to_exitcode(status) >= 0 else 128 - os.waitstatus_to_exitcode(status))
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) != b"1":
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status) or 125
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{child}/{name}", "w") as handle:
            handle.write(f"0 0 {ID_RANGE}\n")
    os.write(go_w, b"1")
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
