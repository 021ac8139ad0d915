/*
 * Internals shared by gateway.c (HTTP server, routing, replies) and api.c
 * (the REST handlers). Not installed.
 */
#ifndef SONAR_GATEWAY_INTERNAL_H
#define SONAR_GATEWAY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <microhttpd.h>

#include "events.h"
#include "gateway.h"
#include "gwmetrics.h"
#include "sonar/sonar.h"

/** Largest request body accepted (413 beyond). */
#define SONAR_GW_MAX_BODY (64 * 1024)

struct sonar_gateway {
    sonar_bus *bus;
    int64_t timeout_ms;
    char *version;
    char url[128];
    struct MHD_Daemon *mhd;
    sonar_gw_metrics *metrics;
    sonar_gw_events *events;
    sonar_service *svc;
};

/* One HTTP request as a handler sees it (borrowed for the call). */
typedef struct sonar_gw_req {
    struct MHD_Connection *conn;
    const char *method;
    const char *path;
    const char *param;  /* the {…} path segment of a templated route, else NULL */
    const char *body;   /* NUL-terminated; "" when none */
    size_t body_len;
} sonar_gw_req;

/* What a handler answers. Exactly one of body / response is used. */
typedef struct sonar_gw_reply {
    int status;
    const char *content_type;
    char *body;             /* new (free()) */
    size_t body_len;
    const unsigned char *static_body; /* borrowed for the process lifetime */
    char location[160];     /* Location header when not empty */
    char allow[48];         /* Allow header when not empty (405) */
    struct MHD_Response *response; /* a prepared response (event stream) */
} sonar_gw_reply;

typedef void (*sonar_gw_handler)(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);

/* Replies with `doc` (takes the reference) as compact JSON. */
void sonar_gw_reply_json(sonar_gw_reply *rp, int status, json_t *doc);
/* Replies with the error object {"code","message"}. */
void sonar_gw_reply_error(sonar_gw_reply *rp, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Query argument `name` (borrowed), or NULL. */
const char *sonar_gw_query(const sonar_gw_req *rq, const char *name);
/* Refuses (400) unknown and repeated query arguments; `allowed` ends in NULL. */
bool sonar_gw_query_check(const sonar_gw_req *rq, sonar_gw_reply *rp,
                          const char *const *allowed);

/* ---- REST handlers (api.c) ---- */
void sonar_gw_api_services(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_graph(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_checks(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_metrics(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_reports(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_report(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_targets(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_target_add(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_target_remove(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
void sonar_gw_api_events(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);

/* ---- Embedded files (generated static_files.c) ---- */
typedef struct sonar_gw_asset {
    const char *path;          /* URL path, e.g. "/app.js" */
    const char *content_type;
    const unsigned char *data;
    size_t len;
} sonar_gw_asset;

extern const sonar_gw_asset sonar_gw_assets[];
extern const size_t sonar_gw_n_assets;

#endif
