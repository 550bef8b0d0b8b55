/*
 * phigate/crypto.h: the primitives every phigate job is built from, as thin
 * wrappers over OpenSSL 3 (EVP, EVP_MAC, EVP_KDF, RAND). Nothing here is a
 * hand-written primitive; the wrappers exist so that every module uses the same
 * constant-time compare, the same wiping, strict encoders, and the same error
 * type, and so that external test vectors can be run through them.
 *
 * It also implements the public Fernet token format (used to wrap data keys)
 * on top of those primitives, and strict base64 codecs.
 *
 * Design: docs/formats.md ("Wrapped DEK", "Encodings").
 */
#ifndef PHIGATE_CRYPTO_H
#define PHIGATE_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_SHA256_SIZE 32
#define PHG_SHA1_SIZE 20
#define PHG_GCM_TAG_SIZE 16
#define PHG_GCM_IV_MAX 128 /* bytes: OpenSSL 3.0's GCM limit; longer IVs are refused */

/* Cleanse n bytes (OPENSSL_cleanse: not optimised away). p may be NULL if n is 0. */
PHG_API void phg_wipe(void *p, size_t n);

/*
 * Compare n bytes in time independent of their contents (CRYPTO_memcmp).
 * Returns 1 if equal, 0 otherwise. The only comparison used on secrets.
 */
PHG_API int phg_ct_equal(const void *a, const void *b, size_t n);

/* Fill out with n bytes from OpenSSL's CSPRNG. PHG_ERR_INTERNAL if it fails. */
PHG_API PHG_WARN_UNUSED phg_status phg_random_bytes(uint8_t *out, size_t n);

/* SHA-256 of (in, n) into out. */
PHG_API phg_status phg_sha256(const uint8_t *in, size_t n, uint8_t out[PHG_SHA256_SIZE]);

/* HMAC-SHA256 / HMAC-SHA1 of msg under key (any key length, including 0). */
PHG_API phg_status phg_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg,
                                   size_t msg_len, uint8_t out[PHG_SHA256_SIZE]);
PHG_API phg_status phg_hmac_sha1(const uint8_t *key, size_t key_len, const uint8_t *msg,
                                 size_t msg_len, uint8_t out[PHG_SHA1_SIZE]);

/*
 * HKDF-SHA256 (RFC 5869), extract and expand. An empty salt (salt_len 0) means
 * 32 zero bytes, as the RFC says. out_len must be 1..8160 (255 * 32);
 * otherwise PHG_ERR_INVALID and nothing is written. info may be up to 1024
 * bytes (OpenSSL's limit); longer gives PHG_ERR_TOO_LARGE.
 */
PHG_API phg_status phg_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt,
                                   size_t salt_len, const uint8_t *info, size_t info_len,
                                   uint8_t *out, size_t out_len);

/*
 * One-shot AES-GCM with a 16-byte tag. key_len is 16, 24 or 32; iv_len is
 * 1..PHG_GCM_IV_MAX (12 is the only length phigate itself uses). ct has room
 * for pt_len bytes; in-place (ct == pt) is allowed.
 *
 * WARNING: never reuse an (key, iv) pair. Use random 12-byte IVs and rotate
 * the key well before 2^32 messages.
 */
PHG_API phg_status phg_aes_gcm_encrypt(const uint8_t *key, size_t key_len, const uint8_t *iv,
                                       size_t iv_len, const uint8_t *aad, size_t aad_len,
                                       const uint8_t *pt, size_t pt_len, uint8_t *ct,
                                       uint8_t tag[PHG_GCM_TAG_SIZE]);

/*
 * The inverse. Returns PHG_OK, or PHG_ERR_AUTH if the tag does not verify, in
 * which case pt is wiped (all ct_len bytes set to zero) and must not be used.
 * PHG_ERR_INVALID for an unsupported key or IV length.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_aes_gcm_decrypt(const uint8_t *key, size_t key_len,
                                                       const uint8_t *iv, size_t iv_len,
                                                       const uint8_t *aad, size_t aad_len,
                                                       const uint8_t *ct, size_t ct_len,
                                                       const uint8_t tag[PHG_GCM_TAG_SIZE],
                                                       uint8_t *pt);

/* ---- base64 (RFC 4648), strict ---------------------------------------- */

