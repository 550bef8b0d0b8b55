/*
 * tests/unit/test_redis_rl.c: the Redis engine: the Lua script of
 * src/ratelimit_redis.c on a real redis-server (a hand-worked sequence, its
 * argument checks, its key layout and expiry, the same random sequence as
 * the local engine of src/ratelimit.c), and the gateway's clients of
 * src/server/redis_rl.c: exactly N admitted by two event loops at once,
 * NOSCRIPT after SCRIPT FLUSH, a stopped server (SIGSTOP: the callback gets
 * PHG_ERR_UNAVAILABLE, then SIGCONT and it works again), a server killed
 * and restarted on its port, a Redis Cluster of three masters reached
 * through one node (MOVED and ASK), and the redis:// URL parser.
 *
 * The servers are started by tests/redis_server.sh (env PHG_REDIS_SERVER,
 * else found next to this file) in temporary folders. Without redis-server
 * the tests fail: they never skip.
 */
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "gw.h"
#include "phigate/ratelimit.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static char g_script[PATH_MAX];
static char g_dir[64]; /* the single server */
static int g_port;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the servers ----------------------------------------------------------------------- */

static const char *server_script(void)
{
    const char *env = getenv("PHG_REDIS_SERVER");
    char *slash;
    if (env != NULL && env[0] != '\0')
        return env;
    /* __FILE__ is .../tests/unit/test_redis_rl.c */
    snprintf(g_script, sizeof(g_script), "%s", __FILE__);
    slash = strrchr(g_script, '/');
    if (slash != NULL) {
        *slash = '\0';
        slash = strrchr(g_script, '/');
    }
    if (slash == NULL)
        snprintf(g_script, sizeof(g_script), "tests/redis_server.sh");
    else
        snprintf(slash, sizeof(g_script) - (size_t)(slash - g_script), "/redis_server.sh");
    return g_script;
}

static int run_script(const char *cmd, const char *dir, const char *extra)
{
    char line[PATH_MAX + 256];
    snprintf(line, sizeof(line), "sh '%s' %s '%s' %s >/dev/null", server_script(), cmd, dir,
             extra ? extra : "");
    return system(line);
}

static int read_ports(const char *dir, int *ports, int max)
{
    char path[128];
    FILE *f;
    int n = 0;
    snprintf(path, sizeof(path), "%s/ports", dir);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    while (n < max && fscanf(f, "%d", &ports[n]) == 1)
        n++;
    fclose(f);
    return n;
}

static pid_t server_pid(const char *dir, int port)
{
    char path[128];
    FILE *f;
    long pid = 0;
    snprintf(path, sizeof(path), "%s/redis-%d.pid", dir, port);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return (pid_t)pid;
}

static void rm_dir(const char *dir)
{
    char line[128];
    snprintf(line, sizeof(line), "rm -rf '%s'", dir);
    if (system(line) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/phg-redis-XXXXXX");
    if (mkdtemp(g_dir) == NULL) {
        fprintf(stderr, "mkdtemp failed\n");
        return -1;
    }
    if (run_script("start", g_dir, NULL) != 0 || read_ports(g_dir, &g_port, 1) != 1) {
        fprintf(stderr, "cannot start redis-server with %s (is redis-server installed?)\n",
                server_script());
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    run_script("stop", g_dir, NULL);
    rm_dir(g_dir);
    return 0;
}

static redisContext *raw(int port)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    EXPECT(c != NULL && !c->err, "cannot connect to redis on %d", port);
    return c;
}

static void raw_cmd(redisContext *c, const char *cmd)
{
    redisReply *r = redisCommand(c, cmd);
    EXPECT(r != NULL && r->type != REDIS_REPLY_ERROR, "%s failed", cmd);
    freeReplyObject(r);
}

static long long raw_int(redisContext *c, const char *fmt, const char *arg)
{
    redisReply *r = redisCommand(c, fmt, arg);
    long long v;
    EXPECT(r != NULL && r->type == REDIS_REPLY_INTEGER, "%s: not an integer", fmt);
    v = r->integer;
    freeReplyObject(r);
    return v;
}

/* ---- the script, called by hand ------------------------------------------------------- */

static phg_rl_policy pol(size_t n, ...)
{
    phg_rl_policy p;
    va_list ap;
    size_t i;
    memset(&p, 0, sizeof(p));
    va_start(ap, n);
    for (i = 0; i < n; i++) {
        p.limits[i].count = va_arg(ap, unsigned);
        p.limits[i].window_s = va_arg(ap, unsigned);
    }
    va_end(ap);
    p.n = n;
    return p;
}

/* EVAL the script with the given ARGV; the reply (the caller frees it). */
static redisReply *eval_argv(redisContext *c, const char *key, int argc, const char *const *args)
{
    const char *argv[32];
    int i;
    assert_true(argc + 4 <= 32);
    argv[0] = "EVAL";
    argv[1] = phg_rl_redis_script();
    argv[2] = "1";
    argv[3] = key;
    for (i = 0; i < argc; i++)
        argv[4 + i] = args[i];
    return redisCommandArgv(c, argc + 4, argv, NULL);
}

/* mode_at at now_ms under p for key: the decision. */
static phg_rl_decision eval_at(redisContext *c, const char *key, const char *mode,
                               const phg_rl_policy *p, uint64_t now)
{
    char nums[12][24], rkey[200];
    const char *args[12];
    long long v[6];
    redisReply *r;
    phg_rl_decision d;
    int argc = 0;
    size_t i;

    assert_int_equal(phg_rl_redis_key(key, strlen(key), rkey, sizeof(rkey)), PHG_OK);
    args[argc++] = mode;
    snprintf(nums[0], sizeof(nums[0]), "%zu", p->n);
    args[argc++] = nums[0];
    for (i = 0; i < p->n; i++) {
        snprintf(nums[1 + 2 * i], 24, "%u", p->limits[i].count);
        snprintf(nums[2 + 2 * i], 24, "%u", p->limits[i].window_s * 1000u);
        args[argc++] = nums[1 + 2 * i];
        args[argc++] = nums[2 + 2 * i];
    }
    snprintf(nums[11], 24, "%llu", (unsigned long long)now);
    args[argc++] = nums[11];
    r = eval_argv(c, rkey, argc, args);
    EXPECT(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 6, "bad script reply%s%s",
           r && r->type == REDIS_REPLY_ERROR ? ": " : "",
           r && r->type == REDIS_REPLY_ERROR ? r->str : "");
    for (i = 0; i < 6; i++)
        v[i] = r->element[i]->integer;
    freeReplyObject(r);
    assert_int_equal(phg_rl_redis_parse(v, 6, &d), PHG_OK);
    return d;
}

static void expect_decision(phg_rl_decision d, int allowed, uint32_t limit, uint32_t window_s,
                            uint32_t remaining, uint32_t reset_s, uint32_t retry_after_s)
{
    EXPECT(d.allowed == allowed && d.limit == limit && d.window_s == window_s &&
               d.remaining == remaining && d.reset_s == reset_s && d.retry_after_s == retry_after_s,
           "got allowed=%d limit=%u window=%u remaining=%u reset=%u retry=%u, want "
           "%d %u %u %u %u %u",
           d.allowed, d.limit, d.window_s, d.remaining, d.reset_s, d.retry_after_s, allowed, limit,
           window_s, remaining, reset_s, retry_after_s);
}

static void test_script_sha(void **state)
{
    redisContext *c = raw(g_port);
    redisReply *r;
    const char *sha = phg_rl_redis_script_sha();
    (void)state;
    assert_int_equal(strlen(sha), 40);
    assert_ptr_equal(sha, phg_rl_redis_script_sha()); /* static, computed once */
    r = redisCommand(c, "SCRIPT LOAD %s", phg_rl_redis_script());
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, sha);
    freeReplyObject(r);
    redisFree(c);
}

