#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <sys/resource.h>
#include <unistd.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"
#include "store.h"

static char dir[256];
static char path[300];

static void setup(void)
{
    cr_assert(test_mkdtemp(dir, sizeof dir, "store"));
    snprintf(path, sizeof path, "%s/sonard.db", dir);
}

static void teardown(void)
{
    test_rmtree(dir);
}

TestSuite(store, .init = setup, .fini = teardown);

static void raw_exec(const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
}

Test(store, a_new_database_gets_the_current_schema)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK, "%s", sonar_last_error());
    int v = 0;
    cr_assert_eq(sonar_store_schema_version(st, &v), SONAR_OK);
    cr_assert_eq(v, SONARD_SCHEMA_VERSION);
    sonar_store_close(st);
    /* Reopening applies nothing twice. */
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_store_schema_version(st, &v), SONAR_OK);
    cr_assert_eq(v, SONARD_SCHEMA_VERSION);
    sonar_store_close(st);
}

Test(store, a_version_1_database_is_migrated_keeping_its_reports)
{
    raw_exec("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_ms INTEGER NOT NULL);"
             "INSERT INTO schema_version VALUES (1, 0);"
             "CREATE TABLE services (name TEXT PRIMARY KEY, version TEXT NOT NULL DEFAULT '',"
             " depends_on TEXT NOT NULL DEFAULT '[]', checks TEXT NOT NULL DEFAULT '{}',"
             " first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL);"
             "CREATE TABLE instances (service TEXT NOT NULL, instance TEXT NOT NULL,"
             " version TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT '',"
             " heartbeat_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,"
             " PRIMARY KEY (service, instance));"
             "CREATE TABLE reports (change_id TEXT PRIMARY KEY, service TEXT NOT NULL,"
             " verdict TEXT NOT NULL, created_ms INTEGER NOT NULL, report TEXT NOT NULL);"
             "INSERT INTO reports VALUES ('c1', 'x', 'pass', 5, '{\"change_id\":\"c1\"}');");
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK, "%s", sonar_last_error());
    int v = 0;
    cr_assert_eq(sonar_store_schema_version(st, &v), SONAR_OK);
    cr_assert_eq(v, 2);
    char *r = NULL;
    cr_assert_eq(sonar_store_get_report(st, "c1", &r), SONAR_OK);
    cr_assert_str_eq(r, "{\"change_id\":\"c1\"}");
    free(r);
    sonar_store_close(st);
    /* The version-2 index exists now. */
    sqlite3 *db;
    sqlite3_stmt *q;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM sqlite_master WHERE type='index'"
                                        " AND name='reports_by_service'", -1, &q, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int(q, 0), 1);
    sqlite3_finalize(q);
    sqlite3_close(db);
}

Test(store, a_schema_newer_than_this_build_is_refused)
{
    raw_exec("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_ms INTEGER NOT NULL);"
             "INSERT INTO schema_version VALUES (99, 0);");
    sonar_store *st = NULL;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_ERR_DB);
    cr_assert_null(st);
    cr_assert(strstr(sonar_last_error(), "newer") != NULL, "%s", sonar_last_error());
}

Test(store, a_file_that_is_not_a_database_is_refused)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("this is not sqlite, just text long enough to have a header page ........", f);
    fclose(f);
    sonar_store *st = NULL;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_ERR_DB);
    cr_assert_eq(sonar_store_open(&st, ""), SONAR_ERR_INVALID);
}

Test(store, reports_are_found_by_change_id_and_the_first_wins)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    cr_assert_eq(sonar_store_put_report(st, "c1", "x", "pass", 10, "{\"n\":1}"), SONAR_OK);
    cr_assert_eq(sonar_store_put_report(st, "c1", "x", "fail", 11, "{\"n\":2}"), SONAR_OK);
    char *r = NULL;
    cr_assert_eq(sonar_store_get_report(st, "c1", &r), SONAR_OK);
    cr_assert_str_eq(r, "{\"n\":1}");
    free(r);
    r = NULL;
    cr_assert_eq(sonar_store_get_report(st, "nope", &r), SONAR_ERR_NOT_FOUND);
    cr_assert_null(r);
    sonar_store_close(st);
}

static void collect_id(void *closure, const char *change_id)
{
    json_array_append_new(closure, json_string(change_id));
}

