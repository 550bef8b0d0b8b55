/*
 * tests/unit/test_keyring.c: master keys and the keyring (include/phigate/phi.h,
 * the "master keys" and "keyring" parts) against the header contract and
 * docs/formats.md sections 3, 4 and 6: key-list parsing and the environment,
 * the JSON form and every load rule of 6.3, rotate/destroy/rewrap, master key
 * rotation, and the keyring file (mode, atomic replacement, errors).
 *
 * Field encryption itself is tested in test_phi.c; here it is only used to
 * show that data stays readable (or becomes unreadable) as keys change.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

#define KEY_LEN PHG_FERNET_KEY_TEXT_LEN
static const char CTX[] = "user=42;field=hrv";
#define CTX_LEN (sizeof CTX - 1)

/* ---- helpers ------------------------------------------------------------------------ */

static void new_key_text(char text[KEY_LEN + 1])
{
    EXPECT_RC(phg_fernet_key_generate(text), PHG_OK);
    EXPECT(strlen(text) == KEY_LEN, "generated key is %zu chars", strlen(text));
}

static phg_masterkeys *mk_of(const char *text)
{
    phg_masterkeys *mk = NULL;
    phg_status rc = phg_phi_masterkeys_parse(text, strlen(text), &mk);
    EXPECT(rc == PHG_OK, "parse of a valid key list failed: %s", phg_status_name(rc));
    EXPECT(mk != NULL, "no object");
    return mk;
}

static void expect_mk_refused(const char *text, size_t len, const char *what)
{
    phg_masterkeys *mk = (phg_masterkeys *)&mk; /* any non-NULL value: must be reset */
    phg_status rc = phg_phi_masterkeys_parse(text, len, &mk);
    EXPECT(rc == PHG_ERR_MASTER_KEY, "%s: got %s, want master_key", what, phg_status_name(rc));
    EXPECT(mk == NULL, "%s: *out not NULL after failure", what);
}

static char *to_json(phg_keyring *kr, size_t *len)
{
    char *text = NULL;
    size_t n = 0;
    EXPECT_RC(phg_keyring_to_json(kr, &text, &n), PHG_OK);
    EXPECT(text != NULL && strlen(text) == n, "to_json length %zu", n);
    if (len != NULL) {
        *len = n;
    }
    return text;
}

static phg_keyring *load(const char *text, const phg_masterkeys *mk)
{
    phg_keyring *kr = NULL;
    const char *why = "unset";
    phg_status rc = phg_keyring_from_json(text, strlen(text), mk, NULL, &kr, &why);
    EXPECT(rc == PHG_OK, "from_json: %s (%s)", phg_status_name(rc), why ? why : "no reason");
    EXPECT(why == NULL, "why is set on success");
    return kr;
}

static char *encrypt_text(phg_keyring *kr, const char *pt, size_t *ct_len)
{
    size_t cap = PHG_PHI_CIPHERTEXT_MAX_LEN(strlen(pt));
    char *ct = malloc(cap + 1);
    EXPECT(ct != NULL, "out of memory");
    EXPECT_RC(phg_phi_encrypt(kr, CTX, CTX_LEN, (const uint8_t *)pt, strlen(pt), ct, cap, ct_len),
              PHG_OK);
    ct[*ct_len] = '\0';
    return ct;
}

static void expect_opens(phg_keyring *kr, const char *ct, size_t ct_len, const char *pt)
{
    uint8_t out[256];
    size_t out_len = 0;
    phg_status rc = phg_phi_decrypt(kr, CTX, CTX_LEN, ct, ct_len, out, sizeof out, &out_len);
    EXPECT(rc == PHG_OK, "decrypt: %s", phg_status_name(rc));
    EXPECT(out_len == strlen(pt) && memcmp(out, pt, out_len) == 0, "decrypted other bytes");
}

static void expect_auth_fails(phg_keyring *kr, const char *ct, size_t ct_len)
{
    uint8_t out[256];
    size_t out_len = 5;
    phg_status rc = phg_phi_decrypt(kr, CTX, CTX_LEN, ct, ct_len, out, sizeof out, &out_len);
    EXPECT(rc == PHG_ERR_AUTH, "decrypt: got %s, want auth_failed", phg_status_name(rc));
    EXPECT(out_len == 0, "out_len %zu after failure", out_len);
}

