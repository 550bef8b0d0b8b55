/*
 * phi_api.c: the PHI transit API, field encryption as a service:
 * POST /v1/phi/encrypt, /v1/phi/decrypt, /v1/phi/rewrap. It turns JSON into
 * calls of include/phigate/phi.h and back; the crypto and the ciphertext
 * format are phi.c's (docs/formats.md, "PHI field ciphertext"). It runs on
 * the event loop (CPU only, about 1 µs per item) and never blocks, logs, or
 * writes the audit record itself: it fills the gw_call and server.c does the
 * rest (gw.h). This comment is the contract that docs/api.md describes.
 *
 * ROUTES AND ORDER OF CHECKS
 *   1. A path under /v1/phi/ other than the three below: 404 not_found.
 *   2. A method other than POST: 405 method_not_allowed.
 *   3. Scopes of the key (already authenticated by the server):
 *        encrypt  phi:encrypt
 *        decrypt  phi:decrypt
 *        rewrap   phi:encrypt and phi:decrypt
 *      missing: 403 forbidden for the whole call (nothing is read).
 *   4. The body: Content-Type application/json, else 415
 *      unsupported_media_type; a JSON object, else 400 invalid_json.
 *   5. The shape (below); each item is then checked and processed on its own.
 *
 * BODIES
 *   Single item (encrypt):  {"context":{...},"plaintext":"<string>"}
 *   Single item (decrypt):  {"context":{...},"ciphertext":"phi1.<kid>.<data>"}
 *   Single item (rewrap):   {"context":{...},"ciphertext":"phi1.<kid>.<data>"}
 *   Batch:                  {"items":[ <single item>, ... ]}
 *   A body has either "items" (and nothing else) or the two members of one
 *   item (and nothing else): both, or any unknown member, is 400
 *   invalid_request. "items" must be an array of 1..batch_max items
 *   ([phi] batch_max, default 1000): an empty array is 400 invalid_request,
 *   more than batch_max is 413 batch_too_large.
 *   plaintext: a JSON string, 0..65536 bytes of UTF-8 (the body parser
 *   guarantees valid UTF-8 and refuses "\u0000" anywhere in the body: 400
 *   invalid_json). ciphertext: a JSON string of
 *   at most PHG_PHI_CIPHERTEXT_MAX_LEN(65536) bytes (the longest ciphertext
 *   of a 64 KiB plaintext).
 *
 * REPLIES (200)
 *   encrypt  {"ciphertext":"phi1.<kid>.<data>","kid":"<kid>"}
 *   decrypt  {"plaintext":"<string>"}
 *   rewrap   {"ciphertext":"<the same plaintext under the primary key>","kid":"<primary kid>"}
 *   batch    {"items":[ <reply of item i> or {"error":{"code":"...","message":"..."}} ],
 *             "failed":<number of items with an error>}
 *   A batch answers 200 even when every item failed; items are answered in
 *   request order. Rewrap of a ciphertext already under the primary key gives
 *   a fresh ciphertext (new nonce) under the same kid.
 *
 * CONTEXTS (gw_phi_context)
 *   "context" is a JSON object, turned into the context string that phi.c
 *   binds the ciphertext to:
 *     - members sorted by name (bytewise), each written "name=value", joined
 *       by ';': {"user_id":"42","field":"hrv"} -> "field=hrv;user_id=42";
 *     - names match [a-z0-9_]{1,64};
 *     - values are strings of 1..256 bytes of printable UTF-8 (no C0 or C1
 *       control character, no DEL, no NUL, no ';' and no '='), or integers
 *       (written in decimal, a '-' for negatives; 42 and "42" give the same
 *       string); any other type (real, boolean, null, array, object) is
 *       refused;
 *     - 1..16 members; "user_id" is required;
 *     - the resulting string is at most 512 bytes (PHG_PHI_CONTEXT_MAX).
 *   A context must be rebuilt exactly to decrypt: a ciphertext made under
 *   {"user_id":"42","field":"hrv"} opens under that context only (member
 *   order in the JSON does not matter). A context that breaks a rule is 400
 *   invalid_context with a message naming the rule and, once it is a valid
 *   name, the member; never the value. A context that is not an object is
 *   invalid_context too; a missing "context" member is invalid_request.
 *   Contexts are authenticated, not secret: no PHI belongs in them.
 *
 * WHO MAY USE WHICH CONTEXT
 *   A key with role user may only use contexts whose user_id (its text) is
 *   the key's own user id; role admin may use any. A context of another user
 *   is 403 forbidden for a single item, and the item's error
 *   {"code":"forbidden"} in a batch (other items are still processed).
 *
 * ERRORS (single item: status and code; batch: the item's code, same message)
 *   400 invalid_request     a member missing, unknown or of the wrong type;
 *                           in a batch also an item that is not an object
 *   400 invalid_context     see CONTEXTS
 *   413 too_large           plaintext over 64 KiB, ciphertext over its maximum
 *   403 forbidden           context of another user (role user)
 *   400 invalid_ciphertext  the ciphertext does not start with "phi1."
 *   400 decrypt_failed      "the ciphertext does not open under this context":
 *                           one answer whatever the cause (another context,
 *                           unknown or destroyed kid, any changed byte,
 *                           truncation, bad base64)
 *   422 not_utf8            decrypt: the plaintext is not UTF-8 text (it was
 *                           not made by this API) and cannot be returned as a
 *                           JSON string
 *   500 internal            out of memory or a crypto library failure; always
 *                           fails the whole call, batch included
 *   Item checks run in this order: shape, size, context, user, crypto.
 *
 * AUDIT (the fields of the call; server.c writes the record)
 *   action    "phi.encrypt" | "phi.decrypt" | "phi.rewrap"
 *   resource  "phi"
 *   subject   the user_id, when every item has a valid context and all name
 *             the same user_id; "" otherwise
 *   details   {"items":n,"failed":k,"subjects":[...],"fields":[...]} once the
 *             body has been read: subjects are the distinct user_id values of
 *             the items with a valid context (those refused as forbidden
 *             included), fields the distinct values of their "field" member
 *             when present; each list in first-seen order, at most 50 entries
 *             (the rest is left out). Never a plaintext, a ciphertext, or
 *             any other context value.
 *
 * SECRETS
 *   Decrypted plaintext lives in buffers of this file that are wiped as soon
 *   as it has been copied into the reply (json_stringn) and on every error
 *   path. The copies this file cannot wipe: jansson's strings (the parsed
 *   request body holding plaintexts to encrypt, and the reply holding
 *   decrypted plaintexts, freed by jansson without cleansing) and the
 *   server's request and response buffers.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"
#include "phigate/crypto.h"

#define PHI_PREFIX_PATH "/v1/phi/"
#define PHI_PLAINTEXT_MAX (64u * 1024u)
#define PHI_CIPHERTEXT_MAX PHG_PHI_CIPHERTEXT_MAX_LEN(PHI_PLAINTEXT_MAX)
#define CTX_MEMBERS_MAX 16
#define CTX_NAME_MAX 64
#define CTX_VALUE_MAX 256
#define AUDIT_LIST_MAX 50
#define BATCH_MAX_DEFAULT 1000

typedef enum phi_op { OP_ENCRYPT, OP_DECRYPT, OP_REWRAP } phi_op;

/* Why one item failed. The codes and statuses are the contract above. */
typedef enum item_err {
    IE_NONE = 0,
    IE_INVALID_REQUEST,
    IE_INVALID_CONTEXT,
    IE_TOO_LARGE,
    IE_FORBIDDEN,
    IE_INVALID_CIPHERTEXT,
    IE_DECRYPT_FAILED,
    IE_NOT_UTF8,
    IE_INTERNAL,
} item_err;

