/* statusd: one job on a worker thread — health check, scrape, storage, event. */
#include "statusd_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/http.h"
#include "sonar/log.h"
#include "sonar/promtext.h"
#include "sonar/util.h"

#define HEALTH_PREFIX "sonar.health."

/* ---- checks and scrapes (worker threads) -------------------------------- */

static bool token_safe(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++)
        if (*s == '.' || *s == '*' || *s == '>' || (unsigned char)*s <= 0x20 ||
            (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* "$SRV.<verb>.<service>[.<instance>]" */
static void srv_subject(char *buf, size_t len, const char *verb, const statusd_target_spec *s)
{
    if (token_safe(s->instance))
        snprintf(buf, len, "$SRV.%s.%s.%s", verb, s->service, s->instance);
    else
        snprintf(buf, len, "$SRV.%s.%s", verb, s->service);
}

static void ping_nats(statusd *d, const statusd_target_spec *s, int64_t timeout_ms,
                      sonar_health_result *res)
{
    char subject[512];
    srv_subject(subject, sizeof subject, "PING", s);
    memset(res, 0, sizeof *res);
    res->checked_at_ms = sonar_wall_ms();
    int64_t t0 = sonar_now_ms();
    natsMsg *reply = NULL;
    natsStatus ns = natsConnection_Request(&reply, d->nc, subject, "", 0, timeout_ms);
    res->duration_ms = sonar_now_ms() - t0;
    if (ns == NATS_OK && !natsMsg_IsNoResponders(reply)) {
        res->status = SONAR_HEALTH_PASSING;
    } else {
        res->status = SONAR_HEALTH_CRITICAL;
        snprintf(res->error, sizeof res->error, "%.200s: %s", subject,
                 ns == NATS_TIMEOUT ? "no reply before the timeout"
                 : ns == NATS_NO_RESPONDERS || ns == NATS_OK ? "no responders"
                                                             : natsStatus_GetText(ns));
    }
    natsMsg_Destroy(reply);
}

static void run_check(statusd *d, const job *j, sonar_health_result *res)
{
    if (strcmp(j->spec.health, "nats") == 0) {
        ping_nats(d, &j->spec, j->timeout_ms, res);
        return;
    }
    if (sonar_health_check_http(j->spec.health, j->timeout_ms, res) != SONAR_OK) {
        memset(res, 0, sizeof *res);
        res->checked_at_ms = sonar_wall_ms();
        res->status = SONAR_HEALTH_CRITICAL;
        snprintf(res->error, sizeof res->error, "%s", sonar_last_error());
    }
}

void statusd__time_json(json_t *o, const char *key, int64_t wall_ms)
{
    char buf[40];
    sonar_format_rfc3339(wall_ms, buf, sizeof buf);
    json_object_set_new(o, key, json_string(buf));
}

static void publish_transition(statusd *d, const job *j, const sonar_health_transition *tr,
                               const sonar_health_result *res)
{
    json_t *ev = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "type", "sonar.health.v1",
                           "service", j->spec.service, "target", j->spec.name, "from",
                           sonar_health_status_str(tr->from), "to",
                           sonar_health_status_str(tr->to), "http_code",
                           (json_int_t)res->http_code, "duration_ms",
                           (json_int_t)res->duration_ms);
    char *text = NULL;
    if (ev != NULL) {
        statusd__time_json(ev, "time", res->checked_at_ms);
        json_object_set_new(ev, "error", res->error[0] ? json_string(res->error) : json_null());
        text = json_dumps(ev, JSON_COMPACT);
    }
    json_decref(ev);
    char subject[128];
    snprintf(subject, sizeof subject, HEALTH_PREFIX "%s", j->spec.service);
    sonar_status s = text ? SONAR_OK : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    if (s == SONAR_OK) {
        pthread_mutex_lock(&d->db_lock);
        s = sonar_outbox_enqueue(NULL, d->db, subject, text, strlen(text), NULL);
        pthread_mutex_unlock(&d->db_lock);
    }
    if (s == SONAR_OK) {
        sonar_outbox_notify(d->outbox);
        atomic_fetch_add(&d->transitions, 1);
        sonar_log(SONAR_LOG_INFO, "%s (%s): %s -> %s%s%s", j->spec.name, j->spec.service,
                  sonar_health_status_str(tr->from), sonar_health_status_str(tr->to),
                  res->error[0] ? ": " : "", res->error);
    } else {
        atomic_fetch_add(&d->event_errors, 1);
        sonar_log(SONAR_LOG_ERROR, "health event of %s lost: %s", j->spec.name,
                  sonar_last_error());
    }
    free(text);
}

/* Labels of a scraped sample plus service and target (existing ones are
 * kept as exported_service / exported_target, as Prometheus does). */
typedef struct label_buf {
    sonar_promtext_label *labels;
    size_t n;
} label_buf;

static sonar_status add_own_labels(label_buf *b, const sonar_promtext_label *in, size_t n,
                                   const char *service, const char *tname)
{
    b->labels = calloc(n + 2, sizeof *b->labels);
    if (b->labels == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        b->labels[i] = in[i];
        if (strcmp(in[i].name, "service") == 0)
            b->labels[i].name = "exported_service";
        else if (strcmp(in[i].name, "target") == 0)
            b->labels[i].name = "exported_target";
    }
    b->labels[n] = (sonar_promtext_label){"service", service};
    b->labels[n + 1] = (sonar_promtext_label){"target", tname};
    b->n = n + 2;
    return SONAR_OK;
}

static sonar_status store_promtext(statusd *d, const job *j, const sonar_promtext *parsed,
                                   int64_t at_ms, size_t *stored)
{
    size_t n = sonar_promtext_sample_count(parsed), k = 0;
    sonar_statusstore_sample_in *in = calloc(n ? n : 1, sizeof *in);
    label_buf *bufs = calloc(n ? n : 1, sizeof *bufs);
    sonar_status rc = in && bufs ? SONAR_OK : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    for (size_t f = 0; rc == SONAR_OK && f < sonar_promtext_family_count(parsed); f++) {
        const sonar_promtext_family *fam = sonar_promtext_family_at(parsed, f);
        for (size_t i = 0; rc == SONAR_OK && i < fam->n_samples; i++, k++) {
            const sonar_promtext_sample *s = &fam->samples[i];
            rc = add_own_labels(&bufs[k], s->labels, s->n_labels, j->spec.service,
                                j->spec.name);
            in[k] = (sonar_statusstore_sample_in){
                .service = j->spec.service, .name = s->name, .labels = bufs[k].labels,
                .n_labels = bufs[k].n, .value = s->value,
                .at_ms = s->has_timestamp ? s->timestamp_ms : at_ms};
        }
    }
    if (rc == SONAR_OK)
        rc = sonar_statusstore_add_samples(d->store, in, k);
    for (size_t i = 0; bufs && i < k; i++)
        free(bufs[i].labels);
    free(bufs);
    free(in);
    if (rc == SONAR_OK)
        *stored = k;
    return rc;
}

static sonar_status scrape_http(statusd *d, const job *j, int64_t at_ms, size_t *stored)
{
    static const char *const headers[] = {"Accept: text/plain;version=0.0.4", NULL};
    sonar_http_request rq = {.url = j->spec.metrics, .headers = headers,
                             .timeout_ms = j->timeout_ms};
    sonar_http_response resp = {0};
    sonar_status rc = sonar_http_perform(&rq, &resp);
    if (rc == SONAR_OK && (resp.status < 200 || resp.status > 299))
        rc = sonar__fail(SONAR_ERR_HTTP, "HTTP %ld", resp.status);
    sonar_promtext *parsed = NULL;
    sonar_promtext_error perr;
    if (rc == SONAR_OK) {
        rc = sonar_promtext_parse(&parsed, resp.body, resp.body_len, &perr);
        if (rc != SONAR_OK)
            rc = sonar__fail(rc, "line %zu: %s", perr.line, perr.reason);
    }
    if (rc == SONAR_OK)
        rc = store_promtext(d, j, parsed, at_ms, stored);
    sonar_promtext_destroy(parsed);
    sonar_http_response_finish(&resp);
    return rc;
}

/* $SRV.STATS: per endpoint requests, errors and processing time. */
static sonar_status scrape_nats(statusd *d, const job *j, int64_t at_ms, size_t *stored)
{
    char subject[512];
    srv_subject(subject, sizeof subject, "STATS", &j->spec);
    natsMsg *reply = NULL;
    natsStatus ns = natsConnection_Request(&reply, d->nc, subject, "", 0, j->timeout_ms);
    if (ns != NATS_OK || natsMsg_IsNoResponders(reply)) {
        natsMsg_Destroy(reply);
        return sonar__fail(SONAR_ERR_NATS, "%s: %s", subject,
                           ns == NATS_OK ? "no responders" : natsStatus_GetText(ns));
    }
    json_t *doc = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0,
                             NULL);
    natsMsg_Destroy(reply);
    json_t *eps = json_object_get(doc, "endpoints");
    if (!json_is_array(eps)) {
        json_decref(doc);
        return sonar__fail(SONAR_ERR_PROTOCOL, "%s: the reply has no endpoints array", subject);
    }
    static const struct {
        const char *metric, *field;
        double scale;
    } map[] = {
        {"sonar_endpoint_requests_total", "num_requests", 1},
        {"sonar_endpoint_errors_total", "num_errors", 1},
        {"sonar_endpoint_processing_seconds_total", "processing_time", 1e-9},
    };
    size_t n = json_array_size(eps) * 3, k = 0;
    sonar_statusstore_sample_in *in = calloc(n ? n : 1, sizeof *in);
    sonar_promtext_label *labels = calloc(n ? n * 3 : 1, sizeof *labels);
    sonar_status rc = in && labels ? SONAR_OK : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    for (size_t i = 0; rc == SONAR_OK && i < json_array_size(eps); i++) {
        json_t *ep = json_array_get(eps, i);
        const char *epname = json_string_value(json_object_get(ep, "name"));
        if (epname == NULL)
            continue;
        for (size_t m = 0; m < 3; m++) {
            json_t *v = json_object_get(ep, map[m].field);
            if (!json_is_number(v))
                continue;
            sonar_promtext_label *l = &labels[k * 3];
            l[0] = (sonar_promtext_label){"endpoint", epname};
            l[1] = (sonar_promtext_label){"service", j->spec.service};
            l[2] = (sonar_promtext_label){"target", j->spec.name};
            in[k++] = (sonar_statusstore_sample_in){
                .service = j->spec.service, .name = map[m].metric, .labels = l, .n_labels = 3,
                .value = json_number_value(v) * map[m].scale, .at_ms = at_ms};
        }
    }
    if (rc == SONAR_OK)
        rc = sonar_statusstore_add_samples(d->store, in, k);
    if (rc == SONAR_OK)
        *stored = k;
    free(in);
    free(labels);
    json_decref(doc);
    return rc;
}

