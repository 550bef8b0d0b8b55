/*
 * phigate/webhook.h: verifying inbound webhooks on their raw bytes, for the
 * Standard Webhooks scheme (Svix), Stripe's scheme and the wearable vendors
 * (Oura, WHOOP, Fitbit, Polar AccessLink, Suunto), Google Health API's
 * ECDSA P-256 scheme (a Tink public keyset and the registered Authorization
 * value), plus a constant-time path token for vendors that do not sign
 * (Garmin, Withings); and a signing helper for Standard Webhooks (phigate's
 * own outbound webhooks, and tests).
 *
 * What each scheme signs, byte for byte, the header grammar phigate accepts,
 * the secret formats and the timestamp windows: docs/formats.md, section 17.
 * Where the schemes come from: ../shared/research/webhooks.md.
 *
 * The model: a source (phg_webhook_source) is one scheme, 1..16 secrets
 * (each with an optional not_after) and limits. phg_webhook_verify takes the
 * request's headers exactly as received, as (name, value) pairs in any order
 * and case, and the raw body, and says yes or no with a stable reason, the
 * message id to remember against replays, the signed timestamp and which
 * secret matched. It never parses the body.
 *
 * Not here: replay memory (the caller keeps message ids for twice the
 * tolerance), subscription handshakes, HTTP, configuration files, and
 * storing secrets (the caller encrypts them at rest), and deciding when to
 * fetch Google's keyset again (the caller does, on PHG_WH_UNKNOWN_KEY).
 *
 * Thread safety: a source is immutable once made, but for one thing: the
 * keyset of a google-health source, which phg_webhook_source_set_keyset may
 * replace while other threads verify (a mutex guards the pointer; each
 * verification holds a reference to the keyset it started with). Any number
 * of threads may verify with one source at once. Free it only when no
 * verification is running. A keyset is immutable and reference-counted.
 */
#ifndef PHIGATE_WEBHOOK_H
#define PHIGATE_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_WEBHOOK_SECRETS_MAX 16        /* secrets per source */
#define PHG_WEBHOOK_SECRET_TEXT_MAX 512   /* bytes of a secret's text, after trimming */
#define PHG_WEBHOOK_ID_MAX 256            /* bytes of a message id (webhook-id) */
#define PHG_WEBHOOK_TOLERANCE_DEFAULT 300 /* seconds */
#define PHG_WEBHOOK_TOLERANCE_MAX 604800  /* seconds (7 days) */
#define PHG_WEBHOOK_NO_WINDOW (-1)        /* tolerance_s: do not check the timestamp */
#define PHG_WEBHOOK_BODY_DEFAULT (1u << 20)
#define PHG_WEBHOOK_BODY_MAX (64u << 20)
#define PHG_WEBHOOK_HEADER_DEFAULT 4096 /* bytes of one header value */
#define PHG_WEBHOOK_HEADER_MAX 65536
#define PHG_WEBHOOK_SIGNATURES_DEFAULT 16 /* entries of a signature list */
#define PHG_WEBHOOK_SIGNATURES_MAX 64
#define PHG_WEBHOOK_HEADERS_MAX 256 /* (name, value) pairs given to verify */

/* Signature schemes. The numbers are stable (stored with a source). */
typedef enum phg_webhook_scheme {
    PHG_WEBHOOK_STANDARD = 0,      /* "standard-webhooks": webhook-* / svix-* headers */
    PHG_WEBHOOK_STRIPE = 1,        /* "stripe": Stripe-Signature t=,v1= */
    PHG_WEBHOOK_OURA = 2,          /* "oura" */
    PHG_WEBHOOK_WHOOP = 3,         /* "whoop": millisecond timestamps */
    PHG_WEBHOOK_FITBIT = 4,        /* "fitbit": legacy Web API, HMAC-SHA1 */
    PHG_WEBHOOK_POLAR = 5,         /* "polar": Polar AccessLink (not polar.sh) */
    PHG_WEBHOOK_SUUNTO = 6,        /* "suunto" */
    PHG_WEBHOOK_UNSIGNED = 7,      /* "unsigned": a secret path token (Garmin, Withings) */
    PHG_WEBHOOK_GOOGLE_HEALTH = 8, /* "google-health": Google Health API, ECDSA P-256 */
} phg_webhook_scheme;

/* The scheme's configuration name ("standard-webhooks", "stripe", ...);
 * "unknown" for a value outside the enum. Static, never NULL. */
