/*
 * tests/unit/test_audit.c: the audit log (include/phigate/audit.h) against
 * its contract and docs/formats.md "Audit record" / "Checkpoint": records
 * read back with every member, the hash chain recomputed here from the stored
 * bytes, the request context, group commit under 64 threads and async
 * appends, failing closed while the store cannot take records, resuming a
 * chain, tampering of every kind done behind the library's back (edit,
 * re-hashed edit, delete, insert, reorder, truncate, forged checkpoint), a
 * writer killed with SIGKILL, queries and their refusals, masking of details
 * (nothing planted reaches the database), and month partitions with archive
 * and retention.
 *
 * Every test runs once on SQLite and once on PostgreSQL (testdb.h). What is
 * not tested here: the masking rules one by one (test_audit_mask.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include "phigate/audit.h"
#include "phigate/crypto.h"
#include "phigate/phi.h"
#include "phigate/store.h"
#include "phigate/ulid.h"
#include "store_internal.h"
#include "testdb.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define EXPECT_RC(got, want)                                                                       \
    do {                                                                                           \
        phg_status got_ = (got), want_ = (want);                                                   \
        EXPECT(got_ == want_, "[%s] %s: got %s, want %s", tdb_engine_name(g_engine), #got,         \
               phg_status_name(got_), phg_status_name(want_));                                     \
    } while (0)

#define ENG tdb_engine_name(g_engine)
#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

static int g_pg_stopped; /* test_fail_closed stopped the fixture server: teardown restarts it */

/* ---- fixtures ------------------------------------------------------------------------ */

typedef struct fx {
    testdb db;
    phg_store *st;
    uint8_t key[32];
} fx;

static phg_store *open_store(const testdb *db, size_t pool)
{
    phg_store *st = NULL;
    char err[PHG_STORE_ERR_MAX];
    phg_status rc = tdb_open_store(db, pool, &st, err, sizeof err);
    EXPECT(rc == PHG_OK, "[%s] open %s: %s (%s)", tdb_engine_name(db->engine), db->url,
           phg_status_name(rc), err);
    return st;
}

/* The checkpoint key of a freshly generated master key. */
static void make_key(uint8_t key[32])
{
    char text[PHG_FERNET_KEY_TEXT_LEN + 1];
    phg_masterkeys *mk = NULL;
    uint8_t again[32];
    EXPECT_RC(phg_fernet_key_generate(text), PHG_OK);
    EXPECT_RC(phg_phi_masterkeys_parse(text, strlen(text), &mk), PHG_OK);
    EXPECT_RC(phg_audit_checkpoint_key(mk, key), PHG_OK);
    EXPECT_RC(phg_audit_checkpoint_key(mk, again), PHG_OK);
    EXPECT(memcmp(key, again, 32) == 0, "checkpoint key not deterministic");
    phg_phi_masterkeys_free(mk);
}

static int db_setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char err[PHG_STORE_ERR_MAX] = "";
    if (f == NULL)
        return -1;
    *state = f;
    tdb_create(&f->db, g_engine, "audit");
    f->st = open_store(&f->db, 4);
    EXPECT(phg_store_migrate(f->st, NULL, NULL, err, sizeof err) == PHG_OK, "migrate: %s", err);
    make_key(f->key);
    return 0;
}

static void pg_server(const char *verb)
{
    const char *srv = getenv("PHG_PG_SERVER"), *dir = getenv("PHG_TEST_PG_DIR");
    char cmd[2048];
    int rc;
    EXPECT(srv != NULL && dir != NULL,
           "FATAL: PHG_PG_SERVER and PHG_TEST_PG_DIR are required (run through ctest)");
    /* KEEP_PORT: the URL handed out before stays valid after a start. */
    snprintf(cmd, sizeof cmd, "KEEP_PORT=1 '%s' %s '%s' >/dev/null 2>&1", srv, verb, dir);
    rc = system(cmd);
    EXPECT(rc == 0, "%s: exit status %d", cmd, rc);
}

