/*
 * webhook_inbox.c: the durable inbox of verified webhooks
 * (phigate/webhook_inbox.h): validation of what the gateway hands in, the
 * writer thread (group commit, as audit.c's), the encryption of bodies
 * (phi1 under the context "webhook:" + event id), and the delivery state
 * calls. The SQL is in the engines (store/engine.h, "webhook inbox"); the
 * table, the states, the body format and the lease are written down in
 * docs/formats.md section 18.
 *
 * What it does not do: verify signatures (webhook.c), deliver (the gateway,
 * through claim and the report calls), or know HTTP.
 *
 * The writer: put_async validates and copies an event, gives it its id (a
 * ULID, under the queue lock, so queue order is id order) and queues it.
 * One writer thread takes up to max_batch events (and at most
 * BATCH_BYTES_MAX of bodies, at least one event), encrypts their bodies,
 * wipes the plaintext, and inserts them all in one transaction: one fsync
 * per batch. Only then does it call each event's callback. A body never
 * reaches the store, a log or an error in clear.
 */
#include <assert.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "phigate/crypto.h"
#include "phigate/ulid.h"
#include "phigate/webhook_inbox.h"
#include "phigate/webhook_store.h"
#include "store_internal.h"

#define CONTEXT_PREFIX "webhook:"
/* A body longer than one phi1 field is split (docs/formats.md 18.3). */
#define CHUNK_MAX ((size_t)PHG_PHI_PLAINTEXT_MAX)
/* Plaintext bodies held in the queue: past it put_async answers UNAVAILABLE
 * (an empty queue always takes one event). */
#define QUEUE_BYTES_MAX ((size_t)256 << 20)
/* Body bytes encrypted and written by one commit, and returned by one
 * claim (at least one event either way). */
#define BATCH_BYTES_MAX ((size_t)64 << 20)
#define CLAIM_BYTES_MAX ((size_t)64 << 20)
#define UNDECRYPTABLE "body does not decrypt"

_Static_assert(PHG_WH_SOURCE_MAX == PHG_WEBHOOK_SOURCE_NAME_MAX, "source name sizes agree");

/* One queued event. The row is complete but for body_enc, which the writer
 * makes from body (then wiped and freed). */
typedef struct item {
    struct item *next;
    phg_wh_event_row row;
    uint8_t *body;
    phg_wh_put_fn done;
    void *arg;
} item;

struct phg_wh_inbox {
    phg_store *store;
    _Atomic(phg_keyring *) keyring; /* replaced by phg_wh_inbox_set_keyring */
    phg_wh_inbox_options opts;
    pthread_mutex_t lock;
    pthread_cond_t work;
    item *head, *tail;
    size_t depth, queued_bytes;
    int stopping;
    pthread_t writer;
    int writer_running;
    /* writer stats (lock) */
    uint64_t written, duplicates, failed, commits;
};

/* ---- states ----------------------------------------------------------------------------- */

const char *phg_wh_event_state_name(phg_wh_event_state s)
{
    switch (s) {
    case PHG_WH_EVENT_PENDING:
        return "pending";
    case PHG_WH_EVENT_DELIVERED:
        return "delivered";
    case PHG_WH_EVENT_DEAD:
        return "dead";
    }
    return "unknown";
}

phg_status phg_wh_event_state_parse(const char *name, phg_wh_event_state *s)
{
    assert(s != NULL);
    if (name == NULL)
        return PHG_ERR_INVALID;
    if (strcmp(name, "pending") == 0)
        *s = PHG_WH_EVENT_PENDING;
    else if (strcmp(name, "delivered") == 0)
        *s = PHG_WH_EVENT_DELIVERED;
    else if (strcmp(name, "dead") == 0)
        *s = PHG_WH_EVENT_DEAD;
    else
        return PHG_ERR_INVALID;
    return PHG_OK;
}

/* ---- validation ------------------------------------------------------------------------- */

