/*
 * tests/unit/test_httpc.c: src/httpc.h against a tiny HTTP/1.1 server that
 * runs in a thread of the test on 127.0.0.1 (plain or TLS with a throwaway
 * self-signed P-256 certificate made here with OpenSSL). Covers: GET, POST
 * and HEAD with Content-Length, chunked answers, read-until-close, keep-alive
 * reuse (the server counts connections), a server closing a kept
 * connection (idle, or on the next request: the client retries once), a
 * server that never answers (the deadline), connection refused, bodies and
 * heads over their caps, malformed answers, bad URLs, header injection, a
 * peer that resets while a large body is sent (no SIGPIPE), and TLS:
 * verified with ca_file, refused without it or for another host name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "httpc.h"

/* ---- the test server ------------------------------------------------------------ */

typedef enum srv_mode {
    M_ECHO,       /* 200 with "METHOD target|body", keep-alive */
    M_CHUNKED,    /* a chunked 200 with an extension and a trailer, keep-alive */
    M_CLOSE_IDLE, /* echo, then close the connection (no Connection: close) */
    M_DROP_2ND,   /* echo the first request of a connection, close on the second */
    M_SILENT,     /* read the request, never answer */
    M_RAW,        /* send raw verbatim, then close */
    M_RESET,      /* read the head, then reset the connection */
} srv_mode;

typedef struct srv {
    int lfd;
    int port;
    pthread_t th;
    atomic_int stop;
    SSL_CTX *tls;
    srv_mode mode;
    const char *raw;
    size_t raw_len;
    atomic_int conns, reqs;
    pthread_mutex_t mu;
    char last_head[8192];
    int cur_fd; /* the connection being served, -1 if none (under mu) */
} srv;

typedef struct sconn {
    int fd;
    SSL *ssl;
    char buf[65536];
    size_t len;
} sconn;

static ssize_t s_read(sconn *k, void *b, size_t n)
{
    if (k->ssl != NULL) {
        int r = SSL_read(k->ssl, b, (int)n);
        return r > 0 ? r : 0;
    }
    return recv(k->fd, b, n, 0);
}

static void s_write(sconn *k, const void *b, size_t n)
{
    if (n == 0)
        return;
    if (k->ssl != NULL)
        (void)SSL_write(k->ssl, b, (int)n);
    else
        (void)send(k->fd, b, n, MSG_NOSIGNAL);
}

/* One request: head into buf (NUL-terminated, *head_len with the blank
 * line), body after it. 0 when the client closed or sent junk. */
static int s_read_request(sconn *k, size_t *head_len, size_t *body_len)
{
    char *end;
    size_t cl = 0;
    for (;;) {
        ssize_t n;
        k->buf[k->len] = '\0';
        end = strstr(k->buf, "\r\n\r\n");
        if (end != NULL)
            break;
        if (k->len + 1 >= sizeof k->buf)
            return 0;
        n = s_read(k, k->buf + k->len, sizeof k->buf - 1 - k->len);
        if (n <= 0)
            return 0;
        k->len += (size_t)n;
    }
    *head_len = (size_t)(end - k->buf) + 4;
    {
        const char *p = k->buf;
        while ((p = strchr(p, '\n')) != NULL) {
            p++;
            if (strncasecmp(p, "content-length:", 15) == 0)
                cl = strtoul(p + 15, NULL, 10);
        }
    }
    while (k->len < *head_len + cl) {
        ssize_t n;
        if (k->len + 1 >= sizeof k->buf)
            return 0;
        n = s_read(k, k->buf + k->len, sizeof k->buf - 1 - k->len);
        if (n <= 0)
            return 0;
        k->len += (size_t)n;
    }
    *body_len = cl;
    return 1;
}

static void s_consume(sconn *k, size_t n)
{
    memmove(k->buf, k->buf + n, k->len - n);
    k->len -= n;
}

static void s_echo(srv *s, sconn *k, size_t head_len, size_t body_len)
{
    char out[70000], target[4096] = "", method[32] = "";
    int is_head;
    size_t blen;
    (void)s;
    sscanf(k->buf, "%31s %4095s", method, target);
    is_head = strcmp(method, "HEAD") == 0;
    char body[66000];
    blen = (size_t)snprintf(body, sizeof body, "%s %s|", method, target);
    memcpy(body + blen, k->buf + head_len, body_len);
    blen += body_len;
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                     blen);
    s_write(k, out, (size_t)n);
    if (!is_head)
        s_write(k, body, blen);
}

