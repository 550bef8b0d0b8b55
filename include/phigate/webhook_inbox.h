/*
 * phigate/webhook_inbox.h: the durable inbox of verified webhooks (issue 7).
 *
 * A verified webhook becomes an event: a row of webhook_events (migration 4)
 * with phigate's own id (a ULID), its source, the replay key the verifier
 * gave (phg_webhook_result.msg_id), whether its origin is authenticated,
 * which secret matched, the signed timestamp, the content type, and the body
 * encrypted as PHI (phg_phi_encrypt under the keyring's primary key, context
 * "webhook:" + event id; formats.md section 18), never in clear.
 *
 * Writing: phg_wh_inbox_put_async hands an event to one writer thread, which
 * commits whatever is queued in one transaction (group commit, as the audit
 * writer does), durable (fsync) before the callback runs. (source, msg_id)
 * is unique: a second event with the same pair is not stored, and its
 * callback gets PHG_ERR_EXISTS with the id of the first, so the sender can
 * be given the same answer again.
 *
 * Delivering: events are PENDING until delivered (DELIVERED) or given up
 * (DEAD). phg_wh_inbox_claim leases due events (next_attempt_ms <= now) to one
 * deliverer: their next_attempt_ms moves to now + lease, so another instance
 * sharing the store (or this one after a crash) takes them again only once
 * the lease has run out (at-least-once). The deliverer then reports each
 * attempt with phg_wh_inbox_delivered, phg_wh_inbox_retry or phg_wh_inbox_dead.
 *
 * Thread safety: every function may be called from any thread; callbacks run
 * on the writer thread and must not block.
 */
#ifndef PHIGATE_WEBHOOK_INBOX_H
#define PHIGATE_WEBHOOK_INBOX_H

#include <stddef.h>
#include <stdint.h>

#include "phigate/error.h"
#include "phigate/phi.h"
#include "phigate/store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHG_WH_EVENT_ID_LEN 26         /* a ULID */
#define PHG_WH_SOURCE_MAX 64           /* as PHG_WEBHOOK_SOURCE_NAME_MAX */
#define PHG_WH_MSG_ID_MAX 256          /* as PHG_WEBHOOK_MSG_ID_MAX */
#define PHG_WH_CONTENT_TYPE_MAX 255
#define PHG_WH_ERROR_MAX 255           /* last_error text */
#define PHG_WH_INBOX_BODY_MAX (64u << 20)
#define PHG_WH_LIST_MAX 1000

typedef enum phg_wh_event_state {
    PHG_WH_EVENT_PENDING = 0,   /* "pending": waiting for (another) delivery attempt */
    PHG_WH_EVENT_DELIVERED = 1, /* "delivered": the upstream answered 2xx */
    PHG_WH_EVENT_DEAD = 2,      /* "dead": given up (attempts or age); replayable */
} phg_wh_event_state;

/* "pending", "delivered", "dead"; "unknown" otherwise. */
PHG_API const char *phg_wh_event_state_name(phg_wh_event_state s);
/* The state named name; PHG_ERR_INVALID for another name. */
PHG_API phg_status phg_wh_event_state_parse(const char *name, phg_wh_event_state *s);

/* What the gateway hands to the writer (every pointer borrowed for the call:
 * put_async copies what it keeps). */
typedef struct phg_wh_event_in {
    const char *source;       /* a valid source name */
    const char *msg_id;       /* 1..PHG_WH_MSG_ID_MAX printable ASCII */
    int authenticated;        /* 1: signature verified; 0: unsigned origin */
    int secret_index;         /* stored index of the secret that matched, -1: none */
    int64_t signed_ts_s;      /* the signed timestamp (Unix s), 0: none */
    int64_t received_ms;      /* Unix ms */
    const char *content_type; /* may be NULL ("" stored); at most PHG_WH_CONTENT_TYPE_MAX */
    const uint8_t *body;
    size_t body_len;          /* 0..PHG_WH_INBOX_BODY_MAX */
    const char *request_id;   /* the request id of the accepting request (may be NULL) */
    int64_t due_ms;           /* first due for a claim (Unix ms); 0: received_ms. A caller
                               * that delivers the event itself right away sets it a lease
                               * ahead, so no other deliverer claims it meanwhile */
} phg_wh_event_in;

/* One event as stored. body is the decrypted body (malloc'd) when read with
 * phg_wh_inbox_get or claim, NULL in lists. */
