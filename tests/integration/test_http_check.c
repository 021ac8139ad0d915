/*
 * sonar_check_http() inside real checks: a service joined to a real
 * nats-server answers a hand-published check request by requesting a real
 * local HTTP server; the result messages carry the check's message.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "collector.h"
#include "httpd.h"
#include "natsd.h"
#include "sonar/sonar.h"

static test_natsd natsd;
static sonar_bus *bus;
static natsConnection *test_nc;
static test_httpd *srv;

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd), "nats-server did not start");
    sonar_bus_config cfg = {.urls = natsd.url, .name = "http-check-test"};
    cr_assert_eq(sonar_bus_connect(&bus, &cfg), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(natsConnection_ConnectTo(&test_nc, natsd.url), NATS_OK);
    srv = test_httpd_start();
    cr_assert_not_null(srv);
}

static void teardown(void)
{
    test_httpd_stop(srv);
    natsConnection_Destroy(test_nc);
    sonar_bus_destroy(bus);
    test_natsd_destroy(&natsd);
    nats_Close();
}

TestSuite(http_check, .init = setup, .fini = teardown, .timeout = 60);

/* What one check requests and expects (the check's closure). */
typedef struct http_case {
    const char *method, *path, *body;
    long status;
    const char *contains;
    bool keep_response;
    long seen_status; /* with keep_response: the status handed back */
    char seen_body[64];
} http_case;

static sonar_check_status http_check(sonar_check_ctx *ctx, void *closure)
{
    http_case *hc = closure;
    sonar_http_response resp = {0};
    sonar_check_status st = sonar_check_http(ctx, hc->method, hc->path, hc->body, hc->status,
                                             hc->contains, hc->keep_response ? &resp : NULL);
    if (hc->keep_response) {
        hc->seen_status = resp.status;
        snprintf(hc->seen_body, sizeof hc->seen_body, "%s", resp.body ? resp.body : "");
        sonar_http_response_finish(&resp);
    }
    return st;
}

static void publish_check(const char *service, const char *change_id, const char *address,
                          int64_t timeout_ms)
{
    sonar_check_msg m = {.change_id = (char *)change_id, .service = (char *)service,
                         .version = "2.0.0", .address = (char *)address, .timeout_ms = timeout_ms};
    char *json = NULL;
    cr_assert_eq(sonar_check_encode(&m, &json), SONAR_OK, "%s", sonar_last_error());
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.check.%s", service);
    cr_assert_eq(natsConnection_PublishString(test_nc, subject, json), NATS_OK);
    natsConnection_Flush(test_nc);
    free(json);
}

/* Publishes a check of `dep` and returns the one result (caller finishes it). */
static sonar_result_msg check_once(const char *dep, const char *change_id, const char *address,
                                   int64_t timeout_ms)
{
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.result.%s.*", change_id);
    test_collector *results = test_collector_create(test_nc, subject);
    publish_check(dep, change_id, address, timeout_ms);
    cr_assert(test_collector_wait(results, 1, 10000), "no result for %s", change_id);
    sonar_result_msg r = {0};
    const char *data = test_collector_data(results, 0);
    cr_assert_eq(sonar_result_decode(&r, data, strlen(data)), SONAR_OK, "%s", sonar_last_error());
    test_collector_destroy(results);
    return r;
}

static const sonar_check_result *find(const sonar_result_msg *r, const char *name)
{
    for (size_t i = 0; i < r->n_checks; i++)
        if (strcmp(r->checks[i].name, name) == 0)
            return &r->checks[i];
    cr_assert_fail("no check named %s in the result", name);
    return NULL;
}

static sonar_service *join(void)
{
    sonar_service_config cfg = {.name = "jafflr", .version = "1.0.0", .heartbeat_ms = 60000};
    sonar_service *svc = NULL;
    cr_assert_eq(sonar_service_create(&svc, bus, &cfg), SONAR_OK, "%s", sonar_last_error());
    return svc;
}

