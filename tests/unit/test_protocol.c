/* The wire protocol: every kind round-trips, and bad input is refused with a
 * specific status and a message naming the field (tests/data/protocol). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonar/sonar.h"

static char *names_a[] = {"db", "cache"};
static char *check_names[] = {"pick returns cheese", "health"};

static sonar_register_msg sample_register(void)
{
    static sonar_dep_checks deps[] = {{"db", check_names, 2}};
    sonar_register_msg m = {
        .service = "chillybin",
        .instance = "inst-1",
        .version = "2.0.0",
        .address = "http://10.0.0.5:8081",
        .depends_on = names_a,
        .n_depends_on = 2,
        .checks = deps,
        .n_checks = 1,
        .heartbeat_ms = 2000,
        .health = "http://10.0.0.5:8081/health",
        .metrics = "nats",
        .metadata = NULL,
    };
    return m;
}

Test(protocol, register_round_trips)
{
    sonar_register_msg in = sample_register();
    in.metadata = json_pack("{ss}", "team", "fridge");
    char *json = NULL;
    cr_assert_eq(sonar_register_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    cr_assert(strstr(json, "\"type\":\"sonar.register.v1\"") != NULL, "%s", json);
    cr_assert(strchr(json, ' ') == NULL || strstr(json, "pick returns") != NULL, "compact: %s", json);
    sonar_register_msg out;
    memset(&out, 0, sizeof out);
    cr_assert_eq(sonar_register_decode(&out, json, strlen(json)), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_str_eq(out.service, "chillybin");
    cr_assert_str_eq(out.instance, "inst-1");
    cr_assert_str_eq(out.version, "2.0.0");
    cr_assert_str_eq(out.address, "http://10.0.0.5:8081");
    cr_assert_eq(out.n_depends_on, 2);
    cr_assert_str_eq(out.depends_on[1], "cache");
    cr_assert_eq(out.n_checks, 1);
    cr_assert_str_eq(out.checks[0].dependency, "db");
    cr_assert_eq(out.checks[0].n_names, 2);
    cr_assert_str_eq(out.checks[0].names[0], "pick returns cheese");
    cr_assert_eq(out.heartbeat_ms, 2000);
    cr_assert_str_eq(out.health, "http://10.0.0.5:8081/health");
    cr_assert_str_eq(out.metrics, "nats");
    cr_assert(json_equal(out.metadata, in.metadata));
    sonar_register_finish(&out);
    sonar_register_finish(&out); /* idempotent */
    json_decref(in.metadata);
    free(json);
}

Test(protocol, leave_round_trips)
{
    sonar_leave_msg in = {.service = "chillybin", .instance = "inst-1"};
    char *json = NULL;
    cr_assert_eq(sonar_leave_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    sonar_leave_msg out = {0};
    cr_assert_eq(sonar_leave_decode(&out, json, strlen(json)), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(out.service, "chillybin");
    cr_assert_str_eq(out.instance, "inst-1");
    sonar_leave_finish(&out);
    free(json);
}

Test(protocol, discover_round_trips_and_accepts_an_empty_payload)
{
    char *json = NULL;
    cr_assert_eq(sonar_discover_encode(&json), SONAR_OK);
    cr_assert_str_eq(json, "{\"type\":\"sonar.discover.v1\"}");
    cr_assert_eq(sonar_discover_decode(json, strlen(json)), SONAR_OK);
    cr_assert_eq(sonar_discover_decode("", 0), SONAR_OK);
    cr_assert_eq(sonar_discover_decode("{}", 2), SONAR_ERR_PROTOCOL);
    cr_assert_eq(sonar_discover_decode("nope", 4), SONAR_ERR_PROTOCOL);
    free(json);
}

Test(protocol, check_round_trips)
{
    sonar_check_msg in = {.change_id = "c1", .service = "chillybin", .version = "2.0.0",
                          .address = "http://10.0.0.5:8081", .timeout_ms = 10000};
    char *json = NULL;
    cr_assert_eq(sonar_check_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    sonar_check_msg out = {0};
    cr_assert_eq(sonar_check_decode(&out, json, strlen(json)), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(out.change_id, "c1");
    cr_assert_str_eq(out.service, "chillybin");
    cr_assert_str_eq(out.version, "2.0.0");
    cr_assert_str_eq(out.address, "http://10.0.0.5:8081");
    cr_assert_eq(out.timeout_ms, 10000);
    sonar_check_finish(&out);
    free(json);
}

Test(protocol, result_round_trips)
{
    sonar_check_result checks[] = {
        {.name = "pick", .status = SONAR_PASS, .duration_ms = 3, .message = ""},
        {.name = "health", .status = SONAR_FAIL, .duration_ms = 7,
         .message = "GET /health \xe2\x86\x92 404, expected 200"},
    };
    sonar_result_msg in = {.change_id = "c1", .service = "fridge", .instance = "i9",
                           .status = SONAR_FAIL, .duration_ms = 12, .checks = checks,
                           .n_checks = 2};
    char *json = NULL;
    cr_assert_eq(sonar_result_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    sonar_result_msg out = {0};
    cr_assert_eq(sonar_result_decode(&out, json, strlen(json)), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_str_eq(out.change_id, "c1");
    cr_assert_str_eq(out.service, "fridge");
    cr_assert_str_eq(out.instance, "i9");
    cr_assert_eq(out.status, SONAR_FAIL);
    cr_assert_eq(out.duration_ms, 12);
    cr_assert_eq(out.n_checks, 2);
    cr_assert_str_eq(out.checks[1].name, "health");
    cr_assert_eq(out.checks[1].status, SONAR_FAIL);
    cr_assert_eq(out.checks[1].duration_ms, 7);
    cr_assert_str_eq(out.checks[1].message, checks[1].message);
    cr_assert_str_eq(out.checks[0].message, "");
    sonar_result_finish(&out);
    free(json);
}

Test(protocol, error_round_trips)
{
    sonar_error_msg in = {.code = 404, .message = "no report for change \"x\""};
    char *json = NULL;
    cr_assert_eq(sonar_error_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    sonar_error_msg out = {0};
    cr_assert_eq(sonar_error_decode(&out, json, strlen(json)), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(out.code, 404);
    cr_assert_str_eq(out.message, in.message);
    sonar_error_finish(&out);
    free(json);
}

Test(protocol, wrong_kind_and_version_are_refused)
{
    const char *res = "{\"type\":\"sonar.result.v1\"}";
    sonar_check_msg out = {0};
    cr_assert_eq(sonar_check_decode(&out, res, strlen(res)), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "expected sonar.check.v1, got sonar.result.v1"),
              "%s", sonar_last_error());
    const char *v2 = "{\"type\":\"sonar.register.v2\"}";
    sonar_msg_kind k = SONAR_MSG_UNKNOWN;
    cr_assert_eq(sonar_msg_peek(v2, strlen(v2), &k), SONAR_ERR_VERSION);
    cr_assert(strstr(sonar_last_error(), "sonar.register.v2"), "%s", sonar_last_error());
    cr_assert_eq(k, SONAR_MSG_UNKNOWN);
    cr_assert_eq(sonar_msg_peek(res, strlen(res), &k), SONAR_OK);
    cr_assert_eq(k, SONAR_MSG_RESULT);
}
