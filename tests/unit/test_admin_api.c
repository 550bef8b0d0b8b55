/*
 * tests/unit/test_admin_api.c: the admin API (src/server/admin_api.c,
 * gw_admin_handle in gw.h) against its contract in docs/api.md and
 * src/server/openapi.json, on a real store: every endpoint's success and
 * its errors; ids and filters checked before the store (path traversal,
 * SQL-injection strings); wrong methods; unknown query parameters; the
 * destroy confirmation; a user-role key refused; fail-closed behaviour when
 * the audit log cannot record a key change (the new key is revoked); a
 * keyring that cannot be saved, or that another instance changed; and that no
 * key text ever reaches call->audit_details. Rate limits: a key's usage read
 * from the local engine and from a real redis-server (started by
 * tests/redis_server.sh), reset, setting and clearing a key's limit (bad
 * limits refused with the library's reason, an unaudited change undone),
 * and the violations report summed from ratelimit.violation records.
 *
 * The calls are built by hand (gw_call) the way server.c builds them. Every
 * test runs on SQLite and on PostgreSQL (testdb.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "gw.h"
#include "phigate/crypto.h"
#include "phigate/webhook_store.h"
#include "testdb.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define ENG tdb_engine_name(g_engine)

#define EXPECT_RC(got, want)                                                                       \
    do {                                                                                           \
        phg_status got_ = (got), want_ = (want);                                                   \
        EXPECT(got_ == want_, "[%s] %s: got %s, want %s", ENG, #got, phg_status_name(got_),        \
               phg_status_name(want_));                                                            \
    } while (0)

#define ADMIN_KEY_ID "ak_admintest00000001"

/* ---- fixture --------------------------------------------------------------------------- */

typedef struct fx {
    testdb db;
    phg_store *st;
    phg_masterkeys *mk;
    phg_keys *keys;
    phg_audit *audit;
    phg_keyring *kr;
    uint8_t cp_key[32];
    gw_admin_ctx ctx;
    phg_identity admin, user;
    phg_ratelimit *rl; /* the rate-limit tests only (setup_rl) */
    gw_config *cfg;
    char redis_dir[64]; /* a redis-server of test_rl_redis, stopped by teardown_rl */
    /* the webhook tests only (setup_wh) */
    phg_wh_inbox *inbox;
} fx;

static json_t *config_cb(void *arg)
{
    (void)arg;
    return json_pack("{s:{s:s,s:i},s:{s:s}}", "server", "listen_host", "127.0.0.1", "listen_port",
                     8080, "store", "url", "sqlite:/tmp/x.db");
}

static void save_keyring(fx *f, phg_keyring *kr)
{
    char *text = NULL;
    size_t len = 0;
    EXPECT_RC(phg_keyring_to_json(kr, &text, &len), PHG_OK);
    EXPECT_RC(phg_store_keyring_put(f->st, text, len), PHG_OK);
    free(text);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char err[PHG_STORE_ERR_MAX] = "", mktext[PHG_FERNET_KEY_TEXT_LEN + 1];
    phg_keys_options ko;
    phg_audit_options ao;
    phg_request_context rc;

    if (f == NULL)
        return -1;
    *state = f;
    tdb_create(&f->db, g_engine, "admin");
    EXPECT_RC(tdb_open_store(&f->db, 4, &f->st, err, sizeof err), PHG_OK);
    EXPECT(phg_store_migrate(f->st, NULL, NULL, err, sizeof err) == PHG_OK, "migrate: %s", err);
    EXPECT_RC(phg_fernet_key_generate(mktext), PHG_OK);
    EXPECT_RC(phg_phi_masterkeys_parse(mktext, strlen(mktext), &f->mk), PHG_OK);
    EXPECT_RC(phg_audit_checkpoint_key(f->mk, f->cp_key), PHG_OK);
    phg_audit_options_init(&ao);
    ao.chain = "gw-test";
    EXPECT_RC(phg_audit_open(f->st, &ao, f->cp_key, &f->audit), PHG_OK);
    phg_keys_options_init(&ko);
    ko.start_poller = 0;
    EXPECT_RC(phg_keys_open(f->st, &ko, &f->keys), PHG_OK);
    phg_keys_set_audit(f->keys, f->audit);
    EXPECT_RC(phg_keyring_create(f->mk, NULL, &f->kr), PHG_OK);
    phg_keyring_set_audit(f->kr, f->audit);
    save_keyring(f, f->kr);

    f->ctx.store = f->st;
    f->ctx.keys = f->keys;
    f->ctx.audit = f->audit;
    f->ctx.keyring = f->kr;
    f->ctx.mk = f->mk;
    f->ctx.checkpoint_key = f->cp_key;
    f->ctx.config_json = config_cb;
    f->ctx.config_arg = NULL;

    snprintf(f->admin.key_id, sizeof f->admin.key_id, ADMIN_KEY_ID);
    snprintf(f->admin.user_id, sizeof f->admin.user_id, "root");
    f->admin.role = PHG_ROLE_ADMIN;
    f->admin.scopes = PHG_SCOPE_ALL;
    snprintf(f->user.key_id, sizeof f->user.key_id, "ak_usertest000000001");
    snprintf(f->user.user_id, sizeof f->user.user_id, "42");
    f->user.role = PHG_ROLE_USER;
    f->user.scopes = PHG_SCOPE_ALL;

    /* What server.c sets before calling the handler. */
    memset(&rc, 0, sizeof rc);
    snprintf(rc.request_id, sizeof rc.request_id, "01JD8X3Q4ZK5M6N7P8R9S0T1V2");
    snprintf(rc.key_id, sizeof rc.key_id, ADMIN_KEY_ID);
    snprintf(rc.user_id, sizeof rc.user_id, "root");
    snprintf(rc.role, sizeof rc.role, "admin");
    phg_request_context_set(&rc);
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f == NULL)
        return 0;
    phg_request_context_set(NULL);
    phg_keys_close(f->keys);
    phg_keyring_free(f->kr);
    phg_audit_close(f->audit);
    phg_phi_masterkeys_free(f->mk);
    phg_store_close(f->st);
    tdb_drop(&f->db);
    free(f);
    return 0;
}

/* ---- calls ----------------------------------------------------------------------------- */

/* Invariants of every reply: an error has no result and a code; a success a
 * result and no code; audit_details never holds a key text. */
static void check_reply(const gw_call *c)
{
    if (c->status >= 400) {
        EXPECT(c->result == NULL, "%s %s: error %d with a result", c->method, c->path, c->status);
        EXPECT(c->err_code[0] != '\0' && c->err_msg[0] != '\0', "%s %s: error without code",
               c->method, c->path);
        EXPECT(strstr(c->err_msg, "phg_") == NULL, "a key text in a message: %s", c->err_msg);
    } else {
        EXPECT(c->status >= 200 && c->status < 300, "%s %s: status %d", c->method, c->path,
               c->status);
        EXPECT(c->result != NULL, "%s %s: success without a result", c->method, c->path);
    }
    if (c->audit_details != NULL) {
        char *text = json_dumps(c->audit_details, JSON_COMPACT);
        EXPECT(json_is_object(c->audit_details), "audit_details not an object");
        EXPECT(text != NULL && strstr(text, "phg_") == NULL, "key text in audit_details: %s",
               text ? text : "?");
        free(text);
    }
}

static void call_as(fx *f, gw_call *c, const phg_identity *id, const char *method, const char *path,
                    const char *query, const char *body)
{
    memset(c, 0, sizeof *c);
    c->method = method;
    c->path = path;
    c->query = query;
    c->body = body;
    c->body_len = body != NULL ? strlen(body) : 0;
    c->content_type = body != NULL ? "application/json" : NULL;
    c->id = id;
    c->request_id = "01JD8X3Q4ZK5M6N7P8R9S0T1V2";
    c->ip = "127.0.0.1";
    gw_admin_handle(&f->ctx, c);
    check_reply(c);
}

static void call(fx *f, gw_call *c, const char *method, const char *path, const char *query,
                 const char *body)
{
    call_as(f, c, &f->admin, method, path, query, body);
}

static void done(gw_call *c)
{
    json_decref(c->result);
    json_decref(c->audit_details);
    c->result = NULL;
    c->audit_details = NULL;
}

static void expect_status(gw_call *c, int status, const char *code)
{
    EXPECT(c->status == status, "[%s] %s %s?%s: status %d (%s: %s), want %d %s", ENG, c->method,
           c->path, c->query ? c->query : "", c->status, c->err_code, c->err_msg, status,
           code ? code : "");
    if (code != NULL)
        EXPECT(strcmp(c->err_code, code) == 0, "[%s] %s %s: code %s, want %s", ENG, c->method,
               c->path, c->err_code, code);
}

/* One call that must fail with status/code (and message containing `word`). */
static void expect_fail(fx *f, const char *method, const char *path, const char *query,
                        const char *body, int status, const char *code, const char *word)
{
    gw_call c;
    call(f, &c, method, path, query, body);
    expect_status(&c, status, code);
    if (word != NULL)
        EXPECT(strstr(c.err_msg, word) != NULL, "[%s] %s %s?%s: message \"%s\" lacks \"%s\"", ENG,
               method, path, query ? query : "", c.err_msg, word);
    done(&c);
}

static const char *str_of(json_t *o, const char *name)
{
    const char *s = json_string_value(json_object_get(o, name));
    EXPECT(s != NULL, "member %s missing or not a string", name);
    return s;
}

/* Create a key through the API; its id (and text, if key is given). */
static void create_key(fx *f, const char *body, char id[PHG_APIKEY_ID_MAX + 1],
                       char key[PHG_APIKEY_LEN + 1])
{
    gw_call c;
    call(f, &c, "POST", "/admin/keys", NULL, body);
    expect_status(&c, 201, NULL);
    snprintf(id, PHG_APIKEY_ID_MAX + 1, "%s", str_of(json_object_get(c.result, "record"), "id"));
    if (key != NULL)
        snprintf(key, PHG_APIKEY_LEN + 1, "%s", str_of(c.result, "key"));
    done(&c);
}

static int verifies(fx *f, const char *key)
{
    phg_identity id;
    phg_apikey_reason why;
    phg_status st = phg_keys_verify(f->keys, key, strlen(key), &id, &why);
    return st == PHG_OK && why == PHG_APIKEY_VALID;
}

/* Make the audit log refuse records (and let it take them again). */
static void audit_block(fx *f, int on)
{
    char err[512];
    const char *sql;
    if (f->db.engine == TDB_SQLITE)
        sql = on ? "CREATE TRIGGER blk_i BEFORE INSERT ON audit_chains BEGIN SELECT "
                   "RAISE(ABORT, 'blocked'); END; CREATE TRIGGER blk_u BEFORE UPDATE ON "
                   "audit_chains BEGIN SELECT RAISE(ABORT, 'blocked'); END;"
                 : "DROP TRIGGER blk_i; DROP TRIGGER blk_u;";
    else
        sql = on ? "CREATE FUNCTION blk() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                   "'blocked'; END $$ LANGUAGE plpgsql; CREATE TRIGGER blk BEFORE INSERT OR "
                   "UPDATE ON audit_chains FOR EACH ROW EXECUTE FUNCTION blk();"
                 : "DROP TRIGGER blk ON audit_chains; DROP FUNCTION blk();";
    EXPECT(tdb_exec(&f->db, sql, err, sizeof err) == 0, "[%s] %s: %s", ENG, sql, err);
}

/* Make the store refuse keyring writes. */
static void keyring_block(fx *f, int on)
{
    char err[512];
    const char *sql;
    if (f->db.engine == TDB_SQLITE)
        sql = on ? "CREATE TRIGGER kblk_i BEFORE INSERT ON phi_keyring BEGIN SELECT "
                   "RAISE(ABORT, 'blocked'); END; CREATE TRIGGER kblk_u BEFORE UPDATE ON "
                   "phi_keyring BEGIN SELECT RAISE(ABORT, 'blocked'); END;"
                 : "DROP TRIGGER kblk_i; DROP TRIGGER kblk_u;";
    else
        sql = on ? "CREATE FUNCTION kblk() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                   "'blocked'; END $$ LANGUAGE plpgsql; CREATE TRIGGER kblk BEFORE INSERT OR "
                   "UPDATE ON phi_keyring FOR EACH ROW EXECUTE FUNCTION kblk();"
                 : "DROP TRIGGER kblk ON phi_keyring; DROP FUNCTION kblk();";
    EXPECT(tdb_exec(&f->db, sql, err, sizeof err) == 0, "[%s] %s: %s", ENG, sql, err);
}

/* ---- role, routing, methods ------------------------------------------------------------ */

static void test_user_role_refused(void **state)
{
    fx *f = *state;
    gw_call c;
    call_as(f, &c, &f->user, "GET", "/admin/keys", NULL, NULL);
    expect_status(&c, 403, "forbidden");
    done(&c);
    call_as(f, &c, &f->user, "POST", "/admin/phi/keys/rotate", NULL, NULL);
    expect_status(&c, 403, "forbidden");
    done(&c);
    call_as(f, &c, NULL, "GET", "/admin/config", NULL, NULL);
    expect_status(&c, 403, "forbidden");
    done(&c);
    /* Nothing was rotated by the refused call. */
    EXPECT(phg_keyring_count(f->kr) == 1, "keyring changed by a user key");
}

static void test_not_found(void **state)
{
    fx *f = *state;
    static const char *const paths[] = {
        "/admin/",
        "/admin/nope",
        "/admin/keys/",
        "/admin//keys",
        "/admin/keys/../../etc",
        "/admin/keys/ak_abc/../../etc",
        "/admin/keys/ak_abc/delete",
        "/admin/phi/keys/../../../etc/passwd",
        "/admin/audit/x",
        "/admin/phi",
        "/admin/phi/keys/abc",
        "/admin/phi/keys/abc/destroy/now",
        "/admin/a/b/c/d/e/f/g/h",
        "/adminkeys",
        "/v1/admin/keys",
        "/admin/./keys",
        "/admin/openapi.json/x",
    };
    size_t i;
    for (i = 0; i < sizeof paths / sizeof paths[0]; i++)
        expect_fail(f, "GET", paths[i], NULL, NULL, 404, "not_found", NULL);
    /* A traversal that lands on a key id position is a 400, before any lookup. */
    expect_fail(f, "GET", "/admin/keys/..", NULL, NULL, 400, "invalid_parameter", "key id");
    expect_fail(f, "POST", "/admin/keys/../rotate", NULL, NULL, 400, "invalid_parameter", "key id");
    expect_fail(f, "POST", "/admin/phi/keys/../destroy", NULL, "{}", 400, "invalid_parameter",
                "kid");
}

static void test_wrong_methods(void **state)
{
    fx *f = *state;
    static const struct {
        const char *method, *path;
    } cases[] = {
        {"POST", "/admin/openapi.json"},
        {"PUT", "/admin/config"},
        {"DELETE", "/admin/keys"},
        {"PATCH", "/admin/keys"},
        {"DELETE", "/admin/keys/ak_abc"},
        {"POST", "/admin/keys/ak_abc"},
        {"GET", "/admin/keys/ak_abc/rotate"},
        {"GET", "/admin/keys/ak_abc/revoke"},
        {"POST", "/admin/audit"},
        {"DELETE", "/admin/audit/report"},
        {"POST", "/admin/audit/verify"},
        {"POST", "/admin/phi/keys"},
        {"GET", "/admin/phi/keys/rotate"},
        {"GET", "/admin/phi/keys/abc/destroy"},
        {"DELETE", "/admin/phi/keys/abc/destroy"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_fail(f, cases[i].method, cases[i].path, NULL, NULL, 405, "method_not_allowed", NULL);
}

/* ---- openapi, config -------------------------------------------------------------------- */

static void test_openapi_and_config(void **state)
{
    fx *f = *state;
    static const char *const admin_paths[] = {
        "/admin/openapi.json",
        "/admin/config",
        "/admin/keys",
        "/admin/keys/{id}",
        "/admin/keys/{id}/rotate",
        "/admin/keys/{id}/revoke",
        "/admin/audit",
        "/admin/audit/report",
        "/admin/audit/verify",
        "/admin/phi/keys",
        "/admin/phi/keys/rotate",
        "/admin/phi/keys/{kid}/destroy",
        "/v1/phi/encrypt",
        "/v1/phi/decrypt",
        "/v1/phi/rewrap",
        "/healthz",
        "/readyz",
        "/metrics",
    };
    json_t *want;
    gw_call c;
    size_t i;

    call(f, &c, "GET", "/admin/openapi.json", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "openapi"), "3.1.0") == 0, "not OpenAPI 3.1");
    for (i = 0; i < sizeof admin_paths / sizeof admin_paths[0]; i++)
        EXPECT(json_object_get(json_object_get(c.result, "paths"), admin_paths[i]) != NULL,
               "the OpenAPI document lacks %s", admin_paths[i]);
    EXPECT(json_object_get(json_object_get(json_object_get(c.result, "components"), "schemas"),
                           "Error") != NULL,
           "no Error schema");
    EXPECT(strcmp(c.action, "admin.openapi.get") == 0, "action %s", c.action);
    done(&c);

    call(f, &c, "GET", "/admin/config", NULL, NULL);
    expect_status(&c, 200, NULL);
    want = config_cb(NULL);
    EXPECT(json_equal(c.result, want), "config is not the callback's");
    json_decref(want);
    EXPECT(strcmp(c.action, "admin.config.get") == 0 && strcmp(c.resource, "config") == 0,
           "action %s resource %s", c.action, c.resource);
    done(&c);

    expect_fail(f, "GET", "/admin/config", "verbose=1", NULL, 400, "invalid_parameter", "verbose");
    f->ctx.config_json = NULL;
    expect_fail(f, "GET", "/admin/config", NULL, NULL, 503, "unavailable", NULL);
    f->ctx.config_json = config_cb;
}

/* ---- keys ----------------------------------------------------------------------------- */

