/*
 * admin_api.c: the admin REST API, every path under /admin/ (gw.h,
 * gw_admin_handle): API keys, the audit log (query, accounting of
 * disclosures, verification), the PHI keyring (list, rotate, crypto-shred),
 * rate limits (a key's usage, reset and limit; the keys with the most
 * violations), webhook sources and the events of the webhook inbox (list,
 * show, replay), the effective configuration and the OpenAPI document.
 *
 * It runs on a worker thread and may block on the store. It does not
 * authenticate (server.c verified the key and the admin role before calling;
 * the role is checked again here), does not speak HTTP (it fills the
 * gw_call), and does not write the audit record of the call itself: the
 * server does that after this returns, from call->action, resource, subject
 * and audit_details, which are filled here and never hold a secret. The
 * library records key and keyring changes on its own (phg_keys_set_audit,
 * phg_keyring_set_audit) with the admin as actor (the thread's request
 * context, set by the server).
 *
 * Every identifier from the path, the query or the body is checked against
 * its shape before any store call: key ids "ak_[a-z0-9]+", kids
 * "[a-z0-9]{1,32}", webhook source names "[a-z0-9_-]{1,64}", ULIDs; every
 * query value is at most 256 bytes, unknown query parameters and body
 * members are refused by name.
 *
 * The contract, for humans: docs/api.md; for machines: openapi.json.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw.h"
#include "phigate/crypto.h"
#include "phigate/webhook_store.h"

#define PARAM_MAX 256        /* bytes of one query value */
#define QUERY_MAX 8192       /* bytes of the whole query string */
#define BODY_MAX (64u << 10) /* an admin request body */
#define SEGMENTS_MAX 6       /* path segments after /admin/ */
#define LIST_DEFAULT 100
#define LIST_MAX 1000
#define GRACE_DEFAULT_S 86400 /* rotation: the old key works one more day */
#define GRACE_MAX_S (30 * 86400)
#define TIME_TEXT 40 /* an RFC 3339 time as text, with room */

/*
 * Keyring mutations (rotate, destroy, and the save that follows) are
 * serialised: two rotations at once would each save their own view, and the
 * last save would drop the other's key. unsaved_keyring names a keyring whose
 * in-memory state is ahead of the store (a save failed); the next mutation
 * saves it first.
 */
static pthread_mutex_t keyring_lock = PTHREAD_MUTEX_INITIALIZER;
static const phg_keyring *unsaved_keyring;

/* ---- small helpers ------------------------------------------------------------------ */

static int is_lower_alnum(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* "ak_" and 1..29 of [a-z0-9]: the shape phg_keys_create gives (apikey.h). */
static int key_id_ok(const char *s)
{
    size_t n;
    if (strncmp(s, "ak_", 3) != 0)
        return 0;
    for (n = 3; s[n] != '\0'; n++) {
        if (n >= PHG_APIKEY_ID_MAX || !is_lower_alnum((unsigned char)s[n]))
            return 0;
    }
    return n > 3;
}

/* [a-z0-9]{1,PHG_PHI_KID_MAX} (docs/formats.md). */
static int kid_ok(const char *s)
{
    size_t n;
    for (n = 0; s[n] != '\0'; n++) {
        if (n >= PHG_PHI_KID_MAX || !is_lower_alnum((unsigned char)s[n]))
            return 0;
    }
    return n > 0;
}

static int ulid_ok(const char *s)
{
    phg_ulid u;
    return phg_ulid_parse(s, strlen(s), &u) == PHG_OK;
}

/* Printable text (no control characters), 1..max bytes. Not a UTF-8 check:
 * the library does that where it stores text. */
static int text_ok(const char *s, size_t max)
{
    size_t n;
    for (n = 0; s[n] != '\0'; n++) {
        if (n >= max || (unsigned char)s[n] < 0x20 || s[n] == 0x7f)
            return 0;
    }
    return n > 0;
}

/* A caller's name (a query parameter, a body member) made safe to echo in a
 * message: at most 40 characters, anything unusual shown as '?'. */
static void echo_safe(const char *s, size_t len, char out[48])
{
    size_t i, o = 0;
    for (i = 0; i < len && o < 40; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-' || c == '.' || c == ':';
        out[o++] = ok ? c : '?';
    }
    if (i < len && o <= 44) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* Unix seconds -> "YYYY-MM-DDTHH:MM:SSZ". */
static void format_time(int64_t t, char out[TIME_TEXT])
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (gmtime_r(&tt, &tm) == NULL || strftime(out, TIME_TEXT, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, TIME_TEXT, "%lld", (long long)t);
}

static json_t *time_or_null(int64_t t)
{
    char text[TIME_TEXT];
    if (t == 0)
        return json_null();
    format_time(t, text);
    return json_string(text);
}

static int digits(const char *s, int n, int *out)
{
    int v = 0, i;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/*
 * RFC 3339 to Unix microseconds: "YYYY-MM-DD" (midnight UTC) or
 * "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" ('t', 'z' and a space
 * for 'T' accepted, as RFC 3339 allows). Fractions beyond microseconds are
 * truncated; leap seconds (60) are refused. 1 ok, 0 not a time (or before
 * 1970).
 */
static int parse_time_us(const char *s, int64_t *out)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t len = strlen(s);
    int y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0, dim;
    int64_t frac = 0, t;
    const char *p;

    if (len < 10 || len > TIME_TEXT)
        return 0;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d))
        return 0;
    if (y < 1970 || mo < 1 || mo > 12)
        return 0;
    dim = mdays[mo - 1] + (mo == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
    if (d < 1 || d > dim)
        return 0;
    if (len > 10) {
        if (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
            return 0;
        if (len < 20 || !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) ||
            s[16] != ':' || !digits(s + 17, 2, &sec))
            return 0;
        if (h > 23 || mi > 59 || sec > 59)
            return 0;
        p = s + 19;
        if (*p == '.') {
            int n = 0;
            p++;
            while (*p >= '0' && *p <= '9') {
                if (n < 6)
                    frac = frac * 10 + (*p - '0');
                n++, p++;
            }
            if (n == 0)
                return 0;
            for (; n < 6; n++)
                frac *= 10;
        }
        if ((p[0] == 'Z' || p[0] == 'z') && p[1] == '\0') {
            sign = 0;
        } else if ((p[0] == '+' || p[0] == '-') && strlen(p) == 6 && digits(p + 1, 2, &oh) &&
                   p[3] == ':' && digits(p + 4, 2, &om) && oh <= 23 && om <= 59) {
            sign = p[0] == '+' ? 1 : -1;
        } else {
            return 0;
        }
    }
    t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
    t -= sign * (oh * 3600 + om * 60);
    if (t < 0)
        return 0;
    *out = t * 1000000 + frac;
    return 1;
}

static int method_is(const gw_call *call, const char *m)
{
    return call->method != NULL && strcmp(call->method, m) == 0;
}

/* 1 if the method is `want`; otherwise 405 and 0. */
static int method_or_respond(gw_call *call, const char *want)
{
    if (method_is(call, want))
        return 1;
    gw_call_fail(call, 405, "method_not_allowed", "%s is not allowed here; use %s",
                 call->method != NULL && strlen(call->method) < 16 ? call->method : "this method",
                 want);
    return 0;
}

/*
 * Every query parameter must be one of `allowed` (NULL-terminated, at most
 * 32 names) and appear once; otherwise 400 naming it. Names are compared as
 * sent (a percent-encoded name is unknown).
 */
static int query_names_or_respond(gw_call *call, const char *const *allowed)
{
    const char *p = call->query;
    uint32_t seen = 0;
    char shown[48];

    if (p == NULL)
        return 1;
    if (strlen(p) > QUERY_MAX) {
        gw_call_fail(call, 400, "invalid_parameter", "the query string is over %d bytes",
                     QUERY_MAX);
        return 0;
    }
    while (*p != '\0') {
        const char *end = strchr(p, '&');
        size_t seg = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', seg);
        size_t nlen = eq != NULL ? (size_t)(eq - p) : seg;
        if (seg > 0) {
            size_t i;
            for (i = 0; allowed != NULL && allowed[i] != NULL; i++) {
                if (strlen(allowed[i]) == nlen && memcmp(allowed[i], p, nlen) == 0)
                    break;
            }
            echo_safe(p, nlen, shown);
            if (allowed == NULL || allowed[i] == NULL) {
                gw_call_fail(call, 400, "invalid_parameter", "unknown query parameter: %s%s",
                             nlen ? shown : "(empty name)",
                             allowed != NULL && allowed[0] != NULL ? ""
                                                                   : " (this endpoint takes none)");
                return 0;
            }
            assert(i < 32);
            if (seen & (1u << i)) {
                gw_call_fail(call, 400, "invalid_parameter",
                             "query parameter %s is given more than once", shown);
                return 0;
            }
            seen |= 1u << i;
        }
        if (end == NULL)
            break;
        p = end + 1;
    }
    return 1;
}

/* A query value: 1 present and not empty (into buf, PARAM_MAX + 1 bytes),
 * 0 absent or empty, -1 after a 400. */
static int param(gw_call *call, const char *name, char buf[PARAM_MAX + 1])
{
    int rc = gw_call_query(call, name, buf, PARAM_MAX + 1);
    if (rc < 0)
        return -1;
    if (rc == 0 || buf[0] == '\0') {
        buf[0] = '\0';
        return 0;
    }
    return 1;
}

/* limit=1..1000 (default def). 1 ok, 0 after a 400. */
static int limit_param(gw_call *call, size_t def, size_t *out)
{
    char buf[PARAM_MAX + 1];
    size_t i, v = 0;
    int rc = param(call, "limit", buf);
    if (rc < 0)
        return 0;
    *out = def;
    if (rc == 0)
        return 1;
    for (i = 0; buf[i] != '\0'; i++) {
        if (buf[i] < '0' || buf[i] > '9' || i >= 4) {
            v = 0;
            break;
        }
        v = v * 10 + (size_t)(buf[i] - '0');
    }
    if (v < 1 || v > LIST_MAX) {
        gw_call_fail(call, 400, "invalid_parameter", "limit must be an integer from 1 to %d",
                     LIST_MAX);
        return 0;
    }
    *out = v;
    return 1;
}

/* A time query parameter: 1 ok (*us set, text copied; 0 and "" when absent),
 * 0 after a 400. */
static int time_param(gw_call *call, const char *name, int64_t *us, char text[PARAM_MAX + 1])
{
    int rc = param(call, name, text);
    *us = 0;
    if (rc < 0)
        return 0;
    if (rc == 0)
        return 1;
    if (!parse_time_us(text, us)) {
        gw_call_fail(call, 400, "invalid_parameter",
                     "%s must be an RFC 3339 time (2026-01-31T12:00:00Z) or a date "
                     "(2026-01-31), not before 1970",
                     name);
        return 0;
    }
    return 1;
}

/* Every member of a body object must be in `allowed`; otherwise 400. */
static int members_or_respond(gw_call *call, json_t *body, const char *const *allowed)
{
    const char *name;
    json_t *v;
    json_object_foreach(body, name, v) {
        size_t i;
        char shown[48];
        (void)v;
        for (i = 0; allowed[i] != NULL; i++) {
            if (strcmp(allowed[i], name) == 0)
                break;
        }
        if (allowed[i] == NULL) {
            echo_safe(name, strlen(name), shown);
            gw_call_fail(call, 400, "invalid_request", "unknown member in the body: %s", shown);
            return 0;
        }
    }
    return 1;
}

/* The body as a JSON object, or NULL after a 4xx. Bodies are small here. */
static json_t *body_or_respond(gw_call *call)
{
    if (call->body_len > BODY_MAX) {
        gw_call_fail(call, 413, "payload_too_large", "an admin request body is at most %u bytes",
                     BODY_MAX);
        return NULL;
    }
    return gw_call_json_body(call);
}

static void set_details(gw_call *call, json_t *details)
{
    json_decref(call->audit_details);
    call->audit_details = details;
}

static void reply(gw_call *call, int status, json_t *result)
{
    if (result == NULL) {
        gw_call_fail(call, 500, "internal", "out of memory");
        return;
    }
    json_decref(call->result);
    call->status = status;
    call->result = result;
}

/* A library status that is not a client error, as a reply. */
static void fail_status(gw_call *call, phg_status st, const char *doing)
{
    if (st == PHG_ERR_UNAVAILABLE)
        gw_call_fail(call, 503, "unavailable", "cannot %s: the store is unavailable", doing);
    else if (st == PHG_ERR_NOMEM)
        gw_call_fail(call, 503, "unavailable", "cannot %s: out of memory", doing);
    else
        gw_call_fail(call, 500, "internal", "cannot %s: %s", doing, phg_strerror(st));
}

/* ---- key records -------------------------------------------------------------------- */

static json_t *scopes_json(uint32_t scopes)
{
    char text[128];
    json_t *arr = json_array();
    const char *p = text;
    phg_apikey_scopes_format(scopes, text, sizeof text);
    while (arr != NULL && *p != '\0') {
        size_t n = strcspn(p, " ,");
        if (n > 0)
            json_array_append_new(arr, json_stringn(p, n));
        p += n;
        while (*p == ' ' || *p == ',')
            p++;
    }
    return arr;
}

/* A key's record as JSON: the member names of `phigate keys show --json`
 * (src/cli/store_cmd.c), except scopes, an array here. Never the hash. */
static json_t *record_json(const phg_apikey_record *r)
{
    int64_t now = (int64_t)time(NULL);
    const char *state = "active";
    json_t *o;

    if (r->revoked_at)
        state = "revoked";
    else if ((r->expires_at && now >= r->expires_at) || (r->grace_until && now >= r->grace_until))
        state = "expired";
    else if (r->grace_until)
        state = "rotating";
    o = json_pack("{s:s,s:s,s:o,s:s,s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:s}", "id", r->id, "role",
                  phg_role_name(r->role), "scopes", scopes_json(r->scopes), "user_id", r->user_id,
                  "description", r->description, "created_by", r->created_by, "created_at",
                  time_or_null(r->created_at), "expires_at", time_or_null(r->expires_at),
                  "last_used_at", time_or_null(r->last_used_at), "revoked_at",
                  time_or_null(r->revoked_at), "grace_until", time_or_null(r->grace_until),
                  "replaced_by", r->replaced_by[0] ? json_string(r->replaced_by) : json_null(),
                  "rate_limit", r->rate_limit[0] ? json_string(r->rate_limit) : json_null(),
                  "state", state);
    return o;
}

static int keys_ready_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    if (ctx->keys != NULL)
        return 1;
    gw_call_fail(call, 503, "unavailable", "key management is not available on this instance");
    return 0;
}

