/*
 * tests/unit/test_metrics.c: the Prometheus metrics (src/server/metrics.c):
 * every family present with HELP and TYPE, each line well formed, counters
 * under the right labels with the right values, histogram buckets cumulative
 * with +Inf equal to _count, exact totals from many threads, and the audit
 * writer's figures.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gw.h"
#include "testdb.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static const char *const classes[] = {"proxy", "phi", "admin", "health", "metrics", "other"};

static char *render(phg_audit *audit)
{
    size_t len = 0;
    char *text = gw_metrics_render(audit, NULL, &len);
    EXPECT(text != NULL, "render failed");
    EXPECT(strlen(text) == len, "length %zu, strlen %zu", len, strlen(text));
    EXPECT(len > 0 && text[len - 1] == '\n', "text must end with a newline");
    return text;
}

/* The value of the sample whose name{labels} part is exactly series; -1 if absent. */
static double sample(const char *text, const char *series)
{
    size_t sl = strlen(series);
    const char *p = text;
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        if (eol == NULL)
            eol = p + strlen(p);
        if ((size_t)(eol - p) > sl && strncmp(p, series, sl) == 0 && p[sl] == ' ')
            return strtod(p + sl + 1, NULL);
        p = *eol ? eol + 1 : eol;
    }
    return -1;
}

