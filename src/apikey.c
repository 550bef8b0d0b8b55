/*
 * apikey.c: API keys: the key text format, and phg_keys, the manager that
 * verifies keys from an in-memory index and changes them through the store.
 *
 * The index: 64 shards chosen by the low bits of the key index (the first 8
 * bytes of SHA-256(key), uniformly random), each an open-addressing table
 * with linear probing under its own rwlock on its own cache line. A verify
 * takes one shard's read lock; nothing global is written on the hot path.
 * Several keys may share an index (a forced collision): every candidate's
 * full hash is compared in constant time.
 *
 * Changes made elsewhere (another process, another instance) reach the index
 * through a poller that reads the store's change counter every 250 ms and
 * pulls the rows changed since the last version it saw. A key the index does
 * not know is looked up in the store once (it may have been created
 * elsewhere a moment ago), within a global budget of lookups per second, and
 * then remembered as unknown in a bounded negative cache until the next
 * change, so a flood of unknown keys never becomes a flood of queries.
 *
 * Format: docs/formats.md ("API key").
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "phigate/apikey.h"
#include "phigate/audit.h"
#include "phigate/crypto.h"
#include "phigate/ratelimit.h"
#include "store_internal.h"
#include "text_internal.h"

#define KEY_PREFIX "phg_"
#define KEY_PREFIX_LEN 4
#define KEY_BODY_LEN 43
#define KEY_CRC_LEN 6
#define ID_PREFIX "ak_"
#define ID_RANDOM_LEN 16
#define SHARDS 64
#define NEG_STRIPES 64
#define LOOKUPS_PER_SECOND 200
#define TOUCH_BATCH 500

static const char base62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* ---- CRC32 (IEEE 802.3, as zlib): a checksum, not a cryptographic primitive */

/* Slicing-by-8 tables: eight bytes per step instead of one, because the
 * checksum is computed on every verify and a byte-serial CRC was a third of
 * its time. crc_table[0] is the classic table. */
