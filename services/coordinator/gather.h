/**
 * \file gather.h
 * \brief One scatter-gather per announced change: the tally (pure: who is
 *        expected, who answered, the report) and the gatherer (NATS: one
 *        wildcard subscription on `sonar.result.*.*` made before any
 *        check request is published, a table of running gathers by change
 *        id, deadlines, joins of a change announced again).
 *
 * Flow: sonar_gatherer_begin() snapshots the registry (expected = every
 * service with a live instance; known dependents of the changed service
 * with no live instance are reported incomplete with "registered with no
 * live instance"), publishes `sonar.check.<service>` and then
 * `sonar.gather.v1` on `sonar.gather.<change_id>`. Results are collected
 * in the subscription callback into memory; the callback that records the
 * last expected answer builds the report, answers every change request
 * waiting on the gather and then wakes the waiting handlers, so the reply
 * leaves as soon as everyone answered. At the deadline a waiting handler
 * builds it, with the silent ones incomplete ("no answer by the deadline").
 *
 * Thread-safety: the tally is not thread-safe (the gatherer locks around
 * it). The gatherer and gathers may be used from any thread. begin (a
 * registry snapshot and two publishes), join, attach and release are quick
 * and may run on a NATS callback thread; wait blocks and runs on worker
 * threads only. The result callback runs on the subscription's NATS thread
 * and does only decoding, in-memory work and, for the last expected
 * answer, encoding the report and one reply per attached request.
 */
#ifndef SONARD_GATHER_H
#define SONARD_GATHER_H

#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

#include "registry.h"
#include "sonar/protocol.h"
#include "sonar/service.h"
#include "sonar/status.h"

/** Reasons written into incomplete report entries. */
#define SONARD_REASON_NO_ANSWER    "no answer by the deadline"
#define SONARD_REASON_NOT_LIVE     "registered with no live instance"
#define SONARD_REASON_UNREGISTERED "answered but not in the registry"
#define SONARD_REASON_SHUTDOWN     "no answer before the coordinator shut down"

/* ---- The tally (pure) ---------------------------------------------------- */

typedef struct sonar_tally sonar_tally;

/**
 * \brief Starts a tally for \p change (borrowed, change_id set).
 * \param expected taken on success (zeroed in the caller's struct).
 * \param started_wall_ms wall clock at the start, for `started_at`.
 * \param started_ms monotonic start, for durations.
 */
sonar_status sonar_tally_create(sonar_tally **out, const sonar_change_msg *change,
                                sonar_expected *expected, int64_t started_wall_ms,
                                int64_t started_ms);

/** \brief Frees the tally. Accepts NULL. */
void sonar_tally_destroy(sonar_tally *t);

/**
 * \brief Records one answer. \p res must carry the tally's change id.
 *        A second answer from the same service is ignored (the first
 *        wins). Takes the contents of \p res on SONAR_OK (it is zeroed).
 *        An answer from a service that was not expected is included in the
 *        report; it is flagged `unregistered` unless \p known (the service
 *        is in the registry, e.g. its instance expired a moment ago).
 * \return SONAR_OK; SONAR_ERR_INVALID (wrong change id, or a result with
 *         status incomplete); SONAR_ERR_STATE when the report was already
 *         built; SONAR_ERR_NOMEM.
 */
sonar_status sonar_tally_add(sonar_tally *t, sonar_result_msg *res, bool known);

/** \brief True when every expected (live) service answered. */
bool sonar_tally_complete(const sonar_tally *t);

/** \brief Number of expected services that answered so far. */
size_t sonar_tally_answered(const sonar_tally *t);

/**
 * \brief Builds the report at \p now_ms (monotonic). Services that did not
 *        answer get status incomplete with \p silent_reason (NULL: "no
 *        answer by the deadline"). Entries are sorted by service name.
 *        Can be called once: the answers move into the report.
 * \param out new report (finish with sonar_report_finish()).
 */
sonar_status sonar_tally_report(sonar_tally *t, int64_t now_ms, const char *silent_reason,
                                sonar_report_msg *out);

/* ---- The gatherer (NATS) ------------------------------------------------- */

