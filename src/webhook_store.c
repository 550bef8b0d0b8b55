/*
 * webhook_store.c: webhook sources in the store (phigate/webhook_store.h).
 * Validation happens here, before anything reaches an engine; secrets are
 * checked by phg_webhook_source_new, trimmed, and stored only as Fernet
 * tokens under the first master key; so is a source's verify token (the
 * handshake secret of oura and fitbit, migration 4). Decrypted texts live in
 * malloc'd buffers that every free function wipes.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "phigate/crypto.h"
#include "phigate/webhook_store.h"
#include "phi_internal.h"
#include "store_internal.h"

static void set_err(char *err, size_t err_len, const char *msg)
{
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "%s", msg);
}

int phg_webhook_source_name_valid(const char *name)
{
    size_t i, n;
    if (name == NULL)
        return 0;
    n = strnlen(name, PHG_WEBHOOK_SOURCE_NAME_MAX + 1);
    if (n == 0 || n > PHG_WEBHOOK_SOURCE_NAME_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

static int url_valid(const char *url)
{
    size_t i, n, pre;
    if (url == NULL)
        return 0;
    n = strnlen(url, PHG_WEBHOOK_URL_MAX + 1);
    if (n > PHG_WEBHOOK_URL_MAX)
        return 0;
    if (strncmp(url, "https://", 8) == 0)
        pre = 8;
    else if (strncmp(url, "http://", 7) == 0)
        pre = 7;
    else
        return 0;
    if (n == pre || url[pre] == '/')
        return 0; /* no host */
    for (i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
            return 0;
    return 1;
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* The secrets trimmed (views into the caller's texts). */
static void trim_secrets(const phg_webhook_secret *in, size_t n, phg_webhook_secret *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        const char *t = in[i].text != NULL ? in[i].text : "";
        size_t len = in[i].text != NULL ? in[i].len : 0;
        while (len > 0 && is_space(*t)) {
            t++;
            len--;
        }
        while (len > 0 && is_space(t[len - 1]))
            len--;
        out[i].text = t;
        out[i].len = len;
        out[i].not_after = in[i].not_after;
    }
}

/* Check the secrets as the verifier will, and fingerprint them. */
static phg_status check_secrets(const char *scheme, int64_t tolerance_s,
                                const phg_webhook_secret *secrets, size_t n,
                                phg_wh_secret_row *rows, char *err, size_t err_len)
{
    phg_webhook_options opts;
    phg_webhook_source *src = NULL;
    char why[256];
    phg_status rc;
    size_t i;

    for (i = 0; i < n; i++) {
        if (secrets[i].not_after < 0) {
            set_err(err, err_len, "a secret's not_after is negative");
            return PHG_ERR_INVALID;
        }
    }
    phg_webhook_options_init(&opts);
    opts.tolerance_s = tolerance_s;
    why[0] = '\0';
    rc = phg_webhook_source_new(scheme, secrets, n, &opts, &src, why, sizeof why);
    if (rc != PHG_OK) {
        set_err(err, err_len, why[0] ? why : phg_strerror(rc));
        return rc;
    }
    for (i = 0; i < n && rc == PHG_OK; i++)
        rc = phg_webhook_secret_fingerprint(src, i, rows[i].fingerprint);
    phg_webhook_source_free(src);
    return rc;
}

/* A text as a Fernet token under the first master key, into out[cap]. */
static phg_status encrypt_text(const phg_masterkeys *mk, const char *text, size_t text_len,
                               char *out, size_t cap)
{
    size_t len = 0;
    if (phg_fernet_token_len(text_len) + 1 > cap)
        return PHG_ERR_TOO_LARGE;
    return phg_fernet_encrypt(mk->keys[0], (const uint8_t *)text, text_len, (uint64_t)time(NULL),
                              NULL, out, cap, &len);
}

static phg_status encrypt_secret(const phg_masterkeys *mk, const phg_webhook_secret *s,
                                 phg_wh_secret_row *row)
{
    return encrypt_text(mk, s->text, s->len, row->secret_enc, sizeof row->secret_enc);
}

/*
 * A verify token trimmed (*text, *len: a view into the caller's text) and
 * checked: 1 to PHG_WEBHOOK_VERIFY_TOKEN_MAX bytes of 0x21..0x7e. The
 * handshake compares it with a query parameter, which carries no space and
 * no control byte; the messages never quote it.
 */
static phg_status check_verify_token(const char **text, size_t *len, char *err, size_t err_len)
{
    const char *t = *text;
    size_t n = *len, i;
    while (n > 0 && is_space(*t)) {
        t++;
        n--;
    }
    while (n > 0 && is_space(t[n - 1]))
        n--;
    if (n == 0) {
        set_err(err, err_len, "verify_token: empty (1 to 512 printable ASCII characters)");
        return PHG_ERR_INVALID;
    }
    if (n > PHG_WEBHOOK_VERIFY_TOKEN_MAX) {
        set_err(err, err_len, "verify_token: at most 512 bytes");
        return PHG_ERR_INVALID;
    }
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch < 0x21 || ch > 0x7e) {
            set_err(err, err_len, "verify_token: only printable ASCII characters, without spaces");
            return PHG_ERR_INVALID;
        }
    }
    *text = t;
    *len = n;
    return PHG_OK;
}

