/*
 * keyring.c: master keys, and the keyring of wrapped data keys: create, load,
 * save, rotate, destroy (crypto-shredding), rewrap.
 *
 * The keyring's JSON text is a stable format (docs/formats.md, "Keyring
 * file"); loading is strict, because a keyring that is read wrongly loses
 * patient data for good. Plaintext DEKs live only in memory, are wiped when
 * destroyed or freed, and never reach the JSON text or an error.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "phi_internal.h"
#include "phigate/audit.h"
#include "phigate/phi.h"

#define KEYRING_FORMAT "phigate-keyring"
#define KEYRING_VERSION 1
#define KID_RANDOM_CHARS 10

/* ---- master keys ----------------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

phg_status phg_phi_masterkeys_parse(const char *text, size_t len, phg_masterkeys **out)
{
    phg_masterkeys *mk;
    size_t pos = 0;
    phg_status rc = PHG_ERR_MASTER_KEY;

    assert(out != NULL && (text != NULL || len == 0));
    *out = NULL;
    mk = calloc(1, sizeof *mk);
    if (mk == NULL)
        return PHG_ERR_NOMEM;
    while (pos <= len) {
        size_t start = pos, end;
        while (pos < len && text[pos] != ',')
            pos++;
        end = pos;
        while (start < end && is_space(text[start]))
            start++;
        while (end > start && is_space(text[end - 1]))
            end--;
        if (mk->n == PHG_PHI_MASTER_KEYS_MAX)
            goto out;
        if (phg_fernet_key_decode(text + start, end - start, mk->keys[mk->n]) != PHG_OK)
            goto out;
        mk->n++;
        pos++; /* past the comma, or past the end */
    }
    *out = mk;
    mk = NULL;
    rc = PHG_OK;
out:
    phg_phi_masterkeys_free(mk);
    return rc;
}

