/* sonar_http_*: transfers against a real local HTTP server (libmicrohttpd). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "natsd.h"
#include "sonar/sonar.h"

static test_httpd *srv;

static void setup(void)
{
    srv = test_httpd_start();
    cr_assert_not_null(srv, "test HTTP server did not start");
}

static void teardown(void)
{
    test_httpd_stop(srv);
    srv = NULL;
}

static char *url_of(const char *path)
{
    char *url = NULL;
    cr_assert_eq(sonar_http_join(&url, test_httpd_url(srv), path), SONAR_OK);
    return url;
}

TestSuite(http, .init = setup, .fini = teardown, .timeout = 60);

Test(http, get_returns_status_body_and_headers)
{
    const char *hdrs[] = {"Content-Type", "application/json", "X-Stock", "7", NULL};
    test_httpd_route(srv, "GET", "/stock", 200, "{\"stock\":7}", hdrs);
    char *url = url_of("/stock");
    sonar_http_request req = {.url = url, .timeout_ms = 5000};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(resp.status, 200);
    cr_assert_str_eq(resp.body, "{\"stock\":7}");
    cr_assert_eq(resp.body_len, strlen("{\"stock\":7}"));
    cr_assert_str_eq(sonar_http_response_header(&resp, "content-type"), "application/json");
    cr_assert_str_eq(sonar_http_response_header(&resp, "X-STOCK"), "7");
    cr_assert_null(sonar_http_response_header(&resp, "X-Missing"));
    cr_assert_geq(resp.duration_ms, 0);
    sonar_http_response_finish(&resp);
    cr_assert_null(resp.body);
    cr_assert_eq(resp.n_headers, 0);
    free(url);
}

Test(http, any_status_is_a_completed_transfer)
{
    test_httpd_route(srv, "GET", "/gone", 404, "nope", NULL);
    char *url = url_of("/gone");
    sonar_http_request req = {.url = url};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_OK);
    cr_assert_eq(resp.status, 404);
    cr_assert_str_eq(resp.body, "nope");
    sonar_http_response_finish(&resp);
    free(url);
}

static void echo(const test_httpd_request *req, test_httpd_reply_t *reply, void *closure)
{
    (void)closure;
    const char *ct = test_httpd_header(req, "Content-Type");
    const char *tag = test_httpd_header(req, "X-Tag");
    const char *name = test_httpd_query(req, "name");
    test_httpd_reply(reply, 201, "%s|%s|%s|%s|%s", req->method, ct ? ct : "-", tag ? tag : "-",
                     name ? name : "-", req->body);
    test_httpd_reply_header(reply, "X-Echo", "yes");
}

Test(http, post_sends_method_body_and_headers)
{
    test_httpd_handle(srv, NULL, "/echo", echo, NULL);
    char *url = url_of("/echo?name=cheese");
    const char *headers[] = {"Content-Type: application/json", "X-Tag: t1", NULL};
    const char *body = "{\"qty\":2}";
    sonar_http_request req = {.method = "POST", .url = url, .headers = headers,
                              .body = body, .body_len = strlen(body), .timeout_ms = 5000};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(resp.status, 201);
    cr_assert_str_eq(resp.body, "POST|application/json|t1|cheese|{\"qty\":2}");
    cr_assert_str_eq(sonar_http_response_header(&resp, "X-Echo"), "yes");
    sonar_http_response_finish(&resp);

    req.method = "PUT";
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(resp.body, "PUT|application/json|t1|cheese|{\"qty\":2}");
    sonar_http_response_finish(&resp);

    sonar_http_request del = {.method = "DELETE", .url = url};
    cr_assert_eq(sonar_http_perform(&del, &resp), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(resp.body, "DELETE|-|-|cheese|");
    sonar_http_response_finish(&resp);
    free(url);
}

Test(http, malformed_request_headers_are_refused)
{
    test_httpd_route(srv, "GET", "/x", 200, "x", NULL);
    char *url = url_of("/x");
    const char *headers[] = {"no colon here", NULL};
    sonar_http_request req = {.url = url, .headers = headers};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "no colon here") != NULL);
    cr_assert_eq(test_httpd_hits(srv, "GET", "/x"), 0);
    sonar_http_request nourl = {.url = NULL};
    cr_assert_eq(sonar_http_perform(&nourl, &resp), SONAR_ERR_INVALID);
    cr_assert_null(resp.body);
    free(url);
}

Test(http, connection_refused_names_the_url)
{
    int port = test_free_port();
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);
    sonar_http_request req = {.url = url, .timeout_ms = 5000};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_ERR_HTTP);
    char want[128];
    snprintf(want, sizeof want, "connection refused (%s)", url);
    cr_assert_str_eq(sonar_last_error(), want);
    cr_assert_null(resp.body);
}

Test(http, deadline_is_honoured_for_a_slow_route)
{
    test_httpd_route(srv, "GET", "/slow", 200, "late", NULL);
    test_httpd_delay(srv, "GET", "/slow", 30000);
    char *url = url_of("/slow");
    /* The deadline leaves the server time to take the request even on a
     * loaded machine; the route answers only after 30 s. */
    sonar_http_request req = {.url = url, .deadline_ms = sonar_now_ms() + 2000,
                              .timeout_ms = 60000};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_ERR_TIMEOUT);
    cr_assert(strstr(sonar_last_error(), "timed out after") != NULL, "%s", sonar_last_error());
    cr_assert(strstr(sonar_last_error(), url) != NULL, "%s", sonar_last_error());
    cr_assert_null(resp.body);
    /* It reached the slow route (no connection failure). */
    cr_assert(TEST_WAIT_UNTIL(test_httpd_hits(srv, "GET", "/slow") == 1, 10000));
    free(url);
}

