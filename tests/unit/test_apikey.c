/*
 * tests/unit/test_apikey.c: API keys (include/phigate/apikey.h) against the
 * header contract and docs/formats.md 9.1: the key text (shape, checksum
 * vectors from Python's zlib and a CRC32 written here, every one-character
 * change refused), scopes and roles, and phg_keys on both store engines:
 * create / verify / revoke / rotate / expire, refused specs, a forced index
 * collision, changes made by another process seen within a second, a
 * PostgreSQL restart under load, last-used times, pages of the list, and the
 * negative cache.
 *
 * Every store test runs once on SQLite and once on PostgreSQL (testdb.h).
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "phigate/apikey.h"
#include "phigate/audit.h"
#include "phigate/crypto.h"
#include "phigate/store.h"
#include "store_internal.h"
#include "testdb.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define EXPECT_RC(got, want)                                                                       \
    do {                                                                                           \
        phg_status got_ = (got), want_ = (want);                                                   \
        EXPECT(got_ == want_, "[%s] %s: got %s, want %s", tdb_engine_name(g_engine), #got,         \
               phg_status_name(got_), phg_status_name(want_));                                     \
    } while (0)


static const char B62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* ---- an independent CRC32 and base62 ------------------------------------------------- */

/* CRC-32/ISO-HDLC (zlib's crc32), bit by bit: no table shared with the library. */
static uint32_t ref_crc32(const char *s, size_t n)
{
    uint32_t c = 0xffffffffu;
    size_t i;
    int b;
    for (i = 0; i < n; i++) {
        c ^= (uint8_t)s[i];
        for (b = 0; b < 8; b++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static void ref_base62_6(uint32_t v, char out[7])
{
    int i;
    for (i = 5; i >= 0; i--) {
        out[i] = B62[v % 62];
        v /= 62;
    }
    out[6] = '\0';
}

/* 32 bytes as one big-endian number in 43 base62 digits, by long division. */
static void ref_base62_256(const uint8_t in[32], char out[44])
{
    uint8_t n[32];
    int i, j;
    memcpy(n, in, 32);
    for (i = 42; i >= 0; i--) {
        unsigned rem = 0;
        for (j = 0; j < 32; j++) {
            unsigned cur = rem * 256 + n[j];
            n[j] = (uint8_t)(cur / 62);
            rem = cur % 62;
        }
        out[i] = B62[rem];
    }
    out[43] = '\0';
}

static int64_t index_of(const uint8_t hash[32])
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < 8; i++)
        v = v << 8 | hash[i];
    return (int64_t)v;
}

static int is_b62(int c)
{
    return c != 0 && strchr(B62, c) != NULL;
}

/* ---- fixtures ------------------------------------------------------------------------ */

typedef struct fx {
    testdb db;
    phg_store *st;
    phg_keys *keys;
} fx;

static phg_store *open_store(const testdb *db, size_t pool)
{
    phg_store *st = NULL;
    char err[PHG_STORE_ERR_MAX];
    phg_status rc = tdb_open_store(db, pool, &st, err, sizeof err);
    EXPECT(rc == PHG_OK, "[%s] open %s: %s (%s)", tdb_engine_name(db->engine), db->url,
           phg_status_name(rc), err);
    return st;
}

static phg_keys *open_keys(phg_store *st, int poller)
{
    phg_keys_options o;
    phg_keys *k = NULL;
    phg_keys_options_init(&o);
    o.start_poller = poller;
    EXPECT_RC(phg_keys_open(st, &o, &k), PHG_OK);
    return k;
}

/* A migrated database, closed again: what a test that forks starts from. */
static int db_setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char err[PHG_STORE_ERR_MAX] = "";
    phg_store *st;
    if (f == NULL)
        return -1;
    *state = f;
    tdb_create(&f->db, g_engine, "apikey");
    st = open_store(&f->db, 1);
    EXPECT(phg_store_migrate(st, NULL, NULL, err, sizeof err) == PHG_OK, "migrate: %s", err);
    phg_store_close(st);
    return 0;
}

/* A migrated database, a store with a pool of 4, phg_keys with its poller. */
static int keys_setup(void **state)
{
    fx *f;
    db_setup(state);
    f = *state;
    f->st = open_store(&f->db, 4);
    f->keys = open_keys(f->st, 1);
    return 0;
}

