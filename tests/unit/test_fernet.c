/*
 * tests/unit/test_fernet.c: the Fernet functions of include/phigate/crypto.h
 * against the fernet/spec vectors (../shared/vectors/fernet, described in
 * ../shared/vectors/README.md) and against their header contracts: strict key
 * parsing, round trips, one flipped bit rejected, and the TTL rules.
 *
 * The vectors give times as RFC 3339 strings with offsets; rfc3339_to_unix()
 * below converts them without the C library's time zone machinery, and is
 * itself checked on hand-computed dates and against the timestamp embedded in
 * the generate.json token.
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

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* The fixed parts of a token: version, timestamp, IV, then the HMAC-SHA256. */
#define FERNET_HEADER_LEN 25
#define FERNET_MAC_LEN 32
#define FERNET_OVERHEAD (FERNET_HEADER_LEN + FERNET_MAC_LEN)

/* The key of the spec vectors, decoded with Python's base64.urlsafe_b64decode. */
static const char *const spec_secret = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
static const char *const spec_key_hex =
    "730ff4c7af3d46923e8ed451ee813c87f790b0a226bc96a92de49b5e9c05e1ee";

static int all_bytes_are(const uint8_t *p, size_t n, uint8_t value)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != value) {
            return 0;
        }
    }
    return 1;
}

/* ---- RFC 3339 -> Unix seconds ------------------------------------------------ */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    /* Count years from March so that the leap day is the last of the year. */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;                                   /* 0..399 */
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* 0..365 */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* 0..146096 */
    return era * 146097 + doe - 719468;
}

/* Read exactly n digits at *p, advancing it; -1 if they are not all digits. */
static int64_t read_digits(const char **p, int n)
{
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9') {
            return -1;
        }
        v = v * 10 + (c - '0');
    }
    *p += n;
    return v;
}

static int expect_char(const char **p, char want)
{
    if (**p != want) {
        return 0;
    }
    (*p)++;
    return 1;
}

/*
 * "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" to Unix seconds (the
 * fraction is dropped). Fails the test on anything else.
 */
static int64_t rfc3339_to_unix(const char *s)
{
    const char *p = s;
    int64_t year = read_digits(&p, 4);
    int ok = year >= 0 && expect_char(&p, '-');
    int64_t month = ok ? read_digits(&p, 2) : -1;
    ok = ok && month >= 1 && month <= 12 && expect_char(&p, '-');
    int64_t day = ok ? read_digits(&p, 2) : -1;
    ok = ok && day >= 1 && day <= 31 && (expect_char(&p, 'T') || expect_char(&p, 't'));
    int64_t hour = ok ? read_digits(&p, 2) : -1;
    ok = ok && hour >= 0 && hour <= 23 && expect_char(&p, ':');
    int64_t minute = ok ? read_digits(&p, 2) : -1;
    ok = ok && minute >= 0 && minute <= 59 && expect_char(&p, ':');
    int64_t second = ok ? read_digits(&p, 2) : -1;
    ok = ok && second >= 0 && second <= 60;
    if (ok && *p == '.') {
        p++;
        ok = *p >= '0' && *p <= '9';
        while (*p >= '0' && *p <= '9') {
            p++;
        }
    }
    int64_t offset_s = 0;
    if (ok && (*p == 'Z' || *p == 'z')) {
        p++;
    } else if (ok && (*p == '+' || *p == '-')) {
        int64_t sign = *p == '-' ? -1 : 1;
        p++;
        int64_t oh = read_digits(&p, 2);
        ok = oh >= 0 && oh <= 23 && expect_char(&p, ':');
        int64_t om = ok ? read_digits(&p, 2) : -1;
        ok = ok && om >= 0 && om <= 59;
        offset_s = sign * (oh * 3600 + om * 60);
    } else {
        ok = 0;
    }
    EXPECT(ok && *p == '\0', "not an RFC 3339 time: \"%s\"", s);
    int64_t local = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    /* Local time = UTC + offset, so UTC = local - offset. */
    return local - offset_s;
}

