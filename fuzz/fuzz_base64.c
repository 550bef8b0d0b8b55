/* fuzz_base64.c: strict base64 decoding in all four variants; what decodes
 * re-encodes to the same text (one accepted encoding per byte string). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *out = malloc(size / 4 * 3 + 3);
    char *back = malloc(size + 4);
    int v;
    for (v = 0; v < 4; v++) {
        size_t n = 0;
        if (phg_base64_decode((const char *)data, size, out, size / 4 * 3 + 3, &n,
                              (phg_b64_variant)v) != PHG_OK)
            continue;
        if (phg_base64_encode(out, n, back, (phg_b64_variant)v) != size ||
            memcmp(back, data, size) != 0)
            abort();
    }
    free(out);
    free(back);
    return 0;
}
