"""The runner's names for the driver's transaction status values are the driver's (transaction_status.py)."""

import psycopg2.extensions as ext

from migrator.postgres import transaction_status


def test_the_shared_names_are_the_drivers_values():
    assert transaction_status.IDLE == ext.TRANSACTION_STATUS_IDLE
    assert transaction_status.IN_TRANSACTION == ext.TRANSACTION_STATUS_INTRANS
    assert transaction_status.IN_ERROR == ext.TRANSACTION_STATUS_INERROR
    assert transaction_status.LOST == ext.TRANSACTION_STATUS_UNKNOWN
