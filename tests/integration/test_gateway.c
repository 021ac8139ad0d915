/*
 * sonar-gateway end to end: a real nats-server, the real sonard, fake
 * services, the real gateway binary and a scripted statusd
 * (gateway_env.c). Every API endpoint, its 400s with reasons, 404/405,
 * 503/504 when a backend is missing or silent, the event stream while a
 * change is checked, /metrics as Prometheus text, and SIGTERM.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway_env.h"
#include "sonar/sonar.h"

static gw_env env;

static void setup(void)
{
    gw_env_start(&env);
}

static void teardown(void)
{
    gw_env_stop(&env);
}

TestSuite(gateway, .init = setup, .fini = teardown, .timeout = 120);

static const char *str(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static json_t *entry(json_t *list, const char *key, const char *value)
{
    size_t i;
    json_t *x;
    json_array_foreach(list, i, x) {
        if (strcmp(str(x, key), value) == 0)
            return x;
    }
    return NULL;
}

/* GET path, asserts the status, returns the parsed JSON body (new). */
static json_t *get_json(const char *path, long status)
{
    gw_http h;
    gw_http_do(&env, &h, "GET", path, NULL);
    cr_assert_eq(h.status, status, "GET %s: %ld %s", path, h.status, h.body);
    cr_assert_not_null(h.json, "GET %s: not JSON: %s", path, h.body);
    json_t *doc = json_incref(h.json);
    gw_http_finish(&h);
    return doc;
}

Test(gateway, services_merge_the_registry_with_statusd_health)
{
    json_t *doc = get_json("/api/v1/services", 200);
    json_t *svcs = json_object_get(doc, "services");
    json_t *chilly = entry(svcs, "service", "chillybin");
    json_t *jafflr = entry(svcs, "service", "jafflr");
    json_t *plain = entry(svcs, "service", "plainweb");
    cr_assert_not_null(chilly);
    cr_assert_not_null(jafflr);
    cr_assert_not_null(plain, "a target known only to statusd is listed");
    /* worst of the service's targets: critical and passing give critical */
    cr_assert_str_eq(str(chilly, "health"), "critical");
    cr_assert_eq(json_array_size(json_object_get(chilly, "targets")), 2);
    cr_assert(json_is_true(json_object_get(chilly, "live")));
    cr_assert(json_is_true(json_object_get(chilly, "registered")));
    cr_assert_str_eq(str(jafflr, "health"), "unknown", "no target: unknown");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(jafflr, "depends_on"), 0)),
                     "chillybin");
    cr_assert_str_eq(str(plain, "health"), "passing");
    cr_assert(json_is_false(json_object_get(plain, "registered")));
    cr_assert(json_is_true(json_object_get(json_object_get(doc, "statusd"), "available")));
    cr_assert_not_null(entry(svcs, "service", "sonar-gateway"), "the gateway joined the bus");
    json_decref(doc);

    /* without statusd the registry still answers, health unknown */
    gw_env_statusd_stop(&env);
    doc = get_json("/api/v1/services", 200);
    cr_assert(json_is_false(json_object_get(json_object_get(doc, "statusd"), "available")));
    cr_assert_str_eq(str(entry(json_object_get(doc, "services"), "service", "chillybin"),
                         "health"), "unknown");
    cr_assert(strstr(str(json_object_get(doc, "statusd"), "error"), "statusd") != NULL);
    json_decref(doc);
}

