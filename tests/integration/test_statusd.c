/*
 * statusd end to end: a real nats-server, the real statusd binary, real
 * HTTP targets (tests/support/httpd.h) and the real chillybin example.
 *
 * Covered: up → down → up of an HTTP target with thresholds produces the
 * right sonar.health.* events (live and in the SONAR_EVENTS stream);
 * scraped metrics land in the query API with their labels plus service and
 * target; the registry (chillybin joins and leaves); config file targets and
 * their validation; API add/remove; every query endpoint's JSON and its 400s;
 * garbage on every subject; statusd's own /metrics; graceful SIGTERM.
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <jansson.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "collector.h"
#include "httpd.h"
#include "natsd.h"
#include "proc.h"
#include "sonar/promtext.h"

static test_natsd natsd;
static char tmpdir[256];
static natsConnection *nc;
static test_proc statusd_proc;
static bool statusd_running;
static test_httpd *web;
static atomic_int health_code = 200;
static atomic_bool health_warn = false;

static void setup(void)
{
    cr_assert(test_mkdtemp(tmpdir, sizeof tmpdir, "statusd"));
    cr_assert(test_natsd_start(&natsd));
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
    atomic_store(&health_code, 200);
    atomic_store(&health_warn, false);
}

static void dump(test_proc *p)
{
    char *err = test_proc_stderr(p);
    fprintf(stderr, "---- statusd stderr ----\n%s\n------------------------\n", err);
    free(err);
}

static void stop_statusd(void)
{
    if (!statusd_running)
        return;
    test_proc_signal(&statusd_proc, SIGTERM);
    bool exited = test_proc_wait(&statusd_proc, 15000);
    statusd_running = false;
    if (!exited || test_proc_exit_code(&statusd_proc) != 0)
        dump(&statusd_proc);
    test_proc_kill(&statusd_proc);
    cr_expect(exited, "statusd did not stop on SIGTERM");
    cr_expect_eq(test_proc_exit_code(&statusd_proc), 0, "statusd exit code after SIGTERM");
}

static void teardown(void)
{
    stop_statusd();
    test_httpd_stop(web);
    web = NULL;
    natsConnection_Destroy(nc);
    nc = NULL;
    test_natsd_destroy(&natsd);
    test_rmtree(tmpdir);
}

/* A request to statusd; the reply body parsed (new), or NULL on no reply. */
static json_t *api(const char *subject, const char *body, natsMsg **out_msg)
{
    natsMsg *m = NULL;
    if (natsConnection_Request(&m, nc, subject, body, (int)strlen(body), 3000) != NATS_OK)
        return NULL;
    json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    if (out_msg != NULL)
        *out_msg = m;
    else
        natsMsg_Destroy(m);
    return doc;
}

static bool statusd_answers(void)
{
    json_t *doc = api("sonar.status.targets", "", NULL);
    bool ok = doc != NULL;
    json_decref(doc);
    return ok;
}

/* Starts statusd with short intervals plus \p extra arguments. */
static void start_statusd(const char *const *extra)
{
    char db[320];
    snprintf(db, sizeof db, "%s/statusd.db", tmpdir);
    const char *argv[32] = {test_bin("SONAR_STATUSD_BIN"), "--server", natsd.url, "--db", db,
                            "--interval", "150ms", "--timeout", "300ms"};
    size_t n = 9;
    for (size_t i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    const char *env[] = {"SONAR_LOG=debug", NULL};
    cr_assert(test_proc_start(&statusd_proc, tmpdir, argv, env));
    statusd_running = true;
    bool up = TEST_WAIT_UNTIL(statusd_answers() || statusd_proc.reaped ||
                                  test_proc_wait(&statusd_proc, 0),
                              15000);
    if (!up || !statusd_answers())
        dump(&statusd_proc);
    cr_assert(up && statusd_answers(), "statusd did not answer sonar.status.targets");
}

static void health_handler(const test_httpd_request *req, test_httpd_reply_t *reply,
                           void *closure)
{
    (void)req;
    (void)closure;
    int code = atomic_load(&health_code);
    if (code == 200 && atomic_load(&health_warn))
        test_httpd_reply(reply, 200, "{\"status\":\"warn\",\"checks\":{\"db:connections\":"
                                     "[{\"status\":\"warn\",\"output\":\"pool at 95%%\"}]}}");
    else
        test_httpd_reply(reply, code, "%s",
                         code == 200 ? "{\"status\":\"pass\"}" : "down for maintenance");
}

static const char *metrics_body =
    "# HELP app_requests_total Requests served.\n"
    "# TYPE app_requests_total counter\n"
    "app_requests_total{code=\"200\",target=\"inner\"} 42\n"
    "app_requests_total{code=\"500\"} 3 1700000000000\n"
    "# TYPE app_temperature gauge\n"
    "app_temperature NaN\n"
    "# TYPE app_latency_seconds histogram\n"
    "app_latency_seconds_bucket{le=\"0.1\"} 1\n"
    "app_latency_seconds_bucket{le=\"+Inf\"} 2\n"
    "app_latency_seconds_sum 0.3\n"
    "app_latency_seconds_count 2\n";

static void start_web(void)
{
    web = test_httpd_start();
    cr_assert_not_null(web);
    test_httpd_handle(web, "GET", "/health", health_handler, NULL);
    test_httpd_route(web, "GET", "/metrics", 200, metrics_body, NULL);
    test_httpd_route(web, "GET", "/broken-metrics", 200, "bad metric{ 1\n", NULL);
}

/* The target named \p name in a targets reply (borrowed), or NULL. */
static json_t *find_target(json_t *doc, const char *name)
{
    json_t *arr = json_object_get(doc, "targets");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *t = json_array_get(arr, i);
        if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0)
            return t;
    }
    return NULL;
}