Test(store, report_ids_lists_every_stored_change_id)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    json_t *ids = json_array();
    cr_assert_eq(sonar_store_report_ids(st, collect_id, ids), SONAR_OK);
    cr_assert_eq(json_array_size(ids), 0);
    cr_assert_eq(sonar_store_put_report(st, "c1", "x", "pass", 10, "{}"), SONAR_OK);
    cr_assert_eq(sonar_store_put_report(st, "c2", "y", "fail", 11, "{}"), SONAR_OK);
    cr_assert_eq(sonar_store_report_ids(st, collect_id, ids), SONAR_OK);
    cr_assert_eq(json_array_size(ids), 2);
    bool c1 = false, c2 = false;
    for (size_t i = 0; i < 2; i++) {
        const char *id = json_string_value(json_array_get(ids, i));
        c1 = c1 || strcmp(id, "c1") == 0;
        c2 = c2 || strcmp(id, "c2") == 0;
    }
    cr_assert(c1 && c2);
    json_decref(ids);
    sonar_store_close(st);
}

Test(store, history_is_newest_first_and_limited)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    for (int i = 0; i < 5; i++) {
        char cid[8], json[32];
        snprintf(cid, sizeof cid, "c%d", i);
        snprintf(json, sizeof json, "{\"n\":%d}", i);
        cr_assert_eq(sonar_store_put_report(st, cid, "x", "pass", 100 + i, json), SONAR_OK);
    }
    cr_assert_eq(sonar_store_put_report(st, "other", "y", "pass", 500, "{\"n\":9}"), SONAR_OK);
    json_t *h;
    cr_assert_eq(sonar_store_history(st, "x", 3, &h), SONAR_OK);
    cr_assert_eq(json_array_size(h), 3);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(h, 0), "n")), 4);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(h, 2), "n")), 2);
    json_decref(h);
    cr_assert_eq(sonar_store_history(st, "nobody", 3, &h), SONAR_OK);
    cr_assert_eq(json_array_size(h), 0);
    json_decref(h);
    sonar_store_close(st);
}

Test(store, pruning_deletes_only_reports_past_retention_in_batches)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    raw_exec("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200)"
             " INSERT INTO reports SELECT 'old' || i, 'x', 'pass', 1000, '{}' FROM n;");
    cr_assert_eq(sonar_store_put_report(st, "new", "x", "pass", 5000, "{}"), SONAR_OK);
    size_t deleted = 0;
    cr_assert_eq(sonar_store_prune(st, 2000, 5000, &deleted), SONAR_OK);
    cr_assert_eq(deleted, 1200, "more than two batches of %d", SONARD_PRUNE_BATCH);
    int64_t n = 0;
    cr_assert_eq(sonar_store_count_reports(st, &n), SONAR_OK);
    cr_assert_eq(n, 1);
    char *r = NULL;
    cr_assert_eq(sonar_store_get_report(st, "new", &r), SONAR_OK);
    free(r);
    sonar_store_close(st);
}

struct loaded {
    int services, instances;
    char deps[64];
    int64_t hb;
};

static void on_service(void *cl, const char *service, const char *version, const char *deps,
                       const char *checks, int64_t wall)
{
    (void)version; (void)checks; (void)wall;
    struct loaded *l = cl;
    l->services++;
    if (strcmp(service, "a") == 0)
        snprintf(l->deps, sizeof l->deps, "%s", deps);
}

static void on_instance(void *cl, const char *service, const char *instance, const char *version,
                        const char *address, int64_t hb, int64_t wall)
{
    (void)service; (void)instance; (void)version; (void)address; (void)wall;
    struct loaded *l = cl;
    l->instances++;
    l->hb = hb;
}

