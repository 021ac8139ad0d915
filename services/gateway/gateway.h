/**
 * \file gateway.h
 * \brief sonar-gateway as one object: an HTTP server (libmicrohttpd, one
 *        thread per connection) that answers the REST API of
 *        docs/openapi.yaml by asking sonard and statusd over the bus, streams
 *        bus events as server-sent events, serves the embedded dashboard and
 *        its own /metrics, and joins the bus as a libsonar service (named
 *        SONAR_GATEWAY_NAME) so `$SRV` and the registry list it. It declares
 *        no dependency, so it answers every check request `none` at once.
 *
 * Stateless: every answer is built from the bus at request time.
 *
 * Threads: HTTP requests run on their connection's thread (requests over
 * the bus block that thread only); NATS callbacks only queue events.
 * Thread-safety: start and stop from one thread (main).
 */
#ifndef SONAR_GATEWAY_H
#define SONAR_GATEWAY_H

#include <stdint.h>

#include "sonar/bus.h"
#include "sonar/status.h"

/** The gateway's service name on the bus. */
#define SONAR_GATEWAY_NAME "sonar-gateway"
/** Default listen address. */
#define SONAR_GATEWAY_DEFAULT_LISTEN "127.0.0.1:8090"
/** Default timeout of a request over the bus. */
#define SONAR_GATEWAY_DEFAULT_TIMEOUT_MS 5000

typedef struct sonar_gateway_config {
    const char *listen;     /**< "ADDR:PORT" ("[v6]:PORT" for IPv6); port 0 picks a free one */
    int64_t timeout_ms;     /**< per bus request */
    const char *version;    /**< for $SRV, /health and /metrics */
    int max_connections;    /**< HTTP connections at most (0: 256) */
    int max_sse_clients;    /**< event-stream clients at most (0: 64) */
    int sse_queue;          /**< frames queued per event-stream client (0: 512) */
} sonar_gateway_config;

typedef struct sonar_gateway sonar_gateway;

/**
 * \brief Checks a listen address ("ADDR:PORT", "[V6]:PORT"; host names are
 *        resolved) without binding it.
 * \return SONAR_OK or SONAR_ERR_INVALID with the reason.
 */
sonar_status sonar_gateway_listen_check(const char *listen);

/**
 * \brief Subscribes the event hub, joins the bus and starts listening.
 * \param bus borrowed; must outlive the gateway.
 * \param cfg copied.
 * \param out new gateway, written on success.
 * \return SONAR_OK; SONAR_ERR_INVALID (bad listen address, with the
 *         reason); SONAR_ERR_IO (cannot listen); SONAR_ERR_NATS; SONAR_ERR_NOMEM.
 */
sonar_status sonar_gateway_start(sonar_gateway **out, sonar_bus *bus,
                                 const sonar_gateway_config *cfg);

/** \brief "http://host:port" the gateway listens on (borrowed). */
const char *sonar_gateway_url(const sonar_gateway *gw);

/**
 * \brief Graceful stop: ends event streams, stops accepting and finishes the
 *        requests in flight, leaves the bus, frees. Accepts NULL.
 */
void sonar_gateway_stop(sonar_gateway *gw);

#endif
