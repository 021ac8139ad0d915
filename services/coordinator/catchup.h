/**
 * \file catchup.h
 * \brief The reports a coordinator missed, replayed from the events stream.
 *
 * A coordinator stores the reports the other coordinators publish as they
 * go by on `sonar.report.*`. While it is down, or its connection is lost,
 * they go by unseen -- and its history and `sonar.api.report` would lack
 * them for good. Every coordinator's outbox also puts its reports into the
 * `SONAR_EVENTS` stream, so the catch-up replays them from there: once at
 * start, from a time the caller gives (shortly before the newest report it
 * stored), and after each reconnect of the connection, from shortly before
 * the link was last proven up (a round trip to the server, made every
 * second: a link that died silently still reads "connected" until the
 * client notices). Without the stream there is nothing to replay.
 *
 * Each replayed message is handed to a callback on the catch-up thread
 * (`sonard-catchup`), never on a NATS thread; reports seen live as well
 * come twice and are the callback's to recognise. A replay that fails
 * (server busy, connection lost again) is tried again a second later.
 *
 * Thread-safety: start and destroy from one thread; stats from any.
 */
#ifndef SONARD_CATCHUP_H
#define SONARD_CATCHUP_H

#include <stdint.h>

#include <nats/nats.h>

#include "sonar/status.h"

/** How far before "last seen up" a replay starts (clocks and relays lag). */
#define SONAR_CATCHUP_MARGIN_MS 2000

/** A replayed message (borrowed: valid during the call only) and the time
 *  the stream stored it (wall clock, milliseconds since the epoch). */
typedef void (*sonar_catchup_fn)(void *closure, natsMsg *msg, int64_t stored_wall_ms);

typedef struct sonar_catchup_stats {
    int64_t runs;     /**< replays completed (the one at start included) */
    int64_t replayed; /**< messages handed to the callback */
    int64_t failures; /**< replays that failed and were retried */
} sonar_catchup_stats;

typedef struct sonar_catchup sonar_catchup;

/**
 * \brief Starts the catch-up thread; its first replay begins at once.
 * \param nc connection (borrowed; must outlive the catch-up)
 * \param stream stream name, e.g. SONAR_EVENTS_STREAM (copied)
 * \param subject filter subject, e.g. "sonar.report.*" (copied)
 * \param from_wall_ms first replay: messages stored at or after this time
 * \param fn, closure called for each replayed message, on the catch-up thread
 * \return SONAR_OK, SONAR_ERR_INVALID, SONAR_ERR_NOMEM.
 */
sonar_status sonar_catchup_start(sonar_catchup **out, natsConnection *nc, const char *stream,
                                 const char *subject, int64_t from_wall_ms, sonar_catchup_fn fn,
                                 void *closure);

/** \brief A snapshot of the counters. */
void sonar_catchup_stats_get(sonar_catchup *cu, sonar_catchup_stats *out);

/** \brief Stops the thread (a replay under way ends within about 250 ms)
 *         and frees. Accepts NULL. */
void sonar_catchup_destroy(sonar_catchup *cu);

#endif
