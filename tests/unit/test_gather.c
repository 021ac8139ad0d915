#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "gather.h"
#include "sonar/sonar.h"

static char **names(size_t n, const char *const *v)
{
    char **out = calloc(n ? n : 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = strdup(v[i]);
    return out;
}

/* A tally for change c1 of x, expecting `live` (sorted) and listing `down` (sorted). */
static sonar_tally *tally(size_t n_live, const char *const *live, size_t n_down,
                          const char *const *down)
{
    sonar_change_msg ch = {.change_id = "c1", .service = "x", .version = "2.0.0",
                           .address = "http://x:1", .timeout_ms = 1000};
    sonar_expected e = {.live = names(n_live, live), .n_live = n_live,
                        .down = names(n_down, down), .n_down = n_down};
    sonar_tally *t = NULL;
    cr_assert_eq(sonar_tally_create(&t, &ch, &e, 1700000000000, 100), SONAR_OK);
    cr_assert_null(e.live, "the expected lists were taken");
    return t;
}

/* Answers for c1 from `who` with `status`, and one check when status is pass or fail. */
static sonar_status answer(sonar_tally *t, const char *cid, const char *who, sonar_outcome status,
                           const char *message)
{
    sonar_result_msg r = {0};
    r.change_id = strdup(cid);
    r.service = strdup(who);
    r.instance = strdup("i1");
    r.status = status;
    r.duration_ms = 7;
    if (status != SONAR_NONE) {
        r.checks = calloc(1, sizeof *r.checks);
        r.checks[0].name = strdup("pick");
        r.checks[0].status = status;
        r.checks[0].message = strdup(message ? message : "");
        r.n_checks = 1;
    }
    sonar_status s = sonar_tally_add(t, &r, strncmp(who, "known", 5) == 0);
    sonar_result_finish(&r);
    return s;
}

static const sonar_report_entry *entry(const sonar_report_msg *r, const char *service)
{
    for (size_t i = 0; i < r->n_results; i++)
        if (strcmp(r->results[i].service, service) == 0)
            return &r->results[i];
    cr_assert_fail("no entry for %s", service);
    return NULL;
}

Test(gather, five_services_two_dependents_pass_and_three_none)
{
    const char *live[] = {"a", "b", "c", "d", "e"};
    sonar_tally *t = tally(5, live, 0, NULL);
    cr_assert_eq(answer(t, "c1", "a", SONAR_PASS, NULL), SONAR_OK);
    cr_assert_eq(answer(t, "c1", "c", SONAR_NONE, NULL), SONAR_OK);
    cr_assert_eq(answer(t, "c1", "b", SONAR_PASS, NULL), SONAR_OK);
    cr_assert_eq(answer(t, "c1", "d", SONAR_NONE, NULL), SONAR_OK);
    cr_assert_not(sonar_tally_complete(t));
    cr_assert_eq(answer(t, "c1", "e", SONAR_NONE, NULL), SONAR_OK);
    cr_assert(sonar_tally_complete(t));
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 150, NULL, &r), SONAR_OK);
    cr_assert_eq(r.verdict, SONAR_PASS);
    cr_assert_eq(r.duration_ms, 50);
    cr_assert_str_eq(r.started_at, "2023-11-14T22:13:20.000Z");
    cr_assert_eq(r.counts.expected, 5);
    cr_assert_eq(r.counts.pass, 2);
    cr_assert_eq(r.counts.none, 3);
    cr_assert_eq(r.counts.fail + r.counts.incomplete, 0);
    cr_assert_eq(r.n_results, 5);
    cr_assert_str_eq(r.results[0].service, "a");
    cr_assert_eq(r.results[0].n_checks, 1);
    cr_assert_str_eq(r.results[0].checks[0].name, "pick");
    sonar_report_finish(&r);
    sonar_tally_destroy(t);
}

Test(gather, one_failure_makes_the_verdict_fail_even_with_silence)
{
    const char *live[] = {"a", "b", "c"};
    sonar_tally *t = tally(3, live, 0, NULL);
    cr_assert_eq(answer(t, "c1", "a", SONAR_FAIL, "GET /pick -> 404, expected 200"), SONAR_OK);
    cr_assert_eq(answer(t, "c1", "b", SONAR_PASS, NULL), SONAR_OK);
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 1100, NULL, &r), SONAR_OK);
    cr_assert_eq(r.verdict, SONAR_FAIL);
    cr_assert_eq(r.counts.fail, 1);
    cr_assert_eq(r.counts.incomplete, 1);
    cr_assert_str_eq(entry(&r, "a")->checks[0].message, "GET /pick -> 404, expected 200");
    cr_assert_eq(entry(&r, "c")->status, SONAR_INCOMPLETE);
    cr_assert_str_eq(entry(&r, "c")->reason, SONARD_REASON_NO_ANSWER);
    sonar_report_finish(&r);
    sonar_tally_destroy(t);
}

