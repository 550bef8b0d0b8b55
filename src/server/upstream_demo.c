/*
 * upstream_demo.c: the sample biometric API behind `phigate demo`. It stands
 * in for the service phigate protects, so that the demo shows what the
 * gateway adds (identity headers, request ids) without anything else to run.
 *
 * It is deliberately naive: it trusts X-Phigate-User-Id, as a real upstream
 * behind phigate may (phigate strips client-sent X-Phigate-* headers), and it
 * keeps everything in memory. It listens on 127.0.0.1 only, in its own
 * thread with its own event_base (libevent evhttp), and is stopped from
 * another thread through an event made active (libevent's pthread support).
 *
 *   POST /v1/readings  a JSON object or an array of objects (body at most
 *                      1 MiB), stored for the user of X-Phigate-User-Id:
 *                      201 {"stored":n}. At most 10,000 readings per user and
 *                      1,000 users: beyond, 507 storage_full.
 *   GET  /v1/readings  200 {"user_id":"...","readings":[...]}
 *   GET  /v1/whoami    200 {"method":"GET","path":"/v1/whoami",
 *                      "headers":{"x-phigate-user-id":"...",...}}: every
 *                      X-Phigate-* header and X-Request-Id received, names in
 *                      lower case, repeated headers joined by ", "
 *   anything else      404 not_found (405 method_not_allowed for a known path)
 * Errors are {"error":{"code":"...","message":"..."}}; a missing user header
 * is 400 missing_user. Every answer is application/json, except a body over
 * 1 MiB, which evhttp itself refuses with its own 413.
 */
#include <sys/queue.h> /* before event2: TAILQ_FOREACH over evkeyvalq */

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>

#include "gw.h"

#define DEMO_BODY_MAX (1u << 20)
#define DEMO_HEADERS_MAX (16u << 10)
#define DEMO_READINGS_MAX 10000
#define DEMO_USERS_MAX 1000
#define DEMO_USER_ID_MAX 256
#define DEMO_TIMEOUT_S 30

typedef struct demo_user {
    char *user_id;
    json_t *readings; /* array of objects */
} demo_user;

struct gw_demo_upstream {
    struct event_base *base;
    struct evhttp *http;
    struct event *stop_ev;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock; /* guards users */
    demo_user users[DEMO_USERS_MAX];
    size_t n_users;
};

static pthread_once_t threads_once = PTHREAD_ONCE_INIT;
static int threads_rc = -1;

static void use_pthreads(void)
{
    threads_rc = evthread_use_pthreads();
}

/* ---- replies ------------------------------------------------------------------------- */

static void reply_json(struct evhttp_request *req, int status, json_t *body)
{
    struct evbuffer *buf = evbuffer_new();
    /* 15 significant digits: 48.2 stays 48.2 in the demo */
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);

    evhttp_remove_header(out, "Content-Type");
    evhttp_add_header(out, "Content-Type", "application/json");
    if (buf == NULL || text == NULL) {
        if (buf != NULL)
            evbuffer_add_printf(
                buf, "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
        evhttp_send_reply(req, 500, "Internal Server Error", buf);
    } else {
        evbuffer_add(buf, text, strlen(text));
        evhttp_send_reply(req, status, NULL, buf);
    }
    free(text);
    if (buf != NULL)
        evbuffer_free(buf);
    json_decref(body);
}