static bool target_status_is(const char *name, const char *status)
{
    json_t *doc = api("sonar.status.targets", "", NULL);
    json_t *t = find_target(doc, name);
    bool ok = t && strcmp(json_string_value(json_object_get(t, "status")), status) == 0;
    json_decref(doc);
    return ok;
}

static size_t count_samples(const char *body)
{
    json_t *doc = api("sonar.status.metrics", body, NULL);
    size_t n = json_array_size(json_object_get(doc, "samples"));
    json_decref(doc);
    return n;
}

/* Asserts a 400 sonar.error.v1 (body and headers) for \p body on \p subject. */
static void expect_400(const char *subject, const char *body, const char *reason)
{
    natsMsg *m = NULL;
    json_t *doc = api(subject, body, &m);
    cr_assert_not_null(doc, "%s %s: no JSON reply", subject, body);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "type")), "sonar.error.v1",
                     "%s %s", subject, body);
    cr_expect_eq(json_integer_value(json_object_get(doc, "code")), 400, "%s %s", subject, body);
    const char *msg = json_string_value(json_object_get(doc, "message"));
    cr_expect(msg && strstr(msg, reason), "%s %s: message \"%s\" lacks \"%s\"", subject, body,
              msg ? msg : "(none)", reason);
    const char *code = NULL;
    cr_expect_eq(natsMsgHeader_Get(m, "Nats-Service-Error-Code", &code), NATS_OK);
    cr_expect_str_eq(code ? code : "", "400");
    natsMsg_Destroy(m);
    json_decref(doc);
}

/* GET http://<listen>/metrics (new string); asserts a 200. */
static char *own_metrics(const char *listen)
{
    char url[128];
    snprintf(url, sizeof url, "http://%s/metrics", listen);
    CURL *curl = curl_easy_init();
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, mem);
    CURLcode rc = curl_easy_perform(curl);
    long code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(curl);
    fclose(mem);
    cr_assert_eq(rc, CURLE_OK);
    cr_assert_eq(code, 200);
    return buf;
}

/* Value of the unlabelled sample \p name in statusd's /metrics, or -1. */
static double own_metric(const char *listen, const char *name)
{
    char *text = own_metrics(listen);
    sonar_promtext *parsed = NULL;
    double v = -1;
    if (sonar_promtext_parse(&parsed, text, strlen(text), NULL) == SONAR_OK) {
        const sonar_promtext_family *f = sonar_promtext_family_find(parsed, name);
        if (f != NULL && f->n_samples == 1)
            v = f->samples[0].value;
    }
    sonar_promtext_destroy(parsed);
    free(text);
    return v;
}

TestSuite(statusd, .init = setup, .fini = teardown, .timeout = 120);

Test(statusd, retention_prunes_old_checks_and_keeps_the_status)
{
    start_web();
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", test_free_port());
    const char *extra[] = {"--retention", "1s", "--listen", listen, NULL};
    start_statusd(extra);
    char body[512];
    snprintf(body, sizeof body,
             "{\"name\":\"old\",\"health\":\"%s/health\",\"interval_ms\":100}",
             test_httpd_url(web));
    json_decref(api("sonar.status.targets.add", body, NULL));
    cr_assert(TEST_WAIT_UNTIL(own_metric(listen, "statusd_pruned_rows_total") > 0, 15000),
              "nothing was pruned");
    /* what is left is at most about a retention period of checks (10 per second) */
    json_t *doc = api("sonar.status.checks", "{\"service\":\"old\",\"limit\":1000}", NULL);
    size_t left = json_array_size(json_object_get(doc, "checks"));
    json_decref(doc);
    cr_expect_lt(left, 40, "%zu checks left with a 1 s retention", left);
    cr_expect(target_status_is("old", "passing"));
}

