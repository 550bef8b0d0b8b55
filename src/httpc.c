/*
 * httpc.c: a small blocking HTTP/1.1 client (see httpc.h) for phigate's own
 * outbound calls: webhook delivery and fetching Google Health's keyset.
 *
 * Not here: redirects, proxies, cookies, compression, HTTP/2, pipelining,
 * request bodies streamed from elsewhere. One connection per client, kept
 * alive between requests to the same scheme, host and port.
 *
 * What must stay true:
 *  - every wait is a poll() bounded by the request's one deadline (name
 *    resolution excepted: getaddrinfo cannot be bounded without a thread);
 *  - every read is bounded: the response head by HEAD_MAX, chunk-size and
 *    trailer lines by the same, the body by max_response;
 *  - a response is framed exactly one way (Content-Length, chunked, or
 *    until close; never both of the first two) and a connection is reused
 *    only when its last response ended exactly at its framed end;
 *  - no write raises SIGPIPE: plain sockets use send(MSG_NOSIGNAL) and TLS
 *    goes through a BIO of our own that does the same;
 *  - err never holds a header value, a path, a query or a body (they can
 *    hold tokens): only the host, the port and what went wrong.
 */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "httpc.h"

#define HEAD_MAX 16384           /* bytes of a response head (status line and headers) */
#define RBUF_SIZE (2 * HEAD_MAX) /* read buffer: a whole HEAD_MAX line and its newline fit */
#define HOST_MAX 255
#define REQ_HEADERS_MAX 100      /* caller's header lines */
#define REQ_HEADER_LINE_MAX 8192 /* bytes of one caller header line */
#define METHOD_MAX 16
#define INTERIM_MAX 8 /* 1xx responses skipped before the real one */
#define TIMEOUT_DEFAULT_MS 10000
#define MAX_RESPONSE_DEFAULT (1u << 20)
#define CL_DIGITS_MAX 18

typedef struct url_parts {
    int tls;
    char host[HOST_MAX + 1]; /* without brackets */
    int ipv6;                /* host is an IPv6 literal */
    int is_ip;               /* an IPv4 or IPv6 literal: no SNI, IP SAN check */
    unsigned port;
    const char *path; /* into the URL: "/..." or "?..."; "" means "/" */
    size_t path_len;
} url_parts;

struct phg_httpc {
    SSL_CTX *tls_ctx;
    /* the kept connection, if fd >= 0 */
    int fd;
    SSL *ssl;
    int conn_tls;
    char conn_host[HOST_MAX + 1];
    unsigned conn_port;
    /* the current exchange */
    int64_t deadline_ms;
    int got_response_byte; /* a byte of a response came on this connection for this request */
    uint8_t rbuf[RBUF_SIZE];
    size_t rpos, rlen;
    char line[HEAD_MAX + 1];
};

/* What a low-level read or write ended with. */
typedef enum io_result { IO_OK, IO_EOF, IO_TIMEOUT, IO_ERROR } io_result;

static void seterr(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || err_len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ascii_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int ieq(const char *a, size_t a_len, const char *lower)
{
    size_t i, n = strlen(lower);
    if (a_len != n)
        return 0;
    for (i = 0; i < n; i++)
        if (ascii_lower((unsigned char)a[i]) != lower[i])
            return 0;
    return 1;
}

/* RFC 9110 tchar. */
static int tchar(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* ---- a socket BIO that never raises SIGPIPE ---------------------------------------- */

static pthread_once_t bio_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *nosig_method;

static int nosig_write(BIO *b, const char *buf, int len)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            BIO_set_retry_write(b);
        return -1;
    }
    return (int)n;
}

static int nosig_read(BIO *b, char *buf, int len)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    n = recv(fd, buf, (size_t)len, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            BIO_set_retry_read(b);
        return -1;
    }
    return (int)n;
}

static long nosig_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int nosig_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_method_make(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "phg nosigpipe");
    if (m == NULL)
        return;
    if (!BIO_meth_set_write(m, nosig_write) || !BIO_meth_set_read(m, nosig_read) ||
        !BIO_meth_set_ctrl(m, nosig_ctrl) || !BIO_meth_set_create(m, nosig_create)) {
        BIO_meth_free(m);
        return;
    }
    nosig_method = m;
}

static BIO *nosig_bio(int fd)
{
    BIO *b;
    pthread_once(&bio_once, bio_method_make);
    if (nosig_method == NULL)
        return NULL;
    b = BIO_new(nosig_method);
    if (b != NULL)
        BIO_set_data(b, (void *)(intptr_t)fd);
    return b;
}

/* ---- client ------------------------------------------------------------------------- */

