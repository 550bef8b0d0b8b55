/*
 * phi_cmd.c: `phigate phi ...`: master keys, keyring files, and single-field
 * encrypt / decrypt / rewrap. The JSONL migration commands are in jsonl.c.
 *
 * Formats: docs/formats.md. Every keyring change is written by atomic
 * replace, so an interrupted command leaves the previous keyring intact.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

#define FIELD_STDIN_MAX PHG_PHI_PLAINTEXT_MAX
#define CIPHERTEXT_STDIN_MAX (PHG_PHI_CIPHERTEXT_MAX_LEN(PHG_PHI_PLAINTEXT_MAX) + 2)

static const char phi_help[] =
    "Usage: phigate phi <command> [options]\n"
    "\n"
    "Field-level encryption of PHI (format phi1, see docs/formats.md).\n"
    "\n"
    "Commands:\n"
    "  keygen           print a new master key (a Fernet key)\n"
    "  keyring          manage a keyring file: init, rotate, destroy, rewrap, list\n"
    "  encrypt          encrypt stdin under a context, print one ciphertext line\n"
    "  decrypt          decrypt a ciphertext from stdin, write the plaintext\n"
    "  rewrap           re-encrypt a ciphertext from stdin under the primary key\n"
    "  encrypt-jsonl    encrypt named fields of every JSONL record (stdin to stdout)\n"
    "  decrypt-jsonl    undo encrypt-jsonl, restoring the fields' JSON types\n"
    "\n"
    "Master keys come from PHI_MASTER_KEY (one key, or several comma-separated: the\n"
    "first wraps, all unwrap) or PHI_MASTER_KEY_FILE, or --master-key-file FILE.\n";

/* ---- keygen ---------------------------------------------------------------- */