static void test_keys_create_get(void **state)
{
    fx *f = *state;
    char body[512], expires[32], id[PHG_APIKEY_ID_MAX + 1], key[PHG_APIKEY_LEN + 1], path[128];
    time_t later = time(NULL) + 86400 * 30;
    struct tm tm;
    json_t *rec, *scopes;
    gw_call c;

    gmtime_r(&later, &tm);
    strftime(expires, sizeof expires, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(body, sizeof body,
             "{\"role\":\"user\",\"user_id\":\"42\",\"scopes\":[\"phi:encrypt\",\"phi:decrypt\"],"
             "\"description\":\"sync service\",\"rate_limit\":\"100/1m\",\"expires_at\":\"%s\"}",
             expires);
    call(f, &c, "POST", "/admin/keys", NULL, body);
    expect_status(&c, 201, NULL);
    snprintf(key, sizeof key, "%s", str_of(c.result, "key"));
    EXPECT(phg_apikey_check_format(key, strlen(key)) == PHG_APIKEY_VALID, "not a key: shape");
    rec = json_object_get(c.result, "record");
    snprintf(id, sizeof id, "%s", str_of(rec, "id"));
    EXPECT(strcmp(str_of(rec, "role"), "user") == 0, "role");
    EXPECT(strcmp(str_of(rec, "user_id"), "42") == 0, "user_id");
    EXPECT(strcmp(str_of(rec, "created_by"), "key:" ADMIN_KEY_ID) == 0, "created_by %s",
           str_of(rec, "created_by"));
    EXPECT(strcmp(str_of(rec, "description"), "sync service") == 0, "description");
    EXPECT(strcmp(str_of(rec, "rate_limit"), "100/1m") == 0, "rate_limit");
    EXPECT(strcmp(str_of(rec, "expires_at"), expires) == 0, "expires_at %s",
           str_of(rec, "expires_at"));
    EXPECT(strcmp(str_of(rec, "state"), "active") == 0, "state");
    EXPECT(json_is_null(json_object_get(rec, "revoked_at")) &&
               json_is_null(json_object_get(rec, "replaced_by")) &&
               json_is_null(json_object_get(rec, "last_used_at")),
           "fresh key has revoked_at/replaced_by/last_used_at");
    scopes = json_object_get(rec, "scopes");
    EXPECT(json_array_size(scopes) == 2 &&
               strcmp(json_string_value(json_array_get(scopes, 0)), "phi:encrypt") == 0 &&
               strcmp(json_string_value(json_array_get(scopes, 1)), "phi:decrypt") == 0,
           "scopes");
    EXPECT(json_object_get(rec, "hash") == NULL, "the hash is shown");
    EXPECT(strcmp(c.action, "admin.keys.create") == 0, "action %s", c.action);
    snprintf(path, sizeof path, "key:%s", id);
    EXPECT(strcmp(c.resource, path) == 0, "resource %s", c.resource);
    EXPECT(strcmp(str_of(c.audit_details, "key_id"), id) == 0, "details key_id");
    done(&c);
    EXPECT(verifies(f, key), "the key shown does not verify");

    snprintf(path, sizeof path, "/admin/keys/%s", id);
    call(f, &c, "GET", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "id"), id) == 0, "get: id");
    EXPECT(json_object_get(c.result, "key") == NULL, "get shows a key text");
    EXPECT(strcmp(c.action, "admin.keys.get") == 0, "action %s", c.action);
    done(&c);

    /* An admin key, no scopes, no optional member. */
    create_key(f, "{\"role\":\"admin\",\"user_id\":\"ops\"}", id, NULL);
    snprintf(path, sizeof path, "/admin/keys/%s", id);
    call(f, &c, "GET", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "role"), "admin") == 0, "role admin");
    EXPECT(json_array_size(json_object_get(c.result, "scopes")) == 0, "scopes not empty");
    EXPECT(json_is_null(json_object_get(c.result, "expires_at")), "expires_at not null");
    done(&c);

    /* Unknown, well-formed id. */
    expect_fail(f, "GET", "/admin/keys/ak_0000000000000000", NULL, NULL, 404, "not_found", NULL);
    phg_wipe(key, sizeof key);
}

static void test_keys_create_bad_input(void **state)
{
    fx *f = *state;
    static const struct {
        const char *body, *word;
    } cases[] = {
        {"{\"user_id\":\"42\"}", "role"},
        {"{\"role\":\"root\",\"user_id\":\"42\"}", "role"},
        {"{\"role\":1,\"user_id\":\"42\"}", "role"},
        {"{\"role\":\"user\"}", "user_id"},
        {"{\"role\":\"user\",\"user_id\":\"\"}", "user_id"},
        {"{\"role\":\"user\",\"user_id\":42}", "user_id"},
        {"{\"role\":\"user\",\"user_id\":\"a\\nb\"}", "user_id"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"scopes\":\"phi:encrypt\"}", "scopes"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"scopes\":[\"phi:everything\"]}", "scopes[0]"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"scopes\":[\"phi:encrypt\",\"phi:decrypt,"
         "keys:admin\"]}",
         "scopes[1]"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"scopes\":[1]}", "scopes[0]"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"admin\":true}", "admin"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"expires_at\":\"tomorrow\"}", "expires_at"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"expires_at\":\"2001-01-01T00:00:00Z\"}",
         "expires_at"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"expires_at\":\"2030-02-30T00:00:00Z\"}",
         "expires_at"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"description\":7}", "description"},
        {"{\"role\":\"user\",\"user_id\":\"42\",\"rate_limit\":\"lots\"}", "rate limit"},
        {"{\"role\":\"user\",\"user_id\":\"' OR 1=1--\",\"key_id\":\"x\"}", "key_id"},
    };
    char big[1024];
    size_t i;
    gw_call c;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_fail(f, "POST", "/admin/keys", NULL, cases[i].body, 400, "invalid_request",
                    cases[i].word);
    /* A description over 256 bytes. */
    memset(big, 'd', sizeof big);
    snprintf(big, sizeof big, "{\"role\":\"user\",\"user_id\":\"42\",\"description\":\"%0300d\"}",
             0);
    expect_fail(f, "POST", "/admin/keys", NULL, big, 400, "invalid_request", "description");
    expect_fail(f, "POST", "/admin/keys", NULL, "{\"role\":", 400, "invalid_json", NULL);
    expect_fail(f, "POST", "/admin/keys", NULL, "[1,2]", 400, "invalid_json", NULL);
    expect_fail(f, "POST", "/admin/keys", NULL, NULL, 415, "unsupported_media_type", NULL);
    expect_fail(f, "POST", "/admin/keys", "role=user", "{}", 400, "invalid_parameter", "role");
    /* Wrong content type. */
    memset(&c, 0, sizeof c);
    c.method = "POST";
    c.path = "/admin/keys";
    c.body = "{\"role\":\"user\",\"user_id\":\"42\"}";
    c.body_len = strlen(c.body);
    c.content_type = "text/plain";
    c.id = &f->admin;
    gw_admin_handle(&f->ctx, &c);
    check_reply(&c);
    expect_status(&c, 415, "unsupported_media_type");
    done(&c);
    /* A body over the admin limit. */
    {
        size_t n = (64u << 10) + 10;
        char *huge = malloc(n + 1);
        assert_non_null(huge);
        memset(huge, ' ', n);
        huge[0] = '{';
        huge[n - 1] = '}';
        huge[n] = '\0';
        expect_fail(f, "POST", "/admin/keys", NULL, huge, 413, "payload_too_large", NULL);
        free(huge);
    }
    /* None of that made a key. */
    {
        phg_apikey_record *recs = NULL;
        size_t n = 99;
        EXPECT_RC(phg_keys_list(f->keys, "", 10, &recs, &n), PHG_OK);
        EXPECT(n == 0, "a refused request made %zu keys", n);
        free(recs);
    }
}

static void test_keys_list(void **state)
{
    fx *f = *state;
    char ids[5][PHG_APIKEY_ID_MAX + 1], next[PHG_APIKEY_ID_MAX + 1], q[128];
    size_t i, seen = 0;
    gw_call c;

    for (i = 0; i < 5; i++)
        create_key(f, "{\"role\":\"user\",\"user_id\":\"u\"}", ids[i], NULL);
    call(f, &c, "GET", "/admin/keys", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_array_size(json_object_get(c.result, "keys")) == 5, "list: %zu keys",
           json_array_size(json_object_get(c.result, "keys")));
    EXPECT(json_is_null(json_object_get(c.result, "next")), "next on the only page");
    EXPECT(json_object_get(json_array_get(json_object_get(c.result, "keys"), 0), "key") == NULL,
           "a listed record has a key text");
    EXPECT(strcmp(c.action, "admin.keys.list") == 0, "action %s", c.action);
    done(&c);

    /* Pages of 2: 2, 2, 1; ordered by id, none twice. */
    next[0] = '\0';
    for (i = 0; i < 3; i++) {
        json_t *keys;
        size_t j;
        if (next[0])
            snprintf(q, sizeof q, "limit=2&after=%s", next);
        else
            snprintf(q, sizeof q, "limit=2");
        call(f, &c, "GET", "/admin/keys", q, NULL);
        expect_status(&c, 200, NULL);
        keys = json_object_get(c.result, "keys");
        EXPECT(json_array_size(keys) == (i < 2 ? 2u : 1u), "page %zu: %zu keys", i,
               json_array_size(keys));
        for (j = 0; j < json_array_size(keys); j++) {
            const char *id = str_of(json_array_get(keys, j), "id");
            EXPECT(next[0] == '\0' || strcmp(id, next) > 0, "page %zu not after %s", i, next);
            seen++;
        }
        if (i < 2)
            snprintf(next, sizeof next, "%s", str_of(c.result, "next"));
        else
            EXPECT(json_is_null(json_object_get(c.result, "next")), "next on the last page");
        done(&c);
    }
    EXPECT(seen == 5, "pages gave %zu keys", seen);

    /* Bad parameters: all 400 before the store. */
    expect_fail(f, "GET", "/admin/keys", "limit=0", NULL, 400, "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/keys", "limit=1001", NULL, 400, "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/keys", "limit=-1", NULL, 400, "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/keys", "limit=10abc", NULL, 400, "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/keys", "limit=99999999999999999999", NULL, 400,
                "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/keys", "after=%27%20OR%201%3D1--", NULL, 400, "invalid_parameter",
                "after");
    expect_fail(f, "GET", "/admin/keys", "after=ak_x%00y", NULL, 400, "invalid_parameter", "NUL");
    expect_fail(f, "GET", "/admin/keys", "after=AK_ABC", NULL, 400, "invalid_parameter", "after");
    expect_fail(f, "GET", "/admin/keys", "offset=3", NULL, 400, "invalid_parameter", "offset");
    expect_fail(f, "GET", "/admin/keys", "limit=1&limit=2", NULL, 400, "invalid_parameter",
                "more than once");
    expect_fail(f, "GET", "/admin/keys", "%3Cscript%3E=1", NULL, 400, "invalid_parameter",
                "unknown query parameter");
    {
        char longq[400];
        memset(longq, 0, sizeof longq);
        memcpy(longq, "after=ak_", 9);
        memset(longq + 9, 'a', 300);
        expect_fail(f, "GET", "/admin/keys", longq, NULL, 400, "invalid_parameter", "too long");
    }
    /* Empty parameters are as if absent. */
    call(f, &c, "GET", "/admin/keys", "after=&limit=", NULL);
    expect_status(&c, 200, NULL);
    done(&c);
}

static void test_keys_ids_checked(void **state)
{
    fx *f = *state;
    static const char *const bad[] = {
        "' OR 1=1--",
        "ak_' OR '1'='1",
        "ak_",
        "AK_abc",
        "ak_ABC",
        "ak_abc;DROP TABLE api_keys",
        "ak_abc def",
        "xk_abc",
        "ak_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "%00",
        "..",
        "ak_\xc3\xa9",
    };
    char path[256];
    size_t i;

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, "/admin/keys/%s", bad[i]);
        expect_fail(f, "GET", path, NULL, NULL, 400, "invalid_parameter", "key id");
        snprintf(path, sizeof path, "/admin/keys/%s/revoke", bad[i]);
        expect_fail(f, "POST", path, NULL, NULL, 400, "invalid_parameter", "key id");
        snprintf(path, sizeof path, "/admin/keys/%s/rotate", bad[i]);
        expect_fail(f, "POST", path, NULL, NULL, 400, "invalid_parameter", "key id");
    }
    /* The table is still there and holds nothing: no injected SQL ran. */
    {
        phg_apikey_record *recs = NULL;
        size_t n = 99;
        EXPECT_RC(phg_keys_list(f->keys, "", 10, &recs, &n), PHG_OK);
        EXPECT(n == 0, "%zu keys", n);
        free(recs);
    }
}

static void test_keys_rotate_revoke(void **state)
{
    fx *f = *state;
    char id[PHG_APIKEY_ID_MAX + 1], key[PHG_APIKEY_LEN + 1], id2[PHG_APIKEY_ID_MAX + 1],
        key2[PHG_APIKEY_LEN + 1], path[128];
    json_t *prev;
    gw_call c;
    int64_t now = (int64_t)time(NULL);

    create_key(f, "{\"role\":\"user\",\"user_id\":\"42\",\"scopes\":[\"phi:encrypt\"]}", id, key);
    snprintf(path, sizeof path, "/admin/keys/%s/rotate", id);
    /* Bad grace values first: nothing happens. */
    expect_fail(f, "POST", path, NULL, "{\"grace_seconds\":-1}", 400, "invalid_request",
                "grace_seconds");
    expect_fail(f, "POST", path, NULL, "{\"grace_seconds\":2592001}", 400, "invalid_request",
                "grace_seconds");
    expect_fail(f, "POST", path, NULL, "{\"grace_seconds\":\"1d\"}", 400, "invalid_request",
                "grace_seconds");
    expect_fail(f, "POST", path, NULL, "{\"grace\":10}", 400, "invalid_request", "grace");
    expect_fail(f, "POST", path, NULL, "nope", 400, "invalid_json", NULL);

    /* No body: the default grace (one day). */
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 201, NULL);
    snprintf(key2, sizeof key2, "%s", str_of(c.result, "key"));
    snprintf(id2, sizeof id2, "%s", str_of(json_object_get(c.result, "record"), "id"));
    EXPECT(strcmp(id2, id) != 0, "rotation kept the id");
    EXPECT(json_array_size(json_object_get(json_object_get(c.result, "record"), "scopes")) == 1,
           "scopes not carried over");
    prev = json_object_get(c.result, "previous");
    EXPECT(strcmp(str_of(prev, "replaced_by"), id2) == 0, "previous.replaced_by");
    EXPECT(strcmp(str_of(prev, "state"), "rotating") == 0, "previous.state %s",
           str_of(prev, "state"));
    {
        char lo[32], hi[32];
        time_t a = (time_t)(now + 86400), b = (time_t)(now + 86400 + 60);
        struct tm tm;
        gmtime_r(&a, &tm);
        strftime(lo, sizeof lo, "%Y-%m-%dT%H:%M:%SZ", &tm);
        gmtime_r(&b, &tm);
        strftime(hi, sizeof hi, "%Y-%m-%dT%H:%M:%SZ", &tm);
        EXPECT(strcmp(str_of(prev, "grace_until"), lo) >= 0 &&
                   strcmp(str_of(prev, "grace_until"), hi) <= 0,
               "grace_until %s not one day from now", str_of(prev, "grace_until"));
    }
    EXPECT(strcmp(c.action, "admin.keys.rotate") == 0, "action %s", c.action);
    EXPECT(strcmp(str_of(c.audit_details, "new_key_id"), id2) == 0, "details new_key_id");
    done(&c);
    EXPECT(verifies(f, key2), "the new key does not verify");
    EXPECT(verifies(f, key), "the old key stopped inside its grace period");

    /* Rotating a rotated key: conflict. */
    expect_fail(f, "POST", path, NULL, NULL, 409, "conflict", NULL);

    /* Grace 0: the old key stops at once. */
    snprintf(path, sizeof path, "/admin/keys/%s/rotate", id2);
    call(f, &c, "POST", path, NULL, "{\"grace_seconds\":0}");
    expect_status(&c, 201, NULL);
    done(&c);
    EXPECT(!verifies(f, key2), "grace 0: the old key still works");

    /* Revoke. */
    snprintf(path, sizeof path, "/admin/keys/%s/revoke", id);
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "state"), "revoked") == 0, "state %s",
           str_of(c.result, "state"));
    EXPECT(!json_is_null(json_object_get(c.result, "revoked_at")), "revoked_at null");
    EXPECT(strcmp(c.action, "admin.keys.revoke") == 0, "action %s", c.action);
    snprintf(path, sizeof path, "key:%s", id);
    EXPECT(strcmp(c.resource, path) == 0, "resource %s", c.resource);
    done(&c);
    EXPECT(!verifies(f, key), "a revoked key verifies");
    /* Twice is fine. */
    snprintf(path, sizeof path, "/admin/keys/%s/revoke", id);
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    done(&c);
    /* Rotating a revoked key: conflict. Unknown ids: 404. */
    snprintf(path, sizeof path, "/admin/keys/%s/rotate", id);
    expect_fail(f, "POST", path, NULL, NULL, 409, "conflict", NULL);
    expect_fail(f, "POST", "/admin/keys/ak_0000000000000000/rotate", NULL, NULL, 404, "not_found",
                NULL);
    expect_fail(f, "POST", "/admin/keys/ak_0000000000000000/revoke", NULL, NULL, 404, "not_found",
                NULL);
    expect_fail(f, "POST", "/admin/keys/ak_0000000000000000/revoke", "now=1", NULL, 400,
                "invalid_parameter", "now");
    phg_wipe(key, sizeof key);
    phg_wipe(key2, sizeof key2);
}

/* The audit log refuses records: key changes fail closed. */
static void test_keys_unaudited(void **state)
{
    fx *f = *state;
    char id[PHG_APIKEY_ID_MAX + 1], key[PHG_APIKEY_LEN + 1], path[128], made[PHG_APIKEY_ID_MAX + 1];
    phg_apikey_record rec;
    gw_call c;

    create_key(f, "{\"role\":\"user\",\"user_id\":\"42\"}", id, key);
    audit_block(f, 1);

    /* create: the key is made, its record fails, it is revoked, 503. */
    call(f, &c, "POST", "/admin/keys", NULL, "{\"role\":\"user\",\"user_id\":\"43\"}");
    expect_status(&c, 503, "audit_unavailable");
    EXPECT(strstr(c.err_msg, "undone") != NULL, "message: %s", c.err_msg);
    snprintf(made, sizeof made, "%s", str_of(c.audit_details, "key_id"));
    EXPECT(json_is_true(json_object_get(c.audit_details, "undone")), "not undone");
    done(&c);
    EXPECT_RC(phg_keys_get(f->keys, made, &rec), PHG_OK);
    EXPECT(rec.revoked_at != 0, "the unaudited key %s is not revoked", made);

    /* rotate: the new key is revoked; the old one stays rotated. */
    snprintf(path, sizeof path, "/admin/keys/%s/rotate", id);
    call(f, &c, "POST", path, NULL, "{\"grace_seconds\":600}");
    expect_status(&c, 503, "audit_unavailable");
    snprintf(made, sizeof made, "%s", str_of(c.audit_details, "new_key_id"));
    done(&c);
    EXPECT_RC(phg_keys_get(f->keys, made, &rec), PHG_OK);
    EXPECT(rec.revoked_at != 0, "the unaudited rotated key %s is not revoked", made);
    EXPECT(verifies(f, key), "the old key stopped inside its grace");

    /* revoke: done, says so. */
    snprintf(path, sizeof path, "/admin/keys/%s/revoke", id);
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 503, "audit_unavailable");
    EXPECT(strstr(c.err_msg, "IS revoked") != NULL, "message: %s", c.err_msg);
    done(&c);
    EXPECT(!verifies(f, key), "the key was not revoked");

    /* The audit log back: things work again. */
    audit_block(f, 0);
    create_key(f, "{\"role\":\"user\",\"user_id\":\"44\"}", id, NULL);
    phg_wipe(key, sizeof key);
}

/* ---- audit ----------------------------------------------------------------------------- */

static void append(fx *f, const char *action, const char *user, const char *subject,
                   const char *outcome, const char *request_id, char id[PHG_ULID_LEN + 1])
{
    phg_audit_event e;
    char local[PHG_ULID_LEN + 1];
    memset(&e, 0, sizeof e);
    e.action = action;
    e.user_id = user;
    e.key_id = "ak_someone0000000001";
    e.subject = subject;
    e.outcome = outcome;
    e.request_id = request_id;
    e.resource = "GET /v1/readings";
    e.details_json = "{\"step\":\"abcdef\"}";
    EXPECT_RC(phg_audit_append(f->audit, &e, id != NULL ? id : local), PHG_OK);
}

static size_t count_records(gw_call *c, const char *member)
{
    json_t *arr = json_object_get(c->result, member);
    EXPECT(json_is_array(arr), "no %s array", member);
    return json_array_size(arr);
}

