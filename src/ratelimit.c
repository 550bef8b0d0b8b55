/*
 * ratelimit.c: rate-limit policies (parse, format) and the local engine:
 * exact sliding windows over sub-window counts, in process.
 *
 * Not here: the Redis engine (ratelimit_redis.c runs the same algorithm as
 * a Lua script; both must answer identically for the same sequence of
 * requests), and anything HTTP (the gateway turns a decision into headers).
 * The algorithm, its proof and the under-admission bound are written down in
 * include/phigate/ratelimit.h and docs/formats.md, section 16.
 *
 * Layout: keys are spread over up to 256 shards by the top bits of a seeded
 * 64-bit hash; each shard is a mutex, a chained hash table and an LRU list,
 * on cache lines of its own. A decision takes one shard's lock for a few
 * dozen instructions and allocates nothing for a key it knows. Each key is
 * one fixed-size entry: per window, the count of each of the last
 * PHG_RL_SUBWINDOWS + 1 sub-windows in a ring, so memory never grows with N.
 *
 * Idle keys: an entry not touched for its longest window plus one sub-window
 * counts nothing any more (every sub-window it counted has left the summed
 * range), so dropping it changes no answer. Dead entries are reclaimed
 * lazily by the inserts of their shard (from the LRU tail, and by a sweep of
 * two buckets per insert that also finds dead entries stuck behind a live
 * one). When max_keys keys are tracked, an insert first evicts the least
 * recently used entry (of its shard, else of a neighbouring one); that may
 * drop a live key's counts, so max_keys must exceed the keys active within
 * the longest window (the default, 1,000,000, is about 340 MB when full).
 * The LRU order is kept to within LRU_GRANULE_MS: an entry moves to the
 * front at most once per granule, so a hot key does not write its list
 * neighbours on every request.
 */
#include <assert.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "phigate/crypto.h"
#include "phigate/ratelimit.h"

#define SLOTS (PHG_RL_SUBWINDOWS + 1) /* sub-windows summed per decision */
#define SHARDS_MAX 256
#define KEYS_PER_SHARD_MIN 64 /* fewer shards for a small max_keys, so that it holds exactly */
#define BUCKETS_MIN 16
#define KEY_INLINE 32 /* API key ids are 19 bytes ("ak_" + 16) */
#define LRU_GRANULE_MS 1000
#define RECLAIM_PER_INSERT 32
#define SWEEP_PER_INSERT 2
#define DEFAULT_MAX_KEYS 1000000

/* ---- policies ---------------------------------------------------------------------- */

static void set_err(char *err, size_t len, const char *msg, size_t item)
{
    if (err == NULL || len == 0)
        return;
    if (item > 0)
        snprintf(err, len, "rate limit, item %zu: %s", item, msg);
    else
        snprintf(err, len, "rate limit: %s", msg);
}

/*
 * Digits at *pp into *value, at most 10 of them read into a uint64_t (a
 * longer number is reported as too large, never overflows). Returns 0 when
 * there is no digit, -1 for a leading zero, else the number of digits.
 */
static int parse_digits(const char **pp, uint64_t *value)
{
    const char *p = *pp;
    uint64_t v = 0;
    int n = 0;
    if (*p < '0' || *p > '9')
        return 0;
    if (p[0] == '0' && p[1] >= '0' && p[1] <= '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        if (n < 11)
            v = v * 10 + (uint64_t)(*p - '0');
        p++, n++;
    }
    *pp = p;
    *value = n > 10 ? UINT64_MAX : v;
    return n;
}

