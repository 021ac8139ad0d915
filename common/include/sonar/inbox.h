/**
 * \file inbox.h
 * \brief Idempotent JetStream consumer: each message is applied exactly once
 *        to a SQLite database, even across crashes and redeliveries.
 *
 * A `sonar_inbox` owns a durable pull consumer and one thread. For each
 * message it opens a SQLite transaction (`BEGIN IMMEDIATE`) on its own
 * connection, records the message id in the table `sonar_inbox`, runs the
 * handler in the same transaction, commits, and only then acks. So:
 *
 * - a crash before the commit leaves nothing; the message is redelivered;
 * - a crash after the commit and before the ack leads to a redelivery that
 *   finds the id already recorded: it is acked and skipped;
 * - a handler failure rolls the transaction back and naks the message with
 *   a growing delay; after `max_deliveries` deliveries it is terminated
 *   (AckTerm) and recorded in `sonar_inbox_dead` with the last error.
 *
 * The message id is the `Nats-Msg-Id` header (the outbox sets one), else
 * "<stream>:<stream sequence>". Recorded ids are pruned after
 * `retention_ms`; a redelivery later than that would be applied again, so
 * keep retention well above the consumer's ack wait and any replay horizon.
 *
 * Thread-safety: create/destroy from one thread; stats from any thread.
 * The handler runs on the inbox thread, never on a NATS callback thread.
 */
#ifndef SONAR_INBOX_H
#define SONAR_INBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <nats/nats.h>
#include <sqlite3.h>

#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One message as the handler sees it. Everything is borrowed for the call. */
typedef struct sonar_inbox_msg {
    const char *id;          /**< dedup id (Nats-Msg-Id, else "<stream>:<seq>") */
    const char *subject;
    const void *data;
    size_t len;
    uint64_t stream_seq;
    uint64_t deliveries;     /**< 1 on the first delivery */
    natsMsg *msg;            /**< the raw message (headers); do not ack or destroy it */
} sonar_inbox_msg;

/**
 * Applies one message. Runs on the inbox thread inside an open SQLite
 * transaction on \p db (the inbox's connection: do not BEGIN/COMMIT).
 * Return SONAR_OK to commit and ack; anything else rolls back and retries
 * later (give the reason with sonar_inbox_error(): it is stored with a
 * dead-lettered message).
 */
typedef sonar_status (*sonar_inbox_fn)(sqlite3 *db, const sonar_inbox_msg *msg, void *closure);

/**
 * \brief For handlers: records why a message could not be applied (kept
 *        with the message if it ends in the dead-letter table) and returns
 *        \p status, so a handler can `return sonar_inbox_error(...)`.
 */