Test(gateway, graph_checks_metrics_and_targets_answer_json)
{
    json_t *g = get_json("/api/v1/graph", 200);
    cr_assert_str_eq(str(g, "type"), "sonar.graph.v1");
    json_t *edge = entry(json_object_get(g, "edges"), "from", "jafflr");
    cr_assert_not_null(edge);
    cr_assert_str_eq(str(edge, "to"), "chillybin");
    json_decref(g);

    json_t *c = get_json("/api/v1/checks?service=jafflr&num=2", 200);
    cr_assert_str_eq(str(c, "type"), "sonar.status.checks.v1");
    cr_assert_eq(json_array_size(json_object_get(c, "checks")), 2, "num became the limit");
    cr_assert_str_eq(str(json_array_get(json_object_get(c, "checks"), 0), "service"), "jafflr");
    json_decref(c);

    /* RFC 3339 with an offset and epoch ms reach statusd as ms */
    json_t *m = get_json("/api/v1/metrics?name=http_requests_total&service=chillybin"
                         "&from=2026-11-23T20:30:00.5%2B02:00&to=1795500000000&limit=7", 200);
    json_t *s = json_array_get(json_object_get(m, "samples"), 0);
    json_t *labels = json_object_get(s, "labels");
    cr_assert_str_eq(str(s, "name"), "http_requests_total");
    cr_assert_str_eq(str(s, "service"), "chillybin");
    cr_assert_str_eq(str(labels, "from"), "1795458600500");
    cr_assert_str_eq(str(labels, "to"), "1795500000000");
    cr_assert_str_eq(str(labels, "limit"), "7");
    cr_assert_str_eq(str(s, "value"), "+Inf");
    json_decref(m);

    json_t *t = get_json("/api/v1/targets", 200);
    cr_assert_eq(json_array_size(json_object_get(t, "targets")), 3);
    json_decref(t);

    gw_http h;
    gw_http_do(&env, &h, "POST", "/api/v1/targets",
               "{\"name\":\"shop\",\"health\":\"http://127.0.0.1:8/health\",\"interval_ms\":1000}");
    cr_assert_eq(h.status, 201, "%s", h.body);
    cr_assert_str_eq(h.location, "/api/v1/targets/shop");
    cr_assert_str_eq(str(h.json, "name"), "shop");
    cr_assert_str_eq(str(h.json, "health"), "http://127.0.0.1:8/health");
    gw_http_finish(&h);
    gw_http_do(&env, &h, "POST", "/api/v1/targets",
               "{\"name\":\"taken\",\"health\":\"http://127.0.0.1:8/\"}");
    cr_assert_eq(h.status, 400, "statusd's 400 passes through");
    cr_assert(strstr(str(h.json, "message"), "exists already") != NULL, "%s", h.body);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "DELETE", "/api/v1/targets/shop", NULL);
    cr_assert_eq(h.status, 200, "%s", h.body);
    cr_assert_str_eq(str(h.json, "type"), "sonar.status.removed.v1");
    gw_http_finish(&h);
    gw_http_do(&env, &h, "DELETE", "/api/v1/targets/ghost", NULL);
    cr_assert_eq(h.status, 404, "%s", h.body);
    cr_assert_eq(json_integer_value(json_object_get(h.json, "code")), 404);
    gw_http_finish(&h);
}

Test(gateway, reports_list_and_fetch_after_a_change)
{
    json_t *rep = gw_env_announce(&env, "gw-r1");
    cr_assert_str_eq(str(rep, "verdict"), "fail");
    /* the gateway answers no check requests and is not expected: it never
     * makes a change incomplete and is not in the report */
    cr_assert_null(entry(json_object_get(rep, "results"), "service", "sonar-gateway"));
    json_decref(rep);

    json_t *all = get_json("/api/v1/reports", 200);
    json_t *r = json_array_get(json_object_get(all, "reports"), 0);
    cr_assert_str_eq(str(r, "change_id"), "gw-r1");
    cr_assert_str_eq(str(r, "verdict"), "fail");
    json_decref(all);

    json_t *one = get_json("/api/v1/reports?service=chillybin&limit=5", 200);
    cr_assert_str_eq(str(one, "service"), "chillybin");
    cr_assert_eq(json_array_size(json_object_get(one, "reports")), 1);
    json_decref(one);
    json_t *none = get_json("/api/v1/reports?service=jafflr", 200);
    cr_assert_eq(json_array_size(json_object_get(none, "reports")), 0);
    json_decref(none);

    json_t *byid = get_json("/api/v1/reports/gw-r1", 200);
    cr_assert_str_eq(str(byid, "type"), "sonar.report.v1");
    json_t *jr = entry(json_object_get(byid, "results"), "service", "jafflr");
    cr_assert_str_eq(str(json_array_get(json_object_get(jr, "checks"), 0), "message"),
                     "GET /pick?name=cheese → 404, expected 200");
    json_decref(byid);

    json_t *missing = get_json("/api/v1/reports/no-such-change", 404);
    cr_assert_eq(json_integer_value(json_object_get(missing, "code")), 404);
    cr_assert(strlen(str(missing, "message")) > 0);
    json_decref(missing);
}

