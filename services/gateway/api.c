/* sonar-gateway: the REST handlers, each a few requests over the bus. See
 * docs/openapi.yaml for what they answer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway_internal.h"
#include "params.h"

#define SONARD "sonard"
#define STATUSD "statusd"

/* Most services whose histories GET /api/v1/reports merges. */
#define MAX_HISTORY_SERVICES 200

/*
 * Sends `body` (borrowed; NULL: "{}") to `subject` and waits for a JSON
 * object of type `want_type` (NULL: any object). On failure fills rp with the matching HTTP
 * error (503 nobody answers, 504 timeout, the backend's 400/404, 502 for a
 * backend failure or a malformed reply) and returns false.
 */
static bool bus_call(sonar_gateway *gw, sonar_gw_reply *rp, const char *subject,
                     const json_t *body, const char *want_type, const char *backend,
                     json_t **out)
{
    char *payload = body ? json_dumps(body, JSON_COMPACT) : strdup("{}");
    if (payload == NULL) {
        sonar_gw_reply_error(rp, 500, "out of memory");
        return false;
    }
    natsMsg *reply = NULL;
    natsStatus ns = natsConnection_RequestString(&reply, sonar_bus_nats(gw->bus), subject,
                                                 payload, gw->timeout_ms);
    free(payload);
    if (ns == NATS_NO_RESPONDERS) {
        sonar_gw_metrics_bus(gw->metrics, subject, "no_responders");
        sonar_gw_reply_error(rp, 503, "%s is not running: nobody answers on %s", backend,
                             subject);
        return false;
    }
    if (ns == NATS_TIMEOUT) {
        sonar_gw_metrics_bus(gw->metrics, subject, "timeout");
        sonar_gw_reply_error(rp, 504, "%s did not answer on %s within %lld ms", backend, subject,
                             (long long)gw->timeout_ms);
        return false;
    }
    if (ns != NATS_OK) {
        sonar_gw_metrics_bus(gw->metrics, subject, "nats");
        sonar_gw_reply_error(rp, 503, "the bus is unavailable: %s", natsStatus_GetText(ns));
        return false;
    }
    const char *data = natsMsg_GetData(reply);
    size_t len = (size_t)natsMsg_GetDataLength(reply);
    json_t *doc = json_loadb(data ? data : "", len, JSON_REJECT_DUPLICATES, NULL);
    const char *code_hdr = NULL, *text_hdr = NULL;
    natsMsgHeader_Get(reply, SONAR_HDR_SERVICE_ERROR_CODE, &code_hdr);
    natsMsgHeader_Get(reply, SONAR_HDR_SERVICE_ERROR, &text_hdr);
    const char *type = json_string_value(json_object_get(doc, "type"));
    bool ok = false;
    if (code_hdr != NULL || (type && strcmp(type, "sonar.error.v1") == 0)) {
        json_int_t code = json_integer_value(json_object_get(doc, "code"));
        const char *msg = json_string_value(json_object_get(doc, "message"));
        if (code == 0 && code_hdr)
            code = atoi(code_hdr);
        if (msg == NULL)
            msg = text_hdr ? text_hdr : "error";
        sonar_gw_metrics_bus(gw->metrics, subject, "error_reply");
        if (code == 400 || code == 404 || code == 409 || code == 503)
            sonar_gw_reply_error(rp, (int)code, "%s", msg);
        else
            sonar_gw_reply_error(rp, 502, "%s failed on %s: %lld %s", backend, subject,
                                 (long long)code, msg);
    } else if (!json_is_object(doc) ||
               (want_type != NULL && (type == NULL || strcmp(type, want_type) != 0))) {
        sonar_gw_metrics_bus(gw->metrics, subject, "bad_reply");
        sonar_gw_reply_error(rp, 502, "%s answered on %s with %s, expected %s", backend, subject,
                             doc == NULL ? "something that is not JSON"
                             : type      ? type
                                         : "an object without a type",
                             want_type ? want_type : "an object");
    } else {
        sonar_gw_metrics_bus(gw->metrics, subject, NULL);
        ok = true;
    }
    natsMsg_Destroy(reply);
    if (!ok) {
        json_decref(doc);
        return false;
    }
    *out = doc;
    return true;
}

