/*
 * Check tables: running cases against a real local HTTP server
 * (tests/support/httpd.h) and a real NATS responder on a nats-server
 * started by the test. Each expectation kind passes and fails; captures
 * chain steps; the deadline is honoured mid-sequence.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "httpd.h"
#include "natsd.h"
#include "sonar/sonar.h"

static test_httpd *srv;

static void http_setup(void)
{
    srv = test_httpd_start();
    cr_assert_not_null(srv);
}

static void http_teardown(void)
{
    test_httpd_stop(srv);
    srv = NULL;
}

/* Runs case `name` of the inline table against the test server. */
static sonar_checkrun_result run_case_at(const char *table, const char *name,
                                         const sonar_checkrun_target *target)
{
    sonar_checktable *t = NULL;
    cr_assert_eq(sonar_checktable_parse(&t, table, strlen(table), "inline"), SONAR_OK, "%s",
                 sonar_last_error());
    const sonar_checkcase *c = NULL;
    for (size_t i = 0; i < sonar_checktable_case_count(t); i++)
        if (strcmp(sonar_checkcase_name(sonar_checktable_case(t, i)), name) == 0)
            c = sonar_checktable_case(t, i);
    cr_assert_not_null(c, "no case %s", name);
    sonar_checkrun_result res;
    memset(&res, 0xAA, sizeof res);
    cr_assert_eq(sonar_checkrun_case(c, target, &res), SONAR_OK);
    sonar_checktable_destroy(t);
    return res;
}

static sonar_checkrun_result run_case(const char *table, const char *name)
{
    sonar_checkrun_target target = {.address = test_httpd_url(srv),
                                     .deadline_ms = sonar_now_ms() + 10000};
    return run_case_at(table, name, &target);
}

/* A one-step table "svc" -> "chillybin" with the given step JSON. */
static char *one_step(const char *step)
{
    char *table = NULL;
    cr_assert(asprintf(&table, "{\"service\":\"jafflr\",\"checks\":{\"chillybin\":[{\"name\":"
                               "\"c\",\"steps\":[%s]}]}}", step) > 0);
    return table;
}

#define EXPECT_PASS(step)                                                                  \
    do {                                                                                   \
        char *tb_ = one_step(step);                                                        \
        sonar_checkrun_result r_ = run_case(tb_, "c");                                     \
        free(tb_);                                                                         \
        cr_expect(r_.passed, "expected a pass for %s, got: %s", step, r_.message);         \
        cr_expect_str_eq(r_.message, "");                                                  \
    } while (0)

#define EXPECT_FAIL(step, want)                                                            \
    do {                                                                                   \
        char *tb_ = one_step(step);                                                        \
        sonar_checkrun_result r_ = run_case(tb_, "c");                                     \
        free(tb_);                                                                         \
        cr_expect_not(r_.passed, "expected a failure for %s", step);                      \
        cr_expect_str_eq(r_.message, want);                                                \
    } while (0)

TestSuite(checkrun, .init = http_setup, .fini = http_teardown, .timeout = 60);

Test(checkrun, status_expectations)
{
    test_httpd_route(srv, "GET", "/ok", 200, "fine", NULL);
    test_httpd_route(srv, "GET", "/gone", 404, "nope", NULL);
    test_httpd_route(srv, "GET", "/boom", 500, "boom", NULL);
    EXPECT_PASS("{\"http\":{\"path\":\"/ok\"},\"expect\":{\"status\":200}}");
    EXPECT_PASS("{\"http\":{\"path\":\"/ok\"}}");
    EXPECT_PASS("{\"http\":{\"path\":\"/gone\"},\"expect\":{\"status\":[200,404]}}");
    EXPECT_PASS("{\"http\":{\"path\":\"/gone\"},\"expect\":{\"status\":\"4xx\"}}");
    EXPECT_PASS("{\"http\":{\"path\":\"/boom\"},\"expect\":{\"status\":{\"min\":500}}}");
    EXPECT_FAIL("{\"http\":{\"path\":\"/gone\"},\"expect\":{\"status\":200}}",
                "step 1 GET /gone: status 404, expected 200");
    EXPECT_FAIL("{\"http\":{\"path\":\"/boom\"}}", "step 1 GET /boom: status 500, expected 2xx");
    EXPECT_FAIL("{\"http\":{\"path\":\"/boom\"},\"expect\":{\"status\":[200,201]}}",
                "step 1 GET /boom: status 500, expected one of 200, 201");
    EXPECT_FAIL("{\"http\":{\"path\":\"/ok\"},\"expect\":{\"status\":{\"min\":300,\"max\":399}}}",
                "step 1 GET /ok: status 200, expected 300-399");
    EXPECT_FAIL("{\"http\":{\"path\":\"/ok\"},\"expect\":{\"status\":\"5xx\"}}",
                "step 1 GET /ok: status 200, expected 5xx");
}

