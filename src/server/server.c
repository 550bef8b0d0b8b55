/*
 * server.c: phigate serve. One libevent event loop per thread, each with its
 * own SO_REUSEPORT listener, its own upstream connection pool and its own
 * completion queue; the proxy pipeline; drain on SIGTERM; reload on SIGHUP.
 *
 * What runs where (DESIGN.md, "Concurrency model"):
 *   - a loop thread never blocks: it parses, authenticates (the in-memory
 *     key index), encrypts (/v1/phi), proxies and streams;
 *   - the audit writer thread makes records durable and calls back; the
 *     callback hands the request back to its loop through an eventfd;
 *   - a small pool of worker threads runs what may block: the admin API
 *     (SQL), /readyz (a store query and an upstream connect);
 *   - the main thread waits for signals.
 *
 * A request's life: on_request -> [auth, route] -> an audit record (denied
 * requests too) -> once durable: the answer (refusal, PHI, admin) or the
 * forward to the upstream -> the response streams back -> an outcome record.
 * If the audit log cannot take a record the request is refused with 503 and
 * nothing is forwarded (fail closed).
 *
 * libevent 2.1 limits and how they are handled (research/http-foundation.md):
 *   - no pre-body hook on the server side: the body is read (up to
 *     server.max_body_bytes, 413 beyond) before the key is checked;
 *   - no header-read deadline: every connection gets a timer at accept
 *     (armed from the bufferevent callback) that shuts the socket down if no
 *     complete request arrived in time; the socket is identified by SO_COOKIE
 *     so a reused descriptor is never touched;
 *   - no graceful drain: listeners are removed, in-flight requests counted
 *     down, then the loops stop;
 *   - one request per upstream connection: a per-loop pool of connections;
 *   - no connect timeout distinct from the I/O timeout: a one-shot write
 *     event on a new connection's socket bounds the connect.
 */
#include <sys/queue.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* only to answer HTTP/1.1 to an unparseable request line */
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <systemd/sd-daemon.h>

#include "gw.h"
#include "phigate/crypto.h"
#include "phigate/ulid.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

#define WORKERS 4
#define STREAM_HIGH_WATER (1u << 20) /* client output buffered before upstream reads pause */

typedef struct gw_loop gw_loop;
typedef struct gw_req gw_req;
typedef struct gw_conn gw_conn;

/* ---- the server object ------------------------------------------------------------------ */

typedef struct cfg_node {
    gw_config *cfg;
    struct cfg_node *next;
} cfg_node;

typedef struct kr_node {
    phg_keyring *kr;
    struct kr_node *next;
} kr_node;

typedef struct task {
    void (*fn)(gw_req *r);
    gw_req *r;
    struct task *next;
} task;

typedef struct gw_server {
    _Atomic(gw_config *) cfg; /* current; replaced on SIGHUP, old ones kept until exit */
    cfg_node *old_cfgs;
    gw_flags flags;
    phg_store *store;
    phg_keys *keys;
    phg_audit *audit;
    phg_keyring *keyring;            /* as loaded at start (or after a reload) */
    _Atomic(phg_keyring *) kr_cur;   /* what requests use; replaced on SIGHUP */
    kr_node *old_krs;                /* replaced ones, kept until exit */
    phg_masterkeys *mk;
    uint8_t ckey[32];
    gw_admin_ctx admin;
    gw_phi_ctx phi;
    SSL_CTX *ssl;
    struct sockaddr_storage up_addr;
    socklen_t up_addr_len;
    char up_hostport[300];
    gw_loop *loops;
    int n_loops;
    atomic_int in_flight;
    atomic_int draining;
    phg_ratelimit *rl;    /* the local engine, and Redis's local fallback */
    gw_webhooks *wh;      /* POST /webhooks/<source>; NULL when disabled */
    atomic_int redis_down;
    atomic_int connections;
    /* worker pool */
    pthread_t workers[WORKERS];
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    task *whead, *wtail;
    int wstop;
} gw_server;

static gw_server *g_srv;

struct gw_loop {
    gw_server *srv;
    int idx;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    pthread_t thread;
    int efd;
    struct event *wake_ev;
    pthread_mutex_t mu;
    gw_req *done_head, *done_tail;
    atomic_int cmd_stop_accept, cmd_stop, cmd_reload;
    struct evhttp_connection **pool;
    int n_pool, cap_pool;
    struct evhttp_connection **dead; /* to free once libevent's callbacks return */
    int n_dead, cap_dead;
    struct event *reap_ev;
    gw_redis *redis;      /* rate limits on Redis; NULL with the local engine */
};

/* A client connection: its header deadline and the request in progress. */
struct gw_conn {
    gw_loop *loop;
    struct bufferevent *bev;
    int fd;
    uint64_t cookie;
    struct event *deadline;
    gw_req *current;
    int adopted;   /* the fd table points here */
    int has_closecb;
    struct evhttp_connection *evcon;
};

static _Atomic(gw_conn *) *g_conns; /* indexed by fd */
static int g_conns_max;

enum { ST_NONE, ST_DENY_AUDIT, ST_PRE_AUDIT, ST_CALL_AUDIT, ST_WORKER, ST_RL, ST_WH_INBOX,
       ST_WH_AUDIT };

struct gw_req {
    gw_loop *loop;
    struct evhttp_request *req;
    gw_conn *conn;
    gw_config *cfg;
    char request_id[PHG_ULID_LEN + 1];
    char ip[64];
    const char *method;
    char path[GW_PATH_MAX];     /* decoded */
    char *raw_uri;              /* path and query as received, for the upstream */
    char *query;
    gw_route_class rc;
    phg_identity id;
    int authed;
    char key[PHG_APIKEY_LEN + 1]; /* only while a store lookup is pending; wiped */
    size_t key_len;
    phg_status verify_st;
    phg_apikey_reason verify_why;
    double t0;
    int stage;
    phg_status audit_status;
    char audit_id[PHG_ULID_LEN + 1];
    /* refusal */
    int deny_status;
    char deny_code[48];
    char deny_msg[256];
    /* a call answered here */
    gw_call call;
    char *body;
    char content_type[128];
    void (*after_worker)(gw_req *r);
    /* the proxy */
    struct evhttp_connection *ucon;
    struct evhttp_request *ureq;
    struct event *connect_ev;
    int ucon_fresh;
    int started;          /* reply to the client started (headers sent) */
    int upstream_failed;
    enum evhttp_request_error uerr;
    int uerr_set;
    int paused;
    int client_gone;
    int finished;
    int replied;          /* a complete reply was handed to evhttp */
    const gw_route *route;
    phg_rl_policy rl_policy;
    phg_rl_decision rl;
    int rl_set;           /* rl holds the decision: its headers go out */
    int in_forward;       /* inside evhttp_make_request */
    int sync_failed;      /* the upstream failed inside evhttp_make_request */
    int close_after;      /* answer with Connection: close */
    int status;           /* sent to the client */
    uint64_t bytes_out;
    double t_up0, up_ms;
    /* a webhook */
    gw_wh_decision wh;
    int64_t wh_now_ms;
    int64_t wh_due_ms;          /* the lease given at the store (0: none) */
    uint8_t *wh_body;           /* a copy for the deliverers (fast path only) */
    size_t wh_body_len;
    char wh_ct[PHG_WH_CONTENT_TYPE_MAX + 1];
    int wh_dup;
    phg_status wh_status;
    char wh_event[PHG_WH_EVENT_ID_LEN + 1];
    gw_req *next;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static gw_config *cur_cfg(void)
{
    return atomic_load_explicit(&g_srv->cfg, memory_order_acquire);
}

static void log_msg(phg_log_level lvl, const char *msg, json_t *fields)
{
    char *text = fields ? json_dumps(fields, JSON_COMPACT) : NULL;
    phg_log(lvl, msg, text);
    free(text);
    json_decref(fields);
}

/* ---- completion queue: any thread -> the loop ----------------------------------------- */

static void complete_on_loop(gw_req *r)
{
    gw_loop *l = r->loop;
    uint64_t one = 1;
    ssize_t w;
    int was_empty;
    pthread_mutex_lock(&l->mu);
    r->next = NULL;
    was_empty = l->done_head == NULL;
    if (l->done_tail)
        l->done_tail->next = r;
    else
        l->done_head = r;
    l->done_tail = r;
    pthread_mutex_unlock(&l->mu);
    /* one wake-up per batch: the loop takes the whole queue when it wakes,
     * so a push onto a non-empty queue is already covered */
    if (!was_empty)
        return;
    do {
        w = write(l->efd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
}

static void wake_loop(gw_loop *l)
{
    uint64_t one = 1;
    ssize_t w;
    do {
        w = write(l->efd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
}

static void resume(gw_req *r);
static void apply_limits(gw_loop *l);

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    gw_loop *l = arg;
    uint64_t v;
    gw_req *r;
    (void)what;
    if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN)
        return;
    if (atomic_exchange(&l->cmd_reload, 0))
        apply_limits(l);
    if (atomic_exchange(&l->cmd_stop_accept, 0) && l->bound != NULL) {
        evhttp_del_accept_socket(l->http, l->bound);
        l->bound = NULL;
    }
    pthread_mutex_lock(&l->mu);
    r = l->done_head;
    l->done_head = l->done_tail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (r != NULL) {
        gw_req *next = r->next;
        resume(r);
        r = next;
    }
    if (atomic_load(&l->cmd_stop))
        event_base_loopbreak(l->base);
}

/* ---- worker pool -------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    gw_server *s = arg;
    for (;;) {
        task *t;
        pthread_mutex_lock(&s->wmu);
        while (s->whead == NULL && !s->wstop)
            pthread_cond_wait(&s->wcv, &s->wmu);
        if (s->whead == NULL) {
            pthread_mutex_unlock(&s->wmu);
            return NULL;
        }
        t = s->whead;
        s->whead = t->next;
        if (s->whead == NULL)
            s->wtail = NULL;
        if (s->wstop) {
            /* stopping, the loops are gone: an admin action must not run
             * now, with nobody left to record it */
            pthread_mutex_unlock(&s->wmu);
            free(t);
            continue;
        }
        pthread_mutex_unlock(&s->wmu);
        t->fn(t->r);
        complete_on_loop(t->r);
        free(t);
    }
}

static int submit_work(gw_req *r, void (*fn)(gw_req *r))
{
    gw_server *s = r->loop->srv;
    task *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -1;
    t->fn = fn;
    t->r = r;
    r->stage = ST_WORKER;
    pthread_mutex_lock(&s->wmu);
    if (s->wtail)
        s->wtail->next = t;
    else
        s->whead = t;
    s->wtail = t;
    pthread_cond_signal(&s->wcv);
    pthread_mutex_unlock(&s->wmu);
    return 0;
}

/* ---- connections and their header deadline -------------------------------------------------- */

static uint64_t sock_cookie(int fd)
{
    uint64_t c = 0;
    socklen_t len = sizeof c;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len) != 0)
        return 0;
    return c;
}

static void conn_free(gw_conn *c)
{
    if (c->adopted && c->fd >= 0 && c->fd < g_conns_max) {
        gw_conn *expect = c;
        atomic_compare_exchange_strong(&g_conns[c->fd], &expect, NULL);
        atomic_fetch_sub(&g_srv->connections, 1);
        gw_metrics_connections(-1);
    }
    if (c->deadline)
        event_free(c->deadline);
    free(c);
}

/* The deadline passed without a complete request: cut the connection off.
 * The socket is shut down, not closed: evhttp sees the end of the stream and
 * frees the connection itself. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    gw_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->current != NULL)
        return; /* a request is being answered: not a slow client */
    if (c->fd >= 0 && c->cookie != 0 && sock_cookie(c->fd) == c->cookie)
        shutdown(c->fd, SHUT_RDWR);
    if (!c->has_closecb)
        conn_free(c); /* evhttp will not tell us it closed */
}

static void conn_arm(gw_conn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (c->deadline)
        evtimer_add(c->deadline, &tv);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg);

/* Runs right after evhttp has given the new bufferevent its socket. */
static void on_adopt(evutil_socket_t fd, short what, void *arg)
{
    gw_conn *c = arg;
    gw_config *cfg = cur_cfg();
    (void)fd;
    (void)what;
    c->fd = bufferevent_getfd(c->bev);
    if (c->fd < 0 || c->fd >= g_conns_max) {
        event_free(c->deadline);
        free(c);
        return;
    }
    c->cookie = sock_cookie(c->fd);
    atomic_store(&g_conns[c->fd], c);
    c->adopted = 1;
    atomic_fetch_add(&g_srv->connections, 1);
    gw_metrics_connections(1);
    evtimer_assign(c->deadline, c->loop->base, on_deadline, c);
    {
        /* evhttp gives the bufferevent its connection as the callback
         * argument (libevent 2.1 http.c, evhttp_connection_base_bufferevent_new):
         * with it, the close of a connection that never completes a request
         * is seen too, and its slot freed at once */
        bufferevent_event_cb ecb = NULL;
        void *cbarg = NULL;
        bufferevent_getcb(c->bev, NULL, NULL, &ecb, &cbarg);
        if (cbarg != NULL && ecb != NULL &&
            evhttp_connection_get_bufferevent(cbarg) == c->bev) {
            c->evcon = cbarg;
            evhttp_connection_set_closecb(c->evcon, on_conn_close, c);
            c->has_closecb = 1;
        }
    }
    if (atomic_load(&g_srv->connections) > cfg->max_connections) {
        shutdown(c->fd, SHUT_RDWR);
        conn_arm(c, 1000);
        return;
    }
    {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    conn_arm(c, cfg->header_timeout_ms);
}

static struct bufferevent *on_new_bev(struct event_base *base, void *arg)
{
    gw_loop *l = arg;
    struct bufferevent *bev;
    gw_conn *c;
    if (l->srv->ssl != NULL) {
        SSL *ssl = SSL_new(l->srv->ssl);
        if (ssl == NULL)
            return NULL;
        bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                             BEV_OPT_CLOSE_ON_FREE);
    } else {
        bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (bev == NULL)
        return NULL;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return bev;
    c->loop = l;
    c->bev = bev;
    c->fd = -1;
    c->deadline = event_new(base, -1, 0, on_adopt, c); /* first fires as the adoption */
    if (c->deadline == NULL) {
        free(c);
        return bev;
    }
    event_active(c->deadline, EV_TIMEOUT, 1);
    return bev;
}

static void req_finish(gw_req *r);
static void defer_free_ucon(gw_loop *l, struct evhttp_connection *c);

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    gw_conn *c = arg;
    (void)evcon;
    if (c->current != NULL) {
        gw_req *r = c->current;
        struct evhttp_request *req = r->req;
        /* evhttp either leaves the request to us (an "orphan": no connection
         * any more, never freed by evhttp) or frees it right after this
         * callback (still queued on the connection) */
        int orphan = req != NULL && evhttp_request_get_connection(req) == NULL;
        r->client_gone = 1;
        r->conn = NULL;
        c->current = NULL;
        if (req != NULL && !orphan)
            r->req = NULL;
        if (r->started || r->replied) {
            /* the answer was under way: nothing more will come for it */
            if (orphan) {
                evhttp_request_free(req);
                r->req = NULL;
            }
            if (r->ureq != NULL) {
                struct evhttp_request *u = r->ureq;
                r->ureq = NULL;
                r->upstream_failed = 1;
                evhttp_request_set_error_cb(u, NULL);
                evhttp_cancel_request(u);
            }
            if (r->ucon != NULL) {
                defer_free_ucon(r->loop, r->ucon);
                r->ucon = NULL;
            }
            req_finish(r);
        }
        /* otherwise a stage is pending (audit, worker, upstream head): its
         * answer goes to send_json, which frees an orphan */
    }
    conn_free(c);
}

