/* redis_rl.c: see gw.h (being written). */
#include "gw.h"
