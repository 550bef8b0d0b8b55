/*
 * store/sqlite.c: the SQLite engine of the store (the embedded default). One
 * database file in WAL mode, synchronous=FULL because the store holds the
 * audit log, foreign keys on, a busy timeout, defensive mode. Statements are
 * prepared once per connection, lazily, and always reused with bound
 * parameters; the only SQL text run as such is the trusted migration SQL
 * embedded in the binary and the DDL of the audit log's month tables, whose
 * names are formatted from validated integers in one place (month_table()).
 *
 * It does not own the URL, the pool, the migration order or the public API
 * (store.c does), and needs no locks: a connection is used by one thread at a
 * time. The contract is store/engine.h; the design is DESIGN.md ("Storage")
 * and the tables are in migrations/sqlite/.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "store/engine.h"

/* A key_index is 64 bits of a SHA-256: a collision between two keys is
 * already unlikely, more than this many means the table is not what we wrote. */
#define BY_INDEX_MAX 1000
#define LIST_MAX 1000
#define DEFAULT_BUSY_TIMEOUT_MS 5000

/* Every api_keys read and write uses these columns in this order; row_read()
 * and bind_record() depend on it. */
#define KEY_COLUMNS                                                                              \
    "id, key_hash, key_index, role, scopes, user_id, description, created_by, rate_limit, "      \
    "replaced_by, created_at, expires_at, revoked_at, grace_until, last_used_at, version"

enum col {
    COL_ID,
    COL_HASH,
    COL_INDEX,
    COL_ROLE,
    COL_SCOPES,
    COL_USER_ID,
    COL_DESCRIPTION,
    COL_CREATED_BY,
    COL_RATE_LIMIT,
    COL_REPLACED_BY,
    COL_CREATED_AT,
    COL_EXPIRES_AT,
    COL_REVOKED_AT,
    COL_GRACE_UNTIL,
    COL_LAST_USED_AT,
    COL_VERSION,
};

enum stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_SCHEMA_EXISTS,
    ST_SCHEMA_MAX,
    ST_SCHEMA_HAS,
    ST_SCHEMA_INSERT,
    ST_KEYRING_GET,
    ST_KEYRING_PUT,
    ST_COUNTER_BUMP,
    ST_COUNTER_GET,
    ST_KEY_INSERT,
    ST_KEY_GET,
    ST_KEY_BY_INDEX,
    ST_KEY_LIST,
    ST_KEY_STATE,
    ST_KEY_REVOKE,
    ST_KEY_MARK_ROTATED,
    ST_KEY_SET_LIMIT,
    ST_KEY_TOUCH,
    ST_KEYS_SINCE,
    ST_BEGIN_READ,
    ST_AUDIT_PART_STATE,
    ST_AUDIT_PART_REGISTER,
    ST_AUDIT_PART_ARCHIVE,
    ST_AUDIT_PART_DROP,
    ST_AUDIT_PARTS,
    ST_AUDIT_PARTS_LIVE,
    ST_AUDIT_CHAIN_SET,
    ST_AUDIT_CHAIN_GET,
    ST_AUDIT_CHAINS,
    ST_AUDIT_CP_INSERT,
    ST_AUDIT_CPS,
    ST_WHE_INSERT,
    ST_WHE_FIND,
    ST_WHE_DUE,
    ST_WHE_LEASE,
    ST_WHE_GET,
    ST_WHE_REPORT,
    ST_WHE_STATE,
    ST_COUNT
};

/* Every webhook_events read uses these columns in this order (whe_row_read),
 * then body_enc where the body is read; the insert binds them all. */
#define WHE_COLUMNS                                                                              \
    "id, source, msg_id, request_id, authenticated, secret_index, signed_ts_s, received_ms, "    \
    "content_type, state, attempts, next_attempt_ms, last_attempt_ms, delivered_ms, "            \
    "last_status, last_error, body_len"
#define WHE_NCOLUMNS 17
#define WHE_INSERT_COLUMNS                                                                       \
    "id, source, msg_id, request_id, authenticated, secret_index, signed_ts_s, received_ms, "    \
    "content_type, next_attempt_ms, body_len, body_enc"

/* Fixed SQL only: every caller value is a bound parameter. */
static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_SCHEMA_EXISTS] =
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'phigate_schema'",
    [ST_SCHEMA_MAX] = "SELECT COALESCE(MAX(version), 0) FROM phigate_schema",
    [ST_SCHEMA_HAS] = "SELECT count(*) FROM phigate_schema WHERE version = ?1",
    [ST_SCHEMA_INSERT] = "INSERT INTO phigate_schema (version, applied_at) VALUES (?1, ?2)",
    [ST_KEYRING_GET] = "SELECT body FROM phi_keyring WHERE id = 1",
    [ST_KEYRING_PUT] = "INSERT INTO phi_keyring (id, body, updated_at) VALUES (1, ?1, ?2) "
                       "ON CONFLICT (id) DO UPDATE SET body = excluded.body, "
                       "updated_at = excluded.updated_at",
    [ST_COUNTER_BUMP] =
        "UPDATE phigate_changes SET counter = counter + 1 WHERE id = 1 RETURNING counter",
    [ST_COUNTER_GET] = "SELECT counter FROM phigate_changes WHERE id = 1",
    [ST_KEY_INSERT] = "INSERT INTO api_keys (" KEY_COLUMNS ") VALUES "
                      "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    [ST_KEY_GET] = "SELECT " KEY_COLUMNS " FROM api_keys WHERE id = ?1",
    [ST_KEY_BY_INDEX] = "SELECT " KEY_COLUMNS " FROM api_keys WHERE key_index = ?1 ORDER BY id",
    [ST_KEY_LIST] = "SELECT " KEY_COLUMNS " FROM api_keys WHERE id > ?1 ORDER BY id LIMIT ?2",
    [ST_KEY_STATE] = "SELECT revoked_at, replaced_by FROM api_keys WHERE id = ?1",
    [ST_KEY_REVOKE] = "UPDATE api_keys SET revoked_at = ?1, version = ?2 WHERE id = ?3",
    [ST_KEY_MARK_ROTATED] =
        "UPDATE api_keys SET grace_until = ?1, replaced_by = ?2, version = ?3 WHERE id = ?4",
    [ST_KEY_SET_LIMIT] = "UPDATE api_keys SET rate_limit = ?1, version = ?2 WHERE id = ?3",
    [ST_KEY_TOUCH] = "UPDATE api_keys SET last_used_at = MAX(last_used_at, ?1) WHERE id = ?2",
    [ST_KEYS_SINCE] =
        "SELECT " KEY_COLUMNS " FROM api_keys WHERE version > ?1 ORDER BY version, id",
    /* Deferred: the first read takes the snapshot that every later read of
     * the transaction sees (audit walks and queries that span months). */
    [ST_BEGIN_READ] = "BEGIN",
    [ST_AUDIT_PART_STATE] =
        "SELECT archived_at, dropped_at FROM audit_partitions WHERE month = ?1",
    [ST_AUDIT_PART_REGISTER] =
        "INSERT OR IGNORE INTO audit_partitions (month, created_at) VALUES (?1, ?2)",
    [ST_AUDIT_PART_ARCHIVE] =
        "UPDATE audit_partitions SET archived_at = ?1, archive_sha256 = ?2 WHERE month = ?3",
    [ST_AUDIT_PART_DROP] = "UPDATE audit_partitions SET dropped_at = ?1 WHERE month = ?2",
    [ST_AUDIT_PARTS] = "SELECT month, created_at, archived_at, dropped_at, archive_sha256 "
                       "FROM audit_partitions ORDER BY month",
    [ST_AUDIT_PARTS_LIVE] =
        "SELECT month FROM audit_partitions WHERE dropped_at = 0 ORDER BY month",
    [ST_AUDIT_CHAIN_SET] =
        "INSERT OR REPLACE INTO audit_chains (chain, seq, hash) VALUES (?1, ?2, ?3)",
    [ST_AUDIT_CHAIN_GET] = "SELECT seq, hash FROM audit_chains WHERE chain = ?1",
    [ST_AUDIT_CHAINS] = "SELECT chain, seq, hash FROM audit_chains ORDER BY chain",
    [ST_AUDIT_CP_INSERT] = "INSERT INTO audit_checkpoints (chain, seq, hash, ts_us, mac) "
                           "VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_AUDIT_CPS] = "SELECT chain, seq, hash, ts_us, mac FROM audit_checkpoints "
                     "WHERE chain = ?1 ORDER BY seq",
    /* A new row is PENDING with no attempt: the other columns' defaults. */
    [ST_WHE_INSERT] = "INSERT INTO webhook_events (" WHE_INSERT_COLUMNS ") VALUES (?1, ?2, ?3, "
                      "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) "
                      "ON CONFLICT (source, msg_id) DO NOTHING",
    [ST_WHE_FIND] = "SELECT id FROM webhook_events WHERE source = ?1 AND msg_id = ?2",
    [ST_WHE_DUE] = "SELECT " WHE_COLUMNS ", body_enc FROM webhook_events WHERE state = 0 AND "
                   "next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2",
    [ST_WHE_LEASE] = "UPDATE webhook_events SET next_attempt_ms = ?1 WHERE id = ?2",
    [ST_WHE_GET] = "SELECT " WHE_COLUMNS ", body_enc FROM webhook_events WHERE id = ?1",
    /* ?2 the new state, ?3 1 for an attempt made (0: a bookkeeping change) */
    [ST_WHE_REPORT] =
        "UPDATE webhook_events SET state = ?2, attempts = attempts + ?3, "
        "last_attempt_ms = CASE WHEN ?3 = 1 THEN ?4 ELSE last_attempt_ms END, "
        "last_status = CASE WHEN ?3 = 1 THEN ?5 ELSE last_status END, last_error = ?6, "
        "delivered_ms = CASE WHEN ?2 = 1 THEN ?4 ELSE delivered_ms END, "
        "next_attempt_ms = CASE WHEN ?2 = 0 THEN ?7 ELSE next_attempt_ms END "
        "WHERE id = ?1 AND state = 0",
    [ST_WHE_STATE] = "SELECT state FROM webhook_events WHERE id = ?1",
};

/*
 * The audit log's month tables cannot share statements (the table is part of
 * the SQL), so each connection keeps the statements of the few months it
 * uses in a small cache, least recently used out. A writer touches one or
 * two months; a walk over years prepares as it goes.
 */
#define MONTH_CACHE_MAX 8

typedef struct month_stmts {
    int ym;         /* year * 12 + month - 1; 0: a free slot */
    char table[16]; /* "audit_YYYY_MM" */
    int ensured;    /* this connection created or saw the table */
    uint64_t last_use;
    sqlite3_stmt *insert;
    sqlite3_stmt *walk;
    sqlite3_stmt *rows;
    sqlite3_stmt *query; /* prepared for the filter set query_mask */
    unsigned query_mask;
} month_stmts;

typedef struct checkpointer checkpointer;

typedef struct sqlite_conn {
    sqlite3 *db;
    checkpointer *cp; /* the file's background checkpointer, or NULL */
    int write_locked; /* holds cp->write_lock (inside a write transaction) */
    sqlite3_stmt *stmt[ST_COUNT]; /* NULL until first used */
    month_stmts months[MONTH_CACHE_MAX];
    uint64_t month_clock; /* for least recently used */
} sqlite_conn;

/* ---- errors ----------------------------------------------------------------- */

/* SQLite result code (extended or primary) -> phg_status, per engine.h. */
static phg_status map_rc(int rc)
{
    switch (rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        return PHG_ERR_EXISTS;
    default:
        break;
    }
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return PHG_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
        return PHG_ERR_UNAVAILABLE;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
        return PHG_ERR_SCHEMA;
    case SQLITE_NOMEM:
        return PHG_ERR_NOMEM;
    case SQLITE_TOOBIG:
        return PHG_ERR_TOO_LARGE;
    case SQLITE_CONSTRAINT:
        /* CHECK or NOT NULL: bind_record() validates first, so the row did
         * not fit the schema. */
        return PHG_ERR_INVALID;
    default: /* IOERR, FULL, READONLY, and the rest */
        return PHG_ERR_IO;
    }
}

static void set_err(char *err, size_t err_len, const char *what, const char *why)
{
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "%s: %s", what, why);
}

/* ---- statements --------------------------------------------------------------- */

/*
 * The connection's statement `id`, prepared on first use. Statements stay
 * valid across schema changes (sqlite3_prepare_v3 re-prepares them); a
 * prepare that fails with a plain SQL error means a table is missing, that
 * is, the database has not been migrated: PHG_ERR_SCHEMA.
 */
static phg_status stmt_get(sqlite_conn *c, enum stmt_id id, sqlite3_stmt **out)
{
    int src;

    if (c->stmt[id] != NULL) {
        *out = c->stmt[id];
        return PHG_OK;
    }
    src = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->stmt[id],
                             NULL);
    if (src != SQLITE_OK) {
        c->stmt[id] = NULL;
        return (src & 0xff) == SQLITE_ERROR ? PHG_ERR_SCHEMA : map_rc(src);
    }
    *out = c->stmt[id];
    return PHG_OK;
}

/* Make a statement reusable and drop its references to caller memory
 * (text and blobs are bound SQLITE_STATIC). NULL is a no-op. */
static void stmt_done(sqlite3_stmt *st)
{
    if (st == NULL)
        return;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Run a statement that returns no row. */
static phg_status stmt_exec(sqlite3_stmt *st)
{
    int src = sqlite3_step(st);
    phg_status rc = src == SQLITE_DONE ? PHG_OK : map_rc(src);

    if (src == SQLITE_ROW)
        rc = PHG_ERR_INTERNAL;
    stmt_done(st);
    return rc;
}

/* A statement with bound parameters that returns one integer in one row;
 * NOT_FOUND if it returns none. */
static phg_status stmt_int64(sqlite3_stmt *st, int64_t *value)
{
    int src = sqlite3_step(st);
    phg_status rc;

    if (src == SQLITE_DONE) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    if (src != SQLITE_ROW) {
        rc = map_rc(src);
        goto out;
    }
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    *value = sqlite3_column_int64(st, 0);
    rc = PHG_OK;
out:
    stmt_done(st);
    return rc;
}

/* ---- transactions ------------------------------------------------------------- */

/* Run one of the cached statements that take no parameters. */
static phg_status exec_cached(sqlite_conn *c, int which)
{
    sqlite3_stmt *st = NULL;
    phg_status rc = stmt_get(c, which, &st);

    if (rc != PHG_OK)
        return rc;
    return stmt_exec(st);
}

/* BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
 * timeout), so a transaction that has started cannot fail later for a lock. */
static void cp_write_lock(checkpointer *cp, int lock);

static void write_unlock(sqlite_conn *c)
{
    if (c->write_locked) {
        c->write_locked = 0;
        cp_write_lock(c->cp, 0);
    }
}

static phg_status txn_begin(sqlite_conn *c)
{
    phg_status rc;
    if (c->cp != NULL && !c->write_locked) {
        cp_write_lock(c->cp, 1);
        c->write_locked = 1;
    }
    rc = exec_cached(c, ST_BEGIN);
    if (rc != PHG_OK)
        write_unlock(c);
    return rc;
}

static phg_status txn_commit(sqlite_conn *c)
{
    phg_status rc = exec_cached(c, ST_COMMIT);
    /* a failed COMMIT leaves the transaction open: txn_abort unlocks */
    if (rc == PHG_OK || sqlite3_get_autocommit(c->db))
        write_unlock(c);
    return rc;
}

/* Called on every error path: whatever failed, no transaction stays open on
 * the connection (a failed COMMIT, for one, leaves it open). */
static void txn_abort(sqlite_conn *c)
{
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    write_unlock(c);
}

/* UPDATE ... RETURNING: the new change counter, inside the caller's
 * transaction. */
static phg_status counter_bump(sqlite_conn *c, int64_t *counter)
{
    sqlite3_stmt *st = NULL;
    phg_status rc;
    int src;

    rc = stmt_get(c, ST_COUNTER_BUMP, &st);
    if (rc != PHG_OK)
        return rc;
    src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        /* DONE: the single row of phigate_changes is missing. */
        rc = src == SQLITE_DONE ? PHG_ERR_SCHEMA : map_rc(src);
        goto out;
    }
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    *counter = sqlite3_column_int64(st, 0);
    /* The update is done by the first step; run it to its end all the same. */
    src = sqlite3_step(st);
    rc = src == SQLITE_DONE ? PHG_OK : map_rc(src);
out:
    stmt_done(st);
    return rc;
}