static gw_conn *conn_of(gw_loop *l, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev;
    int fd;
    gw_conn *c;
    if (evcon == NULL)
        return NULL;
    bev = evhttp_connection_get_bufferevent(evcon);
    fd = bev ? bufferevent_getfd(bev) : -1;
    c = (fd >= 0 && fd < g_conns_max) ? atomic_load(&g_conns[fd]) : NULL;
    if (c == NULL || c->bev != bev || c->loop != l) {
        /* adoption has not run (or failed): track it from here */
        c = calloc(1, sizeof *c);
        if (c == NULL)
            return NULL;
        c->loop = l;
        c->bev = bev;
        c->fd = fd;
        c->cookie = fd >= 0 ? sock_cookie(fd) : 0;
        c->deadline = evtimer_new(l->base, on_deadline, c);
        if (fd >= 0 && fd < g_conns_max) {
            atomic_store(&g_conns[fd], c);
            c->adopted = 1;
            atomic_fetch_add(&g_srv->connections, 1);
            gw_metrics_connections(1);
        }
    }
    if (!c->has_closecb) {
        evhttp_connection_set_closecb(evcon, on_conn_close, c);
        c->has_closecb = 1;
        c->evcon = evcon;
    }
    return c;
}

/* ---- replies ------------------------------------------------------------------------------------ */

static void req_free(gw_req *r)
{
    if (r->conn && r->conn->current == r)
        r->conn->current = NULL;
    if (r->connect_ev)
        event_free(r->connect_ev);
    free(r->raw_uri);
    free(r->query);
    if (r->body) {
        phg_wipe(r->body, r->call.body_len);
        free(r->body);
    }
    json_decref(r->call.result);
    json_decref(r->call.audit_details);
    gw_wh_decision_clear(&r->wh);
    if (r->wh_body) {
        phg_wipe(r->wh_body, r->wh_body_len);
        free(r->wh_body);
    }
    free(r);
}

static void outcome_record(gw_req *r);

/* The response has been written (or the client is gone): account for it. */
static void req_finish(gw_req *r)
{
    if (r->finished)
        return;
    r->finished = 1;
    gw_metrics_request(r->rc, r->status ? r->status : 499, now_s() - r->t0);
    if (r->conn) {
        r->conn->current = NULL;
        conn_arm(r->conn, r->cfg->idle_timeout_ms + r->cfg->header_timeout_ms);
    }
    if (r->rc == GW_RC_PROXY && r->authed && r->stage == ST_PRE_AUDIT)
        outcome_record(r);
    atomic_fetch_sub(&g_srv->in_flight, 1);
    req_free(r);
}

static void on_complete(struct evhttp_request *req, void *arg)
{
    gw_req *r = arg;
    (void)req;
    r->req = NULL;
    req_finish(r);
}

/* The rate-limit fields: X-RateLimit-* (the de-facto ones) and the IETF
 * draft's RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-
 * headers: one policy item per window, named by its length). */
static void ratelimit_headers(gw_req *r, struct evkeyvalq *h)
{
    char v[512];
    size_t i, o = 0;
    const phg_rl_decision *d = &r->rl;
    snprintf(v, sizeof v, "%u", d->limit);
    evhttp_add_header(h, "X-RateLimit-Limit", v);
    snprintf(v, sizeof v, "%u", d->remaining);
    evhttp_add_header(h, "X-RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%u", d->reset_s);
    evhttp_add_header(h, "X-RateLimit-Reset", v);
    v[0] = '\0';
    for (i = 0; i < r->rl_policy.n && o < sizeof v; i++) {
        int w = snprintf(v + o, sizeof v - o, "%s\"%us\";q=%u;w=%u", i ? ", " : "",
                         r->rl_policy.limits[i].window_s, r->rl_policy.limits[i].count,
                         r->rl_policy.limits[i].window_s);
        if (w < 0)
            break;
        o += (size_t)w;
    }
    evhttp_add_header(h, "RateLimit-Policy", v);
    snprintf(v, sizeof v, "\"%us\";r=%u;t=%u", d->window_s, d->remaining, d->reset_s);
    evhttp_add_header(h, "RateLimit", v);
    if (!d->allowed) {
        snprintf(v, sizeof v, "%u", d->retry_after_s > 0 ? d->retry_after_s : 1);
        evhttp_add_header(h, "Retry-After", v);
    }
}

static void common_headers(gw_req *r, struct evkeyvalq *h)
{
    evhttp_add_header(h, "X-Request-Id", r->request_id);
    if (r->rl_set)
        ratelimit_headers(r, h);
    if (atomic_load(&g_srv->draining) || r->close_after)
        evhttp_add_header(h, "Connection", "close");
}

/* Send a complete reply (JSON) and let on_complete finish the request. */
static void send_json(gw_req *r, int status, const char *text, size_t len)
{
    struct evbuffer *b;
    struct evkeyvalq *h;
    r->status = status;
    if (r->client_gone || r->req == NULL) {
        if (r->req)
            evhttp_send_reply(r->req, status, NULL, NULL); /* frees the orphan */
        r->req = NULL;
        r->status = 499; /* nginx's "client closed request" */
        req_finish(r);
        return;
    }
    h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Cache-Control", "no-store");
    common_headers(r, h);
    if (status == 401)
        evhttp_add_header(h, "WWW-Authenticate", "Bearer realm=\"phigate\"");
    b = evbuffer_new();
    if (b != NULL)
        evbuffer_add(b, text, len);
    evhttp_request_set_on_complete_cb(r->req, on_complete, r);
    r->replied = 1;
    /* libevent 2.1 has no reason phrase for 429 */
    evhttp_send_reply(r->req, status, status == 429 ? "Too Many Requests" : NULL, b);
    if (b)
        evbuffer_free(b);
}

static void send_value(gw_req *r, int status, json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);
    if (text == NULL) {
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        send_json(r, 500, oom, sizeof oom - 1);
        return;
    }
    send_json(r, status, text, strlen(text));
    free(text);
}

static void send_error(gw_req *r, int status, const char *code, const char *msg)
{
    json_t *v = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", msg,
                          "request_id", r->request_id);
    if (v == NULL) {
        send_value(r, status, NULL);
        return;
    }
    send_value(r, status, v);
    json_decref(v);
}

/* ---- audit records ---------------------------------------------------------------------------------- */

static void on_audit_done(void *arg, phg_status status, const char *id)
{
    gw_req *r = arg;
    r->audit_status = status;
    if (id)
        snprintf(r->audit_id, sizeof r->audit_id, "%s", id);
    complete_on_loop(r);
}

/* How much of a path an audit record may show: all of it, but under
 * /webhooks only the source's name (what follows it is an unsigned source's
 * secret token; raw paths of early refusals are cut at /webhooks). */
static size_t wh_audit_path_len(const char *p)
{
    size_t n;
    if (strncmp(p, "/webhooks", 9) != 0)
        return strlen(p);
    if (p[9] != '/')
        return 9;
    for (n = 10; (p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9') || p[n] == '_' ||
                 p[n] == '-';
         n++)
        ;
    return n;
}

static void fill_event(gw_req *r, phg_audit_event *ev, char *resource, size_t rlen)
{
    size_t plen = wh_audit_path_len(r->path);
    memset(ev, 0, sizeof *ev);
    ev->request_id = r->request_id;
    ev->ip = r->ip;
    if (r->authed) {
        ev->key_id = r->id.key_id;
        ev->user_id = r->id.user_id;
        ev->role = phg_role_name(r->id.role);
    } else {
        ev->key_id = "";
        ev->user_id = "";
        ev->role = "";
    }
    /* a resource is at most PHG_AUDIT_TEXT_MAX bytes: long paths are cut */
    if (plen > (rlen > 16 ? rlen - 16 : 0))
        plen = rlen > 16 ? rlen - 16 : 0;
    snprintf(resource, rlen, "%s %.*s", r->method, (int)plen, r->path);
    ev->resource = resource;
}

/* Append asynchronously; resume(r) runs on the loop once durable (or failed). */
static void audit_then(gw_req *r, int stage, phg_audit_event *ev)
{
    phg_status st;
    r->stage = stage;
    st = g_srv->audit ? phg_audit_append_async(g_srv->audit, ev, on_audit_done, r)
                      : PHG_ERR_UNAVAILABLE;
    if (st != PHG_OK) {
        r->audit_status = st;
        resume(r);
    }
}

static void deny(gw_req *r, int status, const char *code, const char *msg)
{
    phg_audit_event ev;
    char resource[PHG_AUDIT_TEXT_MAX + 1], details[256];
    r->deny_status = status;
    snprintf(r->deny_code, sizeof r->deny_code, "%s", code);
    snprintf(r->deny_msg, sizeof r->deny_msg, "%s", msg);
    fill_event(r, &ev, resource, sizeof resource);
    ev.action = "http.request";
    ev.outcome = "denied";
    snprintf(details, sizeof details, "{\"status\":%d,\"reason\":\"%s\"}", status, code);
    ev.details_json = details;
    audit_then(r, ST_DENY_AUDIT, &ev);
}

static void outcome_record(gw_req *r)
{
    phg_audit_event ev;
    char resource[PHG_AUDIT_TEXT_MAX + 1], details[256];
    fill_event(r, &ev, resource, sizeof resource);
    ev.action = "http.response";
    ev.outcome = (r->status >= 200 && r->status < 400) ? "success" : "error";
    ev.subject = r->id.role == PHG_ROLE_USER ? r->id.user_id : "";
    snprintf(details, sizeof details,
             "{\"status\":%d,\"bytes\":%llu,\"upstream_ms\":%.3f,\"client_gone\":%s}", r->status,
             (unsigned long long)r->bytes_out, r->up_ms, r->client_gone ? "true" : "false");
    ev.details_json = details;
    /* the outcome is recorded after the fact: nothing waits for it */
    if (g_srv->audit == NULL || phg_audit_append_async(g_srv->audit, &ev, NULL, NULL) != PHG_OK)
        log_msg(PHG_LOG_ERROR, "audit: the outcome record was refused",
                json_pack("{s:s}", "request_id", r->request_id));
}

/* ---- the proxy --------------------------------------------------------------------------------------- */

static int is_hop_header(const char *k)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-authenticate",
                                      "proxy-authorization", "te", "trailer", "trailers",
                                      "transfer-encoding", "upgrade", NULL};
    int i;
    for (i = 0; hop[i]; i++)
        if (strcasecmp(k, hop[i]) == 0)
            return 1;
    return 0;
}

/* Is header k named in the Connection header's list (RFC 9110 7.6.1)? */
static int named_in(const char *list, const char *k)
{
    size_t n = strlen(k);
    const char *p = list;
    if (p == NULL)
        return 0;
    while (*p) {
        size_t m;
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        m = strcspn(p, ", \t");
        if (m == n && strncasecmp(p, k, n) == 0)
            return 1;
        p += m;
    }
    return 0;
}

static void reap_dead(evutil_socket_t fd, short what, void *arg)
{
    gw_loop *l = arg;
    int i;
    (void)fd;
    (void)what;
    for (i = 0; i < l->n_dead; i++)
        evhttp_connection_free(l->dead[i]);
    l->n_dead = 0;
}

/* Free an upstream connection once libevent's callbacks on it have
 * returned (freeing it inside them is a use after free). */
static void defer_free_ucon(gw_loop *l, struct evhttp_connection *c)
{
    struct timeval zero = {0, 0};
    if (l->n_dead == l->cap_dead) {
        int ncap = l->cap_dead ? l->cap_dead * 2 : 16;
        void *p = realloc(l->dead, (size_t)ncap * sizeof *l->dead);
        if (p == NULL) {
            evhttp_connection_free_on_completion(c); /* best effort */
            return;
        }
        l->dead = p;
        l->cap_dead = ncap;
    }
    l->dead[l->n_dead++] = c;
    if (l->reap_ev != NULL && !evtimer_pending(l->reap_ev, NULL))
        evtimer_add(l->reap_ev, &zero);
}

