/* sonar outbox and sonar inbox: inspect and repair a service's outbox and
 * inbox without writing SQL. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli_common.h"
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

static const char inbox_usage[] =
    "usage: sonar inbox status  --db PATH [--json]\n"
    "       sonar inbox dead    --db PATH [--json]\n"
    "       sonar inbox requeue --db PATH ID [--server URL and auth options]\n"
    "       sonar inbox drop    --db PATH ID\n"
    "\n"
    "Inspect and repair the inboxes (exactly-once JetStream consumers) in a\n"
    "service's SQLite database.\n"
    "  status   per inbox: message ids kept for de-duplication, the newest\n"
    "           applied, dead-letter rows\n"
    "  dead     messages an inbox gave up on: id, inbox, subject, stream\n"
    "           sequence, deliveries, the handler's last error\n"
    "  requeue  once the cause is fixed: publish dead row ID's message into\n"
    "           JetStream again (same subject, payload, headers and message id)\n"
    "           and remove the row; its inbox applies the copy, inboxes that\n"
    "           applied the original skip it. Refused while the stream's\n"
    "           duplicate window (2 min by default) still remembers the id\n"
    "  drop     delete dead row ID for good\n"
    "\n"
    "Exit status: 0 ok; 2 bad usage; 3 the database is missing, is not an\n"
    "inbox database, has no such dead row, a database error occurred, or the\n"
    "publish of a requeue failed or was refused.\n";

/* What `sonar outbox|inbox <action> --db PATH [--json] [ID]` asked for. */
typedef struct db_args {
    const char *action;
    const char *db;
    bool json;
    int64_t id; /* for the actions that take an ID */
} db_args;

static int usage_error(const char *cmd, const char *fmt, const char *arg)
{
    fprintf(stderr, "sonar %s: ", cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nRun 'sonar %s --help' for usage.\n", cmd);
    return 2;
}

static int runtime_error(const char *cmd)
{
    fprintf(stderr, "sonar %s: %s\n", cmd, sonar_last_error());
    return 3;
}

static bool listed(const char *const *names, const char *name)
{
    for (; *names; names++)
        if (strcmp(*names, name) == 0)
            return true;
    return false;
}

/* A dead-letter row ID; returns -1 to go on, else the exit code of a usage error. */
static int parse_id(const char *cmd, const char *id_text, int64_t *out)
{
    if (id_text == NULL)
        return usage_error(cmd, "missing dead-letter row ID (see: sonar %s dead)", cmd);
    char *end = NULL;
    errno = 0;
    long long id = strtoll(id_text, &end, 10);
    if (errno != 0 || end == id_text || *end != '\0' || id <= 0)
        return usage_error(cmd, "ID must be a positive integer, got '%s'", id_text);
    *out = id;
    return -1;
}

/* Parses the arguments; returns -1 to go on, else the exit code (help
 * printed, or a usage error said). `actions` lists every action, `with_id`
 * those taking an ID; `listing` names them for messages. */
static int parse_db_args(int argc, char **argv, const char *cmd, const char *usage,
                         const char *const *actions, const char *const *with_id,
                         const char *listing, db_args *out)
{
    if (argc < 2)
        return usage_error(cmd, "missing action (%s)", listing);
    const char *action = argv[1];
    if (strcmp(action, "--help") == 0 || strcmp(action, "-h") == 0 || strcmp(action, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (!listed(actions, action)) {
        fprintf(stderr, "sonar %s: unknown action '%s' (expected %s)\nRun 'sonar %s --help' for"
                        " usage.\n", cmd, action, listing, cmd);
        return 2;
    }
    bool takes_id = listed(with_id, action);
    const char *db = NULL, *id_text = NULL;
    bool as_json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--db") == 0) {
            if (i + 1 >= argc)
                return usage_error(cmd, "%s", "--db needs a PATH");
            db = argv[++i];
        } else if (strncmp(argv[i], "--db=", 5) == 0) {
            db = argv[i] + 5;
        } else if (strcmp(argv[i], "--json") == 0 && !takes_id) {
            as_json = true;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return usage_error(cmd, "unknown option '%s'", argv[i]);
        } else if (takes_id && id_text == NULL) {
            id_text = argv[i];
        } else {
            return usage_error(cmd, "unexpected argument '%s'", argv[i]);
        }
    }
    if (db == NULL || *db == '\0')
        return usage_error(cmd, "%s", "--db PATH is required");
    *out = (db_args){.action = action, .db = db, .json = as_json};
    if (!takes_id)
        return -1;
    return parse_id(cmd, id_text, &out->id);
}

static void fmt_time(int64_t wall_ms, char *buf, size_t len)
{
    sonar_format_rfc3339(wall_ms, buf, len);
}

static int do_status(const char *db, bool as_json)
{
    sonar_outbox_db_status st;
    if (sonar_outbox_db_status_read(&st, db) != SONAR_OK)
        return runtime_error("outbox");
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
        return runtime_error("outbox");
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
    static const char *const actions[] = {"status", "dead", "requeue", "drop", NULL};
    static const char *const with_id[] = {"requeue", "drop", NULL};
    db_args a;
    int rc = parse_db_args(argc, argv, "outbox", outbox_usage, actions, with_id,
                           "status, dead, requeue or drop", &a);
    if (rc >= 0)
        return rc;
    if (strcmp(a.action, "status") == 0)
        return do_status(a.db, a.json);
    if (strcmp(a.action, "dead") == 0)
        return do_dead(a.db, a.json);
    bool requeue = strcmp(a.action, "requeue") == 0;
    sonar_status s = requeue ? sonar_outbox_requeue(a.db, a.id) : sonar_outbox_drop(a.db, a.id);
    if (s != SONAR_OK)
        return runtime_error("outbox");
    printf("%s dead-letter row %" PRId64 "\n", requeue ? "requeued" : "dropped", a.id);
    return 0;
}

/* ---- sonar inbox ---------------------------------------------------------- */

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2));
    if (s)
        puts(s);
    free(s);
    json_decref(j);
}

