/* sonard's memory of other coordinators' gathers (services/coordinator/remote.c). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "remote.h"
#include "sonar/sonar.h"

static sonar_remote *r;

static void setup(void)
{
    cr_assert_eq(sonar_remote_create(&r), SONAR_OK);
}

static void teardown(void)
{
    sonar_remote_destroy(r);
    r = NULL;
}

TestSuite(remote, .init = setup, .fini = teardown, .timeout = 30);

Test(remote, an_unknown_change_is_not_waited_for)
{
    char *report = NULL;
    int64_t t0 = sonar_now_ms();
    cr_assert_not(sonar_remote_wait(r, "nobody", &report));
    cr_assert_lt(sonar_now_ms() - t0, 1000, "returned at once");
    cr_assert_null(report);
    cr_assert_eq(sonar_remote_count(r), 0);
}

Test(remote, the_report_of_a_noted_gather_is_handed_to_its_waiters)
{
    sonar_remote_begun(r, "c1", sonar_now_ms() + 60000);
    cr_assert_eq(sonar_remote_count(r), 1);
    const char *text = "{\"type\":\"sonar.report.v1\"}trailing";
    sonar_remote_report(r, "c1", text, 26); /* only len bytes count */
    char *report = NULL;
    cr_assert(sonar_remote_wait(r, "c1", &report));
    cr_assert_str_eq(report, "{\"type\":\"sonar.report.v1\"}");
    free(report);
    /* Kept for later retries too. */
    cr_assert(sonar_remote_wait(r, "c1", &report));
    free(report);
}

Test(remote, a_report_of_a_gather_never_noted_is_ignored)
{
    sonar_remote_report(r, "c2", "{}", 2);
    char *report = NULL;
    cr_assert_not(sonar_remote_wait(r, "c2", &report));
    cr_assert_eq(sonar_remote_count(r), 0);
}

typedef struct waiter_arg {
    bool got;
    char *report;
} waiter_arg;

static void *wait_c3(void *arg)
{
    waiter_arg *w = arg;
    w->got = sonar_remote_wait(r, "c3", &w->report);
    return NULL;
}

Test(remote, a_waiter_wakes_when_the_report_arrives)
{
    sonar_remote_begun(r, "c3", sonar_now_ms() + 60000);
    waiter_arg w = {0};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, wait_c3, &w), 0);
    sonar_remote_report(r, "c3", "{\"x\":1}", 7);
    pthread_join(t, NULL);
    cr_assert(w.got);
    cr_assert_str_eq(w.report, "{\"x\":1}");
    free(w.report);
}

Test(remote, a_gather_whose_report_never_comes_is_given_up_after_its_deadline_and_grace)
{
    /* The deadline passed 1.8 s ago: 200 ms of grace are left. */
    sonar_remote_begun(r, "c4", sonar_now_ms() - SONAR_REMOTE_GRACE_MS + 200);
    char *report = NULL;
    int64_t t0 = sonar_now_ms();
    cr_assert_not(sonar_remote_wait(r, "c4", &report));
    int64_t waited = sonar_now_ms() - t0;
    cr_assert_geq(waited, 150, "gave up after %lld ms, before the grace ended", (long long)waited);
    cr_assert_null(report);
}

Test(remote, cancel_wakes_waiters_and_refuses_new_waits)
{
    sonar_remote_begun(r, "c3", sonar_now_ms() + 60000);
    waiter_arg w = {0};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, wait_c3, &w), 0);
    sonar_remote_cancel(r);
    pthread_join(t, NULL);
    cr_assert_not(w.got);
    char *report = NULL;
    cr_assert_not(sonar_remote_wait(r, "c3", &report));
}

Test(remote, a_later_note_keeps_the_later_deadline_and_the_oldest_go_beyond_the_cap)
{
    int64_t now = sonar_now_ms();
    sonar_remote_begun(r, "c5", now - SONAR_REMOTE_GRACE_MS - 1000); /* already given up */
    sonar_remote_begun(r, "c5", now + 60000);
    sonar_remote_begun(r, "c5", now - 5000); /* an earlier deadline does not shorten it */
    sonar_remote_report(r, "c5", "{}", 2);
    char *report = NULL;
    cr_assert(sonar_remote_wait(r, "c5", &report), "the deadline was not kept");
    free(report);
    sonar_remote_begun(r, "bad id", now + 60000); /* not a valid change id: ignored */
    cr_assert_eq(sonar_remote_count(r), 1);
    char id[32];
    for (int i = 0; i < SONAR_REMOTE_MAX; i++) {
        snprintf(id, sizeof id, "fill-%d", i);
        sonar_remote_begun(r, id, now + 60000);
    }
    cr_assert_eq(sonar_remote_count(r), SONAR_REMOTE_MAX);
    sonar_remote_report(r, "c5", "{}", 2);
    cr_assert_not(sonar_remote_wait(r, "c5", &report), "the oldest entry was not dropped");
    sonar_remote_report(r, "fill-0", "{}", 2);
    cr_assert(sonar_remote_wait(r, "fill-0", &report));
    free(report);
}