static void s_serve(srv *s, sconn *k)
{
    size_t head_len, body_len;
    int on_conn = 0;
    for (;;) {
        if (!s_read_request(k, &head_len, &body_len))
            return;
        atomic_fetch_add(&s->reqs, 1);
        pthread_mutex_lock(&s->mu);
        snprintf(s->last_head, sizeof s->last_head, "%.*s", (int)head_len, k->buf);
        pthread_mutex_unlock(&s->mu);
        on_conn++;
        switch (s->mode) {
        case M_ECHO:
            s_echo(s, k, head_len, body_len);
            break;
        case M_CHUNKED: {
            static const char r[] = "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n"
                                    "Content-Type: application/json\r\n\r\n"
                                    "5\r\nhello\r\n7;ext=1\r\n, world\r\n"
                                    "0\r\nX-Trailer: t\r\n\r\n";
            s_write(k, r, sizeof r - 1);
            break;
        }
        case M_CLOSE_IDLE:
            s_echo(s, k, head_len, body_len);
            return;
        case M_DROP_2ND:
            if (on_conn == 2)
                return;
            s_echo(s, k, head_len, body_len);
            break;
        case M_SILENT: {
            char tmp[256];
            while (s_read(k, tmp, sizeof tmp) > 0)
                ;
            return;
        }
        case M_RAW:
            s_write(k, s->raw, s->raw_len);
            if (k->ssl != NULL)
                (void)SSL_shutdown(k->ssl);
            return;
        case M_RESET:
            return; /* the caller sets SO_LINGER 0 for this mode */
        }
        s_consume(k, head_len + body_len);
    }
}

static void *srv_main(void *arg)
{
    srv *s = arg;
    sigset_t set;
    /* A write to a peer that left must not kill the test from this thread;
     * the client thread keeps SIGPIPE unblocked (it must never raise it). */
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->lfd, .events = POLLIN, .revents = 0};
        sconn *k;
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&s->conns, 1);
        pthread_mutex_lock(&s->mu);
        s->cur_fd = fd;
        pthread_mutex_unlock(&s->mu);
        k = calloc(1, sizeof *k);
        if (k == NULL)
            abort(); /* no cmocka assertion outside the test's thread */
        k->fd = fd;
        if (s->mode == M_RESET) {
            size_t hl = 0;
            struct linger lg = {1, 0};
            char tmp[4096];
            ssize_t n = recv(fd, tmp, sizeof tmp, 0); /* a part of the head */
            (void)n;
            (void)hl;
            /* FIN first, then RST: the client's socket, in CLOSE_WAIT, gets
             * EPIPE on its next send, which raises SIGPIPE without
             * MSG_NOSIGNAL */
            shutdown(fd, SHUT_WR);
            usleep(50000);
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(fd);
            free(k);
            continue;
        }
        if (s->tls != NULL) {
            k->ssl = SSL_new(s->tls);
            SSL_set_fd(k->ssl, fd);
            if (SSL_accept(k->ssl) == 1)
                s_serve(s, k);
            SSL_free(k->ssl);
        } else {
            s_serve(s, k);
        }
        pthread_mutex_lock(&s->mu);
        s->cur_fd = -1;
        close(fd);
        pthread_mutex_unlock(&s->mu);
        free(k);
    }
    return NULL;
}

static void srv_start(srv *s, srv_mode mode, SSL_CTX *tls)
{
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    int one = 1;
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->mode = mode;
    s->tls = tls;
    s->cur_fd = -1;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 16), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static void srv_raw(srv *s, const char *raw)
{
    s->raw = raw;
    s->raw_len = strlen(raw);
}

