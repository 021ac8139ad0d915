/**
 * \file statusstore.h
 * \brief SQLite storage for statusd: health-check results, the latest
 *        status per target, and metric samples with their labels.
 *
 * The schema is versioned (`schema_version` table) and migrated forward on
 * open, one transaction per step; a file written by a newer build is
 * refused. WAL journal, `synchronous=NORMAL`, a busy timeout.
 *
 * Tables: `checks` (one row per health-check result), `latest` (the newest
 * result per service and target, kept on insert, so the current status
 * survives pruning), `series` (service, metric name, canonical labels) and
 * `samples` (series, time, value; NaN is kept as NaN).
 *
 * Times are wall-clock milliseconds since the epoch. Retention deletes rows
 * older than a cut-off in small batches, each its own transaction, so
 * writers are never locked out for long.
 *
 * Thread-safety: a store handle may be used from several threads; calls
 * are serialised by an internal mutex. Lists returned are owned by the
 * caller and independent of the store.
 */
#ifndef SONAR_STATUSSTORE_H
#define SONAR_STATUSSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sonar/health.h"
#include "sonar/promtext.h"
#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Schema version this build writes. */
#define SONAR_STATUSSTORE_SCHEMA_VERSION 2
/** Longest target text (URL or "nats"), in bytes. */
#define SONAR_STATUSSTORE_TARGET_MAX 2048
/** Longest error text stored; longer is cut. */
#define SONAR_STATUSSTORE_ERROR_MAX 1024
/** Default and largest `limit` of the check query. */
#define SONAR_STATUSSTORE_CHECKS_DEFAULT 20
#define SONAR_STATUSSTORE_CHECKS_MAX 1000
/** Default and largest `limit` of the sample query. */
#define SONAR_STATUSSTORE_SAMPLES_DEFAULT 1000
#define SONAR_STATUSSTORE_SAMPLES_MAX 100000
/** Default rows per prune batch. */
#define SONAR_STATUSSTORE_PRUNE_BATCH 500

/** \brief A store (opaque). */
typedef struct sonar_statusstore sonar_statusstore;

/** \brief One health-check result, as stored and as returned. */
typedef struct sonar_statusstore_check {
    int64_t id;                     /**< assigned by the store (ignored on add) */
    const char *service;            /**< sonar_name_valid() */
    const char *target;             /**< e.g. the health URL; 1..TARGET_MAX bytes */
    sonar_health_status observed;   /**< this check alone */
    sonar_health_status reported;   /**< after thresholds */
    long http_code;                 /**< 0: no response */
    int64_t duration_ms;
    int64_t at_ms;                  /**< when the check ran (wall clock) */
    const char *error;              /**< "" or NULL when none */
} sonar_statusstore_check;

/** \brief A list of checks; strings borrowed from the list. */
typedef struct sonar_statusstore_checks {
    sonar_statusstore_check *items;
    size_t count;
} sonar_statusstore_checks;

/** \brief One metric sample to add. */
typedef struct sonar_statusstore_sample_in {
    const char *service;                /**< sonar_name_valid() */
    const char *name;                   /**< sonar_promtext_name_valid() */
    const sonar_promtext_label *labels; /**< label names valid, values UTF-8; no duplicates */
    size_t n_labels;
    double value;                       /**< NaN and +-Inf allowed */
    int64_t at_ms;
} sonar_statusstore_sample_in;

/** \brief One metric sample as returned; strings borrowed from the list. */
typedef struct sonar_statusstore_sample {
    const char *service;
    const char *name;
    const char *labels_json; /**< canonical JSON object, keys sorted, e.g. {"code":"200"} */
    double value;
    int64_t at_ms;
} sonar_statusstore_sample;

/** \brief A list of samples. */
typedef struct sonar_statusstore_samples {
    sonar_statusstore_sample *items;
    size_t count;
} sonar_statusstore_samples;

/** \brief A sample query; NULL / zero fields do not filter. */
typedef struct sonar_statusstore_sample_query {
    const char *name;    /**< metric name, or NULL for any */
    const char *service; /**< or NULL for any */
    int64_t from_ms;     /**< inclusive; 0: no lower bound */
    int64_t to_ms;       /**< inclusive; 0: no upper bound */
    size_t limit;        /**< 0: SONAR_STATUSSTORE_SAMPLES_DEFAULT */
} sonar_statusstore_sample_query;

/** \brief What one prune call removed. */
typedef struct sonar_statusstore_pruned {
    uint64_t checks;
    uint64_t samples;
    uint64_t series;  /**< series left without samples */
    uint64_t batches; /**< transactions used */
} sonar_statusstore_pruned;

/**
 * \brief Opens (creating if needed) and migrates the store at \p path.
 * \param out receives the new store (destroy with
 *        sonar_statusstore_destroy()); written only on success.
 * \return SONAR_OK; SONAR_ERR_INVALID for a missing path; SONAR_ERR_DB
 *         (SQLite's text in the error); SONAR_ERR_VERSION when the file's
 *         schema is newer than SONAR_STATUSSTORE_SCHEMA_VERSION.
 */
