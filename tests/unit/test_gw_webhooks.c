/*
 * test_gw_webhooks.c: the gateway's webhook job (src/server/webhooks.c) on a
 * real SQLite store: the decision for each kind of request (unknown source,
 * verified, refused, each vendor handshake, unsigned path tokens, methods),
 * the replay memory, store sources picked up by a reload, and delivery to a
 * real HTTP sink in this process: headers, exact bytes, retry, dead letter;
 * the fast path (events handed over in memory): wake-ups, leases never
 * outlived by a slow batch, leases handed back at stop, its memory cap.
 * The HTTP route itself is tested end to end in tests/e2e/test_webhooks*.py.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "gw.h"
#include "phigate.h"
#include "phigate/webhook_store.h"

#include "testdb.h"

#define MK1 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define SW_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- a sink: an HTTP server that records what it is sent ------------------------------ */

typedef struct sink {
    int lfd, port;
    atomic_int stop, status; /* the status it answers */
    atomic_int delay_ms;     /* it waits this long before answering */
    atomic_int hits;
    pthread_mutex_t mu;
    char last[8192];
    size_t last_len;
    pthread_t thread;
} sink;

static void *sink_main(void *arg)
{
    sink *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {s->lfd, POLLIN, 0};
        char buf[8192];
        size_t have = 0;
        int fd;
        if (poll(&p, 1, 50) <= 0)
            continue;
        fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        for (;;) {
            char *end;
            ssize_t r;
            struct pollfd q = {fd, POLLIN, 0};
            if (poll(&q, 1, 2000) <= 0)
                break;
            r = recv(fd, buf + have, sizeof buf - 1 - have, 0);
            if (r <= 0)
                break;
            have += (size_t)r;
            buf[have] = '\0';
            end = strstr(buf, "\r\n\r\n");
            if (end != NULL) {
                const char *cl = strcasestr(buf, "\r\nContent-Length:");
                size_t need = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 17, NULL, 10) : 0);
                if (have >= need) {
                    char resp[128];
                    int n = snprintf(resp, sizeof resp,
                                     "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                     atomic_load(&s->status));
                    if (atomic_load(&s->delay_ms) > 0)
                        tdb_sleep_ms(atomic_load(&s->delay_ms));
                    pthread_mutex_lock(&s->mu);
                    memcpy(s->last, buf, need);
                    s->last_len = need;
                    pthread_mutex_unlock(&s->mu);
                    atomic_fetch_add(&s->hits, 1);
                    (void)!send(fd, resp, (size_t)n, MSG_NOSIGNAL);
                    break;
                }
            }
        }
        close(fd);
    }
    return NULL;
}

static void sink_start(sink *s, int status)
{
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    atomic_store(&s->status, status);
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 16), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, sink_main, s), 0);
}

static void sink_stop(sink *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
}

/* ---- fixture -------------------------------------------------------------------------------- */

typedef struct fx {
    testdb db;
    phg_store *st;
    phg_masterkeys *mk;
    phg_keyring *kr;
    gw_config *cfg;
    gw_webhooks *w;
    sink snk;
    char dir[64];
} fx;

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