static uint32_t crc_table[8][256];
/* 1 for the base62 characters */
static uint8_t base62_char[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    uint32_t i, j;
    for (i = 0; i < 256; i++) {
        uint32_t c = i;
        for (j = 0; j < 8; j++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (i = 0; i < 256; i++) {
        for (j = 1; j < 8; j++)
            crc_table[j][i] = crc_table[0][crc_table[j - 1][i] & 0xff] ^ (crc_table[j - 1][i] >> 8);
    }
    for (i = 0; i < 62; i++)
        base62_char[(uint8_t)base62[i]] = 1;
}

static uint32_t crc32_of(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    uint32_t c = 0xffffffffu;
    pthread_once(&crc_once, crc_init);
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0)
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

/* Fixed-width base62 of a 32-bit value, most significant digit first. */
static void base62_u32(uint32_t v, char out[KEY_CRC_LEN])
{
    int i;
    for (i = KEY_CRC_LEN - 1; i >= 0; i--) {
        out[i] = base62[v % 62];
        v /= 62;
    }
}

/* Fixed-width (43) base62 of 32 bytes read as a big-endian number. */
static void base62_256(const uint8_t in[32], char out[KEY_BODY_LEN])
{
    uint8_t num[32];
    int i, j;
    memcpy(num, in, 32);
    for (i = KEY_BODY_LEN - 1; i >= 0; i--) {
        unsigned rem = 0;
        for (j = 0; j < 32; j++) { /* num /= 62, rem = num % 62 */
            unsigned cur = rem << 8 | num[j];
            num[j] = (uint8_t)(cur / 62);
            rem = cur % 62;
        }
        out[i] = base62[rem];
    }
    phg_wipe(num, sizeof num);
}

phg_status phg_apikey_generate(char key[PHG_APIKEY_LEN + 1])
{
    uint8_t rnd[32];
    phg_status rc;
    assert(key != NULL);
    rc = phg_random_bytes(rnd, sizeof rnd);
    if (rc != PHG_OK)
        return rc;
    memcpy(key, KEY_PREFIX, KEY_PREFIX_LEN);
    base62_256(rnd, key + KEY_PREFIX_LEN);
    base62_u32(crc32_of(key, KEY_PREFIX_LEN + KEY_BODY_LEN), key + KEY_PREFIX_LEN + KEY_BODY_LEN);
    key[PHG_APIKEY_LEN] = '\0';
    phg_wipe(rnd, sizeof rnd);
    return PHG_OK;
}

phg_apikey_reason phg_apikey_check_format(const char *key, size_t len)
{
    char crc[KEY_CRC_LEN];
    unsigned ok = 1;
    size_t i;
    if (key == NULL || len != PHG_APIKEY_LEN || memcmp(key, KEY_PREFIX, KEY_PREFIX_LEN) != 0)
        return PHG_APIKEY_MALFORMED;
    pthread_once(&crc_once, crc_init);
    for (i = KEY_PREFIX_LEN; i < len; i++)
        ok &= base62_char[(uint8_t)key[i]];
    if (!ok)
        return PHG_APIKEY_MALFORMED;
    base62_u32(crc32_of(key, KEY_PREFIX_LEN + KEY_BODY_LEN), crc);
    /* The checksum is public information; a plain compare is fine. */
    if (memcmp(crc, key + KEY_PREFIX_LEN + KEY_BODY_LEN, KEY_CRC_LEN) != 0)
        return PHG_APIKEY_CHECKSUM;
    return PHG_APIKEY_VALID;
}

const char *phg_apikey_reason_name(phg_apikey_reason reason)
{
    switch (reason) {
    case PHG_APIKEY_VALID: return "valid";
    case PHG_APIKEY_MALFORMED: return "malformed";
    case PHG_APIKEY_CHECKSUM: return "bad_checksum";
    case PHG_APIKEY_UNKNOWN: return "unknown";
    case PHG_APIKEY_REVOKED: return "revoked";
    case PHG_APIKEY_EXPIRED: return "expired";
    }
    return "invalid";
}

static const struct {
    const char *name;
    uint32_t bit;
} scope_names[] = {
    {"phi:encrypt", PHG_SCOPE_PHI_ENCRYPT}, {"phi:decrypt", PHG_SCOPE_PHI_DECRYPT},
    {"audit:read", PHG_SCOPE_AUDIT_READ},   {"keys:admin", PHG_SCOPE_KEYS_ADMIN},
    {"webhooks:admin", PHG_SCOPE_WEBHOOKS_ADMIN},
};

phg_status phg_apikey_scopes_parse(const char *text, uint32_t *scopes)
{
    size_t i = 0, n = strlen(text);
    assert(text != NULL && scopes != NULL);
    *scopes = 0;
    if (n > 1024)
        return PHG_ERR_INVALID;
    while (i < n) {
        size_t start, k;
        int found = 0;
        while (i < n && (text[i] == ',' || text[i] == ' '))
            i++;
        start = i;
        while (i < n && text[i] != ',' && text[i] != ' ')
            i++;
        if (i == start)
            break;
        for (k = 0; k < sizeof scope_names / sizeof scope_names[0]; k++) {
            if (strlen(scope_names[k].name) == i - start &&
                memcmp(scope_names[k].name, text + start, i - start) == 0) {
                *scopes |= scope_names[k].bit;
                found = 1;
            }
        }
        if (!found) {
            *scopes = 0;
            return PHG_ERR_INVALID;
        }
    }
    return PHG_OK;
}

void phg_apikey_scopes_format(uint32_t scopes, char *buf, size_t len)
{
    size_t k, o = 0;
    assert(buf != NULL && len > 0);
    buf[0] = '\0';
    for (k = 0; k < sizeof scope_names / sizeof scope_names[0]; k++) {
        if (scopes & scope_names[k].bit) {
            int w = snprintf(buf + o, len - o, "%s%s", o ? " " : "", scope_names[k].name);
            if (w < 0 || (size_t)w >= len - o)
                return;
            o += (size_t)w;
        }
    }
}

const char *phg_role_name(phg_role role)
{
    return role == PHG_ROLE_ADMIN ? "admin" : "user";
}

phg_status phg_role_parse(const char *text, phg_role *role)
{
    return text != NULL && phg_internal_role_from_text(text, role) ? PHG_OK : PHG_ERR_INVALID;
}

/* ---- the index ------------------------------------------------------------------ */

/* One key in memory: 88 bytes, plus its strings in `extra`. */
typedef struct slot {
    int64_t index;
    uint8_t hash[32];
    int64_t expires_at, grace_until;
    _Atomic int64_t last_used; /* set by verify */
    int64_t last_flushed;      /* written to the store; shard write lock */
    uint32_t scopes;
    uint8_t role;
    char *extra;               /* "id\0user_id\0rate_limit\0", malloc'd */
} slot;

/*
 * A shard: a dense array of slots and an open-addressing table (linear
 * probing) of 1-based positions in it. The indirection keeps memory near
 * 150 bytes a key at a million keys: the table is 4 bytes a cell, so its
 * slack costs little, and the slots are packed.
 */
typedef struct shard {
    _Alignas(64) pthread_rwlock_t lock;
    slot *slots;
    size_t count, slots_cap;
    uint32_t *table;
    size_t cap; /* table cells, a power of two */
} shard;

typedef struct neg_entry {
    uint8_t hash[32];
    uint64_t generation;
    int64_t expires_ms;
    uint8_t reason;
} neg_entry;

typedef struct neg_stripe {
    _Alignas(64) pthread_mutex_t lock;
} neg_stripe;

struct phg_keys {
    phg_store *store;
    phg_keys_options opts;
    shard shards[SHARDS];
    /* negative cache: direct-mapped by index */
    neg_stripe neg_locks[NEG_STRIPES];
    neg_entry *neg;
    size_t neg_cap;
    _Atomic uint64_t generation; /* bumped by every change seen; voids the negative cache */
    _Atomic int64_t lookup_window_s;
    _Atomic int lookups_in_window;
    _Atomic uint64_t store_lookups, negative_hits;
    /* polling */
    pthread_mutex_t poll_lock; /* one refresh at a time */
    int64_t seen_version;
    phg_audit *audit; /* admin actions are recorded here when set */
    pthread_t poller;
    int poller_running;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;
    int stopping;
};

void phg_keys_options_init(phg_keys_options *o)
{
    assert(o != NULL);
    memset(o, 0, sizeof *o);
    o->poll_interval_ms = 250;
    o->negative_cache = 65536;
    o->negative_ttl_ms = 1000;
    o->touch_interval_ms = 10000;
    o->start_poller = 1;
}

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t index_of(const uint8_t hash[32])
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < 8; i++)
        v = v << 8 | hash[i];
    return (int64_t)v;
}

static shard *shard_of(phg_keys *k, int64_t index)
{
    return &k->shards[(uint64_t)index & (SHARDS - 1)];
}

static size_t home_of(size_t cap, int64_t index)
{
    uint64_t h = (uint64_t)index >> 6; /* the low 6 bits chose the shard */
    h ^= h >> 29;
    return (size_t)h & (cap - 1);
}

static const char *slot_id(const slot *sl)
{
    return sl->extra;
}

static const char *slot_user(const slot *sl)
{
    return sl->extra + strlen(sl->extra) + 1;
}

static const char *slot_limit(const slot *sl)
{
    const char *u = slot_user(sl);
    return u + strlen(u) + 1;
}

/* Table cell of the slot holding hash, or SIZE_MAX. Shard lock held. */
static size_t shard_cell(const shard *s, int64_t index, const uint8_t hash[32])
{
    size_t i;
    if (s->cap == 0)
        return SIZE_MAX;
    for (i = home_of(s->cap, index); s->table[i] != 0; i = (i + 1) & (s->cap - 1)) {
        const slot *sl = &s->slots[s->table[i] - 1];
        if (sl->index == index && phg_ct_equal(sl->hash, hash, 32))
            return i;
    }
    return SIZE_MAX;
}

static slot *shard_find(shard *s, int64_t index, const uint8_t hash[32])
{
    size_t cell = shard_cell(s, index, hash);
    return cell == SIZE_MAX ? NULL : &s->slots[s->table[cell] - 1];
}

static void table_put(uint32_t *table, size_t cap, int64_t index, uint32_t pos1)
{
    size_t i;
    for (i = home_of(cap, index); table[i] != 0; i = (i + 1) & (cap - 1))
        ;
    table[i] = pos1;
}

