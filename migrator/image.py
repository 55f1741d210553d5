"""The image's default command (`python3 -m migrator.image migrate`): `runner.py migrate` plus the options in ARGS,
never through a shell. Outside migrator.cli so that `-m` does not load the CLI before its SIGTERM handler is in.

DIGIT's chart runs the image with no command and can set only variables, so ARGS (e.g. "--parallel 4") is its
one way to give flags. It is split into words as a shell splits them (quotes group), but nothing in it runs:
`$(...)`, `;`, `|` and `*` stay text the runner's options refuse. The runner's exit code is the pod's.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the CLI loads: as the pod's PID 1 a SIGTERM finding no handler is dropped
    __import__("migrator.interrupt").interrupt.early()

import os  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

from migrator import output  # noqa: E402
from migrator.errors import USAGE  # noqa: E402


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
