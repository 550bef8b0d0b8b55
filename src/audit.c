/*
 * audit.c: the audit log's writer (group commit, hash chain, checkpoints),
 * its reader (validated queries), its verifier, and partition retention
 * (archive, prune). Masking and logs are in audit_mask.c; the SQL in the
 * store engines.
 *
 * The record (docs/formats.md "Audit record") is stored as the exact bytes
 * that were hashed: the canonical JSON without `hash`, with `hash` in its own
 * column. A verifier hashes stored bytes, never a re-serialisation, so an
 * independent implementation needs no JSON canonicaliser to verify.
 *
 * The writer: appenders put records on a queue, under a lock that also hands
 * out the id (ULID) and timestamp, so queue order is id order. One writer
 * thread takes up to batch_max records, chains them (seq, prev, hash), and
 * commits them in one transaction: one fsync for the batch. Appenders wait on
 * a condition until their batch is durable. A failed commit fails the whole
 * batch and leaves the chain head where it was.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <zlib.h>

#include "phigate/audit.h"
#include "phigate/crypto.h"
#include "phi_internal.h"
#include "store_internal.h"
#include "text_internal.h"

#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"
#define CHECKPOINT_INFO "phigate/audit/checkpoint/v1"
#define CHECKPOINT_LABEL "phigate-checkpoint/v1"

typedef struct pending {
    struct pending *next;
    phg_audit_store_row row; /* id, ts_us, columns; chain/seq/hash/json by the writer */
    char resource[PHG_AUDIT_TEXT_MAX + 1];
    char role[17];
    char ip[PHG_AUDIT_TEXT_MAX + 1];
    char *details;     /* unused since details stay a tree; always NULL */
    json_t *details_obj; /* masked details, consumed by render_template */
    /* The record's canonical text, rendered by the appender's thread with
     * fixed-width stand-ins that the writer patches: id, prev, ts, and the
     * seq digit "0" (variable width: the writer splices there). */
    char *tmpl;
    size_t tmpl_len, off_id, off_prev, off_seq, off_ts;
    /* completion: a waiter sleeps on its own condition, so a commit wakes
     * exactly the appenders it made durable (one shared broadcast woke all
     * 64 of a busy gateway's threads per commit, most for nothing) */
    pthread_cond_t *wake;
    int done;
    phg_status status;
    phg_audit_done_fn done_fn;
    void *done_arg;
    int owned; /* async: the writer frees it */
} pending;

struct phg_audit {
    phg_store *store;
    phg_audit_options opts;
    char chain[PHG_AUDIT_CHAIN_MAX + 1];
    uint8_t key[32];
    const char *const *mask;
    /* queue */
    pthread_mutex_t lock;
    pthread_cond_t work;
    pending *head, *tail;
    size_t depth;
    phg_ulid last_id;
    int64_t last_ts_us;
    int stopping;
    pthread_t writer;
    int writer_running;
    /* chain state (writer thread only) */
    int64_t seq;
    char hash[65];
    uint64_t since_checkpoint;
    int64_t last_checkpoint_ms;
    int64_t checkpointed_seq;
    int head_stale; /* a commit failed: it may have happened anyway; re-read the head */
    int known_year, known_month; /* the month whose next month is prepared */
    /* stats (lock) */
    phg_audit_stats stats;
};

void phg_audit_options_init(phg_audit_options *o)
{
    assert(o != NULL);
    memset(o, 0, sizeof *o);
    o->queue_max = 65536;
    o->batch_max = 4096;
    o->checkpoint_every = 1000;
    o->checkpoint_interval_s = 60;
}

