/*
 * tests/unit/test_ratelimit.c: include/phigate/ratelimit.h, the policies and
 * the local engine, against the header contract and docs/formats.md 16:
 * parse and format (round trips, every rejection, the text apikey.c
 * stores), the promise checked by brute force over random request times on
 * a fake clock (no interval of length W admits more than N; a refusal only
 * when N were admitted within W plus one sub-window), every decision field
 * compared with a model computed from the log of admitted times, a
 * hand-worked example, several windows, exact counts under 8 threads, policy
 * changes, reset, peek, idle expiry and max_keys eviction with their stats.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "phigate/ratelimit.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define S PHG_RL_SUBWINDOWS

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

static uint64_t rnd_below(uint64_t n)
{
    return rnd() % n;
}

static phg_rl_policy policy(const char *text)
{
    phg_rl_policy p;
    char err[256];
    phg_status rc = phg_rl_policy_parse(text, &p, err, sizeof err);
    EXPECT(rc == PHG_OK, "parse(%s): %s", text, err);
    return p;
}

static phg_ratelimit *engine(size_t max_keys)
{
    phg_ratelimit *rl = NULL;
    phg_rl_options o;
    phg_rl_options_init(&o);
    if (max_keys > 0)
        o.max_keys = max_keys;
    assert_int_equal(phg_rl_new(&o, &rl), PHG_OK);
    assert_non_null(rl);
    return rl;
}

static phg_rl_decision check(phg_ratelimit *rl, const char *key, const phg_rl_policy *p,
                             uint64_t now_ms)
{
    phg_rl_decision d;
    phg_status rc = phg_rl_check(rl, key, strlen(key), p, now_ms, &d);
    EXPECT(rc == PHG_OK, "check(%s) = %d", key, (int)rc);
    return d;
}

static phg_rl_decision peek(phg_ratelimit *rl, const char *key, const phg_rl_policy *p,
                            uint64_t now_ms)
{
    phg_rl_decision d;
    phg_status rc = phg_rl_peek(rl, key, strlen(key), p, now_ms, &d);
    EXPECT(rc == PHG_OK, "peek(%s) = %d", key, (int)rc);
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

static phg_rl_stats stats(phg_ratelimit *rl)
{
    phg_rl_stats st;
    phg_rl_get_stats(rl, &st);
    return st;
}

/* ---- policies ------------------------------------------------------------------- */

static void test_parse_ok(void **state)
{
    phg_rl_policy p;
    char err[256], buf[PHG_RL_TEXT_MAX + 1];
    (void)state;

    p = policy("100/1m,5000/1h");
    assert_int_equal(p.n, 2);
    assert_int_equal(p.limits[0].count, 100);
    assert_int_equal(p.limits[0].window_s, 60);
    assert_int_equal(p.limits[1].count, 5000);
    assert_int_equal(p.limits[1].window_s, 3600);

    /* Kept shortest window first whatever the order of the text. */
    p = policy("5000/1h,7/10s,100/1m,1/2d");
    assert_int_equal(p.n, 4);
    assert_int_equal(p.limits[0].window_s, 10);
    assert_int_equal(p.limits[0].count, 7);
    assert_int_equal(p.limits[1].window_s, 60);
    assert_int_equal(p.limits[2].window_s, 3600);
    assert_int_equal(p.limits[3].window_s, 172800);
    assert_int_equal(p.limits[3].count, 1);
    phg_rl_policy_format(&p, buf, sizeof buf);
    assert_string_equal(buf, "7/10s,100/1m,5000/1h,1/2d");

    p = policy("none");
    assert_int_equal(p.n, 0);
    phg_rl_policy_format(&p, buf, sizeof buf);
    assert_string_equal(buf, "none");

    /* The limits. */
    p = policy("999999999/100d");
    assert_int_equal(p.limits[0].count, PHG_RL_COUNT_MAX);
    assert_int_equal(p.limits[0].window_s, PHG_RL_WINDOW_MAX_S);
    p = policy("1/8640000s");
    assert_int_equal(p.limits[0].window_s, PHG_RL_WINDOW_MAX_S);
    p = policy("1/1s");
    assert_int_equal(p.limits[0].window_s, 1);

    /* Texts that apikey.c's limit_ok stores ("COUNT/WINDOW" with s/m/h/d, a
     * comma between). */
    p = policy("10/30s,100/5m,1000/1h,10000/1d");
    assert_int_equal(p.n, 4);
    phg_rl_policy_format(&p, buf, sizeof buf);
    assert_string_equal(buf, "10/30s,100/5m,1000/1h,10000/1d");
    p = policy("123456789/99999s");
    assert_int_equal(p.limits[0].window_s, 99999);

    /* Canonical units on output. */
    p = policy("5/90s,6/120s,7/7200s");
    phg_rl_policy_format(&p, buf, sizeof buf);
    assert_string_equal(buf, "5/90s,6/2m,7/2h");
    p = policy("1/24h");
    phg_rl_policy_format(&p, buf, sizeof buf);
    assert_string_equal(buf, "1/1d");

    /* err is cleared on success. */
    strcpy(err, "stale");
    assert_int_equal(phg_rl_policy_parse("1/1m", &p, err, sizeof err), PHG_OK);
    assert_string_equal(err, "");
}

