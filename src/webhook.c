/*
 * webhook.c: verification of inbound webhooks (phigate/webhook.h): secret
 * parsing per scheme, strict header grammars, timestamp windows, HMAC and
 * Ed25519 checks on the raw body; Google Health's ECDSA P-256 scheme and its
 * Tink keysets (a small strict protobuf reader for EcdsaPublicKey); the
 * Standard Webhooks signing helper.
 *
 * Not here: replay memory, handshakes, HTTP, configuration (the gateway's).
 * Byte layouts and grammars are written down in docs/formats.md, section 17;
 * where they come from in ../shared/research/webhooks.md.
 *
 * What must stay true:
 *  - the body is never parsed or copied before its size is checked, and it
 *    is hashed exactly as given (no charset or JSON work);
 *  - every encoding accepted has exactly one text per value (canonical
 *    base64 with zero unused bits, hex of one case, digits without leading
 *    zeros), so a signature cannot be re-spelled past the replay memory;
 *  - secrets and MAC outputs are compared with phg_ct_equal only, and every
 *    key, key schedule and computed MAC is wiped before it is released;
 *  - a source is read-only after phg_webhook_source_new: verification dups
 *    a keyed HMAC template (the key schedule is computed once, at creation)
 *    so that any number of threads can verify with one source. The one
 *    exception is a google-health source's keyset pointer: read and replaced
 *    only under ks_mu, and a verification holds a reference to the keyset it
 *    read, so a swap never frees keys in use;
 *  - a keyset is immutable once parsed: its EVP_PKEYs are only read.
 */
#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <errno.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "httpc.h"
#include "phigate/crypto.h"
#include "phigate/webhook.h"

#define KEY_BYTES_MAX (PHG_WEBHOOK_SECRET_TEXT_MAX + 1) /* Fitbit appends '&' */
#define SECRET_MIN_TEXT 16 /* vendor client secrets, Stripe, path tokens */
#define WHSEC_MIN_BYTES 24 /* Standard Webhooks: the spec's minimum */
#define WHSEC_MAX_BYTES 64 /* ... and its maximum (512 bits) */
#define ED25519_KEY 32
#define ED25519_SIG 64
#define TS_DIGITS_MAX 18 /* fits int64 with room for the ms arithmetic */
#define VERSION_MAX 8    /* "v1", "v1a", "v2": version tags of a list entry */

typedef enum key_kind { KEY_HMAC, KEY_ED25519, KEY_TOKEN } key_kind;

typedef struct wh_key {
    key_kind kind;
    int64_t not_after;            /* 0: none */
    uint8_t bytes[KEY_BYTES_MAX]; /* HMAC key; Ed25519 public key; SHA-256 of a token */
    size_t len;
    EVP_MAC_CTX *mac; /* HMAC: keyed template, dup'ed per verification */
    EVP_PKEY *pkey;   /* Ed25519 public key */
} wh_key;

struct phg_webhook_source {
    phg_webhook_scheme scheme;
    phg_webhook_options opts;
    size_t n;
    int has_hmac, has_ed25519;
    wh_key keys[PHG_WEBHOOK_SECRETS_MAX];
    /* google-health: the one mutable part of a source (see the top) */
    pthread_mutex_t ks_mu;
    int ks_mu_ready;
    phg_webhook_keyset *keyset;
};

/* How the single-header vendor schemes lay out their bytes. */
typedef enum sig_encoding { ENC_B64, ENC_HEX_LOWER, ENC_HEX_ONE_CASE } sig_encoding;
typedef enum ts_unit { TS_NONE, TS_SECONDS, TS_MILLIS, TS_AUTO } ts_unit;

typedef struct vendor_spec {
    const char *sig_header;
    const char *ts_header; /* NULL: no timestamp is signed */
    int sha1;              /* HMAC-SHA1 (else SHA-256) */
    sig_encoding enc;
    ts_unit unit;
} vendor_spec;

static const vendor_spec vendor_specs[] = {
    [PHG_WEBHOOK_OURA] = {"x-oura-signature", "x-oura-timestamp", 0, ENC_HEX_ONE_CASE, TS_AUTO},
    [PHG_WEBHOOK_WHOOP] = {"x-whoop-signature", "x-whoop-signature-timestamp", 0, ENC_B64,
                           TS_MILLIS},
    [PHG_WEBHOOK_FITBIT] = {"x-fitbit-signature", NULL, 1, ENC_B64, TS_NONE},
    [PHG_WEBHOOK_POLAR] = {"polar-webhook-signature", NULL, 0, ENC_HEX_ONE_CASE, TS_NONE},
    [PHG_WEBHOOK_SUUNTO] = {"x-hmac-sha256-signature", NULL, 0, ENC_HEX_ONE_CASE, TS_NONE},
};

/* ---- OpenSSL algorithms, fetched once --------------------------------------------- */

static pthread_once_t algs_once = PTHREAD_ONCE_INIT;
static EVP_MAC *hmac_alg;

