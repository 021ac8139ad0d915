/*
 * chillybin's shelf in SQLite (see stock.h).
 *
 * Schema migrations: the `migrations` array below is the schema's history.
 * Entry i takes the database from version i to version i+1; each runs in
 * its own transaction together with the bump of `schema_version`, so a
 * crash mid-way leaves the database at a known version. Never edit an
 * entry that has shipped: add a new one.
 */
#include "stock.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "sonar/log.h"

static const char *const migrations[] = {
    /* 1: the shelf itself. */
    "CREATE TABLE stock ("
    "  name     TEXT PRIMARY KEY,"
    "  quantity INTEGER NOT NULL CHECK (quantity >= 0))",
    /* 2: a ledger of every pick (negative) and restock (positive). */
    "CREATE TABLE ledger ("
    "  id     INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name   TEXT NOT NULL,"
    "  change INTEGER NOT NULL,"
    "  at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

/* What a fresh shelf holds. */
static const struct {
    const char *name;
    int quantity;
} seed[] = {
    { "bread", 40 }, { "cheese", 20 }, { "ham", 20 }, { "tomato", 20 }, { "vegemite", 20 },
};

struct stock {
    sqlite3 *db;
    pthread_mutex_t lock;
    int schema_version;
};

/* ---- Small SQLite helpers --------------------------------------------- */

static bool exec(stock *s, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &err) != SQLITE_OK) {
        sonar_log(SONAR_LOG_ERROR, "stock: %s: %s", sql, err != NULL ? err : "?");
        sqlite3_free(err);
        return false;
    }
    return true;
}

static sqlite3_stmt *prepare(stock *s, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        sonar_log(SONAR_LOG_ERROR, "stock: prepare %s: %s", sql, sqlite3_errmsg(s->db));
        return NULL;
    }
    return st;
}

/* Units of \p name into *out; false when there is no such ingredient or on error (*failed). */
static bool units_of(stock *s, const char *name, long long *out, bool *failed)
{
    sqlite3_stmt *st = prepare(s, "SELECT quantity FROM stock WHERE name = ?1");
    if (st == NULL) {
        *failed = true;
        return false;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    bool found = rc == SQLITE_ROW;
    if (found)
        *out = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE) {
        sonar_log(SONAR_LOG_ERROR, "stock: read %s: %s", name, sqlite3_errmsg(s->db));
        *failed = true;
    }
    sqlite3_finalize(st);
    return found;
}

