/* sonar-gateway — HTTP over the bus: REST API, event stream, dashboard.
 * See docs/gateway.md. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>

#include "gateway.h"
#include "sonar/sonar.h"

#ifndef SONAR_VERSION
#define SONAR_VERSION "0.0.0"
#endif

static void usage(FILE *to)
{
    fprintf(to,
        "usage: sonar-gateway [options]\n"
        "\n"
        "HTTP gateway of sonar: the REST API (docs/openapi.yaml, also served at\n"
        "/api/v1/openapi.yaml), live events as server-sent events, the dashboard at /,\n"
        "and its own Prometheus /metrics. Stateless: every answer comes from sonard\n"
        "and statusd over the bus.\n"
        "\n"
        "options:\n"
        "  --listen ADDR:PORT   where to serve HTTP (default " SONAR_GATEWAY_DEFAULT_LISTEN ";\n"
        "                       port 0 picks a free port; [::1]:8090 for IPv6)\n"
        "  --server URL         NATS server(s), comma-separated (default: NATS_URL,\n"
        "                       else " SONAR_DEFAULT_NATS_URL ")\n"
        "  --timeout DURATION   timeout of each request over the bus (default 5s)\n"
        "  --sse-queue N        events queued per event-stream client before a slow\n"
        "                       client is dropped (default 512, 8..65536)\n"
        "  --help               this text\n"
        "  --version            print the version\n"
        "\n"
        "Prints \"listening on http://ADDR:PORT\" on stdout once it serves.\n"
        "Authentication comes from the environment like every sonar program:\n"
        "NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS, NATS_NKEY, NATS_CA,\n"
        "NATS_CERT, NATS_KEY. SIGINT or SIGTERM stop it gracefully.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'}, {"server", required_argument, NULL, 's'},
        {"timeout", required_argument, NULL, 't'}, {"sse-queue", required_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    sonar_gateway_config cfg = {
        .listen = SONAR_GATEWAY_DEFAULT_LISTEN,
        .timeout_ms = SONAR_GATEWAY_DEFAULT_TIMEOUT_MS,
        .version = SONAR_VERSION,
    };
    const char *server = NULL;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            if (*optarg == '\0') {
                fprintf(stderr, "sonar-gateway: --listen needs ADDR:PORT\n");
                return 2;
            }
            cfg.listen = optarg;
            break;
        case 's':
            server = optarg;
            break;
        case 't':
            if (sonar_parse_duration_ms(optarg, &cfg.timeout_ms) != SONAR_OK ||
                cfg.timeout_ms < 1 || cfg.timeout_ms > 600000) {
                fprintf(stderr, "sonar-gateway: --timeout '%s' must be a duration from 1ms to "
                        "10m (e.g. 5s, 500ms)\n", optarg);
                return 2;
            }
            break;
        case 'q': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n < 8 || n > 65536) {
                fprintf(stderr, "sonar-gateway: --sse-queue '%s' must be a number from 8 to "
                        "65536\n", optarg);
                return 2;
            }
            cfg.sse_queue = (int)n;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("sonar-gateway %s\n", SONAR_VERSION);
            return 0;
        default:
            fprintf(stderr, "sonar-gateway: unknown or incomplete option '%s'\n",
                    argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sonar-gateway: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    if (sonar_gateway_listen_check(cfg.listen) != SONAR_OK) {
        fprintf(stderr, "sonar-gateway: --listen: %s\n", sonar_last_error());
        return 2;
    }

    /* Stop signals are taken below: block them before any thread starts. */
    sonar_stop_signals_block();
    signal(SIGPIPE, SIG_IGN);

    sonar_log_set_name("sonar-gateway");
    sonar_bus_config bc = {.urls = server, .name = "sonar-gateway"};
    sonar_bus_config_from_env(&bc);
    sonar_bus *bus = NULL;
    if (sonar_bus_connect(&bus, &bc) != SONAR_OK) {
        fprintf(stderr, "sonar-gateway: cannot connect to the bus: %s\n", sonar_last_error());
        return 1;
    }
    sonar_gateway *gw = NULL;
    sonar_status st = sonar_gateway_start(&gw, bus, &cfg);
    if (st != SONAR_OK) {
        fprintf(stderr, "sonar-gateway: %s\n", sonar_last_error());
        sonar_bus_destroy(bus);
        return st == SONAR_ERR_INVALID ? 2 : 1;
    }
    printf("listening on %s\n", sonar_gateway_url(gw));
    fflush(stdout);
    sonar_log(SONAR_LOG_INFO, "listening on %s", sonar_gateway_url(gw));
    int sig = sonar_stop_signal_wait();
    sonar_log(SONAR_LOG_INFO, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    sonar_gateway_stop(gw);
    sonar_bus_destroy(bus);
    return 0;
}