static int fx_teardown(void **state)
{
    fx *f = *state;
    if (f == NULL)
        return 0;
    phg_keys_close(f->keys);
    phg_store_close(f->st);
    tdb_drop(&f->db);
    free(f);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------- */

static phg_apikey_spec spec_of(const char *user)
{
    phg_apikey_spec s;
    memset(&s, 0, sizeof s);
    s.role = PHG_ROLE_USER;
    s.scopes = PHG_SCOPE_PHI_ENCRYPT;
    s.user_id = user;
    s.created_by = "test";
    return s;
}

static void create_key(phg_keys *k, const phg_apikey_spec *s, char key[PHG_APIKEY_LEN + 1],
                       phg_apikey_record *rec)
{
    char err[PHG_STORE_ERR_MAX] = "";
    phg_status rc = phg_keys_create(k, s, key, rec, err, sizeof err);
    EXPECT(rc == PHG_OK, "[%s] create for %s: %s (%s)", tdb_engine_name(g_engine), s->user_id,
           phg_status_name(rc), err);
}

static void expect_verify(phg_keys *k, const char *key, phg_status want_rc, phg_apikey_reason want,
                          const char *what)
{
    phg_identity id;
    phg_apikey_reason reason = (phg_apikey_reason)99;
    phg_status rc = phg_keys_verify(k, key, strlen(key), &id, &reason);
    EXPECT(rc == want_rc && reason == want, "[%s] %s: got %s/%s, want %s/%s",
           tdb_engine_name(g_engine), what, phg_status_name(rc), phg_apikey_reason_name(reason),
           phg_status_name(want_rc), phg_apikey_reason_name(want));
}

static void expect_identity(phg_keys *k, const char *key, const phg_apikey_record *rec,
                            const char *what)
{
    phg_identity id;
    phg_apikey_reason reason = (phg_apikey_reason)99;
    phg_status rc;
    memset(&id, 0x55, sizeof id);
    rc = phg_keys_verify(k, key, strlen(key), &id, &reason);
    EXPECT(rc == PHG_OK && reason == PHG_APIKEY_VALID, "[%s] %s: got %s/%s",
           tdb_engine_name(g_engine), what, phg_status_name(rc), phg_apikey_reason_name(reason));
    EXPECT(strcmp(id.key_id, rec->id) == 0, "%s: key_id %s, want %s", what, id.key_id, rec->id);
    EXPECT(strcmp(id.user_id, rec->user_id) == 0, "%s: user %s, want %s", what, id.user_id,
           rec->user_id);
    EXPECT(id.role == rec->role, "%s: role %d, want %d", what, (int)id.role, (int)rec->role);
    EXPECT(id.scopes == rec->scopes, "%s: scopes %x, want %x", what, id.scopes, rec->scopes);
    EXPECT(strcmp(id.rate_limit, rec->rate_limit) == 0, "%s: rate limit %s, want %s", what,
           id.rate_limit, rec->rate_limit);
}

static size_t count_keys(phg_keys *k)
{
    phg_apikey_record *recs = NULL;
    size_t n = 0, total = 0;
    char after[PHG_APIKEY_ID_MAX + 1] = "";
    for (;;) {
        EXPECT_RC(phg_keys_list(k, after, 1000, &recs, &n), PHG_OK);
        total += n;
        if (n == 0) {
            free(recs);
            break;
        }
        snprintf(after, sizeof after, "%s", recs[n - 1].id);
        free(recs);
        recs = NULL;
    }
    return total;
}

/* ---- the key text ------------------------------------------------------------------------ */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void test_key_format(void **state)
{
    enum { N = 1000 };
    char(*keys)[PHG_APIKEY_LEN + 1] = calloc(N, sizeof *keys);
    const char **sorted = calloc(N, sizeof *sorted);
    char crc[7];
    size_t i, j;
    (void)state;
    assert_non_null(keys);
    assert_non_null(sorted);

    for (i = 0; i < N; i++) {
        char *k = keys[i];
        EXPECT_RC(phg_apikey_generate(k), PHG_OK);
        EXPECT(strlen(k) == PHG_APIKEY_LEN && PHG_APIKEY_LEN == 53, "length %zu", strlen(k));
        EXPECT(memcmp(k, "phg_", 4) == 0, "prefix of %s", k);
        for (j = 4; j < PHG_APIKEY_LEN; j++)
            EXPECT(is_b62(k[j]), "%s: not base62 at %zu", k, j);
        EXPECT(phg_apikey_check_format(k, PHG_APIKEY_LEN) == PHG_APIKEY_VALID, "%s: not valid", k);
        /* The checksum, computed independently. */
        ref_base62_6(ref_crc32(k, 47), crc);
        EXPECT(memcmp(k + 47, crc, 6) == 0, "%s: checksum %.6s, want %s", k, k + 47, crc);
        sorted[i] = k;
    }
    qsort(sorted, N, sizeof *sorted, cmp_str);
    for (i = 1; i < N; i++)
        EXPECT(strcmp(sorted[i - 1], sorted[i]) != 0, "two generated keys are equal: %s",
               sorted[i]);

    /* Every one-character change of a valid key is refused, with the right reason. */
    for (i = 0; i < 20; i++) {
        char k[PHG_APIKEY_LEN + 1];
        size_t pos;
        int c;
        memcpy(k, keys[i], sizeof k);
        for (pos = 0; pos < PHG_APIKEY_LEN; pos++) {
            for (c = 0; c < 256; c++) {
                char orig = k[pos];
                phg_apikey_reason r, want;
                if (c == (unsigned char)orig)
                    continue;
                k[pos] = (char)c;
                r = phg_apikey_check_format(k, PHG_APIKEY_LEN);
                want = pos < 4 || !is_b62(c) ? PHG_APIKEY_MALFORMED : PHG_APIKEY_CHECKSUM;
                k[pos] = orig;
                if (r != want)
                    fail_msg("%s with byte %zu = 0x%02x: got %s, want %s", k, pos, c,
                             phg_apikey_reason_name(r), phg_apikey_reason_name(want));
            }
        }
    }

    /* Wrong length or prefix. */
    {
        char k[PHG_APIKEY_LEN + 8];
        memcpy(k, keys[0], PHG_APIKEY_LEN + 1);
        EXPECT(phg_apikey_check_format(k, PHG_APIKEY_LEN - 1) == PHG_APIKEY_MALFORMED, "52 chars");
        EXPECT(phg_apikey_check_format(k, 0) == PHG_APIKEY_MALFORMED, "0 chars");
        EXPECT(phg_apikey_check_format(NULL, 0) == PHG_APIKEY_MALFORMED, "NULL");
        EXPECT(phg_apikey_check_format("phg_", 4) == PHG_APIKEY_MALFORMED, "prefix only");
        k[PHG_APIKEY_LEN] = 'a';
        k[PHG_APIKEY_LEN + 1] = '\0';
        EXPECT(phg_apikey_check_format(k, PHG_APIKEY_LEN + 1) == PHG_APIKEY_MALFORMED, "54 chars");
        /* Another prefix with a checksum that matches it: still not a key. */
        memcpy(k, keys[0], PHG_APIKEY_LEN + 1);
        memcpy(k, "PHG_", 4);
        ref_base62_6(ref_crc32(k, 47), crc);
        memcpy(k + 47, crc, 6);
        EXPECT(phg_apikey_check_format(k, PHG_APIKEY_LEN) == PHG_APIKEY_MALFORMED, "PHG_ prefix");
        memcpy(k, "sk__", 4);
        ref_base62_6(ref_crc32(k, 47), crc);
        memcpy(k + 47, crc, 6);
        EXPECT(phg_apikey_check_format(k, PHG_APIKEY_LEN) == PHG_APIKEY_MALFORMED, "sk__ prefix");
    }
    free(sorted);
    free(keys);
}

/* Vectors from Python: zlib.crc32 and a base62 encoder (docs/formats.md 9.1). */
static void test_key_vectors(void **state)
{
    static const char *valid[] = {
        "phg_00000000000000000000000000000000000000000001MfurY",
        "phg_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz0la2hl",
        "phg_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq0m4lDr",
        "phg_1234567890123456789012345678901234567890xyz1Xr3MR",
    };
    static const uint32_t crcs[] = {0x4a93d4d0u, 0x29e81e71u, 0x2a57d3f7u, 0x546c7dc3u};
    size_t i;
    char crc[7];
    (void)state;
    for (i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        EXPECT(ref_crc32(valid[i], 47) == crcs[i], "reference CRC32 of vector %zu: %08x", i,
               ref_crc32(valid[i], 47));
        ref_base62_6(crcs[i], crc);
        EXPECT(memcmp(valid[i] + 47, crc, 6) == 0, "reference base62 of vector %zu", i);
        EXPECT(phg_apikey_check_format(valid[i], strlen(valid[i])) == PHG_APIKEY_VALID,
               "vector %zu refused: %s", i,
               phg_apikey_reason_name(phg_apikey_check_format(valid[i], strlen(valid[i]))));
    }
    /* The worked example of docs/formats.md 10.3: random part 00..1f. */
    {
        static const char example[] = "phg_003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf1td1g8";
        static const uint8_t example_hash[32] = {0x29, 0x82, 0xe1, 0x4e, 0x7a, 0x8d, 0x05, 0xc1,
                                                 0x48, 0x88, 0x10, 0x86, 0xd8, 0x06, 0xcd, 0x1d,
                                                 0xa1, 0xb0, 0xa0, 0x64, 0x67, 0xed, 0x60, 0x44,
                                                 0xb5, 0x27, 0x32, 0x09, 0x73, 0x30, 0x63, 0x42};
        uint8_t rnd[32], h[32];
        char body[44];
        for (i = 0; i < 32; i++)
            rnd[i] = (uint8_t)i;
        ref_base62_256(rnd, body);
        EXPECT(memcmp(example + 4, body, 43) == 0, "reference body %s", body);
        EXPECT(ref_crc32(example, 47) == 0x6799cc50u, "reference CRC of the example");
        ref_base62_6(0x6799cc50u, crc);
        EXPECT(strcmp(crc, "1td1g8") == 0, "reference check of the example: %s", crc);
        EXPECT(phg_apikey_check_format(example, 53) == PHG_APIKEY_VALID, "example refused");
        EXPECT_RC(phg_sha256((const uint8_t *)example, 53, h), PHG_OK);
        EXPECT(memcmp(h, example_hash, 32) == 0, "key_hash of the example");
        EXPECT(index_of(h) == INT64_C(2991200829707191745), "key_index of the example: %lld",
               (long long)index_of(h));
    }
    /* CRC32("123456789") = cbf43926, the standard check value. */
    EXPECT(ref_crc32("123456789", 9) == 0xcbf43926u, "reference CRC32 check value");
    EXPECT(phg_apikey_check_format("phg_00000000000000000000000000000000000000000001MfurZ", 53) ==
               PHG_APIKEY_CHECKSUM,
           "wrong checksum accepted");
}

static void test_scopes_and_roles(void **state)
{
    uint32_t s = 0xdead, x;
    phg_role r = PHG_ROLE_ADMIN;
    char buf[128];
    (void)state;

    EXPECT_RC(phg_apikey_scopes_parse("phi:encrypt,audit:read", &s), PHG_OK);
    EXPECT(s == (PHG_SCOPE_PHI_ENCRYPT | PHG_SCOPE_AUDIT_READ), "scopes %x", s);
    EXPECT_RC(phg_apikey_scopes_parse("phi:decrypt keys:admin, webhooks:admin", &s), PHG_OK);
    EXPECT(s == (PHG_SCOPE_PHI_DECRYPT | PHG_SCOPE_KEYS_ADMIN | PHG_SCOPE_WEBHOOKS_ADMIN),
           "scopes %x", s);
    EXPECT_RC(phg_apikey_scopes_parse("", &s), PHG_OK);
    EXPECT(s == 0, "empty list: %x", s);
    EXPECT_RC(phg_apikey_scopes_parse("phi:encrypt,phi:encrypt", &s), PHG_OK);
    EXPECT(s == PHG_SCOPE_PHI_ENCRYPT, "duplicate: %x", s);
    EXPECT_RC(phg_apikey_scopes_parse("phi:encrypt,phi:everything", &s), PHG_ERR_INVALID);
    EXPECT(s == 0, "refused list left bits %x", s);
    EXPECT_RC(phg_apikey_scopes_parse("PHI:ENCRYPT", &s), PHG_ERR_INVALID);
    EXPECT_RC(phg_apikey_scopes_parse("phi:encrypt;audit:read", &s), PHG_ERR_INVALID);
    EXPECT_RC(phg_apikey_scopes_parse("phi", &s), PHG_ERR_INVALID);
    EXPECT_RC(phg_apikey_scopes_parse("phi:encryptx", &s), PHG_ERR_INVALID);
    for (x = 0; x <= PHG_SCOPE_ALL; x++) {
        phg_apikey_scopes_format(x, buf, sizeof buf);
        EXPECT_RC(phg_apikey_scopes_parse(buf, &s), PHG_OK);
        EXPECT(s == x, "format/parse of %x: \"%s\" -> %x", x, buf, s);
    }
    phg_apikey_scopes_format(PHG_SCOPE_ALL, buf, sizeof buf);
    EXPECT(strcmp(buf, "phi:encrypt phi:decrypt audit:read keys:admin webhooks:admin") == 0,
           "all scopes: %s", buf);

    EXPECT_RC(phg_role_parse("user", &r), PHG_OK);
    EXPECT(r == PHG_ROLE_USER, "user");
    EXPECT_RC(phg_role_parse("admin", &r), PHG_OK);
    EXPECT(r == PHG_ROLE_ADMIN, "admin");
    EXPECT_RC(phg_role_parse("Admin", &r), PHG_ERR_INVALID);
    EXPECT_RC(phg_role_parse("root", &r), PHG_ERR_INVALID);
    EXPECT_RC(phg_role_parse("", &r), PHG_ERR_INVALID);
    EXPECT_RC(phg_role_parse(NULL, &r), PHG_ERR_INVALID);
    EXPECT(strcmp(phg_role_name(PHG_ROLE_USER), "user") == 0 &&
               strcmp(phg_role_name(PHG_ROLE_ADMIN), "admin") == 0,
           "role names");
    EXPECT(strcmp(phg_apikey_reason_name(PHG_APIKEY_VALID), "valid") == 0 &&
               strcmp(phg_apikey_reason_name(PHG_APIKEY_REVOKED), "revoked") == 0 &&
               strcmp(phg_apikey_reason_name(PHG_APIKEY_EXPIRED), "expired") == 0,
           "reason names");
}

/* ---- create / verify / revoke / rotate / expire ---------------------------------------- */

static void test_create_and_verify(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("alice");
    phg_apikey_record rec, got;
    char key[PHG_APIKEY_LEN + 1], other[PHG_APIKEY_LEN + 1];
    uint8_t hash[32];
    int64_t t0 = (int64_t)time(NULL);
    phg_keys *k2;
    phg_identity id;
    phg_apikey_reason reason;
    size_t i;

    s.role = PHG_ROLE_ADMIN;
    s.scopes = PHG_SCOPE_PHI_ENCRYPT | PHG_SCOPE_AUDIT_READ;
    s.rate_limit = "100/1m,5000/1h";
    s.description = "the key of the tests";
    create_key(f->keys, &s, key, &rec);

    EXPECT(phg_apikey_check_format(key, strlen(key)) == PHG_APIKEY_VALID, "created key: %s", key);
    EXPECT(strncmp(rec.id, "ak_", 3) == 0 && strlen(rec.id) == 19, "id %s", rec.id);
    for (i = 3; i < 19; i++)
        EXPECT((rec.id[i] >= 'a' && rec.id[i] <= 'z') || (rec.id[i] >= '0' && rec.id[i] <= '9'),
               "id %s", rec.id);
    EXPECT_RC(phg_sha256((const uint8_t *)key, strlen(key), hash), PHG_OK);
    EXPECT(memcmp(hash, rec.hash, 32) == 0, "stored hash is not SHA-256(key)");
    EXPECT(rec.index == index_of(hash), "index is not the first 8 bytes of the hash");
    EXPECT(rec.created_at >= t0 && rec.created_at <= (int64_t)time(NULL) + 1, "created_at %lld",
           (long long)rec.created_at);
    EXPECT(rec.revoked_at == 0 && rec.expires_at == 0 && rec.grace_until == 0 &&
               rec.replaced_by[0] == '\0' && rec.last_used_at == 0,
           "fresh record state");

    expect_identity(f->keys, key, &rec, "fresh key");
    /* id may be NULL */
    EXPECT_RC(phg_keys_verify(f->keys, key, strlen(key), NULL, &reason), PHG_OK);

    /* The store holds the record, not the key. */
    EXPECT_RC(phg_keys_get(f->keys, rec.id, &got), PHG_OK);
    EXPECT(strcmp(got.id, rec.id) == 0 && memcmp(got.hash, rec.hash, 32) == 0 &&
               got.index == rec.index && got.role == PHG_ROLE_ADMIN && got.scopes == rec.scopes &&
               strcmp(got.user_id, "alice") == 0 &&
               strcmp(got.description, "the key of the tests") == 0 &&
               strcmp(got.created_by, "test") == 0 &&
               strcmp(got.rate_limit, "100/1m,5000/1h") == 0 && got.created_at == rec.created_at &&
               got.version > 0,
           "stored record differs");
    EXPECT_RC(phg_keys_get(f->keys, "ak_doesnotexist0000", &got), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keys_get(f->keys, "", &got), PHG_ERR_NOT_FOUND);

    /* Another manager on the store loads it at open. */
    k2 = open_keys(f->st, 0);
    expect_identity(k2, key, &rec, "key loaded by a second manager");
    phg_keys_close(k2);

    /* Unknown, malformed, bad checksum. */
    EXPECT_RC(phg_apikey_generate(other), PHG_OK);
    expect_verify(f->keys, other, PHG_ERR_AUTH, PHG_APIKEY_UNKNOWN, "unknown well-formed key");
    memcpy(other, key, sizeof other);
    other[10] = other[10] == 'a' ? 'b' : 'a';
    expect_verify(f->keys, other, PHG_ERR_AUTH, PHG_APIKEY_CHECKSUM, "one character changed");
    other[10] = '-';
    expect_verify(f->keys, other, PHG_ERR_AUTH, PHG_APIKEY_MALFORMED, "a '-' in the key");
    reason = (phg_apikey_reason)99;
    EXPECT_RC(phg_keys_verify(f->keys, key, PHG_APIKEY_LEN - 1, &id, &reason), PHG_ERR_AUTH);
    EXPECT(reason == PHG_APIKEY_MALFORMED, "short length: %s", phg_apikey_reason_name(reason));
    EXPECT_RC(phg_keys_verify(f->keys, "", 0, &id, &reason), PHG_ERR_AUTH);
    EXPECT(reason == PHG_APIKEY_MALFORMED, "empty key: %s", phg_apikey_reason_name(reason));
}

static void test_revoke(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("bob");
    phg_apikey_record rec, keep, got;
    char key[PHG_APIKEY_LEN + 1], key2[PHG_APIKEY_LEN + 1];
    phg_keys *k2;
    int64_t t0 = (int64_t)time(NULL);

    create_key(f->keys, &s, key, &rec);
    create_key(f->keys, &s, key2, &keep);
    expect_identity(f->keys, key, &rec, "before revoke");

    EXPECT_RC(phg_keys_revoke(f->keys, rec.id), PHG_OK);
    expect_verify(f->keys, key, PHG_ERR_AUTH, PHG_APIKEY_REVOKED, "revoked key");
    expect_verify(f->keys, key, PHG_ERR_AUTH, PHG_APIKEY_REVOKED, "revoked key, again");
    expect_identity(f->keys, key2, &keep, "the other key of the user");
    EXPECT_RC(phg_keys_get(f->keys, rec.id, &got), PHG_OK);
    EXPECT(got.revoked_at >= t0 && got.revoked_at <= (int64_t)time(NULL), "revoked_at %lld",
           (long long)got.revoked_at);

    EXPECT_RC(phg_keys_revoke(f->keys, rec.id), PHG_OK); /* twice is fine */
    EXPECT_RC(phg_keys_revoke(f->keys, "ak_doesnotexist0000"), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keys_revoke(f->keys, ""), PHG_ERR_NOT_FOUND);

    /* A manager opened afterwards never accepts it either. */
    k2 = open_keys(f->st, 0);
    expect_verify(k2, key, PHG_ERR_AUTH, PHG_APIKEY_REVOKED, "revoked key, new manager");
    expect_identity(k2, key2, &keep, "the other key, new manager");
    phg_keys_close(k2);
}

static void test_expiry(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("carol");
    phg_apikey_record rec, forever;
    char key[PHG_APIKEY_LEN + 1], key2[PHG_APIKEY_LEN + 1];

    s.expires_at = (int64_t)time(NULL) + 2;
    create_key(f->keys, &s, key, &rec);
    EXPECT(rec.expires_at == s.expires_at, "expires_at %lld", (long long)rec.expires_at);
    s.expires_at = 0;
    create_key(f->keys, &s, key2, &forever);
    expect_identity(f->keys, key, &rec, "before expiry");
    while ((int64_t)time(NULL) < rec.expires_at)
        tdb_sleep_ms(50);
    expect_verify(f->keys, key, PHG_ERR_AUTH, PHG_APIKEY_EXPIRED, "after expiry");
    expect_identity(f->keys, key2, &forever, "key without expiry");
    {
        phg_keys *k2 = open_keys(f->st, 0);
        expect_verify(k2, key, PHG_ERR_AUTH, PHG_APIKEY_EXPIRED, "after expiry, new manager");
        phg_keys_close(k2);
    }
}

static void test_rotate(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("dave");
    phg_apikey_record a, a2, b, b2, c, got;
    char ka[PHG_APIKEY_LEN + 1], ka2[PHG_APIKEY_LEN + 1], kb[PHG_APIKEY_LEN + 1],
        kb2[PHG_APIKEY_LEN + 1], kc[PHG_APIKEY_LEN + 1], tmp[PHG_APIKEY_LEN + 1];
    int64_t t0 = (int64_t)time(NULL);
    phg_keys *k2;

    s.role = PHG_ROLE_ADMIN;
    s.scopes = PHG_SCOPE_KEYS_ADMIN | PHG_SCOPE_PHI_DECRYPT;
    s.rate_limit = "10/1s";
    create_key(f->keys, &s, ka, &a);

    /* Grace 0: the old key stops now, the new one works with the same rights. */
    EXPECT_RC(phg_keys_rotate(f->keys, a.id, 0, ka2, &a2), PHG_OK);
    EXPECT(strcmp(a2.id, a.id) != 0 && strcmp(ka2, ka) != 0, "rotation gave the same key");
    EXPECT(a2.role == a.role && a2.scopes == a.scopes && strcmp(a2.user_id, a.user_id) == 0 &&
               strcmp(a2.rate_limit, a.rate_limit) == 0,
           "rotated key lost its rights");
    expect_verify(f->keys, ka, PHG_ERR_AUTH, PHG_APIKEY_EXPIRED, "old key after rotate(0)");
    expect_identity(f->keys, ka2, &a2, "new key after rotate(0)");
    EXPECT_RC(phg_keys_get(f->keys, a.id, &got), PHG_OK);
    EXPECT(strcmp(got.replaced_by, a2.id) == 0, "replaced_by %s", got.replaced_by);
    EXPECT(got.grace_until >= t0 && got.grace_until <= (int64_t)time(NULL), "grace_until %lld",
           (long long)got.grace_until);

    /* Rotating twice is a state error; the new key can be rotated. */
    EXPECT_RC(phg_keys_rotate(f->keys, a.id, 0, tmp, NULL), PHG_ERR_STATE);
    EXPECT_RC(phg_keys_rotate(f->keys, a.id, 3600, tmp, NULL), PHG_ERR_STATE);

    /* Grace 3600: both work, each with its own id. */
    create_key(f->keys, &s, kb, &b);
    EXPECT_RC(phg_keys_rotate(f->keys, b.id, 3600, kb2, &b2), PHG_OK);
    expect_identity(f->keys, kb, &b, "old key in its grace period");
    expect_identity(f->keys, kb2, &b2, "new key, old in grace");
    EXPECT_RC(phg_keys_get(f->keys, b.id, &got), PHG_OK);
    EXPECT(got.grace_until >= t0 + 3600 && got.grace_until <= (int64_t)time(NULL) + 3600,
           "grace_until %lld", (long long)got.grace_until);
    EXPECT_RC(phg_keys_rotate(f->keys, b.id, 3600, tmp, NULL), PHG_ERR_STATE);

    /* A second manager sees the same after a refresh. */
    k2 = open_keys(f->st, 0);
    expect_verify(k2, ka, PHG_ERR_AUTH, PHG_APIKEY_EXPIRED, "old key, second manager");
    expect_identity(k2, ka2, &a2, "new key, second manager");
    expect_identity(k2, kb, &b, "old key in grace, second manager");
    phg_keys_close(k2);

    /* Revoked keys cannot be rotated; missing ones are not found. */
    create_key(f->keys, &s, kc, &c);
    EXPECT_RC(phg_keys_revoke(f->keys, c.id), PHG_OK);
    EXPECT_RC(phg_keys_rotate(f->keys, c.id, 0, tmp, NULL), PHG_ERR_STATE);
    EXPECT_RC(phg_keys_rotate(f->keys, "ak_doesnotexist0000", 0, tmp, NULL), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keys_revoke(f->keys, "ak_doesnotexist0000"), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keys_rotate(f->keys, a2.id, -1, tmp, NULL), PHG_ERR_INVALID);
    /* After the failures nothing new was stored: a, a2, b, b2, c. */
    EXPECT(count_keys(f->keys) == 5, "%zu keys stored", count_keys(f->keys));
}

/* ---- refused specs ---------------------------------------------------------------------- */

static phg_apikey_spec spec_full(phg_role role, uint32_t scopes, const char *user,
                                 const char *description, const char *created_by,
                                 const char *rate_limit, int64_t expires_at)
{
    phg_apikey_spec s;
    memset(&s, 0, sizeof s);
    s.role = role;
    s.scopes = scopes;
    s.user_id = user;
    s.description = description;
    s.created_by = created_by;
    s.rate_limit = rate_limit;
    s.expires_at = expires_at;
    return s;
}

static void expect_refused(fx *f, const phg_apikey_spec *s, const char *what)
{
    char key[PHG_APIKEY_LEN + 1], err[PHG_STORE_ERR_MAX];
    phg_apikey_record rec;
    phg_status rc;
    memset(err, 0, sizeof err);
    rc = phg_keys_create(f->keys, s, key, &rec, err, sizeof err);
    EXPECT(rc == PHG_ERR_INVALID, "[%s] %s: got %s, want invalid", tdb_engine_name(g_engine), what,
           phg_status_name(rc));
    EXPECT(err[0] != '\0', "%s: no message", what);
}

static void test_bad_specs(void **state)
{
    fx *f = *state;
    phg_apikey_spec s;
    char long_user[PHG_APIKEY_USER_MAX + 2], long_desc[PHG_APIKEY_DESC_MAX + 2];
    char key[PHG_APIKEY_LEN + 1];
    phg_keys_stats st;
    int64_t now = (int64_t)time(NULL);
    size_t i;
    const struct {
        const char *what;
        phg_apikey_spec s;
    } bad[] = {
        {"role 7", spec_full((phg_role)7, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", NULL, 0)},
        {"role -1", spec_full((phg_role)-1, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", NULL, 0)},
        {"scope bit 5", spec_full(PHG_ROLE_USER, 1u << 5, "erin", NULL, "test", NULL, 0)},
        {"scope bit 31", spec_full(PHG_ROLE_USER, 0x80000000u | PHG_SCOPE_PHI_ENCRYPT, "erin", NULL,
                                   "test", NULL, 0)},
        {"NULL user", spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, NULL, NULL, "test", NULL, 0)},
        {"empty user", spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "", NULL, "test", NULL, 0)},
        {"129-char user",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, long_user, NULL, "test", NULL, 0)},
        {"newline in the user",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "er\nin", NULL, "test", NULL, 0)},
        {"escape in the user",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "er\x1bin", NULL, "test", NULL, 0)},
        {"DEL in the user",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin\x7f", NULL, "test", NULL, 0)},
        {"257-char description",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", long_desc, "test", NULL, 0)},
        {"tab in the description",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", "a\tb", "test", NULL, 0)},
        {"NULL created_by",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, NULL, NULL, 0)},
        {"empty created_by",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "", NULL, 0)},
        {"CR in created_by",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "cli\r", NULL, 0)},
        {"expiry in the past",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", NULL, now - 1)},
        {"expiry now",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", NULL, now)},
        {"expiry in 1970",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", NULL, 1)},
        {"negative expiry",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", NULL, -5)},
        {"rate limit with spaces", spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL,
                                             "test", "100 per minute", 0)},
        {"rate limit with ;",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", "100/1m;DROP", 0)},
        {"rate limit with a newline",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", "100/1m\n", 0)},
        {"rate limit in upper case",
         spec_full(PHG_ROLE_USER, PHG_SCOPE_PHI_ENCRYPT, "erin", NULL, "test", "100/1M", 0)},
    };

    memset(long_user, 'u', sizeof long_user - 1);
    long_user[sizeof long_user - 1] = '\0'; /* 129 */
    memset(long_desc, 'd', sizeof long_desc - 1);
    long_desc[sizeof long_desc - 1] = '\0'; /* 257 */

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_refused(f, &bad[i].s, bad[i].what);

    /* Nothing was stored, nothing indexed. */
    EXPECT(count_keys(f->keys) == 0, "refused specs stored %zu keys", count_keys(f->keys));
    phg_keys_get_stats(f->keys, &st);
    EXPECT(st.indexed == 0, "refused specs indexed %zu keys", st.indexed);

    /* The limits themselves are accepted. */
    long_user[PHG_APIKEY_USER_MAX] = '\0';
    long_desc[PHG_APIKEY_DESC_MAX] = '\0';
    s = spec_of(long_user);
    s.description = long_desc;
    s.scopes = PHG_SCOPE_ALL;
    s.expires_at = now + 3600;
    s.rate_limit = "100/1m,5000/1h";
    create_key(f->keys, &s, key, NULL);
    EXPECT(count_keys(f->keys) == 1, "the limit spec was not stored");
}

/* Rate-limit texts that have only allowed characters but are no limit. Kept
 * apart from test_bad_specs so that a failure here names only this rule. */
static void test_bad_rate_limit_text(void **state)
{
    fx *f = *state;
    static const char *bad[] = {"fast", "100", "100/", "/1m", "100/1m,,5/1h", ",", "100/1m,"};
    char accepted[256] = "", key[PHG_APIKEY_LEN + 1];
    phg_apikey_spec s;
    phg_status rc;
    size_t i, o = 0;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = spec_of("frank");
        s.rate_limit = bad[i];
        rc = phg_keys_create(f->keys, &s, key, NULL, NULL, 0);
        if (rc != PHG_ERR_INVALID && o < sizeof accepted)
            o += (size_t)snprintf(accepted + o, sizeof accepted - o, " \"%s\" (%s)", bad[i],
                                  phg_status_name(rc));
    }
    EXPECT(accepted[0] == '\0', "[%s] rate limits that are no limit were accepted:%s",
           tdb_engine_name(g_engine), accepted);
    EXPECT(count_keys(f->keys) == 0, "bad rate limits stored %zu keys", count_keys(f->keys));
}

/* ---- a forced index collision ------------------------------------------------------------ */

/* A record for a key text, with fields of our choosing, written straight to
 * the store (phg_keys_create has no way to force a hash). */
static void plant(phg_store *st, const char *id, const uint8_t hash[32], const char *user,
                  uint32_t scopes, phg_apikey_record *out)
{
    phg_apikey_record r;
    memset(&r, 0, sizeof r);
    snprintf(r.id, sizeof r.id, "%s", id);
    memcpy(r.hash, hash, 32);
    r.index = index_of(hash);
    r.role = PHG_ROLE_USER;
    r.scopes = scopes;
    snprintf(r.user_id, sizeof r.user_id, "%s", user);
    snprintf(r.created_by, sizeof r.created_by, "test");
    r.created_at = (int64_t)time(NULL);
    EXPECT_RC(phg_internal_store_key_insert(st, &r), PHG_OK);
    if (out != NULL)
        *out = r;
}

static void test_forced_collision(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("alice");
    phg_apikey_record a, b, c, d, e, g, got;
    char ka[PHG_APIKEY_LEN + 1], kc[PHG_APIKEY_LEN + 1], ke[PHG_APIKEY_LEN + 1];
    uint8_t h[32];
    phg_keys *k2, *k3;
    phg_keys_stats st;

    /* A (real) first, then B: A's hash with its last byte flipped, same index. */
    s.scopes = PHG_SCOPE_PHI_ENCRYPT;
    create_key(f->keys, &s, ka, &a);
    memcpy(h, a.hash, 32);
    h[31] ^= 0x01;
    plant(f->st, "ak_bbbbbbbbbbbbbbbb", h, "mallory", PHG_SCOPE_ALL, &b);
    EXPECT(b.index == a.index, "not a collision");
    EXPECT_RC(phg_keys_refresh(f->keys), PHG_OK);
    phg_keys_get_stats(f->keys, &st);
    EXPECT(st.indexed == 2, "indexed %zu, want 2", st.indexed);
    expect_identity(f->keys, ka, &a, "A with B on its index");

    /* The other order: decoy D is stored (and indexed) before C. */
    EXPECT_RC(phg_apikey_generate(kc), PHG_OK);
    EXPECT_RC(phg_sha256((const uint8_t *)kc, PHG_APIKEY_LEN, h), PHG_OK);
    h[31] ^= 0x80;
    plant(f->st, "ak_dddddddddddddddd", h, "mallory", PHG_SCOPE_ALL, &d);
    h[31] ^= 0x80;
    plant(f->st, "ak_cccccccccccccccc", h, "carol", PHG_SCOPE_AUDIT_READ, &c);
    EXPECT_RC(phg_keys_refresh(f->keys), PHG_OK);
    expect_identity(f->keys, kc, &c, "C after its decoy D");
    k2 = open_keys(f->st, 0);
    expect_identity(k2, ka, &a, "A, second manager");
    expect_identity(k2, kc, &c, "C, second manager");
    phg_keys_close(k2);

    /* The store lookup of a key the index does not know yet (no refresh):
     * the decoy G comes first in the store. */
    k3 = open_keys(f->st, 0);
    EXPECT_RC(phg_apikey_generate(ke), PHG_OK);
    EXPECT_RC(phg_sha256((const uint8_t *)ke, PHG_APIKEY_LEN, h), PHG_OK);
    h[20] ^= 0x10; /* bytes 0..7, the index, unchanged */
    plant(f->st, "ak_gggggggggggggggg", h, "mallory", PHG_SCOPE_ALL, &g);
    h[20] ^= 0x10;
    plant(f->st, "ak_eeeeeeeeeeeeeeee", h, "eve", PHG_SCOPE_PHI_DECRYPT, &e);
    expect_identity(k3, ke, &e, "E found in the store next to its decoy");

    /* Revoking A leaves B alone. */
    EXPECT_RC(phg_keys_revoke(f->keys, a.id), PHG_OK);
    {
        phg_apikey_reason r = (phg_apikey_reason)99;
        phg_identity id;
        phg_status rc = phg_keys_verify(f->keys, ka, PHG_APIKEY_LEN, &id, &r);
        EXPECT(rc == PHG_ERR_AUTH && (r == PHG_APIKEY_REVOKED || r == PHG_APIKEY_UNKNOWN),
               "revoked A: %s/%s", phg_status_name(rc), phg_apikey_reason_name(r));
    }
    EXPECT_RC(phg_keys_get(f->keys, b.id, &got), PHG_OK);
    EXPECT(got.revoked_at == 0 && memcmp(got.hash, b.hash, 32) == 0, "B was touched");
    EXPECT_RC(phg_keys_refresh(k3), PHG_OK);
    expect_verify(k3, ka, PHG_ERR_AUTH, PHG_APIKEY_REVOKED, "revoked A, third manager");
    expect_identity(k3, kc, &c, "C after A was revoked, third manager");
    phg_keys_get_stats(f->keys, &st);
    /* B, C and D stay; E and G may have come through the poller by now. */
    EXPECT(st.indexed >= 3, "indexed %zu after revoking A", st.indexed);
    phg_keys_close(k3);
    expect_identity(f->keys, kc, &c, "C after A was revoked");
}

/*
 * Many keys in one shard of the index (their index ends in the same 6 bits),
 * with decoys on the index of one of them, then every third key revoked:
 * the open-addressing table must keep every chain whole when it deletes.
 */
static void test_index_churn(void **state)
{
    enum { N = 120, DECOYS = 6 };
    fx *f = *state;
    char(*keys)[PHG_APIKEY_LEN + 1] = calloc(N, sizeof *keys);
    phg_apikey_record *recs = calloc(N, sizeof *recs);
    uint8_t h[32];
    char id[PHG_APIKEY_ID_MAX + 1], what[64];
    phg_keys *k2;
    phg_keys_stats st;
    size_t i, j;
    int pass;

    assert_non_null(keys);
    assert_non_null(recs);
    for (i = 0; i < N; i++) {
        do {
            EXPECT_RC(phg_apikey_generate(keys[i]), PHG_OK);
            EXPECT_RC(phg_sha256((const uint8_t *)keys[i], PHG_APIKEY_LEN, h), PHG_OK);
        } while ((h[7] & 63) != 5);
        snprintf(id, sizeof id, "ak_churn%08zu", i);
        plant(f->st, id, h, "churn", PHG_SCOPE_PHI_ENCRYPT, &recs[i]);
    }
    for (j = 0; j < DECOYS; j++) {
        memcpy(h, recs[0].hash, 32);
        h[8 + j] ^= 0x5a;
        snprintf(id, sizeof id, "ak_decoy%08zu", j);
        plant(f->st, id, h, "mallory", PHG_SCOPE_ALL, NULL);
    }
    EXPECT_RC(phg_keys_refresh(f->keys), PHG_OK);
    phg_keys_get_stats(f->keys, &st);
    EXPECT(st.indexed == N + DECOYS, "indexed %zu, want %d", st.indexed, N + DECOYS);
    for (i = 0; i < N; i++) {
        snprintf(what, sizeof what, "churn key %zu", i);
        expect_identity(f->keys, keys[i], &recs[i], what);
    }
    for (i = 0; i < N; i += 3)
        EXPECT_RC(phg_keys_revoke(f->keys, recs[i].id), PHG_OK);
    k2 = open_keys(f->st, 0);
    for (pass = 0; pass < 2; pass++) {
        phg_keys *k = pass == 0 ? f->keys : k2;
        for (i = 0; i < N; i++) {
            snprintf(what, sizeof what, "churn key %zu (%s manager)", i, pass ? "new" : "same");
            if (i % 3 == 0)
                expect_verify(k, keys[i], PHG_ERR_AUTH, PHG_APIKEY_REVOKED, what);
            else
                expect_identity(k, keys[i], &recs[i], what);
        }
        phg_keys_get_stats(k, &st);
        EXPECT(st.indexed == N - (N + 2) / 3 + DECOYS, "%s manager: indexed %zu, want %d",
               pass ? "new" : "same", st.indexed, N - (N + 2) / 3 + DECOYS);
    }
    phg_keys_close(k2);
    free(recs);
    free(keys);
}

/* ---- another process ---------------------------------------------------------------------- */

typedef struct child_msg {
    int rc;
    int64_t before_ms, after_ms;
    char key[PHG_APIKEY_LEN + 1];
} child_msg;

static int read_full(int fd, void *buf, size_t n, int timeout_ms)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t r;
        if (poll(&p, 1, timeout_ms) <= 0)
            return -1;
        r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* The other process: its own store and phg_keys. No cmocka here. */
static void child_main(const char *url, int in, int out)
{
    char kid[PHG_APIKEY_ID_MAX + 1];
    phg_store *st = NULL;
    phg_keys *k = NULL;
    phg_keys_options o;
    phg_apikey_spec s = spec_of("newcomer");
    child_msg m;
    int i, code = 0;
    char go;

    if (read_full(in, kid, sizeof kid, 20000) != 0)
        _exit(10);
    if (phg_store_open(url, NULL, &st, NULL, 0) != PHG_OK)
        _exit(11);
    phg_keys_options_init(&o);
    o.start_poller = 0;
    if (phg_keys_open(st, &o, &k) != PHG_OK)
        _exit(12);
    tdb_sleep_ms(300); /* the parent's verifiers are running */

    memset(&m, 0, sizeof m);
    m.before_ms = tdb_now_ms();
    m.rc = phg_keys_revoke(k, kid);
    m.after_ms = tdb_now_ms();
    if (write(out, &m, sizeof m) != (ssize_t)sizeof m)
        code = 13;
    /* N1 when the parent is ready to verify it at once, N2 100 ms later. */
    if (read_full(in, &go, 1, 20000) != 0)
        code = 15;
    for (i = 0; i < 2; i++) {
        if (i > 0)
            tdb_sleep_ms(100);
        memset(&m, 0, sizeof m);
        m.before_ms = tdb_now_ms();
        m.rc = phg_keys_create(k, &s, m.key, NULL, NULL, 0);
        m.after_ms = tdb_now_ms();
        if (write(out, &m, sizeof m) != (ssize_t)sizeof m)
            code = 14;
    }
    phg_keys_close(k);
    phg_store_close(st);
    _exit(code);
}

typedef struct verifier {
    phg_keys *keys;
    const char *key;
    atomic_int *stop;
    _Atomic int64_t *first_invalid_ms;
    long verifies, flaps, errors;
    phg_status error_rc;
    phg_apikey_reason last_reason;
} verifier;

static void *verify_loop(void *arg)
{
    verifier *v = arg;
    int seen_invalid = 0;
    while (!atomic_load(v->stop)) {
        phg_identity id;
        phg_apikey_reason r;
        phg_status rc = phg_keys_verify(v->keys, v->key, PHG_APIKEY_LEN, &id, &r);
        int64_t now = tdb_now_ms();
        v->verifies++;
        if (rc == PHG_OK) {
            if (seen_invalid)
                v->flaps++; /* valid again after being refused */
        } else if (rc == PHG_ERR_AUTH) {
            int64_t expected = 0;
            if (!seen_invalid)
                atomic_compare_exchange_strong(v->first_invalid_ms, &expected, now);
            seen_invalid = 1;
            v->last_reason = r;
        } else {
            if (v->errors++ == 0)
                v->error_rc = rc;
        }
    }
    return NULL;
}

static void test_other_process(void **state)
{
    fx *f = *state;
    int to_child[2], to_parent[2], status = 0, i;
    pid_t pid;
    phg_apikey_spec s = spec_of("kim");
    phg_apikey_record k_rec;
    char kkey[PHG_APIKEY_LEN + 1], kid[PHG_APIKEY_ID_MAX + 1];
    child_msg revoke_msg, n1, n2;
    pthread_t th[4];
    verifier v[4];
    atomic_int stop = 0;
    _Atomic int64_t first_invalid = 0;
    int64_t t_ok = 0, deadline;
    phg_keys_stats s0, s1;
    phg_status rc = PHG_ERR_AUTH;
    phg_apikey_reason reason;

    /* Fork while this process has no thread and no connection. */
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(to_parent), 0);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        child_main(f->db.url, to_child[0], to_parent[1]);
    }
    close(to_child[0]);
    close(to_parent[1]);

    f->st = open_store(&f->db, 4);
    f->keys = open_keys(f->st, 1); /* the default 250 ms poller */
    create_key(f->keys, &s, kkey, &k_rec);
    expect_identity(f->keys, kkey, &k_rec, "K before the other process revokes it");
    for (i = 0; i < 4; i++) {
        memset(&v[i], 0, sizeof v[i]);
        v[i].keys = f->keys;
        v[i].key = kkey;
        v[i].stop = &stop;
        v[i].first_invalid_ms = &first_invalid;
        assert_int_equal(pthread_create(&th[i], NULL, verify_loop, &v[i]), 0);
    }
    memset(kid, 0, sizeof kid);
    snprintf(kid, sizeof kid, "%s", k_rec.id);
    assert_int_equal(write(to_child[1], kid, sizeof kid), (ssize_t)sizeof kid);

    if (read_full(to_parent[0], &revoke_msg, sizeof revoke_msg, 20000) != 0) {
        atomic_store(&stop, 1);
        for (i = 0; i < 4; i++)
            pthread_join(th[i], NULL);
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("[%s] no word from the child", tdb_engine_name(g_engine));
    }
    deadline = revoke_msg.after_ms + 2000;
    while (atomic_load(&first_invalid) == 0 && tdb_now_ms() < deadline)
        tdb_sleep_ms(5);
    atomic_store(&stop, 1);
    for (i = 0; i < 4; i++)
        pthread_join(th[i], NULL);

    EXPECT(revoke_msg.rc == PHG_OK, "child: revoke: %s", phg_status_name(revoke_msg.rc));
    for (i = 0; i < 4; i++) {
        EXPECT(v[i].errors == 0, "[%s] verifier %d: %ld errors, first %s",
               tdb_engine_name(g_engine), i, v[i].errors, phg_status_name(v[i].error_rc));
        EXPECT(v[i].flaps == 0, "[%s] verifier %d: K valid again %ld times after a refusal",
               tdb_engine_name(g_engine), i, v[i].flaps);
        EXPECT(v[i].verifies > 0, "verifier %d never ran", i);
    }
    EXPECT(atomic_load(&first_invalid) != 0,
           "[%s] K still valid 2 s after the other process revoked it", tdb_engine_name(g_engine));
    EXPECT(atomic_load(&first_invalid) - revoke_msg.after_ms <= 1000,
           "[%s] K refused %lld ms after the revoke (limit 1000)", tdb_engine_name(g_engine),
           (long long)(atomic_load(&first_invalid) - revoke_msg.after_ms));
    print_message("[%s] revoked K refused after %lld ms (%ld verifies by thread 0)\n",
                  tdb_engine_name(g_engine),
                  (long long)(atomic_load(&first_invalid) - revoke_msg.after_ms), v[0].verifies);

    /* N1: verified as soon as it is known here, by the store lookup (usually:
     * the poller has not run yet) or the poller. */
    assert_int_equal(write(to_child[1], "g", 1), 1);
    EXPECT(read_full(to_parent[0], &n1, sizeof n1, 20000) == 0, "no N1 from the child");
    EXPECT(n1.rc == PHG_OK, "child: create N1: %s", phg_status_name(n1.rc));
    phg_keys_get_stats(f->keys, &s0);
    deadline = n1.after_ms + 1500;
    while (tdb_now_ms() < deadline) {
        rc = phg_keys_verify(f->keys, n1.key, PHG_APIKEY_LEN, NULL, &reason);
        if (rc == PHG_OK) {
            t_ok = tdb_now_ms();
            break;
        }
        EXPECT(rc == PHG_ERR_AUTH, "verify N1: %s", phg_status_name(rc));
        tdb_sleep_ms(5);
    }
    phg_keys_get_stats(f->keys, &s1);
    EXPECT(rc == PHG_OK && t_ok - n1.after_ms <= 1000,
           "[%s] N1 not valid within 1 s of its creation (%s, %lld ms)", tdb_engine_name(g_engine),
           phg_apikey_reason_name(reason), (long long)(t_ok - n1.after_ms));
    print_message("[%s] N1 valid after %lld ms (store lookups +%llu, negative hits +%llu)\n",
                  tdb_engine_name(g_engine), (long long)(t_ok - n1.after_ms),
                  (unsigned long long)(s1.store_lookups - s0.store_lookups),
                  (unsigned long long)(s1.negative_hits - s0.negative_hits));

    /* N2: not verified until 1 s after its creation; then it must be in the
     * index already (the poller), with no store lookup. */
    EXPECT(read_full(to_parent[0], &n2, sizeof n2, 20000) == 0, "no N2 from the child");
    EXPECT(n2.rc == PHG_OK, "child: create N2: %s", phg_status_name(n2.rc));
    while (tdb_now_ms() < n2.after_ms + 1000)
        tdb_sleep_ms(10);
    phg_keys_get_stats(f->keys, &s0);
    rc = phg_keys_verify(f->keys, n2.key, PHG_APIKEY_LEN, NULL, &reason);
    phg_keys_get_stats(f->keys, &s1);
    EXPECT(rc == PHG_OK, "[%s] N2 not valid 1 s after its creation: %s/%s",
           tdb_engine_name(g_engine), phg_status_name(rc), phg_apikey_reason_name(reason));
    EXPECT(s1.store_lookups == s0.store_lookups,
           "[%s] N2 needed a store lookup: the poller did not bring it within 1 s",
           tdb_engine_name(g_engine));

    EXPECT(waitpid(pid, &status, 0) == pid, "waitpid");
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child exited with status %d",
           WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    close(to_child[1]);
    close(to_parent[0]);
}

/* ---- a PostgreSQL restart ------------------------------------------------------------------ */

static void test_server_restart(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("rita");
    phg_apikey_record recs[3], rec, strict_rec;
    char keys[3][PHG_APIKEY_LEN + 1], key[PHG_APIKEY_LEN + 1], cmd[2048];
    phg_store *strict_st;
    phg_keys *strict;
    pthread_t th[3];
    verifier v[3];
    atomic_int stop = 0;
    _Atomic int64_t first_invalid = 0;
    phg_status rc = PHG_ERR_UNAVAILABLE;
    int i, attempts;
    char *json = NULL;
    size_t len;

    for (i = 0; i < 3; i++)
        create_key(f->keys, &s, keys[i], &recs[i]);
    /* A second store with one connection and no poller: nothing else touches
     * its connection, so its first call after the restart is the one that
     * finds it broken. */
    strict_st = open_store(&f->db, 1);
    strict = open_keys(strict_st, 0);
    expect_identity(strict, keys[0], &recs[0], "before the restart");

    for (i = 0; i < 3; i++) {
        memset(&v[i], 0, sizeof v[i]);
        v[i].keys = f->keys;
        v[i].key = keys[i];
        v[i].stop = &stop;
        v[i].first_invalid_ms = &first_invalid;
        assert_int_equal(pthread_create(&th[i], NULL, verify_loop, &v[i]), 0);
    }
    if (g_engine == TDB_POSTGRES) {
        const char *srv = getenv("PHG_PG_SERVER"), *dir = getenv("PHG_TEST_PG_DIR");
        int sysrc;
        if (srv == NULL || dir == NULL) {
            atomic_store(&stop, 1);
            for (i = 0; i < 3; i++)
                pthread_join(th[i], NULL);
            phg_keys_close(strict);
            phg_store_close(strict_st);
            fail_msg("FATAL: PHG_PG_SERVER and PHG_TEST_PG_DIR are required (run through ctest)");
        }
        snprintf(cmd, sizeof cmd, "'%s' restart '%s' >/dev/null", srv, dir);
        sysrc = system(cmd);
        EXPECT(sysrc == 0, "%s: exit status %d", cmd, sysrc);
    } else {
        tdb_sleep_ms(300); /* nothing to restart: the same load, for symmetry */
    }
    tdb_sleep_ms(300);
    atomic_store(&stop, 1);
    for (i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < 3; i++) {
        EXPECT(v[i].verifies > 0, "verifier %d never ran", i);
        EXPECT(v[i].errors == 0 && atomic_load(&first_invalid) == 0,
               "[%s] verify of an indexed key failed during the restart (%ld errors, first %s; "
               "reason %s)",
               tdb_engine_name(g_engine), v[i].errors, phg_status_name(v[i].error_rc),
               phg_apikey_reason_name(v[i].last_reason));
    }

    /* The strict store: the first write may find the connection broken, the
     * next must succeed. */
    rc = phg_keys_create(strict, &s, key, &strict_rec, NULL, 0);
    if (rc == PHG_ERR_UNAVAILABLE)
        rc = phg_keys_create(strict, &s, key, &strict_rec, NULL, 0);
    EXPECT(rc == PHG_OK, "[%s] second write after the restart: %s", tdb_engine_name(g_engine),
           phg_status_name(rc));
    expect_identity(strict, key, &strict_rec, "key created after the restart");
    expect_identity(strict, keys[1], &recs[1], "key loaded before the restart");

    /* The pooled store with its poller: every connection of the pool may
     * report the broken connection once, then it works. */
    for (attempts = 1; attempts <= 5; attempts++) {
        rc = phg_keys_create(f->keys, &s, key, &rec, NULL, 0);
        if (rc != PHG_ERR_UNAVAILABLE)
            break;
    }
    EXPECT(rc == PHG_OK, "[%s] create after the restart: %s after %d attempts",
           tdb_engine_name(g_engine), phg_status_name(rc), attempts);
    if (attempts > 1)
        print_message("[%s] first create after the restart needed %d attempts\n",
                      tdb_engine_name(g_engine), attempts);
    expect_identity(f->keys, key, &rec, "created after the restart");
    for (i = 0; i < 3; i++) {
        phg_apikey_record r2;
        char k2[PHG_APIKEY_LEN + 1];
        EXPECT_RC(phg_keys_create(f->keys, &s, k2, &r2, NULL, 0), PHG_OK);
        expect_identity(f->keys, k2, &r2, "created after the restart, again");
    }
    EXPECT_RC(phg_keys_revoke(f->keys, recs[0].id), PHG_OK);
    expect_verify(f->keys, keys[0], PHG_ERR_AUTH, PHG_APIKEY_REVOKED, "revoked after restart");
    EXPECT_RC(phg_store_keyring_put(f->st, "{}", 2), PHG_OK);
    EXPECT_RC(phg_store_keyring_get(f->st, &json, &len), PHG_OK);
    free(json);
    EXPECT_RC(phg_keys_refresh(strict), PHG_OK);
    expect_verify(strict, keys[0], PHG_ERR_AUTH, PHG_APIKEY_REVOKED, "revoked, strict store");
    phg_keys_close(strict);
    phg_store_close(strict_st);
}

/* ---- last used, list, negative cache ----------------------------------------------------- */

static void test_last_used(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("lou");
    phg_apikey_record rec, rec2, got;
    char key[PHG_APIKEY_LEN + 1], key2[PHG_APIKEY_LEN + 1];
    int64_t t0 = (int64_t)time(NULL);

    create_key(f->keys, &s, key, &rec);
    create_key(f->keys, &s, key2, &rec2);
    EXPECT_RC(phg_keys_get(f->keys, rec.id, &got), PHG_OK);
    EXPECT(got.last_used_at == 0, "never used: last_used_at %lld", (long long)got.last_used_at);
    expect_identity(f->keys, key, &rec, "use");
    EXPECT_RC(phg_keys_flush(f->keys), PHG_OK);
    EXPECT_RC(phg_keys_get(f->keys, rec.id, &got), PHG_OK);
    EXPECT(got.last_used_at >= t0 && got.last_used_at <= (int64_t)time(NULL),
           "last_used_at %lld after a flush", (long long)got.last_used_at);
    EXPECT_RC(phg_keys_get(f->keys, rec2.id, &got), PHG_OK);
    EXPECT(got.last_used_at == 0, "unused key has last_used_at %lld", (long long)got.last_used_at);

    /* Closing the manager flushes too. */
    expect_identity(f->keys, key2, &rec2, "use the second key");
    phg_keys_close(f->keys);
    f->keys = open_keys(f->st, 1);
    EXPECT_RC(phg_keys_get(f->keys, rec2.id, &got), PHG_OK);
    EXPECT(got.last_used_at >= t0, "last_used_at %lld after close", (long long)got.last_used_at);
}

static void test_list_pages(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("lisa");
    char ids[25][PHG_APIKEY_ID_MAX + 1], key[PHG_APIKEY_LEN + 1], after[PHG_APIKEY_ID_MAX + 1];
    phg_apikey_record rec, *page = NULL;
    size_t n = 0, want[] = {10, 10, 5, 0}, p, i, j, seen = 0;

    for (i = 0; i < 25; i++) {
        create_key(f->keys, &s, key, &rec);
        snprintf(ids[i], sizeof ids[i], "%s", rec.id);
    }
    after[0] = '\0';
    for (p = 0; p < 4; p++) {
        EXPECT_RC(phg_keys_list(f->keys, after, 10, &page, &n), PHG_OK);
        EXPECT(n == want[p], "[%s] page %zu after \"%s\": %zu keys, want %zu",
               tdb_engine_name(g_engine), p, after, n, want[p]);
        for (i = 0; i < n; i++) {
            int found = 0;
            EXPECT(strcmp(page[i].id, after) > 0, "page %zu not after %s: %s", p, after,
                   page[i].id);
            if (i > 0)
                EXPECT(strcmp(page[i - 1].id, page[i].id) < 0, "page %zu not ordered", p);
            for (j = 0; j < 25; j++)
                found |= strcmp(ids[j], page[i].id) == 0;
            EXPECT(found, "unknown id %s in the list", page[i].id);
            seen++;
        }
        if (n > 0)
            snprintf(after, sizeof after, "%s", page[n - 1].id);
        free(page);
        page = NULL;
    }
    EXPECT(seen == 25, "listed %zu keys", seen);
    EXPECT_RC(phg_keys_list(f->keys, "", 0, &page, &n), PHG_ERR_INVALID);
    EXPECT_RC(phg_keys_list(f->keys, "", 1001, &page, &n), PHG_ERR_INVALID);
    EXPECT_RC(phg_keys_list(f->keys, NULL, 1000, &page, &n), PHG_OK);
    EXPECT(n == 25, "list from NULL: %zu", n);
    free(page);
}

static void test_negative_cache(void **state)
{
    fx *f = *state;
    char unknown[PHG_APIKEY_LEN + 1];
    phg_keys_stats s0, s1;
    phg_apikey_record rec;
    uint8_t h[32];
    phg_status rc = PHG_ERR_AUTH;
    int64_t deadline;
    int i;

    EXPECT_RC(phg_apikey_generate(unknown), PHG_OK);
    phg_keys_get_stats(f->keys, &s0);
    for (i = 0; i < 100; i++)
        expect_verify(f->keys, unknown, PHG_ERR_AUTH, PHG_APIKEY_UNKNOWN, "unknown key");
    phg_keys_get_stats(f->keys, &s1);
    EXPECT(s1.store_lookups - s0.store_lookups <= 1, "[%s] %llu store lookups for one unknown key",
           tdb_engine_name(g_engine), (unsigned long long)(s1.store_lookups - s0.store_lookups));
    EXPECT(s1.negative_hits - s0.negative_hits >= 99, "[%s] %llu negative hits",
           tdb_engine_name(g_engine), (unsigned long long)(s1.negative_hits - s0.negative_hits));

    /* The key then appears in the store behind the manager's back: the
     * negative entry must not hide it for more than a second. */
    EXPECT_RC(phg_sha256((const uint8_t *)unknown, PHG_APIKEY_LEN, h), PHG_OK);
    plant(f->st, "ak_latecomer000000", h, "late", PHG_SCOPE_PHI_ENCRYPT, &rec);
    deadline = tdb_now_ms() + 1000;
    while (tdb_now_ms() < deadline) {
        rc = phg_keys_verify(f->keys, unknown, PHG_APIKEY_LEN, NULL, &(phg_apikey_reason){0});
        if (rc == PHG_OK)
            break;
        tdb_sleep_ms(10);
    }
    EXPECT(rc == PHG_OK, "[%s] a key remembered as unknown still refused 1 s after it was stored",
           tdb_engine_name(g_engine));
    expect_identity(f->keys, unknown, &rec, "late key");
}

/* The event loop's verify: index and negative cache only; it says when the
 * store must be asked, and never asks it itself. */
static void test_verify_cached(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("cat");
    phg_apikey_record rec, late;
    char key[PHG_APIKEY_LEN + 1], unknown[PHG_APIKEY_LEN + 1];
    phg_identity id;
    phg_apikey_reason why;
    phg_keys_stats s0, s1;
    uint8_t h[32];
    int need = -1;

    create_key(f->keys, &s, key, &rec);
    EXPECT_RC(phg_keys_verify_cached(f->keys, key, PHG_APIKEY_LEN, &id, &why, &need), PHG_OK);
    EXPECT(need == 0 && strcmp(id.key_id, rec.id) == 0, "indexed key: need %d", need);
    key[10] ^= 1; /* checksum now wrong */
    EXPECT_RC(phg_keys_verify_cached(f->keys, key, PHG_APIKEY_LEN, &id, &why, &need),
              PHG_ERR_AUTH);
    EXPECT(need == 0 && why != PHG_APIKEY_VALID, "malformed key: need %d", need);

    EXPECT_RC(phg_apikey_generate(unknown), PHG_OK);
    phg_keys_get_stats(f->keys, &s0);
    EXPECT_RC(phg_keys_verify_cached(f->keys, unknown, PHG_APIKEY_LEN, &id, &why, &need),
              PHG_ERR_AUTH);
    phg_keys_get_stats(f->keys, &s1);
    EXPECT(need == 1 && why == PHG_APIKEY_UNKNOWN, "unknown key: need %d", need);
    EXPECT(s1.store_lookups == s0.store_lookups, "[%s] the cached verify asked the store",
           tdb_engine_name(g_engine));
    /* the key exists in the store (made by another instance): the blocking
     * verify the caller then makes finds it, and the cached one knows it */
    EXPECT_RC(phg_sha256((const uint8_t *)unknown, PHG_APIKEY_LEN, h), PHG_OK);
    plant(f->st, "ak_elsewhere0000000", h, "else", PHG_SCOPE_PHI_ENCRYPT, &late);
    EXPECT_RC(phg_keys_verify(f->keys, unknown, PHG_APIKEY_LEN, &id, &why), PHG_OK);
    EXPECT_RC(phg_keys_verify_cached(f->keys, unknown, PHG_APIKEY_LEN, &id, &why, &need), PHG_OK);
    EXPECT(need == 0 && strcmp(id.key_id, "ak_elsewhere0000000") == 0, "planted key: need %d",
           need);
    /* a key the store does not have: after one store miss, the negative
     * cache answers and the store is not needed again */
    EXPECT_RC(phg_apikey_generate(unknown), PHG_OK);
    EXPECT_RC(phg_keys_verify(f->keys, unknown, PHG_APIKEY_LEN, &id, &why), PHG_ERR_AUTH);
    EXPECT_RC(phg_keys_verify_cached(f->keys, unknown, PHG_APIKEY_LEN, &id, &why, &need),
              PHG_ERR_AUTH);
    EXPECT(need == 0 && why == PHG_APIKEY_UNKNOWN, "negative-cached key: need %d", need);
}

/* ---- a key's own rate limit (phg_keys_set_limit) ----------------------------------------- */

static int64_t change_counter(phg_store *st)
{
    int64_t c = -1;
    EXPECT_RC(phg_internal_store_change_counter(st, &c), PHG_OK);
    return c;
}

/* The limit phg_keys_verify gives for key (fails the test if it is not valid). */
static void expect_limit(phg_keys *k, const char *key, const char *want, const char *what)
{
    phg_identity id;
    phg_apikey_reason reason = (phg_apikey_reason)99;
    phg_status rc;
    memset(&id, 0x55, sizeof id);
    rc = phg_keys_verify(k, key, strlen(key), &id, &reason);
    EXPECT(rc == PHG_OK && reason == PHG_APIKEY_VALID, "[%s] %s: got %s/%s",
           tdb_engine_name(g_engine), what, phg_status_name(rc), phg_apikey_reason_name(reason));
    EXPECT(strcmp(id.rate_limit, want) == 0, "[%s] %s: rate limit \"%s\", want \"%s\"",
           tdb_engine_name(g_engine), what, id.rate_limit, want);
}

static void expect_stored_limit(phg_keys *k, const char *id, const char *want, const char *what)
{
    phg_apikey_record got;
    EXPECT_RC(phg_keys_get(k, id, &got), PHG_OK);
    EXPECT(strcmp(got.rate_limit, want) == 0, "[%s] %s: stored \"%s\", want \"%s\"",
           tdb_engine_name(g_engine), what, got.rate_limit, want);
}

/* Set, replace, reorder, clear and "none", seen at once here and, after a
 * refresh, by a manager on another store handle (another instance). */
static void test_set_limit(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("lim");
    phg_apikey_record rec, other, after;
    char key[PHG_APIKEY_LEN + 1], key2[PHG_APIKEY_LEN + 1], err[256];
    phg_store *st2;
    phg_keys *k2;
    int64_t c0, c1;

    s.rate_limit = "100/1m";
    create_key(f->keys, &s, key, &rec);
    EXPECT(strcmp(rec.rate_limit, "100/1m") == 0, "created with \"%s\"", rec.rate_limit);
    s.rate_limit = NULL;
    create_key(f->keys, &s, key2, &other);
    st2 = open_store(&f->db, 1);
    k2 = open_keys(st2, 0);
    expect_limit(k2, key, "100/1m", "second instance, before");

    /* Two windows: stored, given by verify here at once, and a new version. */
    c0 = change_counter(f->st);
    memset(&after, 0, sizeof after);
    err[0] = '\0';
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "100/1m,5000/1h", &after, err, sizeof err),
              PHG_OK);
    c1 = change_counter(f->st);
    EXPECT(c1 == c0 + 1, "[%s] change counter %lld -> %lld, want one step",
           tdb_engine_name(g_engine), (long long)c0, (long long)c1);
    EXPECT(strcmp(after.id, rec.id) == 0 && strcmp(after.rate_limit, "100/1m,5000/1h") == 0 &&
               after.version == c1 && after.version > rec.version &&
               memcmp(after.hash, rec.hash, 32) == 0 && after.role == rec.role &&
               after.scopes == rec.scopes && strcmp(after.user_id, rec.user_id) == 0,
           "[%s] record after set_limit: id %s limit \"%s\" version %lld (counter %lld)",
           tdb_engine_name(g_engine), after.id, after.rate_limit, (long long)after.version,
           (long long)c1);
    expect_stored_limit(f->keys, rec.id, "100/1m,5000/1h", "stored after set");
    expect_limit(f->keys, key, "100/1m,5000/1h", "same manager, at once");
    expect_limit(f->keys, key2, "", "the other key is untouched");
    EXPECT_RC(phg_keys_refresh(k2), PHG_OK);
    expect_limit(k2, key, "100/1m,5000/1h", "second instance after refresh");
    expect_limit(k2, key2, "", "second instance, other key");

    /* The canonical text: windows shortest first. */
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "5000/1h,10/1s", &after, err, sizeof err),
              PHG_OK);
    EXPECT(strcmp(after.rate_limit, "10/1s,5000/1h") == 0, "[%s] canonical text \"%s\"",
           tdb_engine_name(g_engine), after.rate_limit);
    EXPECT_RC(phg_keys_refresh(k2), PHG_OK);
    expect_limit(k2, key, "10/1s,5000/1h", "second instance, reordered");

    /* The limit it already has: nothing stored, the counter stays. */
    c0 = change_counter(f->st);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "10/1s,5000/1h", NULL, NULL, 0), PHG_OK);
    EXPECT(change_counter(f->st) == c0, "[%s] setting the same limit bumped the counter",
           tdb_engine_name(g_engine));

    /* Cleared with "" and with NULL: the role's default applies again. */
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "", &after, err, sizeof err), PHG_OK);
    EXPECT(after.rate_limit[0] == '\0', "cleared: \"%s\"", after.rate_limit);
    expect_stored_limit(f->keys, rec.id, "", "cleared with \"\"");
    expect_limit(f->keys, key, "", "cleared, same manager");
    EXPECT_RC(phg_keys_refresh(k2), PHG_OK);
    expect_limit(k2, key, "", "cleared, second instance");
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "7/1d", NULL, err, sizeof err), PHG_OK);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, NULL, NULL, err, sizeof err), PHG_OK);
    expect_stored_limit(f->keys, rec.id, "", "cleared with NULL");
    EXPECT_RC(phg_keys_refresh(k2), PHG_OK);
    expect_limit(k2, key, "", "cleared with NULL, second instance");

    /* "none": an override that says the key is not limited (not the same as
     * no override, which means the role's default). */
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "none", &after, err, sizeof err), PHG_OK);
    EXPECT(strcmp(after.rate_limit, "none") == 0, "[%s] \"none\" stored as \"%s\"",
           tdb_engine_name(g_engine), after.rate_limit);
    EXPECT_RC(phg_keys_refresh(k2), PHG_OK);
    expect_limit(k2, key, "none", "none, second instance");

    /* A manager opened afterwards loads the last one. */
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "3/1m", NULL, err, sizeof err), PHG_OK);
    phg_keys_close(k2);
    k2 = open_keys(st2, 0);
    expect_limit(k2, key, "3/1m", "a manager opened after the change");

    /* A key in its rotation grace time can still be given a limit. */
    {
        phg_apikey_record fresh;
        char kf[PHG_APIKEY_LEN + 1];
        EXPECT_RC(phg_keys_rotate(f->keys, other.id, 3600, kf, &fresh), PHG_OK);
        EXPECT_RC(phg_keys_set_limit(f->keys, other.id, "1/1s", NULL, err, sizeof err), PHG_OK);
        expect_limit(f->keys, key2, "1/1s", "old key in its grace time");
        expect_limit(f->keys, kf, "", "its successor keeps its own limit");
    }
    phg_keys_close(k2);
    phg_store_close(st2);
}