phg_status phg_audit_checkpoint_key(const phg_masterkeys *mk, uint8_t key[32])
{
    assert(mk != NULL && key != NULL);
    if (mk->n == 0)
        return PHG_ERR_MASTER_KEY;
    return phg_hkdf_sha256(mk->keys[0], PHG_FERNET_KEY_SIZE, NULL, 0,
                           (const uint8_t *)CHECKPOINT_INFO, strlen(CHECKPOINT_INFO), key, 32);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hex32(const uint8_t in[32], char out[65])
{
    static const char digits[] = "0123456789abcdef";
    int i;
    for (i = 0; i < 32; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[64] = '\0';
}

/* RFC 3339 UTC with microseconds. */
static void format_ts(int64_t us, char out[32])
{
    struct tm tm;
    time_t s = (time_t)(us / 1000000);
    size_t n;
    gmtime_r(&s, &tm);
    n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%06dZ", (int)(us % 1000000 + (us < 0 ? 1000000 : 0)) % 1000000);
}

static int chain_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0, i;
    if (n == 0 || n > PHG_AUDIT_CHAIN_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

/* Printable UTF-8 text of at most max bytes; NULL is fine (empty). */
static int text_ok(const char *s, size_t max)
{
    return phg_internal_text_ok(s, 0, max);
}

static int outcome_ok(const char *s)
{
    return s != NULL &&
           (strcmp(s, "success") == 0 || strcmp(s, "denied") == 0 || strcmp(s, "error") == 0);
}

/* ---- the record ---------------------------------------------------------------- */

/* audit_mask.c: parse and mask details into a tree. */
phg_status phg_internal_audit_mask_tree(const char *json, size_t len, const char *const *fields,
                                        json_t **out);

#define PH_ID "IIIIIIIIIIIIIIIIIIIIIIIIII"                                     /* 26 */
#define PH_PREV "PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP" /* 64 */
#define PH_TS "TTTTTTTTTTTTTTTTTTTTTTTTTTT"                                     /* 27 */

/*
 * Render the canonical text of a record without `hash` (jansson's compact
 * output with sorted keys; docs/formats.md gives the byte rules), with
 * stand-ins for what only the queue and the writer know.
 */
/* A growable text of fixed maximum (every part of a record is bounded). */
typedef struct tbuf {
    char *p;
    size_t len, cap;
    int failed;
} tbuf;

static void tb_put(tbuf *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t ncap = t->cap ? t->cap : 512;
        char *q;
        while (ncap < t->len + n + 1)
            ncap *= 2;
        q = realloc(t->p, ncap);
        if (q == NULL) {
            t->failed = 1;
            return;
        }
        t->p = q;
        t->cap = ncap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

#define TB_LIT(t, lit) tb_put((t), (lit), sizeof(lit) - 1)

/* A JSON string exactly as jansson writes it without flags: '"' and '\\'
 * escaped, \b \f \n \r \t, other control characters as \u00XX (upper
 * case), everything else (UTF-8, already validated) as is. */
static void tb_str(tbuf *t, const char *s)
{
    const char *run = s;
    tb_put(t, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        const char *esc = NULL;
        char seq[8];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        tb_put(t, run, (size_t)(s - run));
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            snprintf(seq, sizeof seq, "\\u%04X", (unsigned)c);
            esc = seq;
        }
        tb_put(t, esc, strlen(esc));
        run = s + 1;
    }
    tb_put(t, run, (size_t)(s - run));
    tb_put(t, "\"", 1);
}

/*
 * The canonical text of a record without `hash`: the members in sorted
 * order, no spaces, strings as jansson writes them, details by jansson with
 * sorted keys (docs/formats.md gives the byte rules; test_audit checks this
 * equals jansson's own rendering of the whole record). Written by hand
 * because it runs on every appender's thread for every request: jansson's
 * pack-and-dump of the whole record cost about as much as the rest of a
 * proxied request. Stand-ins mark what only the writer knows.
 */
static phg_status render_template(const phg_audit *a, pending *p)
{
    json_t *details = p->details_obj;
    char *dtext;
    size_t dsize;
    tbuf t = {NULL, 0, 0, 0};

    p->details_obj = NULL;
    if (details == NULL)
        return PHG_ERR_NOMEM;
    dsize = json_object_size(details);
    dtext = dsize == 0 ? NULL : json_dumps(details, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(details);
    if (dsize != 0 && dtext == NULL)
        return PHG_ERR_NOMEM;
    TB_LIT(&t, "{\"action\":");
    tb_str(&t, p->row.action);
    TB_LIT(&t, ",\"actor\":{\"key_id\":");
    tb_str(&t, p->row.key_id);
    TB_LIT(&t, ",\"role\":");
    tb_str(&t, p->role);
    TB_LIT(&t, ",\"user_id\":");
    tb_str(&t, p->row.user_id);
    TB_LIT(&t, "},\"chain\":");
    tb_str(&t, a->chain);
    TB_LIT(&t, ",\"details\":");
    if (dtext != NULL)
        tb_put(&t, dtext, strlen(dtext));
    else
        TB_LIT(&t, "{}");
    free(dtext);
    p->off_id = t.len + 7;
    TB_LIT(&t, ",\"id\":\"" PH_ID "\",\"ip\":");
    tb_str(&t, p->ip);
    TB_LIT(&t, ",\"outcome\":");
    tb_str(&t, p->row.outcome);
    p->off_prev = t.len + 9;
    TB_LIT(&t, ",\"prev\":\"" PH_PREV "\",\"request_id\":");
    tb_str(&t, p->row.request_id);
    TB_LIT(&t, ",\"resource\":");
    tb_str(&t, p->resource);
    p->off_seq = t.len + 7;
    p->off_ts = t.len + 15;
    TB_LIT(&t, ",\"seq\":0,\"ts\":\"" PH_TS "\"}");
    if (t.failed) {
        free(t.p);
        return PHG_ERR_NOMEM;
    }
    p->tmpl = t.p;
    p->tmpl_len = t.len;
    return PHG_OK;
}

/* The final text: the template with id, prev, seq and ts in place. */
static char *record_text(const pending *p, int64_t seq, const char *prev)
{
    char seqbuf[24], ts[32];
    int seqlen = snprintf(seqbuf, sizeof seqbuf, "%lld", (long long)seq);
    size_t len = p->tmpl_len - 1 + (size_t)seqlen;
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    format_ts(p->row.ts_us, ts);
    memcpy(out, p->tmpl, p->off_seq);
    memcpy(out + p->off_id, p->row.id, 26);
    memcpy(out + p->off_prev, prev, 64);
    memcpy(out + p->off_seq, seqbuf, (size_t)seqlen);
    memcpy(out + p->off_seq + (size_t)seqlen, p->tmpl + p->off_seq + 1,
           p->tmpl_len - p->off_seq - 1 + 1);
    memcpy(out + p->off_ts - 1 + (size_t)seqlen, ts, 27);
    return out;
}

/* hash = SHA-256(prev as 64 hex characters ‖ text) */
static phg_status record_hash(const char *prev, const char *text, char out[65])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t digest[32];
    unsigned int n = 0;
    phg_status rc = PHG_ERR_INTERNAL;
    if (ctx == NULL)
        return PHG_ERR_NOMEM;
    if (EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(ctx, prev, 64) == 1 &&
        EVP_DigestUpdate(ctx, text, strlen(text)) == 1 &&
        EVP_DigestFinal_ex(ctx, digest, &n) == 1) {
        hex32(digest, out);
        rc = PHG_OK;
    }
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* mac = HMAC-SHA256(key, "phigate-checkpoint/v1\n" chain "\n" seq "\n" hash "\n" ts_us) */
static phg_status checkpoint_mac(const uint8_t key[32], const char *chain, int64_t seq,
                                 const char *hash, int64_t ts_us, char out[65])
{
    char msg[PHG_AUDIT_CHAIN_MAX + 160];
    uint8_t mac[32];
    int n = snprintf(msg, sizeof msg, CHECKPOINT_LABEL "\n%s\n%lld\n%s\n%lld", chain,
                     (long long)seq, hash, (long long)ts_us);
    phg_status rc;
    if (n < 0 || (size_t)n >= sizeof msg)
        return PHG_ERR_INVALID;
    rc = phg_hmac_sha256(key, 32, (const uint8_t *)msg, (size_t)n, mac);
    if (rc == PHG_OK)
        hex32(mac, out);
    phg_wipe(mac, sizeof mac);
    return rc;
}

/* ---- the writer ------------------------------------------------------------------ */

static phg_status write_checkpoint(phg_audit *a)
{
    phg_audit_checkpoint cp;
    phg_status rc;
    memset(&cp, 0, sizeof cp);
    snprintf(cp.chain, sizeof cp.chain, "%s", a->chain);
    cp.seq = a->seq;
    memcpy(cp.hash, a->hash, sizeof cp.hash);
    cp.ts_us = now_us();
    rc = checkpoint_mac(a->key, cp.chain, cp.seq, cp.hash, cp.ts_us, cp.mac);
    if (rc == PHG_OK)
        rc = phg_internal_store_audit_checkpoint_insert(a->store, &cp);
    if (rc == PHG_ERR_EXISTS)
        rc = PHG_OK; /* this head is signed already */
    if (rc == PHG_OK) {
        a->since_checkpoint = 0;
        a->checkpointed_seq = a->seq;
        a->last_checkpoint_ms = mono_ms();
        pthread_mutex_lock(&a->lock);
        a->stats.checkpoints++;
        pthread_mutex_unlock(&a->lock);
    }
    return rc;
}

/* The next month of now is prepared ahead, once per month. */
static void prepare_ahead(phg_audit *a)
{
    struct tm tm;
    time_t s = time(NULL);
    gmtime_r(&s, &tm);
    if (tm.tm_year + 1900 == a->known_year && tm.tm_mon + 1 == a->known_month)
        return;
    if (phg_audit_prepare_partitions(a->store, (int64_t)s) == PHG_OK) {
        a->known_year = tm.tm_year + 1900;
        a->known_month = tm.tm_mon + 1;
    }
}

static void complete(phg_audit *a, pending *batch, phg_status status)
{
    pending *p, *next, *owned = NULL;
    pthread_mutex_lock(&a->lock);
    for (p = batch; p != NULL; p = next) {
        /* Read everything of p before `done`: a waiter's record lives on its
         * stack and is gone as soon as the waiter sees done. */
        next = p->next;
        if (status == PHG_OK)
            a->stats.appended++;
        else
            a->stats.failed++;
        p->status = status;
        if (p->owned) {
            p->next = owned;
            owned = p;
        } else {
            pthread_cond_t *wake = p->wake;
            p->done = 1;
            pthread_cond_signal(wake);
        }
    }
    pthread_mutex_unlock(&a->lock);
    /* Async records: told here, then freed. */
    for (p = owned; p != NULL; p = next) {
        next = p->next;
        if (p->done_fn != NULL)
            p->done_fn(p->done_arg, status, p->row.id);
        free(p->details);
        free(p->tmpl);
        free(p);
    }
}

static void commit_batch(phg_audit *a, pending *batch, size_t n)
{
    phg_audit_store_row *rows = malloc(n * sizeof *rows);
    int64_t seq = a->seq;
    char hash[65], *texts_owner = NULL;
    pending *p;
    size_t i = 0;
    phg_status rc = PHG_OK;
    int64_t t0 = mono_us();

    (void)texts_owner;
    if (rows == NULL) {
        complete(a, batch, PHG_ERR_NOMEM);
        return;
    }
    /* After a failed commit the store is the authority on the head: a
     * connection lost during COMMIT may have committed, and going on from a
     * stale head would fork the chain. */
    if (a->head_stale) {
        int64_t stored_seq = 0;
        char stored_hash[65];
        rc = phg_internal_store_audit_chain_head(a->store, a->chain, &stored_seq, stored_hash);
        if (rc == PHG_ERR_NOT_FOUND) {
            stored_seq = 0;
            memcpy(stored_hash, ZERO_HASH, sizeof stored_hash);
            rc = PHG_OK;
        }
        if (rc != PHG_OK) {
            free(rows);
            complete(a, batch, PHG_ERR_UNAVAILABLE);
            return;
        }
        a->seq = stored_seq;
        memcpy(a->hash, stored_hash, sizeof a->hash);
        a->head_stale = 0;
        seq = a->seq;
    }
    memcpy(hash, a->hash, sizeof hash);
    for (p = batch; p != NULL && rc == PHG_OK; p = p->next, i++) {
        char *text = record_text(p, seq + 1, hash);
        if (text == NULL) {
            rc = PHG_ERR_NOMEM;
            break;
        }
        rows[i] = p->row;
        snprintf(rows[i].chain, sizeof rows[i].chain, "%s", a->chain);
        rows[i].seq = seq + 1;
        rc = record_hash(hash, text, rows[i].hash);
        rows[i].json = text;
        if (rc != PHG_OK) {
            i++;
            break;
        }
        seq++;
        memcpy(hash, rows[i].hash, sizeof hash);
    }
    if (rc == PHG_OK)
        rc = phg_internal_store_audit_append(a->store, rows, n, a->chain, seq, hash);
    if (rc == PHG_OK) {
        a->seq = seq;
        memcpy(a->hash, hash, sizeof hash);
        a->since_checkpoint += n;
    } else {
        a->head_stale = 1;
        if (rc != PHG_ERR_NOMEM && rc != PHG_ERR_INTERNAL)
            rc = PHG_ERR_UNAVAILABLE; /* the caller's answer: refuse, fail closed */
    }
    while (i-- > 0)
        free(rows[i].json);
    free(rows);
    pthread_mutex_lock(&a->lock);
    a->stats.commits++;
    a->stats.last_commit_ms = (double)(mono_us() - t0) / 1000.0;
    a->stats.commit_ms_total += a->stats.last_commit_ms;
    pthread_mutex_unlock(&a->lock);
    complete(a, batch, rc);
}

static void *writer_main(void *arg)
{
    phg_audit *a = arg;
    for (;;) {
        pending *batch, *p;
        size_t n = 0;
        int stopping;
        pthread_mutex_lock(&a->lock);
        while (a->head == NULL && !a->stopping) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            pthread_cond_timedwait(&a->work, &a->lock, &until);
            if (a->head == NULL && a->since_checkpoint > 0 &&
                mono_ms() - a->last_checkpoint_ms >= (int64_t)a->opts.checkpoint_interval_s * 1000)
                break;
        }
        stopping = a->stopping;
        batch = a->head;
        for (p = batch; p != NULL && n < a->opts.batch_max; p = p->next) {
            n++;
            if (n == a->opts.batch_max)
                break;
        }
        if (batch != NULL) {
            if (p != NULL && n == a->opts.batch_max) {
                a->head = p->next;
                p->next = NULL;
            } else {
                a->head = NULL;
            }
            if (a->head == NULL)
                a->tail = NULL;
            a->depth -= n;
        }
        pthread_mutex_unlock(&a->lock);
        if (batch != NULL) {
            prepare_ahead(a);
            commit_batch(a, batch, n);
        }
        if (a->since_checkpoint > 0 &&
            (a->since_checkpoint >= a->opts.checkpoint_every ||
             mono_ms() - a->last_checkpoint_ms >= (int64_t)a->opts.checkpoint_interval_s * 1000))
            (void)write_checkpoint(a); /* retried after the next batch if it fails */
        if (stopping && batch == NULL)
            break;
    }
    if (a->seq > a->checkpointed_seq)
        (void)write_checkpoint(a); /* the final head, signed */
    return NULL;
}

/* The newest record's ts and id, so that a restarted writer never goes back
 * in time (a clock stepped back across a restart would otherwise look like
 * reordering to a verifier). */
typedef struct resume_ctx {
    int64_t last_ts_us;
    char last_id[PHG_ULID_LEN + 1];
    int64_t last_seq;
} resume_ctx;

static phg_status resume_cp(void *arg, const phg_audit_checkpoint *cp)
{
    int64_t *newest = arg;
    if (cp->ts_us > *newest)
        *newest = cp->ts_us;
    return PHG_OK;
}

static phg_status resume_row(void *arg, const phg_audit_store_row *row)
{
    resume_ctx *r = arg;
    if (row->seq >= r->last_seq) {
        r->last_seq = row->seq;
        r->last_ts_us = row->ts_us;
        snprintf(r->last_id, sizeof r->last_id, "%s", row->id);
    }
    return PHG_OK;
}

static phg_status resume_clock(phg_audit *a)
{
    resume_ctx r;
    int64_t newest_cp = 0;
    phg_status rc;

    memset(&r, 0, sizeof r);
    if (a->seq == 0)
        return PHG_OK;
    /* Only the tail since the last checkpoint needs reading: records before
     * it are older than its signature. */
    rc = phg_internal_store_audit_checkpoints(a->store, a->chain, resume_cp, &newest_cp);
    if (rc != PHG_OK)
        return rc;
    rc = phg_internal_store_audit_walk(a->store, a->chain,
                                       newest_cp > 60000000 ? newest_cp - 60000000 : 0, 0,
                                       resume_row, &r);
    if (rc != PHG_OK)
        return rc;
    if (r.last_seq > 0) {
        phg_ulid last;
        a->last_ts_us = r.last_ts_us;
        if (phg_ulid_parse(r.last_id, strlen(r.last_id), &last) == PHG_OK)
            a->last_id = last;
    }
    return PHG_OK;
}

phg_status phg_audit_open(phg_store *store, const phg_audit_options *opts, const uint8_t key[32],
                          phg_audit **out)
{
    phg_audit *a;
    phg_status rc;

    assert(store != NULL && opts != NULL && key != NULL && out != NULL);
    *out = NULL;
    if (!chain_name_ok(opts->chain) || opts->batch_max == 0 || opts->queue_max == 0 ||
        opts->checkpoint_every == 0 || opts->checkpoint_interval_s == 0)
        return PHG_ERR_INVALID;
    a = calloc(1, sizeof *a);
    if (a == NULL)
        return PHG_ERR_NOMEM;
    a->store = store;
    a->opts = *opts;
    snprintf(a->chain, sizeof a->chain, "%s", opts->chain);
    memcpy(a->key, key, 32);
    a->mask = opts->mask;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->work, NULL);
    rc = phg_internal_store_audit_chain_head(store, a->chain, &a->seq, a->hash);
    if (rc == PHG_ERR_NOT_FOUND) {
        a->seq = 0;
        memcpy(a->hash, ZERO_HASH, sizeof a->hash);
        rc = PHG_OK;
    }
    if (rc == PHG_OK)
        rc = resume_clock(a);
    if (rc == PHG_OK)
        rc = phg_audit_prepare_partitions(store, (int64_t)time(NULL));
    if (rc != PHG_OK) {
        phg_audit_close(a);
        return rc;
    }
    {
        struct tm tm;
        time_t s = time(NULL);
        gmtime_r(&s, &tm);
        a->known_year = tm.tm_year + 1900;
        a->known_month = tm.tm_mon + 1;
    }
    a->checkpointed_seq = a->seq;
    a->last_checkpoint_ms = mono_ms();
    if (pthread_create(&a->writer, NULL, writer_main, a) != 0) {
        phg_audit_close(a);
        return PHG_ERR_INTERNAL;
    }
    a->writer_running = 1;
    *out = a;
    return PHG_OK;
}

void phg_audit_close(phg_audit *a)
{
    if (a == NULL)
        return;
    if (a->writer_running) {
        pthread_mutex_lock(&a->lock);
        a->stopping = 1;
        pthread_cond_signal(&a->work);
        pthread_mutex_unlock(&a->lock);
        pthread_join(a->writer, NULL);
    }
    pthread_cond_destroy(&a->work);
    pthread_mutex_destroy(&a->lock);
    phg_wipe(a->key, sizeof a->key);
    free(a);
}

/* Validate and fill a pending record (no lock needed). */
static phg_status prepare(phg_audit *a, const phg_audit_event *ev, pending *p)
{
    const phg_request_context *ctx = phg_request_context_get();
    json_t *details = NULL;
    phg_status rc;

#define FIELD(dst, src, fallback)                                                                \
    do {                                                                                         \
        const char *v_ = (src) != NULL ? (src) : (fallback);                                     \
        if (!text_ok(v_, sizeof(dst) - 1))                                                       \
            return PHG_ERR_INVALID;                                                              \
        snprintf((dst), sizeof(dst), "%s", v_ ? v_ : "");                                        \
    } while (0)

    if (ev->action == NULL || ev->action[0] == '\0' || !outcome_ok(ev->outcome))
        return PHG_ERR_INVALID;
    FIELD(p->row.action, ev->action, NULL);
    FIELD(p->row.outcome, ev->outcome, NULL);
    FIELD(p->row.request_id, ev->request_id, ctx ? ctx->request_id : NULL);
    FIELD(p->row.key_id, ev->key_id, ctx ? ctx->key_id : NULL);
    FIELD(p->row.user_id, ev->user_id, ctx ? ctx->user_id : NULL);
    FIELD(p->role, ev->role, ctx ? ctx->role : NULL);
    FIELD(p->ip, ev->ip, ctx ? ctx->ip : NULL);
    FIELD(p->resource, ev->resource, NULL);
    FIELD(p->row.subject, ev->subject, NULL);
#undef FIELD
    /* details: a JSON object, masked; the subject goes in it, so the record
     * keeps DESIGN's fields and a report can still find it. Parsed once and
     * kept as a tree until the record is rendered. */
    if (ev->details_json != NULL) {
        rc = phg_internal_audit_mask_tree(ev->details_json, strlen(ev->details_json), a->mask,
                                          &details);
        if (rc != PHG_OK)
            return rc;
        if (!json_is_object(details)) {
            json_decref(details);
            return PHG_ERR_INVALID;
        }
    } else {
        details = json_object();
        if (details == NULL)
            return PHG_ERR_NOMEM;
    }
    if (p->row.subject[0] != '\0')
        json_object_set_new(details, "subject", json_string(p->row.subject));
    else
        json_object_del(details, "subject");
    p->details_obj = details;
    /* The expensive part of a record, done here on the appender's thread so
     * that the single writer only splices and hashes. */
    return render_template(a, p);
}

/* Give the record its id and time, and queue it. */
static phg_status enqueue(phg_audit *a, pending *p)
{
    phg_status rc = PHG_OK;
    pthread_mutex_lock(&a->lock);
    if (a->stopping || a->depth >= a->opts.queue_max) {
        rc = PHG_ERR_UNAVAILABLE;
    } else {
        phg_ulid id;
        /* ts never goes backwards within a chain, even if the clock does:
         * a verifier reads a backwards step as reordering. */
        p->row.ts_us = now_us();
        if (p->row.ts_us < a->last_ts_us)
            p->row.ts_us = a->last_ts_us;
        a->last_ts_us = p->row.ts_us;
        rc = phg_ulid_new_at((uint64_t)(p->row.ts_us / 1000), &a->last_id, &id);
        if (rc == PHG_OK) {
            phg_ulid_format(&id, p->row.id);
            if (a->tail != NULL)
                a->tail->next = p;
            else
                a->head = p;
            a->tail = p;
            a->depth++;
            pthread_cond_signal(&a->work);
        }
    }
    pthread_mutex_unlock(&a->lock);
    return rc;
}

phg_status phg_audit_append(phg_audit *a, const phg_audit_event *ev, char id[PHG_ULID_LEN + 1])
{
    pending p;
    pthread_cond_t wake;
    phg_status rc;

    assert(a != NULL && ev != NULL);
    memset(&p, 0, sizeof p);
    pthread_cond_init(&wake, NULL);
    p.wake = &wake;
    rc = prepare(a, ev, &p);
    if (rc == PHG_OK)
        rc = enqueue(a, &p);
    if (rc != PHG_OK) {
        free(p.details);
        free(p.tmpl);
        pthread_cond_destroy(&wake);
        return rc;
    }
    pthread_mutex_lock(&a->lock);
    while (!p.done)
        pthread_cond_wait(&wake, &a->lock);
    pthread_mutex_unlock(&a->lock);
    pthread_cond_destroy(&wake);
    if (id != NULL && p.status == PHG_OK)
        memcpy(id, p.row.id, sizeof p.row.id);
    free(p.details);
    free(p.tmpl);
    return p.status;
}

phg_status phg_audit_append_async(phg_audit *a, const phg_audit_event *ev, phg_audit_done_fn done,
                                  void *arg)
{
    pending *p = calloc(1, sizeof *p);
    phg_status rc;
    assert(a != NULL && ev != NULL);
    if (p == NULL)
        return PHG_ERR_NOMEM;
    p->owned = 1;
    p->done_fn = done;
    p->done_arg = arg;
    rc = prepare(a, ev, p);
    if (rc == PHG_OK)
        rc = enqueue(a, p);
    if (rc != PHG_OK) {
        free(p->details);
        free(p->tmpl);
        free(p);
    }
    return rc;
}

void phg_audit_get_stats(phg_audit *a, phg_audit_stats *st)
{
    assert(a != NULL && st != NULL);
    pthread_mutex_lock(&a->lock);
    *st = a->stats;
    st->queue_depth = a->depth;
    pthread_mutex_unlock(&a->lock);
}

/* ---- partitions and retention -------------------------------------------------------- */

phg_status phg_audit_prepare_partitions(phg_store *store, int64_t now_s)
{
    struct tm tm;
    time_t s = (time_t)now_s;
    int y, m;
    phg_status rc;
    assert(store != NULL);
    gmtime_r(&s, &tm);
    y = tm.tm_year + 1900;
    m = tm.tm_mon + 1;
    rc = phg_internal_store_audit_ensure_partition(store, y, m);
    if (rc != PHG_OK)
        return rc;
    if (++m == 13) {
        m = 1;
        y++;
    }
    return phg_internal_store_audit_ensure_partition(store, y, m);
}

static int parse_month(const char *s, int *y, int *m)
{
    if (s == NULL || strlen(s) != 7 || s[4] != '-')
        return 0;
    for (int i = 0; i < 7; i++) {
        if (i != 4 && (s[i] < '0' || s[i] > '9'))
            return 0;
    }
    *y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    *m = (s[5] - '0') * 10 + (s[6] - '0');
    return *y >= 1970 && *y <= 9999 && *m >= 1 && *m <= 12;
}

static void set_err(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

typedef struct archive_ctx {
    gzFile gz;
    uint64_t count;
    char first[PHG_ULID_LEN + 1], last[PHG_ULID_LEN + 1];
    int failed;
} archive_ctx;

/* One line per record: {"hash":"…","record":<the stored bytes, verbatim>} */
static phg_status archive_row(void *arg, const phg_audit_store_row *row)
{
    archive_ctx *c = arg;
    if (gzprintf(c->gz, "{\"hash\":\"%s\",\"record\":", row->hash) <= 0 ||
        gzputs(c->gz, row->json) < 0 || gzputs(c->gz, "}\n") < 0) {
        c->failed = 1;
        return PHG_ERR_IO;
    }
    if (c->count == 0)
        snprintf(c->first, sizeof c->first, "%s", row->id);
    snprintf(c->last, sizeof c->last, "%s", row->id);
    c->count++;
    return PHG_OK;
}

static phg_status sha256_file(const char *path, char hex[65])
{
    FILE *fp = fopen(path, "rb");
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t buf[65536], digest[32];
    unsigned int n = 0;
    size_t got;
    phg_status rc = PHG_ERR_IO;
    if (fp == NULL || ctx == NULL || EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) != 1)
        goto out;
    while ((got = fread(buf, 1, sizeof buf, fp)) > 0) {
        if (EVP_DigestUpdate(ctx, buf, got) != 1)
            goto out;
    }
    if (ferror(fp) || EVP_DigestFinal_ex(ctx, digest, &n) != 1)
        goto out;
    hex32(digest, hex);
    rc = PHG_OK;
out:
    if (fp != NULL)
        fclose(fp);
    EVP_MD_CTX_free(ctx);
    return rc;
}

phg_status phg_audit_archive(phg_store *store, const char *month, const char *path, char *err,
                             size_t err_len)
{
    archive_ctx c;
    char tmp[4096], manifest[4200], hex[65];
    struct tm tm;
    time_t now = time(NULL);
    int y, m, fd;
    phg_status rc;
    FILE *mf;

    assert(store != NULL && path != NULL);
    memset(&c, 0, sizeof c);
    if (!parse_month(month, &y, &m)) {
        set_err(err, err_len, "month must be YYYY-MM");
        return PHG_ERR_INVALID;
    }
    gmtime_r(&now, &tm);
    if (y > tm.tm_year + 1900 || (y == tm.tm_year + 1900 && m >= tm.tm_mon + 1)) {
        set_err(err, err_len, "%s is the current month or later: it is still being written", month);
        return PHG_ERR_STATE;
    }
    if (strlen(path) > 4000) {
        set_err(err, err_len, "archive path too long");
        return PHG_ERR_INVALID;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        set_err(err, err_len, "cannot create %s: %s", path, strerror(errno));
        return PHG_ERR_IO;
    }
    c.gz = gzdopen(fd, "wb9");
    if (c.gz == NULL) {
        close(fd);
        unlink(tmp);
        return PHG_ERR_NOMEM;
    }
    rc = phg_internal_store_audit_partition_rows(store, y, m, archive_row, &c);
    if (gzclose(c.gz) != Z_OK && rc == PHG_OK)
        rc = PHG_ERR_IO;
    /* Durable before the partition is marked archived: a prune may then drop
     * the only other copy. */
    if (rc == PHG_OK) {
        int sync_fd = open(tmp, O_RDONLY | O_CLOEXEC);
        if (sync_fd < 0 || fsync(sync_fd) != 0)
            rc = PHG_ERR_IO;
        if (sync_fd >= 0)
            close(sync_fd);
    }
    if (rc != PHG_OK) {
        unlink(tmp);
        set_err(err, err_len, rc == PHG_ERR_NOT_FOUND ? "no partition for %s" : "cannot read or write the partition of %s", month);
        return rc;
    }
    rc = sha256_file(tmp, hex);
    if (rc == PHG_OK && rename(tmp, path) != 0)
        rc = PHG_ERR_IO;
    if (rc == PHG_OK) {
        char dir[4096], *slash;
        int dfd;
        snprintf(dir, sizeof dir, "%s", path);
        slash = strrchr(dir, '/');
        if (slash == NULL)
            snprintf(dir, sizeof dir, ".");
        else if (slash == dir)
            dir[1] = '\0';
        else
            *slash = '\0';
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) != 0)
            rc = PHG_ERR_IO;
        if (dfd >= 0)
            close(dfd);
    }
    if (rc != PHG_OK) {
        unlink(tmp);
        set_err(err, err_len, "cannot write %s", path);
        return rc;
    }
    snprintf(manifest, sizeof manifest, "%s.sha256", path);
    mf = fopen(manifest, "w");
    if (mf == NULL ||
        fprintf(mf, "%s  %s\n# phigate audit archive: month %s, %llu records, first %s, last %s\n",
                hex, strrchr(path, '/') ? strrchr(path, '/') + 1 : path, month,
                (unsigned long long)c.count, c.count ? c.first : "-", c.count ? c.last : "-") < 0 ||
        fflush(mf) != 0 || fsync(fileno(mf)) != 0) {
        if (mf != NULL)
            fclose(mf);
        set_err(err, err_len, "cannot write %s", manifest);
        return PHG_ERR_IO;
    }
    fclose(mf);
    rc = phg_internal_store_audit_mark_archived(store, y, m, hex, (int64_t)now);
    if (rc != PHG_OK)
        set_err(err, err_len, "archived to %s but could not mark the partition: %s", path,
                phg_strerror(rc));
    return rc;
}

