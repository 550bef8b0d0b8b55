/*
 * config.c: the configuration of `phigate serve` (gw.h, "configuration").
 *
 * Four layers, each overriding the one before: built-in defaults, the INI
 * file (parsed with inih), PHIGATE_* environment variables, command-line
 * flags. Every value is checked where it is applied, so a bad value names its
 * setting and where it came from; checks that involve several settings (TLS
 * pair, store set) run once at the end. Routes and webhook sources
 * ([webhook:NAME]) come only from the file.
 *
 * What this file does not do: open the store, load TLS keys, read master
 * keys (keyring.c), or bind sockets. It only checks that the TLS files can be
 * read now, so that a typo fails at start rather than at the first handshake.
 *
 * Secrets: the store URL may carry a password. It is accepted only from the
 * environment (PHIGATE_STORE, PHIGATE_STORE_URL) or a file named by
 * PHIGATE_STORE_FILE, never from the INI file or --store (files are often
 * world-readable, flags show in `ps`). No message ever quotes a store URL;
 * store_display has the password replaced by "***".
 *
 * Webhook secrets are never in the file either: a [webhook:NAME] section
 * names the files that hold them (secret_file, verify_token_file). This file
 * only checks that they can be opened now; it never reads them (webhooks.c
 * does), so no secret can end up in a message or in gw_config_json.
 *
 * The reference of every setting is docs/configuration.md; an example file is
 * deploy/phigate.ini.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "gw.h"
#include "text_internal.h"
#include "phigate/crypto.h"
#include "phigate/webhook.h"
#include "phigate/webhook_store.h"

#define CONFIG_FILE_MAX (1024 * 1024) /* bytes of the INI file */
#define STORE_FILE_MAX 4096           /* bytes of the PHIGATE_STORE_FILE file */
/*
 * inih (Debian's build: INI_MAX_LINE 200, no realloc) reads a line in chunks
 * of INI_MAX_LINE - 1 bytes, newline included, and parses the rest of a
 * longer line as a line of its own: a long value would be cut silently, its
 * tail taken as another setting. So longer lines are refused before inih
 * sees them.
 */
#define LINE_MAX_BYTES (INI_MAX_LINE - 2)
#define QUOTE_MAX 48 /* bytes of a value quoted back in a message */
/*
 * inih also cuts a section's name at 49 bytes (MAX_SECTION in ini.c, not
 * in the header), which "route:" or "webhook:" and a long NAME exceed. So
 * prepare() hands inih a longer [route:NAME] or [webhook:NAME] header as
 * [route:#N] / [webhook:#N], N the section's index (no valid NAME holds a
 * '#'); the handlers look them up by index.
 */
#define SECTION_ALIAS_FROM 40 /* bytes of a section name, at most, passed as written */

typedef enum source { SRC_FILE, SRC_ENV, SRC_FLAG } source;

typedef enum kind {
    K_LISTEN,   /* HOST:PORT, [v6]:PORT */
    K_INT,      /* int, plain decimal, within min..max */
    K_MS,       /* int milliseconds, plain decimal, within min..max */
    K_SIZE,     /* size_t bytes, with an optional k/m/g suffix */
    K_COUNT,    /* size_t count, plain decimal */
    K_PATH,     /* a file path (char array) */
    K_TRUSTED,  /* comma list of IP addresses */
    K_UPSTREAM, /* http://host[:port][/base] or "" */
    K_STORE,    /* a store URL; may hold a password */
    K_CHAIN,    /* an audit chain name */
    K_LEVEL,    /* debug|info|warn|error */
    K_BOOL,
    K_RL_ENGINE,   /* local|redis */
    K_RL_FALLBACK, /* local|open|closed */
    K_REDIS,       /* redis://host:port or "" */
    K_POLICY,      /* a rate-limit policy text, or "" / none */
    K_SECONDS,     /* int64_t seconds, plain decimal, within min..max */
    K_KEYSET,      /* a file path or an http(s):// URL, not empty */
} kind;

typedef struct setting {
    const char *section, *key;
    kind kind;
    size_t offset, size; /* the field in gw_config */
    long long min, max;
    const char *shortcut; /* a short environment name, or NULL */
} setting;

#define FIELD(f) offsetof(gw_config, f), sizeof(((gw_config *)0)->f)
#define MS_MAX 3600000LL
#define DAY_MS 86400000LL
#define YEAR_S 31536000LL /* 365 days */

static const setting settings[] = {
    {"server", "listen", K_LISTEN, 0, 0, 0, 0, "PHIGATE_LISTEN"},
    {"server", "threads", K_INT, FIELD(threads), 0, 256, "PHIGATE_THREADS"},
    {"server", "tls_cert", K_PATH, FIELD(tls_cert), 0, 0, NULL},
    {"server", "tls_key", K_PATH, FIELD(tls_key), 0, 0, NULL},
    {"server", "max_connections", K_INT, FIELD(max_connections), 1, 1000000, NULL},
    {"server", "max_header_bytes", K_SIZE, FIELD(max_header_bytes), 1024, 1024 * 1024, NULL},
    {"server", "max_body_bytes", K_SIZE, FIELD(max_body_bytes), 1, 1024LL * 1024 * 1024, NULL},
    {"server", "header_timeout_ms", K_MS, FIELD(header_timeout_ms), 1, MS_MAX, NULL},
    {"server", "idle_timeout_ms", K_MS, FIELD(idle_timeout_ms), 1, MS_MAX, NULL},
    {"server", "drain_timeout_ms", K_MS, FIELD(drain_timeout_ms), 1, MS_MAX, NULL},
    {"server", "trusted_proxy", K_TRUSTED, FIELD(trusted_proxy), 0, 0, NULL},
    {"upstream", "url", K_UPSTREAM, FIELD(upstream_url), 0, 0, "PHIGATE_UPSTREAM"},
    {"upstream", "connect_timeout_ms", K_MS, FIELD(upstream_connect_timeout_ms), 1, MS_MAX, NULL},
    {"upstream", "timeout_ms", K_MS, FIELD(upstream_timeout_ms), 1, MS_MAX, NULL},
    {"upstream", "pool", K_INT, FIELD(upstream_pool), 0, 4096, NULL},
    {"store", "url", K_STORE, FIELD(store_url), 0, 0, "PHIGATE_STORE"},
    {"audit", "chain", K_CHAIN, FIELD(audit_chain), 0, 0, NULL},
    {"phi", "batch_max", K_COUNT, FIELD(phi_batch_max), 1, 10000, NULL},
    {"log", "level", K_LEVEL, FIELD(log_level), 0, 0, NULL},
    {"admin", "enabled", K_BOOL, FIELD(admin_enabled), 0, 1, NULL},
    {"ratelimit", "engine", K_RL_ENGINE, FIELD(rl_engine), 0, 0, NULL},
    {"ratelimit", "redis", K_REDIS, FIELD(rl_redis_url), 0, 0, "PHIGATE_REDIS"},
    {"ratelimit", "timeout_ms", K_MS, FIELD(rl_timeout_ms), 1, 60000, NULL},
    {"ratelimit", "fallback", K_RL_FALLBACK, FIELD(rl_fallback), 0, 0, NULL},
    {"ratelimit", "instances", K_INT, FIELD(rl_instances), 1, 1024, NULL},
    {"ratelimit", "default_user", K_POLICY, FIELD(rl_default_user), 0, 0, NULL},
    {"ratelimit", "default_admin", K_POLICY, FIELD(rl_default_admin), 0, 0, NULL},
    {"webhooks", "enabled", K_BOOL, FIELD(wh_enabled), 0, 1, NULL},
    {"webhooks", "workers", K_INT, FIELD(wh_workers), 1, 64, NULL},
    {"webhooks", "max_attempts", K_INT, FIELD(wh_max_attempts), 1, 1000, NULL},
    {"webhooks", "max_age_s", K_SECONDS, FIELD(wh_max_age_s), 60, YEAR_S, NULL},
    {"webhooks", "backoff_ms", K_MS, FIELD(wh_backoff_ms), 10, MS_MAX, NULL},
    {"webhooks", "backoff_max_ms", K_MS, FIELD(wh_backoff_max_ms), 10, DAY_MS, NULL},
    {"webhooks", "timeout_ms", K_MS, FIELD(wh_timeout_ms), 100, 600000, NULL},
    {"webhooks", "keep_delivered_s", K_SECONDS, FIELD(wh_keep_delivered_s), 0, 10 * YEAR_S, NULL},
    {"webhooks", "google_keyset", K_KEYSET, FIELD(wh_google_keyset), 0, 0, NULL},
    {"webhooks", "ca_file", K_PATH, FIELD(wh_ca_file), 0, 0, NULL},
    {"webhooks", "redis", K_REDIS, FIELD(wh_redis_url), 0, 0, NULL},
};
#define N_SETTINGS (sizeof settings / sizeof settings[0])
_Static_assert(N_SETTINGS <= 64, "loader.file_seen has one bit per setting");

static const char *const sections[] = {"server", "upstream", "store",     "audit",   "phi",
                                       "log",    "admin",    "ratelimit", "webhooks"};

#define WH_GOOGLE_KEYSET_DEFAULT                                                                   \
    "https://www.gstatic.com/googlehealthapi/webhooks/webhooks_public_keyset.json"

/* The keys of a [route:NAME] section, as bits of route_seen. */
enum { RK_METHODS = 1, RK_PREFIX = 2, RK_ROLE = 4, RK_SCOPES = 8 };

/* The keys of a [webhook:NAME] section, as bits of wh_seen. */
enum {
    WK_SCHEME = 1,
    WK_SECRET_FILE = 2,
    WK_VERIFY_TOKEN_FILE = 4,
    WK_TOLERANCE = 8,
    WK_MAX_BODY = 16,
    WK_DELIVER_TO = 32,
};

