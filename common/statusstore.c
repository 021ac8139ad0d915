/* statusd storage in SQLite: checks, latest status, metric samples. */
#include "sonar/statusstore.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_internal.h"
#include "internal.h"
#include "sonar/util.h"

struct sonar_statusstore {
    sqlite3 *db;
    pthread_mutex_t lock;
    int version;
};

/* Migration i brings the schema from version i to i + 1. */
static const char *const migrations[SONAR_STATUSSTORE_SCHEMA_VERSION] = {
    /* 1: health-check results and the latest per target */
    "CREATE TABLE checks ("
    "  id INTEGER PRIMARY KEY,"
    "  service TEXT NOT NULL,"
    "  target TEXT NOT NULL,"
    "  observed TEXT NOT NULL,"
    "  reported TEXT NOT NULL,"
    "  http_code INTEGER NOT NULL,"
    "  duration_ms INTEGER NOT NULL,"
    "  at_ms INTEGER NOT NULL,"
    "  error TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX checks_service_at ON checks(service, at_ms, id);"
    "CREATE INDEX checks_at ON checks(at_ms);"
    "CREATE TABLE latest ("
    "  service TEXT NOT NULL,"
    "  target TEXT NOT NULL,"
    "  check_id INTEGER NOT NULL,"
    "  observed TEXT NOT NULL,"
    "  reported TEXT NOT NULL,"
    "  http_code INTEGER NOT NULL,"
    "  duration_ms INTEGER NOT NULL,"
    "  at_ms INTEGER NOT NULL,"
    "  error TEXT NOT NULL DEFAULT '',"
    "  PRIMARY KEY (service, target)) WITHOUT ROWID;",
    /* 2: metric series (labels as canonical JSON) and their samples; NULL value = NaN */
    "CREATE TABLE series ("
    "  id INTEGER PRIMARY KEY,"
    "  service TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  labels TEXT NOT NULL,"
    "  UNIQUE (service, name, labels));"
    "CREATE INDEX series_name ON series(name, service);"
    "CREATE TABLE samples ("
    "  series_id INTEGER NOT NULL REFERENCES series(id),"
    "  at_ms INTEGER NOT NULL,"
    "  value REAL);"
    "CREATE INDEX samples_series_at ON samples(series_id, at_ms);"
    "CREATE INDEX samples_at ON samples(at_ms);",
};