phg_status phg_httpc_new(const char *ca_file, phg_httpc **out)
{
    phg_status rc = PHG_ERR_NOMEM;
    phg_httpc *c;
    assert(out != NULL);
    *out = NULL;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return PHG_ERR_NOMEM;
    c->fd = -1;
    c->tls_ctx = SSL_CTX_new(TLS_client_method());
    if (c->tls_ctx == NULL)
        goto out;
    rc = PHG_ERR_INTERNAL;
    if (!SSL_CTX_set_min_proto_version(c->tls_ctx, TLS1_2_VERSION))
        goto out;
    SSL_CTX_set_verify(c->tls_ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(c->tls_ctx, SSL_MODE_AUTO_RETRY);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(c->tls_ctx, ca_file, NULL) != 1) {
            rc = PHG_ERR_IO;
            goto out;
        }
    } else if (SSL_CTX_set_default_verify_paths(c->tls_ctx) != 1) {
        goto out;
    }
    *out = c;
    c = NULL;
    rc = PHG_OK;
out:
    ERR_clear_error();
    phg_httpc_free(c);
    return rc;
}

static void conn_close(phg_httpc *c)
{
    if (c->ssl != NULL) {
        SSL_free(c->ssl); /* no close_notify: the socket is about to go anyway */
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->conn_host[0] = '\0';
    c->rpos = c->rlen = 0;
    ERR_clear_error();
}

void phg_httpc_free(phg_httpc *c)
{
    if (c == NULL)
        return;
    conn_close(c);
    SSL_CTX_free(c->tls_ctx);
    free(c);
}

void phg_httpc_response_free(phg_httpc_response *resp)
{
    if (resp == NULL)
        return;
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}

/* ---- URL ---------------------------------------------------------------------------- */

static int host_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

/*
 * scheme "://" host [":" port] [path-abempty] ["?" query]. Refused: anything
 * but http and https, userinfo ('@' before the path), a fragment, bytes
 * outside 0x21..0x7e, an empty host or port, a port outside 1..65535, an
 * IPv6 literal that inet_pton refuses (zone ids included).
 */
static phg_status url_parse(const char *url, url_parts *u, char *err, size_t err_len)
{
    size_t len = strnlen(url, PHG_HTTPC_URL_MAX + 1), i, host_end, auth_end;
    const char *p;

    memset(u, 0, sizeof *u);
    if (len > PHG_HTTPC_URL_MAX) {
        seterr(err, err_len, "URL longer than %d bytes", PHG_HTTPC_URL_MAX);
        return PHG_ERR_INVALID;
    }
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)url[i];
        if (ch < 0x21 || ch > 0x7e) {
            seterr(err, err_len, "URL holds a space, control or non-ASCII byte");
            return PHG_ERR_INVALID;
        }
        if (ch == '#') {
            seterr(err, err_len, "URL has a fragment ('#')");
            return PHG_ERR_INVALID;
        }
    }
    if (len >= 7 && ieq(url, 7, "http://")) {
        u->tls = 0;
        p = url + 7;
    } else if (len >= 8 && ieq(url, 8, "https://")) {
        u->tls = 1;
        p = url + 8;
    } else {
        seterr(err, err_len, "URL must start with http:// or https://");
        return PHG_ERR_INVALID;
    }
    len -= (size_t)(p - url);
    for (auth_end = 0; auth_end < len && p[auth_end] != '/' && p[auth_end] != '?'; auth_end++) {
        if (p[auth_end] == '@') {
            seterr(err, err_len, "URL has user information ('@'), which is not allowed");
            return PHG_ERR_INVALID;
        }
    }
    if (auth_end > 0 && p[0] == '[') {
        char tmp[64];
        struct in6_addr a6;
        for (host_end = 1; host_end < auth_end && p[host_end] != ']'; host_end++)
            ;
        if (host_end == auth_end || host_end - 1 >= sizeof tmp || host_end == 1) {
            seterr(err, err_len, "URL has a bad IPv6 literal");
            return PHG_ERR_INVALID;
        }
        memcpy(tmp, p + 1, host_end - 1);
        tmp[host_end - 1] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1) {
            seterr(err, err_len, "URL has a bad IPv6 literal");
            return PHG_ERR_INVALID;
        }
        memcpy(u->host, tmp, host_end);
        u->ipv6 = u->is_ip = 1;
        host_end++; /* past ']' */
        i = host_end;
    } else {
        struct in_addr a4;
        for (host_end = 0; host_end < auth_end && p[host_end] != ':'; host_end++) {
            if (!host_char((unsigned char)p[host_end])) {
                seterr(err, err_len, "URL host holds a character outside A-Z a-z 0-9 - . _");
                return PHG_ERR_INVALID;
            }
        }
        if (host_end == 0 || host_end > HOST_MAX) {
            seterr(err, err_len, "URL host is empty or longer than %d bytes", HOST_MAX);
            return PHG_ERR_INVALID;
        }
        memcpy(u->host, p, host_end);
        u->host[host_end] = '\0';
        u->is_ip = inet_pton(AF_INET, u->host, &a4) == 1;
        i = host_end;
    }
    u->port = u->tls ? 443 : 80;
    if (i < auth_end) {
        unsigned v = 0;
        size_t d = 0;
        if (p[i] != ':') {
            seterr(err, err_len, "URL has junk after the host");
            return PHG_ERR_INVALID;
        }
        for (i++; i < auth_end; i++, d++) {
            if (p[i] < '0' || p[i] > '9' || d >= 5) {
                seterr(err, err_len, "URL port must be 1 to 65535");
                return PHG_ERR_INVALID;
            }
            v = v * 10 + (unsigned)(p[i] - '0');
        }
        if (d == 0 || v == 0 || v > 65535) {
            seterr(err, err_len, "URL port must be 1 to 65535");
            return PHG_ERR_INVALID;
        }
        u->port = v;
    }
    u->path = p + auth_end;
    u->path_len = len - auth_end;
    return PHG_OK;
}

