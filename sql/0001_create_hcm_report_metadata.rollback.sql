-- Rollback of 0001_create_hcm_report_metadata: drops the table, its indexes
-- and comments with it. Destroys the table's data.

DROP TABLE hcm_report_metadata;
