/*
 * wells — registers water wells. An example of event choreography on sonar.
 *
 *   wells --db PATH [--subject-prefix wells] [--name wells] [--version 1.0.0]
 *         [--server nats://127.0.0.1:4222] [--slow-ms N]
 *
 * Endpoints (request/reply, JSON, listed in $SRV.INFO, errors as sonar.error.v1):
 *   <prefix>.create  {"aquifer","owner","depth"} → the well {"id","aquifer","owner","depth","created"}
 *                    400 for a bad field, 404 for an aquifer wells has not heard of
 *   <prefix>.list    {"aquifer"?, "limit"?}       → {"wells":[...],"count"}
 *
 * Each new well and its `events.wells.created` event commit in ONE SQLite
 * transaction through the outbox; the relay publishes the event to the
 * WELLS stream exactly once. wells learns which aquifers exist from
 * `events.aquifers.created|updated` through its inbox (durable consumer
 * named after the subject prefix), so it keeps working — and refusing wells
 * for unknown aquifers — while aquifers is down.
 *
 * Addressing: a wells instance is reached at a subject prefix, registered
 * with sonar as the address "nats:<prefix>". A candidate runs next to the
 * production one with its own database and prefix, e.g.
 * `wells --db cand.db --subject-prefix wells-candidate --name wells-candidate`,
 * and is announced as `nats:wells-candidate`.
 */
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "choreo.h"

static const char *const migrations[] = {
    /* 1: the wells. */
    "CREATE TABLE wells ("
    "  id      TEXT PRIMARY KEY,"
    "  aquifer TEXT NOT NULL,"
    "  owner   TEXT NOT NULL,"
    "  depth   REAL NOT NULL,"
    "  created TEXT NOT NULL);"
    "CREATE INDEX wells_by_aquifer ON wells(aquifer)",
    /* 2: the aquifers we heard of from aquifers' events. */
    "CREATE TABLE aquifers ("
    "  name    TEXT PRIMARY KEY,"
    "  region  TEXT NOT NULL,"
    "  wells   INTEGER NOT NULL,"
    "  updated TEXT NOT NULL)",
};

/* Deepest well accepted, in metres (the deepest borehole is about 12 km). */
#define MAX_DEPTH_M 15000.0

typedef struct wells_options {
    const char *prefix;
    int64_t slow_ms;
    char create_subject[80];
    char list_subject[80];
} wells_options;

/* ---- Endpoints -------------------------------------------------------------- */

static json_t *well_json(const char *id, const char *aquifer, const char *owner, double depth,
                         const char *created)
{
    return json_pack("{s:s, s:s, s:s, s:f, s:s}", "id", id, "aquifer", aquifer, "owner", owner,
                     "depth", depth, "created", created);
}

static bool aquifer_known(sqlite3 *db, const char *name, bool *failed)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT 1 FROM aquifers WHERE name = ?1", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    *failed = rc != SQLITE_ROW && rc != SQLITE_DONE;
    return rc == SQLITE_ROW;
}

static bool insert_well(sqlite3 *db, const char *id, const char *aquifer, const char *owner,
                        double depth, const char *created)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "INSERT INTO wells(id, aquifer, owner, depth, created) "
                                    "VALUES (?1, ?2, ?3, ?4, ?5)", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, aquifer, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, owner, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 4, depth);
        sqlite3_bind_text(st, 5, created, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE;
}

/* The well row and its event, in one transaction. Runs with the db locked.
 * Returns 200, 404 (unknown aquifer) or 500 (logged). */
static int create_locked(sqlite3 *db, json_t *well)
{
    const char *id = json_string_value(json_object_get(well, "id"));
    const char *aquifer = json_string_value(json_object_get(well, "aquifer"));
    bool failed = false;
    if (!choreo_exec(db, "BEGIN IMMEDIATE"))
        return 500;
    if (!aquifer_known(db, aquifer, &failed)) {
        if (failed)
            sonar_log(SONAR_LOG_ERROR, "create: read aquifers: %s", sqlite3_errmsg(db));
        choreo_exec(db, "ROLLBACK");
        return failed ? 500 : 404;
    }
    json_t *event = json_deep_copy(well);
    json_object_set_new(event, "type", json_string("wells.created.v1"));
    char *payload = json_dumps(event, JSON_COMPACT);
    json_decref(event);
    bool ok = payload != NULL &&
              insert_well(db, id, aquifer, json_string_value(json_object_get(well, "owner")),
                          json_number_value(json_object_get(well, "depth")),
                          json_string_value(json_object_get(well, "created"))) &&
              sonar_outbox_enqueue(NULL, db, "events.wells.created", payload, strlen(payload),
                                   NULL) == SONAR_OK;
    bool oom = payload == NULL;
    free(payload);
    if (!ok || !choreo_exec(db, "COMMIT")) {
        sonar_log(SONAR_LOG_ERROR, "create: store well %s: %s", id,
                  oom ? "out of memory" : sqlite3_errmsg(db));
        choreo_exec(db, "ROLLBACK");
        return 500;
    }
    return 200;
}