/*
 * 3 per 10 s (g = 1 s) and 5 per 30 s (g = 3 s), worked by hand:
 *   t = 100.0 s: sub-windows 100 and 33; fresh: admitted, 2 left of 3.
 *   t = 100.5, 101.2: admitted; the third leaves 0 of 3; the oldest
 *     non-empty sub-window (100) leaves the range [b-10, b] at 111 s: reset
 *     ceil((111000 - 101200) / 1000) = 10.
 *   t = 105.0: refused (3 in [95, 105]); retry when sub-window 100 leaves
 *     (111 s): 6 s. Nothing is counted.
 *   t = 111.0: b = 111, range [101, 111] holds 1 (t = 101.2): admitted, 1 left of 3;
 *     the 30 s window holds 4 of 5: 1 left too; tie: the shorter window binds.
 *   t = 111.5: admitted; 10 s window: 0 left (reset at 112 + ... : sub-window 101
 *     leaves at 112 s: 1 s); 30 s window: 5 of 5, 0 left; tie: 10 s binds.
 *   t = 112.0: 10 s window holds 2 (111, 111): 1 left, but the 30 s window
 *     (sub-window 37, range [27, 37]) holds 5: refused by it; it frees when
 *     sub-window 33 (3 requests) leaves at 34 * 3 + 3 * 11 ... = (33 + 11) * 3 s
 *     = 132 s: retry 20 s; binding: the 30 s window (0 left), reset 20 s.
 */
static void test_script_hand_worked(void **state)
{
    redisContext *c = raw(g_port);
    phg_rl_policy p = pol(2, 3u, 10u, 5u, 30u);
    (void)state;
    raw_cmd(c, "DEL phigate:rl:{hand}");
    expect_decision(eval_at(c, "hand", "check_at", &p, 100000), 1, 3, 10, 2, 0, 0);
    expect_decision(eval_at(c, "hand", "check_at", &p, 100500), 1, 3, 10, 1, 0, 0);
    expect_decision(eval_at(c, "hand", "peek_at", &p, 101200), 1, 3, 10, 0, 10, 0);
    expect_decision(eval_at(c, "hand", "check_at", &p, 101200), 1, 3, 10, 0, 10, 0);
    expect_decision(eval_at(c, "hand", "check_at", &p, 105000), 0, 3, 10, 0, 6, 6);
    expect_decision(eval_at(c, "hand", "peek_at", &p, 105000), 0, 3, 10, 0, 6, 6);
    expect_decision(eval_at(c, "hand", "check_at", &p, 111000), 1, 3, 10, 1, 0, 0);
    expect_decision(eval_at(c, "hand", "check_at", &p, 111500), 1, 3, 10, 0, 1, 0);
    expect_decision(eval_at(c, "hand", "check_at", &p, 112000), 0, 5, 30, 0, 20, 20);
    /* At most n * (S + 2) fields; expires after the longest window and one sub-window. */
    EXPECT(raw_int(c, "HLEN %s", "phigate:rl:{hand}") <= 2 * (PHG_RL_SUBWINDOWS + 2),
           "too many fields");
    {
        long long ttl = raw_int(c, "PTTL %s", "phigate:rl:{hand}");
        EXPECT(ttl > 0 && ttl <= 33000, "pttl %lld", ttl);
    }
    /* reset: the key is gone and the answer is a fresh key's. */
    {
        phg_rl_policy one = pol(1, 3u, 10u);
        const char *args[] = {"reset", "1", "3", "10000"};
        redisReply *r = eval_argv(c, "phigate:rl:{hand}", 4, args);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        freeReplyObject(r);
        assert_int_equal(raw_int(c, "EXISTS %s", "phigate:rl:{hand}"), 0);
        expect_decision(eval_at(c, "hand", "check_at", &one, 112000), 1, 3, 10, 2, 0, 0);
    }
    redisFree(c);
}

