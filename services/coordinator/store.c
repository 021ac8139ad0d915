/* sonard's SQLite store and its writer thread. */
#include "store.h"

#include "sonar/outbox.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "sonar/util.h"

/* Each migration takes the schema from version i to i + 1. */
static const char *const migrations[SONARD_SCHEMA_VERSION] = {
    /* 0 -> 1: services, instances, reports */
    "CREATE TABLE services ("
    "  name TEXT PRIMARY KEY,"
    "  version TEXT NOT NULL DEFAULT '',"
    "  depends_on TEXT NOT NULL DEFAULT '[]',"
    "  checks TEXT NOT NULL DEFAULT '{}',"
    "  first_seen_ms INTEGER NOT NULL,"
    "  last_seen_ms INTEGER NOT NULL);"
    "CREATE TABLE instances ("
    "  service TEXT NOT NULL,"
    "  instance TEXT NOT NULL,"
    "  version TEXT NOT NULL DEFAULT '',"
    "  address TEXT NOT NULL DEFAULT '',"
    "  heartbeat_ms INTEGER NOT NULL,"
    "  last_seen_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (service, instance));"
    "CREATE TABLE reports ("
    "  change_id TEXT PRIMARY KEY,"
    "  service TEXT NOT NULL,"
    "  verdict TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  report TEXT NOT NULL);",
    /* 1 -> 2: history and retention queries by index */
    "CREATE INDEX reports_by_service ON reports (service, created_ms);"
    "CREATE INDEX reports_by_age ON reports (created_ms);",
};

typedef enum job_kind { JOB_REGISTER, JOB_LEAVE, JOB_REPORT, JOB_REPORT_EVENT, JOB_SYNC } job_kind;

#define WHY_MAX 1024

typedef struct job {
    struct job *next;
    job_kind kind;
    char *a, *b, *c, *d, *e, *f, *g; /* meaning depends on kind */
    int64_t n1, n2;
    bool *done;                  /* JOB_SYNC: set when applied */
    /* JOB_REPORT_EVENT: done_fn runs once applied (after the commit), with
     * the outcome in result and why (WHY_MAX bytes) when it failed. */
    sonar_store_done_fn done_fn;
    void *done_arg;
    sonar_status result;
    char *why;
} job;

struct sonar_store {
    sqlite3 *db;
    pthread_mutex_t mu;          /* serialises use of db */
    /* writer */
    pthread_mutex_t qmu;
    pthread_cond_t qcond;        /* jobs queued or stopping */
    pthread_cond_t synced;       /* a sync job completed */
    job *head, *tail;
    size_t queued;               /* jobs in the queue */
    uint64_t dropped;            /* jobs refused because the queue was full */
    bool running, stopping;
    pthread_t thread;
    int64_t retention_ms, prune_every_ms;
    /* Prepared statements of the hot paths, keyed by their SQL text's address. */
    struct {
        const char *sql;
        sqlite3_stmt *q;
    } cache[8];
};

/* A prepared statement for `sql` (a static string), reset and ready; under st->mu. */
static sqlite3_stmt *cached(sonar_store *st, const char *sql)
{
    size_t n = sizeof st->cache / sizeof st->cache[0];
    for (size_t i = 0; i < n; i++) {
        if (st->cache[i].sql == sql) {
            sqlite3_reset(st->cache[i].q);
            sqlite3_clear_bindings(st->cache[i].q);
            return st->cache[i].q;
        }
    }
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &q, NULL) != SQLITE_OK)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (st->cache[i].sql == NULL) {
            st->cache[i].sql = sql;
            st->cache[i].q = q;
            return q;
        }
    }
    SONAR_REQUIRE(!"statement cache too small");
    return NULL;
}

static sonar_status db_fail(sonar_store *st, const char *what)
{
    return sonar__fail(SONAR_ERR_DB, "sqlite: %s: %s", what, sqlite3_errmsg(st->db));
}

static sonar_status exec(sonar_store *st, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &err) != SQLITE_OK) {
        sonar_status s = sonar__fail(SONAR_ERR_DB, "sqlite: %s", err ? err : "?");
        sqlite3_free(err);
        return s;
    }
    return SONAR_OK;
}