Test(gateway, bad_parameters_get_400_with_the_reason)
{
    static const struct {
        const char *method, *path, *body, *reason;
    } cases[] = {
        {"GET", "/api/v1/checks?num=0", NULL, "\"num\" must be an integer from 1 to 1000"},
        {"GET", "/api/v1/checks?num=1001", NULL, "from 1 to 1000"},
        {"GET", "/api/v1/checks?num=12abc", NULL, "\"num\""},
        {"GET", "/api/v1/checks?service=a.b", NULL, "\"service\" must match"},
        {"GET", "/api/v1/checks?service=", NULL, "\"service\" must match"},
        {"GET", "/api/v1/checks?colour=red", NULL, "unknown parameter \"colour\""},
        {"GET", "/api/v1/checks?num=1&num=2", NULL, "more than once"},
        {"GET", "/api/v1/metrics?from=yesterday", NULL, "\"from\" is not a time"},
        {"GET", "/api/v1/metrics?to=2026-02-30T00:00:00Z", NULL, "\"to\" is not a time"},
        {"GET", "/api/v1/metrics?from=2026-11-23T10:00:00Z&to=2026-11-23T09:00:00Z", NULL,
         "\"from\" is after \"to\""},
        {"GET", "/api/v1/metrics?name=1bad", NULL, "\"name\" must be a metric name"},
        {"GET", "/api/v1/metrics?limit=-1", NULL, "\"limit\""},
        {"GET", "/api/v1/reports?limit=0", NULL, "\"limit\""},
        {"GET", "/api/v1/reports?service=*", NULL, "\"service\" must match"},
        {"GET", "/api/v1/reports/bad.id", NULL, "change id must match"},
        {"GET", "/api/v1/services?x=1", NULL, "unknown parameter \"x\""},
        {"GET", "/api/v1/events?change_id=a%20b", NULL, "\"change_id\" must match"},
        {"POST", "/api/v1/targets", "{", "body is not JSON"},
        {"POST", "/api/v1/targets", "[1]", "must be a JSON object"},
        {"POST", "/api/v1/targets", "{\"health\":\"http://h/\"}", "\"name\" is required"},
        {"POST", "/api/v1/targets", "{\"name\":\"x\",\"health\":\"ftp://h/\"}", "\"health\""},
        {"POST", "/api/v1/targets", "{\"name\":\"x\",\"health\":\"http://h/\",\"port\":1}",
         "unknown field \"port\""},
        {"POST", "/api/v1/targets", "{\"name\":\"x\",\"health\":\"http://h/\",\"interval_ms\":5}",
         "\"interval_ms\""},
        {"POST", "/api/v1/targets", "{\"name\":\"x\",\"health\":\"http://h/\",\"timeout_ms\":\"1s\"}",
         "\"timeout_ms\""},
        {"POST", "/api/v1/targets", "{\"name\":\"x\",\"service\":\"a b\",\"health\":\"http://h/\"}",
         "\"service\""},
        {"DELETE", "/api/v1/targets/a.b", NULL, "target name must match"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gw_http h;
        gw_http_do(&env, &h, cases[i].method, cases[i].path, cases[i].body);
        cr_assert_eq(h.status, 400, "%s %s: %ld %s", cases[i].method, cases[i].path, h.status,
                     h.body);
        cr_assert_eq(json_integer_value(json_object_get(h.json, "code")), 400, "%s", h.body);
        cr_assert(strstr(str(h.json, "message"), cases[i].reason) != NULL,
                  "%s %s: message %s lacks %s", cases[i].method, cases[i].path, h.body,
                  cases[i].reason);
        gw_http_finish(&h);
    }
}

Test(gateway, unknown_paths_are_404_and_wrong_methods_405)
{
    gw_http h;
    gw_http_do(&env, &h, "GET", "/api/v1/nothing", NULL);
    cr_assert_eq(h.status, 404);
    cr_assert_eq(json_integer_value(json_object_get(h.json, "code")), 404);
    gw_http_finish(&h);
    /* client bytes that are not UTF-8 still get a JSON error */
    gw_http_do(&env, &h, "GET", "/%FF%FE", NULL);
    cr_assert_eq(h.status, 404);
    cr_assert_not_null(h.json, "%s", h.body);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "GET", "/api/v1/checks?%FF=1", NULL);
    cr_assert_eq(h.status, 400);
    cr_assert(strstr(str(h.json, "message"), "unknown parameter") != NULL, "%s", h.body);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "DELETE", "/api/v1/services", NULL);
    cr_assert_eq(h.status, 405);
    cr_assert_str_eq(h.allow, "GET");
    gw_http_finish(&h);
    gw_http_do(&env, &h, "PUT", "/api/v1/targets", "{}");
    cr_assert_eq(h.status, 405);
    cr_assert_str_eq(h.allow, "GET, POST");
    cr_assert(strstr(str(h.json, "message"), "PUT") != NULL);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "GET", "/api/v1/targets/x", NULL);
    cr_assert_eq(h.status, 405);
    cr_assert_str_eq(h.allow, "DELETE");
    gw_http_finish(&h);
}

