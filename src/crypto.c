/*
 * crypto.c: thin wrappers over OpenSSL 3 for the primitives every module uses
 * (random, SHA-256, HMAC, HKDF, AES-GCM), the constant-time compare and wipe,
 * and strict base64. Algorithms are fetched once per process (EVP_*_fetch is a
 * provider lookup under a lock, far too slow to do per call).
 *
 * No primitive is implemented here; see docs/formats.md for the encodings.
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "crypto_internal.h"
#include "phigate/crypto.h"

static pthread_once_t algs_once = PTHREAD_ONCE_INIT;
static struct {
    EVP_MAC *hmac;
    EVP_KDF *hkdf;
    EVP_MD *sha256;
    EVP_MD *sha1;
    EVP_CIPHER *gcm[3]; /* 128, 192, 256 */
    EVP_CIPHER *cbc128;
} algs;

static void algs_fetch(void)
{
    algs.hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    algs.hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    algs.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    algs.sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    algs.gcm[0] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    algs.gcm[1] = EVP_CIPHER_fetch(NULL, "AES-192-GCM", NULL);
    algs.gcm[2] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    algs.cbc128 = EVP_CIPHER_fetch(NULL, "AES-128-CBC", NULL);
}

/* Every fetched algorithm, or NULL if OpenSSL could not provide them. */
static int algs_ready(void)
{
    pthread_once(&algs_once, algs_fetch);
    return algs.hmac && algs.hkdf && algs.sha256 && algs.sha1 && algs.gcm[0] && algs.gcm[1] &&
           algs.gcm[2] && algs.cbc128;
}

const EVP_CIPHER *phg_internal_aes256gcm(void)
{
    return algs_ready() ? algs.gcm[2] : NULL;
}

const EVP_CIPHER *phg_internal_aes128cbc(void)
{
    return algs_ready() ? algs.cbc128 : NULL;
}

void phg_wipe(void *p, size_t n)
{
    if (p != NULL && n > 0)
        OPENSSL_cleanse(p, n);
}

int phg_ct_equal(const void *a, const void *b, size_t n)
{
    assert(n == 0 || (a != NULL && b != NULL));
    return n == 0 || CRYPTO_memcmp(a, b, n) == 0;
}

/*
 * Nonces: RAND_bytes costs about 0.8 us per call in OpenSSL 3.0 whatever the
 * size (the DRBG re-keys on every generate), more than the AES-GCM of a short
 * field. Each thread therefore draws NONCE_POOL bytes at once and hands them
 * out in order, never twice. After fork() the child must not reuse its
 * parent's pool: a fork handler bumps a generation that every pool checks.
 */
#define NONCE_POOL 4096

static _Thread_local struct {
    uint8_t bytes[NONCE_POOL];
    size_t avail;
    unsigned generation;
} nonce_pool;
static atomic_uint fork_generation = 1;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add(&fork_generation, 1);
}

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

phg_status phg_internal_nonce(uint8_t *out, size_t n)
{
    unsigned gen;
    assert(n <= 64);
    pthread_once(&fork_once, register_fork_handler);
    gen = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    if (nonce_pool.generation != gen || nonce_pool.avail < n) {
        if (RAND_bytes(nonce_pool.bytes, NONCE_POOL) != 1) {
            nonce_pool.avail = 0;
            return PHG_ERR_INTERNAL;
        }
        nonce_pool.avail = NONCE_POOL;
        nonce_pool.generation = gen;
    }
    memcpy(out, nonce_pool.bytes + NONCE_POOL - nonce_pool.avail, n);
    memset(nonce_pool.bytes + NONCE_POOL - nonce_pool.avail, 0, n);
    nonce_pool.avail -= n;
    return PHG_OK;
}

phg_status phg_random_bytes(uint8_t *out, size_t n)
{
    assert(out != NULL || n == 0);
    if (n == 0)
        return PHG_OK;
    if (n > INT32_MAX)
        return PHG_ERR_INVALID;
    return RAND_bytes(out, (int)n) == 1 ? PHG_OK : PHG_ERR_INTERNAL;
}

static phg_status digest(const EVP_MD *md, const uint8_t *in, size_t n, uint8_t *out)
{
    unsigned int len = 0;
    if (md == NULL)
        return PHG_ERR_INTERNAL;
    return EVP_Digest(in, n, out, &len, md, NULL) == 1 ? PHG_OK : PHG_ERR_INTERNAL;
}

