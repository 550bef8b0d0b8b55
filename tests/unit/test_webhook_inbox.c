/*
 * test_webhook_inbox.c: the durable webhook inbox (phigate/webhook_inbox.h),
 * on SQLite and on PostgreSQL (testdb.h): put and get round-trip the body,
 * which is stored only as phi1 text under "webhook:" + id; duplicates of
 * (source, msg_id) give EXISTS with the first id, across and within batches,
 * from several threads; claim leases; delivered / retry / dead and their
 * STATE errors; replay and replay_all; list filters and paging; stats;
 * bounded purge; validation; the queue limit; a close and reopen; a body
 * that no longer decrypts goes dead on claim; bodies over one phi1 field.
 */
#include <pthread.h>

#include "phigate.h"
#include "phigate/webhook_inbox.h"
#include "store_internal.h"

#include "testdb.h"

#define MK1 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define SECRET_BODY "{\"patient\":\"Jane Roe\",\"hrv\":\"PLAINTEXT-MARKER-42\"}"

typedef struct fx {
    testdb db;
    phg_store *st;
    phg_masterkeys *mk;
    phg_keyring *kr;
    phg_wh_inbox *ib;
} fx;

static void open_all(fx *f, const phg_wh_inbox_options *o)
{
    char err[PHG_STORE_ERR_MAX] = "";
    assert_int_equal(tdb_open_store(&f->db, 4, &f->st, err, sizeof err), PHG_OK);
    assert_int_equal(phg_store_migrate(f->st, NULL, NULL, err, sizeof err), PHG_OK);
    assert_int_equal(phg_wh_inbox_open(f->st, f->kr, o, &f->ib), PHG_OK);
}

static void close_all(fx *f)
{
    phg_wh_inbox_close(f->ib);
    f->ib = NULL;
    phg_store_close(f->st);
    f->st = NULL;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    *state = f;
    tdb_create(&f->db, g_engine, "whinbox");
    assert_int_equal(phg_phi_masterkeys_parse(MK1, strlen(MK1), &f->mk), PHG_OK);
    assert_int_equal(phg_keyring_create(f->mk, NULL, &f->kr), PHG_OK);
    open_all(f, NULL);
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    close_all(f);
    phg_keyring_free(f->kr);
    phg_phi_masterkeys_free(f->mk);
    tdb_drop(&f->db);
    free(f);
    return 0;
}

static phg_wh_event_in event(const char *source, const char *msg_id, const char *body,
                             int64_t received_ms)
{
    phg_wh_event_in e;
    memset(&e, 0, sizeof e);
    e.source = source;
    e.msg_id = msg_id;
    e.authenticated = 1;
    e.secret_index = 0;
    e.signed_ts_s = 1700000000;
    e.received_ms = received_ms;
    e.content_type = "application/json";
    e.body = (const uint8_t *)body;
    e.body_len = body != NULL ? strlen(body) : 0;
    e.request_id = "req-1";
    return e;
}

static void put_ok(fx *f, const char *source, const char *msg_id, const char *body,
                   int64_t received_ms, char id[PHG_WH_EVENT_ID_LEN + 1])
{
    phg_wh_event_in e = event(source, msg_id, body, received_ms);
    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id), PHG_OK);
    assert_int_equal(strlen(id), PHG_WH_EVENT_ID_LEN);
}

static long long q(fx *f, const char *sql)
{
    char err[512];
    long long v = tdb_query_int(&f->db, sql, err, sizeof err);
    if (v == -2)
        fail_msg("%s: %s", sql, err);
    return v;
}

/* The stored body_enc of an event, read behind the library's back (malloc'd). */
static char *raw_body_enc(fx *f, const char *id)
{
    char *out = NULL;
    if (f->db.engine == TDB_SQLITE) {
        sqlite3 *s = NULL;
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_open_v2(f->db.path, &s, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(s, "SELECT body_enc FROM webhook_events WHERE id = ?1",
                                            -1, &st, NULL),
                         SQLITE_OK);
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        out = strdup((const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        sqlite3_close(s);
    } else {
        PGconn *pg = tdb_pg_connect(f->db.url);
        const char *vals[1] = {id};
        PGresult *res = PQexecParams(pg, "SELECT body_enc FROM webhook_events WHERE id = $1", 1,
                                     NULL, vals, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
        assert_int_equal(PQntuples(res), 1);
        out = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        PQfinish(pg);
    }
    assert_non_null(out);
    return out;
}

/* ---- put / get -------------------------------------------------------------------------- */

static void test_put_get_roundtrip(void **state)
{
    fx *f = *state;
    char id[PHG_WH_EVENT_ID_LEN + 1], id2[PHG_WH_EVENT_ID_LEN + 1], lower[PHG_WH_EVENT_ID_LEN + 1];
    char ctx[64], sql[256];
    phg_wh_event_in e = event("oura-1", "msg_1", SECRET_BODY, 1700000000123);
    phg_wh_event *ev = NULL;
    uint8_t pt[256];
    size_t pt_len = 0, i;
    char *enc;

    e.secret_index = 2;
    e.content_type = "application/json; charset=utf-8";
    e.request_id = "01HREQ";
    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id), PHG_OK);
    assert_int_equal(strlen(id), PHG_WH_EVENT_ID_LEN);

    assert_int_equal(phg_wh_inbox_get(f->ib, id, &ev), PHG_OK);
    assert_string_equal(ev->id, id);
    assert_string_equal(ev->source, "oura-1");
    assert_string_equal(ev->msg_id, "msg_1");
    assert_string_equal(ev->request_id, "01HREQ");
    assert_int_equal(ev->authenticated, 1);
    assert_int_equal(ev->secret_index, 2);
    assert_int_equal(ev->signed_ts_s, 1700000000);
    assert_int_equal(ev->received_ms, 1700000000123);
    assert_string_equal(ev->content_type, "application/json; charset=utf-8");
    assert_int_equal(ev->state, PHG_WH_EVENT_PENDING);
    assert_int_equal(ev->attempts, 0);
    assert_int_equal(ev->next_attempt_ms, 1700000000123); /* due at once */
    assert_int_equal(ev->delivered_ms, 0);
    assert_int_equal(ev->last_attempt_ms, 0);
    assert_int_equal(ev->last_status, 0);
    assert_string_equal(ev->last_error, "");
    assert_int_equal(ev->body_len, strlen(SECRET_BODY));
    assert_memory_equal(ev->body, SECRET_BODY, strlen(SECRET_BODY));
    phg_wh_event_free(ev);
    ev = NULL;

    /* the id in lower case finds it too */
    for (i = 0; i <= PHG_WH_EVENT_ID_LEN; i++)
        lower[i] = (char)(id[i] >= 'A' && id[i] <= 'Z' ? id[i] - 'A' + 'a' : id[i]);
    assert_int_equal(phg_wh_inbox_get(f->ib, lower, &ev), PHG_OK);
    assert_string_equal(ev->id, id);
    phg_wh_event_free(ev);

    /* at rest: phi1 text, no plaintext */
    snprintf(sql, sizeof sql, "SELECT count(*) FROM webhook_events WHERE %s(body_enc, '%s') > 0",
             f->db.engine == TDB_SQLITE ? "instr" : "strpos", "PLAINTEXT-MARKER");
    assert_int_equal(q(f, sql), 0);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM webhook_events WHERE %s(body_enc, '%s') > 0",
             f->db.engine == TDB_SQLITE ? "instr" : "strpos", "Jane");
    assert_int_equal(q(f, sql), 0);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE body_enc LIKE 'phi1.%'"), 1);
    assert_int_equal(q(f, "SELECT state FROM webhook_events"), 0);

    /* the documented format: phi1 under "webhook:" + id, and no other context */
    enc = raw_body_enc(f, id);
    snprintf(ctx, sizeof ctx, "webhook:%s", id);
    assert_int_equal(
        phg_phi_decrypt(f->kr, ctx, strlen(ctx), enc, strlen(enc), pt, sizeof pt, &pt_len), PHG_OK);
    assert_int_equal(pt_len, strlen(SECRET_BODY));
    assert_memory_equal(pt, SECRET_BODY, pt_len);
    assert_int_equal(
        phg_phi_decrypt(f->kr, "webhook:x", 9, enc, strlen(enc), pt, sizeof pt, &pt_len),
        PHG_ERR_AUTH);
    free(enc);

    /* an empty body is encrypted too, and comes back empty */
    e = event("oura-1", "msg_empty", NULL, 5);
    e.content_type = NULL;
    e.request_id = NULL;
    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id2), PHG_OK);
    assert_int_equal(phg_wh_inbox_get(f->ib, id2, &ev), PHG_OK);
    assert_int_equal(ev->body_len, 0);
    assert_non_null(ev->body);
    assert_string_equal(ev->content_type, "");
    assert_string_equal(ev->request_id, "");
    phg_wh_event_free(ev);
    enc = raw_body_enc(f, id2);
    assert_int_equal(strncmp(enc, "phi1.", 5), 0);
    free(enc);
    assert_true(strcmp(id2, id) > 0); /* ids grow */

    /* unknown and malformed ids */
    {
        char other[PHG_ULID_LEN + 1];
        assert_int_equal(phg_ulid_new_text(other), PHG_OK);
        ev = (phg_wh_event *)1;
        assert_int_equal(phg_wh_inbox_get(f->ib, other, &ev), PHG_ERR_NOT_FOUND);
        assert_null(ev);
        assert_int_equal(phg_wh_inbox_get(f->ib, "nope", &ev), PHG_ERR_NOT_FOUND);
        assert_int_equal(phg_wh_inbox_get(f->ib, "' OR 1=1 --", &ev), PHG_ERR_NOT_FOUND);
    }
    phg_wh_event_free(NULL);
    phg_wh_events_free(NULL, 3);
}