/* GET /admin/keys?after=&limit= */
static void keys_list(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"after", "limit", NULL};
    char after[PARAM_MAX + 1];
    phg_apikey_record *recs = NULL;
    size_t limit, n = 0, i;
    json_t *arr;
    phg_status st;
    int rc;

    snprintf(call->action, sizeof call->action, "admin.keys.list");
    snprintf(call->resource, sizeof call->resource, "keys");
    if (!query_names_or_respond(call, allowed) || !limit_param(call, LIST_DEFAULT, &limit))
        return;
    rc = param(call, "after", after);
    if (rc < 0)
        return;
    if (rc > 0 && !key_id_ok(after)) {
        gw_call_fail(call, 400, "invalid_parameter",
                     "after must be a key id (ak_ followed by lowercase letters and digits)");
        return;
    }
    set_details(
        call, json_pack("{s:s?,s:I}", "after", rc > 0 ? after : NULL, "limit", (json_int_t)limit));
    if (!keys_ready_or_respond(ctx, call))
        return;
    st = phg_keys_list(ctx->keys, after, limit, &recs, &n);
    if (st == PHG_ERR_INVALID) {
        gw_call_fail(call, 400, "invalid_parameter", "after or limit is not valid");
        return;
    }
    if (st != PHG_OK) {
        fail_status(call, st, "list the keys");
        return;
    }
    arr = json_array();
    for (i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr, record_json(&recs[i]));
    reply(call, 200,
          json_pack("{s:o,s:o}", "keys", arr, "next",
                    n == limit && n > 0 ? json_string(recs[n - 1].id) : json_null()));
    free(recs);
}

/* An optional string member: 1 ok (*out NULL when absent or null), 0 after a 400. */
static int opt_string(gw_call *call, json_t *body, const char *name, size_t max, const char **out)
{
    json_t *v = json_object_get(body, name);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 1;
    if (!json_is_string(v)) {
        gw_call_fail(call, 400, "invalid_request", "%s must be a string", name);
        return 0;
    }
    if (json_string_length(v) > max || strlen(json_string_value(v)) != json_string_length(v)) {
        gw_call_fail(call, 400, "invalid_request", "%s must be at most %zu bytes, without NUL",
                     name, max);
        return 0;
    }
    *out = json_string_value(v);
    return 1;
}

static int parse_scopes(gw_call *call, json_t *v, uint32_t *out)
{
    size_t i;
    json_t *item;
    *out = 0;
    if (v == NULL || json_is_null(v))
        return 1;
    if (!json_is_array(v) || json_array_size(v) > 16) {
        gw_call_fail(call, 400, "invalid_request",
                     "scopes must be an array of scope names (phi:encrypt, phi:decrypt, "
                     "audit:read, keys:admin, webhooks:admin)");
        return 0;
    }
    json_array_foreach(v, i, item) {
        const char *s = json_string_value(item);
        uint32_t bit = 0;
        if (s == NULL || s[0] == '\0' || strlen(s) > 32 || strcspn(s, " ,\t") != strlen(s) ||
            phg_apikey_scopes_parse(s, &bit) != PHG_OK || bit == 0) {
            gw_call_fail(call, 400, "invalid_request",
                         "scopes[%zu]: unknown scope (known: phi:encrypt, phi:decrypt, "
                         "audit:read, keys:admin, webhooks:admin)",
                         i);
            return 0;
        }
        *out |= bit;
    }
    return 1;
}

/*
 * A key was made (created, or issued by a rotation) but the audit log could
 * not record it: fail closed, revoke it. 1 if it is revoked.
 */
static int undo_new_key(const gw_admin_ctx *ctx, const char *id)
{
    phg_status st = phg_keys_revoke(ctx->keys, id);
    /* UNAUDITED: revoked, and the revocation's record failed as well. */
    return st == PHG_OK || st == PHG_ERR_UNAUDITED;
}

/* POST /admin/keys */
static void keys_create(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"role",       "user_id",    "scopes", "description",
                                          "rate_limit", "expires_at", NULL};
    json_t *body = NULL, *v;
    phg_apikey_spec spec;
    phg_apikey_record rec;
    char key[PHG_APIKEY_LEN + 1] = "", created_by[PHG_APIKEY_ACTOR_MAX + 1];
    char err[256] = "";
    const char *expires = NULL;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.keys.create");
    snprintf(call->resource, sizeof call->resource, "keys");
    memset(&spec, 0, sizeof spec);
    memset(&rec, 0, sizeof rec);
    if (!query_names_or_respond(call, NULL))
        return;
    body = body_or_respond(call);
    if (body == NULL)
        return;
    if (!members_or_respond(call, body, allowed))
        goto out;
    v = json_object_get(body, "role");
    if (!json_is_string(v) || phg_role_parse(json_string_value(v), &spec.role) != PHG_OK) {
        gw_call_fail(call, 400, "invalid_request", "role is required: \"user\" or \"admin\"");
        goto out;
    }
    v = json_object_get(body, "user_id");
    if (!json_is_string(v) || !text_ok(json_string_value(v), PHG_APIKEY_USER_MAX)) {
        gw_call_fail(call, 400, "invalid_request",
                     "user_id is required: 1 to %d printable characters", PHG_APIKEY_USER_MAX);
        goto out;
    }
    spec.user_id = json_string_value(v);
    if (!parse_scopes(call, json_object_get(body, "scopes"), &spec.scopes) ||
        !opt_string(call, body, "description", PHG_APIKEY_DESC_MAX, &spec.description) ||
        !opt_string(call, body, "rate_limit", PHG_APIKEY_LIMIT_MAX, &spec.rate_limit) ||
        !opt_string(call, body, "expires_at", TIME_TEXT, &expires))
        goto out;
    if (expires != NULL) {
        int64_t us;
        if (!parse_time_us(expires, &us)) {
            gw_call_fail(call, 400, "invalid_request",
                         "expires_at must be an RFC 3339 time (2027-01-01T00:00:00Z) or null");
            goto out;
        }
        spec.expires_at = us / 1000000;
        if (spec.expires_at <= (int64_t)time(NULL)) {
            gw_call_fail(call, 400, "invalid_request", "expires_at is in the past");
            goto out;
        }
    }
    if (call->id == NULL || call->id->key_id[0] == '\0') {
        gw_call_fail(call, 403, "forbidden", "the admin API needs an admin key");
        goto out;
    }
    snprintf(created_by, sizeof created_by, "key:%s", call->id->key_id);
    spec.created_by = created_by;
    if (!keys_ready_or_respond(ctx, call))
        goto out;
    st = phg_keys_create(ctx->keys, &spec, key, &rec, err, sizeof err);
    if (st == PHG_OK || st == PHG_ERR_UNAUDITED) {
        snprintf(call->resource, sizeof call->resource, "key:%s", rec.id);
        set_details(call, json_pack("{s:s,s:s,s:s,s:o}", "key_id", rec.id, "role",
                                    phg_role_name(rec.role), "user_id", rec.user_id, "scopes",
                                    scopes_json(rec.scopes)));
    }
    if (st == PHG_ERR_UNAUDITED) {
        /* Fail closed: a key nobody can account for must not work. */
        int undone = undo_new_key(ctx, rec.id);
        if (call->audit_details != NULL)
            json_object_set_new(call->audit_details, "undone", json_boolean(undone));
        if (undone)
            gw_call_fail(call, 503, "audit_unavailable",
                         "the change could not be recorded in the audit log; it was undone "
                         "(key %s is revoked)",
                         rec.id);
        else
            gw_call_fail(call, 503, "audit_unavailable",
                         "the change could not be recorded in the audit log, and key %s could "
                         "not be revoked: revoke it when the store is back",
                         rec.id);
        goto out;
    }
    if (st == PHG_ERR_INVALID) {
        gw_call_fail(call, 400, "invalid_request", "%s", err[0] ? err : "the key spec is invalid");
        goto out;
    }
    if (st != PHG_OK) {
        fail_status(call, st, "create the key");
        goto out;
    }
    /* The only time the key text is shown. */
    reply(call, 201, json_pack("{s:s,s:o}", "key", key, "record", record_json(&rec)));
out:
    phg_wipe(key, sizeof key);
    json_decref(body);
}

/* Map the status of a call on one key. */
static void key_fail(gw_call *call, phg_status st, const char *doing)
{
    if (st == PHG_ERR_NOT_FOUND)
        gw_call_fail(call, 404, "not_found", "no key with that id");
    else if (st == PHG_ERR_STATE)
        gw_call_fail(call, 409, "conflict", "cannot %s: the key is revoked or already rotated",
                     doing);
    else if (st == PHG_ERR_INVALID)
        gw_call_fail(call, 400, "invalid_request", "cannot %s: %s", doing, phg_strerror(st));
    else
        fail_status(call, st, doing);
}

/* GET /admin/keys/{id} */
static void key_get(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    phg_apikey_record rec;
    phg_status st;
    snprintf(call->action, sizeof call->action, "admin.keys.get");
    set_details(call, json_pack("{s:s}", "key_id", id));
    if (!query_names_or_respond(call, NULL) || !keys_ready_or_respond(ctx, call))
        return;
    st = phg_keys_get(ctx->keys, id, &rec);
    if (st != PHG_OK) {
        key_fail(call, st, "read the key");
        return;
    }
    reply(call, 200, record_json(&rec));
}

/* POST /admin/keys/{id}/rotate {"grace_seconds":N} */
static void key_rotate(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    static const char *const allowed[] = {"grace_seconds", NULL};
    json_t *body = NULL, *v;
    json_int_t grace = GRACE_DEFAULT_S;
    phg_apikey_record rec, old;
    char key[PHG_APIKEY_LEN + 1] = "";
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.keys.rotate");
    memset(&rec, 0, sizeof rec);
    if (!query_names_or_respond(call, NULL))
        return;
    if (call->body_len > 0) {
        body = body_or_respond(call);
        if (body == NULL)
            return;
        if (!members_or_respond(call, body, allowed))
            goto out;
        v = json_object_get(body, "grace_seconds");
        if (v != NULL && !json_is_null(v)) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > GRACE_MAX_S) {
                gw_call_fail(call, 400, "invalid_request",
                             "grace_seconds must be an integer from 0 to %d (30 days)",
                             GRACE_MAX_S);
                goto out;
            }
            grace = json_integer_value(v);
        }
    }
    set_details(call, json_pack("{s:s,s:I}", "key_id", id, "grace_seconds", grace));
    if (!keys_ready_or_respond(ctx, call))
        goto out;
    st = phg_keys_rotate(ctx->keys, id, (int64_t)grace, key, &rec);
    if (st == PHG_OK || st == PHG_ERR_UNAUDITED)
        json_object_set_new(call->audit_details, "new_key_id", json_string(rec.id));
    if (st == PHG_ERR_UNAUDITED) {
        int undone = undo_new_key(ctx, rec.id);
        json_object_set_new(call->audit_details, "undone", json_boolean(undone));
        /* The old key cannot be un-rotated: it keeps working until the end
         * of its grace period, then stops. */
        if (undone)
            gw_call_fail(call, 503, "audit_unavailable",
                         "the change could not be recorded in the audit log; it was undone: the "
                         "new key %s is revoked (the old key stays rotated and stops after its "
                         "grace period; create a new key when the audit log is back)",
                         rec.id);
        else
            gw_call_fail(call, 503, "audit_unavailable",
                         "the change could not be recorded in the audit log, and the new key %s "
                         "could not be revoked: revoke it when the store is back",
                         rec.id);
        goto out;
    }
    if (st != PHG_OK) {
        key_fail(call, st, "rotate the key");
        goto out;
    }
    v = json_pack("{s:s,s:o}", "key", key, "record", record_json(&rec));
    if (v != NULL && phg_keys_get(ctx->keys, id, &old) == PHG_OK)
        json_object_set_new(v, "previous", record_json(&old));
    reply(call, 201, v);
out:
    phg_wipe(key, sizeof key);
    json_decref(body);
}

/* POST /admin/keys/{id}/revoke */
static void key_revoke(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    phg_apikey_record rec;
    phg_status st;
    snprintf(call->action, sizeof call->action, "admin.keys.revoke");
    set_details(call, json_pack("{s:s}", "key_id", id));
    if (!query_names_or_respond(call, NULL) || !keys_ready_or_respond(ctx, call))
        return;
    st = phg_keys_revoke(ctx->keys, id);
    if (st == PHG_ERR_UNAUDITED) {
        gw_call_fail(call, 503, "audit_unavailable",
                     "the key IS revoked, but the audit record of the revocation could not be "
                     "written");
        return;
    }
    if (st != PHG_OK) {
        key_fail(call, st, "revoke the key");
        return;
    }
    st = phg_keys_get(ctx->keys, id, &rec);
    if (st != PHG_OK) {
        /* Revoked; only the read back failed. */
        reply(call, 200, json_pack("{s:s,s:s}", "id", id, "state", "revoked"));
        return;
    }
    reply(call, 200, record_json(&rec));
}

/* ---- the audit log ------------------------------------------------------------------ */

static int audit_ready_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    if (ctx->store != NULL)
        return 1;
    gw_call_fail(call, 503, "unavailable", "the audit log is not available on this instance");
    return 0;
}

/* The records of a page, each parsed from its stored text. */
static json_t *rows_json(const phg_audit_row *rows, size_t n)
{
    json_t *arr = json_array();
    size_t i;
    for (i = 0; arr != NULL && i < n; i++) {
        json_t *r = rows[i].json != NULL ? json_loads(rows[i].json, JSON_DECODE_ANY, NULL) : NULL;
        json_array_append_new(arr, r != NULL ? r : json_null());
    }
    return arr;
}

typedef struct audit_params {
    char from[PARAM_MAX + 1], to[PARAM_MAX + 1], user_id[PARAM_MAX + 1], key_id[PARAM_MAX + 1],
        action[PARAM_MAX + 1], outcome[PARAM_MAX + 1], request_id[PARAM_MAX + 1],
        subject[PARAM_MAX + 1], before[PARAM_MAX + 1];
} audit_params;

