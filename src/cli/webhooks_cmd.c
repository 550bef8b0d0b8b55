/*
 * webhooks_cmd.c: phigate webhooks source add|list|show|remove|add-secret|
 * retire-secret|set-verify-token: webhook sources kept in the store, their
 * secrets and verify token encrypted under the master key
 * (phigate/webhook_store.h). Every change needs the master key and leaves an
 * audit record. Secrets and verify tokens are read from files (at most 4
 * KiB, trimmed) and never printed: show gives fingerprints, and whether a
 * verify token is set.
 *
 * Exit codes: 0 done; 1 not found, exists, store or audit failure; 2 usage
 * or a value refused (name, scheme, URL, tolerance, secret).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "phigate/webhook_store.h"

#define SECRET_FILE_MAX 4096

typedef struct wh_args {
    const char *name;
    const char *scheme;
    const char *secret_files[PHG_WEBHOOK_SECRETS_MAX];
    size_t n_files;
    const char *tolerance;
    const char *deliver_to;
    const char *store;
    const char *not_after;
    const char *index;
    const char *mkfile;
    const char *verify_token_file;
    int clear;
    int json;
} wh_args;

enum {
    A_NAME = 1,
    A_SCHEME = 2,
    A_SECRET = 4,
    A_TOL = 8,
    A_DELIVER = 16,
    A_NOT_AFTER = 32,
    A_INDEX = 64,
    A_MK = 128,
    A_VERIFY_TOKEN = 256,
    A_CLEAR = 512
};

/* argv[0] is the subcommand; NAME first if want_name; then options.
 * allowed: the A_ bits of options this subcommand takes (--store and --json
 * always). */
static int parse_args(const char *cmd, int argc, char **argv, int want_name, int allowed,
                      wh_args *a)
{
    int i;
    memset(a, 0, sizeof *a);
    i = 1;
    if (want_name) {
        if (argc < 2 || strncmp(argv[1], "--", 2) == 0)
            return cli_usage(cmd, "missing the source NAME");
        a->name = argv[1];
        i = 2;
    }
    for (; i < argc; i++) {
        const char *opt = argv[i], *val = NULL, *eq;
        char name[32];
        size_t nlen;
        int takes = 1, bit = 0;
        const char **slot = NULL;

        if (strncmp(opt, "--", 2) != 0)
            return cli_usage(cmd, "unexpected argument '%.64s'", opt);
        eq = strchr(opt, '=');
        nlen = eq != NULL ? (size_t)(eq - opt - 2) : strlen(opt + 2);
        if (nlen >= sizeof name)
            return cli_usage(cmd, "unknown option '%.40s'", opt);
        memcpy(name, opt + 2, nlen);
        name[nlen] = '\0';
        if (strcmp(name, "json") == 0) {
            takes = 0;
            a->json = 1;
        } else if (strcmp(name, "clear") == 0) {
            takes = 0;
            bit = A_CLEAR;
            a->clear = 1;
        } else if (strcmp(name, "verify-token-file") == 0)
            bit = A_VERIFY_TOKEN, slot = &a->verify_token_file;
        else if (strcmp(name, "store") == 0)
            slot = &a->store;
        else if (strcmp(name, "scheme") == 0)
            bit = A_SCHEME, slot = &a->scheme;
        else if (strcmp(name, "tolerance") == 0)
            bit = A_TOL, slot = &a->tolerance;
        else if (strcmp(name, "deliver-to") == 0)
            bit = A_DELIVER, slot = &a->deliver_to;
        else if (strcmp(name, "not-after") == 0)
            bit = A_NOT_AFTER, slot = &a->not_after;
        else if (strcmp(name, "index") == 0)
            bit = A_INDEX, slot = &a->index;
        else if (strcmp(name, "master-key-file") == 0)
            bit = A_MK, slot = &a->mkfile;
        else if (strcmp(name, "secret-file") == 0)
            bit = A_SECRET;
        else
            return cli_usage(cmd, "unknown option '--%s'", name);
        if (bit != 0 && !(allowed & bit))
            return cli_usage(cmd, "option '--%s' does not apply here", name);
        if (!takes) {
            if (eq != NULL)
                return cli_usage(cmd, "option '--%s' takes no value", name);
            continue;
        }
        if (eq != NULL)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else
            return cli_usage(cmd, "option '--%s' needs a value", name);
        if (bit == A_SECRET) {
            if (a->n_files >= PHG_WEBHOOK_SECRETS_MAX)
                return cli_usage(cmd, "at most %d --secret-file", PHG_WEBHOOK_SECRETS_MAX);
            a->secret_files[a->n_files++] = val;
        } else
            *slot = val;
    }
    return CLI_OK;
}

