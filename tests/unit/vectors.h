/*
 * tests/unit/vectors.h: how unit tests read the shared test vectors.
 *
 * The vectors live outside the repository (../shared/vectors, described in its
 * README.md); CMake passes their directory in $PHG_VECTORS_DIR. A missing
 * directory or file is a test failure, never a skip: a test that silently runs
 * no vectors proves nothing.
 *
 * Every helper here aborts (after printing what went wrong to stderr) on bad
 * input, so callers need no error paths. Not for library code.
 */
#ifndef PHG_TEST_VECTORS_H
#define PHG_TEST_VECTORS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/*
 * Load $PHG_VECTORS_DIR/relpath as JSON. Aborts if the variable is unset or
 * empty, or the file is missing or not valid JSON. The caller owns the result
 * and releases it with json_decref().
 */
json_t *phg_test_load_vectors(const char *relpath);

/*
 * Decode a hex string (either case, even length, no separators) into a new
 * buffer in *out; returns its length. *out is malloc'd and never NULL, even for
 * "" (length 0); the caller frees it. Aborts on bad hex.
 */
size_t phg_test_hex(const char *hex, uint8_t **out);

/* The string member key of obj; aborts if absent or not a string. */
const char *phg_test_str(const json_t *obj, const char *key);

/* The integer member key of obj; aborts if absent or not an integer. */
long long phg_test_int(const json_t *obj, const char *key);

/* phg_test_hex() of the string member key of obj. */
size_t phg_test_hex_member(const json_t *obj, const char *key, uint8_t **out);

/* The array member key of obj; aborts if absent or not an array. Borrowed. */
json_t *phg_test_array(const json_t *obj, const char *key);

#endif /* PHG_TEST_VECTORS_H */
