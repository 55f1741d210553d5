"""What the seal adds to Landlock (Linux): no capabilities, and a seccomp filter on what Landlock does not govern.

`drop_capabilities()` empties every capability set (effective, permitted, inheritable, ambient, bounding): root's
powers (freezing a filesystem, the immutable flag, mounts, the clock, the host name, the kernel log, raw sockets)
are gone, and with no_new_privs nothing executed gets them back. `install()` loads the filter (x86_64): sockets
only of the IP families, TCP (Landlock filters its ports) and, where allowed, UDP; so no Unix socket by path (a
local PostgreSQL, docker.sock: Landlock does not govern connect() there), no netlink, no raw or SCTP socket, no
io_uring (it makes sockets without socket()); chmod, chown, utime, xattrs, file_setattr, mounts and the ioctls that
change a file's flags or freeze its filesystem fail with EPERM, as does every 32-bit system call (other numbers).
Nor can it act on another process of the same user, which Landlock's scopes do not cover: prlimit64, the scheduler
and I/O priority calls and the page-migration calls take only pid 0 (itself: what glibc's setrlimit and nice pass).
Unix socket pairs only of SOCK_STREAM (a datagram pair can sendto() any datagram socket by path: syslog,
journald); no SysV IPC (a shared memory segment outlives the dry run), no listen() (Landlock governs bind, not the
ephemeral port listen() takes), no file lease (F_SETLEASE stalls the file's writers) and no kernel keyring.
clone3 fails with ENOSYS (CLONE_INTO_CGROUP would put a child into any cgroup, another service's; seccomp cannot read
its flags, which are in memory): glibc, Python and Node then fall back to clone, as under Docker's default profile.
"""

from __future__ import annotations

import ctypes
import os

PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
CAPABILITY_VERSION_3 = 0x20080522
# chmod, fchmod, chown, fchown, lchown, utime, setxattr, lsetxattr, fsetxattr, removexattr, lremovexattr, fremovexattr,
# utimes, fchownat, futimesat, fchmodat, utimensat, fchmodat2, setxattrat, removexattrat, file_setattr; pivot_root,
# mount, umount2, open_tree, move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr; io_uring_setup, _enter,
# _register (x86_64 numbers).
DENIED_X86_64 = (90, 91, 92, 93, 94, 132, 188, 189, 190, 197, 198, 199, 235, 260, 261, 268, 280, 452, 463, 466, 469,
                 155, 165, 166, 428, 429, 430, 431, 432, 433, 442, 425, 426, 427,
                 29, 30, 31, 64, 65, 66, 68, 69, 70, 71, 220, 50, 248, 249, 250)
# shmget, shmat, shmctl, semget, semop, semctl, msgget, msgsnd, msgrcv, msgctl, semtimedop; listen; add_key,
# request_key, keyctl.
SOCKET, IOCTL, SOCKETPAIR, FCNTL = 41, 16, 53, 72  # a stream pair stays: libuv's child stdio, asyncio use it
F_SETLEASE = 1024
# Calls whose first argument is a pid (0: the caller): prlimit64, sched_setparam, sched_setscheduler,
# sched_setaffinity, sched_setattr, migrate_pages, move_pages. setpriority and ioprio_set: (which, who).
SELF_ONLY = (302, 142, 144, 203, 314, 256, 279)
CLONE3 = 435
SETPRIORITY, IOPRIO_SET, PRIO_PROCESS, IOPRIO_WHO_PROCESS = 141, 251, 0, 1
AF_INET, AF_INET6, SOCK_STREAM, SOCK_DGRAM, SOCK_TYPE_MASK = 2, 10, 1, 2, 0xF
IPPROTO_IP, IPPROTO_TCP, IPPROTO_UDP = 0, 6, 17
# FS_IOC_SETFLAGS (and its 32-bit form), FS_IOC_FSSETXATTR, FIFREEZE, FITHAW, FS_IOC_SETVERSION (both),
# FS_IOC_ENABLE_VERITY: a read-only descriptor suffices for them, and Landlock's ioctl right covers devices only.
DENIED_IOCTLS = (0x40086602, 0x40046602, 0x401C5820, 0xC0045877, 0xC0045878, 0x40087602, 0x40047602, 0x40806685)
AUDIT_ARCH_X86_64, X32_BIT = 0xC000003E, 0x40000000
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
LD_ABS_W, JEQ, JGE, AND, RET = 0x20, 0x15, 0x35, 0x54, 0x06
ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
NR, ARCH, ARGS = 0, 4, 16  # offsets in struct seccomp_data (an argument's low 32 bits at ARGS + 8 * i)


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def covers() -> bool:
    """Whether this machine gets the seccomp filter (its numbers are x86_64's); elsewhere guarantee() says so."""
    return os.uname().machine == "x86_64"


