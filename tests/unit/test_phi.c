/*
 * tests/unit/test_phi.c: PHI field encryption (include/phigate/phi.h, the
 * "fields" part) against its header contract and docs/formats.md section 5:
 * round trips and the exact text shape, an independent re-implementation of
 * the v1 format from the primitives of crypto.h (both directions), the worked
 * example of formats.md 5.6 / 6.1 (checked separately with pyca/cryptography),
 * tampering, truncation, contexts, bad input, rewrap, batches, the derived-key
 * cache and concurrent use with rotation.
 *
 * Keyring management (parsing, rotate/destroy rules, files) is in
 * test_keyring.c; this file uses a keyring only as the key source.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "phigate/crypto.h"
#include "phigate/phi.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define EXPECT_RC(got, want)                                                                       \
    do {                                                                                           \
        phg_status got_ = (got), want_ = (want);                                                   \
        EXPECT(got_ == want_, "%s: got %s, want %s", #got, phg_status_name(got_),                  \
               phg_status_name(want_));                                                            \
    } while (0)

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char KIDCHARS[] = "abcdefghijklmnopqrstuvwxyz0123456789";
static const char CTX[] = "user=42;field=hrv";
#define CTX_LEN (sizeof CTX - 1)

/* ---- helpers ------------------------------------------------------------------ */

typedef struct fixture {
    char mk_text[PHG_FERNET_KEY_TEXT_LEN + 1];
    uint8_t mk_bytes[PHG_FERNET_KEY_SIZE];
    phg_masterkeys *mk;
    phg_keyring *kr;
} fixture;

/* A fresh master key and a keyring with the given cache size under it. */
static void fixture_open(fixture *f, size_t cache_entries)
{
    phg_keyring_options opts;
    memset(f, 0, sizeof *f);
    EXPECT_RC(phg_fernet_key_generate(f->mk_text), PHG_OK);
    EXPECT_RC(phg_fernet_key_decode(f->mk_text, strlen(f->mk_text), f->mk_bytes), PHG_OK);
    EXPECT_RC(phg_phi_masterkeys_parse(f->mk_text, strlen(f->mk_text), &f->mk), PHG_OK);
    phg_keyring_options_init(&opts);
    opts.cache_entries = cache_entries;
    EXPECT_RC(phg_keyring_create(f->mk, &opts, &f->kr), PHG_OK);
}

static void fixture_close(fixture *f)
{
    phg_keyring_free(f->kr);
    phg_phi_masterkeys_free(f->mk);
    memset(f, 0, sizeof *f);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    EXPECT(p != NULL, "out of memory (%zu bytes)", n);
    return p;
}

static void fill_random(uint8_t *p, size_t n)
{
    EXPECT_RC(phg_random_bytes(p, n), PHG_OK);
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) {
            return 0;
        }
    }
    return 1;
}

static int in_set(char c, const char *set)
{
    return c != '\0' && strchr(set, c) != NULL;
}

/* ceil(4 * m / 3): the unpadded base64 length of m bytes. */
static size_t b64_nopad_len(size_t m)
{
    return (4 * m + 2) / 3;
}

/* Encrypt (pt, n) under ctx; returns a malloc'd ciphertext and its length. */
static char *encrypt_new(phg_keyring *kr, const char *ctx, size_t ctx_len, const uint8_t *pt,
                         size_t n, size_t *ct_len)
{
    size_t cap = PHG_PHI_CIPHERTEXT_MAX_LEN(n);
    char *ct = xmalloc(cap + 1);
    EXPECT_RC(phg_phi_encrypt(kr, ctx, ctx_len, pt, n, ct, cap, ct_len), PHG_OK);
    EXPECT(*ct_len <= cap, "ciphertext length %zu over the bound %zu", *ct_len, cap);
    ct[*ct_len] = '\0';
    return ct;
}

/* Decrypt and compare with the expected plaintext. */
static void expect_opens(phg_keyring *kr, const char *ctx, size_t ctx_len, const char *ct,
                         size_t ct_len, const uint8_t *pt, size_t n)
{
    uint8_t *out = xmalloc(ct_len);
    size_t out_len = 12345;
    phg_status rc = phg_phi_decrypt(kr, ctx, ctx_len, ct, ct_len, out, ct_len, &out_len);
    EXPECT(rc == PHG_OK, "decrypt failed: %s", phg_status_name(rc));
    EXPECT(out_len == n, "decrypted %zu bytes, want %zu", out_len, n);
    EXPECT(n == 0 || memcmp(out, pt, n) == 0, "decrypted bytes differ");
    free(out);
}

/*
 * Decrypt a text that must fail with `want`; on failure the output must be
 * wiped (zero) and out_len 0. Returns 0 if all of that held, otherwise 1 and
 * a description in why (so callers can gather every bad case before failing).
 */
static int decrypt_fails(phg_keyring *kr, const char *ctx, size_t ctx_len, const char *ct,
                         size_t ct_len, phg_status want, char *why, size_t why_cap)
{
    size_t cap = ct_len + 64;
    uint8_t *out = xmalloc(cap);
    size_t out_len = 777;
    phg_status rc;
    int bad = 0;

    memset(out, 0xA5, cap);
    rc = phg_phi_decrypt(kr, ctx, ctx_len, ct, ct_len, out, cap, &out_len);
    if (rc != want) {
        snprintf(why, why_cap, "got %s, want %s", phg_status_name(rc), phg_status_name(want));
        bad = 1;
    } else if (out_len != 0) {
        snprintf(why, why_cap, "out_len %zu after failure", out_len);
        bad = 1;
    } else if (!all_zero(out, cap)) {
        snprintf(why, why_cap, "output not wiped after %s", phg_status_name(rc));
        bad = 1;
    }
    free(out);
    return bad;
}

static void expect_decrypt_fails(phg_keyring *kr, const char *ctx, size_t ctx_len, const char *ct,
                                 size_t ct_len, phg_status want)
{
    char why[128];
    if (decrypt_fails(kr, ctx, ctx_len, ct, ct_len, want, why, sizeof why)) {
        fail_msg("decrypt of \"%.*s\" (context len %zu): %s", (int)(ct_len > 80 ? 80 : ct_len),
                 ct, ctx_len, why);
    }
}

/* Where the kid and the data of a well-formed text are. */
static void split_ct(const char *ct, size_t ct_len, size_t *kid_len, size_t *data_off)
{
    const char *dot;
    EXPECT(ct_len > 6 && memcmp(ct, "phi1.", 5) == 0, "no phi1. prefix");
    dot = memchr(ct + 5, '.', ct_len - 5);
    EXPECT(dot != NULL, "no second dot");
    *kid_len = (size_t)(dot - (ct + 5));
    *data_off = (size_t)(dot - ct) + 1;
}

/* The DEK of kid, read from the keyring's JSON and unwrapped with the master key. */
static void dek_of(const fixture *f, const char *kid, uint8_t dek[32])
{
    char *text = NULL;
    size_t text_len = 0, i, got = 0;
    json_error_t jerr;
    json_t *root, *keys;
    const char *wrapped = NULL;
    uint8_t buf[128];

    EXPECT_RC(phg_keyring_to_json(f->kr, &text, &text_len), PHG_OK);
    root = json_loadb(text, text_len, 0, &jerr);
    EXPECT(root != NULL, "keyring JSON does not parse: %s", jerr.text);
    keys = json_object_get(root, "keys");
    EXPECT(json_is_array(keys), "no keys array");
    for (i = 0; i < json_array_size(keys); i++) {
        json_t *k = json_array_get(keys, i);
        if (strcmp(json_string_value(json_object_get(k, "kid")), kid) == 0) {
            wrapped = json_string_value(json_object_get(k, "wrapped"));
        }
    }
    EXPECT(wrapped != NULL, "kid %s has no wrapped DEK in the JSON", kid);
    EXPECT(strlen(wrapped) == 140, "wrapped DEK is %zu chars, want 140", strlen(wrapped));
    EXPECT_RC(phg_fernet_decrypt(f->mk_bytes, wrapped, strlen(wrapped), 0, 0, buf, sizeof buf,
                                 &got),
              PHG_OK);
    EXPECT(got == 32, "unwrapped DEK is %zu bytes", got);
    memcpy(dek, buf, 32);
    phg_wipe(buf, sizeof buf);
    json_decref(root);
    free(text);
}

