/*
 * sonard --metrics-listen: a real sonard on a real bus serves Prometheus
 * text whose figures follow the announcements it handled.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"
#include "sonar/promtext.h"

static test_natsd natsd;
static natsConnection *nc;
static char dir[256];
static test_proc sonard;

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd));
    cr_assert(test_mkdtemp(dir, sizeof dir, "sdmetrics"));
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
}

static void teardown(void)
{
    test_proc_signal(&sonard, SIGTERM);
    if (!test_proc_wait(&sonard, 10000))
        test_proc_kill(&sonard);
    natsConnection_Destroy(nc);
    test_natsd_destroy(&natsd);
    test_rmtree(dir);
    nats_Close();
}

TestSuite(sonard_metrics, .init = setup, .fini = teardown, .timeout = 60);

static bool get(const char *url, sonar_http_response *out)
{
    sonar_http_request rq = {.url = url, .timeout_ms = 2000};
    return sonar_http_perform(&rq, out) == SONAR_OK;
}

/* GET and parse /metrics: the families (new), or NULL on any failure. */
static sonar_promtext *scrape(const char *url)
{
    sonar_http_response r = {0};
    sonar_promtext *p = NULL;
    sonar_promtext_error err;
    if (get(url, &r) && r.status == 200 &&
        sonar_promtext_parse(&p, r.body, r.body_len, &err) != SONAR_OK) {
        fprintf(stderr, "/metrics line %zu: %s\n", err.line, err.reason);
        p = NULL;
    }
    sonar_http_response_finish(&r);
    return p;
}

static double value(const sonar_promtext *p, const char *family, const char *verdict)
{
    const sonar_promtext_family *f = sonar_promtext_family_find(p, family);
    cr_assert_not_null(f, "no %s", family);
    for (size_t i = 0; i < f->n_samples; i++) {
        const char *v = sonar_promtext_label_get(&f->samples[i], "verdict");
        if (verdict == NULL || (v && strcmp(v, verdict) == 0))
            return f->samples[i].value;
    }
    return -1;
}

Test(sonard_metrics, metrics_follow_the_announcements)
{
    char db[300], listen[64], url[100];
    snprintf(db, sizeof db, "%s/sonard.db", dir);
    int port = test_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(url, sizeof url, "http://%s/metrics", listen);
    const char *argv[] = {test_bin("SONARD_BIN"), "--server", natsd.url, "--db", db,
                          "--metrics-listen", listen, NULL};
    cr_assert(test_proc_start(&sonard, dir, argv, NULL));
    sonar_http_response r = {0};
    cr_assert(TEST_WAIT_UNTIL((sonar_http_response_finish(&r), get(url, &r)), 10000),
              "no /metrics");
    sonar_http_response_finish(&r);

    /* One change with nobody to ask: a pass report at once. */
    natsMsg *reply = NULL;
    const char *change = "{\"type\":\"sonar.change.v1\",\"service\":\"x\",\"version\":\"1.0.0\","
                         "\"address\":\"http://x\",\"timeout_ms\":2000}";
    cr_assert(TEST_WAIT_UNTIL(natsConnection_RequestString(&reply, nc, "sonar.change.x", change,
                                                           2000) == NATS_OK, 10000));
    natsMsg_Destroy(reply);
    /* And one garbage announcement: counted, no report. */
    cr_assert_eq(natsConnection_RequestString(&reply, nc, "sonar.change.x", "garbage", 2000),
                 NATS_OK);
    natsMsg_Destroy(reply);

    cr_assert(get(url, &r));
    cr_assert_eq(r.status, 200);
    const char *type = sonar_http_response_header(&r, "Content-Type");
    cr_assert(type && strstr(type, "version=0.0.4"), "%s", type ? type : "(none)");
    sonar_http_response_finish(&r);
    /* The report is the reply as soon as the gather ends; it is counted
     * just after, on the thread that ended it: scrape until it shows. */
    sonar_promtext *p = NULL;
    bool counted = TEST_WAIT_UNTIL((sonar_promtext_destroy(p), p = scrape(url)) != NULL &&
                                       value(p, "sonard_reports_total", "pass") == 1,
                                   10000);
    cr_assert(counted, "the pass report was never counted");
    cr_assert_eq(value(p, "sonard_changes_total", NULL), 2);
    cr_assert_eq(value(p, "sonard_reports_total", "fail"), 0);
    sonar_promtext_destroy(p);

    snprintf(url, sizeof url, "http://%s/nope", listen);
    cr_assert(get(url, &r));
    cr_assert_eq(r.status, 404);
    sonar_http_response_finish(&r);
}

Test(sonard_metrics, a_bad_listen_flag_stops_sonard_with_a_reason)
{
    char db[300];
    snprintf(db, sizeof db, "%s/sonard.db", dir);
    const char *argv[] = {test_bin("SONARD_BIN"), "--server", natsd.url, "--db", db,
                          "--metrics-listen", "not-an-address", NULL};
    test_proc p;
    int rc = test_proc_run(&p, dir, argv, NULL, 20000);
    cr_assert_neq(rc, 0);
    char *err = test_proc_stderr(&p);
    cr_assert(strstr(err, "not-an-address") != NULL, "%s", err);
    free(err);
}
