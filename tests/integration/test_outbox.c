/*
 * Outbox against a real nats-server (JetStream, file storage) and SQLite
 * files in temp dirs: crash and outage survival, rollback, poison rows,
 * operator repair, idle cost.
 */
#include <criterion/criterion.h>
#include <sys/resource.h>
#include <errno.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "natsd.h"
#include "outbox_util.h"
#include "proc.h"
#include "sonar/sonar.h"

static test_natsd natsd;
static char dir[256], db_path[300];
static natsConnection *nc;
static sonar_bus *bus; /* the outbox relays' settings */

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd), "nats-server did not start");
    cr_assert(test_mkdtemp(dir, sizeof dir, "outbox"));
    snprintf(db_path, sizeof db_path, "%s/service.db", dir);
    nc = tu_connect(natsd.url);
    cr_assert_not_null(nc);
    bus = tu_bus(natsd.url);
    cr_assert_not_null(bus);
}

static void teardown(void)
{
    natsConnection_Destroy(nc);
    nc = NULL;
    sonar_bus_destroy(bus);
    bus = NULL;
    test_natsd_destroy(&natsd);
    test_rmtree(dir);
    nats_Close();
}

static void ensure_stream(const char *name, const char *subject)
{
    const char *subjects[] = {subject, NULL};
    sonar_stream_config sc = {.name = name, .subjects = subjects,
                              .duplicate_window_ms = 120000};
    cr_assert_eq(sonar_stream_ensure(nc, &sc), SONAR_OK, "%s", sonar_last_error());
}

static pid_t spawn_producer(long count, double rate)
{
    char cnt[32], r[32], log[320];
    snprintf(cnt, sizeof cnt, "%ld", count);
    snprintf(r, sizeof r, "%g", rate);
    snprintf(log, sizeof log, "%s/producer.log", dir);
    const char *bin = test_bin("SONAR_OUTBOX_PRODUCER_BIN");
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "--db", db_path, "--url", natsd.url, "--count", cnt, "--subjects", "4",
              "--per-tx", "3", "--rate", r, (char *)NULL);
        _exit(127);
    }
    cr_assert_gt(pid, 0);
    return pid;
}

static long committed(void)
{
    return (long)tu_db_int(db_path, "SELECT sum(next) FROM produced", 0);
}

/* Figures the last finished producer printed; asserts it reported no
 * per-subject order anomaly. */
static void producer_report(long *published, long *dups, long *retries)
{
    char log[320], line[256];
    snprintf(log, sizeof log, "%s/producer.log", dir);
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    long anomalies = -1;
    while (fgets(line, sizeof line, f))
        sscanf(line, "done published=%ld duplicates=%ld retries=%ld anomalies=%ld", published,
               dups, retries, &anomalies);
    fclose(f);
    cr_assert_eq(anomalies, 0, "producer reported order anomalies (or no report)");
    fprintf(stderr, "producer: published=%ld duplicates=%ld retries=%ld\n", *published, *dups,
            *retries);
}

static bool exited(pid_t pid, int *status)
{
    return waitpid(pid, status, WNOHANG) == pid;
}

/* The stream holds events "k:seq" of 4 subjects: each exactly once, per
 * subject in commit order 1..n_k, n_k summing to `total`. */
static void assert_stream_exact(long total)
{
    tu_msg *msgs = NULL;
    long n = tu_read_stream(nc, "EV", &msgs);
    cr_assert_eq(n, total, "stream holds %ld messages, %ld committed", n, total);
    long next[4] = {0};
    for (long i = 0; i < n; i++) {
        int k = -1;
        long seq = -1;
        cr_assert_eq(sscanf(msgs[i].data, "%d:%ld", &k, &seq), 2, "bad payload %s", msgs[i].data);
        cr_assert(k >= 0 && k < 4);
        char subj[32];
        snprintf(subj, sizeof subj, "ev.s%d", k);
        cr_assert_str_eq(msgs[i].subject, subj);
        cr_assert_eq(seq, next[k] + 1,
                     "subject %s: event %ld at stream seq %llu, expected %ld (lost, doubled or"
                     " out of order)",
                     subj, seq, (unsigned long long)msgs[i].seq, next[k] + 1);
        next[k] = seq;
        cr_assert_neq(msgs[i].msg_id[0], '\0', "message without Nats-Msg-Id");
    }
    cr_assert_eq(next[0] + next[1] + next[2] + next[3], total);
    free(msgs);
}

