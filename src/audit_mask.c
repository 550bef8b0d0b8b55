/*
 * audit_mask.c: the parts of include/phigate/audit.h that every thread uses on
 * its own, with no store: the thread's request context, the masking of PHI and
 * secrets in JSON texts (audit details, log fields), and structured log lines
 * on stderr.
 *
 * It does not write audit records (the writer, chains and checkpoints are
 * elsewhere) and it does not mask anything but JSON member names: a value is
 * never inspected, so PHI put in a non-masked member, or in a log line's msg,
 * goes out as it came in. Callers put data in named fields.
 *
 * Design: docs/formats.md section 9.2 ("Audit record"); DESIGN.md (logs carry
 * no PHI). The default masked names are listed and argued below.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "phigate/audit.h"

/* ---- request context -------------------------------------------------------------- */

/*
 * One context per thread, copied in: the caller's struct may be on its stack
 * and gone by the time a log line deep in a call wants the request id.
 */
static _Thread_local phg_request_context tls_context;
static _Thread_local int tls_context_set;

/* Copy a fixed-size string member, bounded by both sizes, always terminated. */
static void copy_text(char *dst, size_t dst_size, const char *src, size_t src_size)
{
    size_t n = strnlen(src, src_size);
    if (n > dst_size - 1) {
        n = dst_size - 1;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void phg_request_context_set(const phg_request_context *ctx)
{
    if (ctx == NULL) {
        memset(&tls_context, 0, sizeof tls_context);
        tls_context_set = 0;
        return;
    }
    /* ctx may be the pointer phg_request_context_get() returned: copy through
     * a temporary so source and destination never overlap. */
    phg_request_context tmp;
    memset(&tmp, 0, sizeof tmp);
#define COPY_MEMBER(m) copy_text(tmp.m, sizeof tmp.m, ctx->m, sizeof ctx->m)
    COPY_MEMBER(request_id);
    COPY_MEMBER(key_id);
    COPY_MEMBER(user_id);
    COPY_MEMBER(role);
    COPY_MEMBER(ip);
#undef COPY_MEMBER
    tls_context = tmp;
    tls_context_set = 1;
}

const phg_request_context *phg_request_context_get(void)
{
    return tls_context_set ? &tls_context : NULL;
}

/* ---- masking ------------------------------------------------------------------------ */

/*
 * The default masked names, already in normal form (lower case, no '-' or
 * '_'). Matching is exact after normalising both sides, so "Date_Of_Birth",
 * "date-of-birth" and "DATEOFBIRTH" are all "dateofbirth", but "home_phone"
 * is not "phone": list compound names explicitly.
 *
 * Chosen from HIPAA's Safe Harbor identifiers (45 CFR 164.514(b)(2)) as they
 * appear in a wearable-data API, the biometric readings phigate carries, and
 * credentials. Deliberately absent:
 *   - "ip", "ipaddress": the audit record keeps the client address as its
 *     own field (access logging needs it); details should not repeat it.
 *   - "value", "values", "data", "id", "url", "state": too generic; masking
 *     them would blind the audit trail for every record. Readings must be
 *     sent under their own names (hrv, glucose, ...), which are masked.
 *   - "userid", "subject", "patientid": the audit record is an accounting of
 *     disclosures and must say whose data was touched.
 * Included although generic: "description", "comment(s)", "note(s)": free text
 * is where PHI leaks, and an operator loses little by not seeing it in logs.
 */
/* clang-format off */
static const char *const default_mask[] = {
    /* names */
    "name", "firstname", "lastname", "middlename", "surname", "fullname", "givenname",
    "familyname", "maidenname", "patientname",
    /* dates tied to a person */
    "dob", "birthdate", "dateofbirth", "birthday", "dateofdeath", "deathdate", "admissiondate",
    "dischargedate", "age",
    /* contact and geography smaller than a state */
    "email", "emailaddress", "phone", "phonenumber", "homephone", "workphone", "mobilephone",
    "cellphone", "mobile", "fax", "address", "homeaddress", "street", "streetaddress",
    "addressline1", "addressline2", "city", "county", "zip", "zipcode", "postalcode",
    "postcode", "latitude", "longitude", "geolocation", "location",
    /* numbers that identify a person */
    "ssn", "socialsecuritynumber", "mrn", "medicalrecordnumber", "healthplanid",
    "healthplanbeneficiarynumber", "memberid", "insuranceid", "policynumber", "accountnumber",
    "licensenumber", "driverslicense", "licenseplate", "vin", "passportnumber",
    /* devices */
    "deviceid", "deviceserial", "serialnumber", "imei", "macaddress",
    /* biometric identifiers and photos */
    "fingerprint", "voiceprint", "faceimage", "photo",
    /* free text and clinical content */
    "notes", "note", "comment", "comments", "freetext", "description", "diagnosis", "diagnoses",
    "medication", "medications",
    /* biometric readings */
    "heartrate", "hr", "hrv", "restingheartrate", "bloodpressure", "systolic", "diastolic",
    "spo2", "oxygensaturation", "respiratoryrate", "resprate", "temperature",
    "bodytemperature", "glucose", "bloodglucose", "weight", "height", "bmi", "steps", "sleep",
    "sleepscore", "ecg", "readings",
    /* credentials: never in a log or an audit record either */
    "authorization", "proxyauthorization", "cookie", "setcookie", "xapikey", "apikey",
    "password", "passwd", "secret", "clientsecret", "token", "accesstoken", "refreshtoken",
    "idtoken", "privatekey", "masterkey",
    NULL
};
/* clang-format on */

const char *const *phg_audit_default_mask(void)
{
    return default_mask;
}

static int is_separator(char c)
{
    return c == '-' || c == '_';
}

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/*
 * Compare two names in normal form without building either: skip separators
 * on both sides, fold ASCII case. Non-ASCII bytes compare as themselves, so a
 * look-alike letter from another script does not match (and is not masked).
 * A name made only of separators normalises to "" and matches only "".
 */
static int same_name(const char *a, const char *b)
{
    for (;;) {
        while (is_separator(*a)) {
            a++;
        }
        while (is_separator(*b)) {
            b++;
        }
        if (*a == '\0' || *b == '\0') {
            return *a == *b;
        }
        if (ascii_lower(*a) != ascii_lower(*b)) {
            return 0;
        }
        a++;
        b++;
    }
}

int phg_audit_is_masked(const char *name, const char *const *fields)
{
    assert(name != NULL);
    const char *const *list = fields != NULL ? fields : default_mask;
    for (size_t i = 0; list[i] != NULL; i++) {
        if (same_name(name, list[i])) {
            return 1;
        }
    }
    return 0;
}

/* Containers nested deeper than this are refused (PHG_ERR_INVALID). */
#define MASK_DEPTH_MAX 64

/*
 * The nesting depth of a JSON text, counted before parsing so that the walk
 * below, whose recursion this bounds, never meets a deeper tree; it is
 * counted over the whole text, masked members included, so the answer does
 * not depend on the mask list. Brackets inside strings do not count. On text
 * that is not JSON the count is meaningless, and the parser refuses it.
 */
static int depth_over_limit(const char *json, size_t len)
{
    size_t depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = json[i];
        if (in_string) {
            if (c == '\\') {
                i++; /* the escaped character, whatever it is */
            } else if (c == '"') {
                in_string = 0;
            }
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > MASK_DEPTH_MAX) {
                return 1;
            }
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return 0;
}

static const char MASKED[] = "***";

/* Replace in place the value of every masked member under `value`. */
static phg_status mask_walk(json_t *value, const char *const *fields)
{
    if (json_is_object(value)) {
        for (void *it = json_object_iter(value); it != NULL;
             it = json_object_iter_next(value, it)) {
            if (phg_audit_is_masked(json_object_iter_key(it), fields)) {
                /* Replacing the value of the current member keeps the iterator
                 * valid: the hash table's shape does not change. */
                if (json_object_iter_set_new(value, it, json_string(MASKED)) != 0) {
                    return PHG_ERR_NOMEM;
                }
            } else {
                phg_status rc = mask_walk(json_object_iter_value(it), fields);
                if (rc != PHG_OK) {
                    return rc;
                }
            }
        }
    } else if (json_is_array(value)) {
        size_t n = json_array_size(value);
        for (size_t i = 0; i < n; i++) {
            phg_status rc = mask_walk(json_array_get(value, i), fields);
            if (rc != PHG_OK) {
                return rc;
            }
        }
    }
    return PHG_OK;
}

/*
 * Parse and mask: the tree behind phg_audit_mask_json and phg_log. Any JSON
 * value is accepted at the top. Duplicate member names are accepted and the
 * parser keeps the last one; since masking follows the name, every spelling
 * of a masked name is masked whichever copy survives. \u0000 is accepted in
 * strings (not in names: jansson refuses it there).
 */
static phg_status mask_tree(const char *json, size_t len, const char *const *fields, json_t **out)
{
    phg_status rc;
    json_error_t error;
    json_t *root = NULL;

    *out = NULL;
    if (len > PHG_AUDIT_DETAILS_MAX) {
        rc = PHG_ERR_TOO_LARGE;
        goto out;
    }
    if (depth_over_limit(json, len)) {
        rc = PHG_ERR_INVALID;
        goto out;
    }
    root = json_loadb(json, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
    if (root == NULL) {
        rc = json_error_code(&error) == json_error_out_of_memory ? PHG_ERR_NOMEM : PHG_ERR_INVALID;
        goto out;
    }
    rc = mask_walk(root, fields);
    if (rc != PHG_OK) {
        goto out;
    }
    *out = root;
    root = NULL;
out:
    json_decref(root);
    return rc;
}

/* The masked tree itself, for audit.c (which embeds it in a record without
 * dumping and parsing it again). */
phg_status phg_internal_audit_mask_tree(const char *json, size_t len, const char *const *fields,
                                        json_t **out)
{
    return mask_tree(json, len, fields, out);
}

/* Canonical form: no spaces, members sorted by name (byte order). */
#define CANONICAL_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)

phg_status phg_audit_mask_json(const char *json, size_t len, const char *const *fields, char **out)
{
    phg_status rc;
    json_t *root = NULL;

    assert(json != NULL || len == 0);
    assert(out != NULL);
    *out = NULL;
    if (json == NULL) {
        rc = PHG_ERR_INVALID; /* "" is not JSON either */
        goto out;
    }
    rc = mask_tree(json, len, fields, &root);
    if (rc != PHG_OK) {
        goto out;
    }
    /* jansson allocates with malloc (the library never installs other
     * allocators), so the caller's free() is the right release. */
    *out = json_dumps(root, CANONICAL_FLAGS);
    if (*out == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
out:
    json_decref(root);
    return rc;
}

/* ---- structured logs ------------------------------------------------------------------ */

/* A whole line, newline included, is at most this many bytes. */
#define LOG_LINE_MAX (16u << 10)

/*
 * The threshold, read from PHIGATE_LOG_LEVEL once, on the first call to
 * phg_log or phg_log_set_level; phg_log_set_level wins over the environment
 * because it runs after that first read.
 */
static atomic_int log_threshold = PHG_LOG_INFO;
static pthread_once_t log_env_once = PTHREAD_ONCE_INIT;

static void log_read_env(void)
{
    const char *v = getenv("PHIGATE_LOG_LEVEL");
    if (v == NULL) {
        return;
    }
    if (strcasecmp(v, "debug") == 0) {
        atomic_store(&log_threshold, PHG_LOG_DEBUG);
    } else if (strcasecmp(v, "info") == 0) {
        atomic_store(&log_threshold, PHG_LOG_INFO);
    } else if (strcasecmp(v, "warn") == 0 || strcasecmp(v, "warning") == 0) {
        atomic_store(&log_threshold, PHG_LOG_WARN);
    } else if (strcasecmp(v, "error") == 0) {
        atomic_store(&log_threshold, PHG_LOG_ERROR);
    }
    /* Anything else keeps the default: a typo must not silence the logs. */
}

void phg_log_set_level(phg_log_level level)
{
    pthread_once(&log_env_once, log_read_env);
    atomic_store(&log_threshold, (int)level);
}

static const char *level_name(phg_log_level level)
{
    switch (level) {
    case PHG_LOG_DEBUG:
        return "debug";
    case PHG_LOG_INFO:
        return "info";
    case PHG_LOG_WARN:
        return "warn";
    case PHG_LOG_ERROR:
        return "error";
    }
    return "error"; /* a value outside the enum: err on the loud side */
}

/* The members phg_log owns; a field of the same name is dropped, so that
 * fields_json cannot forge a level, a request id or a truncation mark. */
static const char *const reserved_members[] = {"level",     "msg",          "request_id", "ts",
                                               "truncated", "fields_error", "log_error",  NULL};

/* "2026-11-27T19:30:00.123456Z": RFC 3339, UTC, microseconds (27 bytes). */
#define TS_SIZE 32

static void format_ts(char buf[TS_SIZE])
{
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(buf, TS_SIZE, "%Y-%m-%dT%H:%M:%S", &tm);
    unsigned micro = (unsigned)(now.tv_nsec / 1000) % 1000000u;
    snprintf(buf + n, TS_SIZE - n, ".%06uZ", micro);
}

/*
 * A JSON string of the first n bytes of s. jansson refuses invalid UTF-8, and
 * a log line must not be lost over one bad byte in a message, so bytes that
 * are not part of valid UTF-8 become '?'. The cut at n may split a character:
 * its leading bytes then become '?' too.
 */
static json_t *text_value(const char *s, size_t n)
{
    json_t *v = json_stringn(s, n);
    if (v != NULL) {
        return v;
    }
    char *copy = malloc(n + 1);
    if (copy == NULL) {
        return NULL;
    }
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xE0) == 0xC0 ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 0;
        /* json_stringn checks each candidate sequence exactly (overlong forms,
         * surrogates, range), so this helper needs no UTF-8 rules of its own. */
        json_t *probe = (len > 1 && i + len <= n) ? json_stringn(s + i, len) : NULL;
        if (len == 1 || probe != NULL) {
            memcpy(copy + i, s + i, len);
            i += len;
        } else {
            copy[i++] = '?';
        }
        json_decref(probe);
    }
    v = json_stringn(copy, n);
    free(copy);
    return v;
}

/* Write the whole buffer to stderr: one write(2) unless the kernel splits it. */
static void write_line(const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, buf, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return; /* nowhere to report a failure to log */
        }
        buf += w;
        n -= (size_t)w;
    }
}

