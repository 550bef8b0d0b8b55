/*
 * gw.h: the gateway's internal interfaces (phigate serve). Not installed.
 *
 * Parts, one file each:
 *   config.c  the configuration: INI file, PHIGATE_* environment, flags;
 *             validation; the effective configuration as JSON (no secrets)
 *   metrics.c Prometheus counters and histograms, lock-free on the hot path
 *   phi_api.c /v1/phi/encrypt|decrypt|rewrap (CPU only: runs on the loop)
 *   admin_api.c /admin/... (blocking store calls: runs on a worker thread)
 *   server.c  event loops, listeners, TLS, the proxy pipeline, drain, reload
 *   upstream_demo.c  the sample biometric upstream of `phigate demo`
 *
 * Handlers never touch libevent: they get a gw_call (the request, parsed)
 * and fill its reply. server.c turns the reply into HTTP and adds the
 * request id to every error body.
 */
#ifndef PHIGATE_GW_H
#define PHIGATE_GW_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "phigate/apikey.h"
#include "phigate/audit.h"
#include "phigate/phi.h"
#include "phigate/ratelimit.h"
#include "phigate/store.h"
#include "phigate/webhook.h"
#include "phigate/webhook_inbox.h"

/* ---- configuration ------------------------------------------------------------------ */

#define GW_ROUTES_MAX 256
#define GW_PATH_MAX 1024

/* A route: requests whose method matches and whose path starts with prefix
 * (at a '/' boundary or exactly) need the role and scopes given. The longest
 * matching prefix wins; a request that matches no route is allowed for any
 * valid key (the default route). */
typedef struct gw_route {
    char name[64];           /* the INI section's name after "route:" */
    char methods[128];       /* "GET,POST" or "*" */
    char prefix[GW_PATH_MAX];
    int require_admin;       /* role = admin */
    uint32_t scopes;         /* every bit required */
} gw_route;

#define GW_WH_CONF_MAX 32        /* [webhook:NAME] sections */
#define GW_WH_SECRET_FILES_MAX 4 /* secrets of a configured source (rotation: 2 suffice) */

/* A webhook source from the configuration file: a [webhook:NAME] section.
 * Secrets are never in the file: each is read from a file (secret_files,
 * one secret per file, trimmed), as is the handshake token. A source of the
 * store with the same name is shadowed by this one (with a warning). */
typedef struct gw_wh_conf {
    char name[65];                  /* [a-z0-9_-]{1,64} */
    char scheme[32];                /* a phg_webhook_scheme_name */
    char secret_files[GW_WH_SECRET_FILES_MAX][GW_PATH_MAX]; /* secret_file = a, b, ... */
    size_t n_secret_files;
    char verify_token_file[GW_PATH_MAX]; /* oura / fitbit handshake token; "" none */
    int64_t tolerance_s;            /* default 300 */
    size_t max_body;                /* default 1 MiB */
    char deliver_to[2049];          /* http(s):// URL, required */
} gw_wh_conf;