/* Restarts nats-server, waits for the producer to publish everything and
 * exit 0; returns the retries it reported (no order anomaly asserted). */
static long restart_and_finish(pid_t pid)
{
    int status = 0;
    cr_assert(test_natsd_restart(&natsd));
    cr_assert(TEST_WAIT_UNTIL(exited(pid, &status), 120000), "producer did not finish");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "producer failed (%d)", status);
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED, 10000));
    long pub = 0, dups = 0, retries = 0;
    producer_report(&pub, &dups, &retries);
    return retries;
}

TestSuite(outbox, .init = setup, .fini = teardown, .timeout = 240);

Test(outbox, producer_killed_mid_burst_publishes_each_committed_event_once_in_order)
{
    ensure_stream("EV", "ev.>");
    const long total = 6000;
    for (int round = 1; round <= 4; round++) {
        long target = committed() + 700;
        pid_t pid = spawn_producer(total, 3000);
        int status;
        bool reached = TEST_WAIT_UNTIL(committed() >= target || exited(pid, &status), 30000);
        cr_assert(reached, "producer made no progress in round %d", round);
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        cr_assert(committed() < total, "the burst finished before the kill in round %d", round);
    }
    pid_t pid = spawn_producer(total, 0);
    int status = 0;
    cr_assert(TEST_WAIT_UNTIL(exited(pid, &status), 120000), "final producer did not finish");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "final producer failed (%d)", status);
    cr_assert_eq(committed(), total);
    long pub = 0, dups = 0, retries = 0;
    producer_report(&pub, &dups, &retries);
    assert_stream_exact(total);
}

Test(outbox, nats_server_down_for_seconds_mid_burst_loses_and_doubles_nothing)
{
    ensure_stream("EV", "ev.>");
    const long total = 6000;
    pid_t pid = spawn_producer(total, 1500);
    int status = 0;
    cr_assert(TEST_WAIT_UNTIL(committed() >= 1500, 30000));
    test_natsd_stop(&natsd);
    int64_t down_at = test_now_ms();
    /* Producers keep committing while NATS is down; keep it down >= 3 s. */
    cr_assert(TEST_WAIT_UNTIL(committed() >= 3000 && test_now_ms() - down_at >= 3000, 30000));
    cr_assert(!exited(pid, &status), "producer gave up while NATS was down");
    restart_and_finish(pid);
    assert_stream_exact(total);
}

/* The kill lands while the relay publishes flat out: publishes race with
 * the moment the client notices the loss (what once broke per-subject order
 * through nats.c's reconnect buffer, see docs/outbox.md). */
Test(outbox, nats_server_sigkilled_while_the_relay_publishes_loses_doubles_and_reorders_nothing)
{
    ensure_stream("EV", "ev.>");
    const long total = 20000;
    pid_t pid = spawn_producer(total, 0); /* flat out: the relay's window is full */
    int status = 0;
    cr_assert(TEST_WAIT_UNTIL(committed() >= 5000 || exited(pid, &status), 30000));
    kill(natsd.pid, SIGKILL);
    int64_t down_at = test_now_ms();
    TEST_WAIT_UNTIL(test_now_ms() - down_at >= 1500, 3000);
    restart_and_finish(pid);
    assert_stream_exact(total);
}

/* nats-server frozen (SIGSTOP): the relay fills its window (256) with
 * publishes nobody answers; then killed and restarted. Every one of them is
 * retried, in order, and stored once. */
