/*
 * kitchen (services/examples/kitchen): the parsing at the boundary both
 * example services rely on — integers, names, shared flags, announced URLs.
 */
#include <criterion/criterion.h>

#include <string.h>

#include "kitchen.h"

typedef struct int_case {
    const char *text;
    long long min, max;
    bool ok;
    long long value;
} int_case;

Test(kitchen, parse_int_accepts_only_plain_decimals_in_range)
{
    static const int_case cases[] = {
        { "1", 1, 100, true, 1 },          { "100", 1, 100, true, 100 },
        { "0", 0, 5, true, 0 },            { "-3", -5, 5, true, -3 },
        { "101", 1, 100, false, 0 },       { "0", 1, 100, false, 0 },
        { "-1", 1, 100, false, 0 },        { "", 1, 100, false, 0 },
        { " 1", 1, 100, false, 0 },        { "1 ", 1, 100, false, 0 },
        { "+1", 1, 100, false, 0 },        { "1.5", 1, 100, false, 0 },
        { "1e2", 1, 100, false, 0 },       { "0x10", 1, 100, false, 0 },
        { "12abc", 1, 100, false, 0 },     { "-", -5, 5, false, 0 },
        { "99999999999999999999", 1, 100, false, 0 },
        { "9223372036854775807", 1, 100, false, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int_case *c = &cases[i];
        long long out = -42;
        bool ok = kitchen_parse_int(c->text, c->min, c->max, &out);
        cr_expect_eq(ok, c->ok, "\"%s\" in [%lld, %lld]", c->text, c->min, c->max);
        cr_expect_eq(out, c->ok ? c->value : -42, "\"%s\": out written only on success",
                     c->text);
    }
    long long out = 7;
    cr_expect(!kitchen_parse_int(NULL, 0, 1, &out));
    cr_expect_eq(out, 7);
}

Test(kitchen, names_are_lower_case_tokens_of_at_most_64)
{
    static const char *const good[] = { "cheese", "a", "probe-x_1", "0", NULL };
    static const char *const bad[] = { "", "Cheese", "ham sandwich", "a.b", "a/b", "é", "a*",
                                       NULL };
    for (size_t i = 0; good[i] != NULL; i++)
        cr_expect(kitchen_name_valid(good[i]), "%s", good[i]);
    for (size_t i = 0; bad[i] != NULL; i++)
        cr_expect(!kitchen_name_valid(bad[i]), "%s", bad[i]);
    char longest[66];
    memset(longest, 'a', 65);
    longest[65] = '\0';
    cr_expect(!kitchen_name_valid(longest), "65 characters");
    longest[64] = '\0';
    cr_expect(kitchen_name_valid(longest), "64 characters");
    cr_expect(!kitchen_name_valid(NULL));
}

Test(kitchen, shared_flags_are_applied_or_refused)
{
    kitchen_flags f = { .address = "127.0.0.1", .port = 8080, .join = true };
    cr_expect_eq(kitchen_flag(&f, "t", 'p', "9090"), 1);
    cr_expect_eq(f.port, 9090);
    cr_expect_eq(kitchen_flag(&f, "t", 'p', "0"), -1);
    cr_expect_eq(kitchen_flag(&f, "t", 'p', "65536"), -1);
    cr_expect_eq(f.port, 9090, "a refused value changes nothing");
    cr_expect_eq(kitchen_flag(&f, "t", 'n', NULL), 1);
    cr_expect(!f.join);
    cr_expect_eq(kitchen_flag(&f, "t", 'v', "1.2.3"), 1);
    cr_expect_str_eq(f.version, "1.2.3");
    cr_expect_eq(kitchen_flag(&f, "t", 'A', "http://10.0.0.7:8081"), 1);
    cr_expect_str_eq(f.advertise, "http://10.0.0.7:8081");
    cr_expect_eq(kitchen_flag(&f, "t", 'A', "10.0.0.7:8081"), -1, "no scheme");
    cr_expect_str_eq(f.advertise, "http://10.0.0.7:8081");
    cr_expect_eq(kitchen_flag(&f, "t", 'd', "x"), 0, "not a shared flag");
}

Test(kitchen, announced_urls_follow_advertise_or_the_listening_address)
{
    kitchen_urls u;
    kitchen_urls_init(&u, NULL, "0.0.0.0", 8081);
    cr_expect_str_eq(u.base, "http://127.0.0.1:8081");
    cr_expect_str_eq(u.health, "http://127.0.0.1:8081/health");
    cr_expect_str_eq(u.metrics, "http://127.0.0.1:8081/metrics");
    kitchen_urls_init(&u, NULL, "10.0.0.7", 80);
    cr_expect_str_eq(u.base, "http://10.0.0.7:80");
    kitchen_urls_init(&u, "https://chillybin.example", "0.0.0.0", 8081);
    cr_expect_str_eq(u.health, "https://chillybin.example/health");
}
