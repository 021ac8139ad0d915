/* The `sonar outbox` subcommand, run as the built binary (SONAR_CLI_BIN). */
#include <criterion/criterion.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <jansson.h>

#include "natsd.h"
#include "sonar/sonar.h"

static char dir[256], path[300];

static void setup(void)
{
    cr_assert(test_mkdtemp(dir, sizeof dir, "cli-outbox"));
    snprintf(path, sizeof path, "%s/svc.db", dir);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sonar_outbox_migrate(db), SONAR_OK);
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b", "x", 1, NULL), SONAR_OK);
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.c", "y", 1, NULL), SONAR_OK);
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO sonar_outbox_dead(id, subject, payload, created_ms,"
                              " attempts, error, dead_ms) VALUES (42, 'big.one', x'00', 1, 1,"
                              " 'payload of 2097152 bytes exceeds max_payload', 2)",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
}

static void teardown(void)
{
    test_rmtree(dir);
}

TestSuite(cli_outbox, .init = setup, .fini = teardown);

/* Runs `sonar <args>`; stdout (and stderr) into out; returns the exit code. */
static int run(char *out, size_t outlen, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", test_bin("SONAR_CLI_BIN"), args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    cr_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

Test(cli_outbox, status_json_reports_pending_and_dead)
{
    char out[4096], args[512];
    snprintf(args, sizeof args, "outbox status --db '%s' --json", path);
    cr_assert_eq(run(out, sizeof out, args), 0, "%s", out);
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    cr_assert_not_null(j, "not JSON: %s", out);
    cr_assert_eq(json_integer_value(json_object_get(j, "pending")), 2);
    cr_assert_eq(json_integer_value(json_object_get(j, "dead")), 1);
    cr_assert_eq(strlen(json_string_value(json_object_get(j, "outbox_id"))), 22);
    json_decref(j);
    snprintf(args, sizeof args, "outbox status --db '%s'", path);
    cr_assert_eq(run(out, sizeof out, args), 0);
    cr_assert(strstr(out, "pending          2") != NULL, "%s", out);
}

Test(cli_outbox, dead_lists_rows_then_requeue_and_drop_repair_them)
{
    char out[4096], args[512];
    snprintf(args, sizeof args, "outbox dead --db '%s'", path);
    cr_assert_eq(run(out, sizeof out, args), 0);
    cr_assert(strstr(out, "42") && strstr(out, "big.one") && strstr(out, "max_payload"), "%s",
              out);
    snprintf(args, sizeof args, "outbox dead --db '%s' --json", path);
    cr_assert_eq(run(out, sizeof out, args), 0);
    json_t *j = json_loads(out, 0, NULL);
    cr_assert(json_is_array(j) && json_array_size(j) == 1, "%s", out);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(j, 0), "id")), 42);
    json_decref(j);

    snprintf(args, sizeof args, "outbox requeue --db '%s' 42", path);
    cr_assert_eq(run(out, sizeof out, args), 0, "%s", out);
    snprintf(args, sizeof args, "outbox status --db '%s' --json", path);
    run(out, sizeof out, args);
    j = json_loads(out, 0, NULL);
    cr_assert_eq(json_integer_value(json_object_get(j, "pending")), 3);
    cr_assert_eq(json_integer_value(json_object_get(j, "dead")), 0);
    json_decref(j);

    snprintf(args, sizeof args, "outbox requeue --db '%s' 42", path);
    cr_assert_eq(run(out, sizeof out, args), 3);
    cr_assert(strstr(out, "no dead-letter row with id 42") != NULL, "%s", out);
    snprintf(args, sizeof args, "outbox drop --db '%s' 42", path);
    cr_assert_eq(run(out, sizeof out, args), 3);
}

