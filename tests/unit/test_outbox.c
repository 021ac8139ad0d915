/* Outbox producer side and operator functions, SQLite only (no NATS). */
#include <criterion/criterion.h>

#include <stdio.h>
#include <string.h>

#include "natsd.h"
#include "sonar/sonar.h"

static char dir[256], path[300];
static sqlite3 *db;

static void setup(void)
{
    cr_assert(test_mkdtemp(dir, sizeof dir, "outbox-unit"));
    snprintf(path, sizeof path, "%s/app.db", dir);
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sonar_outbox_migrate(db), SONAR_OK, "%s", sonar_last_error());
}

static void teardown(void)
{
    sqlite3_close(db);
    test_rmtree(dir);
}

TestSuite(outbox, .init = setup, .fini = teardown);

static long long count(const char *sql)
{
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

Test(outbox, migrate_is_idempotent_keeps_the_outbox_id_and_enables_wal)
{
    sonar_outbox_db_status a, b;
    cr_assert_eq(sonar_outbox_db_status_read(&a, path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_outbox_migrate(db), SONAR_OK);
    cr_assert_eq(sonar_outbox_db_status_read(&b, path), SONAR_OK);
    cr_assert_str_eq(a.outbox_id, b.outbox_id);
    cr_assert_eq(strlen(a.outbox_id), 22);
    cr_assert_eq(a.schema_version, SONAR_OUTBOX_SCHEMA_VERSION);
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
}

Test(outbox, migrate_refuses_a_newer_schema_and_an_open_transaction)
{
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    cr_assert_eq(sonar_outbox_migrate(db), SONAR_ERR_STATE);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_exec(db, "UPDATE sonar_outbox_meta SET value='99' WHERE key='schema_version'", NULL,
                 NULL, NULL);
    cr_assert_eq(sonar_outbox_migrate(db), SONAR_ERR_DB);
    cr_assert(strstr(sonar_last_error(), "newer") != NULL, "%s", sonar_last_error());
}

Test(outbox, enqueue_commits_and_rolls_back_with_the_callers_transaction)
{
    int64_t id1 = 0, id2 = 0;
    sqlite3_exec(db, "CREATE TABLE orders(id INTEGER)", NULL, NULL, NULL);
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    sqlite3_exec(db, "INSERT INTO orders VALUES (1)", NULL, NULL, NULL);
    cr_assert_eq(sonar_outbox_enqueue(&id1, db, "orders.created", "{}", 2, NULL), SONAR_OK);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 0);
    const char *hdrs[] = {"Content-Type", "application/json", "X-Trace", "abc", NULL};
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    cr_assert_eq(sonar_outbox_enqueue(&id2, db, "orders.created", "{}", 2, hdrs), SONAR_OK,
                 "%s", sonar_last_error());
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 1);
    cr_assert_gt(id2, 0);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox WHERE headers LIKE '%X-Trace%'"), 1);
    sonar_outbox_db_status st;
    cr_assert_eq(sonar_outbox_db_status_read(&st, path), SONAR_OK);
    cr_assert_eq(st.pending, 1);
}

Test(outbox, row_ids_are_never_reused_after_delete)
{
    int64_t a = 0, b = 0;
    cr_assert_eq(sonar_outbox_enqueue(&a, db, "x.y", "1", 1, NULL), SONAR_OK);
    sqlite3_exec(db, "DELETE FROM sonar_outbox", NULL, NULL, NULL);
    cr_assert_eq(sonar_outbox_enqueue(&b, db, "x.y", "2", 1, NULL), SONAR_OK);
    cr_assert_gt(b, a, "a deleted id was reused: its message id would be de-duplicated");
}