Test(checkrun, header_expectations)
{
    const char *hdrs[] = {"Content-Type", "application/json; charset=utf-8", "X-Version", "1.4.2",
                          NULL};
    test_httpd_route(srv, "GET", "/h", 200, "{}", hdrs);
    EXPECT_PASS("{\"http\":{\"path\":\"/h\"},\"expect\":{\"headers\":{\"x-version\":\"1.4.2\"}}}");
    EXPECT_PASS("{\"http\":{\"path\":\"/h\"},\"expect\":{\"headers\":{\"Content-Type\":"
                "{\"contains\":\"json\"},\"X-Version\":{\"matches\":\"^1\\\\.[0-9]+\\\\.\"},"
                "\"X-Debug\":{\"exists\":false}}}}");
    EXPECT_FAIL("{\"http\":{\"path\":\"/h\"},\"expect\":{\"headers\":{\"X-Version\":\"2.0.0\"}}}",
                "step 1 GET /h: header X-Version is \"1.4.2\", expected \"2.0.0\"");
    EXPECT_FAIL("{\"http\":{\"path\":\"/h\"},\"expect\":{\"headers\":{\"ETag\":{\"exists\":true}}}}",
                "step 1 GET /h: header ETag missing");
    EXPECT_FAIL("{\"http\":{\"path\":\"/h\"},\"expect\":{\"headers\":{\"Content-Type\":"
                "{\"contains\":\"xml\"}}}}",
                "step 1 GET /h: header Content-Type does not contain \"xml\" (header "
                "Content-Type: \"application/json; charset=utf-8\")");
    EXPECT_FAIL("{\"http\":{\"path\":\"/h\"},\"expect\":{\"headers\":{\"X-Version\":"
                "{\"exists\":false}}}}",
                "step 1 GET /h: header X-Version is present (\"1.4.2\"), expected it absent");
    EXPECT_FAIL("{\"http\":{\"path\":\"/h\"},\"expect\":{\"headers\":{\"X-Version\":"
                "{\"matches\":\"^2\"}}}}",
                "step 1 GET /h: header X-Version does not match /^2/ (header X-Version: \"1.4.2\")");
}

Test(checkrun, body_expectations)
{
    test_httpd_route(srv, "GET", "/health", 200, "status: ok", NULL);
    EXPECT_PASS("{\"http\":{\"path\":\"/health\"},\"expect\":{\"body\":{\"contains\":\"ok\"}}}");
    EXPECT_PASS("{\"http\":{\"path\":\"/health\"},\"expect\":{\"body\":{\"equals\":\"status: ok\","
                "\"matches\":\"^status: (ok|degraded)$\"}}}");
    EXPECT_FAIL("{\"http\":{\"path\":\"/health\"},\"expect\":{\"body\":{\"contains\":\"ready\"}}}",
                "step 1 GET /health: body does not contain \"ready\" (body: \"status: ok\")");
    EXPECT_FAIL("{\"http\":{\"path\":\"/health\"},\"expect\":{\"body\":{\"equals\":\"ok\"}}}",
                "step 1 GET /health: body is \"status: ok\", expected \"ok\"");
    EXPECT_FAIL("{\"http\":{\"path\":\"/health\"},\"expect\":{\"body\":{\"matches\":\"^ok$\"}}}",
                "step 1 GET /health: body does not match /^ok$/ (body: \"status: ok\")");
}

Test(checkrun, messages_are_one_line_of_valid_utf8)
{
    /* 79 ASCII bytes then "é": the 80-byte snippet cuts the character in two. */
    char body[128];
    memset(body, 'a', 79);
    strcpy(body + 79, "\xc3\xa9\nsecond line\xff");
    test_httpd_route(srv, "GET", "/odd", 200, body, NULL);
    char *tb = one_step("{\"http\":{\"path\":\"/odd\"},\"expect\":{\"body\":{\"contains\":"
                        "\"zzz\"}}}");
    sonar_checkrun_result r = run_case(tb, "c");
    free(tb);
    cr_assert_not(r.passed);
    cr_assert_null(strchr(r.message, '\n'), "%s", r.message);
    json_t *s = json_string(r.message);
    cr_assert_not_null(s, "message is not valid UTF-8: %s", r.message);
    json_decref(s);
    cr_assert(strstr(r.message, "aaaa?...\")") != NULL, "%s", r.message);
}

