/* The CLI's shared option parsing (services/cli/cli_common.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "cli_common.h"

static const char *address, *version, *limit;
static bool json;

static const sonar_cli_opt opts[] = {
    {"address", 0, &address, NULL},
    {"version", 0, &version, NULL},
    {"limit", 'n', &limit, NULL},
    {"json", 0, NULL, &json},
    {NULL, 0, NULL, NULL},
};

static void reset(void)
{
    address = version = limit = NULL;
    json = false;
}

/* Parses a NULL-terminated argument list (argv[0] is the subcommand). */
static bool parse(sonar_cli_args *a, size_t max_pos, char *err, size_t errlen, char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    return sonar_cli_parse(a, argc, argv, opts, max_pos, err, errlen);
}

Test(cli_common, parses_own_and_common_options_in_any_order, .init = reset)
{
    sonar_cli_args a;
    char err[256] = "";
    char *argv[32] = {"announce", "--address", "http://x:1", "chillybin", "--json",
                    "--version=2.0.0", "--server", "nats://h:4222", "--user=u", "--password",
                    "p", "--token", "t", "--creds", "c.creds", "--nkey", "UKEY", "--nkey-seed", "seed", "--tlsca",
                    "ca.pem", "--tlscert", "cert.pem", "--tlskey", "key.pem", "-n", "5", NULL};
    cr_assert(parse(&a, 1, err, sizeof err, argv), "%s", err);
    cr_assert_str_eq(address, "http://x:1");
    cr_assert_str_eq(version, "2.0.0");
    cr_assert_str_eq(limit, "5");
    cr_assert(json);
    cr_assert_eq(a.n_pos, 1);
    cr_assert_str_eq(a.pos[0], "chillybin");
    cr_assert_str_eq(a.bus.urls, "nats://h:4222");
    cr_assert_str_eq(a.bus.user, "u");
    cr_assert_str_eq(a.bus.password, "p");
    cr_assert_str_eq(a.bus.token, "t");
    cr_assert_str_eq(a.bus.creds_file, "c.creds");
    cr_assert_str_eq(a.bus.nkey_public, "UKEY");
    cr_assert_str_eq(a.bus.nkey_seed_file, "seed");
    cr_assert_str_eq(a.bus.tls_ca, "ca.pem");
    cr_assert_str_eq(a.bus.tls_cert, "cert.pem");
    cr_assert_str_eq(a.bus.tls_key, "key.pem");
    cr_assert_not(a.help);
}

Test(cli_common, help_wins_over_everything_after_it, .init = reset)
{
    sonar_cli_args a;
    char err[256];
    char *argv[] = {"graph", "-h", "--bogus", NULL};
    cr_assert(parse(&a, 0, err, sizeof err, argv));
    cr_assert(a.help);
    char *argv2[] = {"graph", "--help", NULL};
    cr_assert(parse(&a, 0, err, sizeof err, argv2));
    cr_assert(a.help);
}