static void add_conf(fx *f, const char *name, const char *scheme, const char *secret,
                     const char *verify_token)
{
    gw_wh_conf *c = &f->cfg->wh_sources[f->cfg->n_wh_sources++];
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->scheme, sizeof c->scheme, "%s", scheme);
    snprintf(c->secret_files[0], sizeof c->secret_files[0], "%s/%s.secret", f->dir, name);
    write_text(c->secret_files[0], secret);
    c->n_secret_files = 1;
    if (verify_token != NULL) {
        snprintf(c->verify_token_file, sizeof c->verify_token_file, "%s/%s.token", f->dir, name);
        write_text(c->verify_token_file, verify_token);
    }
    c->tolerance_s = 300;
    c->max_body = 4096;
    snprintf(c->deliver_to, sizeof c->deliver_to, "http://127.0.0.1:%d/hooks/%s", f->snk.port,
             name);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char err[512] = "";
    if (f == NULL)
        return -1;
    *state = f;
    tdb_create(&f->db, TDB_SQLITE, "gwwh");
    assert_int_equal(tdb_open_store(&f->db, 4, &f->st, err, sizeof err), PHG_OK);
    assert_int_equal(phg_store_migrate(f->st, NULL, NULL, err, sizeof err), PHG_OK);
    assert_int_equal(phg_phi_masterkeys_parse(MK1, strlen(MK1), &f->mk), PHG_OK);
    assert_int_equal(phg_keyring_create(f->mk, NULL, &f->kr), PHG_OK);
    snprintf(f->dir, sizeof f->dir, "/tmp/phg_gwwh_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    sink_start(&f->snk, 200);
    f->cfg = calloc(1, sizeof *f->cfg);
    assert_non_null(f->cfg);
    f->cfg->wh_enabled = 1;
    f->cfg->wh_workers = 1;
    f->cfg->wh_max_attempts = 3;
    f->cfg->wh_max_age_s = 3600;
    f->cfg->wh_backoff_ms = 10;
    f->cfg->wh_backoff_max_ms = 40;
    f->cfg->wh_timeout_ms = 2000;
    add_conf(f, "sw", "standard-webhooks", "  " SW_SECRET "\n", NULL);
    add_conf(f, "oura", "oura", "oura_test_client_secret", "oura-verify-token-123");
    add_conf(f, "fitbit", "fitbit", "fitbit_test_client_secret", "fitbit-code-4567");
    add_conf(f, "polar", "polar", "polar_test_signature_secret_key", NULL);
    add_conf(f, "garmin", "unsigned", "garmin-path-token-0123456789abcdef", NULL);
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    char cmd[128];
    gw_webhooks_stop(f->w);
    sink_stop(&f->snk);
    phg_keyring_free(f->kr);
    phg_store_close(f->st);
    phg_phi_masterkeys_free(f->mk);
    tdb_drop(&f->db);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f->cfg);
    free(f);
    return 0;
}

static void start(fx *f)
{
    char err[256] = "";
    int rc = gw_webhooks_start(f->cfg, f->st, f->mk, f->kr, NULL, &f->w, err, sizeof err);
    if (rc != 0)
        fail_msg("gw_webhooks_start: %s", err);
}

/* A Standard Webhooks request signed now. */
typedef struct signed_req {
    char id[64], ts[24], sig[128];
    phg_webhook_header h[4];
    size_t n;
} signed_req;

static void sign_sw(signed_req *r, const char *id, int64_t ts, const char *body)
{
    size_t len;
    char err[128];
    snprintf(r->id, sizeof r->id, "%s", id);
    snprintf(r->ts, sizeof r->ts, "%lld", (long long)ts);
    assert_int_equal(phg_webhook_sign(SW_SECRET, strlen(SW_SECRET), id, strlen(id), ts,
                                      (const uint8_t *)body, strlen(body), r->sig, sizeof r->sig,
                                      &len, err, sizeof err),
                     PHG_OK);
    r->h[0] = (phg_webhook_header){"webhook-id", 10, r->id, strlen(r->id)};
    r->h[1] = (phg_webhook_header){"Webhook-Timestamp", 17, r->ts, strlen(r->ts)};
    r->h[2] = (phg_webhook_header){"webhook-signature", 17, r->sig, strlen(r->sig)};
    r->h[3] = (phg_webhook_header){"Content-Type", 12, "application/json", 16};
    r->n = 4;
}

static void decide(fx *f, const char *method, const char *path, const char *query,
                   const phg_webhook_header *h, size_t n, const char *body, gw_wh_decision *d)
{
    gw_webhooks_decide(f->w, method, path, query, h, n, (const uint8_t *)body,
                       body ? strlen(body) : 0, wall_ms(), d);
}

static void expect_refusal(gw_wh_decision *d, int status, const char *code)
{
    assert_int_equal(d->kind, GW_WH_REPLY);
    assert_int_equal(d->status, status);
    assert_string_equal(d->code, code);
    gw_wh_decision_clear(d);
}