static int is_metric_char(char c, int first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

/* The base family name of a sample name (without _bucket/_sum/_count for
 * histograms), into out. */
static void family_of(const char *name, size_t len, char *out, size_t cap,
                      const char *hist_families)
{
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    size_t i;
    snprintf(out, cap, "%.*s", (int)len, name);
    for (i = 0; i < 3; i++) {
        size_t l = strlen(sfx[i]);
        if (len > l && strcmp(out + len - l, sfx[i]) == 0) {
            char base[128];
            snprintf(base, sizeof base, "%.*s", (int)(len - l), name);
            if (strstr(hist_families, base) != NULL) {
                snprintf(out, cap, "%s", base);
                return;
            }
        }
    }
}

/* Line syntax of format 0.0.4: comments "# HELP name text" / "# TYPE name
 * type", samples "name[{label="value",...}] value"; every sample's family
 * declared (HELP then TYPE) before it, each family once. */
static void check_lines(const char *text)
{
    char helped[8192] = " ", typed[8192] = " ", hist[2048] = " ", current[128] = "";
    const char *p = text;
    int line = 0;
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        size_t n;
        line++;
        EXPECT(eol != NULL, "line %d: no newline", line);
        n = (size_t)(eol - p);
        if (strncmp(p, "# HELP ", 7) == 0 || strncmp(p, "# TYPE ", 7) == 0) {
            const char *name = p + 7, *sp = memchr(name, ' ', (size_t)(eol - name));
            char key[140];
            EXPECT(sp != NULL && sp + 1 < eol, "line %d: comment without text", line);
            snprintf(key, sizeof key, " %.*s ", (int)(sp - name), name);
            if (p[2] == 'H') {
                EXPECT(strstr(helped, key) == NULL, "line %d: HELP twice", line);
                strncat(helped, key + 1, sizeof helped - strlen(helped) - 1);
            } else {
                const char *type = sp + 1;
                size_t tl = (size_t)(eol - type);
                EXPECT(strstr(helped, key) != NULL, "line %d: TYPE before HELP", line);
                EXPECT(strstr(typed, key) == NULL, "line %d: TYPE twice", line);
                EXPECT((tl == 7 && strncmp(type, "counter", 7) == 0) ||
                           (tl == 5 && strncmp(type, "gauge", 5) == 0) ||
                           (tl == 9 && strncmp(type, "histogram", 9) == 0),
                       "line %d: type %.*s", line, (int)tl, type);
                strncat(typed, key + 1, sizeof typed - strlen(typed) - 1);
                if (tl == 9)
                    strncat(hist, key + 1, sizeof hist - strlen(hist) - 1);
                snprintf(current, sizeof current, "%.*s", (int)(sp - name), name);
            }
        } else {
            const char *q = p, *end;
            char fam[128], key[140];
            EXPECT(n > 0 && p[0] != '#', "line %d: empty or unknown comment", line);
            while (q < eol && is_metric_char(*q, q == p))
                q++;
            EXPECT(q > p, "line %d: no metric name", line);
            family_of(p, (size_t)(q - p), fam, sizeof fam, hist);
            snprintf(key, sizeof key, " %s ", fam);
            EXPECT(strstr(typed, key) != NULL, "line %d: family %s not declared", line, fam);
            EXPECT(strcmp(fam, current) == 0, "line %d: sample of %s under %s", line, fam, current);
            if (*q == '{') {
                q++;
                for (;;) {
                    const char *ls = q;
                    while (q < eol && is_metric_char(*q, q == ls))
                        q++;
                    EXPECT(q > ls && q + 1 < eol && q[0] == '=' && q[1] == '"',
                           "line %d: bad label", line);
                    q += 2;
                    while (q < eol && *q != '"' && *q != '\\' && *q != '\n')
                        q++;
                    EXPECT(q < eol && *q == '"', "line %d: bad label value", line);
                    q++;
                    if (*q == ',') {
                        q++;
                        continue;
                    }
                    EXPECT(*q == '}', "line %d: labels not closed", line);
                    q++;
                    break;
                }
            }
            EXPECT(*q == ' ', "line %d: no space before the value", line);
            q++;
            EXPECT(q < eol, "line %d: no value", line);
            strtod(q, (char **)&end);
            EXPECT(end == eol, "line %d: bad value \"%.*s\"", line, (int)(eol - q), q);
        }
        p = eol + 1;
    }
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_families_and_labels(void **state)
{
    char *text;
    (void)state;
    gw_metrics_init();
    text = render(NULL);
    check_lines(text);
    /* empty: no request series, but every family and every fixed series */
    EXPECT(strstr(text, "# TYPE phigate_http_requests_total counter\n") != NULL, "requests TYPE");
    EXPECT(strstr(text, "phigate_http_requests_total{") == NULL, "zero series shown");
    EXPECT(strstr(text, "# TYPE phigate_http_request_duration_seconds histogram\n") != NULL,
           "histogram TYPE");
    EXPECT(sample(text, "phigate_http_request_duration_seconds_count{class=\"metrics\"}") == 0,
           "histogram of every class");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"revoked\"}") == 0, "auth zero");
    EXPECT(sample(text, "phigate_upstream_errors_total{kind=\"reset\"}") == 0, "upstream zero");
    EXPECT(sample(text, "phigate_connections") == 0, "connections");
    EXPECT(strstr(text, "phigate_audit_") == NULL, "audit without a writer");
    free(text);

    gw_metrics_request(GW_RC_PROXY, 200, 0.003);
    gw_metrics_request(GW_RC_PROXY, 200, 0.004);
    gw_metrics_request(GW_RC_PROXY, 200, 0.005);
    gw_metrics_request(GW_RC_PROXY, 502, 2.0);
    gw_metrics_request(GW_RC_PHI, 403, 0.0001);
    gw_metrics_request(GW_RC_ADMIN, 201, 0.02);
    gw_metrics_request(GW_RC_HEALTH, 200, 0);
    gw_metrics_request(GW_RC_OTHER, 999, 0.1); /* out of range: status 0 */
    gw_metrics_request(GW_RC_OTHER, 42, 0.1);
    gw_metrics_auth_fail(GW_AF_UNKNOWN);
    gw_metrics_auth_fail(GW_AF_UNKNOWN);
    gw_metrics_auth_fail(GW_AF_FORBIDDEN);
    gw_metrics_upstream_error(GW_UE_TIMEOUT);
    gw_metrics_connections(3);
    gw_metrics_connections(-1);
    text = render(NULL);
    check_lines(text);
    EXPECT(sample(text, "phigate_http_requests_total{class=\"proxy\",status=\"200\"}") == 3,
           "proxy 200");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"proxy\",status=\"502\"}") == 1,
           "proxy 502");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"phi\",status=\"403\"}") == 1,
           "phi 403");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"admin\",status=\"201\"}") == 1,
           "admin");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"health\",status=\"200\"}") == 1,
           "health");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"other\",status=\"0\"}") == 2,
           "status 0");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"proxy\",status=\"404\"}") == -1,
           "a zero series");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"metrics\",status=\"200\"}") == -1,
           "a zero series");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"unknown\"}") == 2, "unknown");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"forbidden\"}") == 1, "forbidden");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"missing\"}") == 0, "missing");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"malformed\"}") == 0, "malformed");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"expired\"}") == 0, "expired");
    EXPECT(sample(text, "phigate_upstream_errors_total{kind=\"timeout\"}") == 1, "timeout");
    EXPECT(sample(text, "phigate_upstream_errors_total{kind=\"connect\"}") == 0, "connect");
    EXPECT(sample(text, "phigate_connections") == 2, "connections");
    EXPECT(sample(text, "phigate_http_request_duration_seconds_count{class=\"proxy\"}") == 4,
           "proxy count");
    free(text);

    /* init resets everything */
    gw_metrics_init();
    text = render(NULL);
    EXPECT(strstr(text, "phigate_http_requests_total{") == NULL, "reset");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"unknown\"}") == 0, "reset auth");
    free(text);
}

