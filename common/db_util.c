/* Small SQLite helpers shared by the outbox and the inbox. */
#include "db_internal.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

sonar_status sonar__db_fail(sqlite3 *db, const char *what)
{
    return sonar__fail(SONAR_ERR_DB, "%s: %s", what, db ? sqlite3_errmsg(db) : "no database");
}

sonar_status sonar__db_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        sonar_status s = sonar__fail(SONAR_ERR_DB, "%.60s: %s", sql, err ? err : "?");
        sqlite3_free(err);
        return s;
    }
    return SONAR_OK;
}

sonar_status sonar__db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK)
        return sonar__db_fail(db, sql);
    return SONAR_OK;
}

/* SQLite's default busy handler sleeps in growing steps (up to 100 ms),
 * which stalls a relay that competes with a busy producer for the write
 * lock of a WAL database (the lock is held for microseconds). Retry fast:
 * yield first, then 1 ms naps, for about 5 s in total. */
static int busy_retry(void *arg, int count)
{
    (void)arg;
    if (count > 5000)
        return 0;
    if (count < 50)
        sched_yield();
    else
        poll(NULL, 0, 1);
    return 1;
}

void sonar__db_fast_busy(sqlite3 *db)
{
    sqlite3_busy_handler(db, busy_retry, NULL);
}

sonar_status sonar__db_open_existing(sqlite3 **out, const char *path, bool read_only)
{
    struct stat st;
    if (path == NULL || *path == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "database path is empty");
    if (stat(path, &st) != 0)
        return sonar__fail(errno == ENOENT ? SONAR_ERR_NOT_FOUND : SONAR_ERR_IO,
                           "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return sonar__fail(SONAR_ERR_INVALID, "%s: not a regular file", path);
    sqlite3 *db = NULL;
    int flags = read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
    if (sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        sonar_status s = sonar__fail(SONAR_ERR_DB, "%s: %s", path,
                                     db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return s;
    }
    sonar__db_fast_busy(db);
    *out = db;
    return SONAR_OK;
}

sonar_status sonar__db_int(sqlite3 *db, const char *sql, const char *arg, int64_t def,
                           int64_t *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return sonar__db_fail(db, sql);
    if (arg)
        sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        sonar_status s = sonar__db_fail(db, sql);
        sqlite3_finalize(st);
        return s;
    }
    int64_t v = def;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    *out = v;
    return SONAR_OK;
}

sonar_status sonar__db_open_with_tables(sqlite3 **out, const char *path, bool read_only,
                                        const char *const *tables, const char *kind)
{
    sqlite3 *db = NULL;
    sonar_status s = sonar__db_open_existing(&db, path, read_only);
    if (s != SONAR_OK)
        return s;
    for (const char *const *t = tables; *t != NULL; t++) {
        if (!sonar__db_has_table(db, *t)) {
            /* A non-SQLite file fails here too ("file is not a database"). */
            s = sonar__fail(SONAR_ERR_INVALID, "%s: not an %s database", path, kind);
            sqlite3_close(db);
            return s;
        }
    }
    *out = db;
    return SONAR_OK;
}

sonar_status sonar__db_rows(sqlite3 *db, const char *sql, size_t elem_size,
                            sonar__db_row_fn fill, void **out, size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return sonar__db_fail(db, sql);
    char *items = NULL;
    size_t n = 0, cap = 0;
    sonar_status s = SONAR_OK;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t grown_cap = cap ? cap * 2 : 16;
            char *grown = realloc(items, grown_cap * elem_size);
            if (grown == NULL) {
                s = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
                break;
            }
            items = grown;
            cap = grown_cap;
        }
        void *elem = items + n * elem_size;
        memset(elem, 0, elem_size);
        n++;
        if (!fill(st, elem)) {
            s = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
            break;
        }
    }
    if (s == SONAR_OK && rc != SQLITE_DONE)
        s = sonar__db_fail(db, sql);
    sqlite3_finalize(st);
    *out = items;
    *out_n = n;
    return s;
}

void *sonar__db_blob_copy(sqlite3_stmt *st, int col, size_t *len)
{
    *len = (size_t)sqlite3_column_bytes(st, col);
    char *copy = malloc(*len + 1);
    if (copy == NULL)
        return NULL;
    if (*len)
        memcpy(copy, sqlite3_column_blob(st, col), *len);
    copy[*len] = '\0';
    return copy;
}

bool sonar__db_has_table(sqlite3 *db, const char *name)
{
    int64_t n = 0;
    if (sonar__db_int(db, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
                      name, 0, &n) != SONAR_OK)
        return false;
    return n > 0;
}
