/* statusd: target table, registry subscriptions, scheduler, pruner, lifecycle. */
#include "statusd_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/log.h"
#include "sonar/protocol.h"
#include "sonar/util.h"

#define EVENTS_STREAM "SONAR_EVENTS"
/* Registry targets unseen for this many heartbeats are dropped (a crashed
 * instance that never said goodbye); see expire_after(). */
#define EXPIRE_HEARTBEATS 10
#define MAX_QUEUED_JOBS 100000

/* ---- target table (d->lock held) ---------------------------------------- */

target *statusd__find_name(statusd *d, const char *name)
{
    for (size_t i = 0; i < d->n_targets; i++)
        if (strcmp(d->targets[i]->spec.name, name) == 0)
            return d->targets[i];
    return NULL;
}

target *statusd__find_id(statusd *d, uint64_t id)
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

bool statusd__remove_name(statusd *d, const char *name)
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
sonar_status statusd__upsert(statusd *d, const statusd_target_spec *spec,
                             statusd_source source)
{
    target *old = statusd__find_name(d, spec->name);
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
        statusd__remove_name(d, spec->name);
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
    target *t = statusd__find_name(d, tname);
    if (r.health == NULL && r.metrics == NULL) {
        if (t != NULL && t->source == STATUSD_SOURCE_REGISTRY)
            statusd__remove_name(d, tname);
    } else if (t != NULL && t->source == STATUSD_SOURCE_REGISTRY &&
               ((t->spec.health == NULL) == (r.health == NULL)) &&
               (!r.health || strcmp(t->spec.health, r.health) == 0) &&
               ((t->spec.metrics == NULL) == (r.metrics == NULL)) &&
               (!r.metrics || strcmp(t->spec.metrics, r.metrics) == 0)) {
        t->seen_ms = sonar_now_ms(); /* a heartbeat */
        t->heartbeat_ms = r.heartbeat_ms;
    } else if (t == NULL && d->n_targets >= STATUSD_MAX_TARGETS) {
        sonar_log(SONAR_LOG_WARN, "target %s ignored: already %d targets", tname,
                  STATUSD_MAX_TARGETS);
    } else if (t == NULL || t->source == STATUSD_SOURCE_REGISTRY) {
        statusd_target_spec spec = {.name = tname, .service = r.service, .instance = r.instance,
                                    .health = r.health, .metrics = r.metrics};
        if (statusd__upsert(d, &spec, STATUSD_SOURCE_REGISTRY) == SONAR_OK) {
            target *added = statusd__find_name(d, tname);
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
        target *t = tname ? statusd__find_name(d, tname) : NULL;
        if (t != NULL && t->source == STATUSD_SOURCE_REGISTRY) {
            statusd__remove_name(d, tname);
            sonar_log(SONAR_LOG_INFO, "target %s left", tname);
        }
        pthread_mutex_unlock(&d->lock);
        free(tname);
    }
    sonar_leave_finish(&l);
    natsMsg_Destroy(msg);
}

void statusd__job_free(job *j)
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
        statusd__run_job(d, j);
        statusd__job_free(j);
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
            statusd__find_name(d, spec.name) == NULL &&
            statusd__upsert(d, &spec, STATUSD_SOURCE_API) == SONAR_OK)
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
        target *t = statusd__find_name(d, c->target);
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
    sonar_cond_init_monotonic(&d->wake);
    sonar_cond_init_monotonic(&d->prune);
    pthread_cond_init(&d->work, NULL);
    sonar_status s = d->db_path && d->version ? SONAR_OK
                                              : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    if (s == SONAR_OK)
        s = sonar_statusstore_create(&d->store, d->db_path);
    if (s == SONAR_OK)
        s = open_own_db(d);
    for (size_t i = 0; s == SONAR_OK && i < cfg->n_static_targets; i++)
        s = statusd__upsert(d, &cfg->static_targets[i], STATUSD_SOURCE_CONFIG);
    if (s == SONAR_OK)
        s = load_api_targets(d);
    if (s == SONAR_OK)
        restore_latest(d);
    if (s == SONAR_OK) {
        ensure_stream(d);
        sonar_outbox_config oc = {.name = STATUSD_NAME};
        s = sonar_outbox_create(&d->outbox, d->bus, d->db_path, &oc);
    }
    if (s == SONAR_OK) {
        sonar_service_config sc = {
            .name = STATUSD_NAME,
            .version = d->version,
            .description = "sonar status: health checks and metrics of services",
            .no_check_endpoint = true,
            .health = cfg->health_url,
            .metrics = cfg->metrics_url,
        };
        s = sonar_service_create(&d->svc, bus, &sc);
    }
    if (s == SONAR_OK)
        s = statusd__add_endpoints(d);
    if (s == SONAR_OK)
        s = subscribe(d, &d->sub_register, SONAR_SUBJ_REGISTER_PREFIX "*", on_register);
    if (s == SONAR_OK)
        s = subscribe(d, &d->sub_leave, SONAR_SUBJ_LEAVE_PREFIX "*", on_leave);
    if (s == SONAR_OK)
        s = start_threads(d);
    if (s == SONAR_OK)
        s = sonar_service_start(d->svc);
    if (s == SONAR_OK)
        s = sonar_bus_discover(d->bus);
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
        statusd__job_free(j);
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

