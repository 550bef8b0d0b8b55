/*
 * tests/unit/test_audit_mask.c: src/audit_mask.c against include/phigate/audit.h,
 * sections "request context", "masking" and "structured logs": the
 * thread-local context (set, get, clear, truncation, isolation between
 * threads); every default masked name in several spellings, at several depths
 * and with values of every type; names that must not be masked; canonical
 * output; the size, depth and syntax errors; planted PHI that must not come
 * out; and log lines read back through a pipe on fd 2 (valid JSON, request id,
 * masked fields, level filter, bad fields, truncation, many threads, the
 * PHIGATE_LOG_LEVEL variable in a child process).
 *
 * No shared vectors exist for masking: the expectations are the header's.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <regex.h>

#include <cmocka.h>
#include <jansson.h>

#include "phigate/audit.h"

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

#define CANONICAL (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)
#define LOG_LINE_MAX 16384 /* bytes, newline included */

/* The names the brief for the default list requires (normal form). */
/* clang-format off */
static const char *const required_names[] = {
    "name", "firstname", "lastname", "fullname", "givenname", "familyname", "patientname",
    "dob", "birthdate", "dateofbirth", "email", "emailaddress", "phone", "phonenumber",
    "mobile", "fax", "address", "street", "streetaddress", "city", "zip", "zipcode",
    "postalcode", "ssn", "socialsecuritynumber", "mrn", "medicalrecordnumber", "healthplanid",
    "accountnumber", "licensenumber", "deviceid", "deviceserial", "serialnumber", "imei",
    "macaddress", "notes", "note", "comment", "comments", "freetext", "description",
    "diagnosis", "medication", "heartrate", "hr", "hrv", "restingheartrate", "bloodpressure",
    "systolic", "diastolic", "spo2", "oxygensaturation", "respiratoryrate", "resprate",
    "temperature", "bodytemperature", "glucose", "bloodglucose", "weight", "height", "bmi",
    "steps", "sleep", "sleepscore", "ecg", "readings", "authorization", "cookie", "setcookie",
    "xapikey", "apikey", "password", "secret", "token", "accesstoken", "refreshtoken", NULL
};
/* clang-format on */

/* Names that must stay visible in details and logs. */
/* clang-format off */
static const char *const kept_names[] = {
    "ip", "ipaddress", "client_ip", "value", "values", "id", "user_id", "subject",
    "request_id", "action", "outcome", "status", "count", "kid", "namespace", "filename",
    "hrs", "nam", "names", "ssn2", "e-mail-x", "", "-", "__", "n a m e",
    "n\xd0\xb0me" /* Cyrillic a */, NULL
};
/* clang-format on */

/* The planted PHI of the leak tests: none of these may come out. (148.25,
 * not 48.2: "48.2" turns up in a log line's timestamp, at :48.2xxxxx.) */
/* clang-format off */
static const char *const planted[] = {
    "Zebediah", "Quixote", "1961-04-17", "078-05-1120", "zeb.quixote@example.org",
    "+1-555-0142", "MRN-88412", "148.25", "night sweats", "Sonnenallee", NULL
};
/* clang-format on */

static const char PLANTED_DETAILS[] =
    "{\"patient\":{\"Name\":\"Zebediah Quixote\",\"Date_Of_Birth\":\"1961-04-17\","
    "\"SSN\":\"078-05-1120\",\"e-mail\":\"zeb.quixote@example.org\",\"email\":"
    "\"zeb.quixote@example.org\",\"Phone\":\"+1-555-0142\",\"mrn\":\"MRN-88412\","
    "\"address\":{\"street\":\"Sonnenallee 1\",\"city\":\"Berlin\"}},"
    "\"readings\":[{\"hrv\":148.25}],\"batch\":[{\"HRV\":148.25,\"unit\":\"ms\"},"
    "{\"note\":\"complains of night sweats\"}],\"Free_Text\":\"Zebediah Quixote\","
    "\"count\":2,\"action\":\"phi.decrypt\"}";

/* ---- helpers ------------------------------------------------------------------ */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    EXPECT(p != NULL, "out of memory (%zu bytes)", n);
    return p;
}

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    EXPECT(j != NULL, "not JSON (%s): %s", err.text, text);
    return j;
}

/* Mask text with the defaults; the output must be OK and canonical. */
static char *mask_ok(const char *text, const char *const *fields)
{
    char *out = (char *)1;
    EXPECT_RC(phg_audit_mask_json(text, strlen(text), fields, &out), PHG_OK);
    EXPECT(out != NULL, "no output");
    json_t *again = parse(out);
    char *canon = json_dumps(again, CANONICAL);
    EXPECT(strcmp(canon, out) == 0, "not canonical:\n %s\n %s", out, canon);
    free(canon);
    json_decref(again);
    return out;
}

static void expect_no_planted(const char *text)
{
    for (size_t i = 0; planted[i] != NULL; i++) {
        EXPECT(strstr(text, planted[i]) == NULL, "planted \"%s\" leaked: %s", planted[i], text);
    }
}

/* Spellings of a normal-form name that must all match it. */
#define SPELLINGS 6
static void spell(const char *name, int which, char *buf, size_t cap)
{
    size_t n = strlen(name), j = 0;
    EXPECT(3 * n + 8 < cap, "name too long");
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        switch (which) {
        case 0:
            buf[j++] = c;
            break; /* as is */
        case 1:
            buf[j++] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
            break; /* UPPER */
        case 2:    /* Snake_Case */
            buf[j++] = (char)(i == 0 && c >= 'a' && c <= 'z' ? c - 32 : c);
            if (i + 1 < n) {
                buf[j++] = '_';
            }
            break;
        case 3: /* kebab-every-letter */
            buf[j++] = c;
            if (i + 1 < n) {
                buf[j++] = '-';
            }
            break;
        case 4: /* mIxEd with doubled separators */
            buf[j++] = (char)(i % 2 && c >= 'a' && c <= 'z' ? c - 32 : c);
            if (i == 0) {
                buf[j++] = '_';
                buf[j++] = '-';
            }
            break;
        default: /* leading and trailing separators */
            if (i == 0) {
                buf[j++] = '_';
            }
            buf[j++] = c;
            if (i + 1 == n) {
                buf[j++] = '-';
                buf[j++] = '_';
            }
            break;
        }
    }
    buf[j] = '\0';
}

