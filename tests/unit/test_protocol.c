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

Test(protocol, change_round_trips_with_optional_id_and_timeout)
{
    sonar_change_msg in = {.service = "chillybin", .version = "2.0.0",
                           .address = "http://10.0.0.5:8081"};
    char *json = NULL;
    cr_assert_eq(sonar_change_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    cr_assert_null(strstr(json, "change_id"), "%s", json);
    cr_assert_null(strstr(json, "timeout_ms"), "%s", json);
    sonar_change_msg out = {0};
    cr_assert_eq(sonar_change_decode(&out, json, strlen(json)), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_null(out.change_id);
    cr_assert_eq(out.timeout_ms, 0);
    cr_assert_str_eq(out.service, "chillybin");
    sonar_change_finish(&out);
    free(json);

    in.change_id = "c-7";
    in.timeout_ms = 2500;
    cr_assert_eq(sonar_change_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    cr_assert(strstr(json, "\"type\":\"sonar.change.v1\""), "%s", json);
    cr_assert_eq(sonar_change_decode(&out, json, strlen(json)), SONAR_OK);
    cr_assert_str_eq(out.change_id, "c-7");
    cr_assert_eq(out.timeout_ms, 2500);
    sonar_change_finish(&out);
    /* A check request needs both. */
    sonar_check_msg chk = {0};
    cr_assert_eq(sonar_check_decode(&chk, json, strlen(json)), SONAR_ERR_PROTOCOL);
    free(json);
    in.change_id = NULL;
    cr_assert_eq(sonar_check_encode(&in, &json), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "change_id"), "%s", sonar_last_error());
}

Test(protocol, report_round_trips)
{
    sonar_check_result fail_checks[] = {
        {.name = "pick", .status = SONAR_FAIL, .duration_ms = 30, .message = "404"},
    };
    sonar_report_entry entries[] = {
        {.service = "fridge", .status = SONAR_FAIL, .reason = "", .duration_ms = 31,
         .checks = fail_checks, .n_checks = 1},
        {.service = "sink", .status = SONAR_INCOMPLETE, .reason = "no answer by the deadline"},
        {.service = "stranger", .status = SONAR_NONE, .unregistered = true, .duration_ms = 2},
    };
    sonar_report_msg in = {
        .change_id = "c-42", .service = "chillybin", .version = "2.0.0",
        .address = "http://10.0.0.5:8081", .verdict = SONAR_FAIL,
        .started_at = "2026-11-23T18:30:00.123Z", .duration_ms = 48,
        .counts = {.expected = 2, .pass = 0, .fail = 1, .none = 1, .incomplete = 1},
        .results = entries, .n_results = 3,
    };
    char *json = NULL;
    cr_assert_eq(sonar_report_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    const char *flag = strstr(json, "\"unregistered\":true");
    cr_assert_not_null(flag, "%s", json);
    cr_assert_null(strstr(flag + 5, "unregistered"), "encoded only when true: %s", json);
    sonar_report_msg out = {0};
    cr_assert_eq(sonar_report_decode(&out, json, strlen(json)), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_str_eq(out.change_id, "c-42");
    cr_assert_str_eq(out.service, "chillybin");
    cr_assert_str_eq(out.version, "2.0.0");
    cr_assert_str_eq(out.address, "http://10.0.0.5:8081");
    cr_assert_eq(out.verdict, SONAR_FAIL);
    cr_assert_str_eq(out.started_at, "2026-11-23T18:30:00.123Z");
    cr_assert_eq(out.duration_ms, 48);
    cr_assert_eq(out.counts.expected, 2);
    cr_assert_eq(out.counts.fail, 1);
    cr_assert_eq(out.counts.none, 1);
    cr_assert_eq(out.counts.incomplete, 1);
    cr_assert_eq(out.n_results, 3);
    cr_assert_str_eq(out.results[0].service, "fridge");
    cr_assert_eq(out.results[0].n_checks, 1);
    cr_assert_str_eq(out.results[0].checks[0].message, "404");
    cr_assert_str_eq(out.results[0].reason, "");
    cr_assert_not(out.results[0].unregistered);
    cr_assert_eq(out.results[1].status, SONAR_INCOMPLETE);
    cr_assert_str_eq(out.results[1].reason, "no answer by the deadline");
    cr_assert_eq(out.results[1].n_checks, 0);
    cr_assert(out.results[2].unregistered);
    cr_assert_eq(out.results[2].status, SONAR_NONE);
    sonar_report_finish(&out);
    free(json);
}

Test(protocol, unknown_fields_are_ignored)
{
    const char *msg = "{\"type\":\"sonar.leave.v1\",\"service\":\"fridge\",\"instance\":\"i1\","
                      "\"future\":{\"deep\":[1,2,{\"x\":null}]},\"zone\":\"eu\"}";
    sonar_leave_msg out = {0};
    cr_assert_eq(sonar_leave_decode(&out, msg, strlen(msg)), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(out.instance, "i1");
    sonar_leave_finish(&out);
}

Test(protocol, a_message_over_the_size_limit_is_refused)
{
    size_t n = SONAR_MAX_MESSAGE_BYTES + 100;
    char *big = malloc(n + 1);
    cr_assert_not_null(big);
    int head = snprintf(big, n, "{\"type\":\"sonar.leave.v1\",\"service\":\"a\",\"instance\":\"i\","
                                "\"pad\":\"");
    memset(big + head, 'x', n - (size_t)head - 2);
    big[n - 2] = '"';
    big[n - 1] = '}';
    big[n] = '\0';
    sonar_leave_msg out = {0};
    cr_assert_eq(sonar_leave_decode(&out, big, n), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "over the limit"), "%s", sonar_last_error());
    cr_assert_eq(sonar_discover_decode(big, n), SONAR_ERR_PROTOCOL);
    free(big);
}

Test(protocol, encoders_refuse_what_a_decoder_would_refuse)
{
    char *json = (char *)"untouched";
    sonar_register_msg reg = sample_register();
    reg.service = "fridge.eu";
    cr_assert_eq(sonar_register_encode(&reg, &json), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "fridge.eu"), "%s", sonar_last_error());
    reg = sample_register();
    reg.heartbeat_ms = 5;
    cr_assert_eq(sonar_register_encode(&reg, &json), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "heartbeat_ms"), "%s", sonar_last_error());
    reg = sample_register();
    reg.instance = "bad\xff utf8";
    cr_assert_eq(sonar_register_encode(&reg, &json), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "UTF-8"), "%s", sonar_last_error());
    reg = sample_register();
    reg.version = NULL;
    cr_assert_eq(sonar_register_encode(&reg, &json), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "version"), "%s", sonar_last_error());
    reg = sample_register();
    reg.metadata = json_pack("{si}", "port", 80);
    cr_assert_eq(sonar_register_encode(&reg, &json), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "metadata.port"), "%s", sonar_last_error());
    json_decref(reg.metadata);

    sonar_check_result one = {.name = "x", .status = SONAR_PASS, .message = ""};
    sonar_result_msg res = {.change_id = "c", .service = "s", .instance = "i",
                            .status = SONAR_NONE, .checks = &one, .n_checks = 1};
    cr_assert_eq(sonar_result_encode(&res, &json), SONAR_ERR_PROTOCOL);
    res.status = SONAR_INCOMPLETE;
    cr_assert_eq(sonar_result_encode(&res, &json), SONAR_ERR_PROTOCOL);
    cr_assert(strstr(sonar_last_error(), "status"), "%s", sonar_last_error());

    sonar_check_msg chk = {.change_id = "c", .service = "s", .version = "1",
                           .address = "http://a", .timeout_ms = SONAR_MAX_TIMEOUT_MS + 1};
    cr_assert_eq(sonar_check_encode(&chk, &json), SONAR_ERR_PROTOCOL);
    sonar_error_msg err = {.code = 404, .message = NULL};
    cr_assert_eq(sonar_error_encode(&err, &json), SONAR_ERR_PROTOCOL);
    cr_assert_str_eq(json, "untouched", "out_json must be written only on success");
}

