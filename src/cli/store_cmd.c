/*
 * store_cmd.c: `phigate migrate` and `phigate keys ...`: the schema of a
 * store, and API key management from the command line (which is also how the
 * first admin key is made, before any server runs).
 *
 * The key text is printed once, by create and rotate, and never again.
 */
#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "text_internal.h"

const char *cli_default_store(void)
{
    const char *env = getenv("PHIGATE_STORE");
    return env != NULL && env[0] != '\0' ? env : PHG_STORE_DEFAULT_URL;
}

/* For sqlite:PATH, create the folder of PATH (mode 0700) if it is missing. */
static void make_sqlite_folder(const char *url)
{
    char dir[PHG_STORE_URL_MAX + 1], *p;
    if (strncmp(url, "sqlite:", 7) != 0 || strlen(url + 7) >= sizeof dir)
        return;
    snprintf(dir, sizeof dir, "%s", url + 7);
    p = strrchr(dir, '/');
    if (p == NULL || p == dir)
        return;
    *p = '\0';
    for (p = dir + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            (void)mkdir(dir, 0700);
            *p = '/';
        }
    }
    (void)mkdir(dir, 0700);
}

int cli_open_store(const char *url, int need_schema, phg_store **out)
{
    char err[PHG_STORE_ERR_MAX];
    phg_status st;
    int current = 0, latest = 0;

    err[0] = '\0';
    make_sqlite_folder(url);
    st = phg_store_open(url, NULL, out, err, sizeof err);
    if (st != PHG_OK) {
        cli_error("store: %s", err[0] ? err : phg_strerror(st));
        return CLI_FAIL;
    }
    if (!need_schema)
        return CLI_OK;
    st = phg_store_schema_version(*out, &current, &latest);
    if (st != PHG_OK) {
        cli_error("store %s: %s", phg_store_display_url(*out), phg_strerror(st));
    } else if (current > latest) {
        cli_error("store %s: schema version %d is newer than this build knows (%d); upgrade "
                  "phigate",
                  phg_store_display_url(*out), current, latest);
    } else if (current < latest) {
        cli_error("store %s: schema version %d, this build needs %d: run 'phigate migrate "
                  "--store URL' first",
                  phg_store_display_url(*out), current, latest);
    } else {
        return CLI_OK;
    }
    phg_store_close(*out);
    *out = NULL;
    return CLI_FAIL;
}

/* ---- migrate ------------------------------------------------------------------ */