/* Read and validate the filters named in `allowed` into p and f. 1 ok. */
static int audit_filter_or_respond(gw_call *call, const char *const *allowed, audit_params *p,
                                   phg_audit_filter *f)
{
    struct {
        const char *name;
        char *buf;
    } texts[] = {
        {"user_id", p->user_id}, {"key_id", p->key_id},         {"action", p->action},
        {"outcome", p->outcome}, {"request_id", p->request_id}, {"subject", p->subject},
        {"before", p->before},
    };
    size_t i;

    memset(p, 0, sizeof *p);
    memset(f, 0, sizeof *f);
    if (!query_names_or_respond(call, allowed) || !limit_param(call, LIST_DEFAULT, &f->limit) ||
        !time_param(call, "from", &f->from_us, p->from) ||
        !time_param(call, "to", &f->to_us, p->to))
        return 0;
    for (i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (param(call, texts[i].name, texts[i].buf) < 0)
            return 0;
        if (texts[i].buf[0] != '\0' && !text_ok(texts[i].buf, PARAM_MAX)) {
            gw_call_fail(call, 400, "invalid_parameter", "%s has control characters",
                         texts[i].name);
            return 0;
        }
    }
    if (f->to_us != 0 && f->from_us >= f->to_us) {
        gw_call_fail(call, 400, "invalid_parameter", "to must be after from");
        return 0;
    }
    if (p->key_id[0] && !key_id_ok(p->key_id)) {
        gw_call_fail(call, 400, "invalid_parameter",
                     "key_id must be a key id (ak_ followed by lowercase letters and digits)");
        return 0;
    }
    if (p->request_id[0] && !ulid_ok(p->request_id)) {
        gw_call_fail(call, 400, "invalid_parameter", "request_id must be a ULID");
        return 0;
    }
    if (p->before[0] && !ulid_ok(p->before)) {
        gw_call_fail(call, 400, "invalid_parameter", "before must be a record id (a ULID)");
        return 0;
    }
    if (p->outcome[0] && strcmp(p->outcome, "success") != 0 && strcmp(p->outcome, "denied") != 0 &&
        strcmp(p->outcome, "error") != 0) {
        gw_call_fail(call, 400, "invalid_parameter", "outcome must be success, denied or error");
        return 0;
    }
    if (p->action[0]) {
        /* Actions are dotted names: "phi.decrypt", "admin.keys.create". */
        for (i = 0; p->action[i] != '\0'; i++) {
            char c = p->action[i];
            if (!is_lower_alnum((unsigned char)c) && c != '.' && c != '_' && c != '-' && c != ':')
                break;
        }
        if (p->action[i] != '\0' || i > 64) {
            gw_call_fail(call, 400, "invalid_parameter",
                         "action must be a name like phi.decrypt ([a-z0-9._:-], at most 64)");
            return 0;
        }
    }
    f->user_id = p->user_id[0] ? p->user_id : NULL;
    f->key_id = p->key_id[0] ? p->key_id : NULL;
    f->action = p->action[0] ? p->action : NULL;
    f->outcome = p->outcome[0] ? p->outcome : NULL;
    f->request_id = p->request_id[0] ? p->request_id : NULL;
    f->subject = p->subject[0] ? p->subject : NULL;
    f->before_id = p->before[0] ? p->before : NULL;
    return 1;
}

static json_t *filter_details(const audit_params *p, const phg_audit_filter *f)
{
    json_t *o = json_object();
    const struct {
        const char *name, *value;
    } items[] = {
        {"from", p->from},
        {"to", p->to},
        {"user_id", p->user_id},
        {"key_id", p->key_id},
        {"action", p->action},
        {"outcome", p->outcome},
        {"request_id", p->request_id},
        {"subject", p->subject},
        {"before", p->before},
    };
    size_t i;
    for (i = 0; o != NULL && i < sizeof items / sizeof items[0]; i++) {
        if (items[i].value[0] != '\0')
            json_object_set_new(o, items[i].name, json_string(items[i].value));
    }
    if (o != NULL)
        json_object_set_new(o, "limit", json_integer((json_int_t)f->limit));
    return o;
}

/* Run the query: 1 and the rows (the caller frees them), or 0 after a reply. */
static int run_query(const gw_admin_ctx *ctx, gw_call *call, const phg_audit_filter *f,
                     phg_audit_row **rows, size_t *n)
{
    char err[256] = "";
    phg_status st = phg_audit_query(ctx->store, f, rows, n, err, sizeof err);
    if (st == PHG_ERR_INVALID) {
        gw_call_fail(call, 400, "invalid_parameter", "%s", err[0] ? err : "a filter is invalid");
        return 0;
    }
    if (st != PHG_OK) {
        fail_status(call, st, "query the audit log");
        return 0;
    }
    return 1;
}

/* GET /admin/audit?... */
static void audit_query(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"from",   "to",      "user_id",    "key_id",
                                          "action", "outcome", "request_id", "subject",
                                          "before", "limit",   NULL};
    audit_params p;
    phg_audit_filter f;
    phg_audit_row *rows = NULL;
    size_t n = 0;

    snprintf(call->action, sizeof call->action, "admin.audit.query");
    snprintf(call->resource, sizeof call->resource, "audit");
    if (!audit_filter_or_respond(call, allowed, &p, &f))
        return;
    if (f.subject != NULL)
        snprintf(call->subject, sizeof call->subject, "%s", f.subject);
    set_details(call, json_pack("{s:o}", "filters", filter_details(&p, &f)));
    if (!audit_ready_or_respond(ctx, call) || !run_query(ctx, call, &f, &rows, &n))
        return;
    json_object_set_new(call->audit_details, "count", json_integer((json_int_t)n));
    reply(call, 200,
          json_pack("{s:o,s:o}", "records", rows_json(rows, n), "next",
                    n == f.limit && n > 0 ? json_string(rows[n - 1].id) : json_null()));
    phg_audit_rows_free(rows, n);
}

/*
 * GET /admin/audit/report?subject=&from=&to=&before=&limit=: the accounting
 * of disclosures of `phigate audit report --format json`: every record whose
 * subject is that user, newest first, one page at a time.
 */
static void audit_report(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"subject", "from", "to", "before", "limit", NULL};
    audit_params p;
    phg_audit_filter f;
    phg_audit_row *rows = NULL;
    size_t n = 0;

    snprintf(call->action, sizeof call->action, "admin.audit.report");
    snprintf(call->resource, sizeof call->resource, "audit");
    if (!audit_filter_or_respond(call, allowed, &p, &f))
        return;
    if (f.subject == NULL) {
        gw_call_fail(call, 400, "invalid_parameter", "subject is required (the user id)");
        return;
    }
    snprintf(call->subject, sizeof call->subject, "%s", f.subject);
    set_details(call, json_pack("{s:o}", "filters", filter_details(&p, &f)));
    if (!audit_ready_or_respond(ctx, call) || !run_query(ctx, call, &f, &rows, &n))
        return;
    json_object_set_new(call->audit_details, "count", json_integer((json_int_t)n));
    reply(call, 200,
          json_pack("{s:s,s:o,s:o,s:I,s:o,s:o}", "subject", f.subject, "from",
                    p.from[0] ? json_string(p.from) : json_null(), "to",
                    p.to[0] ? json_string(p.to) : json_null(), "count", (json_int_t)n, "accesses",
                    rows_json(rows, n), "next",
                    n == f.limit && n > 0 ? json_string(rows[n - 1].id) : json_null()));
    phg_audit_rows_free(rows, n);
}

/* GET /admin/audit/verify?from=&to= */
static void audit_verify(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"from", "to", NULL};
    char from[PARAM_MAX + 1], to[PARAM_MAX + 1];
    int64_t from_us, to_us;
    phg_audit_verify_report rep;
    json_t *res;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.audit.verify");
    snprintf(call->resource, sizeof call->resource, "audit");
    if (!query_names_or_respond(call, allowed) || !time_param(call, "from", &from_us, from) ||
        !time_param(call, "to", &to_us, to))
        return;
    if (to_us != 0 && from_us >= to_us) {
        gw_call_fail(call, 400, "invalid_parameter", "to must be after from");
        return;
    }
    set_details(call,
                json_pack("{s:s?,s:s?}", "from", from[0] ? from : NULL, "to", to[0] ? to : NULL));
    if (!audit_ready_or_respond(ctx, call))
        return;
    if (ctx->checkpoint_key == NULL) {
        gw_call_fail(call, 503, "unavailable", "no checkpoint key: the master key is not loaded");
        return;
    }
    memset(&rep, 0, sizeof rep);
    st = ctx->mk != NULL ? phg_audit_verify_mk(ctx->store, ctx->mk, from_us, to_us, &rep)
                         : phg_audit_verify(ctx->store, ctx->checkpoint_key, from_us, to_us, &rep);
    if (st != PHG_OK) {
        fail_status(call, st, "verify the audit log");
        return;
    }
    res = json_pack("{s:b,s:I,s:I,s:I}", "ok", rep.ok, "records", (json_int_t)rep.records, "chains",
                    (json_int_t)rep.chains, "checkpoints", (json_int_t)rep.checkpoints);
    if (res != NULL && !rep.ok) {
        json_object_set_new(res, "chain", json_string(rep.chain));
        json_object_set_new(res, "seq", json_integer((json_int_t)rep.seq));
        json_object_set_new(res, "id", rep.id[0] ? json_string(rep.id) : json_null());
        json_object_set_new(res, "problem", json_string(rep.problem));
    }
    if (call->audit_details != NULL) {
        json_object_set_new(call->audit_details, "ok", json_boolean(rep.ok));
        json_object_set_new(call->audit_details, "records", json_integer((json_int_t)rep.records));
    }
    reply(call, 200, res);
}

/* ---- the PHI keyring ---------------------------------------------------------------- */

static const char *key_state_name(phg_phi_key_state s)
{
    switch (s) {
    case PHG_PHI_KEY_ACTIVE:
        return "active";
    case PHG_PHI_KEY_DECRYPT_ONLY:
        return "decrypt-only";
    case PHG_PHI_KEY_DESTROYED:
        return "destroyed";
    }
    return "unknown";
}

static int keyring_ready_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    if (ctx->keyring != NULL)
        return 1;
    gw_call_fail(call, 503, "unavailable", "no PHI keyring is loaded on this instance");
    return 0;
}

/* Find a kid in the keyring; 1 and *info if there. */
static int keyring_find(phg_keyring *kr, const char *kid, phg_phi_key_info *info)
{
    size_t i, n = phg_keyring_count(kr);
    for (i = 0; i < n; i++) {
        if (phg_keyring_info(kr, i, info) == PHG_OK && strcmp(info->kid, kid) == 0)
            return 1;
    }
    return 0;
}

/*
 * Refuse to overwrite a stored keyring that holds what this instance has not
 * loaded (another instance or the CLI rotated or destroyed since): saving
 * our view would drop its keys, and the data under them. Every stored kid
 * must be known here, and every key destroyed there must be destroyed here.
 * 1 ok; 0 after a reply. Called with keyring_lock held.
 */
static int keyring_current_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    char *text = NULL;
    size_t len = 0, i;
    json_t *doc = NULL, *item;
    phg_status st;
    int ok = 0;

    if (ctx->store == NULL) {
        gw_call_fail(call, 503, "unavailable", "no store: the keyring cannot be saved");
        return 0;
    }
    st = phg_store_keyring_get(ctx->store, &text, &len);
    if (st == PHG_ERR_NOT_FOUND)
        return 1; /* none stored yet: the first save */
    if (st != PHG_OK) {
        fail_status(call, st, "read the stored keyring");
        return 0;
    }
    if (len <= PHG_PHI_KEYRING_TEXT_MAX)
        doc = json_loadb(text, len, 0, NULL);
    if (!json_is_array(json_object_get(doc, "keys"))) {
        gw_call_fail(call, 503, "unavailable",
                     "the keyring in the store cannot be read; nothing was changed");
        goto out;
    }
    json_array_foreach(json_object_get(doc, "keys"), i, item) {
        const char *kid = json_string_value(json_object_get(item, "kid"));
        const char *state = json_string_value(json_object_get(item, "state"));
        phg_phi_key_info info;
        if (kid == NULL || !keyring_find(ctx->keyring, kid, &info) ||
            (state != NULL && strcmp(state, "destroyed") == 0 &&
             info.state != PHG_PHI_KEY_DESTROYED)) {
            gw_call_fail(call, 409, "conflict",
                         "the keyring in the store has changes this instance has not loaded "
                         "(another instance or the CLI changed it); restart this instance to "
                         "load them, then retry; nothing was changed");
            goto out;
        }
    }
    ok = 1;
out:
    json_decref(doc);
    if (text != NULL) {
        phg_wipe(text, len); /* wrapped DEKs only, but no need to leave them around */
        free(text);
    }
    return ok;
}

/* Save the in-memory keyring to the store. Called with keyring_lock held. */
static phg_status keyring_save(const gw_admin_ctx *ctx)
{
    char *text = NULL;
    size_t len = 0;
    phg_status st = phg_keyring_to_json(ctx->keyring, &text, &len);
    if (st == PHG_OK)
        st = phg_store_keyring_put(ctx->store, text, len);
    if (text != NULL) {
        phg_wipe(text, len);
        free(text);
    }
    if (st == PHG_OK && unsaved_keyring == ctx->keyring)
        unsaved_keyring = NULL;
    else if (st != PHG_OK)
        unsaved_keyring = ctx->keyring;
    return st;
}

/* Before a mutation: the store is current, and a pending state is saved. */
static int keyring_prepare_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    if (!keyring_current_or_respond(ctx, call))
        return 0;
    if (unsaved_keyring == ctx->keyring && keyring_save(ctx) != PHG_OK) {
        gw_call_fail(call, 503, "unavailable",
                     "an earlier keyring change is still not saved to the store, and saving "
                     "it failed again; nothing new was changed; retry when the store is back");
        return 0;
    }
    return 1;
}

/* GET /admin/phi/keys */
static void phi_keys_list(const gw_admin_ctx *ctx, gw_call *call)
{
    char primary[PHG_PHI_KID_MAX + 1] = "";
    json_t *arr;
    size_t i, n;
    int unsaved;

    snprintf(call->action, sizeof call->action, "admin.phi.keys.list");
    snprintf(call->resource, sizeof call->resource, "phi-keyring");
    if (!query_names_or_respond(call, NULL) || !keyring_ready_or_respond(ctx, call))
        return;
    pthread_mutex_lock(&keyring_lock);
    unsaved = unsaved_keyring == ctx->keyring;
    (void)phg_keyring_primary(ctx->keyring, primary);
    arr = json_array();
    n = phg_keyring_count(ctx->keyring);
    for (i = 0; arr != NULL && i < n; i++) {
        phg_phi_key_info info;
        if (phg_keyring_info(ctx->keyring, i, &info) != PHG_OK)
            continue;
        json_array_append_new(arr, json_pack("{s:s,s:s,s:o}", "kid", info.kid, "state",
                                             key_state_name(info.state), "created",
                                             time_or_null(info.created_s)));
    }
    pthread_mutex_unlock(&keyring_lock);
    reply(call, 200,
          json_pack("{s:s,s:o,s:b}", "primary", primary, "keys", arr, "unsaved", unsaved));
}

