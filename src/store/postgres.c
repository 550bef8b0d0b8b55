/*
 * store/postgres.c: the PostgreSQL engine of the store (libpq), behind the
 * table of store/engine.h. It speaks to one server over one connection per
 * engine handle, with named prepared statements and bound parameters (binary
 * format both ways), and reconnects by itself after the server went away.
 *
 * It does not pool, parse the store URL beyond handing it to libpq, pick
 * migrations or lock: store.c does that, and gives a handle to one thread at
 * a time. The tables are in migrations/postgres/; the design is in DESIGN.md
 * ("Storage") and the contract of every function in store/engine.h.
 *
 * Reconnection: a call that finds its connection broken (the server restarted,
 * the network dropped) resets it once (PQreset). A read is then run again,
 * transparently. A write is retried only if it failed on its BEGIN, when
 * nothing can have reached the server; after that it returns
 * PHG_ERR_UNAVAILABLE, since the outcome of a COMMIT lost in flight is
 * unknown, and the caller decides whether to retry.
 *
 * The audit log (migrations/postgres/0002_audit.sql): audit_log is range-
 * partitioned on ts_us, one partition audit_log_YYYY_MM per month. Partition
 * DDL is the only SQL formatted here (partition_sql), from checked integers;
 * it runs under an advisory lock with a short lock timeout. audit_append
 * writes a batch with one INSERT of array parameters (unnest), after making
 * sure every month of the batch has its partition. Reads that can be long
 * (a chain, a month, checkpoints) go through a cursor, FETCH by FETCH.
 */
#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "store/engine.h"

/* Type OIDs (catalog/pg_type_d.h is a server header). */
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_TEXT 25
#define OID_INT8_ARRAY 1016
#define OID_TEXT_ARRAY 1009

#define STATEMENT_TIMEOUT_MS 30000
#define DEFAULT_CONNECT_TIMEOUT_S 5
/* pg_advisory_xact_lock key that serializes migrators: "phigmigr". */
#define MIGRATION_LOCK_KEY INT64_C(0x706869676d696772)
#define MAX_PARAMS 16

/* pg_advisory_xact_lock key that serializes the audit log's DDL (creating
 * and dropping partitions): "phigaudt". */
#define AUDIT_DDL_LOCK_KEY INT64_C(0x7068696761756474)
/* DDL on audit_log waits at most this long for its lock. A CREATE or DROP
 * of a partition needs an exclusive lock on audit_log, and while it waits
 * in the lock queue every append waits behind it: better to fail the DDL
 * (it is retried: partitions are made a month ahead) than to stall writers
 * behind a long audit walk. */
#define AUDIT_DDL_LOCK_TIMEOUT "SET LOCAL lock_timeout = 2000"
/* The longest stored record text (docs/formats.md "Audit record": 64 KiB of
 * details, escaped, plus short fields); over it, a write is refused
 * (PHG_ERR_TOO_LARGE) and a read is a broken row (PHG_ERR_SCHEMA). */
#define AUDIT_RECORD_MAX ((size_t)1 << 20)
/* One INSERT of audit_append carries at most this many rows and bytes of
 * record text; a bigger batch takes several statements (same transaction). */
#define AUDIT_INSERT_ROWS_MAX 4096
#define AUDIT_INSERT_BYTES_MAX ((size_t)16 << 20)
/* Months whose partition this connection knows to exist. */
#define AUDIT_MONTH_CACHE 8

typedef struct pg_conn {
    PGconn *pg;
    uint64_t prepared;                  /* bit i: statement i is prepared on this session */
    char last_error[PHG_STORE_ERR_MAX]; /* for a debugger; never a password */
    char last_state[6];                 /* SQLSTATE of the last failure, "" if none */
    /* year * 12 + month - 1 of months whose partition exists (ensured by this
     * connection); 0 is an empty slot (year 0 is never valid). */
    int known_months[AUDIT_MONTH_CACHE];
    unsigned known_next; /* next slot to overwrite */
} pg_conn;

/* ---- statements ------------------------------------------------------------ */

/* The columns of a phg_apikey_record, in the order row_to_record reads them. */
#define KEY_COLUMNS                                                                                \
    "id, key_hash, key_index, role, scopes, user_id, description, created_by, rate_limit, "        \
    "replaced_by, created_at, expires_at, revoked_at, grace_until, last_used_at, version"
#define KEY_NCOLUMNS 16

/* The columns of a phg_audit_store_row, in the order row_to_audit reads them
 * and audit_append binds them. */
#define AUDIT_COLUMNS                                                                              \
    "id, ts_us, chain, seq, hash, request_id, key_id, user_id, action, outcome, subject, record"
#define AUDIT_NCOLUMNS 12

#define WH_COLUMNS                                                                                 \
    "name, scheme, tolerance_s, deliver_to, created_at, updated_at, version, verify_token_enc"

/* The columns of a webhook event, in the order whe_row_read reads them (then
 * body_enc where the body is read), and those a new row is given. */
#define WHE_COLUMNS                                                                                \
    "id, source, msg_id, request_id, authenticated, secret_index, signed_ts_s, received_ms, "      \
    "content_type, state, attempts, next_attempt_ms, last_attempt_ms, delivered_ms, "              \
    "last_status, last_error, body_len"
#define WHE_NCOLUMNS 17
#define WHE_INSERT_COLUMNS                                                                         \
    "id, source, msg_id, request_id, authenticated, secret_index, signed_ts_s, received_ms, "      \
    "content_type, next_attempt_ms, body_len, body_enc"

typedef enum stmt_id {
    ST_SCHEMA_EXISTS,
    ST_SCHEMA_MAX,
    ST_KEYRING_GET,
    ST_KEYRING_PUT,
    ST_BUMP,
    ST_KEY_INSERT,
    ST_KEY_GET,
    ST_KEY_BY_INDEX,
    ST_KEY_LIST,
    ST_KEY_LOCK,
    ST_KEY_REVOKE,
    ST_KEY_ROTATE_OLD,
    ST_KEY_LOCK_ROW,
    ST_KEY_SET_LIMIT,
    ST_KEY_TOUCH,
    ST_COUNTER,
    ST_KEYS_SINCE,
    ST_AUDIT_LOCK,
    ST_AUDIT_TABLE_EXISTS,
    ST_AUDIT_PART_GET,
    ST_AUDIT_PART_LOCK,
    ST_AUDIT_PART_REGISTER,
    ST_AUDIT_PART_ARCHIVE,
    ST_AUDIT_PART_DROPPED,
    ST_AUDIT_PARTS,
    ST_AUDIT_INSERT,
    ST_AUDIT_HEAD_PUT,
    ST_AUDIT_HEAD_GET,
    ST_AUDIT_CP_INSERT,
    ST_WH_SOURCE_INSERT,
    ST_WH_SECRET_INSERT,
    ST_WH_SOURCE_GET,
    ST_WH_SECRETS_GET,
    ST_WH_SOURCE_LIST,
    ST_WH_SECRETS_DELETE,
    ST_WH_SOURCE_DELETE,
    ST_WH_SOURCE_LOCK,
    ST_WH_SECRETS_ACTIVE,
    ST_WH_SECRET_NEXT,
    ST_WH_SOURCE_TOUCH,
    ST_WH_SECRET_LOCK,
    ST_WH_SECRET_RETIRE,
    ST_WH_SOURCE_SET_VT,
    ST_WHE_INSERT,
    ST_WHE_FIND,
    ST_WHE_CLAIM,
    ST_WHE_GET,
    ST_WHE_REPORT,
    ST_WHE_STATE,
    ST_WHE_REPLAY,
    ST_WHE_REPLAY_ALL,
    ST_WHE_STATS,
    ST_WHE_BACKLOG,
    ST_WHE_PURGE,
    ST_COUNT /* not a statement */
} stmt_id;

typedef struct stmt_def {
    const char *name;
    const char *sql;
    int nparams;
    Oid types[MAX_PARAMS];
} stmt_def;

