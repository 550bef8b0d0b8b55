/*
 * tests/unit/test_config.c: the gateway's configuration (src/server/config.c,
 * gw.h "configuration") against docs/configuration.md: defaults, a full
 * file, every kind of bad value naming its setting and where it came from,
 * unknown sections and keys, the precedence flags > environment > file >
 * defaults, store passwords (refused from the file and flags, accepted from
 * the environment and PHIGATE_STORE_FILE, never in gw_config_json), listen
 * and upstream parsing, the file size and line length limits, route
 * matching, [webhooks] settings and [webhook:NAME] sources (whose secret
 * files are only checked, never read, never shown).
 *
 * Every file is written under a mkdtemp directory; every PHIGATE_* variable
 * is cleared before and after each test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static char g_dir[256];
static gw_config *g_cfg;
static char g_err[1024];

/* Every environment variable config.c reads. */
static const char *const ENV_NAMES[] = {
    "PHIGATE_CONFIG",
    "PHIGATE_LISTEN",
    "PHIGATE_UPSTREAM",
    "PHIGATE_STORE",
    "PHIGATE_STORE_FILE",
    "PHIGATE_THREADS",
    "PHIGATE_SERVER_LISTEN",
    "PHIGATE_SERVER_THREADS",
    "PHIGATE_SERVER_TLS_CERT",
    "PHIGATE_SERVER_TLS_KEY",
    "PHIGATE_SERVER_MAX_CONNECTIONS",
    "PHIGATE_SERVER_MAX_HEADER_BYTES",
    "PHIGATE_SERVER_MAX_BODY_BYTES",
    "PHIGATE_SERVER_HEADER_TIMEOUT_MS",
    "PHIGATE_SERVER_IDLE_TIMEOUT_MS",
    "PHIGATE_SERVER_DRAIN_TIMEOUT_MS",
    "PHIGATE_SERVER_TRUSTED_PROXY",
    "PHIGATE_UPSTREAM_URL",
    "PHIGATE_UPSTREAM_CONNECT_TIMEOUT_MS",
    "PHIGATE_UPSTREAM_TIMEOUT_MS",
    "PHIGATE_UPSTREAM_POOL",
    "PHIGATE_STORE_URL",
    "PHIGATE_AUDIT_CHAIN",
    "PHIGATE_PHI_BATCH_MAX",
    "PHIGATE_LOG_LEVEL",
    "PHIGATE_ADMIN_ENABLED",
    "PHIGATE_REDIS",
    "PHIGATE_RATELIMIT_ENGINE",
    "PHIGATE_RATELIMIT_REDIS",
    "PHIGATE_RATELIMIT_TIMEOUT_MS",
    "PHIGATE_RATELIMIT_FALLBACK",
    "PHIGATE_RATELIMIT_INSTANCES",
    "PHIGATE_RATELIMIT_DEFAULT_USER",
    "PHIGATE_RATELIMIT_DEFAULT_ADMIN",
    "PHIGATE_WEBHOOKS_ENABLED",
    "PHIGATE_WEBHOOKS_WORKERS",
    "PHIGATE_WEBHOOKS_MAX_ATTEMPTS",
    "PHIGATE_WEBHOOKS_MAX_AGE_S",
    "PHIGATE_WEBHOOKS_BACKOFF_MS",
    "PHIGATE_WEBHOOKS_BACKOFF_MAX_MS",
    "PHIGATE_WEBHOOKS_TIMEOUT_MS",
    "PHIGATE_WEBHOOKS_KEEP_DELIVERED_S",
    "PHIGATE_WEBHOOKS_GOOGLE_KEYSET",
    "PHIGATE_WEBHOOKS_CA_FILE",
    "PHIGATE_WEBHOOKS_REDIS",
};

static void clear_env(void)
{
    size_t i;
    for (i = 0; i < sizeof ENV_NAMES / sizeof ENV_NAMES[0]; i++)
        unsetenv(ENV_NAMES[i]);
}

/* Write name under the test directory; the path goes to a static buffer. */
static const char *write_file(const char *name, const char *text)
{
    static char paths[8][512];
    static int next;
    char *path = paths[next++ % 8];
    FILE *f;
    snprintf(path, 512, "%s/%s", g_dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    return path;
}

/* Load with only a file (and a store flag unless the text sets one). */
static int load_text(const char *text)
{
    gw_flags flags = {0};
    flags.config_file = write_file("t.ini", text);
    if (strstr(text, "[store]") == NULL)
        flags.store = "sqlite:/tmp/x.db";
    return gw_config_load(g_cfg, &flags, g_err, sizeof g_err);
}

static int load_flags(const gw_flags *flags)
{
    return gw_config_load(g_cfg, flags, g_err, sizeof g_err);
}

static void expect_err(int rc, const char *want)
{
    EXPECT(rc == -1, "expected a failure with \"%s\", got success", want);
    EXPECT(strstr(g_err, want) != NULL, "error \"%s\" does not contain \"%s\"", g_err, want);
}

static void expect_ok(int rc)
{
    EXPECT(rc == 0, "expected success, got \"%s\"", g_err);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/phg-test-config-XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        return -1;
    g_cfg = malloc(sizeof *g_cfg);
    return g_cfg == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
    char cmd[400];
    (void)state;
    free(g_cfg);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int each_setup(void **state)
{
    (void)state;
    clear_env();
    memset(g_cfg, 0x5a, sizeof *g_cfg);
    g_err[0] = '\0';
    return 0;
}

static int each_teardown(void **state)
{
    (void)state;
    clear_env();
    return 0;
}

/* ---- defaults and a full file ---------------------------------------------------------- */

static int chain_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789._:-") == n;
}

static void test_defaults(void **state)
{
    gw_flags flags = {0};
    (void)state;
    flags.store = "sqlite:/tmp/x.db";
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->listen_host, "127.0.0.1");
    assert_int_equal(g_cfg->listen_port, 8080);
    assert_int_equal(g_cfg->threads, 0);
    assert_string_equal(g_cfg->tls_cert, "");
    assert_string_equal(g_cfg->tls_key, "");
    assert_int_equal(g_cfg->max_connections, 10000);
    assert_int_equal(g_cfg->max_header_bytes, 16 * 1024);
    assert_int_equal(g_cfg->max_body_bytes, 10 * 1024 * 1024);
    assert_int_equal(g_cfg->header_timeout_ms, 10000);
    assert_int_equal(g_cfg->idle_timeout_ms, 60000);
    assert_int_equal(g_cfg->drain_timeout_ms, 10000);
    assert_string_equal(g_cfg->trusted_proxy, "");
    assert_string_equal(g_cfg->upstream_url, "");
    assert_string_equal(g_cfg->upstream_host, "");
    assert_string_equal(g_cfg->upstream_base, "");
    assert_int_equal(g_cfg->upstream_connect_timeout_ms, 2000);
    assert_int_equal(g_cfg->upstream_timeout_ms, 30000);
    assert_int_equal(g_cfg->upstream_pool, 64);
    assert_string_equal(g_cfg->store_url, "sqlite:/tmp/x.db");
    assert_string_equal(g_cfg->store_display, "sqlite:/tmp/x.db");
    EXPECT(strncmp(g_cfg->audit_chain, "gw-", 3) == 0 && chain_ok(g_cfg->audit_chain),
           "default chain \"%s\"", g_cfg->audit_chain);
    assert_int_equal(g_cfg->phi_batch_max, 1000);
    assert_string_equal(g_cfg->log_level, "info");
    assert_int_equal(g_cfg->admin_enabled, 1);
    assert_int_equal(g_cfg->n_routes, 0);
    assert_string_equal(g_cfg->config_file, "");
    /* NULL flags: no store, so it must say how to give one. */
    expect_err(gw_config_load(g_cfg, NULL, g_err, sizeof g_err),
               "store.url: not set (give --store, PHIGATE_STORE or [store] url)");
}

static void test_full_file(void **state)
{
    char text[4096];
    const char *cert = write_file("cert.pem", "not really a cert\n");
    const char *key = write_file("key.pem", "not really a key\n");
    const char *path;
    gw_flags flags = {0};
    (void)state;
    snprintf(text, sizeof text,
             "; a full configuration\n"
             "# with both comment styles\n"
             "[server]\n"
             "listen = [::1]:8443\n"
             "  threads = 4   ; indented lines are plain settings\n"
             "\ttls_cert = %s\n"
             "tls_key = %s\n"
             "max_connections = 500\n"
             "max_header_bytes = 32KiB\n"
             "max_body_bytes = 2m\r\n"
             "header_timeout_ms = 5000\n"
             "idle_timeout_ms = 70000\n"
             "drain_timeout_ms = 3000\n"
             "trusted_proxy = 10.0.0.1, ::1\n"
             "\n"
             "[upstream]\n"
             "url = http://backend.internal:9000/api/\n"
             "connect_timeout_ms = 1500\n"
             "timeout_ms = 20000\n"
             "pool = 0\n"
             "[store]\n"
             "url = postgres://phigate@db.internal:5432/phigate?sslmode=require\n"
             "[audit]\n"
             "chain = gw-east-1\n"
             "[phi]\n"
             "batch_max = 50\n"
             "[log]\n"
             "level = WARN\n"
             "[admin]\n"
             "enabled = off\n"
             "[route:internal]\n"
             "prefix = /internal\n"
             "role = admin\n"
             "[route:decrypt]\n"
             "methods = get, post\n"
             "prefix = /v1/phi/decrypt\n"
             "scopes = phi:decrypt audit:read\n",
             cert, key);
    path = write_file("full.ini", text);
    flags.config_file = path;
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->config_file, path);
    assert_string_equal(g_cfg->listen_host, "::1");
    assert_int_equal(g_cfg->listen_port, 8443);
    assert_int_equal(g_cfg->threads, 4);
    assert_string_equal(g_cfg->tls_cert, cert);
    assert_string_equal(g_cfg->tls_key, key);
    assert_int_equal(g_cfg->max_connections, 500);
    assert_int_equal(g_cfg->max_header_bytes, 32 * 1024);
    assert_int_equal(g_cfg->max_body_bytes, 2 * 1024 * 1024);
    assert_int_equal(g_cfg->header_timeout_ms, 5000);
    assert_int_equal(g_cfg->idle_timeout_ms, 70000);
    assert_int_equal(g_cfg->drain_timeout_ms, 3000);
    assert_string_equal(g_cfg->trusted_proxy, "10.0.0.1,::1");
    assert_string_equal(g_cfg->upstream_url, "http://backend.internal:9000/api/");
    assert_string_equal(g_cfg->upstream_host, "backend.internal");
    assert_int_equal(g_cfg->upstream_port, 9000);
    assert_string_equal(g_cfg->upstream_base, "/api");
    assert_int_equal(g_cfg->upstream_connect_timeout_ms, 1500);
    assert_int_equal(g_cfg->upstream_timeout_ms, 20000);
    assert_int_equal(g_cfg->upstream_pool, 0);
    assert_string_equal(g_cfg->store_url,
                        "postgres://phigate@db.internal:5432/phigate?sslmode=require");
    assert_string_equal(g_cfg->store_display, g_cfg->store_url);
    assert_string_equal(g_cfg->audit_chain, "gw-east-1");
    assert_int_equal(g_cfg->phi_batch_max, 50);
    assert_string_equal(g_cfg->log_level, "warn");
    assert_int_equal(g_cfg->admin_enabled, 0);
    assert_int_equal(g_cfg->n_routes, 2);
    assert_string_equal(g_cfg->routes[0].name, "internal");
    assert_string_equal(g_cfg->routes[0].methods, "*");
    assert_string_equal(g_cfg->routes[0].prefix, "/internal");
    assert_int_equal(g_cfg->routes[0].require_admin, 1);
    assert_int_equal(g_cfg->routes[0].scopes, 0);
    assert_string_equal(g_cfg->routes[1].name, "decrypt");
    assert_string_equal(g_cfg->routes[1].methods, "GET,POST");
    assert_string_equal(g_cfg->routes[1].prefix, "/v1/phi/decrypt");
    assert_int_equal(g_cfg->routes[1].require_admin, 0);
    assert_int_equal(g_cfg->routes[1].scopes, PHG_SCOPE_PHI_DECRYPT | PHG_SCOPE_AUDIT_READ);
}