/* Validates an optional name parameter; false (400 sent) when invalid. */
static bool name_param(const sonar_gw_req *rq, sonar_gw_reply *rp, const char *param,
                       const char **out)
{
    const char *v = sonar_gw_query(rq, param);
    if (v != NULL && !sonar_name_valid(v)) {
        sonar_gw_reply_error(rp, 400, "parameter \"%s\" must match ^[A-Za-z0-9_-]{1,64}$",
                             param);
        return false;
    }
    *out = v;
    return true;
}

/* Validates an optional integer parameter in [min, max] (default def). */
static bool int_param(const sonar_gw_req *rq, sonar_gw_reply *rp, const char *param,
                      int64_t min, int64_t max, int64_t def, int64_t *out)
{
    const char *v = sonar_gw_query(rq, param);
    if (v == NULL) {
        *out = def;
        return true;
    }
    if (!sonar_gw_parse_int(v, min, max, out)) {
        sonar_gw_reply_error(rp, 400, "parameter \"%s\" must be an integer from %lld to %lld",
                             param, (long long)min, (long long)max);
        return false;
    }
    return true;
}

/* ---- services -------------------------------------------------------------------- */

static int health_rank(const char *s)
{
    if (s == NULL)
        return 1;
    if (strcmp(s, "critical") == 0)
        return 3;
    if (strcmp(s, "warning") == 0)
        return 2;
    if (strcmp(s, "passing") == 0)
        return 0;
    return 1; /* unknown */
}

static const char *rank_name(int r)
{
    static const char *const names[] = {"passing", "unknown", "warning", "critical"};
    return names[r];
}

static json_t *find_service(json_t *services, const char *name)
{
    size_t i;
    json_t *s;
    json_array_foreach(services, i, s) {
        const char *n = json_string_value(json_object_get(s, "service"));
        if (n && strcmp(n, name) == 0)
            return s;
    }
    return NULL;
}

void sonar_gw_api_services(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {NULL};
    if (!sonar_gw_query_check(rq, rp, allowed))
        return;
    json_t *reg = NULL, *status = NULL;
    if (!bus_call(gw, rp, "sonar.api.services", NULL, "sonar.services.v1", SONARD, &reg))
        return;
    /* statusd is optional: without it every service's health is unknown. */
    sonar_gw_reply srp = {0};
    bool have_status = bus_call(gw, &srp, "sonar.status.targets", NULL,
                                "sonar.status.targets.v1", STATUSD, &status);
    json_t *statusd = json_object();
    json_object_set_new(statusd, "available", json_boolean(have_status));
    if (!have_status) {
        json_t *err = srp.body ? json_loads(srp.body, 0, NULL) : NULL;
        const char *why = json_string_value(json_object_get(err, "message"));
        json_object_set_new(statusd, "error", json_string(why ? why : "unavailable"));
        json_decref(err);
    }
    free(srp.body);

    json_t *services = json_object_get(reg, "services");
    if (!json_is_array(services)) {
        services = json_array();
        json_object_set_new(reg, "services", services);
    }
    size_t i;
    json_t *s;
    json_array_foreach(services, i, s) {
        json_object_set_new(s, "registered", json_true());
        json_object_set_new(s, "targets", json_array());
    }
    json_t *t;
    json_array_foreach(json_object_get(status, "targets"), i, t) {
        const char *svc = json_string_value(json_object_get(t, "service"));
        if (svc == NULL || !sonar_name_valid(svc))
            continue;
        json_t *entry = find_service(services, svc);
        if (entry == NULL) { /* a plain web service known only to statusd */
            entry = json_pack("{s:s, s:b, s:b, s:[], s:[], s:{}, s:[], s:[]}", "service", svc,
                              "live", 0, "registered", 0, "versions", "depends_on", "checks",
                              "instances", "targets");
            json_array_append_new(services, entry);
        }
        json_array_append(json_object_get(entry, "targets"), t);
    }
    json_array_foreach(services, i, s) {
        json_t *targets = json_object_get(s, "targets");
        int worst = json_array_size(targets) ? 0 : 1;
        size_t k;
        json_array_foreach(targets, k, t) {
            int r = health_rank(json_string_value(json_object_get(t, "status")));
            if (r > worst)
                worst = r;
        }
        json_object_set_new(s, "health", json_string(rank_name(worst)));
    }
    json_object_set_new(reg, "type", json_string("sonar.gateway.services.v1"));
    json_object_set_new(reg, "statusd", statusd);
    json_decref(status);
    sonar_gw_reply_json(rp, 200, reg);
}