/* ---- rows <-> records ------------------------------------------------------- */

static const char *role_text(phg_role role)
{
    switch (role) {
    case PHG_ROLE_USER:
        return "user";
    case PHG_ROLE_ADMIN:
        return "admin";
    }
    return NULL;
}

static int role_parse(const char *text, phg_role *role)
{
    if (strcmp(text, "user") == 0) {
        *role = PHG_ROLE_USER;
        return 1;
    }
    if (strcmp(text, "admin") == 0) {
        *role = PHG_ROLE_ADMIN;
        return 1;
    }
    return 0;
}

/* A text column into a fixed field. A value that does not fit, holds a NUL or
 * is not text is an inconsistent row: never truncated. */
static phg_status column_text(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const unsigned char *p;
    size_t n;

    if (sqlite3_column_type(st, col) != SQLITE_TEXT)
        return PHG_ERR_SCHEMA;
    p = sqlite3_column_text(st, col);
    if (p == NULL)
        return PHG_ERR_NOMEM;
    n = (size_t)sqlite3_column_bytes(st, col);
    if (n >= cap || memchr(p, '\0', n) != NULL)
        return PHG_ERR_SCHEMA;
    memcpy(dst, p, n);
    dst[n] = '\0';
    return PHG_OK;
}

static phg_status column_int64(sqlite3_stmt *st, int col, int64_t *value)
{
    if (sqlite3_column_type(st, col) != SQLITE_INTEGER)
        return PHG_ERR_SCHEMA;
    *value = sqlite3_column_int64(st, col);
    return PHG_OK;
}

/* The current row (KEY_COLUMNS) into *rec. */
static phg_status row_read(sqlite3_stmt *st, phg_apikey_record *rec)
{
    char role[8];
    int64_t scopes;
    const void *hash;
    phg_status rc;

    memset(rec, 0, sizeof *rec);
    rc = column_text(st, COL_ID, rec->id, sizeof rec->id);
    if (rc != PHG_OK)
        goto out;
    if (sqlite3_column_type(st, COL_HASH) != SQLITE_BLOB ||
        sqlite3_column_bytes(st, COL_HASH) != (int)sizeof rec->hash) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    hash = sqlite3_column_blob(st, COL_HASH);
    if (hash == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    memcpy(rec->hash, hash, sizeof rec->hash);
    rc = column_int64(st, COL_INDEX, &rec->index);
    if (rc != PHG_OK)
        goto out;
    rc = column_text(st, COL_ROLE, role, sizeof role);
    if (rc != PHG_OK)
        goto out;
    if (!role_parse(role, &rec->role)) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    rc = column_int64(st, COL_SCOPES, &scopes);
    if (rc != PHG_OK)
        goto out;
    if (scopes < 0 || scopes > (int64_t)UINT32_MAX) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    rec->scopes = (uint32_t)scopes;
    rc = column_text(st, COL_USER_ID, rec->user_id, sizeof rec->user_id);
    if (rc != PHG_OK)
        goto out;
    rc = column_text(st, COL_DESCRIPTION, rec->description, sizeof rec->description);
    if (rc != PHG_OK)
        goto out;
    rc = column_text(st, COL_CREATED_BY, rec->created_by, sizeof rec->created_by);
    if (rc != PHG_OK)
        goto out;
    rc = column_text(st, COL_RATE_LIMIT, rec->rate_limit, sizeof rec->rate_limit);
    if (rc != PHG_OK)
        goto out;
    rc = column_text(st, COL_REPLACED_BY, rec->replaced_by, sizeof rec->replaced_by);
    if (rc != PHG_OK)
        goto out;
    rc = column_int64(st, COL_CREATED_AT, &rec->created_at);
    if (rc != PHG_OK)
        goto out;
    rc = column_int64(st, COL_EXPIRES_AT, &rec->expires_at);
    if (rc != PHG_OK)
        goto out;
    rc = column_int64(st, COL_REVOKED_AT, &rec->revoked_at);
    if (rc != PHG_OK)
        goto out;
    rc = column_int64(st, COL_GRACE_UNTIL, &rec->grace_until);
    if (rc != PHG_OK)
        goto out;
    rc = column_int64(st, COL_LAST_USED_AT, &rec->last_used_at);
    if (rc != PHG_OK)
        goto out;
    rc = column_int64(st, COL_VERSION, &rec->version);
out:
    return rc;
}

/* Bind a text field of a record: PHG_ERR_INVALID if it is not terminated
 * inside its array (the field would be read past its end). */
static phg_status bind_field(sqlite3_stmt *st, int param, const char *field, size_t cap)
{
    size_t n = strnlen(field, cap);

    if (n == cap)
        return PHG_ERR_INVALID;
    return map_rc(sqlite3_bind_text(st, param, field, (int)n, SQLITE_STATIC));
}

/* Bind every column of ST_KEY_INSERT, with `version` in place of
 * rec->version. rec must outlive the statement's use (SQLITE_STATIC). */
static phg_status bind_record(sqlite3_stmt *st, const phg_apikey_record *rec, int64_t version)
{
    const char *role = role_text(rec->role);
    phg_status rc;

    if (role == NULL)
        return PHG_ERR_INVALID;
    rc = bind_field(st, COL_ID + 1, rec->id, sizeof rec->id);
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_blob(st, COL_HASH + 1, rec->hash, (int)sizeof rec->hash,
                                  SQLITE_STATIC));
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, COL_INDEX + 1, rec->index));
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_text(st, COL_ROLE + 1, role, -1, SQLITE_STATIC));
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, COL_SCOPES + 1, (sqlite3_int64)rec->scopes));
    if (rc != PHG_OK)
        return rc;
    rc = bind_field(st, COL_USER_ID + 1, rec->user_id, sizeof rec->user_id);
    if (rc != PHG_OK)
        return rc;
    rc = bind_field(st, COL_DESCRIPTION + 1, rec->description, sizeof rec->description);
    if (rc != PHG_OK)
        return rc;
    rc = bind_field(st, COL_CREATED_BY + 1, rec->created_by, sizeof rec->created_by);
    if (rc != PHG_OK)
        return rc;
    rc = bind_field(st, COL_RATE_LIMIT + 1, rec->rate_limit, sizeof rec->rate_limit);
    if (rc != PHG_OK)
        return rc;
    rc = bind_field(st, COL_REPLACED_BY + 1, rec->replaced_by, sizeof rec->replaced_by);
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, COL_CREATED_AT + 1, rec->created_at));
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, COL_EXPIRES_AT + 1, rec->expires_at));
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, COL_REVOKED_AT + 1, rec->revoked_at));
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, COL_GRACE_UNTIL + 1, rec->grace_until));
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, COL_LAST_USED_AT + 1, rec->last_used_at));
    if (rc != PHG_OK)
        return rc;
    return map_rc(sqlite3_bind_int64(st, COL_VERSION + 1, version));
}

/* A key id as a parameter. 0 if it is longer than any stored id can be: such
 * a key cannot exist, and the caller answers as for an unknown id. */
static int bind_id(sqlite3_stmt *st, int param, const char *id, phg_status *rc)
{
    size_t n = strnlen(id, PHG_APIKEY_ID_MAX + 1);

    if (n > PHG_APIKEY_ID_MAX) {
        *rc = PHG_OK;
        return 0;
    }
    *rc = map_rc(sqlite3_bind_text(st, param, id, (int)n, SQLITE_STATIC));
    return *rc == PHG_OK;
}

/* Insert one record with `version`, inside the caller's transaction. */
static phg_status insert_record(sqlite_conn *c, const phg_apikey_record *rec, int64_t version)
{
    sqlite3_stmt *st = NULL;
    phg_status rc;

    rc = stmt_get(c, ST_KEY_INSERT, &st);
    if (rc != PHG_OK)
        return rc;
    rc = bind_record(st, rec, version);
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    return stmt_exec(st);
}

/*
 * Every row of a statement whose parameters are bound, into a malloc'd array
 * of at most `max` records (PHG_ERR_TOO_LARGE beyond). *out is NULL when *n
 * is 0. Resets the statement.
 */
static phg_status rows_collect(sqlite3_stmt *st, size_t max, phg_apikey_record **out, size_t *n)
{
    phg_apikey_record *recs = NULL, *grown;
    size_t count = 0, cap = 0;
    phg_status rc;
    int src;

    for (;;) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        if (count == max) {
            rc = PHG_ERR_TOO_LARGE;
            goto out;
        }
        if (count == cap) {
            cap = cap == 0 ? 4 : cap * 2;
            if (cap > max)
                cap = max;
            grown = realloc(recs, cap * sizeof *recs);
            if (grown == NULL) {
                rc = PHG_ERR_NOMEM;
                goto out;
            }
            recs = grown;
        }
        rc = row_read(st, &recs[count]);
        if (rc != PHG_OK)
            goto out;
        count++;
    }
    if (src != SQLITE_DONE) {
        rc = map_rc(src);
        goto out;
    }
    *out = recs;
    *n = count;
    recs = NULL;
    rc = PHG_OK;
out:
    free(recs);
    stmt_done(st);
    return rc;
}

/* Finalize a cached month's statements and free its slot. */
static void month_evict(month_stmts *m)
{
    sqlite3_finalize(m->insert);
    sqlite3_finalize(m->walk);
    sqlite3_finalize(m->rows);
    sqlite3_finalize(m->query);
    memset(m, 0, sizeof *m);
}

/* ---- checkpoints ---------------------------------------------------------------
 *
 * SQLite's automatic checkpoint runs inside the commit that crosses the
 * threshold, on the committing thread: for the audit writer, a commit every
 * few thousand that copies megabytes and fsyncs the database file while
 * every request waiting for a record waits too (a 100 ms tail at the
 * gateway, measured). So automatic checkpoints are off, and one thread per
 * database file, on a connection of its own, runs PASSIVE checkpoints: they
 * never block writers (WAL mode), and writers keep committing meanwhile.
 * Commits wake it once the WAL holds CHECKPOINT_PAGES pages (the threshold
 * SQLite's own checkpoint had here: smaller ones cost the audit log commit
 * rate, measured); it also runs every ten seconds. With it, the gateway's p99
 * under load went from about 100 ms to about 12 ms (bench/load.sh). The last
 * connection to close checkpoints what is left (SQLite does that on close).
 */
#define CHECKPOINT_PAGES 10000

struct checkpointer {
    char *path;
    sqlite3 *db;
    pthread_t thread;
    pthread_mutex_t lock;
    /* One writer at a time per file in this process: SQLite takes one
     * anyway, but a writer that finds the lock taken polls for it with
     * sleeps of 1, 2, 5, 10 ms...; queued on a mutex it is woken the moment
     * the other commits. (Other processes still meet the busy timeout.) */
    pthread_mutex_t write_lock;
    pthread_cond_t wake;
    int pending, stop, refs;
    checkpointer *next;
};

static void cp_write_lock(checkpointer *cp, int lock)
{
    if (lock)
        pthread_mutex_lock(&cp->write_lock);
    else
        pthread_mutex_unlock(&cp->write_lock);
}

static pthread_mutex_t checkpointers_lock = PTHREAD_MUTEX_INITIALIZER;
static checkpointer *checkpointers;

static void *checkpointer_main(void *arg)
{
    checkpointer *cp = arg;
    pthread_mutex_lock(&cp->lock);
    while (!cp->stop) {
        if (!cp->pending) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 10;
            pthread_cond_timedwait(&cp->wake, &cp->lock, &ts);
        }
        if (cp->stop)
            break;
        cp->pending = 0;
        pthread_mutex_unlock(&cp->lock);
        {
            int log = 0, done = 0;
            (void)sqlite3_wal_checkpoint_v2(cp->db, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done);
            /* The next writer rewinds the WAL once a checkpoint has caught
             * its end, which a passive one run between two commits usually
             * does. Should steady writes keep it from ever catching up, the
             * WAL would grow without bound: past 8 times the threshold
             * (about 320 MiB of 4 KiB pages), a RESTART checkpoint holds
             * writers back until it has copied the rest (a stall, but a
             * bounded file). */
            if (log >= 8 * CHECKPOINT_PAGES)
                (void)sqlite3_wal_checkpoint_v2(cp->db, "main", SQLITE_CHECKPOINT_RESTART, NULL,
                                                NULL);
            else if (done < log) {
                /* behind: every commit wakes us; pace the next try */
                struct timespec pause = {0, 50 * 1000 * 1000};
                nanosleep(&pause, NULL);
            }
        }
        pthread_mutex_lock(&cp->lock);
    }
    pthread_mutex_unlock(&cp->lock);
    return NULL;
}

static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    checkpointer *cp = arg;
    (void)db;
    (void)name;
    if (pages >= CHECKPOINT_PAGES) {
        pthread_mutex_lock(&cp->lock);
        cp->pending = 1;
        pthread_cond_signal(&cp->wake);
        pthread_mutex_unlock(&cp->lock);
    }
    return SQLITE_OK;
}

/* The checkpointer of the file at path (made on first use), with one more
 * reference; NULL if it cannot be made (SQLite's own checkpoints then stay). */