static void algs_fetch(void)
{
    hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

static EVP_MAC *hmac_get(void)
{
    pthread_once(&algs_once, algs_fetch);
    return hmac_alg;
}

/* ---- names ------------------------------------------------------------------------ */

static const char *const scheme_names[] = {
    [PHG_WEBHOOK_STANDARD] = "standard-webhooks",
    [PHG_WEBHOOK_STRIPE] = "stripe",
    [PHG_WEBHOOK_OURA] = "oura",
    [PHG_WEBHOOK_WHOOP] = "whoop",
    [PHG_WEBHOOK_FITBIT] = "fitbit",
    [PHG_WEBHOOK_POLAR] = "polar",
    [PHG_WEBHOOK_SUUNTO] = "suunto",
    [PHG_WEBHOOK_UNSIGNED] = "unsigned",
    [PHG_WEBHOOK_GOOGLE_HEALTH] = "google-health",
};

const char *phg_webhook_scheme_name(phg_webhook_scheme scheme)
{
    if ((unsigned)scheme < sizeof scheme_names / sizeof scheme_names[0])
        return scheme_names[scheme];
    return "unknown";
}

phg_status phg_webhook_scheme_parse(const char *name, phg_webhook_scheme *scheme)
{
    size_t i;
    assert(name != NULL && scheme != NULL);
    for (i = 0; i < sizeof scheme_names / sizeof scheme_names[0]; i++) {
        if (strcmp(name, scheme_names[i]) == 0) {
            *scheme = (phg_webhook_scheme)i;
            return PHG_OK;
        }
    }
    return PHG_ERR_NOT_FOUND;
}

const char *phg_webhook_reason_name(phg_webhook_reason reason)
{
    switch (reason) {
    case PHG_WH_OK:
        return "ok";
    case PHG_WH_NO_SIGNATURE:
        return "no_signature";
    case PHG_WH_BAD_SIGNATURE:
        return "bad_signature";
    case PHG_WH_TIMESTAMP_OUTSIDE:
        return "timestamp_outside";
    case PHG_WH_MALFORMED_HEADER:
        return "malformed_header";
    case PHG_WH_REPEATED_HEADER:
        return "repeated_header";
    case PHG_WH_TOO_LARGE:
        return "too_large";
    case PHG_WH_NO_SECRET:
        return "no_secret";
    case PHG_WH_MISSING_HEADER:
        return "missing_header";
    case PHG_WH_HEADER_TOO_LONG:
        return "header_too_long";
    case PHG_WH_TOO_MANY_SIGNATURES:
        return "too_many_signatures";
    case PHG_WH_BAD_TOKEN:
        return "bad_token";
    case PHG_WH_WRONG_SCHEME:
        return "wrong_scheme";
    case PHG_WH_BAD_AUTHORIZATION:
        return "bad_authorization";
    case PHG_WH_UNKNOWN_KEY:
        return "unknown_key";
    }
    return "unknown";
}

void phg_webhook_options_init(phg_webhook_options *opts)
{
    assert(opts != NULL);
    opts->tolerance_s = PHG_WEBHOOK_TOLERANCE_DEFAULT;
    opts->max_body = PHG_WEBHOOK_BODY_DEFAULT;
    opts->max_header = PHG_WEBHOOK_HEADER_DEFAULT;
    opts->max_signatures = PHG_WEBHOOK_SIGNATURES_DEFAULT;
}

/* ---- small strict codecs ---------------------------------------------------------- */

static void seterr(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || err_len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Exactly 2 * n hex digits into n bytes. lower_only: only a-f; else all
 * letters of one case (either), never mixed, so each value has one text per
 * case the vendor may use. 0 on success.
 */
static int hex_decode_strict(const char *s, size_t len, uint8_t *out, size_t n, int lower_only)
{
    int seen_lower = 0, seen_upper = 0;
    size_t i;
    if (len != 2 * n)
        return -1;
    for (i = 0; i < len; i++) {
        char c = s[i];
        if (c >= 'a' && c <= 'f')
            seen_lower = 1;
        else if (c >= 'A' && c <= 'F')
            seen_upper = 1;
        else if (c < '0' || c > '9')
            return -1;
    }
    if ((lower_only && seen_upper) || (seen_lower && seen_upper))
        return -1;
    for (i = 0; i < n; i++)
        out[i] = (uint8_t)((hex_val(s[2 * i]) << 4) | hex_val(s[2 * i + 1]));
    return 0;
}

static void hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Canonical padded standard base64 of exactly n bytes. 0 on success. */
static int b64_exact(const char *s, size_t len, uint8_t *out, size_t n)
{
    size_t got = 0;
    if (len != (n + 2) / 3 * 4)
        return -1;
    if (phg_base64_decode(s, len, out, n, &got, PHG_B64_STD) != PHG_OK || got != n)
        return -1;
    return 0;
}

/* A timestamp: 1..TS_DIGITS_MAX digits, no sign, no spaces, no leading zero
 * (but "0" itself). 0 on success. */
static int parse_timestamp(const char *s, size_t len, int64_t *out)
{
    int64_t v = 0;
    size_t i;
    if (len == 0 || len > TS_DIGITS_MAX || (s[0] == '0' && len > 1))
        return -1;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

static int ascii_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int name_is(const phg_webhook_header *h, const char *lower_name)
{
    size_t i, n = strlen(lower_name);
    if (h->name_len != n || h->name == NULL)
        return 0;
    for (i = 0; i < n; i++)
        if (ascii_lower((unsigned char)h->name[i]) != lower_name[i])
            return 0;
    return 1;
}

/* The header named lower_name: 1 found (value set), 0 absent, -1 repeated. */
static int find_header(const phg_webhook_header *headers, size_t n, const char *lower_name,
                       const char **value, size_t *len)
{
    size_t i;
    int found = 0;
    for (i = 0; i < n; i++) {
        if (!name_is(&headers[i], lower_name))
            continue;
        if (found)
            return -1;
        found = 1;
        *value = headers[i].value != NULL ? headers[i].value : "";
        *len = headers[i].value != NULL ? headers[i].value_len : 0;
    }
    return found;
}

/* ---- secrets ---------------------------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && is_space((*s)[0]))
        (*s)++, (*len)--;
    while (*len > 0 && is_space((*s)[*len - 1]))
        (*len)--;
}

/* Printable ASCII, no space: the only bytes a secret's text may hold. */
static int printable(const char *s, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

static int token_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

static int has_prefix(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(s, prefix, n) == 0;
}

static phg_status hmac_template(wh_key *k, int sha1)
{
    OSSL_PARAM params[2];
    EVP_MAC *alg = hmac_get();
    if (alg == NULL)
        return PHG_ERR_INTERNAL;
    k->mac = EVP_MAC_CTX_new(alg);
    if (k->mac == NULL)
        return PHG_ERR_NOMEM;
    params[0] =
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, sha1 ? "SHA1" : "SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    if (!EVP_MAC_init(k->mac, k->bytes, k->len, params))
        return PHG_ERR_INTERNAL;
    k->kind = KEY_HMAC;
    return PHG_OK;
}

/*
 * A Standard Webhooks key: "whsec_" + base64 (the prefix optional, as the
 * reference libraries allow), or "whpk_" + base64 of an Ed25519 public key.
 * Fills k->bytes/len and kind; the caller builds the contexts.
 */
static phg_status parse_standard_key(const char *s, size_t len, size_t idx, int for_signing,
                                     wh_key *k, uint8_t seed[ED25519_KEY * 2], size_t *seed_len,
                                     char *err, size_t err_len)
{
    size_t got = 0;
    phg_status st;
    if (has_prefix(s, len, "v1,") || has_prefix(s, len, "v1a,")) {
        seterr(err, err_len, "secret %zu: looks like a signature (v1,...), not a secret", idx);
        return PHG_ERR_INVALID;
    }
    if (has_prefix(s, len, "whsk_")) {
        if (!for_signing) {
            seterr(err, err_len,
                   "secret %zu: a whsk_ key is the sender's signing key; configure its whpk_ "
                   "public key",
                   idx);
            return PHG_ERR_INVALID;
        }
        st = phg_base64_decode(s + 5, len - 5, seed, ED25519_KEY * 2, &got, PHG_B64_STD);
        if (st != PHG_OK || (got != ED25519_KEY && got != 2 * ED25519_KEY)) {
            phg_wipe(seed, ED25519_KEY * 2);
            seterr(err, err_len,
                   "secret %zu: a whsk_ key must be canonical padded base64 of a 32-byte Ed25519 "
                   "seed (or seed and public key, 64 bytes)",
                   idx);
            return PHG_ERR_INVALID;
        }
        *seed_len = got;
        k->kind = KEY_ED25519;
        return PHG_OK;
    }
    if (has_prefix(s, len, "whpk_")) {
        if (for_signing) {
            seterr(err, err_len, "secret %zu: a whpk_ public key cannot sign", idx);
            return PHG_ERR_INVALID;
        }
        if (b64_exact(s + 5, len - 5, k->bytes, ED25519_KEY) != 0) {
            seterr(err, err_len,
                   "secret %zu: a whpk_ key must be canonical padded base64 of 32 bytes", idx);
            return PHG_ERR_INVALID;
        }
        k->len = ED25519_KEY;
        k->kind = KEY_ED25519;
        return PHG_OK;
    }
    if (has_prefix(s, len, "whsec_"))
        s += 6, len -= 6;
    if (len == 0) {
        seterr(err, err_len, "secret %zu: whsec_ with no key after it", idx);
        return PHG_ERR_INVALID;
    }
    st = phg_base64_decode(s, len, k->bytes, sizeof k->bytes, &got, PHG_B64_STD);
    if (st != PHG_OK) {
        phg_wipe(k->bytes, sizeof k->bytes);
        seterr(err, err_len,
               "secret %zu: not canonical padded base64 after whsec_ (missing '=' padding, "
               "a character outside A-Z a-z 0-9 + /, or nonzero unused bits)",
               idx);
        return PHG_ERR_INVALID;
    }
    if (got < WHSEC_MIN_BYTES || got > WHSEC_MAX_BYTES) {
        phg_wipe(k->bytes, sizeof k->bytes);
        seterr(err, err_len, "secret %zu: whsec_ key decodes to %zu bytes, 24 to 64 are needed",
               idx, got);
        return PHG_ERR_INVALID;
    }
    k->len = got;
    k->kind = KEY_HMAC;
    return PHG_OK;
}

/*
 * google-health: the secret is a whole Authorization value ("Bearer ..."),
 * kept only as its SHA-256 (compared like a path token). Printable ASCII;
 * a space may separate words ("Bearer x" has one) but never two in a row,
 * so that one value has one text.
 */
static phg_status make_authorization_key(wh_key *k, const char *s, size_t len, size_t idx,
                                         char *err, size_t err_len)
{
    size_t i;
    if (len < SECRET_MIN_TEXT) {
        seterr(err, err_len,
               "secret %zu: an Authorization value needs at least %d characters (e.g. \"Bearer "
               "\" and a long random token)",
               idx, SECRET_MIN_TEXT);
        return PHG_ERR_INVALID;
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e || (c == ' ' && i > 0 && s[i - 1] == ' ')) {
            seterr(err, err_len,
                   "secret %zu: an Authorization value is printable ASCII with single spaces "
                   "between words (no tab, control or non-ASCII character)",
                   idx);
            return PHG_ERR_INVALID;
        }
    }
    k->kind = KEY_TOKEN;
    k->len = PHG_SHA256_SIZE;
    return phg_sha256((const uint8_t *)s, len, k->bytes);
}

static phg_status make_key(phg_webhook_source *src, const phg_webhook_secret *sec, size_t idx,
                           char *err, size_t err_len)
{
    wh_key *k = &src->keys[idx];
    const char *s = sec->text;
    size_t len = sec->len;
    uint8_t seed[2 * ED25519_KEY];
    size_t seed_len = 0;
    phg_status st;

    if (s == NULL)
        len = 0;
    else
        trim(&s, &len);
    k->not_after = sec->not_after;
    if (sec->not_after < 0) {
        seterr(err, err_len, "secret %zu: not_after must be a Unix time or 0", idx);
        return PHG_ERR_INVALID;
    }
    if (len == 0) {
        seterr(err, err_len, "secret %zu: empty", idx);
        return PHG_ERR_INVALID;
    }
    if (len > PHG_WEBHOOK_SECRET_TEXT_MAX) {
        seterr(err, err_len, "secret %zu: longer than %d bytes", idx, PHG_WEBHOOK_SECRET_TEXT_MAX);
        return PHG_ERR_INVALID;
    }
    if (src->scheme == PHG_WEBHOOK_GOOGLE_HEALTH)
        return make_authorization_key(k, s, len, idx, err, err_len);
    if (!printable(s, len)) {
        seterr(err, err_len,
               "secret %zu: contains a space, control or non-ASCII character inside it", idx);
        return PHG_ERR_INVALID;
    }
    switch (src->scheme) {
    case PHG_WEBHOOK_STANDARD:
        st = parse_standard_key(s, len, idx, 0, k, seed, &seed_len, err, err_len);
        if (st != PHG_OK)
            return st;
        if (k->kind == KEY_ED25519) {
            k->pkey = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, k->bytes, k->len);
            if (k->pkey == NULL) {
                seterr(err, err_len, "secret %zu: not a usable Ed25519 public key", idx);
                return PHG_ERR_INVALID;
            }
            src->has_ed25519 = 1;
            return PHG_OK;
        }
        src->has_hmac = 1;
        return hmac_template(k, 0);
    case PHG_WEBHOOK_STRIPE:
        if (!has_prefix(s, len, "whsec_") || len < SECRET_MIN_TEXT) {
            seterr(err, err_len,
                   "secret %zu: a Stripe endpoint secret starts with whsec_ and has at least %d "
                   "characters",
                   idx, SECRET_MIN_TEXT);
            return PHG_ERR_INVALID;
        }
        break;
    case PHG_WEBHOOK_UNSIGNED: {
        size_t i;
        if (len < SECRET_MIN_TEXT) {
            seterr(err, err_len, "secret %zu: a path token needs at least %d characters", idx,
                   SECRET_MIN_TEXT);
            return PHG_ERR_INVALID;
        }
        for (i = 0; i < len; i++) {
            if (!token_char(s[i])) {
                seterr(err, err_len, "secret %zu: a path token may only hold A-Z a-z 0-9 - _ . ~",
                       idx);
                return PHG_ERR_INVALID;
            }
        }
        k->kind = KEY_TOKEN;
        k->len = PHG_SHA256_SIZE;
        return phg_sha256((const uint8_t *)s, len, k->bytes);
    }
    case PHG_WEBHOOK_OURA:
    case PHG_WEBHOOK_WHOOP:
    case PHG_WEBHOOK_FITBIT:
    case PHG_WEBHOOK_POLAR:
    case PHG_WEBHOOK_SUUNTO:
        if (len < SECRET_MIN_TEXT) {
            seterr(err, err_len, "secret %zu: shorter than %d characters", idx, SECRET_MIN_TEXT);
            return PHG_ERR_INVALID;
        }
        break;
    case PHG_WEBHOOK_GOOGLE_HEALTH:
        break; /* handled above */
    }
    /* The text itself is the key (Fitbit: followed by '&', from OAuth 1 signing). */
    memcpy(k->bytes, s, len);
    k->len = len;
    if (src->scheme == PHG_WEBHOOK_FITBIT)
        k->bytes[k->len++] = '&';
    src->has_hmac = 1;
    return hmac_template(k, src->scheme == PHG_WEBHOOK_FITBIT);
}

static int options_ok(const phg_webhook_options *o)
{
    return (o->tolerance_s == PHG_WEBHOOK_NO_WINDOW ||
            (o->tolerance_s >= 1 && o->tolerance_s <= PHG_WEBHOOK_TOLERANCE_MAX)) &&
           o->max_body >= 1 && o->max_body <= PHG_WEBHOOK_BODY_MAX && o->max_header >= 64 &&
           o->max_header <= PHG_WEBHOOK_HEADER_MAX && o->max_signatures >= 1 &&
           o->max_signatures <= PHG_WEBHOOK_SIGNATURES_MAX;
}

phg_status phg_webhook_source_new(const char *scheme, const phg_webhook_secret *secrets, size_t n,
                                  const phg_webhook_options *opts, phg_webhook_source **out,
                                  char *err, size_t err_len)
{
    phg_status rc;
    phg_webhook_source *src = NULL;
    phg_webhook_scheme sch;
    size_t i;

    assert(scheme != NULL && out != NULL && (secrets != NULL || n == 0));
    *out = NULL;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (phg_webhook_scheme_parse(scheme, &sch) != PHG_OK) {
        seterr(err, err_len,
               "unknown scheme (standard-webhooks, stripe, oura, whoop, fitbit, polar, suunto, "
               "unsigned, google-health)");
        return PHG_ERR_NOT_FOUND;
    }
    if (n == 0) {
        seterr(err, err_len, "a webhook source needs at least one secret");
        return PHG_ERR_INVALID;
    }
    if (n > PHG_WEBHOOK_SECRETS_MAX) {
        seterr(err, err_len, "at most %d secrets per source", PHG_WEBHOOK_SECRETS_MAX);
        return PHG_ERR_INVALID;
    }
    src = calloc(1, sizeof *src);
    if (src == NULL)
        return PHG_ERR_NOMEM;
    src->scheme = sch;
    if (pthread_mutex_init(&src->ks_mu, NULL) != 0) {
        rc = PHG_ERR_INTERNAL;
        goto out;
    }
    src->ks_mu_ready = 1;
    if (opts != NULL)
        src->opts = *opts;
    else
        phg_webhook_options_init(&src->opts);
    if (!options_ok(&src->opts)) {
        seterr(err, err_len,
               "options out of range (tolerance_s 1..%d or -1, max_body 1..%u, max_header "
               "64..%d, max_signatures 1..%d)",
               PHG_WEBHOOK_TOLERANCE_MAX, PHG_WEBHOOK_BODY_MAX, PHG_WEBHOOK_HEADER_MAX,
               PHG_WEBHOOK_SIGNATURES_MAX);
        rc = PHG_ERR_INVALID;
        goto out;
    }
    for (i = 0; i < n; i++) {
        src->n = i + 1; /* so that a failure frees what this key took */
        rc = make_key(src, &secrets[i], i, err, err_len);
        if (rc != PHG_OK)
            goto out;
    }
    *out = src;
    src = NULL;
    rc = PHG_OK;
out:
    phg_webhook_source_free(src);
    return rc;
}

void phg_webhook_source_free(phg_webhook_source *src)
{
    size_t i;
    if (src == NULL)
        return;
    for (i = 0; i < src->n; i++) {
        EVP_MAC_CTX_free(src->keys[i].mac); /* OpenSSL cleanses the HMAC pads */
        EVP_PKEY_free(src->keys[i].pkey);
    }
    phg_webhook_keyset_free(src->keyset);
    if (src->ks_mu_ready)
        pthread_mutex_destroy(&src->ks_mu);
    phg_wipe(src, sizeof *src);
    free(src);
}

phg_webhook_scheme phg_webhook_source_scheme(const phg_webhook_source *src)
{
    assert(src != NULL);
    return src->scheme;
}

phg_status phg_webhook_secret_fingerprint(const phg_webhook_source *src, size_t i, char buf[20])
{
    static const char label[] = "phigate webhook secret";
    uint8_t tmp[sizeof label - 1 + KEY_BYTES_MAX], h[PHG_SHA256_SIZE];
    phg_status rc;
    assert(src != NULL && buf != NULL);
    if (i >= src->n)
        return PHG_ERR_INVALID;
    memcpy(tmp, label, sizeof label - 1);
    memcpy(tmp + sizeof label - 1, src->keys[i].bytes, src->keys[i].len);
    rc = phg_sha256(tmp, sizeof label - 1 + src->keys[i].len, h);
    phg_wipe(tmp, sizeof tmp);
    if (rc != PHG_OK)
        return rc;
    memcpy(buf, "fp:", 3);
    hex_encode(h, 8, buf + 3);
    return PHG_OK;
}

int phg_webhook_token_equal(const char *a, size_t a_len, const char *b, size_t b_len)
{
    uint8_t ha[PHG_SHA256_SIZE], hb[PHG_SHA256_SIZE];
    int eq;
    assert((a != NULL || a_len == 0) && (b != NULL || b_len == 0));
    if (phg_sha256((const uint8_t *)a, a_len, ha) != PHG_OK ||
        phg_sha256((const uint8_t *)b, b_len, hb) != PHG_OK)
        return 0;
    eq = phg_ct_equal(ha, hb, sizeof ha);
    phg_wipe(ha, sizeof ha);
    phg_wipe(hb, sizeof hb);
    return eq;
}

/* ---- verification ----------------------------------------------------------------- */

/* A signature entry of a list, decoded. */
typedef struct sig_entry {
    int ed25519; /* 0: HMAC (v1 / Stripe v1 / vendor), 1: v1a */
    uint8_t bytes[ED25519_SIG];
    size_t len;
} sig_entry;

/* What a header parser hands to the MAC loop. */
typedef struct parsed {
    const char *id;
    size_t id_len;
    const char *ts_text;
    size_t ts_len;
    int64_t ts;
    ts_unit unit;
    sig_entry *sigs; /* caller's array of max_signatures */
    size_t n_sigs;
} parsed;

static phg_status refuse(phg_webhook_result *out, phg_webhook_reason why)
{
    out->reason = why;
    out->msg_id[0] = '\0';
    out->secret_index = -1;
    return PHG_ERR_AUTH;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Inside [now - tol, now + tol], in the timestamp's unit. */
static int in_window(int64_t ts, ts_unit unit, int64_t now_ms, int64_t tolerance_s)
{
    int64_t now, tol, diff;
    if (tolerance_s == PHG_WEBHOOK_NO_WINDOW)
        return 1;
    if (unit == TS_MILLIS) {
        now = now_ms;
        tol = tolerance_s * 1000;
    } else {
        now = floor_div(now_ms, 1000);
        tol = tolerance_s;
    }
    diff = now - ts; /* |now| and ts < 10^18: no overflow */
    return diff <= tol && diff >= -tol;
}

static int version_ok(const char *v, size_t n)
{
    size_t i;
    if (n == 0 || n > VERSION_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9')))
            return 0;
    return 1;
}

/* The message id of Standard Webhooks: printable ASCII without '.', so that
 * "id.ts.body" splits one way only. */
static int msg_id_ok(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || n > PHG_WEBHOOK_ID_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e || s[i] == '.')
            return 0;
    return 1;
}

/* "v1,<b64> v1a,<b64> v2,..." (single spaces; empty items from doubled
 * spaces are skipped). */
static phg_webhook_reason parse_standard_list(const phg_webhook_source *src, const char *s,
                                              size_t len, parsed *p)
{
    size_t i = 0, entries = 0;
    while (i < len) {
        size_t start = i, end, comma;
        if (s[i] == ' ') {
            i++;
            continue;
        }
        while (i < len && s[i] != ' ')
            i++;
        end = i;
        if (++entries > src->opts.max_signatures)
            return PHG_WH_TOO_MANY_SIGNATURES;
        for (comma = start; comma < end && s[comma] != ','; comma++)
            ;
        if (comma == end || !version_ok(s + start, comma - start) || comma + 1 == end)
            return PHG_WH_MALFORMED_HEADER;
        if (comma - start == 2 && memcmp(s + start, "v1", 2) == 0) {
            sig_entry *e = &p->sigs[p->n_sigs];
            if (b64_exact(s + comma + 1, end - comma - 1, e->bytes, PHG_SHA256_SIZE) != 0)
                return PHG_WH_MALFORMED_HEADER;
            e->len = PHG_SHA256_SIZE;
            e->ed25519 = 0;
            if (src->has_hmac)
                p->n_sigs++;
        } else if (comma - start == 3 && memcmp(s + start, "v1a", 3) == 0) {
            sig_entry *e = &p->sigs[p->n_sigs];
            if (b64_exact(s + comma + 1, end - comma - 1, e->bytes, ED25519_SIG) != 0)
                return PHG_WH_MALFORMED_HEADER;
            e->len = ED25519_SIG;
            e->ed25519 = 1;
            if (src->has_ed25519)
                p->n_sigs++;
        }
        /* any other version: skipped, as the spec asks */
    }
    return p->n_sigs == 0 ? PHG_WH_NO_SIGNATURE : PHG_WH_OK;
}

/* Reads the header lower_name into (*v, *n); the reason when it cannot. */
static phg_webhook_reason get_header(const phg_webhook_source *src,
                                     const phg_webhook_header *headers, size_t n_headers,
                                     const char *lower_name, phg_webhook_reason if_absent,
                                     const char **v, size_t *n)
{
    int found = find_header(headers, n_headers, lower_name, v, n);
    if (found < 0)
        return PHG_WH_REPEATED_HEADER;
    if (found == 0)
        return if_absent;
    if (*n > src->opts.max_header)
        return PHG_WH_HEADER_TOO_LONG;
    return PHG_WH_OK;
}

static phg_webhook_reason parse_standard(const phg_webhook_source *src,
                                         const phg_webhook_header *headers, size_t n_headers,
                                         parsed *p)
{
    const char *sig = NULL, *unused;
    size_t sig_len = 0, unused_len;
    const char *family = "webhook-";
    char name[32];
    phg_webhook_reason r;

    /* One family of names, chosen by its signature header: Svix sends
     * svix-*, everyone else webhook-*. Never a mix of the two. */
    if (find_header(headers, n_headers, "webhook-signature", &unused, &unused_len) == 0 &&
        find_header(headers, n_headers, "svix-signature", &unused, &unused_len) != 0)
        family = "svix-";
    snprintf(name, sizeof name, "%sid", family);
    r = get_header(src, headers, n_headers, name, PHG_WH_MISSING_HEADER, &p->id, &p->id_len);
    if (r == PHG_WH_OK) {
        snprintf(name, sizeof name, "%stimestamp", family);
        r = get_header(src, headers, n_headers, name, PHG_WH_MISSING_HEADER, &p->ts_text,
                       &p->ts_len);
    }
    if (r == PHG_WH_OK) {
        snprintf(name, sizeof name, "%ssignature", family);
        r = get_header(src, headers, n_headers, name, PHG_WH_NO_SIGNATURE, &sig, &sig_len);
    }
    if (r != PHG_WH_OK)
        return r;
    if (!msg_id_ok(p->id, p->id_len) || parse_timestamp(p->ts_text, p->ts_len, &p->ts) != 0)
        return PHG_WH_MALFORMED_HEADER;
    p->unit = TS_SECONDS;
    return parse_standard_list(src, sig, sig_len, p);
}

/* "t=<digits>,v1=<hex>[,v1=<hex>...][,v0=...]": any order, exactly one t,
 * no spaces, unknown keys skipped. */
static phg_webhook_reason parse_stripe(const phg_webhook_source *src,
                                       const phg_webhook_header *headers, size_t n_headers,
                                       parsed *p)
{
    const char *s = NULL;
    size_t len = 0, i = 0, entries = 0;
    int have_t = 0;
    phg_webhook_reason r =
        get_header(src, headers, n_headers, "stripe-signature", PHG_WH_NO_SIGNATURE, &s, &len);
    if (r != PHG_WH_OK)
        return r;
    if (len == 0)
        return PHG_WH_MALFORMED_HEADER;
    for (;;) {
        size_t start = i, eq, end;
        while (i < len && s[i] != ',')
            i++;
        end = i;
        for (eq = start; eq < end && s[eq] != '='; eq++)
            ;
        if (eq == end || !version_ok(s + start, eq - start) || eq + 1 == end)
            return PHG_WH_MALFORMED_HEADER;
        if (eq - start == 1 && s[start] == 't') {
            if (have_t || parse_timestamp(s + eq + 1, end - eq - 1, &p->ts) != 0)
                return PHG_WH_MALFORMED_HEADER;
            have_t = 1;
            p->ts_text = s + eq + 1;
            p->ts_len = end - eq - 1;
        } else {
            if (++entries > src->opts.max_signatures)
                return PHG_WH_TOO_MANY_SIGNATURES;
            if (eq - start == 2 && memcmp(s + start, "v1", 2) == 0) {
                sig_entry *e = &p->sigs[p->n_sigs];
                if (hex_decode_strict(s + eq + 1, end - eq - 1, e->bytes, PHG_SHA256_SIZE, 1) != 0)
                    return PHG_WH_MALFORMED_HEADER;
                e->len = PHG_SHA256_SIZE;
                e->ed25519 = 0;
                p->n_sigs++;
            }
        }
        if (i == len)
            break;
        i++; /* the comma; a trailing comma leaves an empty entry: malformed */
    }
    if (!have_t)
        return PHG_WH_MALFORMED_HEADER;
    p->unit = TS_SECONDS;
    return p->n_sigs == 0 ? PHG_WH_NO_SIGNATURE : PHG_WH_OK;
}

static phg_webhook_reason parse_vendor(const phg_webhook_source *src,
                                       const phg_webhook_header *headers, size_t n_headers,
                                       parsed *p)
{
    const vendor_spec *vs = &vendor_specs[src->scheme];
    const char *s = NULL;
    size_t len = 0, mac_len = vs->sha1 ? PHG_SHA1_SIZE : PHG_SHA256_SIZE;
    sig_entry *e = &p->sigs[0];
    phg_webhook_reason r;
    int bad;

    r = get_header(src, headers, n_headers, vs->sig_header, PHG_WH_NO_SIGNATURE, &s, &len);
    if (r == PHG_WH_OK && vs->ts_header != NULL)
        r = get_header(src, headers, n_headers, vs->ts_header, PHG_WH_MISSING_HEADER, &p->ts_text,
                       &p->ts_len);
    if (r != PHG_WH_OK)
        return r;
    if (vs->enc == ENC_B64)
        bad = b64_exact(s, len, e->bytes, mac_len);
    else
        bad = hex_decode_strict(s, len, e->bytes, mac_len, vs->enc == ENC_HEX_LOWER);
    if (bad)
        return PHG_WH_MALFORMED_HEADER;
    e->len = mac_len;
    e->ed25519 = 0;
    p->n_sigs = 1;
    p->unit = vs->unit;
    if (vs->ts_header != NULL) {
        if (parse_timestamp(p->ts_text, p->ts_len, &p->ts) != 0)
            return PHG_WH_MALFORMED_HEADER;
        /* Oura does not document its unit: 10^11 is year 5138 in seconds,
         * 1973 in milliseconds, so the size of the value tells. */
        if (p->unit == TS_AUTO)
            p->unit = p->ts >= 100000000000 ? TS_MILLIS : TS_SECONDS;
    }
    return PHG_WH_OK;
}

/* One HMAC over the signed content (a prefix made of id and timestamp, then
 * the body), from the key's template. */
static phg_status mac_content(const wh_key *k, const parsed *p, phg_webhook_scheme scheme,
                              const uint8_t *body, size_t body_len, uint8_t *mac, size_t *mac_len)
{
    phg_status rc = PHG_ERR_INTERNAL;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(k->mac);
    int ok;
    if (ctx == NULL)
        return PHG_ERR_NOMEM;
    if (scheme == PHG_WEBHOOK_STANDARD) {
        ok = EVP_MAC_update(ctx, (const uint8_t *)p->id, p->id_len) &&
             EVP_MAC_update(ctx, (const uint8_t *)".", 1) &&
             EVP_MAC_update(ctx, (const uint8_t *)p->ts_text, p->ts_len) &&
             EVP_MAC_update(ctx, (const uint8_t *)".", 1);
    } else if (scheme == PHG_WEBHOOK_STRIPE) {
        ok = EVP_MAC_update(ctx, (const uint8_t *)p->ts_text, p->ts_len) &&
             EVP_MAC_update(ctx, (const uint8_t *)".", 1);
    } else {
        ok = p->ts_text == NULL || EVP_MAC_update(ctx, (const uint8_t *)p->ts_text, p->ts_len);
    }
    if (ok && (body_len == 0 || EVP_MAC_update(ctx, body, body_len)) &&
        EVP_MAC_final(ctx, mac, mac_len, PHG_SHA256_SIZE))
        rc = PHG_OK;
    EVP_MAC_CTX_free(ctx);
    return rc;
}

/* Ed25519 (v1a) over "id.ts.body": one contiguous copy, as EVP_DigestVerify
 * takes one buffer for a pure EdDSA signature. *match set when any entry
 * verifies under k. */
static phg_status ed25519_check(const wh_key *k, const parsed *p, const uint8_t *body,
                                size_t body_len, int *match, size_t *which)
{
    phg_status rc = PHG_ERR_NOMEM;
    size_t mlen = p->id_len + 1 + p->ts_len + 1 + body_len, i;
    uint8_t *m = malloc(mlen);
    EVP_MD_CTX *md = NULL;

    *match = 0;
    if (m == NULL)
        goto out;
    memcpy(m, p->id, p->id_len);
    m[p->id_len] = '.';
    memcpy(m + p->id_len + 1, p->ts_text, p->ts_len);
    m[p->id_len + 1 + p->ts_len] = '.';
    if (body_len > 0)
        memcpy(m + p->id_len + 2 + p->ts_len, body, body_len);
    for (i = 0; i < p->n_sigs && !*match; i++) {
        if (!p->sigs[i].ed25519)
            continue;
        EVP_MD_CTX_free(md);
        md = EVP_MD_CTX_new();
        if (md == NULL)
            goto out;
        if (EVP_DigestVerifyInit_ex(md, NULL, NULL, NULL, NULL, k->pkey, NULL) != 1) {
            rc = PHG_ERR_INTERNAL;
            goto out;
        }
        if (EVP_DigestVerify(md, p->sigs[i].bytes, ED25519_SIG, m, mlen) == 1) {
            *match = 1;
            *which = i;
        }
    }
    rc = PHG_OK;
out:
    EVP_MD_CTX_free(md);
    free(m);
    return rc;
}

static int key_valid_at(const wh_key *k, int64_t now_ms)
{
    return k->not_after == 0 || floor_div(now_ms, 1000) <= k->not_after;
}

static phg_status verify_google(const phg_webhook_source *src, const phg_webhook_header *headers,
                                size_t n_headers, const uint8_t *body, size_t body_len,
                                int64_t now_ms, phg_webhook_result *out);

phg_status phg_webhook_verify(const phg_webhook_source *src, const phg_webhook_header *headers,
                              size_t n_headers, const uint8_t *body, size_t body_len,
                              int64_t now_ms, phg_webhook_result *out)
{
    sig_entry sigs[PHG_WEBHOOK_SIGNATURES_MAX];
    parsed p;
    phg_webhook_reason r;
    phg_status rc = PHG_OK;
    uint8_t mac[PHG_SHA256_SIZE];
    size_t i, j, mac_len = 0, which = 0;
    int live = 0, matched = -1;

    assert(src != NULL && out != NULL && (headers != NULL || n_headers == 0) &&
           (body != NULL || body_len == 0));
    memset(out, 0, sizeof *out);
    out->secret_index = -1;
    out->authenticated = 1;
    if (src->scheme == PHG_WEBHOOK_UNSIGNED)
        return refuse(out, PHG_WH_WRONG_SCHEME);
    if (body_len > src->opts.max_body)
        return refuse(out, PHG_WH_TOO_LARGE);
    if (n_headers > PHG_WEBHOOK_HEADERS_MAX)
        return refuse(out, PHG_WH_MALFORMED_HEADER);
    if (src->scheme == PHG_WEBHOOK_GOOGLE_HEALTH)
        return verify_google(src, headers, n_headers, body, body_len, now_ms, out);

    memset(&p, 0, sizeof p);
    p.sigs = sigs;
    if (src->scheme == PHG_WEBHOOK_STANDARD)
        r = parse_standard(src, headers, n_headers, &p);
    else if (src->scheme == PHG_WEBHOOK_STRIPE)
        r = parse_stripe(src, headers, n_headers, &p);
    else
        r = parse_vendor(src, headers, n_headers, &p);
    if (r != PHG_WH_OK)
        return refuse(out, r);

    for (i = 0; i < src->n; i++)
        live += key_valid_at(&src->keys[i], now_ms);
    if (live == 0)
        return refuse(out, PHG_WH_NO_SECRET);
    if (p.ts_text != NULL) {
        out->has_timestamp = 1;
        out->timestamp = p.ts;
        out->timestamp_s = p.unit == TS_MILLIS ? floor_div(p.ts, 1000) : p.ts;
        if (!in_window(p.ts, p.unit, now_ms, src->opts.tolerance_s))
            return refuse(out, PHG_WH_TIMESTAMP_OUTSIDE);
    }

    /* Every live key against every entry of its kind; the first match wins
     * (which key matched is not a secret: the result names it). */
    for (i = 0; i < src->n && matched < 0; i++) {
        const wh_key *k = &src->keys[i];
        if (!key_valid_at(k, now_ms))
            continue;
        if (k->kind == KEY_HMAC) {
            rc = mac_content(k, &p, src->scheme, body, body_len, mac, &mac_len);
            if (rc != PHG_OK)
                goto out;
            for (j = 0; j < p.n_sigs; j++) {
                if (!p.sigs[j].ed25519 && p.sigs[j].len == mac_len &&
                    phg_ct_equal(mac, p.sigs[j].bytes, mac_len)) {
                    matched = (int)i;
                    which = j;
                    break;
                }
            }
        } else if (k->kind == KEY_ED25519) {
            int m = 0;
            rc = ed25519_check(k, &p, body, body_len, &m, &which);
            if (rc != PHG_OK)
                goto out;
            if (m)
                matched = (int)i;
        }
    }
    if (matched < 0) {
        rc = refuse(out, PHG_WH_BAD_SIGNATURE);
        goto out;
    }
    out->reason = PHG_WH_OK;
    out->secret_index = matched;
    if (src->scheme == PHG_WEBHOOK_STANDARD) {
        memcpy(out->msg_id, p.id, p.id_len);
        out->msg_id[p.id_len] = '\0';
    } else {
        hex_encode(p.sigs[which].bytes, p.sigs[which].len, out->msg_id);
        out->msg_id_is_signature = 1;
    }
    rc = PHG_OK;
out:
    phg_wipe(mac, sizeof mac);
    if (rc != PHG_OK && rc != PHG_ERR_AUTH) {
        out->reason = PHG_WH_BAD_SIGNATURE; /* not verified; the status says why */
        out->msg_id[0] = '\0';
        out->secret_index = -1;
    }
    return rc;
}

phg_status phg_webhook_verify_token(const phg_webhook_source *src, const char *token,
                                    size_t token_len, const uint8_t *body, size_t body_len,
                                    int64_t now_ms, phg_webhook_result *out)
{
    uint8_t h[PHG_SHA256_SIZE];
    phg_status rc;
    size_t i;
    int live = 0, matched = -1;

    assert(src != NULL && out != NULL && (token != NULL || token_len == 0) &&
           (body != NULL || body_len == 0));
    memset(out, 0, sizeof *out);
    out->secret_index = -1;
    if (src->scheme != PHG_WEBHOOK_UNSIGNED)
        return refuse(out, PHG_WH_WRONG_SCHEME);
    if (body_len > src->opts.max_body)
        return refuse(out, PHG_WH_TOO_LARGE);
    for (i = 0; i < src->n; i++)
        live += key_valid_at(&src->keys[i], now_ms);
    if (live == 0)
        return refuse(out, PHG_WH_NO_SECRET);
    rc = phg_sha256((const uint8_t *)token, token_len, h);
    if (rc != PHG_OK)
        return rc;
    /* Every key is compared, match or not: the time says nothing of which. */
    for (i = 0; i < src->n; i++) {
        int eq = phg_ct_equal(h, src->keys[i].bytes, PHG_SHA256_SIZE);
        if (eq && matched < 0 && key_valid_at(&src->keys[i], now_ms))
            matched = (int)i;
    }
    phg_wipe(h, sizeof h);
    if (matched < 0)
        return refuse(out, PHG_WH_BAD_TOKEN);
    rc = phg_sha256(body, body_len, h);
    if (rc != PHG_OK)
        return rc;
    hex_encode(h, sizeof h, out->msg_id);
    out->msg_id_is_signature = 0;
    out->secret_index = matched;
    out->authenticated = 0;
    out->reason = PHG_WH_OK;
    return PHG_OK;
}

/* ---- Google Health: Tink keysets and ECDSA P-256 ----------------------------------- */

#define GH_TYPE_URL "type.googleapis.com/google.crypto.tink.EcdsaPublicKey"
#define GH_PRIVATE_TYPE_URL "type.googleapis.com/google.crypto.tink.EcdsaPrivateKey"
#define GH_VALUE_MAX 1024   /* bytes of one serialized EcdsaPublicKey (about 80 in practice) */
#define GH_COORD 32         /* bytes of a P-256 coordinate */
#define GH_TINK_PREFIX 0x01 /* Tink output prefix: 0x01 || key id (4 bytes, big-endian) */
#define GH_PREFIX_LEN 5
#define GH_DER_SIG_MAX 72 /* DER ECDSA-P256: SEQUENCE of two INTEGERs of <= 33 bytes */
#define GH_P1363_SIG 64   /* r || s */
#define GH_SIG_MAX (GH_PREFIX_LEN + GH_DER_SIG_MAX)
#define GH_SIG_B64_MAX ((GH_SIG_MAX + 2) / 3 * 4)
#define GH_SIG_MIN 8 /* shorter cannot be a prefix and a signature */
/* Tink's enum values (proto/common.proto, proto/ecdsa.proto) */
#define TINK_HASH_SHA256 3
#define TINK_CURVE_NIST_P256 2
#define TINK_ENC_IEEE_P1363 1
#define TINK_ENC_DER 2

typedef struct gh_key {
    uint32_t id;
    int raw;   /* output prefix RAW: the signature carries no 0x01 || id */
    int p1363; /* the signature is r || s (64 bytes), not DER */
    EVP_PKEY *pkey;
} gh_key;

struct phg_webhook_keyset {
    atomic_size_t refs;
    size_t n;
    int has_raw;
    gh_key keys[PHG_WEBHOOK_KEYSET_KEYS_MAX];
};

/*
 * A strict reader for the few protobuf messages of a Tink public key:
 * varints of at most 10 bytes that fit 64 bits, length-delimited fields
 * inside their parent, unknown fields skipped by wire type, groups and
 * reserved wire types refused.
 */
typedef struct pb_reader {
    const uint8_t *p, *end;
} pb_reader;

typedef struct pb_field {
    uint32_t number;
    int wire_type;
    uint64_t varint;      /* wire type 0 */
    const uint8_t *bytes; /* wire type 2 */
    size_t len;
} pb_field;

static int pb_varint(pb_reader *r, uint64_t *v)
{
    uint64_t x = 0;
    int shift;
    for (shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (r->p == r->end)
            return -1;
        b = *r->p++;
        if (shift == 63 && b > 1)
            return -1; /* past 64 bits, or an 11th byte */
        x |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* The next field: 1 read, 0 at the end, -1 malformed. */
static int pb_next(pb_reader *r, pb_field *f)
{
    uint64_t tag;
    if (r->p == r->end)
        return 0;
    if (pb_varint(r, &tag) != 0 || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return -1;
    f->number = (uint32_t)(tag >> 3);
    f->wire_type = (int)(tag & 7);
    switch (f->wire_type) {
    case 0:
        return pb_varint(r, &f->varint) == 0 ? 1 : -1;
    case 1: /* fixed64 */
    case 5: /* fixed32 */ {
        size_t n = f->wire_type == 1 ? 8 : 4;
        if ((size_t)(r->end - r->p) < n)
            return -1;
        r->p += n;
        return 1;
    }
    case 2:
        if (pb_varint(r, &f->varint) != 0 || f->varint > (uint64_t)(r->end - r->p))
            return -1;
        f->bytes = r->p;
        f->len = (size_t)f->varint;
        r->p += f->len;
        return 1;
    default:
        return -1; /* 3 and 4 (groups), 6, 7 */
    }
}

typedef struct ecdsa_public {
    uint64_t version, hash, curve, encoding;
    const uint8_t *x, *y;
    size_t x_len, y_len;
} ecdsa_public;

/* EcdsaParams { hash_type = 1; curve = 2; encoding = 3; } (enums as varints).
 * A known field given twice, or with another wire type, is refused. */
static int pb_ecdsa_params(const uint8_t *b, size_t n, ecdsa_public *k)
{
    pb_reader r = {b, b + n};
    pb_field f;
    unsigned seen = 0;
    int got;
    while ((got = pb_next(&r, &f)) == 1) {
        if (f.number < 1 || f.number > 3)
            continue;
        if (f.wire_type != 0 || (seen & (1u << f.number)))
            return -1;
        seen |= 1u << f.number;
        if (f.number == 1)
            k->hash = f.varint;
        else if (f.number == 2)
            k->curve = f.varint;
        else
            k->encoding = f.varint;
    }
    return got;
}

/* EcdsaPublicKey { version = 1; params = 2; x = 3; y = 4; }. */
static int pb_ecdsa_public(const uint8_t *b, size_t n, ecdsa_public *k)
{
    pb_reader r = {b, b + n};
    pb_field f;
    unsigned seen = 0;
    int got;
    memset(k, 0, sizeof *k);
    while ((got = pb_next(&r, &f)) == 1) {
        if (f.number < 1 || f.number > 4)
            continue;
        if ((seen & (1u << f.number)) || f.wire_type != (f.number == 1 ? 0 : 2))
            return -1;
        seen |= 1u << f.number;
        if (f.number == 1) {
            k->version = f.varint;
        } else if (f.number == 2) {
            if (pb_ecdsa_params(f.bytes, f.len, k) != 0)
                return -1;
        } else if (f.number == 3) {
            k->x = f.bytes;
            k->x_len = f.len;
        } else {
            k->y = f.bytes;
            k->y_len = f.len;
        }
    }
    if (got != 0 || (seen & 0x1c) != 0x1c) /* params, x and y are required */
        return -1;
    return 0;
}

/* A big-endian unsigned integer (Tink may add a 0x00 so that it reads as
 * positive) into exactly GH_COORD bytes. */
static int coord(const uint8_t *b, size_t n, uint8_t out[GH_COORD])
{
    while (n > 0 && b[0] == 0)
        b++, n--;
    if (n > GH_COORD)
        return -1;
    memset(out, 0, GH_COORD);
    if (n > 0)
        memcpy(out + GH_COORD - n, b, n);
    return 0;
}

/* An EC public key on P-256 from its affine coordinates, checked to be a
 * valid point of the group (not infinity, on the curve). */
static EVP_PKEY *p256_public(const uint8_t x[GH_COORD], const uint8_t y[GH_COORD])
{
    uint8_t pt[1 + 2 * GH_COORD];
    char group[] = "prime256v1";
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *ctx = NULL, *check = NULL;
    EVP_PKEY *pkey = NULL;

    pt[0] = 0x04; /* uncompressed */
    memcpy(pt + 1, x, GH_COORD);
    memcpy(pt + 1 + GH_COORD, y, GH_COORD);
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt);
    params[2] = OSSL_PARAM_construct_end();
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto fail;
    check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (check == NULL || EVP_PKEY_public_check(check) != 1)
        goto fail;
    EVP_PKEY_CTX_free(check);
    EVP_PKEY_CTX_free(ctx);
    return pkey;
fail:
    EVP_PKEY_CTX_free(check);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return NULL;
}

/* One entry of the "key" array into ks (or skipped, when not enabled or
 * of another key type). */
static phg_status keyset_entry(phg_webhook_keyset *ks, const json_t *k, size_t idx, char *err,
                               size_t err_len)
{
    const json_t *kd = json_object_get(k, "keyData"), *id = json_object_get(k, "keyId");
    const char *status = json_string_value(json_object_get(k, "status"));
    const char *prefix = json_string_value(json_object_get(k, "outputPrefixType"));
    const char *type_url, *value, *material;
    uint8_t buf[GH_VALUE_MAX], x[GH_COORD], y[GH_COORD];
    size_t n = 0, i;
    json_int_t idv;
    ecdsa_public ek;
    gh_key *g;

    if (!json_is_object(k) || !json_is_object(kd) || !json_is_integer(id) || status == NULL ||
        prefix == NULL) {
        seterr(err, err_len,
               "keyset: key %zu needs keyData (an object), status, keyId (an integer) and "
               "outputPrefixType",
               idx);
        return PHG_ERR_INVALID;
    }
    idv = json_integer_value(id);
    /* Tink writes ids unsigned; older writers wrote them as signed int32 */
    if (idv < -2147483648LL || idv > 4294967295LL) {
        seterr(err, err_len, "keyset: key %zu: keyId is not a 32-bit value", idx);
        return PHG_ERR_INVALID;
    }
    if (strcmp(status, "ENABLED") != 0)
        return PHG_OK; /* DISABLED, DESTROYED: never used */
    type_url = json_string_value(json_object_get(kd, "typeUrl"));
    value = json_string_value(json_object_get(kd, "value"));
    material = json_string_value(json_object_get(kd, "keyMaterialType"));
    if (type_url == NULL || value == NULL || material == NULL) {
        seterr(err, err_len, "keyset: key %zu: keyData needs typeUrl, value and keyMaterialType",
               idx);
        return PHG_ERR_INVALID;
    }
    if (strcmp(type_url, GH_PRIVATE_TYPE_URL) == 0 || strcmp(material, "ASYMMETRIC_PRIVATE") == 0 ||
        strcmp(material, "SYMMETRIC") == 0) {
        seterr(err, err_len,
               "keyset: key %zu holds secret key material: give the public keyset only", idx);
        return PHG_ERR_INVALID;
    }
    if (strcmp(type_url, GH_TYPE_URL) != 0)
        return PHG_OK; /* another kind of key: nothing here can check it */
    if (strcmp(material, "ASYMMETRIC_PUBLIC") != 0) {
        seterr(err, err_len, "keyset: key %zu: keyMaterialType must be ASYMMETRIC_PUBLIC", idx);
        return PHG_ERR_INVALID;
    }
    if (ks->n == PHG_WEBHOOK_KEYSET_KEYS_MAX)
        return PHG_ERR_INTERNAL; /* cannot happen: the array size was checked */
    g = &ks->keys[ks->n];
    if (strcmp(prefix, "TINK") == 0) {
        g->raw = 0;
    } else if (strcmp(prefix, "RAW") == 0) {
        g->raw = 1;
    } else {
        seterr(err, err_len, "keyset: key %zu: outputPrefixType must be TINK or RAW", idx);
        return PHG_ERR_INVALID;
    }
    if (phg_base64_decode(value, strlen(value), buf, sizeof buf, &n, PHG_B64_STD) != PHG_OK ||
        pb_ecdsa_public(buf, n, &ek) != 0) {
        seterr(err, err_len,
               "keyset: key %zu: value is not canonical base64 of a serialized EcdsaPublicKey "
               "(at most %d bytes)",
               idx, GH_VALUE_MAX);
        return PHG_ERR_INVALID;
    }
    if (ek.version != 0 || ek.hash != TINK_HASH_SHA256 || ek.curve != TINK_CURVE_NIST_P256 ||
        (ek.encoding != TINK_ENC_DER && ek.encoding != TINK_ENC_IEEE_P1363)) {
        seterr(err, err_len,
               "keyset: key %zu: only version 0 ECDSA with SHA-256 on NIST P-256 and DER or "
               "IEEE_P1363 signatures is supported",
               idx);
        return PHG_ERR_INVALID;
    }
    g->pkey = NULL;
    if (coord(ek.x, ek.x_len, x) == 0 && coord(ek.y, ek.y_len, y) == 0)
        g->pkey = p256_public(x, y);
    if (g->pkey == NULL) {
        seterr(err, err_len, "keyset: key %zu: not a valid P-256 public key", idx);
        return PHG_ERR_INVALID;
    }
    g->id = (uint32_t)idv;
    g->p1363 = ek.encoding == TINK_ENC_IEEE_P1363;
    ks->n++; /* from here the keyset owns pkey */
    for (i = 0; i + 1 < ks->n; i++) {
        if (ks->keys[i].id == g->id) {
            seterr(err, err_len, "keyset: key %zu: key id %" PRIu32 " appears twice", idx, g->id);
            return PHG_ERR_INVALID;
        }
    }
    ks->has_raw |= g->raw;
    return PHG_OK;
}

phg_status phg_webhook_keyset_parse(const char *json, size_t len, phg_webhook_keyset **out,
                                    char *err, size_t err_len)
{
    phg_status rc = PHG_ERR_INVALID;
    phg_webhook_keyset *ks = NULL;
    json_error_t je;
    json_t *root = NULL, *keys, *primary;
    size_t i;

    assert(out != NULL && (json != NULL || len == 0));
    *out = NULL;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (len > PHG_WEBHOOK_KEYSET_MAX) {
        seterr(err, err_len, "keyset: over %u bytes", PHG_WEBHOOK_KEYSET_MAX);
        return PHG_ERR_TOO_LARGE;
    }
    root = json_loadb(json != NULL ? json : "", len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL || !json_is_object(root)) {
        seterr(err, err_len, "keyset: not a JSON object (line %d: %s)", root == NULL ? je.line : 1,
               root == NULL ? je.text : "another JSON value");
        goto out;
    }
    primary = json_object_get(root, "primaryKeyId");
    keys = json_object_get(root, "key");
    if ((primary != NULL && !json_is_integer(primary)) || !json_is_array(keys) ||
        json_array_size(keys) == 0) {
        seterr(err, err_len,
               "keyset: needs a non-empty \"key\" array (and primaryKeyId, if any, an integer)");
        goto out;
    }
    if (json_array_size(keys) > PHG_WEBHOOK_KEYSET_KEYS_MAX) {
        seterr(err, err_len, "keyset: more than %d keys", PHG_WEBHOOK_KEYSET_KEYS_MAX);
        rc = PHG_ERR_TOO_LARGE;
        goto out;
    }
    ks = calloc(1, sizeof *ks);
    if (ks == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    atomic_init(&ks->refs, 1);
    for (i = 0; i < json_array_size(keys); i++) {
        rc = keyset_entry(ks, json_array_get(keys, i), i, err, err_len);
        if (rc != PHG_OK)
            goto out;
    }
    if (ks->n == 0) {
        seterr(err, err_len, "keyset: no enabled ECDSA P-256 public key");
        rc = PHG_ERR_INVALID;
        goto out;
    }
    *out = ks;
    ks = NULL;
    rc = PHG_OK;
out:
    json_decref(root);
    phg_webhook_keyset_free(ks);
    return rc;
}

void phg_webhook_keyset_free(phg_webhook_keyset *ks)
{
    size_t i;
    if (ks == NULL || atomic_fetch_sub_explicit(&ks->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (i = 0; i < ks->n; i++)
        EVP_PKEY_free(ks->keys[i].pkey);
    free(ks);
}

size_t phg_webhook_keyset_count(const phg_webhook_keyset *ks)
{
    assert(ks != NULL);
    return ks->n;
}

void phg_webhook_source_set_keyset(phg_webhook_source *src, phg_webhook_keyset *ks)
{
    phg_webhook_keyset *old;
    assert(src != NULL);
    if (ks != NULL)
        atomic_fetch_add_explicit(&ks->refs, 1, memory_order_relaxed);
    pthread_mutex_lock(&src->ks_mu);
    old = src->keyset;
    src->keyset = ks;
    pthread_mutex_unlock(&src->ks_mu);
    phg_webhook_keyset_free(old);
}

/* The source's keyset with a reference taken (the caller drops it), or NULL. */
static phg_webhook_keyset *keyset_acquire(const phg_webhook_source *src)
{
    /* ks_mu and the pointer are the documented mutable part of a source */
    pthread_mutex_t *mu = (pthread_mutex_t *)&src->ks_mu;
    phg_webhook_keyset *ks;
    pthread_mutex_lock(mu);
    ks = src->keyset;
    if (ks != NULL)
        atomic_fetch_add_explicit(&ks->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(mu);
    return ks;
}

/* An http:// URL may only name this machine: a keyset fetched in clear
 * from elsewhere could be anyone's. */
static int url_is_loopback_http(const char *url)
{
    const char *h = url + 7, *e;
    char host[64];
    struct in_addr a4;
    size_t n;
    if (*h == '[') {
        e = strchr(h, ']');
        return e != NULL && e - h == 4 && memcmp(h, "[::1", 4) == 0 &&
               (e[1] == '\0' || e[1] == ':' || e[1] == '/' || e[1] == '?');
    }
    for (e = h; *e != '\0' && *e != ':' && *e != '/' && *e != '?'; e++)
        ;
    n = (size_t)(e - h);
    if (n == 0 || n >= sizeof host)
        return 0;
    memcpy(host, h, n);
    host[n] = '\0';
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    return inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

static phg_status keyset_fetch(const char *url, const char *ca_file, phg_webhook_keyset **out,
                               char *err, size_t err_len)
{
    static const char *const headers[] = {"Accept: application/json"};
    phg_httpc *c = NULL;
    phg_httpc_request req;
    phg_httpc_response resp;
    char herr[PHG_HTTPC_ERR_MAX] = "";
    phg_status rc;

    memset(&resp, 0, sizeof resp);
    if (strncasecmp(url, "http://", 7) == 0 && !url_is_loopback_http(url)) {
        seterr(err, err_len,
               "keyset: an http:// URL must name a loopback host (use https:// for others)");
        return PHG_ERR_INVALID;
    }
    rc = phg_httpc_new(ca_file, &c);
    if (rc != PHG_OK) {
        seterr(err, err_len,
               rc == PHG_ERR_IO ? "keyset: the CA file cannot be read"
                                : "keyset: cannot set up an HTTP client");
        return rc;
    }
    memset(&req, 0, sizeof req);
    req.method = "GET";
    req.url = url;
    req.headers = headers;
    req.n_headers = 1;
    req.timeout_ms = 10000;
    req.max_response = PHG_WEBHOOK_KEYSET_MAX;
    rc = phg_httpc_do(c, &req, &resp, herr, sizeof herr);
    if (rc != PHG_OK) {
        seterr(err, err_len, "keyset: cannot fetch it: %s", herr[0] ? herr : phg_strerror(rc));
        goto out;
    }
    if (resp.status != 200) {
        seterr(err, err_len, "keyset: the server answered HTTP %d", resp.status);
        rc = PHG_ERR_UNAVAILABLE;
        goto out;
    }
    rc = phg_webhook_keyset_parse((const char *)resp.body, resp.body_len, out, err, err_len);
out:
    phg_httpc_response_free(&resp);
    phg_httpc_free(c);
    return rc;
}

static phg_status keyset_read_file(const char *path, phg_webhook_keyset **out, char *err,
                                   size_t err_len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    phg_status rc = PHG_ERR_IO;
    int failed;

    if (f == NULL) {
        seterr(err, err_len, "keyset: cannot open %s: %s", path, strerror(errno));
        return PHG_ERR_IO;
    }
    buf = malloc(PHG_WEBHOOK_KEYSET_MAX + 1);
    if (buf == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    n = fread(buf, 1, PHG_WEBHOOK_KEYSET_MAX + 1, f);
    failed = ferror(f);
    if (failed) {
        seterr(err, err_len, "keyset: cannot read %s", path);
        goto out;
    }
    if (n > PHG_WEBHOOK_KEYSET_MAX) {
        seterr(err, err_len, "keyset: %s is over %u bytes", path, PHG_WEBHOOK_KEYSET_MAX);
        rc = PHG_ERR_TOO_LARGE;
        goto out;
    }
    rc = phg_webhook_keyset_parse(buf, n, out, err, err_len);
out:
    free(buf);
    fclose(f);
    return rc;
}

phg_status phg_webhook_keyset_load(const char *file_or_url, const char *ca_file,
                                   phg_webhook_keyset **out, char *err, size_t err_len)
{
    assert(file_or_url != NULL && out != NULL);
    *out = NULL;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (strncasecmp(file_or_url, "https://", 8) == 0 || strncasecmp(file_or_url, "http://", 7) == 0)
        return keyset_fetch(file_or_url, ca_file, out, err, err_len);
    return keyset_read_file(file_or_url, out, err, err_len);
}

/* ECDSA-P256-SHA256 of the body under key g; *match set when it verifies.
 * A signature of the wrong size or encoding is a mismatch, not an error. */
static phg_status ecdsa_check(const gh_key *g, const uint8_t *sig, size_t n, const uint8_t *body,
                              size_t body_len, int *match)
{
    uint8_t der[GH_DER_SIG_MAX + 8];
    const uint8_t *s = sig;
    size_t s_len = n;
    EVP_MD_CTX *md = NULL;
    phg_status rc = PHG_ERR_INTERNAL;

    *match = 0;
    if (g->p1363) {
        /* r || s into the DER that OpenSSL verifies */
        ECDSA_SIG *es;
        BIGNUM *r, *sv;
        uint8_t *p = der;
        int len;
        if (n != GH_P1363_SIG)
            return PHG_OK;
        es = ECDSA_SIG_new();
        r = BN_bin2bn(sig, GH_P1363_SIG / 2, NULL);
        sv = BN_bin2bn(sig + GH_P1363_SIG / 2, GH_P1363_SIG / 2, NULL);
        if (es == NULL || r == NULL || sv == NULL || ECDSA_SIG_set0(es, r, sv) != 1) {
            BN_free(r);
            BN_free(sv);
            ECDSA_SIG_free(es);
            return PHG_ERR_NOMEM;
        }
        len = i2d_ECDSA_SIG(es, NULL);
        if (len <= 0 || (size_t)len > sizeof der || i2d_ECDSA_SIG(es, &p) != len) {
            ECDSA_SIG_free(es);
            return PHG_ERR_INTERNAL;
        }
        ECDSA_SIG_free(es);
        s = der;
        s_len = (size_t)len;
    } else if (n > GH_DER_SIG_MAX) {
        return PHG_OK;
    }
    md = EVP_MD_CTX_new();
    if (md == NULL)
        return PHG_ERR_NOMEM;
    if (EVP_DigestVerifyInit_ex(md, NULL, "SHA256", NULL, NULL, g->pkey, NULL) != 1)
        goto out;
    /* 1 verified; 0 or -1 (a DER that does not parse, or parses but is not
     * the canonical encoding OpenSSL re-creates) refuse alike */
    *match =
        EVP_DigestVerify(md, s, s_len, body != NULL ? body : (const uint8_t *)"", body_len) == 1;
    rc = PHG_OK;
out:
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return rc;
}

/* The decoded signature header against the keyset: the reason. */
static phg_status google_check(const phg_webhook_keyset *ks, const uint8_t *sig, size_t n,
                               const uint8_t *body, size_t body_len, phg_webhook_reason *why)
{
    int prefixed = n > GH_PREFIX_LEN && sig[0] == GH_TINK_PREFIX, known = 0, m = 0;
    uint32_t id = 0;
    size_t i;
    phg_status rc;

    if (prefixed)
        id = (uint32_t)sig[1] << 24 | (uint32_t)sig[2] << 16 | (uint32_t)sig[3] << 8 | sig[4];
    for (i = 0; prefixed && i < ks->n && !known; i++) {
        const gh_key *g = &ks->keys[i];
        if (g->raw || g->id != id)
            continue;
        known = 1;
        rc = ecdsa_check(g, sig + GH_PREFIX_LEN, n - GH_PREFIX_LEN, body, body_len, &m);
        if (rc != PHG_OK)
            return rc;
    }
    /* RAW keys sign without a prefix: each is tried on the whole value, as
     * Tink does after the prefixed keys */
    for (i = 0; !m && ks->has_raw && i < ks->n; i++) {
        if (!ks->keys[i].raw)
            continue;
        rc = ecdsa_check(&ks->keys[i], sig, n, body, body_len, &m);
        if (rc != PHG_OK)
            return rc;
    }
    if (m)
        *why = PHG_WH_OK;
    else if (prefixed && !known)
        *why = PHG_WH_UNKNOWN_KEY;
    else if (!prefixed && !ks->has_raw)
        *why = PHG_WH_MALFORMED_HEADER; /* not Tink's 0x01 prefix, and no RAW key */
    else
        *why = PHG_WH_BAD_SIGNATURE;
    return PHG_OK;
}

/* Every secret compared (no early exit): 1 with *which set when value is one
 * still valid at now_ms. */
static int authorization_match(const phg_webhook_source *src, const char *value, size_t len,
                               int64_t now_ms, int *which)
{
    uint8_t h[PHG_SHA256_SIZE];
    size_t i;
    int matched = -1;
    if (phg_sha256((const uint8_t *)value, len, h) != PHG_OK)
        return 0;
    for (i = 0; i < src->n; i++) {
        int eq = phg_ct_equal(h, src->keys[i].bytes, PHG_SHA256_SIZE);
        if (eq && matched < 0 && key_valid_at(&src->keys[i], now_ms))
            matched = (int)i;
    }
    phg_wipe(h, sizeof h);
    *which = matched;
    return matched >= 0;
}

int phg_webhook_check_authorization(const phg_webhook_source *src, const char *value, size_t len,
                                    int64_t now_ms)
{
    int which = -1;
    assert(src != NULL && (value != NULL || len == 0));
    if (src->scheme != PHG_WEBHOOK_GOOGLE_HEALTH || len > PHG_WEBHOOK_HEADER_MAX)
        return 0;
    return authorization_match(src, value != NULL ? value : "", len, now_ms, &which);
}

static phg_status verify_google(const phg_webhook_source *src, const phg_webhook_header *headers,
                                size_t n_headers, const uint8_t *body, size_t body_len,
                                int64_t now_ms, phg_webhook_result *out)
{
    const char *auth = NULL, *sig_new = NULL, *sig_old = NULL, *sig_text;
    size_t auth_len = 0, new_len = 0, old_len = 0, sig_text_len, n = 0, i;
    uint8_t sig[GH_SIG_MAX + 3], h[PHG_SHA256_SIZE];
    phg_webhook_keyset *ks;
    phg_webhook_reason why;
    phg_status rc;
    int found_new, found_old, live = 0, matched = -1;

    /* headers: Authorization, and exactly one signature header of one name */
    why = get_header(src, headers, n_headers, "authorization", PHG_WH_BAD_AUTHORIZATION, &auth,
                     &auth_len);
    if (why != PHG_WH_OK)
        return refuse(out, why);
    found_new = find_header(headers, n_headers, "google-health-api-signature", &sig_new, &new_len);
    found_old = find_header(headers, n_headers, "x-healthapi-signature", &sig_old, &old_len);
    if (found_new < 0 || found_old < 0 || (found_new && found_old))
        return refuse(out, PHG_WH_REPEATED_HEADER);
    if (!found_new && !found_old)
        return refuse(out, PHG_WH_NO_SIGNATURE);
    sig_text = found_new ? sig_new : sig_old;
    sig_text_len = found_new ? new_len : old_len;
    if (sig_text_len > src->opts.max_header)
        return refuse(out, PHG_WH_HEADER_TOO_LONG);
    if (sig_text_len > GH_SIG_B64_MAX ||
        phg_base64_decode(sig_text, sig_text_len, sig, sizeof sig, &n, PHG_B64_STD) != PHG_OK ||
        n < GH_SIG_MIN)
        return refuse(out, PHG_WH_MALFORMED_HEADER);

    for (i = 0; i < src->n; i++)
        live += key_valid_at(&src->keys[i], now_ms);
    if (live == 0)
        return refuse(out, PHG_WH_NO_SECRET);
    if (!authorization_match(src, auth, auth_len, now_ms, &matched))
        return refuse(out, PHG_WH_BAD_AUTHORIZATION);

    ks = keyset_acquire(src);
    if (ks == NULL)
        return refuse(out, PHG_WH_UNKNOWN_KEY);
    rc = google_check(ks, sig, n, body, body_len, &why);
    phg_webhook_keyset_free(ks);
    if (rc != PHG_OK) {
        refuse(out, PHG_WH_BAD_SIGNATURE); /* not verified; the status says why */
        return rc;
    }
    if (why != PHG_WH_OK)
        return refuse(out, why);
    rc = phg_sha256(body != NULL ? body : (const uint8_t *)"", body_len, h);
    if (rc != PHG_OK) {
        refuse(out, PHG_WH_BAD_SIGNATURE);
        return rc;
    }
    hex_encode(h, sizeof h, out->msg_id);
    out->msg_id_is_signature = 0;
    out->secret_index = matched;
    out->authenticated = 1;
    out->reason = PHG_WH_OK;
    return PHG_OK;
}

/* ---- signing ---------------------------------------------------------------------- */

phg_status phg_webhook_sign(const char *secret, size_t secret_len, const char *msg_id,
                            size_t msg_id_len, int64_t timestamp_s, const uint8_t *body,
                            size_t body_len, char *out, size_t out_cap, size_t *out_len, char *err,
                            size_t err_len)
{
    phg_status rc;
    wh_key k;
    uint8_t seed[2 * ED25519_KEY], sig[ED25519_SIG], pub[ED25519_KEY];
    size_t seed_len = 0, sig_len = sizeof sig, pub_len = sizeof pub, n;
    char ts[24];
    int ts_len;
    uint8_t *m = NULL;
    EVP_PKEY *pkey = NULL;
    EVP_MD_CTX *md = NULL;
    const char *s = secret;
    size_t len = secret_len;

    assert(secret != NULL && msg_id != NULL && out != NULL && out_len != NULL &&
           (body != NULL || body_len == 0));
    memset(&k, 0, sizeof k);
    *out_len = 0;
    if (out_cap > 0)
        out[0] = '\0';
    trim(&s, &len);
    if (len == 0 || len > PHG_WEBHOOK_SECRET_TEXT_MAX || !printable(s, len)) {
        seterr(err, err_len, "secret 0: empty, too long, or holding a space or control character");
        return PHG_ERR_INVALID;
    }
    if (!msg_id_ok(msg_id, msg_id_len)) {
        seterr(err, err_len, "msg_id must be 1..%d printable ASCII bytes without '.' or ' '",
               PHG_WEBHOOK_ID_MAX);
        return PHG_ERR_INVALID;
    }
    if (timestamp_s < 0 || timestamp_s > 9999999999) {
        seterr(err, err_len, "timestamp must be 0..9999999999 (Unix seconds)");
        return PHG_ERR_INVALID;
    }
    if (body_len > PHG_WEBHOOK_BODY_MAX) {
        seterr(err, err_len, "body over %u bytes", PHG_WEBHOOK_BODY_MAX);
        return PHG_ERR_TOO_LARGE;
    }
    if (out_cap < PHG_WEBHOOK_SIG_V1A_LEN + 1) {
        seterr(err, err_len, "output buffer too small");
        return PHG_ERR_BUFFER_TOO_SMALL;
    }
    rc = parse_standard_key(s, len, 0, 1, &k, seed, &seed_len, err, err_len);
    if (rc != PHG_OK)
        goto out;
    ts_len = snprintf(ts, sizeof ts, "%" PRId64, timestamp_s);
    n = msg_id_len + 1 + (size_t)ts_len + 1 + body_len;
    m = malloc(n);
    rc = PHG_ERR_NOMEM;
    if (m == NULL)
        goto out;
    memcpy(m, msg_id, msg_id_len);
    m[msg_id_len] = '.';
    memcpy(m + msg_id_len + 1, ts, (size_t)ts_len);
    m[msg_id_len + 1 + (size_t)ts_len] = '.';
    if (body_len > 0)
        memcpy(m + msg_id_len + 2 + (size_t)ts_len, body, body_len);

    rc = PHG_ERR_INTERNAL;
    if (k.kind == KEY_HMAC) {
        uint8_t mac[PHG_SHA256_SIZE];
        rc = phg_hmac_sha256(k.bytes, k.len, m, n, mac);
        if (rc == PHG_OK) {
            memcpy(out, "v1,", 3);
            *out_len = 3 + phg_base64_encode(mac, sizeof mac, out + 3, PHG_B64_STD);
        }
        phg_wipe(mac, sizeof mac);
        goto out;
    }
    pkey = EVP_PKEY_new_raw_private_key_ex(NULL, "ED25519", NULL, seed, ED25519_KEY);
    if (pkey == NULL || EVP_PKEY_get_raw_public_key(pkey, pub, &pub_len) != 1)
        goto out;
    if (seed_len == 2 * ED25519_KEY && memcmp(pub, seed + ED25519_KEY, ED25519_KEY) != 0) {
        seterr(err, err_len, "secret 0: the whsk_ key's public half does not match its seed");
        rc = PHG_ERR_INVALID;
        goto out;
    }
    md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestSignInit_ex(md, NULL, NULL, NULL, NULL, pkey, NULL) != 1 ||
        EVP_DigestSign(md, sig, &sig_len, m, n) != 1 || sig_len != ED25519_SIG)
        goto out;
    memcpy(out, "v1a,", 4);
    *out_len = 4 + phg_base64_encode(sig, sig_len, out + 4, PHG_B64_STD);
    rc = PHG_OK;
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pkey);
    free(m);
    phg_wipe(seed, sizeof seed);
    phg_wipe(&k, sizeof k);
    return rc;
}

phg_status phg_webhook_secret_generate(char out[PHG_WEBHOOK_WHSEC_LEN + 1])
{
    uint8_t key[32];
    phg_status rc;
    assert(out != NULL);
    rc = phg_random_bytes(key, sizeof key);
    if (rc == PHG_OK) {
        memcpy(out, "whsec_", 6);
        phg_base64_encode(key, sizeof key, out + 6, PHG_B64_STD);
    }
    phg_wipe(key, sizeof key);
    return rc;
}

phg_status phg_webhook_keypair_generate(char sk[PHG_WEBHOOK_WHSK_LEN + 1],
                                        char pk[PHG_WEBHOOK_WHPK_LEN + 1])
{
    uint8_t seed[ED25519_KEY], pub[ED25519_KEY];
    size_t pub_len = sizeof pub;
    EVP_PKEY *pkey = NULL;
    phg_status rc;
    assert(sk != NULL && pk != NULL);
    rc = phg_random_bytes(seed, sizeof seed);
    if (rc != PHG_OK)
        goto out;
    rc = PHG_ERR_INTERNAL;
    pkey = EVP_PKEY_new_raw_private_key_ex(NULL, "ED25519", NULL, seed, sizeof seed);
    if (pkey == NULL || EVP_PKEY_get_raw_public_key(pkey, pub, &pub_len) != 1)
        goto out;
    memcpy(sk, "whsk_", 5);
    phg_base64_encode(seed, sizeof seed, sk + 5, PHG_B64_STD);
    memcpy(pk, "whpk_", 5);
    phg_base64_encode(pub, sizeof pub, pk + 5, PHG_B64_STD);
    rc = PHG_OK;
out:
    EVP_PKEY_free(pkey);
    phg_wipe(seed, sizeof seed);
    return rc;
}