static sonar_status read_version(sonar_store *st, int *out)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "SELECT MAX(version) FROM schema_version", -1, &q, NULL))
        return db_fail(st, "reading schema_version");
    int v = 0;
    if (sqlite3_step(q) == SQLITE_ROW)
        v = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    *out = v;
    return SONAR_OK;
}

static sonar_status migrate(sonar_store *st)
{
    sonar_status s = exec(st, "CREATE TABLE IF NOT EXISTS schema_version ("
                              " version INTEGER NOT NULL, applied_ms INTEGER NOT NULL)");
    int v = 0;
    if (s == SONAR_OK)
        s = read_version(st, &v);
    if (s != SONAR_OK)
        return s;
    if (v > SONARD_SCHEMA_VERSION)
        return sonar__fail(SONAR_ERR_DB,
                           "database schema version %d is newer than this sonard (%d)", v,
                           SONARD_SCHEMA_VERSION);
    for (; v < SONARD_SCHEMA_VERSION; v++) {
        char mark[128];
        snprintf(mark, sizeof mark, "INSERT INTO schema_version VALUES (%d, %lld)", v + 1,
                 (long long)sonar_wall_ms());
        if ((s = exec(st, "BEGIN IMMEDIATE")) != SONAR_OK)
            return s;
        if ((s = exec(st, migrations[v])) != SONAR_OK || (s = exec(st, mark)) != SONAR_OK) {
            exec(st, "ROLLBACK");
            return s;
        }
        if ((s = exec(st, "COMMIT")) != SONAR_OK)
            return s;
    }
    return SONAR_OK;
}

