"""A role's name is its creator's to choose (any CREATEROLE role): a tab, a line break, quotes, a bidi control.
Such a role holding a grant in the schema crashed every describe ("unexpected ValueError": the grants' lines split
on tabs and line breaks). Now its grant is described exactly (the grantee read back whole) and printed escaped."""

from __future__ import annotations

import pytest

from conftest import SEED, applied
from schema_helpers import describe_db

T = "hcm_report_metadata"
ROLES = ("pay\nroll", "tab\there", 'say "hi"', "bidi\u202egnp.exe")


@pytest.fixture
def odd_roles(db):
    """The roles (cluster-wide: dropped after the test, their grants in the test's database first)."""
    for role in ROLES:
        db.query('CREATE ROLE "{}"'.format(role.replace('"', '""')))
    yield ROLES
    for role in ROLES:
        quoted = '"{}"'.format(role.replace('"', '""'))
        db.query(f"DROP OWNED BY {quoted}; DROP ROLE {quoted}")


def granted(db):
    for role in ROLES:
        db.query('GRANT SELECT ON {} TO "{}"'.format(T, role.replace('"', '""')))
    db.query('ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO "pay\nroll", "tab\there"')


def quoted(role: str) -> str:
    return '"{}"'.format(role.replace('"', '""'))


def test_grants_to_odd_role_names_are_described_exactly_and_printed_escaped(cli, db, sql_dir, odd_roles):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    granted(db)
    described = describe_db(db).items.values()
    grants = {item.name for item in described if item.kind == "grant"}
    assert grants == {f"table public.{T} TO U&\"pay\\000Aroll\"", f"table public.{T} TO U&\"tab\\0009here\"",
                      f"table public.{T} TO \"say \"\"hi\"\"\"", f"table public.{T} TO \"bidi\u202egnp.exe\""}, grants
    # exactly: the described DDL, run again after the grants are gone, gives them back
    before = {item.name: item.ddl for item in described if item.kind in ("grant", "default privileges")}
    db.query(";".join(f"REVOKE ALL ON {T} FROM {quoted(role)}" for role in ROLES)
             + ';ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM "pay\nroll", "tab\there"')
    db.query(";".join(before.values()))
    after = {item.name: item.ddl for item in describe_db(db).items.values() if item.kind in ("grant", "default privileges")}
    assert after == before and 'TO U&"pay\\000Aroll"' in before["FOR ROLE postgres ON TABLES"], before

    status = cli("status", "--sql-dir", sql_dir, env=env)
    assert status.exit_code == 0 and "unexpected" not in status.output, status.output
    assert f'  grant on table {T} TO U&"pay\\000Aroll" added\n' in status.stdout, status.stdout
    assert f'  grant on table {T} TO U&"tab\\0009here" added\n' in status.stdout, status.stdout
    assert f'  grant on table {T} TO "say ""hi""" added\n' in status.stdout, status.stdout
    assert f'  grant on table {T} TO "bidi\\u202egnp.exe" added\n' in status.stdout, status.stdout
    assert "\u202e" not in status.output

    migrated = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert migrated.exit_code == 0 and "unexpected" not in migrated.output, migrated.output
    assert f'grant on table {T} TO U&"pay\\000Aroll" added' in migrated.stderr + migrated.stdout
    accepted = cli("sql", "accept-drift", "--sql-dir", sql_dir, env=env)
    assert accepted.exit_code == 0, accepted.output
    status = cli("status", "--sql-dir", sql_dir, env=env)
    assert status.exit_code == 0 and "schema: as recorded since accept-drift" in status.stdout, status.output
    assert applied(db) == [SEED]


def test_a_domain_constraint_s_comment_and_name_with_line_breaks_and_tabs_are_described_exactly(db):
    """(The same split: a domain constraint's comment, or its name, holding a line break or a tab crashed it.)"""
    db.query('CREATE DOMAIN pos AS int CONSTRAINT "is\tpos" CHECK (VALUE > 0); '
             "COMMENT ON CONSTRAINT \"is\tpos\" ON DOMAIN pos IS E'line one\\nline\\ttwo'")
    comments = {item.name: item.ddl for item in describe_db(db).items.values() if item.kind == "comment"}
    assert comments == {'constraint U&"is\\0009pos" ON DOMAIN public.pos':
                        'COMMENT ON CONSTRAINT U&"is\\0009pos" ON DOMAIN public.pos IS \'line one\nline\ttwo\';'}, comments
