/**
 * \file outbox.h
 * \brief Transactional outbox: events written in the caller's SQLite
 *        transaction, published to JetStream exactly once by a relay thread.
 *
 * How to use it (see docs/outbox.md for the design and the guarantees):
 *
 *     sonar_outbox_migrate(db);                       // once, at start
 *     BEGIN; ...domain writes...;
 *     sonar_outbox_enqueue(NULL, db, "orders.created", json, len, NULL);
 *     COMMIT;
 *     sonar_outbox_notify(ob);                        // wake the relay now
 *
 * The relay (sonar_outbox_create()) opens its own SQLite connection on the
 * same file, publishes pending rows in commit (id) order with the header
 * `Nats-Msg-Id: <outbox id>-<row id>` and forgets a row only after its
 * PubAck. Rows the server refuses for good move to a dead-letter table;
 * they never hold back other subjects.
 *
 * Thread-safety: sonar_outbox_migrate(), sonar_outbox_enqueue() and a
 * sonar_outbox_writer use the caller's connection and follow SQLite's rules for it (one thread at a
 * time per connection). A `sonar_outbox` handle is safe to use from any
 * thread (notify, stats) once created; create and destroy must not race
 * with other calls on the same handle. The operator functions taking a
 * database path open their own connection and are safe from any thread.
 */
#ifndef SONAR_OUTBOX_H
#define SONAR_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <nats/nats.h>
#include <sqlite3.h>

#include "sonar/bus.h"
#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Schema version written by this library into `sonar_outbox_meta`. */
#define SONAR_OUTBOX_SCHEMA_VERSION 3
/** Longest subject accepted by enqueue, in bytes. */
#define SONAR_OUTBOX_MAX_SUBJECT 256
/** Largest payload accepted by enqueue (the server's max_payload may be lower:
 *  such a row is dead-lettered by the relay with the reason). */
#define SONAR_OUTBOX_MAX_PAYLOAD (64 * 1024 * 1024)

/* ---- Producer side (caller's connection, no network) ------------------- */

/**
 * \brief Creates or upgrades (from versions 1 and 2) the outbox tables in \p db
 *        and switches the database to WAL. Idempotent; safe to call at every start. The first
 *        call stores a random outbox id used in every `Nats-Msg-Id`.
 * \param db borrowed; must not be inside a transaction.
 * \return SONAR_OK; SONAR_ERR_DB (SQLite failure, or a schema newer than
 *         this library, with the detail in sonar_last_error()).
 */
sonar_status sonar_outbox_migrate(sqlite3 *db);

/**
 * \brief Adds one event to the outbox, inside the caller's open transaction
 *        (or as its own statement when \p db is in autocommit mode). The
 *        event is published only if and when that transaction commits.
 *        Never touches the network.
 * \param out_id when not NULL, receives the row id (the `<row id>` part of
 *        the message id) on success.
 * \param db borrowed; sonar_outbox_migrate() must have run on the file.
 * \param subject a concrete NATS subject (no wildcards, no empty tokens,
 *        no whitespace), at most SONAR_OUTBOX_MAX_SUBJECT bytes; copied.
 * \param payload \p len bytes, copied; may be NULL when \p len is 0.
 * \param headers NULL-terminated "Name", "value", ... pairs, copied; may be
 *        NULL. Names are printable ASCII without ':' or spaces; values have
 *        no CR/LF. `Nats-Msg-Id` and `Nats-Expected-*` are reserved.
 * \return SONAR_OK; SONAR_ERR_INVALID (bad subject/header, with the reason);
 *         SONAR_ERR_LIMIT (payload over SONAR_OUTBOX_MAX_PAYLOAD);
 *         SONAR_ERR_DB (SQLite failure, e.g. tables missing).
 */
sonar_status sonar_outbox_enqueue(int64_t *out_id, sqlite3 *db, const char *subject,
                                  const void *payload, size_t len,
                                  const char *const *headers);

/**
 * \brief A producer's prepared INSERT, for callers that enqueue often: saves
 *        preparing the statement on every sonar_outbox_enqueue() call.
 *
 * Ownership: the writer borrows \p db and owns one prepared statement on
 * it. Destroy the writer *before* sqlite3_close(db): a connection with an
 * unfinalized statement refuses to close (SQLITE_BUSY). Use it only where
 * you would use \p db: one thread at a time, the same thread rules as the
 * connection. It holds no transaction and no lock between calls, so it
 * may live as long as the connection; several writers on one connection
 * are fine.
 */
typedef struct sonar_outbox_writer sonar_outbox_writer;

/**
 * \brief Prepares the INSERT on \p db (borrowed; sonar_outbox_migrate()
 *        must have run on the file).
 * \param out new writer, written on success; free with
 *        sonar_outbox_writer_destroy() before closing \p db.
 * \return SONAR_OK; SONAR_ERR_INVALID (NULL argument); SONAR_ERR_DB (tables
 *         missing, with a hint); SONAR_ERR_NOMEM.
 */