Test(protocol, subjects_are_built_from_valid_tokens_only)
{
    char *s = NULL;
    cr_assert_eq(sonar_subject(&s, SONAR_SUBJ_RESULT_PREFIX, "c-42", "fridge"), SONAR_OK);
    cr_assert_str_eq(s, "sonar.result.c-42.fridge");
    free(s);
    cr_assert_eq(sonar_subject(&s, SONAR_SUBJ_CHECK_PREFIX, "chillybin", NULL), SONAR_OK);
    cr_assert_str_eq(s, "sonar.check.chillybin");
    free(s);
    s = NULL;
    cr_assert_eq(sonar_subject(&s, SONAR_SUBJ_CHECK_PREFIX, "*", NULL), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_subject(&s, SONAR_SUBJ_RESULT_PREFIX, "c1", "a.b"), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "a.b"), "%s", sonar_last_error());
    cr_assert_eq(sonar_subject(&s, SONAR_SUBJ_CHECK_PREFIX, NULL, NULL), SONAR_ERR_INVALID);
    cr_assert_null(s);
}

Test(protocol, outcomes_and_kinds_map_both_ways)
{
    sonar_outcome all[] = {SONAR_PASS, SONAR_FAIL, SONAR_NONE, SONAR_INCOMPLETE};
    for (size_t i = 0; i < 4; i++) {
        sonar_outcome o = SONAR_PASS;
        cr_assert_eq(sonar_outcome_parse(sonar_outcome_str(all[i]), &o), SONAR_OK);
        cr_assert_eq(o, all[i]);
    }
    sonar_outcome o = SONAR_FAIL;
    cr_assert_eq(sonar_outcome_parse("PASS", &o), SONAR_ERR_PROTOCOL);
    cr_assert_eq(o, SONAR_FAIL);

    cr_assert_null(sonar_msg_kind_type(SONAR_MSG_UNKNOWN));
    for (int k = SONAR_MSG_REGISTER; k <= SONAR_MSG_GRAPH; k++) {
        const char *type = sonar_msg_kind_type((sonar_msg_kind)k);
        cr_assert_not_null(type, "kind %d", k);
        char msg[80];
        snprintf(msg, sizeof msg, "{\"type\":\"%s\"}", type);
        sonar_msg_kind got = SONAR_MSG_UNKNOWN;
        cr_assert_eq(sonar_msg_peek(msg, strlen(msg), &got), SONAR_OK, "%s", sonar_last_error());
        cr_assert_eq(got, (sonar_msg_kind)k, "%s", type);
    }
}

