/*
 * phigate/phi.h: field-level encryption of protected health information.
 *
 * A keyring holds data keys (DEKs, 32 random bytes each), every one wrapped as
 * a Fernet token under the master key (the KEK). A field is encrypted under the
 * keyring's primary DEK and a caller-chosen context (for example
 * "user=42;field=hrv"): the AES-256-GCM key is HKDF-SHA256(DEK, info =
 * "phigate/phi/v1" 0x00 context), so a ciphertext made for one context cannot
 * be opened under another. The ciphertext text is
 *
 *     phi1.<kid>.<base64url-nopad(nonce(12) || ciphertext || tag(16))>
 *
 * with AAD "phi1.<kid>". The byte-exact formats (ciphertext, wrapped DEK,
 * keyring file) are in docs/formats.md and never change for v1.
 *
 * What this module does not do: it never stores plaintext, never logs, and
 * knows nothing of HTTP or the CLI. Persistence of a keyring is the caller's
 * (a file here; the store in later versions) through the JSON functions.
 *
 * Thread safety: a phg_keyring may be used from many threads at once.
 * Encrypt and decrypt take a shared lock; rotate, destroy and rewrap take it
 * exclusively. The derived-key cache is internal, bounded and thread-safe.
 */
#ifndef PHIGATE_PHI_H
#define PHIGATE_PHI_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/crypto.h"
#include "phigate/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_PHI_DEK_SIZE 32
#define PHG_PHI_NONCE_SIZE 12
#define PHG_PHI_TAG_SIZE 16
#define PHG_PHI_CONTEXT_MIN 1
#define PHG_PHI_CONTEXT_MAX 512
#define PHG_PHI_KID_MAX 32                    /* kid is [a-z0-9]{1,32} */
#define PHG_PHI_PLAINTEXT_MAX (16u << 20)     /* 16 MiB per field */
#define PHG_PHI_MASTER_KEYS_MAX 16            /* master keys given at once */
#define PHG_PHI_MASTER_KEY_FILE_MAX 8192      /* bytes read from PHI_MASTER_KEY_FILE */
#define PHG_PHI_KEYRING_KEYS_MAX 4096         /* data keys in one keyring */
#define PHG_PHI_KEYRING_TEXT_MAX (4u << 20)   /* bytes of keyring JSON */
#define PHG_PHI_CACHE_DEFAULT 4096            /* derived field keys cached */

/*
 * Upper bound of the text length of the ciphertext of pt_len plaintext bytes
 * under any kid (not counting a NUL): 5 ("phi1.") + kid + 1 ("."), then the
 * unpadded base64url of 12 + pt_len + 16 bytes.
 */
#define PHG_PHI_CIPHERTEXT_MAX_LEN(pt_len) \
    (6u + PHG_PHI_KID_MAX + (((size_t)(pt_len) + 28u) * 4u + 2u) / 3u)

/* ---- master keys -------------------------------------------------------- */

typedef struct phg_masterkeys phg_masterkeys;

/*
 * Parse one or more Fernet keys separated by commas (whitespace and newlines
 * around each key are ignored). The first key wraps new DEKs; all of them
 * unwrap. At most PHG_PHI_MASTER_KEYS_MAX keys. On success *out is a new object
 * the caller frees with phg_phi_masterkeys_free(). PHG_ERR_MASTER_KEY if any
 * item is not a Fernet key or the list is empty. The input is not retained.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_phi_masterkeys_parse(const char *text, size_t len,
                                                            phg_masterkeys **out);

/*
 * Read the master keys from the environment: PHI_MASTER_KEY (the key list
 * itself) or PHI_MASTER_KEY_FILE (a path to a file holding it, at most
 * PHG_PHI_MASTER_KEY_FILE_MAX bytes). Exactly one of the two must be set:
 * PHG_ERR_MASTER_KEY if neither or both are, or if the value does not parse;
 * PHG_ERR_IO if the file cannot be read.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_phi_masterkeys_from_env(phg_masterkeys **out);

/* Same as above, for an explicit file path. */
PHG_API PHG_WARN_UNUSED phg_status phg_phi_masterkeys_from_file(const char *path,
                                                                phg_masterkeys **out);

/* Number of keys in the list. */
PHG_API size_t phg_phi_masterkeys_count(const phg_masterkeys *mk);

/* Wipe and free. NULL is a no-op. */
PHG_API void phg_phi_masterkeys_free(phg_masterkeys *mk);

/* ---- keyring ------------------------------------------------------------- */

typedef struct phg_keyring phg_keyring;