static int phi_keygen(int argc, char **argv)
{
    cli_opt opts[] = {{"json", 0, NULL, 0}, {NULL, 0, NULL, 0}};
    char key[PHG_FERNET_KEY_TEXT_LEN + 1];
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi keygen [--json]\n\n"
             "Print a new random master key: a Fernet key (44 characters of url-safe\n"
             "base64 of 32 bytes). Store it in a secret manager; give it to phigate as\n"
             "PHI_MASTER_KEY or in the file named by PHI_MASTER_KEY_FILE.");
        return CLI_OK;
    }
    if (cli_parse_opts("phi keygen", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (phg_fernet_key_generate(key) != PHG_OK) {
        cli_error("the random generator failed");
        return CLI_FAIL;
    }
    if (opts[0].set)
        rc = cli_print_json(json_pack("{s:s}", "master_key", key));
    else
        rc = puts(key) < 0 ? CLI_FAIL : CLI_OK;
    phg_wipe(key, sizeof key);
    return rc;
}

/* ---- keyring ---------------------------------------------------------------------- */

enum { KR_KEYRING, KR_MKFILE, KR_JSON, KR_KID, KR_STORE, KR_REPLACE, KR_END };

static void keyring_opts(cli_opt opts[KR_END + 1])
{
    cli_opt init[KR_END + 1] = {
        {"keyring", 1, NULL, 0}, {"master-key-file", 1, NULL, 0}, {"json", 0, NULL, 0},
        {"kid", 1, NULL, 0},     {"store", 1, NULL, 0},     {"replace", 0, NULL, 0},
        {NULL, 0, NULL, 0},
    };
    memcpy(opts, init, sizeof init);
}

/* Parse, check --keyring, load master keys. */
static int keyring_begin(const char *cmd, int argc, char **argv, cli_opt *opts,
                         phg_masterkeys **mk)
{
    keyring_opts(opts);
    if (cli_parse_opts(cmd, argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (cli_keyring_where(cmd, opts[KR_KEYRING].value, opts[KR_STORE].value) != CLI_OK)
        return CLI_USAGE;
    return cli_load_masterkeys(opts[KR_MKFILE].value, mk);
}

static const char *where_name(const cli_opt *opts)
{
    return opts[KR_KEYRING].set ? opts[KR_KEYRING].value : "in the store";
}

/* 0 if the store holds no keyring yet; else prints why not and returns 1. */
static int store_has_keyring(const char *url)
{
    phg_store *store = NULL;
    char *json = NULL;
    size_t len = 0;
    phg_status st;
    if (cli_open_store(url, 1, &store) != CLI_OK)
        return 1;
    st = phg_store_keyring_get(store, &json, &len);
    free(json);
    if (st == PHG_OK)
        cli_error("store %s already holds a keyring; not overwriting it",
                  phg_store_display_url(store));
    else if (st != PHG_ERR_NOT_FOUND)
        cli_error("store %s: %s", phg_store_display_url(store), phg_strerror(st));
    phg_store_close(store);
    return st == PHG_ERR_NOT_FOUND ? 0 : 1;
}

/*
 * The audit record of a keyring change. It goes to the keyring's store, or,
 * for a keyring file, to $PHIGATE_STORE; a file keyring with no store at all
 * (offline use) cannot be audited, and says so.
 */
static int audit_keyring_action(const cli_opt *opts, const phg_masterkeys *mk, const char *action,
                                const char *details)
{
    const char *url = opts[KR_STORE].set ? opts[KR_STORE].value : getenv("PHIGATE_STORE");
    phg_store *store = NULL;
    int rc;
    if (url == NULL || url[0] == '\0') {
        fprintf(stderr, "phigate: note: %s not audited: no store (give --store, or set "
                        "PHIGATE_STORE to record keyring changes in its audit log)\n",
                action);
        return CLI_OK;
    }
    rc = cli_open_store(url, 1, &store);
    if (rc == CLI_OK)
        rc = cli_audit_admin(store, mk, action, "keyring", "success", details);
    phg_store_close(store);
    return rc;
}

static const char *state_text(phg_phi_key_state s)
{
    switch (s) {
    case PHG_PHI_KEY_ACTIVE: return "active";
    case PHG_PHI_KEY_DECRYPT_ONLY: return "decrypt-only";
    case PHG_PHI_KEY_DESTROYED: return "destroyed";
    }
    return "?";
}

static int keyring_init(int argc, char **argv)
{
    cli_opt opts[KR_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    char kid[PHG_PHI_KID_MAX + 1];
    struct stat st;
    phg_status st_rc;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi keyring init (--keyring FILE | --store URL) [--json] [--master-key-file F]\n\n"
             "Create a new keyring file with one data key (the primary), wrapped under the\n"
             "first master key. Refuses to overwrite an existing file: that would lose\n"
             "every key in it, and the data encrypted under them.");
        return CLI_OK;
    }
    rc = keyring_begin("phi keyring init", argc, argv, opts, &mk);
    if (rc != CLI_OK)
        return rc;
    if (opts[KR_KID].set) {
        rc = cli_usage("phi keyring init", "--kid is not an option of init");
        goto out;
    }
    rc = CLI_FAIL;
    if (opts[KR_KEYRING].set && lstat(opts[KR_KEYRING].value, &st) == 0) {
        cli_error("keyring %s already exists; not overwriting it", opts[KR_KEYRING].value);
        goto out;
    }
    if (opts[KR_STORE].set && store_has_keyring(opts[KR_STORE].value) != 0)
        goto out;
    st_rc = phg_keyring_create(mk, NULL, &kr);
    if (st_rc != PHG_OK) {
        cli_error("cannot create a keyring: %s", phg_strerror(st_rc));
        goto out;
    }
    if (cli_keyring_save(kr, opts[KR_KEYRING].value, opts[KR_STORE].value) != CLI_OK)
        goto out;
    (void)phg_keyring_primary(kr, kid);
    if (opts[KR_JSON].set)
        rc = cli_print_json(json_pack("{s:s,s:s}", "keyring", where_name(opts), "primary", kid));
    else
        rc = printf("created keyring %s with primary key %s\n", where_name(opts), kid) < 0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keyring_rotate(int argc, char **argv)
{
    cli_opt opts[KR_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    char old_kid[PHG_PHI_KID_MAX + 1], new_kid[PHG_PHI_KID_MAX + 1];
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi keyring rotate (--keyring FILE | --store URL) [--json] [--master-key-file F]\n\n"
             "Add a new data key and make it the primary: new data is encrypted under it.\n"
             "The previous primary becomes decrypt-only and still opens old data.");
        return CLI_OK;
    }
    rc = keyring_begin("phi keyring rotate", argc, argv, opts, &mk);
    if (rc != CLI_OK)
        return rc;
    rc = cli_keyring_load(opts[KR_KEYRING].value, opts[KR_STORE].value, mk, 0, &kr);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    (void)phg_keyring_primary(kr, old_kid);
    st = phg_keyring_rotate(kr, new_kid);
    if (st != PHG_OK) {
        cli_error("cannot rotate: %s", phg_strerror(st));
        goto out;
    }
    if (cli_keyring_save(kr, opts[KR_KEYRING].value, opts[KR_STORE].value) != CLI_OK)
        goto out;
    {
        char details[128];
        snprintf(details, sizeof details, "{\"primary\":\"%s\",\"previous\":\"%s\"}", new_kid,
                 old_kid);
        if (audit_keyring_action(opts, mk, "keyring.rotate", details) != CLI_OK)
            goto out;
    }
    if (opts[KR_JSON].set)
        rc = cli_print_json(json_pack("{s:s,s:s}", "primary", new_kid, "previous", old_kid));
    else
        rc = printf("rotated: primary key is now %s; %s is decrypt-only\n", new_kid, old_kid) < 0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keyring_destroy(int argc, char **argv)
{
    cli_opt opts[KR_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi keyring destroy (--keyring FILE | --store URL) --kid KID [--json]\n\n"
             "Crypto-shred one data key: its wrapped value is removed from the keyring and\n"
             "every ciphertext made under it can never be decrypted again. The primary key\n"
             "cannot be destroyed (rotate first). Backups of the keyring still hold the key.");
        return CLI_OK;
    }
    rc = keyring_begin("phi keyring destroy", argc, argv, opts, &mk);
    if (rc != CLI_OK)
        return rc;
    if (!opts[KR_KID].set || opts[KR_KID].value[0] == '\0') {
        rc = cli_usage("phi keyring destroy", "--kid KID is required");
        goto out;
    }
    rc = cli_keyring_load(opts[KR_KEYRING].value, opts[KR_STORE].value, mk, 0, &kr);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    st = phg_keyring_destroy(kr, opts[KR_KID].value);
    if (st == PHG_ERR_NOT_FOUND) {
        cli_error("keyring %s has no key with that kid", where_name(opts));
        goto out;
    }
    if (st == PHG_ERR_STATE) {
        cli_error("that key is the primary (rotate first) or is already destroyed");
        goto out;
    }
    if (st != PHG_OK) {
        cli_error("cannot destroy: %s", phg_strerror(st));
        goto out;
    }
    if (cli_keyring_save(kr, opts[KR_KEYRING].value, opts[KR_STORE].value) != CLI_OK)
        goto out;
    {
        char details[128];
        snprintf(details, sizeof details, "{\"kid\":\"%s\"}", opts[KR_KID].value);
        if (audit_keyring_action(opts, mk, "keyring.destroy", details) != CLI_OK)
            goto out;
    }
    if (opts[KR_JSON].set)
        rc = cli_print_json(json_pack("{s:s}", "destroyed", opts[KR_KID].value));
    else
        rc = printf("destroyed key %s: data encrypted under it is unreadable for good\n",
                    opts[KR_KID].value) < 0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keyring_rewrap(int argc, char **argv)
{
    cli_opt opts[KR_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    phg_status st;
    size_t i, n, wrapped = 0;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi keyring rewrap (--keyring FILE | --store URL) [--json] [--master-key-file F]\n\n"
             "Re-wrap every data key under the first master key. To retire a master key,\n"
             "set PHI_MASTER_KEY=NEW,OLD, run rewrap, then drop OLD. Data keys and\n"
             "ciphertexts do not change.");
        return CLI_OK;
    }
    rc = keyring_begin("phi keyring rewrap", argc, argv, opts, &mk);
    if (rc != CLI_OK)
        return rc;
    rc = cli_keyring_load(opts[KR_KEYRING].value, opts[KR_STORE].value, mk, 0, &kr);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    st = phg_keyring_rewrap(kr, mk);
    if (st != PHG_OK) {
        cli_error("cannot rewrap: %s", phg_strerror(st));
        goto out;
    }
    if (cli_keyring_save(kr, opts[KR_KEYRING].value, opts[KR_STORE].value) != CLI_OK)
        goto out;
    n = phg_keyring_count(kr);
    for (i = 0; i < n; i++) {
        phg_phi_key_info info;
        if (phg_keyring_info(kr, i, &info) == PHG_OK && info.state != PHG_PHI_KEY_DESTROYED)
            wrapped++;
    }
    {
        char details[64];
        snprintf(details, sizeof details, "{\"rewrapped\":%zu}", wrapped);
        if (audit_keyring_action(opts, mk, "keyring.rewrap", details) != CLI_OK)
            goto out;
    }
    if (opts[KR_JSON].set)
        rc = cli_print_json(json_pack("{s:I}", "rewrapped", (json_int_t)wrapped));
    else
        rc = printf("rewrapped %zu data key(s) under the first master key\n", wrapped) < 0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keyring_list(int argc, char **argv)
{
    cli_opt opts[KR_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    json_t *arr = NULL;
    size_t i, n;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi keyring list (--keyring FILE | --store URL) [--json] [--master-key-file F]\n\n"
             "List the data keys: kid, state, creation time, which is primary. No secret\n"
             "is shown. The master key is needed so that a keyring that does not open is\n"
             "reported as such.");
        return CLI_OK;
    }
    rc = keyring_begin("phi keyring list", argc, argv, opts, &mk);
    if (rc != CLI_OK)
        return rc;
    rc = cli_keyring_load(opts[KR_KEYRING].value, opts[KR_STORE].value, mk, 0, &kr);
    if (rc != CLI_OK)
        goto out;
    n = phg_keyring_count(kr);
    if (opts[KR_JSON].set)
        arr = json_array();
    else
        printf("%-14s %-13s %-21s %s\n", "KID", "STATE", "CREATED", "PRIMARY");
    for (i = 0; i < n; i++) {
        phg_phi_key_info info;
        char created[32];
        if (phg_keyring_info(kr, i, &info) != PHG_OK)
            continue;
        cli_format_time(info.created_s, created, sizeof created);
        if (arr != NULL)
            json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:b}", "kid", info.kid, "state",
                                                 state_text(info.state), "created", created,
                                                 "primary", info.is_primary));
        else
            printf("%-14s %-13s %-21s %s\n", info.kid, state_text(info.state), created,
                   info.is_primary ? "yes" : "");
    }
    if (arr != NULL) {
        char primary[PHG_PHI_KID_MAX + 1];
        (void)phg_keyring_primary(kr, primary);
        rc = cli_print_json(json_pack("{s:s,s:o}", "primary", primary, "keys", arr));
    }
