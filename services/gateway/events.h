/**
 * \file events.h
 * \brief Server-sent events fed by NATS subscriptions.
 *
 * The hub subscribes to `sonar.gather.*`, `sonar.result.*.*`,
 * `sonar.report.*`, `sonar.register.*`, `sonar.leave.*` and
 * `sonar.health.*`. Each message that is a JSON object with a string
 * `type` becomes one SSE frame
 *
 *     id: <sequence>
 *     event: gather|result|report|register|leave|health
 *     data: <the message, compact JSON on one line>
 *
 * and is queued to every client whose filter it passes. Each client has its
 * own bounded queue: when it is full the client is dropped (its stream ends
 * with an error) and nobody else waits. The NATS callback only parses,
 * formats and queues under one short mutex; it never waits on a client.
 *
 * A client may filter on one change id: it then gets only that change's
 * gather, result and report events, and its stream ends after the report.
 * Those travel on different subjects (so different delivery threads) and
 * the report may overtake the others: it is held until the gather and the
 * result of every responder it names arrived, at most 1 s.
 *
 * Thread-safety: NATS callbacks, MHD connection threads and the main
 * thread use the hub concurrently. create/shutdown/destroy from the main
 * thread.
 */
#ifndef SONAR_GW_EVENTS_H
#define SONAR_GW_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <nats/nats.h>

#include "gwmetrics.h"
#include "sonar/status.h"

/** Seconds between keep-alive comments on an idle stream. */
#define SONAR_GW_SSE_KEEPALIVE_S 15

typedef struct sonar_gw_events sonar_gw_events;
typedef struct sonar_gw_client sonar_gw_client;

/**
 * \brief Subscribes the hub on \p nc (borrowed; must outlive the hub).
 * \param metrics borrowed; must outlive the hub.
 * \param max_clients clients at most at once.
 * \param queue_max frames queued per client before it is dropped.
 * \return SONAR_OK, SONAR_ERR_NATS, SONAR_ERR_NOMEM.
 */
sonar_status sonar_gw_events_create(sonar_gw_events **out, natsConnection *nc,
                                    sonar_gw_metrics *metrics, size_t max_clients,
                                    size_t queue_max);

/** \brief Ends every stream (readers return end of stream) and refuses new clients. */
void sonar_gw_events_shutdown(sonar_gw_events *ev);

/**
 * \brief Waits until every client is closed (their streams finished) or
 *        \p timeout_ms passed. \return true when none is left.
 */
bool sonar_gw_events_wait_idle(sonar_gw_events *ev, int64_t timeout_ms);

/**
 * \brief Drains the subscriptions (no callback runs afterwards) and frees
 *        the hub. Every client must be closed already (stop the HTTP server
 *        first). Accepts NULL.
 */
void sonar_gw_events_destroy(sonar_gw_events *ev);

/** \brief Clients connected now. */
size_t sonar_gw_events_clients(sonar_gw_events *ev);

/**
 * \brief Opens a client.
 * \param change_id NULL for every event, else the change to follow (copied).
 * \param out new client, closed by sonar_gw_client_close().
 * \return SONAR_OK; SONAR_ERR_LIMIT when max_clients are connected;
 *         SONAR_ERR_STATE after shutdown; SONAR_ERR_NOMEM.
 */
sonar_status sonar_gw_client_open(sonar_gw_client **out, sonar_gw_events *ev,
                                  const char *change_id);

/**
 * \brief Queues \p json (a report already stored, fetched after the client
 *        subscribed) as a `report` event and ends the stream after it, like
 *        a live report would. Ignored when the client has already ended.
 */
void sonar_gw_client_push_report(sonar_gw_client *c, const char *json, size_t len);

/**
 * \brief MHD content reader (\p cls is the client): blocks on the client's
 *        queue at most SONAR_GW_SSE_KEEPALIVE_S, then writes a comment.
 */
ssize_t sonar_gw_client_read(void *cls, uint64_t pos, char *buf, size_t max);

/** \brief MHD free callback (\p cls is the client): unregisters and frees it. */
void sonar_gw_client_close(void *cls);

#endif
