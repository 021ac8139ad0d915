/**
 * \file service.h
 * \brief Joining the bus as a service: registration and heartbeat, check
 *        requests answered by running checks, NATS service discovery
 *        (`$SRV.PING|INFO|STATS`), and request/reply endpoints.
 *
 * Joining takes about ten lines:
 * \code
 *   sonar_service_config cfg = { .name = "jafflr", .version = "1.2.0",
 *                                .address = "http://10.0.0.7:8080" };
 *   sonar_service *svc;
 *   sonar_service_create(&svc, bus, &cfg);
 *   sonar_service_add_check(svc, "chillybin", "pick cheese", check_pick, NULL);
 *   sonar_service_start(svc);
 *   ... serve ...
 *   sonar_service_destroy(svc);   // leaves the bus, waits for running checks
 * \endcode
 *
 * Threads: NATS callbacks only decode, answer `none`, answer `$SRV` and
 * hand work over. Checks run on their own worker threads (all checks of a
 * request concurrently); endpoint handlers run on a small worker pool,
 * except those of fast endpoints (sonar_service_add_fast_endpoint()),
 * which run on the NATS delivery thread and hand slow work to the pool
 * with sonar_request_defer().
 * The heartbeat runs on its own thread.
 *
 * Thread-safety: configure (add_check, add_endpoint, depend) before
 * sonar_service_start(); after start, the service may be used from any
 * thread. sonar_service_destroy() must not race with other calls.
 */
#ifndef SONAR_SERVICE_H
#define SONAR_SERVICE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sonar/bus.h"
#include "sonar/protocol.h"
#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Default heartbeat interval. */
#define SONAR_DEFAULT_HEARTBEAT_MS 5000
/** Default queue group for endpoints added with sonar_service_add_endpoint(). */
#define SONAR_DEFAULT_QUEUE_GROUP "q"

/** Configuration copied at create time; the caller may free its strings. */
typedef struct sonar_service_config {
    const char *name;        /**< required: the service name (name rule) */
    const char *version;     /**< required: e.g. "1.2.0" (SemVer) */
    const char *address;     /**< where this instance serves, e.g. "http://host:port"; may be NULL */
    const char *description; /**< shown in $SRV.INFO; may be NULL */
    const char *instance;    /**< instance id; NULL: a random id */
    const char *health;      /**< health endpoint: HTTP URL, "nats", or NULL */
    const char *metrics;     /**< metrics endpoint: HTTP URL, "nats", or NULL */
    int64_t heartbeat_ms;    /**< 0: SONAR_DEFAULT_HEARTBEAT_MS */
    int endpoint_workers;    /**< threads serving endpoint handlers; 0: 4 */
    const char *const *metadata; /**< NULL-terminated "key", "value", ... pairs; may be NULL */
    bool no_check_endpoint;  /**< true: do not answer check requests at all (coordinators,
                                  tools); the service still registers and answers $SRV */
} sonar_service_config;

typedef struct sonar_service sonar_service;

/* ---- Checks ------------------------------------------------------------ */

/** Outcome a check function returns. */
typedef enum sonar_check_status {
    SONAR_CHECK_PASS = 0,
    SONAR_CHECK_FAIL = 1,
} sonar_check_status;

/**
 * What a running check knows about the candidate. Borrowed by the check
 * function for the duration of the call only.
 */
typedef struct sonar_check_ctx sonar_check_ctx;

/** \brief Candidate address from the check request (borrowed). */
const char *sonar_check_address(const sonar_check_ctx *ctx);
/** \brief Candidate version (borrowed). */
const char *sonar_check_version(const sonar_check_ctx *ctx);
/** \brief The changed service's name (borrowed). */
const char *sonar_check_service(const sonar_check_ctx *ctx);
/** \brief The change id (borrowed). */
const char *sonar_check_change_id(const sonar_check_ctx *ctx);
/** \brief Absolute deadline on the sonar_now_ms() clock. */
int64_t sonar_check_deadline_ms(const sonar_check_ctx *ctx);
/** \brief Milliseconds left before the deadline (0 when passed). */
int64_t sonar_check_remaining_ms(const sonar_check_ctx *ctx);
/** \brief True once the deadline passed; long checks should poll it and give up. */
bool sonar_check_expired(const sonar_check_ctx *ctx);
/**
 * \brief Sets the message reported with the check result (printf-style;
 *        truncated to SONAR_MAX_MESSAGE_TEXT). Returns SONAR_CHECK_FAIL so
 *        a check can `return sonar_check_fail(ctx, "...", ...)`.
 */
