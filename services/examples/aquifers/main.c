/*
 * aquifers — knows the aquifers and the wells drilled into each. The other
 * half of the wells example (see services/examples/README.md).
 *
 *   aquifers --db PATH [--version 1.0.0] [--server nats://127.0.0.1:4222]
 *
 * Endpoints (request/reply, JSON, listed in $SRV.INFO, errors as sonar.error.v1):
 *   aquifers.create {"name","region"?}  → the aquifer; 400 bad field, 409 exists
 *   aquifers.get    {"name"}            → {"name","region","created","wells","well_ids",
 *                                          "duplicate_events"}; 404 unknown
 *   aquifers.get    {}                  → {"aquifers":[...]} (all, without well_ids)
 *
 * It consumes `events.wells.created` through its inbox (durable consumer
 * "aquifers" on the WELLS stream): each well is recorded once, the
 * aquifer's count goes up, and `events.aquifers.updated` goes out through
 * the outbox in the same transaction. `aquifers.create` publishes
 * `events.aquifers.created` the same way; wells learns from both which
 * aquifers exist.
 *
 * On sonar it depends on wells with checks (checks.c): when a wells
 * candidate is announced at "nats:<prefix>", a well is created on it and
 * the answer checked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aquifers.h"

static const char *const migrations[] = {
    /* 1: aquifers and the wells recorded in them. */
    "CREATE TABLE aquifers ("
    "  name    TEXT PRIMARY KEY,"
    "  region  TEXT NOT NULL,"
    "  created TEXT NOT NULL,"
    "  wells   INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE aquifer_wells ("
    "  well_id TEXT PRIMARY KEY,"
    "  aquifer TEXT NOT NULL,"
    "  owner   TEXT NOT NULL,"
    "  depth   REAL NOT NULL,"
    "  created TEXT NOT NULL);"
    "CREATE INDEX aquifer_wells_by_aquifer ON aquifer_wells(aquifer)",
    /* 2: wells.created events that named a well already recorded (should stay 0:
     *    the inbox drops redeliveries; this catches replays past its retention). */
    "ALTER TABLE aquifers ADD COLUMN duplicate_events INTEGER NOT NULL DEFAULT 0",
};

/* ---- Queries (db locked or inside the inbox transaction) ---------------------- */

static json_t *aquifer_row(sqlite3_stmt *st)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I}", "name", (const char *)sqlite3_column_text(st, 0),
                     "region", (const char *)sqlite3_column_text(st, 1), "created",
                     (const char *)sqlite3_column_text(st, 2), "wells",
                     (json_int_t)sqlite3_column_int64(st, 3), "duplicate_events",
                     (json_int_t)sqlite3_column_int64(st, 4));
}

#define AQUIFER_COLUMNS "name, region, created, wells, duplicate_events"

/* The aquifer \p name as JSON (new), NULL when unknown; *failed on SQLite errors. */
static json_t *aquifer_find(sqlite3 *db, const char *name, bool *failed)
{
    sqlite3_stmt *st = NULL;
    json_t *out = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT " AQUIFER_COLUMNS " FROM aquifers WHERE name = ?1",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            out = aquifer_row(st);
    }
    sqlite3_finalize(st);
    *failed = rc != SQLITE_ROW && rc != SQLITE_DONE;
    return out;
}

/* Enqueues events.aquifers.<what> for \p aquifer (its JSON) in the open transaction. */
static bool publish_aquifer(sqlite3 *db, const char *what, json_t *aquifer)
{
    char subject[64], type[64];
    snprintf(subject, sizeof subject, "events.aquifers.%s", what);
    snprintf(type, sizeof type, "aquifers.%s.v1", what);
    json_t *ev = json_deep_copy(aquifer);
    json_object_del(ev, "duplicate_events");
    json_object_set_new(ev, "type", json_string(type));
    char *payload = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    bool ok = payload != NULL &&
              sonar_outbox_enqueue(NULL, db, subject, payload, strlen(payload), NULL) == SONAR_OK;
    if (!ok)
        sonar_log(SONAR_LOG_ERROR, "enqueue %s: %s", subject, sonar_last_error());
    free(payload);
    return ok;
}

static bool run_bound(sqlite3 *db, const char *sql, const char *a, const char *b, const char *c)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        const char *vals[] = { a, b, c };
        for (int i = 0; i < 3 && vals[i] != NULL; i++)
            sqlite3_bind_text(st, i + 1, vals[i], -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        sonar_log(SONAR_LOG_ERROR, "%s: %s", sql, sqlite3_errmsg(db));
    return rc == SQLITE_DONE;
}