static void srv_stop(srv *s)
{
    atomic_store(&s->stop, 1);
    /* a client may keep its connection open: wake the server's read */
    pthread_mutex_lock(&s->mu);
    if (s->cur_fd >= 0)
        shutdown(s->cur_fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
}

static char *url_of(const srv *s, const char *scheme, const char *host, const char *path)
{
    static char u[256];
    snprintf(u, sizeof u, "%s://%s:%d%s", scheme, host, s->port, path);
    return u;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static phg_status do_req(phg_httpc *c, const char *method, const char *url, const char *body,
                         const char *const *hdrs, size_t nh, size_t max, int timeout_ms,
                         phg_httpc_response *r, char *err)
{
    phg_httpc_request q;
    memset(&q, 0, sizeof q);
    q.method = method;
    q.url = url;
    q.headers = hdrs;
    q.n_headers = nh;
    q.body = (const uint8_t *)body;
    q.body_len = body != NULL ? strlen(body) : 0;
    q.timeout_ms = timeout_ms;
    q.max_response = max;
    return phg_httpc_do(c, &q, r, err, PHG_HTTPC_ERR_MAX);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_get_post_head_reuse(void **state)
{
    (void)state;
    srv s, s2;
    phg_httpc *c = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX], host[64];
    const char *hdrs[] = {"X-Test: one two", "Content-Type: application/json"};

    srv_start(&s, M_ECHO, NULL);
    assert_int_equal(phg_httpc_new(NULL, &c), PHG_OK);

    assert_int_equal(do_req(c, "GET", url_of(&s, "http", "127.0.0.1", "/a/b?x=1&y=2"), NULL, NULL,
                            0, 0, 2000, &r, err),
                     PHG_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "text/plain");
    assert_int_equal(r.body_len, strlen("GET /a/b?x=1&y=2|"));
    assert_memory_equal(r.body, "GET /a/b?x=1&y=2|", r.body_len);
    assert_int_equal(r.body[r.body_len], '\0');
    phg_httpc_response_free(&r);
    snprintf(host, sizeof host, "Host: 127.0.0.1:%d\r\n", s.port);
    assert_non_null(strstr(s.last_head, host));
    assert_non_null(strstr(s.last_head, "Connection: keep-alive\r\n"));
    assert_null(strstr(s.last_head, "Content-Length"));

    assert_int_equal(do_req(c, "POST", url_of(&s, "http", "127.0.0.1", "?q"), "hello", hdrs, 2, 0,
                            2000, &r, err),
                     PHG_OK);
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.body, "POST /?q|hello", r.body_len);
    phg_httpc_response_free(&r);
    assert_non_null(strstr(s.last_head, "POST /?q HTTP/1.1\r\n"));
    assert_non_null(strstr(s.last_head, "Content-Length: 5\r\n"));
    assert_non_null(strstr(s.last_head, "X-Test: one two\r\n"));

    /* HEAD: Content-Length announced, no body read, connection still good */
    assert_int_equal(
        do_req(c, "HEAD", url_of(&s, "http", "127.0.0.1", ""), NULL, NULL, 0, 0, 2000, &r, err),
        PHG_OK);
    assert_int_equal(r.status, 200);
    assert_null(r.body);
    assert_int_equal(r.body_len, 0);
    phg_httpc_response_free(&r);
    assert_non_null(strstr(s.last_head, "HEAD / HTTP/1.1\r\n"));
    /* an empty POST still says Content-Length: 0 */
    assert_int_equal(
        do_req(c, "POST", url_of(&s, "http", "127.0.0.1", "/p"), NULL, NULL, 0, 0, 2000, &r, err),
        PHG_OK);
    phg_httpc_response_free(&r);
    assert_non_null(strstr(s.last_head, "Content-Length: 0\r\n"));
    assert_int_equal(atomic_load(&s.conns), 1);
    assert_int_equal(atomic_load(&s.reqs), 4);

    /* another port: another connection; back again: a new one to the first */
    srv_start(&s2, M_ECHO, NULL);
    assert_int_equal(
        do_req(c, "GET", url_of(&s2, "http", "127.0.0.1", "/"), NULL, NULL, 0, 0, 2000, &r, err),
        PHG_OK);
    phg_httpc_response_free(&r);
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "HTTP", "127.0.0.1", "/"), NULL, NULL, 0, 0, 2000, &r, err),
        PHG_OK);
    phg_httpc_response_free(&r);
    assert_int_equal(atomic_load(&s2.conns), 1);
    assert_int_equal(atomic_load(&s.conns), 2);

    phg_httpc_free(c);
    srv_stop(&s);
    srv_stop(&s2);
    phg_httpc_free(NULL);
    phg_httpc_response_free(NULL);
}

