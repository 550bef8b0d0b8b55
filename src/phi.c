/*
 * phi.c: PHI field encryption (format v1) and the cache of derived field keys.
 *
 * A field key is HKDF-SHA256(DEK, info = "phigate/phi/v1" 0x00 context) and is
 * used for AES-256-GCM with a random 96-bit nonce and AAD "phi1.<kid>". The
 * format is in docs/formats.md; this file must keep producing and accepting
 * exactly those bytes.
 *
 * Why a cache: HKDF (two HMACs through the provider layer) and the AES key
 * schedule cost several microseconds, the encryption of a short field well
 * under one. Entries keep an EVP_CIPHER_CTX that already holds the key
 * schedule; an operation only sets a new nonce. The cache is split in shards,
 * each with its own lock, LRU list and bound. An entry in use is pinned by a
 * reference count, so eviction never frees a context under another thread;
 * the entry's own mutex serialises use of its context (EVP contexts are not
 * thread-safe). EVP_CIPHER_CTX_free cleanses the key schedule of evicted keys.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "crypto_internal.h"
#include "phi_internal.h"
#include "phigate/phi.h"

static const char HKDF_INFO_PREFIX[] = "phigate/phi/v1"; /* then 0x00, then context */
#define HKDF_INFO_PREFIX_LEN (sizeof HKDF_INFO_PREFIX - 1)
#define PHI_PREFIX "phi1."
#define PHI_PREFIX_LEN 5
#define RAW_OVERHEAD (PHG_PHI_NONCE_SIZE + PHG_PHI_TAG_SIZE)
#define STACK_RAW 2048 /* raw ciphertexts up to this size avoid malloc */

/* ---- derived field keys ---------------------------------------------------- */