/* POST /admin/phi/keys/rotate */
static void phi_keys_rotate(const gw_admin_ctx *ctx, gw_call *call)
{
    char old_kid[PHG_PHI_KID_MAX + 1] = "", new_kid[PHG_PHI_KID_MAX + 1] = "";
    phg_status st, saved;

    snprintf(call->action, sizeof call->action, "admin.phi.keys.rotate");
    snprintf(call->resource, sizeof call->resource, "phi-keyring");
    if (!query_names_or_respond(call, NULL) || !keyring_ready_or_respond(ctx, call))
        return;
    pthread_mutex_lock(&keyring_lock);
    if (!keyring_prepare_or_respond(ctx, call))
        goto out;
    (void)phg_keyring_primary(ctx->keyring, old_kid);
    st = phg_keyring_rotate(ctx->keyring, new_kid);
    if (st != PHG_OK && st != PHG_ERR_UNAUDITED) {
        if (st == PHG_ERR_TOO_LARGE)
            gw_call_fail(call, 409, "conflict", "the keyring is full (%d keys)",
                         PHG_PHI_KEYRING_KEYS_MAX);
        else
            fail_status(call, st, "rotate the keyring");
        goto out;
    }
    set_details(call, json_pack("{s:s,s:s}", "previous", old_kid, "primary", new_kid));
    /* The change is made (audited or not): the store must hold it, or data
     * encrypted from now on is under a key that exists only in memory. */
    saved = keyring_save(ctx);
    if (saved != PHG_OK) {
        gw_call_fail(call, 503, "unavailable",
                     "the keyring was rotated in memory (new primary %s) but could not be "
                     "saved to the store: until it is, data encrypted now depends on this "
                     "process; retry this request when the store is back (it saves first)",
                     new_kid);
        goto out;
    }
    if (st == PHG_ERR_UNAUDITED) {
        gw_call_fail(call, 503, "audit_unavailable",
                     "the keyring was rotated (new primary %s) and saved, but its audit record "
                     "could not be written",
                     new_kid);
        goto out;
    }
    reply(call, 201, json_pack("{s:s,s:s}", "kid", new_kid, "previous", old_kid));
out:
    pthread_mutex_unlock(&keyring_lock);
}

/* POST /admin/phi/keys/{kid}/destroy {"confirm":"destroy <kid>"} */
static void phi_key_destroy(const gw_admin_ctx *ctx, gw_call *call, const char *kid)
{
    static const char *const allowed[] = {"confirm", NULL};
    char want[PHG_PHI_KID_MAX + 16];
    json_t *body = NULL;
    const char *confirm;
    phg_phi_key_info info;
    phg_status st, saved;

    snprintf(call->action, sizeof call->action, "admin.phi.keys.destroy");
    snprintf(call->resource, sizeof call->resource, "phi-keyring");
    set_details(call, json_pack("{s:s}", "kid", kid));
    if (!query_names_or_respond(call, NULL))
        return;
    snprintf(want, sizeof want, "destroy %s", kid);
    if (call->body_len == 0) {
        gw_call_fail(call, 400, "confirmation_required",
                     "destroying a data key makes its data unreadable for good; to confirm, "
                     "send the body {\"confirm\":\"%s\"}",
                     want);
        return;
    }
    body = body_or_respond(call);
    if (body == NULL)
        return;
    if (!members_or_respond(call, body, allowed))
        goto out_body;
    confirm = json_string_value(json_object_get(body, "confirm"));
    if (confirm == NULL || strcmp(confirm, want) != 0) {
        gw_call_fail(call, 400, "confirmation_required",
                     "destroying a data key makes its data unreadable for good; to confirm, "
                     "send the body {\"confirm\":\"%s\"}",
                     want);
        goto out_body;
    }
    if (!keyring_ready_or_respond(ctx, call))
        goto out_body;
    pthread_mutex_lock(&keyring_lock);
    if (!keyring_find(ctx->keyring, kid, &info)) {
        gw_call_fail(call, 404, "not_found", "no data key with that kid");
        goto out;
    }
    if (info.is_primary) {
        gw_call_fail(call, 409, "conflict",
                     "%s is the primary key: rotate first (POST /admin/phi/keys/rotate)", kid);
        goto out;
    }
    if (info.state == PHG_PHI_KEY_DESTROYED) {
        gw_call_fail(call, 409, "conflict", "%s is already destroyed", kid);
        goto out;
    }
    if (!keyring_prepare_or_respond(ctx, call))
        goto out;
    st = phg_keyring_destroy(ctx->keyring, kid);
    if (st == PHG_ERR_NOT_FOUND) {
        gw_call_fail(call, 404, "not_found", "no data key with that kid");
        goto out;
    }
    if (st == PHG_ERR_STATE) {
        gw_call_fail(call, 409, "conflict", "%s is the primary key or already destroyed", kid);
        goto out;
    }
    if (st != PHG_OK && st != PHG_ERR_UNAUDITED) {
        fail_status(call, st, "destroy the key");
        goto out;
    }
    /* Destroyed in memory for good (the DEK is wiped, nothing can undo it);
     * until the store is written, its wrapped copy there still exists. */
    saved = keyring_save(ctx);
    if (saved != PHG_OK) {
        gw_call_fail(call, 503, "unavailable",
                     "%s is destroyed in memory but the keyring could not be saved to the "
                     "store, which still holds it; retry any keyring change when the store is "
                     "back (it saves first)",
                     kid);
        goto out;
    }
    if (st == PHG_ERR_UNAUDITED) {
        gw_call_fail(call, 503, "audit_unavailable",
                     "%s is destroyed and saved, but its audit record could not be written", kid);
        goto out;
    }
    reply(call, 200, json_pack("{s:s,s:s}", "kid", kid, "state", "destroyed"));
out:
    pthread_mutex_unlock(&keyring_lock);
out_body:
    json_decref(body);
}

/* ---- rate limits -------------------------------------------------------------------- */

/*
 * The usage, reset and limit of one key, and the keys with the most
 * violations. Usage reads the counts without counting (a peek) from the
 * engine the gateway decides with: the local engine, keyed by the key id on
 * the server's clock (CLOCK_MONOTONIC in ms: the same as server.c), or the
 * shared Redis. The violation records are written by server.c (gw.h,
 * GW_RL_VIOLATION_ACTION); this only reads them back.
 */

#define VIOLATIONS_DEFAULT 20
#define VIOLATIONS_SCAN_MAX 10000                /* records read per call, at most */
#define VIOLATIONS_PERIOD_US (86400LL * 1000000) /* the default period: one day */
#define VIOLATION_COUNT_MAX 1000000000000LL      /* one record's count, clamped (hostile text) */


static int rl_engine_is_redis(const gw_config *cfg)
{
    return strcmp(cfg->rl_engine, "redis") == 0;
}

/* The configuration and, for the local engine, the engine itself. */
static int rl_ready_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    if (ctx->cfg == NULL) {
        gw_call_fail(call, 503, "unavailable", "rate limiting is not set up on this instance");
        return 0;
    }
    if (ctx->rl == NULL) {
        gw_call_fail(call, 503, "unavailable",
                     "the local rate limiter is not available on this instance");
        return 0;
    }
    return 1;
}

/* Unix microseconds -> "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (fraction when not 0). */
static void format_time_us(int64_t us, char out[TIME_TEXT])
{
    char secs[TIME_TEXT];
    int64_t frac = us % 1000000;
    format_time(us / 1000000, secs);
    if (frac == 0 || strlen(secs) != 20) {
        snprintf(out, TIME_TEXT, "%s", secs);
        return;
    }
    snprintf(out, TIME_TEXT, "%.19s.%06lldZ", secs, (long long)frac);
}

/* A peek failed: Redis away is 503, anything else the usual mapping. */
static void rl_fail(gw_call *call, phg_status st, const char *doing)
{
    if (st == PHG_ERR_UNAVAILABLE)
        gw_call_fail(call, 503, "unavailable",
                     "cannot %s: the rate limiter's Redis does not answer", doing);
    else
        fail_status(call, st, doing);
}

/* GET /admin/keys/{id}/ratelimit */
static void ratelimit_usage(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    phg_apikey_record rec;
    phg_rl_policy policy;
    char text[PHG_RL_TEXT_MAX + 1];
    const char *source = "none";
    json_t *windows = NULL;
    uint64_t now_ms;
    size_t i, id_len = strlen(id);
    int redis;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.ratelimit.usage");
    set_details(call, json_pack("{s:s}", "key_id", id));
    if (!query_names_or_respond(call, NULL) || !keys_ready_or_respond(ctx, call) ||
        !rl_ready_or_respond(ctx, call))
        return;
    st = phg_keys_get(ctx->keys, id, &rec);
    if (st != PHG_OK) {
        key_fail(call, st, "read the key");
        return;
    }
    gw_rl_policy_for(ctx->cfg, rec.role, rec.rate_limit, &policy, &source);
    phg_rl_policy_format(&policy, text, sizeof text);
    redis = rl_engine_is_redis(ctx->cfg);
    windows = json_array();
    now_ms = gw_mono_ms();
    /* One peek per window, each with a policy of that window alone: a
     * decision reports only its binding window. A peek counts nothing and
     * leaves the key's other windows as they are. */
    for (i = 0; windows != NULL && i < policy.n; i++) {
        phg_rl_policy one;
        phg_rl_decision d;
        uint32_t n, used, remaining, reset_s;
        memset(&one, 0, sizeof one);
        memset(&d, 0, sizeof d);
        one.limits[0] = policy.limits[i];
        one.n = 1;
        if (redis)
            st = gw_redis_decide_sync(ctx->cfg->rl_redis_host, ctx->cfg->rl_redis_port,
                                      ctx->cfg->rl_timeout_ms, "peek", id, id_len, &one, &d);
        else
            st = phg_rl_peek(ctx->rl, id, id_len, &one, now_ms, &d);
        if (st != PHG_OK) {
            json_decref(windows);
            rl_fail(call, st, "read the key's usage");
            return;
        }
        /* A peek answers as a check would (ratelimit.h): admitted, its
         * remaining already counts that one request; refused, the window is
         * full. Usage is the state before any request. */
        n = one.limits[0].count;
        if (d.allowed && d.remaining < n) {
            remaining = d.remaining + 1;
            reset_s = 0;
        } else {
            remaining = 0;
            reset_s = d.reset_s >= 1 ? d.reset_s : 1;
        }
        used = n - remaining;
        json_array_append_new(
            windows, json_pack("{s:I,s:I,s:I,s:I,s:I}", "limit", (json_int_t)n, "window_s",
                               (json_int_t)one.limits[0].window_s, "used", (json_int_t)used,
                               "remaining", (json_int_t)remaining, "reset_s", (json_int_t)reset_s));
    }
    if (call->audit_details != NULL)
        json_object_set_new(call->audit_details, "engine", json_string(redis ? "redis" : "local"));
    reply(call, 200,
          json_pack("{s:s,s:s,s:s,s:s,s:o}", "key_id", id, "policy", text, "source", source,
                    "engine", redis ? "redis" : "local", "windows", windows));
}

/* POST /admin/keys/{id}/ratelimit/reset */
static void ratelimit_reset(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    phg_apikey_record rec;
    phg_rl_policy policy;
    phg_rl_decision d;
    size_t id_len = strlen(id);
    int redis;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.ratelimit.reset");
    set_details(call, json_pack("{s:s}", "key_id", id));
    if (!query_names_or_respond(call, NULL))
        return;
    if (call->body_len > 0) {
        gw_call_fail(call, 400, "invalid_request", "this call takes no body");
        return;
    }
    if (!keys_ready_or_respond(ctx, call) || !rl_ready_or_respond(ctx, call))
        return;
    st = phg_keys_get(ctx->keys, id, &rec);
    if (st != PHG_OK) {
        key_fail(call, st, "read the key");
        return;
    }
    redis = rl_engine_is_redis(ctx->cfg);
    if (call->audit_details != NULL)
        json_object_set_new(call->audit_details, "engine", json_string(redis ? "redis" : "local"));
    /* The local engine always: with Redis it is the fallback, and its
     * counts would refuse the key while Redis is away. */
    phg_rl_reset(ctx->rl, id, id_len);
    if (redis) {
        gw_rl_policy_for(ctx->cfg, rec.role, rec.rate_limit, &policy, NULL);
        memset(&d, 0, sizeof d);
        st = gw_redis_decide_sync(ctx->cfg->rl_redis_host, ctx->cfg->rl_redis_port,
                                  ctx->cfg->rl_timeout_ms, "reset", id, id_len, &policy, &d);
        if (st != PHG_OK) {
            if (st == PHG_ERR_UNAVAILABLE)
                gw_call_fail(call, 503, "unavailable",
                             "the local counts were reset, but the rate limiter's Redis does "
                             "not answer: its counts are unchanged; retry");
            else
                fail_status(call, st, "reset the key's counts on Redis");
            return;
        }
    }
    reply(call, 200, json_pack("{s:s,s:b}", "key_id", id, "reset", 1));
}

/* PUT /admin/keys/{id}/ratelimit {"limit":"100/1m,5000/1h"} or {"limit":null} */
static void ratelimit_set(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    static const char *const allowed[] = {"limit", NULL};
    json_t *body = NULL, *v;
    phg_apikey_record prev, rec;
    char err[256] = "";
    const char *limit = NULL;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.keys.set_limit");
    set_details(call, json_pack("{s:s}", "key_id", id));
    memset(&rec, 0, sizeof rec);
    if (!query_names_or_respond(call, NULL))
        return;
    body = body_or_respond(call);
    if (body == NULL)
        return;
    if (!members_or_respond(call, body, allowed))
        goto out;
    v = json_object_get(body, "limit");
    if (v == NULL || (!json_is_null(v) && !json_is_string(v))) {
        gw_call_fail(call, 400, "invalid_request",
                     "limit is required: a policy such as \"100/1m,5000/1h\", or null to clear "
                     "the key's own limit");
        goto out;
    }
    if (json_is_string(v)) {
        if (json_string_length(v) > PHG_APIKEY_LIMIT_MAX ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            gw_call_fail(call, 400, "invalid_parameter", "limit: at most %d bytes, without NUL",
                         PHG_APIKEY_LIMIT_MAX);
            goto out;
        }
        limit = json_string_value(v);
        if (limit[0] == '\0')
            limit = NULL; /* "" clears, as null does */
    }
    if (!keys_ready_or_respond(ctx, call))
        goto out;
    /* The previous limit, to put back if the change cannot be recorded. */
    st = phg_keys_get(ctx->keys, id, &prev);
    if (st != PHG_OK) {
        key_fail(call, st, "read the key");
        goto out;
    }
    if (call->audit_details != NULL)
        json_object_set_new(call->audit_details, "previous",
                            prev.rate_limit[0] ? json_string(prev.rate_limit) : json_null());
    st = phg_keys_set_limit(ctx->keys, id, limit, &rec, err, sizeof err);
    /* The new limit as stored (canonical); a refused text is the caller's
     * input, possibly anything, and is not recorded. */
    if ((st == PHG_OK || st == PHG_ERR_UNAUDITED) && call->audit_details != NULL)
        json_object_set_new(call->audit_details, "limit",
                            rec.rate_limit[0] ? json_string(rec.rate_limit) : json_null());
    if (st == PHG_ERR_UNAUDITED) {
        /* Fail closed: a change nobody can account for is taken back. */
        phg_apikey_record back;
        char err2[256] = "";
        phg_status undo = phg_keys_set_limit(
            ctx->keys, id, prev.rate_limit[0] ? prev.rate_limit : NULL, &back, err2, sizeof err2);
        int undone = undo == PHG_OK || undo == PHG_ERR_UNAUDITED;
        if (call->audit_details != NULL)
            json_object_set_new(call->audit_details, "undone", json_boolean(undone));
        if (undone)
            gw_call_fail(call, 503, "audit_unavailable",
                         "the change could not be recorded in the audit log; it was undone "
                         "(the key's limit is back to %s)",
                         prev.rate_limit[0] ? prev.rate_limit : "none of its own");
        else
            gw_call_fail(call, 503, "audit_unavailable",
                         "the change could not be recorded in the audit log, and could not be "
                         "undone: the key's limit is now %s; set it again when the store is "
                         "back",
                         rec.rate_limit[0] ? rec.rate_limit : "none of its own");
        goto out;
    }
    if (st == PHG_ERR_INVALID) {
        gw_call_fail(call, 400, "invalid_parameter", "%s",
                     err[0] ? err : "limit: not a valid rate limit (such as \"100/1m,5000/1h\")");
        goto out;
    }
    if (st == PHG_ERR_STATE) {
        gw_call_fail(call, 409, "conflict", "cannot set the limit: the key is revoked");
        goto out;
    }
    if (st != PHG_OK) {
        key_fail(call, st, "set the limit");
        goto out;
    }
    reply(call, 200, record_json(&rec));
out:
    json_decref(body);
}

