"""Help that fits a screen: each command's options grouped by purpose, the shared ones summarised by name.

The options every command shares (connection, locks and time limits, tenant schemas) would repeat some thirty
lines in each `--help`; there they are one wrapped list of names, and `runner.py help TOPIC` describes them once.
"""

from __future__ import annotations

import click

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
                formatter.write_dl([(topic, names) for topic, names in shared if names])


class HelpGroup(click.Group):
    """A group whose commands (and subgroups) are HelpCommands."""

    command_class = HelpCommand
    group_class = type  # subgroups of the same class


def _walk(command: click.Command):
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _walk(sub)


@click.command("help", cls=HelpCommand)
@click.argument("topic", required=False, type=click.Choice(list(TOPICS)))
@click.pass_context
def help_(ctx: click.Context, topic: str | None) -> None:
    """Describe the options every command shares: connection, limits (locks and time limits) or tenants."""
    formatter = ctx.make_formatter()
    if topic is None:
        with formatter.section("Topics"):
            formatter.write_dl([(name, about) for name, (_title, about, _names) in TOPICS.items()])
        formatter.write_paragraph()
        formatter.write_text("Each command's own options: runner.py COMMAND --help.")
    else:
        title, about, names = TOPICS[topic]
        seen = []  # an option as each command declares it, once (the Mongo commands' --secret-name differs)
        for command in _walk(ctx.find_root().command):
            for record in _records(ctx, [p for p in command.params if p.name in names]):
                if record not in seen:
                    seen.append(record)
        with formatter.section(f"{title}: {about}"):
            formatter.write_dl(seen)
    click.echo(formatter.getvalue().rstrip("\n"))