/* A key's time never goes back (TIME is the wall clock): an earlier now_ms
 * is taken as the time of the last admitted request, as the local engine does. */
static void test_script_clock_back(void **state)
{
    redisContext *c = raw(g_port);
    phg_rl_policy p = pol(1, 2u, 10u);
    phg_ratelimit *rl = NULL;
    phg_rl_decision d;
    (void)state;
    raw_cmd(c, "DEL phigate:rl:{back}");
    assert_int_equal(phg_rl_new(NULL, &rl), PHG_OK);
    expect_decision(eval_at(c, "back", "check_at", &p, 200000), 1, 2, 10, 1, 0, 0);
    expect_decision(eval_at(c, "back", "check_at", &p, 200100), 1, 2, 10, 0, 11, 0);
    expect_decision(eval_at(c, "back", "check_at", &p, 150000), 0, 2, 10, 0, 11, 11);
    expect_decision(eval_at(c, "back", "peek_at", &p, 1000), 0, 2, 10, 0, 11, 11);
    /* The local engine agrees. */
    assert_int_equal(phg_rl_check(rl, "back", 4, &p, 200000, &d), PHG_OK);
    assert_int_equal(phg_rl_check(rl, "back", 4, &p, 200100, &d), PHG_OK);
    assert_int_equal(phg_rl_check(rl, "back", 4, &p, 150000, &d), PHG_OK);
    expect_decision(d, 0, 2, 10, 0, 11, 11);
    phg_rl_free(rl);
    redisFree(c);
}

/* Many sub-windows and a policy change later, the hash stays small. */
static void test_script_fields_bounded(void **state)
{
    redisContext *c = raw(g_port);
    phg_rl_policy a = pol(3, 2u, 1u, 5u, 10u, 20u, 60u), b = pol(1, 4u, 2u);
    uint64_t t = 5000000;
    int i;
    (void)state;
    raw_cmd(c, "DEL phigate:rl:{fb}");
    for (i = 0; i < 400; i++, t += 137) {
        (void)eval_at(c, "fb", "check_at", &a, t);
        EXPECT(raw_int(c, "HLEN %s", "phigate:rl:{fb}") <= 3 * (PHG_RL_SUBWINDOWS + 1) + 1,
               "step %d: %lld fields", i, raw_int(c, "HLEN %s", "phigate:rl:{fb}"));
    }
    for (i = 0; i < 50; i++, t += 251) {
        (void)eval_at(c, "fb", "check_at", &b, t);
        EXPECT(raw_int(c, "HLEN %s", "phigate:rl:{fb}") <= PHG_RL_SUBWINDOWS + 2,
               "after the policy change, step %d: %lld fields", i,
               raw_int(c, "HLEN %s", "phigate:rl:{fb}"));
    }
    redisFree(c);
}

static void test_script_bad_args(void **state)
{
    static const struct {
        int argc;
        const char *args[8];
    } bad[] = {
        {3, {"bogus", "1", "3"}},
        {4, {"fetch", "1", "3", "10000"}},
        {4, {"check", "5", "3", "10000"}},
        {4, {"check", "-1", "3", "10000"}},
        {3, {"check", "1", "3"}},
        {4, {"check", "1", "0", "10000"}},
        {4, {"check", "1", "3", "0"}},
        {4, {"check", "1", "3", "1500"}},
        {4, {"check", "1", "3", "8640001000"}},
        {4, {"check", "1", "1000000000", "10000"}},
        {4, {"check", "1", "x", "10000"}},
        {6, {"check", "2", "3", "10000", "5", "10000"}},
        {6, {"check", "2", "3", "20000", "5", "10000"}},
        {4, {"check_at", "1", "3", "10000"}},
        {5, {"check_at", "1", "3", "10000", "soon"}},
        {5, {"check", "1", "3", "10000", "1234"}},
        {5, {"peek_at", "1", "3", "10000", "-5"}},
    };
    redisContext *c = raw(g_port);
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        redisReply *r = eval_argv(c, "phigate:rl:{bad}", bad[i].argc, bad[i].args);
        EXPECT(r != NULL && r->type == REDIS_REPLY_ERROR, "case %zu accepted", i);
        freeReplyObject(r);
    }
    assert_int_equal(raw_int(c, "EXISTS %s", "phigate:rl:{bad}"), 0);
    redisFree(c);
}

