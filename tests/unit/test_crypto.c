/*
 * tests/unit/test_crypto.c: the primitives of include/phigate/crypto.h against
 * external vectors (Wycheproof, RFC 5869, RFC 4231; see
 * ../shared/vectors/README.md) and against their header contracts.
 *
 * Every vector file is run whole: each test counts the vectors it ran and
 * checks the count against the file's numberOfTests, so a group that is
 * skipped by mistake fails the test instead of shrinking it. AES key wrap is
 * out of scope (the library does not implement it). Fernet is in
 * test_fernet.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "phigate/crypto.h"
#include "vectors.h"

/* Fail with a message naming the vector, so a report says which one broke. */
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static int all_bytes_are(const uint8_t *p, size_t n, uint8_t value)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != value) {
            return 0;
        }
    }
    return 1;
}

/* The file's numberOfTests; every file in scope has one. */
static size_t expected_count(const json_t *root)
{
    long long n = phg_test_int(root, "numberOfTests");
    assert_true(n > 0);
    return (size_t)n;
}

/* ---- AES-GCM: wycheproof/aes_gcm_test.json -------------------------------- */

/*
 * "valid": encrypt gives exactly ct || tag (also in place), decrypt gives msg,
 * and the same vector with one tag bit flipped fails with PHG_ERR_AUTH.
 */
static void gcm_check_valid(long long tc, const uint8_t *key, size_t key_len, const uint8_t *iv,
                            size_t iv_len, const uint8_t *aad, size_t aad_len, const uint8_t *msg,
                            size_t msg_len, const uint8_t *ct, size_t ct_len, const uint8_t *tag)
{
    EXPECT(ct_len == msg_len, "aes_gcm tcId %lld: vector ct/msg lengths differ", tc);
    uint8_t *buf = malloc(msg_len + 1);
    uint8_t *inplace = malloc(msg_len + 1);
    assert_non_null(buf);
    assert_non_null(inplace);
    uint8_t out_tag[PHG_GCM_TAG_SIZE];

    memset(buf, 0xA5, msg_len + 1);
    phg_status rc =
        phg_aes_gcm_encrypt(key, key_len, iv, iv_len, aad, aad_len, msg, msg_len, buf, out_tag);
    EXPECT(rc == PHG_OK, "aes_gcm tcId %lld: encrypt returned %d", tc, (int)rc);
    EXPECT(memcmp(buf, ct, ct_len) == 0, "aes_gcm tcId %lld: ciphertext differs", tc);
    EXPECT(memcmp(out_tag, tag, PHG_GCM_TAG_SIZE) == 0, "aes_gcm tcId %lld: tag differs", tc);
    EXPECT(buf[msg_len] == 0xA5, "aes_gcm tcId %lld: encrypt wrote past ct", tc);

    /* In place, as the header allows (ct == pt). */
    memcpy(inplace, msg, msg_len);
    memset(out_tag, 0, sizeof out_tag);
    rc = phg_aes_gcm_encrypt(key, key_len, iv, iv_len, aad, aad_len, inplace, msg_len, inplace,
                             out_tag);
    EXPECT(rc == PHG_OK, "aes_gcm tcId %lld: in-place encrypt returned %d", tc, (int)rc);
    EXPECT(memcmp(inplace, ct, ct_len) == 0, "aes_gcm tcId %lld: in-place ciphertext differs", tc);
    EXPECT(memcmp(out_tag, tag, PHG_GCM_TAG_SIZE) == 0, "aes_gcm tcId %lld: in-place tag", tc);

    memset(buf, 0xA5, msg_len + 1);
    rc = phg_aes_gcm_decrypt(key, key_len, iv, iv_len, aad, aad_len, ct, ct_len, tag, buf);
    EXPECT(rc == PHG_OK, "aes_gcm tcId %lld: decrypt of a valid vector returned %d", tc, (int)rc);
    EXPECT(memcmp(buf, msg, msg_len) == 0, "aes_gcm tcId %lld: decrypted text differs", tc);
    EXPECT(buf[msg_len] == 0xA5, "aes_gcm tcId %lld: decrypt wrote past pt", tc);

    /* In-place decrypt. */
    rc = phg_aes_gcm_decrypt(key, key_len, iv, iv_len, aad, aad_len, inplace, ct_len, tag, inplace);
    EXPECT(rc == PHG_OK, "aes_gcm tcId %lld: in-place decrypt returned %d", tc, (int)rc);
    EXPECT(memcmp(inplace, msg, msg_len) == 0, "aes_gcm tcId %lld: in-place plaintext", tc);

    /* One flipped tag bit must be refused, and the output wiped. */
    uint8_t bad_tag[PHG_GCM_TAG_SIZE];
    memcpy(bad_tag, tag, sizeof bad_tag);
    bad_tag[(size_t)tc % PHG_GCM_TAG_SIZE] ^= (uint8_t)(1u << ((size_t)tc % 8));
    memset(buf, 0xA5, msg_len + 1);
    rc = phg_aes_gcm_decrypt(key, key_len, iv, iv_len, aad, aad_len, ct, ct_len, bad_tag, buf);
    EXPECT(rc == PHG_ERR_AUTH, "aes_gcm tcId %lld: flipped tag gave %d, not PHG_ERR_AUTH", tc,
           (int)rc);
    EXPECT(all_bytes_are(buf, msg_len, 0), "aes_gcm tcId %lld: pt not wiped after failure", tc);

    free(inplace);
    free(buf);
}

