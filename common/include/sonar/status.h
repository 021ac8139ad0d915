/**
 * \file status.h
 * \brief Status codes returned by every libsonar function, and the
 *        per-thread error text that carries the detail.
 *
 * Thread-safety: all functions here are safe to call from any thread; the
 * error text is thread-local, so each thread sees the detail of its own
 * last failure (the nats.c `nats_GetLastError` model).
 */
#ifndef SONAR_STATUS_H
#define SONAR_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/** \brief Outcome of a libsonar call. `SONAR_OK` is zero; all others are failures. */
typedef enum sonar_status {
    SONAR_OK = 0,
    SONAR_ERR_INVALID,       /**< bad argument, flag, name or configuration */
    SONAR_ERR_PROTOCOL,      /**< a message that is not valid JSON or misses/mistypes a field */
    SONAR_ERR_VERSION,       /**< an unknown message `type` or a major version we do not speak */
    SONAR_ERR_NOMEM,         /**< out of memory */
    SONAR_ERR_IO,            /**< file or OS error */
    SONAR_ERR_NATS,          /**< the NATS client library failed (detail in the error text) */
    SONAR_ERR_TIMEOUT,       /**< a deadline passed */
    SONAR_ERR_NO_RESPONDERS, /**< nobody listens on the subject */
    SONAR_ERR_DB,            /**< SQLite failed (detail in the error text) */
    SONAR_ERR_NOT_FOUND,     /**< the thing asked for does not exist */
    SONAR_ERR_STATE,         /**< the call is not allowed in the object's current state */
    SONAR_ERR_HTTP,          /**< an HTTP transfer failed (detail in the error text) */
    SONAR_ERR_LIMIT,         /**< a size or count limit was exceeded */
} sonar_status;

/** \brief Short constant name of a status, e.g. "invalid argument". Never NULL. */
const char *sonar_status_str(sonar_status status);

/**
 * \brief Detail of the calling thread's most recent failure.
 *
 * Borrowed: valid until the next libsonar call on this thread. Returns ""
 * when no failure was recorded. Functions that fail set it; functions that
 * succeed leave it alone.
 */
const char *sonar_last_error(void);

#ifdef __cplusplus
}
#endif
#endif