static void test_decide_standard(void **state)
{
    fx *f = *state;
    gw_wh_decision d;
    signed_req r;
    const char *body = "{\"type\":\"sleep.updated\",\"id\":1}";
    int64_t now = wall_ms() / 1000;
    start(f);

    sign_sw(&r, "msg_1", now, body);
    decide(f, "POST", "/webhooks/sw", NULL, r.h, r.n, body, &d);
    assert_int_equal(d.kind, GW_WH_VERIFIED);
    assert_non_null(d.source);
    assert_string_equal(d.source->name, "sw");
    assert_string_equal(d.result.msg_id, "msg_1");
    assert_int_equal(d.result.authenticated, 1);
    gw_wh_decision_clear(&d);

    /* one byte changed */
    decide(f, "POST", "/webhooks/sw", NULL, r.h, r.n, "{\"type\":\"sleep.updated\",\"id\":2}", &d);
    expect_refusal(&d, 401, "bad_signature");
    /* 301 s old */
    sign_sw(&r, "msg_2", now - 301, body);
    decide(f, "POST", "/webhooks/sw", NULL, r.h, r.n, body, &d);
    expect_refusal(&d, 401, "timestamp_outside");
    /* no timestamp header */
    sign_sw(&r, "msg_3", now, body);
    decide(f, "POST", "/webhooks/sw", NULL, r.h, 1, body, &d);
    expect_refusal(&d, 400, "missing_header");
    /* over max_body (4096) */
    {
        char *big = malloc(5000);
        assert_non_null(big);
        memset(big, 'a', 4999);
        big[4999] = '\0';
        decide(f, "POST", "/webhooks/sw", NULL, r.h, r.n, big, &d);
        expect_refusal(&d, 413, "too_large");
        free(big);
    }
    decide(f, "GET", "/webhooks/sw", NULL, r.h, r.n, NULL, &d);
    expect_refusal(&d, 405, "method_not_allowed");
    decide(f, "PUT", "/webhooks/sw", NULL, r.h, r.n, body, &d);
    expect_refusal(&d, 405, "method_not_allowed");
    /* unknown, malformed names; a token on a signed source */
    decide(f, "POST", "/webhooks/nope", NULL, r.h, r.n, body, &d);
    expect_refusal(&d, 404, "unknown_source");
    decide(f, "POST", "/webhooks/SW", NULL, r.h, r.n, body, &d);
    expect_refusal(&d, 404, "unknown_source");
    decide(f, "POST", "/webhooks/", NULL, r.h, r.n, body, &d);
    expect_refusal(&d, 404, "unknown_source");
    decide(f, "POST", "/webhooks/sw/token", NULL, r.h, r.n, body, &d);
    expect_refusal(&d, 404, "unknown_source");
}

static void test_handshakes(void **state)
{
    fx *f = *state;
    gw_wh_decision d;
    start(f);

    decide(f, "GET", "/webhooks/oura", "verification_token=oura-verify-token-123&challenge=abc%2B1",
           NULL, 0, NULL, &d);
    assert_int_equal(d.kind, GW_WH_REPLY);
    assert_int_equal(d.status, 200);
    assert_string_equal(d.action, "webhook.handshake");
    assert_non_null(d.body);
    assert_string_equal(d.body, "{\"challenge\":\"abc+1\"}");
    gw_wh_decision_clear(&d);
    decide(f, "GET", "/webhooks/oura", "verification_token=wrong&challenge=abc", NULL, 0, NULL,
           &d);
    expect_refusal(&d, 401, "bad_verification_token");
    decide(f, "GET", "/webhooks/oura", "challenge=abc", NULL, 0, NULL, &d);
    expect_refusal(&d, 400, "bad_handshake");
    decide(f, "GET", "/webhooks/oura",
           "verification_token=oura-verify-token-123&verification_token=x&challenge=abc", NULL, 0,
           NULL, &d);
    expect_refusal(&d, 400, "bad_handshake");

    decide(f, "GET", "/webhooks/fitbit", "verify=fitbit-code-4567", NULL, 0, NULL, &d);
    assert_int_equal(d.status, 204);
    assert_null(d.body);
    gw_wh_decision_clear(&d);
    decide(f, "GET", "/webhooks/fitbit", "verify=wrong-code", NULL, 0, NULL, &d);
    assert_int_equal(d.status, 404);
    assert_string_equal(d.action, "webhook.handshake");
    gw_wh_decision_clear(&d);

    /* Polar's PING is not signed; anything else from Polar must be */
    decide(f, "POST", "/webhooks/polar", NULL, NULL, 0, "{\"event\":\"PING\"}", &d);
    assert_int_equal(d.kind, GW_WH_REPLY);
    assert_int_equal(d.status, 200);
    assert_string_equal(d.action, "webhook.handshake");
    gw_wh_decision_clear(&d);
    decide(f, "POST", "/webhooks/polar", NULL, NULL, 0, "{\"event\":\"EXERCISE\"}", &d);
    expect_refusal(&d, 401, "no_signature");

    /* unsigned: the path token; HEAD for Withings */
    decide(f, "HEAD", "/webhooks/garmin/garmin-path-token-0123456789abcdef", NULL, NULL, 0, NULL,
           &d);
    assert_int_equal(d.status, 200);
    gw_wh_decision_clear(&d);
    decide(f, "HEAD", "/webhooks/garmin/wrong-token-0123456789abcdef", NULL, NULL, 0, NULL, &d);
    expect_refusal(&d, 404, "unknown_source");
    decide(f, "POST", "/webhooks/garmin/garmin-path-token-0123456789abcdef", NULL, NULL, 0,
           "{\"dailies\":[]}", &d);
    assert_int_equal(d.kind, GW_WH_VERIFIED);
    assert_int_equal(d.result.authenticated, 0);
    gw_wh_decision_clear(&d);
    decide(f, "POST", "/webhooks/garmin", NULL, NULL, 0, "{\"dailies\":[]}", &d);
    expect_refusal(&d, 404, "unknown_source");
    decide(f, "POST", "/webhooks/garmin/wrong-token-0123456789abcdef", NULL, NULL, 0,
           "{\"dailies\":[]}", &d);
    expect_refusal(&d, 404, "unknown_source");
}