static int fx_teardown(void **state)
{
    fx *f = *state;
    if (g_pg_stopped) {
        pg_server("start");
        g_pg_stopped = 0;
    }
    if (f == NULL)
        return 0;
    phg_store_close(f->st);
    tdb_drop(&f->db);
    free(f);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------- */

static phg_audit *open_audit(fx *f, const char *chain, unsigned checkpoint_every)
{
    phg_audit_options o;
    phg_audit *a = NULL;
    phg_audit_options_init(&o);
    o.chain = chain;
    if (checkpoint_every != 0)
        o.checkpoint_every = checkpoint_every;
    EXPECT_RC(phg_audit_open(f->st, &o, f->key, &a), PHG_OK);
    EXPECT(a != NULL, "no writer");
    return a;
}

static phg_audit_event ev_of(const char *action, const char *outcome)
{
    phg_audit_event e;
    memset(&e, 0, sizeof e);
    e.action = action;
    e.outcome = outcome;
    return e;
}

static void append_ok(phg_audit *a, const phg_audit_event *e, char id[PHG_ULID_LEN + 1])
{
    char local[PHG_ULID_LEN + 1];
    phg_status rc = phg_audit_append(a, e, id != NULL ? id : local);
    EXPECT(rc == PHG_OK, "[%s] append %s: %s", ENG, e->action, phg_status_name(rc));
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void hex_of(const uint8_t in[32], char out[65])
{
    static const char digits[] = "0123456789abcdef";
    int i;
    for (i = 0; i < 32; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[64] = '\0';
}

/* hash = SHA-256(prev as 64 hex characters ‖ text), through phg_sha256. */
static void chain_hash(const char *prev, const char *text, char out[65])
{
    size_t n = strlen(text);
    uint8_t *buf = malloc(64 + n), d[32];
    EXPECT(buf != NULL && strlen(prev) == 64, "chain_hash");
    memcpy(buf, prev, 64);
    memcpy(buf + 64, text, n);
    EXPECT_RC(phg_sha256(buf, 64 + n, d), PHG_OK);
    free(buf);
    hex_of(d, out);
}

/* Rows of a walk, copied (json strdup'd). */
typedef struct rowvec {
    phg_audit_store_row *rows;
    size_t n, cap;
} rowvec;

static phg_status collect_row(void *arg, const phg_audit_store_row *row)
{
    rowvec *v = arg;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        phg_audit_store_row *g = realloc(v->rows, cap * sizeof *g);
        if (g == NULL)
            return PHG_ERR_NOMEM;
        v->rows = g;
        v->cap = cap;
    }
    v->rows[v->n] = *row;
    v->rows[v->n].json = strdup(row->json);
    if (v->rows[v->n].json == NULL)
        return PHG_ERR_NOMEM;
    v->n++;
    return PHG_OK;
}

static void rowvec_free(rowvec *v)
{
    size_t i;
    for (i = 0; i < v->n; i++)
        free(v->rows[i].json);
    free(v->rows);
    memset(v, 0, sizeof *v);
}

static rowvec walk_chain(fx *f, const char *chain)
{
    rowvec v = {NULL, 0, 0};
    EXPECT_RC(phg_internal_store_audit_walk(f->st, chain, 0, 0, collect_row, &v), PHG_OK);
    return v;
}

typedef struct cpvec {
    phg_audit_checkpoint items[256];
    size_t n;
} cpvec;

static phg_status collect_cp(void *arg, const phg_audit_checkpoint *cp)
{
    cpvec *v = arg;
    if (v->n == sizeof v->items / sizeof v->items[0])
        return PHG_ERR_TOO_LARGE;
    v->items[v->n++] = *cp;
    return PHG_OK;
}

static phg_audit_verify_report verify(fx *f, int64_t from_us, int64_t to_us)
{
    phg_audit_verify_report r;
    memset(&r, 0x55, sizeof r);
    EXPECT_RC(phg_audit_verify(f->st, f->key, from_us, to_us, &r), PHG_OK);
    return r;
}

static void expect_verify_ok(fx *f, uint64_t records, uint64_t chains, const char *what)
{
    phg_audit_verify_report r = verify(f, 0, 0);
    EXPECT(r.ok == 1, "[%s] %s: verify found '%s' at %s seq %lld", ENG, what, r.problem, r.chain,
           (long long)r.seq);
    EXPECT(r.records == records, "[%s] %s: verify counted %llu records, want %llu", ENG, what,
           (unsigned long long)r.records, (unsigned long long)records);
    EXPECT(r.chains == chains, "[%s] %s: verify counted %llu chains, want %llu", ENG, what,
           (unsigned long long)r.chains, (unsigned long long)chains);
}

static void expect_tampered(fx *f, const char *word, int64_t seq, const char *what)
{
    phg_audit_verify_report r = verify(f, 0, 0);
    EXPECT(r.ok == 0, "[%s] %s: not detected (verify ok, %llu records)", ENG, what,
           (unsigned long long)r.records);
    EXPECT(strstr(r.problem, word) != NULL, "[%s] %s: problem '%s' does not say '%s'", ENG, what,
           r.problem, word);
    EXPECT(strcmp(r.chain, "node-a") == 0, "[%s] %s: problem on chain '%s'", ENG, what, r.chain);
    if (seq >= 0)
        EXPECT(r.seq == seq, "[%s] %s: problem at seq %lld, want %lld ('%s')", ENG, what,
               (long long)r.seq, (long long)seq, r.problem);
    print_message("[%s] %s -> seq %lld: %s\n", ENG, what, (long long)r.seq, r.problem);
}

/* ---- direct SQL on the audit tables ------------------------------------------------------ */

/* The tables that hold records: SQLite's month tables, PostgreSQL's audit_log. */
static size_t record_tables(const testdb *db, char tables[][32], size_t max)
{
    sqlite3 *s = NULL;
    sqlite3_stmt *st = NULL;
    size_t n = 0;
    if (db->engine == TDB_POSTGRES) {
        snprintf(tables[0], 32, "audit_log");
        return 1;
    }
    EXPECT(sqlite3_open_v2(db->path, &s, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "open %s",
           db->path);
    EXPECT(sqlite3_prepare_v2(s,
                              "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB "
                              "'audit_[0-9][0-9][0-9][0-9]_[0-9][0-9]' ORDER BY name",
                              -1, &st, NULL) == SQLITE_OK,
           "list tables: %s", sqlite3_errmsg(s));
    while (sqlite3_step(st) == SQLITE_ROW && n < max)
        snprintf(tables[n++], 32, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(s);
    return n;
}

/* Run sql with every "{T}" replaced by each record table in turn. */
static void audit_exec(const fx *f, const char *sql)
{
    char tables[64][32], out[8192], err[512];
    size_t n = record_tables(&f->db, tables, 64), i;
    EXPECT(n > 0, "no record table");
    for (i = 0; i < n; i++) {
        const char *p = sql, *hit;
        size_t len = 0;
        while ((hit = strstr(p, "{T}")) != NULL) {
            len += (size_t)snprintf(out + len, sizeof out - len, "%.*s%s", (int)(hit - p), p,
                                    tables[i]);
            p = hit + 3;
        }
        snprintf(out + len, sizeof out - len, "%s", p);
        EXPECT(tdb_exec(&f->db, out, err, sizeof err) == 0, "[%s] %s: %s", ENG, out, err);
    }
}

static void plain_exec(const fx *f, const char *sql)
{
    char err[512];
    EXPECT(tdb_exec(&f->db, sql, err, sizeof err) == 0, "[%s] %s: %s", ENG, sql, err);
}

/* ---- 1. append and read back ------------------------------------------------------------- */

static const char *const RECORD_MEMBERS[] = {"action",  "actor",      "chain",    "details", "hash",
                                             "id",      "ip",         "outcome",  "prev",    "request_id",
                                             "resource", "seq",       "ts",       NULL};

static void check_ts_text(const char *ts, int64_t ts_us)
{
    char want[40];
    struct tm tm;
    time_t s = (time_t)(ts_us / 1000000);
    size_t n;
    gmtime_r(&s, &tm);
    n = strftime(want, sizeof want, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(want + n, sizeof want - n, ".%06dZ", (int)(ts_us % 1000000));
    EXPECT(strcmp(ts, want) == 0, "[%s] ts '%s', want '%s' (ts_us %lld)", ENG, ts, want,
           (long long)ts_us);
}

static void test_append_and_read(void **state)
{
    fx *f = *state;
    phg_audit *a = open_audit(f, "node-a", 0);
    char ids[100][PHG_ULID_LEN + 1], rids[100][PHG_ULID_LEN + 1];
    char key_id[100][32], user_id[100][32], res[100][64], details[100][64];
    phg_audit_filter q;
    phg_audit_row *rows = NULL;
    size_t n = 0, i, k;
    char err[256] = "";
    rowvec w;

    for (i = 0; i < 100; i++) {
        phg_audit_event e = ev_of(i % 2 ? "phi.decrypt" : "phi.encrypt", i % 3 ? "success" : "denied");
        EXPECT_RC(phg_ulid_new_text(rids[i]), PHG_OK);
        snprintf(key_id[i], sizeof key_id[i], "ak_key%03zu", i);
        snprintf(user_id[i], sizeof user_id[i], "user-%zu", i % 7);
        snprintf(res[i], sizeof res[i], "GET /v1/readings/%zu", i);
        snprintf(details[i], sizeof details[i], "{\"i\":%zu,\"route\":\"r%zu\"}", i, i);
        e.request_id = rids[i];
        e.key_id = key_id[i];
        e.user_id = user_id[i];
        e.role = i % 5 ? "user" : "admin";
        e.resource = res[i];
        e.ip = "192.0.2.7";
        e.details_json = details[i];
        append_ok(a, &e, ids[i]);
        EXPECT(phg_ulid_parse(ids[i], PHG_ULID_LEN, &(phg_ulid){0}) == PHG_OK, "id %s not a ULID",
               ids[i]);
        if (i > 0)
            EXPECT(strcmp(ids[i - 1], ids[i]) < 0, "[%s] ids not increasing: %s then %s", ENG,
                   ids[i - 1], ids[i]);
    }

    memset(&q, 0, sizeof q);
    q.limit = 1000;
    EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK, "[%s] query: %s", ENG,
           err);
    EXPECT(n == 100, "[%s] query returned %zu records, want 100", ENG, n);
    w = walk_chain(f, "node-a");
    EXPECT(w.n == 100, "[%s] walk returned %zu records", ENG, w.n);

    for (k = 0; k < n; k++) {
        size_t idx = 99 - k; /* newest first */
        json_t *o = json_loads(rows[k].json, 0, NULL), *actor, *stored, *copy;
        const char *prev_want = idx == 0 ? ZERO_HASH : w.rows[idx - 1].hash;
        char h[65];
        size_t m;
        EXPECT(o != NULL && json_is_object(o), "[%s] record %zu is not a JSON object: %s", ENG, k,
               rows[k].json);
        EXPECT(strcmp(rows[k].id, ids[idx]) == 0, "[%s] row %zu is %s, want %s (newest first)", ENG,
               k, rows[k].id, ids[idx]);
        for (m = 0; RECORD_MEMBERS[m] != NULL; m++)
            EXPECT(json_object_get(o, RECORD_MEMBERS[m]) != NULL, "[%s] member %s missing: %s", ENG,
                   RECORD_MEMBERS[m], rows[k].json);
        EXPECT(json_object_size(o) == m, "[%s] %zu members, want %zu: %s", ENG,
               json_object_size(o), m, rows[k].json);
        EXPECT(strcmp(json_string_value(json_object_get(o, "id")), ids[idx]) == 0, "id member");
        EXPECT(strcmp(json_string_value(json_object_get(o, "action")),
                      idx % 2 ? "phi.decrypt" : "phi.encrypt") == 0,
               "action");
        EXPECT(strcmp(json_string_value(json_object_get(o, "outcome")),
                      idx % 3 ? "success" : "denied") == 0,
               "outcome");
        EXPECT(strcmp(json_string_value(json_object_get(o, "chain")), "node-a") == 0, "chain");
        EXPECT(strcmp(json_string_value(json_object_get(o, "ip")), "192.0.2.7") == 0, "ip");
        EXPECT(strcmp(json_string_value(json_object_get(o, "request_id")), rids[idx]) == 0,
               "request_id");
        EXPECT(strcmp(json_string_value(json_object_get(o, "resource")), res[idx]) == 0,
               "resource");
        actor = json_object_get(o, "actor");
        EXPECT(json_object_size(actor) == 3, "[%s] actor has %zu members", ENG,
               json_object_size(actor));
        EXPECT(strcmp(json_string_value(json_object_get(actor, "key_id")), key_id[idx]) == 0,
               "key_id");
        EXPECT(strcmp(json_string_value(json_object_get(actor, "user_id")), user_id[idx]) == 0,
               "user_id");
        EXPECT(strcmp(json_string_value(json_object_get(actor, "role")),
                      idx % 5 ? "user" : "admin") == 0,
               "role");
        EXPECT(json_integer_value(json_object_get(json_object_get(o, "details"), "i")) ==
                   (json_int_t)idx,
               "[%s] details of %zu: %s", ENG, idx, rows[k].json);
        EXPECT(json_integer_value(json_object_get(o, "seq")) == (json_int_t)(idx + 1),
               "[%s] record %zu has seq %lld", ENG, idx,
               (long long)json_integer_value(json_object_get(o, "seq")));
        check_ts_text(json_string_value(json_object_get(o, "ts")), rows[k].ts_us);

        /* The stored record: the exact bytes that were hashed. */
        EXPECT(w.rows[idx].seq == (int64_t)(idx + 1), "[%s] walk position %zu has seq %lld", ENG,
               idx, (long long)w.rows[idx].seq);
        EXPECT(strcmp(w.rows[idx].id, ids[idx]) == 0, "walk id");
        EXPECT(strcmp(json_string_value(json_object_get(o, "prev")), prev_want) == 0,
               "[%s] prev of seq %zu is %s, want %s", ENG, idx + 1,
               json_string_value(json_object_get(o, "prev")), prev_want);
        EXPECT(strstr(w.rows[idx].json, "\"hash\"") == NULL, "[%s] stored text has a hash: %s",
               ENG, w.rows[idx].json);
        chain_hash(prev_want, w.rows[idx].json, h);
        EXPECT(strcmp(h, w.rows[idx].hash) == 0, "[%s] seq %zu: stored hash %s, recomputed %s",
               ENG, idx + 1, w.rows[idx].hash, h);
        EXPECT(strcmp(json_string_value(json_object_get(o, "hash")), h) == 0,
               "[%s] seq %zu: hash member %s, recomputed %s", ENG, idx + 1,
               json_string_value(json_object_get(o, "hash")), h);
        /* What the query hands out is the stored record plus its hash. */
        stored = json_loads(w.rows[idx].json, 0, NULL);
        copy = json_deep_copy(o);
        json_object_del(copy, "hash");
        EXPECT(stored != NULL && json_equal(stored, copy), "[%s] query record differs from stored",
               ENG);
        json_decref(stored);
        json_decref(copy);
        json_decref(o);
    }
    phg_audit_rows_free(rows, n);
    rowvec_free(&w);
    phg_audit_close(a);
    expect_verify_ok(f, 100, 1, "after 100 appends");
}

/* ---- 2. request context ----------------------------------------------------------------------- */

static void test_request_context(void **state)
{
    fx *f = *state;
    phg_audit *a = open_audit(f, "node-a", 0);
    phg_request_context ctx;
    phg_audit_event e = ev_of("phi.decrypt", "success");
    phg_audit_filter q;
    phg_audit_row *rows = NULL;
    size_t n = 0;
    char id[PHG_ULID_LEN + 1], id2[PHG_ULID_LEN + 1], id3[PHG_ULID_LEN + 1], err[256];
    json_t *o, *actor;

    memset(&ctx, 0, sizeof ctx);
    EXPECT_RC(phg_ulid_new_text(ctx.request_id), PHG_OK);
    snprintf(ctx.key_id, sizeof ctx.key_id, "ak_ctxkey");
    snprintf(ctx.user_id, sizeof ctx.user_id, "ctx-user");
    snprintf(ctx.role, sizeof ctx.role, "admin");
    snprintf(ctx.ip, sizeof ctx.ip, "198.51.100.9");
    phg_request_context_set(&ctx);
    append_ok(a, &e, id);
    /* An explicit field wins over the context. */
    e.user_id = "explicit-user";
    append_ok(a, &e, id2);
    phg_request_context_set(NULL);
    EXPECT(phg_request_context_get() == NULL, "context not cleared");
    e.user_id = NULL;
    append_ok(a, &e, id3);
    phg_audit_close(a);

    memset(&q, 0, sizeof q);
    q.limit = 10;
    q.request_id = ctx.request_id;
    EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK, "query: %s", err);
    EXPECT(n == 2, "[%s] %zu records with the context's request id, want 2", ENG, n);
    EXPECT(strcmp(rows[1].id, id) == 0 && strcmp(rows[0].id, id2) == 0, "ids");
    o = json_loads(rows[1].json, 0, NULL);
    actor = json_object_get(o, "actor");
    EXPECT(strcmp(json_string_value(json_object_get(o, "request_id")), ctx.request_id) == 0,
           "[%s] request_id not from the context: %s", ENG, rows[1].json);
    EXPECT(strcmp(json_string_value(json_object_get(actor, "key_id")), "ak_ctxkey") == 0,
           "[%s] key_id not from the context: %s", ENG, rows[1].json);
    EXPECT(strcmp(json_string_value(json_object_get(actor, "user_id")), "ctx-user") == 0,
           "[%s] user_id not from the context: %s", ENG, rows[1].json);
    EXPECT(strcmp(json_string_value(json_object_get(actor, "role")), "admin") == 0,
           "[%s] role not from the context: %s", ENG, rows[1].json);
    EXPECT(strcmp(json_string_value(json_object_get(o, "ip")), "198.51.100.9") == 0,
           "[%s] ip not from the context: %s", ENG, rows[1].json);
    json_decref(o);
    o = json_loads(rows[0].json, 0, NULL);
    EXPECT(strcmp(json_string_value(json_object_get(json_object_get(o, "actor"), "user_id")),
                  "explicit-user") == 0,
           "[%s] explicit user_id lost: %s", ENG, rows[0].json);
    json_decref(o);
    phg_audit_rows_free(rows, n);

    /* Without a context the fields are empty. */
    memset(&q, 0, sizeof q);
    q.limit = 1;
    EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK, "query: %s", err);
    EXPECT(n == 1 && strcmp(rows[0].id, id3) == 0, "newest");
    o = json_loads(rows[0].json, 0, NULL);
    EXPECT(strcmp(json_string_value(json_object_get(o, "request_id")), "") == 0 &&
               strcmp(json_string_value(json_object_get(json_object_get(o, "actor"), "user_id")),
                      "") == 0,
           "[%s] context leaked after clearing: %s", ENG, rows[0].json);
    json_decref(o);
    phg_audit_rows_free(rows, n);
    expect_verify_ok(f, 3, 1, "context");
}

/* ---- 3. group commit ----------------------------------------------------------------------------- */

#define GC_THREADS 64
#define GC_EACH 200

typedef struct gc_thread {
    phg_audit *a;
    int t;
    char (*ids)[PHG_ULID_LEN + 1];
    int failures;
    phg_status first_rc;
} gc_thread;

static void *gc_main(void *arg)
{
    gc_thread *g = arg;
    char user[32], details[64];
    int i;
    snprintf(user, sizeof user, "thread-%d", g->t);
    for (i = 0; i < GC_EACH; i++) {
        phg_audit_event e = ev_of("http.request", "success");
        phg_status rc;
        snprintf(details, sizeof details, "{\"t\":%d,\"i\":%d}", g->t, i);
        e.user_id = user;
        e.details_json = details;
        rc = phg_audit_append(g->a, &e, g->ids[i]);
        if (rc != PHG_OK) {
            if (g->failures++ == 0)
                g->first_rc = rc;
            g->ids[i][0] = '\0';
        }
    }
    return NULL;
}

static int cmp_id(const void *x, const void *y)
{
    return strcmp((const char *)x, (const char *)y);
}

typedef struct async_slot {
    struct async_state *s;
    size_t i;
} async_slot;

typedef struct async_state {
    pthread_mutex_t mu;
    size_t done, ok, repeated;
    int seen[512];
    char ids[512][PHG_ULID_LEN + 1];
    phg_status status[512];
} async_state;

static void async_done(void *arg, phg_status status, const char *id)
{
    async_slot *slot = arg;
    async_state *s = slot->s;
    pthread_mutex_lock(&s->mu);
    if (s->seen[slot->i]++)
        s->repeated++;
    s->status[slot->i] = status;
    snprintf(s->ids[slot->i], sizeof s->ids[slot->i], "%s", id != NULL ? id : "");
    if (status == PHG_OK)
        s->ok++;
    s->done++;
    pthread_mutex_unlock(&s->mu);
}

static void test_group_commit(void **state)
{
    fx *f = *state;
    phg_audit *a = open_audit(f, "node-a", 0);
    static char ids[GC_THREADS * GC_EACH][PHG_ULID_LEN + 1];
    static char stored[GC_THREADS * GC_EACH][PHG_ULID_LEN + 1];
    gc_thread g[GC_THREADS];
    pthread_t th[GC_THREADS];
    phg_audit_stats s0, s1;
    int64_t t0;
    size_t i, total = GC_THREADS * GC_EACH;
    rowvec w;
    async_state *as;
    async_slot slots[300];
    char rids[300][PHG_ULID_LEN + 1];

    phg_audit_get_stats(a, &s0);
    t0 = tdb_now_ms();
    for (i = 0; i < GC_THREADS; i++) {
        memset(&g[i], 0, sizeof g[i]);
        g[i].a = a;
        g[i].t = (int)i;
        g[i].ids = &ids[i * GC_EACH];
        EXPECT(pthread_create(&th[i], NULL, gc_main, &g[i]) == 0, "pthread_create");
    }
    for (i = 0; i < GC_THREADS; i++)
        pthread_join(th[i], NULL);
    phg_audit_get_stats(a, &s1);
    for (i = 0; i < GC_THREADS; i++)
        EXPECT(g[i].failures == 0, "[%s] thread %zu: %d appends failed, first %s", ENG, i,
               g[i].failures, phg_status_name(g[i].first_rc));
    print_message("[%s] %zu appends from %d threads in %lld ms, %llu commits\n", ENG, total,
                  GC_THREADS, (long long)(tdb_now_ms() - t0),
                  (unsigned long long)(s1.commits - s0.commits));
    EXPECT(s1.appended - s0.appended == total, "[%s] stats.appended %llu", ENG,
           (unsigned long long)(s1.appended - s0.appended));
    EXPECT((s1.commits - s0.commits) * 4 <= total,
           "[%s] %llu commits for %zu records: no group commit", ENG,
           (unsigned long long)(s1.commits - s0.commits), total);

    w = walk_chain(f, "node-a");
    EXPECT(w.n == total, "[%s] %zu records stored, want %zu", ENG, w.n, total);
    for (i = 0; i < w.n; i++) {
        EXPECT(w.rows[i].seq == (int64_t)i + 1, "[%s] position %zu has seq %lld", ENG, i,
               (long long)w.rows[i].seq);
        snprintf(stored[i], sizeof stored[i], "%s", w.rows[i].id);
    }
    rowvec_free(&w);
    qsort(ids, total, sizeof ids[0], cmp_id);
    qsort(stored, total, sizeof stored[0], cmp_id);
    for (i = 0; i < total; i++) {
        EXPECT(i == 0 || strcmp(ids[i - 1], ids[i]) != 0, "[%s] id %s handed out twice", ENG,
               ids[i]);
        EXPECT(strcmp(ids[i], stored[i]) == 0, "[%s] acknowledged %s, stored %s", ENG, ids[i],
               stored[i]);
    }

    /* Async: every callback fires once, with PHG_OK, and its id is then found. */
    as = calloc(1, sizeof *as);
    EXPECT(as != NULL, "calloc");
    pthread_mutex_init(&as->mu, NULL);
    for (i = 0; i < 300; i++) {
        phg_audit_event e = ev_of("phi.encrypt", "success");
        EXPECT_RC(phg_ulid_new_text(rids[i]), PHG_OK);
        e.request_id = rids[i];
        slots[i].s = as;
        slots[i].i = i;
        EXPECT_RC(phg_audit_append_async(a, &e, async_done, &slots[i]), PHG_OK);
    }
    t0 = tdb_now_ms();
    for (;;) {
        size_t done;
        pthread_mutex_lock(&as->mu);
        done = as->done;
        pthread_mutex_unlock(&as->mu);
        if (done >= 300 || tdb_now_ms() - t0 > 20000)
            break;
        tdb_sleep_ms(2);
    }
    pthread_mutex_lock(&as->mu);
    EXPECT(as->done == 300 && as->ok == 300 && as->repeated == 0,
           "[%s] async: %zu callbacks, %zu ok, %zu repeated (want 300, 300, 0)", ENG, as->done,
           as->ok, as->repeated);
    pthread_mutex_unlock(&as->mu);
    for (i = 0; i < 300; i++) {
        phg_audit_filter q;
        phg_audit_row *rows = NULL;
        size_t n = 0;
        char err[256];
        memset(&q, 0, sizeof q);
        q.limit = 5;
        q.request_id = rids[i];
        EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK, "query: %s",
               err);
        EXPECT(n == 1 && strcmp(rows[0].id, as->ids[i]) == 0,
               "[%s] async record %zu (%s) not found after its callback (%zu rows)", ENG, i,
               as->ids[i], n);
        phg_audit_rows_free(rows, n);
    }
    pthread_mutex_destroy(&as->mu);
    free(as);
    phg_audit_close(a);
    expect_verify_ok(f, total + 300, 1, "after group commit");
}

/* ---- 4. fail closed -------------------------------------------------------------------------------- */

static void fc_async_done(void *arg, phg_status status, const char *id)
{
    _Atomic int *out = arg;
    (void)id;
    atomic_store(out, (int)status + 1000);
}

static void test_fail_closed(void **state)
{
    fx *f = *state;
    phg_audit *a = open_audit(f, "node-a", 0);
    phg_audit_event e = ev_of("phi.decrypt", "success");
    phg_status down_rc[5], after_rc = PHG_ERR_UNAVAILABLE;
    _Atomic int async_rc = 0;
    phg_status async_enqueue;
    char id[PHG_ULID_LEN + 1];
    int i, attempts;
    int64_t t0;
    rowvec w;

    for (i = 0; i < 10; i++)
        append_ok(a, &e, id);

    /* Take the store away. Nothing below may fail the test until it is back. */
    if (g_engine == TDB_SQLITE) {
        plain_exec(f, "ALTER TABLE audit_chains RENAME TO audit_chains_away");
    } else {
        pg_server("stop");
        g_pg_stopped = 1;
    }
    for (i = 0; i < 5; i++) {
        memset(id, 0, sizeof id);
        down_rc[i] = phg_audit_append(a, &e, id);
    }
    async_enqueue = phg_audit_append_async(a, &e, fc_async_done, (void *)&async_rc);
    t0 = tdb_now_ms();
    while (async_enqueue == PHG_OK && atomic_load(&async_rc) == 0 && tdb_now_ms() - t0 < 20000)
        tdb_sleep_ms(2);
    if (g_engine == TDB_SQLITE) {
        plain_exec(f, "ALTER TABLE audit_chains_away RENAME TO audit_chains");
    } else {
        pg_server("start");
        g_pg_stopped = 0;
    }

    for (i = 0; i < 5; i++)
        EXPECT(down_rc[i] == PHG_ERR_UNAVAILABLE,
               "[%s] append %d while the store is away: %s, want unavailable", ENG, i,
               phg_status_name(down_rc[i]));
    EXPECT(async_enqueue != PHG_OK ||
               atomic_load(&async_rc) - 1000 == (int)PHG_ERR_UNAVAILABLE,
           "[%s] async append while the store is away: callback status %d", ENG,
           atomic_load(&async_rc) - 1000);

    /* Back: the first append may meet a broken pooled connection (PostgreSQL);
     * then it works. */
    for (attempts = 1; attempts <= 8; attempts++) {
        after_rc = phg_audit_append(a, &e, id);
        if (after_rc != PHG_ERR_UNAVAILABLE)
            break;
        tdb_sleep_ms(50);
    }
    EXPECT(after_rc == PHG_OK, "[%s] append after the store is back: %s after %d attempts", ENG,
           phg_status_name(after_rc), attempts);
    if (attempts > 1)
        print_message("[%s] %d attempts after the store came back\n", ENG, attempts);
    for (i = 0; i < 10; i++)
        append_ok(a, &e, NULL);
    phg_audit_close(a);

    w = walk_chain(f, "node-a");
    EXPECT(w.n == 21, "[%s] %zu records stored, want 21 (10 + 1 + 10)", ENG, w.n);
    for (i = 0; (size_t)i < w.n; i++)
        EXPECT(w.rows[i].seq == i + 1, "[%s] position %d has seq %lld: a gap", ENG, i,
               (long long)w.rows[i].seq);
    rowvec_free(&w);
    expect_verify_ok(f, 21, 1, "after the store came back");
}

/* ---- 5. resume ------------------------------------------------------------------------------------- */

static void test_resume(void **state)
{
    fx *f = *state;
    phg_audit_event e = ev_of("keys.create", "success");
    phg_audit *a, *b;
    cpvec cps;
    int64_t head_seq = 0;
    char head_hash[65];
    rowvec w;
    int i;

    a = open_audit(f, "node-a", 0);
    for (i = 0; i < 30; i++)
        append_ok(a, &e, NULL);
    phg_audit_close(a);
    memset(&cps, 0, sizeof cps);
    EXPECT_RC(phg_internal_store_audit_checkpoints(f->st, "node-a", collect_cp, &cps), PHG_OK);
    EXPECT_RC(phg_internal_store_audit_chain_head(f->st, "node-a", &head_seq, head_hash), PHG_OK);
    EXPECT(head_seq == 30, "[%s] head %lld, want 30", ENG, (long long)head_seq);
    EXPECT(cps.n == 1 && cps.items[0].seq == 30 && strcmp(cps.items[0].hash, head_hash) == 0,
           "[%s] no checkpoint of the final head at close (%zu checkpoints, last seq %lld)", ENG,
           cps.n, cps.n ? (long long)cps.items[cps.n - 1].seq : -1LL);

    /* Reopen, with a second chain written at the same time. */
    a = open_audit(f, "node-a", 0);
    b = open_audit(f, "node-b", 0);
    for (i = 0; i < 20; i++) {
        append_ok(a, &e, NULL);
        append_ok(b, &e, NULL);
    }
    phg_audit_close(a);
    phg_audit_close(b);
    w = walk_chain(f, "node-a");
    EXPECT(w.n == 50, "[%s] %zu records on node-a, want 50", ENG, w.n);
    for (i = 0; (size_t)i < w.n; i++)
        EXPECT(w.rows[i].seq == i + 1, "[%s] node-a position %d has seq %lld", ENG, i,
               (long long)w.rows[i].seq);
    rowvec_free(&w);
    w = walk_chain(f, "node-b");
    EXPECT(w.n == 20 && w.rows[0].seq == 1 && w.rows[19].seq == 20, "[%s] node-b", ENG);
    rowvec_free(&w);
    memset(&cps, 0, sizeof cps);
    EXPECT_RC(phg_internal_store_audit_checkpoints(f->st, "node-a", collect_cp, &cps), PHG_OK);
    EXPECT_RC(phg_internal_store_audit_chain_head(f->st, "node-a", &head_seq, head_hash), PHG_OK);
    EXPECT(cps.n == 2 && cps.items[1].seq == 50 && head_seq == 50 &&
               strcmp(cps.items[1].hash, head_hash) == 0,
           "[%s] checkpoints after the second close: %zu, last seq %lld", ENG, cps.n,
           cps.n ? (long long)cps.items[cps.n - 1].seq : -1LL);
    expect_verify_ok(f, 70, 2, "after resume");
    {
        phg_audit_verify_report r = verify(f, 0, 0);
        EXPECT(r.checkpoints == 3, "[%s] %llu checkpoints verified, want 3", ENG,
               (unsigned long long)r.checkpoints);
    }
    /* A different key: every checkpoint is refused. */
    {
        phg_audit_verify_report r;
        uint8_t other[32];
        make_key(other);
        EXPECT_RC(phg_audit_verify(f->st, other, 0, 0, &r), PHG_OK);
        EXPECT(r.ok == 0 && strstr(r.problem, "checkpoint") != NULL,
               "[%s] verify under another key: ok %d, '%s'", ENG, r.ok, r.problem);
    }
}

/* ---- 6. tampering ---------------------------------------------------------------------------------- */

/* 50 records on node-a with a checkpoint every 10 (10, 20, ..., 50). */
static void build_50(fx *f)
{
    phg_audit *a = open_audit(f, "node-a", 10);
    char details[64];
    int i;
    for (i = 1; i <= 50; i++) {
        phg_audit_event e = ev_of("phi.decrypt", "success");
        snprintf(details, sizeof details, "{\"step\":\"abcdef\",\"i\":%d}", i);
        e.details_json = details;
        e.user_id = "u1";
        append_ok(a, &e, NULL);
    }
    phg_audit_close(a);
}

static phg_audit_store_row row_at(fx *f, int64_t seq, char **json)
{
    rowvec w = walk_chain(f, "node-a");
    phg_audit_store_row r;
    size_t i;
    memset(&r, 0, sizeof r);
    for (i = 0; i < w.n; i++) {
        if (w.rows[i].seq == seq) {
            r = w.rows[i];
            *json = strdup(w.rows[i].json);
            break;
        }
    }
    rowvec_free(&w);
    EXPECT(r.seq == seq, "no row at seq %lld", (long long)seq);
    r.json = NULL;
    return r;
}

static void test_untampered(void **state)
{
    fx *f = *state;
    phg_audit_verify_report r;
    build_50(f);
    r = verify(f, 0, 0);
    EXPECT(r.ok == 1 && r.records == 50 && r.chains == 1 && r.checkpoints == 5,
           "[%s] untampered: ok %d, %llu records, %llu chains, %llu checkpoints ('%s')", ENG, r.ok,
           (unsigned long long)r.records, (unsigned long long)r.chains,
           (unsigned long long)r.checkpoints, r.problem);
    /* A window in the middle verifies too (its start is trusted). */
    {
        rowvec w = walk_chain(f, "node-a");
        int64_t from = w.rows[19].ts_us, to = w.rows[39].ts_us;
        rowvec_free(&w);
        r = verify(f, from, to);
        EXPECT(r.ok == 1, "[%s] window: '%s'", ENG, r.problem);
    }
}

static void test_tamper_edit(void **state)
{
    fx *f = *state;
    build_50(f);
    audit_exec(f, "UPDATE {T} SET record = replace(record, '\"step\":\"abcdef\"', "
                  "'\"step\":\"abcdeg\"') WHERE chain = 'node-a' AND seq = 20");
    expect_tampered(f, "edited", 20, "seq 20 edited");
}

/* The attacker also recomputes the hash of the edited row: the next row's
 * prev (or a checkpoint of that row) still disagrees. */
static void edit_rehash(fx *f, int64_t seq)
{
    char *json = NULL, *edited, *p, sql[4096], h[65];
    phg_audit_store_row prev_row = row_at(f, seq - 1, &json);
    free(json);
    (void)row_at(f, seq, &json);
    p = strstr(json, "abcdef");
    EXPECT(p != NULL, "details not found in %s", json);
    edited = strdup(json);
    edited[p - json + 5] = 'g';
    chain_hash(prev_row.hash, edited, h);
    snprintf(sql, sizeof sql,
             "UPDATE {T} SET record = '%s', hash = '%s' WHERE chain = 'node-a' AND seq = %lld",
             edited, h, (long long)seq);
    audit_exec(f, sql);
    free(json);
    free(edited);
}

static void test_tamper_edit_rehash(void **state)
{
    fx *f = *state;
    build_50(f);
    edit_rehash(f, 23); /* no checkpoint at 23: only the next record's prev tells */
    expect_tampered(f, "edited", 24, "seq 23 edited and re-hashed");
}

static void test_tamper_edit_rehash_checkpointed(void **state)
{
    fx *f = *state;
    build_50(f);
    edit_rehash(f, 20); /* the checkpoint at 20 holds the old hash */
    expect_tampered(f, "edited", -1, "seq 20 edited and re-hashed");
}

static void test_tamper_delete(void **state)
{
    fx *f = *state;
    build_50(f);
    audit_exec(f, "DELETE FROM {T} WHERE chain = 'node-a' AND seq = 20");
    expect_tampered(f, "deleted", 20, "seq 20 deleted");
}

static void test_tamper_insert(void **state)
{
    fx *f = *state;
    char newid[PHG_ULID_LEN + 1], sql[1024];
    build_50(f);
    EXPECT_RC(phg_ulid_new_text(newid), PHG_OK); /* later than every stored id */
    snprintf(sql, sizeof sql,
             "INSERT INTO {T} (id, ts_us, chain, seq, hash, request_id, key_id, user_id, action, "
             "outcome, subject, record) SELECT '%s', ts_us, chain, seq, hash, request_id, key_id, "
             "user_id, action, outcome, subject, record FROM {T} WHERE chain = 'node-a' AND seq = "
             "20",
             newid);
    audit_exec(f, sql);
    expect_tampered(f, "inserted", 20, "a copy of seq 20 inserted");
}

/* A forged record at seq 23 whose text, id and hash are all consistent, with
 * an id that sorts before the genuine one. */
static void test_tamper_insert_forged(void **state)
{
    fx *f = *state;
    char *json = NULL, *forged, newid[PHG_ULID_LEN + 1], h[65], *sql;
    phg_audit_store_row prev_row, row;
    json_t *o;
    build_50(f);
    prev_row = row_at(f, 22, &json);
    free(json);
    row = row_at(f, 23, &json);
    /* The genuine id's time part with the smallest random part. */
    memcpy(newid, row.id, sizeof newid);
    memset(newid + 10, '0', PHG_ULID_LEN - 10);
    EXPECT(strcmp(newid, row.id) < 0, "cannot make a smaller id than %s", row.id);
    o = json_loads(json, 0, NULL);
    json_object_set_new(o, "id", json_string(newid));
    json_object_set_new(json_object_get(o, "details"), "step", json_string("forged"));
    forged = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    chain_hash(prev_row.hash, forged, h);
    sql = malloc(strlen(forged) + 1024);
    sprintf(sql,
            "INSERT INTO {T} (id, ts_us, chain, seq, hash, request_id, key_id, user_id, action, "
            "outcome, subject, record) VALUES ('%s', %lld, 'node-a', 23, '%s', '', '', 'u1', "
            "'phi.decrypt', 'success', '', '%s')",
            newid, (long long)row.ts_us, h, forged);
    /* Only into the table that holds seq 23 (SQLite: one month table). */
    if (g_engine == TDB_SQLITE) {
        char tables[64][32], err[512];
        size_t n = record_tables(&f->db, tables, 64), i;
        for (i = 0; i < n; i++) {
            char q[256], *s2, *hit;
            snprintf(q, sizeof q, "SELECT count(*) FROM %s WHERE seq = 23", tables[i]);
            if (tdb_query_int(&f->db, q, err, sizeof err) != 1)
                continue;
            s2 = malloc(strlen(sql) + 64);
            hit = strstr(sql, "{T}");
            sprintf(s2, "%.*s%s%s", (int)(hit - sql), sql, tables[i], hit + 3);
            plain_exec(f, s2);
            free(s2);
        }
    } else {
        audit_exec(f, sql);
    }
    free(sql);
    free(forged);
    free(json);
    expect_tampered(f, "inserted", 23, "a consistent forged record at seq 23");
}

static void test_tamper_reorder(void **state)
{
    fx *f = *state;
    build_50(f);
    audit_exec(f, "UPDATE {T} SET seq = CASE seq WHEN 20 THEN 30 ELSE 20 END "
                  "WHERE chain = 'node-a' AND seq IN (20, 30)");
    expect_tampered(f, "reordered", 20, "seq 20 and 30 swapped");
}

static void test_tamper_truncate(void **state)
{
    fx *f = *state;
    build_50(f);
    audit_exec(f, "DELETE FROM {T} WHERE chain = 'node-a' AND seq > 40");
    expect_tampered(f, "truncated", 41, "last 10 deleted");
}

static void test_tamper_truncate_head(void **state)
{
    fx *f = *state;
    char *json = NULL, sql[512];
    phg_audit_store_row r40;
    build_50(f);
    r40 = row_at(f, 40, &json);
    free(json);
    audit_exec(f, "DELETE FROM {T} WHERE chain = 'node-a' AND seq > 40");
    snprintf(sql, sizeof sql,
             "UPDATE audit_chains SET seq = 40, hash = '%s' WHERE chain = 'node-a'", r40.hash);
    plain_exec(f, sql);
    expect_tampered(f, "truncated", 41, "last 10 deleted and head moved back");
}

static void test_tamper_checkpoint_mac(void **state)
{
    fx *f = *state;
    build_50(f);
    plain_exec(f, "UPDATE audit_checkpoints SET mac = '" ZERO_HASH "' "
                  "WHERE chain = 'node-a' AND seq = 30");
    expect_tampered(f, "checkpoint", 30, "checkpoint mac forged");
}

static void test_tamper_checkpoint_hash(void **state)
{
    fx *f = *state;
    build_50(f);
    plain_exec(f, "UPDATE audit_checkpoints SET hash = "
                  "'abababababababababababababababababababababababababababababababab' "
                  "WHERE chain = 'node-a' AND seq = 30");
    expect_tampered(f, "checkpoint", 30, "checkpoint hash forged");
}

/* ---- 7. crash safety ------------------------------------------------------------------------------ */

typedef struct crash_thread {
    phg_audit *a;
    int fd, t;
} crash_thread;

static void *crash_loop(void *arg)
{
    crash_thread *c = arg;
    char line[PHG_ULID_LEN + 2], details[64];
    unsigned i;
    for (i = 0;; i++) {
        phg_audit_event e = ev_of("http.request", "success");
        snprintf(details, sizeof details, "{\"t\":%d,\"i\":%u}", c->t, i);
        e.details_json = details;
        if (phg_audit_append(c->a, &e, line) == PHG_OK) {
            line[PHG_ULID_LEN] = '\n';
            /* 27 bytes: one atomic write to the pipe. */
            if (write(c->fd, line, PHG_ULID_LEN + 1) != PHG_ULID_LEN + 1)
                _exit(5);
        } else {
            usleep(1000);
        }
    }
    return NULL;
}

static void crash_child(const char *url, const uint8_t key[32], int fd)
{
    phg_store_options so;
    phg_audit_options o;
    phg_store *st = NULL;
    phg_audit *a = NULL;
    crash_thread c[8];
    pthread_t th[8];
    int i;
    phg_store_options_init(&so);
    so.pool_size = 4;
    if (phg_store_open(url, &so, &st, NULL, 0) != PHG_OK)
        _exit(3);
    phg_audit_options_init(&o);
    o.chain = "crash";
    o.checkpoint_every = 50;
    if (phg_audit_open(st, &o, key, &a) != PHG_OK)
        _exit(4);
    for (i = 0; i < 8; i++) {
        c[i].a = a;
        c[i].fd = fd;
        c[i].t = i;
        if (pthread_create(&th[i], NULL, crash_loop, &c[i]) != 0)
            _exit(6);
    }
    for (;;)
        pause();
}

static void test_crash(void **state)
{
    fx *f = *state;
    int p[2], status = 0;
    pid_t pid;
    char *buf;
    size_t cap = 1 << 20, len = 0, nacked, i;
    int64_t first = 0, kill_at = 0, deadline;
    rowvec w;
    char (*stored)[PHG_ULID_LEN + 1];
    phg_audit_verify_report r;
    phg_audit *a;

    /* Fork with no thread and no connection in this process. */
    phg_store_close(f->st);
    f->st = NULL;
    EXPECT(pipe(p) == 0, "pipe");
    fflush(NULL);
    pid = fork();
    EXPECT(pid >= 0, "fork");
    if (pid == 0) {
        close(p[0]);
        crash_child(f->db.url, f->key, p[1]);
        _exit(7);
    }
    close(p[1]);
    buf = malloc(cap);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    deadline = tdb_now_ms() + 20000;
    for (;;) {
        struct pollfd pfd = {p[0], POLLIN, 0};
        int64_t now = tdb_now_ms();
        ssize_t got;
        if (kill_at != 0 && now >= kill_at)
            break;
        if (kill_at == 0 && now >= deadline)
            break;
        if (poll(&pfd, 1, 5) <= 0)
            continue;
        got = read(p[0], buf + len, cap - len);
        if (got <= 0)
            break; /* the child died on its own */
        len += (size_t)got;
        if (first == 0) {
            first = tdb_now_ms();
            kill_at = first + 200 + rand() % 601;
        }
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    for (;;) { /* what was acknowledged before the kill and is still in the pipe */
        ssize_t got = read(p[0], buf + len, cap - len);
        if (got <= 0)
            break;
        len += (size_t)got;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    close(p[0]);
    EXPECT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
           "[%s] the child ended by itself (status %d) before the kill", ENG, status);
    EXPECT(first != 0, "[%s] the child acknowledged nothing in 20 s", ENG);
    EXPECT(len % (PHG_ULID_LEN + 1) == 0, "torn line in the pipe");
    nacked = len / (PHG_ULID_LEN + 1);
    print_message("[%s] killed %lld ms after the first ack: %zu acknowledged\n", ENG,
                  (long long)(kill_at - first), nacked);

    f->st = open_store(&f->db, 4);
    w = walk_chain(f, "crash");
    EXPECT(w.n >= nacked, "[%s] %zu stored, %zu acknowledged", ENG, w.n, nacked);
    stored = malloc((w.n + 1) * sizeof *stored);
    for (i = 0; i < w.n; i++) {
        EXPECT(w.rows[i].seq == (int64_t)i + 1, "[%s] crash chain position %zu has seq %lld", ENG,
               i, (long long)w.rows[i].seq);
        snprintf(stored[i], sizeof stored[i], "%s", w.rows[i].id);
    }
    qsort(stored, w.n, sizeof stored[0], cmp_id);
    for (i = 0; i < nacked; i++) {
        char id[PHG_ULID_LEN + 1];
        memcpy(id, buf + i * (PHG_ULID_LEN + 1), PHG_ULID_LEN);
        id[PHG_ULID_LEN] = '\0';
        EXPECT(bsearch(id, stored, w.n, sizeof stored[0], cmp_id) != NULL,
               "[%s] acknowledged %s is not in the store after the crash", ENG, id);
    }
    r = verify(f, 0, 0);
    EXPECT(r.ok == 1 && r.records == w.n, "[%s] after the crash: '%s' (%llu of %zu records)", ENG,
           r.problem, (unsigned long long)r.records, w.n);

    /* The chain goes on where the crash left it. */
    a = open_audit(f, "crash", 0);
    {
        phg_audit_event e = ev_of("http.request", "success");
        append_ok(a, &e, NULL);
    }
    phg_audit_close(a);
    rowvec_free(&w);
    w = walk_chain(f, "crash");
    EXPECT(w.rows[w.n - 1].seq == (int64_t)w.n, "seq after the crash");
    rowvec_free(&w);
    r = verify(f, 0, 0);
    EXPECT(r.ok == 1, "[%s] after the crash and one more append: '%s'", ENG, r.problem);
    free(stored);
    free(buf);
}

/* ---- 8. queries ------------------------------------------------------------------------------------ */

#define QN 60

typedef struct qrec {
    char id[PHG_ULID_LEN + 1];
    const char *user, *key, *action, *outcome, *subject;
    char rid[PHG_ULID_LEN + 1];
    int64_t ts_us;
} qrec;

static int qmatch(const qrec *r, const phg_audit_filter *q)
{
    return (q->user_id == NULL || strcmp(q->user_id, r->user) == 0) &&
           (q->key_id == NULL || strcmp(q->key_id, r->key) == 0) &&
           (q->action == NULL || strcmp(q->action, r->action) == 0) &&
           (q->outcome == NULL || strcmp(q->outcome, r->outcome) == 0) &&
           (q->request_id == NULL || strcmp(q->request_id, r->rid) == 0) &&
           (q->subject == NULL || strcmp(q->subject, r->subject) == 0) &&
           (q->from_us == 0 || r->ts_us >= q->from_us) && (q->to_us == 0 || r->ts_us < q->to_us) &&
           (q->before_id == NULL || strcmp(r->id, q->before_id) < 0);
}

static void check_query(fx *f, const qrec *recs, const phg_audit_filter *q, const char *what)
{
    phg_audit_row *rows = NULL;
    size_t n = 0, want = 0, k = 0;
    int i;
    char err[256] = "";
    EXPECT(phg_audit_query(f->st, q, &rows, &n, err, sizeof err) == PHG_OK, "[%s] %s: %s", ENG,
           what, err);
    for (i = QN - 1; i >= 0; i--) {
        if (!qmatch(&recs[i], q))
            continue;
        want++;
        if (want > q->limit)
            continue;
        EXPECT(k < n && strcmp(rows[k].id, recs[i].id) == 0,
               "[%s] %s: row %zu is %s, want %s", ENG, what, k, k < n ? rows[k].id : "(none)",
               recs[i].id);
        k++;
    }
    EXPECT(n == (want < q->limit ? want : q->limit), "[%s] %s: %zu rows, want %zu", ENG, what, n,
           want);
    EXPECT(want > 0 || strstr(what, "none") != NULL, "[%s] %s: the test matches nothing", ENG,
           what);
    phg_audit_rows_free(rows, n);
}

static void expect_query_invalid(fx *f, const phg_audit_filter *q, const char *what)
{
    phg_audit_row *rows = (phg_audit_row *)1;
    size_t n = 99;
    char err[256] = "";
    phg_status rc = phg_audit_query(f->st, q, &rows, &n, err, sizeof err);
    EXPECT(rc == PHG_ERR_INVALID, "[%s] %s: %s, want invalid", ENG, what, phg_status_name(rc));
    EXPECT(err[0] != '\0', "[%s] %s: no message", ENG, what);
    EXPECT(rows == NULL && n == 0, "[%s] %s: rows handed out", ENG, what);
}

static void test_queries(void **state)
{
    fx *f = *state;
    static const char *users[] = {"alice", "bob", "carol"};
    static const char *keys[] = {"ak_k0", "ak_k1"};
    static const char *actions[] = {"phi.decrypt", "phi.encrypt", "keys.create", "http.request"};
    static const char *outcomes[] = {"success", "denied", "error"};
    static const char *subjects[] = {"patient-1", "patient-2", "", "", ""};
    char rids[7][PHG_ULID_LEN + 1], err[256];
    qrec recs[QN];
    phg_audit *a = open_audit(f, "node-a", 0);
    phg_audit_filter q;
    phg_audit_row *rows = NULL;
    size_t n = 0, total = 0;
    int64_t t_mid = 0, t_late = 0;
    int i, j;
    char seen[QN];

    for (i = 0; i < 7; i++)
        EXPECT_RC(phg_ulid_new_text(rids[i]), PHG_OK);
    for (i = 0; i < QN; i++) {
        phg_audit_event e;
        qrec *r = &recs[i];
        r->user = users[i % 3];
        r->key = keys[i % 2];
        r->action = actions[i % 4];
        r->outcome = outcomes[(i / 3) % 3];
        r->subject = subjects[i % 5];
        snprintf(r->rid, sizeof r->rid, "%s", rids[i % 7]);
        e = ev_of(r->action, r->outcome);
        e.user_id = r->user;
        e.key_id = r->key;
        e.subject = r->subject[0] ? r->subject : NULL;
        e.request_id = r->rid;
        if (i == 30 || i == 45) {
            tdb_sleep_ms(3);
            if (i == 30)
                t_mid = wall_us();
            else
                t_late = wall_us();
            tdb_sleep_ms(3);
        }
        append_ok(a, &e, r->id);
    }
    phg_audit_close(a);

    memset(&q, 0, sizeof q);
    q.limit = 1000;
    EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK, "query: %s", err);
    EXPECT(n == QN, "[%s] %zu records, want %d", ENG, n, QN);
    for (i = 0; (size_t)i < n; i++) {
        EXPECT(strcmp(rows[i].id, recs[QN - 1 - i].id) == 0, "[%s] order at %d", ENG, i);
        recs[QN - 1 - i].ts_us = rows[i].ts_us;
    }
    phg_audit_rows_free(rows, n);
    EXPECT(recs[29].ts_us < t_mid && recs[30].ts_us >= t_mid, "[%s] time split", ENG);

#define Q(field, value, what)                                                                      \
    do {                                                                                           \
        memset(&q, 0, sizeof q);                                                                   \
        q.limit = 1000;                                                                            \
        q.field = value;                                                                           \
        check_query(f, recs, &q, what);                                                            \
    } while (0)
    Q(user_id, "alice", "user alice");
    Q(user_id, "bob", "user bob");
    Q(key_id, "ak_k1", "key ak_k1");
    Q(action, "keys.create", "action keys.create");
    Q(outcome, "denied", "outcome denied");
    Q(outcome, "error", "outcome error");
    Q(request_id, rids[3], "request id");
    Q(subject, "patient-2", "subject patient-2");
    Q(user_id, "nobody", "user none");
    Q(from_us, t_mid, "from t_mid");
    Q(to_us, t_mid, "to t_mid");
#undef Q
    memset(&q, 0, sizeof q);
    q.limit = 1000;
    q.from_us = t_mid;
    q.to_us = t_late;
    check_query(f, recs, &q, "t_mid to t_late");
    q.user_id = "carol";
    q.outcome = "success";
    check_query(f, recs, &q, "carol, success, t_mid to t_late");
    memset(&q, 0, sizeof q);
    q.limit = 5;
    q.action = "phi.decrypt";
    check_query(f, recs, &q, "phi.decrypt, limit 5");

    /* Pagination: every record once, newest first. */
    memset(seen, 0, sizeof seen);
    memset(&q, 0, sizeof q);
    q.limit = 7;
    {
        char before[PHG_ULID_LEN + 1] = "";
        int pages = 0;
        for (;;) {
            EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK, "page: %s",
                   err);
            pages++;
            for (i = 0; (size_t)i < n; i++) {
                for (j = 0; j < QN && strcmp(recs[j].id, rows[i].id) != 0; j++)
                    ;
                EXPECT(j < QN, "page: unknown id %s", rows[i].id);
                EXPECT(seen[j] == 0, "[%s] page %d: %s seen twice", ENG, pages, rows[i].id);
                EXPECT(j == QN - 1 - (int)total, "[%s] page %d: order", ENG, pages);
                seen[j] = 1;
                total++;
            }
            if (n == 0) {
                phg_audit_rows_free(rows, n);
                break;
            }
            snprintf(before, sizeof before, "%s", rows[n - 1].id);
            phg_audit_rows_free(rows, n);
            q.before_id = before;
            EXPECT(pages < 20, "pagination does not end");
        }
        EXPECT(total == QN, "[%s] pagination walked %zu records, want %d", ENG, total, QN);
        EXPECT(pages == 10, "[%s] %d pages of 7 for 60 records (want 9 and an empty one)", ENG,
               pages);
    }

    /* Refused before any SQL. */
    memset(&q, 0, sizeof q);
    q.limit = 0;
    expect_query_invalid(f, &q, "limit 0");
    q.limit = 1001;
    expect_query_invalid(f, &q, "limit 1001");
    q.limit = 10;
    q.outcome = "maybe";
    expect_query_invalid(f, &q, "outcome maybe");
    q.outcome = NULL;
    q.before_id = "not-a-ulid";
    expect_query_invalid(f, &q, "before_id not a ULID");
    q.before_id = NULL;
    q.request_id = "'; DROP TABLE x;--";
    expect_query_invalid(f, &q, "request_id injection");
    q.request_id = NULL;
    q.from_us = 2000;
    q.to_us = 2000;
    expect_query_invalid(f, &q, "from == to");
    q.from_us = 3000;
    expect_query_invalid(f, &q, "from > to");
    q.from_us = -5;
    q.to_us = 0;
    expect_query_invalid(f, &q, "negative from");
    q.from_us = 0;
    q.user_id = "ali\x01" "ce";
    expect_query_invalid(f, &q, "user id with a control character");
    q.user_id = NULL;
    q.action = "phi\ndecrypt";
    expect_query_invalid(f, &q, "action with a newline");

    /* Injection text is just a value that matches nothing. */
    memset(&q, 0, sizeof q);
    q.limit = 1000;
    q.user_id = "x' OR '1'='1";
    check_query(f, recs, &q, "injection user none");
    q.user_id = NULL;
    q.action = "'; DROP TABLE audit_chains;--";
    check_query(f, recs, &q, "injection action none");
    q.action = NULL;
    q.subject = "\" OR 1=1 --";
    check_query(f, recs, &q, "injection subject none");
    EXPECT(tdb_table_exists(&f->db, "audit_chains"), "[%s] audit_chains is gone", ENG);
    EXPECT(tdb_table_exists(&f->db, "audit_checkpoints"), "[%s] audit_checkpoints is gone", ENG);
    memset(&q, 0, sizeof q);
    q.limit = 1000;
    EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK && n == QN,
           "[%s] after the injection attempts: %zu records", ENG, n);
    phg_audit_rows_free(rows, n);
    expect_verify_ok(f, QN, 1, "after the queries");
}

