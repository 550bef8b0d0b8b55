/* fuzz_keyring.c: the keyring JSON loader. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    phg_keyring *kr = NULL;
    const char *why = NULL;
    phg_status st = phg_keyring_from_json((const char *)data, size, fuzz_masterkeys(), NULL, &kr, &why);
    if (st == PHG_OK) {
        char *text = NULL;
        size_t len = 0;
        phg_keyring *again = NULL;
        /* what loads, saves and loads again */
        if (phg_keyring_to_json(kr, &text, &len) != PHG_OK ||
            phg_keyring_from_json(text, len, fuzz_masterkeys(), NULL, &again, NULL) != PHG_OK)
            abort();
        free(text);
        phg_keyring_free(again);
    } else if (st == PHG_ERR_KEYRING && why == NULL) {
        abort(); /* every keyring error names its rule */
    }
    phg_keyring_free(kr);
    return 0;
}
