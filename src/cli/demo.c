/*
 * demo.c: `phigate demo`, what `make run` starts: the gateway on a
 * development setup under ./var/demo (a development master key, SQLite, the
 * built-in sample biometric upstream, an admin key and a user key), with
 * ready-to-paste curl commands; it runs until Ctrl-C.
 *
 * `phigate demo walkthrough` walks through PHI field encryption on files,
 * printing what happens at each step: a development master key, a keyring,
 * field encryption under contexts, one error for every decryption failure,
 * rotation, rewrap and crypto-shredding, and a JSONL migration.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "gw.h"
#include "jsonl.h"

static void step(const char *title)
{
    printf("\n== %s\n", title);
}

static int encrypt_str(phg_keyring *kr, const char *ctx, const char *pt, char *out, size_t cap)
{
    size_t n = 0;
    if (phg_phi_encrypt(kr, ctx, strlen(ctx), (const uint8_t *)pt, strlen(pt), out, cap - 1, &n) !=
        PHG_OK)
        return -1;
    out[n] = '\0';
    return 0;
}

static const char *try_decrypt(phg_keyring *kr, const char *ctx, const char *ct, char *out,
                               size_t cap)
{
    size_t n = 0;
    phg_status st = phg_phi_decrypt(kr, ctx, strlen(ctx), ct, strlen(ct), (uint8_t *)out, cap - 1,
                                    &n);
    if (st != PHG_OK)
        return phg_strerror(st);
    out[n] = '\0';
    return NULL;
}

static int make_dirs(const char *dir)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            (void)mkdir(tmp, 0700);
            *p = '/';
        }
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST) {
        cli_error("cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int demo_walkthrough(int argc, char **argv)
{
    cli_opt opts[] = {{"dir", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *dir = "var/demo";
    char path[512], keypath[512], key[PHG_FERNET_KEY_TEXT_LEN + 1];
    char kid1[PHG_PHI_KID_MAX + 1], kid2[PHG_PHI_KID_MAX + 1];
    char ct_hrv[256], ct_hr[256], ct_new[256], buf[256];
    const char *fail;
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    size_t n = 0;
    FILE *fp;
    int rc = CLI_FAIL;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate demo walkthrough [--dir DIR]\n\n"
             "A short demonstration of PHI field encryption, on files under DIR\n"
             "(default var/demo): development master key, keyring, encrypt and decrypt\n"
             "under contexts, rotation, rewrap, crypto-shredding and a JSONL migration.");
        return CLI_OK;
    }
    if (cli_parse_opts("demo walkthrough", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[0].set)
        dir = opts[0].value;
    if (strlen(dir) > 400)
        return cli_usage("demo walkthrough", "--dir is too long");
    if (make_dirs(dir) != 0)
        return CLI_FAIL;
    snprintf(keypath, sizeof keypath, "%s/master.key", dir);
    snprintf(path, sizeof path, "%s/keyring.json", dir);
    unlink(path);

    printf("phigate %s demo: PHI field encryption (files in %s/)\n", phg_version(), dir);

    step("1. A master key (KEK)");
    if (phg_fernet_key_generate(key) != PHG_OK)
        goto out;
    fp = fopen(keypath, "w");
    if (fp == NULL || fchmod(fileno(fp), 0600) != 0 || fprintf(fp, "%s\n", key) < 0 ||
        fclose(fp) != 0) {
        cli_error("cannot write %s", keypath);
        goto out;
    }
    if (phg_phi_masterkeys_parse(key, strlen(key), &mk) != PHG_OK)
        goto out;
    phg_wipe(key, sizeof key);
    printf("   WARNING: this is a DEVELOPMENT master key, written to %s.\n"
           "   WARNING: never use it for real data; in production it comes from a secret\n"
           "   WARNING: manager through PHI_MASTER_KEY or PHI_MASTER_KEY_FILE.\n",
           keypath);

    step("2. A keyring: data keys (DEKs) wrapped under the master key");
    if (phg_keyring_create(mk, NULL, &kr) != PHG_OK || phg_keyring_save_file(kr, path) != PHG_OK)
        goto out;
    (void)phg_keyring_primary(kr, kid1);
    printf("   %s holds one data key, kid %s, wrapped as a Fernet token.\n"
           "   The file has no plaintext key; the master key is needed to use it.\n",
           path, kid1);

    step("3. Encrypt fields of user 42 under their contexts");
    if (encrypt_str(kr, "user=42;field=hrv", "48.2", ct_hrv, sizeof ct_hrv) != 0 ||
        encrypt_str(kr, "user=42;field=heart_rate", "61", ct_hr, sizeof ct_hr) != 0)
        goto out;
    printf("   hrv=48.2        context user=42;field=hrv\n     -> %s\n", ct_hrv);
    printf("   heart_rate=61   context user=42;field=heart_rate\n     -> %s\n", ct_hr);
    printf("   Each field key is HKDF(DEK, context); the nonce is random, so the same\n"
           "   value never encrypts to the same text twice.\n");

    step("4. Decrypt, and what happens when anything is wrong");
    fail = try_decrypt(kr, "user=42;field=hrv", ct_hrv, buf, sizeof buf);
    printf("   right context:          %s%s\n", fail ? "FAILED " : "hrv = ", fail ? fail : buf);
    fail = try_decrypt(kr, "user=43;field=hrv", ct_hrv, buf, sizeof buf);
    printf("   another user's context: %s\n", fail ? fail : "opened (UNEXPECTED)");
    fail = try_decrypt(kr, "user=42;field=heart_rate", ct_hrv, buf, sizeof buf);
    printf("   another field's context: %s\n", fail ? fail : "opened (UNEXPECTED)");
    snprintf(buf, sizeof buf, "%s", ct_hrv);
    buf[strlen(buf) - 3] = buf[strlen(buf) - 3] == 'A' ? 'B' : 'A';
    {
        char plain[256];
        fail = try_decrypt(kr, "user=42;field=hrv", buf, plain, sizeof plain);
    }
    printf("   one character changed:  %s\n", fail ? fail : "opened (UNEXPECTED)");
    printf("   (one error for every cause: an attacker learns nothing from it)\n");

    step("5. Rotate: a new primary data key; old data still opens");
    if (phg_keyring_rotate(kr, kid2) != PHG_OK || phg_keyring_save_file(kr, path) != PHG_OK)
        goto out;
    printf("   primary is now %s; %s is decrypt-only\n", kid2, kid1);
    fail = try_decrypt(kr, "user=42;field=hrv", ct_hrv, buf, sizeof buf);
    printf("   old ciphertext under %s: %s%s\n", kid1, fail ? "FAILED " : "hrv = ",
           fail ? fail : buf);
    if (phg_phi_rewrap(kr, "user=42;field=hrv", 17, ct_hrv, strlen(ct_hrv), ct_new,
                       sizeof ct_new - 1, &n) != PHG_OK)
        goto out;
    ct_new[n] = '\0';
    printf("   rewrapped to the new key: %s\n", ct_new);

    step("6. Crypto-shredding: destroy the old data key");
    if (phg_keyring_destroy(kr, kid1) != PHG_OK || phg_keyring_save_file(kr, path) != PHG_OK)
        goto out;
    fail = try_decrypt(kr, "user=42;field=heart_rate", ct_hr, buf, sizeof buf);
    printf("   heart_rate under destroyed %s: %s (gone for good)\n", kid1,
           fail ? fail : "opened (UNEXPECTED)");
    fail = try_decrypt(kr, "user=42;field=hrv", ct_new, buf, sizeof buf);
    printf("   hrv rewrapped under %s:      %s%s\n", kid2, fail ? "FAILED " : "hrv = ",
           fail ? fail : buf);

    step("7. Migrating existing data: encrypt-jsonl");
    {
        static const char *records[] = {
            "{\"user_id\":\"42\",\"ts\":\"2026-11-27T07:00:00Z\",\"hrv\":48.2,\"heart_rate\":61}",
            "{\"user_id\":\"7\",\"ts\":\"2026-11-27T07:00:00Z\",\"hrv\":null,\"heart_rate\":[58,60]}",
        };
        jsonl_job job;
        jbuf out = {NULL, 0, 0, 1 << 20};
        char err[256];
        size_t r;
        if (jsonl_job_init(&job, kr, 0, "hrv,heart_rate", "user={user_id};field={field}", err,
                           sizeof err) != 0)
            goto out;
        printf("   phigate phi encrypt-jsonl --fields hrv,heart_rate "
               "--context 'user={user_id};field={field}'\n");
        for (r = 0; r < 2; r++) {
            out.len = 0;
            if (jsonl_transform(&job, records[r], strlen(records[r]), &out, err, sizeof err) != 0)
                break;
            printf("   in:  %s\n   out: %.*s", records[r], (int)out.len, out.p);
        }
        jsonl_job_free(&job);
        jbuf_free(&out);
        if (r != 2)
            goto out;
    }

    printf("\nTry it yourself:\n"
           "  export PHI_MASTER_KEY_FILE=%s\n"
           "  ./build/phigate phi keyring list --keyring %s\n"
           "  printf 'hello' | ./build/phigate phi encrypt --keyring %s --context user=1\n"
           "  ./build/phigate phi --help\n",
           keypath, path, path);
    rc = CLI_OK;
out:
    if (rc != CLI_OK)
        cli_error("the demo failed");
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

/* ---- the gateway demo ------------------------------------------------------------------ */