phg_status phg_audit_prune(phg_store *store, int64_t now_s, size_t *dropped, char *err,
                           size_t err_len)
{
    phg_audit_partition *parts = NULL;
    size_t n = 0, i;
    struct tm tm;
    time_t now = (time_t)now_s;
    int cut_y, cut_m;
    phg_status rc;

    assert(store != NULL && dropped != NULL);
    *dropped = 0;
    gmtime_r(&now, &tm);
    /* A month may go once all of it is older than six years: its end (the
     * first day of the next month) is at or before now minus six years. */
    cut_y = tm.tm_year + 1900 - PHG_AUDIT_RETENTION_YEARS;
    cut_m = tm.tm_mon + 1;
    rc = phg_internal_store_audit_partitions(store, &parts, &n);
    if (rc != PHG_OK) {
        set_err(err, err_len, "cannot list partitions: %s", phg_strerror(rc));
        return rc;
    }
    for (i = 0; i < n && rc == PHG_OK; i++) {
        int y, m, end_y, end_m;
        if (parts[i].dropped_at != 0 || !parse_month(parts[i].month, &y, &m))
            continue;
        end_y = m == 12 ? y + 1 : y;
        end_m = m == 12 ? 1 : m + 1;
        if (end_y > cut_y || (end_y == cut_y && end_m > cut_m))
            continue; /* younger than the retention period */
        if (parts[i].archived_at == 0)
            continue; /* never dropped unarchived */
        rc = phg_internal_store_audit_drop_partition(store, y, m, (int64_t)now);
        if (rc == PHG_OK)
            (*dropped)++;
        else
            set_err(err, err_len, "cannot drop %s: %s", parts[i].month, phg_strerror(rc));
    }
    free(parts);
    return rc;
}