/* A body over one phi1 field (16 MiB) is kept in chunks and comes back whole. */
static void test_large_body(void **state)
{
    fx *f = *state;
    size_t len = PHG_PHI_PLAINTEXT_MAX + 1000, i, commas = 0;
    uint8_t *body = malloc(len);
    phg_wh_event_in e = event("big", "m-big", NULL, 1);
    char id[PHG_WH_EVENT_ID_LEN + 1], *enc;
    phg_wh_event *ev = NULL;

    assert_non_null(body);
    for (i = 0; i < len; i++)
        body[i] = (uint8_t)(i * 131 + 7);
    e.body = body;
    e.body_len = len;
    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id), PHG_OK);
    assert_int_equal(phg_wh_inbox_get(f->ib, id, &ev), PHG_OK);
    assert_int_equal(ev->body_len, len);
    assert_memory_equal(ev->body, body, len);
    phg_wh_event_free(ev);
    enc = raw_body_enc(f, id);
    for (i = 0; enc[i] != '\0'; i++)
        commas += enc[i] == ',';
    assert_int_equal(commas, 1);
    free(enc);
    free(body);
}

/* ---- duplicates ------------------------------------------------------------------------- */

static void test_duplicates(void **state)
{
    fx *f = *state;
    char id1[PHG_WH_EVENT_ID_LEN + 1], id2[PHG_WH_EVENT_ID_LEN + 1], id3[PHG_WH_EVENT_ID_LEN + 1];
    phg_wh_event_in e = event("stripe", "sig-abc", "first", 10);
    phg_wh_event *ev = NULL;
    phg_wh_inbox_stats s;

    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id1), PHG_OK);
    e = event("stripe", "sig-abc", "second, different body", 20);
    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id2), PHG_ERR_EXISTS);
    assert_string_equal(id2, id1);
    /* the first stays as it was */
    assert_int_equal(phg_wh_inbox_get(f->ib, id1, &ev), PHG_OK);
    assert_int_equal(ev->body_len, 5);
    assert_memory_equal(ev->body, "first", 5);
    phg_wh_event_free(ev);
    /* another source may use the same msg_id */
    e = event("oura", "sig-abc", "x", 30);
    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id3), PHG_OK);
    assert_string_not_equal(id3, id1);

    assert_int_equal(phg_wh_inbox_find(f->ib, "stripe", "sig-abc", id2), PHG_OK);
    assert_string_equal(id2, id1);
    assert_int_equal(phg_wh_inbox_find(f->ib, "stripe", "sig-zzz", id2), PHG_ERR_NOT_FOUND);
    assert_string_equal(id2, "");
    assert_int_equal(phg_wh_inbox_find(f->ib, "Bad Source", "x", id2), PHG_ERR_INVALID);
    assert_int_equal(phg_wh_inbox_find(f->ib, "stripe", "", id2), PHG_ERR_INVALID);

    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events"), 2);
    assert_int_equal(phg_wh_inbox_stats_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.written, 2);
    assert_int_equal(s.duplicates, 1);
    assert_int_equal(s.failed, 0);
    assert_int_equal(s.pending, 2);
}

/* The writer's first callback holds the writer until the test lets it go,
 * so that everything queued meanwhile is committed in one batch. */
typedef struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int held;    /* the writer is inside the holding callback */
    int release; /* let it go */
} gate;

static void gate_init(gate *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
}

static void gate_destroy(gate *g)
{
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->lock);
}

