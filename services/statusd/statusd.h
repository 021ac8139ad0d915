/**
 * \file statusd.h
 * \brief statusd: health checks and metric scrapes of registered, configured
 *        and API-added targets; SQLite storage; health transition events
 *        through the outbox; the `sonar.status.*` query API.
 *
 * Threads: NATS callbacks (registrations, leaves) only update the target
 * table in memory. A scheduler thread hands due targets to a pool of
 * worker threads, which run the check and the scrape (blocking HTTP or
 * NATS requests, each with its own timeout), store the results and
 * enqueue events. API handlers run on the service's endpoint workers. A
 * pruner thread applies retention. See docs/statusd.md.
 *
 * Thread-safety: start and stop from one thread; the figures may be read
 * from any thread.
 */
#ifndef STATUSD_H
#define STATUSD_H

#include <stdint.h>

#include "sonar/bus.h"
#include "sonar/status.h"
#include "targets.h"

#define STATUSD_NAME "statusd"

/** Settings, copied at start. */
typedef struct statusd_config {
    const char *db_path;         /**< SQLite file (statuses, samples, outbox, API targets) */
    const char *version;
    int64_t interval_ms;         /**< default check interval */
    int64_t timeout_ms;          /**< default check timeout (capped at the interval) */
    int64_t retention_ms;        /**< keep checks and samples this long */
    int workers;                 /**< check worker threads */
    const char *health_url;      /**< registered as statusd's own health endpoint; may be NULL */
    const char *metrics_url;     /**< registered as statusd's own metrics endpoint; may be NULL */
    const statusd_target_spec *static_targets; /**< from --config; borrowed for start */
    size_t n_static_targets;
} statusd_config;

typedef struct statusd statusd;

/**
 * \brief Opens the database, ensures the SONAR_EVENTS stream, joins the bus
 *        (queue group "statusd"), subscribes to registrations and starts
 *        checking.
 * \param out new daemon (stop with statusd_stop()); written on success.
 * \param bus borrowed; must outlive the daemon.
 */
sonar_status statusd_start(statusd **out, sonar_bus *bus, const statusd_config *cfg);

/** \brief Leaves the bus, waits for running checks, closes everything. Accepts NULL. */
void statusd_stop(statusd *d);

/**
 * \brief statusd's own figures in the Prometheus text format (new string,
 *        free()). Safe from any thread.
 */
char *statusd_metrics_text(statusd *d);

/* ---- its own /metrics over HTTP (selfhttp.c) ---- */

typedef struct statusd_http statusd_http;

/**
 * \brief Serves GET /metrics (statusd_metrics_text()) and GET /health on
 *        \p listen ("ADDR:PORT", IPv4 address or "localhost").
 * \return SONAR_OK; SONAR_ERR_INVALID for a bad address; SONAR_ERR_IO when
 *         it cannot listen.
 */
sonar_status statusd_http_start(statusd_http **out, statusd *d, const char *listen);

/** \brief Checks \p listen as statusd_http_start() would, without listening. */
sonar_status statusd_http_check(const char *listen);

/** \brief Stops serving. Accepts NULL. */
void statusd_http_stop(statusd_http *h);

#endif