void sonar_gw_api_graph(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {NULL};
    json_t *doc;
    if (sonar_gw_query_check(rq, rp, allowed) &&
        bus_call(gw, rp, "sonar.api.graph", NULL, "sonar.graph.v1", SONARD, &doc))
        sonar_gw_reply_json(rp, 200, doc);
}

/* ---- statusd queries -------------------------------------------------------------- */

void sonar_gw_api_checks(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {"service", "num", NULL};
    const char *service;
    int64_t num;
    if (!sonar_gw_query_check(rq, rp, allowed) || !name_param(rq, rp, "service", &service) ||
        !int_param(rq, rp, "num", 1, 1000, 20, &num))
        return;
    json_t *body = json_pack("{s:I}", "limit", (json_int_t)num);
    if (service)
        json_object_set_new(body, "service", json_string(service));
    json_t *doc;
    if (bus_call(gw, rp, "sonar.status.checks", body, "sonar.status.checks.v1", STATUSD, &doc))
        sonar_gw_reply_json(rp, 200, doc);
    json_decref(body);
}

static bool time_param(const sonar_gw_req *rq, sonar_gw_reply *rp, const char *param,
                       int64_t def, int64_t *out)
{
    const char *v = sonar_gw_query(rq, param);
    if (v == NULL) {
        *out = def;
        return true;
    }
    char why[160];
    if (!sonar_gw_parse_time(v, out, why, sizeof why)) {
        sonar_gw_reply_error(rp, 400, "parameter \"%s\" %s", param, why);
        return false;
    }
    return true;
}

void sonar_gw_api_metrics(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {"name", "service", "from", "to", "limit", NULL};
    const char *service, *name = sonar_gw_query(rq, "name");
    int64_t from, to, limit, now = sonar_wall_ms();
    if (!sonar_gw_query_check(rq, rp, allowed) || !name_param(rq, rp, "service", &service))
        return;
    if (name != NULL && !sonar_gw_metric_name_valid(name)) {
        sonar_gw_reply_error(rp, 400, "parameter \"name\" must be a metric name matching "
                             "[a-zA-Z_:][a-zA-Z0-9_:]* (at most %d bytes)",
                             SONAR_GW_METRIC_NAME_MAX);
        return;
    }
    if (!time_param(rq, rp, "to", now, &to) || !time_param(rq, rp, "from", to - 3600 * 1000, &from) ||
        !int_param(rq, rp, "limit", 1, 1000, 1000, &limit))
        return;
    if (from > to) {
        sonar_gw_reply_error(rp, 400, "parameter \"from\" is after \"to\"");
        return;
    }
    json_t *body = json_pack("{s:I, s:I, s:I}", "from", (json_int_t)from, "to", (json_int_t)to,
                             "limit", (json_int_t)limit);
    if (name)
        json_object_set_new(body, "name", json_string(name));
    if (service)
        json_object_set_new(body, "service", json_string(service));
    json_t *doc;
    if (bus_call(gw, rp, "sonar.status.metrics", body, "sonar.status.metrics.v1", STATUSD, &doc))
        sonar_gw_reply_json(rp, 200, doc);
    json_decref(body);
}

/* ---- reports ----------------------------------------------------------------------- */

static int by_started_desc(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "started_at"));
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "started_at"));
    return strcmp(y ? y : "", x ? x : "");
}