Test(checkrun, json_expectations)
{
    test_httpd_route(srv, "GET", "/j", 200,
                     "{\"stock\":3,\"price\":2.5,\"name\":\"cheese\",\"tags\":[\"dairy\",\"aged\"],"
                     "\"meta\":{\"a\":1},\"gone\":null,\"on\":true}", NULL);
    test_httpd_route(srv, "GET", "/text", 200, "not json", NULL);
    EXPECT_PASS("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":["
                "{\"path\":\"$.stock\",\"equals\":3,\"type\":\"integer\",\"ge\":3,\"le\":3,"
                "\"gt\":2,\"lt\":4},"
                "{\"path\":\"$.price\",\"equals\":2.5,\"type\":\"number\"},"
                "{\"path\":\"$.name\",\"equals\":\"cheese\",\"length\":6,\"matches\":\"^ch\"},"
                "{\"path\":\"$.tags\",\"type\":\"array\",\"length\":2},"
                "{\"path\":\"$.tags[-1]\",\"equals\":\"aged\"},"
                "{\"path\":\"$[\\\"meta\\\"].a\",\"exists\":true},"
                "{\"path\":\"$.meta\",\"equals\":{\"a\":1},\"type\":\"object\",\"length\":1},"
                "{\"path\":\"$.gone\",\"type\":\"null\"},"
                "{\"path\":\"$.on\",\"type\":\"boolean\",\"equals\":true},"
                "{\"path\":\"$.missing\",\"exists\":false}]}}");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.stock\","
                "\"equals\":2}]}}",
                "step 1 GET /j: $.stock is 3, expected 2");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.qty\","
                "\"exists\":true}]}}",
                "step 1 GET /j: $.qty missing");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.stock\","
                "\"exists\":false}]}}",
                "step 1 GET /j: $.stock is 3, expected it absent");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.name\","
                "\"type\":\"number\"}]}}",
                "step 1 GET /j: $.name is a string, expected number");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.tags\","
                "\"length\":3}]}}",
                "step 1 GET /j: $.tags has length 2, expected 3");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.stock\","
                "\"gt\":3}]}}",
                "step 1 GET /j: $.stock is 3, expected > 3");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.price\","
                "\"le\":2}]}}",
                "step 1 GET /j: $.price is 2.5, expected <= 2");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.stock\","
                "\"lt\":1}]}}",
                "step 1 GET /j: $.stock is 3, expected < 1");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.stock\","
                "\"ge\":10}]}}",
                "step 1 GET /j: $.stock is 3, expected >= 10");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.name\","
                "\"matches\":\"^brie$\"}]}}",
                "step 1 GET /j: $.name is \"cheese\", which does not match /^brie$/");
    EXPECT_FAIL("{\"http\":{\"path\":\"/j\"},\"expect\":{\"json\":[{\"path\":\"$.stock\","
                "\"length\":1}]}}",
                "step 1 GET /j: $.stock is 3, which has no length");
    EXPECT_FAIL("{\"http\":{\"path\":\"/text\"},\"expect\":{\"json\":[{\"path\":\"$.a\","
                "\"exists\":true}]}}",
                "step 1 GET /text: body is not JSON (1:3: invalid token near 'not')");
}

Test(checkrun, latency_bound)
{
    test_httpd_route(srv, "GET", "/slowish", 200, "ok", NULL);
    test_httpd_delay(srv, "GET", "/slowish", 150);
    EXPECT_PASS("{\"http\":{\"path\":\"/slowish\"},\"expect\":{\"latency_ms\":5000}}");
    char *tb = one_step("{\"http\":{\"path\":\"/slowish\"},\"expect\":{\"latency_ms\":50}}");
    sonar_checkrun_result r = run_case(tb, "c");
    free(tb);
    cr_assert_not(r.passed);
    cr_assert(strncmp(r.message, "step 1 GET /slowish: took ", 26) == 0, "%s", r.message);
    cr_assert(strstr(r.message, " ms, limit 50 ms") != NULL, "%s", r.message);
}

/* ---- A small stateful inventory: restock, stock, pick (with ETag) ---- */

typedef struct inventory {
    pthread_mutex_t mu;
    int stock;
    int version;
} inventory;

