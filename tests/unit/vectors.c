/*
 * tests/unit/vectors.c: the loader behind tests/unit/vectors.h.
 *
 * Failures print a line naming the file or field and abort(): a test that
 * cannot read its vectors must fail loudly, not pass having checked nothing.
 */
#include "vectors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "phg_test: %s: %s\n", what, detail);
    fflush(stderr);
    abort();
}

json_t *phg_test_load_vectors(const char *relpath)
{
    const char *dir = getenv("PHG_VECTORS_DIR");
    if (dir == NULL || dir[0] == '\0') {
        die("PHG_VECTORS_DIR is not set", "point it at the shared vectors directory");
    }
    size_t path_len = strlen(dir) + 1 + strlen(relpath) + 1;
    char *path = malloc(path_len);
    if (path == NULL) {
        die("out of memory", relpath);
    }
    snprintf(path, path_len, "%s/%s", dir, relpath);

    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (root == NULL) {
        fprintf(stderr, "phg_test: cannot load %s: %s (line %d)\n", path, err.text, err.line);
        fflush(stderr);
        free(path);
        abort();
    }
    free(path);
    return root;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

size_t phg_test_hex(const char *hex, uint8_t **out)
{
    size_t hex_len = strlen(hex);
    if (hex_len % 2 != 0) {
        die("odd-length hex", hex);
    }
    size_t n = hex_len / 2;
    /* Never NULL, so zero-length vectors can still be passed as buffers. */
    uint8_t *buf = malloc(n > 0 ? n : 1);
    if (buf == NULL) {
        die("out of memory", "phg_test_hex");
    }
    for (size_t i = 0; i < n; i++) {
        int hi = hex_nibble(hex[2 * i]);
        int lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(buf);
            die("bad hex digit", hex);
        }
        buf[i] = (uint8_t)((hi << 4) | lo);
    }
    *out = buf;
    return n;
}

const char *phg_test_str(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v)) {
        die("missing or non-string member", key);
    }
    return json_string_value(v);
}

long long phg_test_int(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v)) {
        die("missing or non-integer member", key);
    }
    return (long long)json_integer_value(v);
}

size_t phg_test_hex_member(const json_t *obj, const char *key, uint8_t **out)
{
    return phg_test_hex(phg_test_str(obj, key), out);
}

json_t *phg_test_array(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_array(v)) {
        die("missing or non-array member", key);
    }
    return v;
}