static void test_key_and_parse(void **state)
{
    char buf[200];
    char long_key[PHG_RL_KEY_MAX + 1];
    long long ok[6] = {1, 100, 60, 99, 0, 0};
    long long bad[6];
    phg_rl_decision d;
    (void)state;
    assert_int_equal(phg_rl_redis_key("ak_1", 4, buf, sizeof(buf)), PHG_OK);
    assert_string_equal(buf, "phigate:rl:{ak_1}");
    assert_int_equal(phg_rl_redis_key("ak_1", 4, buf, 17), PHG_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(phg_rl_redis_key("ak_1", 4, buf, 18), PHG_OK);
    assert_int_equal(phg_rl_redis_key("", 0, buf, sizeof(buf)), PHG_ERR_INVALID);
    assert_int_equal(phg_rl_redis_key("a}b", 3, buf, sizeof(buf)), PHG_ERR_INVALID);
    assert_int_equal(phg_rl_redis_key("a{b", 3, buf, sizeof(buf)), PHG_ERR_INVALID);
    assert_int_equal(phg_rl_redis_key("a b", 3, buf, sizeof(buf)), PHG_ERR_INVALID);
    assert_int_equal(phg_rl_redis_key("a\nb", 3, buf, sizeof(buf)), PHG_ERR_INVALID);
    memset(long_key, 'k', sizeof(long_key));
    assert_int_equal(phg_rl_redis_key(long_key, PHG_RL_KEY_MAX, buf, sizeof(buf)), PHG_OK);
    assert_int_equal(phg_rl_redis_key(long_key, PHG_RL_KEY_MAX + 1, buf, sizeof(buf)),
                     PHG_ERR_INVALID);

    assert_int_equal(phg_rl_redis_parse(ok, 6, &d), PHG_OK);
    expect_decision(d, 1, 100, 60, 99, 0, 0);
    assert_int_equal(phg_rl_redis_parse(ok, 5, &d), PHG_ERR_INVALID);
    assert_int_equal(phg_rl_redis_parse(ok, 7, &d), PHG_ERR_INVALID);
    assert_int_equal(phg_rl_redis_parse(NULL, 6, &d), PHG_ERR_INVALID);
    memcpy(bad, ok, sizeof(bad));
    bad[0] = 2; /* allowed is 0 or 1 */
    assert_int_equal(phg_rl_redis_parse(bad, 6, &d), PHG_ERR_INVALID);
    memcpy(bad, ok, sizeof(bad));
    bad[3] = 101; /* more remaining than the limit */
    assert_int_equal(phg_rl_redis_parse(bad, 6, &d), PHG_ERR_INVALID);
    memcpy(bad, ok, sizeof(bad));
    bad[4] = -1;
    assert_int_equal(phg_rl_redis_parse(bad, 6, &d), PHG_ERR_INVALID);
    memcpy(bad, ok, sizeof(bad));
    bad[0] = 0; /* refused without a retry time */
    assert_int_equal(phg_rl_redis_parse(bad, 6, &d), PHG_ERR_INVALID);
    memcpy(bad, ok, sizeof(bad));
    bad[1] = 1000000000;
    bad[3] = 0;
    assert_int_equal(phg_rl_redis_parse(bad, 6, &d), PHG_ERR_INVALID);
}

/* One random sequence of (time, key, check|peek, policy) through the local
 * engine and the script: every decision equal. */
static void test_script_matches_local(void **state)
{
    const phg_rl_policy policies[] = {
        pol(1, 3u, 1u),
        pol(2, 4u, 2u, 9u, 10u),
        pol(3, 2u, 1u, 5u, 5u, 12u, 30u),
        pol(1, 7u, 3u),
    };
    const char *keys[] = {"rk0", "rk1", "rk2", "rk3"};
    redisContext *c = raw(g_port);
    phg_ratelimit *rl = NULL;
    uint64_t t = 1700000000000ull;
    unsigned seed = 12345;
    int i, admitted = 0, refused = 0;
    (void)state;
    assert_int_equal(phg_rl_new(NULL, &rl), PHG_OK);
    for (i = 0; i < 4; i++) {
        char cmd[64];
        snprintf(cmd, sizeof(cmd), "DEL phigate:rl:{%s}", keys[i]);
        raw_cmd(c, cmd);
    }
    for (i = 0; i < 3000; i++) {
        int k = rand_r(&seed) % 4;
        /* key k always under its own policy, except rarely another (a policy change) */
        int pi = (rand_r(&seed) % 50 == 0) ? rand_r(&seed) % 4 : k;
        int is_peek = rand_r(&seed) % 8 == 0;
        phg_rl_decision dl, dr;
        phg_status rc;
        int step = rand_r(&seed) % 10;
        t += step < 6 ? (uint64_t)(rand_r(&seed) % 120) : (uint64_t)(rand_r(&seed) % 1500);
        if (is_peek)
            rc = phg_rl_peek(rl, keys[k], 3, &policies[pi], t, &dl);
        else
            rc = phg_rl_check(rl, keys[k], 3, &policies[pi], t, &dl);
        assert_int_equal(rc, PHG_OK);
        dr = eval_at(c, keys[k], is_peek ? "peek_at" : "check_at", &policies[pi], t);
        EXPECT(memcmp(&dl, &dr, sizeof(dl)) == 0,
               "step %d (key %d, policy %d, %s at %llu): local %d %u %u %u %u %u, redis %d %u "
               "%u %u %u %u",
               i, k, pi, is_peek ? "peek" : "check", (unsigned long long)t, dl.allowed, dl.limit,
               dl.window_s, dl.remaining, dl.reset_s, dl.retry_after_s, dr.allowed, dr.limit,
               dr.window_s, dr.remaining, dr.reset_s, dr.retry_after_s);
        if (dl.allowed)
            admitted++;
        else
            refused++;
    }
    /* The sequence exercised both answers. */
    EXPECT(admitted > 300 && refused > 300, "admitted %d refused %d", admitted, refused);
    phg_rl_free(rl);
    redisFree(c);
}

/* ---- the asynchronous client ------------------------------------------------------------ */

typedef struct waiter {
    int calls;
    phg_status status;
    phg_rl_decision d;
} waiter;

static void on_decision(void *arg, phg_status status, const phg_rl_decision *d)
{
    waiter *w = arg;
    w->calls++;
    w->status = status;
    if (status == PHG_OK) {
        assert_non_null(d);
        w->d = *d;
    } else {
        assert_null(d);
    }
}

/* Run base until w has its answer (or timeout_ms passes). */
static void wait_for(struct event_base *base, waiter *w, int timeout_ms)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms;
    while (w->calls == 0 && mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), sleep_ms(1);
}