/* One key's violations, summed over its records. */
typedef struct violator {
    char key_id[PHG_APIKEY_ID_MAX + 1];
    char user_id[PHG_APIKEY_USER_MAX + 1];
    int64_t count;
    int64_t first_us, last_us;
} violator;

static int violator_by_key(const void *a, const void *b)
{
    return strcmp(((const violator *)a)->key_id, ((const violator *)b)->key_id);
}

/* Most violations first; ties by key id, so that pages are stable. */
static int violator_by_count(const void *a, const void *b)
{
    const violator *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->key_id, y->key_id);
}

/* A time of a record's details, or `fallback` when it is not one. */
static int64_t detail_time_us(json_t *details, const char *name, int64_t fallback)
{
    const char *s = json_string_value(json_object_get(details, name));
    int64_t us;
    if (s == NULL || !parse_time_us(s, &us))
        return fallback;
    return us;
}

/* A stored violation record into *v. 0 if it names no key (not ours). */
static int violation_parse(const phg_audit_row *row, violator *v)
{
    json_t *rec = row->json != NULL ? json_loads(row->json, 0, NULL) : NULL;
    json_t *actor = json_object_get(rec, "actor"), *details = json_object_get(rec, "details");
    const char *key = json_string_value(json_object_get(actor, "key_id"));
    const char *user = json_string_value(json_object_get(actor, "user_id"));
    const char *resource = json_string_value(json_object_get(rec, "resource"));
    json_t *count = json_object_get(details, "count");
    int ok = 0;

    memset(v, 0, sizeof *v);
    if (key == NULL || !key_id_ok(key))
        key = resource != NULL && strncmp(resource, "key:", 4) == 0 ? resource + 4 : NULL;
    if (key == NULL || !key_id_ok(key))
        goto out;
    snprintf(v->key_id, sizeof v->key_id, "%s", key);
    if (user == NULL || user[0] == '\0')
        user = json_string_value(json_object_get(details, "subject"));
    snprintf(v->user_id, sizeof v->user_id, "%s", user != NULL ? user : "");
    /* Each record stands for at least one refusal. */
    v->count = json_is_integer(count) ? json_integer_value(count) : 1;
    if (v->count < 1)
        v->count = 1;
    if (v->count > VIOLATION_COUNT_MAX)
        v->count = VIOLATION_COUNT_MAX;
    v->first_us = detail_time_us(details, "first", row->ts_us);
    v->last_us = detail_time_us(details, "last", row->ts_us);
    if (v->last_us < v->first_us)
        v->last_us = v->first_us;
    ok = 1;
out:
    json_decref(rec);
    return ok;
}

/* GET /admin/ratelimit/violations?from=&to=&limit= */
static void ratelimit_violations(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"from", "to", "limit", NULL};
    char from_text[PARAM_MAX + 1], to_text[PARAM_MAX + 1], from_out[TIME_TEXT], to_out[TIME_TEXT];
    char before[PHG_ULID_LEN + 1] = "";
    int64_t from_us, to_us;
    size_t limit, scanned = 0, n = 0, cap = 0, i, out_n;
    violator *vs = NULL;
    json_t *keys = NULL;
    int truncated = 0;

    snprintf(call->action, sizeof call->action, "admin.ratelimit.violations");
    snprintf(call->resource, sizeof call->resource, "ratelimit");
    if (!query_names_or_respond(call, allowed) || !limit_param(call, VIOLATIONS_DEFAULT, &limit) ||
        !time_param(call, "from", &from_us, from_text) || !time_param(call, "to", &to_us, to_text))
        return;
    /* Default: the day up to now (to the next whole second, so that a
     * record written this second is in). */
    if (to_us == 0)
        to_us = ((int64_t)time(NULL) + 1) * 1000000;
    if (from_us == 0)
        from_us = to_us > VIOLATIONS_PERIOD_US ? to_us - VIOLATIONS_PERIOD_US : 1;
    if (from_us >= to_us) {
        gw_call_fail(call, 400, "invalid_parameter", "to must be after from");
        return;
    }
    format_time_us(from_us, from_out);
    format_time_us(to_us, to_out);
    set_details(call, json_pack("{s:s,s:s,s:I}", "from", from_out, "to", to_out, "limit",
                                (json_int_t)limit));
    if (!audit_ready_or_respond(ctx, call))
        return;

    /* Read newest first, a page at a time, up to VIOLATIONS_SCAN_MAX
     * records; one more is asked for to know whether there were more. */
    for (;;) {
        phg_audit_filter f;
        phg_audit_row *rows = NULL;
        size_t got = 0, want = VIOLATIONS_SCAN_MAX + 1 - scanned;
        memset(&f, 0, sizeof f);
        f.from_us = from_us;
        f.to_us = to_us;
        f.action = GW_RL_VIOLATION_ACTION;
        f.before_id = before[0] ? before : NULL;
        f.limit = want < PHG_AUDIT_QUERY_MAX ? want : PHG_AUDIT_QUERY_MAX;
        if (!run_query(ctx, call, &f, &rows, &got))
            goto out;
        for (i = 0; i < got; i++) {
            if (scanned == VIOLATIONS_SCAN_MAX) {
                truncated = 1;
                break;
            }
            scanned++;
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 256;
                violator *nv = realloc(vs, ncap * sizeof *nv);
                if (nv == NULL) {
                    phg_audit_rows_free(rows, got);
                    gw_call_fail(call, 503, "unavailable", "out of memory");
                    goto out;
                }
                vs = nv;
                cap = ncap;
            }
            if (violation_parse(&rows[i], &vs[n]))
                n++;
        }
        if (got > 0)
            snprintf(before, sizeof before, "%s", rows[got - 1].id);
        phg_audit_rows_free(rows, got);
        if (truncated || got < f.limit)
            break;
    }

    /* Sum per key: sort by key, fold runs. */
    if (n > 0)
        qsort(vs, n, sizeof *vs, violator_by_key);
    out_n = 0;
    for (i = 0; i < n; i++) {
        violator *w = out_n > 0 ? &vs[out_n - 1] : NULL;
        if (w != NULL && strcmp(w->key_id, vs[i].key_id) == 0) {
            w->count += vs[i].count;
            if (vs[i].first_us < w->first_us)
                w->first_us = vs[i].first_us;
            if (vs[i].last_us > w->last_us)
                w->last_us = vs[i].last_us;
            if (w->user_id[0] == '\0')
                memcpy(w->user_id, vs[i].user_id, sizeof w->user_id);
        } else {
            if (out_n != i)
                vs[out_n] = vs[i];
            out_n++;
        }
    }
    if (out_n > 0)
        qsort(vs, out_n, sizeof *vs, violator_by_count);
    keys = json_array();
    for (i = 0; keys != NULL && i < out_n && i < limit; i++) {
        char first[TIME_TEXT], last[TIME_TEXT];
        format_time_us(vs[i].first_us, first);
        format_time_us(vs[i].last_us, last);
        json_array_append_new(keys,
                              json_pack("{s:s,s:s,s:I,s:s,s:s}", "key_id", vs[i].key_id, "user_id",
                                        vs[i].user_id, "violations", (json_int_t)vs[i].count,
                                        "first", first, "last", last));
    }
    if (call->audit_details != NULL) {
        json_object_set_new(call->audit_details, "records_scanned",
                            json_integer((json_int_t)scanned));
        json_object_set_new(call->audit_details, "keys", json_integer((json_int_t)out_n));
    }
    reply(call, 200,
          json_pack("{s:s,s:s,s:o,s:I,s:b}", "from", from_out, "to", to_out, "keys", keys,
                    "records_scanned", (json_int_t)scanned, "truncated", truncated));
    keys = NULL;
out:
    free(vs);
}

/* ---- webhooks ----------------------------------------------------------------------- */

/*
 * Webhook sources and the events of the inbox (issue 7). Sources are those
 * of the store (phigate/webhook_store.h), changed here, and those of the
 * configuration file ([webhook:NAME]), shown but never changed here (the
 * file wins over a store source of the same name, so creating one is
 * refused). A change rebuilds the gateway's live sources before the answer
 * (gw_webhooks_reload); a replay wakes the delivery threads
 * (gw_webhooks_kick).
 *
 * Secret texts come in a body, go to the store (which encrypts them under
 * the master key) and are wiped, jansson's copies included; only their
 * fingerprints come out, in answers and in audit details. A source's verify
 * token (the oura / fitbit handshake's) is handled the same way, and only
 * whether there is one (has_verify_token) ever comes out. Event bodies are
 * PHI: they are never read here (an event is looked up through the list,
 * which gives no bodies, rather than phg_wh_inbox_get, which decrypts).
 */

#define WH_SECRET_TEXT_MAX 4096 /* bytes of one secret's text in a body (the CLI's file limit) */
#define WH_INDEX_DIGITS 9       /* a secret's index in a path */

/* The inbox: the one a test set, else the gateway's. NULL: none. */
static phg_wh_inbox *wh_inbox(const gw_admin_ctx *ctx)
{
    if (ctx->wh_inbox != NULL)
        return ctx->wh_inbox;
    return ctx->webhooks != NULL ? gw_webhooks_inbox(ctx->webhooks) : NULL;
}

static phg_wh_inbox *wh_inbox_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    phg_wh_inbox *inbox = wh_inbox(ctx);
    if (inbox == NULL)
        gw_call_fail(call, 503, "webhooks_unavailable",
                     "this instance has no webhook inbox ([webhooks] enabled = false, or it "
                     "could not start)");
    return inbox;
}

/* After a change to the store's sources: the live sources follow at once
 * (other instances within their poll interval). */
static void wh_reload(const gw_admin_ctx *ctx)
{
    if (ctx->webhooks != NULL)
        gw_webhooks_reload(ctx->webhooks, NULL);
}

static void wh_kick(const gw_admin_ctx *ctx)
{
    if (ctx->webhooks != NULL)
        gw_webhooks_kick(ctx->webhooks);
}

static int wh_store_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    if (ctx->store != NULL)
        return 1;
    gw_call_fail(call, 503, "unavailable", "no store: webhook sources are not available");
    return 0;
}

/* Adding a secret needs the master key that encrypts it. */
static int wh_mk_or_respond(const gw_admin_ctx *ctx, gw_call *call)
{
    if (ctx->mk != NULL)
        return 1;
    gw_call_fail(call, 503, "unavailable",
                 "no master key is loaded on this instance: webhook secrets cannot be stored "
                 "(set PHI_MASTER_KEY, or use `phigate webhooks source` with the key)");
    return 0;
}

/* The [webhook:NAME] section of that name, or NULL. */
static const gw_wh_conf *wh_conf_find(const gw_admin_ctx *ctx, const char *name)
{
    size_t i;
    if (ctx->cfg == NULL)
        return NULL;
    for (i = 0; i < ctx->cfg->n_wh_sources && i < GW_WH_CONF_MAX; i++) {
        if (strcmp(ctx->cfg->wh_sources[i].name, name) == 0)
            return &ctx->cfg->wh_sources[i];
    }
    return NULL;
}

/* A configured source may not be changed through the API: 409 and 1. */
static int wh_configured_respond(const gw_admin_ctx *ctx, gw_call *call, const char *name)
{
    if (wh_conf_find(ctx, name) == NULL)
        return 0;
    gw_call_fail(call, 409, "conflict",
                 "the source %s is defined in the configuration file ([webhook:%s]); change it "
                 "there, then reload (SIGHUP)",
                 name, name);
    return 1;
}

/* Wipe a JSON string's text in place (jansson owns it; it is freed with
 * its object, unwiped otherwise). */
static void wipe_json_string(json_t *v)
{
    if (json_is_string(v))
        phg_wipe((char *)json_string_value(v), json_string_length(v));
}

/* Every string of a webhook body, wherever a caller put a secret (a body
 * refused for its shape may hold one anywhere). Called last: what was taken
 * from the body was copied. */
static void wh_wipe_body(json_t *v, int depth)
{
    const char *name;
    json_t *item;
    size_t i;
    if (depth > 16)
        return; /* a body is at most 64 KiB; jansson nests at most 2048 */
    if (json_is_string(v)) {
        wipe_json_string(v);
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, item) {
            wh_wipe_body(item, depth + 1);
        }
    } else if (json_is_object(v)) {
        json_object_foreach(v, name, item) {
            wh_wipe_body(item, depth + 1);
        }
    }
}

/* A string member without NUL, or NULL. */
static const char *json_text(json_t *v)
{
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return NULL;
    return json_string_value(v);
}


/* Unix ms -> "YYYY-MM-DDTHH:MM:SS.mmmZ". */
static void format_time_ms(int64_t ms, char out[TIME_TEXT])
{
    char secs[TIME_TEXT];
    format_time(ms / 1000, secs);
    if (ms < 0 || strlen(secs) != 20) {
        snprintf(out, TIME_TEXT, "%s", secs);
        return;
    }
    snprintf(out, TIME_TEXT, "%.19s.%03lldZ", secs, (long long)(ms % 1000));
}

static json_t *int_or_null(int64_t v)
{
    return v != 0 ? json_integer((json_int_t)v) : json_null();
}

static const char *wh_secret_state(const phg_webhook_secret_info *s, int64_t now)
{
    if (s->retired_at != 0)
        return "retired";
    if (s->not_after != 0 && now > s->not_after)
        return "expired";
    return "active";
}