phg_status phg_webhook_sources_add(phg_store *store, const phg_masterkeys *mk,
                                   const phg_webhook_source_spec *spec, char *err, size_t err_len)
{
    phg_webhook_secret trimmed[PHG_WEBHOOK_SECRETS_MAX];
    phg_wh_secret_row *rows = NULL;
    phg_wh_source_row src;
    phg_webhook_scheme scheme;
    int64_t now = (int64_t)time(NULL);
    phg_status rc;
    size_t i;

    set_err(err, err_len, "");
    if (store == NULL || spec == NULL)
        return PHG_ERR_INVALID;
    if (mk == NULL || mk->n == 0) {
        set_err(err, err_len, "no master key");
        return PHG_ERR_MASTER_KEY;
    }
    if (!phg_webhook_source_name_valid(spec->name)) {
        set_err(err, err_len, "name: 1 to 64 of a-z, 0-9, '_' and '-'");
        return PHG_ERR_INVALID;
    }
    if (spec->scheme == NULL || strlen(spec->scheme) > PHG_WH_SCHEME_MAX ||
        phg_webhook_scheme_parse(spec->scheme, &scheme) != PHG_OK) {
        set_err(err, err_len, "scheme: unknown (see docs/formats.md 17)");
        return PHG_ERR_NOT_FOUND;
    }
    memset(&src, 0, sizeof src);
    src.tolerance_s = spec->tolerance_s == 0 ? PHG_WEBHOOK_TOLERANCE_DEFAULT : spec->tolerance_s;
    if (src.tolerance_s < 1 || src.tolerance_s > PHG_WEBHOOK_STORE_TOLERANCE_MAX) {
        set_err(err, err_len, "tolerance: 1 to 86400 seconds");
        return PHG_ERR_INVALID;
    }
    if (!url_valid(spec->deliver_to)) {
        set_err(
            err, err_len,
            "deliver_to: an http:// or https:// URL with a host, printable, at most 2048 bytes");
        return PHG_ERR_INVALID;
    }
    if (spec->n_secrets < 1 || spec->n_secrets > PHG_WEBHOOK_SECRETS_MAX || spec->secrets == NULL) {
        set_err(err, err_len, "secrets: 1 to 16");
        return PHG_ERR_INVALID;
    }
    if (spec->verify_token != NULL && spec->verify_token_len > 0) {
        const char *vt = spec->verify_token;
        size_t vt_len = spec->verify_token_len;
        rc = check_verify_token(&vt, &vt_len, err, err_len);
        if (rc == PHG_OK)
            rc = encrypt_text(mk, vt, vt_len, src.verify_token_enc, sizeof src.verify_token_enc);
        if (rc != PHG_OK)
            return rc;
    }
    rows = calloc(spec->n_secrets, sizeof *rows);
    if (rows == NULL)
        return PHG_ERR_NOMEM;
    trim_secrets(spec->secrets, spec->n_secrets, trimmed);
    rc = check_secrets(spec->scheme, src.tolerance_s, trimmed, spec->n_secrets, rows, err, err_len);
    for (i = 0; rc == PHG_OK && i < spec->n_secrets; i++) {
        rows[i].idx = (int64_t)i;
        rows[i].not_after = trimmed[i].not_after;
        rows[i].created_at = now;
        rc = encrypt_secret(mk, &trimmed[i], &rows[i]);
    }
    if (rc == PHG_OK) {
        snprintf(src.name, sizeof src.name, "%s", spec->name);
        snprintf(src.scheme, sizeof src.scheme, "%s", phg_webhook_scheme_name(scheme));
        snprintf(src.deliver_to, sizeof src.deliver_to, "%s", spec->deliver_to);
        src.created_at = src.updated_at = now;
        rc = phg_internal_store_wh_source_insert(store, &src, rows, spec->n_secrets);
        if (rc == PHG_ERR_EXISTS)
            set_err(err, err_len, "a source of this name exists");
    }
    phg_wipe(trimmed, sizeof trimmed);
    phg_wipe(rows, spec->n_secrets * sizeof *rows);
    free(rows);
    return rc;
}