Test(outbox, nats_server_killed_with_a_full_window_unanswered_loses_and_doubles_nothing)
{
    ensure_stream("EV", "ev.>");
    const long total = 6000;
    pid_t pid = spawn_producer(total, 0);
    int status = 0;
    /* The relay is connected and publishing. */
    cr_assert(TEST_WAIT_UNTIL(tu_db_int(db_path,
                                        "SELECT CAST(value AS INTEGER) FROM sonar_outbox_meta"
                                        " WHERE key = 'published'",
                                        0) >= 500 ||
                                  exited(pid, &status),
                              30000));
    cr_assert(!exited(pid, &status), "the producer finished before the freeze");
    cr_assert(test_pid_freeze(natsd.pid, 10000), "nats-server did not stop");
    /* Rows pile up behind the full window: more pending than it holds. */
    bool piled = TEST_WAIT_UNTIL(
        tu_db_int(db_path, "SELECT count(*) FROM sonar_outbox WHERE subject <> ''", 0) >= 1000 ||
            exited(pid, &status),
        30000);
    /* And publishes are in flight: sent, unread by the frozen server (the
     * freeze may land while the relay settles a batch with nothing out). */
    bool sent = TEST_WAIT_UNTIL(test_natsd_unread_bytes(&natsd) >= 256, 30000);
    kill(natsd.pid, SIGKILL);
    cr_assert(piled, "pending rows did not pile up while nats-server was frozen");
    cr_assert(sent, "the relay sent nothing to the frozen nats-server");
    long retries = restart_and_finish(pid);
    cr_assert_geq(retries, 1, "no publish was in flight when nats-server died");
    assert_stream_exact(total);
}

static sqlite3 *migrated_db(void)
{
    sqlite3 *db = tu_db_open(db_path);
    cr_assert_not_null(db);
    cr_assert_eq(sonar_outbox_migrate(db), SONAR_OK, "%s", sonar_last_error());
    return db;
}

static void enqueue(sqlite3 *db, const char *subject, const char *data, size_t len, int64_t *id)
{
    cr_assert_eq(sonar_outbox_enqueue(id, db, subject, data, len, NULL), SONAR_OK, "%s",
                 sonar_last_error());
}

static sonar_outbox_stats stats_of(sonar_outbox *ob)
{
    sonar_outbox_stats st;
    sonar_outbox_stats_get(ob, &st);
    return st;
}

Test(outbox, rolled_back_transaction_publishes_nothing)
{
    ensure_stream("EV", "ev.>");
    sqlite3 *db = migrated_db();
    sonar_outbox *ob = NULL;
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, NULL), SONAR_OK, "%s", sonar_last_error());
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    enqueue(db, "ev.rolled", "never", 5, NULL);
    enqueue(db, "ev.rolled", "never2", 6, NULL);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sonar_outbox_notify(ob);
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    enqueue(db, "ev.kept", "kept", 4, NULL);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sonar_outbox_notify(ob);
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published >= 1, 10000));
    sonar_outbox_destroy(ob);
    tu_msg *msgs = NULL;
    long n = tu_read_stream(nc, "EV", &msgs);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(msgs[0].subject, "ev.kept");
    cr_assert_str_eq(msgs[0].data, "kept");
    free(msgs);
    sqlite3_close(db);
}

