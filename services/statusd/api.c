/* statusd: the sonar.status.* query API (endpoint worker threads). */
#include "statusd_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/log.h"
#include "sonar/promtext.h"
#include "sonar/protocol.h"
#include "sonar/util.h"

/* ---- query API (endpoint worker threads) --------------------------------- */

/* The body as a JSON object (an empty body is {}); NULL after a 400 reply.
 * Fields outside \p allowed are refused. */
static json_t *body_object(sonar_request *req, const char *const *allowed)
{
    size_t len = sonar_request_len(req);
    const char *data = sonar_request_data(req);
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n'))
        i++;
    if (i == len)
        return json_object();
    if (len > SONAR_MAX_MESSAGE_BYTES) {
        sonar_request_respond_error(req, 400, "the request body is over %d bytes",
                                    SONAR_MAX_MESSAGE_BYTES);
        return NULL;
    }
    json_error_t err;
    json_t *doc = json_loadb(data, len, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(doc)) {
        sonar_request_respond_error(req, 400, "the request body must be empty or a JSON object%s%s",
                                    doc ? "" : ": ", doc ? "" : err.text);
        json_decref(doc);
        return NULL;
    }
    const char *key;
    json_t *value;
    json_object_foreach(doc, key, value) {
        bool ok = false;
        for (size_t k = 0; allowed[k] && !ok; k++)
            ok = strcmp(allowed[k], key) == 0;
        if (!ok) {
            sonar_request_respond_error(req, 400, "unknown field \"%.64s\"", key);
            json_decref(doc);
            return NULL;
        }
    }
    return doc;
}

static bool opt_int(sonar_request *req, json_t *body, const char *field, long long min,
                    long long max, long long *out)
{
    json_t *v = json_object_get(body, field);
    if (v == NULL)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        sonar_request_respond_error(req, 400, "\"%s\" must be an integer from %lld to %lld",
                                    field, min, max);
        return false;
    }
    *out = json_integer_value(v);
    return true;
}

static bool opt_name(sonar_request *req, json_t *body, const char *field, bool metric,
                     const char **out)
{
    json_t *v = json_object_get(body, field);
    if (v == NULL)
        return true;
    const char *s = json_string_value(v);
    if (s == NULL || (metric ? !sonar_promtext_name_valid(s) : !sonar_name_valid(s))) {
        sonar_request_respond_error(req, 400, "\"%s\" must be %s", field,
                                    metric ? "a metric name matching [a-zA-Z_:][a-zA-Z0-9_:]*"
                                           : "a name matching ^[A-Za-z0-9_-]{1,64}$");
        return false;
    }
    *out = s;
    return true;
}

static json_t *result_json(const sonar_health_result *r)
{
    json_t *o = json_pack("{s:s, s:I, s:I}", "status", sonar_health_status_str(r->status),
                          "http_code", (json_int_t)r->http_code, "duration_ms",
                          (json_int_t)r->duration_ms);
    if (o != NULL) {
        statusd__time_json(o, "time", r->checked_at_ms);
        json_object_set_new(o, "error", r->error[0] ? json_string(r->error) : json_null());
    }
    return o;
}

json_t *statusd__target_json(const target *t)
{
    json_t *o = statusd_spec_json(&t->spec, t->source);
    if (o == NULL)
        return NULL;
    json_object_set_new(o, "interval_ms", json_integer(t->interval_ms));
    json_object_set_new(o, "timeout_ms", json_integer(t->timeout_ms));
    json_object_set_new(o, "status", json_string(sonar_health_status_str(t->state.status)));
    json_object_set_new(o, "last_check", t->has_last ? result_json(&t->last) : json_null());
    if (t->scrape_at_ms > 0) {
        json_t *s = json_pack("{s:I}", "samples", (json_int_t)t->scrape_samples);
        statusd__time_json(s, "time", t->scrape_at_ms);
        json_object_set_new(s, "error", t->scrape_error[0] ? json_string(t->scrape_error)
                                                           : json_null());
        json_object_set_new(o, "last_scrape", s);
    } else {
        json_object_set_new(o, "last_scrape", json_null());
    }
    return o;
}

