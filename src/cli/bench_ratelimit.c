/*
 * bench_ratelimit.c: `phigate bench ratelimit`: decisions per second and ns
 * per decision of the local rate-limit engine (1 and 2 threads, 1 key and
 * 100,000 keys, about a second each), and with --redis URL the median and
 * p99 latency of one decision on Redis (EVALSHA of the library's script,
 * synchronous hiredis, one request at a time). Prints figures, never passes
 * or fails on time. bench/ratelimit.sh starts a throwaway Redis and runs it.
 *
 * What a local decision includes: hashing the key, the shard lock, the
 * sliding-window arithmetic; the clock is read once per batch of 64
 * decisions (the gateway reads it once per request anyway).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "cli.h"
#include "phigate/ratelimit.h"

int cli_bench_ratelimit(int argc, char **argv);

#define BATCH 64
#define KEY_LEN 19 /* "ak_" + 16 hex, the shape of an API key id */
#define MANY_KEYS 100000

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the local engine ------------------------------------------------------------- */

typedef struct local_run {
    phg_ratelimit *rl;
    const phg_rl_policy *policy;
    const char (*keys)[KEY_LEN + 1];
    size_t nkeys;
    atomic_int go, stop;
} local_run;

typedef struct local_worker {
    local_run *run;
    uint64_t seed;
    uint64_t ops, admitted, ns;
    int failed;
} local_worker;

static void *local_thread(void *argp)
{
    local_worker *w = argp;
    local_run *r = w->run;
    uint64_t x = w->seed, t0, ops = 0, admitted = 0;

    while (!atomic_load_explicit(&r->go, memory_order_acquire))
        ;
    t0 = now_ns();
    while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
        uint64_t now_ms = now_ns() / 1000000u;
        int i;
        for (i = 0; i < BATCH; i++) {
            phg_rl_decision d;
            size_t k = 0;
            if (r->nkeys > 1) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                k = (size_t)(((x & 0xffffffffu) * r->nkeys) >> 32);
            }
            if (phg_rl_check(r->rl, r->keys[k], KEY_LEN, r->policy, now_ms, &d) != PHG_OK) {
                w->failed = 1;
                return NULL;
            }
            admitted += (uint64_t)d.allowed;
        }
        ops += BATCH;
    }
    w->ns = now_ns() - t0;
    w->ops = ops;
    w->admitted = admitted;
    return NULL;
}

/* One timed run on a fresh engine; adds a row to rows or prints it. */
static int local_case(const char (*keys)[KEY_LEN + 1], size_t nkeys, size_t threads,
                      const char *policy_text, double seconds, json_t *rows)
{
    local_worker w[2];
    pthread_t th[2];
    local_run r;
    phg_rl_policy policy;
    phg_rl_stats st;
    char err[128];
    size_t i, started = 0;
    uint64_t ops = 0, admitted = 0;
    double per_s = 0, ns_per = 0;
    int ok = 1;

    if (threads > 2 || phg_rl_policy_parse(policy_text, &policy, err, sizeof err) != PHG_OK) {
        cli_error("bench: bad case: %s", err);
        return -1;
    }
    memset(&r, 0, sizeof r);
    if (phg_rl_new(NULL, &r.rl) != PHG_OK) {
        cli_error("bench: cannot create the rate-limit engine");
        return -1;
    }
    r.policy = &policy;
    r.keys = keys;
    r.nkeys = nkeys;
    atomic_init(&r.go, 0);
    atomic_init(&r.stop, 0);
    /* Every key known before the clock starts: the steady state of a gateway. */
    for (i = 0; i < nkeys; i++) {
        phg_rl_decision d;
        if (phg_rl_check(r.rl, keys[i], KEY_LEN, &policy, now_ns() / 1000000u, &d) != PHG_OK)
            ok = 0;
    }
    for (i = 0; ok && i < threads; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].run = &r;
        w[i].seed = 0x9e3779b97f4a7c15ull * (i + 1);
        if (pthread_create(&th[i], NULL, local_thread, &w[i]) != 0)
            ok = 0;
        else
            started++;
    }
    atomic_store_explicit(&r.go, 1, memory_order_release);
    if (ok) {
        struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    atomic_store(&r.stop, 1);
    for (i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        if (w[i].failed || w[i].ops == 0) {
            ok = 0;
            continue;
        }
        ops += w[i].ops;
        admitted += w[i].admitted;
        per_s += (double)w[i].ops * 1e9 / (double)w[i].ns;
        ns_per += (double)w[i].ns / (double)w[i].ops / (double)started;
    }
    phg_rl_get_stats(r.rl, &st);
    phg_rl_free(r.rl);
    if (!ok) {
        cli_error("bench: a rate-limit decision failed");
        return -1;
    }
    if (rows != NULL) {
        json_array_append_new(rows, json_pack("{s:I,s:I,s:s,s:I,s:f,s:f,s:f,s:I,s:f}", "threads",
                                              (json_int_t)threads, "keys", (json_int_t)nkeys,
                                              "policy", policy_text, "decisions", (json_int_t)ops,
                                              "decisions_per_s", per_s, "ns_per_decision", ns_per,
                                              "admitted_fraction", (double)admitted / (double)ops,
                                              "engine_bytes", (json_int_t)st.bytes, "bytes_per_key",
                                              (double)st.bytes / (double)st.keys));
    } else {
        char per_key[32] = "-"; /* with one key it would be the fixed overhead */
        if (nkeys >= 1000)
            snprintf(per_key, sizeof per_key, "%.0f", (double)st.bytes / (double)st.keys);
        printf("%8zu %8zu  %-16s %14.0f %10.1f %9.1f%% %10s\n", threads, nkeys, policy_text, per_s,
               ns_per, 100.0 * (double)admitted / (double)ops, per_key);
    }
    return 0;
}