/* field_key = HKDF-SHA256(DEK, salt empty, info "phigate/phi/v1" 00 context, 32). */
static void field_key(const uint8_t dek[32], const char *ctx, size_t ctx_len, uint8_t key[32])
{
    uint8_t info[15 + PHG_PHI_CONTEXT_MAX];
    EXPECT(ctx_len <= PHG_PHI_CONTEXT_MAX, "context too long for the helper");
    memcpy(info, "phigate/phi/v1", 14);
    info[14] = 0x00;
    memcpy(info + 15, ctx, ctx_len);
    EXPECT_RC(phg_hkdf_sha256(dek, 32, NULL, 0, info, 15 + ctx_len, key, 32), PHG_OK);
}

/* Build "phi1.<kid>.<b64url(nonce||ct||tag)>" with the primitives only. */
static char *build_ct(const uint8_t dek[32], const char *kid, const char *aad_kid,
                      const char *ctx, size_t ctx_len, const uint8_t nonce[12],
                      const uint8_t *pt, size_t n, size_t *ct_len)
{
    uint8_t key[32];
    char aad[64];
    size_t raw_len = 12 + n + 16, kid_len = strlen(kid), pos;
    uint8_t *raw = xmalloc(raw_len);
    char *ct = xmalloc(6 + kid_len + phg_base64_encoded_len(raw_len, PHG_B64_URL_NOPAD) + 1);

    field_key(dek, ctx, ctx_len, key);
    snprintf(aad, sizeof aad, "phi1.%s", aad_kid);
    memcpy(raw, nonce, 12);
    EXPECT_RC(phg_aes_gcm_encrypt(key, 32, nonce, 12, (const uint8_t *)aad, strlen(aad), pt, n,
                                  raw + 12, raw + 12 + n),
              PHG_OK);
    pos = (size_t)sprintf(ct, "phi1.%s.", kid);
    pos += phg_base64_encode(raw, raw_len, ct + pos, PHG_B64_URL_NOPAD);
    *ct_len = pos;
    free(raw);
    phg_wipe(key, sizeof key);
    return ct;
}

/* ---- round trips and the shape of the text ------------------------------------ */

static void test_round_trip_sizes(void **state)
{
    static const size_t sizes[] = {0, 1, 15, 16, 17, 64, 1000, 65536, 1u << 20};
    char primary[PHG_PHI_KID_MAX + 1];
    fixture f;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    EXPECT_RC(phg_keyring_primary(f.kr, primary), PHG_OK);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s], len1 = 0, len2 = 0, kid_len = 0, data_off = 0;
        uint8_t *pt = xmalloc(n);
        char *ct1, *ct2;

        fill_random(pt, n);
        ct1 = encrypt_new(f.kr, CTX, CTX_LEN, pt, n, &len1);
        ct2 = encrypt_new(f.kr, CTX, CTX_LEN, pt, n, &len2);

        /* phi1.<kid>.<base64url-nopad>, kid = the primary */
        split_ct(ct1, len1, &kid_len, &data_off);
        EXPECT(kid_len == strlen(primary) && memcmp(ct1 + 5, primary, kid_len) == 0,
               "n=%zu: kid in text is not the primary %s", n, primary);
        for (size_t i = data_off; i < len1; i++) {
            EXPECT(in_set(ct1[i], B64URL), "n=%zu: char %zu (0x%02x) not base64url", n, i,
                   (unsigned char)ct1[i]);
        }
        EXPECT(len1 == 5 + kid_len + 1 + b64_nopad_len(n + 28),
               "n=%zu: length %zu, want %zu", n, len1, 5 + kid_len + 1 + b64_nopad_len(n + 28));
        EXPECT(len1 <= PHG_PHI_CIPHERTEXT_MAX_LEN(n), "n=%zu: over PHG_PHI_CIPHERTEXT_MAX_LEN",
               n);
        EXPECT(len2 == len1, "n=%zu: two lengths differ", n);
        EXPECT(memcmp(ct1, ct2, len1) != 0, "n=%zu: two encryptions are identical", n);
        /* The nonces (first 16 characters of data encode the first 12 bytes) differ. */
        EXPECT(memcmp(ct1 + data_off, ct2 + data_off, 16) != 0, "n=%zu: nonce repeated", n);

        expect_opens(f.kr, CTX, CTX_LEN, ct1, len1, pt, n);
        expect_opens(f.kr, CTX, CTX_LEN, ct2, len2, pt, n);

        /* An output buffer of exactly n bytes is enough. */
        {
            uint8_t *out = xmalloc(n);
            size_t out_len = 1;
            EXPECT_RC(phg_phi_decrypt(f.kr, CTX, CTX_LEN, ct1, len1, out, n, &out_len), PHG_OK);
            EXPECT(out_len == n && (n == 0 || memcmp(out, pt, n) == 0), "n=%zu: exact cap", n);
            free(out);
        }
        free(ct1);
        free(ct2);
        free(pt);
    }
    fixture_close(&f);
}

/* The full 16 MiB limit is inclusive; one byte more is refused. */
static void test_plaintext_limit(void **state)
{
    size_t n = PHG_PHI_PLAINTEXT_MAX, cap = PHG_PHI_CIPHERTEXT_MAX_LEN(n + 1), ct_len = 99;
    uint8_t *pt = calloc(1, n + 1);
    char *ct = xmalloc(cap);
    fixture f;
    (void)state;

    EXPECT(pt != NULL, "out of memory");
    fixture_open(&f, 16);
    EXPECT_RC(phg_phi_encrypt(f.kr, CTX, CTX_LEN, pt, n + 1, ct, cap, &ct_len),
              PHG_ERR_TOO_LARGE);
    EXPECT(ct_len == 0, "out_len %zu after TOO_LARGE", ct_len);
    pt[0] = 1;
    pt[n - 1] = 2;
    EXPECT_RC(phg_phi_encrypt(f.kr, CTX, CTX_LEN, pt, n, ct, cap, &ct_len), PHG_OK);
    expect_opens(f.kr, CTX, CTX_LEN, ct, ct_len, pt, n);
    fixture_close(&f);
    free(ct);
    free(pt);
}

/* ---- the v1 format, checked from the primitives ---------------------------------- */

static void test_independent_decrypt(void **state)
{
    static const char pt[] = "heart rate variability: 58.0 ms";
    size_t n = sizeof pt - 1, ct_len = 0, kid_len = 0, data_off = 0, raw_len = 0;
    uint8_t dek[32], key[32], raw[256], out[256];
    char kid[PHG_PHI_KID_MAX + 1], aad[64];
    fixture f;
    char *ct;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    ct = encrypt_new(f.kr, CTX, CTX_LEN, (const uint8_t *)pt, n, &ct_len);
    split_ct(ct, ct_len, &kid_len, &data_off);
    EXPECT(kid_len <= PHG_PHI_KID_MAX, "kid too long");
    memcpy(kid, ct + 5, kid_len);
    kid[kid_len] = '\0';

    EXPECT_RC(phg_base64_decode(ct + data_off, ct_len - data_off, raw, sizeof raw, &raw_len,
                                PHG_B64_URL_NOPAD),
              PHG_OK);
    EXPECT(raw_len == 12 + n + 16, "decoded %zu bytes, want %zu", raw_len, 12 + n + 16);

    dek_of(&f, kid, dek);
    field_key(dek, CTX, CTX_LEN, key);
    snprintf(aad, sizeof aad, "phi1.%s", kid);
    EXPECT_RC(phg_aes_gcm_decrypt(key, 32, raw, 12, (const uint8_t *)aad, strlen(aad), raw + 12, n,
                                  raw + raw_len - 16, out),
              PHG_OK);
    EXPECT(memcmp(out, pt, n) == 0, "independent decryption gives other bytes");

    /* The AAD is exactly "phi1.<kid>": without it, or with the dot, the tag fails. */
    EXPECT_RC(phg_aes_gcm_decrypt(key, 32, raw, 12, NULL, 0, raw + 12, n, raw + raw_len - 16, out),
              PHG_ERR_AUTH);
    snprintf(aad, sizeof aad, "phi1.%s.", kid);
    EXPECT_RC(phg_aes_gcm_decrypt(key, 32, raw, 12, (const uint8_t *)aad, strlen(aad), raw + 12, n,
                                  raw + raw_len - 16, out),
              PHG_ERR_AUTH);
    /* And the key depends on the context. */
    field_key(dek, "user=43;field=hrv", CTX_LEN, key);
    snprintf(aad, sizeof aad, "phi1.%s", kid);
    EXPECT_RC(phg_aes_gcm_decrypt(key, 32, raw, 12, (const uint8_t *)aad, strlen(aad), raw + 12, n,
                                  raw + raw_len - 16, out),
              PHG_ERR_AUTH);

    phg_wipe(dek, sizeof dek);
    phg_wipe(key, sizeof key);
    free(ct);
    fixture_close(&f);
}