static void test_chunked(void **state)
{
    (void)state;
    srv s;
    phg_httpc *c = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX];

    srv_start(&s, M_CHUNKED, NULL);
    assert_int_equal(phg_httpc_new(NULL, &c), PHG_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(do_req(c, "GET", url_of(&s, "http", "127.0.0.1", "/c"), NULL, NULL, 0, 0,
                                2000, &r, err),
                         PHG_OK);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.content_type, "application/json");
        assert_int_equal(r.body_len, 12);
        assert_memory_equal(r.body, "hello, world", 12);
        phg_httpc_response_free(&r);
    }
    assert_int_equal(atomic_load(&s.conns), 1); /* kept after a chunked body */
    /* over the cap, in the middle of the chunks */
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "http", "127.0.0.1", "/c"), NULL, NULL, 0, 8, 2000, &r, err),
        PHG_ERR_TOO_LARGE);
    assert_null(r.body);
    assert_non_null(strstr(err, "over the response cap"));
    phg_httpc_free(c);
    srv_stop(&s);
}

static void test_server_closes(void **state)
{
    (void)state;
    srv s;
    phg_httpc *c = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX];

    /* closed while idle: seen before sending, a new connection */
    srv_start(&s, M_CLOSE_IDLE, NULL);
    assert_int_equal(phg_httpc_new(NULL, &c), PHG_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            do_req(c, "POST", url_of(&s, "http", "127.0.0.1", "/"), "x", NULL, 0, 0, 2000, &r, err),
            PHG_OK);
        assert_memory_equal(r.body, "POST /|x", r.body_len);
        phg_httpc_response_free(&r);
        usleep(20000); /* let the FIN arrive */
    }
    assert_int_equal(atomic_load(&s.conns), 3);
    srv_stop(&s);

    /* closed on the next request, before any answer: sent once more */
    srv_start(&s, M_DROP_2ND, NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            do_req(c, "POST", url_of(&s, "http", "127.0.0.1", "/"), "y", NULL, 0, 0, 2000, &r, err),
            PHG_OK);
        assert_memory_equal(r.body, "POST /|y", r.body_len);
        phg_httpc_response_free(&r);
    }
    /* 1st on conn 1; 2nd dropped on conn 1, answered on conn 2; 3rd dropped
     * on conn 2, answered on conn 3 */
    assert_int_equal(atomic_load(&s.conns), 3);
    assert_int_equal(atomic_load(&s.reqs), 5);
    srv_stop(&s);

    /* closed without an answer on a fresh connection: not retried */
    srv_start(&s, M_RAW, NULL);
    srv_raw(&s, "");
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "http", "127.0.0.1", "/"), NULL, NULL, 0, 0, 2000, &r, err),
        PHG_ERR_UNAVAILABLE);
    assert_non_null(strstr(err, "closed the connection"));
    assert_int_equal(atomic_load(&s.conns), 1);
    srv_stop(&s);
    phg_httpc_free(c);
}

static void test_timeout_and_refused(void **state)
{
    (void)state;
    srv s;
    phg_httpc *c = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX];
    int64_t t0, dt;

    srv_start(&s, M_SILENT, NULL);
    assert_int_equal(phg_httpc_new(NULL, &c), PHG_OK);
    t0 = mono_ms();
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "http", "127.0.0.1", "/"), NULL, NULL, 0, 0, 300, &r, err),
        PHG_ERR_UNAVAILABLE);
    dt = mono_ms() - t0;
    assert_true(dt >= 250 && dt < 1500);
    assert_non_null(strstr(err, "did not answer in time"));
    srv_stop(&s);

    /* a port nobody listens on */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(a.sin_port));
    t0 = mono_ms();
    assert_int_equal(do_req(c, "GET", url, NULL, NULL, 0, 0, 2000, &r, err), PHG_ERR_UNAVAILABLE);
    assert_true(mono_ms() - t0 < 1000);
    assert_non_null(strstr(err, "cannot connect to 127.0.0.1"));
    assert_non_null(strstr(err, "refused"));
    /* an IPv6 literal parses, and nobody listens there */
    assert_int_equal(do_req(c, "GET", "http://[::1]:1/", NULL, NULL, 0, 0, 2000, &r, err),
                     PHG_ERR_UNAVAILABLE);
    /* a name that does not resolve */
    assert_int_equal(
        do_req(c, "GET", "http://no-such-host.invalid/", NULL, NULL, 0, 0, 2000, &r, err),
        PHG_ERR_UNAVAILABLE);
    phg_httpc_free(c);
}

