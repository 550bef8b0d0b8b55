/*
 * bench.c: `phigate bench <what>`: benchmarks that print figures. They never
 * pass or fail on time; the README quotes what they print on the reference
 * machine. Loops are bounded in count and time.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "jsonl.h"
#include "store_internal.h"

#define ROUNDS 5

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct phi_case {
    phg_keyring *kr;
    size_t size;
    const uint8_t *pt;
    char *ct;
    size_t ct_len, ct_cap;
    uint8_t *back;
    int cold; /* a distinct context per operation: HKDF and key setup every time */
    unsigned long counter;
} phi_case;

static int op_encrypt(phi_case *c)
{
    char ctx[64];
    size_t n;
    int len = c->cold ? snprintf(ctx, sizeof ctx, "user=%lu;field=hrv", c->counter++)
                      : snprintf(ctx, sizeof ctx, "user=42;field=hrv");
    return phg_phi_encrypt(c->kr, ctx, (size_t)len, c->pt, c->size, c->ct, c->ct_cap, &n) ==
                   PHG_OK
               ? 0
               : -1;
}

static int op_decrypt(phi_case *c)
{
    size_t n;
    /* The cold keyring has no cache, so the one context is derived each time. */
    return phg_phi_decrypt(c->kr, "user=42;field=hrv", 17, c->ct, c->ct_len, c->back, c->size,
                           &n) == PHG_OK
               ? 0
               : -1;
}

/* Median ns per op over ROUNDS rounds, each about budget_s long. */
static double measure(int (*op)(phi_case *), phi_case *c, double budget_s, unsigned long max_ops)
{
    double per[ROUNDS];
    int r;
    for (r = 0; r < ROUNDS; r++) {
        unsigned long n = 0, batch = 64;
        double t0 = mono_s(), el;
        do {
            unsigned long i;
            for (i = 0; i < batch; i++) {
                if (op(c) != 0)
                    return -1;
            }
            n += batch;
            el = mono_s() - t0;
        } while (el < budget_s && n < max_ops);
        per[r] = el * 1e9 / (double)n;
    }
    qsort(per, ROUNDS, sizeof per[0], cmp_double);
    return per[ROUNDS / 2];
}

/* A generated wearable-data JSONL file of `records` lines; returns its size. */
static long long write_sample_jsonl(FILE *fp, unsigned long records, unsigned long users)
{
    unsigned long i;
    long long total = 0;
    unsigned seed = 12345;
    for (i = 0; i < records; i++) {
        int n;
        seed = seed * 1103515245u + 12345u;
        n = fprintf(fp,
                    "{\"user_id\":\"u%06lu\",\"device\":\"oura-ring-gen3\",\"ts\":\"2026-11-%02luT%02lu:"
                    "%02lu:00Z\",\"heart_rate\":%u,\"hrv\":%u.%u,\"resp_rate\":%u.%u,\"spo2\":%u,"
                    "\"sleep_stage\":\"%s\",\"steps\":%u}\n",
                    i % users, 1 + i % 28, (i / 60) % 24, i % 60, 50 + (seed >> 8) % 60,
                    20 + (seed >> 12) % 80, (seed >> 4) % 10, 12 + (seed >> 16) % 8,
                    (seed >> 20) % 10, 94 + (seed >> 3) % 6,
                    ((seed >> 5) & 3) == 0 ? "deep" : ((seed >> 5) & 3) == 1 ? "rem" : "light",
                    (seed >> 10) % 20000);
        if (n < 0)
            return -1;
        total += n;
    }
    return fflush(fp) == 0 ? total : -1;
}

/*
 * A daily summary per user and day, as wearable vendors export them (about
 * 750 bytes: scores, durations, contributors, timestamps), with the same four
 * PHI readings as the compact shape.
 */