static void test_independent_encrypt(void **state)
{
    static const char ctx2[] = "user=7;field=diagnosis";
    uint8_t dek_old[32], dek_new[32], nonce[12], pt[100];
    char kid_old[PHG_PHI_KID_MAX + 1], kid_new[PHG_PHI_KID_MAX + 1];
    size_t ct_len = 0;
    fixture f;
    char *ct;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    fill_random(pt, sizeof pt);
    EXPECT_RC(phg_keyring_primary(f.kr, kid_old), PHG_OK);
    dek_of(&f, kid_old, dek_old);

    for (size_t n = 0; n <= sizeof pt; n += 25) {
        fill_random(nonce, sizeof nonce);
        ct = build_ct(dek_old, kid_old, kid_old, ctx2, strlen(ctx2), nonce, pt, n, &ct_len);
        expect_opens(f.kr, ctx2, strlen(ctx2), ct, ct_len, pt, n);
        expect_decrypt_fails(f.kr, CTX, CTX_LEN, ct, ct_len, PHG_ERR_AUTH);
        free(ct);
    }

    /* After a rotation, a hand-made text under the old (decrypt-only) and the new key. */
    EXPECT_RC(phg_keyring_rotate(f.kr, kid_new), PHG_OK);
    dek_of(&f, kid_new, dek_new);
    EXPECT(memcmp(dek_new, dek_old, 32) != 0, "rotation kept the DEK");
    fill_random(nonce, sizeof nonce);
    ct = build_ct(dek_old, kid_old, kid_old, ctx2, strlen(ctx2), nonce, pt, 40, &ct_len);
    expect_opens(f.kr, ctx2, strlen(ctx2), ct, ct_len, pt, 40);
    free(ct);
    ct = build_ct(dek_new, kid_new, kid_new, ctx2, strlen(ctx2), nonce, pt, 40, &ct_len);
    expect_opens(f.kr, ctx2, strlen(ctx2), ct, ct_len, pt, 40);
    free(ct);

    /* The kid is bound through the AAD: the new key's text relabelled as the old kid, and
     * a text whose AAD names another kid than its header, both fail. */
    ct = build_ct(dek_new, kid_old, kid_old, ctx2, strlen(ctx2), nonce, pt, 40, &ct_len);
    expect_decrypt_fails(f.kr, ctx2, strlen(ctx2), ct, ct_len, PHG_ERR_AUTH);
    free(ct);
    ct = build_ct(dek_new, kid_new, kid_old, ctx2, strlen(ctx2), nonce, pt, 40, &ct_len);
    expect_decrypt_fails(f.kr, ctx2, strlen(ctx2), ct, ct_len, PHG_ERR_AUTH);
    free(ct);

    phg_wipe(dek_old, sizeof dek_old);
    phg_wipe(dek_new, sizeof dek_new);
    fixture_close(&f);
}

/*
 * formats.md 6.1 (keyring) and 5.6 (ciphertext). These values were checked
 * with pyca/cryptography (Fernet, HKDF, AESGCM) independently of phigate.
 */
static const char SPEC_MASTER_KEY[] = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
static const char SPEC_KEYRING[] =
    "{\n"
    "  \"format\": \"phigate-keyring\",\n"
    "  \"version\": 1,\n"
    "  \"primary\": \"k7h2p9d4w6e\",\n"
    "  \"keys\": [\n"
    "    {\n"
    "      \"kid\": \"k1b5n8c3t0r\",\n"
    "      \"state\": \"destroyed\",\n"
    "      \"created\": \"2026-01-05T09:00:00Z\"\n"
    "    },\n"
    "    {\n"
    "      \"kid\": \"kq3v8x1m0za\",\n"
    "      \"state\": \"decrypt-only\",\n"
    "      \"created\": \"2026-06-01T12:00:00Z\",\n"
    "      \"wrapped\": "
    "\"gAAAAABqHXRAoKGio6SlpqeoqaqrrK2urzio_Qi7jQ6fwAihy-MwgIlGm-YUdqPeWOoYSSpH-"
    "HyVxONtbyUeWJVJSO1bEXFVTU2GwWTwM2aDKFIIkdRLufjAeAPWzhz2JQXSXl50U24Q\"\n"
    "    },\n"
    "    {\n"
    "      \"kid\": \"k7h2p9d4w6e\",\n"
    "      \"state\": \"active\",\n"
    "      \"created\": \"2026-11-27T18:50:00Z\",\n"
    "      \"wrapped\": "
    "\"gAAAAABrCdDYsLGys7S1tre4ubq7vL2-v0W3fJuFuRmGXqa2ezCVtrtNYa8dis4e2m0_0RPDKBIhx5_ZD-"
    "KnSOWyvJ6mJpOofjnd7kwBCshNoDOr7mhzfVpsbRTXXc0MO1U2TU1x-aU6\"\n"
    "    }\n"
    "  ]\n"
    "}\n";
static const char SPEC_CT[] = "phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA";