static checkpointer *checkpointer_get(const char *path, int busy_ms)
{
    checkpointer *cp;
    pthread_mutex_lock(&checkpointers_lock);
    for (cp = checkpointers; cp != NULL; cp = cp->next) {
        if (strcmp(cp->path, path) == 0) {
            cp->refs++;
            pthread_mutex_unlock(&checkpointers_lock);
            return cp;
        }
    }
    cp = calloc(1, sizeof *cp);
    if (cp == NULL || (cp->path = strdup(path)) == NULL)
        goto fail;
    if (sqlite3_open_v2(path, &cp->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(cp->db, busy_ms);
    /* a connection learns the file is in WAL mode on its first read; until
     * then a checkpoint does nothing (and says -1 frames) */
    if (sqlite3_exec(cp->db, "PRAGMA schema_version", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    pthread_mutex_init(&cp->lock, NULL);
    pthread_mutex_init(&cp->write_lock, NULL);
    pthread_cond_init(&cp->wake, NULL);
    if (pthread_create(&cp->thread, NULL, checkpointer_main, cp) != 0) {
        pthread_mutex_destroy(&cp->lock);
        pthread_mutex_destroy(&cp->write_lock);
        pthread_cond_destroy(&cp->wake);
        goto fail;
    }
    cp->refs = 1;
    cp->next = checkpointers;
    checkpointers = cp;
    pthread_mutex_unlock(&checkpointers_lock);
    return cp;
fail:
    if (cp != NULL) {
        sqlite3_close_v2(cp->db);
        free(cp->path);
        free(cp);
    }
    pthread_mutex_unlock(&checkpointers_lock);
    return NULL;
}

static void checkpointer_put(checkpointer *cp)
{
    checkpointer **pp;
    if (cp == NULL)
        return;
    pthread_mutex_lock(&checkpointers_lock);
    if (--cp->refs > 0) {
        pthread_mutex_unlock(&checkpointers_lock);
        return;
    }
    for (pp = &checkpointers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == cp) {
            *pp = cp->next;
            break;
        }
    }
    pthread_mutex_unlock(&checkpointers_lock);
    pthread_mutex_lock(&cp->lock);
    cp->stop = 1;
    pthread_cond_signal(&cp->wake);
    pthread_mutex_unlock(&cp->lock);
    pthread_join(cp->thread, NULL);
    sqlite3_close_v2(cp->db);
    pthread_mutex_destroy(&cp->lock);
    pthread_mutex_destroy(&cp->write_lock);
    pthread_cond_destroy(&cp->wake);
    free(cp->path);
    free(cp);
}

/* ---- connect / disconnect ----------------------------------------------------- */

static void sqlite_disconnect(void *conn)
{
    sqlite_conn *c = conn;
    size_t i;

    if (c == NULL)
        return;
    for (i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(c->stmt[i]);
    for (i = 0; i < MONTH_CACHE_MAX; i++)
        month_evict(&c->months[i]);
    if (c->db != NULL)
        txn_abort(c);
    if (c->db != NULL && c->cp != NULL)
        sqlite3_wal_hook(c->db, NULL, NULL);
    sqlite3_close_v2(c->db);
    checkpointer_put(c->cp);
    free(c);
}

/*
 * Create the file if missing with mode 0600: it holds the wrapped PHI
 * keyring and the key hashes, and SQLite would create it 0644 (less umask);
 * its -wal and -shm files then take this mode from it. Anything unexpected
 * (a missing folder, say) is left to sqlite3_open_v2 to report.
 */
static void create_private(const char *path)
{
    int fd;

    if (path[0] == '\0' || strcmp(path, ":memory:") == 0)
        return;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0)
        close(fd);
}

static phg_status sqlite_connect(const char *target, const phg_store_options *opts, void **conn,
                                 char *err, size_t err_len)
{
    sqlite_conn *c = NULL;
    char *path = NULL;
    sqlite3_stmt *st = NULL;
    const unsigned char *mode;
    int src, busy_ms;
    phg_status rc;

    assert(target != NULL && conn != NULL);
    *conn = NULL;
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        rc = PHG_ERR_NOMEM;
        set_err(err, err_len, "sqlite", "out of memory");
        goto out;
    }
    /* Debian's libsqlite3 is built with URI filenames on, which would read
     * "file:x?mode=..." as options; "./" keeps a relative path a path. */
    if (strncmp(target, "file:", 5) == 0) {
        path = malloc(strlen(target) + 3);
        if (path == NULL) {
            rc = PHG_ERR_NOMEM;
            set_err(err, err_len, "sqlite", "out of memory");
            goto out;
        }
        memcpy(path, "./", 2);
        memcpy(path + 2, target, strlen(target) + 1);
    }
    create_private(path != NULL ? path : target);
    src = sqlite3_open_v2(path != NULL ? path : target, &c->db,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                              SQLITE_OPEN_EXRESCODE,
                          NULL);
    if (src != SQLITE_OK) {
        rc = src == SQLITE_NOMEM ? PHG_ERR_NOMEM : PHG_ERR_UNAVAILABLE;
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "cannot open SQLite database %s: %s", target,
                     c->db != NULL ? sqlite3_errmsg(c->db) : sqlite3_errstr(src));
        goto out;
    }
    /* No extension may be loaded and no schema-held SQL may run functions
     * with side effects; a corrupt or hostile file cannot rewrite the schema. */
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, (int *)NULL);

    busy_ms = opts != NULL ? opts->busy_timeout_ms : DEFAULT_BUSY_TIMEOUT_MS;
    sqlite3_busy_timeout(c->db, busy_ms);

    /* Opening reads nothing; this cheap read is what finds a file that is
     * not a database, before any setting is written. */
    src = sqlite3_exec(c->db, "PRAGMA schema_version", NULL, NULL, NULL);
    if (src != SQLITE_OK) {
        rc = map_rc(src);
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "cannot read SQLite database %s: %s", target,
                     sqlite3_errmsg(c->db));
        goto out;
    }

    src = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = map_rc(src);
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "cannot set WAL mode on %s: %s", target,
                     sqlite3_errmsg(c->db));
        goto out;
    }
    /* SQLite answers the mode it is in; it stays in another one (":memory:",
     * a file system without shared memory) without an error. */
    mode = sqlite3_column_text(st, 0);
    if (mode == NULL || sqlite3_stricmp((const char *)mode, "wal") != 0) {
        rc = PHG_ERR_IO;
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "%s cannot use WAL mode (journal mode is %s)", target,
                     mode != NULL ? (const char *)mode : "unknown");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;

    /* FULL: a commit is on disk when it returns, as an audit log needs.
     * A 64 MiB page cache. Checkpoints run on a thread of their own (see
     * "checkpoints" above); if it cannot start, SQLite's own checkpoint every
     * 10,000 WAL pages stays (1,000 halved the audit log's commit rate,
     * measured). Durability is the WAL's fsync at each commit either way. */
    src = sqlite3_exec(c->db,
                       "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; "
                       "PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=10000",
                       NULL, NULL, NULL);
    if (src == SQLITE_OK) {
        const char *file = sqlite3_db_filename(c->db, "main");
        if (file != NULL && file[0] != '\0')
            c->cp = checkpointer_get(file, busy_ms);
        if (c->cp != NULL) {
            sqlite3_wal_autocheckpoint(c->db, 0);
            sqlite3_wal_hook(c->db, wal_hook, c->cp);
        }
    }
    if (src != SQLITE_OK) {
        rc = map_rc(src);
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "cannot configure SQLite database %s: %s", target,
                     sqlite3_errmsg(c->db));
        goto out;
    }
    *conn = c;
    c = NULL;
    rc = PHG_OK;
out:
    sqlite3_finalize(st);
    free(path);
    sqlite_disconnect(c);
    return rc;
}

/* ---- schema -------------------------------------------------------------------- */

static phg_status sqlite_schema_version(void *conn, int *version)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    phg_status rc;

    assert(c != NULL && version != NULL);
    rc = stmt_get(c, ST_SCHEMA_EXISTS, &st);
    if (rc != PHG_OK)
        goto out;
    rc = stmt_int64(st, &v);
    if (rc != PHG_OK)
        goto out;
    if (v == 0) {
        *version = 0;
        goto out;
    }
    rc = stmt_get(c, ST_SCHEMA_MAX, &st);
    if (rc != PHG_OK)
        goto out;
    rc = stmt_int64(st, &v);
    if (rc != PHG_OK)
        goto out;
    if (v < 0 || v > INT_MAX) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    *version = (int)v;
out:
    return rc;
}

/* Run trusted SQL text; on failure err gets sqlite's message. */
static phg_status exec_sql(sqlite_conn *c, const char *sql, char *err, size_t err_len)
{
    char *msg = NULL;
    int src = sqlite3_exec(c->db, sql, NULL, NULL, &msg);
    phg_status rc = map_rc(src);

    if (src != SQLITE_OK) {
        if (rc == PHG_OK)
            rc = PHG_ERR_IO;
        set_err(err, err_len, sqlite3_errstr(src),
                msg != NULL ? msg : sqlite3_errmsg(c->db));
    }
    sqlite3_free(msg);
    return rc;
}

/*
 * The one place SQL text is run: the migrations embedded in the binary. A
 * version that is already recorded (another instance migrated while this one
 * waited for the write lock) is not run again and is a success.
 */
static phg_status sqlite_apply_migration(void *conn, int version, const char *sql, int *applied,
                                         char *err, size_t err_len)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    int64_t have = 0;
    phg_status rc;

    assert(c != NULL && sql != NULL && applied != NULL);
    *applied = 0;
    rc = exec_sql(c, "BEGIN IMMEDIATE", err, err_len);
    if (rc != PHG_OK)
        goto out;
    rc = exec_sql(c,
                  "CREATE TABLE IF NOT EXISTS phigate_schema ("
                  "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
                  err, err_len);
    if (rc != PHG_OK)
        goto out;
    rc = stmt_get(c, ST_SCHEMA_HAS, &st);
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int(st, 1, version));
    if (rc == PHG_OK)
        rc = stmt_int64(st, &have);
    if (rc != PHG_OK) {
        stmt_done(st);
        set_err(err, err_len, "cannot read phigate_schema", sqlite3_errmsg(c->db));
        goto out;
    }
    if (have == 0) {
        rc = exec_sql(c, sql, err, err_len);
        if (rc != PHG_OK)
            goto out;
        rc = stmt_get(c, ST_SCHEMA_INSERT, &st);
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_int(st, 1, version));
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL)));
        if (rc == PHG_OK)
            rc = stmt_exec(st);
        else
            stmt_done(st);
        if (rc != PHG_OK) {
            set_err(err, err_len, "cannot record the version", sqlite3_errmsg(c->db));
            goto out;
        }
    }
    rc = exec_sql(c, "COMMIT", err, err_len);
    if (rc == PHG_OK)
        *applied = have == 0;
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* ---- keyring ------------------------------------------------------------------- */

static phg_status sqlite_keyring_get(void *conn, char **json, size_t *len)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    const unsigned char *body;
    char *copy = NULL;
    size_t n;
    phg_status rc;
    int src;

    assert(c != NULL && json != NULL && len != NULL);
    rc = stmt_get(c, ST_KEYRING_GET, &st);
    if (rc != PHG_OK)
        goto out;
    src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
        goto out;
    }
    if (sqlite3_column_type(st, 0) != SQLITE_TEXT) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    body = sqlite3_column_text(st, 0);
    if (body == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    n = (size_t)sqlite3_column_bytes(st, 0);
    copy = malloc(n + 1);
    if (copy == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    memcpy(copy, body, n);
    copy[n] = '\0';
    *json = copy;
    *len = n;
    copy = NULL;
    rc = PHG_OK;
out:
    free(copy);
    stmt_done(st);
    return rc;
}

/* One statement, so atomic without an explicit transaction. */
static phg_status sqlite_keyring_put(void *conn, const char *json, size_t len)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && json != NULL);
    rc = stmt_get(c, ST_KEYRING_PUT, &st);
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_text64(st, 1, json, (sqlite3_uint64)len, SQLITE_STATIC, SQLITE_UTF8));
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL)));
    if (rc != PHG_OK)
        goto out;
    rc = stmt_exec(st);
out:
    stmt_done(st);
    return rc;
}

/* ---- api_keys ------------------------------------------------------------------ */

static phg_status sqlite_key_insert(void *conn, const phg_apikey_record *rec)
{
    sqlite_conn *c = conn;
    int64_t version = 0;
    phg_status rc;

    assert(c != NULL && rec != NULL);
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = counter_bump(c, &version);
    if (rc != PHG_OK)
        goto out;
    rc = insert_record(c, rec, version);
    if (rc != PHG_OK)
        goto out;
    rc = txn_commit(c);
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

static phg_status sqlite_key_get(void *conn, const char *id, phg_apikey_record *rec)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;
    int src;

    assert(c != NULL && id != NULL && rec != NULL);
    rc = stmt_get(c, ST_KEY_GET, &st);
    if (rc != PHG_OK)
        goto out;
    if (!bind_id(st, 1, id, &rc)) {
        if (rc == PHG_OK)
            rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
        goto out;
    }
    rc = row_read(st, rec);
out:
    stmt_done(st);
    return rc;
}

static phg_status sqlite_key_by_index(void *conn, int64_t index, phg_apikey_record **out,
                                      size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    rc = stmt_get(c, ST_KEY_BY_INDEX, &st);
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_int64(st, 1, index));
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    return rows_collect(st, BY_INDEX_MAX, out, n);
}

static phg_status sqlite_key_list(void *conn, const char *after, size_t limit,
                                  phg_apikey_record **out, size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && after != NULL && out != NULL && n != NULL);
    assert(limit >= 1 && limit <= LIST_MAX);
    *out = NULL;
    *n = 0;
    rc = stmt_get(c, ST_KEY_LIST, &st);
    if (rc != PHG_OK)
        return rc;
    /* `after` is only compared, so any length is fine. */
    rc = map_rc(sqlite3_bind_text(st, 1, after, -1, SQLITE_STATIC));
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, 2, (sqlite3_int64)limit));
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    return rows_collect(st, limit, out, n);
}

/* Inside a transaction: revoked_at and replaced_by of a key; NOT_FOUND for
 * an unknown id. */
static phg_status key_state(sqlite_conn *c, const char *id, int64_t *revoked_at,
                            char replaced_by[PHG_APIKEY_ID_MAX + 1])
{
    sqlite3_stmt *st = NULL;
    phg_status rc;
    int src;

    rc = stmt_get(c, ST_KEY_STATE, &st);
    if (rc != PHG_OK)
        goto out;
    if (!bind_id(st, 1, id, &rc)) {
        if (rc == PHG_OK)
            rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
        goto out;
    }
    rc = column_int64(st, 0, revoked_at);
    if (rc != PHG_OK)
        goto out;
    rc = column_text(st, 1, replaced_by, PHG_APIKEY_ID_MAX + 1);
out:
    stmt_done(st);
    return rc;
}

/* Revoking a revoked key changes nothing, not even the counter: the first
 * revocation time stays and no instance reloads for nothing. */
static phg_status sqlite_key_revoke(void *conn, const char *id, int64_t at)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    char replaced_by[PHG_APIKEY_ID_MAX + 1];
    int64_t revoked_at = 0, version = 0;
    phg_status rc;

    assert(c != NULL && id != NULL && at > 0);
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = key_state(c, id, &revoked_at, replaced_by);
    if (rc != PHG_OK)
        goto out;
    if (revoked_at == 0) {
        rc = counter_bump(c, &version);
        if (rc != PHG_OK)
            goto out;
        rc = stmt_get(c, ST_KEY_REVOKE, &st);
        if (rc != PHG_OK)
            goto out;
        rc = map_rc(sqlite3_bind_int64(st, 1, at));
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_int64(st, 2, version));
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC));
        if (rc == PHG_OK)
            rc = stmt_exec(st);
        else
            stmt_done(st);
        if (rc != PHG_OK)
            goto out;
    }
    rc = txn_commit(c);
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

static phg_status sqlite_key_rotate(void *conn, const char *old_id, int64_t grace_until,
                                    const phg_apikey_record *fresh)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    char replaced_by[PHG_APIKEY_ID_MAX + 1];
    int64_t revoked_at = 0, version = 0;
    size_t fresh_id_len;
    phg_status rc;

    assert(c != NULL && old_id != NULL && fresh != NULL);
    fresh_id_len = strnlen(fresh->id, sizeof fresh->id);
    if (fresh_id_len == 0 || fresh_id_len == sizeof fresh->id)
        return PHG_ERR_INVALID;
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = key_state(c, old_id, &revoked_at, replaced_by);
    if (rc != PHG_OK)
        goto out;
    if (revoked_at != 0 || replaced_by[0] != '\0') {
        rc = PHG_ERR_STATE;
        goto out;
    }
    rc = counter_bump(c, &version);
    if (rc != PHG_OK)
        goto out;
    rc = stmt_get(c, ST_KEY_MARK_ROTATED, &st);
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_int64(st, 1, grace_until));
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_text(st, 2, fresh->id, (int)fresh_id_len, SQLITE_STATIC));
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, 3, version));
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_text(st, 4, old_id, -1, SQLITE_STATIC));
    if (rc == PHG_OK)
        rc = stmt_exec(st);
    else
        stmt_done(st);
    if (rc != PHG_OK)
        goto out;
    /* Both rows carry the same version: one change, seen whole by a poller. */
    rc = insert_record(c, fresh, version);
    if (rc != PHG_OK)
        goto out;
    rc = txn_commit(c);
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* A key's own rate limit. The row is read inside the write transaction
 * (BEGIN IMMEDIATE holds the lock), so the old limit reported is the one
 * this change replaced. */
