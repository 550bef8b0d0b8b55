/*
 * store_internal.h: what store.c offers the other library modules (API keys
 * now; the audit log and the webhook inbox later) and not the public: the
 * embedded migrations and typed operations on api_keys, each run on a pooled
 * connection of the store's engine.
 */
#ifndef PHG_STORE_INTERNAL_H
#define PHG_STORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/apikey.h"
#include "phigate/store.h"
#include "store/engine.h"

typedef struct phg_migration {
    int version;
    const char *name;
    const char *sql;
} phg_migration;

/* Generated from migrations/ at build time (migrations_gen.c). */
extern const phg_migration phg_migrations_sqlite[];
extern const int phg_migrations_sqlite_count;
extern const phg_migration phg_migrations_postgres[];
extern const int phg_migrations_postgres_count;

/* Apply an explicit list of steps (tests use this to inject a failing step). */
phg_status phg_internal_store_migrate_steps(phg_store *store, const phg_migration *steps,
                                            int count, int *from, int *to, char *err,
                                            size_t err_len);

phg_status phg_internal_store_key_insert(phg_store *store, const phg_apikey_record *rec);
phg_status phg_internal_store_key_get(phg_store *store, const char *id, phg_apikey_record *rec);
phg_status phg_internal_store_key_by_index(phg_store *store, int64_t index,
                                           phg_apikey_record **out, size_t *n);
phg_status phg_internal_store_key_list(phg_store *store, const char *after, size_t limit,
                                       phg_apikey_record **out, size_t *n);
phg_status phg_internal_store_key_revoke(phg_store *store, const char *id, int64_t at);
phg_status phg_internal_store_key_set_limit(phg_store *store, const char *id,
                                            const char *rate_limit,
                                            char old_limit[PHG_APIKEY_LIMIT_MAX + 1],
                                            phg_apikey_record *rec);
phg_status phg_internal_store_key_rotate(phg_store *store, const char *old_id,
                                         int64_t grace_until, const phg_apikey_record *fresh);
phg_status phg_internal_store_key_touch(phg_store *store, const char *const *ids,
                                        const int64_t *ts, size_t n);
phg_status phg_internal_store_change_counter(phg_store *store, int64_t *counter);
phg_status phg_internal_store_keys_since(phg_store *store, int64_t since, phg_key_cb cb,
                                         void *arg);

/* The audit engine calls on a pooled connection (see engine.h). */
phg_status phg_internal_store_audit_ensure_partition(phg_store *store, int year, int month);
phg_status phg_internal_store_audit_append(phg_store *store, const phg_audit_store_row *rows,
                                           size_t n, const char *chain, int64_t head_seq,
                                           const char *head_hash);
phg_status phg_internal_store_audit_checkpoint_insert(phg_store *store,
                                                      const phg_audit_checkpoint *cp);
phg_status phg_internal_store_audit_chain_head(phg_store *store, const char *chain,
                                               int64_t *seq, char hash[65]);
phg_status phg_internal_store_audit_chains(phg_store *store, phg_audit_checkpoint_cb cb,
                                           void *arg);
phg_status phg_internal_store_audit_walk(phg_store *store, const char *chain, int64_t from_us,
                                         int64_t to_us, phg_audit_row_cb cb, void *arg);
phg_status phg_internal_store_audit_checkpoints(phg_store *store, const char *chain,
                                                phg_audit_checkpoint_cb cb, void *arg);
phg_status phg_internal_store_audit_query(phg_store *store, const phg_audit_store_filter *f,
                                          phg_audit_store_row **rows, size_t *n);
phg_status phg_internal_store_audit_partitions(phg_store *store, phg_audit_partition **parts,
                                               size_t *n);
phg_status phg_internal_store_audit_partition_rows(phg_store *store, int year, int month,
                                                   phg_audit_row_cb cb, void *arg);
phg_status phg_internal_store_audit_mark_archived(phg_store *store, int year, int month,
                                                  const char *sha256_hex, int64_t at);
phg_status phg_internal_store_audit_drop_partition(phg_store *store, int year, int month,
                                                   int64_t at);

/* Webhook sources (webhook_store.c); see engine.h. */
phg_status phg_internal_store_wh_source_insert(phg_store *store, const phg_wh_source_row *src,
                                               const phg_wh_secret_row *secrets, size_t n);
phg_status phg_internal_store_wh_source_get(phg_store *store, const char *name,
                                            phg_wh_source_row *src, phg_wh_secret_row **secrets,
                                            size_t *n);
phg_status phg_internal_store_wh_source_list(phg_store *store, phg_wh_source_row **out,
                                             size_t *n);
phg_status phg_internal_store_wh_source_delete(phg_store *store, const char *name);
phg_status phg_internal_store_wh_secret_add(phg_store *store, const char *name,
                                            const phg_wh_secret_row *sec, size_t max_active,
                                            int64_t *idx);
phg_status phg_internal_store_wh_secret_retire(phg_store *store, const char *name, int64_t idx,
                                               int64_t at);

/* Run fn(engine, conn, arg) on a pooled connection of a store whose schema
 * this build understands, and return what fn returns (or the pool's
 * failure). For a module that calls its own part of the engine table (the
 * webhook inbox, webhook_inbox.c). */
typedef phg_status (*phg_store_conn_fn)(const phg_store_engine *engine, void *conn, void *arg);
phg_status phg_internal_store_with_conn(phg_store *store, phg_store_conn_fn fn, void *arg);

/* apikey.c: put a record in the in-memory index only (benchmarks load a
 * million keys this way), and the key hash through the per-thread context. */
phg_status phg_internal_keys_index_add(phg_keys *keys, const phg_apikey_record *rec);
phg_status phg_internal_apikey_hash(const char *key, size_t len, uint8_t out[32]);

#endif
