/*
 * fake_service — a test-only sonar service built on libsonar's service API,
 * for sonard's integration tests and benchmark.
 *
 *   fake_service --server URL --name NAME [--depends DEP] [--check pass|fail]
 *                [--message TEXT] [--heartbeat MS] [--instance ID]
 *
 * With --check it registers one check "probe" on DEP that returns the given
 * outcome with --message; with --depends only, it depends on DEP without
 * checks (answers `none`). Prints "ready" on stdout once joined; SIGINT or
 * SIGTERM make it leave the bus and exit 0.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonar/sonar.h"

typedef struct probe {
    bool pass;
    const char *message;
} probe;

static sonar_check_status run_probe(sonar_check_ctx *ctx, void *closure)
{
    const probe *p = closure;
    if (p->pass)
        return sonar_check_pass(ctx, "%s", p->message);
    return sonar_check_fail(ctx, "%s", p->message);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, 's'}, {"name", required_argument, NULL, 'n'},
        {"depends", required_argument, NULL, 'd'}, {"check", required_argument, NULL, 'c'},
        {"message", required_argument, NULL, 'm'}, {"heartbeat", required_argument, NULL, 'b'},
        {"instance", required_argument, NULL, 'i'}, {NULL, 0, NULL, 0},
    };
    const char *server = NULL, *name = NULL, *dep = NULL, *check = NULL, *instance = NULL;
    probe pr = {.pass = true, .message = ""};
    long heartbeat = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 's': server = optarg; break;
        case 'n': name = optarg; break;
        case 'd': dep = optarg; break;
        case 'c': check = optarg; break;
        case 'm': pr.message = optarg; break;
        case 'b': heartbeat = strtol(optarg, NULL, 10); break;
        case 'i': instance = optarg; break;
        default:
            fprintf(stderr, "fake_service: bad option\n");
            return 2;
        }
    }
    if (name == NULL || (check != NULL && dep == NULL) ||
        (check != NULL && strcmp(check, "pass") != 0 && strcmp(check, "fail") != 0)) {
        fprintf(stderr, "fake_service: --name required; --check pass|fail needs --depends\n");
        return 2;
    }
    pr.pass = check == NULL || strcmp(check, "pass") == 0;

    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    sonar_bus_config bc = {.urls = server, .name = name};
    sonar_bus_config_from_env(&bc);
    sonar_bus *bus = NULL;
    sonar_service *svc = NULL;
    sonar_service_config cfg = {.name = name, .version = "1.0.0",
                                .address = "http://127.0.0.1:1", .instance = instance,
                                .heartbeat_ms = heartbeat};
    sonar_status s = sonar_bus_connect(&bus, &bc);
    if (s == SONAR_OK)
        s = sonar_service_create(&svc, bus, &cfg);
    if (s == SONAR_OK && dep != NULL)
        s = check ? sonar_service_add_check(svc, dep, "probe", run_probe, &pr)
                  : sonar_service_depend(svc, dep);
    if (s == SONAR_OK)
        s = sonar_service_start(svc);
    if (s != SONAR_OK) {
        fprintf(stderr, "fake_service %s: %s\n", name, sonar_last_error());
        sonar_service_destroy(svc);
        sonar_bus_destroy(bus);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    int sig;
    sigwait(&stop, &sig);
    sonar_service_destroy(svc);
    sonar_bus_destroy(bus);
    return 0;
}
