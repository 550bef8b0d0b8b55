/*
 * bench_webhook.c: `phigate bench webhook`: verifications per second of
 * phg_webhook_verify for each scheme, one thread, on a body of --body bytes
 * (default 1 KiB), about --ms milliseconds per scheme. Each verification is
 * the whole call the gateway makes: header lookup and parsing, the window,
 * the MAC (or Ed25519, or ECDSA P-256) over the raw body, the constant-time
 * compare. Prints figures, never passes or fails on time; a verification
 * the bench's own signer makes that is refused fails the command (a rate of
 * refusals would be a fake figure). Then (unless --no-gateway) the
 * end-to-end figure: webhooks accepted per second through a real `phigate
 * serve` into its durable inbox on SQLite (bench_webhook_gw.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "cli.h"
#include "phigate/webhook.h"

int cli_bench_webhook(int argc, char **argv);
int bench_webhook_gateway(double seconds, int conns, size_t body_len, json_t *out);

#define NOW_S 1700000000LL
#define MSG_ID "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct bench_case {
    const char *label; /* what the row measures */
    const char *scheme;
    const char *secret;
    int rotation; /* 1: a second (old) secret listed first, the match is the second */
} bench_case;

static const char old_secret[] = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

static const bench_case cases[] = {
    {"standard-webhooks v1", "standard-webhooks", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 0},
    {"standard-webhooks v1, 2 secrets", "standard-webhooks",
     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1},
    {"standard-webhooks v1a (Ed25519)", "standard-webhooks",
     "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", 0},
    {"stripe", "stripe", "whsec_test_secret_for_the_bench", 0},
    {"oura", "oura", "oura_test_client_secret", 0},
    {"whoop", "whoop", "whoop_test_client_secret", 0},
    {"fitbit", "fitbit", "fitbit_test_client_secret", 0},
    {"polar", "polar", "polar_test_signature_secret_key", 0},
    {"suunto", "suunto", "suunto_test_notification_secret", 0},
    {"google-health (ECDSA P-256)", "google-health",
     "Bearer bench-google-health-authorization-0123456789", 0},
    {"unsigned (path token)", "unsigned", "unsigned-token-0123456789", 0},
};

