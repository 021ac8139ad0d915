/**
 * \file gwmetrics.h
 * \brief The gateway's own Prometheus metrics (text format 0.0.4):
 *        HTTP requests by route, method and code; request durations as a
 *        histogram by route; bus requests and errors by subject; SSE
 *        clients, events and dropped clients.
 *
 * Route labels are route templates ("/api/v1/reports/{change_id}"), never
 * raw paths, so the label set stays small.
 *
 * Thread-safety: every function may be called from any thread (one mutex).
 * Label strings passed in must be string literals or otherwise outlive the
 * metrics object: they are kept by pointer.
 */
#ifndef SONAR_GW_METRICS_H
#define SONAR_GW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "sonar/status.h"

typedef struct sonar_gw_metrics sonar_gw_metrics;

/** \brief New metrics object (free with sonar_gw_metrics_destroy()). */
sonar_status sonar_gw_metrics_create(sonar_gw_metrics **out, const char *version);
/** \brief Frees. Accepts NULL. */
void sonar_gw_metrics_destroy(sonar_gw_metrics *m);

/** \brief Counts one HTTP request that took \p seconds. \p route and \p method borrowed for life. */
void sonar_gw_metrics_http(sonar_gw_metrics *m, const char *route, const char *method, int code,
                           double seconds);
/** \brief Counts one bus request on \p subject; \p error NULL on success, else a reason label. */
void sonar_gw_metrics_bus(sonar_gw_metrics *m, const char *subject, const char *error);
/** \brief Adjusts the SSE client gauge by \p delta. */
void sonar_gw_metrics_sse_clients(sonar_gw_metrics *m, int delta);
/** \brief Counts \p n events queued to SSE clients. */
void sonar_gw_metrics_sse_events(sonar_gw_metrics *m, uint64_t n);
/** \brief Counts one SSE client dropped for being too slow. */
void sonar_gw_metrics_sse_dropped(sonar_gw_metrics *m);

/** \brief The exposition text (new, free()), or NULL when out of memory. */
char *sonar_gw_metrics_render(sonar_gw_metrics *m);

#endif