phg_status phg_phi_masterkeys_from_file(const char *path, phg_masterkeys **out)
{
    char buf[PHG_PHI_MASTER_KEY_FILE_MAX + 1];
    size_t len = 0;
    ssize_t got;
    int fd;
    phg_status rc;

    assert(path != NULL && out != NULL);
    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return PHG_ERR_IO;
    for (;;) {
        got = read(fd, buf + len, sizeof buf - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
        if (len == sizeof buf)
            break;
    }
    close(fd);
    if (got < 0)
        rc = PHG_ERR_IO;
    else if (len > PHG_PHI_MASTER_KEY_FILE_MAX)
        rc = PHG_ERR_TOO_LARGE;
    else
        rc = phg_phi_masterkeys_parse(buf, len, out);
    phg_wipe(buf, sizeof buf);
    return rc;
}

phg_status phg_phi_masterkeys_from_env(phg_masterkeys **out)
{
    const char *value = getenv("PHI_MASTER_KEY");
    const char *file = getenv("PHI_MASTER_KEY_FILE");

    assert(out != NULL);
    *out = NULL;
    if ((value == NULL) == (file == NULL))
        return PHG_ERR_MASTER_KEY; /* neither, or both */
    if (value != NULL)
        return phg_phi_masterkeys_parse(value, strlen(value), out);
    return phg_phi_masterkeys_from_file(file, out);
}

size_t phg_phi_masterkeys_count(const phg_masterkeys *mk)
{
    return mk == NULL ? 0 : mk->n;
}

void phg_phi_masterkeys_free(phg_masterkeys *mk)
{
    if (mk == NULL)
        return;
    phg_wipe(mk, sizeof *mk);
    free(mk);
}

/* ---- keyring object ----------------------------------------------------------- */

void phg_keyring_options_init(phg_keyring_options *opts)
{
    assert(opts != NULL);
    memset(opts, 0, sizeof *opts);
    opts->cache_entries = PHG_PHI_CACHE_DEFAULT;
}

static void key_wipe(phi_key *k)
{
    if (k->wrapped != NULL) {
        phg_wipe(k->wrapped, strlen(k->wrapped));
        free(k->wrapped);
        k->wrapped = NULL;
    }
    phg_wipe(k->dek, sizeof k->dek);
}

void phg_keyring_free(phg_keyring *kr)
{
    size_t i;
    if (kr == NULL)
        return;
    for (i = 0; i < kr->n; i++)
        key_wipe(&kr->keys[i]);
    free(kr->keys);
    phg_internal_cache_free(kr->cache);
    for (i = 0; i < KR_LOCK_SLOTS; i++)
        pthread_rwlock_destroy(&kr->slots[i].lock);
    phg_wipe(&kr->mk, sizeof kr->mk);
    free(kr);
}

static phg_status keyring_alloc(const phg_masterkeys *mk, const phg_keyring_options *opts,
                                phg_keyring **out)
{
    phg_keyring_options defaults;
    phg_keyring *kr;
    size_t i;

    if (mk == NULL || mk->n == 0)
        return PHG_ERR_MASTER_KEY;
    if (opts == NULL) {
        phg_keyring_options_init(&defaults);
        opts = &defaults;
    }
    kr = aligned_alloc(_Alignof(phg_keyring), (sizeof *kr + 63) / 64 * 64);
    if (kr == NULL)
        return PHG_ERR_NOMEM;
    memset(kr, 0, sizeof *kr);
    for (i = 0; i < KR_LOCK_SLOTS; i++)
        pthread_rwlock_init(&kr->slots[i].lock, NULL);
    kr->mk = *mk;
    if (opts->cache_entries > 0) {
        kr->cache = phg_internal_cache_new(opts->cache_entries);
        if (kr->cache == NULL) {
            phg_keyring_free(kr);
            return PHG_ERR_NOMEM;
        }
    }
    *out = kr;
    return PHG_OK;
}

static phg_status reserve(phg_keyring *kr, size_t want)
{
    phi_key *grown;
    size_t cap;
    if (want <= kr->cap)
        return PHG_OK;
    if (want > PHG_PHI_KEYRING_KEYS_MAX)
        return PHG_ERR_TOO_LARGE;
    cap = kr->cap ? kr->cap * 2 : 4;
    while (cap < want)
        cap *= 2;
    if (cap > PHG_PHI_KEYRING_KEYS_MAX)
        cap = PHG_PHI_KEYRING_KEYS_MAX;
    /* No realloc: the old array may hold DEKs and must be wiped, not just
     * released to the allocator. */
    grown = calloc(cap, sizeof *grown);
    if (grown == NULL)
        return PHG_ERR_NOMEM;
    if (kr->n > 0)
        memcpy(grown, kr->keys, kr->n * sizeof *grown);
    if (kr->keys != NULL) {
        phg_wipe(kr->keys, kr->cap * sizeof *kr->keys);
        free(kr->keys);
    }
    kr->keys = grown;
    kr->cap = cap;
    return PHG_OK;
}

static atomic_uint next_reader_slot;
static _Thread_local unsigned my_reader_slot = ~0u;

unsigned phg_internal_read_lock(phg_keyring *kr)
{
    unsigned slot = my_reader_slot;
    if (slot == ~0u) {
        slot = atomic_fetch_add(&next_reader_slot, 1) % KR_LOCK_SLOTS;
        my_reader_slot = slot;
    }
    pthread_rwlock_rdlock(&kr->slots[slot].lock);
    return slot;
}

void phg_internal_read_unlock(phg_keyring *kr, unsigned slot)
{
    pthread_rwlock_unlock(&kr->slots[slot].lock);
}

void phg_internal_write_lock(phg_keyring *kr)
{
    size_t i;
    for (i = 0; i < KR_LOCK_SLOTS; i++)
        pthread_rwlock_wrlock(&kr->slots[i].lock);
}

void phg_internal_write_unlock(phg_keyring *kr)
{
    size_t i = KR_LOCK_SLOTS;
    while (i-- > 0)
        pthread_rwlock_unlock(&kr->slots[i].lock);
}

phi_key *phg_internal_find_key(phg_keyring *kr, const char *kid, size_t kid_len)
{
    size_t i;
    for (i = 0; i < kr->n; i++) {
        if (kr->keys[i].kid_len == kid_len && memcmp(kr->keys[i].kid, kid, kid_len) == 0)
            return &kr->keys[i];
    }
    return NULL;
}

/* A fresh kid, "k" and 10 characters of [a-z0-9], unique in the keyring. */
static phg_status new_kid(phg_keyring *kr, char kid[PHG_PHI_KID_MAX + 1])
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    uint8_t rnd[64];
    size_t used, filled;
    int attempt;

    for (attempt = 0; attempt < 8; attempt++) {
        if (phg_random_bytes(rnd, sizeof rnd) != PHG_OK)
            return PHG_ERR_INTERNAL;
        kid[0] = 'k';
        filled = 0;
        /* Rejection sampling keeps the characters uniform. */
        for (used = 0; used < sizeof rnd && filled < KID_RANDOM_CHARS; used++) {
            if (rnd[used] < 252)
                kid[1 + filled++] = alphabet[rnd[used] % 36];
        }
        if (filled < KID_RANDOM_CHARS)
            continue;
        kid[1 + KID_RANDOM_CHARS] = '\0';
        if (phg_internal_find_key(kr, kid, 1 + KID_RANDOM_CHARS) == NULL)
            return PHG_OK;
    }
    return PHG_ERR_INTERNAL;
}