Test(protocol, copies_are_deep)
{
    sonar_register_msg in = sample_register();
    in.metadata = json_pack("{ss}", "team", "kitchen");
    sonar_register_msg copy;
    cr_assert_eq(sonar_register_copy(&copy, &in), SONAR_OK);
    json_decref(in.metadata);
    cr_assert_neq(copy.service, in.service);
    cr_assert_str_eq(copy.service, "chillybin");
    cr_assert_str_eq(copy.checks[0].names[1], "health");
    cr_assert_neq((void *)copy.checks[0].names, (void *)in.checks[0].names);
    cr_assert_str_eq(json_string_value(json_object_get(copy.metadata, "team")), "kitchen");
    char *json = NULL;
    cr_assert_eq(sonar_register_encode(&copy, &json), SONAR_OK, "%s", sonar_last_error());
    free(json);
    sonar_register_finish(&copy);

    sonar_check_result src = {.name = "n", .status = SONAR_FAIL, .duration_ms = 9, .message = "m"};
    sonar_check_result dst;
    cr_assert_eq(sonar_check_result_copy(&dst, &src), SONAR_OK);
    cr_assert_neq(dst.name, src.name);
    cr_assert_str_eq(dst.message, "m");
    cr_assert_eq(dst.status, SONAR_FAIL);
    cr_assert_eq(dst.duration_ms, 9);
    free(dst.name);
    free(dst.message);
}

/* ---- Data-driven cases: tests/data/protocol/{valid,invalid} ------------ */

typedef union any_msg {
    sonar_register_msg reg;
    sonar_leave_msg leave;
    sonar_check_msg check;
    sonar_result_msg result;
    sonar_report_msg report;
    sonar_error_msg error;
} any_msg;

/*
 * Decodes \p data with the decoder named by the file name's prefix
 * ("register-bad-name.json" -> register). On success re-encodes into
 * *reencoded (new) and releases the struct; on failure checks that the out
 * struct was left untouched.
 */
