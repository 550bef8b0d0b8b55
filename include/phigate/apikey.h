/*
 * phigate/apikey.h: API keys: the key format, create / verify / revoke /
 * rotate / expire, roles and scopes, and the in-memory verification index.
 *
 * Key format (docs/formats.md "API key"):
 *
 *   phg_ + 43 base62 characters (32 random bytes) + 6 base62 characters of the
 *   CRC32 of the preceding 47 characters
 *
 * The checksum lets a malformed key be rejected before any lookup and lets
 * secret scanners recognise leaked keys. Only SHA-256(key) is stored; its first
 * 8 bytes are the lookup index, the full hash is compared in constant time.
 * The key itself is shown once, at creation, and never stored or logged.
 *
 * Thread safety: phg_keys may be verified from many threads at once while
 * another thread (or another process, through the store) changes keys.
 */
#ifndef PHIGATE_APIKEY_H
#define PHIGATE_APIKEY_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"
#include "phigate/store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_APIKEY_LEN 53          /* "phg_" + 43 + 6 */
#define PHG_APIKEY_ID_MAX 32       /* "ak_" + 16 [a-z0-9] */
#define PHG_APIKEY_USER_MAX 128    /* user id the key acts for */
#define PHG_APIKEY_DESC_MAX 256
#define PHG_APIKEY_ACTOR_MAX 128   /* who created it ("cli:root", a key id) */
#define PHG_APIKEY_LIMIT_MAX 128   /* rate-limit override text, e.g. "100/1m,5000/1h" */

typedef enum phg_role {
    PHG_ROLE_USER = 0,
    PHG_ROLE_ADMIN = 1,
} phg_role;

/* Scopes, a bit set. Names: "phi:encrypt", "phi:decrypt", "audit:read",
 * "keys:admin", "webhooks:admin". */
#define PHG_SCOPE_PHI_ENCRYPT (1u << 0)
#define PHG_SCOPE_PHI_DECRYPT (1u << 1)
#define PHG_SCOPE_AUDIT_READ (1u << 2)
#define PHG_SCOPE_KEYS_ADMIN (1u << 3)
#define PHG_SCOPE_WEBHOOKS_ADMIN (1u << 4)
#define PHG_SCOPE_ALL 0x1fu

/* Everything stored about a key. Never holds the key itself. */
typedef struct phg_apikey_record {
    char id[PHG_APIKEY_ID_MAX + 1];
    uint8_t hash[32];          /* SHA-256 of the key text */
    int64_t index;             /* first 8 bytes of hash, big-endian, as int64 */
    phg_role role;
    uint32_t scopes;
    char user_id[PHG_APIKEY_USER_MAX + 1];
    char description[PHG_APIKEY_DESC_MAX + 1];
    char created_by[PHG_APIKEY_ACTOR_MAX + 1];
    char rate_limit[PHG_APIKEY_LIMIT_MAX + 1]; /* "" when none */
    char replaced_by[PHG_APIKEY_ID_MAX + 1];   /* "" unless rotated */
    int64_t created_at;        /* Unix seconds */
    int64_t expires_at;        /* 0: never */
    int64_t revoked_at;        /* 0: not revoked */
    int64_t grace_until;       /* rotated: valid until then; 0: not rotated */
    int64_t last_used_at;      /* 0: never; written in batches */
    int64_t version;           /* store change counter at the last change */
} phg_apikey_record;

/* Why a key failed verification: for the audit log, never for the client,
 * who is only told "invalid API key". Numbers are stable. */
typedef enum phg_apikey_reason {
    PHG_APIKEY_VALID = 0,
    PHG_APIKEY_MALFORMED = 1, /* wrong length, prefix or characters */
    PHG_APIKEY_CHECKSUM = 2,  /* well-formed, checksum wrong */
    PHG_APIKEY_UNKNOWN = 3,
    PHG_APIKEY_REVOKED = 4,
    PHG_APIKEY_EXPIRED = 5,   /* past expires_at, or past its rotation grace */
} phg_apikey_reason;

PHG_API const char *phg_apikey_reason_name(phg_apikey_reason reason);