static void expect_raw(const char *raw, size_t max, phg_status want, const char *err_part)
{
    srv s;
    phg_httpc *c = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX] = "";
    srv_start(&s, M_RAW, NULL);
    srv_raw(&s, raw);
    assert_int_equal(phg_httpc_new(NULL, &c), PHG_OK);
    phg_status st =
        do_req(c, "GET", url_of(&s, "http", "127.0.0.1", "/"), NULL, NULL, 0, max, 2000, &r, err);
    if (st != want)
        fail_msg("raw %.40s: got %d want %d (%s)", raw, st, want, err);
    if (err_part != NULL && strstr(err, err_part) == NULL)
        fail_msg("raw %.40s: err \"%s\" lacks \"%s\"", raw, err, err_part);
    if (st != PHG_OK) {
        assert_null(r.body);
        assert_int_equal(r.status, 0);
    }
    phg_httpc_response_free(&r);
    phg_httpc_free(c);
    srv_stop(&s);
}

static void test_malformed_and_caps(void **state)
{
    (void)state;
    static char big_head[20000];
    /* accepted forms */
    expect_raw("HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nnop", 0, PHG_OK, NULL);
    expect_raw("HTTP/1.1 200\r\n\r\nuntil close", 0, PHG_OK, NULL);
    expect_raw("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 0,
               PHG_OK, NULL);
    expect_raw("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 0, PHG_OK, NULL);
    expect_raw("HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 0, PHG_OK, NULL);
    /* the status line */
    expect_raw("HTTP/2 200 OK\r\n\r\n", 0, PHG_ERR_FORMAT, "HTTP/1.x");
    expect_raw("HTTP/1.1 20 OK\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 600 Nope\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200OK\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("SSH-2.0-OpenSSH_9.2\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 101 Switching\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    /* framing */
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 0,
               PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "1\r\nx\r\n0\r\n\r\n",
               0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 0, PHG_ERR_FORMAT,
               NULL);
    expect_raw("HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", 0, PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, PHG_ERR_FORMAT,
               "chunked");
    expect_raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", 0,
               PHG_ERR_FORMAT, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               "fffffffffffffffffff\r\n",
               0, PHG_ERR_FORMAT, NULL);
    /* ends early */
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 0, PHG_ERR_UNAVAILABLE,
               "before the end of the body");
    expect_raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 0,
               PHG_ERR_UNAVAILABLE, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nContent-Le", 0, PHG_ERR_UNAVAILABLE, NULL);
    /* caps */
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n12345", 4, PHG_ERR_TOO_LARGE,
               "over the response cap");
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n12345", 5, PHG_OK, NULL);
    expect_raw("HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n", 0, PHG_ERR_TOO_LARGE,
               NULL);
    expect_raw("HTTP/1.1 200 OK\r\n\r\n123456789", 8, PHG_ERR_TOO_LARGE, NULL);
    memcpy(big_head, "HTTP/1.1 200 OK\r\nX-Big: ", 24);
    memset(big_head + 24, 'a', sizeof big_head - 30);
    memcpy(big_head + sizeof big_head - 6, "\r\n\r\n", 5);
    expect_raw(big_head, 0, PHG_ERR_TOO_LARGE, "16 KiB");
}

