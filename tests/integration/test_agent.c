/*
 * `sonar agent`: the built CLI (SONAR_BIN) joins a real nats-server for the
 * service a check table names, answers check requests by running the
 * table's cases against a real HTTP candidate and a real NATS responder,
 * and leaves on SIGTERM. End to end with the real sonard (SONARD_BIN): the
 * agent's result appears in the report of an announced change.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "collector.h"
#include "httpd.h"
#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"

static test_natsd natsd;
static test_httpd *srv;
static natsConnection *nc;
static natsSubscription *ping_sub;
static char dir[256];
static char table_path[300];

static const char *const table_text =
    "{\"service\":\"jafflr\",\"version\":\"3.1.0\",\"description\":\"jafflr via sonar agent\","
    " \"checks\":{\"chillybin\":["
    "  {\"name\":\"health\",\"steps\":[{\"http\":{\"path\":\"/health\"},"
    "    \"expect\":{\"body\":{\"contains\":\"ok\"}}}]},"
    "  {\"name\":\"pick cheese\",\"steps\":[{\"http\":{\"method\":\"POST\",\"path\":\"/pick\","
    "    \"query\":{\"name\":\"cheese\"}},\"expect\":{\"status\":200}}]},"
    "  {\"name\":\"ping over NATS\",\"steps\":[{\"nats\":{\"subject\":\"ping\"},"
    "    \"expect\":{\"body\":{\"equals\":\"pong\"}}}]}]}}";

static void on_ping(natsConnection *c, natsSubscription *s, natsMsg *msg, void *cl)
{
    (void)s;
    (void)cl;
    natsConnection_PublishString(c, natsMsg_GetReply(msg), "pong");
    natsMsg_Destroy(msg);
}

static void setup(void)
{
    cr_assert(test_mkdtemp(dir, sizeof dir, "agent"));
    cr_assert(test_natsd_start(&natsd));
    srv = test_httpd_start();
    cr_assert_not_null(srv);
    test_httpd_route(srv, "GET", "/health", 200, "ok", NULL);
    test_httpd_route(srv, "POST", "/pick", 404, "{\"error\":\"unknown item\"}", NULL);
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
    cr_assert_eq(natsConnection_Subscribe(&ping_sub, nc, "chillybin.ping", on_ping, NULL),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    snprintf(table_path, sizeof table_path, "%s/jafflr.json", dir);
    FILE *f = fopen(table_path, "w");
    cr_assert_not_null(f);
    fputs(table_text, f);
    fclose(f);
}

static void teardown(void)
{
    natsSubscription_Unsubscribe(ping_sub);
    natsSubscription_Destroy(ping_sub);
    natsConnection_Destroy(nc);
    test_httpd_stop(srv);
    test_natsd_destroy(&natsd);
    test_rmtree(dir);
    nats_Close();
}

TestSuite(agent, .init = setup, .fini = teardown, .timeout = 120);

static void start_agent(test_proc *p)
{
    const char *argv[] = {test_bin("SONAR_BIN"), "agent", "--checks", table_path, "--server",
                          natsd.url, "--heartbeat", "200ms", "--health",
                          "http://127.0.0.1:8080/health", NULL};
    cr_assert(test_proc_start(p, dir, argv, NULL));
    cr_assert(test_proc_wait_output(p, "ready ", 10000), "agent not ready: %s",
              test_proc_stderr(p));
}

static const sonar_check_result *find(const sonar_check_result *checks, size_t n,
                                      const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(checks[i].name, name) == 0)
            return &checks[i];
    cr_assert_fail("no check %s", name);
    return NULL;
}

Test(agent, registers_answers_checks_and_leaves)
{
    test_collector *regs = test_collector_create(nc, "sonar.register.jafflr");
    test_collector *leaves = test_collector_create(nc, "sonar.leave.jafflr");
    test_collector *results = test_collector_create(nc, "sonar.result.chg1.*");
    test_proc agent;
    start_agent(&agent);

    cr_assert(test_collector_wait(regs, 2, 5000), "registration and heartbeat expected");
    sonar_register_msg reg = {0};
    const char *data = test_collector_data(regs, 0);
    cr_assert_eq(sonar_register_decode(&reg, data, strlen(data)), SONAR_OK, "%s", data);
    cr_assert_str_eq(reg.version, "3.1.0");
    cr_assert_str_eq(reg.health, "http://127.0.0.1:8080/health");
    cr_assert_eq(reg.n_checks, 1);
    cr_assert_str_eq(reg.checks[0].dependency, "chillybin");
    cr_assert_eq(reg.checks[0].n_names, 3);
    sonar_register_finish(&reg);

    sonar_check_msg m = {.change_id = "chg1", .service = "chillybin", .version = "2.0.0",
                         .address = (char *)test_httpd_url(srv), .timeout_ms = 5000};
    char *json = NULL;
    cr_assert_eq(sonar_check_encode(&m, &json), SONAR_OK);
    cr_assert_eq(natsConnection_PublishString(nc, "sonar.check.chillybin", json), NATS_OK);
    free(json);
    cr_assert(test_collector_wait(results, 1, 10000), "no result");
    cr_assert_str_eq(test_collector_subject(results, 0), "sonar.result.chg1.jafflr");
    sonar_result_msg r = {0};
    data = test_collector_data(results, 0);
    cr_assert_eq(sonar_result_decode(&r, data, strlen(data)), SONAR_OK, "%s", data);
    cr_assert_eq(r.status, SONAR_FAIL);
    cr_assert_eq(r.n_checks, 3);
    cr_assert_eq(find(r.checks, r.n_checks, "health")->status, SONAR_PASS);
    cr_assert_eq(find(r.checks, r.n_checks, "ping over NATS")->status, SONAR_PASS,
                 "%s", find(r.checks, r.n_checks, "ping over NATS")->message);
    const sonar_check_result *pick = find(r.checks, r.n_checks, "pick cheese");
    cr_assert_eq(pick->status, SONAR_FAIL);
    cr_assert_str_eq(pick->message, "step 1 POST /pick?name=cheese: status 404, expected 200");
    sonar_result_finish(&r);

    /* Standard discovery sees it. */
    natsMsg *reply = NULL;
    cr_assert_eq(natsConnection_RequestString(&reply, nc, "$SRV.PING.jafflr", "", 2000), NATS_OK);
    cr_assert(strstr(natsMsg_GetData(reply), "\"jafflr\"") != NULL);
    natsMsg_Destroy(reply);

    test_proc_signal(&agent, SIGTERM);
    cr_assert(test_proc_wait(&agent, 10000), "agent did not exit after SIGTERM");
    cr_assert_eq(test_proc_exit_code(&agent), 0, "%s", test_proc_stderr(&agent));
    cr_assert(test_collector_wait(leaves, 1, 10000), "no leave message");
    test_proc_finish(&agent);
    test_collector_destroy(regs);
    test_collector_destroy(leaves);
    test_collector_destroy(results);
}

