/*
 * tests/unit/test_ulid.c: include/phigate/ulid.h against the ULID vectors
 * (../shared/vectors/ulid/ulid_vectors.json, described in
 * ../shared/vectors/README.md) and against its header contract: the encoding,
 * strict parsing, the monotonic rule within a millisecond (including overflow
 * and a clock that goes backwards), and ids from several threads at once.
 *
 * Every section of the vector file is used, and each test counts the entries
 * it used and checks the count against the file, so that a section that is
 * renamed or emptied fails instead of being skipped. test_every_section_known
 * fails if the file gains a section this test does not know about.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pthread.h>
#include <regex.h>

#include <cmocka.h>

#include "phigate/crypto.h"
#include "phigate/ulid.h"
#include "vectors.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define ULID_RANDOM_CHARS 16
#define ULID_TIME_CHARS 10

static json_t *vectors;     /* the whole file, loaded once for the group */
static regex_t valid_regex; /* the file's valid_regex, compiled */

/* ---- helpers ------------------------------------------------------------------ */

static void expect_matches_regex(const char *text)
{
    EXPECT(regexec(&valid_regex, text, 0, NULL, 0) == 0, "%s does not match valid_regex", text);
}

/* Parse a string that must be valid. */
static phg_ulid parse_ok(const char *text)
{
    phg_ulid id;
    phg_status rc = phg_ulid_parse(text, strlen(text), &id);
    EXPECT(rc == PHG_OK, "parse(%s) = %d, want PHG_OK", text, (int)rc);
    return id;
}

static void expect_text(const phg_ulid *id, const char *want)
{
    char text[PHG_ULID_LEN + 1];
    phg_ulid_format(id, text);
    EXPECT(strcmp(text, want) == 0, "format gave %s, want %s", text, want);
    expect_matches_regex(text);
}

static int ulid_cmp(const void *a, const void *b)
{
    return memcmp(((const phg_ulid *)a)->bytes, ((const phg_ulid *)b)->bytes, PHG_ULID_BYTES);
}

static int all_zero(const phg_ulid *id)
{
    static const phg_ulid zero;
    return memcmp(id, &zero, sizeof zero) == 0;
}

/* Refused, with *out zeroed as the header promises. */
static void expect_refused(const char *text, size_t len)
{
    phg_ulid id;
    memset(&id, 0xa5, sizeof id);
    phg_status rc = phg_ulid_parse(text, len, &id);
    EXPECT(rc == PHG_ERR_INVALID, "parse(%.*s) = %d, want PHG_ERR_INVALID", (int)len, text,
           (int)rc);
    EXPECT(all_zero(&id), "parse(%.*s) failed but left *out non-zero", (int)len, text);
}

static size_t checked_size(const json_t *array, const char *what)
{
    EXPECT(json_is_array(array), "%s is not an array", what);
    size_t n = json_array_size(array);
    EXPECT(n > 0, "%s is empty: nothing would be tested", what);
    return n;
}

static int setup_group(void **state)
{
    (void)state;
    vectors = phg_test_load_vectors("ulid/ulid_vectors.json");
    const char *re = phg_test_str(vectors, "valid_regex");
    if (regcomp(&valid_regex, re, REG_EXTENDED | REG_NOSUB) != 0) {
        fprintf(stderr, "cannot compile valid_regex %s\n", re);
        return -1;
    }
    return 0;
}

static int teardown_group(void **state)
{
    (void)state;
    regfree(&valid_regex);
    json_decref(vectors);
    vectors = NULL;
    return 0;
}

/* ---- the file as a whole ------------------------------------------------------ */

static void test_every_section_known(void **state)
{
    static const char *const known[] = {
        "description",
        "sources",
        "alphabet",
        "alphabet_excludes",
        "case_insensitive",
        "layout",
        "valid_regex",
        "valid_regex_source",
        "max_ulid",
        "max_timestamp_ms",
        "encode_time",
        "decode_time",
        "examples",
        "binary",
        "monotonic_increment",
        "increment_base32",
        "increment_base32_source",
        "invalid",
        "lenient_fixups",
        "case_insensitive_example",
        "not_recorded",
    };
    const char *key;
    json_t *value;
    size_t seen = 0;
    (void)state;

    json_object_foreach(vectors, key, value)
    {
        int found = 0;
        (void)value;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
            if (strcmp(key, known[i]) == 0)
                found = 1;
        }
        EXPECT(found, "the vector file has a section this test does not use: %s", key);
        seen++;
    }
    assert_int_equal(seen, sizeof known / sizeof known[0]);
    EXPECT(json_is_true(json_object_get(vectors, "case_insensitive")),
           "case_insensitive should be true");
}