typedef struct gw_config {
    /* [server] */
    char listen_host[256];
    int listen_port;                 /* default 8080 */
    int threads;                     /* event loops; 0: one per core */
    char tls_cert[GW_PATH_MAX];      /* PEM paths; both or neither */
    char tls_key[GW_PATH_MAX];
    int max_connections;             /* per process; default 10000 */
    size_t max_header_bytes;         /* default 16 KiB */
    size_t max_body_bytes;           /* default 10 MiB */
    int header_timeout_ms;           /* whole request head must arrive; default 10000 */
    int idle_timeout_ms;             /* keep-alive idle; default 60000 */
    int drain_timeout_ms;            /* SIGTERM deadline; default 10000 */
    char trusted_proxy[256];         /* "" or a comma list of IPs whose X-Forwarded-For is kept */
    /* [upstream] */
    char upstream_url[GW_PATH_MAX];  /* http://host:port[/base]; "" : no proxying (404) */
    char upstream_host[256];         /* parsed */
    int upstream_port;
    char upstream_base[GW_PATH_MAX]; /* "" or "/base" without a trailing slash */
    int upstream_connect_timeout_ms; /* default 2000 */
    int upstream_timeout_ms;         /* whole response head; default 30000 */
    int upstream_pool;               /* idle connections kept per loop; default 64 */
    /* [store] */
    char store_url[GW_PATH_MAX];     /* may hold a password: never print it, use store_display */
    char store_display[GW_PATH_MAX]; /* password redacted */
    /* [audit] */
    char audit_chain[PHG_AUDIT_CHAIN_MAX + 1]; /* default "gw-<hostname>" (sanitised) */
    /* [phi] */
    size_t phi_batch_max;            /* items per call; default 1000 */
    /* [log] */
    char log_level[16];              /* debug|info|warn|error; default info */
    /* [admin] */
    int admin_enabled;               /* default 1 */
    /* [ratelimit] */
    char rl_engine[8];               /* "local" (default) or "redis" (the default when redis is set) */
    char rl_redis_url[GW_PATH_MAX];  /* redis://host:port or "" */
    char rl_redis_host[256];         /* parsed */
    int rl_redis_port;
    int rl_timeout_ms;               /* a Redis decision waits at most this; default 50 */
    char rl_fallback[8];             /* Redis down: "local" (default), "open" or "closed" */
    int rl_instances;                /* gateways sharing the Redis; local fallback divides by it */
    char rl_default_user[PHG_RL_TEXT_MAX + 1];  /* policy of role user keys without their own; "" none */
    char rl_default_admin[PHG_RL_TEXT_MAX + 1]; /* the same for role admin */
    phg_rl_policy rl_user_policy, rl_admin_policy; /* parsed */
    /* [webhooks] */
    int wh_enabled;                  /* default 1: POST /webhooks/<source> is served */
    int wh_workers;                  /* delivery threads; default 2, 1..64 */
    int wh_max_attempts;             /* then dead; default 12, 1..1000 */
    int64_t wh_max_age_s;            /* then dead; default 259200 (3 days), 60..31536000 */
    int wh_backoff_ms;               /* first retry delay; default 1000, 10..3600000 */
    int wh_backoff_max_ms;           /* cap of the delay; default 3600000, >= backoff_ms */
    int wh_timeout_ms;               /* one delivery attempt; default 10000, 100..600000 */
    int64_t wh_keep_delivered_s;     /* delivered events purged after; default 604800, 0 never */
    char wh_google_keyset[GW_PATH_MAX]; /* file path or http(s) URL; default Google's URL */
    char wh_ca_file[GW_PATH_MAX];    /* CA bundle for https deliveries and the keyset; "" system */
    char wh_redis_url[GW_PATH_MAX];  /* shared replay memory; default "" (then ratelimit.redis) */
    char wh_redis_host[256];         /* parsed */
    int wh_redis_port;
    /* [webhook:NAME] */
    gw_wh_conf wh_sources[GW_WH_CONF_MAX];
    size_t n_wh_sources;
    /* routes */
    gw_route routes[GW_ROUTES_MAX];
    size_t n_routes;
    /* where the values came from, for messages */
    char config_file[GW_PATH_MAX];
} gw_config;

/* Flags given on the command line (NULL / 0: not given). They win over the
 * environment, which wins over the file, which wins over the defaults. */
typedef struct gw_flags {
    const char *config_file;
    const char *listen;      /* HOST:PORT, [v6]:PORT */
    const char *upstream;
    const char *store;
    const char *redis;       /* --redis URL: rate limits on Redis */
    int threads;             /* 0: not given */
} gw_flags;

/*
 * Load: defaults, then the file (if any), then PHIGATE_* from the
 * environment (PHIGATE_LISTEN, PHIGATE_UPSTREAM, PHIGATE_STORE,
 * PHIGATE_STORE_FILE, PHIGATE_THREADS, PHIGATE_<SECTION>_<KEY> for every key
 * of the file), then flags; then validate everything. On failure returns -1
 * with a message naming the setting ("server.max_body_bytes: not a size")
 * in err. Secrets (a password in the store URL) are accepted only from the
 * environment or a *_FILE path, never from the file or a flag.
 */
int gw_config_load(gw_config *cfg, const gw_flags *flags, char *err, size_t err_len);

/* The effective configuration as a JSON object, with no secret in it. */
json_t *gw_config_json(const gw_config *cfg);