static void gate_hold_cb(void *arg, phg_status status, const char *id)
{
    gate *g = arg;
    (void)status;
    (void)id;
    pthread_mutex_lock(&g->lock);
    g->held = 1;
    pthread_cond_broadcast(&g->cond);
    while (!g->release)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void gate_wait_held(gate *g)
{
    pthread_mutex_lock(&g->lock);
    while (!g->held)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->release = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

#define DUP_THREADS 4
#define DUP_PER_THREAD 25
#define DUP_DISTINCT 10

typedef struct dup_results {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done, ok, exists, other;
    char ids[DUP_DISTINCT][PHG_WH_EVENT_ID_LEN + 1]; /* the id each msg got, first seen */
    int mismatches;
} dup_results;

typedef struct dup_call {
    dup_results *r;
    int msg;
} dup_call;

static void dup_cb(void *arg, phg_status status, const char *id)
{
    dup_call *c = arg;
    dup_results *r = c->r;
    pthread_mutex_lock(&r->lock);
    if (status == PHG_OK)
        r->ok++;
    else if (status == PHG_ERR_EXISTS)
        r->exists++;
    else
        r->other++;
    if (status == PHG_OK || status == PHG_ERR_EXISTS) {
        if (r->ids[c->msg][0] == '\0')
            snprintf(r->ids[c->msg], sizeof r->ids[c->msg], "%s", id);
        else if (strcmp(r->ids[c->msg], id) != 0)
            r->mismatches++;
    }
    r->done++;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

typedef struct dup_thread {
    phg_wh_inbox *ib;
    int index;
    dup_call calls[DUP_PER_THREAD];
    int refused;
} dup_thread;

static void *dup_main(void *arg)
{
    dup_thread *t = arg;
    char msg[32], body[64];
    int i;
    for (i = 0; i < DUP_PER_THREAD; i++) {
        int n = t->index * DUP_PER_THREAD + i;
        phg_wh_event_in e;
        snprintf(msg, sizeof msg, "m-%d", t->calls[i].msg);
        snprintf(body, sizeof body, "body of put %d", n);
        e = event("dup", msg, body, 1000 + n);
        if (phg_wh_inbox_put_async(t->ib, &e, dup_cb, &t->calls[i]) != PHG_OK)
            t->refused++;
    }
    return NULL;
}

static void test_duplicates_concurrent(void **state)
{
    fx *f = *state;
    dup_results r;
    dup_thread th[DUP_THREADS];
    pthread_t tid[DUP_THREADS];
    phg_wh_event_in e = event("hold", "hold-1", "x", 1);
    phg_wh_inbox_stats s;
    gate g;
    int i, j;
    char sql[128];

    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.cond, NULL);
    gate_init(&g);
    /* hold the writer in a callback while the threads queue 100 events */
    assert_int_equal(phg_wh_inbox_put_async(f->ib, &e, gate_hold_cb, &g), PHG_OK);
    gate_wait_held(&g);
    for (i = 0; i < DUP_THREADS; i++) {
        th[i].ib = f->ib;
        th[i].index = i;
        th[i].refused = 0;
        for (j = 0; j < DUP_PER_THREAD; j++) {
            th[i].calls[j].r = &r;
            th[i].calls[j].msg = (i * DUP_PER_THREAD + j) % DUP_DISTINCT;
        }
        assert_int_equal(pthread_create(&tid[i], NULL, dup_main, &th[i]), 0);
    }
    for (i = 0; i < DUP_THREADS; i++) {
        pthread_join(tid[i], NULL);
        assert_int_equal(th[i].refused, 0);
    }
    assert_int_equal(phg_wh_inbox_stats_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.queue_depth, DUP_THREADS * DUP_PER_THREAD);
    gate_open(&g);

    pthread_mutex_lock(&r.lock);
    while (r.done < DUP_THREADS * DUP_PER_THREAD)
        pthread_cond_wait(&r.cond, &r.lock);
    pthread_mutex_unlock(&r.lock);
    assert_int_equal(r.ok, DUP_DISTINCT);
    assert_int_equal(r.exists, DUP_THREADS * DUP_PER_THREAD - DUP_DISTINCT);
    assert_int_equal(r.other, 0);
    assert_int_equal(r.mismatches, 0);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE source = 'dup'"),
                     DUP_DISTINCT);
    for (i = 0; i < DUP_DISTINCT; i++) {
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM webhook_events WHERE source = 'dup' AND id = '%s'",
                 r.ids[i]);
        assert_int_equal(q(f, sql), 1);
    }
    assert_int_equal(phg_wh_inbox_stats_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.written, DUP_DISTINCT + 1);
    assert_int_equal(s.duplicates, DUP_THREADS * DUP_PER_THREAD - DUP_DISTINCT);
    /* the hold's own batch, then the 100 queued in one (max_batch 256) */
    assert_int_equal(s.commits, 2);
    assert_int_equal(s.queue_depth, 0);
    gate_destroy(&g);
    pthread_cond_destroy(&r.cond);
    pthread_mutex_destroy(&r.lock);
}

/* A full queue refuses (UNAVAILABLE) and calls no callback. */
static void test_queue_full(void **state)
{
    fx *f = *state;
    phg_wh_inbox_options o;
    phg_wh_event_in e;
    dup_results r;
    dup_call c = {&r, 0};
    gate g;

    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.cond, NULL);
    phg_wh_inbox_close(f->ib);
    phg_wh_inbox_options_init(&o);
    assert_int_equal(o.max_batch, 256);
    assert_int_equal(o.max_queue, 65536);
    o.max_queue = 1;
    assert_int_equal(phg_wh_inbox_open(f->st, f->kr, &o, &f->ib), PHG_OK);
    gate_init(&g);
    e = event("q", "q-0", "x", 1);
    assert_int_equal(phg_wh_inbox_put_async(f->ib, &e, gate_hold_cb, &g), PHG_OK);
    gate_wait_held(&g);
    e = event("q", "q-1", "x", 1);
    assert_int_equal(phg_wh_inbox_put_async(f->ib, &e, dup_cb, &c), PHG_OK);
    e = event("q", "q-2", "x", 1);
    assert_int_equal(phg_wh_inbox_put_async(f->ib, &e, dup_cb, &c), PHG_ERR_UNAVAILABLE);
    gate_open(&g);
    /* close drains the queue: q-1's callback runs before it returns */
    phg_wh_inbox_close(f->ib);
    f->ib = NULL;
    assert_int_equal(r.done, 1);
    assert_int_equal(r.ok, 1);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE source = 'q'"), 2);
    assert_int_equal(phg_wh_inbox_open(f->st, f->kr, NULL, &f->ib), PHG_OK);
    /* bad options */
    {
        phg_wh_inbox *bad = NULL;
        o.max_batch = 0;
        assert_int_equal(phg_wh_inbox_open(f->st, f->kr, &o, &bad), PHG_ERR_INVALID);
        assert_null(bad);
    }
    gate_destroy(&g);
    pthread_cond_destroy(&r.cond);
    pthread_mutex_destroy(&r.lock);
}