/* ---- Endpoints ------------------------------------------------------------------ */

static int create_locked(sqlite3 *db, const char *name, const char *region, json_t **out)
{
    char now[40];
    choreo_now_rfc3339(now, sizeof now);
    bool failed = false;
    if (!choreo_exec(db, "BEGIN IMMEDIATE"))
        return 500;
    json_t *existing = aquifer_find(db, name, &failed);
    if (existing != NULL || failed) {
        json_decref(existing);
        choreo_exec(db, "ROLLBACK");
        return failed ? 500 : 409;
    }
    json_t *a = NULL;
    bool ok = run_bound(db, "INSERT INTO aquifers(name, region, created) VALUES (?1, ?2, ?3)",
                        name, region, now) &&
              (a = aquifer_find(db, name, &failed)) != NULL && publish_aquifer(db, "created", a) &&
              choreo_exec(db, "COMMIT");
    if (!ok) {
        json_decref(a);
        choreo_exec(db, "ROLLBACK");
        return 500;
    }
    *out = a;
    return 200;
}

static sonar_status on_create(sonar_request *req, void *closure)
{
    choreo_app *app = closure;
    static const char *const fields[] = { "name", "region", NULL };
    json_t *body = choreo_body(req, fields);
    const char *name = NULL, *region = "unknown";
    if (body == NULL || !choreo_take_name(req, body, "name", true, &name) ||
        !choreo_take_text(req, body, "region", false, &region)) {
        json_decref(body);
        return SONAR_OK;
    }
    json_t *a = NULL;
    int code = create_locked(choreo_db_lock(app->db), name, region, &a);
    choreo_db_unlock(app->db);
    sonar_status st;
    if (code == 200) {
        sonar_outbox_notify(app->outbox);
        sonar_log(SONAR_LOG_INFO, "aquifer %s (%s) created", name, region);
        st = choreo_respond(req, a);
    } else if (code == 409) {
        st = sonar_request_respond_error(req, 409, "aquifer \"%s\" already exists", name);
    } else {
        st = sonar_request_respond_error(req, 500, "could not store the aquifer");
    }
    json_decref(body);
    return st;
}

/* All aquifers (new array), NULL on SQLite errors. */
static json_t *aquifer_all(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    json_t *list = json_array();
    int rc = sqlite3_prepare_v2(db, "SELECT " AQUIFER_COLUMNS " FROM aquifers ORDER BY name", -1,
                                &st, NULL);
    if (rc == SQLITE_OK)
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            json_array_append_new(list, aquifer_row(st));
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        json_decref(list);
        return NULL;
    }
    return list;
}

/* Adds "well_ids" (in arrival order) to \p a; false on SQLite errors. */
static bool add_well_ids(sqlite3 *db, json_t *a)
{
    sqlite3_stmt *st = NULL;
    json_t *ids = json_array();
    int rc = sqlite3_prepare_v2(db, "SELECT well_id FROM aquifer_wells WHERE aquifer = ?1 "
                                    "ORDER BY rowid", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, json_string_value(json_object_get(a, "name")), -1,
                          SQLITE_TRANSIENT);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            json_array_append_new(ids, json_string((const char *)sqlite3_column_text(st, 0)));
    }
    sqlite3_finalize(st);
    json_object_set_new(a, "well_ids", ids);
    return rc == SQLITE_DONE;
}

static sonar_status on_get(sonar_request *req, void *closure)
{
    choreo_app *app = closure;
    static const char *const fields[] = { "name", NULL };
    json_t *body = choreo_body(req, fields);
    const char *name = NULL;
    if (body == NULL || !choreo_take_name(req, body, "name", false, &name)) {
        json_decref(body);
        return SONAR_OK;
    }
    sqlite3 *db = choreo_db_lock(app->db);
    bool failed = false;
    json_t *out = NULL;
    if (name == NULL) {
        json_t *all = aquifer_all(db);
        failed = all == NULL;
        out = all != NULL ? json_pack("{s:o}", "aquifers", all) : NULL;
    } else {
        out = aquifer_find(db, name, &failed);
        if (out != NULL && !add_well_ids(db, out))
            failed = true;
    }
    choreo_db_unlock(app->db);
    sonar_status st;
    if (failed) {
        json_decref(out);
        st = sonar_request_respond_error(req, 500, "could not read the aquifers");
    } else if (out == NULL) {
        st = sonar_request_respond_error(req, 404, "unknown aquifer \"%s\"", name);
    } else {
        st = choreo_respond(req, out);
    }
    json_decref(body);
    return st;
}

