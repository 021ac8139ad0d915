/**
 * \file protocol.h
 * \brief The sonar wire protocol: subjects and JSON messages, encoded and
 *        decoded with validation at the boundary. See docs/protocol.md.
 *
 * Every message is a JSON object with a `type` of the form
 * `sonar.<kind>.v<major>`. Decoders ignore unknown fields, refuse an
 * unknown kind or a major version other than 1 with `SONAR_ERR_VERSION`,
 * and refuse malformed JSON, missing or mistyped fields, bad names and
 * oversized values with `SONAR_ERR_PROTOCOL` (or `SONAR_ERR_INVALID` for a
 * name that breaks the name rule); sonar_last_error() then names the field
 * and the reason.
 *
 * Decoders (`sonar_<kind>_decode(out, data, len)`): \p data need not be
 * NUL-terminated; a message larger than SONAR_MAX_MESSAGE_BYTES, an empty
 * one, a non-object root, duplicate keys and a `\u0000` inside a string are
 * refused with SONAR_ERR_PROTOCOL. A message of another known kind is
 * SONAR_ERR_PROTOCOL ("expected sonar.check.v1, got sonar.result.v1").
 * \p out is written only on success and is overwritten without being
 * finished first: pass a zeroed or finished struct. NULL \p out is
 * SONAR_ERR_INVALID.
 *
 * Encoders (`sonar_<kind>_encode(msg, out_json)`): build compact JSON and
 * then validate it with the decoder, so they never emit a message a peer
 * would refuse; on bad input they return the status and error text the
 * decoder would give. *out_json is new (free()) and written only on
 * success. NULL arguments are SONAR_ERR_INVALID. Optional fields that are
 * NULL (or 0 / false where documented) are left out of the JSON.
 *
 * Text rules: names (service, change_id, dependency) follow the name rule
 * of util.h; "text" fields (instance, version, check names) are 1..256
 * bytes of UTF-8 without control characters; addresses are 1..2048 such
 * bytes; messages and reasons are 0..4096 bytes of UTF-8 (line breaks
 * allowed).
 *
 * Value structs: each message struct is a plain public struct. Strings and
 * arrays in a decoded struct are owned by it ("new"): release them with the
 * matching `_finish`, which also accepts a zeroed struct. Encoders never
 * modify their input. `_finish` is idempotent: it zeroes the struct.
 *
 * Thread-safety: all functions are reentrant; a struct must not be used by
 * two threads at once.
 */
#ifndef SONAR_PROTOCOL_H
#define SONAR_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sonar/status.h"
#include "sonar/util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Subjects ---------------------------------------------------------- */

#define SONAR_SUBJ_REGISTER_PREFIX "sonar.register."  /**< + service */
#define SONAR_SUBJ_LEAVE_PREFIX    "sonar.leave."     /**< + service */
#define SONAR_SUBJ_DISCOVER        "sonar.discover"
#define SONAR_SUBJ_CHECK_PREFIX    "sonar.check."     /**< + changed service */
#define SONAR_SUBJ_RESULT_PREFIX   "sonar.result."    /**< + change_id + "." + responder */
#define SONAR_SUBJ_CHANGE_PREFIX   "sonar.change."    /**< + service */
#define SONAR_SUBJ_REPORT_PREFIX   "sonar.report."    /**< + service */
#define SONAR_SUBJ_HEALTH_PREFIX   "sonar.health."    /**< + service (statusd) */

/**
 * JetStream stream holding sonar's events: sonard's reports (`sonar.report.*`)
 * and statusd's health transitions (`sonar.health.*`), both published
 * through the publishers' outboxes, so `sonar watch --since` can replay them.
 */
#define SONAR_EVENTS_STREAM        "SONAR_EVENTS"
#define SONAR_EVENTS_MAX_AGE_MS    (7LL * 24 * 3600 * 1000)

/* ---- Limits (decoders refuse anything larger) -------------------------- */

#define SONAR_MAX_MESSAGE_BYTES   (512 * 1024) /**< whole message */
#define SONAR_MAX_TEXT_BYTES      256          /**< version, instance, check names */
#define SONAR_MAX_ADDRESS_BYTES   2048         /**< address, health, metrics URLs */
#define SONAR_MAX_MESSAGE_TEXT    4096         /**< a check's message, an error message, a reason */
#define SONAR_MAX_LIST            1024         /**< depends_on, checks per dependency, results */
#define SONAR_MAX_TIMEOUT_MS      (10 * 60 * 1000)