static void test_spec_worked_example(void **state)
{
    static const uint8_t nonce[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    const char *why = NULL;
    uint8_t dek[32], out[64];
    size_t out_len = 0, ct_len = 0;
    char *ct;
    (void)state;

    EXPECT_RC(phg_phi_masterkeys_parse(SPEC_MASTER_KEY, strlen(SPEC_MASTER_KEY), &mk), PHG_OK);
    EXPECT_RC(phg_keyring_from_json(SPEC_KEYRING, strlen(SPEC_KEYRING), mk, NULL, &kr, &why),
              PHG_OK);
    EXPECT(why == NULL, "why set on success");
    EXPECT_RC(phg_phi_decrypt(kr, CTX, CTX_LEN, SPEC_CT, strlen(SPEC_CT), out, sizeof out,
                              &out_len),
              PHG_OK);
    EXPECT(out_len == 4 && memcmp(out, "58.0", 4) == 0, "worked example does not give 58.0");
    expect_decrypt_fails(kr, "user=43;field=hrv", CTX_LEN, SPEC_CT, strlen(SPEC_CT),
                         PHG_ERR_AUTH);

    /* The primitives, with the documented DEK and fixed nonce, give the same text. */
    for (int i = 0; i < 32; i++) {
        dek[i] = (uint8_t)(0x40 + i);
    }
    ct = build_ct(dek, "k7h2p9d4w6e", "k7h2p9d4w6e", CTX, CTX_LEN, nonce, (const uint8_t *)"58.0",
                  4, &ct_len);
    EXPECT(ct_len == strlen(SPEC_CT) && memcmp(ct, SPEC_CT, ct_len) == 0,
           "primitives give %s", ct);
    free(ct);

    /* The same plaintext under the decrypt-only key (DEK 20..3f) opens; under the
     * destroyed kid it fails as any other authentication failure. */
    for (int i = 0; i < 32; i++) {
        dek[i] = (uint8_t)(0x20 + i);
    }
    ct = build_ct(dek, "kq3v8x1m0za", "kq3v8x1m0za", CTX, CTX_LEN, nonce,
                  (const uint8_t *)"58.0", 4, &ct_len);
    expect_opens(kr, CTX, CTX_LEN, ct, ct_len, (const uint8_t *)"58.0", 4);
    free(ct);
    ct = build_ct(dek, "k1b5n8c3t0r", "k1b5n8c3t0r", CTX, CTX_LEN, nonce,
                  (const uint8_t *)"58.0", 4, &ct_len);
    expect_decrypt_fails(kr, CTX, CTX_LEN, ct, ct_len, PHG_ERR_AUTH);
    free(ct);

    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
}

/* ---- tampering ------------------------------------------------------------------ */

/* Report up to a few bad cases, then fail once with the count. */
typedef struct failures {
    int count;
    char first[12][200];
} failures;

static void note_failure(failures *fl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_failure(failures *fl, const char *fmt, ...)
{
    va_list ap;
    if (fl->count < 12) {
        va_start(ap, fmt);
        vsnprintf(fl->first[fl->count], sizeof fl->first[0], fmt, ap);
        va_end(ap);
    }
    fl->count++;
}

static void check_failures(const failures *fl, const char *what)
{
    if (fl->count == 0) {
        return;
    }
    for (int i = 0; i < fl->count && i < 12; i++) {
        print_error("  %s: %s\n", what, fl->first[i]);
    }
    fail_msg("%s: %d bad case(s)", what, fl->count);
}

static void test_tamper_every_character(void **state)
{
    static const char pt[] = "blood pressure 120/80";
    size_t ct_len = 0, kid_len = 0, data_off = 0;
    failures fl;
    fixture f;
    char *ct, *copy, why[128];
    (void)state;

    memset(&fl, 0, sizeof fl);
    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    ct = encrypt_new(f.kr, CTX, CTX_LEN, (const uint8_t *)pt, sizeof pt - 1, &ct_len);
    split_ct(ct, ct_len, &kid_len, &data_off);
    copy = xmalloc(ct_len + 1);

    for (size_t i = 0; i < ct_len; i++) {
        /* Two substitutes per position: from the kid alphabet in the kid, from the
         * base64url alphabet elsewhere (both for the separating dot). */
        const char *alpha = (i >= 5 && i < 5 + kid_len) ? KIDCHARS : B64URL;
        char subs[3] = {0};
        int nsubs = 0;
        if (i < 5) {
            subs[nsubs++] = ct[i] == 'x' ? 'y' : 'x';
            subs[nsubs++] = ct[i] == '.' ? ',' : '.';
        } else if (i == data_off - 1) {
            subs[nsubs++] = 'a';
            subs[nsubs++] = 'A';
        } else {
            /* the first other symbol, and one 17 places further on */
            size_t alen = strlen(alpha), at = (size_t)(strchr(alpha, ct[i]) - alpha);
            subs[nsubs++] = alpha[0] != ct[i] ? alpha[0] : alpha[1];
            subs[nsubs++] = alpha[(at + 17) % alen];
        }
        for (int s = 0; s < nsubs; s++) {
            phg_status want = i < 5 ? PHG_ERR_FORMAT : PHG_ERR_AUTH;
            memcpy(copy, ct, ct_len);
            copy[i] = subs[s];
            if (memcmp(copy, ct, ct_len) == 0) {
                note_failure(&fl, "test bug: no change at %zu", i);
                continue;
            }
            if (decrypt_fails(f.kr, CTX, CTX_LEN, copy, ct_len, want, why, sizeof why)) {
                note_failure(&fl, "position %zu '%c'->'%c': %s", i, ct[i], subs[s], why);
            }
        }
    }
    check_failures(&fl, "tamper");
    free(copy);
    free(ct);
    fixture_close(&f);
}

/* Every single bit of nonce, ciphertext and tag, re-encoded canonically. */
static void test_tamper_every_bit(void **state)
{
    static const char pt[] = "glucose 5.4 mmol/L";
    size_t ct_len = 0, kid_len = 0, data_off = 0, raw_len = 0;
    uint8_t raw[256];
    char text[512], why[128];
    failures fl;
    fixture f;
    char *ct;
    (void)state;

    memset(&fl, 0, sizeof fl);
    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    ct = encrypt_new(f.kr, CTX, CTX_LEN, (const uint8_t *)pt, sizeof pt - 1, &ct_len);
    split_ct(ct, ct_len, &kid_len, &data_off);
    EXPECT_RC(phg_base64_decode(ct + data_off, ct_len - data_off, raw, sizeof raw, &raw_len,
                                PHG_B64_URL_NOPAD),
              PHG_OK);
    for (size_t byte = 0; byte < raw_len; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            size_t len;
            raw[byte] ^= (uint8_t)(1u << bit);
            memcpy(text, ct, data_off);
            len = data_off + phg_base64_encode(raw, raw_len, text + data_off, PHG_B64_URL_NOPAD);
            raw[byte] ^= (uint8_t)(1u << bit);
            if (decrypt_fails(f.kr, CTX, CTX_LEN, text, len, PHG_ERR_AUTH, why, sizeof why)) {
                note_failure(&fl, "byte %zu bit %d: %s", byte, bit, why);
            }
        }
    }
    check_failures(&fl, "bit flip");
    free(ct);
    fixture_close(&f);
}

static void test_truncate_and_append(void **state)
{
    static const char pt[] = "weight 71.3 kg";
    static const char *const tails[] = {"A", "a", "AA", "AAA", "AAAA", "-", "_", ".", "=", "==",
                                        " ", "\n", ".AAAA"};
    size_t ct_len = 0;
    failures fl;
    fixture f;
    char *ct, *copy, why[128];
    (void)state;

    memset(&fl, 0, sizeof fl);
    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    ct = encrypt_new(f.kr, CTX, CTX_LEN, (const uint8_t *)pt, sizeof pt - 1, &ct_len);

    /* Every proper prefix: below 5 characters it no longer starts with "phi1." (format);
     * from there on it is a damaged v1 text (auth_failed, formats.md 5.5). */
    for (size_t len = 0; len < ct_len; len++) {
        phg_status want = len < 5 ? PHG_ERR_FORMAT : PHG_ERR_AUTH;
        if (decrypt_fails(f.kr, CTX, CTX_LEN, ct, len, want, why, sizeof why)) {
            note_failure(&fl, "truncated to %zu: %s", len, why);
        }
    }
    check_failures(&fl, "truncation");

    copy = xmalloc(ct_len + 16);
    for (size_t t = 0; t < sizeof tails / sizeof tails[0]; t++) {
        size_t tl = strlen(tails[t]);
        memcpy(copy, ct, ct_len);
        memcpy(copy + ct_len, tails[t], tl);
        expect_decrypt_fails(f.kr, CTX, CTX_LEN, copy, ct_len + tl, PHG_ERR_AUTH);
    }
    /* An appended NUL byte is part of the text as far as the length says. */
    memcpy(copy, ct, ct_len);
    copy[ct_len] = '\0';
    expect_decrypt_fails(f.kr, CTX, CTX_LEN, copy, ct_len + 1, PHG_ERR_AUTH);
    /* The original still opens. */
    expect_opens(f.kr, CTX, CTX_LEN, ct, ct_len, (const uint8_t *)pt, sizeof pt - 1);
    free(copy);
    free(ct);
    fixture_close(&f);
}

/* ---- contexts and bad input --------------------------------------------------------- */

static void test_context_binding(void **state)
{
    static const char pt[] = "hrv 58.0";
    char ctx[PHG_PHI_CONTEXT_MAX + 2], *ct;
    size_t ct_len = 0;
    fixture f;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    ct = encrypt_new(f.kr, CTX, CTX_LEN, (const uint8_t *)pt, sizeof pt - 1, &ct_len);
    expect_opens(f.kr, CTX, CTX_LEN, ct, ct_len, (const uint8_t *)pt, sizeof pt - 1);
    for (size_t i = 0; i < CTX_LEN; i++) {
        memcpy(ctx, CTX, CTX_LEN);
        ctx[i] ^= 0x01;
        expect_decrypt_fails(f.kr, ctx, CTX_LEN, ct, ct_len, PHG_ERR_AUTH);
    }
    /* Every proper prefix and an extension. */
    for (size_t len = 1; len < CTX_LEN; len++) {
        expect_decrypt_fails(f.kr, CTX, len, ct, ct_len, PHG_ERR_AUTH);
    }
    memcpy(ctx, CTX, CTX_LEN);
    ctx[CTX_LEN] = 'x';
    expect_decrypt_fails(f.kr, ctx, CTX_LEN + 1, ct, ct_len, PHG_ERR_AUTH);
    ctx[CTX_LEN] = '\0';
    expect_decrypt_fails(f.kr, ctx, CTX_LEN + 1, ct, ct_len, PHG_ERR_AUTH);
    free(ct);

    /* Binary contexts (with NUL bytes) are opaque bytes, compared in full. */
    {
        static const char bin_a[] = {'a', '\0', 'b'};
        static const char bin_b[] = {'a', '\0', 'c'};
        ct = encrypt_new(f.kr, bin_a, 3, (const uint8_t *)pt, sizeof pt - 1, &ct_len);
        expect_opens(f.kr, bin_a, 3, ct, ct_len, (const uint8_t *)pt, sizeof pt - 1);
        expect_decrypt_fails(f.kr, bin_b, 3, ct, ct_len, PHG_ERR_AUTH);
        expect_decrypt_fails(f.kr, bin_a, 1, ct, ct_len, PHG_ERR_AUTH);
        free(ct);
    }
    fixture_close(&f);
}

static void test_context_length(void **state)
{
    static const char pt[] = "x";
    char ctx[PHG_PHI_CONTEXT_MAX + 1], out[256], *ct;
    size_t out_len = 5, ct_len = 0;
    fixture f;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    for (size_t i = 0; i < sizeof ctx; i++) {
        ctx[i] = (char)('a' + i % 26);
    }
    /* 1 and 512 work. */
    ct = encrypt_new(f.kr, ctx, 1, (const uint8_t *)pt, 1, &ct_len);
    expect_opens(f.kr, ctx, 1, ct, ct_len, (const uint8_t *)pt, 1);
    free(ct);
    ct = encrypt_new(f.kr, ctx, PHG_PHI_CONTEXT_MAX, (const uint8_t *)pt, 1, &ct_len);
    expect_opens(f.kr, ctx, PHG_PHI_CONTEXT_MAX, ct, ct_len, (const uint8_t *)pt, 1);
    expect_decrypt_fails(f.kr, ctx, PHG_PHI_CONTEXT_MAX - 1, ct, ct_len, PHG_ERR_AUTH);

    /* 0, 513 and NULL are caller errors, on both sides. */
    EXPECT_RC(phg_phi_encrypt(f.kr, ctx, 0, (const uint8_t *)pt, 1, out, sizeof out, &out_len),
              PHG_ERR_CONTEXT);
    EXPECT(out_len == 0, "out_len %zu after CONTEXT", out_len);
    EXPECT_RC(phg_phi_encrypt(f.kr, ctx, PHG_PHI_CONTEXT_MAX + 1, (const uint8_t *)pt, 1, out,
                              sizeof out, &out_len),
              PHG_ERR_CONTEXT);
    EXPECT_RC(phg_phi_encrypt(f.kr, NULL, 5, (const uint8_t *)pt, 1, out, sizeof out, &out_len),
              PHG_ERR_CONTEXT);
    EXPECT_RC(phg_phi_encrypt(f.kr, NULL, 0, (const uint8_t *)pt, 1, out, sizeof out, &out_len),
              PHG_ERR_CONTEXT);
    expect_decrypt_fails(f.kr, ctx, 0, ct, ct_len, PHG_ERR_CONTEXT);
    expect_decrypt_fails(f.kr, ctx, PHG_PHI_CONTEXT_MAX + 1, ct, ct_len, PHG_ERR_CONTEXT);
    expect_decrypt_fails(f.kr, NULL, 5, ct, ct_len, PHG_ERR_CONTEXT);
    expect_decrypt_fails(f.kr, NULL, 0, ct, ct_len, PHG_ERR_CONTEXT);
    free(ct);
    fixture_close(&f);
}

/* Texts that do not start with "phi1." are not v1 ciphertexts at all. */
static void test_not_v1_is_format(void **state)
{
    static const char *const texts[] = {"phi2.x.y", "", "hello", "phi1", "PHI1.kabc.AAAA",
                                        "phi0.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA",
                                        " phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA",
                                        "phi1:k.AAAA"};
    char kid[PHG_PHI_KID_MAX + 1];
    fixture f;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        expect_decrypt_fails(f.kr, CTX, CTX_LEN, texts[i], strlen(texts[i]), PHG_ERR_FORMAT);
        EXPECT_RC(phg_phi_ciphertext_kid(texts[i], strlen(texts[i]), kid), PHG_ERR_FORMAT);
    }
    fixture_close(&f);
}

