/* The CLI's output: report/services/history tables, DOT, feed lines and
 * the watch filter (services/cli/cli_format.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_format.h"

/* Output capture: a FILE writing into a string. */
static char *cap_buf;
static size_t cap_len;
static FILE *cap;

static void cap_open(void)
{
    cap_buf = NULL;
    cap_len = 0;
    cap = open_memstream(&cap_buf, &cap_len);
    cr_assert_not_null(cap);
}

static const char *cap_text(void)
{
    fflush(cap);
    return cap_buf;
}

static void cap_close(void)
{
    if (cap)
        fclose(cap);
    cap = NULL;
    free(cap_buf);
    cap_buf = NULL;
}

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    cr_assert_not_null(v, "test JSON does not parse: %s", e.text);
    return v;
}

/* The line of \p text that contains \p needle (new), or NULL. */
static char *line_with(const char *text, const char *needle)
{
    const char *hit = strstr(text, needle);
    if (hit == NULL)
        return NULL;
    const char *start = hit;
    while (start > text && start[-1] != '\n')
        start--;
    const char *end = strchr(hit, '\n');
    size_t n = end ? (size_t)(end - start) : strlen(start);
    return strndup(start, n);
}

static const char *report_json =
    "{\"type\":\"sonar.report.v1\",\"change_id\":\"c1\",\"service\":\"chillybin\","
    "\"version\":\"2.0.0\",\"address\":\"http://10.0.0.5:8081\",\"verdict\":\"fail\","
    "\"started_at\":\"2026-11-23T18:30:00.000Z\",\"duration_ms\":123,"
    "\"counts\":{\"expected\":4,\"pass\":1,\"fail\":1,\"none\":1,\"incomplete\":1},"
    "\"results\":["
    "{\"service\":\"orders\",\"status\":\"fail\",\"reason\":\"\",\"duration_ms\":35,"
    " \"checks\":[{\"name\":\"health\",\"status\":\"pass\",\"duration_ms\":3,\"message\":\"\"},"
    "             {\"name\":\"pick\",\"status\":\"fail\",\"duration_ms\":30,"
    "              \"message\":\"GET /pick?name=cheese \\u2192 404, expected 200\"}]},"
    "{\"service\":\"menu\",\"status\":\"pass\",\"reason\":\"\",\"duration_ms\":5,"
    " \"checks\":[{\"name\":\"list\",\"status\":\"pass\",\"duration_ms\":5,\"message\":\"\"}]},"
    "{\"service\":\"billing\",\"status\":\"none\",\"reason\":\"\",\"duration_ms\":1,\"checks\":[]},"
    "{\"service\":\"frozen\",\"status\":\"incomplete\",\"reason\":\"no answer by the deadline\","
    " \"duration_ms\":0,\"checks\":[]},"
    "{\"service\":\"stranger\",\"status\":\"none\",\"reason\":\"\",\"unregistered\":true,"
    " \"duration_ms\":1,\"checks\":[]}]}";

Test(cli_format, report_table_shows_status_checks_and_failing_messages, .fini = cap_close)
{
    json_t *r = parse(report_json);
    cap_open();
    sonar_cli_print_report(cap, r);
    const char *out = cap_text();

    cr_assert(strstr(out, "change c1: chillybin 2.0.0 at http://10.0.0.5:8081") != NULL, "%s", out);
    char *header = line_with(out, "SERVICE");
    cr_assert_not_null(header);
    cr_assert(strstr(header, "STATUS") && strstr(header, "CHECKS") && strstr(header, "REASON"));
    /* Columns line up: STATUS starts at the same column as "fail" on the orders row. */
    char *orders = line_with(out, "orders");
    cr_assert_not_null(orders);
    cr_assert_eq(strstr(header, "STATUS") - header, strstr(orders, "fail") - orders);
    cr_assert_eq(strstr(header, "CHECKS") - header, strstr(orders, "1 of 2 failed") - orders);
    cr_assert(strstr(orders, "pick: GET /pick?name=cheese \xe2\x86\x92 404, expected 200") != NULL,
              "failing check message missing: %s", orders);
    char *menu = line_with(out, "menu");
    cr_assert(strstr(menu, "1/1 passed") != NULL, "%s", menu);
    char *frozen = line_with(out, "frozen");
    cr_assert(strstr(frozen, "incomplete") && strstr(frozen, "no answer by the deadline"));
    char *stranger = line_with(out, "stranger");
    cr_assert(strstr(stranger, "not in the registry") != NULL, "%s", stranger);
    cr_assert(strstr(out, "verdict: FAIL (expected 4: 1 pass, 1 fail, 1 none, 1 incomplete) "
                          "in 123 ms") != NULL, "%s", out);
    free(header);
    free(orders);
    free(menu);
    free(frozen);
    free(stranger);
    json_decref(r);
}

