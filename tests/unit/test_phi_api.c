/*
 * tests/unit/test_phi_api.c: the PHI transit API (src/server/phi_api.c)
 * against the contract at the top of that file: context canonical form and
 * every rejection, round trips (single and batch), authorization (scopes,
 * role user limited to its own user_id), crypto errors (wrong context,
 * tampering, destroyed key, no prefix), body shape errors, batch limits,
 * rewrap after rotation, and audit fields that never hold PHI.
 *
 * The handler is called directly with gw_call structs built here; no HTTP.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "gw.h"
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

#define DECRYPT_MSG "the ciphertext does not open under this context"

/* ---- fixture ----------------------------------------------------------------------------- */

typedef struct fx {
    phg_masterkeys *mk;
    phg_keyring *kr;
    gw_phi_ctx ctx;
    phg_identity admin;  /* role admin, both PHI scopes */
    phg_identity user42; /* role user "42", both PHI scopes */
    gw_call call;
    char *body; /* the last body sent */
} fx;

static void ident(phg_identity *id, const char *key_id, const char *user, phg_role role,
                  uint32_t scopes)
{
    memset(id, 0, sizeof *id);
    snprintf(id->key_id, sizeof id->key_id, "%s", key_id);
    snprintf(id->user_id, sizeof id->user_id, "%s", user);
    id->role = role;
    id->scopes = scopes;
}

static int setup(void **state)
{
    char mk_text[PHG_FERNET_KEY_TEXT_LEN + 1];
    fx *f = calloc(1, sizeof *f);
    EXPECT(f != NULL, "calloc");
    EXPECT_RC(phg_fernet_key_generate(mk_text), PHG_OK);
    EXPECT_RC(phg_phi_masterkeys_parse(mk_text, strlen(mk_text), &f->mk), PHG_OK);
    phg_wipe(mk_text, sizeof mk_text);
    EXPECT_RC(phg_keyring_create(f->mk, NULL, &f->kr), PHG_OK);
    f->ctx.keyring = f->kr;
    f->ctx.batch_max = 4;
    ident(&f->admin, "ak_admin", "root", PHG_ROLE_ADMIN,
          PHG_SCOPE_PHI_ENCRYPT | PHG_SCOPE_PHI_DECRYPT);
    ident(&f->user42, "ak_user42", "42", PHG_ROLE_USER,
          PHG_SCOPE_PHI_ENCRYPT | PHG_SCOPE_PHI_DECRYPT);
    *state = f;
    return 0;
}

static void call_reset(fx *f)
{
    json_decref(f->call.result);
    json_decref(f->call.audit_details);
    memset(&f->call, 0, sizeof f->call);
    free(f->body);
    f->body = NULL;
}

static int teardown(void **state)
{
    fx *f = *state;
    call_reset(f);
    phg_keyring_free(f->kr);
    phg_phi_masterkeys_free(f->mk);
    free(f);
    return 0;
}

/* Send a raw body to /v1/phi/<op> as id; returns the status. */
static int send_raw(fx *f, const phg_identity *id, const char *method, const char *op,
                    const char *content_type, const char *body, size_t body_len)
{
    static char path[128];
    call_reset(f);
    snprintf(path, sizeof path, "/v1/phi/%s", op);
    f->body = malloc(body_len + 1);
    EXPECT(f->body != NULL, "malloc");
    memcpy(f->body, body, body_len);
    f->body[body_len] = '\0';
    f->call.method = method;
    f->call.path = path;
    f->call.body = f->body;
    f->call.body_len = body_len;
    f->call.content_type = content_type;
    f->call.id = id;
    f->call.request_id = "01JTESTREQUEST0000000000000";
    f->call.ip = "127.0.0.1";
    gw_phi_handle(&f->ctx, &f->call);
    EXPECT(f->call.status >= 200 && f->call.status < 600, "no status set");
    if (f->call.status == 200)
        EXPECT(f->call.result != NULL, "200 without a result");
    else
        EXPECT(f->call.err_code[0] != '\0' && f->call.err_msg[0] != '\0',
               "error %d without code or message", f->call.status);
    return f->call.status;
}

/* Send a JSON value (stolen) as the body. */
static int send_json(fx *f, const phg_identity *id, const char *op, json_t *body)
{
    char *text;
    int st;
    EXPECT(body != NULL, "json_pack failed");
    text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    EXPECT(text != NULL, "json_dumps");
    st = send_raw(f, id, "POST", op, "application/json", text, strlen(text));
    free(text);
    return st;
}

static void expect_error(fx *f, int status, const char *code)
{
    EXPECT(f->call.status == status, "status %d (%s: %s), want %d %s", f->call.status,
           f->call.err_code, f->call.err_msg, status, code);
    EXPECT(strcmp(f->call.err_code, code) == 0, "code %s, want %s", f->call.err_code, code);
    EXPECT(f->call.result == NULL, "an error with a result");
}

static const char *res_str(fx *f, const char *name)
{
    json_t *v = json_object_get(f->call.result, name);
    EXPECT(json_is_string(v), "result has no string %s", name);
    return json_string_value(v);
}

/* Encrypt one plaintext as admin; the ciphertext into ct. */
static void encrypt_one(fx *f, json_t *context, const char *pt, char *ct, size_t cap)
{
    EXPECT(send_json(f, &f->admin, "encrypt",
                     json_pack("{s:o,s:s}", "context", context, "plaintext", pt)) == 200,
           "encrypt: %d %s %s", f->call.status, f->call.err_code, f->call.err_msg);
    EXPECT(strlen(res_str(f, "ciphertext")) < cap, "ciphertext too long for the test");
    snprintf(ct, cap, "%s", res_str(f, "ciphertext"));
}