static void test_rfc3339_helper(void **state)
{
    (void)state;
    /* Hand-computed: 30 years of 365 days + 7 leap days = 10957 days to 2000. */
    assert_int_equal(rfc3339_to_unix("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(rfc3339_to_unix("2000-01-01T00:00:00Z"), 10957LL * 86400);
    assert_int_equal(rfc3339_to_unix("2000-03-01T00:00:00Z"), (10957LL + 31 + 29) * 86400);
    assert_int_equal(rfc3339_to_unix("1970-01-01T01:00:00+01:00"), 0);
    assert_int_equal(rfc3339_to_unix("1969-12-31T17:00:00-07:00"), 0);
    assert_int_equal(rfc3339_to_unix("1970-01-02T00:00:00.999z"), 86400);
    assert_int_equal(rfc3339_to_unix("1969-12-31T23:59:59Z"), -1);
    assert_int_equal(rfc3339_to_unix("1970-01-01T00:00:00+05:30"), -(5 * 3600 + 30 * 60));
    /* 1985-10-26 is day 5777 (15 years, 4 leap days, then 298 days). */
    assert_int_equal(rfc3339_to_unix("1985-10-26T01:20:00-07:00"),
                     5777LL * 86400 + 8 * 3600 + 20 * 60);
}

/* ---- helpers ----------------------------------------------------------------- */

static void decode_spec_key(uint8_t key[PHG_FERNET_KEY_SIZE])
{
    phg_status rc = phg_fernet_key_decode(spec_secret, strlen(spec_secret), key);
    assert_int_equal(rc, PHG_OK);
}

static uint64_t vector_now(const json_t *v)
{
    int64_t now = rfc3339_to_unix(phg_test_str(v, "now"));
    assert_true(now >= 0);
    return (uint64_t)now;
}

/* Decode a token to its raw bytes (malloc'd, caller frees). */
static size_t token_raw(const char *token, uint8_t **raw)
{
    size_t len = strlen(token);
    size_t cap = (len / 4 + 1) * 3;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    size_t n = 0;
    assert_int_equal(phg_base64_decode(token, len, buf, cap, &n, PHG_B64_URL), PHG_OK);
    *raw = buf;
    return n;
}

/* Encode raw token bytes back to text (malloc'd, caller frees). */
static char *token_text(const uint8_t *raw, size_t n)
{
    char *text = malloc(phg_base64_encoded_len(n, PHG_B64_URL) + 1);
    assert_non_null(text);
    phg_base64_encode(raw, n, text, PHG_B64_URL);
    return text;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* A token's length for n plaintext bytes, from the spec's layout. */
static size_t spec_token_len(size_t n)
{
    size_t raw = FERNET_OVERHEAD + (n / 16 + 1) * 16; /* PKCS#7 always pads */
    return (raw + 2) / 3 * 4;
}

/*
 * Decrypt that must fail: PHG_ERR_AUTH, *out_len 0 and the whole output
 * buffer wiped.
 */
static void expect_auth_failure(const uint8_t key[PHG_FERNET_KEY_SIZE], const char *token,
                                size_t token_len, uint64_t now, uint64_t ttl, const char *what)
{
    uint8_t out[512];
    size_t out_len = 999;
    memset(out, 0xA5, sizeof out);
    phg_status rc = phg_fernet_decrypt(key, token, token_len, now, ttl, out, sizeof out, &out_len);
    EXPECT(rc == PHG_ERR_AUTH, "fernet: %s: decrypt gave %d, not PHG_ERR_AUTH", what, (int)rc);
    EXPECT(out_len == 0, "fernet: %s: out_len %zu after failure", what, out_len);
    EXPECT(all_bytes_are(out, sizeof out, 0), "fernet: %s: output not wiped", what);
}

/* ---- the spec vectors ------------------------------------------------------- */

static void test_generate_vectors(void **state)
{
    (void)state;
    json_t *root = phg_test_load_vectors("fernet/generate.json");
    assert_true(json_is_array(root));
    size_t ran = 0;
    size_t i;
    json_t *v;
    json_array_foreach(root, i, v)
    {
        const char *want = phg_test_str(v, "token");
        const char *src = phg_test_str(v, "src");
        const char *secret = phg_test_str(v, "secret");
        uint64_t now = vector_now(v);
        json_t *iv_json = phg_test_array(v, "iv");
        assert_int_equal(json_array_size(iv_json), 16);
        uint8_t iv[16];
        for (size_t k = 0; k < 16; k++) {
            json_t *b = json_array_get(iv_json, k);
            assert_true(json_is_integer(b));
            assert_true(json_integer_value(b) >= 0 && json_integer_value(b) <= 255);
            iv[k] = (uint8_t)json_integer_value(b);
        }

        uint8_t key[PHG_FERNET_KEY_SIZE];
        assert_int_equal(phg_fernet_key_decode(secret, strlen(secret), key), PHG_OK);

        /* The token carries the time: check the RFC 3339 conversion against it. */
        uint8_t *raw;
        size_t raw_len = token_raw(want, &raw);
        assert_true(raw_len > FERNET_OVERHEAD);
        assert_int_equal(raw[0], 0x80);
        assert_int_equal(be64(raw + 1), now);
        assert_memory_equal(raw + 9, iv, 16);
        free(raw);

        size_t src_len = strlen(src);
        size_t tok_len = phg_fernet_token_len(src_len);
        assert_int_equal(tok_len, strlen(want));
        assert_int_equal(tok_len, spec_token_len(src_len));
        char *out = malloc(tok_len + 2);
        assert_non_null(out);
        memset(out, 0x7F, tok_len + 2);
        size_t out_len = 0;
        /* Exactly the documented room: token_len + 1. */
        phg_status rc = phg_fernet_encrypt(key, (const uint8_t *)src, src_len, now, iv, out,
                                           tok_len + 1, &out_len);
        EXPECT(rc == PHG_OK, "generate.json #%zu: encrypt gave %d", i, (int)rc);
        EXPECT(out_len == tok_len, "generate.json #%zu: out_len %zu", i, out_len);
        EXPECT(out[tok_len] == '\0', "generate.json #%zu: not NUL-terminated", i);
        EXPECT(memcmp(out, want, tok_len) == 0, "generate.json #%zu: got %.*s want %s", i,
               (int)tok_len, out, want);
        EXPECT(out[tok_len + 1] == 0x7F, "generate.json #%zu: wrote past out_cap", i);

        /* And it opens again at the same time. */
        uint8_t pt[64];
        size_t pt_len = 0;
        rc = phg_fernet_decrypt(key, out, out_len, now, 60, pt, sizeof pt, &pt_len);
        EXPECT(rc == PHG_OK, "generate.json #%zu: decrypt of the token gave %d", i, (int)rc);
        assert_int_equal(pt_len, src_len);
        assert_memory_equal(pt, src, src_len);
        free(out);
        ran++;
    }
    assert_int_equal(ran, 1); /* README: one generate case */
    json_decref(root);
}

static void test_verify_vectors(void **state)
{
    (void)state;
    json_t *root = phg_test_load_vectors("fernet/verify.json");
    assert_true(json_is_array(root));
    size_t ran = 0;
    size_t i;
    json_t *v;
    json_array_foreach(root, i, v)
    {
        const char *token = phg_test_str(v, "token");
        const char *src = phg_test_str(v, "src");
        const char *secret = phg_test_str(v, "secret");
        long long ttl = phg_test_int(v, "ttl_sec");
        assert_true(ttl >= 0);
        uint64_t now = vector_now(v);
        uint8_t key[PHG_FERNET_KEY_SIZE];
        assert_int_equal(phg_fernet_key_decode(secret, strlen(secret), key), PHG_OK);

        /* The header promises that decoded length - 57 bytes of room suffice. */
        uint8_t *raw;
        size_t cap = token_raw(token, &raw) - FERNET_OVERHEAD;
        free(raw);
        uint8_t *out = malloc(cap + 1);
        assert_non_null(out);
        memset(out, 0xA5, cap + 1);
        size_t out_len = 999;
        phg_status rc =
            phg_fernet_decrypt(key, token, strlen(token), now, (uint64_t)ttl, out, cap, &out_len);
        EXPECT(rc == PHG_OK, "verify.json #%zu: decrypt gave %d", i, (int)rc);
        EXPECT(out_len == strlen(src), "verify.json #%zu: out_len %zu", i, out_len);
        EXPECT(memcmp(out, src, out_len) == 0, "verify.json #%zu: plaintext differs", i);
        EXPECT(out[cap] == 0xA5, "verify.json #%zu: wrote past out_cap", i);
        free(out);
        ran++;
    }
    assert_int_equal(ran, 1); /* README: one verify case */
    json_decref(root);
}

static void test_invalid_vectors(void **state)
{
    (void)state;
    json_t *root = phg_test_load_vectors("fernet/invalid.json");
    assert_true(json_is_array(root));
    size_t ran = 0;
    size_t i;
    json_t *v;
    json_array_foreach(root, i, v)
    {
        const char *desc = phg_test_str(v, "desc");
        const char *token = phg_test_str(v, "token");
        const char *secret = phg_test_str(v, "secret");
        long long ttl = phg_test_int(v, "ttl_sec");
        assert_true(ttl > 0);
        uint64_t now = vector_now(v);
        uint8_t key[PHG_FERNET_KEY_SIZE];
        assert_int_equal(phg_fernet_key_decode(secret, strlen(secret), key), PHG_OK);
        expect_auth_failure(key, token, strlen(token), now, (uint64_t)ttl, desc);
        ran++;
    }
    assert_int_equal(ran, 8); /* README: the 8 cases */
    json_decref(root);
}

/* ---- keys -------------------------------------------------------------------- */

static void expect_key_rejected(const char *text, size_t len, const char *what)
{
    uint8_t key[PHG_FERNET_KEY_SIZE];
    memset(key, 0xA5, sizeof key);
    phg_status rc = phg_fernet_key_decode(text, len, key);
    EXPECT(rc == PHG_ERR_MASTER_KEY, "key_decode accepted %s (\"%.*s\"): rc %d", what, (int)len,
           text, (int)rc);
    EXPECT(all_bytes_are(key, sizeof key, 0), "key_decode: key not wiped after rejecting %s", what);
}

/* The spec secret with the character at pos replaced by c. */
static void reject_with_char(size_t pos, char c, const char *what)
{
    char text[PHG_FERNET_KEY_TEXT_LEN + 1];
    memcpy(text, spec_secret, sizeof text);
    text[pos] = c;
    expect_key_rejected(text, PHG_FERNET_KEY_TEXT_LEN, what);
}

static void test_key_decode(void **state)
{
    (void)state;
    assert_int_equal(strlen(spec_secret), PHG_FERNET_KEY_TEXT_LEN);
    uint8_t key[PHG_FERNET_KEY_SIZE];
    uint8_t *want;
    assert_int_equal(phg_test_hex(spec_key_hex, &want), PHG_FERNET_KEY_SIZE);
    assert_int_equal(phg_fernet_key_decode(spec_secret, PHG_FERNET_KEY_TEXT_LEN, key), PHG_OK);
    assert_memory_equal(key, want, PHG_FERNET_KEY_SIZE);
    free(want);

    char buf[64];
    /* Wrong lengths. */
    expect_key_rejected(spec_secret, 43, "43 characters (padding cut)");
    expect_key_rejected("", 0, "an empty key");
    snprintf(buf, sizeof buf, "%s=", spec_secret);
    expect_key_rejected(buf, 45, "45 characters (extra '=')");
    snprintf(buf, sizeof buf, "%sA", spec_secret);
    expect_key_rejected(buf, 45, "45 characters (extra letter)");
    snprintf(buf, sizeof buf, "%.43s", spec_secret);
    expect_key_rejected(buf, 43, "43 characters (unpadded)");
    snprintf(buf, sizeof buf, "%.40sAAAA", spec_secret);
    expect_key_rejected(buf, 44, "44 letters, no padding (33 bytes)");
    snprintf(buf, sizeof buf, "%.40sA===", spec_secret);
    expect_key_rejected(buf, 44, "one letter and three '='");
    snprintf(buf, sizeof buf, "%.40sAA==", spec_secret);
    expect_key_rejected(buf, 44, "two '=' (31 bytes)");

    /* Characters outside base64url. */
    reject_with_char(5, '%', "'%'");
    reject_with_char(5, '*', "'*'");
    reject_with_char(5, ' ', "a space");
    reject_with_char(5, '\n', "a newline");
    reject_with_char(5, '.', "'.'");
    /* The standard alphabet in place of the URL one. */
    assert_int_equal(spec_secret[2], '_');
    assert_int_equal(spec_secret[11], '-');
    reject_with_char(2, '/', "'/' for '_'");
    reject_with_char(11, '+', "'+' for '-'");
    /* Padding in the wrong place. */
    reject_with_char(10, '=', "'=' inside the key");
    reject_with_char(43, 'A', "a letter where the '=' goes");
    /* '4' (111000) -> '5' (111001): non-zero unused bits, a second spelling. */
    assert_int_equal(spec_secret[42], '4');
    reject_with_char(42, '5', "non-zero trailing bits");
}

static void test_key_generate(void **state)
{
    (void)state;
    char a[PHG_FERNET_KEY_TEXT_LEN + 2], b[PHG_FERNET_KEY_TEXT_LEN + 2];
    memset(a, 0x7F, sizeof a);
    memset(b, 0x7F, sizeof b);
    assert_int_equal(phg_fernet_key_generate(a), PHG_OK);
    assert_int_equal(phg_fernet_key_generate(b), PHG_OK);
    assert_int_equal(strlen(a), PHG_FERNET_KEY_TEXT_LEN);
    assert_int_equal(a[PHG_FERNET_KEY_TEXT_LEN + 1], 0x7F);
    assert_int_equal(a[43], '=');
    assert_string_not_equal(a, b);
    uint8_t ka[PHG_FERNET_KEY_SIZE], kb[PHG_FERNET_KEY_SIZE];
    assert_int_equal(phg_fernet_key_decode(a, strlen(a), ka), PHG_OK);
    assert_int_equal(phg_fernet_key_decode(b, strlen(b), kb), PHG_OK);
    assert_memory_not_equal(ka, kb, sizeof ka);
    /* And the text is the base64url of the key. */
    char again[PHG_FERNET_KEY_TEXT_LEN + 1];
    assert_int_equal(phg_base64_encode(ka, sizeof ka, again, PHG_B64_URL), PHG_FERNET_KEY_TEXT_LEN);
    assert_string_equal(again, a);
}

/* ---- properties ---------------------------------------------------------------- */

static const uint64_t t0 = 1700000000; /* 2023-11-14T22:13:20Z */

/* A token for pt under key at time now (malloc'd, caller frees). */
static char *make_token(const uint8_t key[PHG_FERNET_KEY_SIZE], const uint8_t *pt, size_t n,
                        uint64_t now, size_t *len)
{
    size_t cap = phg_fernet_token_len(n) + 1;
    char *tok = malloc(cap);
    assert_non_null(tok);
    assert_int_equal(phg_fernet_encrypt(key, pt, n, now, NULL, tok, cap, len), PHG_OK);
    assert_int_equal(*len, strlen(tok));
    return tok;
}

static void test_round_trip(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE], other[PHG_FERNET_KEY_SIZE];
    uint8_t pt[100], out[112 + 1];
    for (size_t n = 0; n <= 100; n++) {
        assert_int_equal(phg_random_bytes(key, sizeof key), PHG_OK);
        assert_int_equal(phg_random_bytes(pt, sizeof pt), PHG_OK);
        size_t len;
        char *tok = make_token(key, pt, n, t0 + n, &len);
        EXPECT(len == spec_token_len(n), "round trip n %zu: token length %zu", n, len);
        EXPECT(phg_fernet_token_len(n) == len, "round trip n %zu: token_len disagrees", n);

        uint8_t *raw;
        size_t raw_len = token_raw(tok, &raw);
        assert_int_equal(raw[0], 0x80);
        assert_int_equal(be64(raw + 1), t0 + n);
        free(raw);

        /* The header's bound on out_cap (decoded length - 57) is enough. */
        size_t cap = raw_len - FERNET_OVERHEAD;
        assert_true(cap <= sizeof out - 1);
        memset(out, 0xA5, sizeof out);
        size_t out_len = 999;
        phg_status rc = phg_fernet_decrypt(key, tok, len, t0 + n, 60, out, cap, &out_len);
        EXPECT(rc == PHG_OK, "round trip n %zu: decrypt gave %d", n, (int)rc);
        EXPECT(out_len == n, "round trip n %zu: out_len %zu", n, out_len);
        EXPECT(memcmp(out, pt, n) == 0, "round trip n %zu: plaintext differs", n);
        EXPECT(out[cap] == 0xA5, "round trip n %zu: wrote past out_cap", n);

        /* A fresh random IV each time. */
        size_t len2;
        char *tok2 = make_token(key, pt, n, t0 + n, &len2);
        assert_int_equal(len2, len);
        EXPECT(strcmp(tok, tok2) != 0, "round trip n %zu: two tokens are identical", n);

        /* Another signing key does not open it. (A change of the encryption
         * half alone is not detectable by design: Fernet's MAC covers the
         * token, not the key; the padding check then fails only 255 times in
         * 256. That made this test flaky when it flipped any byte.) */
        memcpy(other, key, sizeof other);
        other[n % 16] ^= 0x01;
        expect_auth_failure(other, tok, len, t0 + n, 60, "a wrong key");
        free(tok2);
        free(tok);
    }
}

static void test_encrypt_small_buffer(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE];
    assert_int_equal(phg_random_bytes(key, sizeof key), PHG_OK);
    size_t need = phg_fernet_token_len(5) + 1;
    char *out = malloc(need);
    assert_non_null(out);
    size_t out_len = 0;
    phg_status rc =
        phg_fernet_encrypt(key, (const uint8_t *)"hello", 5, t0, NULL, out, need - 1, &out_len);
    assert_int_not_equal(rc, PHG_OK);
    free(out);
}

static void test_every_bit_flip_rejected(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE];
    assert_int_equal(phg_random_bytes(key, sizeof key), PHG_OK);
    const char *msg = "patient 4711: blood type AB-";
    size_t len;
    char *tok = make_token(key, (const uint8_t *)msg, strlen(msg), t0, &len);
    uint8_t *raw;
    size_t raw_len = token_raw(tok, &raw);

    /* Sanity: re-encoding the untouched bytes gives a token that opens. */
    char *same = token_text(raw, raw_len);
    assert_string_equal(same, tok);
    free(same);

    size_t flips = 0;
    for (size_t i = 0; i < raw_len; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            raw[i] ^= (uint8_t)(1u << bit);
            char *bad = token_text(raw, raw_len);
            char what[64];
            snprintf(what, sizeof what, "byte %zu bit %u flipped", i, bit);
            expect_auth_failure(key, bad, strlen(bad), t0, 60, what);
            free(bad);
            raw[i] ^= (uint8_t)(1u << bit);
            flips++;
        }
    }
    assert_int_equal(flips, raw_len * 8);
    free(raw);
    free(tok);
}

