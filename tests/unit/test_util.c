#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "sonar/sonar.h"

Test(util, names_follow_the_subject_token_rule)
{
    cr_assert(sonar_name_valid("chillybin"));
    cr_assert(sonar_name_valid("a-b_C9"));
    cr_assert(sonar_name_valid("x"));
    char max[65];
    memset(max, 'a', 64);
    max[64] = '\0';
    cr_assert(sonar_name_valid(max));
    char over[66];
    memset(over, 'a', 65);
    over[65] = '\0';
    cr_assert_not(sonar_name_valid(over));
    cr_assert_not(sonar_name_valid(""));
    cr_assert_not(sonar_name_valid(NULL));
    cr_assert_not(sonar_name_valid("a.b"));
    cr_assert_not(sonar_name_valid("a*"));
    cr_assert_not(sonar_name_valid(">"));
    cr_assert_not(sonar_name_valid("a b"));
    cr_assert_not(sonar_name_valid("caf\xc3\xa9"));
}

Test(util, name_check_explains_the_rule)
{
    cr_assert_eq(sonar_name_check("service name", "bad.name"), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "bad.name") != NULL);
    cr_assert(strstr(sonar_last_error(), "^[A-Za-z0-9_-]{1,64}$") != NULL);
    cr_assert_eq(sonar_name_check("service name", NULL), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "missing") != NULL);
    cr_assert_eq(sonar_name_check("service name", "ok"), SONAR_OK);
    /* Non-ASCII bytes never reach the error text (it must stay valid UTF-8). */
    cr_assert_eq(sonar_name_check("service name", "caf\xc3\xa9"), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "\"caf??\"") != NULL, "%s", sonar_last_error());
}

Test(util, durations_parse_with_units)
{
    int64_t ms = -1;
    cr_assert_eq(sonar_parse_duration_ms("10s", &ms), SONAR_OK);
    cr_assert_eq(ms, 10000);
    cr_assert_eq(sonar_parse_duration_ms("250ms", &ms), SONAR_OK);
    cr_assert_eq(ms, 250);
    cr_assert_eq(sonar_parse_duration_ms("2m", &ms), SONAR_OK);
    cr_assert_eq(ms, 120000);
    cr_assert_eq(sonar_parse_duration_ms("1h", &ms), SONAR_OK);
    cr_assert_eq(ms, 3600000);
    cr_assert_eq(sonar_parse_duration_ms("30d", &ms), SONAR_OK);
    cr_assert_eq(ms, 30LL * 86400000);
    cr_assert_eq(sonar_parse_duration_ms("1.5s", &ms), SONAR_OK);
    cr_assert_eq(ms, 1500);
    cr_assert_eq(sonar_parse_duration_ms("42", &ms), SONAR_OK);
    cr_assert_eq(ms, 42);
    ms = 7;
    cr_assert_eq(sonar_parse_duration_ms("10x", &ms), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_parse_duration_ms("", &ms), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_parse_duration_ms("-3s", &ms), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_parse_duration_ms("abc", &ms), SONAR_ERR_INVALID);
    cr_assert_eq(ms, 7, "output must be untouched on failure");
}

Test(util, random_ids_are_valid_names_and_differ)
{
    char a[23], b[23];
    sonar_random_id(a);
    sonar_random_id(b);
    cr_assert_eq(strlen(a), 22);
    cr_assert(sonar_name_valid(a));
    cr_assert_str_neq(a, b);
}

Test(util, rfc3339_formats_utc_with_millis)
{
    char buf[40];
    sonar_format_rfc3339(1700000000123LL, buf, sizeof buf);
    cr_assert_str_eq(buf, "2023-11-14T22:13:20.123Z");
}

Test(util, status_strings_are_never_null)
{
    for (int s = SONAR_OK; s <= SONAR_ERR_LIMIT; s++)
        cr_assert_not_null(sonar_status_str((sonar_status)s));
    cr_assert_str_eq(sonar_status_str(SONAR_OK), "ok");
}

Test(util, a_blocked_stop_signal_is_waited_for_not_fatal)
{
    sonar_stop_signals_block();
    raise(SIGTERM); /* pending, not delivered: the process survives */
    cr_assert_eq(sonar_stop_signal_wait(), SIGTERM);
    raise(SIGINT);
    cr_assert_eq(sonar_stop_signal_wait(), SIGINT);
}

static void *lower_by_three(void *arg)
{
    int *out = arg;
    pthread_setname_np(pthread_self(), "lowered");
    out[0] = sonar_thread_lower_priority(3);
    errno = 0;
    out[1] = getpriority(PRIO_PROCESS, (id_t)gettid());
    return NULL;
}

Test(util, lowering_a_threads_priority_leaves_the_others_alone)
{
    errno = 0;
    int before = getpriority(PRIO_PROCESS, (id_t)gettid());
    int got[2] = {-1, -1};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, lower_by_three, got), 0);
    pthread_join(t, NULL);
    cr_assert_eq(got[0], SONAR_OK);
    cr_assert_eq(got[1], before + 3 > 19 ? 19 : before + 3);
    cr_assert_eq(getpriority(PRIO_PROCESS, (id_t)gettid()), before, "the caller's thread changed");
    cr_assert_eq(sonar_thread_lower_priority(-1), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_thread_lower_priority(40), SONAR_ERR_INVALID);
    cr_assert_eq(getpriority(PRIO_PROCESS, (id_t)gettid()), before);
}

/* Runs sonar_log with stderr on a pipe and returns what was written. */
static char *logged(const char *msg)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fcntl(fds[0], F_SETPIPE_SZ, 1 << 16);
    int saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    sonar_log_set_name("logtest");
    sonar_log(SONAR_LOG_WARN, "%s", msg);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    char *buf = calloc(1, 1 << 16);
    size_t len = 0;
    ssize_t n;
    while ((n = read(fds[0], buf + len, (1 << 16) - 1 - len)) > 0)
        len += (size_t)n;
    close(fds[0]);
    sonar_log_set_name(NULL);
    return buf;
}

Test(util, a_log_line_is_one_line_and_a_long_one_is_cut_visibly)
{
    char *out = logged("disk 93% full");
    cr_assert(strstr(out, " warn logtest: disk 93% full\n") != NULL, "%s", out);
    cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "one line: %s", out);
    free(out);
    char *big = malloc(10000);
    memset(big, 'x', 9999);
    big[9999] = '\0';
    out = logged(big);
    size_t len = strlen(out);
    cr_assert_eq(len, 4095, "a cut line is PIPE_BUF-sized at most, got %zu", len);
    cr_assert_eq(strcmp(out + len - 4, "...\n"), 0, "the cut is marked");
    cr_assert_eq(strchr(out, '\n'), out + len - 1);
    free(out);
    free(big);
}