/* Read a secret file ("secret" or "verify token" file, as `what` says): at
 * most 4 KiB; the library trims it. */
static int read_secret_as(const char *what, const char *path, char **buf, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    phg_status st;
    if (fp == NULL) {
        cli_error("cannot open the %s file %s: %s", what, path, strerror(errno));
        return CLI_FAIL;
    }
    st = cli_read_all(fp, SECRET_FILE_MAX, buf, len);
    fclose(fp);
    if (st == PHG_ERR_TOO_LARGE) {
        cli_error("the %s file %s is over %d bytes", what, path, SECRET_FILE_MAX);
        return CLI_USAGE;
    }
    if (st != PHG_OK) {
        cli_error("cannot read the %s file %s: %s", what, path, phg_strerror(st));
        return CLI_FAIL;
    }
    return CLI_OK;
}

static int read_secret(const char *path, char **buf, size_t *len)
{
    return read_secret_as("secret", path, buf, len);
}

/* A verify token file: as a secret file, and not empty (the library would
 * read an empty one as "none"). */
static int read_verify_token(const char *path, char **buf, size_t *len)
{
    int rc = read_secret_as("verify token", path, buf, len);
    if (rc == CLI_OK && *len == 0) {
        cli_free_secret(*buf, 0);
        *buf = NULL;
        cli_error("the verify token file %s is empty", path);
        rc = CLI_USAGE;
    }
    return rc;
}

static int status_exit(phg_status st)
{
    return st == PHG_ERR_INVALID || st == PHG_ERR_TOO_LARGE ? CLI_USAGE : CLI_FAIL;
}

static void resource_of(const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "webhook_source:%s", name);
}

/* Open the store and load the master key (if need_mk). */
static int begin(const wh_args *a, int need_mk, phg_store **store, phg_masterkeys **mk)
{
    *store = NULL;
    *mk = NULL;
    if (need_mk && cli_load_masterkeys(a->mkfile, mk) != CLI_OK)
        return CLI_FAIL;
    if (cli_open_store(a->store != NULL ? a->store : cli_default_store(), 1, store) != CLI_OK) {
        phg_phi_masterkeys_free(*mk);
        *mk = NULL;
        return CLI_FAIL;
    }
    return CLI_OK;
}

static void end(phg_store *store, phg_masterkeys *mk)
{
    phg_store_close(store);
    phg_phi_masterkeys_free(mk);
}

static json_t *time_json(int64_t t)
{
    char buf[40];
    if (t == 0)
        return json_null();
    cli_format_time((long long)t, buf, sizeof buf);
    return json_string(buf);
}

static json_t *info_json(const phg_webhook_source_info *info, int with_secrets)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o, s:b}", "name", info->name, "scheme",
                          info->scheme, "tolerance_s", (json_int_t)info->tolerance_s, "deliver_to",
                          info->deliver_to, "created_at", time_json(info->created_at), "updated_at",
                          time_json(info->updated_at), "has_verify_token", info->has_verify_token);
    size_t i;
    if (o == NULL || !with_secrets)
        return o;
    json_t *arr = json_array();
    for (i = 0; i < info->n_secrets; i++) {
        const phg_webhook_secret_info *s = &info->secrets[i];
        json_array_append_new(arr, json_pack("{s:I, s:s, s:o, s:o, s:o}", "index",
                                             (json_int_t)s->index, "fingerprint", s->fingerprint,
                                             "not_after", time_json(s->not_after), "retired_at",
                                             time_json(s->retired_at), "created_at",
                                             time_json(s->created_at)));
    }
    json_object_set_new(o, "secrets", arr);
    return o;
}