Test(statusd, http_target_up_down_up_gives_thresholded_transitions_and_events)
{
    start_web();
    test_collector *events = test_collector_create(nc, "sonar.health.*");
    cr_assert_not_null(events);
    start_statusd(NULL);
    char body[512];
    snprintf(body, sizeof body,
             "{\"name\":\"web\",\"service\":\"websvc\",\"health\":\"%s/health\","
             "\"interval_ms\":100,\"timeout_ms\":500,\"failure_threshold\":3,"
             "\"success_threshold\":2}",
             test_httpd_url(web));
    json_t *added = api("sonar.status.targets.add", body, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(added, "source")), "api");
    cr_assert_eq(json_integer_value(json_object_get(added, "interval_ms")), 100);
    json_decref(added);

    /* up: unknown -> passing after success_threshold (2) passing checks */
    cr_assert(test_collector_wait(events, 1, 10000), "no first health event");
    json_t *ev = json_loads(test_collector_data(events, 0), 0, NULL);
    cr_expect_str_eq(test_collector_subject(events, 0), "sonar.health.websvc");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "type")), "sonar.health.v1");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "target")), "web");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "from")), "unknown");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "to")), "passing");
    cr_expect_eq(json_integer_value(json_object_get(ev, "http_code")), 200);
    cr_expect(json_is_null(json_object_get(ev, "error")));
    cr_expect(json_is_string(json_object_get(ev, "time")));
    json_decref(ev);
    int hits_up = test_httpd_hits(web, "GET", "/health");
    cr_expect_geq(hits_up, 2, "passing before success_threshold checks");

    /* down: three failures before critical, one event */
    atomic_store(&health_code, 503);
    int hits_at_down = test_httpd_hits(web, "GET", "/health");
    cr_assert(test_collector_wait(events, 2, 10000), "no critical event");
    cr_expect_geq(test_httpd_hits(web, "GET", "/health") - hits_at_down, 3,
                  "critical before failure_threshold failures");
    ev = json_loads(test_collector_data(events, 1), 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(ev, "from")), "passing");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "to")), "critical");
    cr_expect_eq(json_integer_value(json_object_get(ev, "http_code")), 503);
    cr_expect(json_is_string(json_object_get(ev, "error")));
    json_decref(ev);
    cr_expect(target_status_is("web", "critical"));

    /* up again: back to passing after two successes */
    atomic_store(&health_code, 200);
    cr_assert(test_collector_wait(events, 3, 10000), "no recovery event");
    ev = json_loads(test_collector_data(events, 2), 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(ev, "from")), "critical");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "to")), "passing");
    json_decref(ev);
    cr_expect_eq(test_collector_count(events), 3, "exactly three transitions");

    /* the target says it is degraded: passing -> warning at once, and back */
    atomic_store(&health_warn, true);
    cr_assert(test_collector_wait(events, 4, 10000), "no warning event");
    ev = json_loads(test_collector_data(events, 3), 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(ev, "from")), "passing");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "to")), "warning");
    const char *why = json_string_value(json_object_get(ev, "error"));
    cr_expect(why && strstr(why, "db:connections"), "warning reason: %s", why ? why : "(null)");
    json_decref(ev);
    atomic_store(&health_warn, false);
    cr_assert(test_collector_wait(events, 5, 10000), "no event back to passing");
    ev = json_loads(test_collector_data(events, 4), 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(ev, "from")), "warning");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "to")), "passing");
    json_decref(ev);

    /* the checks are stored, newest first, with code and status */
    json_t *checks = api("sonar.status.checks", "{\"service\":\"websvc\",\"limit\":1000}", NULL);
    json_t *arr = json_object_get(checks, "checks");
    cr_assert_str_eq(json_string_value(json_object_get(checks, "type")), "sonar.status.checks.v1");
    cr_assert_geq(json_array_size(arr), 7);
    bool saw_503 = false;
    const char *prev = NULL;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *c = json_array_get(arr, i);
        cr_expect_str_eq(json_string_value(json_object_get(c, "target")), "web");
        const char *time = json_string_value(json_object_get(c, "time"));
        cr_expect(prev == NULL || strcmp(prev, time) >= 0, "checks newest first");
        prev = time;
        if (json_integer_value(json_object_get(c, "http_code")) == 503) {
            saw_503 = true;
            cr_expect_str_eq(json_string_value(json_object_get(c, "status")), "critical");
        }
    }
    cr_expect(saw_503);
    json_decref(checks);

    /* the events are in the SONAR_EVENTS stream too */
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    bool stored = TEST_WAIT_UNTIL(({
        jsStreamInfo *si = NULL;
        bool three = js_GetStreamInfo(&si, js, "SONAR_EVENTS", NULL, NULL) == NATS_OK &&
                     si->State.Msgs == 5;
        jsStreamInfo_Destroy(si);
        three;
    }), 10000);
    cr_expect(stored, "the five events are not in SONAR_EVENTS");
    jsCtx_Destroy(js);
    test_collector_destroy(events);
}