/* An IV longer than PHG_GCM_IV_MAX: PHG_ERR_INVALID both ways, nothing decrypted. */
static void gcm_check_refused(long long tc, const uint8_t *key, size_t key_len, const uint8_t *iv,
                              size_t iv_len, const uint8_t *aad, size_t aad_len, const uint8_t *msg,
                              size_t msg_len, const uint8_t *ct, size_t ct_len, const uint8_t *tag)
{
    uint8_t out_tag[PHG_GCM_TAG_SIZE];
    uint8_t *buf = malloc(ct_len + msg_len + 1);
    assert_non_null(buf);
    phg_status rc =
        phg_aes_gcm_encrypt(key, key_len, iv, iv_len, aad, aad_len, msg, msg_len, buf, out_tag);
    EXPECT(rc == PHG_ERR_INVALID, "aes_gcm tcId %lld: iv_len %zu > PHG_GCM_IV_MAX: encrypt gave %d",
           tc, iv_len, (int)rc);
    rc = phg_aes_gcm_decrypt(key, key_len, iv, iv_len, aad, aad_len, ct, ct_len, tag, buf);
    EXPECT(rc == PHG_ERR_INVALID, "aes_gcm tcId %lld: iv_len %zu > PHG_GCM_IV_MAX: decrypt gave %d",
           tc, iv_len, (int)rc);
    free(buf);
}

/*
 * "invalid": a zero-length IV must be refused up front (PHG_ERR_INVALID, both
 * directions); any other invalid vector has supported lengths, so decrypt must
 * answer PHG_ERR_AUTH and leave pt wiped.
 */
static void gcm_check_invalid(long long tc, const uint8_t *key, size_t key_len, const uint8_t *iv,
                              size_t iv_len, const uint8_t *aad, size_t aad_len, const uint8_t *msg,
                              size_t msg_len, const uint8_t *ct, size_t ct_len, const uint8_t *tag)
{
    uint8_t *buf = malloc(ct_len + msg_len + 1);
    assert_non_null(buf);
    memset(buf, 0xA5, ct_len + msg_len + 1);
    phg_status rc =
        phg_aes_gcm_decrypt(key, key_len, iv, iv_len, aad, aad_len, ct, ct_len, tag, buf);
    if (iv_len == 0) {
        EXPECT(rc == PHG_ERR_INVALID, "aes_gcm tcId %lld: zero-length IV decrypt gave %d", tc,
               (int)rc);
        uint8_t out_tag[PHG_GCM_TAG_SIZE];
        rc =
            phg_aes_gcm_encrypt(key, key_len, iv, iv_len, aad, aad_len, msg, msg_len, buf, out_tag);
        EXPECT(rc == PHG_ERR_INVALID, "aes_gcm tcId %lld: zero-length IV encrypt gave %d", tc,
               (int)rc);
    } else {
        EXPECT(rc == PHG_ERR_AUTH, "aes_gcm tcId %lld: invalid vector decrypt gave %d", tc,
               (int)rc);
        EXPECT(all_bytes_are(buf, ct_len, 0), "aes_gcm tcId %lld: pt not wiped", tc);
    }
    free(buf);
}

static void test_aes_gcm_wycheproof(void **state)
{
    (void)state;
    json_t *root = phg_test_load_vectors("wycheproof/aes_gcm_test.json");
    size_t ran = 0;
    size_t n_valid = 0;
    size_t n_invalid = 0;
    size_t n_refused = 0;
    size_t group_i;
    json_t *group;
    json_array_foreach(phg_test_array(root, "testGroups"), group_i, group)
    {
        long long key_bits = phg_test_int(group, "keySize");
        long long iv_bits = phg_test_int(group, "ivSize");
        assert_int_equal(phg_test_int(group, "tagSize"), 128);
        size_t test_i;
        json_t *t;
        json_array_foreach(phg_test_array(group, "tests"), test_i, t)
        {
            long long tc = phg_test_int(t, "tcId");
            const char *result = phg_test_str(t, "result");
            uint8_t *key, *iv, *aad, *msg, *ct, *tag;
            size_t key_len = phg_test_hex_member(t, "key", &key);
            size_t iv_len = phg_test_hex_member(t, "iv", &iv);
            size_t aad_len = phg_test_hex_member(t, "aad", &aad);
            size_t msg_len = phg_test_hex_member(t, "msg", &msg);
            size_t ct_len = phg_test_hex_member(t, "ct", &ct);
            size_t tag_len = phg_test_hex_member(t, "tag", &tag);
            EXPECT((long long)key_len * 8 == key_bits, "aes_gcm tcId %lld: keySize", tc);
            EXPECT((long long)iv_len * 8 == iv_bits, "aes_gcm tcId %lld: ivSize", tc);
            EXPECT(tag_len == PHG_GCM_TAG_SIZE, "aes_gcm tcId %lld: tag length", tc);

            if (iv_len > PHG_GCM_IV_MAX) {
                /* Beyond the documented limit: must be refused up front, whatever result says. */
                gcm_check_refused(tc, key, key_len, iv, iv_len, aad, aad_len, msg, msg_len, ct,
                                  ct_len, tag);
                n_refused++;
            } else if (strcmp(result, "valid") == 0) {
                gcm_check_valid(tc, key, key_len, iv, iv_len, aad, aad_len, msg, msg_len, ct,
                                ct_len, tag);
                n_valid++;
            } else if (strcmp(result, "invalid") == 0) {
                gcm_check_invalid(tc, key, key_len, iv, iv_len, aad, aad_len, msg, msg_len, ct,
                                  ct_len, tag);
                n_invalid++;
            } else {
                /* "acceptable": either answer, but it must not crash or overrun. */
                EXPECT(strcmp(result, "acceptable") == 0, "aes_gcm tcId %lld: result %s", tc,
                       result);
                uint8_t *buf = malloc(ct_len + 1);
                assert_non_null(buf);
                phg_status rc = phg_aes_gcm_decrypt(key, key_len, iv, iv_len, aad, aad_len, ct,
                                                    ct_len, tag, buf);
                EXPECT(rc == PHG_OK || rc == PHG_ERR_AUTH || rc == PHG_ERR_INVALID,
                       "aes_gcm tcId %lld: acceptable vector gave %d", tc, (int)rc);
                free(buf);
            }
            ran++;
            free(key);
            free(iv);
            free(aad);
            free(msg);
            free(ct);
            free(tag);
        }
    }
    assert_int_equal(ran, expected_count(root));
    /* README: 316 tests, 229 valid and 87 invalid (IVs of up to 257 bytes). */
    assert_int_equal(n_valid + n_invalid + n_refused, 316);
    assert_int_equal(n_invalid, 87);
    json_decref(root);
}