/* ---- Events from wells (inbox thread, inside its transaction) -------------------- */

static sonar_status apply_well_created(sqlite3 *db, const sonar_inbox_msg *m, void *closure)
{
    (void)closure;
    json_t *ev = json_loadb(m->data, m->len, 0, NULL);
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *id = json_string_value(json_object_get(ev, "id"));
    const char *aquifer = json_string_value(json_object_get(ev, "aquifer"));
    const char *owner = json_string_value(json_object_get(ev, "owner"));
    const char *created = json_string_value(json_object_get(ev, "created"));
    json_t *depth = json_object_get(ev, "depth");
    if (type == NULL || strcmp(type, "wells.created.v1") != 0 || id == NULL ||
        !sonar_name_valid(id) || aquifer == NULL || !sonar_name_valid(aquifer) ||
        owner == NULL || created == NULL || !json_is_number(depth)) {
        json_decref(ev);
        return sonar_inbox_error(SONAR_ERR_PROTOCOL, "%s: not a wells.created.v1 event with id, "
                                 "aquifer, owner, depth and created", m->subject);
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "INSERT INTO aquifer_wells(well_id, aquifer, owner, depth, "
                                    "created) VALUES (?1, ?2, ?3, ?4, ?5) "
                                    "ON CONFLICT(well_id) DO NOTHING", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, aquifer, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, owner, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 4, json_number_value(depth));
        sqlite3_bind_text(st, 5, created, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    bool fresh = rc == SQLITE_DONE && sqlite3_changes(db) == 1;
    bool ok = rc == SQLITE_DONE;
    bool failed = false;
    json_t *a = NULL;
    if (ok && fresh)
        ok = run_bound(db, "UPDATE aquifers SET wells = wells + 1 WHERE name = ?1", aquifer, NULL,
                       NULL) &&
             ((a = aquifer_find(db, aquifer, &failed)) != NULL ? publish_aquifer(db, "updated", a)
                                                               : !failed);
    else if (ok)
        ok = run_bound(db, "UPDATE aquifers SET duplicate_events = duplicate_events + 1 "
                           "WHERE name = ?1", aquifer, NULL, NULL);
    if (ok)
        sonar_log(SONAR_LOG_INFO, "%s well %s in %s", fresh ? "recorded" : "duplicate event for",
                  id, aquifer);
    json_decref(a);
    json_decref(ev);
    return ok ? SONAR_OK : sonar_inbox_error(SONAR_ERR_DB, "record well: %s", sqlite3_errmsg(db));
}

/* ---- Wiring ------------------------------------------------------------------------ */

static sonar_status setup(choreo_app *app, sonar_service *svc)
{
    sonar_status st = sonar_service_add_endpoint(svc, "create", "aquifers.create", NULL,
                                                 on_create, app);
    if (st == SONAR_OK)
        st = sonar_service_add_endpoint(svc, "get", "aquifers.get", NULL, on_get, app);
    if (st == SONAR_OK)
        st = sonar_service_set_endpoint_stats(svc, "get", choreo_stats, app);
    if (st == SONAR_OK)
        st = aquifers_add_checks(svc, app);
    return st;
}

static void usage(FILE *to)
{
    fprintf(to, "usage: aquifers --db PATH [--version 1.0.0] [--server URL]\n"
                "Knows the aquifers and their wells: aquifers.create, aquifers.get.\n");
}

int main(int argc, char **argv)
{
    choreo_app app = {
        .name = "aquifers", .version = "1.0.0", .address = "nats:aquifers",
        .description = "aquifers: the aquifers and the wells in each, from wells' events",
        .migrations = migrations, .n_migrations = (int)(sizeof migrations / sizeof *migrations),
        .consumer = "aquifers", .stream = CHOREO_WELLS_STREAM,
        .filter = "events.wells.created", .apply = apply_well_created, .setup = setup,
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc || argv[i + 1][0] == '\0') {
            fprintf(stderr, "aquifers: %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--db") == 0) app.db_path = v;
        else if (strcmp(a, "--version") == 0) app.version = v;
        else if (strcmp(a, "--server") == 0) app.server = v;
        else {
            fprintf(stderr, "aquifers: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (app.db_path == NULL) {
        fprintf(stderr, "aquifers: --db PATH is required\n");
        usage(stderr);
        return 2;
    }
    return choreo_run(&app);
}