Test(outbox, deleting_the_highest_row_leaves_one_ceiling_row_that_is_not_pending)
{
    int64_t id = 0, last = 0;
    for (int round = 0; round < 5; round++) {
        cr_assert_eq(sonar_outbox_enqueue(&id, db, "x.y", "1", 1, NULL), SONAR_OK);
        cr_assert_eq(sonar_outbox_enqueue(&id, db, "x.y", "2", 1, NULL), SONAR_OK);
        cr_assert_gt(id, last + 1, "row id %lld reused", (long long)id);
        last = id;
        /* Any delete order, also by hand: the highest id stays taken. */
        sqlite3_exec(db, "DELETE FROM sonar_outbox WHERE subject <> '' AND id = (SELECT max(id)"
                         " FROM sonar_outbox)", NULL, NULL, NULL);
        sqlite3_exec(db, "DELETE FROM sonar_outbox WHERE subject <> ''", NULL, NULL, NULL);
        cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 1, "not exactly one ceiling row");
        cr_assert_eq(count("SELECT max(id) FROM sonar_outbox WHERE subject = ''"), last);
    }
    /* Deleting the ceiling row itself puts it back. */
    sqlite3_exec(db, "DELETE FROM sonar_outbox", NULL, NULL, NULL);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox WHERE id = (SELECT max(id) FROM"
                       " sonar_outbox) AND subject = ''"), 1);
    sonar_outbox_db_status st;
    cr_assert_eq(sonar_outbox_db_status_read(&st, path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(st.pending, 0, "the ceiling row counts as pending");
    cr_assert_eq(st.oldest_pending_age_ms, 0);
    cr_assert_eq(sonar_outbox_enqueue(&id, db, "x.y", "3", 1, NULL), SONAR_OK);
    cr_assert_eq(id, last + 1);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 2);
    cr_assert_eq(sonar_outbox_db_status_read(&st, path), SONAR_OK);
    cr_assert_eq(st.pending, 1);
}

Test(outbox, writer_enqueues_like_enqueue_and_lets_the_connection_close)
{
    sonar_outbox_writer *w = NULL;
    cr_assert_eq(sonar_outbox_writer_create(NULL, db), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_outbox_writer_create(&w, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_outbox_writer_create(&w, db), SONAR_OK, "%s", sonar_last_error());
    int64_t a = 0, b = 0;
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    cr_assert_eq(sonar_outbox_writer_enqueue(&a, w, "w.rolled", "r", 1, NULL), SONAR_OK);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 0, "a rolled-back row stayed");
    const char *hdrs[] = {"X-Trace", "t1", NULL};
    for (int i = 0; i < 3; i++) {
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        cr_assert_eq(sonar_outbox_writer_enqueue(&b, w, "w.kept", "k", 1, hdrs), SONAR_OK, "%s",
                     sonar_last_error());
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox WHERE subject='w.kept' AND headers"
                       " LIKE '%X-Trace%'"), 3);
    cr_assert_eq(count("SELECT max(id) FROM sonar_outbox"), b);
    /* The same checks as sonar_outbox_enqueue(); a refusal leaves the writer usable. */
    cr_assert_eq(sonar_outbox_writer_enqueue(NULL, w, "a.*", "x", 1, NULL), SONAR_ERR_INVALID);
    const char *reserved[] = {"Nats-Msg-Id", "x", NULL};
    cr_assert_eq(sonar_outbox_writer_enqueue(NULL, w, "a.b", "x", 1, reserved), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_outbox_writer_enqueue(NULL, w, "a.b", NULL, 2, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_outbox_writer_enqueue(NULL, NULL, "a.b", "x", 1, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 3);
    cr_assert_eq(sonar_outbox_writer_enqueue(NULL, w, "a.b", NULL, 0, NULL), SONAR_OK);
    sonar_outbox_writer_destroy(w);
    sonar_outbox_writer_destroy(NULL);
    /* Destroyed before close: the connection closes cleanly. */
    cr_assert_eq(sqlite3_close(db), SQLITE_OK, "%s", sqlite3_errmsg(db));
    db = NULL;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
}

Test(outbox, writer_on_a_database_without_the_tables_fails_with_a_hint)
{
    sqlite3 *other = NULL;
    char p2[320];
    snprintf(p2, sizeof p2, "%s/plain-w.db", dir);
    cr_assert_eq(sqlite3_open(p2, &other), SQLITE_OK);
    sonar_outbox_writer *w = NULL;
    cr_assert_eq(sonar_outbox_writer_create(&w, other), SONAR_ERR_DB);
    cr_assert_null(w);
    cr_assert(strstr(sonar_last_error(), "migrate") != NULL, "%s", sonar_last_error());
    cr_assert_eq(sqlite3_close(other), SQLITE_OK);
}

Test(outbox, enqueue_refuses_bad_subjects_and_headers_with_a_reason)
{
    const char *bad[] = {"", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a\tb", "ä.b", NULL};
    for (int i = 0; bad[i]; i++) {
        cr_assert_eq(sonar_outbox_enqueue(NULL, db, bad[i], "x", 1, NULL), SONAR_ERR_INVALID,
                     "subject \"%s\" accepted", bad[i]);
        cr_assert(strstr(sonar_last_error(), "subject") != NULL);
    }
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, NULL, "x", 1, NULL), SONAR_ERR_INVALID);
    char longsubj[300];
    memset(longsubj, 'a', sizeof longsubj - 1);
    longsubj[sizeof longsubj - 1] = '\0';
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, longsubj, "x", 1, NULL), SONAR_ERR_INVALID);
    const char *reserved[] = {"nats-msg-id", "x", NULL};
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b", "x", 1, reserved), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "reserved") != NULL);
    const char *expected[] = {"Nats-Expected-Stream", "S", NULL};
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b", "x", 1, expected), SONAR_ERR_INVALID);
    const char *crlf[] = {"X", "a\r\nInjected: 1", NULL};
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b", "x", 1, crlf), SONAR_ERR_INVALID);
    const char *colon[] = {"X:Y", "v", NULL};
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b", "x", 1, colon), SONAR_ERR_INVALID);
    const char *novalue[] = {"X", NULL};
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b", "x", 1, novalue), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b", NULL, 3, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 0, "a refused event was stored");
    cr_assert_eq(sonar_outbox_enqueue(NULL, db, "a.b-c_d.$e", NULL, 0, NULL), SONAR_OK);
}