Test(statusd, config_targets_are_checked_and_scraped_with_labels)
{
    start_web();
    char cfg[320], text[1024], listen[64];
    snprintf(cfg, sizeof cfg, "%s/targets.json", tmpdir);
    snprintf(text, sizeof text,
             "{\"targets\":[{\"name\":\"web\",\"service\":\"websvc\",\"health\":\"%s/health\","
             "\"metrics\":\"%s/metrics\"},"
             "{\"name\":\"broken\",\"health\":\"%s/health\",\"metrics\":\"%s/broken-metrics\"}]}",
             test_httpd_url(web), test_httpd_url(web), test_httpd_url(web), test_httpd_url(web));
    FILE *f = fopen(cfg, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", test_free_port());
    const char *extra[] = {"--config", cfg, "--listen", listen, NULL};
    start_statusd(extra);

    cr_assert(TEST_WAIT_UNTIL(target_status_is("web", "passing"), 10000));
    json_t *doc = api("sonar.status.targets", "", NULL);
    json_t *t = find_target(doc, "web");
    cr_expect_str_eq(json_string_value(json_object_get(t, "source")), "config");
    cr_expect_str_eq(json_string_value(json_object_get(t, "service")), "websvc");
    cr_expect_eq(json_integer_value(json_object_get(t, "interval_ms")), 150);
    cr_expect_eq(json_integer_value(json_object_get(t, "timeout_ms")), 300);
    json_t *last = json_object_get(t, "last_check");
    cr_expect_eq(json_integer_value(json_object_get(last, "http_code")), 200);
    cr_expect_str_eq(json_string_value(json_object_get(last, "status")), "passing");
    json_decref(doc);

    /* scraped samples with their labels plus service and target */
    cr_assert(TEST_WAIT_UNTIL(count_samples("{\"name\":\"app_requests_total\"}") >= 2, 10000));
    doc = api("sonar.status.metrics", "{\"name\":\"app_requests_total\",\"service\":\"websvc\"}",
              NULL);
    cr_assert_str_eq(json_string_value(json_object_get(doc, "type")), "sonar.status.metrics.v1");
    json_t *samples = json_object_get(doc, "samples");
    bool saw200 = false, saw500 = false;
    for (size_t i = 0; i < json_array_size(samples); i++) {
        json_t *s = json_array_get(samples, i);
        json_t *labels = json_object_get(s, "labels");
        cr_expect_str_eq(json_string_value(json_object_get(s, "service")), "websvc");
        cr_expect_str_eq(json_string_value(json_object_get(s, "target")), "web");
        cr_expect_str_eq(json_string_value(json_object_get(labels, "service")), "websvc");
        cr_expect_str_eq(json_string_value(json_object_get(labels, "target")), "web");
        const char *code = json_string_value(json_object_get(labels, "code"));
        if (code && strcmp(code, "200") == 0) {
            saw200 = true;
            cr_expect_eq(json_number_value(json_object_get(s, "value")), 42);
            cr_expect_str_eq(json_string_value(json_object_get(labels, "exported_target")),
                             "inner");
        } else if (code && strcmp(code, "500") == 0) {
            saw500 = true;
            cr_expect_str_eq(json_string_value(json_object_get(s, "time")),
                             "2023-11-14T22:13:20.000Z", "the sample's own timestamp is kept");
        }
    }
    cr_expect(saw200 && saw500);
    json_decref(doc);
    doc = api("sonar.status.metrics", "{\"name\":\"app_temperature\",\"limit\":1}", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(doc, "samples"), 0), "value")),
                     "NaN");
    json_decref(doc);
    cr_expect_gt(count_samples("{\"name\":\"app_latency_seconds_bucket\"}"), 0);
    /* probe samples of the health check */
    cr_expect_gt(count_samples("{\"name\":\"probe_duration_seconds\",\"service\":\"websvc\"}"), 0);
    cr_expect_gt(count_samples("{\"name\":\"probe_http_status_code\",\"service\":\"websvc\"}"), 0);
    /* time range: nothing in the far past */
    cr_expect_eq(count_samples("{\"name\":\"probe_success\",\"from\":1,\"to\":2}"), 0);

    /* the broken exposition is a scrape error with the line, the target still passes */
    cr_assert(TEST_WAIT_UNTIL(({
        json_t *d2 = api("sonar.status.targets", "", NULL);
        json_t *scrape = json_object_get(find_target(d2, "broken"), "last_scrape");
        const char *err = json_string_value(json_object_get(scrape, "error"));
        bool has = err && strstr(err, "line 1");
        json_decref(d2);
        has;
    }), 10000));

    /* config targets cannot be removed through the API */
    expect_400("sonar.status.targets.remove", "{\"name\":\"web\"}", "config");

    /* statusd's own /metrics, parsed by promtext */
    char *buf = own_metrics(listen);
    sonar_promtext *parsed = NULL;
    cr_assert_eq(sonar_promtext_parse(&parsed, buf, strlen(buf), NULL), SONAR_OK, "%s", buf);
    const sonar_promtext_family *fam = sonar_promtext_family_find(parsed, "statusd_checks_total");
    cr_assert_not_null(fam);
    double passing = 0;
    for (size_t i = 0; i < fam->n_samples; i++)
        if (strcmp(sonar_promtext_label_get(&fam->samples[i], "status"), "passing") == 0)
            passing = fam->samples[i].value;
    cr_expect_gt(passing, 0);
    fam = sonar_promtext_family_find(parsed, "statusd_scrape_errors_total");
    cr_assert_not_null(fam);
    cr_expect_gt(fam->samples[0].value, 0);
    cr_expect_not_null(sonar_promtext_family_find(parsed, "statusd_outbox_pending"));
    cr_expect_not_null(sonar_promtext_family_find(parsed, "statusd_targets"));
    sonar_promtext_destroy(parsed);
    free(buf);

    /* with --listen statusd registers its own /health and /metrics: it checks itself */
    cr_expect(TEST_WAIT_UNTIL(
        count_samples("{\"name\":\"statusd_scrapes_total\",\"service\":\"statusd\"}") > 0,
        10000), "statusd did not scrape itself");
    doc = api("sonar.status.targets", "", NULL);
    bool self = false;
    json_t *arr = json_object_get(doc, "targets");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *tg = json_array_get(arr, i);
        const char *h = json_string_value(json_object_get(tg, "health"));
        self = self || (strcmp(json_string_value(json_object_get(tg, "service")), "statusd") == 0 &&
                        h && strstr(h, listen) && strstr(h, "/health"));
    }
    cr_expect(self, "no registry target for statusd's own /health");
    json_decref(doc);
}