static int print_show(const phg_webhook_source_info *info, int json)
{
    char t[40], na[40], rt[40];
    size_t i;
    if (json)
        return cli_print_json(info_json(info, 1));
    cli_format_time((long long)info->created_at, t, sizeof t);
    printf("name:        %s\nscheme:      %s\ntolerance:   %lld s\ndeliver to:  %s\n"
           "created:     %s\nverify token: %s\n",
           info->name, info->scheme, (long long)info->tolerance_s, info->deliver_to, t,
           info->has_verify_token ? "set" : "none");
    printf("secrets:\n");
    for (i = 0; i < info->n_secrets; i++) {
        const phg_webhook_secret_info *s = &info->secrets[i];
        if (s->not_after != 0)
            cli_format_time((long long)s->not_after, na, sizeof na);
        else
            snprintf(na, sizeof na, "-");
        if (s->retired_at != 0)
            cli_format_time((long long)s->retired_at, rt, sizeof rt);
        printf("  %lld  %s  not_after %s  %s%s\n", (long long)s->index, s->fingerprint, na,
               s->retired_at != 0 ? "retired " : "active", s->retired_at != 0 ? rt : "");
    }
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
}

/* ---- add ------------------------------------------------------------------------- */

static int source_add(int argc, char **argv)
{
    wh_args a;
    phg_webhook_secret secrets[PHG_WEBHOOK_SECRETS_MAX];
    char *bufs[PHG_WEBHOOK_SECRETS_MAX] = {0};
    size_t lens[PHG_WEBHOOK_SECRETS_MAX] = {0};
    phg_webhook_source_spec spec;
    phg_webhook_source_info *info = NULL;
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    char err[256], res[96], *details = NULL, *vt = NULL;
    phg_status st;
    size_t i, tol = 0, vt_len = 0;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate webhooks source add NAME --scheme SCHEME --secret-file FILE\n"
             "         [--secret-file FILE2 ...] [--tolerance 300] --deliver-to URL\n"
             "         [--verify-token-file FILE] [--store URL] [--master-key-file FILE]\n"
             "         [--json]\n\n"
             "Add a webhook source: NAME is 1 to 64 of a-z, 0-9, '_' and '-'; SCHEME one of\n"
             "standard-webhooks, stripe, oura, whoop, fitbit, polar, suunto, unsigned,\n"
             "google-health (its secret is the whole Authorization value registered with\n"
             "Google, e.g. \"Bearer ...\"). Each secret is read from a file (at most 4 KiB,\n"
             "surrounding whitespace trimmed), checked for its scheme, and stored encrypted\n"
             "under the master key (PHI_MASTER_KEY). The tolerance is 1 to 86400 seconds;\n"
             "accepted events go to --deliver-to (http:// or https://). --verify-token-file:\n"
             "the subscription handshake's verify token (Oura's verification_token, Fitbit's\n"
             "subscriber verification code; only oura and fitbit use it), 1 to 512 printable\n"
             "ASCII characters without spaces, stored encrypted too (see set-verify-token).\n"
             "Audited. Exit 2 for a value refused.");
        return CLI_OK;
    }
    rc = parse_args("webhooks source add", argc, argv, 1,
                    A_SCHEME | A_SECRET | A_TOL | A_DELIVER | A_MK | A_VERIFY_TOKEN, &a);
    if (rc != CLI_OK)
        return rc;
    if (a.scheme == NULL)
        return cli_usage("webhooks source add", "missing --scheme");
    if (a.n_files == 0)
        return cli_usage("webhooks source add", "missing --secret-file");
    if (a.deliver_to == NULL)
        return cli_usage("webhooks source add", "missing --deliver-to");
    if (a.tolerance != NULL &&
        (!cli_parse_size(a.tolerance, &tol) || tol < 1 || tol > PHG_WEBHOOK_STORE_TOLERANCE_MAX))
        return cli_usage("webhooks source add", "--tolerance must be 1 to 86400 (seconds)");
    if (!phg_webhook_source_name_valid(a.name))
        return cli_usage("webhooks source add", "NAME must be 1 to 64 of a-z, 0-9, '_' and '-'");
    for (i = 0; i < a.n_files; i++) {
        rc = read_secret(a.secret_files[i], &bufs[i], &lens[i]);
        if (rc != CLI_OK)
            goto out;
        secrets[i].text = bufs[i];
        secrets[i].len = lens[i];
        secrets[i].not_after = 0;
    }
    if (a.verify_token_file != NULL) {
        rc = read_verify_token(a.verify_token_file, &vt, &vt_len);
        if (rc != CLI_OK)
            goto out;
    }
    rc = begin(&a, 1, &store, &mk);
    if (rc != CLI_OK)
        goto out;
    memset(&spec, 0, sizeof spec);
    spec.name = a.name;
    spec.scheme = a.scheme;
    spec.tolerance_s = (int64_t)tol;
    spec.deliver_to = a.deliver_to;
    spec.secrets = secrets;
    spec.n_secrets = a.n_files;
    spec.verify_token = vt;
    spec.verify_token_len = vt_len;
    st = phg_webhook_sources_add(store, mk, &spec, err, sizeof err);
    resource_of(a.name, res, sizeof res);
    if (st != PHG_OK) {
        cli_error("cannot add the source %s: %s", a.name, err[0] ? err : phg_strerror(st));
        rc = st == PHG_ERR_NOT_FOUND ? CLI_USAGE : status_exit(st);
        (void)cli_audit_admin(store, mk, "webhooks.source.add", res, "error", NULL);
        goto out;
    }
    st = phg_webhook_sources_get(store, NULL, a.name, &info);
    if (st != PHG_OK) {
        cli_error("the source %s was added but cannot be read back: %s", a.name, phg_strerror(st));
        rc = CLI_FAIL;
        goto out;
    }
    {
        json_t *d =
            json_pack("{s:s, s:I, s:s, s:I, s:b}", "scheme", info->scheme, "tolerance_s",
                      (json_int_t)info->tolerance_s, "deliver_to", info->deliver_to, "secrets",
                      (json_int_t)info->n_secrets, "has_verify_token", info->has_verify_token);
        details = d != NULL ? json_dumps(d, JSON_COMPACT) : NULL;
        json_decref(d);
    }
    if (cli_audit_admin(store, mk, "webhooks.source.add", res, "success", details) != CLI_OK) {
        cli_error("the source %s is added, but its audit record failed", a.name);
        rc = CLI_FAIL;
        goto out;
    }
    if (a.json)
        rc = print_show(info, 1);
    else
        rc = printf("added webhook source %s (%s, %zu secret%s)\n", info->name, info->scheme,
                    info->n_secrets, info->n_secrets == 1 ? "" : "s") < 0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    free(details);
    phg_webhook_source_info_free(info);
    for (i = 0; i < a.n_files; i++)
        if (bufs[i] != NULL)
            cli_free_secret(bufs[i], lens[i]);
    if (vt != NULL)
        cli_free_secret(vt, vt_len);
    phg_wipe(secrets, sizeof secrets);
    end(store, mk);
    return rc;
}