/* The response-time and status-code samples of an HTTP probe, for \p in
 * (SONAR_HEALTH_N_SAMPLES entries; \p labels two). Returns how many. */
static size_t probe_samples(const job *j, const sonar_health_result *res,
                            sonar_health_sample *hs, sonar_promtext_label *labels,
                            sonar_statusstore_sample_in *in)
{
    if (strcmp(j->spec.health, "nats") == 0)
        return 0;
    size_t n = sonar_health_result_samples(res, hs);
    labels[0] = (sonar_promtext_label){"service", j->spec.service};
    labels[1] = (sonar_promtext_label){"target", j->spec.name};
    for (size_t i = 0; i < n; i++)
        in[i] = (sonar_statusstore_sample_in){.service = j->spec.service, .name = hs[i].name,
                                              .labels = labels, .n_labels = 2,
                                              .value = hs[i].value,
                                              .at_ms = res->checked_at_ms};
    return n;
}

void statusd__run_job(statusd *d, job *j)
{
    int64_t started = sonar_now_ms();
    sonar_health_result res;
    sonar_health_transition tr;
    bool checked = j->spec.health != NULL, changed = false, alive;
    sonar_health_status reported = SONAR_HEALTH_UNKNOWN;
    if (checked)
        run_check(d, j, &res);

    pthread_mutex_lock(&d->lock);
    target *t = statusd__find_id(d, j->id);
    alive = t != NULL;
    if (alive && checked) {
        changed = sonar_health_state_apply(&t->state, res.status, &tr);
        reported = t->state.status;
        t->last = res;
        t->has_last = true;
    }
    pthread_mutex_unlock(&d->lock);
    if (!alive)
        return;
    if (checked) {
        atomic_fetch_add(&d->checks[res.status & 3], 1);
        sonar_statusstore_check c = {
            .service = j->spec.service, .target = j->spec.name, .observed = res.status,
            .reported = reported, .http_code = res.http_code, .duration_ms = res.duration_ms,
            .at_ms = res.checked_at_ms, .error = res.error};
        /* The check and its probe samples in one transaction. */
        sonar_health_sample hs[SONAR_HEALTH_N_SAMPLES];
        sonar_promtext_label labels[2];
        sonar_statusstore_sample_in in[SONAR_HEALTH_N_SAMPLES];
        size_t n = probe_samples(j, &res, hs, labels, in);
        if (sonar_statusstore_add_check_with_samples(d->store, &c, in, n, NULL) == SONAR_OK) {
            atomic_fetch_add(&d->samples_stored, (long long)n);
        } else {
            atomic_fetch_add(&d->store_errors, 1);
            sonar_log(SONAR_LOG_WARN, "check of %s not stored: %s", j->spec.name,
                      sonar_last_error());
        }
        if (changed)
            publish_transition(d, j, &tr, &res);
    }
    size_t stored = 0;
    sonar_status sc = SONAR_OK;
    char scrape_error[256] = "";
    int64_t scrape_at = sonar_wall_ms();
    if (j->spec.metrics != NULL) {
        atomic_fetch_add(&d->scrapes, 1);
        sc = strcmp(j->spec.metrics, "nats") == 0 ? scrape_nats(d, j, scrape_at, &stored)
                                                  : scrape_http(d, j, scrape_at, &stored);
        if (sc == SONAR_OK) {
            atomic_fetch_add(&d->samples_stored, (long long)stored);
        } else {
            atomic_fetch_add(&d->scrape_errors, 1);
            snprintf(scrape_error, sizeof scrape_error, "%s", sonar_last_error());
            sonar_log(SONAR_LOG_DEBUG, "scrape of %s: %s", j->spec.name, scrape_error);
        }
    }
    pthread_mutex_lock(&d->lock);
    t = statusd__find_id(d, j->id);
    if (t != NULL) {
        t->running = false;
        t->due_ms = started + t->interval_ms;
        if (j->spec.metrics != NULL) {
            t->scrape_at_ms = scrape_at;
            t->scrape_samples = stored;
            memcpy(t->scrape_error, scrape_error, sizeof scrape_error);
        }
        pthread_cond_signal(&d->wake);
    }
    pthread_mutex_unlock(&d->lock);
}