static void test_parse_round_trip(void **state)
{
    static const uint32_t units[] = {1, 60, 3600, 86400};
    int iter;
    (void)state;
    for (iter = 0; iter < 20000; iter++) {
        phg_rl_policy p, q;
        char text[PHG_RL_TEXT_MAX + 1], again[PHG_RL_TEXT_MAX + 1], err[256];
        size_t n = 1 + rnd_below(PHG_RL_WINDOWS_MAX), i, j;
        memset(&p, 0, sizeof p);
        while (p.n < n) {
            uint32_t unit = units[rnd_below(4)];
            uint32_t w = (uint32_t)(1 + rnd_below(PHG_RL_WINDOW_MAX_S / unit)) * unit;
            uint32_t c = rnd_below(2) ? (uint32_t)(1 + rnd_below(1000))
                                      : (uint32_t)(1 + rnd_below(PHG_RL_COUNT_MAX));
            int dup = 0;
            for (i = 0; i < p.n; i++)
                dup |= p.limits[i].window_s == w;
            if (dup)
                continue;
            /* Insert in order. */
            for (j = p.n; j > 0 && p.limits[j - 1].window_s > w; j--)
                p.limits[j] = p.limits[j - 1];
            p.limits[j].count = c;
            p.limits[j].window_s = w;
            p.n++;
        }
        phg_rl_policy_format(&p, text, sizeof text);
        EXPECT(phg_rl_policy_parse(text, &q, err, sizeof err) == PHG_OK, "%s: %s", text, err);
        EXPECT(q.n == p.n, "%s: n", text);
        for (i = 0; i < p.n; i++)
            EXPECT(q.limits[i].count == p.limits[i].count &&
                       q.limits[i].window_s == p.limits[i].window_s,
                   "%s: limit %zu", text, i);
        phg_rl_policy_format(&q, again, sizeof again);
        assert_string_equal(text, again);
    }
}

static void test_parse_rejects(void **state)
{
    static const struct {
        const char *text;
        const char *why; /* a part of the message */
    } bad[] = {
        {"", "empty"},
        {"0/1m", "count of 0"},
        {"-1/1m", "negative"},
        {"-100/1h", "negative"},
        {"1/-1m", "window is negative"},
        {"1/0s", "window of 0"},
        {"1/0m", "window of 0"},
        {"1/1x", "unknown unit 'x'"},
        {"1/1w", "unknown unit 'w'"},
        {"1/1M", "unknown unit 'M'"},
        {"1/1", "no unit"},
        {"1/1,2/1h", "no unit"},
        {"1/1m,2/60s", "same window"},
        {"1/1h,2/1h", "same window"},
        {"1/1d,2/24h", "same window"},
        {"1/1s,1/2s,1/3s,1/4s,1/5s", "more than 4"},
        {"1000000000/1h", "over 999999999"},
        {"99999999999999999999999/1h", "over 999999999"},
        {"1/101d", "over 100 days"},
        {"1/8640001s", "over 100 days"},
        {"1/99999d", "over 100 days"},
        {"1/99999999999999999999d", "over 100 days"},
        {"01/1m", "leading zero"},
        {"1/01m", "leading zero"},
        {"garbage", "expected COUNT/WINDOW"},
        {"NONE", "expected COUNT/WINDOW"},
        {"none,1/1m", "expected COUNT/WINDOW"},
        {"/1m", "expected COUNT/WINDOW"},
        {"100", "expected '/'"},
        {"100/", "expected a window"},
        {"100/m", "expected a window"},
        {"1//1m", "expected a window"},
        {"1/1m,", "expected COUNT/WINDOW"},
        {",1/1m", "expected COUNT/WINDOW"},
        {"1/1m,,2/1h", "expected COUNT/WINDOW"},
        {"1/1m 2/1h", "unexpected text"},
        {"1/1m, 2/1h", "expected COUNT/WINDOW"},
        {" 1/1m", "expected COUNT/WINDOW"},
        {"1/1mm", "unexpected text"},
        {"1/1m;2/1h", "unexpected text"},
        {"1.5/1m", "expected '/'"},
        {"1/1.5m", "unknown unit '.'"},
        {"1/1\x01", "unknown unit (s"},
        {"+1/1m", "expected COUNT/WINDOW"},
    };
    char long_text[PHG_RL_TEXT_MAX + 8];
    phg_rl_policy p;
    char err[256];
    size_t i;
    (void)state;

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&p, 0x55, sizeof p);
        err[0] = '\0';
        EXPECT(phg_rl_policy_parse(bad[i].text, &p, err, sizeof err) == PHG_ERR_INVALID,
               "\"%s\" accepted", bad[i].text);
        EXPECT(p.n == 0, "\"%s\": policy left set", bad[i].text);
        EXPECT(strstr(err, bad[i].why) != NULL, "\"%s\": message \"%s\", want \"%s\"", bad[i].text,
               err, bad[i].why);
    }
    /* Over PHG_RL_TEXT_MAX bytes, even though each limit is fine. */
    memset(long_text, 0, sizeof long_text);
    strcpy(long_text, "1/1m");
    for (i = strlen(long_text); i < PHG_RL_TEXT_MAX + 1; i++)
        long_text[i] = i % 2 ? ',' : '1';
    assert_int_equal(phg_rl_policy_parse(long_text, &p, err, sizeof err), PHG_ERR_INVALID);
    assert_non_null(strstr(err, "longer than 128 bytes"));
    /* Exactly PHG_RL_TEXT_MAX bytes is judged on its content. */
    memset(long_text, '1', PHG_RL_TEXT_MAX);
    long_text[PHG_RL_TEXT_MAX] = '\0';
    assert_int_equal(phg_rl_policy_parse(long_text, &p, err, sizeof err), PHG_ERR_INVALID);
    assert_non_null(strstr(err, "over 999999999"));

    assert_int_equal(phg_rl_policy_parse(NULL, &p, err, sizeof err), PHG_ERR_INVALID);
    /* No message buffer is fine; a tiny one is truncated, not overrun. */
    assert_int_equal(phg_rl_policy_parse("0/1m", &p, NULL, 0), PHG_ERR_INVALID);
    memset(err, 'x', sizeof err);
    assert_int_equal(phg_rl_policy_parse("0/1m", &p, err, 5), PHG_ERR_INVALID);
    assert_int_equal(strlen(err), 4);
    assert_int_equal(err[5], 'x');
}