static json_t *ctx42(void)
{
    return json_pack("{s:s,s:s}", "user_id", "42", "field", "hrv");
}

/* ---- contexts ---------------------------------------------------------------------------- */

static void canon_ok(const char *ctx_json, const char *want)
{
    char out[PHG_PHI_CONTEXT_MAX + 1], err[256];
    json_t *c = json_loads(ctx_json, 0, NULL);
    EXPECT(c != NULL, "bad test JSON %s", ctx_json);
    EXPECT(gw_phi_context(c, out, sizeof out, err, sizeof err) == 0, "%s: refused: %s", ctx_json,
           err);
    EXPECT(strcmp(out, want) == 0, "%s: got \"%s\", want \"%s\"", ctx_json, out, want);
    json_decref(c);
}

/* A context refused; err must name the rule (want_in) and never hold secret. */
static void canon_bad(json_t *c, const char *want_in, const char *secret)
{
    char out[PHG_PHI_CONTEXT_MAX + 1], err[256];
    EXPECT(gw_phi_context(c, out, sizeof out, err, sizeof err) == -1, "accepted: %s", out);
    EXPECT(strstr(err, want_in) != NULL, "message \"%s\" does not say \"%s\"", err, want_in);
    if (secret != NULL)
        EXPECT(strstr(err, secret) == NULL, "message \"%s\" echoes the value", err);
    json_decref(c);
}

static void test_context_canonical(void **state)
{
    char big[300], name64[65], name65[66], v256[257];
    json_t *c;
    int i;
    (void)state;
    canon_ok("{\"user_id\":\"42\",\"field\":\"hrv\"}", "field=hrv;user_id=42");
    canon_ok("{\"field\":\"hrv\",\"user_id\":\"42\"}", "field=hrv;user_id=42");
    canon_ok("{\"user_id\":42}", "user_id=42");
    canon_ok("{\"user_id\":\"42\",\"n\":-7,\"z\":0}", "n=-7;user_id=42;z=0");
    /* bytewise: '0' (0x30) < '_' (0x5f) < 'b' (0x62) */
    canon_ok("{\"user_id\":\"u\",\"ab\":\"1\",\"a_\":\"2\",\"a0\":\"3\"}",
             "a0=3;a_=2;ab=1;user_id=u");
    canon_ok("{\"user_id\":\"caf\\u00e9 \\u2603\"}", "user_id=caf\xc3\xa9 \xe2\x98\x83");
    canon_ok("{\"user_id\":9223372036854775807}", "user_id=9223372036854775807");

    /* limits accepted: a 64-byte name, a 256-byte value, 16 members */
    memset(name64, 'n', 64);
    name64[64] = '\0';
    memset(v256, 'v', 256);
    v256[256] = '\0';
    c = json_pack("{s:s,s:s}", "user_id", v256, name64, "x");
    {
        char out[PHG_PHI_CONTEXT_MAX + 1], err[256];
        EXPECT(gw_phi_context(c, out, sizeof out, err, sizeof err) == 0, "limits: %s", err);
        EXPECT(strlen(out) == 64 + 1 + 1 + 1 + 8 + 256, "length %zu", strlen(out));
    }
    json_decref(c);
    c = json_pack("{s:s}", "user_id", "1");
    for (i = 0; i < 15; i++) {
        char n[16];
        snprintf(n, sizeof n, "m%02d", i);
        json_object_set_new(c, n, json_integer(i));
    }
    {
        char out[PHG_PHI_CONTEXT_MAX + 1], err[256];
        EXPECT(gw_phi_context(c, out, sizeof out, err, sizeof err) == 0, "16 members: %s", err);
        EXPECT(strncmp(out, "m00=0;m01=1;", 12) == 0, "%s", out);
    }
    /* a 17th */
    json_object_set_new(c, "m99", json_integer(1));
    canon_bad(c, "more than 16", NULL);

    /* every rejection */
    canon_bad(json_string("user_id=42"), "JSON object", NULL);
    canon_bad(json_array(), "JSON object", NULL);
    canon_bad(NULL, "JSON object", NULL);
    canon_bad(json_object(), "empty", NULL);
    canon_bad(json_pack("{s:s}", "field", "hrv"), "no user_id", NULL);
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "Field", "x"), "[a-z0-9_]", NULL);
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "fi-eld", "x"), "[a-z0-9_]", NULL);
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "", "x"), "[a-z0-9_]", NULL);
    memset(name65, 'n', 65);
    name65[65] = '\0';
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", name65, "x"), "[a-z0-9_]", NULL);
    canon_bad(json_pack("{s:s}", "user_id", ""), "1 to 256 bytes", NULL);
    memset(big, 'v', 257);
    big[257] = '\0';
    canon_bad(json_pack("{s:s}", "user_id", big), "1 to 256 bytes", NULL);
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "f", "SECRET;x"), "';' or '='", "SECRET");
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "f", "SECRET=x"), "';' or '='", "SECRET");
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "f", "SECRET\nx"), "control", "SECRET");
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "f", "SECRET\tx"), "control", "SECRET");
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "f", "SECRET\x7fx"), "control", "SECRET");
    canon_bad(json_pack("{s:s,s:s}", "user_id", "1", "f", "SECRET\xc2\x85x"), "control", "SECRET");
    canon_bad(json_pack("{s:s,s:s%}", "user_id", "1", "f", "SE\0x", (size_t)4), "control", NULL);
    canon_bad(json_pack("{s:s,s:f}", "user_id", "1", "f", 1.5), "string or an integer", NULL);
    canon_bad(json_pack("{s:s,s:b}", "user_id", "1", "f", 1), "string or an integer", NULL);
    canon_bad(json_pack("{s:s,s:n}", "user_id", "1", "f"), "string or an integer", NULL);
    canon_bad(json_pack("{s:s,s:[]}", "user_id", "1", "f"), "string or an integer", NULL);
    canon_bad(json_pack("{s:s,s:{}}", "user_id", "1", "f"), "string or an integer", NULL);
    canon_bad(json_pack("{s:s}", "user_id", "SECRET;"), "user_id", "SECRET");
    /* the whole over 512 bytes: three values of 200 bytes */
    memset(big, 'v', 200);
    big[200] = '\0';
    canon_bad(json_pack("{s:s,s:s,s:s}", "user_id", big, "a", big, "b", big), "512", NULL);
    /* a caller buffer smaller than the result */
    {
        char out[8], err[128];
        c = json_pack("{s:s}", "user_id", "123456789");
        EXPECT(gw_phi_context(c, out, sizeof out, err, sizeof err) == -1, "small buffer");
        json_decref(c);
    }
}