/** Message kinds, decoded from `type`. */
typedef enum sonar_msg_kind {
    SONAR_MSG_UNKNOWN = 0,
    SONAR_MSG_REGISTER,  /**< sonar.register.v1 */
    SONAR_MSG_LEAVE,     /**< sonar.leave.v1 */
    SONAR_MSG_DISCOVER,  /**< sonar.discover.v1 */
    SONAR_MSG_CHECK,     /**< sonar.check.v1 */
    SONAR_MSG_RESULT,    /**< sonar.result.v1 */
    SONAR_MSG_CHANGE,    /**< sonar.change.v1 */
    SONAR_MSG_REPORT,    /**< sonar.report.v1 */
    SONAR_MSG_ERROR,     /**< sonar.error.v1 */
    /* sonard read API and gather announcement (see docs/protocol.md); peek
     * recognises them, decoders for them live with their users. */
    SONAR_MSG_GATHER,    /**< sonar.gather.v1 */
    SONAR_MSG_SERVICES,  /**< sonar.services.v1 */
    SONAR_MSG_HISTORY,   /**< sonar.history.v1 */
    SONAR_MSG_GRAPH,     /**< sonar.graph.v1 */
} sonar_msg_kind;

/**
 * \brief Reads only the `type` of \p data and maps it to a kind.
 * \param out_kind written on success.
 * \return SONAR_OK; SONAR_ERR_PROTOCOL for non-JSON or a missing/non-string
 *         type; SONAR_ERR_VERSION for an unknown kind or major version.
 */
sonar_status sonar_msg_peek(const char *data, size_t len, sonar_msg_kind *out_kind);

/** \brief The `type` string of a kind ("sonar.register.v1"; static), or NULL for UNKNOWN. */
const char *sonar_msg_kind_type(sonar_msg_kind kind);

/* ---- Check outcome ----------------------------------------------------- */

/** Status of one check, of one service's answer, or of a report entry. */
typedef enum sonar_outcome {
    SONAR_PASS = 0,
    SONAR_FAIL,
    SONAR_NONE,        /**< the responder has no checks on the changed service */
    SONAR_INCOMPLETE,  /**< report only: no answer, or no live instance */
} sonar_outcome;

/** \brief "pass", "fail", "none" or "incomplete". */
const char *sonar_outcome_str(sonar_outcome o);
/** \brief Parses the strings above; returns SONAR_ERR_PROTOCOL otherwise. */
sonar_status sonar_outcome_parse(const char *s, sonar_outcome *out);

/* ---- sonar.register.v1 ------------------------------------------------- */

/** The checks one service runs against one dependency. */
typedef struct sonar_dep_checks {
    char *dependency;  /**< service name (name rule); unique within `checks` */
    char **names;      /**< check names (text rule), at most SONAR_MAX_LIST, unique */
    size_t n_names;
} sonar_dep_checks;

typedef struct sonar_register_msg {
    char *service;         /**< required, name rule */
    char *instance;        /**< required, 1..256 bytes */
    char *version;         /**< required, 1..256 bytes (SemVer recommended) */
    char *address;         /**< optional: "" (or NULL when encoding) means absent */
    char **depends_on;     /**< each a valid name, unique, at most SONAR_MAX_LIST */
    size_t n_depends_on;
    sonar_dep_checks *checks; /**< keys must be valid names; at most SONAR_MAX_LIST */
    size_t n_checks;
    int64_t heartbeat_ms;  /**< required, 100..3600000 */
    char *health;          /**< optional: HTTP URL, "nats", or NULL */
    char *metrics;         /**< optional: HTTP URL, "nats", or NULL */
    json_t *metadata;      /**< optional object of string values (keys: text rule, values
                                <= 4096 bytes, <= SONAR_MAX_LIST entries); NULL when absent.
                                Decoded: an owned reference. Encoding copies it. */
    bool no_check_endpoint;/**< `"answers_checks": false`: the service never answers check
                                requests (coordinator, gateway, collectors), so a gather
                                does not wait for it; absent means true */
} sonar_register_msg;

sonar_status sonar_register_encode(const sonar_register_msg *msg, char **out_json /* new, free() */);
sonar_status sonar_register_decode(sonar_register_msg *out, const char *data, size_t len);
void sonar_register_finish(sonar_register_msg *msg);

/* ---- sonar.leave.v1 ---------------------------------------------------- */

typedef struct sonar_leave_msg {
    char *service;   /**< required, name rule */
    char *instance;  /**< required, text rule */
} sonar_leave_msg;

sonar_status sonar_leave_encode(const sonar_leave_msg *msg, char **out_json);
sonar_status sonar_leave_decode(sonar_leave_msg *out, const char *data, size_t len);
void sonar_leave_finish(sonar_leave_msg *msg);

/* ---- sonar.discover ---------------------------------------------------- */

/**
 * \brief Validates a discover request. An empty payload is accepted (plain
 *        `nats pub sonar.discover ""`); otherwise it must be a
 *        `sonar.discover.v1` object.
 */
sonar_status sonar_discover_decode(const char *data, size_t len);
/** \brief `{"type":"sonar.discover.v1"}` (new). */
sonar_status sonar_discover_encode(char **out_json);

/* ---- sonar.check.v1 and sonar.change.v1 -------------------------------- */

/**
 * A check request (`sonar.check.v1`) and a change announcement
 * (`sonar.change.v1`) carry the same fields; in a change the change_id may
 * be absent (the coordinator generates one) -> NULL after decode.
 */