static const stmt_def stmts[ST_COUNT] = {
    [ST_SCHEMA_EXISTS] = {"phg_schema_exists",
                          "SELECT to_regclass('phigate_schema') IS NOT NULL",
                          0,
                          {0}},
    [ST_SCHEMA_MAX] = {"phg_schema_max",
                       "SELECT COALESCE(max(version), 0)::int8 FROM phigate_schema",
                       0,
                       {0}},
    [ST_KEYRING_GET] = {"phg_keyring_get", "SELECT body FROM phi_keyring WHERE id = 1", 0, {0}},
    [ST_KEYRING_PUT] = {"phg_keyring_put",
                        "INSERT INTO phi_keyring (id, body, updated_at) VALUES (1, $1, $2) "
                        "ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body, "
                        "updated_at = EXCLUDED.updated_at",
                        2,
                        {OID_TEXT, OID_INT8}},
    [ST_BUMP] = {"phg_bump",
                 "UPDATE phigate_changes SET counter = counter + 1 WHERE id = 1 "
                 "RETURNING counter",
                 0,
                 {0}},
    [ST_KEY_INSERT] = {"phg_key_insert",
                       "INSERT INTO api_keys (" KEY_COLUMNS ") VALUES ($1, $2, $3, $4, $5, $6, "
                       "$7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                       16,
                       {OID_TEXT, OID_BYTEA, OID_INT8, OID_TEXT, OID_INT8, OID_TEXT, OID_TEXT,
                        OID_TEXT, OID_TEXT, OID_TEXT, OID_INT8, OID_INT8, OID_INT8, OID_INT8,
                        OID_INT8, OID_INT8}},
    [ST_KEY_GET] = {"phg_key_get",
                    "SELECT " KEY_COLUMNS " FROM api_keys WHERE id = $1",
                    1,
                    {OID_TEXT}},
    [ST_KEY_BY_INDEX] = {"phg_key_by_index",
                         "SELECT " KEY_COLUMNS " FROM api_keys WHERE key_index = $1 ORDER BY id",
                         1,
                         {OID_INT8}},
    [ST_KEY_LIST] = {"phg_key_list",
                     "SELECT " KEY_COLUMNS " FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2",
                     2,
                     {OID_TEXT, OID_INT8}},
    [ST_KEY_LOCK] = {"phg_key_lock",
                     "SELECT revoked_at, replaced_by FROM api_keys WHERE id = $1 FOR UPDATE",
                     1,
                     {OID_TEXT}},
    [ST_KEY_REVOKE] = {"phg_key_revoke",
                       "UPDATE api_keys SET revoked_at = $2, version = $3 WHERE id = $1",
                       3,
                       {OID_TEXT, OID_INT8, OID_INT8}},
    [ST_KEY_ROTATE_OLD] = {"phg_key_rotate_old",
                           "UPDATE api_keys SET grace_until = $2, replaced_by = $3, version = $4 "
                           "WHERE id = $1",
                           4,
                           {OID_TEXT, OID_INT8, OID_TEXT, OID_INT8}},
    [ST_KEY_LOCK_ROW] = {"phg_key_lock_row",
                         "SELECT " KEY_COLUMNS " FROM api_keys WHERE id = $1 FOR UPDATE",
                         1,
                         {OID_TEXT}},
    [ST_KEY_SET_LIMIT] = {"phg_key_set_limit",
                          "UPDATE api_keys SET rate_limit = $2, version = $3 WHERE id = $1",
                          3,
                          {OID_TEXT, OID_TEXT, OID_INT8}},
    [ST_KEY_TOUCH] = {"phg_key_touch",
                      "UPDATE api_keys SET last_used_at = GREATEST(last_used_at, $1) "
                      "WHERE id = $2",
                      2,
                      {OID_INT8, OID_TEXT}},
    [ST_COUNTER] = {"phg_counter", "SELECT counter FROM phigate_changes WHERE id = 1", 0, {0}},
    [ST_KEYS_SINCE] = {"phg_keys_since",
                       "SELECT " KEY_COLUMNS " FROM api_keys WHERE version > $1 "
                       "ORDER BY version, id",
                       1,
                       {OID_INT8}},
    [ST_AUDIT_LOCK] = {"phg_audit_lock", "SELECT pg_advisory_xact_lock($1)", 1, {OID_INT8}},
    [ST_AUDIT_TABLE_EXISTS] = {"phg_audit_table_exists",
                               "SELECT to_regclass($1) IS NOT NULL",
                               1,
                               {OID_TEXT}},
    [ST_AUDIT_PART_GET] = {"phg_audit_part_get",
                           "SELECT archived_at, dropped_at FROM audit_partitions WHERE month = $1",
                           1,
                           {OID_TEXT}},
    [ST_AUDIT_PART_LOCK] = {"phg_audit_part_lock",
                            "SELECT archived_at, dropped_at FROM audit_partitions "
                            "WHERE month = $1 FOR UPDATE",
                            1,
                            {OID_TEXT}},
    [ST_AUDIT_PART_REGISTER] = {"phg_audit_part_register",
                                "INSERT INTO audit_partitions (month, created_at) VALUES ($1, $2) "
                                "ON CONFLICT (month) DO NOTHING",
                                2,
                                {OID_TEXT, OID_INT8}},
    [ST_AUDIT_PART_ARCHIVE] = {"phg_audit_part_archive",
                               "UPDATE audit_partitions SET archived_at = $2, archive_sha256 = $3 "
                               "WHERE month = $1",
                               3,
                               {OID_TEXT, OID_INT8, OID_TEXT}},
    [ST_AUDIT_PART_DROPPED] = {"phg_audit_part_dropped",
                               "UPDATE audit_partitions SET dropped_at = $2 WHERE month = $1",
                               2,
                               {OID_TEXT, OID_INT8}},
    [ST_AUDIT_PARTS] = {"phg_audit_parts",
                        "SELECT month, created_at, archived_at, dropped_at, archive_sha256 "
                        "FROM audit_partitions ORDER BY month",
                        0,
                        {0}},
    /* One statement for a whole batch: each column is one array parameter,
     * and PostgreSQL routes every row to its month's partition. */
    [ST_AUDIT_INSERT] = {"phg_audit_insert",
                         "INSERT INTO audit_log (" AUDIT_COLUMNS ") SELECT * FROM unnest("
                         "$1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::text[], "
                         "$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], "
                         "$12::text[])",
                         12,
                         {OID_TEXT_ARRAY, OID_INT8_ARRAY, OID_TEXT_ARRAY, OID_INT8_ARRAY,
                          OID_TEXT_ARRAY, OID_TEXT_ARRAY, OID_TEXT_ARRAY, OID_TEXT_ARRAY,
                          OID_TEXT_ARRAY, OID_TEXT_ARRAY, OID_TEXT_ARRAY, OID_TEXT_ARRAY}},
    [ST_AUDIT_HEAD_PUT] = {"phg_audit_head_put",
                           "INSERT INTO audit_chains (chain, seq, hash) VALUES ($1, $2, $3) "
                           "ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, "
                           "hash = EXCLUDED.hash",
                           3,
                           {OID_TEXT, OID_INT8, OID_TEXT}},
    [ST_AUDIT_HEAD_GET] = {"phg_audit_head_get",
                           "SELECT seq, hash FROM audit_chains WHERE chain = $1",
                           1,
                           {OID_TEXT}},
    [ST_AUDIT_CP_INSERT] = {"phg_audit_cp_insert",
                            "INSERT INTO audit_checkpoints (chain, seq, hash, ts_us, mac) "
                            "VALUES ($1, $2, $3, $4, $5)",
                            5,
                            {OID_TEXT, OID_INT8, OID_TEXT, OID_INT8, OID_TEXT}},
    [ST_WH_SOURCE_INSERT] = {"phg_wh_source_insert",
                             "INSERT INTO webhook_sources (" WH_COLUMNS ") "
                             "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                             8,
                             {OID_TEXT, OID_TEXT, OID_INT8, OID_TEXT, OID_INT8, OID_INT8, OID_INT8,
                              OID_TEXT}},
    [ST_WH_SECRET_INSERT] =
        {"phg_wh_secret_insert",
         "INSERT INTO webhook_secrets (source, idx, secret_enc, fingerprint, "
         "not_after, retired_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
         7,
         {OID_TEXT, OID_INT8, OID_TEXT, OID_TEXT, OID_INT8, OID_INT8, OID_INT8}},
    [ST_WH_SOURCE_GET] = {"phg_wh_source_get",
                          "SELECT " WH_COLUMNS " FROM webhook_sources WHERE name = $1",
                          1,
                          {OID_TEXT}},
    [ST_WH_SECRETS_GET] = {"phg_wh_secrets_get",
                           "SELECT idx, secret_enc, fingerprint, not_after, retired_at, created_at "
                           "FROM webhook_secrets WHERE source = $1 ORDER BY idx LIMIT 1001",
                           1,
                           {OID_TEXT}},
    [ST_WH_SOURCE_LIST] = {"phg_wh_source_list",
                           "SELECT " WH_COLUMNS " FROM webhook_sources ORDER BY name LIMIT 1000",
                           0,
                           {0}},
    [ST_WH_SECRETS_DELETE] = {"phg_wh_secrets_delete",
                              "DELETE FROM webhook_secrets WHERE source = $1",
                              1,
                              {OID_TEXT}},
    [ST_WH_SOURCE_DELETE] = {"phg_wh_source_delete",
                             "DELETE FROM webhook_sources WHERE name = $1 RETURNING name",
                             1,
                             {OID_TEXT}},
    [ST_WH_SOURCE_LOCK] = {"phg_wh_source_lock",
                           "SELECT name FROM webhook_sources WHERE name = $1 FOR UPDATE",
                           1,
                           {OID_TEXT}},
    [ST_WH_SECRETS_ACTIVE] = {"phg_wh_secrets_active",
                              "SELECT count(*)::int8 FROM webhook_secrets "
                              "WHERE source = $1 AND retired_at = 0",
                              1,
                              {OID_TEXT}},
    [ST_WH_SECRET_NEXT] = {"phg_wh_secret_next",
                           "SELECT (COALESCE(max(idx), -1) + 1)::int8 FROM webhook_secrets "
                           "WHERE source = $1",
                           1,
                           {OID_TEXT}},
    [ST_WH_SOURCE_TOUCH] = {"phg_wh_source_touch",
                            "UPDATE webhook_sources SET updated_at = $2, version = $3 "
                            "WHERE name = $1",
                            3,
                            {OID_TEXT, OID_INT8, OID_INT8}},
    [ST_WH_SECRET_LOCK] = {"phg_wh_secret_lock",
                           "SELECT retired_at FROM webhook_secrets WHERE source = $1 AND idx = $2 "
                           "FOR UPDATE",
                           2,
                           {OID_TEXT, OID_INT8}},
    [ST_WH_SECRET_RETIRE] = {"phg_wh_secret_retire",
                             "UPDATE webhook_secrets SET retired_at = $3 "
                             "WHERE source = $1 AND idx = $2",
                             3,
                             {OID_TEXT, OID_INT8, OID_INT8}},
    [ST_WH_SOURCE_SET_VT] = {"phg_wh_source_set_vt",
                             "UPDATE webhook_sources SET verify_token_enc = $2, updated_at = $3, "
                             "version = $4 WHERE name = $1 RETURNING name",
                             4,
                             {OID_TEXT, OID_TEXT, OID_INT8, OID_INT8}},
    /* A new row is PENDING with no attempt: the other columns' defaults. */
    [ST_WHE_INSERT] = {"phg_whe_insert",
                       "INSERT INTO webhook_events (" WHE_INSERT_COLUMNS ") VALUES ($1, $2, $3, "
                       "$4, $5, $6, $7, $8, $9, $10, $11, $12) "
                       "ON CONFLICT (source, msg_id) DO NOTHING RETURNING id",
                       12,
                       {OID_TEXT, OID_TEXT, OID_TEXT, OID_TEXT, OID_INT8, OID_INT8, OID_INT8,
                        OID_INT8, OID_TEXT, OID_INT8, OID_INT8, OID_TEXT}},
    [ST_WHE_FIND] = {"phg_whe_find",
                     "SELECT id FROM webhook_events WHERE source = $1 AND msg_id = $2",
                     2,
                     {OID_TEXT, OID_TEXT}},
    /* One statement, so one transaction: lock the due rows no other claimer
     * holds (SKIP LOCKED), keep those within the byte budget (a running sum
     * of body_len: the first row always), lease them, and return them in
     * due order. $1 now, $2 the lease's end, $3 max rows, $4 the budget. */
    [ST_WHE_CLAIM] = {"phg_whe_claim",
                      "WITH cand AS (SELECT id, next_attempt_ms, body_len FROM webhook_events "
                      "WHERE state = 0 AND next_attempt_ms <= $1 ORDER BY next_attempt_ms, id "
                      "LIMIT $3 FOR UPDATE SKIP LOCKED), "
                      "pick AS (SELECT id AS pick_id, next_attempt_ms AS due_ms FROM "
                      "(SELECT id, next_attempt_ms, sum(body_len) OVER (ORDER BY "
                      "next_attempt_ms, id) - body_len AS before FROM cand) w "
                      "WHERE before < $4), "
                      "upd AS (UPDATE webhook_events e SET next_attempt_ms = $2 FROM pick "
                      "WHERE e.id = pick.pick_id RETURNING " WHE_COLUMNS ", body_enc, due_ms) "
                      "SELECT " WHE_COLUMNS ", body_enc FROM upd ORDER BY due_ms, id",
                      4,
                      {OID_INT8, OID_INT8, OID_INT8, OID_INT8}},
    [ST_WHE_GET] = {"phg_whe_get",
                    "SELECT " WHE_COLUMNS ", body_enc FROM webhook_events WHERE id = $1",
                    1,
                    {OID_TEXT}},
    /* $2 the new state, $3 1 for an attempt made (0: a bookkeeping change) */
    [ST_WHE_REPORT] = {"phg_whe_report",
                       "UPDATE webhook_events SET state = $2, attempts = attempts + $3, "
                       "last_attempt_ms = CASE WHEN $3 = 1 THEN $4 ELSE last_attempt_ms END, "
                       "last_status = CASE WHEN $3 = 1 THEN $5 ELSE last_status END, "
                       "last_error = $6, "
                       "delivered_ms = CASE WHEN $2 = 1 THEN $4 ELSE delivered_ms END, "
                       "next_attempt_ms = CASE WHEN $2 = 0 THEN $7 ELSE next_attempt_ms END "
                       "WHERE id = $1 AND state = 0 RETURNING id",
                       7,
                       {OID_TEXT, OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_TEXT, OID_INT8}},
    [ST_WHE_STATE] = {"phg_whe_state",
                      "SELECT state FROM webhook_events WHERE id = $1",
                      1,
                      {OID_TEXT}},
    [ST_WHE_REPLAY] = {"phg_whe_replay",
                       "UPDATE webhook_events SET state = 0, attempts = 0, next_attempt_ms = $2 "
                       "WHERE id = $1 AND state = 2 RETURNING id",
                       2,
                       {OID_TEXT, OID_INT8}},
    [ST_WHE_REPLAY_ALL] = {"phg_whe_replay_all",
                           "UPDATE webhook_events SET state = 0, attempts = 0, "
                           "next_attempt_ms = $1 WHERE state = 2 AND "
                           "($2::text IS NULL OR source = $2)",
                           2,
                           {OID_INT8, OID_TEXT}},
    [ST_WHE_BACKLOG] = {"phg_whe_backlog",
                        "SELECT state, count(*)::int8, COALESCE(min(received_ms), 0)::int8 "
                        "FROM webhook_events WHERE state IN (0, 2) GROUP BY state",
                        0,
                        {0}},
    [ST_WHE_STATS] = {"phg_whe_stats",
                      "SELECT state, count(*)::int8, COALESCE(min(received_ms), 0)::int8 "
                      "FROM webhook_events GROUP BY state",
                      0,
                      {0}},
    [ST_WHE_PURGE] = {"phg_whe_purge",
                      "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events "
                      "WHERE state = 1 AND delivered_ms < $1 LIMIT $2)",
                      2,
                      {OID_INT8, OID_INT8}},
};

/* Bound parameters, all in binary format: int8 as 8 big-endian bytes, text
 * and bytea as their bytes. Nothing is ever spliced into SQL. */
typedef struct params {
    int n;
    const char *values[MAX_PARAMS];
    int lengths[MAX_PARAMS];
    int formats[MAX_PARAMS];
    char ints[MAX_PARAMS][8];
} params;

static void p_bytes(params *p, const void *bytes, size_t len)
{
    assert(p->n < MAX_PARAMS && len <= INT_MAX);
    p->values[p->n] = bytes;
    p->lengths[p->n] = (int)len;
    p->formats[p->n] = 1;
    p->n++;
}

static void p_text(params *p, const char *s)
{
    p_bytes(p, s, strlen(s));
}

/* SQL NULL (an absent filter). */
static void p_null(params *p)
{
    assert(p->n < MAX_PARAMS);
    p->values[p->n] = NULL;
    p->lengths[p->n] = 0;
    p->formats[p->n] = 1;
    p->n++;
}

static void p_int8(params *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    int i;
    assert(p->n < MAX_PARAMS);
    for (i = 0; i < 8; i++)
        p->ints[p->n][i] = (char)(unsigned char)(u >> (56 - 8 * i));
    p_bytes(p, p->ints[p->n], 8);
}

/* ---- errors and the connection ------------------------------------------- */

static void copy_message(char *dst, size_t dst_len, const char *msg)
{
    size_t i, o = 0;
    int space = 0;
    if (dst == NULL || dst_len == 0)
        return;
    /* One line: libpq's messages end in newlines and indent with tabs. */
    for (i = 0; msg != NULL && msg[i] != '\0' && o + 1 < dst_len; i++) {
        unsigned char ch = (unsigned char)msg[i];
        if (ch == '\n' || ch == '\t' || ch == '\r' || ch == ' ') {
            space = 1;
            continue;
        }
        if (space && o > 0 && o + 2 < dst_len)
            dst[o++] = ' ';
        space = 0;
        dst[o++] = (char)(ch < 0x20 || ch == 0x7f ? '?' : ch);
    }
    dst[o] = '\0';
}

static int lost(const pg_conn *c)
{
    return PQstatus(c->pg) == CONNECTION_BAD;
}

/* The status for a failed result (res may be NULL: libpq ran out of memory
 * or the connection is gone). Keeps the server's message in last_error. */
static phg_status classify(pg_conn *c, const PGresult *res)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char line[PHG_STORE_ERR_MAX];

    snprintf(c->last_state, sizeof c->last_state, "%s", state != NULL ? state : "");
    /* The server's one-line message and its SQLSTATE, or libpq's own. */
    if (primary != NULL) {
        snprintf(line, sizeof line, "%s [%s]", primary, state != NULL ? state : "?????");
        copy_message(c->last_error, sizeof c->last_error, line);
    } else {
        copy_message(c->last_error, sizeof c->last_error,
                     res != NULL && PQresultErrorMessage(res)[0] != '\0' ? PQresultErrorMessage(res)
                                                                         : PQerrorMessage(c->pg));
    }
    if (lost(c))
        return PHG_ERR_UNAVAILABLE;
    if (state == NULL)
        return PHG_ERR_IO;
    if (strcmp(state, "23505") == 0)
        return PHG_ERR_EXISTS;
    /* Connection exceptions; shutting down, crash recovery, cannot connect
     * now; statement timeout or cancel: the server is not there for us. */
    if (strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
        strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0 || strcmp(state, "57014") == 0)
        return PHG_ERR_UNAVAILABLE;
    /* Undefined table or column: the schema is missing or broken. */
    if (strcmp(state, "42P01") == 0 || strcmp(state, "42703") == 0)
        return PHG_ERR_SCHEMA;
    return PHG_ERR_IO;
}

static void quiet_notices(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* A statement without parameters or data (BEGIN, SET, ...). */
static phg_status exec_fixed(pg_conn *c, const char *sql)
{
    phg_status rc = PHG_OK;
    PGresult *res = PQexecParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (res == NULL || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK))
        rc = classify(c, res);
    PQclear(res);
    return rc;
}

/* What every session needs, after a connect and after a reset. */
static phg_status setup_session(pg_conn *c)
{
    phg_status rc;
    c->prepared = 0;
    rc = exec_fixed(c, "SET synchronous_commit = on");
    if (rc != PHG_OK)
        return rc;
    /* 30 s in milliseconds; a constant, not data. */
    return exec_fixed(c, "SET statement_timeout = 30000");
}

/* Reconnect once. 1 if the connection is usable again. */
static int try_reset(pg_conn *c)
{
    PQreset(c->pg);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        copy_message(c->last_error, sizeof c->last_error, PQerrorMessage(c->pg));
        return 0;
    }
    return setup_session(c) == PHG_OK;
}

/* At the start of every call: a connection left broken by an earlier call
 * (whose reset failed) gets another chance now. */
static phg_status ensure_connected(pg_conn *c)
{
    if (!lost(c))
        return PHG_OK;
    return try_reset(c) ? PHG_OK : PHG_ERR_UNAVAILABLE;
}

static phg_status prepare(pg_conn *c, stmt_id id)
{
    phg_status rc = PHG_OK;
    PGresult *res;
    const stmt_def *d = &stmts[id];

    if (c->prepared & (UINT64_C(1) << id))
        return PHG_OK;
    res = PQprepare(c->pg, d->name, d->sql, d->nparams, d->nparams ? d->types : NULL);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = classify(c, res);
    else
        c->prepared |= UINT64_C(1) << id;
    PQclear(res);
    return rc;
}

/* Run a prepared statement; binary results. On PHG_OK, *out (if not NULL)
 * is the result, which the caller PQclear()s. */
static phg_status run(pg_conn *c, stmt_id id, const params *p, PGresult **out)
{
    phg_status rc;
    PGresult *res;
    ExecStatusType st;

    if (out != NULL)
        *out = NULL;
    assert((p == NULL ? 0 : p->n) == stmts[id].nparams);
    rc = prepare(c, id);
    if (rc != PHG_OK)
        return rc;
    res = PQexecPrepared(c->pg, stmts[id].name, p ? p->n : 0, p ? p->values : NULL,
                         p ? p->lengths : NULL, p ? p->formats : NULL, 1);
    st = PQresultStatus(res);
    if (res == NULL || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)) {
        rc = classify(c, res);
        PQclear(res);
        return rc;
    }
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
    return PHG_OK;
}

/* BEGIN, retried once after a reset if the connection turns out broken:
 * nothing of the write has reached the server yet, so that is safe. */
static phg_status begin(pg_conn *c)
{
    phg_status rc = exec_fixed(c, "BEGIN");
    if (rc != PHG_OK && lost(c) && try_reset(c))
        rc = exec_fixed(c, "BEGIN");
    return rc;
}

/* After a failed write: undo an open transaction, or note a lost server and
 * reset now, so the next call starts on a working connection. */
static phg_status end_failed_write(pg_conn *c, phg_status rc)
{
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
        /* The message that matters is the first failure's. */
        char saved[sizeof c->last_error];
        memcpy(saved, c->last_error, sizeof saved);
        (void)exec_fixed(c, "ROLLBACK");
        memcpy(c->last_error, saved, sizeof saved);
    }
    if (lost(c)) {
        (void)try_reset(c);
        return PHG_ERR_UNAVAILABLE;
    }
    return rc;
}

/* ---- reading results --------------------------------------------------------- */