static int by_name(const void *a, const void *b)
{
    const target *x = *(const target *const *)a, *y = *(const target *const *)b;
    return strcmp(x->spec.name, y->spec.name);
}

static sonar_status api_targets(sonar_request *req, void *closure)
{
    statusd *d = closure;
    static const char *const allowed[] = {NULL};
    json_t *body = body_object(req, allowed);
    if (body == NULL)
        return SONAR_OK;
    json_decref(body);
    json_t *arr = json_array();
    pthread_mutex_lock(&d->lock);
    target **sorted = malloc((d->n_targets + 1) * sizeof *sorted);
    if (sorted != NULL && arr != NULL && d->n_targets > 0) {
        memcpy(sorted, d->targets, d->n_targets * sizeof *sorted);
        qsort(sorted, d->n_targets, sizeof *sorted, by_name);
        for (size_t i = 0; i < d->n_targets; i++)
            json_array_append_new(arr, statusd__target_json(sorted[i]));
    }
    pthread_mutex_unlock(&d->lock);
    free(sorted);
    return sonar_request_respond_json(req, json_pack("{s:s, s:o}", "type",
                                                     "sonar.status.targets.v1",
                                       "targets", arr));
}

static sonar_status api_checks(sonar_request *req, void *closure)
{
    statusd *d = closure;
    static const char *const allowed[] = {"service", "limit", NULL};
    json_t *body = body_object(req, allowed);
    if (body == NULL)
        return SONAR_OK;
    const char *service = NULL;
    long long limit = SONAR_STATUSSTORE_CHECKS_DEFAULT;
    if (!opt_name(req, body, "service", false, &service) ||
        !opt_int(req, body, "limit", 1, SONAR_STATUSSTORE_CHECKS_MAX, &limit)) {
        json_decref(body);
        return SONAR_OK;
    }
    sonar_statusstore_checks list = {0};
    sonar_status s = sonar_statusstore_checks_for(d->store, service, (size_t)limit, &list);
    json_decref(body);
    if (s != SONAR_OK)
        return sonar_request_respond_error(req, 500, "%s", sonar_last_error());
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < list.count; i++) {
        const sonar_statusstore_check *c = &list.items[i];
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "target", c->target, "service",
                              c->service, "status", sonar_health_status_str(c->observed),
                              "reported", sonar_health_status_str(c->reported), "http_code",
                              (json_int_t)c->http_code, "duration_ms",
                              (json_int_t)c->duration_ms);
        if (o == NULL)
            continue;
        statusd__time_json(o, "time", c->at_ms);
        json_object_set_new(o, "error",
                            c->error && *c->error ? json_string(c->error) : json_null());
        json_array_append_new(arr, o);
    }
    sonar_statusstore_checks_finish(&list);
    return sonar_request_respond_json(req, json_pack("{s:s, s:o}", "type",
                                                     "sonar.status.checks.v1", "checks",
                                       arr));
}

static json_t *value_json(double v)
{
    if (isnan(v))
        return json_string("NaN");
    if (isinf(v))
        return json_string(v > 0 ? "+Inf" : "-Inf");
    return json_real(v);
}