/* ---- a model from the log of admitted times ----------------------------------------- */

/*
 * The algorithm of the header restated over the list of admitted times: the
 * sum for window i at t is the number admitted in sub-windows b-S..b. Gives
 * the whole decision; the engine must agree on every field.
 */
typedef struct model {
    const phg_rl_policy *p;
    uint64_t *times; /* admitted, in order */
    size_t n, cap;
} model;

static uint64_t model_in_sub(const model *m, uint64_t g, uint64_t idx)
{
    size_t i, c = 0;
    for (i = m->n; i > 0; i--) {
        uint64_t ti = m->times[i - 1];
        if (ti / g < idx)
            break;
        c += ti / g == idx;
    }
    return c;
}

static uint32_t up_s(uint64_t ms)
{
    uint64_t s = (ms + 999) / 1000;
    return s < 1 ? 1 : (uint32_t)s;
}

static phg_rl_decision model_decide(model *m, uint64_t t)
{
    uint64_t sum[PHG_RL_WINDOWS_MAX], cnt[PHG_RL_WINDOWS_MAX][S + 1];
    uint64_t best_rem = UINT64_MAX, retry = 0;
    size_t i, best = 0;
    int allowed = 1, k;
    phg_rl_decision d;

    memset(&d, 0, sizeof d);
    for (i = 0; i < m->p->n; i++) {
        uint64_t g = (uint64_t)m->p->limits[i].window_s * 100, b = t / g;
        sum[i] = 0;
        for (k = 0; k <= S; k++) {
            cnt[i][k] = b + (uint64_t)k >= S ? model_in_sub(m, g, b + (uint64_t)k - S) : 0;
            sum[i] += cnt[i][k];
        }
        if (sum[i] >= m->p->limits[i].count)
            allowed = 0;
    }
    if (allowed) {
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 1024;
            m->times = realloc(m->times, m->cap * sizeof *m->times);
            assert_non_null(m->times);
        }
        m->times[m->n++] = t;
    }
    for (i = 0; i < m->p->n; i++) {
        uint64_t n = m->p->limits[i].count, g = (uint64_t)m->p->limits[i].window_s * 100;
        uint64_t b = t / g, used = sum[i] + (allowed ? 1 : 0), rem;
        if (allowed)
            cnt[i][S]++;
        if (!allowed && sum[i] >= n) {
            uint64_t left = sum[i];
            for (k = 0; k <= S; k++) {
                left -= cnt[i][k];
                if (left < n)
                    break;
            }
            if ((b + (uint64_t)k + 1) * g - t > retry)
                retry = (b + (uint64_t)k + 1) * g - t;
        }
        rem = used >= n ? 0 : n - used;
        if (rem < best_rem) {
            best_rem = rem;
            best = i;
            d.reset_s = 0;
            if (rem == 0) {
                for (k = 0; k <= S && cnt[i][k] == 0; k++)
                    ;
                d.reset_s = up_s((b + (uint64_t)k + 1) * g - t);
            }
        }
    }
    d.allowed = allowed;
    d.limit = m->p->limits[best].count;
    d.window_s = m->p->limits[best].window_s;
    d.remaining = (uint32_t)best_rem;
    d.retry_after_s = allowed ? 0 : up_s(retry);
    return d;
}