Test(gateway, a_missing_backend_is_503_and_a_silent_one_504)
{
    gw_http h;
    env.statusd_silent = 1;
    gw_http_do(&env, &h, "GET", "/api/v1/checks", NULL);
    cr_assert_eq(h.status, 504, "%s", h.body);
    cr_assert(strstr(str(h.json, "message"), "did not answer") != NULL, "%s", h.body);
    gw_http_finish(&h);
    env.statusd_silent = 0;
    gw_env_statusd_stop(&env);
    gw_http_do(&env, &h, "GET", "/api/v1/checks", NULL);
    cr_assert_eq(h.status, 503, "%s", h.body);
    cr_assert(strstr(str(h.json, "message"), "statusd is not running") != NULL, "%s", h.body);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "POST", "/api/v1/targets", "{\"name\":\"x\",\"health\":\"http://h/\"}");
    cr_assert_eq(h.status, 503, "%s", h.body);
    gw_http_finish(&h);

    test_proc_signal(&env.sonard, SIGTERM);
    cr_assert(test_proc_wait(&env.sonard, 10000));
    const char *paths[] = {"/api/v1/services", "/api/v1/graph", "/api/v1/reports",
                           "/api/v1/reports/abc"};
    for (size_t i = 0; i < 4; i++) {
        gw_http_do(&env, &h, "GET", paths[i], NULL);
        cr_assert_eq(h.status, 503, "%s: %ld %s", paths[i], h.status, h.body);
        cr_assert(strstr(str(h.json, "message"), "sonard is not running") != NULL, "%s", h.body);
        gw_http_finish(&h);
    }
    /* the gateway itself is healthy */
    gw_http_do(&env, &h, "GET", "/health", NULL);
    cr_assert_eq(h.status, 200);
    cr_assert_str_eq(str(h.json, "status"), "pass");
    gw_http_finish(&h);
}

/* Reads the event stream of one change on its own thread until it ends. */
typedef struct stream {
    char path[128];
    gw_http h;
} stream;

static void *read_stream(void *arg)
{
    stream *s = arg;
    gw_http_do(&env, &s->h, "GET", s->path, NULL);
    return NULL;
}