/* ---- the key text ------------------------------------------------------------ */

/*
 * A new random key into key (PHG_APIKEY_LEN characters and a NUL). The caller
 * shows it once and wipes it.
 */
PHG_API phg_status phg_apikey_generate(char key[PHG_APIKEY_LEN + 1]);

/* PHG_APIKEY_VALID if the text has the key shape and checksum, or why not.
 * Needs no store; costs no hashing beyond the CRC32. */
PHG_API phg_apikey_reason phg_apikey_check_format(const char *key, size_t len);

/* Scope names <-> bits. parse takes a comma- or space-separated list;
 * PHG_ERR_INVALID names nothing about secrets. format writes a space-separated
 * list into buf (NUL-terminated). */
PHG_API phg_status phg_apikey_scopes_parse(const char *text, uint32_t *scopes);
PHG_API void phg_apikey_scopes_format(uint32_t scopes, char *buf, size_t len);
PHG_API const char *phg_role_name(phg_role role);
PHG_API phg_status phg_role_parse(const char *text, phg_role *role);

/* ---- the key manager --------------------------------------------------------- */

typedef struct phg_keys phg_keys;

typedef struct phg_keys_options {
    int poll_interval_ms;       /* change-counter polling; default 250 (changes seen < 1 s) */
    size_t negative_cache;      /* unknown-key hashes remembered; default 65536 */
    int negative_ttl_ms;        /* how long; default 1000 */
    int touch_interval_ms;      /* last-used flush period; default 10000 */
    int start_poller;           /* 1: a background thread polls and flushes (default 1) */
} phg_keys_options;

PHG_API void phg_keys_options_init(phg_keys_options *opts);

/*
 * Load every active key of the store into memory and (unless disabled) start
 * the poller. The store must outlive the manager. opts may be NULL.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_keys_open(phg_store *store, const phg_keys_options *opts,
                                                 phg_keys **out);

/* Stop the poller, flush last-used times, free. NULL is a no-op. */
PHG_API void phg_keys_close(phg_keys *keys);

struct phg_audit;

/*
 * Record every create, rotate, revoke and limit change made through `keys` in
 * `audit` (NULL: stop recording). The record's actor is the calling thread's
 * request context (phigate/audit.h); action keys.create / keys.rotate /
 * keys.revoke / keys.set_limit, resource "key:<id>", outcome success or
 * error, details: the key's id, role, user and scopes (never the key); for
 * keys.set_limit the id and the old and new limit texts. Set it before the manager is shared.
 * With an audit set, a change whose record cannot be written still happens,
 * and the call returns PHG_ERR_UNAUDITED (outputs filled) so that the caller
 * can say so; an error of the change itself is recorded with outcome error.
 */
PHG_API void phg_keys_set_audit(phg_keys *keys, struct phg_audit *audit);

/* What a verified key may do. */
typedef struct phg_identity {
    char key_id[PHG_APIKEY_ID_MAX + 1];
    char user_id[PHG_APIKEY_USER_MAX + 1];
    phg_role role;
    uint32_t scopes;
    char rate_limit[PHG_APIKEY_LIMIT_MAX + 1];
} phg_identity;

/*
 * Verify a presented key. O(1): format and checksum, SHA-256, the index, a
 * constant-time compare of the full hash, then state and times. Returns
 * PHG_OK with *reason PHG_APIKEY_VALID and *id filled, or PHG_ERR_AUTH with
 * the reason. Other codes only for internal failures. A key unknown to the
 * index is looked up in the store once (a key created elsewhere within the
 * last poll interval) and then remembered as unknown for negative_ttl_ms.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_keys_verify(phg_keys *keys, const char *key, size_t len,
                                                   phg_identity *id, phg_apikey_reason *reason);

/*
 * phg_keys_verify without the store: the index and the negative cache only,
 * so it never blocks (for an event loop). When the key is unknown to both,
 * returns PHG_ERR_AUTH with *reason PHG_APIKEY_UNKNOWN and *need_store 1:
 * the caller then calls phg_keys_verify where blocking is allowed (a key
 * created on another instance within the last poll interval is found there).
 */