static long long write_daily_jsonl(FILE *fp, unsigned long records, unsigned long users)
{
    unsigned long i;
    long long total = 0;
    unsigned seed = 54321;
    for (i = 0; i < records; i++) {
        int n;
        seed = seed * 1103515245u + 12345u;
        n = fprintf(
            fp,
            "{\"id\":\"%08lx-2f1c-4c3e-9d7a-%012lx\",\"user_id\":\"u%06lu\",\"day\":\"2026-%02lu-%02lu\","
            "\"source\":{\"vendor\":\"oura\",\"device\":\"ring-gen3\",\"firmware\":\"2.9.14\"},"
            "\"bedtime_start\":\"2026-11-26T22:%02lu:11+01:00\",\"bedtime_end\":\"2026-11-27T06:%02lu:"
            "41+01:00\",\"score\":%u,\"efficiency\":%u,\"latency_s\":%u,\"total_sleep_s\":%u,"
            "\"deep_sleep_s\":%u,\"rem_sleep_s\":%u,\"light_sleep_s\":%u,\"awake_s\":%u,"
            "\"restless_periods\":%u,\"contributors\":{\"deep_sleep\":%u,\"efficiency\":%u,"
            "\"latency\":%u,\"rem_sleep\":%u,\"restfulness\":%u,\"timing\":%u,\"total_sleep\":%u},"
            "\"temperature_deviation\":-0.%02u,\"readiness_score\":%u,\"activity_balance\":%u,"
            "\"heart_rate\":%u,\"hrv\":%u.%u,\"resp_rate\":%u.%u,\"spo2\":%u,"
            "\"synced_at\":\"2026-11-27T07:%02lu:03Z\",\"schema\":\"daily_sleep/v2\"}\n",
            i * 2654435761ul % 0xfffffffful, i, i % users, 1 + i % 12, 1 + i % 28, i % 60,
            (i * 7) % 60, 60 + seed % 40, 80 + (seed >> 3) % 20, 300 + (seed >> 5) % 900,
            21600 + (seed >> 7) % 7200, 3600 + (seed >> 9) % 3600, 5400 + (seed >> 11) % 3600,
            12000 + (seed >> 13) % 5000, 900 + (seed >> 15) % 1800, (seed >> 17) % 30,
            50 + (seed >> 2) % 50, 50 + (seed >> 4) % 50, 50 + (seed >> 6) % 50,
            50 + (seed >> 8) % 50, 50 + (seed >> 10) % 50, 50 + (seed >> 12) % 50,
            50 + (seed >> 14) % 50, (seed >> 16) % 99, 50 + (seed >> 18) % 50,
            50 + (seed >> 20) % 50, 45 + (seed >> 8) % 40, 20 + (seed >> 12) % 80,
            (seed >> 4) % 10, 12 + (seed >> 16) % 8, (seed >> 20) % 10, 94 + (seed >> 3) % 6,
            (i * 13) % 60);
        if (n < 0)
            return -1;
        total += n;
    }
    return fflush(fp) == 0 ? total : -1;
}

/* encrypt-jsonl over a generated file of one shape: 0 compact readings,
 * 1 daily summaries. Adds a JSON object to `out` or prints. */
