/* choreo: see choreo.h. */
#include "choreo.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct choreo_db {
    sqlite3 *db;
    pthread_mutex_t lock;
    int version;
    char who[32];
};

bool choreo_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        sonar_log(SONAR_LOG_ERROR, "sqlite: %s: %s", sql, err != NULL ? err : sqlite3_errmsg(db));
        sqlite3_free(err);
        return false;
    }
    return true;
}

static int schema_version(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_prepare_v2(db, "SELECT version FROM schema_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Brings the schema to version n, one transaction per step. */
static bool run_migrations(choreo_db *d, const char *const *migrations, int n)
{
    if (!choreo_exec(d->db, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"
                            "INSERT INTO schema_version(version) SELECT 0 "
                            "WHERE NOT EXISTS (SELECT 1 FROM schema_version)"))
        return false;
    int v = schema_version(d->db);
    if (v < 0)
        return false;
    if (v > n) {
        sonar_log(SONAR_LOG_ERROR,
                  "%s: the database is at schema version %d, this program knows only up to %d: "
                  "refusing to run on a newer database", d->who, v, n);
        return false;
    }
    for (; v < n; v++) {
        char bump[64];
        snprintf(bump, sizeof bump, "UPDATE schema_version SET version = %d", v + 1);
        if (!choreo_exec(d->db, "BEGIN IMMEDIATE"))
            return false;
        if (!choreo_exec(d->db, migrations[v]) || !choreo_exec(d->db, bump)) {
            choreo_exec(d->db, "ROLLBACK");
            return false;
        }
        if (!choreo_exec(d->db, "COMMIT"))
            return false;
        sonar_log(SONAR_LOG_INFO, "%s: schema migrated to version %d", d->who, v + 1);
    }
    d->version = n;
    return true;
}

choreo_db *choreo_db_open(const char *path, const char *const *migrations, int n,
                          const char *who)
{
    choreo_db *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    snprintf(d->who, sizeof d->who, "%s", who);
    pthread_mutex_init(&d->lock, NULL);
    if (sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        sonar_log(SONAR_LOG_ERROR, "%s: cannot open %s: %s", who, path,
                  d->db != NULL ? sqlite3_errmsg(d->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(d->db, 5000);
    if (!choreo_exec(d->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                            "PRAGMA foreign_keys=ON") ||
        !run_migrations(d, migrations, n))
        goto fail;
    if (sonar_outbox_migrate(d->db) != SONAR_OK) {
        sonar_log(SONAR_LOG_ERROR, "%s: outbox tables: %s", who, sonar_last_error());
        goto fail;
    }
    return d;
fail:
    choreo_db_close(d);
    return NULL;
}

void choreo_db_close(choreo_db *d)
{
    if (d == NULL)
        return;
    sqlite3_close(d->db);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

sqlite3 *choreo_db_lock(choreo_db *d)
{
    pthread_mutex_lock(&d->lock);
    return d->db;
}

void choreo_db_unlock(choreo_db *d)
{
    pthread_mutex_unlock(&d->lock);
}

int choreo_db_version(const choreo_db *d)
{
    return d->version;
}

sonar_status choreo_streams_ensure(natsConnection *nc)
{
    static const char *const wells[] = { CHOREO_WELLS_SUBJECTS, NULL };
    static const char *const aquifers[] = { CHOREO_AQUIFERS_SUBJECTS, NULL };
    const int64_t day_ms = 24LL * 3600 * 1000;
    sonar_stream_config w = { .name = CHOREO_WELLS_STREAM, .subjects = wells,
                              .duplicate_window_ms = 120000, .max_age_ms = 7 * day_ms };
    sonar_stream_config a = w;
    a.name = CHOREO_AQUIFERS_STREAM;
    a.subjects = aquifers;
    sonar_status st = sonar_stream_ensure(nc, &w);
    return st != SONAR_OK ? st : sonar_stream_ensure(nc, &a);
}

/* ---- Request bodies ------------------------------------------------------ */

json_t *choreo_body(sonar_request *req, const char *const *allowed)
{
    size_t len = sonar_request_len(req);
    const char *data = sonar_request_data(req);
    json_t *body;
    if (len == 0) {
        body = json_object();
    } else {
        json_error_t err;
        body = json_loadb(data, len, JSON_REJECT_DUPLICATES, &err);
        if (body == NULL) {
            sonar_request_respond_error(req, 400, "body is not JSON: %s", err.text);
            return NULL;
        }
    }
    if (!json_is_object(body)) {
        json_decref(body);
        sonar_request_respond_error(req, 400, "body must be a JSON object");
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        bool known = false;
        for (size_t i = 0; allowed[i] != NULL && !known; i++)
            known = strcmp(allowed[i], key) == 0;
        if (!known) {
            /* Quote printable ASCII only: the key came from a stranger. */
            char shown[65];
            size_t j = 0;
            for (; key[j] != '\0' && j + 1 < sizeof shown; j++)
                shown[j] = key[j] >= 0x20 && key[j] < 0x7f ? key[j] : '?';
            shown[j] = '\0';
            sonar_request_respond_error(req, 400, "unknown field \"%s\"", shown);
            json_decref(body);
            return NULL;
        }
    }
    return body;
}

static bool absent(sonar_request *req, const char *key, bool required)
{
    if (required)
        sonar_request_respond_error(req, 400, "missing field \"%s\"", key);
    return !required;
}

bool choreo_take_name(sonar_request *req, json_t *body, const char *key, bool required,
                      const char **out)
{
    json_t *v = json_object_get(body, key);
    if (v == NULL)
        return absent(req, key, required);
    const char *s = json_string_value(v);
    if (s == NULL || !sonar_name_valid(s)) {
        sonar_request_respond_error(req, 400, "\"%s\" must be a name: 1 to 64 of A-Z a-z 0-9 _ -",
                                    key);
        return false;
    }
    *out = s;
    return true;
}

bool choreo_take_text(sonar_request *req, json_t *body, const char *key, bool required,
                      const char **out)
{
    json_t *v = json_object_get(body, key);
    if (v == NULL)
        return absent(req, key, required);
    const char *s = json_string_value(v);
    size_t n = s != NULL ? json_string_length(v) : 0;
    bool ok = s != NULL && n >= 1 && n <= CHOREO_MAX_TEXT && strlen(s) == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)s[i] >= 0x20 && s[i] != 0x7f;
    if (!ok) {
        sonar_request_respond_error(req, 400,
                                    "\"%s\" must be text of 1 to %d bytes without control "
                                    "characters", key, CHOREO_MAX_TEXT);
        return false;
    }
    *out = s;
    return true;
}

bool choreo_take_number(sonar_request *req, json_t *body, const char *key, bool required,
                        double min, double max, double *out)
{
    json_t *v = json_object_get(body, key);
    if (v == NULL)
        return absent(req, key, required);
    double d = json_is_number(v) ? json_number_value(v) : NAN;
    if (!json_is_number(v) || !isfinite(d) || d < min || d > max) {
        sonar_request_respond_error(req, 400, "\"%s\" must be a number from %g to %g", key, min,
                                    max);
        return false;
    }
    *out = d;
    return true;
}

bool choreo_take_int(sonar_request *req, json_t *body, const char *key, bool required,
                     int64_t min, int64_t max, int64_t *out)
{
    json_t *v = json_object_get(body, key);
    if (v == NULL)
        return absent(req, key, required);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        sonar_request_respond_error(req, 400, "\"%s\" must be an integer from %lld to %lld", key,
                                    (long long)min, (long long)max);
        return false;
    }
    *out = json_integer_value(v);
    return true;
}

sonar_status choreo_respond(sonar_request *req, json_t *value)
{
    char *text = value != NULL ? json_dumps(value, JSON_COMPACT) : NULL;
    json_decref(value);
    if (text == NULL)
        return sonar_request_respond_error(req, 500, "out of memory");
    sonar_status st = sonar_request_respond(req, text, strlen(text));
    free(text);
    return st;
}

void choreo_now_rfc3339(char *buf, size_t len)
{
    sonar_format_rfc3339(sonar_wall_ms(), buf, len);
}

void choreo_block_stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, set, NULL);
}

int choreo_wait_stop(const sigset_t *set)
{
    int sig = 0;
    sigwait(set, &sig);
    return sig;
}

/* ---- choreo_run ------------------------------------------------------------ */

json_t *choreo_stats(void *closure)
{
    choreo_app *app = closure;
    return json_pack("{s:o?, s:o?}", "outbox", sonar_outbox_stats_json(app->outbox), "inbox",
                     sonar_inbox_stats_json(app->inbox));
}

/* Events the inbox's transaction enqueued leave at once. */
static void after_commit(const sonar_inbox_msg *msg, void *closure)
{
    (void)msg;
    choreo_app *app = closure;
    sonar_outbox_notify(app->outbox);
}

int choreo_run(choreo_app *app)
{
    sigset_t stop;
    choreo_block_stop_signals(&stop);
    sonar_log_set_name(app->name);
    int rc = 1;
    sonar_service *svc = NULL;
    app->db = choreo_db_open(app->db_path, app->migrations, app->n_migrations, app->name);
    if (app->db == NULL)
        goto out;

    sonar_bus_config bus_cfg = { .urls = app->server, .name = app->name };
    sonar_bus_config_from_env(&bus_cfg);
    if (sonar_bus_connect(&app->bus, &bus_cfg) != SONAR_OK)
        goto fail;
    natsConnection *nc = sonar_bus_nats(app->bus);
    sonar_outbox_config ob_cfg = { .name = app->name };
    sonar_inbox_config in_cfg = { .name = app->consumer, .stream = app->stream,
                                  .filter_subject = app->filter, .fetch_wait_ms = 500,
                                  /* A message fetched by an instance that then died is
                                   * redelivered after this: keep it short, handlers are quick. */
                                  .ack_wait_ms = 5000,
                                  .after_commit = after_commit };
    sonar_service_config cfg = { .name = app->name, .version = app->version,
                                 .address = app->address, .description = app->description };
    if (choreo_streams_ensure(nc) != SONAR_OK ||
        sonar_outbox_create(&app->outbox, app->bus, app->db_path, &ob_cfg) != SONAR_OK ||
        sonar_inbox_create(&app->inbox, nc, app->db_path, &in_cfg, app->apply, app) != SONAR_OK ||
        sonar_service_create(&svc, app->bus, &cfg) != SONAR_OK ||
        app->setup(app, svc) != SONAR_OK || sonar_service_start(svc) != SONAR_OK)
        goto fail;

    sonar_log(SONAR_LOG_INFO, "joined as instance %s at %s (schema version %d, db %s)",
              sonar_service_instance(svc), app->address, choreo_db_version(app->db),
              app->db_path);
    printf("ready %s\n", sonar_service_instance(svc));
    fflush(stdout);
    int sig = choreo_wait_stop(&stop);
    sonar_log(SONAR_LOG_INFO, "signal %d: finishing requests in flight and leaving", sig);
    rc = 0;
    goto out;
fail:
    sonar_log(SONAR_LOG_ERROR, "cannot start: %s", sonar_last_error());
out:
    sonar_service_destroy(svc);   /* leaves the bus, waits for handlers and checks */
    sonar_inbox_destroy(app->inbox);
    sonar_outbox_destroy(app->outbox);
    choreo_db_close(app->db);
    sonar_bus_destroy(app->bus);
    app->inbox = NULL;
    app->outbox = NULL;
    app->db = NULL;
    app->bus = NULL;
    nats_Close();
    return rc;
}