static void test_aes_gcm_bad_lengths(void **state)
{
    (void)state;
    uint8_t key[33] = {0};
    uint8_t iv[PHG_GCM_IV_MAX + 1] = {0};
    uint8_t pt[16] = {0};
    uint8_t ct[16];
    uint8_t tag[PHG_GCM_TAG_SIZE] = {0};
    /* Empty inputs are passed as non-NULL pointers: NULL is not what is tested. */
    const uint8_t empty[1] = {0};
    const size_t bad_key_lens[] = {0, 1, 15, 17, 20, 23, 25, 31, 33};

    for (size_t i = 0; i < sizeof bad_key_lens / sizeof bad_key_lens[0]; i++) {
        size_t kl = bad_key_lens[i];
        EXPECT(phg_aes_gcm_encrypt(key, kl, iv, 12, empty, 0, pt, sizeof pt, ct, tag) ==
                   PHG_ERR_INVALID,
               "encrypt accepted key_len %zu", kl);
        EXPECT(phg_aes_gcm_decrypt(key, kl, iv, 12, empty, 0, ct, sizeof ct, tag, pt) ==
                   PHG_ERR_INVALID,
               "decrypt accepted key_len %zu", kl);
    }
    const size_t bad_iv_lens[] = {0, PHG_GCM_IV_MAX + 1};
    for (size_t i = 0; i < 2; i++) {
        size_t il = bad_iv_lens[i];
        EXPECT(phg_aes_gcm_encrypt(key, 16, iv, il, empty, 0, pt, sizeof pt, ct, tag) ==
                   PHG_ERR_INVALID,
               "encrypt accepted iv_len %zu", il);
        EXPECT(phg_aes_gcm_decrypt(key, 16, iv, il, empty, 0, ct, sizeof ct, tag, pt) ==
                   PHG_ERR_INVALID,
               "decrypt accepted iv_len %zu", il);
    }
    /* The bounds themselves work: 1 and PHG_GCM_IV_MAX bytes round-trip. */
    const size_t good_iv_lens[] = {1, 12, PHG_GCM_IV_MAX};
    for (size_t i = 0; i < 3; i++) {
        size_t il = good_iv_lens[i];
        uint8_t back[16];
        memset(pt, (int)i + 1, sizeof pt);
        assert_int_equal(phg_aes_gcm_encrypt(key, 32, iv, il, empty, 0, pt, sizeof pt, ct, tag),
                         PHG_OK);
        assert_int_equal(phg_aes_gcm_decrypt(key, 32, iv, il, empty, 0, ct, sizeof ct, tag, back),
                         PHG_OK);
        assert_memory_equal(back, pt, sizeof pt);
    }
}

/* ---- HKDF-SHA256 ---------------------------------------------------------- */

/* One HKDF vector: valid gives okm; SizeTooLarge is PHG_ERR_INVALID, out untouched. */
static void hkdf_check(const char *file, const json_t *t, int must_be_valid)
{
    long long tc = phg_test_int(t, "tcId");
    long long size = phg_test_int(t, "size");
    const json_t *res = json_object_get(t, "result");
    const char *result = json_is_string(res) ? json_string_value(res) : "valid";
    if (must_be_valid) {
        EXPECT(strcmp(result, "valid") == 0, "%s tcId %lld: expected a valid vector", file, tc);
    }
    uint8_t *ikm, *salt, *info, *okm;
    size_t ikm_len = phg_test_hex_member(t, "ikm", &ikm);
    size_t salt_len = phg_test_hex_member(t, "salt", &salt);
    size_t info_len = phg_test_hex_member(t, "info", &info);
    size_t okm_len = phg_test_hex_member(t, "okm", &okm);
    assert_true(size > 0);
    uint8_t *out = malloc((size_t)size + 1);
    assert_non_null(out);
    memset(out, 0xA5, (size_t)size + 1);

    phg_status rc =
        phg_hkdf_sha256(ikm, ikm_len, salt, salt_len, info, info_len, out, (size_t)size);
    if (strcmp(result, "valid") == 0) {
        EXPECT(okm_len == (size_t)size, "%s tcId %lld: okm length differs from size", file, tc);
        EXPECT(rc == PHG_OK, "%s tcId %lld: hkdf returned %d", file, tc, (int)rc);
        EXPECT(memcmp(out, okm, okm_len) == 0, "%s tcId %lld: okm differs", file, tc);
        EXPECT(out[size] == 0xA5, "%s tcId %lld: wrote past out_len", file, tc);
    } else if (strcmp(result, "invalid") == 0) {
        /* The only invalid HKDF vectors ask for more than 255 * 32 bytes. */
        EXPECT(size > 255 * PHG_SHA256_SIZE, "%s tcId %lld: unexpected invalid vector", file, tc);
        EXPECT(rc == PHG_ERR_INVALID, "%s tcId %lld: size %lld gave %d, not PHG_ERR_INVALID", file,
               tc, size, (int)rc);
        EXPECT(all_bytes_are(out, (size_t)size + 1, 0xA5), "%s tcId %lld: out written", file, tc);
    } else {
        EXPECT(strcmp(result, "acceptable") == 0, "%s tcId %lld: result %s", file, tc, result);
    }
    free(out);
    free(ikm);
    free(salt);
    free(info);
    free(okm);
}

