"""The SQL marker, a value type of its own so output and the reports share it without importing each other."""


class SqlText(str):
    """SQL from a migration file, which a DBA feeds to psql: output.report prints it exactly, never masked."""