sonar_status sonar_outbox_writer_create(sonar_outbox_writer **out, sqlite3 *db);

/**
 * \brief Exactly sonar_outbox_enqueue() on the writer's connection (same
 *        arguments, checks, transaction semantics and errors), without
 *        preparing a statement.
 */
sonar_status sonar_outbox_writer_enqueue(int64_t *out_id, sonar_outbox_writer *w,
                                         const char *subject, const void *payload, size_t len,
                                         const char *const *headers);

/** \brief Finalizes the statement and frees the writer. Accepts NULL. */
void sonar_outbox_writer_destroy(sonar_outbox_writer *w);

/**
 * \brief Installs on \p db (borrowed) the busy handler the relay itself
 *        uses: yield, then 1 ms naps, for about 5 s in total. Optional but
 *        recommended for producers that commit often: SQLite's default
 *        handler (sqlite3_busy_timeout) sleeps in steps of up to 100 ms
 *        whenever the relay holds the write lock for a few microseconds.
 *        Replaces any busy handler or timeout set before.
 */
void sonar_outbox_set_busy_handler(sqlite3 *db);

/** \brief True when \p subject is acceptable to sonar_outbox_enqueue(). */
bool sonar_outbox_subject_valid(const char *subject);

/* ---- Relay ------------------------------------------------------------- */

/** Relay settings, copied at create time. Zero means "default". */
typedef struct sonar_outbox_config {
    int max_in_flight;          /**< unanswered publishes at once (the window); default 1024, max 65536 */
    int64_t ack_timeout_ms;     /**< a publish without PubAck after this is retried; default 5000 */
    int64_t idle_min_ms;        /**< first idle poll interval; default 10 */
    int64_t idle_max_ms;        /**< idle poll interval cap; default 1000 */
    int64_t retry_min_ms;       /**< first back-off after a transient failure; default 100 */
    int64_t retry_max_ms;       /**< back-off cap; default 30000 */
    int64_t retention_ms;       /**< keep published rows this long (0: delete at PubAck) */
    int64_t no_stream_grace_ms; /**< "no stream for subject" becomes permanent after
                                     this long without success on that subject; default 10000 */
    int64_t duplicate_window_ms;/**< the streams' duplicate window, for warnings; default 120000 */
    const char *name;           /**< label for logs and stats; default: the db file name */
    int relay_nice;             /**< 0..39: the relay thread (and its connection's threads)
                                     run this many nice steps lower (sonar_thread_lower_priority()),
                                     so publishing yields the CPU to request handling; default 0 */
} sonar_outbox_config;

typedef struct sonar_outbox sonar_outbox;

/**
 * \brief Starts a relay thread for the outbox in the SQLite file \p db_path.
 * \param out new relay, written on success; free with sonar_outbox_destroy().
 * \param bus borrowed; must outlive the relay. The relay publishes on its
 *        own connection opened with the bus's settings, one that does not
 *        reconnect by itself: after a loss the relay lets its window drain
 *        and connects again with back-off. (nats.c's reconnect buffer would
 *        otherwise deliver a publish made during the loss before the retry
 *        of an earlier row of the same subject.) NATS may be down at
 *        create: the relay connects when it can.
 * \param db_path the database file (already migrated); copied.
 * \param cfg may be NULL (all defaults); copied.
 * \return SONAR_OK; SONAR_ERR_INVALID (bad config); SONAR_ERR_DB (cannot
 *         open the file, or not migrated); SONAR_ERR_NOMEM.
 */
sonar_status sonar_outbox_create(sonar_outbox **out, sonar_bus *bus, const char *db_path,
                                 const sonar_outbox_config *cfg);

/**
 * \brief Wakes the relay now: call it after committing a transaction that
 *        enqueued events. Cheap, never blocks on I/O, safe from any thread
 *        (including NATS callbacks). Without it the relay still finds the
 *        rows at its next poll (at most idle_max_ms later).
 */
void sonar_outbox_notify(sonar_outbox *ob);

/**
 * \brief Stops the relay: waits for the acks of publishes in flight (at most
 *        ack_timeout_ms), records them, and frees everything. Rows not yet
 *        confirmed stay pending for the next start. Accepts NULL.
 */
void sonar_outbox_destroy(sonar_outbox *ob);

/** Figures of one relay since it started (counters) and of its table (gauges). */
typedef struct sonar_outbox_stats {
    int64_t pending;            /**< rows waiting to be published: counted about once a
                                     second, lowered at once as rows are confirmed or dead */
    int64_t oldest_pending_age_ms; /**< age of the oldest pending row; 0 when none */
    int64_t published;          /**< rows confirmed by a PubAck (duplicates included) */
    int64_t duplicates;         /**< of which the server already had (duplicate: true) */
    int64_t retries;            /**< publish attempts that failed transiently */
    int64_t dead;               /**< rows this relay moved to the dead-letter table */
    int64_t dead_total;         /**< rows in the dead-letter table now */
    int64_t db_queries;         /**< SQLite statements the relay ran (idle-cost probe) */
    int64_t batches;            /**< transactions that recorded answers */
    int64_t order_anomalies;    /**< per-subject order breaks detected (should stay 0) */
    bool connected;             /**< the NATS connection was up at the last check */
    int64_t backoff_ms;         /**< current transient back-off, 0 when none */
} sonar_outbox_stats;