/* Room for one more slot. Shard write lock held. */
static phg_status shard_reserve(shard *s)
{
    if (s->count == s->slots_cap) {
        size_t ncap = s->slots_cap ? s->slots_cap + s->slots_cap / 2 : 8;
        slot *grown = realloc(s->slots, ncap * sizeof *grown);
        if (grown == NULL)
            return PHG_ERR_NOMEM;
        s->slots = grown;
        s->slots_cap = ncap;
    }
    if ((s->count + 1) * 4 > s->cap * 3) { /* keep the table at most 3/4 full */
        size_t ncap = s->cap ? s->cap * 2 : 16, i;
        uint32_t *table = calloc(ncap, sizeof *table);
        if (table == NULL)
            return PHG_ERR_NOMEM;
        for (i = 0; i < s->count; i++)
            table_put(table, ncap, s->slots[i].index, (uint32_t)(i + 1));
        free(s->table);
        s->table = table;
        s->cap = ncap;
    }
    return PHG_OK;
}

/* Remove the slot in table cell `cell`. Shard write lock held. */
static void shard_remove_cell(shard *s, size_t cell)
{
    size_t hole = cell, j = cell, pos = s->table[cell] - 1, last = s->count - 1;

    /* Backward-shift deletion in the table: no tombstones, chains stay whole. */
    s->table[hole] = 0;
    for (;;) {
        size_t home;
        j = (j + 1) & (s->cap - 1);
        if (s->table[j] == 0)
            break;
        home = home_of(s->cap, s->slots[s->table[j] - 1].index);
        if ((j > hole && (home <= hole || home > j)) || (j < hole && home <= hole && home > j)) {
            s->table[hole] = s->table[j];
            s->table[j] = 0;
            hole = j;
        }
    }
    /* Keep the slots dense: the last one moves into the freed position. */
    free(s->slots[pos].extra);
    if (pos != last) {
        size_t i;
        for (i = home_of(s->cap, s->slots[last].index); s->table[i] != last + 1;
             i = (i + 1) & (s->cap - 1))
            ;
        s->table[i] = (uint32_t)(pos + 1);
        memcpy(&s->slots[pos], &s->slots[last], sizeof(slot));
    }
    memset(&s->slots[last], 0, sizeof(slot));
    s->count--;
}

static void shard_remove(shard *s, int64_t index, const uint8_t hash[32])
{
    size_t cell = shard_cell(s, index, hash);
    if (cell != SIZE_MAX)
        shard_remove_cell(s, cell);
}