Test(outbox, writer_rolled_back_publishes_nothing_and_committed_rows_flow)
{
    ensure_stream("EV", "ev.>");
    sqlite3 *db = migrated_db();
    sonar_outbox *ob = NULL;
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, NULL), SONAR_OK, "%s", sonar_last_error());
    sonar_outbox_writer *w = NULL;
    cr_assert_eq(sonar_outbox_writer_create(&w, db), SONAR_OK, "%s", sonar_last_error());
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    cr_assert_eq(sonar_outbox_writer_enqueue(NULL, w, "ev.rolled", "never", 5, NULL), SONAR_OK);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sonar_outbox_notify(ob);
    const char *hdrs[] = {"X-Kind", "kept", NULL};
    for (int i = 0; i < 3; i++) {
        char data[24];
        snprintf(data, sizeof data, "k%d", i);
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        cr_assert_eq(sonar_outbox_writer_enqueue(NULL, w, "ev.kept", data, strlen(data), hdrs),
                     SONAR_OK, "%s", sonar_last_error());
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        sonar_outbox_notify(ob);
    }
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published >= 3, 10000));
    sonar_outbox_destroy(ob);
    tu_msg *msgs = NULL;
    long n = tu_read_stream(nc, "EV", &msgs);
    cr_assert_eq(n, 3, "the rolled-back event was published, or a committed one lost");
    for (long i = 0; i < n; i++) {
        char data[24];
        snprintf(data, sizeof data, "k%ld", i);
        cr_assert_str_eq(msgs[i].subject, "ev.kept");
        cr_assert_str_eq(msgs[i].data, data);
    }
    free(msgs);
    sonar_outbox_writer_destroy(w);
    cr_assert_eq(sqlite3_close(db), SQLITE_OK, "the writer kept the connection busy");
}

/* Message ids come from row ids; once the relay has deleted every row the
 * table is empty, and a new row must still get an id never used before,
 * else the server drops the new event as a duplicate of the old one. */
Test(outbox, the_relay_runs_at_the_configured_lower_priority_and_bad_values_are_refused)
{
    sqlite3 *db = migrated_db();
    sonar_outbox *ob = NULL;
    sonar_outbox_config bad = {.relay_nice = -1};
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, &bad), SONAR_ERR_INVALID);
    bad.relay_nice = 40;
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, &bad), SONAR_ERR_INVALID);
    cr_assert_null(ob);
    errno = 0;
    int mine = getpriority(PRIO_PROCESS, (id_t)gettid());
    int want = mine + 4 > 19 ? 19 : mine + 4;
    sonar_outbox_config cfg = {.relay_nice = 4};
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, &cfg), SONAR_OK, "%s", sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(test_thread_nice(0, "sonar-outbox") == want, 10000),
              "relay thread nice %d, want %d", test_thread_nice(0, "sonar-outbox"), want);
    cr_assert_eq(getpriority(PRIO_PROCESS, (id_t)gettid()), mine, "the caller's thread changed");
    sonar_outbox_destroy(ob);
    sqlite3_close(db);
}

Test(outbox, row_ids_stay_unique_after_the_relay_emptied_the_table)
{
    ensure_stream("EV", "ev.>");
    sqlite3 *db = migrated_db();
    sonar_outbox *ob = NULL;
    sonar_outbox_config cfg = {.retention_ms = 200}; /* also exercise prune of the sent table */
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, &cfg), SONAR_OK, "%s", sonar_last_error());
    int64_t ids[3] = {0};
    const char *data[3] = {"first", "second", "third"};
    for (int i = 0; i < 3; i++) {
        enqueue(db, "ev.u", data[i], strlen(data[i]), &ids[i]);
        sonar_outbox_notify(ob);
        cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published == i + 1, 10000));
        /* Published, deleted from the pending table, then pruned from the sent table. */
        cr_assert(TEST_WAIT_UNTIL(tu_db_int(db_path, "SELECT count(*) FROM sonar_outbox_sent",
                                            -1) == 0,
                                  10000));
        sonar_outbox_db_status ds;
        cr_assert_eq(sonar_outbox_db_status_read(&ds, db_path), SONAR_OK);
        cr_assert_eq(ds.pending, 0);
        if (i > 0)
            cr_assert_gt(ids[i], ids[i - 1], "row id %lld reused", (long long)ids[i]);
    }
    cr_assert_leq(tu_db_int(db_path, "SELECT count(*) FROM sonar_outbox", -1), 1,
                  "ceiling rows pile up");
    sonar_outbox_destroy(ob);
    tu_msg *msgs = NULL;
    long n = tu_read_stream(nc, "EV", &msgs);
    cr_assert_eq(n, 3, "an event was dropped as a duplicate");
    for (int i = 0; i < 3; i++)
        cr_assert_str_eq(msgs[i].data, data[i]);
    cr_assert_str_neq(msgs[0].msg_id, msgs[1].msg_id);
    cr_assert_str_neq(msgs[1].msg_id, msgs[2].msg_id);
    free(msgs);
    sqlite3_close(db);
}

