"""The command line's shape: every command's --help works without importing a driver, and errors are one line."""

import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT

COMMANDS = [[], ["migrate"], ["plan"], ["status"], ["config"], ["sql"], ["sql", "rollback"], ["sql", "new"],
            ["sql", "mark"], ["sql", "accept-changes"], ["sql", "lint"], ["sql", "break-lock"], ["mongo"],
            ["mongo", "status"], ["mongo", "apply"], ["mongo", "history"], ["mongo", "resolve"],
            ["mongo", "accept-changes"], ["mongo", "new"], ["devdb"], ["devdb", "start"], ["devdb", "stop"], ["doctor"]]
HEAVY = ("boto3", "pymongo", "yoyo", "psycopg2", "botocore")

PROBE = """
import sys
from migrator.cli import cli
try:
    cli(sys.argv[1:], prog_name="runner.py")
except SystemExit as exit:
    code = exit.code
print("IMPORTED", ",".join(m for m in {heavy!r} if m in sys.modules))
raise SystemExit(code)
"""


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "runner.py")
def test_help_of_every_command_imports_no_driver(path):
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *path, "--help"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: runner.py {' '.join(path)}".rstrip())
    assert done.stdout.splitlines()[-1] == "IMPORTED "  # none of them


def test_runner_py_is_only_the_entry_point():
    text = (PROJECT_ROOT / "runner.py").read_text()
    assert len(text.splitlines()) <= 15 and "from migrator.cli import cli" in text


def test_every_cli_and_package_module_stays_small():
    sizes = {p.relative_to(PROJECT_ROOT): len(p.read_text().splitlines()) for p in (PROJECT_ROOT / "migrator").rglob("*.py")}
    assert all(n <= 250 for p, n in sizes.items() if p.parts[1] == "cli"), sizes
    assert all(n <= 450 for n in sizes.values()), sizes
