/* sonar-gateway's parameter parsers (services/gateway/params.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "params.h"

static int64_t time_ok(const char *text)
{
    int64_t v = -1;
    char why[160] = "";
    cr_assert(sonar_gw_parse_time(text, &v, why, sizeof why), "%s: %s", text, why);
    return v;
}

static void time_bad(const char *text, const char *reason)
{
    int64_t v = 42;
    char why[160] = "";
    cr_assert(!sonar_gw_parse_time(text, &v, why, sizeof why), "%s parsed", text);
    cr_assert_eq(v, 42, "out written on failure");
    cr_assert(strstr(why, reason) != NULL, "%s: %s", text, why);
}

Test(gateway_params, rfc3339_times_become_epoch_milliseconds)
{
    cr_assert_eq(time_ok("1970-01-01T00:00:00Z"), 0);
    cr_assert_eq(time_ok("2026-11-23T18:30:00Z"), 1795458600000LL);
    cr_assert_eq(time_ok("2026-11-23T18:30:00.123Z"), 1795458600123LL);
    cr_assert_eq(time_ok("2026-11-23t18:30:00.5z"), 1795458600500LL);
    cr_assert_eq(time_ok("2026-11-23T20:30:00+02:00"), 1795458600000LL);
    cr_assert_eq(time_ok("2026-11-23T13:00:00-05:30"), 1795458600000LL);
    cr_assert_eq(time_ok("2024-02-29T00:00:00Z"), 1709164800000LL, "leap day");
    cr_assert_eq(time_ok("2026-11-23T18:30:00.123456789Z"), 1795458600123LL);
}

Test(gateway_params, epoch_milliseconds_are_taken_as_they_are)
{
    cr_assert_eq(time_ok("0"), 0);
    cr_assert_eq(time_ok("1795458600123"), 1795458600123LL);
    time_bad("9999999999999999", "out of range");
}

Test(gateway_params, bad_times_are_refused_with_a_reason)
{
    const char *bad[] = {"yesterday", "2026-11-23", "2026-11-23 18:30:00Z", "2026-13-01T00:00:00Z",
                         "2026-02-29T00:00:00Z", "2026-11-31T00:00:00Z", "2026-11-23T24:00:00Z",
                         "2026-11-23T18:60:00Z", "2026-11-23T18:30:00", "2026-11-23T18:30:00.Z",
                         "2026-11-23T18:30:00Zjunk", "2026-11-23T18:30:00+2:00", "-5", "1e9",
                         "1969-12-31T23:59:59Z", " 1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        time_bad(bad[i], "is not a time");
    time_bad("", "is empty");
}

Test(gateway_params, integers_must_be_plain_and_in_range)
{
    int64_t v = 7;
    cr_assert(sonar_gw_parse_int("20", 1, 1000, &v));
    cr_assert_eq(v, 20);
    cr_assert(sonar_gw_parse_int("1000", 1, 1000, &v));
    const char *bad[] = {"0", "1001", "", " 5", "+5", "5 ", "5x", "0x10", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 7;
        cr_assert(!sonar_gw_parse_int(bad[i], 1, 1000, &v), "\"%s\" accepted", bad[i]);
        cr_assert_eq(v, 7);
    }
}

Test(gateway_params, metric_names_follow_the_prometheus_rule)
{
    cr_assert(sonar_gw_metric_name_valid("http_requests_total"));
    cr_assert(sonar_gw_metric_name_valid("_x:y9"));
    cr_assert(sonar_gw_metric_name_valid("up"));
    cr_assert(!sonar_gw_metric_name_valid(""));
    cr_assert(!sonar_gw_metric_name_valid("9lives"));
    cr_assert(!sonar_gw_metric_name_valid("a-b"));
    cr_assert(!sonar_gw_metric_name_valid("a b"));
    char longname[SONAR_GW_METRIC_NAME_MAX + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cr_assert(!sonar_gw_metric_name_valid(longname));
}

Test(gateway_params, target_urls_are_http_with_a_host)
{
    cr_assert(sonar_gw_url_valid("http://10.0.0.9:8080/health"));
    cr_assert(sonar_gw_url_valid("https://shop.example/healthz?full=1"));
    const char *bad[] = {"", "ftp://h/", "http://", "http:///x", "http://h/a b", "http://h/\n",
                         "nats", "HTTP//h"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert(!sonar_gw_url_valid(bad[i]), "\"%s\" accepted", bad[i]);
    cr_assert(!sonar_gw_url_valid(NULL));
}
