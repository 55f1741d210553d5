"""`runner.py doctor`: everything a real run needs, checked without changing anything.

One Check per line: ok, warn (works, but look), FAIL (a real run would fail here), with what to do.
The checks call the runner's own code (the settings resolver, the connections, the bookkeeping
readers), so doctor fails exactly where a run would, with the same words:
  environment -- .env, the settings of both stores, the AWS secrets, the CA bundle, mongosh, squawk
  postgres    -- reachable, login, server version, TLS, privileges, bookkeeping, pending, drift
  mongo       -- reachable, auth, database, applied_patches, the patch lock, DocumentDB options
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from migrator.output import unquoted_secrets, visible

OK, WARN, FAIL = "ok", "warn", "FAIL"
NAME_WIDTH = 20  # the check names' column; wider when a name is longer


@dataclass
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    remedy: str = ""  # what to do, for warn and FAIL
    schema: str | None = None  # the tenant schema a per-schema check is about (doctor over several schemas)

    @property
    def label(self) -> str:
        """The name column: a per-schema check says its schema first, as a run's lines do."""
        return f"[{self.schema}] {self.name}" if self.schema else self.name

    def line(self, width: int = NAME_WIDTH) -> str:
        """One line: the names in it come from the catalogs (a home schema, an owner), any of which may hold a line
        break; each control character is written as its escape, so no name forges a line (JSON keeps them as
        they are: its encoding escapes them)."""
        text = f"{self.status:<4}  {self.label:<{width}}  {self.detail}"
        return visible(text + (f" -> {self.remedy}" if self.remedy else ""))

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        if self.schema is None:  # a run without several schemas keeps its JSON as ever
            del fields["schema"]
        return fields


def one_line(text: object) -> str:
    """A server's message as one line (PostgreSQL's carry newlines, DETAIL and HINT)."""
    return " ".join(str(text).split())


def failed(name: str, message: str, remedy: str = "") -> Check:
    """A FAIL from one of the runner's error messages, which say what and then, after '; ', what to do."""
    detail, _, told = one_line(unquoted_secrets(message)).partition("; ")
    return Check(name, FAIL, detail, told or remedy)


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        """Add a check; a FAIL already said (the resolver repeats a secret's or CA bundle's failure) is not repeated."""
        for said in self.checks:
            if check.status == FAIL == said.status and said.detail == check.detail and said.schema == check.schema:
                return said
        self.checks.append(check)
        return check

    @property
    def exit_code(self) -> int:
        return 1 if any(c.status == FAIL for c in self.checks) else 0

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for c in self.checks if c.status == status) for status in (OK, WARN, FAIL)}

    def failed_schemas(self) -> list[str]:
        """The schemas with a FAIL line, in the order checked."""
        return list(dict.fromkeys(c.schema for c in self.checks if c.status == FAIL and c.schema))

    def to_json(self) -> dict[str, Any]:
        report = {"ok": self.exit_code == 0, "counts": self.counts(), "checks": [c.to_json() for c in self.checks]}
        if any(c.schema for c in self.checks):
            report["failed_schemas"] = self.failed_schemas()
        return report

    def lines(self) -> list[str]:
        counts = self.counts()
        verdict = "a real run would fail: fix the FAIL lines" if counts[FAIL] else "ready"
        failing = self.failed_schemas()
        where = f" (schema{'s' if len(failing) > 1 else ''} {', '.join(failing)})" if failing else ""
        width = max([NAME_WIDTH] + [len(c.label) for c in self.checks])
        return [c.line(width) for c in self.checks] + [
            f"doctor: {counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} FAIL{where}; {verdict}"]


@dataclass
class SchemaChecks:
    """The report as one schema's checks see it: each check added is stamped with the schema."""

    report: DoctorReport
    schema: str

    def add(self, check: Check) -> Check:
        check.schema = self.schema
        return self.report.add(check)
