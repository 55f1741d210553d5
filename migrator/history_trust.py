"""A history others could write stays unconfirmed until a person confirms it (issue 23, attack23q MEDIUM).

Rows written while other roles could write the history (a standing GRANT: a mark for a pending migration, its
checksum computed from the repository, a row in Flyway's table) cannot be told from real ones, and a forged mark
skips its migration for good. The run that takes those rights (trust.disown) records, in the same transaction as
its REVOKE, a COMMENT on each such history table: only the tables' owner (the migration role) or a superuser can
write one, and the catalog query that verifies the tables at connect reads it (no round trip of its own). While one
stands, every command that writes refuses in one line; `status` and `plan` say it; doctor FAILs; `sql
trust-history --yes` removes it after review. A history this run created needs no record: it must hold no rows the
run did not write (own_rows_only).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from migrator import output
from migrator.errors import USAGE, MigratorError
from migrator.grant_text import ident
from migrator.tables import MIGRATION_TABLE
from migrator.targets import where_name

# The first line of the COMMENT (a comment the table had before is kept after it, and given back on confirming).
MARK = "hcm-db-migrations unconfirmed history"
CONFIRM = "runner.py sql trust-history --yes"


def histories(flyway_table: str | None) -> tuple[str, ...]:
    """The tables whose rows say what is applied (or, for a non-transactional file, how far it got; yoyo's log: what
    ran, the review's sign of a removed mark): Flyway's table (SCHEMA_TABLE) too when given (a Flyway folder's own, or
    any service's to record the distrust on)."""
    return (MIGRATION_TABLE, "_hcm_migration_checksum", "_hcm_migration_failure", "_yoyo_log",
            *([flyway_table] * bool(flyway_table)))


def mark_sql(connection, schema: str, grants: list, comments: list, tables: tuple[str, ...]) -> tuple[str, dict]:
    """The COMMENTs recording the distrust of the history tables among `grants` (others' rights the run takes),
    to run with the REVOKE; and what they record, by table. `comments`: [table, comment] as the check read them."""
    from psycopg2 import sql

    before = dict(comments)
    marked, statements = {}, []
    for table in sorted({grant[0] for grant in grants} & set(tables)):
        roles = sorted({grant[1] for grant in grants if grant[0] == table})
        marked[table] = {"roles": roles, "revoked_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        kept = before.get(table) or ""
        kept = kept.split("\n", 1)[1] if kept.startswith(MARK) and "\n" in kept else "" if kept.startswith(MARK) \
            else kept
        text = f"{MARK} {json.dumps(marked[table])}" + (f"\n{kept}" if kept else "")
        statements.append(f"COMMENT ON TABLE {ident(schema)}.{ident(table)} IS "
                          f"{sql.Literal(text).as_string(connection)}")
    return "; ".join(statements), marked


def standing(comments: list, tables: tuple[str, ...]) -> dict[str, dict]:
    """The distrust recorded on the history tables: {table: {roles, revoked_at}} (a hand-edited one still counts)."""
    found = {}
    for table, comment in comments:
        if table in tables and comment.startswith(MARK):
            try:
                found[table] = json.loads(comment.split("\n", 1)[0][len(MARK):])
            except ValueError:
                found[table] = {}
    return found


def _what(schema: str, distrust: dict[str, dict]) -> tuple[str, str]:
    tables = ", ".join(f"{schema}.{table}" for table in sorted(distrust))
    roles = sorted({role for found in distrust.values() for role in found.get("roles", ["other roles"])})
    return tables, ", ".join(roles)


def refusal(schema: str, where: str, distrust: dict[str, dict], fresh: bool, options: str) -> str:
    """The one line refusing to write while the distrust stands, with the steps out of it."""
    tables, roles = _what(schema, distrust)
    at = max((found.get("revoked_at", "") for found in distrust.values()), default="")
    when = "this run revoked it" if fresh else f"a run revoked it{f' ({at})' if at else ''}"
    return output.visible(
        f"refusing to apply or mark anything on {where}: history {tables} could be written by {roles} until {when}: "
        f"its rows may be forged (a migration marked applied that never ran is skipped for good); review them "
        f"(`runner.py status{options}` lists what is recorded as applied; delete the rows of migrations whose "
        f"objects do not exist) and confirm with `{CONFIRM}{options}`")


def note(schema: str, distrust: dict[str, dict], options: str) -> str:
    """What status and plan say while it stands (they still work)."""
    tables, roles = _what(schema, distrust)
    return output.visible(f"note: history {tables} is unconfirmed: {roles} could write it until a run revoked their "
                          f"rights, so what it records as applied may be forged; after review run `{CONFIRM}{options}`")


def others_note(schema: str, distrust: dict[str, dict]) -> str:
    """Another service's history (a Flyway folder's table beside this folder's) is unconfirmed: its runs refuse,
    this one does not read it (attack23s 6)."""
    tables, roles = _what(schema, distrust)
    return output.visible(f"note: history {tables} (another folder's: this run does not read it) is unconfirmed: "
                          f"{roles} could write it until a run revoked their rights; that service's migrate refuses "
                          f"until its operator reviews it and runs `{CONFIRM}` with its folder")


def confirm(connection, schema: str, comments: list, tables: list[str]) -> None:
    """Gives each table back the comment it had before (or none), in one transaction."""
    from psycopg2 import sql

    before = dict(comments)
    with connection.cursor() as cursor:
        for table in tables:
            kept = (before.get(table) or "").split("\n", 1)[1:]
            cursor.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                sql.Identifier(schema, table), sql.Literal(kept[0] if kept else None)))


# The histories whose rows the run trusts to say what is applied (a checksum restores a lost mark), by the column
# naming each row: one this run just made holds none yet (others' write rights were taken before they could see it;
# a superuser, or a member of pg_write_all_data, still may).
HISTORIES = {MIGRATION_TABLE: "migration_id", "_hcm_migration_checksum": "migration_id"}


def own_rows_only(connection, schema: str, tables: list[str], column: str | None = None) -> None:
    """After the COMMIT of a creation: refuses, in one line, a history this run just made that holds rows (named by
    `column`, a Flyway history's `script`, or as HISTORIES says)."""
    from psycopg2 import sql

    for table in (t for t in tables if column or t in HISTORIES):
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT {id}::pg_catalog.text FROM {schema}.{table} LIMIT 4").format(
                id=sql.Identifier(column or HISTORIES[table]), schema=sql.Identifier(schema),
                table=sql.Identifier(table)))
            ids = [row[0] for row in cursor.fetchall()]
        if ids:
            info = connection.info
            shown = ", ".join(output.quoted(i) for i in ids[:3]) + (" and more" if len(ids) > 3 else "")
            raise MigratorError(output.visible(
                f"refusing the migration history {schema}.{table} on {where_name(info.host, info.port, info.dbname)}: "
                f"this run has just created it, yet it holds rows the run did not write ({column or HISTORIES[table]} "
                f"{shown}); "
                "another role wrote them (a superuser, or a member of pg_write_all_data), and their migrations would "
                f"be skipped as applied; find who, delete those rows (DELETE FROM {schema}.{table}), and run again"),
                USAGE)