/* ---- 9. details masking ------------------------------------------------------------------------------ */

typedef struct dump {
    char *buf;
    size_t len, cap;
} dump;

static void dump_add(dump *d, const char *s, size_t n)
{
    if (d->len + n + 2 > d->cap) {
        d->cap = (d->len + n + 2) * 2;
        d->buf = realloc(d->buf, d->cap);
        EXPECT(d->buf != NULL, "realloc");
    }
    memcpy(d->buf + d->len, s, n);
    d->len += n;
    d->buf[d->len++] = '\n';
    d->buf[d->len] = '\0';
}

/* Every row of every table of the database, as text. */
static void dump_database(const testdb *db, dump *d)
{
    if (db->engine == TDB_SQLITE) {
        sqlite3 *s = NULL;
        sqlite3_stmt *tl = NULL;
        EXPECT(sqlite3_open_v2(db->path, &s, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "open");
        EXPECT(sqlite3_prepare_v2(s, "SELECT name FROM sqlite_master WHERE type = 'table'", -1,
                                  &tl, NULL) == SQLITE_OK,
               "tables");
        while (sqlite3_step(tl) == SQLITE_ROW) {
            char sql[256];
            sqlite3_stmt *st = NULL;
            snprintf(sql, sizeof sql, "SELECT * FROM \"%s\"", sqlite3_column_text(tl, 0));
            EXPECT(sqlite3_prepare_v2(s, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                   sqlite3_errmsg(s));
            while (sqlite3_step(st) == SQLITE_ROW) {
                int c;
                for (c = 0; c < sqlite3_column_count(st); c++) {
                    const unsigned char *t = sqlite3_column_text(st, c);
                    if (t != NULL)
                        dump_add(d, (const char *)t, (size_t)sqlite3_column_bytes(st, c));
                }
            }
            sqlite3_finalize(st);
        }
        sqlite3_finalize(tl);
        sqlite3_close(s);
    } else {
        PGconn *pg = tdb_pg_connect(db->url);
        PGresult *tl = PQexec(pg, "SELECT table_name FROM information_schema.tables WHERE "
                                  "table_schema = current_schema()");
        int i;
        EXPECT(PQresultStatus(tl) == PGRES_TUPLES_OK, "tables: %s", PQerrorMessage(pg));
        for (i = 0; i < PQntuples(tl); i++) {
            char sql[256];
            PGresult *res;
            int r;
            snprintf(sql, sizeof sql, "SELECT t::text FROM \"%s\" t", PQgetvalue(tl, i, 0));
            res = PQexec(pg, sql);
            EXPECT(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(pg));
            for (r = 0; r < PQntuples(res); r++)
                dump_add(d, PQgetvalue(res, r, 0), strlen(PQgetvalue(res, r, 0)));
            PQclear(res);
        }
        PQclear(tl);
        PQfinish(pg);
    }
}

/* SQLite: the raw bytes of every file of the database (main, WAL, journal). */
static void dump_files(const testdb *db, dump *d)
{
    DIR *dir = opendir(db->dir);
    struct dirent *e;
    EXPECT(dir != NULL, "opendir %s", db->dir);
    while ((e = readdir(dir)) != NULL) {
        char path[1024], *buf;
        FILE *fp;
        long size;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", db->dir, e->d_name);
        fp = fopen(path, "rb");
        if (fp == NULL)
            continue;
        fseek(fp, 0, SEEK_END);
        size = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        buf = malloc((size_t)size + 1);
        if (size > 0 && fread(buf, 1, (size_t)size, fp) == (size_t)size)
            dump_add(d, buf, (size_t)size);
        free(buf);
        fclose(fp);
    }
    closedir(dir);
}

static const char *const PLANTED[] = {"Zebediah",   "Quixote",   "1961-04-17",
                                      "078-05-1120", "zq@example.org", "555 0100",
                                      "MRN-99812",  "dizziness", "12 Elm St", NULL};

static int contains(const dump *d, const char *s)
{
    return d->len != 0 && memmem(d->buf, d->len, s, strlen(s)) != NULL;
}

static void test_masking(void **state)
{
    fx *f = *state;
    phg_audit *a = open_audit(f, "node-a", 1);
    const char *details =
        "{\"name\":\"Zebediah Quixote\",\"dob\":\"1961-04-17\",\"ssn\":\"078-05-1120\","
        "\"email\":\"zq@example.org\",\"phone\":\"+1 555 0100\",\"mrn\":\"MRN-99812\","
        "\"hrv\":48.2,\"notes\":\"patient reports dizziness\",\"nested\":{\"address\":\"12 Elm "
        "St\"},\"ok\":\"kept\"}";
    phg_audit_event e = ev_of("phi.decrypt", "success");
    phg_audit_filter q;
    phg_audit_row *rows = NULL;
    size_t n = 0, i;
    char err[256], *big;
    dump d = {NULL, 0, 0}, raw = {NULL, 0, 0}, out = {NULL, 0, 0};
    json_t *o, *det;
    phg_audit_stats s0, s1;
    rowvec w;

    e.details_json = details;
    append_ok(a, &e, NULL);

    /* Refused details: nothing appended. */
    phg_audit_get_stats(a, &s0);
    {
        static const char *bad[] = {"[1,2]", "\"text\"", "42", "{bad", "{\"a\":1}x", ""};
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            phg_audit_event b = ev_of("phi.decrypt", "success");
            b.details_json = bad[i];
            EXPECT_RC(phg_audit_append(a, &b, NULL), PHG_ERR_INVALID);
        }
    }
    big = malloc(PHG_AUDIT_DETAILS_MAX + 64);
    snprintf(big, 16, "{\"k\":\"");
    memset(big + 6, 'a', PHG_AUDIT_DETAILS_MAX);
    snprintf(big + 6 + PHG_AUDIT_DETAILS_MAX, 8, "\"}");
    {
        phg_audit_event b = ev_of("phi.decrypt", "success");
        b.details_json = big;
        EXPECT_RC(phg_audit_append(a, &b, NULL), PHG_ERR_TOO_LARGE);
    }
    free(big);
    /* Other refused events. */
    {
        phg_audit_event b = ev_of(NULL, "success");
        EXPECT_RC(phg_audit_append(a, &b, NULL), PHG_ERR_INVALID);
        b = ev_of("", "success");
        EXPECT_RC(phg_audit_append(a, &b, NULL), PHG_ERR_INVALID);
        b = ev_of("phi.decrypt", "maybe");
        EXPECT_RC(phg_audit_append(a, &b, NULL), PHG_ERR_INVALID);
        b = ev_of("phi.decrypt", NULL);
        EXPECT_RC(phg_audit_append(a, &b, NULL), PHG_ERR_INVALID);
        b = ev_of("phi.decrypt", "success");
        b.user_id = "bad\nuser";
        EXPECT_RC(phg_audit_append(a, &b, NULL), PHG_ERR_INVALID);
        EXPECT_RC(phg_audit_append_async(a, &b, NULL, NULL), PHG_ERR_INVALID);
    }
    phg_audit_get_stats(a, &s1);
    EXPECT(s1.appended == s0.appended && s1.failed == s0.failed, "[%s] refused events counted",
           ENG);
    phg_audit_close(a); /* and its final checkpoint */
    w = walk_chain(f, "node-a");
    EXPECT(w.n == 1, "[%s] %zu records after the refused ones, want 1", ENG, w.n);
    rowvec_free(&w);

    /* The record hands out masked details. */
    memset(&q, 0, sizeof q);
    q.limit = 10;
    EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK && n == 1, "query");
    dump_add(&out, rows[0].json, strlen(rows[0].json));
    o = json_loads(rows[0].json, 0, NULL);
    det = json_object_get(o, "details");
    {
        static const char *masked[] = {"name", "dob", "ssn", "email", "phone",
                                       "mrn",  "hrv", "notes", NULL};
        for (i = 0; masked[i] != NULL; i++)
            EXPECT(json_is_string(json_object_get(det, masked[i])) &&
                       strcmp(json_string_value(json_object_get(det, masked[i])), "***") == 0,
                   "[%s] details.%s not masked: %s", ENG, masked[i], rows[0].json);
    }
    EXPECT(json_object_get(json_object_get(det, "nested"), "address") == NULL ||
               strcmp(json_string_value(json_object_get(json_object_get(det, "nested"), "address")),
                      "***") == 0,
           "[%s] nested.address not masked: %s", ENG, rows[0].json);
    EXPECT(strcmp(json_string_value(json_object_get(det, "ok")), "kept") == 0, "[%s] ok lost: %s",
           ENG, rows[0].json);
    json_decref(o);
    phg_audit_rows_free(rows, n);

    /* Nothing planted anywhere in the store. */
    dump_database(&f->db, &d);
    if (g_engine == TDB_SQLITE)
        dump_files(&f->db, &raw);
    for (i = 0; PLANTED[i] != NULL; i++) {
        EXPECT(!contains(&d, PLANTED[i]), "[%s] '%s' is stored in the database", ENG, PLANTED[i]);
        EXPECT(raw.len == 0 || !contains(&raw, PLANTED[i]), "[%s] '%s' is in a database file",
               ENG, PLANTED[i]);
        EXPECT(!contains(&out, PLANTED[i]), "[%s] '%s' is in the query output", ENG, PLANTED[i]);
    }
    EXPECT(!contains(&d, "\"hrv\":48") && !contains(&raw, "\"hrv\":48"),
           "[%s] hrv reading stored", ENG);
    EXPECT(contains(&d, "kept"), "[%s] the kept value is not in the dump", ENG);
    EXPECT(contains(&d, "phi.decrypt"), "[%s] the dump is empty?", ENG);
    free(d.buf);
    free(raw.buf);
    free(out.buf);
    expect_verify_ok(f, 1, 1, "masking");
}

