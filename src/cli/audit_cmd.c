/*
 * audit_cmd.c: `phigate audit ...`: query the audit log, the accounting of
 * disclosures report, verification of every chain, and partition archive and
 * prune; plus cli_audit_admin(), which every administrative CLI command uses
 * to leave its record (actor cli:<os user>).
 */
#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* "2026-11-27", "2026-11-27T10:00:00Z", "2026-11-27T10:00:00.123456Z" -> Unix us. */
int cli_parse_time_us(const char *s, int64_t *out)
{
    struct tm tm;
    const char *rest;
    char back[32];
    long frac = 0;
    int digits = 0;
    time_t t;

    if (s == NULL || strlen(s) > 40)
        return 0;
    memset(&tm, 0, sizeof tm);
    if (strlen(s) == 10) {
        rest = strptime(s, "%Y-%m-%d", &tm);
        if (rest == NULL || *rest != '\0')
            return 0;
    } else {
        rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (rest == NULL)
            return 0;
        if (*rest == '.') {
            rest++;
            while (*rest >= '0' && *rest <= '9' && digits < 6) {
                frac = frac * 10 + (*rest - '0');
                rest++, digits++;
            }
            if (digits == 0)
                return 0;
            while (digits < 6)
                frac *= 10, digits++;
        }
        if (strcmp(rest, "Z") != 0)
            return 0;
    }
    t = timegm(&tm);
    strftime(back, sizeof back, strlen(s) == 10 ? "%Y-%m-%d" : "%Y-%m-%dT%H:%M:%S", gmtime(&t));
    if (strncmp(back, s, strlen(back)) != 0) /* 2026-02-31 and the like */
        return 0;
    *out = (int64_t)t * 1000000 + frac;
    return *out >= 0;
}

/* ---- recording administrative actions ---------------------------------------------- */

int cli_audit_open(phg_store *store, const phg_masterkeys *mk, phg_audit **out)
{
    phg_audit_options o;
    phg_request_context ctx;
    struct passwd *pw = getpwuid(geteuid());
    char chain[PHG_AUDIT_CHAIN_MAX + 1], id[PHG_ULID_LEN + 1];
    uint8_t key[32];
    phg_status st;
    size_t i;

    /* One chain per CLI run: several may run at once, and a chain has one
     * writer. */
    if (phg_ulid_new_text(id) != PHG_OK)
        return CLI_FAIL;
    for (i = 0; id[i]; i++)
        id[i] = (char)(id[i] >= 'A' && id[i] <= 'Z' ? id[i] - 'A' + 'a' : id[i]);
    snprintf(chain, sizeof chain, "cli.%s", id);
    if (phg_audit_checkpoint_key(mk, key) != PHG_OK) {
        cli_error("cannot derive the audit checkpoint key");
        return CLI_FAIL;
    }
    phg_audit_options_init(&o);
    o.chain = chain;
    st = phg_audit_open(store, &o, key, out);
    phg_wipe(key, sizeof key);
    if (st != PHG_OK) {
        cli_error("cannot open the audit log: %s", phg_strerror(st));
        return CLI_FAIL;
    }
    /* The actor of everything this run records. */
    memset(&ctx, 0, sizeof ctx);
    snprintf(ctx.user_id, sizeof ctx.user_id, "cli:%s",
             pw != NULL && pw->pw_name ? pw->pw_name : "unknown");
    snprintf(ctx.role, sizeof ctx.role, "admin");
    phg_request_context_set(&ctx);
    return CLI_OK;
}

int cli_audit_admin(phg_store *store, const phg_masterkeys *mk, const char *action,
                    const char *resource, const char *outcome, const char *details_json)
{
    phg_audit *audit = NULL;
    phg_audit_event ev;
    phg_status st;

    if (cli_audit_open(store, mk, &audit) != CLI_OK)
        return CLI_FAIL;
    memset(&ev, 0, sizeof ev);
    ev.action = action;
    ev.resource = resource;
    ev.outcome = outcome;
    ev.details_json = details_json;
    st = phg_audit_append(audit, &ev, NULL);
    phg_audit_close(audit);
    if (st != PHG_OK) {
        cli_error("cannot write the audit record (%s): %s", action, phg_strerror(st));
        return CLI_FAIL;
    }
    return CLI_OK;
}

/* ---- query and report ------------------------------------------------------------------ */

