-- phigate schema 1 (PostgreSQL): the PHI keyring and API keys.
CREATE TABLE phi_keyring (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    body        TEXT    NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- One row: bumped by every change to api_keys, polled by every instance.
CREATE TABLE phigate_changes (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    counter  BIGINT NOT NULL
);
INSERT INTO phigate_changes (id, counter) VALUES (1, 0);

CREATE TABLE api_keys (
    id            TEXT    COLLATE "C" PRIMARY KEY,  -- byte order, as SQLite: same pages
    key_hash      BYTEA   NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    key_index     BIGINT  NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('user', 'admin')),
    scopes        BIGINT  NOT NULL,
    user_id       TEXT    NOT NULL,
    description   TEXT    NOT NULL DEFAULT '',
    created_by    TEXT    NOT NULL,
    rate_limit    TEXT    NOT NULL DEFAULT '',
    replaced_by   TEXT    NOT NULL DEFAULT '',
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL DEFAULT 0,
    revoked_at    BIGINT  NOT NULL DEFAULT 0,
    grace_until   BIGINT  NOT NULL DEFAULT 0,
    last_used_at  BIGINT  NOT NULL DEFAULT 0,
    version       BIGINT  NOT NULL
);
CREATE INDEX api_keys_by_index ON api_keys (key_index);
CREATE INDEX api_keys_by_version ON api_keys (version);