phg_status phg_sha256(const uint8_t *in, size_t n, uint8_t out[PHG_SHA256_SIZE])
{
    assert(out != NULL && (in != NULL || n == 0));
    if (!algs_ready())
        return PHG_ERR_INTERNAL;
    return digest(algs.sha256, n ? in : (const uint8_t *)"", n, out);
}

static phg_status hmac(const char *md_name, size_t md_size, const uint8_t *key, size_t key_len,
                       const uint8_t *msg, size_t msg_len, uint8_t *out)
{
    phg_status rc = PHG_ERR_INTERNAL;
    EVP_MAC_CTX *ctx = NULL;
    size_t out_len = 0;
    OSSL_PARAM params[2];

    if (!algs_ready())
        return PHG_ERR_INTERNAL;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)md_name, 0);
    params[1] = OSSL_PARAM_construct_end();
    ctx = EVP_MAC_CTX_new(algs.hmac);
    if (ctx == NULL)
        goto out;
    /* A non-NULL pointer even for an empty key: OpenSSL treats NULL as "no key". */
    if (EVP_MAC_init(ctx, key_len ? key : (const uint8_t *)"", key_len, params) != 1)
        goto out;
    if (msg_len > 0 && EVP_MAC_update(ctx, msg, msg_len) != 1)
        goto out;
    if (EVP_MAC_final(ctx, out, &out_len, md_size) != 1 || out_len != md_size)
        goto out;
    rc = PHG_OK;
out:
    EVP_MAC_CTX_free(ctx);
    return rc;
}

phg_status phg_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                           uint8_t out[PHG_SHA256_SIZE])
{
    assert(out != NULL && (key != NULL || key_len == 0) && (msg != NULL || msg_len == 0));
    return hmac("SHA256", PHG_SHA256_SIZE, key, key_len, msg, msg_len, out);
}

phg_status phg_hmac_sha1(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                         uint8_t out[PHG_SHA1_SIZE])
{
    assert(out != NULL && (key != NULL || key_len == 0) && (msg != NULL || msg_len == 0));
    return hmac("SHA1", PHG_SHA1_SIZE, key, key_len, msg, msg_len, out);
}

phg_status phg_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt,
                           size_t salt_len, const uint8_t *info, size_t info_len, uint8_t *out,
                           size_t out_len)
{
    phg_status rc = PHG_ERR_INTERNAL;
    EVP_KDF_CTX *kctx = NULL;
    OSSL_PARAM params[5];
    size_t n = 0;

    assert(out != NULL && (ikm != NULL || ikm_len == 0));
    if (out_len == 0 || out_len > 255 * PHG_SHA256_SIZE)
        return PHG_ERR_INVALID;
    if (info_len > 1024)
        return PHG_ERR_TOO_LARGE;
    if (!algs_ready())
        return PHG_ERR_INTERNAL;
    params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0);
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                                    (void *)(ikm_len ? ikm : (const uint8_t *)""),
                                                    ikm_len);
    /* An absent salt is HashLen zero bytes (RFC 5869 2.2), which is what an
     * empty one means. */
    if (salt_len > 0)
        params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt,
                                                        salt_len);
    if (info_len > 0)
        params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info,
                                                        info_len);
    params[n] = OSSL_PARAM_construct_end();
    kctx = EVP_KDF_CTX_new(algs.hkdf);
    if (kctx == NULL)
        goto out;
    if (EVP_KDF_derive(kctx, out, out_len, params) != 1) {
        phg_wipe(out, out_len);
        goto out;
    }
    rc = PHG_OK;
out:
    EVP_KDF_CTX_free(kctx); /* cleanses its key material */
    return rc;
}

static const EVP_CIPHER *gcm_for(size_t key_len)
{
    if (!algs_ready())
        return NULL;
    switch (key_len) {
    case 16: return algs.gcm[0];
    case 24: return algs.gcm[1];
    case 32: return algs.gcm[2];
    default: return NULL;
    }
}

