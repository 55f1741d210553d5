"""The files of sql/ and mongo/ as the runner takes them: regular files inside their folder, of a bounded size.

A file in a pull request is read by `plan`, `status` and `sql lint` on a reviewer's machine, so what it is gets
checked with stat before anything opens it: a symlink out of the folder would print what it points at (a
credentials file), a FIFO would hang the command, a device (`/dev/zero`) would be read without end. A symlink to
a regular file inside the folder is taken as that file (e.g. one rollback shared by two migrations). A hard link
is a file with more than one name, one of which may be outside (a credentials file): refused too (git stores none,
so a checkout never has one).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from migrator.errors import USAGE, MigratorError

MAX_MIB = 64  # one file's limit: a pg_dump baseline of a large schema is a few MiB
MAX_BYTES = MAX_MIB << 20
# The longest file name most filesystems take (ext4, APFS, NTFS: 255 bytes).
NAME_MAX = 255
MAX_NESTED = 10_000  # names looked at under a subfolder of sql/ (or a link to a folder) for a migration

_KINDS = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def shown(path: Path | str) -> str:
    """A path as one printable line: a newline or control character in a name is shown escaped."""
    return ascii(str(path))[1:-1] if not str(path).isprintable() else str(path)


def check_folder(folder: Path, what: str = "migrations folder") -> None:
    """The folder itself as its files are taken: a symlink to a place outside the directory that holds the link (a
    repository committing `sql -> ../../elsewhere`) is refused; a link beside its target (`sql -> sql.v2`) is taken.
    Only the folder's own name is looked at: links further up (macOS's /tmp) are the machine's, not the repository's."""
    if not folder.is_symlink():
        return
    holder = folder.absolute().parent.resolve()
    try:
        target = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return  # dangling or a loop: "not found" follows
    if not target.is_relative_to(holder):
        raise MigratorError(f"{what} {shown(folder)} is a symlink to {shown(target)}, outside {shown(holder)}; the "
                            "runner reads only a folder of the repository's own: point --sql-dir (or SQL_DIR) at the "
                            "real folder, or replace the link with the folder", USAGE)


def problem(path: Path, folder: Path) -> str | None:
    """Why `path`, an entry of `folder`, is not a file the runner may read (what, then what to do), or None.

    Only stat is used: nothing is opened, so a FIFO cannot block and a device is never read."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            target = path.resolve(strict=True)
            if not target.is_relative_to(folder.resolve()):
                return (f"is a symlink to {shown(target)}, outside {shown(folder)}; the runner reads only files inside "
                        "the folder: copy the file in, or remove the link")
            info = target.stat()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        why = getattr(exc, "strerror", None) or "a symlink loop"
        return f"cannot be read ({why}); a dangling link? fix or remove it"
    if kind := not_regular(info.st_mode):
        return f"is {kind}; remove it, or move it out of the folder"
    if info.st_nlink > 1:
        return (f"is a hard link ({info.st_nlink} names for one file; another may be outside {shown(folder)}); the "
                "runner reads only files of the folder's own: copy the file in (cp), or remove the link")
    if info.st_size > MAX_BYTES:
        return (f"is {info.st_size / (1 << 20):.1f} MiB, over the runner's limit of {MAX_MIB} MiB for one file; "
                "split it into several")
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied); fix its permissions"
    return None


def not_regular(mode: int) -> str | None:
    """What a path that is no regular file is, in words ("a FIFO (named pipe), not a regular file"), else None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS.items() if test(mode)), None)
    return f"{kind + ', ' if kind else ''}not a regular file"


def first_below(folder: Path, wanted) -> Path | None:
    """The first file in `folder` or below whose name `wanted` accepts, in name order. Names only, nothing opened;
    links below it are not followed, and past MAX_NESTED names one line refuses it (a link to / must not walk the
    disk)."""
    seen = 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        if found := next((name for name in sorted(names) if wanted(name)), None):
            return Path(root) / found
        seen += len(dirs) + len(names)
        if seen > MAX_NESTED:
            raise MigratorError(f"{shown(folder)} holds over {MAX_NESTED} names, not a folder of migrations; the "
                                "runner reads only the files directly in its folder: move it out, or remove the link",
                                USAGE)
    return None


def check(path: Path, folder: Path) -> None:
    """One line that stops the command, naming the file, unless `path` is a file the runner may read."""
    found = problem(path, folder)
    if found:
        raise MigratorError(f"{shown(path)} {found}", USAGE)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, opened without blocking and checked again on the open file (what stat saw may have
    been replaced since): a regular file of the folder's own (one name, never a link out of its folder) of at
    most MAX_BYTES, else one line. OSError passes through."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:  # a symlink: problem() accepted one into the folder; a link swapped in since is not
        if exc.errno != errno.ELOOP:
            raise
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(Path(os.path.realpath(path.parent))):
            raise MigratorError(f"{shown(path)} is a symlink to {shown(target)}, outside its folder; the runner reads "
                                "only files inside the folder: copy the file in, or remove the link", USAGE)
        fd = os.open(target, flags)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MigratorError(f"{shown(path)} is not a regular file; remove it, or move it out of the folder", USAGE)
        if info.st_nlink != 1:
            raise MigratorError(f"{shown(path)} is a hard link ({info.st_nlink} names for one file); the runner reads "
                                "only files of the folder's own: copy the file in (cp), or remove the link", USAGE)
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise MigratorError(f"{shown(path)} is over the runner's limit of {MAX_MIB} MiB for one file; split it into "
                            "several", USAGE)
    return data


def check_new_name(prefix: str, name: str, suffix: str) -> None:
    """The file `new` is about to write, prefix + name + suffix (its longest), fits the file name limit."""
    size = len(f"{prefix}{name}{suffix}".encode("utf-8"))
    if size > NAME_MAX:
        room = NAME_MAX - len(f"{prefix}{suffix}".encode("utf-8"))
        raise MigratorError(
            f"the name makes a file name of {size} bytes ({prefix}{name[:20]}...{suffix}), over the limit of "
            f"{NAME_MAX} bytes for a file name; shorten the name to at most {room} characters", USAGE)