/* Insert or update from a stored record; revoked keys leave the index. */
static phg_status index_apply(phg_keys *k, const phg_apikey_record *r)
{
    shard *s = shard_of(k, r->index);
    slot *sl;
    phg_status rc = PHG_OK;
    size_t ilen = strnlen(r->id, sizeof r->id), ulen = strnlen(r->user_id, sizeof r->user_id);
    size_t llen = strnlen(r->rate_limit, sizeof r->rate_limit);
    char *extra;

    if (ilen == sizeof r->id || ulen == sizeof r->user_id || llen == sizeof r->rate_limit)
        return PHG_ERR_INVALID; /* not NUL-terminated */

    pthread_rwlock_wrlock(&s->lock);
    if (r->revoked_at != 0) {
        shard_remove(s, r->index, r->hash);
        goto out;
    }
    extra = malloc(ilen + ulen + llen + 3);
    if (extra == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    memcpy(extra, r->id, ilen + 1);
    memcpy(extra + ilen + 1, r->user_id, ulen + 1);
    memcpy(extra + ilen + ulen + 2, r->rate_limit, llen + 1);
    sl = shard_find(s, r->index, r->hash);
    if (sl == NULL) {
        rc = shard_reserve(s);
        if (rc != PHG_OK) {
            free(extra);
            goto out;
        }
        sl = &s->slots[s->count];
        memset(sl, 0, sizeof *sl);
        sl->index = r->index;
        memcpy(sl->hash, r->hash, 32);
        atomic_store(&sl->last_used, r->last_used_at);
        sl->last_flushed = r->last_used_at;
        s->count++;
        table_put(s->table, s->cap, r->index, (uint32_t)s->count);
    } else {
        free(sl->extra);
    }
    sl->extra = extra;
    sl->expires_at = r->expires_at;
    sl->grace_until = r->grace_until;
    sl->scopes = r->scopes;
    sl->role = (uint8_t)r->role;
out:
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* ---- negative cache ----------------------------------------------------------------- */

static int neg_lookup(phg_keys *k, const uint8_t hash[32], int64_t index,
                      phg_apikey_reason *reason)
{
    size_t i;
    neg_entry *e;
    int hit = 0;
    if (k->neg_cap == 0)
        return 0;
    i = (size_t)((uint64_t)index % k->neg_cap);
    e = &k->neg[i];
    pthread_mutex_lock(&k->neg_locks[i % NEG_STRIPES].lock);
    if (e->expires_ms > now_ms() && e->generation == atomic_load(&k->generation) &&
        phg_ct_equal(e->hash, hash, 32)) {
        *reason = (phg_apikey_reason)e->reason;
        hit = 1;
    }
    pthread_mutex_unlock(&k->neg_locks[i % NEG_STRIPES].lock);
    return hit;
}

static void neg_remember(phg_keys *k, const uint8_t hash[32], int64_t index,
                         phg_apikey_reason reason, uint64_t generation)
{
    size_t i;
    neg_entry *e;
    if (k->neg_cap == 0)
        return;
    i = (size_t)((uint64_t)index % k->neg_cap);
    e = &k->neg[i];
    pthread_mutex_lock(&k->neg_locks[i % NEG_STRIPES].lock);
    memcpy(e->hash, hash, 32);
    e->generation = generation;
    e->expires_ms = now_ms() + k->opts.negative_ttl_ms;
    e->reason = (uint8_t)reason;
    pthread_mutex_unlock(&k->neg_locks[i % NEG_STRIPES].lock);
}

/* At most LOOKUPS_PER_SECOND store lookups for unknown keys, process-wide. */
static int lookup_budget_take(phg_keys *k)
{
    int64_t sec = now_s();
    int64_t window = atomic_load(&k->lookup_window_s);
    if (window != sec && atomic_compare_exchange_strong(&k->lookup_window_s, &window, sec))
        atomic_store(&k->lookups_in_window, 0);
    return atomic_fetch_add(&k->lookups_in_window, 1) < LOOKUPS_PER_SECOND;
}

/* ---- refresh and the poller ---------------------------------------------------------- */

typedef struct apply_ctx {
    phg_keys *k;
    int64_t max_version;
} apply_ctx;

static phg_status apply_cb(void *arg, const phg_apikey_record *rec)
{
    apply_ctx *a = arg;
    if (rec->version > a->max_version)
        a->max_version = rec->version;
    return index_apply(a->k, rec);
}

phg_status phg_keys_refresh(phg_keys *k)
{
    int64_t counter = 0;
    apply_ctx a;
    phg_status rc;

    assert(k != NULL);
    pthread_mutex_lock(&k->poll_lock);
    rc = phg_internal_store_change_counter(k->store, &counter);
    if (rc != PHG_OK || counter <= k->seen_version)
        goto out;
    a.k = k;
    a.max_version = k->seen_version;
    rc = phg_internal_store_keys_since(k->store, k->seen_version, apply_cb, &a);
    if (rc != PHG_OK)
        goto out;
    k->seen_version = a.max_version > counter ? a.max_version : counter;
    atomic_fetch_add(&k->generation, 1);
out:
    pthread_mutex_unlock(&k->poll_lock);
    return rc;
}

phg_status phg_keys_flush(phg_keys *k)
{
    const char **ids = NULL;
    int64_t *ts = NULL;
    char (*idbuf)[PHG_APIKEY_ID_MAX + 1] = NULL;
    size_t n = 0, i, j;
    phg_status rc = PHG_OK;

    assert(k != NULL);
    ids = malloc(TOUCH_BATCH * sizeof *ids);
    ts = malloc(TOUCH_BATCH * sizeof *ts);
    idbuf = malloc(TOUCH_BATCH * sizeof *idbuf);
    if (ids == NULL || ts == NULL || idbuf == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    for (i = 0; i < SHARDS && rc == PHG_OK; i++) {
        shard *s = &k->shards[i];
        pthread_rwlock_wrlock(&s->lock);
        for (j = 0; j < s->count; j++) {
            slot *sl = &s->slots[j];
            int64_t used = atomic_load(&sl->last_used);
            if (used <= sl->last_flushed)
                continue;
            snprintf(idbuf[n], sizeof idbuf[n], "%s", slot_id(sl));
            ids[n] = idbuf[n];
            ts[n] = used;
            sl->last_flushed = used;
            if (++n == TOUCH_BATCH) {
                pthread_rwlock_unlock(&s->lock);
                rc = phg_internal_store_key_touch(k->store, ids, ts, n);
                n = 0;
                pthread_rwlock_wrlock(&s->lock);
                if (rc != PHG_OK)
                    break;
            }
        }
        pthread_rwlock_unlock(&s->lock);
    }
    if (rc == PHG_OK && n > 0)
        rc = phg_internal_store_key_touch(k->store, ids, ts, n);
out:
    free(ids);
    free(ts);
    free(idbuf);
    return rc;
}

static void *poller_main(void *arg)
{
    phg_keys *k = arg;
    int64_t last_flush = now_ms();
    pthread_mutex_lock(&k->stop_lock);
    while (!k->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)k->opts.poll_interval_ms * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&k->stop_cond, &k->stop_lock, &until);
        if (k->stopping)
            break;
        pthread_mutex_unlock(&k->stop_lock);
        /* A failure (store down) is retried at the next tick; the index keeps
         * serving what it knows. */
        (void)phg_keys_refresh(k);
        if (now_ms() - last_flush >= k->opts.touch_interval_ms) {
            (void)phg_keys_flush(k);
            last_flush = now_ms();
        }
        pthread_mutex_lock(&k->stop_lock);
    }
    pthread_mutex_unlock(&k->stop_lock);
    return NULL;
}

phg_status phg_keys_open(phg_store *store, const phg_keys_options *opts, phg_keys **out)
{
    phg_keys_options defaults;
    phg_keys *k;
    phg_status rc;
    size_t i;

    assert(store != NULL && out != NULL);
    *out = NULL;
    if (opts == NULL) {
        phg_keys_options_init(&defaults);
        opts = &defaults;
    }
    if (opts->poll_interval_ms < 10 || opts->negative_ttl_ms < 0 || opts->touch_interval_ms < 10)
        return PHG_ERR_INVALID;
    k = aligned_alloc(64, (sizeof *k + 63) / 64 * 64);
    if (k == NULL)
        return PHG_ERR_NOMEM;
    memset(k, 0, sizeof *k);
    k->store = store;
    k->opts = *opts;
    for (i = 0; i < SHARDS; i++)
        pthread_rwlock_init(&k->shards[i].lock, NULL);
    for (i = 0; i < NEG_STRIPES; i++)
        pthread_mutex_init(&k->neg_locks[i].lock, NULL);
    pthread_mutex_init(&k->poll_lock, NULL);
    pthread_mutex_init(&k->stop_lock, NULL);
    pthread_cond_init(&k->stop_cond, NULL);
    k->neg_cap = opts->negative_cache;
    if (k->neg_cap > 0) {
        k->neg = calloc(k->neg_cap, sizeof *k->neg);
        if (k->neg == NULL) {
            phg_keys_close(k);
            return PHG_ERR_NOMEM;
        }
    }
    rc = phg_keys_refresh(k);
    if (rc != PHG_OK) {
        phg_keys_close(k);
        return rc;
    }
    if (opts->start_poller) {
        if (pthread_create(&k->poller, NULL, poller_main, k) != 0) {
            phg_keys_close(k);
            return PHG_ERR_INTERNAL;
        }
        k->poller_running = 1;
    }
    *out = k;
    return PHG_OK;
}

void phg_keys_close(phg_keys *k)
{
    size_t i, j;
    if (k == NULL)
        return;
    if (k->poller_running) {
        pthread_mutex_lock(&k->stop_lock);
        k->stopping = 1;
        pthread_cond_signal(&k->stop_cond);
        pthread_mutex_unlock(&k->stop_lock);
        pthread_join(k->poller, NULL);
    }
    (void)phg_keys_flush(k); /* best effort: last-used is advisory */
    for (i = 0; i < SHARDS; i++) {
        shard *s = &k->shards[i];
        for (j = 0; j < s->count; j++)
            free(s->slots[j].extra);
        free(s->slots);
        free(s->table);
        pthread_rwlock_destroy(&s->lock);
    }
    for (i = 0; i < NEG_STRIPES; i++)
        pthread_mutex_destroy(&k->neg_locks[i].lock);
    free(k->neg);
    pthread_mutex_destroy(&k->poll_lock);
    pthread_mutex_destroy(&k->stop_lock);
    pthread_cond_destroy(&k->stop_cond);
    free(k);
}

/* ---- verify ---------------------------------------------------------------------------- */

static _Thread_local EVP_MD_CTX *sha_ctx;
static EVP_MD *sha256_md;
static pthread_key_t sha_ctx_key; /* frees a thread's context when it exits */
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void sha_ctx_free(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void sha_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (pthread_key_create(&sha_ctx_key, sha_ctx_free) != 0) {
        EVP_MD_free(sha256_md);
        sha256_md = NULL;
    }
}

/* SHA-256 through a per-thread context: EVP_Digest would allocate and free
 * one per call, a third of the verify time. */
static phg_status hash_key(const char *key, size_t len, uint8_t out[32])
{
    unsigned int n = 0;
    pthread_once(&sha_once, sha_fetch);
    if (sha256_md == NULL)
        return PHG_ERR_INTERNAL;
    if (sha_ctx == NULL) {
        sha_ctx = EVP_MD_CTX_new();
        if (sha_ctx == NULL)
            return PHG_ERR_NOMEM;
        pthread_setspecific(sha_ctx_key, sha_ctx);
    }
    if (EVP_DigestInit_ex2(sha_ctx, sha256_md, NULL) != 1 ||
        EVP_DigestUpdate(sha_ctx, key, len) != 1 || EVP_DigestFinal_ex(sha_ctx, out, &n) != 1)
        return PHG_ERR_INTERNAL;
    return PHG_OK;
}

/* Check times and fill the identity. */
static phg_apikey_reason judge(const slot *sl, int64_t now, phg_identity *id)
{
    if (sl->expires_at != 0 && now >= sl->expires_at)
        return PHG_APIKEY_EXPIRED;
    if (sl->grace_until != 0 && now >= sl->grace_until)
        return PHG_APIKEY_EXPIRED;
    if (id != NULL) {
        /* the strings were bounded when they entered the index */
        const char *p = sl->extra;
        size_t n = strlen(p);
        memcpy(id->key_id, p, n + 1);
        p += n + 1;
        n = strlen(p);
        memcpy(id->user_id, p, n + 1);
        p += n + 1;
        n = strlen(p);
        memcpy(id->rate_limit, p, n + 1);
        id->role = (phg_role)sl->role;
        id->scopes = sl->scopes;
    }
    return PHG_APIKEY_VALID;
}

/* Look the hash up in the index: 1 and *reason if found, 0 if not. */
static int verify_indexed(phg_keys *k, const uint8_t hash[32], int64_t index, phg_identity *id,
                          phg_apikey_reason *reason)
{
    shard *s = shard_of(k, index);
    slot *sl;
    int found = 0;
    pthread_rwlock_rdlock(&s->lock);
    sl = shard_find(s, index, hash);
    if (sl != NULL) {
        int64_t now = now_s();
        found = 1;
        *reason = judge(sl, now, id);
        if (*reason == PHG_APIKEY_VALID && atomic_load_explicit(&sl->last_used,
                                                                memory_order_relaxed) != now)
            atomic_store_explicit(&sl->last_used, now, memory_order_relaxed);
    }
    pthread_rwlock_unlock(&s->lock);
    return found;
}

/* A key the index does not know: the store may (created elsewhere a moment ago). */
static phg_status verify_miss(phg_keys *k, const uint8_t hash[32], int64_t index,
                              phg_identity *id, phg_apikey_reason *reason)
{
    phg_apikey_record *recs = NULL;
    size_t n = 0, i;
    uint64_t gen = atomic_load(&k->generation);
    phg_status rc;

    if (neg_lookup(k, hash, index, reason)) {
        atomic_fetch_add(&k->negative_hits, 1);
        return PHG_ERR_AUTH;
    }
    *reason = PHG_APIKEY_UNKNOWN;
    if (!lookup_budget_take(k))
        return PHG_ERR_AUTH; /* the store is protected; the poller will bring new keys */
    atomic_fetch_add(&k->store_lookups, 1);
    /* Under the poller's lock: a revocation the poller applies between our
     * read and our insert would otherwise be undone by a stale record, for
     * good (no later change of that key would ever arrive). */
    pthread_mutex_lock(&k->poll_lock);
    rc = phg_internal_store_key_by_index(k->store, index, &recs, &n);
    if (rc != PHG_OK) {
        pthread_mutex_unlock(&k->poll_lock);
        return rc; /* the caller fails closed */
    }
    for (i = 0; i < n; i++) {
        if (!phg_ct_equal(recs[i].hash, hash, 32))
            continue;
        if (recs[i].revoked_at != 0) {
            *reason = PHG_APIKEY_REVOKED;
            break;
        }
        rc = index_apply(k, &recs[i]);
        pthread_mutex_unlock(&k->poll_lock);
        free(recs);
        if (rc != PHG_OK)
            return rc;
        if (!verify_indexed(k, hash, index, id, reason))
            *reason = PHG_APIKEY_UNKNOWN;
        return *reason == PHG_APIKEY_VALID ? PHG_OK : PHG_ERR_AUTH;
    }
    pthread_mutex_unlock(&k->poll_lock);
    free(recs);
    neg_remember(k, hash, index, *reason, gen);
    return PHG_ERR_AUTH;
}

phg_status phg_keys_verify(phg_keys *k, const char *key, size_t len, phg_identity *id,
                           phg_apikey_reason *reason)
{
    uint8_t hash[32];
    int64_t index;
    phg_status rc;

    assert(k != NULL && reason != NULL);
    *reason = phg_apikey_check_format(key, len);
    if (*reason != PHG_APIKEY_VALID)
        return PHG_ERR_AUTH;
    rc = hash_key(key, len, hash);
    if (rc != PHG_OK)
        return rc;
    index = index_of(hash);
    if (verify_indexed(k, hash, index, id, reason))
        rc = *reason == PHG_APIKEY_VALID ? PHG_OK : PHG_ERR_AUTH;
    else
        rc = verify_miss(k, hash, index, id, reason);
    phg_wipe(hash, sizeof hash);
    return rc;
}

phg_status phg_keys_verify_cached(phg_keys *k, const char *key, size_t len, phg_identity *id,
                                  phg_apikey_reason *reason, int *need_store)
{
    uint8_t hash[32];
    int64_t index;
    phg_status rc;

    assert(k != NULL && reason != NULL && need_store != NULL);
    *need_store = 0;
    *reason = phg_apikey_check_format(key, len);
    if (*reason != PHG_APIKEY_VALID)
        return PHG_ERR_AUTH;
    rc = hash_key(key, len, hash);
    if (rc != PHG_OK)
        return rc;
    index = index_of(hash);
    if (verify_indexed(k, hash, index, id, reason)) {
        rc = *reason == PHG_APIKEY_VALID ? PHG_OK : PHG_ERR_AUTH;
    } else if (neg_lookup(k, hash, index, reason)) {
        atomic_fetch_add(&k->negative_hits, 1);
        rc = PHG_ERR_AUTH;
    } else {
        *reason = PHG_APIKEY_UNKNOWN;
        *need_store = 1;
        rc = PHG_ERR_AUTH;
    }
    phg_wipe(hash, sizeof hash);
    return rc;
}

/* ---- changes ------------------------------------------------------------------------- */

static int text_ok(const char *s, size_t min, size_t max)
{
    return phg_internal_text_ok(s, min, max);
}

/*
 * A key's own rate limit: NULL or "" (none: the role's default applies), or
 * a policy of phigate/ratelimit.h, checked by phg_rl_policy_parse (so that a
 * limit is refused here for the same reasons as in the configuration) and
 * kept in its canonical text, which the gateway parses again on every
 * change. Printable text only, whatever the parser would skip.
 */
static phg_status limit_canonical(const char *text, char out[PHG_APIKEY_LIMIT_MAX + 1], char *err,
                                  size_t err_len)
{
    char why[160];
    phg_rl_policy policy;

    out[0] = '\0';
    if (text == NULL || text[0] == '\0')
        return PHG_OK;
    if (!text_ok(text, 1, PHG_APIKEY_LIMIT_MAX)) {
        if (err != NULL && err_len > 0)
            snprintf(err, err_len,
                     "rate limit: must be at most %d printable characters, like "
                     "100/1m,5000/1h",
                     PHG_APIKEY_LIMIT_MAX);
        return PHG_ERR_INVALID;
    }
    why[0] = '\0';
    if (phg_rl_policy_parse(text, &policy, why, sizeof why) != PHG_OK) {
        /* The parser's reasons name the rate limit already ("rate limit: a
         * window of 0", "rate limit, item 2: ..."). */
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "%s%s",
                     strncmp(why, "rate limit", 10) == 0 ? "" : "rate limit: ",
                     why[0] ? why : "must look like 100/1m,5000/1h");
        return PHG_ERR_INVALID;
    }
    phg_rl_policy_format(&policy, out, PHG_APIKEY_LIMIT_MAX + 1);
    if (out[0] == '\0') { /* cannot happen: a policy always has a text */
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "rate limit: cannot be stored");
        return PHG_ERR_INTERNAL;
    }
    return PHG_OK;
}

