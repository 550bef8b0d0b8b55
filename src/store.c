/*
 * store.c: the storage layer's front: URL parsing, the engine table, a small
 * pool of engine connections, the migration runner, and the typed operations
 * the other modules use (store_internal.h). The SQL lives in the engines
 * (src/store/) and in migrations/; nothing here builds SQL.
 *
 * Why a pool: an engine connection (a sqlite3 handle, a PGconn) may only be
 * used by one thread at a time. Callers take any free connection for one
 * operation and give it back; a pool of a few covers the worker threads
 * without a connection per request.
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "phigate/store.h"
#include "store_internal.h"

typedef struct pooled {
    void *conn; /* NULL until first used, or after a failed connect */
    int busy;
} pooled;

struct phg_store {
    const phg_store_engine *engine;
    char *target;      /* what the engine connects to */
    char *display_url; /* the URL without its password */
    phg_store_options opts;
    const phg_migration *migrations;
    int latest;
    atomic_int newer_schema; /* the database is newer than this build: refuse work (read by
                              * every thread, set by the one that looks) */
    pthread_mutex_t lock;
    pthread_cond_t freed;
    size_t npool;
    pooled pool[];
};

void phg_store_options_init(phg_store_options *opts)
{
    assert(opts != NULL);
    memset(opts, 0, sizeof *opts);
    opts->pool_size = 4;
    opts->busy_timeout_ms = 5000;
    opts->connect_timeout_s = 5;
}

/* The column text of a role, or NULL for a value that is not a role. */
const char *phg_internal_role_text(phg_role role)
{
    switch (role) {
    case PHG_ROLE_USER: return "user";
    case PHG_ROLE_ADMIN: return "admin";
    }
    return NULL;
}

/* 1 and *role for "user" or "admin", 0 for anything else. */
int phg_internal_role_from_text(const char *text, phg_role *role)
{
    if (strcmp(text, "user") == 0)
        *role = PHG_ROLE_USER;
    else if (strcmp(text, "admin") == 0)
        *role = PHG_ROLE_ADMIN;
    else
        return 0;
    return 1;
}

static void set_err(char *err, size_t len, const char *msg)
{
    if (err != NULL && len > 0)
        snprintf(err, len, "%s", msg);
}

/*
 * The URL for messages: the password of the user info and of any
 * "password=" query parameter replaced by ***.
 *   postgres://u:secret@host/db?sslmode=x&password=y -> postgres://u:***@host/db?sslmode=x&password=***
 */
char *phg_store_redact_url(const char *url)
{
    size_t n = strlen(url), i = 0, o = 0;
    const char *scheme_end = strstr(url, "://"), *at = NULL, *colon = NULL, *query;
    char *out = malloc(n + 4 * (n / 9 + 2) + 1);

    if (out == NULL)
        return NULL;
    if (scheme_end != NULL) {
        /* the authority ends at '/', '?' or '#' (RFC 3986); the last '@'
         * in it ends the user info */
        const char *c, *end = scheme_end + 3 + strcspn(scheme_end + 3, "/?#");
        for (c = scheme_end + 3; c < end; c++) {
            if (*c == '@')
                at = c;
        }
        if (at != NULL)
            colon = memchr(scheme_end + 3, ':', (size_t)(at - (scheme_end + 3)));
    }
    query = strchr(url, '?');
    while (i < n) {
        if (colon != NULL && url + i == colon) {
            memcpy(out + o, ":***", 4);
            o += 4;
            i = (size_t)(at - url);
            continue;
        }
        if (query != NULL && url + i > query && (url[i - 1] == '?' || url[i - 1] == '&') &&
            strncasecmp(url + i, "password=", 9) == 0) {
            memcpy(out + o, "password=***", 12);
            o += 12;
            i += 9;
            while (i < n && url[i] != '&')
                i++;
            continue;
        }
        out[o++] = url[i++];
    }
    out[o] = '\0';
    return out;
}

static int has_control_chars(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    }
    return 0;
}