/* An exact entry of a comma list (config.c stores it without spaces). */
static int ip_in_list(const char *list, const char *ip)
{
    size_t n = strlen(ip);
    const char *p = list;
    while (*p) {
        size_t m = strcspn(p, ",");
        if (m == n && memcmp(p, ip, n) == 0)
            return 1;
        p += m;
        if (*p == ',')
            p++;
    }
    return 0;
}

static struct evhttp_connection *pool_take(gw_loop *l, int *fresh)
{
    gw_config *cfg = cur_cfg();
    struct evhttp_connection *c;
    struct timeval tv;
    char host[64];
    int port;
    if (l->n_pool > 0) {
        *fresh = 0;
        return l->pool[--l->n_pool];
    }
    *fresh = 1;
    if (l->srv->up_addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&l->srv->up_addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&l->srv->up_addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
    }
    c = evhttp_connection_base_new(l->base, NULL, host, (ev_uint16_t)port);
    if (c == NULL)
        return NULL;
    tv.tv_sec = cfg->upstream_timeout_ms / 1000;
    tv.tv_usec = (cfg->upstream_timeout_ms % 1000) * 1000;
    evhttp_connection_set_timeout_tv(c, &tv);
    evhttp_connection_set_retries(c, 0);
    /* the upstream's response head is bounded like a client's request head;
     * its body streams through, so it has no limit here */
    evhttp_connection_set_max_headers_size(c, (ev_ssize_t)(cfg->max_header_bytes * 4));
    return c;
}

static void pool_give(gw_loop *l, struct evhttp_connection *c)
{
    gw_config *cfg = cur_cfg();
    struct bufferevent *ub = evhttp_connection_get_bufferevent(c);
    if (ub != NULL && evbuffer_get_length(bufferevent_get_input(ub)) > 0) {
        /* bytes the upstream sent beyond its response: never reuse */
        defer_free_ucon(l, c);
        return;
    }
    if (l->n_pool < cfg->upstream_pool && !atomic_load(&g_srv->draining)) {
        if (l->n_pool == l->cap_pool) {
            int ncap = l->cap_pool ? l->cap_pool * 2 : 16;
            void *p = realloc(l->pool, (size_t)ncap * sizeof *l->pool);
            if (p == NULL) {
                defer_free_ucon(l, c);
                return;
            }
            l->pool = p;
            l->cap_pool = ncap;
        }
        l->pool[l->n_pool++] = c;
        return;
    }
    defer_free_ucon(l, c);
}

static void on_upstream_error(enum evhttp_request_error err, void *arg)
{
    gw_req *r = arg;
    r->uerr = err;
    r->uerr_set = 1;
}

static void upstream_fail_reply(gw_req *r)
{
    int timeout = r->uerr_set && r->uerr == EVREQ_HTTP_TIMEOUT;
    gw_metrics_upstream_error(timeout ? GW_UE_TIMEOUT : GW_UE_CONNECT);
    if (timeout)
        send_error(r, 504, "gateway_timeout", "the upstream did not answer in time");
    else
        send_error(r, 502, "bad_gateway", "the upstream could not be reached");
}

/* The response head arrived: start the reply to the client. */
static int on_upstream_head(struct evhttp_request *u, void *arg)
{
    gw_req *r = arg;
    struct evkeyvalq *in = evhttp_request_get_input_headers(u), *out;
    struct evkeyval *kv;
    int code = evhttp_request_get_response_code(u), chunked;
    if (r->connect_ev) {
        event_free(r->connect_ev);
        r->connect_ev = NULL;
    }
    r->up_ms = (now_s() - r->t_up0) * 1000.0;
    if (r->client_gone || r->req == NULL)
        return -1;
    out = evhttp_request_get_output_headers(r->req);
    /* a chunked response's Content-Length (if the upstream sent both) is
     * not what goes out: the body is re-framed */
    chunked = evhttp_find_header(in, "Transfer-Encoding") != NULL;
    TAILQ_FOREACH(kv, in, next)
    {
        if (is_hop_header(kv->key) || strcasecmp(kv->key, "X-Request-Id") == 0 ||
            (chunked && strcasecmp(kv->key, "Content-Length") == 0))
            continue;
        evhttp_add_header(out, kv->key, kv->value);
    }
    if (evhttp_find_header(out, "Content-Type") == NULL)
        evhttp_add_header(out, "Content-Type", "application/octet-stream");
    /* an HTTP/1.0 client cannot take chunks: without a length, the end of
     * the body is the end of the connection */
    if (r->req->major == 1 && r->req->minor == 0 &&
        evhttp_find_header(out, "Content-Length") == NULL)
        r->close_after = 1;
    common_headers(r, out);
    r->status = code;
    r->started = 1;
    evhttp_request_set_on_complete_cb(r->req, on_complete, r);
    evhttp_send_reply_start(r->req, code, evhttp_request_get_response_code_line(u));
    return 0;
}

static void on_chunk_sent(struct evhttp_connection *evcon, void *arg)
{
    gw_req *r = arg;
    (void)evcon;
    if (r->paused && r->ucon != NULL) {
        struct bufferevent *ub = evhttp_connection_get_bufferevent(r->ucon);
        r->paused = 0;
        if (ub)
            bufferevent_enable(ub, EV_READ);
    }
}

static void on_upstream_chunk(struct evhttp_request *u, void *arg)
{
    gw_req *r = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(u);
    size_t n = evbuffer_get_length(in);
    struct evhttp_connection *cc;
    if (!r->started || r->client_gone || r->req == NULL) {
        evbuffer_drain(in, n);
        return;
    }
    r->bytes_out += n;
    evhttp_send_reply_chunk_with_cb(r->req, in, on_chunk_sent, r);
    /* Constant memory: when the client reads slower than the upstream
     * writes, stop reading the upstream until the client catches up. */
    cc = evhttp_request_get_connection(r->req);
    if (cc != NULL) {
        struct bufferevent *cb = evhttp_connection_get_bufferevent(cc);
        if (cb && evbuffer_get_length(bufferevent_get_output(cb)) > STREAM_HIGH_WATER) {
            struct bufferevent *ub = evhttp_connection_get_bufferevent(r->ucon);
            if (ub) {
                bufferevent_disable(ub, EV_READ);
                r->paused = 1;
            }
        }
    }
}

static void on_upstream_done(struct evhttp_request *u, void *arg)
{
    gw_req *r = arg;
    struct evhttp_connection *ucon = r->ucon;
    int ok = u != NULL && evhttp_request_get_response_code(u) != 0 && !r->upstream_failed;
    r->ureq = NULL;
    r->ucon = NULL;
    if (r->connect_ev) {
        event_free(r->connect_ev);
        r->connect_ev = NULL;
    }
    if (ucon != NULL) {
        if (ok)
            pool_give(r->loop, ucon);
        else
            defer_free_ucon(r->loop, ucon); /* libevent still uses it until we return */
    }
    if (!r->started) {
        if (r->in_forward) {
            r->sync_failed = 1; /* forward() answers */
            return;
        }
        upstream_fail_reply(r);
        return;
    }
    if (!ok) {
        /* failed mid-stream: the client must not take a cut body for a whole
         * one, so its connection is closed without the final chunk */
        gw_metrics_upstream_error(r->uerr_set && r->uerr == EVREQ_HTTP_TIMEOUT ? GW_UE_TIMEOUT
                                                                                 : GW_UE_RESET);
        r->status = 502;
        if (r->req != NULL && !r->client_gone) {
            struct evhttp_connection *cc = evhttp_request_get_connection(r->req);
            struct evhttp_request *req = r->req;
            r->req = NULL;
            evhttp_request_set_on_complete_cb(req, NULL, NULL);
            if (cc)
                evhttp_connection_free(cc); /* frees req; on_conn_close finishes r */
            else
                req_finish(r);
            return;
        }
        req_finish(r);
        return;
    }
    if (r->req != NULL && !r->client_gone)
        evhttp_send_reply_end(r->req); /* on_complete finishes r */
    else
        req_finish(r);
}

/* A new upstream connection is bounded by connect_timeout_ms (libevent 2.1's
 * own timeout covers connect, write and read alike). */
static void on_connect_check(evutil_socket_t fd, short what, void *arg)
{
    gw_req *r = arg;
    (void)fd;
    event_free(r->connect_ev);
    r->connect_ev = NULL;
    if ((what & EV_TIMEOUT) && r->ureq != NULL) {
        struct evhttp_request *u = r->ureq;
        r->uerr = EVREQ_HTTP_TIMEOUT;
        r->uerr_set = 1;
        r->upstream_failed = 1;
        /* neither callback may overwrite the timeout: a cancel reports
         * REQUEST_CANCEL to the error callback */
        evhttp_request_set_error_cb(u, NULL);
        evhttp_cancel_request(u); /* on_upstream_done is not called after a cancel */
        r->ureq = NULL;
        if (r->ucon) {
            defer_free_ucon(r->loop, r->ucon);
            r->ucon = NULL;
        }
        upstream_fail_reply(r);
    }
}

static void forward(gw_req *r)
{
    gw_loop *l = r->loop;
    gw_config *cfg = r->cfg;
    struct evhttp_request *u;
    struct evkeyvalq *in = evhttp_request_get_input_headers(r->req), *out;
    struct evkeyval *kv;
    char scopes[128], xff[512], uri[GW_PATH_MAX * 2 + 8], clen[24];
    const char *prev_xff = NULL, *conn_list;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(r->req);
    struct evhttp_connection *uc;
    size_t blen;

    if (cfg->upstream_host[0] == '\0') {
        send_error(r, 404, "not_found", "no upstream is configured for this path");
        return;
    }
    r->ucon = pool_take(l, &r->ucon_fresh);
    if (r->ucon == NULL) {
        send_error(r, 502, "bad_gateway", "no upstream connection could be made");
        return;
    }
    u = evhttp_request_new(on_upstream_done, r);
    if (u == NULL) {
        pool_give(l, r->ucon);
        r->ucon = NULL;
        send_error(r, 500, "internal", "out of memory");
        return;
    }
    evhttp_request_set_header_cb(u, on_upstream_head);
    evhttp_request_set_chunked_cb(u, on_upstream_chunk);
    evhttp_request_set_error_cb(u, on_upstream_error);
    out = evhttp_request_get_output_headers(u);
    conn_list = evhttp_find_header(in, "Connection");
    TAILQ_FOREACH(kv, in, next)
    {
        const char *k = kv->key;
        if (is_hop_header(k) || named_in(conn_list, k) || strchr(k, '_') != NULL ||
            strcasecmp(k, "Authorization") == 0 || strcasecmp(k, "X-API-Key") == 0 ||
            strncasecmp(k, "X-Phigate-", 10) == 0 || strcasecmp(k, "X-Request-Id") == 0 ||
            strcasecmp(k, "Host") == 0 || strcasecmp(k, "Content-Length") == 0 ||
            strcasecmp(k, "Expect") == 0 || strcasecmp(k, "Forwarded") == 0 ||
            strcasecmp(k, "X-Real-IP") == 0 ||
            (strncasecmp(k, "X-Forwarded-", 12) == 0 && strcasecmp(k, "X-Forwarded-For") != 0))
            continue;
        if (strcasecmp(k, "X-Forwarded-For") == 0) {
            prev_xff = kv->value;
            continue;
        }
        evhttp_add_header(out, k, kv->value);
    }
    evhttp_add_header(out, "Host", l->srv->up_hostport);
    evhttp_add_header(out, "X-Phigate-User-Id", r->id.user_id);
    evhttp_add_header(out, "X-Phigate-Key-Id", r->id.key_id);
    evhttp_add_header(out, "X-Phigate-Role", phg_role_name(r->id.role));
    phg_apikey_scopes_format(r->id.scopes, scopes, sizeof scopes);
    evhttp_add_header(out, "X-Phigate-Scopes", scopes);
    evhttp_add_header(out, "X-Request-Id", r->request_id);
    /* X-Forwarded-For from the client is kept only behind a trusted proxy */
    if (prev_xff != NULL && ip_in_list(cfg->trusted_proxy, r->ip))
        snprintf(xff, sizeof xff, "%s, %s", prev_xff, r->ip);
    else
        snprintf(xff, sizeof xff, "%s", r->ip);
    evhttp_add_header(out, "X-Forwarded-For", xff);
    evhttp_add_header(out, "X-Forwarded-Proto", l->srv->ssl ? "https" : "http");
    /* The body always travels with its length: libevent 2.1 adds one only
     * for POST and PUT, and an unframed PATCH body would be read by the
     * upstream as the next request on this pooled connection. */
    blen = evbuffer_get_length(evhttp_request_get_input_buffer(r->req));
    if (blen > 0 || cmd == EVHTTP_REQ_POST || cmd == EVHTTP_REQ_PUT || cmd == EVHTTP_REQ_PATCH) {
        snprintf(clen, sizeof clen, "%zu", blen);
        evhttp_add_header(out, "Content-Length", clen);
    }
    evbuffer_add_buffer(evhttp_request_get_output_buffer(u),
                        evhttp_request_get_input_buffer(r->req));
    snprintf(uri, sizeof uri, "%s%s", cfg->upstream_base, r->raw_uri);
    r->ureq = u;
    r->t_up0 = now_s();
    uc = r->ucon;
    r->in_forward = 1;
    if (evhttp_make_request(uc, u, cmd, uri) != 0) {
        r->in_forward = 0;
        evhttp_request_free(u); /* 2.1 only dequeues it */
        r->ureq = NULL;
        r->ucon = NULL;
        defer_free_ucon(l, uc);
        gw_metrics_upstream_error(GW_UE_CONNECT);
        send_error(r, 502, "bad_gateway", "the upstream could not be reached");
        return;
    }
    r->in_forward = 0;
    if (r->sync_failed) {
        /* the connect failed inside evhttp_make_request, which already
         * called on_upstream_done: answer now that the stack is ours */
        upstream_fail_reply(r);
        return;
    }
    if (r->ucon_fresh) {
        struct bufferevent *ub = evhttp_connection_get_bufferevent(r->ucon);
        int fd = ub ? bufferevent_getfd(ub) : -1;
        if (fd >= 0) {
            struct timeval tv = {cfg->upstream_connect_timeout_ms / 1000,
                                 (cfg->upstream_connect_timeout_ms % 1000) * 1000};
            r->connect_ev = event_new(l->base, fd, EV_WRITE, on_connect_check, r);
            if (r->connect_ev)
                event_add(r->connect_ev, &tv);
        }
    }
}

