/* sonar request: one NATS request/reply with a JSON body, reply printed. */
#include <string.h>

#include "cli_common.h"
#include "commands.h"

static const char usage_text[] =
    "usage: sonar request <subject> [<json>] [--timeout 5s] [--compact]\n"
    "\n"
    "Sends <json> (default {}) as a request on <subject> and prints the reply,\n"
    "pretty-printed when it is JSON. Handy for any service's endpoints, e.g.\n"
    "  sonar request aquifers.create '{\"name\":\"gab\",\"region\":\"QLD\"}'\n"
    "  sonar request wells.create '{\"aquifer\":\"gab\",\"owner\":\"ann\",\"depth\":120}'\n"
    "\n"
    "Options:\n"
    "  --timeout DURATION how long to wait for the reply (default 5s, at most 10m)\n"
    "  --compact          print JSON on one line\n"
    "\n"
    "Exit codes: 0 answered, 1 answered with an error (sonar.error.v1 or the\n"
    "Nats-Service-Error headers; printed on stderr), 2 bad arguments, 3 no\n"
    "responders, timeout or bus unreachable.\n";

int sonar_cmd_request(int argc, char **argv)
{
    const char *timeout = NULL;
    bool compact = false;
    const sonar_cli_opt opts[] = {
        {"timeout", 0, &timeout, NULL},
        {"compact", 0, NULL, &compact},
        {NULL, 0, NULL, NULL},
    };
    sonar_cli_args args;
    char err[256];
    if (!sonar_cli_parse(&args, argc, argv, opts, 2, err, sizeof err))
        return sonar_cli_die("request", SONAR_CLI_EXIT_USAGE, "%s (see --help)", err);
    if (args.help) {
        sonar_cli_usage(stdout, usage_text);
        return SONAR_CLI_EXIT_OK;
    }
    if (args.n_pos < 1)
        return sonar_cli_die("request", SONAR_CLI_EXIT_USAGE, "missing <subject> (see --help)");
    const char *subject = args.pos[0];
    if (!sonar_outbox_subject_valid(subject))
        return sonar_cli_die("request", SONAR_CLI_EXIT_USAGE,
                             "<subject> must be a concrete subject: tokens separated by dots, "
                             "no wildcards, no spaces");
    const char *body = args.n_pos > 1 ? args.pos[1] : "{}";
    json_error_t jerr;
    json_t *parsed = json_loads(body, JSON_DECODE_ANY, &jerr);
    if (parsed == NULL)
        return sonar_cli_die("request", SONAR_CLI_EXIT_USAGE, "<json> is not JSON: %s", jerr.text);
    json_decref(parsed);
    int64_t timeout_ms = 5000;
    if (timeout != NULL && sonar_parse_duration_ms(timeout, &timeout_ms) != SONAR_OK)
        return sonar_cli_die("request", SONAR_CLI_EXIT_USAGE, "--timeout: %s", sonar_last_error());
    if (timeout_ms < 1 || timeout_ms > 600000)
        return sonar_cli_die("request", SONAR_CLI_EXIT_USAGE, "--timeout must be 1ms to 10m");

    sonar_bus *bus = NULL;
    if (sonar_cli_connect(&bus, &args) != SONAR_OK)
        return sonar_cli_die("request", SONAR_CLI_EXIT_ERROR, "%s", sonar_cli_last_error());
    natsMsg *reply = NULL;
    natsStatus ns = natsConnection_RequestString(&reply, sonar_bus_nats(bus), subject, body,
                                                 timeout_ms);
    int rc = SONAR_CLI_EXIT_OK;
    if (ns == NATS_NO_RESPONDERS) {
        rc = sonar_cli_die("request", SONAR_CLI_EXIT_ERROR, "nobody answers on %s", subject);
    } else if (ns == NATS_TIMEOUT) {
        rc = sonar_cli_die("request", SONAR_CLI_EXIT_ERROR, "no answer on %s within %lld ms",
                           subject, (long long)timeout_ms);
    } else if (ns != NATS_OK) {
        rc = sonar_cli_die("request", SONAR_CLI_EXIT_ERROR, "request on %s failed: %s", subject,
                           natsStatus_GetText(ns));
    } else {
        const char *data = natsMsg_GetData(reply);
        size_t len = (size_t)natsMsg_GetDataLength(reply);
        if (sonar_cli_check_error_reply(reply, data, len) != SONAR_OK) {
            rc = sonar_cli_die("request", SONAR_CLI_EXIT_NOT_FOUND, "%s", sonar_cli_last_error());
        } else {
            /* JSON is printed pretty (or --compact), anything else as it came. */
            json_t *v = json_loadb(data, len, JSON_DECODE_ANY, NULL);
            size_t flags = compact ? JSON_COMPACT : JSON_INDENT(2);
            if (v == NULL)
                fwrite(data, 1, len, stdout);
            else
                json_dumpf(v, stdout, flags | JSON_ENCODE_ANY);
            putchar('\n');
            json_decref(v);
        }
    }
    natsMsg_Destroy(reply);
    sonar_bus_destroy(bus);
    return rc;
}
