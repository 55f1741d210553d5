"""What the commands return: plain data, and its two renderings (text lines, a JSON-able dict) side by side.

The CLI prints `lines()` or `json.dumps(to_json())` of the same object (output.report), so the two cannot
disagree. Progress lines (a migration applied, a patch run) are printed by the commands as they happen;
these are the summaries. A line that is SQL for psql is a `SqlText`: printed exactly as it is.
"""

from __future__ import annotations


from migrator.reports.base import Lines, SqlText
from migrator.reports.impact import ImpactReport
from migrator.reports.mongo import HistoryReport, PatchRunReport, PatchStatusReport
from migrator.reports.postgres import (MONGO_NOT_CONFIGURED, MigrateReport, MongoPlanReport, PlanReport, RollbackReport,
                                       SqlMigrateReport, StatusReport)
from migrator.reports.tenants import SchemaOutcome, SchemasPlanReport, SchemasReport, SchemasStatusReport

__all__ = ["HistoryReport", "ImpactReport", "Lines", "MONGO_NOT_CONFIGURED", "MigrateReport", "MongoPlanReport",
           "PatchRunReport", "PatchStatusReport", "PlanReport", "RollbackReport", "SchemaOutcome", "SchemasPlanReport",
           "SchemasReport", "SchemasStatusReport", "SqlMigrateReport", "SqlText", "StatusReport"]