/* ---- waiting and raw I/O -------------------------------------------------------------- */

/* Wait for events on the kept socket until the deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(phg_httpc *c, short events)
{
    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = events, .revents = 0};
        int64_t left = c->deadline_ms - now_ms();
        int r;
        if (left <= 0)
            return 0;
        r = poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
        if (r > 0)
            return 1; /* POLLERR / POLLHUP: the next read or write says what */
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* Wait for what OpenSSL asked for after a failed call; IO_OK to try again. */
static io_result tls_wait(phg_httpc *c, int ret)
{
    int w;
    switch (SSL_get_error(c->ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        w = wait_fd(c, POLLIN);
        break;
    case SSL_ERROR_WANT_WRITE:
        w = wait_fd(c, POLLOUT);
        break;
    case SSL_ERROR_ZERO_RETURN:
        return IO_EOF;
    default:
        return IO_ERROR;
    }
    return w > 0 ? IO_OK : w == 0 ? IO_TIMEOUT : IO_ERROR;
}

static io_result raw_write(phg_httpc *c, const void *buf, size_t len)
{
    const uint8_t *b = buf;
    while (len > 0) {
        if (c->ssl != NULL) {
            size_t n = 0;
            int r;
            ERR_clear_error(); /* SSL_get_error reads the queue */
            r = SSL_write_ex(c->ssl, b, len, &n);
            if (r == 1) {
                b += n, len -= n;
                continue;
            }
            io_result w = tls_wait(c, r);
            if (w != IO_OK)
                return w == IO_EOF ? IO_ERROR : w;
        } else {
            ssize_t n = send(c->fd, b, len, MSG_NOSIGNAL);
            if (n > 0) {
                b += n, len -= (size_t)n;
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return IO_ERROR;
            int w = wait_fd(c, POLLOUT);
            if (w <= 0)
                return w == 0 ? IO_TIMEOUT : IO_ERROR;
        }
    }
    return IO_OK;
}

/* Up to cap bytes; IO_OK with *got > 0, or EOF / timeout / error. A TLS peer
 * that closes without close_notify is an error, not an end (truncation). */
static io_result raw_read(phg_httpc *c, uint8_t *buf, size_t cap, size_t *got)
{
    *got = 0;
    for (;;) {
        if (c->ssl != NULL) {
            int r;
            ERR_clear_error();
            r = SSL_read_ex(c->ssl, buf, cap, got);
            if (r == 1) {
                c->got_response_byte = 1;
                return IO_OK;
            }
            io_result w = tls_wait(c, r);
            if (w != IO_OK)
                return w;
        } else {
            ssize_t n = recv(c->fd, buf, cap, 0);
            if (n > 0) {
                *got = (size_t)n;
                c->got_response_byte = 1;
                return IO_OK;
            }
            if (n == 0)
                return IO_EOF;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return IO_ERROR;
            int w = wait_fd(c, POLLIN);
            if (w <= 0)
                return w == 0 ? IO_TIMEOUT : IO_ERROR;
        }
    }
}

/* ---- connecting ----------------------------------------------------------------------- */

static phg_status connect_tcp(phg_httpc *c, const url_parts *u, char *err, size_t err_len)
{
    struct addrinfo hints, *res = NULL, *ai;
    char port[8];
    int gai, last_errno = 0, timed_out = 0, one = 1;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (u->is_ip ? AI_NUMERICHOST : 0);
    snprintf(port, sizeof port, "%u", u->port);
    gai = getaddrinfo(u->host, port, &hints, &res);
    if (gai != 0) {
        seterr(err, err_len, "cannot resolve %s: %s", u->host, gai_strerror(gai));
        return PHG_ERR_UNAVAILABLE;
    }
    for (ai = res; ai != NULL && c->fd < 0 && !timed_out; ai = ai->ai_next) {
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        c->fd = fd;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            int w, soerr = 0;
            socklen_t sl = sizeof soerr;
            if (errno != EINPROGRESS) {
                last_errno = errno;
                goto next;
            }
            w = wait_fd(c, POLLOUT);
            if (w == 0) {
                timed_out = 1;
                goto next;
            }
            if (w < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) {
                last_errno = errno;
                goto next;
            }
            if (soerr != 0) {
                last_errno = soerr;
                goto next;
            }
        }
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        break;
    next:
        close(fd);
        c->fd = -1;
    }
    freeaddrinfo(res);
    if (c->fd >= 0)
        return PHG_OK;
    if (timed_out)
        seterr(err, err_len, "connecting to %s port %u timed out", u->host, u->port);
    else
        seterr(err, err_len, "cannot connect to %s port %u: %s", u->host, u->port,
               strerror(last_errno != 0 ? last_errno : ECONNREFUSED));
    return PHG_ERR_UNAVAILABLE;
}

static phg_status connect_tls(phg_httpc *c, const url_parts *u, char *err, size_t err_len)
{
    BIO *bio;
    int r;

    c->ssl = SSL_new(c->tls_ctx);
    if (c->ssl == NULL)
        return PHG_ERR_NOMEM;
    bio = nosig_bio(c->fd);
    if (bio == NULL)
        return PHG_ERR_NOMEM;
    SSL_set_bio(c->ssl, bio, bio);
    /* The name checked against the certificate: a DNS name, or an IP SAN
     * for a literal. SNI carries DNS names only (RFC 6066 3). */
    if (u->is_ip) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), u->host) != 1)
            return PHG_ERR_INTERNAL;
    } else if (SSL_set1_host(c->ssl, u->host) != 1 ||
               SSL_set_tlsext_host_name(c->ssl, u->host) != 1) {
        return PHG_ERR_INTERNAL;
    }
    SSL_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
    for (;;) {
        io_result w;
        ERR_clear_error();
        r = SSL_connect(c->ssl);
        if (r == 1)
            break;
        w = tls_wait(c, r);
        if (w == IO_OK)
            continue;
        if (w == IO_TIMEOUT) {
            seterr(err, err_len, "TLS handshake with %s port %u timed out", u->host, u->port);
        } else {
            long vr = SSL_get_verify_result(c->ssl);
            if (vr != X509_V_OK)
                seterr(err, err_len, "TLS with %s port %u: certificate not trusted (%s)", u->host,
                       u->port, X509_verify_cert_error_string(vr));
            else
                seterr(err, err_len, "TLS handshake with %s port %u failed", u->host, u->port);
        }
        return PHG_ERR_UNAVAILABLE;
    }
    if (SSL_get_verify_result(c->ssl) != X509_V_OK || SSL_get0_peer_certificate(c->ssl) == NULL) {
        seterr(err, err_len, "TLS with %s port %u: certificate not verified", u->host, u->port);
        return PHG_ERR_UNAVAILABLE;
    }
    return PHG_OK;
}

