/*
 * error.c: the sentences and names of phg_status. A switch without default,
 * so that -Werror (-Wswitch) catches a code added without its text.
 */
#include "phigate/error.h"

const char *phg_strerror(phg_status status)
{
    switch (status) {
    case PHG_OK: return "success";
    case PHG_ERR_INVALID: return "invalid argument or malformed input";
    case PHG_ERR_NOMEM: return "out of memory";
    case PHG_ERR_INTERNAL: return "internal error in the crypto library or the system";
    case PHG_ERR_IO: return "input/output error";
    case PHG_ERR_TOO_LARGE: return "input exceeds its size limit";
    case PHG_ERR_BUFFER_TOO_SMALL: return "output buffer too small";
    case PHG_ERR_NOT_FOUND: return "not found";
    case PHG_ERR_AUTH: return "decryption or authentication failed";
    case PHG_ERR_MASTER_KEY: return "master key missing, malformed, or unable to unwrap the data keys";
    case PHG_ERR_KEYRING: return "keyring unreadable, corrupt or inconsistent";
    case PHG_ERR_CONTEXT: return "encryption context must be 1 to 512 bytes";
    case PHG_ERR_FORMAT: return "not a phi v1 ciphertext";
    case PHG_ERR_STATE: return "operation not allowed in the current state";
    case PHG_ERR_BATCH: return "one or more batch items failed";
    case PHG_ERR_EXISTS: return "already exists";
    case PHG_ERR_UNAVAILABLE: return "the store or a server is unavailable";
    case PHG_ERR_SCHEMA: return "database schema is newer than this build, or inconsistent";
    case PHG_ERR_UNAUDITED: return "the change was made, but its audit record could not be written";
    }
    return "unknown status";
}

const char *phg_status_name(phg_status status)
{
    switch (status) {
    case PHG_OK: return "ok";
    case PHG_ERR_INVALID: return "invalid";
    case PHG_ERR_NOMEM: return "no_memory";
    case PHG_ERR_INTERNAL: return "internal";
    case PHG_ERR_IO: return "io";
    case PHG_ERR_TOO_LARGE: return "too_large";
    case PHG_ERR_BUFFER_TOO_SMALL: return "buffer_too_small";
    case PHG_ERR_NOT_FOUND: return "not_found";
    case PHG_ERR_AUTH: return "auth_failed";
    case PHG_ERR_MASTER_KEY: return "master_key";
    case PHG_ERR_KEYRING: return "keyring";
    case PHG_ERR_CONTEXT: return "context";
    case PHG_ERR_FORMAT: return "format";
    case PHG_ERR_STATE: return "state";
    case PHG_ERR_BATCH: return "batch_failed";
    case PHG_ERR_EXISTS: return "exists";
    case PHG_ERR_UNAVAILABLE: return "unavailable";
    case PHG_ERR_SCHEMA: return "schema";
    case PHG_ERR_UNAUDITED: return "unaudited";
    }
    return "unknown";
}

const char *phg_version(void)
{
    return PHG_VERSION;
}
