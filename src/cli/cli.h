/*
 * cli.h: what the subcommands of the phigate binary share: the command
 * table, error reporting (stderr, "phigate: ..."), exit codes, bounded stdin
 * reading, and loading master keys and keyrings with clear messages.
 *
 * Exit codes: 0 success, 1 failure, 2 usage error. Secrets never reach a
 * message.
 */
#ifndef PHG_CLI_H
#define PHG_CLI_H

#include <stdio.h>

#include <jansson.h>

#include "phigate.h"

#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

typedef int (*cli_fn)(int argc, char **argv);

typedef struct cli_command {
    const char *name;
    const char *summary;
    cli_fn run;
} cli_command;

/* Print "phigate: <message>" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Print a usage error and the hint to use --help; returns CLI_USAGE. */
int cli_usage(const char *command, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run the subcommand of `table` named by argv[1]; `group` names the parent
 * ("phi", "phi keyring") for messages and help. */
int cli_dispatch(const char *group, const char *help, const cli_command *table, int argc,
                 char **argv);

/* True if argv has -h or --help before a "--". */
int cli_wants_help(int argc, char **argv);

/* Read all of fp, at most max bytes (PHG_ERR_TOO_LARGE beyond). The buffer is
 * NUL-terminated; free it with cli_free_secret(buf, len). */
phg_status cli_read_all(FILE *fp, size_t max, char **buf, size_t *len);
void cli_free_secret(void *buf, size_t len);

/* Master keys from --master-key-file if given, else the environment.
 * Prints the reason on failure. */
int cli_load_masterkeys(const char *file, phg_masterkeys **out);

/* Load a keyring file; prints the reason on failure. */
int cli_load_keyring(const char *path, const phg_masterkeys *mk, size_t cache_entries,
                     phg_keyring **out);

/* A keyring lives in a file (--keyring) or in the store (--store): exactly
 * one must be given (usage error otherwise). Load and save print why they
 * fail. */
int cli_keyring_where(const char *command, const char *file, const char *store_url);
int cli_keyring_load(const char *file, const char *store_url, const phg_masterkeys *mk,
                     size_t cache_entries, phg_keyring **out);
int cli_keyring_save(phg_keyring *kr, const char *file, const char *store_url);

/* Save atomically; prints the reason on failure. */
int cli_save_keyring(phg_keyring *kr, const char *path);

/* Print a JSON value on stdout, compact, one line; steals the reference. */
int cli_print_json(json_t *value);

/* Format Unix seconds as RFC 3339 UTC into buf (at least 32 bytes). */
void cli_format_time(long long t, char *buf, size_t len);

/* Parse a non-negative decimal with optional K/M/G (binary) suffix. */
int cli_parse_size(const char *s, size_t *out);

/* One long option: "--name value", "--name=value", or a flag "--name". */
typedef struct cli_opt {
    const char *name;
    int has_arg;
    const char *value; /* set by cli_parse_opts; the last one wins */
    int set;
} cli_opt;

/* Parse argv[1..] against opts (ended by a NULL name). "-h"/"--help" are the
 * caller's to check first. Returns CLI_OK or, after printing why, CLI_USAGE.
 * No positional arguments are accepted. */
int cli_parse_opts(const char *command, int argc, char **argv, cli_opt *opts);

/* The option named name (which must exist in opts). */
cli_opt *cli_opt_get(cli_opt *opts, const char *name);

/* Subcommand entry points. */
int cmd_phi(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cli_bench_ratelimit(int argc, char **argv);
int cli_bench_webhook(int argc, char **argv);
int cmd_phi_encrypt_jsonl(int argc, char **argv);
int cmd_phi_decrypt_jsonl(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_keys(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_webhooks(int argc, char **argv);

/* An RFC 3339 UTC time (or a date) as Unix microseconds. */
int cli_parse_time_us(const char *s, int64_t *out);

/* Open this CLI run's audit writer (its own chain, signed with the master
 * key) and make cli:<os user> the actor of the thread. Prints why it fails. */
int cli_audit_open(phg_store *store, const phg_masterkeys *mk, phg_audit **out);

/* Record an administrative action of this CLI run in the store's audit log
 * (actor cli:<os user>, its own chain, signed with the master key). Prints
 * why it fails. */
int cli_audit_admin(phg_store *store, const phg_masterkeys *mk, const char *action,
                    const char *resource, const char *outcome, const char *details_json);

/* The store URL from $PHIGATE_STORE, or PHG_STORE_DEFAULT_URL. */
const char *cli_default_store(void);

/* Open a store (creating the folder of a sqlite: path); with need_schema,
 * refuse a database that is not at this build's schema version. Prints why. */
int cli_open_store(const char *url, int need_schema, phg_store **out);

#endif
