/*
 * crypto_internal.h: what crypto.c shares with the other library files and
 * not with callers: the fetched algorithms and the chunked GCM helpers.
 */
#ifndef PHG_CRYPTO_INTERNAL_H
#define PHG_CRYPTO_INTERNAL_H

#include <openssl/evp.h>

#include "phigate/crypto.h"
#include "phigate/error.h"

/* The process-wide fetched ciphers, or NULL if OpenSSL cannot provide them. */
const EVP_CIPHER *phg_internal_aes256gcm(void);
const EVP_CIPHER *phg_internal_aes128cbc(void);

/* Feed AAD / data to an initialised GCM context, any length. */
phg_status phg_internal_gcm_aad(EVP_CIPHER_CTX *ctx, const uint8_t *aad, size_t aad_len);
phg_status phg_internal_gcm_update(EVP_CIPHER_CTX *ctx, const uint8_t *in, size_t len,
                                   uint8_t *out);

/* n <= 64 fresh random bytes for a nonce, from a per-thread pool that is
 * refilled from RAND_bytes and discarded in a forked child. Never repeats. */
phg_status phg_internal_nonce(uint8_t *out, size_t n);

/* phg_base64_encode without the terminating NUL: out needs exactly
 * phg_base64_encoded_len(n) bytes. Returns that length. */
size_t phg_internal_base64_encode(const uint8_t *in, size_t n, char *out,
                                  phg_b64_variant variant);

#endif