sonar_status sonar_inbox_error(sonar_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** Settings, copied at create time. Zero means "default". */
typedef struct sonar_inbox_config {
    const char *name;            /**< durable consumer name (name rule); required */
    const char *stream;          /**< stream name; required */
    const char *filter_subject;  /**< subject filter; required (may use wildcards) */
    int batch;                   /**< messages per fetch; default 64 */
    int64_t fetch_wait_ms;       /**< longest a fetch waits for messages; default 1000 */
    int max_deliveries;          /**< deliveries before a failing message is terminated; default 5 */
    int64_t retry_min_ms;        /**< first nak delay; default 200 */
    int64_t retry_max_ms;        /**< nak delay cap; default 10000 */
    int64_t ack_wait_ms;         /**< consumer ack wait (new consumers); default 30000 */
    int64_t retention_ms;        /**< keep recorded ids this long; default 7 days */
    /** Optional observer, called on the inbox thread after a message's
     *  transaction committed and before it is acked. */
    void (*after_commit)(const sonar_inbox_msg *msg, void *closure);
} sonar_inbox_config;

typedef struct sonar_inbox sonar_inbox;

/**
 * \brief Creates the inbox tables in \p db (borrowed; not inside a
 *        transaction) and switches it to WAL. sonar_inbox_create() does this
 *        itself; call it to prepare a database beforehand. Idempotent.
 * \return SONAR_OK; SONAR_ERR_INVALID (NULL); SONAR_ERR_DB.
 */
sonar_status sonar_inbox_migrate(sqlite3 *db);

/**
 * \brief Creates the inbox tables if needed (WAL), creates or binds the
 *        durable consumer, and starts the inbox thread.
 * \param out new inbox, written on success; free with sonar_inbox_destroy().
 * \param nc borrowed; must stay open until destroy returns.
 * \param db_path SQLite file (created if missing); copied.
 * \param cfg copied. \p fn and \p closure are called on the inbox thread.
 * \return SONAR_OK; SONAR_ERR_INVALID (bad config, or the server refused
 *         the consumer); SONAR_ERR_DB; SONAR_ERR_NATS; SONAR_ERR_NOMEM.
 */
sonar_status sonar_inbox_create(sonar_inbox **out, natsConnection *nc, const char *db_path,
                                const sonar_inbox_config *cfg, sonar_inbox_fn fn, void *closure);

/**
 * \brief Stops the thread (after the message being handled and at most one
 *        fetch wait) and frees everything. The durable consumer stays on the
 *        server. Accepts NULL.
 */
void sonar_inbox_destroy(sonar_inbox *in);

/** Figures since create. */
typedef struct sonar_inbox_stats {
    int64_t received;      /**< messages fetched */
    int64_t applied;       /**< handler succeeded and committed */
    int64_t duplicates;    /**< already recorded: acked and skipped */
    int64_t retries;       /**< handler failures naked for a later retry */
    int64_t dead;          /**< terminated and recorded in sonar_inbox_dead */
    int64_t errors;        /**< fetch/ack/database errors */
    int64_t pending;       /**< messages the consumer has not delivered yet (last fetch) */
} sonar_inbox_stats;

/** \brief Copies the figures. Safe from any thread, including NATS callbacks. */
void sonar_inbox_stats_get(sonar_inbox *in, sonar_inbox_stats *out);

/** \brief The figures as a JSON object (new) for `$SRV.STATS` endpoint data. */
json_t *sonar_inbox_stats_json(sonar_inbox *in);

/* ---- Operator functions (their own connection on the file) -------------- */

/** One consumer (inbox name) in a database. */
typedef struct sonar_inbox_consumer_status {
    char *name;               /**< the inbox (durable consumer) name */
    int64_t recorded;         /**< message ids kept for de-duplication */
    int64_t last_applied_ms;  /**< wall clock of the newest, 0 when none */
    int64_t dead;             /**< its rows in the dead-letter table */
} sonar_inbox_consumer_status;

/** Every inbox in a database, by name. */
typedef struct sonar_inbox_db_status {
    sonar_inbox_consumer_status *consumers; /**< owned; free with sonar_inbox_db_status_finish() */
    size_t n;
    int64_t recorded_total;
    int64_t dead_total;
} sonar_inbox_db_status;

/**
 * \brief Reads the inbox tables of \p db_path (read-only; the service may be
 *        running). Safe from any thread.
 * \return SONAR_OK; SONAR_ERR_NOT_FOUND (no such file); SONAR_ERR_INVALID
 *         (not an inbox database); SONAR_ERR_DB; SONAR_ERR_NOMEM.
 */
sonar_status sonar_inbox_db_status_read(sonar_inbox_db_status *out, const char *db_path);

/** \brief Frees what sonar_inbox_db_status_read() filled in. */
void sonar_inbox_db_status_finish(sonar_inbox_db_status *st);

/** A message an inbox gave up on (its handler kept failing). */
typedef struct sonar_inbox_dead_row {
    int64_t id;
    char *name;        /**< the inbox */
    char *msg_id;      /**< Nats-Msg-Id, or stream:seq when it had none */
    char *subject;
    void *payload;     /**< NUL-terminated copy */
    size_t payload_len;
    int64_t stream_seq;
    int64_t deliveries;
    char *error;       /**< the handler's last error */
    int64_t dead_ms;   /**< wall clock */
    char *headers;     /**< its headers but Nats-Msg-Id, JSON {"key":["value",...]}
                            ("{}" for rows recorded before libsonar kept them) */
} sonar_inbox_dead_row;

/**
 * \brief Lists the dead-letter rows of every inbox in \p db_path, oldest
 *        first. Free with sonar_inbox_dead_rows_free(). Errors as
 *        sonar_inbox_db_status_read().
 */
sonar_status sonar_inbox_dead_list(sonar_inbox_dead_row **out_rows, size_t *out_n,
                                   const char *db_path);

/** \brief Frees rows from sonar_inbox_dead_list(). Accepts NULL. */
void sonar_inbox_dead_rows_free(sonar_inbox_dead_row *rows, size_t n);

/**
 * \brief Deletes dead-letter row \p id (after an operator dealt with it:
 *        the message was terminated in JetStream, so the inbox will not see
 *        it again; to apply it after all, see sonar_inbox_requeue()).
 * \return SONAR_OK; SONAR_ERR_NOT_FOUND (no such row or file);
 *         SONAR_ERR_INVALID; SONAR_ERR_DB.
 */
sonar_status sonar_inbox_drop(const char *db_path, int64_t id);

/**
 * \brief Gives dead-letter row \p id another chance, once the cause was
 *        fixed: publishes its message into JetStream again (same subject,
 *        payload and headers, its id as `Nats-Msg-Id`; "Nats-" control
 *        headers are left out) and removes the row once the stream stored
 *        it. The inbox that gave up on it forgets its id first, so it
 *        applies the copy; every other inbox on the stream that applied the
 *        original skips the copy by that id (within its retention).
 *
 * A stream drops a second publish of an id within its duplicate window
 * (2 minutes by default) from the first: such a requeue is refused and can
 * be made again later. The service may be running.
 * \param nc connection to the server of the stream (borrowed)
 * \param out_stream, out_seq where the copy went (new string, free()); may be NULL
 * \return SONAR_OK; SONAR_ERR_NOT_FOUND (no such row or file);
 *         SONAR_ERR_INVALID; SONAR_ERR_DB; SONAR_ERR_NATS (the publish
 *         failed, e.g. no stream for the subject); SONAR_ERR_STATE (the
 *         stream's duplicate window still holds the id). On any error the
 *         row stays as it was.
 */
sonar_status sonar_inbox_requeue(natsConnection *nc, const char *db_path, int64_t id,
                                 char **out_stream, uint64_t *out_seq);

#ifdef __cplusplus
}
#endif
#endif