/* A new GCM context holding the field key of (dek, context). */
static phg_status field_ctx_new(const uint8_t dek[PHG_PHI_DEK_SIZE], const char *context,
                                size_t context_len, EVP_CIPHER_CTX **out)
{
    uint8_t info[HKDF_INFO_PREFIX_LEN + 1 + PHG_PHI_CONTEXT_MAX];
    uint8_t key[32];
    const EVP_CIPHER *cipher = phg_internal_aes256gcm();
    EVP_CIPHER_CTX *ctx = NULL;
    phg_status rc;

    assert(context_len >= PHG_PHI_CONTEXT_MIN && context_len <= PHG_PHI_CONTEXT_MAX);
    *out = NULL;
    if (cipher == NULL)
        return PHG_ERR_INTERNAL;
    memcpy(info, HKDF_INFO_PREFIX, HKDF_INFO_PREFIX_LEN);
    info[HKDF_INFO_PREFIX_LEN] = 0x00;
    memcpy(info + HKDF_INFO_PREFIX_LEN + 1, context, context_len);
    rc = phg_hkdf_sha256(dek, PHG_PHI_DEK_SIZE, NULL, 0, info,
                         HKDF_INFO_PREFIX_LEN + 1 + context_len, key, sizeof key);
    if (rc != PHG_OK)
        goto out;
    rc = PHG_ERR_NOMEM;
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        goto out;
    rc = PHG_ERR_INTERNAL;
    if (EVP_CipherInit_ex(ctx, cipher, NULL, key, NULL, 1) != 1)
        goto out;
    *out = ctx;
    ctx = NULL;
    rc = PHG_OK;
out:
    phg_wipe(key, sizeof key);
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* LRU links; the first member of an entry, so a link is its entry. */
typedef struct lru_link {
    struct lru_link *prev, *next;
} lru_link;

typedef struct fk_entry {
    lru_link lru; /* must stay first */
    struct fk_entry *bucket_next;
    uint64_t hash;
    uint32_t refs; /* shard lock */
    int linked;    /* in the table; shard lock */
    pthread_mutex_t use;
    EVP_CIPHER_CTX *ctx;
    size_t kid_len, context_len;
    char name[]; /* kid then context, not NUL-terminated */
} fk_entry;

typedef struct fk_shard {
    _Alignas(64) pthread_mutex_t lock; /* own cache line: no false sharing between shards */
    fk_entry **buckets;
    size_t nbuckets; /* power of two */
    lru_link lru;    /* sentinel: lru.next is the most recently used */
    size_t count, capacity;
    uint64_t hits, misses, evictions;
} fk_shard;

struct field_key_cache {
    size_t nshards; /* power of two */
    uint64_t seed;
    fk_shard shards[];
};

#define CACHE_MAX_SHARDS 16

static uint64_t name_hash(uint64_t seed, const char *kid, size_t kid_len, const char *context,
                          size_t context_len)
{
    /* FNV-1a, seeded per cache so that collisions cannot be planned from
     * outside; the bound on each shard limits the damage of any that occur. */
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    size_t i;
    for (i = 0; i < kid_len; i++)
        h = (h ^ (uint8_t)kid[i]) * 0x100000001b3ULL;
    h = (h ^ 0xff) * 0x100000001b3ULL;
    for (i = 0; i < context_len; i++)
        h = (h ^ (uint8_t)context[i]) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

field_key_cache *phg_internal_cache_new(size_t capacity)
{
    field_key_cache *c;
    size_t nshards = 1, i;

    if (capacity == 0)
        return NULL;
    while (nshards * 2 <= CACHE_MAX_SHARDS && nshards * 2 <= capacity)
        nshards *= 2;
    c = aligned_alloc(64, (sizeof *c + nshards * sizeof(fk_shard) + 63) / 64 * 64);
    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof *c + nshards * sizeof(fk_shard));
    c->nshards = nshards;
    if (phg_random_bytes((uint8_t *)&c->seed, sizeof c->seed) != PHG_OK) {
        free(c);
        return NULL;
    }
    for (i = 0; i < nshards; i++) {
        fk_shard *s = &c->shards[i];
        s->capacity = capacity / nshards + (i < capacity % nshards ? 1 : 0);
        s->nbuckets = 8;
        while (s->nbuckets < s->capacity * 2)
            s->nbuckets *= 2;
        s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
        s->lru.next = s->lru.prev = &s->lru;
        pthread_mutex_init(&s->lock, NULL);
        if (s->buckets == NULL) {
            c->nshards = i + 1;
            phg_internal_cache_free(c);
            return NULL;
        }
    }
    return c;
}

static void entry_free(fk_entry *e)
{
    if (e == NULL)
        return;
    EVP_CIPHER_CTX_free(e->ctx); /* the provider cleanses the key schedule */
    pthread_mutex_destroy(&e->use);
    free(e);
}

/* Take e out of its shard's table and LRU list. Shard lock held. */
static void entry_unlink(fk_shard *s, fk_entry *e)
{
    fk_entry **pp = &s->buckets[(e->hash >> 8) & (s->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->bucket_next;
    *pp = e->bucket_next;
    e->lru.prev->next = e->lru.next;
    e->lru.next->prev = e->lru.prev;
    e->linked = 0;
    s->count--;
}

void phg_internal_cache_free(field_key_cache *c)
{
    size_t i;
    if (c == NULL)
        return;
    for (i = 0; i < c->nshards; i++) {
        fk_shard *s = &c->shards[i];
        lru_link *l = s->lru.next;
        while (l != NULL && l != &s->lru) {
            lru_link *next = l->next;
            entry_free((fk_entry *)l);
            l = next;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    free(c);
}

static fk_entry *shard_find(fk_shard *s, uint64_t h, const char *kid, size_t kid_len,
                            const char *context, size_t context_len)
{
    fk_entry *e = s->buckets[(h >> 8) & (s->nbuckets - 1)];
    for (; e != NULL; e = e->bucket_next) {
        if (e->hash == h && e->kid_len == kid_len && e->context_len == context_len &&
            memcmp(e->name, kid, kid_len) == 0 &&
            memcmp(e->name + kid_len, context, context_len) == 0)
            return e;
    }
    return NULL;
}

static void lru_push_front(fk_shard *s, fk_entry *e)
{
    e->lru.next = s->lru.next;
    e->lru.prev = &s->lru;
    s->lru.next->prev = &e->lru;
    s->lru.next = &e->lru;
}

/*
 * The entry of (kid, context), pinned; derived and inserted on a miss.
 * Release it with cache_release().
 */
static phg_status cache_acquire(field_key_cache *c, const phi_key *key, const char *context,
                                size_t context_len, fk_entry **out)
{
    uint64_t h = name_hash(c->seed, key->kid, key->kid_len, context, context_len);
    fk_shard *s = &c->shards[h & (c->nshards - 1)];
    fk_entry *e, *fresh = NULL, *evicted = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    phg_status rc;

    pthread_mutex_lock(&s->lock);
    e = shard_find(s, h, key->kid, key->kid_len, context, context_len);
    if (e != NULL) {
        e->refs++;
        s->hits++;
        if (s->lru.next != &e->lru) {
            e->lru.prev->next = e->lru.next;
            e->lru.next->prev = e->lru.prev;
            lru_push_front(s, e);
        }
        pthread_mutex_unlock(&s->lock);
        *out = e;
        return PHG_OK;
    }
    s->misses++;
    pthread_mutex_unlock(&s->lock);

    /* Derive outside the lock: it is the slow part. */
    rc = field_ctx_new(key->dek, context, context_len, &ctx);
    if (rc != PHG_OK)
        return rc;
    fresh = malloc(sizeof *fresh + key->kid_len + context_len);
    if (fresh == NULL) {
        EVP_CIPHER_CTX_free(ctx);
        return PHG_ERR_NOMEM;
    }
    memset(fresh, 0, sizeof *fresh);
    fresh->hash = h;
    fresh->ctx = ctx;
    fresh->kid_len = key->kid_len;
    fresh->context_len = context_len;
    memcpy(fresh->name, key->kid, key->kid_len);
    memcpy(fresh->name + key->kid_len, context, context_len);
    pthread_mutex_init(&fresh->use, NULL);

    pthread_mutex_lock(&s->lock);
    e = shard_find(s, h, key->kid, key->kid_len, context, context_len);
    if (e != NULL) { /* another thread inserted it meanwhile */
        e->refs++;
        pthread_mutex_unlock(&s->lock);
        entry_free(fresh);
        *out = e;
        return PHG_OK;
    }
    fresh->refs = 1;
    fresh->linked = 1;
    fresh->bucket_next = s->buckets[(h >> 8) & (s->nbuckets - 1)];
    s->buckets[(h >> 8) & (s->nbuckets - 1)] = fresh;
    lru_push_front(s, fresh);
    s->count++;
    while (s->count > s->capacity) {
        fk_entry *victim = (fk_entry *)s->lru.prev;
        assert(&victim->lru != &s->lru && victim != fresh);
        entry_unlink(s, victim);
        s->evictions++;
        if (victim->refs == 0) {
            victim->bucket_next = evicted;
            evicted = victim;
        }
        /* else: its last user frees it in cache_release() */
    }
    pthread_mutex_unlock(&s->lock);
    while (evicted != NULL) {
        fk_entry *next = evicted->bucket_next;
        entry_free(evicted);
        evicted = next;
    }
    *out = fresh;
    return PHG_OK;
}

static void cache_release(field_key_cache *c, fk_entry *e)
{
    fk_shard *s = &c->shards[e->hash & (c->nshards - 1)];
    int dead;
    pthread_mutex_lock(&s->lock);
    assert(e->refs > 0);
    e->refs--;
    dead = !e->linked && e->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (dead)
        entry_free(e);
}

void phg_internal_cache_purge_kid(field_key_cache *c, const char *kid, size_t kid_len)
{
    size_t i;
    if (c == NULL)
        return;
    for (i = 0; i < c->nshards; i++) {
        fk_shard *s = &c->shards[i];
        fk_entry *e, *dead = NULL;
        pthread_mutex_lock(&s->lock);
        lru_link *l = s->lru.next;
        while (l != &s->lru) {
            lru_link *next = l->next;
            e = (fk_entry *)l;
            if (e->kid_len == kid_len && memcmp(e->name, kid, kid_len) == 0) {
                entry_unlink(s, e);
                if (e->refs == 0) {
                    e->bucket_next = dead;
                    dead = e;
                }
            }
            l = next;
        }
        pthread_mutex_unlock(&s->lock);
        while (dead != NULL) {
            fk_entry *next = dead->bucket_next;
            entry_free(dead);
            dead = next;
        }
    }
}

void phg_keyring_cache_stats(phg_keyring *kr, phg_phi_cache_stats *st)
{
    size_t i;
    assert(kr != NULL && st != NULL);
    memset(st, 0, sizeof *st);
    if (kr->cache == NULL)
        return;
    for (i = 0; i < kr->cache->nshards; i++) {
        fk_shard *s = &kr->cache->shards[i];
        pthread_mutex_lock(&s->lock);
        st->hits += s->hits;
        st->misses += s->misses;
        st->evictions += s->evictions;
        st->entries += s->count;
        st->capacity += s->capacity;
        pthread_mutex_unlock(&s->lock);
    }
}

/* ---- one GCM message on a keyed context -------------------------------------- */

static phg_status gcm_seal(EVP_CIPHER_CTX *ctx, const uint8_t nonce[PHG_PHI_NONCE_SIZE],
                           const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t len,
                           uint8_t *ct, uint8_t tag[PHG_PHI_TAG_SIZE])
{
    OSSL_PARAM params[2];
    int got = 0;
    /* Key NULL: the context keeps its key schedule, only the nonce changes.
     * The _ex2 call and the tag through params skip a few of OpenSSL 3.0's
     * compatibility look-ups: about 10% of a short field's encryption. */
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag,
                                                  PHG_PHI_TAG_SIZE);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, 1, NULL) != 1 ||
        phg_internal_gcm_aad(ctx, aad, aad_len) != PHG_OK ||
        phg_internal_gcm_update(ctx, pt, len, ct) != PHG_OK ||
        EVP_CipherFinal_ex(ctx, ct + len, &got) != 1 || EVP_CIPHER_CTX_get_params(ctx, params) != 1)
        return PHG_ERR_INTERNAL;
    return PHG_OK;
}

static phg_status gcm_open(EVP_CIPHER_CTX *ctx, const uint8_t nonce[PHG_PHI_NONCE_SIZE],
                           const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t len,
                           const uint8_t tag[PHG_PHI_TAG_SIZE], uint8_t *pt)
{
    uint8_t tag_copy[PHG_PHI_TAG_SIZE];
    OSSL_PARAM params[2];
    int got = 0;
    memcpy(tag_copy, tag, sizeof tag_copy);
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag_copy,
                                                  PHG_PHI_TAG_SIZE);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, 0, NULL) != 1 ||
        phg_internal_gcm_aad(ctx, aad, aad_len) != PHG_OK ||
        phg_internal_gcm_update(ctx, ct, len, pt) != PHG_OK ||
        EVP_CIPHER_CTX_set_params(ctx, params) != 1)
        return PHG_ERR_INTERNAL;
    if (EVP_CipherFinal_ex(ctx, pt + len, &got) != 1)
        return PHG_ERR_AUTH;
    return PHG_OK;
}