/* The example shipped in deploy/ must load as it is. */
static void test_deploy_example(void **state)
{
    gw_flags flags = {0};
    char path[512];
    (void)state;
    const char *slash = strrchr(__FILE__, '/');
    snprintf(path, sizeof path, "%.*s/../../deploy/phigate.ini",
             slash != NULL ? (int)(slash - __FILE__) : 1, slash != NULL ? __FILE__ : ".");
    /* not a skip: the example ships with the source */
    EXPECT(access(path, R_OK) == 0, "cannot read %s", path);
    flags.config_file = path;
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->listen_host, "127.0.0.1");
    assert_int_equal(g_cfg->listen_port, 8080);
    assert_string_equal(g_cfg->upstream_host, "127.0.0.1");
    assert_int_equal(g_cfg->upstream_port, 9000);
    assert_string_equal(g_cfg->store_url, "sqlite:/var/lib/phigate/phigate.db");
    assert_int_equal(g_cfg->n_routes, 2);
    assert_non_null(gw_route_match(g_cfg, "GET", "/internal/x"));
    assert_int_equal(gw_route_match(g_cfg, "GET", "/internal/x")->require_admin, 1);
    /* [webhooks] is there with its defaults; the sample [webhook:oura] is
     * commented out (its secret files do not exist here) */
    assert_int_equal(g_cfg->wh_enabled, 1);
    assert_int_equal(g_cfg->wh_workers, 2);
    assert_int_equal(g_cfg->n_wh_sources, 0);
    /* ... and that example is valid once uncommented, its /run/secrets/
     * files made under the test directory */
    {
        FILE *f = fopen(path, "r");
        char line[256], text[4096], dir[300];
        size_t o = 0;
        int in = 0;
        assert_non_null(f);
        o = (size_t)snprintf(text, sizeof text, "[store]\nurl = sqlite:x\n");
        while (fgets(line, sizeof line, f) != NULL) {
            const char *sec;
            if (strncmp(line, ";[webhook:oura]", 15) == 0)
                in = 1;
            if (!in)
                continue;
            if (line[0] != ';')
                break;
            sec = strstr(line, "/run/secrets/");
            if (sec != NULL)
                o += (size_t)snprintf(text + o, sizeof text - o, "%.*s%s/%s", (int)(sec - line - 1),
                                      line + 1, g_dir, sec + 13);
            else
                o += (size_t)snprintf(text + o, sizeof text - o, "%s", line + 1);
            assert_true(o < sizeof text);
        }
        fclose(f);
        EXPECT(in, "no [webhook:oura] example in %s", path);
        snprintf(dir, sizeof dir, "%s/oura-client-secret", g_dir);
        write_file("oura-client-secret", "client-secret\n");
        write_file("oura-verification-token", "token\n");
        expect_ok(load_text(text));
        assert_int_equal(g_cfg->n_wh_sources, 1);
        assert_string_equal(g_cfg->wh_sources[0].name, "oura");
        assert_string_equal(g_cfg->wh_sources[0].scheme, "oura");
        assert_string_equal(g_cfg->wh_sources[0].secret_files[0], dir);
        assert_string_equal(g_cfg->wh_sources[0].deliver_to, "http://127.0.0.1:9000/webhooks/oura");
    }
}

/* ---- bad values ------------------------------------------------------------------------ */

typedef struct bad_case {
    const char *text; /* the file's body after "[store]\nurl=sqlite:x\n" */
    const char *want; /* a part of the message */
} bad_case;

static void test_bad_values(void **state)
{
    static const bad_case cases[] = {
        {"[server]\nmax_body_bytes = abc\n", "server.max_body_bytes: not a size (\"abc\")"},
        {"[server]\nmax_body_bytes = 0\n",
         "server.max_body_bytes: 0 is out of range (1..1073741824)"},
        {"[server]\nmax_body_bytes = 2g\n", "server.max_body_bytes: 2147483648 is out of range"},
        {"[server]\nmax_body_bytes = 1.5m\n", "server.max_body_bytes: not a size"},
        {"[server]\nmax_body_bytes = 99999999999999999999999\n",
         "server.max_body_bytes: not a size"},
        {"[server]\nmax_body_bytes = 5kk\n", "server.max_body_bytes: not a size"},
        {"[server]\nmax_header_bytes = 1023\n",
         "server.max_header_bytes: 1023 is out of range (1024..1048576)"},
        {"[server]\nmax_header_bytes = 2MiB\n", "server.max_header_bytes: 2097152 is out of range"},
        {"[server]\nthreads = 257\n", "server.threads: 257 is out of range (0..256)"},
        {"[server]\nthreads = -1\n", "server.threads: not a number (\"-1\")"},
        {"[server]\nthreads = four\n", "server.threads: not a number (\"four\")"},
        {"[server]\nmax_connections = 0\n",
         "server.max_connections: 0 is out of range (1..1000000)"},
        {"[server]\nmax_connections = 1000001\n",
         "server.max_connections: 1000001 is out of range"},
        {"[server]\nheader_timeout_ms = 10s\n",
         "server.header_timeout_ms: not a number of milliseconds (\"10s\")"},
        {"[server]\nidle_timeout_ms = 3600001\n",
         "server.idle_timeout_ms: 3600001 is out of range (1..3600000)"},
        {"[server]\ndrain_timeout_ms = 0\n", "server.drain_timeout_ms: 0 is out of range"},
        {"[server]\ntrusted_proxy = 10.0.0.1, proxy.local\n",
         "server.trusted_proxy: not an IP address (\"proxy.local\")"},
        {"[server]\nlisten = localhost\n", "server.listen: not HOST:PORT"},
        {"[server]\ntls_cert = /nonexistent/cert.pem\n",
         "server.tls_key: set tls_cert and tls_key together"},
        {"[server]\ntls_key = /nonexistent/key.pem\n",
         "server.tls_cert: set tls_cert and tls_key together"},
        {"[server]\ntls_cert = /nonexistent/c.pem\ntls_key = /nonexistent/k.pem\n",
         "server.tls_cert: cannot read \"/nonexistent/c.pem\""},
        {"[upstream]\nurl = https://api.example\n",
         "upstream.url: https upstreams are not supported yet"},
        {"[upstream]\nurl = ftp://api.example\n", "upstream.url: not an http://"},
        {"[upstream]\nurl = http://:80/\n", "upstream.url: not an http://"},
        {"[upstream]\nurl = http://api:0\n", "upstream.url: not an http://"},
        {"[upstream]\nurl = http://api:65536\n", "upstream.url: not an http://"},
        {"[upstream]\nurl = http://u:pw@api\n", "upstream.url: user names and passwords"},
        {"[upstream]\nurl = http://api/a?b=c\n", "upstream.url: the base path"},
        {"[upstream]\nconnect_timeout_ms = 0\n", "upstream.connect_timeout_ms: 0 is out of range"},
        {"[upstream]\ntimeout_ms = soon\n", "upstream.timeout_ms: not a number of milliseconds"},
        {"[upstream]\npool = 4097\n", "upstream.pool: 4097 is out of range (0..4096)"},
        {"[audit]\nchain = Gateway One\n", "audit.chain: not 1..64 characters"},
        {"[phi]\nbatch_max = 0\n", "phi.batch_max: 0 is out of range (1..10000)"},
        {"[phi]\nbatch_max = 10001\n", "phi.batch_max: 10001 is out of range"},
        {"[log]\nlevel = verbose\n", "log.level: not debug, info, warn or error (\"verbose\")"},
        {"[admin]\nenabled = maybe\n", "admin.enabled: not true or false (\"maybe\")"},
        {"[route:a]\nprefix = v1\n", "route:a.prefix: must start with '/'"},
        {"[route:a]\nprefix = /v1/../admin\n", "route:a.prefix: must start with '/'"},
        {"[route:a]\nprefix = /v1\nrole = root\n", "route:a.role: not user or admin (\"root\")"},
        {"[route:a]\nprefix = /v1\nscopes = phi:decrypt phi:everything\n",
         "route:a.scopes: unknown scope \"phi:everything\""},
        {"[route:a]\nprefix = /v1\nmethods = GET,P0ST\n", "route:a.methods: not * or a comma list"},
        {"[route:a]\nprefix = /v1\nmethods = ,\n", "route:a.methods: not * or a comma list"},
        {"[route:a]\nmethods = GET\n", "route:a.prefix: not set"},
        {"[route:a]\n", "route:a.prefix: not set"},
        {"[route:a]\nprefix = /a\n[route:a]\nprefix = /b\n", "route:a is defined twice"},
        {"[route:bad name]\nprefix = /a\n", "route name \"bad name\" is not 1..63 characters"},
        {"[route:a]\nprefix = /a\nprefix = /b\n", "route:a.prefix: set twice"},
        {"[server]\nthreads = 1\nthreads = 2\n", "server.threads: set twice"},
        {"[server]\nthreads = 1\n  continued\n", "line 5: not a [section], key = value or comment"},
        {"[server\nthreads = 1\n", "line 3: a section header without ']'"},
        {"[ratelimit]\ndefault_user = 0/1m\n", "ratelimit.default_user: "},
        {"[ratelimit]\ndefault_user = -5/1m\n", "ratelimit.default_user: "},
        {"[ratelimit]\ndefault_user = 5/0s\n", "ratelimit.default_user: "},
        {"[ratelimit]\ndefault_admin = 5/1x\n", "ratelimit.default_admin: "},
        {"[ratelimit]\ndefault_user = 5/1m,6/60s\n", "ratelimit.default_user: "},
        {"[ratelimit]\nfallback = maybe\n",
         "ratelimit.fallback: not local, open or closed (\"maybe\")"},
        {"[ratelimit]\nengine = memcached\n", "ratelimit.engine: not local or redis"},
        {"[ratelimit]\nengine = redis\n", "ratelimit.redis: not set, and ratelimit.engine is redis"},
        {"[ratelimit]\nredis = http://h:6379\n", "ratelimit.redis: not a Redis URL"},
        {"[ratelimit]\nredis = redis://h:99999\n", "ratelimit.redis: not a Redis URL"},
        {"[ratelimit]\ntimeout_ms = 0\n", "ratelimit.timeout_ms: 0 is out of range (1..60000)"},
        {"[ratelimit]\ninstances = 0\n", "ratelimit.instances: 0 is out of range (1..1024)"},
        {"[webhooks]\nenabled = maybe\n", "webhooks.enabled: not true or false (\"maybe\")"},
        {"[webhooks]\nworkers = 0\n", "webhooks.workers: 0 is out of range (1..64)"},
        {"[webhooks]\nworkers = two\n", "webhooks.workers: not a number (\"two\")"},
        {"[webhooks]\nmax_age_s = 3d\n", "webhooks.max_age_s: not a number of seconds (\"3d\")"},
        {"[webhooks]\nkeep_delivered_s = -1\n",
         "webhooks.keep_delivered_s: not a number of seconds (\"-1\")"},
        {"[webhooks]\nbackoff_ms = 1s\n",
         "webhooks.backoff_ms: not a number of milliseconds (\"1s\")"},
        {"[webhooks]\nbackoff_ms = 5000\nbackoff_max_ms = 4999\n",
         "webhooks.backoff_max_ms: 4999 is less than webhooks.backoff_ms (5000)"},
        {"[webhooks]\nworkers = 2\nworkers = 3\n", "webhooks.workers: set twice"},
        {"[webhooks]\ngoogle_keyset =\n", "webhooks.google_keyset: empty"},
        {"[webhooks]\ngoogle_keyset = ftp://keys.example/k.json\n",
         "webhooks.google_keyset: not an http:// or https:// URL"},
        {"[webhooks]\ngoogle_keyset = https:///k.json\n",
         "webhooks.google_keyset: the URL has no host"},
        {"[webhooks]\ngoogle_keyset = https://u:pw@keys.example/k.json\n",
         "webhooks.google_keyset: user names and passwords in the URL are not accepted"},
        {"[webhooks]\ngoogle_keyset = /nonexistent/keyset.json\n",
         "webhooks.google_keyset: cannot read \"/nonexistent/keyset.json\""},
        {"[webhooks]\nca_file = /nonexistent/ca.pem\n",
         "webhooks.ca_file: cannot read \"/nonexistent/ca.pem\""},
        {"[webhooks]\nca_file = /\n", "webhooks.ca_file: cannot read \"/\": it is a directory"},
        {"[webhooks]\nredis = http://h:6379\n", "webhooks.redis: not a Redis URL"},
        {"[webhooks]\nredis = redis://h:0\n", "webhooks.redis: not a Redis URL"},
        {"[webhooks]\nsecret = x\n", "unknown setting webhooks.secret"},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024];
        int rc;
        snprintf(text, sizeof text, "[store]\nurl = sqlite:x\n%s", cases[i].text);
        memset(g_cfg, 0x5a, sizeof *g_cfg);
        g_err[0] = '\0';
        rc = load_text(text);
        EXPECT(rc == -1, "case %zu: %s: expected failure", i, cases[i].text);
        EXPECT(strstr(g_err, cases[i].want) != NULL, "case %zu: error \"%s\" lacks \"%s\"", i,
               g_err, cases[i].want);
        /* A bad value in the file says which file. */
        if (strncmp(cases[i].want, "server.tls_", 11) != 0 &&
            strncmp(cases[i].want, "ratelimit.redis: not set", 24) != 0 &&
            strstr(cases[i].want, "cannot read") == NULL &&
            strstr(cases[i].want, "is less than") == NULL)
            EXPECT(strstr(g_err, "t.ini") != NULL, "case %zu: error \"%s\" names no file", i,
                   g_err);
    }
}