Test(cli_format, verdict_maps_to_exit_code)
{
    const char *cases[][2] = {{"pass", "0"}, {"fail", "1"}, {"incomplete", "2"}, {"maybe", "3"}};
    for (size_t i = 0; i < 4; i++) {
        json_t *r = json_pack("{s:s}", "verdict", cases[i][0]);
        cr_assert_eq(sonar_cli_verdict_exit(r), atoi(cases[i][1]), "%s", cases[i][0]);
        json_decref(r);
    }
    json_t *empty = json_object();
    cr_assert_eq(sonar_cli_verdict_exit(empty), 3);
    json_decref(empty);
}

Test(cli_format, report_without_results_says_nobody_was_expected, .fini = cap_close)
{
    json_t *r = parse("{\"type\":\"sonar.report.v1\",\"change_id\":\"c2\",\"service\":\"a\","
                      "\"verdict\":\"pass\",\"counts\":{\"expected\":0},\"results\":[]}");
    cap_open();
    sonar_cli_print_report(cap, r);
    cr_assert(strstr(cap_text(), "no service was expected to answer") != NULL);
    cr_assert(strstr(cap_text(), "verdict: PASS") != NULL);
    json_decref(r);
}

Test(cli_format, control_characters_never_reach_the_terminal, .fini = cap_close)
{
    json_t *r = parse("{\"change_id\":\"c\",\"verdict\":\"fail\",\"results\":[{\"service\":\"x\","
                      "\"status\":\"fail\",\"checks\":[{\"name\":\"evil\",\"status\":\"fail\","
                      "\"message\":\"line1\\nline2\\u001b[2J\\u0007end\"}]}]}");
    cap_open();
    sonar_cli_print_report(cap, r);
    sonar_cli_print_result_line(cap, json_array_get(json_object_get(r, "results"), 0));
    const char *out = cap_text();
    cr_assert(strchr(out, '\033') == NULL, "ESC leaked");
    cr_assert(strchr(out, '\a') == NULL, "BEL leaked");
    cr_assert(strstr(out, "line1 line2?[2J?end") != NULL, "%s", out);
    json_decref(r);

    char *s = sonar_cli_sanitize("a\tb\x01");
    cr_assert_str_eq(s, "a b?");
    free(s);
    s = sonar_cli_sanitize(NULL);
    cr_assert_str_eq(s, "-");
    free(s);
}

Test(cli_format, result_lines_summarise_each_answer, .fini = cap_close)
{
    json_t *r = parse(report_json);
    json_t *results = json_object_get(r, "results");
    cap_open();
    sonar_cli_print_result_line(cap, json_array_get(results, 0));
    sonar_cli_print_result_line(cap, json_array_get(results, 1));
    sonar_cli_print_result_line(cap, json_array_get(results, 2));
    const char *out = cap_text();
    cr_assert(strstr(out, "orders: fail, 1 of 2 checks failed (35 ms):\n    pick: GET /pick") != NULL,
              "%s", out);
    cr_assert(strstr(out, "menu: pass, 1 check passed (5 ms)\n") != NULL, "%s", out);
    cr_assert(strstr(out, "billing: none, no checks on this service") != NULL, "%s", out);
    json_decref(r);
}

