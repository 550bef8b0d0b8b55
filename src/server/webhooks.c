/*
 * webhooks.c: the gateway's webhook job (issue 7), in four parts:
 *   - sources: built from the store and the [webhook:NAME] sections, kept as
 *     an immutable sorted table swapped atomically (readers never lock);
 *   - the decision for one request to /webhooks/...: vendor handshakes, the
 *     verification on the raw body (phigate/webhook.h), the refusals;
 *   - the replay memory: (source, msg_id) -> event id for twice the
 *     tolerance, in process, and in Redis when one is configured;
 *   - delivery: threads that lease due events from the inbox
 *     (phigate/webhook_inbox.h), POST them to the source's deliver_to, and
 *     retry with exponential backoff and jitter until delivered or dead.
 * server.c owns the request itself: it calls gw_webhooks_decide on the
 * loop, writes the inbox and the audit record, and answers.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/rand.h>

#include "gw.h"
#include "httpc.h"
#include "phigate/crypto.h"
#include "phigate/webhook_store.h"

#define SECRET_FILE_MAX 4096
#define RELOAD_POLL_MS 5000
#define STATS_EVERY_MS 1000
#define PURGE_EVERY_MS 60000
#define KEYSET_MIN_INTERVAL_MS 30000
#define CLAIM_MAX 16     /* events leased from the store at once */
#define BATCH_MAX 128    /* events of one delivery batch (one report transaction) */
#define LINGER_MS 2      /* a deliverer woken for fewer waits this long for more */
#define IDLE_WAIT_MS 500
#define REPLAY_SHARDS 64
#define REPLAY_PER_SHARD 16384 /* 1M remembered ids in all */
#define HANDSHAKE_BODY_MAX 1024
#define JOBS_MAX 4096           /* events handed over in memory, waiting for a deliverer */
#define JOBS_BYTES_MAX ((size_t)64 << 20) /* and their bodies */
#define TAKE_BYTES_MAX ((size_t)8 << 20)  /* bodies one deliverer takes at once (at least one) */
#define HANDOFF_LEASE_MS 60000  /* their lease in the store, on top of the attempt's timeout */
#define REPORT_SLACK_MS 1000    /* for the report of a batch, before its first lease ends */

/* ---- helpers --------------------------------------------------------------------------- */


/* Wait on cv (mu held) at most ms milliseconds. */
static void wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

static void log_json(phg_log_level lvl, const char *msg, json_t *fields)
{
    char *text = fields ? json_dumps(fields, JSON_COMPACT) : NULL;
    phg_log(lvl, msg, text);
    free(text);
    json_decref(fields);
}

/* Read a secret file (at most SECRET_FILE_MAX bytes), trimmed of surrounding
 * whitespace, into a malloc'd NUL-terminated buffer the caller wipes. */