static void test_unknown_names(void **state)
{
    (void)state;
    expect_err(load_text("[server]\nmax_bodyy = 1\n"), "unknown setting server.max_bodyy");
    expect_err(load_text("[serverr]\nlisten = 1.2.3.4:1\n"), "unknown section [serverr]");
    expect_err(load_text("[route:]\nprefix = /\n"), "unknown section [route:]");
    expect_err(load_text("listen = 1.2.3.4:1\n"), "setting \"listen\" is outside any section");
    expect_err(load_text("[route:x]\nprefix = /x\npath = /y\n"), "unknown setting route:x.path");
    /* Keys are case-sensitive, as documented. */
    expect_err(load_text("[server]\nListen = 1.2.3.4:1\n"), "unknown setting server.Listen");
    /* A missing file is an error, not an empty configuration. */
    {
        gw_flags flags = {0};
        flags.config_file = "/nonexistent/phigate.ini";
        flags.store = "sqlite:x";
        expect_err(load_flags(&flags), "/nonexistent/phigate.ini: cannot read");
    }
}

/* ---- precedence ------------------------------------------------------------------------- */

static void test_precedence(void **state)
{
    gw_flags flags = {0};
    (void)state;
    flags.config_file = write_file("p.ini", "[server]\nlisten = 127.0.0.1:1000\nthreads = 2\n"
                                            "max_body_bytes = 1k\nidle_timeout_ms = 111\n"
                                            "[upstream]\nurl = http://file:1\n"
                                            "[store]\nurl = sqlite:file.db\n");
    /* file over defaults */
    expect_ok(load_flags(&flags));
    assert_int_equal(g_cfg->listen_port, 1000);
    assert_int_equal(g_cfg->threads, 2);
    assert_int_equal(g_cfg->max_body_bytes, 1024);
    assert_int_equal(g_cfg->idle_timeout_ms, 111);
    assert_string_equal(g_cfg->upstream_host, "file");
    assert_string_equal(g_cfg->store_url, "sqlite:file.db");

    /* environment over file */
    setenv("PHIGATE_LISTEN", "127.0.0.1:2000", 1);
    setenv("PHIGATE_THREADS", "3", 1);
    setenv("PHIGATE_SERVER_MAX_BODY_BYTES", "2k", 1);
    setenv("PHIGATE_UPSTREAM", "http://env:2", 1);
    setenv("PHIGATE_STORE", "sqlite:env.db", 1);
    setenv("PHIGATE_LOG_LEVEL", "", 1); /* empty: unset */
    expect_ok(load_flags(&flags));
    assert_int_equal(g_cfg->listen_port, 2000);
    assert_int_equal(g_cfg->threads, 3);
    assert_int_equal(g_cfg->max_body_bytes, 2048);
    assert_int_equal(g_cfg->idle_timeout_ms, 111);
    assert_string_equal(g_cfg->upstream_host, "env");
    assert_string_equal(g_cfg->store_url, "sqlite:env.db");
    assert_string_equal(g_cfg->log_level, "info");

    /* flags over environment */
    flags.listen = "127.0.0.1:3000";
    flags.threads = 4;
    flags.upstream = "";
    flags.store = "sqlite:flag.db";
    expect_ok(load_flags(&flags));
    assert_int_equal(g_cfg->listen_port, 3000);
    assert_int_equal(g_cfg->threads, 4);
    assert_int_equal(g_cfg->max_body_bytes, 2048);
    assert_string_equal(g_cfg->upstream_url, "");
    assert_string_equal(g_cfg->upstream_host, "");
    assert_string_equal(g_cfg->store_url, "sqlite:flag.db");

    /* a bad value says where it came from */
    setenv("PHIGATE_SERVER_IDLE_TIMEOUT_MS", "abc", 1);
    expect_err(load_flags(&flags), "server.idle_timeout_ms: not a number of milliseconds (\"abc\") "
                                   "(from PHIGATE_SERVER_IDLE_TIMEOUT_MS)");
    unsetenv("PHIGATE_SERVER_IDLE_TIMEOUT_MS");
    flags.listen = "127.0.0.1:70000";
    expect_err(load_flags(&flags), "(from --listen)");
    flags.listen = NULL;
    flags.threads = 300;
    expect_err(load_flags(&flags), "server.threads: 300 is out of range (0..256) (from --threads)");
    flags.threads = -2;
    expect_err(load_flags(&flags), "server.threads: -2 is out of range");
    flags.threads = 0;

    /* a shortcut and its long name together */
    setenv("PHIGATE_SERVER_LISTEN", "127.0.0.1:4000", 1);
    expect_err(load_flags(&flags), "PHIGATE_LISTEN and PHIGATE_SERVER_LISTEN are both set");
    unsetenv("PHIGATE_LISTEN");
    expect_ok(load_flags(&flags));
    assert_int_equal(g_cfg->listen_port, 4000);

    /* PHIGATE_CONFIG names the file when no flag does */
    clear_env();
    setenv("PHIGATE_CONFIG", flags.config_file, 1);
    expect_ok(gw_config_load(g_cfg, NULL, g_err, sizeof g_err));
    assert_int_equal(g_cfg->listen_port, 1000);
    assert_string_equal(g_cfg->config_file, flags.config_file);
}

