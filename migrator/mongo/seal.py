"""The kernel's part of a patch's sealed process (Linux): what it may read, write, connect to and signal.

`restrict(readable, writable, ports)` applies Landlock to the calling process (a dry run's patch child, or
mongosh, before the patch loads): files are readable only beneath the given folders (Python, its packages,
the migrator package, the patch folder, the CA bundle, /usr, /lib, of /etc only what the interpreters read
(CA certificates, hosts, resolv.conf, passwd, ...: no shadow, ssh or ssl/private) and of /dev only null, zero
and urandom) and writable, truncatable and with device ioctls only beneath its own temporary HOME. So the
project's `.env`, secret files, /proc/<runner>/* and the operator's terminal are out of reach, whatever
their path or mode, and Landlock forbids tracing a process outside the sandbox. Each right the kernel's
Landlock ABI offers is handled: truncate (ABI 3), device ioctls (5); TCP only to `ports`, no bind (4);
no signal or abstract UNIX socket outside the sandbox (6: a dry run cannot kill a real run's runner).
What Landlock does not govern is seccomp.py's: every capability dropped (root's included), sockets only TCP
(and UDP for an SRV URI's DNS) over IP: no Unix socket by path, datagram pair, netlink or raw, no listen(); no
chmod, chown, utime, xattrs, file flags or mounts; prlimit and priorities only on itself; no SysV IPC, lease or
keyring. `pin_names()`: the servers' addresses, looked up by the runner (no DNS inside).
`non_dumpable()` is the runner's own part: its memory and /proc files are closed to processes of the same
user (root with CAP_SYS_PTRACE excepted, which Landlock covers for the child).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Iterable

from migrator.errors import USAGE, MigratorError
from migrator.mongo import seccomp
from migrator.mongo.seccomp import covers as seccomp_covers  # noqa: F401 (the tests' name)

PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
# landlock_create_ruleset / add_rule / restrict_self: the same numbers on every architecture (unified table).
CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION, RULE_PATH_BENEATH, RULE_NET_PORT = 1, 1, 2
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ALL_ABI1 = (1 << 13) - 1  # execute, write, read, read dir, remove dir/file, make char/dir/reg/sock/fifo/block/sym
MAKE_CHAR, MAKE_BLOCK = 1 << 6, 1 << 11
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
# Never granted, even in HOME: root could make a device node of a disk or terminal there and open it.
DEVICES = MAKE_CHAR | MAKE_BLOCK | IOCTL_DEV
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE  # what a rule on a file (not a folder) takes
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
READ = EXECUTE | READ_FILE | READ_DIR
# Of /etc only what Python, OpenSSL, glibc's resolver and Node read (CA certificates, names, users, time zone, the
# loader's cache): never /etc/shadow, /etc/ssh, /etc/ssl/private or a service's secrets.
ETC_READABLE = ("ssl/certs", "ssl/openssl.cnf", "pki/tls/certs", "pki/ca-trust/extracted", "ca-certificates",
                "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "services", "protocols",
                "passwd", "group", "localtime", "timezone", "ld.so.cache", "mongosh.conf")
SYSTEM_READABLE = ("/usr", "/lib", "/lib64", "/bin", *(f"/etc/{name}" for name in ETC_READABLE), "/dev/null",
                   "/dev/zero", "/dev/urandom")
SYSTEM_WRITABLE = ("/dev/null",)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (not Linux, too old, or turned off)."""
    try:
        version = _libc().syscall(CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def handled(version: int) -> _RulesetAttr:
    """Every right this ABI version knows: what is handled and not allowed by a rule is denied."""
    fs = ALL_ABI1 | (REFER if version >= 2 else 0) | (TRUNCATE if version >= 3 else 0)
    fs |= IOCTL_DEV if version >= 5 else 0
    net = BIND_TCP | CONNECT_TCP if version >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    return _RulesetAttr(fs, net, scoped)


def non_dumpable() -> None:
    """The runner's memory and /proc/<pid>/{environ,mem} closed to its own user's other processes."""
    try:
        _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def restrict(readable: Iterable[str], writable: Iterable[str], ports: Iterable[int] = (),
             datagrams: bool = True) -> bool:
    """Landlock this process: read only beneath `readable`, write only beneath `writable`, TCP connect only to
    `ports` (any host: Landlock knows ports, not addresses), no bind; then no capability and the seccomp filter
    (seccomp.py; `datagrams`: whether UDP stays open). False without Landlock."""
    version = abi()
    if not version:
        _beyond_landlock(datagrams)
        return False
    libc = _libc()
    attr = handled(version)
    ruleset = libc.syscall(CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(p, READ) for p in readable] + [(p, attr.handled_access_fs & ~DEVICES) for p in writable]
        for path, access in rules:
            _add_path(libc, ruleset, path, access & attr.handled_access_fs)
        for port in sorted(set(ports)) if attr.handled_access_net else ():
            rule = _NetPort(CONNECT_TCP, port)
            if libc.syscall(ADD_RULE, ruleset, RULE_NET_PORT, ctypes.byref(rule), 0) < 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for TCP port {port}")
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise OSError(ctypes.get_errno(), "no_new_privs failed")
        seccomp.drop_capabilities(libc)  # before Landlock: it reads /proc/sys
        if libc.syscall(RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
        seccomp.install(libc, datagrams)
        global _signals_scoped
        _signals_scoped = bool(attr.scoped & SCOPE_SIGNAL)
    finally:
        os.close(ruleset)
    return True


def _beyond_landlock(datagrams: bool) -> None:
    """Linux without Landlock (an older kernel, or turned off): still no capability and the same seccomp filter."""
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
        raise OSError(ctypes.get_errno(), "no_new_privs failed")
    seccomp.drop_capabilities(libc)
    seccomp.install(libc, datagrams)


_signals_scoped = False  # this process is in a Landlock domain that cannot signal outside itself


def end_descendants() -> bool:
    """SIGKILL every process this sealed process started, whatever their session or group (a daemon a patch
    left would outlive the group kill): kill(-1) reaches only this Landlock domain's processes when signals are
    scoped, and never the caller. Nothing (False) anywhere else: there kill(-1) would reach all the user's."""
    if not _signals_scoped:
        return False
    try:
        os.kill(-1, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # none left
    return True


def looked_up(hosts: Iterable[str]) -> dict[str, list]:
    """The servers' names looked up now, before the seal refuses UDP (and so DNS): getaddrinfo's answers by name
    (a name that does not resolve is left out: the connection fails and says so)."""
    import socket

    known = {}
    for host in set(hosts):
        try:
            known[host] = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
        except OSError:
            pass
    return known


def pin_names(known: dict[str, list]) -> None:
    """socket.getaddrinfo answers the servers' names from `known` (looked_up() by the runner) after the seal
    (pymongo calls it for each new connection); other names resolve only from /etc/hosts in the seal."""
    import socket

    lookup = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in known:
            return lookup(host, port, family, type, proto, flags)
        number = port if isinstance(port, int) else int(port or 0)
        return [(f, t, p, c, (address[0], number, *address[2:])) for f, t, p, c, address in known[host]
                if family in (0, f)]

    socket.getaddrinfo = getaddrinfo


def check_folder(folder: Path) -> None:
    """A dry run's patch folder is readable to the patch: refuse one that holds `.env` (the working folder's, the
    project's, its own) or a NAME_FILE secret (named in the environment or in the working folder's .env, which the
    settings read), rather than hand them to it (one line; nothing ran)."""
    from migrator.env import Env

    if not abi():
        return  # nothing is sealed here: guarantee() says what a patch can read
    where = Path(folder).resolve()
    named = [Path(v) for v in Env.load().named_files()]
    for secret in (where / ".env", Path.cwd() / ".env", Path(__file__).resolve().parents[2] / ".env", *named):
        if secret.is_file() and secret.resolve().is_relative_to(where):
            raise MigratorError(f"the patch folder {folder} (--mongo-dir / MONGO_DIR) holds {secret}, which a dry "
                                "run's patch could read: move the patches to a folder of their own", USAGE)


def _add_path(libc, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a folder this system lacks (/lib64)
    try:
        if not os.path.isdir(path):
            access &= FILE_RIGHTS  # a file takes file rights only
        rule = _PathBeneath(access, fd)
        if libc.syscall(ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


def guarantee() -> str:
    """What a dry run's seal holds on this machine, for doctor and the dry run's note (truthful either way)."""
    version = abi()
    linux = sys.platform.startswith("linux")
    if seccomp.covers():
        beyond = ("no Unix socket by path (a local database that trusts local users), datagram socket pair, netlink "
                  "or raw socket, no listen(), no chmod, chown, times, xattrs, file flags or mounts, no limit or "
                  "priority set on another process (a real run's runner, a server), no SysV IPC, file lease, "
                  "keyring or clone3 (which moves a child into another cgroup) (seccomp); no UDP (the runner looks "
                  "the servers' names up for it) except with a mongodb+srv URI (the driver's DNS)")
    else:
        beyond = ("it can still connect to Unix sockets by path (a local database that trusts local users), send "
                  "UDP, set the CPU or file limits of the user's processes (a real run's runner, a server), leave SysV "
                  "IPC behind, as root move a child into another cgroup (clone3) and change the mode, owner, times "
                  "or flags of files the runner's user owns (the seccomp filter is x86_64 only)")
    if not version and not linux:
        return ("a patch runs in a process of its own with only the read-only URL in its environment, but this system "
                "has no Landlock: a deliberate patch can still read and write the files the runner's user can (.env, "
                "secret files; a patch planted in the patch folder for the next --run), as root read the runner's "
                "memory, signal any process (a real run's runner) and connect anywhere")
    if not version:
        return ("a patch runs in a process of its own with only the read-only URL in its environment and no "
                f"capability, even as root; {beyond}; but this kernel has no Landlock: a deliberate patch can still "
                "read and write the files the runner's user can (.env, secret files; a patch planted in the patch "
                "folder for the next --run), signal the user's processes (a real run's runner) and connect over TCP "
                "anywhere")
    lacks = [what for needed, what in ((3, "truncate files"), (4, "connect to any host and port"),
                                       (5, "use device ioctls"), (6, "signal other processes (a real run's runner)"))
             if version < needed]
    held = ("a patch runs sealed in a process of its own: only the read-only URL, no MONGO_URL, DB_* or AWS secret "
            "in its environment, no .env, secret file, terminal or runner memory within its reach, TCP only to the "
            f"URI's ports (Landlock), no capability, even as root; {beyond}")
    if lacks:
        held += f"; this kernel's Landlock (ABI {version}) cannot stop it from: {', '.join(lacks)}"
    return held