/* The poller brings a change made through another store handle, with no
 * call from the test: what every gateway instance relies on. */
static void test_set_limit_seen_by_poller(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("polled");
    phg_apikey_record rec;
    char key[PHG_APIKEY_LEN + 1];
    phg_store *st2;
    phg_keys *k2;
    phg_identity id;
    phg_apikey_reason reason;
    int64_t deadline;

    create_key(f->keys, &s, key, &rec);
    expect_limit(f->keys, key, "", "before");
    st2 = open_store(&f->db, 1);
    k2 = open_keys(st2, 0);
    EXPECT_RC(phg_keys_set_limit(k2, rec.id, "50/10s", NULL, NULL, 0), PHG_OK);
    /* f->keys has its 250 ms poller; wait for it (generously: this is not a
     * timing test). */
    deadline = tdb_now_ms() + 10000;
    memset(&id, 0, sizeof id);
    while (tdb_now_ms() < deadline) {
        EXPECT_RC(phg_keys_verify(f->keys, key, PHG_APIKEY_LEN, &id, &reason), PHG_OK);
        if (strcmp(id.rate_limit, "50/10s") == 0)
            break;
        tdb_sleep_ms(20);
    }
    EXPECT(strcmp(id.rate_limit, "50/10s") == 0,
           "[%s] the poller did not bring the new limit in 10 s (\"%s\")",
           tdb_engine_name(g_engine), id.rate_limit);
    phg_keys_close(k2);
    phg_store_close(st2);
}