PHG_API const char *phg_webhook_scheme_name(phg_webhook_scheme scheme);

/* The scheme named name (exact, lowercase). PHG_ERR_NOT_FOUND for an unknown
 * name. */
PHG_API phg_status phg_webhook_scheme_parse(const char *name, phg_webhook_scheme *scheme);

/*
 * Why a webhook was refused: for the audit log and the gateway's answer.
 * The numbers are stable and never reused. None of them reveals which
 * secret was tried or how close a signature came.
 */
typedef enum phg_webhook_reason {
    PHG_WH_OK = 0,                   /* verified */
    PHG_WH_NO_SIGNATURE = 1,         /* no signature header, or no entry of a version checked */
    PHG_WH_BAD_SIGNATURE = 2,        /* well-formed, but no signature matches any secret */
    PHG_WH_TIMESTAMP_OUTSIDE = 3,    /* signed timestamp outside now +- tolerance */
    PHG_WH_MALFORMED_HEADER = 4,     /* a header this scheme reads breaks its grammar */
    PHG_WH_REPEATED_HEADER = 5,      /* a header this scheme reads appears twice */
    PHG_WH_TOO_LARGE = 6,            /* body over the source's max_body (checked first) */
    PHG_WH_NO_SECRET = 7,            /* every secret of the source is past its not_after */
    PHG_WH_MISSING_HEADER = 8,       /* the id or timestamp header is absent */
    PHG_WH_HEADER_TOO_LONG = 9,      /* a header this scheme reads is over max_header */
    PHG_WH_TOO_MANY_SIGNATURES = 10, /* more entries than max_signatures */
    PHG_WH_BAD_TOKEN = 11,           /* unsigned scheme: the path token matches no secret */
    PHG_WH_WRONG_SCHEME = 12,        /* verify on an unsigned source, or the reverse */
    PHG_WH_BAD_AUTHORIZATION = 13,   /* google-health: Authorization absent or not registered */
    PHG_WH_UNKNOWN_KEY = 14,         /* google-health: no keyset, or its key id is not in it */
} phg_webhook_reason;

/* A stable snake_case name for a reason ("ok", "bad_signature", ...); "unknown"
 * for a value outside the enum. Static, never NULL, safe to log. */
PHG_API const char *phg_webhook_reason_name(phg_webhook_reason reason);

/* One secret as configured. text is trimmed of surrounding whitespace
 * (spaces, tabs, CR, LF) by phg_webhook_source_new; see docs/formats.md 17.2
 * for the forms each scheme accepts. For google-health a secret is a whole
 * accepted Authorization value, scheme included ("Bearer abc..."): at least
 * 16 bytes, printable ASCII, single spaces allowed inside. */
typedef struct phg_webhook_secret {
    const char *text;
    size_t len;
    int64_t not_after; /* Unix seconds; the secret verifies up to and including it. 0: no end */
} phg_webhook_secret;

typedef struct phg_webhook_options {
    int64_t tolerance_s; /* window, both ways, inclusive: default 300; 1..PHG_WEBHOOK_TOLERANCE_MAX,
                          * or PHG_WEBHOOK_NO_WINDOW (see WARNING at phg_webhook_verify) */
    size_t max_body;     /* default 1 MiB; 1..PHG_WEBHOOK_BODY_MAX */
    size_t max_header;   /* default 4096; 64..PHG_WEBHOOK_HEADER_MAX */
    size_t max_signatures; /* default 16; 1..PHG_WEBHOOK_SIGNATURES_MAX */
} phg_webhook_options;

/* The defaults above into opts. */
PHG_API void phg_webhook_options_init(phg_webhook_options *opts);

typedef struct phg_webhook_source phg_webhook_source;