static void test_audit_query(void **state)
{
    fx *f = *state;
    char rid[PHG_ULID_LEN + 1], q[512], first[PHG_ULID_LEN + 1], next[PHG_ULID_LEN + 1];
    json_t *recs;
    gw_call c;
    size_t i;

    EXPECT_RC(phg_ulid_new_text(rid), PHG_OK);
    append(f, "phi.decrypt", "42", "42", "success", rid, first);
    append(f, "phi.decrypt", "43", "43", "denied", NULL, NULL);
    append(f, "http.request", "42", "42", "success", NULL, NULL);
    append(f, "phi.encrypt", "44", "43", "error", NULL, NULL);

    call(f, &c, "GET", "/admin/audit", "action=phi.decrypt", NULL);
    expect_status(&c, 200, NULL);
    recs = json_object_get(c.result, "records");
    EXPECT(json_array_size(recs) == 2, "action filter: %zu", json_array_size(recs));
    for (i = 0; i < 2; i++)
        EXPECT(strcmp(str_of(json_array_get(recs, i), "action"), "phi.decrypt") == 0,
               "wrong action");
    EXPECT(strcmp(str_of(json_array_get(recs, 0), "id"), str_of(json_array_get(recs, 1), "id")) > 0,
           "not newest first");
    EXPECT(json_is_null(json_object_get(c.result, "next")), "next");
    EXPECT(strcmp(c.action, "admin.audit.query") == 0 && strcmp(c.resource, "audit") == 0,
           "action %s resource %s", c.action, c.resource);
    EXPECT(strcmp(str_of(json_object_get(c.audit_details, "filters"), "action"), "phi.decrypt") ==
               0,
           "details filters");
    done(&c);

    snprintf(q, sizeof q, "request_id=%s", rid);
    call(f, &c, "GET", "/admin/audit", q, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 1, "request_id filter");
    EXPECT(strcmp(str_of(json_array_get(json_object_get(c.result, "records"), 0), "id"), first) ==
               0,
           "request_id: wrong record");
    done(&c);

    call(f, &c, "GET", "/admin/audit", "user_id=42&outcome=success", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 2, "user+outcome filter: %zu",
           count_records(&c, "records"));
    done(&c);

    call(f, &c, "GET", "/admin/audit", "subject=43", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 2, "subject filter");
    EXPECT(strcmp(c.subject, "43") == 0, "call subject %s", c.subject);
    done(&c);

    call(f, &c, "GET", "/admin/audit", "key_id=ak_someone0000000001&action=phi.encrypt", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 1, "key_id filter");
    done(&c);

    /* A SQL-injection string as a user id is only a value that matches nothing. */
    call(f, &c, "GET", "/admin/audit", "user_id=%27%20OR%201%3D1--", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 0, "an injected user_id matched %zu",
           count_records(&c, "records"));
    done(&c);

    /* Paging: limit 2, then before=next. */
    call(f, &c, "GET", "/admin/audit", "user_id=42&limit=1", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 1, "limit 1");
    snprintf(next, sizeof next, "%s", str_of(c.result, "next"));
    done(&c);
    snprintf(q, sizeof q, "user_id=42&limit=1&before=%s", next);
    call(f, &c, "GET", "/admin/audit", q, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 1, "page 2");
    EXPECT(strcmp(str_of(json_array_get(json_object_get(c.result, "records"), 0), "id"), first) ==
               0,
           "page 2 is not the oldest");
    done(&c);

    /* Times: a range around now (an offset too), then one in the past. */
    {
        time_t a = time(NULL) - 3600, b = time(NULL) + 3600;
        char ta[32], tb[32];
        struct tm tm;
        gmtime_r(&a, &tm);
        strftime(ta, sizeof ta, "%Y-%m-%dT%H:%M:%S.5Z", &tm);
        /* b as local time at +02:00 */
        b += 7200;
        gmtime_r(&b, &tm);
        strftime(tb, sizeof tb, "%Y-%m-%dT%H:%M:%S%%2B02:00", &tm);
        snprintf(q, sizeof q, "from=%s&to=%s&action=phi.decrypt", ta, tb);
        call(f, &c, "GET", "/admin/audit", q, NULL);
        expect_status(&c, 200, NULL);
        EXPECT(count_records(&c, "records") == 2, "time range: %zu", count_records(&c, "records"));
        done(&c);
    }
    call(f, &c, "GET", "/admin/audit", "from=2001-01-01&to=2001-01-02", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "records") == 0, "old range");
    done(&c);

    /* Bad filters: 400 naming the parameter. */
    expect_fail(f, "GET", "/admin/audit", "from=yesterday", NULL, 400, "invalid_parameter", "from");
    expect_fail(f, "GET", "/admin/audit", "to=2026-13-01", NULL, 400, "invalid_parameter", "to");
    expect_fail(f, "GET", "/admin/audit", "from=2026-02-30", NULL, 400, "invalid_parameter",
                "from");
    expect_fail(f, "GET", "/admin/audit", "from=2026-01-01T25:00:00Z", NULL, 400,
                "invalid_parameter", "from");
    expect_fail(f, "GET", "/admin/audit", "from=2026-01-02&to=2026-01-01", NULL, 400,
                "invalid_parameter", "after");
    expect_fail(f, "GET", "/admin/audit", "request_id=%27%20OR%201%3D1--", NULL, 400,
                "invalid_parameter", "request_id");
    expect_fail(f, "GET", "/admin/audit", "key_id=%27%20OR%201%3D1--", NULL, 400,
                "invalid_parameter", "key_id");
    expect_fail(f, "GET", "/admin/audit", "before=notaulid", NULL, 400, "invalid_parameter",
                "before");
    expect_fail(f, "GET", "/admin/audit", "outcome=maybe", NULL, 400, "invalid_parameter",
                "outcome");
    expect_fail(f, "GET", "/admin/audit", "action=phi.decrypt%27--", NULL, 400, "invalid_parameter",
                "action");
    expect_fail(f, "GET", "/admin/audit", "user_id=a%0Ab", NULL, 400, "invalid_parameter",
                "user_id");
    expect_fail(f, "GET", "/admin/audit", "limit=5000", NULL, 400, "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/audit", "sort=asc", NULL, 400, "invalid_parameter", "sort");
    expect_fail(f, "GET", "/admin/audit", "subject=1&subject=2", NULL, 400, "invalid_parameter",
                "subject");
    f->ctx.store = NULL;
    expect_fail(f, "GET", "/admin/audit", NULL, NULL, 503, "unavailable", NULL);
    f->ctx.store = f->st;
}

static void test_audit_report(void **state)
{
    fx *f = *state;
    char q[256], next[PHG_ULID_LEN + 1], ids[3][PHG_ULID_LEN + 1];
    json_t *acc;
    gw_call c;

    append(f, "phi.decrypt", "dr-who", "42", "success", NULL, ids[0]);
    append(f, "phi.decrypt", "dr-who", "43", "success", NULL, NULL);
    append(f, "http.request", "nurse", "42", "denied", NULL, ids[1]);
    append(f, "phi.encrypt", "42", "42", "success", NULL, ids[2]);

    expect_fail(f, "GET", "/admin/audit/report", NULL, NULL, 400, "invalid_parameter", "subject");
    expect_fail(f, "GET", "/admin/audit/report", "user_id=42", NULL, 400, "invalid_parameter",
                "user_id");
    expect_fail(f, "GET", "/admin/audit/report", "subject=42&from=soon", NULL, 400,
                "invalid_parameter", "from");

    call(f, &c, "GET", "/admin/audit/report", "subject=42&from=2020-01-01", NULL);
    expect_status(&c, 200, NULL);
    acc = json_object_get(c.result, "accesses");
    EXPECT(json_array_size(acc) == 3, "report: %zu accesses", json_array_size(acc));
    EXPECT(json_integer_value(json_object_get(c.result, "count")) == 3, "count");
    EXPECT(strcmp(str_of(c.result, "subject"), "42") == 0, "subject");
    EXPECT(strcmp(str_of(c.result, "from"), "2020-01-01") == 0, "from echo");
    EXPECT(json_is_null(json_object_get(c.result, "to")), "to not null");
    EXPECT(strcmp(str_of(json_array_get(acc, 0), "id"), ids[2]) == 0 &&
               strcmp(str_of(json_array_get(acc, 2), "id"), ids[0]) == 0,
           "not newest first");
    EXPECT(strcmp(str_of(json_object_get(json_array_get(acc, 1), "details"), "subject"), "42") == 0,
           "record subject");
    EXPECT(strcmp(c.subject, "42") == 0, "call subject %s", c.subject);
    EXPECT(strcmp(c.action, "admin.audit.report") == 0, "action %s", c.action);
    done(&c);

    call(f, &c, "GET", "/admin/audit/report", "subject=42&limit=2", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "accesses") == 2, "page 1");
    snprintf(next, sizeof next, "%s", str_of(c.result, "next"));
    done(&c);
    snprintf(q, sizeof q, "subject=42&limit=2&before=%s", next);
    call(f, &c, "GET", "/admin/audit/report", q, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "accesses") == 1, "page 2");
    EXPECT(json_is_null(json_object_get(c.result, "next")), "next on the last page");
    done(&c);

    call(f, &c, "GET", "/admin/audit/report", "subject=%27%20OR%20%271%27%3D%271", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(count_records(&c, "accesses") == 0, "injected subject matched");
    done(&c);
}

static void test_audit_verify(void **state)
{
    fx *f = *state;
    char err[512], sql[256];
    gw_call c;

    append(f, "phi.decrypt", "42", "42", "success", NULL, NULL);
    append(f, "test.tamper", "42", "42", "success", NULL, NULL);
    append(f, "phi.decrypt", "42", "42", "success", NULL, NULL);

    call(f, &c, "GET", "/admin/audit/verify", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_true(json_object_get(c.result, "ok")), "an intact log is not ok");
    EXPECT(json_integer_value(json_object_get(c.result, "records")) >= 3, "records");
    EXPECT(json_integer_value(json_object_get(c.result, "chains")) >= 1, "chains");
    EXPECT(json_object_get(c.result, "checkpoints") != NULL, "checkpoints");
    EXPECT(json_object_get(c.result, "problem") == NULL, "a problem when ok");
    EXPECT(strcmp(c.action, "admin.audit.verify") == 0, "action %s", c.action);
    done(&c);

    call(f, &c, "GET", "/admin/audit/verify", "from=2020-01-01&to=2099-01-01T00:00:00Z", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_true(json_object_get(c.result, "ok")), "ranged: not ok");
    done(&c);

    expect_fail(f, "GET", "/admin/audit/verify", "from=x", NULL, 400, "invalid_parameter", "from");
    expect_fail(f, "GET", "/admin/audit/verify", "chain=a", NULL, 400, "invalid_parameter",
                "chain");

    /* Edit a record behind the library's back. */
    if (f->db.engine == TDB_SQLITE) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(sql, sizeof sql,
                 "UPDATE audit_%04d_%02d SET record = replace(record, '\"step\":\"abcdef\"', "
                 "'\"step\":\"abcdeg\"') WHERE action = 'test.tamper'",
                 tm.tm_year + 1900, tm.tm_mon + 1);
    } else {
        snprintf(sql, sizeof sql,
                 "UPDATE audit_log SET record = replace(record, '\"step\":\"abcdef\"', "
                 "'\"step\":\"abcdeg\"') WHERE action = 'test.tamper'");
    }
    EXPECT(tdb_exec(&f->db, sql, err, sizeof err) == 0, "[%s] %s: %s", ENG, sql, err);
    call(f, &c, "GET", "/admin/audit/verify", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_false(json_object_get(c.result, "ok")), "a tampered log is ok");
    EXPECT(strcmp(str_of(c.result, "chain"), "gw-test") == 0, "chain");
    EXPECT(strstr(str_of(c.result, "problem"), "edited") != NULL, "problem %s",
           str_of(c.result, "problem"));
    EXPECT(json_is_integer(json_object_get(c.result, "seq")), "seq");
    done(&c);

    f->ctx.checkpoint_key = NULL;
    expect_fail(f, "GET", "/admin/audit/verify", NULL, NULL, 503, "unavailable", NULL);
    f->ctx.checkpoint_key = f->cp_key;
}

/* ---- PHI keyring -------------------------------------------------------------------------- */

/* The stored keyring: number of keys, primary, and the state of kid. */
static void stored_keyring(fx *f, size_t *n, char primary[PHG_PHI_KID_MAX + 1], const char *kid,
                           char state[32])
{
    char *text = NULL;
    size_t len = 0, i;
    json_t *doc, *item;
    EXPECT_RC(phg_store_keyring_get(f->st, &text, &len), PHG_OK);
    doc = json_loadb(text, len, 0, NULL);
    free(text);
    EXPECT(doc != NULL, "stored keyring is not JSON");
    *n = json_array_size(json_object_get(doc, "keys"));
    snprintf(primary, PHG_PHI_KID_MAX + 1, "%s", str_of(doc, "primary"));
    state[0] = '\0';
    json_array_foreach(json_object_get(doc, "keys"), i, item) {
        if (kid != NULL && strcmp(str_of(item, "kid"), kid) == 0)
            snprintf(state, 32, "%s", str_of(item, "state"));
    }
    json_decref(doc);
}

static void test_phi_keyring(void **state)
{
    fx *f = *state;
    char first[PHG_PHI_KID_MAX + 1], second[PHG_PHI_KID_MAX + 1], primary[PHG_PHI_KID_MAX + 1];
    char path[128], body[128], st[32], ct[256];
    size_t n, ct_len;
    json_t *keys;
    gw_call c;

    call(f, &c, "GET", "/admin/phi/keys", NULL, NULL);
    expect_status(&c, 200, NULL);
    snprintf(first, sizeof first, "%s", str_of(c.result, "primary"));
    keys = json_object_get(c.result, "keys");
    EXPECT(json_array_size(keys) == 1, "one key at first");
    EXPECT(strcmp(str_of(json_array_get(keys, 0), "kid"), first) == 0, "kid");
    EXPECT(strcmp(str_of(json_array_get(keys, 0), "state"), "active") == 0, "state");
    EXPECT(strlen(str_of(json_array_get(keys, 0), "created")) == 20, "created");
    EXPECT(json_object_get(json_array_get(keys, 0), "wrapped") == NULL, "wrapped DEK shown");
    EXPECT(json_is_false(json_object_get(c.result, "unsaved")), "unsaved");
    EXPECT(strcmp(c.action, "admin.phi.keys.list") == 0 && strcmp(c.resource, "phi-keyring") == 0,
           "action %s resource %s", c.action, c.resource);
    done(&c);
    expect_fail(f, "GET", "/admin/phi/keys", "all=1", NULL, 400, "invalid_parameter", "all");

    /* Data under the first key, to see it die. */
    EXPECT_RC(
        phg_phi_encrypt(f->kr, "user_id=42", 10, (const uint8_t *)"72", 2, ct, sizeof ct, &ct_len),
        PHG_OK);

    call(f, &c, "POST", "/admin/phi/keys/rotate", NULL, NULL);
    expect_status(&c, 201, NULL);
    snprintf(second, sizeof second, "%s", str_of(c.result, "kid"));
    EXPECT(strcmp(second, first) != 0, "rotation kept the kid");
    EXPECT(strcmp(str_of(c.result, "previous"), first) == 0, "previous");
    EXPECT(strcmp(c.action, "admin.phi.keys.rotate") == 0, "action %s", c.action);
    EXPECT(strcmp(str_of(c.audit_details, "primary"), second) == 0, "details");
    done(&c);
    stored_keyring(f, &n, primary, first, st);
    EXPECT(n == 2 && strcmp(primary, second) == 0 && strcmp(st, "decrypt-only") == 0,
           "stored after rotate: %zu keys, primary %s, first %s", n, primary, st);

    /* Destroy: confirmation first. */
    snprintf(path, sizeof path, "/admin/phi/keys/%s/destroy", first);
    expect_fail(f, "POST", path, NULL, NULL, 400, "confirmation_required", "destroy ");
    {
        char want[64];
        snprintf(want, sizeof want, "{\"confirm\":\"destroy %s\"}", first);
        expect_fail(f, "POST", path, NULL, "{}", 400, "confirmation_required", want);
    }
    expect_fail(f, "POST", path, NULL, "{\"confirm\":\"yes\"}", 400, "confirmation_required", NULL);
    snprintf(body, sizeof body, "{\"confirm\":\"destroy %s \"}", first);
    expect_fail(f, "POST", path, NULL, body, 400, "confirmation_required", NULL);
    snprintf(body, sizeof body, "{\"confirm\":\"destroy %s\"}", second);
    expect_fail(f, "POST", path, NULL, body, 400, "confirmation_required", NULL);
    snprintf(body, sizeof body, "{\"confirm\":\"destroy %s\",\"force\":true}", first);
    expect_fail(f, "POST", path, NULL, body, 400, "invalid_request", "force");
    expect_fail(f, "POST", path, NULL, "not json", 400, "invalid_json", NULL);
    EXPECT(phg_keyring_count(f->kr) == 2, "count");

    /* The primary cannot go. */
    snprintf(path, sizeof path, "/admin/phi/keys/%s/destroy", second);
    snprintf(body, sizeof body, "{\"confirm\":\"destroy %s\"}", second);
    expect_fail(f, "POST", path, NULL, body, 409, "conflict", "rotate first");
    /* Unknown and malformed kids. */
    expect_fail(f, "POST", "/admin/phi/keys/zz99/destroy", NULL, "{\"confirm\":\"destroy zz99\"}",
                404, "not_found", NULL);
    {
        static const char *const bad[] = {
            "ABC", "a-b", "%27%20OR%201=1--", "' OR 1=1--", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "a;b", ".."};
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            snprintf(path, sizeof path, "/admin/phi/keys/%s/destroy", bad[i]);
            expect_fail(f, "POST", path, NULL, "{\"confirm\":\"destroy x\"}", 400,
                        "invalid_parameter", "kid");
        }
    }

    /* Now for real. */
    snprintf(path, sizeof path, "/admin/phi/keys/%s/destroy", first);
    snprintf(body, sizeof body, "{\"confirm\":\"destroy %s\"}", first);
    call(f, &c, "POST", path, NULL, body);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "kid"), first) == 0 &&
               strcmp(str_of(c.result, "state"), "destroyed") == 0,
           "destroy reply");
    EXPECT(strcmp(c.action, "admin.phi.keys.destroy") == 0, "action %s", c.action);
    EXPECT(strcmp(str_of(c.audit_details, "kid"), first) == 0, "details");
    done(&c);
    stored_keyring(f, &n, primary, first, st);
    EXPECT(strcmp(st, "destroyed") == 0, "stored state %s", st);
    {
        uint8_t out[64];
        size_t out_len = 0;
        EXPECT(phg_phi_decrypt(f->kr, "user_id=42", 10, ct, ct_len, out, sizeof out, &out_len) ==
                   PHG_ERR_AUTH,
               "data under a destroyed key still opens");
    }
    expect_fail(f, "POST", path, NULL, body, 409, "conflict", "already destroyed");

    call(f, &c, "GET", "/admin/phi/keys", NULL, NULL);
    expect_status(&c, 200, NULL);
    keys = json_object_get(c.result, "keys");
    EXPECT(json_array_size(keys) == 2, "keys");
    EXPECT(strcmp(str_of(json_array_get(keys, 0), "state"), "destroyed") == 0, "state 0");
    EXPECT(strcmp(str_of(json_array_get(keys, 1), "state"), "active") == 0, "state 1");
    done(&c);

    f->ctx.keyring = NULL;
    expect_fail(f, "GET", "/admin/phi/keys", NULL, NULL, 503, "unavailable", NULL);
    f->ctx.keyring = f->kr;
}

/* The store refuses the keyring: the change is said to be unsaved, and is
 * saved by the next change once the store is back. */