typedef enum { OP_SEAL, OP_OPEN } gcm_op;

/*
 * Run one seal or open under the field key of (key, context), through the
 * cache when there is one, on a fresh context otherwise.
 */
static phg_status with_field_key(phg_keyring *kr, const phi_key *key, const char *context,
                                 size_t context_len, gcm_op op, const uint8_t *nonce,
                                 const uint8_t *aad, size_t aad_len, const uint8_t *in,
                                 size_t len, uint8_t *out, uint8_t *tag)
{
    phg_status rc;
    if (kr->cache != NULL) {
        fk_entry *e = NULL;
        rc = cache_acquire(kr->cache, key, context, context_len, &e);
        if (rc != PHG_OK)
            return rc;
        pthread_mutex_lock(&e->use);
        rc = op == OP_SEAL ? gcm_seal(e->ctx, nonce, aad, aad_len, in, len, out, tag)
                           : gcm_open(e->ctx, nonce, aad, aad_len, in, len, tag, out);
        pthread_mutex_unlock(&e->use);
        cache_release(kr->cache, e);
    } else {
        EVP_CIPHER_CTX *ctx = NULL;
        rc = field_ctx_new(key->dek, context, context_len, &ctx);
        if (rc != PHG_OK)
            return rc;
        rc = op == OP_SEAL ? gcm_seal(ctx, nonce, aad, aad_len, in, len, out, tag)
                           : gcm_open(ctx, nonce, aad, aad_len, in, len, tag, out);
        EVP_CIPHER_CTX_free(ctx);
    }
    return rc;
}

