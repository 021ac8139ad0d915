/*
 * Health checks, pure parts: classification of responses and the threshold
 * state machine (no I/O; the HTTP side is in tests/integration/test_health_http.c).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "sonar/sonar.h"

static sonar_health_result classify(long code, const char *body)
{
    sonar_health_result r;
    memset(&r, 0x5a, sizeof r); /* classify must set status and error itself */
    sonar_health_classify(code, body, body != NULL ? strlen(body) : 0, &r);
    return r;
}

Test(health, http_2xx_without_a_json_body_is_passing)
{
    cr_assert_eq(classify(200, "OK").status, SONAR_HEALTH_PASSING);
    cr_assert_str_eq(classify(200, "OK").error, "");
    cr_assert_eq(classify(204, NULL).status, SONAR_HEALTH_PASSING);
    cr_assert_eq(classify(299, "").status, SONAR_HEALTH_PASSING);
    cr_assert_eq(classify(200, "{not json").status, SONAR_HEALTH_PASSING);
    cr_assert_eq(classify(200, "{\"uptime\":5}").status, SONAR_HEALTH_PASSING);
    cr_assert_eq(classify(200, "[\"status\",\"fail\"]").status, SONAR_HEALTH_PASSING);
}

Test(health, other_http_codes_are_critical_and_named)
{
    sonar_health_result r = classify(503, "Service Unavailable");
    cr_assert_eq(r.status, SONAR_HEALTH_CRITICAL);
    cr_assert_str_eq(r.error, "HTTP 503");
    cr_assert_eq(classify(301, NULL).status, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(classify(404, NULL).status, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(classify(199, NULL).status, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(classify(300, NULL).status, SONAR_HEALTH_CRITICAL);
    /* A JSON "pass" cannot rescue a failing HTTP code. */
    cr_assert_eq(classify(500, "{\"status\":\"pass\"}").status, SONAR_HEALTH_CRITICAL);
}

Test(health, json_status_refines_a_2xx)
{
    cr_assert_eq(classify(200, "{\"status\":\"pass\"}").status, SONAR_HEALTH_PASSING);
    cr_assert_eq(classify(200, "  {\"status\":\"ok\"}").status, SONAR_HEALTH_PASSING);
    cr_assert_eq(classify(200, "{\"status\":\"UP\"}").status, SONAR_HEALTH_PASSING);
    cr_assert_eq(classify(200, "{\"status\":\"warn\"}").status, SONAR_HEALTH_WARNING);
    cr_assert_eq(classify(200, "{\"status\":\"fail\"}").status, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(classify(200, "{\"status\":\"error\"}").status, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(classify(200, "{\"status\":\"down\"}").status, SONAR_HEALTH_CRITICAL);
    sonar_health_result r = classify(200, "{\"status\":\"sideways\"}");
    cr_assert_eq(r.status, SONAR_HEALTH_WARNING);
    cr_assert(strstr(r.error, "unknown health status \"sideways\"") != NULL, "%s", r.error);
    cr_assert_str_eq(classify(200, "{\"status\":\"pass\"}").error, "");
}

Test(health, failing_checks_are_named_in_the_error)
{
    const char *body =
        "{\"status\":\"warn\",\"output\":\"degraded\",\"checks\":{"
        "\"db:connections\":[{\"status\":\"warn\",\"output\":\"pool at 95%\"}],"
        "\"cache:ping\":[{\"status\":\"pass\"}],"
        "\"disk\":{\"status\":\"fail\"}}}";
    sonar_health_result r = classify(200, body);
    cr_assert_eq(r.status, SONAR_HEALTH_WARNING);
    cr_assert(strstr(r.error, "health status \"warn\": degraded") != NULL, "%s", r.error);
    cr_assert(strstr(r.error, "db:connections: warn (pool at 95%)") != NULL, "%s", r.error);
    cr_assert(strstr(r.error, "disk: fail") != NULL, "%s", r.error);
    cr_assert(strstr(r.error, "cache:ping") == NULL, "%s", r.error);

    r = classify(503, "{\"status\":\"fail\",\"checks\":{\"db\":[{\"status\":\"fail\"}]}}");
    cr_assert_eq(r.status, SONAR_HEALTH_CRITICAL);
    cr_assert(strncmp(r.error, "HTTP 503; health status \"fail\"", 30) == 0, "%s", r.error);
    cr_assert(strstr(r.error, "db: fail") != NULL, "%s", r.error);

    /* Nothing failing inside: no empty "checks:" tail. */
    r = classify(200, "{\"status\":\"warn\",\"checks\":{\"a\":[{\"status\":\"pass\"}]}}");
    cr_assert_str_eq(r.error, "health status \"warn\"");
}

Test(health, long_error_text_is_truncated_safely)
{
    char body[8192];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"status\":\"fail\",\"checks\":{");
    for (int i = 0; i < 60; i++)
        n += (size_t)snprintf(body + n, sizeof body - n,
                              "%s\"check_number_%02d\":[{\"status\":\"fail\",\"output\":"
                              "\"something long went wrong here\"}]", i ? "," : "", i);
    snprintf(body + n, sizeof body - n, "}}");
    sonar_health_result r = classify(200, body);
    cr_assert_eq(r.status, SONAR_HEALTH_CRITICAL);
    size_t len = strlen(r.error);
    cr_assert_lt(len, sizeof r.error);
    cr_assert_str_eq(r.error + len - 3, "...");
}

Test(health, status_names_round_trip)
{
    for (int s = SONAR_HEALTH_UNKNOWN; s <= SONAR_HEALTH_CRITICAL; s++) {
        sonar_health_status back = SONAR_HEALTH_UNKNOWN;
        cr_assert_eq(sonar_health_status_parse(sonar_health_status_str(s), &back), SONAR_OK);
        cr_assert_eq(back, (sonar_health_status)s);
    }
    sonar_health_status out = SONAR_HEALTH_WARNING;
    cr_assert_eq(sonar_health_status_parse("fine", &out), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_health_status_parse(NULL, &out), SONAR_ERR_INVALID);
    cr_assert_eq(out, SONAR_HEALTH_WARNING);
    cr_assert(strstr(sonar_last_error(), "fine") == NULL); /* last call was NULL */
}

/* Applies a sequence given as letters (p, w, c) and returns the reported
 * statuses after each, as letters (u, p, w, c), plus a transition count. */
static void run(sonar_health_state *s, const char *obs, char *reported, int *transitions)
{
    static const sonar_health_status map[128] = {
        ['p'] = SONAR_HEALTH_PASSING, ['w'] = SONAR_HEALTH_WARNING,
        ['c'] = SONAR_HEALTH_CRITICAL, ['u'] = SONAR_HEALTH_UNKNOWN};
    static const char letter[] = {'u', 'p', 'w', 'c'};
    *transitions = 0;
    size_t i = 0;
    for (; obs[i]; i++) {
        sonar_health_status before = s->status;
        sonar_health_transition t = {0};
        bool changed = sonar_health_state_apply(s, map[(unsigned char)obs[i]], &t);
        cr_assert_eq(changed, s->status != before);
        if (changed) {
            cr_assert_eq(t.from, before);
            cr_assert_eq(t.to, s->status);
            cr_assert_gt(t.streak, 0);
            (*transitions)++;
        }
        reported[i] = letter[s->status];
    }
    reported[i] = '\0';
}

/* Runs `obs` from a fresh state with the given thresholds (0: default) and
 * asserts the reported statuses and the number of transitions. */
static sonar_health_state sequence(int failures, int successes, const char *obs,
                                   const char *want, int want_transitions)
{
    sonar_health_thresholds t = {.failure_threshold = failures,
                                 .success_threshold = successes};
    sonar_health_state s;
    cr_assert_eq(sonar_health_state_init(&s, &t), SONAR_OK);
    char got[64];
    int tr;
    run(&s, obs, got, &tr);
    cr_assert_str_eq(got, want, "observed %s: reported %s, want %s", obs, got, want);
    cr_assert_eq(tr, want_transitions, "observed %s: %d transitions, want %d", obs, tr,
                 want_transitions);
    return s;
}

Test(health, defaults_need_three_failures_and_one_success)
{
    sonar_health_state s;
    cr_assert_eq(sonar_health_state_init(&s, NULL), SONAR_OK);
    cr_assert_eq(s.failure_threshold, 3);
    cr_assert_eq(s.success_threshold, 1);
    cr_assert_eq(s.status, SONAR_HEALTH_UNKNOWN);
    /* unknown→passing, passing→critical, critical→passing */
    s = sequence(0, 0, "pccpcccp", "ppppppcp", 3);
    cr_assert_eq(s.observations, 8);
}

Test(health, failures_below_the_threshold_do_not_flap)
{
    /* two successes to pass, never three failures in a row */
    sonar_health_state s = sequence(3, 2, "ppccpccpcc", "uppppppppp", 1);
    cr_assert_eq(s.consecutive_failures, 2);
}

Test(health, success_threshold_guards_leaving_critical)
{
    /* starts unknown: failures decide critical after 2; three successes leave it */
    sonar_health_state s = sequence(2, 3, "ccppcpppp", "uccccccpp", 2);
    cr_assert_eq(s.consecutive_successes, 4);
}

Test(health, warning_follows_the_target_while_not_critical)
{
    /* p→w→p→w at once; three criticals → critical; one warn leaves critical as warning */
    sequence(0, 0, "pwwpwcccwp", "pwwpwwwcwp", 7);
}

Test(health, leaving_critical_takes_the_latest_status)
{
    /* the second non-critical (w) leaves critical as warning */
    sonar_health_state s = sequence(1, 2, "cpwwp", "ccwwp", 3);
    sonar_health_transition last;
    cr_assert(!sonar_health_state_apply(&s, SONAR_HEALTH_PASSING, &last));
    cr_assert(sonar_health_state_apply(&s, SONAR_HEALTH_CRITICAL, &last));
    cr_assert_eq(last.from, SONAR_HEALTH_PASSING);
    cr_assert_eq(last.to, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(last.streak, 1);
}

Test(health, unknown_observations_are_ignored)
{
    sonar_health_state s = sequence(0, 0, "ccucu", "uuucc", 1);
    cr_assert_eq(s.observations, 3);
}

Test(health, bad_thresholds_are_refused)
{
    sonar_health_state s = {.status = SONAR_HEALTH_WARNING};
    sonar_health_thresholds t = {.failure_threshold = -1};
    cr_assert_eq(sonar_health_state_init(&s, &t), SONAR_ERR_INVALID);
    cr_assert_eq(s.status, SONAR_HEALTH_WARNING);
    cr_assert(strstr(sonar_last_error(), "failures -1") != NULL, "%s", sonar_last_error());
    t = (sonar_health_thresholds){.success_threshold = SONAR_HEALTH_MAX_THRESHOLD + 1};
    cr_assert_eq(sonar_health_state_init(&s, &t), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_health_state_init(NULL, NULL), SONAR_ERR_INVALID);
}

Test(health, long_streaks_saturate)
{
    sonar_health_thresholds t = {.failure_threshold = SONAR_HEALTH_MAX_THRESHOLD};
    sonar_health_state s;
    cr_assert_eq(sonar_health_state_init(&s, &t), SONAR_OK);
    for (int i = 0; i < SONAR_HEALTH_MAX_THRESHOLD - 1; i++)
        cr_assert_not(sonar_health_state_apply(&s, SONAR_HEALTH_CRITICAL, NULL));
    cr_assert(sonar_health_state_apply(&s, SONAR_HEALTH_CRITICAL, NULL));
    for (int i = 0; i < 5000; i++)
        sonar_health_state_apply(&s, SONAR_HEALTH_CRITICAL, NULL);
    cr_assert_eq(s.consecutive_failures, SONAR_HEALTH_MAX_THRESHOLD);
    cr_assert_eq(s.status, SONAR_HEALTH_CRITICAL);
}

Test(health, results_give_probe_samples)
{
    sonar_health_result r = {.status = SONAR_HEALTH_WARNING, .http_code = 200,
                             .duration_ms = 1250};
    sonar_health_sample out[SONAR_HEALTH_N_SAMPLES];
    cr_assert_eq(sonar_health_result_samples(&r, out), 3);
    cr_assert_str_eq(out[0].name, "probe_success");
    cr_assert_eq(out[0].value, 1.0);
    cr_assert_str_eq(out[1].name, "probe_duration_seconds");
    cr_assert_float_eq(out[1].value, 1.25, 1e-9);
    cr_assert_str_eq(out[2].name, "probe_http_status_code");
    cr_assert_eq(out[2].value, 200.0);
    r = (sonar_health_result){.status = SONAR_HEALTH_CRITICAL, .duration_ms = 3};
    cr_assert_eq(sonar_health_result_samples(&r, out), 2);
    cr_assert_eq(out[0].value, 0.0);
}

Test(health, checkers_validate_their_target)
{
    sonar_health_checker *c = NULL;
    sonar_health_target t = {.url = "ftp://example.com/"};
    cr_assert_eq(sonar_health_checker_create(&c, &t), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "not http:// or https://") != NULL);
    t.url = "http://exa mple.com/";
    cr_assert_eq(sonar_health_checker_create(&c, &t), SONAR_ERR_INVALID);
    t.url = NULL;
    cr_assert_eq(sonar_health_checker_create(&c, &t), SONAR_ERR_INVALID);
    t.url = "http://127.0.0.1:1/health";
    t.timeout_ms = -5;
    cr_assert_eq(sonar_health_checker_create(&c, &t), SONAR_ERR_INVALID);
    t.timeout_ms = 0;
    t.thresholds.failure_threshold = -2;
    cr_assert_eq(sonar_health_checker_create(&c, &t), SONAR_ERR_INVALID);
    cr_assert_null(c);
    t.thresholds.failure_threshold = 0;
    char url[64];
    strcpy(url, "http://127.0.0.1:1/health");
    t.url = url;
    cr_assert_eq(sonar_health_checker_create(&c, &t), SONAR_OK);
    url[0] = 'X'; /* the checker keeps its own copy */
    cr_assert_str_eq(sonar_health_checker_url(c), "http://127.0.0.1:1/health");
    cr_assert_eq(sonar_health_checker_state(c)->failure_threshold, 3);
    sonar_health_checker_destroy(c);
    sonar_health_checker_destroy(NULL);
    sonar_health_result r;
    cr_assert_eq(sonar_health_check_http("http://x/", -1, &r), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_health_check_http("gopher://x/", 10, &r), SONAR_ERR_INVALID);
}