Test(gateway, the_event_stream_delivers_results_while_a_change_is_checked)
{
    stream s = {.path = "/api/v1/events?change_id=gw-live"};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, read_stream, &s), 0);
    cr_assert(TEST_WAIT_UNTIL(gw_env_metric(&env, "sonar_gateway_sse_clients ") == 1, 10000));
    /* garbage on the event subjects is skipped, never forwarded */
    natsConnection_PublishString(env.nc, "sonar.result.gw-live.x", "not json\n\ndata: evil");
    natsConnection_PublishString(env.nc, "sonar.report.chillybin", "[1,2]");
    json_t *rep = gw_env_announce(&env, "gw-live");
    json_decref(rep);
    pthread_join(t, NULL);  /* the stream of one change ends after its report */
    const char *body = s.h.body;
    cr_assert_eq(s.h.status, 200);
    cr_assert_str_eq(s.h.content_type, "text/event-stream");
    cr_assert(strstr(body, "event: gather\ndata: {\"type\":\"sonar.gather.v1\",\"change_id\":\"gw-live\"") != NULL, "%s", body);
    const char *res = strstr(body, "event: result\ndata: {\"type\":\"sonar.result.v1\",\"change_id\":\"gw-live\",\"service\":\"jafflr\"");
    cr_assert_not_null(res, "%s", body);
    cr_assert(strstr(res, "\"status\":\"fail\"") != NULL);
    const char *report = strstr(body, "event: report\ndata: {\"type\":\"sonar.report.v1\"");
    cr_assert_not_null(report, "%s", body);
    cr_assert(res < report, "results arrive before the report");
    cr_assert(strstr(report, "\"verdict\":\"fail\"") != NULL);
    cr_assert_null(strstr(body, "evil"));
    cr_assert_null(strstr(body, "[1,2]"));
    cr_assert_null(strstr(body, "event: register"), "a change's stream carries only that change");
    gw_http_finish(&s.h);

    /* a report that exists already is sent at once, then the stream ends */
    stream late = {.path = "/api/v1/events?change_id=gw-live"};
    read_stream(&late);
    cr_assert(strstr(late.h.body, "event: report\ndata: {\"type\":\"sonar.report.v1\"") != NULL,
              "%s", late.h.body);
    gw_http_finish(&late.h);
    cr_assert(TEST_WAIT_UNTIL(gw_env_metric(&env, "sonar_gateway_sse_clients ") == 0, 10000));
}

Test(gateway, metrics_are_valid_prometheus_text)
{
    json_decref(get_json("/api/v1/services", 200));
    json_decref(get_json("/api/v1/checks?num=0", 400));
    gw_http h;
    gw_http_do(&env, &h, "GET", "/metrics", NULL);
    cr_assert_eq(h.status, 200);
    cr_assert(strstr(h.content_type, "text/plain; version=0.0.4") != NULL, "%s", h.content_type);
    sonar_promtext *p = NULL;
    sonar_promtext_error err;
    cr_assert_eq(sonar_promtext_parse(&p, h.body, strlen(h.body), &err), SONAR_OK,
                 "line %zu: %s\n%s", err.line, err.reason, h.body);
    const sonar_promtext_family *f = sonar_promtext_family_find(p, "sonar_gateway_http_requests_total");
    cr_assert_not_null(f);
    cr_assert_eq(f->type, SONAR_PROMTEXT_COUNTER);
    bool ok200 = false, bad400 = false;
    for (size_t i = 0; i < f->n_samples; i++) {
        const char *route = sonar_promtext_label_get(&f->samples[i], "route");
        const char *code = sonar_promtext_label_get(&f->samples[i], "code");
        if (strcmp(route, "/api/v1/services") == 0 && strcmp(code, "200") == 0 &&
            f->samples[i].value >= 1)
            ok200 = true;
        if (strcmp(route, "/api/v1/checks") == 0 && strcmp(code, "400") == 0 &&
            f->samples[i].value == 1)
            bad400 = true;
    }
    cr_assert(ok200 && bad400, "%s", h.body);
    f = sonar_promtext_family_find(p, "sonar_gateway_http_request_duration_seconds");
    cr_assert_not_null(f);
    cr_assert_eq(f->type, SONAR_PROMTEXT_HISTOGRAM);
    f = sonar_promtext_family_find(p, "sonar_gateway_bus_requests_total");
    cr_assert_not_null(f);
    bool services = false;
    for (size_t i = 0; i < f->n_samples; i++)
        if (strcmp(sonar_promtext_label_get(&f->samples[i], "subject"), "sonar.api.services") == 0)
            services = f->samples[i].value >= 1;
    cr_assert(services, "%s", h.body);
    cr_assert_not_null(sonar_promtext_family_find(p, "sonar_gateway_sse_clients"));
    sonar_promtext_destroy(p);
    gw_http_finish(&h);
}