typedef enum phg_b64_variant {
    PHG_B64_STD = 0,        /* + /, '=' padding required */
    PHG_B64_STD_NOPAD = 1,  /* + /, no padding allowed */
    PHG_B64_URL = 2,        /* - _, '=' padding required */
    PHG_B64_URL_NOPAD = 3,  /* - _, no padding allowed */
} phg_b64_variant;

/* Length of the encoding of n bytes (without a terminating NUL). */
PHG_API size_t phg_base64_encoded_len(size_t n, phg_b64_variant variant);

/*
 * Encode (in, n) into out, which has room for phg_base64_encoded_len(n) + 1
 * bytes; out is NUL-terminated. Returns the length written (without NUL).
 */
PHG_API size_t phg_base64_encode(const uint8_t *in, size_t n, char *out, phg_b64_variant variant);

/*
 * Decode strictly: only the variant's alphabet, exact padding rules, no
 * whitespace, and the unused bits of the last character must be zero (so
 * every byte string has exactly one accepted encoding). PHG_ERR_INVALID for
 * anything else; PHG_ERR_BUFFER_TOO_SMALL if out_cap is short. The decoded
 * size is at most (len / 4 + 1) * 3.
 */
PHG_API phg_status phg_base64_decode(const char *in, size_t len, uint8_t *out, size_t out_cap,
                                     size_t *out_len, phg_b64_variant variant);

/* ---- Fernet (the public Fernet spec, version 0x80) ---------------------- */

#define PHG_FERNET_KEY_SIZE 32     /* signing key (16) then encryption key (16) */
#define PHG_FERNET_KEY_TEXT_LEN 44 /* base64url with padding */
#define PHG_FERNET_MAX_TOKEN_LEN (1u << 20)

/*
 * Parse a Fernet key: exactly 44 characters of base64url with padding that
 * decode to 32 bytes. PHG_ERR_MASTER_KEY otherwise (key is then wiped).
 */
PHG_API PHG_WARN_UNUSED phg_status phg_fernet_key_decode(const char *text, size_t len,
                                                         uint8_t key[PHG_FERNET_KEY_SIZE]);

/* Write a new random Fernet key as 44 characters plus NUL into text. */
PHG_API phg_status phg_fernet_key_generate(char text[PHG_FERNET_KEY_TEXT_LEN + 1]);

/* Length of the token for a plaintext of pt_len bytes. */
PHG_API size_t phg_fernet_token_len(size_t pt_len);

/*
 * Make a token at time now_s (Unix seconds). iv is 16 bytes, or NULL for a
 * random one (fixed IVs exist for test vectors only). out has room for
 * phg_fernet_token_len(pt_len) + 1; it is NUL-terminated.
 */
PHG_API phg_status phg_fernet_encrypt(const uint8_t key[PHG_FERNET_KEY_SIZE], const uint8_t *pt,
                                      size_t pt_len, uint64_t now_s, const uint8_t *iv,
                                      char *out, size_t out_cap, size_t *out_len);

/*
 * Verify and open a token at time now_s. With ttl_s > 0 a token older than
 * ttl_s, or more than 60 s in the future, is refused; with ttl_s == 0 its age
 * is not checked. Every failure (bad base64, version, length, MAC, padding,
 * time) is PHG_ERR_AUTH and leaves out wiped. The MAC is checked, in constant
 * time, before anything is decrypted. out needs room for the token's payload
 * (at most its decoded length minus 57 bytes).
 */
PHG_API PHG_WARN_UNUSED phg_status phg_fernet_decrypt(const uint8_t key[PHG_FERNET_KEY_SIZE],
                                                      const char *token, size_t token_len,
                                                      uint64_t now_s, uint64_t ttl_s,
                                                      uint8_t *out, size_t out_cap,
                                                      size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_CRYPTO_H */