/*
 * Texts that start with "phi1." but are malformed after it. phi.h says FORMAT
 * only for a missing "phi1." and AUTH "for every other failure"; formats.md 5.5
 * step 3 makes a missing dot or a bad kid an auth_failed, like everything in
 * steps 3-8. phg_phi_ciphertext_kid, which only parses, answers FORMAT.
 */
static void test_malformed_v1_is_auth(void **state)
{
    static const char *const texts[] = {
        "phi1.",
        "phi1.KID.abc",
        "phi1.k7h2p9d4w6e",
        "phi1.k7h2p9d4w6e.",
        "phi1..AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA",
        "phi1.k7h2-9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA",
        "phi1.k7h2p9d4w6eaaaaaaaaaaaaaaaaaaaaaa.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA",
        "phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA=",
        "phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6He+",
        "phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldF cFZ6qBG6HeA",
        "phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeB", /* non-zero unused bits */
        "phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6",          /* 27 bytes */
    };
    static const int kid_parses[] = {0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1};
    char kid[PHG_PHI_KID_MAX + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    failures fl;
    char why[128];
    (void)state;

    /* The spec keyring, so that k7h2p9d4w6e exists and only the damage can fail. */
    memset(&fl, 0, sizeof fl);
    EXPECT_RC(phg_phi_masterkeys_parse(SPEC_MASTER_KEY, strlen(SPEC_MASTER_KEY), &mk), PHG_OK);
    EXPECT_RC(phg_keyring_from_json(SPEC_KEYRING, strlen(SPEC_KEYRING), mk, NULL, &kr, NULL),
              PHG_OK);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        phg_status rc = phg_phi_ciphertext_kid(texts[i], strlen(texts[i]), kid);
        EXPECT(rc == (kid_parses[i] ? PHG_OK : PHG_ERR_FORMAT), "ciphertext_kid(%s): %s",
               texts[i], phg_status_name(rc));
        if (decrypt_fails(kr, CTX, CTX_LEN, texts[i], strlen(texts[i]), PHG_ERR_AUTH, why,
                          sizeof why)) {
            note_failure(&fl, "\"%s\": %s", texts[i], why);
        }
    }
    check_failures(&fl, "malformed v1");
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
}

static void test_ciphertext_kid(void **state)
{
    char kid[PHG_PHI_KID_MAX + 1], primary[PHG_PHI_KID_MAX + 1];
    size_t ct_len = 0;
    fixture f;
    char *ct;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    EXPECT_RC(phg_keyring_primary(f.kr, primary), PHG_OK);
    ct = encrypt_new(f.kr, CTX, CTX_LEN, (const uint8_t *)"v", 1, &ct_len);
    EXPECT_RC(phg_phi_ciphertext_kid(ct, ct_len, kid), PHG_OK);
    EXPECT(strcmp(kid, primary) == 0, "kid %s, primary %s", kid, primary);
    EXPECT_RC(phg_phi_ciphertext_kid(SPEC_CT, strlen(SPEC_CT), kid), PHG_OK);
    EXPECT(strcmp(kid, "k7h2p9d4w6e") == 0, "kid of the spec example: %s", kid);
    free(ct);
    fixture_close(&f);
}

static void test_unknown_kid(void **state)
{
    static const char pt[] = "sensitive";
    size_t ct_len = 0, kid_len = 0, data_off = 0;
    fixture a, b;
    char *ct, *copy;
    (void)state;

    fixture_open(&a, PHG_PHI_CACHE_DEFAULT);
    fixture_open(&b, PHG_PHI_CACHE_DEFAULT);
    /* A text of keyring b means nothing to keyring a. */
    ct = encrypt_new(b.kr, CTX, CTX_LEN, (const uint8_t *)pt, sizeof pt - 1, &ct_len);
    expect_decrypt_fails(a.kr, CTX, CTX_LEN, ct, ct_len, PHG_ERR_AUTH);

    /* A well-formed kid that no keyring has, and the longest kid allowed. */
    split_ct(ct, ct_len, &kid_len, &data_off);
    copy = xmalloc(ct_len + 64);
    {
        size_t len = (size_t)sprintf(copy, "phi1.zzzzzzzzzz9.%s", ct + data_off);
        expect_decrypt_fails(b.kr, CTX, CTX_LEN, copy, len, PHG_ERR_AUTH);
        len = (size_t)sprintf(copy, "phi1.%.*s%s.%s", (int)kid_len, ct + 5,
                              &"00000000000000000000000000000000"[kid_len], ct + data_off);
        EXPECT(len == 6 + 32 + (ct_len - data_off), "test bug: kid length");
        expect_decrypt_fails(b.kr, CTX, CTX_LEN, copy, len, PHG_ERR_AUTH);
    }
    free(copy);
    free(ct);
    fixture_close(&a);
    fixture_close(&b);
}