/* ---- calls answered here ------------------------------------------------------------------------------ */

static void call_prepare(gw_req *r)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t n = evbuffer_get_length(in);
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Content-Type");
    memset(&r->call, 0, sizeof r->call);
    if (n > 0) {
        r->body = malloc(n + 1);
        if (r->body != NULL) {
            evbuffer_remove(in, r->body, n);
            r->body[n] = '\0';
        } else {
            n = 0;
        }
    }
    if (ct != NULL)
        snprintf(r->content_type, sizeof r->content_type, "%s", ct);
    r->call.method = r->method;
    r->call.path = r->path;
    r->call.query = r->query;
    r->call.body = r->body;
    r->call.body_len = n;
    r->call.content_type = ct ? r->content_type : NULL;
    r->call.id = &r->id;
    r->call.request_id = r->request_id;
    r->call.ip = r->ip;
}

/* After the handler: record the call, then answer (resume, ST_CALL_AUDIT). */
static void call_record(gw_req *r)
{
    phg_audit_event ev;
    char resource[PHG_AUDIT_TEXT_MAX + 1];
    char *details = NULL;
    json_t *d = r->call.audit_details ? json_incref(r->call.audit_details) : json_object();
    int failed = r->call.status >= 400 || r->call.status == 0;
    fill_event(r, &ev, resource, sizeof resource);
    ev.action = r->call.action[0] ? r->call.action : "http.request";
    if (r->call.resource[0])
        ev.resource = r->call.resource;
    ev.subject = r->call.subject;
    ev.outcome = !failed ? "success" : (r->call.status == 403 ? "denied" : "error");
    if (d != NULL) {
        json_object_set_new(d, "status", json_integer(r->call.status ? r->call.status : 500));
        if (failed && r->call.err_code[0])
            json_object_set_new(d, "error", json_string(r->call.err_code));
        details = json_dumps(d, JSON_COMPACT);
        json_decref(d);
    }
    ev.details_json = details;
    audit_then(r, ST_CALL_AUDIT, &ev);
    free(details);
}

static void call_reply(gw_req *r)
{
    if (r->call.status == 0) {
        send_error(r, 500, "internal", "the handler gave no answer");
        return;
    }
    if (r->call.status >= 400 || r->call.result == NULL) {
        send_error(r, r->call.status >= 400 ? r->call.status : 500,
                   r->call.err_code[0] ? r->call.err_code : "internal",
                   r->call.err_msg[0] ? r->call.err_msg : "internal error");
        return;
    }
    send_value(r, r->call.status, r->call.result);
}

static void set_context(gw_req *r)
{
    phg_request_context ctx;
    memset(&ctx, 0, sizeof ctx);
    snprintf(ctx.request_id, sizeof ctx.request_id, "%s", r->request_id);
    snprintf(ctx.key_id, sizeof ctx.key_id, "%s", r->id.key_id);
    snprintf(ctx.user_id, sizeof ctx.user_id, "%s", r->id.user_id);
    snprintf(ctx.role, sizeof ctx.role, "%s", phg_role_name(r->id.role));
    snprintf(ctx.ip, sizeof ctx.ip, "%s", r->ip);
    phg_request_context_set(&ctx);
}

static void admin_work(gw_req *r)
{
    set_context(r);
    gw_admin_ctx ac = g_srv->admin;
    ac.keyring = atomic_load(&g_srv->kr_cur);
    ac.cfg = r->cfg;
    gw_admin_handle(&ac, &r->call);
    phg_request_context_set(NULL);
}

static json_t *config_json_cb(void *arg)
{
    (void)arg;
    return gw_config_json(cur_cfg());
}

/* /readyz: the store answers, the audit writer is not failing, the upstream
 * accepts a connection. Blocking checks: on a worker, one at a time, and the
 * answer is kept for a second, so a flood of probes costs one check. */
static atomic_int ready_running;
static _Atomic int64_t ready_at_ms;
static atomic_int ready_bits = -1; /* store | audit << 1 | upstream << 2; -1 none yet */
static uint64_t ready_prev_failed, ready_prev_appended;


static void ready_result(gw_req *r, int bits)
{
    int store_ok = bits & 1, audit_ok = (bits >> 1) & 1, up_ok = (bits >> 2) & 1;
    r->call.status = (store_ok && up_ok && audit_ok) ? 200 : 503;
    r->call.result = json_pack("{s:s,s:{s:b,s:b,s:b}}", "status",
                               r->call.status == 200 ? "ready" : "not_ready", "checks", "store",
                               store_ok, "audit", audit_ok, "upstream", up_ok);
}

static void ready_work(gw_req *r)
{
    gw_config *cfg = r->cfg;
    int cur = 0, latest = 0, store_ok, up_ok = 1, audit_ok, bits;
    phg_audit_stats as;
    store_ok = phg_store_schema_version(g_srv->store, &cur, &latest) == PHG_OK && cur == latest;
    phg_audit_get_stats(g_srv->audit, &as);
    /* failing: records failed since the last check and none went through */
    audit_ok = as.queue_depth < 60000 &&
               !(as.failed > ready_prev_failed && as.appended == ready_prev_appended);
    ready_prev_failed = as.failed;
    ready_prev_appended = as.appended;
    if (cfg->upstream_host[0] != '\0') {
        int fd = socket(g_srv->up_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct timeval tv = {cfg->upstream_connect_timeout_ms / 1000,
                             (cfg->upstream_connect_timeout_ms % 1000) * 1000};
        up_ok = 0;
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            up_ok = connect(fd, (struct sockaddr *)&g_srv->up_addr, g_srv->up_addr_len) == 0;
            close(fd);
        }
    }
    bits = store_ok | audit_ok << 1 | up_ok << 2;
    atomic_store(&ready_bits, bits);
    atomic_store(&ready_at_ms, (int64_t)gw_mono_ms());
    atomic_store(&ready_running, 0);
    ready_result(r, bits);
}

/* ---- webhooks -------------------------------------------------------------------------------------------- */


/* The audit record of a webhook request. Its resource is "webhook:<source>",
 * never the path: an unsigned source's path holds its secret token. */
/* A printable-ASCII text as the inside of a JSON string ('"' and '\\'
 * escaped, anything else not printable as '?'). */
static void json_inner(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (; *in && o + 2 < cap; in++) {
        unsigned char c = (unsigned char)*in;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else {
            out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
        }
    }
    out[o] = '\0';
}

/* The audit record of a webhook request, into ev (resource and details in
 * the buffers given). Its resource is "webhook:<source>", never the path: an
 * unsigned source's path holds its secret token. Details are written by
 * hand: every value is a fixed name, a number, or printable ASCII escaped. */
static void wh_event(gw_req *r, phg_audit_event *ev, const char *action, const char *outcome,
                     char *resource, size_t rlen, char *details, size_t dlen)
{
    const gw_wh_decision *w = &r->wh;
    fill_event(r, ev, resource, rlen);
    snprintf(resource, rlen, "webhook:%s", w->source_name[0] ? w->source_name : "?");
    ev->action = action;
    ev->outcome = outcome;
    if (w->kind == GW_WH_VERIFIED) {
        int si = w->result.secret_index;
        char mid[2 * PHG_WEBHOOK_MSG_ID_MAX + 1];
        json_inner(w->result.msg_id, mid, sizeof mid);
        snprintf(details, dlen,
                 "{\"event_id\":\"%s\",\"msg_id\":\"%s\",\"scheme\":\"%s\",\"method\":\"%s\","
                 "\"authenticated\":%s,\"secret_index\":%lld,\"signed_ts\":%lld,"
                 "\"duplicate\":%s,\"status\":%d}",
                 r->wh_event, mid, phg_webhook_scheme_name(w->source->scheme), r->method,
                 w->result.authenticated ? "true" : "false",
                 (long long)(si >= 0 && si < PHG_WEBHOOK_SECRETS_MAX ? w->source->secret_index[si]
                                                                      : -1),
                 (long long)(w->result.has_timestamp ? w->result.timestamp_s : 0),
                 r->wh_dup ? "true" : "false", r->status ? r->status : 200);
    } else {
        snprintf(details, dlen, "{\"reason\":\"%s\",\"method\":\"%s\",\"status\":%d}", w->code,
                 r->method, w->status);
    }
    ev->details_json = details;
}

/* On the loop: record, then resume at `stage`. */
static void wh_audit(gw_req *r, const char *action, const char *outcome, int stage)
{
    phg_audit_event ev;
    char resource[PHG_AUDIT_TEXT_MAX + 1], details[1024];
    wh_event(r, &ev, action, outcome, resource, sizeof resource, details, sizeof details);
    audit_then(r, stage, &ev);
}

/* On any thread (the inbox writer's): record, then wh_reply on the loop. */
static void wh_audit_any(gw_req *r, const char *action, const char *outcome)
{
    phg_audit_event ev;
    char resource[PHG_AUDIT_TEXT_MAX + 1], details[1024];
    phg_status st;
    wh_event(r, &ev, action, outcome, resource, sizeof resource, details, sizeof details);
    r->stage = ST_WH_AUDIT;
    st = g_srv->audit ? phg_audit_append_async(g_srv->audit, &ev, on_audit_done, r)
                      : PHG_ERR_UNAVAILABLE;
    if (st != PHG_OK) {
        r->audit_status = st;
        complete_on_loop(r);
    }
}

/* Audited: answer. */
static void wh_reply(gw_req *r)
{
    gw_wh_decision *w = &r->wh;
    if (r->audit_status != PHG_OK) {
        gw_webhooks_count(g_srv->wh, "refused");
        send_error(r, 503, "audit_unavailable",
                   "the audit log cannot take records; send the webhook again later");
        return;
    }
    if (w->kind == GW_WH_VERIFIED) {
        char body[96];
        int n = snprintf(body, sizeof body, "{\"id\":\"%s\",\"status\":\"accepted\"}", r->wh_event);
        gw_webhooks_count(g_srv->wh, r->wh_dup ? "duplicate" : "accepted");
        send_json(r, 200, body, (size_t)n);
        return;
    }
    if (strcmp(w->action, "webhook.handshake") == 0 && strcmp(w->code, "handshake") == 0) {
        gw_webhooks_count(g_srv->wh, "handshake");
        if (w->body != NULL) {
            send_json(r, w->status, w->body, w->body_len);
            return;
        }
        r->status = w->status;
        if (r->client_gone || r->req == NULL) {
            if (r->req)
                evhttp_send_reply(r->req, w->status, NULL, NULL);
            r->req = NULL;
            r->status = 499;
            req_finish(r);
            return;
        }
        common_headers(r, evhttp_request_get_output_headers(r->req));
        evhttp_request_set_on_complete_cb(r->req, on_complete, r);
        r->replied = 1;
        evhttp_send_reply(r->req, w->status, NULL, NULL);
        return;
    }
    gw_webhooks_count(g_srv->wh, strcmp(w->action, "webhook.handshake") == 0 ? "handshake"
                                                                              : "refused");
    send_error(r, w->status, w->code, w->message);
}

static void wh_remember_work(gw_req *r)
{
    const gw_wh_source *s = r->wh.source;
    gw_webhooks_remember(g_srv->wh, s->name, r->wh.result.msg_id, r->wh_event,
                         2000 * (s->tolerance_s > 0 ? s->tolerance_s : 300));
}

static void wh_after_remember(gw_req *r)
{
    wh_audit(r, r->wh_dup ? "webhook.duplicate" : "webhook.accepted", "success", ST_WH_AUDIT);
}

/* The event of a verified request, but its body and due_ms. */
static void wh_event_in(const gw_req *r, phg_wh_event_in *ev)
{
    const gw_wh_decision *w = &r->wh;
    int si = w->result.secret_index;
    memset(ev, 0, sizeof *ev);
    ev->source = w->source->name;
    ev->msg_id = w->result.msg_id;
    ev->authenticated = w->result.authenticated;
    ev->secret_index = (si >= 0 && si < PHG_WEBHOOK_SECRETS_MAX)
                           ? (int)w->source->secret_index[si]
                           : -1;
    ev->signed_ts_s = w->result.has_timestamp ? w->result.timestamp_s : 0;
    ev->received_ms = r->wh_now_ms;
    ev->content_type = r->wh_ct;
    ev->request_id = r->request_id;
}

/* A new event leased to us goes straight to a deliverer: no claim, no
 * decryption. Any thread. */
static void wh_handoff(gw_req *r)
{
    phg_wh_event_in ev;
    if (r->wh_dup)
        return;
    if (r->wh_due_ms == 0) {
        gw_webhooks_kick(g_srv->wh); /* a claim takes it */
        return;
    }
    wh_event_in(r, &ev);
    ev.body = r->wh_body;
    ev.body_len = r->wh_body_len;
    ev.due_ms = r->wh_due_ms;
    gw_webhooks_handoff(g_srv->wh, &ev, r->wh_event);
}

/* On a worker (the Redis path): hand it over, which may write the store (a
 * lease given back), and remember it; neither on the loop. */
static void wh_handoff_remember_work(gw_req *r)
{
    wh_handoff(r);
    wh_remember_work(r);
}