/* ---- stderr capture ------------------------------------------------------------ */

typedef struct capture {
    int saved_fd;
    int read_fd;
    pthread_t reader;
    char *buf;
    size_t len, cap;
} capture;

static void *capture_reader(void *arg)
{
    capture *c = arg;
    for (;;) {
        if (c->len + 4096 + 1 > c->cap) {
            c->cap = c->cap * 2 + 8192;
            c->buf = realloc(c->buf, c->cap);
            if (c->buf == NULL) {
                abort();
            }
        }
        ssize_t r = read(c->read_fd, c->buf + c->len, 4096);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        c->len += (size_t)r;
    }
    c->buf[c->len] = '\0';
    return NULL;
}

/* Point fd 2 at a pipe read by a thread (so writers never block on a full pipe). */
static void capture_start(capture *c)
{
    int p[2];
    memset(c, 0, sizeof *c);
    EXPECT(pipe(p) == 0, "pipe: %s", strerror(errno));
    fflush(stderr);
    c->saved_fd = dup(STDERR_FILENO);
    EXPECT(c->saved_fd >= 0, "dup");
    EXPECT(dup2(p[1], STDERR_FILENO) == STDERR_FILENO, "dup2");
    close(p[1]);
    c->read_fd = p[0];
    EXPECT(pthread_create(&c->reader, NULL, capture_reader, c) == 0, "pthread_create");
}

/* Restore fd 2 and return what was written (malloc'd, NUL-terminated). */
static char *capture_stop(capture *c, size_t *len)
{
    dup2(c->saved_fd, STDERR_FILENO);
    close(c->saved_fd);
    pthread_join(c->reader, NULL);
    close(c->read_fd);
    if (len != NULL) {
        *len = c->len;
    }
    return c->buf;
}

/*
 * Split captured text into lines; every line must end in '\n', be at most
 * LOG_LINE_MAX bytes with it, and be one canonical JSON object. Returns the
 * parsed lines as a JSON array.
 */
static json_t *parse_lines(const char *text, size_t len)
{
    json_t *lines = json_array();
    size_t start = 0;
    EXPECT(len == 0 || text[len - 1] == '\n', "output does not end in a newline");
    for (size_t i = 0; i < len; i++) {
        if (text[i] != '\n') {
            continue;
        }
        size_t n = i - start;
        EXPECT(n + 1 <= LOG_LINE_MAX, "line of %zu bytes", n + 1);
        char *one = xmalloc(n + 1);
        memcpy(one, text + start, n);
        one[n] = '\0';
        json_t *j = parse(one);
        EXPECT(json_is_object(j), "line is not an object: %s", one);
        char *canon = json_dumps(j, CANONICAL);
        EXPECT(strcmp(canon, one) == 0, "line not canonical:\n %s\n %s", one, canon);
        free(canon);
        free(one);
        json_array_append_new(lines, j);
        start = i + 1;
    }
    return lines;
}

/* Log with fd 2 captured; the lines written, parsed. */
static json_t *log_capture(phg_log_level level, const char *msg, const char *fields, char **raw)
{
    capture c;
    size_t len;
    capture_start(&c);
    phg_log(level, msg, fields);
    char *text = capture_stop(&c, &len);
    json_t *lines = parse_lines(text, len);
    if (raw != NULL) {
        *raw = text;
    } else {
        free(text);
    }
    return lines;
}

static const char *str_member(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    EXPECT(s != NULL, "no string member \"%s\"", key);
    return s;
}

static void set_context(const char *request_id)
{
    phg_request_context ctx;
    memset(&ctx, 0, sizeof ctx);
    snprintf(ctx.request_id, sizeof ctx.request_id, "%s", request_id);
    snprintf(ctx.key_id, sizeof ctx.key_id, "ak_test");
    snprintf(ctx.role, sizeof ctx.role, "admin");
    snprintf(ctx.ip, sizeof ctx.ip, "127.0.0.1");
    phg_request_context_set(&ctx);
}

/* ---- request context ------------------------------------------------------------ */

static void test_context_set_get_clear(void **state)
{
    (void)state;
    phg_request_context_set(NULL);
    EXPECT(phg_request_context_get() == NULL, "a context before any set");

    phg_request_context ctx;
    memset(&ctx, 0, sizeof ctx);
    strcpy(ctx.request_id, "01JDQ2Z8KX4T3V9M6N5P7R8S0A");
    strcpy(ctx.key_id, "ak_1");
    strcpy(ctx.user_id, "user-42");
    strcpy(ctx.role, "reader");
    strcpy(ctx.ip, "2001:db8::1");
    phg_request_context_set(&ctx);
    memset(&ctx, 'x', sizeof ctx); /* the library kept a copy */

    const phg_request_context *got = phg_request_context_get();
    EXPECT(got != NULL, "no context after set");
    assert_string_equal(got->request_id, "01JDQ2Z8KX4T3V9M6N5P7R8S0A");
    assert_string_equal(got->key_id, "ak_1");
    assert_string_equal(got->user_id, "user-42");
    assert_string_equal(got->role, "reader");
    assert_string_equal(got->ip, "2001:db8::1");

    /* Unterminated members are cut to their array, and terminated. */
    memset(&ctx, 'y', sizeof ctx);
    phg_request_context_set(&ctx);
    got = phg_request_context_get();
    EXPECT(strlen(got->request_id) == PHG_ULID_LEN, "request_id %zu", strlen(got->request_id));
    EXPECT(strlen(got->key_id) == PHG_AUDIT_TEXT_MAX, "key_id %zu", strlen(got->key_id));
    EXPECT(strlen(got->user_id) == PHG_AUDIT_TEXT_MAX, "user_id");
    EXPECT(strlen(got->role) == sizeof got->role - 1, "role");
    EXPECT(strlen(got->ip) == sizeof got->ip - 1, "ip");

    /* Setting from the pointer get() returned is allowed. */
    phg_request_context_set(got);
    EXPECT(phg_request_context_get() != NULL, "self set");
    EXPECT(strlen(phg_request_context_get()->ip) == sizeof got->ip - 1, "self set ip");

    phg_request_context_set(NULL);
    EXPECT(phg_request_context_get() == NULL, "clear did not clear");
}