static int jsonl_bench(phg_keyring *kr, int daily, size_t records, size_t threads, json_t *out)
{
    char path[] = "/tmp/phigate-bench-XXXXXX";
    int fd = mkstemp(path);
    FILE *in = NULL, *devnull = NULL;
    jsonl_job job;
    jsonl_stats st;
    char err[256];
    long long bytes;
    double t0, el;
    int ok;

    if (fd < 0) {
        cli_error("cannot create a temporary file: %s", strerror(errno));
        return -1;
    }
    unlink(path);
    in = fdopen(fd, "w+");
    devnull = fopen("/dev/null", "w");
    ok = in != NULL && devnull != NULL;
    bytes = !ok ? -1 : daily ? write_daily_jsonl(in, records, 10000)
                             : write_sample_jsonl(in, records, 10000);
    ok = ok && bytes > 0 && fseek(in, 0, SEEK_SET) == 0 &&
         jsonl_job_init(&job, kr, 0, "heart_rate,hrv,resp_rate,spo2",
                        "user={user_id};field={field}", err, sizeof err) == 0;
    if (!ok) {
        if (in != NULL)
            fclose(in);
        else
            close(fd);
        if (devnull != NULL)
            fclose(devnull);
        cli_error("cannot prepare the JSONL benchmark");
        return -1;
    }
    t0 = mono_s();
    ok = jsonl_run(&job, in, devnull, NULL, (int)threads, JSONL_DEFAULT_MAX_LINE, 0, &st, err,
                   sizeof err) == 0;
    el = mono_s() - t0;
    jsonl_job_free(&job);
    fclose(in);
    fclose(devnull);
    if (!ok) {
        cli_error("encrypt-jsonl failed: %s", err);
        return -1;
    }
    if (out != NULL) {
        json_object_set_new(out, daily ? "jsonl_daily" : "jsonl",
                            json_pack("{s:I,s:I,s:f,s:I,s:f,s:f,s:f,s:f}", "records",
                                      (json_int_t)st.records, "bytes", (json_int_t)bytes,
                                      "bytes_per_record", (double)bytes / (double)st.records,
                                      "threads", (json_int_t)threads, "seconds", el, "mb_per_s",
                                      (double)bytes / 1e6 / el, "records_per_s",
                                      (double)st.records / el, "fields_per_s",
                                      4.0 * (double)st.records / el));
    } else {
        printf("\nencrypt-jsonl, %s: %llu records of %.0f bytes (%.1f MB), 4 fields encrypted "
               "per record, 10,000 users, %zu threads\n"
               "  %.2f s: %.1f MB/s of input, %.0f records/s, %.0f fields/s\n",
               daily ? "daily summaries" : "compact readings", (unsigned long long)st.records,
               (double)bytes / (double)st.records, (double)bytes / 1e6, threads, el,
               (double)bytes / 1e6 / el, (double)st.records / el,
               4.0 * (double)st.records / el);
    }
    return 0;
}