/* ---- list, show ------------------------------------------------------------------------ */

static int source_list(int argc, char **argv)
{
    wh_args a;
    phg_webhook_source_info *infos = NULL;
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    size_t n = 0, i;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate webhooks source list [--store URL] [--json]\n\n"
             "List the webhook sources of the store (no secrets).");
        return CLI_OK;
    }
    rc = parse_args("webhooks source list", argc, argv, 0, 0, &a);
    if (rc != CLI_OK)
        return rc;
    rc = begin(&a, 0, &store, &mk);
    if (rc != CLI_OK)
        return rc;
    st = phg_webhook_sources_list(store, &infos, &n);
    if (st != PHG_OK) {
        cli_error("cannot list the webhook sources: %s", phg_strerror(st));
        end(store, mk);
        return CLI_FAIL;
    }
    if (a.json) {
        json_t *arr = json_array();
        for (i = 0; i < n; i++)
            json_array_append_new(arr, info_json(&infos[i], 0));
        rc = cli_print_json(json_pack("{s:o}", "sources", arr));
    } else {
        if (n == 0)
            puts("no webhook sources");
        for (i = 0; i < n; i++)
            printf("%-24s %-18s %6llds  %s\n", infos[i].name, infos[i].scheme,
                   (long long)infos[i].tolerance_s, infos[i].deliver_to);
        rc = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
    }
    phg_webhook_source_infos_free(infos, n);
    end(store, mk);
    return rc;
}

