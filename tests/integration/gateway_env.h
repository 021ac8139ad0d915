/*
 * Test support for the gateway's integration tests: the whole stack on a
 * real nats-server — the real sonard, two fake services (chillybin, and
 * jafflr with a failing check on it), the real sonar-gateway — plus a
 * scripted statusd: a responder on the `sonar.status.*` subjects of the
 * contract in HELPERS.md that answers canned targets and echoes the query
 * it got, so tests can see what the gateway sent.
 *
 * Not thread-safe: start/stop from the test's main thread. The scripted
 * statusd answers on a NATS thread.
 */
#ifndef SONAR_TEST_GATEWAY_ENV_H
#define SONAR_TEST_GATEWAY_ENV_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <nats/nats.h>

#include "natsd.h"
#include "proc.h"

typedef struct gw_env {
    test_natsd nd;
    char dir[256];
    natsConnection *nc;
    natsSubscription *statusd;  /* the scripted statusd, NULL when stopped */
    volatile int statusd_silent; /* 1: receive but never answer (timeouts) */
    test_proc sonard, chillybin, jafflr, gateway;
    char url[128];              /* the gateway, "http://127.0.0.1:PORT" */
} gw_env;

/* Starts everything and waits until the gateway answers and both services
 * are live in its /api/v1/services. Asserts on failure. */
void gw_env_start(gw_env *e);
/* Stops everything (SIGKILL what is left) and removes the temp dir. */
void gw_env_stop(gw_env *e);

/* Starts / stops the scripted statusd. */
void gw_env_statusd_start(gw_env *e);
void gw_env_statusd_stop(gw_env *e);

/* One HTTP request to the gateway. */
typedef struct gw_http {
    long status;
    char *body;          /* new */
    json_t *json;        /* parsed body when it is JSON, else NULL */
    char location[256];
    char allow[64];
    char content_type[128];
} gw_http;

/* Performs method on url path (body may be NULL); asserts the transfer worked. */
void gw_http_do(gw_env *e, gw_http *out, const char *method, const char *path, const char *body);
void gw_http_finish(gw_http *h);

/* Announces a change of chillybin with change id `id` over the bus (reply:
 * the report, new). */
json_t *gw_env_announce(gw_env *e, const char *id);

/* Value of the gateway's own metric line starting with `prefix` (e.g.
 * "sonar_gateway_sse_clients "), or -1 when absent. */
double gw_env_metric(gw_env *e, const char *prefix);

#endif