static void test_replay_memory(void **state)
{
    fx *f = *state;
    char id[PHG_WH_EVENT_ID_LEN + 1];
    int i;
    start(f);
    assert_int_equal(gw_webhooks_seen(f->w, "sw", "msg_a", id), 0);
    gw_webhooks_remember(f->w, "sw", "msg_a", "01J00000000000000000000000", 60000);
    assert_int_equal(gw_webhooks_seen(f->w, "sw", "msg_a", id), 1);
    assert_string_equal(id, "01J00000000000000000000000");
    /* (source, msg_id) is the key: not the id alone */
    assert_int_equal(gw_webhooks_seen(f->w, "oura", "msg_a", id), 0);
    assert_int_equal(gw_webhooks_seen(f->w, "sw", "msg_b", id), 0);
    /* expiry */
    gw_webhooks_remember(f->w, "sw", "msg_short", "01J00000000000000000000001", 20);
    tdb_sleep_ms(40);
    assert_int_equal(gw_webhooks_seen(f->w, "sw", "msg_short", id), 0);
    /* many entries: all findable (hash chains, several shards) */
    for (i = 0; i < 5000; i++) {
        char m[32];
        snprintf(m, sizeof m, "m%d", i);
        gw_webhooks_remember(f->w, "sw", m, "01J00000000000000000000002", 60000);
    }
    for (i = 0; i < 5000; i += 97) {
        char m[32];
        snprintf(m, sizeof m, "m%d", i);
        assert_int_equal(gw_webhooks_seen(f->w, "sw", m, id), 1);
    }
}

static void test_store_sources_reload(void **state)
{
    fx *f = *state;
    char err[256] = "";
    phg_webhook_secret s = {"whoop_test_client_secret", 24, 0};
    phg_webhook_source_spec spec = {"whoop", "whoop", 300, "http://127.0.0.1:9/x", &s, 1, NULL, 0};
    start(f);
    assert_null(gw_webhooks_find(f->w, "whoop"));
    assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &spec, err, sizeof err), PHG_OK);
    gw_webhooks_reload(f->w, NULL);
    assert_non_null(gw_webhooks_find(f->w, "whoop"));
    assert_int_equal(gw_webhooks_find(f->w, "whoop")->scheme, PHG_WEBHOOK_WHOOP);
    assert_int_equal(gw_webhooks_find(f->w, "whoop")->from_config, 0);
    /* the configured ones are still there */
    assert_non_null(gw_webhooks_find(f->w, "sw"));
    assert_int_equal(phg_webhook_sources_remove(f->st, "whoop"), PHG_OK);
    gw_webhooks_reload(f->w, NULL);
    assert_null(gw_webhooks_find(f->w, "whoop"));
}

