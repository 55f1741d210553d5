"""Who and where this runner is, for log rows and lock holders. Never fails.

The Job runs as a numeric uid with no passwd entry and no USER/LOGNAME, where
`getpass.getuser()` raises; a log row must still be written, so that uid stands in.
"""

from __future__ import annotations

import functools
import getpass
import os
import socket


@functools.cache
def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # KeyError up to Python 3.12, OSError from 3.13
        return f"uid {os.getuid()}"


@functools.cache
def host() -> str:
    return socket.gethostname() or "unknown-host"