out:
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

/* export: store -> file; import: file -> store. Both open the keyring with
 * the master keys first, so a copy that would not open is never made. */
static int keyring_copy(int to_file, int argc, char **argv)
{
    const char *cmd = to_file ? "phi keyring export" : "phi keyring import";
    cli_opt opts[KR_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    struct stat st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        if (to_file)
            puts("Usage: phigate phi keyring export --store URL --keyring FILE [--json]\n\n"
                 "Write the store's keyring to FILE (mode 0600, atomic; refuses to overwrite),\n"
                 "for a backup or for the CLI. The master key must open it.");
        else
            puts("Usage: phigate phi keyring import --keyring FILE --store URL [--replace] "
                 "[--json]\n\n"
                 "Put the keyring of FILE into the store. Refuses if the store already holds\n"
                 "one, unless --replace (the old one is then gone: export it first). The\n"
                 "master key must open it.");
        return CLI_OK;
    }
    keyring_opts(opts);
    if (cli_parse_opts(cmd, argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (!opts[KR_KEYRING].set || !opts[KR_STORE].set)
        return cli_usage(cmd, "both --keyring FILE and --store URL are required");
    rc = cli_load_masterkeys(opts[KR_MKFILE].value, &mk);
    if (rc != CLI_OK)
        return rc;
    rc = CLI_FAIL;
    if (to_file) {
        if (lstat(opts[KR_KEYRING].value, &st) == 0) {
            cli_error("%s already exists; not overwriting it", opts[KR_KEYRING].value);
            goto out;
        }
        if (cli_keyring_load(NULL, opts[KR_STORE].value, mk, 0, &kr) != CLI_OK ||
            cli_keyring_save(kr, opts[KR_KEYRING].value, NULL) != CLI_OK)
            goto out;
    } else {
        if (cli_keyring_load(opts[KR_KEYRING].value, NULL, mk, 0, &kr) != CLI_OK)
            goto out;
        if (!opts[KR_REPLACE].set && store_has_keyring(opts[KR_STORE].value) != 0)
            goto out;
        if (cli_keyring_save(kr, NULL, opts[KR_STORE].value) != CLI_OK)
            goto out;
    }
    if (opts[KR_JSON].set)
        rc = cli_print_json(json_pack("{s:s,s:s}", to_file ? "exported" : "imported",
                                      opts[KR_KEYRING].value, "keys",
                                      to_file ? "store -> file" : "file -> store"));
    else
        rc = printf("%s %s\n", to_file ? "exported the store's keyring to" : "imported into the store:",
                    opts[KR_KEYRING].value) < 0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keyring_export(int argc, char **argv)
{
    return keyring_copy(1, argc, argv);
}

static int keyring_import(int argc, char **argv)
{
    return keyring_copy(0, argc, argv);
}

static const char keyring_help[] =
    "Usage: phigate phi keyring <command> (--keyring FILE | --store URL) [options]\n"
    "\n"
    "Commands:\n"
    "  init      create a keyring file with one data key\n"
    "  rotate    new primary data key; the old one becomes decrypt-only\n"
    "  destroy   crypto-shred a data key (--kid KID)\n"
    "  rewrap    re-wrap every data key under the first master key\n"
    "  list      list data keys (no secrets)\n"
    "  export    copy the store's keyring to a file\n"
    "  import    put a keyring file into the store\n";

static int phi_keyring(int argc, char **argv)
{
    static const cli_command table[] = {
        {"init", "", keyring_init},       {"rotate", "", keyring_rotate},
        {"destroy", "", keyring_destroy}, {"rewrap", "", keyring_rewrap},
        {"list", "", keyring_list},       {"export", "", keyring_export},
        {"import", "", keyring_import},   {NULL, NULL, NULL},
    };
    return cli_dispatch("phi keyring", keyring_help, table, argc, argv);
}

/* ---- single fields --------------------------------------------------------------- */

enum { F_KEYRING, F_CONTEXT, F_MKFILE, F_JSON, F_STORE, F_END };

static int field_begin(const char *cmd, int argc, char **argv, cli_opt *opts,
                       phg_masterkeys **mk, phg_keyring **kr)
{
    cli_opt init[F_END + 1] = {
        {"keyring", 1, NULL, 0}, {"context", 1, NULL, 0}, {"master-key-file", 1, NULL, 0},
        {"json", 0, NULL, 0},    {"store", 1, NULL, 0},    {NULL, 0, NULL, 0},
    };
    size_t clen;
    int rc;
    memcpy(opts, init, sizeof init);
    if (cli_parse_opts(cmd, argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (cli_keyring_where(cmd, opts[F_KEYRING].value, opts[F_STORE].value) != CLI_OK)
        return CLI_USAGE;
    if (!opts[F_CONTEXT].set)
        return cli_usage(cmd, "--context CTX is required");
    clen = strlen(opts[F_CONTEXT].value);
    if (clen < PHG_PHI_CONTEXT_MIN || clen > PHG_PHI_CONTEXT_MAX)
        return cli_usage(cmd, "--context must be 1 to %d bytes (got %zu)", PHG_PHI_CONTEXT_MAX,
                         clen);
    rc = cli_load_masterkeys(opts[F_MKFILE].value, mk);
    if (rc != CLI_OK)
        return rc;
    return cli_keyring_load(opts[F_KEYRING].value, opts[F_STORE].value, *mk, 0, kr);
}

/* Strip one trailing "\n" or "\r\n" (and surrounding blanks) from a ciphertext. */
static size_t trim_ciphertext(const char *s, size_t len)
{
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' ' ||
                       s[len - 1] == '\t'))
        len--;
    return len;
}

static int report_stdin_error(phg_status st, size_t max)
{
    if (st == PHG_ERR_TOO_LARGE)
        cli_error("standard input is larger than %zu bytes", max);
    else
        cli_error("cannot read standard input: %s", phg_strerror(st));
    return CLI_FAIL;
}

static int phi_encrypt(int argc, char **argv)
{
    cli_opt opts[F_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    char *pt = NULL, *ct = NULL;
    size_t pt_len = 0, ct_len = 0, ct_cap;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi encrypt (--keyring FILE | --store URL) --context CTX [--json]\n\n"
             "Read the plaintext bytes from stdin (at most 16 MiB), encrypt them under the\n"
             "keyring's primary key and the context, and print one line:\n"
             "phi1.<kid>.<base64url>. The same context is needed to decrypt.");
        return CLI_OK;
    }
    rc = field_begin("phi encrypt", argc, argv, opts, &mk, &kr);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    st = cli_read_all(stdin, FIELD_STDIN_MAX, &pt, &pt_len);
    if (st != PHG_OK) {
        rc = report_stdin_error(st, FIELD_STDIN_MAX);
        goto out;
    }
    ct_cap = PHG_PHI_CIPHERTEXT_MAX_LEN(pt_len);
    ct = malloc(ct_cap + 1);
    if (ct == NULL) {
        cli_error("out of memory");
        goto out;
    }
    st = phg_phi_encrypt(kr, opts[F_CONTEXT].value, strlen(opts[F_CONTEXT].value),
                         (const uint8_t *)pt, pt_len, ct, ct_cap, &ct_len);
    if (st != PHG_OK) {
        cli_error("cannot encrypt: %s", phg_strerror(st));
        goto out;
    }
    ct[ct_len] = '\0';
    if (opts[F_JSON].set)
        rc = cli_print_json(json_pack("{s:s}", "ciphertext", ct));
    else
        rc = puts(ct) < 0 ? CLI_FAIL : CLI_OK;
out:
    cli_free_secret(pt, pt_len);
    free(ct);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int phi_decrypt(int argc, char **argv)
{
    cli_opt opts[F_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    char *ct = NULL;
    uint8_t *pt = NULL;
    size_t ct_len = 0, pt_len = 0, raw_len = 0;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi decrypt (--keyring FILE | --store URL) --context CTX [--json]\n\n"
             "Read one ciphertext from stdin (a trailing newline is ignored) and write the\n"
             "plaintext bytes to stdout, with no newline added. With --json, print\n"
             "{\"plaintext\": TEXT} for UTF-8 plaintext or {\"plaintext_base64\": B64}.\n"
             "Any failure to decrypt (wrong context, wrong or destroyed key, tampering)\n"
             "is one error: 'decryption failed'.");
        return CLI_OK;
    }
    rc = field_begin("phi decrypt", argc, argv, opts, &mk, &kr);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    st = cli_read_all(stdin, CIPHERTEXT_STDIN_MAX, &ct, &raw_len);
    if (st != PHG_OK) {
        rc = report_stdin_error(st, CIPHERTEXT_STDIN_MAX);
        goto out;
    }
    ct_len = trim_ciphertext(ct, raw_len);
    pt = malloc(ct_len + 1);
    if (pt == NULL) {
        cli_error("out of memory");
        goto out;
    }
    st = phg_phi_decrypt(kr, opts[F_CONTEXT].value, strlen(opts[F_CONTEXT].value), ct, ct_len,
                         pt, ct_len, &pt_len);
    if (st == PHG_ERR_FORMAT) {
        cli_error("input is not a phi1 ciphertext (expected phi1.<kid>.<data>)");
        goto out;
    }
    if (st != PHG_OK) {
        cli_error("decryption failed");
        goto out;
    }
    if (opts[F_JSON].set) {
        json_t *s = json_stringn((const char *)pt, pt_len);
        if (s != NULL) {
            rc = cli_print_json(json_pack("{s:o}", "plaintext", s));
        } else {
            char *b64 = malloc(phg_base64_encoded_len(pt_len, PHG_B64_STD) + 1);
            if (b64 == NULL)
                goto out;
            phg_base64_encode(pt, pt_len, b64, PHG_B64_STD);
            rc = cli_print_json(json_pack("{s:s}", "plaintext_base64", b64));
            cli_free_secret(b64, strlen(b64));
        }
    } else {
        rc = fwrite(pt, 1, pt_len, stdout) == pt_len && fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
        if (rc != CLI_OK)
            cli_error("cannot write to standard output");
    }
out:
    cli_free_secret(pt, ct_len + 1);
    cli_free_secret(ct, raw_len);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int phi_rewrap(int argc, char **argv)
{
    cli_opt opts[F_END + 1];
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    char *ct = NULL, *out_ct = NULL;
    size_t ct_len = 0, raw_len = 0, out_len = 0, out_cap;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate phi rewrap (--keyring FILE | --store URL) --context CTX [--json]\n\n"
             "Read one ciphertext from stdin and print it re-encrypted under the keyring's\n"
             "primary key (after a rotation, before destroying the old key).");
        return CLI_OK;
    }
    rc = field_begin("phi rewrap", argc, argv, opts, &mk, &kr);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    st = cli_read_all(stdin, CIPHERTEXT_STDIN_MAX, &ct, &raw_len);
    if (st != PHG_OK) {
        rc = report_stdin_error(st, CIPHERTEXT_STDIN_MAX);
        goto out;
    }
    ct_len = trim_ciphertext(ct, raw_len);
    out_cap = ct_len + PHG_PHI_KID_MAX + 1;
    out_ct = malloc(out_cap + 1);
    if (out_ct == NULL)
        goto out;
    st = phg_phi_rewrap(kr, opts[F_CONTEXT].value, strlen(opts[F_CONTEXT].value), ct, ct_len,
                        out_ct, out_cap, &out_len);
    if (st == PHG_ERR_FORMAT) {
        cli_error("input is not a phi1 ciphertext (expected phi1.<kid>.<data>)");
        goto out;
    }
    if (st != PHG_OK) {
        cli_error("decryption failed");
        goto out;
    }
    out_ct[out_len] = '\0';
    if (opts[F_JSON].set)
        rc = cli_print_json(json_pack("{s:s}", "ciphertext", out_ct));
    else
        rc = puts(out_ct) < 0 ? CLI_FAIL : CLI_OK;
out:
    free(out_ct);
    cli_free_secret(ct, raw_len);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

int cmd_phi(int argc, char **argv)
{
    static const cli_command table[] = {
        {"keygen", "", phi_keygen},
        {"keyring", "", phi_keyring},
        {"encrypt", "", phi_encrypt},
        {"decrypt", "", phi_decrypt},
        {"rewrap", "", phi_rewrap},
        {"encrypt-jsonl", "", cmd_phi_encrypt_jsonl},
        {"decrypt-jsonl", "", cmd_phi_decrypt_jsonl},
        {NULL, NULL, NULL},
    };
    return cli_dispatch("phi", phi_help, table, argc, argv);
}