enum { A_STORE, A_JSON, A_FROM, A_TO, A_USER, A_KEY, A_ACTION, A_OUTCOME, A_REQ, A_SUBJECT,
       A_BEFORE, A_LIMIT, A_FORMAT, A_MONTH, A_OUT, A_MKFILE, A_END };

static void audit_opts(cli_opt o[A_END + 1])
{
    cli_opt init[A_END + 1] = {
        {"store", 1, NULL, 0},   {"json", 0, NULL, 0},       {"from", 1, NULL, 0},
        {"to", 1, NULL, 0},      {"user", 1, NULL, 0},       {"key", 1, NULL, 0},
        {"action", 1, NULL, 0},  {"outcome", 1, NULL, 0},    {"request-id", 1, NULL, 0},
        {"subject", 1, NULL, 0}, {"before", 1, NULL, 0},     {"limit", 1, NULL, 0},
        {"format", 1, NULL, 0},  {"month", 1, NULL, 0},      {"out", 1, NULL, 0},
        {"master-key-file", 1, NULL, 0}, {NULL, 0, NULL, 0},
    };
    memcpy(o, init, sizeof init);
}

static int filter_from_opts(const char *cmd, cli_opt *o, phg_audit_filter *f)
{
    size_t limit = 100;
    memset(f, 0, sizeof *f);
    if (o[A_FROM].set && !cli_parse_time_us(o[A_FROM].value, &f->from_us))
        return cli_usage(cmd, "--from must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.ffffff]Z");
    if (o[A_TO].set && !cli_parse_time_us(o[A_TO].value, &f->to_us))
        return cli_usage(cmd, "--to must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.ffffff]Z");
    if (o[A_LIMIT].set && (!cli_parse_size(o[A_LIMIT].value, &limit) || limit < 1 ||
                           limit > PHG_AUDIT_QUERY_MAX))
        return cli_usage(cmd, "--limit must be 1 to 1000");
    f->user_id = o[A_USER].value;
    f->key_id = o[A_KEY].value;
    f->action = o[A_ACTION].value;
    f->outcome = o[A_OUTCOME].value;
    f->request_id = o[A_REQ].value;
    f->subject = o[A_SUBJECT].value;
    f->before_id = o[A_BEFORE].value;
    f->limit = limit;
    return CLI_OK;
}

static int audit_query_cmd(int argc, char **argv)
{
    cli_opt o[A_END + 1];
    phg_store *store = NULL;
    phg_audit_filter f;
    phg_audit_row *rows = NULL;
    size_t n = 0, i;
    char err[256];
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate audit query [--from T] [--to T] [--user ID] [--key KEY_ID]\n"
             "         [--action A] [--outcome success|denied|error] [--request-id ULID]\n"
             "         [--subject USER] [--before ULID] [--limit 1-1000] [--store URL] [--json]\n\n"
             "Audit records, newest first. T is YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.ffffff]Z\n"
             "(UTC; --from inclusive, --to exclusive). For the next page pass --before the\n"
             "last id shown. Every filter is validated before it reaches the store.");
        return CLI_OK;
    }
    audit_opts(o);
    if (cli_parse_opts("audit query", argc, argv, o) != CLI_OK)
        return CLI_USAGE;
    if (filter_from_opts("audit query", o, &f) != CLI_OK)
        return CLI_USAGE;
    rc = cli_open_store(o[A_STORE].set ? o[A_STORE].value : cli_default_store(), 1, &store);
    if (rc != CLI_OK)
        return rc;
    err[0] = '\0';
    st = phg_audit_query(store, &f, &rows, &n, err, sizeof err);
    if (st == PHG_ERR_INVALID) {
        phg_store_close(store);
        return cli_usage("audit query", "%s", err);
    }
    if (st != PHG_OK) {
        cli_error("%s", err[0] ? err : phg_strerror(st));
        phg_store_close(store);
        return CLI_FAIL;
    }
    if (o[A_JSON].set) {
        json_t *arr = json_array();
        for (i = 0; i < n; i++)
            json_array_append_new(arr, rows[i].json ? json_loads(rows[i].json, 0, NULL)
                                                    : json_null());
        json_t *res = json_pack("{s:o,s:s?}", "records", arr, "next_before",
                                n == f.limit && n > 0 ? rows[n - 1].id : NULL);
        rc = cli_print_json(res);
    } else {
        for (i = 0; i < n; i++)
            printf("%s\n", rows[i].json ? rows[i].json : "{}");
        rc = CLI_OK;
    }
    phg_audit_rows_free(rows, n);
    phg_store_close(store);
    return rc;
}