static sonar_status api_metrics(sonar_request *req, void *closure)
{
    statusd *d = closure;
    static const char *const allowed[] = {"name", "service", "from", "to", "limit", NULL};
    json_t *body = body_object(req, allowed);
    if (body == NULL)
        return SONAR_OK;
    sonar_statusstore_sample_query q = {0};
    long long from = 0, to = 0, limit = SONAR_STATUSSTORE_SAMPLES_DEFAULT;
    bool ok = opt_name(req, body, "name", true, &q.name) &&
              opt_name(req, body, "service", false, &q.service) &&
              opt_int(req, body, "from", 0, INT64_MAX, &from) &&
              opt_int(req, body, "to", 0, INT64_MAX, &to) &&
              opt_int(req, body, "limit", 1, SONAR_STATUSSTORE_SAMPLES_MAX, &limit);
    if (ok && from > 0 && to > 0 && from > to) {
        sonar_request_respond_error(req, 400, "\"from\" (%lld) is after \"to\" (%lld)", from, to);
        ok = false;
    }
    if (!ok) {
        json_decref(body);
        return SONAR_OK;
    }
    q.from_ms = from;
    q.to_ms = to;
    q.limit = (size_t)limit;
    sonar_statusstore_samples list = {0};
    sonar_status s = sonar_statusstore_query_samples(d->store, &q, &list);
    json_decref(body);
    if (s != SONAR_OK)
        return sonar_request_respond_error(req, s == SONAR_ERR_INVALID ? 400 : 500, "%s",
                                           sonar_last_error());
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < list.count; i++) {
        const sonar_statusstore_sample *sm = &list.items[i];
        json_t *labels = json_loads(sm->labels_json, 0, NULL);
        if (!json_is_object(labels)) {
            json_decref(labels);
            labels = json_object();
        }
        json_t *tgt = json_object_get(labels, "target");
        json_t *o = json_pack("{s:s, s:O?, s:s, s:o, s:o}", "service", sm->service, "target",
                              json_is_string(tgt) ? tgt : NULL, "name", sm->name, "labels",
                              labels, "value", value_json(sm->value));
        if (o == NULL)
            continue;
        statusd__time_json(o, "time", sm->at_ms);
        json_array_append_new(arr, o);
    }
    sonar_statusstore_samples_finish(&list);
    return sonar_request_respond_json(req, json_pack("{s:s, s:o}", "type",
                                                     "sonar.status.metrics.v1",
                                       "samples", arr));
}

/* API targets are kept in statusd_api_targets so they survive restarts. */
static sonar_status persist_api_target(statusd *d, const char *name, const char *spec_json)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&d->db_lock);
    int rc = sqlite3_prepare_v2(d->db,
                                spec_json ? "INSERT OR REPLACE INTO statusd_api_targets(name, spec)"
                                            " VALUES (?1, ?2)"
                                          : "DELETE FROM statusd_api_targets WHERE name = ?1",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        if (spec_json)
            sqlite3_bind_text(st, 2, spec_json, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
    }
    sonar_status s = rc == SQLITE_DONE ? SONAR_OK
                                       : sonar__fail(SONAR_ERR_DB, "saving API target %s: %s",
                                                     name, sqlite3_errmsg(d->db));
    sqlite3_finalize(st);
    pthread_mutex_unlock(&d->db_lock);
    return s;
}

static sonar_status api_add(sonar_request *req, void *closure)
{
    statusd *d = closure;
    static const char *const allowed[] = {"name", "service", "health", "metrics", "interval_ms",
                                          "timeout_ms", "failure_threshold",
                                          "success_threshold", NULL};
    json_t *body = body_object(req, allowed);
    if (body == NULL)
        return SONAR_OK;
    statusd_target_spec spec = {0};
    char *text = NULL;
    if (statusd_spec_from_json(&spec, body, "body") != SONAR_OK) {
        sonar_request_respond_error(req, 400, "%s", sonar_last_error());
        goto out;
    }
    pthread_mutex_lock(&d->lock);
    target *t = statusd__find_name(d, spec.name);
    statusd_source taken = t ? t->source : STATUSD_SOURCE_API;
    bool full = t == NULL && d->n_targets >= STATUSD_MAX_TARGETS;
    pthread_mutex_unlock(&d->lock);
    if (full) {
        sonar_request_respond_error(req, 503, "already %d targets", STATUSD_MAX_TARGETS);
        goto out;
    }
    if (taken != STATUSD_SOURCE_API) {
        sonar_request_respond_error(req, 400, "target name \"%s\" is taken by a %s target",
                                    spec.name, statusd_source_str(taken));
        goto out;
    }
    text = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (text == NULL || persist_api_target(d, spec.name, text) != SONAR_OK) {
        sonar_request_respond_error(req, 500, "%s", text ? sonar_last_error() : "out of memory");
        goto out;
    }
    json_t *reply = NULL;
    pthread_mutex_lock(&d->lock);
    if (statusd__upsert(d, &spec, STATUSD_SOURCE_API) == SONAR_OK)
        reply = statusd__target_json(statusd__find_name(d, spec.name));
    pthread_mutex_unlock(&d->lock);
    if (reply == NULL)
        sonar_request_respond_error(req, 500, "%s", sonar_last_error());
    else
        sonar_request_respond_json(req, reply);
    sonar_log(SONAR_LOG_INFO, "API target %s added: health %s", spec.name, spec.health);
out:
    free(text);
    statusd_spec_finish(&spec);
    json_decref(body);
    return SONAR_OK;
}