typedef struct sonar_gatherer sonar_gatherer;
typedef struct sonar_gather sonar_gather;

/**
 * \brief Subscribes to `sonar.result.*.*` on \p nc (borrowed, must outlive
 *        the gatherer) and flushes, so results of gathers begun afterwards
 *        are never missed.
 * \param reg borrowed registry the expected set is taken from.
 * \param self_name answers from this service (the coordinator's own
 *        libsonar identity) are ignored; may be NULL. Copied.
 */
sonar_status sonar_gatherer_create(sonar_gatherer **out, natsConnection *nc,
                                   sonar_registry *reg, const char *self_name);

/**
 * \brief Unsubscribes and frees. Call after every gather was finished or
 *        released (sonar_gatherer_cancel_all() makes waits return). Accepts NULL.
 */
void sonar_gatherer_destroy(sonar_gatherer *g);

/** \brief Ends every running gather now (shutdown): waits return at once. */
void sonar_gatherer_cancel_all(sonar_gatherer *g);

/** \brief Number of gathers running (begun and not finished). */
size_t sonar_gatherer_running(sonar_gatherer *g);

/**
 * \brief Starts the gather of \p change (borrowed; change_id and
 *        timeout_ms set), or joins the one running with that change id.
 * \param out the gather (a reference: hand it back with
 *        sonar_gatherer_finish() when \p out_joined is false, else
 *        sonar_gatherer_release()).
 * \param out_joined true when an existing gather was joined.
 * \return SONAR_OK, SONAR_ERR_INVALID, SONAR_ERR_NATS (publish failed),
 *         SONAR_ERR_STATE (shutting down), SONAR_ERR_NOMEM.
 */
sonar_status sonar_gatherer_begin(sonar_gatherer *g, const sonar_change_msg *change,
                                  sonar_gather **out, bool *out_joined);

/**
 * \brief Joins the running gather of \p change_id.
 * \param out a reference, written on success; hand it back with
 *        sonar_gatherer_release().
 * \return SONAR_OK or SONAR_ERR_NOT_FOUND.
 */
sonar_status sonar_gatherer_join(sonar_gatherer *g, const char *change_id, sonar_gather **out);

/**
 * \brief Has \p req (borrowed; it must stay valid until the gather's report
 *        is built, i.e. until a sonar_gather_wait() on this gather returned)
 *        answered with the report by whichever thread builds it, or at once
 *        when it is built already (a 500 when it could not be built, or on
 *        out of memory). Quick: may run on a NATS thread.
 */
void sonar_gather_attach(sonar_gather *ga, sonar_request *req);

/**
 * \brief Blocks until the gather ends (everyone answered, the deadline,
 *        or cancel) and returns its report.
 * \param req when not NULL, attached first (sonar_gather_attach(); it must
 *        stay valid until this returns, which holds for the request of the
 *        endpoint handler that calls this): it is answered with the report
 *        (or a 500 when the report could not be built) by whichever thread
 *        builds it, before the waiting callers are woken. When the last
 *        expected answer arrives that is the result callback (a NATS
 *        thread), so the reply does not wait for this thread to wake up.
 *        On return the request has been answered.
 * \param out_json new `sonar.report.v1` text (free()).
 * \param out_verdict when not NULL, the verdict.
 */
sonar_status sonar_gather_wait(sonar_gather *ga, sonar_request *req, char **out_json,
                               sonar_outcome *out_verdict);

/**
 * \brief The starter's hand-back, after it published and stored the
 *        report: removes the gather from the table (a later announce of
 *        the same id finds the stored report) and drops the reference.
 */
void sonar_gatherer_finish(sonar_gatherer *g, sonar_gather *ga);

/** \brief A joiner's hand-back: drops the reference. */
void sonar_gatherer_release(sonar_gatherer *g, sonar_gather *ga);

/**
 * \brief The check request timeout sent to services for a gather of
 *        \p timeout_ms: a margin shorter (a tenth, at most 1 s), so that a
 *        check timing out still reports `fail` before the gather's deadline.
 */
int64_t sonar_gather_check_timeout(int64_t timeout_ms);

#endif
