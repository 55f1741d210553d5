"""The error the CLI reports as one line with an exit code; anything else is a bug."""

# Exit codes, documented in the README.
OK = 0
FAILED = 1
USAGE = 2
DRIFT = 3
LOCKED = 4
SCHEMA_DRIFT = 5  # the live schema differs from the description recorded after the last change
INTERRUPTED = 143  # stopped by SIGTERM: 128 + 15, as a shell reports it


def words(exc: BaseException) -> str:
    """An exception as a line's words: `Name: text`; the text alone for a library's private class (pymongo's
    `_OperationCancelled` says nothing to an operator), the name alone when there is no text."""
    text, name = str(exc).strip(), type(exc).__name__
    if name.startswith("_"):
        return text or "no reason given"
    return f"{name}: {text}" if text else name


class MigratorError(Exception):
    """A failure the user can act on: the message says what failed, where, and what to do."""

    def __init__(self, message: str, exit_code: int = FAILED, excerpt: tuple[str, ...] = ()):
        super().__init__(message)
        self.exit_code = exit_code
        self.excerpt = excerpt  # shown above the line: the file's line and a caret under the error, as psql does