static void inv_restock(const test_httpd_request *req, test_httpd_reply_t *reply, void *cl)
{
    inventory *inv = cl;
    json_t *doc = json_loads(req->body, 0, NULL);
    json_t *name = json_object_get(doc, "name"), *qty = json_object_get(doc, "qty");
    const char *ct = test_httpd_header(req, "Content-Type");
    if (!json_is_string(name) || strcmp(json_string_value(name), "cheese") != 0 ||
        !json_is_integer(qty) || ct == NULL || strcmp(ct, "application/json") != 0) {
        test_httpd_reply(reply, 400, "{\"error\":\"bad restock\"}");
    } else {
        pthread_mutex_lock(&inv->mu);
        inv->stock += (int)json_integer_value(qty);
        inv->version++;
        test_httpd_reply(reply, 201, "{\"stock\":%d}", inv->stock);
        pthread_mutex_unlock(&inv->mu);
    }
    json_decref(doc);
}

/* Only cheese is stocked: answers 404 for anything else and returns false;
 * otherwise locks the inventory and writes its ETag. */
static bool lock_item(inventory *inv, const test_httpd_request *req, test_httpd_reply_t *reply,
                      char *etag, size_t len)
{
    const char *name = test_httpd_query(req, "name");
    if (name == NULL || strcmp(name, "cheese") != 0) {
        test_httpd_reply(reply, 404, "{\"error\":\"unknown item\"}");
        return false;
    }
    pthread_mutex_lock(&inv->mu);
    snprintf(etag, len, "\"v%d\"", inv->version);
    return true;
}

static void inv_stock(const test_httpd_request *req, test_httpd_reply_t *reply, void *cl)
{
    inventory *inv = cl;
    char etag[32];
    if (!lock_item(inv, req, reply, etag, sizeof etag))
        return;
    test_httpd_reply(reply, 200, "{\"name\":\"cheese\",\"stock\":%d}", inv->stock);
    pthread_mutex_unlock(&inv->mu);
    test_httpd_reply_header(reply, "ETag", etag);
    test_httpd_reply_header(reply, "Content-Type", "application/json");
}

static void inv_pick(const test_httpd_request *req, test_httpd_reply_t *reply, void *cl)
{
    inventory *inv = cl;
    const char *match = test_httpd_header(req, "If-Match");
    char etag[32];
    if (!lock_item(inv, req, reply, etag, sizeof etag))
        return;
    if (match != NULL && strcmp(match, etag) != 0) {
        test_httpd_reply(reply, 412, "{\"error\":\"stale\"}");
    } else if (inv->stock == 0) {
        test_httpd_reply(reply, 409, "{\"error\":\"out of stock\"}");
    } else {
        inv->stock--;
        inv->version++;
        test_httpd_reply(reply, 200, "{\"stock\":%d}", inv->stock);
    }
    pthread_mutex_unlock(&inv->mu);
}

static void inv_reset(const test_httpd_request *req, test_httpd_reply_t *reply, void *cl)
{
    (void)req;
    inventory *inv = cl;
    pthread_mutex_lock(&inv->mu);
    inv->stock = 0;
    inv->version++;
    pthread_mutex_unlock(&inv->mu);
    test_httpd_reply(reply, 204, "%s", "");
}

static inventory inv = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void serve_inventory(void)
{
    inv.stock = 0;
    inv.version = 1;
    test_httpd_handle(srv, "POST", "/restock", inv_restock, &inv);
    test_httpd_handle(srv, "GET", "/stock", inv_stock, &inv);
    test_httpd_handle(srv, "POST", "/pick", inv_pick, &inv);
    test_httpd_handle(srv, "DELETE", "/stock", inv_reset, &inv);
}