/* Every PHIGATE_<SECTION>_<KEY> reaches its field. */
static void test_env_every_key(void **state)
{
    const char *cert = write_file("c.pem", "x\n"), *key = write_file("k.pem", "y\n");
    (void)state;
    setenv("PHIGATE_SERVER_LISTEN", "0.0.0.0:9", 1);
    setenv("PHIGATE_SERVER_THREADS", "7", 1);
    setenv("PHIGATE_SERVER_TLS_CERT", cert, 1);
    setenv("PHIGATE_SERVER_TLS_KEY", key, 1);
    setenv("PHIGATE_SERVER_MAX_CONNECTIONS", "77", 1);
    setenv("PHIGATE_SERVER_MAX_HEADER_BYTES", "8k", 1);
    setenv("PHIGATE_SERVER_MAX_BODY_BYTES", "1 MiB", 1);
    setenv("PHIGATE_SERVER_HEADER_TIMEOUT_MS", "11", 1);
    setenv("PHIGATE_SERVER_IDLE_TIMEOUT_MS", "12", 1);
    setenv("PHIGATE_SERVER_DRAIN_TIMEOUT_MS", "13", 1);
    setenv("PHIGATE_SERVER_TRUSTED_PROXY", "192.0.2.1", 1);
    setenv("PHIGATE_UPSTREAM_URL", "http://u.example", 1);
    setenv("PHIGATE_UPSTREAM_CONNECT_TIMEOUT_MS", "14", 1);
    setenv("PHIGATE_UPSTREAM_TIMEOUT_MS", "15", 1);
    setenv("PHIGATE_UPSTREAM_POOL", "16", 1);
    setenv("PHIGATE_STORE_URL", "sqlite:e.db", 1);
    setenv("PHIGATE_AUDIT_CHAIN", "chain-e", 1);
    setenv("PHIGATE_PHI_BATCH_MAX", "17", 1);
    setenv("PHIGATE_LOG_LEVEL", "debug", 1);
    setenv("PHIGATE_ADMIN_ENABLED", "false", 1);
    expect_ok(gw_config_load(g_cfg, NULL, g_err, sizeof g_err));
    assert_string_equal(g_cfg->listen_host, "0.0.0.0");
    assert_int_equal(g_cfg->listen_port, 9);
    assert_int_equal(g_cfg->threads, 7);
    assert_string_equal(g_cfg->tls_cert, cert);
    assert_string_equal(g_cfg->tls_key, key);
    assert_int_equal(g_cfg->max_connections, 77);
    assert_int_equal(g_cfg->max_header_bytes, 8192);
    assert_int_equal(g_cfg->max_body_bytes, 1 << 20);
    assert_int_equal(g_cfg->header_timeout_ms, 11);
    assert_int_equal(g_cfg->idle_timeout_ms, 12);
    assert_int_equal(g_cfg->drain_timeout_ms, 13);
    assert_string_equal(g_cfg->trusted_proxy, "192.0.2.1");
    assert_string_equal(g_cfg->upstream_host, "u.example");
    assert_int_equal(g_cfg->upstream_port, 80);
    assert_int_equal(g_cfg->upstream_connect_timeout_ms, 14);
    assert_int_equal(g_cfg->upstream_timeout_ms, 15);
    assert_int_equal(g_cfg->upstream_pool, 16);
    assert_string_equal(g_cfg->store_url, "sqlite:e.db");
    assert_string_equal(g_cfg->audit_chain, "chain-e");
    assert_int_equal(g_cfg->phi_batch_max, 17);
    assert_string_equal(g_cfg->log_level, "debug");
    assert_int_equal(g_cfg->admin_enabled, 0);
}

static void test_sizes(void **state)
{
    static const struct {
        const char *text;
        size_t want;
    } cases[] = {
        {"1", 1},           {"512", 512},        {"1b", 1},        {"1k", 1024},
        {"1K", 1024},       {"1kb", 1024},       {"1KiB", 1024},   {"3 KiB", 3072},
        {"1m", 1 << 20},    {"10MiB", 10 << 20}, {"1MB", 1 << 20}, {"1g", 1u << 30},
        {"1GiB", 1u << 30},
    };
    size_t i;
    gw_flags flags = {0};
    (void)state;
    flags.store = "sqlite:x";
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv("PHIGATE_SERVER_MAX_BODY_BYTES", cases[i].text, 1);
        expect_ok(load_flags(&flags));
        EXPECT(g_cfg->max_body_bytes == cases[i].want, "%s: got %zu, want %zu", cases[i].text,
               g_cfg->max_body_bytes, cases[i].want);
    }
}

/* ---- secrets ------------------------------------------------------------------------------- */

static void expect_no_secret(const char *s)
{
    EXPECT(strstr(s, "s3cret") == NULL, "\"%s\" shows the password", s);
}

static void test_store_password(void **state)
{
    gw_flags flags = {0};
    const char *url = "postgres://phigate:s3cret@db.example:5432/phigate";
    const char *path;
    char big[5000];
    (void)state;

    /* refused in the file, without quoting it */
    expect_err(load_text("[store]\nurl = postgres://phigate:s3cret@db.example/phigate\n"),
               "PHIGATE_STORE_FILE");
    expect_no_secret(g_err);
    assert_non_null(strstr(g_err, "store.url"));
    expect_err(load_text("[store]\nurl = postgres://phigate@db.example/phigate?password=s3cret\n"),
               "store.url: a password is not accepted in the configuration file");
    expect_no_secret(g_err);
    /* refused on the command line */
    flags.store = url;
    expect_err(load_flags(&flags), "store.url: a password is not accepted on the command line");
    expect_no_secret(g_err);
    assert_non_null(strstr(g_err, "PHIGATE_STORE"));
    /* a bad store URL is not quoted back either */
    flags.store = "mysql://phigate:s3cret@db";
    expect_err(load_flags(&flags), "store.url: not a sqlite:PATH or postgres://");
    expect_no_secret(g_err);
    flags.store = NULL;

    /* accepted from PHIGATE_STORE and PHIGATE_STORE_URL */
    setenv("PHIGATE_STORE", url, 1);
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->store_url, url);
    assert_string_equal(g_cfg->store_display, "postgres://phigate:***@db.example:5432/phigate");
    unsetenv("PHIGATE_STORE");
    setenv("PHIGATE_STORE_URL", "postgresql://u:s3cret@h/db?sslmode=require&password=s3cret", 1);
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->store_display,
                        "postgresql://u:***@h/db?sslmode=require&password=***");
    unsetenv("PHIGATE_STORE_URL");

    /* accepted from PHIGATE_STORE_FILE, trailing newline trimmed */
    path = write_file("store.url", "postgres://phigate:s3cret@db.example:5432/phigate\r\n");
    setenv("PHIGATE_STORE_FILE", path, 1);
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->store_url, url);
    expect_no_secret(g_cfg->store_display);
    /* ... even with a file that has a store url without password */
    flags.config_file = write_file("s.ini", "[store]\nurl = sqlite:file.db\n");
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->store_url, url);
    /* ... and a flag without a password still wins */
    flags.store = "sqlite:flag.db";
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->store_url, "sqlite:flag.db");
    flags.store = NULL;
    flags.config_file = NULL;

    /* two sources at once */
    setenv("PHIGATE_STORE", "sqlite:y", 1);
    expect_err(load_flags(&flags), "set only one of PHIGATE_STORE, PHIGATE_STORE_URL and "
                                   "PHIGATE_STORE_FILE");
    unsetenv("PHIGATE_STORE");

    /* limits of the file */
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    memcpy(big, "sqlite:", 7);
    setenv("PHIGATE_STORE_FILE", write_file("big.url", big), 1);
    expect_err(load_flags(&flags), "is larger than 4096 bytes (from PHIGATE_STORE_FILE)");
    setenv("PHIGATE_STORE_FILE", write_file("empty.url", "\n"), 1);
    expect_err(load_flags(&flags), "is empty (from PHIGATE_STORE_FILE)");
    setenv("PHIGATE_STORE_FILE", "/nonexistent/store.url", 1);
    expect_err(load_flags(&flags), "store.url: cannot read /nonexistent/store.url");
}

static void test_json(void **state)
{
    gw_flags flags = {0};
    json_t *j, *routes, *r;
    char *dump;
    (void)state;
    setenv("PHIGATE_STORE", "postgres://phigate:s3cret@db.example/phigate?password=s3cret", 1);
    flags.config_file =
        write_file("j.ini", "[server]\nmax_body_bytes = 1m\nlisten = [::]:0\n"
                            "[upstream]\nurl = http://[::1]:9000/base\n"
                            "[route:dec]\nmethods = POST\nprefix = /v1/phi/decrypt\n"
                            "scopes = phi:decrypt,audit:read\n"
                            "[route:adm]\nprefix = /internal\nrole = admin\n");
    expect_ok(load_flags(&flags));
    j = gw_config_json(g_cfg);
    assert_non_null(j);
    dump = json_dumps(j, JSON_SORT_KEYS);
    assert_non_null(dump);
    expect_no_secret(dump);
    assert_non_null(strstr(dump, "postgres://phigate:***@db.example/phigate?password=***"));
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "server"), "max_body_bytes")),
        1 << 20);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "server"), "listen")),
                        "[::]:0");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "upstream"), "host")),
                        "::1");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "upstream"), "base")),
                        "/base");
    assert_true(json_is_true(json_object_get(json_object_get(j, "admin"), "enabled")));
    assert_string_equal(json_string_value(json_object_get(j, "config_file")), flags.config_file);
    routes = json_object_get(j, "routes");
    assert_int_equal(json_array_size(routes), 2);
    r = json_array_get(routes, 0);
    assert_string_equal(json_string_value(json_object_get(r, "name")), "dec");
    assert_string_equal(json_string_value(json_object_get(r, "methods")), "POST");
    assert_string_equal(json_string_value(json_object_get(r, "prefix")), "/v1/phi/decrypt");
    assert_string_equal(json_string_value(json_object_get(r, "role")), "user");
    assert_int_equal(json_array_size(json_object_get(r, "scopes")), 2);
    assert_string_equal(json_string_value(json_array_get(json_object_get(r, "scopes"), 0)),
                        "phi:decrypt");
    assert_string_equal(json_string_value(json_array_get(json_object_get(r, "scopes"), 1)),
                        "audit:read");
    r = json_array_get(routes, 1);
    assert_string_equal(json_string_value(json_object_get(r, "role")), "admin");
    assert_int_equal(json_array_size(json_object_get(r, "scopes")), 0);
    free(dump);
    json_decref(j);
}

/* ---- listen and upstream ------------------------------------------------------------------- */

static void test_listen(void **state)
{
    static const struct {
        const char *text, *host;
        int port;
    } good[] = {
        {"127.0.0.1:8080", "127.0.0.1", 8080},
        {"0.0.0.0:0", "0.0.0.0", 0},
        {"localhost:65535", "localhost", 65535},
        {"[::1]:8443", "::1", 8443},
        {"[::]:1", "::", 1},
        {"[fe80::1%eth0]:80", "fe80::1%eth0", 80},
        {"gw-1.example.org:00080", "gw-1.example.org", 80},
    };
    static const char *const bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        ":8080",
        "::1:8080",
        "[::1]8080",
        "[::1]",
        "[zz::]:80",
        "[::1:80",
        "host:80x",
        "ho st:80",
        "127.0.0.1:999999",
    };
    gw_flags flags = {0};
    size_t i;
    (void)state;
    flags.store = "sqlite:x";
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        flags.listen = good[i].text;
        expect_ok(load_flags(&flags));
        assert_string_equal(g_cfg->listen_host, good[i].host);
        assert_int_equal(g_cfg->listen_port, good[i].port);
    }
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        flags.listen = bad[i];
        EXPECT(load_flags(&flags) == -1, "listen \"%s\" accepted", bad[i]);
        EXPECT(strstr(g_err, "server.listen: not HOST:PORT") != NULL &&
                   strstr(g_err, "(from --listen)") != NULL,
               "listen \"%s\": %s", bad[i], g_err);
    }
}