Test(http_check, messages_name_the_request_and_what_was_wrong)
{
    test_httpd_route(srv, "GET", "/pick", 404, "no cheese", NULL);
    test_httpd_route(srv, "GET", "/health", 200, "starting", NULL);
    test_httpd_route(srv, "GET", "/ready", 200, "ok", NULL);
    test_httpd_route(srv, "POST", "/restock", 201, "{\"stock\":5}", NULL);
    http_case pick = {.path = "/pick?name=cheese", .status = 200};
    http_case health = {.method = "GET", .path = "/health", .status = 200, .contains = "ok"};
    http_case ready = {.path = "/ready", .status = 200, .contains = "ok"};
    http_case restock = {.method = "POST", .path = "/restock", .body = "{\"qty\":5}",
                         .status = 201, .keep_response = true};
    sonar_service *svc = join();
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "pick", http_check, &pick), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "health", http_check, &health), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "ready", http_check, &ready), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "restock", http_check, &restock),
                 SONAR_OK);
    cr_assert_eq(sonar_service_start(svc), SONAR_OK, "%s", sonar_last_error());

    sonar_result_msg r = check_once("chillybin", "c1", test_httpd_url(srv), 5000);
    cr_assert_eq(r.status, SONAR_FAIL);
    cr_assert_eq(r.n_checks, 4);
    cr_assert_eq(find(&r, "pick")->status, SONAR_FAIL);
    cr_assert_str_eq(find(&r, "pick")->message, "GET /pick?name=cheese → 404, expected 200");
    cr_assert_eq(find(&r, "health")->status, SONAR_FAIL);
    cr_assert_str_eq(find(&r, "health")->message, "GET /health: body does not contain \"ok\"");
    cr_assert_eq(find(&r, "ready")->status, SONAR_PASS, "%s", find(&r, "ready")->message);
    cr_assert_eq(find(&r, "restock")->status, SONAR_PASS, "%s", find(&r, "restock")->message);
    cr_assert_eq(restock.seen_status, 201, "the response is handed to the caller");
    cr_assert_str_eq(restock.seen_body, "{\"stock\":5}");
    cr_assert_eq(test_httpd_hits(srv, "POST", "/restock"), 1);
    sonar_result_finish(&r);
    sonar_service_destroy(svc);
}

Test(http_check, connection_refused_names_the_url)
{
    http_case x = {.path = "/x", .status = 200};
    sonar_service *svc = join();
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "x", http_check, &x), SONAR_OK);
    cr_assert_eq(sonar_service_start(svc), SONAR_OK, "%s", sonar_last_error());
    char addr[64], want[128];
    snprintf(addr, sizeof addr, "http://127.0.0.1:%d", test_free_port());
    snprintf(want, sizeof want, "GET /x: connection refused (%s/x)", addr);
    sonar_result_msg r = check_once("chillybin", "c2", addr, 5000);
    cr_assert_eq(r.n_checks, 1);
    cr_assert_eq(r.checks[0].status, SONAR_FAIL);
    cr_assert_str_eq(r.checks[0].message, want);
    sonar_result_finish(&r);
    sonar_service_destroy(svc);
}

Test(http_check, a_slow_candidate_fails_at_the_deadline)
{
    test_httpd_route(srv, "GET", "/slow", 200, "ok", NULL);
    test_httpd_delay(srv, "GET", "/slow", 30000);
    http_case slow = {.path = "/slow", .status = 200};
    sonar_service *svc = join();
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "slow", http_check, &slow), SONAR_OK);
    cr_assert_eq(sonar_service_start(svc), SONAR_OK, "%s", sonar_last_error());
    /* 2 s: room to reach the server on a loaded machine, far below the 30 s. */
    sonar_result_msg r = check_once("chillybin", "c3", test_httpd_url(srv), 2000);
    cr_assert_eq(r.n_checks, 1);
    cr_assert_eq(r.checks[0].status, SONAR_FAIL);
    /* Either the HTTP helper ("GET /slow: timed out after N ms") or the runtime
     * ("timed out after N ms") reports it, whichever notices first. */
    cr_assert(strstr(r.checks[0].message, "timed out after") != NULL, "%s", r.checks[0].message);
    sonar_result_finish(&r);
    sonar_service_destroy(svc);
    cr_assert(TEST_WAIT_UNTIL(test_httpd_hits(srv, "GET", "/slow") == 1, 10000));
}