/* ---- alphabet, layout, regex --------------------------------------------------- */

static void test_layout(void **state)
{
    const json_t *layout = json_object_get(vectors, "layout");
    (void)state;

    EXPECT(json_is_object(layout), "layout missing");
    assert_int_equal(phg_test_int(layout, "total_chars"), PHG_ULID_LEN);
    assert_int_equal(phg_test_int(layout, "timestamp_chars"), ULID_TIME_CHARS);
    assert_int_equal(phg_test_int(layout, "randomness_chars"), ULID_RANDOM_CHARS);
    assert_int_equal(phg_test_int(layout, "timestamp_bits"), 48);
    assert_int_equal(phg_test_int(layout, "randomness_bits"), 80);
    assert_int_equal(phg_test_int(layout, "binary_bytes"), PHG_ULID_BYTES);
    assert_int_equal(sizeof(phg_ulid), PHG_ULID_BYTES);
}

/*
 * Each alphabet character, in the last position, is the digit of its index;
 * its lower case is the same digit; every other byte is refused there.
 */
static void test_alphabet(void **state)
{
    const char *alphabet = phg_test_str(vectors, "alphabet");
    json_t *excludes = phg_test_array(vectors, "alphabet_excludes");
    char text[PHG_ULID_LEN + 1];
    size_t used = 0;
    (void)state;

    assert_int_equal(strlen(alphabet), 32);
    for (int c = 0; c < 256; c++) {
        memset(text, '0', PHG_ULID_LEN);
        text[PHG_ULID_LEN] = '\0';
        text[PHG_ULID_LEN - 1] = (char)c;
        const char *hit = c == 0 ? NULL : strchr(alphabet, c >= 'a' && c <= 'z' ? c - 32 : c);
        phg_ulid id;
        memset(&id, 0xa5, sizeof id);
        phg_status rc = phg_ulid_parse(text, PHG_ULID_LEN, &id);
        if (hit == NULL) {
            EXPECT(rc == PHG_ERR_INVALID, "byte 0x%02x accepted", c);
            EXPECT(all_zero(&id), "byte 0x%02x: *out not zeroed", c);
            continue;
        }
        EXPECT(rc == PHG_OK, "alphabet character %c refused", c);
        for (size_t i = 0; i < PHG_ULID_BYTES - 1; i++)
            assert_int_equal(id.bytes[i], 0);
        assert_int_equal(id.bytes[PHG_ULID_BYTES - 1], hit - alphabet);
        /* format writes the upper-case digit back */
        phg_ulid_format(&id, text);
        assert_int_equal(text[PHG_ULID_LEN - 1], *hit);
    }

    size_t n = checked_size(excludes, "alphabet_excludes");
    for (size_t i = 0; i < n; i++) {
        const char *ex = json_string_value(json_array_get(excludes, i));
        EXPECT(ex != NULL && strlen(ex) == 1, "alphabet_excludes[%zu] is not one character", i);
        EXPECT(strchr(alphabet, ex[0]) == NULL, "%s is both in and out of the alphabet", ex);
        /* refused in every position, in both cases */
        for (size_t pos = 0; pos < PHG_ULID_LEN; pos++) {
            memset(text, '0', PHG_ULID_LEN);
            text[pos] = ex[0];
            expect_refused(text, PHG_ULID_LEN);
            text[pos] = (char)(ex[0] + 32);
            expect_refused(text, PHG_ULID_LEN);
        }
        used++;
    }
    assert_int_equal(used, n);
    assert_int_equal(used, 4);
}

/* ---- encode / decode ------------------------------------------------------------ */

