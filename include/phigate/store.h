/*
 * phigate/store.h: the storage layer. One interface, two engines chosen by
 * URL:
 *
 *   sqlite:PATH               embedded default (WAL, busy timeout), e.g.
 *                             sqlite:./var/phigate.db
 *   postgres://USER@HOST:PORT/DB?...   (or postgresql://) production, libpq
 *
 * The store owns a small pool of engine connections; every function here is
 * thread-safe and may be called from any thread. Calls block (SQL, fsync):
 * never call them on an event loop.
 *
 * Schema: numbered migrations per engine (migrations/<engine>/NNNN_name.sql),
 * embedded in the binary. phg_store_migrate applies the missing ones, each in
 * its own transaction, and records each version; a database whose version is
 * newer than this build knows is refused (PHG_ERR_SCHEMA) by every call.
 *
 * Only prepared statements with bound parameters are used; no SQL is ever
 * built from a caller's string.
 *
 * Design: DESIGN.md ("Storage"); the tables are in migrations/.
 */
#ifndef PHIGATE_STORE_H
#define PHIGATE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_STORE_URL_MAX 4096
#define PHG_STORE_DEFAULT_URL "sqlite:./var/phigate.db"
#define PHG_STORE_ERR_MAX 256 /* size of the err buffers below */

typedef struct phg_store phg_store;

typedef struct phg_store_options {
    size_t pool_size;       /* connections; default 4 */
    int busy_timeout_ms;    /* SQLite busy timeout; default 5000 */
    int connect_timeout_s;  /* PostgreSQL connect timeout; default 5 */
} phg_store_options;

PHG_API void phg_store_options_init(phg_store_options *opts);

/*
 * Open a store. Does not create or migrate the schema (see phg_store_migrate),
 * but checks that the database can be reached: PHG_ERR_INVALID for a URL that
 * does not parse (err says why), PHG_ERR_UNAVAILABLE if the server cannot be
 * reached or the file cannot be opened. err (may be NULL) receives a message
 * of at most err_len bytes with no password in it. opts may be NULL.
 * Free with phg_store_close().
 */
PHG_API PHG_WARN_UNUSED phg_status phg_store_open(const char *url,
                                                  const phg_store_options *opts,
                                                  phg_store **out, char *err, size_t err_len);

/* Close every connection and free. NULL is a no-op. */
PHG_API void phg_store_close(phg_store *store);

/* "sqlite" or "postgres". */
PHG_API const char *phg_store_engine_name(const phg_store *store);

/*
 * A store URL with the password of its user info and of any "password="
 * query parameter replaced by "***", for messages and configuration dumps.
 * Heap memory the caller frees with free(); NULL when out of memory.
 */
PHG_API char *phg_store_redact_url(const char *url);

/* The URL with any password replaced by "***", for messages. Static per store. */
PHG_API const char *phg_store_display_url(const phg_store *store);

/*
 * Where the schema stands: *current is the version recorded in the database
 * (0 for an empty one), *latest the newest this build knows.
 */
PHG_API phg_status phg_store_schema_version(phg_store *store, int *current, int *latest);

/*
 * Apply every missing migration, oldest first, each in one transaction that
 * also records its version. Idempotent. PHG_ERR_SCHEMA (and nothing changed)
 * if the database is newer than this build. On a failing step that step is
 * rolled back, the earlier ones stay, and err says which step failed.
 * *from and *to (may be NULL) receive the range this call applied: steps
 * from+1 .. to (from == to: nothing to do, both the current version). With
 * several migrators at once each step is applied by exactly one of them.
 */
PHG_API phg_status phg_store_migrate(phg_store *store, int *from, int *to, char *err,
                                     size_t err_len);

/* ---- the PHI keyring, kept in the store ---------------------------------- */

/*
 * The keyring's JSON text (docs/formats.md "Keyring file"); *json is a heap
 * string the caller frees with free(). PHG_ERR_NOT_FOUND if none is stored.
 */
PHG_API phg_status phg_store_keyring_get(phg_store *store, char **json, size_t *len);

/* Store (insert or replace) the keyring's JSON text, atomically. */
PHG_API phg_status phg_store_keyring_put(phg_store *store, const char *json, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_STORE_H */
