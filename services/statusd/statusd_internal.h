/*
 * statusd internals shared by its files (not installed): the daemon's
 * state, its target table and the jobs handed to the check workers.
 *
 *   statusd.c   target table, registry subscriptions, scheduler, pruner, lifecycle
 *   work.c      one job: health check, scrape, storage, health event (worker threads)
 *   api.c       the sonar.status.* query endpoints (endpoint worker threads)
 *   selfhttp.c  statusd's own /metrics and /health
 *
 * Locking: `lock` guards the target table, the job queue and `stopping`;
 * `db_lock` guards the daemon's own SQLite connection `db`. Never hold
 * `lock` across I/O.
 */
#ifndef STATUSD_INTERNAL_H
#define STATUSD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <nats/nats.h>
#include <sqlite3.h>

#include "sonar/health.h"
#include "sonar/outbox.h"
#include "sonar/service.h"
#include "sonar/statusstore.h"
#include "statusd.h"
#include "targets.h"

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


/* ---- target table: call with d->lock held ---- */

/** The target named \p name (borrowed until the lock is released), or NULL. */
target *statusd__find_name(statusd *d, const char *name);
/** The target with id \p id, or NULL (a replaced or removed target has a new id or none). */
target *statusd__find_id(statusd *d, uint64_t id);
/** Removes and frees the target named \p name; false when there is none. */
bool statusd__remove_name(statusd *d, const char *name);
/** Adds a target built from \p spec (copied) or replaces the one of that name. */
sonar_status statusd__upsert(statusd *d, const statusd_target_spec *spec, statusd_source source);
/** The target as the API shows it (new reference). */
json_t *statusd__target_json(const target *t);

/* ---- work.c ---- */

/** Runs one job on a worker thread: check, store, event, scrape. Takes no lock on entry. */
void statusd__run_job(statusd *d, job *j);
/** Frees a job. */
void statusd__job_free(job *j);
/** Sets \p key of \p o to \p wall_ms as RFC 3339. */
void statusd__time_json(json_t *o, const char *key, int64_t wall_ms);

/* ---- api.c ---- */

/** Adds the sonar.status.* endpoints to d->svc (before it starts). */
sonar_status statusd__add_endpoints(statusd *d);

#endif