static void rollback(sonar_statusstore *s)
{
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

/* ---- open and migrate ---- */

static sonar_status migrate(sonar_statusstore *s)
{
    sonar_status rc = sonar__db_exec(s->db, "BEGIN IMMEDIATE;"
                              "CREATE TABLE IF NOT EXISTS schema_version "
                              "  (version INTEGER NOT NULL);"
                              "INSERT INTO schema_version SELECT 0 "
                              "  WHERE NOT EXISTS (SELECT 1 FROM schema_version);"
                              "COMMIT;");
    if (rc != SONAR_OK) {
        rollback(s);
        return rc;
    }
    int64_t v = 0;
    if ((rc = sonar__db_int(s->db, "SELECT version FROM schema_version", NULL, -1, &v)) !=
        SONAR_OK)
        return rc;
    if (v > SONAR_STATUSSTORE_SCHEMA_VERSION || v < 0)
        return sonar__fail(SONAR_ERR_VERSION,
                           "status store schema version %d is not one this build knows "
                           "(up to %d)", (int)v, SONAR_STATUSSTORE_SCHEMA_VERSION);
    for (; v < SONAR_STATUSSTORE_SCHEMA_VERSION; v++) {
        char bump[96];
        snprintf(bump, sizeof bump, "UPDATE schema_version SET version = %d;", (int)v + 1);
        if ((rc = sonar__db_exec(s->db, "BEGIN IMMEDIATE")) != SONAR_OK)
            return rc;
        if ((rc = sonar__db_exec(s->db, migrations[v])) != SONAR_OK ||
            (rc = sonar__db_exec(s->db, bump)) != SONAR_OK ||
            (rc = sonar__db_exec(s->db, "COMMIT")) != SONAR_OK) {
            rollback(s);
            return rc;
        }
    }
    s->version = (int)v;
    return SONAR_OK;
}

sonar_status sonar_statusstore_create(sonar_statusstore **out, const char *path)
{
    if (out == NULL || path == NULL || path[0] == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "status store: missing %s",
                           out == NULL ? "out" : "path");
    sonar_statusstore *s = calloc(1, sizeof *s);
    if (s == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&s->lock, NULL);
    sonar_status rc;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                          SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
        rc = sonar__fail(SONAR_ERR_DB, "opening status store %s: %s", path,
                         s->db != NULL ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    if ((rc = sonar__db_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                      "PRAGMA foreign_keys=ON;")) != SONAR_OK ||
        (rc = migrate(s)) != SONAR_OK)
        goto fail;
    *out = s;
    return SONAR_OK;
fail:
    sonar_statusstore_destroy(s);
    return rc;
}

void sonar_statusstore_destroy(sonar_statusstore *s)
{
    if (s == NULL)
        return;
    sqlite3_close_v2(s->db);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int sonar_statusstore_schema_version(sonar_statusstore *s)
{
    return s != NULL ? s->version : 0;
}

/* ---- checks ---- */

static sonar_status check_target(const char *target)
{
    if (target == NULL || target[0] == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "target is missing");
    if (strnlen(target, SONAR_STATUSSTORE_TARGET_MAX + 1) > SONAR_STATUSSTORE_TARGET_MAX)
        return sonar__fail(SONAR_ERR_INVALID, "target longer than %d bytes",
                           SONAR_STATUSSTORE_TARGET_MAX);
    return SONAR_OK;
}

static bool status_known(sonar_health_status st)
{
    return st >= SONAR_HEALTH_UNKNOWN && st <= SONAR_HEALTH_CRITICAL;
}

static sonar_status validate_check(const sonar_statusstore_check *c)
{
    if (c == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "check is missing");
    sonar_status rc = sonar_name_check("service name", c->service);
    if (rc == SONAR_OK)
        rc = check_target(c->target);
    if (rc == SONAR_OK && (!status_known(c->observed) || !status_known(c->reported)))
        return sonar__fail(SONAR_ERR_INVALID, "check status out of range");
    if (rc == SONAR_OK && (c->http_code < 0 || c->http_code > 999 || c->duration_ms < 0))
        return sonar__fail(SONAR_ERR_INVALID, "check has HTTP code %ld, duration %lld ms",
                           c->http_code, (long long)c->duration_ms);
    return rc;
}

static void bind_check(sqlite3_stmt *st, const sonar_statusstore_check *c, int64_t id)
{
    const char *err = c->error != NULL ? c->error : "";
    size_t elen = strnlen(err, SONAR_STATUSSTORE_ERROR_MAX);
    sqlite3_bind_text(st, 1, c->service, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->target, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, sonar_health_status_str(c->observed), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, sonar_health_status_str(c->reported), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, c->http_code);
    sqlite3_bind_int64(st, 6, c->duration_ms);
    sqlite3_bind_int64(st, 7, c->at_ms);
    sqlite3_bind_text(st, 8, err, (int)elen, SQLITE_STATIC);
    if (id >= 0)
        sqlite3_bind_int64(st, 9, id);
}

/* Runs a prepared statement that returns no rows, then finalizes it. */
static sonar_status run_done(sonar_statusstore *s, sqlite3_stmt *st, const char *what)
{
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    return step == SQLITE_DONE ? SONAR_OK : sonar__db_fail(s->db, what);
}

/* The check row and the latest status, inside the caller's transaction. */
static sonar_status write_check(sonar_statusstore *s, const sonar_statusstore_check *c,
                                int64_t *out_id)
{
    sqlite3_stmt *ins = NULL, *up = NULL;
    sonar_status rc = sonar__db_prepare(s->db,
                                        "INSERT INTO checks (service, target, observed, "
                                        "reported, http_code, duration_ms, at_ms, error) "
                                        "VALUES (?,?,?,?,?,?,?,?)",
                                        &ins);
    if (rc == SONAR_OK) {
        bind_check(ins, c, -1);
        rc = run_done(s, ins, "storing a check");
    }
    int64_t id = sqlite3_last_insert_rowid(s->db);
    if (rc == SONAR_OK)
        rc = sonar__db_prepare(s->db,
                               "INSERT INTO latest (service, target, observed, reported, "
                               "http_code, duration_ms, at_ms, error, check_id) "
                               "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (service, target) "
                               "DO UPDATE SET observed = excluded.observed, "
                               "reported = excluded.reported, http_code = excluded.http_code, "
                               "duration_ms = excluded.duration_ms, "
                               "at_ms = excluded.at_ms, error = excluded.error, "
                               "check_id = excluded.check_id WHERE excluded.at_ms >= latest.at_ms",
                               &up);
    if (rc == SONAR_OK) {
        bind_check(up, c, id);
        rc = run_done(s, up, "updating the latest status");
    }
    if (rc == SONAR_OK && out_id != NULL)
        *out_id = id;
    return rc;
}

static sonar_status write_samples(sonar_statusstore *s, const sonar_statusstore_sample_in *in,
                                  char **json, size_t n);
static sonar_status prepare_samples(const sonar_statusstore_sample_in *in, size_t n,
                                    char ***out);

sonar_status sonar_statusstore_add_check_with_samples(sonar_statusstore *s,
                                                      const sonar_statusstore_check *c,
                                                      const sonar_statusstore_sample_in *samples,
                                                      size_t n, int64_t *out_id)
{
    if (s == NULL || (samples == NULL && n > 0))
        return sonar__fail(SONAR_ERR_INVALID, "status store: missing argument");
    sonar_status rc = validate_check(c);
    char **json = NULL;
    if (rc == SONAR_OK && n > 0)
        rc = prepare_samples(samples, n, &json);
    if (rc != SONAR_OK)
        return rc;
    pthread_mutex_lock(&s->lock);
    rc = sonar__db_exec(s->db, "BEGIN IMMEDIATE");
    if (rc == SONAR_OK) {
        rc = write_check(s, c, out_id);
        if (rc == SONAR_OK && n > 0)
            rc = write_samples(s, samples, json, n);
        if (rc == SONAR_OK)
            rc = sonar__db_exec(s->db, "COMMIT");
        if (rc != SONAR_OK)
            rollback(s);
    }
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; json && i < n; i++)
        free(json[i]);
    free(json);
    return rc;
}

sonar_status sonar_statusstore_add_check(sonar_statusstore *s,
                                         const sonar_statusstore_check *c, int64_t *out_id)
{
    return sonar_statusstore_add_check_with_samples(s, c, NULL, 0, out_id);
}

/* Copies text columns cols[0..n) of the current row into one new block;
 * strs[i] points into it (free the block through strs[0]). */
static bool copy_texts(sqlite3_stmt *st, const int *cols, size_t n, char **strs)
{
    size_t lens[8], total = 0;
    SONAR_REQUIRE(n <= 8);
    for (size_t i = 0; i < n; i++) {
        const char *t = (const char *)sqlite3_column_text(st, cols[i]);
        lens[i] = t != NULL ? strlen(t) : 0;
        total += lens[i] + 1;
    }
    char *block = malloc(total);
    if (block == NULL)
        return false;
    for (size_t i = 0, off = 0; i < n; off += lens[i] + 1, i++) {
        const char *t = (const char *)sqlite3_column_text(st, cols[i]);
        strs[i] = block + off;
        memcpy(strs[i], t != NULL ? t : "", lens[i]);
        strs[i][lens[i]] = '\0';
    }
    return true;
}

/* Frees items read by read_rows(): each one's string block starts at the
 * pointer stored `str_offset` bytes into it. */
static void free_rows(void *items, size_t n, size_t size, size_t str_offset)
{
    for (size_t i = 0; i < n; i++) {
        char *block;
        memcpy(&block, (char *)items + i * size + str_offset, sizeof block);
        free(block);
    }
    free(items);
}

/* Fills one list item from the current row; strs are its text columns. */
typedef void (*row_fill)(sqlite3_stmt *st, char **strs, void *item);

/* Reads every row of `st` into a new array of items of `size` bytes, each
 * with the three text columns `cols` copied; finalizes the statement. On
 * failure the items read so far are handed back too (the caller frees them
 * with its list's finish). */
static sonar_status read_rows(sonar_statusstore *s, sqlite3_stmt *st, const int cols[3],
                              size_t size, row_fill fill, void **out_items, size_t *out_count)
{
    char *items = NULL;
    size_t n = 0, cap = 0;
    int step;
    sonar_status rc = SONAR_OK;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char *grown = realloc(items, cap * size);
            if (grown == NULL) {
                rc = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
                break;
            }
            items = grown;
        }
        char *strs[3];
        if (!copy_texts(st, cols, 3, strs)) {
            rc = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
            break;
        }
        fill(st, strs, items + n * size);
        n++;
    }
    if (rc == SONAR_OK && step != SQLITE_DONE)
        rc = sonar__db_fail(s->db, "reading rows");
    sqlite3_finalize(st);
    *out_items = items;
    *out_count = n;
    return rc;
}