static void test_upstream(void **state)
{
    static const struct {
        const char *text, *host, *base;
        int port;
    } good[] = {
        {"http://127.0.0.1:9000", "127.0.0.1", "", 9000},
        {"http://api.example", "api.example", "", 80},
        {"HTTP://api.example/", "api.example", "", 80},
        {"http://api.example/v2/", "api.example", "/v2", 80},
        {"http://api.example:8081/a/b//", "api.example", "/a/b", 8081},
        {"http://[::1]:9000/x", "::1", "/x", 9000},
    };
    gw_flags flags = {0};
    size_t i;
    (void)state;
    flags.store = "sqlite:x";
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        flags.upstream = good[i].text;
        expect_ok(load_flags(&flags));
        assert_string_equal(g_cfg->upstream_url, good[i].text);
        assert_string_equal(g_cfg->upstream_host, good[i].host);
        assert_string_equal(g_cfg->upstream_base, good[i].base);
        assert_int_equal(g_cfg->upstream_port, good[i].port);
    }
    flags.upstream = "https://api.example";
    expect_err(load_flags(&flags), "upstream.url: https upstreams are not supported yet");
    flags.upstream = "http://api.example/a b";
    expect_err(load_flags(&flags), "upstream.url: the base path");
    flags.upstream = "http://api.example/../x";
    expect_err(load_flags(&flags), "upstream.url: the base path");
}

/* ---- limits of the file -----------------------------------------------------------------------
 */

static void test_file_size_limit(void **state)
{
    const size_t limit = 1024 * 1024;
    char *text = malloc(limit + 2);
    gw_flags flags = {0};
    size_t i;
    (void)state;
    assert_non_null(text);
    /* exactly 1 MiB of comment lines: accepted */
    for (i = 0; i < limit; i++)
        text[i] = (i % 64 == 63) ? '\n' : ';';
    text[limit] = '\0';
    flags.config_file = write_file("max.ini", text);
    flags.store = "sqlite:x";
    expect_ok(load_flags(&flags));
    /* one byte more: refused */
    text[limit] = '\n';
    text[limit + 1] = '\0';
    flags.config_file = write_file("over.ini", text);
    expect_err(load_flags(&flags), "larger than 1048576 bytes (1 MiB)");
    free(text);
    /* NUL bytes would end the text early for inih: refused */
    {
        char path[512];
        FILE *f;
        snprintf(path, sizeof path, "%s/nul.ini", g_dir);
        f = fopen(path, "w");
        assert_non_null(f);
        fwrite("[server]\0threads = x\n", 1, 21, f);
        fclose(f);
        flags.config_file = path;
        expect_err(load_flags(&flags), "holds a NUL byte");
    }
}

static void test_long_line(void **state)
{
    char text[1024], base[256];
    size_t prefix_len = strlen("url = http://h/");
    gw_flags flags = {0};
    (void)state;
    flags.store = "sqlite:x";

    /* a line of exactly 198 bytes is whole */
    memset(base, 'b', sizeof base);
    base[198 - prefix_len] = '\0';
    snprintf(text, sizeof text, "[upstream]\nurl = http://h/%s\n", base);
    flags.config_file = write_file("l1.ini", text);
    expect_ok(load_flags(&flags));
    assert_int_equal(strlen(g_cfg->upstream_base), 1 + 198 - prefix_len);

    /* one more byte: refused with the line number (inih would cut it) */
    base[198 - prefix_len] = 'b';
    base[199 - prefix_len] = '\0';
    snprintf(text, sizeof text, "[upstream]\nurl = http://h/%s\n", base);
    flags.config_file = write_file("l2.ini", text);
    expect_err(load_flags(&flags), "line 2: longer than 198 bytes");
    /* same for a comment line, and for a last line without a newline */
    memset(text, ';', 300);
    text[300] = '\0';
    flags.config_file = write_file("l3.ini", text);
    expect_err(load_flags(&flags), "line 1: longer than 198 bytes");
}

static void test_tls_files(void **state)
{
    char text[1024];
    const char *cert = write_file("tc.pem", "c\n");
    (void)state;
    snprintf(text, sizeof text, "[server]\ntls_cert = %s\n", cert);
    expect_err(load_text(text), "server.tls_key: set tls_cert and tls_key together");
    snprintf(text, sizeof text, "[server]\ntls_cert = %s\ntls_key = %s/missing.pem\n", cert, g_dir);
    expect_err(load_text(text), "server.tls_key: cannot read");
    snprintf(text, sizeof text, "[server]\ntls_cert = %s\ntls_key = %s\n", cert, cert);
    expect_ok(load_text(text));
}

/* Regression: inih cuts section names at 49 bytes, so a route name of
 * 44..63 characters (valid) used to lose its keys ("prefix: not set"), and a
 * cut name could have matched another route's. */
static void test_long_section_names(void **state)
{
    const char *n63 = "a123456789b123456789c123456789d123456789e123456789f123456789xyz";
    const char *n62 = "a123456789b123456789c123456789d123456789e123456789f123456789xy";
    char text[1024];
    (void)state;
    assert_int_equal(strlen(n63), 63);
    snprintf(text, sizeof text,
             "[route:%s] ; a comment after the header\nprefix = /long\nrole = admin\n"
             "[route:%s]\nprefix = /long2\n[route:short]\nprefix = /s\n",
             n63, n62);
    expect_ok(load_text(text));
    assert_int_equal(g_cfg->n_routes, 3);
    assert_string_equal(g_cfg->routes[0].name, n63);
    assert_string_equal(g_cfg->routes[0].prefix, "/long");
    assert_int_equal(g_cfg->routes[0].require_admin, 1);
    assert_string_equal(g_cfg->routes[1].name, n62);
    assert_string_equal(g_cfg->routes[1].prefix, "/long2");
    assert_int_equal(g_cfg->routes[1].require_admin, 0);
    assert_string_equal(g_cfg->routes[2].prefix, "/s");
    /* messages name the section as written */
    snprintf(text, sizeof text, "[route:%s]\nprefix = /a\nprefix = /b\n", n63);
    expect_err(load_text(text), "a123456789b123456789c123456789d123456789e123456789f123456789xyz"
                                ".prefix: set twice");
    /* an alias cannot be written by hand: '#' is not a name character */
    expect_err(load_text("[route:#0]\nprefix = /a\n"), "route name \"#0\" is not");
    expect_err(load_text("[webhook:#0]\nscheme = oura\n"), "webhook source name \"#0\" is not");
}

static void test_too_many_routes(void **state)
{
    size_t cap = (GW_ROUTES_MAX + 1) * 40 + 64, o = 0;
    char *text = malloc(cap);
    int i;
    (void)state;
    assert_non_null(text);
    for (i = 0; i < GW_ROUTES_MAX; i++)
        o += (size_t)snprintf(text + o, cap - o, "[route:r%d]\nprefix = /r%d\n", i, i);
    expect_ok(load_text(text));
    assert_int_equal(g_cfg->n_routes, GW_ROUTES_MAX);
    snprintf(text + o, cap - o, "[route:one-more]\nprefix = /x\n");
    expect_err(load_text(text), "more than 256 routes");
    free(text);
}

/* ---- route matching ---------------------------------------------------------------------------
 */

static const char *match(const char *method, const char *path)
{
    const gw_route *r = gw_route_match(g_cfg, method, path);
    return r != NULL ? r->name : "(none)";
}

/* [ratelimit]: defaults, policies parsed and written canonically, a Redis
 * URL choosing the Redis engine, and no password in a Redis URL ever. */
static void test_ratelimit(void **state)
{
    gw_flags flags = {0};
    (void)state;
    flags.store = "sqlite:x";
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->rl_engine, "local");
    assert_string_equal(g_cfg->rl_fallback, "local");
    assert_int_equal(g_cfg->rl_timeout_ms, 50);
    assert_int_equal(g_cfg->rl_instances, 1);
    assert_int_equal((int)g_cfg->rl_user_policy.n, 0);

    flags.config_file = write_file("rl.ini", "[ratelimit]\ndefault_user = 5000/1h,100/60s\n"
                                             "default_admin = none\nfallback = closed\n"
                                             "instances = 3\ntimeout_ms = 20\n");
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->rl_default_user, "100/1m,5000/1h");
    assert_int_equal((int)g_cfg->rl_user_policy.n, 2);
    assert_int_equal((int)g_cfg->rl_user_policy.limits[0].count, 100);
    assert_int_equal((int)g_cfg->rl_user_policy.limits[0].window_s, 60);
    assert_string_equal(g_cfg->rl_default_admin, "");
    assert_string_equal(g_cfg->rl_fallback, "closed");
    assert_int_equal(g_cfg->rl_instances, 3);
    assert_string_equal(g_cfg->rl_engine, "local");

    /* --redis picks the Redis engine */
    flags.redis = "redis://127.0.0.1:6380";
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->rl_engine, "redis");
    assert_string_equal(g_cfg->rl_redis_host, "127.0.0.1");
    assert_int_equal(g_cfg->rl_redis_port, 6380);
    {
        json_t *j = gw_config_json(g_cfg);
        json_t *rl = json_object_get(j, "ratelimit");
        assert_non_null(rl);
        assert_string_equal(json_string_value(json_object_get(rl, "engine")), "redis");
        assert_string_equal(json_string_value(json_object_get(rl, "default_user")),
                            "100/1m,5000/1h");
        json_decref(j);
    }
    /* a password in a Redis URL is refused, and not echoed */
    flags.redis = "redis://:s3cret@127.0.0.1:6380";
    expect_err(load_flags(&flags), "ratelimit.redis: not a Redis URL");
    EXPECT(strstr(g_err, "s3cret") == NULL, "the password is in the message: %s", g_err);
    flags.redis = NULL;
    flags.config_file = NULL;

    /* the policy of a key: its own, else its role's default, else none */
    {
        phg_rl_policy p;
        const char *from = NULL;
        flags.config_file = write_file("rl2.ini", "[ratelimit]\ndefault_user = 10/1s\n");
        expect_ok(load_flags(&flags));
        gw_rl_policy_for(g_cfg, PHG_ROLE_USER, "3/1m", &p, &from);
        assert_string_equal(from, "key");
        assert_int_equal((int)p.limits[0].count, 3);
        gw_rl_policy_for(g_cfg, PHG_ROLE_USER, "", &p, &from);
        assert_string_equal(from, "default");
        assert_int_equal((int)p.limits[0].count, 10);
        gw_rl_policy_for(g_cfg, PHG_ROLE_ADMIN, NULL, &p, &from);
        assert_string_equal(from, "none");
        assert_int_equal((int)p.n, 0);
        gw_rl_policy_for(g_cfg, PHG_ROLE_USER, "none", &p, &from);
        assert_string_equal(from, "key");
        assert_int_equal((int)p.n, 0);
        flags.config_file = NULL;
    }
}

/* ---- [webhooks] ------------------------------------------------------------------------------ */

#define GOOGLE_KEYSET "https://www.gstatic.com/googlehealthapi/webhooks/webhooks_public_keyset.json"