/**
 * \brief Copies the current figures into \p out. Never touches SQLite or
 *        the network: safe in a NATS callback (e.g. a $SRV.STATS supplier).
 */
void sonar_outbox_stats_get(sonar_outbox *ob, sonar_outbox_stats *out);

/**
 * \brief The same figures as a JSON object (new reference) for
 *        `$SRV.STATS` endpoint data: {"name","pending","oldest_pending_age_ms",
 *        "published","duplicates","retries","dead","dead_total","connected"...}.
 *        Returns NULL only when out of memory. Safe in a NATS callback.
 */
json_t *sonar_outbox_stats_json(sonar_outbox *ob);

/* ---- Operators (work on a database path; used by `sonar outbox`) ------- */

/** What the outbox tables of a database file hold now. */
typedef struct sonar_outbox_db_status {
    char outbox_id[32];         /**< the id used in message ids */
    int schema_version;
    int64_t pending;
    int64_t oldest_pending_age_ms;
    int64_t sent_retained;      /**< published rows kept for the retention period */
    int64_t dead;
    int64_t published_total;    /**< persisted counter across restarts */
    int64_t retries_total;      /**< persisted counter across restarts */
    int64_t dead_total;         /**< rows ever dead-lettered */
} sonar_outbox_db_status;

/** One dead-letter row. Strings and payload are owned by the list. */
typedef struct sonar_outbox_dead_row {
    int64_t id;                 /**< original row id (message id suffix) */
    char *subject;
    void *payload;
    size_t payload_len;
    char *headers_json;         /**< JSON array of [name, value] pairs, or NULL */
    char *error;                /**< why it was refused */
    int64_t attempts;
    int64_t created_ms;         /**< wall clock, ms since the epoch */
    int64_t dead_ms;            /**< wall clock, ms since the epoch */
} sonar_outbox_dead_row;

/**
 * \brief Reads the outbox figures of the database file \p db_path (opened
 *        read-only; never created).
 * \return SONAR_OK; SONAR_ERR_NOT_FOUND (no such file); SONAR_ERR_INVALID
 *         (the file is not an outbox database); SONAR_ERR_DB.
 */
sonar_status sonar_outbox_db_status_read(sonar_outbox_db_status *out, const char *db_path);

/**
 * \brief Lists dead-letter rows, oldest first.
 * \param out_rows new array (free with sonar_outbox_dead_rows_free()).
 * \return as sonar_outbox_db_status_read().
 */
sonar_status sonar_outbox_dead_list(sonar_outbox_dead_row **out_rows, size_t *out_n,
                                    const char *db_path);

/** \brief Frees a list from sonar_outbox_dead_list(). Accepts NULL. */
void sonar_outbox_dead_rows_free(sonar_outbox_dead_row *rows, size_t n);

/**
 * \brief Moves dead row \p id back to the pending table with its original
 *        id (so its message id is unchanged) and zero attempts. A running
 *        relay picks it up at its next poll.
 * \return SONAR_OK; SONAR_ERR_NOT_FOUND (no such file, or no dead row
 *         \p id); SONAR_ERR_INVALID (not an outbox database); SONAR_ERR_DB.
 */
sonar_status sonar_outbox_requeue(const char *db_path, int64_t id);

/** \brief Deletes dead row \p id for good. Errors as sonar_outbox_requeue(). */
sonar_status sonar_outbox_drop(const char *db_path, int64_t id);

/* ---- Streams ----------------------------------------------------------- */

/** A stream to create or update. Strings borrowed for the call. */
typedef struct sonar_stream_config {
    const char *name;                /**< stream name (name rule) */
    const char *const *subjects;     /**< NULL-terminated subjects (wildcards allowed) */
    int64_t duplicate_window_ms;     /**< 0: server default (2 minutes) */
    int64_t max_age_ms;              /**< 0: unlimited */
    bool memory;                     /**< memory storage instead of file */
} sonar_stream_config;

/**
 * \brief Creates the stream, or updates its subjects, duplicate window and
 *        max age when it exists. Blocking (JetStream API requests).
 * \param nc borrowed.
 * \return SONAR_OK; SONAR_ERR_INVALID (bad config, or the server refused
 *         it, e.g. overlapping subjects); SONAR_ERR_NATS; SONAR_ERR_TIMEOUT.
 */
sonar_status sonar_stream_ensure(natsConnection *nc, const sonar_stream_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
