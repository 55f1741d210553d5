"""The names of yoyo's bookkeeping table, shared by the SQL side and the schema snapshot without importing each other."""

MIGRATION_TABLE = "_yoyo_migration"