static const char *err_code(item_err e)
{
    switch (e) {
    case IE_NONE:
        return "ok";
    case IE_INVALID_REQUEST:
        return "invalid_request";
    case IE_INVALID_CONTEXT:
        return "invalid_context";
    case IE_TOO_LARGE:
        return "too_large";
    case IE_FORBIDDEN:
        return "forbidden";
    case IE_INVALID_CIPHERTEXT:
        return "invalid_ciphertext";
    case IE_DECRYPT_FAILED:
        return "decrypt_failed";
    case IE_NOT_UTF8:
        return "not_utf8";
    case IE_INTERNAL:
        return "internal";
    }
    return "internal";
}

static int err_status(item_err e)
{
    switch (e) {
    case IE_NONE:
        return 200;
    case IE_INVALID_REQUEST:
        return 400;
    case IE_INVALID_CONTEXT:
        return 400;
    case IE_TOO_LARGE:
        return 413;
    case IE_FORBIDDEN:
        return 403;
    case IE_INVALID_CIPHERTEXT:
        return 400;
    case IE_DECRYPT_FAILED:
        return 400;
    case IE_NOT_UTF8:
        return 422;
    case IE_INTERNAL:
        return 500;
    }
    return 500;
}

/* One item of a call, single or batch. */
typedef struct work_item {
    item_err err;
    char msg[192]; /* the error message (no input echoed) */
    char context[PHG_PHI_CONTEXT_MAX + 1];
    size_t context_len;
    int has_user; /* the context was valid */
    char user_id[CTX_VALUE_MAX + 1];
    int has_field;
    char field[CTX_VALUE_MAX + 1];
    const char *in; /* plaintext or ciphertext, in the body */
    size_t in_len;
    uint8_t *out; /* ciphertext or plaintext (secret: wiped) */
    size_t out_cap;
    size_t out_len;
} work_item;