static phg_status conn_open(phg_httpc *c, const url_parts *u, char *err, size_t err_len)
{
    phg_status rc = connect_tcp(c, u, err, err_len);
    if (rc == PHG_OK && u->tls)
        rc = connect_tls(c, u, err, err_len);
    if (rc != PHG_OK) {
        if (rc == PHG_ERR_NOMEM || rc == PHG_ERR_INTERNAL)
            seterr(err, err_len, "cannot set up a connection to %s port %u", u->host, u->port);
        conn_close(c);
        return rc;
    }
    c->conn_tls = u->tls;
    c->conn_port = u->port;
    memcpy(c->conn_host, u->host, strlen(u->host) + 1);
    c->rpos = c->rlen = 0;
    return PHG_OK;
}

/* The kept connection is for u and looks alive: no byte and no EOF waiting
 * (an idle peer sends nothing; anything readable is a close or junk). */
static int conn_reusable(phg_httpc *c, const url_parts *u)
{
    struct pollfd pfd;
    if (c->fd < 0 || c->conn_tls != u->tls || c->conn_port != u->port ||
        strcasecmp(c->conn_host, u->host) != 0)
        return 0;
    pfd.fd = c->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) != 0)
        return 0;
    return 1;
}

/* ---- request -------------------------------------------------------------------------- */

