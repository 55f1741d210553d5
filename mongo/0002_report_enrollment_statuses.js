// 0002_report_enrollment_statuses: counts enrollments by status and logs the counts.
//
// The example of a JavaScript patch. mongosh runs it with `db` connected and DRY_RUN defined
// (true unless `runner.py mongo apply --run`). It only reads, so it is safe everywhere; its
// applied_patches record keeps a snapshot of the counts taken when it was applied.
// patchComment(text) sets the record's comment; throw an Error to fail.

const counts = db.getCollection("enrollments")
  .aggregate([{ $group: { _id: "$status", n: { $sum: 1 } } }, { $sort: { _id: 1 } }])
  .toArray();
const summary = counts.length === 0 ? "no enrollments" : "enrollments by status: " + counts.map((c) => `${c._id}=${c.n}`).join(", ");
print(summary);
patchComment(`${DRY_RUN ? "dry run: " : ""}${summary}`);
