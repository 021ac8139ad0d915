/* The `sonar outbox` subcommand, run as the built binary (SONAR_CLI_BIN). */
#include <criterion/criterion.h>

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