int cmd_migrate(int argc, char **argv)
{
    cli_opt opts[] = {{"store", 1, NULL, 0}, {"status", 0, NULL, 0}, {"json", 0, NULL, 0},
                      {NULL, 0, NULL, 0}};
    phg_store *store = NULL;
    char err[PHG_STORE_ERR_MAX];
    const char *url;
    int from = 0, to = 0, latest = 0, rc;
    phg_status st;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate migrate [--store URL] [--status] [--json]\n\n"
             "Apply the schema migrations this build carries that the store lacks, each in\n"
             "one transaction that also records its version. Running it again changes\n"
             "nothing. A database whose schema is newer than this build is refused.\n"
             "--status only shows where the database stands.\n\n"
             "URL: sqlite:PATH (default sqlite:./var/phigate.db, or $PHIGATE_STORE) or\n"
             "postgres://USER@HOST:PORT/DB.");
        return CLI_OK;
    }
    if (cli_parse_opts("migrate", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    url = opts[0].set ? opts[0].value : cli_default_store();
    rc = cli_open_store(url, 0, &store);
    if (rc != CLI_OK)
        return rc;
    rc = CLI_FAIL;
    if (opts[1].set) {
        st = phg_store_schema_version(store, &from, &latest);
        if (st != PHG_OK) {
            cli_error("store %s: %s", phg_store_display_url(store), phg_strerror(st));
            goto out;
        }
        if (opts[2].set)
            rc = cli_print_json(json_pack("{s:s,s:s,s:i,s:i,s:s}", "store",
                                          phg_store_display_url(store), "engine",
                                          phg_store_engine_name(store), "version", from,
                                          "latest", latest, "state",
                                          from == latest ? "current"
                                          : from < latest ? "behind"
                                                          : "newer"));
        else
            rc = printf("%s (%s): schema version %d of %d%s\n", phg_store_display_url(store),
                        phg_store_engine_name(store), from, latest,
                        from == latest  ? ", up to date"
                        : from < latest ? ": run 'phigate migrate'"
                                        : ": NEWER than this build, upgrade phigate") < 0
                     ? CLI_FAIL
                     : CLI_OK;
        goto out;
    }
    err[0] = '\0';
    st = phg_store_migrate(store, &from, &to, err, sizeof err);
    if (st != PHG_OK) {
        cli_error("store %s: %s", phg_store_display_url(store), err[0] ? err : phg_strerror(st));
        goto out;
    }
    if (opts[2].set)
        rc = cli_print_json(json_pack("{s:s,s:i,s:i}", "store", phg_store_display_url(store),
                                      "from", from, "to", to));
    else if (from == to)
        rc = printf("%s: schema version %d, nothing to do\n", phg_store_display_url(store), to) <
                     0
                 ? CLI_FAIL
                 : CLI_OK;
    else
        rc = printf("%s: migrated from version %d to %d\n", phg_store_display_url(store), from,
                    to) < 0
                 ? CLI_FAIL
                 : CLI_OK;
out:
    phg_store_close(store);
    return rc;
}

/* ---- keys ---------------------------------------------------------------------------- */

/* "90s", "15m", "24h", "7d" -> seconds. 0 on a bad form. */
static int parse_duration(const char *s, int64_t *out)
{
    char *end = NULL;
    long long v;
    int64_t mult;
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || end[0] == '\0' || end[1] != '\0')
        return 0;
    switch (*end) {
    case 's': mult = 1; break;
    case 'm': mult = 60; break;
    case 'h': mult = 3600; break;
    case 'd': mult = 86400; break;
    default: return 0;
    }
    if (v > 100LL * 365 * 86400 / mult)
        return 0;
    *out = (int64_t)v * mult;
    return 1;
}

/* An RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SSZ) or a duration from now. */
static int parse_when(const char *s, int64_t *out)
{
    struct tm tm;
    char back[32];
    int64_t d;
    time_t t;
    if (parse_duration(s, &d)) {
        *out = (int64_t)time(NULL) + d;
        return 1;
    }
    memset(&tm, 0, sizeof tm);
    if (strlen(s) != 20 || strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm) == NULL)
        return 0;
    t = timegm(&tm);
    cli_format_time((long long)t, back, sizeof back);
    if (strcmp(back, s) != 0)
        return 0;
    *out = (int64_t)t;
    return 1;
}

static void os_actor(char *buf, size_t len)
{
    struct passwd *pw = getpwuid(geteuid());
    snprintf(buf, len, "cli:%s", pw != NULL && pw->pw_name != NULL ? pw->pw_name : "unknown");
}

static json_t *record_json(const phg_apikey_record *r)
{
    char scopes[128], created[32], expires[32], grace[32], revoked[32], used[32];
    json_t *o;
    phg_apikey_scopes_format(r->scopes, scopes, sizeof scopes);
    cli_format_time(r->created_at, created, sizeof created);
    cli_format_time(r->expires_at, expires, sizeof expires);
    cli_format_time(r->grace_until, grace, sizeof grace);
    cli_format_time(r->revoked_at, revoked, sizeof revoked);
    cli_format_time(r->last_used_at, used, sizeof used);
    o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "id", r->id, "role", phg_role_name(r->role),
                  "user_id", r->user_id, "scopes", scopes, "description", r->description,
                  "created_by", r->created_by, "created_at", created);
    if (o == NULL)
        return NULL;
    json_object_set_new(o, "expires_at", r->expires_at ? json_string(expires) : json_null());
    json_object_set_new(o, "revoked_at", r->revoked_at ? json_string(revoked) : json_null());
    json_object_set_new(o, "grace_until", r->grace_until ? json_string(grace) : json_null());
    json_object_set_new(o, "replaced_by",
                        r->replaced_by[0] ? json_string(r->replaced_by) : json_null());
    json_object_set_new(o, "rate_limit", r->rate_limit[0] ? json_string(r->rate_limit)
                                                          : json_null());
    json_object_set_new(o, "last_used_at", r->last_used_at ? json_string(used) : json_null());
    {
        const char *state = "active";
        int64_t now = (int64_t)time(NULL);
        if (r->revoked_at)
            state = "revoked";
        else if ((r->expires_at && now >= r->expires_at) ||
                 (r->grace_until && now >= r->grace_until))
            state = "expired";
        else if (r->grace_until)
            state = "rotating";
        json_object_set_new(o, "state", json_string(state));
    }
    return o;
}

