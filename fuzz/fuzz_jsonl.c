/*
 * fuzz_jsonl.c: the JSONL record scanner and transform of encrypt-jsonl, and
 * decrypt-jsonl of its output (which must give the record back).
 */
#include "fuzz_common.h"
#include "jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static jsonl_job enc, dec;
    static int ready;
    jbuf out = {NULL, 0, 0, 64u << 20}, back = {NULL, 0, 0, 64u << 20};
    char err[256];

    if (!ready) {
        if (jsonl_job_init(&enc, fuzz_keyring(), 0, "a,b", "u={id};f={field}", err, sizeof err) ||
            jsonl_job_init(&dec, fuzz_keyring(), 1, "a,b", "u={id};f={field}", err, sizeof err))
            abort();
        ready = 1;
    }
    if (memchr(data, '\n', size) != NULL)
        return 0; /* one line per call */
    (void)jsonl_validate_value((const char *)data, size);
    if (jsonl_transform(&enc, (const char *)data, size, &out, err, sizeof err) == 0) {
        if (out.len == 0 || out.p[out.len - 1] != '\n')
            abort();
        if (jsonl_transform(&dec, out.p, out.len - 1, &back, err, sizeof err) != 0)
            abort();
    } else if (out.len != 0) {
        abort(); /* a bad record leaves nothing behind */
    }
    jbuf_free(&out);
    jbuf_free(&back);
    return 0;
}