static void test_histogram(void **state)
{
    static const char *const le[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                     "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                     "1",      "2.5",   "5",      "10",    "+Inf"};
    /* observations: 0.0004 0.0005 (on the bound: le is inclusive) 0.003 0.2 20 */
    static const double want[] = {2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5};
    char *text, series[160];
    size_t i, c;
    (void)state;
    gw_metrics_init();
    gw_metrics_request(GW_RC_ADMIN, 200, 0.0004);
    gw_metrics_request(GW_RC_ADMIN, 200, 0.0005);
    gw_metrics_request(GW_RC_ADMIN, 200, 0.003);
    gw_metrics_request(GW_RC_ADMIN, 500, 0.2);
    gw_metrics_request(GW_RC_ADMIN, 200, 20);
    gw_metrics_request(GW_RC_PROXY, 200, -1); /* clamped to 0 */
    text = render(NULL);
    check_lines(text);
    for (i = 0; i < sizeof le / sizeof le[0]; i++) {
        snprintf(series, sizeof series,
                 "phigate_http_request_duration_seconds_bucket{class=\"admin\",le=\"%s\"}", le[i]);
        EXPECT(sample(text, series) == want[i], "le=%s: %g, want %g", le[i], sample(text, series),
               want[i]);
    }
    EXPECT(sample(text, "phigate_http_request_duration_seconds_count{class=\"admin\"}") == 5,
           "count");
    {
        double sum = sample(text, "phigate_http_request_duration_seconds_sum{class=\"admin\"}");
        EXPECT(sum > 20.2038 && sum < 20.2040, "sum %f", sum);
    }
    EXPECT(sample(text,
                  "phigate_http_request_duration_seconds_bucket{class=\"proxy\",le=\"0.0005\"}") ==
               1,
           "negative clamped into the first bucket");
    /* every class: cumulative, +Inf == count */
    for (c = 0; c < sizeof classes / sizeof classes[0]; c++) {
        double prev = 0, count;
        for (i = 0; i < sizeof le / sizeof le[0]; i++) {
            double v;
            snprintf(series, sizeof series,
                     "phigate_http_request_duration_seconds_bucket{class=\"%s\",le=\"%s\"}",
                     classes[c], le[i]);
            v = sample(text, series);
            EXPECT(v >= prev, "%s: not cumulative", series);
            prev = v;
        }
        snprintf(series, sizeof series, "phigate_http_request_duration_seconds_count{class=\"%s\"}",
                 classes[c]);
        count = sample(text, series);
        EXPECT(count == prev, "%s: +Inf %g != count %g", classes[c], prev, count);
        snprintf(series, sizeof series, "phigate_http_request_duration_seconds_sum{class=\"%s\"}",
                 classes[c]);
        EXPECT(sample(text, series) >= 0, "%s: no sum", classes[c]);
    }
    free(text);
}

#define THREADS 8
#define PER_THREAD 50000

static void *hammer(void *arg)
{
    int t = (int)(intptr_t)arg, i;
    for (i = 0; i < PER_THREAD; i++) {
        gw_metrics_request((gw_route_class)(i % 2 == 0 ? GW_RC_PROXY : GW_RC_PHI),
                           i % 3 == 0 ? 404 : 200, 0.001 * (double)(t + 1));
        gw_metrics_auth_fail(GW_AF_MISSING);
        gw_metrics_upstream_error(GW_UE_RESET);
        gw_metrics_connections(1);
        if (i % 2 == 0)
            gw_metrics_connections(-1);
    }
    return NULL;
}

static void test_threads_exact(void **state)
{
    pthread_t th[THREADS];
    char *text;
    int t;
    double p200 = 0, p404 = 0, f200 = 0, f404 = 0;
    int i;
    (void)state;
    gw_metrics_init();
    for (t = 0; t < THREADS; t++)
        EXPECT(pthread_create(&th[t], NULL, hammer, (void *)(intptr_t)t) == 0, "pthread_create");
    for (t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    for (i = 0; i < PER_THREAD; i++) {
        int is404 = i % 3 == 0;
        if (i % 2 == 0)
            *(is404 ? &p404 : &p200) += THREADS;
        else
            *(is404 ? &f404 : &f200) += THREADS;
    }
    text = render(NULL);
    check_lines(text);
    EXPECT(sample(text, "phigate_http_requests_total{class=\"proxy\",status=\"200\"}") == p200,
           "proxy 200");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"proxy\",status=\"404\"}") == p404,
           "proxy 404");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"phi\",status=\"200\"}") == f200,
           "phi 200");
    EXPECT(sample(text, "phigate_http_requests_total{class=\"phi\",status=\"404\"}") == f404,
           "phi 404");
    EXPECT(sample(text, "phigate_http_request_duration_seconds_count{class=\"proxy\"}") ==
               p200 + p404,
           "proxy count");
    EXPECT(
        sample(text, "phigate_http_request_duration_seconds_bucket{class=\"phi\",le=\"+Inf\"}") ==
            f200 + f404,
        "phi +Inf");
    EXPECT(sample(text, "phigate_auth_failures_total{reason=\"missing\"}") ==
               (double)THREADS * PER_THREAD,
           "auth");
    EXPECT(sample(text, "phigate_upstream_errors_total{kind=\"reset\"}") ==
               (double)THREADS * PER_THREAD,
           "upstream");
    EXPECT(sample(text, "phigate_connections") == (double)THREADS * PER_THREAD / 2, "gauge");
    free(text);
}