typedef struct demo_state {
    char admin_key[PHG_APIKEY_LEN + 1];
    char user_key[PHG_APIKEY_LEN + 1];
    char user_id[64];
    int upstream_port;
} demo_state;

static void demo_ready(void *arg, const char *host, int port, int tls)
{
    demo_state *d = arg;
    char base[300];
    snprintf(base, sizeof base, "%s://%s:%d", tls ? "https" : "http", host, port);
    printf("\n"
           "phigate is running at %s, in front of the sample biometric API on\n"
           "127.0.0.1:%d. Logs (JSON lines) go to stderr. Stop it with Ctrl-C.\n\n"
           "  admin key:  %s\n"
           "  user key:   %s   (user %s, scopes phi:encrypt phi:decrypt)\n"
           "  (development keys, created for this run and shown once)\n\n",
           base, d->upstream_port, d->admin_key, d->user_key, d->user_id);
    printf("Try these:\n\n"
           "# store a reading through the gateway (the upstream sees who sent it)\n"
           "curl -s -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \\\n"
           "     -d '{\"metric\":\"hrv\",\"value\":48.2,\"ts\":\"2026-11-27T07:00:00Z\"}' "
           "%s/v1/readings\n\n"
           "# read them back, and see the identity headers phigate injected\n"
           "curl -s -H 'Authorization: Bearer %s' %s/v1/readings\n"
           "curl -s -H 'Authorization: Bearer %s' %s/v1/whoami\n\n"
           "# no key, or a key in the query string: refused, in JSON, and audited\n"
           "curl -s %s/v1/readings\n\n"
           "# encrypt and decrypt a field under a context (the user's own user_id only)\n"
           "curl -s -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \\\n"
           "     -d '{\"context\":{\"user_id\":\"%s\",\"field\":\"hrv\"},\"plaintext\":\"48.2\"}' "
           "%s/v1/phi/encrypt\n"
           "curl -s -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \\\n"
           "     -d '{\"context\":{\"user_id\":\"%s\",\"field\":\"hrv\"},\"ciphertext\":\"PASTE\"}' "
           "%s/v1/phi/decrypt\n\n"
           "# the admin API: keys, the audit log, who saw this user's data\n"
           "curl -s -H 'Authorization: Bearer %s' %s/admin/keys\n"
           "curl -s -H 'Authorization: Bearer %s' '%s/admin/audit?limit=5'\n"
           "curl -s -H 'Authorization: Bearer %s' '%s/admin/audit/report?subject=%s'\n"
           "curl -s -H 'Authorization: Bearer %s' %s/admin/audit/verify\n"
           "curl -s -H 'Authorization: Bearer %s' %s/admin/openapi.json\n\n"
           "# health, readiness, metrics\n"
           "curl -s %s/healthz; curl -s %s/readyz; curl -s %s/metrics\n\n",
           d->user_key, base, d->user_key, base, d->user_key, base, base, d->user_key,
           d->user_id, base, d->user_key, d->user_id, base, d->admin_key, base, d->admin_key,
           base, d->admin_key, base, d->user_id, d->admin_key, base, d->admin_key, base, base,
           base, base);
    fflush(stdout);
}

