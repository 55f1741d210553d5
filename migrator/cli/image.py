"""The image's default command: `runner.py migrate` plus the options in ARGS, never through a shell.

DIGIT's chart runs the image with no command and can set only variables, so ARGS (e.g. "--parallel 4") is its
one way to give flags. It is split into words as a shell splits them (quotes group), but nothing in it runs:
`$(...)`, `;`, `|` and `*` stay text the runner's options refuse. The runner's exit code is the pod's.
"""

from __future__ import annotations

import os
import shlex
import sys

from migrator import output
from migrator.errors import USAGE


def main() -> None:
    from migrator.cli import main as run  # runner.py's handling of signals: as the pod's PID 1 this is the runner

    try:
        extra = shlex.split(os.environ.get("ARGS", ""))
    except ValueError as exc:  # an unclosed quote
        output.error(f"ARGS {os.environ['ARGS']!r} cannot be split into options ({exc}); fix the ARGS variable")
        sys.exit(USAGE)
    run([*sys.argv[1:], *extra], prog_name="runner.py")


if __name__ == "__main__":
    main()