/* A store source as JSON: never a secret's text, only its metadata. */
static json_t *wh_source_json(const gw_admin_ctx *ctx, const phg_webhook_source_info *info,
                              int with_secrets)
{
    int64_t now = (int64_t)time(NULL);
    json_t *o, *arr;
    size_t i;

    o = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:s,s:b,s:b}", "name", info->name, "scheme",
                  info->scheme, "tolerance_s", (json_int_t)info->tolerance_s, "deliver_to",
                  info->deliver_to, "created_at", time_or_null(info->created_at), "updated_at",
                  time_or_null(info->updated_at), "origin", "store", "shadowed",
                  wh_conf_find(ctx, info->name) != NULL, "has_verify_token",
                  info->has_verify_token != 0);
    if (o == NULL || !with_secrets)
        return o;
    arr = json_array();
    for (i = 0; arr != NULL && i < info->n_secrets; i++) {
        const phg_webhook_secret_info *s = &info->secrets[i];
        json_array_append_new(
            arr, json_pack("{s:I,s:s,s:o,s:o,s:o,s:s}", "index", (json_int_t)s->index,
                           "fingerprint", s->fingerprint, "not_after", time_or_null(s->not_after),
                           "retired_at", time_or_null(s->retired_at), "created_at",
                           time_or_null(s->created_at), "state", wh_secret_state(s, now)));
    }
    json_object_set_new(o, "secrets", arr != NULL ? arr : json_null());
    return o;
}

/* A configured source as JSON: no secret, no file path. With the live
 * source (the gateway's), the fingerprints of its secrets. */
static json_t *wh_conf_json(const gw_admin_ctx *ctx, const gw_wh_conf *c, int with_secrets)
{
    const gw_wh_source *live;
    void *hold = NULL;
    json_t *o, *arr;
    size_t i;

    o = json_pack("{s:s,s:s,s:I,s:s,s:n,s:n,s:s,s:b,s:b}", "name", c->name, "scheme", c->scheme,
                  "tolerance_s", (json_int_t)c->tolerance_s, "deliver_to", c->deliver_to,
                  "created_at", "updated_at", "origin", "config", "shadowed", 0, "has_verify_token",
                  c->verify_token_file[0] != '\0');
    if (o == NULL || !with_secrets)
        return o;
    arr = json_array();
    live = ctx->webhooks != NULL ? gw_webhooks_find_held(ctx->webhooks, c->name, &hold) : NULL;
    for (i = 0; arr != NULL && live != NULL && live->from_config && live->src != NULL &&
                i < PHG_WEBHOOK_SECRETS_MAX;
         i++) {
        char fp[20];
        if (phg_webhook_secret_fingerprint(live->src, i, fp) != PHG_OK)
            break;
        json_array_append_new(arr, json_pack("{s:I,s:s,s:n,s:n,s:n,s:s}", "index",
                                             (json_int_t)live->secret_index[i], "fingerprint", fp,
                                             "not_after", "retired_at", "created_at", "state",
                                             "active"));
    }
    gw_webhooks_release(hold);
    json_object_set_new(o, "secrets", arr != NULL ? arr : json_null());
    return o;
}

/* A source name from the path: checked before any lookup. */
static int wh_name_or_respond(gw_call *call, const char *name)
{
    if (phg_webhook_source_name_valid(name))
        return 1;
    gw_call_fail(call, 400, "invalid_parameter", "source name: 1 to 64 of a-z, 0-9, '_' and '-'");
    return 0;
}

/* Map the status of a call on one source. */
static void wh_source_fail(gw_call *call, phg_status st, const char *doing, const char *err)
{
    if (st == PHG_ERR_NOT_FOUND)
        gw_call_fail(call, 404, "not_found", "no webhook source of that name in the store");
    else if (st == PHG_ERR_EXISTS)
        gw_call_fail(call, 409, "conflict", "a webhook source of that name exists");
    else if (st == PHG_ERR_STATE)
        gw_call_fail(call, 409, "conflict", "cannot %s: %s", doing,
                     err != NULL && err[0] ? err : "not allowed in the source's current state");
    else if (st == PHG_ERR_INVALID || st == PHG_ERR_TOO_LARGE)
        gw_call_fail(call, 400, "invalid_request", "%s",
                     err != NULL && err[0] ? err : "a value is invalid");
    else if (st == PHG_ERR_MASTER_KEY)
        gw_call_fail(call, 503, "unavailable",
                     "cannot %s: the master key of this instance cannot open the stored secrets",
                     doing);
    else
        fail_status(call, st, doing);
}

/*
 * A secret's not_after in a body: absent or null (none), Unix seconds, or an
 * RFC 3339 time; in the future. 1 ok, 0 after a 400.
 */
static int wh_not_after(gw_call *call, json_t *v, const char *what, int64_t *out)
{
    int64_t us;
    *out = 0;
    if (v == NULL || json_is_null(v))
        return 1;
    if (json_is_integer(v) && json_integer_value(v) > 0 &&
        json_integer_value(v) <= 253402300799LL) { /* 9999-12-31T23:59:59Z */
        *out = (int64_t)json_integer_value(v);
    } else if (json_is_string(v) && json_string_length(v) <= TIME_TEXT &&
               strlen(json_string_value(v)) == json_string_length(v) &&
               parse_time_us(json_string_value(v), &us)) {
        *out = us / 1000000;
    } else {
        gw_call_fail(call, 400, "invalid_request",
                     "%s.not_after must be Unix seconds, an RFC 3339 time "
                     "(2027-01-01T00:00:00Z) or null",
                     what);
        return 0;
    }
    if (*out <= (int64_t)time(NULL)) {
        gw_call_fail(call, 400, "invalid_request", "%s.not_after is in the past", what);
        return 0;
    }
    return 1;
}

/*
 * One {"secret":"...","not_after":...} of a body into *s (text borrowed from
 * the JSON, wiped by the caller). `what` names it in messages. 1 ok, 0 after
 * a 400.
 */
static int wh_secret_in(gw_call *call, json_t *obj, const char *what, phg_webhook_secret *s)
{
    static const char *const allowed[] = {"secret", "not_after", NULL};
    json_t *v = json_object_get(obj, "secret");
    memset(s, 0, sizeof *s);
    if (!members_or_respond(call, obj, allowed))
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0) {
        gw_call_fail(call, 400, "invalid_request", "%s.secret is required: the secret's text",
                     what);
        return 0;
    }
    if (json_string_length(v) > WH_SECRET_TEXT_MAX ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        gw_call_fail(call, 400, "invalid_request", "%s.secret: at most %d bytes, without NUL", what,
                     WH_SECRET_TEXT_MAX);
        return 0;
    }
    s->text = json_string_value(v);
    s->len = json_string_length(v);
    return wh_not_after(call, json_object_get(obj, "not_after"), what, &s->not_after);
}

/* GET /admin/webhooks/sources */
static void wh_sources_list(const gw_admin_ctx *ctx, gw_call *call)
{
    phg_webhook_source_info *infos = NULL;
    size_t n = 0, i;
    json_t *arr;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.source.list");
    snprintf(call->resource, sizeof call->resource, "webhook_sources");
    if (!query_names_or_respond(call, NULL) || !wh_store_or_respond(ctx, call))
        return;
    st = phg_webhook_sources_list(ctx->store, &infos, &n);
    if (st != PHG_OK) {
        fail_status(call, st, "list the webhook sources");
        return;
    }
    arr = json_array();
    if (ctx->cfg != NULL) {
        for (i = 0; arr != NULL && i < ctx->cfg->n_wh_sources && i < GW_WH_CONF_MAX; i++)
            json_array_append_new(arr, wh_conf_json(ctx, &ctx->cfg->wh_sources[i], 0));
    }
    for (i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr, wh_source_json(ctx, &infos[i], 0));
    set_details(call, json_pack("{s:I}", "count", (json_int_t)json_array_size(arr)));
    reply(call, 200, json_pack("{s:o}", "sources", arr));
    phg_webhook_source_infos_free(infos, n);
}

/* GET /admin/webhooks/sources/{name} */
static void wh_source_get(const gw_admin_ctx *ctx, gw_call *call, const char *name)
{
    phg_webhook_source_info *info = NULL;
    const gw_wh_conf *conf = wh_conf_find(ctx, name);
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.source.get");
    set_details(call, json_pack("{s:s}", "name", name));
    if (!query_names_or_respond(call, NULL))
        return;
    /* The file wins: a store source of the same name is not in use. */
    if (conf != NULL) {
        reply(call, 200, wh_conf_json(ctx, conf, 1));
        return;
    }
    if (!wh_store_or_respond(ctx, call))
        return;
    st = phg_webhook_sources_get(ctx->store, NULL, name, &info);
    if (st != PHG_OK) {
        wh_source_fail(call, st, "read the source", NULL);
        return;
    }
    reply(call, 200, wh_source_json(ctx, info, 1));
    phg_webhook_source_info_free(info);
}

/*
 * A verify token of a body: absent or null (none, *text NULL), or a string
 * of at most WH_SECRET_TEXT_MAX bytes without NUL (text borrowed from the
 * JSON, wiped by the caller; the library checks it further). 1 ok, 0 after a
 * 400 that never quotes it.
 */
static int wh_verify_token_in(gw_call *call, json_t *v, const char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    if (v == NULL || json_is_null(v))
        return 1;
    if (!json_is_string(v) || json_string_length(v) > WH_SECRET_TEXT_MAX ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        gw_call_fail(call, 400, "invalid_request",
                     "verify_token must be the token's text (1 to %d printable ASCII "
                     "characters, without spaces) or null",
                     PHG_WEBHOOK_VERIFY_TOKEN_MAX);
        return 0;
    }
    *text = json_string_value(v);
    *len = json_string_length(v);
    return 1;
}

/* POST /admin/webhooks/sources {"name","scheme","deliver_to","tolerance_s","secrets":[...],
 * "verify_token"} */
static void wh_source_create(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"name",    "scheme",       "deliver_to", "tolerance_s",
                                          "secrets", "verify_token", NULL};
    phg_webhook_secret secrets[PHG_WEBHOOK_SECRETS_MAX];
    phg_webhook_source_spec spec;
    phg_webhook_source_info *info = NULL;
    phg_webhook_scheme scheme;
    json_t *body = NULL, *v, *item, *fps;
    char err[256] = "", what[32];
    size_t i;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.source.create");
    snprintf(call->resource, sizeof call->resource, "webhook_sources");
    memset(secrets, 0, sizeof secrets);
    memset(&spec, 0, sizeof spec);
    if (!query_names_or_respond(call, NULL))
        return;
    body = body_or_respond(call);
    if (body == NULL)
        return;
    if (!members_or_respond(call, body, allowed))
        goto out;
    spec.name = json_text(json_object_get(body, "name"));
    if (spec.name == NULL || !phg_webhook_source_name_valid(spec.name)) {
        gw_call_fail(call, 400, "invalid_request",
                     "name is required: 1 to 64 of a-z, 0-9, '_' and '-'");
        goto out;
    }
    snprintf(call->resource, sizeof call->resource, "webhook_source:%s", spec.name);
    spec.scheme = json_text(json_object_get(body, "scheme"));
    if (spec.scheme == NULL || strlen(spec.scheme) > 31 ||
        phg_webhook_scheme_parse(spec.scheme, &scheme) != PHG_OK) {
        gw_call_fail(call, 400, "invalid_request",
                     "scheme is required: standard-webhooks, stripe, oura, whoop, fitbit, "
                     "polar, suunto or unsigned");
        goto out;
    }
    spec.deliver_to = json_text(json_object_get(body, "deliver_to"));
    if (spec.deliver_to == NULL || strlen(spec.deliver_to) > PHG_WEBHOOK_URL_MAX) {
        gw_call_fail(call, 400, "invalid_request",
                     "deliver_to is required: an http:// or https:// URL of at most %d bytes",
                     PHG_WEBHOOK_URL_MAX);
        goto out;
    }
    v = json_object_get(body, "tolerance_s");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > PHG_WEBHOOK_STORE_TOLERANCE_MAX) {
            gw_call_fail(call, 400, "invalid_request",
                         "tolerance_s must be an integer from 1 to %d (seconds) or null",
                         PHG_WEBHOOK_STORE_TOLERANCE_MAX);
            goto out;
        }
        spec.tolerance_s = (int64_t)json_integer_value(v);
    }
    v = json_object_get(body, "secrets");
    if (!json_is_array(v) || json_array_size(v) < 1 ||
        json_array_size(v) > PHG_WEBHOOK_SECRETS_MAX) {
        gw_call_fail(call, 400, "invalid_request",
                     "secrets is required: an array of 1 to %d {\"secret\":\"...\"} objects",
                     PHG_WEBHOOK_SECRETS_MAX);
        goto out;
    }
    json_array_foreach(v, i, item) {
        snprintf(what, sizeof what, "secrets[%zu]", i);
        if (!json_is_object(item)) {
            gw_call_fail(call, 400, "invalid_request", "%s must be an object", what);
            goto out;
        }
        if (!wh_secret_in(call, item, what, &secrets[i]))
            goto out;
    }
    spec.secrets = secrets;
    spec.n_secrets = json_array_size(v);
    if (!wh_verify_token_in(call, json_object_get(body, "verify_token"), &spec.verify_token,
                            &spec.verify_token_len))
        goto out;
    if (spec.verify_token != NULL && spec.verify_token_len == 0) {
        /* "" is a mistake, not "none" (the library reads NULL / 0 so) */
        gw_call_fail(call, 400, "invalid_request",
                     "verify_token: empty (give the token's text, or leave it out)");
        goto out;
    }
    set_details(call, json_pack("{s:s,s:s,s:b}", "name", spec.name, "scheme",
                                phg_webhook_scheme_name(scheme), "has_verify_token",
                                spec.verify_token != NULL));
    if (!wh_store_or_respond(ctx, call) || !wh_mk_or_respond(ctx, call) ||
        wh_configured_respond(ctx, call, spec.name))
        goto out;
    st = phg_webhook_sources_add(ctx->store, ctx->mk, &spec, err, sizeof err);
    if (st == PHG_ERR_NOT_FOUND) {
        /* An unknown scheme (the library's list may be shorter than the names). */
        gw_call_fail(call, 400, "invalid_request", "%s", err[0] ? err : "scheme: unknown");
        goto out;
    }
    if (st == PHG_ERR_MASTER_KEY) {
        gw_call_fail(call, 503, "unavailable", "no master key: webhook secrets cannot be stored");
        goto out;
    }
    if (st != PHG_OK) {
        wh_source_fail(call, st, "create the source", err);
        goto out;
    }
    wh_reload(ctx);
    /* The fingerprints, for the audit record and the answer. */
    st = phg_webhook_sources_get(ctx->store, NULL, spec.name, &info);
    if (st != PHG_OK) {
        reply(call, 201,
              json_pack("{s:s,s:s,s:s}", "name", spec.name, "scheme",
                        phg_webhook_scheme_name(scheme), "origin", "store"));
        goto out;
    }
    fps = json_array();
    for (i = 0; fps != NULL && i < info->n_secrets; i++)
        json_array_append_new(fps, json_string(info->secrets[i].fingerprint));
    if (call->audit_details != NULL && fps != NULL) {
        json_object_set_new(call->audit_details, "tolerance_s",
                            json_integer((json_int_t)info->tolerance_s));
        json_object_set_new(call->audit_details, "fingerprints", fps);
    } else {
        json_decref(fps);
    }
    reply(call, 201, wh_source_json(ctx, info, 1));