static const char *const chain_table =
    "{\"service\":\"jafflr\",\"vars\":{\"item\":\"cheese\"},\"checks\":{\"chillybin\":["
    "{\"name\":\"pick lowers stock by one\","
    " \"setup\":[{\"http\":{\"method\":\"POST\",\"path\":\"/restock\","
    "             \"json\":{\"name\":\"{{item}}\",\"qty\":\"{{qty}}\"}},"
    "            \"expect\":{\"status\":201}}],"
    " \"vars\":{\"qty\":5},"
    " \"steps\":["
    "  {\"http\":{\"path\":\"/stock\",\"query\":{\"name\":\"{{item}}\"}},"
    "   \"capture\":{\"stock\":\"$.stock\",\"etag\":{\"header\":\"ETag\"}}},"
    "  {\"http\":{\"method\":\"POST\",\"path\":\"/pick\",\"query\":{\"name\":\"{{item}}\"},"
    "             \"headers\":{\"If-Match\":\"{{etag}}\"}},"
    "   \"expect\":{\"json\":[{\"path\":\"$.stock\",\"equals\":\"{{stock - 1}}\"}]}},"
    "  {\"http\":{\"path\":\"/stock?name={{item}}\"},"
    "   \"expect\":{\"json\":[{\"path\":\"$.stock\",\"equals\":\"{{stock-1}}\","
    "                          \"lt\":\"{{stock}}\"}]}}],"
    " \"teardown\":[{\"http\":{\"method\":\"DELETE\",\"path\":\"/stock\"}}]},"
    "{\"name\":\"pick an unknown item\","
    " \"steps\":[{\"http\":{\"path\":\"/stock\",\"query\":{\"name\":\"cheese\"}}},"
    "           {\"http\":{\"path\":\"/stock\",\"query\":{\"name\":\"cheese\"}}},"
    "           {\"http\":{\"method\":\"POST\",\"path\":\"/pick\",\"query\":{\"name\":\"brie\"}},"
    "            \"expect\":{\"status\":200}},"
    "           {\"http\":{\"path\":\"/never\"}}],"
    " \"teardown\":[{\"http\":{\"method\":\"DELETE\",\"path\":\"/stock\"}}]},"
    "{\"name\":\"setup fails\","
    " \"setup\":[{\"http\":{\"method\":\"POST\",\"path\":\"/restock\",\"json\":{\"qty\":1}},"
    "            \"expect\":{\"status\":201}}],"
    " \"steps\":[{\"http\":{\"path\":\"/never\"}}],"
    " \"teardown\":[{\"http\":{\"method\":\"DELETE\",\"path\":\"/stock\"}}]},"
    "{\"name\":\"capture misses\","
    " \"steps\":[{\"http\":{\"path\":\"/stock\",\"query\":{\"name\":\"cheese\"}},"
    "            \"capture\":{\"n\":\"$.count\"}},"
    "           {\"http\":{\"path\":\"/stock/{{n}}\"}}]}"
    "]}}";

Test(checkrun, captures_chain_steps)
{
    serve_inventory();
    sonar_checkrun_result r = run_case(chain_table, "pick lowers stock by one");
    cr_assert(r.passed, "%s", r.message);
    cr_assert_eq(test_httpd_hits(srv, "POST", "/restock"), 1);
    cr_assert_eq(test_httpd_hits(srv, "POST", "/pick"), 1);
    cr_assert_eq(test_httpd_hits(srv, "GET", "/stock"), 2);
    cr_assert_eq(test_httpd_hits(srv, "DELETE", "/stock"), 1, "teardown ran");
    cr_assert_eq(inv.stock, 0, "teardown emptied the stock");
    cr_assert_geq(r.duration_ms, 0);
}

Test(checkrun, a_failing_step_names_itself_and_teardown_still_runs)
{
    serve_inventory();
    test_httpd_route(srv, "GET", "/never", 200, "", NULL);
    sonar_checkrun_result r = run_case(chain_table, "pick an unknown item");
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message, "step 3 POST /pick?name=brie: status 404, expected 200");
    cr_assert_eq(test_httpd_hits(srv, NULL, "/never"), 0, "steps after a failure are skipped");
    cr_assert_eq(test_httpd_hits(srv, "DELETE", "/stock"), 1, "teardown ran after the failure");
}

Test(checkrun, a_failing_setup_skips_the_steps)
{
    serve_inventory();
    test_httpd_route(srv, "GET", "/never", 200, "", NULL);
    sonar_checkrun_result r = run_case(chain_table, "setup fails");
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message, "setup 1 POST /restock: status 400, expected 201");
    cr_assert_eq(test_httpd_hits(srv, NULL, "/never"), 0);
    cr_assert_eq(test_httpd_hits(srv, "DELETE", "/stock"), 1);
}

Test(checkrun, a_capture_that_finds_nothing_fails_the_step)
{
    serve_inventory();
    sonar_checkrun_result r = run_case(chain_table, "capture misses");
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message,
                     "step 1 GET /stock?name=cheese: capture n: $.count not found in the body");
}