static waiter decide(struct event_base *base, gw_redis *r, const char *mode, const char *key,
                     const phg_rl_policy *p)
{
    waiter w = {0};
    gw_redis_decide(r, mode, key, strlen(key), p, on_decision, &w);
    assert_int_equal(w.calls, 0); /* never from inside gw_redis_decide */
    wait_for(base, &w, 5000);
    assert_int_equal(w.calls, 1);
    return w;
}

/* Decide until an answer comes (the client reconnecting by itself). */
static waiter decide_until_ok(struct event_base *base, gw_redis *r, const char *key,
                              const phg_rl_policy *p, int timeout_ms)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms;
    waiter w;
    do {
        w = decide(base, r, "check", key, p);
        if (w.status == PHG_OK)
            return w;
        sleep_ms(20);
    } while (mono_ms() < end);
    fail_msg("no answer within %d ms", timeout_ms);
    return w;
}

#define BURST 300
#define LIMIT 137

typedef struct burst {
    int port;
    const char *key;
    int admitted, refused, unavailable, calls;
} burst;

static void on_burst(void *arg, phg_status status, const phg_rl_decision *d)
{
    burst *b = arg;
    b->calls++;
    if (status != PHG_OK)
        b->unavailable++;
    else if (d->allowed)
        b->admitted++;
    else
        b->refused++;
}

static void *burst_thread(void *arg)
{
    burst *b = arg;
    struct event_base *base = event_base_new();
    gw_redis *r = gw_redis_new(base, "127.0.0.1", b->port, 2000);
    phg_rl_policy p = pol(1, (unsigned)LIMIT, 3600u);
    uint64_t end;
    int i;
    for (i = 0; i < BURST; i++)
        gw_redis_decide(r, "check", b->key, strlen(b->key), &p, on_burst, b);
    end = mono_ms() + 10000;
    while (b->calls < BURST && mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    gw_redis_free(r);
    event_base_free(base);
    return NULL;
}

static void test_async_exact_two_loops(void **state)
{
    burst b[2] = {{g_port, "burst", 0, 0, 0, 0}, {g_port, "burst", 0, 0, 0, 0}};
    pthread_t th[2];
    redisContext *c = raw(g_port);
    int i;
    (void)state;
    raw_cmd(c, "DEL phigate:rl:{burst}");
    redisFree(c);
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, burst_thread, &b[i]), 0);
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < 2; i++) {
        assert_int_equal(b[i].calls, BURST);
        assert_int_equal(b[i].unavailable, 0);
    }
    assert_int_equal(b[0].admitted + b[1].admitted, LIMIT);
    assert_int_equal(b[0].refused + b[1].refused, 2 * BURST - LIMIT);
}

static void test_async_modes(void **state)
{
    struct event_base *base = event_base_new();
    gw_redis *r = gw_redis_new(base, "127.0.0.1", g_port, 1000);
    phg_rl_policy p = pol(2, 2u, 60u, 10u, 3600u), none = pol(0);
    waiter w;
    (void)state;
    w = decide(base, r, "reset", "modes", &p);
    assert_int_equal(w.status, PHG_OK);
    w = decide(base, r, "peek", "modes", &p);
    expect_decision(w.d, 1, 2, 60, 1, 0, 0);
    w = decide(base, r, "check", "modes", &p);
    expect_decision(w.d, 1, 2, 60, 1, 0, 0);
    w = decide(base, r, "check", "modes", &p);
    assert_true(w.d.allowed && w.d.remaining == 0 && w.d.reset_s >= 60 && w.d.reset_s <= 66);
    w = decide(base, r, "check", "modes", &p);
    /* The sub-window of those two leaves the range 60 to 66 s from now. */
    assert_true(!w.d.allowed && w.d.retry_after_s >= 60 && w.d.retry_after_s <= 66);
    w = decide(base, r, "reset", "modes", &p);
    assert_int_equal(w.status, PHG_OK);
    w = decide(base, r, "check", "modes", &p);
    expect_decision(w.d, 1, 2, 60, 1, 0, 0);
    /* No limit: admitted without asking Redis; bad input: refused. */
    w = decide(base, r, "check", "modes", &none);
    expect_decision(w.d, 1, 0, 0, 0, 0, 0);
    w = decide(base, r, "check", "bad key", &p);
    assert_int_equal(w.status, PHG_ERR_INVALID);
    w = decide(base, r, "fetch", "modes", &p);
    assert_int_equal(w.status, PHG_ERR_INVALID);
    /* The blocking client agrees. */
    {
        phg_rl_decision d;
        assert_int_equal(
            gw_redis_decide_sync("127.0.0.1", g_port, 1000, "peek", "modes", 5, &p, &d), PHG_OK);
        assert_true(d.allowed && d.limit == 2 && d.remaining == 0 && d.reset_s >= 60 &&
                    d.reset_s <= 66);
        assert_int_equal(gw_redis_decide_sync("127.0.0.1", g_port, 1000, "peek", "a}", 2, &p, &d),
                         PHG_ERR_INVALID);
        assert_int_equal(gw_redis_decide_sync("127.0.0.1", 1, 200, "peek", "modes", 5, &p, &d),
                         PHG_ERR_UNAVAILABLE);
    }
    gw_redis_free(r);
    event_base_free(base);
}

