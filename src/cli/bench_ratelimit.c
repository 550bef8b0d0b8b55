/* bench_ratelimit.c: phigate bench ratelimit (being written). */
#include "cli.h"