static int kid_well_formed_new(const char *kid)
{
    regex_t re;
    int ok;
    EXPECT(regcomp(&re, "^k[a-z0-9]{10}$", REG_EXTENDED | REG_NOSUB) == 0, "regcomp");
    ok = regexec(&re, kid, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

static void info_of(phg_keyring *kr, size_t i, phg_phi_key_info *info)
{
    EXPECT_RC(phg_keyring_info(kr, i, info), PHG_OK);
}

static const char *state_text(phg_phi_key_state s)
{
    return s == PHG_PHI_KEY_ACTIVE ? "active"
           : s == PHG_PHI_KEY_DECRYPT_ONLY ? "decrypt-only"
           : s == PHG_PHI_KEY_DESTROYED ? "destroyed"
                                          : "?";
}

/* ---- master keys ------------------------------------------------------------------------ */

static void test_masterkeys_parse(void **state)
{
    char a[KEY_LEN + 1], b[KEY_LEN + 1], c[KEY_LEN + 1], list[512];
    phg_masterkeys *mk;
    (void)state;

    new_key_text(a);
    new_key_text(b);
    new_key_text(c);

    mk = mk_of(a);
    EXPECT(phg_phi_masterkeys_count(mk) == 1, "count %zu", phg_phi_masterkeys_count(mk));
    phg_phi_masterkeys_free(mk);

    /* A final newline (as in a key file) is whitespace around the key. */
    snprintf(list, sizeof list, "%s\n", a);
    mk = mk_of(list);
    EXPECT(phg_phi_masterkeys_count(mk) == 1, "count %zu", phg_phi_masterkeys_count(mk));
    phg_phi_masterkeys_free(mk);

    snprintf(list, sizeof list, " \n\t%s ,\r\n %s\t,\n\n%s \r\n", a, b, c);
    mk = mk_of(list);
    EXPECT(phg_phi_masterkeys_count(mk) == 3, "count %zu", phg_phi_masterkeys_count(mk));
    phg_phi_masterkeys_free(mk);

    /* The documented test values of formats.md 3.2. */
    mk = mk_of("YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8=, "
               "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
    EXPECT(phg_phi_masterkeys_count(mk) == 2, "count %zu", phg_phi_masterkeys_count(mk));
    phg_phi_masterkeys_free(mk);

    /* 16 keys is the maximum. */
    {
        size_t pos = 0;
        char many[17 * (KEY_LEN + 1) + 1];
        for (int i = 0; i < 16; i++) {
            pos += (size_t)sprintf(many + pos, "%s%s", i ? "," : "", i % 2 ? a : b);
        }
        mk = mk_of(many);
        EXPECT(phg_phi_masterkeys_count(mk) == 16, "count %zu", phg_phi_masterkeys_count(mk));
        phg_phi_masterkeys_free(mk);
        sprintf(many + pos, ",%s", c);
        expect_mk_refused(many, strlen(many), "17 keys");
    }

    EXPECT(phg_phi_masterkeys_count(NULL) == 0, "count of NULL");
    phg_phi_masterkeys_free(NULL);
}

static void test_masterkeys_refused(void **state)
{
    char a[KEY_LEN + 1], b[KEY_LEN + 1], bad[512];
    (void)state;

    new_key_text(a);
    new_key_text(b);
    expect_mk_refused("", 0, "empty string");
    expect_mk_refused(" \n", 2, "only whitespace");
    expect_mk_refused(",", 1, "a lone comma");
    snprintf(bad, sizeof bad, "%s,", a);
    expect_mk_refused(bad, strlen(bad), "trailing comma");
    snprintf(bad, sizeof bad, ",%s", a);
    expect_mk_refused(bad, strlen(bad), "leading comma");
    snprintf(bad, sizeof bad, "%s,,%s", a, b);
    expect_mk_refused(bad, strlen(bad), "empty item in the middle");
    snprintf(bad, sizeof bad, "%s, ,%s", a, b);
    expect_mk_refused(bad, strlen(bad), "blank item in the middle");
    expect_mk_refused(a, KEY_LEN - 1, "43-char key");
    snprintf(bad, sizeof bad, "%sA", a);
    expect_mk_refused(bad, strlen(bad), "45-char key");
    snprintf(bad, sizeof bad, "%.43s", a); /* no padding at all */
    expect_mk_refused(bad, strlen(bad), "unpadded key");
    /* Standard-alphabet and foreign characters. */
    snprintf(bad, sizeof bad, "%s", a);
    bad[5] = '+';
    expect_mk_refused(bad, strlen(bad), "'+' in a key");
    bad[5] = '/';
    expect_mk_refused(bad, strlen(bad), "'/' in a key");
    bad[5] = '!';
    expect_mk_refused(bad, strlen(bad), "'!' in a key");
    bad[5] = ' ';
    expect_mk_refused(bad, strlen(bad), "space inside a key");
    /* formats.md 3.1: a non-canonical last character is refused. */
    expect_mk_refused("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=", KEY_LEN, "9= ending");
    /* Two valid keys without a comma, and a semicolon as separator. */
    snprintf(bad, sizeof bad, "%s %s", a, b);
    expect_mk_refused(bad, strlen(bad), "space-separated keys");
    snprintf(bad, sizeof bad, "%s;%s", a, b);
    expect_mk_refused(bad, strlen(bad), "semicolon-separated keys");
    /* One bad key spoils the list, wherever it is. */
    snprintf(bad, sizeof bad, "%s,%.43s", a, b);
    expect_mk_refused(bad, strlen(bad), "second key short");
}

/* ---- the environment ------------------------------------------------------------------- */

typedef struct saved_env {
    char *key, *file;
} saved_env;

static char *dup_or_null(const char *s)
{
    return s == NULL ? NULL : strdup(s);
}

static void env_save(saved_env *s)
{
    s->key = dup_or_null(getenv("PHI_MASTER_KEY"));
    s->file = dup_or_null(getenv("PHI_MASTER_KEY_FILE"));
}

static void env_restore(saved_env *s)
{
    if (s->key != NULL) {
        setenv("PHI_MASTER_KEY", s->key, 1);
    } else {
        unsetenv("PHI_MASTER_KEY");
    }
    if (s->file != NULL) {
        setenv("PHI_MASTER_KEY_FILE", s->file, 1);
    } else {
        unsetenv("PHI_MASTER_KEY_FILE");
    }
    free(s->key);
    free(s->file);
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    EXPECT(fp != NULL, "cannot create %s", path);
    EXPECT(fwrite(data, 1, len, fp) == len, "short write to %s", path);
    EXPECT(fclose(fp) == 0, "close %s", path);
}

static char *make_temp_dir(void)
{
    char tmpl[] = "/tmp/phg-test-keyring-XXXXXX";
    char *dir = mkdtemp(tmpl);
    EXPECT(dir != NULL, "mkdtemp: %s", strerror(errno));
    return strdup(dir);
}

/* Remove every plain file in dir, then dir itself. */
static void remove_temp_dir(char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    if (d != NULL) {
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
                continue;
            }
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0) {
                rmdir(path);
            }
        }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
}

static void expect_from_env(phg_status want, size_t count, const char *what)
{
    phg_masterkeys *mk = NULL;
    phg_status rc = phg_phi_masterkeys_from_env(&mk);
    EXPECT(rc == want, "%s: got %s, want %s", what, phg_status_name(rc), phg_status_name(want));
    if (want == PHG_OK) {
        EXPECT(phg_phi_masterkeys_count(mk) == count, "%s: count %zu", what,
               phg_phi_masterkeys_count(mk));
    } else {
        EXPECT(mk == NULL, "%s: *out not NULL after failure", what);
    }
    phg_phi_masterkeys_free(mk);
}

static void test_masterkeys_from_env(void **state)
{
    char a[KEY_LEN + 1], b[KEY_LEN + 1], list[256], path[4096], big_path[4096], edge_path[4096];
    char *dir = make_temp_dir(), *big;
    saved_env saved;
    (void)state;

    env_save(&saved);
    new_key_text(a);
    new_key_text(b);
    snprintf(list, sizeof list, "%s,\n%s\n", a, b);
    snprintf(path, sizeof path, "%s/master.key", dir);
    write_file(path, list, strlen(list));

    /* PHI_MASTER_KEY alone. */
    unsetenv("PHI_MASTER_KEY_FILE");
    setenv("PHI_MASTER_KEY", a, 1);
    expect_from_env(PHG_OK, 1, "PHI_MASTER_KEY");
    setenv("PHI_MASTER_KEY", list, 1);
    expect_from_env(PHG_OK, 2, "PHI_MASTER_KEY with two keys");
    /* Defined but empty counts as set, and does not parse. */
    setenv("PHI_MASTER_KEY", "", 1);
    expect_from_env(PHG_ERR_MASTER_KEY, 0, "PHI_MASTER_KEY empty");
    setenv("PHI_MASTER_KEY", "not a key", 1);
    expect_from_env(PHG_ERR_MASTER_KEY, 0, "PHI_MASTER_KEY garbage");

    /* PHI_MASTER_KEY_FILE alone. */
    unsetenv("PHI_MASTER_KEY");
    setenv("PHI_MASTER_KEY_FILE", path, 1);
    expect_from_env(PHG_OK, 2, "PHI_MASTER_KEY_FILE");

    /* Both set: refused even though each alone is valid; also with an empty key. */
    setenv("PHI_MASTER_KEY", a, 1);
    expect_from_env(PHG_ERR_MASTER_KEY, 0, "both set");
    setenv("PHI_MASTER_KEY", "", 1);
    expect_from_env(PHG_ERR_MASTER_KEY, 0, "both set, key empty");

    /* Neither. */
    unsetenv("PHI_MASTER_KEY");
    unsetenv("PHI_MASTER_KEY_FILE");
    expect_from_env(PHG_ERR_MASTER_KEY, 0, "neither set");

    /* File problems. */
    {
        char missing[4200];
        snprintf(missing, sizeof missing, "%s/no-such-file", dir);
        setenv("PHI_MASTER_KEY_FILE", missing, 1);
        expect_from_env(PHG_ERR_IO, 0, "missing file");
    }
    setenv("PHI_MASTER_KEY_FILE", "", 1);
    expect_from_env(PHG_ERR_IO, 0, "empty file path");

    /* 8192 bytes are allowed (key then whitespace), 8193 are not. */
    big = malloc(PHG_PHI_MASTER_KEY_FILE_MAX + 2);
    EXPECT(big != NULL, "out of memory");
    memset(big, '\n', PHG_PHI_MASTER_KEY_FILE_MAX + 1);
    memcpy(big, a, KEY_LEN);
    snprintf(edge_path, sizeof edge_path, "%s/edge.key", dir);
    write_file(edge_path, big, PHG_PHI_MASTER_KEY_FILE_MAX);
    setenv("PHI_MASTER_KEY_FILE", edge_path, 1);
    expect_from_env(PHG_OK, 1, "file of exactly 8192 bytes");
    snprintf(big_path, sizeof big_path, "%s/big.key", dir);
    write_file(big_path, big, PHG_PHI_MASTER_KEY_FILE_MAX + 1);
    setenv("PHI_MASTER_KEY_FILE", big_path, 1);
    expect_from_env(PHG_ERR_TOO_LARGE, 0, "file of 8193 bytes");
    free(big);

    /* An empty file, and a file with a bad key, do not parse. */
    write_file(edge_path, "", 0);
    setenv("PHI_MASTER_KEY_FILE", edge_path, 1);
    expect_from_env(PHG_ERR_MASTER_KEY, 0, "empty file");
    write_file(edge_path, "hello\n", 6);
    expect_from_env(PHG_ERR_MASTER_KEY, 0, "file with a bad key");

    /* phg_phi_masterkeys_from_file directly. */
    {
        phg_masterkeys *mk = NULL;
        EXPECT_RC(phg_phi_masterkeys_from_file(path, &mk), PHG_OK);
        EXPECT(phg_phi_masterkeys_count(mk) == 2, "count %zu", phg_phi_masterkeys_count(mk));
        phg_phi_masterkeys_free(mk);
        mk = NULL;
        EXPECT_RC(phg_phi_masterkeys_from_file(big_path, &mk), PHG_ERR_TOO_LARGE);
        EXPECT(mk == NULL, "*out set after failure");
    }

    env_restore(&saved);
    remove_temp_dir(dir);
}

/* ---- JSON form ------------------------------------------------------------------------------ */

static int created_well_formed(const char *s)
{
    regex_t re;
    int ok;
    EXPECT(regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
                   REG_EXTENDED | REG_NOSUB) == 0,
           "regcomp");
    ok = regexec(&re, s, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

/* Check the JSON text against formats.md 6.1-6.4 and against the keyring's own view. */
static void check_json_shape(phg_keyring *kr, const char *text)
{
    static const char head[] = "{\n  \"format\": \"phigate-keyring\",\n  \"version\": 1,\n  "
                               "\"primary\": \"";
    char primary[PHG_PHI_KID_MAX + 1];
    json_error_t jerr;
    json_t *root, *keys;
    time_t now = time(NULL);

    EXPECT(strncmp(text, head, strlen(head)) == 0, "JSON does not begin as in formats.md 6.4");
    EXPECT(strchr(text, '\\') == NULL, "JSON has escapes");
    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    EXPECT(root != NULL, "to_json output does not parse: %s", jerr.text);
    EXPECT(json_is_object(root) && json_object_size(root) == 4, "top level is not 4 members");
    EXPECT(json_is_string(json_object_get(root, "format")) &&
               strcmp(json_string_value(json_object_get(root, "format")), "phigate-keyring") == 0,
           "format");
    EXPECT(json_is_integer(json_object_get(root, "version")) &&
               json_integer_value(json_object_get(root, "version")) == 1,
           "version");
    EXPECT_RC(phg_keyring_primary(kr, primary), PHG_OK);
    EXPECT(json_is_string(json_object_get(root, "primary")) &&
               strcmp(json_string_value(json_object_get(root, "primary")), primary) == 0,
           "primary");
    keys = json_object_get(root, "keys");
    EXPECT(json_is_array(keys) && json_array_size(keys) == phg_keyring_count(kr),
           "keys array size");
    for (size_t i = 0; i < json_array_size(keys); i++) {
        json_t *k = json_array_get(keys, i), *wrapped;
        phg_phi_key_info info;
        const char *kid, *created;
        struct tm tm;
        char want_created[32];
        time_t t;

        info_of(kr, i, &info);
        EXPECT(json_is_object(k), "key %zu not an object", i);
        kid = json_string_value(json_object_get(k, "kid"));
        EXPECT(kid != NULL && kid_well_formed_new(kid), "key %zu: kid %s", i, kid ? kid : "-");
        EXPECT(strcmp(kid, info.kid) == 0, "key %zu: kid %s, info %s (creation order)", i, kid,
               info.kid);
        EXPECT(json_is_string(json_object_get(k, "state")) &&
                   strcmp(json_string_value(json_object_get(k, "state")),
                          state_text(info.state)) == 0,
               "key %zu: state", i);
        created = json_string_value(json_object_get(k, "created"));
        EXPECT(created != NULL && created_well_formed(created), "key %zu: created %s", i,
               created ? created : "-");
        t = (time_t)info.created_s;
        EXPECT(gmtime_r(&t, &tm) != NULL, "gmtime_r");
        strftime(want_created, sizeof want_created, "%Y-%m-%dT%H:%M:%SZ", &tm);
        EXPECT(strcmp(created, want_created) == 0, "key %zu: created %s, info says %s", i,
               created, want_created);
        EXPECT(info.created_s <= (int64_t)now + 1 && info.created_s > (int64_t)now - 600,
               "key %zu: created %lld is not now", i, (long long)info.created_s);
        wrapped = json_object_get(k, "wrapped");
        if (info.state == PHG_PHI_KEY_DESTROYED) {
            EXPECT(wrapped == NULL, "key %zu: destroyed but has wrapped", i);
            EXPECT(json_object_size(k) == 3, "key %zu: members", i);
        } else {
            EXPECT(json_is_string(wrapped) && json_string_length(wrapped) == 140 &&
                       strncmp(json_string_value(wrapped), "gAAAAA", 6) == 0,
                   "key %zu: wrapped is not a 140-char Fernet token", i);
            EXPECT(json_object_size(k) == 4, "key %zu: members", i);
        }
        EXPECT(info.is_primary == (strcmp(info.kid, primary) == 0), "key %zu: is_primary", i);
    }
    json_decref(root);
}

static void test_json_round_trip(void **state)
{
    char a[KEY_LEN + 1], kid0[PHG_PHI_KID_MAX + 1];
    phg_masterkeys *mk;
    phg_keyring *kr, *kr2;
    char *text, *text2, *ct;
    size_t len = 0, len2 = 0, ct_len = 0;
    (void)state;

    new_key_text(a);
    mk = mk_of(a);
    EXPECT_RC(phg_keyring_create(mk, NULL, &kr), PHG_OK);
    EXPECT(phg_keyring_count(kr) == 1, "a new keyring has %zu keys", phg_keyring_count(kr));
    EXPECT_RC(phg_keyring_primary(kr, kid0), PHG_OK);
    EXPECT(kid_well_formed_new(kid0), "kid %s", kid0);
    text = to_json(kr, &len);
    check_json_shape(kr, text);
    free(text);

    /* Three keys in all three states. */
    ct = encrypt_text(kr, "first", &ct_len);
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    EXPECT_RC(phg_keyring_destroy(kr, kid0), PHG_OK);
    text = to_json(kr, &len);
    check_json_shape(kr, text);

    kr2 = load(text, mk);
    EXPECT(phg_keyring_count(kr2) == 3, "reloaded count %zu", phg_keyring_count(kr2));
    for (size_t i = 0; i < 3; i++) {
        phg_phi_key_info x, y;
        info_of(kr, i, &x);
        info_of(kr2, i, &y);
        EXPECT(strcmp(x.kid, y.kid) == 0 && x.state == y.state && x.created_s == y.created_s &&
                   x.is_primary == y.is_primary,
               "key %zu differs after reload", i);
    }
    /* Loading does not rewrap: the same text comes back. */
    text2 = to_json(kr2, &len2);
    EXPECT(len2 == len && strcmp(text, text2) == 0, "to_json(from_json(t)) != t");
    expect_auth_fails(kr2, ct, ct_len);
    {
        size_t l = 0;
        char *ct2 = encrypt_text(kr, "second", &l);
        expect_opens(kr2, ct2, l, "second");
        free(ct2);
    }
    EXPECT_RC(phg_keyring_info(kr, 3, &(phg_phi_key_info){0}), PHG_ERR_NOT_FOUND);

    free(text2);
    free(text);
    free(ct);
    phg_keyring_free(kr2);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    phg_keyring_free(NULL);
}

/* ---- rotate and destroy ----------------------------------------------------------------------- */

static void test_rotate(void **state)
{
    char a[KEY_LEN + 1], kid0[PHG_PHI_KID_MAX + 1], kid1[PHG_PHI_KID_MAX + 1];
    char primary[PHG_PHI_KID_MAX + 1], kid[PHG_PHI_KID_MAX + 1];
    phg_phi_key_info i0, i1;
    phg_masterkeys *mk;
    phg_keyring *kr;
    size_t l0 = 0, l1 = 0;
    char *ct0, *ct1;
    (void)state;

    new_key_text(a);
    mk = mk_of(a);
    EXPECT_RC(phg_keyring_create(mk, NULL, &kr), PHG_OK);
    EXPECT_RC(phg_keyring_primary(kr, kid0), PHG_OK);
    ct0 = encrypt_text(kr, "old data", &l0);

    memset(kid1, 0, sizeof kid1);
    EXPECT_RC(phg_keyring_rotate(kr, kid1), PHG_OK);
    EXPECT(kid_well_formed_new(kid1) && strcmp(kid1, kid0) != 0, "new kid %s (old %s)", kid1,
           kid0);
    EXPECT_RC(phg_keyring_primary(kr, primary), PHG_OK);
    EXPECT(strcmp(primary, kid1) == 0, "primary %s, want %s", primary, kid1);
    EXPECT(phg_keyring_count(kr) == 2, "count %zu", phg_keyring_count(kr));
    info_of(kr, 0, &i0);
    info_of(kr, 1, &i1);
    EXPECT(strcmp(i0.kid, kid0) == 0 && i0.state == PHG_PHI_KEY_DECRYPT_ONLY && !i0.is_primary,
           "old key: %s %s primary=%d", i0.kid, state_text(i0.state), i0.is_primary);
    EXPECT(strcmp(i1.kid, kid1) == 0 && i1.state == PHG_PHI_KEY_ACTIVE && i1.is_primary,
           "new key: %s %s primary=%d", i1.kid, state_text(i1.state), i1.is_primary);

    expect_opens(kr, ct0, l0, "old data");
    ct1 = encrypt_text(kr, "new data", &l1);
    EXPECT_RC(phg_phi_ciphertext_kid(ct1, l1, kid), PHG_OK);
    EXPECT(strcmp(kid, kid1) == 0, "new data under %s, want %s", kid, kid1);
    expect_opens(kr, ct1, l1, "new data");

    /* Many rotations: kids stay unique, exactly one active key. */
    for (int r = 0; r < 20; r++) {
        EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    }
    {
        size_t n = phg_keyring_count(kr), active = 0;
        EXPECT(n == 22, "count %zu", n);
        for (size_t i = 0; i < n; i++) {
            phg_phi_key_info x, y;
            info_of(kr, i, &x);
            active += x.state == PHG_PHI_KEY_ACTIVE;
            for (size_t j = 0; j < i; j++) {
                info_of(kr, j, &y);
                EXPECT(strcmp(x.kid, y.kid) != 0, "kid %s repeated", x.kid);
            }
        }
        EXPECT(active == 1, "%zu active keys", active);
    }
    expect_opens(kr, ct0, l0, "old data");
    expect_opens(kr, ct1, l1, "new data");

    free(ct0);
    free(ct1);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
}

static void test_destroy(void **state)
{
    char a[KEY_LEN + 1], kid0[PHG_PHI_KID_MAX + 1], kid1[PHG_PHI_KID_MAX + 1];
    phg_masterkeys *mk;
    phg_keyring *kr, *kr2;
    phg_phi_key_info info;
    size_t l0 = 0, l1 = 0;
    char *ct0, *ct1, *text;
    json_t *root;
    (void)state;

    new_key_text(a);
    mk = mk_of(a);
    EXPECT_RC(phg_keyring_create(mk, NULL, &kr), PHG_OK);
    EXPECT_RC(phg_keyring_primary(kr, kid0), PHG_OK);
    ct0 = encrypt_text(kr, "to be shredded", &l0);

    /* The primary cannot be destroyed. */
    EXPECT_RC(phg_keyring_destroy(kr, kid0), PHG_ERR_STATE);
    expect_opens(kr, ct0, l0, "to be shredded");

    EXPECT_RC(phg_keyring_rotate(kr, kid1), PHG_OK);
    ct1 = encrypt_text(kr, "kept", &l1);
    expect_opens(kr, ct0, l0, "to be shredded"); /* and its key is now in the cache */

    EXPECT_RC(phg_keyring_destroy(kr, "kzzzzzzzzzz"), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keyring_destroy(kr, ""), PHG_ERR_NOT_FOUND);
    EXPECT_RC(phg_keyring_destroy(kr, kid1), PHG_ERR_STATE);
    EXPECT_RC(phg_keyring_destroy(kr, kid0), PHG_OK);
    EXPECT_RC(phg_keyring_destroy(kr, kid0), PHG_ERR_STATE);

    info_of(kr, 0, &info);
    EXPECT(strcmp(info.kid, kid0) == 0 && info.state == PHG_PHI_KEY_DESTROYED,
           "destroyed key shows as %s %s", info.kid, state_text(info.state));
    EXPECT(phg_keyring_count(kr) == 2, "the destroyed kid is kept");
    expect_auth_fails(kr, ct0, l0);
    expect_opens(kr, ct1, l1, "kept");

    /* The JSON keeps kid and created but no wrapped value. */
    text = to_json(kr, NULL);
    check_json_shape(kr, text);
    root = json_loads(text, 0, NULL);
    EXPECT(root != NULL, "JSON");
    {
        json_t *k0 = json_array_get(json_object_get(root, "keys"), 0);
        EXPECT(strcmp(json_string_value(json_object_get(k0, "kid")), kid0) == 0, "kid kept");
        EXPECT(strcmp(json_string_value(json_object_get(k0, "state")), "destroyed") == 0,
               "state destroyed");
        EXPECT(json_object_get(k0, "wrapped") == NULL, "wrapped still present");
        EXPECT(json_object_get(k0, "created") != NULL, "created dropped");
    }
    json_decref(root);

    /* After save and reload it stays destroyed, and its data stays unreadable. */
    kr2 = load(text, mk);
    info_of(kr2, 0, &info);
    EXPECT(info.state == PHG_PHI_KEY_DESTROYED, "reloaded state %s", state_text(info.state));
    expect_auth_fails(kr2, ct0, l0);
    expect_opens(kr2, ct1, l1, "kept");
    EXPECT_RC(phg_keyring_destroy(kr2, kid0), PHG_ERR_STATE);
    /* A rotation never reuses the destroyed kid. */
    EXPECT_RC(phg_keyring_rotate(kr2, kid1), PHG_OK);
    EXPECT(strcmp(kid1, kid0) != 0, "kid reused");

    free(text);
    free(ct0);
    free(ct1);
    phg_keyring_free(kr2);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
}

/* ---- several master keys ------------------------------------------------------------------------ */

static void expect_load_fails(const char *text, const phg_masterkeys *mk, phg_status want,
                              const char *what)
{
    phg_keyring *kr = (phg_keyring *)&kr;
    phg_status rc = phg_keyring_from_json(text, strlen(text), mk, NULL, &kr, NULL);
    EXPECT(rc == want, "%s: got %s, want %s", what, phg_status_name(rc), phg_status_name(want));
    EXPECT(kr == NULL, "%s: *out not NULL after failure", what);
}

static void test_master_key_rotation(void **state)
{
    char a[KEY_LEN + 1], b[KEY_LEN + 1], c[KEY_LEN + 1], ba[2 * KEY_LEN + 4];
    phg_masterkeys *mk_a, *mk_b, *mk_c, *mk_ba, *mk_ab;
    phg_keyring *kr, *kr2;
    char *text, *text2, *ct;
    size_t ct_len = 0;
    json_t *r1, *r2;
    (void)state;

    new_key_text(a);
    new_key_text(b);
    new_key_text(c);
    snprintf(ba, sizeof ba, "%s, %s", b, a);
    mk_a = mk_of(a);
    mk_b = mk_of(b);
    mk_c = mk_of(c);
    mk_ba = mk_of(ba);
    {
        char ab[2 * KEY_LEN + 4];
        snprintf(ab, sizeof ab, "%s,%s", a, b);
        mk_ab = mk_of(ab);
    }

    EXPECT_RC(phg_keyring_create(mk_a, NULL, &kr), PHG_OK);
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    ct = encrypt_text(kr, "across master keys", &ct_len);
    text = to_json(kr, NULL);

    /* Wrapped under A: opens with A, with "B,A" (B tried first, then A), not with B or C. */
    kr2 = load(text, mk_ba);
    expect_opens(kr2, ct, ct_len, "across master keys");
    phg_keyring_free(kr2);
    kr2 = load(text, mk_ab);
    phg_keyring_free(kr2);
    expect_load_fails(text, mk_b, PHG_ERR_MASTER_KEY, "A-wrapped keyring under B");
    expect_load_fails(text, mk_c, PHG_ERR_MASTER_KEY, "A-wrapped keyring under C");

    /* Rewrap under "B,A": the first key wraps. */
    EXPECT_RC(phg_keyring_rewrap(kr, mk_ba), PHG_OK);
    text2 = to_json(kr, NULL);
    check_json_shape(kr, text2);
    EXPECT(strcmp(text, text2) != 0, "rewrap changed nothing");
    /* Only the wrapped values changed. */
    r1 = json_loads(text, 0, NULL);
    r2 = json_loads(text2, 0, NULL);
    EXPECT(r1 != NULL && r2 != NULL, "JSON");
    EXPECT(json_equal(json_object_get(r1, "primary"), json_object_get(r2, "primary")),
           "primary changed");
    for (size_t i = 0; i < 2; i++) {
        json_t *k1 = json_array_get(json_object_get(r1, "keys"), i);
        json_t *k2 = json_array_get(json_object_get(r2, "keys"), i);
        EXPECT(json_equal(json_object_get(k1, "kid"), json_object_get(k2, "kid")) &&
                   json_equal(json_object_get(k1, "state"), json_object_get(k2, "state")) &&
                   json_equal(json_object_get(k1, "created"), json_object_get(k2, "created")),
               "key %zu changed beyond its wrapped value", i);
        EXPECT(!json_equal(json_object_get(k1, "wrapped"), json_object_get(k2, "wrapped")),
               "key %zu not rewrapped", i);
    }
    json_decref(r1);
    json_decref(r2);

    kr2 = load(text2, mk_b);
    expect_opens(kr2, ct, ct_len, "across master keys");
    phg_keyring_free(kr2);
    expect_load_fails(text2, mk_a, PHG_ERR_MASTER_KEY, "B-wrapped keyring under A alone");
    expect_load_fails(text2, mk_c, PHG_ERR_MASTER_KEY, "B-wrapped keyring under C");
    /* The keyring in memory keeps working, and new keys are wrapped under B too. */
    expect_opens(kr, ct, ct_len, "across master keys");
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    free(text2);
    text2 = to_json(kr, NULL);
    kr2 = load(text2, mk_b);
    phg_keyring_free(kr2);
    expect_load_fails(text2, mk_a, PHG_ERR_MASTER_KEY, "key added after rewrap, under A");

    /* A keyring created under "B,A" is wrapped under B. */
    phg_keyring_free(kr);
    EXPECT_RC(phg_keyring_create(mk_ba, NULL, &kr), PHG_OK);
    free(text2);
    text2 = to_json(kr, NULL);
    kr2 = load(text2, mk_b);
    phg_keyring_free(kr2);
    expect_load_fails(text2, mk_a, PHG_ERR_MASTER_KEY, "created under B,A, loaded under A");

    free(text2);
    free(text);
    free(ct);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk_a);
    phg_phi_masterkeys_free(mk_b);
    phg_phi_masterkeys_free(mk_c);
    phg_phi_masterkeys_free(mk_ba);
    phg_phi_masterkeys_free(mk_ab);
}

/* ---- corrupt keyrings --------------------------------------------------------------------------- */

/* A keyring of three keys: [0] destroyed, [1] decrypt-only, [2] active (primary). */
typedef struct corpus {
    char mk_text[KEY_LEN + 1];
    uint8_t mk_bytes[PHG_FERNET_KEY_SIZE];
    phg_masterkeys *mk;
    char *text;
    json_t *root;
    char kids[3][PHG_PHI_KID_MAX + 1];
    char wrapped[2][256]; /* of keys 1 and 2 */
} corpus;

static void corpus_open(corpus *c)
{
    phg_keyring *kr;
    json_t *keys;
    memset(c, 0, sizeof *c);
    new_key_text(c->mk_text);
    EXPECT_RC(phg_fernet_key_decode(c->mk_text, KEY_LEN, c->mk_bytes), PHG_OK);
    c->mk = mk_of(c->mk_text);
    EXPECT_RC(phg_keyring_create(c->mk, NULL, &kr), PHG_OK);
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    for (size_t i = 0; i < 3; i++) {
        phg_phi_key_info info;
        info_of(kr, i, &info);
        memcpy(c->kids[i], info.kid, sizeof info.kid);
    }
    EXPECT_RC(phg_keyring_destroy(kr, c->kids[0]), PHG_OK);
    c->text = to_json(kr, NULL);
    phg_keyring_free(kr);
    c->root = json_loads(c->text, 0, NULL);
    EXPECT(c->root != NULL, "JSON");
    keys = json_object_get(c->root, "keys");
    for (size_t i = 1; i < 3; i++) {
        snprintf(c->wrapped[i - 1], sizeof c->wrapped[0], "%s",
                 json_string_value(json_object_get(json_array_get(keys, i), "wrapped")));
    }
    /* The untouched text loads. */
    phg_keyring_free(load(c->text, c->mk));
}

static void corpus_close(corpus *c)
{
    json_decref(c->root);
    free(c->text);
    phg_phi_masterkeys_free(c->mk);
}

static json_t *key_n(json_t *root, size_t i)
{
    return json_array_get(json_object_get(root, "keys"), i);
}

/* Load text; it must fail with want, a reason for KEYRING that leaks nothing. */
static void expect_corrupt(const corpus *c, const char *text, size_t len, phg_status want,
                           const char *what)
{
    phg_keyring *kr = (phg_keyring *)&kr;
    const char *why = "unset";
    phg_status rc = phg_keyring_from_json(text, len, c->mk, NULL, &kr, &why);
    EXPECT(rc == want, "%s: got %s, want %s (why: %s)", what, phg_status_name(rc),
           phg_status_name(want), why ? why : "NULL");
    EXPECT(kr == NULL, "%s: *out not NULL after failure", what);
    if (want != PHG_ERR_KEYRING) {
        return;
    }
    EXPECT(why != NULL && why[0] != '\0', "%s: no reason given", what);
    EXPECT(strcmp(why, "unset") != 0, "%s: why not written", what);
    /* A static sentence naming a rule: no key material, no content of the text. */
    EXPECT(strstr(why, c->mk_text) == NULL, "%s: reason holds the master key", what);
    EXPECT(strstr(why, "gAAAAA") == NULL, "%s: reason holds a token", what);
    for (size_t i = 0; i < 2; i++) {
        EXPECT(strstr(why, c->wrapped[i]) == NULL, "%s: reason holds a wrapped DEK", what);
        EXPECT(strstr(why, c->wrapped[i] + 100) == NULL, "%s: reason holds part of a token",
               what);
    }
    for (size_t i = 0; i < 3; i++) {
        EXPECT(strstr(why, c->kids[i]) == NULL, "%s: reason holds a kid", what);
    }
    EXPECT(strlen(why) < 200, "%s: reason is %zu chars", what, strlen(why));
}

typedef void (*mutator)(const corpus *c, json_t *root);

static void m_format(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "format", json_string("phigate-keyring2")); }
static void m_format_missing(const corpus *c, json_t *r) { (void)c; json_object_del(r, "format"); }
static void m_format_number(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "format", json_integer(1)); }
static void m_version2(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "version", json_integer(2)); }
static void m_version0(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "version", json_integer(0)); }
static void m_version_real(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "version", json_real(1.0)); }
static void m_version_string(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "version", json_string("1")); }
static void m_version_true(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "version", json_true()); }
static void m_version_missing(const corpus *c, json_t *r) { (void)c; json_object_del(r, "version"); }
static void m_primary_missing(const corpus *c, json_t *r) { (void)c; json_object_del(r, "primary"); }
static void m_primary_null(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "primary", json_null()); }
static void m_primary_unknown(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "primary", json_string("kzzzzzzzzzz")); }
static void m_primary_malformed(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "primary", json_string("K!")); }
static void m_primary_decrypt_only(const corpus *c, json_t *r) { json_object_set_new(r, "primary", json_string(c->kids[1])); }
static void m_primary_destroyed(const corpus *c, json_t *r) { json_object_set_new(r, "primary", json_string(c->kids[0])); }
static void m_two_active(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "state", json_string("active")); }
static void m_no_active(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 2), "state", json_string("decrypt-only")); }
static void m_dup_kid(const corpus *c, json_t *r) { json_object_set_new(key_n(r, 1), "kid", json_string(c->kids[0])); }
static void m_dup_primary_kid(const corpus *c, json_t *r) { json_object_set_new(key_n(r, 1), "kid", json_string(c->kids[2])); }
static void m_kid_chars(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 0), "kid", json_string("k-1")); }
static void m_kid_dot(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 0), "kid", json_string("k.1")); }
static void m_kid_upper(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 0), "kid", json_string("KABCDEFGHIJ")); }
static void m_kid_33(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 0), "kid", json_string("k12345678901234567890123456789012")); }
static void m_kid_empty(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 0), "kid", json_string("")); }
static void m_kid_number(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 0), "kid", json_integer(7)); }
static void m_kid_missing(const corpus *c, json_t *r) { (void)c; json_object_del(key_n(r, 0), "kid"); }
static void m_state_unknown(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "state", json_string("retired")); }
static void m_state_case(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "state", json_string("Decrypt-only")); }
static void m_state_missing(const corpus *c, json_t *r) { (void)c; json_object_del(key_n(r, 1), "state"); }
static void m_created_feb31(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-02-31T00:00:00Z")); }
static void m_created_space(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-11-27 18:00:00Z")); }
static void m_created_no_z(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-11-27T18:00:00")); }
static void m_created_offset(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-11-27T18:00:00+00:00")); }
static void m_created_frac(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-11-27T18:00:00.5Z")); }
static void m_created_sec60(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-11-27T18:00:60Z")); }
static void m_created_hour24(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-11-27T24:00:00Z")); }
static void m_created_lower(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("2026-11-27t18:00:00z")); }
static void m_created_1969(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_string("1969-12-31T23:59:59Z")); }
static void m_created_number(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "created", json_integer(1795805400)); }
static void m_created_missing(const corpus *c, json_t *r) { (void)c; json_object_del(key_n(r, 1), "created"); }
static void m_destroyed_wrapped(const corpus *c, json_t *r) { json_object_set_new(key_n(r, 0), "wrapped", json_string(c->wrapped[0])); }
static void m_destroyed_null(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 0), "wrapped", json_null()); }
static void m_missing_wrapped(const corpus *c, json_t *r) { (void)c; json_object_del(key_n(r, 1), "wrapped"); }
static void m_null_wrapped(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "wrapped", json_null()); }
static void m_number_wrapped(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 2), "wrapped", json_integer(5)); }
static void m_unknown_top(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "comment", json_string("hi")); }
static void m_unknown_key(const corpus *c, json_t *r) { (void)c; json_object_set_new(key_n(r, 1), "note", json_string("hi")); }
static void m_keys_empty(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "keys", json_array()); }
static void m_keys_object(const corpus *c, json_t *r) { (void)c; json_object_set_new(r, "keys", json_object()); }
static void m_keys_missing(const corpus *c, json_t *r) { (void)c; json_object_del(r, "keys"); }
static void m_key_string(const corpus *c, json_t *r) { (void)c; json_array_append_new(json_object_get(r, "keys"), json_string("x")); }
static void m_key_array(const corpus *c, json_t *r) { (void)c; json_array_insert_new(json_object_get(r, "keys"), 0, json_array()); }