Test(cli_outbox, bad_usage_and_bad_files_exit_with_one_line_reasons)
{
    char out[4096], args[512];
    cr_assert_eq(run(out, sizeof out, "outbox --help"), 0);
    cr_assert(strstr(out, "requeue") != NULL);
    cr_assert_eq(run(out, sizeof out, "outbox"), 2);
    cr_assert_eq(run(out, sizeof out, "outbox frobnicate --db x"), 2);
    cr_assert(strstr(out, "unknown action") != NULL, "%s", out);
    cr_assert_eq(run(out, sizeof out, "outbox status"), 2);
    cr_assert(strstr(out, "--db PATH is required") != NULL, "%s", out);
    cr_assert_eq(run(out, sizeof out, "outbox status --db x --bogus"), 2);
    snprintf(args, sizeof args, "outbox requeue --db '%s' abc", path);
    cr_assert_eq(run(out, sizeof out, args), 2);
    cr_assert(strstr(out, "positive integer") != NULL, "%s", out);
    snprintf(args, sizeof args, "outbox drop --db '%s'", path);
    cr_assert_eq(run(out, sizeof out, args), 2);
    snprintf(args, sizeof args, "outbox status --db '%s/missing.db'", dir);
    cr_assert_eq(run(out, sizeof out, args), 3);
    cr_assert(strstr(out, "No such file") != NULL, "%s", out);
    char notdb[320];
    snprintf(notdb, sizeof notdb, "%s/notes.txt", dir);
    FILE *f = fopen(notdb, "w");
    fputs("hello, not a database\n", f);
    fclose(f);
    snprintf(args, sizeof args, "outbox dead --db '%s'", notdb);
    cr_assert_eq(run(out, sizeof out, args), 3);
    cr_assert(strstr(out, "not an outbox database") != NULL, "%s", out);
    /* A missing file is not created by looking at it. */
    snprintf(args, sizeof args, "%s/missing.db", dir);
    cr_assert_null(fopen(args, "r"));
}

