/**
 * \file health.h
 * \brief Health checks of HTTP targets: one check, its classification, and
 *        a state machine that applies thresholds against flapping.
 *
 * Three layers, usable on their own:
 * - sonar_health_classify(): pure; turns an HTTP status code and body into
 *   an observed status. HTTP 2xx is passing, anything else critical; a JSON
 *   body in the health-check format (`{"status":"pass|warn|fail",
 *   "checks":{...}}`, draft-inadarei-api-health-check) refines it: `warn`
 *   gives warning, `fail` critical (also `ok`/`up` = pass, `error`/`down` =
 *   fail). The names and outputs of the checks that are not passing go into
 *   the error text.
 * - sonar_health_check_http(): performs one GET (sonar_http_perform(), so
 *   libcurl) within a timeout and classifies it; a refused connection, a
 *   timeout or a body over SONAR_HTTP_MAX_BODY is critical.
 * - sonar_health_state: pure; feeds observed statuses through the
 *   thresholds and reports transitions of the reported status
 *   (unknown → passing ↔ warning ↔ critical).
 * sonar_health_checker bundles a target, its state and the check.
 *
 * Threshold rules (like Kubernetes probes' failureThreshold and
 * successThreshold): the reported status becomes critical after
 * `failure_threshold` consecutive critical observations (default 3); once
 * critical (or while still unknown) it leaves only after
 * `success_threshold` consecutive non-critical observations (default 1),
 * taking the latest one's status. While not critical, passing ↔ warning
 * follows each observation at once (the target says so itself), and fewer
 * than `failure_threshold` critical observations leave it unchanged.
 *
 * Thread-safety: functions without an object are reentrant and may run on
 * any thread. A sonar_health_state or sonar_health_checker is not
 * thread-safe: use each from one thread at a time; distinct ones may be used
 * in parallel (each check uses its own curl handle).
 */
#ifndef SONAR_HEALTH_H
#define SONAR_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Default consecutive critical observations before critical. */
#define SONAR_HEALTH_DEFAULT_FAILURES 3
/** Default consecutive non-critical observations before leaving critical. */
#define SONAR_HEALTH_DEFAULT_SUCCESSES 1
/** Default timeout of one check, in ms. */
#define SONAR_HEALTH_DEFAULT_TIMEOUT_MS 5000
/** Largest threshold accepted. */
#define SONAR_HEALTH_MAX_THRESHOLD 1000

/** \brief Health of a target, worst last. */
typedef enum sonar_health_status {
    SONAR_HEALTH_UNKNOWN = 0, /**< not decided yet */
    SONAR_HEALTH_PASSING,
    SONAR_HEALTH_WARNING,
    SONAR_HEALTH_CRITICAL,
} sonar_health_status;

/** \brief "unknown", "passing", "warning" or "critical". Never NULL. */
const char *sonar_health_status_str(sonar_health_status status);

/**
 * \brief Parses the name given by sonar_health_status_str() into \p out
 *        (written only on success).
 * \return SONAR_OK or SONAR_ERR_INVALID.
 */
sonar_status sonar_health_status_parse(const char *text, sonar_health_status *out);

/** \brief Outcome of one check (a plain value; no pointers). */
typedef struct sonar_health_result {
    sonar_health_status status; /**< observed status of this check alone */
    long http_code;             /**< HTTP status code, 0 when no response arrived */
    int64_t duration_ms;        /**< time the transfer took */
    int64_t checked_at_ms;      /**< wall clock (ms since the epoch) when it started */
    char error[512];            /**< "" when passing; otherwise what was wrong */
} sonar_health_result;

/**
 * \brief Classifies a response (pure; no I/O).
 * \param http_code the HTTP status code.
 * \param body the body, need not be NUL-terminated; may be NULL when
 *        \p body_len is 0. Borrowed for the call.
 * \param out its status and error are written; other fields are left alone.
 */
void sonar_health_classify(long http_code, const char *body, size_t body_len,
                           sonar_health_result *out);

/**
 * \brief Performs one HTTP GET of \p url within \p timeout_ms and
 *        classifies the outcome into \p out.
 *
 * Blocks the calling thread for at most about \p timeout_ms.
 * \param url an absolute http:// or https:// URL. Borrowed for the call.
 * \param timeout_ms 0 for SONAR_HEALTH_DEFAULT_TIMEOUT_MS.
 * \param out written on SONAR_OK: a failed, refused or timed-out check is a
 *        result (critical, with the reason in `error`), not a failure.
 * \return SONAR_OK; SONAR_ERR_INVALID for a missing or non-HTTP URL or a
 *         negative timeout; SONAR_ERR_NOMEM.
 */