void sonar_gw_api_reports(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {"service", "limit", NULL};
    const char *service;
    int64_t limit;
    if (!sonar_gw_query_check(rq, rp, allowed) || !name_param(rq, rp, "service", &service) ||
        !int_param(rq, rp, "limit", 1, 1000, 20, &limit))
        return;
    json_t *names = json_array();
    if (service != NULL) {
        json_array_append_new(names, json_string(service));
    } else {
        json_t *graph;
        if (!bus_call(gw, rp, "sonar.api.graph", NULL, "sonar.graph.v1", SONARD, &graph)) {
            json_decref(names);
            return;
        }
        json_array_extend(names, json_object_get(graph, "nodes"));
        json_decref(graph);
    }
    json_t *all = json_array();
    size_t i;
    json_t *n;
    json_array_foreach(names, i, n) {
        const char *svc = json_string_value(n);
        if (i >= MAX_HISTORY_SERVICES || svc == NULL || !sonar_name_valid(svc))
            continue;
        json_t *body = json_pack("{s:s, s:I}", "service", svc, "limit", (json_int_t)limit);
        json_t *hist = NULL;
        bool ok = bus_call(gw, rp, "sonar.api.history", body, "sonar.history.v1", SONARD, &hist);
        json_decref(body);
        if (!ok) {
            json_decref(names);
            json_decref(all);
            return;
        }
        json_array_extend(all, json_object_get(hist, "reports"));
        json_decref(hist);
    }
    json_decref(names);
    /* newest first over every service, then cut to the limit */
    size_t count = json_array_size(all);
    json_t **items = calloc(count ? count : 1, sizeof *items);
    json_t *reports = json_array();
    if (items != NULL) {
        for (i = 0; i < count; i++)
            items[i] = json_array_get(all, i);
        qsort(items, count, sizeof *items, by_started_desc);
        for (i = 0; i < count && (int64_t)i < limit; i++)
            json_array_append(reports, items[i]);
        free(items);
    }
    json_decref(all);
    json_t *doc = json_pack("{s:s, s:o}", "type", "sonar.gateway.reports.v1", "reports", reports);
    if (service)
        json_object_set_new(doc, "service", json_string(service));
    sonar_gw_reply_json(rp, 200, doc);
}

void sonar_gw_api_report(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {NULL};
    if (!sonar_gw_query_check(rq, rp, allowed))
        return;
    if (!sonar_name_valid(rq->param)) {
        sonar_gw_reply_error(rp, 400, "change id must match ^[A-Za-z0-9_-]{1,64}$");
        return;
    }
    json_t *body = json_pack("{s:s}", "change_id", rq->param);
    json_t *doc;
    if (bus_call(gw, rp, "sonar.api.report", body, "sonar.report.v1", SONARD, &doc))
        sonar_gw_reply_json(rp, 200, doc);
    json_decref(body);
}

/* ---- targets ----------------------------------------------------------------------- */

void sonar_gw_api_targets(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {NULL};
    json_t *doc;
    if (sonar_gw_query_check(rq, rp, allowed) &&
        bus_call(gw, rp, "sonar.status.targets", NULL, "sonar.status.targets.v1", STATUSD, &doc))
        sonar_gw_reply_json(rp, 200, doc);
}

/* Checks the POST /api/v1/targets body; NULL (400 sent) when invalid. */
static json_t *target_body(const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    json_error_t jerr;
    json_t *in = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (in == NULL) {
        sonar_gw_reply_error(rp, 400, "body is not JSON: %s (line %d)", jerr.text, jerr.line);
        return NULL;
    }
    const char *why = NULL;
    static const char *const fields[] = {"name", "service", "health", "metrics", "interval_ms",
                                         "timeout_ms", NULL};
    const char *key;
    json_t *v;
    if (!json_is_object(in))
        why = "body must be a JSON object";
    json_object_foreach(in, key, v) {
        bool known = false;
        for (const char *const *f = fields; *f; f++)
            if (strcmp(*f, key) == 0)
                known = true;
        if (!known && why == NULL) {
            sonar_gw_reply_error(rp, 400, "unknown field \"%.64s\" (allowed: name, service, "
                                 "health, metrics, interval_ms, timeout_ms)", key);
            json_decref(in);
            return NULL;
        }
    }
    const char *name = json_string_value(json_object_get(in, "name"));
    json_t *service = json_object_get(in, "service");
    json_t *metrics = json_object_get(in, "metrics");
    json_t *interval = json_object_get(in, "interval_ms");
    json_t *timeout = json_object_get(in, "timeout_ms");
    if (why != NULL)
        ;
    else if (name == NULL || !sonar_name_valid(name))
        why = "field \"name\" is required and must match ^[A-Za-z0-9_-]{1,64}$";
    else if (service && (!json_is_string(service) || !sonar_name_valid(json_string_value(service))))
        why = "field \"service\" must match ^[A-Za-z0-9_-]{1,64}$";
    else if (!sonar_gw_url_valid(json_string_value(json_object_get(in, "health"))))
        why = "field \"health\" is required and must be an http:// or https:// URL";
    else if (metrics && !sonar_gw_url_valid(json_string_value(metrics)))
        why = "field \"metrics\" must be an http:// or https:// URL";
    else if (interval && (!json_is_integer(interval) || json_integer_value(interval) < 100 ||
                          json_integer_value(interval) > 86400000))
        why = "field \"interval_ms\" must be an integer from 100 to 86400000";
    else if (timeout && (!json_is_integer(timeout) || json_integer_value(timeout) < 1 ||
                         json_integer_value(timeout) > 600000))
        why = "field \"timeout_ms\" must be an integer from 1 to 600000";
    if (why != NULL) {
        sonar_gw_reply_error(rp, 400, "%s", why);
        json_decref(in);
        return NULL;
    }
    return in;
}