static void test_encode_time(void **state)
{
    json_t *cases = phg_test_array(vectors, "encode_time");
    size_t n = checked_size(cases, "encode_time");
    size_t used = 0;
    (void)state;

    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(cases, i);
        uint64_t ms = (uint64_t)phg_test_int(c, "timestamp_ms");
        const char *prefix = phg_test_str(c, "prefix");
        phg_ulid last = {{0}};
        phg_ulid id;
        char text[PHG_ULID_LEN + 1];

        assert_int_equal(strlen(prefix), ULID_TIME_CHARS);
        assert_int_equal(phg_ulid_new_at(ms, &last, &id), PHG_OK);
        phg_ulid_format(&id, text);
        EXPECT(strncmp(text, prefix, ULID_TIME_CHARS) == 0, "%llu encoded as %s, want %s...",
               (unsigned long long)ms, text, prefix);
        expect_matches_regex(text);
        assert_int_equal(phg_ulid_time_ms(&id), ms);
        /* and back: the prefix alone, padded with any random part, decodes to ms */
        memcpy(text + ULID_TIME_CHARS, "ZZZZZZZZZZZZZZZZ", ULID_RANDOM_CHARS);
        phg_ulid back = parse_ok(text);
        assert_int_equal(phg_ulid_time_ms(&back), ms);
        used++;
    }
    assert_int_equal(used, n);
}

/*
 * not_recorded: the file explains that 150000 ms encodes as 0000004JFG and that
 * the upstream README's 000XAL6S41... is wrong (it contains L). Both facts are
 * in prose there, so they are written out here.
 */
static void test_not_recorded_note(void **state)
{
    const char *note = phg_test_str(vectors, "not_recorded");
    phg_ulid last = {{0}};
    phg_ulid id;
    char text[PHG_ULID_LEN + 1];
    (void)state;

    EXPECT(strstr(note, "0000004JFG") != NULL, "not_recorded no longer names 0000004JFG");
    assert_int_equal(phg_ulid_new_at(150000, &last, &id), PHG_OK);
    phg_ulid_format(&id, text);
    EXPECT(strncmp(text, "0000004JFG", ULID_TIME_CHARS) == 0, "150000 encoded as %s", text);
    expect_refused("000XAL6S410000000000000000", PHG_ULID_LEN);
}

/* decode_time[] and examples[] both give (ulid, timestamp_ms). */
static size_t check_decode_list(const char *section)
{
    json_t *cases = phg_test_array(vectors, section);
    size_t n = checked_size(cases, section);
    size_t used = 0;

    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(cases, i);
        const char *text = phg_test_str(c, "ulid");
        uint64_t ms = (uint64_t)phg_test_int(c, "timestamp_ms");
        phg_ulid id = parse_ok(text);
        EXPECT(phg_ulid_time_ms(&id) == ms, "%s: %s decodes to %llu, want %llu", section, text,
               (unsigned long long)phg_ulid_time_ms(&id), (unsigned long long)ms);
        expect_text(&id, text);
        used++;
    }
    assert_int_equal(used, n);
    return used;
}

static void test_decode_time(void **state)
{
    (void)state;
    assert_int_equal(check_decode_list("decode_time"), 2);
    assert_int_equal(check_decode_list("examples"), 1);
}

static void test_binary(void **state)
{
    json_t *cases = phg_test_array(vectors, "binary");
    size_t n = checked_size(cases, "binary");
    size_t used = 0;
    (void)state;

    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(cases, i);
        const char *text = phg_test_str(c, "ulid");
        const char *uuid = phg_test_str(c, "uuid");
        uint64_t ms = (uint64_t)phg_test_int(c, "timestamp_ms");
        uint8_t *bytes = NULL;
        size_t len = phg_test_hex_member(c, "bytes", &bytes);
        char uuid_hex[2 * PHG_ULID_BYTES + 1];
        size_t k = 0;

        assert_int_equal(len, PHG_ULID_BYTES);
        /* text -> bytes */
        phg_ulid id = parse_ok(text);
        assert_memory_equal(id.bytes, bytes, PHG_ULID_BYTES);
        /* bytes -> text */
        phg_ulid from_bytes;
        memcpy(from_bytes.bytes, bytes, PHG_ULID_BYTES);
        expect_text(&from_bytes, text);
        assert_int_equal(phg_ulid_time_ms(&from_bytes), ms);
        /* the UUID spelling is the same 16 bytes */
        for (const char *p = uuid; *p != '\0'; p++) {
            if (*p == '-')
                continue;
            assert_true(k < sizeof uuid_hex - 1);
            uuid_hex[k++] = *p;
        }
        uuid_hex[k] = '\0';
        uint8_t *uuid_bytes = NULL;
        assert_int_equal(phg_test_hex(uuid_hex, &uuid_bytes), PHG_ULID_BYTES);
        assert_memory_equal(uuid_bytes, bytes, PHG_ULID_BYTES);
        free(uuid_bytes);
        free(bytes);
        used++;
    }
    assert_int_equal(used, n);
    assert_int_equal(used, 4);
}

