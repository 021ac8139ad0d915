/*
 * sonar agent --checks FILE [--health URL]: joins the bus on behalf of a
 * service written in any language. Registration, heartbeat, $SRV and the
 * check runner come from libsonar (sonar_service); the checks are the
 * table's cases, one sonar_check_fn per case, run against each announced
 * candidate with the request's deadline.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli_common.h"
#include "commands.h"

static const char usage_text[] =
    "usage: sonar agent --checks FILE [--health URL] [--address URL] [--instance ID]\n"
    "                   [--heartbeat DURATION]\n"
    "\n"
    "Joins the bus as the service named in the check table and answers check\n"
    "requests for its dependencies by running the table's cases against the\n"
    "announced candidate (its address; NATS steps under the dependency's name).\n"
    "Runs until SIGINT or SIGTERM, then leaves the bus (exit 0).\n"
    "\n"
    "Options:\n"
    "  --checks FILE        the check table (see docs/checks.md)\n"
    "  --health URL         this service's health endpoint, announced in the registration\n"
    "  --address URL        where this instance of the service serves\n"
    "  --instance ID        instance id (default: random)\n"
    "  --heartbeat DURATION registration interval (default 5s)\n"
    "\n"
    "Exit codes: 0 left after a signal, 2 invalid table or arguments, 3 error\n"
    "(bus unreachable).\n";

/* The connection NATS steps use; set before the service starts, then only read. */
static natsConnection *agent_nc;

/* One case of the table as a check; closure is the case (borrowed from the table). */
static sonar_check_status run_case_check(sonar_check_ctx *ctx, void *closure)
{
    const sonar_checkcase *c = closure;
    sonar_checkrun_target target = {
        .address = sonar_check_address(ctx),
        .nc = agent_nc,
        .deadline_ms = sonar_check_deadline_ms(ctx),
    };
    sonar_checkrun_result res;
    if (sonar_checkrun_case(c, &target, &res) != SONAR_OK)
        return sonar_check_fail(ctx, "%s", sonar_last_error());
    if (!res.passed)
        return sonar_check_fail(ctx, "%s", res.message);
    return sonar_check_pass(ctx, "passed in %lld ms", (long long)res.duration_ms);
}

int sonar_cmd_agent(int argc, char **argv)
{
    const char *checks = NULL, *health = NULL, *address = NULL, *instance = NULL,
               *heartbeat = NULL;
    const sonar_cli_opt opts[] = {
        {"checks", 0, &checks, NULL},   {"health", 0, &health, NULL},
        {"address", 0, &address, NULL}, {"instance", 0, &instance, NULL},
        {"heartbeat", 0, &heartbeat, NULL}, {NULL, 0, NULL, NULL},
    };
    sonar_cli_args args;
    char err[512];
    if (!sonar_cli_parse(&args, argc, argv, opts, 0, err, sizeof err)) {
        fprintf(stderr, "sonar agent: %s\n", err);
        sonar_cli_usage(stderr, usage_text);
        return SONAR_CLI_EXIT_USAGE;
    }
    if (args.help) {
        sonar_cli_usage(stdout, usage_text);
        return SONAR_CLI_EXIT_OK;
    }
    if (checks == NULL)
        return sonar_cli_die("agent", SONAR_CLI_EXIT_USAGE, "--checks FILE is required");
    int64_t heartbeat_ms = 0;
    if (heartbeat && (sonar_parse_duration_ms(heartbeat, &heartbeat_ms) != SONAR_OK ||
                      heartbeat_ms <= 0))
        return sonar_cli_die("agent", SONAR_CLI_EXIT_USAGE,
                             "--heartbeat \"%s\": expected a duration like 5s", heartbeat);
    if (health && strncmp(health, "http://", 7) != 0 && strncmp(health, "https://", 8) != 0)
        return sonar_cli_die("agent", SONAR_CLI_EXIT_USAGE,
                             "--health \"%s\": expected an http:// or https:// URL", health);

    sonar_checktable *table = NULL;
    if (sonar_checktable_load(&table, checks) != SONAR_OK)
        return sonar_cli_die("agent", SONAR_CLI_EXIT_USAGE, "invalid check table: %s",
                             sonar_last_error());
    sonar_log_set_name(sonar_checktable_service(table));

    /* Stop signals are taken below: block them before any thread starts. */
    sonar_stop_signals_block();

    int rc = SONAR_CLI_EXIT_ERROR;
    sonar_bus *bus = NULL;
    sonar_service *svc = NULL;
    if (sonar_cli_connect(&bus, &args) != SONAR_OK) {
        fprintf(stderr, "sonar agent: %s\n", sonar_cli_last_error());
        goto out;
    }
    agent_nc = sonar_bus_nats(bus);
    sonar_service_config cfg = {
        .name = sonar_checktable_service(table),
        .version = sonar_checktable_version(table),
        .description = sonar_checktable_description(table),
        .address = address,
        .instance = instance,
        .health = health,
        .heartbeat_ms = heartbeat_ms,
    };
    sonar_status st = sonar_service_create(&svc, bus, &cfg);
    for (size_t i = 0; st == SONAR_OK && i < sonar_checktable_case_count(table); i++) {
        const sonar_checkcase *c = sonar_checktable_case(table, i);
        st = sonar_service_add_check(svc, sonar_checkcase_dependency(c), sonar_checkcase_name(c),
                                     run_case_check, (void *)c);
    }
    if (st == SONAR_OK)
        st = sonar_service_start(svc);
    if (st != SONAR_OK) {
        fprintf(stderr, "sonar agent: %s\n", sonar_last_error());
        rc = st == SONAR_ERR_INVALID ? SONAR_CLI_EXIT_USAGE : SONAR_CLI_EXIT_ERROR;
        goto out;
    }
    sonar_log(SONAR_LOG_INFO, "joined as instance %s with %zu checks on %zu dependencies",
              sonar_service_instance(svc), sonar_checktable_case_count(table),
              sonar_checktable_dependency_count(table));
    printf("ready %s\n", sonar_service_instance(svc));
    fflush(stdout);

    int sig = sonar_stop_signal_wait();
    sonar_log(SONAR_LOG_INFO, "signal %d: leaving the bus", sig);
    rc = SONAR_CLI_EXIT_OK;
out:
    sonar_service_destroy(svc); /* leaves, waits for running checks */
    sonar_bus_destroy(bus);
    agent_nc = NULL;
    sonar_checktable_destroy(table);
    return rc;
}