static void item_fail(work_item *w, item_err e, const char *msg)
{
    w->err = e;
    snprintf(w->msg, sizeof w->msg, "%s", msg);
}

/* ---- contexts -------------------------------------------------------------------------- */

static int is_name(const char *s)
{
    size_t i;
    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];
        if (i >= CTX_NAME_MAX)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return i > 0;
}

/* The text of one context value into buf (CTX_VALUE_MAX + 1 bytes); 0, or -1
 * with the rule that failed in *why (a static sentence, no content). */
static int value_text(json_t *v, char *buf, size_t cap, const char **why)
{
    assert(cap >= CTX_VALUE_MAX + 1);
    if (json_is_integer(v)) {
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return 0;
    }
    if (json_is_string(v)) {
        const unsigned char *s = (const unsigned char *)json_string_value(v);
        size_t len = json_string_length(v), i;
        if (len < 1 || len > CTX_VALUE_MAX) {
            *why = "a string value must be 1 to 256 bytes";
            return -1;
        }
        /* jansson has checked the UTF-8: a byte test finds C0, DEL and the
         * C1 controls (U+0080..U+009F are C2 80..C2 9F). */
        for (i = 0; i < len; i++) {
            unsigned char c = s[i];
            if (c < 0x20 || c == 0x7f || (c == 0xc2 && i + 1 < len && s[i + 1] <= 0x9f)) {
                *why = "the value contains a control character";
                return -1;
            }
            if (c == ';' || c == '=') {
                *why = "the value contains ';' or '='";
                return -1;
            }
        }
        memcpy(buf, s, len);
        buf[len] = '\0';
        return 0;
    }
    *why = "a value must be a string or an integer";
    return -1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int gw_phi_context(json_t *ctx, char *out, size_t out_len, char *err, size_t err_len)
{
    const char *names[CTX_MEMBERS_MAX];
    char value[CTX_VALUE_MAX + 1];
    const char *key, *why = NULL;
    json_t *v;
    size_t n = 0, i, o = 0;
    int has_user = 0;

    assert(out != NULL && out_len > 0 && err != NULL && err_len > 0);
    out[0] = '\0';
    err[0] = '\0';
    if (!json_is_object(ctx)) {
        snprintf(err, err_len, "the context must be a JSON object");
        return -1;
    }
    if (json_object_size(ctx) == 0) {
        snprintf(err, err_len, "the context is empty; user_id is required");
        return -1;
    }
    if (json_object_size(ctx) > CTX_MEMBERS_MAX) {
        snprintf(err, err_len, "the context has more than %d members", CTX_MEMBERS_MAX);
        return -1;
    }
    json_object_foreach(ctx, key, v)
    {
        if (!is_name(key)) {
            snprintf(err, err_len, "a context member name is not [a-z0-9_]{1,64}");
            return -1;
        }
        if (strcmp(key, "user_id") == 0)
            has_user = 1;
        names[n++] = key;
    }
    if (!has_user) {
        snprintf(err, err_len, "the context has no user_id");
        return -1;
    }
    qsort(names, n, sizeof names[0], cmp_names);
    for (i = 0; i < n; i++) {
        size_t nl = strlen(names[i]), vl;
        if (value_text(json_object_get(ctx, names[i]), value, sizeof value, &why) != 0) {
            snprintf(err, err_len, "context member \"%s\": %s", names[i], why);
            phg_wipe(value, sizeof value);
            out[0] = '\0';
            return -1;
        }
        vl = strlen(value);
        if (o + (i > 0) + nl + 1 + vl > PHG_PHI_CONTEXT_MAX ||
            o + (i > 0) + nl + 1 + vl >= out_len) {
            snprintf(err, err_len, "the context is longer than %d bytes", PHG_PHI_CONTEXT_MAX);
            phg_wipe(value, sizeof value);
            out[0] = '\0';
            return -1;
        }
        if (i > 0)
            out[o++] = ';';
        memcpy(out + o, names[i], nl);
        o += nl;
        out[o++] = '=';
        memcpy(out + o, value, vl);
        o += vl;
        out[o] = '\0';
    }
    phg_wipe(value, sizeof value);
    return 0;
}

/* ---- one item: shape, size, context, user ---------------------------------------------- */

static void prepare_item(phi_op op, const phg_identity *id, json_t *item, work_item *w)
{
    const char *data_name = op == OP_ENCRYPT ? "plaintext" : "ciphertext";
    char why[160];
    const char *key, *unused = NULL;
    json_t *v, *ctx, *data;

    if (!json_is_object(item)) {
        item_fail(w, IE_INVALID_REQUEST, "each item must be a JSON object");
        return;
    }
    json_object_foreach(item, key, v)
    {
        if (strcmp(key, "context") != 0 && strcmp(key, data_name) != 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "unknown member; an item has only context and %s", data_name);
            item_fail(w, IE_INVALID_REQUEST, msg);
            return;
        }
    }
    ctx = json_object_get(item, "context");
    data = json_object_get(item, data_name);
    if (ctx == NULL) {
        item_fail(w, IE_INVALID_REQUEST, "the member context is required");
        return;
    }
    if (data == NULL || !json_is_string(data)) {
        snprintf(why, sizeof why, "the member %s is required and must be a string", data_name);
        item_fail(w, IE_INVALID_REQUEST, why);
        return;
    }
    w->in = json_string_value(data);
    w->in_len = json_string_length(data);
    if (op == OP_ENCRYPT && w->in_len > PHI_PLAINTEXT_MAX) {
        item_fail(w, IE_TOO_LARGE, "the plaintext exceeds 65536 bytes");
        return;
    }
    if (op != OP_ENCRYPT && w->in_len > PHI_CIPHERTEXT_MAX) {
        snprintf(why, sizeof why, "the ciphertext exceeds %zu bytes", (size_t)PHI_CIPHERTEXT_MAX);
        item_fail(w, IE_TOO_LARGE, why);
        return;
    }
    if (gw_phi_context(ctx, w->context, sizeof w->context, why, sizeof why) != 0) {
        item_fail(w, IE_INVALID_CONTEXT, why);
        return;
    }
    w->context_len = strlen(w->context);
    /* Both already passed value_text inside gw_phi_context. */
    if (value_text(json_object_get(ctx, "user_id"), w->user_id, sizeof w->user_id, &unused) != 0) {
        item_fail(w, IE_INTERNAL, "internal error");
        return;
    }
    w->has_user = 1;
    v = json_object_get(ctx, "field");
    if (v != NULL && value_text(v, w->field, sizeof w->field, &unused) == 0)
        w->has_field = 1;
    if (id->role != PHG_ROLE_ADMIN && strcmp(w->user_id, id->user_id) != 0) {
        item_fail(w, IE_FORBIDDEN,
                  "a key with role user may only use contexts whose user_id is its own");
        return;
    }
}