static void reply_error(struct evhttp_request *req, int status, const char *code, const char *msg)
{
    reply_json(req, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
}

/* ---- store --------------------------------------------------------------------------- */

/* The user's entry; created when create is set and there is room. NULL: none
 * (or no room, *full set). Called with u->lock held. */
static demo_user *find_user(gw_demo_upstream *u, const char *user_id, int create, int *full)
{
    size_t i;
    demo_user *d;
    for (i = 0; i < u->n_users; i++) {
        if (strcmp(u->users[i].user_id, user_id) == 0)
            return &u->users[i];
    }
    if (!create)
        return NULL;
    if (u->n_users >= DEMO_USERS_MAX) {
        *full = 1;
        return NULL;
    }
    d = &u->users[u->n_users];
    d->user_id = strdup(user_id);
    d->readings = json_array();
    if (d->user_id == NULL || d->readings == NULL) {
        free(d->user_id);
        json_decref(d->readings);
        d->user_id = NULL;
        d->readings = NULL;
        return NULL;
    }
    u->n_users++;
    return d;
}

/* The user id header, checked: NULL after replying 400. */
static const char *user_or_respond(struct evhttp_request *req)
{
    const char *user =
        evhttp_find_header(evhttp_request_get_input_headers(req), "X-Phigate-User-Id");
    json_t *probe;
    if (user == NULL || user[0] == '\0') {
        reply_error(req, 400, "missing_user", "the X-Phigate-User-Id header is required");
        return NULL;
    }
    probe = json_string(user); /* NULL if not UTF-8 */
    if (strlen(user) > DEMO_USER_ID_MAX || probe == NULL) {
        json_decref(probe);
        reply_error(req, 400, "invalid_user",
                    "X-Phigate-User-Id must be at most 256 bytes of UTF-8");
        return NULL;
    }
    json_decref(probe);
    return user;
}

static void post_readings(gw_demo_upstream *u, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in), n, i;
    const char *user = user_or_respond(req);
    json_error_t jerr;
    json_t *body, *v;
    demo_user *d;
    int full = 0;

    if (user == NULL)
        return;
    if (len == 0 || len > DEMO_BODY_MAX) {
        reply_error(req, len == 0 ? 400 : 413, len == 0 ? "invalid_json" : "too_large",
                    len == 0 ? "the body is empty" : "the body exceeds 1 MiB");
        return;
    }
    body = json_loadb((const char *)evbuffer_pullup(in, -1), len,
                      JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (body == NULL) {
        reply_error(req, 400, "invalid_json", "the body is not valid JSON");
        return;
    }
    if (json_is_object(body)) {
        json_t *arr = json_array();
        if (arr == NULL || json_array_append_new(arr, body) != 0) {
            json_decref(arr);
            reply_error(req, 500, "internal", "out of memory");
            return;
        }
        body = arr;
    }
    if (!json_is_array(body)) {
        json_decref(body);
        reply_error(req, 400, "invalid_reading",
                    "the body must be a reading (a JSON object) or an array of them");
        return;
    }
    n = json_array_size(body);
    json_array_foreach(body, i, v)
    {
        if (!json_is_object(v)) {
            json_decref(body);
            reply_error(req, 400, "invalid_reading", "every reading must be a JSON object");
            return;
        }
    }
    pthread_mutex_lock(&u->lock);
    d = find_user(u, user, 1, &full);
    if (d == NULL) {
        pthread_mutex_unlock(&u->lock);
        json_decref(body);
        if (full)
            reply_error(req, 507, "storage_full", "this demo keeps at most 1000 users");
        else
            reply_error(req, 500, "internal", "out of memory");
        return;
    }
    if (json_array_size(d->readings) + n > DEMO_READINGS_MAX) {
        pthread_mutex_unlock(&u->lock);
        json_decref(body);
        reply_error(req, 507, "storage_full", "this demo keeps at most 10000 readings per user");
        return;
    }
    if (json_array_extend(d->readings, body) != 0) {
        pthread_mutex_unlock(&u->lock);
        json_decref(body);
        reply_error(req, 500, "internal", "out of memory");
        return;
    }
    pthread_mutex_unlock(&u->lock);
    json_decref(body);
    reply_json(req, 201, json_pack("{s:I}", "stored", (json_int_t)n));
}

static void get_readings(gw_demo_upstream *u, struct evhttp_request *req)
{
    const char *user = user_or_respond(req);
    json_t *readings;
    demo_user *d;
    if (user == NULL)
        return;
    pthread_mutex_lock(&u->lock);
    d = find_user(u, user, 0, NULL);
    /* A deep copy: the reply is built outside the lock. */
    readings = d != NULL ? json_deep_copy(d->readings) : json_array();
    pthread_mutex_unlock(&u->lock);
    if (readings == NULL) {
        reply_error(req, 500, "internal", "out of memory");
        return;
    }
    reply_json(req, 200, json_pack("{s:s,s:o}", "user_id", user, "readings", readings));
}

static int is_echoed(const char *name)
{
    return strncasecmp(name, "X-Phigate-", 10) == 0 || strcasecmp(name, "X-Request-Id") == 0;
}

static void whoami(struct evhttp_request *req, const char *method, const char *path)
{
    struct evkeyvalq *hdrs = evhttp_request_get_input_headers(req);
    struct evkeyval *h;
    json_t *obj = json_object();
    if (obj == NULL) {
        reply_error(req, 500, "internal", "out of memory");
        return;
    }
    TAILQ_FOREACH(h, hdrs, next)
    {
        char name[128];
        size_t i, nl = strlen(h->key);
        json_t *prev, *val;
        if (!is_echoed(h->key) || nl >= sizeof name)
            continue;
        for (i = 0; i <= nl; i++)
            name[i] = (char)tolower((unsigned char)h->key[i]);
        prev = json_object_get(obj, name);
        if (prev != NULL) {
            size_t pl = json_string_length(prev), vl = strlen(h->value);
            char *joined = malloc(pl + 2 + vl + 1);
            if (joined == NULL)
                continue;
            memcpy(joined, json_string_value(prev), pl);
            memcpy(joined + pl, ", ", 2);
            memcpy(joined + pl + 2, h->value, vl + 1);
            val = json_string(joined);
            free(joined);
        } else {
            val = json_string(h->value);
        }
        if (val != NULL) /* a value that is not UTF-8 is left out */
            json_object_set_new(obj, name, val);
    }
    reply_json(req, 200,
               json_pack("{s:s,s:s,s:o}", "method", method, "path", path, "headers", obj));
}

static void on_request(struct evhttp_request *req, void *arg)
{
    gw_demo_upstream *u = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    if (path == NULL || path[0] == '\0')
        path = "/";
    if (strcmp(path, "/v1/readings") == 0) {
        if (cmd == EVHTTP_REQ_POST)
            post_readings(u, req);
        else if (cmd == EVHTTP_REQ_GET)
            get_readings(u, req);
        else
            reply_error(req, 405, "method_not_allowed", "use GET or POST");
        return;
    }
    if (strcmp(path, "/v1/whoami") == 0) {
        if (cmd == EVHTTP_REQ_GET)
            whoami(req, "GET", path);
        else
            reply_error(req, 405, "method_not_allowed", "use GET");
        return;
    }
    reply_error(req, 404, "not_found", "no such resource");
}

/* ---- thread ------------------------------------------------------------------------- */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    gw_demo_upstream *u = arg;
    (void)fd;
    (void)what;
    event_base_loopbreak(u->base);
}

