/*
 * phigate/audit.h: the tamper-evident audit log.
 *
 * Every access and administrative action becomes a record (docs/formats.md,
 * "Audit record"): canonical JSON of id (ULID), ts, request_id, actor,
 * action, resource, outcome, ip, details (PHI masked), chain, seq, prev, and
 * hash = SHA-256(prev ‖ canonical JSON without hash). Each writer (each
 * phigate instance, the CLI) appends to its own chain; signed checkpoints of
 * each chain's head (HMAC-SHA256 under a key derived from the master key) let
 * a verifier detect truncation as well as edits, deletions, insertions and
 * reordering.
 *
 * Durability: phg_audit_append returns once the record is committed and
 * fsync'd. A writer thread takes records from every thread and commits them
 * in batches (group commit: one transaction and one fsync for many records).
 * When the store cannot take records, append fails (PHG_ERR_UNAVAILABLE) and
 * the caller must refuse the request it was recording: fail closed.
 *
 * Storage: monthly partitions (PostgreSQL: declarative range partitions;
 * SQLite: one table per month), created ahead for the current and next month;
 * a partition younger than six years cannot be dropped, and only after it has
 * been archived.
 *
 * Thread safety: phg_audit may be used from any number of threads.
 */
#ifndef PHIGATE_AUDIT_H
#define PHIGATE_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"
#include "phigate/phi.h"
#include "phigate/store.h"
#include "phigate/ulid.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_AUDIT_TEXT_MAX 256           /* action, resource, ids, ip: bytes */
#define PHG_AUDIT_DETAILS_MAX (64u << 10) /* details JSON text */
#define PHG_AUDIT_CHAIN_MAX 64            /* chain name: [a-z0-9._:-]{1,64} */
#define PHG_AUDIT_RETENTION_YEARS 6
#define PHG_AUDIT_QUERY_MAX 1000

/* ---- request context -------------------------------------------------------- */

/*
 * What the current request is, readable from any code on the thread that
 * handles it (a log line or an audit record made deep inside a call carries
 * the request id without passing it through every function). Strings are
 * copied (truncated to PHG_AUDIT_TEXT_MAX). Thread-local.
 */
typedef struct phg_request_context {
    char request_id[PHG_ULID_LEN + 1];
    char key_id[PHG_AUDIT_TEXT_MAX + 1];
    char user_id[PHG_AUDIT_TEXT_MAX + 1];
    char role[16];
    char ip[64];
} phg_request_context;

/* Set the calling thread's context (NULL clears it). */
PHG_API void phg_request_context_set(const phg_request_context *ctx);
/* The calling thread's context, or NULL if none is set. */
PHG_API const phg_request_context *phg_request_context_get(void);

/* ---- masking ------------------------------------------------------------------ */

/*
 * The default masked field names (case-insensitive, compared after removing
 * '-' and '_'): names, birth date, email, phone, address, SSN, medical record
 * numbers, device identifiers, free-text notes, and biometric readings. See
 * docs/formats.md for the list. NULL-terminated, static.
 */
PHG_API const char *const *phg_audit_default_mask(void);

/*
 * Mask a JSON text: every member, at any depth, whose name is in `fields`
 * (NULL: the defaults) gets the value "***" (whatever its type). Returns a new
 * compact JSON text in *out (free with free()). PHG_ERR_INVALID if the input
 * is not JSON, PHG_ERR_TOO_LARGE over PHG_AUDIT_DETAILS_MAX.
 */
PHG_API phg_status phg_audit_mask_json(const char *json, size_t len,
                                       const char *const *fields, char **out);

/* Is `name` (a JSON key, query parameter or header name) masked? */
PHG_API int phg_audit_is_masked(const char *name, const char *const *fields);

/* ---- structured logs ------------------------------------------------------------- */

typedef enum phg_log_level {
    PHG_LOG_DEBUG = 0,
    PHG_LOG_INFO = 1,
    PHG_LOG_WARN = 2,
    PHG_LOG_ERROR = 3,
} phg_log_level;

/* Lines below this level are dropped (default INFO). */
PHG_API void phg_log_set_level(phg_log_level level);

/*
 * One JSON object per line on stderr: {"ts","level","request_id","msg", and
 * the members of `fields_json` (a JSON object text or NULL) after masking}.
 * request_id comes from the request context. Thread-safe; a line is written
 * with one write(2). WARNING: put data in fields_json, never in msg: msg is
 * not masked.
 */
PHG_API void phg_log(phg_log_level level, const char *msg, const char *fields_json);

/* ---- the writer --------------------------------------------------------------------- */

typedef struct phg_audit phg_audit;

typedef struct phg_audit_options {
    const char *chain;              /* this writer's chain, e.g. "node-a" or "cli"; required */
    size_t queue_max;               /* pending records; default 65536 (then append fails) */
    size_t batch_max;               /* records per commit; default 4096 */
    unsigned checkpoint_every;      /* records between checkpoints; default 1000 */
    unsigned checkpoint_interval_s; /* seconds between checkpoints; default 60 */
    const char *const *mask;        /* masked names; NULL: the defaults */
} phg_audit_options;

PHG_API void phg_audit_options_init(phg_audit_options *opts);

/*
 * The checkpoint key: HKDF-SHA256(ikm = the first master key's 32 bytes,
 * salt empty, info "phigate/audit/checkpoint/v1", 32 bytes). Every instance
 * with the same master key can sign and verify; nobody without it can forge.
 */
PHG_API phg_status phg_audit_checkpoint_key(const phg_masterkeys *mk, uint8_t key[32]);

