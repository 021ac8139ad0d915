/* sonar outbox: inspect and repair a service's outbox without writing SQL. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "commands.h"
#include "sonar/sonar.h"

static const char outbox_usage[] =
    "usage: sonar outbox status  --db PATH [--json]\n"
    "       sonar outbox dead    --db PATH [--json]\n"
    "       sonar outbox requeue --db PATH ID\n"
    "       sonar outbox drop    --db PATH ID\n"
    "\n"
    "Inspect and repair the transactional outbox in a service's SQLite database.\n"
    "  status   pending rows, age of the oldest, dead-letter rows, totals\n"
    "  dead     dead-letter rows: id, subject, attempts, error\n"
    "  requeue  move dead row ID back to the outbox (same message id); the\n"
    "           service's relay publishes it at its next poll\n"
    "  drop     delete dead row ID for good\n"
    "\n"
    "Exit status: 0 ok; 2 bad usage; 3 the database is missing, is not an\n"
    "outbox database, has no such dead row, or a database error occurred.\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "sonar outbox: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nRun 'sonar outbox --help' for usage.\n");
    return 2;
}

static int runtime_error(void)
{
    fprintf(stderr, "sonar outbox: %s\n", sonar_last_error());
    return 3;
}

static void fmt_time(int64_t wall_ms, char *buf, size_t len)
{
    sonar_format_rfc3339(wall_ms, buf, len);
}

static int do_status(const char *db, bool as_json)
{
    sonar_outbox_db_status st;
    if (sonar_outbox_db_status_read(&st, db) != SONAR_OK)
        return runtime_error();
    if (as_json) {
        json_t *j = json_pack("{s:s, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "db", db,
                              "outbox_id", st.outbox_id, "schema_version", st.schema_version,
                              "pending", (json_int_t)st.pending, "oldest_pending_age_ms",
                              (json_int_t)st.oldest_pending_age_ms, "sent_retained",
                              (json_int_t)st.sent_retained, "dead", (json_int_t)st.dead,
                              "published_total", (json_int_t)st.published_total,
                              "retries_total", (json_int_t)st.retries_total, "dead_total",
                              (json_int_t)st.dead_total);
        char *s = json_dumps(j, JSON_INDENT(2));
        puts(s);
        free(s);
        json_decref(j);
        return 0;
    }
    printf("outbox %s (schema %d) in %s\n", st.outbox_id, st.schema_version, db);
    printf("  pending          %" PRId64 "\n", st.pending);
    printf("  oldest pending   %.1f s\n", (double)st.oldest_pending_age_ms / 1000.0);
    printf("  dead-letter      %" PRId64 "%s\n", st.dead,
           st.dead ? "  (see: sonar outbox dead --db ...)" : "");
    printf("  sent, retained   %" PRId64 "\n", st.sent_retained);
    printf("  published total  %" PRId64 "\n", st.published_total);
    printf("  retries total    %" PRId64 "\n", st.retries_total);
    printf("  dead total       %" PRId64 "\n", st.dead_total);
    return 0;
}

static int do_dead(const char *db, bool as_json)
{
    sonar_outbox_dead_row *rows = NULL;
    size_t n = 0;
    if (sonar_outbox_dead_list(&rows, &n, db) != SONAR_OK)
        return runtime_error();
    char created[40], dead[40];
    if (as_json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            fmt_time(rows[i].created_ms, created, sizeof created);
            fmt_time(rows[i].dead_ms, dead, sizeof dead);
            json_array_append_new(
                arr, json_pack("{s:I, s:s, s:I, s:I, s:s, s:s, s:s}", "id", (json_int_t)rows[i].id,
                               "subject", rows[i].subject, "payload_bytes",
                               (json_int_t)rows[i].payload_len, "attempts",
                               (json_int_t)rows[i].attempts, "error", rows[i].error, "created",
                               created, "dead_at", dead));
        }
        char *s = json_dumps(arr, JSON_INDENT(2));
        puts(s);
        free(s);
        json_decref(arr);
    } else if (n == 0) {
        printf("no dead-letter rows in %s\n", db);
    } else {
        printf("%-8s %-32s %8s %9s  %s\n", "ID", "SUBJECT", "BYTES", "ATTEMPTS", "ERROR");
        for (size_t i = 0; i < n; i++)
            printf("%-8" PRId64 " %-32s %8zu %9" PRId64 "  %s\n", rows[i].id, rows[i].subject,
                   rows[i].payload_len, rows[i].attempts, rows[i].error);
    }
    sonar_outbox_dead_rows_free(rows, n);
    return 0;
}

int sonar_cmd_outbox(int argc, char **argv)
{
    if (argc < 2)
        return usage_error("%s", "missing action (status, dead, requeue or drop)");
    const char *action = argv[1];
    if (strcmp(action, "--help") == 0 || strcmp(action, "-h") == 0 || strcmp(action, "help") == 0) {
        fputs(outbox_usage, stdout);
        return 0;
    }
    bool is_status = strcmp(action, "status") == 0, is_dead = strcmp(action, "dead") == 0;
    bool is_requeue = strcmp(action, "requeue") == 0, is_drop = strcmp(action, "drop") == 0;
    if (!is_status && !is_dead && !is_requeue && !is_drop)
        return usage_error("unknown action '%s' (expected status, dead, requeue or drop)", action);
    const char *db = NULL, *id_text = NULL;
    bool as_json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(outbox_usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--db") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s", "--db needs a PATH");
            db = argv[++i];
        } else if (strncmp(argv[i], "--db=", 5) == 0) {
            db = argv[i] + 5;
        } else if (strcmp(argv[i], "--json") == 0 && (is_status || is_dead)) {
            as_json = true;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return usage_error("unknown option '%s'", argv[i]);
        } else if ((is_requeue || is_drop) && id_text == NULL) {
            id_text = argv[i];
        } else {
            return usage_error("unexpected argument '%s'", argv[i]);
        }
    }
    if (db == NULL || *db == '\0')
        return usage_error("%s", "--db PATH is required");
    if (is_status)
        return do_status(db, as_json);
    if (is_dead)
        return do_dead(db, as_json);
    if (id_text == NULL)
        return usage_error("%s", "missing dead-letter row ID (see: sonar outbox dead)");
    char *end = NULL;
    errno = 0;
    long long id = strtoll(id_text, &end, 10);
    if (errno != 0 || end == id_text || *end != '\0' || id <= 0)
        return usage_error("ID must be a positive integer, got '%s'", id_text);
    sonar_status s = is_requeue ? sonar_outbox_requeue(db, id) : sonar_outbox_drop(db, id);
    if (s != SONAR_OK)
        return runtime_error();
    printf("%s dead-letter row %lld\n", is_requeue ? "requeued" : "dropped", id);
    return 0;
}