static void test_bad_requests(void **state)
{
    (void)state;
    phg_httpc *c = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX];
    static char longurl[PHG_HTTPC_URL_MAX + 2];
    static const char *const bad_urls[] = {
        "ftp://127.0.0.1/",
        "http://",
        "http:///path",
        "127.0.0.1/x",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1@evil/",
        "http://127.0.0.1/#frag",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:65536/",
        "http://127.0.0.1:/",
        "http://127.0.0.1:8a/",
        "http://127.0.0.1:123456/",
        "http://127.0.0.1/a b",
        "http://127.0.0.1/a\r\nX-Evil: 1",
        "http://127.0.0.1/\x7f",
        "http://127.0.0.1/\xc3\xa9",
        "http://[::1/",
        "http://[zz::1]/",
        "http://[]/",
        "http://[fe80::1%25eth0]/",
        "http://[::1]x/",
        "http://ho$t/",
        NULL,
    };
    assert_int_equal(phg_httpc_new(NULL, &c), PHG_OK);
    for (size_t i = 0; bad_urls[i] != NULL; i++) {
        phg_status st = do_req(c, "GET", bad_urls[i], NULL, NULL, 0, 0, 500, &r, err);
        if (st != PHG_ERR_INVALID)
            fail_msg("URL %s: %d (%s)", bad_urls[i], st, err);
        assert_true(err[0] != '\0');
    }
    memcpy(longurl, "http://a/", 9);
    memset(longurl + 9, 'b', PHG_HTTPC_URL_MAX + 1 - 9);
    assert_int_equal(do_req(c, "GET", longurl, NULL, NULL, 0, 0, 500, &r, err), PHG_ERR_INVALID);
    assert_non_null(strstr(err, "2048"));

    /* header injection and headers that are the client's to set */
    static const char *const bad_headers[] = {
        "X-A: b\r\nX-Evil: 1",
        "X-A: b\nX-Evil: 1",
        "X-A: b\rc",
        "NoColon",
        " X-A: b",
        ": b",
        "X A: b",
        "Host: evil",
        "content-length: 3",
        "Connection: close",
        "Transfer-Encoding: chunked",
        "X-A: \x01",
        NULL,
    };
    for (size_t i = 0; bad_headers[i] != NULL; i++) {
        const char *h[1] = {bad_headers[i]};
        phg_status st = do_req(c, "GET", "http://127.0.0.1:9/", NULL, h, 1, 0, 500, &r, err);
        if (st != PHG_ERR_INVALID)
            fail_msg("header %s: %d", bad_headers[i], st);
        /* the value is never echoed */
        assert_null(strstr(err, "Evil"));
        assert_null(strstr(err, "evil"));
    }
    assert_int_equal(do_req(c, "GET /x", "http://127.0.0.1:9/", NULL, NULL, 0, 0, 500, &r, err),
                     PHG_ERR_INVALID);
    assert_int_equal(do_req(c, "", "http://127.0.0.1:9/", NULL, NULL, 0, 0, 500, &r, err),
                     PHG_ERR_INVALID);
    phg_httpc_free(c);
}

/* A peer that resets while a large body is sent: an error, never a SIGPIPE
 * (this thread leaves SIGPIPE at its default action, which would end it). */
static void test_reset_no_sigpipe(void **state)
{
    (void)state;
    srv s;
    phg_httpc *c = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX];
    size_t n = 8u << 20;
    char *body = malloc(n + 1);
    assert_non_null(body);
    memset(body, 'z', n);
    body[n] = '\0';
    srv_start(&s, M_RESET, NULL);
    assert_int_equal(phg_httpc_new(NULL, &c), PHG_OK);
    assert_int_equal(
        do_req(c, "POST", url_of(&s, "http", "127.0.0.1", "/"), body, NULL, 0, 0, 3000, &r, err),
        PHG_ERR_UNAVAILABLE);
    phg_httpc_free(c);
    srv_stop(&s);
    free(body);
}

/* ---- TLS ------------------------------------------------------------------------- */

static EVP_PKEY *tls_key;
static X509 *tls_cert;
static char cert_path[64];