Test(statusd, chillybin_joins_is_checked_and_scraped_then_leaves)
{
    start_statusd(NULL);
    char port[16], db[320];
    snprintf(port, sizeof port, "%d", test_free_port());
    snprintf(db, sizeof db, "%s/chillybin.db", tmpdir);
    const char *argv[] = {test_bin("SONAR_CHILLYBIN_BIN"), "--port", port, "--db", db, NULL};
    char env_url[128];
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", natsd.url);
    const char *env[] = {env_url, NULL};
    test_proc cb;
    cr_assert(test_proc_start(&cb, tmpdir, argv, env));

    /* the registration names health and metrics URLs: a registry target */
    bool passing = TEST_WAIT_UNTIL(({
        json_t *doc = api("sonar.status.targets", "", NULL);
        json_t *arr = json_object_get(doc, "targets");
        bool ok = false;
        for (size_t i = 0; i < json_array_size(arr); i++) {
            json_t *t = json_array_get(arr, i);
            const char *svc = json_string_value(json_object_get(t, "service"));
            const char *src = json_string_value(json_object_get(t, "source"));
            const char *st = json_string_value(json_object_get(t, "status"));
            ok = ok || (strcmp(svc, "chillybin") == 0 && strcmp(src, "registry") == 0 &&
                        strcmp(st, "passing") == 0);
        }
        json_decref(doc);
        ok;
    }), 15000);
    if (!passing)
        dump(&statusd_proc);
    cr_assert(passing, "chillybin never became a passing registry target");

    cr_assert(TEST_WAIT_UNTIL(
        count_samples("{\"name\":\"chillybin_stock\",\"service\":\"chillybin\"}") > 0, 10000));
    json_t *doc = api("sonar.status.metrics",
                      "{\"name\":\"chillybin_stock\",\"service\":\"chillybin\",\"limit\":5}", NULL);
    json_t *s = json_array_get(json_object_get(doc, "samples"), 0);
    json_t *labels = json_object_get(s, "labels");
    cr_expect_not_null(json_object_get(labels, "ingredient"));
    cr_expect_str_eq(json_string_value(json_object_get(labels, "service")), "chillybin");
    const char *target = json_string_value(json_object_get(s, "target"));
    cr_expect(target && strncmp(target, "chillybin/", 10) == 0, "target %s", target);
    json_decref(doc);

    /* checks of every service include chillybin's */
    doc = api("sonar.status.checks", "{}", NULL);
    cr_expect_gt(json_array_size(json_object_get(doc, "checks")), 0);
    json_decref(doc);

    /* leaving removes the target */
    test_proc_signal(&cb, SIGTERM);
    cr_expect(test_proc_wait(&cb, 10000));
    test_proc_kill(&cb);
    cr_expect(TEST_WAIT_UNTIL(({
        json_t *d2 = api("sonar.status.targets", "", NULL);
        bool empty = json_array_size(json_object_get(d2, "targets")) == 0;
        json_decref(d2);
        empty;
    }), 10000), "chillybin's target stayed after it left");
}