static void csv_field(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        if (*s == '"')
            putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static int audit_report_cmd(int argc, char **argv)
{
    cli_opt o[A_END + 1];
    phg_store *store = NULL;
    phg_audit_filter f;
    char before[PHG_ULID_LEN + 1] = "", err[256];
    json_t *all = NULL;
    int csv = 0, rc = CLI_FAIL;
    size_t total = 0;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate audit report --subject USER --from T1 --to T2 [--format csv|json]\n"
             "         [--store URL]\n\n"
             "Accounting of disclosures: every recorded access to USER's data in [T1, T2):\n"
             "when, who (user, key, role), what (action, resource), from where, and whether\n"
             "it was allowed. Newest first. CSV by default.");
        return CLI_OK;
    }
    audit_opts(o);
    if (cli_parse_opts("audit report", argc, argv, o) != CLI_OK)
        return CLI_USAGE;
    if (!o[A_SUBJECT].set || !o[A_FROM].set || !o[A_TO].set)
        return cli_usage("audit report", "--subject, --from and --to are required");
    if (o[A_FORMAT].set && strcmp(o[A_FORMAT].value, "csv") != 0 &&
        strcmp(o[A_FORMAT].value, "json") != 0)
        return cli_usage("audit report", "--format must be csv or json");
    csv = !o[A_FORMAT].set || strcmp(o[A_FORMAT].value, "csv") == 0;
    if (filter_from_opts("audit report", o, &f) != CLI_OK)
        return CLI_USAGE;
    f.limit = PHG_AUDIT_QUERY_MAX;
    if (f.to_us <= f.from_us)
        return cli_usage("audit report", "the time range is empty or negative (--to must be after --from)");
    rc = cli_open_store(o[A_STORE].set ? o[A_STORE].value : cli_default_store(), 1, &store);
    if (rc != CLI_OK)
        return rc;
    rc = CLI_FAIL;
    if (csv)
        printf("time,user_id,key_id,role,action,resource,outcome,ip,request_id,record_id\n");
    else
        all = json_array();
    for (;;) {
        phg_audit_row *rows = NULL;
        size_t n = 0, i;
        phg_status st;
        f.before_id = before[0] ? before : NULL;
        err[0] = '\0';
        st = phg_audit_query(store, &f, &rows, &n, err, sizeof err);
        if (st == PHG_ERR_INVALID) {
            rc = cli_usage("audit report", "%s", err);
            goto out;
        }
        if (st != PHG_OK) {
            cli_error("%s", err[0] ? err : phg_strerror(st));
            goto out;
        }
        for (i = 0; i < n; i++) {
            json_t *r = rows[i].json ? json_loads(rows[i].json, 0, NULL) : NULL;
            json_t *actor = json_object_get(r, "actor");
            if (r == NULL)
                continue;
            if (csv) {
                const char *cols[] = {
                    json_string_value(json_object_get(r, "ts")),
                    json_string_value(json_object_get(actor, "user_id")),
                    json_string_value(json_object_get(actor, "key_id")),
                    json_string_value(json_object_get(actor, "role")),
                    json_string_value(json_object_get(r, "action")),
                    json_string_value(json_object_get(r, "resource")),
                    json_string_value(json_object_get(r, "outcome")),
                    json_string_value(json_object_get(r, "ip")),
                    json_string_value(json_object_get(r, "request_id")),
                    json_string_value(json_object_get(r, "id")),
                };
                for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++) {
                    if (c)
                        putchar(',');
                    csv_field(cols[c]);
                }
                putchar('\n');
                json_decref(r);
            } else {
                json_array_append_new(all, r);
            }
            total++;
        }
        if (n > 0)
            snprintf(before, sizeof before, "%s", rows[n - 1].id);
        phg_audit_rows_free(rows, n);
        if (n < f.limit)
            break;
    }
    if (!csv)
        rc = cli_print_json(json_pack("{s:s,s:s,s:s,s:I,s:o}", "subject", o[A_SUBJECT].value,
                                      "from", o[A_FROM].value, "to", o[A_TO].value, "count",
                                      (json_int_t)total, "accesses", all));
    else
        rc = CLI_OK;
    all = NULL;