static sonar_status decode_as(const char *file, const char *data, size_t len, char **reencoded,
                              sonar_msg_kind *kind)
{
    any_msg m, before;
    memset(&m, 0xa5, sizeof m);
    memcpy(&before, &m, sizeof m);
    sonar_status st = SONAR_OK, enc = SONAR_OK;
    *reencoded = NULL;
#define CASE(prefix, KIND, member, name)                                   \
    if (strncmp(file, prefix "-", strlen(prefix) + 1) == 0) {              \
        *kind = KIND;                                                      \
        st = sonar_##name##_decode(&m.member, data, len);                  \
        if (st == SONAR_OK) {                                              \
            enc = sonar_##name##_encode(&m.member, reencoded);             \
            sonar_##name##_finish(&m.member);                              \
        }                                                                  \
        goto done;                                                         \
    }
    CASE("register", SONAR_MSG_REGISTER, reg, register)
    CASE("leave", SONAR_MSG_LEAVE, leave, leave)
    CASE("check", SONAR_MSG_CHECK, check, check)
    CASE("change", SONAR_MSG_CHANGE, check, change)
    CASE("result", SONAR_MSG_RESULT, result, result)
    CASE("report", SONAR_MSG_REPORT, report, report)
    CASE("error", SONAR_MSG_ERROR, error, error)
#undef CASE
    if (strncmp(file, "discover-", 9) == 0) {
        *kind = SONAR_MSG_DISCOVER;
        st = sonar_discover_decode(data, len);
        if (st == SONAR_OK)
            enc = sonar_discover_encode(reencoded);
        goto done;
    }
    cr_assert_fail("%s: file name must start with a message kind", file);
    return SONAR_ERR_INVALID;
done:
    if (st != SONAR_OK)
        cr_expect(memcmp(&m, &before, sizeof m) == 0, "%s: out struct written on failure", file);
    cr_expect_eq(enc, SONAR_OK, "%s: re-encoding failed: %s", file, sonar_last_error());
    return st;
}

/*
 * sonard and services send decoder error texts back in sonar.error.v1, so
 * every error text must itself be a valid error message.
 */
static void expect_error_text_is_sendable(const char *name)
{
    char text[1100];
    snprintf(text, sizeof text, "%s", sonar_last_error());
    sonar_error_msg err = {.code = 400, .message = text};
    char *json = NULL;
    cr_expect_eq(sonar_error_encode(&err, &json), SONAR_OK,
                 "%s: error text cannot be sent in sonar.error.v1: %s", name, sonar_last_error());
    free(json);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap)
            buf = realloc(buf, cap *= 2);
        cr_assert_not_null(buf);
    }
    fclose(f);
    *len = n;
    return buf;
}

static const char *status_name(sonar_status st)
{
    switch (st) {
    case SONAR_OK: return "SONAR_OK";
    case SONAR_ERR_INVALID: return "SONAR_ERR_INVALID";
    case SONAR_ERR_PROTOCOL: return "SONAR_ERR_PROTOCOL";
    case SONAR_ERR_VERSION: return "SONAR_ERR_VERSION";
    default: return sonar_status_str(st);
    }
}

static bool is_json_file(const char *name)
{
    size_t n = strlen(name);
    return n > 5 && strcmp(name + n - 5, ".json") == 0;
}

/*
 * Calls \p each for every *.json file in tests/data/protocol/<sub> with its
 * name, full path and contents; returns how many files there were.
 */
typedef void (*file_fn)(const char *name, const char *path, const char *data, size_t len);

static int for_each_data_file(const char *sub, file_fn each)
{
    const char *root = getenv("SONAR_TEST_DATA");
    cr_assert_not_null(root, "SONAR_TEST_DATA is not set (tests/meson.build sets it)");
    char *dir = NULL;
    cr_assert_gt(asprintf(&dir, "%s/protocol/%s", root, sub), 0);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_json_file(e->d_name))
            continue;
        char *path = NULL;
        cr_assert_gt(asprintf(&path, "%s/%s", dir, e->d_name), 0);
        size_t len = 0;
        char *data = read_all(path, &len);
        each(e->d_name, path, data, len);
        free(data);
        free(path);
        count++;
    }
    closedir(d);
    free(dir);
    return count;
}