/* ---- round trips ------------------------------------------------------------------------- */

static void test_roundtrip_single(void **state)
{
    fx *f = *state;
    char ct[1024], kid[PHG_PHI_KID_MAX + 1], primary[PHG_PHI_KID_MAX + 1];
    const char *pts[] = {"72 bpm", "", "caf\xc3\xa9 \xe2\x98\x83 \"quoted\" \\ /"};
    size_t i;

    EXPECT_RC(phg_keyring_primary(f->kr, primary), PHG_OK);
    for (i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        encrypt_one(f, ctx42(), pts[i], ct, sizeof ct);
        EXPECT(strncmp(ct, "phi1.", 5) == 0, "%s", ct);
        EXPECT(strcmp(res_str(f, "kid"), primary) == 0, "kid %s", res_str(f, "kid"));
        EXPECT_RC(phg_phi_ciphertext_kid(ct, strlen(ct), kid), PHG_OK);
        EXPECT(strcmp(kid, primary) == 0, "kid in the ciphertext");
        EXPECT(json_object_size(f->call.result) == 2, "encrypt result members");
        /* the context string is the canonical one: phi.h opens it directly */
        {
            uint8_t out[1024];
            size_t ol = 0;
            EXPECT_RC(phg_phi_decrypt(f->kr, "field=hrv;user_id=42", 20, ct, strlen(ct), out,
                                      sizeof out, &ol),
                      PHG_OK);
            EXPECT(ol == strlen(pts[i]) && memcmp(out, pts[i], ol) == 0, "library decrypt");
        }
        /* the same context with members in another order and user_id as an integer */
        EXPECT(send_json(f, &f->user42, "decrypt",
                         json_pack("{s:{s:s,s:i},s:s}", "context", "field", "hrv", "user_id", 42,
                                   "ciphertext", ct)) == 200,
               "decrypt: %s %s", f->call.err_code, f->call.err_msg);
        EXPECT(strcmp(res_str(f, "plaintext"), pts[i]) == 0, "plaintext differs");
        EXPECT(json_object_size(f->call.result) == 1, "decrypt result members");
    }

    /* "\u0000" is refused by the body parser (call.c parses without JSON_ALLOW_NUL) */
    {
        static const char nul[] = "{\"context\":{\"user_id\":\"42\"},\"plaintext\":\"a\\u0000b\"}";
        send_raw(f, &f->admin, "POST", "encrypt", "application/json", nul, sizeof nul - 1);
        expect_error(f, 400, "invalid_json");
    }

    /* a 64 KiB plaintext is accepted; one byte more is 413 */
    {
        char *pt = malloc(65537);
        EXPECT(pt != NULL, "malloc");
        memset(pt, 'x', 65536);
        pt[65536] = '\0';
        EXPECT(send_json(f, &f->admin, "encrypt",
                         json_pack("{s:o,s:s}", "context", ctx42(), "plaintext", pt)) == 200,
               "64 KiB");
        {
            char *big_ct = strdup(res_str(f, "ciphertext"));
            EXPECT(send_json(f, &f->admin, "decrypt",
                             json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", big_ct)) ==
                       200,
                   "decrypt 64 KiB: %s", f->call.err_code);
            EXPECT(strcmp(res_str(f, "plaintext"), pt) == 0, "64 KiB round trip");
            free(big_ct);
        }
        pt[65536] = 'x';
        {
            json_t *b = json_pack("{s:o,s:s%}", "context", ctx42(), "plaintext", pt, (size_t)65537);
            send_json(f, &f->admin, "encrypt", b);
        }
        expect_error(f, 413, "too_large");
        free(pt);
    }
}

static void test_roundtrip_batch(void **state)
{
    fx *f = *state;
    json_t *items, *res, *dec_items;
    char cts[3][512];
    size_t i;
    const char *pts[3] = {"hr=61", "hrv=48ms", "sleep=7h12m"};
    const char *fields[3] = {"hr", "hrv", "sleep"};

    items = json_array();
    for (i = 0; i < 3; i++)
        json_array_append_new(items, json_pack("{s:{s:s,s:s},s:s}", "context", "user_id", "42",
                                               "field", fields[i], "plaintext", pts[i]));
    EXPECT(send_json(f, &f->user42, "encrypt", json_pack("{s:o}", "items", items)) == 200,
           "batch encrypt: %s %s", f->call.err_code, f->call.err_msg);
    EXPECT(json_integer_value(json_object_get(f->call.result, "failed")) == 0, "failed");
    res = json_object_get(f->call.result, "items");
    EXPECT(json_array_size(res) == 3, "3 results");
    for (i = 0; i < 3; i++) {
        json_t *r = json_array_get(res, i);
        EXPECT(json_is_string(json_object_get(r, "kid")), "kid %zu", i);
        snprintf(cts[i], sizeof cts[i], "%s", json_string_value(json_object_get(r, "ciphertext")));
    }
    /* audit: one subject, three fields, never the data */
    EXPECT(strcmp(f->call.subject, "42") == 0, "subject %s", f->call.subject);
    EXPECT(strcmp(f->call.action, "phi.encrypt") == 0, "action");
    EXPECT(json_integer_value(json_object_get(f->call.audit_details, "items")) == 3, "items");
    EXPECT(json_array_size(json_object_get(f->call.audit_details, "fields")) == 3, "fields");

    dec_items = json_array();
    for (i = 0; i < 3; i++)
        json_array_append_new(dec_items, json_pack("{s:{s:s,s:s},s:s}", "context", "user_id", "42",
                                                   "field", fields[i], "ciphertext", cts[i]));
    EXPECT(send_json(f, &f->user42, "decrypt", json_pack("{s:o}", "items", dec_items)) == 200,
           "batch decrypt");
    res = json_object_get(f->call.result, "items");
    EXPECT(json_array_size(res) == 3, "3 results");
    for (i = 0; i < 3; i++) {
        const char *pt = json_string_value(json_object_get(json_array_get(res, i), "plaintext"));
        EXPECT(pt != NULL && strcmp(pt, pts[i]) == 0, "item %zu in order", i);
    }
    EXPECT(json_integer_value(json_object_get(f->call.result, "failed")) == 0, "failed");
}

/* A batch decrypt where every item fails in its own way, plus one good item. */
static void test_batch_item_errors(void **state)
{
    fx *f = *state;
    char ct[512], tampered[512], other_kid[512];
    json_t *items, *res;
    size_t i;
    struct {
        const char *code;
    } want[] = {{NULL},
                {"decrypt_failed"},
                {"decrypt_failed"},
                {"invalid_ciphertext"},
                {"invalid_context"},
                {"invalid_request"},
                {"invalid_request"},
                {"decrypt_failed"}};

    encrypt_one(f, ctx42(), "72 bpm", ct, sizeof ct);
    snprintf(tampered, sizeof tampered, "%s", ct);
    tampered[strlen(tampered) - 3] = tampered[strlen(tampered) - 3] == 'A' ? 'B' : 'A';
    /* same data under an unknown kid */
    snprintf(other_kid, sizeof other_kid, "phi1.zzzz%s", strchr(ct + 5, '.'));
    f->ctx.batch_max = 16;
    items = json_pack(
        "[{s:o,s:s},{s:{s:s,s:s},s:s},{s:o,s:s},{s:o,s:s},{s:{s:s},s:s},{s:o},s,{s:o,s:s}]",
        "context", ctx42(), "ciphertext", ct,                        /* ok */
        "context", "user_id", "42", "field", "hr", "ciphertext", ct, /* wrong ctx */
        "context", ctx42(), "ciphertext", tampered,                  /* tampered */
        "context", ctx42(), "ciphertext", "xyz.abc",                 /* no prefix */
        "context", "field", "hrv", "ciphertext", ct,                 /* no user_id */
        "context", ctx42(),                                          /* no ct */
        "not an object",                                             /* shape */
        "context", ctx42(), "ciphertext", other_kid);                /* kid */
    EXPECT(items != NULL, "pack");
    EXPECT(send_json(f, &f->admin, "decrypt", json_pack("{s:o}", "items", items)) == 200,
           "batch with errors: %d %s", f->call.status, f->call.err_code);
    res = json_object_get(f->call.result, "items");
    EXPECT(json_array_size(res) == sizeof want / sizeof want[0], "results");
    EXPECT(json_integer_value(json_object_get(f->call.result, "failed")) == 7, "failed");
    for (i = 0; i < sizeof want / sizeof want[0]; i++) {
        json_t *r = json_array_get(res, i), *e = json_object_get(r, "error");
        if (want[i].code == NULL) {
            EXPECT(e == NULL, "item %zu failed", i);
            EXPECT(strcmp(json_string_value(json_object_get(r, "plaintext")), "72 bpm") == 0,
                   "item %zu", i);
            continue;
        }
        EXPECT(e != NULL, "item %zu did not fail", i);
        EXPECT(strcmp(json_string_value(json_object_get(e, "code")), want[i].code) == 0,
               "item %zu: %s, want %s", i, json_string_value(json_object_get(e, "code")),
               want[i].code);
        EXPECT(json_is_string(json_object_get(e, "message")), "item %zu message", i);
        if (strcmp(want[i].code, "decrypt_failed") == 0)
            EXPECT(strcmp(json_string_value(json_object_get(e, "message")), DECRYPT_MSG) == 0,
                   "one message for every decrypt failure");
    }
    /* items 4..6 have no valid context: no single subject */
    EXPECT(f->call.subject[0] == '\0', "subject %s", f->call.subject);
    EXPECT(json_integer_value(json_object_get(f->call.audit_details, "failed")) == 7,
           "audit failed");
}

/* ---- authorization --------------------------------------------------------------------- */

static void test_user_role(void **state)
{
    fx *f = *state;
    char ct43[512];
    json_t *res, *details;

    /* own user_id: fine; as an integer too */
    EXPECT(send_json(f, &f->user42, "encrypt",
                     json_pack("{s:{s:i},s:s}", "context", "user_id", 42, "plaintext", "x")) == 200,
           "own user_id");
    /* another user's: 403, whatever the operation */
    send_json(f, &f->user42, "encrypt",
              json_pack("{s:{s:s},s:s}", "context", "user_id", "43", "plaintext", "x"));
    expect_error(f, 403, "forbidden");
    EXPECT(strcmp(f->call.subject, "43") == 0, "the attempt is recorded against 43");
    encrypt_one(f, json_pack("{s:s}", "user_id", "43"), "secret of 43", ct43, sizeof ct43);
    send_json(f, &f->user42, "decrypt",
              json_pack("{s:{s:s},s:s}", "context", "user_id", "43", "ciphertext", ct43));
    expect_error(f, 403, "forbidden");
    EXPECT(strstr(f->call.err_msg, "secret") == NULL, "message");
    send_json(f, &f->user42, "rewrap",
              json_pack("{s:{s:s},s:s}", "context", "user_id", "43", "ciphertext", ct43));
    expect_error(f, 403, "forbidden");
    /* prefix or case variants are other users */
    send_json(f, &f->user42, "encrypt",
              json_pack("{s:{s:s},s:s}", "context", "user_id", "420", "plaintext", "x"));
    expect_error(f, 403, "forbidden");

    /* batch: the foreign item fails alone */
    EXPECT(send_json(f, &f->user42, "decrypt",
                     json_pack("{s:[{s:{s:s},s:s},{s:{s:s},s:s}]}", "items", "context", "user_id",
                               "43", "ciphertext", ct43, "context", "user_id", "42", "ciphertext",
                               "phi1.abc.def")) == 200,
           "batch");
    res = json_object_get(f->call.result, "items");
    EXPECT(strcmp(json_string_value(
                      json_object_get(json_object_get(json_array_get(res, 0), "error"), "code")),
                  "forbidden") == 0,
           "item 0 forbidden");
    EXPECT(json_object_get(json_array_get(res, 0), "plaintext") == NULL, "no plaintext");
    EXPECT(strcmp(json_string_value(
                      json_object_get(json_object_get(json_array_get(res, 1), "error"), "code")),
                  "decrypt_failed") == 0,
           "item 1 processed");
    EXPECT(f->call.subject[0] == '\0', "two users: no subject");
    details = f->call.audit_details;
    EXPECT(json_array_size(json_object_get(details, "subjects")) == 2, "subjects");
    EXPECT(strcmp(json_string_value(json_array_get(json_object_get(details, "subjects"), 0)),
                  "43") == 0,
           "subjects in order");

    /* admin may use any user_id */
    EXPECT(send_json(f, &f->admin, "decrypt",
                     json_pack("{s:{s:s},s:s}", "context", "user_id", "43", "ciphertext", ct43)) ==
               200,
           "admin");
    EXPECT(strcmp(res_str(f, "plaintext"), "secret of 43") == 0, "admin decrypt");
}

static void test_scopes(void **state)
{
    fx *f = *state;
    phg_identity enc_only, dec_only, none;
    char ct[512];
    ident(&enc_only, "ak_e", "root", PHG_ROLE_ADMIN, PHG_SCOPE_PHI_ENCRYPT);
    ident(&dec_only, "ak_d", "root", PHG_ROLE_ADMIN, PHG_SCOPE_PHI_DECRYPT);
    ident(&none, "ak_n", "42", PHG_ROLE_USER, PHG_SCOPE_AUDIT_READ);

    encrypt_one(f, ctx42(), "x", ct, sizeof ct);
    EXPECT(send_json(f, &enc_only, "encrypt",
                     json_pack("{s:o,s:s}", "context", ctx42(), "plaintext", "x")) == 200,
           "encrypt scope");
    send_json(f, &enc_only, "decrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct));
    expect_error(f, 403, "forbidden");
    EXPECT(strstr(f->call.err_msg, "phi:decrypt") != NULL, "names the scope");
    send_json(f, &dec_only, "encrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "plaintext", "x"));
    expect_error(f, 403, "forbidden");
    EXPECT(send_json(f, &dec_only, "decrypt",
                     json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct)) == 200,
           "decrypt scope");
    send_json(f, &dec_only, "rewrap", json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct));
    expect_error(f, 403, "forbidden");
    send_json(f, &enc_only, "rewrap", json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct));
    expect_error(f, 403, "forbidden");
    send_json(f, &none, "encrypt", json_pack("{s:o,s:s}", "context", ctx42(), "plaintext", "x"));
    expect_error(f, 403, "forbidden");
    /* the scope check comes before the body: even a broken body is 403 */
    send_raw(f, &none, "POST", "encrypt", "text/plain", "{", 1);
    expect_error(f, 403, "forbidden");
    EXPECT(strcmp(f->call.action, "phi.encrypt") == 0, "action set on refusal");
}