static phg_wh_event *wait_state(fx *f, const char *id, phg_wh_event_state want, int64_t ms)
{
    int64_t end = tdb_now_ms() + ms;
    for (;;) {
        phg_wh_event *ev = NULL;
        assert_int_equal(phg_wh_inbox_get(gw_webhooks_inbox(f->w), id, &ev), PHG_OK);
        if (ev->state == want)
            return ev;
        phg_wh_event_free(ev);
        if (tdb_now_ms() > end)
            fail_msg("event %s did not become %s", id, phg_wh_event_state_name(want));
        tdb_sleep_ms(10);
    }
}

static void put(fx *f, const char *source, const char *msg_id, const char *body, char *id)
{
    phg_wh_event_in in;
    memset(&in, 0, sizeof in);
    in.source = source;
    in.msg_id = msg_id;
    in.authenticated = 1;
    in.secret_index = 0;
    in.received_ms = wall_ms();
    in.content_type = "application/json; charset=utf-8";
    in.body = (const uint8_t *)body;
    in.body_len = strlen(body);
    in.request_id = "01JREQ0000000000000000000A";
    assert_int_equal(phg_wh_inbox_put(gw_webhooks_inbox(f->w), &in, id), PHG_OK);
    gw_webhooks_kick(f->w);
}

/* As the gateway does it: stored with a lease to this process, then handed
 * over in memory (the fast path). */
static void put_fast(fx *f, const char *source, const char *msg_id, const char *body, char *id)
{
    phg_wh_event_in in;
    memset(&in, 0, sizeof in);
    in.source = source;
    in.msg_id = msg_id;
    in.authenticated = 1;
    in.secret_index = 0;
    in.received_ms = wall_ms();
    in.content_type = "application/json";
    in.body = (const uint8_t *)body;
    in.body_len = strlen(body);
    in.request_id = "01JREQ0000000000000000000B";
    in.due_ms = gw_webhooks_handoff_lease(f->w, in.received_ms);
    assert_true(in.due_ms > in.received_ms);
    assert_int_equal(phg_wh_inbox_put(gw_webhooks_inbox(f->w), &in, id), PHG_OK);
    gw_webhooks_handoff(f->w, &in, id);
}

/* An event handed over wakes a deliverer at once: the wake-up is not taken
 * by the house-keeping thread, which waits on the same condition (then the
 * event waited for a deliverer's idle timeout, 500 ms). */
static void test_handoff_wakes_a_deliverer(void **state)
{
    fx *f = *state;
    int i, slow = 0;
    f->cfg->wh_workers = 2;
    start(f);
    tdb_sleep_ms(300); /* every thread waiting */
    for (i = 0; i < 20; i++) {
        char id[PHG_WH_EVENT_ID_LEN + 1], mid[32];
        int hits = atomic_load(&f->snk.hits);
        int64_t t0 = tdb_now_ms();
        snprintf(mid, sizeof mid, "msg_wake_%d", i);
        put_fast(f, "sw", mid, "{}", id);
        while (atomic_load(&f->snk.hits) == hits && tdb_now_ms() - t0 < 3000)
            tdb_sleep_ms(1);
        if (tdb_now_ms() - t0 >= 300)
            slow++;
        tdb_sleep_ms(40 + i * 13 % 200);
    }
    assert_int_equal(slow, 0);
}

static void test_delivery(void **state)
{
    fx *f = *state;
    char id[PHG_WH_EVENT_ID_LEN + 1], hdr[128];
    const char *body = "{\"heart_rate\":61,\"note\":\"caf\xc3\xa9\"}";
    phg_wh_event *ev;
    gw_wh_metrics m;
    start(f);
    put(f, "sw", "msg_deliver", body, id);
    ev = wait_state(f, id, PHG_WH_EVENT_DELIVERED, 5000);
    assert_int_equal(ev->attempts, 1);
    assert_int_equal(ev->last_status, 200);
    phg_wh_event_free(ev);
    pthread_mutex_lock(&f->snk.mu);
    f->snk.last[f->snk.last_len] = '\0';
    assert_non_null(strstr(f->snk.last, "POST /hooks/sw HTTP/1.1\r\n"));
    snprintf(hdr, sizeof hdr, "X-Phigate-Event-Id: %s\r\n", id);
    assert_non_null(strstr(f->snk.last, hdr));
    assert_non_null(strstr(f->snk.last, "X-Phigate-Webhook-Source: sw\r\n"));
    assert_non_null(strstr(f->snk.last, "X-Phigate-Webhook-Scheme: standard-webhooks\r\n"));
    assert_non_null(strstr(f->snk.last, "X-Phigate-Webhook-Verified: signature\r\n"));
    assert_non_null(strstr(f->snk.last, "X-Phigate-Webhook-Msg-Id: msg_deliver\r\n"));
    assert_non_null(strstr(f->snk.last, "X-Phigate-Webhook-Attempt: 1\r\n"));
    assert_non_null(strstr(f->snk.last, "X-Request-Id: 01JREQ0000000000000000000A\r\n"));
    assert_non_null(strstr(f->snk.last, "Content-Type: application/json; charset=utf-8\r\n"));
    /* the exact bytes */
    assert_true(f->snk.last_len > strlen(body));
    assert_memory_equal(f->snk.last + f->snk.last_len - strlen(body), body, strlen(body));
    pthread_mutex_unlock(&f->snk.mu);
    gw_webhooks_metrics(f->w, &m);
    assert_true(m.delivered >= 1);
}