static void test_phi_keyring_unsaved(void **state)
{
    fx *f = *state;
    char kid[PHG_PHI_KID_MAX + 1], primary[PHG_PHI_KID_MAX + 1], st[32];
    size_t n;
    gw_call c;

    keyring_block(f, 1);
    call(f, &c, "POST", "/admin/phi/keys/rotate", NULL, NULL);
    expect_status(&c, 503, "unavailable");
    EXPECT(strstr(c.err_msg, "could not be saved") != NULL, "message: %s", c.err_msg);
    done(&c);
    EXPECT(phg_keyring_count(f->kr) == 2, "rotated in memory");
    EXPECT_RC(phg_keyring_primary(f->kr, kid), PHG_OK);

    call(f, &c, "GET", "/admin/phi/keys", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_true(json_object_get(c.result, "unsaved")), "unsaved not shown");
    done(&c);

    /* Still refused: nothing new is changed. */
    call(f, &c, "POST", "/admin/phi/keys/rotate", NULL, NULL);
    expect_status(&c, 503, "unavailable");
    EXPECT(strstr(c.err_msg, "still not saved") != NULL, "message: %s", c.err_msg);
    done(&c);
    EXPECT(phg_keyring_count(f->kr) == 2, "rotated again while unsaved");

    keyring_block(f, 0);
    call(f, &c, "POST", "/admin/phi/keys/rotate", NULL, NULL);
    expect_status(&c, 201, NULL);
    EXPECT(strcmp(str_of(c.result, "previous"), kid) == 0, "previous");
    done(&c);
    stored_keyring(f, &n, primary, kid, st);
    EXPECT(n == 3 && strcmp(st, "decrypt-only") == 0, "stored: %zu keys, %s %s", n, kid, st);

    call(f, &c, "GET", "/admin/phi/keys", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_false(json_object_get(c.result, "unsaved")), "still unsaved");
    done(&c);
}

/* The audit log refuses records: keyring changes cannot be undone, so they
 * are saved, and the answer says the record is missing. */
static void test_phi_keyring_unaudited(void **state)
{
    fx *f = *state;
    char first[PHG_PHI_KID_MAX + 1], kid[PHG_PHI_KID_MAX + 1], primary[PHG_PHI_KID_MAX + 1];
    char st[32], path[128], body[128];
    size_t n;
    gw_call c;

    EXPECT_RC(phg_keyring_primary(f->kr, first), PHG_OK);
    audit_block(f, 1);
    call(f, &c, "POST", "/admin/phi/keys/rotate", NULL, NULL);
    expect_status(&c, 503, "audit_unavailable");
    EXPECT(strstr(c.err_msg, "saved") != NULL, "message: %s", c.err_msg);
    done(&c);
    EXPECT_RC(phg_keyring_primary(f->kr, kid), PHG_OK);
    EXPECT(strcmp(kid, first) != 0, "not rotated");
    stored_keyring(f, &n, primary, first, st);
    EXPECT(n == 2 && strcmp(primary, kid) == 0, "the unaudited rotation is not saved");

    snprintf(path, sizeof path, "/admin/phi/keys/%s/destroy", first);
    snprintf(body, sizeof body, "{\"confirm\":\"destroy %s\"}", first);
    call(f, &c, "POST", path, NULL, body);
    expect_status(&c, 503, "audit_unavailable");
    EXPECT(strstr(c.err_msg, "destroyed and saved") != NULL, "message: %s", c.err_msg);
    done(&c);
    stored_keyring(f, &n, primary, first, st);
    EXPECT(strcmp(st, "destroyed") == 0, "the unaudited destroy is not saved: %s", st);
    audit_block(f, 0);
}

/* Another instance changed the stored keyring: ours must not overwrite it. */
static void test_phi_keyring_stale(void **state)
{
    fx *f = *state;
    char *text = NULL;
    size_t len = 0, n;
    phg_keyring *other = NULL;
    char primary[PHG_PHI_KID_MAX + 1], st[32], other_kid[PHG_PHI_KID_MAX + 1];
    gw_call c;

    EXPECT_RC(phg_store_keyring_get(f->st, &text, &len), PHG_OK);
    EXPECT_RC(phg_keyring_from_json(text, len, f->mk, NULL, &other, NULL), PHG_OK);
    free(text);
    EXPECT_RC(phg_keyring_rotate(other, other_kid), PHG_OK);
    save_keyring(f, other);

    call(f, &c, "POST", "/admin/phi/keys/rotate", NULL, NULL);
    expect_status(&c, 409, "conflict");
    EXPECT(strstr(c.err_msg, "restart") != NULL, "message: %s", c.err_msg);
    done(&c);
    EXPECT(phg_keyring_count(f->kr) == 1, "rotated anyway");
    stored_keyring(f, &n, primary, NULL, st);
    EXPECT(n == 2 && strcmp(primary, other_kid) == 0, "the other instance's keyring was lost");
    phg_keyring_free(other);
}

/* ---- rate limits ------------------------------------------------------------------------ */

/* The rate-limit tests run with a local engine and a configuration
 * (engine local; role user keys default to 50/1m, admin keys to none). */
static int setup_rl(void **state)
{
    fx *f;
    char err[256] = "";
    if (setup(state) != 0)
        return -1;
    f = *state;
    f->cfg = calloc(1, sizeof *f->cfg);
    if (f->cfg == NULL)
        return -1;
    snprintf(f->cfg->rl_engine, sizeof f->cfg->rl_engine, "local");
    snprintf(f->cfg->rl_fallback, sizeof f->cfg->rl_fallback, "local");
    f->cfg->rl_timeout_ms = 50;
    f->cfg->rl_instances = 1;
    snprintf(f->cfg->rl_default_user, sizeof f->cfg->rl_default_user, "50/1m");
    EXPECT(phg_rl_policy_parse("50/1m", &f->cfg->rl_user_policy, err, sizeof err) == PHG_OK,
           "parse: %s", err);
    f->cfg->rl_admin_policy.n = 0;
    EXPECT_RC(phg_rl_new(NULL, &f->rl), PHG_OK);
    f->ctx.rl = f->rl;
    f->ctx.cfg = f->cfg;
    return 0;
}

static int redis_script(const char *cmd, const char *dir);

static int teardown_rl(void **state)
{
    fx *f = *state;
    if (f != NULL && f->redis_dir[0] != '\0') {
        char line[128];
        (void)redis_script("stop", f->redis_dir);
        snprintf(line, sizeof line, "rm -rf '%s'", f->redis_dir);
        if (system(line) != 0)
            fprintf(stderr, "cannot remove %s\n", f->redis_dir);
    }
    if (f != NULL) {
        phg_rl_free(f->rl);
        free(f->cfg);
    }
    return teardown(state);
}

/* The server's clock (server.c decides on CLOCK_MONOTONIC in ms). */
static uint64_t test_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* n requests of key id under policy text, as the server decides them; how
 * many were admitted. */
static int rl_hits(fx *f, const char *id, const char *policy_text, int n)
{
    phg_rl_policy p;
    phg_rl_decision d;
    char err[256] = "";
    int i, admitted = 0;
    EXPECT(phg_rl_policy_parse(policy_text, &p, err, sizeof err) == PHG_OK, "parse %s: %s",
           policy_text, err);
    for (i = 0; i < n; i++) {
        EXPECT_RC(phg_rl_check(f->rl, id, strlen(id), &p, test_mono_ms(), &d), PHG_OK);
        admitted += d.allowed != 0;
    }
    return admitted;
}

static json_int_t int_of(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    EXPECT(json_is_integer(v), "member %s missing or not an integer", name);
    return json_integer_value(v);
}

/* One window of a usage reply against what it must say. */
static void expect_window(json_t *w, json_int_t limit, json_int_t window_s, json_int_t used)
{
    EXPECT(int_of(w, "limit") == limit && int_of(w, "window_s") == window_s,
           "[%s] window %lld/%llds, want %lld/%llds", ENG, (long long)int_of(w, "limit"),
           (long long)int_of(w, "window_s"), (long long)limit, (long long)window_s);
    EXPECT(int_of(w, "used") == used && int_of(w, "remaining") == limit - used,
           "[%s] %lld/%llds: used %lld remaining %lld, want used %lld", ENG, (long long)limit,
           (long long)window_s, (long long)int_of(w, "used"), (long long)int_of(w, "remaining"),
           (long long)used);
    if (used < limit)
        EXPECT(int_of(w, "reset_s") == 0, "[%s] reset_s %lld with room left", ENG,
               (long long)int_of(w, "reset_s"));
    else
        /* the counts cover W and up to one sub-window more (ratelimit.h) */
        EXPECT(int_of(w, "reset_s") >= 1 &&
                   int_of(w, "reset_s") <=
                       window_s + (window_s + PHG_RL_SUBWINDOWS - 1) / PHG_RL_SUBWINDOWS,
               "[%s] reset_s %lld when full", ENG, (long long)int_of(w, "reset_s"));
}

/* GET /admin/keys/{id}/ratelimit into c (status 200 expected). */
static void usage(fx *f, gw_call *c, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/admin/keys/%s/ratelimit", id);
    call(f, c, "GET", path, NULL, NULL);
    expect_status(c, 200, NULL);
}

static void test_rl_usage(void **state)
{
    fx *f = *state;
    char id[PHG_APIKEY_ID_MAX + 1], uid[PHG_APIKEY_ID_MAX + 1], aid[PHG_APIKEY_ID_MAX + 1];
    json_t *w;
    gw_call c;
    int pass;

    create_key(f, "{\"role\":\"user\",\"user_id\":\"42\",\"rate_limit\":\"5/1h,100/1d\"}", id,
               NULL);
    EXPECT(rl_hits(f, id, "5/1h,100/1d", 3) == 3, "3 of 3 admitted");

    /* Twice: a usage read counts nothing. */
    for (pass = 0; pass < 2; pass++) {
        usage(f, &c, id);
        EXPECT(strcmp(str_of(c.result, "key_id"), id) == 0, "key_id");
        EXPECT(strcmp(str_of(c.result, "policy"), "5/1h,100/1d") == 0, "policy %s",
               str_of(c.result, "policy"));
        EXPECT(strcmp(str_of(c.result, "source"), "key") == 0, "source");
        EXPECT(strcmp(str_of(c.result, "engine"), "local") == 0, "engine");
        w = json_object_get(c.result, "windows");
        EXPECT(json_array_size(w) == 2, "[%s] %zu windows", ENG, json_array_size(w));
        expect_window(json_array_get(w, 0), 5, 3600, 3);
        expect_window(json_array_get(w, 1), 100, 86400, 3);
        EXPECT(strcmp(c.action, "admin.ratelimit.usage") == 0, "action %s", c.action);
        EXPECT(strncmp(c.resource, "key:", 4) == 0 && strcmp(c.resource + 4, id) == 0,
               "resource %s", c.resource);
        EXPECT(strcmp(str_of(c.audit_details, "key_id"), id) == 0, "details key_id");
        done(&c);
    }

    /* Full in the hour: 2 more admitted, then refused; both windows counted
     * every admitted request, and the peeks (one window each) lost none. */
    EXPECT(rl_hits(f, id, "5/1h,100/1d", 4) == 2, "5 per hour admitted");
    usage(f, &c, id);
    w = json_object_get(c.result, "windows");
    expect_window(json_array_get(w, 0), 5, 3600, 5);
    expect_window(json_array_get(w, 1), 100, 86400, 5);
    done(&c);
    EXPECT(rl_hits(f, id, "5/1h,100/1d", 1) == 0, "admitted after the usage read");

    /* A key of its role's default, and a key without any limit. */
    create_key(f, "{\"role\":\"user\",\"user_id\":\"43\"}", uid, NULL);
    EXPECT(rl_hits(f, uid, "50/1m", 7) == 7, "7 admitted");
    usage(f, &c, uid);
    EXPECT(strcmp(str_of(c.result, "policy"), "50/1m") == 0, "default policy");
    EXPECT(strcmp(str_of(c.result, "source"), "default") == 0, "source default");
    w = json_object_get(c.result, "windows");
    EXPECT(json_array_size(w) == 1, "windows");
    expect_window(json_array_get(w, 0), 50, 60, 7);
    done(&c);
    create_key(f, "{\"role\":\"admin\",\"user_id\":\"ops\"}", aid, NULL);
    usage(f, &c, aid);
    EXPECT(strcmp(str_of(c.result, "policy"), "none") == 0, "policy none");
    EXPECT(strcmp(str_of(c.result, "source"), "none") == 0, "source none");
    EXPECT(json_array_size(json_object_get(c.result, "windows")) == 0, "windows of none");
    done(&c);

    /* Errors. */
    expect_fail(f, "GET", "/admin/keys/ak_nosuchkey0000001/ratelimit", NULL, NULL, 404, "not_found",
                NULL);
    {
        char path[128];
        snprintf(path, sizeof path, "/admin/keys/%s/ratelimit", id);
        expect_fail(f, "GET", path, "verbose=1", NULL, 400, "invalid_parameter", "verbose");
        expect_fail(f, "DELETE", path, NULL, NULL, 405, "method_not_allowed", "PUT");
        expect_fail(f, "POST", path, NULL, "{}", 405, "method_not_allowed", NULL);
        f->ctx.cfg = NULL;
        expect_fail(f, "GET", path, NULL, NULL, 503, "unavailable", NULL);
        f->ctx.cfg = f->cfg;
        f->ctx.rl = NULL;
        expect_fail(f, "GET", path, NULL, NULL, 503, "unavailable", NULL);
        f->ctx.rl = f->rl;
        f->ctx.keys = NULL;
        expect_fail(f, "GET", path, NULL, NULL, 503, "unavailable", NULL);
        f->ctx.keys = f->keys;
    }
}

static void test_rl_reset(void **state)
{
    fx *f = *state;
    char id[PHG_APIKEY_ID_MAX + 1], other[PHG_APIKEY_ID_MAX + 1], path[128];
    json_t *w;
    gw_call c;

    create_key(f, "{\"role\":\"user\",\"user_id\":\"42\",\"rate_limit\":\"3/1h\"}", id, NULL);
    create_key(f, "{\"role\":\"user\",\"user_id\":\"44\",\"rate_limit\":\"3/1h\"}", other, NULL);
    EXPECT(rl_hits(f, id, "3/1h", 5) == 3, "3 admitted");
    EXPECT(rl_hits(f, other, "3/1h", 2) == 2, "2 admitted");

    snprintf(path, sizeof path, "/admin/keys/%s/ratelimit/reset", id);
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "key_id"), id) == 0, "key_id");
    EXPECT(json_is_true(json_object_get(c.result, "reset")), "reset not true");
    EXPECT(strcmp(c.action, "admin.ratelimit.reset") == 0, "action %s", c.action);
    EXPECT(strncmp(c.resource, "key:", 4) == 0 && strcmp(c.resource + 4, id) == 0, "resource %s",
           c.resource);
    EXPECT(strcmp(str_of(c.audit_details, "key_id"), id) == 0, "details key_id");
    EXPECT(strcmp(str_of(c.audit_details, "engine"), "local") == 0, "details engine");
    done(&c);

    usage(f, &c, id);
    w = json_object_get(c.result, "windows");
    expect_window(json_array_get(w, 0), 3, 3600, 0);
    done(&c);
    /* A fresh window: the full limit again. */
    EXPECT(rl_hits(f, id, "3/1h", 4) == 3, "a reset key admits its limit again");
    /* The other key kept its counts. */
    usage(f, &c, other);
    expect_window(json_array_get(json_object_get(c.result, "windows"), 0), 3, 3600, 2);
    done(&c);

    expect_fail(f, "GET", path, NULL, NULL, 405, "method_not_allowed", "POST");
    expect_fail(f, "POST", path, "all=1", NULL, 400, "invalid_parameter", "all");
    expect_fail(f, "POST", path, NULL, "{\"x\":1}", 400, "invalid_request", "body");
    expect_fail(f, "POST", "/admin/keys/ak_nosuchkey0000001/ratelimit/reset", NULL, NULL, 404,
                "not_found", NULL);
    expect_fail(f, "POST", "/admin/keys/ak_nosuchkey0000001/ratelimit/resetx", NULL, NULL, 404,
                "not_found", NULL);
    f->ctx.rl = NULL;
    expect_fail(f, "POST", path, NULL, NULL, 503, "unavailable", NULL);
    f->ctx.rl = f->rl;
}

/* PUT /admin/keys/{id}/ratelimit with body; status wanted. */
static void set_limit(fx *f, gw_call *c, const char *id, const char *body)
{
    char path[128];
    snprintf(path, sizeof path, "/admin/keys/%s/ratelimit", id);
    call(f, c, "PUT", path, NULL, body);
}

static const char *stored_limit(fx *f, const char *id, char out[PHG_APIKEY_LIMIT_MAX + 1])
{
    phg_apikey_record rec;
    EXPECT_RC(phg_keys_get(f->keys, id, &rec), PHG_OK);
    snprintf(out, PHG_APIKEY_LIMIT_MAX + 1, "%s", rec.rate_limit);
    return out;
}