static void *run(void *arg)
{
    gw_demo_upstream *u = arg;
    event_base_dispatch(u->base);
    return NULL;
}

static void demo_free(gw_demo_upstream *u)
{
    size_t i;
    if (u->http != NULL)
        evhttp_free(u->http);
    if (u->stop_ev != NULL)
        event_free(u->stop_ev);
    if (u->base != NULL)
        event_base_free(u->base);
    for (i = 0; i < u->n_users; i++) {
        free(u->users[i].user_id);
        json_decref(u->users[i].readings);
    }
    pthread_mutex_destroy(&u->lock);
    free(u);
}

int gw_demo_upstream_start(int port, int *port_out, gw_demo_upstream **out)
{
    gw_demo_upstream *u;
    struct evhttp_bound_socket *sock;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;

    assert(out != NULL);
    *out = NULL;
    if (port < 0 || port > 65535)
        return -1;
    pthread_once(&threads_once, use_pthreads);
    if (threads_rc != 0)
        return -1;
    u = calloc(1, sizeof *u);
    if (u == NULL)
        return -1;
    pthread_mutex_init(&u->lock, NULL);
    u->base = event_base_new();
    if (u->base == NULL)
        goto fail;
    u->http = evhttp_new(u->base);
    u->stop_ev = event_new(u->base, -1, 0, on_stop, u);
    if (u->http == NULL || u->stop_ev == NULL)
        goto fail;
    evhttp_set_max_body_size(u->http, DEMO_BODY_MAX);
    evhttp_set_max_headers_size(u->http, DEMO_HEADERS_MAX);
    evhttp_set_timeout(u->http, DEMO_TIMEOUT_S);
    evhttp_set_default_content_type(u->http, "application/json");
    /* Read (and drop) an oversized body before answering 413, so that the
     * client sees the answer rather than a reset. */
    evhttp_set_flags(u->http, EVHTTP_SERVER_LINGERING_CLOSE);
    evhttp_set_gencb(u->http, on_request, u);
    sock = evhttp_bind_socket_with_handle(u->http, "127.0.0.1", (ev_uint16_t)port);
    if (sock == NULL)
        goto fail;
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &sl) != 0 ||
        ss.ss_family != AF_INET)
        goto fail;
    if (port_out != NULL)
        *port_out = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (pthread_create(&u->thread, NULL, run, u) != 0)
        goto fail;
    u->thread_started = 1;
    *out = u;
    return 0;
fail:
    demo_free(u);
    return -1;
}

void gw_demo_upstream_stop(gw_demo_upstream *u)
{
    if (u == NULL)
        return;
    if (u->thread_started) {
        /* Made active before the loop runs, it is still seen by its first
         * pass (a loopbreak from here could be lost). */
        event_active(u->stop_ev, EV_READ, 0);
        pthread_join(u->thread, NULL);
    }
    demo_free(u);
}
