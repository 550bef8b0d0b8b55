/*
 * store/engine.h: the table of functions every storage engine provides, in
 * the manner of curl's lib/vtls: store.c owns the URL, the connection pool,
 * the migration runner and the public API; an engine only speaks to its
 * database. One engine connection is used by one thread at a time (store.c
 * guarantees it), so engines need no locking of their own.
 *
 * Every statement is prepared with bound parameters. Every function returns
 * PHG_OK or a phg_status: PHG_ERR_UNAVAILABLE when the server or file cannot
 * be reached (a client/server engine then reconnects on its next call; an
 * embedded one keeps its handle, which stays valid), PHG_ERR_SCHEMA for a
 * database that is not migrated, not a database, or corrupt,
 * PHG_ERR_NOT_FOUND, PHG_ERR_EXISTS (unique violation), PHG_ERR_IO for other
 * database errors. `err` buffers (PHG_STORE_ERR_MAX bytes) get a message for
 * operators that never contains a password.
 */
#ifndef PHG_STORE_ENGINE_H
#define PHG_STORE_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "phigate/apikey.h"
#include "phigate/store.h"
#include "phigate/webhook_inbox.h"

typedef phg_status (*phg_key_cb)(void *arg, const phg_apikey_record *rec);

/*
 * One audit record as the engines store it: indexed columns plus the
 * canonical JSON text (docs/formats.md "Audit record"). In writes `json` is
 * borrowed; in rows an engine returns, it is malloc'd and the caller frees
 * it (for rows given to a callback, the engine frees it after the call).
 */
typedef struct phg_audit_store_row {
    char id[27];          /* ULID */
    int64_t ts_us;        /* Unix microseconds, the record's ts */
    char chain[65];
    int64_t seq;
    char hash[65];        /* lowercase hex */
    char request_id[257];
    char key_id[257];
    char user_id[257];
    char action[257];
    char outcome[17];
    char subject[257];
    char *json;           /* the canonical record, hash included */
} phg_audit_store_row;

typedef phg_status (*phg_audit_row_cb)(void *arg, const phg_audit_store_row *row);

typedef struct phg_audit_checkpoint {
    char chain[65];
    int64_t seq;
    char hash[65];        /* the chain's head hash at seq */
    int64_t ts_us;
    char mac[65];         /* hex HMAC-SHA256 (docs/formats.md "Checkpoint") */
} phg_audit_checkpoint;

typedef phg_status (*phg_audit_checkpoint_cb)(void *arg, const phg_audit_checkpoint *cp);

typedef struct phg_audit_partition {
    char month[8];        /* "YYYY-MM" */
    int64_t created_at, archived_at, dropped_at; /* Unix s, 0: not */
    char archive_sha256[65];
} phg_audit_partition;

/* The audit query an engine runs; audit.c has validated every field. */
typedef struct phg_audit_store_filter {
    int64_t from_us, to_us;          /* 0: open */
    const char *user_id, *key_id, *action, *outcome, *request_id, *subject; /* NULL: any */
    const char *before_id;           /* NULL: from the newest */
    size_t limit;                    /* 1..1000 */
} phg_audit_store_filter;

/* A webhook source as stored (migration 3). Fields are validated by
 * webhook_store.c before any write. */
#define PHG_WH_NAME_MAX 64
#define PHG_WH_SCHEME_MAX 31
#define PHG_WH_URL_MAX 2048
#define PHG_WH_SECRET_ENC_MAX 1024 /* a Fernet token of a secret of 512 bytes is 780 */
#define PHG_WH_ROWS_MAX 1000       /* sources listed, secrets of one source */

typedef struct phg_wh_source_row {
    char name[PHG_WH_NAME_MAX + 1];
    char scheme[PHG_WH_SCHEME_MAX + 1];
    int64_t tolerance_s;
    char deliver_to[PHG_WH_URL_MAX + 1];
    int64_t created_at, updated_at, version; /* Unix s; version: the change counter */
    /* Fernet token of the handshake's verify token (migration 4); "": none */
    char verify_token_enc[PHG_WH_SECRET_ENC_MAX + 1];
} phg_wh_source_row;

typedef struct phg_wh_secret_row {
    int64_t idx;
    char secret_enc[PHG_WH_SECRET_ENC_MAX + 1]; /* Fernet token */
    char fingerprint[20];
    int64_t not_after, retired_at, created_at; /* Unix s, 0: none */
} phg_wh_secret_row;