Test(cli_format, table_aligns_by_characters_not_bytes, .fini = cap_close)
{
    static const char *const h[] = {"A", "B"};
    sonar_cli_table *t = sonar_cli_table_create(2, h);
    const char *r1[] = {"\xe2\x86\x92\xe2\x86\x92", "x"}; /* two arrows: 2 columns, 6 bytes */
    const char *r2[] = {"abc", "y"};
    const char *r3[] = {NULL, "z"};
    cr_assert(sonar_cli_table_add(t, r1));
    cr_assert(sonar_cli_table_add(t, r2));
    cr_assert(sonar_cli_table_add(t, r3));
    cap_open();
    sonar_cli_table_print(t, cap);
    cr_assert_str_eq(cap_text(), "A    B\n\xe2\x86\x92\xe2\x86\x92   x\nabc  y\n-    z\n");
    sonar_cli_table_destroy(t);
    sonar_cli_table_destroy(NULL);
    cr_assert_eq(sonar_cli_text_width("\xe2\x86\x92x"), 2);
}

Test(cli_format, several_failing_checks_get_a_line_each, .fini = cap_close)
{
    json_t *r = parse("{\"change_id\":\"c\",\"service\":\"s\",\"verdict\":\"fail\","
                      "\"results\":[{\"service\":\"jafflr\",\"status\":\"fail\",\"checks\":["
                      "{\"name\":\"a\",\"status\":\"fail\",\"message\":\"first\\nwrong\"},"
                      "{\"name\":\"b\",\"status\":\"pass\",\"message\":\"\"},"
                      "{\"name\":\"c\",\"status\":\"fail\",\"message\":\"second\"}]},"
                      "{\"service\":\"hello\",\"status\":\"pass\",\"checks\":[]}]}");
    cap_open();
    sonar_cli_print_report(cap, r);
    const char *out = cap_text();
    /* The second failing check continues the row, aligned under REASON;
     * a newline inside a message does not break the table. */
    cr_assert(strstr(out, "SERVICE  STATUS  CHECKS         REASON\n"
                          "jafflr   fail    2 of 3 failed  a: first wrong\n"
                          "                                c: second\n"
                          "hello    pass    -              -\n") != NULL, "%s", out);
    cap_close();
    cap_open();
    sonar_cli_print_result_line(cap, json_array_get(json_object_get(r, "results"), 0));
    cr_assert_str_eq(cap_text(), "jafflr: fail, 2 of 3 checks failed (0 ms):\n"
                                 "    a: first wrong\n"
                                 "    c: second\n");
    cap_close();
    cap_open();
    sonar_cli_print_event(cap, SONAR_CLI_EV_RESULT, "sonar.result.c.jafflr",
                          json_array_get(json_object_get(r, "results"), 0), 0, false);
    cr_assert(strstr(cap_text(), "(0 ms): a: first wrong; c: second\n") != NULL, "%s", cap_text());
    cr_assert_eq(strchr(cap_text(), '\n'), cap_text() + strlen(cap_text()) - 1, "one line in watch");
    json_decref(r);
}

Test(cli_format, services_table_lists_instances_versions_and_dependencies, .fini = cap_close)
{
    json_t *s = parse(
        "{\"type\":\"sonar.services.v1\",\"services\":["
        "{\"service\":\"orders\",\"live\":true,\"last_seen\":\"2026-11-23T18:30:00.000Z\","
        " \"versions\":[\"1.0.0\",\"1.1.0\"],\"depends_on\":[\"chillybin\",\"menu\"],"
        " \"instances\":[{\"instance\":\"a\"},{\"instance\":\"b\"}]},"
        "{\"service\":\"gone\",\"live\":false,\"last_seen\":\"2026-11-22T10:00:00.000Z\","
        " \"versions\":[\"0.1\"],\"depends_on\":[],\"instances\":[]}]}");
    cap_open();
    sonar_cli_print_services(cap, s);
    const char *out = cap_text();
    char *header = line_with(out, "SERVICE");
    cr_assert(header && strstr(header, "LIVE") && strstr(header, "VERSIONS") &&
              strstr(header, "LAST SEEN") && strstr(header, "DEPENDS ON"));
    char *orders = line_with(out, "orders");
    cr_assert(strstr(orders, " 2 ") != NULL, "%s", orders);
    cr_assert(strstr(orders, "1.0.0, 1.1.0") != NULL, "%s", orders);
    cr_assert(strstr(orders, "chillybin, menu") != NULL, "%s", orders);
    cr_assert(strstr(orders, "2026-11-23T18:30:00.000Z") != NULL);
    char *gone = line_with(out, "gone");
    cr_assert(strstr(gone, "0 (down)") != NULL, "%s", gone);
    cr_assert_eq(strstr(header, "DEPENDS ON") - header, strstr(orders, "chillybin") - orders);
    free(header);
    free(orders);
    free(gone);
    json_decref(s);

    json_t *empty = parse("{\"type\":\"sonar.services.v1\",\"services\":[]}");
    cap_close();
    cap_open();
    sonar_cli_print_services(cap, empty);
    cr_assert_str_eq(cap_text(), "no services known\n");
    json_decref(empty);
}