static void test_rl_set_limit(void **state)
{
    fx *f = *state;
    char id[PHG_APIKEY_ID_MAX + 1], lim[PHG_APIKEY_LIMIT_MAX + 1], path[128];
    gw_call c;
    size_t i;

    create_key(f, "{\"role\":\"user\",\"user_id\":\"42\"}", id, NULL);
    set_limit(f, &c, id, "{\"limit\":\"100/1m,5000/1h\"}");
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "id"), id) == 0, "record id");
    EXPECT(strcmp(str_of(c.result, "rate_limit"), "100/1m,5000/1h") == 0, "record rate_limit %s",
           str_of(c.result, "rate_limit"));
    EXPECT(strcmp(c.action, "admin.keys.set_limit") == 0, "action %s", c.action);
    EXPECT(strncmp(c.resource, "key:", 4) == 0 && strcmp(c.resource + 4, id) == 0, "resource %s",
           c.resource);
    EXPECT(strcmp(str_of(c.audit_details, "limit"), "100/1m,5000/1h") == 0, "details limit");
    EXPECT(json_is_null(json_object_get(c.audit_details, "previous")), "details previous");
    done(&c);
    EXPECT(strcmp(stored_limit(f, id, lim), "100/1m,5000/1h") == 0, "stored %s", lim);
    /* Usage follows at once. */
    usage(f, &c, id);
    EXPECT(strcmp(str_of(c.result, "policy"), "100/1m,5000/1h") == 0, "usage policy");
    EXPECT(strcmp(str_of(c.result, "source"), "key") == 0, "usage source");
    done(&c);
    /* The library's own record of the change. */
    {
        phg_audit_filter flt;
        phg_audit_row *rows = NULL;
        size_t n = 0;
        char err[256];
        memset(&flt, 0, sizeof flt);
        flt.action = "keys.set_limit";
        flt.limit = 10;
        EXPECT_RC(phg_audit_query(f->st, &flt, &rows, &n, err, sizeof err), PHG_OK);
        EXPECT(n == 1 && strstr(rows[0].json, id) != NULL, "[%s] %zu keys.set_limit records", ENG,
               n);
        phg_audit_rows_free(rows, n);
    }

    /* Bad limits: 400 with the library's reason; nothing changes. */
    {
        static const char *const bad[] = {
            "{\"limit\":\"0/1m\"}",
            "{\"limit\":\"-5/1m\"}",
            "{\"limit\":\"10/0s\"}",
            "{\"limit\":\"10/1x\"}",
            "{\"limit\":\"10\"}",
            "{\"limit\":\"abc\"}",
            "{\"limit\":\"10/1m,20/60s\"}",
            "{\"limit\":\"1/1s,2/2s,3/3s,4/4s,5/5s\"}",
            "{\"limit\":\"10/1m; DROP TABLE api_keys\"}",
            "{\"limit\":\"1000000000000/1m\"}",
        };
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            set_limit(f, &c, id, bad[i]);
            expect_status(&c, 400, "invalid_parameter");
            EXPECT(strstr(c.err_msg, "limit") != NULL, "[%s] %s: message %s", ENG, bad[i],
                   c.err_msg);
            EXPECT(json_object_get(c.audit_details, "limit") == NULL,
                   "a refused limit text in audit_details");
            done(&c);
        }
    }
    {
        char body[400];
        memset(lim, 0, sizeof lim);
        snprintf(body, sizeof body, "{\"limit\":\"%0200d/1m\"}", 1);
        set_limit(f, &c, id, body);
        expect_status(&c, 400, "invalid_parameter");
        done(&c);
    }
    EXPECT(strcmp(stored_limit(f, id, lim), "100/1m,5000/1h") == 0, "a bad limit changed it: %s",
           lim);
    /* Bodies of the wrong shape. */
    {
        static const char *const shapes[] = {"{}", "{\"limit\":5}", "{\"limit\":[\"1/1m\"]}",
                                             "{\"limit\":\"1/1m\",\"burst\":2}"};
        for (i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            set_limit(f, &c, id, shapes[i]);
            expect_status(&c, 400, "invalid_request");
            done(&c);
        }
        set_limit(f, &c, id, "not json");
        expect_status(&c, 400, "invalid_json");
        done(&c);
    }

    /* Stored in canonical form. */
    set_limit(f, &c, id, "{\"limit\":\"5000/60m,100/60s\"}");
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "rate_limit"), "100/1m,5000/1h") == 0, "not canonical: %s",
           str_of(c.result, "rate_limit"));
    EXPECT(strcmp(str_of(c.audit_details, "limit"), "100/1m,5000/1h") == 0, "details limit");
    done(&c);

    /* "none": this key has no limit, whatever its role's default. */
    set_limit(f, &c, id, "{\"limit\":\"none\"}");
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "rate_limit"), "none") == 0, "rate_limit none");
    done(&c);
    usage(f, &c, id);
    EXPECT(strcmp(str_of(c.result, "source"), "key") == 0 &&
               json_array_size(json_object_get(c.result, "windows")) == 0,
           "usage of none");
    done(&c);

    /* null clears: the role's default applies again. */
    set_limit(f, &c, id, "{\"limit\":null}");
    expect_status(&c, 200, NULL);
    EXPECT(json_is_null(json_object_get(c.result, "rate_limit")), "not cleared");
    EXPECT(strcmp(str_of(c.audit_details, "previous"), "none") == 0, "details previous");
    done(&c);
    EXPECT(stored_limit(f, id, lim)[0] == '\0', "stored %s", lim);
    usage(f, &c, id);
    EXPECT(strcmp(str_of(c.result, "source"), "default") == 0, "source after clear");
    EXPECT(strcmp(str_of(c.result, "policy"), "50/1m") == 0, "policy after clear");
    done(&c);

    /* The audit log refuses: the change is taken back. */
    set_limit(f, &c, id, "{\"limit\":\"7/1m\"}");
    expect_status(&c, 200, NULL);
    done(&c);
    audit_block(f, 1);
    set_limit(f, &c, id, "{\"limit\":\"9999/1m\"}");
    expect_status(&c, 503, "audit_unavailable");
    EXPECT(strstr(c.err_msg, "undone") != NULL, "message: %s", c.err_msg);
    done(&c);
    audit_block(f, 0);
    EXPECT(strcmp(stored_limit(f, id, lim), "7/1m") == 0, "an unaudited change stayed: %s", lim);

    /* Unknown and revoked keys. */
    expect_fail(f, "PUT", "/admin/keys/ak_nosuchkey0000001/ratelimit", NULL, "{\"limit\":\"1/1m\"}",
                404, "not_found", NULL);
    snprintf(path, sizeof path, "/admin/keys/%s/revoke", id);
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    done(&c);
    set_limit(f, &c, id, "{\"limit\":\"1/1m\"}");
    expect_status(&c, 409, "conflict");
    done(&c);
}

/* A violation record as server.c writes it (gw.h, GW_RL_VIOLATION_ACTION). */
static void append_violation(fx *f, const char *key_id, const char *user_id, long count,
                             const char *first, const char *last)
{
    phg_audit_event ev;
    char resource[64], details[512];
    memset(&ev, 0, sizeof ev);
    snprintf(resource, sizeof resource, "key:%s", key_id);
    snprintf(details, sizeof details,
             "{\"count\":%ld,\"first\":\"%s\",\"last\":\"%s\",\"limit\":\"10/1m\",\"window_s\":60}",
             count, first, last);
    ev.request_id = "";
    ev.key_id = key_id;
    ev.user_id = user_id;
    ev.role = "user";
    ev.action = GW_RL_VIOLATION_ACTION;
    ev.resource = resource;
    ev.subject = user_id;
    ev.outcome = "denied";
    ev.ip = "";
    ev.details_json = details;
    EXPECT_RC(phg_audit_append(f->audit, &ev, NULL), PHG_OK);
}

static void expect_violator(json_t *k, const char *key_id, const char *user_id, json_int_t n,
                            const char *first, const char *last)
{
    EXPECT(strcmp(str_of(k, "key_id"), key_id) == 0, "[%s] key %s, want %s", ENG,
           str_of(k, "key_id"), key_id);
    EXPECT(strcmp(str_of(k, "user_id"), user_id) == 0, "[%s] %s: user %s", ENG, key_id,
           str_of(k, "user_id"));
    EXPECT(int_of(k, "violations") == n, "[%s] %s: %lld violations, want %lld", ENG, key_id,
           (long long)int_of(k, "violations"), (long long)n);
    EXPECT(strcmp(str_of(k, "first"), first) == 0, "[%s] %s: first %s, want %s", ENG, key_id,
           str_of(k, "first"), first);
    EXPECT(strcmp(str_of(k, "last"), last) == 0, "[%s] %s: last %s, want %s", ENG, key_id,
           str_of(k, "last"), last);
}

/* "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" to Unix microseconds; 1 ok. */
static int parse_time_us_test(const char *s, int64_t *us)
{
    struct tm tm;
    int frac = 0, n = 0;
    memset(&tm, 0, sizeof tm);
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6)
        return 0;
    if (s[n] == '.' && sscanf(s + n, ".%6d", &frac) == 1)
        n += 7;
    if (strcmp(s + n, "Z") != 0)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *us = (int64_t)timegm(&tm) * 1000000 + frac;
    return 1;
}

static void test_rl_violations(void **state)
{
    fx *f = *state;
    char q[256], past[40], future[40];
    time_t now = time(NULL);
    json_t *keys;
    gw_call c;

    /* ak_violb: 8 in three records; ak_violc: 8 in one (a tie: by key id);
     * ak_viola: 10. Another action is not a violation. */
    append_violation(f, "ak_violb", "u-b", 5, "2026-03-01T10:00:00.250000Z",
                     "2026-03-01T10:00:59.000000Z");
    append_violation(f, "ak_viola", "u-a", 10, "2026-03-01T09:00:00.000000Z",
                     "2026-03-01T09:00:30.000000Z");
    append_violation(f, "ak_violb", "u-b", 2, "2026-03-01T08:00:00.000000Z",
                     "2026-03-01T08:00:01.000000Z");
    append_violation(f, "ak_violc", "u-c", 8, "2026-03-02T00:00:00.000000Z",
                     "2026-03-02T00:00:10.000000Z");
    append_violation(f, "ak_violb", "u-b", 1, "2026-03-01T12:00:00.000000Z",
                     "2026-03-01T12:00:00.000000Z");
    {
        phg_audit_event ev;
        memset(&ev, 0, sizeof ev);
        ev.key_id = "ak_viola";
        ev.action = "http.request";
        ev.resource = "GET /v1/readings";
        ev.outcome = "denied";
        ev.details_json = "{\"count\":1000}";
        EXPECT_RC(phg_audit_append(f->audit, &ev, NULL), PHG_OK);
    }

    /* The default period: the last day. */
    call(f, &c, "GET", "/admin/ratelimit/violations", NULL, NULL);
    expect_status(&c, 200, NULL);
    keys = json_object_get(c.result, "keys");
    EXPECT(json_array_size(keys) == 3, "[%s] %zu keys", ENG, json_array_size(keys));
    expect_violator(json_array_get(keys, 0), "ak_viola", "u-a", 10, "2026-03-01T09:00:00Z",
                    "2026-03-01T09:00:30Z");
    expect_violator(json_array_get(keys, 1), "ak_violb", "u-b", 8, "2026-03-01T08:00:00Z",
                    "2026-03-01T12:00:00Z");
    expect_violator(json_array_get(keys, 2), "ak_violc", "u-c", 8, "2026-03-02T00:00:00Z",
                    "2026-03-02T00:00:10Z");
    EXPECT(int_of(c.result, "records_scanned") == 5, "[%s] scanned %lld", ENG,
           (long long)int_of(c.result, "records_scanned"));
    EXPECT(json_is_false(json_object_get(c.result, "truncated")), "truncated");
    EXPECT(strcmp(c.action, "admin.ratelimit.violations") == 0, "action %s", c.action);
    EXPECT(strcmp(c.resource, "ratelimit") == 0, "resource %s", c.resource);
    EXPECT(int_of(c.audit_details, "records_scanned") == 5, "details records_scanned");
    {
        int64_t from_us = 0, to_us = 0;
        EXPECT(parse_time_us_test(str_of(c.result, "from"), &from_us) &&
                   parse_time_us_test(str_of(c.result, "to"), &to_us),
               "from/to not times: %s %s", str_of(c.result, "from"), str_of(c.result, "to"));
        EXPECT(to_us - from_us == 86400LL * 1000000, "default period is not a day");
        EXPECT(to_us / 1000000 >= (int64_t)now && to_us / 1000000 <= (int64_t)now + 5,
               "default to is not now");
    }
    done(&c);

    /* limit: the top ones only. */
    call(f, &c, "GET", "/admin/ratelimit/violations", "limit=2", NULL);
    expect_status(&c, 200, NULL);
    keys = json_object_get(c.result, "keys");
    EXPECT(json_array_size(keys) == 2, "[%s] limit=2: %zu keys", ENG, json_array_size(keys));
    EXPECT(strcmp(str_of(json_array_get(keys, 1), "key_id"), "ak_violb") == 0, "second");
    EXPECT(int_of(c.result, "records_scanned") == 5, "scanned with a limit");
    done(&c);

    /* Periods around now and before it (records are selected by when they
     * were written). */
    {
        struct tm tm;
        time_t t = now - 3600;
        gmtime_r(&t, &tm);
        strftime(past, sizeof past, "%Y-%m-%dT%H:%M:%SZ", &tm);
        t = now + 3600;
        gmtime_r(&t, &tm);
        strftime(future, sizeof future, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    snprintf(q, sizeof q, "from=%s&to=%s", past, future);
    call(f, &c, "GET", "/admin/ratelimit/violations", q, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_array_size(json_object_get(c.result, "keys")) == 3, "[%s] around now", ENG);
    EXPECT(strcmp(str_of(c.result, "from"), past) == 0 &&
               strcmp(str_of(c.result, "to"), future) == 0,
           "from/to echoed: %s %s", str_of(c.result, "from"), str_of(c.result, "to"));
    done(&c);
    snprintf(q, sizeof q, "from=2020-01-01&to=%s", past);
    call(f, &c, "GET", "/admin/ratelimit/violations", q, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_array_size(json_object_get(c.result, "keys")) == 0, "[%s] before now", ENG);
    EXPECT(int_of(c.result, "records_scanned") == 0, "scanned before now");
    done(&c);
    snprintf(q, sizeof q, "to=%s", past); /* the day before `past`: nothing */
    call(f, &c, "GET", "/admin/ratelimit/violations", q, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_array_size(json_object_get(c.result, "keys")) == 0, "[%s] to only", ENG);
    done(&c);
    snprintf(q, sizeof q, "from=%s", past); /* to now */
    call(f, &c, "GET", "/admin/ratelimit/violations", q, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_array_size(json_object_get(c.result, "keys")) == 3, "[%s] from only", ENG);
    done(&c);

    /* Bad parameters. */
    expect_fail(f, "GET", "/admin/ratelimit/violations", "limit=0", NULL, 400, "invalid_parameter",
                "limit");
    expect_fail(f, "GET", "/admin/ratelimit/violations", "limit=1001", NULL, 400,
                "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/ratelimit/violations", "limit=1;DROP", NULL, 400,
                "invalid_parameter", "limit");
    expect_fail(f, "GET", "/admin/ratelimit/violations", "from=yesterday", NULL, 400,
                "invalid_parameter", "from");
    expect_fail(f, "GET", "/admin/ratelimit/violations", "to=2026-01-01%27%20OR%201=1", NULL, 400,
                "invalid_parameter", "to");
    expect_fail(f, "GET", "/admin/ratelimit/violations", "from=2026-01-02&to=2026-01-01", NULL, 400,
                "invalid_parameter", "after");
    snprintf(q, sizeof q, "from=%s", future);
    expect_fail(f, "GET", "/admin/ratelimit/violations", q, NULL, 400, "invalid_parameter",
                "after");
    expect_fail(f, "GET", "/admin/ratelimit/violations", "key_id=ak_viola", NULL, 400,
                "invalid_parameter", "key_id");
    expect_fail(f, "GET", "/admin/ratelimit/violations", "limit=1&limit=2", NULL, 400,
                "invalid_parameter", "more than once");
    expect_fail(f, "POST", "/admin/ratelimit/violations", NULL, NULL, 405, "method_not_allowed",
                "GET");
    expect_fail(f, "GET", "/admin/ratelimit", NULL, NULL, 404, "not_found", NULL);
    f->ctx.store = NULL;
    expect_fail(f, "GET", "/admin/ratelimit/violations", NULL, NULL, 503, "unavailable", NULL);
    f->ctx.store = f->st;
}

/* More records than one call reads: the first 10,000 (newest) are summed
 * and the answer says it is truncated. */
static void test_rl_violations_truncated(void **state)
{
    fx *f = *state;
    gw_call c;
    json_t *keys;
    int i;

    for (i = 0; i < 10001; i++) {
        phg_audit_event ev;
        memset(&ev, 0, sizeof ev);
        ev.key_id = i == 0 ? "ak_oldest" : (i % 2 ? "ak_odd" : "ak_even");
        ev.user_id = "u";
        ev.action = GW_RL_VIOLATION_ACTION;
        ev.resource = "key:x";
        ev.outcome = "denied";
        ev.details_json = "{\"count\":1,\"first\":\"2026-03-01T00:00:00.000000Z\","
                          "\"last\":\"2026-03-01T00:00:00.000000Z\",\"limit\":\"1/1s\","
                          "\"window_s\":1}";
        EXPECT_RC(phg_audit_append_async(f->audit, &ev, NULL, NULL), PHG_OK);
    }
    {
        phg_audit_event ev;
        memset(&ev, 0, sizeof ev);
        ev.action = "test.sync";
        ev.outcome = "success";
        EXPECT_RC(phg_audit_append(f->audit, &ev, NULL), PHG_OK); /* after all of them */
    }
    call(f, &c, "GET", "/admin/ratelimit/violations", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(int_of(c.result, "records_scanned") == 10000, "scanned %lld",
           (long long)int_of(c.result, "records_scanned"));
    EXPECT(json_is_true(json_object_get(c.result, "truncated")), "not truncated");
    keys = json_object_get(c.result, "keys");
    EXPECT(json_array_size(keys) == 2, "%zu keys (the oldest record must be left out)",
           json_array_size(keys));
    EXPECT(int_of(json_array_get(keys, 0), "violations") == 5000 &&
               int_of(json_array_get(keys, 1), "violations") == 5000,
           "sums");
    done(&c);
}

/* tests/redis_server.sh (env PHG_REDIS_SERVER, else next to this file's
 * folder) with a command on dir; its exit status. */
static int redis_script(const char *cmd, const char *dir)
{
    char script[1024], line[1400], *slash;
    const char *env = getenv("PHG_REDIS_SERVER");
    if (env != NULL && env[0] != '\0') {
        snprintf(script, sizeof script, "%s", env);
    } else {
        snprintf(script, sizeof script, "%s", __FILE__); /* .../tests/unit/test_admin_api.c */
        slash = strrchr(script, '/');
        if (slash != NULL) {
            *slash = '\0';
            slash = strrchr(script, '/');
        }
        if (slash == NULL)
            snprintf(script, sizeof script, "tests/redis_server.sh");
        else
            snprintf(slash, sizeof script - (size_t)(slash - script), "/redis_server.sh");
    }
    snprintf(line, sizeof line, "sh '%s' %s '%s' >/dev/null", script, cmd, dir);
    return system(line);
}

/* The same endpoints with rate limits on Redis: usage reads Redis's counts,
 * reset clears Redis's and the local (fallback) ones, and a Redis that does
 * not answer is 503. Needs redis-server: fails without it, never skips. */
static void test_rl_redis(void **state)
{
    fx *f = *state;
    char *dir = f->redis_dir, path[128], err[256] = "", id[PHG_APIKEY_ID_MAX + 1];
    phg_rl_policy p;
    phg_rl_decision d;
    json_t *w;
    gw_call c;
    FILE *pf;
    int port = 0, i, admitted = 0;

    snprintf(f->redis_dir, sizeof f->redis_dir, "/tmp/phg-rladmin-redis-XXXXXX");
    if (mkdtemp(f->redis_dir) == NULL) {
        f->redis_dir[0] = '\0';
        fail_msg("mkdtemp");
    }
    EXPECT(redis_script("start", dir) == 0, "cannot start redis-server (tests/redis_server.sh)");
    snprintf(path, sizeof path, "%s/ports", dir);
    pf = fopen(path, "r");
    EXPECT(pf != NULL, "no %s", path);
    EXPECT(fscanf(pf, "%d", &port) == 1, "no port in %s", path);
    fclose(pf);

    snprintf(f->cfg->rl_engine, sizeof f->cfg->rl_engine, "redis");
    snprintf(f->cfg->rl_redis_host, sizeof f->cfg->rl_redis_host, "127.0.0.1");
    f->cfg->rl_redis_port = port;
    f->cfg->rl_timeout_ms = 2000; /* a loaded test machine is not a slow Redis */

    create_key(f, "{\"role\":\"user\",\"user_id\":\"42\",\"rate_limit\":\"4/1h,10/1d\"}", id, NULL);
    EXPECT(phg_rl_policy_parse("4/1h,10/1d", &p, err, sizeof err) == PHG_OK, "parse: %s", err);
    /* Counted on Redis the way the gateway counts: 3 of them. */
    for (i = 0; i < 3; i++) {
        EXPECT_RC(gw_redis_decide_sync("127.0.0.1", port, 2000, "check", id, strlen(id), &p, &d),
                  PHG_OK);
        admitted += d.allowed != 0;
    }
    EXPECT(admitted == 3, "%d admitted", admitted);
    /* And one on the local engine, which usage must not show. */
    EXPECT(rl_hits(f, id, "4/1h,10/1d", 1) == 1, "local");

    usage(f, &c, id);
    EXPECT(strcmp(str_of(c.result, "engine"), "redis") == 0, "engine");
    w = json_object_get(c.result, "windows");
    EXPECT(json_array_size(w) == 2, "windows");
    expect_window(json_array_get(w, 0), 4, 3600, 3);
    expect_window(json_array_get(w, 1), 10, 86400, 3);
    EXPECT(strcmp(str_of(c.audit_details, "engine"), "redis") == 0, "details engine");
    done(&c);
    EXPECT_RC(gw_redis_decide_sync("127.0.0.1", port, 2000, "check", id, strlen(id), &p, &d),
              PHG_OK);
    EXPECT(d.allowed, "the 4th");
    usage(f, &c, id);
    w = json_object_get(c.result, "windows");
    expect_window(json_array_get(w, 0), 4, 3600, 4);
    expect_window(json_array_get(w, 1), 10, 86400, 4);
    done(&c);

    /* Reset: Redis and the local engine. */
    snprintf(path, sizeof path, "/admin/keys/%s/ratelimit/reset", id);
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.audit_details, "engine"), "redis") == 0, "details engine");
    done(&c);
    usage(f, &c, id);
    expect_window(json_array_get(json_object_get(c.result, "windows"), 0), 4, 3600, 0);
    done(&c);
    EXPECT(rl_hits(f, id, "4/1h,10/1d", 4) == 4, "the local counts were not reset");

    /* Redis gone: 503, quickly (the timeout), for both. */
    EXPECT(redis_script("stop", dir) == 0, "stop redis");
    f->cfg->rl_timeout_ms = 200;
    snprintf(path, sizeof path, "/admin/keys/%s/ratelimit", id);
    expect_fail(f, "GET", path, NULL, NULL, 503, "unavailable", "Redis");
    snprintf(path, sizeof path, "/admin/keys/%s/ratelimit/reset", id);
    expect_fail(f, "POST", path, NULL, NULL, 503, "unavailable", "Redis");
    /* The local counts were reset all the same (the fallback's). */
    EXPECT(rl_hits(f, id, "4/1h,10/1d", 4) == 4, "the local counts were not reset");
}