/* Refused: bad limits (with a reason), unknown ids, revoked keys; nothing
 * stored, the counter unmoved. */
static void test_set_limit_refused(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("refused");
    phg_apikey_record rec, gone, got;
    char key[PHG_APIKEY_LEN + 1], key2[PHG_APIKEY_LEN + 1], err[256], long_text[200];
    /* a count or window of 0, negative, too large, an unknown unit, garbage,
     * two limits on one window, more than four windows */
    static const char *const bad[] = {
        "0/1m",
        "100/0s",
        "100/0m",
        "-5/1m",
        "100/-1m",
        "100/1x",
        "100/1M",
        "100",
        "100/",
        "/1m",
        "fast",
        "100/1m,",
        ",",
        "100/1m,,5/1h",
        "100/1m;DROP",
        "100/1m\n",
        "100 per minute",
        "1000000000/1m",
        "100/101d",
        "1/1s,2/1m,3/1h,4/1d,5/2d",
        "100/1m,200/60s",
        "10/1m,20/1m",
        "none,100/1m",
    };
    size_t i;
    int64_t c0;

    s.rate_limit = "100/1m";
    create_key(f->keys, &s, key, &rec);
    create_key(f->keys, &s, key2, &gone);
    EXPECT_RC(phg_keys_revoke(f->keys, gone.id), PHG_OK);
    c0 = change_counter(f->st);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        phg_status rc;
        memset(err, 0, sizeof err);
        rc = phg_keys_set_limit(f->keys, rec.id, bad[i], &got, err, sizeof err);
        EXPECT(rc == PHG_ERR_INVALID, "[%s] limit \"%s\": got %s, want invalid",
               tdb_engine_name(g_engine), bad[i], phg_status_name(rc));
        EXPECT(strncmp(err, "rate limit", 10) == 0 && strlen(err) > 12,
               "[%s] limit \"%s\": message \"%s\"", tdb_engine_name(g_engine), bad[i], err);
        /* The same rule on create. */
        s.rate_limit = bad[i];
        memset(err, 0, sizeof err);
        rc = phg_keys_create(f->keys, &s, key2, NULL, err, sizeof err);
        EXPECT(rc == PHG_ERR_INVALID && strncmp(err, "rate limit", 10) == 0,
               "[%s] create with limit \"%s\": %s \"%s\"", tdb_engine_name(g_engine), bad[i],
               phg_status_name(rc), err);
    }
    /* Over the size limit. */
    memset(long_text, 0, sizeof long_text);
    memset(long_text, '1', PHG_APIKEY_LIMIT_MAX + 1);
    memcpy(long_text + PHG_APIKEY_LIMIT_MAX - 2, "/1m", 3);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, long_text, NULL, err, sizeof err),
              PHG_ERR_INVALID);
    EXPECT(change_counter(f->st) == c0, "[%s] refused limits moved the change counter",
           tdb_engine_name(g_engine));
    expect_stored_limit(f->keys, rec.id, "100/1m", "after refused limits");
    expect_limit(f->keys, key, "100/1m", "after refused limits");
    EXPECT(count_keys(f->keys) == 2, "refused creates stored keys: %zu", count_keys(f->keys));

    /* The texts the old check accepted still are. */
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "999999999/1s", NULL, err, sizeof err), PHG_OK);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "1/1s,2/1m,3/1h,4/1d", NULL, err, sizeof err),
              PHG_OK);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "100/1m", NULL, err, sizeof err), PHG_OK);

    /* Unknown ids. */
    c0 = change_counter(f->st);
    memset(err, 0, sizeof err);
    EXPECT_RC(phg_keys_set_limit(f->keys, "ak_doesnotexist0000", "1/1s", NULL, err, sizeof err),
              PHG_ERR_NOT_FOUND);
    EXPECT(err[0] != '\0', "no message for an unknown id");
    EXPECT_RC(phg_keys_set_limit(f->keys, "", "1/1s", NULL, err, sizeof err), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keys_set_limit(f->keys, "ak_x' OR '1'='1", "1/1s", NULL, err, sizeof err),
              PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keys_set_limit(f->keys, "ak_0123456789012345678901234567890123", "1/1s", NULL,
                                 err, sizeof err),
              PHG_ERR_NOT_FOUND);
    /* A revoked key. */
    memset(err, 0, sizeof err);
    EXPECT_RC(phg_keys_set_limit(f->keys, gone.id, "1/1s", NULL, err, sizeof err), PHG_ERR_STATE);
    EXPECT(strstr(err, "revoked") != NULL, "revoked: message \"%s\"", err);
    EXPECT_RC(phg_keys_set_limit(f->keys, gone.id, NULL, NULL, err, sizeof err), PHG_ERR_STATE);
    EXPECT(change_counter(f->st) == c0, "[%s] refused changes moved the change counter",
           tdb_engine_name(g_engine));
    expect_stored_limit(f->keys, gone.id, "100/1m", "revoked key");
    expect_verify(f->keys, key2, PHG_ERR_AUTH, PHG_APIKEY_REVOKED, "revoked key stays revoked");
}