static void test_buffer_too_small(void **state)
{
    static const size_t sizes[] = {0, 1, 31, 200};
    fixture f;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s], need = 0, len = 7, out_len = 7;
        uint8_t pt[256], out[256];
        char ct[512];
        fill_random(pt, n);
        EXPECT_RC(phg_phi_encrypt(f.kr, CTX, CTX_LEN, pt, n, ct, sizeof ct, &need), PHG_OK);
        /* One byte short on the encrypt side, then exactly enough. */
        EXPECT_RC(phg_phi_encrypt(f.kr, CTX, CTX_LEN, pt, n, ct, need - 1, &len),
                  PHG_ERR_BUFFER_TOO_SMALL);
        EXPECT(len == 0, "n=%zu: out_len %zu after BUFFER_TOO_SMALL", n, len);
        EXPECT_RC(phg_phi_encrypt(f.kr, CTX, CTX_LEN, pt, n, ct, need, &len), PHG_OK);
        EXPECT(len == need, "n=%zu: length changed", n);
        /* One byte short on the decrypt side, then exactly enough. */
        if (n > 0) {
            memset(out, 0xA5, sizeof out);
            EXPECT_RC(phg_phi_decrypt(f.kr, CTX, CTX_LEN, ct, len, out, n - 1, &out_len),
                      PHG_ERR_BUFFER_TOO_SMALL);
            EXPECT(out_len == 0, "n=%zu: out_len %zu after BUFFER_TOO_SMALL", n, out_len);
            EXPECT(all_zero(out, n - 1), "n=%zu: output not wiped", n);
            EXPECT(out[n - 1] == 0xA5, "n=%zu: wrote past out_cap", n);
        }
        EXPECT_RC(phg_phi_decrypt(f.kr, CTX, CTX_LEN, ct, len, out, n, &out_len), PHG_OK);
        EXPECT(out_len == n && (n == 0 || memcmp(out, pt, n) == 0), "n=%zu: exact cap", n);
    }
    fixture_close(&f);
}

/* ---- rewrap and destroy --------------------------------------------------------------- */

static void test_rewrap_moves_to_new_primary(void **state)
{
    static const char pt[] = "allergy: penicillin";
    char kid_old[PHG_PHI_KID_MAX + 1], kid_new[PHG_PHI_KID_MAX + 1], kid[PHG_PHI_KID_MAX + 1];
    size_t ct_len = 0, out_len = 9, cap;
    fixture f;
    char *ct, *out;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    EXPECT_RC(phg_keyring_primary(f.kr, kid_old), PHG_OK);
    ct = encrypt_new(f.kr, CTX, CTX_LEN, (const uint8_t *)pt, sizeof pt - 1, &ct_len);
    EXPECT_RC(phg_keyring_rotate(f.kr, kid_new), PHG_OK);
    EXPECT(strcmp(kid_old, kid_new) != 0, "rotation kept the kid");

    cap = ct_len + PHG_PHI_KID_MAX;
    out = xmalloc(cap);
    EXPECT_RC(phg_phi_rewrap(f.kr, CTX, CTX_LEN, ct, ct_len, out, cap, &out_len), PHG_OK);
    EXPECT_RC(phg_phi_ciphertext_kid(out, out_len, kid), PHG_OK);
    EXPECT(strcmp(kid, kid_new) == 0, "rewrapped under %s, want %s", kid, kid_new);
    expect_opens(f.kr, CTX, CTX_LEN, out, out_len, (const uint8_t *)pt, sizeof pt - 1);
    expect_opens(f.kr, CTX, CTX_LEN, ct, ct_len, (const uint8_t *)pt, sizeof pt - 1);
    /* The context is kept: the rewrapped text does not open under another one. */
    expect_decrypt_fails(f.kr, "user=43;field=hrv", CTX_LEN, out, out_len, PHG_ERR_AUTH);

    /* A wrong context is refused and nothing comes out. */
    out_len = 9;
    EXPECT_RC(phg_phi_rewrap(f.kr, "user=43;field=hrv", CTX_LEN, ct, ct_len, out, cap, &out_len),
              PHG_ERR_AUTH);
    EXPECT(out_len == 0, "out_len %zu after failed rewrap", out_len);

    /* Once the old key is destroyed, the old text can be neither opened nor rewrapped,
     * even though its field key was in the cache. */
    EXPECT_RC(phg_keyring_destroy(f.kr, kid_old), PHG_OK);
    expect_decrypt_fails(f.kr, CTX, CTX_LEN, ct, ct_len, PHG_ERR_AUTH);
    out_len = 9;
    EXPECT_RC(phg_phi_rewrap(f.kr, CTX, CTX_LEN, ct, ct_len, out, cap, &out_len), PHG_ERR_AUTH);
    EXPECT(out_len == 0, "out_len %zu after failed rewrap", out_len);
    free(out);
    free(ct);
    fixture_close(&f);
}

/* ---- batches ------------------------------------------------------------------------------ */

static void test_batches(void **state)
{
    enum { N = 6 };
    static const char *const pts[N] = {"a", "", "ccc", "dddd", "eeeee", "ffffff"};
    char long_ctx[PHG_PHI_CONTEXT_MAX + 1];
    char ctxs[N][32];
    uint8_t enc_out[N][256], dec_out[N][256];
    phg_phi_item enc[N], dec[N];
    fixture f;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    memset(long_ctx, 'c', sizeof long_ctx);
    memset(enc, 0, sizeof enc);
    for (int i = 0; i < N; i++) {
        snprintf(ctxs[i], sizeof ctxs[i], "user=%d;field=f", i);
        enc[i].context = ctxs[i];
        enc[i].context_len = strlen(ctxs[i]);
        enc[i].in = (const uint8_t *)pts[i];
        enc[i].in_len = strlen(pts[i]);
        enc[i].out = enc_out[i];
        enc[i].out_cap = sizeof enc_out[i];
        enc[i].out_len = 99;
        enc[i].status = PHG_ERR_INTERNAL;
    }

    /* All good. */
    EXPECT_RC(phg_phi_encrypt_batch(f.kr, enc, N), PHG_OK);
    for (int i = 0; i < N; i++) {
        EXPECT_RC(enc[i].status, PHG_OK);
        expect_opens(f.kr, ctxs[i], strlen(ctxs[i]), (const char *)enc_out[i], enc[i].out_len,
                     (const uint8_t *)pts[i], strlen(pts[i]));
    }
    memset(dec, 0, sizeof dec);
    for (int i = 0; i < N; i++) {
        dec[i].context = ctxs[i];
        dec[i].context_len = strlen(ctxs[i]);
        dec[i].in = enc_out[i];
        dec[i].in_len = enc[i].out_len;
        dec[i].out = dec_out[i];
        dec[i].out_cap = sizeof dec_out[i];
        dec[i].status = PHG_ERR_INTERNAL;
    }
    EXPECT_RC(phg_phi_decrypt_batch(f.kr, dec, N), PHG_OK);
    for (int i = 0; i < N; i++) {
        EXPECT_RC(dec[i].status, PHG_OK);
        EXPECT(dec[i].out_len == strlen(pts[i]) && memcmp(dec_out[i], pts[i], strlen(pts[i])) == 0,
               "item %d decrypted wrongly", i);
    }

    /* Mixed decrypt: 1 tampered, 3 bad context length, 4 wrong context, 5 too small. */
    enc_out[1][enc[1].out_len - 3] = enc_out[1][enc[1].out_len - 3] == 'A' ? 'B' : 'A';
    dec[3].context_len = 0;
    dec[4].context = ctxs[0];
    dec[4].context_len = strlen(ctxs[0]);
    dec[5].out_cap = 2;
    for (int i = 0; i < N; i++) {
        dec[i].status = PHG_ERR_INTERNAL;
        dec[i].out_len = 99;
        memset(dec_out[i], 0xA5, sizeof dec_out[i]);
    }
    EXPECT_RC(phg_phi_decrypt_batch(f.kr, dec, N), PHG_ERR_BATCH);
    EXPECT_RC(dec[0].status, PHG_OK);
    EXPECT_RC(dec[1].status, PHG_ERR_AUTH);
    EXPECT_RC(dec[2].status, PHG_OK);
    EXPECT_RC(dec[3].status, PHG_ERR_CONTEXT);
    EXPECT_RC(dec[4].status, PHG_ERR_AUTH);
    EXPECT_RC(dec[5].status, PHG_ERR_BUFFER_TOO_SMALL);
    EXPECT(dec[0].out_len == 1 && memcmp(dec_out[0], "a", 1) == 0, "good item 0 wrong");
    EXPECT(dec[2].out_len == 3 && memcmp(dec_out[2], "ccc", 3) == 0, "good item 2 wrong");
    for (int i = 1; i < N; i++) {
        if (i != 2) {
            EXPECT(dec[i].out_len == 0, "failed item %d has out_len %zu", i, dec[i].out_len);
        }
    }
    EXPECT(all_zero(dec_out[1], sizeof dec_out[1]), "tampered item's output not wiped");
    EXPECT(all_zero(dec_out[4], sizeof dec_out[4]), "wrong-context item's output not wiped");

    /* Mixed encrypt: 0 context too long, 2 NULL context, 4 output too small. */
    enc[0].context = long_ctx;
    enc[0].context_len = PHG_PHI_CONTEXT_MAX + 1;
    enc[2].context = NULL;
    enc[4].out_cap = 10;
    for (int i = 0; i < N; i++) {
        enc[i].status = PHG_ERR_INTERNAL;
        enc[i].out_len = 99;
    }
    EXPECT_RC(phg_phi_encrypt_batch(f.kr, enc, N), PHG_ERR_BATCH);
    EXPECT_RC(enc[0].status, PHG_ERR_CONTEXT);
    EXPECT_RC(enc[1].status, PHG_OK);
    EXPECT_RC(enc[2].status, PHG_ERR_CONTEXT);
    EXPECT_RC(enc[3].status, PHG_OK);
    EXPECT_RC(enc[4].status, PHG_ERR_BUFFER_TOO_SMALL);
    EXPECT_RC(enc[5].status, PHG_OK);
    for (int i = 1; i < N; i += 2) {
        expect_opens(f.kr, ctxs[i], strlen(ctxs[i]), (const char *)enc_out[i], enc[i].out_len,
                     (const uint8_t *)pts[i], strlen(pts[i]));
    }

    /* n = 0, with and without an array. */
    EXPECT_RC(phg_phi_encrypt_batch(f.kr, NULL, 0), PHG_OK);
    EXPECT_RC(phg_phi_decrypt_batch(f.kr, NULL, 0), PHG_OK);
    EXPECT_RC(phg_phi_encrypt_batch(f.kr, enc, 0), PHG_OK);
    EXPECT_RC(phg_phi_decrypt_batch(f.kr, dec, 0), PHG_OK);
    fixture_close(&f);
}

