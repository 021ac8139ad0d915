/**
 * \file checktable.h
 * \brief Check tables: integration checks written as data (JSON), loaded
 *        and validated once, then run case by case against a candidate.
 *
 * A table names a service and, per dependency, a list of cases; a case is
 * setup steps, steps and teardown steps; a step is an HTTP request against
 * the candidate's address or a NATS request under the candidate's subject
 * prefix, with expectations and captures. docs/checks.md documents the
 * format and docs/checks.schema.json is its JSON Schema.
 *
 * Thread-safety: a loaded table is immutable; any number of threads may
 * run its cases concurrently (each run keeps its own variables).
 * sonar_checktable_destroy() must not race with runs.
 */
#ifndef SONAR_CHECKTABLE_H
#define SONAR_CHECKTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Largest table file accepted, in bytes. */
#define SONAR_CHECKTABLE_MAX_BYTES (4 * 1024 * 1024)
/** Longest failure message of a case run, including the NUL. */
#define SONAR_CHECKRUN_MESSAGE_MAX 4096

typedef struct sonar_checktable sonar_checktable;
/** One case of a table (borrowed from the table, valid until it is destroyed). */
typedef struct sonar_checkcase sonar_checkcase;

/**
 * \brief Reads and validates the table in file \p path.
 * \param out new table, written on success.
 * \return SONAR_OK; SONAR_ERR_IO (unreadable file); SONAR_ERR_LIMIT (over
 *         SONAR_CHECKTABLE_MAX_BYTES); SONAR_ERR_INVALID with the error
 *         text "FILE:LINE:COLUMN: reason" for JSON syntax errors and
 *         "FILE: $.json.path: reason" for anything else, e.g.
 *         "t.json: $.checks.chillybin[2].steps[0].expect.status: ...".
 */
sonar_status sonar_checktable_load(sonar_checktable **out, const char *path);

/**
 * \brief Like sonar_checktable_load() for a table held in memory;
 *        \p source names it in error texts (borrowed).
 */
sonar_status sonar_checktable_parse(sonar_checktable **out, const char *text, size_t len,
                                    const char *source);

/** \brief Frees a table and its cases. Accepts NULL. */
void sonar_checktable_destroy(sonar_checktable *table);

/** \brief The service the table speaks for (borrowed). */
const char *sonar_checktable_service(const sonar_checktable *table);
/** \brief The table's version, "0.0.0" when it names none (borrowed). */
const char *sonar_checktable_version(const sonar_checktable *table);
/** \brief The table's description or NULL (borrowed). */
const char *sonar_checktable_description(const sonar_checktable *table);
/** \brief True when any step is a NATS request (a bus connection is needed). */
bool sonar_checktable_uses_nats(const sonar_checktable *table);

/** \brief Number of dependencies with cases. */
size_t sonar_checktable_dependency_count(const sonar_checktable *table);
/** \brief Dependency \p i in file order (borrowed), or NULL when out of range. */
const char *sonar_checktable_dependency(const sonar_checktable *table, size_t i);

/** \brief Number of cases across all dependencies. */
size_t sonar_checktable_case_count(const sonar_checktable *table);
/** \brief Case \p i, grouped by dependency in file order (borrowed), or NULL. */
const sonar_checkcase *sonar_checktable_case(const sonar_checktable *table, size_t i);

/** \brief The case's name (borrowed). */
const char *sonar_checkcase_name(const sonar_checkcase *c);
/** \brief The dependency the case checks (borrowed). */
const char *sonar_checkcase_dependency(const sonar_checkcase *c);
/** \brief The case's own time limit in ms, 0 when it sets none. */
int64_t sonar_checkcase_timeout_ms(const sonar_checkcase *c);

/* ---- Running ------------------------------------------------------------ */

/** Where and how long a case runs. Strings borrowed for the call. */
typedef struct sonar_checkrun_target {
    const char *address;        /**< candidate base URL for HTTP steps; NULL: HTTP steps fail */
    const char *subject_prefix; /**< NATS steps' subject prefix; NULL: the dependency's name */
    natsConnection *nc;         /**< borrowed; NULL: NATS steps fail */
    int64_t deadline_ms;        /**< absolute, sonar_now_ms() clock; 0: none */
} sonar_checkrun_target;

/** Outcome of one case. */
typedef struct sonar_checkrun_result {
    bool passed;
    int64_t duration_ms;
    /** One line: empty on pass, else e.g.
     *  "step 3 GET /pick?name=cheese: status 404, expected 200". */
    char message[SONAR_CHECKRUN_MESSAGE_MAX];
} sonar_checkrun_result;

/**
 * \brief Runs case \p c: setup steps, steps, then teardown steps (always,
 *        with a grace of one second past the deadline). The first failure
 *        ends setup/steps and is the result's message. The deadline is the
 *        earlier of \p target->deadline_ms and the case's own timeout_ms.
 * \param out written on SONAR_OK (pass or fail alike).
 * \return SONAR_OK when the case ran; SONAR_ERR_INVALID for NULL arguments.
 * Thread-safety: safe to call concurrently, also for the same case.
 */
sonar_status sonar_checkrun_case(const sonar_checkcase *c, const sonar_checkrun_target *target,
                                 sonar_checkrun_result *out);

#ifdef __cplusplus
}
#endif
#endif