/* Ids are checked before anything else, on every rate-limit endpoint. */
static void test_rl_ids_checked(void **state)
{
    fx *f = *state;
    static const char *const bad[] = {
        "' OR 1=1--",
        "ak_' OR '1'='1",
        "ak_",
        "AK_abc",
        "ak_ABC",
        "ak_abc;DROP TABLE api_keys",
        "ak_abc def",
        "xk_abc",
        "ak_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "%00",
        "..",
        "ak_\xc3\xa9",
        "ak_x\"}",
    };
    char path[256];
    size_t i;
    gw_call c;

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, "/admin/keys/%s/ratelimit", bad[i]);
        expect_fail(f, "GET", path, NULL, NULL, 400, "invalid_parameter", "key id");
        expect_fail(f, "PUT", path, NULL, "{\"limit\":\"1/1m\"}", 400, "invalid_parameter",
                    "key id");
        snprintf(path, sizeof path, "/admin/keys/%s/ratelimit/reset", bad[i]);
        expect_fail(f, "POST", path, NULL, NULL, 400, "invalid_parameter", "key id");
    }
    /* The resource of a refused call does not carry the bad id. */
    call(f, &c, "GET", "/admin/keys/ak_' OR 1=1/ratelimit", NULL, NULL);
    EXPECT(strcmp(c.resource, "key:(invalid)") == 0, "resource %s", c.resource);
    done(&c);
    /* A user key cannot use them. */
    call_as(f, &c, &f->user, "POST", "/admin/keys/ak_usertest000000001/ratelimit/reset", NULL,
            NULL);
    expect_status(&c, 403, "forbidden");
    done(&c);
    call_as(f, &c, &f->user, "GET", "/admin/ratelimit/violations", NULL, NULL);
    expect_status(&c, 403, "forbidden");
    done(&c);
    /* Nothing was stored. */
    {
        phg_apikey_record *recs = NULL;
        size_t n = 99;
        EXPECT_RC(phg_keys_list(f->keys, "", 10, &recs, &n), PHG_OK);
        EXPECT(n == 0, "%zu keys", n);
        free(recs);
    }
    /* The OpenAPI document has the endpoints. */
    call(f, &c, "GET", "/admin/openapi.json", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_object_get(json_object_get(c.result, "paths"), "/admin/keys/{id}/ratelimit") !=
                   NULL &&
               json_object_get(json_object_get(c.result, "paths"),
                               "/admin/keys/{id}/ratelimit/reset") != NULL &&
               json_object_get(json_object_get(c.result, "paths"), "/admin/ratelimit/violations") !=
                   NULL,
           "the OpenAPI document lacks the rate-limit endpoints");
    done(&c);
}

/* ---- webhooks ----------------------------------------------------------------------------- */

/*
 * The webhook endpoints run with a configuration holding one [webhook:garmin]
 * section and a real inbox on the test store (ctx.wh_inbox; no gw_webhooks,
 * so no reload or kick happens). Secrets are made fresh for each test, and
 * checked never to appear in an answer, a message, audit_details, or the
 * audit records the server would write from them (record_call).
 */

#define WH_CONF_FILE "/etc/phigate/garmin-token.txt"
#define WH_BODY "{\"hr\":61,\"user\":\"42\"}"

static int setup_wh(void **state)
{
    fx *f;
    gw_wh_conf *c;
    if (setup(state) != 0)
        return -1;
    f = *state;
    f->cfg = calloc(1, sizeof *f->cfg);
    if (f->cfg == NULL)
        return -1;
    c = &f->cfg->wh_sources[0];
    snprintf(c->name, sizeof c->name, "garmin");
    snprintf(c->scheme, sizeof c->scheme, "unsigned");
    snprintf(c->secret_files[0], sizeof c->secret_files[0], WH_CONF_FILE);
    c->n_secret_files = 1;
    c->tolerance_s = 300;
    c->max_body = 1u << 20;
    snprintf(c->deliver_to, sizeof c->deliver_to, "http://127.0.0.1:9/garmin");
    f->cfg->n_wh_sources = 1;
    f->ctx.cfg = f->cfg;
    EXPECT_RC(phg_wh_inbox_open(f->st, f->kr, NULL, &f->inbox), PHG_OK);
    f->ctx.wh_inbox = f->inbox;
    return 0;
}

static int teardown_wh(void **state)
{
    fx *f = *state;
    if (f != NULL) {
        phg_wh_inbox_close(f->inbox);
        free(f->cfg);
    }
    return teardown(state);
}

/* What server.c writes after an admin call (call_record): the record of c. */
static void record_call(fx *f, const gw_call *c)
{
    phg_audit_event ev;
    json_t *d = c->audit_details != NULL ? json_deep_copy(c->audit_details) : json_object();
    char *details;
    int failed = c->status >= 400;
    memset(&ev, 0, sizeof ev);
    json_object_set_new(d, "status", json_integer(c->status));
    if (failed)
        json_object_set_new(d, "error", json_string(c->err_code));
    details = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    ev.request_id = c->request_id;
    ev.key_id = ADMIN_KEY_ID;
    ev.user_id = "root";
    ev.role = "admin";
    ev.action = c->action[0] ? c->action : "http.request";
    ev.resource = c->resource[0] ? c->resource : NULL;
    ev.outcome = failed ? (c->status == 403 ? "denied" : "error") : "success";
    ev.ip = c->ip;
    ev.details_json = details;
    EXPECT_RC(phg_audit_append(f->audit, &ev, NULL), PHG_OK);
    free(details);
}

/* The secret's text must appear nowhere in what a call gave back or
 * recorded: its whole text, nor the key part after the prefix. */
static void expect_no_secret(const gw_call *c, const char *secret)
{
    const char *core = strchr(secret, '_') != NULL ? strchr(secret, '_') + 1 : secret;
    char *res = c->result != NULL ? json_dumps(c->result, JSON_COMPACT) : NULL;
    char *det = c->audit_details != NULL ? json_dumps(c->audit_details, JSON_COMPACT) : NULL;
    EXPECT(strstr(c->err_msg, core) == NULL, "[%s] %s %s: the secret in the message", ENG,
           c->method, c->path);
    EXPECT(res == NULL || strstr(res, core) == NULL, "[%s] %s %s: the secret in the answer", ENG,
           c->method, c->path);
    EXPECT(det == NULL || strstr(det, core) == NULL, "[%s] %s %s: the secret in audit_details", ENG,
           c->method, c->path);
    free(res);
    free(det);
}

/* A call on the webhook endpoints: checked for secrets and recorded as the
 * server would. */
static void wh_call(fx *f, gw_call *c, const char *method, const char *path, const char *query,
                    const char *body, const char *secret)
{
    call(f, c, method, path, query, body);
    if (secret != NULL)
        expect_no_secret(c, secret);
    record_call(f, c);
}

static void wh_expect_fail(fx *f, const char *method, const char *path, const char *query,
                           const char *body, const char *secret, int status, const char *code,
                           const char *word)
{
    gw_call c;
    wh_call(f, &c, method, path, query, body, secret);
    expect_status(&c, status, code);
    if (word != NULL)
        EXPECT(strstr(c.err_msg, word) != NULL, "[%s] %s %s?%s: message \"%s\" lacks \"%s\"", ENG,
               method, path, query ? query : "", c.err_msg, word);
    done(&c);
}

/* No audit record holds text (the whole audit log is read). */
static void expect_audit_lacks(fx *f, const char *text)
{
    phg_audit_filter flt;
    phg_audit_row *rows = NULL;
    size_t n = 0, i;
    char err[256] = "";
    memset(&flt, 0, sizeof flt);
    flt.limit = PHG_AUDIT_QUERY_MAX;
    EXPECT_RC(phg_audit_query(f->st, &flt, &rows, &n, err, sizeof err), PHG_OK);
    EXPECT(n > 0, "[%s] no audit records", ENG);
    for (i = 0; i < n; i++)
        EXPECT(strstr(rows[i].json, text) == NULL, "[%s] an audit record holds a secret: %s", ENG,
               rows[i].json);
    phg_audit_rows_free(rows, n);
}

/* The records of one action, newest first (at most 100): a JSON array. */
static json_t *audit_of(fx *f, const char *action)
{
    phg_audit_filter flt;
    phg_audit_row *rows = NULL;
    size_t n = 0, i;
    char err[256] = "";
    json_t *arr = json_array();
    memset(&flt, 0, sizeof flt);
    flt.action = action;
    flt.limit = 100;
    EXPECT_RC(phg_audit_query(f->st, &flt, &rows, &n, err, sizeof err), PHG_OK);
    for (i = 0; i < n; i++)
        json_array_append_new(arr, json_loads(rows[i].json, 0, NULL));
    phg_audit_rows_free(rows, n);
    return arr;
}

static void new_secret(char out[PHG_WEBHOOK_WHSEC_LEN + 1])
{
    EXPECT_RC(phg_webhook_secret_generate(out), PHG_OK);
}

/* The source named name in a list answer, or NULL. */
static json_t *source_in(json_t *list, const char *name, const char *origin)
{
    json_t *item;
    size_t i;
    json_array_foreach(json_object_get(list, "sources"), i, item) {
        if (strcmp(str_of(item, "name"), name) == 0 && strcmp(str_of(item, "origin"), origin) == 0)
            return item;
    }
    return NULL;
}

static void test_wh_sources(void **state)
{
    fx *f = *state;
    char s1[PHG_WEBHOOK_WHSEC_LEN + 1], s2[PHG_WEBHOOK_WHSEC_LEN + 1];
    char s3[PHG_WEBHOOK_WHSEC_LEN + 1], body[1024], fp0[20], fp1[20];
    phg_webhook_source_info *info = NULL;
    json_t *src, *secrets, *fps, *recs;
    char *text;
    gw_call c;
    size_t i;

    new_secret(s1);
    new_secret(s2);
    new_secret(s3);

    /* The configured source is listed, without its file path. */
    wh_call(f, &c, "GET", "/admin/webhooks/sources", NULL, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_array_size(json_object_get(c.result, "sources")) == 1, "[%s] %zu sources", ENG,
           json_array_size(json_object_get(c.result, "sources")));
    src = source_in(c.result, "garmin", "config");
    EXPECT(src != NULL, "[%s] the configured source is not listed", ENG);
    EXPECT(strcmp(str_of(src, "scheme"), "unsigned") == 0 &&
               strcmp(str_of(src, "deliver_to"), "http://127.0.0.1:9/garmin") == 0 &&
               int_of(src, "tolerance_s") == 300,
           "[%s] configured source fields", ENG);
    text = json_dumps(c.result, JSON_COMPACT);
    EXPECT(text != NULL && strstr(text, WH_CONF_FILE) == NULL, "a secret file path in %s", text);
    free(text);
    EXPECT(strcmp(c.action, "admin.webhooks.source.list") == 0, "action %s", c.action);
    done(&c);

    /* Create: two secrets, the second with an end (Unix seconds). */
    snprintf(body, sizeof body,
             "{\"name\":\"oura-1\",\"scheme\":\"standard-webhooks\","
             "\"deliver_to\":\"https://up.example/in\",\"tolerance_s\":120,"
             "\"secrets\":[{\"secret\":\"%s\"},{\"secret\":\"%s\",\"not_after\":4102444800}]}",
             s1, s2);
    wh_call(f, &c, "POST", "/admin/webhooks/sources", NULL, body, s1);
    expect_no_secret(&c, s2);
    expect_status(&c, 201, NULL);
    EXPECT(strcmp(str_of(c.result, "name"), "oura-1") == 0 &&
               strcmp(str_of(c.result, "scheme"), "standard-webhooks") == 0 &&
               strcmp(str_of(c.result, "origin"), "store") == 0 &&
               strcmp(str_of(c.result, "deliver_to"), "https://up.example/in") == 0 &&
               int_of(c.result, "tolerance_s") == 120,
           "[%s] created source fields", ENG);
    secrets = json_object_get(c.result, "secrets");
    EXPECT(json_array_size(secrets) == 2, "[%s] %zu secrets", ENG, json_array_size(secrets));
    snprintf(fp0, sizeof fp0, "%s", str_of(json_array_get(secrets, 0), "fingerprint"));
    snprintf(fp1, sizeof fp1, "%s", str_of(json_array_get(secrets, 1), "fingerprint"));
    EXPECT(strncmp(fp0, "fp:", 3) == 0 && strlen(fp0) == 19 && strcmp(fp0, fp1) != 0,
           "[%s] fingerprints %s %s", ENG, fp0, fp1);
    EXPECT(int_of(json_array_get(secrets, 0), "index") == 0 &&
               int_of(json_array_get(secrets, 1), "index") == 1,
           "[%s] indexes", ENG);
    EXPECT(json_is_null(json_object_get(json_array_get(secrets, 0), "not_after")) &&
               strcmp(str_of(json_array_get(secrets, 1), "not_after"), "2100-01-01T00:00:00Z") == 0,
           "[%s] not_after", ENG);
    EXPECT(json_object_get(json_array_get(secrets, 0), "secret") == NULL, "a secret member");
    EXPECT(strcmp(c.action, "admin.webhooks.source.create") == 0 &&
               strcmp(c.resource, "webhook_source:oura-1") == 0,
           "action %s resource %s", c.action, c.resource);
    EXPECT(strcmp(str_of(c.audit_details, "name"), "oura-1") == 0 &&
               strcmp(str_of(c.audit_details, "scheme"), "standard-webhooks") == 0,
           "[%s] details", ENG);
    fps = json_object_get(c.audit_details, "fingerprints");
    EXPECT(json_array_size(fps) == 2 &&
               strcmp(json_string_value(json_array_get(fps, 0)), fp0) == 0 &&
               strcmp(json_string_value(json_array_get(fps, 1)), fp1) == 0,
           "[%s] details fingerprints", ENG);
    done(&c);

    /* Stored as sent (the wipe of the body came after the store had it). */
    EXPECT_RC(phg_webhook_sources_get(f->st, f->mk, "oura-1", &info), PHG_OK);
    EXPECT(info->n_active == 2 && info->active[0].len == strlen(s1) &&
               memcmp(info->active[0].text, s1, strlen(s1)) == 0 &&
               memcmp(info->active[1].text, s2, strlen(s2)) == 0 &&
               info->active[1].not_after == 4102444800LL,
           "[%s] the stored secrets differ from those sent", ENG);
    phg_webhook_source_info_free(info);
    info = NULL;

    /* Listed with the configured one; shown with its secrets' metadata. */
    wh_call(f, &c, "GET", "/admin/webhooks/sources", NULL, NULL, s1);
    expect_status(&c, 200, NULL);
    EXPECT(json_array_size(json_object_get(c.result, "sources")) == 2, "[%s] %zu sources", ENG,
           json_array_size(json_object_get(c.result, "sources")));
    src = source_in(c.result, "oura-1", "store");
    EXPECT(src != NULL && json_object_get(src, "secrets") == NULL &&
               json_is_false(json_object_get(src, "shadowed")) &&
               json_is_string(json_object_get(src, "created_at")),
           "[%s] the store source in the list", ENG);
    done(&c);
    wh_call(f, &c, "GET", "/admin/webhooks/sources/oura-1", NULL, NULL, s1);
    expect_status(&c, 200, NULL);
    secrets = json_object_get(c.result, "secrets");
    EXPECT(json_array_size(secrets) == 2 &&
               strcmp(str_of(json_array_get(secrets, 0), "fingerprint"), fp0) == 0 &&
               strcmp(str_of(json_array_get(secrets, 0), "state"), "active") == 0 &&
               json_is_null(json_object_get(json_array_get(secrets, 0), "retired_at")),
           "[%s] show secrets", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.source.get") == 0, "action %s", c.action);
    done(&c);
    wh_call(f, &c, "GET", "/admin/webhooks/sources/garmin", NULL, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "origin"), "config") == 0 &&
               json_is_array(json_object_get(c.result, "secrets")),
           "[%s] show a configured source", ENG);
    done(&c);
    wh_expect_fail(f, "GET", "/admin/webhooks/sources/nope", NULL, NULL, NULL, 404, "not_found",
                   NULL);

    /* Refusals: a name taken (in the store, in the file), bad values. */
    wh_expect_fail(f, "POST", "/admin/webhooks/sources", NULL, body, s1, 409, "conflict", NULL);
    snprintf(body, sizeof body,
             "{\"name\":\"garmin\",\"scheme\":\"standard-webhooks\","
             "\"deliver_to\":\"https://up.example/in\",\"secrets\":[{\"secret\":\"%s\"}]}",
             s3);
    wh_expect_fail(f, "POST", "/admin/webhooks/sources", NULL, body, s3, 409, "conflict",
                   "configuration file");
    {
        /* body = pre, the secret (sec; NULL: s3), post */
#define WH_HEAD                                                                                    \
    "{\"name\":\"a\",\"scheme\":\"standard-webhooks\",\"deliver_to\":\"https://u.example/\","
        static const struct {
            const char *pre, *sec, *post, *word;
        } bad[] = {
            /* too short a key: the library's sentence, never the secret */
            {WH_HEAD "\"secrets\":[{\"secret\":\"", "whsec_QUJDREVGR0g=", "\"}]}", "secret"},
            {"{\"name\":\"a\",\"scheme\":\"nope\",\"deliver_to\":\"https://u.example/\","
             "\"secrets\":[{\"secret\":\"",
             NULL, "\"}]}", "scheme"},
            {"{\"name\":\"Bad Name\",\"scheme\":\"stripe\",\"deliver_to\":\"https://u.example/\","
             "\"secrets\":[{\"secret\":\"",
             NULL, "\"}]}", "name"},
            {"{\"name\":\"a\",\"scheme\":\"standard-webhooks\",\"deliver_to\":\"ftp://u.example/\","
             "\"secrets\":[{\"secret\":\"",
             NULL, "\"}]}", "deliver_to"},
            {WH_HEAD "\"tolerance_s\":0,\"secrets\":[{\"secret\":\"", NULL, "\"}]}", "tolerance_s"},
            {WH_HEAD "\"secrets\":[", "", "]}", "secrets"},
            {WH_HEAD "\"secrets\":\"", NULL, "\"}", "secrets"},
            {WH_HEAD "\"secrets\":[\"", NULL, "\"]}", "secrets[0]"},
            {WH_HEAD "\"secrets\":[{\"secret\":\"", NULL, "\",\"kid\":1}]}", "kid"},
            {WH_HEAD "\"secrets\":[{\"secret\":\"", NULL, "\",\"not_after\":1000}]}", "past"},
            {WH_HEAD "\"secrets\":[{\"secret\":\"", NULL, "\",\"not_after\":\"soon\"}]}",
             "not_after"},
            {WH_HEAD "\"secrets\":[{\"secret\":\"", NULL, "\"}],\"verify_token\":\"x y\"}",
             "verify_token"},
            {WH_HEAD "\"secrets\":[{\"secret\":\"", NULL, "\"}],\"verify_token\":\"\"}",
             "verify_token"},
            {WH_HEAD "\"secrets\":[{\"secret\":\"", NULL, "\"}],\"verify_token\":7}",
             "verify_token"},
        };
#undef WH_HEAD
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            const char *sec = bad[i].sec != NULL ? bad[i].sec : s3;
            gw_call b;
            snprintf(body, sizeof body, "%s%s%s", bad[i].pre, sec, bad[i].post);
            wh_call(f, &b, "POST", "/admin/webhooks/sources", NULL, body, sec[0] ? sec : NULL);
            expect_status(&b, 400, "invalid_request");
            EXPECT(strstr(b.err_msg, bad[i].word) != NULL, "[%s] case %zu: \"%s\" lacks \"%s\"",
                   ENG, i, b.err_msg, bad[i].word);
            done(&b);
        }
    }
    /* NUL in a text: refused by the parser (JSON_ALLOW_NUL is not set). */
    wh_expect_fail(f, "POST", "/admin/webhooks/sources", NULL,
                   "{\"name\":\"a\\u0000b\",\"scheme\":\"stripe\",\"deliver_to\":\"https://"
                   "u.example/\",\"secrets\":[{\"secret\":\"whsec_x\"}]}",
                   NULL, 400, "invalid_json", NULL);
    /* Without a master key nothing can be stored. */
    snprintf(
        body, sizeof body,
        "{\"name\":\"b\",\"scheme\":\"standard-webhooks\",\"deliver_to\":\"https://u.example/\","
        "\"secrets\":[{\"secret\":\"%s\"}]}",
        s3);
    f->ctx.mk = NULL;
    wh_expect_fail(f, "POST", "/admin/webhooks/sources", NULL, body, s3, 503, "unavailable",
                   "master key");
    wh_expect_fail(f, "POST", "/admin/webhooks/sources/oura-1/secrets", NULL,
                   "{\"secret\":\"whsec_x\"}", NULL, 503, "unavailable", "master key");
    f->ctx.mk = f->mk;

    /* Add a secret: its index and fingerprint, never its text. */
    snprintf(body, sizeof body, "{\"secret\":\"%s\",\"not_after\":\"2099-01-01T00:00:00Z\"}", s3);
    wh_call(f, &c, "POST", "/admin/webhooks/sources/oura-1/secrets", NULL, body, s3);
    expect_status(&c, 201, NULL);
    EXPECT(int_of(c.result, "index") == 2 &&
               strncmp(str_of(c.result, "fingerprint"), "fp:", 3) == 0 &&
               strcmp(str_of(c.result, "not_after"), "2099-01-01T00:00:00Z") == 0,
           "[%s] add-secret answer", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.secret.add") == 0 &&
               strcmp(c.resource, "webhook_source:oura-1") == 0 &&
               int_of(c.audit_details, "index") == 2 &&
               strcmp(str_of(c.audit_details, "fingerprint"), str_of(c.result, "fingerprint")) == 0,
           "[%s] add-secret action %s details", ENG, c.action);
    done(&c);
    wh_expect_fail(f, "POST", "/admin/webhooks/sources/oura-1/secrets", NULL,
                   "{\"secret\":\"whsec_AAAA\"}", "whsec_AAAA", 400, "invalid_request", NULL);
    wh_expect_fail(f, "POST", "/admin/webhooks/sources/oura-1/secrets", NULL, "{\"secret\":1}",
                   NULL, 400, "invalid_request", "secret");
    wh_expect_fail(f, "POST", "/admin/webhooks/sources/oura-1/secrets", NULL, "{}", NULL, 400,
                   "invalid_request", "secret");
    snprintf(body, sizeof body, "{\"secret\":\"%s\"}", s3);
    wh_expect_fail(f, "POST", "/admin/webhooks/sources/nope/secrets", NULL, body, s3, 404,
                   "not_found", NULL);
    wh_expect_fail(f, "POST", "/admin/webhooks/sources/garmin/secrets", NULL, body, s3, 409,
                   "conflict", NULL);

    /* Retire: 0 and 1 go, 2 is the last and stays. */
    wh_call(f, &c, "DELETE", "/admin/webhooks/sources/oura-1/secrets/0", NULL, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(int_of(c.result, "index") == 0 && json_is_true(json_object_get(c.result, "retired")),
           "[%s] retire answer", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.secret.retire") == 0 &&
               int_of(c.audit_details, "index") == 0,
           "[%s] retire action %s", ENG, c.action);
    done(&c);
    wh_call(f, &c, "GET", "/admin/webhooks/sources/oura-1", NULL, NULL, NULL);
    secrets = json_object_get(c.result, "secrets");
    EXPECT(json_array_size(secrets) == 3 &&
               strcmp(str_of(json_array_get(secrets, 0), "state"), "retired") == 0 &&
               json_is_string(json_object_get(json_array_get(secrets, 0), "retired_at")) &&
               strcmp(str_of(json_array_get(secrets, 1), "state"), "active") == 0,
           "[%s] retired secret shown", ENG);
    done(&c);
    wh_call(f, &c, "DELETE", "/admin/webhooks/sources/oura-1/secrets/1", NULL, NULL, NULL);
    expect_status(&c, 200, NULL);
    done(&c);
    wh_expect_fail(f, "DELETE", "/admin/webhooks/sources/oura-1/secrets/2", NULL, NULL, NULL, 409,
                   "conflict", "last");
    wh_expect_fail(f, "DELETE", "/admin/webhooks/sources/oura-1/secrets/9", NULL, NULL, NULL, 404,
                   "not_found", NULL);
    wh_expect_fail(f, "DELETE", "/admin/webhooks/sources/oura-1/secrets/x", NULL, NULL, NULL, 400,
                   "invalid_parameter", "index");
    wh_expect_fail(f, "DELETE", "/admin/webhooks/sources/oura-1/secrets/1234567890", NULL, NULL,
                   NULL, 400, "invalid_parameter", "index");
    wh_expect_fail(f, "DELETE", "/admin/webhooks/sources/garmin/secrets/0", NULL, NULL, NULL, 409,
                   "conflict", NULL);

    /* Remove. */
    wh_expect_fail(f, "DELETE", "/admin/webhooks/sources/garmin", NULL, NULL, NULL, 409, "conflict",
                   "configuration file");
    wh_call(f, &c, "DELETE", "/admin/webhooks/sources/oura-1", NULL, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "removed"), "oura-1") == 0, "[%s] remove answer", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.source.remove") == 0 &&
               strcmp(c.resource, "webhook_source:oura-1") == 0,
           "[%s] remove action %s resource %s", ENG, c.action, c.resource);
    done(&c);
    EXPECT_RC(phg_webhook_sources_get(f->st, NULL, "oura-1", &info), PHG_ERR_NOT_FOUND);
    wh_expect_fail(f, "DELETE", "/admin/webhooks/sources/oura-1", NULL, NULL, NULL, 404,
                   "not_found", NULL);

    /* The audit log: the create's record has the fingerprints, no record a secret. */
    recs = audit_of(f, "admin.webhooks.source.create");
    {
        json_t *rec, *ok = NULL;
        json_array_foreach(recs, i, rec) {
            json_t *det = json_object_get(rec, "details");
            if (json_integer_value(json_object_get(det, "status")) == 201)
                ok = det;
        }
        EXPECT(ok != NULL, "[%s] no record of the create", ENG);
        fps = json_object_get(ok, "fingerprints");
        EXPECT(json_array_size(fps) == 2 &&
                   strcmp(json_string_value(json_array_get(fps, 0)), fp0) == 0,
               "[%s] the create's record lacks the fingerprints", ENG);
    }
    json_decref(recs);
    expect_audit_lacks(f, s1 + 6);
    expect_audit_lacks(f, s2 + 6);
    expect_audit_lacks(f, s3 + 6);
}