/* ---- 10. partitions and retention --------------------------------------------------------------------- */

static int64_t utc_us(int y, int mo, int d, int h, int mi, int s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    return (int64_t)timegm(&tm) * 1000000;
}

static void format_ts(int64_t us, char out[40])
{
    struct tm tm;
    time_t s = (time_t)(us / 1000000);
    size_t n;
    gmtime_r(&s, &tm);
    n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06dZ", (int)(us % 1000000));
}

/* `count` records of a chain of their own in (y, m), written directly with
 * correct hashes (so a verify of the whole log passes). */
static void plant_month(fx *f, const char *chain, int y, int m, int count)
{
    phg_audit_store_row rows[8];
    char prev[65] = ZERO_HASH, ts[40];
    phg_ulid last, id;
    int i;
    EXPECT(count <= 8, "count");
    memset(&last, 0, sizeof last);
    memset(rows, 0, sizeof rows);
    EXPECT_RC(phg_internal_store_audit_ensure_partition(f->st, y, m), PHG_OK);
    for (i = 0; i < count; i++) {
        phg_audit_store_row *r = &rows[i];
        json_t *o;
        r->ts_us = utc_us(y, m, 3 + i, 10, 0, 0) + 123456;
        EXPECT_RC(phg_ulid_new_at((uint64_t)(r->ts_us / 1000), &last, &id), PHG_OK);
        phg_ulid_format(&id, r->id);
        snprintf(r->chain, sizeof r->chain, "%s", chain);
        r->seq = i + 1;
        snprintf(r->user_id, sizeof r->user_id, "old-user");
        snprintf(r->action, sizeof r->action, "phi.decrypt");
        snprintf(r->outcome, sizeof r->outcome, "success");
        format_ts(r->ts_us, ts);
        o = json_pack("{s:s,s:{s:s,s:s,s:s},s:s,s:{s:i},s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:s}",
                      "action", "phi.decrypt", "actor", "key_id", "", "role", "user", "user_id",
                      "old-user", "chain", chain, "details", "n", i, "id", r->id, "ip", "",
                      "outcome", "success", "prev", prev, "request_id", "", "resource", "",
                      "seq", (json_int_t)(i + 1), "ts", ts);
        EXPECT(o != NULL, "json_pack");
        r->json = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(o);
        chain_hash(prev, r->json, r->hash);
        memcpy(prev, r->hash, sizeof prev);
    }
    EXPECT_RC(phg_internal_store_audit_append(f->st, rows, (size_t)count, chain, count, prev),
              PHG_OK);
    for (i = 0; i < count; i++)
        free(rows[i].json);
}

