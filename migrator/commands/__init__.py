"""The command API: one plain function per command, as Alembic's command.py.

Each takes a CommandSettings (what was asked), prints progress only through the sink it is given, and
returns a report (migrator.reports) that the CLI renders as text or JSON. The deploy rules live here, so
they are tested directly as well as through the CLI:

  deploy -- migrate, plan, status, config
  sql    -- rollback, new, mark, accept-changes, lint, break-lock
  mongo  -- the Mongo patches: status, apply, history, resolve, accept-changes, new
  base   -- CommandSettings and what the commands share (resolving targets, the locked connection)
"""