Test(cli_format, history_lists_reports_newest_first, .fini = cap_close)
{
    json_t *h = parse(
        "{\"type\":\"sonar.history.v1\",\"service\":\"chillybin\",\"reports\":["
        "{\"change_id\":\"new\",\"version\":\"2.0.0\",\"verdict\":\"fail\","
        " \"started_at\":\"2026-11-23T18:30:00.000Z\",\"duration_ms\":40,"
        " \"counts\":{\"pass\":1,\"fail\":1,\"none\":3,\"incomplete\":0}},"
        "{\"change_id\":\"old\",\"version\":\"1.9.0\",\"verdict\":\"pass\","
        " \"started_at\":\"2026-11-22T18:30:00.000Z\",\"duration_ms\":20,"
        " \"counts\":{\"pass\":2,\"fail\":0,\"none\":3,\"incomplete\":0}}]}");
    cap_open();
    sonar_cli_print_history(cap, h);
    const char *out = cap_text();
    const char *n = strstr(out, "new"), *o = strstr(out, "old");
    cr_assert(n && o && n < o, "%s", out);
    char *row = line_with(out, "new");
    cr_assert(strstr(row, "2.0.0") && strstr(row, "fail") &&
              strstr(row, "1 pass, 1 fail, 3 none, 0 incomplete") && strstr(row, "40 ms"),
              "%s", row);
    free(row);
    json_decref(h);

    json_t *empty = parse("{\"type\":\"sonar.history.v1\",\"service\":\"x\",\"reports\":[]}");
    cap_close();
    cap_open();
    sonar_cli_print_history(cap, empty);
    cr_assert_str_eq(cap_text(), "no reports for x\n");
    json_decref(empty);
}

Test(cli_format, graph_is_valid_dot_with_quoted_names_and_check_labels, .fini = cap_close)
{
    json_t *g = parse("{\"type\":\"sonar.graph.v1\",\"nodes\":[\"orders\",\"chillybin\","
                      "\"we\\\"ird\\\\\"],\"edges\":["
                      "{\"from\":\"orders\",\"to\":\"chillybin\",\"checks\":[\"health\",\"pick\"]},"
                      "{\"from\":\"we\\\"ird\\\\\",\"to\":\"orders\",\"checks\":[]},"
                      "{\"from\":\"broken\"}]}");
    cap_open();
    sonar_cli_print_dot(cap, g);
    cr_assert_str_eq(cap_text(),
                     "digraph sonar {\n"
                     "  rankdir=LR;\n"
                     "  node [shape=box];\n"
                     "  \"orders\";\n"
                     "  \"chillybin\";\n"
                     "  \"we\\\"ird\\\\\";\n"
                     "  \"orders\" -> \"chillybin\" [label=\"health, pick\"];\n"
                     "  \"we\\\"ird\\\\\" -> \"orders\";\n"
                     "}\n");
    json_decref(g);
}

