/*
 * fernet.c: the public Fernet token format (version 0x80), on OpenSSL.
 *
 *   token = base64url( 0x80 ‖ timestamp (u64 BE) ‖ IV (16) ‖ AES-128-CBC(PKCS#7) ‖ HMAC-SHA256 (32) )
 *
 * The key is 32 bytes: HMAC key (first 16) then AES key (last 16). phigate uses
 * Fernet only to wrap 32-byte data keys under the master key (docs/formats.md,
 * "Wrapped DEK"); keeping to the public spec means any Fernet library can
 * unwrap a phigate keyring in an emergency.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crypto_internal.h"
#include "phigate/crypto.h"

#define FERNET_VERSION 0x80
#define FERNET_HEADER (1 + 8 + 16)
#define FERNET_MAC 32
#define FERNET_MAX_SKEW_S 60

phg_status phg_fernet_key_decode(const char *text, size_t len, uint8_t key[PHG_FERNET_KEY_SIZE])
{
    uint8_t buf[PHG_FERNET_KEY_SIZE + 3];
    size_t n = 0;
    phg_status rc = PHG_ERR_MASTER_KEY;

    assert(key != NULL && (text != NULL || len == 0));
    if (len != PHG_FERNET_KEY_TEXT_LEN)
        goto out;
    if (phg_base64_decode(text, len, buf, sizeof buf, &n, PHG_B64_URL) != PHG_OK ||
        n != PHG_FERNET_KEY_SIZE)
        goto out;
    memcpy(key, buf, PHG_FERNET_KEY_SIZE);
    rc = PHG_OK;
out:
    phg_wipe(buf, sizeof buf);
    if (rc != PHG_OK)
        phg_wipe(key, PHG_FERNET_KEY_SIZE);
    return rc;
}

phg_status phg_fernet_key_generate(char text[PHG_FERNET_KEY_TEXT_LEN + 1])
{
    uint8_t key[PHG_FERNET_KEY_SIZE];
    phg_status rc;

    assert(text != NULL);
    rc = phg_random_bytes(key, sizeof key);
    if (rc == PHG_OK)
        phg_base64_encode(key, sizeof key, text, PHG_B64_URL);
    phg_wipe(key, sizeof key);
    return rc;
}

static size_t raw_len(size_t pt_len)
{
    return FERNET_HEADER + (pt_len / 16 + 1) * 16 + FERNET_MAC;
}

size_t phg_fernet_token_len(size_t pt_len)
{
    return phg_base64_encoded_len(raw_len(pt_len), PHG_B64_URL);
}

/* AES-128-CBC with PKCS#7 padding, one shot. */
static phg_status cbc(int enc, const uint8_t key[16], const uint8_t iv[16], const uint8_t *in,
                      size_t in_len, uint8_t *out, size_t *out_len)
{
    const EVP_CIPHER *cipher = phg_internal_aes128cbc();
    EVP_CIPHER_CTX *ctx;
    int n1 = 0, n2 = 0;
    phg_status rc = PHG_ERR_INTERNAL;

    if (cipher == NULL || in_len > INT32_MAX - 32)
        return PHG_ERR_INTERNAL;
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return PHG_ERR_NOMEM;
    if (EVP_CipherInit_ex(ctx, cipher, NULL, key, iv, enc) != 1)
        goto out;
    if (EVP_CipherUpdate(ctx, out, &n1, in, (int)in_len) != 1)
        goto out;
    /* On decryption a bad padding fails here: an authentication failure,
     * though the MAC was checked first so only a key mix-up gets this far. */
    if (EVP_CipherFinal_ex(ctx, out + n1, &n2) != 1) {
        rc = enc ? PHG_ERR_INTERNAL : PHG_ERR_AUTH;
        goto out;
    }
    *out_len = (size_t)n1 + (size_t)n2;
    rc = PHG_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

phg_status phg_fernet_encrypt(const uint8_t key[PHG_FERNET_KEY_SIZE], const uint8_t *pt,
                              size_t pt_len, uint64_t now_s, const uint8_t *iv, char *out,
                              size_t out_cap, size_t *out_len)
{
    phg_status rc;
    size_t rlen = raw_len(pt_len), ct_len = 0;
    uint8_t *raw = NULL;
    int i;

    assert(key != NULL && out != NULL && out_len != NULL && (pt != NULL || pt_len == 0));
    *out_len = 0;
    if (pt_len > PHG_FERNET_MAX_TOKEN_LEN || phg_fernet_token_len(pt_len) > PHG_FERNET_MAX_TOKEN_LEN)
        return PHG_ERR_TOO_LARGE;
    if (out_cap < phg_fernet_token_len(pt_len) + 1)
        return PHG_ERR_BUFFER_TOO_SMALL;
    raw = malloc(rlen);
    if (raw == NULL)
        return PHG_ERR_NOMEM;
    raw[0] = FERNET_VERSION;
    for (i = 0; i < 8; i++)
        raw[1 + i] = (uint8_t)(now_s >> (56 - 8 * i));
    if (iv != NULL) {
        memcpy(raw + 9, iv, 16);
    } else {
        rc = phg_random_bytes(raw + 9, 16);
        if (rc != PHG_OK)
            goto out;
    }
    rc = cbc(1, key + 16, raw + 9, pt, pt_len, raw + FERNET_HEADER, &ct_len);
    if (rc != PHG_OK)
        goto out;
    assert(FERNET_HEADER + ct_len + FERNET_MAC == rlen);
    rc = phg_hmac_sha256(key, 16, raw, FERNET_HEADER + ct_len, raw + FERNET_HEADER + ct_len);
    if (rc != PHG_OK)
        goto out;
    *out_len = phg_base64_encode(raw, rlen, out, PHG_B64_URL);
out:
    phg_wipe(raw, rlen);
    free(raw);
    return rc;
}

phg_status phg_fernet_decrypt(const uint8_t key[PHG_FERNET_KEY_SIZE], const char *token,
                              size_t token_len, uint64_t now_s, uint64_t ttl_s, uint8_t *out,
                              size_t out_cap, size_t *out_len)
{
    phg_status rc = PHG_ERR_AUTH;
    uint8_t *raw = NULL, *pt = NULL, mac[FERNET_MAC];
    size_t raw_cap = 0, rlen = 0, ct_len = 0, pt_len = 0;
    uint64_t ts = 0;
    int i;

    assert(key != NULL && out_len != NULL && (token != NULL || token_len == 0));
    assert(out != NULL || out_cap == 0);
    *out_len = 0;
    if (token_len > PHG_FERNET_MAX_TOKEN_LEN)
        goto out;
    raw_cap = token_len / 4 * 3 + 3;
    raw = malloc(raw_cap);
    if (raw == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    if (phg_base64_decode(token, token_len, raw, raw_cap, &rlen, PHG_B64_URL) != PHG_OK)
        goto out;
    if (rlen < FERNET_HEADER + 16 + FERNET_MAC || (rlen - FERNET_HEADER - FERNET_MAC) % 16 != 0)
        goto out;
    if (raw[0] != FERNET_VERSION)
        goto out;
    for (i = 0; i < 8; i++)
        ts = ts << 8 | raw[1 + i];
    if (ttl_s > 0) {
        if (ts + ttl_s < ts || ts + ttl_s < now_s) /* expired (or overflow) */
            goto out;
        if (now_s + FERNET_MAX_SKEW_S < ts) /* from the far future */
            goto out;
    }
    ct_len = rlen - FERNET_HEADER - FERNET_MAC;
    rc = phg_hmac_sha256(key, 16, raw, FERNET_HEADER + ct_len, mac);
    if (rc != PHG_OK)
        goto out;
    rc = PHG_ERR_AUTH;
    if (!phg_ct_equal(mac, raw + FERNET_HEADER + ct_len, FERNET_MAC))
        goto out;
    pt = malloc(ct_len);
    if (pt == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    rc = cbc(0, key + 16, raw + 9, raw + FERNET_HEADER, ct_len, pt, &pt_len);
    if (rc != PHG_OK)
        goto out;
    if (pt_len > out_cap) {
        rc = PHG_ERR_BUFFER_TOO_SMALL;
        goto out;
    }
    if (pt_len > 0)
        memcpy(out, pt, pt_len);
    *out_len = pt_len;
out:
    if (rc != PHG_OK && out_cap > 0)
        phg_wipe(out, out_cap);
    if (pt != NULL) {
        phg_wipe(pt, ct_len);
        free(pt);
    }
    phg_wipe(raw, raw_cap);
    phg_wipe(mac, sizeof mac);
    free(raw);
    return rc;
}
