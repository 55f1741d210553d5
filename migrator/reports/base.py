"""What every report shares: the SQL marker, plain lines, time as text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from migrator.sql_text import SqlText

__all__ = ["Lines", "SqlText"]


def _time(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


@dataclass
class Lines:
    """A report that is just lines (config, mark, accept-changes, resolve...)."""

    text: list[str]

    def lines(self) -> list[str]:
        return self.text