static void expect_valid(const char *name, const char *path, const char *data, size_t len)
{
    (void)path;
    char *once = NULL, *twice = NULL;
    sonar_msg_kind kind = SONAR_MSG_UNKNOWN, again = SONAR_MSG_UNKNOWN;
    sonar_status st = decode_as(name, data, len, &once, &kind);
    cr_expect_eq(st, SONAR_OK, "%s: %s", name, sonar_last_error());
    if (st == SONAR_OK && once != NULL) {
        /* Our encoding of what we decoded decodes and encodes to itself. */
        cr_expect_eq(decode_as(name, once, strlen(once), &twice, &again), SONAR_OK);
        cr_expect_str_eq(once, twice, "%s: re-encoding is not stable", name);
        sonar_msg_kind peeked = SONAR_MSG_UNKNOWN;
        cr_expect_eq(sonar_msg_peek(once, strlen(once), &peeked), SONAR_OK);
        cr_expect_eq(peeked, kind, "%s: peek disagrees", name);
    }
    free(once);
    free(twice);
}

Test(protocol, every_valid_file_decodes_by_its_kind_and_re_encodes_stably)
{
    int count = for_each_data_file("valid", expect_valid);
    cr_assert_geq(count, 15, "only %d valid files found", count);
}

/* <name>.expect: line 1 the status name, line 2 a substring of the error text. */
static void expect_invalid(const char *name, const char *path, const char *data, size_t len)
{
    char *expect_path = NULL;
    cr_assert_gt(asprintf(&expect_path, "%.*s.expect", (int)(strlen(path) - 5), path), 0);
    size_t elen = 0;
    char *expect = read_all(expect_path, &elen);
    expect = realloc(expect, elen + 1);
    cr_assert_not_null(expect);
    expect[elen] = '\0';
    char *nl = strchr(expect, '\n');
    cr_assert_not_null(nl, "%s: first line is the status name", expect_path);
    *nl = '\0';
    char *substring = nl + 1;
    substring[strcspn(substring, "\n")] = '\0';
    cr_assert_neq(*substring, '\0', "%s: second line is a substring of the error", expect_path);

    char *reencoded = NULL;
    sonar_msg_kind kind;
    sonar_status st = decode_as(name, data, len, &reencoded, &kind);
    cr_expect_str_eq(status_name(st), expect, "%s: got %s (%s)", name, status_name(st),
                     sonar_last_error());
    cr_expect(strstr(sonar_last_error(), substring) != NULL,
              "%s: error \"%s\" does not mention \"%s\"", name, sonar_last_error(), substring);
    expect_error_text_is_sendable(name);
    free(reencoded);
    free(expect);
    free(expect_path);
}

Test(protocol, every_invalid_file_is_refused_with_its_expected_error)
{
    int count = for_each_data_file("invalid", expect_invalid);
    cr_assert_geq(count, 30, "only %d invalid files found", count);
}

/*
 * Every decoder (and peek) on many deterministic mutations of every valid
 * file: flipped, deleted and truncated bytes. Each call must either succeed
 * or fail with a protocol-level status and an error text; ASan/UBSan builds
 * of this test catch any out-of-bounds read or leak.
 */
static unsigned mutation_seed = 12345;

static unsigned next_rand(void)
{
    mutation_seed = mutation_seed * 1103515245u + 12345u;
    return (mutation_seed >> 16) & 0x7fff;
}

static void expect_refused_cleanly(const char *name, sonar_status st)
{
    cr_expect(st == SONAR_OK || st == SONAR_ERR_PROTOCOL || st == SONAR_ERR_INVALID ||
                  st == SONAR_ERR_VERSION,
              "%s: unexpected status %d", name, st);
    if (st != SONAR_OK) {
        cr_expect_neq(*sonar_last_error(), '\0', "%s: failure without error text", name);
        expect_error_text_is_sendable(name);
    }
}

static void decode_with_every_decoder(const char *name, const char *data, size_t len)
{
    static const char *prefixes[] = {"register-", "leave-", "discover-", "check-",
                                     "change-", "result-", "report-", "error-"};
    for (size_t p = 0; p < sizeof prefixes / sizeof prefixes[0]; p++) {
        char *re = NULL;
        sonar_msg_kind kind;
        expect_refused_cleanly(name, decode_as(prefixes[p], data, len, &re, &kind));
        free(re);
    }
    sonar_msg_kind kind;
    expect_refused_cleanly(name, sonar_msg_peek(data, len, &kind));
}