static void test_max(void **state)
{
    const char *max_text = phg_test_str(vectors, "max_ulid");
    uint64_t max_ms = (uint64_t)phg_test_int(vectors, "max_timestamp_ms");
    phg_ulid all_ones;
    phg_ulid last = {{0}};
    phg_ulid id;
    char text[PHG_ULID_LEN + 1];
    (void)state;

    assert_int_equal(max_ms, (UINT64_C(1) << 48) - 1);
    memset(all_ones.bytes, 0xff, PHG_ULID_BYTES);
    phg_ulid max = parse_ok(max_text);
    assert_memory_equal(max.bytes, all_ones.bytes, PHG_ULID_BYTES);
    expect_text(&all_ones, max_text);
    assert_int_equal(phg_ulid_time_ms(&max), max_ms);

    /* the largest time is accepted and encodes as 7ZZZZZZZZZ */
    assert_int_equal(phg_ulid_new_at(max_ms, &last, &id), PHG_OK);
    assert_int_equal(phg_ulid_time_ms(&id), max_ms);
    phg_ulid_format(&id, text);
    EXPECT(strncmp(text, max_text, ULID_TIME_CHARS) == 0, "max time encoded as %s", text);

    /* one more is refused and changes nothing */
    phg_ulid before_last = last;
    phg_ulid out = id;
    assert_int_equal(phg_ulid_new_at(max_ms + 1, &last, &out), PHG_ERR_INVALID);
    assert_memory_equal(&last, &before_last, sizeof last);
    assert_memory_equal(&out, &id, sizeof out);
    assert_int_equal(phg_ulid_new_at(UINT64_MAX, &last, &out), PHG_ERR_INVALID);

    /* the max id itself cannot be followed within its millisecond */
    last = max;
    assert_int_equal(phg_ulid_new_at(max_ms, &last, &out), PHG_ERR_STATE);
    assert_memory_equal(&last, &max, sizeof last);
}

/* ---- the monotonic rule ---------------------------------------------------------- */

/* Walk a same-millisecond list with phg_ulid_new_at: each entry follows the last. */
static size_t walk_sequence(const json_t *seq, const char *what, phg_ulid *last)
{
    size_t n = checked_size(seq, what);
    const char *first = json_string_value(json_array_get(seq, 0));
    EXPECT(first != NULL, "%s[0] is not a string", what);
    *last = parse_ok(first);
    uint64_t ms = phg_ulid_time_ms(last);

    for (size_t i = 1; i < n; i++) {
        const char *want = json_string_value(json_array_get(seq, i));
        EXPECT(want != NULL, "%s[%zu] is not a string", what, i);
        phg_ulid prev = *last;
        phg_ulid id;
        assert_int_equal(phg_ulid_new_at(ms, last, &id), PHG_OK);
        expect_text(&id, want);
        assert_memory_equal(last, &id, sizeof id);
        assert_true(ulid_cmp(&prev, &id) < 0);
    }
    return n;
}

static void test_monotonic_sequence(void **state)
{
    const json_t *mono = json_object_get(vectors, "monotonic_increment");
    phg_ulid last;
    (void)state;

    EXPECT(json_is_object(mono), "monotonic_increment missing");
    assert_int_equal(walk_sequence(phg_test_array(mono, "sequence"), "sequence", &last), 4);
}