static void test_hkdf_wycheproof(void **state)
{
    (void)state;
    const char *file = "wycheproof/hkdf_sha256_test.json";
    json_t *root = phg_test_load_vectors(file);
    size_t ran = 0;
    size_t n_invalid = 0;
    size_t gi, ti;
    json_t *group, *t;
    json_array_foreach(phg_test_array(root, "testGroups"), gi, group)
    {
        json_array_foreach(phg_test_array(group, "tests"), ti, t)
        {
            hkdf_check(file, t, 0);
            if (strcmp(phg_test_str(t, "result"), "invalid") == 0) {
                n_invalid++;
            }
            ran++;
        }
    }
    assert_int_equal(ran, expected_count(root));
    assert_int_equal(n_invalid, 3); /* the three SizeTooLarge tests */
    json_decref(root);
}

/*
 * RFC 5869 A.1-A.3. Besides the okm, check the recorded PRK through HMAC
 * (PRK = HMAC(salt, IKM), salt defaulting to 32 zero bytes) and the first
 * output block T(1) = HMAC(PRK, info || 0x01): HKDF rebuilt from the HMAC
 * primitive must agree with the HKDF primitive.
 */
static void test_hkdf_rfc5869(void **state)
{
    (void)state;
    const char *file = "rfc/hkdf_sha256_rfc5869.json";
    json_t *root = phg_test_load_vectors(file);
    size_t ran = 0;
    size_t ti;
    json_t *t;
    json_array_foreach(phg_test_array(root, "tests"), ti, t)
    {
        hkdf_check(file, t, 1);

        long long tc = phg_test_int(t, "tcId");
        uint8_t *ikm, *salt, *info, *prk, *okm;
        size_t ikm_len = phg_test_hex_member(t, "ikm", &ikm);
        size_t salt_len = phg_test_hex_member(t, "salt", &salt);
        size_t info_len = phg_test_hex_member(t, "info", &info);
        size_t prk_len = phg_test_hex_member(t, "prk", &prk);
        size_t okm_len = phg_test_hex_member(t, "okm", &okm);
        assert_int_equal(prk_len, PHG_SHA256_SIZE);

        uint8_t zero_salt[PHG_SHA256_SIZE] = {0};
        uint8_t mac[PHG_SHA256_SIZE];
        phg_status rc = salt_len > 0
                            ? phg_hmac_sha256(salt, salt_len, ikm, ikm_len, mac)
                            : phg_hmac_sha256(zero_salt, sizeof zero_salt, ikm, ikm_len, mac);
        assert_int_equal(rc, PHG_OK);
        EXPECT(memcmp(mac, prk, PHG_SHA256_SIZE) == 0, "%s tcId %lld: PRK differs", file, tc);

        uint8_t *block_in = malloc(info_len + 1);
        assert_non_null(block_in);
        memcpy(block_in, info, info_len);
        block_in[info_len] = 0x01;
        assert_int_equal(phg_hmac_sha256(prk, prk_len, block_in, info_len + 1, mac), PHG_OK);
        size_t first = okm_len < PHG_SHA256_SIZE ? okm_len : PHG_SHA256_SIZE;
        EXPECT(memcmp(mac, okm, first) == 0, "%s tcId %lld: T(1) differs", file, tc);

        free(block_in);
        free(ikm);
        free(salt);
        free(info);
        free(prk);
        free(okm);
        ran++;
    }
    assert_int_equal(ran, expected_count(root));
    json_decref(root);
}

static void test_hkdf_limits(void **state)
{
    (void)state;
    uint8_t ikm[32] = {1};
    uint8_t info[1025] = {0};
    const uint8_t empty[1] = {0};
    uint8_t *out = malloc(8161);
    assert_non_null(out);

    /* out_len must be 1..8160. */
    memset(out, 0xA5, 8161);
    assert_int_equal(phg_hkdf_sha256(ikm, sizeof ikm, empty, 0, empty, 0, out, 0), PHG_ERR_INVALID);
    assert_int_equal(phg_hkdf_sha256(ikm, sizeof ikm, empty, 0, empty, 0, out, 8161),
                     PHG_ERR_INVALID);
    assert_true(all_bytes_are(out, 8161, 0xA5));
    assert_int_equal(phg_hkdf_sha256(ikm, sizeof ikm, empty, 0, empty, 0, out, 1), PHG_OK);
    assert_int_equal(phg_hkdf_sha256(ikm, sizeof ikm, empty, 0, empty, 0, out, 8160), PHG_OK);

    /* info up to 1024 bytes; longer is PHG_ERR_TOO_LARGE. */
    assert_int_equal(phg_hkdf_sha256(ikm, sizeof ikm, empty, 0, info, 1024, out, 32), PHG_OK);
    assert_int_equal(phg_hkdf_sha256(ikm, sizeof ikm, empty, 0, info, 1025, out, 32),
                     PHG_ERR_TOO_LARGE);

    /* An empty salt is the same as 32 zero bytes (RFC 5869 section 2.2). */
    uint8_t zero_salt[PHG_SHA256_SIZE] = {0};
    uint8_t a[48], b[48];
    assert_int_equal(phg_hkdf_sha256(ikm, sizeof ikm, empty, 0, info, 5, a, sizeof a), PHG_OK);
    assert_int_equal(
        phg_hkdf_sha256(ikm, sizeof ikm, zero_salt, sizeof zero_salt, info, 5, b, sizeof b),
        PHG_OK);
    assert_memory_equal(a, b, sizeof a);
    free(out);
}

