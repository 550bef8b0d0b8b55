/*
 * redis_rl.c: rate-limit decisions on Redis (gw.h, "rate limits on Redis"):
 * an asynchronous hiredis client per event loop, a blocking one for worker
 * threads and the CLI, and the redis:// URL parser. The script itself, its
 * key and its reply are src/ratelimit_redis.c; the protocol is in
 * docs/formats.md 16.4.
 *
 * The asynchronous client never blocks its loop: connections are hiredis
 * non-blocking contexts attached to the loop (hiredis/adapters/libevent.h).
 * Every decision has a timer of timeout_ms and its callback is called
 * exactly once: with the answer, or with PHG_ERR_UNAVAILABLE when the timer
 * fires first. The request record then stays alive, marked done, until
 * hiredis hands its reply (or NULL when the context goes away) back to us,
 * because hiredis holds the pointer; only then is it freed. A callback is
 * never called from inside gw_redis_decide itself: immediate failures go
 * through the request's timer armed with a zero delay.
 *
 * Connections are made lazily, on the first request that needs one, and at
 * most once every RECONNECT_MS per node; a request that finds its node in
 * that pause fails at once (the caller has a fallback) instead of waiting.
 * A connection that has requests outstanding and read nothing for
 * max(STALL_MIN_MS, 4 * timeout_ms) (a stopped or unreachable server: TCP
 * does not tell) is dropped, so a later request makes a fresh one.
 *
 * Redis Cluster: nothing is asked up front. A node answers MOVED or ASK for
 * a key it does not serve; the client then connects to the node named (a
 * small table of nodes), remembers slot -> node for MOVED (16384 entries),
 * and retries, at most REDIRECTS_MAX times per request. ASK sends ASKING
 * first and is not remembered. A node that goes down loses its slots in the
 * map, so their keys go to the first node again, which redirects them to
 * whoever serves them now. The key of a decision has a hash tag (the API key
 * id), so one script call touches one slot.
 *
 * NOSCRIPT (a restarted server, SCRIPT FLUSH, a new cluster node): the
 * request is sent again once with EVAL, which also caches the script there.
 *
 * Logs: one line when a node becomes unreachable and one when it answers
 * again (not one per request; the caller logs its fallback episodes), with the node's host and port
 * only; never a key id. WARNING: do not call gw_redis_free from inside a gw_redis_cb.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>

#include "gw.h"
#include "phigate/audit.h"

#define NODES_MAX 32
#define SLOTS 16384
#define NO_NODE 0xff
#define RECONNECT_MS 100
#define REDIRECTS_MAX 3
#define INFLIGHT_MAX                                                                               \
    100000 /* per connection: a stalled server must not grow a buffer without end */
#define STALL_MIN_MS 1000
#define HOST_MAX 256
#define URL_MAX 1024
#define DEFAULT_PORT 6379

_Static_assert(NODES_MAX < NO_NODE, "node indexes fit the slot map");

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the command ------------------------------------------------------------------------ */

/* EVALSHA|EVAL sha|script 1 key mode n count_1 window_ms_1 ... */
#define CMD_ARGS_MAX (6 + 2 * PHG_RL_WINDOWS_MAX)

typedef struct rl_cmd {
    const char *argv[CMD_ARGS_MAX];
    size_t lens[CMD_ARGS_MAX];
    int argc;
    char key[sizeof("phigate:rl:{}") + PHG_RL_KEY_MAX];
    char mode[8];
    char nums[1 + 2 * PHG_RL_WINDOWS_MAX][24];
} rl_cmd;

static void cmd_arg(rl_cmd *c, const char *s)
{
    assert(c->argc < CMD_ARGS_MAX);
    c->argv[c->argc] = s;
    c->lens[c->argc] = strlen(s);
    c->argc++;
}