typedef enum phg_phi_key_state {
    PHG_PHI_KEY_ACTIVE = 0,       /* the primary: encrypts and decrypts */
    PHG_PHI_KEY_DECRYPT_ONLY = 1, /* opens old data, never encrypts */
    PHG_PHI_KEY_DESTROYED = 2,    /* DEK gone for good (crypto-shredded) */
} phg_phi_key_state;

/* What may be shown of a data key: never the DEK or its wrapped form. */
typedef struct phg_phi_key_info {
    char kid[PHG_PHI_KID_MAX + 1];
    phg_phi_key_state state;
    int64_t created_s; /* Unix seconds */
    int is_primary;
} phg_phi_key_info;

typedef struct phg_keyring_options {
    /* Derived field keys kept ready (key schedule included). 0 disables the
     * cache: every operation then runs HKDF and the AES key setup. */
    size_t cache_entries;
} phg_keyring_options;

/* Fills opts with the defaults (cache_entries = PHG_PHI_CACHE_DEFAULT). */
PHG_API void phg_keyring_options_init(phg_keyring_options *opts);

/*
 * Create a keyring with one new active DEK (the primary), wrapped under the
 * first master key. mk is copied, not retained. opts may be NULL (defaults).
 */
PHG_API PHG_WARN_UNUSED phg_status phg_keyring_create(const phg_masterkeys *mk,
                                                      const phg_keyring_options *opts,
                                                      phg_keyring **out);

/*
 * Parse a keyring from its JSON text (docs/formats.md, "Keyring file") and
 * unwrap every non-destroyed DEK with the master keys. PHG_ERR_KEYRING if the
 * text is not a valid keyring (the message never includes key material),
 * PHG_ERR_TOO_LARGE over PHG_PHI_KEYRING_TEXT_MAX, PHG_ERR_MASTER_KEY if a DEK
 * opens under none of the master keys. If why is not NULL, on PHG_ERR_KEYRING
 * it is set to a static sentence naming the rule that failed (never any
 * content of the text), otherwise to NULL.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_keyring_from_json(const char *text, size_t len,
                                                         const phg_masterkeys *mk,
                                                         const phg_keyring_options *opts,
                                                         phg_keyring **out, const char **why);

/*
 * Serialize to JSON text (pretty-printed, keys in a stable order). On success
 * *out is a NUL-terminated heap string the caller frees with free(); it holds
 * wrapped DEKs only, never a plaintext key.
 */
PHG_API phg_status phg_keyring_to_json(phg_keyring *kr, char **out, size_t *out_len);

/*
 * Load from a file (PHG_ERR_IO if unreadable, then as phg_keyring_from_json).
 * Save atomically: the text goes to a temporary file in the same folder with
 * mode 0600, is fsync'd, then renamed over path, and the folder is fsync'd,
 * so a crash leaves either the old keyring or the new one, never half of one.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_keyring_load_file(const char *path,
                                                         const phg_masterkeys *mk,
                                                         const phg_keyring_options *opts,
                                                         phg_keyring **out, const char **why);
PHG_API PHG_WARN_UNUSED phg_status phg_keyring_save_file(phg_keyring *kr, const char *path);

/* Wipe every DEK and cached key, free. NULL is a no-op. */
PHG_API void phg_keyring_free(phg_keyring *kr);

/*
 * Rotate: a new DEK becomes the primary; the old primary becomes
 * decrypt-only. The new kid is copied into new_kid if it is not NULL.
 * PHG_ERR_TOO_LARGE if the keyring already has PHG_PHI_KEYRING_KEYS_MAX keys.
 */
PHG_API phg_status phg_keyring_rotate(phg_keyring *kr, char new_kid[PHG_PHI_KID_MAX + 1]);

/*
 * Crypto-shred one data key: its DEK and wrapped value are wiped and the key
 * is marked destroyed; every ciphertext under it is unreadable for good.
 * PHG_ERR_NOT_FOUND for an unknown kid, PHG_ERR_STATE for the primary (rotate
 * first) or an already destroyed key.
 */
PHG_API phg_status phg_keyring_destroy(phg_keyring *kr, const char *kid);

/*
 * Re-wrap every DEK under the first key of mk (for example after a master key
 * rotation, with the new key first and the old one still in the list). The
 * keyring's own master keys are replaced by mk. DEKs and ciphertexts do not
 * change. PHG_ERR_MASTER_KEY if mk is empty.
 */
PHG_API phg_status phg_keyring_rewrap(phg_keyring *kr, const phg_masterkeys *mk);

struct phg_audit;