/* Admitted times in [lo, hi] (times sorted). */
static size_t count_between(const uint64_t *t, size_t n, uint64_t lo, uint64_t hi)
{
    size_t a = 0, b = n, first, c = 0;
    while (a < b) { /* first index with t >= lo */
        size_t mid = (a + b) / 2;
        if (t[mid] < lo)
            a = mid + 1;
        else
            b = mid;
    }
    for (first = a; first < n && t[first] <= hi; first++)
        c++;
    return c;
}

/*
 * Random request times over many windows on a fake clock, through the engine
 * and the model; then the promise checked on the admitted times: every
 * interval [t - W, t] ending at an admitted t (W is a multiple of the
 * sub-window, so even the closed interval holds) has at most N; and a
 * request refused at t had some window with at least N admitted in
 * (t - W - g, t].
 */
static void brute_force(const char *text, uint64_t start_ms, size_t requests)
{
    phg_rl_policy p = policy(text);
    phg_ratelimit *rl = engine(0);
    model m = {&p, NULL, 0, 0};
    uint64_t *refused = malloc(requests * sizeof *refused);
    uint64_t t = start_ms, wmax = (uint64_t)p.limits[p.n - 1].window_s * 1000;
    uint64_t base = (uint64_t)p.limits[0].window_s * 1000 / p.limits[0].count; /* ms per request */
    size_t nref = 0, i, j, admitted_total = 0;

    assert_non_null(refused);
    for (i = 0; i < requests; i++) {
        phg_rl_decision got, want;
        uint64_t r = rnd_below(100);
        /* Bursts, traffic near the limit, pauses, and now and then a silence
         * longer than every window. */
        if (r < 60)
            t += rnd_below(base / 4 + 1);
        else if (r < 90)
            t += rnd_below(2 * base + 1);
        else if (r < 99)
            t += rnd_below(wmax / 3 + 1);
        else
            t += rnd_below(2 * wmax + 1);
        got = check(rl, "ak_bruteforce", &p, t);
        want = model_decide(&m, t);
        EXPECT(memcmp(&got, &want, sizeof got) == 0,
               "%s, request %zu at %llu: engine %d/%u/%u/%u/%u/%u, model %d/%u/%u/%u/%u/%u", text,
               i, (unsigned long long)t, got.allowed, got.limit, got.window_s, got.remaining,
               got.reset_s, got.retry_after_s, want.allowed, want.limit, want.window_s,
               want.remaining, want.reset_s, want.retry_after_s);
        if (!got.allowed)
            refused[nref++] = t;
        else
            admitted_total++;
    }
    assert_int_equal(admitted_total, m.n);
    if (getenv("RL_TEST_VERBOSE") != NULL)
        printf("%s: %zu admitted, %zu refused\n", text, m.n, nref);
    EXPECT(nref > requests / 20 && m.n > requests / 20,
           "%s: %zu refused and %zu admitted: the traffic does not test much", text, nref, m.n);
    for (j = 0; j < p.n; j++) {
        uint64_t w = (uint64_t)p.limits[j].window_s * 1000;
        for (i = 0; i < m.n; i++) {
            uint64_t end = m.times[i], lo = end >= w ? end - w : 0;
            size_t c = count_between(m.times, m.n, lo, end);
            EXPECT(c <= p.limits[j].count, "%s: %zu admitted in [%llu, %llu], limit %u", text, c,
                   (unsigned long long)lo, (unsigned long long)end, p.limits[j].count);
        }
    }
    for (i = 0; i < nref; i++) {
        int justified = 0;
        for (j = 0; j < p.n; j++) {
            uint64_t w = (uint64_t)p.limits[j].window_s * 1000, g = w / S;
            uint64_t lo = refused[i] >= w + g ? refused[i] - w - g + 1 : 0;
            if (count_between(m.times, m.n, lo, refused[i]) >= p.limits[j].count)
                justified = 1;
        }
        EXPECT(justified, "%s: refused at %llu with fewer than N admitted in W + g", text,
               (unsigned long long)refused[i]);
    }
    free(m.times);
    free(refused);
    phg_rl_free(rl);
}

static void test_promise_brute_force(void **state)
{
    (void)state;
    brute_force("10/1s", 0, 20000); /* sub-windows before 0 */
    brute_force("10/1s", 1795805400123ull, 20000);
    brute_force("7/3s", 1795805400000ull, 20000);
    brute_force("1/1s", 5, 10000);
    brute_force("50/10s", 1000000, 30000);
    brute_force("3/1s,10/10s", 1795805400777ull, 30000);
    brute_force("5/1s,20/7s,60/1m", 123456, 40000);
    brute_force("4/2s,9/5s,15/11s,40/1m", 99, 40000);
}

/* ---- decisions ----------------------------------------------------------------------- */

static void test_fresh_key_admits_exactly_n(void **state)
{
    phg_rl_policy p = policy("25/1m");
    phg_ratelimit *rl = engine(0);
    phg_rl_decision d;
    uint32_t i;
    (void)state;
    for (i = 0; i < 25; i++) {
        d = check(rl, "ak_fresh", &p, 1000000);
        assert_true(d.allowed);
        assert_int_equal(d.remaining, 24 - i);
    }
    for (i = 0; i < 100; i++) {
        d = check(rl, "ak_fresh", &p, 1000000 + i);
        assert_false(d.allowed);
        assert_int_equal(d.remaining, 0);
    }
    /* Another key is untouched. */
    d = check(rl, "ak_other", &p, 1000000);
    assert_true(d.allowed);
    assert_int_equal(d.remaining, 24);
    phg_rl_free(rl);
}

