/*
 * phigate/ratelimit.h: per-key rate limits with exact sliding windows, in
 * process (the local engine) or on Redis (one Lua script, one round trip).
 *
 * The promise (docs/formats.md, "Rate limits"): a limit of N per window W
 * means that no interval of length W ever admits more than N requests of a
 * key, and the memory per key does not grow with N. How: each window is cut
 * into PHG_RL_SUBWINDOWS sub-windows of g = ceil(W / PHG_RL_SUBWINDOWS); a
 * request at time t is admitted when the requests admitted in the current
 * sub-window and the PHG_RL_SUBWINDOWS before it (an interval that contains
 * (t - W, t]) number fewer than N. Proof: take any interval (s, s + W] and
 * the last request admitted in it, at t; every earlier request admitted in
 * (s, t] lies in (t - W, t], so was counted, so fewer than N were. The price:
 * the count also covers up to one sub-window before t - W, so a key may be
 * refused although fewer than N were admitted in the last W: it under-admits
 * by at most what it was admitted in one sub-window (W / PHG_RL_SUBWINDOWS).
 * A burst on a fresh key admits exactly N.
 *
 * Several windows per key (100 per minute and 5,000 per hour): a request is
 * admitted only if every window admits it, and then counts in every window.
 *
 * Thread safety: a phg_ratelimit may be used from any number of threads; keys
 * are spread over sharded locks (no global lock).
 */
#ifndef PHIGATE_RATELIMIT_H
#define PHIGATE_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_RL_WINDOWS_MAX 4        /* windows per key */
#define PHG_RL_SUBWINDOWS 10        /* sub-windows per window */
#define PHG_RL_COUNT_MAX 999999999u /* N, per window */
#define PHG_RL_WINDOW_MAX_S 8640000u /* W at most 100 days */
#define PHG_RL_KEY_MAX 128          /* bytes of a rate-limit key (an API key id) */
#define PHG_RL_TEXT_MAX 128         /* "100/1m,5000/1h" */

typedef struct phg_rl_limit {
    uint32_t count;    /* N: 1..PHG_RL_COUNT_MAX */
    uint32_t window_s; /* W: 1..PHG_RL_WINDOW_MAX_S */
} phg_rl_limit;

/* A policy: 1..PHG_RL_WINDOWS_MAX limits with distinct windows, kept
 * ordered by window, shortest first. n == 0 means "no limit". */
typedef struct phg_rl_policy {
    phg_rl_limit limits[PHG_RL_WINDOWS_MAX];
    size_t n;
} phg_rl_policy;

/*
 * Parse "COUNT/WINDOW[,COUNT/WINDOW...]" where WINDOW is an integer followed
 * by s, m, h or d ("100/1m,5000/1h"); also "none" (n = 0). PHG_ERR_INVALID
 * with why in err (a count or window of 0, negative, too large, an unknown
 * unit, two limits with the same window, more than PHG_RL_WINDOWS_MAX, over
 * PHG_RL_TEXT_MAX bytes). The text is the one stored with an API key
 * (phg_apikey_record.rate_limit) and given in configuration.
 */
PHG_API phg_status phg_rl_policy_parse(const char *text, phg_rl_policy *policy, char *err,
                                       size_t err_len);

/* 1 if a policy is one phg_rl_policy_parse could produce (counts and windows
 * in range, windows strictly increasing, at most PHG_RL_WINDOWS_MAX); a
 * policy built by hand must pass it to be used. */
PHG_API int phg_rl_policy_valid(const phg_rl_policy *policy);

/* The canonical text of a policy ("100/1m,5000/1h"; "none"), into buf. */
PHG_API void phg_rl_policy_format(const phg_rl_policy *policy, char *buf, size_t len);

