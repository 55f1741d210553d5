"""Schema truth: one canonical description of the managed schema (catalog introspection), and what is
built on it: schema.sql, live drift, up-down-up verification of migrations, adoption by comparison.

- model: the description as data (objects keyed by kind and name) and its text;
- describe: the description of a live database, read from the catalog (`describe.describe`);
- diff: two descriptions -> one readable line per changed object (`diff.diff`);
- snapshot: the description recorded in the bookkeeping after a change, and live drift against it;
- scratch: throwaway databases on a server, migrations applied through the runner's own path;
- verify: apply, roll back, re-apply each migration and compare; adopt: find the history prefix a database matches;
- generate: schema.sql (`make schema`).

Each name loads its module on first use: a drift check answered by the catalog's fingerprint (a no-op migrate)
never loads the describing code. (describe() and diff() are imported from their modules, which share their names.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migrator import lazy_names

if TYPE_CHECKING:  # (the names, loaded by __getattr__ below)
    from migrator.schema.diff import summary
    from migrator.schema.model import Description, Item

_WHERE = {"Description": "model", "Item": "model", "summary": "diff"}

__all__ = sorted(_WHERE)


__getattr__ = lazy_names.loader(__name__, _WHERE)