/* The verify token of a source (the oura / fitbit handshake's): set on
 * create, replaced and cleared with PUT, shown only as has_verify_token,
 * never echoed nor audited. */
#define WH_OURA_SECRET "oura_client_secret_0123456789abcd"
#define WH_VT1 "vtok-ZQ8xK3pLm2Rt9WbY"
#define WH_VT2 "vtok2-Hc4Nq7Ls1Vd6PjXe"

static void test_wh_verify_token(void **state)
{
    fx *f = *state;
    phg_webhook_source_info *info = NULL;
    char body[1024], big[700];
    json_t *src;
    gw_call c;

    /* Create with one. */
    snprintf(body, sizeof body,
             "{\"name\":\"ring\",\"scheme\":\"oura\",\"deliver_to\":\"https://up.example/oura\","
             "\"secrets\":[{\"secret\":\"%s\"}],\"verify_token\":\" %s\\n\"}",
             WH_OURA_SECRET, WH_VT1);
    wh_call(f, &c, "POST", "/admin/webhooks/sources", NULL, body, WH_VT1);
    expect_no_secret(&c, WH_OURA_SECRET);
    expect_status(&c, 201, NULL);
    EXPECT(json_is_true(json_object_get(c.result, "has_verify_token")) &&
               json_object_get(c.result, "verify_token") == NULL,
           "[%s] create answer: has_verify_token", ENG);
    EXPECT(json_is_true(json_object_get(c.audit_details, "has_verify_token")) &&
               json_object_get(c.audit_details, "verify_token") == NULL,
           "[%s] create details: has_verify_token", ENG);
    done(&c);
    EXPECT_RC(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    EXPECT(info->verify_token != NULL && strcmp(info->verify_token, WH_VT1) == 0,
           "[%s] the stored verify token (trimmed) differs", ENG);
    phg_webhook_source_info_free(info);
    info = NULL;
    /* and one without (null: none) */
    snprintf(body, sizeof body,
             "{\"name\":\"ring2\",\"scheme\":\"fitbit\",\"deliver_to\":\"https://up.example/f\","
             "\"secrets\":[{\"secret\":\"%s\"}],\"verify_token\":null}",
             WH_OURA_SECRET);
    wh_call(f, &c, "POST", "/admin/webhooks/sources", NULL, body, WH_OURA_SECRET);
    expect_status(&c, 201, NULL);
    EXPECT(json_is_false(json_object_get(c.result, "has_verify_token")), "[%s] ring2", ENG);
    done(&c);

    /* GET and the list say whether there is one, never what. */
    wh_call(f, &c, "GET", "/admin/webhooks/sources/ring", NULL, NULL, WH_VT1);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_true(json_object_get(c.result, "has_verify_token")), "[%s] GET ring", ENG);
    done(&c);
    wh_call(f, &c, "GET", "/admin/webhooks/sources", NULL, NULL, WH_VT1);
    expect_status(&c, 200, NULL);
    src = source_in(c.result, "ring", "store");
    EXPECT(src != NULL && json_is_true(json_object_get(src, "has_verify_token")), "[%s] list ring",
           ENG);
    src = source_in(c.result, "ring2", "store");
    EXPECT(src != NULL && json_is_false(json_object_get(src, "has_verify_token")),
           "[%s] list ring2", ENG);
    src = source_in(c.result, "garmin", "config");
    EXPECT(src != NULL && json_is_false(json_object_get(src, "has_verify_token")),
           "[%s] list garmin", ENG);
    done(&c);

    /* PUT: replace it. */
    wh_call(f, &c, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
            "{\"verify_token\":\"" WH_VT2 "\"}", WH_VT2);
    expect_no_secret(&c, WH_VT1);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "name"), "ring") == 0 &&
               json_is_true(json_object_get(c.result, "has_verify_token")) &&
               json_object_size(c.result) == 2,
           "[%s] PUT answer", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.source.set_verify_token") == 0 &&
               strcmp(c.resource, "webhook_source:ring") == 0 &&
               json_is_true(json_object_get(c.audit_details, "has_verify_token")),
           "[%s] PUT action %s resource %s", ENG, c.action, c.resource);
    done(&c);
    EXPECT_RC(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    EXPECT(info->verify_token != NULL && strcmp(info->verify_token, WH_VT2) == 0 &&
               info->n_active == 1,
           "[%s] the stored verify token is not the new one", ENG);
    phg_webhook_source_info_free(info);
    info = NULL;
    /* set on ring2 too */
    wh_call(f, &c, "PUT", "/admin/webhooks/sources/ring2/verify-token", NULL,
            "{\"verify_token\":\"" WH_VT1 "\"}", WH_VT1);
    expect_status(&c, 200, NULL);
    done(&c);

    /* Refusals, never quoting the value. */
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL, "{}", NULL, 400,
                   "invalid_request", "verify_token");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":1}", NULL, 400, "invalid_request", "verify_token");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":[\"SEKRITx\"]}", "SEKRITx", 400, "invalid_request",
                   "verify_token");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":\"SEKRIT with space\"}", "SEKRIT with space", 400,
                   "invalid_request", "spaces");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":\"SEKRIT\\u0001x\"}", "SEKRIT", 400, "invalid_request",
                   "printable");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":\"\"}", NULL, 400, "invalid_request", "empty");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":\"SEKRITy\",\"x\":1}", "SEKRITy", 400, "invalid_request",
                   NULL);
    memset(big, 'K', 513);
    snprintf(body, sizeof body, "{\"verify_token\":\"%.513s\"}", big);
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL, body, NULL, 400,
                   "invalid_request", "512");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL, "not json", NULL,
                   400, "invalid_json", NULL);
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/nope/verify-token", NULL,
                   "{\"verify_token\":\"SEKRITz\"}", "SEKRITz", 404, "not_found", NULL);
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/garmin/verify-token", NULL,
                   "{\"verify_token\":\"SEKRITz\"}", "SEKRITz", 409, "conflict",
                   "configuration file");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/garmin/verify-token", NULL,
                   "{\"verify_token\":null}", NULL, 409, "conflict", NULL);
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/Bad%20Name/verify-token", NULL,
                   "{\"verify_token\":null}", NULL, 400, "invalid_parameter", NULL);
    wh_expect_fail(f, "GET", "/admin/webhooks/sources/ring/verify-token", NULL, NULL, NULL, 405,
                   "method_not_allowed", "PUT");
    wh_expect_fail(f, "POST", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":null}", NULL, 405, "method_not_allowed", "PUT");
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", "x=1",
                   "{\"verify_token\":null}", NULL, 400, "invalid_parameter", NULL);
    /* Setting needs the master key; clearing does not. */
    f->ctx.mk = NULL;
    wh_expect_fail(f, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
                   "{\"verify_token\":\"SEKRITz\"}", "SEKRITz", 503, "unavailable", "master key");
    wh_call(f, &c, "PUT", "/admin/webhooks/sources/ring2/verify-token", NULL,
            "{\"verify_token\":null}", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_false(json_object_get(c.result, "has_verify_token")) &&
               json_is_false(json_object_get(c.audit_details, "has_verify_token")),
           "[%s] clear without a master key", ENG);
    done(&c);
    f->ctx.mk = f->mk;
    /* nothing refused changed it */
    EXPECT_RC(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    EXPECT(info->verify_token != NULL && strcmp(info->verify_token, WH_VT2) == 0,
           "[%s] a refused PUT changed the verify token", ENG);
    phg_webhook_source_info_free(info);
    info = NULL;

    /* PUT null: clear it. */
    wh_call(f, &c, "PUT", "/admin/webhooks/sources/ring/verify-token", NULL,
            "{\"verify_token\":null}", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(json_is_false(json_object_get(c.result, "has_verify_token")), "[%s] clear", ENG);
    done(&c);
    wh_call(f, &c, "GET", "/admin/webhooks/sources/ring", NULL, NULL, NULL);
    EXPECT(json_is_false(json_object_get(c.result, "has_verify_token")) &&
               json_array_size(json_object_get(c.result, "secrets")) == 1,
           "[%s] GET after clear", ENG);
    done(&c);
    EXPECT_RC(phg_webhook_sources_get(f->st, f->mk, "ring", &info), PHG_OK);
    EXPECT(!info->has_verify_token && info->verify_token == NULL, "[%s] not cleared", ENG);
    phg_webhook_source_info_free(info);

    /* The audit log never holds one. */
    expect_audit_lacks(f, WH_VT1);
    expect_audit_lacks(f, WH_VT2);
    expect_audit_lacks(f, "SEKRIT");
    expect_audit_lacks(f, WH_OURA_SECRET);
}

/* A source of the store with the name of a configured one is shadowed. */
static void test_wh_sources_shadowed(void **state)
{
    fx *f = *state;
    char s1[PHG_WEBHOOK_WHSEC_LEN + 1], err[256] = "";
    phg_webhook_secret sec;
    phg_webhook_source_spec spec;
    json_t *src;
    gw_call c;

    new_secret(s1);
    sec.text = s1;
    sec.len = strlen(s1);
    sec.not_after = 0;
    memset(&spec, 0, sizeof spec);
    spec.name = "garmin";
    spec.scheme = "standard-webhooks";
    spec.deliver_to = "https://elsewhere.example/";
    spec.secrets = &sec;
    spec.n_secrets = 1;
    EXPECT(phg_webhook_sources_add(f->st, f->mk, &spec, err, sizeof err) == PHG_OK, "add: %s", err);
    call(f, &c, "GET", "/admin/webhooks/sources", NULL, NULL);
    expect_status(&c, 200, NULL);
    src = source_in(c.result, "garmin", "store");
    EXPECT(src != NULL && json_is_true(json_object_get(src, "shadowed")), "[%s] not shadowed", ENG);
    src = source_in(c.result, "garmin", "config");
    EXPECT(src != NULL && json_is_false(json_object_get(src, "shadowed")), "[%s] config", ENG);
    done(&c);
    /* Shown: the one in use, the file's. */
    call(f, &c, "GET", "/admin/webhooks/sources/garmin", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "origin"), "config") == 0 &&
               strcmp(str_of(c.result, "deliver_to"), "http://127.0.0.1:9/garmin") == 0,
           "[%s] show gave the shadowed source", ENG);
    done(&c);
    /* Without a configuration, the store's is the only one. */
    f->ctx.cfg = NULL;
    call(f, &c, "GET", "/admin/webhooks/sources/garmin", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "origin"), "store") == 0 &&
               json_is_false(json_object_get(c.result, "shadowed")),
           "[%s] show without config", ENG);
    done(&c);
    f->ctx.cfg = f->cfg;
}

/* Put an event in the inbox (synchronously); its id. */
static void put_event(fx *f, const char *source, const char *msg_id, int64_t received_ms,
                      char id[PHG_WH_EVENT_ID_LEN + 1])
{
    phg_wh_event_in in;
    memset(&in, 0, sizeof in);
    in.source = source;
    in.msg_id = msg_id;
    in.authenticated = 1;
    in.secret_index = 0;
    in.signed_ts_s = received_ms / 1000;
    in.received_ms = received_ms;
    in.content_type = "application/json";
    in.body = (const uint8_t *)WH_BODY;
    in.body_len = strlen(WH_BODY);
    in.request_id = "01JD8X3Q4ZK5M6N7P8R9S0T1V3";
    EXPECT_RC(phg_wh_inbox_put(f->inbox, &in, id), PHG_OK);
}

/* The ids of an events answer, in order, into ids (at most max); how many. */
static size_t event_ids(gw_call *c, char ids[][PHG_WH_EVENT_ID_LEN + 1], size_t max)
{
    json_t *arr = json_object_get(c->result, "events"), *ev;
    size_t i, n = 0;
    char *text = json_dumps(c->result, JSON_COMPACT);
    EXPECT(json_is_array(arr), "no events array");
    /* Never a body (PHI). */
    EXPECT(text != NULL && strstr(text, "\"hr\"") == NULL && strstr(text, "hr\\\"") == NULL,
           "a body in %s", text ? text : "?");
    free(text);
    json_array_foreach(arr, i, ev) {
        EXPECT(json_object_get(ev, "body") == NULL, "a body member");
        if (n < max)
            snprintf(ids[n++], PHG_WH_EVENT_ID_LEN + 1, "%s", str_of(ev, "id"));
    }
    return n;
}