/* ---- claim and the delivery states ------------------------------------------------------ */

static void test_claim_lease(void **state)
{
    fx *f = *state;
    char a[PHG_WH_EVENT_ID_LEN + 1], b[PHG_WH_EVENT_ID_LEN + 1], c[PHG_WH_EVENT_ID_LEN + 1];
    phg_wh_event *evs = NULL;
    size_t n = 99;

    put_ok(f, "s", "c-3", "third", 3000, c);
    put_ok(f, "s", "c-1", "first", 1000, a);
    put_ok(f, "s", "c-2", "second", 2000, b);

    /* due ones only, oldest first, with bodies; leased until now + lease */
    assert_int_equal(phg_wh_inbox_claim(f->ib, 2500, 10000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_string_equal(evs[0].id, a);
    assert_string_equal(evs[1].id, b);
    assert_int_equal(evs[0].body_len, 5);
    assert_memory_equal(evs[0].body, "first", 5);
    assert_memory_equal(evs[1].body, "second", 6);
    assert_int_equal(evs[0].next_attempt_ms, 12500);
    assert_int_equal(evs[0].state, PHG_WH_EVENT_PENDING);
    phg_wh_events_free(evs, n);

    /* a second claim at the same time gets nothing: leased, or not due */
    evs = (phg_wh_event *)1;
    assert_int_equal(phg_wh_inbox_claim(f->ib, 2500, 10000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 0);
    assert_null(evs);
    /* c falls due */
    assert_int_equal(phg_wh_inbox_claim(f->ib, 3000, 10000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, c);
    phg_wh_events_free(evs, n);
    /* one ms before the lease ends: nothing */
    assert_int_equal(phg_wh_inbox_claim(f->ib, 12499, 10000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 0);
    /* when it ends: again (at least once), max respected */
    assert_int_equal(phg_wh_inbox_claim(f->ib, 12500, 10000, 1, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, a);
    assert_int_equal(evs[0].next_attempt_ms, 22500);
    phg_wh_events_free(evs, n);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 12500, 10000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, b);
    phg_wh_events_free(evs, n);

    /* bad arguments */
    assert_int_equal(phg_wh_inbox_claim(f->ib, 1, 10, 0, &evs, &n), PHG_ERR_INVALID);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 1, 10, PHG_WH_LIST_MAX + 1, &evs, &n),
                     PHG_ERR_INVALID);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 1, 0, 1, &evs, &n), PHG_ERR_INVALID);
    assert_int_equal(phg_wh_inbox_claim(f->ib, INT64_MAX - 5, 10, 1, &evs, &n), PHG_ERR_INVALID);
}

#define CLAIM_EVENTS 120
#define CLAIM_THREADS 4

typedef struct claimer {
    phg_wh_inbox *ib;
    int got[CLAIM_EVENTS]; /* how often each event (by its number) was leased */
    int errors;
} claimer;

static void *claim_main(void *arg)
{
    claimer *c = arg;
    for (;;) {
        phg_wh_event *evs = NULL;
        size_t n = 0, i;
        if (phg_wh_inbox_claim(c->ib, 1000, 60000, 7, &evs, &n) != PHG_OK) {
            c->errors++;
            break;
        }
        if (n == 0)
            break;
        for (i = 0; i < n; i++) {
            char num[16] = "";
            int k = -1;
            if (evs[i].body_len < sizeof num) {
                memcpy(num, evs[i].body, evs[i].body_len); /* a body has no NUL of its own */
                num[evs[i].body_len] = '\0';
                k = atoi(num);
            }
            if (k < 0 || k >= CLAIM_EVENTS)
                c->errors++;
            else
                c->got[k]++;
        }
        phg_wh_events_free(evs, n);
    }
    return NULL;
}

/* Claimers at the same time never lease one event twice, and miss none. */
static void test_concurrent_claim(void **state)
{
    fx *f = *state;
    static claimer cl[CLAIM_THREADS];
    pthread_t tid[CLAIM_THREADS];
    char id[PHG_WH_EVENT_ID_LEN + 1], msg[32], body[32];
    int i, k, total;

    for (k = 0; k < CLAIM_EVENTS; k++) {
        snprintf(msg, sizeof msg, "cc-%d", k);
        snprintf(body, sizeof body, "%d", k);
        put_ok(f, "cc", msg, body, k, id);
    }
    for (i = 0; i < CLAIM_THREADS; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].ib = f->ib;
        assert_int_equal(pthread_create(&tid[i], NULL, claim_main, &cl[i]), 0);
    }
    for (i = 0; i < CLAIM_THREADS; i++)
        pthread_join(tid[i], NULL);
    for (k = 0; k < CLAIM_EVENTS; k++) {
        total = 0;
        for (i = 0; i < CLAIM_THREADS; i++)
            total += cl[i].got[k];
        if (total != 1)
            fail_msg("[%s] event %d leased %d times", tdb_engine_name(g_engine), k, total);
    }
    for (i = 0; i < CLAIM_THREADS; i++)
        assert_int_equal(cl[i].errors, 0);
}

static phg_wh_event *get(fx *f, const char *id)
{
    phg_wh_event *ev = NULL;
    assert_int_equal(phg_wh_inbox_get(f->ib, id, &ev), PHG_OK);
    return ev;
}