/* The route for a request (NULL: the default route). */
const gw_route *gw_route_match(const gw_config *cfg, const char *method, const char *path);

/* ---- a call to an API phigate answers itself ---------------------------------------- */

typedef struct gw_call {
    /* the request */
    const char *method;          /* "GET", "POST", ... */
    const char *path;            /* decoded path, without the query */
    const char *query;           /* raw query string or NULL */
    const char *body;            /* may be NULL when body_len is 0 */
    size_t body_len;
    const char *content_type;    /* NULL when absent */
    const phg_identity *id;      /* the verified key */
    const char *request_id;
    const char *ip;
    /* the reply: on success status 2xx and result (owned, freed by the server);
     * on failure gw_call_fail() */
    int status;
    json_t *result;
    char err_code[48];
    char err_msg[256];
    /* for the audit record of this call */
    char action[64];             /* "phi.decrypt", "admin.keys.create", ... ; "" : "http.request" */
    char resource[PHG_AUDIT_TEXT_MAX + 1];
    char subject[PHG_AUDIT_TEXT_MAX + 1]; /* whose data, when one user's */
    json_t *audit_details;       /* owned; NULL or an object (PHI-free) */
} gw_call;

/* Set an error reply (status, code, printf message). Never put a secret or
 * PHI in the message. */