static int bench_phi(int argc, char **argv)
{
    cli_opt opts[] = {{"json", 0, NULL, 0},    {"records", 1, NULL, 0},
                      {"threads", 1, NULL, 0}, {"seconds", 1, NULL, 0},
                      {NULL, 0, NULL, 0}};
    static const size_t sizes[] = {64, 1024, 65536};
    phg_masterkeys *mk = NULL;
    phg_keyring *warm = NULL, *cold = NULL;
    phg_keyring_options o;
    char key[PHG_FERNET_KEY_TEXT_LEN + 1];
    uint8_t *pt = NULL;
    json_t *out = NULL, *rows = NULL;
    size_t i, records = 1000000, threads = 0;
    double budget = 0.2;
    int rc = CLI_FAIL;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate bench phi [--json] [--records N] [--threads N]\n\n"
             "Print, for 64 B, 1 KiB and 64 KiB fields, encrypt and decrypt ns/op with a\n"
             "warm derived-key cache and with a cold one (HKDF and key setup each time);\n"
             "then the MB/s of encrypt-jsonl over two generated files of N records each\n"
             "(default 1,000,000): compact readings (~165 B) and daily summaries (~750 B),\n"
             "4 encrypted fields per record, on all cores. Medians of 5 rounds, one thread\n"
             "for the per-op figures. Uses a throwaway in-memory master key.");
        return CLI_OK;
    }
    if (cli_parse_opts("bench phi", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[1].set && (!cli_parse_size(opts[1].value, &records) || records < 1 ||
                        records > 100000000))
        return cli_usage("bench phi", "--records must be 1 to 100000000");
    if (opts[2].set && (!cli_parse_size(opts[2].value, &threads) || threads < 1 || threads > 256))
        return cli_usage("bench phi", "--threads must be 1 to 256");
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (size_t)n : 1;
    }
    if (phg_fernet_key_generate(key) != PHG_OK ||
        phg_phi_masterkeys_parse(key, strlen(key), &mk) != PHG_OK)
        goto out;
    phg_wipe(key, sizeof key);
    phg_keyring_options_init(&o);
    o.cache_entries = JSONL_DEFAULT_CACHE; /* as encrypt-jsonl uses */
    if (phg_keyring_create(mk, &o, &warm) != PHG_OK)
        goto out;
    {
        char *text = NULL;
        size_t len = 0;
        o.cache_entries = 0;
        if (phg_keyring_to_json(warm, &text, &len) != PHG_OK ||
            phg_keyring_from_json(text, len, mk, &o, &cold, NULL) != PHG_OK) {
            free(text);
            goto out;
        }
        free(text);
    }
    pt = malloc(65536);
    if (pt == NULL || phg_random_bytes(pt, 65536) != PHG_OK)
        goto out;

    out = json_object();
    rows = json_array();
    if (!opts[0].set)
        printf("PHI field encryption, one thread, median of %d rounds (ns/op)\n"
               "%8s %14s %14s %14s %14s\n",
               ROUNDS, "size", "enc warm", "dec warm", "enc cold", "dec cold");
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        phi_case c;
        double ew, dw, ec, dc;
        memset(&c, 0, sizeof c);
        c.size = sizes[i];
        c.pt = pt;
        c.ct_cap = PHG_PHI_CIPHERTEXT_MAX_LEN(c.size);
        c.ct = malloc(c.ct_cap);
        c.back = malloc(c.size);
        if (c.ct == NULL || c.back == NULL) {
            free(c.ct);
            free(c.back);
            goto out;
        }
        c.kr = warm;
        ew = measure(op_encrypt, &c, budget, 5000000);
        (void)op_encrypt(&c);
        (void)phg_phi_encrypt(warm, "user=42;field=hrv", 17, pt, c.size, c.ct, c.ct_cap,
                              &c.ct_len);
        dw = measure(op_decrypt, &c, budget, 5000000);
        c.kr = cold;
        dc = measure(op_decrypt, &c, budget, 2000000); /* before ct is overwritten below */
        c.cold = 1;
        ec = measure(op_encrypt, &c, budget, 2000000);
        free(c.ct);
        free(c.back);
        if (ew < 0 || dw < 0 || ec < 0 || dc < 0) {
            cli_error("an operation failed during the benchmark");
            goto out;
        }
        if (opts[0].set)
            json_array_append_new(rows, json_pack("{s:I,s:f,s:f,s:f,s:f}", "size",
                                                  (json_int_t)c.size, "encrypt_warm_ns", ew,
                                                  "decrypt_warm_ns", dw, "encrypt_cold_ns", ec,
                                                  "decrypt_cold_ns", dc));
        else
            printf("%8zu %14.0f %14.0f %14.0f %14.0f\n", c.size, ew, dw, ec, dc);
    }
    json_object_set_new(out, "fields", rows);
    rows = NULL;

    /* JSONL migration throughput over generated files of two shapes. */
    if (jsonl_bench(warm, 0, records, threads, opts[0].set ? out : NULL) != 0 ||
        jsonl_bench(warm, 1, records, threads, opts[0].set ? out : NULL) != 0)
        goto out;
    if (opts[0].set) {
        rc = cli_print_json(out);
        out = NULL;
    } else {
        rc = CLI_OK;
    }
out:
    json_decref(rows);
    json_decref(out);
    free(pt);
    phg_keyring_free(warm);
    phg_keyring_free(cold);
    phg_phi_masterkeys_free(mk);
    return rc;
}

/* ---- API key verification ------------------------------------------------------ */

static long rss_kib(void)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (fp != NULL && fgets(line, sizeof line, fp) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    }
    if (fp != NULL)
        fclose(fp);
    return kib;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Verify `ops` keys drawn from keys[0..pool) one at a time; median and p99
 * of single operations, less the timer's own cost. */
