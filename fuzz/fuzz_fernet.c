/* fuzz_fernet.c: Fernet token verification with a fixed key. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t key[PHG_FERNET_KEY_SIZE];
    uint8_t *out = malloc(size + 1);
    size_t n = 7;
    phg_status st;
    if (phg_fernet_key_decode(fuzz_master_key, strlen(fuzz_master_key), key) != PHG_OK)
        abort();
    st = phg_fernet_decrypt(key, (const char *)data, size, 0, 0, out, size, &n);
    if (st != PHG_OK && n != 0)
        abort();
    /* keys too: only 44-character canonical base64url of 32 bytes parses */
    if (phg_fernet_key_decode((const char *)data, size, key) == PHG_OK && size != 44)
        abort();
    free(out);
    return 0;
}