/* The inbox has answered (on the loop): a failure, or the Redis path. */
static void wh_stored(gw_req *r)
{
    if (r->wh_status == PHG_ERR_EXISTS)
        r->wh_dup = 1;
    else if (r->wh_status != PHG_OK) {
        /* nothing stored: the sender must try again */
        r->wh.kind = GW_WH_REPLY;
        r->wh.status = 503;
        r->wh.action = "webhook.refused";
        snprintf(r->wh.code, sizeof r->wh.code, "inbox_unavailable");
        snprintf(r->wh.message, sizeof r->wh.message,
                 "the webhook could not be stored; send it again later");
        wh_audit(r, "webhook.refused", "error", ST_WH_AUDIT);
        return;
    }
    if (gw_webhooks_redis(g_srv->wh)) {
        r->after_worker = wh_after_remember;
        if (submit_work(r, wh_handoff_remember_work) == 0)
            return;
    }
    wh_handoff_remember_work(r);
    wh_after_remember(r);
}

/* On the inbox writer's thread. Stored (or known): remember it, hand it
 * over, write the audit record from here (one wake of the loop per request,
 * not two); the loop answers once the record is durable. */
static void on_inbox_done(void *arg, phg_status status, const char *event_id)
{
    gw_req *r = arg;
    r->wh_status = status;
    snprintf(r->wh_event, sizeof r->wh_event, "%s", event_id ? event_id : "");
    if ((status == PHG_OK || status == PHG_ERR_EXISTS) && !gw_webhooks_redis(g_srv->wh)) {
        r->wh_dup = status == PHG_ERR_EXISTS;
        wh_handoff(r);
        wh_remember_work(r);
        wh_audit_any(r, r->wh_dup ? "webhook.duplicate" : "webhook.accepted", "success");
        return;
    }
    r->stage = ST_WH_INBOX;
    complete_on_loop(r);
}

static void wh_seen_work(gw_req *r)
{
    r->wh_dup = gw_webhooks_seen(g_srv->wh, r->wh.source->name, r->wh.result.msg_id,
                                 r->wh_event);
}

/* Known already: the same answer as the first time, nothing stored again.
 * Otherwise into the inbox. */
static void wh_after_seen(gw_req *r)
{
    phg_wh_event_in ev;
    const char *ct;
    struct evbuffer *in;
    phg_status st;
    if (r->wh_dup) {
        r->wh_status = PHG_ERR_EXISTS;
        r->stage = ST_WH_INBOX;
        wh_stored(r);
        return;
    }
    ct = r->req ? evhttp_find_header(evhttp_request_get_input_headers(r->req), "Content-Type")
                : NULL;
    snprintf(r->wh_ct, sizeof r->wh_ct, "%s",
             (ct && strlen(ct) <= PHG_WH_CONTENT_TYPE_MAX) ? ct : "");
    /* the inbox keeps printable ASCII only: a tab (whitespace in HTTP) is a
     * space; with any other byte the type is left out (the event is kept:
     * a refusal would come back at every retry of the sender) */
    for (size_t i = 0; r->wh_ct[i] != '\0'; i++) {
        unsigned char c = (unsigned char)r->wh_ct[i];
        if (c == '\t') {
            r->wh_ct[i] = ' ';
        } else if (c < 0x20 || c > 0x7e) {
            r->wh_ct[0] = '\0';
            break;
        }
    }
    wh_event_in(r, &ev);
    in = r->req ? evhttp_request_get_input_buffer(r->req) : NULL;
    ev.body_len = in ? evbuffer_get_length(in) : 0;
    ev.body = ev.body_len ? evbuffer_pullup(in, -1) : NULL;
    ev.due_ms = gw_webhooks_handoff_lease(g_srv->wh, ev.received_ms);
    if (ev.due_ms > 0 && ev.body_len > 0) {
        /* the deliverers' copy: the request's buffer belongs to the loop */
        r->wh_body = malloc(ev.body_len);
        if (r->wh_body != NULL) {
            memcpy(r->wh_body, ev.body, ev.body_len);
            r->wh_body_len = ev.body_len;
        } else {
            ev.due_ms = 0; /* not leased: a claim takes it */
        }
    }
    r->wh_due_ms = ev.due_ms;
    r->stage = ST_WH_INBOX;
    st = phg_wh_inbox_put_async(gw_webhooks_inbox(g_srv->wh), &ev, on_inbox_done, r);
    if (st != PHG_OK) {
        r->wh_status = st;
        wh_stored(r);
    }
}

static void wh_decide(gw_req *r);

static void wh_refresh_work(gw_req *r)
{
    (void)r;
    gw_webhooks_refresh_keyset(g_srv->wh);
}

static void wh_after_refresh(gw_req *r)
{
    wh_decide(r);
}

static void wh_decide(gw_req *r)
{
    phg_webhook_header hs[PHG_WEBHOOK_HEADERS_MAX];
    size_t n = 0;
    struct evkeyval *kv;
    struct evbuffer *in = r->req ? evhttp_request_get_input_buffer(r->req) : NULL;
    size_t blen = in ? evbuffer_get_length(in) : 0;
    const uint8_t *body = blen ? evbuffer_pullup(in, -1) : NULL;
    int refreshed = r->wh.kind == GW_WH_REFRESH;

    if (r->req == NULL) {
        r->status = 499;
        req_finish(r);
        return;
    }
    gw_wh_decision_clear(&r->wh);
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(r->req), next)
    {
        if (n == PHG_WEBHOOK_HEADERS_MAX) {
            memset(&r->wh, 0, sizeof r->wh);
            r->wh.kind = GW_WH_REPLY;
            r->wh.status = 400;
            r->wh.action = "webhook.refused";
            snprintf(r->wh.code, sizeof r->wh.code, "too_many_headers");
            snprintf(r->wh.message, sizeof r->wh.message, "the request has too many headers");
            wh_audit(r, "webhook.refused", "denied", ST_WH_AUDIT);
            return;
        }
        hs[n].name = kv->key;
        hs[n].name_len = strlen(kv->key);
        hs[n].value = kv->value;
        hs[n].value_len = strlen(kv->value);
        n++;
    }
    r->wh_now_ms = gw_wall_ms();
    gw_webhooks_decide(g_srv->wh, r->method, r->path, r->query, hs, n, body, blen, r->wh_now_ms,
                       &r->wh);
    if (r->wh.kind == GW_WH_REFRESH) {
        if (!refreshed) {
            r->after_worker = wh_after_refresh;
            if (submit_work(r, wh_refresh_work) == 0)
                return;
        }
        r->wh.kind = GW_WH_REPLY;
        r->wh.status = 401;
        r->wh.action = "webhook.refused";
        snprintf(r->wh.code, sizeof r->wh.code, "unknown_key");
        snprintf(r->wh.message, sizeof r->wh.message,
                 "the signature's key id is not in the current keyset");
    }
    if (r->wh.kind == GW_WH_REPLY) {
        wh_audit(r, r->wh.action,
                 strcmp(r->wh.code, "handshake") == 0 ? "success" : "denied", ST_WH_AUDIT);
        return;
    }
    /* verified: seen before? */
    if (gw_webhooks_redis(g_srv->wh)) {
        r->after_worker = wh_after_seen;
        if (submit_work(r, wh_seen_work) == 0)
            return;
    }
    wh_seen_work(r);
    wh_after_seen(r);
}

static void handle_webhook(gw_req *r)
{
    if (g_srv->wh == NULL) {
        deny(r, 404, "not_found", "this gateway serves no webhooks");
        return;
    }
    wh_decide(r);
}

/* ---- the pipeline ------------------------------------------------------------------------------------------ */

static void wh_stored(gw_req *r);
static void wh_reply(gw_req *r);

static void resume(gw_req *r)
{
    switch (r->stage) {
    case ST_DENY_AUDIT:
        if (r->audit_status != PHG_OK) {
            send_error(r, 503, "audit_unavailable",
                       "the audit log cannot take records; the request was refused");
            return;
        }
        send_error(r, r->deny_status, r->deny_code, r->deny_msg);
        return;
    case ST_PRE_AUDIT:
        if (r->audit_status != PHG_OK) {
            r->stage = ST_NONE; /* nothing forwarded: no outcome record */
            send_error(r, 503, "audit_unavailable",
                       "the audit log cannot take records; nothing was forwarded");
            return;
        }
        if (r->client_gone || r->req == NULL) {
            r->status = 499;
            req_finish(r);
            return;
        }
        forward(r);
        return;
    case ST_CALL_AUDIT:
        if (r->audit_status != PHG_OK) {
            send_error(r, 503, "audit_unavailable",
                       "the audit log cannot take records; the answer was withheld");
            return;
        }
        call_reply(r);
        return;
    case ST_WORKER:
        r->after_worker(r);
        return;
    case ST_WH_INBOX:
        wh_stored(r);
        return;
    case ST_WH_AUDIT:
        wh_reply(r);
        return;
    default:
        send_error(r, 500, "internal", "internal error");
    }
}

static void worker_then_reply(gw_req *r)
{
    send_value(r, r->call.status, r->call.result);
}

static int percent_decode_path(const char *in, size_t len, char *out, size_t cap)
{
    size_t i, o = 0;
    for (i = 0; i < len; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            int h, l;
            if (len - i < 3 || (h = gw_hex_digit(in[i + 1])) < 0 || (l = gw_hex_digit(in[i + 2])) < 0)
                return -1;
            c = h * 16 + l;
            i += 2;
        }
        if (c < 0x20 || c == 0x7f || o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* A path the router can trust: absolute, no empty, "." or ".." segments
 * once decoded (a prefix rule must not be dodged with /public/../admin). */
static int path_ok(const char *p)
{
    const char *s = p;
    if (*s != '/')
        return 0;
    while (*s) {
        const char *seg = s + 1, *e = strchr(seg, '/');
        size_t n = e ? (size_t)(e - seg) : strlen(seg);
        if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return 0;
        if (n == 0 && e != NULL)
            return 0; /* "//" */
        if (memchr(seg, '\\', n))
            return 0;
        s = e ? e : seg + n;
    }
    return 1;
}

static const char *method_name(enum evhttp_cmd_type c)
{
    switch (c) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "UNKNOWN";
}

static int query_has_key(const char *q)
{
    /* a key in the query string ends up in logs and browser history: refuse
     * it loudly instead of ignoring it */
    return q != NULL && (strstr(q, "phg_") != NULL || strcasestr(q, "api_key=") != NULL ||
                         strcasestr(q, "apikey=") != NULL || strcasestr(q, "access_token=") != NULL);
}

static gw_auth_fail reason_metric(phg_apikey_reason why)
{
    switch (why) {
    case PHG_APIKEY_MALFORMED:
    case PHG_APIKEY_CHECKSUM: return GW_AF_MALFORMED;
    case PHG_APIKEY_REVOKED: return GW_AF_REVOKED;
    case PHG_APIKEY_EXPIRED: return GW_AF_EXPIRED;
    case PHG_APIKEY_UNKNOWN:
    case PHG_APIKEY_VALID: break;
    }
    return GW_AF_UNKNOWN;
}

static int auth_result(gw_req *r, phg_status st, phg_apikey_reason why)
{
    if (st != PHG_OK) {
        if (st != PHG_ERR_AUTH) {
            deny(r, 503, "unavailable", "the key store cannot be reached");
            return -1;
        }
        gw_metrics_auth_fail(reason_metric(why));
        deny(r, 401, "unauthorized", "the API key is not valid");
        return -1;
    }
    r->authed = 1;
    return 0;
}

static void auth_work(gw_req *r)
{
    r->verify_st = phg_keys_verify(g_srv->keys, r->key, r->key_len, &r->id, &r->verify_why);
    phg_wipe(r->key, sizeof r->key);
}

static void after_auth(gw_req *r);

static void auth_resume(gw_req *r)
{
    if (auth_result(r, r->verify_st, r->verify_why) == 0)
        after_auth(r);
}

/* Authenticate; 0 with r->id filled, -1 after deny(), 1 when the answer
 * comes later (auth_resume). */
static int authenticate(gw_req *r)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
    struct evkeyval *kv;
    const char *auth = NULL, *xkey = NULL, *key;
    int n_auth = 0, n_x = 0;
    size_t len;
    phg_apikey_reason why = PHG_APIKEY_UNKNOWN;
    phg_status st;
    int need_store = 0;
    TAILQ_FOREACH(kv, h, next)
    {
        if (strcasecmp(kv->key, "Authorization") == 0) {
            auth = kv->value;
            n_auth++;
        } else if (strcasecmp(kv->key, "X-API-Key") == 0) {
            xkey = kv->value;
            n_x++;
        }
    }
    if (query_has_key(r->query)) {
        gw_metrics_auth_fail(GW_AF_MALFORMED);
        deny(r, 400, "key_in_query",
             "API keys are never accepted in the query string; send Authorization: Bearer");
        return -1;
    }
    if (n_auth > 1 || n_x > 1 || (auth != NULL && xkey != NULL)) {
        gw_metrics_auth_fail(GW_AF_MALFORMED);
        deny(r, 400, "ambiguous_credentials",
             "give exactly one Authorization or X-API-Key header");
        return -1;
    }
    if (auth != NULL) {
        if (strncasecmp(auth, "Bearer ", 7) != 0) {
            gw_metrics_auth_fail(GW_AF_MALFORMED);
            deny(r, 401, "unauthorized", "the Authorization header must be 'Bearer <key>'");
            return -1;
        }
        key = auth + 7;
        while (*key == ' ')
            key++;
    } else if (xkey != NULL) {
        key = xkey;
    } else {
        gw_metrics_auth_fail(GW_AF_MISSING);
        deny(r, 401, "unauthorized", "an API key is required (Authorization: Bearer <key>)");
        return -1;
    }
    len = strlen(key);
    while (len > 0 && (key[len - 1] == ' ' || key[len - 1] == '\t'))
        len--;
    st = phg_keys_verify_cached(g_srv->keys, key, len, &r->id, &why, &need_store);
    if (need_store && len <= PHG_APIKEY_LEN) {
        /* not in the index: maybe a key made elsewhere in the last poll
         * interval. The store is asked on a worker, never on the loop. */
        memcpy(r->key, key, len);
        r->key[len] = '\0';
        r->key_len = len;
        r->after_worker = auth_resume;
        if (submit_work(r, auth_work) != 0) {
            phg_wipe(r->key, sizeof r->key);
            deny(r, 503, "unavailable", "out of memory");
            return -1;
        }
        return 1;
    }
    return auth_result(r, st, why);
}

static void handle_health(gw_req *r)
{
    if (strcmp(r->path, "/healthz") == 0) {
        static const char ok[] = "{\"status\":\"ok\"}";
        send_json(r, 200, ok, sizeof ok - 1);
        return;
    }
    /* /readyz */
    memset(&r->call, 0, sizeof r->call);
    {
        int bits = atomic_load(&ready_bits), expect = 0;
        if (bits >= 0 && ((int64_t)gw_mono_ms() - atomic_load(&ready_at_ms) < 1000 ||
                          !atomic_compare_exchange_strong(&ready_running, &expect, 1))) {
            /* fresh, or a check is running: the last answer */
            ready_result(r, bits);
            send_value(r, r->call.status, r->call.result);
            return;
        }
        if (bits < 0)
            atomic_store(&ready_running, 1);
    }
    r->after_worker = worker_then_reply;
    if (submit_work(r, ready_work) != 0) {
        atomic_store(&ready_running, 0);
        send_error(r, 503, "unavailable", "out of memory");
    }
}

static void handle_metrics(gw_req *r)
{
    size_t len = 0;
    gw_wh_metrics whm;
    char *text;
    gw_webhooks_metrics(g_srv->wh, &whm);
    text = gw_metrics_render(g_srv->audit, g_srv->wh ? &whm : NULL, &len);
    struct evbuffer *b;
    struct evkeyvalq *h;
    if (text == NULL) {
        send_error(r, 500, "internal", "out of memory");
        return;
    }
    r->status = 200;
    h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    common_headers(r, h);
    b = evbuffer_new();
    if (b)
        evbuffer_add(b, text, len);
    evhttp_request_set_on_complete_cb(r->req, on_complete, r);
    r->replied = 1;
    evhttp_send_reply(r->req, 200, "OK", b);
    if (b)
        evbuffer_free(b);
    free(text);
}

static void after_admin(gw_req *r)
{
    call_record(r);
}

/* A header name is an RFC 9110 token. evhttp keeps whatever precedes the
 * colon ("Host :"), which the stripping in forward() would not recognise:
 * such requests are refused. (Names with '_' are tokens; forward() drops
 * them, as nginx does, because CGI-style upstreams read X_Phigate_Role as
 * X-Phigate-Role.) */
static int is_token(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c) != NULL))
            return 0;
    }
    return 1;
}

