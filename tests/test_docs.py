"""The documentation keeps up with the code: every command, option and environment variable the runner reads is
in README.md or docs/*.md, every relative link resolves (files and #anchors as GitHub renders them), and the pages
keep the shape issue 22 asked for (a short README, wrapped prose, no table cell a screen wide)."""

import ast
import re

import click
import pytest

from conftest import PROJECT_ROOT
from migrator.cli import cli

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# String constants in migrator/ that look like variable names but are not settings a user gives the runner.
NOT_SETTINGS = {
    "FILE_NAME", "MIGRATION_TABLE",           # yoyo's class attributes
    "SQL_BASELINE", "SPRING_JDBC", "UNDO_SQL",  # Flyway history row types
    "MONGO_NOT_CONFIGURED",                   # a report's fixed line
    "O_CLOEXEC", "O_NOFOLLOW",                # os flags
    "LC_ALL", "LC_CTYPE", "LC_MESSAGES",      # set for a patch's child process, not read
    "HCM_MONGO_URI", "HCM_PATCH_FILE", "HCM_MONGOSH",  # the runner's own hand-over to mongosh (and its check)
}
ENV_LIKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
ENV_READERS = {"get", "value", "getenv", "pop", "set_empty"}


def docs_text() -> str:
    return "\n".join(path.read_text() for path in DOCS)


def walk(group: click.Group, ctx: click.Context, path=()):
    """Every command under the group (lazy groups too: commands are asked for by name), with its path."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        sub = click.Context(command, parent=ctx, info_name=name)
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, sub, (*path, name))


def commands():
    return list(walk(cli, click.Context(cli, info_name="runner.py")))


def option_names():
    """Every spelling of every option (aliases and --flag/--no-flag pairs included) of the group and each command."""
    names = set()
    for command in [cli, *(c for _, c in commands())]:
        for param in command.params:
            if isinstance(param, click.Option):
                names.update(param.opts + param.secondary_opts)
    return sorted(names - {"-h", "--help"})


def environment_variables():
    """The variables the runner reads: click's envvar= and every settings-looking constant in migrator/ (read
    through env.get, env.value, os.environ.get, ... or kept in a settings table), plus names read by a call."""
    names = set()
    for file in (PROJECT_ROOT / "migrator").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_LIKE.match(node.value):
                names.add(node.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ENV_READERS and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.args[0].value)
                  and "env" in ast.unparse(node.func.value).lower()):
                names.add(node.args[0].value)
    for _, command in commands():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return sorted(names - NOT_SETTINGS)


def mentioned(word: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_the_walk_finds_the_known_commands_options_and_variables():
    """The collectors themselves: a walk that found nothing would make the tests below pass vacuously."""
    paths = {" ".join(path) for path, _ in commands()}
    assert {"migrate", "plan", "sql rollback", "mongo apply", "devdb stop"} <= paths
    assert {"--database-url", "--secret_name", "--run", "--log-format", "-v"} <= set(option_names())
    assert {"DATABASE_URL", "DB_PASSWORD", "MONGO_URL", "SQL_DIR", "LOG_FORMAT", "MONGOSH", "PGPASSWORD"} <= set(
        environment_variables())


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in commands()])
def test_every_command_is_documented(path):
    # A subcommand is documented as "group sub" (`sql accept-drift`), a top-level one in a code span.
    text = docs_text()
    assert (f"`{path}" in text) if " " not in path else (path in text), f"{path} is in no page of README.md, docs/"


def test_every_option_is_documented():
    text = docs_text()
    missing = [name for name in option_names() if not mentioned(name, text)]
    assert not missing, f"options in no page of README.md or docs/: {missing}"


def test_every_environment_variable_is_documented():
    text = docs_text()
    missing = [name for name in environment_variables() if not mentioned(name, text)]
    assert not missing, f"environment variables in no page of README.md or docs/: {missing}"


def github_anchors(markdown: str) -> set[str]:
    """The ids GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens, -1, -2 for
    repeats."""
    seen, anchors = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", strip_fences(markdown), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def strip_fences(markdown: str) -> str:
    return re.sub(r"^ *```.*?^ *```", "", markdown, flags=re.M | re.S)


def strip_code(markdown: str) -> str:
    """The text without fenced blocks and code spans (a link inside them is not one)."""
    return re.sub(r"(`+).*?\1", "", strip_fences(markdown), flags=re.S)


def test_every_relative_link_resolves():
    broken = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", strip_code(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in github_anchors(linked.read_text()):
                broken.append(f"{page.name}: {target} (no heading #{anchor})")
    assert not broken, broken


def test_the_readme_is_a_front_door_and_the_pages_stay_readable():
    """Issue 22: the README at most 200 lines; prose lines at most 120 characters, no table cell over 300 (a long
    rule becomes a list); each page opens with its summary before any reference."""
    assert len(DOCS[0].read_text().splitlines()) <= 200
    assert len(DOCS) >= 11, "the docs/ pages are missing"
    long = []
    for page in DOCS:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2] and not lines[2].startswith(("|", "#")), page
        fenced = False
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced:
                continue
            elif line.startswith("|"):
                long += [f"{page.name}:{number}: a cell of {len(cell.strip())}"
                         for cell in re.split(r"(?<!\\)\|", line)[1:-1] if len(cell.strip()) > 300]
            elif len(line) > 120:
                long.append(f"{page.name}:{number}: a line of {len(line)}")
    assert not long, long