/* ---- crypto errors ----------------------------------------------------------------------- */

static void test_decrypt_failures(void **state)
{
    fx *f = *state;
    char ct[512], bad[512], old_kid[PHG_PHI_KID_MAX + 1];
    size_t i, n;

    encrypt_one(f, ctx42(), "72 bpm", ct, sizeof ct);
    /* wrong context: another field, another user, an extra member */
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:{s:s,s:s},s:s}", "context", "user_id", "42", "field", "hr",
                        "ciphertext", ct));
    expect_error(f, 400, "decrypt_failed");
    EXPECT(strcmp(f->call.err_msg, DECRYPT_MSG) == 0, "message: %s", f->call.err_msg);
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:{s:s,s:s},s:s}", "context", "user_id", "43", "field", "hrv",
                        "ciphertext", ct));
    expect_error(f, 400, "decrypt_failed");
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:{s:s,s:s,s:i},s:s}", "context", "user_id", "42", "field", "hrv", "v", 1,
                        "ciphertext", ct));
    expect_error(f, 400, "decrypt_failed");
    /* every flipped character of the data part (a sample), and truncation */
    n = strlen(ct);
    for (i = (size_t)(strchr(ct + 5, '.') - ct) + 1; i + 1 < n; i += 7) {
        snprintf(bad, sizeof bad, "%s", ct);
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        send_json(f, &f->admin, "decrypt",
                  json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", bad));
        expect_error(f, 400, "decrypt_failed");
        EXPECT(strcmp(f->call.err_msg, DECRYPT_MSG) == 0, "message");
    }
    snprintf(bad, sizeof bad, "%.*s", (int)(n - 4), ct);
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", bad));
    expect_error(f, 400, "decrypt_failed");
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", "phi1.nokid"));
    expect_error(f, 400, "decrypt_failed");
    /* no prefix */
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", "72 bpm"));
    expect_error(f, 400, "invalid_ciphertext");
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ""));
    expect_error(f, 400, "invalid_ciphertext");
    /* too long to be any ciphertext of 64 KiB */
    {
        size_t len = PHG_PHI_CIPHERTEXT_MAX_LEN(65536) + 1;
        char *big = malloc(len + 1);
        EXPECT(big != NULL, "malloc");
        memset(big, 'A', len);
        memcpy(big, "phi1.k.", 7);
        big[len] = '\0';
        send_json(f, &f->admin, "decrypt",
                  json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", big));
        expect_error(f, 413, "too_large");
        free(big);
    }
    /* a destroyed kid is the same decrypt_failed */
    EXPECT_RC(phg_phi_ciphertext_kid(ct, strlen(ct), old_kid), PHG_OK);
    EXPECT_RC(phg_keyring_rotate(f->kr, NULL), PHG_OK);
    EXPECT(send_json(f, &f->admin, "decrypt",
                     json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct)) == 200,
           "decrypt-only key still opens");
    EXPECT_RC(phg_keyring_destroy(f->kr, old_kid), PHG_OK);
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct));
    expect_error(f, 400, "decrypt_failed");
    EXPECT(strcmp(f->call.err_msg, DECRYPT_MSG) == 0, "message");
    send_json(f, &f->admin, "rewrap", json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct));
    expect_error(f, 400, "decrypt_failed");
}