/* ---- crypto ------------------------------------------------------------------------------- */

static item_err map_open_status(phg_status rc)
{
    switch (rc) {
    case PHG_OK:
        return IE_NONE;
    case PHG_ERR_FORMAT:
        return IE_INVALID_CIPHERTEXT;
    case PHG_ERR_AUTH:
        return IE_DECRYPT_FAILED;
    default:
        return IE_INTERNAL;
    }
}

static void set_crypto_error(work_item *w, item_err e)
{
    switch (e) {
    case IE_INVALID_CIPHERTEXT:
        item_fail(w, e, "the ciphertext is not a phi1 ciphertext");
        break;
    case IE_DECRYPT_FAILED:
        item_fail(w, e, "the ciphertext does not open under this context");
        break;
    default:
        item_fail(w, IE_INTERNAL, "internal error");
        break;
    }
}

/* Allocate the outputs of the valid items and run the operation. Returns 0,
 * or -1 on an internal failure (the call then fails as a whole). */
static int run_items(const gw_phi_ctx *ctx, phi_op op, work_item *w, size_t n)
{
    phg_phi_item *pi = NULL;
    size_t *map = NULL, m = 0, i;
    int rc = -1;

    for (i = 0; i < n; i++) {
        if (w[i].err != IE_NONE)
            continue;
        if (op == OP_ENCRYPT)
            w[i].out_cap = PHG_PHI_CIPHERTEXT_MAX_LEN(w[i].in_len);
        else if (op == OP_DECRYPT)
            w[i].out_cap = w[i].in_len; /* phi.h: out_cap >= ct_len is always enough */
        else
            w[i].out_cap = w[i].in_len + PHG_PHI_KID_MAX;
        w[i].out = malloc(w[i].out_cap > 0 ? w[i].out_cap : 1);
        if (w[i].out == NULL)
            goto out;
    }
    if (op == OP_REWRAP) {
        for (i = 0; i < n; i++) {
            phg_status st;
            item_err e;
            if (w[i].err != IE_NONE)
                continue;
            st = phg_phi_rewrap(ctx->keyring, w[i].context, w[i].context_len, w[i].in, w[i].in_len,
                                (char *)w[i].out, w[i].out_cap, &w[i].out_len);
            e = map_open_status(st);
            if (e == IE_INTERNAL)
                goto out;
            if (e != IE_NONE)
                set_crypto_error(&w[i], e);
        }
        rc = 0;
        goto out;
    }
    pi = calloc(n, sizeof *pi);
    map = calloc(n, sizeof *map);
    if (pi == NULL || map == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        if (w[i].err != IE_NONE)
            continue;
        pi[m].context = w[i].context;
        pi[m].context_len = w[i].context_len;
        pi[m].in = (const uint8_t *)w[i].in;
        pi[m].in_len = w[i].in_len;
        pi[m].out = w[i].out;
        pi[m].out_cap = w[i].out_cap;
        map[m++] = i;
    }
    if (op == OP_ENCRYPT) {
        (void)phg_phi_encrypt_batch(ctx->keyring, pi, m);
    } else {
        /* Per-item statuses carry the result; PHG_ERR_BATCH says only "some". */
        phg_status batch_rc = phg_phi_decrypt_batch(ctx->keyring, pi, m);
        (void)batch_rc;
    }
    for (i = 0; i < m; i++) {
        work_item *wi = &w[map[i]];
        wi->out_len = pi[i].out_len;
        if (pi[i].status == PHG_OK)
            continue;
        if (op == OP_ENCRYPT)
            goto out; /* the inputs were checked: any failure is ours */
        if (map_open_status(pi[i].status) == IE_INTERNAL)
            goto out;
        set_crypto_error(wi, map_open_status(pi[i].status));
    }
    rc = 0;
out:
    free(pi);
    free(map);
    return rc;
}

