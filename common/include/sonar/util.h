/**
 * \file util.h
 * \brief Small helpers shared by libsonar and its services: names, clocks, ids.
 *
 * Thread-safety: every function here is safe to call from any thread.
 */
#ifndef SONAR_UTIL_H
#define SONAR_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Longest service name or change id, in bytes. */
#define SONAR_NAME_MAX 64

/**
 * \brief True when \p name matches `^[A-Za-z0-9_-]{1,64}$`, the rule for
 *        service names and change ids (they become NATS subject tokens).
 */
bool sonar_name_valid(const char *name);

/**
 * \brief Checks \p name and, when invalid, records a clear error naming
 *        \p what (e.g. "service name") and returns `SONAR_ERR_INVALID`.
 */
sonar_status sonar_name_check(const char *what, const char *name);

/** \brief Monotonic clock in milliseconds (for deadlines and durations). */
int64_t sonar_now_ms(void);

/**
 * \brief Initialises \p cond so that pthread_cond_timedwait() takes absolute
 *        CLOCK_MONOTONIC times, the clock of sonar_now_ms() and
 *        sonar_now_ns() (immune to wall-clock jumps). Destroy it with
 *        pthread_cond_destroy().
 */
void sonar_cond_init_monotonic(pthread_cond_t *cond);

/**
 * \brief Waits on \p cond (made by sonar_cond_init_monotonic(); \p mu
 *        held) until woken or until \p deadline_ms of sonar_now_ms().
 *        Like every condition wait it may return early: re-check the
 *        condition in a loop.
 */
void sonar_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t deadline_ms);

/**
 * \brief Lowers the calling thread's CPU priority by \p increment nice
 *        steps (at most to 19), for background work that should yield the
 *        CPU to request handling on a busy machine. On Linux nice is per
 *        thread and threads started afterwards by this one inherit it.
 *        It cannot be raised back without privileges.
 * \param increment 0..39.
 * \return SONAR_OK; SONAR_ERR_INVALID (increment); SONAR_ERR_IO (refused).
 */
sonar_status sonar_thread_lower_priority(int increment);

/** \brief Monotonic clock in nanoseconds. */
int64_t sonar_now_ns(void);

/** \brief Wall clock in milliseconds since the Unix epoch. */
int64_t sonar_wall_ms(void);

/**
 * \brief Formats \p wall_ms (ms since the epoch) as RFC 3339 UTC with
 *        milliseconds, e.g. "2026-11-23T18:30:00.123Z", into \p buf.
 */
void sonar_format_rfc3339(int64_t wall_ms, char *buf, size_t buflen);

/**
 * \brief Writes a random identifier of 22 characters from [A-Za-z0-9]
 *        (about 131 bits) plus the terminating NUL into \p buf.
 *        \p buf must hold at least 23 bytes. Valid as a name (sonar_name_valid).
 */
void sonar_random_id(char *buf);

/**
 * \brief Parses a duration such as "10s", "500ms", "2m", "1h", "7d" or a bare
 *        number of milliseconds into \p out_ms (written only on success).
 * \return SONAR_OK, or SONAR_ERR_INVALID with a message naming the text.
 */
sonar_status sonar_parse_duration_ms(const char *text, int64_t *out_ms);

/**
 * \brief Blocks SIGINT and SIGTERM in the calling thread, and so in every
 *        thread it starts afterwards: call it first in main(), before any
 *        library starts a thread, then wait with sonar_stop_signal_wait().
 */
void sonar_stop_signals_block(void);

/**
 * \brief Waits for SIGINT or SIGTERM (blocked by sonar_stop_signals_block())
 *        and returns the signal's number.
 */
int sonar_stop_signal_wait(void);

#ifdef __cplusplus
}
#endif
#endif