phg_status phg_rl_policy_parse(const char *text, phg_rl_policy *policy, char *err, size_t err_len)
{
    phg_status rc = PHG_ERR_INVALID;
    const char *p;
    size_t len, item, i, j;
    phg_rl_policy pol;

    assert(policy != NULL);
    memset(&pol, 0, sizeof pol);
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (text == NULL) {
        set_err(err, err_len, "none given", 0);
        goto out;
    }
    len = strnlen(text, PHG_RL_TEXT_MAX + 1);
    if (len > PHG_RL_TEXT_MAX) {
        set_err(err, err_len, "longer than 128 bytes", 0);
        goto out;
    }
    if (len == 0) {
        set_err(err, err_len, "empty (write \"none\" for no limit)", 0);
        goto out;
    }
    if (strcmp(text, "none") == 0) {
        rc = PHG_OK;
        goto out;
    }
    p = text;
    for (item = 1;; item++) {
        uint64_t count = 0, window = 0, unit;
        int nd;
        if (pol.n == PHG_RL_WINDOWS_MAX) {
            set_err(err, err_len, "more than 4 limits (4 windows at most)", 0);
            goto out;
        }
        if (*p == '-') {
            set_err(err, err_len, "the count is negative (it must be 1 to 999999999)", item);
            goto out;
        }
        nd = parse_digits(&p, &count);
        if (nd == 0) {
            set_err(err, err_len, "expected COUNT/WINDOW, such as 100/1m or 5000/1h", item);
            goto out;
        }
        if (nd < 0) {
            set_err(err, err_len, "the count has a leading zero", item);
            goto out;
        }
        if (count == 0) {
            set_err(err, err_len, "a count of 0 (it must be 1 to 999999999)", item);
            goto out;
        }
        if (count > PHG_RL_COUNT_MAX) {
            set_err(err, err_len, "the count is over 999999999", item);
            goto out;
        }
        if (*p != '/') {
            set_err(err, err_len, "expected '/' after the count, as in 100/1m", item);
            goto out;
        }
        p++;
        if (*p == '-') {
            set_err(err, err_len, "the window is negative", item);
            goto out;
        }
        nd = parse_digits(&p, &window);
        if (nd == 0) {
            set_err(err, err_len, "expected a window after '/', such as 1m", item);
            goto out;
        }
        if (nd < 0) {
            set_err(err, err_len, "the window has a leading zero", item);
            goto out;
        }
        if (window == 0) {
            set_err(err, err_len, "a window of 0 (it must be 1s to 100d)", item);
            goto out;
        }
        switch (*p) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        case '\0':
        case ',':
            set_err(err, err_len, "the window has no unit (s, m, h or d)", item);
            goto out;
        default: {
            char msg[64];
            snprintf(msg, sizeof msg, "unknown unit '%c' (s, m, h or d)", *p);
            if (*p > ' ' && *p < 0x7f)
                set_err(err, err_len, msg, item);
            else
                set_err(err, err_len, "unknown unit (s, m, h or d)", item);
            goto out;
        }
        }
        p++;
        if (window > PHG_RL_WINDOW_MAX_S / unit) {
            set_err(err, err_len, "the window is over 100 days", item);
            goto out;
        }
        window *= unit;
        for (i = 0; i < pol.n; i++) {
            if (pol.limits[i].window_s == (uint32_t)window) {
                set_err(err, err_len, "two limits with the same window", item);
                goto out;
            }
        }
        pol.limits[pol.n].count = (uint32_t)count;
        pol.limits[pol.n].window_s = (uint32_t)window;
        pol.n++;
        if (*p == '\0')
            break;
        if (*p != ',') {
            set_err(err, err_len,
                    "unexpected text after the window (limits are separated by "
                    "commas, without spaces)",
                    item);
            goto out;
        }
        p++;
    }
    /* Shortest window first (insertion sort of at most 4). */
    for (i = 1; i < pol.n; i++) {
        phg_rl_limit l = pol.limits[i];
        for (j = i; j > 0 && pol.limits[j - 1].window_s > l.window_s; j--)
            pol.limits[j] = pol.limits[j - 1];
        pol.limits[j] = l;
    }
    rc = PHG_OK;
out:
    if (rc != PHG_OK)
        memset(&pol, 0, sizeof pol);
    *policy = pol;
    return rc;
}

