-- Rollback of schema_kinds.sql.
DROP TABLE report_event;
DROP MATERIALIZED VIEW reporting.run_counts;
DROP VIEW reporting.daily_reports;
DROP TABLE report_run;
DROP PROCEDURE reset_runs(report_state);
DROP FUNCTION touch_report_run();
DROP SEQUENCE report_batch_seq;
DROP TYPE report_key;
DROP TYPE money_range;
DROP DOMAIN positive_int;
DROP TYPE report_state;
DROP SCHEMA reporting;
DROP EXTENSION hstore;