static phg_status wrap_dek(const phg_masterkeys *mk, const uint8_t dek[PHG_PHI_DEK_SIZE],
                           char **out)
{
    size_t cap = phg_fernet_token_len(PHG_PHI_DEK_SIZE) + 1, len = 0;
    char *tok = malloc(cap);
    phg_status rc;
    *out = NULL;
    if (tok == NULL)
        return PHG_ERR_NOMEM;
    rc = phg_fernet_encrypt(mk->keys[0], dek, PHG_PHI_DEK_SIZE, (uint64_t)time(NULL), NULL, tok,
                            cap, &len);
    if (rc != PHG_OK) {
        free(tok);
        return rc;
    }
    *out = tok;
    return PHG_OK;
}

/* Append a new active key with a random DEK; it does not become primary here. */
static phg_status add_new_key(phg_keyring *kr, size_t *index)
{
    phi_key k;
    phg_status rc;

    memset(&k, 0, sizeof k);
    rc = reserve(kr, kr->n + 1);
    if (rc != PHG_OK)
        return rc;
    rc = new_kid(kr, k.kid);
    if (rc != PHG_OK)
        return rc;
    k.kid_len = strlen(k.kid);
    k.state = PHG_PHI_KEY_ACTIVE;
    k.created_s = (int64_t)time(NULL);
    rc = phg_random_bytes(k.dek, sizeof k.dek);
    if (rc == PHG_OK)
        rc = wrap_dek(&kr->mk, k.dek, &k.wrapped);
    if (rc != PHG_OK) {
        key_wipe(&k);
        return rc;
    }
    kr->keys[kr->n] = k;
    *index = kr->n++;
    phg_wipe(&k, sizeof k);
    return PHG_OK;
}

phg_status phg_keyring_create(const phg_masterkeys *mk, const phg_keyring_options *opts,
                              phg_keyring **out)
{
    phg_keyring *kr = NULL;
    phg_status rc;
    size_t idx = 0;

    assert(out != NULL);
    *out = NULL;
    rc = keyring_alloc(mk, opts, &kr);
    if (rc != PHG_OK)
        return rc;
    rc = add_new_key(kr, &idx);
    if (rc != PHG_OK) {
        phg_keyring_free(kr);
        return rc;
    }
    kr->primary = idx;
    *out = kr;
    return PHG_OK;
}