static void test_retry_then_dead_then_replay(void **state)
{
    fx *f = *state;
    char id[PHG_WH_EVENT_ID_LEN + 1];
    phg_wh_event *ev;
    gw_wh_metrics m;
    atomic_store(&f->snk.status, 500);
    start(f);
    put(f, "sw", "msg_dead", "{}", id);
    ev = wait_state(f, id, PHG_WH_EVENT_DEAD, 10000);
    assert_int_equal(ev->attempts, 3); /* max_attempts */
    assert_int_equal(ev->last_status, 500);
    assert_non_null(strstr(ev->last_error, "500"));
    phg_wh_event_free(ev);
    assert_int_equal(atomic_load(&f->snk.hits), 3);
    gw_webhooks_metrics(f->w, &m);
    assert_int_equal(m.dead, 1);
    assert_int_equal(m.retried, 2);
    /* the upstream is back: a replay delivers it */
    atomic_store(&f->snk.status, 204);
    assert_int_equal(phg_wh_inbox_replay(gw_webhooks_inbox(f->w), id, wall_ms()), PHG_OK);
    gw_webhooks_kick(f->w);
    ev = wait_state(f, id, PHG_WH_EVENT_DELIVERED, 5000);
    assert_int_equal(ev->last_status, 204);
    phg_wh_event_free(ev);

    /* an event of a source that is gone is dead, with the reason */
    put(f, "removed-source", "msg_x", "{}", id);
    ev = wait_state(f, id, PHG_WH_EVENT_DEAD, 5000);
    assert_non_null(strstr(ev->last_error, "no longer exists"));
    phg_wh_event_free(ev);
}

static void test_unreachable_upstream_retries(void **state)
{
    fx *f = *state;
    char id[PHG_WH_EVENT_ID_LEN + 1];
    phg_wh_event *ev;
    /* a port nobody listens on */
    snprintf(f->cfg->wh_sources[0].deliver_to, sizeof f->cfg->wh_sources[0].deliver_to,
             "http://127.0.0.1:1/x");
    f->cfg->wh_max_attempts = 2;
    start(f);
    put(f, "sw", "msg_unreach", "{}", id);
    ev = wait_state(f, id, PHG_WH_EVENT_DEAD, 10000);
    assert_int_equal(ev->attempts, 2);
    assert_int_equal(ev->last_status, 0);
    assert_true(ev->last_error[0] != '\0');
    phg_wh_event_free(ev);
}

/* Pending events of the store (a second inbox on it: f->w may be stopped). */
static size_t pending_events(fx *f, phg_wh_event **evs)
{
    phg_wh_inbox *ib = NULL;
    phg_wh_event_filter flt = {PHG_WH_EVENT_PENDING, NULL, NULL, 1000};
    size_t n = 0;
    assert_int_equal(phg_wh_inbox_open(f->st, f->kr, NULL, &ib), PHG_OK);
    assert_int_equal(phg_wh_inbox_list(ib, &flt, evs, &n), PHG_OK);
    phg_wh_inbox_close(ib);
    return n;
}

/* A batch is tried one event after another and reported at its end: with a
 * slow upstream, 16 claimed events (leased for timeout + 5 s) take longer
 * than their lease. The batch must stop before a lease can run out, or
 * another deliverer claims the same events and delivers them twice. */