/* The line of last resort, when building the real one ran out of memory. */
static void write_nomem_line(const char *level, const char *ts)
{
    char buf[128];
    int n = snprintf(buf, sizeof buf,
                     "{\"level\":\"%s\",\"log_error\":\"no_memory\",\"msg\":\"\","
                     "\"ts\":\"%s\",\"truncated\":true}\n",
                     level, ts);
    if (n > 0 && (size_t)n < sizeof buf) {
        write_line(buf, (size_t)n);
    }
}

/* The size of `obj` in canonical form; 0 if it cannot be encoded. */
static size_t encoded_size(const json_t *obj)
{
    return json_dumpb(obj, NULL, 0, CANONICAL_FLAGS);
}

/*
 * Shrink `line` (base members only, plus "truncated") until it fits in
 * LOG_LINE_MAX - 1 bytes by cutting msg, which is the only member that can be
 * long. The encoded size grows with the length of the prefix kept (escapes
 * only make it grow faster), so a binary search finds the longest prefix that
 * fits; an empty msg always fits.
 */
static phg_status shrink_msg(json_t *line, const char *msg, size_t msg_len)
{
    size_t size = encoded_size(line);
    if (size == 0) {
        return PHG_ERR_NOMEM;
    }
    if (size <= LOG_LINE_MAX - 1) {
        return PHG_OK;
    }
    size_t fits = 0, too_long = msg_len; /* invariant: fits < too_long */
    while (too_long - fits > 1) {
        size_t mid = fits + (too_long - fits) / 2;
        if (json_object_set_new(line, "msg", text_value(msg, mid)) != 0) {
            return PHG_ERR_NOMEM;
        }
        size = encoded_size(line);
        if (size == 0) {
            return PHG_ERR_NOMEM;
        }
        if (size <= LOG_LINE_MAX - 1) {
            fits = mid;
        } else {
            too_long = mid;
        }
    }
    if (json_object_set_new(line, "msg", text_value(msg, fits)) != 0) {
        return PHG_ERR_NOMEM;
    }
    return PHG_OK;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * A line that did not fit: keep the base members (cutting msg if it alone is
 * too long), mark it truncated, then put back the fields that still fit, in
 * name order. The size of a compact object is the size of "{}" plus each
 * member's "name":value plus the commas, so each field's cost is measured on
 * its own and the result is exact.
 */
static phg_status truncate_line(json_t *line, json_t *fields, const char *msg, size_t msg_len)
{
    phg_status rc;
    json_t *one = NULL;
    const char **keys = NULL;

    /* The base members are already in `line`, the fields are kept apart. */
    if (json_object_set_new(line, "truncated", json_true()) != 0) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    rc = shrink_msg(line, msg, msg_len);
    if (rc != PHG_OK || fields == NULL) {
        goto out;
    }
    size_t used = encoded_size(line);
    size_t n = json_object_size(fields);
    keys = malloc((n ? n : 1) * sizeof *keys);
    if (keys == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    size_t k = 0;
    const char *key;
    json_t *value;
    json_object_foreach(fields, key, value)
    {
        keys[k++] = key;
    }
    qsort(keys, k, sizeof *keys, compare_names);
    for (size_t i = 0; i < k; i++) {
        one = json_object();
        if (one == NULL || json_object_set(one, keys[i], json_object_get(fields, keys[i])) != 0) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
        size_t member = encoded_size(one);
        json_decref(one);
        one = NULL;
        if (member == 0) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
        size_t cost = member - 2 + 1; /* without "{}", with a comma */
        if (used + cost <= LOG_LINE_MAX - 1) {
            if (json_object_set(line, keys[i], json_object_get(fields, keys[i])) != 0) {
                rc = PHG_ERR_NOMEM;
                goto out;
            }
            used += cost;
        }
    }
out:
    json_decref(one);
    free(keys);
    return rc;
}

/*
 * Build and write one line. Failures inside never drop the line: bad fields
 * become "fields_error", a line too long is cut, and if memory runs out a
 * fixed line still says that something was logged and at what level.
 */
void phg_log(phg_log_level level, const char *msg, const char *fields_json)
{
    phg_status rc;
    json_t *line = NULL;
    json_t *fields = NULL;
    char *buf = NULL;
    char ts[TS_SIZE];

    pthread_once(&log_env_once, log_read_env);
    if ((int)level < atomic_load(&log_threshold)) {
        return;
    }
    format_ts(ts);
    const char *lname = level_name(level);
    if (msg == NULL) {
        msg = "";
    }
    /* A longer msg cannot fit in a line anyway; the cap bounds the work of
     * text_value on hostile text, and the line is marked truncated. */
    size_t msg_len = strnlen(msg, LOG_LINE_MAX);

    const char *fields_error = NULL;
    if (fields_json != NULL) {
        rc = mask_tree(fields_json, strlen(fields_json), NULL, &fields);
        if (rc == PHG_OK && !json_is_object(fields)) {
            rc = PHG_ERR_INVALID;
        }
        if (rc == PHG_ERR_NOMEM) {
            goto out;
        }
        if (rc != PHG_OK) {
            fields_error = phg_status_name(rc); /* "invalid" or "too_large" */
            json_decref(fields);
            fields = NULL;
        } else {
            for (size_t i = 0; reserved_members[i] != NULL; i++) {
                json_object_del(fields, reserved_members[i]);
            }
        }
    }

    /* The base members, in their own object: truncation needs them apart. */
    line = json_object();
    rc = PHG_ERR_NOMEM;
    if (line == NULL || json_object_set_new(line, "level", json_string(lname)) != 0 ||
        json_object_set_new(line, "ts", json_string(ts)) != 0 ||
        json_object_set_new(line, "msg", text_value(msg, msg_len)) != 0) {
        goto out;
    }
    const phg_request_context *ctx = phg_request_context_get();
    if (ctx != NULL && ctx->request_id[0] != '\0' &&
        json_object_set_new(line, "request_id",
                            text_value(ctx->request_id, strlen(ctx->request_id))) != 0) {
        goto out;
    }
    if (fields_error != NULL &&
        json_object_set_new(line, "fields_error", json_string(fields_error)) != 0) {
        goto out;
    }

    buf = malloc(LOG_LINE_MAX);
    if (buf == NULL) {
        goto out;
    }
    if (fields != NULL && json_object_update(line, fields) != 0) {
        goto out;
    }
    size_t n = json_dumpb(line, buf, LOG_LINE_MAX - 1, CANONICAL_FLAGS);
    if (n == 0) {
        goto out;
    }
    if (n > LOG_LINE_MAX - 1) {
        /* Start again from the base members: drop every field, then let
         * truncate_line put back those that fit. */
        if (fields != NULL) {
            const char *key;
            json_t *value;
            json_object_foreach(fields, key, value)
            {
                json_object_del(line, key);
            }
        }
        if (truncate_line(line, fields, msg, msg_len) != PHG_OK) {
            goto out;
        }
        n = json_dumpb(line, buf, LOG_LINE_MAX - 1, CANONICAL_FLAGS);
        if (n == 0 || n > LOG_LINE_MAX - 1) {
            goto out; /* cannot happen: truncate_line measured it */
        }
    }
    buf[n] = '\n';
    write_line(buf, n + 1);
    rc = PHG_OK;
out:
    if (rc != PHG_OK) {
        write_nomem_line(level_name(level), ts);
    }
    free(buf);
    json_decref(fields);
    json_decref(line);
}
