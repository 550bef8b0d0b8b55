/*
 * test_webhook_store.c: webhook sources in the store (phigate/webhook_store.h),
 * on SQLite and on PostgreSQL (testdb.h): add, list, get, remove; secrets
 * decrypt back, are encrypted at rest, need the right master key; add-secret
 * and retire-secret; bad names, schemes, secrets, URLs and tolerances refused;
 * the verify token (add, set, clear: decrypted only with the master keys,
 * encrypted at rest, bad ones refused, secrets untouched by it).
 */
#include "phigate.h"
#include "phigate/webhook_store.h"

#include "testdb.h"

#define S1 "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define S2 "whsec_ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
#define MK1 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define MK2 "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM="

typedef struct fx {
    testdb db;
    phg_store *st;
    phg_masterkeys *mk;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char err[PHG_STORE_ERR_MAX] = "";
    if (f == NULL)
        return -1;
    *state = f;
    tdb_create(&f->db, g_engine, "whsrc");
    assert_int_equal(tdb_open_store(&f->db, 2, &f->st, err, sizeof err), PHG_OK);
    assert_int_equal(phg_store_migrate(f->st, NULL, NULL, err, sizeof err), PHG_OK);
    assert_int_equal(phg_phi_masterkeys_parse(MK1, strlen(MK1), &f->mk), PHG_OK);
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    phg_store_close(f->st);
    phg_phi_masterkeys_free(f->mk);
    tdb_drop(&f->db);
    free(f);
    return 0;
}

static phg_status add(fx *f, const char *name, const char *scheme, const char *secret,
                      const char *url, int64_t tol, char *err, size_t err_len)
{
    phg_webhook_secret s = {secret, strlen(secret), 0};
    phg_webhook_source_spec spec = {name, scheme, tol, url, &s, 1, NULL, 0};
    return phg_webhook_sources_add(f->st, f->mk, &spec, err, err_len);
}

static void test_add_list_get_remove(void **state)
{
    fx *f = *state;
    phg_webhook_secret s[2] = {{"  " S1 "\n", strlen(S1) + 3, 0}, {S2, strlen(S2), 4102444800}};
    phg_webhook_source_spec spec = {
        "oura-1", "standard-webhooks", 120, "https://up.example/in", s, 2, NULL, 0};
    phg_webhook_source_info *infos = NULL, *info = NULL;
    phg_webhook_source *src = NULL;
    char err[256];
    size_t n = 0;

    assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &spec, err, sizeof err), PHG_OK);
    assert_int_equal(add(f, "a_stripe", "stripe", S2, "http://up:8080/x", 0, err, sizeof err),
                     PHG_OK);
    /* the same name again */
    assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &spec, err, sizeof err), PHG_ERR_EXISTS);

    assert_int_equal(phg_webhook_sources_list(f->st, &infos, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_string_equal(infos[0].name, "a_stripe");
    assert_int_equal(infos[0].tolerance_s, 300); /* the default */
    assert_string_equal(infos[1].name, "oura-1");
    assert_string_equal(infos[1].scheme, "standard-webhooks");
    assert_int_equal(infos[1].tolerance_s, 120);
    assert_string_equal(infos[1].deliver_to, "https://up.example/in");
    phg_webhook_source_infos_free(infos, n);

    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "oura-1", &info), PHG_OK);
    assert_int_equal(info->n_secrets, 2);
    assert_int_equal(info->n_active, 2);
    /* decrypted back, trimmed */
    assert_int_equal(info->active[0].len, strlen(S1));
    assert_memory_equal(info->active[0].text, S1, strlen(S1));
    assert_memory_equal(info->active[1].text, S2, strlen(S2));
    assert_int_equal(info->active[1].not_after, 4102444800);
    assert_int_equal(info->secrets[1].not_after, 4102444800);
    assert_int_equal(strncmp(info->secrets[0].fingerprint, "fp:", 3), 0);
    assert_string_not_equal(info->secrets[0].fingerprint, info->secrets[1].fingerprint);
    /* ready for the verifier, and the fingerprints are the verifier's */
    assert_int_equal(phg_webhook_source_new(info->scheme, info->active, info->n_active, NULL, &src,
                                            err, sizeof err),
                     PHG_OK);
    {
        char fp[20];
        assert_int_equal(phg_webhook_secret_fingerprint(src, 1, fp), PHG_OK);
        assert_string_equal(fp, info->secrets[1].fingerprint);
    }
    phg_webhook_source_free(src);
    phg_webhook_source_info_free(info);

    /* without master keys: metadata only */
    assert_int_equal(phg_webhook_sources_get(f->st, NULL, "oura-1", &info), PHG_OK);
    assert_int_equal(info->n_secrets, 2);
    assert_int_equal(info->n_active, 0);
    phg_webhook_source_info_free(info);

    assert_int_equal(phg_webhook_sources_remove(f->st, "oura-1"), PHG_OK);
    assert_int_equal(phg_webhook_sources_remove(f->st, "oura-1"), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "oura-1", &info), PHG_ERR_NOT_FOUND);
    assert_null(info);
    assert_int_equal(tdb_query_int(&f->db,
                                   "SELECT count(*) FROM webhook_secrets WHERE source = 'oura-1'",
                                   err, sizeof err),
                     0);
    assert_int_equal(phg_webhook_sources_list(f->st, &infos, &n), PHG_OK);
    assert_int_equal(n, 1);
    phg_webhook_source_infos_free(infos, n);
}

