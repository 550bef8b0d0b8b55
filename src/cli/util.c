/*
 * util.c: helpers shared by the subcommands (see cli.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

void cli_error(const char *fmt, ...)
{
    va_list ap;
    fputs("phigate: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_usage(const char *command, const char *fmt, ...)
{
    va_list ap;
    fputs("phigate: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nRun 'phigate%s%s --help' for usage.\n", *command ? " " : "", command);
    return CLI_USAGE;
}

int cli_wants_help(int argc, char **argv)
{
    int i;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return 0;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    }
    return 0;
}

int cli_dispatch(const char *group, const char *help, const cli_command *table, int argc,
                 char **argv)
{
    const cli_command *c;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    for (c = table; c->name != NULL; c++) {
        if (strcmp(argv[1], c->name) == 0)
            return c->run(argc - 1, argv + 1);
    }
    return cli_usage(group, "unknown command '%s%s%s'", group, *group ? " " : "", argv[1]);
}

phg_status cli_read_all(FILE *fp, size_t max, char **out, size_t *out_len)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    *out = NULL;
    *out_len = 0;
    if (buf == NULL)
        return PHG_ERR_NOMEM;
    for (;;) {
        size_t got;
        if (len == cap) {
            size_t ncap = cap * 2;
            char *grown;
            if (cap > max) {
                cli_free_secret(buf, len);
                return PHG_ERR_TOO_LARGE;
            }
            grown = malloc(ncap + 1);
            if (grown == NULL) {
                cli_free_secret(buf, len);
                return PHG_ERR_NOMEM;
            }
            memcpy(grown, buf, len);
            cli_free_secret(buf, len);
            buf = grown;
            cap = ncap;
        }
        got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(fp)) {
        cli_free_secret(buf, len);
        return PHG_ERR_IO;
    }
    if (len > max) {
        cli_free_secret(buf, len);
        return PHG_ERR_TOO_LARGE;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return PHG_OK;
}

void cli_free_secret(void *buf, size_t len)
{
    if (buf == NULL)
        return;
    phg_wipe(buf, len);
    free(buf);
}

int cli_load_masterkeys(const char *file, phg_masterkeys **out)
{
    phg_status rc;
    const char *source;
    if (file != NULL) {
        rc = phg_phi_masterkeys_from_file(file, out);
        source = "--master-key-file";
    } else {
        const char *v = getenv("PHI_MASTER_KEY"), *f = getenv("PHI_MASTER_KEY_FILE");
        int has_v = v != NULL, has_f = f != NULL;
        if (!has_v && !has_f) {
            cli_error("no master key: set PHI_MASTER_KEY or PHI_MASTER_KEY_FILE "
                      "(make one with 'phigate phi keygen')");
            return CLI_FAIL;
        }
        if (has_v && has_f) {
            cli_error("both PHI_MASTER_KEY and PHI_MASTER_KEY_FILE are set; set only one");
            return CLI_FAIL;
        }
        rc = phg_phi_masterkeys_from_env(out);
        source = has_v ? "PHI_MASTER_KEY" : "PHI_MASTER_KEY_FILE";
    }
    switch (rc) {
    case PHG_OK: return CLI_OK;
    case PHG_ERR_MASTER_KEY:
        cli_error("%s: not a Fernet key (or comma-separated list of them): each key is 44 "
                  "characters of url-safe base64 encoding 32 bytes", source);
        break;
    case PHG_ERR_IO: cli_error("%s: cannot read the file: %s", source, strerror(errno)); break;
    case PHG_ERR_TOO_LARGE: cli_error("%s: the file is larger than %d bytes", source,
                                      PHG_PHI_MASTER_KEY_FILE_MAX); break;
    default: cli_error("%s: %s", source, phg_strerror(rc)); break;
    }
    return CLI_FAIL;
}

int cli_load_keyring(const char *path, const phg_masterkeys *mk, size_t cache_entries,
                     phg_keyring **out)
{
    phg_keyring_options opts;
    const char *why = NULL;
    phg_status rc;
    phg_keyring_options_init(&opts);
    opts.cache_entries = cache_entries;
    errno = 0;
    rc = phg_keyring_load_file(path, mk, &opts, out, &why);
    switch (rc) {
    case PHG_OK: return CLI_OK;
    case PHG_ERR_NOT_FOUND:
        cli_error("keyring %s: no such file (create one with 'phigate phi keyring init')", path);
        break;
    case PHG_ERR_IO:
        cli_error("keyring %s: cannot read: %s", path, errno ? strerror(errno) : "not a regular file");
        break;
    case PHG_ERR_KEYRING:
        cli_error("keyring %s: corrupt: %s", path, why ? why : "invalid");
        break;
    case PHG_ERR_MASTER_KEY:
        cli_error("keyring %s: a data key opens under none of the master keys given "
                  "(wrong PHI_MASTER_KEY?)", path);
        break;
    case PHG_ERR_TOO_LARGE:
        cli_error("keyring %s: larger than %u bytes", path, PHG_PHI_KEYRING_TEXT_MAX);
        break;
    default: cli_error("keyring %s: %s", path, phg_strerror(rc)); break;
    }
    return CLI_FAIL;
}

int cli_save_keyring(phg_keyring *kr, const char *path)
{
    phg_status rc;
    errno = 0;
    rc = phg_keyring_save_file(kr, path);
    if (rc == PHG_OK)
        return CLI_OK;
    if (rc == PHG_ERR_IO)
        cli_error("keyring %s: cannot write: %s (the previous file is unchanged)", path,
                  errno ? strerror(errno) : "I/O error");
    else
        cli_error("keyring %s: %s (the previous file is unchanged)", path, phg_strerror(rc));
    return CLI_FAIL;
}

int cli_print_json(json_t *value)
{
    char *text;
    if (value == NULL) {
        cli_error("out of memory");
        return CLI_FAIL;
    }
    text = json_dumps(value, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    json_decref(value);
    if (text == NULL) {
        cli_error("out of memory");
        return CLI_FAIL;
    }
    puts(text);
    free(text);
    return CLI_OK;
}

void cli_format_time(long long t, char *buf, size_t len)
{
    struct tm tm;
    time_t tt = (time_t)t;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int cli_parse_size(const char *s, size_t *out)
{
    char *end = NULL;
    unsigned long long v;
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return 0;
    if (*end == 'K' || *end == 'k')
        v <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        v <<= 20, end++;
    else if (*end == 'G' || *end == 'g')
        v <<= 30, end++;
    if (*end != '\0')
        return 0;
    *out = (size_t)v;
    return 1;
}

int cli_parse_opts(const char *command, int argc, char **argv, cli_opt *opts)
{
    int i;
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i], *eq;
        size_t name_len;
        cli_opt *o;
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return cli_usage(command, "unexpected argument '%s'", arg);
        arg += 2;
        eq = strchr(arg, '=');
        name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        for (o = opts; o->name != NULL; o++) {
            if (strlen(o->name) == name_len && strncmp(o->name, arg, name_len) == 0)
                break;
        }
        if (o->name == NULL)
            return cli_usage(command, "unknown option '--%.*s'", (int)name_len, arg);
        if (!o->has_arg) {
            if (eq != NULL)
                return cli_usage(command, "option '--%s' takes no value", o->name);
            o->set = 1;
            continue;
        }
        if (eq != NULL) {
            o->value = eq + 1;
        } else {
            if (i + 1 >= argc)
                return cli_usage(command, "option '--%s' needs a value", o->name);
            o->value = argv[++i];
        }
        o->set = 1;
    }
    return CLI_OK;
}

cli_opt *cli_opt_get(cli_opt *opts, const char *name)
{
    for (; opts->name != NULL; opts++) {
        if (strcmp(opts->name, name) == 0)
            return opts;
    }
    abort(); /* a programming error: the command asked for an option it did not declare */
}

