-- API keys for Bearer authentication (gateway/apikeys.py): only SHA-256 hashes are stored.
-- Idempotent: `python -m gateway keys create` also creates the table when it runs first.
CREATE TABLE IF NOT EXISTS gateway_api_keys (
    key_hash   TEXT PRIMARY KEY,            -- sha256 hex of the key; the key itself is never stored
    user_id    TEXT NOT NULL,
    admin      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS gateway_api_keys_user ON gateway_api_keys (user_id);