static int inbox_status(const char *db, bool as_json)
{
    sonar_inbox_db_status st;
    if (sonar_inbox_db_status_read(&st, db) != SONAR_OK)
        return runtime_error("inbox");
    char last[40];
    if (as_json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < st.n; i++) {
            sonar_inbox_consumer_status *c = &st.consumers[i];
            fmt_time(c->last_applied_ms, last, sizeof last);
            json_array_append_new(arr, json_pack("{s:s, s:I, s:s?, s:I}", "name", c->name,
                                                 "recorded", (json_int_t)c->recorded,
                                                 "last_applied",
                                                 c->last_applied_ms ? last : NULL, "dead",
                                                 (json_int_t)c->dead));
        }
        print_json(json_pack("{s:s, s:o, s:I, s:I}", "db", db, "inboxes", arr, "recorded_total",
                             (json_int_t)st.recorded_total, "dead_total",
                             (json_int_t)st.dead_total));
    } else if (st.n == 0) {
        printf("no inbox has applied a message in %s yet\n", db);
    } else {
        printf("%-24s %10s  %-24s %6s\n", "INBOX", "RECORDED", "LAST APPLIED", "DEAD");
        for (size_t i = 0; i < st.n; i++) {
            sonar_inbox_consumer_status *c = &st.consumers[i];
            fmt_time(c->last_applied_ms, last, sizeof last);
            printf("%-24s %10" PRId64 "  %-24s %6" PRId64 "\n", c->name, c->recorded,
                   c->last_applied_ms ? last : "-", c->dead);
        }
        if (st.dead_total)
            printf("(see: sonar inbox dead --db %s)\n", db);
    }
    sonar_inbox_db_status_finish(&st);
    return 0;
}