/* A plaintext that is not UTF-8 (made with the library, not this API). */
static void test_not_utf8(void **state)
{
    fx *f = *state;
    const uint8_t raw[] = {0xff, 0xfe, 'x'};
    char ct[512];
    size_t ct_len = 0;
    EXPECT_RC(phg_phi_encrypt(f->kr, "user_id=42", 10, raw, sizeof raw, ct, sizeof ct - 1, &ct_len),
              PHG_OK);
    ct[ct_len] = '\0';
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:{s:s},s:s}", "context", "user_id", "42", "ciphertext", ct));
    expect_error(f, 422, "not_utf8");
}

/* ---- request shape ------------------------------------------------------------------------ */

static void test_bad_requests(void **state)
{
    fx *f = *state;
    static const char good[] = "{\"context\":{\"user_id\":\"42\"},\"plaintext\":\"x\"}";

    /* routes and methods */
    send_raw(f, &f->admin, "POST", "sign", "application/json", good, strlen(good));
    expect_error(f, 404, "not_found");
    send_raw(f, &f->admin, "POST", "", "application/json", good, strlen(good));
    expect_error(f, 404, "not_found");
    send_raw(f, &f->admin, "POST", "encrypt/x", "application/json", good, strlen(good));
    expect_error(f, 404, "not_found");
    send_raw(f, &f->admin, "GET", "encrypt", NULL, "", 0);
    expect_error(f, 405, "method_not_allowed");
    send_raw(f, &f->admin, "PUT", "decrypt", "application/json", good, strlen(good));
    expect_error(f, 405, "method_not_allowed");
    /* content type and JSON */
    send_raw(f, &f->admin, "POST", "encrypt", "text/plain", good, strlen(good));
    expect_error(f, 415, "unsupported_media_type");
    send_raw(f, &f->admin, "POST", "encrypt", NULL, good, strlen(good));
    expect_error(f, 415, "unsupported_media_type");
    EXPECT(send_raw(f, &f->admin, "POST", "encrypt", "application/json; charset=utf-8", good,
                    strlen(good)) == 200,
           "charset parameter");
    send_raw(f, &f->admin, "POST", "encrypt", "application/json", "{\"context\":", 11);
    expect_error(f, 400, "invalid_json");
    send_raw(f, &f->admin, "POST", "encrypt", "application/json", "", 0);
    expect_error(f, 400, "invalid_json");
    send_raw(f, &f->admin, "POST", "encrypt", "application/json", "[]", 2);
    expect_error(f, 400, "invalid_json");
    /* members */
    send_json(f, &f->admin, "encrypt",
              json_pack("{s:o,s:s,s:i}", "context", ctx42(), "plaintext", "x", "extra", 1));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "encrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", "phi1.a.b"));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:o,s:s}", "context", ctx42(), "plaintext", "x"));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "encrypt", json_pack("{s:o}", "context", ctx42()));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "encrypt", json_pack("{s:s}", "plaintext", "x"));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "encrypt", json_pack("{s:o,s:i}", "context", ctx42(), "plaintext", 7));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "encrypt", json_pack("{s:o,s:n}", "context", ctx42(), "plaintext"));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "encrypt",
              json_pack("{s:s,s:s}", "context", "user_id=42", "plaintext", "x"));
    expect_error(f, 400, "invalid_context");
    send_json(f, &f->admin, "encrypt",
              json_pack("{s:{s:s,s:s},s:s}", "context", "user_id", "42", "f", "SECRET;",
                        "plaintext", "x"));
    expect_error(f, 400, "invalid_context");
    EXPECT(strstr(f->call.err_msg, "SECRET") == NULL, "value echoed: %s", f->call.err_msg);
    EXPECT(strstr(f->call.err_msg, "\"f\"") != NULL, "member not named: %s", f->call.err_msg);
    /* items together with a single item's members */
    send_json(f, &f->admin, "encrypt",
              json_pack("{s:[{s:o,s:s}],s:o}", "items", "context", ctx42(), "plaintext", "x",
                        "context", ctx42()));
    expect_error(f, 400, "invalid_request");
    send_json(
        f, &f->admin, "encrypt",
        json_pack("{s:[{s:o,s:s}],s:i}", "items", "context", ctx42(), "plaintext", "x", "n", 1));
    expect_error(f, 400, "invalid_request");
    send_json(f, &f->admin, "encrypt", json_pack("{s:{}}", "items"));
    expect_error(f, 400, "invalid_request");
}