void phg_keyring_set_audit(phg_keyring *kr, struct phg_audit *audit)
{
    assert(kr != NULL);
    kr->audit = audit;
}

/* The record of a keyring change, when an audit log is set (see
 * phg_keyring_set_audit): `st` is the change's result; PHG_ERR_UNAUDITED when
 * it succeeded and its record failed. */
static phg_status record_keyring_action(phg_keyring *kr, const char *action, phg_status st,
                                        const char *details)
{
    phg_audit_event ev;
    phg_status rc;
    if (kr->audit == NULL)
        return st;
    memset(&ev, 0, sizeof ev);
    ev.action = action;
    ev.resource = "keyring";
    ev.outcome = st == PHG_OK ? "success" : "error";
    ev.details_json = details;
    rc = phg_audit_append(kr->audit, &ev, NULL);
    if (st == PHG_OK && rc != PHG_OK)
        return PHG_ERR_UNAUDITED;
    return st;
}

phg_status phg_keyring_rotate(phg_keyring *kr, char new_kid[PHG_PHI_KID_MAX + 1])
{
    phg_status rc;
    size_t idx = 0;
    char old_kid[PHG_PHI_KID_MAX + 1], fresh_kid[PHG_PHI_KID_MAX + 1] = "";

    assert(kr != NULL);
    phg_internal_write_lock(kr);
    memcpy(old_kid, kr->keys[kr->primary].kid, kr->keys[kr->primary].kid_len + 1);
    rc = add_new_key(kr, &idx);
    if (rc == PHG_OK) {
        kr->keys[kr->primary].state = PHG_PHI_KEY_DECRYPT_ONLY;
        kr->primary = idx;
        memcpy(fresh_kid, kr->keys[idx].kid, kr->keys[idx].kid_len + 1);
        if (new_kid != NULL)
            memcpy(new_kid, fresh_kid, sizeof fresh_kid);
    }
    phg_internal_write_unlock(kr);
    {
        char details[128];
        snprintf(details, sizeof details, "{\"previous\":\"%s\",\"primary\":\"%s\"}", old_kid,
                 fresh_kid);
        return record_keyring_action(kr, "keyring.rotate", rc, details);
    }
}

phg_status phg_keyring_destroy(phg_keyring *kr, const char *kid)
{
    phi_key *k;
    phg_status rc = PHG_OK;
    char shown[PHG_PHI_KID_MAX + 1] = "(unknown)";

    assert(kr != NULL && kid != NULL);
    phg_internal_write_lock(kr);
    k = phg_internal_find_key(kr, kid, strlen(kid));
    if (k != NULL) /* copied under the lock: the array may move after it */
        memcpy(shown, k->kid, k->kid_len + 1);
    if (k == NULL) {
        rc = PHG_ERR_NOT_FOUND;
    } else if (k == &kr->keys[kr->primary] || k->state == PHG_PHI_KEY_DESTROYED) {
        rc = PHG_ERR_STATE;
    } else {
        key_wipe(k);
        k->state = PHG_PHI_KEY_DESTROYED;
        phg_internal_cache_purge_kid(kr->cache, k->kid, k->kid_len);
    }
    phg_internal_write_unlock(kr);
    {
        char details[96];
        /* only a kid of the keyring's own shape is echoed into the record */
        snprintf(details, sizeof details, "{\"kid\":\"%s\"}", shown);
        return record_keyring_action(kr, "keyring.destroy", rc, details);
    }
}

