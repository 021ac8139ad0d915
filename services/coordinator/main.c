/* sonard — the sonar coordinator. See docs/coordinator.md. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "sonar/sonar.h"

#ifndef SONAR_VERSION
#define SONAR_VERSION "0.0.0"
#endif

static void usage(FILE *to)
{
    fprintf(to,
        "usage: sonard [options]\n"
        "\n"
        "The sonar coordinator: keeps the live registry of services, gathers the\n"
        "checks of every dependent when a change is announced, and stores reports.\n"
        "\n"
        "options:\n"
        "  --server URL            NATS server(s), comma-separated (default: NATS_URL,\n"
        "                          else " SONAR_DEFAULT_NATS_URL ")\n"
        "  --db PATH               SQLite database (default ./sonard.db)\n"
        "  --retention DURATION    keep reports this long (default 30d; e.g. 12h, 7d)\n"
        "  --default-timeout DUR   deadline of announcements without timeout_ms (default 10s)\n"
        "  --metrics-listen A:P    serve Prometheus /metrics (and /health) over HTTP on\n"
        "                          IPv4 address A, port P (e.g. 127.0.0.1:9105)\n"
        "  --workers N             endpoint worker threads for the read API and stored-\n"
        "                          report lookups (default 64); gathers hold none\n"
        "  --help                  this text\n"
        "  --version               print the version\n"
        "\n"
        "Authentication comes from the environment like every sonar program:\n"
        "NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS, NATS_NKEY, NATS_CA,\n"
        "NATS_CERT, NATS_KEY. SIGINT or SIGTERM stop it gracefully.\n");
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
        {"retention", required_argument, NULL, 'r'},
        {"default-timeout", required_argument, NULL, 't'},
        {"workers", required_argument, NULL, 'w'},
        {"metrics-listen", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    sonar_coordinator_config cfg = {
        .db_path = "./sonard.db",
        .retention_ms = 30LL * 24 * 3600 * 1000,
        .default_timeout_ms = 10 * 1000,
        .workers = 64,
        .version = SONAR_VERSION,
    };
    const char *server = NULL;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            server = optarg;
            break;
        case 'd':
            if (*optarg == '\0') {
                fprintf(stderr, "sonard: --db needs a path\n");
                return 2;
            }
            cfg.db_path = optarg;
            break;
        case 'r':
            if (!parse_duration(optarg, &cfg.retention_ms)) {
                fprintf(stderr, "sonard: --retention '%s' is not a duration (e.g. 30d, 12h)\n",
                        optarg);
                return 2;
            }
            break;
        case 't':
            if (!parse_duration(optarg, &cfg.default_timeout_ms) ||
                cfg.default_timeout_ms > SONAR_MAX_TIMEOUT_MS) {
                fprintf(stderr, "sonard: --default-timeout '%s' must be a duration from 1ms to 10m\n",
                        optarg);
                return 2;
            }
            break;
        case 'w': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n < 1 || n > 4096) {
                fprintf(stderr, "sonard: --workers '%s' must be a number from 1 to 4096\n", optarg);
                return 2;
            }
            cfg.workers = (int)n;
            break;
        }
        case 'm':
            cfg.metrics_listen = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("sonard %s\n", SONAR_VERSION);
            return 0;
        default:
            fprintf(stderr, "sonard: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sonard: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    /* Stop signals are taken below: block them before any thread starts. */
    sonar_stop_signals_block();

    sonar_log_set_name("sonard");
    /* sonard has no use for its own publishes (gather announcements,
     * heartbeats its registry ignores): the server keeps them. */
    sonar_bus_config bc = {.urls = server, .name = "sonard", .no_echo = true};
    sonar_bus_config_from_env(&bc);
    sonar_bus *bus = NULL;
    if (sonar_bus_connect(&bus, &bc) != SONAR_OK) {
        fprintf(stderr, "sonard: cannot connect to the bus: %s\n", sonar_last_error());
        return 1;
    }
    sonar_coordinator *coord = NULL;
    if (sonar_coordinator_start(&coord, bus, &cfg) != SONAR_OK) {
        fprintf(stderr, "sonard: %s\n", sonar_last_error());
        sonar_bus_destroy(bus);
        return 1;
    }
    int sig = sonar_stop_signal_wait();
    sonar_log(SONAR_LOG_INFO, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    sonar_coordinator_stop(coord);
    sonar_bus_destroy(bus);
    return 0;
}