static phg_status new_id(char id[PHG_APIKEY_ID_MAX + 1])
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    uint8_t rnd[48];
    size_t used, filled = 0;
    if (phg_random_bytes(rnd, sizeof rnd) != PHG_OK)
        return PHG_ERR_INTERNAL;
    memcpy(id, ID_PREFIX, 3);
    for (used = 0; used < sizeof rnd && filled < ID_RANDOM_LEN; used++) {
        if (rnd[used] < 252)
            id[3 + filled++] = alphabet[rnd[used] % 36];
    }
    if (filled < ID_RANDOM_LEN)
        return PHG_ERR_INTERNAL;
    id[3 + ID_RANDOM_LEN] = '\0';
    return PHG_OK;
}

/* A fresh key and its record (not stored yet). */
static phg_status mint(phg_apikey_record *rec, char key[PHG_APIKEY_LEN + 1])
{
    phg_status rc = phg_apikey_generate(key);
    if (rc == PHG_OK)
        rc = new_id(rec->id);
    if (rc == PHG_OK)
        rc = hash_key(key, PHG_APIKEY_LEN, rec->hash);
    if (rc != PHG_OK) {
        phg_wipe(key, PHG_APIKEY_LEN + 1);
        return rc;
    }
    rec->index = index_of(rec->hash);
    rec->created_at = now_s();
    return PHG_OK;
}

