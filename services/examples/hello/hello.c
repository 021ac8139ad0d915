/*
 * hello — the smallest complete sonar service.
 *
 * It joins the bus as `--name` (default "hello"), declares that it depends
 * on the service named by `--depends-on`, and registers one check: when a
 * new version of that dependency is announced, sonar asks hello to GET the
 * candidate's /health and expect 200. Everything else (registration,
 * heartbeats, `$SRV` discovery, leaving on shutdown) is libsonar's job.
 *
 *   hello --depends-on chillybin [--name hello] [--version 1.0.0]
 *         [--server nats://127.0.0.1:4222] [--heartbeat 5s]
 *         [--health-path /health] [--expect-body TEXT]
 *
 * Stops cleanly on SIGINT or SIGTERM (leaves the bus, exit 0).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sonar/sonar.h>

typedef struct hello_options {
    const char *name;
    const char *version;
    const char *depends_on;
    const char *server;
    const char *address;
    const char *health_path;
    const char *expect_body;
    int64_t heartbeat_ms;
} hello_options;

/* The check: runs on a worker thread with the candidate's address and a deadline. */
static sonar_check_status check_health(sonar_check_ctx *ctx, void *closure)
{
    const hello_options *opt = closure;
    return sonar_check_http(ctx, "GET", opt->health_path, NULL, 200, opt->expect_body, NULL);
}

static void usage(FILE *to)
{
    fprintf(to,
            "usage: hello --depends-on SERVICE [--name NAME] [--version SEMVER]\n"
            "             [--server URL] [--address URL] [--heartbeat DURATION]\n"
            "             [--health-path PATH] [--expect-body TEXT]\n"
            "Joins sonar and checks GET <candidate>/health whenever SERVICE changes.\n");
}

static int parse_args(int argc, char **argv, hello_options *opt)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "hello: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--name") == 0) opt->name = v;
        else if (strcmp(a, "--version") == 0) opt->version = v;
        else if (strcmp(a, "--depends-on") == 0) opt->depends_on = v;
        else if (strcmp(a, "--server") == 0) opt->server = v;
        else if (strcmp(a, "--address") == 0) opt->address = v;
        else if (strcmp(a, "--health-path") == 0) opt->health_path = v;
        else if (strcmp(a, "--expect-body") == 0) opt->expect_body = v;
        else if (strcmp(a, "--heartbeat") == 0) {
            if (sonar_parse_duration_ms(v, &opt->heartbeat_ms) != SONAR_OK) {
                fprintf(stderr, "hello: --heartbeat: %s\n", sonar_last_error());
                return -1;
            }
        } else {
            fprintf(stderr, "hello: unknown option %s\n", a);
            return -1;
        }
    }
    if (opt->depends_on == NULL) {
        fprintf(stderr, "hello: --depends-on SERVICE is required\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    hello_options opt = {.name = "hello", .version = "1.0.0", .health_path = "/health"};
    if (parse_args(argc, argv, &opt) != 0) {
        usage(stderr);
        return 2;
    }
    sonar_log_set_name(opt.name);

    /* Stop signals are taken below: block them before any thread starts. */
    sonar_stop_signals_block();

    sonar_bus_config bus_cfg = {.urls = opt.server, .name = opt.name};
    sonar_bus_config_from_env(&bus_cfg);
    sonar_bus *bus = NULL;
    sonar_service *svc = NULL;
    int rc = 1;

    sonar_service_config cfg = {
        .name = opt.name,
        .version = opt.version,
        .address = opt.address,
        .description = "hello: the smallest sonar service",
        .heartbeat_ms = opt.heartbeat_ms,
    };
    if (sonar_bus_connect(&bus, &bus_cfg) != SONAR_OK ||
        sonar_service_create(&svc, bus, &cfg) != SONAR_OK ||
        sonar_service_add_check(svc, opt.depends_on, "health answers 200", check_health, &opt) != SONAR_OK ||
        sonar_service_start(svc) != SONAR_OK) {
        fprintf(stderr, "hello: %s\n", sonar_last_error());
        goto out;
    }
    sonar_log(SONAR_LOG_INFO, "joined as instance %s; checking %s", sonar_service_instance(svc),
              opt.depends_on);
    printf("ready %s\n", sonar_service_instance(svc));
    fflush(stdout);

    int sig = sonar_stop_signal_wait();
    sonar_log(SONAR_LOG_INFO, "signal %d: leaving the bus", sig);
    rc = 0;
out:
    sonar_service_destroy(svc);
    sonar_bus_destroy(bus);
    nats_Close();
    return rc;
}
