/*
 * phigate/ulid.h: ULIDs, per the public ULID spec: a 48-bit millisecond
 * timestamp and 80 random bits, 16 bytes big-endian, written as 26 characters
 * of Crockford base32 (0123456789ABCDEFGHJKMNPQRSTVWXYZ). phigate uses them
 * for request ids and audit record ids: they sort by time as text.
 *
 * Monotonic: within one millisecond, each new ULID of the process is the
 * previous one plus 1 in its random part (the spec's monotonic factory), so
 * ids made by one process never repeat and always increase, from any thread.
 * If the random part would overflow within a millisecond (2^80 ids),
 * generation fails with PHG_ERR_STATE rather than break the order.
 *
 * Design: docs/formats.md ("ULID").
 */
#ifndef PHIGATE_ULID_H
#define PHIGATE_ULID_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_ULID_LEN 26   /* characters, without a NUL */
#define PHG_ULID_BYTES 16

typedef struct phg_ulid {
    uint8_t bytes[PHG_ULID_BYTES]; /* big-endian: 6 bytes of ms, 10 of randomness */
} phg_ulid;

/*
 * A new ULID for the current time (CLOCK_REALTIME, in ms), monotonic across
 * all threads of the process. Thread-safe (one process-wide mutex). If the
 * clock goes backwards, the last timestamp is kept and the random part
 * incremented, so an id is never smaller than the one before it. PHG_ERR_STATE
 * on random-part overflow within one millisecond, PHG_ERR_INTERNAL if the
 * clock or the random generator fails; *out is then unchanged.
 *
 * In a forked child the sequence starts afresh (new randomness), so workers
 * forked from one parent do not repeat each other's ids; order is promised
 * within one process only.
 */
PHG_API phg_status phg_ulid_new(phg_ulid *out);

/*
 * Same, at an explicit time (ms since the Unix epoch, at most 2^48 - 1), with
 * its own monotonic state `last` (zero it before first use: an all-zero `last`
 * means "no previous id"). For tests and for callers that keep their own
 * sequence. Not thread-safe for one `last`.
 *
 * If ms is later than last's time, the id gets fresh random bits; otherwise
 * (same ms, or an earlier one: a clock gone backwards) it is *last plus 1 in
 * the random part, keeping last's timestamp. On PHG_OK both *out and *last
 * hold the new id (out may equal last). PHG_ERR_INVALID if ms > 2^48 - 1,
 * PHG_ERR_STATE if last's random part is already all ones and ms is not later,
 * PHG_ERR_INTERNAL if the random generator fails; on failure neither *out nor
 * *last is changed.
 */
PHG_API phg_status phg_ulid_new_at(uint64_t ms, phg_ulid *last, phg_ulid *out);

/* The 26-character text, NUL-terminated, uppercase. Text order is byte order. */
PHG_API void phg_ulid_format(const phg_ulid *id, char out[PHG_ULID_LEN + 1]);

/*
 * Parse 26 characters. Case-insensitive; no look-alike fix-ups (I, L, O, U
 * are refused). PHG_ERR_INVALID for a wrong length, a character outside the
 * alphabet (including NUL), or a first character above 7 (over 128 bits); *out
 * is then zeroed. text may be NULL only if len is 0. Reads exactly len bytes;
 * text need not be NUL-terminated.
 */
PHG_API phg_status phg_ulid_parse(const char *text, size_t len, phg_ulid *out);

/* The timestamp in ms. */
PHG_API uint64_t phg_ulid_time_ms(const phg_ulid *id);

/* Shortcut: a new ULID's text (as phg_ulid_new; on failure out is ""). */
PHG_API phg_status phg_ulid_new_text(char out[PHG_ULID_LEN + 1]);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_ULID_H */