phg_status phg_store_open(const char *url, const phg_store_options *opts, phg_store **out,
                          char *err, size_t err_len)
{
    phg_store_options defaults;
    const phg_store_engine *engine = NULL;
    const char *target = NULL;
    phg_store *st = NULL;
    phg_status rc;
    size_t n;
    int version = 0;

    assert(out != NULL);
    *out = NULL;
    if (opts == NULL) {
        phg_store_options_init(&defaults);
        opts = &defaults;
    }
    if (url == NULL || url[0] == '\0') {
        set_err(err, err_len, "empty store URL");
        return PHG_ERR_INVALID;
    }
    if (strlen(url) > PHG_STORE_URL_MAX || has_control_chars(url)) {
        set_err(err, err_len, "store URL is too long or has control characters");
        return PHG_ERR_INVALID;
    }
    if (strncmp(url, "sqlite:", 7) == 0) {
        engine = &phg_store_engine_sqlite;
        target = url + 7;
        if (strncmp(target, "//", 2) == 0) {
            set_err(err, err_len, "store URL: write sqlite:PATH (for example "
                                  "sqlite:./var/phigate.db), not sqlite://");
            return PHG_ERR_INVALID;
        }
        if (target[0] == '\0') {
            set_err(err, err_len, "store URL: sqlite: needs a file path");
            return PHG_ERR_INVALID;
        }
    } else if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0) {
        engine = &phg_store_engine_postgres;
        target = url;
        if (strchr(url, ' ') != NULL) {
            set_err(err, err_len, "store URL: spaces are not allowed in a postgres URL");
            return PHG_ERR_INVALID;
        }
    } else {
        set_err(err, err_len, "store URL: unknown scheme (expected sqlite:PATH or "
                              "postgres://USER@HOST:PORT/DB)");
        return PHG_ERR_INVALID;
    }
    n = opts->pool_size ? opts->pool_size : 1;
    if (n > 64)
        n = 64;
    st = calloc(1, sizeof *st + n * sizeof(pooled));
    if (st == NULL)
        return PHG_ERR_NOMEM;
    st->engine = engine;
    st->opts = *opts;
    st->npool = n;
    st->target = strdup(target);
    st->display_url = phg_store_redact_url(url);
    pthread_mutex_init(&st->lock, NULL);
    pthread_cond_init(&st->freed, NULL);
    if (st->target == NULL || st->display_url == NULL) {
        phg_store_close(st);
        return PHG_ERR_NOMEM;
    }
    if (engine == &phg_store_engine_sqlite) {
        st->migrations = phg_migrations_sqlite;
        st->latest = phg_migrations_sqlite_count;
    } else {
        st->migrations = phg_migrations_postgres;
        st->latest = phg_migrations_postgres_count;
    }
    /* Connect once now, so that an unreachable store fails at start. */
    rc = engine->connect(st->target, &st->opts, &st->pool[0].conn, err, err_len);
    if (rc != PHG_OK) {
        st->pool[0].conn = NULL;
        phg_store_close(st);
        return rc;
    }
    rc = engine->schema_version(st->pool[0].conn, &version);
    if (rc != PHG_OK) {
        set_err(err, err_len, "cannot read the schema version");
        phg_store_close(st);
        return rc;
    }
    atomic_store(&st->newer_schema, version > st->latest);
    *out = st;
    return PHG_OK;
}

void phg_store_close(phg_store *st)
{
    size_t i;
    if (st == NULL)
        return;
    for (i = 0; i < st->npool; i++) {
        if (st->pool[i].conn != NULL)
            st->engine->disconnect(st->pool[i].conn);
    }
    pthread_cond_destroy(&st->freed);
    pthread_mutex_destroy(&st->lock);
    free(st->target);
    free(st->display_url);
    free(st);
}

const char *phg_store_engine_name(const phg_store *st)
{
    return st->engine->name;
}

const char *phg_store_display_url(const phg_store *st)
{
    return st->display_url;
}