static void test_webhooks_defaults(void **state)
{
    gw_flags flags = {0};
    json_t *j, *wh;
    (void)state;
    flags.store = "sqlite:x";
    expect_ok(load_flags(&flags));
    assert_int_equal(g_cfg->wh_enabled, 1);
    assert_int_equal(g_cfg->wh_workers, 2);
    assert_int_equal(g_cfg->wh_max_attempts, 12);
    assert_true(g_cfg->wh_max_age_s == 259200);
    assert_int_equal(g_cfg->wh_backoff_ms, 1000);
    assert_int_equal(g_cfg->wh_backoff_max_ms, 3600000);
    assert_int_equal(g_cfg->wh_timeout_ms, 10000);
    assert_true(g_cfg->wh_keep_delivered_s == 604800);
    assert_string_equal(g_cfg->wh_google_keyset, GOOGLE_KEYSET);
    assert_string_equal(g_cfg->wh_ca_file, "");
    assert_string_equal(g_cfg->wh_redis_url, "");
    assert_string_equal(g_cfg->wh_redis_host, "");
    assert_int_equal(g_cfg->wh_redis_port, 0);
    assert_int_equal(g_cfg->n_wh_sources, 0);

    j = gw_config_json(g_cfg);
    assert_non_null(j);
    wh = json_object_get(j, "webhooks");
    assert_non_null(wh);
    assert_true(json_is_true(json_object_get(wh, "enabled")));
    assert_int_equal(json_integer_value(json_object_get(wh, "workers")), 2);
    assert_int_equal(json_integer_value(json_object_get(wh, "max_attempts")), 12);
    assert_int_equal(json_integer_value(json_object_get(wh, "max_age_s")), 259200);
    assert_int_equal(json_integer_value(json_object_get(wh, "backoff_ms")), 1000);
    assert_int_equal(json_integer_value(json_object_get(wh, "backoff_max_ms")), 3600000);
    assert_int_equal(json_integer_value(json_object_get(wh, "timeout_ms")), 10000);
    assert_int_equal(json_integer_value(json_object_get(wh, "keep_delivered_s")), 604800);
    assert_string_equal(json_string_value(json_object_get(wh, "google_keyset")), GOOGLE_KEYSET);
    assert_string_equal(json_string_value(json_object_get(wh, "ca_file")), "");
    assert_string_equal(json_string_value(json_object_get(wh, "redis")), "");
    assert_int_equal(json_array_size(json_object_get(wh, "sources")), 0);
    json_decref(j);
}

/* A numeric [webhooks] setting: its range, and where its value lands. */
typedef struct wh_num {
    const char *key;
    long long min, max;
    size_t offset;
    int is_int64;     /* else int */
    const char *unit; /* "number", "number of milliseconds", "number of seconds" */
} wh_num;

static long long wh_num_get(const wh_num *n)
{
    const char *f = (const char *)g_cfg + n->offset;
    if (n->is_int64)
        return (long long)*(const int64_t *)(const void *)f;
    return *(const int *)(const void *)f;
}

/* Every numeric setting: both ends accepted (from the file and from the
 * environment), one past each end refused naming the setting, a non-number
 * refused naming the setting. */
static void test_webhooks_ranges(void **state)
{
    static const wh_num nums[] = {
        {"workers", 1, 64, offsetof(gw_config, wh_workers), 0, "number"},
        {"max_attempts", 1, 1000, offsetof(gw_config, wh_max_attempts), 0, "number"},
        {"max_age_s", 60, 31536000, offsetof(gw_config, wh_max_age_s), 1, "number of seconds"},
        {"backoff_ms", 10, 3600000, offsetof(gw_config, wh_backoff_ms), 0,
         "number of milliseconds"},
        {"backoff_max_ms", 10, 86400000, offsetof(gw_config, wh_backoff_max_ms), 0,
         "number of milliseconds"},
        {"timeout_ms", 100, 600000, offsetof(gw_config, wh_timeout_ms), 0,
         "number of milliseconds"},
        {"keep_delivered_s", 0, 315360000, offsetof(gw_config, wh_keep_delivered_s), 1,
         "number of seconds"},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        const wh_num *n = &nums[i];
        char text[256], want[160], env_name[64];
        long long ends[2];
        size_t e, k;
        ends[0] = n->min;
        ends[1] = n->max;
        /* backoff_max_ms >= backoff_ms: keep backoff_ms at its minimum */
        for (e = 0; e < 2; e++) {
            snprintf(text, sizeof text, "[webhooks]\n%s = %lld\n%s", n->key, ends[e],
                     strcmp(n->key, "backoff_max_ms") == 0 ? "backoff_ms = 10\n" : "");
            expect_ok(load_text(text));
            EXPECT(wh_num_get(n) == ends[e], "webhooks.%s = %lld: got %lld", n->key, ends[e],
                   wh_num_get(n));
        }
        snprintf(env_name, sizeof env_name, "PHIGATE_WEBHOOKS_%s", n->key);
        for (k = 0; env_name[k] != '\0'; k++) {
            if (env_name[k] >= 'a' && env_name[k] <= 'z')
                env_name[k] = (char)(env_name[k] - 'a' + 'A');
        }
        for (e = 0; e < 2; e++) {
            char num[32];
            snprintf(num, sizeof num, "%lld", ends[e]);
            setenv(env_name, num, 1);
            if (strcmp(n->key, "backoff_max_ms") == 0)
                setenv("PHIGATE_WEBHOOKS_BACKOFF_MS", "10", 1);
            expect_ok(load_text("[webhooks]\n"));
            EXPECT(wh_num_get(n) == ends[e], "%s=%lld: got %lld", env_name, ends[e], wh_num_get(n));
        }
        /* out of range, both sides */
        snprintf(want, sizeof want, "webhooks.%s: %lld is out of range (%lld..%lld) (from %s)",
                 n->key, n->max + 1, n->min, n->max, env_name);
        snprintf(text, sizeof text, "%lld", n->max + 1);
        setenv(env_name, text, 1);
        expect_err(load_text("[webhooks]\n"), want);
        unsetenv(env_name);
        unsetenv("PHIGATE_WEBHOOKS_BACKOFF_MS");
        if (n->min > 0) {
            snprintf(text, sizeof text, "[webhooks]\n%s = %lld\n", n->key, n->min - 1);
            snprintf(want, sizeof want, "webhooks.%s: %lld is out of range (%lld..%lld) (in ",
                     n->key, n->min - 1, n->min, n->max);
            expect_err(load_text(text), want);
        }
        snprintf(text, sizeof text, "[webhooks]\n%s = 1e3\n", n->key);
        snprintf(want, sizeof want, "webhooks.%s: not a %s (\"1e3\")", n->key, n->unit);
        expect_err(load_text(text), want);
    }
    /* keep_delivered_s = 0: never purge */
    expect_ok(load_text("[webhooks]\nkeep_delivered_s = 0\n"));
    assert_true(g_cfg->wh_keep_delivered_s == 0);
    /* backoff_max_ms equal to backoff_ms is fine; below it is not, from anywhere */
    expect_ok(load_text("[webhooks]\nbackoff_ms = 2000\nbackoff_max_ms = 2000\n"));
    assert_int_equal(g_cfg->wh_backoff_max_ms, 2000);
    setenv("PHIGATE_WEBHOOKS_BACKOFF_MS", "3600000", 1);
    expect_ok(load_text("[webhooks]\nbackoff_max_ms = 7200000\n")); /* above 1 h: ok */
    assert_int_equal(g_cfg->wh_backoff_max_ms, 7200000);
    setenv("PHIGATE_WEBHOOKS_BACKOFF_MS", "3600000", 1);
    expect_err(load_text("[webhooks]\nbackoff_max_ms = 3599999\n"),
               "webhooks.backoff_max_ms: 3599999 is less than webhooks.backoff_ms (3600000)");
}

/* Every other [webhooks] setting, from the file and from the environment. */
static void test_webhooks_settings(void **state)
{
    char text[1024];
    const char *ca = write_file("ca.pem", "not really a CA bundle\n");
    const char *keyset = write_file("keyset.json", "{\"keys\":[]}\n");
    (void)state;
    snprintf(text, sizeof text,
             "[webhooks]\nenabled = no\nworkers = 8\nmax_attempts = 5\nmax_age_s = 86400\n"
             "backoff_ms = 250\nbackoff_max_ms = 60000\ntimeout_ms = 2500\n"
             "keep_delivered_s = 3600\ngoogle_keyset = %s\nca_file = %s\n"
             "redis = redis://[::1]:6390\n",
             keyset, ca);
    expect_ok(load_text(text));
    assert_int_equal(g_cfg->wh_enabled, 0);
    assert_int_equal(g_cfg->wh_workers, 8);
    assert_int_equal(g_cfg->wh_max_attempts, 5);
    assert_true(g_cfg->wh_max_age_s == 86400);
    assert_int_equal(g_cfg->wh_backoff_ms, 250);
    assert_int_equal(g_cfg->wh_backoff_max_ms, 60000);
    assert_int_equal(g_cfg->wh_timeout_ms, 2500);
    assert_true(g_cfg->wh_keep_delivered_s == 3600);
    assert_string_equal(g_cfg->wh_google_keyset, keyset);
    assert_string_equal(g_cfg->wh_ca_file, ca);
    assert_string_equal(g_cfg->wh_redis_url, "redis://[::1]:6390");
    assert_string_equal(g_cfg->wh_redis_host, "::1");
    assert_int_equal(g_cfg->wh_redis_port, 6390);
    {
        json_t *j = gw_config_json(g_cfg);
        json_t *wh = json_object_get(j, "webhooks");
        assert_non_null(wh);
        assert_true(json_is_false(json_object_get(wh, "enabled")));
        assert_string_equal(json_string_value(json_object_get(wh, "redis")), "[::1]:6390");
        assert_string_equal(json_string_value(json_object_get(wh, "ca_file")), ca);
        assert_string_equal(json_string_value(json_object_get(wh, "google_keyset")), keyset);
        json_decref(j);
    }
    /* a URL keyset is not opened at start; http:// too (a test server) */
    expect_ok(load_text("[webhooks]\ngoogle_keyset = http://127.0.0.1:9/keyset.json\n"));
    assert_string_equal(g_cfg->wh_google_keyset, "http://127.0.0.1:9/keyset.json");

    /* the environment, PHIGATE_WEBHOOKS_<KEY>, over the file */
    setenv("PHIGATE_WEBHOOKS_ENABLED", "true", 1);
    setenv("PHIGATE_WEBHOOKS_GOOGLE_KEYSET", "https://keys.example/k.json", 1);
    setenv("PHIGATE_WEBHOOKS_CA_FILE", keyset, 1);
    setenv("PHIGATE_WEBHOOKS_REDIS", "redis://cache.internal", 1);
    expect_ok(load_text(text));
    assert_int_equal(g_cfg->wh_enabled, 1);
    assert_string_equal(g_cfg->wh_google_keyset, "https://keys.example/k.json");
    assert_string_equal(g_cfg->wh_ca_file, keyset);
    assert_string_equal(g_cfg->wh_redis_host, "cache.internal");
    assert_int_equal(g_cfg->wh_redis_port, 6379);
    assert_int_equal(g_cfg->wh_workers, 8); /* not overridden: the file's */
    setenv("PHIGATE_WEBHOOKS_CA_FILE", "/nonexistent/ca.pem", 1);
    expect_err(load_text(text), "webhooks.ca_file: cannot read \"/nonexistent/ca.pem\"");
    unsetenv("PHIGATE_WEBHOOKS_CA_FILE");
    setenv("PHIGATE_WEBHOOKS_ENABLED", "sometimes", 1);
    expect_err(load_text(text), "webhooks.enabled: not true or false (\"sometimes\") "
                                "(from PHIGATE_WEBHOOKS_ENABLED)");
}