Test(agent, invalid_tables_and_flags_exit_2)
{
    char bad[300];
    snprintf(bad, sizeof bad, "%s/bad.json", dir);
    FILE *f = fopen(bad, "w");
    cr_assert_not_null(f);
    fputs("{\"service\":\"jafflr\",\"checks\":{\"chillybin\":[{\"name\":\"a\"}]}}", f);
    fclose(f);
    const char *bin = test_bin("SONAR_BIN");
    const char *a1[] = {bin, "agent", "--checks", bad, "--server", natsd.url, NULL};
    const char *a2[] = {bin, "agent", "--server", natsd.url, NULL};
    const char *a3[] = {bin, "agent", "--checks", table_path, "--heartbeat", "often", NULL};
    const char *a4[] = {bin, "agent", "--checks", table_path, "--health", "ftp://x", NULL};
    const char *a5[] = {bin, "agent", "--checks", table_path, "--nope", NULL};
    const char *const *cases[] = {a1, a2, a3, a4, a5};
    const char *says[] = {"$.checks.chillybin[0]: missing required field \"steps\"",
                          "--checks FILE is required", "--heartbeat \"often\"",
                          "--health \"ftp://x\"", "--nope"};
    for (size_t i = 0; i < 5; i++) {
        test_proc p;
        cr_expect_eq(test_proc_run(&p, dir, cases[i], NULL, 10000), 2, "case %zu", i);
        char *err = test_proc_stderr(&p);
        cr_expect(strstr(err, says[i]) != NULL, "case %zu: %s", i, err);
        free(err);
        test_proc_finish(&p);
    }
    /* No bus: exit 3. */
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", test_free_port());
    const char *a6[] = {bin, "agent", "--checks", table_path, "--server", url, NULL};
    test_proc p;
    cr_expect_eq(test_proc_run(&p, dir, a6, NULL, 10000), 3);
    test_proc_finish(&p);
}