static void list_events(fx *f, gw_call *c, const char *query)
{
    call(f, c, "GET", "/admin/webhooks/events", query, NULL);
    expect_status(c, 200, NULL);
}

static void test_wh_events(void **state)
{
    fx *f = *state;
    char ids[8][PHG_WH_EVENT_ID_LEN + 1], got[16][PHG_WH_EVENT_ID_LEN + 1];
    char path[128], q[128], next[PHG_WH_EVENT_ID_LEN + 1], lower[PHG_WH_EVENT_ID_LEN + 1];
    int64_t t0 = (int64_t)time(NULL) * 1000 - 60000;
    json_t *ev;
    gw_call c;
    size_t i, n, total;

    /* 0..4 oura-1, 5..6 whoop; 1 and 3 dead, 2 delivered, 5 dead. */
    for (i = 0; i < 7; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "msg_%zu", i);
        put_event(f, i < 5 ? "oura-1" : "whoop", msg, t0 + (int64_t)i * 1000, ids[i]);
    }
    EXPECT_RC(phg_wh_inbox_dead(f->inbox, ids[1], t0 + 10000, 500, "upstream answered 500"),
              PHG_OK);
    EXPECT_RC(phg_wh_inbox_dead(f->inbox, ids[3], t0 + 10000, 0, "connection refused"), PHG_OK);
    EXPECT_RC(phg_wh_inbox_dead(f->inbox, ids[5], t0 + 10000, 502, "bad gateway"), PHG_OK);
    EXPECT_RC(phg_wh_inbox_delivered(f->inbox, ids[2], t0 + 20000, 204), PHG_OK);

    /* All, newest first. */
    list_events(f, &c, NULL);
    n = event_ids(&c, got, 16);
    EXPECT(n == 7, "[%s] %zu events", ENG, n);
    for (i = 0; i < n; i++)
        EXPECT(strcmp(got[i], ids[6 - i]) == 0, "[%s] order at %zu", ENG, i);
    EXPECT(json_is_null(json_object_get(c.result, "next")), "[%s] next on the last page", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.event.list") == 0, "action %s", c.action);
    /* One event's members. */
    ev = json_array_get(json_object_get(c.result, "events"), 4); /* ids[2], delivered */
    EXPECT(
        strcmp(str_of(ev, "source"), "oura-1") == 0 && strcmp(str_of(ev, "msg_id"), "msg_2") == 0 &&
            strcmp(str_of(ev, "state"), "delivered") == 0 &&
            strcmp(str_of(ev, "request_id"), "01JD8X3Q4ZK5M6N7P8R9S0T1V3") == 0 &&
            json_is_true(json_object_get(ev, "authenticated")) && int_of(ev, "secret_index") == 0 &&
            int_of(ev, "received_ms") == t0 + 2000 &&
            int_of(ev, "signed_ts") == (t0 + 2000) / 1000 &&
            int_of(ev, "delivered_ms") == t0 + 20000 && int_of(ev, "last_status") == 204 &&
            int_of(ev, "attempts") == 1 && int_of(ev, "body_len") == (json_int_t)strlen(WH_BODY) &&
            strcmp(str_of(ev, "content_type"), "application/json") == 0 &&
            json_is_null(json_object_get(ev, "next_attempt_ms")),
        "[%s] event members", ENG);
    {
        const char *at = str_of(ev, "received_at");
        EXPECT(strlen(at) == 24 && at[19] == '.' && at[23] == 'Z', "[%s] received_at %s", ENG, at);
    }
    ev = json_array_get(json_object_get(c.result, "events"), 5); /* ids[1], dead */
    EXPECT(strcmp(str_of(ev, "state"), "dead") == 0 && int_of(ev, "last_status") == 500 &&
               strcmp(str_of(ev, "last_error"), "upstream answered 500") == 0 &&
               json_is_null(json_object_get(ev, "delivered_ms")),
           "[%s] dead event members", ENG);
    done(&c);

    /* By state, by source. */
    list_events(f, &c, "state=dead");
    n = event_ids(&c, got, 16);
    EXPECT(n == 3 && strcmp(got[0], ids[5]) == 0 && strcmp(got[1], ids[3]) == 0 &&
               strcmp(got[2], ids[1]) == 0,
           "[%s] dead: %zu", ENG, n);
    EXPECT(strcmp(str_of(c.audit_details, "state"), "dead") == 0 &&
               int_of(c.audit_details, "count") == 3,
           "[%s] list details", ENG);
    done(&c);
    list_events(f, &c, "state=delivered");
    n = event_ids(&c, got, 16);
    EXPECT(n == 1 && strcmp(got[0], ids[2]) == 0, "[%s] delivered: %zu", ENG, n);
    done(&c);
    list_events(f, &c, "state=pending");
    n = event_ids(&c, got, 16);
    EXPECT(n == 3, "[%s] pending: %zu", ENG, n);
    done(&c);
    list_events(f, &c, "source=whoop");
    n = event_ids(&c, got, 16);
    EXPECT(n == 2 && strcmp(got[0], ids[6]) == 0 && strcmp(got[1], ids[5]) == 0, "[%s] whoop: %zu",
           ENG, n);
    done(&c);
    list_events(f, &c, "source=oura-1&state=dead");
    n = event_ids(&c, got, 16);
    EXPECT(n == 2, "[%s] oura-1 dead: %zu", ENG, n);
    done(&c);

    /* Paging: 3 + 3 + 1, the same order as one page. */
    total = 0;
    next[0] = '\0';
    for (i = 0; i < 4; i++) {
        json_t *nx;
        if (next[0])
            snprintf(q, sizeof q, "limit=3&before=%s", next);
        else
            snprintf(q, sizeof q, "limit=3");
        list_events(f, &c, q);
        n = event_ids(&c, got + total, 16 - total);
        total += n;
        nx = json_object_get(c.result, "next");
        if (json_is_null(nx)) {
            done(&c);
            break;
        }
        EXPECT(n == 3 && strcmp(json_string_value(nx), got[total - 1]) == 0, "[%s] next", ENG);
        snprintf(next, sizeof next, "%s", json_string_value(nx));
        done(&c);
    }
    EXPECT(total == 7, "[%s] paged %zu events", ENG, total);
    for (i = 0; i < total && i < 7; i++)
        EXPECT(strcmp(got[i], ids[6 - i]) == 0, "[%s] paged order at %zu", ENG, i);

    /* One event; ids are case-insensitive. */
    snprintf(path, sizeof path, "/admin/webhooks/events/%s", ids[1]);
    call(f, &c, "GET", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "id"), ids[1]) == 0 &&
               strcmp(str_of(c.result, "state"), "dead") == 0 &&
               json_object_get(c.result, "body") == NULL,
           "[%s] get", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.event.get") == 0 &&
               strncmp(c.resource, "webhook_event:", 14) == 0,
           "action %s resource %s", c.action, c.resource);
    done(&c);
    for (i = 0; i <= PHG_WH_EVENT_ID_LEN; i++)
        lower[i] = (char)((ids[4][i] >= 'A' && ids[4][i] <= 'Z') ? ids[4][i] + 32 : ids[4][i]);
    snprintf(path, sizeof path, "/admin/webhooks/events/%s", lower);
    call(f, &c, "GET", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "id"), ids[4]) == 0, "[%s] get lowercase", ENG);
    done(&c);
    expect_fail(f, "GET", "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2", NULL, NULL, 404,
                "not_found", NULL);
    expect_fail(f, "GET", "/admin/webhooks/events/7ZZZZZZZZZZZZZZZZZZZZZZZZZ", NULL, NULL, 404,
                "not_found", NULL);
    expect_fail(f, "GET", "/admin/webhooks/events/nope", NULL, NULL, 400, "invalid_parameter",
                "ULID");
    expect_fail(f, "GET", "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2'--", NULL, NULL, 400,
                "invalid_parameter", "ULID");

    /* Replay one dead event. */
    snprintf(path, sizeof path, "/admin/webhooks/events/%s/replay", ids[1]);
    call(f, &c, "POST", path, NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(strcmp(str_of(c.result, "id"), ids[1]) == 0 &&
               strcmp(str_of(c.result, "state"), "pending") == 0,
           "[%s] replay answer", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.event.replay") == 0 &&
               strcmp(str_of(c.audit_details, "source"), "oura-1") == 0 &&
               strcmp(str_of(c.audit_details, "id"), ids[1]) == 0,
           "[%s] replay action %s", ENG, c.action);
    done(&c);
    snprintf(path, sizeof path, "/admin/webhooks/events/%s", ids[1]);
    call(f, &c, "GET", path, NULL, NULL);
    EXPECT(strcmp(str_of(c.result, "state"), "pending") == 0 && int_of(c.result, "attempts") == 0 &&
               json_is_integer(json_object_get(c.result, "next_attempt_ms")),
           "[%s] replayed event", ENG);
    done(&c);
    /* Not dead (now pending; delivered): 409; unknown: 404. */
    snprintf(path, sizeof path, "/admin/webhooks/events/%s/replay", ids[1]);
    expect_fail(f, "POST", path, NULL, NULL, 409, "conflict", "pending");
    snprintf(path, sizeof path, "/admin/webhooks/events/%s/replay", ids[2]);
    expect_fail(f, "POST", path, NULL, NULL, 409, "conflict", "delivered");
    expect_fail(f, "POST", "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2/replay", NULL, NULL,
                404, "not_found", NULL);
    snprintf(path, sizeof path, "/admin/webhooks/events/%s/replay", ids[3]);
    expect_fail(f, "POST", path, NULL, "{}", 400, "invalid_request", "body");

    /* Replay every dead event: of one source, then the rest. */
    EXPECT_RC(phg_wh_inbox_dead(f->inbox, ids[6], t0 + 30000, 500, "again"), PHG_OK);
    call(f, &c, "POST", "/admin/webhooks/events/replay", "source=whoop", NULL);
    expect_status(&c, 200, NULL);
    EXPECT(int_of(c.result, "replayed") == 2, "[%s] replayed %lld", ENG,
           (long long)int_of(c.result, "replayed"));
    EXPECT(strcmp(c.action, "admin.webhooks.event.replay_all") == 0 &&
               strcmp(str_of(c.audit_details, "source"), "whoop") == 0 &&
               int_of(c.audit_details, "replayed") == 2,
           "[%s] replay_all action %s", ENG, c.action);
    done(&c);
    list_events(f, &c, "state=dead");
    n = event_ids(&c, got, 16);
    EXPECT(n == 1 && strcmp(got[0], ids[3]) == 0, "[%s] dead left: %zu", ENG, n);
    done(&c);
    call(f, &c, "POST", "/admin/webhooks/events/replay", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(int_of(c.result, "replayed") == 1, "[%s] replayed the rest", ENG);
    done(&c);
    call(f, &c, "POST", "/admin/webhooks/events/replay", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(int_of(c.result, "replayed") == 0, "[%s] nothing left to replay", ENG);
    done(&c);

    /* The figures. */
    call(f, &c, "GET", "/admin/webhooks/stats", NULL, NULL);
    expect_status(&c, 200, NULL);
    EXPECT(int_of(c.result, "pending") == 6 && int_of(c.result, "delivered") == 1 &&
               int_of(c.result, "dead") == 0 && int_of(c.result, "written") == 7 &&
               int_of(c.result, "oldest_pending_ms") == t0 &&
               json_is_string(json_object_get(c.result, "oldest_pending_at")),
           "[%s] stats", ENG);
    EXPECT(strcmp(c.action, "admin.webhooks.stats") == 0, "action %s", c.action);
    done(&c);
}

static void test_wh_bad_input(void **state)
{
    fx *f = *state;
    static const char *const bad_queries[] = {
        "state=bogus",
        "state=DEAD",
        "limit=0",
        "limit=1001",
        "limit=x",
        "before=xyz",
        "before=01JD8X3Q4ZK5M6N7P8R9S0T1V2%27",
        "source=BAD",
        "source=a%2Fb",
        "after=01JD8X3Q4ZK5M6N7P8R9S0T1V2",
        "state=dead&state=dead",
    };
    static const struct {
        const char *method, *path;
    } wrong[] = {
        {"PUT", "/admin/webhooks/sources"},
        {"POST", "/admin/webhooks/sources/a"},
        {"PUT", "/admin/webhooks/sources/a"},
        {"GET", "/admin/webhooks/sources/a/secrets"},
        {"GET", "/admin/webhooks/sources/a/secrets/0"},
        {"POST", "/admin/webhooks/events"},
        {"GET", "/admin/webhooks/events/replay"},
        {"DELETE", "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2"},
        {"GET", "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2/replay"},
        {"POST", "/admin/webhooks/stats"},
    };
    static const char *const missing[] = {
        "/admin/webhooks",
        "/admin/webhooks/nope",
        "/admin/webhooks/sources/a/keys",
        "/admin/webhooks/sources/a/secrets/0/x",
        "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2/retry",
        "/admin/webhooks/stats/x",
    };
    gw_call c;
    size_t i;

    for (i = 0; i < sizeof bad_queries / sizeof bad_queries[0]; i++)
        expect_fail(f, "GET", "/admin/webhooks/events", bad_queries[i], NULL, 400,
                    "invalid_parameter", NULL);
    expect_fail(f, "POST", "/admin/webhooks/events/replay", "source=B!", NULL, 400,
                "invalid_parameter", "source");
    expect_fail(f, "POST", "/admin/webhooks/events/replay", "state=dead", NULL, 400,
                "invalid_parameter", "state");
    expect_fail(f, "GET", "/admin/webhooks/stats", "x=1", NULL, 400, "invalid_parameter", NULL);
    for (i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
        expect_fail(f, wrong[i].method, wrong[i].path, NULL, NULL, 405, "method_not_allowed", NULL);
    for (i = 0; i < sizeof missing / sizeof missing[0]; i++)
        expect_fail(f, "GET", missing[i], NULL, NULL, 404, "not_found", NULL);
    /* Source names are checked before any lookup. */
    expect_fail(f, "GET", "/admin/webhooks/sources/Oura", NULL, NULL, 400, "invalid_parameter",
                "source name");
    expect_fail(f, "DELETE", "/admin/webhooks/sources/a'--", NULL, NULL, 400, "invalid_parameter",
                "source name");
    expect_fail(f, "GET", "/admin/webhooks/sources/..", NULL, NULL, 400, "invalid_parameter",
                "source name");
    expect_fail(f, "POST", "/admin/webhooks/sources/../secrets", NULL, "{}", 400,
                "invalid_parameter", "source name");
    call(f, &c, "DELETE", "/admin/webhooks/sources/a b/secrets/0", NULL, NULL);
    expect_status(&c, 400, "invalid_parameter");
    EXPECT(strcmp(c.resource, "webhook_source:(invalid)") == 0, "resource %s", c.resource);
    done(&c);
    /* Bodies: not JSON, not an object, wrong type, too large. */
    expect_fail(f, "POST", "/admin/webhooks/sources", NULL, "{", 400, "invalid_json", NULL);
    expect_fail(f, "POST", "/admin/webhooks/sources", NULL, "[]", 400, "invalid_json", NULL);
    expect_fail(f, "POST", "/admin/webhooks/sources", NULL, "{\"name\":1}", 400, "invalid_request",
                "name");
    {
        size_t len = (64u << 10) + 2;
        char *big = malloc(len + 1);
        EXPECT(big != NULL, "malloc");
        memset(big, ' ', len);
        big[0] = '{';
        big[len - 1] = '}';
        big[len] = '\0';
        expect_fail(f, "POST", "/admin/webhooks/sources", NULL, big, 413, "payload_too_large",
                    NULL);
        free(big);
    }
    /* A user key cannot use them. */
    call_as(f, &c, &f->user, "GET", "/admin/webhooks/sources", NULL, NULL);
    expect_status(&c, 403, "forbidden");
    done(&c);
    call_as(f, &c, &f->user, "POST", "/admin/webhooks/events/replay", NULL, NULL);
    expect_status(&c, 403, "forbidden");
    done(&c);
    /* Without an inbox the event endpoints say so. */
    f->ctx.wh_inbox = NULL;
    expect_fail(f, "GET", "/admin/webhooks/events", NULL, NULL, 503, "webhooks_unavailable", NULL);
    expect_fail(f, "GET", "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2", NULL, NULL, 503,
                "webhooks_unavailable", NULL);
    expect_fail(f, "POST", "/admin/webhooks/events/01JD8X3Q4ZK5M6N7P8R9S0T1V2/replay", NULL, NULL,
                503, "webhooks_unavailable", NULL);
    expect_fail(f, "POST", "/admin/webhooks/events/replay", NULL, NULL, 503, "webhooks_unavailable",
                NULL);
    expect_fail(f, "GET", "/admin/webhooks/stats", NULL, NULL, 503, "webhooks_unavailable", NULL);
    f->ctx.wh_inbox = f->inbox;
    /* Nothing was stored by any of this. */
    {
        phg_webhook_source_info *infos = NULL;
        size_t n = 99;
        EXPECT_RC(phg_webhook_sources_list(f->st, &infos, &n), PHG_OK);
        EXPECT(n == 0, "[%s] %zu sources stored", ENG, n);
        phg_webhook_source_infos_free(infos, n);
    }
    /* The OpenAPI document has the endpoints. */
    call(f, &c, "GET", "/admin/openapi.json", NULL, NULL);
    expect_status(&c, 200, NULL);
    {
        static const char *const paths[] = {
            "/admin/webhooks/sources",
            "/admin/webhooks/sources/{name}",
            "/admin/webhooks/sources/{name}/secrets",
            "/admin/webhooks/sources/{name}/secrets/{index}",
            "/admin/webhooks/events",
            "/admin/webhooks/events/{id}",
            "/admin/webhooks/events/{id}/replay",
            "/admin/webhooks/events/replay",
            "/admin/webhooks/stats",
        };
        for (i = 0; i < sizeof paths / sizeof paths[0]; i++)
            EXPECT(json_object_get(json_object_get(c.result, "paths"), paths[i]) != NULL,
                   "the OpenAPI document lacks %s", paths[i]);
    }
    done(&c);
}

/* ---- main --------------------------------------------------------------------------------- */

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define T_RL(fn) cmocka_unit_test_setup_teardown(fn, setup_rl, teardown_rl)
#define T_WH(fn) cmocka_unit_test_setup_teardown(fn, setup_wh, teardown_wh)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_user_role_refused),   T(test_not_found),
        T(test_wrong_methods),       T(test_openapi_and_config),
        T(test_keys_create_get),     T(test_keys_create_bad_input),
        T(test_keys_list),           T(test_keys_ids_checked),
        T(test_keys_rotate_revoke),  T(test_keys_unaudited),
        T(test_audit_query),         T(test_audit_report),
        T(test_audit_verify),        T(test_phi_keyring),
        T(test_phi_keyring_unsaved), T(test_phi_keyring_unaudited),
        T(test_phi_keyring_stale),   T_RL(test_rl_usage),
        T_RL(test_rl_reset),         T_RL(test_rl_set_limit),
        T_RL(test_rl_violations),    T_RL(test_rl_violations_truncated),
        T_RL(test_rl_ids_checked),   T_RL(test_rl_redis),
        T_WH(test_wh_sources),       T_WH(test_wh_sources_shadowed),
        T_WH(test_wh_events),        T_WH(test_wh_bad_input),
        T_WH(test_wh_verify_token),
    };
    int failed = cmocka_run_group_tests_name("admin_api sqlite", tests, tdb_group_sqlite, NULL);
    failed += cmocka_run_group_tests_name("admin_api postgres", tests, tdb_group_postgres, NULL);
    return failed;
}
