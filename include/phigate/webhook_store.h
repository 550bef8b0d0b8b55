/*
 * phigate/webhook_store.h: webhook sources kept in the store (issue 7): a
 * name, a scheme of phigate/webhook.h, a tolerance, the URL accepted events
 * are delivered to, and the secrets, each kept as a Fernet token of its text
 * under the first master key (as the keyring wraps its data keys), with a
 * fingerprint (phg_webhook_secret_fingerprint) to tell them apart.
 *
 * Every secret is checked by phg_webhook_source_new before it is stored, so
 * a malformed or too-short one is refused with a sentence in err (never the
 * secret). Secrets are numbered from 0 in the order they were added; a
 * retired one stays listed (with its retirement time) but is no longer
 * returned for verification. A source always keeps at least one unretired
 * secret, and at most PHG_WEBHOOK_SECRETS_MAX.
 *
 * A source may also have a VERIFY TOKEN (migration 4): the secret of a
 * provider's subscription handshake, apart from the signing secrets (Oura's
 * `verification_token`, Fitbit's subscriber verification code). Only the
 * schemes oura and fitbit use it, but it is stored for any scheme (so it can
 * be set before the scheme's handshake needs it). It is kept like a secret
 * (a Fernet token under the first master key) and never returned without
 * the master keys.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef PHIGATE_WEBHOOK_STORE_H
#define PHIGATE_WEBHOOK_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"
#include "phigate/phi.h"
#include "phigate/store.h"
#include "phigate/webhook.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_WEBHOOK_SOURCE_NAME_MAX 64 /* [a-z0-9_-]{1,64} */
#define PHG_WEBHOOK_URL_MAX 2048       /* deliver_to: http:// or https:// */
#define PHG_WEBHOOK_STORE_TOLERANCE_MAX 86400
#define PHG_WEBHOOK_VERIFY_TOKEN_MAX 512 /* bytes of a verify token, after trimming */

/* What an add needs. secrets as phg_webhook_source_new takes them (trimmed
 * there and here); the caller wipes its texts. tolerance_s 0: the default
 * (300 s). verify_token (NULL / 0: none): the handshake's verify token,
 * trimmed of surrounding whitespace, then 1 to PHG_WEBHOOK_VERIFY_TOKEN_MAX
 * printable ASCII bytes without spaces (0x21..0x7e); the caller wipes it. */
typedef struct phg_webhook_source_spec {
    const char *name;
    const char *scheme;
    int64_t tolerance_s;
    const char *deliver_to;
    const phg_webhook_secret *secrets;
    size_t n_secrets;
    const char *verify_token;
    size_t verify_token_len;
} phg_webhook_source_spec;

/* One stored secret, without its text. */
typedef struct phg_webhook_secret_info {
    int64_t index;
    char fingerprint[20]; /* "fp:" + 16 hex */
    int64_t not_after;    /* Unix s, 0: none */
    int64_t retired_at;   /* Unix s, 0: not retired */
    int64_t created_at;
} phg_webhook_secret_info;

typedef struct phg_webhook_source_info {
    char name[PHG_WEBHOOK_SOURCE_NAME_MAX + 1];
    char scheme[32];
    int64_t tolerance_s;
    char deliver_to[PHG_WEBHOOK_URL_MAX + 1];
    int64_t created_at, updated_at; /* Unix s */
    /* Every secret, retired ones included, by index (get only; list leaves
     * them NULL / 0). */
    phg_webhook_secret_info *secrets;
    size_t n_secrets;
    /* The decrypted texts of the unretired secrets, by index, ready for
     * phg_webhook_source_new (get with master keys only): the free functions
     * wipe them. active_index[i] is the stored index of active[i]. */
    phg_webhook_secret *active;
    int64_t *active_index;
    size_t n_active;
    /* 1 if the source has a verify token (list and get, with or without
     * master keys). */
    int has_verify_token;
    /* Its decrypted text, NUL-terminated (get with master keys only; NULL /
     * 0 otherwise, or when there is none): the free functions wipe it. */
    char *verify_token;
    size_t verify_token_len;
} phg_webhook_source_info;