sonar_check_status sonar_check_fail(sonar_check_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/** \brief Like sonar_check_fail() but returns SONAR_CHECK_PASS. */
sonar_check_status sonar_check_pass(sonar_check_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/**
 * A check. Runs on a worker thread of its own, never on a NATS thread.
 * \param ctx borrowed for the call.
 * \param closure the pointer given to sonar_service_add_check().
 */
typedef sonar_check_status (*sonar_check_fn)(sonar_check_ctx *ctx, void *closure);

/* ---- Endpoints --------------------------------------------------------- */

/**
 * A request to an endpoint. Borrowed by the handler for the call only;
 * for a fast endpoint that deferred it, by the continuation for its call.
 * The answer may come from another thread while the handler (or the
 * continuation) runs, e.g. one it waits for: respond and respond_error are
 * safe to race (the first wins, the other returns SONAR_ERR_STATE), but
 * the handler must not return before that other thread is done with the
 * request (it is freed or reused once the handler returned).
 */
typedef struct sonar_request sonar_request;

const char *sonar_request_subject(const sonar_request *req);
const char *sonar_request_data(const sonar_request *req);
size_t sonar_request_len(const sonar_request *req);
/** \brief Header value of the request (borrowed), or NULL. */
const char *sonar_request_header(const sonar_request *req, const char *name);
/** \brief Replies with \p data. At most one reply per request. */
sonar_status sonar_request_respond(sonar_request *req, const char *data, size_t len);
/**
 * \brief Replies with a `sonar.error.v1` body and the Nats-Service-Error
 *        headers; counted as an error in $SRV.STATS.
 */
sonar_status sonar_request_respond_error(sonar_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/**
 * \brief Replies with \p doc encoded as compact JSON. Takes \p doc (the
 *        reference is released in every case); a NULL \p doc or an encoding
 *        failure is answered with a 500 error instead.
 */
sonar_status sonar_request_respond_json(sonar_request *req, json_t *doc);

/**
 * An endpoint handler, run on an endpoint worker thread. If it returns
 * without replying, the service replies with an error (500) built from
 * the returned status and sonar_last_error().
 */
typedef sonar_status (*sonar_endpoint_fn)(sonar_request *req, void *closure);

/**
 * \brief From a fast endpoint's handler only (on the NATS thread): hands the
 *        request over to the worker pool, where \p fn(req, closure) runs
 *        after the handler returned, like a plain endpoint's handler (if
 *        the request is still unanswered when it returns, the service
 *        replies with an error). The request stays valid, at the same
 *        address, until the continuation returned, so the handler may give
 *        it to another thread (which may answer it before or while the
 *        continuation runs) if the continuation waits for that thread.
 *        The pool's slot is reserved at once: on SONAR_OK the continuation
 *        is certain to run exactly once (it is the place to free
 *        \p closure). At most one defer per request.
 * \return SONAR_OK; SONAR_ERR_STATE (not a fast endpoint, deferred
 *         already, the service is busy (10,000 queued) or stopping: the
 *         handler should answer the request itself); SONAR_ERR_NOMEM.
 */
sonar_status sonar_request_defer(sonar_request *req, sonar_endpoint_fn fn, void *closure);

/**
 * \brief Keeps \p req past its handler: from a fast handler that did not
 *        defer, or from a continuation. When the handler returns, the
 *        service neither answers nor frees the request; the caller owns
 *        it, may answer it from any thread, and must hand it back with
 *        sonar_request_done() exactly once. For work that ends on another
 *        thread's event (sonard's gathers), so that no worker waits for it.
 *        sonar_service_stop() waits until every kept request was done.
 * \return SONAR_OK; SONAR_ERR_STATE (a plain endpoint's request, a fast
 *         handler that deferred, or kept already).
 */
sonar_status sonar_request_keep(sonar_request *req);

/**
 * \brief Hands a kept request back: answers it with an error (500) when
 *        nobody did, and frees it. Any thread; \p req must not be used
 *        afterwards. Accepts NULL.
 */
void sonar_request_done(sonar_request *req);

/* ---- Lifecycle --------------------------------------------------------- */

/**
 * \brief Creates a service (not yet on the bus).
 * \param out new service, written on success.
 * \param bus borrowed; must outlive the service.
 * \param cfg copied.
 * \return SONAR_OK, SONAR_ERR_INVALID (bad name/version/metadata, with
 *         the reason), SONAR_ERR_NOMEM.
 */
sonar_status sonar_service_create(sonar_service **out, sonar_bus *bus,
                                  const sonar_service_config *cfg);

/**
 * \brief Declares a dependency without checks (it appears in depends_on;
 *        a change to it is answered `none`). Before start only.
 */
sonar_status sonar_service_depend(sonar_service *svc, const char *dependency);

/**
 * \brief Registers a check run against \p dependency's candidate whenever
 *        a change of \p dependency is announced. Implies depend(). Check
 *        names must be unique per dependency. Before start only.
 */
sonar_status sonar_service_add_check(sonar_service *svc, const char *dependency,
                                     const char *check_name, sonar_check_fn fn,
                                     void *closure);

/**
 * \brief Adds a request/reply endpoint listed in $SRV.INFO and counted in
 *        $SRV.STATS. \p name follows the name rule; \p subject may contain
 *        wildcards; \p queue_group NULL means SONAR_DEFAULT_QUEUE_GROUP.
 *        Before start only.
 */
sonar_status sonar_service_add_endpoint(sonar_service *svc, const char *name,
                                        const char *subject, const char *queue_group,
                                        sonar_endpoint_fn fn, void *closure);

/**
 * \brief Like sonar_service_add_endpoint(), but \p fn runs on the NATS
 *        delivery thread of the endpoint's subscription: no hand-off to the
 *        worker pool, so it answers sooner. It must be quick (decoding,
 *        memory, a publish): it must not block, wait, or touch files or
 *        databases. For slow work it calls sonar_request_defer(). The
 *        endpoint is listed in $SRV.INFO and counted in $SRV.STATS like any
 *        other (processing time: from delivery to the answer, whichever
 *        thread sends it). Before start only.
 */
sonar_status sonar_service_add_fast_endpoint(sonar_service *svc, const char *name,
                                             const char *subject, const char *queue_group,
                                             sonar_endpoint_fn fn, void *closure);

/**
 * Supplies extra JSON for an endpoint's `data` in $SRV.STATS. Called on a
 * NATS thread at each STATS request: it must be quick. Returns a new
 * reference or NULL.
 */
typedef json_t *(*sonar_stats_fn)(void *closure);

/** \brief Attaches a stats data supplier to endpoint \p name. Before start only. */
sonar_status sonar_service_set_endpoint_stats(sonar_service *svc, const char *name,
                                              sonar_stats_fn fn, void *closure);

/**
 * \brief Subscribes (checks, discover, $SRV, endpoints), publishes the
 *        registration, starts the heartbeat. Subscriptions are flushed to
 *        the server before it returns, so a request published after start
 *        returns is seen.
 */
sonar_status sonar_service_start(sonar_service *svc);

/**
 * \brief Leaves the bus: publishes `sonar.leave.<name>`, unsubscribes,
 *        stops the heartbeat, then waits for running checks and handlers.
 *        Idempotent; destroy calls it.
 */
void sonar_service_stop(sonar_service *svc);

/** \brief Stops (if needed) and frees. Accepts NULL. */
void sonar_service_destroy(sonar_service *svc);

/** \brief This instance's id (borrowed). */
const char *sonar_service_instance(const sonar_service *svc);
/** \brief The service name (borrowed). */
const char *sonar_service_name(const sonar_service *svc);
/** \brief The bus (borrowed). */
sonar_bus *sonar_service_bus(sonar_service *svc);

/**
 * \brief Builds this service's registration message (new; finish with
 *        sonar_register_finish()).
 */
sonar_status sonar_service_registration(const sonar_service *svc, sonar_register_msg *out);

#ifdef __cplusplus
}
#endif
#endif