/* ---- HMAC ------------------------------------------------------------------ */

typedef phg_status (*hmac_fn)(const uint8_t *key, size_t key_len, const uint8_t *msg,
                              size_t msg_len, uint8_t *out);

static phg_status hmac256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                          uint8_t *out)
{
    return phg_hmac_sha256(key, key_len, msg, msg_len, out);
}

static phg_status hmac1(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                        uint8_t *out)
{
    return phg_hmac_sha1(key, key_len, msg, msg_len, out);
}

/*
 * One MAC vector: compute the full HMAC, compare its first tag_bits/8 bytes.
 * "valid" must match, "invalid" must not. Returns 1 if it was valid.
 */
static int hmac_check(const char *file, const json_t *t, long long tag_bits, hmac_fn fn,
                      size_t full_len)
{
    long long tc = phg_test_int(t, "tcId");
    const json_t *res = json_object_get(t, "result");
    const char *result = json_is_string(res) ? json_string_value(res) : "valid";
    uint8_t *key, *msg, *tag;
    size_t key_len = phg_test_hex_member(t, "key", &key);
    size_t msg_len = phg_test_hex_member(t, "msg", &msg);
    size_t tag_len = phg_test_hex_member(t, "tag", &tag);
    EXPECT(tag_bits % 8 == 0 && tag_bits > 0 && (size_t)tag_bits / 8 <= full_len,
           "%s tcId %lld: tagSize %lld", file, tc, tag_bits);
    size_t cmp_len = (size_t)tag_bits / 8;
    EXPECT(tag_len == cmp_len, "%s tcId %lld: tag is %zu bytes, tagSize says %zu", file, tc,
           tag_len, cmp_len);

    uint8_t mac[PHG_SHA256_SIZE + 1];
    memset(mac, 0xA5, sizeof mac);
    phg_status rc = fn(key, key_len, msg, msg_len, mac);
    EXPECT(rc == PHG_OK, "%s tcId %lld: hmac returned %d", file, tc, (int)rc);
    EXPECT(mac[full_len] == 0xA5, "%s tcId %lld: hmac wrote past its size", file, tc);

    int plain = memcmp(mac, tag, cmp_len) == 0;
    int ct = phg_ct_equal(mac, tag, cmp_len);
    EXPECT(ct == plain, "%s tcId %lld: phg_ct_equal disagrees with memcmp", file, tc);
    int valid = 0;
    if (strcmp(result, "valid") == 0) {
        EXPECT(plain, "%s tcId %lld: valid tag does not match", file, tc);
        valid = 1;
    } else if (strcmp(result, "invalid") == 0) {
        EXPECT(!plain, "%s tcId %lld: invalid tag matches", file, tc);
    } else {
        EXPECT(strcmp(result, "acceptable") == 0, "%s tcId %lld: result %s", file, tc, result);
    }
    free(key);
    free(msg);
    free(tag);
    return valid;
}

static void run_wycheproof_mac(const char *file, hmac_fn fn, size_t full_len, size_t want_valid)
{
    json_t *root = phg_test_load_vectors(file);
    size_t ran = 0;
    size_t n_valid = 0;
    size_t gi, ti;
    json_t *group, *t;
    json_array_foreach(phg_test_array(root, "testGroups"), gi, group)
    {
        long long tag_bits = phg_test_int(group, "tagSize");
        json_array_foreach(phg_test_array(group, "tests"), ti, t)
        {
            n_valid += (size_t)hmac_check(file, t, tag_bits, fn, full_len);
            ran++;
        }
    }
    assert_int_equal(ran, expected_count(root));
    assert_int_equal(n_valid, want_valid);
    json_decref(root);
}

static void test_hmac_sha256_wycheproof(void **state)
{
    (void)state;
    /* README: 174 tests; 66 valid (Pseudorandom), 108 invalid (ModifiedTag). */
    run_wycheproof_mac("wycheproof/hmac_sha256_test.json", hmac256, PHG_SHA256_SIZE, 66);
}

static void test_hmac_sha1_wycheproof(void **state)
{
    (void)state;
    /* README: 170 tests; 66 valid, 104 invalid. */
    run_wycheproof_mac("wycheproof/hmac_sha1_test.json", hmac1, PHG_SHA1_SIZE, 66);
}

static void test_hmac_sha256_rfc4231(void **state)
{
    (void)state;
    const char *file = "rfc/hmac_sha256_rfc4231.json";
    json_t *root = phg_test_load_vectors(file);
    size_t ran = 0;
    size_t ti;
    json_t *t;
    json_array_foreach(phg_test_array(root, "tests"), ti, t)
    {
        long long tag_bits = phg_test_int(t, "tagSize");
        assert_int_equal(hmac_check(file, t, tag_bits, hmac256, PHG_SHA256_SIZE), 1);
        /* TC5 also records the untruncated MAC. */
        if (json_is_string(json_object_get(t, "fullTag"))) {
            uint8_t *key, *msg, *full;
            size_t key_len = phg_test_hex_member(t, "key", &key);
            size_t msg_len = phg_test_hex_member(t, "msg", &msg);
            size_t full_len = phg_test_hex_member(t, "fullTag", &full);
            uint8_t mac[PHG_SHA256_SIZE];
            assert_int_equal(full_len, PHG_SHA256_SIZE);
            assert_int_equal(phg_hmac_sha256(key, key_len, msg, msg_len, mac), PHG_OK);
            assert_memory_equal(mac, full, PHG_SHA256_SIZE);
            free(key);
            free(msg);
            free(full);
        }
        ran++;
    }
    assert_int_equal(ran, expected_count(root));
    json_decref(root);
}