/* Take a free connection, connecting it if needed. */
static phg_status acquire(phg_store *st, pooled **out)
{
    pooled *p = NULL;
    size_t i;
    phg_status rc = PHG_OK;

    pthread_mutex_lock(&st->lock);
    for (;;) {
        /* Prefer a connected one. */
        for (i = 0; i < st->npool && p == NULL; i++) {
            if (!st->pool[i].busy && st->pool[i].conn != NULL)
                p = &st->pool[i];
        }
        for (i = 0; i < st->npool && p == NULL; i++) {
            if (!st->pool[i].busy)
                p = &st->pool[i];
        }
        if (p != NULL)
            break;
        pthread_cond_wait(&st->freed, &st->lock);
    }
    p->busy = 1;
    pthread_mutex_unlock(&st->lock);
    if (p->conn == NULL) {
        rc = st->engine->connect(st->target, &st->opts, &p->conn, NULL, 0);
        if (rc != PHG_OK) {
            p->conn = NULL;
            pthread_mutex_lock(&st->lock);
            p->busy = 0;
            pthread_cond_signal(&st->freed);
            pthread_mutex_unlock(&st->lock);
            return rc;
        }
    }
    *out = p;
    return PHG_OK;
}

static void release(phg_store *st, pooled *p)
{
    pthread_mutex_lock(&st->lock);
    p->busy = 0;
    pthread_cond_signal(&st->freed);
    pthread_mutex_unlock(&st->lock);
}

/* Run `expr` (which may use `conn`) on a pooled connection of a store whose
 * schema this build understands. */
#define ON_CONN(st, expr)                                                                        \
    do {                                                                                         \
        pooled *p_ = NULL;                                                                       \
        void *conn;                                                                              \
        if (atomic_load(&(st)->newer_schema))                                                    \
            return PHG_ERR_SCHEMA;                                                               \
        rc = acquire((st), &p_);                                                                 \
        if (rc != PHG_OK)                                                                        \
            return rc;                                                                           \
        conn = p_->conn;                                                                         \
        rc = (expr);                                                                             \
        release((st), p_);                                                                       \
    } while (0)

phg_status phg_store_schema_version(phg_store *st, int *current, int *latest)
{
    pooled *p = NULL;
    phg_status rc;
    int v = 0;
    assert(st != NULL);
    rc = acquire(st, &p);
    if (rc != PHG_OK)
        return rc;
    rc = st->engine->schema_version(p->conn, &v);
    release(st, p);
    if (rc == PHG_OK) {
        atomic_store(&st->newer_schema, v > st->latest);
        if (current != NULL)
            *current = v;
        if (latest != NULL)
            *latest = st->latest;
    }
    return rc;
}

phg_status phg_internal_store_migrate_steps(phg_store *st, const phg_migration *steps, int count,
                                            int *from, int *to, char *err, size_t err_len)
{
    pooled *p = NULL;
    phg_status rc;
    int v = 0, i, applied = 0, first_applied = 0, last_applied = 0;
    char step_err[PHG_STORE_ERR_MAX];

    assert(st != NULL && (steps != NULL || count == 0));
    rc = acquire(st, &p);
    if (rc != PHG_OK) {
        set_err(err, err_len, "cannot connect to the store");
        return rc;
    }
    rc = st->engine->schema_version(p->conn, &v);
    if (rc != PHG_OK) {
        set_err(err, err_len, "cannot read the schema version");
        goto out;
    }
    if (v > count) {
        if (err != NULL && err_len > 0)
            snprintf(err, err_len,
                     "the database schema is version %d, newer than this build knows (%d): "
                     "refusing to touch it; upgrade phigate",
                     v, count);
        atomic_store(&st->newer_schema, 1);
        rc = PHG_ERR_SCHEMA;
        goto out;
    }
    for (i = v; i < count; i++) {
        assert(steps[i].version == i + 1);
        step_err[0] = '\0';
        rc = st->engine->apply_migration(p->conn, steps[i].version, steps[i].sql, &applied,
                                         step_err, sizeof step_err);
        if (rc != PHG_OK) {
            if (err != NULL && err_len > 0)
                snprintf(err, err_len, "migration %d (%s) failed and was rolled back: %s",
                         steps[i].version, steps[i].name, step_err);
            goto out;
        }
        if (applied && first_applied == 0)
            first_applied = steps[i].version;
        if (applied)
            last_applied = steps[i].version;
        v = steps[i].version;
    }
    rc = PHG_OK;
out:
    /* Report what this call did: another process may have applied some or
     * all of the steps while this one waited for the migration lock, so
     * [from, to] is the range this call applied (from == to: none). */
    if (from != NULL)
        *from = first_applied ? first_applied - 1 : v;
    if (to != NULL)
        *to = last_applied ? last_applied : v;
    release(st, p);
    return rc;
}

