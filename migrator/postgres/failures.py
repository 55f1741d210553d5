"""How the runner's PostgreSQL connections fail: in one line naming the server, never a hang.

connection_error turns a driver's connect error into what to check; guard_reads bounds every statement's
wait for an answer on a connection (a proxy gone silent after login otherwise hangs libpq for ever).
"""

from __future__ import annotations

import os
import socket

from migrator import output
from migrator.errors import MigratorError
from migrator.targets import PostgresTarget

# The run's own URL carries its read timeout to Backend.connect (popped there, never sent to libpq).
READ_TIMEOUT_ARG = "hcm_read_timeout"


def guard_reads(connection, where: str, seconds: float) -> None:
    """Every statement on `connection` gets an answer within `seconds`, or fails in one line naming the server.

    libpq waits for an answer for ever, and neither keepalives nor tcp_user_timeout help when a proxy
    between goes silent after login (its kernel still acknowledges everything). A timer shuts the
    socket down (a dup of libpq's descriptor, so libpq's own stays valid): libpq's wait ends with
    "server closed the connection", which the cursor turns into the line below. The run's own connection
    only (bookkeeping and catalog reads, in migrate too), never a migration's session: a migration's
    statement may rightly run for hours (statement_timeout bounds it on the server)."""
    import threading

    import psycopg2.extensions

    lock = threading.Lock()  # the timer never shuts a socket whose statement has already returned

    def shut(state: dict) -> None:
        with lock:
            if state["done"]:
                return
            state["fired"] = True
            try:
                with socket.socket(fileno=os.dup(connection.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg2.Error):
                pass

    class GuardedCursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            state = {"done": False, "fired": False}
            timer = threading.Timer(seconds, shut, (state,))
            timer.daemon = True
            timer.start()
            try:
                return super().execute(query, vars)
            except psycopg2.Error as exc:
                if state["fired"]:
                    raise MigratorError(f"PostgreSQL at {where}: no answer within {seconds:g} s (the server, or a proxy "
                                        "or network between, went silent); check the network path, or raise "
                                        "DB_READ_TIMEOUT for slow catalog reads") from exc
                raise
            finally:
                with lock:
                    state["done"] = True
                timer.cancel()

    connection.cursor_factory = GuardedCursor


def connection_error(exc: Exception, target: PostgresTarget) -> MigratorError:
    text = output.scrub(str(exc).strip())
    where = target.where
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        what = f"authentication failed for user {target.user}; check the user and password ({_origin(target)})"
    elif "does not exist" in lowered and "database" in lowered:
        what = f"database {target.dbname} does not exist; create it (createdb {target.dbname}) or fix the database name ({_origin(target)})"
    elif "could not translate host name" in lowered or "name or service not known" in lowered:
        what = f"host {target.host} cannot be resolved; check the host name ({_origin(target)})"
    elif (folder := target.host or target.params.get("host") or "").startswith("/") and (
            "no such file or directory" in lowered or "connection refused" in lowered):  # a socket, no host or port
        what = (f"no server socket {folder}/.s.PGSQL.{target.port or 5432}" if "no such file" in lowered else
                "connection refused on its socket")
        what += f"; is the server running, and are the socket folder and port right? ({_origin(target)})"
    elif "connection refused" in lowered or "no such file or directory" in lowered:
        what = f"connection refused; is the server running, and are host and port right? ({_origin(target)})"
    elif "unrecognized configuration parameter" in lowered and "client_connection_check_interval" in lowered:
        what = "the server is older than PostgreSQL 14, which the runner needs (it cancels a dead runner's work)"
    elif "timeout expired" in lowered:
        what = "no answer within 10 s; check the host, port, firewall or security group"
    elif "root certificate file" in lowered or "certificate verify failed" in lowered:
        what = f"TLS verification failed ({text.splitlines()[-1].strip()}); check the CA bundle"
    else:
        what = text.splitlines()[-1].strip() if text else exc.__class__.__name__
    return MigratorError(f"cannot connect to PostgreSQL at {where}: {what}")


def _origin(target: PostgresTarget) -> str:
    origins = sorted(set(target.sources.values()) - {"default"})
    return "settings from " + (", ".join(origins) if origins else "defaults")