/* ---- query ---------------------------------------------------------------------------- */

phg_status phg_audit_query(phg_store *store, const phg_audit_filter *f, phg_audit_row **rows,
                           size_t *n, char *err, size_t err_len)
{
    phg_audit_store_filter sf;
    phg_audit_store_row *srows = NULL;
    char before_norm[PHG_ULID_LEN + 1], request_norm[PHG_ULID_LEN + 1];
    phg_ulid tmp;
    size_t i, got = 0;
    phg_status rc;

    assert(store != NULL && f != NULL && rows != NULL && n != NULL);
    *rows = NULL;
    *n = 0;
    if (f->limit < 1 || f->limit > PHG_AUDIT_QUERY_MAX) {
        set_err(err, err_len, "limit must be 1 to %d", PHG_AUDIT_QUERY_MAX);
        return PHG_ERR_INVALID;
    }
    if (f->from_us < 0 || f->to_us < 0 || (f->to_us != 0 && f->from_us >= f->to_us)) {
        set_err(err, err_len, "the time range is empty or negative");
        return PHG_ERR_INVALID;
    }
    if (f->outcome != NULL && !outcome_ok(f->outcome)) {
        set_err(err, err_len, "outcome must be success, denied or error");
        return PHG_ERR_INVALID;
    }
    if (f->before_id != NULL && phg_ulid_parse(f->before_id, strlen(f->before_id), &tmp) != PHG_OK) {
        set_err(err, err_len, "before_id is not a ULID");
        return PHG_ERR_INVALID;
    }
    if (f->request_id != NULL && phg_ulid_parse(f->request_id, strlen(f->request_id), &tmp) != PHG_OK) {
        set_err(err, err_len, "request_id is not a ULID");
        return PHG_ERR_INVALID;
    }
    if (!text_ok(f->user_id, PHG_AUDIT_TEXT_MAX) || !text_ok(f->key_id, PHG_AUDIT_TEXT_MAX) ||
        !text_ok(f->action, PHG_AUDIT_TEXT_MAX) || !text_ok(f->subject, PHG_AUDIT_TEXT_MAX)) {
        set_err(err, err_len, "a filter is too long or has control characters");
        return PHG_ERR_INVALID;
    }
    /* ULIDs compare as stored text (uppercase): a lowercase one would page
     * wrongly or match nothing. */
    if (f->before_id != NULL) {
        phg_ulid_parse(f->before_id, strlen(f->before_id), &tmp);
        phg_ulid_format(&tmp, before_norm);
    }
    if (f->request_id != NULL) {
        phg_ulid_parse(f->request_id, strlen(f->request_id), &tmp);
        phg_ulid_format(&tmp, request_norm);
    }
    memset(&sf, 0, sizeof sf);
    sf.from_us = f->from_us;
    sf.to_us = f->to_us;
    sf.user_id = f->user_id;
    sf.key_id = f->key_id;
    sf.action = f->action;
    sf.outcome = f->outcome;
    sf.request_id = f->request_id ? request_norm : NULL;
    sf.subject = f->subject;
    sf.before_id = f->before_id ? before_norm : NULL;
    sf.limit = f->limit;
    rc = phg_internal_store_audit_query(store, &sf, &srows, &got);
    if (rc != PHG_OK) {
        set_err(err, err_len, "cannot query the audit log: %s", phg_strerror(rc));
        return rc;
    }
    *rows = calloc(got ? got : 1, sizeof **rows);
    if (*rows == NULL) {
        for (i = 0; i < got; i++)
            free(srows[i].json);
        free(srows);
        return PHG_ERR_NOMEM;
    }
    for (i = 0; i < got; i++) {
        /* hand out the whole record: the stored bytes with "hash" added */
        json_t *obj = json_loads(srows[i].json, 0, NULL);
        memcpy((*rows)[i].id, srows[i].id, sizeof(*rows)[i].id);
        (*rows)[i].ts_us = srows[i].ts_us;
        if (obj != NULL) {
            json_object_set_new(obj, "hash", json_string(srows[i].hash));
            (*rows)[i].json = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
            json_decref(obj);
        }
        free(srows[i].json);
    }
    free(srows);
    *n = got;
    return PHG_OK;
}