/* A host name is resolved once by gw_redis_new. */
static void test_host_name(void **state)
{
    struct event_base *base = event_base_new();
    gw_redis *r = gw_redis_new(base, "localhost", g_port, 1000);
    phg_rl_policy p = pol(1, 5u, 60u);
    waiter w;
    (void)state;
    w = decide_until_ok(base, r, "hostname", &p, 3000);
    assert_true(w.d.allowed);
    gw_redis_free(r);
    event_base_free(base);
}

static void test_noscript_recovery(void **state)
{
    struct event_base *base = event_base_new();
    gw_redis *r = gw_redis_new(base, "127.0.0.1", g_port, 1000);
    redisContext *c = raw(g_port);
    phg_rl_policy p = pol(1, 5u, 60u);
    phg_rl_decision d;
    waiter w;
    (void)state;
    raw_cmd(c, "DEL phigate:rl:{ns}");
    w = decide(base, r, "check", "ns", &p);
    expect_decision(w.d, 1, 5, 60, 4, 0, 0);
    raw_cmd(c, "SCRIPT FLUSH");
    w = decide(base, r, "check", "ns", &p);
    assert_int_equal(w.status, PHG_OK);
    expect_decision(w.d, 1, 5, 60, 3, 0, 0);
    /* EVAL cached it again: EVALSHA works now. */
    {
        redisReply *rep = redisCommand(c, "SCRIPT EXISTS %s", phg_rl_redis_script_sha());
        assert_true(rep && rep->type == REDIS_REPLY_ARRAY && rep->element[0]->integer == 1);
        freeReplyObject(rep);
    }
    raw_cmd(c, "SCRIPT FLUSH");
    assert_int_equal(gw_redis_decide_sync("127.0.0.1", g_port, 1000, "check", "ns", 2, &p, &d),
                     PHG_OK);
    expect_decision(d, 1, 5, 60, 2, 0, 0);
    redisFree(c);
    gw_redis_free(r);
    event_base_free(base);
}

/* A stopped server: the callback comes with PHG_ERR_UNAVAILABLE after about
 * timeout_ms; once continued, the same client answers again. */
static void test_timeout_sigstop(void **state)
{
    struct event_base *base = event_base_new();
    gw_redis *r = gw_redis_new(base, "127.0.0.1", g_port, 100);
    phg_rl_policy p = pol(1, 1000u, 60u);
    pid_t pid = server_pid(g_dir, g_port);
    waiter w[5];
    uint64_t t0, took;
    int i;
    (void)state;
    assert_true(pid > 0);
    w[0] = decide(base, r, "check", "stop", &p);
    assert_int_equal(w[0].status, PHG_OK);
    assert_int_equal(kill(pid, SIGSTOP), 0);
    t0 = mono_ms();
    memset(w, 0, sizeof(w));
    for (i = 0; i < 5; i++)
        gw_redis_decide(r, "check", "stop", 4, &p, on_decision, &w[i]);
    for (i = 0; i < 5; i++)
        wait_for(base, &w[i], 3000);
    took = mono_ms() - t0;
    for (i = 0; i < 5; i++) {
        assert_int_equal(w[i].calls, 1);
        assert_int_equal(w[i].status, PHG_ERR_UNAVAILABLE);
    }
    /* Loosely "about timeout_ms": it did not wait for the server. */
    EXPECT(took < 2000, "timed out after %llu ms", (unsigned long long)took);
    /* The blocking client times out too. */
    {
        phg_rl_decision d;
        assert_int_equal(gw_redis_decide_sync("127.0.0.1", g_port, 100, "check", "stop", 4, &p, &d),
                         PHG_ERR_UNAVAILABLE);
    }
    /* More requests while stopped, past the stall limit: the connection is
     * dropped and made again. */
    for (i = 0; i < 12; i++) {
        waiter x = decide(base, r, "check", "stop", &p);
        assert_int_equal(x.status, PHG_ERR_UNAVAILABLE);
    }
    assert_int_equal(kill(pid, SIGCONT), 0);
    {
        waiter ok = decide_until_ok(base, r, "stop", &p, 5000);
        assert_true(ok.d.allowed);
    }
    /* Late replies of the timed-out requests were ignored: keep the loop
     * running a little so they arrive; no callback came twice, and it
     * still works. */
    for (i = 0; i < 20; i++)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), sleep_ms(5);
    for (i = 0; i < 5; i++)
        assert_int_equal(w[i].calls, 1);
    {
        waiter ok = decide(base, r, "check", "stop", &p);
        assert_int_equal(ok.status, PHG_OK);
    }
    gw_redis_free(r);
    event_base_free(base);
}