enum { K_STORE, K_JSON, K_ROLE, K_USER, K_SCOPES, K_EXPIRES, K_DESC, K_LIMIT, K_GRACE, K_AFTER,
       K_LIMIT_N, K_NO_LIMIT, K_END };

static void keys_opts(cli_opt o[K_END + 1])
{
    cli_opt init[K_END + 1] = {
        {"store", 1, NULL, 0},       {"json", 0, NULL, 0},      {"role", 1, NULL, 0},
        {"user", 1, NULL, 0},        {"scopes", 1, NULL, 0},    {"expires", 1, NULL, 0},
        {"description", 1, NULL, 0}, {"limit", 1, NULL, 0},     {"grace", 1, NULL, 0},
        {"after", 1, NULL, 0},       {"page-size", 1, NULL, 0}, {"no-limit", 0, NULL, 0},
        {NULL, 0, NULL, 0},
    };
    memcpy(o, init, sizeof init);
}

/* Parse options, allowing exactly `npos` positional arguments first (an id). */
static int keys_begin(const char *cmd, int argc, char **argv, cli_opt *o, int npos,
                      const char **pos, phg_store **store, phg_keys **keys)
{
    phg_keys_options ko;
    phg_status st;
    int rc;
    keys_opts(o);
    if (npos > 0) {
        if (argc < 2 || strncmp(argv[1], "--", 2) == 0)
            return cli_usage(cmd, "missing the key ID");
        *pos = argv[1];
        argc--;
        argv++;
    }
    if (cli_parse_opts(cmd, argc, argv, o) != CLI_OK)
        return CLI_USAGE;
    rc = cli_open_store(o[K_STORE].set ? o[K_STORE].value : cli_default_store(), 1, store);
    if (rc != CLI_OK)
        return rc;
    phg_keys_options_init(&ko);
    ko.start_poller = 0;
    st = phg_keys_open(*store, &ko, keys);
    if (st != PHG_OK) {
        cli_error("cannot load the keys: %s", phg_strerror(st));
        phg_store_close(*store);
        *store = NULL;
        return CLI_FAIL;
    }
    return CLI_OK;
}

static void keys_end(phg_store *store, phg_keys *keys)
{
    phg_keys_close(keys);
    phg_store_close(store);
}

/* This run's audit writer, attached to the key manager: the library records
 * each create, rotate and revoke (phg_keys_set_audit), with cli:<os user> as
 * the actor. */
static int attach_audit(phg_store *store, phg_keys *keys, const phg_masterkeys *mk,
                        phg_audit **audit)
{
    if (cli_audit_open(store, mk, audit) != CLI_OK)
        return CLI_FAIL;
    phg_keys_set_audit(keys, *audit);
    return CLI_OK;
}

static void detach_audit(phg_keys *keys, phg_audit *audit)
{
    if (keys != NULL)
        phg_keys_set_audit(keys, NULL);
    phg_audit_close(audit);
}

static int id_error(phg_status st, const char *what)
{
    if (st == PHG_ERR_NOT_FOUND)
        cli_error("no key with that ID");
    else if (st == PHG_ERR_STATE)
        cli_error("cannot %s: the key is revoked or already rotated", what);
    else
        cli_error("cannot %s: %s", what, phg_strerror(st));
    return CLI_FAIL;
}

/*
 * Every --limit of argv (already accepted by cli_parse_opts, which keeps only
 * the last) joined with ',' into buf: "--limit 100/1m --limit 5000/1h" is
 * "100/1m,5000/1h"; a comma list in one --limit is kept as it is. The text
 * is then checked as the library checks it (phg_rl_policy_parse), so a bad
 * limit is a usage error before the master key, the store or the audit log
 * are touched. Returns CLI_OK, or CLI_USAGE after saying why.
 */