Test(cli_format, feed_subjects_map_to_events)
{
    cr_assert_eq(sonar_cli_event_kind("sonar.register.a"), SONAR_CLI_EV_REGISTER);
    cr_assert_eq(sonar_cli_event_kind("sonar.leave.a"), SONAR_CLI_EV_LEAVE);
    cr_assert_eq(sonar_cli_event_kind("sonar.change.a"), SONAR_CLI_EV_CHANGE);
    cr_assert_eq(sonar_cli_event_kind("sonar.gather.c1"), SONAR_CLI_EV_GATHER);
    cr_assert_eq(sonar_cli_event_kind("sonar.result.c1.a"), SONAR_CLI_EV_RESULT);
    cr_assert_eq(sonar_cli_event_kind("sonar.report.a"), SONAR_CLI_EV_REPORT);
    cr_assert_eq(sonar_cli_event_kind("sonar.register."), SONAR_CLI_EV_UNKNOWN);
    cr_assert_eq(sonar_cli_event_kind("sonar.check.a"), SONAR_CLI_EV_UNKNOWN);
    cr_assert_eq(sonar_cli_event_kind(NULL), SONAR_CLI_EV_UNKNOWN);
    cr_assert_str_eq(sonar_cli_event_name(SONAR_CLI_EV_GATHER), "gather");
}

static json_t *reg(const char *svc, const char *inst, const char *version)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:[s], s:i}", "type", "sonar.register.v1",
                     "service", svc, "instance", inst, "version", version, "address", "http://x",
                     "depends_on", "chillybin", "heartbeat_ms", 1000);
}

Test(cli_format, watch_shows_a_registration_once_until_it_changes)
{
    sonar_cli_watch_filter *f = sonar_cli_watch_filter_create(NULL);
    json_t *r1 = reg("orders", "i1", "1.0.0"), *r2 = reg("orders", "i1", "1.1.0");
    json_t *other = reg("orders", "i2", "1.0.0");
    json_t *leave = json_pack("{s:s, s:s, s:s}", "type", "sonar.leave.v1", "service", "orders",
                              "instance", "i1");
    const char *subj = "sonar.register.orders";
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, subj, r1), "first sighting");
    cr_assert_not(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, subj, r1), "heartbeat");
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, subj, other), "other instance");
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, subj, r2), "new version");
    cr_assert_not(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, subj, r2));
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_LEAVE, "sonar.leave.orders", leave));
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, subj, r2), "rejoined");
    json_decref(r1);
    json_decref(r2);
    json_decref(other);
    json_decref(leave);
    sonar_cli_watch_filter_destroy(f);
    sonar_cli_watch_filter_destroy(NULL);
}

Test(cli_format, watch_filter_follows_one_service_and_its_changes)
{
    sonar_cli_watch_filter *f = sonar_cli_watch_filter_create("chillybin");
    json_t *mine = reg("chillybin", "i1", "1"), *theirs = reg("orders", "i1", "1");
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, "sonar.register.chillybin", mine));
    cr_assert_not(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REGISTER, "sonar.register.orders", theirs));

    json_t *gather = json_pack("{s:s, s:s, s:s, s:[s], s:i}", "type", "sonar.gather.v1",
                               "change_id", "c7", "service", "chillybin", "expected", "orders",
                               "timeout_ms", 1000);
    json_t *other_gather = json_pack("{s:s, s:s, s:s, s:[], s:i}", "type", "sonar.gather.v1",
                                     "change_id", "c8", "service", "menu", "expected",
                                     "timeout_ms", 1000);
    json_t *result7 = json_pack("{s:s, s:s, s:s}", "type", "sonar.result.v1", "change_id", "c7",
                                "service", "orders");
    json_t *result8 = json_pack("{s:s, s:s, s:s}", "type", "sonar.result.v1", "change_id", "c8",
                                "service", "orders");
    json_t *result8_mine = json_pack("{s:s, s:s, s:s}", "type", "sonar.result.v1", "change_id",
                                     "c8", "service", "chillybin");
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_GATHER, "sonar.gather.c7", gather));
    cr_assert_not(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_GATHER, "sonar.gather.c8", other_gather));
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_RESULT, "sonar.result.c7.orders", result7),
              "a result of the service's change");
    cr_assert_not(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_RESULT, "sonar.result.c8.orders", result8));
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_RESULT, "sonar.result.c8.chillybin",
                                          result8_mine), "the service's own answer");

    json_t *report = json_pack("{s:s, s:s}", "change_id", "c7", "service", "chillybin");
    json_t *other_report = json_pack("{s:s, s:s}", "change_id", "c8", "service", "menu");
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REPORT, "sonar.report.chillybin", report));
    cr_assert_not(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_REPORT, "sonar.report.menu", other_report));
    json_t *change = json_pack("{s:s, s:s}", "type", "sonar.change.v1", "version", "2");
    cr_assert(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_CHANGE, "sonar.change.chillybin", change));
    cr_assert_not(sonar_cli_watch_filter_pass(f, SONAR_CLI_EV_CHANGE, "sonar.change.menu", change));

    json_t *all[] = {mine, theirs, gather, other_gather, result7, result8, result8_mine,
                     report, other_report, change};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        json_decref(all[i]);
    sonar_cli_watch_filter_destroy(f);
}