/* Creation checks limits the same way and stores the canonical text. */
static void test_create_limit_canonical(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("canon");
    phg_apikey_record rec;
    char key[PHG_APIKEY_LEN + 1], err[256];

    s.rate_limit = "5000/1h,100/1m";
    create_key(f->keys, &s, key, &rec);
    EXPECT(strcmp(rec.rate_limit, "100/1m,5000/1h") == 0, "[%s] created with \"%s\"",
           tdb_engine_name(g_engine), rec.rate_limit);
    expect_stored_limit(f->keys, rec.id, "100/1m,5000/1h", "created, reordered");
    expect_limit(f->keys, key, "100/1m,5000/1h", "created, reordered");
    s.rate_limit = "";
    create_key(f->keys, &s, key, &rec);
    EXPECT(rec.rate_limit[0] == '\0', "empty limit stored as \"%s\"", rec.rate_limit);
    s.rate_limit = "100/0s";
    memset(err, 0, sizeof err);
    EXPECT_RC(phg_keys_create(f->keys, &s, key, &rec, err, sizeof err), PHG_ERR_INVALID);
    EXPECT(strncmp(err, "rate limit", 10) == 0 && strstr(err, "window of 0") != NULL,
           "message \"%s\"", err);
    /* The reason names the problem, the same through set_limit. */
    {
        static const char *const cases[][2] = {
            {"0/1m", "count of 0"}, {"100/0s", "window of 0"},       {"-1/1m", "negative"},
            {"100/1w", "unit"},     {"10/1m,20/60s", "same window"},
        };
        size_t i;
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            memset(err, 0, sizeof err);
            EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, cases[i][0], NULL, err, sizeof err),
                      PHG_ERR_INVALID);
            EXPECT(strncmp(err, "rate limit", 10) == 0 && strstr(err, cases[i][1]) != NULL,
                   "limit \"%s\": message \"%s\" does not say \"%s\"", cases[i][0], err,
                   cases[i][1]);
        }
    }
}