static sonar_status on_create(sonar_request *req, void *closure)
{
    choreo_app *app = closure;
    const wells_options *opt = app->user;
    static const char *const fields[] = { "aquifer", "owner", "depth", NULL };
    json_t *body = choreo_body(req, fields);
    const char *aquifer = NULL, *owner = NULL;
    double depth = 0;
    if (body == NULL || !choreo_take_name(req, body, "aquifer", true, &aquifer) ||
        !choreo_take_text(req, body, "owner", true, &owner) ||
        !choreo_take_number(req, body, "depth", true, 0.1, MAX_DEPTH_M, &depth)) {
        json_decref(body);
        return SONAR_OK;
    }
    if (opt->slow_ms > 0) { /* --slow-ms: for watching graceful shutdown */
        sonar_log(SONAR_LOG_INFO, "slow create: holding it for %lld ms", (long long)opt->slow_ms);
        poll(NULL, 0, (int)opt->slow_ms);
    }
    char id[32], created[40];
    sonar_random_id(id);
    choreo_now_rfc3339(created, sizeof created);
    json_t *well = well_json(id, aquifer, owner, depth, created);
    int code = 500;
    if (well != NULL) {
        sqlite3 *db = choreo_db_lock(app->db);
        code = create_locked(db, well);
        choreo_db_unlock(app->db);
    }
    sonar_status st;
    if (code == 200) {
        sonar_outbox_notify(app->outbox);
        sonar_log(SONAR_LOG_INFO, "well %s in %s (%s, %.1f m)", id, aquifer, owner, depth);
        st = choreo_respond(req, well);
        well = NULL;
    } else if (code == 404) {
        st = sonar_request_respond_error(req, 404,
                                         "unknown aquifer \"%s\": create it with aquifers.create "
                                         "first (wells learns of it from aquifers' events)",
                                         aquifer);
    } else {
        st = sonar_request_respond_error(req, 500, "could not store the well");
    }
    json_decref(well);
    json_decref(body);
    return st;
}

static sonar_status on_list(sonar_request *req, void *closure)
{
    choreo_app *app = closure;
    static const char *const fields[] = { "aquifer", "limit", NULL };
    json_t *body = choreo_body(req, fields);
    const char *aquifer = NULL;
    int64_t limit = 100;
    if (body == NULL || !choreo_take_name(req, body, "aquifer", false, &aquifer) ||
        !choreo_take_int(req, body, "limit", false, 1, 1000, &limit)) {
        json_decref(body);
        return SONAR_OK;
    }
    json_t *list = json_array();
    sqlite3 *db = choreo_db_lock(app->db);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT id, aquifer, owner, depth, created FROM wells "
                                    "WHERE ?1 IS NULL OR aquifer = ?1 "
                                    "ORDER BY rowid LIMIT ?2", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, aquifer, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, limit);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            json_array_append_new(list, well_json((const char *)sqlite3_column_text(st, 0),
                                                  (const char *)sqlite3_column_text(st, 1),
                                                  (const char *)sqlite3_column_text(st, 2),
                                                  sqlite3_column_double(st, 3),
                                                  (const char *)sqlite3_column_text(st, 4)));
    }
    sqlite3_finalize(st);
    choreo_db_unlock(app->db);
    json_decref(body);
    if (rc != SQLITE_DONE) {
        json_decref(list);
        return sonar_request_respond_error(req, 500, "could not read the wells");
    }
    return choreo_respond(req, json_pack("{s:I, s:o}", "count",
                                         (json_int_t)json_array_size(list), "wells", list));
}

/* ---- Events from aquifers (inbox thread, inside its transaction) ------------ */