Test(cli_format, feed_lines_human_and_json, .fini = cap_close)
{
    json_t *r = reg("orders", "i1", "1.2.3");
    int64_t t = 1795458600123; /* 2026-11-23T18:30:00.123Z */
    cap_open();
    sonar_cli_print_event(cap, SONAR_CLI_EV_REGISTER, "sonar.register.orders", r, t, false);
    cr_assert_str_eq(cap_text(), "18:30:00.123Z register orders/i1 1.2.3 at http://x, depends on "
                                 "chillybin, heartbeat 1000 ms\n");
    cap_close();
    cap_open();
    sonar_cli_print_event_json(cap, SONAR_CLI_EV_REGISTER, "sonar.register.orders", r, t, true);
    json_t *line = parse(cap_text());
    cr_assert_str_eq(json_string_value(json_object_get(line, "event")), "register");
    cr_assert_str_eq(json_string_value(json_object_get(line, "subject")), "sonar.register.orders");
    cr_assert_str_eq(json_string_value(json_object_get(line, "time")), "2026-11-23T18:30:00.123Z");
    cr_assert(json_is_true(json_object_get(line, "replayed")));
    cr_assert(json_equal(json_object_get(line, "message"), r));
    cr_assert_eq(strchr(cap_text(), '\n'), cap_text() + strlen(cap_text()) - 1, "one line");
    json_decref(line);
    cap_close();

    cap_open();
    sonar_cli_print_invalid(cap, true, "sonar.result.x.y", "not JSON", t);
    json_t *inv = parse(cap_text());
    cr_assert_str_eq(json_string_value(json_object_get(inv, "event")), "invalid");
    cr_assert_str_eq(json_string_value(json_object_get(inv, "error")), "not JSON");
    json_decref(inv);
    cap_close();
    cap_open();
    sonar_cli_print_invalid(cap, false, "sonar.result.x.y", "bad\033", t);
    cr_assert_str_eq(cap_text(), "18:30:00.123Z invalid  sonar.result.x.y: bad?\n");
    json_decref(r);
}

Test(cli_format, a_health_transition_is_a_feed_line_and_follows_the_service_filter,
     .fini = cap_close)
{
    int64_t t = 1700000000123LL; /* 2023-11-14T22:13:20.123Z */
    json_t *h = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:s}", "type",
                          "sonar.health.v1", "service", "websvc", "target", "web", "from",
                          "passing", "to", "critical", "time", "2023-11-14T22:13:20.100Z",
                          "http_code", 503, "duration_ms", 2, "error", "HTTP 503");
    cr_assert_eq(sonar_cli_event_kind("sonar.health.websvc"), SONAR_CLI_EV_HEALTH);
    cap_open();
    sonar_cli_print_event(cap, SONAR_CLI_EV_HEALTH, "sonar.health.websvc", h, t, false);
    cr_assert_str_eq(cap_text(), "22:13:20.123Z health   websvc/web: passing -> critical "
                                 "(HTTP 503, 2 ms): HTTP 503\n");
    cap_close();
    json_object_set_new(h, "http_code", json_integer(0));
    json_object_set_new(h, "error", json_null());
    cap_open();
    sonar_cli_print_event(cap, SONAR_CLI_EV_HEALTH, "sonar.health.websvc", h, t, true);
    cr_assert_str_eq(cap_text(), "22:13:20.123Z health   websvc/web: passing -> critical "
                                 "(no response, 2 ms) [replayed]\n");
    sonar_cli_watch_filter *mine = sonar_cli_watch_filter_create("websvc");
    sonar_cli_watch_filter *other = sonar_cli_watch_filter_create("orders");
    cr_assert(sonar_cli_watch_filter_pass(mine, SONAR_CLI_EV_HEALTH, "sonar.health.websvc", h));
    cr_assert_not(
        sonar_cli_watch_filter_pass(other, SONAR_CLI_EV_HEALTH, "sonar.health.websvc", h));
    sonar_cli_watch_filter_destroy(mine);
    sonar_cli_watch_filter_destroy(other);
    json_decref(h);
}

