"""The command line's shape: every command's --help works without importing a driver, and errors are one line."""

import json
import re
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT, one_error_line

COMMANDS = [[], ["migrate"], ["plan"], ["status"], ["config"], ["sql"], ["sql", "rollback"], ["sql", "new"],
            ["sql", "mark"], ["sql", "accept-changes"], ["sql", "lint"], ["sql", "break-lock"], ["mongo"],
            ["mongo", "status"], ["mongo", "apply"], ["mongo", "history"], ["mongo", "resolve"],
            ["mongo", "accept-changes"], ["mongo", "new"], ["devdb"], ["devdb", "start"], ["devdb", "stop"], ["doctor"],
            ["help"]]
HEAVY = ("boto3", "pymongo", "yoyo", "psycopg2", "botocore")

# One process asks every command for its help in turn (a `python -c` start is ~0.12 CPU-s; there are 24 commands):
# modules only ever join sys.modules, so a driver any help imports shows after that command and every later one.
PROBE = """
import json
import sys
from migrator.cli import cli
for path in json.loads(sys.argv[1]):
    print("\\x1eCOMMAND", json.dumps(path))
    try:
        cli([*path, "--help"], prog_name="runner.py")
    except SystemExit as exit:
        print("\\x1eEXIT", exit.code)
    print("IMPORTED", ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[list[str], str]]:
    """{command: (its --help output's lines and the IMPORTED line, the process's stderr)} from one fresh process."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(COMMANDS)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.split("\x1eCOMMAND ")[1:]
    assert len(blocks) == len(COMMANDS), done.stdout + done.stderr
    return {" ".join(json.loads(block.split("\n", 1)[0])): (block.split("\n")[1:-1], done.stderr) for block in blocks}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "runner.py")
def test_help_of_every_command_imports_no_driver(helps, path):
    lines, stderr = helps[" ".join(path)]
    assert "\x1eEXIT 0" in lines, stderr
    assert lines[0].startswith(f"Usage: runner.py {' '.join(path)}".rstrip())
    assert lines[-1] == "IMPORTED "  # none of them, by this command's help or any before it


def test_runner_py_is_only_the_entry_point():
    text = (PROJECT_ROOT / "runner.py").read_text()
    assert len(text.splitlines()) <= 15 and "from migrator.cli import cli" in text


def test_every_cli_and_package_module_stays_small():
    sizes = {p.relative_to(PROJECT_ROOT): len(p.read_text().splitlines()) for p in (PROJECT_ROOT / "migrator").rglob("*.py")}
    assert all(n <= 250 for p, n in sizes.items() if p.parts[1] == "cli"), sizes
    assert all(n <= 450 for n in sizes.values()), sizes


def _command_paths(command, path=()):
    yield list(path)
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*path, name))


def test_every_commands_help_fits_a_screen_of_80_columns(cli):
    """At most 45 lines for every command and subcommand, found by walking the command tree (issue 22)."""
    from migrator.cli import cli as group

    paths = list(_command_paths(group))
    assert ["sql", "rollback"] in paths and ["help"] in paths and len(paths) > 25
    lengths = {}
    for path in paths:
        result = cli(*path, "--help", env={"COLUMNS": "80"})
        assert result.exit_code == 0 and result.stdout.startswith("Usage: "), (path, result.output)
        assert max(len(line) for line in result.stdout.splitlines()) <= 80, path
        lengths[" ".join(path)] = len(result.stdout.splitlines())
    assert {path: n for path, n in lengths.items() if n > 45} == {}
    assert lengths["plan"] <= 43, lengths["plan"]  # the longest: headroom for an option to come (attack 22)


def test_connection_options_are_summarised_in_each_command_and_described_once_by_help_connection(cli):
    migrate = cli("migrate", "--help", env={"COLUMNS": "80"}).stdout
    # Summarised by name under one heading, pointing to the topic; their descriptions are not repeated.
    assert "Shared options (each described by `runner.py help TOPIC`)" in migrate
    assert migrate.count("--database-url") == 1 and "DB_PASSWORD" not in migrate and "AWS_PROFILE" not in migrate
    # Grouped by purpose: files, safety and output each under their heading, in that order.
    headings = [line for line in migrate.splitlines() if line and not line.startswith(" ")]
    assert headings[1:] == ["Files:", "Safety:", "Output:", "Shared options (each described by `runner.py help TOPIC`):"]
    described = cli("help", "connection", env={"COLUMNS": "80"})
    assert described.exit_code == 0
    for option in ("--database-url URL", "--db-host HOST", "--db-port PORT", "--db-name NAME", "--db-user USER",
                   "--mongo-url URL", "--mongo-db NAME", "--mongo-secret-name NAME", "--profile, --profile_name",
                   "--region REGION", "--ca-bundle, --ca_bundle FILE", "DB_PASSWORD", "DB_SECRET_NAME",
                   "The mongo commands: AWS secret", "Every other command: AWS secret"):
        assert option in described.stdout, option
    limits = cli("help", "limits", env={"COLUMNS": "80"}).stdout
    assert "--ddl-lock-timeout DURATION" in limits and "DB_LOCK_TIMEOUT" in limits and "--database-url" not in limits
    unknown = cli("help", "nonsense")
    assert unknown.exit_code == 2 and "nonsense" in unknown.stderr


@pytest.mark.parametrize("columns", ["50", "60", "80", "120"])
def test_the_shared_option_names_are_never_cut_at_a_hyphen(cli, columns):
    from migrator.cli import cli as group

    for path in _command_paths(group):
        text = cli(*path, "--help", env={"COLUMNS": columns}).stdout
        shared = text.split("Shared options", 1)[1] if "Shared options" in text else ""
        lines = [line.strip() for line in shared.splitlines()[1:]]
        assert not [line for line in lines if line.endswith("-")], (path, shared)
        names = {name for name in re.findall(r"--[a-z-]+", shared)}
        assert names <= {o for p in _params(group, path) for o in p.opts}, (path, names)


def _params(group, path):
    command = group
    for word in path:
        command = command.get_command(None, word)
    return command.params


def test_help_topics_ignore_case_name_commands_and_label_each_meaning_of_an_option(cli):
    assert cli("help", "Tenants").stdout == cli("help", "tenants").stdout
    wide = {"COLUMNS": "80"}
    assert cli("help", "migrate", env=wide).stdout == cli("migrate", "--help", env=wide).stdout
    assert cli("help", "sql", "rollback").stdout == cli("sql", "rollback", "--help").stdout
    unknown = cli("help", "nonsense")
    assert unknown.exit_code == 2 and "'nonsense'" in one_error_line(unknown)
    # --schema means three things: each meaning says which commands it is of (attack 22).
    tenants = cli("help", "tenants", env={"COLUMNS": "200"}).stdout
    meanings = [line.split(None, 2)[2] for line in tenants.splitlines() if line.strip().startswith("--schema NAME")]
    assert [m.split(":")[0] for m in meanings] == ["Every other command", "sql verify", "sql lint"], meanings