Test(statusd, api_targets_are_added_listed_removed_and_persisted)
{
    start_web();
    test_collector *events = test_collector_create(nc, "sonar.health.site");
    start_statusd(NULL);
    char body[512];
    snprintf(body, sizeof body,
             "{\"name\":\"site\",\"health\":\"%s/health\",\"metrics\":\"%s/metrics\","
             "\"interval_ms\":200,\"timeout_ms\":100}",
             test_httpd_url(web), test_httpd_url(web));
    json_t *t = api("sonar.status.targets.add", body, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(t, "name")), "site");
    cr_expect_str_eq(json_string_value(json_object_get(t, "service")), "site");
    cr_expect_str_eq(json_string_value(json_object_get(t, "source")), "api");
    cr_expect_eq(json_integer_value(json_object_get(t, "timeout_ms")), 100);
    cr_expect(json_is_string(json_object_get(t, "metrics")));
    json_decref(t);
    cr_assert(TEST_WAIT_UNTIL(target_status_is("site", "passing"), 10000));
    cr_assert(test_collector_wait(events, 1, 10000), "no unknown -> passing event");

    /* the target survives a restart of statusd (kept in its database) */
    stop_statusd();
    start_statusd(NULL);
    json_t *doc = api("sonar.status.targets", "", NULL);
    t = find_target(doc, "site");
    cr_assert_not_null(t, "API target lost across a restart");
    cr_expect_str_eq(json_string_value(json_object_get(t, "source")), "api");
    cr_expect_eq(json_integer_value(json_object_get(t, "interval_ms")), 200);
    cr_expect_str_eq(json_string_value(json_object_get(t, "status")), "passing",
                     "the stored status is resumed");
    json_decref(doc);
    /* after new checks, still the one unknown -> passing event from before the restart */
    int hits = test_httpd_hits(web, "GET", "/health");
    cr_assert(TEST_WAIT_UNTIL(test_httpd_hits(web, "GET", "/health") >= hits + 3, 10000));
    cr_expect_eq(test_collector_count(events), 1, "a restart announced the status again");
    test_collector_destroy(events);

    doc = api("sonar.status.targets.remove", "{\"name\":\"site\"}", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "type")), "sonar.status.removed.v1");
    cr_expect_str_eq(json_string_value(json_object_get(doc, "name")), "site");
    json_decref(doc);
    doc = api("sonar.status.targets", "", NULL);
    cr_expect_null(find_target(doc, "site"));
    json_decref(doc);

    natsMsg *m = NULL;
    doc = api("sonar.status.targets.remove", "{\"name\":\"site\"}", &m);
    cr_expect_eq(json_integer_value(json_object_get(doc, "code")), 404);
    const char *code = NULL;
    natsMsgHeader_Get(m, "Nats-Service-Error-Code", &code);
    cr_expect_str_eq(code ? code : "", "404");
    natsMsg_Destroy(m);
    json_decref(doc);
}