static void set_err(char *err, size_t len, const char *msg)
{
    if (err != NULL && len > 0)
        snprintf(err, len, "%s", msg);
}

void phg_keys_set_audit(phg_keys *k, phg_audit *audit)
{
    assert(k != NULL);
    k->audit = audit;
}

/*
 * The record of an admin action (when an audit log is set). `st` is the
 * action's own result; returns it, or PHG_ERR_UNAUDITED when the action
 * succeeded and its record failed.
 */
static phg_status record_details(phg_keys *k, const char *action, const char *shown, phg_status st,
                                 json_t *details)
{
    char resource[PHG_APIKEY_ID_MAX + 8];
    phg_audit_event ev;
    char *text;
    phg_status rc;

    snprintf(resource, sizeof resource, "key:%s", shown);
    text = details != NULL ? json_dumps(details, JSON_COMPACT) : NULL;
    json_decref(details);
    memset(&ev, 0, sizeof ev);
    ev.action = action;
    ev.resource = resource;
    ev.outcome = st == PHG_OK ? "success" : "error";
    ev.details_json = text;
    rc = text != NULL ? phg_audit_append(k->audit, &ev, NULL) : PHG_ERR_NOMEM;
    free(text);
    if (st == PHG_OK && rc != PHG_OK)
        return PHG_ERR_UNAUDITED;
    return st;
}