phg_status phg_keyring_rewrap(phg_keyring *kr, const phg_masterkeys *mk)
{
    char **fresh = NULL;
    size_t i;
    phg_status rc = PHG_OK;

    assert(kr != NULL);
    if (mk == NULL || mk->n == 0)
        return PHG_ERR_MASTER_KEY;
    phg_internal_write_lock(kr);
    fresh = calloc(kr->n ? kr->n : 1, sizeof *fresh);
    if (fresh == NULL) {
        rc = PHG_ERR_NOMEM;
        goto out;
    }
    /* All new tokens first, then swap: a failure leaves the keyring as it was. */
    for (i = 0; i < kr->n && rc == PHG_OK; i++) {
        if (kr->keys[i].state != PHG_PHI_KEY_DESTROYED)
            rc = wrap_dek(mk, kr->keys[i].dek, &fresh[i]);
    }
    if (rc == PHG_OK) {
        for (i = 0; i < kr->n; i++) {
            if (fresh[i] == NULL)
                continue;
            phg_wipe(kr->keys[i].wrapped, strlen(kr->keys[i].wrapped));
            free(kr->keys[i].wrapped);
            kr->keys[i].wrapped = fresh[i];
            fresh[i] = NULL;
        }
        kr->mk = *mk;
    }
out:
    if (fresh != NULL) {
        for (i = 0; i < kr->n; i++)
            free(fresh[i]);
        free(fresh);
    }
    phg_internal_write_unlock(kr);
    {
        char details[64];
        snprintf(details, sizeof details, "{\"master_keys\":%zu}", mk->n);
        return record_keyring_action(kr, "keyring.rewrap", rc, details);
    }
}

size_t phg_keyring_count(phg_keyring *kr)
{
    size_t n;
    assert(kr != NULL);
    unsigned slot = phg_internal_read_lock(kr);
    n = kr->n;
    phg_internal_read_unlock(kr, slot);
    return n;
}

phg_status phg_keyring_info(phg_keyring *kr, size_t i, phg_phi_key_info *info)
{
    phg_status rc = PHG_OK;
    assert(kr != NULL && info != NULL);
    unsigned slot = phg_internal_read_lock(kr);
    if (i >= kr->n) {
        rc = PHG_ERR_NOT_FOUND;
    } else {
        memset(info, 0, sizeof *info);
        memcpy(info->kid, kr->keys[i].kid, kr->keys[i].kid_len + 1);
        info->state = kr->keys[i].state;
        info->created_s = kr->keys[i].created_s;
        info->is_primary = i == kr->primary;
    }
    phg_internal_read_unlock(kr, slot);
    return rc;
}

phg_status phg_keyring_primary(phg_keyring *kr, char kid[PHG_PHI_KID_MAX + 1])
{
    assert(kr != NULL && kid != NULL);
    unsigned slot = phg_internal_read_lock(kr);
    memcpy(kid, kr->keys[kr->primary].kid, kr->keys[kr->primary].kid_len + 1);
    phg_internal_read_unlock(kr, slot);
    return PHG_OK;
}

/* ---- JSON ---------------------------------------------------------------------- */

static const char *state_name(phg_phi_key_state s)
{
    switch (s) {
    case PHG_PHI_KEY_ACTIVE: return "active";
    case PHG_PHI_KEY_DECRYPT_ONLY: return "decrypt-only";
    case PHG_PHI_KEY_DESTROYED: return "destroyed";
    }
    return "invalid";
}

static int state_parse(const char *s, phg_phi_key_state *out)
{
    if (strcmp(s, "active") == 0)
        *out = PHG_PHI_KEY_ACTIVE;
    else if (strcmp(s, "decrypt-only") == 0)
        *out = PHG_PHI_KEY_DECRYPT_ONLY;
    else if (strcmp(s, "destroyed") == 0)
        *out = PHG_PHI_KEY_DESTROYED;
    else
        return 0;
    return 1;
}

static void format_time(int64_t t, char buf[32])
{
    struct tm tm;
    time_t tt = (time_t)t;
    gmtime_r(&tt, &tm);
    strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Exactly YYYY-MM-DDTHH:MM:SSZ, a real date and time. */
static int parse_time(const char *s, int64_t *out)
{
    struct tm tm;
    char back[32];
    int y, mo, d, h, mi, se, n = 0;
    time_t t;

    if (strlen(s) != 20)
        return 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &y, &mo, &d, &h, &mi, &se, &n) != 6 || n != 20 || y < 1970)
        return 0;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    t = timegm(&tm);
    if (t == (time_t)-1)
        return 0;
    /* Round trip rejects 2026-02-31, signs, spaces and other near-misses. */
    format_time((int64_t)t, back);
    if (strcmp(back, s) != 0)
        return 0;
    *out = (int64_t)t;
    return 1;
}