/* ---- the v1 text format ------------------------------------------------------- */

static int kid_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
}

/* Split "phi1.<kid>.<data>": kid and data spans. PHG_ERR_FORMAT if not so shaped. */
static phg_status split_ciphertext(const char *ct, size_t ct_len, size_t *kid_len,
                                   const char **data, size_t *data_len)
{
    size_t i;
    if (ct_len < PHI_PREFIX_LEN || memcmp(ct, PHI_PREFIX, PHI_PREFIX_LEN) != 0)
        return PHG_ERR_FORMAT;
    for (i = PHI_PREFIX_LEN; i < ct_len && kid_char(ct[i]); i++)
        ;
    *kid_len = i - PHI_PREFIX_LEN;
    if (*kid_len == 0 || *kid_len > PHG_PHI_KID_MAX || i >= ct_len || ct[i] != '.')
        return PHG_ERR_FORMAT;
    *data = ct + i + 1;
    *data_len = ct_len - i - 1;
    return PHG_OK;
}

phg_status phg_phi_ciphertext_kid(const char *ct, size_t ct_len, char kid[PHG_PHI_KID_MAX + 1])
{
    size_t kid_len = 0, data_len = 0;
    const char *data = NULL;
    phg_status rc;
    assert(kid != NULL && (ct != NULL || ct_len == 0));
    rc = split_ciphertext(ct, ct_len, &kid_len, &data, &data_len);
    if (rc != PHG_OK)
        return rc;
    memcpy(kid, ct + PHI_PREFIX_LEN, kid_len);
    kid[kid_len] = '\0';
    return PHG_OK;
}