typedef struct loader {
    gw_config *cfg;
    char *err;
    size_t err_len;
    int failed;         /* err holds the first failure; later ones are dropped */
    const char *file;   /* the INI file's path, for messages */
    uint64_t file_seen; /* settings given by the file, one bit per settings[] entry */
    uint8_t route_seen[GW_ROUTES_MAX];
    uint8_t wh_seen[GW_WH_CONF_MAX]; /* WK_* bits per [webhook:NAME] section */
} loader;

/* ---- messages ---------------------------------------------------------------------- */

static void fail(loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(loader *ld, const char *fmt, ...)
{
    va_list ap;
    if (ld->failed)
        return;
    ld->failed = 1;
    if (ld->err_len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(ld->err, ld->err_len, fmt, ap);
    va_end(ap);
}

/* The " (in FILE)" / " (from PHIGATE_X)" that tells where a bad value was. */
static void where(char *buf, size_t len, source src, const char *name)
{
    snprintf(buf, len, src == SRC_FILE ? " (in %s)" : " (from %s)", name);
}

/*
 * A value made safe to quote in a message: at most QUOTE_MAX bytes, printable
 * ASCII only (anything else, and quotes and backslashes, become '?'). Never
 * used on a store URL.
 */
static const char *quote(const char *s, char buf[QUOTE_MAX + 4])
{
    size_t i;
    for (i = 0; s[i] != '\0' && i < QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') ? '?' : (char)c;
    }
    if (s[i] != '\0') {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* A control character, or bytes that are not UTF-8 (values from the
 * environment end up in JSON too). */
static int has_control(const char *s)
{
    const char *p;
    for (p = s; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return 1;
    }
    return !phg_internal_utf8_valid(s, (size_t)(p - s));
}

/* Copy s into a field of `size` bytes; 0 if it does not fit. */
static int copy_text(char *dst, size_t size, const char *s)
{
    size_t n = strlen(s);
    if (n >= size)
        return 0;
    memcpy(dst, s, n + 1);
    return 1;
}

/*
 * 0 if path can be opened for reading now and is not a directory (with
 * regular_only: is a regular file); else -1 with why, naming the setting
 * (name). Only opened, never read: the file may hold a secret. O_NONBLOCK
 * so that a FIFO cannot hang the start.
 */
static int readable(const char *name, const char *path, int regular_only, char *why, size_t len)
{
    char q[QUOTE_MAX + 4];
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        snprintf(why, len, "%s: cannot read \"%s\": %s", name, quote(path, q), strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(why, len, "%s: cannot read \"%s\": %s", name, quote(path, q), strerror(errno));
        close(fd);
        return -1;
    }
    if (S_ISDIR(st.st_mode) || (regular_only && !S_ISREG(st.st_mode))) {
        snprintf(why, len, "%s: cannot read \"%s\": %s", name, quote(path, q),
                 S_ISDIR(st.st_mode) ? "it is a directory" : "not a regular file");
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* ---- value parsers (each: 0, or -1 with why, naming the setting, in why) --------- */

/* Plain decimal digits, no sign, into *out; 0 on overflow or anything else. */
static int parse_decimal(const char *s, unsigned long long *out)
{
    unsigned long long v = 0;
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        if (v > (~0ULL - 9) / 10)
            return 0;
        v = v * 10 + (unsigned)(*s - '0');
    }
    *out = v;
    return 1;
}

/* Bytes with an optional binary suffix: k, kb, kib (any case) ... g, gb, gib. */
static int parse_size(const char *s, unsigned long long *out)
{
    char digits[32];
    unsigned long long v, mult = 1;
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9' && n < sizeof digits - 1) {
        digits[n] = s[n];
        n++;
    }
    if (n == 0 || (s[n] >= '0' && s[n] <= '9'))
        return 0;
    digits[n] = '\0';
    s += n;
    while (*s == ' ')
        s++;
    if (*s != '\0') {
        switch (*s) {
        case 'b':
        case 'B':
            mult = 1;
            break;
        case 'k':
        case 'K':
            mult = 1ULL << 10;
            break;
        case 'm':
        case 'M':
            mult = 1ULL << 20;
            break;
        case 'g':
        case 'G':
            mult = 1ULL << 30;
            break;
        default:
            return 0;
        }
        if (mult > 1 && strcasecmp(s + 1, "") != 0 && strcasecmp(s + 1, "b") != 0 &&
            strcasecmp(s + 1, "ib") != 0)
            return 0;
        if (mult == 1 && s[1] != '\0')
            return 0;
    }
    if (!parse_decimal(digits, &v) || v > (~0ULL) / mult)
        return 0;
    *out = v * mult;
    return 1;
}

static int parse_port(const char *s, int min, int *port)
{
    unsigned long long v;
    if (!parse_decimal(s, &v) || strlen(s) > 5 || v > 65535 || (long long)v < min)
        return 0;
    *port = (int)v;
    return 1;
}

/* A host name or IPv4 address: letters, digits, '.', '-', '_'; 1..255 bytes. */
static int host_name_ok(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || n > 255)
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* An IPv6 address, optionally with a %zone, without brackets. */
static int ipv6_ok(const char *s, size_t n)
{
    char buf[64];
    struct in6_addr a;
    const char *pct = memchr(s, '%', n);
    size_t an = pct != NULL ? (size_t)(pct - s) : n;
    size_t i;
    if (an == 0 || an >= sizeof buf || n > 255)
        return 0;
    memcpy(buf, s, an);
    buf[an] = '\0';
    if (inet_pton(AF_INET6, buf, &a) != 1)
        return 0;
    if (pct != NULL) {
        if (pct + 1 == s + n)
            return 0;
        for (i = an + 1; i < n; i++) {
            char c = s[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_'))
                return 0;
        }
    }
    return 1;
}

/*
 * "HOST:PORT" or "[IPv6]:PORT" (the brackets are not kept in host), port
 * min..65535. 0 if malformed.
 */
static int split_host_port(const char *s, int port_min, char *host, size_t host_len, int *port,
                           int port_required)
{
    const char *host_start, *host_end, *rest;
    if (s[0] == '[') {
        host_start = s + 1;
        host_end = strchr(host_start, ']');
        if (host_end == NULL || !ipv6_ok(host_start, (size_t)(host_end - host_start)))
            return 0;
        rest = host_end + 1;
    } else {
        host_start = s;
        host_end = strchr(s, ':');
        if (host_end == NULL)
            host_end = s + strlen(s);
        if (!host_name_ok(host_start, (size_t)(host_end - host_start)))
            return 0;
        rest = host_end;
    }
    if ((size_t)(host_end - host_start) >= host_len)
        return 0;
    if (*rest == '\0') {
        if (port_required)
            return 0;
    } else if (*rest != ':' || !parse_port(rest + 1, port_min, port)) {
        return 0;
    }
    memcpy(host, host_start, (size_t)(host_end - host_start));
    host[host_end - host_start] = '\0';
    return 1;
}

static int set_listen(gw_config *cfg, const char *v, char *why, size_t len)
{
    char host[sizeof cfg->listen_host], q[QUOTE_MAX + 4];
    int port = -1;
    if (!split_host_port(v, 0, host, sizeof host, &port, 1)) {
        snprintf(why, len,
                 "server.listen: not HOST:PORT or [IPv6]:PORT with a port 0..65535 (\"%s\")",
                 quote(v, q));
        return -1;
    }
    memcpy(cfg->listen_host, host, sizeof host);
    cfg->listen_port = port;
    return 0;
}

/*
 * http://host[:port][/base]; "" clears it. The URL is not quoted back: it
 * is not meant to hold credentials, but they are refused without echoing.
 */
static int set_upstream(gw_config *cfg, const char *v, char *why, size_t len)
{
    char authority[300], host[sizeof cfg->upstream_host];
    const char *rest, *slash;
    size_t an, bn;
    int port = 80;

    if (v[0] == '\0') {
        cfg->upstream_url[0] = cfg->upstream_host[0] = cfg->upstream_base[0] = '\0';
        cfg->upstream_port = 0;
        return 0;
    }
    if (strlen(v) >= sizeof cfg->upstream_url) {
        snprintf(why, len, "upstream.url: longer than %zu bytes", sizeof cfg->upstream_url - 1);
        return -1;
    }
    if (strncasecmp(v, "https://", 8) == 0) {
        snprintf(why, len, "upstream.url: https upstreams are not supported yet");
        return -1;
    }
    if (strncasecmp(v, "http://", 7) != 0) {
        snprintf(why, len, "upstream.url: not an http://HOST[:PORT][/BASE] URL");
        return -1;
    }
    rest = v + 7;
    slash = strchr(rest, '/');
    an = slash != NULL ? (size_t)(slash - rest) : strlen(rest);
    if (memchr(rest, '@', an) != NULL) {
        snprintf(why, len, "upstream.url: user names and passwords in the URL are not supported");
        return -1;
    }
    if (an > 0 && an < sizeof authority) {
        memcpy(authority, rest, an);
        authority[an] = '\0';
    }
    if (an == 0 || an >= sizeof authority ||
        !split_host_port(authority, 1, host, sizeof host, &port, 0)) {
        snprintf(why, len,
                 "upstream.url: not an http://HOST[:PORT][/BASE] URL (bad host or "
                 "port 1..65535)");
        return -1;
    }
    if (slash != NULL &&
        (strpbrk(slash, "?# ") != NULL || has_control(slash) || strstr(slash, "..") != NULL)) {
        snprintf(why, len,
                 "upstream.url: the base path must not hold a query, fragment, "
                 "space, control character or \"..\"");
        return -1;
    }
    bn = slash != NULL ? strlen(slash) : 0;
    while (bn > 0 && slash[bn - 1] == '/')
        bn--;
    memcpy(cfg->upstream_url, v, strlen(v) + 1);
    memcpy(cfg->upstream_host, host, sizeof host);
    cfg->upstream_port = port;
    if (bn > 0)
        memcpy(cfg->upstream_base, slash, bn);
    cfg->upstream_base[bn] = '\0';
    return 0;
}

/*
 * 1 if a store URL holds a password: in the user info (user:pass@) or as a
 * password= query parameter (libpq reads both).
 */
static int store_has_password(const char *url)
{
    const char *p = strstr(url, "://"), *q;
    if (p != NULL) {
        const char *c, *end = p + 3 + strcspn(p + 3, "/?#");
        const char *at = NULL;
        for (c = p + 3; c < end; c++) {
            if (*c == '@')
                at = c;
        }
        if (at != NULL && memchr(p + 3, ':', (size_t)(at - (p + 3))) != NULL)
            return 1;
    }
    q = strchr(url, '?');
    while (q != NULL) {
        if (strncasecmp(q + 1, "password=", 9) == 0)
            return 1;
        q = strchr(q + 1, '&');
    }
    return 0;
}

/* The URL with every password replaced by "***" (as phg_store_display_url). */
/* The URL as messages and GET /admin/config show it (store.c redacts). */
static void store_redact(const char *url, char *out, size_t out_len)
{
    char *r = phg_store_redact_url(url);
    snprintf(out, out_len, "%s", r != NULL ? r : "(a store URL)");
    free(r);
}

static int set_store(gw_config *cfg, const char *v, source src, char *why, size_t len)
{
    if (v[0] == '\0') {
        cfg->store_url[0] = '\0';
        return 0;
    }
    if (strlen(v) >= sizeof cfg->store_url) {
        snprintf(why, len, "store.url: longer than %zu bytes", sizeof cfg->store_url - 1);
        return -1;
    }
    if (has_control(v)) {
        snprintf(why, len, "store.url: holds a control character");
        return -1;
    }
    if (strncmp(v, "sqlite:", 7) != 0 && strncmp(v, "postgres://", 11) != 0 &&
        strncmp(v, "postgresql://", 13) != 0) {
        snprintf(why, len, "store.url: not a sqlite:PATH or postgres://USER@HOST:PORT/DB URL");
        return -1;
    }
    if (src != SRC_ENV && store_has_password(v)) {
        snprintf(why, len,
                 "store.url: a password is not accepted %s: put the URL in the PHIGATE_STORE "
                 "environment variable or in a file named by PHIGATE_STORE_FILE",
                 src == SRC_FILE ? "in the configuration file" : "on the command line");
        return -1;
    }
    memcpy(cfg->store_url, v, strlen(v) + 1);
    return 0;
}

/* [a-z0-9._:-]{1,64}, as the audit log requires. */
static int chain_ok(const char *s)
{
    size_t n = strlen(s), i;
    if (n == 0 || n > PHG_AUDIT_CHAIN_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

/* "gw-" + the host name, lowercased, other characters as '-', at most 64 bytes. */
static void default_chain(char *out, size_t out_len)
{
    char host[256];
    size_t i, o;
    if (gethostname(host, sizeof host) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    o = (size_t)snprintf(out, out_len, "gw-");
    for (i = 0; host[i] != '\0' && o < PHG_AUDIT_CHAIN_MAX && o + 1 < out_len; i++) {
        char c = host[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-'))
            c = '-';
        out[o++] = c;
    }
    out[o] = '\0';
}

/* A comma list of IP addresses; stored without spaces. */
static int set_trusted(gw_config *cfg, const char *v, char *why, size_t len)
{
    char out[sizeof cfg->trusted_proxy], item[64], q[QUOTE_MAX + 4];
    const char *p = v;
    size_t o = 0;
    while (*p != '\0') {
        const char *end;
        size_t n;
        struct in6_addr a6;
        struct in_addr a4;
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        end = p + strcspn(p, " ,");
        n = (size_t)(end - p);
        if (n >= sizeof item) {
            snprintf(why, len, "server.trusted_proxy: not an IP address (\"%s\")", quote(p, q));
            return -1;
        }
        memcpy(item, p, n);
        item[n] = '\0';
        if (inet_pton(AF_INET, item, &a4) != 1 && inet_pton(AF_INET6, item, &a6) != 1) {
            snprintf(why, len, "server.trusted_proxy: not an IP address (\"%s\")", quote(item, q));
            return -1;
        }
        if (o + n + 2 > sizeof out) {
            snprintf(why, len, "server.trusted_proxy: longer than %zu bytes", sizeof out - 1);
            return -1;
        }
        if (o > 0)
            out[o++] = ',';
        memcpy(out + o, item, n);
        o += n;
        p = end;
    }
    out[o] = '\0';
    memcpy(cfg->trusted_proxy, out, o + 1);
    return 0;
}

/*
 * An http:// or https:// URL (lower-case scheme) of at most max bytes, with a
 * host, only printable ASCII without spaces, and no user name or password
 * (secrets are never in the configuration). The same rule as the store's
 * deliver_to, so a URL that loads here would also be accepted there. 0, or
 * -1 with why (after "name: "), never quoting the URL.
 */
static int http_url_check(const char *name, const char *v, size_t max, char *why, size_t len)
{
    size_t n = strnlen(v, max + 1), pre, an;
    const unsigned char *p;
    if (n > max) {
        snprintf(why, len, "%s: longer than %zu bytes", name, max);
        return -1;
    }
    if (strncmp(v, "https://", 8) == 0)
        pre = 8;
    else if (strncmp(v, "http://", 7) == 0)
        pre = 7;
    else {
        snprintf(why, len, "%s: not an http:// or https:// URL", name);
        return -1;
    }
    for (p = (const unsigned char *)v; *p != '\0'; p++) {
        if (*p <= 0x20 || *p >= 0x7f) {
            snprintf(why, len, "%s: the URL holds a space, a control character or a non-ASCII byte",
                     name);
            return -1;
        }
    }
    an = strcspn(v + pre, "/?#");
    if (an == 0) {
        snprintf(why, len, "%s: the URL has no host", name);
        return -1;
    }
    if (memchr(v + pre, '@', an) != NULL) {
        snprintf(why, len,
                 "%s: user names and passwords in the URL are not accepted (no secret is "
                 "read from the configuration)",
                 name);
        return -1;
    }
    return 0;
}

/* webhooks.google_keyset: an http(s):// URL, or else a file path (read at
 * start: finish() checks it can be opened). */
static int set_keyset(gw_config *cfg, const char *v, char *why, size_t len)
{
    if (v[0] == '\0') {
        snprintf(why, len, "webhooks.google_keyset: empty (a file path or an http(s):// URL)");
        return -1;
    }
    if (strstr(v, "://") != NULL) {
        if (http_url_check("webhooks.google_keyset", v, sizeof cfg->wh_google_keyset - 1, why,
                           len) != 0)
            return -1;
    } else if (has_control(v) || strlen(v) >= sizeof cfg->wh_google_keyset) {
        snprintf(why, len, "webhooks.google_keyset: not a file path of at most %zu bytes",
                 sizeof cfg->wh_google_keyset - 1);
        return -1;
    }
    memcpy(cfg->wh_google_keyset, v, strlen(v) + 1);
    return 0;
}

/* Apply one value to one setting. 0, or -1 with why. */
static int apply(gw_config *cfg, const setting *s, const char *v, source src, char *why, size_t len)
{
    char *field = (char *)cfg + s->offset, q[QUOTE_MAX + 4];
    unsigned long long n;

    switch (s->kind) {
    case K_LISTEN:
        return set_listen(cfg, v, why, len);
    case K_UPSTREAM:
        return set_upstream(cfg, v, why, len);
    case K_STORE:
        return set_store(cfg, v, src, why, len);
    case K_TRUSTED:
        return set_trusted(cfg, v, why, len);
    case K_KEYSET:
        return set_keyset(cfg, v, why, len);
    case K_INT:
    case K_MS:
    case K_COUNT:
    case K_SECONDS:
        if (!parse_decimal(v, &n)) {
            snprintf(why, len, "%s.%s: not a %s (\"%s\")", s->section, s->key,
                     s->kind == K_MS        ? "number of milliseconds"
                     : s->kind == K_SECONDS ? "number of seconds"
                                            : "number",
                     quote(v, q));
            return -1;
        }
        goto range;
    case K_SIZE:
        if (!parse_size(v, &n)) {
            snprintf(why, len, "%s.%s: not a size (\"%s\")", s->section, s->key, quote(v, q));
            return -1;
        }
        goto range;
    case K_PATH:
        if (has_control(v) || !copy_text(field, s->size, v)) {
            snprintf(why, len, "%s.%s: not a file path of at most %zu bytes", s->section, s->key,
                     s->size - 1);
            return -1;
        }
        return 0;
    case K_CHAIN:
        if (!chain_ok(v)) {
            snprintf(why, len, "audit.chain: not 1..%d characters of [a-z0-9._:-] (\"%s\")",
                     PHG_AUDIT_CHAIN_MAX, quote(v, q));
            return -1;
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case K_LEVEL: {
        static const char *const levels[] = {"debug", "info", "warn", "error"};
        size_t i;
        for (i = 0; i < sizeof levels / sizeof levels[0]; i++) {
            if (strcasecmp(v, levels[i]) == 0) {
                memcpy(field, levels[i], strlen(levels[i]) + 1);
                return 0;
            }
        }
        if (strcasecmp(v, "warning") == 0) {
            memcpy(field, "warn", 5);
            return 0;
        }
        snprintf(why, len, "log.level: not debug, info, warn or error (\"%s\")", quote(v, q));
        return -1;
    }
    case K_RL_ENGINE:
    case K_RL_FALLBACK: {
        static const char *const engines[] = {"local", "redis", NULL};
        static const char *const fallbacks[] = {"local", "open", "closed", NULL};
        const char *const *list = s->kind == K_RL_ENGINE ? engines : fallbacks;
        size_t i;
        for (i = 0; list[i] != NULL; i++) {
            if (strcmp(v, list[i]) == 0) {
                memcpy(field, list[i], strlen(list[i]) + 1);
                return 0;
            }
        }
        snprintf(why, len, "%s.%s: not %s (\"%s\")", s->section, s->key,
                 s->kind == K_RL_ENGINE ? "local or redis" : "local, open or closed",
                 quote(v, q));
        return -1;
    }
    case K_REDIS: {
        /* ratelimit.redis or webhooks.redis: the URL and its parsed parts */
        int wh = strcmp(s->section, "webhooks") == 0;
        char *url = wh ? cfg->wh_redis_url : cfg->rl_redis_url;
        char *host = wh ? cfg->wh_redis_host : cfg->rl_redis_host;
        int *port = wh ? &cfg->wh_redis_port : &cfg->rl_redis_port;
        char e[160], parsed[sizeof cfg->rl_redis_host];
        int parsed_port = 0;
        _Static_assert(sizeof cfg->wh_redis_url == sizeof cfg->rl_redis_url &&
                           sizeof cfg->wh_redis_host == sizeof cfg->rl_redis_host,
                       "both Redis settings have the same fields");
        if (v[0] == '\0') {
            url[0] = host[0] = '\0';
            *port = 0;
            return 0;
        }
        if (has_control(v) || strlen(v) >= sizeof cfg->rl_redis_url ||
            gw_redis_url_parse(v, parsed, sizeof parsed, &parsed_port, e, sizeof e) != 0) {
            /* the URL is not quoted: it may hold a password */
            snprintf(why, len, "%s.%s: not a Redis URL redis://HOST:PORT%s%s", s->section, s->key,
                     has_control(v) ? "" : ": ", has_control(v) ? "" : e);
            return -1;
        }
        memcpy(url, v, strlen(v) + 1);
        memcpy(host, parsed, sizeof parsed);
        *port = parsed_port;
        return 0;
    }
    case K_POLICY: {
        phg_rl_policy pol;
        char e[160];
        phg_rl_policy *dst = strcmp(s->key, "default_admin") == 0 ? &cfg->rl_admin_policy
                                                                  : &cfg->rl_user_policy;
        if (v[0] == '\0') {
            field[0] = '\0';
            memset(dst, 0, sizeof *dst);
            return 0;
        }
        if (phg_rl_policy_parse(v, &pol, e, sizeof e) != PHG_OK) {
            snprintf(why, len, "%s.%s: %s (\"%s\")", s->section, s->key, e, quote(v, q));
            return -1;
        }
        *dst = pol;
        phg_rl_policy_format(&pol, field, s->size);
        if (pol.n == 0)
            field[0] = '\0';
        return 0;
    }
    case K_BOOL: {
        static const char *const yes[] = {"1", "true", "yes", "on"};
        static const char *const no[] = {"0", "false", "no", "off"};
        size_t i;
        for (i = 0; i < 4; i++) {
            if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
                *(int *)(void *)field = strcasecmp(v, yes[i]) == 0;
                return 0;
            }
        }
        snprintf(why, len, "%s.%s: not true or false (\"%s\")", s->section, s->key, quote(v, q));
        return -1;
    }
    }
    return -1;

range:
    if (n < (unsigned long long)s->min || n > (unsigned long long)s->max) {
        snprintf(why, len, "%s.%s: %llu is out of range (%lld..%lld)", s->section, s->key, n,
                 s->min, s->max);
        return -1;
    }
    /* the table's min..max fit the field's type (int: at most INT_MAX) */
    if (s->kind == K_SIZE || s->kind == K_COUNT) {
        assert(s->size == sizeof(size_t));
        *(size_t *)(void *)field = (size_t)n;
    } else if (s->kind == K_SECONDS) {
        assert(s->size == sizeof(int64_t));
        *(int64_t *)(void *)field = (int64_t)n;
    } else {
        assert(s->size == sizeof(int));
        *(int *)(void *)field = (int)n;
    }
    return 0;
}

/* Apply, and on failure record the message with where the value came from. */
static void apply_or_fail(loader *ld, const setting *s, const char *v, source src,
                          const char *origin)
{
    char why[512], at[GW_PATH_MAX + 16];
    if (ld->failed)
        return;
    if (apply(ld->cfg, s, v, src, why, sizeof why) == 0)
        return;
    where(at, sizeof at, src, origin);
    fail(ld, "%s%s", why, at);
}

static const setting *find_setting(const char *section, const char *key)
{
    size_t i;
    for (i = 0; i < N_SETTINGS; i++) {
        if (strcmp(settings[i].section, section) == 0 && strcmp(settings[i].key, key) == 0)
            return &settings[i];
    }
    return NULL;
}

/* ---- routes ---------------------------------------------------------------------- */

/* 1 if the NAME inih gave (after "route:" or "webhook:") is the section of
 * index i named real: the name itself, or the alias "#i" (SECTION_ALIAS_FROM). */
static int section_is(const char *given, size_t i, const char *real)
{
    char alias[24];
    if (given[0] != '#')
        return strcmp(given, real) == 0;
    snprintf(alias, sizeof alias, "#%zu", i);
    return strcmp(given, alias) == 0;
}

static int route_name_ok(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || n >= sizeof(((gw_route *)0)->name))
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* "*" or a comma list of method names, stored upper-case without spaces. */
static int set_methods(gw_route *r, const char *v, char *why, size_t len)
{
    char out[sizeof r->methods], q[QUOTE_MAX + 4];
    const char *p = v;
    size_t o = 0;
    if (strcmp(p, "*") == 0) {
        memcpy(r->methods, "*", 2);
        return 0;
    }
    while (*p != '\0') {
        size_t n = 0;
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        while (p[n] != '\0' && p[n] != ',' && p[n] != ' ')
            n++;
        if (n > 32 || o + n + 2 > sizeof out)
            goto bad;
        if (o > 0)
            out[o++] = ',';
        for (size_t i = 0; i < n; i++) {
            char c = p[i];
            if (c >= 'a' && c <= 'z')
                c = (char)(c - 'a' + 'A');
            if (c < 'A' || c > 'Z')
                goto bad;
            out[o++] = c;
        }
        p += n;
    }
    if (o == 0)
        goto bad;
    out[o] = '\0';
    memcpy(r->methods, out, o + 1);
    return 0;
bad:
    snprintf(why, len, "route:%s.methods: not * or a comma list of methods like GET,POST (\"%s\")",
             r->name, quote(v, q));
    return -1;
}

static int set_prefix(gw_route *r, const char *v, char *why, size_t len)
{
    char q[QUOTE_MAX + 4];
    if (v[0] != '/' || strstr(v, "..") != NULL || has_control(v) || strpbrk(v, "?#") != NULL ||
        !copy_text(r->prefix, sizeof r->prefix, v)) {
        snprintf(why, len,
                 "route:%s.prefix: must start with '/', hold no \"..\", '?', '#' or control "
                 "character, and be at most %d bytes (\"%s\")",
                 r->name, GW_PATH_MAX - 1, quote(v, q));
        return -1;
    }
    return 0;
}

static int set_scopes(gw_route *r, const char *v, char *why, size_t len)
{
    char q[QUOTE_MAX + 4], one[64];
    const char *p = v;
    uint32_t bits;
    if (strlen(v) <= 1024 && phg_apikey_scopes_parse(v, &bits) == PHG_OK) {
        r->scopes = bits;
        return 0;
    }
    /* Name the scope that is wrong. */
    while (*p != '\0') {
        size_t n;
        while (*p == ' ' || *p == ',')
            p++;
        n = strcspn(p, " ,");
        if (n == 0)
            break;
        if (n >= sizeof one) {
            snprintf(one, sizeof one, "%.*s", (int)(sizeof one - 1), p);
            break;
        }
        memcpy(one, p, n);
        one[n] = '\0';
        if (phg_apikey_scopes_parse(one, &bits) != PHG_OK)
            break;
        p += n;
    }
    snprintf(why, len,
             "route:%s.scopes: unknown scope \"%s\" (known: phi:encrypt phi:decrypt audit:read "
             "keys:admin webhooks:admin)",
             r->name, quote(*p != '\0' ? one : v, q));
    return -1;
}

static void on_route_key(loader *ld, const char *name, const char *key, const char *v)
{
    gw_config *cfg = ld->cfg;
    gw_route *r = NULL;
    char why[512], at[GW_PATH_MAX + 16];
    unsigned bit;
    size_t i;
    int rc = 0;

    for (i = 0; i < cfg->n_routes; i++) {
        if (section_is(name, i, cfg->routes[i].name)) {
            r = &cfg->routes[i];
            break;
        }
    }
    if (r == NULL) /* the pre-scan registered every route section */
        return;
    if (strcmp(key, "methods") == 0)
        bit = RK_METHODS;
    else if (strcmp(key, "prefix") == 0)
        bit = RK_PREFIX;
    else if (strcmp(key, "role") == 0)
        bit = RK_ROLE;
    else if (strcmp(key, "scopes") == 0)
        bit = RK_SCOPES;
    else {
        char q[QUOTE_MAX + 4];
        fail(ld, "unknown setting route:%s.%s (a route has methods, prefix, role, scopes) (in %s)",
             r->name, quote(key, q), ld->file);
        return;
    }
    if (ld->route_seen[i] & bit) {
        fail(ld, "route:%s.%s: set twice (in %s)", r->name, key, ld->file);
        return;
    }
    ld->route_seen[i] |= (uint8_t)bit;
    switch (bit) {
    case RK_METHODS:
        rc = set_methods(r, v, why, sizeof why);
        break;
    case RK_PREFIX:
        rc = set_prefix(r, v, why, sizeof why);
        break;
    case RK_ROLE: {
        phg_role role;
        char q[QUOTE_MAX + 4];
        if (phg_role_parse(v, &role) != PHG_OK) {
            snprintf(why, sizeof why, "route:%s.role: not user or admin (\"%s\")", r->name,
                     quote(v, q));
            rc = -1;
        } else {
            r->require_admin = role == PHG_ROLE_ADMIN;
        }
        break;
    }
    default:
        rc = set_scopes(r, v, why, sizeof why);
        break;
    }
    if (rc != 0) {
        where(at, sizeof at, SRC_FILE, ld->file);
        fail(ld, "%s%s", why, at);
    }
}

/* ---- webhook sources ([webhook:NAME]) ----------------------------------------------- */

/*
 * secret_file = PATH[, PATH...]: 1..GW_WH_SECRET_FILES_MAX paths, each
 * trimmed, each readable now. Only the paths are kept: webhooks.c reads the
 * secrets. name is "webhook:NAME.secret_file".
 */
static int set_secret_files(gw_wh_conf *w, const char *name, const char *v, char *why, size_t len)
{
    char path[GW_PATH_MAX], q[QUOTE_MAX + 4];
    const char *p = v;
    size_t n = 0, k;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t l = comma != NULL ? (size_t)(comma - p) : strlen(p);
        while (l > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            l--;
        }
        while (l > 0 && (p[l - 1] == ' ' || p[l - 1] == '\t'))
            l--;
        if (l == 0) {
            snprintf(why, len, "%s: an empty path in the list (PATH[, PATH...])", name);
            return -1;
        }
        if (n == GW_WH_SECRET_FILES_MAX) {
            snprintf(why, len, "%s: more than %d files", name, GW_WH_SECRET_FILES_MAX);
            return -1;
        }
        if (l >= sizeof path) {
            snprintf(why, len, "%s: a path longer than %zu bytes", name, sizeof path - 1);
            return -1;
        }
        memcpy(path, p, l);
        path[l] = '\0';
        if (has_control(path)) {
            snprintf(why, len, "%s: a path holds a control character", name);
            return -1;
        }
        for (k = 0; k < n; k++) {
            if (strcmp(w->secret_files[k], path) == 0) {
                snprintf(why, len, "%s: \"%s\" is listed twice", name, quote(path, q));
                return -1;
            }
        }
        /* a secret is read again at every reload: a pipe would be empty */
        if (readable(name, path, 1, why, len) != 0)
            return -1;
        memcpy(w->secret_files[n++], path, l + 1);
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    w->n_secret_files = n;
    return 0;
}

/* The schemes phg_webhook_scheme_parse accepts, for a message: whatever the
 * library implements, without a list to keep in step here. */
static void known_schemes(char *out, size_t len)
{
    size_t o = 0;
    int i;
    out[0] = '\0';
    for (i = 0; i < 32; i++) {
        const char *nm = phg_webhook_scheme_name((phg_webhook_scheme)i);
        phg_webhook_scheme sch;
        int w;
        if (strcmp(nm, "unknown") == 0 || phg_webhook_scheme_parse(nm, &sch) != PHG_OK)
            continue;
        w = snprintf(out + o, len - o, "%s%s", o > 0 ? ", " : "", nm);
        if (w < 0 || (size_t)w >= len - o)
            break;
        o += (size_t)w;
    }
}

static void on_webhook_key(loader *ld, const char *name, const char *key, const char *v)
{
    gw_config *cfg = ld->cfg;
    gw_wh_conf *w = NULL;
    char why[512], at[GW_PATH_MAX + 16], full[128], q[QUOTE_MAX + 4];
    unsigned long long n;
    unsigned bit;
    size_t i;
    int rc = 0;

    for (i = 0; i < cfg->n_wh_sources; i++) {
        if (section_is(name, i, cfg->wh_sources[i].name)) {
            w = &cfg->wh_sources[i];
            break;
        }
    }
    if (w == NULL) /* the pre-scan registered every webhook section */
        return;
    if (strcmp(key, "scheme") == 0)
        bit = WK_SCHEME;
    else if (strcmp(key, "secret_file") == 0)
        bit = WK_SECRET_FILE;
    else if (strcmp(key, "verify_token_file") == 0)
        bit = WK_VERIFY_TOKEN_FILE;
    else if (strcmp(key, "tolerance_s") == 0)
        bit = WK_TOLERANCE;
    else if (strcmp(key, "max_body") == 0)
        bit = WK_MAX_BODY;
    else if (strcmp(key, "deliver_to") == 0)
        bit = WK_DELIVER_TO;
    else {
        fail(ld,
             "unknown setting webhook:%s.%s (a webhook source has scheme, secret_file, "
             "verify_token_file, tolerance_s, max_body, deliver_to) (in %s)",
             w->name, quote(key, q), ld->file);
        return;
    }
    if (ld->wh_seen[i] & bit) {
        fail(ld, "webhook:%s.%s: set twice (in %s)", w->name, key, ld->file);
        return;
    }
    ld->wh_seen[i] |= (uint8_t)bit;
    snprintf(full, sizeof full, "webhook:%s.%s", w->name, key);
    switch (bit) {
    case WK_SCHEME: {
        phg_webhook_scheme sch;
        if (phg_webhook_scheme_parse(v, &sch) != PHG_OK) {
            char known[256];
            known_schemes(known, sizeof known);
            snprintf(why, sizeof why, "%s: unknown scheme \"%s\" (known: %s)", full, quote(v, q),
                     known);
            rc = -1;
        } else if (!copy_text(w->scheme, sizeof w->scheme, phg_webhook_scheme_name(sch))) {
            snprintf(why, sizeof why, "%s: the scheme's name is too long", full);
            rc = -1;
        }
        break;
    }
    case WK_SECRET_FILE:
        rc = set_secret_files(w, full, v, why, sizeof why);
        break;
    case WK_VERIFY_TOKEN_FILE:
        if (v[0] == '\0' || has_control(v) ||
            !copy_text(w->verify_token_file, sizeof w->verify_token_file, v)) {
            snprintf(why, sizeof why, "%s: not a file path of at most %d bytes", full,
                     GW_PATH_MAX - 1);
            rc = -1;
        } else {
            rc = readable(full, v, 1, why, sizeof why);
        }
        break;
    case WK_TOLERANCE:
        if (!parse_decimal(v, &n)) {
            snprintf(why, sizeof why, "%s: not a number of seconds (\"%s\")", full, quote(v, q));
            rc = -1;
        } else if (n < 1 || n > PHG_WEBHOOK_STORE_TOLERANCE_MAX) {
            snprintf(why, sizeof why, "%s: %llu is out of range (1..%d)", full, n,
                     PHG_WEBHOOK_STORE_TOLERANCE_MAX);
            rc = -1;
        } else {
            w->tolerance_s = (int64_t)n;
        }
        break;
    case WK_MAX_BODY:
        if (!parse_size(v, &n)) {
            snprintf(why, sizeof why, "%s: not a size (\"%s\")", full, quote(v, q));
            rc = -1;
        } else if (n < 1 || n > PHG_WEBHOOK_BODY_MAX) {
            snprintf(why, sizeof why, "%s: %llu is out of range (1..%u)", full, n,
                     (unsigned)PHG_WEBHOOK_BODY_MAX);
            rc = -1;
        } else {
            w->max_body = (size_t)n;
        }
        break;
    default: /* WK_DELIVER_TO */
        rc = http_url_check(full, v, sizeof w->deliver_to - 1, why, sizeof why);
        if (rc == 0)
            memcpy(w->deliver_to, v, strlen(v) + 1);
        break;
    }
    if (rc != 0) {
        where(at, sizeof at, SRC_FILE, ld->file);
        fail(ld, "%s%s", why, at);
    }
}

/* ---- the file ---------------------------------------------------------------------- */

static int on_ini(void *user, const char *section, const char *key, const char *value)
{
    loader *ld = user;
    const setting *s;
    char q[QUOTE_MAX + 4], q2[QUOTE_MAX + 4];
    size_t i;

    if (ld->failed)
        return 1;
    if (section[0] == '\0') {
        fail(ld, "setting \"%s\" is outside any section (in %s)", quote(key, q), ld->file);
        return 1;
    }
    if (strncmp(section, "route:", 6) == 0) {
        on_route_key(ld, section + 6, key, value);
        return 1;
    }
    if (strncmp(section, "webhook:", 8) == 0) {
        on_webhook_key(ld, section + 8, key, value);
        return 1;
    }
    s = find_setting(section, key);
    if (s == NULL) {
        fail(ld, "unknown setting %s.%s (in %s)", quote(section, q), quote(key, q2), ld->file);
        return 1;
    }
    i = (size_t)(s - settings);
    if (ld->file_seen & (UINT64_C(1) << i)) {
        fail(ld, "%s.%s: set twice (in %s)", s->section, s->key, ld->file);
        return 1;
    }
    ld->file_seen |= UINT64_C(1) << i;
    apply_or_fail(ld, s, value, SRC_FILE, ld->file);
    /* The handler never reports failure to inih: a non-zero return from
     * ini_parse_string then means a syntax error, and ours is in ld. */
    return 1;
}

/*
 * Read a whole file of at most max bytes into a NUL-terminated heap buffer.
 * 0; -1 with errno set; -2 if larger than max.
 */
static int read_limited(const char *path, size_t max, char **out, size_t *out_len)
{
    struct stat st;
    char *buf = NULL;
    size_t n = 0;
    int fd, rc = -1, saved;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0)
        goto out;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto out;
    }
    buf = malloc(max + 2);
    if (buf == NULL)
        goto out;
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out;
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            rc = -2;
            goto out;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    buf = NULL;
    rc = 0;
out:
    saved = errno;
    if (buf != NULL) {
        phg_wipe(buf, max + 2);
        free(buf);
    }
    close(fd);
    errno = saved;
    return rc;
}

static int section_known(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < sizeof sections / sizeof sections[0]; i++) {
        if (strlen(sections[i]) == n && memcmp(sections[i], s, n) == 0)
            return 1;
    }
    return 0;
}

/*
 * The line (len bytes at line) of a section header "[WHAT:NAME]..." whose
 * name "WHAT:NAME" is nn bytes: when nn is over SECTION_ALIAS_FROM, the
 * name is replaced in place by "WHAT:#index" (always shorter) and the rest
 * of the line kept. The line's new length.
 */
static size_t alias_section(char *line, size_t len, size_t nn, const char *what, size_t index)
{
    char alias[48];
    int an;
    if (nn <= SECTION_ALIAS_FROM)
        return len;
    an = snprintf(alias, sizeof alias, "%s:#%zu", what, index);
    assert(an > 0 && (size_t)an < nn);
    memcpy(line + 1, alias, (size_t)an);
    memmove(line + 1 + an, line + 1 + nn, len - 1 - nn);
    return len - (nn - (size_t)an);
}

/* A [webhook:NAME] header (NAME: n bytes at name) at line: registered in
 * file order with the defaults of a source. 0, or -1 after fail(). */
static int register_webhook(loader *ld, const char *name, size_t n, int line)
{
    gw_config *cfg = ld->cfg;
    char buf[PHG_WEBHOOK_SOURCE_NAME_MAX + 1], q[QUOTE_MAX + 4];
    gw_wh_conf *w;
    size_t k;
    _Static_assert(sizeof buf <= sizeof w->name, "a valid name fits gw_wh_conf.name");

    if (n < sizeof buf) {
        memcpy(buf, name, n);
        buf[n] = '\0';
    }
    if (n >= sizeof buf || !phg_webhook_source_name_valid(buf)) {
        char tmp[QUOTE_MAX + 1];
        snprintf(tmp, sizeof tmp, "%.*s", (int)(n < QUOTE_MAX ? n : QUOTE_MAX), name);
        fail(ld, "%s line %d: webhook source name \"%s\" is not 1..%d characters of [a-z0-9_-]",
             ld->file, line, quote(tmp, q), PHG_WEBHOOK_SOURCE_NAME_MAX);
        return -1;
    }
    for (k = 0; k < cfg->n_wh_sources; k++) {
        if (strcmp(cfg->wh_sources[k].name, buf) == 0) {
            fail(ld, "%s line %d: webhook:%s is defined twice", ld->file, line, buf);
            return -1;
        }
    }
    if (cfg->n_wh_sources == GW_WH_CONF_MAX) {
        fail(ld, "%s line %d: more than %d webhook sources", ld->file, line, GW_WH_CONF_MAX);
        return -1;
    }
    w = &cfg->wh_sources[cfg->n_wh_sources++];
    memset(w, 0, sizeof *w);
    memcpy(w->name, buf, n + 1);
    w->tolerance_s = PHG_WEBHOOK_TOLERANCE_DEFAULT;
    w->max_body = PHG_WEBHOOK_BODY_DEFAULT;
    return 0;
}

/*
 * Make the text inih will parse: each line's leading blanks removed (inih
 * would take an indented line as the continuation of the previous value, so
 * an indented "key = value" would silently become part of another setting),
 * lines longer than inih can take refused, NUL bytes refused. Also registers
 * the [route:NAME] and [webhook:NAME] sections in file order and refuses
 * unknown sections.
 * Line numbers stay those of the file.
 */
static int prepare(loader *ld, char *text, size_t n)
{
    gw_config *cfg = ld->cfg;
    char q[QUOTE_MAX + 4];
    size_t i = 0, o = 0;
    int line = 0;

    if (memchr(text, '\0', n) != NULL) {
        fail(ld, "%s: holds a NUL byte: not a text file", ld->file);
        return -1;
    }
    /* every value ends up in JSON (GET /admin/config): UTF-8 only */
    if (!phg_internal_utf8_valid(text, n)) {
        fail(ld, "%s: not valid UTF-8", ld->file);
        return -1;
    }
    while (i < n) {
        size_t start, end, len;
        line++;
        while (i < n && (text[i] == ' ' || text[i] == '\t'))
            i++;
        start = i;
        while (i < n && text[i] != '\n')
            i++;
        end = i;
        len = end - start;
        if (len > LINE_MAX_BYTES) {
            fail(ld, "%s line %d: longer than %d bytes, the longest line the INI parser takes",
                 ld->file, line, LINE_MAX_BYTES);
            return -1;
        }
        memmove(text + o, text + start, len);
        if (len > 0 && text[o] == '[') {
            const char *close = memchr(text + o + 1, ']', len > 0 ? len - 1 : 0);
            const char *name = text + o + 1;
            size_t nn = close != NULL ? (size_t)(close - name) : 0;
            if (close != NULL && nn > 6 && memcmp(name, "route:", 6) == 0) {
                gw_route *r;
                size_t k;
                if (!route_name_ok(name + 6, nn - 6)) {
                    char tmp[QUOTE_MAX + 1];
                    snprintf(tmp, sizeof tmp, "%.*s",
                             (int)(nn - 6 < QUOTE_MAX ? nn - 6 : QUOTE_MAX), name + 6);
                    fail(ld,
                         "%s line %d: route name \"%s\" is not 1..63 characters of "
                         "[A-Za-z0-9._-]",
                         ld->file, line, quote(tmp, q));
                    return -1;
                }
                for (k = 0; k < cfg->n_routes; k++) {
                    if (strlen(cfg->routes[k].name) == nn - 6 &&
                        memcmp(cfg->routes[k].name, name + 6, nn - 6) == 0) {
                        fail(ld, "%s line %d: route:%s is defined twice", ld->file, line,
                             cfg->routes[k].name);
                        return -1;
                    }
                }
                if (cfg->n_routes == GW_ROUTES_MAX) {
                    fail(ld, "%s line %d: more than %d routes", ld->file, line, GW_ROUTES_MAX);
                    return -1;
                }
                r = &cfg->routes[cfg->n_routes++];
                memset(r, 0, sizeof *r);
                memcpy(r->name, name + 6, nn - 6);
                memcpy(r->methods, "*", 2);
                len = alias_section(text + o, len, nn, "route", cfg->n_routes - 1);
            } else if (close != NULL && nn >= 8 && memcmp(name, "webhook:", 8) == 0) {
                if (register_webhook(ld, name + 8, nn - 8, line) != 0)
                    return -1;
                len = alias_section(text + o, len, nn, "webhook", cfg->n_wh_sources - 1);
            } else if (close == NULL) {
                /* inih would refuse it too, but keep the keys that follow
                 * under the previous section and report those first. */
                fail(ld, "%s line %d: a section header without ']'", ld->file, line);
                return -1;
            } else if (!section_known(name, nn)) {
                char tmp[QUOTE_MAX + 1];
                snprintf(tmp, sizeof tmp, "%.*s", (int)(nn < QUOTE_MAX ? nn : QUOTE_MAX), name);
                fail(ld, "unknown section [%s] (%s line %d)", quote(tmp, q), ld->file, line);
                return -1;
            }
        }
        o += len;
        if (i < n) {
            text[o++] = '\n';
            i++;
        }
    }
    text[o] = '\0';
    return 0;
}

static void load_file(loader *ld, const char *path)
{
    char *text = NULL;
    size_t n = 0, i;
    int rc;

    rc = read_limited(path, CONFIG_FILE_MAX, &text, &n);
    if (rc == -2) {
        fail(ld, "%s: larger than %d bytes (1 MiB)", path, CONFIG_FILE_MAX);
        return;
    }
    if (rc != 0) {
        fail(ld, "%s: cannot read the configuration file: %s", path, strerror(errno));
        return;
    }
    if (prepare(ld, text, n) == 0) {
        rc = ini_parse_string(text, on_ini, ld);
        if (rc > 0)
            fail(ld, "%s line %d: not a [section], key = value or comment", path, rc);
        else if (rc < 0)
            fail(ld, "%s: the INI parser failed (%d)", path, rc);
    }
    for (i = 0; !ld->failed && i < ld->cfg->n_routes; i++) {
        if (!(ld->route_seen[i] & RK_PREFIX))
            fail(ld, "route:%s.prefix: not set (in %s)", ld->cfg->routes[i].name, path);
    }
    for (i = 0; !ld->failed && i < ld->cfg->n_wh_sources; i++) {
        static const struct {
            unsigned bit;
            const char *key;
        } required[] = {
            {WK_SCHEME, "scheme"}, {WK_SECRET_FILE, "secret_file"}, {WK_DELIVER_TO, "deliver_to"}};
        size_t k;
        for (k = 0; k < sizeof required / sizeof required[0] && !ld->failed; k++) {
            if (!(ld->wh_seen[i] & required[k].bit))
                fail(ld, "webhook:%s.%s: not set (in %s)", ld->cfg->wh_sources[i].name,
                     required[k].key, path);
        }
    }
    phg_wipe(text, n);
    free(text);
}

/* ---- the environment ------------------------------------------------------------------ */

/* getenv, with an empty value taken as unset. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

static void env_name(const setting *s, char *buf, size_t len)
{
    size_t i;
    snprintf(buf, len, "PHIGATE_%s_%s", s->section, s->key);
    for (i = 0; buf[i] != '\0'; i++) {
        if (buf[i] >= 'a' && buf[i] <= 'z')
            buf[i] = (char)(buf[i] - 'a' + 'A');
    }
}

/* The store URL from the file PHIGATE_STORE_FILE names. */
static void store_from_file(loader *ld, const setting *s, const char *path)
{
    char *text = NULL;
    size_t n = 0, cap;
    int rc = read_limited(path, STORE_FILE_MAX, &text, &n);

    if (rc == -2) {
        fail(ld, "store.url: %s is larger than %d bytes (from PHIGATE_STORE_FILE)", path,
             STORE_FILE_MAX);
        return;
    }
    if (rc != 0) {
        fail(ld, "store.url: cannot read %s: %s (from PHIGATE_STORE_FILE)", path, strerror(errno));
        return;
    }
    cap = n;
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        text[--n] = '\0';
    if (n == 0)
        fail(ld, "store.url: %s is empty (from PHIGATE_STORE_FILE)", path);
    else
        apply_or_fail(ld, s, text, SRC_ENV, "PHIGATE_STORE_FILE");
    phg_wipe(text, cap);
    free(text);
}

static void load_env(loader *ld)
{
    size_t i;
    for (i = 0; i < N_SETTINGS && !ld->failed; i++) {
        const setting *s = &settings[i];
        char name[64];
        const char *full, *shortv = NULL, *file = NULL;

        env_name(s, name, sizeof name);
        full = env(name);
        if (s->shortcut != NULL)
            shortv = env(s->shortcut);
        if (s->kind == K_STORE)
            file = env("PHIGATE_STORE_FILE");
        if ((full != NULL) + (shortv != NULL) + (file != NULL) > 1) {
            if (s->kind == K_STORE)
                fail(ld, "store.url: set only one of PHIGATE_STORE, PHIGATE_STORE_URL and "
                         "PHIGATE_STORE_FILE");
            else
                fail(ld, "%s.%s: %s and %s are both set: use one", s->section, s->key, s->shortcut,
                     name);
            return;
        }
        if (file != NULL)
            store_from_file(ld, s, file);
        else if (shortv != NULL)
            apply_or_fail(ld, s, shortv, SRC_ENV, s->shortcut);
        else if (full != NULL)
            apply_or_fail(ld, s, full, SRC_ENV, name);
    }
}

/* ---- checks across settings ---------------------------------------------------------- */

/* name: the setting, "server.tls_cert" */
static void check_readable(loader *ld, const char *name, const char *path)
{
    char why[512];
    if (readable(name, path, 0, why, sizeof why) != 0)
        fail(ld, "%s", why);
}

static void finish(loader *ld)
{
    gw_config *cfg = ld->cfg;
    if (ld->failed)
        return;
    if ((cfg->tls_cert[0] != '\0') != (cfg->tls_key[0] != '\0')) {
        fail(ld, "server.%s: set tls_cert and tls_key together",
             cfg->tls_cert[0] != '\0' ? "tls_key" : "tls_cert");
        return;
    }
    if (cfg->tls_cert[0] != '\0') {
        check_readable(ld, "server.tls_cert", cfg->tls_cert);
        check_readable(ld, "server.tls_key", cfg->tls_key);
        if (ld->failed)
            return;
    }
    if (cfg->store_url[0] == '\0') {
        fail(ld, "store.url: not set (give --store, PHIGATE_STORE or [store] url)");
        return;
    }
    store_redact(cfg->store_url, cfg->store_display, sizeof cfg->store_display);
    if (cfg->audit_chain[0] == '\0')
        default_chain(cfg->audit_chain, sizeof cfg->audit_chain);
    if (cfg->rl_engine[0] == '\0')
        memcpy(cfg->rl_engine, cfg->rl_redis_url[0] != '\0' ? "redis" : "local", 6);
    if (strcmp(cfg->rl_engine, "redis") == 0 && cfg->rl_redis_url[0] == '\0') {
        fail(ld, "ratelimit.redis: not set, and ratelimit.engine is redis (give --redis, "
                 "PHIGATE_REDIS or [ratelimit] redis)");
        return;
    }
    if (cfg->wh_backoff_max_ms < cfg->wh_backoff_ms) {
        fail(ld, "webhooks.backoff_max_ms: %d is less than webhooks.backoff_ms (%d)",
             cfg->wh_backoff_max_ms, cfg->wh_backoff_ms);
        return;
    }
    if (cfg->wh_ca_file[0] != '\0')
        check_readable(ld, "webhooks.ca_file", cfg->wh_ca_file);
    if (!ld->failed && strstr(cfg->wh_google_keyset, "://") == NULL)
        check_readable(ld, "webhooks.google_keyset", cfg->wh_google_keyset);
    if (ld->failed)
        return;
    /* One Redis for both jobs unless told otherwise. */
    if (cfg->wh_redis_url[0] == '\0' && cfg->rl_redis_url[0] != '\0') {
        memcpy(cfg->wh_redis_url, cfg->rl_redis_url, sizeof cfg->wh_redis_url);
        memcpy(cfg->wh_redis_host, cfg->rl_redis_host, sizeof cfg->wh_redis_host);
        cfg->wh_redis_port = cfg->rl_redis_port;
    }
}

static void defaults(gw_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    memcpy(cfg->listen_host, "127.0.0.1", 10);
    cfg->listen_port = 8080;
    cfg->threads = 0;
    cfg->max_connections = 10000;
    cfg->max_header_bytes = 16 * 1024;
    cfg->max_body_bytes = 10 * 1024 * 1024;
    cfg->header_timeout_ms = 10000;
    cfg->idle_timeout_ms = 60000;
    cfg->drain_timeout_ms = 10000;
    cfg->upstream_connect_timeout_ms = 2000;
    cfg->upstream_timeout_ms = 30000;
    cfg->upstream_pool = 64;
    cfg->phi_batch_max = 1000;
    memcpy(cfg->log_level, "info", 5);
    cfg->admin_enabled = 1;
    cfg->rl_timeout_ms = 50;
    memcpy(cfg->rl_fallback, "local", 6);
    cfg->rl_instances = 1;
    cfg->wh_enabled = 1;
    cfg->wh_workers = 2;
    cfg->wh_max_attempts = 12;
    cfg->wh_max_age_s = 259200;
    cfg->wh_backoff_ms = 1000;
    cfg->wh_backoff_max_ms = 3600000;
    cfg->wh_timeout_ms = 10000;
    cfg->wh_keep_delivered_s = 604800;
    memcpy(cfg->wh_google_keyset, WH_GOOGLE_KEYSET_DEFAULT, sizeof WH_GOOGLE_KEYSET_DEFAULT);
}

int gw_config_load(gw_config *cfg, const gw_flags *flags, char *err, size_t err_len)
{
    loader ld;
    const char *file = NULL;

    assert(cfg != NULL);
    assert(err != NULL || err_len == 0);
    memset(&ld, 0, sizeof ld);
    ld.cfg = cfg;
    ld.err = err;
    ld.err_len = err_len;
    if (err_len > 0)
        err[0] = '\0';
    defaults(cfg);

    if (flags != NULL && flags->config_file != NULL)
        file = flags->config_file;
    else
        file = env("PHIGATE_CONFIG");
    if (file != NULL) {
        if (!copy_text(cfg->config_file, sizeof cfg->config_file, file) || file[0] == '\0') {
            fail(&ld, "the configuration file's path is empty or longer than %d bytes",
                 GW_PATH_MAX - 1);
            goto out;
        }
        ld.file = cfg->config_file;
        load_file(&ld, file);
    }
    if (!ld.failed)
        load_env(&ld);
    if (!ld.failed && flags != NULL) {
        if (flags->listen != NULL)
            apply_or_fail(&ld, find_setting("server", "listen"), flags->listen, SRC_FLAG,
                          "--listen");
        if (flags->upstream != NULL)
            apply_or_fail(&ld, find_setting("upstream", "url"), flags->upstream, SRC_FLAG,
                          "--upstream");
        if (flags->store != NULL)
            apply_or_fail(&ld, find_setting("store", "url"), flags->store, SRC_FLAG, "--store");
        if (flags->redis != NULL)
            apply_or_fail(&ld, find_setting("ratelimit", "redis"), flags->redis, SRC_FLAG,
                          "--redis");
        if (flags->threads != 0) {
            char num[24];
            if (flags->threads < 0)
                fail(&ld, "server.threads: %d is out of range (0..256) (from --threads)",
                     flags->threads);
            snprintf(num, sizeof num, "%d", flags->threads);
            apply_or_fail(&ld, find_setting("server", "threads"), num, SRC_FLAG, "--threads");
        }
    }
    finish(&ld);
out:
    if (ld.failed) {
        /* Leave no half-loaded configuration, and no store URL, behind. */
        phg_wipe(cfg->store_url, sizeof cfg->store_url);
        return -1;
    }
    return 0;
}

/* ---- the effective configuration as JSON ---------------------------------------------- */

static json_t *scopes_json(uint32_t scopes)
{
    char names[256], *p, *save = NULL;
    json_t *arr = json_array();
    if (arr == NULL)
        return NULL;
    phg_apikey_scopes_format(scopes, names, sizeof names);
    for (p = strtok_r(names, " ", &save); p != NULL; p = strtok_r(NULL, " ", &save)) {
        if (json_array_append_new(arr, json_string(p)) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/*
 * The "webhooks" object: the [webhooks] settings and the [webhook:NAME]
 * sources. The Redis shows as HOST:PORT only; a source shows the paths of
 * its secret files, never what they hold (this file never reads them).
 */
static json_t *webhooks_json(const gw_config *cfg)
{
    json_t *o = NULL, *sources = json_array();
    char redis[300] = "";
    size_t i, k;

    if (sources == NULL)
        return NULL;
    for (i = 0; i < cfg->n_wh_sources; i++) {
        const gw_wh_conf *w = &cfg->wh_sources[i];
        json_t *files = json_array(), *src;
        for (k = 0; files != NULL && k < w->n_secret_files; k++) {
            if (json_array_append_new(files, json_string(w->secret_files[k])) != 0) {
                json_decref(files);
                files = NULL;
            }
        }
        if (files == NULL) {
            json_decref(sources);
            return NULL;
        }
        /* "o" takes files, even when the packing fails */
        src = json_pack("{s:s,s:s,s:I,s:I,s:s,s:I,s:o,s:s}", "name", w->name, "scheme", w->scheme,
                        "tolerance_s", (json_int_t)w->tolerance_s, "max_body",
                        (json_int_t)w->max_body, "deliver_to", w->deliver_to, "n_secret_files",
                        (json_int_t)w->n_secret_files, "secret_files", files, "verify_token_file",
                        w->verify_token_file);
        if (src == NULL || json_array_append_new(sources, src) != 0) {
            json_decref(sources);
            return NULL;
        }
    }
    if (cfg->wh_redis_host[0] != '\0')
        snprintf(redis, sizeof redis, strchr(cfg->wh_redis_host, ':') != NULL ? "[%s]:%d" : "%s:%d",
                 cfg->wh_redis_host, cfg->wh_redis_port);
    o = json_pack("{s:b,s:i,s:i,s:I,s:i,s:i,s:i,s:I,s:s,s:s,s:s,s:o}", "enabled",
                  cfg->wh_enabled != 0, "workers", cfg->wh_workers, "max_attempts",
                  cfg->wh_max_attempts, "max_age_s", (json_int_t)cfg->wh_max_age_s, "backoff_ms",
                  cfg->wh_backoff_ms, "backoff_max_ms", cfg->wh_backoff_max_ms, "timeout_ms",
                  cfg->wh_timeout_ms, "keep_delivered_s", (json_int_t)cfg->wh_keep_delivered_s,
                  "google_keyset", cfg->wh_google_keyset, "ca_file", cfg->wh_ca_file, "redis",
                  redis, "sources", sources);
    return o;
}

json_t *gw_config_json(const gw_config *cfg)
{
    json_t *root = NULL, *routes = NULL;
    char listen[300];
    size_t i;

    assert(cfg != NULL);
    if (strchr(cfg->listen_host, ':') != NULL)
        snprintf(listen, sizeof listen, "[%s]:%d", cfg->listen_host, cfg->listen_port);
    else
        snprintf(listen, sizeof listen, "%s:%d", cfg->listen_host, cfg->listen_port);
    routes = json_array();
    if (routes == NULL)
        return NULL;
    for (i = 0; i < cfg->n_routes; i++) {
        const gw_route *r = &cfg->routes[i];
        json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:o?}", "name", r->name, "methods", r->methods,
                              "prefix", r->prefix, "role", r->require_admin ? "admin" : "user",
                              "scopes", scopes_json(r->scopes));
        if (o == NULL || json_array_append_new(routes, o) != 0) {
            json_decref(routes);
            return NULL;
        }
    }
    /* store_url is never read here: only its redacted form. */
    root = json_pack(
        "{s:s,"
        "s:{s:s,s:s,s:i,s:i,s:s,s:s,s:b,s:i,s:I,s:I,s:i,s:i,s:i,s:s},"
        "s:{s:s,s:s,s:i,s:s,s:i,s:i,s:i},"
        "s:{s:s},s:{s:s},s:{s:I},s:{s:s},s:{s:b},"
        "s:o}",
        "config_file", cfg->config_file, "server", "listen", listen, "listen_host",
        cfg->listen_host, "listen_port", cfg->listen_port, "threads", cfg->threads, "tls_cert",
        cfg->tls_cert, "tls_key", cfg->tls_key, "tls", cfg->tls_cert[0] != '\0', "max_connections",
        cfg->max_connections, "max_header_bytes", (json_int_t)cfg->max_header_bytes,
        "max_body_bytes", (json_int_t)cfg->max_body_bytes, "header_timeout_ms",
        cfg->header_timeout_ms, "idle_timeout_ms", cfg->idle_timeout_ms, "drain_timeout_ms",
        cfg->drain_timeout_ms, "trusted_proxy", cfg->trusted_proxy, "upstream", "url",
        cfg->upstream_url, "host", cfg->upstream_host, "port", cfg->upstream_port, "base",
        cfg->upstream_base, "connect_timeout_ms", cfg->upstream_connect_timeout_ms, "timeout_ms",
        cfg->upstream_timeout_ms, "pool", cfg->upstream_pool, "store", "url", cfg->store_display,
        "audit", "chain", cfg->audit_chain, "phi", "batch_max", (json_int_t)cfg->phi_batch_max,
        "log", "level", cfg->log_level, "admin", "enabled", cfg->admin_enabled != 0, "routes",
        routes);
    if (root != NULL) {
        /* the Redis URL holds no password (gw_redis_url_parse refuses one) */
        json_t *rl = json_pack("{s:s,s:s,s:i,s:s,s:i,s:s,s:s}", "engine", cfg->rl_engine, "redis",
                               cfg->rl_redis_url, "timeout_ms", cfg->rl_timeout_ms, "fallback",
                               cfg->rl_fallback, "instances", cfg->rl_instances, "default_user",
                               cfg->rl_default_user, "default_admin", cfg->rl_default_admin);
        if (rl == NULL || json_object_set_new(root, "ratelimit", rl) != 0) {
            json_decref(root);
            return NULL;
        }
    }
    if (root != NULL) {
        json_t *wh = webhooks_json(cfg);
        if (wh == NULL || json_object_set_new(root, "webhooks", wh) != 0) {
            json_decref(root);
            return NULL;
        }
    }
    return root;
}

/* ---- route matching -------------------------------------------------------------------- */

/* 1 if method is one of the route's methods. */
static int method_matches(const gw_route *r, const char *method)
{
    const char *p = r->methods;
    size_t mn;
    if (strcmp(p, "*") == 0)
        return 1;
    /* HEAD is GET without the body: most upstreams run the GET handler for
     * it, so a rule on GET covers HEAD too */
    if (strcmp(method, "HEAD") == 0 && method_matches(r, "GET"))
        return 1;
    mn = strlen(method);
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        if (n == mn && memcmp(p, method, n) == 0)
            return 1;
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

/*
 * The path with "//" collapsed and "." and ".." segments resolved, as an
 * upstream would read it, so that "/v1//internal" or "/x/../internal" cannot
 * slip past a route on "/internal". out has room for strlen(path) + 2.
 */
static void normalize_path(const char *path, char *out)
{
    size_t o = 0;
    const char *p = path;
    out[o++] = '/';
    while (*p != '\0') {
        size_t n;
        while (*p == '/')
            p++;
        n = strcspn(p, "/");
        if (n == 0)
            break;
        if (n == 1 && p[0] == '.') {
            /* nothing */
        } else if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (o > 1) {
                o--; /* the '/' after the last segment */
                while (o > 0 && out[o - 1] != '/')
                    o--;
            }
        } else {
            memcpy(out + o, p, n);
            o += n;
            if (p[n] == '/')
                out[o++] = '/';
        }
        p += n;
    }
    /* A trailing "." or ".." segment leaves the path ending with '/'. */
    out[o] = '\0';
}

/* A segment ends at '/', and also at ';': "/internal;jsessionid=1" is
 * "/internal" to a servlet container, so it must not miss the route. */
static int prefix_matches(const char *prefix, size_t pn, const char *path)
{
    if (strncmp(path, prefix, pn) != 0)
        return 0;
    return path[pn] == '\0' || path[pn] == '/' || path[pn] == ';' || prefix[pn - 1] == '/';
}

const gw_route *gw_route_match(const gw_config *cfg, const char *method, const char *path)
{
    char stack_buf[2048], *norm = stack_buf, *heap = NULL;
    const gw_route *best = NULL;
    size_t best_len = 0, n, i;

    assert(cfg != NULL && method != NULL && path != NULL);
    if (cfg->n_routes == 0)
        return NULL;
    n = strlen(path);
    if (n + 2 > sizeof stack_buf) {
        heap = malloc(n + 2);
        norm = heap;
    }
    if (norm != NULL)
        normalize_path(path, norm);
    else
        norm = (char *)path; /* out of memory: match the path as given */
    for (i = 0; i < cfg->n_routes; i++) {
        const gw_route *r = &cfg->routes[i];
        size_t pn = strlen(r->prefix);
        /* Strictly longer only: of equal prefixes the first listed wins. */
        if (pn == 0 || (best != NULL && pn <= best_len))
            continue;
        if (!method_matches(r, method) || !prefix_matches(r->prefix, pn, norm))
            continue;
        best = r;
        best_len = pn;
    }
    free(heap);
    return best;
}

void gw_rl_policy_for(const gw_config *cfg, phg_role role, const char *rate_limit,
                      phg_rl_policy *out, const char **from)
{
    assert(cfg != NULL && out != NULL);
    /* a stored text that no longer parses (it was validated when stored)
     * falls back to the role's default rather than to no limit */
    if (rate_limit != NULL && rate_limit[0] != '\0' &&
        phg_rl_policy_parse(rate_limit, out, NULL, 0) == PHG_OK) {
        if (from)
            *from = "key";
        return;
    }
    *out = role == PHG_ROLE_ADMIN ? cfg->rl_admin_policy : cfg->rl_user_policy;
    if (from)
        *from = out->n > 0 ? "default" : "none";
}