/* A new request of loop l; NULL when out of memory. */
static gw_req *req_new(gw_loop *l, struct evhttp_request *req)
{
    gw_req *r = calloc(1, sizeof *r);
    struct evhttp_connection *evcon;
    char *addr = NULL;
    ev_uint16_t port = 0;
    if (r == NULL)
        return NULL;
    atomic_fetch_add(&g_srv->in_flight, 1);
    r->loop = l;
    r->req = req;
    r->t0 = now_s();
    r->cfg = cur_cfg();
    r->method = method_name(evhttp_request_get_command(req));
    if (phg_ulid_new_text(r->request_id) != PHG_OK)
        snprintf(r->request_id, sizeof r->request_id, "00000000000000000000000000");
    r->conn = conn_of(l, req);
    if (r->conn) {
        r->conn->current = r;
        if (r->conn->deadline)
            evtimer_del(r->conn->deadline);
    }
    evcon = evhttp_request_get_connection(req);
    if (evcon)
        evhttp_connection_get_peer(evcon, &addr, &port);
    snprintf(r->ip, sizeof r->ip, "%s", addr ? addr : "");
    r->rc = GW_RC_OTHER;
    return r;
}

static void reply_plain_error(struct evhttp_request *req, int status, const char *code)
{
    struct evbuffer *b = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Connection", "close");
    if (b)
        evbuffer_add_printf(b, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                            code);
    evhttp_send_reply(req, status, NULL, b);
    if (b)
        evbuffer_free(b);
}

/*
 * libevent 2.1 answers some requests itself, before phigate sees them: a
 * malformed request line or header block (400), a body over
 * server.max_body_bytes (413), a method it does not allow (405/501), a
 * failed Expect (417). It does so through evhttp_send_error, with an HTML
 * page, and 2.1 has no hook for it (2.2 adds evhttp_set_errorcb). phigate
 * defines evhttp_send_error itself: the dynamic linker binds libevent's own
 * calls to this definition (Debian's libevent is not linked -Bsymbolic), so
 * these answers are JSON with a request id and audited like every other
 * refusal. tests/e2e checks the 413 and the 400s.
 */
void evhttp_send_error(struct evhttp_request *req, int error, const char *reason)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    int fd = bev ? bufferevent_getfd(bev) : -1;
    gw_conn *c = (g_conns != NULL && fd >= 0 && fd < g_conns_max) ? atomic_load(&g_conns[fd])
                                                                  : NULL;
    const char *code, *msg;
    gw_req *r;
    (void)reason;
    switch (error) {
    case 400:
        code = "bad_request";
        msg = "the request is not valid HTTP/1.1 (request line, headers or their size)";
        break;
    case 413:
        code = "payload_too_large";
        msg = "the body is larger than this server accepts (server.max_body_bytes)";
        break;
    case 405:
        code = "method_not_allowed";
        msg = "this method is not supported";
        break;
    case 417:
        code = "expectation_failed";
        msg = "the Expect header cannot be met";
        break;
    case 501:
        code = "not_implemented";
        msg = "this method is not implemented";
        break;
    default:
        code = "http_error";
        msg = "the request cannot be served";
        break;
    }
    if (g_srv == NULL || c == NULL || c->bev != bev || (r = req_new(c->loop, req)) == NULL) {
        /* not a gateway connection (the demo's upstream), or out of memory */
        reply_plain_error(req, error, code);
        return;
    }
    {
        const char *full = evhttp_request_get_uri(req);
        snprintf(r->path, sizeof r->path, "%.*s", full ? (int)strcspn(full, "?") : 1,
                 full ? full : "-");
    }
    r->close_after = 1; /* the stream may be out of step */
    if (req->major == 0 && req->minor == 0) {
        /* no request line could be read: answer in HTTP/1.1, as libevent's
         * own evhttp_send_page_ does (http_struct.h is libevent 2.1's public
         * description of the request) */
        req->major = 1;
        req->minor = 1;
    }
    deny(r, error, code, msg);
}

static void handle_webhook(gw_req *r);

static void on_request(struct evhttp_request *req, void *arg)
{
    gw_loop *l = arg;
    gw_req *r = req_new(l, req);
    const struct evhttp_uri *uri;
    const char *p, *q, *full;
    struct evkeyval *kv;
    size_t plen;

    if (r == NULL) {
        reply_plain_error(req, 503, "unavailable");
        return;
    }
    full = evhttp_request_get_uri(req);
    uri = evhttp_request_get_evhttp_uri(req);
    p = uri ? evhttp_uri_get_path(uri) : NULL;
    q = uri ? evhttp_uri_get_query(uri) : NULL;
    if (full != NULL)
        snprintf(r->path, sizeof r->path, "%.*s", (int)strcspn(full, "?"), full);
    /* "//x/y" parses as an authority "x" and a path "/y": refused, like any
     * target the router could read differently from the upstream */
    if (full == NULL || p == NULL || full[0] != '/' || full[1] == '/' ||
        evhttp_uri_get_host(uri) != NULL) {
        r->close_after = 1;
        deny(r, 400, "invalid_path", "the request target must be an absolute path");
        return;
    }
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next)
    {
        if (!is_token(kv->key)) {
            r->close_after = 1;
            deny(r, 400, "invalid_header",
                 "a header name is not a token (RFC 9110: no spaces or separators)");
            return;
        }
    }
    plen = strlen(p);
    r->raw_uri = strdup(full);
    r->query = q ? strdup(q) : NULL;
    if (r->raw_uri == NULL || (q && r->query == NULL)) {
        deny(r, 503, "unavailable", "out of memory");
        return;
    }
    if (percent_decode_path(p, plen, r->path, sizeof r->path) != 0 || !path_ok(r->path)) {
        deny(r, 400, "invalid_path",
             "the path is malformed (bad escapes, control characters, '.' or '..' "
             "segments, or empty segments)");
        return;
    }

    if (strcmp(r->path, "/healthz") == 0 || strcmp(r->path, "/readyz") == 0) {
        r->rc = GW_RC_HEALTH;
        handle_health(r);
        return;
    }
    if (strcmp(r->path, "/metrics") == 0) {
        r->rc = GW_RC_METRICS;
        handle_metrics(r);
        return;
    }
    if (strncmp(r->path, "/webhooks/", 10) == 0 || strcmp(r->path, "/webhooks") == 0) {
        /* no API key: a webhook is authenticated by its signature */
        r->rc = GW_RC_WEBHOOK;
        handle_webhook(r);
        return;
    }
    if (strncmp(r->path, "/v1/phi/", 8) == 0 || strcmp(r->path, "/v1/phi") == 0)
        r->rc = GW_RC_PHI;
    else if (strncmp(r->path, "/admin/", 7) == 0 || strcmp(r->path, "/admin") == 0)
        r->rc = GW_RC_ADMIN;
    else
        r->rc = GW_RC_PROXY;

    if (authenticate(r) != 0)
        return;
    after_auth(r);
}

static void rate_limit(gw_req *r);

/* The key is valid: authorize, then answer or forward. */
static void after_auth(gw_req *r)
{
    const gw_route *route;
    if (r->rc == GW_RC_ADMIN && (r->id.role != PHG_ROLE_ADMIN || !r->cfg->admin_enabled)) {
        gw_metrics_auth_fail(GW_AF_FORBIDDEN);
        deny(r, 403, "forbidden",
             r->cfg->admin_enabled ? "the admin API needs a key with role admin"
                                   : "the admin API is disabled");
        return;
    }
    route = gw_route_match(r->cfg, r->method, r->path);
    if (route != NULL) {
        if ((route->require_admin && r->id.role != PHG_ROLE_ADMIN) ||
            (r->id.scopes & route->scopes) != route->scopes) {
            gw_metrics_auth_fail(GW_AF_FORBIDDEN);
            deny(r, 403, "forbidden", "this key may not use this route");
            return;
        }
    }

    r->route = route;
    rate_limit(r);
}

/* Within its limits: answer or forward. */
static void dispatch(gw_req *r)
{
    const gw_route *route = r->route;
    if (r->rc == GW_RC_PHI) {
        call_prepare(r);
        set_context(r);
        gw_phi_ctx pc = g_srv->phi;
        pc.keyring = atomic_load(&g_srv->kr_cur);
        pc.batch_max = r->cfg->phi_batch_max;
        gw_phi_handle(&pc, &r->call);
        phg_request_context_set(NULL);
        call_record(r);
        return;
    }
    if (r->rc == GW_RC_ADMIN) {
        call_prepare(r);
        r->after_worker = after_admin;
        if (submit_work(r, admin_work) != 0)
            send_error(r, 503, "unavailable", "out of memory");
        return;
    }
    /* proxy: the request is durable in the audit log before it is forwarded */
    {
        phg_audit_event ev;
        char resource[PHG_AUDIT_TEXT_MAX + 1], details[128];
        fill_event(r, &ev, resource, sizeof resource);
        ev.action = "http.request";
        ev.outcome = "success";
        ev.subject = r->id.role == PHG_ROLE_USER ? r->id.user_id : "";
        snprintf(details, sizeof details, "{\"route\":\"%s\",\"bytes_in\":%zu}",
                 route ? route->name : "",
                 r->req ? evbuffer_get_length(evhttp_request_get_input_buffer(r->req)) : 0);
        ev.details_json = details;
        audit_then(r, ST_PRE_AUDIT, &ev);
    }
}

/* ---- rate limits -------------------------------------------------------------------------------------------
 *
 * After authentication, before anything is answered or forwarded. A refusal
 * (429) is not audited request by request: a flood would flood the audit
 * log. Refusals are counted per key, and at most one ratelimit.violation
 * record per key per window says how many there were (gw.h). */

#define VIOLATION_KEYS_MAX 65536

typedef struct violation {
    char key_id[PHG_APIKEY_ID_MAX + 1];
    char user_id[PHG_APIKEY_USER_MAX + 1];
    char role[8];
    uint64_t count;          /* refusals since the last record */
    int64_t first_us, last_us;
    int64_t recorded_ms;     /* monotonic time of the last record; 0 none */
    char policy[PHG_RL_TEXT_MAX + 1]; /* of the last refusal */
    uint32_t window_s;       /* the window that refused it */
    struct violation *next;
} violation;

static pthread_mutex_t violations_lock = PTHREAD_MUTEX_INITIALIZER;
static violation *violations[1024];
static size_t n_violations;

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void rfc3339_us(int64_t us, char out[40])
{
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    char date[24];
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 40, "%.19s.%06uZ", date, (unsigned)(us % 1000000));
}

static void violation_record(const violation *v)
{
    phg_audit_event ev;
    char resource[PHG_APIKEY_ID_MAX + 8], details[512], first[40], last[40];
    if (g_srv->audit == NULL)
        return;
    memset(&ev, 0, sizeof ev);
    rfc3339_us(v->first_us, first);
    rfc3339_us(v->last_us, last);
    snprintf(resource, sizeof resource, "key:%s", v->key_id);
    snprintf(details, sizeof details,
             "{\"count\":%llu,\"first\":\"%s\",\"last\":\"%s\",\"limit\":\"%s\",\"window_s\":%u}",
             (unsigned long long)v->count, first, last, v->policy, v->window_s);
    ev.request_id = "";
    ev.key_id = v->key_id;
    ev.user_id = v->user_id;
    ev.role = v->role;
    ev.action = GW_RL_VIOLATION_ACTION;
    ev.resource = resource;
    ev.subject = v->user_id;
    ev.outcome = "denied";
    ev.ip = "";
    ev.details_json = details;
    /* after the fact, like an outcome: nothing waits for it */
    if (phg_audit_append_async(g_srv->audit, &ev, NULL, NULL) != PHG_OK)
        log_msg(PHG_LOG_ERROR, "audit: a rate-limit violation record was refused", NULL);
}