Test(outbox, enqueue_without_migrate_fails_with_a_hint)
{
    sqlite3 *other = NULL;
    char p2[320];
    snprintf(p2, sizeof p2, "%s/plain.db", dir);
    cr_assert_eq(sqlite3_open(p2, &other), SQLITE_OK);
    cr_assert_eq(sonar_outbox_enqueue(NULL, other, "a.b", "x", 1, NULL), SONAR_ERR_DB);
    cr_assert(strstr(sonar_last_error(), "migrate") != NULL, "%s", sonar_last_error());
    sqlite3_exec(other, "CREATE TABLE t(x)", NULL, NULL, NULL);
    sqlite3_close(other);
    sonar_outbox_db_status st;
    cr_assert_eq(sonar_outbox_db_status_read(&st, p2), SONAR_ERR_INVALID);
    char p3[320];
    snprintf(p3, sizeof p3, "%s/missing.db", dir);
    cr_assert_eq(sonar_outbox_db_status_read(&st, p3), SONAR_ERR_NOT_FOUND);
    cr_assert_eq(sonar_outbox_requeue(p3, 1), SONAR_ERR_NOT_FOUND);
}

static void insert_dead(long long id, const char *subject, const char *error)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO sonar_outbox_dead(id, subject, payload, headers, created_ms, attempts,"
             " error, dead_ms) VALUES (%lld, '%s', x'6869', NULL, 1, 3, '%s', 2)",
             id, subject, error);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
}

