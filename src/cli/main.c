/*
 * main.c: the phigate binary. One binary, subcommands; each subcommand is a
 * file of src/cli/ that calls only the public API of libphigate.
 */
#include <string.h>

#include "cli.h"

static const char main_help[] =
    "Usage: phigate <command> [options]\n"
    "\n"
    "phigate is a security gateway for health and biometric data APIs.\n"
    "\n"
    "Commands:\n"
    "  serve     run the gateway: authenticate, audit and proxy every request\n"
    "  phi       PHI field encryption: master keys, keyrings, encrypt, decrypt, JSONL migration\n"
    "  keys      API keys: create, list, show, revoke, rotate, verify\n"
    "  migrate   create or upgrade the store's schema (SQLite or PostgreSQL)\n"
    "  audit     the audit log: query, report, verify, archive, prune\n"
    "  webhooks  webhook sources: add, list, show, remove, add-secret, retire-secret,\n"
    "            set-verify-token\n"
    "  bench     benchmarks that print figures (phigate bench phi)\n"
    "  demo      a short demonstration of what is built (what 'make run' starts)\n"
    "  version   print the version\n"
    "  help      this text, or 'phigate help <command>'\n"
    "\n"
    "Every command takes --help. Exit status: 0 success, 1 failure, 2 usage error.\n"
    "Master keys come from PHI_MASTER_KEY or PHI_MASTER_KEY_FILE, never from flags.\n";

static int cmd_version(int argc, char **argv)
{
    int json = 0, i;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            puts("Usage: phigate version [--json]\n\nPrint the version of phigate and of "
                 "OpenSSL it runs on.");
            return CLI_OK;
        }
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else
            return cli_usage("version", "unknown option '%s'", argv[i]);
    }
    if (json)
        return cli_print_json(json_pack("{s:s}", "version", phg_version()));
    printf("phigate %s\n", phg_version());
    return CLI_OK;
}

static const cli_command commands[] = {
    {"serve", "run the gateway", cmd_serve},
    {"phi", "PHI field encryption", cmd_phi},
    {"keys", "API keys", cmd_keys},
    {"migrate", "store schema", cmd_migrate},
    {"audit", "audit log", cmd_audit},
    {"webhooks", "webhook sources", cmd_webhooks},
    {"bench", "benchmarks", cmd_bench},
    {"demo", "demonstration", cmd_demo},
    {"version", "print the version", cmd_version},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "help") == 0) {
        if (argc == 2) {
            fputs(main_help, stdout);
            return CLI_OK;
        }
        /* "phigate help X" is "phigate X --help" */
        char *args[3] = {argv[2], "--help", NULL};
        const cli_command *c;
        for (c = commands; c->name != NULL; c++) {
            if (strcmp(c->name, argv[2]) == 0)
                return c->run(2, args);
        }
        return cli_usage("help", "unknown command '%s'", argv[2]);
    }
    if (argc >= 2 && strcmp(argv[1], "--version") == 0)
        return cmd_version(1, argv);
    return cli_dispatch("", main_help, commands, argc, argv);
}
