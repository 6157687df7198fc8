-- How each request ended: 'ok' (a result), or why it has none: 'rate_limited', 'overloaded',
-- 'client_disconnected'. Every request leaves a row, finished or not.
ALTER TABLE intent_classification_logs ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
UPDATE intent_classification_logs SET outcome = 'rate_limited' WHERE rate_limited;