static int source_show(int argc, char **argv)
{
    wh_args a;
    phg_webhook_source_info *info = NULL;
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate webhooks source show NAME [--store URL] [--json]\n\n"
             "Show a webhook source and its secrets' fingerprints, not_after and retirement\n"
             "(never the secrets).");
        return CLI_OK;
    }
    rc = parse_args("webhooks source show", argc, argv, 1, 0, &a);
    if (rc != CLI_OK)
        return rc;
    rc = begin(&a, 0, &store, &mk);
    if (rc != CLI_OK)
        return rc;
    st = phg_webhook_sources_get(store, NULL, a.name, &info);
    if (st != PHG_OK) {
        if (st == PHG_ERR_NOT_FOUND)
            cli_error("no webhook source named %.64s", a.name);
        else
            cli_error("cannot read the source: %s", phg_strerror(st));
        end(store, mk);
        return CLI_FAIL;
    }
    rc = print_show(info, a.json);
    phg_webhook_source_info_free(info);
    end(store, mk);
    return rc;
}

/* ---- remove, add-secret, retire-secret ------------------------------------------------- */

static int source_remove(int argc, char **argv)
{
    wh_args a;
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    char res[96];
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate webhooks source remove NAME [--store URL] [--master-key-file FILE]\n"
             "         [--json]\n\n"
             "Remove a webhook source and its secrets. Needs the master key: audited.");
        return CLI_OK;
    }
    rc = parse_args("webhooks source remove", argc, argv, 1, A_MK, &a);
    if (rc != CLI_OK)
        return rc;
    rc = begin(&a, 1, &store, &mk);
    if (rc != CLI_OK)
        return rc;
    resource_of(a.name, res, sizeof res);
    st = phg_webhook_sources_remove(store, a.name);
    if (st != PHG_OK) {
        if (st == PHG_ERR_NOT_FOUND)
            cli_error("no webhook source named %.64s", a.name);
        else
            cli_error("cannot remove the source: %s", phg_strerror(st));
        end(store, mk);
        return CLI_FAIL;
    }
    if (cli_audit_admin(store, mk, "webhooks.source.remove", res, "success", NULL) != CLI_OK) {
        cli_error("the source %s is removed, but its audit record failed", a.name);
        rc = CLI_FAIL;
    } else if (a.json)
        rc = cli_print_json(json_pack("{s:s}", "removed", a.name));
    else
        rc = printf("removed webhook source %s\n", a.name) < 0 ? CLI_FAIL : CLI_OK;
    end(store, mk);
    return rc;
}

static int source_add_secret(int argc, char **argv)
{
    wh_args a;
    phg_webhook_secret secret;
    phg_webhook_source_info *info = NULL;
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    char *buf = NULL, err[256], res[96], details[160];
    const char *fp = "";
    size_t len = 0, i;
    int64_t not_after_us = 0, index = -1;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate webhooks source add-secret NAME --secret-file FILE\n"
             "         [--not-after RFC3339] [--store URL] [--master-key-file FILE] [--json]\n\n"
             "Add a secret to a source (at most 16 unretired), for a rotation with no\n"
             "downtime: both verify until the old one is retired or past its not_after.\n"
             "The secret is read from FILE (at most 4 KiB, trimmed), checked for the\n"
             "source's scheme and stored encrypted under the master key. Audited.");
        return CLI_OK;
    }
    rc = parse_args("webhooks source add-secret", argc, argv, 1, A_SECRET | A_NOT_AFTER | A_MK, &a);
    if (rc != CLI_OK)
        return rc;
    if (a.n_files != 1)
        return cli_usage("webhooks source add-secret", "give exactly one --secret-file");
    if (a.not_after != NULL &&
        (!cli_parse_time_us(a.not_after, &not_after_us) || not_after_us <= 0))
        return cli_usage("webhooks source add-secret",
                         "--not-after must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
    rc = read_secret(a.secret_files[0], &buf, &len);
    if (rc != CLI_OK)
        return rc;
    rc = begin(&a, 1, &store, &mk);
    if (rc != CLI_OK) {
        cli_free_secret(buf, len);
        return rc;
    }
    secret.text = buf;
    secret.len = len;
    secret.not_after = not_after_us / 1000000;
    resource_of(a.name, res, sizeof res);
    st = phg_webhook_sources_add_secret(store, mk, a.name, &secret, &index, err, sizeof err);
    phg_wipe(&secret, sizeof secret);
    cli_free_secret(buf, len);
    if (st != PHG_OK) {
        cli_error("cannot add the secret to %.64s: %s", a.name, err[0] ? err : phg_strerror(st));
        (void)cli_audit_admin(store, mk, "webhooks.secret.add", res, "error", NULL);
        end(store, mk);
        return status_exit(st);
    }
    if (phg_webhook_sources_get(store, NULL, a.name, &info) == PHG_OK) {
        for (i = 0; i < info->n_secrets; i++)
            if (info->secrets[i].index == index)
                fp = info->secrets[i].fingerprint;
    }
    snprintf(details, sizeof details, "{\"index\":%lld,\"fingerprint\":\"%s\"}", (long long)index,
             fp);
    if (cli_audit_admin(store, mk, "webhooks.secret.add", res, "success", details) != CLI_OK) {
        cli_error("the secret is added, but its audit record failed");
        rc = CLI_FAIL;
    } else if (a.json)
        rc = cli_print_json(json_pack("{s:s, s:I, s:s}", "source", a.name, "index",
                                      (json_int_t)index, "fingerprint", fp));
    else
        rc = printf("added secret %lld (%s) to %s\n", (long long)index, fp, a.name) < 0 ? CLI_FAIL
                                                                                        : CLI_OK;
    phg_webhook_source_info_free(info);
    end(store, mk);
    return rc;
}

