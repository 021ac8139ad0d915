/**
 * \file targets.h
 * \brief statusd's target specifications: what to check and scrape, where
 *        a target comes from, and how targets are read from a JSON config
 *        file or an API request (validated at that boundary).
 *
 * Thread-safety: functions are reentrant; a spec must not be used by two
 * threads at once.
 */
#ifndef STATUSD_TARGETS_H
#define STATUSD_TARGETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sonar/health.h"
#include "sonar/status.h"

/** Where a target was learnt. */
typedef enum statusd_source {
    STATUSD_SOURCE_REGISTRY = 0, /**< a sonar.register.v1 naming health and/or metrics */
    STATUSD_SOURCE_CONFIG,       /**< the --config file */
    STATUSD_SOURCE_API,          /**< sonar.status.targets.add */
} statusd_source;

/** \brief "registry", "config" or "api". */
const char *statusd_source_str(statusd_source source);

/** Interval and timeout bounds (ms). */
#define STATUSD_INTERVAL_MIN 50
#define STATUSD_INTERVAL_MAX (24LL * 3600 * 1000)
#define STATUSD_TIMEOUT_MIN 10
#define STATUSD_TIMEOUT_MAX (10LL * 60 * 1000)
/** Most targets in a config file. */
#define STATUSD_MAX_STATIC_TARGETS 100000
/** Most targets at once, all sources together (new ones beyond are refused). */
#define STATUSD_MAX_TARGETS 200000

/** A target as configured. All strings owned by the spec (new). */
typedef struct statusd_target_spec {
    char *name;        /**< unique; config/API: sonar_name_valid(); registry: service/instance */
    char *service;     /**< sonar_name_valid() */
    char *instance;    /**< registry only: the instance id; NULL otherwise */
    char *health;      /**< http(s) URL, "nats", or NULL */
    char *metrics;     /**< http(s) URL, "nats", or NULL */
    int64_t interval_ms; /**< 0: the daemon's default */
    int64_t timeout_ms;  /**< 0: the daemon's default */
    sonar_health_thresholds thresholds; /**< zeros: defaults (3 failures, 1 success) */
} statusd_target_spec;

/** \brief Frees the spec's strings and zeroes it. Accepts a zeroed spec. */
void statusd_spec_finish(statusd_target_spec *spec);

/** \brief Deep copy into \p dst (written on success only). */
sonar_status statusd_spec_copy(statusd_target_spec *dst, const statusd_target_spec *src);

/**
 * \brief True when \p text is "nats" or an http:// / https:// URL with a
 *        host, printable ASCII without blanks, at most 2048 bytes.
 */
bool statusd_endpoint_valid(const char *text);

/**
 * \brief Reads one target object (config entry or API body).
 *
 * Fields: `name` (required), `service` (default: name), `health`
 * (required: URL or "nats"), `metrics` (optional URL or "nats"),
 * `interval_ms`, `timeout_ms`, `failure_threshold`, `success_threshold`
 * (optional integers). Unknown fields are refused so typos do not go
 * unnoticed.
 * \param out written on success (finish with statusd_spec_finish()).
 * \param obj borrowed.
 * \param where prefix of error texts, e.g. "$.targets[2]" (the field is
 *        appended: "$.targets[2].health: ...").
 * \return SONAR_OK or SONAR_ERR_INVALID with the path and reason.
 */
sonar_status statusd_spec_from_json(statusd_target_spec *out, const json_t *obj,
                                    const char *where);

/**
 * \brief Loads a config file `{"targets":[{...}, ...]}`.
 * \param out_specs new array (free each with statusd_spec_finish(), then free()).
 * \return SONAR_OK; SONAR_ERR_IO (unreadable); SONAR_ERR_INVALID with
 *         "FILE: $.json.path: reason" (bad JSON gives line and column,
 *         duplicate names are refused).
 */
sonar_status statusd_config_load(const char *path, statusd_target_spec **out_specs,
                                 size_t *out_n);

/** \brief The spec as the `targets` JSON fields name, service, source, health, metrics. */
json_t *statusd_spec_json(const statusd_target_spec *spec, statusd_source source);

#endif