PHG_API PHG_WARN_UNUSED phg_status phg_keys_verify_cached(phg_keys *keys, const char *key,
                                                          size_t len, phg_identity *id,
                                                          phg_apikey_reason *reason,
                                                          int *need_store);

/* Parameters of a new key. */
typedef struct phg_apikey_spec {
    phg_role role;
    uint32_t scopes;
    const char *user_id;      /* required, 1..128 bytes */
    const char *description;  /* may be NULL */
    const char *created_by;   /* required */
    const char *rate_limit;   /* may be NULL; see phg_keys_set_limit */
    int64_t expires_at;       /* 0: never; must be in the future */
} phg_apikey_spec;

/*
 * Create a key: the text goes to key (show it once), the stored record to
 * *rec (may be NULL). PHG_ERR_INVALID for a bad spec (err says which field;
 * a rate limit is checked as phg_keys_set_limit checks it, and stored in the
 * same canonical form).
 */
PHG_API phg_status phg_keys_create(phg_keys *keys, const phg_apikey_spec *spec,
                                   char key[PHG_APIKEY_LEN + 1], phg_apikey_record *rec,
                                   char *err, size_t err_len);

/* Revoke now. PHG_ERR_NOT_FOUND for an unknown id; revoking twice is OK. */
PHG_API phg_status phg_keys_revoke(phg_keys *keys, const char *id);

/*
 * Set a key's own rate limit, which overrides its role's default: a policy
 * text of phigate/ratelimit.h ("100/1m,5000/1h"; "none": the key is not
 * limited at all), checked with phg_rl_policy_parse and stored in its
 * canonical form (phg_rl_policy_format). NULL or "" removes the override,
 * so that the role's default applies again. The change is stored with a new
 * version of the key, so every phg_keys on the store (every instance) gives
 * the new limit in phg_identity.rate_limit within a poll interval; this one
 * at once. Setting the limit a key already has stores nothing.
 *
 * *rec (may be NULL) gets the key's record after the change. Returns PHG_OK;
 * PHG_ERR_INVALID for a limit that does not parse (err says why, e.g. "rate
 * limit: a window of 0"); PHG_ERR_NOT_FOUND for an unknown id; PHG_ERR_STATE
 * for a revoked key; PHG_ERR_UNAUDITED (the change is made, *rec filled) as
 * for phg_keys_create. err (may be NULL) also says why for the other errors.
 */
PHG_API phg_status phg_keys_set_limit(phg_keys *keys, const char *id, const char *rate_limit,
                                      phg_apikey_record *rec, char *err, size_t err_len);

/*
 * Rotate: a new key with the same role, scopes, user and limits; the old one
 * keeps working for grace_s seconds (0: stops now), then stops.
 * PHG_ERR_NOT_FOUND, PHG_ERR_STATE for a revoked or already rotated key.
 */
PHG_API phg_status phg_keys_rotate(phg_keys *keys, const char *id, int64_t grace_s,
                                   char key[PHG_APIKEY_LEN + 1], phg_apikey_record *rec);

/* Read one key's record from the store. */
PHG_API phg_status phg_keys_get(phg_keys *keys, const char *id, phg_apikey_record *rec);

/*
 * A page of keys ordered by id, after `after_id` ("" for the first page),
 * at most limit (1..1000). *out is a heap array the caller frees with free().
 */
PHG_API phg_status phg_keys_list(phg_keys *keys, const char *after_id, size_t limit,
                                 phg_apikey_record **out, size_t *n);

/* Re-read changes from the store now (what the poller does). */
PHG_API phg_status phg_keys_refresh(phg_keys *keys);

/* Write pending last-used times now. */
PHG_API phg_status phg_keys_flush(phg_keys *keys);

typedef struct phg_keys_stats {
    size_t indexed;        /* keys in the index */
    size_t index_bytes;    /* memory of the index, all included */
    uint64_t store_lookups, negative_hits;
} phg_keys_stats;

PHG_API void phg_keys_get_stats(phg_keys *keys, phg_keys_stats *stats);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_APIKEY_H */