/* The reply object of one successful item; NULL on failure (item updated
 * when the cause is the plaintext, else the call fails as internal). */
static json_t *item_result(phi_op op, work_item *w, int *internal)
{
    char kid[PHG_PHI_KID_MAX + 1];
    json_t *r, *s;

    if (op == OP_DECRYPT) {
        s = json_stringn((const char *)w->out, w->out_len);
        /* The plaintext is in jansson's copy now (which nobody can wipe);
         * ours goes at once. */
        phg_wipe(w->out, w->out_cap);
        if (s == NULL) {
            item_fail(w, IE_NOT_UTF8,
                      "the plaintext is not UTF-8 text and cannot be returned "
                      "as a JSON string");
            return NULL;
        }
        r = json_object();
        if (r == NULL || json_object_set_new(r, "plaintext", s) != 0) {
            json_decref(r);
            *internal = 1;
            return NULL;
        }
        return r;
    }
    if (phg_phi_ciphertext_kid((const char *)w->out, w->out_len, kid) != PHG_OK) {
        *internal = 1;
        return NULL;
    }
    r = json_pack("{s:s%,s:s}", "ciphertext", (const char *)w->out, w->out_len, "kid", kid);
    if (r == NULL)
        *internal = 1;
    return r;
}

static json_t *error_object(const work_item *w)
{
    return json_pack("{s:{s:s,s:s}}", "error", "code", err_code(w->err), "message", w->msg);
}