static int read_secret_file(const char *path, char **out, size_t *out_len, char *err,
                            size_t err_len)
{
    char buf[SECRET_FILE_MAX + 2];
    size_t n = 0, a = 0, b;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *out = NULL;
    if (fd < 0) {
        snprintf(err, err_len, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n >= sizeof buf - 1)
            break;
    }
    close(fd);
    if (n > SECRET_FILE_MAX) {
        phg_wipe(buf, sizeof buf);
        snprintf(err, err_len, "%s is over %d bytes", path, SECRET_FILE_MAX);
        return -1;
    }
    b = n;
    while (a < b && strchr(" \t\r\n", buf[a]))
        a++;
    while (b > a && strchr(" \t\r\n", buf[b - 1]))
        b--;
    if (a == b) {
        phg_wipe(buf, sizeof buf);
        snprintf(err, err_len, "%s is empty", path);
        return -1;
    }
    *out = malloc(b - a + 1);
    if (*out == NULL) {
        phg_wipe(buf, sizeof buf);
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    memcpy(*out, buf + a, b - a);
    (*out)[b - a] = '\0';
    *out_len = b - a;
    phg_wipe(buf, sizeof buf);
    return 0;
}

/* ---- sources ----------------------------------------------------------------------------- */

/* A table of sources. One reference is the gateway's while it is current;
 * each request deciding with it, each delivery and each admin look-up holds
 * one more. The last to let go frees it, wiping its keys: a reload does not
 * keep retired secrets in memory. */
typedef struct registry {
    gw_wh_source *items; /* sorted by name */
    size_t n;
    atomic_int refs;
} registry;

typedef struct replay_entry {
    struct replay_entry *hnext;  /* hash chain */
    struct replay_entry *qnext;  /* insertion order */
    int64_t expires_ms;
    uint64_t hash;
    char event_id[PHG_WH_EVENT_ID_LEN + 1];
    size_t key_len;
    char key[]; /* source '\0' msg_id */
} replay_entry;

/* An event handed to the deliverers in memory by the request that stored it
 * (no claim, no decryption): the fast path. Its row is leased to this
 * process from the start; if the process dies first, the lease runs out and
 * any deliverer claims it from the store. */
typedef struct job {
    struct job *next;
    phg_wh_event ev; /* attempts 0, body malloc'd */
} job;

typedef struct replay_shard {
    pthread_mutex_t mu;
    replay_entry **table;
    size_t buckets;
    replay_entry *qhead, *qtail;
    size_t n;
} replay_shard;

struct gw_webhooks {
    phg_store *store;
    const phg_masterkeys *mk;
    phg_keyring *keyring;
    phg_audit *audit;
    phg_wh_inbox *inbox;
    pthread_mutex_t cfg_mu; /* cfg copy and reloads */
    gw_config *cfg;         /* a private copy */
    pthread_mutex_t reg_mu; /* guards reg for taking a reference */
    registry *reg;
    int64_t last_build_s;
    /* google-health */
    pthread_mutex_t ks_mu;
    phg_webhook_keyset *keyset;
    atomic_llong keyset_at_ms; /* last fetch attempt */
    /* delivery */
    pthread_t *threads;
    int n_threads;
    pthread_t house;
    int house_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* the deliverers wait here */
    pthread_cond_t house_cv; /* the house-keeping thread, apart: a signal meant for a
                              * deliverer must not wake it instead */
    int stop;
    uint64_t kicks;
    job *jhead, *jtail; /* the fast path (under mu) */
    size_t jn, jbytes;
    /* replay memory */
    replay_shard shards[REPLAY_SHARDS];
    /* metrics */
    atomic_ullong accepted, duplicates, refused, handshakes, delivered, retried, dead;
    atomic_llong st_pending, st_dead, st_delivered, st_oldest_ms;
    atomic_int st_ok;
};

static void source_clear(gw_wh_source *s)
{
    phg_webhook_source_free(s->src);
    if (s->verify_token) {
        phg_wipe(s->verify_token, s->verify_token_len);
        free(s->verify_token);
    }
    memset(s, 0, sizeof *s);
}

static void registry_free(registry *r)
{
    size_t i;
    if (r == NULL)
        return;
    for (i = 0; i < r->n; i++)
        source_clear(&r->items[i]);
    free(r->items);
    free(r);
}

/* A reference to the current table (NULL: none yet). */
static registry *reg_hold(gw_webhooks *w)
{
    registry *r;
    pthread_mutex_lock(&w->reg_mu);
    r = w->reg;
    if (r != NULL)
        atomic_fetch_add(&r->refs, 1);
    pthread_mutex_unlock(&w->reg_mu);
    return r;
}

static void reg_drop(registry *r)
{
    if (r != NULL && atomic_fetch_sub(&r->refs, 1) == 1)
        registry_free(r);
}

static const gw_wh_source *reg_find(const registry *r, const char *name);

static int by_name(const void *a, const void *b)
{
    return strcmp(((const gw_wh_source *)a)->name, ((const gw_wh_source *)b)->name);
}

static void attach_keyset(gw_webhooks *w, gw_wh_source *s)
{
    if (s->scheme != PHG_WEBHOOK_GOOGLE_HEALTH)
        return;
    pthread_mutex_lock(&w->ks_mu);
    if (w->keyset != NULL)
        phg_webhook_source_set_keyset(s->src, w->keyset);
    pthread_mutex_unlock(&w->ks_mu);
}

/* One [webhook:NAME] source. */
static int build_conf_source(gw_webhooks *w, const gw_wh_conf *c, gw_wh_source *out, char *err,
                             size_t err_len)
{
    phg_webhook_secret secrets[GW_WH_SECRET_FILES_MAX];
    char *texts[GW_WH_SECRET_FILES_MAX] = {0};
    phg_webhook_options opts;
    size_t i, n = 0;
    int rc = -1;
    memset(out, 0, sizeof *out);
    for (i = 0; i < c->n_secret_files; i++) {
        size_t len;
        if (read_secret_file(c->secret_files[i], &texts[i], &len, err, err_len) != 0)
            goto out;
        secrets[i].text = texts[i];
        secrets[i].len = len;
        secrets[i].not_after = 0;
        n++;
    }
    phg_webhook_options_init(&opts);
    opts.tolerance_s = c->tolerance_s > 0 ? c->tolerance_s : PHG_WEBHOOK_TOLERANCE_DEFAULT;
    if (c->max_body > 0)
        opts.max_body = c->max_body;
    if (phg_webhook_source_new(c->scheme, secrets, n, &opts, &out->src, err, err_len) != PHG_OK)
        goto out;
    snprintf(out->name, sizeof out->name, "%s", c->name);
    out->scheme = phg_webhook_source_scheme(out->src);
    snprintf(out->deliver_to, sizeof out->deliver_to, "%s", c->deliver_to);
    out->tolerance_s = opts.tolerance_s;
    for (i = 0; i < n; i++)
        out->secret_index[i] = (int64_t)i;
    out->from_config = 1;
    if (c->verify_token_file[0] != '\0' &&
        read_secret_file(c->verify_token_file, &out->verify_token, &out->verify_token_len, err,
                         err_len) != 0) {
        source_clear(out);
        goto out;
    }
    attach_keyset(w, out);
    rc = 0;
out:
    for (i = 0; i < GW_WH_SECRET_FILES_MAX; i++) {
        if (texts[i]) {
            phg_wipe(texts[i], strlen(texts[i]));
            free(texts[i]);
        }
    }
    return rc;
}

/* One source of the store. */
static int build_store_source(gw_webhooks *w, const char *name, gw_wh_source *out, char *err,
                              size_t err_len)
{
    phg_webhook_source_info *info = NULL;
    phg_webhook_options opts;
    phg_status st;
    size_t i;
    memset(out, 0, sizeof *out);
    st = phg_webhook_sources_get(w->store, w->mk, name, &info);
    if (st != PHG_OK) {
        snprintf(err, err_len, "%s", phg_strerror(st));
        return -1;
    }
    phg_webhook_options_init(&opts);
    opts.tolerance_s = info->tolerance_s > 0 ? info->tolerance_s : PHG_WEBHOOK_TOLERANCE_DEFAULT;
    st = phg_webhook_source_new(info->scheme, info->active, info->n_active, &opts, &out->src, err,
                                err_len);
    if (st != PHG_OK) {
        phg_webhook_source_info_free(info);
        return -1;
    }
    snprintf(out->name, sizeof out->name, "%s", info->name);
    out->scheme = phg_webhook_source_scheme(out->src);
    snprintf(out->deliver_to, sizeof out->deliver_to, "%s", info->deliver_to);
    out->tolerance_s = opts.tolerance_s;
    for (i = 0; i < info->n_active && i < PHG_WEBHOOK_SECRETS_MAX; i++)
        out->secret_index[i] = info->active_index[i];
    if (info->verify_token != NULL) {
        /* the handshake's token (oura, fitbit): a copy source_clear wipes */
        out->verify_token = malloc(info->verify_token_len + 1);
        if (out->verify_token == NULL) {
            phg_webhook_source_info_free(info);
            source_clear(out);
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        memcpy(out->verify_token, info->verify_token, info->verify_token_len + 1);
        out->verify_token_len = info->verify_token_len;
    }
    phg_webhook_source_info_free(info);
    attach_keyset(w, out);
    return 0;
}

/* conf_err (may be NULL) gets why the first [webhook:NAME] source could not
 * be built (a secret file unreadable, or a secret refused), "" if none. */
static registry *build_registry(gw_webhooks *w, const gw_config *cfg, char *conf_err,
                                size_t conf_err_len)
{
    registry *r = calloc(1, sizeof *r);
    phg_webhook_source_info *list = NULL;
    if (conf_err != NULL)
        conf_err[0] = '\0';
    if (r != NULL)
        atomic_init(&r->refs, 1);
    size_t n_list = 0, i, cap;
    char err[256];
    if (r == NULL)
        return NULL;
    if (w->store != NULL && phg_webhook_sources_list(w->store, &list, &n_list) != PHG_OK) {
        log_json(PHG_LOG_ERROR, "webhooks: the store's sources cannot be read", NULL);
        n_list = 0;
    }
    cap = n_list + cfg->n_wh_sources;
    r->items = calloc(cap ? cap : 1, sizeof *r->items);
    if (r->items == NULL) {
        phg_webhook_source_infos_free(list, n_list);
        free(r);
        return NULL;
    }
    for (i = 0; i < cfg->n_wh_sources; i++) {
        if (build_conf_source(w, &cfg->wh_sources[i], &r->items[r->n], err, sizeof err) != 0) {
            if (conf_err != NULL && conf_err[0] == '\0')
                snprintf(conf_err, conf_err_len, "webhook:%s: %s", cfg->wh_sources[i].name, err);
            log_json(PHG_LOG_ERROR, "webhooks: a configured source is left out",
                     json_pack("{s:s,s:s}", "source", cfg->wh_sources[i].name, "why", err));
            continue;
        }
        r->n++;
    }
    for (i = 0; i < n_list; i++) {
        size_t j;
        int shadowed = 0;
        for (j = 0; j < cfg->n_wh_sources; j++)
            shadowed |= strcmp(cfg->wh_sources[j].name, list[i].name) == 0;
        if (shadowed) {
            log_json(PHG_LOG_WARN, "webhooks: a store source is shadowed by the configuration",
                     json_pack("{s:s}", "source", list[i].name));
            continue;
        }
        if (w->mk == NULL) {
            log_json(PHG_LOG_ERROR,
                     "webhooks: a store source is left out: no master key to open its secrets",
                     json_pack("{s:s}", "source", list[i].name));
            continue;
        }
        if (build_store_source(w, list[i].name, &r->items[r->n], err, sizeof err) != 0) {
            log_json(PHG_LOG_ERROR, "webhooks: a store source is left out",
                     json_pack("{s:s,s:s}", "source", list[i].name, "why", err));
            continue;
        }
        r->n++;
    }
    phg_webhook_source_infos_free(list, n_list);
    qsort(r->items, r->n, sizeof *r->items, by_name);
    return r;
}

/* Build and swap in the sources; -1 (nothing swapped, why in err) when a
 * configured source cannot be built: its secrets are the configuration's,
 * and a gateway must not start, or reload, with one silently left out. */
static int reload(gw_webhooks *w, const gw_config *cfg, char *err, size_t err_len)
{
    registry *fresh, *old;
    char conf_err[512];
    gw_config *prev = NULL;
    pthread_mutex_lock(&w->cfg_mu);
    if (cfg != NULL && cfg != w->cfg) {
        prev = malloc(sizeof *prev);
        if (prev == NULL) {
            pthread_mutex_unlock(&w->cfg_mu);
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        memcpy(prev, w->cfg, sizeof *prev);
        memcpy(w->cfg, cfg, sizeof *cfg);
    }
    fresh = build_registry(w, w->cfg, conf_err, sizeof conf_err);
    if (fresh != NULL && conf_err[0] != '\0') {
        if (prev != NULL)
            memcpy(w->cfg, prev, sizeof *prev); /* all of the old configuration stays */
        pthread_mutex_unlock(&w->cfg_mu);
        free(prev);
        registry_free(fresh);
        snprintf(err, err_len, "%s", conf_err);
        return -1;
    }
    free(prev);
    if (fresh != NULL) {
        w->last_build_s = gw_wall_ms() / 1000;
        pthread_mutex_lock(&w->reg_mu);
        old = w->reg;
        w->reg = fresh;
        pthread_mutex_unlock(&w->reg_mu);
        reg_drop(old); /* freed now, or by the last request still holding it */
    }
    pthread_mutex_unlock(&w->cfg_mu);
    if (fresh == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    return 0;
}

void gw_webhooks_reload(gw_webhooks *w, const gw_config *cfg)
{
    char err[512];
    if (w == NULL)
        return;
    if (reload(w, cfg, err, sizeof err) != 0)
        log_json(PHG_LOG_ERROR, "webhooks: the sources were not reloaded; the previous ones stay",
                 json_pack("{s:s}", "why", err));
}

static const gw_wh_source *reg_find(const registry *r, const char *name)
{
    gw_wh_source key;
    if (r == NULL || r->n == 0 || name == NULL || strlen(name) > PHG_WH_SOURCE_MAX)
        return NULL;
    snprintf(key.name, sizeof key.name, "%s", name);
    return bsearch(&key, r->items, r->n, sizeof *r->items, by_name);
}

const gw_wh_source *gw_webhooks_find_held(gw_webhooks *w, const char *name, void **hold)
{
    registry *r;
    const gw_wh_source *s;
    *hold = NULL;
    if (w == NULL)
        return NULL;
    r = reg_hold(w);
    s = reg_find(r, name);
    if (s == NULL) {
        reg_drop(r);
        return NULL;
    }
    *hold = r;
    return s;
}

void gw_webhooks_release(void *hold)
{
    reg_drop(hold);
}

const gw_wh_source *gw_webhooks_find(gw_webhooks *w, const char *name)
{
    registry *r;
    const gw_wh_source *s;
    if (w == NULL)
        return NULL;
    r = reg_hold(w);
    s = reg_find(r, name);
    reg_drop(r); /* the table stays while it is current: see gw.h */
    return s;
}

phg_wh_inbox *gw_webhooks_inbox(gw_webhooks *w)
{
    return w ? w->inbox : NULL;
}

void gw_webhooks_kick(gw_webhooks *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->kicks++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Has any store source changed since the last build? (Their updated_at is in
 * seconds: a change in the same second as the build is caught by building
 * again while the newest change is that recent.) */
static int store_changed(gw_webhooks *w)
{
    phg_webhook_source_info *list = NULL;
    size_t n = 0, i, have = 0;
    registry *r;
    int changed = 0;
    if (w->store == NULL || phg_webhook_sources_list(w->store, &list, &n) != PHG_OK)
        return 0;
    r = reg_hold(w);
    pthread_mutex_lock(&w->cfg_mu); /* w->cfg is replaced by a SIGHUP */
    for (i = 0; i < n; i++) {
        const gw_wh_source *s = reg_find(r, list[i].name);
        if (list[i].updated_at >= w->last_build_s - 1)
            changed = 1;
        if (s == NULL) {
            /* new, shadowed, or left out (no master key, bad secret) */
            size_t j;
            int conf = 0;
            for (j = 0; j < w->cfg->n_wh_sources; j++)
                conf |= strcmp(w->cfg->wh_sources[j].name, list[i].name) == 0;
            if (!conf && w->mk != NULL && list[i].updated_at >= w->last_build_s - 1)
                changed = 1;
        } else if (!s->from_config) {
            have++;
        }
    }
    /* a removed source */
    if (r != NULL) {
        size_t store_items = 0;
        for (i = 0; i < r->n; i++)
            store_items += !r->items[i].from_config;
        if (store_items > have)
            changed = 1;
    }
    pthread_mutex_unlock(&w->cfg_mu);
    reg_drop(r);
    phg_webhook_source_infos_free(list, n);
    return changed;
}

/* ---- google-health keysets ---------------------------------------------------------------------- */

static int any_google(gw_webhooks *w)
{
    registry *r = reg_hold(w);
    size_t i;
    int any = 0;
    for (i = 0; r != NULL && i < r->n; i++)
        any |= r->items[i].scheme == PHG_WEBHOOK_GOOGLE_HEALTH;
    reg_drop(r);
    return any;
}

void gw_webhooks_refresh_keyset(gw_webhooks *w)
{
    phg_webhook_keyset *ks = NULL, *old;
    char err[256], where[GW_PATH_MAX], ca[GW_PATH_MAX];
    int64_t now = gw_wall_ms();
    registry *r;
    size_t i;
    if (w == NULL)
        return;
    if (now - atomic_load(&w->keyset_at_ms) < KEYSET_MIN_INTERVAL_MS)
        return;
    atomic_store(&w->keyset_at_ms, now);
    pthread_mutex_lock(&w->cfg_mu);
    snprintf(where, sizeof where, "%s", w->cfg->wh_google_keyset);
    snprintf(ca, sizeof ca, "%s", w->cfg->wh_ca_file);
    pthread_mutex_unlock(&w->cfg_mu);
    if (phg_webhook_keyset_load(where, ca[0] ? ca : NULL, &ks, err, sizeof err) != PHG_OK) {
        log_json(PHG_LOG_ERROR, "webhooks: the google-health keyset cannot be loaded",
                 json_pack("{s:s,s:s}", "from", where, "why", err));
        return;
    }
    pthread_mutex_lock(&w->ks_mu);
    old = w->keyset;
    w->keyset = ks;
    r = reg_hold(w);
    for (i = 0; r != NULL && i < r->n; i++) {
        if (r->items[i].scheme == PHG_WEBHOOK_GOOGLE_HEALTH)
            phg_webhook_source_set_keyset(r->items[i].src, ks);
    }
    pthread_mutex_unlock(&w->ks_mu);
    reg_drop(r);
    phg_webhook_keyset_free(old);
    log_json(PHG_LOG_INFO, "webhooks: google-health keyset loaded",
             json_pack("{s:s,s:i}", "from", where, "keys", (int)phg_webhook_keyset_count(ks)));
}

/* ---- replay memory ------------------------------------------------------------------------------- */

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static size_t replay_key(const char *source, const char *msg_id, char *buf, size_t cap)
{
    size_t a = strlen(source), b = strlen(msg_id);
    if (a + 1 + b > cap)
        return 0;
    memcpy(buf, source, a);
    buf[a] = '\0';
    memcpy(buf + a + 1, msg_id, b);
    return a + 1 + b;
}

/* Unlink e from its hash chain (the shard is locked). */
static void replay_unhash(replay_shard *sh, replay_entry *e)
{
    replay_entry **pp = &sh->table[e->hash % sh->buckets];
    while (*pp != NULL && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp == e)
        *pp = e->hnext;
}

/* Drop at most `budget` entries from the head: expired ones, or any while the
 * shard is over its cap. Bounded work per call: expiry never stalls a request. */
static void replay_expire(replay_shard *sh, int64_t now, int budget)
{
    while (budget-- > 0 && sh->qhead != NULL &&
           (sh->qhead->expires_ms <= now || sh->n >= REPLAY_PER_SHARD)) {
        replay_entry *e = sh->qhead;
        sh->qhead = e->qnext;
        if (sh->qhead == NULL)
            sh->qtail = NULL;
        replay_unhash(sh, e);
        sh->n--;
        free(e);
    }
}

static int replay_local_get(gw_webhooks *w, const char *key, size_t klen, int64_t now,
                            char event_id[PHG_WH_EVENT_ID_LEN + 1])
{
    uint64_t h = fnv1a(key, klen);
    replay_shard *sh = &w->shards[h % REPLAY_SHARDS];
    replay_entry *e;
    int found = 0;
    pthread_mutex_lock(&sh->mu);
    for (e = sh->table[(h / REPLAY_SHARDS) % sh->buckets]; e != NULL; e = e->hnext) {
        if (e->hash == h / REPLAY_SHARDS && e->key_len == klen && memcmp(e->key, key, klen) == 0 &&
            e->expires_ms > now) {
            memcpy(event_id, e->event_id, sizeof e->event_id);
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return found;
}

static void replay_local_put(gw_webhooks *w, const char *key, size_t klen, const char *event_id,
                             int64_t expires)
{
    uint64_t h = fnv1a(key, klen);
    replay_shard *sh = &w->shards[h % REPLAY_SHARDS];
    replay_entry *e = malloc(sizeof *e + klen);
    if (e == NULL)
        return; /* the inbox's unique (source, msg_id) still holds */
    e->hash = h / REPLAY_SHARDS;
    e->expires_ms = expires;
    snprintf(e->event_id, sizeof e->event_id, "%s", event_id);
    e->key_len = klen;
    memcpy(e->key, key, klen);
    e->qnext = NULL;
    pthread_mutex_lock(&sh->mu);
    replay_expire(sh, gw_wall_ms(), 4);
    e->hnext = sh->table[e->hash % sh->buckets];
    sh->table[e->hash % sh->buckets] = e;
    if (sh->qtail)
        sh->qtail->qnext = e;
    else
        sh->qhead = e;
    sh->qtail = e;
    sh->n++;
    pthread_mutex_unlock(&sh->mu);
}

/* Redis: one connection per thread, made on first use; any failure drops it
 * (the next call connects again) and counts as "not known" (the inbox's
 * unique (source, msg_id) is the backstop). */
static _Thread_local redisContext *tl_redis;
/* Each thread's connection is also its value of this key, whose destructor
 * frees it when the thread ends: the connections of the server's workers
 * (which call seen/remember) are not left behind when they exit. */
static pthread_key_t redis_tls_key;
static pthread_once_t redis_tls_once = PTHREAD_ONCE_INIT;

static void redis_tls_free(void *c)
{
    redisFree(c);
}

static void redis_tls_make(void)
{
    (void)pthread_key_create(&redis_tls_key, redis_tls_free);
}

/* This thread's connection becomes c (the previous one is freed). */
static void tl_redis_set(redisContext *c)
{
    if (tl_redis != NULL && tl_redis != c)
        redisFree(tl_redis);
    tl_redis = c;
    pthread_once(&redis_tls_once, redis_tls_make);
    (void)pthread_setspecific(redis_tls_key, c);
}
/* After a failure no thread tries Redis for a second: a request must not
 * wait for a connect timeout each time while it is down. */
static atomic_llong redis_down_until_ms;

static void redis_failed(void)
{
    tl_redis_set(NULL);
    atomic_store(&redis_down_until_ms, gw_wall_ms() + 1000);
}

static redisContext *redis_connect(const char *host, int port)
{
    struct timeval connect_tv = {0, 50000}, cmd_tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout(host, port, connect_tv);
    if (c == NULL || c->err != 0) {
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, cmd_tv);
    return c;
}

static redisContext *redis_conn(gw_webhooks *w)
{
    char host[256];
    int port;
    pthread_mutex_lock(&w->cfg_mu);
    snprintf(host, sizeof host, "%s", w->cfg->wh_redis_host);
    port = w->cfg->wh_redis_port;
    pthread_mutex_unlock(&w->cfg_mu);
    if (host[0] == '\0')
        return NULL;
    if (tl_redis != NULL && tl_redis->err == 0)
        return tl_redis;
    if (gw_wall_ms() < atomic_load(&redis_down_until_ms))
        return NULL;
    tl_redis_set(redis_connect(host, port));
    if (tl_redis == NULL)
        redis_failed();
    return tl_redis;
}

/*
 * One command on the replay memory's Redis, NULL when it cannot answer (the
 * caller then goes on without it). Every key has the hash tag {wh}: on a
 * Redis Cluster they all live on one node, and the first MOVED tells which;
 * this thread's connection then goes there.
 */
static redisReply *redis_run(gw_webhooks *w, const char *fmt, const char *a, const char *b,
                             long long n)
{
    int tries;
    for (tries = 0; tries < 2; tries++) {
        redisContext *c = redis_conn(w);
        redisReply *rep;
        char host[256];
        int port;
        if (c == NULL)
            return NULL;
        rep = b == NULL ? redisCommand(c, fmt, a) : redisCommand(c, fmt, a, b, n);
        if (rep == NULL) {
            redis_failed();
            return NULL;
        }
        if (rep->type == REDIS_REPLY_ERROR && rep->len > 6 && strncmp(rep->str, "MOVED ", 6) == 0 &&
            sscanf(rep->str, "MOVED %*d %255[^:]:%d", host, &port) == 2) {
            freeReplyObject(rep);
            tl_redis_set(redis_connect(host, port));
            if (tl_redis == NULL) {
                redis_failed();
                return NULL;
            }
            continue;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            freeReplyObject(rep);
            redis_failed();
            return NULL;
        }
        return rep;
    }
    return NULL;
}

static void redis_key(const char *source, const char *msg_id, char *out, size_t cap)
{
    snprintf(out, cap, "phigate:{wh}:%s:%s", source, msg_id);
}

int gw_webhooks_seen(gw_webhooks *w, const char *source, const char *msg_id,
                     char event_id[PHG_WH_EVENT_ID_LEN + 1])
{
    char key[PHG_WH_SOURCE_MAX + PHG_WH_MSG_ID_MAX + 2], rk[300 + PHG_WH_MSG_ID_MAX];
    size_t klen = replay_key(source, msg_id, key, sizeof key);
    int64_t now = gw_wall_ms();
    redisReply *rep;
    if (w == NULL || klen == 0)
        return 0;
    if (replay_local_get(w, key, klen, now, event_id))
        return 1;
    redis_key(source, msg_id, rk, sizeof rk);
    rep = redis_run(w, "GET %s", rk, NULL, 0);
    if (rep != NULL && rep->type == REDIS_REPLY_STRING && rep->len == PHG_WH_EVENT_ID_LEN) {
        memcpy(event_id, rep->str, PHG_WH_EVENT_ID_LEN);
        event_id[PHG_WH_EVENT_ID_LEN] = '\0';
        freeReplyObject(rep);
        return 1;
    }
    /* not known (or Redis did not answer: the store's unique key still holds) */
    if (rep != NULL)
        freeReplyObject(rep);
    return 0;
}

void gw_webhooks_remember(gw_webhooks *w, const char *source, const char *msg_id,
                          const char *event_id, int64_t ttl_ms)
{
    char key[PHG_WH_SOURCE_MAX + PHG_WH_MSG_ID_MAX + 2], rk[300 + PHG_WH_MSG_ID_MAX];
    size_t klen = replay_key(source, msg_id, key, sizeof key);
    redisReply *rep;
    if (w == NULL || klen == 0 || ttl_ms <= 0)
        return;
    replay_local_put(w, key, klen, event_id, gw_wall_ms() + ttl_ms);
    redis_key(source, msg_id, rk, sizeof rk);
    rep = redis_run(w, "SET %s %s NX PX %lld", rk, event_id, (long long)ttl_ms);
    if (rep != NULL)
        freeReplyObject(rep);
}

int gw_webhooks_redis(gw_webhooks *w)
{
    int on;
    if (w == NULL)
        return 0;
    pthread_mutex_lock(&w->cfg_mu);
    on = w->cfg->wh_redis_host[0] != '\0';
    pthread_mutex_unlock(&w->cfg_mu);
    return on;
}

/* ---- deciding about a request ----------------------------------------------------------------- */

static void refuse(gw_wh_decision *d, int status, const char *code, const char *msg)
{
    d->kind = GW_WH_REPLY;
    d->status = status;
    d->action = "webhook.refused";
    snprintf(d->code, sizeof d->code, "%s", code);
    snprintf(d->message, sizeof d->message, "%s", msg);
}

static void handshake(gw_wh_decision *d, int status, json_t *body)
{
    d->kind = GW_WH_REPLY;
    d->status = status;
    d->action = "webhook.handshake";
    snprintf(d->code, sizeof d->code, "handshake");
    if (body != NULL) {
        d->body = json_dumps(body, JSON_COMPACT);
        d->body_len = d->body ? strlen(d->body) : 0;
        d->content_type = "application/json";
        json_decref(body);
    }
}

void gw_wh_decision_clear(gw_wh_decision *d)
{
    free(d->body);
    d->body = NULL;
    d->body_len = 0;
    /* the source's table: d->source is not used past this */
    reg_drop(d->hold);
    d->hold = NULL;
    d->source = NULL;
}

/* A handshake's query parameter: 1 found once, 0 absent, -1 malformed,
 * repeated (which one would the vendor mean?), or holding a control byte. */
static int query_get(const char *q, const char *name, char *out, size_t cap)
{
    int count = 0, rc = gw_query_param(q, name, out, cap, &count);
    size_t i;
    if (rc <= 0)
        return rc < 0 ? -1 : 0;
    if (count > 1)
        return -1;
    for (i = 0; out[i] != '\0'; i++) {
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
            return -1;
    }
    return 1;
}

static const char *header_get(const phg_webhook_header *h, size_t n, const char *name,
                              size_t *len, int *count)
{
    size_t i, nl = strlen(name);
    const char *v = NULL;
    *count = 0;
    for (i = 0; i < n; i++) {
        if (h[i].name_len == nl && strncasecmp(h[i].name, name, nl) == 0) {
            (*count)++;
            v = h[i].value;
            *len = h[i].value_len;
        }
    }
    return v;
}

/* A small JSON body whose member `key` is the string `want`, and nothing
 * else of note: the vendors' handshake bodies. */
static int small_json_is(const uint8_t *body, size_t len, const char *key, const char *want)
{
    json_t *v, *m;
    int ok;
    if (len == 0 || len > HANDSHAKE_BODY_MAX)
        return 0;
    v = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, NULL);
    if (v == NULL)
        return 0;
    m = json_object_get(v, key);
    ok = json_is_object(v) && json_is_string(m) && strcmp(json_string_value(m), want) == 0;
    json_decref(v);
    return ok;
}

/* The answer to each refusal of the verifier (the code is the reason's name). */
static const struct {
    phg_webhook_reason reason;
    int status;
    const char *message;
} refusals[] = {
    {PHG_WH_TOO_LARGE, 413, "the body is over this source's limit"},
    {PHG_WH_MALFORMED_HEADER, 400, "a signature or timestamp header is malformed"},
    {PHG_WH_REPEATED_HEADER, 400, "a signature or timestamp header appears more than once"},
    {PHG_WH_MISSING_HEADER, 400, "a required webhook header is missing"},
    {PHG_WH_HEADER_TOO_LONG, 400, "a webhook header is over its length limit"},
    {PHG_WH_TOO_MANY_SIGNATURES, 400, "the signature header lists too many signatures"},
    {PHG_WH_TIMESTAMP_OUTSIDE, 401, "the signed timestamp is outside the tolerance window"},
    {PHG_WH_NO_SECRET, 401, "this source has no secret valid now"},
    {PHG_WH_NO_SIGNATURE, 401, "no signature of a version this source checks"},
};

static void refusal_of(gw_wh_decision *d, const phg_webhook_result *res)
{
    size_t i;
    for (i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        if (refusals[i].reason == res->reason) {
            refuse(d, refusals[i].status, phg_webhook_reason_name(res->reason),
                   refusals[i].message);
            return;
        }
    }
    refuse(d, 401, phg_webhook_reason_name(res->reason), "the webhook's signature does not verify");
}

void gw_webhooks_decide(gw_webhooks *w, const char *method, const char *path, const char *query,
                        const phg_webhook_header *headers, size_t n_headers, const uint8_t *body,
                        size_t body_len, int64_t now_ms, gw_wh_decision *d)
{
    const char *rest = path + strlen("/webhooks/"), *slash;
    const gw_wh_source *s;
    char token[512];
    size_t nlen;
    phg_status st;

    memset(d, 0, sizeof *d);
    d->result.secret_index = -1;
    if (strncmp(path, "/webhooks/", 10) != 0) {
        refuse(d, 404, "unknown_source", "no webhook source of that name");
        return;
    }
    slash = strchr(rest, '/');
    nlen = slash ? (size_t)(slash - rest) : strlen(rest);
    if (nlen == 0 || nlen > PHG_WH_SOURCE_MAX) {
        refuse(d, 404, "unknown_source", "no webhook source of that name");
        return;
    }
    memcpy(d->source_name, rest, nlen);
    d->source_name[nlen] = '\0';
    if (!phg_webhook_source_name_valid(d->source_name)) {
        d->source_name[0] = '\0';
        refuse(d, 404, "unknown_source", "no webhook source of that name");
        return;
    }
    token[0] = '\0';
    if (slash != NULL) {
        size_t tl = strlen(slash + 1);
        if (tl == 0 || tl >= sizeof token || strchr(slash + 1, '/') != NULL) {
            refuse(d, 404, "unknown_source", "no webhook source of that name");
            return;
        }
        memcpy(token, slash + 1, tl + 1);
    }
    s = gw_webhooks_find_held(w, d->source_name, &d->hold);
    if (s == NULL) {
        refuse(d, 404, "unknown_source", "no webhook source of that name");
        phg_wipe(token, sizeof token);
        return;
    }
    d->source = s;
    /* only unsigned sources take a path token; for them it is required, and
     * a wrong one answers as an unknown source does */
    if ((s->scheme == PHG_WEBHOOK_UNSIGNED) != (token[0] != '\0')) {
        refuse(d, 404, "unknown_source", "no webhook source of that name");
        phg_wipe(token, sizeof token);
        return;
    }

    if (strcmp(method, "GET") == 0) {
        /* a token of a configured source may be as long as its file (4 KiB) */
        char vt[SECRET_FILE_MAX + 1], ch[512];
        if (s->scheme == PHG_WEBHOOK_OURA) {
            int a = query_get(query, "verification_token", vt, sizeof vt);
            int b = query_get(query, "challenge", ch, sizeof ch);
            if (a != 1 || b != 1) {
                refuse(d, 400, "bad_handshake",
                       "Oura's handshake needs verification_token and challenge, once each");
            } else if (s->verify_token == NULL ||
                       !phg_webhook_token_equal(vt, strlen(vt), s->verify_token,
                                                s->verify_token_len)) {
                refuse(d, 401, "bad_verification_token", "the verification token does not match");
            } else {
                handshake(d, 200, json_pack("{s:s}", "challenge", ch));
            }
            phg_wipe(vt, sizeof vt);
            return;
        }
        if (s->scheme == PHG_WEBHOOK_FITBIT) {
            int a = query_get(query, "verify", vt, sizeof vt);
            if (a == 1 && s->verify_token != NULL &&
                phg_webhook_token_equal(vt, strlen(vt), s->verify_token, s->verify_token_len)) {
                handshake(d, 204, NULL);
            } else {
                /* Fitbit sends a wrong code on purpose and expects 404 */
                refuse(d, 404, "bad_verification_code", "the verification code does not match");
                d->action = "webhook.handshake";
            }
            phg_wipe(vt, sizeof vt);
            return;
        }
        refuse(d, 405, "method_not_allowed", "webhooks are POSTed");
        return;
    }
    if (strcmp(method, "HEAD") == 0) {
        phg_webhook_result res;
        /* Withings checks its callback URL with HEAD */
        if (s->scheme == PHG_WEBHOOK_UNSIGNED &&
            phg_webhook_verify_token(s->src, token, strlen(token), NULL, 0, now_ms, &res) ==
                PHG_OK) {
            handshake(d, 200, NULL);
        } else {
            refuse(d, s->scheme == PHG_WEBHOOK_UNSIGNED ? 404 : 405,
                   s->scheme == PHG_WEBHOOK_UNSIGNED ? "unknown_source" : "method_not_allowed",
                   s->scheme == PHG_WEBHOOK_UNSIGNED ? "no webhook source of that name"
                                                     : "webhooks are POSTed");
        }
        phg_wipe(token, sizeof token);
        return;
    }
    if (strcmp(method, "POST") != 0) {
        refuse(d, 405, "method_not_allowed", "webhooks are POSTed");
        phg_wipe(token, sizeof token);
        return;
    }

    /* vendor handshakes that come as POSTs */
    if (s->scheme == PHG_WEBHOOK_POLAR && small_json_is(body, body_len, "event", "PING")) {
        /* AccessLink pings before the subscriber holds the key: not signed */
        handshake(d, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (s->scheme == PHG_WEBHOOK_GOOGLE_HEALTH &&
        small_json_is(body, body_len, "type", "verification")) {
        size_t alen = 0;
        int count;
        const char *auth = header_get(headers, n_headers, "authorization", &alen, &count);
        if (count == 1 && phg_webhook_check_authorization(s->src, auth, alen, now_ms))
            handshake(d, 201, json_pack("{s:s}", "status", "verified"));
        else
            refuse(d, 401, "bad_authorization", "the Authorization value is not the registered one");
        if (strcmp(d->action, "webhook.refused") == 0)
            d->action = "webhook.handshake";
        return;
    }

    if (s->scheme == PHG_WEBHOOK_UNSIGNED) {
        st = phg_webhook_verify_token(s->src, token, strlen(token), body, body_len, now_ms,
                                      &d->result);
        phg_wipe(token, sizeof token);
        if (st != PHG_OK) {
            if (d->result.reason == PHG_WH_TOO_LARGE)
                refusal_of(d, &d->result);
            else
                refuse(d, 404, "unknown_source", "no webhook source of that name");
            return;
        }
    } else {
        st = phg_webhook_verify(s->src, headers, n_headers, body, body_len, now_ms, &d->result);
        if (st != PHG_OK) {
            if (d->result.reason == PHG_WH_UNKNOWN_KEY && w != NULL &&
                now_ms - atomic_load(&w->keyset_at_ms) >= KEYSET_MIN_INTERVAL_MS) {
                d->kind = GW_WH_REFRESH;
                return;
            }
            if (st == PHG_ERR_AUTH)
                refusal_of(d, &d->result);
            else
                refuse(d, 503, "unavailable", "the webhook could not be checked");
            return;
        }
    }
    d->kind = GW_WH_VERIFIED;
    d->status = 200;
}

/* ---- delivery -------------------------------------------------------------------------------------- */

static void audit_delivery(gw_webhooks *w, const phg_wh_event *ev, const char *action,
                           const char *outcome, int status, int64_t attempts, const char *error)
{
    phg_audit_event a;
    char resource[128], details[640];
    json_t *dj;
    char *dtext;
    if (w->audit == NULL)
        return;
    memset(&a, 0, sizeof a);
    snprintf(resource, sizeof resource, "webhook:%s", ev->source);
    dj = json_pack("{s:s,s:s,s:i,s:I,s:s}", "event_id", ev->id, "msg_id", ev->msg_id, "status",
                   status, "attempts", (json_int_t)attempts, "error", error ? error : "");
    dtext = dj ? json_dumps(dj, JSON_COMPACT) : NULL;
    json_decref(dj);
    snprintf(details, sizeof details, "%s", dtext ? dtext : "{}");
    free(dtext);
    a.request_id = ev->request_id;
    a.key_id = "";
    a.user_id = "";
    a.role = "";
    a.action = action;
    a.outcome = outcome;
    a.resource = resource;
    a.subject = "";
    a.ip = "";
    a.details_json = details;
    if (phg_audit_append_async(w->audit, &a, NULL, NULL) != PHG_OK)
        log_json(PHG_LOG_ERROR, "audit: a webhook delivery record was refused",
                 json_pack("{s:s}", "event_id", ev->id));
}

static int64_t backoff_ms(const gw_config *cfg, int64_t attempts)
{
    int64_t d = cfg->wh_backoff_ms > 0 ? cfg->wh_backoff_ms : 1000, cap = cfg->wh_backoff_max_ms;
    uint32_t r = 0;
    int64_t i;
    for (i = 1; i < attempts && d < cap; i++)
        d *= 2;
    if (cap > 0 && d > cap)
        d = cap;
    /* "equal jitter": half fixed, half random, so retries spread out but
     * never come sooner than half the step */
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        r = (uint32_t)gw_wall_ms();
    return d / 2 + (int64_t)(r % (uint32_t)(d / 2 + 1));
}

/* One delivery attempt: its outcome into rep (reported with the rest of the
 * batch in one transaction) and err. */
static void deliver_to(const gw_wh_source *s, phg_httpc *hc, const gw_config *cfg,
                       phg_wh_event *ev, phg_wh_report *rep, char err[PHG_HTTPC_ERR_MAX])
{
    char h[9][400];
    const char *hdrs[9];
    phg_httpc_request req;
    phg_httpc_response resp;
    int64_t now, attempts = ev->attempts + 1;
    phg_status st;
    int status = 0;

    memset(rep, 0, sizeof *rep);
    rep->id = ev->id;
    rep->error = err;
    err[0] = '\0';
    if (s == NULL) {
        /* the source was removed: nowhere to deliver; replayable if it returns */
        rep->state = PHG_WH_EVENT_DEAD;
        rep->at_ms = gw_wall_ms();
        snprintf(err, PHG_HTTPC_ERR_MAX, "the source no longer exists");
        return;
    }
    snprintf(h[0], sizeof h[0], "Content-Type: %s",
             ev->content_type[0] ? ev->content_type : "application/octet-stream");
    snprintf(h[1], sizeof h[1], "X-Phigate-Event-Id: %s", ev->id);
    snprintf(h[2], sizeof h[2], "X-Phigate-Webhook-Source: %s", ev->source);
    snprintf(h[3], sizeof h[3], "X-Phigate-Webhook-Scheme: %s", phg_webhook_scheme_name(s->scheme));
    snprintf(h[4], sizeof h[4], "X-Phigate-Webhook-Verified: %s",
             ev->authenticated ? "signature" : "unauthenticated-origin");
    snprintf(h[5], sizeof h[5], "X-Phigate-Webhook-Msg-Id: %s", ev->msg_id);
    snprintf(h[6], sizeof h[6], "X-Phigate-Webhook-Attempt: %lld", (long long)attempts);
    snprintf(h[7], sizeof h[7], "X-Phigate-Webhook-Received-At: %lld", (long long)ev->received_ms);
    snprintf(h[8], sizeof h[8], "X-Request-Id: %s", ev->request_id);
    for (int i = 0; i < 9; i++)
        hdrs[i] = h[i];
    memset(&req, 0, sizeof req);
    req.method = "POST";
    req.url = s->deliver_to;
    req.headers = hdrs;
    req.n_headers = ev->request_id[0] ? 9 : 8;
    req.body = ev->body;
    req.body_len = ev->body_len;
    req.timeout_ms = cfg->wh_timeout_ms;
    req.max_response = 64 * 1024;
    st = phg_httpc_do(hc, &req, &resp, err, PHG_HTTPC_ERR_MAX);
    now = gw_wall_ms();
    rep->at_ms = now;
    if (st == PHG_OK) {
        status = resp.status;
        phg_httpc_response_free(&resp);
        rep->http_status = status;
        if (status >= 200 && status < 300) {
            rep->state = PHG_WH_EVENT_DELIVERED;
            err[0] = '\0';
            return;
        }
        snprintf(err, PHG_HTTPC_ERR_MAX, "the upstream answered %d", status);
    } else if (err[0] == '\0') {
        snprintf(err, PHG_HTTPC_ERR_MAX, "%s", phg_strerror(st));
    }
    if (attempts >= cfg->wh_max_attempts || now - ev->received_ms >= cfg->wh_max_age_s * 1000) {
        rep->state = PHG_WH_EVENT_DEAD;
        return;
    }
    rep->state = PHG_WH_EVENT_PENDING;
    rep->next_ms = now + backoff_ms(cfg, attempts);
}

/* The source is held for the attempt: a reload meanwhile cannot free it. */
static void deliver_one(gw_webhooks *w, phg_httpc *hc, const gw_config *cfg, phg_wh_event *ev,
                        phg_wh_report *rep, char err[PHG_HTTPC_ERR_MAX])
{
    void *hold = NULL;
    const gw_wh_source *s = gw_webhooks_find_held(w, ev->source, &hold);
    deliver_to(s, hc, cfg, ev, rep, err);
    gw_webhooks_release(hold);
}

int64_t gw_webhooks_handoff_lease(gw_webhooks *w, int64_t received_ms)
{
    int64_t lease = 0;
    if (w == NULL)
        return 0;
    pthread_mutex_lock(&w->mu);
    /* room left (with slack for the requests in flight): lease it to us */
    if (!w->stop && w->jn < JOBS_MAX / 2 && w->jbytes < JOBS_BYTES_MAX / 2) {
        pthread_mutex_lock(&w->cfg_mu);
        lease = received_ms + HANDOFF_LEASE_MS + w->cfg->wh_timeout_ms;
        pthread_mutex_unlock(&w->cfg_mu);
    }
    pthread_mutex_unlock(&w->mu);
    return lease;
}

/* A lease no deliverer of ours will use (stopping, the queue full, out of
 * memory): handed back to the store, due now, so that a claim (here or on
 * another instance) takes the event at once, not when the lease ends. */
static void hand_back(gw_webhooks *w, const char *event_id)
{
    phg_wh_report rep;
    memset(&rep, 0, sizeof rep);
    rep.id = event_id;
    rep.state = PHG_WH_EVENT_PENDING;
    rep.at_ms = rep.next_ms = gw_wall_ms();
    rep.not_attempted = 1;
    rep.error = "";
    (void)phg_wh_inbox_report_many(w->inbox, &rep, 1);
}

void gw_webhooks_handoff(gw_webhooks *w, const phg_wh_event_in *in, const char *event_id)
{
    job *j;
    int stopping;
    if (w == NULL || in->due_ms == 0)
        return; /* not leased to us: a claim takes it */
    j = calloc(1, sizeof *j);
    if (j == NULL || (in->body_len > 0 && (j->ev.body = malloc(in->body_len)) == NULL)) {
        free(j);
        hand_back(w, event_id);
        gw_webhooks_kick(w);
        return;
    }
    snprintf(j->ev.id, sizeof j->ev.id, "%s", event_id);
    snprintf(j->ev.source, sizeof j->ev.source, "%s", in->source);
    snprintf(j->ev.msg_id, sizeof j->ev.msg_id, "%s", in->msg_id);
    snprintf(j->ev.request_id, sizeof j->ev.request_id, "%s", in->request_id ? in->request_id : "");
    snprintf(j->ev.content_type, sizeof j->ev.content_type, "%s",
             in->content_type ? in->content_type : "");
    j->ev.authenticated = in->authenticated;
    j->ev.secret_index = in->secret_index;
    j->ev.signed_ts_s = in->signed_ts_s;
    j->ev.received_ms = in->received_ms;
    j->ev.state = PHG_WH_EVENT_PENDING;
    j->ev.next_attempt_ms = in->due_ms;
    j->ev.body_len = in->body_len;
    if (in->body_len > 0)
        memcpy(j->ev.body, in->body, in->body_len);
    pthread_mutex_lock(&w->mu);
    if (w->stop || w->jn >= JOBS_MAX || in->body_len > JOBS_BYTES_MAX - w->jbytes) {
        /* stopping (the deliverers are gone or going: release_jobs has
         * handed back what was queued before) or full */
        stopping = w->stop;
        pthread_mutex_unlock(&w->mu);
        phg_wipe(j->ev.body, j->ev.body_len);
        free(j->ev.body);
        free(j);
        hand_back(w, event_id);
        if (!stopping)
            gw_webhooks_kick(w);
        return;
    }
    if (w->jtail)
        w->jtail->next = j;
    else
        w->jhead = j;
    w->jtail = j;
    w->jn++;
    w->jbytes += in->body_len;
    w->kicks++;
    /* the first wakes a deliverer, which lingers to gather a batch; a full
     * batch wakes another */
    if (w->jn == 1 || w->jn % BATCH_MAX == 0)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Up to max handed-over events (under mu), into evs (malloc'd array), with
 * at most TAKE_BYTES_MAX of bodies (at least one event). */
static size_t take_jobs(gw_webhooks *w, phg_wh_event **evs, size_t max)
{
    size_t n = 0, bytes = 0;
    *evs = NULL;
    if (w->jn == 0)
        return 0;
    *evs = calloc(max, sizeof **evs);
    if (*evs == NULL)
        return 0;
    while (n < max && w->jhead != NULL &&
           (n == 0 ||
            (bytes < TAKE_BYTES_MAX && w->jhead->ev.body_len <= TAKE_BYTES_MAX - bytes))) {
        job *j = w->jhead;
        w->jhead = j->next;
        if (w->jhead == NULL)
            w->jtail = NULL;
        w->jn--;
        w->jbytes -= j->ev.body_len;
        bytes += j->ev.body_len;
        (*evs)[n++] = j->ev;
        free(j);
    }
    return n;
}

/* Stopping: hand the leases of events nobody tried back to the store, due
 * now, so the next start delivers them at once (not after the lease). */
static void release_jobs(gw_webhooks *w)
{
    for (;;) {
        phg_wh_event *evs;
        phg_wh_report reps[BATCH_MAX];
        size_t n, i;
        pthread_mutex_lock(&w->mu);
        n = take_jobs(w, &evs, BATCH_MAX);
        pthread_mutex_unlock(&w->mu);
        if (n == 0)
            break;
        for (i = 0; i < n; i++) {
            memset(&reps[i], 0, sizeof reps[i]);
            reps[i].id = evs[i].id;
            reps[i].state = PHG_WH_EVENT_PENDING;
            reps[i].at_ms = gw_wall_ms();
            reps[i].next_ms = reps[i].at_ms;
            reps[i].not_attempted = 1;
            reps[i].error = "";
        }
        (void)phg_wh_inbox_report_many(w->inbox, reps, n);
        for (i = 0; i < n; i++)
            phg_wipe(evs[i].body, evs[i].body_len);
        phg_wh_events_free(evs, n);
    }
}

/* The batch's outcomes are stored: count them, audit them. */
static void after_reports(gw_webhooks *w, const phg_wh_event *evs, const phg_wh_report *reps,
                          size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        const phg_wh_report *r = &reps[i];
        int64_t attempts = evs[i].attempts + 1;
        if (r->result != PHG_OK)
            continue; /* replayed or changed meanwhile, or the store failed: the lease
                       * runs out and the event is tried again */
        if (r->state == PHG_WH_EVENT_DELIVERED) {
            /* not audited one by one: the acceptance is (webhook.accepted,
             * durable before the sender's 200), and the event's row keeps
             * when and how it was delivered (GET /admin/webhooks/events);
             * a second record per event would halve what the audit writer
             * can take */
            atomic_fetch_add(&w->delivered, 1);
        } else if (r->state == PHG_WH_EVENT_DEAD) {
            atomic_fetch_add(&w->dead, 1);
            audit_delivery(w, &evs[i], "webhook.dead", "error", r->http_status, attempts,
                           r->error);
            log_json(PHG_LOG_WARN, "webhooks: an event is dead-lettered",
                     json_pack("{s:s,s:s,s:I,s:s}", "event_id", evs[i].id, "source",
                               evs[i].source, "attempts", (json_int_t)attempts, "why", r->error));
        } else {
            atomic_fetch_add(&w->retried, 1);
        }
    }
}

static void *deliver_main(void *arg)
{
    gw_webhooks *w = arg;
    phg_httpc *hc = NULL;
    gw_config *cfg = malloc(sizeof *cfg);
    char ca[GW_PATH_MAX];
    phg_wh_report *reps = calloc(BATCH_MAX, sizeof *reps);
    char(*errs)[PHG_HTTPC_ERR_MAX] = calloc(BATCH_MAX, sizeof *errs);
    if (cfg == NULL || reps == NULL || errs == NULL) {
        free(cfg);
        free(reps);
        free(errs);
        return NULL;
    }
    pthread_mutex_lock(&w->cfg_mu);
    memcpy(cfg, w->cfg, sizeof *cfg);
    pthread_mutex_unlock(&w->cfg_mu);
    snprintf(ca, sizeof ca, "%s", cfg->wh_ca_file);
    if (phg_httpc_new(ca[0] ? ca : NULL, &hc) != PHG_OK) {
        log_json(PHG_LOG_ERROR, "webhooks: a delivery thread cannot start (TLS setup failed)",
                 NULL);
        free(cfg);
        free(reps);
        free(errs);
        return NULL;
    }
    for (;;) {
        phg_wh_event *evs = NULL;
        size_t n = 0, i;
        uint64_t kicks;
        int64_t until;
        pthread_mutex_lock(&w->mu);
        if (w->stop) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        kicks = w->kicks;
        if (w->jn > 0 && w->jn < BATCH_MAX && !w->stop) {
            /* a few events: wait a moment for more, so that one report
             * transaction (one fsync) covers many deliveries */
            wait_ms(&w->cv, &w->mu, LINGER_MS);
        }
        /* the fast path first: events handed over in memory */
        n = take_jobs(w, &evs, BATCH_MAX);
        pthread_mutex_unlock(&w->mu);
        pthread_mutex_lock(&w->cfg_mu);
        memcpy(cfg, w->cfg, sizeof *cfg); /* SIGHUP may have changed the limits */
        pthread_mutex_unlock(&w->cfg_mu);
        if (n == 0 && phg_wh_inbox_claim(w->inbox, gw_wall_ms(), (int64_t)cfg->wh_timeout_ms + 5000,
                                         CLAIM_MAX, &evs, &n) != PHG_OK)
            n = 0;
        /* The attempts of a batch are reported together at its end, so the
         * batch stops before an attempt could outlast the lease of any of
         * its events (theirs, or the earliest of those tried): past a lease,
         * another deliverer may claim the event and deliver it again. */
        until = INT64_MAX;
        for (i = 0; i < n; i++) {
            int64_t limit = evs[i].next_attempt_ms < until ? evs[i].next_attempt_ms : until;
            pthread_mutex_lock(&w->mu);
            int stopping = w->stop;
            pthread_mutex_unlock(&w->mu);
            if (stopping || gw_wall_ms() + cfg->wh_timeout_ms + REPORT_SLACK_MS > limit)
                break;
            until = limit;
            deliver_one(w, hc, cfg, &evs[i], &reps[i], errs[i]);
        }
        if (i > 0) {
            (void)phg_wh_inbox_report_many(w->inbox, reps, i);
            after_reports(w, evs, reps, i);
        }
        if (i < n) {
            /* stopping, or no time left: the leases of what was not tried
             * go back, due now (those that have not run out already: such
             * an event may be another deliverer's by now) */
            size_t k, m = 0;
            int64_t now = gw_wall_ms();
            for (k = i; k < n; k++) {
                if (now >= evs[k].next_attempt_ms)
                    continue;
                memset(&reps[m], 0, sizeof reps[0]);
                reps[m].id = evs[k].id;
                reps[m].state = PHG_WH_EVENT_PENDING;
                reps[m].at_ms = reps[m].next_ms = now;
                reps[m].not_attempted = 1;
                reps[m].error = "";
                m++;
            }
            (void)phg_wh_inbox_report_many(w->inbox, reps, m);
        }
        phg_wh_events_free(evs, n);
        if (n == CLAIM_MAX || n == BATCH_MAX || i < n)
            continue;
        pthread_mutex_lock(&w->mu);
        if (!w->stop && w->kicks == kicks && w->jn == 0) {
            wait_ms(&w->cv, &w->mu, IDLE_WAIT_MS);
        }
        pthread_mutex_unlock(&w->mu);
    }
    phg_httpc_free(hc);
    free(cfg);
    free(reps);
    free(errs);
    return NULL;
}

/* Statistics for /metrics, polling the store's sources, purging. */
static void *house_main(void *arg)
{
    gw_webhooks *w = arg;
    int64_t last_poll = gw_wall_ms(), last_purge = 0, last_stats = 0;
    for (;;) {
        int64_t now;
        pthread_mutex_lock(&w->mu);
        if (w->stop) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        wait_ms(&w->house_cv, &w->mu, 250);
        pthread_mutex_unlock(&w->mu);
        now = gw_wall_ms();
        if (now - last_stats >= STATS_EVERY_MS) {
            phg_wh_inbox_stats st;
            last_stats = now;
            if (phg_wh_inbox_backlog_get(w->inbox, &st) == PHG_OK) {
                atomic_store(&w->st_pending, st.pending);
                atomic_store(&w->st_dead, st.dead);
                atomic_store(&w->st_delivered, st.delivered);
                atomic_store(&w->st_oldest_ms, st.oldest_pending_ms);
                atomic_store(&w->st_ok, 1);
            } else {
                atomic_store(&w->st_ok, 0);
            }
        }
        if (now - last_poll >= RELOAD_POLL_MS) {
            last_poll = now;
            if (store_changed(w))
                gw_webhooks_reload(w, NULL);
        }
        if (now - last_purge >= PURGE_EVERY_MS) {
            int64_t keep;
            size_t n = 0;
            last_purge = now;
            pthread_mutex_lock(&w->cfg_mu);
            keep = w->cfg->wh_keep_delivered_s;
            pthread_mutex_unlock(&w->cfg_mu);
            if (keep > 0)
                (void)phg_wh_inbox_purge(w->inbox, now - keep * 1000, 1000, &n);
        }
    }
    return NULL;
}

/* ---- start and stop ---------------------------------------------------------------------------- */

int gw_webhooks_start(const gw_config *cfg, phg_store *store, const phg_masterkeys *mk,
                      phg_keyring *keyring, phg_audit *audit, gw_webhooks **out, char *err,
                      size_t err_len)
{
    gw_webhooks *w = calloc(1, sizeof *w);
    phg_status st;
    int i;
    *out = NULL;
    if (w == NULL || (w->cfg = malloc(sizeof *w->cfg)) == NULL) {
        free(w);
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    memcpy(w->cfg, cfg, sizeof *cfg);
    w->store = store;
    w->mk = mk;
    w->keyring = keyring;
    w->audit = audit;
    pthread_mutex_init(&w->cfg_mu, NULL);
    pthread_mutex_init(&w->reg_mu, NULL);
    pthread_mutex_init(&w->ks_mu, NULL);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->house_cv, NULL);
    atomic_store(&w->keyset_at_ms, 0);
    for (i = 0; i < REPLAY_SHARDS; i++) {
        pthread_mutex_init(&w->shards[i].mu, NULL);
        w->shards[i].buckets = 4096;
        w->shards[i].table = calloc(w->shards[i].buckets, sizeof *w->shards[i].table);
        if (w->shards[i].table == NULL) {
            snprintf(err, err_len, "out of memory");
            gw_webhooks_stop(w);
            return -1;
        }
    }
    st = phg_wh_inbox_open(store, keyring, NULL, &w->inbox);
    if (st != PHG_OK) {
        snprintf(err, err_len, "the webhook inbox cannot be opened: %s", phg_strerror(st));
        gw_webhooks_stop(w);
        return -1;
    }
    if (reload(w, cfg, err, err_len) != 0) {
        gw_webhooks_stop(w);
        return -1;
    }
    if (any_google(w)) {
        gw_webhooks_refresh_keyset(w);
        /* a failed first fetch may be tried again by the first request */
        if (w->keyset == NULL)
            atomic_store(&w->keyset_at_ms, 0);
    }
    w->n_threads = cfg->wh_workers > 0 ? cfg->wh_workers : 1;
    w->threads = calloc((size_t)w->n_threads, sizeof *w->threads);
    if (w->threads == NULL) {
        snprintf(err, err_len, "out of memory");
        w->n_threads = 0;
        gw_webhooks_stop(w);
        return -1;
    }
    for (i = 0; i < w->n_threads; i++) {
        if (pthread_create(&w->threads[i], NULL, deliver_main, w) != 0) {
            w->n_threads = i;
            snprintf(err, err_len, "cannot start a delivery thread");
            gw_webhooks_stop(w);
            return -1;
        }
    }
    if (pthread_create(&w->house, NULL, house_main, w) == 0)
        w->house_started = 1;
    {
        registry *r = reg_hold(w);
        log_json(PHG_LOG_INFO, "webhooks: ready",
                 json_pack("{s:i,s:i}", "sources", r ? (int)r->n : 0, "delivery_threads",
                           w->n_threads));
        reg_drop(r);
    }
    *out = w;
    return 0;
}

void gw_webhooks_stop(gw_webhooks *w)
{
    int i;
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_cond_broadcast(&w->house_cv);
    pthread_mutex_unlock(&w->mu);
    for (i = 0; i < w->n_threads; i++)
        pthread_join(w->threads[i], NULL);
    if (w->house_started)
        pthread_join(w->house, NULL);
    free(w->threads);
    /* the loops have stopped: nothing is handed over any more; what was and
     * was not tried goes back to the store, due now */
    if (w->inbox != NULL)
        release_jobs(w);
    phg_wh_inbox_close(w->inbox);
    {
        job *j = w->jhead;
        while (j != NULL) {
            job *next = j->next;
            phg_wipe(j->ev.body, j->ev.body_len);
            free(j->ev.body);
            free(j);
            j = next;
        }
        w->jhead = w->jtail = NULL;
    }
    /* the gateway's reference: a table a request still holds is freed
     * with that request */
    reg_drop(w->reg);
    w->reg = NULL;
    phg_webhook_keyset_free(w->keyset);
    for (i = 0; i < REPLAY_SHARDS; i++) {
        replay_entry *e = w->shards[i].qhead;
        while (e != NULL) {
            replay_entry *n = e->qnext;
            free(e);
            e = n;
        }
        free(w->shards[i].table);
        pthread_mutex_destroy(&w->shards[i].mu);
    }
    tl_redis_set(NULL);
    free(w->cfg);
    pthread_mutex_destroy(&w->cfg_mu);
    pthread_mutex_destroy(&w->reg_mu);
    pthread_mutex_destroy(&w->ks_mu);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->house_cv);
    free(w);
}

/* ---- metrics --------------------------------------------------------------------------------------- */

void gw_webhooks_count(gw_webhooks *w, const char *what)
{
    if (w == NULL)
        return;
    if (strcmp(what, "accepted") == 0)
        atomic_fetch_add(&w->accepted, 1);
    else if (strcmp(what, "duplicate") == 0)
        atomic_fetch_add(&w->duplicates, 1);
    else if (strcmp(what, "handshake") == 0)
        atomic_fetch_add(&w->handshakes, 1);
    else
        atomic_fetch_add(&w->refused, 1);
}

void gw_webhooks_metrics(gw_webhooks *w, gw_wh_metrics *m)
{
    int64_t oldest;
    memset(m, 0, sizeof *m);
    if (w == NULL)
        return;
    m->accepted = atomic_load(&w->accepted);
    m->duplicates = atomic_load(&w->duplicates);
    m->refused = atomic_load(&w->refused);
    m->handshakes = atomic_load(&w->handshakes);
    m->delivered = atomic_load(&w->delivered);
    m->retried = atomic_load(&w->retried);
    m->dead = atomic_load(&w->dead);
    m->stats_ok = atomic_load(&w->st_ok);
    m->pending = atomic_load(&w->st_pending);
    m->dead_now = atomic_load(&w->st_dead);
    m->delivered_now = atomic_load(&w->st_delivered);
    oldest = atomic_load(&w->st_oldest_ms);
    m->lag_s = (m->pending > 0 && oldest > 0) ? (double)(gw_wall_ms() - oldest) / 1000.0 : 0.0;
    if (m->lag_s < 0)
        m->lag_s = 0;
}