static phg_status sqlite_key_set_limit(void *conn, const char *id, const char *rate_limit,
                                       char old_limit[PHG_APIKEY_LIMIT_MAX + 1],
                                       phg_apikey_record *rec)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_apikey_record cur;
    int64_t version = 0;
    size_t limit_len;
    phg_status rc;

    assert(c != NULL && id != NULL && rate_limit != NULL && old_limit != NULL && rec != NULL);
    limit_len = strnlen(rate_limit, PHG_APIKEY_LIMIT_MAX + 1);
    if (limit_len > PHG_APIKEY_LIMIT_MAX)
        return PHG_ERR_INVALID;
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = sqlite_key_get(c, id, &cur);
    if (rc != PHG_OK)
        goto out;
    if (cur.revoked_at != 0) {
        rc = PHG_ERR_STATE;
        goto out;
    }
    memcpy(old_limit, cur.rate_limit, sizeof cur.rate_limit);
    if (strcmp(cur.rate_limit, rate_limit) != 0) {
        rc = counter_bump(c, &version);
        if (rc != PHG_OK)
            goto out;
        rc = stmt_get(c, ST_KEY_SET_LIMIT, &st);
        if (rc != PHG_OK)
            goto out;
        rc = map_rc(sqlite3_bind_text(st, 1, rate_limit, (int)limit_len, SQLITE_STATIC));
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_int64(st, 2, version));
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_text(st, 3, cur.id, -1, SQLITE_STATIC));
        if (rc == PHG_OK)
            rc = stmt_exec(st);
        else
            stmt_done(st);
        if (rc != PHG_OK)
            goto out;
        memcpy(cur.rate_limit, rate_limit, limit_len + 1);
        cur.version = version;
    }
    rc = txn_commit(c);
    if (rc == PHG_OK)
        *rec = cur;
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* Last-used times are statistics: no counter bump, so a flush makes no
 * instance reload. An unknown id is skipped. */
static phg_status sqlite_key_touch(void *conn, const char *const *ids, const int64_t *ts,
                                   size_t n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;
    size_t i;

    assert(c != NULL && (n == 0 || (ids != NULL && ts != NULL)));
    if (n == 0)
        return PHG_OK;
    rc = stmt_get(c, ST_KEY_TOUCH, &st);
    if (rc != PHG_OK)
        goto out;
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    for (i = 0; i < n; i++) {
        assert(ids[i] != NULL);
        rc = map_rc(sqlite3_bind_int64(st, 1, ts[i]));
        if (rc != PHG_OK)
            goto out;
        if (!bind_id(st, 2, ids[i], &rc)) {
            if (rc != PHG_OK)
                goto out;
            stmt_done(st);
            continue;
        }
        rc = stmt_exec(st);
        if (rc != PHG_OK)
            goto out;
    }
    rc = txn_commit(c);
out:
    stmt_done(st);
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

static phg_status sqlite_change_counter(void *conn, int64_t *counter)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && counter != NULL);
    rc = stmt_get(c, ST_COUNTER_GET, &st);
    if (rc != PHG_OK)
        return rc;
    rc = stmt_int64(st, counter);
    /* The row is inserted by migration 1 and never deleted. */
    return rc == PHG_ERR_NOT_FOUND ? PHG_ERR_SCHEMA : rc;
}

/* One SELECT, so the walk is one consistent snapshot (WAL readers do not
 * block writers while cb runs). */
static phg_status sqlite_keys_since(void *conn, int64_t since, phg_key_cb cb, void *arg)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_apikey_record rec;
    phg_status rc;
    int src;

    assert(c != NULL && cb != NULL);
    rc = stmt_get(c, ST_KEYS_SINCE, &st);
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_int64(st, 1, since));
    if (rc != PHG_OK)
        goto out;
    for (;;) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        rc = row_read(st, &rec);
        if (rc != PHG_OK)
            goto out;
        rc = cb(arg, &rec);
        if (rc != PHG_OK)
            goto out;
    }
    rc = src == SQLITE_DONE ? PHG_OK : map_rc(src);
out:
    stmt_done(st);
    return rc;
}

/* ---- audit log ------------------------------------------------------------------ */

/* Every month table has these columns in this order; audit_row_read() and
 * audit_bind_row() depend on it. */
#define AUDIT_COLUMNS                                                                            \
    "id, ts_us, chain, seq, hash, request_id, key_id, user_id, action, outcome, subject, record"

enum audit_col {
    ACOL_ID,
    ACOL_TS,
    ACOL_CHAIN,
    ACOL_SEQ,
    ACOL_HASH,
    ACOL_REQUEST_ID,
    ACOL_KEY_ID,
    ACOL_USER_ID,
    ACOL_ACTION,
    ACOL_OUTCOME,
    ACOL_SUBJECT,
    ACOL_RECORD,
};

/* A record's canonical JSON holds at most 64 KiB of details plus a few
 * escaped fields; anything this large was not written by phigate. */
#define AUDIT_JSON_MAX (1u << 20)
/* Twelve months a year for the whole range of valid years: a longer list is
 * not a table phigate wrote. */
#define AUDIT_PARTITIONS_MAX ((9999 - 1970 + 1) * 12)
#define AUDIT_SQL_MAX 1024

/* The filters of a query, one bit each; bit i binds parameter ?(i + 1) and
 * the limit is always ?10, so every variant binds the same way. */
enum audit_filter_bit {
    AF_FROM,
    AF_TO,
    AF_USER_ID,
    AF_KEY_ID,
    AF_ACTION,
    AF_OUTCOME,
    AF_REQUEST_ID,
    AF_SUBJECT,
    AF_BEFORE_ID,
    AF_COUNT
};

static const char *const audit_filter_sql[AF_COUNT] = {
    [AF_FROM] = " AND ts_us >= ?1",
    [AF_TO] = " AND ts_us < ?2",
    [AF_USER_ID] = " AND user_id = ?3",
    [AF_KEY_ID] = " AND key_id = ?4",
    [AF_ACTION] = " AND action = ?5",
    [AF_OUTCOME] = " AND outcome = ?6",
    [AF_REQUEST_ID] = " AND request_id = ?7",
    [AF_SUBJECT] = " AND subject = ?8",
    [AF_BEFORE_ID] = " AND id < ?9",
};
#define AUDIT_LIMIT_PARAM 10

static int month_valid(int year, int month)
{
    return year >= 1970 && year <= 9999 && month >= 1 && month <= 12;
}

/*
 * The one place a month table's name is formatted: from integers checked
 * here, so the name is always "audit_" 4 digits "_" 2 digits, and can be put
 * in SQL text.
 */
static phg_status month_table(int year, int month, char table[16])
{
    int n;

    if (!month_valid(year, month))
        return PHG_ERR_INVALID;
    n = snprintf(table, 16, "audit_%04d_%02d", year, month);
    return n == 13 ? PHG_OK : PHG_ERR_INTERNAL;
}

/* "YYYY-MM", the key of audit_partitions. */
static void month_text(int year, int month, char text[8])
{
    assert(month_valid(year, month));
    snprintf(text, 8, "%04d-%02d", year, month);
}

/* "YYYY-MM" as read back from audit_partitions; 0 if it is not one. */
static int month_parse(const char *text, int *year, int *month)
{
    int i;

    if (strlen(text) != 7 || text[4] != '-')
        return 0;
    for (i = 0; i < 7; i++)
        if (i != 4 && (text[i] < '0' || text[i] > '9'))
            return 0;
    *year = (text[0] - '0') * 1000 + (text[1] - '0') * 100 + (text[2] - '0') * 10 + (text[3] - '0');
    *month = (text[5] - '0') * 10 + (text[6] - '0');
    return month_valid(*year, *month);
}

/* Days from 1970-01-01 to the first of (year, month), proleptic Gregorian
 * (H. Hinnant's days_from_civil), so no time zone is involved. */
static int64_t month_start_days(int year, int month)
{
    int64_t y = year - (month <= 2);
    int64_t era = y / 400; /* year >= 1970: no negative division */
    int64_t yoe = y - era * 400;
    int64_t mp = (month + 9) % 12;
    int64_t doy = (153 * mp + 2) / 5;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + doe - 719468;
}

/* [start, end) of a month in Unix microseconds. */
static void month_range_us(int year, int month, int64_t *start, int64_t *end)
{
    *start = month_start_days(year, month) * 86400 * 1000000;
    *end = month == 12 ? month_start_days(year + 1, 1) : month_start_days(year, month + 1);
    *end *= (int64_t)86400 * 1000000;
}

/* The (year, month) of a record's ts, in UTC. PHG_ERR_INVALID before 1970 or
 * after 9999. */
static phg_status month_of_us(int64_t ts_us, int *year, int *month)
{
    time_t t;
    struct tm tm;

    if (ts_us < 0)
        return PHG_ERR_INVALID;
    t = (time_t)(ts_us / 1000000);
    if (gmtime_r(&t, &tm) == NULL)
        return PHG_ERR_INVALID;
    *year = tm.tm_year + 1900;
    *month = tm.tm_mon + 1;
    return month_valid(*year, *month) ? PHG_OK : PHG_ERR_INVALID;
}

/* The cache slot of a month, taking the least recently used one if it is
 * not cached. Never fails: statements are prepared when first used. */
static phg_status month_get(sqlite_conn *c, int year, int month, month_stmts **out)
{
    int ym = year * 12 + month - 1;
    month_stmts *victim = &c->months[0];
    phg_status rc;
    size_t i;

    for (i = 0; i < MONTH_CACHE_MAX; i++) {
        if (c->months[i].ym == ym) {
            c->months[i].last_use = ++c->month_clock;
            *out = &c->months[i];
            return PHG_OK;
        }
        if (c->months[i].last_use < victim->last_use)
            victim = &c->months[i];
    }
    month_evict(victim);
    rc = month_table(year, month, victim->table);
    if (rc != PHG_OK) {
        victim->table[0] = '\0';
        return rc;
    }
    victim->ym = ym;
    victim->last_use = ++c->month_clock;
    *out = victim;
    return PHG_OK;
}

/* The cached slot of a month, or NULL. */
static month_stmts *month_find(sqlite_conn *c, int year, int month)
{
    int ym = year * 12 + month - 1;
    size_t i;

    for (i = 0; i < MONTH_CACHE_MAX; i++)
        if (c->months[i].ym == ym)
            return &c->months[i];
    return NULL;
}

/* Prepare SQL text on a month's table into *slot, unless it is there
 * already. */
static phg_status month_prepare(sqlite_conn *c, const char *sql, sqlite3_stmt **slot)
{
    int src;

    if (*slot != NULL)
        return PHG_OK;
    src = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL);
    if (src != SQLITE_OK) {
        *slot = NULL;
        /* A registered month whose table is missing: not what we wrote. */
        return (src & 0xff) == SQLITE_ERROR ? PHG_ERR_SCHEMA : map_rc(src);
    }
    return PHG_OK;
}

/*
 * SQL text for a month table: the fixed template with every "{t}" replaced
 * by the name month_table() made. Plain copying, not a format string: the
 * name is the only thing that is not fixed text.
 */
static phg_status month_sql(char *buf, size_t cap, const char *tmpl, const char *table)
{
    size_t len = 0, tlen = strlen(table);

    while (*tmpl != '\0') {
        if (strncmp(tmpl, "{t}", 3) == 0) {
            if (cap - len <= tlen)
                return PHG_ERR_INTERNAL;
            memcpy(buf + len, table, tlen);
            len += tlen;
            tmpl += 3;
            continue;
        }
        if (cap - len <= 1)
            return PHG_ERR_INTERNAL;
        buf[len++] = *tmpl++;
    }
    buf[len] = '\0';
    return PHG_OK;
}

/* A cached statement of a month (insert, walk, rows), prepared on first use. */
static phg_status month_stmt(sqlite_conn *c, const month_stmts *m, const char *tmpl,
                             sqlite3_stmt **slot)
{
    char sql[AUDIT_SQL_MAX];
    phg_status rc;

    if (*slot != NULL)
        return PHG_OK;
    rc = month_sql(sql, sizeof sql, tmpl, m->table);
    if (rc != PHG_OK)
        return rc;
    return month_prepare(c, sql, slot);
}

/* Templates: "{t}" is the month's table; every value is a bound parameter. */
#define SQL_AUDIT_INSERT                                                                         \
    "INSERT INTO {t} (" AUDIT_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, "    \
    "?11, ?12)"
#define SQL_AUDIT_WALK                                                                           \
    "SELECT " AUDIT_COLUMNS " FROM {t} WHERE chain = ?1 AND ts_us >= ?2 AND ts_us < ?3 "      \
    "ORDER BY seq, id"
#define SQL_AUDIT_ROWS "SELECT " AUDIT_COLUMNS " FROM {t} ORDER BY ts_us, id"
#define SQL_AUDIT_CREATE                                                                         \
    "CREATE TABLE IF NOT EXISTS {t} ("                                                        \
    "id TEXT PRIMARY KEY, ts_us INTEGER NOT NULL, chain TEXT NOT NULL, "                       \
    "seq INTEGER NOT NULL, hash TEXT NOT NULL, request_id TEXT NOT NULL, "                     \
    "key_id TEXT NOT NULL, user_id TEXT NOT NULL, action TEXT NOT NULL, "                      \
    "outcome TEXT NOT NULL, subject TEXT NOT NULL, record TEXT NOT NULL);"                     \
    "CREATE INDEX IF NOT EXISTS {t}_chain ON {t} (chain, seq);"                              \
    "CREATE INDEX IF NOT EXISTS {t}_ts ON {t} (ts_us, id);"                                  \
    "CREATE INDEX IF NOT EXISTS {t}_user ON {t} (user_id, ts_us);"                           \
    "CREATE INDEX IF NOT EXISTS {t}_subject ON {t} (subject, ts_us);"                        \
    "CREATE INDEX IF NOT EXISTS {t}_request ON {t} (request_id)"
#define SQL_AUDIT_DROP "DROP TABLE {t}"

/* A caller's string as a parameter, at most max bytes (else INVALID). */
static phg_status bind_text_max(sqlite3_stmt *st, int param, const char *text, size_t max)
{
    size_t n = strnlen(text, max + 1);

    if (n > max)
        return PHG_ERR_INVALID;
    return map_rc(sqlite3_bind_text(st, param, text, (int)n, SQLITE_STATIC));
}

/* archived_at and dropped_at of a month; NOT_FOUND if it is not registered. */
static phg_status partition_state(sqlite_conn *c, const char month[8], int64_t *archived_at,
                                  int64_t *dropped_at)
{
    sqlite3_stmt *st = NULL;
    phg_status rc;
    int src;

    rc = stmt_get(c, ST_AUDIT_PART_STATE, &st);
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_text(st, 1, month, 7, SQLITE_STATIC));
    if (rc != PHG_OK)
        goto out;
    src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
        goto out;
    }
    rc = column_int64(st, 0, archived_at);
    if (rc == PHG_OK)
        rc = column_int64(st, 1, dropped_at);
out:
    stmt_done(st);
    return rc;
}

/*
 * Inside the caller's write transaction: create and register the month's
 * table. A month that was dropped stays dropped (PHG_ERR_STATE): recreating
 * it would let records appear in a month the archive says is complete.
 */
