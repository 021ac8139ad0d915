/* statusd: targets, scheduler and workers, storage, events, query API. */
#include "statusd.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "internal.h"
#include "sonar/http.h"
#include "sonar/log.h"
#include "sonar/outbox.h"
#include "sonar/promtext.h"
#include "sonar/protocol.h"
#include "sonar/service.h"
#include "sonar/statusstore.h"
#include "sonar/util.h"

#define EVENTS_STREAM "SONAR_EVENTS"
#define HEALTH_PREFIX "sonar.health."
/* Registry targets unseen for this many heartbeats are dropped (a crashed
 * instance that never said goodbye); see expire_after(). */
#define EXPIRE_HEARTBEATS 10
#define MAX_QUEUED_JOBS 100000

typedef struct target {
    statusd_target_spec spec;
    statusd_source source;
    uint64_t id;
    int64_t interval_ms, timeout_ms; /* effective */
    sonar_health_state state;
    bool running;
    int64_t due_ms;       /* monotonic */
    int64_t seen_ms;      /* registry: monotonic time of the last registration */
    int64_t heartbeat_ms; /* registry */
    bool has_last;
    sonar_health_result last;
    int64_t scrape_at_ms; /* wall; 0: never scraped */
    size_t scrape_samples;
    char scrape_error[256];
} target;

typedef struct job {
    struct job *next;
    uint64_t id;
    statusd_target_spec spec;
    int64_t timeout_ms;
} job;

struct statusd {
    statusd_config cfg;
    char *db_path, *version;
    sonar_bus *bus;
    natsConnection *nc;
    sonar_statusstore *store;
    sqlite3 *db; /* outbox enqueue and API targets; guarded by db_lock */
    pthread_mutex_t db_lock;
    sonar_outbox *outbox;
    sonar_service *svc;
    natsSubscription *sub_register, *sub_leave;

    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t wake;  /* scheduler */
    pthread_cond_t prune; /* pruner (only at stop) */
    pthread_cond_t work;  /* workers */
    target **targets;
    size_t n_targets, cap_targets;
    job *queue_head, *queue_tail;
    size_t queue_len;
    uint64_t next_id;
    bool stopping;
    pthread_t scheduler, pruner, *workers;
    int n_workers;
    bool scheduler_running, pruner_running;

    /* figures */
    atomic_llong checks[4]; /* by observed status */
    atomic_llong scrapes, scrape_errors, samples_stored, transitions, event_errors,
        store_errors, pruned_rows;
};

/* ---- target table (d->lock held) ---------------------------------------- */

static target *find_name(statusd *d, const char *name)
{
    for (size_t i = 0; i < d->n_targets; i++)
        if (strcmp(d->targets[i]->spec.name, name) == 0)
            return d->targets[i];
    return NULL;
}

static target *find_id(statusd *d, uint64_t id)
{
    for (size_t i = 0; i < d->n_targets; i++)
        if (d->targets[i]->id == id)
            return d->targets[i];
    return NULL;
}

static void target_free(target *t)
{
    if (t == NULL)
        return;
    statusd_spec_finish(&t->spec);
    free(t);
}

static void remove_at(statusd *d, size_t i)
{
    target_free(d->targets[i]);
    d->targets[i] = d->targets[--d->n_targets];
}

static bool remove_name(statusd *d, const char *name)
{
    for (size_t i = 0; i < d->n_targets; i++)
        if (strcmp(d->targets[i]->spec.name, name) == 0) {
            remove_at(d, i);
            return true;
        }
    return false;
}

static void effective_timing(statusd *d, target *t)
{
    t->interval_ms = t->spec.interval_ms ? t->spec.interval_ms : d->cfg.interval_ms;
    t->timeout_ms = t->spec.timeout_ms ? t->spec.timeout_ms : d->cfg.timeout_ms;
}

/* Adds a target built from \p spec (copied), or replaces the one of that name
 * (its health state is kept when the health endpoint did not change). */