out:
    json_decref(all);
    phg_store_close(store);
    return rc;
}

/* ---- verify ------------------------------------------------------------------------------ */

static int audit_verify_cmd(int argc, char **argv)
{
    cli_opt o[A_END + 1];
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    phg_audit_verify_report rep;
    int64_t from = 0, to = 0;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate audit verify [--from T] [--to T] [--store URL] [--json]\n\n"
             "Walk every chain of the audit log and every signed checkpoint, and print the\n"
             "first broken link: an edited, deleted, inserted or reordered record, a\n"
             "truncated chain, or a forged checkpoint. Exit 0 if all is intact, 1 if not.\n"
             "Needs the master key (PHI_MASTER_KEY or PHI_MASTER_KEY_FILE): the checkpoint\n"
             "key is derived from it.");
        return CLI_OK;
    }
    audit_opts(o);
    if (cli_parse_opts("audit verify", argc, argv, o) != CLI_OK)
        return CLI_USAGE;
    if (o[A_FROM].set && !cli_parse_time_us(o[A_FROM].value, &from))
        return cli_usage("audit verify", "bad --from time");
    if (o[A_TO].set && !cli_parse_time_us(o[A_TO].value, &to))
        return cli_usage("audit verify", "bad --to time");
    rc = cli_load_masterkeys(o[A_MKFILE].value, &mk);
    if (rc != CLI_OK)
        return rc;
    rc = cli_open_store(o[A_STORE].set ? o[A_STORE].value : cli_default_store(), 1, &store);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    st = phg_audit_verify_mk(store, mk, from, to, &rep);
    if (st != PHG_OK) {
        cli_error("cannot verify the audit log: %s", phg_strerror(st));
        goto out;
    }
    if (o[A_JSON].set) {
        json_t *j = json_pack("{s:b,s:I,s:I,s:I}", "ok", rep.ok, "records",
                              (json_int_t)rep.records, "chains", (json_int_t)rep.chains,
                              "checkpoints", (json_int_t)rep.checkpoints);
        if (!rep.ok && j != NULL)
            json_object_set_new(j, "broken",
                                json_pack("{s:s,s:I,s:s,s:s}", "chain", rep.chain, "seq",
                                          (json_int_t)rep.seq, "id", rep.id, "problem",
                                          rep.problem));
        if (cli_print_json(j) != CLI_OK)
            goto out;
    } else if (rep.ok) {
        printf("audit log intact: %llu records in %llu chains, %llu signed checkpoints\n",
               (unsigned long long)rep.records, (unsigned long long)rep.chains,
               (unsigned long long)rep.checkpoints);
    } else {
        printf("BROKEN: chain %s, sequence %lld%s%s: %s\n", rep.chain, (long long)rep.seq,
               rep.id[0] ? ", record " : "", rep.id, rep.problem);
    }
    rc = rep.ok ? CLI_OK : CLI_FAIL;
out:
    phg_store_close(store);
    phg_phi_masterkeys_free(mk);
    return rc;
}

/* ---- archive and prune ------------------------------------------------------------------- */