typedef struct ctx_thread {
    const char *id;
    pthread_barrier_t *barrier;
    int ok;
    char seen_before[64];
} ctx_thread;

static void *ctx_thread_main(void *arg)
{
    ctx_thread *t = arg;
    const phg_request_context *before = phg_request_context_get();
    snprintf(t->seen_before, sizeof t->seen_before, "%s", before ? before->request_id : "");
    set_context(t->id);
    pthread_barrier_wait(t->barrier); /* both have set theirs */
    pthread_barrier_wait(t->barrier);
    const phg_request_context *got = phg_request_context_get();
    t->ok = got != NULL && strcmp(got->request_id, t->id) == 0;
    phg_request_context_set(NULL);
    pthread_barrier_wait(t->barrier); /* the other's clear must not touch ours */
    return NULL;
}

static void test_context_per_thread(void **state)
{
    (void)state;
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    set_context("MAINTHREAD");
    ctx_thread a = {"01AAAAAAAAAAAAAAAAAAAAAAAA", &barrier, 0, ""};
    ctx_thread b = {"01BBBBBBBBBBBBBBBBBBBBBBBB", &barrier, 0, ""};
    pthread_t ta, tb;
    EXPECT(pthread_create(&ta, NULL, ctx_thread_main, &a) == 0, "create");
    EXPECT(pthread_create(&tb, NULL, ctx_thread_main, &b) == 0, "create");
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&barrier);
    EXPECT(a.ok && b.ok, "a thread saw another thread's context");
    EXPECT(a.seen_before[0] == '\0' && b.seen_before[0] == '\0',
           "a new thread inherited a context");
    const phg_request_context *mine = phg_request_context_get();
    EXPECT(mine != NULL && strcmp(mine->request_id, "MAINTHREAD") == 0,
           "the threads changed the main thread's context");
    phg_request_context_set(NULL);
}

/* ---- masking: names ------------------------------------------------------------ */