static phg_status encrypt_locked(phg_keyring *kr, const char *context, size_t context_len,
                                 const uint8_t *pt, size_t pt_len, char *out, size_t out_cap,
                                 size_t *out_len)
{
    uint8_t stack_raw[STACK_RAW], *raw = stack_raw;
    char aad[PHI_PREFIX_LEN + PHG_PHI_KID_MAX + 1];
    const phi_key *key = &kr->keys[kr->primary];
    size_t raw_len = pt_len + RAW_OVERHEAD, aad_len, need;
    phg_status rc;

    *out_len = 0;
    if (context == NULL || context_len < PHG_PHI_CONTEXT_MIN || context_len > PHG_PHI_CONTEXT_MAX)
        return PHG_ERR_CONTEXT;
    if (pt_len > PHG_PHI_PLAINTEXT_MAX)
        return PHG_ERR_TOO_LARGE;
    assert(pt != NULL || pt_len == 0);
    assert(key->state == PHG_PHI_KEY_ACTIVE);
    aad_len = PHI_PREFIX_LEN + key->kid_len;
    need = aad_len + 1 + phg_base64_encoded_len(raw_len, PHG_B64_URL_NOPAD);
    if (out_cap < need)
        return PHG_ERR_BUFFER_TOO_SMALL;
    memcpy(aad, PHI_PREFIX, PHI_PREFIX_LEN);
    memcpy(aad + PHI_PREFIX_LEN, key->kid, key->kid_len);
    if (raw_len > sizeof stack_raw) {
        raw = malloc(raw_len);
        if (raw == NULL)
            return PHG_ERR_NOMEM;
    }
    rc = phg_internal_nonce(raw, PHG_PHI_NONCE_SIZE);
    if (rc != PHG_OK)
        goto out;
    rc = with_field_key(kr, key, context, context_len, OP_SEAL, raw, (const uint8_t *)aad,
                        aad_len, pt, pt_len, raw + PHG_PHI_NONCE_SIZE,
                        raw + PHG_PHI_NONCE_SIZE + pt_len);
    if (rc != PHG_OK)
        goto out;
    memcpy(out, aad, aad_len);
    out[aad_len] = '.';
    phg_internal_base64_encode(raw, raw_len, out + aad_len + 1, PHG_B64_URL_NOPAD);
    *out_len = need;
out:
    /* raw holds nonce, ciphertext and tag: public, no wipe needed. */
    if (raw != stack_raw)
        free(raw);
    return rc;
}