sonar_status sonar_health_check_http(const char *url, int64_t timeout_ms,
                                     sonar_health_result *out);

/** \brief One response-time or status-code sample of a result. */
typedef struct sonar_health_sample {
    const char *name; /**< static string */
    double value;
} sonar_health_sample;

/** Number of samples sonar_health_result_samples() writes at most. */
#define SONAR_HEALTH_N_SAMPLES 3

/**
 * \brief Metric samples for a plain HTTP target, named like the Prometheus
 *        blackbox exporter: `probe_success` (1/0: not critical),
 *        `probe_duration_seconds`, and `probe_http_status_code` (only when a
 *        response arrived).
 * \param out room for SONAR_HEALTH_N_SAMPLES samples.
 * \return how many were written.
 */
size_t sonar_health_result_samples(const sonar_health_result *result,
                                   sonar_health_sample out[SONAR_HEALTH_N_SAMPLES]);

/** \brief Thresholds; zero fields take the defaults. */
typedef struct sonar_health_thresholds {
    int failure_threshold; /**< 0: SONAR_HEALTH_DEFAULT_FAILURES */
    int success_threshold; /**< 0: SONAR_HEALTH_DEFAULT_SUCCESSES */
} sonar_health_thresholds;

/** \brief Threshold state of one target (plain struct; init before use). */
typedef struct sonar_health_state {
    sonar_health_status status;   /**< reported status */
    int failure_threshold;
    int success_threshold;
    int consecutive_failures;     /**< critical observations in a row */
    int consecutive_successes;    /**< non-critical observations in a row */
    uint64_t observations;
} sonar_health_state;

/** \brief A change of the reported status. */
typedef struct sonar_health_transition {
    sonar_health_status from;
    sonar_health_status to;
    int streak; /**< the consecutive observations that caused it */
} sonar_health_transition;

/**
 * \brief Starts \p state as unknown with \p thresholds (NULL: defaults).
 * \return SONAR_OK, or SONAR_ERR_INVALID for a negative threshold or one
 *         above SONAR_HEALTH_MAX_THRESHOLD (\p state untouched then).
 */
sonar_status sonar_health_state_init(sonar_health_state *state,
                                     const sonar_health_thresholds *thresholds);

/**
 * \brief Feeds one observed status (pure). SONAR_HEALTH_UNKNOWN is ignored.
 * \param out when not NULL, filled when the reported status changed.
 * \return true when the reported status changed.
 */
bool sonar_health_state_apply(sonar_health_state *state, sonar_health_status observed,
                              sonar_health_transition *out);

/** \brief An HTTP target to check (copied at create time). */
typedef struct sonar_health_target {
    const char *url;                    /**< http:// or https:// */
    int64_t timeout_ms;                 /**< 0: SONAR_HEALTH_DEFAULT_TIMEOUT_MS */
    sonar_health_thresholds thresholds; /**< zeros: defaults */
} sonar_health_target;

/** \brief A target with its threshold state (opaque). */
typedef struct sonar_health_checker sonar_health_checker;

/**
 * \brief Creates a checker for \p target.
 * \param out receives the new checker (destroy with
 *        sonar_health_checker_destroy()); written only on success.
 * \param target copied; the caller may free it at once.
 * \return SONAR_OK; SONAR_ERR_INVALID for a bad URL, timeout or
 *         thresholds; SONAR_ERR_NOMEM.
 */
sonar_status sonar_health_checker_create(sonar_health_checker **out,
                                         const sonar_health_target *target);

/** \brief Frees a checker. Accepts NULL. */
void sonar_health_checker_destroy(sonar_health_checker *checker);

/**
 * \brief Runs one check and applies it to the checker's state.
 * \param result receives the check's result.
 * \param transition when not NULL, filled when the reported status changed.
 * \param changed when not NULL, set to whether it changed.
 * \return as sonar_health_check_http().
 */
sonar_status sonar_health_checker_run(sonar_health_checker *checker,
                                      sonar_health_result *result,
                                      sonar_health_transition *transition, bool *changed);

/** \brief The checker's threshold state (borrowed, valid until destroy). */
const sonar_health_state *sonar_health_checker_state(const sonar_health_checker *checker);

/** \brief The checker's URL (borrowed, valid until destroy). */
const char *sonar_health_checker_url(const sonar_health_checker *checker);

#ifdef __cplusplus
}
#endif
#endif
