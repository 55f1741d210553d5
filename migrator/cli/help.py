"""Help that fits a screen: each command's options grouped by purpose, the shared ones summarised by name.

The options every command shares (connection, locks and time limits, tenant schemas) would repeat some thirty
lines in each `--help`; there they are one wrapped list of names, and `runner.py help TOPIC` describes them once.
"""

from __future__ import annotations

import textwrap

import click

from migrator.errors import USAGE, MigratorError

# Shared options, summarised in each command's help and described in full by `runner.py help TOPIC`.
TOPICS = {
    "connection": ("Connection", "where PostgreSQL and Mongo are and how to reach them",
                   ("database_url", "db_host", "db_port", "db_name", "db_user", "pg_secret", "mongo_url", "mongo_db",
                    "mongo_secret", "mongo_timeout", "profile", "region", "ca_bundle")),
    "limits": ("Locks and time limits", "how long a run waits, and what it shows while it waits",
               ("lock_timeout", "ddl_lock_timeout", "lock_retry_budget", "statement_timeout", "patch_timeout",
                "show_blocker_query")),
    "tenants": ("Tenant schemas", "running per tenant schema, each with its own history",
                ("schemas", "create_schemas", "fail_fast", "parallel")),
}
# The other options, shown in full under these headings after the command's own ("Options").
SECTIONS = (
    ("Files", ("sql_dir", "mongo_dir")),
    ("Safety", ("strict", "rewrite_threshold_rows")),
    ("Output", ("as_json", "quiet", "verbose", "log_format")),  # and --help
)


def _records(ctx: click.Context, params) -> list[tuple[str, str]]:
    return [record for record in (param.get_help_record(ctx) for param in params) if record]


class HelpCommand(click.Command):
    """A command whose --help groups its options by purpose and summarises the shared ones."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = [p for p in self.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]
        help_option = self.get_help_option(ctx)
        placed = {name for _title, _about, names in TOPICS.values() for name in names}
        placed |= {name for _title, names in SECTIONS for name in names}
        own = [p for p in params if p.name not in placed and p is not help_option]
        if own:
            with formatter.section("Options"):
                formatter.write_dl(_records(ctx, own))
        for title, names in SECTIONS:
            records = _records(ctx, [p for p in params if p.name in names or (p is help_option and title == "Output")])
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)
        shared = [(topic, ", ".join(p.opts[0] for p in params if p.name in names))
                  for topic, (_title, _about, names) in TOPICS.items()]
        if any(names for _topic, names in shared):
            with formatter.section("Shared options (each described by `runner.py help TOPIC`)"):
                _write_names(formatter, [(topic, names) for topic, names in shared if names])


def _write_names(formatter: click.HelpFormatter, rows: list[tuple[str, str]]) -> None:
    """Topic and its option names, wrapped between names only: an option name is never cut (click's wrapping
    breaks `--lock-retry-budget` at a hyphen, and a name cut in two is not one to copy)."""
    first = max(len(topic) for topic, _names in rows) + 2
    width = max(formatter.width - formatter.current_indent - first, 20)
    for topic, names in rows:
        lines = textwrap.wrap(names, width, break_on_hyphens=False, break_long_words=False)
        for i, line in enumerate(lines):
            formatter.write(f"{'':>{formatter.current_indent}}{topic if i == 0 else '':<{first}}{line}\n")


class HelpGroup(click.Group):
    """A group whose commands (and subgroups) are HelpCommands."""

    command_class = HelpCommand
    group_class = type  # subgroups of the same class


@click.command("help", cls=HelpCommand)
@click.argument("topic", nargs=-1)
@click.pass_context
def help_(ctx: click.Context, topic: tuple[str, ...]) -> None:
    """Describe the options every command shares (connection, limits or tenants), or show a command's help
    (`runner.py help migrate` is `runner.py migrate --help`)."""
    root = ctx.find_root().command
    name = " ".join(topic).lower()
    if name and name not in TOPICS:
        command, path = root, []
        for word in name.split():
            command = _subcommands(command).get(word)
            if command is None:
                raise MigratorError(f"no help topic or command {' '.join(topic)!r}: the topics are "
                                    f"{', '.join(TOPICS)}; `runner.py --help` lists the commands", USAGE)
            path.append(word)
        with click.Context(command, info_name=' '.join([ctx.find_root().info_name, *path])) as sub:
            click.echo(command.get_help(sub))
        return
    formatter = ctx.make_formatter()
    if not name:
        with formatter.section("Topics"):
            formatter.write_dl([(topic_name, about) for topic_name, (_title, about, _names) in TOPICS.items()])
        formatter.write_paragraph()
        formatter.write_text("Each command's own options: runner.py COMMAND --help (or runner.py help COMMAND).")
    else:
        title, about, names = TOPICS[name]
        with formatter.section(f"{title}: {about}"):
            formatter.write_dl(_described(ctx, root, names))
    click.echo(formatter.getvalue().rstrip("\n"))


def _described(ctx: click.Context, root: click.Command, names) -> list[tuple[str, str]]:
    """Each option as the commands declare it, once; an option some commands declare with another meaning
    (sql verify's and sql lint's --schema) is labelled with the commands each meaning belongs to."""
    seen: dict[tuple[str, str], list[str]] = {}
    for path, command in _paths(root):
        for record in _records(ctx, [p for p in command.params if p.name in names]):
            seen.setdefault(record, []).append(" ".join(path))
    rows = []
    for (option, text), commands in seen.items():
        variants = sorted((c for (o, _t), c in seen.items() if o == option), key=len, reverse=True)
        if len(variants) > 1:
            text = f"{'Every other command' if commands is variants[0] else _label(commands)}: {text}"
        rows.append((option, text))
    order = list(dict.fromkeys(option for option, _text in rows))
    return sorted(rows, key=lambda row: order.index(row[0]))  # an option's meanings side by side


def _label(commands: list[str]) -> str:
    """`sql verify`, or `the mongo commands` for a meaning every command of the group has."""
    groups = {command.split()[0] for command in commands}
    return f"The {groups.pop()} commands" if len(groups) == 1 and len(commands) > 2 else ", ".join(commands)


def _subcommands(command: click.Command) -> dict[str, click.Command]:
    """A group's commands by name, those it loads when named included (cli.app.Runner.lazy)."""
    if not isinstance(command, click.Group):
        return {}
    lazy = getattr(command, "lazy", {})  # (in their order, after the others, as they were once all registered)
    return {name: command.get_command(None, name) for name in [*(n for n in command.commands if n not in lazy), *lazy]}


def _paths(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in _subcommands(command).items():
        yield from _paths(sub, (*path, name))