/* 1 if s is min..max bytes of printable ASCII (0x20..0x7e). */
static int printable(const char *s, size_t min, size_t max)
{
    size_t i, n;
    if (s == NULL)
        return min == 0;
    n = strnlen(s, max + 1);
    if (n < min || n > max)
        return 0;
    for (i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* An event id as the store has it (uppercase ULID text): 1 if in is one,
 * in either case. */
static int id_normalize(const char *in, char out[PHG_WH_EVENT_ID_LEN + 1])
{
    phg_ulid u;
    if (in == NULL || strnlen(in, PHG_WH_EVENT_ID_LEN + 1) != PHG_WH_EVENT_ID_LEN ||
        phg_ulid_parse(in, PHG_WH_EVENT_ID_LEN, &u) != PHG_OK)
        return 0;
    phg_ulid_format(&u, out);
    return 1;
}

/* The error text as stored: at most PHG_WH_ERROR_MAX bytes of printable
 * ASCII, any other byte as '?' (the column holds text of one encoding on
 * every engine; a UTF-8 sequence cut short would not be). */
static void error_text(const char *in, char out[PHG_WH_ERROR_MAX + 1])
{
    size_t i;
    for (i = 0; in != NULL && in[i] != '\0' && i < PHG_WH_ERROR_MAX; i++) {
        unsigned char ch = (unsigned char)in[i];
        out[i] = (char)(ch < 0x20 || ch > 0x7e ? '?' : ch);
    }
    out[i] = '\0';
}

static phg_status event_valid(const phg_wh_event_in *ev)
{
    if (!phg_webhook_source_name_valid(ev->source) ||
        !printable(ev->msg_id, 1, PHG_WH_MSG_ID_MAX) || ev->msg_id == NULL ||
        !printable(ev->content_type, 0, PHG_WH_CONTENT_TYPE_MAX) ||
        !printable(ev->request_id, 0, PHG_WH_MSG_ID_MAX) || ev->secret_index < -1 ||
        ev->signed_ts_s < 0 || ev->received_ms < 0 || ev->due_ms < 0 ||
        (ev->body == NULL && ev->body_len > 0))
        return PHG_ERR_INVALID;
    if (ev->body_len > PHG_WH_INBOX_BODY_MAX)
        return PHG_ERR_TOO_LARGE;
    return PHG_OK;
}

/* ---- bodies ----------------------------------------------------------------------------- */

static size_t chunk_count(size_t len)
{
    return len == 0 ? 1 : (len + CHUNK_MAX - 1) / CHUNK_MAX;
}

/* The context of chunk i of n: "webhook:<id>", or "webhook:<id>:<i>/<n>"
 * for a body of several chunks. */
static size_t body_context(const char *id, size_t i, size_t n, char *ctx, size_t cap)
{
    int len = n == 1 ? snprintf(ctx, cap, CONTEXT_PREFIX "%s", id)
                     : snprintf(ctx, cap, CONTEXT_PREFIX "%s:%zu/%zu", id, i, n);
    assert(len > 0 && (size_t)len < cap);
    return (size_t)len;
}

/* body_enc (malloc'd, NUL-terminated) of a body, under the primary key. */
static phg_status body_encrypt(phg_keyring *kr, const char *id, const uint8_t *body, size_t len,
                               char **out)
{
    size_t n = chunk_count(len), i, cap = 1, pos = 0, off = 0, clen, olen;
    char ctx[96], *buf;
    phg_status rc = PHG_OK;

    *out = NULL;
    for (i = 0; i < n; i++) {
        clen = len - off < CHUNK_MAX ? len - off : CHUNK_MAX;
        cap += PHG_PHI_CIPHERTEXT_MAX_LEN(clen) + 1;
        off += clen;
    }
    buf = malloc(cap);
    if (buf == NULL)
        return PHG_ERR_NOMEM;
    for (i = 0, off = 0; i < n; i++) {
        size_t ctx_len = body_context(id, i, n, ctx, sizeof ctx);
        clen = len - off < CHUNK_MAX ? len - off : CHUNK_MAX;
        if (i > 0)
            buf[pos++] = ',';
        rc = phg_phi_encrypt(kr, ctx, ctx_len, body + off, clen, buf + pos, cap - pos, &olen);
        if (rc != PHG_OK) {
            free(buf);
            return rc;
        }
        pos += olen;
        off += clen;
    }
    buf[pos] = '\0';
    *out = buf;
    return PHG_OK;
}

/* The body of body_enc (malloc'd, at least one byte), which must be exactly
 * len bytes. PHG_ERR_AUTH for anything that does not open (a key gone, a
 * tampered or mismatched text); PHG_ERR_NOMEM. */
static phg_status body_decrypt(phg_keyring *kr, const char *id, const char *enc, size_t len,
                               uint8_t **out)
{
    size_t n = chunk_count(len), i, off = 0, clen, got = 0;
    const char *part = enc, *end;
    uint8_t *buf;
    char ctx[96];
    phg_status rc = PHG_OK;

    *out = NULL;
    buf = malloc(len > 0 ? len : 1);
    if (buf == NULL)
        return PHG_ERR_NOMEM;
    for (i = 0; i < n; i++) {
        size_t ctx_len = body_context(id, i, n, ctx, sizeof ctx);
        end = strchr(part, ',');
        if ((end == NULL) != (i == n - 1)) {
            rc = PHG_ERR_AUTH; /* not the number of chunks body_len says */
            break;
        }
        if (end == NULL)
            end = part + strlen(part);
        clen = len - off < CHUNK_MAX ? len - off : CHUNK_MAX;
        rc = phg_phi_decrypt(kr, ctx, ctx_len, part, (size_t)(end - part), buf + off, clen, &got);
        if (rc == PHG_OK && got != clen)
            rc = PHG_ERR_AUTH;
        if (rc != PHG_OK)
            break;
        off += clen;
        part = end + 1;
    }
    if (rc != PHG_OK) {
        phg_wipe(buf, len > 0 ? len : 1);
        free(buf);
        return rc == PHG_ERR_NOMEM || rc == PHG_ERR_INTERNAL ? rc : PHG_ERR_AUTH;
    }
    *out = buf;
    return PHG_OK;
}

/* ---- engine calls on a pooled connection ------------------------------------------------ */

typedef struct insert_call {
    const phg_wh_event_row *rows;
    size_t n;
    char (*existing)[PHG_WH_EVENT_ID_LEN + 1];
} insert_call;

static phg_status call_insert(const phg_store_engine *e, void *conn, void *arg)
{
    insert_call *a = arg;
    return e->wh_event_insert(conn, a->rows, a->n, a->existing);
}

static phg_status store_insert(phg_wh_inbox *ib, const phg_wh_event_row *rows, size_t n,
                               char (*existing)[PHG_WH_EVENT_ID_LEN + 1])
{
    insert_call a = {rows, n, existing};
    phg_status rc = phg_internal_store_with_conn(ib->store, call_insert, &a);
    /* The only unique key left to violate is the id (a ULID): it cannot
     * collide, and EXISTS would tell the sender a lie. */
    return rc == PHG_ERR_EXISTS ? PHG_ERR_INTERNAL : rc;
}

typedef struct report_call {
    const char *id;
    int state, attempted;
    int64_t at_ms;
    int http_status;
    const char *error;
    int64_t next_ms;
} report_call;

static phg_status call_report(const phg_store_engine *e, void *conn, void *arg)
{
    report_call *a = arg;
    return e->wh_event_report(conn, a->id, a->state, a->attempted, a->at_ms, a->http_status,
                              a->error, a->next_ms);
}

typedef struct report_many_call {
    phg_wh_report *items;
    size_t n;
    char (*ids)[PHG_WH_EVENT_ID_LEN + 1];
    char (*errs)[PHG_WH_ERROR_MAX + 1];
} report_many_call;

static phg_status call_report_many(const phg_store_engine *e, void *conn, void *arg)
{
    report_many_call *a = arg;
    phg_status rc = e->wh_txn(conn, 0);
    size_t i;
    if (rc != PHG_OK)
        return rc;
    for (i = 0; i < a->n; i++) {
        phg_wh_report *it = &a->items[i];
        if (it->result != PHG_OK)
            continue; /* refused before: a bad id or value */
        it->result = e->wh_event_report(conn, a->ids[i], (int)it->state, !it->not_attempted,
                                        it->at_ms,
                                        it->http_status, a->errs[i], it->next_ms);
        if (it->result != PHG_OK && it->result != PHG_ERR_NOT_FOUND &&
            it->result != PHG_ERR_STATE) {
            rc = it->result; /* the store failed: nothing of the batch stays */
            break;
        }
    }
    if (rc == PHG_OK)
        rc = e->wh_txn(conn, 1);
    else
        (void)e->wh_txn(conn, 2);
    return rc;
}

phg_status phg_wh_inbox_report_many(phg_wh_inbox *ib, phg_wh_report *items, size_t n)
{
    report_many_call a;
    phg_status rc;
    size_t i;
    assert(ib != NULL);
    if (n == 0)
        return PHG_OK;
    if (items == NULL || n > PHG_WH_LIST_MAX)
        return PHG_ERR_INVALID;
    a.items = items;
    a.n = n;
    a.ids = malloc(n * sizeof *a.ids);
    a.errs = malloc(n * sizeof *a.errs);
    if (a.ids == NULL || a.errs == NULL) {
        free(a.ids);
        free(a.errs);
        return PHG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        phg_wh_report *it = &items[i];
        it->result = PHG_OK;
        if (it->id == NULL || !id_normalize(it->id, a.ids[i]))
            it->result = PHG_ERR_NOT_FOUND;
        else if (it->at_ms < 0 || it->next_ms < 0 || it->http_status < 0 ||
                 it->http_status > 999 || (int)it->state < PHG_WH_EVENT_PENDING ||
                 (int)it->state > PHG_WH_EVENT_DEAD)
            it->result = PHG_ERR_INVALID;
        error_text(it->error ? it->error : "", a.errs[i]);
    }
    rc = phg_internal_store_with_conn(ib->store, call_report_many, &a);
    if (rc != PHG_OK) {
        for (i = 0; i < n; i++) {
            if (items[i].result == PHG_OK || items[i].result == PHG_ERR_NOT_FOUND ||
                items[i].result == PHG_ERR_STATE)
                items[i].result = rc;
        }
    }
    free(a.ids);
    free(a.errs);
    return rc;
}

/* ---- the writer ------------------------------------------------------------------------- */

static void item_free(item *it)
{
    if (it == NULL)
        return;
    if (it->body != NULL) {
        phg_wipe(it->body, it->row.ev.body_len > 0 ? it->row.ev.body_len : 1);
        free(it->body);
    }
    free(it->row.body_enc);
    free(it);
}

static void count(phg_wh_inbox *ib, uint64_t written, uint64_t duplicates, uint64_t failed,
                  uint64_t commits)
{
    pthread_mutex_lock(&ib->lock);
    ib->written += written;
    ib->duplicates += duplicates;
    ib->failed += failed;
    ib->commits += commits;
    pthread_mutex_unlock(&ib->lock);
}

/*
 * Encrypt, insert, answer. An event whose body cannot be encrypted fails
 * alone; the others go in one transaction. Should that transaction be
 * refused for what one row holds (INVALID, TOO_LARGE), the rows are tried
 * one by one, so one bad event cannot fail its neighbours.
 */
static void commit_batch(phg_wh_inbox *ib, item *batch, size_t n)
{
    item **items = calloc(n, sizeof *items);
    phg_status *status = calloc(n, sizeof *status);
    phg_wh_event_row *rows = calloc(n, sizeof *rows);
    char(*existing)[PHG_WH_EVENT_ID_LEN + 1] = calloc(n, sizeof *existing);
    size_t *slot = calloc(n, sizeof *slot);
    uint64_t written = 0, duplicates = 0, failed = 0, commits = 0;
    size_t i, m = 0;
    item *it, *next;
    phg_status rc;

    if (items == NULL || status == NULL || rows == NULL || existing == NULL || slot == NULL) {
        for (it = batch; it != NULL; it = it->next)
            failed++;
        count(ib, 0, 0, failed, 0);
        for (it = batch; it != NULL; it = next) {
            next = it->next;
            if (it->done != NULL)
                it->done(it->arg, PHG_ERR_NOMEM, "");
            item_free(it);
        }
        goto out;
    }
    for (i = 0, it = batch; it != NULL; it = it->next, i++) {
        items[i] = it;
        status[i] = body_encrypt(atomic_load(&ib->keyring), it->row.ev.id, it->body, it->row.ev.body_len,
                                 &it->row.body_enc);
        /* The plaintext is not needed any more, whatever happens next. */
        phg_wipe(it->body, it->row.ev.body_len > 0 ? it->row.ev.body_len : 1);
        free(it->body);
        it->body = NULL;
        if (status[i] == PHG_OK) {
            rows[m] = it->row;
            slot[m++] = i;
        }
    }
    assert(i == n);
    if (m > 0) {
        rc = store_insert(ib, rows, m, existing);
        if (rc == PHG_OK) {
            commits++;
        } else if ((rc == PHG_ERR_INVALID || rc == PHG_ERR_TOO_LARGE) && m > 1) {
            for (i = 0; i < m; i++) {
                status[slot[i]] = store_insert(ib, &rows[i], 1, &existing[i]);
                if (status[slot[i]] == PHG_OK)
                    commits++;
            }
        } else {
            for (i = 0; i < m; i++)
                status[slot[i]] = rc;
        }
        for (i = 0; i < m; i++) {
            if (status[slot[i]] == PHG_OK && existing[i][0] != '\0') {
                status[slot[i]] = PHG_ERR_EXISTS;
                memcpy(items[slot[i]]->row.ev.id, existing[i], sizeof existing[i]);
            }
        }
    }
    for (i = 0; i < n; i++) {
        if (status[i] == PHG_OK)
            written++;
        else if (status[i] == PHG_ERR_EXISTS)
            duplicates++;
        else
            failed++;
    }
    /* Counted before anyone is told: a caller woken by its callback sees
     * its event in the stats. */
    count(ib, written, duplicates, failed, commits);
    for (i = 0; i < n; i++) {
        it = items[i];
        if (it->done != NULL)
            it->done(it->arg, status[i],
                     status[i] == PHG_OK || status[i] == PHG_ERR_EXISTS ? it->row.ev.id : "");
        item_free(it);
    }
out:
    free(items);
    free(status);
    free(rows);
    free(existing);
    free(slot);
}

static void *writer_main(void *arg)
{
    phg_wh_inbox *ib = arg;
    for (;;) {
        item *batch, *last = NULL, *p;
        size_t n = 0, bytes = 0;

        pthread_mutex_lock(&ib->lock);
        while (ib->head == NULL && !ib->stopping)
            pthread_cond_wait(&ib->work, &ib->lock);
        batch = ib->head;
        for (p = batch; p != NULL && n < ib->opts.max_batch; p = p->next) {
            if (n > 0 && bytes + p->row.ev.body_len > BATCH_BYTES_MAX)
                break;
            bytes += p->row.ev.body_len;
            n++;
            last = p;
        }
        if (batch != NULL) {
            ib->head = last->next;
            last->next = NULL;
            if (ib->head == NULL)
                ib->tail = NULL;
            ib->depth -= n;
            ib->queued_bytes -= bytes;
        }
        pthread_mutex_unlock(&ib->lock);
        if (batch == NULL)
            break; /* stopping, and the queue is drained */
        commit_batch(ib, batch, n);
    }
    return NULL;
}

/* ---- open / close ----------------------------------------------------------------------- */

void phg_wh_inbox_options_init(phg_wh_inbox_options *opts)
{
    assert(opts != NULL);
    memset(opts, 0, sizeof *opts);
    opts->max_batch = 256;
    opts->max_queue = 65536;
}

void phg_wh_inbox_set_keyring(phg_wh_inbox *ib, phg_keyring *keyring)
{
    if (ib != NULL && keyring != NULL)
        atomic_store(&ib->keyring, keyring);
}

phg_status phg_wh_inbox_open(phg_store *store, phg_keyring *keyring,
                             const phg_wh_inbox_options *opts, phg_wh_inbox **out)
{
    phg_wh_inbox_options defaults;
    phg_wh_inbox *ib;
    phg_status rc;
    int current = 0;

    assert(store != NULL && keyring != NULL && out != NULL);
    *out = NULL;
    if (opts == NULL) {
        phg_wh_inbox_options_init(&defaults);
        opts = &defaults;
    }
    if (opts->max_batch == 0 || opts->max_queue == 0)
        return PHG_ERR_INVALID;
    rc = phg_store_schema_version(store, &current, NULL);
    if (rc != PHG_OK)
        return rc;
    if (current < 4)
        return PHG_ERR_SCHEMA; /* webhook_events comes with migration 4 */
    ib = calloc(1, sizeof *ib);
    if (ib == NULL)
        return PHG_ERR_NOMEM;
    ib->store = store;
    atomic_init(&ib->keyring, keyring);
    ib->opts = *opts;
    pthread_mutex_init(&ib->lock, NULL);
    pthread_cond_init(&ib->work, NULL);
    if (pthread_create(&ib->writer, NULL, writer_main, ib) != 0) {
        phg_wh_inbox_close(ib);
        return PHG_ERR_INTERNAL;
    }
    ib->writer_running = 1;
    *out = ib;
    return PHG_OK;
}

void phg_wh_inbox_close(phg_wh_inbox *ib)
{
    if (ib == NULL)
        return;
    if (ib->writer_running) {
        pthread_mutex_lock(&ib->lock);
        ib->stopping = 1;
        pthread_cond_signal(&ib->work);
        pthread_mutex_unlock(&ib->lock);
        pthread_join(ib->writer, NULL);
    }
    assert(ib->head == NULL || !ib->writer_running);
    while (ib->head != NULL) { /* only if the writer never started */
        item *next = ib->head->next;
        item_free(ib->head);
        ib->head = next;
    }
    pthread_cond_destroy(&ib->work);
    pthread_mutex_destroy(&ib->lock);
    free(ib);
}

/* ---- writing ---------------------------------------------------------------------------- */

phg_status phg_wh_inbox_put_async(phg_wh_inbox *ib, const phg_wh_event_in *ev, phg_wh_put_fn done,
                                  void *arg)
{
    phg_wh_event *e;
    item *it;
    phg_status rc;

    assert(ib != NULL && ev != NULL);
    rc = event_valid(ev);
    if (rc != PHG_OK)
        return rc;
    it = calloc(1, sizeof *it);
    if (it == NULL)
        return PHG_ERR_NOMEM;
    it->body = malloc(ev->body_len > 0 ? ev->body_len : 1);
    if (it->body == NULL) {
        free(it);
        return PHG_ERR_NOMEM;
    }
    if (ev->body_len > 0)
        memcpy(it->body, ev->body, ev->body_len);
    e = &it->row.ev;
    snprintf(e->source, sizeof e->source, "%s", ev->source);
    snprintf(e->msg_id, sizeof e->msg_id, "%s", ev->msg_id);
    snprintf(e->request_id, sizeof e->request_id, "%s", ev->request_id ? ev->request_id : "");
    snprintf(e->content_type, sizeof e->content_type, "%s",
             ev->content_type ? ev->content_type : "");
    e->authenticated = ev->authenticated ? 1 : 0;
    e->secret_index = ev->secret_index;
    e->signed_ts_s = ev->signed_ts_s;
    e->received_ms = ev->received_ms;
    e->state = PHG_WH_EVENT_PENDING;
    /* due at once, or leased from the start to a deliverer of this process */
    e->next_attempt_ms = ev->due_ms > 0 ? ev->due_ms : ev->received_ms;
    e->body_len = ev->body_len;
    it->done = done;
    it->arg = arg;

    pthread_mutex_lock(&ib->lock);
    if (ib->stopping || ib->depth >= ib->opts.max_queue ||
        (ib->depth > 0 && ev->body_len > QUEUE_BYTES_MAX - ib->queued_bytes)) {
        rc = PHG_ERR_UNAVAILABLE;
    } else {
        /* Under the lock: queue order is id order. */
        rc = phg_ulid_new_text(e->id);
        if (rc == PHG_OK) {
            if (ib->tail != NULL)
                ib->tail->next = it;
            else
                ib->head = it;
            ib->tail = it;
            ib->depth++;
            ib->queued_bytes += ev->body_len;
            pthread_cond_signal(&ib->work);
        }
    }
    pthread_mutex_unlock(&ib->lock);
    if (rc != PHG_OK)
        item_free(it);
    return rc;
}

/* A synchronous put waits on its own condition for its callback. */
typedef struct put_waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
    phg_status status;
    char id[PHG_WH_EVENT_ID_LEN + 1];
} put_waiter;

static void put_waiter_done(void *arg, phg_status status, const char *event_id)
{
    put_waiter *w = arg;
    pthread_mutex_lock(&w->lock);
    w->status = status;
    snprintf(w->id, sizeof w->id, "%s", event_id != NULL ? event_id : "");
    w->done = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

phg_status phg_wh_inbox_put(phg_wh_inbox *ib, const phg_wh_event_in *ev,
                            char event_id[PHG_WH_EVENT_ID_LEN + 1])
{
    put_waiter w;
    phg_status rc;

    assert(ib != NULL && ev != NULL && event_id != NULL);
    event_id[0] = '\0';
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    rc = phg_wh_inbox_put_async(ib, ev, put_waiter_done, &w);
    if (rc == PHG_OK) {
        pthread_mutex_lock(&w.lock);
        while (!w.done)
            pthread_cond_wait(&w.cond, &w.lock);
        pthread_mutex_unlock(&w.lock);
        rc = w.status;
        memcpy(event_id, w.id, sizeof w.id);
    }
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    return rc;
}

typedef struct find_call {
    const char *source, *msg_id;
    char *id;
} find_call;

static phg_status call_find(const phg_store_engine *e, void *conn, void *arg)
{
    find_call *a = arg;
    return e->wh_event_find(conn, a->source, a->msg_id, a->id);
}

phg_status phg_wh_inbox_find(phg_wh_inbox *ib, const char *source, const char *msg_id,
                             char event_id[PHG_WH_EVENT_ID_LEN + 1])
{
    find_call a = {source, msg_id, event_id};
    phg_status rc;

    assert(ib != NULL && event_id != NULL);
    event_id[0] = '\0';
    if (!phg_webhook_source_name_valid(source) || msg_id == NULL ||
        !printable(msg_id, 1, PHG_WH_MSG_ID_MAX))
        return PHG_ERR_INVALID;
    rc = phg_internal_store_with_conn(ib->store, call_find, &a);
    if (rc != PHG_OK)
        event_id[0] = '\0';
    return rc;
}

/* ---- delivering ------------------------------------------------------------------------- */

typedef struct claim_call {
    int64_t now_ms, lease_until_ms;
    size_t max;
    phg_wh_event_row *rows;
    size_t n;
} claim_call;

static phg_status call_claim(const phg_store_engine *e, void *conn, void *arg)
{
    claim_call *a = arg;
    return e->wh_event_claim(conn, a->now_ms, a->lease_until_ms, a->max, CLAIM_BYTES_MAX, &a->rows,
                             &a->n);
}

/* A leased event whose body does not open (its key destroyed, its text
 * altered) would come back at every lease: it is marked DEAD instead, not
 * counted as an attempt, and left out of the claim. */
static void mark_undecryptable(phg_wh_inbox *ib, const char *id, int64_t now_ms)
{
    report_call a = {id, PHG_WH_EVENT_DEAD, 0, now_ms, 0, UNDECRYPTABLE, 0};
    /* If this fails the lease runs out and the next claim tries again. */
    (void)phg_internal_store_with_conn(ib->store, call_report, &a);
}

phg_status phg_wh_inbox_claim(phg_wh_inbox *ib, int64_t now_ms, int64_t lease_ms, size_t max,
                              phg_wh_event **out, size_t *n)
{
    claim_call a;
    phg_wh_event *evs = NULL;
    phg_status rc;
    size_t i, k = 0;

    assert(ib != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    if (max < 1 || max > PHG_WH_LIST_MAX || now_ms < 0 || lease_ms <= 0 ||
        lease_ms > INT64_MAX - now_ms)
        return PHG_ERR_INVALID;
    memset(&a, 0, sizeof a);
    a.now_ms = now_ms;
    a.lease_until_ms = now_ms + lease_ms;
    a.max = max;
    rc = phg_internal_store_with_conn(ib->store, call_claim, &a);
    if (rc != PHG_OK)
        return rc;
    if (a.n == 0)
        goto out;
    evs = calloc(a.n, sizeof *evs);
    if (evs == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    for (i = 0; i < a.n; i++) {
        uint8_t *body = NULL;
        rc = body_decrypt(atomic_load(&ib->keyring), a.rows[i].ev.id, a.rows[i].body_enc, a.rows[i].ev.body_len,
                          &body);
        if (rc == PHG_ERR_AUTH) {
            mark_undecryptable(ib, a.rows[i].ev.id, now_ms);
            rc = PHG_OK;
            continue;
        }
        if (rc != PHG_OK)
            goto out; /* the leases run out; the events come back */
        evs[k] = a.rows[i].ev;
        evs[k].body = body;
        k++;
    }
out:
    phg_internal_wh_event_rows_free(a.rows, a.n);
    if (rc != PHG_OK || k == 0) {
        phg_wh_events_free(evs, k);
        return rc;
    }
    *out = evs;
    *n = k;
    return PHG_OK;
}

static phg_status report(phg_wh_inbox *ib, const char *id, phg_wh_event_state state, int64_t at_ms,
                         int http_status, const char *error, int64_t next_ms)
{
    char norm[PHG_WH_EVENT_ID_LEN + 1], err[PHG_WH_ERROR_MAX + 1];
    report_call a;

    assert(ib != NULL);
    if (!id_normalize(id, norm))
        return PHG_ERR_NOT_FOUND; /* no event has such an id */
    if (at_ms < 0 || next_ms < 0 || http_status < 0 || http_status > 999)
        return PHG_ERR_INVALID;
    error_text(error, err);
    a.id = norm;
    a.state = (int)state;
    a.attempted = 1;
    a.at_ms = at_ms;
    a.http_status = http_status;
    a.error = err;
    a.next_ms = next_ms;
    return phg_internal_store_with_conn(ib->store, call_report, &a);
}

phg_status phg_wh_inbox_delivered(phg_wh_inbox *ib, const char *id, int64_t at_ms, int http_status)
{
    return report(ib, id, PHG_WH_EVENT_DELIVERED, at_ms, http_status, "", 0);
}

phg_status phg_wh_inbox_retry(phg_wh_inbox *ib, const char *id, int64_t at_ms, int http_status,
                              const char *error, int64_t next_ms)
{
    return report(ib, id, PHG_WH_EVENT_PENDING, at_ms, http_status, error, next_ms);
}

phg_status phg_wh_inbox_dead(phg_wh_inbox *ib, const char *id, int64_t at_ms, int http_status,
                             const char *error)
{
    return report(ib, id, PHG_WH_EVENT_DEAD, at_ms, http_status, error, 0);
}

/* ---- reading and housekeeping ----------------------------------------------------------- */

typedef struct get_call {
    const char *id;
    phg_wh_event_row row;
} get_call;

static phg_status call_get(const phg_store_engine *e, void *conn, void *arg)
{
    get_call *a = arg;
    return e->wh_event_get(conn, a->id, &a->row);
}

phg_status phg_wh_inbox_get(phg_wh_inbox *ib, const char *id, phg_wh_event **out)
{
    char norm[PHG_WH_EVENT_ID_LEN + 1];
    phg_wh_event *ev = NULL;
    uint8_t *body = NULL;
    get_call a;
    phg_status rc;

    assert(ib != NULL && out != NULL);
    *out = NULL;
    if (!id_normalize(id, norm))
        return PHG_ERR_NOT_FOUND;
    memset(&a, 0, sizeof a);
    a.id = norm;
    rc = phg_internal_store_with_conn(ib->store, call_get, &a);
    if (rc != PHG_OK)
        return rc;
    rc = body_decrypt(atomic_load(&ib->keyring), a.row.ev.id, a.row.body_enc, a.row.ev.body_len, &body);
    if (rc == PHG_OK) {
        ev = malloc(sizeof *ev);
        if (ev == NULL) {
            phg_wipe(body, a.row.ev.body_len > 0 ? a.row.ev.body_len : 1);
            free(body);
            rc = PHG_ERR_NOMEM;
        }
    }
    if (rc == PHG_OK) {
        *ev = a.row.ev;
        ev->body = body;
        *out = ev;
    }
    free(a.row.body_enc);
    return rc;
}

typedef struct list_call {
    const phg_wh_event_filter *f;
    phg_wh_event_row *rows;
    size_t n;
} list_call;

static phg_status call_list(const phg_store_engine *e, void *conn, void *arg)
{
    list_call *a = arg;
    return e->wh_event_list(conn, a->f, &a->rows, &a->n);
}

phg_status phg_wh_inbox_list(phg_wh_inbox *ib, const phg_wh_event_filter *f, phg_wh_event **out,
                             size_t *n)
{
    char before[PHG_WH_EVENT_ID_LEN + 1];
    phg_wh_event_filter checked;
    phg_wh_event *evs;
    list_call a;
    phg_status rc;
    size_t i;

    assert(ib != NULL && f != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    if (f->state > PHG_WH_EVENT_DEAD || f->limit < 1 || f->limit > PHG_WH_LIST_MAX ||
        (f->source != NULL && !phg_webhook_source_name_valid(f->source)) ||
        (f->before_id != NULL && !id_normalize(f->before_id, before)))
        return PHG_ERR_INVALID;
    checked = *f;
    if (checked.state < 0)
        checked.state = -1;
    if (f->before_id != NULL)
        checked.before_id = before;
    memset(&a, 0, sizeof a);
    a.f = &checked;
    rc = phg_internal_store_with_conn(ib->store, call_list, &a);
    if (rc != PHG_OK)
        return rc;
    if (a.n == 0)
        return PHG_OK;
    evs = calloc(a.n, sizeof *evs);
    if (evs == NULL) {
        phg_internal_wh_event_rows_free(a.rows, a.n);
        return PHG_ERR_NOMEM;
    }
    for (i = 0; i < a.n; i++) {
        evs[i] = a.rows[i].ev;
        evs[i].body = NULL;
    }
    phg_internal_wh_event_rows_free(a.rows, a.n);
    *out = evs;
    *n = a.n;
    return PHG_OK;
}

typedef struct replay_call {
    const char *id;
    const char *source;
    int64_t now_ms;
    size_t n;
} replay_call;

static phg_status call_replay(const phg_store_engine *e, void *conn, void *arg)
{
    replay_call *a = arg;
    return e->wh_event_replay(conn, a->id, a->now_ms);
}

static phg_status call_replay_all(const phg_store_engine *e, void *conn, void *arg)
{
    replay_call *a = arg;
    return e->wh_event_replay_all(conn, a->source, a->now_ms, &a->n);
}

phg_status phg_wh_inbox_replay(phg_wh_inbox *ib, const char *id, int64_t now_ms)
{
    char norm[PHG_WH_EVENT_ID_LEN + 1];
    replay_call a;

    assert(ib != NULL);
    if (!id_normalize(id, norm))
        return PHG_ERR_NOT_FOUND;
    if (now_ms < 0)
        return PHG_ERR_INVALID;
    memset(&a, 0, sizeof a);
    a.id = norm;
    a.now_ms = now_ms;
    return phg_internal_store_with_conn(ib->store, call_replay, &a);
}

phg_status phg_wh_inbox_replay_all(phg_wh_inbox *ib, const char *source, int64_t now_ms, size_t *n)
{
    replay_call a;
    phg_status rc;

    assert(ib != NULL && n != NULL);
    *n = 0;
    if ((source != NULL && !phg_webhook_source_name_valid(source)) || now_ms < 0)
        return PHG_ERR_INVALID;
    memset(&a, 0, sizeof a);
    a.source = source;
    a.now_ms = now_ms;
    rc = phg_internal_store_with_conn(ib->store, call_replay_all, &a);
    if (rc == PHG_OK)
        *n = a.n;
    return rc;
}

typedef struct stats_call {
    int backlog_only;
    int64_t counts[3];
    int64_t oldest;
} stats_call;

static phg_status call_stats(const phg_store_engine *e, void *conn, void *arg)
{
    stats_call *a = arg;
    return e->wh_event_stats(conn, a->backlog_only, a->counts, &a->oldest);
}

static phg_status stats_get(phg_wh_inbox *ib, int backlog_only, phg_wh_inbox_stats *st)
{
    stats_call a;
    phg_status rc;

    assert(ib != NULL && st != NULL);
    memset(st, 0, sizeof *st);
    memset(&a, 0, sizeof a);
    a.backlog_only = backlog_only;
    pthread_mutex_lock(&ib->lock);
    st->written = ib->written;
    st->duplicates = ib->duplicates;
    st->failed = ib->failed;
    st->commits = ib->commits;
    st->queue_depth = ib->depth;
    pthread_mutex_unlock(&ib->lock);
    rc = phg_internal_store_with_conn(ib->store, call_stats, &a);
    if (rc != PHG_OK)
        return rc;
    st->pending = a.counts[PHG_WH_EVENT_PENDING];
    st->delivered = a.counts[PHG_WH_EVENT_DELIVERED];
    st->dead = a.counts[PHG_WH_EVENT_DEAD];
    st->oldest_pending_ms = a.oldest;
    return PHG_OK;
}

phg_status phg_wh_inbox_stats_get(phg_wh_inbox *ib, phg_wh_inbox_stats *st)
{
    return stats_get(ib, 0, st);
}

phg_status phg_wh_inbox_backlog_get(phg_wh_inbox *ib, phg_wh_inbox_stats *st)
{
    return stats_get(ib, 1, st);
}

typedef struct purge_call {
    int64_t before_ms;
    size_t max, n;
} purge_call;

static phg_status call_purge(const phg_store_engine *e, void *conn, void *arg)
{
    purge_call *a = arg;
    return e->wh_event_purge(conn, a->before_ms, a->max, &a->n);
}

phg_status phg_wh_inbox_purge(phg_wh_inbox *ib, int64_t before_ms, size_t max, size_t *n)
{
    purge_call a = {before_ms, max, 0};
    phg_status rc;

    assert(ib != NULL && n != NULL);
    *n = 0;
    if (max < 1)
        return PHG_ERR_INVALID;
    rc = phg_internal_store_with_conn(ib->store, call_purge, &a);
    if (rc == PHG_OK)
        *n = a.n;
    return rc;
}

/* ---- freeing ---------------------------------------------------------------------------- */

void phg_wh_event_free(phg_wh_event *ev)
{
    if (ev == NULL)
        return;
    phg_wh_events_free(ev, 1);
}

void phg_wh_events_free(phg_wh_event *evs, size_t n)
{
    size_t i;
    if (evs == NULL)
        return;
    for (i = 0; i < n; i++) {
        if (evs[i].body != NULL) {
            /* a decrypted body is PHI */
            phg_wipe(evs[i].body, evs[i].body_len > 0 ? evs[i].body_len : 1);
            free(evs[i].body);
        }
    }
    free(evs);
}
