"""The kernel's part of a Python patch's child process (Linux): what it may read, write and trace.

`restrict(readable, writable)` applies Landlock to the calling process (the child, before it loads the
patch): files are readable only beneath the given folders (Python, its packages, the migrator package, the
patch folder, the CA bundle, /usr, /lib, /etc, /dev) and writable only beneath its own temporary HOME. So
the project's `.env`, secret files and /proc/<runner>/* cannot be opened, whatever their path or mode, and
Landlock forbids tracing a process outside the sandbox (no ptrace or process_vm_readv of the runner). It
holds for root too. `non_dumpable()` is the runner's own part: its memory and /proc files are closed to
processes of the same user (root with CAP_SYS_PTRACE excepted, which Landlock covers for the child).
"""

from __future__ import annotations

import ctypes
import os
from typing import Iterable

PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
# landlock_create_ruleset / add_rule / restrict_self: the same numbers on every architecture (unified table).
CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION, RULE_PATH_BENEATH = 1, 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ALL_ABI1 = (1 << 13) - 1  # execute, write, read, read dir, remove dir/file, make char/dir/reg/sock/fifo/block/sym
READ = EXECUTE | READ_FILE | READ_DIR
SYSTEM_READABLE = ("/usr", "/lib", "/lib64", "/bin", "/etc", "/dev")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (not Linux, too old, or turned off)."""
    try:
        version = _libc().syscall(CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def non_dumpable() -> None:
    """The runner's memory and /proc/<pid>/{environ,mem} closed to its own user's other processes."""
    try:
        _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def restrict(readable: Iterable[str], writable: Iterable[str]) -> bool:
    """Landlock this process: read only beneath `readable`, write only beneath `writable`. False without Landlock."""
    if not abi():
        return False
    libc = _libc()
    attr = _RulesetAttr(ALL_ABI1)
    ruleset = libc.syscall(CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(p, READ) for p in readable] + [(p, ALL_ABI1) for p in writable]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a folder this system lacks (/lib64)
            try:
                if not os.path.isdir(path):
                    access &= EXECUTE | READ_FILE | WRITE_FILE  # a file takes file rights only
                rule = _PathBeneath(access, fd)
                if libc.syscall(ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 or libc.syscall(RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return True


def guarantee() -> str:
    """What a dry run's seal holds on this machine, for doctor and the dry run's note (truthful either way)."""
    if abi():
        return ("a patch runs sealed in a process of its own: only the read-only URL, no MONGO_URL, DB_* or AWS "
                "secret in its environment, and no .env, secret file or runner memory within its reach (Landlock)")
    return ("a patch runs in a process of its own with only the read-only URL in its environment, but this kernel has "
            "no Landlock: a deliberate one can still read files the runner's user can (.env, secret files)")