/* Row: id, service, target, observed, reported, http_code, duration_ms, at_ms, error. */
static const int check_cols[3] = {1, 2, 8};

static void fill_check(sqlite3_stmt *st, char **strs, void *item)
{
    sonar_statusstore_check *c = item;
    *c = (sonar_statusstore_check){
        .id = sqlite3_column_int64(st, 0), .service = strs[0], .target = strs[1],
        .http_code = (long)sqlite3_column_int64(st, 5),
        .duration_ms = sqlite3_column_int64(st, 6), .at_ms = sqlite3_column_int64(st, 7),
        .error = strs[2]};
    sonar_health_status_parse((const char *)sqlite3_column_text(st, 3), &c->observed);
    sonar_health_status_parse((const char *)sqlite3_column_text(st, 4), &c->reported);
}

static sonar_status read_checks(sonar_statusstore *s, sqlite3_stmt *st,
                                sonar_statusstore_checks *out)
{
    void *items;
    size_t n;
    sonar_status rc = read_rows(s, st, check_cols, sizeof(sonar_statusstore_check), fill_check,
                                &items, &n);
    sonar_statusstore_checks list = {.items = items, .count = n};
    if (rc != SONAR_OK) {
        sonar_statusstore_checks_finish(&list);
        return rc;
    }
    *out = list;
    return SONAR_OK;
}

