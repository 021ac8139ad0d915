/**
 * \file params.h
 * \brief Validation of the gateway's HTTP parameters: times (RFC 3339 or
 *        epoch milliseconds), bounded integers, Prometheus metric names and
 *        target URLs. Each parser fills a one-line reason on failure so the
 *        client gets a 400 that says what was wrong.
 *
 * Thread-safety: every function is reentrant (no shared state).
 */
#ifndef SONAR_GW_PARAMS_H
#define SONAR_GW_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Longest metric name accepted by the metrics query. */
#define SONAR_GW_METRIC_NAME_MAX 200
/** Longest target URL accepted. */
#define SONAR_GW_URL_MAX 2048

/**
 * \brief Parses \p text as an RFC 3339 date-time ("2026-11-23T18:30:00Z",
 *        "2026-11-23T18:30:00.123+02:00") or as a non-negative integer of
 *        milliseconds since the Unix epoch.
 * \param out_ms written only on success.
 * \param why receives the reason on failure (\p whylen bytes).
 */
bool sonar_gw_parse_time(const char *text, int64_t *out_ms, char *why, size_t whylen);

/**
 * \brief Parses a decimal integer in [\p min, \p max] (no sign other than a
 *        leading '-', no spaces, no trailing text).
 * \param out written only on success.
 */
bool sonar_gw_parse_int(const char *text, int64_t min, int64_t max, int64_t *out);

/** \brief True when \p name matches `[a-zA-Z_:][a-zA-Z0-9_:]*`, 1..200 bytes. */
bool sonar_gw_metric_name_valid(const char *name);

/**
 * \brief True when \p url starts with `http://` or `https://`, has a host,
 *        is at most SONAR_GW_URL_MAX bytes and holds no whitespace or
 *        control characters.
 */
bool sonar_gw_url_valid(const char *url);

#endif