/* ---- the derived-key cache ----------------------------------------------------------------- */

enum { NCTX_CACHE = 10 };

static void round_trip_many_contexts(phg_keyring *kr)
{
    char ctx[NCTX_CACHE][32], *ct[NCTX_CACHE];
    size_t ct_len[NCTX_CACHE];
    uint8_t pt[NCTX_CACHE][8];

    for (int i = 0; i < NCTX_CACHE; i++) {
        snprintf(ctx[i], sizeof ctx[i], "user=%d;field=hr", i);
        fill_random(pt[i], sizeof pt[i]);
        ct[i] = encrypt_new(kr, ctx[i], strlen(ctx[i]), pt[i], sizeof pt[i], &ct_len[i]);
    }
    /* Oldest first: with a small cache their keys have been evicted by now. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < NCTX_CACHE; i++) {
            expect_opens(kr, ctx[i], strlen(ctx[i]), ct[i], ct_len[i], pt[i], sizeof pt[i]);
            /* and never under a neighbour's context */
            expect_decrypt_fails(kr, ctx[(i + 1) % NCTX_CACHE], strlen(ctx[(i + 1) % NCTX_CACHE]),
                                 ct[i], ct_len[i], PHG_ERR_AUTH);
        }
    }
    for (int i = 0; i < NCTX_CACHE; i++) {
        free(ct[i]);
    }
}

static void test_cache_small(void **state)
{
    phg_phi_cache_stats st0, st1, st2;
    size_t ct_len = 0;
    fixture f;
    char *ct;
    (void)state;

    fixture_open(&f, 4);
    phg_keyring_cache_stats(f.kr, &st0);
    EXPECT(st0.capacity == 4, "capacity %zu, want 4", st0.capacity);
    EXPECT(st0.entries == 0 && st0.hits == 0 && st0.misses == 0 && st0.evictions == 0,
           "a new cache is not empty");

    round_trip_many_contexts(f.kr);
    phg_keyring_cache_stats(f.kr, &st1);
    EXPECT(st1.capacity == 4, "capacity changed to %zu", st1.capacity);
    EXPECT(st1.entries <= st1.capacity, "entries %zu over capacity %zu", st1.entries,
           st1.capacity);
    EXPECT(st1.misses >= NCTX_CACHE, "misses %llu < %d distinct contexts",
           (unsigned long long)st1.misses, NCTX_CACHE);
    /* Every miss inserts one entry; at most `capacity` of them can remain. */
    EXPECT(st1.evictions + st1.capacity >= st1.misses, "evictions %llu, misses %llu",
           (unsigned long long)st1.evictions, (unsigned long long)st1.misses);
    EXPECT(st1.evictions >= NCTX_CACHE - 4, "evictions %llu", (unsigned long long)st1.evictions);

    /* The key used a moment ago is a hit. */
    ct = encrypt_new(f.kr, "user=99", 7, (const uint8_t *)"x", 1, &ct_len);
    phg_keyring_cache_stats(f.kr, &st1);
    expect_opens(f.kr, "user=99", 7, ct, ct_len, (const uint8_t *)"x", 1);
    phg_keyring_cache_stats(f.kr, &st2);
    EXPECT(st2.hits == st1.hits + 1, "hits %llu -> %llu", (unsigned long long)st1.hits,
           (unsigned long long)st2.hits);
    EXPECT(st2.misses == st1.misses, "a hit counted as a miss");
    free(ct);
    fixture_close(&f);
}

static void test_cache_default_hits(void **state)
{
    phg_phi_cache_stats st;
    fixture f;
    (void)state;

    fixture_open(&f, PHG_PHI_CACHE_DEFAULT);
    phg_keyring_cache_stats(f.kr, &st);
    EXPECT(st.capacity == PHG_PHI_CACHE_DEFAULT, "capacity %zu", st.capacity);
    round_trip_many_contexts(f.kr);
    phg_keyring_cache_stats(f.kr, &st);
    /* 10 contexts encrypted, 40 decrypts over the same 10: all but the first use hit. */
    EXPECT(st.misses == NCTX_CACHE, "misses %llu", (unsigned long long)st.misses);
    EXPECT(st.hits == 4 * NCTX_CACHE, "hits %llu", (unsigned long long)st.hits);
    EXPECT(st.evictions == 0 && st.entries == NCTX_CACHE, "evictions %llu entries %zu",
           (unsigned long long)st.evictions, st.entries);

    /* NULL options mean the defaults. */
    {
        phg_keyring *kr = NULL;
        EXPECT_RC(phg_keyring_create(f.mk, NULL, &kr), PHG_OK);
        phg_keyring_cache_stats(kr, &st);
        EXPECT(st.capacity == PHG_PHI_CACHE_DEFAULT, "NULL options: capacity %zu", st.capacity);
        phg_keyring_free(kr);
    }
    fixture_close(&f);
}

static void test_cache_disabled(void **state)
{
    phg_phi_cache_stats st;
    fixture f;
    (void)state;

    fixture_open(&f, 0);
    round_trip_many_contexts(f.kr);
    phg_keyring_cache_stats(f.kr, &st);
    EXPECT(st.capacity == 0 && st.entries == 0, "capacity %zu entries %zu", st.capacity,
           st.entries);
    EXPECT(st.hits == 0 && st.evictions == 0, "hits/evictions counted without a cache");
    fixture_close(&f);
}

/* ---- concurrency -------------------------------------------------------------------------- */

enum { NTHREADS = 8, OPS_PER_THREAD = 2000, NCTX_THREADS = 50, KEEP = 16, ROTATIONS = 4 };

/* Operations done by all workers so far; the rotator paces itself on it. */
static atomic_int ops_done;

typedef struct worker {
    phg_keyring *kr;
    const char *first_kid; /* the primary before any rotation */
    int id;
    int errors;
    int saw_new_kid; /* encrypted under a later primary */
    int opened_old_after_new; /* opened a first-kid text after seeing a later one */
    char first_error[160];
} worker;

typedef struct kept {
    char ctx[32];
    uint8_t pt[48];
    size_t pt_len;
    char ct[PHG_PHI_CIPHERTEXT_MAX_LEN(48)];
    size_t ct_len;
} kept;