static void test_batch_limits(void **state)
{
    fx *f = *state;
    json_t *items;
    size_t i;

    f->ctx.batch_max = 4;
    send_json(f, &f->admin, "encrypt", json_pack("{s:[]}", "items"));
    expect_error(f, 400, "invalid_request");
    for (i = 1; i <= 5; i++) {
        size_t k;
        items = json_array();
        for (k = 0; k < i; k++)
            json_array_append_new(items,
                                  json_pack("{s:o,s:s}", "context", ctx42(), "plaintext", "x"));
        send_json(f, &f->admin, "encrypt", json_pack("{s:o}", "items", items));
        if (i <= 4) {
            EXPECT(f->call.status == 200, "%zu items: %d", i, f->call.status);
            EXPECT(json_array_size(json_object_get(f->call.result, "items")) == i, "%zu", i);
        } else {
            expect_error(f, 413, "batch_too_large");
        }
    }
    /* a per-item size error in a batch fails that item only */
    {
        char *pt = malloc(65538);
        EXPECT(pt != NULL, "malloc");
        memset(pt, 'x', 65537);
        pt[65537] = '\0';
        send_json(f, &f->admin, "encrypt",
                  json_pack("{s:[{s:o,s:s},{s:o,s:s}]}", "items", "context", ctx42(), "plaintext",
                            pt, "context", ctx42(), "plaintext", "ok"));
        free(pt);
        EXPECT(f->call.status == 200, "batch with one too large");
        EXPECT(json_integer_value(json_object_get(f->call.result, "failed")) == 1, "failed");
        EXPECT(strcmp(json_string_value(json_object_get(
                          json_object_get(
                              json_array_get(json_object_get(f->call.result, "items"), 0), "error"),
                          "code")),
                      "too_large") == 0,
               "too_large item");
    }
}

