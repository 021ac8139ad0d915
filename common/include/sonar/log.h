/**
 * \file log.h
 * \brief One-line log records on stderr: "<RFC 3339 time> <level> <who>: text".
 *
 * Debug records are printed only when the environment variable SONAR_LOG
 * is "debug". Thread-safety: safe from any thread; lines never interleave.
 */
#ifndef SONAR_LOG_H
#define SONAR_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sonar_log_level {
    SONAR_LOG_DEBUG,
    SONAR_LOG_INFO,
    SONAR_LOG_WARN,
    SONAR_LOG_ERROR,
} sonar_log_level;

/** \brief Sets the name printed after the level (default "sonar"); copied. */
void sonar_log_set_name(const char *who);

/** \brief Writes one log record. */
void sonar_log(sonar_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