static void test_encrypted_at_rest(void **state)
{
    fx *f = *state;
    phg_masterkeys *other = NULL, *both = NULL;
    phg_webhook_source_info *info = NULL;
    char err[256], sql[512];

    assert_int_equal(add(f, "src", "stripe", S1, "https://x.example/", 0, err, sizeof err), PHG_OK);
    assert_int_equal(tdb_query_int(&f->db, "SELECT count(*) FROM webhook_secrets", err, sizeof err),
                     1);
    /* neither the text nor its base64 part is in the table */
    snprintf(sql, sizeof sql, "SELECT count(*) FROM webhook_secrets WHERE %s(secret_enc, '%s') > 0",
             f->db.engine == TDB_SQLITE ? "instr" : "strpos", "AAECAwQFBgcICQoL");
    assert_int_equal(tdb_query_int(&f->db, sql, err, sizeof err), 0);
    assert_int_equal(tdb_query_int(&f->db,
                                   "SELECT count(*) FROM webhook_secrets WHERE "
                                   "secret_enc LIKE 'gAAAAA%'",
                                   err, sizeof err),
                     1);

    /* a wrong master key cannot open it */
    assert_int_equal(phg_phi_masterkeys_parse(MK2, strlen(MK2), &other), PHG_OK);
    assert_int_equal(phg_webhook_sources_get(f->st, other, "src", &info), PHG_ERR_MASTER_KEY);
    assert_null(info);
    /* a rotated list (new key first, old one after) still opens it */
    assert_int_equal(phg_phi_masterkeys_parse(MK2 "," MK1, strlen(MK2 "," MK1), &both), PHG_OK);
    assert_int_equal(phg_webhook_sources_get(f->st, both, "src", &info), PHG_OK);
    assert_int_equal(info->n_active, 1);
    assert_memory_equal(info->active[0].text, S1, strlen(S1));
    phg_webhook_source_info_free(info);
    phg_phi_masterkeys_free(other);
    phg_phi_masterkeys_free(both);
}

