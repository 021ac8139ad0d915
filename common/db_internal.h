/*
 * SQLite helpers shared by the outbox and the inbox (not installed).
 * Every failure is recorded with sonar__fail() and the SQLite detail.
 */
#ifndef SONAR_DB_INTERNAL_H
#define SONAR_DB_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "sonar/status.h"

/* Records "<what>: <sqlite message>" and returns SONAR_ERR_DB. */
sonar_status sonar__db_fail(sqlite3 *db, const char *what);

/* Runs SQL without results. */
sonar_status sonar__db_exec(sqlite3 *db, const char *sql);

/* Prepares one statement (persistent when it is reused). */
sonar_status sonar__db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out);

/* Installs a busy handler that retries quickly (yield, then 1 ms naps) for
 * about 5 s: the write lock of a WAL database is held only briefly. */
void sonar__db_fast_busy(sqlite3 *db);

/* Opens an existing database file (never creates it). read_only selects the
 * mode. Installs sonar__db_fast_busy(). SONAR_ERR_NOT_FOUND when the file does not
 * exist, SONAR_ERR_DB otherwise. */
sonar_status sonar__db_open_existing(sqlite3 **out, const char *path, bool read_only);

/* sonar__db_open_existing(), then refuses (SONAR_ERR_INVALID, "<path>: not
 * an <kind> database") a file lacking any of the NULL-terminated tables. */
sonar_status sonar__db_open_with_tables(sqlite3 **out, const char *path, bool read_only,
                                        const char *const *tables, const char *kind);

/* One integer from a single-row query with an optional text bind (?1); writes
 * def when there is no row or the value is NULL. */
sonar_status sonar__db_int(sqlite3 *db, const char *sql, const char *arg, int64_t def,
                           int64_t *out);

/* Copies the current row of st into elem (zeroed); false when out of memory. */
typedef bool (*sonar__db_row_fn)(sqlite3_stmt *st, void *elem);

/* Runs sql (no binds) and collects one element of elem_size per row, filled
 * by fill, into a new array. *out and *out_n are always set -- on failure to
 * what was filled so far, which the caller frees with its own row cleanup. */
sonar_status sonar__db_rows(sqlite3 *db, const char *sql, size_t elem_size,
                            sonar__db_row_fn fill, void **out, size_t *out_n);

/* A NUL-terminated copy (malloc) of blob column col of the current row;
 * its length (without the NUL) in *len. NULL when out of memory. */
void *sonar__db_blob_copy(sqlite3_stmt *st, int col, size_t *len);

/* True when table `name` exists. */
bool sonar__db_has_table(sqlite3 *db, const char *name);

#endif
