"""0001_close_expired_enrollments: ACTIVE enrollments whose therapy has ended become COMPLETED.

Ported from the team's 001_close_expired_enrollments.py (its log records, under that id, count as
applications of this patch). An ACTIVE enrollment with cycles > 0 has ended when its start
(reminderStartDate when set and non-empty, else txStartDate) plus cycles * daysInCycle days lies
before now.
"""

from datetime import datetime, timedelta, timezone

BATCH = 1000  # ids per update


def start_date(enrollment):
    return enrollment.get("reminderStartDate") or enrollment["txStartDate"]


def is_expired(enrollment, now):
    start = start_date(enrollment)
    if start.tzinfo is None:  # stored dates are UTC
        start = start.replace(tzinfo=timezone.utc)
    days = int(enrollment["cycles"]) * int(enrollment["daysInCycle"])
    return start + timedelta(days=days) < now


def run(db, dry_run):
    enrollments = db["enrollments"]
    now = datetime.now(timezone.utc)
    active = list(enrollments.find({"status": "ACTIVE", "cycles": {"$gt": 0}}))
    print("There are", len(active), "ACTIVE enrollments")
    expired = [e["_id"] for e in active if is_expired(e, now)]
    print("There are", len(expired), "expired ACTIVE enrollments")

    modified = 0
    for start in range(0, len(expired), BATCH):
        batch = expired[start:start + BATCH]
        for enrollment_id in batch:
            print("Dry run, not changing" if dry_run else "Setting to COMPLETED", enrollment_id)
        if not dry_run:
            # One round trip per batch, not per enrollment; status stays in the filter, so an
            # enrollment changed meanwhile is left alone.
            result = enrollments.update_many({"_id": {"$in": batch}, "status": "ACTIVE"}, {"$set": {"status": "COMPLETED"}})
            modified += result.modified_count

    verb = "Would modify" if dry_run else "Modified"
    count = len(expired) if dry_run else modified
    return (f"{verb} {count} enrollment records out of {len(expired)} expired enrollment records. "
            f"Total number of ACTIVE enrollments in the database is {len(active)}")