static int time_verifies(phg_keys *keys, char (*texts)[PHG_APIKEY_LEN + 1], size_t pool,
                         size_t ops, double *median, double *p99)
{
    uint64_t *ns = malloc(ops * sizeof *ns), overhead, t0, t1;
    unsigned seed = 7;
    size_t i;
    if (ns == NULL)
        return -1;
    for (i = 0; i < 1000; i++) { /* the timer alone */
        t0 = mono_ns();
        t1 = mono_ns();
        ns[i] = t1 - t0;
    }
    qsort(ns, 1000, sizeof *ns, cmp_u64);
    overhead = ns[500];
    for (i = 0; i < ops; i++) {
        phg_identity id;
        phg_apikey_reason reason;
        size_t k;
        seed = seed * 1103515245u + 12345u;
        k = ((size_t)seed << 16 ^ (size_t)(seed >> 8)) % pool;
        t0 = mono_ns();
        if (phg_keys_verify(keys, texts[k], PHG_APIKEY_LEN, &id, &reason) != PHG_OK) {
            free(ns);
            return -1;
        }
        t1 = mono_ns();
        ns[i] = t1 - t0 > overhead ? t1 - t0 - overhead : 0;
    }
    qsort(ns, ops, sizeof *ns, cmp_u64);
    *median = (double)ns[ops / 2];
    *p99 = (double)ns[ops * 99 / 100];
    free(ns);
    return 0;
}