Test(cli_format, a_lost_bus_and_its_return_are_lines_of_the_feed, .fini = cap_close)
{
    int64_t t = 1700000000123LL; /* 2023-11-14T22:13:20.123Z */
    cap_open();
    sonar_cli_print_connection(cap, true, false, "nats://127.0.0.1:4222", false, t);
    json_t *down = parse(cap_text());
    cr_assert_str_eq(json_string_value(json_object_get(down, "event")), "disconnected");
    cr_assert_str_eq(json_string_value(json_object_get(down, "server")), "nats://127.0.0.1:4222");
    cr_assert_str_eq(json_string_value(json_object_get(down, "time")), "2023-11-14T22:13:20.123Z");
    json_decref(down);
    cap_close();
    cap_open();
    sonar_cli_print_connection(cap, false, true, "nats://h:4222", false, t);
    cr_assert_str_eq(cap_text(), "22:13:20.123Z bus      reconnected to nats://h:4222; events in "
                                 "between were missed\n");
    cap_close();
    cap_open();
    sonar_cli_print_connection(cap, true, true, "nats://h:4222", true, t);
    json_t *back = parse(cap_text());
    cr_assert_str_eq(json_string_value(json_object_get(back, "event")), "reconnected");
    cr_assert(json_is_true(json_object_get(back, "replaying")));
    json_decref(back);
    cap_close();
    cap_open();
    sonar_cli_print_connection(cap, false, true, "nats://h:4222", true, t);
    cr_assert(strstr(cap_text(), "replaying the reports of the gap") != NULL, "%s", cap_text());
    cap_close();
    cap_open();
    sonar_cli_print_connection(cap, false, false, "nats://h\033:4222", false, t);
    cr_assert_str_eq(cap_text(), "22:13:20.123Z bus      lost nats://h?:4222; reconnecting, events "
                                 "are missed until then\n");
}

Test(cli_format, gather_and_report_lines_carry_the_counts, .fini = cap_close)
{
    json_t *g = json_pack("{s:s, s:s, s:s, s:[s,s], s:i}", "type", "sonar.gather.v1",
                          "change_id", "c1", "service", "chillybin", "expected", "orders", "menu",
                          "timeout_ms", 5000);
    json_t *r = parse(report_json);
    cap_open();
    sonar_cli_print_event(cap, SONAR_CLI_EV_GATHER, "sonar.gather.c1", g, 0, false);
    sonar_cli_print_event(cap, SONAR_CLI_EV_REPORT, "sonar.report.chillybin", r, 0, true);
    const char *out = cap_text();
    cr_assert(strstr(out, "gather   change c1 of chillybin: expecting 2 (orders, menu), "
                          "timeout 5000 ms\n") != NULL, "%s", out);
    /* Announced again (another coordinator started): the time left. */
    json_object_set_new(g, "again", json_true());
    json_object_set_new(g, "timeout_ms", json_integer(1200));
    sonar_cli_print_event(cap, SONAR_CLI_EV_GATHER, "sonar.gather.c1", g, 0, false);
    out = cap_text();
    cr_assert(strstr(out, "gather   change c1 of chillybin: still gathering, expecting 2 (orders, "
                          "menu), 1200 ms left\n") != NULL, "%s", out);
    cr_assert(strstr(out, "report   change c1 of chillybin 2.0.0: fail (expected 4: 1 pass, "
                          "1 fail, 1 none, 1 incomplete) in 123 ms [replayed]\n") != NULL,
              "%s", out);
    json_decref(g);
    json_decref(r);
}