Test(outbox, poison_rows_go_to_dead_letter_without_stalling_other_subjects_and_can_be_repaired)
{
    ensure_stream("EV", "ev.>");
    sqlite3 *db = migrated_db();
    int64_t big_id = 0, lost_id = 0;
    size_t big_len = 2 * 1024 * 1024; /* over the default 1 MB max_payload */
    char *big = calloc(1, big_len);
    enqueue(db, "ev.a", "a1", 2, NULL);
    enqueue(db, "nostream.x", "x1", 2, &lost_id);
    enqueue(db, "ev.a", big, big_len, &big_id);
    enqueue(db, "ev.a", "a3", 2, NULL);
    enqueue(db, "ev.b", "b1", 2, NULL);
    free(big);
    sonar_outbox *ob = NULL;
    sonar_outbox_config cfg = {.no_stream_grace_ms = 6000, .retry_min_ms = 50,
                               .retry_max_ms = 200};
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, &cfg), SONAR_OK, "%s", sonar_last_error());
    /* Good rows flow while the no-stream row is still in its grace period. */
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published == 3, 5000), "other subjects stalled");
    cr_assert_leq(stats_of(ob).dead, 1, "the no-stream row died before its grace period");
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).dead == 2, 15000));
    cr_assert_gt(stats_of(ob).retries, 0);

    sonar_outbox_dead_row *rows = NULL;
    size_t n = 0;
    cr_assert_eq(sonar_outbox_dead_list(&rows, &n, db_path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(n, 2);
    cr_assert_eq(rows[0].id, lost_id);
    cr_assert_str_eq(rows[0].subject, "nostream.x");
    cr_assert(strstr(rows[0].error, "no stream") != NULL, "error: %s", rows[0].error);
    cr_assert_eq(rows[1].id, big_id);
    cr_assert(strstr(rows[1].error, "max_payload") != NULL, "error: %s", rows[1].error);
    sonar_outbox_dead_rows_free(rows, n);

    tu_msg *msgs = NULL;
    long m = tu_read_stream(nc, "EV", &msgs);
    cr_assert_eq(m, 3);
    cr_assert_str_eq(msgs[0].data, "a1");
    cr_assert_str_eq(msgs[1].data, "a3"); /* the dead sibling leaves a gap, as documented */
    cr_assert_str_eq(msgs[2].data, "b1");
    free(msgs);

    /* Repair: create the missing stream, requeue the row; drop the big one. */
    ensure_stream("NOSTREAM", "nostream.>");
    cr_assert_eq(sonar_outbox_requeue(db_path, lost_id), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_outbox_requeue(db_path, lost_id), SONAR_ERR_NOT_FOUND);
    cr_assert_eq(sonar_outbox_drop(db_path, big_id), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_outbox_drop(db_path, big_id), SONAR_ERR_NOT_FOUND);
    sonar_outbox_notify(ob);
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published == 4, 10000));
    m = tu_read_stream(nc, "NOSTREAM", &msgs);
    cr_assert_eq(m, 1);
    cr_assert_str_eq(msgs[0].data, "x1");
    free(msgs);
    sonar_outbox_db_status ds;
    cr_assert_eq(sonar_outbox_db_status_read(&ds, db_path), SONAR_OK);
    cr_assert_eq(ds.dead, 0);
    cr_assert_eq(ds.pending, 0);
    cr_assert_eq(ds.published_total, 4);
    cr_assert_eq(ds.dead_total, 2);
    json_t *j = sonar_outbox_stats_json(ob);
    cr_assert_eq(json_integer_value(json_object_get(j, "published")), 4);
    cr_assert_eq(json_integer_value(json_object_get(j, "dead")), 2);
    json_decref(j);
    sonar_outbox_destroy(ob);
    sqlite3_close(db);
}