static int method_ok(const char *m)
{
    size_t i, n = strnlen(m, METHOD_MAX + 1);
    if (n == 0 || n > METHOD_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if (!tchar((unsigned char)m[i]))
            return 0;
    return 1;
}

/*
 * A caller's "Name: value" line: a token, ':', then a value without CR, LF,
 * NUL or other control characters (tab allowed). Host, Content-Length,
 * Connection and Transfer-Encoding are ours to send.
 */
static phg_status header_line_ok(const char *h, size_t idx, char *err, size_t err_len)
{
    size_t n = strnlen(h, REQ_HEADER_LINE_MAX + 1), colon, i;
    if (n > REQ_HEADER_LINE_MAX) {
        seterr(err, err_len, "header %zu: longer than %d bytes", idx, REQ_HEADER_LINE_MAX);
        return PHG_ERR_INVALID;
    }
    for (colon = 0; colon < n && tchar((unsigned char)h[colon]); colon++)
        ;
    if (colon == 0 || colon == n || h[colon] != ':') {
        seterr(err, err_len, "header %zu: not \"Name: value\" with a token name", idx);
        return PHG_ERR_INVALID;
    }
    for (i = colon + 1; i < n; i++) {
        unsigned char ch = (unsigned char)h[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            seterr(err, err_len, "header %zu: its value holds CR, LF or a control character", idx);
            return PHG_ERR_INVALID;
        }
    }
    if (ieq(h, colon, "host") || ieq(h, colon, "content-length") || ieq(h, colon, "connection") ||
        ieq(h, colon, "transfer-encoding")) {
        seterr(err, err_len,
               "header %zu: Host, Content-Length, Connection and "
               "Transfer-Encoding are set by the client",
               idx);
        return PHG_ERR_INVALID;
    }
    return PHG_OK;
}

static int method_sends_length(const char *m)
{
    return strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
}

/* The request head into a malloc'd buffer (*out, *out_len). */
static phg_status build_head(const phg_httpc_request *req, const url_parts *u, char **out,
                             size_t *out_len)
{
    size_t cap = 256 + strlen(req->method) + u->path_len + strlen(u->host), i, n = 0;
    char *b;
    int w;
    for (i = 0; i < req->n_headers; i++)
        cap += strlen(req->headers[i]) + 2;
    b = malloc(cap);
    if (b == NULL)
        return PHG_ERR_NOMEM;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        w = snprintf(b + n, cap - n, __VA_ARGS__);                                                 \
        assert(w >= 0 && (size_t)w < cap - n);                                                     \
        n += (size_t)w;                                                                            \
    } while (0)
    PUT("%s %s%.*s HTTP/1.1\r\n", req->method, u->path_len == 0 || u->path[0] == '?' ? "/" : "",
        (int)u->path_len, u->path);
    if (u->port == (u->tls ? 443u : 80u))
        PUT(u->ipv6 ? "Host: [%s]\r\n" : "Host: %s\r\n", u->host);
    else
        PUT(u->ipv6 ? "Host: [%s]:%u\r\n" : "Host: %s:%u\r\n", u->host, u->port);
    for (i = 0; i < req->n_headers; i++)
        PUT("%s\r\n", req->headers[i]);
    if (req->body_len > 0 || method_sends_length(req->method))
        PUT("Content-Length: %zu\r\n", req->body_len);
    PUT("Connection: keep-alive\r\n\r\n");
#undef PUT
    *out = b;
    *out_len = n;
    return PHG_OK;
}

/* ---- response ------------------------------------------------------------------------- */

/* Why reading a response stopped. */
typedef enum read_fail {
    RF_NONE,
    RF_EOF, /* the peer closed before the response was complete */
    RF_TIMEOUT,
    RF_IO,
    RF_FORMAT,
    RF_TOO_LARGE,
    RF_NOMEM,
} read_fail;

static read_fail io_fail(io_result r)
{
    return r == IO_EOF ? RF_EOF : r == IO_TIMEOUT ? RF_TIMEOUT : RF_IO;
}

/* More bytes into rbuf (compacting it first). */
static read_fail fill(phg_httpc *c)
{
    size_t got = 0;
    io_result r;
    if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rlen == sizeof c->rbuf)
        return RF_TOO_LARGE;
    r = raw_read(c, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen, &got);
    if (r != IO_OK)
        return io_fail(r);
    c->rlen += got;
    return RF_NONE;
}

/* One line (LF or CRLF ended, the ending dropped) into c->line, at most max
 * bytes; *budget (if not NULL) is charged with the line and its ending. */
static read_fail read_line(phg_httpc *c, size_t max, size_t *budget, size_t *len)
{
    for (;;) {
        uint8_t *nl = memchr(c->rbuf + c->rpos, '\n', c->rlen - c->rpos);
        if (nl != NULL) {
            size_t n = (size_t)(nl - (c->rbuf + c->rpos)), used = n + 1;
            if (n > 0 && c->rbuf[c->rpos + n - 1] == '\r')
                n--;
            if (n > max || (budget != NULL && used > *budget))
                return RF_TOO_LARGE;
            if (budget != NULL)
                *budget -= used;
            memcpy(c->line, c->rbuf + c->rpos, n);
            c->line[n] = '\0';
            *len = n;
            c->rpos += used;
            return RF_NONE;
        }
        if (c->rlen - c->rpos > max + 1 || (budget != NULL && c->rlen - c->rpos >= *budget))
            return RF_TOO_LARGE;
        read_fail f = fill(c);
        if (f != RF_NONE)
            return f;
    }
}