void phg_rl_policy_format(const phg_rl_policy *policy, char *buf, size_t len)
{
    size_t i, pos = 0;
    assert(policy != NULL && buf != NULL && len > 0);
    buf[0] = '\0';
    if (policy->n == 0) {
        snprintf(buf, len, "none");
        return;
    }
    for (i = 0; i < policy->n && i < PHG_RL_WINDOWS_MAX && pos < len; i++) {
        uint32_t w = policy->limits[i].window_s;
        char unit = 's';
        int n;
        if (w % 86400 == 0)
            w /= 86400, unit = 'd';
        else if (w % 3600 == 0)
            w /= 3600, unit = 'h';
        else if (w % 60 == 0)
            w /= 60, unit = 'm';
        n = snprintf(buf + pos, len - pos, "%s%u/%u%c", i > 0 ? "," : "",
                     (unsigned)policy->limits[i].count, (unsigned)w, unit);
        if (n < 0)
            return;
        pos += (size_t)n;
    }
}

/* A policy as the engine accepts it: what phg_rl_policy_parse can produce. */
int phg_rl_policy_valid(const phg_rl_policy *p)
{
    size_t i;
    if (p == NULL)
        return 0;
    if (p->n > PHG_RL_WINDOWS_MAX)
        return 0;
    for (i = 0; i < p->n; i++) {
        if (p->limits[i].count < 1 || p->limits[i].count > PHG_RL_COUNT_MAX ||
            p->limits[i].window_s < 1 || p->limits[i].window_s > PHG_RL_WINDOW_MAX_S)
            return 0;
        if (i > 0 && p->limits[i].window_s <= p->limits[i - 1].window_s)
            return 0;
    }
    return 1;
}

/* ---- the sliding-window arithmetic -------------------------------------------------- */

/*
 * One window of one key. counts[i % SLOTS] is the number admitted in
 * sub-window i for head - PHG_RL_SUBWINDOWS <= i <= head; other sub-windows
 * counted nothing. head only moves forward.
 */
typedef struct rl_window {
    uint64_t head;
    uint32_t window_s; /* 0: slot unused */
    uint32_t counts[SLOTS];
} rl_window;

static uint64_t sub_ms(uint32_t window_s)
{
    uint64_t w_ms = (uint64_t)window_s * 1000u;
    return (w_ms + PHG_RL_SUBWINDOWS - 1) / PHG_RL_SUBWINDOWS;
}

/* Move head to b, zeroing the sub-windows that start being counted. */
static void window_advance(rl_window *w, uint64_t b)
{
    uint64_t d, i;
    if (b <= w->head)
        return;
    d = b - w->head;
    if (d >= SLOTS) {
        memset(w->counts, 0, sizeof w->counts);
    } else {
        for (i = 1; i <= d; i++)
            w->counts[(w->head + i) % SLOTS] = 0;
    }
    w->head = b;
}

/* The count of sub-window b - PHG_RL_SUBWINDOWS + m (0 <= m <= PHG_RL_SUBWINDOWS);
 * the window must have been advanced to b. Sub-windows before 0 counted nothing. */
static uint32_t count_at(const rl_window *w, uint64_t b, unsigned m)
{
    if (b + m < PHG_RL_SUBWINDOWS)
        return 0;
    return w->counts[(b + m - PHG_RL_SUBWINDOWS) % SLOTS];
}

static uint32_t ms_to_s(uint64_t ms)
{
    uint64_t s = (ms + 999) / 1000;
    return s < 1 ? 1 : (uint32_t)s;
}

typedef struct window_answer {
    uint64_t sum; /* counted in the summed range, before this request */
    uint64_t b;   /* the current sub-window */
    uint64_t g;   /* sub-window length, ms */
} window_answer;

/* Milliseconds from t until the oldest counted non-empty sub-window leaves
 * the summed range (the window then frees what it counted). */
static uint64_t reset_ms(const rl_window *w, const window_answer *a, uint64_t t)
{
    unsigned m;
    for (m = 0; m <= PHG_RL_SUBWINDOWS; m++) {
        if (count_at(w, a->b, m) != 0)
            return (a->b + m + 1) * a->g - t; /* sub-window b-S+m leaves at (b+m+1)*g */
    }
    return 0;
}