/* One webhook event as stored (migration 4): every column in ev (ev.body
 * unused, NULL), and the body's phi1 text (docs/formats.md 18). In writes
 * body_enc is borrowed; in rows an engine returns it is malloc'd, or NULL
 * where the query does not read it (lists). */
typedef struct phg_wh_event_row {
    phg_wh_event ev;
    char *body_enc;
} phg_wh_event_row;

/* Free rows an engine returned (each body_enc, then the array). */
static inline void phg_internal_wh_event_rows_free(phg_wh_event_row *rows, size_t n)
{
    size_t i;
    for (i = 0; rows != NULL && i < n; i++)
        free(rows[i].body_enc);
    free(rows);
}

typedef struct phg_store_engine {
    const char *name; /* "sqlite", "postgres" */

    /* Connect. `target` is what follows "sqlite:" (a path), or the whole
     * postgres:// URL. */
    phg_status (*connect)(const char *target, const phg_store_options *opts, void **conn,
                          char *err, size_t err_len);
    void (*disconnect)(void *conn);

    /* The highest version recorded in phigate_schema, 0 if the table does
     * not exist. */
    phg_status (*schema_version)(void *conn, int *version);

    /* In one transaction, serialised against other migrators: create
     * phigate_schema if missing; unless `version` is recorded already (another
     * process got there first), run `sql` (several statements, no BEGIN or
     * COMMIT of its own) and insert (version, now). *applied tells which.
     * Roll back on any error. */
    phg_status (*apply_migration)(void *conn, int version, const char *sql, int *applied,
                                  char *err, size_t err_len);

    /* phi_keyring: the single row (id 1). */
    phg_status (*keyring_get)(void *conn, char **json, size_t *len);
    phg_status (*keyring_put)(void *conn, const char *json, size_t len);

    /* api_keys. Every change bumps phigate_changes.counter in the same
     * transaction and stores the new counter in the row's `version`. */
    phg_status (*key_insert)(void *conn, const phg_apikey_record *rec);
    phg_status (*key_get)(void *conn, const char *id, phg_apikey_record *rec);
    /* Every key (any state) whose key_index is `index`; *out is malloc'd. */
    phg_status (*key_by_index)(void *conn, int64_t index, phg_apikey_record **out, size_t *n);
    /* Ordered by id, id > after (after may be ""), at most limit. */
    phg_status (*key_list)(void *conn, const char *after, size_t limit, phg_apikey_record **out,
                           size_t *n);
    /* Set revoked_at if not yet set. PHG_ERR_NOT_FOUND for an unknown id. */
    phg_status (*key_revoke)(void *conn, const char *id, int64_t at);
    /* One transaction: old must exist (NOT_FOUND), not be revoked nor already
     * rotated (PHG_ERR_STATE); set its grace_until and replaced_by; insert
     * fresh. */
    phg_status (*key_rotate)(void *conn, const char *old_id, int64_t grace_until,
                             const phg_apikey_record *fresh);
    /* One transaction: the key must exist (PHG_ERR_NOT_FOUND) and not be
     * revoked (PHG_ERR_STATE); set its rate_limit to `rate_limit` (validated
     * by the caller; "" for none). A change bumps the counter into the row's
     * version, as revoke does, so every instance's poller reloads the row;
     * setting the limit it already has changes nothing, not even the counter.
     * *rec gets the row as it is after the call, and old_limit its limit
     * before (both only on PHG_OK). */
    phg_status (*key_set_limit)(void *conn, const char *id, const char *rate_limit,
                                char old_limit[PHG_APIKEY_LIMIT_MAX + 1], phg_apikey_record *rec);
    /* last_used_at = max(last_used_at, ts[i]) for each id; no counter bump. */
    phg_status (*key_touch)(void *conn, const char *const *ids, const int64_t *ts, size_t n);
    phg_status (*change_counter)(void *conn, int64_t *counter);
    /* Call cb for every key with version > since, in (version, id) order. A
     * cb failure stops the walk and is returned. cb runs while the query is
     * open: it must not use this connection (or the store). */
    phg_status (*keys_since)(void *conn, int64_t since, phg_key_cb cb, void *arg);

    /* ---- audit log (migration 2) ----
     * Partitions are months, named by "YYYY-MM" of the record's ts (UTC).
     * SQLite: a table audit_YYYY_MM per month; PostgreSQL: partition
     * audit_log_YYYY_MM of the range-partitioned audit_log. Both have the
     * columns of phg_audit_store_row and the indexes the queries need, and
     * every partition is registered in audit_partitions. Names are built only
     * from the validated year and month integers. */

    /* Create the partition of (year, month) if missing and register it. */
    phg_status (*audit_ensure_partition)(void *conn, int year, int month);
    /* One transaction: insert the rows (creating a missing partition), and
     * set audit_chains' head of `chain` to (head_seq, head_hash). Nothing is
     * written on failure. Commit is durable (fsync) when this returns. */
    phg_status (*audit_append)(void *conn, const phg_audit_store_row *rows, size_t n,
                               const char *chain, int64_t head_seq, const char *head_hash);
    phg_status (*audit_checkpoint_insert)(void *conn, const phg_audit_checkpoint *cp);
    /* The stored head of a chain; PHG_ERR_NOT_FOUND for a new chain. */
    phg_status (*audit_chain_head)(void *conn, const char *chain, int64_t *seq, char hash[65]);
    /* Every chain with its head (cb gets a checkpoint-shaped value with mac ""). */
    phg_status (*audit_chains)(void *conn, phg_audit_checkpoint_cb cb, void *arg);
    /* The records of one chain with ts in [from_us, to_us) (0: open), by
     * seq then id (so a repeated seq shows), across every partition. */
    phg_status (*audit_walk)(void *conn, const char *chain, int64_t from_us, int64_t to_us,
                             phg_audit_row_cb cb, void *arg);
    /* The checkpoints of one chain, by seq. */
    phg_status (*audit_checkpoints)(void *conn, const char *chain, phg_audit_checkpoint_cb cb,
                                    void *arg);
    /* Newest first (ts, then id, descending); *rows malloc'd, each json
     * malloc'd. */
    phg_status (*audit_query)(void *conn, const phg_audit_store_filter *f,
                              phg_audit_store_row **rows, size_t *n);
    /* Every registered partition, oldest first; *parts malloc'd. */
    phg_status (*audit_partitions)(void *conn, phg_audit_partition **parts, size_t *n);
    /* The rows of one month, oldest first (ts, id). */
    phg_status (*audit_partition_rows)(void *conn, int year, int month, phg_audit_row_cb cb,
                                       void *arg);
    phg_status (*audit_mark_archived)(void *conn, int year, int month, const char *sha256_hex,
                                      int64_t at);
    /* Drop the partition's table and mark it dropped. Refuses (PHG_ERR_STATE)
     * one that is not archived; the retention check is audit.c's. */
    phg_status (*audit_drop_partition)(void *conn, int year, int month, int64_t at);

    /* ---- webhook sources (migration 3) ----
     * Every change bumps phigate_changes.counter into the source's version. */
    /* One transaction: the source and its n secrets (idx as given).
     * PHG_ERR_EXISTS for a name taken. */
    phg_status (*wh_source_insert)(void *conn, const phg_wh_source_row *src,
                                   const phg_wh_secret_row *secrets, size_t n);
    /* The source and every secret (retired ones too), by idx; *secrets
     * malloc'd (may be NULL if secrets is NULL). NOT_FOUND for an unknown name. */
    phg_status (*wh_source_get)(void *conn, const char *name, phg_wh_source_row *src,
                                phg_wh_secret_row **secrets, size_t *n);
    /* Every source by name (at most PHG_WH_ROWS_MAX); *out malloc'd. */
    phg_status (*wh_source_list)(void *conn, phg_wh_source_row **out, size_t *n);
    /* The source and its secrets. NOT_FOUND for an unknown name. */
    phg_status (*wh_source_delete)(void *conn, const char *name);
    /* One transaction: the source must exist (NOT_FOUND) and have fewer than
     * max_active unretired secrets (PHG_ERR_STATE); insert sec at idx
     * max(idx) + 1 (returned in *idx); set updated_at = sec->created_at. */
    phg_status (*wh_secret_add)(void *conn, const char *name, const phg_wh_secret_row *sec,
                                size_t max_active, int64_t *idx);
    /* One transaction: set retired_at of (name, idx) if not yet set.
     * NOT_FOUND for an unknown source or index; PHG_ERR_STATE if it is the
     * last unretired secret of the source. */
    phg_status (*wh_secret_retire)(void *conn, const char *name, int64_t idx, int64_t at);
    /* One UPDATE (migration 4): verify_token_enc := enc ("" clears it),
     * updated_at := at, version := the bumped counter. NOT_FOUND for an
     * unknown name. */
    phg_status (*wh_source_set_verify_token)(void *conn, const char *name, const char *enc,
                                             int64_t at);

    /* ---- webhook inbox (migration 4; webhook_inbox.c, docs/formats.md 18) ----
     * Rows are phg_wh_event_row; every text field is validated (printable
     * ASCII, within its array) by webhook_inbox.c before a write. */
    /* One transaction for the n rows, in order: each is inserted as a new
     * PENDING row without attempts (its id, source, msg_id, request_id,
     * authenticated, secret_index, signed_ts_s, received_ms, content_type,
     * next_attempt_ms, body_len and body_enc are taken; state must be
     * PENDING) unless a row with its (source, msg_id) exists (stored
     * before, or earlier in this batch): then existing[i] gets that row's
     * id, else existing[i] is "". Nothing is written on failure; the commit
     * is durable (fsync) when this returns, as audit_append's. */
    phg_status (*wh_event_insert)(void *conn, const phg_wh_event_row *rows, size_t n,
                                  char (*existing)[PHG_WH_EVENT_ID_LEN + 1]);
    /* The id of the row with (source, msg_id); NOT_FOUND. */
    phg_status (*wh_event_find)(void *conn, const char *source, const char *msg_id,
                                char id[PHG_WH_EVENT_ID_LEN + 1]);
    /* One transaction: up to max (1..PHG_WH_LIST_MAX) pending rows with
     * next_attempt_ms <= now_ms, by (next_attempt_ms, id), fewer once their
     * body_len adds up to bytes_max (at least one row); set their
     * next_attempt_ms to lease_until_ms. PostgreSQL skips rows another
     * transaction has locked. *rows (malloc'd, body_enc malloc'd, in that
     * order; next_attempt_ms the new value) freed with
     * phg_internal_wh_event_rows_free; NULL when *n is 0. */
    phg_status (*wh_event_claim)(void *conn, int64_t now_ms, int64_t lease_until_ms, size_t max,
                                 size_t bytes_max, phg_wh_event_row **rows, size_t *n);
    /* One row with its body_enc (malloc'd); NOT_FOUND. */
    phg_status (*wh_event_get)(void *conn, const char *id, phg_wh_event_row *row);
    /* One UPDATE of a PENDING row: state := state (PENDING, DELIVERED or
     * DEAD), last_error := error; if attempted: attempts + 1,
     * last_attempt_ms := at_ms, last_status := http_status; DELIVERED also
     * sets delivered_ms := at_ms, PENDING next_attempt_ms := next_ms.
     * NOT_FOUND for an unknown id, PHG_ERR_STATE for a row not PENDING. */
    phg_status (*wh_event_report)(void *conn, const char *id, int state, int attempted,
                                  int64_t at_ms, int http_status, const char *error,
                                  int64_t next_ms);
    /* Several wh_event_report calls in one transaction (one commit, one
     * fsync): op 0 begins a write transaction, 1 commits (a failed commit
     * rolls back), 2 rolls back. */
    phg_status (*wh_txn)(void *conn, int op);
    /* Rows newest first (id descending) of f (validated), no body_enc;
     * *rows malloc'd (NULL when *n is 0). */
    phg_status (*wh_event_list)(void *conn, const phg_wh_event_filter *f, phg_wh_event_row **rows,
                                size_t *n);
    /* A DEAD row (id), or every DEAD row of source (NULL: all), back to
     * PENDING with attempts 0, due at now_ms. replay: NOT_FOUND, PHG_ERR_STATE
     * for a row not DEAD; *n how many rows replay_all changed. */
    phg_status (*wh_event_replay)(void *conn, const char *id, int64_t now_ms);
    phg_status (*wh_event_replay_all)(void *conn, const char *source, int64_t now_ms, size_t *n);
    /* Rows per state, and the smallest received_ms of the PENDING ones (0:
     * none). */
    /* backlog_only: count PENDING and DEAD rows only (counts[1] is -1), a
     * range of the (state, id) index: cheap however many delivered rows are
     * kept; the metrics' once-a-second figure. */
    phg_status (*wh_event_stats)(void *conn, int backlog_only, int64_t counts[3],
                                 int64_t *oldest_pending_ms);
    /* Delete at most max DELIVERED rows with delivered_ms < before_ms; *n
     * how many. */
    phg_status (*wh_event_purge)(void *conn, int64_t before_ms, size_t max, size_t *n);
} phg_store_engine;

extern const phg_store_engine phg_store_engine_sqlite;
extern const phg_store_engine phg_store_engine_postgres;

/* Shared by the engines: the role text of the api_keys column ("user",
 * "admin"; NULL for a value that is not a role), and back (1 if known). */
const char *phg_internal_role_text(phg_role role);
int phg_internal_role_from_text(const char *text, phg_role *role);

#endif