static void test_monotonic_sequence_end(void **state)
{
    const json_t *mono = json_object_get(vectors, "monotonic_increment");
    phg_ulid last;
    phg_ulid out;
    (void)state;

    EXPECT(json_is_object(mono), "monotonic_increment missing");
    EXPECT(strcmp(phg_test_str(mono, "after_sequence_end"), "error") == 0,
           "after_sequence_end is not \"error\"");
    assert_int_equal(walk_sequence(phg_test_array(mono, "sequence_end"), "sequence_end", &last), 3);

    /* all-Z randomness: the next id in that millisecond is an error ... */
    uint64_t ms = phg_ulid_time_ms(&last);
    phg_ulid saved = last;
    memset(&out, 0x5a, sizeof out);
    phg_ulid out_before = out;
    assert_int_equal(phg_ulid_new_at(ms, &last, &out), PHG_ERR_STATE);
    assert_memory_equal(&last, &saved, sizeof last);
    assert_memory_equal(&out, &out_before, sizeof out);
    /* ... and stays one (also for an earlier clock) ... */
    assert_int_equal(phg_ulid_new_at(ms, &last, &out), PHG_ERR_STATE);
    assert_int_equal(phg_ulid_new_at(ms - 1, &last, &out), PHG_ERR_STATE);
    /* ... until the next millisecond, which starts afresh and is greater. */
    assert_int_equal(phg_ulid_new_at(ms + 1, &last, &out), PHG_OK);
    assert_int_equal(phg_ulid_time_ms(&out), ms + 1);
    assert_true(ulid_cmp(&saved, &out) < 0);
}

/*
 * increment_base32[]: {in, out} of the JS library's base32 increment, on short
 * strings. Through this API the incremented field is the 16-character random
 * part, so each `in` is placed at its right end behind '0's, and the id that
 * follows in the same millisecond must end in `out` behind the same '0's.
 * `out: null` (an increment that runs out of digits) maps to the random part
 * being all Z: the padding is then 'Z' as well and the result PHG_ERR_STATE.
 * Behind '0's that same `in` carries into the padding instead.
 */
static void test_increment_base32(void **state)
{
    json_t *cases = phg_test_array(vectors, "increment_base32");
    size_t n = checked_size(cases, "increment_base32");
    static const char prefix[] = "01BX5ZZKBK"; /* any time will do */
    size_t used = 0;
    size_t errors = 0;
    (void)state;

    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(cases, i);
        const char *in = phg_test_str(c, "in");
        const json_t *out_json = json_object_get(c, "out");
        size_t in_len = strlen(in);
        char text[PHG_ULID_LEN + 1];
        char want[PHG_ULID_LEN + 1];
        phg_ulid last;
        phg_ulid id;

        assert_true(in_len >= 1 && in_len <= ULID_RANDOM_CHARS);
        memcpy(text, prefix, ULID_TIME_CHARS);
        memset(text + ULID_TIME_CHARS, '0', ULID_RANDOM_CHARS);
        memcpy(text + PHG_ULID_LEN - in_len, in, in_len);
        text[PHG_ULID_LEN] = '\0';
        last = parse_ok(text);
        uint64_t ms = phg_ulid_time_ms(&last);

        if (json_is_string(out_json)) {
            const char *out = json_string_value(out_json);
            assert_int_equal(strlen(out), in_len);
            memcpy(want, text, sizeof want);
            memcpy(want + PHG_ULID_LEN - in_len, out, in_len);
            assert_int_equal(phg_ulid_new_at(ms, &last, &id), PHG_OK);
            expect_text(&id, want);
        } else {
            EXPECT(json_is_null(out_json), "increment_base32[%zu].out is neither string nor null",
                   i);
            /* behind '0's: carries into the padding, "0...0ZZZ" + 1 = "0...1000" */
            memcpy(want, text, sizeof want);
            memset(want + PHG_ULID_LEN - in_len, '0', in_len);
            want[PHG_ULID_LEN - in_len - 1] = '1';
            assert_int_equal(phg_ulid_new_at(ms, &last, &id), PHG_OK);
            expect_text(&id, want);
            /* behind 'Z's: the whole random part is Z, the error of the vector */
            memset(text + ULID_TIME_CHARS, 'Z', ULID_RANDOM_CHARS - in_len);
            last = parse_ok(text);
            phg_ulid saved = last;
            assert_int_equal(phg_ulid_new_at(ms, &last, &id), PHG_ERR_STATE);
            assert_memory_equal(&last, &saved, sizeof last);
            errors++;
        }
        used++;
    }
    assert_int_equal(used, n);
    assert_int_equal(used, 4);
    assert_int_equal(errors, 1);
}