static void test_add_and_retire_secret(void **state)
{
    fx *f = *state;
    phg_webhook_source_info *info = NULL;
    phg_webhook_secret s2 = {S2 "\r\n", strlen(S2) + 2, 1900000000};
    phg_webhook_secret bad = {"whsec_AAAA", 10, 0};
    char err[256];
    int64_t idx = -1;
    int i;

    assert_int_equal(
        add(f, "rot", "standard-webhooks", S1, "https://x.example/", 0, err, sizeof err), PHG_OK);
    assert_int_equal(
        phg_webhook_sources_add_secret(f->st, f->mk, "rot", &s2, &idx, err, sizeof err), PHG_OK);
    assert_int_equal(idx, 1);
    assert_int_equal(
        phg_webhook_sources_add_secret(f->st, f->mk, "rot", &bad, &idx, err, sizeof err),
        PHG_ERR_INVALID);
    assert_non_null(strstr(err, "bytes"));
    assert_null(strstr(err, "AAAA"));
    assert_int_equal(
        phg_webhook_sources_add_secret(f->st, f->mk, "nope", &s2, &idx, err, sizeof err),
        PHG_ERR_NOT_FOUND);

    assert_int_equal(phg_webhook_sources_retire_secret(f->st, "rot", 0), PHG_OK);
    assert_int_equal(phg_webhook_sources_retire_secret(f->st, "rot", 0), PHG_OK); /* again */
    /* the last unretired one stays */
    assert_int_equal(phg_webhook_sources_retire_secret(f->st, "rot", 1), PHG_ERR_STATE);
    assert_int_equal(phg_webhook_sources_retire_secret(f->st, "rot", 7), PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_webhook_sources_retire_secret(f->st, "nope", 0), PHG_ERR_NOT_FOUND);

    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "rot", &info), PHG_OK);
    assert_int_equal(info->n_secrets, 2);
    assert_true(info->secrets[0].retired_at > 0);
    assert_int_equal(info->secrets[1].retired_at, 0);
    assert_int_equal(info->secrets[1].not_after, 1900000000);
    assert_int_equal(info->n_active, 1);
    assert_int_equal(info->active_index[0], 1);
    assert_int_equal(info->active[0].len, strlen(S2));
    assert_memory_equal(info->active[0].text, S2, strlen(S2));
    phg_webhook_source_info_free(info);

    /* at most 16 unretired: 1 now, 15 more fit */
    for (i = 0; i < 15; i++)
        assert_int_equal(
            phg_webhook_sources_add_secret(f->st, f->mk, "rot", &s2, &idx, err, sizeof err),
            PHG_OK);
    assert_int_equal(idx, 16);
    assert_int_equal(
        phg_webhook_sources_add_secret(f->st, f->mk, "rot", &s2, &idx, err, sizeof err),
        PHG_ERR_STATE);
}