static void test_transitions(void **state)
{
    fx *f = *state;
    char a[PHG_WH_EVENT_ID_LEN + 1], b[PHG_WH_EVENT_ID_LEN + 1], unknown[PHG_ULID_LEN + 1];
    char long_err[400];
    phg_wh_event *ev, *evs = NULL;
    size_t n = 0;

    put_ok(f, "s", "t-a", "A", 100, a);
    put_ok(f, "s", "t-b", "B", 100, b);
    assert_int_equal(phg_ulid_new_text(unknown), PHG_OK);

    /* delivered */
    assert_int_equal(phg_wh_inbox_delivered(f->ib, a, 5000, 204), PHG_OK);
    ev = get(f, a);
    assert_int_equal(ev->state, PHG_WH_EVENT_DELIVERED);
    assert_int_equal(ev->delivered_ms, 5000);
    assert_int_equal(ev->last_attempt_ms, 5000);
    assert_int_equal(ev->last_status, 204);
    assert_int_equal(ev->attempts, 1);
    assert_string_equal(ev->last_error, "");
    phg_wh_event_free(ev);
    /* nothing more happens to a delivered event */
    assert_int_equal(phg_wh_inbox_delivered(f->ib, a, 6000, 200), PHG_ERR_STATE);
    assert_int_equal(phg_wh_inbox_retry(f->ib, a, 6000, 500, "x", 7000), PHG_ERR_STATE);
    assert_int_equal(phg_wh_inbox_dead(f->ib, a, 6000, 500, "x"), PHG_ERR_STATE);
    assert_int_equal(phg_wh_inbox_replay(f->ib, a, 6000), PHG_ERR_STATE);
    ev = get(f, a);
    assert_int_equal(ev->attempts, 1);
    phg_wh_event_free(ev);
    /* unknown ids */
    assert_int_equal(phg_wh_inbox_delivered(f->ib, unknown, 1, 200), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_wh_inbox_retry(f->ib, unknown, 1, 500, "", 2), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_wh_inbox_dead(f->ib, unknown, 1, 500, NULL), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_wh_inbox_replay(f->ib, unknown, 1), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_wh_inbox_delivered(f->ib, "bogus", 1, 200), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_wh_inbox_delivered(f->ib, NULL, 1, 200), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_wh_inbox_delivered(f->ib, b, -1, 200), PHG_ERR_INVALID);
    assert_int_equal(phg_wh_inbox_delivered(f->ib, b, 1, -5), PHG_ERR_INVALID);

    /* retry: stays pending, due later; the error is kept as printable text */
    assert_int_equal(phg_wh_inbox_retry(f->ib, b, 5000, 503, "upstream said 503\n\x01ok", 9000),
                     PHG_OK);
    ev = get(f, b);
    assert_int_equal(ev->state, PHG_WH_EVENT_PENDING);
    assert_int_equal(ev->attempts, 1);
    assert_int_equal(ev->next_attempt_ms, 9000);
    assert_int_equal(ev->last_attempt_ms, 5000);
    assert_int_equal(ev->last_status, 503);
    assert_string_equal(ev->last_error, "upstream said 503??ok");
    phg_wh_event_free(ev);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 8999, 1000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 0);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 9000, 1000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, b);
    /* a claim shows the attempts so far */
    assert_int_equal(evs[0].attempts, 1);
    assert_int_equal(evs[0].last_status, 503);
    assert_int_equal(evs[0].received_ms, 100);
    assert_int_equal(evs[0].next_attempt_ms, 10000);
    phg_wh_events_free(evs, n);
    /* a second retry counts a second attempt */
    assert_int_equal(phg_wh_inbox_retry(f->ib, b, 9100, 502, "bad gateway", 9200), PHG_OK);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 9200, 1000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_int_equal(evs[0].attempts, 2);
    assert_int_equal(evs[0].last_status, 502);
    phg_wh_events_free(evs, n);
    /* replay of a pending event: refused */
    assert_int_equal(phg_wh_inbox_replay(f->ib, b, 1), PHG_ERR_STATE);

    /* dead, with an error truncated to PHG_WH_ERROR_MAX */
    memset(long_err, 'e', sizeof long_err - 1);
    long_err[sizeof long_err - 1] = '\0';
    assert_int_equal(phg_wh_inbox_dead(f->ib, b, 9500, 0, long_err), PHG_OK);
    ev = get(f, b);
    assert_int_equal(ev->state, PHG_WH_EVENT_DEAD);
    assert_int_equal(ev->attempts, 3);
    assert_int_equal(ev->last_status, 0);
    assert_int_equal(strlen(ev->last_error), PHG_WH_ERROR_MAX);
    assert_int_equal(ev->delivered_ms, 0);
    phg_wh_event_free(ev);
    assert_int_equal(phg_wh_inbox_dead(f->ib, b, 9600, 0, "again"), PHG_ERR_STATE);
    assert_int_equal(phg_wh_inbox_retry(f->ib, b, 9600, 0, "again", 1), PHG_ERR_STATE);
    /* a dead event is not claimed */
    assert_int_equal(phg_wh_inbox_claim(f->ib, INT64_C(1) << 50, 1000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 0);

    /* replay: pending again, attempts 0, due at now */
    assert_int_equal(phg_wh_inbox_replay(f->ib, b, 20000), PHG_OK);
    ev = get(f, b);
    assert_int_equal(ev->state, PHG_WH_EVENT_PENDING);
    assert_int_equal(ev->attempts, 0);
    assert_int_equal(ev->next_attempt_ms, 20000);
    assert_memory_equal(ev->body, "B", 1);
    phg_wh_event_free(ev);
    assert_int_equal(phg_wh_inbox_replay(f->ib, b, 20000), PHG_ERR_STATE);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 20000, 1000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, b);
    phg_wh_events_free(evs, n);
    assert_int_equal(phg_wh_inbox_delivered(f->ib, b, 20001, 200), PHG_OK);
}

