/*
 * inbox_consumer: applies messages of stream EV (filter "ev.>") to the
 * table applied(msg_id, data) through a sonar inbox named "consumer", and
 * kills itself with SIGKILL right after the transaction of its N-th
 * message committed and before that message is acked.
 *
 *   inbox_consumer --db PATH --url URL --kill-after N
 *
 * Exits 3 if it was not killed within 60 s.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox_util.h"
#include "sonar/sonar.h"

static long kill_after;
static long commits;

static sonar_status apply(sqlite3 *db, const sonar_inbox_msg *m, void *closure)
{
    (void)closure;
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO applied(msg_id, data) VALUES (?1, ?2)", -1, &st, NULL);
    sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->data, (int)m->len, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SONAR_OK : SONAR_ERR_DB;
}

static void after_commit(const sonar_inbox_msg *m, void *closure)
{
    (void)m;
    (void)closure;
    if (++commits == kill_after)
        raise(SIGKILL); /* applied and committed, not acked */
}

int main(int argc, char **argv)
{
    const char *path = NULL, *url = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--db") == 0)
            path = argv[i + 1];
        else if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--kill-after") == 0)
            kill_after = atol(argv[i + 1]);
    }
    if (path == NULL || url == NULL || kill_after <= 0) {
        fprintf(stderr, "usage: inbox_consumer --db PATH --url URL --kill-after N\n");
        return 2;
    }
    sqlite3 *db = tu_db_open(path);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL;"
                     "CREATE TABLE IF NOT EXISTS applied(msg_id TEXT, data TEXT)",
                 NULL, NULL, NULL);
    sqlite3_close(db);
    natsConnection *nc = tu_connect(url);
    if (nc == NULL)
        return 1;
    sonar_inbox_config cfg = {.name = "consumer", .stream = "EV", .filter_subject = "ev.>",
                              .ack_wait_ms = 1000, .fetch_wait_ms = 200, .batch = 4,
                              .after_commit = after_commit};
    sonar_inbox *in = NULL;
    if (sonar_inbox_create(&in, nc, path, &cfg, apply, NULL) != SONAR_OK) {
        fprintf(stderr, "inbox_consumer: %s\n", sonar_last_error());
        return 1;
    }
    for (int i = 0; i < 60000 / 10; i++)
        poll(NULL, 0, 10);
    sonar_inbox_destroy(in);
    natsConnection_Destroy(nc);
    return 3;
}