static void mutate_and_decode(const char *name, const char *path, const char *data, size_t len)
{
    (void)path;
    if (len == 0)
        return;
    char *buf = malloc(len);
    cr_assert_not_null(buf);
    for (int round = 0; round < 60; round++) {
        memcpy(buf, data, len);
        size_t n = len;
        int edits = 1 + (int)(next_rand() % 4);
        for (int k = 0; k < edits && n > 0; k++) {
            size_t at = next_rand() % n;
            switch (next_rand() % 4) {
            case 0: buf[at] = (char)(next_rand() & 0xff); break;
            case 1: memmove(buf + at, buf + at + 1, n - at - 1); n--; break;
            case 2: n = at; break;
            default: buf[at] = "{}[]\",:0\\"[next_rand() % 9]; break;
            }
        }
        decode_with_every_decoder(name, buf, n);
    }
    free(buf);
}

Test(protocol, mutated_messages_never_crash_a_decoder)
{
    cr_assert_geq(for_each_data_file("valid", mutate_and_decode), 15);
}

/* The report is written without jansson (it is on sonard's latency path):
 * its text must be exactly what jansson writes for the same fields, strings
 * with every character that needs escaping included. */
Test(protocol, report_text_is_what_jansson_writes)
{
    char controls[40];
    for (int c = 1; c < 0x20; c++)
        controls[c - 1] = (char)c;
    controls[31] = '\0';
    char message[128];
    snprintf(message, sizeof message, "got \"404\" \\ %s / \x7f caf\xc3\xa9 \xf0\x9f\x90\x9f",
             controls);
    sonar_check_result checks[] = {
        {.name = "pick \"cheese\" \\ caf\xc3\xa9", .status = SONAR_FAIL, .duration_ms = 86400000,
         .message = message},
        {.name = "health", .status = SONAR_PASS, .duration_ms = 0, .message = NULL},
    };
    sonar_report_entry entries[] = {
        {.service = "fridge", .status = SONAR_FAIL, .reason = NULL, .duration_ms = 31,
         .checks = checks, .n_checks = 2},
        {.service = "sink", .status = SONAR_INCOMPLETE, .reason = "line\nbreak\ttab \"q\""},
        {.service = "stranger", .status = SONAR_NONE, .reason = "", .unregistered = true},
    };
    sonar_report_msg in = {
        .change_id = "c_42-x", .service = "chillybin", .version = "2.0.0 \"beta\" \\ \xc3\xa9",
        .address = "http://10.0.0.5:8081/a?b=\"c\"", .verdict = SONAR_FAIL,
        .started_at = "2026-11-23T18:30:00.123+01:00", .duration_ms = 0,
        .counts = {.expected = 1000000000, .pass = 0, .fail = 1, .none = 1, .incomplete = 1},
        .results = entries, .n_results = 3,
    };
    char *json = NULL;
    cr_assert_eq(sonar_report_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    json_error_t err;
    json_t *tree = json_loads(json, 0, &err);
    cr_assert_not_null(tree, "not JSON (%s): %s", err.text, json);
    char *again = json_dumps(tree, JSON_COMPACT);
    cr_assert_str_eq(json, again);
    free(again);
    cr_assert_str_eq(json_string_value(json_object_get(tree, "type")), "sonar.report.v1");
    json_t *c0 = json_array_get(json_object_get(json_array_get(json_object_get(tree, "results"), 0),
                                                "checks"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(c0, "message")), message);
    json_decref(tree);
    sonar_report_msg out = {0};
    cr_assert_eq(sonar_report_decode(&out, json, strlen(json)), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_str_eq(out.version, in.version);
    cr_assert_str_eq(out.address, in.address);
    cr_assert_str_eq(out.started_at, in.started_at);
    cr_assert_eq(out.counts.expected, 1000000000);
    cr_assert_eq(out.n_results, 3);
    cr_assert_str_eq(out.results[0].checks[0].name, checks[0].name);
    cr_assert_str_eq(out.results[0].checks[0].message, message);
    cr_assert_eq(out.results[0].checks[0].duration_ms, 86400000);
    cr_assert_str_eq(out.results[0].checks[1].message, "");
    cr_assert_str_eq(out.results[0].reason, "");
    cr_assert_str_eq(out.results[1].reason, entries[1].reason);
    cr_assert(out.results[2].unregistered);
    cr_assert_eq(out.results[2].n_checks, 0);
    sonar_report_finish(&out);
    free(json);
    /* No results at all. */
    in.results = NULL;
    in.n_results = 0;
    cr_assert_eq(sonar_report_encode(&in, &json), SONAR_OK, "%s", sonar_last_error());
    cr_assert(strstr(json, ",\"results\":[]}") != NULL, "%s", json);
    free(json);
}

/* What the decoder refuses, the encoder refuses too, naming the field. */
Test(protocol, report_encoder_refuses_bad_fields)
{
    static char long_reason[SONAR_MAX_MESSAGE_TEXT + 2];
    memset(long_reason, 'r', sizeof long_reason - 1);
    static char big_message[SONAR_MAX_MESSAGE_TEXT];
    memset(big_message, 'm', sizeof big_message - 1);
    static sonar_check_result many[SONAR_MAX_LIST];
    for (size_t i = 0; i < SONAR_MAX_LIST; i++)
        many[i] = (sonar_check_result){.name = "c", .status = SONAR_PASS, .message = big_message};
    enum { N_CASES = 15 };
    for (int k = 0; k < N_CASES; k++) {
        sonar_check_result checks[] = {
            {.name = "pick", .status = SONAR_FAIL, .duration_ms = 3, .message = "404"},
        };
        sonar_report_entry entries[] = {
            {.service = "fridge", .status = SONAR_FAIL, .checks = checks, .n_checks = 1},
            {.service = "sink", .status = SONAR_INCOMPLETE, .reason = "no answer"},
        };
        sonar_report_msg r = {
            .change_id = "c-1", .service = "chillybin", .version = "2.0.0",
            .address = "http://h:1", .verdict = SONAR_FAIL,
            .started_at = "2026-11-23T18:30:00Z", .duration_ms = 5,
            .counts = {.expected = 2, .fail = 1, .incomplete = 1},
            .results = entries, .n_results = 2,
        };
        sonar_status want = SONAR_ERR_PROTOCOL;
        const char *field = NULL;
        switch (k) {
        case 0: r.change_id = NULL, field = "\"change_id\" is missing"; break;
        case 1: r.service = "no spaces", want = SONAR_ERR_INVALID, field = "service"; break;
        case 2: r.version = "", field = "\"version\" is empty"; break;
        case 3: r.verdict = SONAR_NONE, field = "\"verdict\" is \"none\""; break;
        case 4: r.started_at = "yesterday", field = "started_at"; break;
        case 5: r.duration_ms = -1, field = "\"duration_ms\" is -1"; break;
        case 6: r.counts.fail = -1, field = "counts.fail"; break;
        case 7: entries[1].service = "bad/name", want = SONAR_ERR_INVALID,
                field = "results[1].service"; break;
        case 8: entries[1].status = (sonar_outcome)99, field = "results[1].status"; break;
        case 9: checks[0].status = SONAR_NONE, field = "results[0].checks[0].status"; break;
        case 10: checks[0].message = "bad \xff byte", field = "results[0].checks[0].message";
                 break;
        case 11: entries[1].reason = long_reason, field = "results[1].reason"; break;
        case 12: r.n_results = SONAR_MAX_LIST + 1, field = "\"results\" has 1025 entries"; break;
        case 13: r.results = NULL, want = SONAR_ERR_INVALID, field = "\"results\" has 2"; break;
        case 14: entries[0].checks = many, entries[0].n_checks = SONAR_MAX_LIST,
                 field = "over the limit of 524288 bytes"; break;
        }
        char *json = NULL;
        cr_expect_eq(sonar_report_encode(&r, &json), want, "case %d: %s", k, sonar_last_error());
        cr_expect_null(json, "case %d", k);
        cr_expect(strstr(sonar_last_error(), field) != NULL, "case %d: \"%s\" does not name %s", k,
                  sonar_last_error(), field);
        expect_error_text_is_sendable("report_encoder_refuses_bad_fields");
        free(json);
    }
}