sonar_status sonar_statusstore_create(sonar_statusstore **out, const char *path);

/** \brief Closes the store. Accepts NULL. */
void sonar_statusstore_destroy(sonar_statusstore *store);

/** \brief Schema version of the open file (after migration). */
int sonar_statusstore_schema_version(sonar_statusstore *store);

/**
 * \brief Stores one check result and makes it the latest of its
 *        (service, target) when it is not older than the current one.
 * \param check borrowed for the call; `id` is ignored.
 * \param out_id when not NULL, receives the new row id.
 * \return SONAR_OK; SONAR_ERR_INVALID for a bad service name, target or
 *         status; SONAR_ERR_DB.
 */
sonar_status sonar_statusstore_add_check(sonar_statusstore *store,
                                         const sonar_statusstore_check *check,
                                         int64_t *out_id);

/**
 * \brief sonar_statusstore_add_check() and sonar_statusstore_add_samples()
 *        of the same probe in one transaction: both are stored or neither
 *        (e.g. a health check and its response-time and status-code samples).
 * \param samples may be NULL when \p n is 0.
 * \return as the two functions: SONAR_ERR_INVALID (nothing stored) for a
 *         bad check or sample; SONAR_ERR_DB.
 */
sonar_status sonar_statusstore_add_check_with_samples(sonar_statusstore *store,
                                                      const sonar_statusstore_check *check,
                                                      const sonar_statusstore_sample_in *samples,
                                                      size_t n, int64_t *out_id);

/**
 * \brief The latest check of every target, ordered by service then target.
 * \param service when not NULL, only that service's targets.
 * \param out filled on success (free with sonar_statusstore_checks_finish()).
 */
sonar_status sonar_statusstore_latest(sonar_statusstore *store, const char *service,
                                      sonar_statusstore_checks *out);

/**
 * \brief A service's checks (every service's when \p service is NULL),
 *        newest first.
 * \param limit 0: SONAR_STATUSSTORE_CHECKS_DEFAULT; more than
 *        SONAR_STATUSSTORE_CHECKS_MAX is SONAR_ERR_INVALID.
 * \param out filled on success (free with sonar_statusstore_checks_finish()).
 */
sonar_status sonar_statusstore_checks_for(sonar_statusstore *store, const char *service,
                                          size_t limit, sonar_statusstore_checks *out);

/** \brief Frees a list's contents and zeroes it. Accepts a zeroed list. */
void sonar_statusstore_checks_finish(sonar_statusstore_checks *list);

/**
 * \brief Forgets a target: its latest status and its checks.
 * \return SONAR_OK; SONAR_ERR_NOT_FOUND when nothing was stored for it;
 *         SONAR_ERR_INVALID; SONAR_ERR_DB.
 */
sonar_status sonar_statusstore_remove_target(sonar_statusstore *store, const char *service,
                                             const char *target);

/**
 * \brief Stores \p n samples in one transaction (all or nothing).
 * \return SONAR_OK; SONAR_ERR_INVALID naming the first bad sample (nothing
 *         stored then); SONAR_ERR_DB.
 */
sonar_status sonar_statusstore_add_samples(sonar_statusstore *store,
                                           const sonar_statusstore_sample_in *samples,
                                           size_t n);

/**
 * \brief Stores every sample of a parsed scrape for \p service in one
 *        transaction. Samples with a timestamp keep it; the others get
 *        \p at_ms.
 * \param count when not NULL, receives how many samples were stored.
 */
sonar_status sonar_statusstore_add_promtext(sonar_statusstore *store, const char *service,
                                            int64_t at_ms, const sonar_promtext *parsed,
                                            size_t *count);

/**
 * \brief Samples matching \p query, newest first (then by name and labels).
 * \param out filled on success (free with sonar_statusstore_samples_finish()).
 * \return SONAR_OK; SONAR_ERR_INVALID for a bad name, service, range
 *         (from after to) or a limit over SONAR_STATUSSTORE_SAMPLES_MAX;
 *         SONAR_ERR_DB.
 */
sonar_status sonar_statusstore_query_samples(sonar_statusstore *store,
                                             const sonar_statusstore_sample_query *query,
                                             sonar_statusstore_samples *out);

/** \brief Frees a list's contents and zeroes it. Accepts a zeroed list. */
void sonar_statusstore_samples_finish(sonar_statusstore_samples *list);

/**
 * \brief Deletes checks and samples older than \p before_ms, at most
 *        \p batch rows per transaction, until none is left; then series
 *        without samples. The latest status per target is kept.
 * \param batch 0: SONAR_STATUSSTORE_PRUNE_BATCH.
 * \param out when not NULL, receives the counts.
 */
sonar_status sonar_statusstore_prune(sonar_statusstore *store, int64_t before_ms,
                                     size_t batch, sonar_statusstore_pruned *out);

#ifdef __cplusplus
}
#endif
#endif