static void test_default_list(void **state)
{
    (void)state;
    const char *const *list = phg_audit_default_mask();
    EXPECT(list != NULL && list == phg_audit_default_mask(), "not one static list");
    size_t n = 0;
    for (; list[n] != NULL; n++) {
        for (const char *p = list[n]; *p; p++) {
            EXPECT((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'),
                   "\"%s\" is not in normal form", list[n]);
        }
        for (size_t j = 0; j < n; j++) {
            EXPECT(strcmp(list[j], list[n]) != 0, "\"%s\" twice", list[n]);
        }
    }
    EXPECT(n > 60, "only %zu names", n);
    for (size_t i = 0; required_names[i] != NULL; i++) {
        int found = 0;
        for (size_t j = 0; list[j] != NULL; j++) {
            found |= strcmp(list[j], required_names[i]) == 0;
        }
        EXPECT(found, "\"%s\" missing from the defaults", required_names[i]);
    }
}

static void test_is_masked_spellings(void **state)
{
    (void)state;
    const char *const *list = phg_audit_default_mask();
    char buf[256];
    for (size_t i = 0; list[i] != NULL; i++) {
        for (int s = 0; s < SPELLINGS; s++) {
            spell(list[i], s, buf, sizeof buf);
            EXPECT(phg_audit_is_masked(buf, NULL) == 1, "\"%s\" not masked", buf);
            EXPECT(phg_audit_is_masked(buf, list) == 1, "\"%s\" not masked (explicit)", buf);
        }
    }
    const char *const examples[] = {
        "Date_Of_Birth", "date-of-birth", "dateofbirth", "X-API-Key", "Set-Cookie",
        "AUTHORIZATION", "first_name",    "Heart-Rate",  "SpO2",      NULL};
    for (size_t i = 0; examples[i] != NULL; i++) {
        EXPECT(phg_audit_is_masked(examples[i], NULL) == 1, "\"%s\" not masked", examples[i]);
    }
    for (size_t i = 0; kept_names[i] != NULL; i++) {
        EXPECT(phg_audit_is_masked(kept_names[i], NULL) == 0, "\"%s\" masked", kept_names[i]);
    }

    /* A caller's list replaces the defaults, and is normalised the same way. */
    const char *const mine[] = {"Patient_Ref", NULL};
    EXPECT(phg_audit_is_masked("patient-ref", mine) == 1, "custom list: patient-ref");
    EXPECT(phg_audit_is_masked("PATIENTREF", mine) == 1, "custom list: PATIENTREF");
    EXPECT(phg_audit_is_masked("name", mine) == 0, "custom list still masks defaults");
    const char *const none[] = {NULL};
    EXPECT(phg_audit_is_masked("ssn", none) == 0, "empty list masks");
}

/* ---- masking: JSON --------------------------------------------------------------- */

/* Wrap a member at the given depth: 0 top level, then alternately in arrays and objects. */
static json_t *nest(json_t *member_obj, int depth)
{
    json_t *v = member_obj;
    for (int d = 0; d < depth; d++) {
        json_t *arr = json_array();
        json_array_append_new(arr, json_integer(d));
        json_array_append_new(arr, v);
        json_t *obj = json_object();
        json_object_set_new(obj, "level", arr);
        json_object_set_new(obj, "keep", json_string("visible"));
        v = obj;
    }
    return v;
}

static void test_mask_every_name_everywhere(void **state)
{
    (void)state;
    const char *const *list = phg_audit_default_mask();
    char name[256];
    const int depths[] = {0, 1, 3, 10};
    size_t checked = 0;
    for (size_t i = 0; list[i] != NULL; i++) {
        for (int s = 0; s < SPELLINGS; s++) {
            spell(list[i], s, name, sizeof name);
            for (size_t d = 0; d < sizeof depths / sizeof depths[0]; d++) {
                for (int type = 0; type < 6; type++) {
                    json_t *value;
                    switch (type) {
                    case 0:
                        value = json_string("PLANTED-Zebediah");
                        break;
                    case 1:
                        value = json_real(148.25);
                        break;
                    case 2:
                        value = json_pack("{s:s}", "inner", "PLANTED-Quixote");
                        break;
                    case 3:
                        value = json_pack("[s,i]", "PLANTED-1961-04-17", 1961);
                        break;
                    case 4:
                        value = json_true();
                        break;
                    default:
                        value = json_null();
                        break;
                    }
                    json_t *m = json_object();
                    json_object_set_new(m, name, value);
                    json_object_set_new(m, "status", json_string("kept-value"));
                    json_t *doc = nest(m, depths[d]);
                    char *text = json_dumps(doc, JSON_COMPACT);
                    char *out = mask_ok(text, NULL);
                    EXPECT(strstr(out, "PLANTED") == NULL && strstr(out, "148.25") == NULL &&
                               strstr(out, "1961") == NULL && strstr(out, "true") == NULL &&
                               strstr(out, "null") == NULL,
                           "value of \"%s\" leaked: %s", name, out);
                    EXPECT(strstr(out, "kept-value") != NULL &&
                               (depths[d] == 0 || strstr(out, "visible")),
                           "a kept member was lost: %s", out);
                    /* The masked member is still there, with "***". */
                    char needle[300];
                    json_t *key = json_string(name);
                    char *key_text = json_dumps(key, JSON_ENCODE_ANY);
                    snprintf(needle, sizeof needle, "%s:\"***\"", key_text);
                    EXPECT(strstr(out, needle) != NULL, "no %s in %s", needle, out);
                    free(key_text);
                    json_decref(key);
                    free(out);
                    free(text);
                    json_decref(doc);
                    checked++;
                }
            }
        }
    }
    EXPECT(checked > 1000, "only %zu cases", checked);
}

static void test_mask_keeps_other_members(void **state)
{
    (void)state;
    const char *text = "{\"z\":[1,2.5,\"three\",{\"ip\":\"10.0.0.1\",\"value\":7}],"
                       "\"a\":{\"id\":\"k1\",\"b\":null,\"c\":false,\"d\":{}},"
                       "\"user_id\":\"u1\",\"e\":\"caf\\u00e9 \\\"q\\\"\",\"n\":-0,\"big\":"
                       "9007199254740993}";
    char *out = mask_ok(text, NULL);
    json_t *in = parse(text);
    char *want = json_dumps(in, CANONICAL);
    assert_string_equal(out, want);
    free(want);
    json_decref(in);
    free(out);

    /* Not an object at the top: arrays and scalars are masked inside / kept. */
    out = mask_ok("[{\"ssn\":\"x\"},{\"k\":1}]", NULL);
    assert_string_equal(out, "[{\"ssn\":\"***\"},{\"k\":1}]");
    free(out);
    out = mask_ok("\"ssn\"", NULL); /* a string value, not a member name */
    assert_string_equal(out, "\"ssn\"");
    free(out);

    /* Query-parameter-looking values are not parsed: only member names count. */
    out = mask_ok("{\"query\":\"ssn=078-05-1120\"}", NULL);
    assert_string_equal(out, "{\"query\":\"ssn=078-05-1120\"}");
    free(out);
}

static void test_mask_canonical_output(void **state)
{
    (void)state;
    const char *text = "{ \"zeta\" : 1,\n \"Alpha\": [ 3 , 2 ],\t\"beta\": { \"y\": 1, \"x\": 2 },"
                       " \"Email\": \"a@b.c\" , \"ssn\" : { \"nested\" : [1] } }";
    char *out = mask_ok(text, NULL);
    assert_string_equal(out, "{\"Alpha\":[3,2],\"Email\":\"***\",\"beta\":{\"x\":2,\"y\":1},"
                             "\"ssn\":\"***\",\"zeta\":1}");
    /* Masking a masked text changes nothing. */
    char *again = mask_ok(out, NULL);
    assert_string_equal(again, out);
    free(again);
    free(out);

    /* A caller's list. */
    const char *const mine[] = {"zeta", NULL};
    out = mask_ok(text, mine);
    assert_string_equal(out, "{\"Alpha\":[3,2],\"Email\":\"a@b.c\",\"beta\":{\"x\":2,\"y\":1},"
                             "\"ssn\":{\"nested\":[1]},\"zeta\":\"***\"}");
    free(out);
}

static void test_mask_duplicates(void **state)
{
    (void)state;
    char *out = mask_ok("{\"ssn\":\"111-11-1111\",\"SSN\":\"222-22-2222\",\"ssn\":\"333-33-3333\","
                        "\"s-s-n\":{\"ssn\":\"444\"},\"k\":1,\"k\":2}",
                        NULL);
    EXPECT(strstr(out, "111") == NULL && strstr(out, "222") == NULL && strstr(out, "333") == NULL &&
               strstr(out, "444") == NULL,
           "a duplicate leaked: %s", out);
    assert_string_equal(out, "{\"SSN\":\"***\",\"k\":2,\"s-s-n\":\"***\",\"ssn\":\"***\"}");
    free(out);
}

static void expect_mask_error(const char *text, size_t len, phg_status want)
{
    char *out = (char *)1;
    EXPECT_RC(phg_audit_mask_json(text, len, NULL, &out), want);
    EXPECT(out == NULL, "output left on error");
}

static char *nested_text(size_t depth, char open, char close)
{
    char *t = xmalloc(2 * depth + 1);
    memset(t, open, depth);
    memset(t + depth, close, depth);
    t[2 * depth] = '\0';
    return t;
}

static void test_mask_errors(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         " ",
                         "{",
                         "}",
                         "{'a':1}",
                         "{\"a\":}",
                         "nul",
                         "{} x",
                         "[1,]",
                         "{\"a\" 1}",
                         "\"\xff\"",
                         "{\"a\\u0000b\":1}",
                         "{\"n\":1e999x}",
                         "123456789012345678901234567890",
                         NULL};
    for (size_t i = 0; bad[i] != NULL; i++) {
        expect_mask_error(bad[i], strlen(bad[i]), PHG_ERR_INVALID);
    }
    expect_mask_error(NULL, 0, PHG_ERR_INVALID);
    /* len is honoured: the text is not read past it. */
    expect_mask_error("{\"a\":1}", 3, PHG_ERR_INVALID);
    char *out = NULL;
    EXPECT_RC(phg_audit_mask_json("{\"ssn\":1}XXXX", 9, NULL, &out), PHG_OK);
    assert_string_equal(out, "{\"ssn\":\"***\"}");
    free(out);

    /* Size: exactly the limit is fine, one byte more is too large. */
    size_t max = PHG_AUDIT_DETAILS_MAX;
    char *big = xmalloc(max + 2);
    memset(big, ' ', max + 1);
    memcpy(big, "{\"ssn\":\"", 8);
    memset(big + 8, 'A', max - 8 - 2);
    memcpy(big + max - 2, "\"}", 2);
    big[max + 1] = '\0';
    EXPECT_RC(phg_audit_mask_json(big, max, NULL, &out), PHG_OK);
    assert_string_equal(out, "{\"ssn\":\"***\"}");
    free(out);
    expect_mask_error(big, max + 1, PHG_ERR_TOO_LARGE);
    memcpy(big, "not json", 8);
    expect_mask_error(big, max + 1, PHG_ERR_TOO_LARGE); /* size is checked first */
    free(big);

    /* Depth: 64 nested containers are fine, 65 are not, masked or not. */
    for (int kind = 0; kind < 2; kind++) {
        char *ok = nested_text(64, "[{"[kind], "]}"[kind]);
        char *deep = nested_text(65, "[{"[kind], "]}"[kind]);
        if (kind == 1) {
            /* {{}} is not JSON; build {"a":{"a":...{}}} instead. */
            free(ok);
            free(deep);
            ok = xmalloc(64 * 6 + 8);
            deep = xmalloc(65 * 6 + 8);
            ok[0] = deep[0] = '\0';
            for (int i = 0; i < 63; i++) {
                strcat(ok, "{\"a\":");
            }
            strcat(ok, "{}");
            for (int i = 0; i < 63; i++) {
                strcat(ok, "}");
            }
            strcpy(deep, "{\"notes\":");
            strcat(deep, ok);
            strcat(deep, "}");
        }
        out = NULL;
        EXPECT_RC(phg_audit_mask_json(ok, strlen(ok), NULL, &out), PHG_OK);
        free(out);
        expect_mask_error(deep, strlen(deep), PHG_ERR_INVALID);
        free(ok);
        free(deep);
    }
    /* Brackets inside strings do not count towards the depth. */
    char *brackets = xmalloc(300);
    strcpy(brackets, "{\"s\":\"");
    for (int i = 0; i < 100; i++) {
        strcat(brackets, "[{");
    }
    strcat(brackets, "\\\"\"}");
    out = mask_ok(brackets, NULL);
    free(out);
    free(brackets);
    /* jansson's own much deeper limit is never reached. */
    char *very = nested_text(5000, '[', ']');
    expect_mask_error(very, strlen(very), PHG_ERR_INVALID);
    free(very);
}

