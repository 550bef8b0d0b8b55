/*
 * metrics.c: the gateway's Prometheus metrics (text exposition format
 * 0.0.4), counted lock-free on the hot path and rendered on GET /metrics.
 *
 * Families (every one with # HELP and # TYPE):
 *   phigate_http_requests_total{class,status}      counter; only non-zero series
 *   phigate_http_request_duration_seconds{class}   histogram, every class
 *       buckets 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 +Inf
 *   phigate_auth_failures_total{reason}             counter; missing malformed unknown
 *                                                   revoked expired forbidden
 *   phigate_upstream_errors_total{kind}             counter; connect timeout reset
 *   phigate_ratelimit_decisions_total{result}       counter; allowed refused
 *   phigate_ratelimit_fallback_total                counter
 *   phigate_connections                             gauge
 *   phigate_audit_*                                 from phg_audit_get_stats, when an
 *                                                   audit writer is given
 * class is proxy|phi|admin|health|metrics|other; status is the exact HTTP
 * status (100..599; anything else is counted as "0").
 *
 * Why shards: every counter is a relaxed C11 atomic, and there are 16 copies
 * of the whole table, each thread adding to the copy of its own slot (given
 * round-robin the first time the thread counts). Threads of different loops
 * then rarely write the same cache line; render sums the copies. A rendered
 * snapshot is not atomic across series (a histogram's _count may lag a
 * bucket by a request in flight), which Prometheus tolerates.
 *
 * No label value ever comes from a request: labels are fixed names and
 * status numbers, so nothing a client sends (and no PHI) reaches a metric.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"

#define SHARDS 16
#define STATUS_SLOTS 600
#define N_BUCKETS 14 /* finite upper bounds; index N_BUCKETS is +Inf */
#define RENDER_MAX (4u << 20)

