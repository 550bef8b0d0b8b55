/*
 * httpc.h: a small blocking HTTP/1.1 client for phigate's own outbound calls
 * (webhook delivery, fetching Google Health's public keyset). Internal to
 * libphigate. http:// and https:// (OpenSSL 3, certificate and host name
 * verified against the system store or ca_file); one kept-alive connection
 * per client, reused while the next request goes to the same scheme, host and
 * port. A client is used by one thread at a time.
 *
 * Limits: URL <= 2048 bytes; response head <= 16 KiB; response body <=
 * max_response (Content-Length or chunked; a body that would exceed it fails
 * with PHG_ERR_TOO_LARGE); one deadline (timeout_ms) covers connect, TLS,
 * send and receive. Redirects are not followed (a 3xx is returned as is).
 */
#ifndef PHG_HTTPC_H
#define PHG_HTTPC_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"

#define PHG_HTTPC_URL_MAX 2048
#define PHG_HTTPC_ERR_MAX 256

typedef struct phg_httpc phg_httpc;

typedef struct phg_httpc_request {
    const char *method;             /* "GET", "POST", "HEAD", ... */
    const char *url;                /* http://host[:port]/path?query or https:// */
    const char *const *headers;     /* n_headers "Name: value" lines, no CRLF; Host,
                                     * Content-Length and Connection are added */
    size_t n_headers;
    const uint8_t *body;
    size_t body_len;
    int timeout_ms;                 /* whole exchange; <= 0: 10000 */
    size_t max_response;            /* body cap; 0: 1 MiB */
} phg_httpc_request;

typedef struct phg_httpc_response {
    int status;                     /* 100..599 */
    char content_type[128];         /* "" if none */
    uint8_t *body;                  /* malloc'd, NUL-terminated after body_len; NULL if empty */
    size_t body_len;
} phg_httpc_response;

/* ca_file: NULL for the system's default store. */
phg_status phg_httpc_new(const char *ca_file, phg_httpc **out);
void phg_httpc_free(phg_httpc *c);

/*
 * One exchange. PHG_OK when a complete response was read (any status);
 * PHG_ERR_INVALID for a bad URL or request; PHG_ERR_UNAVAILABLE when the
 * server cannot be reached, refused, timed out, closed early, or failed TLS
 * verification; PHG_ERR_FORMAT for a response that is not HTTP/1.x;
 * PHG_ERR_TOO_LARGE. err gets a sentence for operators (never a header value
 * or body). *resp is zeroed first; free it with phg_httpc_response_free.
 */
phg_status phg_httpc_do(phg_httpc *c, const phg_httpc_request *req, phg_httpc_response *resp,
                        char *err, size_t err_len);

void phg_httpc_response_free(phg_httpc_response *resp);

#endif /* PHG_HTTPC_H */
