/*
 * Output formatting for the `sonar` CLI: report, services and history
 * tables, Graphviz DOT, result lines and `watch` feed lines.
 *
 * Pure functions over jansson values: they read the JSON the coordinator
 * and services publish (sonar.report.v1, sonar.services.v1,
 * sonar.history.v1, sonar.graph.v1, sonar.result.v1, ...) and write text
 * to a FILE. They are tolerant of missing or mistyped fields (a missing
 * string prints as "-"), because validation happens where the message is
 * received; they never print raw control characters from a message (a
 * service's check message cannot move the terminal's cursor).
 *
 * Thread-safety: every function is reentrant; the watch filter must not be
 * shared between threads.
 */
#ifndef SONAR_CLI_FORMAT_H
#define SONAR_CLI_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* ---- Tables ------------------------------------------------------------ */

/* A text table: columns padded to their widest cell (in characters, UTF-8
 * aware), two spaces apart, the last column never padded. */
typedef struct sonar_cli_table sonar_cli_table;

/* New table with \p ncols columns and the given header cells (borrowed,
 * copied). Returns NULL when out of memory. */
sonar_cli_table *sonar_cli_table_create(size_t ncols, const char *const *headers);
/* Appends a row of ncols cells (borrowed, copied after replacing control
 * characters; NULL prints as "-"). Returns false when out of memory. */
bool sonar_cli_table_add(sonar_cli_table *t, const char *const *cells);
/* Writes the header and every row. */
void sonar_cli_table_print(const sonar_cli_table *t, FILE *out);
/* Frees the table. Accepts NULL. */
void sonar_cli_table_destroy(sonar_cli_table *t);

/* Display width of a UTF-8 string (code points, not bytes). */
size_t sonar_cli_text_width(const char *s);

/* New copy of \p s (NULL -> "-") with every control character replaced by
 * a space (tab, newline) or '?' (anything else, e.g. ESC). NULL when out
 * of memory. */
char *sonar_cli_sanitize(const char *s);

/* ---- Reports (sonar.report.v1) ----------------------------------------- */

/* Exit code for a report's verdict: pass 0, fail 1, incomplete 2,
 * anything else 3. */
int sonar_cli_verdict_exit(const json_t *report);

/* Writes the report: a header line (change id, service, version,
 * address), the table "SERVICE STATUS CHECKS REASON" (a failing check's
 * name and message in REASON; a flagged unregistered responder says so),
 * and a verdict line with the counts and the duration. */
void sonar_cli_print_report(FILE *out, const json_t *report);

/* One line for a result (sonar.result.v1) as it arrives during a gather,
 * e.g. "orders: fail, 1 of 2 checks failed (35 ms): menu: GET / -> 404". */
void sonar_cli_print_result_line(FILE *out, const json_t *result);

/* ---- Read API answers --------------------------------------------------- */

/* "SERVICE LIVE VERSIONS LAST SEEN DEPENDS ON" from sonar.services.v1. */
void sonar_cli_print_services(FILE *out, const json_t *services);

/* One row per report, newest first, from sonar.history.v1. */
void sonar_cli_print_history(FILE *out, const json_t *history);

/* Graphviz DOT of sonar.graph.v1: every node, and an edge from each
 * dependent to its dependency labelled with the check names. Names are
 * quoted and escaped, so the output is valid DOT for any input. */
void sonar_cli_print_dot(FILE *out, const json_t *graph);

/* ---- watch feed --------------------------------------------------------- */

/* Event kinds on the feed, from the subject. */
typedef enum sonar_cli_event {
    SONAR_CLI_EV_UNKNOWN = 0,
    SONAR_CLI_EV_REGISTER, /* sonar.register.<service> */
    SONAR_CLI_EV_LEAVE,    /* sonar.leave.<service> */
    SONAR_CLI_EV_CHANGE,   /* sonar.change.<service> */
    SONAR_CLI_EV_GATHER,   /* sonar.gather.<change_id> */
    SONAR_CLI_EV_RESULT,   /* sonar.result.<change_id>.<responder> */
    SONAR_CLI_EV_REPORT,   /* sonar.report.<service> */
    SONAR_CLI_EV_HEALTH,   /* sonar.health.<service> (statusd's transitions) */
} sonar_cli_event;

/* Kind of a feed subject; SONAR_CLI_EV_UNKNOWN for anything else. */
sonar_cli_event sonar_cli_event_kind(const char *subject);
/* "register", "leave", "change", "gather", "result", "report" or "unknown". */
const char *sonar_cli_event_name(sonar_cli_event ev);

/*
 * Decides which feed messages `watch` shows. A registration is shown the
 * first time an instance is seen and again when its version or address
 * changes (heartbeats repeat it every few seconds); a leave forgets the
 * instance. With a service filter, only that service's registrations,
 * leaves, changes and reports are shown, plus the gathers of its changes
 * and their results (a gather teaches the filter the change id), and
 * results the service itself sends.
 */
typedef struct sonar_cli_watch_filter sonar_cli_watch_filter;

/* New filter; \p service (copied) may be NULL for "everything". NULL when
 * out of memory. */
sonar_cli_watch_filter *sonar_cli_watch_filter_create(const char *service);
/* True when the message (parsed JSON \p msg, borrowed) of kind \p ev on
 * \p subject should be shown; updates the filter's memory. */
bool sonar_cli_watch_filter_pass(sonar_cli_watch_filter *f, sonar_cli_event ev,
                                 const char *subject, const json_t *msg);
/* Frees the filter. Accepts NULL. */
void sonar_cli_watch_filter_destroy(sonar_cli_watch_filter *f);

/* Writes one human line for a feed event: "<HH:MM:SS.mmm> <event> <detail>".
 * \p wall_ms is the receive time (ms since the epoch); \p replayed marks
 * a report replayed from the stream. */
void sonar_cli_print_event(FILE *out, sonar_cli_event ev, const char *subject,
                           const json_t *msg, int64_t wall_ms, bool replayed);

/* Writes one JSON line {"time","event","subject","replayed"?,"message"}. */
void sonar_cli_print_event_json(FILE *out, sonar_cli_event ev, const char *subject,
                                const json_t *msg, int64_t wall_ms, bool replayed);

/* Writes one line saying the watcher lost the bus (\p up false) or got it
 * back (\p up true) -- a gap in the feed: {"time","event":"disconnected" |
 * "reconnected","server","replaying"?} in JSON, a sentence otherwise.
 * \p replaying: the reports of the gap are being replayed. */
void sonar_cli_print_connection(FILE *out, bool json, bool up, const char *server,
                                bool replaying, int64_t wall_ms);

/* Writes one line for a message that failed validation (human or JSON):
 * the subject and the reason; the payload itself is not echoed. */
void sonar_cli_print_invalid(FILE *out, bool json, const char *subject, const char *reason,
                             int64_t wall_ms);

#endif