static phg_status partition_create(sqlite_conn *c, month_stmts *m, int year, int month)
{
    char text[8], sql[AUDIT_SQL_MAX];
    int64_t archived_at = 0, dropped_at = 0;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    month_text(year, month, text);
    rc = partition_state(c, text, &archived_at, &dropped_at);
    if (rc == PHG_OK && dropped_at != 0)
        return PHG_ERR_STATE;
    if (rc != PHG_OK && rc != PHG_ERR_NOT_FOUND)
        return rc;
    rc = month_sql(sql, sizeof sql, SQL_AUDIT_CREATE, m->table);
    if (rc != PHG_OK)
        return rc;
    rc = exec_sql(c, sql, NULL, 0);
    if (rc != PHG_OK)
        return rc;
    rc = stmt_get(c, ST_AUDIT_PART_REGISTER, &st);
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_text(st, 1, text, 7, SQLITE_STATIC));
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL)));
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    return stmt_exec(st);
}

static phg_status sqlite_audit_ensure_partition(void *conn, int year, int month)
{
    sqlite_conn *c = conn;
    month_stmts *m = NULL;
    phg_status rc;

    assert(c != NULL);
    if (!month_valid(year, month))
        return PHG_ERR_INVALID;
    rc = month_get(c, year, month, &m);
    if (rc != PHG_OK)
        return rc;
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = partition_create(c, m, year, month);
    if (rc != PHG_OK)
        goto out;
    rc = txn_commit(c);
    if (rc == PHG_OK)
        m->ensured = 1;
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* Bind one record to a month's insert. The row outlives the statement's use
 * (SQLITE_STATIC): no copy. */
static phg_status audit_bind_row(sqlite3_stmt *st, const phg_audit_store_row *r)
{
    phg_status rc;

    rc = bind_field(st, ACOL_ID + 1, r->id, sizeof r->id);
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, ACOL_TS + 1, r->ts_us));
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_CHAIN + 1, r->chain, sizeof r->chain);
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, ACOL_SEQ + 1, r->seq));
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_HASH + 1, r->hash, sizeof r->hash);
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_REQUEST_ID + 1, r->request_id, sizeof r->request_id);
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_KEY_ID + 1, r->key_id, sizeof r->key_id);
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_USER_ID + 1, r->user_id, sizeof r->user_id);
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_ACTION + 1, r->action, sizeof r->action);
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_OUTCOME + 1, r->outcome, sizeof r->outcome);
    if (rc == PHG_OK)
        rc = bind_field(st, ACOL_SUBJECT + 1, r->subject, sizeof r->subject);
    if (rc == PHG_OK && r->json == NULL)
        rc = PHG_ERR_INVALID;
    if (rc == PHG_OK)
        rc = bind_text_max(st, ACOL_RECORD + 1, r->json, AUDIT_JSON_MAX);
    return rc;
}

/*
 * The hot path of the audit log: one write transaction and one fsync for the
 * whole batch, cached statements, SQLITE_STATIC binds, no allocation per
 * row. Rows of a batch are nearly always of one month; a month is ensured
 * (created, registered, checked not dropped) the first time this connection
 * writes to it.
 */
static phg_status sqlite_audit_append(void *conn, const phg_audit_store_row *rows, size_t n,
                                      const char *chain, int64_t head_seq,
                                      const char *head_hash)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    month_stmts *m = NULL;
    int year = 0, month = 0, ym = 0;
    phg_status rc;
    size_t i;

    assert(c != NULL && (n == 0 || rows != NULL) && chain != NULL && head_hash != NULL);
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    for (i = 0; i < n; i++) {
        rc = month_of_us(rows[i].ts_us, &year, &month);
        if (rc != PHG_OK)
            goto out;
        if (m == NULL || year * 12 + month - 1 != ym) {
            rc = month_get(c, year, month, &m);
            if (rc != PHG_OK)
                goto out;
            ym = m->ym;
            if (!m->ensured) {
                rc = partition_create(c, m, year, month);
                if (rc != PHG_OK)
                    goto out;
                /* Undone below if the transaction does not commit. */
                m->ensured = 1;
            }
            rc = month_stmt(c, m, SQL_AUDIT_INSERT, &m->insert);
            if (rc != PHG_OK)
                goto out;
        }
        rc = audit_bind_row(m->insert, &rows[i]);
        if (rc != PHG_OK) {
            stmt_done(m->insert);
            goto out;
        }
        rc = stmt_exec(m->insert);
        if (rc != PHG_OK)
            goto out;
    }
    rc = stmt_get(c, ST_AUDIT_CHAIN_SET, &st);
    if (rc != PHG_OK)
        goto out;
    rc = bind_text_max(st, 1, chain, 64);
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, 2, head_seq));
    if (rc == PHG_OK)
        rc = bind_text_max(st, 3, head_hash, 64);
    if (rc != PHG_OK) {
        stmt_done(st);
        goto out;
    }
    rc = stmt_exec(st);
    if (rc != PHG_OK)
        goto out;
    rc = txn_commit(c);
out:
    if (rc != PHG_OK) {
        txn_abort(c);
        /* A table created in the rolled back transaction is gone, and one
         * dropped by another process must be found dropped: check again. */
        for (i = 0; i < MONTH_CACHE_MAX; i++)
            c->months[i].ensured = 0;
    }
    return rc;
}

/* The current row of a month statement into *row, json malloc'd. */
static phg_status audit_row_read(sqlite3_stmt *st, phg_audit_store_row *row)
{
    const unsigned char *p;
    size_t n;
    phg_status rc;

    memset(row, 0, sizeof *row);
    rc = column_text(st, ACOL_ID, row->id, sizeof row->id);
    if (rc == PHG_OK)
        rc = column_int64(st, ACOL_TS, &row->ts_us);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_CHAIN, row->chain, sizeof row->chain);
    if (rc == PHG_OK)
        rc = column_int64(st, ACOL_SEQ, &row->seq);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_HASH, row->hash, sizeof row->hash);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_REQUEST_ID, row->request_id, sizeof row->request_id);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_KEY_ID, row->key_id, sizeof row->key_id);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_USER_ID, row->user_id, sizeof row->user_id);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_ACTION, row->action, sizeof row->action);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_OUTCOME, row->outcome, sizeof row->outcome);
    if (rc == PHG_OK)
        rc = column_text(st, ACOL_SUBJECT, row->subject, sizeof row->subject);
    if (rc != PHG_OK)
        return rc;
    if (sqlite3_column_type(st, ACOL_RECORD) != SQLITE_TEXT)
        return PHG_ERR_SCHEMA;
    p = sqlite3_column_text(st, ACOL_RECORD);
    if (p == NULL)
        return PHG_ERR_NOMEM;
    n = (size_t)sqlite3_column_bytes(st, ACOL_RECORD);
    if (n > AUDIT_JSON_MAX || memchr(p, '\0', n) != NULL)
        return PHG_ERR_SCHEMA;
    row->json = malloc(n + 1);
    if (row->json == NULL)
        return PHG_ERR_NOMEM;
    memcpy(row->json, p, n);
    row->json[n] = '\0';
    return PHG_OK;
}

/* Step a month statement whose parameters are bound, calling cb per row
 * (json freed after each call). Resets the statement. */
static phg_status audit_rows_each(sqlite3_stmt *st, phg_audit_row_cb cb, void *arg)
{
    phg_audit_store_row row;
    phg_status rc;
    int src;

    for (;;) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        rc = audit_row_read(st, &row);
        if (rc == PHG_OK)
            rc = cb(arg, &row);
        free(row.json);
        if (rc != PHG_OK)
            goto out;
    }
    rc = src == SQLITE_DONE ? PHG_OK : map_rc(src);
out:
    stmt_done(st);
    return rc;
}

/*
 * The registered, not dropped months whose range meets [from_us, to_us)
 * (0: open), oldest first, as year * 12 + month - 1 in a malloc'd array.
 * Runs inside the caller's read transaction.
 */
static phg_status live_months(sqlite_conn *c, int64_t from_us, int64_t to_us, int **out,
                              size_t *n)
{
    sqlite3_stmt *st = NULL;
    int *yms = NULL, *grown;
    size_t count = 0, cap = 0;
    char text[8];
    int year, month, src;
    int64_t start, end;
    phg_status rc;

    rc = stmt_get(c, ST_AUDIT_PARTS_LIVE, &st);
    if (rc != PHG_OK)
        goto out;
    for (;;) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        rc = column_text(st, 0, text, sizeof text);
        if (rc != PHG_OK)
            goto out;
        if (!month_parse(text, &year, &month)) {
            rc = PHG_ERR_SCHEMA;
            goto out;
        }
        month_range_us(year, month, &start, &end);
        if ((to_us != 0 && start >= to_us) || (from_us != 0 && end <= from_us))
            continue;
        if (count == AUDIT_PARTITIONS_MAX) {
            rc = PHG_ERR_SCHEMA;
            goto out;
        }
        if (count == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            grown = realloc(yms, cap * sizeof *yms);
            if (grown == NULL) {
                rc = PHG_ERR_NOMEM;
                goto out;
            }
            yms = grown;
        }
        yms[count++] = year * 12 + month - 1;
    }
    if (src != SQLITE_DONE) {
        rc = map_rc(src);
        goto out;
    }
    *out = yms;
    *n = count;
    yms = NULL;
    rc = PHG_OK;
out:
    free(yms);
    stmt_done(st);
    return rc;
}

/* BEGIN (deferred) and the end of a read transaction; the walk and the query
 * read the partition list and several months from one snapshot, so an
 * append that commits meanwhile is seen whole or not at all. */
static phg_status read_begin(sqlite_conn *c)
{
    return exec_cached(c, ST_BEGIN_READ);
}

/*
 * cb runs while the read transaction is open: it must not use this
 * connection. row->json is malloc'd for the call and freed after it.
 */
static phg_status sqlite_audit_walk(void *conn, const char *chain, int64_t from_us,
                                    int64_t to_us, phg_audit_row_cb cb, void *arg)
{
    sqlite_conn *c = conn;
    month_stmts *m = NULL;
    int *yms = NULL;
    size_t i, n = 0;
    phg_status rc;

    assert(c != NULL && chain != NULL && cb != NULL);
    rc = read_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = live_months(c, from_us, to_us, &yms, &n);
    if (rc != PHG_OK)
        goto out;
    for (i = 0; i < n; i++) {
        rc = month_get(c, yms[i] / 12, yms[i] % 12 + 1, &m);
        if (rc != PHG_OK)
            goto out;
        rc = month_stmt(c, m, SQL_AUDIT_WALK, &m->walk);
        if (rc != PHG_OK)
            goto out;
        rc = bind_text_max(m->walk, 1, chain, 64);
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_int64(m->walk, 2, from_us != 0 ? from_us : INT64_MIN));
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_int64(m->walk, 3, to_us != 0 ? to_us : INT64_MAX));
        if (rc != PHG_OK) {
            stmt_done(m->walk);
            goto out;
        }
        rc = audit_rows_each(m->walk, cb, arg);
        if (rc != PHG_OK)
            goto out;
    }
    rc = txn_commit(c);
out:
    free(yms);
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* The query statement of a month for the filter set `mask`; one variant is
 * cached per month (a page through results reuses it). */
static phg_status month_query_stmt(sqlite_conn *c, month_stmts *m, unsigned mask,
                                   sqlite3_stmt **out)
{
    char sql[AUDIT_SQL_MAX];
    size_t len;
    int n, i;
    phg_status rc;

    if (m->query != NULL && m->query_mask == mask) {
        *out = m->query;
        return PHG_OK;
    }
    sqlite3_finalize(m->query);
    m->query = NULL;
    n = snprintf(sql, sizeof sql, "SELECT " AUDIT_COLUMNS " FROM %s WHERE 1 = 1", m->table);
    if (n < 0 || (size_t)n >= sizeof sql)
        return PHG_ERR_INTERNAL;
    len = (size_t)n;
    for (i = 0; i < AF_COUNT; i++) {
        if (!(mask & (1u << i)))
            continue;
        n = snprintf(sql + len, sizeof sql - len, "%s", audit_filter_sql[i]);
        if (n < 0 || (size_t)n >= sizeof sql - len)
            return PHG_ERR_INTERNAL;
        len += (size_t)n;
    }
    n = snprintf(sql + len, sizeof sql - len, " ORDER BY id DESC LIMIT ?%d",
                 AUDIT_LIMIT_PARAM);
    if (n < 0 || (size_t)n >= sizeof sql - len)
        return PHG_ERR_INTERNAL;
    rc = month_prepare(c, sql, &m->query);
    if (rc != PHG_OK)
        return rc;
    m->query_mask = mask;
    *out = m->query;
    return PHG_OK;
}

static void audit_rows_free(phg_audit_store_row *rows, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(rows[i].json);
    free(rows);
}

/*
 * Months newest to oldest, each newest first with LIMIT what is still
 * wanted: the months split the ts range, so their concatenation is the
 * global order. Every filter value is a bound parameter; only which fixed
 * clauses appear depends on the filter.
 */
static phg_status sqlite_audit_query(void *conn, const phg_audit_store_filter *f,
                                     phg_audit_store_row **rows_out, size_t *n_out)
{
    sqlite_conn *c = conn;
    const char *texts[AF_COUNT] = {0};
    phg_audit_store_row *rows = NULL;
    sqlite3_stmt *st = NULL;
    month_stmts *m = NULL;
    unsigned mask = 0;
    int *yms = NULL;
    size_t months = 0, count = 0, i;
    int k, src;
    phg_status rc;

    assert(c != NULL && f != NULL && rows_out != NULL && n_out != NULL);
    assert(f->limit >= 1 && f->limit <= 1000);
    *rows_out = NULL;
    *n_out = 0;
    texts[AF_USER_ID] = f->user_id;
    texts[AF_KEY_ID] = f->key_id;
    texts[AF_ACTION] = f->action;
    texts[AF_OUTCOME] = f->outcome;
    texts[AF_REQUEST_ID] = f->request_id;
    texts[AF_SUBJECT] = f->subject;
    texts[AF_BEFORE_ID] = f->before_id;
    if (f->from_us != 0)
        mask |= 1u << AF_FROM;
    if (f->to_us != 0)
        mask |= 1u << AF_TO;
    for (k = AF_USER_ID; k < AF_COUNT; k++)
        if (texts[k] != NULL)
            mask |= 1u << k;
    rows = malloc(f->limit * sizeof *rows);
    if (rows == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    rc = read_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = live_months(c, f->from_us, f->to_us, &yms, &months);
    if (rc != PHG_OK)
        goto out;
    for (i = months; i-- > 0 && count < f->limit;) {
        rc = month_get(c, yms[i] / 12, yms[i] % 12 + 1, &m);
        if (rc != PHG_OK)
            goto out;
        rc = month_query_stmt(c, m, mask, &st);
        if (rc != PHG_OK)
            goto out;
        if (mask & (1u << AF_FROM))
            rc = map_rc(sqlite3_bind_int64(st, AF_FROM + 1, f->from_us));
        if (rc == PHG_OK && (mask & (1u << AF_TO)))
            rc = map_rc(sqlite3_bind_int64(st, AF_TO + 1, f->to_us));
        for (k = AF_USER_ID; k < AF_COUNT && rc == PHG_OK; k++)
            if (texts[k] != NULL)
                rc = map_rc(sqlite3_bind_text(st, k + 1, texts[k], -1, SQLITE_STATIC));
        if (rc == PHG_OK)
            rc = map_rc(sqlite3_bind_int64(st, AUDIT_LIMIT_PARAM,
                                           (sqlite3_int64)(f->limit - count)));
        if (rc != PHG_OK) {
            stmt_done(st);
            goto out;
        }
        for (;;) {
            src = sqlite3_step(st);
            if (src != SQLITE_ROW)
                break;
            if (count == f->limit) { /* LIMIT holds: cannot happen */
                rc = PHG_ERR_INTERNAL;
                stmt_done(st);
                goto out;
            }
            rc = audit_row_read(st, &rows[count]);
            if (rc != PHG_OK) {
                free(rows[count].json);
                stmt_done(st);
                goto out;
            }
            count++;
        }
        stmt_done(st);
        if (src != SQLITE_DONE) {
            rc = map_rc(src);
            goto out;
        }
    }
    rc = txn_commit(c);
    if (rc != PHG_OK)
        goto out;
    if (count == 0) {
        free(rows);
        rows = NULL;
    }
    *rows_out = rows;
    *n_out = count;
    rows = NULL;
out:
    free(yms);
    if (rc != PHG_OK) {
        txn_abort(c);
        audit_rows_free(rows, count);
    }
    return rc;
}

static phg_status sqlite_audit_checkpoint_insert(void *conn, const phg_audit_checkpoint *cp)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && cp != NULL);
    rc = stmt_get(c, ST_AUDIT_CP_INSERT, &st);
    if (rc != PHG_OK)
        return rc;
    rc = bind_field(st, 1, cp->chain, sizeof cp->chain);
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, 2, cp->seq));
    if (rc == PHG_OK)
        rc = bind_field(st, 3, cp->hash, sizeof cp->hash);
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_int64(st, 4, cp->ts_us));
    if (rc == PHG_OK)
        rc = bind_field(st, 5, cp->mac, sizeof cp->mac);
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    return stmt_exec(st); /* a (chain, seq) stored already: PHG_ERR_EXISTS */
}