/* Sets \p name to \p units (inserting it when new) and writes the ledger line. */
static bool write_units(stock *s, const char *name, long long units, long long change)
{
    sqlite3_stmt *up = prepare(s, "INSERT INTO stock(name, quantity) VALUES (?1, ?2) "
                                  "ON CONFLICT(name) DO UPDATE SET quantity = excluded.quantity");
    sqlite3_stmt *led = prepare(s, "INSERT INTO ledger(name, change) VALUES (?1, ?2)");
    bool ok = up != NULL && led != NULL;
    if (ok) {
        sqlite3_bind_text(up, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 2, units);
        sqlite3_bind_text(led, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(led, 2, change);
        ok = sqlite3_step(up) == SQLITE_DONE && sqlite3_step(led) == SQLITE_DONE;
        if (!ok)
            sonar_log(SONAR_LOG_ERROR, "stock: write %s: %s", name, sqlite3_errmsg(s->db));
    }
    sqlite3_finalize(up);
    sqlite3_finalize(led);
    return ok;
}

/* ---- Migrations and seed --------------------------------------------- */

static int read_version(stock *s)
{
    sqlite3_stmt *st = prepare(s, "SELECT version FROM schema_version");
    if (st == NULL)
        return -1;
    int v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    return v;
}

static bool migrate(stock *s)
{
    if (!exec(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"
                 "INSERT INTO schema_version(version) SELECT 0 "
                 "WHERE NOT EXISTS (SELECT 1 FROM schema_version)"))
        return false;
    int v = read_version(s);
    if (v < 0)
        return false;
    if (v > N_MIGRATIONS) {
        sonar_log(SONAR_LOG_ERROR,
                  "stock: the database is at schema version %d but this chillybin knows only "
                  "up to %d: refusing to run an older program on a newer database",
                  v, N_MIGRATIONS);
        return false;
    }
    for (; v < N_MIGRATIONS; v++) {
        char bump[64];
        snprintf(bump, sizeof bump, "UPDATE schema_version SET version = %d", v + 1);
        if (!exec(s, "BEGIN IMMEDIATE"))
            return false;
        if (!exec(s, migrations[v]) || !exec(s, bump)) {
            exec(s, "ROLLBACK");
            return false;
        }
        if (!exec(s, "COMMIT"))
            return false;
        sonar_log(SONAR_LOG_INFO, "stock: migrated the schema to version %d", v + 1);
    }
    s->schema_version = v;
    return true;
}

static bool seed_if_empty(stock *s)
{
    if (!exec(s, "BEGIN IMMEDIATE"))
        return false;
    sqlite3_stmt *st = prepare(s, "SELECT count(*) FROM stock");
    bool empty = st != NULL && sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 0;
    sqlite3_finalize(st);
    bool ok = st != NULL;
    for (size_t i = 0; ok && empty && i < sizeof seed / sizeof seed[0]; i++)
        ok = write_units(s, seed[i].name, seed[i].quantity, seed[i].quantity);
    if (!ok) {
        exec(s, "ROLLBACK");
        return false;
    }
    if (empty)
        sonar_log(SONAR_LOG_INFO, "stock: empty shelf seeded");
    return exec(s, "COMMIT");
}

/* ---- Public ------------------------------------------------------------- */

sonar_status stock_open(stock **out, const char *path)
{
    stock *s = calloc(1, sizeof *s);
    if (s == NULL)
        return SONAR_ERR_NOMEM;
    pthread_mutex_init(&s->lock, NULL);
    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        sonar_log(SONAR_LOG_ERROR, "stock: cannot open %s: %s", path,
                  s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        stock_close(s);
        return SONAR_ERR_DB;
    }
    sqlite3_busy_timeout(s->db, 5000);
    if (!exec(s, "PRAGMA journal_mode = WAL") || !exec(s, "PRAGMA synchronous = NORMAL") ||
        !migrate(s) || !seed_if_empty(s)) {
        stock_close(s);
        return SONAR_ERR_DB;
    }
    *out = s;
    return SONAR_OK;
}

void stock_close(stock *s)
{
    if (s == NULL)
        return;
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Applies \p delta to \p name within one transaction. */
static stock_result change(stock *s, const char *name, long long delta, bool create,
                           long long *remaining)
{
    pthread_mutex_lock(&s->lock);
    stock_result res = STOCK_FAILED;
    if (!exec(s, "BEGIN IMMEDIATE"))
        goto out;
    long long units = 0;
    bool failed = false;
    bool found = units_of(s, name, &units, &failed);
    if (failed)
        goto rollback;
    if (!found && !create) {
        res = STOCK_UNKNOWN;
        goto rollback;
    }
    if (units + delta < 0 || units + delta > STOCK_MAX_UNITS) {
        *remaining = units;
        res = STOCK_SHORT;
        goto rollback;
    }
    if (!write_units(s, name, units + delta, delta) || !exec(s, "COMMIT"))
        goto rollback;
    *remaining = units + delta;
    res = STOCK_OK;
    goto out;
rollback:
    exec(s, "ROLLBACK");
out:
    pthread_mutex_unlock(&s->lock);
    return res;
}

stock_result stock_pick(stock *s, const char *name, long long quantity, long long *remaining)
{
    return change(s, name, -quantity, false, remaining);
}

stock_result stock_restock(stock *s, const char *name, long long quantity, long long *remaining)
{
    return change(s, name, quantity, true, remaining);
}

json_t *stock_list(stock *s)
{
    pthread_mutex_lock(&s->lock);
    json_t *shelf = json_object();
    sqlite3_stmt *st = prepare(s, "SELECT name, quantity FROM stock ORDER BY name");
    int rc = SQLITE_ERROR;
    while (st != NULL && shelf != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_object_set_new(shelf, (const char *)sqlite3_column_text(st, 0),
                            json_integer(sqlite3_column_int64(st, 1)));
    }
    if (rc != SQLITE_DONE) {
        sonar_log(SONAR_LOG_ERROR, "stock: list: %s", sqlite3_errmsg(s->db));
        json_decref(shelf);
        shelf = NULL;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    return shelf;
}

int stock_schema_version(stock *s)
{
    return s->schema_version;
}

bool stock_healthy(stock *s)
{
    pthread_mutex_lock(&s->lock);
    bool ok = read_version(s) == s->schema_version;
    pthread_mutex_unlock(&s->lock);
    return ok;
}