/* The answer for one request. */
typedef struct phg_rl_decision {
    int allowed;            /* 1: admitted (and counted); 0: refused (not counted) */
    uint32_t limit;         /* N of the binding window (the one with the fewest remaining) */
    uint32_t window_s;      /* its W */
    uint32_t remaining;     /* requests it would still admit now, after this one */
    uint32_t reset_s;       /* seconds until it frees a slot (0 when remaining > 0) */
    uint32_t retry_after_s; /* when refused: seconds until a request can be admitted (>= 1) */
} phg_rl_decision;

/* ---- the local engine ------------------------------------------------------------- */

typedef struct phg_ratelimit phg_ratelimit;

typedef struct phg_rl_options {
    size_t max_keys;  /* keys tracked; default 1,000,000 (the least recently used go first) */
} phg_rl_options;

PHG_API void phg_rl_options_init(phg_rl_options *opts);

/* A new local engine; opts may be NULL. Free with phg_rl_free. */
PHG_API PHG_WARN_UNUSED phg_status phg_rl_new(const phg_rl_options *opts, phg_ratelimit **out);

/* NULL is a no-op. */
PHG_API void phg_rl_free(phg_ratelimit *rl);

/*
 * Decide for one request of key (1..PHG_RL_KEY_MAX bytes) under policy at
 * now_ms (milliseconds on any clock that does not go backwards; the caller's
 * choice, the same for every call). Counts it when admitted. A policy with
 * n == 0 admits everything (the decision's limit is 0). Memory: one entry
 * per key, of constant size; entries idle for longer than their longest
 * window are dropped. A key whose policy changes keeps its counts for the
 * windows it still has.
 */
PHG_API phg_status phg_rl_check(phg_ratelimit *rl, const char *key, size_t key_len,
                                const phg_rl_policy *policy, uint64_t now_ms,
                                phg_rl_decision *decision);

/* The same answer without counting anything (the usage of a key). */
PHG_API phg_status phg_rl_peek(phg_ratelimit *rl, const char *key, size_t key_len,
                               const phg_rl_policy *policy, uint64_t now_ms,
                               phg_rl_decision *decision);

/* Forget a key's counts (its next request starts a fresh window). */
PHG_API void phg_rl_reset(phg_ratelimit *rl, const char *key, size_t key_len);

typedef struct phg_rl_stats {
    size_t keys;       /* tracked now */
    size_t bytes;      /* memory of the engine, all included */
    uint64_t evicted;  /* dropped because idle or over max_keys */
} phg_rl_stats;

PHG_API void phg_rl_get_stats(phg_ratelimit *rl, phg_rl_stats *stats);

/* ---- the Redis engine: the script and its protocol ----------------------------------
 *
 * The transport is the caller's (the gateway speaks to Redis asynchronously
 * on its event loops). One Lua script decides atomically, with Redis's own
 * clock, so every gateway sharing a Redis shares one exact count:
 *
 *   EVALSHA <sha> 1 <key> <mode> <n> <count_1> <window_ms_1> ... <count_n> <window_ms_n>
 *
 * key is phg_rl_redis_key() (a hash tag, so that the script works on Redis
 * Cluster: the script touches that one key); mode is "check", "peek" or
 * "reset". The reply is an array of integers that phg_rl_redis_parse turns
 * into a decision. docs/formats.md, "Rate limits", gives the key layout.
 */

/* The script's text (static). */
PHG_API const char *phg_rl_redis_script(void);

/* Its SHA-1 in lowercase hex, as SCRIPT LOAD answers it (static). */
PHG_API const char *phg_rl_redis_script_sha(void);

/* "phigate:rl:{<key>}" into buf; PHG_ERR_INVALID for a bad key,
 * PHG_ERR_BUFFER_TOO_SMALL. */
PHG_API phg_status phg_rl_redis_key(const char *key, size_t key_len, char *buf, size_t len);

/*
 * The script's reply: n integers of the array `values` (as hiredis gives
 * them) into a decision. PHG_ERR_INVALID for a reply of the wrong shape.
 */
PHG_API phg_status phg_rl_redis_parse(const long long *values, size_t n,
                                      phg_rl_decision *decision);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_RATELIMIT_H */