/* ---- Redis ------------------------------------------------------------------------ */

/* "redis://HOST:PORT" (an optional trailing "/"); no credentials. */
static int parse_redis_url(const char *url, char *host, size_t host_len, int *port)
{
    const char *p, *colon;
    char *end;
    long v;
    if (strncmp(url, "redis://", 8) != 0)
        return -1;
    p = url + 8;
    colon = strrchr(p, ':');
    if (colon == NULL || colon == p || (size_t)(colon - p) >= host_len || strchr(p, '@') != NULL)
        return -1;
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    errno = 0;
    v = strtol(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || (*end != '\0' && strcmp(end, "/") != 0) || v < 1 ||
        v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One EVALSHA decision; 0 when the reply parsed. */
static int redis_decide(redisContext *c, int argc, const char **argv, const size_t *lens,
                        phg_rl_decision *d)
{
    long long values[16];
    redisReply *reply = redisCommandArgv(c, argc, argv, lens);
    size_t i;
    int rc = -1;
    if (reply == NULL)
        return -1;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements <= 16) {
        for (i = 0; i < reply->elements; i++) {
            if (reply->element[i]->type != REDIS_REPLY_INTEGER)
                break;
            values[i] = reply->element[i]->integer;
        }
        if (i == reply->elements && phg_rl_redis_parse(values, i, d) == PHG_OK)
            rc = 0;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        cli_error("bench: Redis answered: %.200s", reply->str);
    }
    freeReplyObject(reply);
    return rc;
}

/* `requests` sequential decisions under one policy; median and p99 in µs. */
static int redis_case(redisContext *c, const char *sha, const char *key, const char *policy_text,
                      size_t requests, json_t *rows)
{
    const char *argv[5 + 2 * PHG_RL_WINDOWS_MAX];
    size_t lens[5 + 2 * PHG_RL_WINDOWS_MAX];
    char nums[1 + 2 * PHG_RL_WINDOWS_MAX][24];
    phg_rl_policy policy;
    char err[128];
    uint64_t *ns = NULL, admitted = 0;
    size_t i;
    int argc = 0, rc = -1;

    if (phg_rl_policy_parse(policy_text, &policy, err, sizeof err) != PHG_OK || policy.n == 0)
        return -1;
    argv[argc++] = "EVALSHA";
    argv[argc++] = sha;
    argv[argc++] = "1";
    argv[argc++] = key;
    argv[argc++] = "check";
    snprintf(nums[0], sizeof nums[0], "%zu", policy.n);
    argv[argc++] = nums[0];
    for (i = 0; i < policy.n; i++) {
        snprintf(nums[1 + 2 * i], sizeof nums[0], "%u", (unsigned)policy.limits[i].count);
        snprintf(nums[2 + 2 * i], sizeof nums[0], "%llu",
                 (unsigned long long)policy.limits[i].window_s * 1000u);
        argv[argc++] = nums[1 + 2 * i];
        argv[argc++] = nums[2 + 2 * i];
    }
    for (i = 0; i < (size_t)argc; i++)
        lens[i] = strlen(argv[i]);
    ns = malloc(requests * sizeof *ns);
    if (ns == NULL)
        return -1;
    for (i = 0; i < 1000; i++) { /* warm up the connection and the script */
        phg_rl_decision d;
        if (redis_decide(c, argc, argv, lens, &d) != 0)
            goto out;
    }
    for (i = 0; i < requests; i++) {
        phg_rl_decision d;
        uint64_t t0 = now_ns();
        if (redis_decide(c, argc, argv, lens, &d) != 0)
            goto out;
        ns[i] = now_ns() - t0;
        admitted += (uint64_t)d.allowed;
    }
    qsort(ns, requests, sizeof *ns, cmp_u64);
    if (rows != NULL)
        json_array_append_new(
            rows, json_pack("{s:s,s:I,s:f,s:f,s:f}", "policy", policy_text, "requests",
                            (json_int_t)requests, "median_us", (double)ns[requests / 2] / 1e3,
                            "p99_us", (double)ns[requests * 99 / 100] / 1e3, "admitted_fraction",
                            (double)admitted / (double)requests));
    else
        printf("  %-16s %8zu requests: median %6.1f us, p99 %6.1f us, %5.1f%% admitted\n",
               policy_text, requests, (double)ns[requests / 2] / 1e3,
               (double)ns[requests * 99 / 100] / 1e3, 100.0 * (double)admitted / (double)requests);
    rc = 0;
out:
    free(ns);
    return rc;
}

static int bench_redis(const char *url, size_t requests, json_t *rows)
{
    char host[256], key[PHG_RL_KEY_MAX + 64];
    struct timeval tv = {2, 0};
    redisContext *c = NULL;
    redisReply *reply = NULL;
    const char *script = phg_rl_redis_script(), *sha = phg_rl_redis_script_sha();
    int port, rc = -1;

    if (parse_redis_url(url, host, sizeof host, &port) != 0) {
        cli_error("bench: --redis must look like redis://127.0.0.1:6379");
        return -1;
    }
    if (script == NULL || sha == NULL || *script == '\0') {
        cli_error("bench: this build has no Redis script");
        return -1;
    }
    if (phg_rl_redis_key("ak_bench0000000000", 18, key, sizeof key) != PHG_OK) {
        cli_error("bench: cannot make the Redis key");
        return -1;
    }
    c = redisConnectWithTimeout(host, port, tv);
    if (c == NULL || c->err != 0) {
        cli_error("bench: cannot connect to Redis at %s:%d: %s", host, port,
                  c != NULL ? c->errstr : "out of memory");
        goto out;
    }
    redisSetTimeout(c, tv);
    reply = redisCommand(c, "SCRIPT LOAD %s", script);
    if (reply == NULL || reply->type != REDIS_REPLY_STRING) {
        cli_error("bench: SCRIPT LOAD failed: %.200s",
                  reply != NULL && reply->type == REDIS_REPLY_ERROR ? reply->str : c->errstr);
        goto out;
    }
    if (strcmp(reply->str, sha) != 0) {
        cli_error("bench: Redis gives the script the SHA-1 %.64s, the library says %.64s",
                  reply->str, sha);
        goto out;
    }
    freeReplyObject(reply);
    reply = NULL;
    freeReplyObject(redisCommand(c, "DEL %s", key));
    if (rows == NULL)
        printf("\nRedis decisions at %s:%d, one at a time (EVALSHA, synchronous hiredis)\n", host,
               port);
    if (redis_case(c, sha, key, "999999999/1h", requests, rows) != 0)
        goto out;
    freeReplyObject(redisCommand(c, "DEL %s", key));
    if (redis_case(c, sha, key, "100/1m,5000/1h", requests, rows) != 0)
        goto out;
    rc = 0;
out:
    if (rc != 0 && c != NULL && c->err != 0)
        cli_error("bench: Redis: %s", c->errstr);
    if (c != NULL && c->err == 0)
        freeReplyObject(redisCommand(c, "DEL %s", key));
    freeReplyObject(reply);
    redisFree(c);
    return rc;
}

/* ---- the command ------------------------------------------------------------------ */

int cli_bench_ratelimit(int argc, char **argv)
{
    static const struct {
        size_t threads, keys;
        const char *policy;
    } cases[] = {
        {1, 1, "999999999/1h"},         {2, 1, "999999999/1h"}, {1, MANY_KEYS, "999999999/1h"},
        {2, MANY_KEYS, "999999999/1h"}, {2, MANY_KEYS, "2/1m"}, /* mostly refused */
        {2, 1, "100/1m,5000/1h"},                               /* refused, two windows */
    };
    cli_opt opts[] = {{"json", 0, NULL, 0},
                      {"redis", 1, NULL, 0},
                      {"ms", 1, NULL, 0},
                      {"requests", 1, NULL, 0},
                      {NULL, 0, NULL, 0}};
    char(*keys)[KEY_LEN + 1] = NULL;
    json_t *local = NULL, *redis = NULL;
    size_t secs_ms = 1000, requests = 20000, i;
    uint64_t x = 0x2545f4914f6cdd1dull;
    int rc = CLI_FAIL;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate bench ratelimit [--ms N] [--redis redis://HOST:PORT]\n"
             "                               [--requests N] [--json]\n\n"
             "Rate-limit decisions of the local engine: decisions/s (all threads) and ns per\n"
             "decision (per thread) for 1 and 2 threads on 1 key and on 100,000 keys, about\n"
             "N milliseconds each (default 1000), with a policy that admits everything, then\n"
             "with refusals. With --redis, also the median and p99 latency\n"
             "of one decision on that Redis (EVALSHA, one at a time, --requests of them;\n"
             "default 20,000). bench/ratelimit.sh starts a throwaway Redis and runs both.");
        return CLI_OK;
    }
    if (cli_parse_opts("bench ratelimit", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[2].set &&
        (!cli_parse_size(opts[2].value, &secs_ms) || secs_ms < 10 || secs_ms > 60000))
        return cli_usage("bench ratelimit", "--ms must be 10 to 60000");
    if (opts[3].set &&
        (!cli_parse_size(opts[3].value, &requests) || requests < 100 || requests > 10000000))
        return cli_usage("bench ratelimit", "--requests must be 100 to 10000000");
    keys = malloc(MANY_KEYS * sizeof *keys);
    if (keys == NULL) {
        cli_error("out of memory");
        return CLI_FAIL;
    }
    for (i = 0; i < MANY_KEYS; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        snprintf(keys[i], sizeof keys[i], "ak_%016llx", (unsigned long long)x);
    }
    if (opts[0].set) {
        local = json_array();
        redis = json_array();
        if (local == NULL || redis == NULL) {
            cli_error("out of memory");
            goto out;
        }
    } else {
        printf("Local rate-limit engine, ~%zu ms per row (ns/decision is per thread)\n"
               "%8s %8s  %-16s %14s %10s %10s %10s\n",
               secs_ms, "threads", "keys", "policy", "decisions/s", "ns/dec", "admitted",
               "bytes/key");
    }
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (local_case((const char(*)[KEY_LEN + 1]) keys, cases[i].keys, cases[i].threads,
                       cases[i].policy, (double)secs_ms / 1000.0, local) != 0)
            goto out;
    }
    if (opts[1].set && bench_redis(opts[1].value, requests, redis) != 0)
        goto out;
    if (opts[0].set) {
        json_t *o = json_pack("{s:{s:o,s:o}}", "ratelimit", "local", local, "redis", redis);
        local = redis = NULL;
        rc = cli_print_json(o);
    } else {
        rc = CLI_OK;
    }
out:
    json_decref(local);
    json_decref(redis);
    free(keys);
    return rc;
}