typedef struct phg_wh_event {
    char id[PHG_WH_EVENT_ID_LEN + 1];
    char source[PHG_WH_SOURCE_MAX + 1];
    char msg_id[PHG_WH_MSG_ID_MAX + 1];
    char request_id[PHG_WH_MSG_ID_MAX + 1];
    int authenticated;
    int secret_index;
    int64_t signed_ts_s;
    int64_t received_ms;
    char content_type[PHG_WH_CONTENT_TYPE_MAX + 1];
    phg_wh_event_state state;
    int64_t attempts;         /* delivery attempts made */
    int64_t next_attempt_ms;  /* pending: when it is due (or its lease ends) */
    int64_t delivered_ms;     /* 0 until delivered */
    int64_t last_attempt_ms;  /* 0: none yet */
    int last_status;          /* HTTP status of the last attempt, 0: none (no answer) */
    char last_error[PHG_WH_ERROR_MAX + 1]; /* "" or why the last attempt failed (no secrets) */
    size_t body_len;
    uint8_t *body;
} phg_wh_event;

typedef struct phg_wh_inbox phg_wh_inbox;

typedef struct phg_wh_inbox_options {
    size_t max_batch;   /* events per commit, default 256 */
    size_t max_queue;   /* queued events before put_async refuses, default 65536 */
} phg_wh_inbox_options;

PHG_API void phg_wh_inbox_options_init(phg_wh_inbox_options *opts);

/* Open the inbox on a migrated store (schema >= 4) and start its writer. The
 * keyring encrypts and decrypts bodies; both must outlive the inbox. */
PHG_API PHG_WARN_UNUSED phg_status phg_wh_inbox_open(phg_store *store, phg_keyring *keyring,
                                                     const phg_wh_inbox_options *opts,
                                                     phg_wh_inbox **out);

/* Use another keyring from now on (a reloaded one, after a rotation or a
 * destroyed key). The previous one must stay alive until no call that may
 * have taken it is running: the gateway keeps replaced keyrings until exit. */
PHG_API void phg_wh_inbox_set_keyring(phg_wh_inbox *inbox, phg_keyring *keyring);

/* Write what is queued (callbacks run), stop the writer, free. NULL: no-op. */
PHG_API void phg_wh_inbox_close(phg_wh_inbox *inbox);

/*
 * Called once per put_async on the writer thread after the commit (or its
 * failure): PHG_OK with the new event's id; PHG_ERR_EXISTS with the id of the
 * event stored earlier with the same (source, msg_id); another status when
 * nothing was stored (the store is down: the sender should retry later).
 */
typedef void (*phg_wh_put_fn)(void *arg, phg_status status, const char *event_id);

/*
 * Queue an event. Validates it first (PHG_ERR_INVALID, PHG_ERR_TOO_LARGE:
 * nothing queued, done is not called); PHG_ERR_UNAVAILABLE when the queue is
 * full or the inbox is closing (done not called). Otherwise PHG_OK and done
 * is called exactly once.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_wh_inbox_put_async(phg_wh_inbox *inbox,
                                                          const phg_wh_event_in *ev,
                                                          phg_wh_put_fn done, void *arg);

/* The same, waiting for the commit: *event_id gets the id (new, or the
 * earlier one with PHG_ERR_EXISTS). */
PHG_API PHG_WARN_UNUSED phg_status phg_wh_inbox_put(phg_wh_inbox *inbox, const phg_wh_event_in *ev,
                                                    char event_id[PHG_WH_EVENT_ID_LEN + 1]);

/* The id of the event stored with (source, msg_id): PHG_OK, or
 * PHG_ERR_NOT_FOUND. (The replay memory's fallback when its cache is cold.) */
PHG_API PHG_WARN_UNUSED phg_status phg_wh_inbox_find(phg_wh_inbox *inbox, const char *source,
                                                     const char *msg_id,
                                                     char event_id[PHG_WH_EVENT_ID_LEN + 1]);

/*
 * Lease up to max (1..PHG_WH_LIST_MAX) PENDING events with next_attempt_ms <=
 * now_ms, oldest due first, setting their next_attempt_ms to now_ms +
 * lease_ms in the same transaction (PostgreSQL: FOR UPDATE SKIP LOCKED, so
 * two instances never lease the same event at once). *out (malloc'd, bodies
 * decrypted) freed with phg_wh_events_free; *n may be 0.
 */
PHG_API PHG_WARN_UNUSED phg_status phg_wh_inbox_claim(phg_wh_inbox *inbox, int64_t now_ms,
                                                      int64_t lease_ms, size_t max,
                                                      phg_wh_event **out, size_t *n);