static void test_corrupt_structure(void **state)
{
    static const struct {
        const char *name;
        mutator fn;
    } cases[] = {
        {"format string", m_format},         {"format missing", m_format_missing},
        {"format number", m_format_number},  {"version 2", m_version2},
        {"version 0", m_version0},           {"version 1.0", m_version_real},
        {"version \"1\"", m_version_string}, {"version true", m_version_true},
        {"version missing", m_version_missing},
        {"primary missing", m_primary_missing},
        {"primary null", m_primary_null},
        {"primary names no key", m_primary_unknown},
        {"primary malformed", m_primary_malformed},
        {"primary decrypt-only", m_primary_decrypt_only},
        {"primary destroyed", m_primary_destroyed},
        {"two active keys", m_two_active},
        {"no active key", m_no_active},
        {"duplicate kid", m_dup_kid},
        {"duplicate primary kid", m_dup_primary_kid},
        {"kid with '-'", m_kid_chars},
        {"kid with '.'", m_kid_dot},
        {"uppercase kid", m_kid_upper},
        {"33-char kid", m_kid_33},
        {"empty kid", m_kid_empty},
        {"numeric kid", m_kid_number},
        {"kid missing", m_kid_missing},
        {"unknown state", m_state_unknown},
        {"state in other case", m_state_case},
        {"state missing", m_state_missing},
        {"created 2026-02-31", m_created_feb31},
        {"created with a space", m_created_space},
        {"created without Z", m_created_no_z},
        {"created with +00:00", m_created_offset},
        {"created with a fraction", m_created_frac},
        {"created second 60", m_created_sec60},
        {"created hour 24", m_created_hour24},
        {"created lower case t/z", m_created_lower},
        {"created before 1970", m_created_1969},
        {"created as number", m_created_number},
        {"created missing", m_created_missing},
        {"destroyed key with wrapped", m_destroyed_wrapped},
        {"destroyed key with wrapped null", m_destroyed_null},
        {"decrypt-only key without wrapped", m_missing_wrapped},
        {"wrapped null", m_null_wrapped},
        {"wrapped number", m_number_wrapped},
        {"unknown member at top level", m_unknown_top},
        {"unknown member in a key", m_unknown_key},
        {"empty keys array", m_keys_empty},
        {"keys is an object", m_keys_object},
        {"keys missing", m_keys_missing},
        {"a key is a string", m_key_string},
        {"a key is an array", m_key_array},
    };
    corpus c;
    (void)state;

    corpus_open(&c);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *copy = json_deep_copy(c.root);
        char *text;
        cases[i].fn(&c, copy);
        EXPECT(!json_equal(copy, c.root), "test bug: %s changed nothing", cases[i].name);
        text = json_dumps(copy, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        EXPECT(text != NULL, "json_dumps");
        expect_corrupt(&c, text, strlen(text), PHG_ERR_KEYRING, cases[i].name);
        free(text);
        json_decref(copy);
    }
    corpus_close(&c);
}