static int source_retire_secret(int argc, char **argv)
{
    wh_args a;
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    char res[96], details[64];
    size_t index = 0;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate webhooks source retire-secret NAME --index N [--store URL]\n"
             "         [--master-key-file FILE] [--json]\n\n"
             "Retire secret N of a source (see show): it no longer verifies. The last\n"
             "unretired secret cannot be retired (remove the source instead). Audited.");
        return CLI_OK;
    }
    rc = parse_args("webhooks source retire-secret", argc, argv, 1, A_INDEX | A_MK, &a);
    if (rc != CLI_OK)
        return rc;
    if (a.index == NULL)
        return cli_usage("webhooks source retire-secret", "missing --index");
    if (a.index[0] < '0' || a.index[0] > '9' || !cli_parse_size(a.index, &index) ||
        strspn(a.index, "0123456789") != strlen(a.index) || index > 1000000)
        return cli_usage("webhooks source retire-secret", "--index must be a secret's number");
    rc = begin(&a, 1, &store, &mk);
    if (rc != CLI_OK)
        return rc;
    resource_of(a.name, res, sizeof res);
    st = phg_webhook_sources_retire_secret(store, a.name, (int64_t)index);
    if (st != PHG_OK) {
        if (st == PHG_ERR_NOT_FOUND)
            cli_error("no secret %zu in a webhook source named %.64s", index, a.name);
        else if (st == PHG_ERR_STATE)
            cli_error("secret %zu is the last unretired secret of %s: add another first, or "
                      "remove the source",
                      index, a.name);
        else
            cli_error("cannot retire the secret: %s", phg_strerror(st));
        end(store, mk);
        return CLI_FAIL;
    }
    snprintf(details, sizeof details, "{\"index\":%zu}", index);
    if (cli_audit_admin(store, mk, "webhooks.secret.retire", res, "success", details) != CLI_OK) {
        cli_error("the secret is retired, but its audit record failed");
        rc = CLI_FAIL;
    } else if (a.json)
        rc =
            cli_print_json(json_pack("{s:s, s:I}", "source", a.name, "retired", (json_int_t)index));
    else
        rc = printf("retired secret %zu of %s\n", index, a.name) < 0 ? CLI_FAIL : CLI_OK;
    end(store, mk);
    return rc;
}