/* run() with the arguments formatted from fmt (path, dir, ...). */
static int runf(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int runf(char *out, size_t outlen, const char *fmt, ...)
{
    char args[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return run(out, outlen, args);
}

/* ---- sonar inbox ------------------------------------------------------------ */

/* The same file gets inbox tables: two inboxes, one dead letter. */
static void add_inbox_rows(void)
{
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sonar_inbox_migrate(db), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO sonar_inbox(name, msg_id, done_ms) VALUES"
                              " ('wells-events', 'm1', 1700000000000),"
                              " ('wells-events', 'm2', 1700000001000),"
                              " ('aquifer-events', 'a1', 1700000002000);"
                              "INSERT INTO sonar_inbox_dead(id, name, msg_id, subject, payload,"
                              " stream_seq, deliveries, error, dead_ms) VALUES (7,"
                              " 'wells-events', 'm3', 'events.wells.created', x'7b7d', 19, 5,"
                              " 'unknown aquifer a9', 1700000003000)",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
}

Test(cli_outbox, inbox_status_and_dead_show_each_inbox_and_drop_removes_a_dead_letter)
{
    add_inbox_rows();
    char out[4096];
    cr_assert_eq(runf(out, sizeof out, "inbox status --db '%s' --json", path), 0, "%s", out);
    json_t *j = json_loads(out, 0, NULL);
    cr_assert_not_null(j, "not JSON: %s", out);
    json_t *inboxes = json_object_get(j, "inboxes");
    cr_assert_eq(json_array_size(inboxes), 2, "%s", out);
    json_t *wells = json_array_get(inboxes, 1); /* by name: aquifer-events first */
    cr_assert_str_eq(json_string_value(json_object_get(wells, "name")), "wells-events");
    cr_assert_eq(json_integer_value(json_object_get(wells, "recorded")), 2);
    cr_assert_eq(json_integer_value(json_object_get(wells, "dead")), 1);
    cr_assert_str_eq(json_string_value(json_object_get(wells, "last_applied")),
                     "2023-11-14T22:13:21.000Z");
    cr_assert_eq(json_integer_value(json_object_get(j, "dead_total")), 1);
    json_decref(j);
    cr_assert_eq(runf(out, sizeof out, "inbox status --db '%s'", path), 0, "%s", out);
    cr_assert(strstr(out, "aquifer-events") && strstr(out, "wells-events"), "%s", out);

    cr_assert_eq(runf(out, sizeof out, "inbox dead --db '%s'", path), 0, "%s", out);
    cr_assert(strstr(out, "events.wells.created") && strstr(out, "unknown aquifer a9"), "%s",
              out);
    cr_assert_eq(runf(out, sizeof out, "inbox dead --db '%s' --json", path), 0, "%s", out);
    j = json_loads(out, 0, NULL);
    cr_assert(json_is_array(j) && json_array_size(j) == 1, "%s", out);
    json_t *row = json_array_get(j, 0);
    cr_assert_eq(json_integer_value(json_object_get(row, "id")), 7);
    cr_assert_eq(json_integer_value(json_object_get(row, "stream_seq")), 19);
    cr_assert_eq(json_integer_value(json_object_get(row, "deliveries")), 5);
    cr_assert_str_eq(json_string_value(json_object_get(row, "msg_id")), "m3");
    json_decref(j);

    cr_assert_eq(runf(out, sizeof out, "inbox drop --db '%s' 7", path), 0, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox drop --db '%s' 7", path), 3);
    cr_assert(strstr(out, "no inbox dead-letter row with id 7") != NULL, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox dead --db '%s'", path), 0);
    cr_assert(strstr(out, "no inbox dead-letter rows") != NULL, "%s", out);
}

/* A database whose dead-letter table predates the headers column (an older
 * libsonar made it) is listed as is, with no headers, and gains the column
 * when an inbox migrates it. */
Test(cli_outbox, an_inbox_database_from_before_dead_letter_headers_is_read_and_migrated)
{
    char old_db[400];
    snprintf(old_db, sizeof old_db, "%s/old-inbox.db", dir);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(old_db, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db,
                              "CREATE TABLE sonar_inbox (name TEXT NOT NULL, msg_id TEXT NOT NULL,"
                              " done_ms INTEGER NOT NULL, PRIMARY KEY (name, msg_id))"
                              " WITHOUT ROWID;"
                              "CREATE TABLE sonar_inbox_dead (id INTEGER PRIMARY KEY"
                              " AUTOINCREMENT, name TEXT NOT NULL, msg_id TEXT NOT NULL,"
                              " subject TEXT NOT NULL, payload BLOB NOT NULL, stream_seq"
                              " INTEGER NOT NULL, deliveries INTEGER NOT NULL, error TEXT NOT"
                              " NULL, dead_ms INTEGER NOT NULL);"
                              "INSERT INTO sonar_inbox_dead(name, msg_id, subject, payload,"
                              " stream_seq, deliveries, error, dead_ms) VALUES ('old', 'o1',"
                              " 'ev.o', x'7b7d', 3, 5, 'boom', 1700000003000)",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    char out[4096];
    cr_assert_eq(runf(out, sizeof out, "inbox dead --db '%s' --json", old_db), 0, "%s", out);
    json_t *rows = json_loads(out, 0, NULL);
    cr_assert_eq(json_array_size(rows), 1, "%s", out);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(rows, 0), "msg_id")), "o1");
    cr_assert_eq(json_object_size(json_object_get(json_array_get(rows, 0), "headers")), 0, "%s",
                 out);
    json_decref(rows);
    cr_assert_eq(sonar_inbox_migrate(db), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_inbox_migrate(db), SONAR_OK, "migrating twice: %s", sonar_last_error());
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT headers FROM sonar_inbox_dead", -1, &st, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "{}");
    sqlite3_finalize(st);
    sqlite3_close(db);
    cr_assert_eq(runf(out, sizeof out, "inbox dead --db '%s'", old_db), 0, "%s", out);
    cr_assert(strstr(out, "boom") != NULL, "%s", out);
}

Test(cli_outbox, inbox_bad_usage_and_files_without_inbox_tables_are_refused)
{
    char out[4096];
    cr_assert_eq(run(out, sizeof out, "inbox --help"), 0);
    cr_assert(strstr(out, "drop") != NULL);
    cr_assert(strstr(out, "requeue") != NULL);
    cr_assert_eq(run(out, sizeof out, "inbox requeue --help"), 0);
    cr_assert(strstr(out, "--server") != NULL, "requeue takes the bus options: %s", out);
    cr_assert_eq(run(out, sizeof out, "inbox requeue 1"), 2, "%s", out);
    cr_assert(strstr(out, "--db PATH is required") != NULL, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox requeue --db '%s'", path), 2, "%s", out);
    cr_assert(strstr(out, "missing dead-letter row ID") != NULL, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox requeue --db '%s' zero", path), 2, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox requeue --db '%s' 1 2", path), 2, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox requeue --db '%s' 1 --bogus", path), 2, "%s", out);
    /* A file that is not an inbox database is refused before any bus. */
    cr_assert_eq(runf(out, sizeof out, "inbox requeue --db '%s' 1 --server nats://127.0.0.1:1",
                      path), 3, "%s", out);
    cr_assert(strstr(out, "not an inbox database") != NULL, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox requeue --db '%s/missing.db' 1", dir), 3, "%s", out);
    cr_assert_eq(run(out, sizeof out, "inbox status"), 2);
    cr_assert_eq(runf(out, sizeof out, "inbox drop --db '%s' -3", path), 2, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox drop --db '%s' 1 --json", path), 2, "%s", out);
    /* The outbox-only file of setup() has no inbox tables. */
    cr_assert_eq(runf(out, sizeof out, "inbox status --db '%s'", path), 3);
    cr_assert(strstr(out, "not an inbox database") != NULL, "%s", out);
    cr_assert_eq(runf(out, sizeof out, "inbox dead --db '%s/missing.db'", dir), 3);
}