/* Check a name ([a-z0-9_-]{1,64}): 1 if valid. */
PHG_API int phg_webhook_source_name_valid(const char *name);

/*
 * Store a new source. PHG_ERR_INVALID (err says which field; never a
 * secret) for a bad name, tolerance (1..86400), deliver_to (http(s)://,
 * printable, at most 2048 bytes), secret or verify token; PHG_ERR_NOT_FOUND
 * for an unknown scheme; PHG_ERR_EXISTS for a name taken; PHG_ERR_MASTER_KEY
 * without a master key; store errors as the store gives them.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_sources_add(phg_store *store,
                                                           const phg_masterkeys *mk,
                                                           const phg_webhook_source_spec *spec,
                                                           char *err, size_t err_len);

/* Every source by name (at most 1000), without secrets; *out freed with
 * phg_webhook_source_infos_free. */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_sources_list(phg_store *store,
                                                            phg_webhook_source_info **out,
                                                            size_t *n);

/*
 * One source with its secrets' metadata; with mk (may be NULL) also the
 * decrypted unretired secrets and verify token (any master key of mk opens
 * them: the first one wraps new ones, so a master-key rotation keeps them
 * readable). PHG_ERR_NOT_FOUND for an unknown name, PHG_ERR_MASTER_KEY if no
 * key of mk opens a secret or the verify token. *out freed with
 * phg_webhook_source_info_free.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_sources_get(phg_store *store,
                                                           const phg_masterkeys *mk,
                                                           const char *name,
                                                           phg_webhook_source_info **out);

/* Remove a source and its secrets. PHG_ERR_NOT_FOUND if there is none. */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_sources_remove(phg_store *store, const char *name);

/*
 * Add a secret (checked against the source's scheme) with an optional
 * not_after (Unix s, 0: none); *index gets its number. PHG_ERR_STATE when
 * the source has PHG_WEBHOOK_SECRETS_MAX unretired secrets already;
 * PHG_ERR_INVALID for a bad secret (err says why); PHG_ERR_NOT_FOUND.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_sources_add_secret(
    phg_store *store, const phg_masterkeys *mk, const char *name, const phg_webhook_secret *secret,
    int64_t *index, char *err, size_t err_len);

/* Retire secret `index` now (a retired one stays retired: PHG_OK).
 * PHG_ERR_NOT_FOUND for an unknown source or index; PHG_ERR_STATE if it is
 * the source's last unretired secret (remove the source instead). */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_sources_retire_secret(phg_store *store,
                                                                     const char *name,
                                                                     int64_t index);

/*
 * Set a source's verify token (see the top of this file), or clear it with
 * token NULL (mk may then be NULL). The token is trimmed of surrounding
 * whitespace, then must be 1 to PHG_WEBHOOK_VERIFY_TOKEN_MAX printable ASCII
 * bytes without spaces: else PHG_ERR_INVALID with a sentence in err (never
 * the token). It is stored as a Fernet token under mk's first key, replacing
 * any previous one; the source's updated_at and version change, so every
 * instance's poller picks it up. PHG_ERR_NOT_FOUND for an unknown source;
 * PHG_ERR_MASTER_KEY when setting without a master key; store errors as the
 * store gives them. The caller wipes its text.
 */
PHG_API PHG_WARN_UNUSED phg_status
phg_webhook_sources_set_verify_token(phg_store *store, const phg_masterkeys *mk, const char *name,
                                     const char *token, size_t len, char *err, size_t err_len);

/* Free what list and get give (each wipes the decrypted texts); NULL: no-op. */
PHG_API void phg_webhook_source_info_free(phg_webhook_source_info *info);
PHG_API void phg_webhook_source_infos_free(phg_webhook_source_info *infos, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_WEBHOOK_STORE_H */