static phg_status cmd_build(rl_cmd *c, const char *mode, const char *key, size_t key_len,
                            const phg_rl_policy *policy)
{
    phg_status rc;
    size_t i;

    memset(c, 0, sizeof(*c));
    if (strcmp(mode, "check") != 0 && strcmp(mode, "peek") != 0 && strcmp(mode, "reset") != 0)
        return PHG_ERR_INVALID;
    if (!phg_rl_policy_valid(policy))
        return PHG_ERR_INVALID;
    rc = phg_rl_redis_key(key, key_len, c->key, sizeof(c->key));
    if (rc != PHG_OK)
        return rc;
    snprintf(c->mode, sizeof(c->mode), "%s", mode);
    c->argc = 2; /* the script, set by cmd_script */
    cmd_arg(c, "1");
    cmd_arg(c, c->key);
    cmd_arg(c, c->mode);
    snprintf(c->nums[0], sizeof(c->nums[0]), "%zu", policy->n);
    cmd_arg(c, c->nums[0]);
    for (i = 0; i < policy->n; i++) {
        snprintf(c->nums[1 + 2 * i], sizeof(c->nums[0]), "%u", policy->limits[i].count);
        snprintf(c->nums[2 + 2 * i], sizeof(c->nums[0]), "%llu",
                 (unsigned long long)policy->limits[i].window_s * 1000u);
        cmd_arg(c, c->nums[1 + 2 * i]);
        cmd_arg(c, c->nums[2 + 2 * i]);
    }
    return PHG_OK;
}

static void cmd_script(rl_cmd *c, int use_eval)
{
    c->argv[0] = use_eval ? "EVAL" : "EVALSHA";
    c->argv[1] = use_eval ? phg_rl_redis_script() : phg_rl_redis_script_sha();
    c->lens[0] = strlen(c->argv[0]);
    c->lens[1] = strlen(c->argv[1]);
}

/* The decision in a script reply; PHG_ERR_UNAVAILABLE for anything else. */
static phg_status reply_decision(const redisReply *reply, phg_rl_decision *d)
{
    long long v[6];
    size_t i;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 6)
        return PHG_ERR_UNAVAILABLE;
    for (i = 0; i < 6; i++) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER)
            return PHG_ERR_UNAVAILABLE;
        v[i] = reply->element[i]->integer;
    }
    return phg_rl_redis_parse(v, 6, d) == PHG_OK ? PHG_OK : PHG_ERR_UNAVAILABLE;
}

/* "MOVED 3999 127.0.0.1:6381" or "ASK ...": the slot and the node. An empty
 * host (Redis 7 when the node's endpoint is unknown) means the node that
 * answered. 0, or -1 when the text is not a redirection. */
static int parse_redirect(const char *s, size_t len, int *ask, int *slot, char *host,
                          size_t host_len, int *port, const char *same_host)
{
    char buf[HOST_MAX + 64];
    char *p, *end, *colon;
    long v;

    if (len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (strncmp(buf, "MOVED ", 6) == 0) {
        *ask = 0;
        p = buf + 6;
    } else if (strncmp(buf, "ASK ", 4) == 0) {
        *ask = 1;
        p = buf + 4;
    } else {
        return -1;
    }
    v = strtol(p, &end, 10);
    if (end == p || *end != ' ' || v < 0 || v >= SLOTS)
        return -1;
    *slot = (int)v;
    p = end + 1;
    colon = strrchr(p, ':');
    if (colon == NULL)
        return -1;
    *colon = '\0';
    v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || v < 1 || v > 65535)
        return -1;
    *port = (int)v;
    if (*p == '\0')
        p = (char *)same_host;
    if (strlen(p) >= host_len)
        return -1;
    strcpy(host, p);
    return 0;
}

