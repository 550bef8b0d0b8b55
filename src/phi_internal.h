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

/*
 * The keyring lock is a "big reader" lock: one rwlock per slot, each on its
 * own cache line; a reader takes only its thread's slot, a writer (rotate,
 * destroy, rewrap) takes all of them in order. One shared rwlock would bounce
 * its cache line between cores on every encrypt, which measured as the
 * largest cost of a two-thread JSONL migration.
 */
#define KR_LOCK_SLOTS 16

typedef struct kr_lock_slot {
    _Alignas(64) pthread_rwlock_t lock;
} kr_lock_slot;

struct phg_keyring {
    kr_lock_slot slots[KR_LOCK_SLOTS];
    phg_masterkeys mk;
    phi_key *keys;
    size_t n, cap;
    size_t primary;
    field_key_cache *cache; /* NULL when disabled */
    struct phg_audit *audit; /* rotate, destroy, rewrap are recorded here when set */
};

/* The cache (phi.c). cache_new(0) returns NULL, meaning "no cache". */
field_key_cache *phg_internal_cache_new(size_t capacity);
void phg_internal_cache_free(field_key_cache *cache);
/* Drop every entry of one kid (the kid's DEK is being destroyed). */
void phg_internal_cache_purge_kid(field_key_cache *cache, const char *kid, size_t kid_len);

/* Reader side: returns the slot to pass to read_unlock. */
unsigned phg_internal_read_lock(phg_keyring *kr);
void phg_internal_read_unlock(phg_keyring *kr, unsigned slot);
void phg_internal_write_lock(phg_keyring *kr);
void phg_internal_write_unlock(phg_keyring *kr);

/* The key of kid, or NULL. Caller holds the keyring lock. */
phi_key *phg_internal_find_key(phg_keyring *kr, const char *kid, size_t kid_len);

#endif