sonar_status sonar_store_open(sonar_store **out, const char *path)
{
    if (path == NULL || *path == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "database path is empty");
    sonar_store *st = calloc(1, sizeof *st);
    if (st == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    pthread_mutex_init(&st->mu, NULL);
    pthread_mutex_init(&st->qmu, NULL);
    pthread_cond_init(&st->qcond, NULL);
    pthread_cond_init(&st->synced, NULL);
    sonar_status s;
    if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL)) {
        s = sonar__fail(SONAR_ERR_DB, "cannot open database %s: %s", path,
                        st->db ? sqlite3_errmsg(st->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(st->db, 5000);
    if ((s = exec(st, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")) != SONAR_OK ||
        (s = migrate(st)) != SONAR_OK || (s = sonar_outbox_migrate(st->db)) != SONAR_OK) {
        char why[900];
        snprintf(why, sizeof why, "%s", sonar_last_error());
        sonar__fail(s, "database %s: %s", path, why);
        goto fail;
    }
    *out = st;
    return SONAR_OK;
fail:
    sqlite3_close(st->db);
    st->db = NULL;
    sonar_store_close(st);
    return s;
}

sonar_status sonar_store_schema_version(sonar_store *st, int *out)
{
    pthread_mutex_lock(&st->mu);
    sonar_status s = read_version(st, out);
    pthread_mutex_unlock(&st->mu);
    return s;
}

/* ---- statements ---------------------------------------------------------- */

/* Binds text (NULL as ''), ints, in order: "t" text, "i" int64. */
static sonar_status run(sonar_store *st, const char *sql, const char *fmt, ...)
{
    sqlite3_stmt *q = cached(st, sql);
    if (q == NULL)
        return db_fail(st, "prepare");
    va_list ap;
    va_start(ap, fmt);
    for (int i = 0; fmt[i]; i++) {
        if (fmt[i] == 't') {
            const char *t = va_arg(ap, const char *);
            sqlite3_bind_text(q, i + 1, t ? t : "", -1, SQLITE_STATIC);
        } else {
            sqlite3_bind_int64(q, i + 1, va_arg(ap, int64_t));
        }
    }
    va_end(ap);
    int rc = sqlite3_step(q);
    sonar_status s = rc == SQLITE_DONE || rc == SQLITE_ROW ? SONAR_OK : db_fail(st, "step");
    sqlite3_reset(q);
    return s;
}

static const char sql_service[] =
    "INSERT INTO services (name, version, depends_on, checks, first_seen_ms, last_seen_ms)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT(name) DO UPDATE SET version = ?2,"
    " depends_on = ?3, checks = ?4, last_seen_ms = MAX(last_seen_ms, ?5)";
static const char sql_instance[] =
    "INSERT INTO instances (service, instance, version, address, heartbeat_ms, last_seen_ms)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(service, instance) DO UPDATE SET"
    " version = ?3, address = ?4, heartbeat_ms = ?5, last_seen_ms = ?6";
static const char sql_leave[] = "DELETE FROM instances WHERE service = ?1 AND instance = ?2";
static const char sql_report[] =
    "INSERT OR IGNORE INTO reports (change_id, service, verdict, created_ms, report)"
    " VALUES (?1, ?2, ?3, ?4, ?5)";

sonar_status sonar_store_put_service(sonar_store *st, const char *service, const char *version,
                                     const char *depends_on_json, const char *checks_json,
                                     int64_t wall_ms)
{
    pthread_mutex_lock(&st->mu);
    sonar_status s = run(st, sql_service, "tttti", service, version,
                         depends_on_json ? depends_on_json : "[]",
                         checks_json ? checks_json : "{}", wall_ms);
    pthread_mutex_unlock(&st->mu);
    return s;
}

sonar_status sonar_store_put_instance(sonar_store *st, const char *service, const char *instance,
                                      const char *version, const char *address,
                                      int64_t heartbeat_ms, int64_t wall_ms)
{
    pthread_mutex_lock(&st->mu);
    sonar_status s = run(st, sql_instance, "ttttii", service, instance, version, address,
                         heartbeat_ms, wall_ms);
    pthread_mutex_unlock(&st->mu);
    return s;
}

sonar_status sonar_store_delete_instance(sonar_store *st, const char *service,
                                         const char *instance)
{
    pthread_mutex_lock(&st->mu);
    sonar_status s = run(st, sql_leave, "tt", service, instance);
    pthread_mutex_unlock(&st->mu);
    return s;
}

sonar_status sonar_store_put_report(sonar_store *st, const char *change_id, const char *service,
                                    const char *verdict, int64_t wall_ms, const char *report_json)
{
    pthread_mutex_lock(&st->mu);
    sonar_status s = run(st, sql_report, "tttit", change_id, service, verdict, wall_ms,
                         report_json);
    pthread_mutex_unlock(&st->mu);
    return s;
}

/* The report, and its outbox row when \p subject is not NULL, inside the
 * caller's transaction; under st->mu. A change id already stored is
 * neither stored nor enqueued again. */
static sonar_status report_event_apply(sonar_store *st, const char *change_id,
                                       const char *service, const char *verdict,
                                       int64_t wall_ms, const char *report_json,
                                       const char *subject, const char *const *headers)
{
    sonar_status s = run(st, sql_report, "tttit", change_id, service, verdict, wall_ms,
                         report_json);
    /* A report already stored (a retry) is not published twice. */
    if (s == SONAR_OK && subject != NULL && sqlite3_changes(st->db) > 0)
        s = sonar_outbox_enqueue(NULL, st->db, subject, report_json, strlen(report_json),
                                 headers);
    return s;
}

/* Ends the transaction or savepoint begun for one unit of work: kept when
 * \p s is SONAR_OK, else undone, keeping the first error's message. */
static sonar_status end_unit(sonar_store *st, sonar_status s, const char *keep,
                             const char *undo)
{
    if (s == SONAR_OK)
        return exec(st, keep);
    char why[900];
    snprintf(why, sizeof why, "%s", sonar_last_error());
    exec(st, undo);
    return sonar__fail(s, "%s", why);
}

sonar_status sonar_store_put_report_event(sonar_store *st, const char *change_id,
                                          const char *service, const char *verdict,
                                          int64_t wall_ms, const char *report_json,
                                          const char *subject, const char *const *headers)
{
    pthread_mutex_lock(&st->mu);
    sonar_status s = exec(st, "BEGIN IMMEDIATE");
    if (s == SONAR_OK) {
        s = report_event_apply(st, change_id, service, verdict, wall_ms, report_json, subject,
                               headers);
        s = end_unit(st, s, "COMMIT", "ROLLBACK");
    }
    pthread_mutex_unlock(&st->mu);
    return s;
}

sonar_status sonar_store_prune(sonar_store *st, int64_t before_wall_ms, int64_t now_wall_ms,
                               size_t *out_deleted)
{
    size_t total = 0;
    sonar_status s = SONAR_OK;
    for (;;) {
        pthread_mutex_lock(&st->mu);
        s = run(st,
                "DELETE FROM reports WHERE rowid IN (SELECT rowid FROM reports"
                " WHERE created_ms < ?1 LIMIT ?2)",
                "ii", before_wall_ms, (int64_t)SONARD_PRUNE_BATCH);
        int n = s == SONAR_OK ? sqlite3_changes(st->db) : 0;
        pthread_mutex_unlock(&st->mu);
        total += (size_t)n;
        if (s != SONAR_OK || n < SONARD_PRUNE_BATCH)
            break;
    }
    if (s == SONAR_OK) {
        pthread_mutex_lock(&st->mu);
        s = run(st,
                "DELETE FROM instances WHERE rowid IN (SELECT rowid FROM instances"
                " WHERE last_seen_ms + 3 * heartbeat_ms < ?1 LIMIT ?2)",
                "ii", now_wall_ms, (int64_t)SONARD_PRUNE_BATCH);
        pthread_mutex_unlock(&st->mu);
    }
    if (s == SONAR_OK && out_deleted != NULL)
        *out_deleted = total;
    return s;
}

static const char sql_get_report[] = "SELECT report FROM reports WHERE change_id = ?1";

sonar_status sonar_store_get_report(sonar_store *st, const char *change_id, char **out)
{
    sonar_status s = SONAR_OK;
    char *text = NULL;
    sqlite3_stmt *q = NULL;
    pthread_mutex_lock(&st->mu);
    if ((q = cached(st, sql_get_report)) == NULL) {
        s = db_fail(st, "prepare");
        goto out;
    }
    sqlite3_bind_text(q, 1, change_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(q, 0);
        if ((text = strdup(t ? t : "")) == NULL)
            s = sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    } else if (rc == SQLITE_DONE) {
        s = sonar__fail(SONAR_ERR_NOT_FOUND, "no report for change %s", change_id);
    } else {
        s = db_fail(st, "reading a report");
    }
out:
    sqlite3_reset(q);
    pthread_mutex_unlock(&st->mu);
    if (s == SONAR_OK)
        *out = text;
    return s;
}

sonar_status sonar_store_history(sonar_store *st, const char *service, int limit, json_t **out)
{
    sonar_status s = SONAR_OK;
    sqlite3_stmt *q = NULL;
    json_t *list = json_array();
    if (list == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    pthread_mutex_lock(&st->mu);
    if (sqlite3_prepare_v2(st->db,
                           "SELECT report FROM reports WHERE service = ?1"
                           " ORDER BY created_ms DESC, rowid DESC LIMIT ?2",
                           -1, &q, NULL) != SQLITE_OK) {
        s = db_fail(st, "prepare");
        goto out;
    }
    sqlite3_bind_text(q, 1, service, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, limit);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(q, 0);
        json_t *r = t ? json_loads(t, 0, NULL) : NULL;
        if (r != NULL)
            json_array_append_new(list, r); /* a row we cannot parse is skipped */
    }
    if (rc != SQLITE_DONE)
        s = db_fail(st, "reading history");
out:
    sqlite3_finalize(q);
    pthread_mutex_unlock(&st->mu);
    if (s != SONAR_OK) {
        json_decref(list);
        return s;
    }
    *out = list;
    return SONAR_OK;
}

sonar_status sonar_store_count_reports(sonar_store *st, int64_t *out)
{
    sqlite3_stmt *q = NULL;
    sonar_status s = SONAR_OK;
    pthread_mutex_lock(&st->mu);
    if (sqlite3_prepare_v2(st->db, "SELECT COUNT(*) FROM reports", -1, &q, NULL) != SQLITE_OK ||
        sqlite3_step(q) != SQLITE_ROW)
        s = db_fail(st, "counting reports");
    else
        *out = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    pthread_mutex_unlock(&st->mu);
    return s;
}

sonar_status sonar_store_newest_report_ms(sonar_store *st, int64_t *out)
{
    sqlite3_stmt *q = NULL;
    sonar_status s = SONAR_OK;
    pthread_mutex_lock(&st->mu);
    if (sqlite3_prepare_v2(st->db, "SELECT COALESCE(MAX(created_ms), 0) FROM reports", -1, &q,
                           NULL) != SQLITE_OK ||
        sqlite3_step(q) != SQLITE_ROW)
        s = db_fail(st, "reading the newest report's time");
    else
        *out = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    pthread_mutex_unlock(&st->mu);
    return s;
}

static const char *col(sqlite3_stmt *q, int i)
{
    const char *t = (const char *)sqlite3_column_text(q, i);
    return t ? t : "";
}

sonar_status sonar_store_load(sonar_store *st, sonar_store_service_fn on_service,
                              sonar_store_instance_fn on_instance, void *closure)
{
    sonar_status s = SONAR_OK;
    sqlite3_stmt *q = NULL;
    pthread_mutex_lock(&st->mu);
    if (sqlite3_prepare_v2(st->db,
                           "SELECT name, version, depends_on, checks, last_seen_ms FROM services"
                           " ORDER BY name", -1, &q, NULL) != SQLITE_OK) {
        s = db_fail(st, "prepare");
        goto out;
    }
    while (sqlite3_step(q) == SQLITE_ROW)
        on_service(closure, col(q, 0), col(q, 1), col(q, 2), col(q, 3),
                   sqlite3_column_int64(q, 4));
    sqlite3_finalize(q);
    q = NULL;
    if (sqlite3_prepare_v2(st->db,
                           "SELECT service, instance, version, address, heartbeat_ms,"
                           " last_seen_ms FROM instances", -1, &q, NULL) != SQLITE_OK) {
        s = db_fail(st, "prepare");
        goto out;
    }
    while (sqlite3_step(q) == SQLITE_ROW)
        on_instance(closure, col(q, 0), col(q, 1), col(q, 2), col(q, 3),
                    sqlite3_column_int64(q, 4), sqlite3_column_int64(q, 5));
out:
    sqlite3_finalize(q);
    pthread_mutex_unlock(&st->mu);
    return s;
}

sonar_status sonar_store_report_ids(sonar_store *st, sonar_store_id_fn on_id, void *closure)
{
    sonar_status s = SONAR_OK;
    sqlite3_stmt *q = NULL;
    pthread_mutex_lock(&st->mu);
    if (sqlite3_prepare_v2(st->db, "SELECT change_id FROM reports", -1, &q, NULL) != SQLITE_OK)
        s = db_fail(st, "prepare");
    else
        while (sqlite3_step(q) == SQLITE_ROW)
            on_id(closure, col(q, 0));
    sqlite3_finalize(q);
    pthread_mutex_unlock(&st->mu);
    return s;
}

/* ---- the writer ------------------------------------------------------------ */

static void job_free(job *j)
{
    free(j->a);
    free(j->b);
    free(j->c);
    free(j->d);
    free(j->e);
    free(j->f);
    free(j->g);
    free(j->why);
    free(j);
}

static void apply(sonar_store *st, job *j)
{
    sonar_status s = SONAR_OK;
    switch (j->kind) {
    case JOB_REGISTER:
        s = run(st, sql_service, "tttti", j->a, j->b, j->c, j->d, j->n2);
        if (s == SONAR_OK)
            s = run(st, sql_instance, "ttttii", j->a, j->e, j->b, j->f, j->n1, j->n2);
        break;
    case JOB_LEAVE:
        s = run(st, sql_leave, "tt", j->a, j->b);
        break;
    case JOB_REPORT:
        s = run(st, sql_report, "tttit", j->a, j->b, j->c, j->n2, j->d);
        break;
    case JOB_REPORT_EVENT: {
        /* Its own savepoint: the report and its outbox row stay together
         * even when another job of the batch fails. */
        const char *headers[] = {j->f, j->g, NULL};
        s = exec(st, "SAVEPOINT report_event");
        if (s == SONAR_OK) {
            s = report_event_apply(st, j->a, j->b, j->c, j->n2, j->d, j->e[0] ? j->e : NULL,
                                   j->f[0] ? headers : NULL);
            /* A savepoint rolled back to stays open: release it too. */
            s = end_unit(st, s, "RELEASE report_event",
                         "ROLLBACK TO report_event; RELEASE report_event");
        }
        if (s != SONAR_OK)
            snprintf(j->why, WHY_MAX, "%s", sonar_last_error());
        j->result = s;
        break;
    }
    case JOB_SYNC:
        break;
    }
    if (s != SONAR_OK && j->kind != JOB_REPORT_EVENT) /* that one's done_fn is told */
        sonar_log(SONAR_LOG_WARN, "store: %s", sonar_last_error());
}

static void writer_apply_batch(sonar_store *st, job *batch)
{
    pthread_mutex_lock(&st->mu);
    bool tx = exec(st, "BEGIN IMMEDIATE") == SONAR_OK;
    for (job *j = batch; j != NULL; j = j->next)
        apply(st, j);
    if (tx && exec(st, "COMMIT") != SONAR_OK) {
        char why[900];
        snprintf(why, sizeof why, "%s", sonar_last_error());
        sonar_log(SONAR_LOG_WARN, "store: %s", why);
        exec(st, "ROLLBACK");
        for (job *j = batch; j != NULL; j = j->next)
            if (j->kind == JOB_REPORT_EVENT && j->result == SONAR_OK) {
                j->result = SONAR_ERR_DB;
                snprintf(j->why, WHY_MAX, "%s", why);
            }
    }
    pthread_mutex_unlock(&st->mu);
    pthread_mutex_lock(&st->qmu);
    bool synced = false;
    job *submitted = NULL, **tail = &submitted;
    while (batch != NULL) {
        job *next = batch->next;
        if (batch->kind == JOB_REPORT_EVENT) { /* told below, outside the lock */
            batch->next = NULL;
            *tail = batch;
            tail = &batch->next;
            batch = next;
            continue;
        }
        if (batch->kind == JOB_SYNC) {
            *batch->done = true;
            synced = true;
        }
        job_free(batch);
        batch = next;
    }
    if (synced)
        pthread_cond_broadcast(&st->synced);
    pthread_mutex_unlock(&st->qmu);
    while (submitted != NULL) {
        job *j = submitted;
        submitted = j->next;
        j->done_fn(j->done_arg, j->result, j->why);
        job_free(j);
    }
}

static void *writer_main(void *arg)
{
    sonar_store *st = arg;
    pthread_setname_np(pthread_self(), "sonard-store");
    /* Storing is background work: on a busy machine it yields the CPU to
     * the gathers and replies (see docs/benchmarks.md, Coordinator). */
    if (sonar_thread_lower_priority(SONARD_WRITER_NICE) != SONAR_OK)
        sonar_log(SONAR_LOG_DEBUG, "store: %s", sonar_last_error());
    int64_t next_prune = sonar_now_ms();
    for (;;) {
        pthread_mutex_lock(&st->qmu);
        while (st->head == NULL && !st->stopping && sonar_now_ms() < next_prune) {
            int64_t at = sonar_wall_ms() + (next_prune - sonar_now_ms());
            struct timespec ts = {.tv_sec = at / 1000, .tv_nsec = (at % 1000) * 1000000};
            pthread_cond_timedwait(&st->qcond, &st->qmu, &ts);
        }
        job *batch = st->head;
        st->head = st->tail = NULL;
        st->queued = 0;
        bool stop = st->stopping;
        pthread_mutex_unlock(&st->qmu);
        if (batch != NULL)
            writer_apply_batch(st, batch);
        if (sonar_now_ms() >= next_prune) {
            int64_t now = sonar_wall_ms();
            size_t n = 0;
            if (sonar_store_prune(st, now - st->retention_ms, now, &n) != SONAR_OK)
                sonar_log(SONAR_LOG_WARN, "store: pruning: %s", sonar_last_error());
            else if (n > 0)
                sonar_log(SONAR_LOG_INFO, "store: pruned %zu reports past retention", n);
            next_prune = sonar_now_ms() + st->prune_every_ms;
        }
        if (stop && batch == NULL)
            return NULL;
    }
}

sonar_status sonar_store_start_writer(sonar_store *st, int64_t retention_ms,
                                      int64_t prune_every_ms)
{
    if (st->running)
        return sonar__fail(SONAR_ERR_STATE, "store writer already running");
    if (retention_ms <= 0 || prune_every_ms <= 0)
        return sonar__fail(SONAR_ERR_INVALID, "retention and prune interval must be positive");
    st->retention_ms = retention_ms;
    st->prune_every_ms = prune_every_ms;
    /* The timed wait above uses the default (realtime) clock of the condvar. */
    if (pthread_create(&st->thread, NULL, writer_main, st) != 0)
        return sonar__fail(SONAR_ERR_IO, "cannot start the store writer thread");
    st->running = true;
    return SONAR_OK;
}

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

/* Appends j to the queue and wakes the writer; under st->qmu. */
static void queue_append(sonar_store *st, job *j)
{
    if (st->tail)
        st->tail->next = j;
    else
        st->head = j;
    st->tail = j;
    pthread_cond_signal(&st->qcond);
}

/* Queues a JOB_SYNC (its `done` set) and waits until the writer applied
 * it. False, with j freed, when no writer runs. */
static bool queue_and_wait(sonar_store *st, job *j)
{
    pthread_mutex_lock(&st->qmu);
    if (!st->running || st->stopping) {
        pthread_mutex_unlock(&st->qmu);
        job_free(j);
        return false;
    }
    queue_append(st, j); /* not counted against the limit: never dropped */
    bool *done = j->done; /* j is freed by the writer once applied */
    while (!*done)
        pthread_cond_wait(&st->synced, &st->qmu);
    pthread_mutex_unlock(&st->qmu);
    return true;
}

/* Every string of j was copied (job_new's copies can fail). */
static bool job_filled(const job *j)
{
    return j->a && j->b && j->c && j->d && j->e && j->f && j->g;
}

/* Queues j, or applies it at once when no writer runs (tests, tools). */
static sonar_status enqueue(sonar_store *st, job *j)
{
    if (!job_filled(j)) {
        job_free(j);
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    }
    pthread_mutex_lock(&st->qmu);
    bool running = st->running && !st->stopping;
    if (running && st->queued >= SONARD_WRITER_QUEUE_MAX) {
        /* The database cannot keep up: registrations come again with the next
         * heartbeat, so dropping is better than growing without bound. */
        bool first = st->dropped++ == 0;
        pthread_mutex_unlock(&st->qmu);
        job_free(j);
        if (first)
            sonar_log(SONAR_LOG_WARN, "store: writer queue full (%d jobs): dropping writes",
                      SONARD_WRITER_QUEUE_MAX);
        return sonar__fail(SONAR_ERR_LIMIT, "store: writer queue full");
    }
    if (running) {
        st->queued++;
        queue_append(st, j);
    }
    pthread_mutex_unlock(&st->qmu);
    if (!running) {
        pthread_mutex_lock(&st->mu);
        apply(st, j);
        pthread_mutex_unlock(&st->mu);
        job_free(j);
    }
    return SONAR_OK;
}

static job *job_new(job_kind kind, const char *a, const char *b, const char *c, const char *d,
                    const char *e, const char *f)
{
    job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->kind = kind;
    j->a = dup_or_empty(a);
    j->b = dup_or_empty(b);
    j->c = dup_or_empty(c);
    j->d = dup_or_empty(d);
    j->e = dup_or_empty(e);
    j->f = dup_or_empty(f);
    j->g = dup_or_empty(NULL);
    return j;
}

sonar_status sonar_store_enqueue_register(sonar_store *st, const char *service,
                                          const char *version, const char *depends_on_json,
                                          const char *checks_json, const char *instance,
                                          const char *address, int64_t heartbeat_ms,
                                          int64_t wall_ms)
{
    job *j = job_new(JOB_REGISTER, service, version, depends_on_json ? depends_on_json : "[]",
                     checks_json ? checks_json : "{}", instance, address);
    if (j == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    j->n1 = heartbeat_ms;
    j->n2 = wall_ms;
    return enqueue(st, j);
}

sonar_status sonar_store_enqueue_leave(sonar_store *st, const char *service, const char *instance)
{
    job *j = job_new(JOB_LEAVE, service, instance, NULL, NULL, NULL, NULL);
    if (j == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    return enqueue(st, j);
}

sonar_status sonar_store_enqueue_report(sonar_store *st, const char *change_id,
                                        const char *service, const char *verdict,
                                        int64_t wall_ms, const char *report_json)
{
    job *j = job_new(JOB_REPORT, change_id, service, verdict, report_json, NULL, NULL);
    if (j == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    j->n2 = wall_ms;
    return enqueue(st, j);
}

/* A JOB_REPORT_EVENT with its strings copied. */
static sonar_status report_event_job(job **out, const char *change_id, const char *service,
                                     const char *verdict, int64_t wall_ms,
                                     const char *report_json, const char *subject,
                                     const char *const *headers)
{
    if (headers != NULL && headers[0] != NULL && (headers[1] == NULL || headers[2] != NULL))
        return sonar__fail(SONAR_ERR_INVALID, "store: a report event takes one header");
    const char *hname = headers && headers[0] ? headers[0] : NULL;
    const char *hvalue = hname ? headers[1] : NULL;
    job *j = job_new(JOB_REPORT_EVENT, change_id, service, verdict, report_json, subject,
                     hname);
    if (j != NULL) {
        free(j->g);
        j->g = dup_or_empty(hvalue);
    }
    if (j == NULL || !job_filled(j)) {
        if (j != NULL)
            job_free(j);
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    }
    j->n2 = wall_ms;
    *out = j;
    return SONAR_OK;
}

sonar_status sonar_store_submit_report_event(sonar_store *st, const char *change_id,
                                             const char *service, const char *verdict,
                                             int64_t wall_ms, const char *report_json,
                                             const char *subject, const char *const *headers,
                                             sonar_store_done_fn done, void *arg)
{
    job *j = NULL;
    sonar_status s = report_event_job(&j, change_id, service, verdict, wall_ms, report_json,
                                      subject, headers);
    if (s != SONAR_OK)
        return s;
    if ((j->why = calloc(1, WHY_MAX)) == NULL) {
        job_free(j);
        return sonar__fail(SONAR_ERR_NOMEM, "store: out of memory");
    }
    j->done_fn = done;
    j->done_arg = arg;
    pthread_mutex_lock(&st->qmu);
    bool running = st->running && !st->stopping;
    if (running)
        queue_append(st, j); /* not counted against the limit: never dropped */
    pthread_mutex_unlock(&st->qmu);
    if (!running) {
        pthread_mutex_lock(&st->mu);
        apply(st, j);
        pthread_mutex_unlock(&st->mu);
        done(arg, j->result, j->why);
        job_free(j);
    }
    return SONAR_OK;
}

/* A caller of sonar_store_write_report_event() waiting for its job. */
typedef struct written {
    sonar_store *st;
    bool done;            /* under st->qmu */
    sonar_status status;
    char why[WHY_MAX];
} written;

static void on_written(void *arg, sonar_status status, const char *why)
{
    written *w = arg;
    pthread_mutex_lock(&w->st->qmu);
    w->status = status;
    snprintf(w->why, sizeof w->why, "%s", why ? why : "");
    w->done = true;
    pthread_cond_broadcast(&w->st->synced);
    pthread_mutex_unlock(&w->st->qmu);
}

sonar_status sonar_store_write_report_event(sonar_store *st, const char *change_id,
                                            const char *service, const char *verdict,
                                            int64_t wall_ms, const char *report_json,
                                            const char *subject, const char *const *headers)
{
    written w = {.st = st};
    sonar_status s = sonar_store_submit_report_event(st, change_id, service, verdict, wall_ms,
                                                     report_json, subject, headers, on_written,
                                                     &w);
    if (s != SONAR_OK)
        return s;
    pthread_mutex_lock(&st->qmu);
    while (!w.done)
        pthread_cond_wait(&st->synced, &st->qmu);
    pthread_mutex_unlock(&st->qmu);
    return w.status == SONAR_OK ? SONAR_OK : sonar__fail(w.status, "%s", w.why);
}

void sonar_store_sync(sonar_store *st)
{
    bool done = false;
    job *j = job_new(JOB_SYNC, NULL, NULL, NULL, NULL, NULL, NULL);
    if (j == NULL)
        return;
    j->done = &done;
    queue_and_wait(st, j);
}

void sonar_store_close(sonar_store *st)
{
    if (st == NULL)
        return;
    if (st->running) {
        pthread_mutex_lock(&st->qmu);
        st->stopping = true;
        pthread_cond_signal(&st->qcond);
        pthread_mutex_unlock(&st->qmu);
        pthread_join(st->thread, NULL);
        st->running = false;
    }
    for (size_t i = 0; i < sizeof st->cache / sizeof st->cache[0]; i++)
        sqlite3_finalize(st->cache[i].q);
    sqlite3_close(st->db);
    pthread_mutex_destroy(&st->mu);
    pthread_mutex_destroy(&st->qmu);
    pthread_cond_destroy(&st->qcond);
    pthread_cond_destroy(&st->synced);
    free(st);
}
