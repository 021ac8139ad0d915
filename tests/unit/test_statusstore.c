/*
 * statusd storage: schema migrations, checks and the latest status,
 * metric samples with labels, retention in batches, concurrent writers.
 * Every test works on a SQLite file in its own temp dir.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "natsd.h"
#include "sonar/sonar.h"

static char dir[256];
static char path[300];

static void setup(void)
{
    cr_assert(test_mkdtemp(dir, sizeof dir, "statusstore"));
    snprintf(path, sizeof path, "%s/status.db", dir);
}

static void teardown(void)
{
    test_rmtree(dir);
}

TestSuite(statusstore, .init = setup, .fini = teardown);

static sonar_statusstore *open_store(void)
{
    sonar_statusstore *s = NULL;
    cr_assert_eq(sonar_statusstore_create(&s, path), SONAR_OK, "%s", sonar_last_error());
    return s;
}

/* Runs SQL directly on the file (the store must be closed). */
static void raw_sql(const char *sql)
{
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, &msg), SQLITE_OK, "%s", msg);
    sqlite3_close(db);
}

static sonar_statusstore_check check(const char *service, const char *target,
                                     sonar_health_status st, int64_t at)
{
    bool bad = st == SONAR_HEALTH_CRITICAL;
    return (sonar_statusstore_check){.service = service, .target = target, .observed = st,
                                     .reported = st, .http_code = bad ? 503 : 200,
                                     .duration_ms = 12, .at_ms = at,
                                     .error = bad ? "HTTP 503" : ""};
}

static void add(sonar_statusstore *s, sonar_statusstore_check c)
{
    cr_assert_eq(sonar_statusstore_add_check(s, &c, NULL), SONAR_OK, "%s", sonar_last_error());
}

Test(statusstore, creates_the_schema_and_reopens_it)
{
    sonar_statusstore *s = open_store();
    cr_assert_eq(sonar_statusstore_schema_version(s), SONAR_STATUSSTORE_SCHEMA_VERSION);
    int64_t id = 0;
    sonar_statusstore_check c = check("cheese", "http://h/health", SONAR_HEALTH_PASSING, 1000);
    cr_assert_eq(sonar_statusstore_add_check(s, &c, &id), SONAR_OK);
    cr_assert_gt(id, 0);
    sonar_statusstore_destroy(s);
    s = open_store();
    cr_assert_eq(sonar_statusstore_schema_version(s), SONAR_STATUSSTORE_SCHEMA_VERSION);
    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_checks_for(s, "cheese", 0, &l), SONAR_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_eq(l.items[0].id, id);
    cr_assert_str_eq(l.items[0].target, "http://h/health");
    sonar_statusstore_checks_finish(&l);
    sonar_statusstore_destroy(s);
    sonar_statusstore_destroy(NULL);
}

Test(statusstore, migrates_an_older_file_forward)
{
    sonar_statusstore *s = open_store();
    add(s, check("cheese", "t", SONAR_HEALTH_WARNING, 5));
    sonar_statusstore_destroy(s);
    /* Make it look like a version-1 file: no metric tables yet. */
    raw_sql("DROP TABLE samples; DROP TABLE series; UPDATE schema_version SET version = 1;");
    s = open_store();
    cr_assert_eq(sonar_statusstore_schema_version(s), 2);
    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_latest(s, NULL, &l), SONAR_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_eq(l.items[0].reported, SONAR_HEALTH_WARNING);
    sonar_statusstore_checks_finish(&l);
    sonar_statusstore_sample_in in = {.service = "cheese", .name = "up", .value = 1, .at_ms = 9};
    cr_assert_eq(sonar_statusstore_add_samples(s, &in, 1), SONAR_OK, "%s", sonar_last_error());
    sonar_statusstore_destroy(s);
}

Test(statusstore, refuses_a_file_from_a_newer_build)
{
    sonar_statusstore_destroy(open_store());
    raw_sql("UPDATE schema_version SET version = 99;");
    sonar_statusstore *s = (sonar_statusstore *)&s;
    sonar_statusstore *before = s;
    cr_assert_eq(sonar_statusstore_create(&s, path), SONAR_ERR_VERSION);
    cr_assert_eq(s, before);
    cr_assert(strstr(sonar_last_error(), "99") != NULL, "%s", sonar_last_error());
}

