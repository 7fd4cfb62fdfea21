-- Claiming due events scans only the rows that can be due. Without this the
-- claim went through inbox_status_seq, whose entries for 'pending' outlive every
-- status change until VACUUM: on a 100k-row inbox a claim that found nothing
-- took 3.9 s (bitmap scan over 157k dead entries); with it, 0.1 ms.
CREATE INDEX inbox_due ON inbox (seq) WHERE status IN ('pending', 'failed');
-- Every event updates its row twice (lease, done): vacuum the inbox before the
-- dead rows pile up, not at the default 20% of the table.
ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