static phg_status get_int8(const PGresult *res, int row, int col, int64_t *v)
{
    const unsigned char *b;
    uint64_t u = 0;
    int i;
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return PHG_ERR_SCHEMA;
    b = (const unsigned char *)PQgetvalue(res, row, col);
    for (i = 0; i < 8; i++)
        u = (u << 8) | b[i];
    *v = (int64_t)u;
    return PHG_OK;
}

/* A text column into a fixed buffer of cap bytes (NUL included). Too long
 * is a broken schema, never a silent truncation. */
static phg_status get_text(const PGresult *res, int row, int col, char *dst, size_t cap)
{
    int len;
    if (PQgetisnull(res, row, col))
        return PHG_ERR_SCHEMA;
    len = PQgetlength(res, row, col);
    if (len < 0 || (size_t)len >= cap)
        return PHG_ERR_SCHEMA;
    memcpy(dst, PQgetvalue(res, row, col), (size_t)len);
    dst[len] = '\0';
    return PHG_OK;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        rc = (expr);                                                                               \
        if (rc != PHG_OK)                                                                          \
            goto out;                                                                              \
    } while (0)

static phg_status row_to_record(const PGresult *res, int row, phg_apikey_record *rec)
{
    phg_status rc = PHG_OK;
    char role[8];
    int64_t scopes;

    memset(rec, 0, sizeof *rec);
    if (PQnfields(res) != KEY_NCOLUMNS)
        return PHG_ERR_SCHEMA;
    TRY(get_text(res, row, 0, rec->id, sizeof rec->id));
    if (PQgetisnull(res, row, 1) || PQgetlength(res, row, 1) != (int)sizeof rec->hash) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    memcpy(rec->hash, PQgetvalue(res, row, 1), sizeof rec->hash);
    TRY(get_int8(res, row, 2, &rec->index));
    TRY(get_text(res, row, 3, role, sizeof role));
    if (!phg_internal_role_from_text(role, &rec->role)) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    TRY(get_int8(res, row, 4, &scopes));
    if (scopes < 0 || scopes > (int64_t)UINT32_MAX) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    rec->scopes = (uint32_t)scopes;
    TRY(get_text(res, row, 5, rec->user_id, sizeof rec->user_id));
    TRY(get_text(res, row, 6, rec->description, sizeof rec->description));
    TRY(get_text(res, row, 7, rec->created_by, sizeof rec->created_by));
    TRY(get_text(res, row, 8, rec->rate_limit, sizeof rec->rate_limit));
    TRY(get_text(res, row, 9, rec->replaced_by, sizeof rec->replaced_by));
    TRY(get_int8(res, row, 10, &rec->created_at));
    TRY(get_int8(res, row, 11, &rec->expires_at));
    TRY(get_int8(res, row, 12, &rec->revoked_at));
    TRY(get_int8(res, row, 13, &rec->grace_until));
    TRY(get_int8(res, row, 14, &rec->last_used_at));
    TRY(get_int8(res, row, 15, &rec->version));
out:
    return rc;
}

/* Every row of res into a malloc'd array (NULL when there are none). */
static phg_status rows_to_records(const PGresult *res, phg_apikey_record **out, size_t *n)
{
    phg_status rc = PHG_OK;
    int rows = PQntuples(res), i;
    phg_apikey_record *recs = NULL;

    *out = NULL;
    *n = 0;
    if (rows <= 0)
        return PHG_OK;
    recs = malloc((size_t)rows * sizeof *recs);
    if (recs == NULL)
        return PHG_ERR_NOMEM;
    for (i = 0; i < rows; i++)
        TRY(row_to_record(res, i, &recs[i]));
    *out = recs;
    *n = (size_t)rows;
    recs = NULL;
out:
    free(recs);
    return rc;
}

/* A record's text field as a parameter; it must be NUL-terminated inside its
 * array (a caller's bug otherwise, reported rather than read past). */
static int field_ok(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static phg_status record_params(const phg_apikey_record *rec, int64_t version, params *p)
{
    if (!field_ok(rec->id, sizeof rec->id) || rec->id[0] == '\0' ||
        !field_ok(rec->user_id, sizeof rec->user_id) ||
        !field_ok(rec->description, sizeof rec->description) ||
        !field_ok(rec->created_by, sizeof rec->created_by) ||
        !field_ok(rec->rate_limit, sizeof rec->rate_limit) ||
        !field_ok(rec->replaced_by, sizeof rec->replaced_by) ||
        (rec->role != PHG_ROLE_USER && rec->role != PHG_ROLE_ADMIN))
        return PHG_ERR_INVALID;
    memset(p, 0, sizeof *p);
    p_text(p, rec->id);
    p_bytes(p, rec->hash, sizeof rec->hash);
    p_int8(p, rec->index);
    p_text(p, phg_internal_role_text(rec->role));
    p_int8(p, (int64_t)rec->scopes);
    p_text(p, rec->user_id);
    p_text(p, rec->description);
    p_text(p, rec->created_by);
    p_text(p, rec->rate_limit);
    p_text(p, rec->replaced_by);
    p_int8(p, rec->created_at);
    p_int8(p, rec->expires_at);
    p_int8(p, rec->revoked_at);
    p_int8(p, rec->grace_until);
    p_int8(p, rec->last_used_at);
    p_int8(p, version);
    return PHG_OK;
}

/* ---- reads, retried once after a reconnect --------------------------------- */

typedef phg_status (*read_fn)(pg_conn *c, void *arg);

static phg_status read_with_retry(pg_conn *c, read_fn fn, void *arg)
{
    phg_status rc = ensure_connected(c);
    if (rc != PHG_OK)
        return rc;
    rc = fn(c, arg);
    if (rc != PHG_OK && lost(c)) {
        if (!try_reset(c))
            return PHG_ERR_UNAVAILABLE;
        rc = fn(c, arg);
        if (rc != PHG_OK && lost(c))
            (void)try_reset(c); /* for the next call; this one has failed */
    }
    return rc;
}

/* ---- connect ---------------------------------------------------------------------- */

/* Replace every occurrence of secret in buf (NUL-terminated, cap bytes) by
 * "***". If that cannot be done, the whole message goes. */
static void scrub(char *buf, size_t cap, const char *secret)
{
    size_t slen, i = 0, o = 0;
    char *out;
    if (buf == NULL || cap == 0 || secret == NULL || secret[0] == '\0' ||
        strstr(buf, secret) == NULL)
        return;
    slen = strlen(secret);
    out = malloc(cap);
    if (out == NULL) {
        snprintf(buf, cap, "(message withheld)");
        return;
    }
    while (buf[i] != '\0' && o + 1 < cap) {
        if (strncmp(buf + i, secret, slen) == 0) {
            size_t k;
            for (k = 0; k < 3 && o + 1 < cap; k++)
                out[o++] = '*';
            i += slen;
        } else {
            out[o++] = buf[i++];
        }
    }
    out[o] = '\0';
    memcpy(buf, out, o + 1);
    free(out);
}

static int has_password(const char *url)
{
    const char *rest = strstr(url, "://"), *at, *colon;
    if (strstr(url, "password=") != NULL)
        return 1;
    if (rest == NULL)
        return 0;
    rest += 3;
    at = strchr(rest, '@');
    if (at == NULL)
        return 0;
    colon = memchr(rest, ':', (size_t)(at - rest));
    return colon != NULL;
}

static phg_status pg_connect(const char *target, const phg_store_options *opts, void **out,
                             char *err, size_t err_len)
{
    phg_status rc = PHG_OK;
    pg_conn *c = NULL;
    PQconninfoOption *info = NULL, *o;
    char *parse_err = NULL;
    const char *password = NULL, *host = NULL, *port = NULL;
    char timeout[16], msg[PHG_STORE_ERR_MAX], detail[PHG_STORE_ERR_MAX];
    /* Keywords before dbname are defaults the URL may override (keepalives:
     * notice a dead peer in about a minute, not the OS's two hours); those
     * after it are imposed. */
    const char *keywords[] = {
        "keepalives_idle", "keepalives_interval", "keepalives_count",          "dbname",
        "connect_timeout", "client_encoding",     "fallback_application_name", NULL};
    const char *values[] = {"30", "10", "3", target, timeout, "UTF8", "phigate", NULL};
    int t = opts != NULL && opts->connect_timeout_s > 0 ? opts->connect_timeout_s
                                                        : DEFAULT_CONNECT_TIMEOUT_S;

    assert(target != NULL && out != NULL);
    *out = NULL;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (strncmp(target, "postgres://", 11) != 0 && strncmp(target, "postgresql://", 13) != 0) {
        copy_message(err, err_len, "not a postgres:// or postgresql:// URL");
        return PHG_ERR_INVALID;
    }
    /* Parse first: to find the password to keep out of messages, and to
     * tell a malformed URL from an unreachable server. libpq's parse errors
     * may quote a URL component verbatim, so they are shown only for a URL
     * that holds no password. */
    info = PQconninfoParse(target, &parse_err);
    if (info == NULL) {
        if (parse_err != NULL && !has_password(target)) {
            snprintf(detail, sizeof detail, "%s", parse_err);
            copy_message(msg, sizeof msg, detail);
            if (err != NULL && err_len > 0)
                snprintf(err, err_len, "invalid PostgreSQL URL: %s", msg);
        } else {
            copy_message(err, err_len,
                         parse_err != NULL ? "invalid PostgreSQL URL"
                                           : "out of memory parsing the URL");
        }
        rc = parse_err != NULL ? PHG_ERR_INVALID : PHG_ERR_NOMEM;
        goto out;
    }
    for (o = info; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "password") == 0)
            password = o->val;
        else if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    snprintf(timeout, sizeof timeout, "%d", t);
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    c->pg = PQconnectdbParams(keywords, values, 1);
    if (c->pg == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    if (PQstatus(c->pg) != CONNECTION_OK) {
        copy_message(msg, sizeof msg, PQerrorMessage(c->pg));
        scrub(msg, sizeof msg, password);
        if (err != NULL && err_len > 0) {
            snprintf(err, err_len, "cannot connect to PostgreSQL at %s:%s: %s",
                     host != NULL && host[0] != '\0' ? host : "(default)",
                     port != NULL && port[0] != '\0' ? port : "5432", msg);
            scrub(err, err_len, password);
        }
        rc = PHG_ERR_UNAVAILABLE;
        goto out;
    }
    PQsetNoticeProcessor(c->pg, quiet_notices, NULL);
    rc = setup_session(c);
    if (rc != PHG_OK) {
        copy_message(msg, sizeof msg, c->last_error);
        scrub(msg, sizeof msg, password);
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "PostgreSQL session setup failed: %s", msg);
        goto out;
    }
    *out = c;
    c = NULL;
out:
    if (c != NULL) {
        PQfinish(c->pg);
        free(c);
    }
    PQconninfoFree(info); /* the password's copy goes with it */
    PQfreemem(parse_err);
    return rc;
}

static void pg_disconnect(void *conn)
{
    pg_conn *c = conn;
    if (c == NULL)
        return;
    PQfinish(c->pg);
    free(c);
}

/* ---- schema ------------------------------------------------------------------------ */

static phg_status do_schema_version(pg_conn *c, void *arg)
{
    phg_status rc;
    PGresult *res = NULL;
    int64_t v = 0;
    int *version = arg;

    TRY(run(c, ST_SCHEMA_EXISTS, NULL, &res));
    if (PQntuples(res) != 1 || PQgetlength(res, 0, 0) != 1) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    if (PQgetvalue(res, 0, 0)[0] == 0) {
        *version = 0;
        goto out;
    }
    PQclear(res);
    res = NULL;
    TRY(run(c, ST_SCHEMA_MAX, NULL, &res));
    if (PQntuples(res) != 1) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    TRY(get_int8(res, 0, 0, &v));
    if (v < 0 || v > INT_MAX) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    *version = (int)v;
out:
    PQclear(res);
    return rc;
}

static phg_status pg_schema_version(void *conn, int *version)
{
    assert(conn != NULL && version != NULL);
    return read_with_retry(conn, do_schema_version, version);
}

static void set_err_from(char *err, size_t err_len, const char *what, const char *detail)
{
    char msg[PHG_STORE_ERR_MAX];
    if (err == NULL || err_len == 0)
        return;
    copy_message(msg, sizeof msg, detail);
    snprintf(err, err_len, "%s: %s", what, msg);
}

static phg_status pg_apply_migration(void *conn, int version, const char *sql, int *applied,
                                     char *err, size_t err_len)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;
    ExecStatusType st;
    const char *what = "migration";

    int ran = 0;

    assert(c != NULL && sql != NULL && version > 0 && applied != NULL);
    *applied = 0;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    rc = ensure_connected(c);
    if (rc != PHG_OK) {
        set_err_from(err, err_len, "cannot reach the server", c->last_error);
        return rc;
    }
    what = "BEGIN";
    TRY(begin(c));
    /* A migration may build indexes on big tables: no 30 s limit here. */
    what = "SET LOCAL statement_timeout";
    TRY(exec_fixed(c, "SET LOCAL statement_timeout = 0"));
    /* Two processes migrating at once: the second waits here, then finds the
     * version recorded and does nothing. */
    what = "taking the migration lock";
    memset(&p, 0, sizeof p);
    p_int8(&p, MIGRATION_LOCK_KEY);
    res = PQexecParams(c->pg, "SELECT pg_advisory_xact_lock($1)", 1, (const Oid[]){OID_INT8},
                       p.values, p.lengths, p.formats, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = classify(c, res);
        goto out;
    }
    PQclear(res);
    what = "creating phigate_schema";
    TRY(exec_fixed(c, "CREATE TABLE IF NOT EXISTS phigate_schema (version INTEGER PRIMARY KEY, "
                      "applied_at BIGINT NOT NULL)"));
    what = "reading phigate_schema";
    memset(&p, 0, sizeof p);
    p_int8(&p, version);
    res = PQexecParams(c->pg, "SELECT 1 FROM phigate_schema WHERE version = $1", 1,
                       (const Oid[]){OID_INT8}, p.values, p.lengths, p.formats, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = classify(c, res);
        goto out;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        /* The embedded, trusted migration text: several statements, so the
         * simple protocol. */
        what = "running the migration";
        res = PQexec(c->pg, sql);
        st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            rc = classify(c, res);
            goto out;
        }
        PQclear(res);
        what = "recording the version";
        p_int8(&p, (int64_t)time(NULL));
        res =
            PQexecParams(c->pg, "INSERT INTO phigate_schema (version, applied_at) VALUES ($1, $2)",
                         2, (const Oid[]){OID_INT8, OID_INT8}, p.values, p.lengths, p.formats, 1);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            rc = classify(c, res);
            goto out;
        }
        ran = 1;
    }
    PQclear(res);
    res = NULL;
    what = "COMMIT";
    TRY(exec_fixed(c, "COMMIT"));
    *applied = ran;
    /* Tables changed under any plan cached before: forget them. */
    (void)exec_fixed(c, "DEALLOCATE ALL");
    c->prepared = 0;
out:
    PQclear(res);
    if (rc != PHG_OK) {
        set_err_from(err, err_len, what, c->last_error);
        rc = end_failed_write(c, rc);
        /* A failing step is a database error whatever its SQLSTATE. */
        if (rc == PHG_ERR_EXISTS || rc == PHG_ERR_SCHEMA)
            rc = PHG_ERR_IO;
    }
    return rc;
}

/* ---- keyring ------------------------------------------------------------------------ */

typedef struct keyring_get_args {
    char **json;
    size_t *len;
} keyring_get_args;

