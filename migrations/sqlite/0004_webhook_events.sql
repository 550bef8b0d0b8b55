-- phigate schema 4 (SQLite): the durable inbox of verified webhooks
-- (docs/formats.md section 18). One row per accepted event; the body is a
-- phi1 ciphertext under the context "webhook:" + id, never in clear. state:
-- 0 pending, 1 delivered, 2 dead. No foreign key to webhook_sources: a
-- source may come from the configuration file instead of the store.
CREATE TABLE webhook_events (
    id              TEXT    PRIMARY KEY,
    source          TEXT    NOT NULL,
    msg_id          TEXT    NOT NULL,
    request_id      TEXT    NOT NULL DEFAULT '',
    authenticated   INTEGER NOT NULL,
    secret_index    INTEGER NOT NULL,
    signed_ts_s     INTEGER NOT NULL,
    received_ms     INTEGER NOT NULL,
    content_type    TEXT    NOT NULL DEFAULT '',
    state           INTEGER NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_attempt_ms INTEGER NOT NULL DEFAULT 0,
    delivered_ms    INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT    NOT NULL DEFAULT '',
    body_len        INTEGER NOT NULL,
    body_enc        TEXT    NOT NULL,
    UNIQUE (source, msg_id)
);

-- The deliverer's claim: due pending events, oldest first.
CREATE INDEX webhook_events_due ON webhook_events (state, next_attempt_ms);
-- Lists of one state, newest first (a few dead events among millions
-- delivered).
CREATE INDEX webhook_events_state_id ON webhook_events (state, id);

-- The verify token of a source's subscription handshake (Oura's
-- verification_token, Fitbit's subscriber verification code): a secret apart
-- from the signing secrets, kept like them as a Fernet token of its text
-- under the first master key; '' for none (docs/formats.md section 11).
ALTER TABLE webhook_sources ADD COLUMN verify_token_enc TEXT NOT NULL DEFAULT '';