Test(checkrun, a_failing_teardown_fails_a_passing_case)
{
    test_httpd_route(srv, "GET", "/ok", 200, "", NULL);
    test_httpd_route(srv, "POST", "/cleanup", 500, "", NULL);
    const char *table = "{\"service\":\"a\",\"checks\":{\"b\":[{\"name\":\"c\","
                        "\"steps\":[{\"http\":{\"path\":\"/ok\"}}],"
                        "\"teardown\":[{\"http\":{\"method\":\"POST\",\"path\":\"/cleanup\"}}]}]}}";
    sonar_checkrun_result r = run_case(table, "c");
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message, "teardown 1 POST /cleanup: status 500, expected 2xx");
}

static void echo_json(const test_httpd_request *req, test_httpd_reply_t *reply, void *cl)
{
    (void)cl;
    const char *auth = test_httpd_header(req, "Authorization");
    test_httpd_reply(reply, 200, "{\"auth\":\"%s\",\"got\":%s}", auth ? auth : "",
                     req->body_len ? req->body : "null");
}

Test(checkrun, variables_from_the_table_the_case_and_the_environment)
{
    test_httpd_handle(srv, "POST", "/echo", echo_json, NULL);
    setenv("SONAR_CHECKRUN_TOKEN", "s3cret", 1);
    const char *table =
        "{\"service\":\"a\",\"vars\":{\"n\":2,\"who\":\"table\"},\"checks\":{\"b\":["
        "{\"name\":\"c\",\"vars\":{\"who\":\"case\"},\"steps\":[{\"http\":{\"method\":\"POST\","
        " \"path\":\"/echo\",\"headers\":{\"Authorization\":\"Bearer {{env.SONAR_CHECKRUN_TOKEN}}\"},"
        " \"json\":{\"n\":\"{{n}}\",\"m\":\"{{n+3}}\",\"who\":\"{{who}}\",\"s\":\"n={{n}}\"}},"
        " \"expect\":{\"json\":[{\"path\":\"$.auth\",\"equals\":\"Bearer s3cret\"},"
        "  {\"path\":\"$.got\",\"equals\":{\"n\":2,\"m\":5,\"who\":\"case\",\"s\":\"n=2\"}}]}}]},"
        "{\"name\":\"run id\",\"steps\":[{\"http\":{\"method\":\"POST\",\"path\":\"/echo\","
        " \"json\":{\"id\":\"probe-{{run_id}}\"}},"
        " \"expect\":{\"json\":[{\"path\":\"$.got.id\",\"matches\":\"^probe-[a-z0-9]{22}$\"}]},"
        " \"capture\":{\"first\":\"$.got.id\"}},"
        " {\"http\":{\"method\":\"POST\",\"path\":\"/echo\",\"json\":{\"id\":\"probe-{{run_id}}\"}},"
        " \"expect\":{\"json\":[{\"path\":\"$.got.id\",\"equals\":\"{{first}}\"}]}}]},"
        "{\"name\":\"unset\",\"steps\":[{\"http\":{\"method\":\"POST\",\"path\":\"/echo\","
        " \"body\":\"{{env.SONAR_CHECKRUN_UNSET_VAR}}\"}}]}]}}";
    unsetenv("SONAR_CHECKRUN_UNSET_VAR");
    sonar_checkrun_result r = run_case(table, "c");
    cr_assert(r.passed, "%s", r.message);
    r = run_case(table, "unset");
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message,
                     "step 1 POST /echo: environment variable SONAR_CHECKRUN_UNSET_VAR is not set");
    cr_assert_eq(test_httpd_hits(srv, "POST", "/echo"), 1, "nothing sent without the variable");
    /* run_id: a lower-case random id, the same for every step of a run. */
    r = run_case(table, "run id");
    cr_assert(r.passed, "%s", r.message);
}