typedef struct body_buf {
    uint8_t *p;
    size_t len, cap, max;
} body_buf;

/* Room for n more bytes (and a NUL), within max. */
static read_fail body_reserve(body_buf *b, size_t n)
{
    size_t want, cap;
    uint8_t *np;
    if (n > b->max - b->len)
        return RF_TOO_LARGE;
    want = b->len + n + 1;
    if (want <= b->cap)
        return RF_NONE;
    cap = b->cap == 0 ? 4096 : b->cap;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    np = realloc(b->p, cap);
    if (np == NULL)
        return RF_NOMEM;
    b->p = np;
    b->cap = cap;
    return RF_NONE;
}

/* Exactly n body bytes. */
static read_fail body_read_n(phg_httpc *c, body_buf *b, size_t n)
{
    read_fail f = body_reserve(b, n);
    if (f != RF_NONE)
        return f;
    while (n > 0) {
        size_t take;
        if (c->rpos == c->rlen) {
            f = fill(c);
            if (f != RF_NONE)
                return f;
        }
        take = c->rlen - c->rpos < n ? c->rlen - c->rpos : n;
        memcpy(b->p + b->len, c->rbuf + c->rpos, take);
        b->len += take;
        c->rpos += take;
        n -= take;
    }
    return RF_NONE;
}

/* Until the peer closes (TLS: with close_notify). */
static read_fail body_read_all(phg_httpc *c, body_buf *b)
{
    for (;;) {
        size_t have = c->rlen - c->rpos;
        read_fail f;
        if (have > 0) {
            f = body_reserve(b, have);
            if (f != RF_NONE)
                return f;
            memcpy(b->p + b->len, c->rbuf + c->rpos, have);
            b->len += have;
            c->rpos = c->rlen = 0;
        }
        f = fill(c);
        if (f == RF_EOF)
            return RF_NONE;
        if (f != RF_NONE)
            return f;
    }
}

static int hex_digit(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = ascii_lower(ch);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

static read_fail body_read_chunked(phg_httpc *c, body_buf *b)
{
    size_t budget = HEAD_MAX, len, i;
    read_fail f;
    for (;;) {
        uint64_t size = 0;
        f = read_line(c, HEAD_MAX, NULL, &len);
        if (f != RF_NONE)
            return f;
        for (i = 0; i < len && hex_digit((unsigned char)c->line[i]) >= 0; i++) {
            if (i >= 15)
                return RF_FORMAT; /* over 2^60: no body of ours is that large */
            size = size << 4 | (uint64_t)hex_digit((unsigned char)c->line[i]);
        }
        /* chunk extensions (";name=value") are allowed and ignored */
        if (i == 0 || (i < len && c->line[i] != ';' && c->line[i] != ' ' && c->line[i] != '\t'))
            return RF_FORMAT;
        if (size == 0)
            break;
        if (size > b->max - b->len)
            return RF_TOO_LARGE;
        f = body_read_n(c, b, (size_t)size);
        if (f != RF_NONE)
            return f;
        f = read_line(c, 0, NULL, &len); /* the CRLF after the data */
        if (f == RF_TOO_LARGE)
            return RF_FORMAT;
        if (f != RF_NONE)
            return f;
    }
    do { /* trailer fields, ignored, then the empty line */
        f = read_line(c, HEAD_MAX, &budget, &len);
        if (f != RF_NONE)
            return f;
    } while (len > 0);
    return RF_NONE;
}

typedef struct head_info {
    int minor; /* HTTP/1.minor */
    int status;
    int has_length;
    uint64_t length;
    int chunked;
    int close;
} head_info;

/* "HTTP/1.x SP 3DIGIT [SP reason]". */
static int parse_status_line(const char *s, size_t n, head_info *h)
{
    if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != ' ' ||
        s[9] < '1' || s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' ||
        (n > 12 && s[12] != ' '))
        return -1;
    h->minor = s[7] - '0';
    h->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    return 0;
}

/* Does a comma-separated token list hold tok (lowercase)? */
static int list_has(const char *v, size_t n, const char *tok)
{
    size_t i = 0;
    while (i < n) {
        size_t s, e;
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        s = i;
        while (i < n && v[i] != ',')
            i++;
        e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e > s && ieq(v + s, e - s, tok))
            return 1;
    }
    return 0;
}