static void test_ttl(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE];
    uint8_t out[32];
    size_t out_len;
    decode_spec_key(key);
    size_t len;
    char *tok = make_token(key, (const uint8_t *)"hello", 5, t0, &len);

    /* ttl 0: the age is not checked, even ten years on. */
    const uint64_t ten_years = 10ull * 365 * 86400;
    assert_int_equal(
        phg_fernet_decrypt(key, tok, len, t0 + ten_years, 0, out, sizeof out, &out_len), PHG_OK);
    assert_int_equal(out_len, 5);
    assert_memory_equal(out, "hello", 5);
    expect_auth_failure(key, tok, len, t0 + ten_years, 60, "ten years old, ttl 60");

    /* ttl 60: refused only when older than 60 s... */
    assert_int_equal(phg_fernet_decrypt(key, tok, len, t0 + 60, 60, out, sizeof out, &out_len),
                     PHG_OK);
    expect_auth_failure(key, tok, len, t0 + 61, 60, "61 s old, ttl 60");
    /* ...or more than 60 s in the future. */
    assert_int_equal(phg_fernet_decrypt(key, tok, len, t0 - 60, 60, out, sizeof out, &out_len),
                     PHG_OK);
    expect_auth_failure(key, tok, len, t0 - 61, 60, "61 s in the future, ttl 60");
    free(tok);
}