Test(outbox, dead_rows_are_listed_requeued_with_their_id_and_dropped)
{
    insert_dead(7, "a.b", "too large");
    insert_dead(9, "c.d", "no stream");
    sonar_outbox_dead_row *rows = NULL;
    size_t n = 0;
    cr_assert_eq(sonar_outbox_dead_list(&rows, &n, path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(n, 2);
    cr_assert_eq(rows[0].id, 7);
    cr_assert_str_eq(rows[0].subject, "a.b");
    cr_assert_str_eq(rows[0].error, "too large");
    cr_assert_eq(rows[0].payload_len, 2);
    cr_assert_eq(memcmp(rows[0].payload, "hi", 2), 0);
    cr_assert_eq(rows[0].attempts, 3);
    sonar_outbox_dead_rows_free(rows, n);

    cr_assert_eq(sonar_outbox_requeue(path, 7), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox WHERE id=7 AND attempts=0"), 1);
    cr_assert_eq(sonar_outbox_requeue(path, 7), SONAR_ERR_NOT_FOUND);
    cr_assert_eq(sonar_outbox_drop(path, 9), SONAR_OK);
    cr_assert_eq(sonar_outbox_drop(path, 9), SONAR_ERR_NOT_FOUND);
    cr_assert(strstr(sonar_last_error(), "9") != NULL);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox_dead"), 0);
}

Test(outbox, requeue_of_the_row_holding_the_highest_id_replaces_the_ceiling_row)
{
    int64_t id = 0;
    cr_assert_eq(sonar_outbox_enqueue(&id, db, "a.b", "x", 1, NULL), SONAR_OK);
    /* What the relay does with a refused row: copy to dead-letter, delete. */
    insert_dead((long long)id, "a.b", "no stream");
    sqlite3_exec(db, "DELETE FROM sonar_outbox WHERE id = (SELECT max(id) FROM sonar_outbox)",
                 NULL, NULL, NULL);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox WHERE subject = ''"), 1);
    cr_assert_eq(sonar_outbox_requeue(path, id), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox"), 1);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM sonar_outbox WHERE id=%lld AND subject='a.b'",
             (long long)id);
    cr_assert_eq(count(sql), 1, "the requeued row did not get its id back");
    int64_t next = 0;
    cr_assert_eq(sonar_outbox_enqueue(&next, db, "a.b", "y", 1, NULL), SONAR_OK);
    cr_assert_eq(next, id + 1);
}

static sqlite3 *open_fixture(const char *name, const char *sql)
{
    char p[320];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    sqlite3 *old = NULL;
    cr_assert_eq(sqlite3_open(p, &old), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(old, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(old));
    return old;
}

Test(outbox, migrate_upgrades_a_version_2_database_keeping_row_ids_and_the_sequence)
{
    /* The version 2 layout as released: AUTOINCREMENT, last id handed out 9. */
    const char *v2 =
        "CREATE TABLE sonar_outbox_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
        "INSERT INTO sonar_outbox_meta VALUES ('schema_version','2'),"
        " ('outbox_id','BBBBBBBBBBBBBBBBBBBBBB'), ('published','4'), ('retries','1'), ('dead','0');"
        "CREATE TABLE sonar_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL,"
        " payload BLOB NOT NULL, headers TEXT, created_ms INTEGER NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);"
        "CREATE TABLE sonar_outbox_sent (id INTEGER PRIMARY KEY, subject TEXT NOT NULL,"
        " payload BLOB NOT NULL, headers TEXT, created_ms INTEGER NOT NULL,"
        " sent_ms INTEGER NOT NULL, stream_seq INTEGER NOT NULL);"
        "CREATE INDEX sonar_outbox_sent_at ON sonar_outbox_sent(sent_ms);"
        "CREATE TABLE sonar_outbox_dead (id INTEGER PRIMARY KEY, subject TEXT NOT NULL,"
        " payload BLOB NOT NULL, headers TEXT, created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL,"
        " error TEXT NOT NULL, dead_ms INTEGER NOT NULL);"
        "INSERT INTO sonar_outbox(id, subject, payload, headers, created_ms, attempts, last_error)"
        " VALUES (5, 'a.b', 'five', '[[\"X\",\"y\"]]', 3, 2, 'timeout'), (6, 'a.c', 'six', NULL, 4, 0, NULL),"
        " (9, 'a.b', 'nine', NULL, 5, 0, NULL);"
        "DELETE FROM sonar_outbox WHERE id = 9;";
    sqlite3 *old = open_fixture("v2.db", v2);
    cr_assert_eq(sonar_outbox_migrate(old), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_outbox_migrate(old), SONAR_OK, "second migrate: %s", sonar_last_error());
    sqlite3 *keep = db;
    db = old;
    /* Pending rows keep their ids (hence their message ids) and every column. */
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox WHERE id=5 AND subject='a.b' AND"
                       " payload='five' AND headers LIKE '%\"X\"%' AND created_ms=3 AND"
                       " attempts=2 AND last_error='timeout'"), 1);
    cr_assert_eq(count("SELECT count(*) FROM sonar_outbox WHERE id=6 AND payload='six'"), 1);
    cr_assert_eq(count("SELECT count(*) FROM sqlite_master WHERE name='sonar_outbox' AND"
                       " sql LIKE '%AUTOINCREMENT%'"), 0);
    cr_assert_eq(count("SELECT count(*) FROM sqlite_sequence WHERE name='sonar_outbox'"), 0);
    int64_t id = 0;
    cr_assert_eq(sonar_outbox_enqueue(&id, old, "a.d", "ten", 3, NULL), SONAR_OK);
    cr_assert_eq(id, 10, "ids must continue above the last one handed out (9)");
    /* The ceiling row at 9 went away once a higher row existed and was deleted. */
    sqlite3_exec(old, "DELETE FROM sonar_outbox WHERE id=10", NULL, NULL, NULL);
    cr_assert_eq(count("SELECT group_concat(id) FROM sonar_outbox WHERE subject=''"), 10);
    db = keep;
    char p[320];
    snprintf(p, sizeof p, "%s/v2.db", dir);
    sqlite3_close(old);
    sonar_outbox_db_status st;
    cr_assert_eq(sonar_outbox_db_status_read(&st, p), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(st.schema_version, 3);
    cr_assert_str_eq(st.outbox_id, "BBBBBBBBBBBBBBBBBBBBBB");
    cr_assert_eq(st.pending, 2);
    cr_assert_eq(st.published_total, 4);
}

Test(outbox, relay_create_refuses_bad_config)
{
    sonar_outbox *ob = NULL;
    sonar_outbox_config cfg = {.max_in_flight = -1};
    /* The config is checked before anything touches the bus. */
    sonar_bus *fake = (sonar_bus *)(void *)&cfg;
    cr_assert_eq(sonar_outbox_create(&ob, fake, path, &cfg), SONAR_ERR_INVALID);
    sonar_outbox_config cfg2 = {.idle_min_ms = 500, .idle_max_ms = 100};
    cr_assert_eq(sonar_outbox_create(&ob, fake, path, &cfg2), SONAR_ERR_INVALID);
    cr_assert_null(ob);
    cr_assert_eq(sonar_outbox_create(&ob, NULL, path, NULL), SONAR_ERR_INVALID);
    sonar_outbox_destroy(NULL);
}

Test(outbox, migrate_upgrades_a_version_1_database_keeping_pending_and_sent_rows)
{
    char p1[320];
    snprintf(p1, sizeof p1, "%s/v1.db", dir);
    sqlite3 *old = NULL;
    cr_assert_eq(sqlite3_open(p1, &old), SQLITE_OK);
    /* The version 1 layout as released: sent rows stayed in sonar_outbox. */
    const char *v1 =
        "CREATE TABLE sonar_outbox_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
        "INSERT INTO sonar_outbox_meta VALUES ('schema_version','1'), ('outbox_id','AAAAAAAAAAAAAAAAAAAAAA'),"
        " ('published','1'), ('retries','0'), ('dead','0');"
        "CREATE TABLE sonar_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL,"
        " payload BLOB NOT NULL, headers TEXT, created_ms INTEGER NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, sent_ms INTEGER, stream_seq INTEGER);"
        "CREATE INDEX sonar_outbox_pending ON sonar_outbox(id) WHERE sent_ms IS NULL;"
        "CREATE INDEX sonar_outbox_sent ON sonar_outbox(sent_ms) WHERE sent_ms IS NOT NULL;"
        "CREATE TABLE sonar_outbox_dead (id INTEGER PRIMARY KEY, subject TEXT NOT NULL,"
        " payload BLOB NOT NULL, headers TEXT, created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL,"
        " error TEXT NOT NULL, dead_ms INTEGER NOT NULL);"
        "INSERT INTO sonar_outbox(subject, payload, created_ms, sent_ms, stream_seq)"
        " VALUES ('a.b', 'sent', 1, 2, 7);"
        "INSERT INTO sonar_outbox(subject, payload, created_ms) VALUES ('a.b', 'pending', 3);";
    cr_assert_eq(sqlite3_exec(old, v1, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(old));
    cr_assert_eq(sonar_outbox_migrate(old), SONAR_OK, "%s", sonar_last_error());
    int64_t id = 0;
    cr_assert_eq(sonar_outbox_enqueue(&id, old, "a.c", "new", 3, NULL), SONAR_OK);
    cr_assert_eq(id, 3, "ids continue after the upgrade");
    sqlite3_close(old);
    sonar_outbox_db_status st;
    cr_assert_eq(sonar_outbox_db_status_read(&st, p1), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(st.schema_version, SONAR_OUTBOX_SCHEMA_VERSION);
    cr_assert_str_eq(st.outbox_id, "AAAAAAAAAAAAAAAAAAAAAA");
    cr_assert_eq(st.pending, 2);
    cr_assert_eq(st.sent_retained, 1);
    cr_assert_eq(st.published_total, 1);
}