void phg_audit_rows_free(phg_audit_row *rows, size_t n)
{
    size_t i;
    if (rows == NULL)
        return;
    for (i = 0; i < n; i++)
        free(rows[i].json);
    free(rows);
}

/* ---- verify ---------------------------------------------------------------------------- */

typedef struct chain_list {
    phg_audit_checkpoint *items;
    size_t n, cap;
} chain_list;

static phg_status collect_cp(void *arg, const phg_audit_checkpoint *cp)
{
    chain_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        phg_audit_checkpoint *grown = realloc(l->items, cap * sizeof *grown);
        if (grown == NULL)
            return PHG_ERR_NOMEM;
        l->items = grown;
        l->cap = cap;
    }
    l->items[l->n++] = *cp;
    return PHG_OK;
}

typedef struct walk_ctx {
    const phg_audit_checkpoint *head; /* the stored head of this chain */
    chain_list *cps;
    phg_audit_verify_report *rep;
    int first, partial;               /* partial: a time window, the start is trusted */
    size_t cp_next;                   /* the first checkpoint not behind the walk */
    int64_t expect_seq, last_ts;
    char prev[65];
    int64_t last_seq;
} walk_ctx;

static phg_status fail(walk_ctx *w, const phg_audit_store_row *row, int64_t seq,
                       const char *problem)
{
    w->rep->ok = 0;
    snprintf(w->rep->chain, sizeof w->rep->chain, "%s", w->head->chain);
    w->rep->seq = seq;
    snprintf(w->rep->id, sizeof w->rep->id, "%s", row ? row->id : "");
    snprintf(w->rep->problem, sizeof w->rep->problem, "%s", problem);
    return PHG_ERR_STATE; /* stops the walk; not an error of the verifier */
}