/* Milliseconds from t until enough old sub-windows have left that the sum is
 * below n (nothing admitted meanwhile). */
static uint64_t retry_ms(const rl_window *w, const window_answer *a, uint32_t n, uint64_t t)
{
    uint64_t left = a->sum;
    unsigned m;
    for (m = 0; m <= PHG_RL_SUBWINDOWS; m++) {
        left -= count_at(w, a->b, m);
        if (left < n)
            return (a->b + m + 1) * a->g - t;
    }
    return (a->b + PHG_RL_SUBWINDOWS + 1) * a->g - t; /* not reached: the sum is then 0 */
}

/*
 * Decide on windows w[0..policy->n) (matched to the policy's limits) at t,
 * and count the request in them when admitted (peek passes a copy). The
 * windows are advanced to t whether or not anything is counted.
 */
static void decide(rl_window *w, const phg_rl_policy *policy, uint64_t t, phg_rl_decision *d)
{
    window_answer a[PHG_RL_WINDOWS_MAX];
    uint64_t best_remaining = UINT64_MAX, retry = 0;
    size_t i, best = 0;
    int allowed = 1;

    for (i = 0; i < policy->n; i++) {
        unsigned m;
        a[i].g = sub_ms(policy->limits[i].window_s);
        a[i].b = t / a[i].g;
        window_advance(&w[i], a[i].b);
        a[i].sum = 0;
        for (m = 0; m < SLOTS; m++)
            a[i].sum += w[i].counts[m];
        if (a[i].sum >= policy->limits[i].count)
            allowed = 0;
    }
    for (i = 0; i < policy->n; i++) {
        uint64_t n = policy->limits[i].count, used = a[i].sum, remaining;
        if (allowed) {
            w[i].counts[a[i].b % SLOTS]++;
            used++;
        } else if (a[i].sum >= n) {
            uint64_t r = retry_ms(&w[i], &a[i], (uint32_t)n, t);
            if (r > retry)
                retry = r;
        }
        remaining = used >= n ? 0 : n - used;
        if (remaining < best_remaining) { /* ties keep the shorter window */
            best_remaining = remaining;
            best = i;
        }
    }
    d->allowed = allowed;
    d->limit = policy->limits[best].count;
    d->window_s = policy->limits[best].window_s;
    d->remaining = (uint32_t)best_remaining;
    d->reset_s = 0;
    if (best_remaining == 0) {
        /* reset_ms looks at the counts as they are now, this request included. */
        d->reset_s = ms_to_s(reset_ms(&w[best], &a[best], t));
    }
    d->retry_after_s = allowed ? 0 : ms_to_s(retry);
}

/* ---- the engine ----------------------------------------------------------------- */

typedef struct rl_entry {
    /* First cache line: what a lookup reads. */
    struct rl_entry *next; /* hash chain */
    uint64_t hash;
    uint64_t last_ms; /* the latest time seen; decisions use max(now, last_ms) */
    uint8_t key_len;  /* 1..PHG_RL_KEY_MAX */
    uint8_t nwin;     /* windows in use, w[0..nwin), in the order of the last policy */
    union {
        char in[KEY_INLINE]; /* key_len <= KEY_INLINE */
        char *heap;          /* longer keys */
    } key;
    /* Then the windows, then what only the LRU and reclamation use. */
    rl_window w[PHG_RL_WINDOWS_MAX];
    struct rl_entry *lru_prev, *lru_next; /* lru_prev: towards the front (most recent) */
    uint64_t lru_ms;                      /* when last moved to the front */
    uint64_t dead_after_ms;               /* idle this long: counts nothing any more */
} rl_entry;

typedef struct rl_shard {
    _Alignas(64) pthread_mutex_t lock;
    rl_entry **buckets;
    size_t mask; /* buckets - 1 */
    size_t count;
    size_t sweep; /* next bucket the idle sweep looks at */
    size_t bytes; /* buckets, entries and their keys */
    uint64_t evicted;
    rl_entry *lru_head, *lru_tail;
} rl_shard;