void gw_call_fail(gw_call *call, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Parse the body as a JSON object (checks Content-Type is application/json:
 * 415 otherwise; 400 invalid_json). NULL after gw_call_fail. */
json_t *gw_call_json_body(gw_call *call);

/* The value of a hex digit, or -1. */
int gw_hex_digit(int c);

/* Milliseconds on CLOCK_MONOTONIC: the clock every rate-limit decision of
 * the gateway uses (the admin API's peeks must use the same one). */
uint64_t gw_mono_ms(void);

/* Unix time in milliseconds (CLOCK_REALTIME): what records and webhook
 * timestamps are compared with. */
int64_t gw_wall_ms(void);

/* One parameter of a raw query string (may be NULL), percent-decoded ('+' is
 * a space) into buf (len bytes, NUL-terminated): 1 found, 0 absent, -1 a bad
 * escape, -2 longer than buf, -3 a NUL. *count (may be NULL) gets how many
 * times the parameter appears; the first one is the one decoded. */
int gw_query_param(const char *q, const char *name, char *buf, size_t len, int *count);

/* The value of one query parameter, percent-decoded, into buf; 1 found,
 * 0 absent, -1 malformed or too long (after gw_call_fail with 400). */
int gw_call_query(gw_call *call, const char *name, char *buf, size_t len);

/* ---- the PHI transit API ---------------------------------------------------------------- */

typedef struct gw_phi_ctx {
    phg_keyring *keyring;
    size_t batch_max;
} gw_phi_ctx;

/* Canonical context string from a JSON object: see docs/api.md, "Contexts".
 * Members sorted by name (bytes), each "name=value" joined by ';'; names
 * [a-z0-9_]{1,64}; values strings of printable UTF-8 without ';' or '=' or
 * integers (decimal). 0 ok, -1 with why in err. */
int gw_phi_context(json_t *ctx, char *out, size_t out_len, char *err, size_t err_len);

/* POST /v1/phi/encrypt | /v1/phi/decrypt | /v1/phi/rewrap */
void gw_phi_handle(const gw_phi_ctx *ctx, gw_call *call);

/* ---- the admin API ----------------------------------------------------------------------- */

typedef struct gw_admin_ctx {
    phg_store *store;
    phg_keys *keys;
    phg_audit *audit;
    phg_keyring *keyring;
    const phg_masterkeys *mk;
    const uint8_t *checkpoint_key;  /* 32 bytes */
    json_t *(*config_json)(void *arg); /* the effective configuration, new reference */
    void *config_arg;
    /* rate limits */
    phg_ratelimit *rl;              /* the local engine (engine local; Redis's fallback) */
    const gw_config *cfg;           /* the configuration of this call (engine, Redis, defaults) */
    /* webhooks (NULL when the gateway serves none) */
    struct gw_webhooks *webhooks;
    phg_wh_inbox *wh_inbox;  /* the inbox (tests may set it without webhooks) */
} gw_admin_ctx;

/*
 * The policy of a key: its own (rate_limit, the text stored with it) when it
 * has one, else the configured default of its role (none: n == 0). *from
 * (may be NULL) says which: "key", "default" or "none".
 */
void gw_rl_policy_for(const gw_config *cfg, phg_role role, const char *rate_limit,
                      phg_rl_policy *out, const char **from);

/* The audit record of rate-limit violations (server.c writes it, at most one
 * per key per window): action "ratelimit.violation", outcome "denied",
 * resource "key:<id>", actor the key, subject its user, details
 * {"count":<refusals since the key's previous violation record>,
 *  "first":"<RFC 3339>","last":"<RFC 3339>","limit":"<policy text>",
 *  "window_s":<the refusing window>}. */
#define GW_RL_VIOLATION_ACTION "ratelimit.violation"

/* Every /admin/... request; runs on a worker thread (it may block). */
void gw_admin_handle(const gw_admin_ctx *ctx, gw_call *call);

/* The OpenAPI 3.1 document (static text, JSON). */
extern const char gw_openapi_json[];

/* ---- metrics ------------------------------------------------------------------------------- */

typedef enum gw_route_class {
    GW_RC_PROXY, GW_RC_PHI, GW_RC_ADMIN, GW_RC_HEALTH, GW_RC_METRICS, GW_RC_OTHER, GW_RC_WEBHOOK,
    GW_RC_COUNT
} gw_route_class;

typedef enum gw_auth_fail {
    GW_AF_MISSING, GW_AF_MALFORMED, GW_AF_UNKNOWN, GW_AF_REVOKED, GW_AF_EXPIRED,
    GW_AF_FORBIDDEN, GW_AF_COUNT
} gw_auth_fail;

typedef enum gw_upstream_err {
    GW_UE_CONNECT, GW_UE_TIMEOUT, GW_UE_RESET, GW_UE_COUNT
} gw_upstream_err;

void gw_metrics_init(void);
/* Thread-safe, lock-free. */
void gw_metrics_request(gw_route_class rc, int status, double seconds);
void gw_metrics_auth_fail(gw_auth_fail why);
void gw_metrics_upstream_error(gw_upstream_err what);
void gw_metrics_connections(int delta);
void gw_metrics_ratelimit(int allowed);
void gw_metrics_rl_fallback(void);
/* The Prometheus text exposition (version 0.0.4) into a malloc'd string;
 * audit may be NULL. */
struct gw_wh_metrics;
char *gw_metrics_render(phg_audit *audit, const struct gw_wh_metrics *wh, size_t *len);

/* ---- the sample upstream of `phigate demo` --------------------------------------------- */

typedef struct gw_demo_upstream gw_demo_upstream;
/* Start on 127.0.0.1:port (0: any) in its own thread; the port chosen goes
 * to *port_out. It stores readings POSTed to /v1/readings (JSON) per
 * X-Phigate-User-Id and serves them back with GET /v1/readings. */
int gw_demo_upstream_start(int port, int *port_out, gw_demo_upstream **out);
void gw_demo_upstream_stop(gw_demo_upstream *u);

/* ---- rate limits on Redis (redis_rl.c) --------------------------------------------------- */

struct event_base;
typedef struct gw_redis gw_redis;

/* "redis://HOST:PORT" (HOST a name or an IPv4/[IPv6] literal; PORT default
 * 6379; no user, password, database or query). 0, or -1 with why in err. */
int gw_redis_url_parse(const char *url, char *host, size_t host_len, int *port, char *err,
                       size_t err_len);

/* Called exactly once, on the loop, for every gw_redis_decide: PHG_OK with
 * the decision, or PHG_ERR_UNAVAILABLE (Redis down, slow past timeout_ms, or
 * an error reply) with decision NULL; PHG_ERR_INVALID for a bad mode, key or
 * policy (a caller's bug). Never called from inside gw_redis_decide. */
typedef void (*gw_redis_cb)(void *arg, phg_status status, const phg_rl_decision *decision);

/*
 * A client of one event loop (base), to the Redis at host:port, single node
 * or Redis Cluster (found out from the first MOVED, or CLUSTER SLOTS). It
 * connects lazily and reconnects by itself (at most every 100 ms); it never
 * blocks the loop. NULL when out of memory.
 */
gw_redis *gw_redis_new(struct event_base *base, const char *host, int port, int timeout_ms);

/* Outstanding callbacks are called with PHG_ERR_UNAVAILABLE first. NULL: no-op. */
void gw_redis_free(gw_redis *r);

/* One decision (mode "check", "peek" or "reset") for key under policy: the
 * script of phg_rl_redis_script() by EVALSHA, loaded again on NOSCRIPT,
 * following MOVED/ASK on a cluster. */
void gw_redis_decide(gw_redis *r, const char *mode, const char *key, size_t key_len,
                     const phg_rl_policy *policy, gw_redis_cb cb, void *arg);

/* The same, blocking (for worker threads and the CLI): a connection of its
 * own per call. PHG_ERR_UNAVAILABLE when Redis cannot answer in timeout_ms. */
phg_status gw_redis_decide_sync(const char *host, int port, int timeout_ms, const char *mode,
                                const char *key, size_t key_len, const phg_rl_policy *policy,
                                phg_rl_decision *decision);

/* ---- webhooks (webhooks.c) ------------------------------------------------------------------ */

/*
 * The webhook job of the gateway: the sources (from the store and the
 * configuration file, rebuilt on SIGHUP, on an admin API change, and when
 * the store's sources change, polled every 5 s), the replay memory, the
 * durable inbox (phigate/webhook_inbox.h) and the delivery threads.
 */
typedef struct gw_webhooks gw_webhooks;

/* One source, ready to verify. Immutable; valid until gw_webhooks_stop. */
typedef struct gw_wh_source {
    char name[PHG_WH_SOURCE_MAX + 1];
    phg_webhook_scheme scheme;
    phg_webhook_source *src;
    char deliver_to[2049];
    int64_t tolerance_s;
    char *verify_token;             /* oura / fitbit handshake token (wiped at free); NULL none */
    size_t verify_token_len;
    int64_t secret_index[PHG_WEBHOOK_SECRETS_MAX]; /* stored index of the source's secret i */
    int from_config;                /* 1: [webhook:NAME]; 0: the store */
} gw_wh_source;

/* Start: build the sources, open the inbox, start the delivery threads.
 * keyring and audit must outlive it. 0, or -1 with why in err. */
int gw_webhooks_start(const gw_config *cfg, phg_store *store, const phg_masterkeys *mk,
                      phg_keyring *keyring, phg_audit *audit, gw_webhooks **out, char *err,
                      size_t err_len);
/* Stop the delivery threads (an attempt in progress finishes), close the
 * inbox (what is queued is written first), free everything. NULL: no-op. */
void gw_webhooks_stop(gw_webhooks *w);
/* Rebuild the sources now (blocking: a worker thread or the CLI), with cfg
 * (NULL: the last one). A source that fails to build is left out and
 * logged; the others keep working. */
void gw_webhooks_reload(gw_webhooks *w, const gw_config *cfg);
/* The source named name, or NULL, and *hold a reference to the table it is
 * in: valid until gw_webhooks_release(*hold), whatever reloads happen (the
 * last holder of a replaced table frees it and wipes its keys). */
const gw_wh_source *gw_webhooks_find_held(gw_webhooks *w, const char *name, void **hold);
void gw_webhooks_release(void *hold); /* NULL: no-op */
/* The same without a hold: the pointer stays valid only while no reload
 * replaces the table (tests, and code that never races a reload). */
const gw_wh_source *gw_webhooks_find(gw_webhooks *w, const char *name);
phg_wh_inbox *gw_webhooks_inbox(gw_webhooks *w);
/* Something became due (a new event, a replay): wake the delivery threads. */
void gw_webhooks_kick(gw_webhooks *w);
/* The fast path. Before storing a verified event: the due_ms to give it
 * (phg_wh_event_in.due_ms): a lease to this process when the deliverers'
 * memory queue has room, else 0 (a claim will take it). After the store
 * said PHG_OK: hand it over (a no-op when in->due_ms is 0). */
int64_t gw_webhooks_handoff_lease(gw_webhooks *w, int64_t received_ms);
void gw_webhooks_handoff(gw_webhooks *w, const phg_wh_event_in *in, const char *event_id);
/* 1 when the replay memory is shared through Redis (seen/remember then
 * block for a round trip: call them on a worker thread). */
int gw_webhooks_redis(gw_webhooks *w);

/* What the gateway does with one request to /webhooks/... */
typedef enum gw_wh_kind {
    GW_WH_REPLY,    /* answer now: a handshake or a refusal (status, code, body) */
    GW_WH_VERIFIED, /* store it: result holds the verification */
    GW_WH_REFRESH,  /* google-health, unknown key id: refresh the keyset (blocking), decide again */
} gw_wh_kind;

typedef struct gw_wh_decision {
    gw_wh_kind kind;
    const gw_wh_source *source;     /* NULL for an unknown source */
    char source_name[PHG_WH_SOURCE_MAX + 1]; /* as asked ("" if unreadable) */
    int status;                     /* the reply's HTTP status */
    const char *action;             /* audit: "webhook.handshake", "webhook.refused" */
    char code[48];                  /* refusal: a stable code (a phg_webhook_reason_name, or
                                     * "unknown_source", "method_not_allowed", ...) */
    char message[256];              /* refusal: a sentence, no secret */
    char *body;                     /* handshake reply body (malloc'd) or NULL: JSON error */
    size_t body_len;
    const char *content_type;       /* of body */
    phg_webhook_result result;      /* GW_WH_VERIFIED */
    void *hold;                     /* the table `source` is in, held until cleared */
} gw_wh_decision;

/* Decide about one request: method, path (decoded, starting "/webhooks/"),
 * raw query (may be NULL), headers (n pairs as received), raw body. Never
 * blocks, never parses the body of a signed webhook before it is verified.
 * d->source stays valid (its table held) until gw_wh_decision_clear, which
 * must be called once per decide (it also frees d->body). */
void gw_webhooks_decide(gw_webhooks *w, const char *method, const char *path, const char *query,
                        const phg_webhook_header *headers, size_t n_headers, const uint8_t *body,
                        size_t body_len, int64_t now_ms, gw_wh_decision *d);
void gw_wh_decision_clear(gw_wh_decision *d);
/* Fetch the keyset of google-health sources again (blocking; at most once
 * per 30 s, a no-op otherwise). */
void gw_webhooks_refresh_keyset(gw_webhooks *w);

/* Replay memory: the event id stored for (source, msg_id), if seen within
 * its lifetime (1 found, 0 not); remember one for ttl_ms. Thread-safe;
 * expiry is done a few entries at a time on insert, never in one sweep. */
int gw_webhooks_seen(gw_webhooks *w, const char *source, const char *msg_id,
                     char event_id[PHG_WH_EVENT_ID_LEN + 1]);
void gw_webhooks_remember(gw_webhooks *w, const char *source, const char *msg_id,
                          const char *event_id, int64_t ttl_ms);

/* Counters for /metrics. */
typedef struct gw_wh_metrics {
    uint64_t accepted, duplicates, refused, handshakes; /* requests */
    uint64_t delivered, retried, dead;                  /* delivery attempts' outcomes */
    int64_t pending, dead_now, delivered_now;           /* inbox rows (refreshed every second) */
    double lag_s;                                       /* age of the oldest pending event */
    int stats_ok;                                       /* the inbox figures are known */
} gw_wh_metrics;
void gw_webhooks_count(gw_webhooks *w, const char *what); /* "accepted", "duplicate", "refused",
                                                           * "handshake" */
void gw_webhooks_metrics(gw_webhooks *w, gw_wh_metrics *m);

/* ---- the server ----------------------------------------------------------------------------- */

typedef struct gw_hooks {
    /* Called once every loop listens, with the address it got (port 0 in the
     * configuration picks a free port). */
    void (*on_ready)(void *arg, const char *host, int port, int tls);
    void *arg;
} gw_hooks;

/*
 * phigate serve: load the configuration, open the store (migrating it), the
 * keyring, the key manager and the audit writer, start one event loop per
 * thread, and serve until SIGTERM or SIGINT (drain, flush the audit log) ;
 * SIGHUP reloads. Returns the process exit status (0 after a clean stop, 1
 * when the start failed, with the reason logged).
 */
int gw_serve(const gw_flags *flags, const gw_hooks *hooks);

#endif /* PHIGATE_GW_H */