out:
    phg_webhook_source_info_free(info);
    phg_wipe(secrets, sizeof secrets);
    wh_wipe_body(body, 0);
    json_decref(body);
}

/* PUT /admin/webhooks/sources/{name}/verify-token {"verify_token":"..."} or
 * {"verify_token":null} (clear). */
static void wh_verify_token_set(const gw_admin_ctx *ctx, gw_call *call, const char *name)
{
    static const char *const allowed[] = {"verify_token", NULL};
    json_t *body = NULL, *v;
    const char *token = NULL;
    size_t len = 0;
    char err[256] = "";
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.source.set_verify_token");
    set_details(call, json_pack("{s:s}", "name", name));
    if (!query_names_or_respond(call, NULL))
        return;
    body = body_or_respond(call);
    if (body == NULL)
        return;
    if (!members_or_respond(call, body, allowed))
        goto out;
    v = json_object_get(body, "verify_token");
    if (v == NULL) {
        gw_call_fail(call, 400, "invalid_request",
                     "verify_token is required: the token's text, or null to clear it");
        goto out;
    }
    if (!wh_verify_token_in(call, v, &token, &len))
        goto out;
    if (call->audit_details != NULL)
        json_object_set_new(call->audit_details, "has_verify_token", json_boolean(token != NULL));
    if (!wh_store_or_respond(ctx, call) || (token != NULL && !wh_mk_or_respond(ctx, call)))
        goto out;
    st = phg_webhook_sources_set_verify_token(ctx->store, ctx->mk, name, token, len, err,
                                              sizeof err);
    if (st == PHG_ERR_NOT_FOUND && wh_configured_respond(ctx, call, name))
        goto out;
    if (st == PHG_ERR_MASTER_KEY) {
        gw_call_fail(call, 503, "unavailable", "no master key: the verify token cannot be stored");
        goto out;
    }
    if (st != PHG_OK) {
        wh_source_fail(call, st, "set the verify token", err);
        goto out;
    }
    wh_reload(ctx);
    reply(call, 200, json_pack("{s:s,s:b}", "name", name, "has_verify_token", token != NULL));
out:
    wh_wipe_body(body, 0);
    json_decref(body);
}

/* DELETE /admin/webhooks/sources/{name} */
static void wh_source_remove(const gw_admin_ctx *ctx, gw_call *call, const char *name)
{
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.source.remove");
    set_details(call, json_pack("{s:s}", "name", name));
    if (!query_names_or_respond(call, NULL))
        return;
    if (call->body_len > 0) {
        gw_call_fail(call, 400, "invalid_request", "this call takes no body");
        return;
    }
    if (!wh_store_or_respond(ctx, call))
        return;
    st = phg_webhook_sources_remove(ctx->store, name);
    if (st == PHG_ERR_NOT_FOUND && wh_configured_respond(ctx, call, name))
        return;
    if (st != PHG_OK) {
        wh_source_fail(call, st, "remove the source", NULL);
        return;
    }
    wh_reload(ctx);
    reply(call, 200, json_pack("{s:s}", "removed", name));
}

/* POST /admin/webhooks/sources/{name}/secrets {"secret":"...","not_after":...} */
static void wh_secret_add(const gw_admin_ctx *ctx, gw_call *call, const char *name)
{
    phg_webhook_secret secret;
    phg_webhook_source_info *info = NULL;
    json_t *body = NULL;
    char err[256] = "";
    const char *fp = NULL;
    int64_t index = -1;
    size_t i;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.secret.add");
    memset(&secret, 0, sizeof secret);
    set_details(call, json_pack("{s:s}", "name", name));
    if (!query_names_or_respond(call, NULL))
        return;
    body = body_or_respond(call);
    if (body == NULL)
        return;
    if (!wh_secret_in(call, body, "body", &secret))
        goto out;
    if (!wh_store_or_respond(ctx, call) || !wh_mk_or_respond(ctx, call))
        goto out;
    st =
        phg_webhook_sources_add_secret(ctx->store, ctx->mk, name, &secret, &index, err, sizeof err);
    if (st == PHG_ERR_NOT_FOUND && wh_configured_respond(ctx, call, name))
        goto out;
    if (st == PHG_ERR_MASTER_KEY) {
        gw_call_fail(call, 503, "unavailable", "no master key: webhook secrets cannot be stored");
        goto out;
    }
    if (st != PHG_OK) {
        wh_source_fail(call, st, "add the secret", err);
        goto out;
    }
    wh_reload(ctx);
    if (phg_webhook_sources_get(ctx->store, NULL, name, &info) == PHG_OK) {
        for (i = 0; i < info->n_secrets; i++) {
            if (info->secrets[i].index == index)
                fp = info->secrets[i].fingerprint;
        }
    }
    if (call->audit_details != NULL) {
        json_object_set_new(call->audit_details, "index", json_integer((json_int_t)index));
        json_object_set_new(call->audit_details, "fingerprint",
                            fp != NULL ? json_string(fp) : json_null());
        json_object_set_new(call->audit_details, "not_after", time_or_null(secret.not_after));
    }
    reply(call, 201,
          json_pack("{s:s,s:I,s:o,s:o}", "name", name, "index", (json_int_t)index, "fingerprint",
                    fp != NULL ? json_string(fp) : json_null(), "not_after",
                    time_or_null(secret.not_after)));
out:
    phg_webhook_source_info_free(info);
    phg_wipe(&secret, sizeof secret);
    wh_wipe_body(body, 0);
    json_decref(body);
}

/* DELETE /admin/webhooks/sources/{name}/secrets/{index} */
static void wh_secret_retire(const gw_admin_ctx *ctx, gw_call *call, const char *name,
                             const char *index_text)
{
    int64_t index = 0;
    size_t i;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.secret.retire");
    set_details(call, json_pack("{s:s}", "name", name));
    for (i = 0; index_text[i] != '\0'; i++) {
        if (index_text[i] < '0' || index_text[i] > '9' || i >= WH_INDEX_DIGITS) {
            gw_call_fail(call, 400, "invalid_parameter",
                         "secret index: a number from 0 (as GET /admin/webhooks/sources/%s "
                         "shows)",
                         name);
            return;
        }
        index = index * 10 + (index_text[i] - '0');
    }
    if (call->audit_details != NULL)
        json_object_set_new(call->audit_details, "index", json_integer((json_int_t)index));
    if (!query_names_or_respond(call, NULL))
        return;
    if (call->body_len > 0) {
        gw_call_fail(call, 400, "invalid_request", "this call takes no body");
        return;
    }
    if (!wh_store_or_respond(ctx, call))
        return;
    st = phg_webhook_sources_retire_secret(ctx->store, name, index);
    if (st == PHG_ERR_NOT_FOUND && wh_configured_respond(ctx, call, name))
        return;
    if (st == PHG_ERR_NOT_FOUND) {
        gw_call_fail(call, 404, "not_found", "no such source, or no secret %lld in it",
                     (long long)index);
        return;
    }
    if (st == PHG_ERR_STATE) {
        gw_call_fail(call, 409, "conflict",
                     "secret %lld is the source's last unretired secret: add another first, "
                     "or remove the source",
                     (long long)index);
        return;
    }
    if (st != PHG_OK) {
        fail_status(call, st, "retire the secret");
        return;
    }
    wh_reload(ctx);
    reply(call, 200,
          json_pack("{s:s,s:I,s:b}", "name", name, "index", (json_int_t)index, "retired", 1));
}

/* An event's metadata as JSON; never its body. */
static json_t *wh_event_json(const phg_wh_event *e)
{
    char received[TIME_TEXT];
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    format_time_ms(e->received_ms, received);
    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "source", json_string(e->source));
    json_object_set_new(o, "msg_id", json_string(e->msg_id));
    json_object_set_new(o, "request_id",
                        e->request_id[0] ? json_string(e->request_id) : json_null());
    json_object_set_new(o, "authenticated", json_boolean(e->authenticated));
    json_object_set_new(o, "secret_index",
                        e->secret_index >= 0 ? json_integer(e->secret_index) : json_null());
    json_object_set_new(o, "signed_ts", int_or_null(e->signed_ts_s));
    json_object_set_new(o, "received_at", json_string(received));
    json_object_set_new(o, "received_ms", json_integer((json_int_t)e->received_ms));
    json_object_set_new(o, "state", json_string(phg_wh_event_state_name(e->state)));
    json_object_set_new(o, "attempts", json_integer((json_int_t)e->attempts));
    json_object_set_new(o, "next_attempt_ms",
                        e->state == PHG_WH_EVENT_PENDING
                            ? json_integer((json_int_t)e->next_attempt_ms)
                            : json_null());
    json_object_set_new(o, "last_attempt_ms", int_or_null(e->last_attempt_ms));
    json_object_set_new(o, "delivered_ms", int_or_null(e->delivered_ms));
    json_object_set_new(o, "last_status", int_or_null(e->last_status));
    json_object_set_new(o, "last_error",
                        e->last_error[0] ? json_string(e->last_error) : json_null());
    json_object_set_new(o, "content_type", json_string(e->content_type));
    json_object_set_new(o, "body_len", json_integer((json_int_t)e->body_len));
    return o;
}

/* An event id from the path into its canonical (uppercase) text. 1 ok, 0
 * after a 400. */
static int wh_event_id_or_respond(gw_call *call, const char *text, char id[PHG_ULID_LEN + 1])
{
    phg_ulid u;
    if (phg_ulid_parse(text, strlen(text), &u) != PHG_OK) {
        gw_call_fail(call, 400, "invalid_parameter", "event id: must be a ULID");
        return 0;
    }
    phg_ulid_format(&u, id);
    return 1;
}

/*
 * One event's metadata, without decrypting its body: the list's first event
 * before the id that follows this one (ULID text order is byte order, and
 * the list is newest first), if it is this one. PHG_ERR_NOT_FOUND if none.
 */
static phg_status wh_event_lookup(phg_wh_inbox *inbox, const char *id, phg_wh_event **out)
{
    phg_wh_event_filter f;
    phg_wh_event *evs = NULL;
    phg_ulid u;
    char next[PHG_ULID_LEN + 1];
    size_t n = 0;
    int i, carry = 1;
    phg_status st;

    *out = NULL;
    if (phg_ulid_parse(id, strlen(id), &u) != PHG_OK)
        return PHG_ERR_NOT_FOUND;
    for (i = PHG_ULID_BYTES - 1; i >= 0 && carry; i--) {
        u.bytes[i]++;
        carry = u.bytes[i] == 0;
    }
    phg_ulid_format(&u, next);
    memset(&f, 0, sizeof f);
    f.state = -1;
    f.before_id = carry ? NULL : next; /* carry: the largest id there is */
    f.limit = 1;
    st = phg_wh_inbox_list(inbox, &f, &evs, &n);
    if (st != PHG_OK)
        return st;
    if (n == 0 || strcmp(evs[0].id, id) != 0) {
        phg_wh_events_free(evs, n);
        return PHG_ERR_NOT_FOUND;
    }
    *out = evs;
    return PHG_OK;
}

/* GET /admin/webhooks/events?state=&source=&before=&limit= */
static void wh_events_list(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"state", "source", "before", "limit", NULL};
    char state[PARAM_MAX + 1], source[PARAM_MAX + 1], before[PARAM_MAX + 1];
    char before_id[PHG_ULID_LEN + 1] = "";
    phg_wh_event_filter f;
    phg_wh_event_state s = PHG_WH_EVENT_PENDING;
    phg_wh_event *evs = NULL;
    phg_wh_inbox *inbox;
    size_t n = 0, i;
    json_t *arr;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.event.list");
    snprintf(call->resource, sizeof call->resource, "webhook_events");
    memset(&f, 0, sizeof f);
    if (!query_names_or_respond(call, allowed) || !limit_param(call, LIST_DEFAULT, &f.limit) ||
        param(call, "state", state) < 0 || param(call, "source", source) < 0 ||
        param(call, "before", before) < 0)
        return;
    if (state[0] && phg_wh_event_state_parse(state, &s) != PHG_OK) {
        gw_call_fail(call, 400, "invalid_parameter", "state must be pending, delivered or dead");
        return;
    }
    if (source[0] && !phg_webhook_source_name_valid(source)) {
        gw_call_fail(call, 400, "invalid_parameter",
                     "source must be a source name: 1 to 64 of a-z, 0-9, '_' and '-'");
        return;
    }
    if (before[0]) {
        phg_ulid u;
        if (phg_ulid_parse(before, strlen(before), &u) != PHG_OK) {
            gw_call_fail(call, 400, "invalid_parameter", "before must be an event id (a ULID)");
            return;
        }
        phg_ulid_format(&u, before_id);
    }
    f.state = state[0] ? (int)s : -1;
    f.source = source[0] ? source : NULL;
    f.before_id = before_id[0] ? before_id : NULL;
    set_details(call, json_pack("{s:s?,s:s?,s:s?,s:I}", "state", state[0] ? state : NULL, "source",
                                f.source, "before", f.before_id, "limit", (json_int_t)f.limit));
    inbox = wh_inbox_or_respond(ctx, call);
    if (inbox == NULL)
        return;
    st = phg_wh_inbox_list(inbox, &f, &evs, &n);
    if (st == PHG_ERR_INVALID) {
        gw_call_fail(call, 400, "invalid_parameter", "a filter is not valid");
        return;
    }
    if (st != PHG_OK) {
        fail_status(call, st, "list the webhook events");
        return;
    }
    arr = json_array();
    for (i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr, wh_event_json(&evs[i]));
    if (call->audit_details != NULL)
        json_object_set_new(call->audit_details, "count", json_integer((json_int_t)n));
    reply(call, 200,
          json_pack("{s:o,s:o}", "events", arr, "next",
                    n == f.limit && n > 0 ? json_string(evs[n - 1].id) : json_null()));
    phg_wh_events_free(evs, n);
}

/* GET /admin/webhooks/events/{id} */
static void wh_event_get(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    phg_wh_inbox *inbox;
    phg_wh_event *ev = NULL;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.event.get");
    snprintf(call->resource, sizeof call->resource, "webhook_event:%s", id);
    if (!query_names_or_respond(call, NULL))
        return;
    inbox = wh_inbox_or_respond(ctx, call);
    if (inbox == NULL)
        return;
    st = wh_event_lookup(inbox, id, &ev);
    if (st == PHG_ERR_NOT_FOUND) {
        gw_call_fail(call, 404, "not_found", "no webhook event with that id");
        return;
    }
    if (st != PHG_OK) {
        fail_status(call, st, "read the webhook event");
        return;
    }
    set_details(call, json_pack("{s:s}", "source", ev->source));
    reply(call, 200, wh_event_json(ev));
    phg_wh_events_free(ev, 1);
}

