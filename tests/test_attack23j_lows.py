"""Attack 23j's lows: a server's FATAL lost behind its multi-line HINT, a CA bundle or *_FILE that is a FIFO, a device
or a folder called "not found", a symlink in sql/ to a folder silently skipped."""

from __future__ import annotations

import os
import time

import pytest

from conftest import SEED, add_migration, applied, migrate, ok, one_error_line


@pytest.fixture
def refusing():
    from pg_wire import RefusingServer

    servers = []

    def start(**fields: str) -> RefusingServer:
        servers.append(RefusingServer({"S": "FATAL", "V": "FATAL", "C": "28P01", **fields}))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("fields, error", [
    # the attack's: message and hint both spanning lines, a CR and an ESC in the message
    ({"M": "no such thing\n\x1b[2K\rPostgreSQL: migrate done in 1 of 1 schema(s)", "H": "see\nerror: forged hint"},
     "FATAL:  no such thing \\x1b[2K PostgreSQL: migrate done in 1 of 1 schema(s); HINT:  see error: forged hint"),
    ({"M": "refused", "D": "first\nerror: forged detail\rthird", "H": "one\ntwo"},
     "FATAL:  refused; DETAIL:  first error: forged detail third; HINT:  one two"),
])
def test_a_servers_fatal_stays_the_error_whatever_lines_its_hint_or_detail_hold(cli, sql_dir, refusing, fields, error):
    """failures._last_error took the last line not starting with HINT:/DETAIL: as the error: a continuation line of
    a HINT replaced the FATAL ('cannot connect ...: error: forged hint; HINT:  see')."""
    server = refusing(**fields)
    url = f"postgresql://mig:pw@127.0.0.1:{server.port}/app"
    result = cli("status", "--sql-dir", sql_dir, env={"DATABASE_URL": url})
    line = one_error_line(result)
    where = f'cannot connect to PostgreSQL at 127.0.0.1:{server.port}/app: connection to server at "127.0.0.1", '
    assert line == f"error: {where}port {server.port} failed: {error}", line


# --- a certificate, key or *_FILE path that is there but no regular file: said what it is, never "not found" ------


@pytest.fixture
def not_files(tmp_path):
    """A FIFO, a character device and a folder, by name."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    return {"fifo": (str(tmp_path / "fifo"), "a FIFO (named pipe)"), "device": ("/dev/zero", "a character device"),
            "folder": (str(tmp_path / "folder"), "a directory")}


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
@pytest.mark.parametrize("setting", ["CA_BUNDLE", "--ca-bundle", "sslrootcert", "sslkey", "tlsCAFile",
                                     "DB_PASSWORD_FILE"])
def test_a_path_setting_that_is_no_regular_file_says_what_it_is(cli, db, not_files, setting, kind):
    """CA_BUNDLE on a FIFO or /dev/zero said "CA bundle ... not found" (it is there); a URL's sslrootcert= on a FIFO
    was left to libpq's open."""
    path, what = not_files[kind]
    env, args = {"DATABASE_URL": db.url}, []
    if setting == "--ca-bundle":
        args = [setting, path]
    elif setting in ("sslrootcert", "sslkey"):
        env["DATABASE_URL"] = f"{db.url}{'&' if '?' in db.url else '?'}{setting}={path}"
    elif setting == "tlsCAFile":
        env.update(MONGO_URL=f"mongodb://127.0.0.1:1/app?tls=true&tlsCAFile={path}", MONGO_DB="app")
    else:
        env[setting] = path
    result = cli("config", *args, env=env)
    line = one_error_line(result)
    assert result.exit_code == 2 and f"{path}" in line and f"{what}, not a regular file" in line, line
    assert "not found" not in line, line


# --- a symlink in sql/ to a folder: refused as a real subfolder holding migrations is, never read through ---------