/*
 * N = 3 per 10 s, so sub-windows of 1 s; times from 100 s (sub-window 100).
 * Docs 16.2 walks through the same example.
 */
static void test_hand_worked(void **state)
{
    phg_rl_policy p = policy("3/10s");
    phg_ratelimit *rl = engine(0);
    (void)state;
    /*                                       allowed lim  W  rem reset retry */
    expect_decision(check(rl, "k", &p, 100000), 1, 3, 10, 2, 0, 0);
    expect_decision(check(rl, "k", &p, 100500), 1, 3, 10, 1, 0, 0);
    /* The last slot: sub-window 100 (2 requests) leaves the range at 111 s. */
    expect_decision(check(rl, "k", &p, 102500), 1, 3, 10, 0, 9, 0);
    expect_decision(check(rl, "k", &p, 103000), 0, 3, 10, 0, 8, 8);
    expect_decision(peek(rl, "k", &p, 110999), 0, 3, 10, 0, 1, 1);
    expect_decision(check(rl, "k", &p, 110999), 0, 3, 10, 0, 1, 1);
    /* 111 s: sub-window 100 is out, 102 (one request) is in. */
    expect_decision(check(rl, "k", &p, 111000), 1, 3, 10, 1, 0, 0);
    expect_decision(check(rl, "k", &p, 111001), 1, 3, 10, 0, 2, 0);
    /* Refused: 102 leaves at 113 s and frees one; that is enough. */
    expect_decision(check(rl, "k", &p, 111500), 0, 3, 10, 0, 2, 2);

    /* The price: N = 2, admitted at 100.9 s and 101.0 s; at 110.95 s only
     * one of them is within the last 10 s, but sub-window 100 is still
     * counted, so the request is refused until 111 s. */
    p = policy("2/10s");
    expect_decision(check(rl, "u", &p, 100900), 1, 2, 10, 1, 0, 0);
    expect_decision(check(rl, "u", &p, 101000), 1, 2, 10, 0, 10, 0);
    expect_decision(check(rl, "u", &p, 110950), 0, 2, 10, 0, 1, 1);
    expect_decision(check(rl, "u", &p, 111000), 1, 2, 10, 0, 1, 0);

    /* N = 3 per 10 s, admitted at 100, 101, 102 s; at 105 s, sub-window 100
     * leaving at 111 s is enough. Under a limit of 1 (a policy change), all
     * three must leave: reset (the oldest leaves) and retry-after differ. */
    p = policy("3/10s");
    expect_decision(check(rl, "v", &p, 100000), 1, 3, 10, 2, 0, 0);
    expect_decision(check(rl, "v", &p, 101000), 1, 3, 10, 1, 0, 0);
    expect_decision(check(rl, "v", &p, 102000), 1, 3, 10, 0, 9, 0);
    expect_decision(check(rl, "v", &p, 105000), 0, 3, 10, 0, 6, 6);
    p = policy("1/10s");
    expect_decision(check(rl, "v", &p, 105000), 0, 1, 10, 0, 6, 8);
    phg_rl_free(rl);
}

static void test_multiple_windows(void **state)
{
    phg_rl_policy p = policy("3/1s,5/10s");
    phg_ratelimit *rl = engine(0);
    phg_rl_decision d;
    (void)state;
    /* Sub-windows: 100 ms for 1 s, 1 s for 10 s. Start at 50 s. */
    expect_decision(check(rl, "m", &p, 50000), 1, 3, 1, 2, 0, 0);
    expect_decision(check(rl, "m", &p, 50000), 1, 3, 1, 1, 0, 0);
    expect_decision(check(rl, "m", &p, 50000), 1, 3, 1, 0, 2, 0); /* 1 s window: 1.1 s */
    /* Refused by the 1 s window alone (the 10 s one has 2 left). */
    expect_decision(check(rl, "m", &p, 50500), 0, 3, 1, 0, 1, 1);
    /* 51.1 s: the 1 s window is free again; the 10 s one binds. Its 3
     * requests of sub-window 50 leave at 61 s. */
    expect_decision(check(rl, "m", &p, 51100), 1, 5, 10, 1, 0, 0);
    expect_decision(check(rl, "m", &p, 51100), 1, 5, 10, 0, 10, 0);
    d = check(rl, "m", &p, 52500);
    /* Refused by the 10 s window only: its 3 requests of sub-window 50
     * leave at 61 s. */
    expect_decision(d, 0, 5, 10, 0, 9, 9);
    /* Nothing was counted while refused: at 61 s the 10 s window holds the 2
     * of 51.1 s, so both windows have 2 left: ties go to the shorter one. */
    expect_decision(check(rl, "m", &p, 61000), 1, 3, 1, 2, 0, 0);
    expect_decision(check(rl, "m", &p, 61000), 1, 3, 1, 1, 0, 0);
    expect_decision(check(rl, "m", &p, 61000), 1, 3, 1, 0, 2, 0);
    expect_decision(check(rl, "m", &p, 61000), 0, 3, 1, 0, 2, 2);
    phg_rl_free(rl);
}