static void test_planted_phi_masked(void **state)
{
    (void)state;
    /* The fixture itself must contain every planted value, or the test proves nothing. */
    for (size_t i = 0; planted[i] != NULL; i++) {
        EXPECT(strstr(PLANTED_DETAILS, planted[i]) != NULL, "fixture lacks \"%s\"", planted[i]);
    }
    char *out = mask_ok(PLANTED_DETAILS, NULL);
    expect_no_planted(out);
    json_t *j = parse(out);
    assert_string_equal(str_member(j, "action"), "phi.decrypt");
    EXPECT(json_integer_value(json_object_get(j, "count")) == 2, "count lost");
    json_t *patient = json_object_get(j, "patient");
    EXPECT(json_object_size(patient) == 8, "patient members: %zu", json_object_size(patient));
    const char *key;
    json_t *value;
    json_object_foreach(patient, key, value)
    {
        EXPECT(json_is_string(value) && strcmp(json_string_value(value), "***") == 0,
               "patient.%s not masked", key);
    }
    assert_string_equal(str_member(json_array_get(json_object_get(j, "batch"), 0), "unit"), "ms");
    json_decref(j);
    free(out);
}

/* ---- structured logs --------------------------------------------------------------- */

static void check_ts(const char *ts)
{
    regex_t re;
    EXPECT(regcomp(&re,
                   "^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\\.[0-9]{6}Z$",
                   REG_EXTENDED | REG_NOSUB) == 0,
           "regcomp");
    EXPECT(regexec(&re, ts, 0, NULL, 0) == 0, "bad ts \"%s\"", ts);
    regfree(&re);
}

