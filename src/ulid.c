/*
 * ulid.c: ULIDs (include/phigate/ulid.h): a 48-bit millisecond timestamp and
 * 80 random bits, written as 26 characters of Crockford base32, made
 * monotonic within a millisecond as the public ULID spec's monotonic factory.
 *
 * It does not do the look-alike fix-ups some ULID libraries offer (I/L -> 1,
 * O -> 0, dropping '-'): an id that is not already canonical, up to case, is
 * refused, so every id has one spelling up to case.
 *
 * Design: docs/formats.md ("ULID"); the public spec is github.com/ulid/spec.
 */
#include <assert.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "phigate/crypto.h"
#include "phigate/ulid.h"

#define TIME_BYTES 6
#define RANDOM_BYTES (PHG_ULID_BYTES - TIME_BYTES) /* 10 bytes = 80 bits */
#define TIME_MAX_MS ((UINT64_C(1) << 48) - 1)

static const char alphabet[32] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/*
 * The process-wide state of phg_ulid_new(): the last id it returned. All of it
 * is guarded by state_lock. ULIDs are made about once per request, so a plain
 * mutex costs nothing measurable and is simpler to get right than a 128-bit
 * compare-and-swap.
 *
 * In a forked child the state is zeroed (and the lock released), so that a
 * prefork server's workers do not all continue the parent's sequence and
 * hand out the same ids in the same millisecond.
 */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static phg_ulid state_last;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
    pthread_mutex_lock(&state_lock);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&state_lock);
}

static void fork_child(void)
{
    memset(&state_last, 0, sizeof state_last);
    pthread_mutex_unlock(&state_lock);
}

static void register_fork_handlers(void)
{
    /* Failure (ENOMEM at start-up) only loses the fork reset, as in crypto.c. */
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void set_time(phg_ulid *id, uint64_t ms)
{
    for (int i = TIME_BYTES - 1; i >= 0; i--) {
        id->bytes[i] = (uint8_t)(ms & 0xff);
        ms >>= 8;
    }
}

static int is_zero(const phg_ulid *id)
{
    for (size_t i = 0; i < PHG_ULID_BYTES; i++) {
        if (id->bytes[i] != 0)
            return 0;
    }
    return 1;
}

/*
 * Add 1 to the random part, big-endian, with carry. Returns 0 if it was all
 * ones: it has then wrapped to zero, and the caller must discard the id.
 */
static int increment_random(phg_ulid *id)
{
    for (int i = PHG_ULID_BYTES - 1; i >= TIME_BYTES; i--) {
        id->bytes[i]++;
        if (id->bytes[i] != 0)
            return 1;
    }
    return 0;
}

uint64_t phg_ulid_time_ms(const phg_ulid *id)
{
    uint64_t ms = 0;

    assert(id != NULL);
    for (size_t i = 0; i < TIME_BYTES; i++)
        ms = ms << 8 | id->bytes[i];
    return ms;
}

phg_status phg_ulid_new_at(uint64_t ms, phg_ulid *last, phg_ulid *out)
{
    phg_ulid next;
    phg_status rc;

    assert(last != NULL && out != NULL);
    if (ms > TIME_MAX_MS) {
        rc = PHG_ERR_INVALID;
        goto out;
    }
    if (is_zero(last) || ms > phg_ulid_time_ms(last)) {
        /* A new millisecond (or no previous id): fresh randomness. */
        set_time(&next, ms);
        rc = phg_random_bytes(next.bytes + TIME_BYTES, RANDOM_BYTES);
        if (rc != PHG_OK)
            goto out;
    } else {
        /*
         * The same millisecond, or the clock went backwards: keep the last
         * timestamp and add 1, so the new id is still greater than every
         * earlier one. Running out is an error, never a wrap.
         */
        next = *last;
        if (!increment_random(&next)) { /* next is discarded; *last is untouched */
            rc = PHG_ERR_STATE;
            goto out;
        }
    }
    /* last and out may be the same object: both are written from next. */
    *last = next;
    *out = next;
    rc = PHG_OK;
out:
    return rc;
}

/* CLOCK_REALTIME in ms; a clock before 1970 reads as 0 (the state keeps order). */
static phg_status now_ms(uint64_t *ms)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return PHG_ERR_INTERNAL;
    if (ts.tv_sec < 0) {
        *ms = 0;
        return PHG_OK;
    }
    *ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return PHG_OK;
}