typedef struct sonar_check_msg {
    char *change_id;     /**< name rule; required in a check request */
    char *service;       /**< the changed service, name rule */
    char *version;       /**< candidate version, required */
    char *address;       /**< candidate address, required, 1..2048 bytes */
    int64_t timeout_ms;  /**< 1..SONAR_MAX_TIMEOUT_MS; 0 after decode of a change means "absent" */
} sonar_check_msg;

typedef sonar_check_msg sonar_change_msg;

sonar_status sonar_check_encode(const sonar_check_msg *msg, char **out_json);
sonar_status sonar_check_decode(sonar_check_msg *out, const char *data, size_t len);
sonar_status sonar_change_encode(const sonar_change_msg *msg, char **out_json);
sonar_status sonar_change_decode(sonar_change_msg *out, const char *data, size_t len);
void sonar_check_finish(sonar_check_msg *msg);
#define sonar_change_finish sonar_check_finish

/* ---- sonar.result.v1 --------------------------------------------------- */

typedef struct sonar_check_result {
    char *name;            /**< check name */
    sonar_outcome status;  /**< SONAR_PASS or SONAR_FAIL */
    int64_t duration_ms;   /**< 0..86400000; absent decodes as 0 */
    char *message;         /**< may be "" (absent decodes as ""; NULL encodes as "") */
} sonar_check_result;

typedef struct sonar_result_msg {
    char *change_id;       /**< name rule */
    char *service;         /**< the responder, name rule */
    char *instance;        /**< text rule */
    sonar_outcome status;  /**< PASS, FAIL or NONE; NONE has no checks, PASS no failed check */
    int64_t duration_ms;   /**< 0..86400000; absent decodes as 0 */
    sonar_check_result *checks; /**< absent decodes as none; at most SONAR_MAX_LIST */
    size_t n_checks;
} sonar_result_msg;

sonar_status sonar_result_encode(const sonar_result_msg *msg, char **out_json);
sonar_status sonar_result_decode(sonar_result_msg *out, const char *data, size_t len);
void sonar_result_finish(sonar_result_msg *msg);

/* ---- sonar.report.v1 --------------------------------------------------- */

typedef struct sonar_report_entry {
    char *service;
    sonar_outcome status;  /**< PASS, FAIL, NONE or INCOMPLETE */
    char *reason;          /**< "" unless incomplete or flagged, e.g. "no answer by the deadline" */
    bool unregistered;     /**< answered but not in the registry (flagged); encoded only when true */
    int64_t duration_ms;   /**< absent decodes as 0 */
    sonar_check_result *checks;
    size_t n_checks;
} sonar_report_entry;

typedef struct sonar_report_counts {
    int64_t expected, pass, fail, none, incomplete;
} sonar_report_counts;

typedef struct sonar_report_msg {
    char *change_id;
    char *service;
    char *version;
    char *address;
    sonar_outcome verdict;     /**< PASS, FAIL or INCOMPLETE */
    char *started_at;          /**< RFC 3339 (sonar_format_rfc3339) */
    int64_t duration_ms;
    sonar_report_counts counts;
    sonar_report_entry *results;
    size_t n_results;
} sonar_report_msg;

sonar_status sonar_report_encode(const sonar_report_msg *msg, char **out_json);
sonar_status sonar_report_decode(sonar_report_msg *out, const char *data, size_t len);
void sonar_report_finish(sonar_report_msg *msg);

/* ---- sonar.error.v1 ---------------------------------------------------- */

/** Header names carrying the error in NATS service replies (ADR-32). */
#define SONAR_HDR_SERVICE_ERROR      "Nats-Service-Error"
#define SONAR_HDR_SERVICE_ERROR_CODE "Nats-Service-Error-Code"

typedef struct sonar_error_msg {
    int code;       /**< HTTP-like, 100..599: 400 bad request, 404 not found, 500 internal, 503 unavailable */
    char *message;  /**< required, 0..4096 bytes */
} sonar_error_msg;

sonar_status sonar_error_encode(const sonar_error_msg *msg, char **out_json);
sonar_status sonar_error_decode(sonar_error_msg *out, const char *data, size_t len);
void sonar_error_finish(sonar_error_msg *msg);

/* ---- Helpers ----------------------------------------------------------- */

/**
 * \brief Builds "<prefix><a>" or "<prefix><a>.<b>" after checking each
 *        token with the name rule. \p b may be NULL.
 * \param out new string (free()), written on success.
 * \return SONAR_OK, or SONAR_ERR_INVALID naming the bad token.
 */
sonar_status sonar_subject(char **out, const char *prefix, const char *a, const char *b);

/**
 * \brief Deep copy helpers for the structs above: \p dst is overwritten
 *        (not finished first) and owns new copies; written only on
 *        success. A sonar_check_result copy is released by freeing name and
 *        message. \return SONAR_OK, SONAR_ERR_NOMEM, SONAR_ERR_INVALID (NULL).
 */
sonar_status sonar_check_result_copy(sonar_check_result *dst, const sonar_check_result *src);
sonar_status sonar_register_copy(sonar_register_msg *dst, const sonar_register_msg *src);

#ifdef __cplusplus
}
#endif
#endif