/* POST /admin/webhooks/events/{id}/replay */
static void wh_event_replay(const gw_admin_ctx *ctx, gw_call *call, const char *id)
{
    phg_wh_inbox *inbox;
    phg_wh_event *ev = NULL;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.event.replay");
    snprintf(call->resource, sizeof call->resource, "webhook_event:%s", id);
    set_details(call, json_pack("{s:s}", "id", id));
    if (!query_names_or_respond(call, NULL))
        return;
    if (call->body_len > 0) {
        gw_call_fail(call, 400, "invalid_request", "this call takes no body");
        return;
    }
    inbox = wh_inbox_or_respond(ctx, call);
    if (inbox == NULL)
        return;
    /* Its source, for the record (and a clear 404 / 409 before the change). */
    st = wh_event_lookup(inbox, id, &ev);
    if (st == PHG_OK && call->audit_details != NULL)
        json_object_set_new(call->audit_details, "source", json_string(ev->source));
    if (st == PHG_OK)
        st = phg_wh_inbox_replay(inbox, id, gw_wall_ms());
    if (st == PHG_ERR_NOT_FOUND) {
        gw_call_fail(call, 404, "not_found", "no webhook event with that id");
    } else if (st == PHG_ERR_STATE) {
        gw_call_fail(call, 409, "conflict", "only a dead event can be replayed; this one is %s",
                     ev != NULL ? phg_wh_event_state_name(ev->state) : "not dead");
    } else if (st != PHG_OK) {
        fail_status(call, st, "replay the webhook event");
    } else {
        wh_kick(ctx);
        reply(call, 200, json_pack("{s:s,s:s}", "id", id, "state", "pending"));
    }
    phg_wh_events_free(ev, ev != NULL ? 1 : 0);
}

/* POST /admin/webhooks/events/replay?source= */
static void wh_events_replay_all(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char *const allowed[] = {"source", NULL};
    char source[PARAM_MAX + 1];
    phg_wh_inbox *inbox;
    size_t n = 0;
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.event.replay_all");
    snprintf(call->resource, sizeof call->resource, "webhook_events");
    if (!query_names_or_respond(call, allowed) || param(call, "source", source) < 0)
        return;
    if (source[0] && !phg_webhook_source_name_valid(source)) {
        gw_call_fail(call, 400, "invalid_parameter",
                     "source must be a source name: 1 to 64 of a-z, 0-9, '_' and '-'");
        return;
    }
    set_details(call, json_pack("{s:s?}", "source", source[0] ? source : NULL));
    if (call->body_len > 0) {
        gw_call_fail(call, 400, "invalid_request", "this call takes no body");
        return;
    }
    inbox = wh_inbox_or_respond(ctx, call);
    if (inbox == NULL)
        return;
    st = phg_wh_inbox_replay_all(inbox, source[0] ? source : NULL, gw_wall_ms(), &n);
    if (st != PHG_OK) {
        fail_status(call, st, "replay the dead webhook events");
        return;
    }
    if (call->audit_details != NULL)
        json_object_set_new(call->audit_details, "replayed", json_integer((json_int_t)n));
    if (n > 0)
        wh_kick(ctx);
    reply(call, 200, json_pack("{s:I}", "replayed", (json_int_t)n));
}

/* GET /admin/webhooks/stats */
static void wh_stats(const gw_admin_ctx *ctx, gw_call *call)
{
    phg_wh_inbox_stats s;
    phg_wh_inbox *inbox;
    char oldest[TIME_TEXT];
    phg_status st;

    snprintf(call->action, sizeof call->action, "admin.webhooks.stats");
    snprintf(call->resource, sizeof call->resource, "webhook_events");
    if (!query_names_or_respond(call, NULL))
        return;
    inbox = wh_inbox_or_respond(ctx, call);
    if (inbox == NULL)
        return;
    memset(&s, 0, sizeof s);
    st = phg_wh_inbox_stats_get(inbox, &s);
    if (st != PHG_OK) {
        fail_status(call, st, "read the webhook inbox's figures");
        return;
    }
    format_time_ms(s.oldest_pending_ms, oldest);
    reply(call, 200,
          json_pack("{s:I,s:I,s:I,s:o,s:o,s:I,s:I,s:I,s:I,s:I}", "pending", (json_int_t)s.pending,
                    "delivered", (json_int_t)s.delivered, "dead", (json_int_t)s.dead,
                    "oldest_pending_ms", int_or_null(s.oldest_pending_ms), "oldest_pending_at",
                    s.oldest_pending_ms != 0 ? json_string(oldest) : json_null(), "written",
                    (json_int_t)s.written, "duplicates", (json_int_t)s.duplicates, "failed",
                    (json_int_t)s.failed, "commits", (json_int_t)s.commits, "queue_depth",
                    (json_int_t)s.queue_depth));
}

/* ---- configuration and the OpenAPI document ---------------------------------------- */

static void config_get(const gw_admin_ctx *ctx, gw_call *call)
{
    json_t *cfg;
    snprintf(call->action, sizeof call->action, "admin.config.get");
    snprintf(call->resource, sizeof call->resource, "config");
    if (!query_names_or_respond(call, NULL))
        return;
    if (ctx->config_json == NULL) {
        gw_call_fail(call, 503, "unavailable", "the configuration is not available");
        return;
    }
    cfg = ctx->config_json(ctx->config_arg);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        gw_call_fail(call, 500, "internal", "the configuration could not be rendered");
        return;
    }
    reply(call, 200, cfg);
}

static void openapi_get(gw_call *call)
{
    json_t *doc;
    snprintf(call->action, sizeof call->action, "admin.openapi.get");
    snprintf(call->resource, sizeof call->resource, "openapi");
    if (!query_names_or_respond(call, NULL))
        return;
    doc = json_loads(gw_openapi_json, 0, NULL);
    if (doc == NULL) {
        gw_call_fail(call, 500, "internal", "the embedded OpenAPI document is not valid JSON");
        return;
    }
    reply(call, 200, doc);
}

/* ---- routing ------------------------------------------------------------------------ */

static int eq(const char *a, const char *b)
{
    return strcmp(a, b) == 0;
}

static void not_found(gw_call *call)
{
    gw_call_fail(call, 404, "not_found", "no such admin endpoint (see GET /admin/openapi.json)");
}

/* /admin/keys/{id}... : the id is checked before anything else is done with
 * it; a bad one is a 400 whatever follows. */
static int key_id_or_respond(gw_call *call, const char *id)
{
    if (key_id_ok(id))
        return 1;
    gw_call_fail(call, 400, "invalid_parameter",
                 "key id: must be ak_ followed by lowercase letters and digits");
    return 0;
}

/* /admin/webhooks/... */
static void wh_route(const gw_admin_ctx *ctx, gw_call *call, char **seg, size_t n)
{
    char id[PHG_ULID_LEN + 1];

    if (n == 2 && eq(seg[1], "sources")) {
        if (method_is(call, "GET"))
            wh_sources_list(ctx, call);
        else if (method_is(call, "POST"))
            wh_source_create(ctx, call);
        else
            gw_call_fail(call, 405, "method_not_allowed", "use GET or POST");
    } else if (n == 4 && eq(seg[1], "sources") && eq(seg[3], "verify-token")) {
        snprintf(call->resource, sizeof call->resource, "webhook_source:%s",
                 phg_webhook_source_name_valid(seg[2]) ? seg[2] : "(invalid)");
        if (method_or_respond(call, "PUT") && wh_name_or_respond(call, seg[2]))
            wh_verify_token_set(ctx, call, seg[2]);
    } else if (n >= 3 && n <= 5 && eq(seg[1], "sources") && (n == 3 || eq(seg[3], "secrets"))) {
        snprintf(call->resource, sizeof call->resource, "webhook_source:%s",
                 phg_webhook_source_name_valid(seg[2]) ? seg[2] : "(invalid)");
        if (n == 3 && !method_is(call, "GET") && !method_is(call, "DELETE")) {
            gw_call_fail(call, 405, "method_not_allowed", "use GET or DELETE");
            return;
        }
        if ((n == 4 && !method_or_respond(call, "POST")) ||
            (n == 5 && !method_or_respond(call, "DELETE")) || !wh_name_or_respond(call, seg[2]))
            return;
        if (n == 3 && method_is(call, "GET"))
            wh_source_get(ctx, call, seg[2]);
        else if (n == 3)
            wh_source_remove(ctx, call, seg[2]);
        else if (n == 4)
            wh_secret_add(ctx, call, seg[2]);
        else
            wh_secret_retire(ctx, call, seg[2], seg[4]);
    } else if (n == 2 && eq(seg[1], "events")) {
        if (method_or_respond(call, "GET"))
            wh_events_list(ctx, call);
    } else if (n == 3 && eq(seg[1], "events") && eq(seg[2], "replay")) {
        if (method_or_respond(call, "POST"))
            wh_events_replay_all(ctx, call);
    } else if ((n == 3 || (n == 4 && eq(seg[3], "replay"))) && eq(seg[1], "events")) {
        snprintf(call->resource, sizeof call->resource, "webhook_event:(invalid)");
        if (!method_or_respond(call, n == 3 ? "GET" : "POST") ||
            !wh_event_id_or_respond(call, seg[2], id))
            return;
        if (n == 3)
            wh_event_get(ctx, call, id);
        else
            wh_event_replay(ctx, call, id);
    } else if (n == 2 && eq(seg[1], "stats")) {
        if (method_or_respond(call, "GET"))
            wh_stats(ctx, call);
    } else {
        not_found(call);
    }
}

static void route(const gw_admin_ctx *ctx, gw_call *call, char **seg, size_t n)
{
    if (n == 1 && eq(seg[0], "openapi.json")) {
        if (method_or_respond(call, "GET"))
            openapi_get(call);
    } else if (n == 1 && eq(seg[0], "config")) {
        if (method_or_respond(call, "GET"))
            config_get(ctx, call);
    } else if (n == 1 && eq(seg[0], "keys")) {
        if (method_is(call, "GET"))
            keys_list(ctx, call);
        else if (method_is(call, "POST"))
            keys_create(ctx, call);
        else
            gw_call_fail(call, 405, "method_not_allowed", "use GET or POST");
    } else if (n == 2 && eq(seg[0], "keys")) {
        snprintf(call->resource, sizeof call->resource, "key:%s",
                 key_id_ok(seg[1]) ? seg[1] : "(invalid)");
        if (method_or_respond(call, "GET") && key_id_or_respond(call, seg[1]))
            key_get(ctx, call, seg[1]);
    } else if (n == 3 && eq(seg[0], "keys") && (eq(seg[2], "rotate") || eq(seg[2], "revoke"))) {
        snprintf(call->resource, sizeof call->resource, "key:%s",
                 key_id_ok(seg[1]) ? seg[1] : "(invalid)");
        if (!method_or_respond(call, "POST") || !key_id_or_respond(call, seg[1]))
            return;
        if (eq(seg[2], "rotate"))
            key_rotate(ctx, call, seg[1]);
        else
            key_revoke(ctx, call, seg[1]);
    } else if (n == 3 && eq(seg[0], "keys") && eq(seg[2], "ratelimit")) {
        snprintf(call->resource, sizeof call->resource, "key:%s",
                 key_id_ok(seg[1]) ? seg[1] : "(invalid)");
        if (!method_is(call, "GET") && !method_is(call, "PUT")) {
            gw_call_fail(call, 405, "method_not_allowed", "use GET or PUT");
            return;
        }
        if (!key_id_or_respond(call, seg[1]))
            return;
        if (method_is(call, "GET"))
            ratelimit_usage(ctx, call, seg[1]);
        else
            ratelimit_set(ctx, call, seg[1]);
    } else if (n == 4 && eq(seg[0], "keys") && eq(seg[2], "ratelimit") && eq(seg[3], "reset")) {
        snprintf(call->resource, sizeof call->resource, "key:%s",
                 key_id_ok(seg[1]) ? seg[1] : "(invalid)");
        if (method_or_respond(call, "POST") && key_id_or_respond(call, seg[1]))
            ratelimit_reset(ctx, call, seg[1]);
    } else if (n == 2 && eq(seg[0], "ratelimit") && eq(seg[1], "violations")) {
        if (method_or_respond(call, "GET"))
            ratelimit_violations(ctx, call);
    } else if (n >= 2 && eq(seg[0], "webhooks")) {
        wh_route(ctx, call, seg, n);
    } else if (n == 1 && eq(seg[0], "audit")) {
        if (method_or_respond(call, "GET"))
            audit_query(ctx, call);
    } else if (n == 2 && eq(seg[0], "audit") && eq(seg[1], "report")) {
        if (method_or_respond(call, "GET"))
            audit_report(ctx, call);
    } else if (n == 2 && eq(seg[0], "audit") && eq(seg[1], "verify")) {
        if (method_or_respond(call, "GET"))
            audit_verify(ctx, call);
    } else if (n == 2 && eq(seg[0], "phi") && eq(seg[1], "keys")) {
        if (method_or_respond(call, "GET"))
            phi_keys_list(ctx, call);
    } else if (n == 3 && eq(seg[0], "phi") && eq(seg[1], "keys") && eq(seg[2], "rotate")) {
        if (method_or_respond(call, "POST"))
            phi_keys_rotate(ctx, call);
    } else if (n == 4 && eq(seg[0], "phi") && eq(seg[1], "keys") && eq(seg[3], "destroy")) {
        snprintf(call->resource, sizeof call->resource, "phi-keyring");
        if (!method_or_respond(call, "POST"))
            return;
        if (!kid_ok(seg[2])) {
            gw_call_fail(call, 400, "invalid_parameter",
                         "kid: must be 1 to %d lowercase "
                         "letters and digits",
                         PHG_PHI_KID_MAX);
            return;
        }
        phi_key_destroy(ctx, call, seg[2]);
    } else {
        not_found(call);
    }
}

void gw_admin_handle(const gw_admin_ctx *ctx, gw_call *call)
{
    static const char prefix[] = "/admin/";
    char path[GW_PATH_MAX + 1], *seg[SEGMENTS_MAX], *p;
    size_t n = 0, len;

    assert(ctx != NULL && call != NULL);
    call->status = 0;
    /* The server checked the role; a second look costs nothing. */
    if (call->id == NULL || call->id->role != PHG_ROLE_ADMIN) {
        gw_call_fail(call, 403, "forbidden", "the admin API needs a key with the admin role");
        return;
    }
    if (call->path == NULL || strncmp(call->path, prefix, sizeof prefix - 1) != 0) {
        not_found(call);
        return;
    }
    len = strlen(call->path + sizeof prefix - 1);
    if (len == 0 || len > GW_PATH_MAX) {
        not_found(call);
        return;
    }
    memcpy(path, call->path + sizeof prefix - 1, len + 1);
    /* Split at '/'. An empty segment (//, a trailing /), "." or ".." matches
     * no route: 404, never a walk up the tree. */
    for (p = path;;) {
        char *slash = strchr(p, '/');
        if (slash != NULL)
            *slash = '\0';
        if (n == SEGMENTS_MAX || *p == '\0') {
            not_found(call);
            return;
        }
        seg[n++] = p;
        if (slash == NULL)
            break;
        p = slash + 1;
    }
    route(ctx, call, seg, n);
}