static sonar_status apply_aquifer_event(sqlite3 *db, const sonar_inbox_msg *m, void *closure)
{
    (void)closure;
    json_t *ev = json_loadb(m->data, m->len, 0, NULL);
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *name = json_string_value(json_object_get(ev, "name"));
    const char *region = json_string_value(json_object_get(ev, "region"));
    json_t *n = json_object_get(ev, "wells");
    if (type == NULL || (strcmp(type, "aquifers.created.v1") != 0 &&
                         strcmp(type, "aquifers.updated.v1") != 0) ||
        name == NULL || !sonar_name_valid(name) || region == NULL || !json_is_integer(n)) {
        json_decref(ev);
        return sonar_inbox_error(SONAR_ERR_PROTOCOL, "%s: not an aquifers.created|updated.v1 "
                                 "event with name, region and wells", m->subject);
    }
    char now[40];
    choreo_now_rfc3339(now, sizeof now);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "INSERT INTO aquifers(name, region, wells, updated) "
                                    "VALUES (?1, ?2, ?3, ?4) ON CONFLICT(name) DO UPDATE SET "
                                    "region = excluded.region, wells = excluded.wells, "
                                    "updated = excluded.updated", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, region, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, json_integer_value(n));
        sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    json_decref(ev);
    if (rc != SQLITE_DONE)
        return sonar_inbox_error(SONAR_ERR_DB, "store aquifer: %s", sqlite3_errmsg(db));
    return SONAR_OK;
}

/* ---- Wiring ------------------------------------------------------------------ */

static sonar_status setup(choreo_app *app, sonar_service *svc)
{
    wells_options *opt = app->user;
    sonar_status st = sonar_service_depend(svc, "aquifers");
    if (st == SONAR_OK)
        st = sonar_service_add_endpoint(svc, "create", opt->create_subject, NULL, on_create, app);
    if (st == SONAR_OK)
        st = sonar_service_add_endpoint(svc, "list", opt->list_subject, NULL, on_list, app);
    if (st == SONAR_OK)
        st = sonar_service_set_endpoint_stats(svc, "create", choreo_stats, app);
    return st;
}

static void usage(FILE *to)
{
    fprintf(to, "usage: wells --db PATH [--subject-prefix wells] [--name wells]\n"
                "             [--version 1.0.0] [--server URL] [--slow-ms N]\n"
                "Registers wells: <prefix>.create, <prefix>.list (NATS request/reply).\n");
}

int main(int argc, char **argv)
{
    wells_options opt = { .prefix = "wells" };
    char address[80];
    choreo_app app = {
        .name = "wells", .version = "1.0.0",
        .description = "wells: registers water wells; publishes events.wells.created",
        .migrations = migrations, .n_migrations = (int)(sizeof migrations / sizeof *migrations),
        .stream = CHOREO_AQUIFERS_STREAM, .filter = CHOREO_AQUIFERS_SUBJECTS,
        .apply = apply_aquifer_event, .setup = setup, .user = &opt,
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc || argv[i + 1][0] == '\0') {
            fprintf(stderr, "wells: %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--db") == 0) app.db_path = v;
        else if (strcmp(a, "--subject-prefix") == 0) opt.prefix = v;
        else if (strcmp(a, "--name") == 0) app.name = v;
        else if (strcmp(a, "--version") == 0) app.version = v;
        else if (strcmp(a, "--server") == 0) app.server = v;
        else if (strcmp(a, "--slow-ms") == 0) {
            char *end = NULL;
            long long ms = strtoll(v, &end, 10);
            if (*end != '\0' || ms < 0 || ms > 600000) {
                fprintf(stderr, "wells: --slow-ms must be 0..600000\n");
                return 2;
            }
            opt.slow_ms = ms;
        } else {
            fprintf(stderr, "wells: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (app.db_path == NULL) {
        fprintf(stderr, "wells: --db PATH is required\n");
        usage(stderr);
        return 2;
    }
    if (!sonar_name_valid(opt.prefix) || !sonar_name_valid(app.name)) {
        fprintf(stderr, "wells: --subject-prefix and --name must be names "
                        "(1 to 64 of A-Z a-z 0-9 _ -)\n");
        return 2;
    }
    snprintf(opt.create_subject, sizeof opt.create_subject, "%s.create", opt.prefix);
    snprintf(opt.list_subject, sizeof opt.list_subject, "%s.list", opt.prefix);
    snprintf(address, sizeof address, "nats:%s", opt.prefix);
    app.address = address;
    app.consumer = opt.prefix; /* one durable consumer per wells database */
    return choreo_run(&app);
}