static phg_status verify_row(void *arg, const phg_audit_store_row *row)
{
    walk_ctx *w = arg;
    json_t *obj;
    json_int_t jseq;
    const char *jprev, *jid, *jchain;
    char hash[65];
    size_t i;
    int ok;

    w->rep->records++;
    obj = json_loads(row->json, 0, NULL);
    if (obj == NULL)
        return fail(w, row, row->seq, "record edited: its text is not JSON");
    ok = json_unpack(obj, "{s:I,s:s,s:s,s:s}", "seq", &jseq, "prev", &jprev, "id", &jid,
                     "chain", &jchain) == 0;
    if (!ok) {
        json_decref(obj);
        return fail(w, row, row->seq, "record edited: members missing");
    }
    if (w->first && w->partial) {
        w->expect_seq = row->seq;
        snprintf(w->prev, sizeof w->prev, "%s", jprev);
    }
    /* A repeated position first: a copied record differs from its columns
     * too, but what happened to the chain is an insertion. */
    if (row->seq < w->expect_seq) {
        json_decref(obj);
        return fail(w, row, row->seq, "record inserted: its sequence number is repeated");
    }
    if (strcmp(jid, row->id) != 0 || strcmp(jchain, w->head->chain) != 0) {
        json_decref(obj);
        return fail(w, row, row->seq, "record edited or inserted: its id or chain does not "
                                      "match where it is stored");
    }
    if (jseq != row->seq) {
        json_decref(obj);
        return fail(w, row, row->seq,
                    "records reordered: the stored position does not match the record");
    }
    /* The columns queries and reports filter on are copies of the hashed
     * text: an edited column would hide a record from an accounting report
     * while the chain still verified. */
    {
        const char *action = "", *outcome = "", *req = "", *user = "", *key = "", *subject = "";
        const char *ts = "";
        char ts_col[32];
        json_t *actor = json_object_get(obj, "actor"), *details = json_object_get(obj, "details");
        json_unpack(obj, "{s?s,s?s,s?s,s?s}", "action", &action, "outcome", &outcome,
                    "request_id", &req, "ts", &ts);
        json_unpack(actor, "{s?s,s?s}", "user_id", &user, "key_id", &key);
        json_unpack(details, "{s?s}", "subject", &subject);
        format_ts(row->ts_us, ts_col);
        if (strcmp(action, row->action) != 0 || strcmp(outcome, row->outcome) != 0 ||
            strcmp(req, row->request_id) != 0 || strcmp(user, row->user_id) != 0 ||
            strcmp(key, row->key_id) != 0 || strcmp(subject, row->subject) != 0 ||
            strcmp(ts, ts_col) != 0) {
            json_decref(obj);
            return fail(w, row, row->seq,
                        "record edited: a stored column differs from the hashed record");
        }
    }
    if (row->seq > w->expect_seq) {
        char msg[128];
        json_decref(obj);
        snprintf(msg, sizeof msg, "record deleted: sequence %lld is missing",
                 (long long)w->expect_seq);
        return fail(w, row, w->expect_seq, msg);
    }
    if (strcmp(jprev, w->prev) != 0) {
        json_decref(obj);
        return fail(w, row, row->seq,
                    w->first ? "record inserted or edited: the chain does not start here"
                             : "record edited or inserted: prev does not match the record before");
    }
    json_decref(obj);
    if (record_hash(w->prev, row->json, hash) != PHG_OK)
        return PHG_ERR_INTERNAL;
    if (!phg_ct_equal(hash, row->hash, 64))
        return fail(w, row, row->seq, "record edited: its hash does not match its content");
    if (!w->first && row->ts_us < w->last_ts)
        return fail(w, row, row->seq, "records reordered: time goes backwards");
    /* Checkpoints come ordered by seq: one cursor, not a scan per record. */
    while (w->cp_next < w->cps->n && w->cps->items[w->cp_next].seq < row->seq)
        w->cp_next++;
    for (i = w->cp_next; i < w->cps->n && w->cps->items[i].seq == row->seq; i++) {
        if (!phg_ct_equal(w->cps->items[i].hash, row->hash, 64))
            return fail(w, row, row->seq, "record edited: it differs from the signed checkpoint");
    }
    memcpy(w->prev, row->hash, sizeof w->prev);
    w->last_ts = row->ts_us;
    w->last_seq = row->seq;
    w->expect_seq = row->seq + 1;
    w->first = 0;
    return PHG_OK;
}