phg_status phg_ulid_new(phg_ulid *out)
{
    uint64_t ms = 0;
    phg_status rc;

    assert(out != NULL);
    pthread_once(&fork_once, register_fork_handlers);
    /*
     * Read the clock inside the lock: a thread that read an earlier time but
     * took the lock later would otherwise only fall back to incrementing,
     * which is correct but wastes the random part's room.
     */
    pthread_mutex_lock(&state_lock);
    rc = now_ms(&ms);
    if (rc != PHG_OK)
        goto out;
    if (ms > TIME_MAX_MS)
        ms = TIME_MAX_MS; /* the year 10889: ids still increase until the state runs out */
    rc = phg_ulid_new_at(ms, &state_last, out);
out:
    pthread_mutex_unlock(&state_lock);
    return rc;
}

phg_status phg_ulid_new_text(char out[PHG_ULID_LEN + 1])
{
    phg_ulid id;
    phg_status rc;

    assert(out != NULL);
    rc = phg_ulid_new(&id);
    if (rc != PHG_OK) {
        out[0] = '\0';
        return rc;
    }
    phg_ulid_format(&id, out);
    return PHG_OK;
}

/*
 * The 128-bit value is read as 130 bits with two leading zeros, so the first
 * character carries 3 bits and each of the other 25 carries 5. The value is
 * kept as two 64-bit halves (hi, lo) to stay within C17.
 */
void phg_ulid_format(const phg_ulid *id, char out[PHG_ULID_LEN + 1])
{
    uint64_t hi = 0;
    uint64_t lo = 0;

    assert(id != NULL && out != NULL);
    for (size_t i = 0; i < 8; i++) {
        hi = hi << 8 | id->bytes[i];
        lo = lo << 8 | id->bytes[8 + i];
    }
    for (int i = PHG_ULID_LEN - 1; i >= 0; i--) {
        out[i] = alphabet[lo & 0x1f];
        lo = lo >> 5 | hi << 59;
        hi >>= 5;
    }
    out[PHG_ULID_LEN] = '\0';
}

/* The value of one character, either case, or -1 outside the alphabet. */
static int char_value(unsigned char c)
{
    if (c >= 'a' && c <= 'z')
        c = (unsigned char)(c - 'a' + 'A');
    for (int v = 0; v < 32; v++) {
        if ((unsigned char)alphabet[v] == c)
            return v;
    }
    return -1;
}

phg_status phg_ulid_parse(const char *text, size_t len, phg_ulid *out)
{
    uint64_t hi = 0;
    uint64_t lo = 0;
    phg_status rc = PHG_ERR_INVALID;

    assert(out != NULL && (text != NULL || len == 0));
    if (len != PHG_ULID_LEN)
        goto out;
    for (size_t i = 0; i < PHG_ULID_LEN; i++) {
        int v = char_value((unsigned char)text[i]);
        if (v < 0)
            goto out;
        /* More than 3 bits in the first character would need bit 128 or 129. */
        if (i == 0 && v > 7)
            goto out;
        hi = hi << 5 | lo >> 59;
        lo = lo << 5 | (uint64_t)v;
    }
    for (int i = 7; i >= 0; i--) {
        out->bytes[i] = (uint8_t)(hi & 0xff);
        out->bytes[8 + i] = (uint8_t)(lo & 0xff);
        hi >>= 8;
        lo >>= 8;
    }
    rc = PHG_OK;
out:
    if (rc != PHG_OK)
        memset(out, 0, sizeof *out);
    return rc;
}
