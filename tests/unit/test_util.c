#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>

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
