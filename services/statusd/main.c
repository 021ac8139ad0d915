/* statusd — health checks and metrics of sonar services. See docs/statusd.md. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonar/sonar.h"
#include "statusd.h"

#ifndef SONAR_VERSION
#define SONAR_VERSION "0.0.0"
#endif

static void usage(FILE *to)
{
    fprintf(to,
        "usage: statusd [options]\n"
        "\n"
        "Checks the health of services and scrapes their Prometheus metrics: every\n"
        "registered service naming a health or metrics endpoint, the targets of a config\n"
        "file, and targets added through sonar.status.targets.add. Stores results in\n"
        "SQLite, publishes health transitions on sonar.health.<service> and answers\n"
        "the sonar.status.* query API (docs/statusd.md).\n"
        "\n"
        "options:\n"
        "  --server URL          NATS server(s), comma-separated (default: NATS_URL,\n"
        "                        else " SONAR_DEFAULT_NATS_URL ")\n"
        "  --db PATH             SQLite database (default ./statusd.db)\n"
        "  --config FILE         static targets: {\"targets\":[{\"name\",\"service\",\"health\",\n"
        "                        \"metrics\",\"interval_ms\",\"timeout_ms\",\"failure_threshold\",\n"
        "                        \"success_threshold\"}]}\n"
        "  --interval DURATION   default check interval (default 10s; e.g. 500ms, 1m)\n"
        "  --timeout DURATION    default check timeout (default 5s)\n"
        "  --retention DURATION  keep checks and samples this long (default 1d)\n"
        "  --listen ADDR:PORT    serve statusd's own /metrics and /health (default: off)\n"
        "  --workers N           check worker threads (default 16)\n"
        "  --help                this text\n"
        "  --version             print the version\n"
        "\n"
        "Authentication comes from the environment like every sonar program. SIGINT or\n"
        "SIGTERM stop it gracefully.\n");
}

/* A positive duration ("500ms", "10s", "2m", "12h", "30d"). */
static bool parse_duration(const char *text, int64_t *out)
{
    return sonar_parse_duration_ms(text, out) == SONAR_OK && *out > 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, 's'},
        {"db", required_argument, NULL, 'd'},
        {"config", required_argument, NULL, 'c'},
        {"interval", required_argument, NULL, 'i'},
        {"timeout", required_argument, NULL, 't'},
        {"retention", required_argument, NULL, 'r'},
        {"listen", required_argument, NULL, 'l'},
        {"workers", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    statusd_config cfg = {
        .db_path = "./statusd.db",
        .version = SONAR_VERSION,
        .interval_ms = 10 * 1000,
        .timeout_ms = 5 * 1000,
        .retention_ms = 24LL * 3600 * 1000,
        .workers = 16,
    };
    const char *server = NULL, *config = NULL, *listen = NULL;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            server = optarg;
            break;
        case 'd':
            if (*optarg == '\0') {
                fprintf(stderr, "statusd: --db needs a path\n");
                return 2;
            }
            cfg.db_path = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'i':
            if (!parse_duration(optarg, &cfg.interval_ms) ||
                cfg.interval_ms < STATUSD_INTERVAL_MIN || cfg.interval_ms > STATUSD_INTERVAL_MAX) {
                fprintf(stderr, "statusd: --interval '%s' must be a duration from %dms to 24h\n",
                        optarg, STATUSD_INTERVAL_MIN);
                return 2;
            }
            break;
        case 't':
            if (!parse_duration(optarg, &cfg.timeout_ms) || cfg.timeout_ms < STATUSD_TIMEOUT_MIN ||
                cfg.timeout_ms > STATUSD_TIMEOUT_MAX) {
                fprintf(stderr, "statusd: --timeout '%s' must be a duration from %dms to 10m\n",
                        optarg, STATUSD_TIMEOUT_MIN);
                return 2;
            }
            break;
        case 'r':
            if (!parse_duration(optarg, &cfg.retention_ms) || cfg.retention_ms < 1000) {
                fprintf(stderr, "statusd: --retention '%s' must be a duration of at least 1s "
                                "(e.g. 7d, 12h)\n", optarg);
                return 2;
            }
            break;
        case 'l':
            listen = optarg;
            break;
        case 'w': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n < 1 || n > 1024) {
                fprintf(stderr, "statusd: --workers '%s' must be a number from 1 to 1024\n",
                        optarg);
                return 2;
            }
            cfg.workers = (int)n;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("statusd %s\n", SONAR_VERSION);
            return 0;
        default:
            fprintf(stderr, "statusd: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "statusd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    statusd_target_spec *specs = NULL;
    size_t n_specs = 0;
    if (config != NULL && statusd_config_load(config, &specs, &n_specs) != SONAR_OK) {
        fprintf(stderr, "statusd: config: %s\n", sonar_last_error());
        return 2;
    }
    /* With --listen, statusd registers its own /health and /metrics (and so
     * checks itself like any other service). */
    char health_url[128], metrics_url[128];
    if (listen != NULL && statusd_http_check(listen) != SONAR_OK) {
        fprintf(stderr, "statusd: %s\n", sonar_last_error());
        return 2;
    }
    if (listen != NULL) {
        const char *host = listen;
        size_t hlen = strcspn(listen, ":");
        if (strncmp(listen, "0.0.0.0:", 8) == 0) {
            host = "127.0.0.1";
            hlen = strlen(host);
        }
        const char *port = strrchr(listen, ':');
        snprintf(health_url, sizeof health_url, "http://%.*s%s/health", (int)hlen, host,
                 port ? port : "");
        snprintf(metrics_url, sizeof metrics_url, "http://%.*s%s/metrics", (int)hlen, host,
                 port ? port : "");
        cfg.health_url = health_url;
        cfg.metrics_url = metrics_url;
    }
    cfg.static_targets = specs;
    cfg.n_static_targets = n_specs;

    /* Stop signals are taken below: block them before any thread starts. */
    sonar_stop_signals_block();

    int rc = 1;
    sonar_log_set_name("statusd");
    sonar_bus_config bc = {.urls = server, .name = "statusd"};
    sonar_bus_config_from_env(&bc);
    sonar_bus *bus = NULL;
    statusd *d = NULL;
    statusd_http *http = NULL;
    if (sonar_bus_connect(&bus, &bc) != SONAR_OK) {
        fprintf(stderr, "statusd: cannot connect to the bus: %s\n", sonar_last_error());
        goto out;
    }
    if (statusd_start(&d, bus, &cfg) != SONAR_OK) {
        fprintf(stderr, "statusd: %s\n", sonar_last_error());
        goto out;
    }
    if (listen != NULL) {
        if (statusd_http_start(&http, d, listen) != SONAR_OK) {
            fprintf(stderr, "statusd: %s\n", sonar_last_error());
            rc = 2;
            goto out;
        }
        sonar_log(SONAR_LOG_INFO, "serving /metrics on http://%s", listen);
    }
    int sig = sonar_stop_signal_wait();
    sonar_log(SONAR_LOG_INFO, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;
out:
    statusd_http_stop(http);
    statusd_stop(d);
    sonar_bus_destroy(bus);
    for (size_t i = 0; i < n_specs; i++)
        statusd_spec_finish(&specs[i]);
    free(specs);
    return rc;
}
