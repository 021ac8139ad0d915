/**
 * \file http.h
 * \brief HTTP client helpers for checks (libcurl), honouring deadlines.
 *
 * Thread-safety: every function may be called from any thread; each call
 * uses its own curl handle. sonar_http_global_init() runs once per process
 * (libsonar calls it for you from sonar_service_create() and the first
 * sonar_http_perform()).
 */
#ifndef SONAR_HTTP_H
#define SONAR_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "sonar/service.h"
#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Largest response body kept, in bytes; more is an error (SONAR_ERR_LIMIT). */
#define SONAR_HTTP_MAX_BODY (8 * 1024 * 1024)

typedef struct sonar_http_request {
    const char *method;      /**< "GET" when NULL */
    const char *url;         /**< absolute URL */
    const char *const *headers; /**< NULL-terminated "Name: value" lines; may be NULL */
    const char *body;        /**< may be NULL */
    size_t body_len;
    int64_t deadline_ms;     /**< absolute, sonar_now_ms() clock; 0: none */
    int64_t timeout_ms;      /**< relative cap; 0: none (the earlier of both applies) */
} sonar_http_request;

typedef struct sonar_http_header {
    char *name;
    char *value;
} sonar_http_header;

typedef struct sonar_http_response {
    long status;             /**< HTTP status code */
    char *body;              /**< NUL-terminated (new) */
    size_t body_len;
    sonar_http_header *headers; /**< response headers, in order (new) */
    size_t n_headers;
    int64_t duration_ms;
} sonar_http_response;

/** \brief Initialises libcurl once per process. Thread-safe. */
sonar_status sonar_http_global_init(void);

/**
 * \brief Performs one HTTP transfer.
 * \param out filled on success (finish with sonar_http_response_finish()).
 * \return SONAR_OK for any HTTP status; SONAR_ERR_TIMEOUT when the deadline
 *         passed; SONAR_ERR_HTTP for connection and protocol errors (text
 *         from curl in sonar_last_error()); SONAR_ERR_LIMIT for bodies over
 *         SONAR_HTTP_MAX_BODY.
 */
sonar_status sonar_http_perform(const sonar_http_request *req, sonar_http_response *out);

/** \brief Frees a response's contents and zeroes it. Accepts a zeroed struct. */
void sonar_http_response_finish(sonar_http_response *resp);

/** \brief First header named \p name, case-insensitive (borrowed), or NULL. */
const char *sonar_http_response_header(const sonar_http_response *resp, const char *name);

/**
 * \brief Joins a base address and a path: ("http://h:1/", "/pick") ->
 *        "http://h:1/pick". \p out new (free()).
 */
sonar_status sonar_http_join(char **out, const char *base, const char *path);

/**
 * \brief The one-call check: requests \p method \p path on the candidate
 *        (sonar_check_address(ctx)) within the check's deadline, and
 *        asserts the status and, if \p body_contains is not NULL, that the
 *        body contains it. On failure the check message names the request
 *        and what was wrong, e.g. "GET /pick?name=cheese → 404, expected 200".
 * \param out_resp when not NULL, receives the response (caller finishes it)
 *        whenever a response arrived.
 */
sonar_check_status sonar_check_http(sonar_check_ctx *ctx, const char *method,
                                    const char *path, const char *body,
                                    long expect_status, const char *body_contains,
                                    sonar_http_response *out_resp);

#ifdef __cplusplus
}
#endif
#endif
