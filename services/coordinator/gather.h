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
 * attached to the gather and then runs their on_end callbacks, so the
 * reply leaves as soon as everyone answered. At the deadline the
 * gatherer's deadline thread (`sonard-deadline`) does the same, with the
 * silent ones incomplete ("no answer by the deadline"). No thread waits for
 * a gather: a running gather holds no worker. With several coordinators a
 * gather may also claim its change id and, having lost the claim, end with
 * the winner's report instead (sonar_gatherer_set_claimer()).
 *
 * Lock order: the gatherer's lock may be taken while a gather's is held,
 * never the other way round.
 *
 * Thread-safety: the tally is not thread-safe (the gatherer locks around
 * it). The gatherer and gathers may be used from any thread; every
 * function here is quick (begin: a registry snapshot and two publishes) and
 * may run on a NATS callback thread. The result callback runs on the
 * subscription's NATS thread and does only decoding, in-memory work and,
 * for the last expected answer, encoding the report, one reply per
 * attached request and their on_end callbacks.
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
 * \brief Stops the deadline thread, unsubscribes and frees. Call after
 *        every gather was finished or released (sonar_gatherer_cancel_all()
 *        ends the running ones). Accepts NULL.
 */
void sonar_gatherer_destroy(sonar_gatherer *g);

/**
 * \brief Ends every running gather now (shutdown): each report is built
 *        (services still silent: "no answer before the coordinator shut
 *        down"), its requests answered and their on_end run, on the
 *        caller's thread. Gathers begun afterwards are refused.
 */
void sonar_gatherer_cancel_all(sonar_gatherer *g);

/**
 * \brief Waits (at most \p timeout_ms) until every gather that had ended
 *        when called has left the table, i.e. until every report already
 *        replied was handed back with sonar_gatherer_finish() (sonard: once
 *        stored). A read of stored reports after this sees every report a
 *        client could have received before asking. Gathers ending later are
 *        not waited for. Blocks: workers only.
 * \return false when the timeout passed first.
 */
bool sonar_gatherer_wait_settled(sonar_gatherer *g, int64_t timeout_ms);

/** \brief Number of gathers running (begun and not finished). */
size_t sonar_gatherer_running(sonar_gatherer *g);

/** With claims: how long a gather whose answers are all in waits for its
 *  claim's answer before it reports as if it had won. */
#define SONAR_GATHER_CLAIM_WAIT_MS 2000
/** A gather that lost its claim waits this long past its deadline for the
 *  winner's report before it reports itself (the winner is presumed gone). */
#define SONAR_GATHER_CLAIM_GRACE_MS 2000

/**
 * Claims a change id for this coordinator (e.g. a JetStream publish that
 * only the first of several coordinators can make), asynchronously: called
 * right after the scatter; the answer comes by sonar_gatherer_claimed().
 * Returns false when no claim was made (e.g. no other coordinator): the
 * gather is then this coordinator's. Quick; runs on the thread that begins
 * the gather (a NATS thread).
 */
typedef bool (*sonar_gather_claim_fn)(void *closure, const char *change_id);

/**
 * \brief With several coordinators, two announcements of one new change id
 *        may reach two of them at the same moment and start two gathers.
 *        With a claimer set, every gather begun claims its change id; one
 *        whose answers are all in waits for the claim's answer before it
 *        ends. The winner reports as usual; the loser ends with the
 *        winner's report (sonar_gatherer_adopt()), or -- if none came by
 *        its deadline plus SONAR_GATHER_CLAIM_GRACE_MS -- with its own.
 *        Set before the first gather; \p fn NULL: no claims.
 */
void sonar_gatherer_set_claimer(sonar_gatherer *g, sonar_gather_claim_fn fn, void *closure);

/**
 * \brief The answer to the claim of \p change_id: \p won, or another
 *        coordinator claimed it first. Quick: may end the gather (and reply)
 *        on the caller's thread. Unknown or ended gathers are ignored.
 */
void sonar_gatherer_claimed(sonar_gatherer *g, const char *change_id, bool won);

/**
 * \brief Another coordinator's report of \p change_id (\p report, \p len
 *        bytes, already validated): a gather of that change still running
 *        here ends with it -- its requests get that report, and it is not
 *        stored or published as this coordinator's (sonar_gather_adopted()).
 * \return true when a running gather adopted it.
 */
bool sonar_gatherer_adopt(sonar_gatherer *g, const char *change_id, const char *report,
                          size_t len, sonar_outcome verdict);

/** \brief Whether \p ga ended with another coordinator's report (valid once ended). */
bool sonar_gather_adopted(const sonar_gather *ga);

/**
 * \brief Publishes the `sonar.gather.<id>` announcement of every gather
 *        still collecting again, with `timeout_ms` the time it has left and
 *        `"again": true`: a coordinator that started after a gather began
 *        did not hear its announcement, and would otherwise gather a retry
 *        of that change a second time. Quick (memory and publishes): fine on
 *        a NATS thread.
 * \return how many were published.
 */
size_t sonar_gatherer_reannounce(sonar_gatherer *g);

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
 * Called once when the gather ended, after the attached request was
 * answered, outside the gather's lock, on the thread that ended it (a NATS
 * thread, the deadline thread, or the caller of cancel or attach): it must
 * be quick. \p report_json (borrowed, valid while the gather is referenced)
 * and \p verdict are the report when \p status is SONAR_OK.
 */
typedef void (*sonar_gather_end_fn)(void *arg, sonar_gather *ga, sonar_status status,
                                    const char *report_json, sonar_outcome verdict);

/**
 * \brief Has \p req answered with the report by whichever thread builds it
 *        (a 500 when it could not be built, or on out of memory), then
 *        \p on_end called (may be NULL). When the report is built already,
 *        both happen at once on the caller's thread. \p req must stay valid
 *        until on_end ran (sonar_request_keep()). Quick: may run on a NATS
 *        thread.
 */
void sonar_gather_attach(sonar_gather *ga, sonar_request *req, sonar_gather_end_fn on_end,
                         void *arg);

/**
 * \brief The starter's hand-back, after the report was stored (and handed
 *        to the outbox): removes the gather from the table (a later
 *        announce of the same id finds the stored report; until then it
 *        joins this gather) and drops the reference.
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
