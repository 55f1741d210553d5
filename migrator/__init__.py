"""hcm-db-migrations: keeps the HCM reporting PostgreSQL schema and MongoDB data up to date.

The layers, each importing only the ones below it:
  cli       -- the command line: one module per command family; parses, calls a command, renders its report
  commands  -- the command API: one plain function per command, taking CommandSettings, returning a report
  reports   -- what the commands return, with their text and JSON renderings side by side
  doctor    -- the checks of `runner.py doctor`
  postgres  -- the SQL side, through yoyo-migrations (files, splitter, sessions, apply, errors)
  schema    -- the schema's description: schema.sql, live drift, verify, adopt
  mongo     -- the MongoDB / DocumentDB patches (log, lock, dry runs)
  checksums, pg_lock, lint -- drift of applied files, the crash-safe lock, squawk
  settings  -- the one resolver of both stores' settings; env (environment, .env, NAME_FILE), secrets (AWS),
               tls (CA bundle, TLS rules), urls (URLs parsed without echoing credentials), devdb (local server)
  targets   -- the value types (options, targets)
  interrupt -- SIGTERM as an orderly, reported stop
  output, errors, whoami -- printing and masking; the error type and exit codes; who and where this runner is
"""

__version__ = "0.1.0"