Test(gather, silence_and_down_dependents_make_it_incomplete_with_reasons)
{
    const char *live[] = {"a", "b"};
    const char *down[] = {"gone"};
    sonar_tally *t = tally(2, live, 1, down);
    cr_assert_eq(answer(t, "c1", "a", SONAR_PASS, NULL), SONAR_OK);
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 1100, NULL, &r), SONAR_OK);
    cr_assert_eq(r.verdict, SONAR_INCOMPLETE);
    cr_assert_eq(r.counts.expected, 2);
    cr_assert_eq(r.counts.incomplete, 2);
    cr_assert_str_eq(entry(&r, "b")->reason, "no answer by the deadline");
    cr_assert_str_eq(entry(&r, "gone")->reason, "registered with no live instance");
    sonar_report_finish(&r);
    sonar_tally_destroy(t);
}

Test(gather, nobody_live_is_complete_at_once)
{
    const char *down[] = {"gone"};
    sonar_tally *t = tally(0, NULL, 1, down);
    cr_assert(sonar_tally_complete(t));
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 100, NULL, &r), SONAR_OK);
    cr_assert_eq(r.verdict, SONAR_INCOMPLETE);
    sonar_report_finish(&r);
    sonar_tally_destroy(t);
}

Test(gather, unregistered_answers_are_included_and_flagged)
{
    const char *live[] = {"a"};
    sonar_tally *t = tally(1, live, 0, NULL);
    cr_assert_eq(answer(t, "c1", "stranger", SONAR_NONE, NULL), SONAR_OK);
    cr_assert_not(sonar_tally_complete(t), "an unregistered answer does not count as expected");
    cr_assert_eq(answer(t, "c1", "a", SONAR_PASS, NULL), SONAR_OK);
    cr_assert(sonar_tally_complete(t));
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 100, NULL, &r), SONAR_OK);
    cr_assert_eq(r.n_results, 2);
    const sonar_report_entry *e = entry(&r, "stranger");
    cr_assert(e->unregistered);
    cr_assert_eq(e->status, SONAR_NONE);
    cr_assert_str_eq(e->reason, SONARD_REASON_UNREGISTERED);
    cr_assert_not(entry(&r, "a")->unregistered);
    cr_assert_eq(r.verdict, SONAR_PASS);
    sonar_report_finish(&r);
    sonar_tally_destroy(t);
}

Test(gather, an_unexpected_answer_from_a_known_service_is_not_flagged)
{
    const char *live[] = {"a"};
    sonar_tally *t = tally(1, live, 0, NULL);
    cr_assert_eq(answer(t, "c1", "known-late", SONAR_NONE, NULL), SONAR_OK);
    cr_assert_eq(answer(t, "c1", "a", SONAR_NONE, NULL), SONAR_OK);
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 100, NULL, &r), SONAR_OK);
    cr_assert_eq(r.n_results, 2);
    cr_assert_not(entry(&r, "known-late")->unregistered);
    cr_assert_str_eq(entry(&r, "known-late")->reason, "");
    sonar_report_finish(&r);
    sonar_tally_destroy(t);
}

Test(gather, a_down_dependent_that_answers_counts_its_answer)
{
    const char *down[] = {"gone"};
    sonar_tally *t = tally(0, NULL, 1, down);
    cr_assert_eq(answer(t, "c1", "gone", SONAR_PASS, NULL), SONAR_OK);
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 100, NULL, &r), SONAR_OK);
    cr_assert_eq(entry(&r, "gone")->status, SONAR_PASS);
    cr_assert_eq(r.verdict, SONAR_PASS);
    sonar_report_finish(&r);
    sonar_tally_destroy(t);
}

Test(gather, the_first_answer_wins_and_wrong_changes_are_refused)
{
    const char *live[] = {"a", "b"};
    sonar_tally *t = tally(2, live, 0, NULL);
    cr_assert_eq(answer(t, "c1", "a", SONAR_PASS, NULL), SONAR_OK);
    cr_assert_eq(answer(t, "c1", "a", SONAR_FAIL, "late twin"), SONAR_OK);
    cr_assert_eq(sonar_tally_answered(t), 1);
    cr_assert_eq(answer(t, "other", "b", SONAR_PASS, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(answer(t, "c1", "b", SONAR_INCOMPLETE, NULL), SONAR_ERR_INVALID);
    cr_assert_not(sonar_tally_complete(t));
    sonar_report_msg r;
    cr_assert_eq(sonar_tally_report(t, 100, "shutting down", &r), SONAR_OK);
    cr_assert_eq(entry(&r, "a")->status, SONAR_PASS);
    cr_assert_str_eq(entry(&r, "b")->reason, "shutting down");
    sonar_report_finish(&r);
    cr_assert_eq(sonar_tally_report(t, 100, NULL, &r), SONAR_ERR_STATE, "only once");
    cr_assert_eq(answer(t, "c1", "b", SONAR_PASS, NULL), SONAR_ERR_STATE);
    sonar_tally_destroy(t);
}

Test(gather, the_check_timeout_leaves_a_margin_before_the_deadline)
{
    cr_assert_eq(sonar_gather_check_timeout(10000), 9000);
    cr_assert_eq(sonar_gather_check_timeout(60000), 59000);
    cr_assert_eq(sonar_gather_check_timeout(100), 90);
    cr_assert_eq(sonar_gather_check_timeout(1), 1);
}