static sonar_status upsert(statusd *d, const statusd_target_spec *spec, statusd_source source)
{
    target *old = find_name(d, spec->name);
    target *t = calloc(1, sizeof *t);
    if (t == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    sonar_status rc = statusd_spec_copy(&t->spec, spec);
    if (rc == SONAR_OK)
        rc = sonar_health_state_init(&t->state, &spec->thresholds);
    if (rc != SONAR_OK) {
        target_free(t);
        return rc;
    }
    t->source = source;
    t->id = ++d->next_id;
    t->due_ms = sonar_now_ms();
    t->seen_ms = t->due_ms;
    effective_timing(d, t);
    if (old != NULL) {
        bool same_health = (old->spec.health == NULL && spec->health == NULL) ||
                           (old->spec.health && spec->health &&
                            strcmp(old->spec.health, spec->health) == 0);
        bool same_thresholds =
            old->spec.thresholds.failure_threshold == spec->thresholds.failure_threshold &&
            old->spec.thresholds.success_threshold == spec->thresholds.success_threshold;
        if (same_health && same_thresholds) {
            t->state = old->state;
            t->has_last = old->has_last;
            t->last = old->last;
        }
        /* A job in flight for the old one finds no target with its id and is dropped. */
        remove_name(d, spec->name);
    }
    if (d->n_targets == d->cap_targets) {
        size_t cap = d->cap_targets ? d->cap_targets * 2 : 64;
        target **grown = realloc(d->targets, cap * sizeof *grown);
        if (grown == NULL) {
            target_free(t);
            return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
        }
        d->targets = grown;
        d->cap_targets = cap;
    }
    d->targets[d->n_targets++] = t;
    pthread_cond_broadcast(&d->wake);
    return SONAR_OK;
}

static int64_t expire_after(const target *t)
{
    int fails = t->state.failure_threshold;
    int64_t by_checks = (int64_t)(fails + 1) * t->interval_ms + t->timeout_ms;
    int64_t by_heartbeat = EXPIRE_HEARTBEATS * t->heartbeat_ms;
    return by_checks > by_heartbeat ? by_checks : by_heartbeat;
}

/* ---- registry subscriptions (NATS threads: decode and memory only) ------ */

static const char *subject_name(natsMsg *msg, const char *prefix)
{
    const char *subject = natsMsg_GetSubject(msg);
    size_t n = strlen(prefix);
    if (strncmp(subject, prefix, n) != 0 || !sonar_name_valid(subject + n))
        return NULL;
    return subject + n;
}

static char *registry_name(const char *service, const char *instance)
{
    size_t n = strlen(service) + strlen(instance) + 2;
    char *s = malloc(n);
    if (s != NULL)
        snprintf(s, n, "%s/%s", service, instance);
    return s;
}

static void on_register(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    statusd *d = closure;
    const char *name = subject_name(msg, SONAR_SUBJ_REGISTER_PREFIX);
    sonar_register_msg r = {0};
    char *tname = NULL;
    sonar_status s = name ? sonar_register_decode(&r, natsMsg_GetData(msg),
                                                  (size_t)natsMsg_GetDataLength(msg))
                          : sonar__fail(SONAR_ERR_INVALID, "bad subject");
    if (s == SONAR_OK && strcmp(r.service, name) != 0)
        s = sonar__fail(SONAR_ERR_INVALID, "registration of %s on the subject of %s", r.service,
                        name);
    if (s != SONAR_OK) {
        sonar_log(SONAR_LOG_DEBUG, "registration on %.200s ignored: %s", natsMsg_GetSubject(msg),
                  sonar_last_error());
        goto out;
    }
    tname = registry_name(r.service, r.instance);
    if (tname == NULL)
        goto out;
    pthread_mutex_lock(&d->lock);
    target *t = find_name(d, tname);
    if (r.health == NULL && r.metrics == NULL) {
        if (t != NULL && t->source == STATUSD_SOURCE_REGISTRY)
            remove_name(d, tname);
    } else if (t != NULL && t->source == STATUSD_SOURCE_REGISTRY &&
               ((t->spec.health == NULL) == (r.health == NULL)) &&
               (!r.health || strcmp(t->spec.health, r.health) == 0) &&
               ((t->spec.metrics == NULL) == (r.metrics == NULL)) &&
               (!r.metrics || strcmp(t->spec.metrics, r.metrics) == 0)) {
        t->seen_ms = sonar_now_ms(); /* a heartbeat */
        t->heartbeat_ms = r.heartbeat_ms;
    } else if (t == NULL || t->source == STATUSD_SOURCE_REGISTRY) {
        statusd_target_spec spec = {.name = tname, .service = r.service, .instance = r.instance,
                                    .health = r.health, .metrics = r.metrics};
        if (upsert(d, &spec, STATUSD_SOURCE_REGISTRY) == SONAR_OK) {
            target *added = find_name(d, tname);
            added->heartbeat_ms = r.heartbeat_ms;
            sonar_log(SONAR_LOG_INFO, "target %s: health %s, metrics %s", tname,
                      r.health ? r.health : "none", r.metrics ? r.metrics : "none");
        }
    }
    pthread_mutex_unlock(&d->lock);
out:
    free(tname);
    sonar_register_finish(&r);
    natsMsg_Destroy(msg);
}

static void on_leave(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    statusd *d = closure;
    const char *name = subject_name(msg, SONAR_SUBJ_LEAVE_PREFIX);
    sonar_leave_msg l = {0};
    if (name != NULL &&
        sonar_leave_decode(&l, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg)) ==
            SONAR_OK &&
        strcmp(l.service, name) == 0) {
        char *tname = registry_name(l.service, l.instance);
        pthread_mutex_lock(&d->lock);
        target *t = tname ? find_name(d, tname) : NULL;
        if (t != NULL && t->source == STATUSD_SOURCE_REGISTRY) {
            remove_name(d, tname);
            sonar_log(SONAR_LOG_INFO, "target %s left", tname);
        }
        pthread_mutex_unlock(&d->lock);
        free(tname);
    }
    sonar_leave_finish(&l);
    natsMsg_Destroy(msg);
}

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