static int source_set_verify_token(int argc, char **argv)
{
    static const char cmd[] = "webhooks source set-verify-token";
    wh_args a;
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    char *vt = NULL, err[256], res[96], details[64];
    size_t vt_len = 0;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate webhooks source set-verify-token NAME\n"
             "         (--verify-token-file FILE | --clear) [--store URL]\n"
             "         [--master-key-file FILE] [--json]\n\n"
             "Set or clear the verify token of a source: the secret of the provider's\n"
             "subscription handshake, apart from the signing secrets (Oura's\n"
             "verification_token, Fitbit's subscriber verification code; only oura and\n"
             "fitbit use it, but any source may keep one). It is read from FILE (at most\n"
             "4 KiB, trimmed; then 1 to 512 printable ASCII characters without spaces),\n"
             "stored encrypted under the master key, and never printed. Audited. Exit 2\n"
             "for a value refused, 1 for no such source.");
        return CLI_OK;
    }
    rc = parse_args(cmd, argc, argv, 1, A_VERIFY_TOKEN | A_CLEAR | A_MK, &a);
    if (rc != CLI_OK)
        return rc;
    if ((a.verify_token_file != NULL) == (a.clear != 0))
        return cli_usage(cmd, "give either --verify-token-file FILE or --clear");
    if (a.verify_token_file != NULL) {
        rc = read_verify_token(a.verify_token_file, &vt, &vt_len);
        if (rc != CLI_OK)
            return rc;
    }
    rc = begin(&a, 1, &store, &mk);
    if (rc != CLI_OK) {
        cli_free_secret(vt, vt_len);
        return rc;
    }
    resource_of(a.name, res, sizeof res);
    st = phg_webhook_sources_set_verify_token(store, mk, a.name, vt, vt_len, err, sizeof err);
    cli_free_secret(vt, vt_len);
    vt = NULL;
    if (st != PHG_OK) {
        if (st == PHG_ERR_NOT_FOUND)
            cli_error("no webhook source named %.64s", a.name);
        else
            cli_error("cannot %s the verify token of %.64s: %s", a.clear ? "clear" : "set", a.name,
                      err[0] ? err : phg_strerror(st));
        (void)cli_audit_admin(store, mk, "webhooks.source.set_verify_token", res, "error", NULL);
        end(store, mk);
        return status_exit(st);
    }
    snprintf(details, sizeof details, "{\"has_verify_token\":%s}", a.clear ? "false" : "true");
    if (cli_audit_admin(store, mk, "webhooks.source.set_verify_token", res, "success", details) !=
        CLI_OK) {
        cli_error("the verify token is %s, but its audit record failed",
                  a.clear ? "cleared" : "set");
        rc = CLI_FAIL;
    } else if (a.json)
        rc = cli_print_json(
            json_pack("{s:s, s:b}", "name", a.name, "has_verify_token", a.clear ? 0 : 1));
    else
        rc = printf("%s the verify token of %s\n", a.clear ? "cleared" : "set", a.name) < 0
                 ? CLI_FAIL
                 : CLI_OK;
    end(store, mk);
    return rc;
}

static const char source_help[] =
    "Usage: phigate webhooks source COMMAND ...\n\n"
    "Webhook sources in the store, secrets encrypted under the master key:\n"
    "  add NAME --scheme S --secret-file F [--secret-file F2] [--tolerance 300] --deliver-to URL\n"
    "      [--verify-token-file F]\n"
    "  list\n"
    "  show NAME\n"
    "  remove NAME\n"
    "  add-secret NAME --secret-file F [--not-after RFC3339]\n"
    "  retire-secret NAME --index N\n"
    "  set-verify-token NAME (--verify-token-file F | --clear)\n"
    "Each takes [--store URL] [--json]; see phigate webhooks source COMMAND --help.\n";

static int cmd_source(int argc, char **argv)
{
    static const cli_command table[] = {
        {"add", "add a source", source_add},
        {"list", "list the sources", source_list},
        {"show", "show a source", source_show},
        {"remove", "remove a source", source_remove},
        {"add-secret", "add a secret", source_add_secret},
        {"retire-secret", "retire a secret", source_retire_secret},
        {"set-verify-token", "set or clear the handshake's verify token", source_set_verify_token},
        {NULL, NULL, NULL},
    };
    return cli_dispatch("webhooks source", source_help, table, argc, argv);
}

static const char webhooks_help[] =
    "Usage: phigate webhooks source COMMAND ...\n\n"
    "Inbound webhooks: the sources phigate verifies (phigate webhooks source --help).\n";

int cmd_webhooks(int argc, char **argv)
{
    static const cli_command table[] = {
        {"source", "webhook sources", cmd_source},
        {NULL, NULL, NULL},
    };
    return cli_dispatch("webhooks", webhooks_help, table, argc, argv);
}
