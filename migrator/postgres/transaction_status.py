"""psycopg2's transaction status values (`connection.info.transaction_status`), named once. The driver's own names
(psycopg2.extensions.TRANSACTION_STATUS_*) would import it with the module; the running machinery's modules are
loaded for a file to run, and some (backfill: `sql lint`) without any connection (tests/test_transaction_status.py
checks the values are the driver's)."""

IDLE = 0  # TRANSACTION_STATUS_IDLE: no transaction open (so no transaction-level lock held)
IN_TRANSACTION = 2  # TRANSACTION_STATUS_INTRANS: a transaction open, no statement running
IN_ERROR = 3  # TRANSACTION_STATUS_INERROR: a transaction an error aborted
LOST = 4  # TRANSACTION_STATUS_UNKNOWN: the connection is gone