static void test_log_line(void **state)
{
    (void)state;
    phg_log_set_level(PHG_LOG_INFO);
    set_context("01JDQ2Z8KX4T3V9M6N5P7R8S0A");
    char *raw;
    json_t *lines = log_capture(PHG_LOG_INFO, "phi decrypted", PLANTED_DETAILS, &raw);
    EXPECT(json_array_size(lines) == 1, "%zu lines: %s", json_array_size(lines), raw);
    expect_no_planted(raw);
    json_t *l = json_array_get(lines, 0);
    assert_string_equal(str_member(l, "level"), "info");
    assert_string_equal(str_member(l, "msg"), "phi decrypted");
    assert_string_equal(str_member(l, "request_id"), "01JDQ2Z8KX4T3V9M6N5P7R8S0A");
    check_ts(str_member(l, "ts"));
    assert_string_equal(str_member(l, "action"), "phi.decrypt");
    assert_string_equal(str_member(l, "Free_Text"), "***");
    assert_string_equal(str_member(l, "readings"), "***");
    assert_string_equal(str_member(json_object_get(l, "patient"), "SSN"), "***");
    EXPECT(json_object_get(l, "fields_error") == NULL && json_object_get(l, "truncated") == NULL,
           "unexpected marks: %s", raw);
    EXPECT(strchr(raw, '\n') == raw + strlen(raw) - 1, "more than one line");
    free(raw);
    json_decref(lines);

    /* Without a context, no request_id member; without fields, the four members. */
    phg_request_context_set(NULL);
    lines = log_capture(PHG_LOG_ERROR, "no context", NULL, &raw);
    EXPECT(json_array_size(lines) == 1, "%zu lines", json_array_size(lines));
    l = json_array_get(lines, 0);
    EXPECT(json_object_get(l, "request_id") == NULL, "request_id without a context: %s", raw);
    EXPECT(json_object_size(l) == 3, "members: %s", raw);
    assert_string_equal(str_member(l, "level"), "error");
    free(raw);
    json_decref(lines);

    /* An empty request id is no request id. */
    set_context("");
    lines = log_capture(PHG_LOG_WARN, NULL, "{}", &raw);
    l = json_array_get(lines, 0);
    EXPECT(json_object_get(l, "request_id") == NULL, "empty request_id: %s", raw);
    assert_string_equal(str_member(l, "msg"), "");
    assert_string_equal(str_member(l, "level"), "warn");
    free(raw);
    json_decref(lines);
    phg_request_context_set(NULL);
}

static void test_log_levels(void **state)
{
    (void)state;
    const phg_log_level all[] = {PHG_LOG_DEBUG, PHG_LOG_INFO, PHG_LOG_WARN, PHG_LOG_ERROR};
    const char *names[] = {"debug", "info", "warn", "error"};
    for (int threshold = 0; threshold < 4; threshold++) {
        phg_log_set_level(all[threshold]);
        capture c;
        size_t len;
        capture_start(&c);
        for (int lv = 0; lv < 4; lv++) {
            phg_log(all[lv], names[lv], "{\"ssn\":\"078-05-1120\"}");
        }
        char *text = capture_stop(&c, &len);
        json_t *lines = parse_lines(text, len);
        EXPECT(json_array_size(lines) == (size_t)(4 - threshold), "threshold %s: %zu lines",
               names[threshold], json_array_size(lines));
        for (size_t i = 0; i < json_array_size(lines); i++) {
            json_t *l = json_array_get(lines, i);
            assert_string_equal(str_member(l, "level"), names[threshold + (int)i]);
            assert_string_equal(str_member(l, "msg"), names[threshold + (int)i]);
            assert_string_equal(str_member(l, "ssn"), "***");
        }
        expect_no_planted(text);
        free(text);
        json_decref(lines);
    }
    phg_log_set_level(PHG_LOG_INFO);
}