static void part_table(int y, int m, char out[48])
{
    if (g_engine == TDB_SQLITE)
        snprintf(out, 48, "audit_%04d_%02d", y, m);
    else
        snprintf(out, 48, "audit_log_%04d_%02d", y, m);
}

static phg_audit_partition part_of(fx *f, const char *month)
{
    phg_audit_partition *parts = NULL, p;
    size_t n = 0, i;
    memset(&p, 0, sizeof p);
    EXPECT_RC(phg_internal_store_audit_partitions(f->st, &parts, &n), PHG_OK);
    for (i = 0; i < n; i++)
        if (strcmp(parts[i].month, month) == 0)
            p = parts[i];
    free(parts);
    return p;
}

static void read_file(const char *path, uint8_t **data, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    long size;
    EXPECT(fp != NULL, "open %s: %s", path, strerror(errno));
    fseek(fp, 0, SEEK_END);
    size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    *data = malloc((size_t)size + 1);
    EXPECT(fread(*data, 1, (size_t)size, fp) == (size_t)size, "read %s", path);
    (*data)[size] = 0;
    *len = (size_t)size;
    fclose(fp);
}

/* The archive of a month: its lines are the stored records, oldest first,
 * and the manifest holds the file's SHA-256. */
static void check_archive(fx *f, const char *path, int y, int m, int count)
{
    rowvec v = {NULL, 0, 0};
    gzFile gz;
    char line[8192], manifest[4200], hex[65];
    uint8_t *data, d[32];
    size_t len;
    int k = 0;
    EXPECT_RC(phg_internal_store_audit_partition_rows(f->st, y, m, collect_row, &v), PHG_OK);
    EXPECT(v.n == (size_t)count, "[%s] %zu rows in %04d-%02d", ENG, v.n, y, m);
    gz = gzopen(path, "rb");
    EXPECT(gz != NULL, "gzopen %s", path);
    while (gzgets(gz, line, sizeof line) != NULL) {
        size_t n = strlen(line);
        const char *rec;
        json_t *o;
        EXPECT(n > 0 && line[n - 1] == '\n', "[%s] archive line %d not ended", ENG, k);
        line[--n] = '\0';
        EXPECT(k < count, "[%s] archive has more than %d lines", ENG, count);
        o = json_loads(line, 0, NULL);
        EXPECT(o != NULL && json_object_size(o) == 2 &&
                   strcmp(json_string_value(json_object_get(o, "hash")), v.rows[k].hash) == 0 &&
                   json_is_object(json_object_get(o, "record")),
               "[%s] archive line %d: %s", ENG, k, line);
        json_decref(o);
        rec = strstr(line, "\"record\":");
        EXPECT(rec != NULL && n >= 1 && line[n - 1] == '}', "line shape");
        rec += strlen("\"record\":");
        EXPECT(strlen(rec) - 1 == strlen(v.rows[k].json) &&
                   strncmp(rec, v.rows[k].json, strlen(v.rows[k].json)) == 0,
               "[%s] archive line %d: the record is not the stored text\n%s\n%s", ENG, k, rec,
               v.rows[k].json);
        k++;
    }
    gzclose(gz);
    EXPECT(k == count, "[%s] archive has %d lines, want %d", ENG, k, count);
    rowvec_free(&v);

    read_file(path, &data, &len);
    EXPECT_RC(phg_sha256(data, len, d), PHG_OK);
    free(data);
    hex_of(d, hex);
    snprintf(manifest, sizeof manifest, "%s.sha256", path);
    read_file(manifest, &data, &len);
    EXPECT(len > 64 && memcmp(data, hex, 64) == 0 && (data[64] == ' ' || data[64] == '\t'),
           "[%s] manifest '%s' does not start with the file's SHA-256 %s", ENG, (char *)data, hex);
    {
        char want[64];
        snprintf(want, sizeof want, "%d records", count);
        EXPECT(strstr((char *)data, want) != NULL, "[%s] manifest lacks '%s': %s", ENG, want,
               (char *)data);
    }
    free(data);
}