/* Audited like create and revoke: keys.set_limit, key:<id>, the old and new
 * texts; failures with outcome error; nothing when no audit is set. */
static void test_set_limit_audited(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("audited");
    phg_apikey_record rec, gone;
    phg_audit_options ao;
    phg_audit *a = NULL;
    phg_audit_filter flt;
    phg_audit_row *rows = NULL;
    phg_request_context ctx;
    uint8_t ckey[32];
    char key[PHG_APIKEY_LEN + 1], err[256], resource[64];
    size_t n = 0, i;

    s.rate_limit = "100/1m";
    create_key(f->keys, &s, key, &rec);
    create_key(f->keys, &s, key, &gone);
    EXPECT_RC(phg_keys_revoke(f->keys, gone.id), PHG_OK);
    /* Without an audit log: nothing recorded (checked below by count). */
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "1/1s", NULL, err, sizeof err), PHG_OK);

    memset(ckey, 7, sizeof ckey);
    phg_audit_options_init(&ao);
    ao.chain = "keylimit-test";
    EXPECT_RC(phg_audit_open(f->st, &ao, ckey, &a), PHG_OK);
    memset(&ctx, 0, sizeof ctx);
    snprintf(ctx.user_id, sizeof ctx.user_id, "limit-admin");
    snprintf(ctx.role, sizeof ctx.role, "admin");
    phg_request_context_set(&ctx);
    phg_keys_set_audit(f->keys, a);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "5000/1h,100/1m", NULL, err, sizeof err), PHG_OK);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, NULL, NULL, err, sizeof err), PHG_OK);
    EXPECT_RC(phg_keys_set_limit(f->keys, rec.id, "0/1m", NULL, err, sizeof err), PHG_ERR_INVALID);
    EXPECT_RC(phg_keys_set_limit(f->keys, "ak_doesnotexist0000", "1/1s", NULL, err, sizeof err),
              PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keys_set_limit(f->keys, gone.id, "1/1s", NULL, err, sizeof err), PHG_ERR_STATE);
    phg_keys_set_audit(f->keys, NULL);
    phg_request_context_set(NULL);
    phg_audit_close(a);

    memset(&flt, 0, sizeof flt);
    flt.limit = 100;
    flt.action = "keys.set_limit";
    EXPECT_RC(phg_audit_query(f->st, &flt, &rows, &n, err, sizeof err), PHG_OK);
    EXPECT(n == 5, "[%s] %zu keys.set_limit records, want 5", tdb_engine_name(g_engine), n);
    if (n == 5) {
        /* newest first */
        static const struct {
            const char *outcome, *id_of, *old_limit, *new_limit, *error;
        } want[5] = {
            {"error", "gone", NULL, NULL, "state"},
            {"error", "unknown", NULL, NULL, "not_found"},
            {"error", "rec", NULL, NULL, "invalid"},
            {"success", "rec", "100/1m,5000/1h", "", NULL},
            {"success", "rec", "1/1s", "100/1m,5000/1h", NULL},
        };
        for (i = 0; i < 5; i++) {
            json_t *o = json_loads(rows[i].json, 0, NULL), *d;
            const char *outcome = json_string_value(json_object_get(o, "outcome"));
            const char *res = json_string_value(json_object_get(o, "resource"));
            const char *user =
                json_string_value(json_object_get(json_object_get(o, "actor"), "user_id"));
            const char *id = strcmp(want[i].id_of, "rec") == 0    ? rec.id
                             : strcmp(want[i].id_of, "gone") == 0 ? gone.id
                                                                  : "ak_doesnotexist0000";
            d = json_object_get(o, "details");
            snprintf(resource, sizeof resource, "key:%s", id);
            EXPECT(outcome != NULL && strcmp(outcome, want[i].outcome) == 0,
                   "[%s] record %zu: outcome %s, want %s", tdb_engine_name(g_engine), i,
                   outcome ? outcome : "?", want[i].outcome);
            EXPECT(res != NULL && strcmp(res, resource) == 0, "[%s] record %zu: resource %s",
                   tdb_engine_name(g_engine), i, res ? res : "?");
            EXPECT(user != NULL && strcmp(user, "limit-admin") == 0, "record %zu: actor %s", i,
                   user ? user : "?");
            EXPECT(json_is_object(d), "[%s] record %zu: no details", tdb_engine_name(g_engine), i);
            EXPECT(json_string_value(json_object_get(d, "key_id")) != NULL &&
                       strcmp(json_string_value(json_object_get(d, "key_id")), id) == 0,
                   "record %zu: details.key_id", i);
            if (want[i].old_limit != NULL) {
                const char *ol = json_string_value(json_object_get(d, "old_rate_limit"));
                const char *nl = json_string_value(json_object_get(d, "new_rate_limit"));
                EXPECT(ol != NULL && strcmp(ol, want[i].old_limit) == 0 && nl != NULL &&
                           strcmp(nl, want[i].new_limit) == 0,
                       "[%s] record %zu: old \"%s\" new \"%s\", want \"%s\" \"%s\"",
                       tdb_engine_name(g_engine), i, ol ? ol : "?", nl ? nl : "?",
                       want[i].old_limit, want[i].new_limit);
            } else {
                const char *e = json_string_value(json_object_get(d, "error"));
                EXPECT(e != NULL && strstr(e, want[i].error) != NULL,
                       "[%s] record %zu: error %s, want %s", tdb_engine_name(g_engine), i,
                       e ? e : "?", want[i].error);
            }
            EXPECT(strstr(rows[i].json, key) == NULL, "a key reached the audit log");
            json_decref(o);
        }
    }
    phg_audit_rows_free(rows, n);
}

