/*
 * bench_webhook_gw.c: the end-to-end part of `phigate bench webhook`:
 * Standard Webhooks messages signed here, POSTed to a real `phigate serve`
 * (this same binary, started in a throwaway folder with a fresh master key
 * and a SQLite store), verified there, written durably to the inbox and
 * answered 200; the events are then delivered to a sink in this process.
 * Prints accepted webhooks per second, the latency of an acceptance (median,
 * p99) and how many events reached the sink. Loopback only; bounded in time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "phigate/crypto.h"
#include "phigate/webhook.h"

int bench_webhook_gateway(double seconds, int conns, size_t body_len, json_t *out);

#define LAT_MAX 2000000

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int listen_any(int *port)
{
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static int connect_port(int port)
{
    struct sockaddr_in a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/*
 * Read one HTTP/1.1 message (head + Content-Length body) from fd into buf
 * (cap bytes, carrying over what follows in *have). Returns the status (for
 * a response) or 0 (a request), -1 on error or close. The sink and the
 * client only ever see messages with a Content-Length.
 */
static int read_message(int fd, char *buf, size_t cap, size_t *have, size_t *msg_len)
{
    for (;;) {
        char *end = *have ? memmem(buf, *have, "\r\n\r\n", 4) : NULL;
        if (end != NULL) {
            size_t head = (size_t)(end - buf) + 4, clen = 0;
            const char *cl = memmem(buf, head, "\r\nContent-Length:", 17);
            if (cl == NULL)
                cl = memmem(buf, head, "\r\ncontent-length:", 17);
            if (cl != NULL)
                clen = strtoul(cl + 17, NULL, 10);
            if (head + clen > cap)
                return -1;
            if (*have >= head + clen) {
                *msg_len = head + clen;
                if (strncmp(buf, "HTTP/1.", 7) == 0)
                    return atoi(buf + 9);
                return 0;
            }
        } else if (*have == cap) {
            return -1;
        }
        {
            ssize_t r = recv(fd, buf + *have, cap - *have, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return -1;
            *have += (size_t)r;
        }
    }
}

static void consume(char *buf, size_t *have, size_t n)
{
    memmove(buf, buf + n, *have - n);
    *have -= n;
}

/* ---- the sink: where events are delivered ------------------------------------------- */

typedef struct sink {
    int lfd;
    atomic_int stop;
    atomic_ullong received;
    pthread_t thread;
} sink;

typedef struct sink_conn {
    sink *s;
    int fd;
} sink_conn;

static void *sink_conn_main(void *arg)
{
    sink_conn *c = arg;
    char *buf = malloc(1 << 20);
    size_t have = 0, n;
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    while (buf != NULL && read_message(c->fd, buf, 1 << 20, &have, &n) >= 0) {
        atomic_fetch_add(&c->s->received, 1);
        consume(buf, &have, n);
        if (write_all(c->fd, ok, sizeof ok - 1) != 0)
            break;
    }
    free(buf);
    close(c->fd);
    free(c);
    return NULL;
}

static void *sink_main(void *arg)
{
    sink *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {s->lfd, POLLIN, 0};
        sink_conn *c;
        pthread_t t;
        int fd;
        if (poll(&p, 1, 100) <= 0)
            continue;
        fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        c = malloc(sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->s = s;
        c->fd = fd;
        if (pthread_create(&t, NULL, sink_conn_main, c) != 0) {
            close(fd);
            free(c);
            continue;
        }
        pthread_detach(t);
    }
    return NULL;
}

/* ---- the load ------------------------------------------------------------------------------ */

typedef struct loader {
    int port, idx;
    const char *secret;
    const uint8_t *body;
    size_t body_len;
    double t_start, t_measure, t_end;
    uint64_t ok, failed, first_fail;
    float *lat; /* ms */
    size_t n_lat, cap_lat;
} loader;

static void *load_main(void *arg)
{
    loader *l = arg;
    char *req = malloc(l->body_len + 1024), resp[8192], sig[PHG_WEBHOOK_SIG_V1A_LEN + 1];
    char msg_id[64], err[128];
    size_t have = 0, mlen, slen;
    uint64_t seq = 0;
    int fd = connect_port(l->port);
    while (req != NULL && fd >= 0 && mono_s() < l->t_end) {
        struct timespec ts;
        int head, st;
        double t0;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(msg_id, sizeof msg_id, "msg_bench_%d_%llu_%ld", l->idx,
                 (unsigned long long)seq++, (long)getpid());
        if (phg_webhook_sign(l->secret, strlen(l->secret), msg_id, strlen(msg_id), ts.tv_sec,
                             l->body, l->body_len, sig, sizeof sig, &slen, err,
                             sizeof err) != PHG_OK)
            break;
        head = snprintf(req, 1024,
                        "POST /webhooks/bench HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Content-Type: application/json\r\nwebhook-id: %s\r\n"
                        "webhook-timestamp: %lld\r\nwebhook-signature: %s\r\n"
                        "Content-Length: %zu\r\n\r\n",
                        msg_id, (long long)ts.tv_sec, sig, l->body_len);
        memcpy(req + head, l->body, l->body_len);
        t0 = mono_s();
        if (write_all(fd, req, (size_t)head + l->body_len) != 0)
            break;
        st = read_message(fd, resp, sizeof resp, &have, &mlen);
        if (st < 0)
            break;
        consume(resp, &have, mlen);
        if (t0 < l->t_measure)
            continue;
        if (st == 200) {
            l->ok++;
            if (l->n_lat < l->cap_lat)
                l->lat[l->n_lat++] = (float)((mono_s() - t0) * 1000.0);
        } else {
            if (l->failed++ == 0)
                l->first_fail = (uint64_t)st;
        }
    }
    if (fd >= 0)
        close(fd);
    free(req);
    return NULL;
}

/* CPU seconds (user + system) the process has used, from /proc; -1 if unknown. */
static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[2048], *p;
    unsigned long long ut = 0, st = 0;
    FILE *f;
    size_t n;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')'); /* the command may hold spaces */
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                            &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int http_get_ok(int port, const char *path)
{
    char req[256], buf[65536];
    size_t have = 0, n;
    int st, fd = connect_port(port);
    if (fd < 0)
        return 0;
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
             path);
    st = write_all(fd, req, strlen(req)) == 0 ? read_message(fd, buf, sizeof buf, &have, &n) : -1;
    close(fd);
    return st == 200;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    int ok;
    if (f == NULL)
        return -1;
    ok = fputs(text, f) >= 0;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static void remove_tree(const char *dir)
{
    static const char *const names[] = {"gw.ini", "secret", "gw.db", "gw.db-wal", "gw.db-shm",
                                        "serve.log"};
    char p[512];
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int bench_webhook_gateway(double seconds, int conns, size_t body_len, json_t *out)
{
    char dir[] = "/tmp/phigate-bench-wh-XXXXXX", path[512], cfg[2048], mkey[64],
         secret[PHG_WEBHOOK_WHSEC_LEN + 1];
    sink snk;
    loader *ls = NULL;
    pthread_t *ts = NULL;
    uint8_t *body = NULL;
    int gw_port = 0, sink_port = 0, tmpfd, rc = -1, i, sink_started = 0;
    pid_t pid = -1;
    double t0, measured, cpu0 = -1, cpu1 = -1, self0 = -1, self1 = -1;
    uint64_t ok = 0, failed = 0, first_fail = 0;
    float *all = NULL;
    size_t n_all = 0;

    memset(&snk, 0, sizeof snk);
    snk.lfd = -1;
    if (mkdtemp(dir) == NULL) {
        cli_error("bench webhook: cannot make a temporary folder: %s", strerror(errno));
        return -1;
    }
    if (phg_fernet_key_generate(mkey) != PHG_OK || phg_webhook_secret_generate(secret) != PHG_OK)
        goto out;
    snprintf(path, sizeof path, "%s/secret", dir);
    if (write_file(path, secret) != 0)
        goto out;
    /* a free port for the gateway: bound, released, given to serve */
    tmpfd = listen_any(&gw_port);
    if (tmpfd < 0)
        goto out;
    close(tmpfd);
    snk.lfd = listen_any(&sink_port);
    if (snk.lfd < 0)
        goto out;
    snprintf(cfg, sizeof cfg,
             "[server]\nlisten = 127.0.0.1:%d\n[store]\nurl = sqlite:%s/gw.db\n"
             "[log]\nlevel = warn\n[webhooks]\nworkers = 2\n"
             "[webhook:bench]\nscheme = standard-webhooks\nsecret_file = %s/secret\n"
             "deliver_to = http://127.0.0.1:%d/events\n",
             gw_port, dir, dir, sink_port);
    snprintf(path, sizeof path, "%s/gw.ini", dir);
    if (write_file(path, cfg) != 0)
        goto out;
    {
        /* everything the child needs is made before fork (no thread runs
         * yet); the master key is in this process's environment only for
         * the fork */
        char logp[512];
        int lfd;
        snprintf(logp, sizeof logp, "%s/serve.log", dir);
        lfd = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (lfd < 0 || setenv("PHI_MASTER_KEY", mkey, 1) != 0) {
            if (lfd >= 0)
                close(lfd);
            goto out;
        }
        pid = fork();
        if (pid == 0) {
            dup2(lfd, 1);
            dup2(lfd, 2);
            execl("/proc/self/exe", "phigate", "serve", "--config", path, (char *)NULL);
            _exit(127);
        }
        unsetenv("PHI_MASTER_KEY");
        close(lfd);
        if (pid < 0)
            goto out;
    }
    if (pthread_create(&snk.thread, NULL, sink_main, &snk) != 0)
        goto out;
    sink_started = 1;
    t0 = mono_s();
    while (!http_get_ok(gw_port, "/healthz")) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid || mono_s() - t0 > 30) {
            cli_error("bench webhook: phigate serve did not start (its log: %s/serve.log)", dir);
            if (waitpid(pid, &status, WNOHANG) == 0)
                kill(pid, SIGKILL);
            pid = -1;
            goto out_keep; /* the folder stays, for its log */
        }
        usleep(20000);
    }
    body = malloc(body_len ? body_len : 1);
    ls = calloc((size_t)conns, sizeof *ls);
    ts = calloc((size_t)conns, sizeof *ts);
    if (body == NULL || ls == NULL || ts == NULL)
        goto out;
    for (size_t k = 0; k < body_len; k++)
        body[k] = (uint8_t)("{\"type\":\"sleep.updated\",\"hr\":[0123456789]}"[k % 42]);
    t0 = mono_s();
    for (i = 0; i < conns; i++) {
        ls[i].port = gw_port;
        ls[i].idx = i;
        ls[i].secret = secret;
        ls[i].body = body;
        ls[i].body_len = body_len;
        ls[i].t_start = t0;
        ls[i].t_measure = t0 + 1.0; /* 1 s of warm-up */
        ls[i].t_end = t0 + 1.0 + seconds;
        ls[i].cap_lat = LAT_MAX / (size_t)conns;
        ls[i].lat = malloc(ls[i].cap_lat * sizeof(float));
        if (ls[i].lat == NULL || pthread_create(&ts[i], NULL, load_main, &ls[i]) != 0) {
            conns = i;
            break;
        }
    }
    {
        double wait = t0 + 1.0 - mono_s();
        if (wait > 0)
            usleep((useconds_t)(wait * 1e6));
        cpu0 = proc_cpu_s(pid);
        self0 = proc_cpu_s(getpid());
    }
    for (i = 0; i < conns; i++)
        pthread_join(ts[i], NULL);
    cpu1 = proc_cpu_s(pid);
    self1 = proc_cpu_s(getpid());
    measured = seconds;
    all = malloc(LAT_MAX * sizeof(float));
    for (i = 0; i < conns; i++) {
        ok += ls[i].ok;
        failed += ls[i].failed;
        if (ls[i].failed && !first_fail)
            first_fail = ls[i].first_fail;
        if (all != NULL) {
            memcpy(all + n_all, ls[i].lat, ls[i].n_lat * sizeof(float));
            n_all += ls[i].n_lat;
        }
    }
    /* let delivery catch up, at most 10 s */
    t0 = mono_s();
    {
        uint64_t last = (uint64_t)-1;
        while (mono_s() - t0 < 10) {
            uint64_t now = atomic_load(&snk.received);
            if (now == last)
                break;
            last = now;
            usleep(500000);
        }
    }
    if (all != NULL && n_all > 0)
        qsort(all, n_all, sizeof *all, cmp_float);
    {
        double p50 = n_all ? all[n_all / 2] : 0, p99 = n_all ? all[(n_all * 99) / 100] : 0;
        unsigned long long delivered = atomic_load(&snk.received);
        /* the gateway's CPU per acceptance (its delivery work of the same
         * window included): steadier than the rate on a shared machine */
        double cpu_us = (cpu0 >= 0 && cpu1 >= cpu0 && ok > 0) ? (cpu1 - cpu0) * 1e6 / (double)ok
                                                               : -1;
        if (out != NULL) {
            json_object_set_new(out, "gateway",
                                json_pack("{s:i,s:f,s:I,s:f,s:f,s:f,s:I,s:I,s:f}", "connections",
                                          conns, "seconds", measured, "accepted", (json_int_t)ok,
                                          "accepted_per_s", (double)ok / measured, "p50_ms", p50,
                                          "p99_ms", p99, "refused", (json_int_t)failed,
                                          "delivered_to_sink", (json_int_t)delivered,
                                          "gateway_cpu_us_per_accept", cpu_us));
        } else {
            printf("\nEnd to end through phigate serve (SQLite inbox, fsync'd before the 200),\n"
                   "standard-webhooks, %zu-byte bodies, %d connections, %.0f s after 1 s warm-up:\n",
                   body_len, conns, measured);
            printf("  accepted/s %10.0f   p50 %.2f ms   p99 %.2f ms   refused %llu",
                   (double)ok / measured, p50, p99, (unsigned long long)failed);
            if (failed)
                printf(" (first status %llu)", (unsigned long long)first_fail);
            printf("\n  delivered to the sink by the end: %llu (includes the warm-up's)\n",
                   delivered);
            if (cpu_us >= 0)
                printf("  CPU per acceptance: gateway (with its deliveries) %.0f us, this load "
                       "generator and sink %.0f us\n",
                       cpu_us, self1 >= self0 && self0 >= 0 ? (self1 - self0) * 1e6 / (double)ok : -1);
        }
    }
    rc = 0;
out:
    if (pid > 0) {
        int status;
        kill(pid, SIGTERM);
        waitpid(pid, &status, 0);
    }
    remove_tree(dir);
out_keep:
    if (sink_started) {
        atomic_store(&snk.stop, 1);
        pthread_join(snk.thread, NULL);
    }
    if (snk.lfd >= 0)
        close(snk.lfd);
    for (i = 0; ls != NULL && i < conns; i++)
        free(ls[i].lat);
    free(ls);
    free(ts);
    free(all);
    free(body);
    phg_wipe(mkey, sizeof mkey);
    phg_wipe(secret, sizeof secret);
    if (rc != 0 && dir[0] != '\0')
        cli_error("bench webhook: the end-to-end run failed");
    return rc;
}
