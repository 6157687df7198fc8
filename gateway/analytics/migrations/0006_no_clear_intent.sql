-- The prompt asked for nothing a workflow makes ("hi", "thanks"): the classifier answered its
-- default workflow with metadata.no_clear_intent. Counting these shows how often users arrive
-- without knowing what to ask. NULL: not known (rows from before this column, requests that
-- ended before a classification).
ALTER TABLE intent_classification_logs ADD COLUMN no_clear_intent BOOLEAN;
