/**
 * \file promtext.h
 * \brief Parser for the Prometheus text exposition format 0.0.4.
 *
 * Parses a whole scrape body into metric families, each holding its
 * samples. What is accepted:
 * - `# HELP name text` (text escapes `\\` and `\n`) and
 *   `# TYPE name counter|gauge|histogram|summary|untyped`, at most once per
 *   family and before the family's first sample; other comments and blank
 *   lines are ignored;
 * - samples `name{label="value",...} value [timestamp]`: metric names
 *   `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`, label
 *   values with escapes `\\`, `\"`, `\n` (valid UTF-8), a trailing comma
 *   inside `{}`, values as floats including `NaN`, `+Inf`, `-Inf`, optional
 *   int64 millisecond timestamps (may be negative);
 * - families: all lines of a family form one group; a histogram `foo` owns
 *   `foo_bucket` (label `le`), `foo_sum` and `foo_count`; a summary `foo`
 *   owns `foo` (label `quantile`), `foo_sum` and `foo_count`. Untyped
 *   samples form a family named exactly like the sample.
 * - checks: duplicate label names, duplicate samples (same name and label
 *   set), histogram buckets cumulative (non-decreasing by `le`), the
 *   `+Inf` bucket present and equal to `_count`.
 *
 * Malformed input is refused with `SONAR_ERR_PROTOCOL` (or
 * `SONAR_ERR_LIMIT` for the size bounds below), the 1-based line number and
 * a reason, never a crash.
 *
 * Thread-safety: parsing is reentrant (no shared state); a parsed result is
 * immutable and may be read from several threads at once, but must not be
 * destroyed while others read it.
 */
#ifndef SONAR_PROMTEXT_H
#define SONAR_PROMTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Longest line accepted, in bytes, without its newline (SONAR_ERR_LIMIT beyond). */
#define SONAR_PROMTEXT_MAX_LINE (64 * 1024)
/** Most labels one sample may carry (SONAR_ERR_LIMIT beyond). */
#define SONAR_PROMTEXT_MAX_LABELS 64

/** \brief Family type from `# TYPE`; families without one are untyped. */
typedef enum sonar_promtext_type {
    SONAR_PROMTEXT_UNTYPED = 0,
    SONAR_PROMTEXT_COUNTER,
    SONAR_PROMTEXT_GAUGE,
    SONAR_PROMTEXT_HISTOGRAM,
    SONAR_PROMTEXT_SUMMARY,
} sonar_promtext_type;

/** \brief One label; both strings borrowed from the parse result, NUL-terminated, unescaped. */
typedef struct sonar_promtext_label {
    const char *name;
    const char *value;
} sonar_promtext_label;

/** \brief One sample. Everything borrowed from the parse result. */
typedef struct sonar_promtext_sample {
    const char *name;                   /**< full sample name, e.g. "rpc_seconds_bucket" */
    const sonar_promtext_label *labels; /**< in input order; NULL when n_labels is 0 */
    size_t n_labels;
    double value;                       /**< may be NaN or +-Inf */
    bool has_timestamp;
    int64_t timestamp_ms;               /**< ms since the epoch; meaningful when has_timestamp */
    size_t line;                        /**< 1-based input line */
} sonar_promtext_sample;

/** \brief One metric family. Everything borrowed from the parse result. */
typedef struct sonar_promtext_family {
    const char *name;                     /**< family name, e.g. "rpc_seconds" */
    const char *help;                     /**< unescaped HELP text, or NULL when absent */
    sonar_promtext_type type;
    const sonar_promtext_sample *samples; /**< input order; NULL when n_samples is 0 */
    size_t n_samples;
} sonar_promtext_family;

/** \brief Where and why parsing failed. */
typedef struct sonar_promtext_error {
    size_t line;       /**< 1-based line of the fault; 0 when not tied to a line */
    char reason[256];  /**< e.g. "invalid escape \\x in label value" */
} sonar_promtext_error;

/** \brief A parse result (opaque; immutable once returned). */
typedef struct sonar_promtext sonar_promtext;

/**
 * \brief Parses a whole exposition body.
 * \param out receives a new result (free with sonar_promtext_destroy());
 *        written only on success.
 * \param text the body; need not be NUL-terminated; borrowed for the call
 *        only (the result copies what it keeps).
 * \param len its length in bytes.
 * \param err when not NULL, zeroed and then, on a failure, filled with the
 *        line and the reason.
 * \return SONAR_OK; SONAR_ERR_PROTOCOL for malformed input;
 *         SONAR_ERR_LIMIT for a line longer than SONAR_PROMTEXT_MAX_LINE
 *         or more than SONAR_PROMTEXT_MAX_LABELS labels; SONAR_ERR_INVALID
 *         when \p out is NULL or \p text is NULL with a non-zero \p len;
 *         SONAR_ERR_NOMEM. Failures also set sonar_last_error() to
 *         "line N: reason".
 */
sonar_status sonar_promtext_parse(sonar_promtext **out, const char *text, size_t len,
                                  sonar_promtext_error *err);

/** \brief Frees a result and everything borrowed from it. Accepts NULL. */
void sonar_promtext_destroy(sonar_promtext *result);

/** \brief Number of families, in input order. */
size_t sonar_promtext_family_count(const sonar_promtext *result);

/** \brief Family \p i (borrowed, valid until destroy), or NULL when out of range. */
const sonar_promtext_family *sonar_promtext_family_at(const sonar_promtext *result, size_t i);

/** \brief Family named \p name (borrowed), or NULL. */
const sonar_promtext_family *sonar_promtext_family_find(const sonar_promtext *result,
                                                        const char *name);

/** \brief Total number of samples over all families. */
size_t sonar_promtext_sample_count(const sonar_promtext *result);

/** \brief Value of label \p name on \p sample (borrowed), or NULL. */
const char *sonar_promtext_label_get(const sonar_promtext_sample *sample, const char *name);

/** \brief True when \p name is a metric name `[a-zA-Z_:][a-zA-Z0-9_:]*`. */
bool sonar_promtext_name_valid(const char *name);

/** \brief True when \p name is a label name `[a-zA-Z_][a-zA-Z0-9_]*`. */
bool sonar_promtext_label_name_valid(const char *name);

/** \brief "counter", "gauge", "histogram", "summary" or "untyped". Never NULL. */
const char *sonar_promtext_type_str(sonar_promtext_type type);

#ifdef __cplusplus
}
#endif
#endif