/* webhooks.redis: its own, else ratelimit.redis; never a password. */
static void test_webhooks_redis(void **state)
{
    gw_flags flags = {0};
    (void)state;
    flags.store = "sqlite:x";
    /* from --redis */
    flags.redis = "redis://10.0.0.5:6381";
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->wh_redis_url, "redis://10.0.0.5:6381");
    assert_string_equal(g_cfg->wh_redis_host, "10.0.0.5");
    assert_int_equal(g_cfg->wh_redis_port, 6381);
    /* from [ratelimit] redis */
    flags.redis = NULL;
    flags.config_file = write_file("wr1.ini", "[ratelimit]\nredis = redis://rl.internal:7000\n");
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->wh_redis_host, "rl.internal");
    assert_int_equal(g_cfg->wh_redis_port, 7000);
    {
        json_t *j = gw_config_json(g_cfg);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(j, "webhooks"), "redis")),
            "rl.internal:7000");
        json_decref(j);
    }
    /* its own wins */
    flags.config_file = write_file("wr2.ini", "[ratelimit]\nredis = redis://rl.internal:7000\n"
                                              "[webhooks]\nredis = redis://wh.internal:7001\n");
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->wh_redis_host, "wh.internal");
    assert_int_equal(g_cfg->wh_redis_port, 7001);
    assert_string_equal(g_cfg->rl_redis_host, "rl.internal");
    /* neither: none */
    flags.config_file = NULL;
    expect_ok(load_flags(&flags));
    assert_string_equal(g_cfg->wh_redis_url, "");
    assert_int_equal(g_cfg->wh_redis_port, 0);
    /* a password is refused, and not echoed */
    setenv("PHIGATE_WEBHOOKS_REDIS", "redis://:s3cret@wh.internal:7001", 1);
    expect_err(load_flags(&flags), "webhooks.redis: not a Redis URL redis://HOST:PORT");
    expect_no_secret(g_err);
    assert_non_null(strstr(g_err, "(from PHIGATE_WEBHOOKS_REDIS)"));
}

/* ---- [webhook:NAME] ------------------------------------------------------------------------- */

/* text with every "$D" replaced by the test directory. */
static void expand(const char *text, char *out, size_t len)
{
    size_t o = 0, dn = strlen(g_dir);
    for (; *text != '\0' && o + dn + 1 < len; text++) {
        if (text[0] == '$' && text[1] == 'D') {
            memcpy(out + o, g_dir, dn);
            o += dn;
            text++;
        } else {
            out[o++] = *text;
        }
    }
    assert_true(*text == '\0');
    out[o] = '\0';
}

#define SECRET_TEXT "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static void write_secrets(void)
{
    write_file("s1", SECRET_TEXT "\n");
    write_file("s2", "  " SECRET_TEXT "2  \n");
    write_file("s3", SECRET_TEXT "3");
    write_file("s4", SECRET_TEXT "4");
    write_file("s5", SECRET_TEXT "5");
    write_file("token", "verify-token-" SECRET_TEXT "\n");
}

static void test_webhook_sources(void **state)
{
    char text[2048];
    const gw_wh_conf *w;
    (void)state;
    write_secrets();
    expand("[webhook:oura]\n"
           "scheme = oura\n"
           "secret_file = $D/s1 ,\t$D/s2\n"
           "verify_token_file = $D/token\n"
           "tolerance_s = 600\n"
           "max_body = 2MiB\n"
           "deliver_to = https://ingest.internal:8443/oura?x=1\n"
           "[webhook:stripe_live-2]\n"
           "deliver_to = http://127.0.0.1:9000/stripe\n"
           "secret_file = $D/s3\n"
           "scheme = stripe\n"
           "[route:a]\nprefix = /a\n",
           text, sizeof text);
    expect_ok(load_text(text));
    assert_int_equal(g_cfg->n_wh_sources, 2);
    assert_int_equal(g_cfg->n_routes, 1);
    w = &g_cfg->wh_sources[0];
    assert_string_equal(w->name, "oura");
    assert_string_equal(w->scheme, "oura");
    assert_int_equal(w->n_secret_files, 2);
    EXPECT(strcmp(w->secret_files[0] + strlen(g_dir), "/s1") == 0, "file 0: %s",
           w->secret_files[0]);
    EXPECT(strcmp(w->secret_files[1] + strlen(g_dir), "/s2") == 0, "file 1: %s",
           w->secret_files[1]);
    EXPECT(strcmp(w->verify_token_file + strlen(g_dir), "/token") == 0, "token: %s",
           w->verify_token_file);
    assert_true(w->tolerance_s == 600);
    assert_int_equal(w->max_body, 2 << 20);
    assert_string_equal(w->deliver_to, "https://ingest.internal:8443/oura?x=1");
    /* the defaults of a source */
    w = &g_cfg->wh_sources[1];
    assert_string_equal(w->name, "stripe_live-2");
    assert_string_equal(w->scheme, "stripe");
    assert_int_equal(w->n_secret_files, 1);
    assert_string_equal(w->verify_token_file, "");
    assert_true(w->tolerance_s == 300);
    assert_int_equal(w->max_body, 1 << 20);
    assert_string_equal(w->deliver_to, "http://127.0.0.1:9000/stripe");

    /* the limits: 4 files, tolerance 1..86400, max_body 1 byte..64 MiB, a
     * 64-character name */
    expand("[webhook:a123456789b123456789c123456789d123456789e123456789f123456789wxyz]\n"
           "scheme = standard-webhooks\n"
           "secret_file = $D/s1,$D/s2,$D/s3,$D/s4\n"
           "tolerance_s = 86400\nmax_body = 64m\ndeliver_to = http://h\n"
           "[webhook:b]\nscheme = unsigned\nsecret_file = $D/s5\ntolerance_s = 1\n"
           "max_body = 1\ndeliver_to = http://h/\n",
           text, sizeof text);
    expect_ok(load_text(text));
    assert_int_equal(g_cfg->n_wh_sources, 2);
    assert_int_equal(strlen(g_cfg->wh_sources[0].name), 64);
    assert_int_equal(g_cfg->wh_sources[0].n_secret_files, 4);
    assert_true(g_cfg->wh_sources[0].tolerance_s == 86400);
    assert_int_equal(g_cfg->wh_sources[0].max_body, 64 << 20);
    assert_true(g_cfg->wh_sources[1].tolerance_s == 1);
    assert_int_equal(g_cfg->wh_sources[1].max_body, 1);
    assert_string_equal(g_cfg->wh_sources[1].scheme, "unsigned");
}

static void test_webhook_sources_bad(void **state)
{
    static const bad_case cases[] = {
        {"[webhook:Oura]\nscheme = oura\n",
         "line 3: webhook source name \"Oura\" is not 1..64 characters of [a-z0-9_-]"},
        {"[webhook:a.b]\nscheme = oura\n", "webhook source name \"a.b\" is not 1..64"},
        {"[webhook:]\nscheme = oura\n", "webhook source name \"\" is not 1..64"},
        {"[webhook:a123456789b123456789c123456789d123456789e123456789f123456789vwxyz]\n",
         "webhook source name \"a123456789"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/s1\ndeliver_to = http://h\n"
         "[webhook:x]\n",
         "line 7: webhook:x is defined twice"},
        {"[webhook:x]\nscheme = foo\n",
         "webhook:x.scheme: unknown scheme \"foo\" (known: standard-webhooks, stripe, oura, "
         "whoop, fitbit, polar, suunto, unsigned"},
        {"[webhook:x]\nscheme = Stripe\n", "webhook:x.scheme: unknown scheme \"Stripe\""},
        {"[webhook:x]\nsecret_file = $D/s1\ndeliver_to = http://h\n",
         "webhook:x.scheme: not set (in "},
        {"[webhook:x]\nscheme = oura\ndeliver_to = http://h\n",
         "webhook:x.secret_file: not set (in "},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/s1\n", "webhook:x.deliver_to: not set (in "},
        {"[webhook:x]\n", "webhook:x.scheme: not set"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/missing\n",
         "webhook:x.secret_file: cannot read \"/tmp/phg-test-config-"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/s1, $D/missing\n",
         "/missing\": No such file or directory (in "},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D\n",
         "webhook:x.secret_file: cannot read \"/tmp/phg-test-config-"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/fifo\n", "not a regular file"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/s1,$D/s2,$D/s3,$D/s4,$D/s5\n",
         "webhook:x.secret_file: more than 4 files"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/s1,,$D/s2\n",
         "webhook:x.secret_file: an empty path in the list"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/s1,\n",
         "webhook:x.secret_file: an empty path in the list"},
        {"[webhook:x]\nscheme = oura\nsecret_file =\n",
         "webhook:x.secret_file: an empty path in the list"},
        {"[webhook:x]\nscheme = oura\nsecret_file = $D/s1, $D/s1\n", "/s1\" is listed twice"},
        {"[webhook:x]\nverify_token_file = $D/missing\n",
         "webhook:x.verify_token_file: cannot read"},
        {"[webhook:x]\nverify_token_file =\n", "webhook:x.verify_token_file: not a file path"},
        {"[webhook:x]\ndeliver_to = ftp://h/x\n",
         "webhook:x.deliver_to: not an http:// or https:// URL"},
        {"[webhook:x]\ndeliver_to = HTTP://h/x\n",
         "webhook:x.deliver_to: not an http:// or https:// URL"},
        {"[webhook:x]\ndeliver_to = /local/path\n", "webhook:x.deliver_to: not an http://"},
        {"[webhook:x]\ndeliver_to = https://\n", "webhook:x.deliver_to: the URL has no host"},
        {"[webhook:x]\ndeliver_to = http:///x\n", "webhook:x.deliver_to: the URL has no host"},
        {"[webhook:x]\ndeliver_to = http://h/a b\n",
         "webhook:x.deliver_to: the URL holds a space, a control character or a non-ASCII byte"},
        {"[webhook:x]\ndeliver_to = http://h/\xc3\xa9\n", "webhook:x.deliver_to: the URL holds"},
        {"[webhook:x]\ndeliver_to = https://u:pw@h/x\n",
         "webhook:x.deliver_to: user names and passwords in the URL are not accepted"},
        {"[webhook:x]\ntolerance_s = 0\n", "webhook:x.tolerance_s: 0 is out of range (1..86400)"},
        {"[webhook:x]\ntolerance_s = 86401\n", "webhook:x.tolerance_s: 86401 is out of range"},
        {"[webhook:x]\ntolerance_s = 5m\n",
         "webhook:x.tolerance_s: not a number of seconds (\"5m\")"},
        {"[webhook:x]\nmax_body = 0\n", "webhook:x.max_body: 0 is out of range (1..67108864)"},
        {"[webhook:x]\nmax_body = 67108865\n", "webhook:x.max_body: 67108865 is out of range"},
        {"[webhook:x]\nmax_body = 1.5m\n", "webhook:x.max_body: not a size (\"1.5m\")"},
        {"[webhook:x]\nscheme = oura\nscheme = oura\n", "webhook:x.scheme: set twice"},
        {"[webhook:x]\nsecret_file = $D/s1\nsecret_file = $D/s2\n",
         "webhook:x.secret_file: set twice"},
        {"[webhook:x]\ndeliver_to = http://a\ndeliver_to = http://b\n",
         "webhook:x.deliver_to: set twice"},
        {"[webhook:x]\nsecret = abc\n",
         "unknown setting webhook:x.secret (a webhook source has scheme, secret_file, "
         "verify_token_file, tolerance_s, max_body, deliver_to)"},
        {"[webhook:x]\nScheme = oura\n", "unknown setting webhook:x.Scheme"},
    };
    char fifo[300];
    size_t i;
    (void)state;
    write_secrets();
    snprintf(fifo, sizeof fifo, "%s/fifo", g_dir);
    unlink(fifo);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[2048], body[1800];
        int rc;
        expand(cases[i].text, body, sizeof body);
        snprintf(text, sizeof text, "[store]\nurl = sqlite:x\n%s", body);
        memset(g_cfg, 0x5a, sizeof *g_cfg);
        g_err[0] = '\0';
        rc = load_text(text);
        EXPECT(rc == -1, "case %zu: %s: expected failure", i, cases[i].text);
        EXPECT(strstr(g_err, cases[i].want) != NULL, "case %zu: error \"%s\" lacks \"%s\"", i,
               g_err, cases[i].want);
        EXPECT(strstr(g_err, "t.ini") != NULL, "case %zu: error \"%s\" names no file", i, g_err);
        /* no message ever holds what a secret file holds */
        EXPECT(strstr(g_err, "MfKQ9r8GKYqr") == NULL, "case %zu: a secret in \"%s\"", i, g_err);
    }
    /* a password in deliver_to is not quoted back */
    expect_err(load_text("[webhook:x]\ndeliver_to = https://u:s3cret@h/x\n"),
               "webhook:x.deliver_to: user names");
    expect_no_secret(g_err);
    unlink(fifo);
}