static void event_json_time(json_t *o, const char *key, int64_t wall_ms)
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
        event_json_time(ev, "time", res->checked_at_ms);
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

static void store_probe_samples(statusd *d, const job *j, const sonar_health_result *res)
{
    sonar_health_sample hs[SONAR_HEALTH_N_SAMPLES];
    size_t n = sonar_health_result_samples(res, hs);
    sonar_promtext_label labels[2] = {{"service", j->spec.service}, {"target", j->spec.name}};
    sonar_statusstore_sample_in in[SONAR_HEALTH_N_SAMPLES];
    for (size_t i = 0; i < n; i++)
        in[i] = (sonar_statusstore_sample_in){.service = j->spec.service, .name = hs[i].name,
                                              .labels = labels, .n_labels = 2,
                                              .value = hs[i].value,
                                              .at_ms = res->checked_at_ms};
    if (sonar_statusstore_add_samples(d->store, in, n) == SONAR_OK)
        atomic_fetch_add(&d->samples_stored, (long long)n);
    else
        atomic_fetch_add(&d->store_errors, 1);
}

static void run_job(statusd *d, job *j)
{
    int64_t started = sonar_now_ms();
    sonar_health_result res;
    sonar_health_transition tr;
    bool checked = j->spec.health != NULL, changed = false, alive;
    sonar_health_status reported = SONAR_HEALTH_UNKNOWN;
    if (checked)
        run_check(d, j, &res);

    pthread_mutex_lock(&d->lock);
    target *t = find_id(d, j->id);
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
        if (sonar_statusstore_add_check(d->store, &c, NULL) != SONAR_OK) {
            atomic_fetch_add(&d->store_errors, 1);
            sonar_log(SONAR_LOG_WARN, "check of %s not stored: %s", j->spec.name,
                      sonar_last_error());
        }
        if (changed)
            publish_transition(d, j, &tr, &res);
        if (strcmp(j->spec.health, "nats") != 0)
            store_probe_samples(d, j, &res);
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
    t = find_id(d, j->id);
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

static void job_free(job *j)
{
    statusd_spec_finish(&j->spec);
    free(j);
}

static void *worker_main(void *arg)
{
    statusd *d = arg;
    pthread_mutex_lock(&d->lock);
    for (;;) {
        while (d->queue_head == NULL && !d->stopping)
            pthread_cond_wait(&d->work, &d->lock);
        if (d->stopping)
            break;
        job *j = d->queue_head;
        d->queue_head = j->next;
        if (d->queue_head == NULL)
            d->queue_tail = NULL;
        d->queue_len--;
        pthread_mutex_unlock(&d->lock);
        run_job(d, j);
        job_free(j);
        pthread_mutex_lock(&d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static void timed_wait(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t wait_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (wait_ms % 1000) * 1000000;
    ts.tv_sec += (time_t)(wait_ms / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_cond_timedwait(cond, lock, &ts);
}

/* Queues due targets; drops registry targets not seen for too long. Lock held. */
static int64_t schedule_due(statusd *d, int64_t now)
{
    int64_t next = now + 1000;
    bool queued = false;
    for (size_t i = 0; i < d->n_targets;) {
        target *t = d->targets[i];
        if (t->source == STATUSD_SOURCE_REGISTRY && !t->running &&
            now - t->seen_ms > expire_after(t)) {
            sonar_log(SONAR_LOG_INFO, "target %s: no registration for %lld ms, dropped",
                      t->spec.name, (long long)(now - t->seen_ms));
            remove_at(d, i);
            continue;
        }
        i++;
        if (t->running)
            continue;
        if (t->due_ms > now) {
            if (t->due_ms < next)
                next = t->due_ms;
            continue;
        }
        if (d->queue_len >= MAX_QUEUED_JOBS)
            continue;
        job *j = calloc(1, sizeof *j);
        if (j == NULL || statusd_spec_copy(&j->spec, &t->spec) != SONAR_OK) {
            free(j);
            continue;
        }
        j->id = t->id;
        j->timeout_ms = t->timeout_ms;
        t->running = true;
        if (d->queue_tail)
            d->queue_tail->next = j;
        else
            d->queue_head = j;
        d->queue_tail = j;
        d->queue_len++;
        queued = true;
    }
    if (queued)
        pthread_cond_broadcast(&d->work);
    return next;
}

static void *scheduler_main(void *arg)
{
    statusd *d = arg;
    pthread_mutex_lock(&d->lock);
    while (!d->stopping) {
        int64_t now = sonar_now_ms();
        int64_t next = schedule_due(d, now);
        if (next > now)
            timed_wait(&d->wake, &d->lock, next - now);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static void *pruner_main(void *arg)
{
    statusd *d = arg;
    int64_t every = d->cfg.retention_ms / 10;
    if (every > 60000)
        every = 60000;
    if (every < 1000)
        every = 1000;
    pthread_mutex_lock(&d->lock);
    int64_t next = sonar_now_ms() + every;
    while (!d->stopping) {
        int64_t now = sonar_now_ms();
        if (now < next) {
            timed_wait(&d->prune, &d->lock, next - now);
            continue;
        }
        next = now + every;
        pthread_mutex_unlock(&d->lock);
        sonar_statusstore_pruned p = {0};
        if (sonar_statusstore_prune(d->store, sonar_wall_ms() - d->cfg.retention_ms, 0, &p) ==
            SONAR_OK)
            atomic_fetch_add(&d->pruned_rows, (long long)(p.checks + p.samples));
        else
            sonar_log(SONAR_LOG_WARN, "retention: %s", sonar_last_error());
        pthread_mutex_lock(&d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

/* ---- query API (endpoint worker threads) --------------------------------- */

static sonar_status respond_json(sonar_request *req, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL)
        return sonar_request_respond_error(req, 500, "out of memory");
    sonar_status s = sonar_request_respond(req, text, strlen(text));
    free(text);
    return s;
}

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
        event_json_time(o, "time", r->checked_at_ms);
        json_object_set_new(o, "error", r->error[0] ? json_string(r->error) : json_null());
    }
    return o;
}

static json_t *target_json(const target *t)
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
        event_json_time(s, "time", t->scrape_at_ms);
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
            json_array_append_new(arr, target_json(sorted[i]));
    }
    pthread_mutex_unlock(&d->lock);
    free(sorted);
    return respond_json(req, json_pack("{s:s, s:o}", "type", "sonar.status.targets.v1",
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
        event_json_time(o, "time", c->at_ms);
        json_object_set_new(o, "error",
                            c->error && *c->error ? json_string(c->error) : json_null());
        json_array_append_new(arr, o);
    }
    sonar_statusstore_checks_finish(&list);
    return respond_json(req, json_pack("{s:s, s:o}", "type", "sonar.status.checks.v1", "checks",
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
        event_json_time(o, "time", sm->at_ms);
        json_array_append_new(arr, o);
    }
    sonar_statusstore_samples_finish(&list);
    return respond_json(req, json_pack("{s:s, s:o}", "type", "sonar.status.metrics.v1",
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
    target *t = find_name(d, spec.name);
    statusd_source taken = t ? t->source : STATUSD_SOURCE_API;
    pthread_mutex_unlock(&d->lock);
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
    if (upsert(d, &spec, STATUSD_SOURCE_API) == SONAR_OK)
        reply = target_json(find_name(d, spec.name));
    pthread_mutex_unlock(&d->lock);
    if (reply == NULL)
        sonar_request_respond_error(req, 500, "%s", sonar_last_error());
    else
        respond_json(req, reply);
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
    target *t = find_name(d, name);
    int code = t == NULL ? 404 : t->source != STATUSD_SOURCE_API ? 400 : 0;
    statusd_source src = t ? t->source : STATUSD_SOURCE_API;
    if (code == 0) {
        service = strdup(t->spec.service);
        remove_name(d, name);
    }
    pthread_mutex_unlock(&d->lock);
    if (code == 404) {
        sonar_request_respond_error(req, 404, "no target named \"%s\"", name);
        goto out;
    }
    if (code == 400) {
        sonar_request_respond_error(req, 400,
                                    "target \"%s\" comes from the %s; only API targets can be removed",
                                    name, src == STATUSD_SOURCE_CONFIG ? "config file" : "registry");
        goto out;
    }
    if (persist_api_target(d, name, NULL) != SONAR_OK)
        sonar_log(SONAR_LOG_WARN, "%s", sonar_last_error());
    if (service != NULL)
        sonar_statusstore_remove_target(d->store, service, name); /* NOT_FOUND when never checked */
    respond_json(req, json_pack("{s:s, s:s}", "type", "sonar.status.removed.v1", "name", name));
    sonar_log(SONAR_LOG_INFO, "API target %s removed", name);
out:
    free(service);
    json_decref(body);
    return SONAR_OK;
}

/* ---- own figures ---------------------------------------------------------- */

char *statusd_metrics_text(statusd *d)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return NULL;
    static const sonar_health_status all[] = {SONAR_HEALTH_UNKNOWN, SONAR_HEALTH_PASSING,
                                              SONAR_HEALTH_WARNING, SONAR_HEALTH_CRITICAL};
    long long by_status[4] = {0}, by_source[3] = {0}, queued, n;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->n_targets; i++) {
        by_status[d->targets[i]->state.status & 3]++;
        by_source[d->targets[i]->source % 3]++;
    }
    queued = (long long)d->queue_len;
    n = (long long)d->n_targets;
    pthread_mutex_unlock(&d->lock);
    fprintf(f, "# HELP statusd_checks_total Health checks run, by the status each observed.\n"
               "# TYPE statusd_checks_total counter\n");
    for (int i = 1; i < 4; i++)
        fprintf(f, "statusd_checks_total{status=\"%s\"} %lld\n", sonar_health_status_str(all[i]),
                (long long)atomic_load(&d->checks[i]));
    fprintf(f, "# HELP statusd_targets Targets by reported health status.\n"
               "# TYPE statusd_targets gauge\n");
    for (int i = 0; i < 4; i++)
        fprintf(f, "statusd_targets{status=\"%s\"} %lld\n", sonar_health_status_str(all[i]),
                by_status[i]);
    fprintf(f, "# HELP statusd_targets_by_source Targets by where they were learnt.\n"
               "# TYPE statusd_targets_by_source gauge\n");
    for (int i = 0; i < 3; i++)
        fprintf(f, "statusd_targets_by_source{source=\"%s\"} %lld\n",
                statusd_source_str((statusd_source)i), by_source[i]);
    fprintf(f,
            "# HELP statusd_targets_total_count All targets.\n"
            "# TYPE statusd_targets_total_count gauge\nstatusd_targets_total_count %lld\n"
            "# HELP statusd_check_queue_length Due targets waiting for a worker.\n"
            "# TYPE statusd_check_queue_length gauge\nstatusd_check_queue_length %lld\n"
            "# HELP statusd_scrapes_total Metric scrapes attempted.\n"
            "# TYPE statusd_scrapes_total counter\nstatusd_scrapes_total %lld\n"
            "# HELP statusd_scrape_errors_total Scrapes that failed (transfer, HTTP status, "
            "parse or storage).\n"
            "# TYPE statusd_scrape_errors_total counter\nstatusd_scrape_errors_total %lld\n"
            "# HELP statusd_samples_stored_total Metric samples stored.\n"
            "# TYPE statusd_samples_stored_total counter\nstatusd_samples_stored_total %lld\n"
            "# HELP statusd_transitions_total Health transitions enqueued as events.\n"
            "# TYPE statusd_transitions_total counter\nstatusd_transitions_total %lld\n"
            "# HELP statusd_event_errors_total Health transitions that could not be enqueued.\n"
            "# TYPE statusd_event_errors_total counter\nstatusd_event_errors_total %lld\n"
            "# HELP statusd_store_errors_total Results or samples the database refused.\n"
            "# TYPE statusd_store_errors_total counter\nstatusd_store_errors_total %lld\n"
            "# HELP statusd_pruned_rows_total Checks and samples removed by retention.\n"
            "# TYPE statusd_pruned_rows_total counter\nstatusd_pruned_rows_total %lld\n",
            n, queued, (long long)atomic_load(&d->scrapes),
            (long long)atomic_load(&d->scrape_errors), (long long)atomic_load(&d->samples_stored),
            (long long)atomic_load(&d->transitions), (long long)atomic_load(&d->event_errors),
            (long long)atomic_load(&d->store_errors), (long long)atomic_load(&d->pruned_rows));
    sonar_outbox_stats os = {0};
    if (d->outbox != NULL)
        sonar_outbox_stats_get(d->outbox, &os);
    fprintf(f,
            "# HELP statusd_outbox_pending Health events waiting to be published.\n"
            "# TYPE statusd_outbox_pending gauge\nstatusd_outbox_pending %lld\n"
            "# HELP statusd_outbox_oldest_pending_age_seconds Age of the oldest pending event.\n"
            "# TYPE statusd_outbox_oldest_pending_age_seconds gauge\n"
            "statusd_outbox_oldest_pending_age_seconds %.3f\n"
            "# HELP statusd_outbox_published_total Events confirmed by JetStream.\n"
            "# TYPE statusd_outbox_published_total counter\nstatusd_outbox_published_total %lld\n"
            "# HELP statusd_outbox_retries_total Publish attempts that failed transiently.\n"
            "# TYPE statusd_outbox_retries_total counter\nstatusd_outbox_retries_total %lld\n"
            "# HELP statusd_outbox_dead Events in the dead-letter table.\n"
            "# TYPE statusd_outbox_dead gauge\nstatusd_outbox_dead %lld\n"
            "# HELP statusd_outbox_connected 1 when the relay's NATS connection is up.\n"
            "# TYPE statusd_outbox_connected gauge\nstatusd_outbox_connected %d\n",
            (long long)os.pending, (double)os.oldest_pending_age_ms / 1000.0,
            (long long)os.published, (long long)os.retries, (long long)os.dead_total,
            os.connected ? 1 : 0);
    fclose(f);
    return buf;
}

/* ---- lifecycle ------------------------------------------------------------ */

static sonar_status open_own_db(statusd *d)
{
    if (sqlite3_open_v2(d->db_path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK)
        return sonar__fail(SONAR_ERR_DB, "%s: %s", d->db_path,
                           d->db ? sqlite3_errmsg(d->db) : "out of memory");
    sqlite3_busy_timeout(d->db, 5000);
    sonar_status s = sonar_outbox_migrate(d->db);
    char *err = NULL;
    if (s == SONAR_OK &&
        sqlite3_exec(d->db,
                     "CREATE TABLE IF NOT EXISTS statusd_api_targets("
                     "name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
                     NULL, NULL, &err) != SQLITE_OK) {
        s = sonar__fail(SONAR_ERR_DB, "%s: %s", d->db_path, err ? err : "?");
        sqlite3_free(err);
    }
    return s;
}

static sonar_status load_api_targets(statusd *d)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(d->db, "SELECT name, spec FROM statusd_api_targets", -1, &st, NULL) !=
        SQLITE_OK)
        return sonar__fail(SONAR_ERR_DB, "%s", sqlite3_errmsg(d->db));
    size_t loaded = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        json_t *doc = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
        statusd_target_spec spec = {0};
        if (statusd_spec_from_json(&spec, doc, "stored API target") == SONAR_OK &&
            find_name(d, spec.name) == NULL && upsert(d, &spec, STATUSD_SOURCE_API) == SONAR_OK)
            loaded++;
        else
            sonar_log(SONAR_LOG_WARN, "stored API target %s skipped: %s", name ? name : "?",
                      sonar_last_error());
        statusd_spec_finish(&spec);
        json_decref(doc);
    }
    sqlite3_finalize(st);
    if (loaded)
        sonar_log(SONAR_LOG_INFO, "%zu API targets restored", loaded);
    return SONAR_OK;
}

/* Config and API targets resume from their stored latest status, so a restart
 * does not announce unknown -> passing for every target again. */
static void restore_latest(statusd *d)
{
    sonar_statusstore_checks latest = {0};
    if (sonar_statusstore_latest(d->store, NULL, &latest) != SONAR_OK) {
        sonar_log(SONAR_LOG_WARN, "latest statuses not restored: %s", sonar_last_error());
        return;
    }
    for (size_t i = 0; i < latest.count; i++) {
        const sonar_statusstore_check *c = &latest.items[i];
        target *t = find_name(d, c->target);
        if (t == NULL || t->source == STATUSD_SOURCE_REGISTRY ||
            strcmp(t->spec.service, c->service) != 0)
            continue;
        t->state.status = c->reported;
        t->has_last = true;
        t->last = (sonar_health_result){.status = c->observed, .http_code = c->http_code,
                                        .duration_ms = c->duration_ms, .checked_at_ms = c->at_ms};
        snprintf(t->last.error, sizeof t->last.error, "%s", c->error ? c->error : "");
    }
    sonar_statusstore_checks_finish(&latest);
}

static sonar_status subscribe(statusd *d, natsSubscription **sub, const char *subject,
                              natsMsgHandler cb)
{
    natsStatus ns = natsConnection_Subscribe(sub, d->nc, subject, cb, d);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(*sub, -1, 256 * 1024 * 1024);
    return ns == NATS_OK ? SONAR_OK : sonar_bus_status(ns, subject);
}

static sonar_status start_threads(statusd *d)
{
    d->workers = calloc((size_t)d->cfg.workers, sizeof *d->workers);
    if (d->workers == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    for (int i = 0; i < d->cfg.workers; i++) {
        if (pthread_create(&d->workers[i], NULL, worker_main, d) != 0)
            return sonar__fail(SONAR_ERR_IO, "cannot start worker threads");
        d->n_workers++;
    }
    if (pthread_create(&d->scheduler, NULL, scheduler_main, d) != 0)
        return sonar__fail(SONAR_ERR_IO, "cannot start the scheduler thread");
    d->scheduler_running = true;
    if (pthread_create(&d->pruner, NULL, pruner_main, d) != 0)
        return sonar__fail(SONAR_ERR_IO, "cannot start the pruner thread");
    d->pruner_running = true;
    return SONAR_OK;
}

static sonar_status add_endpoints(statusd *d)
{
    static const struct {
        const char *name, *subject;
        sonar_endpoint_fn fn;
    } eps[] = {
        {"targets", "sonar.status.targets", api_targets},
        {"checks", "sonar.status.checks", api_checks},
        {"metrics", "sonar.status.metrics", api_metrics},
        {"targets-add", "sonar.status.targets.add", api_add},
        {"targets-remove", "sonar.status.targets.remove", api_remove},
    };
    sonar_status s = SONAR_OK;
    for (size_t i = 0; s == SONAR_OK && i < sizeof eps / sizeof eps[0]; i++)
        s = sonar_service_add_endpoint(d->svc, eps[i].name, eps[i].subject, STATUSD_NAME,
                                       eps[i].fn, d);
    return s;
}

static void ensure_stream(statusd *d)
{
    static const char *const subjects[] = {"sonar.report.*", "sonar.health.*", NULL};
    sonar_stream_config sc = {.name = EVENTS_STREAM, .subjects = subjects,
                              .duplicate_window_ms = 2 * 60 * 1000,
                              .max_age_ms = 7LL * 24 * 3600 * 1000};
    if (sonar_stream_ensure(d->nc, &sc) != SONAR_OK)
        sonar_log(SONAR_LOG_WARN, "stream %s not ensured (events wait in the outbox): %s",
                  EVENTS_STREAM, sonar_last_error());
}

sonar_status statusd_start(statusd **out, sonar_bus *bus, const statusd_config *cfg)
{
    statusd *d = calloc(1, sizeof *d);
    if (d == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    d->cfg = *cfg;
    d->cfg.static_targets = NULL;
    d->cfg.n_static_targets = 0;
    d->db_path = sonar__strdup(cfg->db_path);
    d->version = sonar__strdup(cfg->version ? cfg->version : "0.0.0");
    d->bus = bus;
    d->nc = sonar_bus_nats(bus);
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->db_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->wake, &ca);
    pthread_cond_init(&d->prune, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&d->work, NULL);
    sonar_status s = d->db_path && d->version ? SONAR_OK
                                              : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    if (s == SONAR_OK)
        s = sonar_statusstore_create(&d->store, d->db_path);
    if (s == SONAR_OK)
        s = open_own_db(d);
    for (size_t i = 0; s == SONAR_OK && i < cfg->n_static_targets; i++)
        s = upsert(d, &cfg->static_targets[i], STATUSD_SOURCE_CONFIG);
    if (s == SONAR_OK)
        s = load_api_targets(d);
    if (s == SONAR_OK)
        restore_latest(d);
    if (s == SONAR_OK) {
        ensure_stream(d);
        sonar_outbox_config oc = {.name = STATUSD_NAME};
        s = sonar_outbox_create(&d->outbox, d->nc, d->db_path, &oc);
    }
    if (s == SONAR_OK) {
        sonar_service_config sc = {
            .name = STATUSD_NAME,
            .version = d->version,
            .description = "sonar status: health checks and metrics of services",
            .no_check_endpoint = true,
        };
        s = sonar_service_create(&d->svc, bus, &sc);
    }
    if (s == SONAR_OK)
        s = add_endpoints(d);
    if (s == SONAR_OK)
        s = subscribe(d, &d->sub_register, SONAR_SUBJ_REGISTER_PREFIX "*", on_register);
    if (s == SONAR_OK)
        s = subscribe(d, &d->sub_leave, SONAR_SUBJ_LEAVE_PREFIX "*", on_leave);
    if (s == SONAR_OK)
        s = start_threads(d);
    if (s == SONAR_OK)
        s = sonar_service_start(d->svc);
    if (s == SONAR_OK) {
        char *discover = NULL;
        s = sonar_discover_encode(&discover);
        if (s == SONAR_OK) {
            natsStatus ns = natsConnection_PublishString(d->nc, SONAR_SUBJ_DISCOVER, discover);
            if (ns == NATS_OK)
                ns = natsConnection_FlushTimeout(d->nc, 5000);
            if (ns != NATS_OK)
                s = sonar_bus_status(ns, "publishing sonar.discover");
        }
        free(discover);
    }
    if (s != SONAR_OK) {
        sonar_status keep = s;
        char why[1024];
        snprintf(why, sizeof why, "%s", sonar_last_error());
        statusd_stop(d);
        return sonar__fail(keep, "%s", why);
    }
    sonar_log(SONAR_LOG_INFO, "statusd %s up: %zu static targets, database %s, interval %lld ms",
              d->version, cfg->n_static_targets, d->db_path, (long long)d->cfg.interval_ms);
    *out = d;
    return SONAR_OK;
}

static void drain(natsSubscription *sub)
{
    if (sub == NULL)
        return;
    if (natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, 5000);
    natsSubscription_Destroy(sub);
}

void statusd_stop(statusd *d)
{
    if (d == NULL)
        return;
    drain(d->sub_register);
    drain(d->sub_leave);
    sonar_service_destroy(d->svc);
    pthread_mutex_lock(&d->lock);
    d->stopping = true;
    pthread_cond_broadcast(&d->wake);
    pthread_cond_broadcast(&d->prune);
    pthread_cond_broadcast(&d->work);
    pthread_mutex_unlock(&d->lock);
    if (d->scheduler_running)
        pthread_join(d->scheduler, NULL);
    if (d->pruner_running)
        pthread_join(d->pruner, NULL);
    for (int i = 0; i < d->n_workers; i++)
        pthread_join(d->workers[i], NULL);
    free(d->workers);
    while (d->queue_head != NULL) {
        job *j = d->queue_head;
        d->queue_head = j->next;
        job_free(j);
    }
    sonar_outbox_destroy(d->outbox);
    sqlite3_close(d->db);
    sonar_statusstore_destroy(d->store);
    for (size_t i = 0; i < d->n_targets; i++)
        target_free(d->targets[i]);
    free(d->targets);
    pthread_cond_destroy(&d->wake);
    pthread_cond_destroy(&d->prune);
    pthread_cond_destroy(&d->work);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->db_lock);
    free(d->db_path);
    free(d->version);
    free(d);
}
