/*
 * serve.c: `phigate serve`, the gateway (src/server/). Flags for the common
 * settings; everything else comes from the configuration file and PHIGATE_*
 * (docs/configuration.md).
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gw.h"

static const char serve_help[] =
    "Usage: phigate serve [--config FILE] [--listen HOST:PORT] [--upstream URL]\n"
    "                     [--store URL] [--redis URL] [--threads N]\n"
    "\n"
    "Run the gateway: authenticate every request with its API key, record it in the\n"
    "audit log, proxy it to the upstream, and answer /v1/phi/*, /admin/*, /healthz,\n"
    "/readyz and /metrics. Pending store migrations are applied at start.\n"
    "\n"
    "  --config FILE       an INI file (docs/configuration.md, deploy/phigate.ini)\n"
    "  --listen HOST:PORT  where to listen (default 127.0.0.1:8080; port 0: any free port)\n"
    "  --upstream URL      the API behind phigate, http://host:port[/base]\n"
    "  --store URL         sqlite:PATH or postgres://user@host/db (a password only\n"
    "                      through PHIGATE_STORE or PHIGATE_STORE_FILE)\n"
    "  --redis URL         rate limits shared through Redis, redis://HOST:PORT (a\n"
    "                      single node or a Redis Cluster node); default: in process\n"
    "  --threads N         event loops (default: one per core)\n"
    "\n"
    "Order: flags win over PHIGATE_* environment variables, which win over the file.\n"
    "The master key comes from PHI_MASTER_KEY or PHI_MASTER_KEY_FILE.\n"
    "Signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads keys, routes and limits.\n"
    "Logs are JSON lines on stderr.\n";

int cmd_serve(int argc, char **argv)
{
    gw_flags flags;
    int i;
    memset(&flags, 0, sizeof flags);
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(serve_help, stdout);
            return CLI_OK;
        }
        if (strcmp(a, "--config") == 0)
            slot = &flags.config_file;
        else if (strcmp(a, "--listen") == 0)
            slot = &flags.listen;
        else if (strcmp(a, "--upstream") == 0)
            slot = &flags.upstream;
        else if (strcmp(a, "--store") == 0)
            slot = &flags.store;
        else if (strcmp(a, "--redis") == 0)
            slot = &flags.redis;
        else if (strcmp(a, "--threads") == 0) {
            char *end;
            long v;
            if (i + 1 >= argc)
                return cli_usage("serve", "--threads needs a value");
            v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 1 || v > 256)
                return cli_usage("serve", "--threads: a number from 1 to 256");
            flags.threads = (int)v;
            continue;
        } else
            return cli_usage("serve", "unknown option '%s'", a);
        if (i + 1 >= argc)
            return cli_usage("serve", "%s needs a value", a);
        *slot = argv[++i];
    }
    return gw_serve(&flags, NULL) == 0 ? CLI_OK : CLI_FAIL;
}
