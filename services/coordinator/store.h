/**
 * \file store.h
 * \brief sonard's SQLite store: known services and instances (so a
 *        restarted coordinator knows every service that existed) and the
 *        reports, kept for a configurable retention and pruned in small
 *        batches.
 *
 * The schema is created and migrated on open, tracked in a
 * `schema_version` table (see docs/coordinator.md). WAL mode,
 * synchronous=NORMAL.
 *
 * Writes that arrive on NATS threads go through the writer: a thread of
 * the store's own that takes queued jobs and applies each batch in one
 * transaction, and prunes expired reports and instances now and then. The
 * enqueue functions copy their arguments and never touch SQLite.
 *
 * Thread-safety: every function may be called from any thread (one
 * connection, serialised by a mutex inside); sonar_store_close() must not
 * race with other calls.
 */
#ifndef SONARD_STORE_H
#define SONARD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sonar/status.h"

/** Current schema version written by this build. */
#define SONARD_SCHEMA_VERSION 2
/** Most jobs the writer queue holds; beyond it enqueues fail with SONAR_ERR_LIMIT. */
#define SONARD_WRITER_QUEUE_MAX 100000
/** Rows deleted per transaction when pruning. */
#define SONARD_PRUNE_BATCH 500
/** The writer thread's nice increment: storing yields the CPU to gathers. */
#define SONARD_WRITER_NICE 10

typedef struct sonar_store sonar_store;

/**
 * \brief Opens (creating if needed) and migrates the database at \p path.
 * \param out new store, written on success; close with sonar_store_close().
 * \return SONAR_OK; SONAR_ERR_DB (cannot open, not a database, or a schema
 *         newer than this build), with the SQLite detail.
 */
sonar_status sonar_store_open(sonar_store **out, const char *path);

/** \brief Stops the writer (applying what is queued) and closes. Accepts NULL. */
void sonar_store_close(sonar_store *st);

/** \brief The schema version recorded in the database. */
sonar_status sonar_store_schema_version(sonar_store *st, int *out);

/* ---- Synchronous writes (worker threads only, never a NATS thread) ---- */

/** \brief Upserts a service: last version, depends_on/checks JSON texts, last seen (wall ms). */
sonar_status sonar_store_put_service(sonar_store *st, const char *service, const char *version,
                                     const char *depends_on_json, const char *checks_json,
                                     int64_t wall_ms);
/** \brief Upserts an instance's last heartbeat. */
sonar_status sonar_store_put_instance(sonar_store *st, const char *service, const char *instance,
                                      const char *version, const char *address,
                                      int64_t heartbeat_ms, int64_t wall_ms);
/** \brief Deletes an instance (a leave). Absent rows are fine. */
sonar_status sonar_store_delete_instance(sonar_store *st, const char *service,
                                         const char *instance);
/**
 * \brief Stores a report unless one with that change id exists (the first wins).
 * \param report_json borrowed `sonar.report.v1` text.
 */
sonar_status sonar_store_put_report(sonar_store *st, const char *change_id, const char *service,
                                    const char *verdict, int64_t wall_ms, const char *report_json);

/**
 * \brief Stores a report and, in the same SQLite transaction, enqueues it in
 *        the outbox (libsonar outbox.h) for \p subject with \p headers, so the
 *        report is published to JetStream exactly when it is stored. A change
 *        id already stored is neither stored nor enqueued again.
 * \param headers NULL-terminated "Name", "value" pairs (borrowed) or NULL.
 */
sonar_status sonar_store_put_report_event(sonar_store *st, const char *change_id,
                                          const char *service, const char *verdict,
                                          int64_t wall_ms, const char *report_json,
                                          const char *subject, const char *const *headers);

/**
 * \brief Deletes reports created before \p before_wall_ms and instances
 *        whose last heartbeat is 3 heartbeats older than \p now_wall_ms,
 *        at most SONARD_PRUNE_BATCH rows per transaction, releasing the
 *        lock between batches.
 * \param out_deleted when not NULL, receives the number of reports deleted.
 */
sonar_status sonar_store_prune(sonar_store *st, int64_t before_wall_ms, int64_t now_wall_ms,
                               size_t *out_deleted);

/* ---- Reads --------------------------------------------------------------- */

/**
 * \brief The stored report of \p change_id.
 * \param out new string (free()), written on success.
 * \return SONAR_OK, SONAR_ERR_NOT_FOUND, SONAR_ERR_DB.
 */
sonar_status sonar_store_get_report(sonar_store *st, const char *change_id, char **out);

/**
 * \brief The last \p limit reports of \p service, newest first.
 * \param out new JSON array of report objects, written on success.
 */