static void test_refused(void **state)
{
    fx *f = *state;
    char err[256], longname[80], longurl[2100];
    phg_webhook_secret two[2] = {{S1, strlen(S1), 0}, {"whsec_AAAA", 10, 0}};
    phg_webhook_source_spec spec = {"ok", "standard-webhooks", 0, "https://x/", two, 2, NULL, 0};
    phg_webhook_source_spec none = {"ok", "standard-webhooks", 0, "https://x/", two, 0, NULL, 0};
    const char *names[] = {"", "Upper", "has space", "a/b", "a.b", "é", NULL};
    const char *urls[] = {
        "", "ftp://x/", "https://", "http:///x", "https://a b/", "https://x/\n", "x.example", NULL};
    phg_webhook_source_info *infos = NULL;
    size_t n = 9, i;

    for (i = 0; names[i] != NULL; i++)
        assert_int_equal(add(f, names[i], "stripe", S1, "https://x/", 0, err, sizeof err),
                         PHG_ERR_INVALID);
    memset(longname, 'a', 65);
    longname[65] = '\0';
    assert_int_equal(add(f, longname, "stripe", S1, "https://x/", 0, err, sizeof err),
                     PHG_ERR_INVALID);
    longname[64] = '\0';
    assert_int_equal(add(f, longname, "stripe", S1, "https://x/", 0, err, sizeof err), PHG_OK);

    assert_int_equal(add(f, "s", "nosuch", S1, "https://x/", 0, err, sizeof err),
                     PHG_ERR_NOT_FOUND);
    /* a near miss of a scheme's name (google-health is one now) */
    assert_int_equal(add(f, "s", "google_health", S1, "https://x/", 0, err, sizeof err),
                     PHG_ERR_NOT_FOUND);
    assert_int_equal(add(f, "s", "STRIPE", S1, "https://x/", 0, err, sizeof err),
                     PHG_ERR_NOT_FOUND);

    for (i = 0; urls[i] != NULL; i++)
        assert_int_equal(add(f, "s", "stripe", S1, urls[i], 0, err, sizeof err), PHG_ERR_INVALID);
    memcpy(longurl, "https://", 8);
    memset(longurl + 8, 'a', 2045);
    longurl[2053] = '\0';
    assert_int_equal(add(f, "s", "stripe", S1, longurl, 0, err, sizeof err), PHG_ERR_INVALID);

    assert_int_equal(add(f, "s", "stripe", S1, "https://x/", -1, err, sizeof err), PHG_ERR_INVALID);
    assert_int_equal(add(f, "s", "stripe", S1, "https://x/", 86401, err, sizeof err),
                     PHG_ERR_INVALID);

    /* secrets: too short, malformed, not of the scheme, empty, one bad of two */
    assert_int_equal(
        add(f, "s", "standard-webhooks", "whsec_AAAA", "https://x/", 0, err, sizeof err),
        PHG_ERR_INVALID);
    assert_null(strstr(err, "AAAA"));
    assert_int_equal(
        add(f, "s", "standard-webhooks", "whsec_!!notbase64!!", "https://x/", 0, err, sizeof err),
        PHG_ERR_INVALID);
    assert_int_equal(add(f, "s", "oura", "short", "https://x/", 0, err, sizeof err),
                     PHG_ERR_INVALID);
    assert_int_equal(add(f, "s", "oura", "   \n", "https://x/", 0, err, sizeof err),
                     PHG_ERR_INVALID);
    assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &spec, err, sizeof err),
                     PHG_ERR_INVALID);
    assert_non_null(strstr(err, "secret 1"));
    assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &none, err, sizeof err),
                     PHG_ERR_INVALID);
    assert_int_equal(phg_webhook_sources_add(f->st, NULL, &spec, err, sizeof err),
                     PHG_ERR_MASTER_KEY);

    /* nothing refused was stored */
    assert_int_equal(phg_webhook_sources_list(f->st, &infos, &n), PHG_OK);
    assert_int_equal(n, 1);
    phg_webhook_source_infos_free(infos, n);
    assert_int_equal(tdb_query_int(&f->db, "SELECT count(*) FROM webhook_secrets", err, sizeof err),
                     1);
}

#define OURA_SECRET "oura_client_secret_0123456789abcd"
#define VT1 "vt-Fq8.Zr_41~xK!"
#define VT2 "second#TOKEN$9"

/* How many rows of webhook_sources hold text in verify_token_enc. */
static long long raw_holds(fx *f, const char *text)
{
    char sql[256], err[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM webhook_sources WHERE %s(verify_token_enc, '%s') > 0",
             f->db.engine == TDB_SQLITE ? "instr" : "strpos", text);
    return tdb_query_int(&f->db, sql, err, sizeof err);
}

static long long query(fx *f, const char *sql)
{
    char err[256];
    return tdb_query_int(&f->db, sql, err, sizeof err);
}