/* The change is made but its record cannot be written (a trigger refuses
 * every write of the audit chain heads): PHG_ERR_UNAUDITED, the record
 * filled, the new limit stored, and err saying so. */
static void test_set_limit_unaudited(void **state)
{
    fx *f = *state;
    phg_apikey_spec s = spec_of("unaudited");
    phg_apikey_record rec, after;
    phg_audit_options ao;
    phg_audit *a = NULL;
    uint8_t ckey[32];
    char key[PHG_APIKEY_LEN + 1], err[256], sqlerr[512];
    phg_status rc;
    const char *block = g_engine == TDB_SQLITE
                            ? "CREATE TRIGGER kl_block_i BEFORE INSERT ON audit_chains BEGIN "
                              "SELECT RAISE(ABORT, 'blocked by the test'); END; "
                              "CREATE TRIGGER kl_block_u BEFORE UPDATE ON audit_chains BEGIN "
                              "SELECT RAISE(ABORT, 'blocked by the test'); END;"
                            : "CREATE FUNCTION kl_block() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$BEGIN RAISE EXCEPTION 'blocked by the test'; END$$; "
                              "CREATE TRIGGER kl_block BEFORE INSERT OR UPDATE ON audit_chains "
                              "FOR EACH ROW EXECUTE FUNCTION kl_block();";
    const char *unblock = g_engine == TDB_SQLITE
                              ? "DROP TRIGGER kl_block_i; DROP TRIGGER kl_block_u;"
                              : "DROP TRIGGER kl_block ON audit_chains; DROP FUNCTION kl_block();";

    s.rate_limit = "100/1m";
    create_key(f->keys, &s, key, &rec);
    memset(ckey, 9, sizeof ckey);
    phg_audit_options_init(&ao);
    ao.chain = "keylimit-unaudited";
    EXPECT_RC(phg_audit_open(f->st, &ao, ckey, &a), PHG_OK);
    phg_keys_set_audit(f->keys, a);
    EXPECT(tdb_exec(&f->db, block, sqlerr, sizeof sqlerr) == 0, "[%s] trigger: %s",
           tdb_engine_name(g_engine), sqlerr);
    memset(&after, 0, sizeof after);
    memset(err, 0, sizeof err);
    rc = phg_keys_set_limit(f->keys, rec.id, "5/1s", &after, err, sizeof err);
    EXPECT(tdb_exec(&f->db, unblock, sqlerr, sizeof sqlerr) == 0, "[%s] drop trigger: %s",
           tdb_engine_name(g_engine), sqlerr);
    phg_keys_set_audit(f->keys, NULL);
    phg_audit_close(a);
    EXPECT(rc == PHG_ERR_UNAUDITED, "[%s] set_limit with a failing audit log: %s",
           tdb_engine_name(g_engine), phg_status_name(rc));
    EXPECT(strcmp(after.id, rec.id) == 0 && strcmp(after.rate_limit, "5/1s") == 0,
           "[%s] record not filled: %s \"%s\"", tdb_engine_name(g_engine), after.id,
           after.rate_limit);
    EXPECT(strstr(err, "audit") != NULL, "message \"%s\"", err);
    expect_stored_limit(f->keys, rec.id, "5/1s", "changed although unaudited");
    expect_limit(f->keys, key, "5/1s", "changed although unaudited");
}