/*
 * Record every rotate, destroy and rewrap of this keyring in `audit` (NULL:
 * stop). Actor: the calling thread's request context (phigate/audit.h);
 * action keyring.rotate / keyring.destroy / keyring.rewrap, resource
 * "keyring", details: kids (never key material). With an audit set, a change
 * whose record cannot be written still happens and the call returns
 * PHG_ERR_UNAUDITED; a refused change is recorded with outcome error.
 */
PHG_API void phg_keyring_set_audit(phg_keyring *kr, struct phg_audit *audit);

/* Number of data keys (all states), and the info of the i-th (0-based). */
PHG_API size_t phg_keyring_count(phg_keyring *kr);
PHG_API phg_status phg_keyring_info(phg_keyring *kr, size_t i, phg_phi_key_info *info);

/* The primary kid, copied into kid. */
PHG_API phg_status phg_keyring_primary(phg_keyring *kr, char kid[PHG_PHI_KID_MAX + 1]);

/* ---- fields --------------------------------------------------------------- */

/*
 * Encrypt (pt, pt_len) under the primary DEK and the context. Writes the
 * ciphertext text (not NUL-terminated) into out and its length into *out_len.
 * out_cap >= PHG_PHI_CIPHERTEXT_MAX_LEN(pt_len) is always enough.
 *
 * PHG_ERR_CONTEXT if context_len is not 1..512, PHG_ERR_TOO_LARGE if pt_len
 * exceeds PHG_PHI_PLAINTEXT_MAX, PHG_ERR_BUFFER_TOO_SMALL.
 *
 * WARNING: the context is authenticated, not secret, and must be rebuilt
 * exactly (byte for byte) to decrypt. Do not put PHI in it.
 */
PHG_API phg_status phg_phi_encrypt(phg_keyring *kr, const char *context, size_t context_len,
                                   const uint8_t *pt, size_t pt_len, char *out, size_t out_cap,
                                   size_t *out_len);

/*
 * Decrypt a ciphertext text made by phg_phi_encrypt under the same context.
 * out_cap >= ct_len is always enough. Returns PHG_OK; PHG_ERR_FORMAT if the text
 * does not start with "phi1."; PHG_ERR_CONTEXT for a bad context length;
 * PHG_ERR_BUFFER_TOO_SMALL; and PHG_ERR_AUTH for every other failure (unknown
 * or destroyed kid, wrong context, bad base64, truncated, tampered). On any
 * failure out is wiped and *out_len is 0.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_phi_decrypt(phg_keyring *kr, const char *context,
                                                   size_t context_len, const char *ct,
                                                   size_t ct_len, uint8_t *out, size_t out_cap,
                                                   size_t *out_len);

/*
 * Decrypt, then encrypt again under the current primary kid (same context).
 * Errors as for decrypt and encrypt. out_cap >= ct_len + PHG_PHI_KID_MAX is
 * always enough. The intermediate plaintext is wiped.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_phi_rewrap(phg_keyring *kr, const char *context,
                                                  size_t context_len, const char *ct,
                                                  size_t ct_len, char *out, size_t out_cap,
                                                  size_t *out_len);

/*
 * The kid of a ciphertext text, without decrypting it (NUL-terminated into
 * kid). PHG_ERR_FORMAT if it is not shaped as phi1.<kid>.<data>.
 */
PHG_API phg_status phg_phi_ciphertext_kid(const char *ct, size_t ct_len,
                                          char kid[PHG_PHI_KID_MAX + 1]);

/*
 * One item of a batch. The caller sets context, in and out (with out_cap);
 * the call sets out_len and status. For encryption `in` is plaintext and
 * `out` receives ciphertext text; for decryption the reverse.
 */
typedef struct phg_phi_item {
    const char *context;
    size_t context_len;
    const uint8_t *in;
    size_t in_len;
    uint8_t *out;
    size_t out_cap;
    size_t out_len;
    phg_status status;
} phg_phi_item;

/*
 * Encrypt or decrypt n items under one lock acquisition. Every item gets its
 * own status; the call returns PHG_OK if all succeeded, PHG_ERR_BATCH if any
 * failed. n may be 0.
 */
PHG_API phg_status phg_phi_encrypt_batch(phg_keyring *kr, phg_phi_item *items, size_t n);
PHG_API PHG_WARN_UNUSED phg_status phg_phi_decrypt_batch(phg_keyring *kr, phg_phi_item *items,
                                                         size_t n);

/* Cache counters, for metrics and tests. */
typedef struct phg_phi_cache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t evictions;
    size_t entries;
    size_t capacity;
} phg_phi_cache_stats;

PHG_API void phg_keyring_cache_stats(phg_keyring *kr, phg_phi_cache_stats *stats);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_PHI_H */