static int audit_archive_cmd(int argc, char **argv)
{
    cli_opt o[A_END + 1];
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    char path[1024], err[512], details[256];
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate audit archive --month YYYY-MM [--out FILE] [--store URL] [--json]\n\n"
             "Write one month's partition to FILE (default audit-YYYY-MM.jsonl.gz), gzip\n"
             "compressed, one line {\"hash\":…,\"record\":…} per record, oldest first, and\n"
             "FILE.sha256 (the SHA-256 of FILE, the count, the first and last id). The\n"
             "partition is then marked archived: only archived partitions older than six\n"
             "years may be pruned. The action is audited (needs the master key).");
        return CLI_OK;
    }
    audit_opts(o);
    if (cli_parse_opts("audit archive", argc, argv, o) != CLI_OK)
        return CLI_USAGE;
    if (!o[A_MONTH].set)
        return cli_usage("audit archive", "--month YYYY-MM is required");
    if (strlen(o[A_MONTH].value) != 7)
        return cli_usage("audit archive", "--month must be YYYY-MM");
    if (o[A_OUT].set && strlen(o[A_OUT].value) >= sizeof path - 8)
        return cli_usage("audit archive", "--out path is too long");
    if (o[A_OUT].set)
        snprintf(path, sizeof path, "%s", o[A_OUT].value);
    else
        snprintf(path, sizeof path, "audit-%s.jsonl.gz", o[A_MONTH].value);
    rc = cli_load_masterkeys(o[A_MKFILE].value, &mk);
    if (rc != CLI_OK)
        return rc;
    rc = cli_open_store(o[A_STORE].set ? o[A_STORE].value : cli_default_store(), 1, &store);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    err[0] = '\0';
    st = phg_audit_archive(store, o[A_MONTH].value, path, err, sizeof err);
    snprintf(details, sizeof details, "{\"month\":\"%.7s\"}", o[A_MONTH].value);
    if (cli_audit_admin(store, mk, "audit.archive", o[A_MONTH].value,
                        st == PHG_OK ? "success" : "error", details) != CLI_OK)
        goto out;
    if (st == PHG_ERR_INVALID) {
        rc = cli_usage("audit archive", "%s", err);
        goto out;
    }
    if (st != PHG_OK) {
        cli_error("%s", err[0] ? err : phg_strerror(st));
        goto out;
    }
    if (o[A_JSON].set)
        rc = cli_print_json(json_pack("{s:s,s:s}", "archived", o[A_MONTH].value, "file", path));
    else
        rc = printf("archived %s to %s (manifest %s.sha256)\n", o[A_MONTH].value, path, path) <
                     0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    phg_store_close(store);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int audit_prune_cmd(int argc, char **argv)
{
    cli_opt o[A_END + 1];
    phg_store *store = NULL;
    phg_masterkeys *mk = NULL;
    size_t dropped = 0;
    char err[256], details[64];
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate audit prune [--store URL] [--json]\n\n"
             "Drop the audit partitions that are archived and older than the six-year\n"
             "retention period. Nothing younger, and nothing unarchived, is ever dropped.\n"
             "The action is audited (needs the master key).");
        return CLI_OK;
    }
    audit_opts(o);
    if (cli_parse_opts("audit prune", argc, argv, o) != CLI_OK)
        return CLI_USAGE;
    rc = cli_load_masterkeys(o[A_MKFILE].value, &mk);
    if (rc != CLI_OK)
        return rc;
    rc = cli_open_store(o[A_STORE].set ? o[A_STORE].value : cli_default_store(), 1, &store);
    if (rc != CLI_OK)
        goto out;
    rc = CLI_FAIL;
    err[0] = '\0';
    st = phg_audit_prune(store, (int64_t)time(NULL), &dropped, err, sizeof err);
    snprintf(details, sizeof details, "{\"dropped\":%zu}", dropped);
    if (cli_audit_admin(store, mk, "audit.prune", "partitions", st == PHG_OK ? "success" : "error",
                        details) != CLI_OK)
        goto out;
    if (st != PHG_OK) {
        cli_error("%s", err[0] ? err : phg_strerror(st));
        goto out;
    }
    if (o[A_JSON].set)
        rc = cli_print_json(json_pack("{s:I}", "dropped", (json_int_t)dropped));
    else
        rc = printf("dropped %zu partition(s)\n", dropped) < 0 ? CLI_FAIL : CLI_OK;
out:
    phg_store_close(store);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static const char audit_help[] =
    "Usage: phigate audit <command> [options]\n"
    "\n"
    "The tamper-evident audit log (docs/formats.md \"Audit record\").\n"
    "\n"
    "Commands:\n"
    "  query     records by time, user, key, action, outcome, request id, subject\n"
    "  report    accounting of disclosures for one person (csv or json)\n"
    "  verify    walk every chain and checkpoint; print the first broken link\n"
    "  archive   write a month's partition to a compressed file with a manifest\n"
    "  prune     drop archived partitions older than six years\n";

int cmd_audit(int argc, char **argv)
{
    static const cli_command table[] = {
        {"query", "", audit_query_cmd},     {"report", "", audit_report_cmd},
        {"verify", "", audit_verify_cmd},   {"archive", "", audit_archive_cmd},
        {"prune", "", audit_prune_cmd},     {NULL, NULL, NULL},
    };
    return cli_dispatch("audit", audit_help, table, argc, argv);
}
