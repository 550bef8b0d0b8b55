/*
 * demo.c: `phigate demo`, what `make run` starts. Until the gateway exists it
 * walks through what is built, on files under ./var/demo, printing what
 * happens at each step: a development master key, a keyring, field
 * encryption under contexts, one error for every decryption failure,
 * rotation, rewrap and crypto-shredding, and a JSONL migration.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
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

int cmd_demo(int argc, char **argv)
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
        puts("Usage: phigate demo [--dir DIR]\n\n"
             "A short demonstration of PHI field encryption, on files under DIR\n"
             "(default var/demo): development master key, keyring, encrypt and decrypt\n"
             "under contexts, rotation, rewrap, crypto-shredding and a JSONL migration.");
        return CLI_OK;
    }
    if (cli_parse_opts("demo", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[0].set)
        dir = opts[0].value;
    if (strlen(dir) > 400)
        return cli_usage("demo", "--dir is too long");
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
            return CLI_FAIL;
        }
    }
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
