-- phigate schema 3 (PostgreSQL): webhook sources and their secrets, each secret
-- a Fernet token of its text under the first master key (never stored in clear).
CREATE TABLE webhook_sources (
    name        TEXT    COLLATE "C" PRIMARY KEY,
    scheme      TEXT    NOT NULL,
    tolerance_s BIGINT  NOT NULL,
    deliver_to  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    version     BIGINT  NOT NULL
);

CREATE TABLE webhook_secrets (
    source      TEXT    COLLATE "C" NOT NULL REFERENCES webhook_sources (name) ON DELETE CASCADE,
    idx         BIGINT  NOT NULL,
    secret_enc  TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    not_after   BIGINT  NOT NULL DEFAULT 0,
    retired_at  BIGINT  NOT NULL DEFAULT 0,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (source, idx)
);