Test(outbox, retention_keeps_sent_rows_then_prunes_them)
{
    ensure_stream("EV", "ev.>");
    sqlite3 *db = migrated_db();
    for (int i = 0; i < 20; i++)
        enqueue(db, "ev.r", "r", 1, NULL);
    sonar_outbox *ob = NULL;
    sonar_outbox_config cfg = {.retention_ms = 1500};
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, &cfg), SONAR_OK, "%s", sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published == 20, 10000));
    sonar_outbox_db_status ds;
    cr_assert_eq(sonar_outbox_db_status_read(&ds, db_path), SONAR_OK);
    cr_assert_eq(ds.sent_retained, 20, "sent rows were not kept");
    cr_assert(TEST_WAIT_UNTIL(tu_db_int(db_path, "SELECT count(*) FROM sonar_outbox_sent", -1) == 0,
                              10000),
              "retained rows were not pruned");
    sonar_outbox_destroy(ob);
    sqlite3_close(db);
}

Test(outbox, idle_relay_makes_at_most_a_few_queries_per_second)
{
    sqlite3 *db = migrated_db();
    sonar_outbox *ob = NULL;
    cr_assert_eq(sonar_outbox_create(&ob, bus, db_path, NULL), SONAR_OK, "%s", sonar_last_error());
    int64_t t0 = test_now_ms();
    /* Let the idle back-off settle, then count over a 4 s window. */
    TEST_WAIT_UNTIL(test_now_ms() - t0 >= 2500, 5000);
    int64_t q0 = stats_of(ob).db_queries;
    int64_t w0 = test_now_ms();
    TEST_WAIT_UNTIL(test_now_ms() - w0 >= 4000, 6000);
    int64_t q1 = stats_of(ob).db_queries;
    double per_s = (double)(q1 - q0) * 1000.0 / (double)(test_now_ms() - w0);
    cr_assert_gt(q1, 0, "query counter never moved: the probe is broken");
    cr_assert_leq(per_s, 3.0, "idle relay ran %.1f queries/s", per_s);
    /* Still wakes at once for new work. */
    enqueue(db, "ev.late", "x", 1, NULL);
    ensure_stream("EV", "ev.>");
    sonar_outbox_notify(ob);
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published == 1, 10000));
    sonar_outbox_destroy(ob);
    sqlite3_close(db);
}

/* ---- stats in $SRV.STATS ------------------------------------------------ */

static json_t *outbox_stats_supplier(void *closure)
{
    return sonar_outbox_stats_json(closure);
}

static sonar_status events_endpoint(sonar_request *req, void *closure)
{
    (void)closure;
    return sonar_request_respond(req, "{}", 2);
}