static void test_partitions(void **state)
{
    fx *f = *state;
    time_t now = time(NULL);
    struct tm tm;
    char this_month[32], next_month[32], table[48], err[256], path[600], prev_month[32];
    int y, m, ny, nm, py, pm;
    phg_audit *a;
    phg_audit_event e = ev_of("phi.decrypt", "success");
    phg_audit_verify_report r;
    size_t dropped = 99;
    int i;
    phg_audit_partition p;
    int64_t cut_y, cut_m;

    gmtime_r(&now, &tm);
    y = tm.tm_year + 1900;
    m = tm.tm_mon + 1;
    ny = m == 12 ? y + 1 : y;
    nm = m == 12 ? 1 : m + 1;
    py = m == 1 ? y - 1 : y;
    pm = m == 1 ? 12 : m - 1;
    snprintf(this_month, sizeof this_month, "%04d-%02d", y, m);
    snprintf(next_month, sizeof next_month, "%04d-%02d", ny, nm);
    snprintf(prev_month, sizeof prev_month, "%04d-%02d", py, pm);

    EXPECT_RC(phg_audit_prepare_partitions(f->st, (int64_t)now), PHG_OK);
    EXPECT_RC(phg_audit_prepare_partitions(f->st, (int64_t)now), PHG_OK); /* idempotent */
    EXPECT(part_of(f, this_month).created_at != 0, "[%s] %s not registered", ENG, this_month);
    EXPECT(part_of(f, next_month).created_at != 0, "[%s] %s not registered", ENG, next_month);
    part_table(y, m, table);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] no table %s", ENG, table);
    part_table(ny, nm, table);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] no table %s", ENG, table);
    /* Across a year end. */
    EXPECT_RC(phg_audit_prepare_partitions(f->st, utc_us(2030, 12, 31, 23, 59, 59) / 1000000),
              PHG_OK);
    EXPECT(part_of(f, "2030-12").created_at != 0 && part_of(f, "2031-01").created_at != 0,
           "[%s] 2030-12 and 2031-01 not prepared", ENG);

    a = open_audit(f, "node-a", 0);
    for (i = 0; i < 5; i++)
        append_ok(a, &e, NULL);
    phg_audit_close(a);
    plant_month(f, "old-2019", 2019, 3, 3);
    plant_month(f, "old-2021", 2021, 1, 2);
    plant_month(f, "old-2018", 2018, 5, 2); /* never archived */
    part_table(2019, 3, table);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] no table %s", ENG, table);
    expect_verify_ok(f, 12, 4, "with the planted old months");

    /* Nothing is dropped before it is archived. */
    EXPECT_RC(phg_audit_prune(f->st, (int64_t)now, &dropped, err, sizeof err), PHG_OK);
    EXPECT(dropped == 0, "[%s] prune dropped %zu unarchived partitions", ENG, dropped);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] %s dropped unarchived", ENG, table);

    /* Archive 2019-03. */
    snprintf(path, sizeof path, "/tmp/phg_audit_archive_%ld_%s.jsonl.gz", (long)getpid(), ENG);
    EXPECT(phg_audit_archive(f->st, "2019-03", path, err, sizeof err) == PHG_OK,
           "[%s] archive 2019-03: %s", ENG, err);
    check_archive(f, path, 2019, 3, 3);
    p = part_of(f, "2019-03");
    EXPECT(p.archived_at != 0 && p.dropped_at == 0, "[%s] 2019-03 not marked archived", ENG);
    {
        uint8_t *data, dg[32];
        size_t len;
        char hex[65];
        read_file(path, &data, &len);
        EXPECT_RC(phg_sha256(data, len, dg), PHG_OK);
        free(data);
        hex_of(dg, hex);
        EXPECT(strcmp(p.archive_sha256, hex) == 0, "[%s] stored archive sha256 %s, want %s", ENG,
               p.archive_sha256, hex);
    }
    /* The current month (and later ones) are refused; so are malformed months. */
    {
        static const char *bad_month[] = {"2019-13", "2019-3", "19-03", "2019/03", "", NULL};
        phg_status rc;
        char p2[700];
        snprintf(p2, sizeof p2, "%s.cur", path);
        err[0] = '\0';
        rc = phg_audit_archive(f->st, this_month, p2, err, sizeof err);
        EXPECT(rc != PHG_OK && err[0] != '\0', "[%s] archive of the current month %s: %s", ENG,
               this_month, phg_status_name(rc));
        EXPECT(access(p2, F_OK) != 0, "[%s] an archive of the current month was written", ENG);
        err[0] = '\0';
        rc = phg_audit_archive(f->st, next_month, p2, err, sizeof err);
        EXPECT(rc != PHG_OK && err[0] != '\0', "[%s] archive of the next month: %s", ENG,
               phg_status_name(rc));
        EXPECT(part_of(f, this_month).archived_at == 0, "current month marked archived");
        for (i = 0; bad_month[i] != NULL; i++) {
            rc = phg_audit_archive(f->st, bad_month[i], p2, err, sizeof err);
            EXPECT(rc == PHG_ERR_INVALID, "[%s] archive of month '%s': %s", ENG, bad_month[i],
                   phg_status_name(rc));
        }
        (void)prev_month;
        unlink(p2);
    }
    /* 2021-01 archived as well; 2018-05 never. */
    {
        char p3[700];
        snprintf(p3, sizeof p3, "%s.2021", path);
        EXPECT(phg_audit_archive(f->st, "2021-01", p3, err, sizeof err) == PHG_OK,
               "[%s] archive 2021-01: %s", ENG, err);
        check_archive(f, p3, 2021, 1, 2);
        unlink(p3);
        strcat(p3, ".sha256");
        unlink(p3);
    }

    /* Prune as of now: a month goes once all of it is older than six years. */
    cut_y = y - PHG_AUDIT_RETENTION_YEARS;
    cut_m = m;
    {
        size_t want = 0;
        /* 2019-03 ends 2019-04-01, 2021-01 ends 2021-02-01. */
        if (2019 * 12 + 4 <= cut_y * 12 + cut_m)
            want++;
        if (2021 * 12 + 2 <= cut_y * 12 + cut_m)
            want++;
        EXPECT_RC(phg_audit_prune(f->st, (int64_t)now, &dropped, err, sizeof err), PHG_OK);
        EXPECT(dropped == want, "[%s] prune as of now dropped %zu, want %zu (cut %lld-%02lld)",
               ENG, dropped, want, (long long)cut_y, (long long)cut_m);
        EXPECT(want == 1, "this test expects a date between 2025-04 and 2027-01 (cut %lld-%02lld)",
               (long long)cut_y, (long long)cut_m);
    }
    part_table(2019, 3, table);
    EXPECT(!tdb_table_exists(&f->db, table), "[%s] %s still there", ENG, table);
    EXPECT(part_of(f, "2019-03").dropped_at != 0, "[%s] 2019-03 not marked dropped", ENG);
    part_table(2021, 1, table);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] %s dropped too young", ENG, table);
    part_table(2018, 5, table);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] %s dropped unarchived", ENG, table);

    /* The boundary: 2021-01 may go from 2027-02-01T00:00:00Z, not a second before. */
    EXPECT_RC(phg_audit_prune(f->st, utc_us(2027, 1, 31, 23, 59, 59) / 1000000, &dropped, err,
                              sizeof err),
              PHG_OK);
    EXPECT(dropped == 0, "[%s] prune as of 2027-01-31T23:59:59Z dropped %zu", ENG, dropped);
    EXPECT_RC(phg_audit_prune(f->st, utc_us(2027, 2, 1, 0, 0, 0) / 1000000, &dropped, err,
                              sizeof err),
              PHG_OK);
    EXPECT(dropped == 1, "[%s] prune as of 2027-02-01T00:00:00Z dropped %zu, want 1 (2021-01)",
           ENG, dropped);
    part_table(2021, 1, table);
    EXPECT(!tdb_table_exists(&f->db, table), "[%s] %s still there", ENG, table);
    /* Far in the future: unarchived months (2018-05, this one) stay. */
    EXPECT_RC(phg_audit_prune(f->st, utc_us(2100, 1, 1, 0, 0, 0) / 1000000, &dropped, err,
                              sizeof err),
              PHG_OK);
    EXPECT(dropped == 0, "[%s] prune in 2100 dropped %zu unarchived partitions", ENG, dropped);
    part_table(2018, 5, table);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] %s dropped unarchived", ENG, table);
    part_table(y, m, table);
    EXPECT(tdb_table_exists(&f->db, table), "[%s] %s dropped unarchived", ENG, table);

    /* The live chain still verifies, and the log can still be read. */
    r = verify(f, utc_us(2022, 1, 1, 0, 0, 0), utc_us(2100, 1, 1, 0, 0, 0));
    EXPECT(r.ok == 1 && r.records == 5, "[%s] verify of the live window: '%s', %llu records", ENG,
           r.problem, (unsigned long long)r.records);
    {
        phg_audit_filter q;
        phg_audit_row *rows = NULL;
        size_t n = 0;
        memset(&q, 0, sizeof q);
        q.limit = 1000;
        EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK && n == 7,
               "[%s] query after prune: %zu records (%s), want 7", ENG, n, err);
        phg_audit_rows_free(rows, n);
    }
    unlink(path);
    strcat(path, ".sha256");
    unlink(path);
}

