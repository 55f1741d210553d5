"""Doctor's word on who else may write the runner's bookkeeping: the tables are its own, and a role that writes
them forges a live lock (migrate waits, break-lock refuses) or deletes history (a migration applied twice).
migrate takes such rights on the tables its user owns (trust.disown); the rest, and the roles the user is granted
to (they act as it), are for a DBA."""

from __future__ import annotations

from migrator import trust
from migrator.doctor import FAIL, WARN, Check, DoctorReport


def bookkeeping_grants(report: DoctorReport, backend, schema: str, user: str) -> None:
    """A WARN for rights migrate takes, a FAIL for those on tables it does not own, a WARN naming the members."""
    grants, members = (backend.verified[8], backend.verified[9]) if len(backend.verified) > 9 else ([], [])
    mine = [grant for grant in grants if grant[3] == "true"]
    others = [grant for grant in grants if grant[3] != "true"]
    if mine:
        report.add(Check("postgres bookkeeping grants", WARN, f"other roles may write the runner's bookkeeping: "
                         f"{trust.grants_list(schema, mine)}; they could forge its lock or delete its history",
                         f"the next migrate revokes it, or run {trust.revoke_sql(schema, mine)}"))
    if others:
        report.add(Check("postgres bookkeeping grants", FAIL, f"other roles may write the runner's bookkeeping: "
                         f"{trust.grants_list(schema, others)}; they could forge its lock or delete its history",
                         f"as the tables' owner run {trust.revoke_sql(schema, others)}"))
    if members:
        report.add(Check("postgres bookkeeping grants", WARN, f"roles {', '.join(members)} are granted user {user}: "
                         "they act as it and may write the runner's bookkeeping (forge its lock, delete its history)",
                         f"REVOKE {user} FROM {', '.join(members)}; give the application a role of its own"))