static int kid_valid(const char *kid)
{
    size_t i, n = strlen(kid);
    if (n == 0 || n > PHG_PHI_KID_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        char c = kid[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

/* Only the named members may be present. */
static int only_members(json_t *obj, const char *const *allowed, size_t n)
{
    const char *name;
    json_t *value;
    json_object_foreach(obj, name, value) {
        size_t i;
        int ok = 0;
        (void)value;
        for (i = 0; i < n && !ok; i++)
            ok = strcmp(name, allowed[i]) == 0;
        if (!ok)
            return 0;
    }
    return 1;
}

static phg_status unwrap_dek(const phg_masterkeys *mk, const char *token,
                             uint8_t dek[PHG_PHI_DEK_SIZE])
{
    uint8_t buf[256];
    size_t i, n = 0;
    for (i = 0; i < mk->n; i++) {
        if (phg_fernet_decrypt(mk->keys[i], token, strlen(token), 0, 0, buf, sizeof buf, &n) !=
            PHG_OK)
            continue;
        if (n != PHG_PHI_DEK_SIZE) {
            phg_wipe(buf, sizeof buf);
            return PHG_ERR_KEYRING; /* opened, but it is not a data key */
        }
        memcpy(dek, buf, PHG_PHI_DEK_SIZE);
        phg_wipe(buf, sizeof buf);
        return PHG_OK;
    }
    phg_wipe(buf, sizeof buf);
    return PHG_ERR_MASTER_KEY;
}

#define BAD(reason)                                                                              \
    do {                                                                                         \
        rc = PHG_ERR_KEYRING;                                                                    \
        detail = (reason);                                                                       \
        goto out;                                                                                \
    } while (0)

phg_status phg_keyring_from_json(const char *text, size_t len, const phg_masterkeys *mk,
                                 const phg_keyring_options *opts, phg_keyring **out,
                                 const char **why)
{
    static const char *const top_members[] = {"format", "version", "primary", "keys"};
    static const char *const key_members[] = {"kid", "state", "created", "wrapped"};
    phg_keyring *kr = NULL;
    json_t *root = NULL, *keys, *v;
    json_error_t jerr;
    const char *detail = NULL, *primary;
    size_t i, nkeys, nactive = 0;
    int primary_found = 0;
    phg_status rc;

    assert(out != NULL && (text != NULL || len == 0));
    *out = NULL;
    if (why != NULL)
        *why = NULL;
    if (len > PHG_PHI_KEYRING_TEXT_MAX)
        return PHG_ERR_TOO_LARGE;
    rc = keyring_alloc(mk, opts, &kr);
    if (rc != PHG_OK)
        return rc;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        BAD("not valid JSON");
    if (!json_is_object(root))
        BAD("not a JSON object");
    if (!only_members(root, top_members, 4))
        BAD("unknown member at the top level");
    v = json_object_get(root, "format");
    if (!json_is_string(v) || strcmp(json_string_value(v), KEYRING_FORMAT) != 0)
        BAD("\"format\" is not \"phigate-keyring\"");
    v = json_object_get(root, "version");
    if (!json_is_integer(v) || json_integer_value(v) != KEYRING_VERSION)
        BAD("unsupported \"version\" (this build reads version 1)");
    v = json_object_get(root, "primary");
    if (!json_is_string(v) || !kid_valid(json_string_value(v)))
        BAD("missing or malformed \"primary\"");
    primary = json_string_value(v);
    keys = json_object_get(root, "keys");
    if (!json_is_array(keys) || json_array_size(keys) == 0)
        BAD("\"keys\" is not a non-empty array");
    nkeys = json_array_size(keys);
    if (nkeys > PHG_PHI_KEYRING_KEYS_MAX)
        BAD("too many keys");
    rc = reserve(kr, nkeys);
    if (rc != PHG_OK)
        goto out;
    for (i = 0; i < nkeys; i++) {
        json_t *k = json_array_get(keys, i), *kid, *state, *created, *wrapped;
        phi_key *key = &kr->keys[kr->n];
        if (!json_is_object(k) || !only_members(k, key_members, 4))
            BAD("a key is not an object of kid, state, created, wrapped");
        kid = json_object_get(k, "kid");
        state = json_object_get(k, "state");
        created = json_object_get(k, "created");
        wrapped = json_object_get(k, "wrapped");
        if (!json_is_string(kid) || !kid_valid(json_string_value(kid)))
            BAD("a key has a missing or malformed \"kid\"");
        if (phg_internal_find_key(kr, json_string_value(kid), strlen(json_string_value(kid))))
            BAD("two keys have the same kid");
        memset(key, 0, sizeof *key);
        key->kid_len = strlen(json_string_value(kid));
        memcpy(key->kid, json_string_value(kid), key->kid_len + 1);
        if (!json_is_string(state) || !state_parse(json_string_value(state), &key->state))
            BAD("a key has a missing or unknown \"state\"");
        if (!json_is_string(created) || !parse_time(json_string_value(created), &key->created_s))
            BAD("a key has a missing or malformed \"created\" time");
        if (key->state == PHG_PHI_KEY_DESTROYED) {
            if (wrapped != NULL)
                BAD("a destroyed key still has a \"wrapped\" value");
        } else {
            if (!json_is_string(wrapped) || json_string_length(wrapped) == 0 ||
                json_string_length(wrapped) > 1024)
                BAD("a key has a missing or malformed \"wrapped\" value");
            key->wrapped = strdup(json_string_value(wrapped));
            if (key->wrapped == NULL) {
                rc = PHG_ERR_NOMEM;
                goto out;
            }
        }
        kr->n++; /* from here on, phg_keyring_free wipes it */
        if (key->state == PHG_PHI_KEY_ACTIVE)
            nactive++;
        if (strcmp(key->kid, primary) == 0) {
            primary_found = 1;
            kr->primary = i;
            if (key->state != PHG_PHI_KEY_ACTIVE)
                BAD("the primary key is not active");
        }
    }
    if (!primary_found)
        BAD("\"primary\" names no key of the keyring");
    if (nactive != 1)
        BAD("a key other than the primary is active");
    /* Only a well-formed keyring is unwrapped. */
    for (i = 0; i < kr->n; i++) {
        if (kr->keys[i].state == PHG_PHI_KEY_DESTROYED)
            continue;
        rc = unwrap_dek(&kr->mk, kr->keys[i].wrapped, kr->keys[i].dek);
        if (rc == PHG_ERR_KEYRING)
            detail = "a wrapped value does not hold a 32-byte data key";
        if (rc != PHG_OK)
            goto out;
    }
    *out = kr;
    kr = NULL;
    rc = PHG_OK;
out:
    if (why != NULL)
        *why = detail;
    json_decref(root);
    phg_keyring_free(kr);
    return rc;
}

phg_status phg_keyring_to_json(phg_keyring *kr, char **out, size_t *out_len)
{
    json_t *root = NULL, *keys = NULL;
    char *text = NULL;
    phg_status rc = PHG_ERR_NOMEM;
    size_t i;

    assert(kr != NULL && out != NULL);
    *out = NULL;
    unsigned slot = phg_internal_read_lock(kr);
    root = json_object();
    keys = json_array();
    if (root == NULL || keys == NULL)
        goto out;
    if (json_object_set_new(root, "format", json_string(KEYRING_FORMAT)) ||
        json_object_set_new(root, "version", json_integer(KEYRING_VERSION)) ||
        json_object_set_new(root, "primary", json_string(kr->keys[kr->primary].kid)))
        goto out;
    for (i = 0; i < kr->n; i++) {
        const phi_key *k = &kr->keys[i];
        char created[32];
        json_t *o = json_object();
        if (o == NULL || json_array_append_new(keys, o))
            goto out;
        format_time(k->created_s, created);
        if (json_object_set_new(o, "kid", json_string(k->kid)) ||
            json_object_set_new(o, "state", json_string(state_name(k->state))) ||
            json_object_set_new(o, "created", json_string(created)))
            goto out;
        if (k->wrapped != NULL && json_object_set_new(o, "wrapped", json_string(k->wrapped)))
            goto out;
    }
    if (json_object_set(root, "keys", keys))
        goto out;
    text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text == NULL)
        goto out;
    *out = text;
    if (out_len != NULL)
        *out_len = strlen(text);
    rc = PHG_OK;
out:
    phg_internal_read_unlock(kr, slot);
    json_decref(keys);
    json_decref(root);
    return rc;
}

/* ---- files ------------------------------------------------------------------------ */

phg_status phg_keyring_load_file(const char *path, const phg_masterkeys *mk,
                                 const phg_keyring_options *opts, phg_keyring **out,
                                 const char **why)
{
    char *buf = NULL;
    size_t len = 0;
    ssize_t got = 0;
    struct stat st;
    int fd;
    phg_status rc;

    assert(path != NULL && out != NULL);
    *out = NULL;
    if (why != NULL)
        *why = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? PHG_ERR_NOT_FOUND : PHG_ERR_IO;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return PHG_ERR_IO;
    }
    if ((uint64_t)st.st_size > PHG_PHI_KEYRING_TEXT_MAX) {
        close(fd);
        return PHG_ERR_TOO_LARGE;
    }
    buf = malloc(PHG_PHI_KEYRING_TEXT_MAX + 1);
    if (buf == NULL) {
        close(fd);
        return PHG_ERR_NOMEM;
    }
    /* Read to EOF, bounded: the size may change under us. */
    while (len <= PHG_PHI_KEYRING_TEXT_MAX) {
        got = read(fd, buf + len, PHG_PHI_KEYRING_TEXT_MAX + 1 - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    if (got < 0)
        rc = PHG_ERR_IO;
    else if (len > PHG_PHI_KEYRING_TEXT_MAX)
        rc = PHG_ERR_TOO_LARGE;
    else
        rc = phg_keyring_from_json(buf, len, mk, opts, out, why);
    phg_wipe(buf, len);
    free(buf);
    return rc;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

phg_status phg_keyring_save_file(phg_keyring *kr, const char *path)
{
    char *text = NULL, *tmp = NULL, *dir = NULL, *slash;
    size_t len = 0;
    int fd = -1, dfd;
    phg_status rc;

    assert(kr != NULL && path != NULL);
    rc = phg_keyring_to_json(kr, &text, &len);
    if (rc != PHG_OK)
        return rc;
    rc = PHG_ERR_NOMEM;
    if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0) {
        tmp = NULL;
        goto out;
    }
    dir = strdup(path);
    if (dir == NULL)
        goto out;
    rc = PHG_ERR_IO;
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        free(tmp);
        tmp = NULL;
        goto out;
    }
    if (fchmod(fd, 0600) != 0 || write_all(fd, text, len) != 0 || write_all(fd, "\n", 1) != 0 ||
        fsync(fd) != 0)
        goto out;
    if (close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto out;
    free(tmp);
    tmp = NULL;
    /* Make the rename itself durable. */
    slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    rc = PHG_OK;
out:
    if (fd >= 0)
        close(fd);
    if (tmp != NULL) {
        unlink(tmp);
        free(tmp);
    }
    free(dir);
    free(text);
    return rc;
}