/* CRC16/XMODEM of the hash tag, as Redis Cluster computes a key's slot. */
static uint16_t key_slot(const char *key, size_t key_len)
{
    uint16_t crc = 0;
    size_t i;
    int b;
    for (i = 0; i < key_len; i++) {
        crc ^= (uint16_t)((uint8_t)key[i] << 8);
        for (b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc & (SLOTS - 1);
}

/* ---- the asynchronous client ---------------------------------------------------------- */

typedef struct node node;
typedef struct rreq rreq;

struct node {
    gw_redis *r;
    int idx;
    char host[HOST_MAX];
    int port;
    redisAsyncContext *ac; /* NULL: not connected (nor connecting) */
    int down_logged;
    uint64_t next_connect_ms;
    uint64_t last_read_ms; /* a reply, or the start of the connection */
    size_t inflight;
};

struct rreq {
    gw_redis *r;
    rreq *prev, *next; /* r->live */
    gw_redis_cb cb;
    void *arg;
    struct event *timer;
    int done;        /* the callback was called */
    int outstanding; /* hiredis holds this record */
    int use_eval;
    int asking; /* send ASKING before the next send */
    int asked;  /* the last send had it */
    int redirects;
    int local;       /* the answer needs no Redis (policy "none") */
    phg_status fail; /* what the timer answers: UNAVAILABLE, or INVALID for bad input */
    uint16_t slot;
    node *sent_on;
    rl_cmd cmd;
};

struct gw_redis {
    struct event_base *base;
    int timeout_ms;
    int closing;
    int cluster; /* a MOVED was seen: slots are computed and looked up */
    int error_logged;
    node *nodes[NODES_MAX];
    int n_nodes;
    rreq *live;
    uint8_t slot_node[SLOTS];
};

static void log_node(const char *msg, const node *nd)
{
    char fields[HOST_MAX * 2 + 64];
    json_t *o = json_pack("{s:s, s:i}", "redis_host", nd->host, "redis_port", nd->port);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    snprintf(fields, sizeof(fields), "%s", text ? text : "{}");
    free(text);
    json_decref(o);
    phg_log(PHG_LOG_WARN, msg, fields);
}

static node *node_add(gw_redis *r, const char *host, int port)
{
    node *nd;
    int i;

    for (i = 0; i < r->n_nodes; i++)
        if (r->nodes[i]->port == port && strcmp(r->nodes[i]->host, host) == 0)
            return r->nodes[i];
    if (r->n_nodes >= NODES_MAX || strlen(host) >= HOST_MAX)
        return NULL;
    nd = calloc(1, sizeof(*nd));
    if (nd == NULL)
        return NULL;
    nd->r = r;
    nd->idx = r->n_nodes;
    snprintf(nd->host, sizeof(nd->host), "%s", host);
    nd->port = port;
    r->nodes[r->n_nodes++] = nd;
    return nd;
}

/* The node is unreachable: log it once per episode, and forget the slots it
 * served (they may have failed over; the first node redirects us). */
static void node_down(node *nd)
{
    gw_redis *r = nd->r;
    int s;

    if (!nd->down_logged && !r->closing) {
        nd->down_logged = 1;
        log_node("redis node unreachable; rate-limit decisions fall back", nd);
    }
    if (r->cluster && nd->idx != 0)
        for (s = 0; s < SLOTS; s++)
            if (r->slot_node[s] == nd->idx)
                r->slot_node[s] = NO_NODE;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    node *nd = ac->data;
    if (nd->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this (its requests get NULL). */
        nd->ac = NULL;
        node_down(nd);
        return;
    }
    nd->last_read_ms = now_ms();
    /* "reachable again" waits for a reply: a stopped server still accepts
     * connections. */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    node *nd = ac->data;
    if (nd->ac != ac)
        return;
    nd->ac = NULL;
    if (status != REDIS_OK || !nd->r->closing)
        node_down(nd);
}

/* The node's connection, connecting if allowed now; NULL when not. */
static redisAsyncContext *node_conn(node *nd)
{
    gw_redis *r = nd->r;
    redisAsyncContext *ac;
    uint64_t now;

    if (nd->ac != NULL)
        return nd->inflight < INFLIGHT_MAX ? nd->ac : NULL;
    now = now_ms();
    if (r->closing || now < nd->next_connect_ms)
        return NULL;
    nd->next_connect_ms = now + RECONNECT_MS;
    ac = redisAsyncConnect(nd->host, nd->port);
    if (ac == NULL)
        return NULL;
    if (ac->err) {
        redisAsyncFree(ac);
        node_down(nd);
        return NULL;
    }
    ac->data = nd;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    nd->ac = ac;
    nd->inflight = 0;
    nd->last_read_ms = now;
    return ac;
}

/* Close a node's connection at once: hiredis answers its requests with NULL. */
static void node_drop(node *nd)
{
    redisAsyncContext *ac = nd->ac;
    if (ac == NULL)
        return;
    nd->ac = NULL;
    node_down(nd);
    redisAsyncFree(ac);
}

static void req_free(rreq *q)
{
    gw_redis *r = q->r;
    if (q->prev)
        q->prev->next = q->next;
    else
        r->live = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (q->timer)
        event_free(q->timer);
    free(q);
}

static void finish(rreq *q, phg_status status, const phg_rl_decision *d)
{
    if (q->done)
        return;
    q->done = 1;
    evtimer_del(q->timer);
    q->cb(q->arg, status, status == PHG_OK ? d : NULL);
    if (!q->outstanding)
        req_free(q);
}

/* Fail from the loop, not from the caller's stack. */
static void fail_soon(rreq *q)
{
    struct timeval zero = {0, 0};
    q->local = 0;
    evtimer_del(q->timer);
    evtimer_add(q->timer, &zero);
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata);

/* Send q to nd; 0, or -1 when it cannot be sent now. */
static int req_send(rreq *q, node *nd)
{
    redisAsyncContext *ac = node_conn(nd);

    if (ac == NULL)
        return -1;
    q->asked = q->asking;
    if (q->asking) {
        q->asking = 0;
        if (redisAsyncCommand(ac, NULL, NULL, "ASKING") != REDIS_OK)
            return -1;
    }
    cmd_script(&q->cmd, q->use_eval);
    if (redisAsyncCommandArgv(ac, on_reply, q, q->cmd.argc, q->cmd.argv, q->cmd.lens) != REDIS_OK)
        return -1;
    q->outstanding = 1;
    q->sent_on = nd;
    nd->inflight++;
    return 0;
}

/* The node for q: the one its slot was last MOVED to, else the first node,
 * else (the first node being down) any connected node, which redirects. */
static node *req_node(rreq *q)
{
    gw_redis *r = q->r;
    node *nd = NULL;
    int i;

    if (r->cluster && r->slot_node[q->slot] != NO_NODE)
        nd = r->nodes[r->slot_node[q->slot]];
    if (nd == NULL)
        nd = r->nodes[0];
    if (nd->ac == NULL && now_ms() < nd->next_connect_ms)
        for (i = 0; i < r->n_nodes; i++)
            if (r->nodes[i]->ac != NULL)
                return r->nodes[i];
    return nd;
}

static void req_error(rreq *q, node *nd, const redisReply *reply)
{
    gw_redis *r = q->r;
    char host[HOST_MAX];
    int ask, slot, port;
    node *to;

    if (reply->len >= 8 && strncmp(reply->str, "NOSCRIPT", 8) == 0 && !q->use_eval) {
        q->use_eval = 1;
        q->asking = q->asked; /* ASKING holds for one command only: again */
        if (req_send(q, nd) != 0)
            finish(q, PHG_ERR_UNAVAILABLE, NULL);
        return;
    }
    if (parse_redirect(reply->str, reply->len, &ask, &slot, host, sizeof(host), &port, nd->host) ==
        0) {
        if (++q->redirects > REDIRECTS_MAX) {
            finish(q, PHG_ERR_UNAVAILABLE, NULL);
            return;
        }
        to = node_add(r, host, port);
        if (to == NULL) {
            finish(q, PHG_ERR_UNAVAILABLE, NULL);
            return;
        }
        if (!ask) {
            r->cluster = 1;
            r->slot_node[slot] = (uint8_t)to->idx;
        }
        q->asking = ask;
        if (req_send(q, to) != 0)
            finish(q, PHG_ERR_UNAVAILABLE, NULL);
        return;
    }
    if (!r->error_logged) {
        /* The first word only (ERR, WRONGTYPE, CLUSTERDOWN, ...): it names
         * the trouble without echoing anything of the request. */
        char word[32];
        char fields[96];
        size_t i;
        for (i = 0; i < reply->len && i < sizeof(word) - 1 && isalnum((unsigned char)reply->str[i]);
             i++)
            word[i] = reply->str[i];
        word[i] = '\0';
        snprintf(fields, sizeof(fields), "{\"redis_error\":\"%s\"}", word);
        r->error_logged = 1;
        phg_log(PHG_LOG_WARN, "redis refused a rate-limit decision; falling back", fields);
    }
    finish(q, PHG_ERR_UNAVAILABLE, NULL);
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    const redisReply *reply = reply_;
    rreq *q = privdata;
    node *nd = ac->data;
    phg_rl_decision d;
    phg_status st;

    if (q == NULL) /* ASKING */
        return;
    if (nd->inflight > 0)
        nd->inflight--;
    q->outstanding = 0;
    if (reply != NULL) {
        nd->last_read_ms = now_ms();
        if (nd->down_logged) {
            nd->down_logged = 0;
            log_node("redis node answers again", nd);
        }
    }
    if (q->done) {
        req_free(q);
        return;
    }
    if (reply == NULL) {
        finish(q, PHG_ERR_UNAVAILABLE, NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        req_error(q, nd, reply);
        return;
    }
    st = reply_decision(reply, &d);
    finish(q, st, &d);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    rreq *q = arg;
    node *nd = NULL;
    gw_redis *r = q->r;
    static const phg_rl_decision none = {1, 0, 0, 0, 0, 0};
    uint64_t stall_ms;

    (void)fd;
    (void)what;
    if (q->local) {
        finish(q, PHG_OK, &none);
        return;
    }
    /* A connection that read nothing for long while requests wait is dead
     * or its server stopped: drop it so that the next request reconnects. */
    stall_ms = (uint64_t)r->timeout_ms * 4u;
    if (stall_ms < STALL_MIN_MS)
        stall_ms = STALL_MIN_MS;
    if (q->outstanding && q->sent_on != NULL && q->sent_on->ac != NULL &&
        now_ms() - q->sent_on->last_read_ms >= stall_ms)
        nd = q->sent_on;
    finish(q, q->fail, NULL); /* q may be gone from here on */
    if (nd != NULL && nd->ac != NULL)
        node_drop(nd);
}

/*
 * hiredis resolves a host name inside redisAsyncConnect, with a blocking
 * getaddrinfo. So a name is resolved here, once, when the client is made
 * (at start-up, not on a request), and the client connects to the address.
 * A name that does not resolve now is kept, and then resolved (blocking) on
 * each reconnection attempt: configure an address to avoid that.
 */
static void resolve_once(const char *host, char *out, size_t out_len)
{
    struct addrinfo hints, *res = NULL;
    unsigned char tmp[16];

    snprintf(out, out_len, "%s", host);
    if (inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1)
        return;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
        return;
    if (getnameinfo(res->ai_addr, res->ai_addrlen, out, (socklen_t)out_len, NULL, 0,
                    NI_NUMERICHOST) != 0)
        snprintf(out, out_len, "%s", host);
    freeaddrinfo(res);
}

gw_redis *gw_redis_new(struct event_base *base, const char *host, int port, int timeout_ms)
{
    char addr[HOST_MAX];
    gw_redis *r;

    assert(base != NULL && host != NULL);
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->base = base;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 50;
    memset(r->slot_node, NO_NODE, sizeof(r->slot_node));
    resolve_once(host, addr, sizeof(addr));
    if (node_add(r, addr, port > 0 ? port : DEFAULT_PORT) == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

void gw_redis_free(gw_redis *r)
{
    rreq *q, *next;
    int i;

    if (r == NULL)
        return;
    r->closing = 1;
    for (q = r->live; q != NULL; q = next) {
        next = q->next;
        if (!q->done)
            finish(q, PHG_ERR_UNAVAILABLE, NULL);
    }
    for (i = 0; i < r->n_nodes; i++)
        node_drop(r->nodes[i]);
    while (r->live != NULL) /* nothing should be left; hiredis gave everything back */
        req_free(r->live);
    for (i = 0; i < r->n_nodes; i++)
        free(r->nodes[i]);
    free(r);
}

void gw_redis_decide(gw_redis *r, const char *mode, const char *key, size_t key_len,
                     const phg_rl_policy *policy, gw_redis_cb cb, void *arg)
{
    struct timeval tv;
    rreq *q;
    phg_status rc;

    assert(r != NULL && mode != NULL && policy != NULL && cb != NULL);
    if (r->closing) {
        cb(arg, PHG_ERR_UNAVAILABLE, NULL);
        return;
    }
    q = calloc(1, sizeof(*q));
    if (q != NULL)
        q->timer = evtimer_new(r->base, on_timer, q);
    if (q == NULL || q->timer == NULL) {
        /* Out of memory: nothing to defer with. */
        free(q);
        cb(arg, PHG_ERR_UNAVAILABLE, NULL);
        return;
    }
    q->r = r;
    q->fail = PHG_ERR_UNAVAILABLE;
    q->cb = cb;
    q->arg = arg;
    q->next = r->live;
    if (r->live)
        r->live->prev = q;
    r->live = q;
    tv.tv_sec = r->timeout_ms / 1000;
    tv.tv_usec = (r->timeout_ms % 1000) * 1000;
    evtimer_add(q->timer, &tv);

    rc = cmd_build(&q->cmd, mode, key, key_len, policy);
    if (rc != PHG_OK) {
        q->fail = PHG_ERR_INVALID;
        fail_soon(q);
        return;
    }
    if (policy->n == 0 && strcmp(mode, "reset") != 0) {
        struct timeval zero = {0, 0};
        q->local = 1;
        evtimer_del(q->timer);
        evtimer_add(q->timer, &zero);
        return;
    }
    if (r->cluster)
        q->slot = key_slot(key, key_len);
    if (req_send(q, req_node(q)) != 0)
        fail_soon(q);
}

/* ---- the blocking client -------------------------------------------------------------- */

static struct timeval tv_of_ms(int64_t ms)
{
    struct timeval tv;
    if (ms < 1)
        ms = 1;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    return tv;
}

phg_status gw_redis_decide_sync(const char *host, int port, int timeout_ms, const char *mode,
                                const char *key, size_t key_len, const phg_rl_policy *policy,
                                phg_rl_decision *decision)
{
    static const phg_rl_decision none = {1, 0, 0, 0, 0, 0};
    redisContext *c = NULL;
    redisReply *reply = NULL;
    rl_cmd cmd;
    char cur_host[HOST_MAX], next_host[HOST_MAX];
    int cur_port, use_eval = 0, asking = 0, asked = 0, redirects = 0, ask, slot, attempt;
    uint64_t deadline;
    phg_status rc;

    assert(host != NULL && mode != NULL && policy != NULL && decision != NULL);
    memset(decision, 0, sizeof(*decision));
    rc = cmd_build(&cmd, mode, key, key_len, policy);
    if (rc != PHG_OK)
        return rc;
    if (policy->n == 0 && strcmp(mode, "reset") != 0) {
        *decision = none;
        return PHG_OK;
    }
    if (strlen(host) >= sizeof(cur_host))
        return PHG_ERR_INVALID;
    snprintf(cur_host, sizeof(cur_host), "%s", host);
    cur_port = port > 0 ? port : DEFAULT_PORT;
    if (timeout_ms <= 0)
        timeout_ms = 50;
    deadline = now_ms() + (uint64_t)timeout_ms;
    rc = PHG_ERR_UNAVAILABLE;
    /* At most: one NOSCRIPT, REDIRECTS_MAX redirections, and the answer. */
    for (attempt = 0; attempt < REDIRECTS_MAX + 3; attempt++) {
        uint64_t now = now_ms();
        if (now >= deadline)
            break;
        if (c == NULL) {
            c = redisConnectWithTimeout(cur_host, cur_port, tv_of_ms((int64_t)(deadline - now)));
            if (c == NULL || c->err)
                break;
        }
        if (redisSetTimeout(c, tv_of_ms((int64_t)(deadline - now))) != REDIS_OK)
            break;
        asked = asking;
        if (asking) {
            asking = 0;
            reply = redisCommand(c, "ASKING");
            if (reply == NULL)
                break;
            freeReplyObject(reply);
            reply = NULL;
        }
        cmd_script(&cmd, use_eval);
        reply = redisCommandArgv(c, cmd.argc, cmd.argv, cmd.lens);
        if (reply == NULL)
            break;
        if (reply->type != REDIS_REPLY_ERROR) {
            rc = reply_decision(reply, decision);
            break;
        }
        if (reply->len >= 8 && strncmp(reply->str, "NOSCRIPT", 8) == 0 && !use_eval) {
            use_eval = 1;
            asking = asked;
        } else if (parse_redirect(reply->str, reply->len, &ask, &slot, next_host, sizeof(next_host),
                                  &cur_port, cur_host) == 0 &&
                   ++redirects <= REDIRECTS_MAX) {
            memcpy(cur_host, next_host, sizeof(cur_host));
            asking = ask;
            redisFree(c);
            c = NULL;
        } else {
            break;
        }
        freeReplyObject(reply);
        reply = NULL;
    }
    if (reply != NULL)
        freeReplyObject(reply);
    if (c != NULL)
        redisFree(c);
    if (rc != PHG_OK)
        memset(decision, 0, sizeof(*decision));
    return rc;
}

/* ---- redis://HOST:PORT ---------------------------------------------------------------- */

static int url_fail(char *err, size_t err_len, const char *why)
{
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "bad Redis URL: %s", why);
    return -1;
}

int gw_redis_url_parse(const char *url, char *host, size_t host_len, int *port, char *err,
                       size_t err_len)
{
    const char *p, *end, *h, *port_text = NULL;
    size_t hlen, i, ulen;
    char tmp[HOST_MAX];
    unsigned char addr[16];
    long v;

    assert(host != NULL && port != NULL);
    if (url == NULL)
        return url_fail(err, err_len, "empty");
    ulen = strlen(url);
    if (ulen > URL_MAX)
        return url_fail(err, err_len, "longer than 1024 bytes");
    if (strncasecmp(url, "redis://", 8) != 0)
        return url_fail(err, err_len, "it must start with redis://");
    p = url + 8;
    end = url + ulen;
    if (end > p && end[-1] == '/')
        end--; /* "redis://host:6379/" */
    for (i = 0; p + i < end; i++) {
        char ch = p[i];
        if (ch == '@')
            return url_fail(err, err_len, "user and password are not supported");
        if (ch == '/')
            return url_fail(err, err_len, "a database number is not supported");
        if (ch == '?' || ch == '#')
            return url_fail(err, err_len, "query and fragment are not supported");
    }
    if (p < end && *p == '[') {
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (close == NULL)
            return url_fail(err, err_len, "an IPv6 address misses its ']'");
        h = p + 1;
        hlen = (size_t)(close - h);
        if (hlen == 0 || hlen >= sizeof(tmp))
            return url_fail(err, err_len, "bad IPv6 address");
        memcpy(tmp, h, hlen);
        tmp[hlen] = '\0';
        if (inet_pton(AF_INET6, tmp, addr) != 1)
            return url_fail(err, err_len, "bad IPv6 address");
        p = close + 1;
        if (p < end && *p != ':')
            return url_fail(err, err_len, "text after the IPv6 address");
    } else {
        h = p;
        while (p < end && *p != ':')
            p++;
        hlen = (size_t)(p - h);
        if (hlen == 0)
            return url_fail(err, err_len, "no host");
        if (hlen > 253)
            return url_fail(err, err_len, "host name too long");
        for (i = 0; i < hlen; i++) {
            unsigned char ch = (unsigned char)h[i];
            if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_')
                return url_fail(err, err_len, "bad character in the host");
        }
        memcpy(tmp, h, hlen);
        tmp[hlen] = '\0';
    }
    *port = DEFAULT_PORT;
    if (p < end) { /* ':' */
        char *pe;
        char num[8];
        size_t nlen;
        port_text = p + 1;
        nlen = (size_t)(end - port_text);
        if (nlen == 0 || nlen > 5)
            return url_fail(err, err_len, "bad port");
        for (i = 0; i < nlen; i++)
            if (!isdigit((unsigned char)port_text[i]))
                return url_fail(err, err_len, "bad port");
        memcpy(num, port_text, nlen);
        num[nlen] = '\0';
        v = strtol(num, &pe, 10);
        if (v < 1 || v > 65535)
            return url_fail(err, err_len, "port out of 1..65535");
        *port = (int)v;
    }
    if (hlen + 1 > host_len)
        return url_fail(err, err_len, "host too long");
    memcpy(host, tmp, hlen + 1);
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    return 0;
}
