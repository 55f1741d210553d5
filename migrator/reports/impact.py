"""`plan --impact`: per pending migration, per statement, the locks taken and the rewrites (postgres.impact)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from migrator.output import visible
from migrator.reports.base import SqlText


@dataclass
class ImpactReport:
    """`plan --impact`: per pending migration, per statement, the locks taken and the rewrites (postgres.impact)."""

    target: str  # masked live URL
    scratch: str  # where it was measured
    migrations: list  # postgres.impact.MigrationImpact
    lint_skipped: bool = False
    not_measured: list = field(default_factory=list)  # ids after the one that failed on the scratch database
    note: str = ""  # the scratch server is not the live database's (commands.plan_impact.scratch_note)

    @property
    def failed(self):  # the StatementImpact that failed on the scratch database, if one did
        return next((s for m in self.migrations for s in m.statements if s.error), None)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.not_measured else 0

    def _unmeasured(self) -> str:
        failed = next((m for m in self.migrations if any(s.error for s in m.statements)), None)
        where = f"{failed.id} line {self.failed.line} failed on the scratch database" if failed else "stopped"
        return (f"NOT measured: {', '.join(self.not_measured)} ({where}; what follows would be measured on the "
                f"wrong state: fix it and run plan --impact again)" if self.not_measured else
                f"{failed.id} line {self.failed.line} failed on the scratch database: fix it and run plan --impact again")

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "measured_on": self.scratch, "note": self.note or None,
                "not_measured": self.not_measured,
                "complete": self.exit_code == 0, "migrations": [
            {"id": m.id, "file": m.path, "transactional": m.transactional,
             "lint": None if self.lint_skipped else [vars(f) for f in m.findings],
             "statements": [{"line": s.line, "sql": SqlText(s.text), "locks": [lock.to_json() for lock in s.locks],
                             "rewrites": [r.relation for r in s.rewrites], "waits_for": s.waits_for, "error": s.error, "command": s.command,
                             "work": [w.to_json() for w in s.work],
                             "catalog_only": s.parsed and not s.work and not s.error and not s.rewrites,
                             "measured": "observed while it waited" if s.observed else "in a transaction"}
                            for s in m.statements]} for m in self.migrations]}

    def _head(self) -> str:
        if not self.migrations and not self.not_measured:
            return f"no pending migration on {self.target}: nothing to measure"
        return (f"impact of {len(self.migrations)} pending migration(s) on {self.target}: measured on a scratch "
                f"database on {self.scratch} (rolled back, then dropped); sizes from the live database")

    def lines(self) -> list[str]:
        lines = [self._head()] + ([self.note] if self.note else [])
        for m in self.migrations:
            held = "every lock below is held until its COMMIT" if m.transactional else "each statement commits alone"
            lines.append(f"{m.id} ({'transactional' if m.transactional else 'not transactional'}: {held})")
            for s in m.statements:
                lines.append(f"  line {s.line}: {s.summary}")
                lines += [f"    {lock}" for lock in s.locks]
                lines += [f"    {s.rewritten(r)}" for r in s.rewrites]
                lines += [f"    waits for {w}" for w in s.waits_for]
            lines += [f"  lint: {f}" for f in m.findings]
        if self.exit_code:
            lines.append(self._unmeasured())
        return _one_line_each(lines)

    def markdown(self) -> list[str]:
        """A table per migration, lint findings beside the statement they are about: for a pull request."""
        lines = ["## Migration impact", "", self._head().replace(self.target, _code(self.target)), ""]
        lines += [f"_{_cell(self.note)}_", ""] if self.note else []
        for m in self.migrations:
            held = "locks held until COMMIT" if m.transactional else "not transactional: each statement commits alone"
            lines += [f"### {m.id} ({held})", "", "| line | statement | locks | rewrites | lint |", "|---|---|---|---|---|"]
            for index, s in enumerate(m.statements):
                cells = [str(s.line), _code(_cell(" ".join(s.text.split())[:120])),
                         ("_observed while it waited_: " if s.observed else "")
                         + ("<br>".join(_cell(str(lock)) for lock in s.locks)
                            or ("failed: " + _cell(s.error) if s.error else "none")),
                         "<br>".join(_cell(s.rewritten(r)) for r in s.rewrites)
                         or "no",
                         "<br>".join(_cell(f"{f.rule}: {f.message}") for f in m.findings_at(index)) or ""]
                lines.append("| " + " | ".join(cells) + " |")
                if s.waits_for:
                    lines.append(f"| | waits for | {_cell('; '.join(s.waits_for))} | | |")
            lines.append("")
        if self.exit_code:
            lines.append(f"**{_cell(self._unmeasured())}**")
        if self.lint_skipped:
            lines.append("_lint skipped: squawk is not installed here_")
        return _one_line_each(lines)


def _one_line_each(lines: list[str]) -> list[str]:
    """Relation names (the catalog's, chosen by a migration's author), statements, server errors and lint findings
    go into these lines: each stays one line, its line breaks and control characters escaped (output.visible), so
    none can overwrite or forge a line of the reviewer's report."""
    return [visible(line) for line in lines]


def _code(text: str) -> str:
    """A Markdown code span that holds any backticks in `text`: fenced by a longer run (CommonMark)."""
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    return visible(text).replace("|", "\\|")