static void test_replay_all(void **state)
{
    fx *f = *state;
    char ids[5][PHG_WH_EVENT_ID_LEN + 1];
    const char *sources[5] = {"a", "a", "b", "b", "a"};
    char msg[32];
    size_t n = 99;
    int i;

    for (i = 0; i < 5; i++) {
        snprintf(msg, sizeof msg, "r-%d", i);
        put_ok(f, sources[i], msg, "x", 10, ids[i]);
    }
    for (i = 0; i < 4; i++) /* ids[4] stays pending */
        assert_int_equal(phg_wh_inbox_dead(f->ib, ids[i], 20, 500, "gave up"), PHG_OK);
    assert_int_equal(phg_wh_inbox_replay_all(f->ib, "a", 100, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE state = 2 AND source = 'a'"),
                     0);
    assert_int_equal(
        q(f, "SELECT count(*) FROM webhook_events WHERE state = 0 AND next_attempt_ms = 100"), 2);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE state = 2"), 2);
    assert_int_equal(phg_wh_inbox_replay_all(f->ib, "nobody", 100, &n), PHG_OK);
    assert_int_equal(n, 0);
    assert_int_equal(phg_wh_inbox_replay_all(f->ib, NULL, 200, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE state = 2"), 0);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE attempts <> 0"), 0);
    assert_int_equal(phg_wh_inbox_replay_all(f->ib, "Bad!", 100, &n), PHG_ERR_INVALID);
    assert_int_equal(phg_wh_inbox_replay_all(f->ib, NULL, -1, &n), PHG_ERR_INVALID);
}

/* ---- list, stats, purge ----------------------------------------------------------------- */

static void test_list(void **state)
{
    fx *f = *state;
    char ids[6][PHG_WH_EVENT_ID_LEN + 1], msg[32];
    phg_wh_event_filter flt;
    phg_wh_event *evs = NULL;
    size_t n = 0;
    int i;

    for (i = 0; i < 6; i++) {
        snprintf(msg, sizeof msg, "l-%d", i);
        put_ok(f, i % 2 ? "odd" : "even", msg, "body", 100 + i, ids[i]);
    }
    assert_int_equal(phg_wh_inbox_delivered(f->ib, ids[0], 500, 200), PHG_OK);
    assert_int_equal(phg_wh_inbox_dead(f->ib, ids[1], 500, 410, "gone"), PHG_OK);

    /* everything, newest first, no bodies */
    memset(&flt, 0, sizeof flt);
    flt.state = -1;
    flt.limit = PHG_WH_LIST_MAX;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 6);
    for (i = 0; i < 6; i++) {
        assert_string_equal(evs[i].id, ids[5 - i]);
        assert_null(evs[i].body);
    }
    assert_int_equal(evs[0].body_len, 4);
    assert_string_equal(evs[0].source, "odd");
    assert_int_equal(evs[4].state, PHG_WH_EVENT_DEAD);
    assert_string_equal(evs[4].last_error, "gone");
    phg_wh_events_free(evs, n);

    /* by state, by source, both */
    flt.state = PHG_WH_EVENT_PENDING;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 4);
    phg_wh_events_free(evs, n);
    flt.state = PHG_WH_EVENT_DEAD;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, ids[1]);
    phg_wh_events_free(evs, n);
    flt.state = -7; /* any state */
    flt.source = "even";
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 3);
    assert_string_equal(evs[0].id, ids[4]);
    assert_string_equal(evs[2].id, ids[0]);
    phg_wh_events_free(evs, n);
    flt.state = PHG_WH_EVENT_DELIVERED;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, ids[0]);
    phg_wh_events_free(evs, n);
    flt.source = "nobody";
    evs = (phg_wh_event *)1;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 0);
    assert_null(evs);

    /* paging by before_id */
    memset(&flt, 0, sizeof flt);
    flt.state = -1;
    flt.limit = 4;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 4);
    assert_string_equal(evs[3].id, ids[2]);
    phg_wh_events_free(evs, n);
    flt.before_id = ids[2];
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_string_equal(evs[0].id, ids[1]);
    assert_string_equal(evs[1].id, ids[0]);
    phg_wh_events_free(evs, n);
    flt.before_id = ids[0];
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 0);

    /* bad filters */
    memset(&flt, 0, sizeof flt);
    flt.state = -1;
    flt.limit = 0;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_ERR_INVALID);
    flt.limit = PHG_WH_LIST_MAX + 1;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_ERR_INVALID);
    flt.limit = 10;
    flt.state = 3;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_ERR_INVALID);
    flt.state = -1;
    flt.source = "x' OR '1'='1";
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_ERR_INVALID);
    flt.source = NULL;
    flt.before_id = "not-an-id";
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_ERR_INVALID);
}

