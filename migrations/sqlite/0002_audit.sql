-- phigate schema 2 (SQLite): the audit log. Records live in one table per
-- month, audit_YYYY_MM, created by phigate (audit_ensure_partition) with the
-- columns of the phg_audit_store_row; these tables hold what spans months.

-- The head of every writer's chain, updated in the transaction that appends.
CREATE TABLE audit_chains (
    chain  TEXT    PRIMARY KEY,
    seq    INTEGER NOT NULL,
    hash   TEXT    NOT NULL
);

-- Signed checkpoints of chain heads (docs/formats.md "Checkpoint").
CREATE TABLE audit_checkpoints (
    chain  TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    hash   TEXT    NOT NULL,
    ts_us  INTEGER NOT NULL,
    mac    TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
);

-- Every month partition ever created, and its retention state.
CREATE TABLE audit_partitions (
    month           TEXT    PRIMARY KEY,        -- 'YYYY-MM'
    created_at      INTEGER NOT NULL,
    archived_at     INTEGER NOT NULL DEFAULT 0,
    archive_sha256  TEXT    NOT NULL DEFAULT '',
    dropped_at      INTEGER NOT NULL DEFAULT 0
);
