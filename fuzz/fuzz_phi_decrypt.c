/*
 * fuzz_phi_decrypt.c: the phi1 ciphertext parser and decryption. Input: a
 * context length byte, then context, then ciphertext text. Also checks that
 * whatever encrypts decrypts back.
 */
#include <assert.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    phg_keyring *kr = fuzz_keyring();
    size_t clen, n = 0, m = 0;
    const char *ctx, *ct;
    uint8_t *out;
    char *enc;
    phg_status st;

    if (size < 1)
        return 0;
    clen = data[0] % 64 + 1;
    if (size < 1 + clen)
        return 0;
    ctx = (const char *)data + 1;
    ct = ctx + clen;
    n = size - 1 - clen;
    out = malloc(n + 1);
    st = phg_phi_decrypt(kr, ctx, clen, ct, n, out, n, &m);
    assert(st == PHG_OK || m == 0);
    assert(st == PHG_OK || st == PHG_ERR_AUTH || st == PHG_ERR_FORMAT);
    free(out);

    /* round trip of the same bytes as plaintext */
    enc = malloc(PHG_PHI_CIPHERTEXT_MAX_LEN(n));
    out = malloc(PHG_PHI_CIPHERTEXT_MAX_LEN(n));
    if (phg_phi_encrypt(kr, ctx, clen, (const uint8_t *)ct, n, enc, PHG_PHI_CIPHERTEXT_MAX_LEN(n),
                        &m) != PHG_OK)
        abort();
    if (phg_phi_decrypt(kr, ctx, clen, enc, m, out, PHG_PHI_CIPHERTEXT_MAX_LEN(n), &m) != PHG_OK ||
        m != n || memcmp(out, ct, n) != 0)
        abort();
    free(enc);
    free(out);
    return 0;
}