static const double bucket_le[N_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                            0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const char *const bucket_text[N_BUCKETS] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                                   "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                                   "1",      "2.5",   "5",      "10"};
static const char *const class_name[GW_RC_COUNT] = {"proxy",  "phi",     "admin",
                                                    "health", "metrics", "other",
                                                    "webhook"};
static const char *const auth_name[GW_AF_COUNT] = {"missing", "malformed", "unknown",
                                                   "revoked", "expired",   "forbidden"};
static const char *const upstream_name[GW_UE_COUNT] = {"connect", "timeout", "reset"};

typedef atomic_uint_fast64_t counter;

/* One copy of every counter. Buckets are stored per bucket (not cumulative):
 * one increment per observation; render accumulates. */
typedef struct shard {
    _Alignas(64) counter requests[GW_RC_COUNT][STATUS_SLOTS];
    counter buckets[GW_RC_COUNT][N_BUCKETS + 1];
    counter duration_ns[GW_RC_COUNT];
    counter auth[GW_AF_COUNT];
    counter upstream[GW_UE_COUNT];
    counter ratelimit[2];   /* refused, allowed */
    counter rl_fallback;
    atomic_int_fast64_t connections; /* this shard's share of the gauge: may be negative */
} shard;

static shard shards[SHARDS];
static atomic_uint next_slot;
static _Thread_local int my_slot = -1;

static shard *this_shard(void)
{
    if (my_slot < 0)
        my_slot = (int)(atomic_fetch_add_explicit(&next_slot, 1, memory_order_relaxed) % SHARDS);
    return &shards[my_slot];
}

static void add(counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint64_t load(counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

void gw_metrics_init(void)
{
    size_t s;
    /* Stores, not memset: the counters are atomics. Meant for start-up and
     * tests; counts racing with it may survive. */
    for (s = 0; s < SHARDS; s++) {
        shard *sh = &shards[s];
        size_t c, i;
        for (c = 0; c < GW_RC_COUNT; c++) {
            for (i = 0; i < STATUS_SLOTS; i++)
                atomic_store_explicit(&sh->requests[c][i], 0, memory_order_relaxed);
            for (i = 0; i <= N_BUCKETS; i++)
                atomic_store_explicit(&sh->buckets[c][i], 0, memory_order_relaxed);
            atomic_store_explicit(&sh->duration_ns[c], 0, memory_order_relaxed);
        }
        for (i = 0; i < GW_AF_COUNT; i++)
            atomic_store_explicit(&sh->auth[i], 0, memory_order_relaxed);
        for (i = 0; i < GW_UE_COUNT; i++)
            atomic_store_explicit(&sh->upstream[i], 0, memory_order_relaxed);
        atomic_store_explicit(&sh->ratelimit[0], 0, memory_order_relaxed);
        atomic_store_explicit(&sh->ratelimit[1], 0, memory_order_relaxed);
        atomic_store_explicit(&sh->rl_fallback, 0, memory_order_relaxed);
        atomic_store_explicit(&sh->connections, 0, memory_order_relaxed);
    }
}

void gw_metrics_request(gw_route_class rc, int status, double seconds)
{
    shard *sh = this_shard();
    size_t b = 0;
    if ((unsigned)rc >= GW_RC_COUNT)
        rc = GW_RC_OTHER;
    if (status < 100 || status >= STATUS_SLOTS)
        status = 0;
    if (!(seconds > 0)) /* negative and NaN */
        seconds = 0;
    if (seconds > 1e9)
        seconds = 1e9; /* keeps the nanoseconds in range */
    while (b < N_BUCKETS && seconds > bucket_le[b])
        b++;
    add(&sh->requests[rc][status], 1);
    add(&sh->buckets[rc][b], 1);
    add(&sh->duration_ns[rc], (uint64_t)(seconds * 1e9 + 0.5));
}

void gw_metrics_auth_fail(gw_auth_fail why)
{
    if ((unsigned)why < GW_AF_COUNT)
        add(&this_shard()->auth[why], 1);
}

void gw_metrics_ratelimit(int allowed)
{
    add(&this_shard()->ratelimit[allowed ? 1 : 0], 1);
}

void gw_metrics_rl_fallback(void)
{
    add(&this_shard()->rl_fallback, 1);
}

void gw_metrics_upstream_error(gw_upstream_err what)
{
    if ((unsigned)what < GW_UE_COUNT)
        add(&this_shard()->upstream[what], 1);
}

void gw_metrics_connections(int delta)
{
    atomic_fetch_add_explicit(&this_shard()->connections, delta, memory_order_relaxed);
}

/* ---- rendering ------------------------------------------------------------------------- */

typedef struct outbuf {
    char *p;
    size_t len, cap;
    int failed; /* out of memory or over RENDER_MAX */
} outbuf;

__attribute__((format(printf, 2, 3))) static void out_printf(outbuf *o, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (o->failed)
        return;
    for (;;) {
        size_t room = o->cap - o->len;
        va_start(ap, fmt);
        n = vsnprintf(o->p + o->len, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < room) {
            o->len += (size_t)n;
            return;
        }
        {
            size_t ncap = o->cap * 2;
            char *np;
            while (ncap < o->len + (size_t)n + 1)
                ncap *= 2;
            if (ncap > RENDER_MAX) {
                o->failed = 1;
                return;
            }
            np = realloc(o->p, ncap);
            if (np == NULL) {
                o->failed = 1;
                return;
            }
            o->p = np;
            o->cap = ncap;
        }
    }
}

static void family(outbuf *o, const char *name, const char *type, const char *help)
{
    out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *gw_metrics_render(phg_audit *audit, const gw_wh_metrics *wh, size_t *len)
{
    outbuf o = {0};
    size_t c, i, s;
    int64_t conns = 0;

    o.cap = 16384;
    o.p = malloc(o.cap);
    if (o.p == NULL)
        return NULL;
    o.p[0] = '\0';

    family(&o, "phigate_http_requests_total", "counter",
           "HTTP requests answered, by route class and status.");
    for (c = 0; c < GW_RC_COUNT; c++) {
        for (i = 0; i < STATUS_SLOTS; i++) {
            uint64_t v = 0;
            for (s = 0; s < SHARDS; s++)
                v += load(&shards[s].requests[c][i]);
            if (v != 0)
                out_printf(&o, "phigate_http_requests_total{class=\"%s\",status=\"%zu\"} %llu\n",
                           class_name[c], i, (unsigned long long)v);
        }
    }

    family(&o, "phigate_http_request_duration_seconds", "histogram",
           "Time from the request head to the end of the response, by route class.");
    for (c = 0; c < GW_RC_COUNT; c++) {
        uint64_t cum = 0, ns = 0;
        for (i = 0; i <= N_BUCKETS; i++) {
            for (s = 0; s < SHARDS; s++)
                cum += load(&shards[s].buckets[c][i]);
            out_printf(
                &o, "phigate_http_request_duration_seconds_bucket{class=\"%s\",le=\"%s\"} %llu\n",
                class_name[c], i < N_BUCKETS ? bucket_text[i] : "+Inf", (unsigned long long)cum);
        }
        for (s = 0; s < SHARDS; s++)
            ns += load(&shards[s].duration_ns[c]);
        out_printf(&o, "phigate_http_request_duration_seconds_sum{class=\"%s\"} %.9f\n",
                   class_name[c], (double)ns / 1e9);
        out_printf(&o, "phigate_http_request_duration_seconds_count{class=\"%s\"} %llu\n",
                   class_name[c], (unsigned long long)cum);
    }

    family(&o, "phigate_auth_failures_total", "counter",
           "Requests refused for their API key, by reason.");
    for (i = 0; i < GW_AF_COUNT; i++) {
        uint64_t v = 0;
        for (s = 0; s < SHARDS; s++)
            v += load(&shards[s].auth[i]);
        out_printf(&o, "phigate_auth_failures_total{reason=\"%s\"} %llu\n", auth_name[i],
                   (unsigned long long)v);
    }

    family(&o, "phigate_upstream_errors_total", "counter",
           "Failed exchanges with the upstream, by kind.");
    for (i = 0; i < GW_UE_COUNT; i++) {
        uint64_t v = 0;
        for (s = 0; s < SHARDS; s++)
            v += load(&shards[s].upstream[i]);
        out_printf(&o, "phigate_upstream_errors_total{kind=\"%s\"} %llu\n", upstream_name[i],
                   (unsigned long long)v);
    }

    family(&o, "phigate_ratelimit_decisions_total", "counter",
           "Rate-limit decisions, by result.");
    for (i = 0; i < 2; i++) {
        uint64_t v = 0;
        for (s = 0; s < SHARDS; s++)
            v += load(&shards[s].ratelimit[i]);
        out_printf(&o, "phigate_ratelimit_decisions_total{result=\"%s\"} %llu\n",
                   i ? "allowed" : "refused", (unsigned long long)v);
    }
    family(&o, "phigate_ratelimit_fallback_total", "counter",
           "Decisions made by the fallback policy because Redis did not answer in time.");
    {
        uint64_t v = 0;
        for (s = 0; s < SHARDS; s++)
            v += load(&shards[s].rl_fallback);
        out_printf(&o, "phigate_ratelimit_fallback_total %llu\n", (unsigned long long)v);
    }

    family(&o, "phigate_connections", "gauge", "Client connections open now.");
    for (s = 0; s < SHARDS; s++)
        conns += atomic_load_explicit(&shards[s].connections, memory_order_relaxed);
    out_printf(&o, "phigate_connections %lld\n", (long long)conns);

    if (audit != NULL) {
        phg_audit_stats st;
        memset(&st, 0, sizeof st);
        phg_audit_get_stats(audit, &st);
        family(&o, "phigate_audit_queue_depth", "gauge", "Audit records waiting for the writer.");
        out_printf(&o, "phigate_audit_queue_depth %zu\n", st.queue_depth);
        family(&o, "phigate_audit_records_total", "counter", "Audit records made durable.");
        out_printf(&o, "phigate_audit_records_total %llu\n", (unsigned long long)st.appended);
        family(&o, "phigate_audit_failures_total", "counter",
               "Audit records that could not be written.");
        out_printf(&o, "phigate_audit_failures_total %llu\n", (unsigned long long)st.failed);
        family(&o, "phigate_audit_commits_total", "counter", "Audit group commits.");
        out_printf(&o, "phigate_audit_commits_total %llu\n", (unsigned long long)st.commits);
        family(&o, "phigate_audit_last_commit_seconds", "gauge",
               "Duration of the last audit group commit.");
        out_printf(&o, "phigate_audit_last_commit_seconds %.6f\n", st.last_commit_ms / 1e3);
        family(&o, "phigate_audit_commit_seconds_total", "counter",
               "Time the audit writer spent committing.");
        out_printf(&o, "phigate_audit_commit_seconds_total %.6f\n", st.commit_ms_total / 1e3);
    }

    if (wh != NULL) {
        family(&o, "phigate_webhook_requests_total", "counter",
               "Requests to /webhooks/..., by outcome.");
        out_printf(&o, "phigate_webhook_requests_total{outcome=\"accepted\"} %llu\n",
                   (unsigned long long)wh->accepted);
        out_printf(&o, "phigate_webhook_requests_total{outcome=\"duplicate\"} %llu\n",
                   (unsigned long long)wh->duplicates);
        out_printf(&o, "phigate_webhook_requests_total{outcome=\"refused\"} %llu\n",
                   (unsigned long long)wh->refused);
        out_printf(&o, "phigate_webhook_requests_total{outcome=\"handshake\"} %llu\n",
                   (unsigned long long)wh->handshakes);
        family(&o, "phigate_webhook_deliveries_total", "counter",
               "Delivery attempts to the upstream, by result.");
        out_printf(&o, "phigate_webhook_deliveries_total{result=\"delivered\"} %llu\n",
                   (unsigned long long)wh->delivered);
        out_printf(&o, "phigate_webhook_deliveries_total{result=\"retry\"} %llu\n",
                   (unsigned long long)wh->retried);
        out_printf(&o, "phigate_webhook_deliveries_total{result=\"dead\"} %llu\n",
                   (unsigned long long)wh->dead);
        if (wh->stats_ok) {
            family(&o, "phigate_webhook_inbox_events", "gauge",
                   "Events waiting in the inbox: pending, and dead (given up; replayable). "
                   "Read from the store every second.");
            out_printf(&o, "phigate_webhook_inbox_events{state=\"pending\"} %lld\n",
                       (long long)wh->pending);
            out_printf(&o, "phigate_webhook_inbox_events{state=\"dead\"} %lld\n",
                       (long long)wh->dead_now);
            family(&o, "phigate_webhook_delivery_lag_seconds", "gauge",
                   "Age of the oldest event not yet delivered (0: none pending).");
            out_printf(&o, "phigate_webhook_delivery_lag_seconds %.3f\n", wh->lag_s);
        }
    }

    if (o.failed) {
        free(o.p);
        return NULL;
    }
    if (len != NULL)
        *len = o.len;
    return o.p;
}