/* ---- main ------------------------------------------------------------------------------------ */

#define KEYS_TEST(t) cmocka_unit_test_setup_teardown(t, keys_setup, fx_teardown)
#define DB_TEST(t) cmocka_unit_test_setup_teardown(t, db_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest text_tests[] = {
        cmocka_unit_test(test_key_format),
        cmocka_unit_test(test_key_vectors),
        cmocka_unit_test(test_scopes_and_roles),
    };
    const struct CMUnitTest store_tests[] = {
        KEYS_TEST(test_create_and_verify),
        KEYS_TEST(test_verify_cached),
        KEYS_TEST(test_revoke),
        KEYS_TEST(test_expiry),
        KEYS_TEST(test_rotate),
        KEYS_TEST(test_bad_specs),
        KEYS_TEST(test_bad_rate_limit_text),
        KEYS_TEST(test_forced_collision),
        KEYS_TEST(test_index_churn),
        DB_TEST(test_other_process),
        KEYS_TEST(test_server_restart),
        KEYS_TEST(test_last_used),
        KEYS_TEST(test_list_pages),
        KEYS_TEST(test_negative_cache),
        KEYS_TEST(test_set_limit),
        KEYS_TEST(test_set_limit_seen_by_poller),
        KEYS_TEST(test_set_limit_refused),
        KEYS_TEST(test_create_limit_canonical),
        KEYS_TEST(test_set_limit_audited),
        KEYS_TEST(test_set_limit_unaudited),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("apikey/text", text_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("apikey/sqlite", store_tests, tdb_group_sqlite, NULL);
    failed +=
        cmocka_run_group_tests_name("apikey/postgres", store_tests, tdb_group_postgres, NULL);
    return failed != 0;
}
