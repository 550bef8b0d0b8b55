-- phigate schema 2 (PostgreSQL): the audit log, range-partitioned by month on
-- ts_us (Unix microseconds). Partitions audit_log_YYYY_MM are created by
-- phigate (audit_ensure_partition) for the current and next month.
CREATE TABLE audit_log (
    id          TEXT    COLLATE "C" NOT NULL,
    ts_us       BIGINT  NOT NULL,
    chain       TEXT    COLLATE "C" NOT NULL,
    seq         BIGINT  NOT NULL,
    hash        TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    record      TEXT    NOT NULL,
    PRIMARY KEY (id, ts_us)
) PARTITION BY RANGE (ts_us);
CREATE INDEX audit_log_by_chain ON audit_log (chain, seq);
CREATE INDEX audit_log_by_ts ON audit_log (ts_us, id);
CREATE INDEX audit_log_by_user ON audit_log (user_id, ts_us);
CREATE INDEX audit_log_by_subject ON audit_log (subject, ts_us);
CREATE INDEX audit_log_by_request ON audit_log (request_id);

CREATE TABLE audit_chains (
    chain  TEXT    COLLATE "C" PRIMARY KEY,
    seq    BIGINT  NOT NULL,
    hash   TEXT    NOT NULL
);

CREATE TABLE audit_checkpoints (
    chain  TEXT    COLLATE "C" NOT NULL,
    seq    BIGINT  NOT NULL,
    hash   TEXT    NOT NULL,
    ts_us  BIGINT  NOT NULL,
    mac    TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
);

CREATE TABLE audit_partitions (
    month           TEXT    COLLATE "C" PRIMARY KEY,
    created_at      BIGINT  NOT NULL,
    archived_at     BIGINT  NOT NULL DEFAULT 0,
    archive_sha256  TEXT    NOT NULL DEFAULT '',
    dropped_at      BIGINT  NOT NULL DEFAULT 0
);
