"""The `cli` group: every failure as one line with its exit code, tracebacks only with -v."""

from __future__ import annotations

import logging
import os
import sys

import click

from migrator import __version__, interrupt, output
from migrator.cli.help import HelpGroup
from migrator.errors import FAILED, USAGE, MigratorError


READER_GONE = 141  # the exit code of a Unix tool whose reader closed the pipe (128 + SIGPIPE)


class OneLineUsageError(click.UsageError):
    """click's usage error as one line (its own form is a usage block of three or four)."""

    def show(self, file=None) -> None:
        where = self.ctx.command_path if self.ctx else "runner.py"
        output.error(f"{self.format_message()} (see `{where} --help`)")


def _one_line(exc: click.UsageError) -> OneLineUsageError:
    one = OneLineUsageError(exc.format_message(), exc.ctx)
    one.exit_code = USAGE
    return one


class Runner(HelpGroup):
    """Turns a MigratorError into one line and its exit code; tracebacks only with -v. The command families in
    `lazy` (name: a function returning the command) are imported when first named or listed: a no-op migrate
    does without sql's, mongo's, devdb's and doctor's modules (bench/RESULTS.md, issue 22)."""

    lazy: dict = {}

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.lazy[cmd_name]())
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        return sorted({*self.commands, *self.lazy})

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise _one_line(exc) from exc

    def invoke(self, ctx: click.Context):
        interrupt.reset()  # a new run (tests run several in one process)
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # (a reader that left is met here, not in the interpreter's exit)
            interrupt.exiting()  # the result is said: a signal from now on would only cut the exit short
            return result
        except BrokenPipeError:  # `plan | head`: the reader has what it wanted; quiet, as Unix tools are
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(READER_GONE)
        except OneLineUsageError:
            raise
        except click.UsageError as exc:  # a subcommand's bad option or value
            raise _one_line(exc) from exc
        except MigratorError as exc:
            _fail(ctx, str(exc), exc.exit_code, exc.excerpt, getattr(exc, "event_fields", None) or {})
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except interrupt.Interrupted as exc:  # outside any step that says its own stop (runner.py's after_stop)
            _fail(ctx, f"{exc} outside any migration or patch: what was applied, if anything, is said above "
                       "(`runner.py status`, `runner.py mongo status`); run the command again", 128 + exc.signum)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: say so, keep the traceback for -v
            _fail(ctx, f"unexpected {exc.__class__.__name__}: {output.scrub(str(exc))}; rerun with -v for the traceback",
                  FAILED)


def _fail(ctx: click.Context, message: str, code: int, excerpt: tuple[str, ...] = (), fields=None) -> None:
    if ctx.find_root().meta.get("verbose"):
        output.traceback()
    output.error(message, exit_code=code, **({"excerpt": list(excerpt)} if excerpt else {}), **(fields or {}))
    interrupt.exiting()
    ctx.exit(code)


class _MaskingFormatter(logging.Formatter):
    def format(self, record):
        if output.json_format():
            return output.event_json("log", logger=record.name, message=record.getMessage())
        return output.mask(super().format(record))


_YOYO_HANDLER = logging.StreamHandler()
_YOYO_HANDLER.setFormatter(_MaskingFormatter("%(name)s: %(message)s"))


def _set_verbose(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.find_root().meta["verbose"] = True
        yoyo_log = logging.getLogger("yoyo")
        if _YOYO_HANDLER not in yoyo_log.handlers:
            yoyo_log.addHandler(_YOYO_HANDLER)
        yoyo_log.setLevel(logging.INFO)
    return value


verbose_option = click.option(
    "-v", "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
    help="Tracebacks on errors, each step as it runs.",
)


def _set_log_format(ctx: click.Context, _param, value: str | None) -> str | None:
    name = {"text": "human"}.get(value.strip().lower(), value.strip().lower()) if value else None  # text: most tools' word
    if name and name not in output.FORMATS:
        raise click.UsageError(f"--log-format (or LOG_FORMAT) {value!r}: use one of {', '.join(output.FORMATS)}")
    if value or ctx.parent is None:  # the group's starts each run from the default; a command's only if given
        output.set_format(name or "human")
    return value


log_format_option = click.option(
    "--log-format", metavar="[human|json]", envvar="LOG_FORMAT", expose_value=False, is_eager=True,
    callback=_set_log_format,
    help="human (default), or json: one JSON object per event, for log pipelines (else LOG_FORMAT).")


@click.group(cls=Runner, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@verbose_option
@log_format_option
@click.version_option(package_name=None, version=__version__, prog_name="hcm-db-migrations")
def cli():
    """Keep the HCM reporting databases up to date: PostgreSQL from sql/, MongoDB patches from mongo/.

    Settings come from options, then DATABASE_URL, then DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD,
    then an AWS secret (--secret-name); .env in the working directory is read too. With nothing
    configured, a local development database is used.
    """