/* Records of a chain that has no head: written around the writer (a chain
 * with no head was never written by phigate), invisible to the chain walks
 * but found by queries and reports. */
typedef struct orphan_ctx {
    const chain_list *heads;
    int64_t from_us, to_us;
    phg_audit_verify_report *rep;
} orphan_ctx;

static int chain_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const phg_audit_checkpoint *)elem)->chain);
}

static phg_status orphan_row(void *arg, const phg_audit_store_row *row)
{
    orphan_ctx *o = arg;
    if ((o->from_us != 0 && row->ts_us < o->from_us) || (o->to_us != 0 && row->ts_us >= o->to_us))
        return PHG_OK;
    if (bsearch(row->chain, o->heads->items, o->heads->n, sizeof *o->heads->items, chain_cmp) !=
        NULL)
        return PHG_OK;
    o->rep->ok = 0;
    snprintf(o->rep->chain, sizeof o->rep->chain, "%s", row->chain);
    o->rep->seq = row->seq;
    snprintf(o->rep->id, sizeof o->rep->id, "%s", row->id);
    snprintf(o->rep->problem, sizeof o->rep->problem,
             "record inserted: its chain has no head (it was not written by a phigate writer)");
    return PHG_ERR_STATE;
}

static phg_status find_orphans(phg_store *store, const chain_list *heads, int64_t from_us,
                               int64_t to_us, phg_audit_verify_report *rep)
{
    phg_audit_partition *parts = NULL;
    orphan_ctx o = {heads, from_us, to_us, rep};
    size_t np = 0, k;
    phg_status rc = phg_internal_store_audit_partitions(store, &parts, &np);
    for (k = 0; k < np && rc == PHG_OK && rep->ok; k++) {
        int y, m;
        if (parts[k].dropped_at != 0 || !parse_month(parts[k].month, &y, &m))
            continue;
        rc = phg_internal_store_audit_partition_rows(store, y, m, orphan_row, &o);
        if (rc == PHG_ERR_STATE && !rep->ok)
            rc = PHG_OK;
    }
    free(parts);
    return rc;
}