static void test_slow_batch_not_delivered_twice(void **state)
{
    fx *f = *state;
    phg_wh_inbox *ib = NULL;
    char ids[16][PHG_WH_EVENT_ID_LEN + 1];
    int i;
    f->cfg->wh_workers = 2;
    /* 16 x 0.5 s > 1.2 + 5 s; the sink answers one at a time, and an attempt
     * queued behind another's still ends within its timeout */
    f->cfg->wh_timeout_ms = 1200;
    atomic_store(&f->snk.delay_ms, 500);
    /* stored before the start: the first claim takes all 16 */
    assert_int_equal(phg_wh_inbox_open(f->st, f->kr, NULL, &ib), PHG_OK);
    for (i = 0; i < 16; i++) {
        phg_wh_event_in in;
        char mid[32];
        snprintf(mid, sizeof mid, "msg_slow_%d", i);
        memset(&in, 0, sizeof in);
        in.source = "sw";
        in.msg_id = mid;
        in.secret_index = 0;
        in.received_ms = wall_ms();
        in.body = (const uint8_t *)"{}";
        in.body_len = 2;
        assert_int_equal(phg_wh_inbox_put(ib, &in, ids[i]), PHG_OK);
    }
    phg_wh_inbox_close(ib);
    start(f);
    for (i = 0; i < 16; i++)
        phg_wh_event_free(wait_state(f, ids[i], PHG_WH_EVENT_DELIVERED, 30000));
    tdb_sleep_ms(1500); /* a second copy on its way would arrive now */
    assert_int_equal(atomic_load(&f->snk.hits), 16);
}

typedef struct async_put {
    gw_webhooks *w;
    phg_wh_event_in in;
    char mid[32];
} async_put;

static void async_put_done(void *arg, phg_status st, const char *event_id)
{
    async_put *a = arg;
    if (st == PHG_OK)
        gw_webhooks_handoff(a->w, &a->in, event_id);
}

/* Events stored while the gateway stops (the inbox writes what it holds
 * first) were leased to deliverers that are gone: their leases go back, due
 * now, and the next start delivers them at once, not a minute later. */
static void test_stop_hands_back_late_leases(void **state)
{
    fx *f = *state;
    enum { N = 400 };
    async_put *a = calloc(N, sizeof *a);
    phg_wh_event *evs = NULL;
    size_t n, i, far = 0;
    int64_t now;
    assert_non_null(a);
    start(f);
    for (i = 0; i < N; i++) {
        a[i].w = f->w;
        snprintf(a[i].mid, sizeof a[i].mid, "msg_late_%zu", i);
        a[i].in.source = "sw";
        a[i].in.msg_id = a[i].mid;
        a[i].in.secret_index = 0;
        a[i].in.received_ms = wall_ms();
        a[i].in.body = (const uint8_t *)"{}";
        a[i].in.body_len = 2;
        a[i].in.due_ms = gw_webhooks_handoff_lease(f->w, a[i].in.received_ms);
        assert_int_equal(phg_wh_inbox_put_async(gw_webhooks_inbox(f->w), &a[i].in,
                                                async_put_done, &a[i]),
                         PHG_OK);
    }
    gw_webhooks_stop(f->w); /* every callback has run when it returns */
    f->w = NULL;
    now = wall_ms();
    n = pending_events(f, &evs);
    for (i = 0; i < n; i++)
        far += evs[i].next_attempt_ms > now + 1000;
    phg_wh_events_free(evs, n);
    free(a);
    assert_int_equal(far, 0);
}

/* The bodies handed over in memory have a cap in bytes, not only a count:
 * past it no lease is given (a claim takes the events from the store). */
static void test_handoff_bytes_capped(void **state)
{
    fx *f = *state;
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    size_t len = 512 * 1024, i;
    char *body = malloc(len + 1);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), capped = 0;
    assert_non_null(body);
    memset(body, 'b', len);
    body[len] = '\0';
    /* an upstream that never reads: the deliverer is held by its first attempt */
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 16), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(f->cfg->wh_sources[0].deliver_to, sizeof f->cfg->wh_sources[0].deliver_to,
             "http://127.0.0.1:%d/x", ntohs(sa.sin_port));
    f->cfg->wh_timeout_ms = 3000;
    start(f);
    for (i = 0; i < 200 && !capped; i++) {
        char id[PHG_WH_EVENT_ID_LEN + 1], mid[32];
        if (gw_webhooks_handoff_lease(f->w, wall_ms()) == 0) {
            capped = 1;
            break;
        }
        snprintf(mid, sizeof mid, "msg_big_%zu", i);
        put_fast(f, "sw", mid, body, id);
    }
    /* 100 MiB was never to be held in memory */
    assert_true(capped);
    assert_true(i * len <= ((size_t)80 << 20));
    gw_webhooks_stop(f->w);
    f->w = NULL;
    close(lfd);
    free(body);
}