static void test_too_many_webhook_sources(void **state)
{
    size_t cap = (GW_WH_CONF_MAX + 1) * 600 + 64, o = 0;
    char *text = malloc(cap), line[600];
    int i;
    (void)state;
    assert_non_null(text);
    write_secrets();
    for (i = 0; i < GW_WH_CONF_MAX; i++) {
        char tmpl[200];
        snprintf(tmpl, sizeof tmpl,
                 "[webhook:w%d]\nscheme = stripe\nsecret_file = $D/s1\ndeliver_to = http://h/%d\n",
                 i, i);
        expand(tmpl, line, sizeof line);
        o += (size_t)snprintf(text + o, cap - o, "%s", line);
    }
    expect_ok(load_text(text));
    assert_int_equal(g_cfg->n_wh_sources, GW_WH_CONF_MAX);
    assert_string_equal(g_cfg->wh_sources[GW_WH_CONF_MAX - 1].name, "w31");
    snprintf(text + o, cap - o, "[webhook:one-more]\nscheme = stripe\n");
    expect_err(load_text(text), "more than 32 webhook sources");
    free(text);
}

/* gw_config_json shows each source and the paths of its files, never what
 * the files hold. */
static void test_webhooks_json(void **state)
{
    char text[1024];
    json_t *j, *sources, *s;
    char *dump;
    (void)state;
    write_secrets();
    expand("[webhook:oura]\nscheme = oura\nsecret_file = $D/s1, $D/s2\n"
           "verify_token_file = $D/token\ntolerance_s = 120\nmax_body = 256k\n"
           "deliver_to = https://ingest.internal/oura\n"
           "[webhook:polar]\nscheme = polar\nsecret_file = $D/s3\ndeliver_to = http://h/p\n"
           "[ratelimit]\nredis = redis://10.1.2.3:6379\n",
           text, sizeof text);
    expect_ok(load_text(text));
    j = gw_config_json(g_cfg);
    assert_non_null(j);
    dump = json_dumps(j, JSON_SORT_KEYS);
    assert_non_null(dump);
    EXPECT(strstr(dump, "MfKQ9r8GKYqr") == NULL, "a secret file's text in %s", dump);
    EXPECT(strstr(dump, "verify-token-") == NULL, "the token file's text in %s", dump);
    {
        /* [ratelimit] shows its URL (it can hold no password); [webhooks] only HOST:PORT */
        char *wh = json_dumps(json_object_get(j, "webhooks"), 0);
        assert_non_null(wh);
        EXPECT(strstr(wh, "redis://") == NULL, "a Redis URL in %s", wh);
        free(wh);
    }
    sources = json_object_get(json_object_get(j, "webhooks"), "sources");
    assert_int_equal(json_array_size(sources), 2);
    s = json_array_get(sources, 0);
    assert_string_equal(json_string_value(json_object_get(s, "name")), "oura");
    assert_string_equal(json_string_value(json_object_get(s, "scheme")), "oura");
    assert_int_equal(json_integer_value(json_object_get(s, "tolerance_s")), 120);
    assert_int_equal(json_integer_value(json_object_get(s, "max_body")), 256 * 1024);
    assert_string_equal(json_string_value(json_object_get(s, "deliver_to")),
                        "https://ingest.internal/oura");
    assert_int_equal(json_integer_value(json_object_get(s, "n_secret_files")), 2);
    assert_int_equal(json_array_size(json_object_get(s, "secret_files")), 2);
    assert_string_equal(json_string_value(json_array_get(json_object_get(s, "secret_files"), 0)),
                        g_cfg->wh_sources[0].secret_files[0]);
    assert_string_equal(json_string_value(json_object_get(s, "verify_token_file")),
                        g_cfg->wh_sources[0].verify_token_file);
    s = json_array_get(sources, 1);
    assert_string_equal(json_string_value(json_object_get(s, "name")), "polar");
    assert_int_equal(json_integer_value(json_object_get(s, "n_secret_files")), 1);
    assert_string_equal(json_string_value(json_object_get(s, "verify_token_file")), "");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "webhooks"), "redis")),
                        "10.1.2.3:6379");
    free(dump);
    json_decref(j);
}

static void test_route_match(void **state)
{
    gw_flags flags = {0};
    (void)state;
    flags.store = "sqlite:x";

    /* no routes: nothing matches */
    expect_ok(load_flags(&flags));
    assert_null(gw_route_match(g_cfg, "GET", "/"));

    flags.config_file =
        write_file("r.ini", "[route:v1]\nprefix = /v1\n"
                            "[route:read]\nmethods = GET,HEAD\nprefix = /v1/read\n"
                            "[route:internal]\nprefix = /internal\nrole = admin\n"
                            "[route:files]\nprefix = /files/\n"
                            "[route:dup-first]\nprefix = /dup\nscopes = phi:encrypt\n"
                            "[route:dup-second]\nprefix = /dup\n"
                            "[route:post-all]\nmethods = POST\nprefix = /\n"
                            "[route:secret]\nmethods = GET\nprefix = /secret\nrole = admin\n");
    expect_ok(load_flags(&flags));
    /* prefix boundaries */
    assert_string_equal(match("GET", "/v1/read"), "read");
    assert_string_equal(match("GET", "/v1/read/42"), "read");
    assert_string_equal(match("GET", "/v1/readings"), "v1");
    assert_string_equal(match("GET", "/v1"), "v1");
    assert_string_equal(match("GET", "/v1/"), "v1");
    assert_string_equal(match("GET", "/v10"), "(none)");
    assert_string_equal(match("GET", "/internal"), "internal");
    assert_string_equal(match("GET", "/internalx"), "(none)");
    assert_string_equal(match("GET", "/"), "(none)");
    /* a prefix ending with '/' */
    assert_string_equal(match("GET", "/files/a"), "files");
    assert_string_equal(match("GET", "/files/"), "files");
    assert_string_equal(match("GET", "/files"), "(none)");
    /* methods: the list, and "*" */
    assert_string_equal(match("HEAD", "/v1/read"), "read");
    assert_string_equal(match("POST", "/v1/read"), "v1");
    assert_string_equal(match("DELETE", "/internal/keys"), "internal");
    assert_string_equal(match("get", "/v1/read"), "v1"); /* methods are case-sensitive */
    assert_string_equal(match("GE", "/v1/read"), "v1");
    /* "/" matches everything, shorter than any other */
    assert_string_equal(match("POST", "/anything/at/all"), "post-all");
    assert_string_equal(match("POST", "/internal"), "internal");
    assert_string_equal(match("POST", "/internalx"), "post-all");
    /* equal prefixes: the first listed */
    assert_string_equal(match("GET", "/dup/x"), "dup-first");
    /* a path is matched as an upstream would read it */
    assert_string_equal(match("GET", "//internal"), "internal");
    assert_string_equal(match("GET", "/v1//read"), "read");
    assert_string_equal(match("GET", "/v1/./read"), "read");
    assert_string_equal(match("GET", "/x/../internal/keys"), "internal");
    assert_string_equal(match("GET", "/../../internal"), "internal");
    assert_string_equal(match("GET", "/internal/.."), "(none)");
    /* HEAD is GET without a body: a GET rule covers it */
    assert_string_equal(match("HEAD", "/secret/x"), "secret");
    assert_string_equal(match("PUT", "/secret/x"), "(none)");
    /* ';' ends a segment (path parameters): no way around a route */
    assert_string_equal(match("GET", "/secret;jsessionid=1"), "secret");
    assert_string_equal(match("GET", "/internal;x/keys"), "internal");
    /* a long path */
    {
        char *p = malloc(10000);
        assert_non_null(p);
        memset(p, 'a', 9999);
        p[9999] = '\0';
        memcpy(p, "/v1/read/", 9);
        assert_string_equal(match("GET", p), "read");
        free(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_full_file, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_deploy_example, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_bad_values, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_names, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_precedence, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_env_every_key, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_sizes, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_store_password, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_json, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_listen, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_upstream, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_file_size_limit, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_long_line, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_tls_files, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_long_section_names, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_too_many_routes, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_route_match, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_ratelimit, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_webhooks_defaults, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_webhooks_ranges, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_webhooks_settings, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_webhooks_redis, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_webhook_sources, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_webhook_sources_bad, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_too_many_webhook_sources, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_webhooks_json, each_setup, each_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
