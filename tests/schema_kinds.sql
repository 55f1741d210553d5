-- Every kind of object the schema description covers; added as a migration by tests/test_schema_*.py.
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE SCHEMA reporting;
COMMENT ON SCHEMA reporting IS 'Derived reporting objects';
CREATE TYPE report_state AS ENUM ('queued', 'running', 'done');
CREATE DOMAIN positive_int AS integer NOT NULL CHECK (VALUE > 0);
CREATE TYPE money_range AS RANGE (SUBTYPE = numeric);
CREATE TYPE report_key AS (campaign varchar(100), report varchar(100));
CREATE SEQUENCE report_batch_seq START 100 INCREMENT 5;
CREATE TABLE report_run (
    run_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    report_id  integer NOT NULL REFERENCES hcm_report_metadata (id) ON DELETE CASCADE,
    state      report_state NOT NULL DEFAULT 'queued',
    attempts   positive_int DEFAULT 1,
    label      text COLLATE "C",
    label_len  integer GENERATED ALWAYS AS (length(label)) STORED,
    tags       hstore,
    batch      integer DEFAULT nextval('report_batch_seq'),
    CONSTRAINT ck_report_run_attempts CHECK (attempts < 100)
);
CREATE INDEX idx_report_run_state ON report_run (state) WHERE state <> 'done';
COMMENT ON TABLE report_run IS 'One run of a report';
COMMENT ON COLUMN report_run.state IS 'Where the run is';
CREATE FUNCTION touch_report_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.attempts := coalesce(NEW.attempts, 1);
    RETURN NEW;
END $$;
CREATE PROCEDURE reset_runs(p_state report_state) LANGUAGE sql AS $$ UPDATE report_run SET state = p_state $$;
CREATE TRIGGER trg_report_run_touch BEFORE INSERT ON report_run FOR EACH ROW EXECUTE FUNCTION touch_report_run();
CREATE VIEW reporting.daily_reports AS
    SELECT campaign_number, count(*) AS reports FROM hcm_report_metadata
    WHERE trigger_frequency = 'Daily' GROUP BY campaign_number;
CREATE MATERIALIZED VIEW reporting.run_counts AS SELECT state, count(*) AS runs FROM report_run GROUP BY state;
CREATE UNIQUE INDEX idx_run_counts_state ON reporting.run_counts (state);
CREATE TABLE report_event (
    at    timestamptz NOT NULL,
    what  text
) PARTITION BY RANGE (at);
CREATE TABLE report_event_2025 PARTITION OF report_event FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
GRANT SELECT ON report_run TO PUBLIC;
REVOKE EXECUTE ON FUNCTION touch_report_run() FROM PUBLIC;
