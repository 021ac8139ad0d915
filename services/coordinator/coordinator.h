/**
 * \file coordinator.h
 * \brief sonard as one object: the registry fed from the bus, the store,
 *        the gatherer, and the libsonar service that serves the change
 *        announcements and the read API (and answers `$SRV.*`).
 *
 * Subjects (see docs/coordinator.md for the bodies):
 * - `sonar.register.*`, `sonar.leave.*`: the live registry (plain subscriptions).
 * - `sonar.report.*`: reports of other coordinators, stored too (plain).
 * - `sonar.result.*.*`: answers to running gathers (the gatherer).
 * - endpoints in queue group `sonard`: `sonar.change.*`, `sonar.api.services`,
 *   `sonar.api.report`, `sonar.api.history`, `sonar.api.graph`.
 *
 * Thread-safety: create, start and destroy from one thread (main). The
 * handlers run on NATS threads (plain subscriptions: decode and memory
 * only; SQLite writes go to the store's writer) and on the service's
 * endpoint workers (SQLite reads, waits for another coordinator's report);
 * gathers end on the result callback or the gatherer's deadline thread.
 */
#ifndef SONARD_COORDINATOR_H
#define SONARD_COORDINATOR_H

#include <stdint.h>

#include "sonar/bus.h"
#include "sonar/status.h"

/** The coordinator's libsonar service name and queue group. */
#define SONARD_NAME "sonard"
/** Default limit of `sonar.api.history`, and its maximum. */
#define SONARD_HISTORY_DEFAULT 20
#define SONARD_HISTORY_MAX 1000

typedef struct sonar_coordinator_config {
    const char *db_path;         /**< SQLite file (created if absent) */
    int64_t retention_ms;        /**< reports older than this are pruned */
    int64_t default_timeout_ms;  /**< for announcements without timeout_ms */
    int workers;                 /**< endpoint worker threads (read API, stored-report lookups) */
    const char *version;         /**< sonard's version, for $SRV */
    const char *metrics_listen;  /**< "ADDR:PORT" for the /metrics HTTP server, or NULL */
} sonar_coordinator_config;

typedef struct sonar_coordinator sonar_coordinator;

/**
 * \brief Opens the store, restores the registry from it and joins the bus
 *        (\p bus borrowed, must outlive the coordinator): subscribes, starts
 *        the service, then publishes `sonar.discover`.
 * \param out new coordinator, written on success.
 */
sonar_status sonar_coordinator_start(sonar_coordinator **out, sonar_bus *bus,
                                     const sonar_coordinator_config *cfg);

/**
 * \brief Graceful stop: running gathers end now (their callers get the
 *        report so far), the service leaves, queued writes are applied,
 *        and everything is freed. Accepts NULL.
 */
void sonar_coordinator_stop(sonar_coordinator *c);

#endif
