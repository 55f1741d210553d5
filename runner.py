#!/usr/bin/env python3
"""hcm-db-migrations: keeps the HCM reporting databases up to date (`python runner.py --help`).

The command line lives in migrator/cli, the commands in migrator/commands. Exit codes: 0 ok,
1 failed (or, with status --exit-code, pending), 2 usage or configuration error, 3 drift,
4 lock held by another runner, 130 interrupted, 143 stopped by SIGTERM.
"""

if __name__ == "__main__":  # first: as a container's PID 1, a SIGTERM that finds no handler is dropped
    __import__("migrator.interrupt").interrupt.early()
from migrator.cli import cli, main  # noqa: E402,F401 (cli: the group, imported by tests and tools)

if __name__ == "__main__":
    main()