static phg_status record_action(phg_keys *k, const char *action, const char *id, phg_status st,
                                const phg_apikey_record *rec)
{
    char scopes[128];
    const char *shown = text_ok(id, 1, PHG_APIKEY_ID_MAX) ? id : "(invalid id)";
    json_t *details;

    if (k->audit == NULL)
        return st;
    if (st == PHG_OK && rec != NULL) {
        phg_apikey_scopes_format(rec->scopes, scopes, sizeof scopes);
        details = json_pack("{s:s,s:s,s:s,s:s}", "key_id", rec->id, "role",
                            phg_role_name(rec->role), "user_id", rec->user_id, "scopes", scopes);
    } else if (st == PHG_OK) {
        details = json_pack("{s:s}", "key_id", shown);
    } else {
        details = json_pack("{s:s,s:s}", "key_id", shown, "error", phg_status_name(st));
    }
    return record_details(k, action, shown, st, details);
}

phg_status phg_keys_create(phg_keys *k, const phg_apikey_spec *spec, char key[PHG_APIKEY_LEN + 1],
                           phg_apikey_record *out, char *err, size_t err_len)
{
    phg_apikey_record rec;
    phg_status rc;
    int attempt;

    assert(k != NULL && spec != NULL && key != NULL);
    memset(&rec, 0, sizeof rec);
    if (spec->role != PHG_ROLE_USER && spec->role != PHG_ROLE_ADMIN) {
        set_err(err, err_len, "unknown role");
        return PHG_ERR_INVALID;
    }
    if (spec->scopes & ~PHG_SCOPE_ALL) {
        set_err(err, err_len, "unknown scope");
        return PHG_ERR_INVALID;
    }
    if (!text_ok(spec->user_id, 1, PHG_APIKEY_USER_MAX)) {
        set_err(err, err_len, "user id must be 1 to 128 printable characters");
        return PHG_ERR_INVALID;
    }
    if (!text_ok(spec->description, 0, PHG_APIKEY_DESC_MAX)) {
        set_err(err, err_len, "description must be at most 256 printable characters");
        return PHG_ERR_INVALID;
    }
    if (!text_ok(spec->created_by, 1, PHG_APIKEY_ACTOR_MAX)) {
        set_err(err, err_len, "created_by must be 1 to 128 printable characters");
        return PHG_ERR_INVALID;
    }
    rc = limit_canonical(spec->rate_limit, rec.rate_limit, err, err_len);
    if (rc != PHG_OK)
        return rc;
    if (spec->expires_at != 0 && spec->expires_at <= now_s()) {
        set_err(err, err_len, "expiry time is in the past");
        return PHG_ERR_INVALID;
    }
    rec.role = spec->role;
    rec.scopes = spec->scopes;
    snprintf(rec.user_id, sizeof rec.user_id, "%s", spec->user_id);
    snprintf(rec.description, sizeof rec.description, "%s", spec->description ? spec->description : "");
    snprintf(rec.created_by, sizeof rec.created_by, "%s", spec->created_by);
    rec.expires_at = spec->expires_at;
    for (attempt = 0; attempt < 3; attempt++) { /* an id collision is astronomically rare */
        rc = mint(&rec, key);
        if (rc != PHG_OK)
            return rc;
        rc = phg_internal_store_key_insert(k->store, &rec);
        if (rc != PHG_ERR_EXISTS)
            break;
        phg_wipe(key, PHG_APIKEY_LEN + 1);
    }
    if (rc != PHG_OK) {
        phg_wipe(key, PHG_APIKEY_LEN + 1);
        set_err(err, err_len, rc == PHG_ERR_UNAVAILABLE ? "the store is unavailable"
                                                        : "the store refused the key");
        return record_action(k, "keys.create", "-", rc, NULL);
    }
    /* Seen here at once; other processes see it at their next poll. */
    (void)index_apply(k, &rec);
    atomic_fetch_add(&k->generation, 1);
    if (out != NULL)
        *out = rec;
    rc = record_action(k, "keys.create", rec.id, PHG_OK, &rec);
    if (rc == PHG_ERR_UNAUDITED)
        set_err(err, err_len, "the key was created but its audit record could not be written");
    return rc;
}

phg_status phg_keys_revoke(phg_keys *k, const char *id)
{
    phg_apikey_record rec;
    phg_status rc;
    assert(k != NULL && id != NULL);
    if (!text_ok(id, 1, PHG_APIKEY_ID_MAX))
        return record_action(k, "keys.revoke", id, PHG_ERR_NOT_FOUND, NULL);
    rc = phg_internal_store_key_revoke(k->store, id, now_s());
    if (rc != PHG_OK)
        return record_action(k, "keys.revoke", id, rc, NULL);
    rc = phg_internal_store_key_get(k->store, id, &rec);
    if (rc == PHG_OK) {
        shard *s = shard_of(k, rec.index);
        pthread_rwlock_wrlock(&s->lock);
        shard_remove(s, rec.index, rec.hash);
        pthread_rwlock_unlock(&s->lock);
        atomic_fetch_add(&k->generation, 1);
    }
    return record_action(k, "keys.revoke", id, PHG_OK, NULL);
}

/*
 * The record of a limit change: the limits before and after ("" when the key
 * has none of its own), or the refused text's fate without the text itself
 * when it was invalid (it is the caller's input, possibly anything).
 */
static phg_status record_limit(phg_keys *k, const char *id, phg_status st, const char *old_limit,
                               const char *new_limit)
{
    const char *shown = text_ok(id, 1, PHG_APIKEY_ID_MAX) ? id : "(invalid id)";
    json_t *details;

    if (k->audit == NULL)
        return st;
    if (st == PHG_OK)
        details = json_pack("{s:s,s:s,s:s}", "key_id", shown, "old_rate_limit", old_limit,
                            "new_rate_limit", new_limit);
    else
        details = json_pack("{s:s,s:s}", "key_id", shown, "error", phg_status_name(st));
    return record_details(k, "keys.set_limit", shown, st, details);
}