/* ---- audit ------------------------------------------------------------------------------- */

static int list_add(json_t *list, const char *s)
{
    size_t i;
    json_t *v;
    if (json_array_size(list) >= AUDIT_LIST_MAX)
        return 0;
    json_array_foreach(list, i, v)
    {
        if (strcmp(json_string_value(v), s) == 0)
            return 0;
    }
    return json_array_append_new(list, json_string(s));
}

static void set_audit(gw_call *call, const work_item *w, size_t n, size_t failed)
{
    json_t *subjects = json_array(), *fields = json_array();
    int same = n > 0;
    size_t i;

    for (i = 0; i < n; i++) {
        if (!w[i].has_user) {
            same = 0;
            continue;
        }
        if (same && strcmp(w[i].user_id, w[0].user_id) != 0)
            same = 0;
        if (subjects != NULL)
            (void)list_add(subjects, w[i].user_id);
        if (w[i].has_field && fields != NULL)
            (void)list_add(fields, w[i].field);
    }
    if (same)
        snprintf(call->subject, sizeof call->subject, "%s", w[0].user_id);
    else
        call->subject[0] = '\0';
    json_decref(call->audit_details);
    call->audit_details = json_pack("{s:I,s:I,s:o*,s:o*}", "items", (json_int_t)n, "failed",
                                    (json_int_t)failed, "subjects", subjects, "fields", fields);
}

/* ---- the handler ----------------------------------------------------------------------- */

static void free_items(work_item *w, size_t n)
{
    size_t i;
    if (w == NULL)
        return;
    for (i = 0; i < n; i++) {
        if (w[i].out != NULL) {
            phg_wipe(w[i].out, w[i].out_cap);
            free(w[i].out);
        }
    }
    /* Contexts and user ids are not secret, but the array is cheap to wipe. */
    phg_wipe(w, n * sizeof *w);
    free(w);
}

