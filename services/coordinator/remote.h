/**
 * \file remote.h
 * \brief Gathers running on *other* coordinators, so that an announcement
 *        retried while another sonard gathers the same change waits for
 *        that gather's report instead of starting a second gather (and a
 *        second report).
 *
 * Several sonards share `sonar.change.*` in the queue group `sonard`; a
 * retry can land on any of them. Every gather is announced on
 * `sonar.gather.<change_id>` (with its timeout) and ends with a report on
 * `sonar.report.<service>`. A coordinator notes the gathers of others
 * (sonar_remote_begun()) and the reports of others
 * (sonar_remote_report()); a change request for such a change waits
 * (sonar_remote_wait()) until the report came or the gather's deadline
 * plus a grace passed -- then the other coordinator is presumed gone and
 * this one gathers.
 *
 * Thread-safety: every function may be called from any thread; begun,
 * report and cancel are quick (NATS callbacks), wait blocks (workers only).
 */
#ifndef SONARD_REMOTE_H
#define SONARD_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sonar/status.h"

/** After a remote gather's deadline, how long its report may still take. */
#define SONAR_REMOTE_GRACE_MS 2000
/** A report seen for a remote gather is kept this long after its deadline. */
#define SONAR_REMOTE_KEEP_MS 30000
/** At most this many remote gathers are remembered (the oldest go first). */
#define SONAR_REMOTE_MAX 4096

typedef struct sonar_remote sonar_remote;

/** \return SONAR_OK or SONAR_ERR_NOMEM. Free with sonar_remote_destroy(). */
sonar_status sonar_remote_create(sonar_remote **out);

/** Accepts NULL. No waiter may be inside sonar_remote_wait() any more. */
void sonar_remote_destroy(sonar_remote *r);

/**
 * \brief Notes that another coordinator gathers \p change_id until
 *        \p deadline_ms (monotonic, sonar_now_ms()). A second note of the
 *        same change keeps the later deadline.
 */
void sonar_remote_begun(sonar_remote *r, const char *change_id, int64_t deadline_ms);

/**
 * \brief Hands in a report of another coordinator (\p report, \p len
 *        bytes, copied) for \p change_id. Wakes its waiters; a report of a
 *        gather never noted is ignored.
 */
void sonar_remote_report(sonar_remote *r, const char *change_id, const char *report,
                         size_t len);

/**
 * \brief When another coordinator gathers \p change_id (or did, and its
 *        report is kept), waits for the report until the gather's deadline
 *        plus SONAR_REMOTE_GRACE_MS.
 * \param out_report written with the report (malloc'd, NUL-terminated;
 *        the caller frees it) when true is returned.
 * \return true with the report; false when no such gather is known, its
 *         report did not come in time, or sonar_remote_cancel() was called.
 */
bool sonar_remote_wait(sonar_remote *r, const char *change_id, char **out_report);

/**
 * \brief Whether another coordinator's gather of \p change_id is known and
 *        its report did not come by its deadline plus SONAR_REMOTE_GRACE_MS:
 *        that coordinator is presumed gone.
 */
bool sonar_remote_gone(sonar_remote *r, const char *change_id);

/** \brief How many gathers of other coordinators are remembered now. */
size_t sonar_remote_count(sonar_remote *r);

/** \brief Wakes every waiter (they return false) and refuses new waits: at stop. */
void sonar_remote_cancel(sonar_remote *r);

#endif