static void test_stats_purge(void **state)
{
    fx *f = *state;
    char ids[8][PHG_WH_EVENT_ID_LEN + 1], msg[32];
    phg_wh_inbox_stats s;
    size_t n = 99;
    int i;

    assert_int_equal(phg_wh_inbox_stats_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.pending + s.delivered + s.dead, 0);
    assert_int_equal(s.oldest_pending_ms, 0);

    for (i = 0; i < 8; i++) {
        snprintf(msg, sizeof msg, "p-%d", i);
        put_ok(f, "s", msg, "x", 1000 + i, ids[i]);
    }
    for (i = 0; i < 5; i++) /* delivered at 100, 200, ..., 500 */
        assert_int_equal(phg_wh_inbox_delivered(f->ib, ids[i], 100 * (i + 1), 200), PHG_OK);
    assert_int_equal(phg_wh_inbox_dead(f->ib, ids[5], 600, 500, "no"), PHG_OK);
    assert_int_equal(phg_wh_inbox_stats_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.pending, 2);
    assert_int_equal(s.delivered, 5);
    assert_int_equal(s.dead, 1);
    assert_int_equal(s.oldest_pending_ms, 1006);
    assert_int_equal(s.written, 8);
    assert_true(s.commits >= 1 && s.commits <= 8);
    /* the backlog: the same without counting the delivered rows */
    memset(&s, 0, sizeof s);
    assert_int_equal(phg_wh_inbox_backlog_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.pending, 2);
    assert_int_equal(s.delivered, -1);
    assert_int_equal(s.dead, 1);
    assert_int_equal(s.oldest_pending_ms, 1006);

    /* bounded: at most max per call, only delivered before the cut */
    assert_int_equal(phg_wh_inbox_purge(f->ib, 350, 2, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_int_equal(phg_wh_inbox_purge(f->ib, 350, 2, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_int_equal(phg_wh_inbox_purge(f->ib, 350, 2, &n), PHG_OK);
    assert_int_equal(n, 0);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE state = 1"), 2);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events"), 5);
    assert_int_equal(phg_wh_inbox_purge(f->ib, INT64_MAX, 100, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events"), 3); /* dead and pending stay */
    assert_int_equal(phg_wh_inbox_purge(f->ib, 350, 0, &n), PHG_ERR_INVALID);
    assert_int_equal(phg_wh_inbox_stats_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.delivered, 0);
    assert_int_equal(s.pending, 2);
}

/* ---- validation ------------------------------------------------------------------------- */

static void test_validation(void **state)
{
    fx *f = *state;
    char id[PHG_WH_EVENT_ID_LEN + 1], big[PHG_WH_MSG_ID_MAX + 2];
    uint8_t small[4] = {1, 2, 3, 4};
    phg_wh_event_in e;
    dup_results r;
    dup_call c = {&r, 0};
    phg_wh_inbox_stats s;

    memset(&r, 0, sizeof r);
    memset(big, 'm', sizeof big - 1);
    big[sizeof big - 1] = '\0';

#define REFUSED(mutate, want)                                                                      \
    do {                                                                                           \
        e = event("good", "m-1", "b", 1);                                                          \
        mutate;                                                                                    \
        assert_int_equal(phg_wh_inbox_put_async(f->ib, &e, dup_cb, &c), (want));                   \
        assert_int_equal(phg_wh_inbox_put(f->ib, &e, id), (want));                                 \
        assert_string_equal(id, "");                                                               \
    } while (0)

    REFUSED(e.source = "Bad", PHG_ERR_INVALID);
    REFUSED(e.source = "", PHG_ERR_INVALID);
    REFUSED(e.source = NULL, PHG_ERR_INVALID);
    REFUSED(e.source = "a/b", PHG_ERR_INVALID);
    REFUSED(e.msg_id = "", PHG_ERR_INVALID);
    REFUSED(e.msg_id = NULL, PHG_ERR_INVALID);
    REFUSED(e.msg_id = big, PHG_ERR_INVALID);
    REFUSED(e.msg_id = "a\nb", PHG_ERR_INVALID);
    REFUSED(e.msg_id = "caf\xc3\xa9", PHG_ERR_INVALID);
    REFUSED(e.content_type = "text/plain\r\nX-Evil: 1", PHG_ERR_INVALID);
    REFUSED(e.request_id = big, PHG_ERR_INVALID);
    REFUSED(e.secret_index = -2, PHG_ERR_INVALID);
    REFUSED(e.received_ms = -1, PHG_ERR_INVALID);
    REFUSED(e.signed_ts_s = -1, PHG_ERR_INVALID);
    REFUSED((e.body = NULL, e.body_len = 3), PHG_ERR_INVALID);
    /* over the cap: refused before a byte is read */
    REFUSED((e.body = small, e.body_len = (size_t)PHG_WH_INBOX_BODY_MAX + 1), PHG_ERR_TOO_LARGE);
#undef REFUSED
    {
        char ct[PHG_WH_CONTENT_TYPE_MAX + 2];
        memset(ct, 'c', sizeof ct - 1);
        ct[sizeof ct - 1] = '\0';
        e = event("good", "m-1", "b", 1);
        e.content_type = ct;
        assert_int_equal(phg_wh_inbox_put(f->ib, &e, id), PHG_ERR_INVALID);
        ct[PHG_WH_CONTENT_TYPE_MAX] = '\0'; /* exactly the maximum */
        assert_int_equal(phg_wh_inbox_put(f->ib, &e, id), PHG_OK);
    }
    /* the longest msg_id fits */
    big[PHG_WH_MSG_ID_MAX] = '\0';
    e = event("good", big, "b", 1);
    assert_int_equal(phg_wh_inbox_put(f->ib, &e, id), PHG_OK);
    assert_int_equal(phg_wh_inbox_find(f->ib, "good", big, id), PHG_OK);

    /* nothing refused was stored, no callback ran */
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events"), 2);
    assert_int_equal(r.done, 0);
    assert_int_equal(phg_wh_inbox_stats_get(f->ib, &s), PHG_OK);
    assert_int_equal(s.failed, 0);
    assert_int_equal(s.written, 2);

    /* state names */
    {
        phg_wh_event_state st = PHG_WH_EVENT_DEAD;
        assert_string_equal(phg_wh_event_state_name(PHG_WH_EVENT_PENDING), "pending");
        assert_string_equal(phg_wh_event_state_name(PHG_WH_EVENT_DELIVERED), "delivered");
        assert_string_equal(phg_wh_event_state_name(PHG_WH_EVENT_DEAD), "dead");
        assert_string_equal(phg_wh_event_state_name((phg_wh_event_state)9), "unknown");
        assert_int_equal(phg_wh_event_state_parse("pending", &st), PHG_OK);
        assert_int_equal(st, PHG_WH_EVENT_PENDING);
        assert_int_equal(phg_wh_event_state_parse("dead", &st), PHG_OK);
        assert_int_equal(st, PHG_WH_EVENT_DEAD);
        assert_int_equal(phg_wh_event_state_parse("delivered", &st), PHG_OK);
        assert_int_equal(st, PHG_WH_EVENT_DELIVERED);
        assert_int_equal(phg_wh_event_state_parse("Dead", &st), PHG_ERR_INVALID);
        assert_int_equal(phg_wh_event_state_parse(NULL, &st), PHG_ERR_INVALID);
    }
}

/* ---- durability, keys, schema ----------------------------------------------------------- */

static void count_cb(void *arg, phg_status status, const char *id)
{
    dup_results *r = arg;
    (void)id;
    pthread_mutex_lock(&r->lock);
    r->done++;
    if (status == PHG_OK)
        r->ok++;
    pthread_mutex_unlock(&r->lock);
}

static void test_reopen(void **state)
{
    fx *f = *state;
    char id[PHG_WH_EVENT_ID_LEN + 1], msg[32];
    phg_wh_event *evs = NULL;
    dup_results r;
    size_t n = 0;
    int i;

    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.lock, NULL);
    put_ok(f, "s", "durable", SECRET_BODY, 42, id);
    /* queued and not yet written when close is called: close writes them */
    for (i = 0; i < 50; i++) {
        phg_wh_event_in e;
        snprintf(msg, sizeof msg, "late-%d", i);
        e = event("late", msg, "y", 50);
        assert_int_equal(phg_wh_inbox_put_async(f->ib, &e, count_cb, &r), PHG_OK);
    }
    close_all(f);
    assert_int_equal(r.done, 50);
    assert_int_equal(r.ok, 50);

    open_all(f, NULL);
    assert_int_equal(phg_wh_inbox_claim(f->ib, 42, 1000, 1, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, id);
    assert_int_equal(evs[0].body_len, strlen(SECRET_BODY));
    assert_memory_equal(evs[0].body, SECRET_BODY, strlen(SECRET_BODY));
    phg_wh_events_free(evs, n);
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE source = 'late'"), 50);
    pthread_mutex_destroy(&r.lock);
}

static void test_undecryptable(void **state)
{
    fx *f = *state;
    char a[PHG_WH_EVENT_ID_LEN + 1], b[PHG_WH_EVENT_ID_LEN + 1];
    char old_kid[PHG_PHI_KID_MAX + 1], new_kid[PHG_PHI_KID_MAX + 1];
    phg_wh_event *ev = NULL, *evs = NULL;
    phg_wh_event_filter flt;
    size_t n = 0;

    put_ok(f, "s", "u-a", "under the old key", 10, a);
    assert_int_equal(phg_keyring_primary(f->kr, old_kid), PHG_OK);
    assert_int_equal(phg_keyring_rotate(f->kr, new_kid), PHG_OK);
    put_ok(f, "s", "u-b", "under the new key", 20, b);
    /* a decrypt-only key still opens a */
    assert_int_equal(phg_wh_inbox_get(f->ib, a, &ev), PHG_OK);
    phg_wh_event_free(ev);
    ev = NULL;
    assert_int_equal(phg_keyring_destroy(f->kr, old_kid), PHG_OK);

    /* a does not block the queue: it goes dead, b is delivered */
    assert_int_equal(phg_wh_inbox_claim(f->ib, 100, 1000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, b);
    assert_memory_equal(evs[0].body, "under the new key", 17);
    phg_wh_events_free(evs, n);
    assert_int_equal(phg_wh_inbox_get(f->ib, a, &ev), PHG_ERR_AUTH);
    assert_null(ev);
    memset(&flt, 0, sizeof flt);
    flt.state = PHG_WH_EVENT_DEAD;
    flt.limit = 10;
    assert_int_equal(phg_wh_inbox_list(f->ib, &flt, &evs, &n), PHG_OK);
    assert_int_equal(n, 1);
    assert_string_equal(evs[0].id, a);
    assert_string_equal(evs[0].last_error, "body does not decrypt");
    assert_int_equal(evs[0].attempts, 0);
    phg_wh_events_free(evs, n);

    /* a tampered text, and a text moved to another event's row, go dead too */
    {
        char c[PHG_WH_EVENT_ID_LEN + 1], d[PHG_WH_EVENT_ID_LEN + 1], sql[256], err[256];
        put_ok(f, "s", "u-c", "ccc", 30, c);
        put_ok(f, "s", "u-d", "ddd", 30, d);
        snprintf(sql, sizeof sql,
                 "UPDATE webhook_events SET body_enc = (SELECT body_enc FROM webhook_events "
                 "WHERE id = '%s') WHERE id = '%s'",
                 c, d);
        assert_int_equal(tdb_exec(&f->db, sql, err, sizeof err), 0);
        assert_int_equal(phg_wh_inbox_get(f->ib, d, &ev), PHG_ERR_AUTH);
        assert_int_equal(phg_wh_inbox_claim(f->ib, 100, 1000, 10, &evs, &n), PHG_OK);
        assert_int_equal(n, 1);
        assert_string_equal(evs[0].id, c);
        phg_wh_events_free(evs, n);
        assert_int_equal(phg_wh_inbox_delivered(f->ib, c, 200, 200), PHG_OK);
    }
    assert_int_equal(q(f, "SELECT count(*) FROM webhook_events WHERE state = 2"), 2);
}

/* Another keyring cannot open the bodies: every claimed event goes dead. */
static void test_other_keyring(void **state)
{
    fx *f = *state;
    char a[PHG_WH_EVENT_ID_LEN + 1];
    phg_keyring *other = NULL;
    phg_wh_inbox *ib2 = NULL;
    phg_wh_event *evs = NULL;
    size_t n = 9;

    put_ok(f, "s", "o-a", "secret", 10, a);
    assert_int_equal(phg_keyring_create(f->mk, NULL, &other), PHG_OK);
    assert_int_equal(phg_wh_inbox_open(f->st, other, NULL, &ib2), PHG_OK);
    assert_int_equal(phg_wh_inbox_claim(ib2, 100, 1000, 10, &evs, &n), PHG_OK);
    assert_int_equal(n, 0);
    assert_null(evs);
    phg_wh_inbox_close(ib2);
    phg_keyring_free(other);
    assert_int_equal(q(f, "SELECT state FROM webhook_events"), 2);
}

/* A store before migration 4 is refused. */
static void test_schema_required(void **state)
{
    fx *f = *state;
    testdb db;
    phg_store *st = NULL;
    phg_wh_inbox *ib = (phg_wh_inbox *)1;
    char err[PHG_STORE_ERR_MAX];
    const phg_migration *steps =
        g_engine == TDB_SQLITE ? phg_migrations_sqlite : phg_migrations_postgres;
    int latest = 0, current = 0;

    tdb_create(&db, g_engine, "whinbox_old");
    assert_int_equal(tdb_open_store(&db, 1, &st, err, sizeof err), PHG_OK);
    assert_int_equal(phg_store_schema_version(st, &current, &latest), PHG_OK);
    assert_int_equal(latest, 4);
    assert_int_equal(phg_wh_inbox_open(st, f->kr, NULL, &ib), PHG_ERR_SCHEMA);
    assert_null(ib);
    assert_int_equal(phg_internal_store_migrate_steps(st, steps, 3, NULL, NULL, err, sizeof err),
                     PHG_OK);
    assert_int_equal(phg_wh_inbox_open(st, f->kr, NULL, &ib), PHG_ERR_SCHEMA);
    assert_int_equal(phg_store_migrate(st, NULL, NULL, err, sizeof err), PHG_OK);
    assert_int_equal(phg_wh_inbox_open(st, f->kr, NULL, &ib), PHG_OK);
    phg_wh_inbox_close(ib);
    phg_store_close(st);
    tdb_drop(&db);
}

/* After a keyring reload (a rotation elsewhere), new bodies go under the new
 * primary key and the old ones still open. */
static void test_set_keyring(void **state)
{
    fx *f = *state;
    char *json = NULL, id1[PHG_WH_EVENT_ID_LEN + 1], id2[PHG_WH_EVENT_ID_LEN + 1];
    char kid_new[PHG_PHI_KID_MAX + 1], kid1[PHG_PHI_KID_MAX + 1], kid2[PHG_PHI_KID_MAX + 1];
    size_t len = 0;
    phg_keyring *kr2 = NULL;
    phg_keyring_options ko;
    const char *why = NULL;
    phg_wh_event *ev = NULL;
    char *enc;

    put_ok(f, "s", "before", "{\"hr\":1}", 1000, id1);
    assert_int_equal(phg_keyring_to_json(f->kr, &json, &len), PHG_OK);
    phg_keyring_options_init(&ko);
    assert_int_equal(phg_keyring_from_json(json, len, f->mk, &ko, &kr2, &why), PHG_OK);
    free(json);
    assert_int_equal(phg_keyring_rotate(kr2, kid_new), PHG_OK);
    phg_wh_inbox_set_keyring(f->ib, kr2);
    put_ok(f, "s", "after", "{\"hr\":2}", 1001, id2);

    enc = raw_body_enc(f, id1);
    assert_int_equal(phg_phi_ciphertext_kid(enc, strlen(enc), kid1), PHG_OK);
    free(enc);
    enc = raw_body_enc(f, id2);
    assert_int_equal(phg_phi_ciphertext_kid(enc, strlen(enc), kid2), PHG_OK);
    free(enc);
    assert_string_equal(kid2, kid_new);
    assert_string_not_equal(kid1, kid_new);
    assert_int_equal(phg_wh_inbox_get(f->ib, id1, &ev), PHG_OK);
    assert_memory_equal(ev->body, "{\"hr\":1}", 8);
    phg_wh_event_free(ev);
    assert_int_equal(phg_wh_inbox_get(f->ib, id2, &ev), PHG_OK);
    assert_memory_equal(ev->body, "{\"hr\":2}", 8);
    phg_wh_event_free(ev);
    phg_wh_inbox_close(f->ib); /* before kr2 goes */
    f->ib = NULL;
    phg_keyring_free(kr2);
}

#define T(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_put_get_roundtrip),
        T(test_set_keyring),
        T(test_large_body),
        T(test_duplicates),
        T(test_duplicates_concurrent),
        T(test_queue_full),
        T(test_claim_lease),
        T(test_concurrent_claim),
        T(test_transitions),
        T(test_replay_all),
        T(test_list),
        T(test_stats_purge),
        T(test_validation),
        T(test_reopen),
        T(test_undecryptable),
        T(test_other_keyring),
        T(test_schema_required),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("webhook_inbox/sqlite", tests, tdb_group_sqlite, NULL);
    failed +=
        cmocka_run_group_tests_name("webhook_inbox/postgres", tests, tdb_group_postgres, NULL);
    return failed != 0;
}