void gw_phi_handle(const gw_phi_ctx *ctx, gw_call *call)
{
    static const struct {
        const char *name;
        phi_op op;
        uint32_t scopes;
    } ops[] = {
        {"encrypt", OP_ENCRYPT, PHG_SCOPE_PHI_ENCRYPT},
        {"decrypt", OP_DECRYPT, PHG_SCOPE_PHI_DECRYPT},
        {"rewrap", OP_REWRAP, PHG_SCOPE_PHI_ENCRYPT | PHG_SCOPE_PHI_DECRYPT},
    };
    const size_t prefix_len = sizeof PHI_PREFIX_PATH - 1;
    size_t batch_max = ctx->batch_max > 0 ? ctx->batch_max : BATCH_MAX_DEFAULT;
    const char *name, *data_name;
    json_t *body = NULL, *items = NULL, *result = NULL, *list = NULL;
    work_item *w = NULL;
    size_t n = 1, i, failed = 0, k;
    phi_op op;
    int found = -1, internal = 0;

    assert(ctx != NULL && ctx->keyring != NULL);
    assert(call != NULL && call->path != NULL && call->method != NULL && call->id != NULL);

    if (strncmp(call->path, PHI_PREFIX_PATH, prefix_len) != 0) {
        gw_call_fail(call, 404, "not_found", "no such PHI operation");
        return;
    }
    name = call->path + prefix_len;
    for (k = 0; k < sizeof ops / sizeof ops[0]; k++) {
        if (strcmp(name, ops[k].name) == 0)
            found = (int)k;
    }
    if (found < 0) {
        gw_call_fail(call, 404, "not_found",
                     "no such PHI operation; there are encrypt, decrypt and rewrap");
        return;
    }
    op = ops[found].op;
    snprintf(call->action, sizeof call->action, "phi.%s", ops[found].name);
    snprintf(call->resource, sizeof call->resource, "phi");
    if (strcmp(call->method, "POST") != 0) {
        gw_call_fail(call, 405, "method_not_allowed", "use POST");
        return;
    }
    if ((call->id->scopes & ops[found].scopes) != ops[found].scopes) {
        gw_call_fail(call, 403, "forbidden",
                     op == OP_REWRAP    ? "this key lacks the scopes phi:encrypt and phi:decrypt"
                     : op == OP_ENCRYPT ? "this key lacks the scope phi:encrypt"
                                        : "this key lacks the scope phi:decrypt");
        return;
    }
    body = gw_call_json_body(call);
    if (body == NULL)
        return;

    data_name = op == OP_ENCRYPT ? "plaintext" : "ciphertext";
    items = json_object_get(body, "items");
    if (items != NULL) {
        if (json_object_size(body) != 1) {
            gw_call_fail(call, 400, "invalid_request",
                         "a batch body has one member, items, and nothing else");
            goto out;
        }
        if (!json_is_array(items)) {
            gw_call_fail(call, 400, "invalid_request", "items must be an array");
            goto out;
        }
        n = json_array_size(items);
        if (n == 0) {
            gw_call_fail(call, 400, "invalid_request", "items is empty");
            goto out;
        }
        if (n > batch_max) {
            gw_call_fail(call, 413, "batch_too_large", "a batch has at most %zu items", batch_max);
            goto out;
        }
    } else {
        const char *key;
        json_t *v;
        json_object_foreach(body, key, v)
        {
            if (strcmp(key, "context") != 0 && strcmp(key, data_name) != 0) {
                gw_call_fail(call, 400, "invalid_request",
                             "unknown member; the body has either items, or context and %s",
                             data_name);
                goto out;
            }
        }
    }

    w = calloc(n, sizeof *w);
    if (w == NULL) {
        gw_call_fail(call, 500, "internal", "internal error");
        goto out;
    }
    for (i = 0; i < n; i++)
        prepare_item(op, call->id, items != NULL ? json_array_get(items, i) : body, &w[i]);
    for (i = 0; i < n; i++) {
        if (w[i].err == IE_INTERNAL) {
            gw_call_fail(call, 500, "internal", "internal error");
            goto audit;
        }
    }
    if (run_items(ctx, op, w, n) != 0) {
        gw_call_fail(call, 500, "internal", "internal error");
        goto audit;
    }

    if (items == NULL) {
        if (w[0].err == IE_NONE)
            result = item_result(op, &w[0], &internal);
        if (internal) {
            gw_call_fail(call, 500, "internal", "internal error");
        } else if (w[0].err != IE_NONE) {
            failed = 1;
            gw_call_fail(call, err_status(w[0].err), err_code(w[0].err), "%s", w[0].msg);
        } else {
            call->status = 200;
            call->result = result;
            result = NULL;
        }
        goto audit;
    }

    list = json_array();
    if (list == NULL) {
        gw_call_fail(call, 500, "internal", "internal error");
        goto audit;
    }
    for (i = 0; i < n; i++) {
        json_t *r = NULL;
        if (w[i].err == IE_NONE)
            r = item_result(op, &w[i], &internal);
        if (internal)
            break;
        if (w[i].err != IE_NONE) {
            failed++;
            r = error_object(&w[i]);
        }
        if (r == NULL || json_array_append_new(list, r) != 0) {
            internal = 1;
            break;
        }
    }
    if (!internal) {
        result = json_pack("{s:o,s:I}", "items", list, "failed", (json_int_t)failed);
        list = NULL; /* "o" took it, even on failure */
        internal = result == NULL;
    }
    if (internal) {
        gw_call_fail(call, 500, "internal", "internal error");
        goto audit;
    }
    call->status = 200;
    call->result = result;
    result = NULL;

audit:
    for (failed = 0, i = 0; i < n; i++)
        failed += w[i].err != IE_NONE;
    set_audit(call, w, n, failed);
out:
    json_decref(list);
    json_decref(result);
    free_items(w, n);
    json_decref(body);
}