Test(statusstore, refuses_bad_paths)
{
    sonar_statusstore *s = NULL;
    cr_assert_eq(sonar_statusstore_create(&s, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_statusstore_create(&s, ""), SONAR_ERR_INVALID);
    char bad[400];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.db", dir);
    cr_assert_eq(sonar_statusstore_create(&s, bad), SONAR_ERR_DB);
    cr_assert(strstr(sonar_last_error(), bad) != NULL, "%s", sonar_last_error());
    cr_assert_null(s);
}

Test(statusstore, keeps_the_latest_status_per_target)
{
    sonar_statusstore *s = open_store();
    add(s, check("cheese", "http://a/health", SONAR_HEALTH_PASSING, 100));
    add(s, check("cheese", "http://a/health", SONAR_HEALTH_CRITICAL, 300));
    add(s, check("cheese", "http://a/health", SONAR_HEALTH_WARNING, 200)); /* late arrival */
    add(s, check("cheese", "http://b/health", SONAR_HEALTH_PASSING, 150));
    add(s, check("bread", "nats", SONAR_HEALTH_WARNING, 50));

    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_latest(s, NULL, &l), SONAR_OK);
    cr_assert_eq(l.count, 3);
    cr_assert_str_eq(l.items[0].service, "bread");
    cr_assert_str_eq(l.items[1].target, "http://a/health");
    cr_assert_eq(l.items[1].reported, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(l.items[1].at_ms, 300);
    cr_assert_eq(l.items[1].http_code, 503);
    cr_assert_str_eq(l.items[1].error, "HTTP 503");
    cr_assert_str_eq(l.items[2].target, "http://b/health");
    sonar_statusstore_checks_finish(&l);

    cr_assert_eq(sonar_statusstore_latest(s, "bread", &l), SONAR_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_eq(l.items[0].observed, SONAR_HEALTH_WARNING);
    sonar_statusstore_checks_finish(&l);
    cr_assert_eq(sonar_statusstore_latest(s, "bad.name", &l), SONAR_ERR_INVALID);
    sonar_statusstore_destroy(s);
}

Test(statusstore, lists_a_services_checks_newest_first_with_a_limit)
{
    sonar_statusstore *s = open_store();
    for (int i = 0; i < 30; i++)
        add(s, check("cheese", i % 2 ? "t1" : "t2", SONAR_HEALTH_PASSING, 1000 + i));
    add(s, check("other", "t1", SONAR_HEALTH_PASSING, 5000));
    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_checks_for(s, "cheese", 0, &l), SONAR_OK);
    cr_assert_eq(l.count, SONAR_STATUSSTORE_CHECKS_DEFAULT);
    cr_assert_eq(l.items[0].at_ms, 1029);
    cr_assert_eq(l.items[19].at_ms, 1010);
    sonar_statusstore_checks_finish(&l);
    cr_assert_eq(sonar_statusstore_checks_for(s, "cheese", 5, &l), SONAR_OK);
    cr_assert_eq(l.count, 5);
    cr_assert_str_eq(l.items[0].target, "t1");
    sonar_statusstore_checks_finish(&l);
    cr_assert_eq(sonar_statusstore_checks_for(s, "nobody", 5, &l), SONAR_OK);
    cr_assert_eq(l.count, 0);
    sonar_statusstore_checks_finish(&l);
    cr_assert_eq(sonar_statusstore_checks_for(s, "cheese", SONAR_STATUSSTORE_CHECKS_MAX + 1, &l),
                 SONAR_ERR_INVALID);
    cr_assert_eq(sonar_statusstore_checks_for(s, "bad.name", 5, &l), SONAR_ERR_INVALID);
    /* NULL: every service's checks, newest first */
    cr_assert_eq(sonar_statusstore_checks_for(s, NULL, 2, &l), SONAR_OK);
    cr_assert_eq(l.count, 2);
    cr_assert_str_eq(l.items[0].service, "other");
    cr_assert_str_eq(l.items[1].service, "cheese");
    cr_assert_eq(l.items[1].at_ms, 1029);
    sonar_statusstore_checks_finish(&l);
    sonar_statusstore_destroy(s);
}

Test(statusstore, validates_checks_before_storing)
{
    sonar_statusstore *s = open_store();
    sonar_statusstore_check c = check("bad service", "t", SONAR_HEALTH_PASSING, 1);
    cr_assert_eq(sonar_statusstore_add_check(s, &c, NULL), SONAR_ERR_INVALID);
    c = check("ok", "", SONAR_HEALTH_PASSING, 1);
    cr_assert_eq(sonar_statusstore_add_check(s, &c, NULL), SONAR_ERR_INVALID);
    c = check("ok", "t", (sonar_health_status)9, 1);
    cr_assert_eq(sonar_statusstore_add_check(s, &c, NULL), SONAR_ERR_INVALID);
    c = check("ok", "t", SONAR_HEALTH_PASSING, 1);
    c.duration_ms = -1;
    cr_assert_eq(sonar_statusstore_add_check(s, &c, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_statusstore_add_check(s, NULL, NULL), SONAR_ERR_INVALID);
    char longtarget[SONAR_STATUSSTORE_TARGET_MAX + 2];
    memset(longtarget, 'x', sizeof longtarget - 1);
    longtarget[sizeof longtarget - 1] = '\0';
    c = check("ok", longtarget, SONAR_HEALTH_PASSING, 1);
    cr_assert_eq(sonar_statusstore_add_check(s, &c, NULL), SONAR_ERR_INVALID);
    /* Long error text is cut, not refused. */
    char longerr[5000];
    memset(longerr, 'e', sizeof longerr - 1);
    longerr[sizeof longerr - 1] = '\0';
    c = check("ok", "t", SONAR_HEALTH_CRITICAL, 1);
    c.error = longerr;
    cr_assert_eq(sonar_statusstore_add_check(s, &c, NULL), SONAR_OK);
    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_latest(s, NULL, &l), SONAR_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_eq(strlen(l.items[0].error), SONAR_STATUSSTORE_ERROR_MAX);
    sonar_statusstore_checks_finish(&l);
    sonar_statusstore_destroy(s);
}

Test(statusstore, removes_a_target)
{
    sonar_statusstore *s = open_store();
    add(s, check("cheese", "t1", SONAR_HEALTH_PASSING, 1));
    add(s, check("cheese", "t1", SONAR_HEALTH_PASSING, 2));
    add(s, check("cheese", "t2", SONAR_HEALTH_PASSING, 3));
    cr_assert_eq(sonar_statusstore_remove_target(s, "cheese", "t1"), SONAR_OK);
    cr_assert_eq(sonar_statusstore_remove_target(s, "cheese", "t1"), SONAR_ERR_NOT_FOUND);
    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_checks_for(s, "cheese", 0, &l), SONAR_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_str_eq(l.items[0].target, "t2");
    sonar_statusstore_checks_finish(&l);
    cr_assert_eq(sonar_statusstore_latest(s, NULL, &l), SONAR_OK);
    cr_assert_eq(l.count, 1);
    sonar_statusstore_checks_finish(&l);
    sonar_statusstore_destroy(s);
}

static sonar_statusstore_samples query(sonar_statusstore *s, const char *name,
                                       const char *service, int64_t from, int64_t to,
                                       size_t limit)
{
    sonar_statusstore_sample_query q = {.name = name, .service = service, .from_ms = from,
                                        .to_ms = to, .limit = limit};
    sonar_statusstore_samples out;
    cr_assert_eq(sonar_statusstore_query_samples(s, &q, &out), SONAR_OK, "%s",
                 sonar_last_error());
    return out;
}

Test(statusstore, stores_samples_with_canonical_labels_and_special_values)
{
    sonar_statusstore *s = open_store();
    sonar_promtext_label ab[] = {{"b", "2"}, {"a", "x\"y\n"}};
    sonar_promtext_label ba[] = {{"a", "x\"y\n"}, {"b", "2"}};
    sonar_statusstore_sample_in in[] = {
        {.service = "cheese", .name = "temp", .labels = ab, .n_labels = 2, .value = 1.5,
         .at_ms = 100},
        {.service = "cheese", .name = "temp", .labels = ba, .n_labels = 2, .value = NAN,
         .at_ms = 200},
        {.service = "cheese", .name = "temp", .value = INFINITY, .at_ms = 300},
        {.service = "bread", .name = "temp", .value = -INFINITY, .at_ms = 250},
        {.service = "cheese", .name = "other", .value = 7, .at_ms = 260},
    };
    cr_assert_eq(sonar_statusstore_add_samples(s, in, 5), SONAR_OK, "%s", sonar_last_error());

    sonar_statusstore_samples r = query(s, "temp", "cheese", 0, 0, 0);
    cr_assert_eq(r.count, 3);
    cr_assert_eq(r.items[0].at_ms, 300);
    cr_assert(isinf(r.items[0].value) && r.items[0].value > 0);
    cr_assert_str_eq(r.items[0].labels_json, "{}");
    cr_assert(isnan(r.items[1].value));
    cr_assert_str_eq(r.items[1].labels_json, "{\"a\":\"x\\\"y\\n\",\"b\":\"2\"}");
    cr_assert_str_eq(r.items[2].labels_json, r.items[1].labels_json); /* one series */
    cr_assert_eq(r.items[2].value, 1.5);
    cr_assert_str_eq(r.items[2].service, "cheese");
    cr_assert_str_eq(r.items[2].name, "temp");
    sonar_statusstore_samples_finish(&r);

    r = query(s, "temp", NULL, 150, 260, 0); /* inclusive range, any service */
    cr_assert_eq(r.count, 2);
    cr_assert_str_eq(r.items[0].service, "bread");
    cr_assert(isinf(r.items[0].value) && r.items[0].value < 0);
    cr_assert_eq(r.items[1].at_ms, 200);
    sonar_statusstore_samples_finish(&r);

    r = query(s, NULL, "cheese", 0, 0, 2);
    cr_assert_eq(r.count, 2);
    cr_assert_eq(r.items[0].at_ms, 300);
    cr_assert_str_eq(r.items[1].name, "other");
    sonar_statusstore_samples_finish(&r);

    sonar_statusstore_sample_query bad = {.from_ms = 10, .to_ms = 5};
    cr_assert_eq(sonar_statusstore_query_samples(s, &bad, &r), SONAR_ERR_INVALID);
    bad = (sonar_statusstore_sample_query){.name = "bad-name"};
    cr_assert_eq(sonar_statusstore_query_samples(s, &bad, &r), SONAR_ERR_INVALID);
    bad = (sonar_statusstore_sample_query){.limit = SONAR_STATUSSTORE_SAMPLES_MAX + 1};
    cr_assert_eq(sonar_statusstore_query_samples(s, &bad, &r), SONAR_ERR_INVALID);
    sonar_statusstore_destroy(s);
}

Test(statusstore, a_bad_sample_stores_nothing_of_its_batch)
{
    sonar_statusstore *s = open_store();
    sonar_promtext_label dup[] = {{"a", "1"}, {"a", "2"}};
    sonar_promtext_label badname[] = {{"a:b", "1"}};
    sonar_promtext_label badutf8[] = {{"a", "caf\xe9"}};
    struct {
        sonar_statusstore_sample_in bad;
        const char *reason;
    } cases[] = {
        {{.service = "cheese", .name = "m", .labels = dup, .n_labels = 2}, "duplicate label"},
        {{.service = "cheese", .name = "m", .labels = badname, .n_labels = 1},
         "invalid label name"},
        {{.service = "cheese", .name = "m", .labels = badutf8, .n_labels = 1}, "not UTF-8"},
        {{.service = "cheese", .name = "9m"}, "invalid metric name"},
        {{.service = "no such", .name = "m"}, "service name"},
        {{.service = "cheese", .name = "m", .n_labels = 1}, "labels missing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sonar_statusstore_sample_in batch[2] = {
            {.service = "cheese", .name = "good", .value = 1, .at_ms = 1}, cases[i].bad};
        cr_assert_eq(sonar_statusstore_add_samples(s, batch, 2), SONAR_ERR_INVALID, "case %zu",
                     i);
        cr_assert(strstr(sonar_last_error(), cases[i].reason) != NULL, "case %zu: %s", i,
                  sonar_last_error());
        cr_assert(strstr(sonar_last_error(), "sample 1") != NULL, "case %zu: %s", i,
                  sonar_last_error());
    }
    sonar_statusstore_samples r = query(s, NULL, NULL, 0, 0, 0);
    cr_assert_eq(r.count, 0);
    sonar_statusstore_samples_finish(&r);
    cr_assert_eq(sonar_statusstore_add_samples(s, NULL, 0), SONAR_OK);
    sonar_statusstore_destroy(s);
}

Test(statusstore, a_check_and_its_samples_are_stored_together_or_not_at_all)
{
    sonar_statusstore *s = open_store();
    sonar_statusstore_check c = check("cheese", "web", SONAR_HEALTH_PASSING, 100);
    sonar_statusstore_sample_in good[] = {
        {.service = "cheese", .name = "probe_duration_seconds", .value = 0.012, .at_ms = 100},
        {.service = "cheese", .name = "probe_http_status_code", .value = 200, .at_ms = 100}};
    int64_t id = 0;
    cr_assert_eq(sonar_statusstore_add_check_with_samples(s, &c, good, 2, &id), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_gt(id, 0);
    sonar_statusstore_samples r = query(s, NULL, NULL, 0, 0, 0);
    cr_assert_eq(r.count, 2);
    sonar_statusstore_samples_finish(&r);

    /* A bad sample: neither the check nor the good sample is stored. */
    sonar_statusstore_check later = check("cheese", "web", SONAR_HEALTH_CRITICAL, 200);
    sonar_statusstore_sample_in bad[] = {
        {.service = "cheese", .name = "probe_duration_seconds", .value = 0.5, .at_ms = 200},
        {.service = "cheese", .name = "9bad", .value = 1, .at_ms = 200}};
    cr_assert_eq(sonar_statusstore_add_check_with_samples(s, &later, bad, 2, NULL),
                 SONAR_ERR_INVALID);
    sonar_statusstore_checks latest;
    cr_assert_eq(sonar_statusstore_latest(s, "cheese", &latest), SONAR_OK);
    cr_assert_eq(latest.count, 1);
    cr_assert_eq(latest.items[0].at_ms, 100, "the refused check replaced the latest");
    sonar_statusstore_checks_finish(&latest);
    r = query(s, NULL, NULL, 0, 0, 0);
    cr_assert_eq(r.count, 2, "a sample of the refused probe was stored");
    sonar_statusstore_samples_finish(&r);
    sonar_statusstore_destroy(s);
}

Test(statusstore, stores_a_parsed_scrape)
{
    const char *text = "# TYPE rpc_seconds histogram\n"
                       "rpc_seconds_bucket{path=\"/a\",le=\"0.1\"} 2\n"
                       "rpc_seconds_bucket{path=\"/a\",le=\"+Inf\"} 3\n"
                       "rpc_seconds_sum{path=\"/a\"} 0.5\n"
                       "rpc_seconds_count{path=\"/a\"} 3\n"
                       "up 1 12345\n";
    sonar_promtext *p = NULL;
    cr_assert_eq(sonar_promtext_parse(&p, text, strlen(text), NULL), SONAR_OK);
    sonar_statusstore *s = open_store();
    size_t count = 0;
    cr_assert_eq(sonar_statusstore_add_promtext(s, "cheese", 50000, p, &count), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_eq(count, 5);
    sonar_statusstore_samples r = query(s, "rpc_seconds_bucket", "cheese", 0, 0, 0);
    cr_assert_eq(r.count, 2);
    cr_assert_eq(r.items[0].at_ms, 50000);
    cr_assert_str_eq(r.items[0].labels_json, "{\"le\":\"+Inf\",\"path\":\"/a\"}");
    cr_assert_eq(r.items[0].value, 3);
    sonar_statusstore_samples_finish(&r);
    r = query(s, "up", NULL, 0, 0, 0);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.items[0].at_ms, 12345); /* the sample's own timestamp */
    sonar_statusstore_samples_finish(&r);
    cr_assert_eq(sonar_statusstore_add_promtext(s, "bad name", 1, p, NULL), SONAR_ERR_INVALID);
    sonar_promtext_destroy(p);
    sonar_statusstore_destroy(s);
}

Test(statusstore, prunes_old_rows_in_batches_and_keeps_the_latest)
{
    sonar_statusstore *s = open_store();
    for (int i = 0; i < 1234; i++)
        add(s, check("cheese", "old", SONAR_HEALTH_PASSING, 1000 + i));
    for (int i = 0; i < 10; i++)
        add(s, check("cheese", "new", SONAR_HEALTH_PASSING, 100000 + i));
    sonar_statusstore_sample_in in[300];
    sonar_promtext_label lab[300];
    char vals[300][8];
    for (int i = 0; i < 300; i++) {
        snprintf(vals[i], sizeof vals[i], "%d", i);
        lab[i] = (sonar_promtext_label){"i", vals[i]};
        /* 250 old samples in 250 series, 50 new ones in series of their own */
        in[i] = (sonar_statusstore_sample_in){.service = "cheese", .name = "m", .labels = &lab[i],
                                              .n_labels = 1, .value = i,
                                              .at_ms = i < 250 ? 2000 : 200000};
    }
    cr_assert_eq(sonar_statusstore_add_samples(s, in, 300), SONAR_OK);

    sonar_statusstore_pruned p;
    cr_assert_eq(sonar_statusstore_prune(s, 50000, 100, &p), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(p.checks, 1234);
    cr_assert_eq(p.samples, 250);
    cr_assert_eq(p.series, 250);
    cr_assert_eq(p.batches, 13 + 3 + 3); /* ceil-ish: 12 full + 1 partial, 2+1, 2+1 */

    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_latest(s, "cheese", &l), SONAR_OK);
    cr_assert_eq(l.count, 2); /* "old" keeps its latest status */
    cr_assert_str_eq(l.items[1].target, "old");
    cr_assert_eq(l.items[1].at_ms, 1000 + 1233);
    sonar_statusstore_checks_finish(&l);
    cr_assert_eq(sonar_statusstore_checks_for(s, "cheese", 100, &l), SONAR_OK);
    cr_assert_eq(l.count, 10);
    sonar_statusstore_checks_finish(&l);
    sonar_statusstore_samples r = query(s, "m", NULL, 0, 0, 0);
    cr_assert_eq(r.count, 50);
    sonar_statusstore_samples_finish(&r);

    /* Nothing left to prune: one batch per table, nothing deleted. */
    cr_assert_eq(sonar_statusstore_prune(s, 50000, 0, &p), SONAR_OK);
    cr_assert_eq(p.checks + p.samples + p.series, 0);
    cr_assert_eq(p.batches, 3);
    sonar_statusstore_destroy(s);
}

typedef struct writer {
    sonar_statusstore *s;
    const char *target;
    int ok;
} writer;

static void *write_checks(void *arg)
{
    writer *w = arg;
    for (int i = 0; i < 200; i++) {
        sonar_statusstore_check c = check("cheese", w->target, SONAR_HEALTH_PASSING, i);
        if (sonar_statusstore_add_check(w->s, &c, NULL) == SONAR_OK)
            w->ok++;
    }
    return NULL;
}

Test(statusstore, concurrent_writers_share_one_handle)
{
    sonar_statusstore *s = open_store();
    writer a = {.s = s, .target = "a"}, b = {.s = s, .target = "b"};
    pthread_t ta, tb;
    cr_assert_eq(pthread_create(&ta, NULL, write_checks, &a), 0);
    cr_assert_eq(pthread_create(&tb, NULL, write_checks, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert_eq(a.ok, 200);
    cr_assert_eq(b.ok, 200);
    sonar_statusstore_checks l;
    cr_assert_eq(sonar_statusstore_checks_for(s, "cheese", 1000, &l), SONAR_OK);
    cr_assert_eq(l.count, 400);
    sonar_statusstore_checks_finish(&l);
    sonar_statusstore_destroy(s);
}