/* Set up ctx for one GCM message: cipher, IV length, key, IV. */
static phg_status gcm_begin(EVP_CIPHER_CTX *ctx, const uint8_t *key, size_t key_len,
                            const uint8_t *iv, size_t iv_len, int enc)
{
    const EVP_CIPHER *cipher = gcm_for(key_len);
    if (cipher == NULL)
        return key_len == 16 || key_len == 24 || key_len == 32 ? PHG_ERR_INTERNAL
                                                               : PHG_ERR_INVALID;
    if (iv_len == 0 || iv_len > PHG_GCM_IV_MAX)
        return PHG_ERR_INVALID;
    if (EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, (int)iv_len, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, iv, enc) != 1)
        return PHG_ERR_INTERNAL;
    return PHG_OK;
}

phg_status phg_internal_gcm_update(EVP_CIPHER_CTX *ctx, const uint8_t *in, size_t len,
                                   uint8_t *out)
{
    /* EVP takes int lengths: feed large inputs in pieces. */
    while (len > 0) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len, got = 0;
        if (EVP_CipherUpdate(ctx, out, &got, in, chunk) != 1 || got != chunk)
            return PHG_ERR_INTERNAL;
        in += chunk;
        out += chunk;
        len -= (size_t)chunk;
    }
    return PHG_OK;
}

phg_status phg_internal_gcm_aad(EVP_CIPHER_CTX *ctx, const uint8_t *aad, size_t aad_len)
{
    int got = 0;
    if (aad_len == 0)
        return PHG_OK;
    if (aad_len > INT32_MAX || EVP_CipherUpdate(ctx, NULL, &got, aad, (int)aad_len) != 1)
        return PHG_ERR_INTERNAL;
    return PHG_OK;
}

phg_status phg_aes_gcm_encrypt(const uint8_t *key, size_t key_len, const uint8_t *iv,
                               size_t iv_len, const uint8_t *aad, size_t aad_len,
                               const uint8_t *pt, size_t pt_len, uint8_t *ct,
                               uint8_t tag[PHG_GCM_TAG_SIZE])
{
    phg_status rc;
    EVP_CIPHER_CTX *ctx = NULL;
    int got = 0;

    assert(key != NULL && tag != NULL && (iv != NULL || iv_len == 0));
    assert((pt != NULL && ct != NULL) || pt_len == 0);
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return PHG_ERR_NOMEM;
    rc = gcm_begin(ctx, key, key_len, iv, iv_len, 1);
    if (rc != PHG_OK)
        goto out;
    rc = PHG_ERR_INTERNAL;
    if (phg_internal_gcm_aad(ctx, aad, aad_len) != PHG_OK ||
        phg_internal_gcm_update(ctx, pt, pt_len, ct) != PHG_OK)
        goto out;
    if (EVP_EncryptFinal_ex(ctx, ct + pt_len, &got) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, PHG_GCM_TAG_SIZE, tag) != 1)
        goto out;
    rc = PHG_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

phg_status phg_aes_gcm_decrypt(const uint8_t *key, size_t key_len, const uint8_t *iv,
                               size_t iv_len, const uint8_t *aad, size_t aad_len,
                               const uint8_t *ct, size_t ct_len,
                               const uint8_t tag[PHG_GCM_TAG_SIZE], uint8_t *pt)
{
    phg_status rc;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t tag_copy[PHG_GCM_TAG_SIZE];
    int got = 0;

    assert(key != NULL && tag != NULL && (iv != NULL || iv_len == 0));
    assert((pt != NULL && ct != NULL) || ct_len == 0);
    memcpy(tag_copy, tag, sizeof tag_copy);
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return PHG_ERR_NOMEM;
    rc = gcm_begin(ctx, key, key_len, iv, iv_len, 0);
    if (rc != PHG_OK)
        goto out;
    rc = PHG_ERR_INTERNAL;
    if (phg_internal_gcm_aad(ctx, aad, aad_len) != PHG_OK ||
        phg_internal_gcm_update(ctx, ct, ct_len, pt) != PHG_OK)
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, PHG_GCM_TAG_SIZE, tag_copy) != 1)
        goto out;
    rc = EVP_DecryptFinal_ex(ctx, pt + ct_len, &got) == 1 ? PHG_OK : PHG_ERR_AUTH;
out:
    if (rc != PHG_OK && ct_len > 0)
        phg_wipe(pt, ct_len);
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* ---- base64 --------------------------------------------------------------- */

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int variant_url(phg_b64_variant v)
{
    return v == PHG_B64_URL || v == PHG_B64_URL_NOPAD;
}