static phg_status decrypt_locked(phg_keyring *kr, const char *context, size_t context_len,
                                 const char *ct, size_t ct_len, uint8_t *out, size_t out_cap,
                                 size_t *out_len)
{
    uint8_t stack_raw[STACK_RAW], *raw = stack_raw;
    size_t kid_len = 0, data_len = 0, raw_cap, raw_len = 0, pt_len;
    const char *data = NULL;
    const phi_key *key;
    phg_status rc;

    *out_len = 0;
    if (context == NULL || context_len < PHG_PHI_CONTEXT_MIN || context_len > PHG_PHI_CONTEXT_MAX) {
        if (out_cap > 0)
            phg_wipe(out, out_cap);
        return PHG_ERR_CONTEXT;
    }
    assert(ct != NULL || ct_len == 0);
    rc = split_ciphertext(ct, ct_len, &kid_len, &data, &data_len);
    if (rc != PHG_OK) {
        /* Only a missing "phi1." says "not this format"; past the prefix,
         * every fault is the one authentication failure. */
        if (ct_len >= PHI_PREFIX_LEN && memcmp(ct, PHI_PREFIX, PHI_PREFIX_LEN) == 0)
            rc = PHG_ERR_AUTH;
        if (out_cap > 0)
            phg_wipe(out, out_cap);
        return rc;
    }
    raw_cap = 0;
    rc = PHG_ERR_AUTH;
    if (data_len > PHG_PHI_CIPHERTEXT_MAX_LEN(PHG_PHI_PLAINTEXT_MAX))
        goto out;
    raw_cap = data_len / 4 * 3 + 3;
    if (raw_cap > sizeof stack_raw) {
        raw = malloc(raw_cap);
        if (raw == NULL) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
    }
    if (phg_base64_decode(data, data_len, raw, raw_cap, &raw_len, PHG_B64_URL_NOPAD) != PHG_OK ||
        raw_len < RAW_OVERHEAD)
        goto out;
    pt_len = raw_len - RAW_OVERHEAD;
    if (pt_len > out_cap) {
        rc = PHG_ERR_BUFFER_TOO_SMALL;
        goto out;
    }
    key = phg_internal_find_key(kr, ct + PHI_PREFIX_LEN, kid_len);
    if (key == NULL || key->state == PHG_PHI_KEY_DESTROYED)
        goto out;
    rc = with_field_key(kr, key, context, context_len, OP_OPEN, raw, (const uint8_t *)ct,
                        PHI_PREFIX_LEN + kid_len, raw + PHG_PHI_NONCE_SIZE, pt_len,
                        out, raw + PHG_PHI_NONCE_SIZE + pt_len);
    if (rc != PHG_OK) {
        if (rc != PHG_ERR_NOMEM && rc != PHG_ERR_INTERNAL)
            rc = PHG_ERR_AUTH;
        goto out;
    }
    *out_len = pt_len;
out:
    if (rc != PHG_OK && out_cap > 0)
        phg_wipe(out, out_cap);
    /* raw holds the decoded ciphertext: public; the plaintext went to out. */
    if (raw != stack_raw)
        free(raw);
    return rc;
}