static void test_log_bad_fields(void **state)
{
    (void)state;
    phg_log_set_level(PHG_LOG_DEBUG);
    set_context("01JDQ2Z8KX4T3V9M6N5P7R8S0A");
    char *deep = nested_text(65, '[', ']');
    char *deep_obj = xmalloc(strlen(deep) + 16);
    sprintf(deep_obj, "{\"a\":%s}", deep);
    struct {
        const char *fields;
        const char *error;
    } cases[] = {
        {"not json", "invalid"},
        {"{\"name\":\"Zebediah Quixote\"", "invalid"}, /* cut short: nothing of it comes out */
        {"[1,2]", "invalid"},
        {"\"text\"", "invalid"},
        {"42", "invalid"},
        {"", "invalid"},
        {deep_obj, "invalid"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *raw;
        json_t *lines = log_capture(PHG_LOG_DEBUG, "bad fields", cases[i].fields, &raw);
        EXPECT(json_array_size(lines) == 1, "case %zu: %zu lines", i, json_array_size(lines));
        json_t *l = json_array_get(lines, 0);
        assert_string_equal(str_member(l, "fields_error"), cases[i].error);
        assert_string_equal(str_member(l, "msg"), "bad fields");
        assert_string_equal(str_member(l, "request_id"), "01JDQ2Z8KX4T3V9M6N5P7R8S0A");
        EXPECT(json_object_size(l) == 5, "case %zu: members: %s", i, raw);
        expect_no_planted(raw);
        free(raw);
        json_decref(lines);
    }
    free(deep);
    free(deep_obj);

    /* Over the details limit. */
    size_t n = PHG_AUDIT_DETAILS_MAX + 10;
    char *big = xmalloc(n + 1);
    memset(big, 'A', n);
    memcpy(big, "{\"a\":\"", 6);
    memcpy(big + n - 2, "\"}", 2);
    big[n] = '\0';
    char *raw;
    json_t *lines = log_capture(PHG_LOG_INFO, "big", big, &raw);
    assert_string_equal(str_member(json_array_get(lines, 0), "fields_error"), "too_large");
    free(raw);
    free(big);
    json_decref(lines);

    /* Fields cannot forge the members the log owns. */
    lines = log_capture(PHG_LOG_DEBUG, "real",
                        "{\"level\":\"error\",\"msg\":\"forged\",\"request_id\":\"FORGED\","
                        "\"ts\":\"1970\",\"truncated\":true,\"fields_error\":\"x\",\"ok\":1}",
                        &raw);
    json_t *l = json_array_get(lines, 0);
    assert_string_equal(str_member(l, "level"), "debug");
    assert_string_equal(str_member(l, "msg"), "real");
    assert_string_equal(str_member(l, "request_id"), "01JDQ2Z8KX4T3V9M6N5P7R8S0A");
    check_ts(str_member(l, "ts"));
    EXPECT(json_object_get(l, "truncated") == NULL && json_object_get(l, "fields_error") == NULL,
           "forged marks: %s", raw);
    EXPECT(json_integer_value(json_object_get(l, "ok")) == 1, "ok lost: %s", raw);
    free(raw);
    json_decref(lines);

    /* A msg that is not UTF-8 still gives a valid line. */
    lines = log_capture(PHG_LOG_INFO, "bad \xff\xfe utf-8 \xc3\xa9 \xe2\x82", NULL, &raw);
    assert_string_equal(str_member(json_array_get(lines, 0), "msg"), "bad ?? utf-8 \xc3\xa9 ??");
    free(raw);
    json_decref(lines);

    phg_log_set_level(PHG_LOG_INFO);
    phg_request_context_set(NULL);
}

static void test_log_truncated(void **state)
{
    (void)state;
    phg_log_set_level(PHG_LOG_INFO);
    set_context("01JDQ2Z8KX4T3V9M6N5P7R8S0A");

    /* A huge msg: cut, still valid, marked. Control characters expand 6x. */
    size_t n = 100000;
    char *msg = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        msg[i] = (i % 3 == 0) ? '\x01' : (i % 3 == 1) ? 'm' : '"';
    }
    msg[n] = '\0';
    char *raw;
    size_t raw_len;
    json_t *lines = log_capture(PHG_LOG_INFO, msg, "{\"k\":1,\"ssn\":\"078-05-1120\"}", &raw);
    raw_len = strlen(raw);
    EXPECT(json_array_size(lines) == 1, "%zu lines", json_array_size(lines));
    EXPECT(raw_len <= LOG_LINE_MAX && raw_len > LOG_LINE_MAX - 64, "line of %zu bytes", raw_len);
    json_t *l = json_array_get(lines, 0);
    EXPECT(json_is_true(json_object_get(l, "truncated")), "not marked: %.200s", raw);
    assert_string_equal(str_member(l, "request_id"), "01JDQ2Z8KX4T3V9M6N5P7R8S0A");
    EXPECT(strncmp(str_member(l, "msg"), msg, 30) == 0, "msg does not start as given");
    expect_no_planted(raw);
    free(raw);
    json_decref(lines);
    free(msg);

    /* Big fields: the msg is kept whole, fields are kept while they fit. */
    json_t *f = json_object();
    char key[16];
    char *val = xmalloc(3001);
    memset(val, 'v', 3000);
    val[3000] = '\0';
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "f%02d", i);
        json_object_set_new(f, key, json_string(val));
    }
    json_object_set_new(f, "small", json_integer(7));
    json_object_set_new(f, "Name", json_string("Zebediah Quixote"));
    char *ftext = json_dumps(f, JSON_COMPACT);
    lines = log_capture(PHG_LOG_WARN, "fields too big", ftext, &raw);
    raw_len = strlen(raw);
    EXPECT(raw_len <= LOG_LINE_MAX, "line of %zu bytes", raw_len);
    l = json_array_get(lines, 0);
    EXPECT(json_is_true(json_object_get(l, "truncated")), "not marked");
    assert_string_equal(str_member(l, "msg"), "fields too big");
    assert_string_equal(str_member(l, "Name"), "***");
    EXPECT(json_integer_value(json_object_get(l, "small")) == 7, "small field dropped: %.300s",
           raw);
    size_t kept = 0;
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "f%02d", i);
        kept += json_object_get(l, key) != NULL;
    }
    EXPECT(kept == 5, "%zu big fields kept (5 fit in 16 KiB)", kept);
    expect_no_planted(raw);
    free(raw);
    json_decref(lines);
    free(ftext);
    json_decref(f);
    free(val);

    /* A line of exactly the limit is not truncated; one byte more is. */
    for (int extra = 0; extra < 2; extra++) {
        json_t *probe = log_capture(PHG_LOG_INFO, "", "{\"pad\":\"\"}", &raw);
        size_t base = strlen(raw); /* newline included */
        free(raw);
        json_decref(probe);
        size_t pad_len = LOG_LINE_MAX - base + (size_t)extra;
        char *pad = xmalloc(pad_len + 32);
        strcpy(pad, "{\"pad\":\"");
        memset(pad + 8, 'p', pad_len);
        strcpy(pad + 8 + pad_len, "\"}");
        lines = log_capture(PHG_LOG_INFO, "", pad, &raw);
        l = json_array_get(lines, 0);
        if (extra == 0) {
            EXPECT(strlen(raw) == LOG_LINE_MAX, "line of %zu bytes", strlen(raw));
            EXPECT(json_object_get(l, "truncated") == NULL, "truncated at the limit");
        } else {
            EXPECT(json_is_true(json_object_get(l, "truncated")), "not truncated over the limit");
            EXPECT(json_object_get(l, "pad") == NULL, "pad kept");
        }
        free(raw);
        free(pad);
        json_decref(lines);
    }
    phg_request_context_set(NULL);
}

#define LOG_THREADS 4
#define LOG_LINES 300

