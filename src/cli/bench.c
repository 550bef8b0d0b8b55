/*
 * bench.c: `phigate bench <what>`: benchmarks that print figures. They never
 * pass or fail on time; the README quotes what they print on the reference
 * machine. Loops are bounded in count and time.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "jsonl.h"

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
             "then the MB/s of encrypt-jsonl over a generated file of N records (default\n"
             "1,000,000) on all cores. Medians of 5 rounds, one thread for the per-op\n"
             "figures. Uses a throwaway in-memory master key.");
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

    /* JSONL migration throughput over a generated file. */
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
            goto out;
        }
        unlink(path);
        in = fdopen(fd, "w+");
        devnull = fopen("/dev/null", "w");
        ok = in != NULL && devnull != NULL;
        bytes = ok ? write_sample_jsonl(in, records, 10000) : -1;
        ok = ok && bytes > 0 && fseek(in, 0, SEEK_SET) == 0 &&
             jsonl_job_init(&job, warm, 0, "heart_rate,hrv,resp_rate,spo2",
                            "user={user_id};field={field}", err, sizeof err) == 0;
        if (!ok) {
            if (in != NULL)
                fclose(in);
            else
                close(fd);
            if (devnull != NULL)
                fclose(devnull);
            cli_error("cannot prepare the JSONL benchmark");
            goto out;
        }
        t0 = mono_s();
        ok = jsonl_run(&job, in, devnull, NULL, (int)threads, JSONL_DEFAULT_MAX_LINE, 0, &st,
                       err, sizeof err) == 0;
        el = mono_s() - t0;
        jsonl_job_free(&job);
        fclose(in);
        fclose(devnull);
        if (!ok) {
            cli_error("encrypt-jsonl failed: %s", err);
            goto out;
        }
        if (opts[0].set) {
            json_object_set_new(out, "jsonl", json_pack("{s:I,s:I,s:I,s:f,s:f,s:f}", "records",
                                                        (json_int_t)st.records, "bytes",
                                                        (json_int_t)bytes, "threads",
                                                        (json_int_t)threads, "seconds", el,
                                                        "mb_per_s", (double)bytes / 1e6 / el,
                                                        "records_per_s",
                                                        (double)st.records / el));
        } else {
            printf("\nencrypt-jsonl: %llu records (%.1f MB, 4 fields encrypted per record, "
                   "10,000 users), %zu threads\n"
                   "  %.2f s, %.1f MB/s of input, %.0f records/s\n",
                   (unsigned long long)st.records, (double)bytes / 1e6, threads, el,
                   (double)bytes / 1e6 / el, (double)st.records / el);
        }
    }
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

static const char bench_help[] = "Usage: phigate bench <what> [options]\n"
                                 "\n"
                                 "Benchmarks that print figures (they never pass or fail):\n"
                                 "  phi    PHI field encryption and JSONL migration\n";

int cmd_bench(int argc, char **argv)
{
    static const cli_command table[] = {
        {"phi", "", bench_phi},
        {NULL, NULL, NULL},
    };
    return cli_dispatch("bench", bench_help, table, argc, argv);
}