static int demo_keys(const char *store_url, const phg_masterkeys *mk, demo_state *d)
{
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_audit *audit = NULL;
    phg_apikey_spec spec;
    char err[256] = "";
    int from = 0, to = 0, rc = CLI_FAIL;
    phg_status st = phg_store_open(store_url, NULL, &store, err, sizeof err);
    if (st == PHG_OK)
        st = phg_store_migrate(store, &from, &to, err, sizeof err);
    if (st != PHG_OK) {
        cli_error("store %s: %s", store_url, err[0] ? err : phg_strerror(st));
        goto out;
    }
    if (cli_audit_open(store, mk, &audit) != CLI_OK)
        goto out;
    if (phg_keys_open(store, NULL, &keys) != PHG_OK) {
        cli_error("cannot open the keys of %s", store_url);
        goto out;
    }
    phg_keys_set_audit(keys, audit);
    memset(&spec, 0, sizeof spec);
    spec.role = PHG_ROLE_ADMIN;
    spec.scopes = PHG_SCOPE_ALL;
    spec.user_id = "demo-admin";
    spec.description = "phigate demo admin key";
    spec.created_by = "cli:demo";
    if (phg_keys_create(keys, &spec, d->admin_key, NULL, err, sizeof err) != PHG_OK)
        goto fail;
    spec.role = PHG_ROLE_USER;
    spec.scopes = PHG_SCOPE_PHI_ENCRYPT | PHG_SCOPE_PHI_DECRYPT;
    spec.user_id = d->user_id;
    spec.description = "phigate demo user key";
    if (phg_keys_create(keys, &spec, d->user_key, NULL, err, sizeof err) != PHG_OK)
        goto fail;
    rc = CLI_OK;
    goto out;
fail:
    cli_error("cannot create the demo keys%s%s", err[0] ? ": " : "", err);
out:
    phg_keys_close(keys);
    phg_audit_close(audit);
    phg_store_close(store);
    return rc;
}