Test(http, relative_timeout_caps_the_transfer)
{
    test_httpd_route(srv, "GET", "/slow", 200, "late", NULL);
    test_httpd_delay(srv, "GET", "/slow", 30000);
    char *url = url_of("/slow");
    sonar_http_request req = {.url = url, .timeout_ms = 150};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_ERR_TIMEOUT);
    cr_assert(strstr(sonar_last_error(), "timed out after 150 ms") != NULL, "%s",
              sonar_last_error());
    free(url);
}

Test(http, a_passed_deadline_sends_nothing)
{
    test_httpd_route(srv, "GET", "/x", 200, "x", NULL);
    char *url = url_of("/x");
    sonar_http_request req = {.url = url, .deadline_ms = sonar_now_ms() - 1};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_ERR_TIMEOUT);
    cr_assert(strstr(sonar_last_error(), url) != NULL);
    cr_assert_eq(test_httpd_hits(srv, "GET", "/x"), 0);
    free(url);
}

Test(http, bodies_over_the_limit_are_refused)
{
    size_t len = SONAR_HTTP_MAX_BODY + 1;
    char *big = malloc(len);
    cr_assert_not_null(big);
    memset(big, 'a', len);
    test_httpd_route_bytes(srv, "GET", "/big", 200, big, len);
    test_httpd_route_bytes(srv, "GET", "/max", 200, big, len - 1);
    free(big);

    char *url = url_of("/big");
    sonar_http_request req = {.url = url, .timeout_ms = 30000};
    sonar_http_response resp = {0};
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_ERR_LIMIT);
    cr_assert(strstr(sonar_last_error(), "8388608") != NULL, "%s", sonar_last_error());
    cr_assert_null(resp.body);
    free(url);

    url = url_of("/max");
    req.url = url;
    cr_assert_eq(sonar_http_perform(&req, &resp), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(resp.body_len, (size_t)SONAR_HTTP_MAX_BODY);
    sonar_http_response_finish(&resp);
    free(url);
}

Test(http, join_puts_exactly_one_slash_between)
{
    char *u = NULL;
    cr_assert_eq(sonar_http_join(&u, "http://h:1/", "/pick"), SONAR_OK);
    cr_assert_str_eq(u, "http://h:1/pick");
    free(u);
    cr_assert_eq(sonar_http_join(&u, "http://h:1", "pick?name=cheese"), SONAR_OK);
    cr_assert_str_eq(u, "http://h:1/pick?name=cheese");
    free(u);
    cr_assert_eq(sonar_http_join(&u, "http://h:1/api//", "//v1/x"), SONAR_OK);
    cr_assert_str_eq(u, "http://h:1/api/v1/x");
    free(u);
    cr_assert_eq(sonar_http_join(&u, "10.0.0.7:8080", "/health"), SONAR_OK);
    cr_assert_str_eq(u, "http://10.0.0.7:8080/health");
    free(u);
    u = NULL;
    cr_assert_eq(sonar_http_join(&u, "", "/x"), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_http_join(&u, NULL, "/x"), SONAR_ERR_INVALID);
    cr_assert_null(u);
}

Test(http, finish_accepts_a_zeroed_response)
{
    sonar_http_response resp = {0};
    sonar_http_response_finish(&resp);
    sonar_http_response_finish(NULL);
    cr_assert_null(resp.body);
    cr_assert_null(sonar_http_response_header(&resp, "x"));
}