Test(gateway, serves_the_dashboard_the_openapi_description_and_health)
{
    gw_http h;
    gw_http_do(&env, &h, "GET", "/", NULL);
    cr_assert_eq(h.status, 200);
    cr_assert(strstr(h.content_type, "text/html") != NULL);
    cr_assert(strstr(h.body, "<svg id=\"graph\"") != NULL);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "GET", "/app.js", NULL);
    cr_assert_eq(h.status, 200);
    cr_assert(strstr(h.body, "EventSource") != NULL);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "GET", "/api/v1/openapi.yaml", NULL);
    cr_assert_eq(h.status, 200);
    cr_assert(strncmp(h.body, "openapi: 3.0", 12) == 0, "%.40s", h.body);
    cr_assert(strstr(h.body, "/api/v1/reports/{change_id}:") != NULL);
    gw_http_finish(&h);
    gw_http_do(&env, &h, "GET", "/health", NULL);
    cr_assert_eq(h.status, 200);
    cr_assert_str_eq(str(h.json, "status"), "pass");
    gw_http_finish(&h);
    gw_http_do(&env, &h, "HEAD", "/health", NULL);
    cr_assert_eq(h.status, 200, "HEAD is GET without the body");
    cr_assert_str_eq(h.body, "");
    gw_http_finish(&h);
}

Test(gateway, sigterm_stops_it_gracefully_and_it_leaves_the_bus)
{
    stream s = {.path = "/api/v1/events"};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, read_stream, &s), 0);
    cr_assert(TEST_WAIT_UNTIL(gw_env_metric(&env, "sonar_gateway_sse_clients ") == 1, 10000));
    natsSubscription *leave = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&leave, env.nc, "sonar.leave.sonar-gateway"), NATS_OK);
    natsConnection_Flush(env.nc);
    test_proc_signal(&env.gateway, SIGTERM);
    cr_assert(test_proc_wait(&env.gateway, 10000), "did not stop");
    cr_assert_eq(test_proc_exit_code(&env.gateway), 0);
    pthread_join(t, NULL); /* an open event stream ends with the gateway */
    cr_assert_eq(s.h.status, 200);
    cr_assert(strstr(s.h.body, ": connected") != NULL);
    gw_http_finish(&s.h);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, leave, 5000), NATS_OK, "no sonar.leave");
    natsMsg_Destroy(m);
    natsSubscription_Destroy(leave);
}

Test(gateway, a_slow_event_client_is_dropped_and_never_blocks_the_others)
{
    /* a client that asks for the stream and never reads */
    int port = 0;
    cr_assert_eq(sscanf(env.url, "http://127.0.0.1:%d", &port), 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    const char *req = "GET /api/v1/events HTTP/1.1\r\nHost: test\r\n\r\n";
    cr_assert_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    /* and one that follows a change */
    stream s = {.path = "/api/v1/events?change_id=slow-1"};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, read_stream, &s), 0);
    cr_assert(TEST_WAIT_UNTIL(gw_env_metric(&env, "sonar_gateway_sse_clients ") == 2, 10000));

    /* flood: far more than the socket buffers and the 64-frame queue hold */
    size_t pad = 32 * 1024;
    char *msg = malloc(pad + 128);
    int n = snprintf(msg, 128, "{\"type\":\"sonar.health.v1\",\"service\":\"flood\",\"pad\":\"");
    memset(msg + n, 'x', pad);
    strcpy(msg + n + pad, "\"}");
    for (int i = 0; i < 800; i++)
        cr_assert_eq(natsConnection_PublishString(env.nc, "sonar.health.flood", msg), NATS_OK);
    natsConnection_Flush(env.nc);
    free(msg);
    cr_assert(TEST_WAIT_UNTIL(gw_env_metric(&env, "sonar_gateway_sse_dropped_total ") == 1, 20000),
              "the slow client was not dropped");

    /* the other client still gets its change, and the API still answers */
    json_decref(gw_env_announce(&env, "slow-1"));
    pthread_join(t, NULL);
    cr_assert(strstr(s.h.body, "event: report\ndata: {\"type\":\"sonar.report.v1\"") != NULL,
              "%s", s.h.body);
    cr_assert_null(strstr(s.h.body, "flood"), "a change's stream has no health events");
    gw_http_finish(&s.h);
    json_decref(get_json("/api/v1/graph", 200));
    close(fd);
}