static void to_hex(const uint8_t *in, size_t n, int upper, char *out)
{
    const char *d = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/*
 * The headers a sender of this scheme would send for body, into hdr/vals
 * (vals holds the text). Returns the number of headers, or 0 on failure.
 */
static size_t make_headers(const bench_case *c, const uint8_t *body, size_t len,
                           phg_webhook_header *hdr, char vals[3][256])
{
    uint8_t mac[32], *content = NULL;
    char ts[24];
    size_t n = 0, clen;
    const char *sec = c->secret;
    size_t slen = strlen(sec);

    if (strcmp(c->scheme, "standard-webhooks") == 0) {
        size_t siglen;
        snprintf(vals[0], 256, "%s", MSG_ID);
        snprintf(vals[1], 256, "%lld", NOW_S);
        if (phg_webhook_sign(sec, slen, MSG_ID, strlen(MSG_ID), NOW_S, body, len, vals[2], 256,
                             &siglen, NULL, 0) != PHG_OK)
            return 0;
        hdr[0] = (phg_webhook_header){"webhook-id", 10, vals[0], strlen(vals[0])};
        hdr[1] = (phg_webhook_header){"webhook-timestamp", 17, vals[1], strlen(vals[1])};
        hdr[2] = (phg_webhook_header){"webhook-signature", 17, vals[2], siglen};
        return 3;
    }
    if (strcmp(c->scheme, "unsigned") == 0)
        return 1; /* the token is the path, not a header */
    /* the vendors: [timestamp text] || body, or Stripe's "t." || body */
    if (strcmp(c->scheme, "whoop") == 0)
        snprintf(ts, sizeof ts, "%lld000", NOW_S);
    else
        snprintf(ts, sizeof ts, "%lld", NOW_S);
    content = malloc(len + 32);
    if (content == NULL)
        return 0;
    clen = 0;
    if (strcmp(c->scheme, "stripe") == 0 || strcmp(c->scheme, "oura") == 0 ||
        strcmp(c->scheme, "whoop") == 0) {
        memcpy(content, ts, strlen(ts));
        clen = strlen(ts);
        if (strcmp(c->scheme, "stripe") == 0)
            content[clen++] = '.';
    }
    memcpy(content + clen, body, len);
    clen += len;
    if (strcmp(c->scheme, "fitbit") == 0) {
        char key[64];
        snprintf(key, sizeof key, "%s&", sec);
        if (phg_hmac_sha1((const uint8_t *)key, strlen(key), content, clen, mac) != PHG_OK)
            n = 0;
        else {
            phg_base64_encode(mac, 20, vals[0], PHG_B64_STD);
            hdr[n++] = (phg_webhook_header){"X-Fitbit-Signature", 18, vals[0], strlen(vals[0])};
        }
        free(content);
        return n;
    }
    if (phg_hmac_sha256((const uint8_t *)sec, slen, content, clen, mac) != PHG_OK) {
        free(content);
        return 0;
    }
    free(content);
    if (strcmp(c->scheme, "stripe") == 0) {
        char hex[65];
        to_hex(mac, 32, 0, hex);
        snprintf(vals[0], 256, "t=%s,v1=%s", ts, hex);
        hdr[n++] = (phg_webhook_header){"Stripe-Signature", 16, vals[0], strlen(vals[0])};
    } else if (strcmp(c->scheme, "oura") == 0) {
        to_hex(mac, 32, 1, vals[0]);
        snprintf(vals[1], 256, "%s", ts);
        hdr[n++] = (phg_webhook_header){"x-oura-signature", 16, vals[0], 64};
        hdr[n++] = (phg_webhook_header){"x-oura-timestamp", 16, vals[1], strlen(vals[1])};
    } else if (strcmp(c->scheme, "whoop") == 0) {
        phg_base64_encode(mac, 32, vals[0], PHG_B64_STD);
        snprintf(vals[1], 256, "%s", ts);
        hdr[n++] = (phg_webhook_header){"X-WHOOP-Signature", 17, vals[0], strlen(vals[0])};
        hdr[n++] =
            (phg_webhook_header){"X-WHOOP-Signature-Timestamp", 27, vals[1], strlen(vals[1])};
    } else if (strcmp(c->scheme, "polar") == 0) {
        to_hex(mac, 32, 0, vals[0]);
        hdr[n++] = (phg_webhook_header){"Polar-Webhook-Signature", 23, vals[0], 64};
    } else {
        to_hex(mac, 32, 0, vals[0]);
        hdr[n++] = (phg_webhook_header){"X-HMAC-SHA256-Signature", 23, vals[0], 64};
    }
    return n;
}

/*
 * google-health (docs/formats.md 17.7): a fresh P-256 key, its Tink JSON
 * keyset given to src, and the two headers Google would send for body:
 * Authorization (c->secret) and GOOGLE-HEALTH-API-SIGNATURE =
 * base64(0x01 || key id, big-endian || DER ECDSA-SHA256 signature). The
 * EcdsaPublicKey protobuf is written by hand, as tests/unit/test_webhook.c
 * does: version 0, params {hash SHA256 = 3, curve NIST_P256 = 2, encoding
 * DER = 2}, x, y (32 bytes each, so every length fits one byte). Returns the
 * number of headers, or 0 with a sentence in why.
 */
#define BENCH_GH_KEY_ID 168496141u /* 0x0a0b0c0d */

static size_t google_health_headers(const bench_case *c, phg_webhook_source *src,
                                    const uint8_t *body, size_t len, phg_webhook_header *hdr,
                                    char vals[3][256], char *why, size_t why_len)
{
    static const uint8_t params[6] = {0x08, 3, 0x10, 2, 0x18, 2};
    EVP_PKEY *pkey = NULL;
    EVP_MD_CTX *md = NULL;
    BIGNUM *x = NULL, *y = NULL;
    phg_webhook_keyset *ks = NULL;
    uint8_t proto[2 + 2 + sizeof params + 2 * (2 + 32)], sig[5 + 80];
    char proto_b64[128], json[512], err[256] = "";
    size_t n = 0, sig_len = sizeof sig - 5, nh = 0;
    int jn;

    pkey = EVP_EC_gen("P-256");
    if (pkey == NULL || EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &x) != 1 ||
        EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &y) != 1) {
        snprintf(why, why_len, "cannot make a P-256 key");
        goto out;
    }
    proto[n++] = 0x08; /* version 0 */
    proto[n++] = 0x00;
    proto[n++] = 0x12; /* params */
    proto[n++] = sizeof params;
    memcpy(proto + n, params, sizeof params);
    n += sizeof params;
    proto[n++] = 0x1a; /* x */
    proto[n++] = 32;
    if (BN_bn2binpad(x, proto + n, 32) != 32)
        goto bad_point;
    n += 32;
    proto[n++] = 0x22; /* y */
    proto[n++] = 32;
    if (BN_bn2binpad(y, proto + n, 32) != 32)
        goto bad_point;
    n += 32;
    phg_base64_encode(proto, n, proto_b64, PHG_B64_STD);
    jn = snprintf(json, sizeof json,
                  "{\"primaryKeyId\":%u,\"key\":[{\"keyData\":{\"typeUrl\":\"type.googleapis.com/"
                  "google.crypto.tink.EcdsaPublicKey\",\"value\":\"%s\",\"keyMaterialType\":"
                  "\"ASYMMETRIC_PUBLIC\"},\"status\":\"ENABLED\",\"keyId\":%u,"
                  "\"outputPrefixType\":\"TINK\"}]}",
                  BENCH_GH_KEY_ID, proto_b64, BENCH_GH_KEY_ID);
    if (jn < 0 || (size_t)jn >= sizeof json) {
        snprintf(why, why_len, "keyset JSON does not fit");
        goto out;
    }
    if (phg_webhook_keyset_parse(json, (size_t)jn, &ks, err, sizeof err) != PHG_OK) {
        snprintf(why, why_len, "the bench's keyset is refused: %s", err);
        goto out;
    }
    phg_webhook_source_set_keyset(src, ks); /* the source takes its own reference */

    sig[0] = 0x01; /* Tink's output prefix: version byte, then the key id */
    sig[1] = (uint8_t)(BENCH_GH_KEY_ID >> 24);
    sig[2] = (uint8_t)(BENCH_GH_KEY_ID >> 16);
    sig[3] = (uint8_t)(BENCH_GH_KEY_ID >> 8);
    sig[4] = (uint8_t)BENCH_GH_KEY_ID;
    md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, pkey, NULL) != 1 ||
        EVP_DigestSign(md, sig + 5, &sig_len, body, len) != 1) {
        snprintf(why, why_len, "ECDSA signing failed");
        goto out;
    }
    /* 5 + at most 72 DER bytes: 104 base64 characters, well inside vals[1] */
    phg_base64_encode(sig, 5 + sig_len, vals[1], PHG_B64_STD);
    hdr[nh++] = (phg_webhook_header){"Authorization", 13, c->secret, strlen(c->secret)};
    hdr[nh++] = (phg_webhook_header){"GOOGLE-HEALTH-API-SIGNATURE", 27, vals[1], strlen(vals[1])};
    goto out;