static void violation_note(gw_req *r, const phg_rl_policy *p, const phg_rl_decision *d)
{
    size_t h = 5381, i;
    violation *v;
    int64_t now_ms_ = (int64_t)gw_mono_ms(), us = wall_us();
    for (i = 0; r->id.key_id[i]; i++)
        h = h * 33 + (unsigned char)r->id.key_id[i];
    h %= sizeof violations / sizeof violations[0];
    pthread_mutex_lock(&violations_lock);
    for (v = violations[h]; v != NULL; v = v->next)
        if (strcmp(v->key_id, r->id.key_id) == 0)
            break;
    if (v == NULL && n_violations < VIOLATION_KEYS_MAX && (v = calloc(1, sizeof *v)) != NULL) {
        snprintf(v->key_id, sizeof v->key_id, "%s", r->id.key_id);
        snprintf(v->user_id, sizeof v->user_id, "%s", r->id.user_id);
        snprintf(v->role, sizeof v->role, "%s", phg_role_name(r->id.role));
        v->next = violations[h];
        violations[h] = v;
        n_violations++;
    }
    if (v != NULL) {
        if (v->count == 0)
            v->first_us = us;
        v->count++;
        v->last_us = us;
        phg_rl_policy_format(p, v->policy, sizeof v->policy);
        v->window_s = d->window_s;
        /* one record per key per window: the first refusal of a window
         * writes one at once, the following ones are counted into the next */
        if (v->recorded_ms == 0 || now_ms_ - v->recorded_ms >= (int64_t)d->window_s * 1000) {
            violation_record(v);
            v->recorded_ms = now_ms_;
            v->count = 0;
        }
    }
    pthread_mutex_unlock(&violations_lock);
}

/* At exit: what was counted since the last records. */
static void violations_flush(void)
{
    size_t i;
    pthread_mutex_lock(&violations_lock);
    for (i = 0; i < sizeof violations / sizeof violations[0]; i++) {
        while (violations[i] != NULL) {
            violation *v = violations[i];
            violations[i] = v->next;
            if (v->count > 0)
                violation_record(v);
            free(v);
        }
    }
    n_violations = 0;
    pthread_mutex_unlock(&violations_lock);
}


static void rl_decided(gw_req *r, const phg_rl_decision *d)
{
    r->rl = *d;
    r->rl_set = 1;
    gw_metrics_ratelimit(d->allowed);
    if (d->allowed) {
        dispatch(r);
        return;
    }
    violation_note(r, &r->rl_policy, d);
    {
        char msg[160];
        snprintf(msg, sizeof msg, "rate limit of %u per %u s reached; retry after %u s", d->limit,
                 d->window_s, d->retry_after_s);
        send_error(r, 429, "rate_limited", msg);
    }
}

/* The local engine with every count divided by the instances sharing the
 * Redis: together they stay within the limit while Redis is away. */
static void rl_local_fallback(gw_req *r)
{
    phg_rl_policy p = r->rl_policy;
    phg_rl_decision d;
    size_t i;
    int n = r->cfg->rl_instances > 0 ? r->cfg->rl_instances : 1;
    for (i = 0; i < p.n; i++) {
        p.limits[i].count /= (uint32_t)n;
        if (p.limits[i].count == 0)
            p.limits[i].count = 1;
    }
    if (phg_rl_check(g_srv->rl, r->id.key_id, strlen(r->id.key_id), &p, gw_mono_ms(), &d) !=
        PHG_OK) {
        send_error(r, 503, "ratelimit_unavailable", "the rate limiter cannot decide");
        return;
    }
    rl_decided(r, &d);
}

static void on_rl_redis(void *arg, phg_status st, const phg_rl_decision *d)
{
    gw_req *r = arg;
    r->stage = ST_NONE;
    if (st == PHG_OK && d != NULL) {
        if (atomic_exchange(&g_srv->redis_down, 0))
            log_msg(PHG_LOG_INFO, "rate limits: Redis answers again", NULL);
        rl_decided(r, d);
        return;
    }
    /* logged once per episode, counted every time */
    if (!atomic_exchange(&g_srv->redis_down, 1))
        log_msg(PHG_LOG_WARN, "rate limits: Redis does not answer; falling back",
                json_pack("{s:s,s:i}", "fallback", r->cfg->rl_fallback, "timeout_ms",
                          r->cfg->rl_timeout_ms));
    gw_metrics_rl_fallback();
    if (strcmp(r->cfg->rl_fallback, "open") == 0) {
        dispatch(r);
    } else if (strcmp(r->cfg->rl_fallback, "closed") == 0) {
        send_error(r, 503, "ratelimit_unavailable",
                   "the rate limiter cannot be reached; the request was refused");
    } else {
        rl_local_fallback(r);
    }
}

static void rate_limit(gw_req *r)
{
    phg_rl_decision d;
    gw_rl_policy_for(r->cfg, r->id.role, r->id.rate_limit, &r->rl_policy, NULL);
    if (r->rl_policy.n == 0) {
        dispatch(r);
        return;
    }
    if (r->loop->redis != NULL) {
        r->stage = ST_RL;
        gw_redis_decide(r->loop->redis, "check", r->id.key_id, strlen(r->id.key_id),
                        &r->rl_policy, on_rl_redis, r);
        return;
    }
    if (phg_rl_check(g_srv->rl, r->id.key_id, strlen(r->id.key_id), &r->rl_policy, gw_mono_ms(),
                     &d) != PHG_OK) {
        send_error(r, 503, "ratelimit_unavailable", "the rate limiter cannot decide");
        return;
    }
    rl_decided(r, &d);
}

/* ---- loops ------------------------------------------------------------------------------------------------ */

static void apply_limits(gw_loop *l)
{
    gw_config *cfg = cur_cfg();
    evhttp_set_max_headers_size(l->http, (ev_ssize_t)cfg->max_header_bytes);
    evhttp_set_max_body_size(l->http, (ev_ssize_t)cfg->max_body_bytes);
    evhttp_set_timeout(l->http, cfg->idle_timeout_ms / 1000 > 0 ? cfg->idle_timeout_ms / 1000 : 1);
}

static void *loop_main(void *arg)
{
    gw_loop *l = arg;
    event_base_dispatch(l->base);
    return NULL;
}

static int listen_socket(const char *host, int port, int *bound_port)
{
    struct addrinfo hints, *res = NULL;
    char portstr[16];
    int fd = -1, one = 1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof portstr, "%d", port);
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || res == NULL)
        return -1;
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto out;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        close(fd);
        fd = -1;
        goto out;
    }
    {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                         : ((struct sockaddr_in *)&ss)->sin_port);
    }
out:
    freeaddrinfo(res);
    return fd;
}

static int loop_init(gw_server *s, gw_loop *l, int idx, int fd)
{
    l->srv = s;
    l->idx = idx;
    pthread_mutex_init(&l->mu, NULL);
    l->base = event_base_new();
    if (l->base == NULL)
        return -1;
    l->http = evhttp_new(l->base);
    if (l->http == NULL)
        return -1;
    evhttp_set_gencb(l->http, on_request, l);
    evhttp_set_bevcb(l->http, on_new_bev, l);
    evhttp_set_default_content_type(l->http, "application/json");
    /* read (and drop) the rest of a body over the limit, so that the client
     * sees the 413 instead of a reset; the connection deadline bounds it */
    evhttp_set_flags(l->http, EVHTTP_SERVER_LINGERING_CLOSE);
    evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    apply_limits(l);
    l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->efd < 0)
        return -1;
    l->reap_ev = evtimer_new(l->base, reap_dead, l);
    if (l->reap_ev == NULL)
        return -1;
    {
        gw_config *cfg = cur_cfg();
        if (strcmp(cfg->rl_engine, "redis") == 0) {
            l->redis = gw_redis_new(l->base, cfg->rl_redis_host, cfg->rl_redis_port,
                                    cfg->rl_timeout_ms);
            if (l->redis == NULL)
                return -1;
        }
    }
    l->wake_ev = event_new(l->base, l->efd, EV_READ | EV_PERSIST, on_wake, l);
    if (l->wake_ev == NULL || event_add(l->wake_ev, NULL) != 0)
        return -1;
    l->bound = evhttp_accept_socket_with_handle(l->http, fd);
    return l->bound ? 0 : -1;
}

/* Close the client connections (their close callbacks run now) and free
 * what waits in the completion queue. */
static void loop_close_http(gw_loop *l)
{
    gw_req *r;
    if (l->redis != NULL) {
        gw_redis *rc = l->redis;
        l->redis = NULL;
        gw_redis_free(rc); /* pending decisions are told "unavailable" */
    }
    if (l->http) {
        evhttp_free(l->http);
        l->http = NULL;
    }
    r = l->done_head;
    l->done_head = l->done_tail = NULL;
    while (r != NULL) {
        gw_req *next = r->next;
        if (r->req != NULL && !r->client_gone)
            r->req = NULL; /* freed with its connection */
        req_free(r);
        r = next;
    }
}

static void loop_free(gw_loop *l)
{
    int i;
    for (i = 0; i < l->n_pool; i++)
        evhttp_connection_free(l->pool[i]);
    free(l->pool);
    reap_dead(-1, 0, l);
    free(l->dead);
    if (l->http)
        evhttp_free(l->http);
    if (l->reap_ev)
        event_free(l->reap_ev);
    if (l->wake_ev)
        event_free(l->wake_ev);
    if (l->base)
        event_base_free(l->base);
    if (l->efd > 0)
        close(l->efd);
    pthread_mutex_destroy(&l->mu);
}

/* ---- start, signals, stop ------------------------------------------------------------------------------------ */

static int resolve_upstream(gw_server *s, const gw_config *cfg, char *err, size_t err_len)
{
    struct addrinfo hints, *res = NULL;
    char portstr[16];
    if (cfg->upstream_host[0] == '\0')
        return 0;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(portstr, sizeof portstr, "%d", cfg->upstream_port);
    /* resolved once at start: nothing resolves names on a loop */
    if (getaddrinfo(cfg->upstream_host, portstr, &hints, &res) != 0 || res == NULL) {
        snprintf(err, err_len, "upstream.url: cannot resolve the host name");
        return -1;
    }
    memcpy(&s->up_addr, res->ai_addr, res->ai_addrlen);
    s->up_addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    {
        int v6 = strchr(cfg->upstream_host, ':') != NULL;
        if (cfg->upstream_port == 80)
            snprintf(s->up_hostport, sizeof s->up_hostport, v6 ? "[%s]" : "%s",
                     cfg->upstream_host);
        else
            snprintf(s->up_hostport, sizeof s->up_hostport, v6 ? "[%s]:%d" : "%s:%d",
                     cfg->upstream_host, cfg->upstream_port);
    }
    return 0;
}

static SSL_CTX *tls_context(const gw_config *cfg, char *err, size_t err_len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, err_len, "server.tls_cert: OpenSSL cannot make a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        snprintf(err, err_len, "server.tls_cert: cannot load the certificate chain");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, err_len, "server.tls_key: cannot load the key, or it does not match the "
                               "certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    ERR_clear_error();
    return ctx;
}

static int load_keyring(gw_server *s, char *err, size_t err_len)
{
    char *json = NULL;
    size_t len = 0;
    phg_status st = phg_store_keyring_get(s->store, &json, &len);
    phg_keyring_options ko;
    const char *why = NULL;
    phg_keyring_options_init(&ko);
    if (st == PHG_ERR_NOT_FOUND) {
        char *out = NULL;
        size_t out_len = 0;
        st = phg_keyring_create(s->mk, &ko, &s->keyring);
        if (st == PHG_OK)
            st = phg_keyring_to_json(s->keyring, &out, &out_len);
        if (st == PHG_OK)
            st = phg_store_keyring_put(s->store, out, out_len);
        free(out);
        if (st != PHG_OK) {
            snprintf(err, err_len, "phi keyring: cannot create it in the store: %s",
                     phg_strerror(st));
            return -1;
        }
        log_msg(PHG_LOG_INFO, "phi keyring created in the store", NULL);
        return 0;
    }
    if (st != PHG_OK) {
        snprintf(err, err_len, "phi keyring: cannot read it from the store: %s", phg_strerror(st));
        return -1;
    }
    st = phg_keyring_from_json(json, len, s->mk, &ko, &s->keyring, &why);
    free(json);
    if (st != PHG_OK) {
        snprintf(err, err_len, "phi keyring: %s%s%s", phg_strerror(st), why ? ": " : "",
                 why ? why : "");
        return -1;
    }
    return 0;
}

/* Re-read the PHI keyring from the store (another instance or the CLI may
 * have rotated it). Requests in flight keep the one they started with; the
 * replaced one is freed at exit. */
static void reload_keyring(gw_server *s)
{
    char *json = NULL;
    size_t len = 0;
    phg_keyring *kr = NULL;
    phg_keyring_options ko;
    const char *why = NULL;
    kr_node *node;
    phg_status st = phg_store_keyring_get(s->store, &json, &len);
    phg_keyring_options_init(&ko);
    if (st == PHG_OK)
        st = phg_keyring_from_json(json, len, s->mk, &ko, &kr, &why);
    free(json);
    node = st == PHG_OK ? malloc(sizeof *node) : NULL;
    if (node == NULL) {
        log_msg(PHG_LOG_ERROR, "reload: the PHI keyring could not be re-read; keeping the old one",
                json_pack("{s:s}", "error", st == PHG_OK ? "out of memory" : phg_strerror(st)));
        phg_keyring_free(kr);
        return;
    }
    phg_keyring_set_audit(kr, s->audit);
    /* new webhook bodies under the new primary; old ones still open */
    phg_wh_inbox_set_keyring(gw_webhooks_inbox(s->wh), kr);
    node->kr = atomic_exchange(&s->kr_cur, kr);
    node->next = s->old_krs;
    s->old_krs = node;
}

