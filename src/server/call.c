/*
 * call.c: helpers for the handlers of the APIs phigate answers itself.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gw.h"

void gw_call_fail(gw_call *call, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    call->status = status;
    snprintf(call->err_code, sizeof call->err_code, "%s", code);
    va_start(ap, fmt);
    vsnprintf(call->err_msg, sizeof call->err_msg, fmt, ap);
    va_end(ap);
    if (call->result != NULL) {
        json_decref(call->result);
        call->result = NULL;
    }
}

static int is_json_type(const char *ct)
{
    static const char want[] = "application/json";
    size_t n = sizeof want - 1;
    if (ct == NULL)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    if (strncasecmp(ct, want, n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

json_t *gw_call_json_body(gw_call *call)
{
    json_error_t jerr;
    json_t *v;
    if (!is_json_type(call->content_type)) {
        gw_call_fail(call, 415, "unsupported_media_type",
                     "the body must be JSON (Content-Type: application/json)");
        return NULL;
    }
    if (call->body_len == 0) {
        gw_call_fail(call, 400, "invalid_json", "the body is empty; a JSON object is expected");
        return NULL;
    }
    v = json_loadb(call->body, call->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL) {
        /* jerr.text may quote the input: give the position only. */
        gw_call_fail(call, 400, "invalid_json", "the body is not valid JSON (at byte %d)",
                     jerr.position);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        gw_call_fail(call, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    return v;
}

int gw_hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int gw_query_param(const char *q, const char *name, char *buf, size_t len, int *count)
{
    const char *p;
    size_t nlen = strlen(name);
    int found = 0, rc = 0;
    if (count != NULL)
        *count = 0;
    for (p = q; p != NULL && *p != '\0';) {
        const char *end = strchr(p, '&');
        const char *eq;
        size_t seg = end ? (size_t)(end - p) : strlen(p);
        eq = memchr(p, '=', seg);
        if ((eq ? (size_t)(eq - p) : seg) == nlen && memcmp(p, name, nlen) == 0 && found++ == 0) {
            /* the first one is decoded; later ones only counted */
            const char *v = eq ? eq + 1 : p + seg;
            const char *vend = p + seg;
            size_t o = 0;
            rc = 1;
            while (v < vend) {
                int c = (unsigned char)*v;
                if (c == '%') {
                    int h, l;
                    if (vend - v < 3 || (h = gw_hex_digit(v[1])) < 0 ||
                        (l = gw_hex_digit(v[2])) < 0) {
                        rc = -1;
                        break;
                    }
                    c = h * 16 + l;
                    v += 3;
                } else {
                    if (c == '+')
                        c = ' ';
                    v++;
                }
                if (c == 0) {
                    rc = -3;
                    break;
                }
                if (o + 1 >= len) {
                    rc = -2;
                    break;
                }
                buf[o++] = (char)c;
            }
            buf[o] = '\0';
            if (rc < 0)
                break;
        }
        if (end == NULL)
            break;
        p = end + 1;
    }
    if (count != NULL)
        *count = found;
    return rc;
}

int gw_call_query(gw_call *call, const char *name, char *buf, size_t len)
{
    int rc = call->query != NULL ? gw_query_param(call->query, name, buf, len, NULL) : 0;
    if (rc == -1)
        gw_call_fail(call, 400, "invalid_parameter", "query parameter %s: bad percent-encoding",
                     name);
    else if (rc == -3)
        gw_call_fail(call, 400, "invalid_parameter", "query parameter %s: contains NUL", name);
    else if (rc == -2)
        gw_call_fail(call, 400, "invalid_parameter", "query parameter %s: too long", name);
    return rc < 0 ? -1 : rc;
}

int64_t gw_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t gw_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