/* One header line into h; -1 when it breaks the grammar or the framing. */
static int parse_header_line(char *line, size_t n, head_info *h, phg_httpc_response *resp)
{
    size_t colon, vs, ve, i;
    if (n > 0 && (line[0] == ' ' || line[0] == '\t'))
        return -1; /* obsolete line folding */
    for (colon = 0; colon < n && tchar((unsigned char)line[colon]); colon++)
        ;
    if (colon == 0 || colon == n || line[colon] != ':')
        return -1;
    for (vs = colon + 1; vs < n && (line[vs] == ' ' || line[vs] == '\t'); vs++)
        ;
    for (ve = n; ve > vs && (line[ve - 1] == ' ' || line[ve - 1] == '\t'); ve--)
        ;
    for (i = vs; i < ve; i++)
        if (((unsigned char)line[i] < 0x20 && line[i] != '\t') || line[i] == 0x7f)
            return -1;
    if (ieq(line, colon, "content-length")) {
        uint64_t v = 0;
        if (h->has_length || ve == vs || ve - vs > CL_DIGITS_MAX)
            return -1;
        for (i = vs; i < ve; i++) {
            if (line[i] < '0' || line[i] > '9')
                return -1;
            v = v * 10 + (uint64_t)(line[i] - '0');
        }
        h->has_length = 1;
        h->length = v;
    } else if (ieq(line, colon, "transfer-encoding")) {
        if (h->chunked || !ieq(line + vs, ve - vs, "chunked"))
            return -1; /* only "chunked", once: no other coding is decoded */
        h->chunked = 1;
    } else if (ieq(line, colon, "connection")) {
        if (list_has(line + vs, ve - vs, "close"))
            h->close = 1;
    } else if (ieq(line, colon, "content-type")) {
        size_t m =
            ve - vs < sizeof resp->content_type - 1 ? ve - vs : sizeof resp->content_type - 1;
        memcpy(resp->content_type, line + vs, m);
        resp->content_type[m] = '\0';
    }
    return 0;
}

/* The status line and headers of one response. */
static read_fail read_head(phg_httpc *c, head_info *h, phg_httpc_response *resp)
{
    size_t budget = HEAD_MAX, len;
    read_fail f;
    memset(h, 0, sizeof *h);
    resp->content_type[0] = '\0';
    f = read_line(c, HEAD_MAX, &budget, &len);
    if (f != RF_NONE)
        return f;
    if (parse_status_line(c->line, len, h) != 0)
        return RF_FORMAT;
    for (;;) {
        f = read_line(c, HEAD_MAX, &budget, &len);
        if (f != RF_NONE)
            return f;
        if (len == 0)
            break;
        if (parse_header_line(c->line, len, h, resp) != 0)
            return RF_FORMAT;
    }
    if (h->chunked && h->has_length)
        return RF_FORMAT; /* two framings: refuse rather than pick one */
    return RF_NONE;
}

/* ---- one exchange --------------------------------------------------------------------- */

/* What a try ended with, to decide on a retry. */
typedef enum try_end { TRY_DONE, TRY_RETRY, TRY_FAIL } try_end;

static phg_status fail_status(read_fail f)
{
    switch (f) {
    case RF_NONE:
        return PHG_OK;
    case RF_FORMAT:
        return PHG_ERR_FORMAT;
    case RF_TOO_LARGE:
        return PHG_ERR_TOO_LARGE;
    case RF_NOMEM:
        return PHG_ERR_NOMEM;
    case RF_EOF:
    case RF_TIMEOUT:
    case RF_IO:
        return PHG_ERR_UNAVAILABLE;
    }
    return PHG_ERR_INTERNAL;
}

static void fail_message(read_fail f, const url_parts *u, int in_body, char *err, size_t err_len)
{
    const char *what = "";
    switch (f) {
    case RF_NONE:
        return;
    case RF_EOF:
        what = in_body ? "closed the connection before the end of the body"
                       : "closed the connection without a complete response";
        break;
    case RF_TIMEOUT:
        what = "did not answer in time";
        break;
    case RF_IO:
        what = "connection failed while reading";
        break;
    case RF_FORMAT:
        what = in_body ? "sent a malformed chunked body" : "did not answer with HTTP/1.x";
        break;
    case RF_TOO_LARGE:
        what = in_body ? "sent a body over the response cap" : "sent a response head over 16 KiB";
        break;
    case RF_NOMEM:
        what = "out of memory while reading the response";
        break;
    }
    seterr(err, err_len, "%s port %u %s", u->host, u->port, what);
}