phg_status phg_store_migrate(phg_store *st, int *from, int *to, char *err, size_t err_len)
{
    assert(st != NULL);
    return phg_internal_store_migrate_steps(st, st->migrations, st->latest, from, to, err,
                                            err_len);
}

phg_status phg_store_keyring_get(phg_store *st, char **json, size_t *len)
{
    phg_status rc;
    assert(st != NULL && json != NULL);
    ON_CONN(st, st->engine->keyring_get(conn, json, len));
    return rc;
}

phg_status phg_store_keyring_put(phg_store *st, const char *json, size_t len)
{
    phg_status rc;
    assert(st != NULL && json != NULL);
    ON_CONN(st, st->engine->keyring_put(conn, json, len));
    return rc;
}

phg_status phg_internal_store_key_insert(phg_store *st, const phg_apikey_record *rec)
{
    phg_status rc;
    ON_CONN(st, st->engine->key_insert(conn, rec));
    return rc;
}

phg_status phg_internal_store_key_get(phg_store *st, const char *id, phg_apikey_record *rec)
{
    phg_status rc;
    ON_CONN(st, st->engine->key_get(conn, id, rec));
    return rc;
}

phg_status phg_internal_store_key_by_index(phg_store *st, int64_t index, phg_apikey_record **out,
                                           size_t *n)
{
    phg_status rc;
    ON_CONN(st, st->engine->key_by_index(conn, index, out, n));
    return rc;
}

phg_status phg_internal_store_key_list(phg_store *st, const char *after, size_t limit,
                                       phg_apikey_record **out, size_t *n)
{
    phg_status rc;
    if (limit < 1 || limit > 1000)
        return PHG_ERR_INVALID;
    ON_CONN(st, st->engine->key_list(conn, after ? after : "", limit, out, n));
    return rc;
}

phg_status phg_internal_store_key_revoke(phg_store *st, const char *id, int64_t at)
{
    phg_status rc;
    ON_CONN(st, st->engine->key_revoke(conn, id, at));
    return rc;
}

phg_status phg_internal_store_key_set_limit(phg_store *st, const char *id, const char *rate_limit,
                                            char old_limit[PHG_APIKEY_LIMIT_MAX + 1],
                                            phg_apikey_record *rec)
{
    phg_status rc;
    ON_CONN(st, st->engine->key_set_limit(conn, id, rate_limit, old_limit, rec));
    return rc;
}

phg_status phg_internal_store_key_rotate(phg_store *st, const char *old_id, int64_t grace_until,
                                         const phg_apikey_record *fresh)
{
    phg_status rc;
    ON_CONN(st, st->engine->key_rotate(conn, old_id, grace_until, fresh));
    return rc;
}

phg_status phg_internal_store_key_touch(phg_store *st, const char *const *ids, const int64_t *ts,
                                        size_t n)
{
    phg_status rc;
    if (n == 0)
        return PHG_OK;
    ON_CONN(st, st->engine->key_touch(conn, ids, ts, n));
    return rc;
}

phg_status phg_internal_store_change_counter(phg_store *st, int64_t *counter)
{
    phg_status rc;
    ON_CONN(st, st->engine->change_counter(conn, counter));
    return rc;
}

phg_status phg_internal_store_keys_since(phg_store *st, int64_t since, phg_key_cb cb, void *arg)
{
    phg_status rc;
    ON_CONN(st, st->engine->keys_since(conn, since, cb, arg));
    return rc;
}

/* ---- audit ------------------------------------------------------------------------ */

phg_status phg_internal_store_audit_ensure_partition(phg_store *st, int year, int month)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_ensure_partition(conn, year, month));
    return rc;
}

phg_status phg_internal_store_audit_append(phg_store *st, const phg_audit_store_row *rows,
                                           size_t n, const char *chain, int64_t head_seq,
                                           const char *head_hash)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_append(conn, rows, n, chain, head_seq, head_hash));
    return rc;
}

phg_status phg_internal_store_audit_checkpoint_insert(phg_store *st,
                                                      const phg_audit_checkpoint *cp)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_checkpoint_insert(conn, cp));
    return rc;
}

phg_status phg_internal_store_audit_chain_head(phg_store *st, const char *chain, int64_t *seq,
                                               char hash[65])
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_chain_head(conn, chain, seq, hash));
    return rc;
}

