/*
 * phigate/error.h: the one status type of libphigate, and the export macros.
 *
 * Every fallible function of the library returns a phg_status. The numbers are
 * part of the ABI and are never reused or renumbered: a new condition gets a
 * new number at the end. phg_strerror() gives a fixed English sentence for
 * each code; it never contains caller data, so it is safe to log or to send to
 * a client.
 *
 * Design: ../docs/formats.md (formats), DESIGN.md (security rules).
 */
#ifndef PHIGATE_ERROR_H
#define PHIGATE_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PHG_BUILDING_LIBRARY)
#define PHG_API __attribute__((visibility("default")))
#else
#define PHG_API
#endif

/* Applied to every verify and decrypt: ignoring their result is a bug. */
#define PHG_WARN_UNUSED __attribute__((warn_unused_result))

/*
 * Status codes. PHG_OK is 0; every failure is positive and stable.
 *
 * PHG_ERR_AUTH is the single answer of every authenticated decryption or
 * MAC check that fails, whatever the cause (tampered bytes, wrong context,
 * wrong or unknown key, destroyed key, truncated input): callers, logs and
 * clients cannot tell the causes apart, by design.
 */
typedef enum phg_status {
    PHG_OK = 0,
    PHG_ERR_INVALID = 1,          /* an argument or input is malformed */
    PHG_ERR_NOMEM = 2,            /* out of memory */
    PHG_ERR_INTERNAL = 3,         /* OpenSSL or the OS failed unexpectedly */
    PHG_ERR_IO = 4,               /* a file could not be read or written */
    PHG_ERR_TOO_LARGE = 5,        /* an input exceeds its documented limit */
    PHG_ERR_BUFFER_TOO_SMALL = 6, /* the output buffer cannot hold the result */
    PHG_ERR_NOT_FOUND = 7,        /* no such item (kid, file, record) */
    PHG_ERR_AUTH = 8,             /* decryption or authentication failed */
    PHG_ERR_MASTER_KEY = 9,       /* master key missing, malformed or not able to unwrap */
    PHG_ERR_KEYRING = 10,         /* keyring unreadable, corrupt or inconsistent */
    PHG_ERR_CONTEXT = 11,         /* encryption context not 1..512 bytes */
    PHG_ERR_FORMAT = 12,          /* not a phi v1 ciphertext */
    PHG_ERR_STATE = 13,           /* not allowed in the object's current state */
    PHG_ERR_BATCH = 14,           /* some items of a batch failed; see each item */
    PHG_ERR_EXISTS = 15,          /* the item exists already */
    PHG_ERR_UNAVAILABLE = 16,     /* the store (or another server) cannot be reached */
    PHG_ERR_SCHEMA = 17,          /* the database schema is newer than this build, or broken */
    PHG_ERR_UNAUDITED = 18,       /* done, but its audit record could not be written */
} phg_status;

/*
 * A fixed, static, human-readable sentence for a status. Never NULL; an
 * unknown value gives "unknown status". Thread-safe. Contains no caller data.
 */
PHG_API const char *phg_strerror(phg_status status);

/*
 * The stable, machine-readable name of a status ("ok", "invalid",
 * "auth_failed", ...), used as the `code` of JSON errors. Never NULL.
 */
PHG_API const char *phg_status_name(phg_status status);

/* The library's version string, for example "0.1.0". */
PHG_API const char *phg_version(void);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_ERROR_H */
