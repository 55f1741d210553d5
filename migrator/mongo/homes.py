"""A patch's HOME (its working folder, mongosh's and Node's files): a fresh temporary folder per patch, removed when
the patch ends. A runner killed by SIGKILL cannot remove it; the next run does: each runner holds an flock on its
HOME's folder while the patch runs (the kernel drops it when the runner dies, however it dies), so a leftover is one
of this user's HOMEs that nobody holds. The age check covers the instant between a folder's creation and its flock.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time

# hcm-patch-<runner's pid>-<random>: a folder named otherwise (an older runner's, without the flock) is left alone
LEFTOVER = re.compile(r"hcm-(?:patch|mongosh)-[0-9]+-")
LEFT_AFTER = 60  # seconds: a HOME younger than this may be one whose runner has not taken its flock yet


class Home:
    """A patch's HOME, held (flock) until cleanup(); leftovers of killed runners are removed first."""

    def __init__(self, prefix: str):
        sweep()
        self.name = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
        self._fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def cleanup(self) -> None:
        if self._fd is not None:
            shutil.rmtree(self.name, ignore_errors=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc) -> None:
        self.cleanup()


def sweep() -> None:
    """Remove this user's patch HOMEs that no live runner holds (their runner was killed)."""
    top, uid, now = tempfile.gettempdir(), os.getuid(), time.time()
    try:
        entries = list(os.scandir(top))
    except OSError:
        return
    for entry in entries:
        try:
            if not LEFTOVER.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
            if stat.st_uid != uid or now - stat.st_mtime < LEFT_AFTER:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile, or not ours to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live runner's
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)