/*
 * Whatever encrypt accepts, decrypt must open: a token that encrypt produced
 * may not exceed the decrypt-side limit PHG_FERNET_MAX_TOKEN_LEN.
 */
static void test_large_round_trip(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE];
    assert_int_equal(phg_random_bytes(key, sizeof key), PHG_OK);
    const size_t sizes[] = {PHG_FERNET_MAX_TOKEN_LEN / 2, PHG_FERNET_MAX_TOKEN_LEN / 4 * 3,
                            PHG_FERNET_MAX_TOKEN_LEN};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        uint8_t *pt = malloc(n);
        uint8_t *back = malloc(n + 16);
        size_t cap = phg_fernet_token_len(n) + 1;
        char *tok = malloc(cap);
        assert_non_null(pt);
        assert_non_null(back);
        assert_non_null(tok);
        memset(pt, (int)(i + 1), n);
        size_t len = 0;
        phg_status rc = phg_fernet_encrypt(key, pt, n, t0, NULL, tok, cap, &len);
        if (rc == PHG_OK) {
            size_t back_len = 0;
            rc = phg_fernet_decrypt(key, tok, len, t0, 60, back, n + 16, &back_len);
            EXPECT(rc == PHG_OK,
                   "fernet: encrypt accepted %zu bytes (token %zu chars, "
                   "PHG_FERNET_MAX_TOKEN_LEN %u) but decrypt of that token gave %d",
                   n, len, (unsigned)PHG_FERNET_MAX_TOKEN_LEN, (int)rc);
            EXPECT(back_len == n && memcmp(back, pt, n) == 0, "fernet: %zu bytes differ", n);
        }
        free(tok);
        free(back);
        free(pt);
    }
}