int cmd_demo(int argc, char **argv)
{
    cli_opt opts[] = {{"dir", 1, NULL, 0}, {"listen", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *dir = "var/demo", *listen = "127.0.0.1:8080";
    char keypath[512], store_url[600], upstream[64], key[PHG_FERNET_KEY_TEXT_LEN + 1];
    phg_masterkeys *mk = NULL;
    gw_demo_upstream *up = NULL;
    gw_flags flags;
    gw_hooks hooks;
    demo_state d;
    FILE *fp;
    int rc = CLI_FAIL;

    if (argc >= 2 && strcmp(argv[1], "walkthrough") == 0)
        return demo_walkthrough(argc - 1, argv + 1);
    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate demo [--dir DIR] [--listen HOST:PORT]\n"
             "       phigate demo walkthrough [--dir DIR]\n\n"
             "Run the gateway on a development setup under DIR (default var/demo): a\n"
             "development master key (DIR/master.key, made on first run), SQLite\n"
             "(DIR/phigate.db), the built-in sample biometric API as the upstream, and a\n"
             "new admin key and user key, printed with curl commands for every API.\n"
             "Listens on 127.0.0.1:8080 unless --listen says otherwise (port 0: any).\n"
             "Runs until Ctrl-C. NOT for real data: the master key is a file next to\n"
             "the database.\n\n"
             "'demo walkthrough' walks through PHI field encryption on files instead.");
        return CLI_OK;
    }
    if (cli_parse_opts("demo", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[0].set)
        dir = opts[0].value;
    if (opts[1].set)
        listen = opts[1].value;
    if (strlen(dir) > 400)
        return cli_usage("demo", "--dir is too long");
    if (make_dirs(dir) != 0)
        return CLI_FAIL;
    memset(&d, 0, sizeof d);
    snprintf(d.user_id, sizeof d.user_id, "user-42");
    snprintf(keypath, sizeof keypath, "%s/master.key", dir);
    snprintf(store_url, sizeof store_url, "sqlite:%s/phigate.db", dir);

    /* the development master key: kept in the folder so the data of the
     * last run still opens */
    fp = fopen(keypath, "r");
    if (fp != NULL) {
        size_t n = fread(key, 1, sizeof key - 1, fp);
        fclose(fp);
        key[n] = '\0';
        while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r'))
            key[--n] = '\0';
    } else {
        if (phg_fernet_key_generate(key) != PHG_OK)
            return CLI_FAIL;
        fp = fopen(keypath, "w");
        if (fp == NULL || fchmod(fileno(fp), 0600) != 0 || fprintf(fp, "%s\n", key) < 0 ||
            fclose(fp) != 0) {
            cli_error("cannot write %s", keypath);
            phg_wipe(key, sizeof key);
            return CLI_FAIL;
        }
    }
    if (phg_phi_masterkeys_parse(key, strlen(key), &mk) != PHG_OK) {
        cli_error("%s does not hold a master key (delete it to make a new one)", keypath);
        phg_wipe(key, sizeof key);
        return CLI_FAIL;
    }
    fprintf(stderr,
            "\n"
            "  *****************************************************************\n"
            "  WARNING: phigate demo uses a DEVELOPMENT master key, stored in\n"
            "  WARNING: %s next to the data. Never put real patient data here.\n"
            "  WARNING: In production the master key comes from a secret manager\n"
            "  WARNING: through PHI_MASTER_KEY_FILE (docs/operations.md).\n"
            "  *****************************************************************\n\n",
            keypath);
    /* gw_serve reads the master key from the environment, like serve */
    unsetenv("PHI_MASTER_KEY_FILE");
    if (setenv("PHI_MASTER_KEY", key, 1) != 0)
        goto out;
    phg_wipe(key, sizeof key);
    if (demo_keys(store_url, mk, &d) != CLI_OK)
        goto out;
    if (gw_demo_upstream_start(0, &d.upstream_port, &up) != 0) {
        cli_error("cannot start the sample upstream");
        goto out;
    }
    snprintf(upstream, sizeof upstream, "http://127.0.0.1:%d", d.upstream_port);
    memset(&flags, 0, sizeof flags);
    flags.listen = listen;
    flags.upstream = upstream;
    flags.store = store_url;
    hooks.on_ready = demo_ready;
    hooks.arg = &d;
    rc = gw_serve(&flags, &hooks) == 0 ? CLI_OK : CLI_FAIL;
out:
    gw_demo_upstream_stop(up);
    phg_phi_masterkeys_free(mk);
    phg_wipe(&d, sizeof d);
    phg_wipe(key, sizeof key);
    return rc;
}
