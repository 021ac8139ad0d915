/**
 * \file sdmetrics.h
 * \brief sonard's own Prometheus metrics (text format 0.0.4) and the small
 *        HTTP server that serves them at /metrics (`--metrics-listen`).
 *
 * Figures: announcements handled, reports by verdict, gather durations (a
 * histogram), known and live services, and the outbox relay's figures.
 *
 * Thread-safety: the observe functions may be called from any thread (one
 * mutex); the HTTP server answers on libmicrohttpd's own thread and only
 * reads the figures and the registry/outbox snapshots.
 */
#ifndef SONARD_METRICS_H
#define SONARD_METRICS_H

#include <stdint.h>

#include "registry.h"
#include "sonar/outbox.h"
#include "sonar/protocol.h"
#include "sonar/status.h"

typedef struct sonard_metrics sonard_metrics;

/**
 * \brief Creates the metrics object.
 * \param reg borrowed; read for service counts at each scrape.
 * \param outbox borrowed, may be NULL (no JetStream); read at each scrape.
 */
sonar_status sonard_metrics_create(sonard_metrics **out, sonar_registry *reg,
                                   sonar_outbox *outbox);

/** \brief Counts one announcement received (valid or not). */
void sonard_metrics_change(sonard_metrics *m);

/** \brief Counts one finished gather with its verdict and duration. */
void sonard_metrics_report(sonard_metrics *m, sonar_outcome verdict, int64_t duration_ms);

/** \brief The exposition text (new, free()), or NULL when out of memory. */
char *sonard_metrics_render(sonard_metrics *m);

/**
 * \brief Serves GET /metrics (and GET /health) on \p listen ("ADDR:PORT",
 *        IPv4). Returns SONAR_ERR_INVALID for a bad address, SONAR_ERR_IO
 *        when the port cannot be bound.
 */
sonar_status sonard_metrics_listen(sonard_metrics *m, const char *listen);

/** \brief Stops the HTTP server (if any) and frees. Accepts NULL. */
void sonard_metrics_destroy(sonard_metrics *m);

#endif