static void test_corrupt_text(void **state)
{
    char *buf;
    size_t len;
    corpus c;
    (void)state;

    corpus_open(&c);
    len = strlen(c.text);
    expect_corrupt(&c, "", 0, PHG_ERR_KEYRING, "empty text");
    expect_corrupt(&c, "not json", 8, PHG_ERR_KEYRING, "not JSON");
    expect_corrupt(&c, "[]", 2, PHG_ERR_KEYRING, "JSON array");
    expect_corrupt(&c, "\"phigate-keyring\"", 17, PHG_ERR_KEYRING, "JSON string");
    expect_corrupt(&c, "null", 4, PHG_ERR_KEYRING, "JSON null");
    expect_corrupt(&c, "{}", 2, PHG_ERR_KEYRING, "empty object");
    /* Half the text, and the text with a trailing second value. */
    expect_corrupt(&c, c.text, len / 2, PHG_ERR_KEYRING, "truncated JSON");
    buf = malloc(len + 8);
    EXPECT(buf != NULL, "out of memory");
    memcpy(buf, c.text, len);
    memcpy(buf + len, "{}", 2);
    expect_corrupt(&c, buf, len + 2, PHG_ERR_KEYRING, "trailing value");
    /* A byte order mark. */
    memcpy(buf, "\xef\xbb\xbf", 3);
    memcpy(buf + 3, c.text, len);
    expect_corrupt(&c, buf, len + 3, PHG_ERR_KEYRING, "byte order mark");
    free(buf);

    /* Duplicate member names, top level and in a key. */
    {
        const char *brace = strchr(c.text, '{');
        const char *key_brace = strstr(c.text, "\"keys\": [");
        size_t off, n;
        EXPECT(brace != NULL && key_brace != NULL, "layout");
        buf = malloc(len + 128);
        EXPECT(buf != NULL, "out of memory");
        off = (size_t)(brace - c.text) + 1;
        memcpy(buf, c.text, off);
        n = off + (size_t)sprintf(buf + off, "\"format\": \"phigate-keyring\",");
        memcpy(buf + n, c.text + off, len - off);
        expect_corrupt(&c, buf, n + len - off, PHG_ERR_KEYRING, "duplicate top-level member");

        key_brace = strchr(key_brace, '{');
        EXPECT(key_brace != NULL, "layout");
        off = (size_t)(key_brace - c.text) + 1;
        memcpy(buf, c.text, off);
        n = off + (size_t)sprintf(buf + off, "\"state\": \"destroyed\",");
        memcpy(buf + n, c.text + off, len - off);
        expect_corrupt(&c, buf, n + len - off, PHG_ERR_KEYRING, "duplicate member in a key");
        free(buf);
    }

    /* Over 4 MiB is too large, whatever it holds. */
    buf = malloc(PHG_PHI_KEYRING_TEXT_MAX + 1);
    EXPECT(buf != NULL, "out of memory");
    memset(buf, ' ', PHG_PHI_KEYRING_TEXT_MAX + 1);
    memcpy(buf, c.text, len);
    expect_corrupt(&c, buf, PHG_PHI_KEYRING_TEXT_MAX + 1, PHG_ERR_TOO_LARGE, "4 MiB + 1");
    /* Exactly 4 MiB (the keyring padded with whitespace) still loads. */
    {
        phg_keyring *kr = NULL;
        EXPECT_RC(phg_keyring_from_json(buf, PHG_PHI_KEYRING_TEXT_MAX, c.mk, NULL, &kr, NULL),
                  PHG_OK);
        phg_keyring_free(kr);
    }
    free(buf);
    corpus_close(&c);
}

