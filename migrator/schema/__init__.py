"""Schema truth: one canonical description of the managed schema (catalog introspection), and what is
built on it: schema.sql, live drift, up-down-up verification of migrations, adoption by comparison.

- model: the description as data (objects keyed by kind and name) and its text;
- describe: the description of a live database, read from the catalog;
- diff: two descriptions -> one readable line per changed object;
- snapshot: the description recorded in the bookkeeping after a change, and live drift against it;
- scratch: throwaway databases on a server, migrations applied through the runner's own path;
- verify: apply, roll back, re-apply each migration and compare; adopt: find the history prefix a database matches;
- generate: schema.sql (`make schema`).
"""

from migrator.schema.describe import describe
from migrator.schema.diff import diff, summary
from migrator.schema.model import Description, Item

__all__ = ["Description", "Item", "describe", "diff", "summary"]