struct phg_ratelimit {
    rl_shard *shards;
    size_t nshards; /* a power of two */
    size_t max_keys;
    uint64_t seed;
    _Atomic size_t keys;
};

void phg_rl_options_init(phg_rl_options *opts)
{
    assert(opts != NULL);
    memset(opts, 0, sizeof *opts);
    opts->max_keys = DEFAULT_MAX_KEYS;
}

static uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* A fast seeded non-cryptographic hash: keys are API key ids, not secrets;
 * the seed keeps the shard and bucket of a key unpredictable. */
static uint64_t hash_key(uint64_t seed, const char *k, size_t n)
{
    uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull), w;
    while (n >= 8) {
        memcpy(&w, k, 8);
        h = rotl64(h ^ (w * 0xbf58476d1ce4e5b9ull), 29) * 0x94d049bb133111ebull;
        k += 8, n -= 8;
    }
    if (n > 0) {
        w = 0;
        memcpy(&w, k, n);
        h = rotl64(h ^ (w * 0xbf58476d1ce4e5b9ull), 29) * 0x94d049bb133111ebull;
    }
    return fmix64(h);
}

static const char *entry_key(const rl_entry *e)
{
    return e->key_len > KEY_INLINE ? e->key.heap : e->key.in;
}

/* A lookup reads the first cache line; a one-window decision the second. */
_Static_assert(offsetof(rl_entry, w) == 64, "rl_entry: the lookup fields fill one cache line");

/* What malloc was asked for: entries are whole cache lines. */
#define ENTRY_ALLOC ((sizeof(rl_entry) + 63) & ~(size_t)63)

static size_t entry_bytes(const rl_entry *e)
{
    return ENTRY_ALLOC + (e->key_len > KEY_INLINE ? e->key_len : 0);
}

phg_status phg_rl_new(const phg_rl_options *opts, phg_ratelimit **out)
{
    phg_status rc = PHG_ERR_NOMEM;
    phg_rl_options defaults;
    phg_ratelimit *rl = NULL;
    uint8_t seed[8];
    size_t i, inited = 0;

    assert(out != NULL);
    *out = NULL;
    if (opts == NULL) {
        phg_rl_options_init(&defaults);
        opts = &defaults;
    }
    if (opts->max_keys < 1)
        return PHG_ERR_INVALID;
    rl = calloc(1, sizeof *rl);
    if (rl == NULL)
        goto out;
    rl->max_keys = opts->max_keys;
    rl->nshards = 1;
    while (rl->nshards < SHARDS_MAX && opts->max_keys / (rl->nshards * 2) >= KEYS_PER_SHARD_MIN)
        rl->nshards *= 2;
    atomic_init(&rl->keys, 0);
    if (phg_random_bytes(seed, sizeof seed) != PHG_OK) {
        rc = PHG_ERR_INTERNAL;
        goto out;
    }
    memcpy(&rl->seed, seed, sizeof seed);
    rl->shards = aligned_alloc(64, rl->nshards * sizeof *rl->shards);
    if (rl->shards == NULL)
        goto out;
    memset(rl->shards, 0, rl->nshards * sizeof *rl->shards);
    for (i = 0; i < rl->nshards; i++) {
        rl_shard *s = &rl->shards[i];
        pthread_mutexattr_t attr;
        int e;
        s->buckets = calloc(BUCKETS_MIN, sizeof *s->buckets);
        if (s->buckets == NULL)
            goto out;
        s->mask = BUCKETS_MIN - 1;
        s->bytes = BUCKETS_MIN * sizeof *s->buckets;
        /* Adaptive: spins a little before sleeping, since the lock is held
         * for a few dozen instructions. */
        if (pthread_mutexattr_init(&attr) != 0) {
            free(s->buckets);
            rc = PHG_ERR_INTERNAL;
            goto out;
        }
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
        e = pthread_mutex_init(&s->lock, &attr);
        pthread_mutexattr_destroy(&attr);
        if (e != 0) {
            free(s->buckets);
            rc = PHG_ERR_INTERNAL;
            goto out;
        }
        inited++;
    }
    *out = rl;
    rl = NULL;
    rc = PHG_OK;
out:
    if (rl != NULL) {
        if (rl->shards != NULL) {
            for (i = 0; i < inited; i++) {
                pthread_mutex_destroy(&rl->shards[i].lock);
                free(rl->shards[i].buckets);
            }
            free(rl->shards);
        }
        free(rl);
    }
    return rc;
}