static void reload(gw_server *s)
{
    gw_config *n = calloc(1, sizeof *n), *old = cur_cfg();
    char err[512];
    int i;
    phg_status st = phg_keys_refresh(s->keys);
    if (st != PHG_OK)
        log_msg(PHG_LOG_WARN, "reload: the keys could not be refreshed",
                json_pack("{s:s}", "error", phg_strerror(st)));
    reload_keyring(s);
    if (n == NULL)
        return;
    if (gw_config_load(n, &s->flags, err, sizeof err) != 0) {
        log_msg(PHG_LOG_ERROR, "reload: the configuration is not valid; keeping the old one",
                json_pack("{s:s}", "error", err));
        free(n);
        return;
    }
    if (strcmp(n->listen_host, old->listen_host) != 0 || n->listen_port != old->listen_port ||
        strcmp(n->upstream_url, old->upstream_url) != 0 || strcmp(n->store_url, old->store_url) ||
        n->threads != old->threads || strcmp(n->tls_cert, old->tls_cert) ||
        strcmp(n->audit_chain, old->audit_chain)) {
        log_msg(PHG_LOG_WARN,
                "reload: listen, upstream, store, threads, tls and audit chain take effect only "
                "after a restart; they keep their old values",
                NULL);
        snprintf(n->listen_host, sizeof n->listen_host, "%s", old->listen_host);
        n->listen_port = old->listen_port;
        memcpy(n->upstream_url, old->upstream_url, sizeof n->upstream_url);
        memcpy(n->upstream_host, old->upstream_host, sizeof n->upstream_host);
        n->upstream_port = old->upstream_port;
        memcpy(n->upstream_base, old->upstream_base, sizeof n->upstream_base);
        memcpy(n->store_url, old->store_url, sizeof n->store_url);
        memcpy(n->store_display, old->store_display, sizeof n->store_display);
        n->threads = old->threads;
        memcpy(n->tls_cert, old->tls_cert, sizeof n->tls_cert);
        memcpy(n->tls_key, old->tls_key, sizeof n->tls_key);
        memcpy(n->audit_chain, old->audit_chain, sizeof n->audit_chain);
    }
    {
        cfg_node *node = malloc(sizeof *node);
        if (node == NULL) {
            free(n);
            return;
        }
        /* requests in flight may still read the old one: kept until exit */
        node->cfg = old;
        node->next = s->old_cfgs;
        s->old_cfgs = node;
    }
    atomic_store_explicit(&s->cfg, n, memory_order_release);
    for (i = 0; i < s->n_loops; i++) {
        atomic_store(&s->loops[i].cmd_reload, 1);
        wake_loop(&s->loops[i]);
    }
    if (s->wh != NULL)
        gw_webhooks_reload(s->wh, n);
    log_msg(PHG_LOG_INFO, "reloaded: keys, routes and limits",
            json_pack("{s:i}", "routes", (int)n->n_routes));
}

static phg_log_level level_of(const char *s)
{
    if (strcmp(s, "debug") == 0)
        return PHG_LOG_DEBUG;
    if (strcmp(s, "warn") == 0)
        return PHG_LOG_WARN;
    if (strcmp(s, "error") == 0)
        return PHG_LOG_ERROR;
    return PHG_LOG_INFO;
}

int gw_serve(const gw_flags *flags, const gw_hooks *hooks)
{
    gw_server *s = calloc(1, sizeof *s);
    gw_config *cfg = calloc(1, sizeof *cfg);
    char err[512] = "";
    int rc = 1, i, port = 0, from = 0, to = 0, started_loops = 0, n_workers = 0;
    int *fds = NULL;
    sigset_t sigs;
    phg_status st;
    phg_audit_options ao;
    struct rlimit rl;

    if (s == NULL || cfg == NULL) {
        fprintf(stderr, "phigate serve: out of memory\n");
        free(s);
        free(cfg);
        return 1;
    }
    g_srv = s;
    s->flags = *flags;
    pthread_mutex_init(&s->wmu, NULL);
    pthread_cond_init(&s->wcv, NULL);
    if (gw_config_load(cfg, flags, err, sizeof err) != 0) {
        fprintf(stderr, "phigate serve: %s\n", err);
        free(cfg);
        goto out;
    }
    atomic_store(&s->cfg, cfg);
    phg_log_set_level(level_of(cfg->log_level));
    gw_metrics_init();

    /* signals are taken by the main thread only */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    g_conns_max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (1u << 20)
                      ? (int)rl.rlim_cur
                      : (1 << 20);
    g_conns = calloc((size_t)g_conns_max, sizeof *g_conns);
    if (g_conns == NULL) {
        fprintf(stderr, "phigate serve: out of memory\n");
        goto out;
    }

    st = phg_phi_masterkeys_from_env(&s->mk);
    if (st != PHG_OK) {
        fprintf(stderr, "phigate serve: master key: %s (set PHI_MASTER_KEY or "
                        "PHI_MASTER_KEY_FILE)\n",
                phg_strerror(st));
        goto out;
    }
    st = phg_store_open(cfg->store_url, NULL, &s->store, err, sizeof err);
    if (st != PHG_OK) {
        fprintf(stderr, "phigate serve: store %s: %s\n", cfg->store_display,
                err[0] ? err : phg_strerror(st));
        goto out;
    }
    st = phg_store_migrate(s->store, &from, &to, err, sizeof err);
    if (st != PHG_OK) {
        fprintf(stderr, "phigate serve: store %s: migration failed: %s\n", cfg->store_display,
                err[0] ? err : phg_strerror(st));
        goto out;
    }
    if (load_keyring(s, err, sizeof err) != 0) {
        fprintf(stderr, "phigate serve: %s\n", err);
        goto out;
    }
    st = phg_audit_checkpoint_key(s->mk, s->ckey);
    phg_audit_options_init(&ao);
    ao.chain = cfg->audit_chain;
    if (st == PHG_OK)
        st = phg_audit_open(s->store, &ao, s->ckey, &s->audit);
    if (st != PHG_OK) {
        fprintf(stderr, "phigate serve: audit log: %s\n", phg_strerror(st));
        goto out;
    }
    st = phg_rl_new(NULL, &s->rl);
    if (st != PHG_OK) {
        fprintf(stderr, "phigate serve: rate limits: %s\n", phg_strerror(st));
        goto out;
    }
    s->admin.rl = s->rl;
    st = phg_keys_open(s->store, NULL, &s->keys);
    if (st != PHG_OK) {
        fprintf(stderr, "phigate serve: keys: %s\n", phg_strerror(st));
        goto out;
    }
    phg_keys_set_audit(s->keys, s->audit);
    phg_keyring_set_audit(s->keyring, s->audit);
    atomic_store(&s->kr_cur, s->keyring);
    s->phi.keyring = s->keyring;
    s->phi.batch_max = cfg->phi_batch_max;
    s->admin.store = s->store;
    s->admin.keys = s->keys;
    s->admin.audit = s->audit;
    s->admin.keyring = s->keyring;
    s->admin.mk = s->mk;
    s->admin.checkpoint_key = s->ckey;
    s->admin.config_json = config_json_cb;
    if (cfg->wh_enabled &&
        gw_webhooks_start(cfg, s->store, s->mk, s->keyring, s->audit, &s->wh, err, sizeof err) !=
            0) {
        fprintf(stderr, "phigate serve: webhooks: %s\n", err);
        goto out;
    }
    s->admin.webhooks = s->wh;
    if (resolve_upstream(s, cfg, err, sizeof err) != 0) {
        fprintf(stderr, "phigate serve: %s\n", err);
        goto out;
    }
    if (cfg->tls_cert[0] != '\0') {
        s->ssl = tls_context(cfg, err, sizeof err);
        if (s->ssl == NULL) {
            fprintf(stderr, "phigate serve: %s\n", err);
            goto out;
        }
    }

    s->n_loops = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (s->n_loops < 1)
        s->n_loops = 1;
    s->loops = calloc((size_t)s->n_loops, sizeof *s->loops);
    fds = calloc((size_t)s->n_loops, sizeof *fds);
    if (s->loops == NULL || fds == NULL) {
        fprintf(stderr, "phigate serve: out of memory\n");
        goto out;
    }
    for (i = 0; i < s->n_loops; i++) {
        /* port 0: the first socket picks the port, the others join it */
        fds[i] = listen_socket(cfg->listen_host, i == 0 ? cfg->listen_port : port, &port);
        if (fds[i] < 0) {
            fprintf(stderr, "phigate serve: server.listen: cannot listen on %s:%d: %s\n",
                    cfg->listen_host, i == 0 ? cfg->listen_port : port, strerror(errno));
            goto out;
        }
        if (loop_init(s, &s->loops[i], i, fds[i]) != 0) {
            fprintf(stderr, "phigate serve: cannot start event loop %d\n", i);
            goto out;
        }
        fds[i] = -1; /* owned by evhttp now */
    }
    for (i = 0; i < WORKERS; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0)
            break;
        n_workers++;
    }
    for (i = 0; i < s->n_loops; i++) {
        if (pthread_create(&s->loops[i].thread, NULL, loop_main, &s->loops[i]) != 0) {
            fprintf(stderr, "phigate serve: cannot start a thread\n");
            goto stop;
        }
        started_loops++;
    }
    log_msg(PHG_LOG_INFO, "listening",
            json_pack("{s:s,s:i,s:b,s:i,s:s,s:s,s:s,s:i}", "host", cfg->listen_host, "port", port,
                      "tls", s->ssl != NULL, "threads", s->n_loops, "upstream",
                      cfg->upstream_url, "store", cfg->store_display, "audit_chain",
                      cfg->audit_chain, "schema_version", to));
    if (hooks && hooks->on_ready)
        hooks->on_ready(hooks->arg, cfg->listen_host, port, s->ssl != NULL);
    sd_notify(0, "READY=1");

    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            sd_notify(0, "RELOADING=1");
            reload(s);
            sd_notify(0, "READY=1");
            continue;
        }
        break;
    }
    rc = 0;

stop:
    /* drain: stop accepting, let what is in flight finish, then stop */
    sd_notify(0, "STOPPING=1");
    atomic_store(&s->draining, 1);
    for (i = 0; i < started_loops; i++) {
        atomic_store(&s->loops[i].cmd_stop_accept, 1);
        wake_loop(&s->loops[i]);
    }
    {
        double deadline = now_s() + cur_cfg()->drain_timeout_ms / 1000.0;
        int left;
        while ((left = atomic_load(&s->in_flight)) > 0 && now_s() < deadline) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        left = atomic_load(&s->in_flight);
        log_msg(left ? PHG_LOG_WARN : PHG_LOG_INFO, "drained",
                json_pack("{s:i}", "abandoned_requests", left));
    }
    for (i = 0; i < started_loops; i++) {
        atomic_store(&s->loops[i].cmd_stop, 1);
        wake_loop(&s->loops[i]);
        pthread_join(s->loops[i].thread, NULL);
    }
out:
    /* Teardown order: the loops have stopped (or never ran); workers stop
     * without taking new tasks; the audit writer commits what it holds and
     * its last callbacks land in the loops' queues, which still exist; then
     * the client connections close and the loops are freed. */
    if (n_workers > 0) {
        pthread_mutex_lock(&s->wmu);
        s->wstop = 1;
        pthread_cond_broadcast(&s->wcv);
        pthread_mutex_unlock(&s->wmu);
        for (i = 0; i < n_workers; i++)
            pthread_join(s->workers[i], NULL);
    }
    if (s->loops) {
        for (i = 0; i < s->n_loops; i++)
            loop_close_http(&s->loops[i]); /* outcome records of cut streams go out */
    }
    violations_flush();
    /* the inbox writes what it holds; its last answers land in the loops'
     * queues, freed below; delivery attempts in progress finish first */
    gw_webhooks_stop(s->wh);
    s->wh = NULL;
    phg_keys_close(s->keys);
    s->keys = NULL;
    phg_audit_close(s->audit); /* commits what is pending: nothing accepted is lost */
    s->audit = NULL;
    if (s->loops) {
        for (i = 0; i < s->n_loops; i++) {
            loop_close_http(&s->loops[i]); /* the audit writer's last answers */
            loop_free(&s->loops[i]);
        }
        free(s->loops);
    }
    if (fds) {
        for (i = 0; i < s->n_loops; i++)
            if (fds[i] > 0)
                close(fds[i]);
        free(fds);
    }
    /* the current keyring, and every one it replaced (the first of which is
     * s->keyring once a reload happened) */
    phg_keyring_free(atomic_load(&s->kr_cur) ? atomic_load(&s->kr_cur) : s->keyring);
    while (s->old_krs) {
        kr_node *n = s->old_krs;
        s->old_krs = n->next;
        phg_keyring_free(n->kr);
        free(n);
    }
    phg_rl_free(s->rl);
    phg_store_close(s->store);
    phg_phi_masterkeys_free(s->mk);
    phg_wipe(s->ckey, sizeof s->ckey);
    if (s->ssl)
        SSL_CTX_free(s->ssl);
    while (s->old_cfgs) {
        cfg_node *n = s->old_cfgs;
        s->old_cfgs = n->next;
        free(n->cfg);
        free(n);
    }
    free(atomic_load(&s->cfg));
    free(g_conns);
    g_conns = NULL;
    pthread_mutex_destroy(&s->wmu);
    pthread_cond_destroy(&s->wcv);
    free(s);
    g_srv = NULL;
    if (rc == 0)
        log_msg(PHG_LOG_INFO, "stopped", NULL);
    return rc;
}