static void *log_thread_main(void *arg)
{
    char id[PHG_ULID_LEN + 1];
    snprintf(id, sizeof id, "01THREAD%018d", (int)(intptr_t)arg);
    set_context(id);
    for (int i = 0; i < LOG_LINES; i++) {
        char fields[128];
        snprintf(fields, sizeof fields, "{\"i\":%d,\"hrv\":148.25,\"thread\":%d}", i,
                 (int)(intptr_t)arg);
        phg_log(PHG_LOG_INFO, "tick", fields);
    }
    phg_request_context_set(NULL);
    return NULL;
}

static void test_log_threads(void **state)
{
    (void)state;
    phg_log_set_level(PHG_LOG_INFO);
    capture c;
    size_t len;
    capture_start(&c);
    pthread_t t[LOG_THREADS];
    for (intptr_t i = 0; i < LOG_THREADS; i++) {
        EXPECT(pthread_create(&t[i], NULL, log_thread_main, (void *)i) == 0, "create");
    }
    for (int i = 0; i < LOG_THREADS; i++) {
        pthread_join(t[i], NULL);
    }
    char *text = capture_stop(&c, &len);
    json_t *lines = parse_lines(text, len); /* a torn line would fail to parse */
    EXPECT(json_array_size(lines) == LOG_THREADS * LOG_LINES, "%zu lines", json_array_size(lines));
    int next[LOG_THREADS] = {0};
    for (size_t i = 0; i < json_array_size(lines); i++) {
        json_t *l = json_array_get(lines, i);
        int th = (int)json_integer_value(json_object_get(l, "thread"));
        EXPECT(th >= 0 && th < LOG_THREADS, "thread %d", th);
        char id[PHG_ULID_LEN + 1];
        snprintf(id, sizeof id, "01THREAD%018d", th);
        assert_string_equal(str_member(l, "request_id"), id);
        EXPECT(json_integer_value(json_object_get(l, "i")) == next[th], "order in thread %d", th);
        next[th]++;
        assert_string_equal(str_member(l, "hrv"), "***");
    }
    EXPECT(strstr(text, "148.25") == NULL, "hrv leaked");
    free(text);
    json_decref(lines);
}

/*
 * PHIGATE_LOG_LEVEL is read once per process, so it is tested in a fresh one:
 * this test binary run again with --env-child, its stderr on a pipe.
 */
static char self_path[4096];

static int env_child(void)
{
    phg_log(PHG_LOG_INFO, "info-1", NULL);
    phg_log(PHG_LOG_WARN, "warn-1", "{\"dob\":\"1961-04-17\"}");
    setenv("PHIGATE_LOG_LEVEL", "debug", 1); /* read once: no effect now */
    phg_log(PHG_LOG_DEBUG, "debug-1", NULL);
    phg_log_set_level(PHG_LOG_DEBUG); /* an explicit level wins */
    phg_log(PHG_LOG_DEBUG, "debug-2", NULL);
    return 0;
}

static char *run_env_child(const char *value)
{
    int p[2];
    EXPECT(pipe(p) == 0, "pipe");
    pid_t pid = fork();
    EXPECT(pid >= 0, "fork");
    if (pid == 0) {
        dup2(p[1], STDERR_FILENO);
        close(p[0]);
        close(p[1]);
        if (value != NULL) {
            setenv("PHIGATE_LOG_LEVEL", value, 1);
        } else {
            unsetenv("PHIGATE_LOG_LEVEL");
        }
        execl(self_path, self_path, "--env-child", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    size_t cap = 65536, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        ssize_t r = read(p[0], buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        len += (size_t)r;
        EXPECT(len < cap - 1, "child wrote too much");
    }
    buf[len] = '\0';
    close(p[0]);
    int status;
    EXPECT(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "child failed: %s", buf);
    return buf;
}

static void test_log_env_level(void **state)
{
    (void)state;
    struct {
        const char *env;
        const char *want; /* the msgs written, in order */
    } cases[] = {
        {"warn", "warn-1 debug-2"},
        {"WARN", "warn-1 debug-2"},
        {"warning", "warn-1 debug-2"},
        {"error", "debug-2"},
        {"debug", "info-1 warn-1 debug-1 debug-2"},
        {"info", "info-1 warn-1 debug-2"},
        {"bogus", "info-1 warn-1 debug-2"}, /* unknown: the default, INFO */
        {"", "info-1 warn-1 debug-2"},
        {NULL, "info-1 warn-1 debug-2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = run_env_child(cases[i].env);
        json_t *lines = parse_lines(out, strlen(out));
        char got[256] = "";
        for (size_t j = 0; j < json_array_size(lines); j++) {
            if (j > 0) {
                strcat(got, " ");
            }
            strncat(got, str_member(json_array_get(lines, j), "msg"), 64);
        }
        EXPECT(strcmp(got, cases[i].want) == 0, "PHIGATE_LOG_LEVEL=%s: got \"%s\", want \"%s\"",
               cases[i].env ? cases[i].env : "(unset)", got, cases[i].want);
        expect_no_planted(out);
        json_decref(lines);
        free(out);
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--env-child") == 0) {
        return env_child();
    }
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n <= 0) {
        fprintf(stderr, "readlink /proc/self/exe failed\n");
        return 1;
    }
    self_path[n] = '\0';

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_context_set_get_clear),
        cmocka_unit_test(test_context_per_thread),
        cmocka_unit_test(test_default_list),
        cmocka_unit_test(test_is_masked_spellings),
        cmocka_unit_test(test_mask_every_name_everywhere),
        cmocka_unit_test(test_mask_keeps_other_members),
        cmocka_unit_test(test_mask_canonical_output),
        cmocka_unit_test(test_mask_duplicates),
        cmocka_unit_test(test_mask_errors),
        cmocka_unit_test(test_planted_phi_masked),
        cmocka_unit_test(test_log_line),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_log_bad_fields),
        cmocka_unit_test(test_log_truncated),
        cmocka_unit_test(test_log_threads),
        cmocka_unit_test(test_log_env_level),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