static void worker_error(worker *w, const char *what, phg_status rc)
{
    if (w->errors++ == 0) {
        snprintf(w->first_error, sizeof w->first_error, "thread %d: %s (%s)", w->id, what,
                 phg_status_name(rc));
    }
}

/* Each iteration is one encrypt and one decrypt: of the fresh text, or of one kept from
 * earlier (possibly under a key rotated away since). */
static void *worker_main(void *arg)
{
    worker *w = arg;
    kept keep[KEEP];
    size_t nkept = 0;
    uint32_t x = 2463534242u ^ (uint32_t)(w->id * 7919);

    for (int i = 0; i < OPS_PER_THREAD / 2; i++) {
        kept cur;
        uint8_t out[64];
        size_t out_len = 0;
        phg_status rc;

        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        snprintf(cur.ctx, sizeof cur.ctx, "user=%u;field=f", (unsigned)(x % NCTX_THREADS));
        cur.pt_len = (x >> 8) % sizeof cur.pt;
        for (size_t j = 0; j < cur.pt_len; j++) {
            cur.pt[j] = (uint8_t)(x >> (j % 24)) ^ (uint8_t)j ^ (uint8_t)w->id;
        }
        rc = phg_phi_encrypt(w->kr, cur.ctx, strlen(cur.ctx), cur.pt, cur.pt_len, cur.ct,
                             sizeof cur.ct, &cur.ct_len);
        if (rc != PHG_OK) {
            worker_error(w, "encrypt", rc);
            continue;
        }
        atomic_fetch_add(&ops_done, 2);
        if (!w->saw_new_kid && memcmp(cur.ct + 5, w->first_kid, strlen(w->first_kid)) != 0) {
            w->saw_new_kid = 1;
        }
        if (nkept < KEEP) {
            keep[nkept++] = cur;
        } else if ((x >> 20) % 4 == 0) {
            keep[(x >> 3) % KEEP] = cur;
        }
        {
            const kept *k = ((x >> 12) % 2 == 0) ? &cur : &keep[(x >> 4) % nkept];
            rc = phg_phi_decrypt(w->kr, k->ctx, strlen(k->ctx), k->ct, k->ct_len, out, sizeof out,
                                 &out_len);
            if (rc != PHG_OK) {
                worker_error(w, "decrypt", rc);
            } else if (out_len != k->pt_len || memcmp(out, k->pt, out_len) != 0) {
                worker_error(w, "decrypt gave other bytes", PHG_OK);
            } else if (w->saw_new_kid &&
                       memcmp(k->ct + 5, w->first_kid, strlen(w->first_kid)) == 0) {
                w->opened_old_after_new = 1;
            }
        }
    }
    /* Everything kept still opens at the end. */
    for (size_t j = 0; j < nkept; j++) {
        uint8_t out[64];
        size_t out_len = 0;
        phg_status rc = phg_phi_decrypt(w->kr, keep[j].ctx, strlen(keep[j].ctx), keep[j].ct,
                                        keep[j].ct_len, out, sizeof out, &out_len);
        if (rc != PHG_OK || out_len != keep[j].pt_len ||
            memcmp(out, keep[j].pt, out_len) != 0) {
            worker_error(w, "final decrypt of a kept text", rc);
        }
    }
    return NULL;
}

typedef struct rotator {
    phg_keyring *kr;
    int done;
    phg_status rc;
} rotator;

/* Rotate at 1/6, 2/6, ... of the workers' total, so that every rotation lands
 * while they run. */
static void *rotator_main(void *arg)
{
    rotator *r = arg;
    struct timespec pause = {0, 100 * 1000};
    for (int i = 0; i < ROTATIONS; i++) {
        int due = (i + 1) * NTHREADS * OPS_PER_THREAD / (ROTATIONS + 2);
        while (atomic_load(&ops_done) < due) {
            nanosleep(&pause, NULL);
        }
        r->rc = phg_keyring_rotate(r->kr, NULL);
        if (r->rc != PHG_OK) {
            break;
        }
        r->done++;
    }
    return NULL;
}

static void run_threads(int with_rotation)
{
    pthread_t threads[NTHREADS], rot_thread;
    worker workers[NTHREADS];
    rotator rot;
    char ctx[NCTX_THREADS][32], *old[NCTX_THREADS];
    size_t old_len[NCTX_THREADS];
    char first_kid[PHG_PHI_KID_MAX + 1];
    phg_phi_cache_stats st;
    int saw_new = 0, opened_old = 0;
    fixture f;

    fixture_open(&f, 16);
    atomic_store(&ops_done, 0);
    EXPECT_RC(phg_keyring_primary(f.kr, first_kid), PHG_OK);
    /* Texts made before any thread starts, under the first primary. */
    for (int i = 0; i < NCTX_THREADS; i++) {
        snprintf(ctx[i], sizeof ctx[i], "user=%d;field=f", i);
        old[i] = encrypt_new(f.kr, ctx[i], strlen(ctx[i]), (const uint8_t *)ctx[i],
                             strlen(ctx[i]), &old_len[i]);
    }
    memset(&rot, 0, sizeof rot);
    rot.kr = f.kr;
    for (int t = 0; t < NTHREADS; t++) {
        memset(&workers[t], 0, sizeof workers[t]);
        workers[t].kr = f.kr;
        workers[t].first_kid = first_kid;
        workers[t].id = t;
        EXPECT(pthread_create(&threads[t], NULL, worker_main, &workers[t]) == 0,
               "pthread_create");
    }
    if (with_rotation) {
        EXPECT(pthread_create(&rot_thread, NULL, rotator_main, &rot) == 0, "pthread_create");
    }
    for (int t = 0; t < NTHREADS; t++) {
        pthread_join(threads[t], NULL);
    }
    if (with_rotation) {
        pthread_join(rot_thread, NULL);
        EXPECT_RC(rot.rc, PHG_OK);
        EXPECT(rot.done == ROTATIONS, "only %d rotations", rot.done);
        EXPECT(phg_keyring_count(f.kr) == 1 + ROTATIONS, "keyring has %zu keys",
               phg_keyring_count(f.kr));
    }
    for (int t = 0; t < NTHREADS; t++) {
        EXPECT(workers[t].errors == 0, "%d errors; first: %s", workers[t].errors,
               workers[t].first_error);
        saw_new += workers[t].saw_new_kid;
        opened_old += workers[t].opened_old_after_new;
    }
    if (with_rotation) {
        /* The rotations really overlapped the workers. */
        EXPECT(saw_new > 0, "no worker encrypted under a rotated-in key");
        EXPECT(opened_old > 0, "no worker opened an old text after a rotation");
    } else {
        EXPECT(saw_new == 0, "the primary changed without a rotation");
    }
    for (int i = 0; i < NCTX_THREADS; i++) {
        expect_opens(f.kr, ctx[i], strlen(ctx[i]), old[i], old_len[i], (const uint8_t *)ctx[i],
                     strlen(ctx[i]));
        free(old[i]);
    }
    phg_keyring_cache_stats(f.kr, &st);
    EXPECT(st.capacity == 16 && st.entries <= 16, "capacity %zu entries %zu", st.capacity,
           st.entries);
    EXPECT(st.evictions > 0, "no evictions: the test does not exercise eviction");
    fixture_close(&f);
}

static void test_threads(void **state)
{
    (void)state;
    run_threads(0);
}

static void test_threads_with_rotation(void **state)
{
    (void)state;
    run_threads(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_plaintext_limit),
        cmocka_unit_test(test_independent_decrypt),
        cmocka_unit_test(test_independent_encrypt),
        cmocka_unit_test(test_spec_worked_example),
        cmocka_unit_test(test_tamper_every_character),
        cmocka_unit_test(test_tamper_every_bit),
        cmocka_unit_test(test_truncate_and_append),
        cmocka_unit_test(test_context_binding),
        cmocka_unit_test(test_context_length),
        cmocka_unit_test(test_not_v1_is_format),
        cmocka_unit_test(test_malformed_v1_is_auth),
        cmocka_unit_test(test_ciphertext_kid),
        cmocka_unit_test(test_unknown_kid),
        cmocka_unit_test(test_buffer_too_small),
        cmocka_unit_test(test_rewrap_moves_to_new_primary),
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_cache_small),
        cmocka_unit_test(test_cache_default_hits),
        cmocka_unit_test(test_cache_disabled),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_threads_with_rotation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