sonar_status sonar_statusstore_latest(sonar_statusstore *s, const char *service,
                                      sonar_statusstore_checks *out)
{
    if (s == NULL || out == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_statusstore_latest: missing argument");
    sonar_status rc = service != NULL ? sonar_name_check("service name", service) : SONAR_OK;
    if (rc != SONAR_OK)
        return rc;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st = NULL;
    rc = sonar__db_prepare(s->db,
                           "SELECT check_id, service, target, observed, reported, http_code, "
                           "duration_ms, at_ms, error FROM latest "
                           "WHERE ?1 IS NULL OR service = ?1 ORDER BY service, target", &st);
    if (rc == SONAR_OK) {
        sqlite3_bind_text(st, 1, service, -1, SQLITE_STATIC);
        rc = read_checks(s, st, out);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

sonar_status sonar_statusstore_checks_for(sonar_statusstore *s, const char *service,
                                          size_t limit, sonar_statusstore_checks *out)
{
    if (s == NULL || out == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_statusstore_checks_for: missing argument");
    sonar_status rc = service == NULL ? SONAR_OK : sonar_name_check("service name", service);
    if (rc != SONAR_OK)
        return rc;
    if (limit > SONAR_STATUSSTORE_CHECKS_MAX)
        return sonar__fail(SONAR_ERR_INVALID, "limit %zu is over %d", limit,
                           SONAR_STATUSSTORE_CHECKS_MAX);
    if (limit == 0)
        limit = SONAR_STATUSSTORE_CHECKS_DEFAULT;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st = NULL;
    rc = sonar__db_prepare(s->db,
                           service != NULL
                               ? "SELECT id, service, target, observed, reported, http_code, "
                                 "duration_ms, at_ms, error FROM checks WHERE service = ?1 "
                                 "ORDER BY at_ms DESC, id DESC LIMIT ?2"
                               : "SELECT id, service, target, observed, reported, http_code, "
                                 "duration_ms, at_ms, error FROM checks "
                                 "ORDER BY at_ms DESC, id DESC LIMIT ?2",
                           &st);
    if (rc == SONAR_OK) {
        if (service != NULL)
            sqlite3_bind_text(st, 1, service, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)limit);
        rc = read_checks(s, st, out);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void sonar_statusstore_checks_finish(sonar_statusstore_checks *list)
{
    if (list == NULL)
        return;
    free_rows(list->items, list->count, sizeof *list->items,
              offsetof(sonar_statusstore_check, service));
    memset(list, 0, sizeof *list);
}

sonar_status sonar_statusstore_remove_target(sonar_statusstore *s, const char *service,
                                             const char *target)
{
    if (s == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "status store is missing");
    sonar_status rc = sonar_name_check("service name", service);
    if (rc == SONAR_OK)
        rc = check_target(target);
    if (rc != SONAR_OK)
        return rc;
    static const char *const sql[] = {
        "DELETE FROM latest WHERE service = ? AND target = ?",
        "DELETE FROM checks WHERE service = ? AND target = ?",
    };
    pthread_mutex_lock(&s->lock);
    int changed = 0;
    if ((rc = sonar__db_exec(s->db, "BEGIN IMMEDIATE")) != SONAR_OK)
        goto out;
    for (size_t i = 0; i < 2; i++) {
        sqlite3_stmt *st = NULL;
        if ((rc = sonar__db_prepare(s->db, sql[i], &st)) != SONAR_OK)
            goto fail;
        sqlite3_bind_text(st, 1, service, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, target, -1, SQLITE_STATIC);
        if ((rc = run_done(s, st, "removing a target")) != SONAR_OK)
            goto fail;
        changed += sqlite3_changes(s->db);
    }
    if ((rc = sonar__db_exec(s->db, "COMMIT")) != SONAR_OK)
        goto fail;
    if (changed == 0)
        rc = sonar__fail(SONAR_ERR_NOT_FOUND, "no status stored for %s target %.200s",
                         service, target);
    goto out;
fail:
    rollback(s);
out:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* ---- samples ---- */

/* Canonical JSON of a label set (keys sorted, compact); new string. */
static sonar_status labels_json(const sonar_statusstore_sample_in *in, size_t idx, char **out)
{
    json_t *obj = json_object();
    if (obj == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    sonar_status rc = SONAR_OK;
    for (size_t i = 0; i < in->n_labels && rc == SONAR_OK; i++) {
        const sonar_promtext_label *l = &in->labels[i];
        json_t *v = l->value != NULL ? json_string(l->value) : NULL;
        if (!sonar_promtext_label_name_valid(l->name))
            rc = sonar__fail(SONAR_ERR_INVALID, "sample %zu (%s): invalid label name \"%.64s\"",
                             idx, in->name, l->name != NULL ? l->name : "(null)");
        else if (v == NULL)
            rc = sonar__fail(SONAR_ERR_INVALID,
                             "sample %zu (%s): value of label %s is missing or not UTF-8", idx,
                             in->name, l->name);
        else if (json_object_get(obj, l->name) != NULL)
            rc = sonar__fail(SONAR_ERR_INVALID, "sample %zu (%s): duplicate label name %s",
                             idx, in->name, l->name);
        if (rc == SONAR_OK)
            json_object_set_new(obj, l->name, v);
        else
            json_decref(v);
    }
    if (rc == SONAR_OK) {
        *out = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
        if (*out == NULL)
            rc = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    json_decref(obj);
    return rc;
}

/* Validates every sample and computes its labels JSON (array of new strings). */
static sonar_status prepare_samples(const sonar_statusstore_sample_in *in, size_t n,
                                    char ***out)
{
    char **json = calloc(n ? n : 1, sizeof *json);
    if (json == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    sonar_status rc = SONAR_OK;
    for (size_t i = 0; i < n && rc == SONAR_OK; i++) {
        if (sonar_name_check("service name", in[i].service) != SONAR_OK) {
            char why[256]; /* copied: the error text is the buffer sonar__fail writes */
            snprintf(why, sizeof why, "%s", sonar_last_error());
            rc = sonar__fail(SONAR_ERR_INVALID, "sample %zu: %s", i, why);
        } else if (!sonar_promtext_name_valid(in[i].name))
            rc = sonar__fail(SONAR_ERR_INVALID, "sample %zu: invalid metric name \"%.64s\"", i,
                             in[i].name != NULL ? in[i].name : "(null)");
        else if (in[i].n_labels > 0 && in[i].labels == NULL)
            rc = sonar__fail(SONAR_ERR_INVALID, "sample %zu: labels missing", i);
        else
            rc = labels_json(&in[i], i, &json[i]);
    }
    if (rc != SONAR_OK) {
        for (size_t i = 0; i < n; i++)
            free(json[i]);
        free(json);
        return rc;
    }
    *out = json;
    return SONAR_OK;
}

/* Inserts validated samples in one transaction; the lock is held by the caller. */
/* Id of the series (service, name, labels), created when new. Looking up
 * first keeps the common case (a known series) free of writes. */
static sonar_status series_id(sonar_statusstore *s, sqlite3_stmt *find, sqlite3_stmt *add,
                              const sonar_statusstore_sample_in *in, const char *json,
                              int64_t *out)
{
    sqlite3_stmt *steps[2] = {find, add};
    for (int k = 0; k < 2; k++) {
        sqlite3_stmt *st = steps[k];
        sqlite3_bind_text(st, 1, in->service, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, in->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, json, -1, SQLITE_STATIC);
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW)
            *out = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        if (step == SQLITE_ROW)
            return SONAR_OK;
        if (step != SQLITE_DONE)
            break;
    }
    return sonar__db_fail(s->db, "storing a series");
}

/* Inserts validated samples in one transaction; the lock is held by the caller. */
/* Stores samples inside the caller's transaction. */
static sonar_status write_samples(sonar_statusstore *s, const sonar_statusstore_sample_in *in,
                                  char **json, size_t n)
{
    sqlite3_stmt *find = NULL, *add = NULL, *sample = NULL;
    sonar_status rc;
    if ((rc = sonar__db_prepare(s->db,
                                "SELECT id FROM series WHERE service = ? AND name = ? "
                                "AND labels = ?", &find)) != SONAR_OK ||
        (rc = sonar__db_prepare(s->db,
                                "INSERT INTO series (service, name, labels) VALUES (?,?,?) "
                                "RETURNING id", &add)) != SONAR_OK ||
        (rc = sonar__db_prepare(s->db,
                                "INSERT INTO samples (series_id, at_ms, value) VALUES (?,?,?)",
                                &sample)) != SONAR_OK)
        goto done;
    for (size_t i = 0; i < n && rc == SONAR_OK; i++) {
        int64_t id = 0;
        if ((rc = series_id(s, find, add, &in[i], json[i], &id)) != SONAR_OK)
            break;
        sqlite3_bind_int64(sample, 1, id);
        sqlite3_bind_int64(sample, 2, in[i].at_ms);
        if (isnan(in[i].value))
            sqlite3_bind_null(sample, 3);
        else
            sqlite3_bind_double(sample, 3, in[i].value);
        if (sqlite3_step(sample) != SQLITE_DONE)
            rc = sonar__db_fail(s->db, "storing a sample");
        sqlite3_reset(sample);
    }
done:
    sqlite3_finalize(find);
    sqlite3_finalize(add);
    sqlite3_finalize(sample);
    return rc;
}

/* Samples in a transaction of their own. */
static sonar_status insert_samples(sonar_statusstore *s, const sonar_statusstore_sample_in *in,
                                   char **json, size_t n)
{
    sonar_status rc = sonar__db_exec(s->db, "BEGIN IMMEDIATE");
    if (rc != SONAR_OK)
        return rc;
    rc = write_samples(s, in, json, n);
    if (rc == SONAR_OK)
        rc = sonar__db_exec(s->db, "COMMIT");
    if (rc != SONAR_OK)
        rollback(s);
    return rc;
}

sonar_status sonar_statusstore_add_samples(sonar_statusstore *s,
                                           const sonar_statusstore_sample_in *samples,
                                           size_t n)
{
    if (s == NULL || (samples == NULL && n > 0))
        return sonar__fail(SONAR_ERR_INVALID, "sonar_statusstore_add_samples: missing argument");
    char **json = NULL;
    sonar_status rc = prepare_samples(samples, n, &json);
    if (rc != SONAR_OK)
        return rc;
    pthread_mutex_lock(&s->lock);
    rc = insert_samples(s, samples, json, n);
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < n; i++)
        free(json[i]);
    free(json);
    return rc;
}

sonar_status sonar_statusstore_add_promtext(sonar_statusstore *s, const char *service,
                                            int64_t at_ms, const sonar_promtext *parsed,
                                            size_t *count)
{
    if (s == NULL || parsed == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_statusstore_add_promtext: missing argument");
    sonar_status rc = sonar_name_check("service name", service);
    if (rc != SONAR_OK)
        return rc;
    size_t n = sonar_promtext_sample_count(parsed), k = 0;
    sonar_statusstore_sample_in *in = calloc(n ? n : 1, sizeof *in);
    if (in == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    for (size_t f = 0; f < sonar_promtext_family_count(parsed); f++) {
        const sonar_promtext_family *fam = sonar_promtext_family_at(parsed, f);
        for (size_t i = 0; i < fam->n_samples; i++) {
            const sonar_promtext_sample *ps = &fam->samples[i];
            in[k++] = (sonar_statusstore_sample_in){
                .service = service, .name = ps->name, .labels = ps->labels,
                .n_labels = ps->n_labels, .value = ps->value,
                .at_ms = ps->has_timestamp ? ps->timestamp_ms : at_ms};
        }
    }
    rc = sonar_statusstore_add_samples(s, in, k);
    free(in);
    if (rc == SONAR_OK && count != NULL)
        *count = k;
    return rc;
}

/* Row: service, name, labels, value (NULL = NaN), at_ms. */
static const int sample_cols[3] = {0, 1, 2};

static void fill_sample(sqlite3_stmt *st, char **strs, void *item)
{
    *(sonar_statusstore_sample *)item = (sonar_statusstore_sample){
        .service = strs[0], .name = strs[1], .labels_json = strs[2],
        .value = sqlite3_column_type(st, 3) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 3),
        .at_ms = sqlite3_column_int64(st, 4)};
}

sonar_status sonar_statusstore_query_samples(sonar_statusstore *s,
                                             const sonar_statusstore_sample_query *q,
                                             sonar_statusstore_samples *out)
{
    if (s == NULL || q == NULL || out == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_statusstore_query_samples: missing argument");
    if (q->name != NULL && !sonar_promtext_name_valid(q->name))
        return sonar__fail(SONAR_ERR_INVALID, "invalid metric name \"%.64s\"", q->name);
    if (q->service != NULL && sonar_name_check("service name", q->service) != SONAR_OK)
        return SONAR_ERR_INVALID;
    int64_t from = q->from_ms, to = q->to_ms != 0 ? q->to_ms : INT64_MAX;
    if (from > to)
        return sonar__fail(SONAR_ERR_INVALID, "time range from %lld is after to %lld",
                           (long long)from, (long long)to);
    if (q->limit > SONAR_STATUSSTORE_SAMPLES_MAX)
        return sonar__fail(SONAR_ERR_INVALID, "limit %zu is over %d", q->limit,
                           SONAR_STATUSSTORE_SAMPLES_MAX);
    size_t limit = q->limit != 0 ? q->limit : SONAR_STATUSSTORE_SAMPLES_DEFAULT;

    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st = NULL;
    sonar_statusstore_samples list = {0};
    /* Only the filters given appear in the SQL, so SQLite can use the
     * series(name, service) index instead of scanning every sample. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT r.service, r.name, r.labels, x.value, x.at_ms "
             "FROM series r JOIN samples x ON x.series_id = r.id "
             "WHERE x.at_ms >= ?3 AND x.at_ms <= ?4%s%s "
             "ORDER BY x.at_ms DESC, r.name, r.labels, r.service LIMIT ?5",
             q->name != NULL ? " AND r.name = ?1" : "",
             q->service != NULL ? " AND r.service = ?2" : "");
    sonar_status rc = sonar__db_prepare(s->db, sql, &st);
    if (rc != SONAR_OK)
        goto out;
    sqlite3_bind_text(st, 1, q->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, q->service, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, from);
    sqlite3_bind_int64(st, 4, to);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)limit);
    void *items;
    size_t n;
    rc = read_rows(s, st, sample_cols, sizeof(sonar_statusstore_sample), fill_sample, &items,
                   &n);
    list = (sonar_statusstore_samples){.items = items, .count = n};
out:
    pthread_mutex_unlock(&s->lock);
    if (rc != SONAR_OK) {
        sonar_statusstore_samples_finish(&list);
        return rc;
    }
    *out = list;
    return SONAR_OK;
}

void sonar_statusstore_samples_finish(sonar_statusstore_samples *list)
{
    if (list == NULL)
        return;
    free_rows(list->items, list->count, sizeof *list->items,
              offsetof(sonar_statusstore_sample, service));
    memset(list, 0, sizeof *list);
}

/* ---- retention ---- */

/* Runs `sql` (binding ?1 = before, ?2 = batch) until it deletes less than a
 * batch; each run is its own transaction and takes the lock only for itself. */
static sonar_status prune_table(sonar_statusstore *s, const char *sql, int64_t before,
                                size_t batch, uint64_t *deleted, uint64_t *batches)
{
    for (;;) {
        pthread_mutex_lock(&s->lock);
        sqlite3_stmt *st = NULL;
        sonar_status rc = sonar__db_prepare(s->db, sql, &st);
        if (rc == SONAR_OK) {
            sqlite3_bind_int64(st, 1, before);
            sqlite3_bind_int64(st, 2, (sqlite3_int64)batch);
            rc = run_done(s, st, "pruning");
        }
        int n = rc == SONAR_OK ? sqlite3_changes(s->db) : 0;
        pthread_mutex_unlock(&s->lock);
        if (rc != SONAR_OK)
            return rc;
        *deleted += (uint64_t)n;
        (*batches)++;
        if ((size_t)n < batch)
            return SONAR_OK;
    }
}

sonar_status sonar_statusstore_prune(sonar_statusstore *s, int64_t before_ms, size_t batch,
                                     sonar_statusstore_pruned *out)
{
    if (s == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "status store is missing");
    if (batch == 0)
        batch = SONAR_STATUSSTORE_PRUNE_BATCH;
    sonar_statusstore_pruned p = {0};
    sonar_status rc = prune_table(
        s, "DELETE FROM checks WHERE id IN "
           "(SELECT id FROM checks WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
        before_ms, batch, &p.checks, &p.batches);
    if (rc == SONAR_OK)
        rc = prune_table(s, "DELETE FROM samples WHERE rowid IN "
                            "(SELECT rowid FROM samples WHERE at_ms < ?1 ORDER BY at_ms "
                            "LIMIT ?2)",
                         before_ms, batch, &p.samples, &p.batches);
    if (rc == SONAR_OK)
        rc = prune_table(s, "DELETE FROM series WHERE id IN (SELECT id FROM series r WHERE "
                            "NOT EXISTS (SELECT 1 FROM samples x "
                            "WHERE x.series_id = r.id) LIMIT ?2)",
                         before_ms, batch, &p.series, &p.batches);
    if (rc == SONAR_OK && out != NULL)
        *out = p;
    return rc;
}
