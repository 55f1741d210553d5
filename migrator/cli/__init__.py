"""The command line: the `cli` group and one module per command family, as yoyo's scripts/main.py.

Each callback only parses, calls one function of migrator.commands and renders its report:
  app     -- the group: one-line errors and exit codes, -v
  options -- every option, defined once, and the CommandSettings they build
  deploy  -- migrate, plan, status, config
  sql     -- sql rollback / new / mark / accept-changes / lint / break-lock / trust-history
  mongo   -- mongo status / apply / history / resolve / accept-changes / new
  devdb   -- devdb start / stop
  doctor  -- doctor: a new environment checked, changing nothing
  help    -- --help grouped by purpose, and `help TOPIC` for the options every command shares
"""

import sys

from migrator.cli import deploy
from migrator.cli.app import cli

for command in (deploy.migrate, deploy.plan, deploy.status, deploy.config):
    cli.add_command(command)


def _sql():
    from migrator.cli.sql import sql

    return sql


def _mongo():
    from migrator.cli.mongo import mongo

    return mongo


def _devdb():
    from migrator.cli.devdb import devdb

    return devdb


def _doctor():
    from migrator.cli.doctor import doctor

    return doctor


def _help():
    from migrator.cli.help import help_

    return help_


# (imported when named or listed: app.Runner)
cli.lazy = {"mongo": _mongo, "sql": _sql, "devdb": _devdb, "doctor": _doctor, "help": _help}


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """runner.py's entry: a second Ctrl-C or SIGTERM cannot cut the first one's stop short (interrupt.after_stop);
    one that lands while the command line is read, before any command's own handling, is one line too."""
    from migrator import interrupt

    _escape_unencodable()
    interrupt.after_stop()
    try:
        if interrupt.early_stop():  # (while the CLI loaded: runner.py's interrupt.early())
            raise interrupt.Interrupted(interrupt.early_stop())
        cli(args, prog_name=prog_name)
    except interrupt.Interrupted as exc:
        sys.stderr.write(f"error: {exc} before the command started: nothing was run\n")
        sys.exit(128 + exc.signum)
    finally:
        interrupt.exiting()  # (said, whatever the outcome: a signal now would only cut the exit short)


def _escape_unencodable() -> None:
    """On a stdout or stderr that is not UTF-8 (a Windows code page, an SJIS locale) a character it lacks is written
    escaped (\\u20ac), not the end of the command (attack23v 8); plan's SQL goes as UTF-8 bytes anyway (output.sql)."""
    import codecs

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        if codecs.lookup(encoding).name != "utf-8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


__all__ = ["cli", "main"]
