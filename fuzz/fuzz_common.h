/*
 * fuzz_common.h: a fixed keyring for the fuzz drivers, made once from a
 * constant master key (fuzzing needs determinism, not secrecy).
 */
#ifndef PHG_FUZZ_COMMON_H
#define PHG_FUZZ_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "phigate.h"

static const char fuzz_master_key[] = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

static __attribute__((unused)) phg_masterkeys *fuzz_masterkeys(void)
{
    static phg_masterkeys *mk;
    if (mk == NULL && phg_phi_masterkeys_parse(fuzz_master_key, strlen(fuzz_master_key), &mk) != PHG_OK)
        abort();
    return mk;
}

static __attribute__((unused)) phg_keyring *fuzz_keyring(void)
{
    static phg_keyring *kr;
    if (kr == NULL) {
        phg_keyring_options o;
        phg_keyring_options_init(&o);
        o.cache_entries = 8;
        if (phg_keyring_create(fuzz_masterkeys(), &o, &kr) != PHG_OK)
            abort();
    }
    return kr;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