/* ---- keyrings in a file or in the store ------------------------------------------------ */

int cli_keyring_where(const char *command, const char *file, const char *store_url)
{
    if ((file == NULL) == (store_url == NULL))
        return cli_usage(command, "give exactly one of --keyring FILE and --store URL");
    if (file != NULL && file[0] == '\0')
        return cli_usage(command, "--keyring needs a file name");
    return CLI_OK;
}

int cli_keyring_load(const char *file, const char *store_url, const phg_masterkeys *mk,
                     size_t cache_entries, phg_keyring **out)
{
    phg_store *store = NULL;
    phg_keyring_options opts;
    char *json = NULL;
    size_t len = 0;
    const char *why = NULL;
    phg_status st;
    int rc;

    if (file != NULL)
        return cli_load_keyring(file, mk, cache_entries, out);
    rc = cli_open_store(store_url, 1, &store);
    if (rc != CLI_OK)
        return rc;
    rc = CLI_FAIL;
    st = phg_store_keyring_get(store, &json, &len);
    if (st == PHG_ERR_NOT_FOUND) {
        cli_error("store %s holds no keyring (create one with 'phigate phi keyring init "
                  "--store URL' or import one)",
                  phg_store_display_url(store));
        goto out;
    }
    if (st != PHG_OK) {
        cli_error("store %s: %s", phg_store_display_url(store), phg_strerror(st));
        goto out;
    }
    phg_keyring_options_init(&opts);
    opts.cache_entries = cache_entries;
    st = phg_keyring_from_json(json, len, mk, &opts, out, &why);
    if (st == PHG_ERR_MASTER_KEY)
        cli_error("the keyring in the store: a data key opens under none of the master keys "
                  "given (wrong PHI_MASTER_KEY?)");
    else if (st != PHG_OK)
        cli_error("the keyring in the store is corrupt: %s", why ? why : phg_strerror(st));
    else
        rc = CLI_OK;
out:
    free(json);
    phg_store_close(store);
    return rc;
}

int cli_keyring_save(phg_keyring *kr, const char *file, const char *store_url)
{
    phg_store *store = NULL;
    char *json = NULL;
    size_t len = 0;
    phg_status st;
    int rc;

    if (file != NULL)
        return cli_save_keyring(kr, file);
    rc = cli_open_store(store_url, 1, &store);
    if (rc != CLI_OK)
        return rc;
    rc = CLI_FAIL;
    st = phg_keyring_to_json(kr, &json, &len);
    if (st == PHG_OK)
        st = phg_store_keyring_put(store, json, len);
    if (st != PHG_OK)
        cli_error("store %s: cannot save the keyring: %s (the stored keyring is unchanged)",
                  phg_store_display_url(store), phg_strerror(st));
    else
        rc = CLI_OK;
    free(json);
    phg_store_close(store);
    return rc;
}
