"""attack23s (second report) lows left by session 9, each on the real PostgreSQL or the CLI's own settings."""

from __future__ import annotations

from conftest import add_migration, ok
from test_schema_creators import low  # noqa: F401 (a fixture)


def test_a_role_granted_the_migration_user_is_noted_by_migrate(cli, db, sql_dir, low):
    """attack23s 13: `GRANT mig TO low`: low's forged mark was adopted by migrate without a word (doctor warned only).
    Failed before: no note."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(f"GRANT {db.server.user} TO {low}")
    add_migration(sql_dir, "0002_b", "CREATE TABLE b (id int);\n")
    result = ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    [note] = [line for line in result.output.splitlines() if "are granted user" in line] or [result.output]
    assert note.startswith(f"note: roles {low} are granted user {db.server.user}: they act as it") and \
        f'run REVOKE "{db.server.user}" FROM {low}' in note, note