static phg_status sqlite_audit_chain_head(void *conn, const char *chain, int64_t *seq,
                                          char hash[65])
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;
    int src;

    assert(c != NULL && chain != NULL && seq != NULL && hash != NULL);
    rc = stmt_get(c, ST_AUDIT_CHAIN_GET, &st);
    if (rc != PHG_OK)
        goto out;
    rc = bind_text_max(st, 1, chain, 64);
    if (rc != PHG_OK)
        goto out;
    src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
        goto out;
    }
    rc = column_int64(st, 0, seq);
    if (rc == PHG_OK)
        rc = column_text(st, 1, hash, 65);
out:
    stmt_done(st);
    return rc;
}

/* Checkpoint-shaped rows of a statement: (chain, seq, hash[, ts_us, mac]). */
static phg_status checkpoints_each(sqlite3_stmt *st, int with_mac, phg_audit_checkpoint_cb cb,
                                   void *arg)
{
    phg_audit_checkpoint cp;
    phg_status rc;
    int src;

    for (;;) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        memset(&cp, 0, sizeof cp);
        rc = column_text(st, 0, cp.chain, sizeof cp.chain);
        if (rc == PHG_OK)
            rc = column_int64(st, 1, &cp.seq);
        if (rc == PHG_OK)
            rc = column_text(st, 2, cp.hash, sizeof cp.hash);
        if (rc == PHG_OK && with_mac)
            rc = column_int64(st, 3, &cp.ts_us);
        if (rc == PHG_OK && with_mac)
            rc = column_text(st, 4, cp.mac, sizeof cp.mac);
        if (rc == PHG_OK)
            rc = cb(arg, &cp);
        if (rc != PHG_OK)
            goto out;
    }
    rc = src == SQLITE_DONE ? PHG_OK : map_rc(src);
out:
    stmt_done(st);
    return rc;
}

/* cb runs while the query is open: it must not use this connection. */
static phg_status sqlite_audit_chains(void *conn, phg_audit_checkpoint_cb cb, void *arg)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && cb != NULL);
    rc = stmt_get(c, ST_AUDIT_CHAINS, &st);
    if (rc != PHG_OK)
        return rc;
    return checkpoints_each(st, 0, cb, arg);
}

/* cb runs while the query is open: it must not use this connection. */
static phg_status sqlite_audit_checkpoints(void *conn, const char *chain,
                                           phg_audit_checkpoint_cb cb, void *arg)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && chain != NULL && cb != NULL);
    rc = stmt_get(c, ST_AUDIT_CPS, &st);
    if (rc != PHG_OK)
        return rc;
    rc = bind_text_max(st, 1, chain, 64);
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    return checkpoints_each(st, 1, cb, arg);
}

static phg_status sqlite_audit_partitions(void *conn, phg_audit_partition **parts_out,
                                          size_t *n_out)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_audit_partition *parts = NULL, *grown, *p;
    size_t count = 0, cap = 0;
    int year, month, src;
    phg_status rc;

    assert(c != NULL && parts_out != NULL && n_out != NULL);
    *parts_out = NULL;
    *n_out = 0;
    rc = stmt_get(c, ST_AUDIT_PARTS, &st);
    if (rc != PHG_OK)
        goto out;
    for (;;) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        if (count == AUDIT_PARTITIONS_MAX) {
            rc = PHG_ERR_SCHEMA;
            goto out;
        }
        if (count == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            grown = realloc(parts, cap * sizeof *parts);
            if (grown == NULL) {
                rc = PHG_ERR_NOMEM;
                goto out;
            }
            parts = grown;
        }
        p = &parts[count];
        memset(p, 0, sizeof *p);
        rc = column_text(st, 0, p->month, sizeof p->month);
        if (rc == PHG_OK && !month_parse(p->month, &year, &month))
            rc = PHG_ERR_SCHEMA;
        if (rc == PHG_OK)
            rc = column_int64(st, 1, &p->created_at);
        if (rc == PHG_OK)
            rc = column_int64(st, 2, &p->archived_at);
        if (rc == PHG_OK)
            rc = column_int64(st, 3, &p->dropped_at);
        if (rc == PHG_OK)
            rc = column_text(st, 4, p->archive_sha256, sizeof p->archive_sha256);
        if (rc != PHG_OK)
            goto out;
        count++;
    }
    if (src != SQLITE_DONE) {
        rc = map_rc(src);
        goto out;
    }
    *parts_out = parts;
    *n_out = count;
    parts = NULL;
    rc = PHG_OK;
out:
    free(parts);
    stmt_done(st);
    return rc;
}

/*
 * One statement on one table, so one snapshot. PHG_ERR_NOT_FOUND for a month
 * that was never registered, PHG_ERR_STATE for one that was dropped. cb runs
 * while the query is open: it must not use this connection; row->json is
 * freed after each call.
 */
static phg_status sqlite_audit_partition_rows(void *conn, int year, int month,
                                              phg_audit_row_cb cb, void *arg)
{
    sqlite_conn *c = conn;
    month_stmts *m = NULL;
    int64_t archived_at = 0, dropped_at = 0;
    char text[8];
    phg_status rc;

    assert(c != NULL && cb != NULL);
    if (!month_valid(year, month))
        return PHG_ERR_INVALID;
    month_text(year, month, text);
    rc = partition_state(c, text, &archived_at, &dropped_at);
    if (rc != PHG_OK)
        return rc;
    if (dropped_at != 0)
        return PHG_ERR_STATE;
    rc = month_get(c, year, month, &m);
    if (rc != PHG_OK)
        return rc;
    rc = month_stmt(c, m, SQL_AUDIT_ROWS, &m->rows);
    if (rc != PHG_OK)
        return rc;
    return audit_rows_each(m->rows, cb, arg);
}

/* PHG_ERR_NOT_FOUND for an unknown month, PHG_ERR_STATE for a dropped one
 * (its archive is what it was dropped against). Marking again replaces the
 * digest. */
static phg_status sqlite_audit_mark_archived(void *conn, int year, int month,
                                             const char *sha256_hex, int64_t at)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    int64_t archived_at = 0, dropped_at = 0;
    char text[8];
    phg_status rc;

    assert(c != NULL && sha256_hex != NULL);
    if (!month_valid(year, month) || at <= 0)
        return PHG_ERR_INVALID;
    month_text(year, month, text);
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = partition_state(c, text, &archived_at, &dropped_at);
    if (rc != PHG_OK)
        goto out;
    if (dropped_at != 0) {
        rc = PHG_ERR_STATE;
        goto out;
    }
    rc = stmt_get(c, ST_AUDIT_PART_ARCHIVE, &st);
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_int64(st, 1, at));
    if (rc == PHG_OK)
        rc = bind_text_max(st, 2, sha256_hex, 64);
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_text(st, 3, text, 7, SQLITE_STATIC));
    if (rc != PHG_OK) {
        stmt_done(st);
        goto out;
    }
    rc = stmt_exec(st);
    if (rc != PHG_OK)
        goto out;
    rc = txn_commit(c);
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/*
 * DROP TABLE and dropped_at in one transaction. Only an archived, not yet
 * dropped month (else PHG_ERR_STATE); PHG_ERR_NOT_FOUND for an unknown one.
 * The retention period is audit.c's to check.
 */
static phg_status sqlite_audit_drop_partition(void *conn, int year, int month, int64_t at)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    month_stmts *m = NULL;
    int64_t archived_at = 0, dropped_at = 0;
    char text[8], table[16], sql[AUDIT_SQL_MAX];
    phg_status rc;

    assert(c != NULL);
    if (at <= 0)
        return PHG_ERR_INVALID;
    rc = month_table(year, month, table);
    if (rc != PHG_OK)
        return rc;
    month_text(year, month, text);
    /* Our statements on the table go first: they hold it in the schema, and
     * once it is dropped a cached "ensured" would be a lie. */
    m = month_find(c, year, month);
    if (m != NULL)
        month_evict(m);
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = partition_state(c, text, &archived_at, &dropped_at);
    if (rc != PHG_OK)
        goto out;
    if (archived_at == 0 || dropped_at != 0) {
        rc = PHG_ERR_STATE;
        goto out;
    }
    rc = month_sql(sql, sizeof sql, SQL_AUDIT_DROP, table);
    if (rc != PHG_OK)
        goto out;
    rc = exec_sql(c, sql, NULL, 0);
    if (rc != PHG_OK)
        goto out;
    rc = stmt_get(c, ST_AUDIT_PART_DROP, &st);
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_int64(st, 1, at));
    if (rc == PHG_OK)
        rc = map_rc(sqlite3_bind_text(st, 2, text, 7, SQLITE_STATIC));
    if (rc != PHG_OK) {
        stmt_done(st);
        goto out;
    }
    rc = stmt_exec(st);
    if (rc != PHG_OK)
        goto out;
    rc = txn_commit(c);
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* ---- webhook sources ------------------------------------------------------------ */

/* Administrative, rare operations: prepared per call (not cached). */
static phg_status wh_prepare(sqlite_conn *c, const char *sql, sqlite3_stmt **st)
{
    int src = sqlite3_prepare_v2(c->db, sql, -1, st, NULL);
    if (src != SQLITE_OK) {
        *st = NULL;
        return (src & 0xff) == SQLITE_ERROR ? PHG_ERR_SCHEMA : map_rc(src);
    }
    return PHG_OK;
}

static phg_status wh_step_done(sqlite3_stmt *st)
{
    int src = sqlite3_step(st);
    phg_status rc = src == SQLITE_DONE ? PHG_OK : map_rc(src);
    if (src == SQLITE_ROW)
        rc = PHG_ERR_INTERNAL;
    sqlite3_finalize(st);
    return rc;
}

#define WH_BIND(expr)                                                                            \
    do {                                                                                         \
        if (rc == PHG_OK)                                                                        \
            rc = map_rc(expr);                                                                   \
    } while (0)

static phg_status wh_secret_insert(sqlite_conn *c, const char *name, const phg_wh_secret_row *s,
                                   int64_t idx)
{
    sqlite3_stmt *st = NULL;
    phg_status rc = wh_prepare(c,
                               "INSERT INTO webhook_secrets (source, idx, secret_enc, fingerprint, "
                               "not_after, retired_at, created_at) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                               &st);
    if (rc != PHG_OK)
        return rc;
    WH_BIND(sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 2, idx));
    WH_BIND(sqlite3_bind_text(st, 3, s->secret_enc, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_text(st, 4, s->fingerprint, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 5, s->not_after));
    WH_BIND(sqlite3_bind_int64(st, 6, s->retired_at));
    WH_BIND(sqlite3_bind_int64(st, 7, s->created_at));
    if (rc != PHG_OK) {
        sqlite3_finalize(st);
        return rc;
    }
    return wh_step_done(st);
}

static phg_status sqlite_wh_source_insert(void *conn, const phg_wh_source_row *src,
                                          const phg_wh_secret_row *secrets, size_t n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    int64_t version = 0;
    phg_status rc;
    size_t i;

    assert(c != NULL && src != NULL);
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = counter_bump(c, &version);
    if (rc != PHG_OK)
        goto out;
    rc = wh_prepare(c,
                    "INSERT INTO webhook_sources (name, scheme, tolerance_s, deliver_to, "
                    "created_at, updated_at, version, verify_token_enc) "
                    "VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
                    &st);
    if (rc != PHG_OK)
        goto out;
    WH_BIND(sqlite3_bind_text(st, 1, src->name, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_text(st, 2, src->scheme, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 3, src->tolerance_s));
    WH_BIND(sqlite3_bind_text(st, 4, src->deliver_to, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 5, src->created_at));
    WH_BIND(sqlite3_bind_int64(st, 6, src->updated_at));
    WH_BIND(sqlite3_bind_int64(st, 7, version));
    WH_BIND(sqlite3_bind_text(st, 8, src->verify_token_enc, -1, SQLITE_STATIC));
    if (rc != PHG_OK) {
        sqlite3_finalize(st);
        goto out;
    }
    rc = wh_step_done(st);
    for (i = 0; rc == PHG_OK && i < n; i++)
        rc = wh_secret_insert(c, src->name, &secrets[i], secrets[i].idx);
    if (rc != PHG_OK)
        goto out;
    rc = txn_commit(c);
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

static phg_status wh_source_read(sqlite3_stmt *st, phg_wh_source_row *r)
{
    phg_status rc = column_text(st, 0, r->name, sizeof r->name);
    if (rc == PHG_OK)
        rc = column_text(st, 1, r->scheme, sizeof r->scheme);
    if (rc == PHG_OK)
        rc = column_int64(st, 2, &r->tolerance_s);
    if (rc == PHG_OK)
        rc = column_text(st, 3, r->deliver_to, sizeof r->deliver_to);
    if (rc == PHG_OK)
        rc = column_int64(st, 4, &r->created_at);
    if (rc == PHG_OK)
        rc = column_int64(st, 5, &r->updated_at);
    if (rc == PHG_OK)
        rc = column_int64(st, 6, &r->version);
    if (rc == PHG_OK)
        rc = column_text(st, 7, r->verify_token_enc, sizeof r->verify_token_enc);
    return rc;
}

#define WH_SOURCE_COLUMNS                                                                          \
    "name, scheme, tolerance_s, deliver_to, created_at, updated_at, version, verify_token_enc"

static phg_status wh_secrets_read(sqlite_conn *c, const char *name, phg_wh_secret_row **out,
                                  size_t *n)
{
    sqlite3_stmt *st = NULL;
    phg_wh_secret_row *rows = NULL, *r;
    phg_status rc;
    int src;

    *out = NULL;
    *n = 0;
    rc = wh_prepare(c,
                    "SELECT idx, secret_enc, fingerprint, not_after, retired_at, created_at "
                    "FROM webhook_secrets WHERE source = ?1 ORDER BY idx",
                    &st);
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC));
    while (rc == PHG_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n >= PHG_WH_ROWS_MAX) {
            rc = PHG_ERR_SCHEMA;
            break;
        }
        if (rows == NULL) {
            rows = calloc(PHG_WH_ROWS_MAX, sizeof *rows);
            if (rows == NULL) {
                rc = PHG_ERR_NOMEM;
                break;
            }
        }
        r = &rows[*n];
        rc = column_int64(st, 0, &r->idx);
        if (rc == PHG_OK)
            rc = column_text(st, 1, r->secret_enc, sizeof r->secret_enc);
        if (rc == PHG_OK)
            rc = column_text(st, 2, r->fingerprint, sizeof r->fingerprint);
        if (rc == PHG_OK)
            rc = column_int64(st, 3, &r->not_after);
        if (rc == PHG_OK)
            rc = column_int64(st, 4, &r->retired_at);
        if (rc == PHG_OK)
            rc = column_int64(st, 5, &r->created_at);
        if (rc == PHG_OK)
            (*n)++;
    }
    if (rc == PHG_OK && src != SQLITE_DONE)
        rc = map_rc(src);
    sqlite3_finalize(st);
    if (rc != PHG_OK) {
        if (rows != NULL)
            memset(rows, 0, PHG_WH_ROWS_MAX * sizeof *rows);
        free(rows);
        *n = 0;
        return rc;
    }
    *out = rows;
    return PHG_OK;
}

