/* fuzz_config.c: the gateway's configuration file (INI, routes, values). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "gw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static gw_config cfg;
    gw_flags flags;
    char err[512];
    FILE *fp;
    if (path[0] == '\0') {
        int fd;
        snprintf(path, sizeof path, "/tmp/phigate-fuzz-config-XXXXXX");
        fd = mkstemp(path);
        if (fd < 0)
            abort();
        close(fd);
    }
    fp = fopen(path, "wb");
    if (fp == NULL || fwrite(data, 1, size, fp) != size || fclose(fp) != 0)
        abort();
    memset(&flags, 0, sizeof flags);
    flags.config_file = path;
    flags.store = "sqlite:/nonexistent/fuzz.db"; /* only parsed, never opened */
    err[0] = '\0';
    if (gw_config_load(&cfg, &flags, err, sizeof err) == 0) {
        /* what loads renders, and routes match without surprises */
        json_t *j = gw_config_json(&cfg);
        char *text;
        if (j == NULL)
            abort();
        text = json_dumps(j, JSON_COMPACT);
        if (text == NULL)
            abort();
        free(text);
        json_decref(j);
        (void)gw_route_match(&cfg, "GET", "/v1/readings");
        (void)gw_route_match(&cfg, "POST", "/");
    } else if (err[0] == '\0') {
        abort(); /* every refusal says why */
    }
    return 0;
}