/* ---- rewrap -------------------------------------------------------------------------------- */

static void test_rewrap_after_rotate(void **state)
{
    fx *f = *state;
    char ct[512], ct2[512], old_kid[PHG_PHI_KID_MAX + 1], new_kid[PHG_PHI_KID_MAX + 1];
    json_t *res;

    encrypt_one(f, ctx42(), "resting hr 58", ct, sizeof ct);
    snprintf(old_kid, sizeof old_kid, "%s", res_str(f, "kid"));
    /* rewrap under the same primary: a new ciphertext, same kid */
    EXPECT(send_json(f, &f->admin, "rewrap",
                     json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct)) == 200,
           "rewrap");
    EXPECT(strcmp(res_str(f, "kid"), old_kid) == 0, "same kid");
    EXPECT(strcmp(res_str(f, "ciphertext"), ct) != 0, "fresh nonce");

    EXPECT_RC(phg_keyring_rotate(f->kr, new_kid), PHG_OK);
    EXPECT(strcmp(new_kid, old_kid) != 0, "rotate gave a new kid");
    EXPECT(send_json(f, &f->user42, "rewrap",
                     json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct)) == 200,
           "rewrap after rotate: %s", f->call.err_code);
    EXPECT(strcmp(res_str(f, "kid"), new_kid) == 0, "kid %s, want %s", res_str(f, "kid"), new_kid);
    snprintf(ct2, sizeof ct2, "%s", res_str(f, "ciphertext"));
    EXPECT(strncmp(ct2 + 5, new_kid, strlen(new_kid)) == 0, "ciphertext under the new kid");
    EXPECT(strcmp(f->call.action, "phi.rewrap") == 0, "action");
    /* both open, to the same plaintext */
    EXPECT(send_json(f, &f->admin, "decrypt",
                     json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct2)) == 200,
           "decrypt rewrapped");
    EXPECT(strcmp(res_str(f, "plaintext"), "resting hr 58") == 0, "plaintext");
    EXPECT(send_json(f, &f->admin, "decrypt",
                     json_pack("{s:o,s:s}", "context", ctx42(), "ciphertext", ct)) == 200,
           "old still opens");
    /* rewrap keeps the context binding */
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:{s:s},s:s}", "context", "user_id", "42", "ciphertext", ct2));
    expect_error(f, 400, "decrypt_failed");
    /* batch rewrap, one bad */
    EXPECT(send_json(f, &f->admin, "rewrap",
                     json_pack("{s:[{s:o,s:s},{s:o,s:s}]}", "items", "context", ctx42(),
                               "ciphertext", ct, "context", ctx42(), "ciphertext", "nope")) == 200,
           "batch rewrap");
    res = json_object_get(f->call.result, "items");
    EXPECT(strcmp(json_string_value(json_object_get(json_array_get(res, 0), "kid")), new_kid) == 0,
           "batch kid");
    EXPECT(json_object_get(json_array_get(res, 1), "error") != NULL, "bad item");
    EXPECT(json_integer_value(json_object_get(f->call.result, "failed")) == 1, "failed");
}