static void test_clock_backwards(void **state)
{
    phg_ulid last = {{0}};
    phg_ulid a;
    phg_ulid b;
    phg_ulid c;
    const uint64_t t = UINT64_C(1742844753100);
    (void)state;

    assert_int_equal(phg_ulid_new_at(t, &last, &a), PHG_OK);
    /* the clock steps back 5 s: the id keeps time t and is a + 1 */
    assert_int_equal(phg_ulid_new_at(t - 5000, &last, &b), PHG_OK);
    assert_true(ulid_cmp(&a, &b) < 0);
    assert_int_equal(phg_ulid_time_ms(&b), t);
    phg_ulid a_plus_1 = a;
    for (int i = PHG_ULID_BYTES - 1; i >= 6; i--) {
        if (++a_plus_1.bytes[i] != 0)
            break;
    }
    assert_memory_equal(&b, &a_plus_1, sizeof b);
    /* still behind: still increasing */
    assert_int_equal(phg_ulid_new_at(t - 1, &last, &c), PHG_OK);
    assert_true(ulid_cmp(&b, &c) < 0);
    assert_int_equal(phg_ulid_time_ms(&c), t);
    /* the clock catches up: fresh randomness at the new time, still greater */
    assert_int_equal(phg_ulid_new_at(t + 1, &last, &a), PHG_OK);
    assert_int_equal(phg_ulid_time_ms(&a), t + 1);
    assert_true(ulid_cmp(&c, &a) < 0);
    /* out may be last itself */
    assert_int_equal(phg_ulid_new_at(t, &last, &last), PHG_OK);
    assert_true(ulid_cmp(&a, &last) < 0);
}

/* A later millisecond draws new random bits: not simply last + 1. */
static void test_new_millisecond_is_random(void **state)
{
    phg_ulid last = {{0}};
    phg_ulid a;
    phg_ulid b;
    size_t same_random = 0;
    (void)state;

    for (uint64_t ms = 1000; ms < 1100; ms++) {
        assert_int_equal(phg_ulid_new_at(ms, &last, &a), PHG_OK);
        assert_int_equal(phg_ulid_new_at(ms + 1000, &last, &b), PHG_OK);
        if (memcmp(a.bytes + 6, b.bytes + 6, 10) == 0)
            same_random++;
        /* a zeroed last starts a sequence with random bits too */
        memset(&last, 0, sizeof last);
    }
    assert_int_equal(same_random, 0);
    /* at time 0 as well: a zero state is "no previous id", not id 0 */
    assert_int_equal(phg_ulid_new_at(0, &last, &a), PHG_OK);
    assert_int_equal(phg_ulid_time_ms(&a), 0);
    phg_ulid one = {{0}};
    one.bytes[PHG_ULID_BYTES - 1] = 1;
    assert_true(memcmp(&a, &one, sizeof a) != 0);
}

/* ---- parsing ------------------------------------------------------------------------ */

static void test_invalid(void **state)
{
    json_t *cases = phg_test_array(vectors, "invalid");
    size_t n = checked_size(cases, "invalid");
    size_t used = 0;
    (void)state;

    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(cases, i);
        const char *s = phg_test_str(c, "s");
        (void)phg_test_str(c, "reason");
        expect_refused(s, strlen(s));
        used++;
    }
    assert_int_equal(used, n);
    assert_int_equal(used, 4);
}

/* lenient_fixups: this parser does no fix-ups, so `in` is refused and `out` accepted. */
static void test_no_lenient_fixups(void **state)
{
    const json_t *fix = json_object_get(vectors, "lenient_fixups");
    size_t used = 0;
    (void)state;

    EXPECT(json_is_object(fix), "lenient_fixups missing");
    json_t *cases = phg_test_array(fix, "cases");
    size_t n = checked_size(cases, "lenient_fixups.cases");
    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(cases, i);
        const char *in = phg_test_str(c, "in");
        const char *out = phg_test_str(c, "out");
        expect_refused(in, strlen(in));
        phg_ulid id = parse_ok(out);
        expect_text(&id, out);
        used++;
    }
    assert_int_equal(used, n);
    assert_int_equal(used, 1);
}

static void test_case_insensitive(void **state)
{
    const json_t *ex = json_object_get(vectors, "case_insensitive_example");
    char mixed[PHG_ULID_LEN + 1];
    (void)state;

    EXPECT(json_is_object(ex), "case_insensitive_example missing");
    const char *in = phg_test_str(ex, "in");
    const char *equals = phg_test_str(ex, "equals");
    phg_ulid lower = parse_ok(in);
    phg_ulid upper = parse_ok(equals);
    assert_memory_equal(&lower, &upper, sizeof lower);
    expect_text(&lower, equals); /* format is always upper case */

    /* mixed case as well */
    assert_int_equal(strlen(equals), PHG_ULID_LEN);
    for (size_t i = 0; i <= PHG_ULID_LEN; i++)
        mixed[i] = (char)(i % 2 ? in[i] : equals[i]);
    phg_ulid m = parse_ok(mixed);
    assert_memory_equal(&m, &upper, sizeof m);
}