phg_status phg_internal_store_audit_chains(phg_store *st, phg_audit_checkpoint_cb cb, void *arg)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_chains(conn, cb, arg));
    return rc;
}

phg_status phg_internal_store_audit_walk(phg_store *st, const char *chain, int64_t from_us,
                                         int64_t to_us, phg_audit_row_cb cb, void *arg)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_walk(conn, chain, from_us, to_us, cb, arg));
    return rc;
}

phg_status phg_internal_store_audit_checkpoints(phg_store *st, const char *chain,
                                                phg_audit_checkpoint_cb cb, void *arg)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_checkpoints(conn, chain, cb, arg));
    return rc;
}

phg_status phg_internal_store_audit_query(phg_store *st, const phg_audit_store_filter *f,
                                          phg_audit_store_row **rows, size_t *n)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_query(conn, f, rows, n));
    return rc;
}

phg_status phg_internal_store_audit_partitions(phg_store *st, phg_audit_partition **parts,
                                               size_t *n)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_partitions(conn, parts, n));
    return rc;
}

phg_status phg_internal_store_audit_partition_rows(phg_store *st, int year, int month,
                                                   phg_audit_row_cb cb, void *arg)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_partition_rows(conn, year, month, cb, arg));
    return rc;
}

phg_status phg_internal_store_audit_mark_archived(phg_store *st, int year, int month,
                                                  const char *sha256_hex, int64_t at)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_mark_archived(conn, year, month, sha256_hex, at));
    return rc;
}

phg_status phg_internal_store_audit_drop_partition(phg_store *st, int year, int month,
                                                   int64_t at)
{
    phg_status rc;
    ON_CONN(st, st->engine->audit_drop_partition(conn, year, month, at));
    return rc;
}

/* ---- webhook sources --------------------------------------------------------------- */

phg_status phg_internal_store_wh_source_insert(phg_store *st, const phg_wh_source_row *src,
                                               const phg_wh_secret_row *secrets, size_t n)
{
    phg_status rc;
    assert(st != NULL && src != NULL && (n == 0 || secrets != NULL));
    ON_CONN(st, st->engine->wh_source_insert(conn, src, secrets, n));
    return rc;
}

phg_status phg_internal_store_wh_source_get(phg_store *st, const char *name,
                                            phg_wh_source_row *src, phg_wh_secret_row **secrets,
                                            size_t *n)
{
    phg_status rc;
    assert(st != NULL && name != NULL && src != NULL && n != NULL);
    ON_CONN(st, st->engine->wh_source_get(conn, name, src, secrets, n));
    return rc;
}

phg_status phg_internal_store_wh_source_list(phg_store *st, phg_wh_source_row **out, size_t *n)
{
    phg_status rc;
    assert(st != NULL && out != NULL && n != NULL);
    ON_CONN(st, st->engine->wh_source_list(conn, out, n));
    return rc;
}

phg_status phg_internal_store_wh_source_delete(phg_store *st, const char *name)
{
    phg_status rc;
    assert(st != NULL && name != NULL);
    ON_CONN(st, st->engine->wh_source_delete(conn, name));
    return rc;
}

phg_status phg_internal_store_wh_secret_add(phg_store *st, const char *name,
                                            const phg_wh_secret_row *sec, size_t max_active,
                                            int64_t *idx)
{
    phg_status rc;
    assert(st != NULL && name != NULL && sec != NULL && idx != NULL);
    ON_CONN(st, st->engine->wh_secret_add(conn, name, sec, max_active, idx));
    return rc;
}

phg_status phg_internal_store_wh_secret_retire(phg_store *st, const char *name, int64_t idx,
                                               int64_t at)
{
    phg_status rc;
    assert(st != NULL && name != NULL && at > 0);
    ON_CONN(st, st->engine->wh_secret_retire(conn, name, idx, at));
    return rc;
}

/* ---- any engine call ----------------------------------------------------------------- */

phg_status phg_internal_store_with_conn(phg_store *st, phg_store_conn_fn fn, void *arg)
{
    phg_status rc;
    assert(st != NULL && fn != NULL);
    ON_CONN(st, fn(st->engine, conn, arg));
    return rc;
}