phg_status phg_phi_encrypt(phg_keyring *kr, const char *context, size_t context_len,
                           const uint8_t *pt, size_t pt_len, char *out, size_t out_cap,
                           size_t *out_len)
{
    phg_status rc;
    assert(kr != NULL && out != NULL && out_len != NULL);
    unsigned slot = phg_internal_read_lock(kr);
    rc = encrypt_locked(kr, context, context_len, pt, pt_len, out, out_cap, out_len);
    phg_internal_read_unlock(kr, slot);
    return rc;
}

phg_status phg_phi_decrypt(phg_keyring *kr, const char *context, size_t context_len,
                           const char *ct, size_t ct_len, uint8_t *out, size_t out_cap,
                           size_t *out_len)
{
    phg_status rc;
    assert(kr != NULL && out_len != NULL && (out != NULL || out_cap == 0));
    unsigned slot = phg_internal_read_lock(kr);
    rc = decrypt_locked(kr, context, context_len, ct, ct_len, out, out_cap, out_len);
    phg_internal_read_unlock(kr, slot);
    return rc;
}

phg_status phg_phi_rewrap(phg_keyring *kr, const char *context, size_t context_len,
                          const char *ct, size_t ct_len, char *out, size_t out_cap,
                          size_t *out_len)
{
    uint8_t *pt = NULL;
    size_t pt_len = 0, pt_cap = ct_len;
    phg_status rc;

    assert(kr != NULL && out != NULL && out_len != NULL);
    *out_len = 0;
    pt = malloc(pt_cap ? pt_cap : 1);
    if (pt == NULL)
        return PHG_ERR_NOMEM;
    unsigned slot = phg_internal_read_lock(kr);
    rc = decrypt_locked(kr, context, context_len, ct, ct_len, pt, pt_cap, &pt_len);
    if (rc == PHG_OK)
        rc = encrypt_locked(kr, context, context_len, pt, pt_len, out, out_cap, out_len);
    phg_internal_read_unlock(kr, slot);
    phg_wipe(pt, pt_cap);
    free(pt);
    return rc;
}

phg_status phg_phi_encrypt_batch(phg_keyring *kr, phg_phi_item *items, size_t n)
{
    phg_status rc = PHG_OK;
    size_t i;
    assert(kr != NULL && (items != NULL || n == 0));
    unsigned slot = phg_internal_read_lock(kr);
    for (i = 0; i < n; i++) {
        phg_phi_item *it = &items[i];
        it->status = encrypt_locked(kr, it->context, it->context_len, it->in, it->in_len,
                                    (char *)it->out, it->out_cap, &it->out_len);
        if (it->status != PHG_OK)
            rc = PHG_ERR_BATCH;
    }
    phg_internal_read_unlock(kr, slot);
    return rc;
}

phg_status phg_phi_decrypt_batch(phg_keyring *kr, phg_phi_item *items, size_t n)
{
    phg_status rc = PHG_OK;
    size_t i;
    assert(kr != NULL && (items != NULL || n == 0));
    unsigned slot = phg_internal_read_lock(kr);
    for (i = 0; i < n; i++) {
        phg_phi_item *it = &items[i];
        it->status = decrypt_locked(kr, it->context, it->context_len, (const char *)it->in,
                                    it->in_len, it->out, it->out_cap, &it->out_len);
        if (it->status != PHG_OK)
            rc = PHG_ERR_BATCH;
    }
    phg_internal_read_unlock(kr, slot);
    return rc;
}