/*
 * Make a source of `scheme` (a name of phg_webhook_scheme_name) with n
 * secrets (1..PHG_WEBHOOK_SECRETS_MAX), checked and decoded now: a secret
 * that is empty, too short, too long, not of its scheme's form (bad base64,
 * non-canonical base64, a whsk_ signing key given to a verifier, inner
 * whitespace or control characters) refuses the whole source with
 * PHG_ERR_INVALID and a sentence in err ("secret 2: whsec_ key decodes to
 * 16 bytes, at least 24 are needed"), never the secret's text. An unknown
 * scheme is PHG_ERR_NOT_FOUND; options out of range PHG_ERR_INVALID.
 * opts may be NULL (the defaults). err (may be NULL) gets a NUL-terminated
 * sentence on failure.
 *
 * The source keeps its own copies of the keys (the caller wipes its texts),
 * and ready-keyed HMAC contexts so that verification does not rebuild the
 * key schedule. *out is freed with phg_webhook_source_free.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_source_new(const char *scheme,
                                                          const phg_webhook_secret *secrets,
                                                          size_t n, const phg_webhook_options *opts,
                                                          phg_webhook_source **out, char *err,
                                                          size_t err_len);

/* Wipe every key and key schedule, free. NULL is a no-op. */
PHG_API void phg_webhook_source_free(phg_webhook_source *src);

/* The scheme of a source. */
PHG_API phg_webhook_scheme phg_webhook_source_scheme(const phg_webhook_source *src);

/*
 * A short fingerprint of secret i (0..n-1) for logs: "fp:" + the first 8
 * bytes of SHA-256("phigate webhook secret" || key) in hex (19 characters
 * and a NUL into buf). Lets an operator tell which configured secret is
 * which without revealing it. PHG_ERR_INVALID for i out of range.
 */
PHG_API phg_status phg_webhook_secret_fingerprint(const phg_webhook_source *src, size_t i,
                                                  char buf[20]);

/* One request header exactly as received: name in any case. */
typedef struct phg_webhook_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} phg_webhook_header;

#define PHG_WEBHOOK_MSG_ID_MAX 256

/* The outcome of a verification. Filled on every return of verify. */
typedef struct phg_webhook_result {
    phg_webhook_reason reason; /* PHG_WH_OK when verified */
    /*
     * The key for replay memory, NUL-terminated, "" when refused:
     *  - standard-webhooks: the webhook-id (svix-id) value;
     *  - every other HMAC scheme: the lowercase hex of the matching
     *    signature's bytes (whatever case or encoding the sender used);
     *  - unsigned and google-health: the lowercase hex SHA-256 of the body
     *    (an ECDSA signature can be re-made for the same body, and (r, s)
     *    can be turned into (r, n - s): it cannot be the replay key).
     * msg_id_is_signature says which of the last two kinds it is.
     */
    char msg_id[PHG_WEBHOOK_MSG_ID_MAX + 1];
    int msg_id_is_signature;
    int has_timestamp;   /* 1 when the scheme signs a timestamp and one was read (never
                          * for fitbit, polar, suunto, google-health) */
    int64_t timestamp;   /* as sent, in the scheme's unit (ms for WHOOP) */
    int64_t timestamp_s; /* the same in Unix seconds (floor) */
    int secret_index;    /* index of the matching secret in the source, -1 if none
                          * (google-health: the matching Authorization value) */
    int authenticated;   /* 1: signature verified; 0: unsigned scheme (origin unauthenticated) */
} phg_webhook_result;