Test(checkrun, the_deadline_is_honoured_mid_sequence)
{
    test_httpd_route(srv, "GET", "/fast", 200, "", NULL);
    test_httpd_route(srv, "GET", "/slow", 200, "", NULL);
    test_httpd_delay(srv, "GET", "/slow", 30000);
    test_httpd_route(srv, "GET", "/after", 200, "", NULL);
    const char *table = "{\"service\":\"a\",\"checks\":{\"b\":[{\"name\":\"c\",\"steps\":["
                        "{\"http\":{\"path\":\"/fast\"}},{\"http\":{\"path\":\"/slow\"}},"
                        "{\"http\":{\"path\":\"/after\"}}]},"
                        "{\"name\":\"own timeout\",\"timeout_ms\":2000,\"steps\":["
                        "{\"http\":{\"path\":\"/fast\"}},{\"http\":{\"path\":\"/slow\"}}]}]}}";
    /* Limits of 2 s: room for /fast on a loaded machine, far below /slow's 30 s. */
    sonar_checkrun_target target = {.address = test_httpd_url(srv),
                                    .deadline_ms = sonar_now_ms() + 2000};
    sonar_checkrun_result r = run_case_at(table, "c", &target);
    cr_assert_not(r.passed);
    cr_assert(strncmp(r.message, "step 2 GET /slow: timed out after ", 34) == 0, "%s", r.message);
    cr_assert_eq(test_httpd_hits(srv, "GET", "/fast"), 1);
    cr_assert_eq(test_httpd_hits(srv, "GET", "/after"), 0);

    /* The case's own timeout_ms applies when it is the earlier limit. */
    target.deadline_ms = sonar_now_ms() + 60000;
    r = run_case_at(table, "own timeout", &target);
    cr_assert_not(r.passed);
    cr_assert(strncmp(r.message, "step 2 GET /slow: timed out after ", 34) == 0, "%s", r.message);

    /* A deadline already passed: nothing is sent. */
    target.deadline_ms = sonar_now_ms() - 1;
    r = run_case_at(table, "c", &target);
    cr_assert_not(r.passed);
    cr_assert(strncmp(r.message, "step 1 GET /fast: not started: the deadline passed", 50) == 0,
              "%s", r.message);
    cr_assert_eq(test_httpd_hits(srv, "GET", "/fast"), 2);
}

Test(checkrun, connection_refused_is_a_failure_naming_the_url)
{
    int port = test_free_port();
    char addr[64], want[160];
    snprintf(addr, sizeof addr, "http://127.0.0.1:%d", port);
    snprintf(want, sizeof want, "step 1 GET /x: connection refused (%s/x)", addr);
    char *tb = one_step("{\"http\":{\"path\":\"/x\"}}");
    sonar_checkrun_target target = {.address = addr, .deadline_ms = sonar_now_ms() + 5000};
    sonar_checkrun_result r = run_case_at(tb, "c", &target);
    free(tb);
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message, want);
    target.address = NULL;
    tb = one_step("{\"http\":{\"path\":\"/x\"}}");
    r = run_case_at(tb, "c", &target);
    free(tb);
    cr_assert_str_eq(r.message, "step 1 GET /x: no address for chillybin to send HTTP requests to");
}

/* ---- NATS steps against a real responder ---- */

static test_natsd natsd;
static natsConnection *nc;
static natsSubscription *subs[4];

/* Answers msg with body and up to two headers (name NULL: none); frees msg. */
static void reply_with(natsConnection *c, natsMsg *msg, const char *body, const char *h1,
                       const char *v1, const char *h2, const char *v2)
{
    natsMsg *reply = NULL;
    natsMsg_Create(&reply, natsMsg_GetReply(msg), NULL, body, (int)strlen(body));
    if (h1)
        natsMsgHeader_Set(reply, h1, v1);
    if (h2)
        natsMsgHeader_Set(reply, h2, v2);
    natsConnection_PublishMsg(c, reply);
    natsMsg_Destroy(reply);
    natsMsg_Destroy(msg);
}

static void on_catalogue(natsConnection *c, natsSubscription *s, natsMsg *msg, void *cl)
{
    (void)s;
    (void)cl;
    const char *trace = NULL;
    natsMsgHeader_Get(msg, "X-Trace", &trace);
    json_t *req = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    char body[256];
    snprintf(body, sizeof body,
             "{\"items\":[{\"name\":\"cheese\",\"price\":4},{\"name\":\"brie\",\"price\":9}],"
             "\"limit\":%d,\"trace\":\"%s\"}",
             (int)json_integer_value(json_object_get(req, "limit")), trace ? trace : "");
    json_decref(req);
    reply_with(c, msg, body, "Content-Type", "application/json", NULL, NULL);
}

static void on_missing(natsConnection *c, natsSubscription *s, natsMsg *msg, void *cl)
{
    (void)s;
    (void)cl;
    const char *body = "{\"type\":\"sonar.error.v1\",\"code\":404,\"message\":\"no such item\"}";
    reply_with(c, msg, body, "Nats-Service-Error", "no such item", "Nats-Service-Error-Code",
               "404");
}

static void on_silent(natsConnection *c, natsSubscription *s, natsMsg *msg, void *cl)
{
    (void)c;
    (void)s;
    (void)cl;
    natsMsg_Destroy(msg); /* never answers */
}