static phg_status do_keyring_get(pg_conn *c, void *arg)
{
    keyring_get_args *a = arg;
    phg_status rc;
    PGresult *res = NULL;
    char *copy;
    int len;

    TRY(run(c, ST_KEYRING_GET, NULL, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    len = PQgetlength(res, 0, 0);
    if (PQgetisnull(res, 0, 0) || len < 0) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    copy = malloc((size_t)len + 1);
    if (copy == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    memcpy(copy, PQgetvalue(res, 0, 0), (size_t)len);
    copy[len] = '\0';
    *a->json = copy;
    if (a->len != NULL)
        *a->len = (size_t)len;
out:
    PQclear(res);
    return rc;
}

static phg_status pg_keyring_get(void *conn, char **json, size_t *len)
{
    keyring_get_args a = {json, len};
    assert(conn != NULL && json != NULL);
    *json = NULL;
    if (len != NULL)
        *len = 0;
    return read_with_retry(conn, do_keyring_get, &a);
}

static phg_status pg_keyring_put(void *conn, const char *json, size_t len)
{
    pg_conn *c = conn;
    phg_status rc;
    params p;

    assert(c != NULL && json != NULL);
    /* TEXT cannot hold NUL bytes; the length must fit libpq's int. */
    if (memchr(json, '\0', len) != NULL)
        return PHG_ERR_INVALID;
    if (len > (size_t)INT_MAX)
        return PHG_ERR_TOO_LARGE;
    memset(&p, 0, sizeof p);
    p_bytes(&p, json, len);
    p_int8(&p, (int64_t)time(NULL));
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(run(c, ST_KEYRING_PUT, &p, NULL));
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* ---- api_keys: writes ------------------------------------------------------------- */

/* Inside a transaction: bump the change counter, give its new value. */
static phg_status bump(pg_conn *c, int64_t *counter)
{
    phg_status rc;
    PGresult *res = NULL;
    TRY(run(c, ST_BUMP, NULL, &res));
    if (PQntuples(res) != 1) {
        rc = PHG_ERR_SCHEMA; /* the phigate_changes row is missing */
        goto out;
    }
    TRY(get_int8(res, 0, 0, counter));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_key_insert(void *conn, const phg_apikey_record *rec)
{
    pg_conn *c = conn;
    phg_status rc;
    params p;
    int64_t counter = 0;

    assert(c != NULL && rec != NULL);
    TRY(record_params(rec, 0, &p)); /* validate before touching the server */
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(bump(c, &counter));
    TRY(record_params(rec, counter, &p));
    TRY(run(c, ST_KEY_INSERT, &p, NULL));
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* Inside a transaction: lock a key's row. NOT_FOUND if there is none. */
static phg_status lock_key(pg_conn *c, const char *id, int64_t *revoked_at, int *replaced)
{
    phg_status rc;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_text(&p, id);
    TRY(run(c, ST_KEY_LOCK, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(get_int8(res, 0, 0, revoked_at));
    if (PQgetisnull(res, 0, 1)) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    *replaced = PQgetlength(res, 0, 1) > 0;
out:
    PQclear(res);
    return rc;
}

static phg_status pg_key_revoke(void *conn, const char *id, int64_t at)
{
    pg_conn *c = conn;
    phg_status rc;
    params p;
    int64_t revoked_at = 0, counter = 0;
    int replaced = 0;

    assert(c != NULL && id != NULL && at > 0); /* 0 would read as "not revoked" */
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(lock_key(c, id, &revoked_at, &replaced));
    if (revoked_at != 0) {
        /* Revoked already: a success that changes nothing, no bump. */
        TRY(exec_fixed(c, "COMMIT"));
        goto out;
    }
    TRY(bump(c, &counter));
    memset(&p, 0, sizeof p);
    p_text(&p, id);
    p_int8(&p, at);
    p_int8(&p, counter);
    TRY(run(c, ST_KEY_REVOKE, &p, NULL));
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

static phg_status pg_key_rotate(void *conn, const char *old_id, int64_t grace_until,
                                const phg_apikey_record *fresh)
{
    pg_conn *c = conn;
    phg_status rc;
    params p, old;
    int64_t revoked_at = 0, counter = 0;
    int replaced = 0;

    assert(c != NULL && old_id != NULL && fresh != NULL);
    TRY(record_params(fresh, 0, &p));
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(lock_key(c, old_id, &revoked_at, &replaced));
    if (revoked_at != 0 || replaced) {
        rc = PHG_ERR_STATE;
        goto out;
    }
    TRY(bump(c, &counter));
    memset(&old, 0, sizeof old);
    p_text(&old, old_id);
    p_int8(&old, grace_until);
    p_text(&old, fresh->id);
    p_int8(&old, counter);
    TRY(run(c, ST_KEY_ROTATE_OLD, &old, NULL));
    TRY(record_params(fresh, counter, &p));
    TRY(run(c, ST_KEY_INSERT, &p, NULL));
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* A key's own rate limit. The row is locked before it is read, so the old
 * limit reported is the one this change replaced. */
static phg_status pg_key_set_limit(void *conn, const char *id, const char *rate_limit,
                                   char old_limit[PHG_APIKEY_LIMIT_MAX + 1], phg_apikey_record *rec)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    phg_apikey_record cur;
    params p;
    int64_t counter = 0;

    assert(c != NULL && id != NULL && rate_limit != NULL && old_limit != NULL && rec != NULL);
    if (!field_ok(rate_limit, PHG_APIKEY_LIMIT_MAX + 1))
        return PHG_ERR_INVALID;
    TRY(ensure_connected(c));
    TRY(begin(c));
    memset(&p, 0, sizeof p);
    p_text(&p, id);
    TRY(run(c, ST_KEY_LOCK_ROW, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(row_to_record(res, 0, &cur));
    if (cur.revoked_at != 0) {
        rc = PHG_ERR_STATE;
        goto out;
    }
    if (strcmp(cur.rate_limit, rate_limit) != 0) {
        TRY(bump(c, &counter));
        memset(&p, 0, sizeof p);
        p_text(&p, cur.id);
        p_text(&p, rate_limit);
        p_int8(&p, counter);
        TRY(run(c, ST_KEY_SET_LIMIT, &p, NULL));
    }
    TRY(exec_fixed(c, "COMMIT"));
    memcpy(old_limit, cur.rate_limit, sizeof cur.rate_limit);
    if (counter != 0) {
        snprintf(cur.rate_limit, sizeof cur.rate_limit, "%s", rate_limit);
        cur.version = counter;
    }
    *rec = cur;
out:
    PQclear(res);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

typedef struct touch_item {
    const char *id;
    int64_t ts;
} touch_item;

static int cmp_touch_item(const void *a, const void *b)
{
    return strcmp(((const touch_item *)a)->id, ((const touch_item *)b)->id);
}

static phg_status pg_key_touch(void *conn, const char *const *ids, const int64_t *ts, size_t n)
{
    pg_conn *c = conn;
    phg_status rc = PHG_OK;
    touch_item *items = NULL;
    params p;
    size_t i;

    assert(c != NULL && (n == 0 || (ids != NULL && ts != NULL)));
    if (n == 0)
        return PHG_OK;
    /* Rows are locked in id order, so that instances flushing overlapping
     * batches at once cannot deadlock. */
    items = malloc(n * sizeof *items);
    if (items == NULL)
        return PHG_ERR_NOMEM;
    for (i = 0; i < n; i++) {
        assert(ids[i] != NULL);
        items[i].id = ids[i];
        items[i].ts = ts[i];
    }
    qsort(items, n, sizeof *items, cmp_touch_item);
    TRY(ensure_connected(c));
    TRY(begin(c));
    for (i = 0; i < n; i++) {
        memset(&p, 0, sizeof p);
        p_int8(&p, items[i].ts);
        p_text(&p, items[i].id);
        TRY(run(c, ST_KEY_TOUCH, &p, NULL));
    }
    TRY(exec_fixed(c, "COMMIT"));
out:
    free(items);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* ---- api_keys: reads --------------------------------------------------------------- */

typedef struct key_get_args {
    const char *id;
    phg_apikey_record *rec;
} key_get_args;

static phg_status do_key_get(pg_conn *c, void *arg)
{
    key_get_args *a = arg;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_text(&p, a->id);
    TRY(run(c, ST_KEY_GET, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(row_to_record(res, 0, a->rec));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_key_get(void *conn, const char *id, phg_apikey_record *rec)
{
    key_get_args a = {id, rec};
    assert(conn != NULL && id != NULL && rec != NULL);
    return read_with_retry(conn, do_key_get, &a);
}

typedef struct key_many_args {
    int64_t index;
    const char *after;
    size_t limit;
    phg_apikey_record **out;
    size_t *n;
} key_many_args;

static phg_status do_key_by_index(pg_conn *c, void *arg)
{
    key_many_args *a = arg;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_int8(&p, a->index);
    TRY(run(c, ST_KEY_BY_INDEX, &p, &res));
    TRY(rows_to_records(res, a->out, a->n));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_key_by_index(void *conn, int64_t index, phg_apikey_record **out, size_t *n)
{
    key_many_args a = {index, NULL, 0, out, n};
    assert(conn != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    return read_with_retry(conn, do_key_by_index, &a);
}

static phg_status do_key_list(pg_conn *c, void *arg)
{
    key_many_args *a = arg;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_text(&p, a->after);
    p_int8(&p, a->limit > (size_t)INT64_MAX ? INT64_MAX : (int64_t)a->limit);
    TRY(run(c, ST_KEY_LIST, &p, &res));
    TRY(rows_to_records(res, a->out, a->n));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_key_list(void *conn, const char *after, size_t limit, phg_apikey_record **out,
                              size_t *n)
{
    key_many_args a = {0, after != NULL ? after : "", limit, out, n};
    assert(conn != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return PHG_OK;
    return read_with_retry(conn, do_key_list, &a);
}

static phg_status do_change_counter(pg_conn *c, void *arg)
{
    phg_status rc;
    PGresult *res = NULL;

    TRY(run(c, ST_COUNTER, NULL, &res));
    if (PQntuples(res) != 1) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    TRY(get_int8(res, 0, 0, arg));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_change_counter(void *conn, int64_t *counter)
{
    assert(conn != NULL && counter != NULL);
    return read_with_retry(conn, do_change_counter, counter);
}

typedef struct since_args {
    int64_t since;
    phg_key_cb cb;
    void *arg;
    size_t delivered; /* rows handed to cb: a walk that delivered any is not re-run */
} since_args;

/* Stop a running query whose rows are no longer wanted, rather than read
 * them all. PQcancel returns once the server has the request; the rest is
 * drained by the caller, so a late cancel cannot hit a later statement. */
static void cancel_query(pg_conn *c)
{
    char buf[256];
    PGcancel *cancel = PQgetCancel(c->pg);
    if (cancel == NULL)
        return;
    (void)PQcancel(cancel, buf, (int)sizeof buf);
    PQfreeCancel(cancel);
}

/* Rows one at a time (single-row mode): memory stays at one row whatever
 * the number of keys. */
static phg_status do_keys_since(pg_conn *c, void *arg)
{
    since_args *a = arg;
    phg_status rc = PHG_OK, cb_rc = PHG_OK;
    PGresult *res;
    params p;
    phg_apikey_record rec;
    int stopped = 0;

    if (a->delivered > 0)
        return PHG_ERR_UNAVAILABLE; /* a retry would repeat rows; the caller re-polls */
    rc = prepare(c, ST_KEYS_SINCE);
    if (rc != PHG_OK)
        return rc;
    memset(&p, 0, sizeof p);
    p_int8(&p, a->since);
    if (!PQsendQueryPrepared(c->pg, stmts[ST_KEYS_SINCE].name, p.n, p.values, p.lengths, p.formats,
                             1))
        return classify(c, NULL);
    if (!PQsetSingleRowMode(c->pg))
        rc = PHG_ERR_INTERNAL; /* cannot happen right after a send; drain anyway */
    while ((res = PQgetResult(c->pg)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_SINGLE_TUPLE) {
            if (rc == PHG_OK && !stopped) {
                rc = row_to_record(res, 0, &rec);
                if (rc == PHG_OK) {
                    a->delivered++;
                    cb_rc = a->cb(a->arg, &rec);
                    if (cb_rc != PHG_OK)
                        rc = cb_rc;
                }
                if (rc != PHG_OK) {
                    stopped = 1;
                    cancel_query(c);
                }
            }
        } else if (st != PGRES_TUPLES_OK && !stopped && rc == PHG_OK) {
            rc = classify(c, res);
        }
        PQclear(res);
    }
    if (rc == PHG_OK && lost(c))
        rc = PHG_ERR_UNAVAILABLE;
    return rc;
}

static phg_status pg_keys_since(void *conn, int64_t since, phg_key_cb cb, void *arg)
{
    since_args a = {since, cb, arg, 0};
    assert(conn != NULL && cb != NULL);
    return read_with_retry(conn, do_keys_since, &a);
}

/* ---- audit log: months ------------------------------------------------------------- */

_Static_assert(ST_COUNT <= 64, "the prepared-statement bitmask holds 64 statements");

#define US_PER_DAY INT64_C(86400000000)
#define AUDIT_QUERY_ROWS_MAX 1000 /* PHG_AUDIT_QUERY_MAX */
#define AUDIT_TEXT_FIELD_MAX 64   /* chain and hash: bytes */

/* Days from 1970-01-01 to y-m-d, proleptic Gregorian (H. Hinnant's
 * days_from_civil); exact for every year phigate accepts, unlike timegm's
 * dependence on time_t and the C library. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The inverse, for days >= 0. */
static void civil_from_days(int64_t z, int *year, int *month)
{
    int64_t era, doe, yoe, doy, mp;
    z += 719468;
    era = z / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = (int)(yoe + era * 400 + (*month <= 2));
}

static int month_valid(int year, int month)
{
    return year >= 1970 && year <= 9999 && month >= 1 && month <= 12;
}

/* [start, end) of a month in Unix microseconds. */
static void month_bounds_us(int year, int month, int64_t *start_us, int64_t *end_us)
{
    assert(month_valid(year, month));
    *start_us = days_from_civil(year, month, 1) * US_PER_DAY;
    *end_us =
        days_from_civil(month == 12 ? year + 1 : year, month == 12 ? 1 : month + 1, 1) * US_PER_DAY;
}

/* The month (UTC) of a record's ts; 0 if outside 1970..9999. */
static int month_of_us(int64_t ts_us, int *year, int *month)
{
    if (ts_us < 0)
        return 0;
    civil_from_days(ts_us / US_PER_DAY, year, month);
    return month_valid(*year, *month);
}

static int month_key(int year, int month)
{
    return year * 12 + month - 1;
}

/* "YYYY-MM", the key of audit_partitions, and "audit_log_YYYY_MM", the
 * partition's table: both from validated integers only. */
static void month_names(int year, int month, char text[8], char table[18])
{
    assert(month_valid(year, month));
    snprintf(text, 8, "%04u-%02u", (unsigned)year % 10000u, (unsigned)month % 100u);
    snprintf(table, 18, "audit_log_%04u_%02u", (unsigned)year % 10000u, (unsigned)month % 100u);
}

typedef enum partition_ddl {
    DDL_CREATE,
    DDL_DROP,
} partition_ddl;

/* The one place where SQL is formatted rather than bound (DDL takes no
 * parameters): the table name and the bounds come from the year and month
 * integers, checked here, never from text. */
static phg_status partition_sql(partition_ddl kind, int year, int month, char *sql, size_t cap)
{
    int64_t start_us, end_us;
    int len;

    if (!month_valid(year, month))
        return PHG_ERR_INVALID;
    month_bounds_us(year, month, &start_us, &end_us);
    if (kind == DDL_CREATE)
        len = snprintf(sql, cap,
                       "CREATE TABLE IF NOT EXISTS audit_log_%04d_%02d PARTITION OF audit_log "
                       "FOR VALUES FROM (%lld) TO (%lld)",
                       year, month, (long long)start_us, (long long)end_us);
    else
        len = snprintf(sql, cap, "DROP TABLE IF EXISTS audit_log_%04d_%02d", year, month);
    return len > 0 && (size_t)len < cap ? PHG_OK : PHG_ERR_INTERNAL;
}

/* The per-connection cache of months whose partition exists, so that
 * audit_append asks the server only for a month it has not seen. A month
 * dropped by another process while cached makes the INSERT fail (no
 * partition for the row); the cache is then cleared. */
static int month_known(const pg_conn *c, int key)
{
    size_t i;
    for (i = 0; i < AUDIT_MONTH_CACHE; i++)
        if (c->known_months[i] == key)
            return 1;
    return 0;
}

static void month_remember(pg_conn *c, int key)
{
    if (month_known(c, key))
        return;
    c->known_months[c->known_next % AUDIT_MONTH_CACHE] = key;
    c->known_next = (c->known_next + 1) % AUDIT_MONTH_CACHE;
}

static void months_forget(pg_conn *c)
{
    memset(c->known_months, 0, sizeof c->known_months);
    c->known_next = 0;
}

/* Undo an open transaction after a failed read, keeping the first error's
 * message. A lost connection is left for read_with_retry to reset. */
static void rollback_open(pg_conn *c)
{
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
        char saved[sizeof c->last_error];
        memcpy(saved, c->last_error, sizeof saved);
        (void)exec_fixed(c, "ROLLBACK");
        memcpy(c->last_error, saved, sizeof saved);
    }
}

/* ---- audit log: partitions ------------------------------------------------------- */

/* What the server knows of a month: registered (and dropped_at, archived_at)
 * in audit_partitions, and whether its table exists. */
typedef struct partition_state {
    int registered, table_exists;
    int64_t archived_at, dropped_at;
} partition_state;

static phg_status read_partition_state(pg_conn *c, stmt_id get, const char *month_text,
                                       const char *table, partition_state *ps)
{
    phg_status rc = PHG_OK;
    PGresult *res = NULL;
    params p;

    memset(ps, 0, sizeof *ps);
    memset(&p, 0, sizeof p);
    p_text(&p, month_text);
    TRY(run(c, get, &p, &res));
    if (PQntuples(res) > 0) {
        ps->registered = 1;
        TRY(get_int8(res, 0, 0, &ps->archived_at));
        TRY(get_int8(res, 0, 1, &ps->dropped_at));
    }
    PQclear(res);
    res = NULL;
    if (table == NULL)
        goto out;
    memset(&p, 0, sizeof p);
    p_text(&p, table);
    TRY(run(c, ST_AUDIT_TABLE_EXISTS, &p, &res));
    if (PQntuples(res) != 1 || PQgetlength(res, 0, 0) != 1) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    ps->table_exists = PQgetvalue(res, 0, 0)[0] != 0;
out:
    PQclear(res);
    return rc;
}

/* In an open transaction: take the lock that serializes the audit log's DDL
 * across every process, with a short lock timeout for what follows. */
static phg_status lock_audit_ddl(pg_conn *c)
{
    phg_status rc;
    params p;
    rc = exec_fixed(c, AUDIT_DDL_LOCK_TIMEOUT);
    if (rc != PHG_OK)
        return rc;
    memset(&p, 0, sizeof p);
    p_int8(&p, AUDIT_DDL_LOCK_KEY);
    return run(c, ST_AUDIT_LOCK, &p, NULL);
}

typedef struct state_args {
    const char *month_text, *table;
    partition_state *ps;
} state_args;

static phg_status do_read_partition_state(pg_conn *c, void *arg)
{
    state_args *a = arg;
    return read_partition_state(c, ST_AUDIT_PART_GET, a->month_text, a->table, a->ps);
}

static phg_status ensure_partition(pg_conn *c, int year, int month)
{
    phg_status rc = PHG_OK;
    partition_state ps;
    params p;
    char month_s[8], table[18], ddl[192];

    TRY(partition_sql(DDL_CREATE, year, month, ddl, sizeof ddl));
    month_names(year, month, month_s, table);
    /* The common case, a read without the DDL lock: there and registered
     * already (made ahead, maybe by another instance). */
    {
        state_args a = {month_s, table, &ps};
        TRY(read_with_retry(c, do_read_partition_state, &a));
    }
    if (ps.registered && ps.dropped_at != 0) {
        rc = PHG_ERR_STATE; /* dropped after its retention: never recreated */
        goto out;
    }
    if (!ps.registered || !ps.table_exists) {
        /* Under the lock, look again: another process may be half-way. */
        TRY(begin(c));
        TRY(lock_audit_ddl(c));
        TRY(read_partition_state(c, ST_AUDIT_PART_GET, month_s, table, &ps));
        if (ps.registered && ps.dropped_at != 0) {
            rc = PHG_ERR_STATE;
            goto out;
        }
        if (!ps.table_exists)
            TRY(exec_fixed(c, ddl));
        if (!ps.registered) {
            memset(&p, 0, sizeof p);
            p_text(&p, month_s);
            p_int8(&p, (int64_t)time(NULL));
            TRY(run(c, ST_AUDIT_PART_REGISTER, &p, NULL));
        }
        TRY(exec_fixed(c, "COMMIT"));
    }
    month_remember(c, month_key(year, month));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

static phg_status pg_audit_ensure_partition(void *conn, int year, int month)
{
    assert(conn != NULL);
    if (!month_valid(year, month))
        return PHG_ERR_INVALID;
    return ensure_partition(conn, year, month);
}

typedef struct partitions_args {
    phg_audit_partition **parts;
    size_t *n;
} partitions_args;

static phg_status do_audit_partitions(pg_conn *c, void *arg)
{
    partitions_args *a = arg;
    phg_status rc = PHG_OK;
    PGresult *res = NULL;
    phg_audit_partition *parts = NULL;
    int rows, i;

    TRY(run(c, ST_AUDIT_PARTS, NULL, &res));
    rows = PQntuples(res);
    if (rows > 0) {
        parts = calloc((size_t)rows, sizeof *parts);
        if (parts == NULL) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
    }
    for (i = 0; i < rows; i++) {
        TRY(get_text(res, i, 0, parts[i].month, sizeof parts[i].month));
        if (strlen(parts[i].month) != 7) {
            rc = PHG_ERR_SCHEMA;
            goto out;
        }
        TRY(get_int8(res, i, 1, &parts[i].created_at));
        TRY(get_int8(res, i, 2, &parts[i].archived_at));
        TRY(get_int8(res, i, 3, &parts[i].dropped_at));
        TRY(get_text(res, i, 4, parts[i].archive_sha256, sizeof parts[i].archive_sha256));
    }
    *a->parts = parts;
    *a->n = (size_t)(rows > 0 ? rows : 0);
    parts = NULL;
out:
    free(parts);
    PQclear(res);
    return rc;
}

static phg_status pg_audit_partitions(void *conn, phg_audit_partition **parts, size_t *n)
{
    partitions_args a = {parts, n};
    assert(conn != NULL && parts != NULL && n != NULL);
    *parts = NULL;
    *n = 0;
    return read_with_retry(conn, do_audit_partitions, &a);
}

static int is_sha256_hex(const char *s)
{
    size_t i;
    for (i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[64] == '\0';
}

static phg_status pg_audit_mark_archived(void *conn, int year, int month, const char *sha256_hex,
                                         int64_t at)
{
    pg_conn *c = conn;
    phg_status rc = PHG_OK;
    partition_state ps;
    params p;
    char month_s[8], table[18];

    assert(c != NULL && sha256_hex != NULL && at > 0); /* 0 would read as "not archived" */
    if (!month_valid(year, month) || !is_sha256_hex(sha256_hex))
        return PHG_ERR_INVALID;
    month_names(year, month, month_s, table);
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(read_partition_state(c, ST_AUDIT_PART_LOCK, month_s, NULL, &ps));
    if (!ps.registered) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    if (ps.dropped_at != 0) {
        rc = PHG_ERR_STATE; /* its rows are gone: nothing to vouch for */
        goto out;
    }
    memset(&p, 0, sizeof p);
    p_text(&p, month_s);
    p_int8(&p, at);
    p_text(&p, sha256_hex);
    TRY(run(c, ST_AUDIT_PART_ARCHIVE, &p, NULL));
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* Drop one month's table and mark it dropped, in one transaction under the
 * DDL lock. Dropped already: a success that changes nothing. */
static phg_status pg_audit_drop_partition(void *conn, int year, int month, int64_t at)
{
    pg_conn *c = conn;
    phg_status rc = PHG_OK;
    partition_state ps;
    params p;
    char month_s[8], table[18], ddl[192];

    assert(c != NULL && at > 0); /* 0 would read as "not dropped" */
    TRY(partition_sql(DDL_DROP, year, month, ddl, sizeof ddl));
    month_names(year, month, month_s, table);
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(lock_audit_ddl(c));
    TRY(read_partition_state(c, ST_AUDIT_PART_LOCK, month_s, NULL, &ps));
    if (!ps.registered) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    if (ps.dropped_at == 0) {
        if (ps.archived_at == 0) {
            rc = PHG_ERR_STATE; /* never dropped unarchived */
            goto out;
        }
        TRY(exec_fixed(c, ddl));
        memset(&p, 0, sizeof p);
        p_text(&p, month_s);
        p_int8(&p, at);
        TRY(run(c, ST_AUDIT_PART_DROPPED, &p, NULL));
    }
    TRY(exec_fixed(c, "COMMIT"));
    months_forget(c);
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* ---- audit log: append -------------------------------------------------------------- */

/* A row to write: every text NUL-terminated inside its array, a ts in a
 * month phigate can name, a record of bounded size. */
static phg_status check_audit_row(const phg_audit_store_row *r)
{
    int year, month;
    assert(r->json != NULL);
    if (!field_ok(r->id, sizeof r->id) || r->id[0] == '\0' ||
        !field_ok(r->chain, sizeof r->chain) || r->chain[0] == '\0' ||
        !field_ok(r->hash, sizeof r->hash) || !field_ok(r->request_id, sizeof r->request_id) ||
        !field_ok(r->key_id, sizeof r->key_id) || !field_ok(r->user_id, sizeof r->user_id) ||
        !field_ok(r->action, sizeof r->action) || !field_ok(r->outcome, sizeof r->outcome) ||
        !field_ok(r->subject, sizeof r->subject) || !month_of_us(r->ts_us, &year, &month))
        return PHG_ERR_INVALID;
    /* memchr stops at the first NUL (C11 7.24.5.1): never reads past it. */
    if (memchr(r->json, '\0', AUDIT_RECORD_MAX + 1) == NULL)
        return PHG_ERR_TOO_LARGE;
    return PHG_OK;
}

/* Column col of AUDIT_COLUMNS for a text column; NULL for the two int8 ones
 * (ts_us, seq). */
static const char *audit_text(const phg_audit_store_row *r, int col)
{
    switch (col) {
    case 0:
        return r->id;
    case 2:
        return r->chain;
    case 4:
        return r->hash;
    case 5:
        return r->request_id;
    case 6:
        return r->key_id;
    case 7:
        return r->user_id;
    case 8:
        return r->action;
    case 9:
        return r->outcome;
    case 10:
        return r->subject;
    case 11:
        return r->json;
    default:
        return NULL;
    }
}

static char *put_be32(char *b, uint32_t v)
{
    b[0] = (char)(unsigned char)(v >> 24);
    b[1] = (char)(unsigned char)(v >> 16);
    b[2] = (char)(unsigned char)(v >> 8);
    b[3] = (char)(unsigned char)v;
    return b + 4;
}

static char *put_be64(char *b, int64_t v)
{
    uint64_t u = (uint64_t)v;
    b = put_be32(b, (uint32_t)(u >> 32));
    return put_be32(b, (uint32_t)u);
}

/* The array header of the binary format (array_send): one dimension of
 * `count` elements from index 1, no NULLs. */
#define ARRAY_HEADER_LEN 20
static char *put_array_header(char *b, Oid elem, size_t count)
{
    b = put_be32(b, 1);
    b = put_be32(b, 0);
    b = put_be32(b, (uint32_t)elem);
    b = put_be32(b, (uint32_t)count);
    return put_be32(b, 1);
}

/* Insert rows[from..) in one statement, as many as fit the chunk limits
 * (at least one); *next is where the next chunk starts. Each column is a
 * binary array parameter, all in one buffer sized exactly beforehand. */
static phg_status insert_chunk(pg_conn *c, const phg_audit_store_row *rows, size_t from, size_t n,
                               size_t *next)
{
    phg_status rc = PHG_OK;
    size_t to, col, i, json_bytes = 0, total = 0, col_len[AUDIT_NCOLUMNS];
    char *buf = NULL, *w;
    params p;

    for (to = from; to < n && to - from < AUDIT_INSERT_ROWS_MAX; to++) {
        size_t len = strlen(rows[to].json);
        if (to > from && json_bytes + len > AUDIT_INSERT_BYTES_MAX)
            break;
        json_bytes += len;
    }
    for (col = 0; col < AUDIT_NCOLUMNS; col++) {
        col_len[col] = ARRAY_HEADER_LEN;
        for (i = from; i < to; i++) {
            const char *t = audit_text(&rows[i], (int)col);
            col_len[col] += 4 + (t != NULL ? strlen(t) : 8);
        }
        if (col_len[col] > INT_MAX)
            return PHG_ERR_TOO_LARGE; /* cannot happen with the limits above */
        total += col_len[col];
    }
    buf = malloc(total);
    if (buf == NULL)
        return PHG_ERR_NOMEM;
    memset(&p, 0, sizeof p);
    w = buf;
    for (col = 0; col < AUDIT_NCOLUMNS; col++) {
        char *start = w;
        int is_text = audit_text(&rows[from], (int)col) != NULL;
        w = put_array_header(w, is_text ? OID_TEXT : OID_INT8, to - from);
        for (i = from; i < to; i++) {
            if (is_text) {
                const char *t = audit_text(&rows[i], (int)col);
                size_t len = strlen(t);
                w = put_be32(w, (uint32_t)len);
                memcpy(w, t, len);
                w += len;
            } else {
                w = put_be32(w, 8);
                w = put_be64(w, col == 1 ? rows[i].ts_us : rows[i].seq);
            }
        }
        assert((size_t)(w - start) == col_len[col]);
        p_bytes(&p, start, col_len[col]);
    }
    TRY(run(c, ST_AUDIT_INSERT, &p, NULL));
    *next = to;
out:
    free(buf);
    return rc;
}

static phg_status pg_audit_append(void *conn, const phg_audit_store_row *rows, size_t n,
                                  const char *chain, int64_t head_seq, const char *head_hash)
{
    pg_conn *c = conn;
    phg_status rc = PHG_OK;
    params p;
    size_t i, next;
    int year, month, last_key = 0, inserting = 0;

    assert(c != NULL && (n == 0 || rows != NULL) && chain != NULL && head_hash != NULL);
    if (chain[0] == '\0' || memchr(chain, '\0', AUDIT_TEXT_FIELD_MAX + 1) == NULL ||
        memchr(head_hash, '\0', AUDIT_TEXT_FIELD_MAX + 1) == NULL)
        return PHG_ERR_INVALID;
    for (i = 0; i < n; i++) {
        rc = check_audit_row(&rows[i]);
        if (rc != PHG_OK)
            return rc;
    }
    /* Every month of the batch must have its partition before the INSERT,
     * which cannot create one; each in a short transaction of its own, so
     * that the exclusive lock the DDL takes is not held through the batch.
     * A batch spans one month, two at a month's turn. */
    for (i = 0; i < n; i++) {
        int key;
        (void)month_of_us(rows[i].ts_us, &year, &month);
        key = month_key(year, month);
        if (key == last_key || month_known(c, key))
            continue;
        rc = ensure_partition(c, year, month);
        if (rc != PHG_OK)
            return rc; /* ensure_partition has cleaned up */
        last_key = key;
    }
    c->last_state[0] = '\0';
    TRY(ensure_connected(c));
    TRY(begin(c));
    inserting = 1;
    for (i = 0; i < n; i = next)
        TRY(insert_chunk(c, rows, i, n, &next));
    inserting = 0;
    memset(&p, 0, sizeof p);
    p_text(&p, chain);
    p_int8(&p, head_seq);
    p_text(&p, head_hash);
    TRY(run(c, ST_AUDIT_HEAD_PUT, &p, NULL));
    /* synchronous_commit is on for the session: durable when COMMIT returns. */
    TRY(exec_fixed(c, "COMMIT"));
out:
    if (rc != PHG_OK && inserting && strcmp(c->last_state, "23514") == 0) {
        /* "no partition of relation audit_log found for row": a month this
         * connection had seen was dropped since. */
        months_forget(c);
        rc = PHG_ERR_STATE;
    }
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* ---- audit log: heads and checkpoints ------------------------------------------------ */

static phg_status pg_audit_checkpoint_insert(void *conn, const phg_audit_checkpoint *cp)
{
    pg_conn *c = conn;
    phg_status rc = PHG_OK;
    params p;

    assert(c != NULL && cp != NULL);
    if (!field_ok(cp->chain, sizeof cp->chain) || cp->chain[0] == '\0' ||
        !field_ok(cp->hash, sizeof cp->hash) || !field_ok(cp->mac, sizeof cp->mac))
        return PHG_ERR_INVALID;
    memset(&p, 0, sizeof p);
    p_text(&p, cp->chain);
    p_int8(&p, cp->seq);
    p_text(&p, cp->hash);
    p_int8(&p, cp->ts_us);
    p_text(&p, cp->mac);
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(run(c, ST_AUDIT_CP_INSERT, &p, NULL));
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

typedef struct head_args {
    const char *chain;
    int64_t *seq;
    char *hash;
} head_args;

static phg_status do_audit_chain_head(pg_conn *c, void *arg)
{
    head_args *a = arg;
    phg_status rc = PHG_OK;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_text(&p, a->chain);
    TRY(run(c, ST_AUDIT_HEAD_GET, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(get_int8(res, 0, 0, a->seq));
    TRY(get_text(res, 0, 1, a->hash, 65));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_audit_chain_head(void *conn, const char *chain, int64_t *seq, char hash[65])
{
    head_args a = {chain, seq, hash};
    assert(conn != NULL && chain != NULL && seq != NULL && hash != NULL);
    *seq = 0;
    hash[0] = '\0';
    return read_with_retry(conn, do_audit_chain_head, &a);
}

/* ---- audit log: streamed reads ------------------------------------------------------ */

/* A read that may return more rows than memory should hold (a chain, a
 * month, every checkpoint) goes through a cursor in a read-only
 * transaction, FETCH by FETCH: memory stays at one FETCH, and each FETCH is
 * a statement of its own under statement_timeout, however long the callbacks
 * take over the whole walk. The callback runs between FETCHes, while the
 * transaction is open: it must not use this connection (or the store). */
#define DECLARE_STREAM "DECLARE phg_stream NO SCROLL CURSOR FOR "
#define STREAM_FETCH_ROWS 64
#define STREAM_FETCH_SQL_(n) "FETCH FORWARD " #n " FROM phg_stream"
#define STREAM_FETCH_SQL(n) STREAM_FETCH_SQL_(n)

typedef phg_status (*stream_row_fn)(void *arg, const PGresult *res, int row);

typedef struct stream_args {
    const char *declare_sql; /* DECLARE_STREAM "SELECT ..." */
    params p;
    Oid types[MAX_PARAMS];
    stream_row_fn fn;
    void *arg;
    size_t delivered; /* rows handed on: a stream that delivered any is not re-run */
    /* For audit_partition_rows: the month must be registered and not
     * dropped (NULL: no check). */
    const char *month_text;
} stream_args;

static phg_status do_stream(pg_conn *c, void *arg)
{
    stream_args *s = arg;
    phg_status rc = PHG_OK;
    PGresult *res = NULL;
    int rows, i;

    if (s->delivered > 0)
        return PHG_ERR_UNAVAILABLE; /* a retry would repeat rows; the caller decides */
    if (s->month_text != NULL) {
        partition_state ps;
        TRY(read_partition_state(c, ST_AUDIT_PART_GET, s->month_text, NULL, &ps));
        if (!ps.registered) {
            rc = PHG_ERR_NOT_FOUND;
            goto out;
        }
        if (ps.dropped_at != 0) {
            rc = PHG_ERR_STATE;
            goto out;
        }
    }
    TRY(exec_fixed(c, "BEGIN READ ONLY"));
    res = PQexecParams(c->pg, s->declare_sql, s->p.n, s->types, s->p.values, s->p.lengths,
                       s->p.formats, 1);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = classify(c, res);
        goto out;
    }
    do {
        PQclear(res);
        res =
            PQexecParams(c->pg, STREAM_FETCH_SQL(STREAM_FETCH_ROWS), 0, NULL, NULL, NULL, NULL, 1);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            rc = classify(c, res);
            goto out;
        }
        rows = PQntuples(res);
        for (i = 0; i < rows; i++) {
            s->delivered++;
            TRY(s->fn(s->arg, res, i));
        }
    } while (rows == STREAM_FETCH_ROWS);
    PQclear(res);
    res = NULL;
    TRY(exec_fixed(c, "COMMIT"));
out:
    PQclear(res);
    if (rc != PHG_OK)
        rollback_open(c);
    return rc;
}

/* A row of AUDIT_COLUMNS into *row. The record text is borrowed from res:
 * valid while res is. Every text checked against its field's size. */
static phg_status row_to_audit(const PGresult *res, int i, phg_audit_store_row *row)
{
    phg_status rc = PHG_OK;
    int len;

    memset(row, 0, sizeof *row);
    if (PQnfields(res) != AUDIT_NCOLUMNS)
        return PHG_ERR_SCHEMA;
    TRY(get_text(res, i, 0, row->id, sizeof row->id));
    TRY(get_int8(res, i, 1, &row->ts_us));
    TRY(get_text(res, i, 2, row->chain, sizeof row->chain));
    TRY(get_int8(res, i, 3, &row->seq));
    TRY(get_text(res, i, 4, row->hash, sizeof row->hash));
    TRY(get_text(res, i, 5, row->request_id, sizeof row->request_id));
    TRY(get_text(res, i, 6, row->key_id, sizeof row->key_id));
    TRY(get_text(res, i, 7, row->user_id, sizeof row->user_id));
    TRY(get_text(res, i, 8, row->action, sizeof row->action));
    TRY(get_text(res, i, 9, row->outcome, sizeof row->outcome));
    TRY(get_text(res, i, 10, row->subject, sizeof row->subject));
    len = PQgetlength(res, i, 11);
    if (PQgetisnull(res, i, 11) || len < 0 || (size_t)len > AUDIT_RECORD_MAX) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    /* libpq ends every value with a NUL, binary ones included; TEXT holds
     * none inside. */
    row->json = PQgetvalue(res, i, 11);
out:
    return rc;
}

typedef struct audit_rows_args {
    phg_audit_row_cb cb;
    void *arg;
} audit_rows_args;

static phg_status stream_audit_row(void *arg, const PGresult *res, int i)
{
    audit_rows_args *a = arg;
    phg_audit_store_row row;
    phg_status rc = row_to_audit(res, i, &row);
    if (rc != PHG_OK)
        return rc;
    return a->cb(a->arg, &row);
}

static phg_status pg_audit_walk(void *conn, const char *chain, int64_t from_us, int64_t to_us,
                                phg_audit_row_cb cb, void *arg)
{
    audit_rows_args rows = {cb, arg};
    stream_args s;

    assert(conn != NULL && chain != NULL && cb != NULL);
    memset(&s, 0, sizeof s);
    /* Across every partition: a merge of each one's (chain, seq) index. */
    s.declare_sql = DECLARE_STREAM "SELECT " AUDIT_COLUMNS " FROM audit_log WHERE chain = $1 AND "
                                   "ts_us >= $2 AND ts_us < $3 ORDER BY seq, id";
    p_text(&s.p, chain);
    p_int8(&s.p, from_us != 0 ? from_us : INT64_MIN);
    p_int8(&s.p, to_us != 0 ? to_us : INT64_MAX);
    s.types[0] = OID_TEXT;
    s.types[1] = OID_INT8;
    s.types[2] = OID_INT8;
    s.fn = stream_audit_row;
    s.arg = &rows;
    return read_with_retry(conn, do_stream, &s);
}

static phg_status pg_audit_partition_rows(void *conn, int year, int month, phg_audit_row_cb cb,
                                          void *arg)
{
    audit_rows_args rows = {cb, arg};
    stream_args s;
    int64_t start_us, end_us;
    char month_s[8], table[18];

    assert(conn != NULL && cb != NULL);
    if (!month_valid(year, month))
        return PHG_ERR_INVALID;
    month_bounds_us(year, month, &start_us, &end_us);
    month_names(year, month, month_s, table);
    memset(&s, 0, sizeof s);
    /* Through the parent with the month's bounds: the planner prunes to the
     * one partition, and no SQL is formatted for a read. */
    s.declare_sql = DECLARE_STREAM "SELECT " AUDIT_COLUMNS " FROM audit_log WHERE ts_us >= $1 "
                                   "AND ts_us < $2 ORDER BY ts_us, id";
    p_int8(&s.p, start_us);
    p_int8(&s.p, end_us);
    s.types[0] = OID_INT8;
    s.types[1] = OID_INT8;
    s.fn = stream_audit_row;
    s.arg = &rows;
    s.month_text = month_s;
    return read_with_retry(conn, do_stream, &s);
}

typedef struct checkpoint_rows_args {
    phg_audit_checkpoint_cb cb;
    void *arg;
    int with_mac; /* audit_checkpoints: 5 columns; audit_chains: 3 */
} checkpoint_rows_args;

static phg_status stream_checkpoint_row(void *arg, const PGresult *res, int i)
{
    checkpoint_rows_args *a = arg;
    phg_audit_checkpoint cp;
    phg_status rc = PHG_OK;

    memset(&cp, 0, sizeof cp);
    if (PQnfields(res) != (a->with_mac ? 5 : 3))
        return PHG_ERR_SCHEMA;
    TRY(get_text(res, i, 0, cp.chain, sizeof cp.chain));
    TRY(get_int8(res, i, 1, &cp.seq));
    TRY(get_text(res, i, 2, cp.hash, sizeof cp.hash));
    if (a->with_mac) {
        TRY(get_int8(res, i, 3, &cp.ts_us));
        TRY(get_text(res, i, 4, cp.mac, sizeof cp.mac));
    }
    rc = a->cb(a->arg, &cp);
out:
    return rc;
}

static phg_status pg_audit_chains(void *conn, phg_audit_checkpoint_cb cb, void *arg)
{
    checkpoint_rows_args rows = {cb, arg, 0};
    stream_args s;

    assert(conn != NULL && cb != NULL);
    memset(&s, 0, sizeof s);
    s.declare_sql = DECLARE_STREAM "SELECT chain, seq, hash FROM audit_chains ORDER BY chain";
    s.fn = stream_checkpoint_row;
    s.arg = &rows;
    return read_with_retry(conn, do_stream, &s);
}

static phg_status pg_audit_checkpoints(void *conn, const char *chain, phg_audit_checkpoint_cb cb,
                                       void *arg)
{
    checkpoint_rows_args rows = {cb, arg, 1};
    stream_args s;

    assert(conn != NULL && chain != NULL && cb != NULL);
    memset(&s, 0, sizeof s);
    s.declare_sql = DECLARE_STREAM "SELECT chain, seq, hash, ts_us, mac FROM audit_checkpoints "
                                   "WHERE chain = $1 ORDER BY seq";
    p_text(&s.p, chain);
    s.types[0] = OID_TEXT;
    s.fn = stream_checkpoint_row;
    s.arg = &rows;
    return read_with_retry(conn, do_stream, &s);
}

/* ---- audit log: query --------------------------------------------------------------- */

/* One fixed text for every combination of filters: an absent filter is a
 * NULL parameter and its test folds to true. Run unnamed (PQexecParams), it
 * is planned for the values at hand each time, so the folded query uses the
 * index that fits and prunes partitions outside [from, to). */
#define AUDIT_QUERY_SQL                                                                            \
    "SELECT " AUDIT_COLUMNS " FROM audit_log WHERE ts_us >= $1 AND ts_us < $2 "                    \
    "AND ($3::text IS NULL OR user_id = $3) AND ($4::text IS NULL OR key_id = $4) "                \
    "AND ($5::text IS NULL OR action = $5) AND ($6::text IS NULL OR outcome = $6) "                \
    "AND ($7::text IS NULL OR request_id = $7) AND ($8::text IS NULL OR subject = $8) "            \
    "AND ($9::text IS NULL OR id < $9) "                                                           \
    "ORDER BY id DESC LIMIT $10"

typedef struct query_args {
    const phg_audit_store_filter *f;
    phg_audit_store_row **rows;
    size_t *n;
} query_args;

static void free_audit_rows(phg_audit_store_row *rows, size_t n)
{
    size_t i;
    if (rows == NULL)
        return;
    for (i = 0; i < n; i++)
        free(rows[i].json);
    free(rows);
}

static void p_text_or_null(params *p, const char *s)
{
    if (s != NULL)
        p_text(p, s);
    else
        p_null(p);
}

static phg_status do_audit_query(pg_conn *c, void *arg)
{
    static const Oid types[10] = {OID_INT8, OID_INT8, OID_TEXT, OID_TEXT, OID_TEXT,
                                  OID_TEXT, OID_TEXT, OID_TEXT, OID_TEXT, OID_INT8};
    query_args *a = arg;
    const phg_audit_store_filter *f = a->f;
    phg_status rc = PHG_OK;
    PGresult *res = NULL;
    phg_audit_store_row *rows = NULL;
    size_t done = 0;
    char *copy;
    params p;
    int count, i;

    memset(&p, 0, sizeof p);
    p_int8(&p, f->from_us != 0 ? f->from_us : INT64_MIN);
    p_int8(&p, f->to_us != 0 ? f->to_us : INT64_MAX);
    p_text_or_null(&p, f->user_id);
    p_text_or_null(&p, f->key_id);
    p_text_or_null(&p, f->action);
    p_text_or_null(&p, f->outcome);
    p_text_or_null(&p, f->request_id);
    p_text_or_null(&p, f->subject);
    p_text_or_null(&p, f->before_id);
    p_int8(&p, (int64_t)f->limit);
    res = PQexecParams(c->pg, AUDIT_QUERY_SQL, p.n, types, p.values, p.lengths, p.formats, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = classify(c, res);
        goto out;
    }
    count = PQntuples(res);
    if (count <= 0)
        goto out;
    if ((size_t)count > f->limit) {
        rc = PHG_ERR_INTERNAL;
        goto out;
    }
    rows = calloc((size_t)count, sizeof *rows);
    if (rows == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    for (i = 0; i < count; i++) {
        phg_audit_store_row *r = &rows[done];
        size_t len;
        TRY(row_to_audit(res, i, r));
        len = (size_t)PQgetlength(res, i, 11);
        copy = malloc(len + 1);
        if (copy == NULL) {
            r->json = NULL; /* it pointed into res */
            rc = PHG_ERR_NOMEM;
            goto out;
        }
        memcpy(copy, r->json, len + 1);
        r->json = copy;
        done++;
    }
    *a->rows = rows;
    *a->n = done;
    rows = NULL;
out:
    free_audit_rows(rows, done); /* a failed row (rows[done]) holds no copy */
    PQclear(res);
    return rc;
}

static phg_status pg_audit_query(void *conn, const phg_audit_store_filter *f,
                                 phg_audit_store_row **rows, size_t *n)
{
    query_args a = {f, rows, n};
    assert(conn != NULL && f != NULL && rows != NULL && n != NULL);
    *rows = NULL;
    *n = 0;
    if (f->limit == 0 || f->limit > AUDIT_QUERY_ROWS_MAX)
        return PHG_ERR_INVALID;
    return read_with_retry(conn, do_audit_query, &a);
}

/* ---- webhook sources ------------------------------------------------------------- */

static int wh_text_ok(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static phg_status wh_secret_params(const char *name, const phg_wh_secret_row *s, int64_t idx,
                                   params *p)
{
    if (!wh_text_ok(s->secret_enc, sizeof s->secret_enc) ||
        !wh_text_ok(s->fingerprint, sizeof s->fingerprint))
        return PHG_ERR_INVALID;
    memset(p, 0, sizeof *p);
    p_text(p, name);
    p_int8(p, idx);
    p_text(p, s->secret_enc);
    p_text(p, s->fingerprint);
    p_int8(p, s->not_after);
    p_int8(p, s->retired_at);
    p_int8(p, s->created_at);
    return PHG_OK;
}

static phg_status pg_wh_source_insert(void *conn, const phg_wh_source_row *src,
                                      const phg_wh_secret_row *secrets, size_t n)
{
    pg_conn *c = conn;
    phg_status rc;
    params p;
    int64_t counter = 0;
    size_t i;

    assert(c != NULL && src != NULL);
    if (!wh_text_ok(src->name, sizeof src->name) || !wh_text_ok(src->scheme, sizeof src->scheme) ||
        !wh_text_ok(src->deliver_to, sizeof src->deliver_to) ||
        !wh_text_ok(src->verify_token_enc, sizeof src->verify_token_enc))
        return PHG_ERR_INVALID;
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(bump(c, &counter));
    memset(&p, 0, sizeof p);
    p_text(&p, src->name);
    p_text(&p, src->scheme);
    p_int8(&p, src->tolerance_s);
    p_text(&p, src->deliver_to);
    p_int8(&p, src->created_at);
    p_int8(&p, src->updated_at);
    p_int8(&p, counter);
    p_text(&p, src->verify_token_enc);
    TRY(run(c, ST_WH_SOURCE_INSERT, &p, NULL));
    for (i = 0; i < n; i++) {
        TRY(wh_secret_params(src->name, &secrets[i], secrets[i].idx, &p));
        TRY(run(c, ST_WH_SECRET_INSERT, &p, NULL));
    }
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

static phg_status wh_row_read(const PGresult *res, int row, phg_wh_source_row *r)
{
    phg_status rc;
    TRY(get_text(res, row, 0, r->name, sizeof r->name));
    TRY(get_text(res, row, 1, r->scheme, sizeof r->scheme));
    TRY(get_int8(res, row, 2, &r->tolerance_s));
    TRY(get_text(res, row, 3, r->deliver_to, sizeof r->deliver_to));
    TRY(get_int8(res, row, 4, &r->created_at));
    TRY(get_int8(res, row, 5, &r->updated_at));
    TRY(get_int8(res, row, 6, &r->version));
    TRY(get_text(res, row, 7, r->verify_token_enc, sizeof r->verify_token_enc));
out:
    return rc;
}

typedef struct wh_get_args {
    const char *name;
    phg_wh_source_row *src;
    phg_wh_secret_row **secrets;
    size_t *n;
} wh_get_args;

static phg_status do_wh_source_get(pg_conn *c, void *arg)
{
    wh_get_args *a = arg;
    phg_status rc;
    PGresult *res = NULL, *res2 = NULL;
    phg_wh_secret_row *rows = NULL, *r;
    params p;
    int i, nt = 0;

    memset(&p, 0, sizeof p);
    p_text(&p, a->name);
    TRY(begin(c));
    TRY(run(c, ST_WH_SOURCE_GET, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(wh_row_read(res, 0, a->src));
    if (a->secrets != NULL) {
        TRY(run(c, ST_WH_SECRETS_GET, &p, &res2));
        nt = PQntuples(res2);
        if (nt > PHG_WH_ROWS_MAX) {
            rc = PHG_ERR_SCHEMA;
            goto out;
        }
        if (nt > 0) {
            rows = calloc((size_t)nt, sizeof *rows);
            if (rows == NULL) {
                rc = PHG_ERR_NOMEM;
                goto out;
            }
        }
        for (i = 0; i < nt; i++) {
            r = &rows[i];
            TRY(get_int8(res2, i, 0, &r->idx));
            TRY(get_text(res2, i, 1, r->secret_enc, sizeof r->secret_enc));
            TRY(get_text(res2, i, 2, r->fingerprint, sizeof r->fingerprint));
            TRY(get_int8(res2, i, 3, &r->not_after));
            TRY(get_int8(res2, i, 4, &r->retired_at));
            TRY(get_int8(res2, i, 5, &r->created_at));
        }
        *a->secrets = rows;
        *a->n = (size_t)nt;
        rows = NULL;
    }
    TRY(exec_fixed(c, "COMMIT"));
out:
    PQclear(res);
    PQclear(res2);
    if (rows != NULL) {
        memset(rows, 0, (size_t)nt * sizeof *rows);
        free(rows);
    }
    if (rc != PHG_OK) {
        if (a->secrets != NULL && *a->secrets != NULL) {
            free(*a->secrets);
            *a->secrets = NULL;
            *a->n = 0;
        }
        rc = end_failed_write(c, rc);
    }
    return rc;
}

static phg_status pg_wh_source_get(void *conn, const char *name, phg_wh_source_row *src,
                                   phg_wh_secret_row **secrets, size_t *n)
{
    wh_get_args a = {name, src, secrets, n};
    assert(conn != NULL && name != NULL && src != NULL && n != NULL);
    *n = 0;
    if (secrets != NULL)
        *secrets = NULL;
    return read_with_retry(conn, do_wh_source_get, &a);
}

typedef struct wh_list_args {
    phg_wh_source_row **out;
    size_t *n;
} wh_list_args;

static phg_status do_wh_source_list(pg_conn *c, void *arg)
{
    wh_list_args *a = arg;
    phg_status rc;
    PGresult *res = NULL;
    phg_wh_source_row *rows = NULL;
    int i, nt;

    TRY(run(c, ST_WH_SOURCE_LIST, NULL, &res));
    nt = PQntuples(res);
    if (nt > 0) {
        rows = calloc((size_t)nt, sizeof *rows);
        if (rows == NULL) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
    }
    for (i = 0; i < nt; i++)
        TRY(wh_row_read(res, i, &rows[i]));
    *a->out = rows;
    *a->n = (size_t)nt;
    rows = NULL;
out:
    PQclear(res);
    free(rows);
    return rc;
}

static phg_status pg_wh_source_list(void *conn, phg_wh_source_row **out, size_t *n)
{
    wh_list_args a = {out, n};
    assert(conn != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    return read_with_retry(conn, do_wh_source_list, &a);
}

static phg_status pg_wh_source_delete(void *conn, const char *name)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    assert(c != NULL && name != NULL);
    memset(&p, 0, sizeof p);
    p_text(&p, name);
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(run(c, ST_WH_SECRETS_DELETE, &p, NULL));
    TRY(run(c, ST_WH_SOURCE_DELETE, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(exec_fixed(c, "COMMIT"));
out:
    PQclear(res);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* Inside a transaction: one int8 of a one-row query. */
static phg_status wh_int(pg_conn *c, stmt_id id, const params *p, int64_t *v)
{
    phg_status rc;
    PGresult *res = NULL;
    TRY(run(c, id, p, &res));
    if (PQntuples(res) != 1) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(get_int8(res, 0, 0, v));
out:
    PQclear(res);
    return rc;
}

/* Inside a transaction: lock the source row; NOT_FOUND if there is none. */
static phg_status wh_lock_source(pg_conn *c, const params *p)
{
    phg_status rc;
    PGresult *res = NULL;
    TRY(run(c, ST_WH_SOURCE_LOCK, p, &res));
    if (PQntuples(res) == 0)
        rc = PHG_ERR_NOT_FOUND;
out:
    PQclear(res);
    return rc;
}

static phg_status wh_touch(pg_conn *c, const char *name, int64_t at)
{
    phg_status rc;
    params p;
    int64_t counter = 0;
    TRY(bump(c, &counter));
    memset(&p, 0, sizeof p);
    p_text(&p, name);
    p_int8(&p, at);
    p_int8(&p, counter);
    TRY(run(c, ST_WH_SOURCE_TOUCH, &p, NULL));
out:
    return rc;
}

static phg_status pg_wh_secret_add(void *conn, const char *name, const phg_wh_secret_row *sec,
                                   size_t max_active, int64_t *idx)
{
    pg_conn *c = conn;
    phg_status rc;
    params p, q;
    int64_t active = 0, next = 0;

    assert(c != NULL && name != NULL && sec != NULL && idx != NULL);
    memset(&p, 0, sizeof p);
    p_text(&p, name);
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(wh_lock_source(c, &p));
    TRY(wh_int(c, ST_WH_SECRETS_ACTIVE, &p, &active));
    if ((size_t)active >= max_active) {
        rc = PHG_ERR_STATE;
        goto out;
    }
    TRY(wh_int(c, ST_WH_SECRET_NEXT, &p, &next));
    TRY(wh_secret_params(name, sec, next, &q));
    TRY(run(c, ST_WH_SECRET_INSERT, &q, NULL));
    TRY(wh_touch(c, name, sec->created_at));
    TRY(exec_fixed(c, "COMMIT"));
    *idx = next;
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

static phg_status pg_wh_source_set_verify_token(void *conn, const char *name, const char *enc,
                                                int64_t at)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;
    int64_t counter = 0;

    assert(c != NULL && name != NULL && enc != NULL && at > 0);
    if (strnlen(enc, PHG_WH_SECRET_ENC_MAX + 1) > PHG_WH_SECRET_ENC_MAX)
        return PHG_ERR_INVALID;
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(bump(c, &counter));
    memset(&p, 0, sizeof p);
    p_text(&p, name);
    p_text(&p, enc);
    p_int8(&p, at);
    p_int8(&p, counter);
    TRY(run(c, ST_WH_SOURCE_SET_VT, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND; /* the counter's bump goes with the rollback */
        goto out;
    }
    TRY(exec_fixed(c, "COMMIT"));
out:
    PQclear(res);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

static phg_status pg_wh_secret_retire(void *conn, const char *name, int64_t idx, int64_t at)
{
    pg_conn *c = conn;
    phg_status rc;
    params p, q;
    int64_t retired = 0, active = 0;

    assert(c != NULL && name != NULL && at > 0);
    memset(&p, 0, sizeof p);
    p_text(&p, name);
    memset(&q, 0, sizeof q);
    p_text(&q, name);
    p_int8(&q, idx);
    TRY(ensure_connected(c));
    TRY(begin(c));
    TRY(wh_lock_source(c, &p));
    TRY(wh_int(c, ST_WH_SECRET_LOCK, &q, &retired));
    if (retired == 0) {
        TRY(wh_int(c, ST_WH_SECRETS_ACTIVE, &p, &active));
        if (active <= 1) {
            rc = PHG_ERR_STATE;
            goto out;
        }
        p_int8(&q, at);
        TRY(run(c, ST_WH_SECRET_RETIRE, &q, NULL));
        TRY(wh_touch(c, name, at));
    }
    TRY(exec_fixed(c, "COMMIT"));
out:
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

/* ---- webhook inbox ------------------------------------------------------------------ */

/* An int8 column that must lie in [lo, hi]. */
static phg_status get_int8_in(const PGresult *res, int row, int col, int64_t lo, int64_t hi,
                              int64_t *v)
{
    phg_status rc = get_int8(res, row, col, v);
    if (rc == PHG_OK && (*v < lo || *v > hi))
        rc = PHG_ERR_SCHEMA;
    return rc;
}

/* Row `row` of res (WHE_COLUMNS, then body_enc if with_body) into *r. */
static phg_status whe_row_read(const PGresult *res, int row, phg_wh_event_row *r, int with_body)
{
    phg_wh_event *e = &r->ev;
    int64_t v = 0;
    phg_status rc;
    int len;

    memset(r, 0, sizeof *r);
    if (PQnfields(res) != WHE_NCOLUMNS + (with_body ? 1 : 0))
        return PHG_ERR_SCHEMA;
    TRY(get_text(res, row, 0, e->id, sizeof e->id));
    TRY(get_text(res, row, 1, e->source, sizeof e->source));
    TRY(get_text(res, row, 2, e->msg_id, sizeof e->msg_id));
    TRY(get_text(res, row, 3, e->request_id, sizeof e->request_id));
    TRY(get_int8_in(res, row, 4, 0, 1, &v));
    e->authenticated = (int)v;
    TRY(get_int8_in(res, row, 5, -1, INT_MAX, &v));
    e->secret_index = (int)v;
    TRY(get_int8(res, row, 6, &e->signed_ts_s));
    TRY(get_int8(res, row, 7, &e->received_ms));
    TRY(get_text(res, row, 8, e->content_type, sizeof e->content_type));
    TRY(get_int8_in(res, row, 9, PHG_WH_EVENT_PENDING, PHG_WH_EVENT_DEAD, &v));
    e->state = (phg_wh_event_state)v;
    TRY(get_int8(res, row, 10, &e->attempts));
    TRY(get_int8(res, row, 11, &e->next_attempt_ms));
    TRY(get_int8(res, row, 12, &e->last_attempt_ms));
    TRY(get_int8(res, row, 13, &e->delivered_ms));
    TRY(get_int8_in(res, row, 14, INT_MIN, INT_MAX, &v));
    e->last_status = (int)v;
    TRY(get_text(res, row, 15, e->last_error, sizeof e->last_error));
    TRY(get_int8_in(res, row, 16, 0, PHG_WH_INBOX_BODY_MAX, &v));
    e->body_len = (size_t)v;
    if (with_body) {
        if (PQgetisnull(res, row, WHE_NCOLUMNS)) {
            rc = PHG_ERR_SCHEMA;
            goto out;
        }
        len = PQgetlength(res, row, WHE_NCOLUMNS);
        r->body_enc = malloc((size_t)len + 1);
        if (r->body_enc == NULL) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
        memcpy(r->body_enc, PQgetvalue(res, row, WHE_NCOLUMNS), (size_t)len);
        r->body_enc[len] = '\0';
    }
out:
    if (rc != PHG_OK) {
        free(r->body_enc);
        r->body_enc = NULL;
    }
    return rc;
}

/* Every row of res into a malloc'd array (NULL when there are none). */
static phg_status whe_rows_read(const PGresult *res, int with_body, phg_wh_event_row **out,
                                size_t *n)
{
    phg_status rc = PHG_OK;
    int rows = PQntuples(res), i;
    phg_wh_event_row *r = NULL;

    *out = NULL;
    *n = 0;
    if (rows <= 0)
        return PHG_OK;
    r = calloc((size_t)rows, sizeof *r);
    if (r == NULL)
        return PHG_ERR_NOMEM;
    for (i = 0; i < rows; i++) {
        rc = whe_row_read(res, i, &r[i], with_body);
        if (rc != PHG_OK) {
            phg_internal_wh_event_rows_free(r, (size_t)i);
            return rc;
        }
    }
    *out = r;
    *n = (size_t)rows;
    return PHG_OK;
}

/* The rows an UPDATE or DELETE without RETURNING touched. */
static size_t cmd_tuples(PGresult *res)
{
    const char *t = PQcmdTuples(res);
    return t != NULL && t[0] != '\0' ? (size_t)strtoull(t, NULL, 10) : 0;
}

/* The status of an UPDATE of one row that changed nothing: the row is
 * missing (NOT_FOUND) or not in the state the update wanted (STATE). */
static phg_status whe_why_unchanged(pg_conn *c, const char *id)
{
    phg_status rc;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_text(&p, id);
    TRY(run(c, ST_WHE_STATE, &p, &res));
    rc = PQntuples(res) == 0 ? PHG_ERR_NOT_FOUND : PHG_ERR_STATE;
out:
    PQclear(res);
    return rc;
}

/* Inside the caller's transaction: the id stored for (source, msg_id). */
static phg_status whe_find(pg_conn *c, const char *source, const char *msg_id,
                           char id[PHG_WH_EVENT_ID_LEN + 1])
{
    phg_status rc;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_text(&p, source);
    p_text(&p, msg_id);
    TRY(run(c, ST_WHE_FIND, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(get_text(res, 0, 0, id, PHG_WH_EVENT_ID_LEN + 1));
out:
    PQclear(res);
    return rc;
}

/*
 * The inbox's group commit: one transaction for the batch, committed with
 * synchronous_commit on (the session's setting), as the audit log is. ON
 * CONFLICT DO NOTHING leaves a duplicate out, whether its twin is stored,
 * earlier in this transaction, or being inserted by another instance (whose
 * commit it waits for: READ COMMITTED then sees the twin).
 */
static phg_status pg_wh_event_insert(void *conn, const phg_wh_event_row *rows, size_t n,
                                     char (*existing)[PHG_WH_EVENT_ID_LEN + 1])
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;
    size_t i;

    assert(c != NULL && (n == 0 || (rows != NULL && existing != NULL)));
    for (i = 0; i < n; i++) {
        const phg_wh_event *e = &rows[i].ev;
        if (rows[i].body_enc == NULL || e->state != PHG_WH_EVENT_PENDING ||
            !wh_text_ok(e->id, sizeof e->id) || !wh_text_ok(e->source, sizeof e->source) ||
            !wh_text_ok(e->msg_id, sizeof e->msg_id) ||
            !wh_text_ok(e->request_id, sizeof e->request_id) ||
            !wh_text_ok(e->content_type, sizeof e->content_type))
            return PHG_ERR_INVALID;
        if (strlen(rows[i].body_enc) > INT_MAX)
            return PHG_ERR_TOO_LARGE;
    }
    TRY(ensure_connected(c));
    TRY(begin(c));
    for (i = 0; i < n; i++) {
        const phg_wh_event *e = &rows[i].ev;
        existing[i][0] = '\0';
        memset(&p, 0, sizeof p);
        p_text(&p, e->id);
        p_text(&p, e->source);
        p_text(&p, e->msg_id);
        p_text(&p, e->request_id);
        p_int8(&p, e->authenticated);
        p_int8(&p, e->secret_index);
        p_int8(&p, e->signed_ts_s);
        p_int8(&p, e->received_ms);
        p_text(&p, e->content_type);
        p_int8(&p, e->next_attempt_ms);
        p_int8(&p, (int64_t)e->body_len);
        p_text(&p, rows[i].body_enc);
        TRY(run(c, ST_WHE_INSERT, &p, &res));
        if (PQntuples(res) == 0) {
            rc = whe_find(c, e->source, e->msg_id, existing[i]);
            if (rc == PHG_ERR_NOT_FOUND)
                rc = PHG_ERR_INTERNAL; /* not inserted, yet no twin: cannot be */
            if (rc != PHG_OK)
                goto out;
        }
        PQclear(res);
        res = NULL;
    }
    TRY(exec_fixed(c, "COMMIT"));
out:
    PQclear(res);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

typedef struct whe_find_args {
    const char *source, *msg_id;
    char *id;
} whe_find_args;

static phg_status do_whe_find(pg_conn *c, void *arg)
{
    whe_find_args *a = arg;
    return whe_find(c, a->source, a->msg_id, a->id);
}

static phg_status pg_wh_event_find(void *conn, const char *source, const char *msg_id,
                                   char id[PHG_WH_EVENT_ID_LEN + 1])
{
    whe_find_args a = {source, msg_id, id};
    assert(conn != NULL && source != NULL && msg_id != NULL && id != NULL);
    return read_with_retry(conn, do_whe_find, &a);
}

/* A write: not retried after a lost connection (the lease may have been
 * taken; if so it runs out and the rows are claimed again). */
static phg_status pg_wh_event_claim(void *conn, int64_t now_ms, int64_t lease_until_ms, size_t max,
                                    size_t bytes_max, phg_wh_event_row **out, size_t *n)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    assert(c != NULL && out != NULL && n != NULL && max >= 1 && max <= PHG_WH_LIST_MAX);
    *out = NULL;
    *n = 0;
    memset(&p, 0, sizeof p);
    p_int8(&p, now_ms);
    p_int8(&p, lease_until_ms);
    p_int8(&p, (int64_t)max);
    p_int8(&p, bytes_max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)bytes_max);
    TRY(ensure_connected(c));
    TRY(run(c, ST_WHE_CLAIM, &p, &res));
    if ((size_t)PQntuples(res) > max) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    TRY(whe_rows_read(res, 1, out, n));
out:
    PQclear(res);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

typedef struct whe_get_args {
    const char *id;
    phg_wh_event_row *row;
} whe_get_args;

static phg_status do_whe_get(pg_conn *c, void *arg)
{
    whe_get_args *a = arg;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    memset(&p, 0, sizeof p);
    p_text(&p, a->id);
    TRY(run(c, ST_WHE_GET, &p, &res));
    if (PQntuples(res) == 0) {
        rc = PHG_ERR_NOT_FOUND;
        goto out;
    }
    TRY(whe_row_read(res, 0, a->row, 1));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_wh_event_get(void *conn, const char *id, phg_wh_event_row *row)
{
    whe_get_args a = {id, row};
    assert(conn != NULL && id != NULL && row != NULL);
    memset(row, 0, sizeof *row);
    return read_with_retry(conn, do_whe_get, &a);
}

static phg_status pg_wh_event_report(void *conn, const char *id, int state, int attempted,
                                     int64_t at_ms, int http_status, const char *error,
                                     int64_t next_ms)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    assert(c != NULL && id != NULL && error != NULL && state >= PHG_WH_EVENT_PENDING &&
           state <= PHG_WH_EVENT_DEAD);
    memset(&p, 0, sizeof p);
    p_text(&p, id);
    p_int8(&p, state);
    p_int8(&p, attempted ? 1 : 0);
    p_int8(&p, at_ms);
    p_int8(&p, http_status);
    p_text(&p, error);
    p_int8(&p, next_ms);
    TRY(ensure_connected(c));
    TRY(run(c, ST_WHE_REPORT, &p, &res));
    if (PQntuples(res) == 0)
        rc = whe_why_unchanged(c, id);
out:
    PQclear(res);
    if (rc != PHG_OK && rc != PHG_ERR_NOT_FOUND && rc != PHG_ERR_STATE)
        rc = end_failed_write(c, rc);
    return rc;
}

static phg_status pg_wh_txn(void *conn, int op)
{
    pg_conn *c = conn;
    phg_status rc;
    if (op == 0) {
        rc = ensure_connected(c);
        return rc == PHG_OK ? begin(c) : rc;
    }
    if (op == 1) {
        rc = exec_fixed(c, "COMMIT");
        return rc == PHG_OK ? PHG_OK : end_failed_write(c, rc);
    }
    if (PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        (void)end_failed_write(c, PHG_OK);
    return PHG_OK;
}

typedef struct whe_list_args {
    const phg_wh_event_filter *f;
    phg_wh_event_row **out;
    size_t *n;
} whe_list_args;

/* The SQL from fixed fragments only (the filter values are bound), run as
 * an unnamed statement: planned for the filters actually given. */
static phg_status do_whe_list(pg_conn *c, void *arg)
{
    whe_list_args *a = arg;
    const phg_wh_event_filter *f = a->f;
    phg_status rc = PHG_OK;
    PGresult *res = NULL;
    ExecStatusType st;
    params p;
    Oid types[4];
    char sql[512];
    int np = 0;

    memset(&p, 0, sizeof p);
    snprintf(sql, sizeof sql, "SELECT " WHE_COLUMNS " FROM webhook_events WHERE true");
    if (f->state >= 0) {
        types[np++] = OID_INT8;
        p_int8(&p, f->state);
        snprintf(sql + strlen(sql), sizeof sql - strlen(sql), " AND state = $%d", np);
    }
    if (f->source != NULL) {
        types[np++] = OID_TEXT;
        p_text(&p, f->source);
        snprintf(sql + strlen(sql), sizeof sql - strlen(sql), " AND source = $%d", np);
    }
    if (f->before_id != NULL) {
        types[np++] = OID_TEXT;
        p_text(&p, f->before_id);
        snprintf(sql + strlen(sql), sizeof sql - strlen(sql), " AND id < $%d", np);
    }
    types[np++] = OID_INT8;
    p_int8(&p, (int64_t)f->limit);
    snprintf(sql + strlen(sql), sizeof sql - strlen(sql), " ORDER BY id DESC LIMIT $%d", np);
    res = PQexecParams(c->pg, sql, p.n, types, p.values, p.lengths, p.formats, 1);
    st = PQresultStatus(res);
    if (res == NULL || st != PGRES_TUPLES_OK) {
        rc = classify(c, res);
        goto out;
    }
    if ((size_t)PQntuples(res) > f->limit) {
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    TRY(whe_rows_read(res, 0, a->out, a->n));
out:
    PQclear(res);
    return rc;
}

static phg_status pg_wh_event_list(void *conn, const phg_wh_event_filter *f,
                                   phg_wh_event_row **out, size_t *n)
{
    whe_list_args a = {f, out, n};
    assert(conn != NULL && f != NULL && out != NULL && n != NULL && f->limit >= 1 &&
           f->limit <= PHG_WH_LIST_MAX);
    *out = NULL;
    *n = 0;
    return read_with_retry(conn, do_whe_list, &a);
}

static phg_status pg_wh_event_replay(void *conn, const char *id, int64_t now_ms)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    assert(c != NULL && id != NULL);
    memset(&p, 0, sizeof p);
    p_text(&p, id);
    p_int8(&p, now_ms);
    TRY(ensure_connected(c));
    TRY(run(c, ST_WHE_REPLAY, &p, &res));
    if (PQntuples(res) == 0)
        rc = whe_why_unchanged(c, id);
out:
    PQclear(res);
    if (rc != PHG_OK && rc != PHG_ERR_NOT_FOUND && rc != PHG_ERR_STATE)
        rc = end_failed_write(c, rc);
    return rc;
}

static phg_status pg_wh_event_replay_all(void *conn, const char *source, int64_t now_ms,
                                         size_t *n)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    assert(c != NULL && n != NULL);
    *n = 0;
    memset(&p, 0, sizeof p);
    p_int8(&p, now_ms);
    if (source != NULL)
        p_text(&p, source);
    else
        p_null(&p);
    TRY(ensure_connected(c));
    TRY(run(c, ST_WHE_REPLAY_ALL, &p, &res));
    *n = cmd_tuples(res);
out:
    PQclear(res);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

typedef struct whe_stats_args {
    int64_t *counts;
    int64_t *oldest;
    int backlog_only;
} whe_stats_args;

static phg_status do_whe_stats(pg_conn *c, void *arg)
{
    whe_stats_args *a = arg;
    phg_status rc;
    PGresult *res = NULL;
    int64_t state = 0, count = 0, oldest = 0;
    int i;

    TRY(run(c, a->backlog_only ? ST_WHE_BACKLOG : ST_WHE_STATS, NULL, &res));
    for (i = 0; i < PQntuples(res); i++) {
        TRY(get_int8_in(res, i, 0, PHG_WH_EVENT_PENDING, PHG_WH_EVENT_DEAD, &state));
        TRY(get_int8(res, i, 1, &count));
        TRY(get_int8(res, i, 2, &oldest));
        a->counts[state] = count;
        if (state == PHG_WH_EVENT_PENDING)
            *a->oldest = oldest;
    }
out:
    PQclear(res);
    return rc;
}

static phg_status pg_wh_event_stats(void *conn, int backlog_only, int64_t counts[3],
                                    int64_t *oldest_pending_ms)
{
    whe_stats_args a = {counts, oldest_pending_ms, backlog_only};
    assert(conn != NULL && counts != NULL && oldest_pending_ms != NULL);
    counts[0] = counts[2] = 0;
    counts[1] = backlog_only ? -1 : 0;
    *oldest_pending_ms = 0;
    return read_with_retry(conn, do_whe_stats, &a);
}

static phg_status pg_wh_event_purge(void *conn, int64_t before_ms, size_t max, size_t *n)
{
    pg_conn *c = conn;
    phg_status rc;
    PGresult *res = NULL;
    params p;

    assert(c != NULL && n != NULL);
    *n = 0;
    memset(&p, 0, sizeof p);
    p_int8(&p, before_ms);
    p_int8(&p, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
    TRY(ensure_connected(c));
    TRY(run(c, ST_WHE_PURGE, &p, &res));
    *n = cmd_tuples(res);
out:
    PQclear(res);
    return rc == PHG_OK ? rc : end_failed_write(c, rc);
}

const phg_store_engine phg_store_engine_postgres = {
    .name = "postgres",
    .connect = pg_connect,
    .disconnect = pg_disconnect,
    .schema_version = pg_schema_version,
    .apply_migration = pg_apply_migration,
    .keyring_get = pg_keyring_get,
    .keyring_put = pg_keyring_put,
    .key_insert = pg_key_insert,
    .key_get = pg_key_get,
    .key_by_index = pg_key_by_index,
    .key_list = pg_key_list,
    .key_revoke = pg_key_revoke,
    .key_set_limit = pg_key_set_limit,
    .key_rotate = pg_key_rotate,
    .key_touch = pg_key_touch,
    .change_counter = pg_change_counter,
    .keys_since = pg_keys_since,
    .audit_ensure_partition = pg_audit_ensure_partition,
    .audit_append = pg_audit_append,
    .audit_checkpoint_insert = pg_audit_checkpoint_insert,
    .audit_chain_head = pg_audit_chain_head,
    .audit_chains = pg_audit_chains,
    .audit_walk = pg_audit_walk,
    .audit_checkpoints = pg_audit_checkpoints,
    .audit_query = pg_audit_query,
    .audit_partitions = pg_audit_partitions,
    .audit_partition_rows = pg_audit_partition_rows,
    .audit_mark_archived = pg_audit_mark_archived,
    .audit_drop_partition = pg_audit_drop_partition,
    .wh_source_insert = pg_wh_source_insert,
    .wh_source_get = pg_wh_source_get,
    .wh_source_list = pg_wh_source_list,
    .wh_source_delete = pg_wh_source_delete,
    .wh_secret_add = pg_wh_secret_add,
    .wh_secret_retire = pg_wh_secret_retire,
    .wh_source_set_verify_token = pg_wh_source_set_verify_token,
    .wh_event_insert = pg_wh_event_insert,
    .wh_event_find = pg_wh_event_find,
    .wh_event_claim = pg_wh_event_claim,
    .wh_event_get = pg_wh_event_get,
    .wh_event_report = pg_wh_event_report,
    .wh_txn = pg_wh_txn,
    .wh_event_list = pg_wh_event_list,
    .wh_event_replay = pg_wh_event_replay,
    .wh_event_replay_all = pg_wh_event_replay_all,
    .wh_event_stats = pg_wh_event_stats,
    .wh_event_purge = pg_wh_event_purge,
};