static void test_hmac_empty_key(void **state)
{
    (void)state;
    /* "any key length, including 0": an empty key is 64 zero bytes of pad. */
    uint8_t zeros[64] = {0};
    uint8_t a[PHG_SHA256_SIZE], b[PHG_SHA256_SIZE];
    uint8_t c[PHG_SHA1_SIZE], d[PHG_SHA1_SIZE];
    const uint8_t msg[] = "phigate";
    assert_int_equal(phg_hmac_sha256(zeros, 0, msg, 7, a), PHG_OK);
    assert_int_equal(phg_hmac_sha256(zeros, sizeof zeros, msg, 7, b), PHG_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(phg_hmac_sha1(zeros, 0, msg, 7, c), PHG_OK);
    assert_int_equal(phg_hmac_sha1(zeros, sizeof zeros, msg, 7, d), PHG_OK);
    assert_memory_equal(c, d, sizeof c);
}

/* ---- small primitives -------------------------------------------------------- */

static void test_ct_equal(void **state)
{
    (void)state;
    uint8_t a[64], b[64];
    for (size_t i = 0; i < sizeof a; i++) {
        a[i] = (uint8_t)(i * 7 + 3);
    }
    memcpy(b, a, sizeof b);
    assert_int_equal(phg_ct_equal(a, b, sizeof a), 1);
    assert_int_equal(phg_ct_equal(a, b, 0), 1);
    for (size_t i = 0; i < sizeof a; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            b[i] ^= (uint8_t)(1u << bit);
            EXPECT(phg_ct_equal(a, b, sizeof a) == 0, "ct_equal: byte %zu bit %u missed", i, bit);
            /* Only the first n bytes are compared. */
            EXPECT(phg_ct_equal(a, b, i) == 1, "ct_equal: prefix of %zu bytes differs", i);
            b[i] ^= (uint8_t)(1u << bit);
        }
    }
}

static void test_wipe(void **state)
{
    (void)state;
    uint8_t buf[48];
    memset(buf, 0xA5, sizeof buf);
    phg_wipe(buf + 8, 32);
    assert_true(all_bytes_are(buf, 8, 0xA5));
    assert_true(all_bytes_are(buf + 8, 32, 0)); /* OPENSSL_cleanse writes zeros */
    assert_true(all_bytes_are(buf + 40, 8, 0xA5));
    phg_wipe(NULL, 0); /* allowed by the header */
    phg_wipe(buf, 0);
    assert_true(all_bytes_are(buf, 8, 0xA5));
}

static void test_random_bytes(void **state)
{
    (void)state;
    uint8_t a[32], b[32], zero[32] = {0};
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    assert_int_equal(phg_random_bytes(a, sizeof a), PHG_OK);
    assert_int_equal(phg_random_bytes(b, sizeof b), PHG_OK);
    /* A false failure here has probability 2^-256. */
    assert_memory_not_equal(a, b, sizeof a);
    assert_memory_not_equal(a, zero, sizeof a);
    assert_int_equal(phg_random_bytes(a, 0), PHG_OK);
}

static void test_sha256(void **state)
{
    (void)state;
    /* FIPS 180-2 Appendix B.1 and the well-known empty-string digest. */
    uint8_t *want;
    uint8_t got[PHG_SHA256_SIZE];
    size_t n =
        phg_test_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", &want);
    assert_int_equal(n, PHG_SHA256_SIZE);
    assert_int_equal(phg_sha256((const uint8_t *)"abc", 3, got), PHG_OK);
    assert_memory_equal(got, want, PHG_SHA256_SIZE);
    free(want);

    n = phg_test_hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", &want);
    assert_int_equal(phg_sha256((const uint8_t *)"", 0, got), PHG_OK);
    assert_memory_equal(got, want, n);
    free(want);

    /* FIPS 180-2 Appendix B.2 (two blocks). */
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    n = phg_test_hex("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", &want);
    assert_int_equal(phg_sha256((const uint8_t *)two, strlen(two), got), PHG_OK);
    assert_memory_equal(got, want, n);
    free(want);
}

/* ---- base64 ------------------------------------------------------------------ */

static const phg_b64_variant all_variants[4] = {PHG_B64_STD, PHG_B64_STD_NOPAD, PHG_B64_URL,
                                                PHG_B64_URL_NOPAD};

static int variant_pads(phg_b64_variant v)
{
    return v == PHG_B64_STD || v == PHG_B64_URL;
}

static int variant_is_url(phg_b64_variant v)
{
    return v == PHG_B64_URL || v == PHG_B64_URL_NOPAD;
}

/* Is c in the variant's 64-letter alphabet (padding excluded)? */
static int in_alphabet(char c, phg_b64_variant v)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
        return 1;
    }
    return variant_is_url(v) ? (c == '-' || c == '_') : (c == '+' || c == '/');
}