static void entry_free(rl_entry *e)
{
    if (e->key_len > KEY_INLINE)
        free(e->key.heap);
    free(e);
}

void phg_rl_free(phg_ratelimit *rl)
{
    size_t i, b;
    if (rl == NULL)
        return;
    for (i = 0; i < rl->nshards; i++) {
        rl_shard *s = &rl->shards[i];
        for (b = 0; b <= s->mask; b++) {
            rl_entry *e = s->buckets[b], *next;
            for (; e != NULL; e = next) {
                next = e->next;
                entry_free(e);
            }
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    free(rl->shards);
    free(rl);
}

static rl_shard *shard_of(phg_ratelimit *rl, uint64_t hash)
{
    return &rl->shards[(hash >> 56) & (rl->nshards - 1)];
}

/* The entry of a key in a locked shard, or NULL. */
static rl_entry *shard_find(rl_shard *s, uint64_t hash, const char *key, size_t key_len)
{
    rl_entry *e = s->buckets[hash & s->mask];
    for (; e != NULL; e = e->next) {
        /* With many keys an entry is a cache miss: fetch its windows (the
         * second line) at the same time as the key (the first). */
        __builtin_prefetch(&e->w[0]);
        if (e->hash == hash && e->key_len == key_len && memcmp(entry_key(e), key, key_len) == 0)
            return e;
    }
    return NULL;
}

static void lru_unlink(rl_shard *s, rl_entry *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        s->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        s->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(rl_shard *s, rl_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = s->lru_head;
    if (s->lru_head != NULL)
        s->lru_head->lru_prev = e;
    else
        s->lru_tail = e;
    s->lru_head = e;
}

/* Take e out of its locked shard and free it. */
static void shard_remove(phg_ratelimit *rl, rl_shard *s, rl_entry *e)
{
    rl_entry **pp = &s->buckets[e->hash & s->mask];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    lru_unlink(s, e);
    s->count--;
    s->bytes -= entry_bytes(e);
    atomic_fetch_sub_explicit(&rl->keys, 1, memory_order_relaxed);
    entry_free(e);
}

static int entry_dead(const rl_entry *e, uint64_t now_ms)
{
    return now_ms > e->last_ms && now_ms - e->last_ms > e->dead_after_ms;
}

/* Drop dead entries of a locked shard: from the LRU tail, then a sweep of a
 * few buckets for dead entries behind a live one in the LRU order. */
static void shard_reclaim(phg_ratelimit *rl, rl_shard *s, uint64_t now_ms)
{
    int i;
    for (i = 0; i < RECLAIM_PER_INSERT && s->lru_tail != NULL && entry_dead(s->lru_tail, now_ms);
         i++) {
        shard_remove(rl, s, s->lru_tail);
        s->evicted++;
    }
    for (i = 0; i < SWEEP_PER_INSERT; i++) {
        rl_entry *e = s->buckets[s->sweep & s->mask], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            if (entry_dead(e, now_ms)) {
                shard_remove(rl, s, e);
                s->evicted++;
            }
        }
        s->sweep = (s->sweep + 1) & s->mask;
    }
}

/* Twice the buckets when there are more than half as many entries: a lookup
 * then visits about 1.2 entries, each likely a cache miss. A failed
 * allocation only leaves the chains longer. */
static void shard_grow(rl_shard *s)
{
    size_t n = (s->mask + 1) * 2, b;
    rl_entry **nb;
    if (s->count <= (s->mask + 1) / 2)
        return;
    nb = calloc(n, sizeof *nb);
    if (nb == NULL)
        return;
    for (b = 0; b <= s->mask; b++) {
        rl_entry *e = s->buckets[b], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
        }
    }
    free(s->buckets);
    s->bytes += (n - (s->mask + 1)) * sizeof *nb;
    s->buckets = nb;
    s->mask = n - 1;
    s->sweep = 0;
}

/* Make room for one more key when max_keys are tracked: evict the least
 * recently used entry of the locked shard s, or, if s is empty, of another
 * shard whose lock is free right now (trylock: never wait holding a lock). */
static void make_room(phg_ratelimit *rl, rl_shard *s)
{
    size_t i;
    if (s->lru_tail != NULL) {
        shard_remove(rl, s, s->lru_tail);
        s->evicted++;
        return;
    }
    for (i = 1; i < rl->nshards; i++) {
        rl_shard *o = &rl->shards[((size_t)(s - rl->shards) + i) & (rl->nshards - 1)];
        if (pthread_mutex_trylock(&o->lock) != 0)
            continue;
        if (o->lru_tail != NULL) {
            shard_remove(rl, o, o->lru_tail);
            o->evicted++;
            pthread_mutex_unlock(&o->lock);
            return;
        }
        pthread_mutex_unlock(&o->lock);
    }
}

/* A new entry for a key in locked shard s, or NULL when out of memory. */
static rl_entry *shard_insert(phg_ratelimit *rl, rl_shard *s, uint64_t hash, const char *key,
                              size_t key_len, uint64_t now_ms)
{
    rl_entry *e;
    size_t b;
    shard_reclaim(rl, s, now_ms);
    e = aligned_alloc(64, ENTRY_ALLOC);
    if (e == NULL)
        return NULL;
    memset(e, 0, sizeof *e);
    if (key_len > KEY_INLINE) {
        e->key.heap = malloc(key_len);
        if (e->key.heap == NULL) {
            free(e);
            return NULL;
        }
        memcpy(e->key.heap, key, key_len);
    } else {
        memcpy(e->key.in, key, key_len);
    }
    e->hash = hash;
    e->key_len = (uint8_t)key_len;
    e->last_ms = now_ms;
    e->lru_ms = now_ms;
    if (atomic_fetch_add_explicit(&rl->keys, 1, memory_order_relaxed) >= rl->max_keys)
        make_room(rl, s);
    b = hash & s->mask;
    e->next = s->buckets[b];
    s->buckets[b] = e;
    lru_push_front(s, e);
    s->count++;
    s->bytes += entry_bytes(e);
    shard_grow(s);
    return e;
}

/* Match the entry's windows to the policy (same order), keeping the counts
 * of the windows the policy still has; on a copy when `into` is not e->w. */
static void windows_for_policy(const rl_entry *e, const phg_rl_policy *policy, rl_window *into)
{
    rl_window w[PHG_RL_WINDOWS_MAX];
    size_t i, j;
    memset(w, 0, sizeof w);
    for (i = 0; i < policy->n; i++) {
        w[i].window_s = policy->limits[i].window_s;
        for (j = 0; e != NULL && j < e->nwin; j++) {
            if (e->w[j].window_s == policy->limits[i].window_s) {
                w[i] = e->w[j];
                break;
            }
        }
    }
    memcpy(into, w, sizeof w);
}

static int windows_match(const rl_entry *e, const phg_rl_policy *policy)
{
    size_t i;
    if (e->nwin != policy->n)
        return 0;
    for (i = 0; i < policy->n; i++) {
        if (e->w[i].window_s != policy->limits[i].window_s)
            return 0;
    }
    return 1;
}

static void set_dead_after(rl_entry *e, const phg_rl_policy *policy)
{
    /* The longest window is the last; W + g rounds up to whole sub-windows. */
    e->dead_after_ms = (uint64_t)SLOTS * sub_ms(policy->limits[policy->n - 1].window_s);
}

static phg_status check_args(const char *key, size_t key_len, const phg_rl_policy *policy,
                             phg_rl_decision *decision)
{
    assert(policy != NULL && decision != NULL);
    assert(key != NULL || key_len == 0);
    memset(decision, 0, sizeof *decision);
    if (key_len < 1 || key_len > PHG_RL_KEY_MAX || !phg_rl_policy_valid(policy))
        return PHG_ERR_INVALID;
    return PHG_OK;
}

phg_status phg_rl_check(phg_ratelimit *rl, const char *key, size_t key_len,
                        const phg_rl_policy *policy, uint64_t now_ms, phg_rl_decision *decision)
{
    phg_status rc;
    uint64_t hash, t;
    rl_shard *s;
    rl_entry *e;

    assert(rl != NULL);
    rc = check_args(key, key_len, policy, decision);
    if (rc != PHG_OK)
        return rc;
    if (policy->n == 0) {
        decision->allowed = 1;
        return PHG_OK;
    }
    hash = hash_key(rl->seed, key, key_len);
    s = shard_of(rl, hash);
    pthread_mutex_lock(&s->lock);
    e = shard_find(s, hash, key, key_len);
    if (e == NULL) {
        e = shard_insert(rl, s, hash, key, key_len, now_ms);
        if (e == NULL) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
    } else if (now_ms > e->lru_ms && now_ms - e->lru_ms >= LRU_GRANULE_MS) {
        lru_unlink(s, e);
        lru_push_front(s, e);
        e->lru_ms = now_ms;
    }
    if (!windows_match(e, policy)) {
        windows_for_policy(e, policy, e->w);
        e->nwin = (uint8_t)policy->n;
        set_dead_after(e, policy);
    }
    /* Two threads may read the clock in one order and take the lock in the
     * other: time never goes backwards for a key. */
    t = now_ms > e->last_ms ? now_ms : e->last_ms;
    e->last_ms = t;
    decide(e->w, policy, t, decision);
out:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

phg_status phg_rl_peek(phg_ratelimit *rl, const char *key, size_t key_len,
                       const phg_rl_policy *policy, uint64_t now_ms, phg_rl_decision *decision)
{
    rl_window w[PHG_RL_WINDOWS_MAX];
    phg_status rc;
    uint64_t hash, t = now_ms;
    rl_shard *s;
    rl_entry *e;

    assert(rl != NULL);
    rc = check_args(key, key_len, policy, decision);
    if (rc != PHG_OK)
        return rc;
    if (policy->n == 0) {
        decision->allowed = 1;
        return PHG_OK;
    }
    hash = hash_key(rl->seed, key, key_len);
    s = shard_of(rl, hash);
    pthread_mutex_lock(&s->lock);
    e = shard_find(s, hash, key, key_len);
    windows_for_policy(e, policy, w);
    if (e != NULL && e->last_ms > t)
        t = e->last_ms;
    pthread_mutex_unlock(&s->lock);
    decide(w, policy, t, decision);
    return PHG_OK;
}

void phg_rl_reset(phg_ratelimit *rl, const char *key, size_t key_len)
{
    uint64_t hash;
    rl_shard *s;
    rl_entry *e;
    assert(rl != NULL);
    assert(key != NULL || key_len == 0);
    if (key_len < 1 || key_len > PHG_RL_KEY_MAX)
        return;
    hash = hash_key(rl->seed, key, key_len);
    s = shard_of(rl, hash);
    pthread_mutex_lock(&s->lock);
    e = shard_find(s, hash, key, key_len);
    if (e != NULL)
        shard_remove(rl, s, e);
    pthread_mutex_unlock(&s->lock);
}

void phg_rl_get_stats(phg_ratelimit *rl, phg_rl_stats *stats)
{
    size_t i;
    assert(rl != NULL && stats != NULL);
    memset(stats, 0, sizeof *stats);
    stats->bytes = sizeof *rl + rl->nshards * sizeof *rl->shards;
    for (i = 0; i < rl->nshards; i++) {
        rl_shard *s = &rl->shards[i];
        pthread_mutex_lock(&s->lock);
        stats->keys += s->count;
        stats->bytes += s->bytes;
        stats->evicted += s->evicted;
        pthread_mutex_unlock(&s->lock);
    }
}