static void nats_setup(void)
{
    http_setup();
    cr_assert(test_natsd_start(&natsd));
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
    cr_assert_eq(natsConnection_Subscribe(&subs[0], nc, "chillybin.catalogue.list", on_catalogue,
                                          NULL), NATS_OK);
    cr_assert_eq(natsConnection_Subscribe(&subs[1], nc, "chillybin.item.get", on_missing, NULL),
                 NATS_OK);
    cr_assert_eq(natsConnection_Subscribe(&subs[2], nc, "chillybin.silent", on_silent, NULL),
                 NATS_OK);
    cr_assert_eq(natsConnection_Subscribe(&subs[3], nc, "cb-v2.catalogue.list", on_catalogue,
                                          NULL), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
}

static void nats_teardown(void)
{
    for (size_t i = 0; i < 4; i++) {
        natsSubscription_Unsubscribe(subs[i]);
        natsSubscription_Destroy(subs[i]);
        subs[i] = NULL;
    }
    natsConnection_Destroy(nc);
    nc = NULL;
    test_natsd_destroy(&natsd);
    http_teardown();
}

static sonar_checkrun_result run_nats(const char *step, const char *prefix, int64_t budget_ms)
{
    char *tb = one_step(step);
    sonar_checkrun_target target = {.subject_prefix = prefix, .nc = nc,
                                    .deadline_ms = sonar_now_ms() + budget_ms};
    sonar_checkrun_result r = run_case_at(tb, "c", &target);
    free(tb);
    return r;
}

Test(checkrun_nats, requests_go_under_the_candidates_prefix, .init = nats_setup,
     .fini = nats_teardown, .timeout = 60)
{
    const char *step = "{\"nats\":{\"subject\":\"catalogue.list\",\"json\":{\"limit\":10},"
                       "\"headers\":{\"X-Trace\":\"t-1\"}},"
                       "\"expect\":{\"status\":200,\"headers\":{\"Content-Type\":\"application/json\"},"
                       "\"body\":{\"contains\":\"brie\"},"
                       "\"json\":[{\"path\":\"$.items\",\"length\":2},"
                       "{\"path\":\"$.items[0].name\",\"equals\":\"cheese\"},"
                       "{\"path\":\"$.limit\",\"equals\":10},{\"path\":\"$.trace\",\"equals\":\"t-1\"}],"
                       "\"latency_ms\":5000}}";
    sonar_checkrun_result r = run_nats(step, NULL, 5000);
    cr_assert(r.passed, "%s", r.message);
    r = run_nats(step, "cb-v2", 5000);
    cr_assert(r.passed, "%s", r.message);

    r = run_nats("{\"nats\":{\"subject\":\"catalogue.list\",\"json\":{\"limit\":1}},"
                 "\"expect\":{\"json\":[{\"path\":\"$.items[1].price\",\"lt\":5}]}}",
                 NULL, 5000);
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message, "step 1 NATS chillybin.catalogue.list: $.items[1].price is 9, "
                                "expected < 5");
}

Test(checkrun_nats, service_errors_no_responders_and_timeouts_fail, .init = nats_setup,
     .fini = nats_teardown, .timeout = 60)
{
    sonar_checkrun_result r = run_nats("{\"nats\":{\"subject\":\"item.get\",\"payload\":\"x\"}}",
                                       NULL, 5000);
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message, "step 1 NATS chillybin.item.get: status 404 (no such item), "
                                "expected 2xx");
    r = run_nats("{\"nats\":{\"subject\":\"item.get\"},\"expect\":{\"status\":404,"
                 "\"json\":[{\"path\":\"$.code\",\"equals\":404}]}}", NULL, 5000);
    cr_assert(r.passed, "%s", r.message);

    r = run_nats("{\"nats\":{\"subject\":\"nobody.home\"}}", NULL, 5000);
    cr_assert_not(r.passed);
    cr_assert_str_eq(r.message, "step 1 NATS chillybin.nobody.home: no responders on "
                                "chillybin.nobody.home");

    r = run_nats("{\"nats\":{\"subject\":\"silent\"}}", NULL, 200);
    cr_assert_not(r.passed);
    cr_assert(strncmp(r.message, "step 1 NATS chillybin.silent: timed out after ", 46) == 0, "%s",
              r.message);

    char *tb = one_step("{\"nats\":{\"subject\":\"silent\"}}");
    sonar_checkrun_target target = {.nc = NULL, .deadline_ms = sonar_now_ms() + 1000};
    r = run_case_at(tb, "c", &target);
    free(tb);
    cr_assert_str_eq(r.message, "step 1 NATS chillybin.silent: no NATS connection for NATS steps");
}