/*
 * A window with an open end that starts after every record of an old chain
 * (what an operator verifies once retention has dropped the old months): the
 * old chain has nothing in the window, so nothing in the window is wrong.
 */
static void test_verify_window_after_old_chain(void **state)
{
    fx *f = *state;
    phg_audit *a = open_audit(f, "node-a", 0);
    phg_audit_event e = ev_of("phi.decrypt", "success");
    phg_audit_verify_report r;
    int i;
    for (i = 0; i < 5; i++)
        append_ok(a, &e, NULL);
    phg_audit_close(a);
    plant_month(f, "old-2018", 2018, 5, 2);
    expect_verify_ok(f, 7, 2, "live chain and an old one");
    r = verify(f, utc_us(2022, 1, 1, 0, 0, 0), 0);
    EXPECT(r.ok == 1 && r.records == 5,
           "[%s] verify from 2022-01 (open end) reports '%s' on chain %s seq %lld (%llu records): "
           "a chain with no record in the window is not truncated",
           ENG, r.problem, r.chain, (long long)r.seq, (unsigned long long)r.records);
}

/*
 * A writer restarted after its clock went back: the chain's newest record is
 * in the future. The new records must not go back in time (verify would call
 * that reordering): the writer resumes from the stored tail.
 */
static void test_resume_after_clock_step_back(void **state)
{
    fx *f = *state;
    phg_audit_event e = ev_of("keys.create", "success");
    phg_audit *a;
    phg_audit_verify_report r;
    struct tm tm;
    time_t now = time(NULL);
    int y, m;

    gmtime_r(&now, &tm);
    y = tm.tm_year + 1900;
    m = tm.tm_mon + 2;
    if (m == 13) {
        m = 1;
        y++;
    }
    plant_month(f, "node-f", y, m, 3); /* next month: the future */
    a = open_audit(f, "node-f", 0);
    append_ok(a, &e, NULL);
    append_ok(a, &e, NULL);
    phg_audit_close(a);
    r = verify(f, 0, 0);
    EXPECT(r.ok, "[%s] after a clock step back: %s (chain %s seq %lld)", ENG, r.problem, r.chain,
           (long long)r.seq);
}