static void test_audit_stats(void **state)
{
    testdb db;
    phg_store *st = NULL;
    phg_audit *a = NULL;
    phg_audit_options o;
    uint8_t key[32];
    char err[256], id[PHG_ULID_LEN + 1];
    char *text;
    phg_audit_event ev;
    int i;
    (void)state;

    tdb_create(&db, TDB_SQLITE, "metrics");
    EXPECT(tdb_open_store(&db, 0, &st, err, sizeof err) == PHG_OK, "store: %s", err);
    EXPECT(phg_store_migrate(st, NULL, NULL, err, sizeof err) == PHG_OK, "migrate: %s", err);
    memset(key, 7, sizeof key);
    phg_audit_options_init(&o);
    o.chain = "metrics-test";
    EXPECT(phg_audit_open(st, &o, key, &a) == PHG_OK, "audit open");
    memset(&ev, 0, sizeof ev);
    ev.action = "test.event";
    ev.outcome = "success";
    for (i = 0; i < 3; i++)
        EXPECT(phg_audit_append(a, &ev, id) == PHG_OK, "append");

    gw_metrics_init();
    text = render(a);
    check_lines(text);
    EXPECT(sample(text, "phigate_audit_records_total") >= 3, "records %g",
           sample(text, "phigate_audit_records_total"));
    EXPECT(sample(text, "phigate_audit_failures_total") == 0, "failures");
    EXPECT(sample(text, "phigate_audit_commits_total") >= 1, "commits");
    EXPECT(sample(text, "phigate_audit_queue_depth") >= 0, "queue depth");
    EXPECT(sample(text, "phigate_audit_last_commit_seconds") >= 0, "last commit");
    EXPECT(sample(text, "phigate_audit_commit_seconds_total") >= 0, "commit seconds");
    EXPECT(strstr(text, "# TYPE phigate_audit_queue_depth gauge\n") != NULL, "gauge");
    EXPECT(strstr(text, "# TYPE phigate_audit_records_total counter\n") != NULL, "counter");
    free(text);
    phg_audit_close(a);
    phg_store_close(st);
    tdb_drop(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_families_and_labels),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_threads_exact),
        cmocka_unit_test(test_audit_stats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
