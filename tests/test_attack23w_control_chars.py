"""attack23w 9: a control character other than tab, line feed, form feed and carriage return in a migration file (its
rollback file, a Flyway folder's file) is refused in one line naming file, line, column and code point, as NUL is:
a terminal or pager honours it (ESC[8m conceals), so what a reviewer reads of the file is not what runs (fix23ap)."""

from __future__ import annotations

import pytest

from conftest import add_migration, migrate, ok, one_error_line

_HIDDEN = "SELECT 1;\nSELECT 2; /* \x1b[8m */ UPDATE payroll SET salary = 0; /* \x1b[0m */\n"


@pytest.mark.parametrize("command", [("migrate",), ("plan", "--offline"), ("sql", "lint")])
def test_a_terminal_escape_in_a_migration_file_is_refused_naming_line_column_and_code_point(cli, db, sql_dir,
                                                                                             command):
    """Failed before: lint clean, plan wrote the bytes to a pipe (`plan | less -R` showed `SELECT 2; /*  */`)."""
    add_migration(sql_dir, "0002_hidden", _HIDDEN)
    result = cli(*command, "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code != 0, result.output
    said = one_error_line(result) if command[0] != "sql" else result.output
    assert "0002_hidden.sql:2:" in said and "U+001B (column 14)" in said, said
    assert "\x1b" not in result.output
    if command == ("migrate",):
        assert "payroll" not in db.tables() and "nothing was run" in said


@pytest.mark.parametrize("char", ["\x07", "\x08", "\x0b", "\x7f", "\x9b"])
def test_other_control_characters_are_refused_and_tab_form_feed_and_line_ends_are_not(cli, sql_dir, char):
    add_migration(sql_dir, "0002_c", f"SELECT\t1;\x0c\r\nSELECT '{char}';\n")
    line = one_error_line(cli("plan", "--offline", "--sql-dir", sql_dir))
    assert f"0002_c.sql:2: holds control character U+{ord(char):04X} (column 9)" in line, line
    (sql_dir / "0002_c.sql").write_text("SELECT\t1;\x0c\r\nSELECT E'\\x1b';\n")
    assert "SELECT E'\\x1b';" in ok(cli("plan", "--offline", "--sql-dir", sql_dir)).stdout


def test_a_control_character_in_a_rollback_file_is_refused(cli, db, sql_dir):
    add_migration(sql_dir, "0002_t", "CREATE TABLE t2 (id int);\n", rollback="DROP TABLE t2; -- \x1b[2K\n")
    ok(migrate(cli, db, sql_dir))
    line = one_error_line(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()))
    assert "0002_t.rollback.sql:1:" in line and "U+001B (column 19)" in line, line
    assert "t2" in db.tables()


def test_a_control_character_in_a_flyway_file_is_refused(cli, tmp_path):
    folder = tmp_path / "flyway"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE a (id int);\n")
    (folder / "V2__b.sql").write_text("SELECT 1; -- \x1b[8m\n")
    line = one_error_line(cli("plan", "--offline", "--sql-dir", folder))
    assert "V2__b.sql:1:" in line and "U+001B (column 14)" in line, line