static int joined_limits(const char *cmd, int argc, char **argv, const cli_opt *o, char *buf,
                         size_t len)
{
    char why[160];
    phg_rl_policy policy;
    size_t used = 0;
    int i;

    buf[0] = '\0';
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i], *eq, *value;
        size_t name_len, vlen;
        const cli_opt *opt;
        if (strncmp(arg, "--", 2) != 0)
            continue;
        arg += 2;
        eq = strchr(arg, '=');
        name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        for (opt = o; opt->name != NULL; opt++) {
            if (strlen(opt->name) == name_len && strncmp(opt->name, arg, name_len) == 0)
                break;
        }
        if (opt->name == NULL || !opt->has_arg)
            continue;
        value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : "");
        if (opt != &o[K_LIMIT])
            continue;
        vlen = strlen(value);
        if (vlen == 0)
            return cli_usage(cmd, "rate limit: --limit needs a value like 100/1m%s",
                             strcmp(cmd, "keys set-limit") == 0 ? " (--no-limit removes it)" : "");
        if (used + (used > 0) + vlen >= len || used + (used > 0) + vlen > PHG_RL_TEXT_MAX)
            return cli_usage(cmd, "rate limit: more than %d bytes of --limit", PHG_RL_TEXT_MAX);
        if (used > 0)
            buf[used++] = ',';
        memcpy(buf + used, value, vlen + 1);
        used += vlen;
    }
    if (used == 0)
        return CLI_OK;
    why[0] = '\0';
    if (!phg_internal_text_ok(buf, 1, PHG_RL_TEXT_MAX) ||
        phg_rl_policy_parse(buf, &policy, why, sizeof why) != PHG_OK)
        return cli_usage(cmd, "%s%s", strncmp(why, "rate limit", 10) == 0 ? "" : "rate limit: ",
                         why[0] ? why : "not a limit, such as 100/1m");
    return CLI_OK;
}

static int keys_create(int argc, char **argv)
{
    cli_opt o[K_END + 1];
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_apikey_spec spec;
    phg_apikey_record rec;
    phg_masterkeys *mk = NULL;
    phg_audit *audit = NULL;
    char key[PHG_APIKEY_LEN + 1], actor[PHG_APIKEY_ACTOR_MAX + 1], err[256];
    char limits[PHG_RL_TEXT_MAX + 1];
    uint32_t scopes = 0;
    phg_role role;
    int64_t expires = 0;
    phg_status st;
    int rc = CLI_FAIL;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate keys create --role admin|user --user ID [--scopes S1,S2]\n"
             "         [--expires 30d|2027-01-01T00:00:00Z] [--description TEXT]\n"
             "         [--limit 100/1m [--limit 5000/1h ...]] [--store URL] [--json]\n\n"
             "Create an API key and print it ONCE: only its SHA-256 is stored. Scopes:\n"
             "phi:encrypt, phi:decrypt, audit:read, keys:admin, webhooks:admin. The key acts\n"
             "for --user. This is how the first admin key is made, before any server runs.\n\n"
             "--limit COUNT/WINDOW gives the key its own rate limit instead of its role's\n"
             "default: at most COUNT requests in any WINDOW (a number and s, m, h or d).\n"
             "Repeat it, or give a comma list, for several windows at once (at most 4):\n"
             "--limit 100/1m --limit 5000/1h. --limit none: the key is not limited.\n"
             "Needs the master key (PHI_MASTER_KEY): the creation is audited.");
        return CLI_OK;
    }
    keys_opts(o);
    if (cli_parse_opts("keys create", argc, argv, o) != CLI_OK)
        return CLI_USAGE;
    if (!o[K_ROLE].set || phg_role_parse(o[K_ROLE].value, &role) != PHG_OK)
        return cli_usage("keys create", "--role must be admin or user");
    if (!o[K_USER].set)
        return cli_usage("keys create", "--user ID is required");
    if (o[K_SCOPES].set && phg_apikey_scopes_parse(o[K_SCOPES].value, &scopes) != PHG_OK)
        return cli_usage("keys create", "unknown scope in --scopes (known: phi:encrypt, "
                                        "phi:decrypt, audit:read, keys:admin, webhooks:admin)");
    if (o[K_EXPIRES].set && !parse_when(o[K_EXPIRES].value, &expires))
        return cli_usage("keys create", "--expires takes a duration (90s, 15m, 24h, 30d) or "
                                        "a time YYYY-MM-DDTHH:MM:SSZ");
    if (o[K_EXPIRES].set && expires <= (int64_t)time(NULL))
        return cli_usage("keys create", "--expires is in the past");
    if (joined_limits("keys create", argc, argv, o, limits, sizeof limits) != CLI_OK)
        return CLI_USAGE;
    /* The master key signs the audit record: without it, no admin action. */
    if (cli_load_masterkeys(NULL, &mk) != CLI_OK)
        return CLI_FAIL;
    if (keys_begin("keys create", argc, argv, o, 0, NULL, &store, &keys) != CLI_OK) {
        phg_phi_masterkeys_free(mk);
        return CLI_FAIL;
    }
    os_actor(actor, sizeof actor);
    memset(&spec, 0, sizeof spec);
    spec.role = role;
    spec.scopes = scopes;
    spec.user_id = o[K_USER].value;
    spec.description = o[K_DESC].value;
    spec.created_by = actor;
    spec.rate_limit = limits[0] ? limits : NULL;
    spec.expires_at = expires;
    err[0] = '\0';
    if (attach_audit(store, keys, mk, &audit) != CLI_OK)
        goto out;
    st = phg_keys_create(keys, &spec, key, &rec, err, sizeof err);
    if (st == PHG_ERR_UNAUDITED) {
        cli_error("the key %s was created but its audit record failed: revoke it, or "
                  "retry when the store is back",
                  rec.id);
        rc = CLI_FAIL;
        goto out;
    }
    if (st != PHG_OK) {
        cli_error("cannot create the key: %s", err[0] ? err : phg_strerror(st));
        rc = st == PHG_ERR_INVALID ? CLI_USAGE : CLI_FAIL;
        goto out;
    }
    if (o[K_JSON].set) {
        json_t *j = record_json(&rec);
        if (j != NULL)
            json_object_set_new(j, "key", json_string(key));
        rc = cli_print_json(j);
    } else {
        rc = printf("%s\n", key) < 0 ? CLI_FAIL : CLI_OK;
        fprintf(stderr, "created key %s (role %s, user %s); the key above is shown once: store "
                        "it now\n",
                rec.id, phg_role_name(rec.role), rec.user_id);
    }