Test(outbox, figures_appear_as_endpoint_data_in_srv_stats)
{
    ensure_stream("EV", "ev.>");
    sqlite3 *db = migrated_db();
    sonar_bus *svc_bus = NULL;
    sonar_bus_config bc = {.urls = natsd.url, .name = "orders"};
    cr_assert_eq(sonar_bus_connect(&svc_bus, &bc), SONAR_OK, "%s", sonar_last_error());
    sonar_outbox *ob = NULL;
    cr_assert_eq(sonar_outbox_create(&ob, svc_bus, db_path, NULL), SONAR_OK, "%s",
                 sonar_last_error());
    sonar_service_config sc = {.name = "orders", .version = "1.0.0", .instance = "o1"};
    sonar_service *svc = NULL;
    cr_assert_eq(sonar_service_create(&svc, svc_bus, &sc), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_service_add_endpoint(svc, "events", "orders.events", NULL,
                                            events_endpoint, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_set_endpoint_stats(svc, "events", outbox_stats_supplier, ob),
                 SONAR_OK);
    cr_assert_eq(sonar_service_start(svc), SONAR_OK, "%s", sonar_last_error());
    for (int i = 0; i < 3; i++)
        enqueue(db, "ev.orders", "o", 1, NULL);
    sonar_outbox_notify(ob);
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published == 3, 10000));

    natsMsg *reply = NULL;
    cr_assert_eq(natsConnection_RequestString(&reply, nc, "$SRV.STATS.orders.o1", "", 5000),
                 NATS_OK);
    json_t *stats = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0,
                               NULL);
    cr_assert_not_null(stats);
    json_t *eps = json_object_get(stats, "endpoints"), *ep;
    size_t i;
    json_t *data = NULL;
    json_array_foreach(eps, i, ep) {
        if (strcmp(json_string_value(json_object_get(ep, "name")), "events") == 0)
            data = json_object_get(ep, "data");
    }
    cr_assert_not_null(data, "no data on the events endpoint: %.*s",
                       natsMsg_GetDataLength(reply), natsMsg_GetData(reply));
    cr_assert_eq(json_integer_value(json_object_get(data, "published")), 3);
    cr_assert_eq(json_integer_value(json_object_get(data, "pending")), 0);
    cr_assert_eq(json_integer_value(json_object_get(data, "dead")), 0);
    cr_assert(json_is_true(json_object_get(data, "connected")));
    json_decref(stats);
    natsMsg_Destroy(reply);
    sonar_service_destroy(svc);
    sonar_outbox_destroy(ob);
    sonar_bus_destroy(svc_bus);
    sqlite3_close(db);
}

/* The relay's own connection carries the bus's credentials: on a server
 * that requires a user, events still flow (and a wrong password is a
 * warning, with the rows kept pending, not a crash). */
Test(outbox, the_relay_connects_with_the_bus_credentials)
{
    static const char *const auth[] = {"--user", "svc", "--pass", "s3cret", NULL};
    test_natsd authd; /* besides the suite's server, which needs no user */
    cr_assert(test_natsd_start_with(&authd, auth));
    sonar_bus *good = NULL, *bad = NULL;
    sonar_bus_config gc = {.urls = authd.url, .user = "svc", .password = "s3cret"};
    cr_assert_eq(sonar_bus_connect(&good, &gc), SONAR_OK, "%s", sonar_last_error());
    const char *subjects[] = {"ev.>", NULL};
    sonar_stream_config sc = {.name = "EV", .subjects = subjects};
    cr_assert_eq(sonar_stream_ensure(sonar_bus_nats(good), &sc), SONAR_OK, "%s",
                 sonar_last_error());
    sqlite3 *db = migrated_db();
    enqueue(db, "ev.auth", "one", 3, NULL);

    /* Wrong password: the bus itself connects lazily, the relay is refused. */
    sonar_bus_config bc = {.urls = authd.url, .user = "svc", .password = "wrong",
                           .retry_on_failed_connect = true};
    cr_assert_eq(sonar_bus_connect(&bad, &bc), SONAR_OK, "%s", sonar_last_error());
    sonar_outbox *ob = NULL;
    cr_assert_eq(sonar_outbox_create(&ob, bad, db_path, NULL), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).db_queries > 0, 5000));
    cr_assert_eq(stats_of(ob).published, 0);
    cr_assert_not(stats_of(ob).connected);
    sonar_outbox_destroy(ob);
    cr_assert_eq(tu_db_int(db_path, "SELECT count(*) FROM sonar_outbox WHERE subject <> ''", -1),
                 1, "the row stays pending");

    cr_assert_eq(sonar_outbox_create(&ob, good, db_path, NULL), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(stats_of(ob).published == 1, 10000), "not published");
    cr_assert(stats_of(ob).connected);
    sonar_outbox_destroy(ob);
    sqlite3_close(db);
    sonar_bus_destroy(bad);
    sonar_bus_destroy(good);
    test_natsd_destroy(&authd);
}