static phg_status sqlite_wh_source_get(void *conn, const char *name, phg_wh_source_row *srcrow,
                                       phg_wh_secret_row **secrets, size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;
    int src;

    assert(c != NULL && name != NULL && srcrow != NULL && n != NULL);
    *n = 0;
    if (secrets != NULL)
        *secrets = NULL;
    rc = exec_cached(c, ST_BEGIN_READ);
    if (rc != PHG_OK)
        return rc;
    rc = wh_prepare(c, "SELECT " WH_SOURCE_COLUMNS " FROM webhook_sources WHERE name = ?1", &st);
    if (rc != PHG_OK)
        goto out;
    rc = map_rc(sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC));
    if (rc == PHG_OK) {
        src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            rc = wh_source_read(st, srcrow);
        else
            rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
    }
    sqlite3_finalize(st);
    if (rc == PHG_OK && secrets != NULL)
        rc = wh_secrets_read(c, name, secrets, n);
out:
    txn_abort(c); /* a read: end it either way */
    return rc;
}

static phg_status sqlite_wh_source_list(void *conn, phg_wh_source_row **out, size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_wh_source_row *rows = NULL;
    phg_status rc;
    int src = SQLITE_DONE;

    assert(c != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    rc = wh_prepare(c, "SELECT " WH_SOURCE_COLUMNS " FROM webhook_sources ORDER BY name LIMIT 1000",
                    &st);
    if (rc != PHG_OK)
        return rc;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows == NULL) {
            rows = calloc(PHG_WH_ROWS_MAX, sizeof *rows);
            if (rows == NULL) {
                rc = PHG_ERR_NOMEM;
                break;
            }
        }
        rc = wh_source_read(st, &rows[*n]);
        if (rc != PHG_OK)
            break;
        (*n)++;
    }
    if (rc == PHG_OK && src != SQLITE_DONE)
        rc = map_rc(src);
    sqlite3_finalize(st);
    if (rc != PHG_OK) {
        free(rows);
        *n = 0;
        return rc;
    }
    *out = rows;
    return PHG_OK;
}

static phg_status wh_exec_name(sqlite_conn *c, const char *sql, const char *name, int *changes)
{
    sqlite3_stmt *st = NULL;
    phg_status rc = wh_prepare(c, sql, &st);
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC));
    if (rc != PHG_OK) {
        sqlite3_finalize(st);
        return rc;
    }
    rc = wh_step_done(st);
    if (changes != NULL)
        *changes = sqlite3_changes(c->db);
    return rc;
}

static phg_status sqlite_wh_source_delete(void *conn, const char *name)
{
    sqlite_conn *c = conn;
    phg_status rc;
    int changes = 0;

    assert(c != NULL && name != NULL);
    rc = txn_begin(c);
    if (rc == PHG_OK)
        rc = wh_exec_name(c, "DELETE FROM webhook_secrets WHERE source = ?1", name, NULL);
    if (rc == PHG_OK)
        rc = wh_exec_name(c, "DELETE FROM webhook_sources WHERE name = ?1", name, &changes);
    if (rc == PHG_OK && changes == 0)
        rc = PHG_ERR_NOT_FOUND;
    if (rc == PHG_OK)
        rc = txn_commit(c);
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* Inside a transaction: bump the counter into the source's version. */
static phg_status wh_touch_source(sqlite_conn *c, const char *name, int64_t at)
{
    sqlite3_stmt *st = NULL;
    int64_t version = 0;
    phg_status rc = counter_bump(c, &version);
    if (rc != PHG_OK)
        return rc;
    rc = wh_prepare(c, "UPDATE webhook_sources SET updated_at = ?1, version = ?2 WHERE name = ?3",
                    &st);
    if (rc != PHG_OK)
        return rc;
    WH_BIND(sqlite3_bind_int64(st, 1, at));
    WH_BIND(sqlite3_bind_int64(st, 2, version));
    WH_BIND(sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC));
    if (rc != PHG_OK) {
        sqlite3_finalize(st);
        return rc;
    }
    return wh_step_done(st);
}

/* Inside a transaction: a query of one integer with the name as ?1. */
static phg_status wh_int_query(sqlite_conn *c, const char *sql, const char *name, int64_t *v)
{
    sqlite3_stmt *st = NULL;
    phg_status rc = wh_prepare(c, sql, &st);
    int src;
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC));
    if (rc == PHG_OK) {
        src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            rc = column_int64(st, 0, v);
        else
            rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
    }
    sqlite3_finalize(st);
    return rc;
}

static phg_status sqlite_wh_secret_add(void *conn, const char *name, const phg_wh_secret_row *sec,
                                       size_t max_active, int64_t *idx)
{
    sqlite_conn *c = conn;
    int64_t v = 0, active = 0, next = 0;
    phg_status rc;

    assert(c != NULL && name != NULL && sec != NULL && idx != NULL);
    rc = txn_begin(c);
    if (rc == PHG_OK)
        rc = wh_int_query(c, "SELECT count(*) FROM webhook_sources WHERE name = ?1", name, &v);
    if (rc == PHG_OK && v == 0)
        rc = PHG_ERR_NOT_FOUND;
    if (rc == PHG_OK)
        rc = wh_int_query(c,
                          "SELECT count(*) FROM webhook_secrets WHERE source = ?1 AND "
                          "retired_at = 0",
                          name, &active);
    if (rc == PHG_OK && (size_t)active >= max_active)
        rc = PHG_ERR_STATE;
    if (rc == PHG_OK)
        rc = wh_int_query(c,
                          "SELECT COALESCE(MAX(idx), -1) + 1 FROM webhook_secrets WHERE "
                          "source = ?1",
                          name, &next);
    if (rc == PHG_OK)
        rc = wh_secret_insert(c, name, sec, next);
    if (rc == PHG_OK)
        rc = wh_touch_source(c, name, sec->created_at);
    if (rc == PHG_OK)
        rc = txn_commit(c);
    if (rc != PHG_OK) {
        txn_abort(c);
        return rc;
    }
    *idx = next;
    return PHG_OK;
}

static phg_status sqlite_wh_source_set_verify_token(void *conn, const char *name, const char *enc,
                                                    int64_t at)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    int64_t version = 0;
    phg_status rc;

    assert(c != NULL && name != NULL && enc != NULL && at > 0);
    rc = txn_begin(c);
    if (rc == PHG_OK)
        rc = counter_bump(c, &version);
    if (rc == PHG_OK)
        rc = wh_prepare(c,
                        "UPDATE webhook_sources SET verify_token_enc = ?1, updated_at = ?2, "
                        "version = ?3 WHERE name = ?4",
                        &st);
    if (rc == PHG_OK) {
        WH_BIND(sqlite3_bind_text(st, 1, enc, -1, SQLITE_STATIC));
        WH_BIND(sqlite3_bind_int64(st, 2, at));
        WH_BIND(sqlite3_bind_int64(st, 3, version));
        WH_BIND(sqlite3_bind_text(st, 4, name, -1, SQLITE_STATIC));
        if (rc == PHG_OK)
            rc = wh_step_done(st);
        else
            sqlite3_finalize(st);
    }
    /* no row: the counter's bump goes with the rollback */
    if (rc == PHG_OK && sqlite3_changes(c->db) == 0)
        rc = PHG_ERR_NOT_FOUND;
    if (rc == PHG_OK)
        rc = txn_commit(c);
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

static phg_status sqlite_wh_secret_retire(void *conn, const char *name, int64_t idx, int64_t at)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    int64_t retired = 0, active = 0;
    phg_status rc;
    int src;

    assert(c != NULL && name != NULL && at > 0);
    rc = txn_begin(c);
    if (rc == PHG_OK)
        rc = wh_prepare(c, "SELECT retired_at FROM webhook_secrets WHERE source = ?1 AND idx = ?2",
                        &st);
    if (rc == PHG_OK) {
        WH_BIND(sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC));
        WH_BIND(sqlite3_bind_int64(st, 2, idx));
        if (rc == PHG_OK) {
            src = sqlite3_step(st);
            if (src == SQLITE_ROW)
                rc = column_int64(st, 0, &retired);
            else
                rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    if (rc == PHG_OK && retired != 0)
        goto commit; /* retired already: nothing changes */
    if (rc == PHG_OK)
        rc = wh_int_query(c,
                          "SELECT count(*) FROM webhook_secrets WHERE source = ?1 AND "
                          "retired_at = 0",
                          name, &active);
    if (rc == PHG_OK && active <= 1)
        rc = PHG_ERR_STATE;
    if (rc == PHG_OK)
        rc = wh_prepare(c,
                        "UPDATE webhook_secrets SET retired_at = ?1 WHERE source = ?2 AND idx = ?3",
                        &st);
    if (rc == PHG_OK) {
        WH_BIND(sqlite3_bind_int64(st, 1, at));
        WH_BIND(sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC));
        WH_BIND(sqlite3_bind_int64(st, 3, idx));
        if (rc == PHG_OK)
            rc = wh_step_done(st);
        else
            sqlite3_finalize(st);
    }
    if (rc == PHG_OK)
        rc = wh_touch_source(c, name, at);
commit:
    if (rc == PHG_OK)
        rc = txn_commit(c);
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

/* ---- webhook inbox ------------------------------------------------------------- */

/* A text column that may be large (body_enc), malloc'd. */
static phg_status column_text_dup(sqlite3_stmt *st, int col, char **out)
{
    const unsigned char *p;
    size_t n;

    *out = NULL;
    if (sqlite3_column_type(st, col) != SQLITE_TEXT)
        return PHG_ERR_SCHEMA;
    p = sqlite3_column_text(st, col);
    if (p == NULL)
        return PHG_ERR_NOMEM;
    n = (size_t)sqlite3_column_bytes(st, col);
    if (memchr(p, '\0', n) != NULL)
        return PHG_ERR_SCHEMA;
    *out = malloc(n + 1);
    if (*out == NULL)
        return PHG_ERR_NOMEM;
    memcpy(*out, p, n);
    (*out)[n] = '\0';
    return PHG_OK;
}

/* An integer column that must lie in [lo, hi]. */
static phg_status column_int64_in(sqlite3_stmt *st, int col, int64_t lo, int64_t hi, int64_t *v)
{
    phg_status rc = column_int64(st, col, v);
    if (rc == PHG_OK && (*v < lo || *v > hi))
        rc = PHG_ERR_SCHEMA;
    return rc;
}

/* The current row (WHE_COLUMNS, then body_enc if with_body) into *r. */
static phg_status whe_row_read(sqlite3_stmt *st, phg_wh_event_row *r, int with_body)
{
    phg_wh_event *e = &r->ev;
    int64_t v = 0;
    phg_status rc;

    memset(r, 0, sizeof *r);
    rc = column_text(st, 0, e->id, sizeof e->id);
    if (rc == PHG_OK)
        rc = column_text(st, 1, e->source, sizeof e->source);
    if (rc == PHG_OK)
        rc = column_text(st, 2, e->msg_id, sizeof e->msg_id);
    if (rc == PHG_OK)
        rc = column_text(st, 3, e->request_id, sizeof e->request_id);
    if (rc == PHG_OK)
        rc = column_int64_in(st, 4, 0, 1, &v);
    e->authenticated = (int)v;
    if (rc == PHG_OK)
        rc = column_int64_in(st, 5, -1, INT_MAX, &v);
    e->secret_index = (int)v;
    if (rc == PHG_OK)
        rc = column_int64(st, 6, &e->signed_ts_s);
    if (rc == PHG_OK)
        rc = column_int64(st, 7, &e->received_ms);
    if (rc == PHG_OK)
        rc = column_text(st, 8, e->content_type, sizeof e->content_type);
    if (rc == PHG_OK)
        rc = column_int64_in(st, 9, PHG_WH_EVENT_PENDING, PHG_WH_EVENT_DEAD, &v);
    e->state = (phg_wh_event_state)v;
    if (rc == PHG_OK)
        rc = column_int64(st, 10, &e->attempts);
    if (rc == PHG_OK)
        rc = column_int64(st, 11, &e->next_attempt_ms);
    if (rc == PHG_OK)
        rc = column_int64(st, 12, &e->last_attempt_ms);
    if (rc == PHG_OK)
        rc = column_int64(st, 13, &e->delivered_ms);
    if (rc == PHG_OK)
        rc = column_int64_in(st, 14, INT_MIN, INT_MAX, &v);
    e->last_status = (int)v;
    if (rc == PHG_OK)
        rc = column_text(st, 15, e->last_error, sizeof e->last_error);
    if (rc == PHG_OK)
        rc = column_int64_in(st, 16, 0, PHG_WH_INBOX_BODY_MAX, &v);
    e->body_len = (size_t)v;
    if (rc == PHG_OK && with_body)
        rc = column_text_dup(st, WHE_NCOLUMNS, &r->body_enc);
    if (rc != PHG_OK) {
        free(r->body_enc);
        r->body_enc = NULL;
    }
    return rc;
}

/* The status of an UPDATE of one row that changed nothing: the row is
 * missing (NOT_FOUND) or not in the state the update wanted (STATE). */
static phg_status whe_why_unchanged(sqlite_conn *c, const char *id)
{
    sqlite3_stmt *st = NULL;
    int64_t state = 0;
    phg_status rc = stmt_get(c, ST_WHE_STATE, &st);

    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC));
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    rc = stmt_int64(st, &state);
    return rc == PHG_OK ? PHG_ERR_STATE : rc;
}

/* A new row's columns (WHE_INSERT_COLUMNS); the row outlives the statement's
 * use (SQLITE_STATIC). */