/* Wrapped values that open, but not to a data key, or do not open at all. */
static void test_corrupt_wrapped(void **state)
{
    static const size_t sizes[] = {0, 16, 31, 33, 64};
    char token[512], other[KEY_LEN + 1];
    uint8_t dek[64], other_bytes[32];
    size_t tlen = 0;
    corpus c;
    (void)state;

    corpus_open(&c);
    memset(dek, 0x42, sizeof dek);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        json_t *copy = json_deep_copy(c.root);
        char *text, what[64];
        EXPECT_RC(phg_fernet_encrypt(c.mk_bytes, dek, sizes[s], (uint64_t)time(NULL), NULL, token,
                                     sizeof token, &tlen),
                  PHG_OK);
        json_object_set_new(key_n(copy, 2), "wrapped", json_string(token));
        text = json_dumps(copy, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        snprintf(what, sizeof what, "wrapped DEK of %zu bytes", sizes[s]);
        expect_corrupt(&c, text, strlen(text), PHG_ERR_KEYRING, what);
        /* and the why never holds this token either */
        {
            const char *why = NULL;
            phg_keyring *kr = NULL;
            EXPECT_RC(phg_keyring_from_json(text, strlen(text), c.mk, NULL, &kr, &why),
                      PHG_ERR_KEYRING);
            EXPECT(why != NULL && strstr(why, token) == NULL && strstr(why, token + tlen - 20) == NULL,
                   "%s: reason", what);
        }
        free(text);
        json_decref(copy);
    }

    /* A 32-byte DEK wrapped under another master key, a garbage token, a token with one
     * character changed, and no-TTL: a token dated 1970 or far in the future is fine. */
    {
        static const char *const bad_tokens[] = {"hello", "gAAAAA", "="};
        new_key_text(other);
        EXPECT_RC(phg_fernet_key_decode(other, KEY_LEN, other_bytes), PHG_OK);
        EXPECT_RC(phg_fernet_encrypt(other_bytes, dek, 32, (uint64_t)time(NULL), NULL, token,
                                     sizeof token, &tlen),
                  PHG_OK);
        for (int t = -1; t < 4; t++) {
            json_t *copy = json_deep_copy(c.root);
            char *text;
            if (t == -1) {
                json_object_set_new(key_n(copy, 1), "wrapped", json_string(token));
            } else if (t < 3) {
                json_object_set_new(key_n(copy, 1), "wrapped", json_string(bad_tokens[t]));
            } else {
                char flipped[256];
                snprintf(flipped, sizeof flipped, "%s", c.wrapped[0]);
                flipped[60] = flipped[60] == 'A' ? 'B' : 'A';
                json_object_set_new(key_n(copy, 1), "wrapped", json_string(flipped));
            }
            text = json_dumps(copy, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            expect_corrupt(&c, text, strlen(text), PHG_ERR_MASTER_KEY, "token that does not open");
            free(text);
            json_decref(copy);
        }
        for (int t = 0; t < 2; t++) {
            json_t *copy = json_deep_copy(c.root);
            char *text;
            phg_keyring *kr = NULL;
            EXPECT_RC(phg_fernet_encrypt(c.mk_bytes, dek, 32, t == 0 ? 0 : 4102444800u, NULL,
                                         token, sizeof token, &tlen),
                      PHG_OK);
            json_object_set_new(key_n(copy, 1), "wrapped", json_string(token));
            text = json_dumps(copy, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            EXPECT_RC(phg_keyring_from_json(text, strlen(text), c.mk, NULL, &kr, NULL), PHG_OK);
            phg_keyring_free(kr);
            free(text);
            json_decref(copy);
        }
    }
    corpus_close(&c);
}

/* ---- files ------------------------------------------------------------------------------------ */

static char *read_whole(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    long n;
    EXPECT(fp != NULL, "open %s", path);
    EXPECT(fseek(fp, 0, SEEK_END) == 0, "seek");
    n = ftell(fp);
    EXPECT(n >= 0, "ftell");
    rewind(fp);
    buf = malloc((size_t)n + 1);
    EXPECT(buf != NULL, "out of memory");
    EXPECT(fread(buf, 1, (size_t)n, fp) == (size_t)n, "read");
    buf[n] = '\0';
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static int count_entries(const char *dir, const char *containing)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    EXPECT(d != NULL, "opendir %s", dir);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        if (containing == NULL || strstr(e->d_name, containing) != NULL) {
            n++;
        }
    }
    closedir(d);
    return n;
}

static void test_files(void **state)
{
    char a[KEY_LEN + 1], path[4096], missing[4200], nodir[4200], kid[PHG_PHI_KID_MAX + 1];
    char kid2[PHG_PHI_KID_MAX + 1];
    char *dir = make_temp_dir(), *json, *file, *ct;
    phg_masterkeys *mk;
    phg_keyring *kr, *kr2, *loaded;
    const char *why = "unset";
    struct stat st;
    size_t len = 0, ct_len = 0;
    mode_t old_umask;
    (void)state;

    new_key_text(a);
    mk = mk_of(a);
    snprintf(path, sizeof path, "%s/keyring.json", dir);
    EXPECT_RC(phg_keyring_create(mk, NULL, &kr), PHG_OK);
    EXPECT_RC(phg_keyring_rotate(kr, NULL), PHG_OK);
    ct = encrypt_text(kr, "on disk", &ct_len);

    /* Even with a permissive umask the file is 0600. */
    old_umask = umask(0);
    EXPECT_RC(phg_keyring_save_file(kr, path), PHG_OK);
    umask(old_umask);
    EXPECT(stat(path, &st) == 0, "stat: %s", strerror(errno));
    EXPECT(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600, "mode %o", st.st_mode & 07777);
    file = read_whole(path, &len);
    json = to_json(kr, NULL);
    EXPECT(len == strlen(json) + 1 && file[len - 1] == '\n' && file[len - 2] != '\n' &&
               memcmp(file, json, len - 1) == 0,
           "file is not the JSON text and one newline");
    free(file);
    free(json);
    EXPECT(count_entries(dir, NULL) == 1, "%d entries in the folder", count_entries(dir, NULL));

    EXPECT_RC(phg_keyring_load_file(path, mk, NULL, &loaded, &why), PHG_OK);
    EXPECT(why == NULL, "why set on success");
    EXPECT(phg_keyring_count(loaded) == 2, "count %zu", phg_keyring_count(loaded));
    EXPECT_RC(phg_keyring_primary(kr, kid), PHG_OK);
    EXPECT_RC(phg_keyring_primary(loaded, kid2), PHG_OK);
    EXPECT(strcmp(kid, kid2) == 0, "primary %s after load, want %s", kid2, kid);
    expect_opens(loaded, ct, ct_len, "on disk");
    phg_keyring_free(loaded);

    /* Errors. */
    snprintf(missing, sizeof missing, "%s/absent.json", dir);
    loaded = (phg_keyring *)&loaded;
    EXPECT_RC(phg_keyring_load_file(missing, mk, NULL, &loaded, &why), PHG_ERR_NOT_FOUND);
    EXPECT(loaded == NULL, "*out set after failure");
    EXPECT_RC(phg_keyring_load_file(dir, mk, NULL, &loaded, NULL), PHG_ERR_IO);
    EXPECT(loaded == NULL, "*out set after failure");
    EXPECT_RC(phg_keyring_load_file(path, mk, NULL, &loaded, NULL), PHG_OK);
    phg_keyring_free(loaded);

    snprintf(nodir, sizeof nodir, "%s/no-such-dir/keyring.json", dir);
    EXPECT_RC(phg_keyring_save_file(kr, nodir), PHG_ERR_IO);
    snprintf(nodir, sizeof nodir, "%s/no-such-dir", dir);
    EXPECT(stat(nodir, &st) != 0 && errno == ENOENT, "save created %s", nodir);
    EXPECT(count_entries(dir, NULL) == 1, "failed save left %d entries",
           count_entries(dir, NULL));

    /* Corrupt and oversized files. */
    {
        char bad[4200];
        int fd;
        snprintf(bad, sizeof bad, "%s/bad.json", dir);
        write_file(bad, "{\"format\": \"x\"}\n", 16);
        why = NULL;
        EXPECT_RC(phg_keyring_load_file(bad, mk, NULL, &loaded, &why), PHG_ERR_KEYRING);
        EXPECT(why != NULL, "no reason for a corrupt file");
        fd = open(bad, O_WRONLY | O_TRUNC);
        EXPECT(fd >= 0 && ftruncate(fd, (off_t)PHG_PHI_KEYRING_TEXT_MAX + 1) == 0, "ftruncate");
        close(fd);
        EXPECT_RC(phg_keyring_load_file(bad, mk, NULL, &loaded, NULL), PHG_ERR_TOO_LARGE);
        EXPECT(unlink(bad) == 0, "unlink");
    }

    /* Replacing an existing keyring (even one with a wider mode): the new one is there,
     * mode 0600, and no temporary file is left. */
    EXPECT(chmod(path, 0644) == 0, "chmod");
    EXPECT_RC(phg_keyring_create(mk, NULL, &kr2), PHG_OK);
    for (int i = 0; i < 5; i++) {
        EXPECT_RC(phg_keyring_save_file(i % 2 ? kr : kr2, path), PHG_OK);
    }
    EXPECT(count_entries(dir, NULL) == 1, "%d entries after saves", count_entries(dir, NULL));
    EXPECT(count_entries(dir, ".tmp") == 0, "temporary file left behind");
    EXPECT(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600, "mode %o after replace",
           st.st_mode & 07777);
    EXPECT_RC(phg_keyring_load_file(path, mk, NULL, &loaded, NULL), PHG_OK);
    EXPECT_RC(phg_keyring_primary(kr2, kid), PHG_OK);
    EXPECT_RC(phg_keyring_primary(loaded, kid2), PHG_OK);
    EXPECT(strcmp(kid, kid2) == 0 && phg_keyring_count(loaded) == 1,
           "the file does not hold the last keyring saved");
    expect_auth_fails(loaded, ct, ct_len); /* ct is from the other keyring */
    phg_keyring_free(loaded);

    /* A relative path (no folder part) works too. */
    {
        char cwd[4096];
        EXPECT(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
        EXPECT(chdir(dir) == 0, "chdir");
        EXPECT_RC(phg_keyring_save_file(kr, "relative.json"), PHG_OK);
        EXPECT_RC(phg_keyring_load_file("relative.json", mk, NULL, &loaded, NULL), PHG_OK);
        expect_opens(loaded, ct, ct_len, "on disk");
        phg_keyring_free(loaded);
        EXPECT(chdir(cwd) == 0, "chdir back");
        EXPECT(count_entries(dir, ".tmp") == 0, "temporary file left behind");
    }

    free(ct);
    phg_keyring_free(kr2);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    remove_temp_dir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_masterkeys_parse),
        cmocka_unit_test(test_masterkeys_refused),
        cmocka_unit_test(test_masterkeys_from_env),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_rotate),
        cmocka_unit_test(test_destroy),
        cmocka_unit_test(test_master_key_rotation),
        cmocka_unit_test(test_corrupt_structure),
        cmocka_unit_test(test_corrupt_text),
        cmocka_unit_test(test_corrupt_wrapped),
        cmocka_unit_test(test_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