/* The RFC 4648 length of an encoding, computed here independently. */
static size_t expected_encoded_len(size_t n, phg_b64_variant v)
{
    if (variant_pads(v)) {
        return (n + 2) / 3 * 4;
    }
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

static phg_status decode_str(const char *s, phg_b64_variant v, uint8_t *out, size_t cap,
                             size_t *out_len)
{
    return phg_base64_decode(s, strlen(s), out, cap, out_len, v);
}

static void test_base64_round_trip(void **state)
{
    (void)state;
    uint8_t in[64];
    char enc[128];
    uint8_t dec[64 + 3];
    for (size_t vi = 0; vi < 4; vi++) {
        phg_b64_variant v = all_variants[vi];
        for (size_t n = 0; n <= 64; n++) {
            assert_int_equal(phg_random_bytes(in, sizeof in), PHG_OK);
            /* Also exercise the bytes that map to + / - _ . */
            if (n > 0) {
                in[0] = 0xFB;
                in[n - 1] = 0xFF;
            }
            size_t want_len = expected_encoded_len(n, v);
            assert_int_equal(phg_base64_encoded_len(n, v), want_len);
            memset(enc, 0x7F, sizeof enc);
            size_t len = phg_base64_encode(in, n, enc, v);
            EXPECT(len == want_len, "variant %zu n %zu: encoded %zu chars, want %zu", vi, n, len,
                   want_len);
            EXPECT(enc[len] == '\0', "variant %zu n %zu: not NUL-terminated", vi, n);
            EXPECT(enc[len + 1] == 0x7F, "variant %zu n %zu: wrote past the NUL", vi, n);
            size_t data_chars = expected_encoded_len(n, PHG_B64_STD_NOPAD);
            for (size_t i = 0; i < len; i++) {
                if (i < data_chars) {
                    EXPECT(in_alphabet(enc[i], v), "variant %zu n %zu: char %zu '%c'", vi, n, i,
                           enc[i]);
                } else {
                    EXPECT(enc[i] == '=', "variant %zu n %zu: padding char %zu", vi, n, i);
                }
            }

            size_t out_len = 999;
            memset(dec, 0xA5, sizeof dec);
            /* An out_cap of exactly the decoded size is enough. */
            phg_status rc = phg_base64_decode(enc, len, dec, n, &out_len, v);
            EXPECT(rc == PHG_OK, "variant %zu n %zu: decode of own encoding gave %d", vi, n,
                   (int)rc);
            EXPECT(out_len == n, "variant %zu n %zu: decoded %zu bytes", vi, n, out_len);
            EXPECT(memcmp(dec, in, n) == 0, "variant %zu n %zu: round trip differs", vi, n);
            EXPECT(dec[n] == 0xA5, "variant %zu n %zu: decode wrote past out_len", vi, n);

            /* One byte short of room. */
            if (n > 0) {
                rc = phg_base64_decode(enc, len, dec, n - 1, &out_len, v);
                EXPECT(rc == PHG_ERR_BUFFER_TOO_SMALL, "variant %zu n %zu: short buffer gave %d",
                       vi, n, (int)rc);
            }
        }
    }
}

/* RFC 4648 section 10, plus bytes that select the variant-specific letters. */
static void test_base64_known_answers(void **state)
{
    (void)state;
    static const struct {
        const char *raw;
        const char *std;
        const char *std_nopad;
    } rfc[] = {
        {"", "", ""},
        {"f", "Zg==", "Zg"},
        {"fo", "Zm8=", "Zm8"},
        {"foo", "Zm9v", "Zm9v"},
        {"foob", "Zm9vYg==", "Zm9vYg"},
        {"fooba", "Zm9vYmE=", "Zm9vYmE"},
        {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
    };
    char enc[32];
    uint8_t dec[16];
    size_t out_len;
    for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
        size_t n = strlen(rfc[i].raw);
        for (size_t vi = 0; vi < 4; vi++) {
            phg_b64_variant v = all_variants[vi];
            const char *want = variant_pads(v) ? rfc[i].std : rfc[i].std_nopad;
            phg_base64_encode((const uint8_t *)rfc[i].raw, n, enc, v);
            assert_string_equal(enc, want);
            out_len = 999;
            assert_int_equal(decode_str(want, v, dec, sizeof dec, &out_len), PHG_OK);
            assert_int_equal(out_len, n);
            assert_memory_equal(dec, rfc[i].raw, n);
        }
    }

    /* fb ff bf = 111110 111111 111110 111111 = letters 62 63 62 63. */
    const uint8_t hi[3] = {0xFB, 0xFF, 0xBF};
    phg_base64_encode(hi, 3, enc, PHG_B64_STD);
    assert_string_equal(enc, "+/+/");
    phg_base64_encode(hi, 3, enc, PHG_B64_URL);
    assert_string_equal(enc, "-_-_");
    phg_base64_encode(hi, 2, enc, PHG_B64_STD);
    assert_string_equal(enc, "+/8=");
    phg_base64_encode(hi, 2, enc, PHG_B64_URL_NOPAD);
    assert_string_equal(enc, "-_8");
}

static void expect_rejected(const char *in, size_t len, phg_b64_variant v, const char *why)
{
    uint8_t out[64];
    size_t out_len = 999;
    phg_status rc = phg_base64_decode(in, len, out, sizeof out, &out_len, v);
    EXPECT(rc == PHG_ERR_INVALID, "base64 variant %d accepted %s (\"%.*s\"): rc %d", (int)v, why,
           (int)len, in, (int)rc);
}

static void reject(const char *in, phg_b64_variant v, const char *why)
{
    expect_rejected(in, strlen(in), v, why);
}

static void test_base64_strict(void **state)
{
    (void)state;
    for (size_t vi = 0; vi < 4; vi++) {
        phg_b64_variant v = all_variants[vi];
        int url = variant_is_url(v);
        int pads = variant_pads(v);

        /* The other alphabet's letters. */
        reject(url ? "+/+/" : "-_-_", v, "the other alphabet");
        /* Each would be valid in the other alphabet (zero trailing bits). */
        if (pads) {
            reject(url ? "Zm9v+A==" : "Zm9v-A==", v, "the other alphabet (62)");
            reject(url ? "Zm9v/A==" : "Zm9v_A==", v, "the other alphabet (63)");
        } else {
            reject(url ? "Zm9v+A" : "Zm9v-A", v, "the other alphabet (62)");
            reject(url ? "Zm9v/A" : "Zm9v_A", v, "the other alphabet (63)");
        }
        /* Characters in no base64 alphabet. */
        reject("Zm9*", v, "'*'");
        reject("Zm9.", v, "'.'");
        reject("%%%%", v, "'%'");
        reject("Zm9\xc3\xa9v", v, "non-ASCII");
        expect_rejected("Zm\0v", 4, v, "an embedded NUL");
        /* Whitespace anywhere. */
        reject("Zm9v\n", v, "a trailing newline");
        reject("Zm9v\r\n", v, "a trailing CRLF");
        reject(" Zm9v", v, "a leading space");
        reject("Zm 9v", v, "an inner space");
        reject("Zm9v\t", v, "a tab");
        reject("Zm9v Zm9v", v, "a space between quads");
        /* Impossible lengths: one letter left over. */
        reject("Z", v, "a single letter");
        reject("Zm9vY", v, "5 letters");
        reject(pads ? "Z===" : "Z", v, "one letter and padding");

        if (pads) {
            reject("Zg", v, "missing padding (2 letters)");
            reject("Zg=", v, "missing padding (one '=')");
            reject("Zm8", v, "missing padding (3 letters)");
            reject("Zg===", v, "extra padding");
            reject("Zm8==", v, "extra padding after one-pad group");
            reject("Zm9v=", v, "padding after a full quad");
            reject("Zm9v====", v, "a quad of padding");
            reject("====", v, "padding only");
            reject("=", v, "a lone '='");
            reject("Zg==Zg==", v, "padding in the middle");
            reject("Z=g=", v, "padding between letters");
            reject("Zm=v", v, "padding inside a quad");
            /* Unused bits of the last letter must be zero. */
            reject("QR==", v, "non-zero trailing bits (QR==)");
            reject("QQ=A", v, "a letter after padding");
            reject("QUJ=", v, "non-zero trailing bits (QUJ=)");
            reject("Zh==", v, "non-zero trailing bits (Zh==)");
            reject("Zm9=", v, "non-zero trailing bits (Zm9=)");
        } else {
            reject("Zg==", v, "padding in a no-padding variant");
            reject("Zm8=", v, "padding in a no-padding variant");
            reject("Zm9v====", v, "padding in a no-padding variant");
            reject("=", v, "a lone '='");
            reject("QR", v, "non-zero trailing bits (QR)");
            reject("QUJ", v, "non-zero trailing bits (QUJ)");
            reject("Zh", v, "non-zero trailing bits (Zh)");
            reject("Zm9", v, "non-zero trailing bits (Zm9)");
        }

        /* The canonical forms of the same bytes are accepted. */
        uint8_t out[8];
        size_t out_len = 999;
        assert_int_equal(decode_str(pads ? "QQ==" : "QQ", v, out, sizeof out, &out_len), PHG_OK);
        assert_int_equal(out_len, 1);
        assert_int_equal(out[0], 'A');
        assert_int_equal(decode_str(pads ? "QUI=" : "QUI", v, out, sizeof out, &out_len), PHG_OK);
        assert_int_equal(out_len, 2);
        assert_memory_equal(out, "AB", 2);
        out_len = 999;
        assert_int_equal(phg_base64_decode("", 0, out, sizeof out, &out_len, v), PHG_OK);
        assert_int_equal(out_len, 0);
    }
}

static void test_base64_buffer_too_small(void **state)
{
    (void)state;
    uint8_t out[8];
    size_t out_len;
    assert_int_equal(decode_str("Zm9vYmFy", PHG_B64_STD, out, 5, &out_len),
                     PHG_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(decode_str("Zm9vYmE=", PHG_B64_STD, out, 4, &out_len),
                     PHG_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(decode_str("Zm9vYmE", PHG_B64_URL_NOPAD, out, 4, &out_len),
                     PHG_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(decode_str("Zg==", PHG_B64_URL, out, 0, &out_len), PHG_ERR_BUFFER_TOO_SMALL);
    /* Exact room is enough. */
    assert_int_equal(decode_str("Zm9vYmFy", PHG_B64_STD, out, 6, &out_len), PHG_OK);
    assert_int_equal(out_len, 6);
    assert_int_equal(decode_str("Zm9vYmE", PHG_B64_URL_NOPAD, out, 5, &out_len), PHG_OK);
    assert_int_equal(out_len, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aes_gcm_wycheproof),
        cmocka_unit_test(test_aes_gcm_bad_lengths),
        cmocka_unit_test(test_hkdf_wycheproof),
        cmocka_unit_test(test_hkdf_rfc5869),
        cmocka_unit_test(test_hkdf_limits),
        cmocka_unit_test(test_hmac_sha256_wycheproof),
        cmocka_unit_test(test_hmac_sha1_wycheproof),
        cmocka_unit_test(test_hmac_sha256_rfc4231),
        cmocka_unit_test(test_hmac_empty_key),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_wipe),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_base64_round_trip),
        cmocka_unit_test(test_base64_known_answers),
        cmocka_unit_test(test_base64_strict),
        cmocka_unit_test(test_base64_buffer_too_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