Test(cli_common, refuses_bad_command_lines_with_one_line_reasons, .init = reset)
{
    struct {
        char *argv[5];
        const char *reason;
    } cases[] = {
        {{"x", "--bogus", NULL}, "unknown option '--bogus'"},
        {{"x", "--bogus=1", NULL}, "unknown option '--bogus'"},
        {{"x", "-z", NULL}, "unknown option '-z'"},
        {{"x", "-nn", NULL}, "unknown option '-nn'"},
        {{"x", "--address", NULL}, "option '--address' needs a value"},
        {{"x", "--address=", NULL}, "option '--address' needs a non-empty value"},
        {{"x", "--server", "", NULL}, "option '--server' needs a non-empty value"},
        {{"x", "--json=yes", NULL}, "option '--json' takes no value"},
        {{"x", "a", "b", NULL}, "unexpected argument 'b'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sonar_cli_args a;
        memset(&a, 0x5a, sizeof a);
        char err[256] = "";
        cr_assert_not(parse(&a, 1, err, sizeof err, cases[i].argv), "case %zu", i);
        cr_assert(strstr(err, cases[i].reason) != NULL, "case %zu: '%s'", i, err);
        cr_assert(strchr(err, '\n') == NULL);
        cr_assert_eq(a.n_pos, (size_t)0x5a5a5a5a5a5a5a5aULL, "out written on failure");
    }
}

Test(cli_common, double_dash_ends_options_and_dash_is_positional, .init = reset)
{
    sonar_cli_args a;
    char err[256];
    char *argv[] = {"x", "--", "--json", NULL};
    cr_assert(parse(&a, 1, err, sizeof err, argv), "%s", err);
    cr_assert_not(json);
    cr_assert_eq(a.n_pos, 1);
    cr_assert_str_eq(a.pos[0], "--json");
    char *argv2[] = {"x", "-", NULL};
    cr_assert(parse(&a, 1, err, sizeof err, argv2));
    cr_assert_str_eq(a.pos[0], "-");
}

Test(cli_common, json_objects_are_checked_before_use)
{
    json_t *v = sonar_cli_parse_object("{\"a\":1}", 7);
    cr_assert_not_null(v);
    json_decref(v);
    cr_assert_null(sonar_cli_parse_object("[1]", 3));
    cr_assert(strstr(sonar_cli_last_error(), "not a JSON object") != NULL);
    cr_assert_null(sonar_cli_parse_object("{\"a\":", 5));
    cr_assert(strstr(sonar_cli_last_error(), "not JSON") != NULL);
    cr_assert_null(sonar_cli_parse_object("{\"a\":1,\"a\":2}", 13), "duplicate keys refused");
    cr_assert_null(sonar_cli_parse_object(NULL, 0));
}

Test(cli_common, error_replies_map_to_statuses_by_body_or_headers)
{
    const char *body404 = "{\"type\":\"sonar.error.v1\",\"code\":404,\"message\":\"no change x\"}";
    cr_assert_eq(sonar_cli_check_error_reply(NULL, body404, strlen(body404)), SONAR_ERR_NOT_FOUND);
    cr_assert(strstr(sonar_cli_last_error(), "404: no change x") != NULL, "%s",
              sonar_cli_last_error());
    const char *body400 = "{\"type\":\"sonar.error.v1\",\"code\":400,\"message\":\"bad\"}";
    cr_assert_eq(sonar_cli_check_error_reply(NULL, body400, strlen(body400)), SONAR_ERR_INVALID);
    const char *body503 = "{\"type\":\"sonar.error.v1\",\"code\":503,\"message\":\"busy\"}";
    cr_assert_eq(sonar_cli_check_error_reply(NULL, body503, strlen(body503)), SONAR_ERR_STATE);
    const char *broken = "{\"type\":\"sonar.error.v1\",\"code\":\"x\"}";
    cr_assert_eq(sonar_cli_check_error_reply(NULL, broken, strlen(broken)), SONAR_ERR_PROTOCOL);

    /* Only the ADR-32 headers say it is an error. */
    cr_assert_eq(nats_Open(-1), NATS_OK);
    natsMsg *msg = NULL;
    cr_assert_eq(natsMsg_Create(&msg, "x", NULL, "", 0), NATS_OK);
    cr_assert_eq(natsMsgHeader_Set(msg, SONAR_HDR_SERVICE_ERROR_CODE, "404"), NATS_OK);
    cr_assert_eq(natsMsgHeader_Set(msg, SONAR_HDR_SERVICE_ERROR, "gone"), NATS_OK);
    cr_assert_eq(sonar_cli_check_error_reply(msg, "", 0), SONAR_ERR_NOT_FOUND);
    cr_assert(strstr(sonar_cli_last_error(), "gone") != NULL);
    natsMsg_Destroy(msg);
    nats_Close();

    const char *ok = "{\"type\":\"sonar.graph.v1\",\"nodes\":[],\"edges\":[]}";
    cr_assert_eq(sonar_cli_check_error_reply(NULL, ok, strlen(ok)), SONAR_OK);
}