/*
 * Verify a webhook for a signed scheme. headers: n_headers (0..256) pairs
 * exactly as received; the function finds the ones its scheme reads by name,
 * case-insensitively, and refuses one that appears twice. body: the raw
 * request bytes (NULL allowed when body_len is 0). now_ms: the current Unix
 * time in milliseconds (seconds-based schemes use now_ms / 1000, floor).
 *
 * Order of checks: body size (PHG_WH_TOO_LARGE, before any MAC); headers
 * present, not repeated, not over max_header, well-formed; a secret still
 * valid at now; the timestamp window; then the signatures. A timestamp out
 * of the window is refused before any MAC is computed: this reveals only
 * what the header already says.
 *
 * Returns PHG_OK (out->reason PHG_WH_OK, out filled) or PHG_ERR_AUTH (out->
 * reason says why, msg_id ""); PHG_ERR_NOMEM or PHG_ERR_INTERNAL for a
 * failure of this machine, never for hostile input. An unsigned source
 * gives PHG_ERR_AUTH with PHG_WH_WRONG_SCHEME (use phg_webhook_verify_token).
 *
 * google-health: the Authorization header must equal one valid secret
 * (PHG_WH_BAD_AUTHORIZATION, also when absent), then the signature header
 * (GOOGLE-HEALTH-API-SIGNATURE, or the older X-HEALTHAPI-SIGNATURE; both at
 * once is PHG_WH_REPEATED_HEADER) is checked with the source's keyset:
 * PHG_WH_UNKNOWN_KEY when the source has no keyset or the signature names a
 * key id the keyset lacks. On that reason the caller may load the keyset
 * again (Google rotates it), set it, and verify once more.
 *
 * WARNING: PHG_OK means the bytes came from a holder of a secret, not that
 * they are new: the caller must still refuse a msg_id it saw within twice the
 * tolerance (or, with PHG_WEBHOOK_NO_WINDOW, forever). Fitbit, Polar,
 * Suunto and Google Health sign no timestamp at all: their replays are
 * stopped only by that memory.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_verify(const phg_webhook_source *src,
                                                      const phg_webhook_header *headers,
                                                      size_t n_headers, const uint8_t *body,
                                                      size_t body_len, int64_t now_ms,
                                                      phg_webhook_result *out);

/*
 * The unsigned scheme: compare a path token (the secret part of the URL the
 * vendor calls) with every secret of the source still valid at now_ms, in
 * constant time (both sides are hashed with SHA-256 first, so neither the
 * length nor the content of a secret leaks). Checks the body size first.
 * PHG_OK with out->authenticated 0 (the token proves the URL was known, not
 * who sent the body), msg_id the hex SHA-256 of the body and secret_index
 * set; PHG_ERR_AUTH with PHG_WH_BAD_TOKEN, PHG_WH_TOO_LARGE, PHG_WH_NO_SECRET,
 * or PHG_WH_WRONG_SCHEME for a source of a signed scheme.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_verify_token(const phg_webhook_source *src,
                                                            const char *token, size_t token_len,
                                                            const uint8_t *body, size_t body_len,
                                                            int64_t now_ms,
                                                            phg_webhook_result *out);

/*
 * google-health: 1 when value (len bytes, exactly as received) is one of the
 * source's secrets still valid at now_ms, compared in constant time (every
 * secret is compared); 0 otherwise, and for a source of another scheme. For
 * the verification POSTs Google sends when a subscriber is created or
 * changed (body {"type":"verification"}, answered 201 or 401 by the
 * gateway): they carry the Authorization value but no usable signature.
 */
PHG_API PHG_WARN_UNUSED int phg_webhook_check_authorization(const phg_webhook_source *src,
                                                            const char *value, size_t len,
                                                            int64_t now_ms);

/*
 * Constant-time equality of two secret texts of any lengths (SHA-256 of each,
 * then phg_ct_equal): for verification tokens of subscription handshakes
 * (Oura's verification_token, Fitbit's verify code). 1 if equal, 0 if not.
 */
PHG_API PHG_WARN_UNUSED int phg_webhook_token_equal(const char *a, size_t a_len, const char *b,
                                                    size_t b_len);

/* ---- Google Health keysets ----------------------------------------------------------- */

#define PHG_WEBHOOK_KEYSET_MAX (64u << 10) /* bytes of keyset JSON */
#define PHG_WEBHOOK_KEYSET_KEYS_MAX 32     /* entries of its "key" array */
#define PHG_WEBHOOK_GOOGLE_KEYSET_URL                                                              \
    "https://www.gstatic.com/googlehealthapi/webhooks/webhooks_public_keyset.json"

/*
 * A parsed Tink public keyset: the ECDSA P-256 keys Google Health signs
 * webhooks with, each with its 32-bit key id. Immutable and reference-
 * counted: a source holds a reference, each verification holds one for its
 * duration, so the caller may drop its own at any time.
 */
typedef struct phg_webhook_keyset phg_webhook_keyset;