static void test_parse_bad_inputs(void **state)
{
    const char *good = "01ARYZ6S41TSV4RRFFQ69G5FAV";
    char text[PHG_ULID_LEN + 2];
    (void)state;

    /* every length but 26, including 0 with NULL */
    expect_refused(NULL, 0);
    for (size_t len = 0; len <= PHG_ULID_LEN + 1; len++) {
        memset(text, '0', sizeof text);
        if (len != PHG_ULID_LEN)
            expect_refused(text, len);
    }
    /* len is what counts, not a NUL: the first 26 of 27 characters parse */
    memcpy(text, good, PHG_ULID_LEN);
    text[PHG_ULID_LEN] = 'X';
    parse_ok(good);
    phg_ulid id;
    assert_int_equal(phg_ulid_parse(text, PHG_ULID_LEN, &id), PHG_OK);
    /* a first character above 7 needs more than 128 bits */
    const char *alphabet = phg_test_str(vectors, "alphabet");
    for (size_t v = 0; v < 32; v++) {
        memcpy(text, good, PHG_ULID_LEN);
        text[0] = alphabet[v];
        if (v < 8) {
            assert_int_equal(phg_ulid_parse(text, PHG_ULID_LEN, &id), PHG_OK);
        } else {
            expect_refused(text, PHG_ULID_LEN);
            text[0] = (char)(text[0] | 0x20); /* and in lower case */
            expect_refused(text, PHG_ULID_LEN);
        }
    }
    /* an embedded NUL, a space, a sign, a dash */
    static const char bad_chars[] = {'\0', ' ', '+', '-', '\n', (char)0x80, (char)0xff};
    for (size_t i = 0; i < sizeof bad_chars; i++) {
        for (size_t pos = 0; pos < PHG_ULID_LEN; pos += 5) {
            memcpy(text, good, PHG_ULID_LEN);
            text[pos] = bad_chars[i];
            expect_refused(text, PHG_ULID_LEN);
        }
    }
}

/*
 * Property tests on random ids: format then parse is the identity, the text
 * matches valid_regex, text order is byte order, and changing one character
 * of the text changes the id.
 */
static void test_random_round_trips(void **state)
{
    enum { N = 5000 };
    phg_ulid prev = {{0}};
    char prev_text[PHG_ULID_LEN + 1];
    const char *alphabet = phg_test_str(vectors, "alphabet");
    (void)state;

    phg_ulid_format(&prev, prev_text);
    assert_string_equal(prev_text, "00000000000000000000000000");
    for (int i = 0; i < N; i++) {
        phg_ulid id;
        char text[PHG_ULID_LEN + 1];
        assert_int_equal(phg_random_bytes(id.bytes, sizeof id.bytes), PHG_OK);
        phg_ulid_format(&id, text);
        assert_int_equal(strlen(text), PHG_ULID_LEN);
        expect_matches_regex(text);
        phg_ulid back = parse_ok(text);
        assert_memory_equal(&back, &id, sizeof id);

        int byte_order = ulid_cmp(&prev, &id);
        int text_order = strcmp(prev_text, text);
        assert_true((byte_order < 0) == (text_order < 0));
        assert_true((byte_order == 0) == (text_order == 0));

        size_t pos = (size_t)i % PHG_ULID_LEN;
        char old = text[pos];
        const char *digit = strchr(alphabet, old);
        assert_non_null(digit);
        size_t limit = pos == 0 ? 8 : 32;
        text[pos] = alphabet[((size_t)(digit - alphabet) + 1) % limit];
        phg_ulid changed = parse_ok(text);
        assert_true(memcmp(&changed, &id, sizeof id) != 0);

        prev = id;
        phg_ulid_format(&prev, prev_text);
    }
}