static int inbox_dead(const char *db, bool as_json)
{
    sonar_inbox_dead_row *rows = NULL;
    size_t n = 0;
    if (sonar_inbox_dead_list(&rows, &n, db) != SONAR_OK)
        return runtime_error("inbox");
    char dead[40];
    if (as_json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            sonar_inbox_dead_row *r = &rows[i];
            fmt_time(r->dead_ms, dead, sizeof dead);
            json_t *headers = json_loads(r->headers, 0, NULL);
            json_array_append_new(
                arr, json_pack("{s:I, s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:o}", "id",
                               (json_int_t)r->id, "inbox", r->name, "msg_id", r->msg_id,
                               "subject", r->subject, "payload_bytes",
                               (json_int_t)r->payload_len, "stream_seq",
                               (json_int_t)r->stream_seq, "deliveries",
                               (json_int_t)r->deliveries, "error", r->error, "dead_at", dead,
                               "headers", json_is_object(headers) ? headers : json_object()));
            if (!json_is_object(headers))
                json_decref(headers);
        }
        print_json(arr);
    } else if (n == 0) {
        printf("no inbox dead-letter rows in %s\n", db);
    } else {
        printf("%-8s %-16s %-28s %10s %10s  %s\n", "ID", "INBOX", "SUBJECT", "STREAM SEQ",
               "DELIVERIES", "ERROR");
        for (size_t i = 0; i < n; i++)
            printf("%-8" PRId64 " %-16s %-28s %10" PRId64 " %10" PRId64 "  %s\n", rows[i].id,
                   rows[i].name, rows[i].subject, rows[i].stream_seq, rows[i].deliveries,
                   rows[i].error);
    }
    sonar_inbox_dead_rows_free(rows, n);
    return 0;
}

/* sonar inbox requeue: the one action that needs the bus (argv[0] is "requeue"). */
static int inbox_requeue(int argc, char **argv)
{
    const char *db = NULL;
    const sonar_cli_opt opts[] = {{"db", 0, &db, NULL}, {NULL, 0, NULL, NULL}};
    sonar_cli_args args;
    char err[256];
    if (!sonar_cli_parse(&args, argc, argv, opts, 1, err, sizeof err))
        return usage_error("inbox", "%s", err);
    if (args.help) {
        sonar_cli_usage(stdout, inbox_usage);
        return 0;
    }
    if (db == NULL)
        return usage_error("inbox", "%s", "--db PATH is required");
    int64_t id = 0;
    int rc = parse_id("inbox", args.n_pos ? args.pos[0] : NULL, &id);
    if (rc >= 0)
        return rc;
    /* The file first: a wrong path is said without a bus. */
    sonar_inbox_db_status st;
    if (sonar_inbox_db_status_read(&st, db) != SONAR_OK)
        return runtime_error("inbox");
    sonar_inbox_db_status_finish(&st);
    sonar_bus *bus = NULL;
    if (sonar_cli_connect(&bus, &args) != SONAR_OK) {
        fprintf(stderr, "sonar inbox: %s\n", sonar_cli_last_error());
        return 3;
    }
    char *stream = NULL;
    uint64_t seq = 0;
    sonar_status s = sonar_inbox_requeue(sonar_bus_nats(bus), db, id, &stream, &seq);
    if (s == SONAR_OK)
        printf("requeued inbox dead-letter row %" PRId64 ": published again into stream %s"
               " (sequence %" PRIu64 ")\n", id, stream ? stream : "?", seq);
    else
        fprintf(stderr, "sonar inbox: %s\n", sonar_last_error());
    free(stream);
    sonar_bus_destroy(bus);
    return s == SONAR_OK ? 0 : 3;
}

int sonar_cmd_inbox(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "requeue") == 0)
        return inbox_requeue(argc - 1, argv + 1);
    static const char *const actions[] = {"status", "dead", "requeue", "drop", NULL};
    static const char *const with_id[] = {"drop", NULL};
    db_args a;
    int rc = parse_db_args(argc, argv, "inbox", inbox_usage, actions, with_id,
                           "status, dead, requeue or drop", &a);
    if (rc >= 0)
        return rc;
    if (strcmp(a.action, "status") == 0)
        return inbox_status(a.db, a.json);
    if (strcmp(a.action, "dead") == 0)
        return inbox_dead(a.db, a.json);
    if (sonar_inbox_drop(a.db, a.id) != SONAR_OK)
        return runtime_error("inbox");
    printf("dropped inbox dead-letter row %" PRId64 "\n", a.id);
    return 0;
}