Test(store, the_writer_applies_queued_registrations_and_leaves)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    cr_assert_eq(sonar_store_start_writer(st, 1000000, 1000000), SONAR_OK);
    cr_assert_eq(sonar_store_start_writer(st, 1000000, 1000000), SONAR_ERR_STATE);
    cr_assert_eq(sonar_store_enqueue_register(st, "a", "1.0", "[\"x\"]", "{}", "a1", "http://a",
                                              250, sonar_wall_ms()), SONAR_OK);
    cr_assert_eq(sonar_store_enqueue_register(st, "b", "1.0", NULL, NULL, "b1", NULL, 250, sonar_wall_ms()),
                 SONAR_OK);
    cr_assert_eq(sonar_store_enqueue_register(st, "b", "1.0", NULL, NULL, "b2", NULL, 250, sonar_wall_ms()),
                 SONAR_OK);
    cr_assert_eq(sonar_store_enqueue_leave(st, "b", "b1"), SONAR_OK);
    cr_assert_eq(sonar_store_enqueue_report(st, "c9", "a", "fail", sonar_wall_ms(), "{}"), SONAR_OK);
    sonar_store_sync(st);
    struct loaded l = {0};
    cr_assert_eq(sonar_store_load(st, on_service, on_instance, &l), SONAR_OK);
    cr_assert_eq(l.services, 2);
    cr_assert_eq(l.instances, 2, "a1 and b2; b1 left");
    cr_assert_str_eq(l.deps, "[\"x\"]");
    cr_assert_eq(l.hb, 250);
    char *r = NULL;
    cr_assert_eq(sonar_store_get_report(st, "c9", &r), SONAR_OK);
    free(r);
    sonar_store_close(st);
    /* What the writer applied survives a reopen. */
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    memset(&l, 0, sizeof l);
    cr_assert_eq(sonar_store_load(st, on_service, on_instance, &l), SONAR_OK);
    cr_assert_eq(l.services, 2);
    sonar_store_close(st);
}

Test(store, close_applies_what_is_still_queued)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    cr_assert_eq(sonar_store_start_writer(st, 1000000, 1000000), SONAR_OK);
    for (int i = 0; i < 200; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "c%d", i);
        cr_assert_eq(sonar_store_enqueue_report(st, cid, "a", "pass", sonar_wall_ms() + i, "{}"), SONAR_OK);
    }
    sonar_store_close(st);
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    int64_t n = 0;
    cr_assert_eq(sonar_store_count_reports(st, &n), SONAR_OK);
    cr_assert_eq(n, 200);
    sonar_store_close(st);
}

static int64_t count_of(const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    int64_t n = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
    sqlite3_finalize(q);
    sqlite3_close(db);
    return n;
}

Test(store, the_writer_stores_a_report_with_its_outbox_row_at_lower_priority)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    cr_assert_eq(sonar_store_start_writer(st, 1000000, 1000000), SONAR_OK);
    const char *hdr[] = {"Sonar-Coordinator", "i-1", NULL};
    cr_assert_eq(sonar_store_write_report_event(st, "c1", "x", "pass", sonar_wall_ms(), "{\"n\":1}",
                                                "sonar.report.x", hdr),
                 SONAR_OK, "%s", sonar_last_error());
    /* Waited for: both rows are there when it returns, in one transaction. */
    cr_assert_eq(count_of("SELECT count(*) FROM reports"), 1);
    cr_assert_eq(count_of("SELECT count(*) FROM sonar_outbox"), 1);
    /* A retry's report is neither stored nor published again. */
    cr_assert_eq(sonar_store_write_report_event(st, "c1", "x", "fail", sonar_wall_ms(), "{\"n\":2}",
                                                "sonar.report.x", hdr),
                 SONAR_OK);
    cr_assert_eq(count_of("SELECT count(*) FROM sonar_outbox"), 1);
    char *r = NULL;
    cr_assert_eq(sonar_store_get_report(st, "c1", &r), SONAR_OK);
    cr_assert_str_eq(r, "{\"n\":1}");
    free(r);
    /* Without a subject: the report only. */
    cr_assert_eq(sonar_store_write_report_event(st, "c2", "x", "pass", sonar_wall_ms(), "{}", NULL, NULL),
                 SONAR_OK);
    cr_assert_eq(count_of("SELECT count(*) FROM reports"), 2);
    cr_assert_eq(count_of("SELECT count(*) FROM sonar_outbox"), 1);
    /* A subject the outbox refuses: neither row, and the error says why. */
    cr_assert_eq(sonar_store_write_report_event(st, "c3", "x", "pass", sonar_wall_ms(), "{}", "bad subject",
                                                NULL),
                 SONAR_ERR_INVALID);
    cr_assert_neq(sonar_last_error()[0], '\0');
    cr_assert_eq(count_of("SELECT count(*) FROM reports WHERE change_id = 'c3'"), 0);
    const char *two[] = {"A", "1", "B", "2", NULL};
    cr_assert_eq(sonar_store_write_report_event(st, "c4", "x", "pass", sonar_wall_ms(), "{}", "s.x", two),
                 SONAR_ERR_INVALID);
    errno = 0;
    int mine = getpriority(PRIO_PROCESS, (id_t)gettid());
    int want = mine + SONARD_WRITER_NICE > 19 ? 19 : mine + SONARD_WRITER_NICE;
    cr_assert_eq(test_thread_nice(0, "sonard-store"), want, "the writer runs at lower priority");
    sonar_store_close(st);
    cr_assert_eq(test_thread_nice(0, "sonard-store"), INT_MIN, "the writer stopped");
}