static sonar_status api_remove(sonar_request *req, void *closure)
{
    statusd *d = closure;
    static const char *const allowed[] = {"name", NULL};
    json_t *body = body_object(req, allowed);
    if (body == NULL)
        return SONAR_OK;
    const char *name = json_string_value(json_object_get(body, "name"));
    char *service = NULL;
    if (!sonar_name_valid(name)) {
        sonar_request_respond_error(req, 400, "\"name\" is %s: it must match ^[A-Za-z0-9_-]{1,64}$",
                                    name ? "invalid" : "missing");
        goto out;
    }
    pthread_mutex_lock(&d->lock);
    target *t = statusd__find_name(d, name);
    int code = t == NULL ? 404 : t->source != STATUSD_SOURCE_API ? 400 : 0;
    statusd_source src = t ? t->source : STATUSD_SOURCE_API;
    if (code == 0) {
        service = strdup(t->spec.service);
        statusd__remove_name(d, name);
    }
    pthread_mutex_unlock(&d->lock);
    if (code == 404) {
        sonar_request_respond_error(req, 404, "no target named \"%s\"", name);
        goto out;
    }
    if (code == 400) {
        sonar_request_respond_error(
            req, 400, "target \"%s\" comes from the %s; only API targets can be removed", name,
            src == STATUSD_SOURCE_CONFIG ? "config file" : "registry");
        goto out;
    }
    if (persist_api_target(d, name, NULL) != SONAR_OK)
        sonar_log(SONAR_LOG_WARN, "%s", sonar_last_error());
    if (service != NULL)
        sonar_statusstore_remove_target(d->store, service, name); /* NOT_FOUND when never checked */
    sonar_request_respond_json(
        req, json_pack("{s:s, s:s}", "type", "sonar.status.removed.v1", "name", name));
    sonar_log(SONAR_LOG_INFO, "API target %s removed", name);
out:
    free(service);
    json_decref(body);
    return SONAR_OK;
}

sonar_status statusd__add_endpoints(statusd *d)
{
    /* Names as listed in $SRV.INFO; all in queue group "statusd". */
    sonar_service *svc = d->svc;
    sonar_status s =
        sonar_service_add_endpoint(svc, "targets", "sonar.status.targets", STATUSD_NAME,
                                   api_targets, d);
    if (s == SONAR_OK)
        s = sonar_service_add_endpoint(svc, "checks", "sonar.status.checks", STATUSD_NAME,
                                       api_checks, d);
    if (s == SONAR_OK)
        s = sonar_service_add_endpoint(svc, "metrics", "sonar.status.metrics", STATUSD_NAME,
                                       api_metrics, d);
    if (s == SONAR_OK)
        s = sonar_service_add_endpoint(svc, "targets-add", "sonar.status.targets.add",
                                       STATUSD_NAME, api_add, d);
    if (s == SONAR_OK)
        s = sonar_service_add_endpoint(svc, "targets-remove", "sonar.status.targets.remove",
                                       STATUSD_NAME, api_remove, d);
    return s;
}