static phg_status verify_keys(phg_store *store, const uint8_t (*keys)[32], size_t n_keys,
                              int64_t from_us, int64_t to_us, phg_audit_verify_report *rep)
{
    chain_list heads = {NULL, 0, 0};
    size_t c, i;
    phg_status rc;

    assert(store != NULL && keys != NULL && n_keys > 0 && rep != NULL);
    memset(rep, 0, sizeof *rep);
    rep->ok = 1;
    rc = phg_internal_store_audit_chains(store, collect_cp, &heads);
    if (rc != PHG_OK)
        goto out;
    rep->chains = heads.n;
    /* A chain's start is trusted only when the caller asks for a window
     * (--from): after a prune, the operator verifies from the oldest month
     * kept. Nothing stored (a partition marked dropped, say) can make a full
     * verification skip a chain's beginning: that is unsigned data. */
    for (c = 0; c < heads.n && rep->ok; c++) {
        chain_list cps = {NULL, 0, 0};
        walk_ctx w;
        int64_t max_cp = 0;
        memset(&w, 0, sizeof w);
        w.head = &heads.items[c];
        w.cps = &cps;
        w.rep = rep;
        w.first = 1;
        w.partial = from_us != 0;
        w.expect_seq = 1;
        memcpy(w.prev, ZERO_HASH, sizeof w.prev);
        rc = phg_internal_store_audit_checkpoints(store, w.head->chain, collect_cp, &cps);
        if (rc != PHG_OK) {
            free(cps.items);
            goto out;
        }
        /* Checkpoints first: a forged one means nothing else can be trusted. */
        for (i = 0; i < cps.n; i++) {
            char mac[65];
            size_t k;
            int good = 0;
            rep->checkpoints++;
            /* signed under any of the master keys given: a checkpoint made
             * before a master-key rotation still verifies */
            for (k = 0; k < n_keys && !good; k++) {
                rc = checkpoint_mac(keys[k], cps.items[i].chain, cps.items[i].seq,
                                    cps.items[i].hash, cps.items[i].ts_us, mac);
                if (rc != PHG_OK) {
                    free(cps.items);
                    goto out;
                }
                good = phg_ct_equal(mac, cps.items[i].mac, 64);
            }
            if (!good) {
                fail(&w, NULL, cps.items[i].seq, "checkpoint forged or signed with another key");
                break;
            }
            if (cps.items[i].seq > max_cp)
                max_cp = cps.items[i].seq;
        }
        if (rep->ok) {
            rc = phg_internal_store_audit_walk(store, w.head->chain, from_us, to_us, verify_row,
                                               &w);
            if (rc == PHG_ERR_STATE && !rep->ok)
                rc = PHG_OK; /* the walk stopped at the problem it reported */
        }
        /* Truncation can only be judged up to the present, and only when the
         * window reached the chain at all. */
        if (rc == PHG_OK && rep->ok && to_us == 0 && (w.last_seq > 0 || !w.partial)) {
            /* Truncation: the end of the chain is before its signed or stored head. */
            char msg[160];
            if (w.last_seq < max_cp) {
                snprintf(msg, sizeof msg,
                         "chain truncated: last record is %lld, a signed checkpoint covers %lld",
                         (long long)w.last_seq, (long long)max_cp);
                fail(&w, NULL, w.last_seq + 1, msg);
            } else if (w.last_seq < w.head->seq) {
                snprintf(msg, sizeof msg, "chain truncated: last record is %lld, the head is %lld",
                         (long long)w.last_seq, (long long)w.head->seq);
                fail(&w, NULL, w.last_seq + 1, msg);
            } else if (w.last_seq > w.head->seq) {
                fail(&w, NULL, w.head->seq + 1, "record inserted after the chain's head");
            }
        }
        free(cps.items);
        if (rc != PHG_OK)
            goto out;
    }
    if (rep->ok)
        rc = find_orphans(store, &heads, from_us, to_us, rep);
out:
    free(heads.items);
    return rc;
}

phg_status phg_audit_verify(phg_store *store, const uint8_t key[32], int64_t from_us,
                            int64_t to_us, phg_audit_verify_report *rep)
{
    assert(key != NULL);
    return verify_keys(store, (const uint8_t(*)[32])key, 1, from_us, to_us, rep);
}

phg_status phg_audit_verify_mk(phg_store *store, const phg_masterkeys *mk, int64_t from_us,
                               int64_t to_us, phg_audit_verify_report *rep)
{
    uint8_t(*keys)[32];
    size_t i;
    phg_status rc = PHG_OK;
    assert(mk != NULL);
    if (mk->n == 0)
        return PHG_ERR_MASTER_KEY;
    keys = calloc(mk->n, sizeof *keys);
    if (keys == NULL)
        return PHG_ERR_NOMEM;
    for (i = 0; i < mk->n && rc == PHG_OK; i++)
        rc = phg_hkdf_sha256(mk->keys[i], PHG_FERNET_KEY_SIZE, NULL, 0,
                             (const uint8_t *)CHECKPOINT_INFO, strlen(CHECKPOINT_INFO), keys[i],
                             32);
    if (rc == PHG_OK)
        rc = verify_keys(store, (const uint8_t(*)[32])keys, mk->n, from_us, to_us, rep);
    phg_wipe(keys, mk->n * sizeof *keys);
    free(keys);
    return rc;
}