Test(store, without_a_writer_a_report_event_is_written_directly)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    cr_assert_eq(sonar_store_write_report_event(st, "c1", "x", "pass", sonar_wall_ms(), "{}", "sonar.report.x",
                                                NULL),
                 SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(count_of("SELECT count(*) FROM sonar_outbox"), 1);
    sonar_store_close(st);
}

/* What a submitted report event told its callback. */
typedef struct told {
    pthread_mutex_t mu;
    int calls;
    sonar_status status;
    char why[256];
    char thread[16];
} told;

static void on_stored(void *arg, sonar_status status, const char *why)
{
    told *t = arg;
    pthread_mutex_lock(&t->mu);
    t->calls++;
    t->status = status;
    snprintf(t->why, sizeof t->why, "%s", why ? why : "");
    pthread_getname_np(pthread_self(), t->thread, sizeof t->thread);
    pthread_mutex_unlock(&t->mu);
}

static int told_calls(told *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->calls;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Submitted, nobody waits: the callback runs once on the writer thread
 * after the rows are committed; a refused subject is told with its reason. */
Test(store, a_submitted_report_event_is_told_on_the_writer_once_stored)
{
    sonar_store *st;
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    cr_assert_eq(sonar_store_start_writer(st, 1000000, 1000000), SONAR_OK);
    told ok = {.calls = 0}, bad = {.calls = 0};
    pthread_mutex_init(&ok.mu, NULL);
    pthread_mutex_init(&bad.mu, NULL);
    const char *hdr[] = {"Sonar-Coordinator", "i-1", NULL};
    cr_assert_eq(sonar_store_submit_report_event(st, "c1", "x", "pass", sonar_wall_ms(), "{}",
                                                 "sonar.report.x", hdr, on_stored, &ok),
                 SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_store_submit_report_event(st, "c2", "x", "pass", sonar_wall_ms(), "{}",
                                                 "bad subject", NULL, on_stored, &bad),
                 SONAR_OK);
    cr_assert(TEST_WAIT_UNTIL(told_calls(&ok) == 1 && told_calls(&bad) == 1, 10000));
    cr_assert_eq(ok.status, SONAR_OK, "%s", ok.why);
    cr_assert_str_eq(ok.thread, "sonard-store");
    cr_assert_eq(count_of("SELECT count(*) FROM reports WHERE change_id = 'c1'"), 1);
    cr_assert_eq(count_of("SELECT count(*) FROM sonar_outbox"), 1);
    cr_assert_eq(bad.status, SONAR_ERR_INVALID);
    cr_assert(strstr(bad.why, "subject") != NULL, "%s", bad.why);
    cr_assert_eq(count_of("SELECT count(*) FROM reports WHERE change_id = 'c2'"), 0);
    /* Two headers are refused at once: no callback. */
    const char *two[] = {"A", "1", "B", "2", NULL};
    cr_assert_eq(sonar_store_submit_report_event(st, "c3", "x", "pass", sonar_wall_ms(), "{}",
                                                 "s.x", two, on_stored, &bad),
                 SONAR_ERR_INVALID);
    sonar_store_sync(st);
    cr_assert_eq(told_calls(&bad), 1);
    sonar_store_close(st);
    cr_assert_eq(told_calls(&ok), 1, "told once");
    /* Without a writer: applied and told at once, on the caller's thread. */
    cr_assert_eq(sonar_store_open(&st, path), SONAR_OK);
    cr_assert_eq(sonar_store_submit_report_event(st, "c4", "x", "fail", sonar_wall_ms(), "{}",
                                                 "sonar.report.x", NULL, on_stored, &ok),
                 SONAR_OK);
    cr_assert_eq(told_calls(&ok), 2);
    cr_assert_eq(ok.status, SONAR_OK);
    cr_assert_eq(count_of("SELECT count(*) FROM reports WHERE change_id = 'c4'"), 1);
    sonar_store_close(st);
    pthread_mutex_destroy(&ok.mu);
    pthread_mutex_destroy(&bad.mu);
}