/*
 * Administrative actions through the library leave records: a key manager
 * with an audit log records create, rotate and revoke (and failures), with
 * the thread's request context as the actor; without one, nothing.
 */
static void test_key_actions_through_the_library(void **state)
{
    fx *f = *state;
    phg_keys_options ko;
    phg_keys *keys = NULL;
    phg_audit *a;
    phg_apikey_spec spec;
    phg_apikey_record rec, fresh;
    phg_request_context ctx;
    phg_audit_filter flt;
    phg_audit_row *rows = NULL;
    char key[PHG_APIKEY_LEN + 1], err[256];
    size_t n = 0;

    phg_keys_options_init(&ko);
    ko.start_poller = 0;
    EXPECT_RC(phg_keys_open(f->st, &ko, &keys), PHG_OK);
    memset(&spec, 0, sizeof spec);
    spec.role = PHG_ROLE_USER;
    spec.user_id = "patient-9";
    spec.created_by = "lib-test";
    spec.description = "Zebediah Quixote";
    /* no audit set: nothing recorded */
    EXPECT_RC(phg_keys_create(keys, &spec, key, &rec, err, sizeof err), PHG_OK);
    a = open_audit(f, "node-lib", 0);
    memset(&ctx, 0, sizeof ctx);
    snprintf(ctx.user_id, sizeof ctx.user_id, "admin-7");
    snprintf(ctx.role, sizeof ctx.role, "admin");
    snprintf(ctx.key_id, sizeof ctx.key_id, "ak_adminadminadmin");
    phg_request_context_set(&ctx);
    phg_keys_set_audit(keys, a);
    EXPECT_RC(phg_keys_create(keys, &spec, key, &rec, err, sizeof err), PHG_OK);
    EXPECT_RC(phg_keys_rotate(keys, rec.id, 0, key, &fresh), PHG_OK);
    EXPECT_RC(phg_keys_revoke(keys, fresh.id), PHG_OK);
    EXPECT_RC(phg_keys_revoke(keys, "ak_doesnotexist00"), PHG_ERR_NOT_FOUND);
    phg_keys_set_audit(keys, NULL);
    phg_request_context_set(NULL);
    phg_audit_close(a);
    phg_keys_close(keys);

    memset(&flt, 0, sizeof flt);
    flt.limit = 10;
    flt.user_id = "admin-7";
    EXPECT_RC(phg_audit_query(f->st, &flt, &rows, &n, err, sizeof err), PHG_OK);
    EXPECT(n == 4, "[%s] %zu records of admin-7, want 4", ENG, n);
    if (n == 4) {
        const char *want[4][2] = {{"keys.revoke", "error"},
                                  {"keys.revoke", "success"},
                                  {"keys.rotate", "success"},
                                  {"keys.create", "success"}};
        for (size_t i = 0; i < 4; i++) {
            json_t *o = json_loads(rows[i].json, 0, NULL);
            const char *action = json_string_value(json_object_get(o, "action"));
            const char *outcome = json_string_value(json_object_get(o, "outcome"));
            json_t *actor = json_object_get(o, "actor");
            EXPECT(action && strcmp(action, want[i][0]) == 0 && outcome &&
                       strcmp(outcome, want[i][1]) == 0,
                   "[%s] record %zu: %s/%s, want %s/%s", ENG, i, action ? action : "?",
                   outcome ? outcome : "?", want[i][0], want[i][1]);
            EXPECT(strcmp(json_string_value(json_object_get(actor, "key_id")),
                          "ak_adminadminadmin") == 0,
                   "[%s] actor key", ENG);
            EXPECT(strstr(rows[i].json, key) == NULL && strstr(rows[i].json, "Zebediah") == NULL,
                   "[%s] a key or the description reached the audit log", ENG);
            json_decref(o);
        }
    }
    phg_audit_rows_free(rows, n);
    expect_verify_ok(f, 4, 1, "after library key actions");
}

/* Keyring changes through the library leave records too. */
static void test_keyring_actions_through_the_library(void **state)
{
    fx *f = *state;
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    phg_audit *a;
    phg_request_context ctx;
    phg_audit_filter flt;
    phg_audit_row *rows = NULL;
    char mkey[PHG_FERNET_KEY_TEXT_LEN + 1], first[PHG_PHI_KID_MAX + 1], err[256];
    size_t n = 0;

    EXPECT_RC(phg_fernet_key_generate(mkey), PHG_OK);
    EXPECT_RC(phg_phi_masterkeys_parse(mkey, strlen(mkey), &mk), PHG_OK);
    EXPECT_RC(phg_keyring_create(mk, NULL, &kr), PHG_OK);
    EXPECT_RC(phg_keyring_primary(kr, first), PHG_OK);
    a = open_audit(f, "node-kr", 0);
    memset(&ctx, 0, sizeof ctx);
    snprintf(ctx.user_id, sizeof ctx.user_id, "security-officer");
    snprintf(ctx.role, sizeof ctx.role, "admin");
    phg_request_context_set(&ctx);
    phg_keyring_set_audit(kr, a);
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    EXPECT_RC(phg_keyring_destroy(kr, first), PHG_OK);
    EXPECT_RC(phg_keyring_destroy(kr, "nosuchkid"), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keyring_rewrap(kr, mk), PHG_OK);
    phg_keyring_set_audit(kr, NULL);
    phg_request_context_set(NULL);
    phg_audit_close(a);

    memset(&flt, 0, sizeof flt);
    flt.limit = 10;
    flt.user_id = "security-officer";
    EXPECT_RC(phg_audit_query(f->st, &flt, &rows, &n, err, sizeof err), PHG_OK);
    EXPECT(n == 4, "[%s] %zu keyring records, want 4", ENG, n);
    if (n == 4) {
        EXPECT(strstr(rows[0].json, "\"keyring.rewrap\"") != NULL, "[%s] rewrap", ENG);
        EXPECT(strstr(rows[1].json, "\"keyring.destroy\"") != NULL &&
                   strstr(rows[1].json, "\"error\"") != NULL,
               "[%s] failed destroy", ENG);
        EXPECT(strstr(rows[2].json, first) != NULL, "[%s] destroy names the kid", ENG);
        EXPECT(strstr(rows[3].json, "\"keyring.rotate\"") != NULL, "[%s] rotate", ENG);
        for (size_t i = 0; i < n; i++)
            EXPECT(strstr(rows[i].json, mkey) == NULL, "[%s] master key in a record", ENG);
    }
    phg_audit_rows_free(rows, n);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
}

/* ---- main ------------------------------------------------------------------------------------------ */

/* The hand-written renderer gives exactly jansson's canonical text (sorted
 * keys, compact, jansson's escapes) for strings with every kind of escape. */
static void test_render_equals_jansson(void **state)
{
    fx *f = *state;
    phg_audit *a = open_audit(f, "node-r", 0);
    /* fields refuse control characters (text_ok); details may hold them */
    static const char *const tricky[] = {
        "plain", "quote\" and back\\slash", "\\u0041 \\n", "q\"\"\\\"",
        "slash / and </script>", "utf-8 \xc3\xa9\xe2\x82\xac\xf0\x9f\x92\x93", "",
    };
    static const char *const ctl[] = {"tab\tnl\ncr\rbs\bff\f", "ctl\x01\x1f\x7f", "x"};
    size_t i, n = 0;
    char ids[8][PHG_ULID_LEN + 1], err[256] = "";
    phg_audit_filter q;
    phg_audit_row *rows = NULL;
    for (i = 0; i < sizeof tricky / sizeof tricky[0]; i++) {
        phg_audit_event e = ev_of(i % 2 ? "x.\"act\"" : "http.request", "success");
        char details[256];
        json_t *d = json_pack("{s:s,s:i,s:[s,f],s:s}", "note_free", tricky[i], "n", (int)i, "arr",
                              tricky[i], 48.2, "c", ctl[i % 3]);
        char *dt = json_dumps(d, JSON_COMPACT);
        snprintf(details, sizeof details, "%s", dt);
        free(dt);
        json_decref(d);
        e.key_id = tricky[i];
        e.user_id = tricky[(i + 1) % 7];
        e.role = i % 2 ? "r\"\\/" : "user"; /* role and request id are short fields */
        e.resource = tricky[(i + 3) % 7];
        e.ip = tricky[(i + 4) % 7];
        e.request_id = i % 2 ? "rid\"/\\" : "";
        e.subject = tricky[(i + 6) % 7];
        e.details_json = details;
        append_ok(a, &e, ids[i]);
    }
    phg_audit_close(a);
    memset(&q, 0, sizeof q);
    q.limit = 100;
    EXPECT(phg_audit_query(f->st, &q, &rows, &n, err, sizeof err) == PHG_OK, "query: %s", err);
    EXPECT(n >= sizeof tricky / sizeof tricky[0], "[%s] %zu records", ENG, n);
    for (i = 0; i < n; i++) {
        json_error_t jerr;
        json_t *rec = json_loads(rows[i].json, 0, &jerr);
        char *again, *stored;
        const char *h;
        EXPECT(rec != NULL, "[%s] stored record does not parse: %s", ENG, jerr.text);
        json_object_del(rec, "hash");
        again = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS);
        /* the stored text with its "hash" member taken out */
        stored = strdup(rows[i].json);
        h = strstr(stored, ",\"hash\":\"");
        EXPECT(h != NULL, "no hash member");
        memmove(stored + (h - stored), h + 9 + 64 + 1, strlen(h + 9 + 64 + 1) + 1);
        EXPECT(strcmp(again, stored) == 0, "[%s] rendering differs from jansson:\n%s\n%s", ENG,
               stored, again);
        free(again);
        free(stored);
        json_decref(rec);
    }
    phg_audit_rows_free(rows, n);
}

#define DB_TEST(t) cmocka_unit_test_setup_teardown(t, db_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        DB_TEST(test_append_and_read),
        DB_TEST(test_render_equals_jansson),
        DB_TEST(test_request_context),
        DB_TEST(test_group_commit),
        DB_TEST(test_fail_closed),
        DB_TEST(test_resume),
        DB_TEST(test_untampered),
        DB_TEST(test_tamper_edit),
        DB_TEST(test_tamper_edit_rehash),
        DB_TEST(test_tamper_edit_rehash_checkpointed),
        DB_TEST(test_tamper_delete),
        DB_TEST(test_tamper_insert),
        DB_TEST(test_tamper_insert_forged),
        DB_TEST(test_tamper_reorder),
        DB_TEST(test_tamper_truncate),
        DB_TEST(test_tamper_truncate_head),
        DB_TEST(test_tamper_checkpoint_mac),
        DB_TEST(test_tamper_checkpoint_hash),
        DB_TEST(test_crash),
        DB_TEST(test_queries),
        DB_TEST(test_masking),
        DB_TEST(test_partitions),
        DB_TEST(test_verify_window_after_old_chain),
        DB_TEST(test_resume_after_clock_step_back),
        DB_TEST(test_key_actions_through_the_library),
        DB_TEST(test_keyring_actions_through_the_library),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("audit/sqlite", tests, tdb_group_sqlite, NULL);
    failed += cmocka_run_group_tests_name("audit/postgres", tests, tdb_group_postgres, NULL);
    return failed != 0;
}
