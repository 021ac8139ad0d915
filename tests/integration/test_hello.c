/*
 * The hello example as a real process on a real bus: it registers, answers
 * a check request against a real HTTP candidate (pass and fail), and leaves
 * cleanly on SIGTERM.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "collector.h"
#include "httpd.h"
#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"

static test_natsd natsd;
static natsConnection *nc;
static char dir[256];

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd));
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
    cr_assert(test_mkdtemp(dir, sizeof dir, "hello"));
}

static void teardown(void)
{
    natsConnection_Destroy(nc);
    test_natsd_destroy(&natsd);
    test_rmtree(dir);
    nats_Close();
}

TestSuite(hello, .init = setup, .fini = teardown, .timeout = 60);

static void announce_check(const char *change_id, const char *address)
{
    sonar_check_msg m = {.change_id = (char *)change_id, .service = "chillybin",
                         .version = "2.0.0", .address = (char *)address, .timeout_ms = 3000};
    char *json = NULL;
    cr_assert_eq(sonar_check_encode(&m, &json), SONAR_OK);
    natsConnection_PublishString(nc, "sonar.check.chillybin", json);
    free(json);
}

Test(hello, answers_checks_against_the_candidate_and_leaves_on_sigterm)
{
    test_httpd *good = test_httpd_start();
    test_httpd *bad = test_httpd_start();
    cr_assert(good && bad);
    test_httpd_route(good, "GET", "/health", 200, "{\"status\":\"pass\"}", NULL);
    test_httpd_route(bad, "GET", "/health", 404, "no such page", NULL);

    test_collector *regs = test_collector_create(nc, "sonar.register.hello");
    test_collector *leaves = test_collector_create(nc, "sonar.leave.hello");
    test_collector *results = test_collector_create(nc, "sonar.result.*.hello");
    const char *argv[] = {test_bin("SONAR_HELLO_BIN"), "--depends-on", "chillybin",
                          "--server", natsd.url, "--heartbeat", "1s", NULL};
    test_proc p;
    cr_assert(test_proc_start(&p, dir, argv, NULL));
    cr_assert(test_collector_wait(regs, 1, 10000), "hello did not register");

    announce_check("good1", test_httpd_url(good));
    cr_assert(test_collector_wait(results, 1, 5000));
    sonar_result_msg r = {0};
    const char *data = test_collector_data(results, 0);
    cr_assert_eq(sonar_result_decode(&r, data, strlen(data)), SONAR_OK, "%s", data);
    cr_assert_eq(r.status, SONAR_PASS, "%s", data);
    cr_assert_eq(test_httpd_hits(good, "GET", "/health"), 1, "the check must hit the candidate");
    sonar_result_finish(&r);

    announce_check("bad1", test_httpd_url(bad));
    cr_assert(test_collector_wait(results, 2, 5000));
    data = test_collector_data(results, 1);
    cr_assert_eq(sonar_result_decode(&r, data, strlen(data)), SONAR_OK, "%s", data);
    cr_assert_eq(r.status, SONAR_FAIL);
    cr_assert_eq(r.n_checks, 1);
    cr_assert(strstr(r.checks[0].message, "GET /health") != NULL, "%s", r.checks[0].message);
    cr_assert(strstr(r.checks[0].message, "404") != NULL, "%s", r.checks[0].message);
    cr_assert(strstr(r.checks[0].message, "expected 200") != NULL, "%s", r.checks[0].message);
    sonar_result_finish(&r);

    test_proc_signal(&p, SIGTERM);
    cr_assert(test_proc_wait(&p, 10000), "hello did not exit on SIGTERM");
    cr_assert_eq(test_proc_exit_code(&p), 0);
    cr_assert(test_collector_wait(leaves, 1, 10000), "hello did not leave the bus");
    test_proc_finish(&p);

    test_collector_destroy(regs);
    test_collector_destroy(leaves);
    test_collector_destroy(results);
    test_httpd_stop(good);
    test_httpd_stop(bad);
}

Test(hello, refuses_bad_flags_with_exit_2)
{
    const char *no_dep[] = {test_bin("SONAR_HELLO_BIN"), NULL};
    test_proc p;
    cr_assert_eq(test_proc_run(&p, dir, no_dep, NULL, 10000), 2);
    char *err = test_proc_stderr(&p);
    cr_assert(strstr(err, "--depends-on") != NULL, "%s", err);
    free(err);
    test_proc_finish(&p);
    const char *bad_name[] = {test_bin("SONAR_HELLO_BIN"), "--depends-on", "bad.name",
                              "--server", natsd.url, NULL};
    cr_assert_eq(test_proc_run(&p, dir, bad_name, NULL, 10000), 1);
    err = test_proc_stderr(&p);
    cr_assert(strstr(err, "bad.name") != NULL, "%s", err);
    free(err);
    test_proc_finish(&p);
}