/* An over-long token is refused like any other bad token: AUTH, output wiped. */
static void test_oversized_token(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE];
    decode_spec_key(key);
    size_t len = (size_t)PHG_FERNET_MAX_TOKEN_LEN + 4;
    char *tok = malloc(len + 1);
    assert_non_null(tok);
    memset(tok, 'A', len);
    tok[len] = '\0';
    expect_auth_failure(key, tok, len, t0, 60, "a token over PHG_FERNET_MAX_TOKEN_LEN");
    free(tok);
}

/* A token with a correct MAC but another version byte is still refused. */
static void test_version_byte(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE];
    uint8_t out[32];
    size_t out_len;
    decode_spec_key(key);
    size_t len;
    char *tok = make_token(key, (const uint8_t *)"hello", 5, t0, &len);
    uint8_t *raw;
    size_t raw_len = token_raw(tok, &raw);
    size_t signed_len = raw_len - FERNET_MAC_LEN;

    /* Re-signing the untouched token with the signing key (first 16 bytes) reproduces it. */
    uint8_t mac[PHG_SHA256_SIZE];
    assert_int_equal(phg_hmac_sha256(key, 16, raw, signed_len, mac), PHG_OK);
    assert_memory_equal(mac, raw + signed_len, FERNET_MAC_LEN);

    const uint8_t versions[] = {0x00, 0x7F, 0x81, 0xFF};
    for (size_t i = 0; i < sizeof versions; i++) {
        raw[0] = versions[i];
        assert_int_equal(phg_hmac_sha256(key, 16, raw, signed_len, raw + signed_len), PHG_OK);
        char *bad = token_text(raw, raw_len);
        char what[48];
        snprintf(what, sizeof what, "version byte 0x%02x", versions[i]);
        expect_auth_failure(key, bad, strlen(bad), t0, 60, what);
        free(bad);
    }
    /* Restored to 0x80 and re-signed, it opens again. */
    raw[0] = 0x80;
    assert_int_equal(phg_hmac_sha256(key, 16, raw, signed_len, raw + signed_len), PHG_OK);
    char *good = token_text(raw, raw_len);
    assert_int_equal(phg_fernet_decrypt(key, good, strlen(good), t0, 60, out, sizeof out, &out_len),
                     PHG_OK);
    assert_int_equal(out_len, 5);
    free(good);
    free(raw);
    free(tok);
}