/* Report attempts. Each applies only to a PENDING event (PHG_ERR_STATE
 * otherwise, PHG_ERR_NOT_FOUND for an unknown id) and increments attempts.
 * delivered: state DELIVERED, delivered_ms = at_ms. retry: stays PENDING,
 * next_attempt_ms = next_ms. dead: state DEAD. error is a short text without
 * secrets ("" for none), truncated to PHG_WH_ERROR_MAX. */
PHG_API phg_status phg_wh_inbox_delivered(phg_wh_inbox *inbox, const char *id, int64_t at_ms,
                                          int http_status);
PHG_API phg_status phg_wh_inbox_retry(phg_wh_inbox *inbox, const char *id, int64_t at_ms,
                                      int http_status, const char *error, int64_t next_ms);
PHG_API phg_status phg_wh_inbox_dead(phg_wh_inbox *inbox, const char *id, int64_t at_ms,
                                     int http_status, const char *error);

/* Several reports in one transaction (one commit: what a deliverer does with
 * a claimed batch). Each item's result gets what the single call would have
 * returned; a store failure rolls the whole batch back (every result is that
 * failure, and the call returns it); otherwise PHG_OK. At most
 * PHG_WH_LIST_MAX items. */
typedef struct phg_wh_report {
    const char *id;
    phg_wh_event_state state; /* DELIVERED, PENDING (retry at next_ms) or DEAD */
    int64_t at_ms;
    int http_status;
    const char *error;        /* "" or NULL for none */
    int64_t next_ms;          /* PENDING only */
    int not_attempted;        /* 1: no attempt was made (PENDING only: hand a lease back,
                               * due at next_ms; attempts and last_* unchanged) */
    phg_status result;        /* out */
} phg_wh_report;

PHG_API phg_status phg_wh_inbox_report_many(phg_wh_inbox *inbox, phg_wh_report *items, size_t n);

/* One event with its decrypted body; PHG_ERR_NOT_FOUND. Freed with
 * phg_wh_event_free. */
PHG_API PHG_WARN_UNUSED phg_status phg_wh_inbox_get(phg_wh_inbox *inbox, const char *id,
                                                    phg_wh_event **out);

/* Events of one state (state < 0: any), of one source (NULL: any), newest
 * first (id descending), ids < before_id (NULL: from the newest), at most
 * limit (1..PHG_WH_LIST_MAX); no bodies. */
typedef struct phg_wh_event_filter {
    int state;
    const char *source;
    const char *before_id;
    size_t limit;
} phg_wh_event_filter;

PHG_API PHG_WARN_UNUSED phg_status phg_wh_inbox_list(phg_wh_inbox *inbox,
                                                     const phg_wh_event_filter *f,
                                                     phg_wh_event **out, size_t *n);

/* Put a DEAD event back to PENDING, due at now_ms, attempts 0 (PHG_ERR_STATE
 * if it is not DEAD). */
PHG_API phg_status phg_wh_inbox_replay(phg_wh_inbox *inbox, const char *id, int64_t now_ms);

/* Every DEAD event (of source; NULL: all) back to PENDING; *n how many. */
PHG_API phg_status phg_wh_inbox_replay_all(phg_wh_inbox *inbox, const char *source,
                                           int64_t now_ms, size_t *n);

typedef struct phg_wh_inbox_stats {
    int64_t pending, delivered, dead; /* rows per state */
    int64_t oldest_pending_ms;        /* received_ms of the oldest PENDING, 0: none */
    /* the writer: */
    uint64_t written, duplicates, failed, commits;
    size_t queue_depth;
} phg_wh_inbox_stats;

PHG_API phg_status phg_wh_inbox_stats_get(phg_wh_inbox *inbox, phg_wh_inbox_stats *st);

/* The same without counting DELIVERED rows (st->delivered is -1): its cost
 * depends on the backlog only, not on how many delivered events are kept.
 * For figures read often (metrics). */
PHG_API phg_status phg_wh_inbox_backlog_get(phg_wh_inbox *inbox, phg_wh_inbox_stats *st);

/* Delete DELIVERED events with delivered_ms < before_ms, at most max per call
 * (bounded work); *n how many. */
PHG_API phg_status phg_wh_inbox_purge(phg_wh_inbox *inbox, int64_t before_ms, size_t max,
                                      size_t *n);

PHG_API void phg_wh_event_free(phg_wh_event *ev);
PHG_API void phg_wh_events_free(phg_wh_event *evs, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* PHIGATE_WEBHOOK_INBOX_H */