@pytest.mark.parametrize("where", ["outside", "inside", "the folder itself"])
def test_a_link_to_a_folder_holding_migrations_is_refused_as_a_subfolder_is(cli, db, sql_dir, tmp_path, where):
    """A symlink sql/sub -> a folder with migrations was silently skipped, a real subfolder with them refused."""
    target = {"outside": tmp_path / "outside", "inside": sql_dir / "zz", "the folder itself": sql_dir}[where]
    target.mkdir(exist_ok=True)
    if target != sql_dir:
        add_migration(target, "0002_b", "CREATE TABLE linked_b (id int);\n", "DROP TABLE linked_b;\n")
    (sql_dir / "sub").symlink_to(target, target_is_directory=True)
    for command in (["migrate"], ["plan", "--offline"], ["sql", "lint"]):
        result = cli(*command, "--sql-dir", sql_dir, env=db.db_env())
        line = one_error_line(result)
        assert result.exit_code == 2 and line.startswith(f"error: {sql_dir}/sub/0") and (
            f": a migration in a subfolder of {sql_dir} (a link to {target.resolve()}); ") in line, line
        assert line.endswith("remove the link, or copy the file in (renumbered)"), line
    assert "linked_b" not in db.tables() and applied(db) == []


def test_a_link_to_a_folder_without_migrations_is_left_alone_as_a_subfolder_is(cli, db, sql_dir, tmp_path):
    """Consistent with a plain subfolder: one without migrations (shared snippets) is no error, and nothing of it
    runs; the folder's own migrations apply."""
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets" / "notes.txt").write_text("a note\n")
    (sql_dir / "snippets").symlink_to(tmp_path / "snippets", target_is_directory=True)
    ok(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED]


def test_a_link_to_a_huge_folder_is_refused_without_walking_it_all(cli, db, sql_dir, tmp_path):
    """A link to / must not walk the whole disk looking for a migration: past the cap of names, one line."""
    from migrator import source_files

    big = tmp_path / "big"
    big.mkdir()
    for i in range(source_files.MAX_NESTED + 1):
        (big / f"n{i}").touch()
    (sql_dir / "big").symlink_to(big, target_is_directory=True)
    line = one_error_line(migrate(cli, db, sql_dir))
    assert line.startswith(f"error: {sql_dir}/big holds over {source_files.MAX_NESTED} names, not a folder of "
                           "migrations;"), line
    assert applied(db) == []


# --- a refused session leaves nothing of the runner's on a pooled server session (attack 23j, pgb_leak) ----------


LEFT = ("SELECT pg_catalog.current_setting('hcm.flyway_table', true), pg_catalog.current_setting('hcm.history', true), "
        "pg_catalog.current_setting('search_path'), pg_catalog.current_setting('synchronous_commit')")


@pytest.mark.parametrize("command", [["status"], ["migrate"], ["migrate", "--schema", "t60", "--create-schemas"]])
def test_a_session_refused_behind_a_pool_leaves_no_setting_on_its_server_session(cli, db, sql_dir, pg, command):
    """init_connection's first statement set hcm.flyway_table / hcm.history (session level) in the same query as the
    read-back of the settings: a refused session handed them to the pool's next client."""
    from pg_wire import PoolerProxy

    proxy = PoolerProxy(pg.host, pg.port, strip=b"", after=LEFT)
    try:
        env = {**db.db_env(), "DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port)}
        result = cli(*command, "--sql-dir", sql_dir, env=env)
        assert result.exit_code in (1, 2) and "did not apply the session settings" in result.stderr, result.output
        for _ in range(100):  # each server session answers once its client left (the proxy's own thread)
            if len(proxy.left) == len(proxy.real_pids):
                break
            time.sleep(0.1)
    finally:
        proxy.close()
    assert proxy.left and all(row[:2] == [None, None] for row in proxy.left), proxy.left
    assert all(row[2] == '"$user", public' and row[3] == "on" for row in proxy.left), proxy.left
