/*
 * phi_internal.h: the keyring's layout, shared by keyring.c (management,
 * JSON, files) and phi.c (field encryption and the derived-key cache).
 */
#ifndef PHG_PHI_INTERNAL_H
#define PHG_PHI_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "phigate/phi.h"

struct phg_masterkeys {
    size_t n;
    uint8_t keys[PHG_PHI_MASTER_KEYS_MAX][PHG_FERNET_KEY_SIZE];
};

typedef struct phi_key {
    char kid[PHG_PHI_KID_MAX + 1];
    size_t kid_len;
    phg_phi_key_state state;
    int64_t created_s;
    char *wrapped;                  /* Fernet token; NULL once destroyed */
    uint8_t dek[PHG_PHI_DEK_SIZE];  /* all zero once destroyed */
} phi_key;

typedef struct field_key_cache field_key_cache;

struct phg_keyring {
    /* Shared by encrypt/decrypt, exclusive for rotate/destroy/rewrap. */
    pthread_rwlock_t lock;
    phg_masterkeys mk;
    phi_key *keys;
    size_t n, cap;
    size_t primary;
    field_key_cache *cache; /* NULL when disabled */
};

/* The cache (phi.c). cache_new(0) returns NULL, meaning "no cache". */
field_key_cache *phg_internal_cache_new(size_t capacity);
void phg_internal_cache_free(field_key_cache *cache);
/* Drop every entry of one kid (the kid's DEK is being destroyed). */
void phg_internal_cache_purge_kid(field_key_cache *cache, const char *kid, size_t kid_len);

/* The key of kid, or NULL. Caller holds kr->lock. */
phi_key *phg_internal_find_key(phg_keyring *kr, const char *kid, size_t kid_len);

#endif