def drop_capabilities(libc) -> None:
    """Every capability gone: the bounding set first (that needs CAP_SETPCAP, which goes last), then ambient,
    then effective, permitted and inheritable. Without root there is nothing to drop from the bounding set."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: a user's bounding set grants nothing
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = _CapHeader(CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.syscall(126, ctypes.byref(header), data) < 0:  # capset: lowering one's own sets is always allowed
        raise OSError(ctypes.get_errno(), "capset failed")


def install(libc, datagrams: bool) -> None:
    """The filter, for this process and all it starts; `datagrams`: whether UDP sockets stay allowed."""
    if not covers():
        return
    code = _assemble(_program(datagrams))
    filters = (_Filter * len(code))(*[_Filter(*c) for c in code])
    program = _Program(len(code), filters)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) < 0:
        raise OSError(ctypes.get_errno(), "seccomp filter failed")


def _program(datagrams: bool) -> list:
    """The filter with named jump targets: (code, true target, false target, k) or a label (str)."""
    load = lambda offset: (LD_ABS_W, None, None, offset)  # noqa: E731
    code = [load(ARCH), (JEQ, None, "deny", AUDIT_ARCH_X86_64), load(NR), (JGE, "deny", None, X32_BIT)]
    code += [(JEQ, "deny", None, nr) for nr in DENIED_X86_64] + [(JEQ, "nosys", None, CLONE3)]
    code += [(JEQ, "socket", None, SOCKET), (JEQ, "ioctl", None, IOCTL), (JEQ, "pair", None, SOCKETPAIR),
             (JEQ, "fcntl", None, FCNTL), *[(JEQ, "self", None, nr) for nr in SELF_ONLY],
             (JEQ, "prio", None, SETPRIORITY), (JEQ, "ioprio", None, IOPRIO_SET), (RET, None, None, ALLOW)]
    code += ["pair", load(ARGS + 8), (AND, None, None, SOCK_TYPE_MASK), (JEQ, "allow", "deny", SOCK_STREAM)]
    code += ["fcntl", load(ARGS + 8), (JEQ, "deny", "allow", F_SETLEASE)]
    code += ["prio", load(ARGS), (JEQ, "who", "deny", PRIO_PROCESS)]
    code += ["ioprio", load(ARGS), (JEQ, "who", "deny", IOPRIO_WHO_PROCESS)]
    code += ["who", load(ARGS + 8), (JEQ, "allow", "deny", 0)]
    code += ["self", load(ARGS), (JEQ, "allow", "deny", 0)]
    code += ["socket", load(ARGS), (JEQ, "family", None, AF_INET), (JEQ, "family", "deny", AF_INET6)]
    code += ["family", load(ARGS + 8), (AND, None, None, SOCK_TYPE_MASK), (JEQ, "protocol-tcp", None, SOCK_STREAM)]
    code += [(JEQ, "protocol-udp", "deny", SOCK_DGRAM)] if datagrams else [(RET, None, None, EPERM)]
    code += ["protocol-tcp", load(ARGS + 16), (JEQ, "allow", None, IPPROTO_IP), (JEQ, "allow", "deny", IPPROTO_TCP)]
    code += ["protocol-udp", load(ARGS + 16), (JEQ, "allow", None, IPPROTO_IP), (JEQ, "allow", "deny", IPPROTO_UDP)]
    code += ["ioctl", load(ARGS + 8), *[(JEQ, "deny", None, cmd) for cmd in DENIED_IOCTLS]]
    return code + ["allow", (RET, None, None, ALLOW), "deny", (RET, None, None, EPERM),
                   "nosys", (RET, None, None, ENOSYS)]


def _assemble(program: list) -> list[tuple[int, int, int, int]]:
    """Labels to BPF's relative forward jumps (None: the next instruction)."""
    at, index = {}, 0
    for item in program:
        if isinstance(item, str):
            at[item] = index
        else:
            index += 1
    code = []
    for item in program:
        if isinstance(item, str):
            continue
        op, true, false, k = item
        here = len(code) + 1
        jumps = (at[true] - here if true else 0, at[false] - here if false else 0)
        assert all(0 <= jump < 256 for jump in jumps), item  # BPF's conditional jumps are 8-bit
        code.append((op, *jumps, k))
    return code