static int bench_keys(int argc, char **argv)
{
    cli_opt opts[] = {{"json", 0, NULL, 0}, {"keys", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    char dir[] = "/tmp/phigate-bench-keys-XXXXXX", url[128], err[PHG_STORE_ERR_MAX];
    char (*texts)[PHG_APIKEY_LEN + 1] = NULL;
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_keys_options ko;
    phg_keys_stats st;
    size_t nkeys = 1000000, sample, i;
    long rss0, rss1;
    double load_s, med_all = 0, p99_all = 0, med_hot = 0, p99_hot = 0, t0;
    int rc = CLI_FAIL;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate bench keys [--keys N] [--json]\n\n"
             "Load N active API keys (default 1,000,000) into the verification index, then\n"
             "print the median and p99 of one verify (format check, SHA-256, index, constant-\n"
             "time compare, state) for keys drawn uniformly from all N and from a hot set of\n"
             "1,000, on one thread; and the index's bytes per key (counted, and as resident\n"
             "memory growth).");
        return CLI_OK;
    }
    if (cli_parse_opts("bench keys", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[1].set && (!cli_parse_size(opts[1].value, &nkeys) || nkeys < 1000 ||
                        nkeys > 20000000))
        return cli_usage("bench keys", "--keys must be 1000 to 20000000");
    if (mkdtemp(dir) == NULL) {
        cli_error("cannot create a temporary folder: %s", strerror(errno));
        return CLI_FAIL;
    }
    snprintf(url, sizeof url, "sqlite:%s/bench.db", dir);
    err[0] = '\0';
    if (phg_store_open(url, NULL, &store, err, sizeof err) != PHG_OK ||
        phg_store_migrate(store, NULL, NULL, err, sizeof err) != PHG_OK) {
        cli_error("bench store: %s", err);
        goto out;
    }
    phg_keys_options_init(&ko);
    ko.start_poller = 0;
    if (phg_keys_open(store, &ko, &keys) != PHG_OK)
        goto out;
    sample = nkeys < 200000 ? nkeys : 200000;
    texts = malloc(sample * sizeof *texts);
    if (texts == NULL)
        goto out;
    rss0 = rss_kib();
    t0 = mono_s();
    for (i = 0; i < nkeys; i++) {
        phg_apikey_record rec;
        char key[PHG_APIKEY_LEN + 1];
        memset(&rec, 0, sizeof rec);
        if (phg_apikey_generate(key) != PHG_OK ||
            phg_internal_apikey_hash(key, PHG_APIKEY_LEN, rec.hash) != PHG_OK)
            goto out;
        snprintf(rec.id, sizeof rec.id, "ak_%016zx", i);
        snprintf(rec.user_id, sizeof rec.user_id, "user-%zu", i);
        for (int b = 0; b < 8; b++)
            rec.index = (int64_t)((uint64_t)rec.index << 8 | rec.hash[b]);
        rec.role = PHG_ROLE_USER;
        rec.scopes = PHG_SCOPE_PHI_ENCRYPT | PHG_SCOPE_PHI_DECRYPT;
        rec.created_at = (int64_t)time(NULL);
        if (phg_internal_keys_index_add(keys, &rec) != PHG_OK)
            goto out;
        if (i < sample)
            memcpy(texts[i], key, sizeof key);
        phg_wipe(key, sizeof key);
    }
    load_s = mono_s() - t0;
    rss1 = rss_kib();
    phg_keys_get_stats(keys, &st);
    /* the sampled texts are the bench's, not the index's: take them out */
    rss1 -= (long)(sample * sizeof *texts / 1024);
    if (time_verifies(keys, texts, sample, 1000000, &med_all, &p99_all) != 0 ||
        time_verifies(keys, texts, 1000, 1000000, &med_hot, &p99_hot) != 0) {
        cli_error("a verification failed during the benchmark");
        goto out;
    }
    if (opts[0].set) {
        rc = cli_print_json(json_pack(
            "{s:I,s:f,s:{s:f,s:f},s:{s:f,s:f},s:f,s:f}", "keys", (json_int_t)st.indexed,
            "load_seconds", load_s, "verify_uniform_ns", "median", med_all, "p99", p99_all,
            "verify_hot1000_ns", "median", med_hot, "p99", p99_hot, "index_bytes_per_key",
            (double)st.index_bytes / (double)st.indexed, "rss_bytes_per_key",
            (double)(rss1 - rss0) * 1024.0 / (double)st.indexed));
    } else {
        printf("API key verification, %zu active keys indexed (loaded in %.1f s), one thread\n"
               "  verify, keys drawn uniformly from %zu: median %.0f ns, p99 %.0f ns\n"
               "  verify, hot set of 1,000 keys:        median %.0f ns, p99 %.0f ns\n"
               "  index memory: %.0f bytes per key counted, %.0f bytes per key resident\n",
               st.indexed, load_s, sample, med_all, p99_all, med_hot, p99_hot,
               (double)st.index_bytes / (double)st.indexed,
               (double)(rss1 - rss0) * 1024.0 / (double)st.indexed);
        rc = CLI_OK;
    }
out:
    if (rc != CLI_OK && err[0] == '\0')
        cli_error("the keys benchmark failed");
    free(texts);
    phg_keys_close(keys);
    phg_store_close(store);
    snprintf(url, sizeof url, "%s/bench.db", dir);
    unlink(url);
    snprintf(url, sizeof url, "%s/bench.db-wal", dir);
    unlink(url);
    snprintf(url, sizeof url, "%s/bench.db-shm", dir);
    unlink(url);
    rmdir(dir);
    return rc;
}

/* ---- audit appends ---------------------------------------------------------------- */

typedef struct appender {
    phg_audit *audit;
    double seconds;
    uint64_t *lat_ns;
    size_t cap, n;
    int failed;
    pthread_t tid;
} appender;

static void *appender_main(void *arg)
{
    appender *ap = arg;
    uint64_t t_end = mono_ns() + (uint64_t)(ap->seconds * 1e9);
    phg_audit_event ev;
    memset(&ev, 0, sizeof ev);
    ev.action = "phi.decrypt";
    ev.resource = "POST /v1/phi/decrypt";
    ev.outcome = "success";
    ev.user_id = "user-42";
    ev.key_id = "ak_benchbenchbench1";
    ev.role = "user";
    ev.ip = "127.0.0.1";
    ev.subject = "42";
    ev.details_json = "{\"status\":200,\"bytes\":512,\"fields\":[\"hrv\",\"heart_rate\"],"
                      "\"upstream_ms\":3}";
    while (ap->n < ap->cap) {
        uint64_t t0 = mono_ns(), t1;
        if (t0 >= t_end)
            break;
        if (phg_audit_append(ap->audit, &ev, NULL) != PHG_OK) {
            ap->failed = 1;
            break;
        }
        t1 = mono_ns();
        ap->lat_ns[ap->n++] = t1 - t0;
    }
    return NULL;
}

/* N appenders for `seconds` on one writer; prints one line or adds JSON. */
static int audit_round(phg_store *store, const char *engine, int threads, double seconds,
                       json_t *out)
{
    phg_audit_options o;
    phg_audit *audit = NULL;
    phg_audit_stats st;
    appender *aps = calloc((size_t)threads, sizeof *aps);
    uint8_t key[32];
    char chain[64];
    uint64_t *all = NULL;
    size_t total = 0, i, k;
    double t0, el;
    int rc = -1;

    if (aps == NULL || phg_random_bytes(key, sizeof key) != PHG_OK)
        goto out;
    snprintf(chain, sizeof chain, "bench-%d-%ld", threads, (long)getpid());
    phg_audit_options_init(&o);
    o.chain = chain;
    if (phg_audit_open(store, &o, key, &audit) != PHG_OK)
        goto out;
    t0 = mono_s();
    for (i = 0; i < (size_t)threads; i++) {
        aps[i].audit = audit;
        aps[i].seconds = seconds;
        aps[i].cap = 2000000 / (size_t)threads + 1;
        aps[i].lat_ns = malloc(aps[i].cap * sizeof(uint64_t));
        if (aps[i].lat_ns == NULL || pthread_create(&aps[i].tid, NULL, appender_main, &aps[i]) != 0)
            goto out; /* threads already started are joined below */
    }
    for (i = 0; i < (size_t)threads; i++)
        pthread_join(aps[i].tid, NULL);
    el = mono_s() - t0;
    phg_audit_get_stats(audit, &st);
    for (i = 0; i < (size_t)threads; i++) {
        if (aps[i].failed) {
            cli_error("an append failed during the audit benchmark");
            goto out;
        }
        total += aps[i].n;
    }
    all = malloc((total ? total : 1) * sizeof *all);
    if (all == NULL)
        goto out;
    for (i = 0, k = 0; i < (size_t)threads; i++) {
        memcpy(all + k, aps[i].lat_ns, aps[i].n * sizeof *all);
        k += aps[i].n;
    }
    qsort(all, total, sizeof *all, cmp_u64);
    if (out != NULL) {
        json_array_append_new(out, json_pack("{s:s,s:i,s:I,s:f,s:f,s:f,s:f}", "engine", engine,
                                             "appenders", threads, "records", (json_int_t)total,
                                             "records_per_s", (double)total / el,
                                             "median_ms", (double)all[total / 2] / 1e6,
                                             "p99_ms", (double)all[total * 99 / 100] / 1e6,
                                             "records_per_commit",
                                             st.commits ? (double)total / (double)st.commits : 0));
    } else {
        printf("%-9s %4d appenders: %9.0f records/s, append median %6.2f ms, p99 %7.2f ms "
               "(%.0f records per commit, writer busy %.0f%%)\n",
               engine, threads, (double)total / el, (double)all[total / 2] / 1e6,
               (double)all[total * 99 / 100] / 1e6,
               st.commits ? (double)total / (double)st.commits : 0.0,
               100.0 * st.commit_ms_total / (el * 1000.0));
    }
    rc = 0;
out:
    phg_audit_close(audit);
    if (aps != NULL) {
        for (i = 0; i < (size_t)threads; i++)
            free(aps[i].lat_ns);
    }
    free(aps);
    free(all);
    phg_wipe(key, sizeof key);
    return rc;
}

static int bench_audit(int argc, char **argv)
{
    cli_opt opts[] = {{"json", 0, NULL, 0}, {"postgres", 1, NULL, 0}, {"seconds", 1, NULL, 0},
                      {NULL, 0, NULL, 0}};
    static const int counts[] = {1, 8, 64};
    char dir[] = "/tmp/phigate-bench-audit-XXXXXX", url[128], err[PHG_STORE_ERR_MAX];
    json_t *rows = NULL;
    size_t secs = 3;
    int rc = CLI_FAIL, e;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate bench audit [--postgres URL] [--seconds N] [--json]\n\n"
             "Durable audit appends: records/s and the median and p99 latency of one\n"
             "append (returns when the record is committed and fsync'd), for 1, 8 and 64\n"
             "concurrent appenders, N seconds each (default 3), on SQLite (a temporary\n"
             "file) and, with --postgres URL (a migrated database), on PostgreSQL.\n"
             "bench/audit.sh starts a throwaway PostgreSQL and runs both.");
        return CLI_OK;
    }
    if (cli_parse_opts("bench audit", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[2].set && (!cli_parse_size(opts[2].value, &secs) || secs < 1 || secs > 60))
        return cli_usage("bench audit", "--seconds must be 1 to 60");
    if (mkdtemp(dir) == NULL) {
        cli_error("cannot create a temporary folder: %s", strerror(errno));
        return CLI_FAIL;
    }
    snprintf(url, sizeof url, "sqlite:%s/audit.db", dir);
    rows = opts[0].set ? json_array() : NULL;
    for (e = 0; e < 2; e++) {
        phg_store *store = NULL;
        const char *engine = e == 0 ? "sqlite" : "postgres";
        const char *u = e == 0 ? url : opts[1].value;
        size_t i;
        if (e == 1 && !opts[1].set)
            break;
        err[0] = '\0';
        if (phg_store_open(u, NULL, &store, err, sizeof err) != PHG_OK ||
            phg_store_migrate(store, NULL, NULL, err, sizeof err) != PHG_OK) {
            cli_error("bench store %s: %s", engine, err);
            phg_store_close(store);
            goto out;
        }
        for (i = 0; i < sizeof counts / sizeof counts[0]; i++) {
            if (audit_round(store, engine, counts[i], (double)secs, rows) != 0) {
                phg_store_close(store);
                goto out;
            }
        }
        phg_store_close(store);
    }
    rc = rows != NULL ? cli_print_json(json_pack("{s:o}", "audit", rows)) : CLI_OK;
    rows = NULL;
out:
    json_decref(rows);
    {
        char path[200];
        snprintf(path, sizeof path, "%s/audit.db", dir);
        unlink(path);
        snprintf(path, sizeof path, "%s/audit.db-wal", dir);
        unlink(path);
        snprintf(path, sizeof path, "%s/audit.db-shm", dir);
        unlink(path);
        rmdir(dir);
    }
    return rc;
}

static const char bench_help[] = "Usage: phigate bench <what> [options]\n"
                                 "\n"
                                 "Benchmarks that print figures (they never pass or fail):\n"
                                 "  phi    PHI field encryption and JSONL migration\n"
                                 "  keys   API key verification with a million keys\n"
                                 "  audit  durable audit appends, 1/8/64 appenders\n"
                                 "  ratelimit  rate-limit decisions: local engine, and Redis with --redis\n"
                                 "  webhook  webhook verifications/s per scheme (1 KiB bodies)\n";

int cmd_bench(int argc, char **argv)
{
    static const cli_command table[] = {
        {"phi", "", bench_phi},
        {"keys", "", bench_keys},
        {"audit", "", bench_audit},
        {"ratelimit", "", cli_bench_ratelimit},
        {"webhook", "", cli_bench_webhook},
        {NULL, NULL, NULL},
    };
    return cli_dispatch("bench", bench_help, table, argc, argv);
}