/*
 * Start a writer on `store` (migrated): resumes its chain from the stored
 * head, creates the current and next month's partitions, starts the writer
 * thread. key is the checkpoint key (copied). Free with phg_audit_close.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_audit_open(phg_store *store, const phg_audit_options *opts,
                                                  const uint8_t key[32], phg_audit **out);

/* Commit what is pending, write a final checkpoint, stop. NULL is a no-op. */
PHG_API void phg_audit_close(phg_audit *audit);

/* What to record. NULL strings are empty ("" in the record); actor and
 * request id default to the thread's request context. */
typedef struct phg_audit_event {
    const char *request_id;
    const char *key_id;
    const char *user_id;
    const char *role;
    const char *action;       /* required: "keys.create", "phi.decrypt", "http.request", ... */
    const char *resource;     /* "key:ak_...", "GET /v1/readings", ... */
    const char *subject;      /* whose data it is (a user id), for accounting of disclosures */
    const char *outcome;      /* required: "success", "denied" or "error" */
    const char *ip;
    const char *details_json; /* a JSON object text or NULL; masked before storing */
} phg_audit_event;

/*
 * Append and wait until the record is durable. The record's id goes to id
 * (may be NULL). PHG_ERR_INVALID for a bad event (missing action, unknown
 * outcome, details not a JSON object, text over its limit); PHG_ERR_UNAVAILABLE
 * when the store cannot take it (or the queue is full): the caller must then
 * refuse what it was recording.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_audit_append(phg_audit *audit, const phg_audit_event *ev,
                                                    char id[PHG_ULID_LEN + 1]);

/* Called on the writer thread once the record is durable, or has failed. */
typedef void (*phg_audit_done_fn)(void *arg, phg_status status, const char *id);

/* Append without waiting; done (may be NULL) is told the result. */
PHG_API phg_status phg_audit_append_async(phg_audit *audit, const phg_audit_event *ev,
                                          phg_audit_done_fn done, void *arg);

typedef struct phg_audit_stats {
    uint64_t appended, failed, commits, checkpoints;
    size_t queue_depth;
    double last_commit_ms;
    double commit_ms_total; /* time the writer spent committing, all commits */
} phg_audit_stats;

PHG_API void phg_audit_get_stats(phg_audit *audit, phg_audit_stats *stats);

/* ---- reading ------------------------------------------------------------------------ */

typedef struct phg_audit_filter {
    int64_t from_us, to_us;   /* ts range, [from, to); 0: open */
    const char *user_id;      /* actor user */
    const char *key_id;       /* actor key */
    const char *action;
    const char *outcome;
    const char *request_id;
    const char *subject;
    const char *before_id;    /* keyset pagination: only ids < this (newest first) */
    size_t limit;             /* 1..1000 */
} phg_audit_filter;

/* One stored record: its canonical JSON text (hash included). */
typedef struct phg_audit_row {
    char id[PHG_ULID_LEN + 1];
    int64_t ts_us;
    char *json;
} phg_audit_row;

/*
 * Newest first. Every filter is validated (ULID shape, known outcome, limit)
 * before any SQL: PHG_ERR_INVALID, with why in err. *rows is freed with
 * phg_audit_rows_free.
 */
PHG_API phg_status phg_audit_query(phg_store *store, const phg_audit_filter *filter,
                                   phg_audit_row **rows, size_t *n, char *err, size_t err_len);
PHG_API void phg_audit_rows_free(phg_audit_row *rows, size_t n);

typedef struct phg_audit_verify_report {
    uint64_t records, chains, checkpoints;
    int ok;                        /* 1 if nothing is wrong */
    char chain[PHG_AUDIT_CHAIN_MAX + 1];
    int64_t seq;                   /* where the first problem is */
    char id[PHG_ULID_LEN + 1];
    char problem[256];             /* "record edited", "record missing", ... */
} phg_audit_verify_report;

/*
 * Walk every chain (records with ts in [from_us, to_us), 0: open) and every
 * checkpoint; stop at the first broken link and describe it. PHG_OK with
 * report->ok 0 when tampering is found; other codes for failures to read.
 */
PHG_API phg_status phg_audit_verify(phg_store *store, const uint8_t key[32], int64_t from_us,
                                    int64_t to_us, phg_audit_verify_report *report);

/*
 * phg_audit_verify with the checkpoint key of every master key of mk (the
 * first signs; all verify): checkpoints signed before a master-key rotation
 * still verify while the old key is listed.
 */
PHG_API phg_status phg_audit_verify_mk(phg_store *store, const phg_masterkeys *mk,
                                       int64_t from_us, int64_t to_us,
                                       phg_audit_verify_report *report);

/* ---- partitions and retention ------------------------------------------------------ */

/* Create the partitions for the month of `now_s` and the next (idempotent). */
PHG_API phg_status phg_audit_prepare_partitions(phg_store *store, int64_t now_s);

/*
 * Write the partition of month "YYYY-MM" to `path` as gzip-compressed JSONL
 * (one stored record per line, oldest first) and `path`.sha256 (a manifest:
 * the SHA-256 of the compressed file, record count, first and last id), then
 * mark the partition archived in the store. Refuses the current month.
 */
PHG_API phg_status phg_audit_archive(phg_store *store, const char *month, const char *path,
                                     char *err, size_t err_len);

/*
 * Drop archived partitions older than the retention period (six years) as of
 * now_s. *dropped receives how many. A partition that is not archived, or is
 * younger, is never dropped.
 */
PHG_API phg_status phg_audit_prune(phg_store *store, int64_t now_s, size_t *dropped, char *err,
                                   size_t err_len);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_AUDIT_H */