typedef struct thread_arg {
    phg_ratelimit *rl;
    const phg_rl_policy *p;
    size_t requests;
    size_t keys;
    atomic_size_t *admitted; /* per key */
    int status;
} thread_arg;

static void *hammer(void *argp)
{
    thread_arg *a = argp;
    size_t i;
    for (i = 0; i < a->requests; i++) {
        char key[32];
        size_t k = i % a->keys;
        phg_rl_decision d;
        int n = snprintf(key, sizeof key, "ak_thread%zu", k);
        if (phg_rl_check(a->rl, key, (size_t)n, a->p, 777000, &d) != PHG_OK) {
            a->status = -1;
            return NULL;
        }
        if (d.allowed)
            atomic_fetch_add(&a->admitted[k], 1);
    }
    return NULL;
}

static void run_threads(size_t keys, size_t per_thread, const char *text, size_t want)
{
    enum { THREADS = 8 };
    phg_rl_policy p = policy(text);
    phg_ratelimit *rl = engine(0);
    pthread_t th[THREADS];
    thread_arg args[THREADS];
    atomic_size_t *admitted = calloc(keys, sizeof *admitted);
    size_t i;
    assert_non_null(admitted);
    for (i = 0; i < THREADS; i++) {
        args[i] = (thread_arg){rl, &p, per_thread, keys, admitted, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &args[i]), 0);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].status, 0);
    }
    for (i = 0; i < keys; i++)
        EXPECT(atomic_load(&admitted[i]) == want, "key %zu: %zu admitted, want %zu", i,
               atomic_load(&admitted[i]), want);
    assert_int_equal(stats(rl).keys, keys);
    free(admitted);
    phg_rl_free(rl);
}

static void test_threads_exact(void **state)
{
    (void)state;
    run_threads(1, 50000, "1000/1h", 1000);   /* 8 x 50,000 on one key */
    run_threads(64, 64 * 200, "100/1m", 100); /* 8 x 200 per key on 64 keys */
    run_threads(3, 30000, "700/1s,900/1h", 700);
}

static void test_policy_change_keeps_counts(void **state)
{
    phg_rl_policy a = policy("5/1m"), b = policy("4/1m,100/1h"), c = policy("10/1m");
    phg_rl_policy low = policy("2/1m"), hour = policy("100/1h");
    phg_ratelimit *rl = engine(0);
    int i;
    (void)state;
    for (i = 0; i < 3; i++)
        assert_true(check(rl, "pc", &a, 1000).allowed);
    /* The 1 m window keeps its 3; the 1 h window starts at 0. */
    expect_decision(check(rl, "pc", &b, 2000), 1, 4, 60, 0, 64, 0);
    assert_false(check(rl, "pc", &b, 2000).allowed);
    /* Back to one window: 4 counted in the minute. */
    expect_decision(check(rl, "pc", &c, 3000), 1, 10, 60, 5, 0, 0);
    /* A limit below what was counted: refused, nothing negative. */
    expect_decision(check(rl, "pc", &low, 3000), 0, 2, 60, 0, 63, 63);
    /* The hour window was dropped with policy c: it starts again at 0. */
    expect_decision(check(rl, "pc", &hour, 3000), 1, 100, 3600, 99, 0, 0);
    phg_rl_free(rl);
}

static void test_reset(void **state)
{
    phg_rl_policy p = policy("3/1h");
    phg_ratelimit *rl = engine(0);
    int round, i;
    (void)state;
    for (round = 0; round < 3; round++) {
        for (i = 0; i < 3; i++)
            assert_true(check(rl, "ak_reset", &p, 5000).allowed);
        assert_false(check(rl, "ak_reset", &p, 5000).allowed);
        assert_int_equal(stats(rl).keys, 1);
        phg_rl_reset(rl, "ak_reset", 8);
        assert_int_equal(stats(rl).keys, 0);
        assert_int_equal(stats(rl).evicted, 0); /* a reset is not an eviction */
    }
    phg_rl_reset(rl, "ak_never", 8); /* unknown key: nothing */
    phg_rl_reset(rl, "", 0);
    phg_rl_free(rl);
}