/* gw_redis_free with requests in flight: each callback exactly once. */
static void test_free_with_outstanding(void **state)
{
    struct event_base *base = event_base_new();
    gw_redis *r = gw_redis_new(base, "127.0.0.1", g_port, 1000);
    phg_rl_policy p = pol(1, 10u, 60u);
    waiter w[20];
    int i;
    (void)state;
    memset(w, 0, sizeof(w));
    for (i = 0; i < 20; i++)
        gw_redis_decide(r, "check", "outst", 5, &p, on_decision, &w[i]);
    /* Let a few go out, not all come back. */
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    gw_redis_free(r);
    for (i = 0; i < 20; i++)
        assert_int_equal(w[i].calls, 1);
    event_base_free(base);
}

static void test_server_restart(void **state)
{
    struct event_base *base = event_base_new();
    gw_redis *r = gw_redis_new(base, "127.0.0.1", g_port, 200);
    phg_rl_policy p = pol(1, 1000u, 60u);
    pid_t pid = server_pid(g_dir, g_port);
    waiter w;
    int i;
    (void)state;
    assert_true(pid > 0);
    w = decide(base, r, "check", "restart", &p);
    assert_int_equal(w.status, PHG_OK);
    assert_int_equal(kill(pid, SIGKILL), 0);
    for (i = 0; i < 50 && kill(pid, 0) == 0; i++)
        sleep_ms(20);
    for (i = 0; i < 3; i++) {
        w = decide(base, r, "check", "restart", &p);
        assert_int_equal(w.status, PHG_ERR_UNAVAILABLE);
        sleep_ms(50);
    }
    assert_int_equal(run_script("restart", g_dir, NULL), 0);
    /* The same client, a fresh server: reconnected, script loaded again. */
    w = decide_until_ok(base, r, "restart", &p, 5000);
    expect_decision(w.d, 1, 1000, 60, 999, 0, 0);
    gw_redis_free(r);
    event_base_free(base);
}

/* ---- Redis Cluster ------------------------------------------------------------------ */

static void test_cluster(void **state)
{
    char dir[64];
    int ports[3], i, j, nodes_with_keys = 0;
    struct event_base *base = event_base_new();
    gw_redis *r;
    phg_rl_policy p = pol(1, 3u, 3600u);
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/phg-rcluster-XXXXXX");
    assert_non_null(mkdtemp(dir));
    if (run_script("start", dir, "--cluster") != 0 || read_ports(dir, ports, 3) != 3) {
        run_script("stop", dir, NULL);
        rm_dir(dir);
        fail_msg("cannot start a Redis Cluster with %s", server_script());
    }
    /* One node given; 24 keys spread over the three. */
    r = gw_redis_new(base, "127.0.0.1", ports[0], 2000);
    for (i = 0; i < 24; i++) {
        char key[16];
        snprintf(key, sizeof(key), "ck%d", i);
        for (j = 0; j < 5; j++) {
            waiter w = decide(base, r, "check", key, &p);
            EXPECT(w.status == PHG_OK, "key %s, request %d: status %d", key, j, (int)w.status);
            EXPECT(w.d.allowed == (j < 3), "key %s, request %d: allowed %d", key, j, w.d.allowed);
        }
    }
    /* The blocking client through one node too (other keys: fresh counts). */
    for (i = 0; i < 12; i++) {
        char key[16];
        phg_rl_decision d;
        snprintf(key, sizeof(key), "cs%d", i);
        for (j = 0; j < 4; j++) {
            assert_int_equal(gw_redis_decide_sync("127.0.0.1", ports[1], 2000, "check", key,
                                                  strlen(key), &p, &d),
                             PHG_OK);
            assert_int_equal(d.allowed, j < 3);
        }
    }
    for (i = 0; i < 3; i++) {
        redisContext *c = raw(ports[i]);
        redisReply *rep = redisCommand(c, "DBSIZE");
        if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0)
            nodes_with_keys++;
        freeReplyObject(rep);
        redisFree(c);
    }
    EXPECT(nodes_with_keys == 3, "keys on %d nodes only", nodes_with_keys);

    /* ASK: the slot of a new key is being migrated from its owner to
     * another node; the owner does not hold the key, so it answers ASK. */
    {
        const char *key = "askkey";
        redisContext *c = raw(ports[0]);
        redisReply *rep = redisCommand(c, "CLUSTER KEYSLOT phigate:rl:{%s}", key);
        long long slot = rep->integer;
        char owner_id[64] = "", target_id[64] = "";
        int owner = -1, target = -1;
        waiter w;
        freeReplyObject(rep);
        redisFree(c);
        for (i = 0; i < 3; i++) {
            /* The owner answers EXISTS itself; the others say MOVED. */
            redisContext *ci = raw(ports[i]);
            redisReply *id = redisCommand(ci, "CLUSTER MYID");
            redisReply *ex = redisCommand(ci, "EXISTS phigate:rl:{%s}", key);
            assert_true(id && id->type == REDIS_REPLY_STRING && ex != NULL);
            if (ex->type == REDIS_REPLY_INTEGER) {
                owner = i;
                snprintf(owner_id, sizeof(owner_id), "%s", id->str);
            } else if (target < 0) {
                target = i;
                snprintf(target_id, sizeof(target_id), "%s", id->str);
            }
            freeReplyObject(id);
            freeReplyObject(ex);
            redisFree(ci);
        }
        assert_true(owner >= 0 && target >= 0);
        {
            redisContext *co = raw(ports[owner]), *ct = raw(ports[target]);
            redisReply *a = redisCommand(ct, "CLUSTER SETSLOT %lld IMPORTING %s", slot, owner_id);
            redisReply *b2 = redisCommand(co, "CLUSTER SETSLOT %lld MIGRATING %s", slot, target_id);
            assert_true(a && a->type == REDIS_REPLY_STATUS);
            assert_true(b2 && b2->type == REDIS_REPLY_STATUS);
            freeReplyObject(a);
            freeReplyObject(b2);
            /* The importing node has not seen the script yet: NOSCRIPT
             * after ASKING, then ASKING again with EVAL. */
            raw_cmd(ct, "SCRIPT FLUSH");
            w = decide(base, r, "check", key, &p);
            assert_int_equal(w.status, PHG_OK);
            expect_decision(w.d, 1, 3, 3600, 2, 0, 0);
            /* It was written on the importing node, through ASKING. */
            {
                char rk[64];
                snprintf(rk, sizeof(rk), "phigate:rl:{%s}", key);
                a = redisCommand(ct, "ASKING");
                freeReplyObject(a);
                assert_int_equal(raw_int(ct, "EXISTS %s", rk), 1);
            }
            raw_cmd(ct, "SCRIPT FLUSH");
            {
                phg_rl_decision d;
                assert_int_equal(gw_redis_decide_sync("127.0.0.1", ports[0], 2000, "check", key,
                                                      strlen(key), &p, &d),
                                 PHG_OK);
                expect_decision(d, 1, 3, 3600, 1, 0, 0);
            }
            redisFree(co);
            redisFree(ct);
        }
    }
    gw_redis_free(r);
    event_base_free(base);
    run_script("stop", dir, NULL);
    rm_dir(dir);
}