out:
    phg_wipe(key, sizeof key);
    detach_audit(keys, audit);
    keys_end(store, keys);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keys_list(int argc, char **argv)
{
    cli_opt o[K_END + 1];
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_apikey_record *recs = NULL;
    size_t n = 0, i, page = 1000;
    json_t *arr = NULL;
    char after[PHG_APIKEY_ID_MAX + 1] = "";
    phg_status st;
    int rc = CLI_FAIL;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate keys list [--store URL] [--json] [--after ID] [--page-size N]\n\n"
             "List API keys (never their secrets), ordered by ID. Without --page-size every\n"
             "key is listed; with it, one page after --after ID.");
        return CLI_OK;
    }
    if (keys_begin("keys list", argc, argv, o, 0, NULL, &store, &keys) != CLI_OK)
        return CLI_FAIL;
    if (o[K_LIMIT_N].set && (!cli_parse_size(o[K_LIMIT_N].value, &page) || page < 1 ||
                             page > 1000)) {
        rc = cli_usage("keys list", "--page-size must be 1 to 1000");
        goto out;
    }
    if (o[K_AFTER].set)
        snprintf(after, sizeof after, "%s", o[K_AFTER].value);
    if (o[K_JSON].set)
        arr = json_array();
    else
        printf("%-20s %-6s %-14s %-9s %-20s %s\n", "ID", "ROLE", "USER", "STATE", "CREATED",
               "SCOPES");
    for (;;) {
        st = phg_keys_list(keys, after, page, &recs, &n);
        if (st != PHG_OK) {
            cli_error("cannot list keys: %s", phg_strerror(st));
            goto out;
        }
        for (i = 0; i < n; i++) {
            json_t *j = record_json(&recs[i]);
            if (arr != NULL) {
                json_array_append_new(arr, j);
            } else if (j != NULL) {
                printf("%-20s %-6s %-14s %-9s %-20s %s\n", recs[i].id,
                       phg_role_name(recs[i].role), recs[i].user_id,
                       json_string_value(json_object_get(j, "state")),
                       json_string_value(json_object_get(j, "created_at")),
                       json_string_value(json_object_get(j, "scopes")));
                json_decref(j);
            }
        }
        if (n > 0)
            snprintf(after, sizeof after, "%s", recs[n - 1].id);
        free(recs);
        recs = NULL;
        if (n < page || o[K_LIMIT_N].set)
            break;
    }
    rc = arr != NULL ? cli_print_json(json_pack("{s:o}", "keys", arr)) : CLI_OK;
    arr = NULL;