static void test_peek_does_not_count(void **state)
{
    phg_rl_policy p = policy("3/10s"), other;
    phg_ratelimit *rl = engine(0);
    int i;
    (void)state;
    /* An unknown key: the answer of a first request, nothing tracked. */
    for (i = 0; i < 10; i++)
        expect_decision(peek(rl, "pk", &p, 100000), 1, 3, 10, 2, 0, 0);
    assert_int_equal(stats(rl).keys, 0);
    expect_decision(check(rl, "pk", &p, 100000), 1, 3, 10, 2, 0, 0);
    for (i = 0; i < 10; i++)
        expect_decision(peek(rl, "pk", &p, 100500), 1, 3, 10, 1, 0, 0);
    expect_decision(check(rl, "pk", &p, 100500), 1, 3, 10, 1, 0, 0);
    /* The last slot: peek tells what check will do, including the reset. */
    expect_decision(peek(rl, "pk", &p, 102500), 1, 3, 10, 0, 9, 0);
    expect_decision(check(rl, "pk", &p, 102500), 1, 3, 10, 0, 9, 0);
    expect_decision(peek(rl, "pk", &p, 103000), 0, 3, 10, 0, 8, 8);
    expect_decision(peek(rl, "pk", &p, 111000), 1, 3, 10, 1, 0, 0);
    expect_decision(check(rl, "pk", &p, 111000), 1, 3, 10, 1, 0, 0);
    /* A peek under another policy changes nothing stored. */
    other = policy("9/1h");
    expect_decision(peek(rl, "pk", &other, 111000), 1, 9, 3600, 8, 0, 0);
    expect_decision(check(rl, "pk", &p, 111000), 1, 3, 10, 0, 2, 0);
    phg_rl_free(rl);
}

static void test_no_limit_and_bad_args(void **state)
{
    phg_rl_policy none = policy("none"), p = policy("1/1m"), bad;
    phg_ratelimit *rl = engine(0);
    phg_rl_decision d;
    char long_key[PHG_RL_KEY_MAX + 2];
    int i;
    (void)state;
    for (i = 0; i < 5; i++)
        expect_decision(check(rl, "nl", &none, 1000), 1, 0, 0, 0, 0, 0);
    expect_decision(peek(rl, "nl", &none, 1000), 1, 0, 0, 0, 0, 0);
    assert_int_equal(stats(rl).keys, 0);

    assert_int_equal(phg_rl_check(rl, "", 0, &p, 1, &d), PHG_ERR_INVALID);
    memset(long_key, 'k', sizeof long_key);
    assert_int_equal(phg_rl_check(rl, long_key, PHG_RL_KEY_MAX + 1, &p, 1, &d), PHG_ERR_INVALID);
    assert_int_equal(phg_rl_peek(rl, long_key, PHG_RL_KEY_MAX + 1, &p, 1, &d), PHG_ERR_INVALID);
    /* Keys of the longest size, differing in their last byte, are apart
     * (and stored outside the entry). */
    assert_int_equal(phg_rl_check(rl, long_key, PHG_RL_KEY_MAX, &p, 1, &d), PHG_OK);
    assert_true(d.allowed);
    long_key[PHG_RL_KEY_MAX - 1] = 'j';
    assert_int_equal(phg_rl_check(rl, long_key, PHG_RL_KEY_MAX, &p, 1, &d), PHG_OK);
    assert_true(d.allowed);
    assert_int_equal(phg_rl_check(rl, long_key, PHG_RL_KEY_MAX, &p, 1, &d), PHG_OK);
    assert_false(d.allowed);
    /* Keys are bytes: an embedded NUL is part of the key. */
    assert_int_equal(phg_rl_check(rl, "a\0b", 3, &p, 1, &d), PHG_OK);
    assert_true(d.allowed);
    assert_int_equal(phg_rl_check(rl, "a\0c", 3, &p, 1, &d), PHG_OK);
    assert_true(d.allowed);

    /* Policies made by hand are checked. */
    bad = p;
    bad.limits[0].count = 0;
    assert_int_equal(phg_rl_check(rl, "x", 1, &bad, 1, &d), PHG_ERR_INVALID);
    bad = policy("1/1m,2/1h");
    bad.limits[0].window_s = 7200; /* out of order */
    assert_int_equal(phg_rl_check(rl, "x", 1, &bad, 1, &d), PHG_ERR_INVALID);
    bad.n = PHG_RL_WINDOWS_MAX + 1;
    assert_int_equal(phg_rl_check(rl, "x", 1, &bad, 1, &d), PHG_ERR_INVALID);
    bad = p;
    bad.limits[0].window_s = PHG_RL_WINDOW_MAX_S + 1;
    assert_int_equal(phg_rl_peek(rl, "x", 1, &bad, 1, &d), PHG_ERR_INVALID);
    phg_rl_free(rl);
    phg_rl_free(NULL);

    {
        phg_rl_options o;
        phg_ratelimit *r2 = NULL;
        phg_rl_options_init(&o);
        assert_int_equal(o.max_keys, 1000000);
        o.max_keys = 0;
        assert_int_equal(phg_rl_new(&o, &r2), PHG_ERR_INVALID);
        assert_null(r2);
        assert_int_equal(phg_rl_new(NULL, &r2), PHG_OK);
        phg_rl_free(r2);
    }
}

/* A clock that a thread reads before another takes the lock: time never goes
 * backwards for a key, so a late request counts at the latest time seen. */