/* ---- redis:// URLs ----------------------------------------------------------------------- */

static void test_url_parse(void **state)
{
    static const struct {
        const char *url;
        const char *host;
        int port;
    } good[] = {
        {"redis://127.0.0.1:6380", "127.0.0.1", 6380},
        {"redis://localhost", "localhost", 6379},
        {"redis://cache.internal.example:7000/", "cache.internal.example", 7000},
        {"redis://[::1]:6390", "::1", 6390},
        {"redis://[::1]", "::1", 6379},
        {"REDIS://Host-1:1", "Host-1", 1},
    };
    static const char *const bad[] = {
        "",
        "http://x:1",
        "redis://",
        "redis://:6379",
        "redis://host:",
        "redis://host:0",
        "redis://host:65536",
        "redis://host:12x",
        "redis://user:pw@host:1",
        "redis://host:1/0",
        "redis://host:1?db=1",
        "redis://[::1",
        "redis://[zz]:1",
        "redis://[::1]x",
        "redis://ho st:1",
        "redis://host:123456",
        "redis://host:-1",
    };
    char host[256], err[128];
    int port;
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        EXPECT(gw_redis_url_parse(good[i].url, host, sizeof(host), &port, err, sizeof(err)) == 0,
               "%s refused: %s", good[i].url, err);
        assert_string_equal(host, good[i].host);
        assert_int_equal(port, good[i].port);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        EXPECT(gw_redis_url_parse(bad[i], host, sizeof(host), &port, err, sizeof(err)) == -1,
               "%s accepted", bad[i]);
        EXPECT(strncmp(err, "bad Redis URL: ", 15) == 0, "%s: no reason", bad[i]);
    }
    assert_int_equal(gw_redis_url_parse("redis://abcdef:1", host, 4, &port, err, sizeof(err)), -1);
    {
        char longu[1100];
        memset(longu, 'a', sizeof(longu) - 1);
        memcpy(longu, "redis://", 8);
        longu[sizeof(longu) - 1] = '\0';
        assert_int_equal(gw_redis_url_parse(longu, host, sizeof(host), &port, err, sizeof(err)),
                         -1);
    }
}

int main(void)
{
    const struct CMUnitTest offline[] = {
        cmocka_unit_test(test_key_and_parse),
        cmocka_unit_test(test_url_parse),
    };
    const struct CMUnitTest single[] = {
        cmocka_unit_test(test_script_sha),
        cmocka_unit_test(test_script_hand_worked),
        cmocka_unit_test(test_script_fields_bounded),
        cmocka_unit_test(test_script_clock_back),
        cmocka_unit_test(test_script_bad_args),
        cmocka_unit_test(test_script_matches_local),
        cmocka_unit_test(test_async_modes),
        cmocka_unit_test(test_async_exact_two_loops),
        cmocka_unit_test(test_host_name),
        cmocka_unit_test(test_noscript_recovery),
        cmocka_unit_test(test_free_with_outstanding),
        cmocka_unit_test(test_timeout_sigstop),
        cmocka_unit_test(test_server_restart),
    };
    const struct CMUnitTest cluster[] = {
        cmocka_unit_test(test_cluster),
    };
    int failed = 0;
    signal(SIGPIPE, SIG_IGN);
    failed += cmocka_run_group_tests_name("redis/offline", offline, NULL, NULL);
    failed += cmocka_run_group_tests_name("redis/single", single, group_setup, group_teardown);
    failed += cmocka_run_group_tests_name("redis/cluster", cluster, NULL, NULL);
    return failed ? 1 : 0;
}