/*
 * Parse a Tink JSON keyset (docs/formats.md 17.7): at most
 * PHG_WEBHOOK_KEYSET_MAX bytes, at most PHG_WEBHOOK_KEYSET_KEYS_MAX keys.
 * Used: keys with status ENABLED, typeUrl
 * type.googleapis.com/google.crypto.tink.EcdsaPublicKey, hash SHA256, curve
 * NIST_P256, signature encoding DER or IEEE_P1363, output prefix TINK or
 * RAW. Keys with another status or typeUrl are skipped; an enabled ECDSA key
 * with other parameters, a bad public point, a duplicate key id, a private
 * keyset, or no usable key at all refuse the whole keyset.
 *
 * PHG_OK and *out (one reference, the caller's: phg_webhook_keyset_free);
 * PHG_ERR_TOO_LARGE over the limits; PHG_ERR_INVALID for anything else
 * refused, with a sentence in err (may be NULL); PHG_ERR_NOMEM.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_keyset_parse(const char *json, size_t len,
                                                            phg_webhook_keyset **out, char *err,
                                                            size_t err_len);

/*
 * Parse a keyset from file_or_url: an https:// URL (fetched with a 10 s
 * timeout and a PHG_WEBHOOK_KEYSET_MAX cap, the server's certificate checked
 * against ca_file, or the system's store when ca_file is NULL), an http://
 * URL to a loopback host only (127.0.0.0/8, [::1], localhost: a local
 * mirror or a test), or else a file path. PHG_ERR_UNAVAILABLE when the
 * server cannot be reached or answers other than 200; PHG_ERR_IO for a
 * file that cannot be read; PHG_ERR_INVALID for an http:// URL to another
 * host; otherwise as phg_webhook_keyset_parse. Blocks: not for an event loop.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_keyset_load(const char *file_or_url,
                                                           const char *ca_file,
                                                           phg_webhook_keyset **out, char *err,
                                                           size_t err_len);

/* Drop one reference; the last frees the keys. NULL is a no-op. */
PHG_API void phg_webhook_keyset_free(phg_webhook_keyset *ks);

/* The number of usable keys (>= 1 for a parsed keyset). */
PHG_API size_t phg_webhook_keyset_count(const phg_webhook_keyset *ks);

/*
 * Give a google-health source the keyset its signatures are checked with
 * (the source takes its own reference; the one it held before is dropped).
 * ks NULL removes it (verification then gives PHG_WH_UNKNOWN_KEY). Safe
 * while other threads verify with src: they finish with the keyset they
 * started with. A source of another scheme keeps it unused.
 */
PHG_API void phg_webhook_source_set_keyset(phg_webhook_source *src, phg_webhook_keyset *ks);

/* ---- signing (Standard Webhooks) ---------------------------------------------------- */

#define PHG_WEBHOOK_SIG_V1_LEN 47  /* "v1," + 44 base64 characters */
#define PHG_WEBHOOK_SIG_V1A_LEN 92 /* "v1a," + 88 base64 characters */

/*
 * One Standard Webhooks signature entry for (msg_id, timestamp_s, body):
 * with a whsec_ secret (or bare base64, as the verifier accepts it) "v1,"
 * + base64(HMAC-SHA256); with a whsk_ Ed25519 signing key (base64 of the
 * 32-byte seed, or of seed || public key) "v1a," + base64(signature). The
 * secret is checked as phg_webhook_source_new checks it. msg_id must be
 * 1..PHG_WEBHOOK_ID_MAX printable ASCII bytes without '.' or ' ';
 * timestamp_s 0..9999999999. out (out_cap >= PHG_WEBHOOK_SIG_V1A_LEN + 1)
 * gets the entry NUL-terminated; *out_len its length. Several entries (a
 * rotation) are joined with single spaces by the caller.
 *
 * PHG_ERR_INVALID for a bad secret, id or time (err says which, never the
 * secret); PHG_ERR_TOO_LARGE for a body over PHG_WEBHOOK_BODY_MAX;
 * PHG_ERR_BUFFER_TOO_SMALL.
 */
PHG_API phg_status phg_webhook_sign(const char *secret, size_t secret_len, const char *msg_id,
                                    size_t msg_id_len, int64_t timestamp_s, const uint8_t *body,
                                    size_t body_len, char *out, size_t out_cap, size_t *out_len,
                                    char *err, size_t err_len);

#define PHG_WEBHOOK_WHSEC_LEN 50 /* "whsec_" + base64 of 32 bytes */
#define PHG_WEBHOOK_WHPK_LEN 49  /* "whpk_" + base64 of 32 bytes */
#define PHG_WEBHOOK_WHSK_LEN 49  /* "whsk_" + base64 of the 32-byte seed */

/* A new random Standard Webhooks secret (32 bytes): "whsec_..." and a NUL.
 * The caller shows it once and wipes it. */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_secret_generate(char out[PHG_WEBHOOK_WHSEC_LEN + 1]);

/* A new Ed25519 key pair for v1a: the signing key "whsk_..." (the seed; the
 * caller wipes it) and the public key "whpk_..." for the receivers. */
PHG_API PHG_WARN_UNUSED phg_status phg_webhook_keypair_generate(char sk[PHG_WEBHOOK_WHSK_LEN + 1],
                                                                char pk[PHG_WEBHOOK_WHPK_LEN + 1]);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_WEBHOOK_H */