static void test_clock_never_backwards(void **state)
{
    phg_rl_policy p = policy("2/10s");
    phg_ratelimit *rl = engine(0);
    (void)state;
    assert_true(check(rl, "cb", &p, 200000).allowed);
    /* An older time: counted in the current sub-window, not in an old one
     * that would leave the range sooner. */
    expect_decision(check(rl, "cb", &p, 150000), 1, 2, 10, 0, 11, 0);
    expect_decision(check(rl, "cb", &p, 210999), 0, 2, 10, 0, 1, 1);
    phg_rl_free(rl);
}

/* ---- memory -------------------------------------------------------------------------- */

static void test_idle_expiry(void **state)
{
    phg_rl_policy p = policy("1/1s"), q = policy("999999999/1s");
    phg_ratelimit *rl = engine(0), *rl2 = engine(0);
    phg_rl_stats st, st2;
    char key[32];
    int i;
    (void)state;
    for (i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "ak_old%d", i);
        assert_true(check(rl, key, &p, 0).allowed);
        assert_true(check(rl2, key, &q, 0).allowed);
    }
    st = stats(rl);
    assert_int_equal(st.keys, 10000);
    assert_int_equal(st.evicted, 0);
    /* Constant memory per key, whatever N and however many are counted. */
    st2 = stats(rl2);
    for (i = 0; i < 100000; i++)
        (void)check(rl2, "ak_old0", &q, i / 100);
    assert_int_equal(stats(rl2).bytes, st2.bytes);
    phg_rl_free(rl2);
    rl2 = engine(0);
    assert_true(check(rl2, "ak_one", &p, 0).allowed);
    st2 = stats(rl2);
    phg_rl_free(rl2);
    rl2 = engine(0);
    assert_true(check(rl2, "ak_one", &q, 0).allowed);
    assert_int_equal(stats(rl2).bytes, st2.bytes);
    EXPECT(st.bytes > 10000 * 200 && st.bytes < 10000 * 1000, "%zu bytes for 10,000 keys",
           st.bytes);

    /* 1.1 s later they would count nothing any more; inserts reclaim them. */
    for (i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "ak_new%d", i);
        assert_true(check(rl, key, &p, 1101).allowed);
    }
    st = stats(rl);
    assert_int_equal(st.keys, 10000);
    assert_int_equal(st.evicted, 10000);
    /* Still alive at exactly W + g: nothing more goes. */
    for (i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "ak_more%d", i);
        assert_true(check(rl, key, &p, 2201).allowed);
    }
    st = stats(rl);
    assert_int_equal(st.keys, 10300);
    assert_int_equal(st.evicted, 10000);
    /* A live key kept its count; a dropped one starts afresh. */
    assert_false(check(rl, "ak_more0", &p, 2201).allowed);
    assert_true(check(rl, "ak_old1", &p, 2201).allowed);
    phg_rl_free(rl);
    phg_rl_free(rl2);
}

static void test_max_keys_eviction(void **state)
{
    phg_rl_policy p = policy("1/1h");
    phg_ratelimit *rl = engine(100);
    phg_rl_stats st;
    char key[32];
    int i;
    (void)state;
    for (i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_true(check(rl, key, &p, 0).allowed);
    }
    st = stats(rl);
    assert_int_equal(st.keys, 100);
    assert_int_equal(st.evicted, 0);
    /* k1 used again (after the LRU granule of 1 s): it is now the most
     * recent; k0 the least. */
    assert_false(check(rl, "k1", &p, 2000).allowed);
    assert_true(check(rl, "k100", &p, 2000).allowed);
    st = stats(rl);
    assert_int_equal(st.keys, 100);
    assert_int_equal(st.evicted, 1);
    /* k0 was evicted: it starts afresh, and k2 goes. */
    assert_true(check(rl, "k0", &p, 2000).allowed);
    assert_false(check(rl, "k1", &p, 2000).allowed);
    assert_false(check(rl, "k3", &p, 2000).allowed);
    assert_true(check(rl, "k2", &p, 2000).allowed);
    st = stats(rl);
    assert_int_equal(st.keys, 100);
    assert_int_equal(st.evicted, 3);

    /* Many shards: the bound still holds exactly on one thread. */
    phg_rl_free(rl);
    rl = engine(50000);
    for (i = 0; i < 60000; i++) {
        snprintf(key, sizeof key, "ak_many%d", i);
        assert_true(check(rl, key, &p, 0).allowed);
    }
    st = stats(rl);
    assert_int_equal(st.keys, 50000);
    assert_int_equal(st.evicted, 10000);
    phg_rl_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),
        cmocka_unit_test(test_parse_round_trip),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_promise_brute_force),
        cmocka_unit_test(test_fresh_key_admits_exactly_n),
        cmocka_unit_test(test_hand_worked),
        cmocka_unit_test(test_multiple_windows),
        cmocka_unit_test(test_threads_exact),
        cmocka_unit_test(test_policy_change_keeps_counts),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_peek_does_not_count),
        cmocka_unit_test(test_no_limit_and_bad_args),
        cmocka_unit_test(test_clock_never_backwards),
        cmocka_unit_test(test_idle_expiry),
        cmocka_unit_test(test_max_keys_eviction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