static void test_verify_token(void **state)
{
    fx *f = *state;
    phg_webhook_secret s = {OURA_SECRET, strlen(OURA_SECRET), 0};
    phg_webhook_secret s2 = {OURA_SECRET "2", strlen(OURA_SECRET) + 1, 0};
    phg_webhook_source_spec spec = {
        "ring", "oura", 0, "https://up.example/oura", &s, 1, " \t" VT1 "\r\n", strlen(VT1) + 4};
    phg_webhook_source_info *info = NULL, *infos = NULL;
    phg_masterkeys *both = NULL;
    long long v0, v1, c0, c1;
    char err[256];
    int64_t idx = -1;
    size_t n = 0;

    assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &spec, err, sizeof err), PHG_OK);
    /* another source without one */
    assert_int_equal(add(f, "plain", "oura", OURA_SECRET, "https://x/", 0, err, sizeof err),
                     PHG_OK);

    /* decrypted (trimmed) with the master keys only */
    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    assert_true(info->has_verify_token);
    assert_non_null(info->verify_token);
    assert_int_equal(info->verify_token_len, strlen(VT1));
    assert_string_equal(info->verify_token, VT1);
    assert_int_equal(info->n_active, 1);
    phg_webhook_source_info_free(info);
    assert_int_equal(phg_webhook_sources_get(f->st, NULL, "ring", &info), PHG_OK);
    assert_true(info->has_verify_token);
    assert_null(info->verify_token);
    assert_int_equal(info->verify_token_len, 0);
    phg_webhook_source_info_free(info);
    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "plain", &info), PHG_OK);
    assert_false(info->has_verify_token);
    assert_null(info->verify_token);
    phg_webhook_source_info_free(info);
    assert_int_equal(phg_webhook_sources_list(f->st, &infos, &n), PHG_OK);
    assert_int_equal(n, 2);
    assert_false(infos[0].has_verify_token); /* plain */
    assert_true(infos[1].has_verify_token);  /* ring */
    assert_null(infos[1].verify_token);
    phg_webhook_source_infos_free(infos, n);

    /* encrypted at rest: a Fernet token, not the text */
    assert_int_equal(raw_holds(f, "Fq8.Zr_41"), 0);
    assert_int_equal(query(f, "SELECT count(*) FROM webhook_sources WHERE "
                              "verify_token_enc LIKE 'gAAAAA%'"),
                     1);
    assert_int_equal(query(f, "SELECT count(*) FROM webhook_sources WHERE name = 'plain' AND "
                              "verify_token_enc = ''"),
                     1);
    /* a rotated master-key list still opens it */
    assert_int_equal(phg_phi_masterkeys_parse(MK2 "," MK1, strlen(MK2 "," MK1), &both), PHG_OK);
    assert_int_equal(phg_webhook_sources_get(f->st, both, "ring", &info), PHG_OK);
    assert_string_equal(info->verify_token, VT1);
    phg_webhook_source_info_free(info);

    /* set: replaces it, and bumps the change counter into the version */
    v0 = query(f, "SELECT version FROM webhook_sources WHERE name = 'ring'");
    c0 = query(f, "SELECT counter FROM phigate_changes");
    assert_int_equal(phg_webhook_sources_set_verify_token(f->st, both, "ring", VT2 "\n",
                                                          strlen(VT2) + 1, err, sizeof err),
                     PHG_OK);
    v1 = query(f, "SELECT version FROM webhook_sources WHERE name = 'ring'");
    c1 = query(f, "SELECT counter FROM phigate_changes");
    assert_true(c1 > c0);
    assert_true(v1 > v0);
    assert_int_equal(v1, c1);
    assert_int_equal(raw_holds(f, "TOKEN"), 0);
    /* made under the first key of the list: MK2 alone opens it */
    phg_phi_masterkeys_free(both);
    both = NULL;
    assert_int_equal(phg_phi_masterkeys_parse(MK2, strlen(MK2), &both), PHG_OK);
    assert_int_equal(phg_webhook_sources_get(f->st, both, "ring", &info), PHG_ERR_MASTER_KEY);
    assert_null(info);
    phg_phi_masterkeys_free(both);
    both = NULL;
    /* put it back under MK1, then set it on a source of another scheme too */
    assert_int_equal(phg_webhook_sources_set_verify_token(f->st, f->mk, "ring", VT2, strlen(VT2),
                                                          err, sizeof err),
                     PHG_OK);
    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    assert_string_equal(info->verify_token, VT2);
    assert_int_equal(info->verify_token_len, strlen(VT2));
    assert_int_equal(info->n_active, 1);
    assert_memory_equal(info->active[0].text, OURA_SECRET, strlen(OURA_SECRET));
    phg_webhook_source_info_free(info);
    assert_int_equal(add(f, "sw", "standard-webhooks", S1, "https://x/", 0, err, sizeof err),
                     PHG_OK);
    assert_int_equal(
        phg_webhook_sources_set_verify_token(f->st, f->mk, "sw", VT1, strlen(VT1), err, sizeof err),
        PHG_OK);

    /* the secrets go on unaffected: add one, retire the old one */
    assert_int_equal(
        phg_webhook_sources_add_secret(f->st, f->mk, "ring", &s2, &idx, err, sizeof err), PHG_OK);
    assert_int_equal(phg_webhook_sources_retire_secret(f->st, "ring", 0), PHG_OK);
    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    assert_string_equal(info->verify_token, VT2);
    assert_int_equal(info->n_active, 1);
    assert_int_equal(info->active_index[0], 1);
    phg_webhook_source_info_free(info);

    /* clear (no master key needed), twice */
    v0 = query(f, "SELECT version FROM webhook_sources WHERE name = 'ring'");
    assert_int_equal(
        phg_webhook_sources_set_verify_token(f->st, NULL, "ring", NULL, 0, err, sizeof err),
        PHG_OK);
    assert_true(query(f, "SELECT version FROM webhook_sources WHERE name = 'ring'") > v0);
    assert_int_equal(
        phg_webhook_sources_set_verify_token(f->st, NULL, "ring", NULL, 0, err, sizeof err),
        PHG_OK);
    assert_int_equal(query(f, "SELECT count(*) FROM webhook_sources WHERE name = 'ring' AND "
                              "verify_token_enc = ''"),
                     1);
    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    assert_false(info->has_verify_token);
    assert_null(info->verify_token);
    assert_int_equal(info->n_active, 1);
    assert_int_equal(info->n_secrets, 2);
    phg_webhook_source_info_free(info);

    /* unknown sources */
    c0 = query(f, "SELECT counter FROM phigate_changes");
    assert_int_equal(phg_webhook_sources_set_verify_token(f->st, f->mk, "nope", VT1, strlen(VT1),
                                                          err, sizeof err),
                     PHG_ERR_NOT_FOUND);
    assert_non_null(strstr(err, "no such source"));
    assert_int_equal(
        phg_webhook_sources_set_verify_token(f->st, NULL, "nope", NULL, 0, err, sizeof err),
        PHG_ERR_NOT_FOUND);
    assert_int_equal(phg_webhook_sources_set_verify_token(f->st, f->mk, "Bad Name", VT1,
                                                          strlen(VT1), err, sizeof err),
                     PHG_ERR_NOT_FOUND);
    assert_int_equal(query(f, "SELECT counter FROM phigate_changes"), c0);
    /* setting needs a master key */
    assert_int_equal(phg_webhook_sources_set_verify_token(f->st, NULL, "ring", VT1, strlen(VT1),
                                                          err, sizeof err),
                     PHG_ERR_MASTER_KEY);
    /* ring is still clear; only sw has one */
    assert_int_equal(query(f, "SELECT count(*) FROM webhook_sources WHERE verify_token_enc <> ''"),
                     1);
}