out:
    json_decref(arr);
    free(recs);
    keys_end(store, keys);
    return rc;
}

static int keys_show(int argc, char **argv)
{
    cli_opt o[K_END + 1];
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_apikey_record rec;
    const char *id = NULL;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate keys show ID [--store URL] [--json]\n\nShow one key's record "
             "(never its secret).");
        return CLI_OK;
    }
    rc = keys_begin("keys show", argc, argv, o, 1, &id, &store, &keys);
    if (rc != CLI_OK)
        return rc;
    st = phg_keys_get(keys, id, &rec);
    if (st != PHG_OK) {
        rc = id_error(st, "show the key");
    } else if (o[K_JSON].set) {
        rc = cli_print_json(record_json(&rec));
    } else {
        json_t *j = record_json(&rec);
        const char *name;
        json_t *v;
        json_object_foreach(j, name, v) {
            printf("%-13s %s\n", name, json_is_string(v) ? json_string_value(v) : "-");
        }
        json_decref(j);
        rc = CLI_OK;
    }
    keys_end(store, keys);
    return rc;
}

static int keys_revoke(int argc, char **argv)
{
    cli_opt o[K_END + 1];
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    const char *id = NULL;
    phg_audit *audit = NULL;
    phg_masterkeys *mk = NULL;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate keys revoke ID [--store URL] [--json]\n\n"
             "Revoke a key now. Every phigate instance stops accepting it within a second.");
        return CLI_OK;
    }
    if (cli_load_masterkeys(NULL, &mk) != CLI_OK)
        return CLI_FAIL;
    rc = keys_begin("keys revoke", argc, argv, o, 1, &id, &store, &keys);
    if (rc != CLI_OK) {
        phg_phi_masterkeys_free(mk);
        return rc;
    }
    if (attach_audit(store, keys, mk, &audit) != CLI_OK) {
        keys_end(store, keys);
        phg_phi_masterkeys_free(mk);
        return CLI_FAIL;
    }
    st = phg_keys_revoke(keys, id);
    detach_audit(keys, audit);
    if (st == PHG_ERR_UNAUDITED) {
        cli_error("%s is revoked, but its audit record failed", id);
        rc = CLI_FAIL;
    } else if (st != PHG_OK)
        rc = id_error(st, "revoke");
    else if (o[K_JSON].set)
        rc = cli_print_json(json_pack("{s:s}", "revoked", id));
    else
        rc = printf("revoked %s\n", id) < 0 ? CLI_FAIL : CLI_OK;
    keys_end(store, keys);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keys_set_limit(int argc, char **argv)
{
    cli_opt o[K_END + 1];
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_apikey_record rec;
    const char *id = NULL;
    phg_audit *audit = NULL;
    phg_masterkeys *mk = NULL;
    char limits[PHG_RL_TEXT_MAX + 1], err[256];
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate keys set-limit ID --limit 100/1m [--limit 5000/1h ...] | --no-limit\n"
             "         [--store URL] [--json]\n\n"
             "Set the key's own rate limit, which overrides its role's default: at most COUNT\n"
             "requests in any WINDOW (a number and s, m, h or d). Repeat --limit, or give a\n"
             "comma list, for several windows at once (at most 4). --limit none: the key is\n"
             "not limited. --no-limit removes the key's own limit: its role's default\n"
             "applies again. Every phigate instance applies the change within a second,\n"
             "without a restart. Needs the master key (PHI_MASTER_KEY): the change is\n"
             "audited.");
        return CLI_OK;
    }
    /* Check the arguments before the master key and the store are touched. */
    if (argc < 2 || strncmp(argv[1], "--", 2) == 0)
        return cli_usage("keys set-limit", "missing the key ID");
    keys_opts(o);
    if (cli_parse_opts("keys set-limit", argc - 1, argv + 1, o) != CLI_OK)
        return CLI_USAGE;
    if (o[K_LIMIT].set == o[K_NO_LIMIT].set)
        return cli_usage("keys set-limit", "give --limit COUNT/WINDOW (repeatable) or --no-limit");
    if (joined_limits("keys set-limit", argc - 1, argv + 1, o, limits, sizeof limits) != CLI_OK)
        return CLI_USAGE;
    if (cli_load_masterkeys(NULL, &mk) != CLI_OK)
        return CLI_FAIL;
    rc = keys_begin("keys set-limit", argc, argv, o, 1, &id, &store, &keys);
    if (rc != CLI_OK) {
        phg_phi_masterkeys_free(mk);
        return rc;
    }
    if (attach_audit(store, keys, mk, &audit) != CLI_OK) {
        keys_end(store, keys);
        phg_phi_masterkeys_free(mk);
        return CLI_FAIL;
    }
    err[0] = '\0';
    st = phg_keys_set_limit(keys, id, o[K_NO_LIMIT].set ? NULL : limits, &rec, err, sizeof err);
    detach_audit(keys, audit);
    if (st == PHG_ERR_UNAUDITED) {
        cli_error("the limit of %s is changed, but its audit record failed", rec.id);
        rc = CLI_FAIL;
    } else if (st == PHG_ERR_NOT_FOUND) {
        rc = id_error(st, "set the limit");
    } else if (st == PHG_ERR_STATE) {
        cli_error("cannot set the limit: the key is revoked");
        rc = CLI_FAIL;
    } else if (st == PHG_ERR_INVALID) {
        rc = cli_usage("keys set-limit", "%s", err[0] ? err : phg_strerror(st));
    } else if (st != PHG_OK) {
        rc = id_error(st, "set the limit");
    } else if (o[K_JSON].set) {
        rc = cli_print_json(record_json(&rec));
    } else if (rec.rate_limit[0] != '\0') {
        rc = printf("rate limit of %s: %s\n", rec.id, rec.rate_limit) < 0 ? CLI_FAIL : CLI_OK;
    } else {
        rc = printf("rate limit of %s removed: its role's default applies\n", rec.id) < 0 ? CLI_FAIL
                                                                                          : CLI_OK;
    }
    keys_end(store, keys);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keys_rotate(int argc, char **argv)
{
    cli_opt o[K_END + 1];
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_apikey_record rec;
    char key[PHG_APIKEY_LEN + 1];
    const char *id = NULL;
    int64_t grace = 0;
    int audited;
    phg_audit *audit = NULL;
    phg_masterkeys *mk = NULL;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate keys rotate ID [--grace 24h] [--store URL] [--json]\n\n"
             "Issue a new key with the same role, user, scopes and limits, and print it ONCE.\n"
             "The old key keeps working for --grace (90s, 15m, 24h, 7d; default 0: stops\n"
             "now), then stops.");
        return CLI_OK;
    }
    keys_opts(o);
    if (cli_load_masterkeys(NULL, &mk) != CLI_OK)
        return CLI_FAIL;
    rc = keys_begin("keys rotate", argc, argv, o, 1, &id, &store, &keys);
    if (rc != CLI_OK) {
        phg_phi_masterkeys_free(mk);
        return rc;
    }
    if (o[K_GRACE].set && !parse_duration(o[K_GRACE].value, &grace)) {
        keys_end(store, keys);
        phg_phi_masterkeys_free(mk);
        return cli_usage("keys rotate", "--grace takes a duration: 90s, 15m, 24h, 7d");
    }
    if (attach_audit(store, keys, mk, &audit) != CLI_OK) {
        keys_end(store, keys);
        phg_phi_masterkeys_free(mk);
        return CLI_FAIL;
    }
    st = phg_keys_rotate(keys, id, grace, key, &rec);
    detach_audit(keys, audit);
    audited = st == PHG_ERR_UNAUDITED ? CLI_FAIL : CLI_OK;
    if (st == PHG_ERR_UNAUDITED)
        st = PHG_OK; /* done: the new key must still be shown */
    if (st != PHG_OK) {
        rc = id_error(st, "rotate");
    } else if (o[K_JSON].set) {
        json_t *j = record_json(&rec);
        if (j != NULL) {
            json_object_set_new(j, "key", json_string(key));
            json_object_set_new(j, "previous", json_string(id));
        }
        rc = cli_print_json(j);
    } else {
        rc = printf("%s\n", key) < 0 ? CLI_FAIL : CLI_OK;
        fprintf(stderr, "rotated %s -> %s; the old key stops in %llds; the key above is shown "
                        "once\n",
                id, rec.id, (long long)grace);
    }
    /* The rotation happened: its new key was printed above whatever the
     * audit log said, or it would be lost with the old one expiring. */
    if (st == PHG_OK && audited != CLI_OK) {
        cli_error("the rotation happened (new key %s above) but its audit record failed", rec.id);
        rc = CLI_FAIL;
    }
    phg_wipe(key, sizeof key);
    keys_end(store, keys);
    phg_phi_masterkeys_free(mk);
    return rc;
}