static void info_from_row(const phg_wh_source_row *r, phg_webhook_source_info *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", r->name);
    snprintf(info->scheme, sizeof info->scheme, "%s", r->scheme);
    snprintf(info->deliver_to, sizeof info->deliver_to, "%s", r->deliver_to);
    info->tolerance_s = r->tolerance_s;
    info->created_at = r->created_at;
    info->updated_at = r->updated_at;
    info->has_verify_token = r->verify_token_enc[0] != '\0';
}

phg_status phg_webhook_sources_list(phg_store *store, phg_webhook_source_info **out, size_t *n)
{
    phg_wh_source_row *rows = NULL;
    phg_webhook_source_info *infos = NULL;
    size_t i, count = 0;
    phg_status rc;

    if (store == NULL || out == NULL || n == NULL)
        return PHG_ERR_INVALID;
    *out = NULL;
    *n = 0;
    rc = phg_internal_store_wh_source_list(store, &rows, &count);
    if (rc != PHG_OK)
        return rc;
    if (count > 0) {
        infos = calloc(count, sizeof *infos);
        if (infos == NULL) {
            free(rows);
            return PHG_ERR_NOMEM;
        }
        for (i = 0; i < count; i++)
            info_from_row(&rows[i], &infos[i]);
    }
    free(rows);
    *out = infos;
    *n = count;
    return PHG_OK;
}

/* Open a token with any key of mk into a malloc'd NUL-terminated text (a
 * secret or a verify token: the same limit holds both). */
_Static_assert(PHG_WEBHOOK_VERIFY_TOKEN_MAX <= PHG_WEBHOOK_SECRET_TEXT_MAX,
               "decrypt_secret's limit must hold a verify token");
static phg_status decrypt_secret(const phg_masterkeys *mk, const char *token, char **text,
                                 size_t *len)
{
    size_t i, n = 0, cap = strlen(token) + 1;
    char *buf = malloc(cap);

    if (buf == NULL)
        return PHG_ERR_NOMEM;
    for (i = 0; i < mk->n; i++) {
        if (phg_fernet_decrypt(mk->keys[i], token, strlen(token), 0, 0, (uint8_t *)buf, cap - 1,
                               &n) != PHG_OK)
            continue;
        if (n > PHG_WEBHOOK_SECRET_TEXT_MAX) {
            phg_wipe(buf, cap);
            free(buf);
            return PHG_ERR_SCHEMA;
        }
        buf[n] = '\0';
        *text = buf;
        *len = n;
        return PHG_OK;
    }
    phg_wipe(buf, cap);
    free(buf);
    return PHG_ERR_MASTER_KEY;
}