static void make_cert(void)
{
    X509_NAME *nm;
    X509V3_CTX v3;
    X509_EXTENSION *ext;
    FILE *f;
    int fd;
    tls_key = EVP_EC_gen("P-256");
    assert_non_null(tls_key);
    tls_cert = X509_new();
    assert_non_null(tls_cert);
    X509_set_version(tls_cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(tls_cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(tls_cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(tls_cert), 3600);
    X509_set_pubkey(tls_cert, tls_key);
    nm = X509_get_subject_name(tls_cert);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(tls_cert, nm);
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, tls_cert, tls_cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1");
    assert_non_null(ext);
    X509_add_ext(tls_cert, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(tls_cert, tls_key, EVP_sha256()) > 0);
    snprintf(cert_path, sizeof cert_path, "/tmp/phg_httpc_cert_XXXXXX");
    fd = mkstemp(cert_path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, tls_cert), 1);
    fclose(f);
}

static SSL_CTX *server_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate(ctx, tls_cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, tls_key), 1);
    return ctx;
}

static void test_tls(void **state)
{
    (void)state;
    srv s;
    phg_httpc *c = NULL, *sys = NULL;
    phg_httpc_response r;
    char err[PHG_HTTPC_ERR_MAX];
    SSL_CTX *ctx;

    make_cert();
    ctx = server_ctx();
    srv_start(&s, M_ECHO, ctx);

    /* trusted through ca_file: verified, kept alive */
    assert_int_equal(phg_httpc_new(cert_path, &c), PHG_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(do_req(c, "POST", url_of(&s, "https", "127.0.0.1", "/tls"), "sealed", NULL,
                                0, 0, 3000, &r, err),
                         PHG_OK);
        assert_int_equal(r.status, 200);
        assert_memory_equal(r.body, "POST /tls|sealed", r.body_len);
        phg_httpc_response_free(&r);
    }
    assert_int_equal(atomic_load(&s.conns), 1);
    /* the same server as http://: another connection, and no HTTP answer */
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "http", "127.0.0.1", "/"), NULL, NULL, 0, 0, 1000, &r, err),
        PHG_ERR_UNAVAILABLE);
    /* a host name the certificate does not name (localhost is not 127.0.0.1
     * for the certificate; whether it resolves to ::1 first does not matter) */
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "https", "localhost", "/"), NULL, NULL, 0, 0, 3000, &r, err),
        PHG_ERR_UNAVAILABLE);
    assert_non_null(strstr(err, "certificate"));

    /* not trusted by the system store */
    assert_int_equal(phg_httpc_new(NULL, &sys), PHG_OK);
    assert_int_equal(
        do_req(sys, "GET", url_of(&s, "https", "127.0.0.1", "/"), NULL, NULL, 0, 0, 3000, &r, err),
        PHG_ERR_UNAVAILABLE);
    assert_non_null(strstr(err, "certificate"));
    assert_null(r.body);
    phg_httpc_free(sys);
    phg_httpc_free(c);
    srv_stop(&s);

    /* read until close over TLS (close_notify sent), and a chunked answer */
    srv_start(&s, M_RAW, ctx);
    srv_raw(&s, "HTTP/1.1 200 OK\r\n\r\nall of it");
    assert_int_equal(phg_httpc_new(cert_path, &c), PHG_OK);
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "https", "127.0.0.1", "/"), NULL, NULL, 0, 0, 3000, &r, err),
        PHG_OK);
    assert_memory_equal(r.body, "all of it", 9);
    phg_httpc_response_free(&r);
    phg_httpc_free(c);
    srv_stop(&s);

    srv_start(&s, M_CHUNKED, ctx);
    assert_int_equal(phg_httpc_new(cert_path, &c), PHG_OK);
    assert_int_equal(
        do_req(c, "GET", url_of(&s, "https", "127.0.0.1", "/"), NULL, NULL, 0, 0, 3000, &r, err),
        PHG_OK);
    assert_memory_equal(r.body, "hello, world", 12);
    phg_httpc_response_free(&r);
    phg_httpc_free(c);
    srv_stop(&s);

    /* a ca_file that does not exist */
    assert_int_equal(phg_httpc_new("/nonexistent/ca.pem", &c), PHG_ERR_IO);
    assert_null(c);

    SSL_CTX_free(ctx);
    unlink(cert_path);
    X509_free(tls_cert);
    EVP_PKEY_free(tls_key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_post_head_reuse), cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_server_closes),       cmocka_unit_test(test_timeout_and_refused),
        cmocka_unit_test(test_malformed_and_caps),  cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_reset_no_sigpipe),    cmocka_unit_test(test_tls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
