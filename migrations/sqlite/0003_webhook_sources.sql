-- phigate schema 3 (SQLite): webhook sources and their secrets, each secret a
-- Fernet token of its text under the first master key (never stored in clear).
CREATE TABLE webhook_sources (
    name        TEXT    PRIMARY KEY,
    scheme      TEXT    NOT NULL,
    tolerance_s INTEGER NOT NULL,
    deliver_to  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL
);

CREATE TABLE webhook_secrets (
    source      TEXT    NOT NULL REFERENCES webhook_sources (name) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    secret_enc  TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    not_after   INTEGER NOT NULL DEFAULT 0,
    retired_at  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (source, idx)
);