static void info_clear(phg_webhook_source_info *info)
{
    size_t i;
    if (info == NULL)
        return;
    for (i = 0; i < info->n_active; i++) {
        char *t = (char *)(uintptr_t)info->active[i].text;
        if (t != NULL) {
            phg_wipe(t, info->active[i].len);
            free(t);
        }
    }
    free(info->active);
    free(info->active_index);
    free(info->secrets);
    if (info->verify_token != NULL) {
        phg_wipe(info->verify_token, info->verify_token_len);
        free(info->verify_token);
    }
    phg_wipe(info, sizeof *info);
}

void phg_webhook_source_info_free(phg_webhook_source_info *info)
{
    info_clear(info);
    free(info);
}

void phg_webhook_source_infos_free(phg_webhook_source_info *infos, size_t n)
{
    size_t i;
    if (infos == NULL)
        return;
    for (i = 0; i < n; i++)
        info_clear(&infos[i]);
    free(infos);
}

phg_status phg_webhook_sources_get(phg_store *store, const phg_masterkeys *mk, const char *name,
                                   phg_webhook_source_info **out)
{
    phg_wh_source_row src;
    phg_wh_secret_row *rows = NULL;
    phg_webhook_source_info *info = NULL;
    size_t i, n = 0, active = 0;
    phg_status rc;

    if (store == NULL || out == NULL)
        return PHG_ERR_INVALID;
    *out = NULL;
    if (!phg_webhook_source_name_valid(name))
        return PHG_ERR_NOT_FOUND;
    rc = phg_internal_store_wh_source_get(store, name, &src, &rows, &n);
    if (rc != PHG_OK)
        return rc;
    info = calloc(1, sizeof *info);
    if (info == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    info_from_row(&src, info);
    if (n > 0) {
        info->secrets = calloc(n, sizeof *info->secrets);
        info->active = calloc(n, sizeof *info->active);
        info->active_index = calloc(n, sizeof *info->active_index);
        if (info->secrets == NULL || info->active == NULL || info->active_index == NULL) {
            rc = PHG_ERR_NOMEM;
            goto out;
        }
    }
    for (i = 0; i < n; i++) {
        phg_webhook_secret_info *s = &info->secrets[i];
        s->index = rows[i].idx;
        memcpy(s->fingerprint, rows[i].fingerprint, sizeof s->fingerprint);
        s->not_after = rows[i].not_after;
        s->retired_at = rows[i].retired_at;
        s->created_at = rows[i].created_at;
        info->n_secrets++;
        if (mk == NULL || rows[i].retired_at != 0)
            continue;
        {
            char *text = NULL;
            size_t len = 0;
            rc = decrypt_secret(mk, rows[i].secret_enc, &text, &len);
            if (rc != PHG_OK)
                goto out;
            info->active[active].text = text;
            info->active[active].len = len;
            info->active[active].not_after = rows[i].not_after;
            info->active_index[active] = rows[i].idx;
            active++;
            info->n_active = active;
        }
    }
    if (mk != NULL && info->has_verify_token) {
        rc = decrypt_secret(mk, src.verify_token_enc, &info->verify_token, &info->verify_token_len);
        if (rc != PHG_OK)
            goto out;
    }
    *out = info;
    info = NULL;
out:
    if (rows != NULL) {
        phg_wipe(rows, n * sizeof *rows);
        free(rows);
    }
    phg_webhook_source_info_free(info);
    return rc;
}

phg_status phg_webhook_sources_remove(phg_store *store, const char *name)
{
    if (store == NULL)
        return PHG_ERR_INVALID;
    if (!phg_webhook_source_name_valid(name))
        return PHG_ERR_NOT_FOUND;
    return phg_internal_store_wh_source_delete(store, name);
}

phg_status phg_webhook_sources_add_secret(phg_store *store, const phg_masterkeys *mk,
                                          const char *name, const phg_webhook_secret *secret,
                                          int64_t *index, char *err, size_t err_len)
{
    phg_webhook_secret trimmed;
    phg_wh_secret_row row;
    phg_wh_source_row src;
    size_t n = 0;
    phg_status rc;

    set_err(err, err_len, "");
    if (store == NULL || secret == NULL || index == NULL)
        return PHG_ERR_INVALID;
    if (mk == NULL || mk->n == 0) {
        set_err(err, err_len, "no master key");
        return PHG_ERR_MASTER_KEY;
    }
    if (!phg_webhook_source_name_valid(name)) {
        set_err(err, err_len, "no such source");
        return PHG_ERR_NOT_FOUND;
    }
    rc = phg_internal_store_wh_source_get(store, name, &src, NULL, &n);
    if (rc != PHG_OK) {
        if (rc == PHG_ERR_NOT_FOUND)
            set_err(err, err_len, "no such source");
        return rc;
    }
    memset(&row, 0, sizeof row);
    trim_secrets(secret, 1, &trimmed);
    rc = check_secrets(src.scheme, src.tolerance_s, &trimmed, 1, &row, err, err_len);
    if (rc == PHG_OK) {
        row.not_after = trimmed.not_after;
        row.created_at = (int64_t)time(NULL);
        rc = encrypt_secret(mk, &trimmed, &row);
    }
    if (rc == PHG_OK) {
        rc = phg_internal_store_wh_secret_add(store, name, &row, PHG_WEBHOOK_SECRETS_MAX, index);
        if (rc == PHG_ERR_STATE)
            set_err(err, err_len, "the source has 16 unretired secrets: retire one first");
        else if (rc == PHG_ERR_NOT_FOUND)
            set_err(err, err_len, "no such source");
    }
    phg_wipe(&trimmed, sizeof trimmed);
    phg_wipe(&row, sizeof row);
    return rc;
}

phg_status phg_webhook_sources_retire_secret(phg_store *store, const char *name, int64_t index)
{
    if (store == NULL)
        return PHG_ERR_INVALID;
    if (!phg_webhook_source_name_valid(name) || index < 0)
        return PHG_ERR_NOT_FOUND;
    return phg_internal_store_wh_secret_retire(store, name, index, (int64_t)time(NULL));
}

typedef struct set_vt_call {
    const char *name;
    const char *enc;
    int64_t at;
} set_vt_call;

static phg_status call_set_verify_token(const phg_store_engine *e, void *conn, void *arg)
{
    const set_vt_call *a = arg;
    return e->wh_source_set_verify_token(conn, a->name, a->enc, a->at);
}

phg_status phg_webhook_sources_set_verify_token(phg_store *store, const phg_masterkeys *mk,
                                                const char *name, const char *token, size_t len,
                                                char *err, size_t err_len)
{
    char enc[PHG_WH_SECRET_ENC_MAX + 1];
    set_vt_call a;
    phg_status rc;

    set_err(err, err_len, "");
    if (store == NULL)
        return PHG_ERR_INVALID;
    enc[0] = '\0';
    if (token != NULL) {
        if (mk == NULL || mk->n == 0) {
            set_err(err, err_len, "no master key");
            return PHG_ERR_MASTER_KEY;
        }
        rc = check_verify_token(&token, &len, err, err_len);
        if (rc != PHG_OK)
            return rc;
    }
    if (!phg_webhook_source_name_valid(name)) {
        set_err(err, err_len, "no such source");
        return PHG_ERR_NOT_FOUND;
    }
    if (token != NULL) {
        rc = encrypt_text(mk, token, len, enc, sizeof enc);
        if (rc != PHG_OK)
            return rc;
    }
    a.name = name;
    a.enc = enc;
    a.at = (int64_t)time(NULL);
    rc = phg_internal_store_with_conn(store, call_set_verify_token, &a);
    if (rc == PHG_ERR_NOT_FOUND)
        set_err(err, err_len, "no such source");
    return rc;
}