Test(agent, its_result_appears_in_the_sonard_report)
{
    char db[300];
    snprintf(db, sizeof db, "%s/sonard.db", dir);
    const char *sargv[] = {test_bin("SONARD_BIN"), "--server", natsd.url, "--db", db,
                           "--default-timeout", "5s", NULL};
    test_proc sonard;
    cr_assert(test_proc_start(&sonard, dir, sargv, NULL));
    test_proc agent;
    start_agent(&agent);

    /* Announce until sonard knows jafflr depends on chillybin (it learns from
     * registrations, which arrive every 200 ms). */
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.change.v1\",\"change_id\":\"e2e-1\",\"service\":\"chillybin\","
             "\"version\":\"2.0.0\",\"address\":\"%s\",\"timeout_ms\":5000}",
             test_httpd_url(srv));
    json_t *report = NULL;
    int64_t deadline = test_now_ms() + 15000;
    while (report == NULL && test_now_ms() < deadline) {
        natsMsg *reply = NULL;
        if (natsConnection_RequestString(&reply, nc, "sonar.change.chillybin", body, 10000) ==
            NATS_OK) {
            json_t *doc = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply),
                                     0, NULL);
            json_t *results = json_object_get(doc, "results");
            if (json_array_size(results) > 0)
                report = doc;
            else
                json_decref(doc);
            natsMsg_Destroy(reply);
        }
        if (report == NULL) {
            snprintf(body, sizeof body,
                     "{\"type\":\"sonar.change.v1\",\"service\":\"chillybin\",\"version\":"
                     "\"2.0.0\",\"address\":\"%s\",\"timeout_ms\":5000}", test_httpd_url(srv));
            test_pause_briefly();
        }
    }
    cr_assert_not_null(report, "no report with results from sonard: %s",
                       test_proc_stderr(&sonard));
    json_t *entry = NULL;
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(report, "results"), i, r)
        if (strcmp(json_string_value(json_object_get(r, "service")), "jafflr") == 0)
            entry = r;
    cr_assert_not_null(entry, "jafflr missing from the report");
    cr_assert_str_eq(json_string_value(json_object_get(entry, "status")), "fail");
    char *text = json_dumps(entry, JSON_COMPACT);
    cr_assert(strstr(text, "step 1 POST /pick?name=cheese: status 404, expected 200") != NULL,
              "%s", text);
    free(text);
    json_decref(report);

    test_proc_signal(&agent, SIGTERM);
    cr_assert(test_proc_wait(&agent, 10000));
    cr_assert_eq(test_proc_exit_code(&agent), 0);
    test_proc_signal(&sonard, SIGTERM);
    cr_assert(test_proc_wait(&sonard, 10000));
    test_proc_finish(&agent);
    test_proc_finish(&sonard);
}