/* ---- the process-wide generator ----------------------------------------------------- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    assert_int_equal(clock_gettime(CLOCK_REALTIME, &ts), 0);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void test_new(void **state)
{
    phg_ulid a;
    phg_ulid b;
    char text[PHG_ULID_LEN + 1];
    (void)state;

    uint64_t before = wall_ms();
    assert_int_equal(phg_ulid_new(&a), PHG_OK);
    assert_int_equal(phg_ulid_new(&b), PHG_OK);
    uint64_t after = wall_ms();
    assert_true(ulid_cmp(&a, &b) < 0);
    /* the state may run ahead of the clock only if the clock went back: allow 1 s */
    assert_true(phg_ulid_time_ms(&a) + 1000 >= before);
    assert_true(phg_ulid_time_ms(&b) <= after + 1000);

    memset(text, 'x', sizeof text);
    assert_int_equal(phg_ulid_new_text(text), PHG_OK);
    assert_int_equal(strlen(text), PHG_ULID_LEN);
    expect_matches_regex(text);
    phg_ulid c = parse_ok(text);
    assert_true(ulid_cmp(&b, &c) < 0);
}

#define THREADS 4
#define IDS_TOTAL 100000
#define IDS_PER_THREAD (IDS_TOTAL / THREADS)

struct worker {
    phg_ulid *ids; /* IDS_PER_THREAD of them */
    size_t made;
    phg_status rc;
};

/* No cmocka calls here: its failures longjmp and belong to the main thread. */
static void *worker_run(void *arg)
{
    struct worker *w = arg;
    for (size_t i = 0; i < IDS_PER_THREAD; i++) {
        w->rc = phg_ulid_new(&w->ids[i]);
        if (w->rc != PHG_OK)
            break;
        w->made++;
    }
    return NULL;
}

static int text_cmp(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_threads(void **state)
{
    struct worker workers[THREADS];
    pthread_t threads[THREADS];
    phg_ulid *all = calloc(IDS_TOTAL, sizeof *all);
    char(*texts)[PHG_ULID_LEN + 1] = calloc(IDS_TOTAL, sizeof *texts);
    (void)state;

    assert_non_null(all);
    assert_non_null(texts);
    for (size_t t = 0; t < THREADS; t++) {
        workers[t].ids = all + t * IDS_PER_THREAD;
        workers[t].made = 0;
        workers[t].rc = PHG_OK;
        assert_int_equal(pthread_create(&threads[t], NULL, worker_run, &workers[t]), 0);
    }
    for (size_t t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(threads[t], NULL), 0);

    /* each thread's ids strictly increase */
    for (size_t t = 0; t < THREADS; t++) {
        assert_int_equal(workers[t].rc, PHG_OK);
        assert_int_equal(workers[t].made, IDS_PER_THREAD);
        for (size_t i = 1; i < IDS_PER_THREAD; i++)
            EXPECT(ulid_cmp(&workers[t].ids[i - 1], &workers[t].ids[i]) < 0,
                   "thread %zu: id %zu is not greater than id %zu", t, i, i - 1);
    }

    /* all distinct, and sorting as text gives the same order as sorting as bytes */
    for (size_t i = 0; i < IDS_TOTAL; i++)
        phg_ulid_format(&all[i], texts[i]);
    qsort(all, IDS_TOTAL, sizeof *all, ulid_cmp);
    qsort(texts, IDS_TOTAL, sizeof *texts, text_cmp);
    for (size_t i = 0; i < IDS_TOTAL; i++) {
        char text[PHG_ULID_LEN + 1];
        if (i > 0)
            EXPECT(ulid_cmp(&all[i - 1], &all[i]) < 0, "duplicate id at sorted position %zu", i);
        phg_ulid_format(&all[i], text);
        EXPECT(strcmp(text, texts[i]) == 0, "text order differs from byte order at %zu", i);
    }
    free(texts);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_section_known),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_alphabet),
        cmocka_unit_test(test_encode_time),
        cmocka_unit_test(test_not_recorded_note),
        cmocka_unit_test(test_decode_time),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_max),
        cmocka_unit_test(test_monotonic_sequence),
        cmocka_unit_test(test_monotonic_sequence_end),
        cmocka_unit_test(test_increment_base32),
        cmocka_unit_test(test_clock_backwards),
        cmocka_unit_test(test_new_millisecond_is_random),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_no_lenient_fixups),
        cmocka_unit_test(test_case_insensitive),
        cmocka_unit_test(test_parse_bad_inputs),
        cmocka_unit_test(test_random_round_trips),
        cmocka_unit_test(test_new),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup_group, teardown_group);
}
