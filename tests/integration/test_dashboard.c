/*
 * The dashboard in headless Chromium (Debian `chromium`; deploy/dev installs
 * it): the real gateway, sonard and services on a real nats-server. The page
 * follows one change (`/?watch=<id>`): the browser connects, the test
 * announces the change, the results stream in over server-sent events, the
 * page renders the verdict and closes its stream, and Chromium dumps the DOM
 * and saves a screenshot (build/tests/gateway-dashboard.png). Skipped when
 * /usr/bin/chromium is absent.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway_env.h"

#define CHROMIUM "/usr/bin/chromium"

static gw_env env;

Test(dashboard, shows_results_arriving_and_the_final_verdict, .timeout = 240)
{
    if (access(CHROMIUM, X_OK) != 0)
        cr_skip_test("%s is not installed (deploy/dev installs it)", CHROMIUM);
    gw_env_start(&env);

    char profile[400], shot[600], url[256], shot_arg[700], profile_arg[450];
    snprintf(profile, sizeof profile, "%s/chromium-profile", env.dir);
    const char *out = getenv("SONAR_TEST_OUT");
    snprintf(shot, sizeof shot, "%s/gateway-dashboard.png", out && *out ? out : env.dir);
    unlink(shot);
    snprintf(shot_arg, sizeof shot_arg, "--screenshot=%s", shot);
    snprintf(profile_arg, sizeof profile_arg, "--user-data-dir=%s", profile);
    snprintf(url, sizeof url, "%s/?watch=dash-1", env.url);
    const char *argv[] = {CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-quic", "--no-first-run", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                          profile_arg, "--window-size=1200,1400",
                          /* virtual time stands still while the event stream is open;
                           * the page closes it after the verdict */
                          "--virtual-time-budget=3000", shot_arg, "--dump-dom", url, NULL};
    test_proc browser;
    cr_assert(test_proc_start(&browser, env.dir, argv, NULL));
    /* the page is subscribed before the change is announced */
    bool connected = TEST_WAIT_UNTIL(gw_env_metric(&env, "sonar_gateway_sse_clients ") == 1 ||
                                         test_proc_wait(&browser, 0), 90000);
    if (!connected || browser.reaped) {
        char *err = test_proc_stderr(&browser);
        test_proc_kill(&browser);
        gw_env_stop(&env);
        cr_assert_fail("chromium never opened the event stream: %s", err);
    }
    json_t *report = gw_env_announce(&env, "dash-1");
    cr_assert_str_eq(json_string_value(json_object_get(report, "verdict")), "fail");
    json_decref(report);

    bool done = test_proc_wait(&browser, 90000);
    char *dom = test_proc_stdout(&browser);
    char *err = test_proc_stderr(&browser);
    if (!done)
        test_proc_kill(&browser);
    test_proc_finish(&browser);
    gw_env_stop(&env);
    cr_assert(done, "chromium did not finish; stderr: %s", err);
    cr_assert_eq(test_proc_exit_code(&browser), 0, "stderr: %s", err);

    /* the final verdict, rendered from the report event */
    cr_assert(strstr(dom, "id=\"live-verdict\" class=\"verdict fail\" data-verdict=\"fail\">fail<") != NULL,
              "%s", dom);
    /* the results, with the failing check and its message */
    cr_assert(strstr(dom, "data-service=\"jafflr\" data-status=\"fail\"") != NULL, "%s", dom);
    cr_assert(strstr(dom, "data-check=\"probe\" data-status=\"fail\"") != NULL, "%s", dom);
    cr_assert(strstr(dom, "GET /pick?name=cheese → 404, expected 200") != NULL, "%s", dom);
    cr_assert(strstr(dom, "data-service=\"chillybin\" data-status=\"none\"") != NULL, "%s", dom);
    /* they arrived one by one before the report */
    const char *events = strstr(dom, "data-events=\"");
    cr_assert_not_null(events, "%s", dom);
    const char *first_result = strstr(events, "result");
    const char *rep = strstr(events, "report");
    cr_assert(first_result != NULL && rep != NULL && first_result < rep,
              "results should stream in before the report: %.120s", events);
    /* the services table and the graph were drawn too */
    cr_assert(strstr(dom, "<tr data-service=\"jafflr\">") != NULL, "%s", dom);
    cr_assert(strstr(dom, "class=\"node\" data-service=\"chillybin\"") != NULL, "%s", dom);

    FILE *f = fopen(shot, "rb");
    cr_assert_not_null(f, "no screenshot at %s; stderr: %s", shot, err);
    unsigned char sig[8] = {0};
    size_t n = fread(sig, 1, sizeof sig, f);
    fclose(f);
    cr_assert(n == 8 && memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0, "%s is not a PNG", shot);
    free(dom);
    free(err);
}