static int keys_verify(int argc, char **argv)
{
    cli_opt o[K_END + 1];
    phg_store *store = NULL;
    phg_keys *keys = NULL;
    phg_identity id;
    phg_apikey_reason reason;
    char *text = NULL;
    size_t len = 0, raw = 0;
    phg_status st;
    int rc;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate keys verify [--store URL] [--json] < KEY\n\n"
             "Read a key from stdin and print the identity it carries, or why it is not\n"
             "valid (malformed, bad_checksum, unknown, revoked, expired). Exit 0 if valid,\n"
             "1 if not.");
        return CLI_OK;
    }
    rc = keys_begin("keys verify", argc, argv, o, 0, NULL, &store, &keys);
    if (rc != CLI_OK)
        return rc;
    rc = CLI_FAIL;
    st = cli_read_all(stdin, 4096, &text, &raw);
    if (st != PHG_OK) {
        cli_error("cannot read the key from standard input");
        goto out;
    }
    len = raw;
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        len--;
    memset(&id, 0, sizeof id);
    st = phg_keys_verify(keys, text, len, &id, &reason);
    if (st != PHG_OK && st != PHG_ERR_AUTH) {
        cli_error("cannot verify: %s", phg_strerror(st));
        goto out;
    }
    if (o[K_JSON].set) {
        char scopes[128];
        json_t *j;
        phg_apikey_scopes_format(id.scopes, scopes, sizeof scopes);
        if (st == PHG_OK)
            j = json_pack("{s:b,s:s,s:s,s:s,s:s}", "valid", 1, "key_id", id.key_id, "user_id",
                          id.user_id, "role", phg_role_name(id.role), "scopes", scopes);
        else
            j = json_pack("{s:b,s:s}", "valid", 0, "reason", phg_apikey_reason_name(reason));
        if (cli_print_json(j) != CLI_OK)
            goto out;
    } else if (st == PHG_OK) {
        char scopes[128];
        phg_apikey_scopes_format(id.scopes, scopes, sizeof scopes);
        printf("valid: key %s, user %s, role %s, scopes %s\n", id.key_id, id.user_id,
               phg_role_name(id.role), scopes[0] ? scopes : "(none)");
    } else {
        printf("invalid: %s\n", phg_apikey_reason_name(reason));
    }
    rc = st == PHG_OK ? CLI_OK : CLI_FAIL;
out:
    cli_free_secret(text, raw);
    keys_end(store, keys);
    return rc;
}

static const char keys_help[] =
    "Usage: phigate keys <command> [options]\n"
    "\n"
    "API keys (format phg_..., docs/formats.md). The store is --store URL, or\n"
    "$PHIGATE_STORE, or sqlite:./var/phigate.db.\n"
    "\n"
    "Commands:\n"
    "  create     create a key and print it once\n"
    "  list       list keys (never secrets)\n"
    "  show       show one key\n"
    "  revoke     revoke a key now\n"
    "  rotate     issue a new key; the old one works for a grace time\n"
    "  set-limit  set or remove a key's own rate limit\n"
    "  verify     check a key read from stdin\n";

int cmd_keys(int argc, char **argv)
{
    static const cli_command table[] = {
        {"create", "", keys_create},       {"list", "", keys_list},
        {"show", "", keys_show},           {"revoke", "", keys_revoke},
        {"set-limit", "", keys_set_limit}, {"rotate", "", keys_rotate},
        {"verify", "", keys_verify},       {NULL, NULL, NULL},
    };
    return cli_dispatch("keys", keys_help, table, argc, argv);
}
