/* ratelimit_redis.c: see include/phigate/ratelimit.h (being written). */
#include "phigate/ratelimit.h"