void sonar_gw_api_target_add(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {NULL};
    if (!sonar_gw_query_check(rq, rp, allowed))
        return;
    json_t *body = target_body(rq, rp);
    if (body == NULL)
        return;
    json_t *doc;
    /* the reply is the bare target object (no type) */
    if (bus_call(gw, rp, "sonar.status.targets.add", body, NULL, STATUSD, &doc)) {
        snprintf(rp->location, sizeof rp->location, "/api/v1/targets/%s",
                 json_string_value(json_object_get(body, "name")));
        sonar_gw_reply_json(rp, 201, doc);
    }
    json_decref(body);
}

void sonar_gw_api_target_remove(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {NULL};
    if (!sonar_gw_query_check(rq, rp, allowed))
        return;
    if (!sonar_name_valid(rq->param)) {
        sonar_gw_reply_error(rp, 400, "target name must match ^[A-Za-z0-9_-]{1,64}$");
        return;
    }
    json_t *body = json_pack("{s:s}", "name", rq->param);
    json_t *doc;
    if (bus_call(gw, rp, "sonar.status.targets.remove", body, "sonar.status.removed.v1", STATUSD,
                 &doc))
        sonar_gw_reply_json(rp, 200, doc);
    json_decref(body);
}

/* ---- events ------------------------------------------------------------------------ */

void sonar_gw_api_events(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const allowed[] = {"change_id", NULL};
    const char *change_id;
    if (!sonar_gw_query_check(rq, rp, allowed) || !name_param(rq, rp, "change_id", &change_id))
        return;
    sonar_gw_client *c = NULL;
    sonar_status s = sonar_gw_client_open(&c, gw->events, change_id);
    if (s == SONAR_ERR_LIMIT) {
        sonar_gw_reply_error(rp, 503, "too many event-stream clients; try again later");
        return;
    }
    if (s != SONAR_OK) {
        sonar_gw_reply_error(rp, 503, "the gateway is stopping");
        return;
    }
    if (change_id != NULL) {
        /* Subscribed first, then asked: a report stored before we subscribed is
         * sent from sonard, one that comes later arrives live. */
        json_t *body = json_pack("{s:s}", "change_id", change_id);
        json_t *report = NULL;
        sonar_gw_reply ignored = {0};
        if (bus_call(gw, &ignored, "sonar.api.report", body, "sonar.report.v1", SONARD, &report)) {
            char *text = json_dumps(report, JSON_COMPACT);
            if (text)
                sonar_gw_client_push_report(c, text, strlen(text));
            free(text);
            json_decref(report);
        }
        free(ignored.body);
        json_decref(body);
    }
    struct MHD_Response *r = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 16 * 1024, sonar_gw_client_read, c, sonar_gw_client_close);
    if (r == NULL) {
        sonar_gw_client_close(c);
        sonar_gw_reply_error(rp, 500, "out of memory");
        return;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    rp->status = 200;
    rp->response = r;
}