static void test_verify_token_refused(void **state)
{
    fx *f = *state;
    phg_webhook_secret s = {OURA_SECRET, strlen(OURA_SECRET), 0};
    phg_webhook_source_spec spec = {"ring", "oura", 0, "https://up.example/oura", &s, 1, NULL, 0};
    phg_webhook_source_info *info = NULL;
    char long_ok[PHG_WEBHOOK_VERIFY_TOKEN_MAX + 1], too_long[PHG_WEBHOOK_VERIFY_TOKEN_MAX + 2];
    struct {
        const char *text;
        size_t len;
    } bad[] = {
        {"", 0},                         /* given, empty */
        {" \t\r\n ", 5},                 /* only whitespace */
        {"SEKRIT has space", 16},        /* a space inside */
        {"SEKRIT\ttab", 10},             /* a control byte */
        {"SEKRIT\x7f", 7},               /* DEL */
        {"SEKRIT\xc3\xa9", 8},           /* not ASCII */
        {"SEKRIT\0NUL", 10},             /* a NUL inside */
        {too_long, sizeof too_long - 1}, /* 513 bytes */
    };
    char err[256];
    size_t i;

    memset(long_ok, 'K', sizeof long_ok - 1);
    long_ok[sizeof long_ok - 1] = '\0';
    memset(too_long, 'K', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &spec, err, sizeof err), PHG_OK);

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        phg_webhook_source_spec sp = spec;
        sp.name = "other";
        sp.verify_token = bad[i].text;
        sp.verify_token_len = bad[i].len;
        err[0] = '\0';
        if (bad[i].len > 0) {
            assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &sp, err, sizeof err),
                             PHG_ERR_INVALID);
            assert_non_null(strstr(err, "verify_token"));
            assert_null(strstr(err, "SEKRIT"));
            assert_null(strstr(err, "KKKK"));
        }
        err[0] = '\0';
        assert_int_equal(phg_webhook_sources_set_verify_token(f->st, f->mk, "ring", bad[i].text,
                                                              bad[i].len, err, sizeof err),
                         PHG_ERR_INVALID);
        assert_non_null(strstr(err, "verify_token"));
        assert_null(strstr(err, "SEKRIT"));
        assert_null(strstr(err, "KKKK"));
    }
    /* NULL / 0 in a spec: none */
    {
        phg_webhook_source_spec sp = spec;
        sp.name = "none1";
        sp.verify_token = VT1;
        sp.verify_token_len = 0;
        assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &sp, err, sizeof err), PHG_OK);
        assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "none1", &info), PHG_OK);
        assert_false(info->has_verify_token);
        phg_webhook_source_info_free(info);
    }
    /* nothing refused was stored */
    assert_int_equal(query(f, "SELECT count(*) FROM webhook_sources WHERE name = 'other'"), 0);
    assert_int_equal(query(f, "SELECT count(*) FROM webhook_sources WHERE verify_token_enc <> ''"),
                     0);

    /* 512 bytes is the most */
    assert_int_equal(phg_webhook_sources_set_verify_token(f->st, f->mk, "ring", long_ok,
                                                          strlen(long_ok), err, sizeof err),
                     PHG_OK);
    assert_int_equal(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    assert_int_equal(info->verify_token_len, PHG_WEBHOOK_VERIFY_TOKEN_MAX);
    assert_memory_equal(info->verify_token, long_ok, PHG_WEBHOOK_VERIFY_TOKEN_MAX);
    phg_webhook_source_info_free(info);
    /* and the same in a spec */
    {
        phg_webhook_source_spec sp = spec;
        sp.name = "long";
        sp.verify_token = long_ok;
        sp.verify_token_len = strlen(long_ok);
        assert_int_equal(phg_webhook_sources_add(f->st, f->mk, &sp, err, sizeof err), PHG_OK);
    }
}

#define T(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_add_list_get_remove),   T(test_encrypted_at_rest),
        T(test_add_and_retire_secret), T(test_refused),
        T(test_verify_token),          T(test_verify_token_refused),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("webhook_store/sqlite", tests, tdb_group_sqlite, NULL);
    failed +=
        cmocka_run_group_tests_name("webhook_store/postgres", tests, tdb_group_postgres, NULL);
    return failed != 0;
}
