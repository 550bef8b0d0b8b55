/*
 * fuzz_webhook.c: the webhook header parsers, secret parsers and Google
 * Health keyset parser (phigate/webhook.h). Input: one byte that picks the
 * scheme (low 4 bits: 0..8 as phg_webhook_scheme; 9 means the rest is a
 * Tink keyset for phg_webhook_keyset_parse; 10..15 do nothing) and the mode
 * (bit 7: the rest is a secret for phg_webhook_source_new), then header
 * lines "name: value\n", an empty line, and the body. The google-health
 * source holds a fixed keyset (key id 0x0a0b0c0d; the seed gh_valid was
 * signed for it with Python's cryptography) and the Authorization value
 * "Bearer fuzz-authorization-0123".
 *
 * Checked: nothing crashes; a result agrees with its status (PHG_OK exactly
 * when the reason is ok, a msg_id and a secret index only then); a refused
 * secret always says why; what verifies still verifies when the headers come
 * in the other order, and stops verifying with a repeated header.
 */
#include <strings.h>

#include "fuzz_common.h"
#include "phigate/webhook.h"

#define NOW_MS 1614265330000LL
#define MAX_HEADERS 32
#define N_SCHEMES 9
#define KEYSET_MODE 9

static const char gh_keyset[] =
    "{\"primaryKeyId\":168496141,\"key\":[{\"keyData\":{\"typeUrl\":\"type.googleapis.com/"
    "google.crypto.tink.EcdsaPublicKey\",\"value\":\"EgYIAxACGAIaIFFcPW6545a5BNP+yn9U/"
    "c0MwemXvzddylFa0KbDtANfIiBFNr46UPMY+/mlR1kCoiFQK+8NV+CMU7LMClbxfZ+TVA==\","
    "\"keyMaterialType\":\"ASYMMETRIC_PUBLIC\"},\"status\":\"ENABLED\",\"keyId\":168496141,"
    "\"outputPrefixType\":\"TINK\"}]}";

static const char *const secrets[] = {
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_test_secret",
    "oura_test_client_secret",
    "whoop_test_client_secret",
    "fitbit_test_client_secret",
    "polar_test_signature_secret_key",
    "suunto_test_notification_secret",
    "unsigned-token-0123456789",
    "Bearer fuzz-authorization-0123",
};

static phg_webhook_source *source_for(int scheme)
{
    static phg_webhook_source *srcs[N_SCHEMES];
    if (srcs[scheme] == NULL) {
        phg_webhook_secret s[2] = {{secrets[scheme], strlen(secrets[scheme]), 0},
                                   {"whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=", 49, 0}};
        if (phg_webhook_source_new(phg_webhook_scheme_name((phg_webhook_scheme)scheme), s,
                                   scheme == 0 ? 2 : 1, NULL, &srcs[scheme], NULL, 0) != PHG_OK)
            abort();
        if (scheme == PHG_WEBHOOK_GOOGLE_HEALTH) {
            phg_webhook_keyset *ks = NULL;
            if (phg_webhook_keyset_parse(gh_keyset, sizeof gh_keyset - 1, &ks, NULL, 0) != PHG_OK)
                abort();
            phg_webhook_source_set_keyset(srcs[scheme], ks);
            phg_webhook_keyset_free(ks);
        }
    }
    return srcs[scheme];
}

