/*
 * outbox_producer: a service-like producer for the outbox crash tests.
 *
 *   outbox_producer --db PATH --url URL --count N [--subjects K] [--per-tx M] [--rate EPS]
 *
 * Commits N events in total (across restarts): each transaction updates
 * the domain table `produced(k, next)` and enqueues events "k:seq" on
 * subject "ev.s<k>" in one SQLite transaction, then notifies the relay.
 * It resumes from the committed state after a SIGKILL. Once all N are
 * committed it waits until the relay confirmed every row, prints "done"
 * and exits 0 (exit 1 on errors, 3 when not confirmed within 120 s).
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox_util.h"
#include "sonar/sonar.h"

static const char *arg(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

static int fail(const char *what)
{
    fprintf(stderr, "outbox_producer: %s: %s\n", what, sonar_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    const char *path = arg(argc, argv, "--db", NULL);
    const char *url = arg(argc, argv, "--url", NULL);
    long count = atol(arg(argc, argv, "--count", "0"));
    int subjects = atoi(arg(argc, argv, "--subjects", "4"));
    int per_tx = atoi(arg(argc, argv, "--per-tx", "1"));
    double rate = atof(arg(argc, argv, "--rate", "0"));
    if (path == NULL || url == NULL || count <= 0 || subjects <= 0 || per_tx <= 0) {
        fprintf(stderr, "usage: outbox_producer --db PATH --url URL --count N [--subjects K]"
                        " [--per-tx M] [--rate EPS]\n");
        return 2;
    }
    sqlite3 *db = tu_db_open(path);
    if (db == NULL)
        return 1;
    if (sonar_outbox_migrate(db) != SONAR_OK)
        return fail("migrate");
    sqlite3_exec(db, "PRAGMA synchronous=NORMAL;"
                     "CREATE TABLE IF NOT EXISTS produced(k INTEGER PRIMARY KEY, next INTEGER)",
                 NULL, NULL, NULL);
    long *next = calloc((size_t)subjects, sizeof *next);
    long total = 0;
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "SELECT k, next FROM produced", -1, &st, NULL);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int k = sqlite3_column_int(st, 0);
        if (k >= 0 && k < subjects) {
            next[k] = sqlite3_column_int64(st, 1);
            total += next[k];
        }
    }
    sqlite3_finalize(st);
    sqlite3_stmt *up = NULL;
    sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO produced(k, next) VALUES (?1, ?2)", -1, &up,
                       NULL);

    sonar_bus *bus = tu_bus(url);
    if (bus == NULL)
        return 1;
    sonar_outbox *ob = NULL;
    sonar_outbox_config cfg = {.retry_max_ms = 1000, .ack_timeout_ms = 2000, .max_in_flight = 256};
    if (sonar_outbox_create(&ob, bus, path, &cfg) != SONAR_OK)
        return fail("outbox create");

    int64_t t0 = sonar_now_ms();
    long produced_here = 0;
    while (total < count) {
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            continue;
        for (int m = 0; m < per_tx && total < count; m++) {
            int k = (int)(total % subjects);
            char subj[32], data[64];
            snprintf(subj, sizeof subj, "ev.s%d", k);
            int len = snprintf(data, sizeof data, "%d:%ld", k, next[k] + 1);
            if (sonar_outbox_enqueue(NULL, db, subj, data, (size_t)len, NULL) != SONAR_OK)
                return fail("enqueue");
            next[k]++;
            sqlite3_reset(up);
            sqlite3_bind_int(up, 1, k);
            sqlite3_bind_int64(up, 2, next[k]);
            if (sqlite3_step(up) != SQLITE_DONE) {
                fprintf(stderr, "outbox_producer: %s\n", sqlite3_errmsg(db));
                return 1;
            }
            total++;
            produced_here++;
        }
        if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            fprintf(stderr, "outbox_producer: commit: %s\n", sqlite3_errmsg(db));
            return 1;
        }
        sonar_outbox_notify(ob);
        /* Pacing (not synchronisation): stay at about `rate` events/s. */
        while (rate > 0 && (double)produced_here * 1000.0 / rate > (double)(sonar_now_ms() - t0))
            poll(NULL, 0, 1);
    }
    int64_t deadline = sonar_now_ms() + 120000;
    sonar_outbox_stats s;
    for (;;) {
        sonar_outbox_stats_get(ob, &s);
        int64_t left = tu_db_int(path, "SELECT count(*) FROM sonar_outbox WHERE subject <> ''", -1);
        if (left == 0)
            break;
        if (sonar_now_ms() > deadline) {
            fprintf(stderr, "outbox_producer: %" PRId64 " rows still pending\n", left);
            return 3;
        }
        poll(NULL, 0, 20);
    }
    printf("done published=%" PRId64 " duplicates=%" PRId64 " retries=%" PRId64
           " anomalies=%" PRId64 "\n",
           s.published, s.duplicates, s.retries, s.order_anomalies);
    sonar_outbox_destroy(ob);
    sqlite3_finalize(up);
    sqlite3_close(db);
    sonar_bus_destroy(bus);
    free(next);
    nats_Close();
    return 0;
}
