"""Exec a command under part of a systemd unit's sandbox, where systemd is not PID 1.

    python3 sandbox_exec.py --umask 0077 --mdwe --allow 0,1,2,... --errno 1 -- CMD ARGS...

Applies, then ``execv``s CMD (so the PID stays the command's):

* ``--umask``: ``UMask=``;
* ``--mdwe``: ``MemoryDenyWriteExecute=yes`` as the kernel's ``prctl(PR_SET_MDWE,
  PR_MDWE_REFUSE_EXEC_GAIN)`` (no mapping may become writable and executable);
* ``--allow``: ``SystemCallFilter=`` as a seccomp filter: the listed x86-64 system call
  numbers are allowed, every other call fails with ``--errno`` (``SystemCallErrorNumber=``),
  and a call from another architecture kills the process (``SystemCallArchitectures=native``).

Used by ``tests/packaging/pkg.py`` (which computes the numbers from the unit); runs with
Debian's ``/usr/bin/python3``, standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
AUDIT_ARCH_X86_64 = 0xC000003E
# classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x50000, 0x7FFF0000
NR_OFFSET, ARCH_OFFSET = 0, 4  # struct seccomp_data


class SockFilter(ctypes.Structure):
    """``struct sock_filter``."""

    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    """``struct sock_fprog``."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _prctl(option: int, arg: object, arg2: object = 0) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, arg2, 0, 0) != 0:
        sys.exit(f"sandbox_exec: prctl({option}): {os.strerror(ctypes.get_errno())}")


def seccomp_program(allowed: list[int], errno: int) -> list[SockFilter]:
    """Kill foreign architectures; allow ``allowed``; fail the rest with ``errno``.

    One ``jeq nr`` + ``ret ALLOW`` pair per allowed call keeps every jump within the 8-bit
    offsets of classic BPF.
    """
    prog = [SockFilter(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET),
            SockFilter(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
            SockFilter(BPF_LD_W_ABS, 0, 0, NR_OFFSET)]
    for nr in sorted(set(allowed)):
        prog += [SockFilter(BPF_JEQ_K, 0, 1, nr), SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    prog.append(SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | (errno & 0xFFFF)))
    return prog


def install_seccomp(allowed: list[int], errno: int) -> None:
    """The filter for this process and everything it executes (no_new_privs first)."""
    prog = seccomp_program(allowed, errno)
    fprog = SockFprog(len(prog), (SockFilter * len(prog))(*prog))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--umask", default="")
    p.add_argument("--mdwe", action="store_true")
    p.add_argument("--allow", default="", help="comma-separated system call numbers")
    p.add_argument("--errno", type=int, default=1)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if args.umask:
        os.umask(int(args.umask, 8))
    if args.mdwe:
        _prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
    if args.allow:
        install_seccomp([int(n) for n in args.allow.split(",")], args.errno)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