phg_status phg_keys_set_limit(phg_keys *k, const char *id, const char *rate_limit,
                              phg_apikey_record *out, char *err, size_t err_len)
{
    char canonical[PHG_APIKEY_LIMIT_MAX + 1], old_limit[PHG_APIKEY_LIMIT_MAX + 1];
    phg_apikey_record rec;
    phg_status rc;

    assert(k != NULL && id != NULL);
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (!text_ok(id, 1, PHG_APIKEY_ID_MAX)) {
        set_err(err, err_len, "no key with that id");
        return record_limit(k, id, PHG_ERR_NOT_FOUND, NULL, NULL);
    }
    rc = limit_canonical(rate_limit, canonical, err, err_len);
    if (rc != PHG_OK)
        return record_limit(k, id, rc, NULL, NULL);
    rc = phg_internal_store_key_set_limit(k->store, id, canonical, old_limit, &rec);
    if (rc != PHG_OK) {
        set_err(err, err_len,
                rc == PHG_ERR_NOT_FOUND     ? "no key with that id"
                : rc == PHG_ERR_STATE       ? "the key is revoked"
                : rc == PHG_ERR_UNAVAILABLE ? "the store is unavailable"
                                            : "the store refused the change");
        return record_limit(k, id, rc, NULL, NULL);
    }
    /* Seen here at once; other instances reload the row at their next poll
     * (its version moved). */
    (void)index_apply(k, &rec);
    atomic_fetch_add(&k->generation, 1);
    if (out != NULL)
        *out = rec;
    rc = record_limit(k, id, PHG_OK, old_limit, canonical);
    if (rc == PHG_ERR_UNAUDITED)
        set_err(err, err_len, "the limit was changed but its audit record could not be written");
    return rc;
}

phg_status phg_keys_rotate(phg_keys *k, const char *id, int64_t grace_s,
                           char key[PHG_APIKEY_LEN + 1], phg_apikey_record *out)
{
    phg_apikey_record old, fresh;
    phg_status rc;
    int64_t grace_until;

    assert(k != NULL && id != NULL && key != NULL);
    if (grace_s < 0 || grace_s > 366LL * 86400)
        return PHG_ERR_INVALID;
    if (!text_ok(id, 1, PHG_APIKEY_ID_MAX))
        return record_action(k, "keys.rotate", id, PHG_ERR_NOT_FOUND, NULL);
    rc = phg_internal_store_key_get(k->store, id, &old);
    if (rc != PHG_OK)
        return record_action(k, "keys.rotate", id, rc, NULL);
    if (old.revoked_at != 0 || old.replaced_by[0] != '\0')
        return record_action(k, "keys.rotate", id, PHG_ERR_STATE, NULL);
    fresh = old;
    memset(fresh.hash, 0, sizeof fresh.hash);
    fresh.replaced_by[0] = '\0';
    fresh.grace_until = 0;
    fresh.last_used_at = 0;
    fresh.revoked_at = 0;
    rc = mint(&fresh, key);
    if (rc != PHG_OK)
        return rc;
    grace_until = now_s() + grace_s;
    rc = phg_internal_store_key_rotate(k->store, id, grace_until, &fresh);
    if (rc != PHG_OK) {
        phg_wipe(key, PHG_APIKEY_LEN + 1);
        return record_action(k, "keys.rotate", id, rc, NULL);
    }
    old.grace_until = grace_until;
    snprintf(old.replaced_by, sizeof old.replaced_by, "%s", fresh.id);
    (void)index_apply(k, &old);
    (void)index_apply(k, &fresh);
    atomic_fetch_add(&k->generation, 1);
    if (out != NULL)
        *out = fresh;
    /* The record names the rotated key; its details the new one. */
    return record_action(k, "keys.rotate", id, PHG_OK, &fresh);
}

phg_status phg_keys_get(phg_keys *k, const char *id, phg_apikey_record *rec)
{
    assert(k != NULL && id != NULL && rec != NULL);
    if (!text_ok(id, 1, PHG_APIKEY_ID_MAX))
        return PHG_ERR_NOT_FOUND;
    return phg_internal_store_key_get(k->store, id, rec);
}

phg_status phg_keys_list(phg_keys *k, const char *after_id, size_t limit, phg_apikey_record **out,
                         size_t *n)
{
    assert(k != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    if (after_id != NULL && !text_ok(after_id, 0, PHG_APIKEY_ID_MAX))
        return PHG_ERR_INVALID;
    return phg_internal_store_key_list(k->store, after_id ? after_id : "", limit, out, n);
}

void phg_keys_get_stats(phg_keys *k, phg_keys_stats *st)
{
    size_t i, j;
    assert(k != NULL && st != NULL);
    memset(st, 0, sizeof *st);
    st->index_bytes = sizeof *k + k->neg_cap * sizeof(neg_entry);
    for (i = 0; i < SHARDS; i++) {
        shard *s = &k->shards[i];
        pthread_rwlock_rdlock(&s->lock);
        st->indexed += s->count;
        st->index_bytes += s->slots_cap * sizeof(slot) + s->cap * sizeof(uint32_t);
        for (j = 0; j < s->count; j++) {
            /* glibc malloc: 8-byte header, 16-byte granules, 32 at least */
            size_t len = strlen(slot_limit(&s->slots[j])) + 1 +
                         (size_t)(slot_limit(&s->slots[j]) - s->slots[j].extra);
            size_t chunk = (len + 8 + 15) / 16 * 16;
            st->index_bytes += chunk < 32 ? 32 : chunk;
        }
        pthread_rwlock_unlock(&s->lock);
    }
    st->store_lookups = atomic_load(&k->store_lookups);
    st->negative_hits = atomic_load(&k->negative_hits);
}

phg_status phg_internal_keys_index_add(phg_keys *k, const phg_apikey_record *rec)
{
    return index_apply(k, rec);
}

phg_status phg_internal_apikey_hash(const char *key, size_t len, uint8_t out[32])
{
    return hash_key(key, len, out);
}