/* ---- audit -------------------------------------------------------------------------------- */

static void expect_clean_details(fx *f, const char *const *forbidden, size_t n)
{
    char *dump = json_dumps(f->call.audit_details, JSON_COMPACT);
    size_t i;
    EXPECT(dump != NULL, "no audit details");
    for (i = 0; i < n; i++)
        EXPECT(strstr(dump, forbidden[i]) == NULL, "audit details hold \"%s\": %s", forbidden[i],
               dump);
    free(dump);
}

static void test_audit_fields(void **state)
{
    fx *f = *state;
    char ct[512];
    json_t *d;
    const char *forbidden[3] = {"SECRET-PLAINTEXT-7f3a", "SECRETDIAG", NULL};

    EXPECT(send_json(f, &f->admin, "encrypt",
                     json_pack("{s:{s:s,s:s,s:s},s:s}", "context", "user_id", "42", "field", "hrv",
                               "diagnosis", "SECRETDIAG", "plaintext", "SECRET-PLAINTEXT-7f3a")) ==
               200,
           "encrypt");
    snprintf(ct, sizeof ct, "%s", res_str(f, "ciphertext"));
    forbidden[2] = ct + 20; /* any part of the ciphertext */
    EXPECT(strcmp(f->call.action, "phi.encrypt") == 0, "action %s", f->call.action);
    EXPECT(strcmp(f->call.resource, "phi") == 0, "resource %s", f->call.resource);
    EXPECT(strcmp(f->call.subject, "42") == 0, "subject %s", f->call.subject);
    d = f->call.audit_details;
    EXPECT(json_is_object(d) && json_object_size(d) == 4, "details shape");
    EXPECT(json_integer_value(json_object_get(d, "items")) == 1, "items");
    EXPECT(json_integer_value(json_object_get(d, "failed")) == 0, "failed");
    EXPECT(json_array_size(json_object_get(d, "subjects")) == 1 &&
               strcmp(json_string_value(json_array_get(json_object_get(d, "subjects"), 0)), "42") ==
                   0,
           "subjects");
    EXPECT(json_array_size(json_object_get(d, "fields")) == 1 &&
               strcmp(json_string_value(json_array_get(json_object_get(d, "fields"), 0)), "hrv") ==
                   0,
           "fields");
    expect_clean_details(f, forbidden, 2);

    EXPECT(send_json(f, &f->admin, "decrypt",
                     json_pack("{s:{s:s,s:s,s:s},s:s}", "context", "user_id", "42", "field", "hrv",
                               "diagnosis", "SECRETDIAG", "ciphertext", ct)) == 200,
           "decrypt");
    EXPECT(strcmp(res_str(f, "plaintext"), "SECRET-PLAINTEXT-7f3a") == 0, "plaintext");
    EXPECT(strcmp(f->call.action, "phi.decrypt") == 0, "action");
    expect_clean_details(f, forbidden, 3);

    /* a failing decrypt still has its details, and no data in them */
    send_json(f, &f->admin, "decrypt",
              json_pack("{s:{s:s,s:s},s:s}", "context", "user_id", "42", "diagnosis", "SECRETDIAG",
                        "ciphertext", ct));
    expect_error(f, 400, "decrypt_failed");
    EXPECT(json_integer_value(json_object_get(f->call.audit_details, "failed")) == 1, "failed");
    EXPECT(json_array_size(json_object_get(f->call.audit_details, "fields")) == 0, "no field");
    expect_clean_details(f, forbidden, 3);

    /* lists stop at 50 entries */
    {
        json_t *items = json_array();
        size_t i;
        f->ctx.batch_max = 100;
        for (i = 0; i < 60; i++) {
            char u[16], fl[16];
            snprintf(u, sizeof u, "u%zu", i);
            snprintf(fl, sizeof fl, "f%zu", i);
            json_array_append_new(items, json_pack("{s:{s:s,s:s},s:s}", "context", "user_id", u,
                                                   "field", fl, "plaintext", "x"));
        }
        EXPECT(send_json(f, &f->admin, "encrypt", json_pack("{s:o}", "items", items)) == 200,
               "60 items");
        d = f->call.audit_details;
        EXPECT(json_integer_value(json_object_get(d, "items")) == 60, "items");
        EXPECT(json_array_size(json_object_get(d, "subjects")) == 50, "subjects capped");
        EXPECT(json_array_size(json_object_get(d, "fields")) == 50, "fields capped");
        EXPECT(f->call.subject[0] == '\0', "many users");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_context_canonical),
        cmocka_unit_test_setup_teardown(test_roundtrip_single, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_item_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_role, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scopes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decrypt_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewrap_after_rotate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_fields, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