sonar_status sonar_store_history(sonar_store *st, const char *service, int limit, json_t **out);

/** \brief Number of stored reports. */
sonar_status sonar_store_count_reports(sonar_store *st, int64_t *out);

/** \brief When the newest stored report was stored (wall ms; 0: none). */
sonar_status sonar_store_newest_report_ms(sonar_store *st, int64_t *out);

/** Called once per stored service by sonar_store_load() (borrowed arguments). */
typedef void (*sonar_store_service_fn)(void *closure, const char *service, const char *version,
                                       const char *depends_on_json, const char *checks_json,
                                       int64_t wall_ms);
/** Called once per stored instance, after all services. */
typedef void (*sonar_store_instance_fn)(void *closure, const char *service, const char *instance,
                                        const char *version, const char *address,
                                        int64_t heartbeat_ms, int64_t wall_ms);

/** \brief Reads every stored service, then every instance, into the callbacks. */
sonar_status sonar_store_load(sonar_store *st, sonar_store_service_fn on_service,
                              sonar_store_instance_fn on_instance, void *closure);

/** Called once per stored report by sonar_store_report_ids() (borrowed). */
typedef void (*sonar_store_id_fn)(void *closure, const char *change_id);

/** \brief Reads the change id of every stored report into \p on_id. */
sonar_status sonar_store_report_ids(sonar_store *st, sonar_store_id_fn on_id, void *closure);

/* ---- The writer ---------------------------------------------------------- */

/**
 * \brief Starts the writer thread. It applies queued jobs in batches and
 *        every \p prune_every_ms prunes reports older than \p retention_ms.
 * \return SONAR_OK, SONAR_ERR_STATE (already started), SONAR_ERR_IO.
 */
sonar_status sonar_store_start_writer(sonar_store *st, int64_t retention_ms,
                                      int64_t prune_every_ms);

/**
 * \brief Queues a registration: upserts the service and the instance.
 *        All strings copied. Safe on NATS threads (no SQLite). Every
 *        enqueue fails with SONAR_ERR_LIMIT while SONARD_WRITER_QUEUE_MAX
 *        jobs wait (a warning is logged once).
 */
sonar_status sonar_store_enqueue_register(sonar_store *st, const char *service,
                                          const char *version, const char *depends_on_json,
                                          const char *checks_json, const char *instance,
                                          const char *address, int64_t heartbeat_ms,
                                          int64_t wall_ms);
/** \brief Queues an instance deletion. Safe on NATS threads. */
sonar_status sonar_store_enqueue_leave(sonar_store *st, const char *service, const char *instance);
/**
 * \brief sonar_store_put_report_event() done by the writer thread (at its
 *        lower CPU priority, batched with the other queued writes), waiting
 *        until it is applied; directly when no writer runs. Never dropped
 *        for a full queue. Blocks: not for NATS threads.
 * \param subject NULL: the report only, no outbox row.
 * \param headers NULL or one "Name", "value" pair, NULL-terminated.
 */
sonar_status sonar_store_write_report_event(sonar_store *st, const char *change_id,
                                            const char *service, const char *verdict,
                                            int64_t wall_ms, const char *report_json,
                                            const char *subject, const char *const *headers);

/** Told on the writer thread that a submitted report event was applied;
 *  \p why is the failure's text when \p status is not SONAR_OK. */
typedef void (*sonar_store_done_fn)(void *arg, sonar_status status, const char *why);

/**
 * \brief sonar_store_write_report_event() without waiting: \p done(arg, ...)
 *        runs on the writer thread once it was applied, after the batch's
 *        commit. When no writer runs it is applied and \p done called at
 *        once on the caller's thread (blocking: tests, tools). Never
 *        dropped for a full queue. With a writer running it is quick and may
 *        be called on NATS threads.
 * \return SONAR_OK (\p done will run, once); SONAR_ERR_INVALID (headers)
 *         or SONAR_ERR_NOMEM (it will not).
 */
sonar_status sonar_store_submit_report_event(sonar_store *st, const char *change_id,
                                             const char *service, const char *verdict,
                                             int64_t wall_ms, const char *report_json,
                                             const char *subject, const char *const *headers,
                                             sonar_store_done_fn done, void *arg);

/** \brief Queues a report (e.g. one another coordinator published). Safe on NATS threads. */
sonar_status sonar_store_enqueue_report(sonar_store *st, const char *change_id,
                                        const char *service, const char *verdict,
                                        int64_t wall_ms, const char *report_json);

/** \brief Blocks until every job queued before the call was applied. */
void sonar_store_sync(sonar_store *st);

#endif