static try_end exchange(phg_httpc *c, const phg_httpc_request *req, const url_parts *u,
                        const char *head, size_t head_len, int reused, size_t max_response,
                        phg_httpc_response *resp, phg_status *rc, char *err, size_t err_len)
{
    head_info h;
    body_buf b = {NULL, 0, 0, max_response};
    read_fail f = RF_NONE;
    io_result w;
    int interim = 0, in_body = 0, is_head = strcmp(req->method, "HEAD") == 0;

    c->got_response_byte = 0;
    w = raw_write(c, head, head_len);
    if (w == IO_OK && req->body_len > 0)
        w = raw_write(c, req->body, req->body_len);
    if (w != IO_OK) {
        if (reused && w != IO_TIMEOUT)
            return TRY_RETRY;
        seterr(err, err_len, "%s port %u: %s while sending the request", u->host, u->port,
               w == IO_TIMEOUT ? "timed out" : "connection failed");
        *rc = PHG_ERR_UNAVAILABLE;
        return TRY_FAIL;
    }
    for (;;) {
        f = read_head(c, &h, resp);
        if (f != RF_NONE)
            break;
        if (h.status >= 100 && h.status < 200 && h.status != 101) {
            if (++interim > INTERIM_MAX) {
                f = RF_FORMAT;
                break;
            }
            continue; /* 100 Continue, 103 Early Hints: the real answer follows */
        }
        break;
    }
    if (f == RF_NONE && h.status == 101)
        f = RF_FORMAT; /* no upgrade was asked for */
    if (f != RF_NONE) {
        if (reused && !c->got_response_byte && (f == RF_EOF || f == RF_IO))
            return TRY_RETRY;
        goto fail;
    }
    in_body = 1;
    if (is_head || h.status == 204 || h.status == 304) {
        /* no body, whatever the headers say */
    } else if (h.chunked) {
        f = body_read_chunked(c, &b);
    } else if (h.has_length) {
        f = h.length > max_response ? RF_TOO_LARGE : body_read_n(c, &b, (size_t)h.length);
    } else {
        h.close = 1;
        f = body_read_all(c, &b);
    }
    if (f != RF_NONE)
        goto fail;
    resp->status = h.status;
    if (b.len > 0) {
        b.p[b.len] = '\0';
        resp->body = b.p;
        resp->body_len = b.len;
        b.p = NULL;
    }
    free(b.p);
    /* Kept only when the answer ended exactly at its framed end. */
    if (h.minor != 1 || h.close || c->rpos != c->rlen ||
        (c->ssl != NULL && SSL_pending(c->ssl) > 0))
        conn_close(c);
    *rc = PHG_OK;
    return TRY_DONE;
fail:
    free(b.p);
    fail_message(f, u, in_body, err, err_len);
    *rc = fail_status(f);
    return TRY_FAIL;
}

phg_status phg_httpc_do(phg_httpc *c, const phg_httpc_request *req, phg_httpc_response *resp,
                        char *err, size_t err_len)
{
    url_parts u;
    phg_status rc;
    char *head = NULL;
    size_t head_len = 0, i, max_response;
    int attempt, timeout_ms;

    assert(c != NULL && req != NULL && resp != NULL && req->method != NULL && req->url != NULL &&
           (req->headers != NULL || req->n_headers == 0) &&
           (req->body != NULL || req->body_len == 0));
    memset(resp, 0, sizeof *resp);
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : TIMEOUT_DEFAULT_MS;
    max_response = req->max_response > 0 ? req->max_response : MAX_RESPONSE_DEFAULT;
    if (max_response > SIZE_MAX / 2)
        max_response = SIZE_MAX / 2; /* so that the buffer's cap + 1 never wraps */
    c->deadline_ms = now_ms() + timeout_ms;

    rc = url_parse(req->url, &u, err, err_len);
    if (rc != PHG_OK)
        return rc;
    if (!method_ok(req->method)) {
        seterr(err, err_len, "the method must be 1 to %d token characters", METHOD_MAX);
        return PHG_ERR_INVALID;
    }
    if (req->n_headers > REQ_HEADERS_MAX) {
        seterr(err, err_len, "at most %d header lines", REQ_HEADERS_MAX);
        return PHG_ERR_INVALID;
    }
    for (i = 0; i < req->n_headers; i++) {
        assert(req->headers[i] != NULL);
        rc = header_line_ok(req->headers[i], i, err, err_len);
        if (rc != PHG_OK)
            return rc;
    }
    rc = build_head(req, &u, &head, &head_len);
    if (rc != PHG_OK)
        return rc;

    /* A kept connection can be closed by the server at any moment: if it
     * fails before the first byte of an answer, the request goes once more
     * on a new connection (what browsers and curl do). A server that read
     * the request and then closed may so see it twice: webhook deliveries
     * carry an id for that. */
    for (attempt = 0; attempt < 2; attempt++) {
        int reused = conn_reusable(c, &u);
        try_end t;
        if (!reused) {
            conn_close(c);
            rc = conn_open(c, &u, err, err_len);
            if (rc != PHG_OK)
                goto out;
        }
        t = exchange(c, req, &u, head, head_len, reused, max_response, resp, &rc, err, err_len);
        if (t == TRY_DONE)
            goto out;
        conn_close(c);
        if (t == TRY_FAIL)
            goto out;
    }
    /* unreachable: the second attempt is on a fresh connection, never a retry */
    rc = PHG_ERR_INTERNAL;
out:
    free(head);
    if (rc != PHG_OK) {
        phg_httpc_response_free(resp);
        conn_close(c);
    }
    return rc;
}
