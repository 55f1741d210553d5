"""What the commands return: plain data, and its two renderings (text lines, a JSON-able dict) side by side.

The CLI prints `lines()` or `json.dumps(to_json())` of the same object (output.report), so the two cannot
disagree. Progress lines (a migration applied, a patch run) are printed by the commands as they happen;
these are the summaries. A line that is SQL for psql is a `SqlText`: printed exactly as it is.

Each name loads its module on first use: a command imports the reports it renders (a no-op migrate: postgres's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migrator import lazy_names

if TYPE_CHECKING:  # (the names, loaded by __getattr__ below)
    from migrator.reports.base import Lines, SqlText
    from migrator.reports.impact import ImpactReport
    from migrator.reports.mongo import HistoryReport, PatchRunReport, PatchStatusReport
    from migrator.reports.postgres import (MONGO_NOT_CONFIGURED, MigrateReport, MongoPlanReport, PlanReport,
                                           RollbackReport, SqlMigrateReport, StatusReport)
    from migrator.reports.tenants import (CountedLines, SchemaOutcome, SchemasPlanReport, SchemasReport,
                                          SchemasStatusReport)

_MODULES = {"base": ("Lines", "SqlText"), "impact": ("ImpactReport",),
            "mongo": ("HistoryReport", "PatchRunReport", "PatchStatusReport"),
            "postgres": ("MONGO_NOT_CONFIGURED", "MigrateReport", "MongoPlanReport", "PlanReport", "RollbackReport",
                         "SqlMigrateReport", "StatusReport"),
            "tenants": ("CountedLines", "SchemaOutcome", "SchemasPlanReport", "SchemasReport", "SchemasStatusReport")}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


__getattr__ = lazy_names.loader(__name__, _WHERE)
