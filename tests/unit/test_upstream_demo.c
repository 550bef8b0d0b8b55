/*
 * tests/unit/test_upstream_demo.c: the sample upstream of `phigate demo`
 * (src/server/upstream_demo.c), spoken to over real loopback sockets with a
 * small blocking HTTP/1.1 client: readings stored per X-Phigate-User-Id and
 * served back, whoami echoing exactly the phigate headers, JSON errors with
 * Content-Type application/json, the limits, and clean stops (ASan checks
 * that nothing leaks).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "gw.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

typedef struct reply {
    int status;
    char content_type[128];
    json_t *body; /* NULL when the body is not JSON */
    char *raw;
} reply;

static void reply_free(reply *r)
{
    json_decref(r->body);
    free(r->raw);
    memset(r, 0, sizeof *r);
}

static int connect_to(int port)
{
    struct sockaddr_in sa;
    struct timeval tv = {10, 0}; /* a hung server fails the test instead of hanging it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    EXPECT(fd >= 0, "socket");
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect to %d", port);
    return fd;
}

/* Stops quietly if the server closes early: the reply says why. */
static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* One request with Connection: close; the whole reply read to EOF.
 * extra_headers: "Name: value\r\n" lines or "". */
static reply http(int port, const char *method, const char *path, const char *extra_headers,
                  const char *body, size_t body_len)
{
    reply r;
    char head[4096], *p, *hdr_end;
    size_t cap = 65536, len = 0;
    int fd = connect_to(port), n;

    memset(&r, 0, sizeof r);
    n = snprintf(head, sizeof head,
                 "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s"
                 "Content-Length: %zu\r\n\r\n",
                 method, path, extra_headers, body != NULL ? body_len : 0);
    EXPECT(n > 0 && (size_t)n < sizeof head, "head too long");
    send_all(fd, head, (size_t)n);
    if (body != NULL && body_len > 0)
        send_all(fd, body, body_len);
    r.raw = malloc(cap + 1);
    EXPECT(r.raw != NULL, "malloc");
    for (;;) {
        ssize_t got;
        if (len == cap) {
            cap *= 2;
            r.raw = realloc(r.raw, cap + 1);
            EXPECT(r.raw != NULL, "realloc");
        }
        got = recv(fd, r.raw + len, cap - len, 0);
        EXPECT(got >= 0, "recv");
        if (got == 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    r.raw[len] = '\0';
    EXPECT(sscanf(r.raw, "HTTP/1.1 %d", &r.status) == 1, "no status line: %.80s", r.raw);
    hdr_end = strstr(r.raw, "\r\n\r\n");
    EXPECT(hdr_end != NULL, "no end of head");
    for (p = strstr(r.raw, "\r\n") + 2; p < hdr_end; p = strstr(p, "\r\n") + 2) {
        if (strncasecmp(p, "Content-Type:", 13) == 0) {
            const char *v = p + 13;
            while (*v == ' ')
                v++;
            snprintf(r.content_type, sizeof r.content_type, "%.*s", (int)(strstr(v, "\r\n") - v),
                     v);
        }
    }
    r.body = json_loads(hdr_end + 4, 0, NULL);
    return r;
}

static reply post_readings(int port, const char *user, const char *json)
{
    char hdr[512];
    if (user != NULL)
        snprintf(hdr, sizeof hdr, "Content-Type: application/json\r\nX-Phigate-User-Id: %s\r\n",
                 user);
    else
        snprintf(hdr, sizeof hdr, "Content-Type: application/json\r\n");
    return http(port, "POST", "/v1/readings", hdr, json, strlen(json));
}

static reply get_readings(int port, const char *user)
{
    char hdr[512];
    snprintf(hdr, sizeof hdr, "X-Phigate-User-Id: %s\r\n", user);
    return http(port, "GET", "/v1/readings", hdr, NULL, 0);
}

static void expect_json_error(reply *r, int status, const char *code)
{
    EXPECT(r->status == status, "status %d, want %d: %s", r->status, status, r->raw);
    EXPECT(strcmp(r->content_type, "application/json") == 0, "content type \"%s\"",
           r->content_type);
    EXPECT(r->body != NULL, "body not JSON: %s", r->raw);
    EXPECT(strcmp(json_string_value(json_object_get(json_object_get(r->body, "error"), "code")),
                  code) == 0,
           "code: %s", r->raw);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_readings_roundtrip(void **state)
{
    gw_demo_upstream *u = NULL;
    int port = 0;
    reply r;
    json_t *readings;
    (void)state;

    EXPECT(gw_demo_upstream_start(0, &port, &u) == 0 && u != NULL, "start");
    EXPECT(port > 0 && port < 65536, "port %d", port);

    r = post_readings(port, "u1", "{\"type\":\"hr\",\"bpm\":61}");
    EXPECT(r.status == 201, "post object: %s", r.raw);
    EXPECT(strcmp(r.content_type, "application/json") == 0, "content type %s", r.content_type);
    EXPECT(json_integer_value(json_object_get(r.body, "stored")) == 1, "stored: %s", r.raw);
    reply_free(&r);
    r = post_readings(port, "u1",
                      "[{\"type\":\"hrv\",\"ms\":48},{\"type\":\"sleep\",\"min\":432}]");
    EXPECT(r.status == 201 && json_integer_value(json_object_get(r.body, "stored")) == 2,
           "post array: %s", r.raw);
    reply_free(&r);
    r = post_readings(port, "u2", "{\"type\":\"hr\",\"bpm\":90}");
    EXPECT(r.status == 201, "u2");
    reply_free(&r);

    r = get_readings(port, "u1");
    EXPECT(r.status == 200 && strcmp(r.content_type, "application/json") == 0, "get: %s", r.raw);
    EXPECT(strcmp(json_string_value(json_object_get(r.body, "user_id")), "u1") == 0, "user_id");
    readings = json_object_get(r.body, "readings");
    EXPECT(json_array_size(readings) == 3, "3 readings: %s", r.raw);
    EXPECT(json_integer_value(json_object_get(json_array_get(readings, 0), "bpm")) == 61, "order");
    EXPECT(json_integer_value(json_object_get(json_array_get(readings, 2), "min")) == 432, "order");
    reply_free(&r);
    r = get_readings(port, "u2");
    EXPECT(json_array_size(json_object_get(r.body, "readings")) == 1, "u2 sees only its own");
    reply_free(&r);
    r = get_readings(port, "nobody");
    EXPECT(r.status == 200 && json_array_size(json_object_get(r.body, "readings")) == 0 &&
               json_is_array(json_object_get(r.body, "readings")),
           "unknown user: empty list");
    reply_free(&r);
    /* an empty array stores nothing */
    r = post_readings(port, "u3", "[]");
    EXPECT(r.status == 201 && json_integer_value(json_object_get(r.body, "stored")) == 0, "[]");
    reply_free(&r);

    gw_demo_upstream_stop(u);
}

static void test_errors(void **state)
{
    gw_demo_upstream *u = NULL;
    int port = 0;
    reply r;
    (void)state;
    EXPECT(gw_demo_upstream_start(0, &port, &u) == 0, "start");

    r = post_readings(port, NULL, "{\"bpm\":1}");
    expect_json_error(&r, 400, "missing_user");
    reply_free(&r);
    r = http(port, "GET", "/v1/readings", "", NULL, 0);
    expect_json_error(&r, 400, "missing_user");
    reply_free(&r);
    r = post_readings(port, "u1", "{\"bpm\":");
    expect_json_error(&r, 400, "invalid_json");
    reply_free(&r);
    r = post_readings(port, "u1", "");
    expect_json_error(&r, 400, "invalid_json");
    reply_free(&r);
    r = post_readings(port, "u1", "[{\"bpm\":1},2]");
    expect_json_error(&r, 400, "invalid_reading");
    reply_free(&r);
    r = post_readings(port, "u1", "\"hr\"");
    expect_json_error(&r, 400, "invalid_reading");
    reply_free(&r);
    /* nothing of the refused posts was stored */
    r = get_readings(port, "u1");
    EXPECT(json_array_size(json_object_get(r.body, "readings")) == 0, "nothing stored: %s", r.raw);
    reply_free(&r);
    r = http(port, "GET", "/nope", "", NULL, 0);
    expect_json_error(&r, 404, "not_found");
    reply_free(&r);
    r = http(port, "GET", "/v1/readings/1", "X-Phigate-User-Id: u1\r\n", NULL, 0);
    expect_json_error(&r, 404, "not_found");
    reply_free(&r);
    r = http(port, "PUT", "/v1/readings", "X-Phigate-User-Id: u1\r\n", "{}", 2);
    expect_json_error(&r, 405, "method_not_allowed");
    reply_free(&r);
    r = http(port, "POST", "/v1/whoami", "", "{}", 2);
    expect_json_error(&r, 405, "method_not_allowed");
    reply_free(&r);
    /* over 1 MiB: refused (by evhttp itself) */
    {
        size_t n = (1u << 20) + 100, i;
        char *big = malloc(n + 1);
        EXPECT(big != NULL, "malloc");
        big[0] = '[';
        for (i = 1; i < n; i++)
            big[i] = ' ';
        big[n - 1] = ']';
        big[n] = '\0';
        r = http(port, "POST", "/v1/readings", "X-Phigate-User-Id: u1\r\n", big, n);
        EXPECT(r.status == 413, "big body: %d", r.status);
        reply_free(&r);
        free(big);
    }
    gw_demo_upstream_stop(u);
}

static void test_whoami(void **state)
{
    gw_demo_upstream *u = NULL;
    int port = 0;
    reply r;
    json_t *h;
    (void)state;
    EXPECT(gw_demo_upstream_start(0, &port, &u) == 0, "start");
    r = http(port, "GET", "/v1/whoami",
             "X-Phigate-User-Id: 42\r\nX-Phigate-Key-Id: ak_abc\r\nX-Phigate-Role: user\r\n"
             "X-Request-Id: 01JABCDEFGHJKMNPQRSTVWXYZ0\r\nAuthorization: Bearer phg_secret\r\n"
             "X-Other: no\r\n",
             NULL, 0);
    EXPECT(r.status == 200 && strcmp(r.content_type, "application/json") == 0, "whoami: %s", r.raw);
    EXPECT(strcmp(json_string_value(json_object_get(r.body, "path")), "/v1/whoami") == 0, "path");
    h = json_object_get(r.body, "headers");
    EXPECT(json_object_size(h) == 4, "exactly the phigate headers: %s", r.raw);
    EXPECT(strcmp(json_string_value(json_object_get(h, "x-phigate-user-id")), "42") == 0, "user");
    EXPECT(strcmp(json_string_value(json_object_get(h, "x-phigate-key-id")), "ak_abc") == 0, "key");
    EXPECT(strcmp(json_string_value(json_object_get(h, "x-phigate-role")), "user") == 0, "role");
    EXPECT(strcmp(json_string_value(json_object_get(h, "x-request-id")),
                  "01JABCDEFGHJKMNPQRSTVWXYZ0") == 0,
           "request id");
    EXPECT(strstr(r.raw, "phg_secret") == NULL, "Authorization echoed");
    reply_free(&r);
    /* repeated headers are joined, so a duplicate cannot hide */
    r = http(port, "GET", "/v1/whoami", "X-Phigate-User-Id: 1\r\nX-Phigate-User-Id: 2\r\n", NULL,
             0);
    EXPECT(strcmp(json_string_value(
                      json_object_get(json_object_get(r.body, "headers"), "x-phigate-user-id")),
                  "1, 2") == 0,
           "joined: %s", r.raw);
    reply_free(&r);
    gw_demo_upstream_stop(u);
}

static void test_limits(void **state)
{
    gw_demo_upstream *u = NULL;
    int port = 0, i;
    reply r;
    char user[32];
    size_t n = 10000, k;
    char *arr;
    (void)state;
    EXPECT(gw_demo_upstream_start(0, &port, &u) == 0, "start");

    /* 10,000 readings per user */
    arr = malloc(n * 8 + 2);
    EXPECT(arr != NULL, "malloc");
    arr[0] = '[';
    for (k = 0; k < n; k++)
        memcpy(arr + 1 + k * 8, k + 1 < n ? "{\"a\":1}," : "{\"a\":1}]", 8);
    arr[1 + n * 8] = '\0';
    r = post_readings(port, "full", arr);
    EXPECT(r.status == 201 && json_integer_value(json_object_get(r.body, "stored")) == 10000,
           "10000: %d", r.status);
    reply_free(&r);
    free(arr);
    r = post_readings(port, "full", "{\"a\":2}");
    expect_json_error(&r, 507, "storage_full");
    reply_free(&r);
    r = get_readings(port, "full");
    EXPECT(json_array_size(json_object_get(r.body, "readings")) == 10000, "kept 10000");
    reply_free(&r);

    /* 1,000 users ("full" is one) */
    for (i = 1; i < 1000; i++) {
        snprintf(user, sizeof user, "user-%d", i);
        r = post_readings(port, user, "{}");
        EXPECT(r.status == 201, "user %d: %d", i, r.status);
        reply_free(&r);
    }
    r = post_readings(port, "one-too-many", "{}");
    expect_json_error(&r, 507, "storage_full");
    reply_free(&r);
    r = post_readings(port, "user-999", "{}");
    EXPECT(r.status == 201, "an existing user still stores");
    reply_free(&r);
    gw_demo_upstream_stop(u);
}

static void test_start_stop(void **state)
{
    gw_demo_upstream *u = NULL, *v = NULL;
    int port = 0, port2 = 0, i;
    (void)state;
    gw_demo_upstream_stop(NULL);
    /* stop right after start, before any request, several times */
    for (i = 0; i < 5; i++) {
        EXPECT(gw_demo_upstream_start(0, &port, &u) == 0, "start %d", i);
        gw_demo_upstream_stop(u);
    }
    EXPECT(gw_demo_upstream_start(0, &port, &u) == 0, "start");
    /* the port is taken */
    EXPECT(gw_demo_upstream_start(port, &port2, &v) == -1 && v == NULL, "second bind succeeded");
    EXPECT(gw_demo_upstream_start(70000, &port2, &v) == -1, "bad port");
    /* a connection left open does not block the stop */
    {
        int fd = connect_to(port);
        gw_demo_upstream_stop(u);
        close(fd);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_readings_roundtrip),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_whoami),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_start_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