static void check_result(phg_status st, const phg_webhook_result *r)
{
    if ((st == PHG_OK) != (r->reason == PHG_WH_OK))
        abort();
    if (st == PHG_OK && (r->msg_id[0] == '\0' || r->secret_index < 0))
        abort();
    if (st != PHG_OK && (r->msg_id[0] != '\0' || r->secret_index != -1))
        abort();
    if (strcmp(phg_webhook_reason_name(r->reason), "unknown") == 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    phg_webhook_header h[MAX_HEADERS + 1];
    phg_webhook_result res;
    size_t n = 0, i = 1;
    int scheme;
    phg_status st;

    if (size < 1)
        return 0;
    scheme = data[0] & 15;
    if (scheme == KEYSET_MODE) {
        phg_webhook_keyset *ks = NULL;
        char err[256] = "";
        st = phg_webhook_keyset_parse((const char *)data + 1, size - 1, &ks, err, sizeof err);
        if ((st == PHG_OK) != (ks != NULL) || (st != PHG_OK && err[0] == '\0') ||
            (st == PHG_OK && (phg_webhook_keyset_count(ks) < 1 ||
                              phg_webhook_keyset_count(ks) > PHG_WEBHOOK_KEYSET_KEYS_MAX)))
            abort();
        phg_webhook_keyset_free(ks);
        return 0;
    }
    if (scheme >= N_SCHEMES)
        return 0;
    if (data[0] & 0x80) {
        phg_webhook_secret s = {(const char *)data + 1, size - 1, 0};
        phg_webhook_source *src = NULL;
        char err[256] = "";
        st = phg_webhook_source_new(phg_webhook_scheme_name((phg_webhook_scheme)scheme), &s, 1,
                                    NULL, &src, err, sizeof err);
        if ((st == PHG_OK) != (src != NULL) || (st != PHG_OK && err[0] == '\0'))
            abort();
        if (scheme == 0) {
            char out[128];
            size_t len;
            (void)phg_webhook_sign(s.text, s.len, "msg_1", 5, 1, data, size, out, sizeof out, &len,
                                   NULL, 0);
        }
        phg_webhook_source_free(src);
        return 0;
    }
    /* header lines until an empty line */
    while (i < size && n < MAX_HEADERS) {
        const uint8_t *nl = memchr(data + i, '\n', size - i);
        size_t end = nl != NULL ? (size_t)(nl - data) : size, colon;
        if (end == i) {
            i++;
            break;
        }
        for (colon = i; colon < end && data[colon] != ':'; colon++)
            ;
        h[n].name = (const char *)data + i;
        h[n].name_len = colon - i;
        if (colon < end && colon + 1 < end && data[colon + 1] == ' ')
            colon++;
        h[n].value = (const char *)data + (colon < end ? colon + 1 : end);
        h[n].value_len = end - (colon < end ? colon + 1 : end);
        n++;
        i = end + 1;
    }
    if (i > size)
        i = size;
    if (scheme == PHG_WEBHOOK_UNSIGNED) {
        st = phg_webhook_verify_token(source_for(scheme), (const char *)data + i, size - i, data,
                                      size, NOW_MS, &res);
        check_result(st, &res);
        return 0;
    }
    st = phg_webhook_verify(source_for(scheme), h, n, data + i, size - i, NOW_MS, &res);
    check_result(st, &res);
    if (scheme == PHG_WEBHOOK_GOOGLE_HEALTH) {
        /* the Authorization header alone, as for the verification POSTs: a
         * verified request's value always passes */
        for (size_t k = 0; k < n; k++) {
            if (h[k].name_len == 13 && strncasecmp(h[k].name, "authorization", 13) == 0 &&
                !phg_webhook_check_authorization(source_for(scheme), h[k].value, h[k].value_len,
                                                 NOW_MS) &&
                st == PHG_OK)
                abort();
        }
    }
    if (st == PHG_OK && n > 0) {
        phg_webhook_result again;
        phg_webhook_header t = h[0];
        h[0] = h[n - 1];
        h[n - 1] = t;
        if (phg_webhook_verify(source_for(scheme), h, n, data + i, size - i, NOW_MS, &again) !=
                PHG_OK ||
            strcmp(again.msg_id, res.msg_id) != 0)
            abort();
        /* any header repeated: still verified (one the scheme does not
         * read), or refused as repeated, never anything else */
        for (size_t k = 0; k < n; k++) {
            h[n] = h[k];
            if (phg_webhook_verify(source_for(scheme), h, n + 1, data + i, size - i, NOW_MS,
                                   &again) != PHG_OK &&
                again.reason != PHG_WH_REPEATED_HEADER)
                abort();
        }
    }
    return 0;
}