Test(statusd, every_endpoint_answers_400_for_bad_input)
{
    start_statusd(NULL);
    static const char *const subjects[] = {"sonar.status.targets", "sonar.status.checks",
                                           "sonar.status.metrics", "sonar.status.targets.add",
                                           "sonar.status.targets.remove"};
    for (size_t i = 0; i < 5; i++) {
        expect_400(subjects[i], "{not json", "JSON object");
        expect_400(subjects[i], "[1,2]", "JSON object");
        expect_400(subjects[i], "{\"bogus\":1}", "unknown field");
    }
    expect_400("sonar.status.checks", "{\"limit\":0}", "limit");
    expect_400("sonar.status.checks", "{\"limit\":1001}", "limit");
    expect_400("sonar.status.checks", "{\"limit\":\"5\"}", "limit");
    expect_400("sonar.status.checks", "{\"service\":\"no.dots\"}", "service");
    expect_400("sonar.status.metrics", "{\"name\":\"1bad\"}", "metric name");
    expect_400("sonar.status.metrics", "{\"from\":10,\"to\":5}", "after");
    expect_400("sonar.status.metrics", "{\"from\":-1}", "from");
    expect_400("sonar.status.metrics", "{\"limit\":0}", "limit");
    expect_400("sonar.status.targets.add", "{}", "name");
    expect_400("sonar.status.targets.add", "{\"name\":\"x\"}", "health");
    expect_400("sonar.status.targets.add", "{\"name\":\"x\",\"health\":\"ftp://h/\"}", "health");
    expect_400("sonar.status.targets.add", "{\"name\":\"x y\",\"health\":\"http://h/\"}", "name");
    expect_400("sonar.status.targets.add",
               "{\"name\":\"x\",\"health\":\"http://h/\",\"interval_ms\":1}", "interval_ms");
    expect_400("sonar.status.targets.add",
               "{\"name\":\"x\",\"health\":\"http://h/\",\"failure_threshold\":0}",
               "failure_threshold");
    expect_400("sonar.status.targets.add",
               "{\"name\":\"x\",\"health\":\"http://h/\",\"metrics\":\"http:// h\"}", "metrics");
    expect_400("sonar.status.targets.remove", "{}", "name");

    /* and the good forms answer their types */
    json_t *doc = api("sonar.status.checks", "", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "type")), "sonar.status.checks.v1");
    cr_expect(json_is_array(json_object_get(doc, "checks")));
    json_decref(doc);
    doc = api("sonar.status.metrics", "{\"from\":0,\"to\":1}", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "type")), "sonar.status.metrics.v1");
    json_decref(doc);
    doc = api("sonar.status.targets", "{}", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "type")), "sonar.status.targets.v1");
    json_decref(doc);
}

Test(statusd, garbage_on_every_subject_is_survived)
{
    start_statusd(NULL);
    static const char *const subjects[] = {
        "sonar.register.x", "sonar.register.statusd", "sonar.leave.x", "sonar.discover",
        "sonar.status.targets", "sonar.status.checks", "sonar.status.metrics",
        "sonar.status.targets.add", "sonar.status.targets.remove", "$SRV.PING",
        "$SRV.STATS.statusd",
    };
    static const char *const bodies[] = {
        "", "\x01\x02\xff", "null", "{}", "[]", "{\"type\":\"sonar.register.v1\"}",
        "{\"type\":\"sonar.register.v1\",\"service\":\"x\",\"instance\":\"i\",\"version\":\"1\","
        "\"heartbeat_ms\":5000,\"health\":\"gopher://x\"}",
        "{\"type\":\"sonar.leave.v1\",\"service\":\"y\",\"instance\":\"i\"}",
        "{\"name\":{\"deep\":[[[[]]]]}}",
    };
    for (size_t s = 0; s < sizeof subjects / sizeof subjects[0]; s++)
        for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++)
            natsConnection_Publish(nc, subjects[s], bodies[b], (int)strlen(bodies[b]));
    /* a registration for x on the subject of y must not become a target */
    const char *wrong =
        "{\"type\":\"sonar.register.v1\",\"service\":\"x\",\"instance\":\"i\",\"version\":\"1\","
        "\"heartbeat_ms\":5000,\"health\":\"http://127.0.0.1:1/health\"}";
    natsConnection_PublishString(nc, "sonar.register.y", wrong);
    /* a good registration last: once it is a target, everything before was handled */
    const char *good =
        "{\"type\":\"sonar.register.v1\",\"service\":\"z\",\"instance\":\"i\",\"version\":\"1\","
        "\"heartbeat_ms\":5000,\"health\":\"http://127.0.0.1:1/health\"}";
    natsConnection_PublishString(nc, "sonar.register.z", good);
    natsConnection_Flush(nc);
    cr_expect(statusd_answers(), "statusd stopped answering after garbage");
    cr_assert(TEST_WAIT_UNTIL(({
        json_t *d2 = api("sonar.status.targets", "", NULL);
        bool seen = find_target(d2, "z/i") != NULL;
        json_decref(d2);
        seen;
    }), 10000));
    json_t *doc = api("sonar.status.targets", "", NULL);
    cr_expect_eq(json_array_size(json_object_get(doc, "targets")), 1, "garbage made targets");
    json_decref(doc);
    cr_expect(!test_proc_wait(&statusd_proc, 0), "statusd exited");
}

