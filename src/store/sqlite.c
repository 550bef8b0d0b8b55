/*
 * store/sqlite.c: the SQLite engine of the store (the embedded default). One
 * database file in WAL mode, synchronous=FULL because the store holds the
 * audit log, foreign keys on, a busy timeout, defensive mode. Statements are
 * prepared once per connection, lazily, and always reused with bound
 * parameters; the only SQL text run as such is the trusted migration SQL
 * embedded in the binary.
 *
 * It does not own the URL, the pool, the migration order or the public API
 * (store.c does), and needs no locks: a connection is used by one thread at a
 * time. The contract is store/engine.h; the design is DESIGN.md ("Storage")
 * and the tables are in migrations/sqlite/.
 */
#include <assert.h>
#include <errno.h>
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
    ST_KEY_TOUCH,
    ST_KEYS_SINCE,
    ST_COUNT
};

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
    [ST_KEY_TOUCH] = "UPDATE api_keys SET last_used_at = MAX(last_used_at, ?1) WHERE id = ?2",
    [ST_KEYS_SINCE] =
        "SELECT " KEY_COLUMNS " FROM api_keys WHERE version > ?1 ORDER BY version, id",
};

typedef struct sqlite_conn {
    sqlite3 *db;
    sqlite3_stmt *stmt[ST_COUNT]; /* NULL until first used */
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

/* BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
 * timeout), so a transaction that has started cannot fail later for a lock. */
static phg_status txn_begin(sqlite_conn *c)
{
    sqlite3_stmt *st = NULL;
    phg_status rc = stmt_get(c, ST_BEGIN, &st);

    if (rc != PHG_OK)
        return rc;
    return stmt_exec(st);
}

static phg_status txn_commit(sqlite_conn *c)
{
    sqlite3_stmt *st = NULL;
    phg_status rc = stmt_get(c, ST_COMMIT, &st);

    if (rc != PHG_OK)
        return rc;
    return stmt_exec(st);
}

/* Called on every error path: whatever failed, no transaction stays open on
 * the connection (a failed COMMIT, for one, leaves it open). */
static void txn_abort(sqlite_conn *c)
{
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
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

/* ---- connect / disconnect ----------------------------------------------------- */

static void sqlite_disconnect(void *conn)
{
    sqlite_conn *c = conn;
    size_t i;

    if (c == NULL)
        return;
    for (i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(c->stmt[i]);
    if (c->db != NULL)
        txn_abort(c);
    sqlite3_close_v2(c->db);
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

    /* FULL: a commit is on disk when it returns, as an audit log needs. */
    src = sqlite3_exec(c->db, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON", NULL, NULL,
                       NULL);
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
    .key_rotate = sqlite_key_rotate,
    .key_touch = sqlite_key_touch,
    .change_counter = sqlite_change_counter,
    .keys_since = sqlite_keys_since,
};
