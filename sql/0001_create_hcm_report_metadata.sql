-- 0001_create_hcm_report_metadata
--
-- Tracks report uploads to the filestore with their campaign metadata.
-- Replaces the Alembic revision 001, which named a column campaign_name while
-- indexing campaign_number and so failed on every fresh database.
--
-- Applied by `runner.py migrate` (yoyo, in one transaction) or, unchanged, by
-- `psql -v ON_ERROR_STOP=1 -f sql/0001_create_hcm_report_metadata.sql`.
-- Rolled back by 0001_create_hcm_report_metadata.rollback.sql.

CREATE TABLE hcm_report_metadata (
    id                SERIAL PRIMARY KEY,
    dag_run_id        VARCHAR(255) NOT NULL,
    dag_name          VARCHAR(100) NOT NULL,
    campaign_number   VARCHAR(100) NOT NULL,
    report_name       VARCHAR(100) NOT NULL,
    trigger_frequency VARCHAR(50)  NOT NULL,
    trigger_date      TIMESTAMP    NOT NULL,
    filestore_id      VARCHAR(255) NOT NULL,
    tenant_id         VARCHAR(50),
    created_at        TIMESTAMP    NOT NULL DEFAULT now(),
    CONSTRAINT uk_hcm_report_filestore_id UNIQUE (filestore_id)
);

CREATE INDEX idx_hcm_report_campaign ON hcm_report_metadata (campaign_number);
CREATE INDEX idx_hcm_report_name ON hcm_report_metadata (report_name);
CREATE INDEX idx_hcm_report_frequency ON hcm_report_metadata (trigger_frequency);
CREATE INDEX idx_hcm_report_trigger_date ON hcm_report_metadata (trigger_date);
-- The UI's common filter: campaign, then report, then frequency.
CREATE INDEX idx_hcm_report_campaign_report_freq
    ON hcm_report_metadata (campaign_number, report_name, trigger_frequency);

COMMENT ON TABLE hcm_report_metadata IS 'Report uploads to the filestore, with the campaign metadata of each report';
COMMENT ON COLUMN hcm_report_metadata.id IS 'Surrogate primary key';
COMMENT ON COLUMN hcm_report_metadata.dag_run_id IS 'Airflow DAG run ID';
COMMENT ON COLUMN hcm_report_metadata.dag_name IS 'Name of the DAG that generated the report';
COMMENT ON COLUMN hcm_report_metadata.campaign_number IS 'Campaign identifier';
COMMENT ON COLUMN hcm_report_metadata.report_name IS 'Type of report generated';
COMMENT ON COLUMN hcm_report_metadata.trigger_frequency IS 'Report frequency: Daily, Weekly, Monthly';
COMMENT ON COLUMN hcm_report_metadata.trigger_date IS 'Date when report was triggered';
COMMENT ON COLUMN hcm_report_metadata.filestore_id IS 'UUID from filestore service';
COMMENT ON COLUMN hcm_report_metadata.tenant_id IS 'Tenant the report belongs to';
COMMENT ON COLUMN hcm_report_metadata.created_at IS 'When the row was inserted';