Test(statusd, nats_health_and_stats_of_a_registered_service)
{
    start_statusd(NULL);
    /* statusd itself answers $SRV: register a fake service pointing at it */
    const char *reg =
        "{\"type\":\"sonar.register.v1\",\"service\":\"statusd\",\"instance\":\"fake1\","
        "\"version\":\"1\",\"heartbeat_ms\":5000,\"health\":\"nats\",\"metrics\":\"nats\"}";
    natsConnection_PublishString(nc, "sonar.register.statusd", reg);
    /* fake1 is not a real instance id: the instance-specific ping goes unanswered */
    cr_assert(TEST_WAIT_UNTIL(({
        json_t *doc = api("sonar.status.targets", "", NULL);
        json_t *t = find_target(doc, "statusd/fake1");
        json_t *lc = json_object_get(t, "last_check");
        const char *err = json_string_value(json_object_get(lc, "error"));
        bool seen = err && strstr(err, "$SRV.PING.statusd.fake1");
        json_decref(doc);
        seen;
    }), 10000));
    /* an instance id that is not a subject token falls back to $SRV.PING.<service> */
    const char *reg2 =
        "{\"type\":\"sonar.register.v1\",\"service\":\"statusd\",\"instance\":\"a.b\","
        "\"version\":\"1\",\"heartbeat_ms\":5000,\"health\":\"nats\",\"metrics\":\"nats\"}";
    natsConnection_PublishString(nc, "sonar.register.statusd", reg2);
    cr_assert(TEST_WAIT_UNTIL(target_status_is("statusd/a.b", "passing"), 10000));
    cr_assert(TEST_WAIT_UNTIL(
        count_samples("{\"name\":\"sonar_endpoint_requests_total\",\"service\":\"statusd\"}") > 0,
        10000));
}

Test(statusd, bad_flags_and_config_files_are_refused_clearly)
{
    const char *bin = test_bin("SONAR_STATUSD_BIN");
    char cfg[320];
    snprintf(cfg, sizeof cfg, "%s/bad.json", tmpdir);
    static const struct {
        const char *content, *expect;
    } cases[] = {
        {"{\"targets\":[{\"name\":\"a\",\"health\":\"http://h/\"},"
         "{\"name\":\"b\",\"health\":\"ftp://h\"}]}",
         "$.targets[1].health"},
        {"{\"targets\":[{\"name\":\"a\",\"health\":\"http://h/\"},"
         "{\"name\":\"a\",\"health\":\"http://h/\"}]}",
         "$.targets[1].name"},
        {"{\"targets\":{}}", "$.targets: must be an array"},
        {"{\"target\":[]}", "unknown field"},
        {"{\"targets\":[{\"name\":\"a\",\"health\":\"http://h/\",\"interval_ms\":\"1s\"}]}",
         "$.targets[0].interval_ms"},
        {"{\"targets\": [", "line 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(cfg, "w");
        fputs(cases[i].content, f);
        fclose(f);
        const char *argv[] = {bin, "--server", natsd.url, "--config", cfg, NULL};
        test_proc p;
        cr_expect_eq(test_proc_run(&p, tmpdir, argv, NULL, 10000), 2, "case %zu", i);
        char *err = test_proc_stderr(&p);
        cr_expect(strstr(err, cases[i].expect) && strstr(err, cfg), "case %zu: %s", i, err);
        free(err);
    }
    static const char *const bad[][3] = {
        {"--interval", "soon", "--interval"}, {"--timeout", "0", "--timeout"},
        {"--retention", "-1d", "--retention"}, {"--workers", "0", "--workers"},
        {"--config", "/nonexistent/x.json", "cannot read"}, {"--bogus", "", "unknown"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[] = {bin, "--server", natsd.url, bad[i][0], bad[i][1], NULL};
        test_proc p;
        cr_expect_eq(test_proc_run(&p, tmpdir, argv, NULL, 10000), 2, "%s %s", bad[i][0],
                     bad[i][1]);
        char *err = test_proc_stderr(&p);
        cr_expect(strstr(err, bad[i][2]), "%s: %s", bad[i][0], err);
        free(err);
    }
    const char *help[] = {bin, "--help", NULL};
    test_proc p;
    cr_expect_eq(test_proc_run(&p, tmpdir, help, NULL, 10000), 0);
    char *out = test_proc_stdout(&p);
    cr_expect(strstr(out, "--retention"));
    free(out);
    /* a bad --listen is refused */
    char db[320];
    snprintf(db, sizeof db, "%s/l.db", tmpdir);
    const char *lst[] = {bin, "--server", natsd.url, "--db", db, "--listen", "nowhere", NULL};
    cr_expect_eq(test_proc_run(&p, tmpdir, lst, NULL, 15000), 2);
    char *err = test_proc_stderr(&p);
    cr_expect(strstr(err, "ADDR:PORT"), "%s", err);
    free(err);
}