/* Strict base64 in tokens: no whitespace, no standard alphabet. */
static void test_token_encoding_strict(void **state)
{
    (void)state;
    uint8_t key[PHG_FERNET_KEY_SIZE];
    decode_spec_key(key);
    const char *tok =
        "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7"
        "JcbmrR64jVmpU4IwqDA==";
    uint64_t now = (uint64_t)rfc3339_to_unix("1985-10-26T01:20:01-07:00"); /* as verify.json */
    size_t len = strlen(tok);
    uint8_t out[32];
    size_t out_len;
    assert_int_equal(phg_fernet_decrypt(key, tok, len, now, 60, out, sizeof out, &out_len), PHG_OK);

    char buf[160];
    snprintf(buf, sizeof buf, "%s\n", tok);
    expect_auth_failure(key, buf, strlen(buf), now, 60, "a trailing newline");
    snprintf(buf, sizeof buf, " %s", tok);
    expect_auth_failure(key, buf, strlen(buf), now, 60, "a leading space");
    memcpy(buf, tok, len + 1);
    char *underscore = strchr(buf, '_');
    assert_non_null(underscore);
    *underscore = '/';
    expect_auth_failure(key, buf, len, now, 60, "'/' for '_'");
    expect_auth_failure(key, tok, len - 1, now, 60, "one '=' cut");
    expect_auth_failure(key, tok, 0, now, 60, "an empty token");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc3339_helper),
        cmocka_unit_test(test_generate_vectors),
        cmocka_unit_test(test_verify_vectors),
        cmocka_unit_test(test_invalid_vectors),
        cmocka_unit_test(test_key_decode),
        cmocka_unit_test(test_key_generate),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_encrypt_small_buffer),
        cmocka_unit_test(test_large_round_trip),
        cmocka_unit_test(test_oversized_token),
        cmocka_unit_test(test_every_bit_flip_rejected),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_version_byte),
        cmocka_unit_test(test_token_encoding_strict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