bad_point:
    snprintf(why, why_len, "P-256 public point does not fit 32 bytes");
out:
    phg_webhook_keyset_free(ks);
    EVP_MD_CTX_free(md);
    BN_free(x);
    BN_free(y);
    EVP_PKEY_free(pkey); /* wipes the private key */
    return nh;
}

/* The whpk_ of the bench's whsk_ (bytes 0..31 as the seed). */
static const char bench_whpk[] = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";

static int run_case(const bench_case *c, const uint8_t *body, size_t len, double ms, json_t *rows)
{
    phg_webhook_header hdr[8];
    char vals[3][256];
    phg_webhook_secret secs[2];
    phg_webhook_source *src = NULL;
    phg_webhook_result res;
    char err[256], why[320] = "";
    size_t nh, nsec = 0;
    uint64_t t0, elapsed, ops = 0, budget = (uint64_t)(ms * 1e6);
    const char *verify_secret = c->secret;
    int rc = -1;

    /* a rotation header: the old secret's signature too, listed first */
    if (strncmp(c->secret, "whsk_", 5) == 0)
        verify_secret = bench_whpk;
    if (c->rotation)
        secs[nsec++] = (phg_webhook_secret){old_secret, strlen(old_secret), 0};
    secs[nsec++] = (phg_webhook_secret){verify_secret, strlen(verify_secret), 0};
    if (phg_webhook_source_new(c->scheme, secs, nsec, NULL, &src, err, sizeof err) != PHG_OK) {
        cli_error("bench: %s: %s", c->label, err);
        return -1;
    }
    if (strcmp(c->scheme, "google-health") == 0)
        nh = google_health_headers(c, src, body, len, hdr, vals, why, sizeof why);
    else
        nh = make_headers(c, body, len, hdr, vals);
    if (nh == 0) {
        cli_error("bench: %s: cannot sign the test message%s%s", c->label, why[0] ? ": " : "", why);
        goto out;
    }
    /* a tenth of the budget untimed first: caches, branch predictors and
     * the CPU's clock settle, so the first scheme is not penalised */
    for (int pass = 0; pass < 2; pass++) {
        ops = 0;
        t0 = now_ns();
        do {
            for (int i = 0; i < 64; i++) {
                phg_status st;
                if (strcmp(c->scheme, "unsigned") == 0)
                    st = phg_webhook_verify_token(src, c->secret, strlen(c->secret), body, len,
                                                  NOW_S * 1000, &res);
                else
                    st = phg_webhook_verify(src, hdr, nh, body, len, NOW_S * 1000, &res);
                /* the bench signed this message itself: a refusal is a bug,
                 * and timing refusals would print a fake rate */
                if (st == PHG_ERR_AUTH || (st == PHG_OK && res.reason != PHG_WH_OK)) {
                    cli_error("bench: %s: the bench's own signed message was refused (%s); "
                              "no figure",
                              c->label, phg_webhook_reason_name(res.reason));
                    goto out;
                }
                if (st != PHG_OK) {
                    cli_error("bench: %s: verification failed: %s; no figure", c->label,
                              phg_strerror(st));
                    goto out;
                }
            }
            ops += 64;
            elapsed = now_ns() - t0;
        } while (elapsed < (pass == 0 ? budget / 10 : budget));
    }
    {
        double per_s = (double)ops * 1e9 / (double)elapsed;
        if (rows != NULL) {
            if (json_array_append_new(
                    rows, json_pack("{s:s,s:s,s:I,s:I,s:f,s:f}", "case", c->label, "scheme",
                                    c->scheme, "body_bytes", (json_int_t)len, "verifications",
                                    (json_int_t)ops, "verifications_per_s", per_s,
                                    "ns_per_verification", (double)elapsed / (double)ops)) != 0) {
                cli_error("out of memory");
                goto out;
            }
        } else
            printf("  %-34s %12.0f %10.0f\n", c->label, per_s, (double)elapsed / (double)ops);
    }
    rc = 0;
out:
    phg_webhook_source_free(src);
    return rc;
}