/* A configured source whose secret is refused stops the start (and a reload
 * keeps the sources it had): never a gateway running with one left out. The
 * message names the source, never the secret. */
static void test_bad_configured_secret_refused(void **state)
{
    fx *f = *state;
    char err[512] = "";
    gw_config *bad = malloc(sizeof *bad);
    assert_non_null(bad);
    memcpy(bad, f->cfg, sizeof *bad);
    /* 16 bytes of key: Standard Webhooks wants at least 24 */
    write_text(bad->wh_sources[0].secret_files[0], "whsec_AAECAwQFBgcICQoLDA0ODw==\n");
    assert_int_equal(gw_webhooks_start(bad, f->st, f->mk, f->kr, NULL, &f->w, err, sizeof err),
                     -1);
    assert_null(f->w);
    assert_non_null(strstr(err, "webhook:sw"));
    assert_null(strstr(err, "AAECAwQFBgcICQoLDA0ODw"));

    /* a running gateway: a reload with it keeps the sources it had */
    write_text(bad->wh_sources[0].secret_files[0], SW_SECRET "\n");
    start(f);
    assert_non_null(gw_webhooks_find(f->w, "sw"));
    write_text(bad->wh_sources[0].secret_files[0], "whsec_short\n");
    bad->wh_sources[1].tolerance_s = 17; /* a change that must not apply either */
    gw_webhooks_reload(f->w, bad);
    assert_non_null(gw_webhooks_find(f->w, "sw"));
    assert_int_equal(gw_webhooks_find(f->w, "oura")->tolerance_s, 300);
    free(bad);
}

/* A source held (by a request, a delivery) outlives the reload that replaces
 * its table; the table is freed by the last release (ASan would see a read
 * of freed memory, LSan a table never freed). */
static void test_held_source_outlives_a_reload(void **state)
{
    fx *f = *state;
    void *hold = NULL;
    const gw_wh_source *old;
    gw_wh_decision d;
    signed_req r;
    const char *body = "{}";
    start(f);
    old = gw_webhooks_find_held(f->w, "sw", &hold);
    assert_non_null(old);
    assert_non_null(hold);
    sign_sw(&r, "msg_hold", wall_ms() / 1000, body);
    decide(f, "POST", "/webhooks/sw", NULL, r.h, r.n, body, &d);
    assert_int_equal(d.kind, GW_WH_VERIFIED);
    f->cfg->wh_sources[0].tolerance_s = 120;
    gw_webhooks_reload(f->w, f->cfg);
    assert_int_equal(gw_webhooks_find(f->w, "sw")->tolerance_s, 120);
    /* what was held is the table of before, whole */
    assert_string_equal(old->name, "sw");
    assert_int_equal(old->tolerance_s, 300);
    assert_string_equal(d.source->name, "sw");
    assert_int_equal(d.source->tolerance_s, 300);
    gw_webhooks_release(hold);
    gw_wh_decision_clear(&d);
    assert_null(d.source);
    gw_webhooks_reload(f->w, NULL); /* and again, with nothing held */
    assert_int_equal(gw_webhooks_find(f->w, "sw")->tolerance_s, 120);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_decide_standard),   T(test_handshakes),
        T(test_replay_memory),     T(test_store_sources_reload),
        T(test_delivery),          T(test_retry_then_dead_then_replay),
        T(test_unreachable_upstream_retries),
        T(test_handoff_wakes_a_deliverer),
        T(test_slow_batch_not_delivered_twice),
        T(test_stop_hands_back_late_leases),
        T(test_handoff_bytes_capped),
        T(test_bad_configured_secret_refused),
        T(test_held_source_outlives_a_reload),
    };
    return cmocka_run_group_tests_name("gw_webhooks", tests, NULL, NULL) != 0;
}