static phg_status whe_bind_row(sqlite3_stmt *st, const phg_wh_event_row *r)
{
    const phg_wh_event *e = &r->ev;
    phg_status rc = PHG_OK;

    if (r->body_enc == NULL || e->state != PHG_WH_EVENT_PENDING)
        return PHG_ERR_INVALID;
    WH_BIND(sqlite3_bind_text(st, 1, e->id, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_text(st, 2, e->source, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_text(st, 3, e->msg_id, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_text(st, 4, e->request_id, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 5, e->authenticated));
    WH_BIND(sqlite3_bind_int64(st, 6, e->secret_index));
    WH_BIND(sqlite3_bind_int64(st, 7, e->signed_ts_s));
    WH_BIND(sqlite3_bind_int64(st, 8, e->received_ms));
    WH_BIND(sqlite3_bind_text(st, 9, e->content_type, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 10, e->next_attempt_ms));
    WH_BIND(sqlite3_bind_int64(st, 11, (int64_t)e->body_len));
    WH_BIND(sqlite3_bind_text(st, 12, r->body_enc, -1, SQLITE_STATIC));
    return rc;
}

/* The id stored for (source, msg_id), inside the caller's transaction or not. */
static phg_status whe_find(sqlite_conn *c, const char *source, const char *msg_id,
                           char id[PHG_WH_EVENT_ID_LEN + 1])
{
    sqlite3_stmt *st = NULL;
    phg_status rc = stmt_get(c, ST_WHE_FIND, &st);
    int src;

    if (rc != PHG_OK)
        return rc;
    WH_BIND(sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_text(st, 2, msg_id, -1, SQLITE_STATIC));
    if (rc == PHG_OK) {
        src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            rc = column_text(st, 0, id, PHG_WH_EVENT_ID_LEN + 1);
        else
            rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
    }
    stmt_done(st);
    return rc;
}

/*
 * The inbox's group commit: one write transaction and one fsync (the
 * connection's synchronous=FULL, as for the audit log) for the batch.
 * ON CONFLICT DO NOTHING leaves a duplicate out, whether its twin was stored
 * long ago or a moment earlier in this very transaction; changes() tells.
 */
static phg_status sqlite_wh_event_insert(void *conn, const phg_wh_event_row *rows, size_t n,
                                         char (*existing)[PHG_WH_EVENT_ID_LEN + 1])
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;
    size_t i;

    assert(c != NULL && (n == 0 || (rows != NULL && existing != NULL)));
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    for (i = 0; i < n; i++) {
        existing[i][0] = '\0';
        rc = stmt_get(c, ST_WHE_INSERT, &st);
        if (rc != PHG_OK)
            goto out;
        rc = whe_bind_row(st, &rows[i]);
        if (rc != PHG_OK) {
            stmt_done(st);
            goto out;
        }
        rc = stmt_exec(st);
        if (rc != PHG_OK)
            goto out;
        if (sqlite3_changes(c->db) == 0) {
            rc = whe_find(c, rows[i].ev.source, rows[i].ev.msg_id, existing[i]);
            if (rc == PHG_ERR_NOT_FOUND)
                rc = PHG_ERR_INTERNAL; /* not inserted, yet no twin: cannot be */
            if (rc != PHG_OK)
                goto out;
        }
    }
    rc = txn_commit(c);
out:
    if (rc != PHG_OK)
        txn_abort(c);
    return rc;
}

static phg_status sqlite_wh_event_find(void *conn, const char *source, const char *msg_id,
                                       char id[PHG_WH_EVENT_ID_LEN + 1])
{
    assert(conn != NULL && source != NULL && msg_id != NULL && id != NULL);
    return whe_find(conn, source, msg_id, id);
}

/* BEGIN IMMEDIATE holds the write lock from the SELECT to the COMMIT, so two
 * claimers (threads or processes) never lease the same row. */
static phg_status sqlite_wh_event_claim(void *conn, int64_t now_ms, int64_t lease_until_ms,
                                        size_t max, size_t bytes_max, phg_wh_event_row **out,
                                        size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_wh_event_row *rows = NULL;
    size_t count = 0, bytes = 0, i;
    phg_status rc;
    int src = SQLITE_DONE;

    assert(c != NULL && out != NULL && n != NULL && max >= 1 && max <= PHG_WH_LIST_MAX);
    *out = NULL;
    *n = 0;
    rc = txn_begin(c);
    if (rc != PHG_OK)
        goto out;
    rc = stmt_get(c, ST_WHE_DUE, &st);
    if (rc != PHG_OK)
        goto out;
    WH_BIND(sqlite3_bind_int64(st, 1, now_ms));
    WH_BIND(sqlite3_bind_int64(st, 2, (int64_t)max));
    while (rc == PHG_OK && count < max && (count == 0 || bytes < bytes_max) &&
           (src = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows == NULL) {
            rows = calloc(max, sizeof *rows);
            if (rows == NULL) {
                rc = PHG_ERR_NOMEM;
                break;
            }
        }
        rc = whe_row_read(st, &rows[count], 1);
        if (rc != PHG_OK)
            break;
        bytes += rows[count].ev.body_len;
        count++;
    }
    if (rc == PHG_OK && src != SQLITE_ROW && src != SQLITE_DONE)
        rc = map_rc(src);
    stmt_done(st);
    if (rc != PHG_OK)
        goto out;
    for (i = 0; i < count; i++) {
        rc = stmt_get(c, ST_WHE_LEASE, &st);
        if (rc != PHG_OK)
            goto out;
        WH_BIND(sqlite3_bind_int64(st, 1, lease_until_ms));
        WH_BIND(sqlite3_bind_text(st, 2, rows[i].ev.id, -1, SQLITE_STATIC));
        if (rc != PHG_OK) {
            stmt_done(st);
            goto out;
        }
        rc = stmt_exec(st);
        if (rc != PHG_OK)
            goto out;
        rows[i].ev.next_attempt_ms = lease_until_ms;
    }
    rc = txn_commit(c);
out:
    if (rc != PHG_OK) {
        txn_abort(c);
        phg_internal_wh_event_rows_free(rows, count);
        return rc;
    }
    if (count == 0) {
        free(rows);
        rows = NULL;
    }
    *out = rows;
    *n = count;
    return PHG_OK;
}

static phg_status sqlite_wh_event_get(void *conn, const char *id, phg_wh_event_row *row)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;
    int src;

    assert(c != NULL && id != NULL && row != NULL);
    memset(row, 0, sizeof *row);
    rc = stmt_get(c, ST_WHE_GET, &st);
    if (rc != PHG_OK)
        return rc;
    rc = map_rc(sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC));
    if (rc == PHG_OK) {
        src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            rc = whe_row_read(st, row, 1);
        else
            rc = src == SQLITE_DONE ? PHG_ERR_NOT_FOUND : map_rc(src);
    }
    stmt_done(st);
    return rc;
}

static phg_status sqlite_wh_event_report(void *conn, const char *id, int state, int attempted,
                                         int64_t at_ms, int http_status, const char *error,
                                         int64_t next_ms)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && id != NULL && error != NULL && state >= PHG_WH_EVENT_PENDING &&
           state <= PHG_WH_EVENT_DEAD);
    rc = stmt_get(c, ST_WHE_REPORT, &st);
    if (rc != PHG_OK)
        return rc;
    WH_BIND(sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 2, state));
    WH_BIND(sqlite3_bind_int64(st, 3, attempted ? 1 : 0));
    WH_BIND(sqlite3_bind_int64(st, 4, at_ms));
    WH_BIND(sqlite3_bind_int64(st, 5, http_status));
    WH_BIND(sqlite3_bind_text(st, 6, error, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, 7, next_ms));
    if (rc != PHG_OK) {
        stmt_done(st);
        return rc;
    }
    if (c->cp != NULL && !c->write_locked) {
        /* autocommit: a write transaction of its own, queued as txn_begin's */
        cp_write_lock(c->cp, 1);
        rc = stmt_exec(st);
        cp_write_lock(c->cp, 0);
    } else {
        rc = stmt_exec(st);
    }
    if (rc == PHG_OK && sqlite3_changes(c->db) == 0)
        rc = whe_why_unchanged(c, id);
    return rc;
}

static phg_status sqlite_wh_txn(void *conn, int op)
{
    sqlite_conn *c = conn;
    phg_status rc = PHG_OK;
    if (op == 0)
        return txn_begin(c);
    if (op == 1) {
        rc = txn_commit(c);
        if (rc == PHG_OK)
            return PHG_OK;
    }
    txn_abort(c);
    return rc;
}

/* SQL of a list, from fixed fragments only: the filter values are bound. */
static phg_status sqlite_wh_event_list(void *conn, const phg_wh_event_filter *f,
                                       phg_wh_event_row **out, size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_wh_event_row *rows = NULL;
    char sql[512];
    size_t count = 0;
    phg_status rc;
    int src = SQLITE_DONE, param = 0;

    assert(c != NULL && f != NULL && out != NULL && n != NULL && f->limit >= 1 &&
           f->limit <= PHG_WH_LIST_MAX);
    *out = NULL;
    *n = 0;
    snprintf(sql, sizeof sql, "SELECT " WHE_COLUMNS " FROM webhook_events WHERE 1 = 1%s%s%s "
             "ORDER BY id DESC LIMIT ?",
             f->state >= 0 ? " AND state = ?" : "", f->source != NULL ? " AND source = ?" : "",
             f->before_id != NULL ? " AND id < ?" : "");
    rc = wh_prepare(c, sql, &st);
    if (rc != PHG_OK)
        return rc;
    if (f->state >= 0)
        WH_BIND(sqlite3_bind_int64(st, ++param, f->state));
    if (f->source != NULL)
        WH_BIND(sqlite3_bind_text(st, ++param, f->source, -1, SQLITE_STATIC));
    if (f->before_id != NULL)
        WH_BIND(sqlite3_bind_text(st, ++param, f->before_id, -1, SQLITE_STATIC));
    WH_BIND(sqlite3_bind_int64(st, ++param, (int64_t)f->limit));
    while (rc == PHG_OK && count < f->limit && (src = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows == NULL) {
            rows = calloc(f->limit, sizeof *rows);
            if (rows == NULL) {
                rc = PHG_ERR_NOMEM;
                break;
            }
        }
        rc = whe_row_read(st, &rows[count], 0);
        if (rc == PHG_OK)
            count++;
    }
    if (rc == PHG_OK && src != SQLITE_ROW && src != SQLITE_DONE)
        rc = map_rc(src);
    sqlite3_finalize(st);
    if (rc != PHG_OK) {
        free(rows);
        return rc;
    }
    *out = rows;
    *n = count;
    return PHG_OK;
}

static phg_status sqlite_wh_event_replay(void *conn, const char *id, int64_t now_ms)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && id != NULL);
    rc = wh_prepare(c,
                    "UPDATE webhook_events SET state = 0, attempts = 0, next_attempt_ms = ?1 "
                    "WHERE id = ?2 AND state = 2",
                    &st);
    if (rc != PHG_OK)
        return rc;
    WH_BIND(sqlite3_bind_int64(st, 1, now_ms));
    WH_BIND(sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC));
    if (rc != PHG_OK) {
        sqlite3_finalize(st);
        return rc;
    }
    rc = wh_step_done(st);
    if (rc == PHG_OK && sqlite3_changes(c->db) == 0)
        rc = whe_why_unchanged(c, id);
    return rc;
}

static phg_status sqlite_wh_event_replay_all(void *conn, const char *source, int64_t now_ms,
                                             size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && n != NULL);
    *n = 0;
    rc = wh_prepare(c,
                    source != NULL
                        ? "UPDATE webhook_events SET state = 0, attempts = 0, next_attempt_ms = ?1 "
                          "WHERE state = 2 AND source = ?2"
                        : "UPDATE webhook_events SET state = 0, attempts = 0, next_attempt_ms = ?1 "
                          "WHERE state = 2",
                    &st);
    if (rc != PHG_OK)
        return rc;
    WH_BIND(sqlite3_bind_int64(st, 1, now_ms));
    if (source != NULL)
        WH_BIND(sqlite3_bind_text(st, 2, source, -1, SQLITE_STATIC));
    if (rc != PHG_OK) {
        sqlite3_finalize(st);
        return rc;
    }
    rc = wh_step_done(st);
    if (rc == PHG_OK)
        *n = (size_t)sqlite3_changes64(c->db);
    return rc;
}

static phg_status sqlite_wh_event_stats(void *conn, int backlog_only, int64_t counts[3],
                                        int64_t *oldest_pending_ms)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    int64_t state = 0, count = 0, oldest = 0;
    phg_status rc;
    int src = SQLITE_DONE;

    assert(c != NULL && counts != NULL && oldest_pending_ms != NULL);
    counts[0] = counts[2] = 0;
    counts[1] = backlog_only ? -1 : 0;
    *oldest_pending_ms = 0;
    rc = wh_prepare(c,
                    backlog_only ? "SELECT state, count(*), MIN(received_ms) FROM webhook_events "
                                   "WHERE state IN (0, 2) GROUP BY state"
                                 : "SELECT state, count(*), MIN(received_ms) FROM webhook_events "
                                   "GROUP BY state",
                    &st);
    if (rc != PHG_OK)
        return rc;
    while (rc == PHG_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        rc = column_int64_in(st, 0, PHG_WH_EVENT_PENDING, PHG_WH_EVENT_DEAD, &state);
        if (rc == PHG_OK)
            rc = column_int64(st, 1, &count);
        if (rc == PHG_OK)
            rc = column_int64(st, 2, &oldest);
        if (rc != PHG_OK)
            break;
        counts[state] = count;
        if (state == PHG_WH_EVENT_PENDING)
            *oldest_pending_ms = oldest;
    }
    if (rc == PHG_OK && src != SQLITE_ROW && src != SQLITE_DONE)
        rc = map_rc(src);
    sqlite3_finalize(st);
    return rc;
}

static phg_status sqlite_wh_event_purge(void *conn, int64_t before_ms, size_t max, size_t *n)
{
    sqlite_conn *c = conn;
    sqlite3_stmt *st = NULL;
    phg_status rc;

    assert(c != NULL && n != NULL);
    *n = 0;
    rc = wh_prepare(c,
                    "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events "
                    "WHERE state = 1 AND delivered_ms < ?1 LIMIT ?2)",
                    &st);
    if (rc != PHG_OK)
        return rc;
    WH_BIND(sqlite3_bind_int64(st, 1, before_ms));
    WH_BIND(sqlite3_bind_int64(st, 2, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max));
    if (rc != PHG_OK) {
        sqlite3_finalize(st);
        return rc;
    }
    rc = wh_step_done(st);
    if (rc == PHG_OK)
        *n = (size_t)sqlite3_changes64(c->db);
    return rc;
}

const phg_store_engine phg_store_engine_sqlite = {
    .name = "sqlite",
    .connect = sqlite_connect,
    .disconnect = sqlite_disconnect,
    .schema_version = sqlite_schema_version,
    .apply_migration = sqlite_apply_migration,
    .keyring_get = sqlite_keyring_get,
    .keyring_put = sqlite_keyring_put,
    .key_insert = sqlite_key_insert,
    .key_get = sqlite_key_get,
    .key_by_index = sqlite_key_by_index,
    .key_list = sqlite_key_list,
    .key_revoke = sqlite_key_revoke,
    .key_set_limit = sqlite_key_set_limit,
    .key_rotate = sqlite_key_rotate,
    .key_touch = sqlite_key_touch,
    .change_counter = sqlite_change_counter,
    .keys_since = sqlite_keys_since,
    .audit_ensure_partition = sqlite_audit_ensure_partition,
    .audit_append = sqlite_audit_append,
    .audit_checkpoint_insert = sqlite_audit_checkpoint_insert,
    .audit_chain_head = sqlite_audit_chain_head,
    .audit_chains = sqlite_audit_chains,
    .audit_walk = sqlite_audit_walk,
    .audit_checkpoints = sqlite_audit_checkpoints,
    .audit_query = sqlite_audit_query,
    .audit_partitions = sqlite_audit_partitions,
    .audit_partition_rows = sqlite_audit_partition_rows,
    .audit_mark_archived = sqlite_audit_mark_archived,
    .audit_drop_partition = sqlite_audit_drop_partition,
    .wh_source_insert = sqlite_wh_source_insert,
    .wh_source_get = sqlite_wh_source_get,
    .wh_source_list = sqlite_wh_source_list,
    .wh_source_delete = sqlite_wh_source_delete,
    .wh_secret_add = sqlite_wh_secret_add,
    .wh_secret_retire = sqlite_wh_secret_retire,
    .wh_source_set_verify_token = sqlite_wh_source_set_verify_token,
    .wh_event_insert = sqlite_wh_event_insert,
    .wh_event_find = sqlite_wh_event_find,
    .wh_event_claim = sqlite_wh_event_claim,
    .wh_event_get = sqlite_wh_event_get,
    .wh_event_report = sqlite_wh_event_report,
    .wh_txn = sqlite_wh_txn,
    .wh_event_list = sqlite_wh_event_list,
    .wh_event_replay = sqlite_wh_event_replay,
    .wh_event_replay_all = sqlite_wh_event_replay_all,
    .wh_event_stats = sqlite_wh_event_stats,
    .wh_event_purge = sqlite_wh_event_purge,
};