static int variant_pad(phg_b64_variant v)
{
    return v == PHG_B64_STD || v == PHG_B64_URL;
}

size_t phg_base64_encoded_len(size_t n, phg_b64_variant variant)
{
    if (variant_pad(variant))
        return (n + 2) / 3 * 4;
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

size_t phg_internal_base64_encode(const uint8_t *in, size_t n, char *out,
                                  phg_b64_variant variant)
{
    const char *alpha = variant_url(variant) ? b64_url : b64_std;
    size_t i = 0, o = 0;

    assert(out != NULL && (in != NULL || n == 0));
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alpha[v >> 18];
        out[o++] = alpha[(v >> 12) & 63];
        out[o++] = alpha[(v >> 6) & 63];
        out[o++] = alpha[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alpha[v >> 18];
        out[o++] = alpha[(v >> 12) & 63];
        if (variant_pad(variant)) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alpha[v >> 18];
        out[o++] = alpha[(v >> 12) & 63];
        out[o++] = alpha[(v >> 6) & 63];
        if (variant_pad(variant))
            out[o++] = '=';
    }
    return o;
}

size_t phg_base64_encode(const uint8_t *in, size_t n, char *out, phg_b64_variant variant)
{
    size_t o = phg_internal_base64_encode(in, n, out, variant);
    out[o] = '\0';
    return o;
}

/* Decoding tables: the value of each byte in each alphabet, or -1. */
static signed char b64_lut[2][256];
static pthread_once_t b64_once = PTHREAD_ONCE_INIT;

static void b64_lut_init(void)
{
    int i;
    memset(b64_lut, -1, sizeof b64_lut);
    for (i = 0; i < 64; i++) {
        b64_lut[0][(unsigned char)b64_std[i]] = (signed char)i;
        b64_lut[1][(unsigned char)b64_url[i]] = (signed char)i;
    }
}

phg_status phg_base64_decode(const char *in, size_t len, uint8_t *out, size_t out_cap,
                             size_t *out_len, phg_b64_variant variant)
{
    const signed char *lut;
    size_t data_len = len, rem, need, i, o = 0;
    uint32_t acc = 0;

    assert(out_len != NULL && (in != NULL || len == 0) && (out != NULL || out_cap == 0));
    *out_len = 0;
    if (variant_pad(variant)) {
        if (len % 4 != 0)
            return PHG_ERR_INVALID;
        if (len >= 1 && in[len - 1] == '=')
            data_len--;
        if (len >= 2 && in[len - 2] == '=')
            data_len--;
    }
    rem = data_len % 4;
    if (rem == 1)
        return PHG_ERR_INVALID;
    need = data_len / 4 * 3 + (rem ? rem - 1 : 0);
    if (need > out_cap)
        return PHG_ERR_BUFFER_TOO_SMALL;
    pthread_once(&b64_once, b64_lut_init);
    lut = b64_lut[variant_url(variant)];
    for (i = 0; i + 4 <= data_len; i += 4) {
        int a = lut[(unsigned char)in[i]], b = lut[(unsigned char)in[i + 1]];
        int c = lut[(unsigned char)in[i + 2]], d = lut[(unsigned char)in[i + 3]];
        if ((a | b | c | d) < 0)
            goto bad;
        acc = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (uint8_t)(acc >> 16);
        out[o++] = (uint8_t)(acc >> 8);
        out[o++] = (uint8_t)acc;
    }
    acc = 0;
    for (; i < data_len; i++) {
        int v = lut[(unsigned char)in[i]];
        if (v < 0)
            goto bad;
        acc = acc << 6 | (uint32_t)v;
    }
    if (rem == 2) {
        if (acc & 0xf) /* non-canonical: unused bits must be zero */
            goto bad;
        out[o++] = (uint8_t)(acc >> 4);
    } else if (rem == 3) {
        if (acc & 0x3)
            goto bad;
        out[o++] = (uint8_t)(acc >> 10);
        out[o++] = (uint8_t)(acc >> 2);
    }
    *out_len = o;
    return PHG_OK;
bad:
    phg_wipe(out, o);
    return PHG_ERR_INVALID;
}