static const char body_pattern[] = "{\"type\":\"sleep.updated\",\"data\":[0123456789abcdef]}";

int cli_bench_webhook(int argc, char **argv)
{
    cli_opt opts[] = {
        {"json", 0, NULL, 0},        {"ms", 1, NULL, 0},          {"body", 1, NULL, 0},
        {"no-gateway", 0, NULL, 0},  {"seconds", 1, NULL, 0},     {"connections", 1, NULL, 0},
        {NULL, 0, NULL, 0}};
    size_t seconds = 5, conns = 128;
    size_t ms = 1000, body_len = 1024, i;
    uint8_t *body = NULL;
    json_t *rows = NULL;
    int rc = CLI_FAIL;

    if (cli_wants_help(argc, argv)) {
        puts("Usage: phigate bench webhook [--ms N] [--body BYTES] [--no-gateway]\n"
             "                             [--seconds S] [--connections C] [--json]\n\n"
             "Webhook verifications per second, one thread, for each scheme, on a body of\n"
             "BYTES (default 1K; K/M suffixes), about N milliseconds per scheme (default\n"
             "1000). Each is a whole phg_webhook_verify call: headers, window, MAC (or\n"
             "Ed25519, or ECDSA P-256 for google-health) over the raw body, constant-time\n"
             "compare. A refused verification fails the command.\n\n"
             "Then, unless --no-gateway, end to end: this binary's `phigate serve` is\n"
             "started on loopback in a temporary folder (fresh master key, SQLite store,\n"
             "one standard-webhooks source), and C connections (default 128) POST signed\n"
             "webhooks for S seconds (default 5) after 1 s of warm-up; each is verified,\n"
             "fsync'd into the inbox and answered 200. Prints accepted/s, the median and\n"
             "p99 of an acceptance, and how many events were delivered to a local sink.");
        return CLI_OK;
    }
    if (cli_parse_opts("bench webhook", argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (opts[1].set && (!cli_parse_size(opts[1].value, &ms) || ms < 10 || ms > 60000))
        return cli_usage("bench webhook", "--ms must be 10 to 60000");
    if (opts[2].set &&
        (!cli_parse_size(opts[2].value, &body_len) || body_len > PHG_WEBHOOK_BODY_DEFAULT))
        return cli_usage("bench webhook", "--body must be 0 to 1M");
    if (opts[4].set && (!cli_parse_size(opts[4].value, &seconds) || seconds < 1 || seconds > 600))
        return cli_usage("bench webhook", "--seconds must be 1 to 600");
    if (opts[5].set && (!cli_parse_size(opts[5].value, &conns) || conns < 1 || conns > 512))
        return cli_usage("bench webhook", "--connections must be 1 to 512");
    body = malloc(body_len > 0 ? body_len : 1);
    if (body == NULL) {
        cli_error("out of memory");
        return CLI_FAIL;
    }
    /* JSON-looking printable bytes; the content does not change the cost */
    for (i = 0; i < body_len; i++)
        body[i] = (uint8_t)body_pattern[i % (sizeof body_pattern - 1)];
    if (opts[0].set) {
        rows = json_array();
        if (rows == NULL)
            goto out;
    } else {
        printf("Webhook verification, 1 thread, %zu-byte body, ~%zu ms per scheme\n", body_len, ms);
        printf("  %-34s %12s %10s\n", "scheme", "verif/s", "ns/verif");
    }
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (run_case(&cases[i], body, body_len, (double)ms, rows) != 0)
            goto out;
    if (rows != NULL) {
        json_t *doc = json_pack("{s:s,s:I,s:I,s:o}", "bench", "webhook", "threads", (json_int_t)1,
                                "body_bytes", (json_int_t)body_len, "results", rows);
        rows = NULL;
        if (doc == NULL)
            goto out;
        if (!opts[3].set && bench_webhook_gateway((double)seconds, (int)conns, body_len, doc) != 0) {
            json_decref(doc);
            goto out;
        }
        rc = cli_print_json(doc);
        goto out;
    }
    if (!opts[3].set && bench_webhook_gateway((double)seconds, (int)conns, body_len, NULL) != 0)
        goto out;
    rc = CLI_OK;
out:
    json_decref(rows);
    free(body);
    return rc;
}
