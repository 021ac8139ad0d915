/* Inbox against a real nats-server: exactly-once apply across a crash
 * between commit and ack, retries, dead-letter, pruning, prompt stop. */
#include <criterion/criterion.h>

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
static jsCtx *js;

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd), "nats-server did not start");
    cr_assert(test_mkdtemp(dir, sizeof dir, "inbox"));
    snprintf(db_path, sizeof db_path, "%s/consumer.db", dir);
    nc = tu_connect(natsd.url);
    cr_assert_not_null(nc);
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    const char *subjects[] = {"ev.>", NULL};
    sonar_stream_config sc = {.name = "EV", .subjects = subjects};
    cr_assert_eq(sonar_stream_ensure(nc, &sc), SONAR_OK, "%s", sonar_last_error());
    sqlite3 *db = tu_db_open(db_path);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL;"
                     "CREATE TABLE applied(msg_id TEXT, data TEXT)", NULL, NULL, NULL);
    sqlite3_close(db);
}

static void teardown(void)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    test_natsd_destroy(&natsd);
    test_rmtree(dir);
    nats_Close();
}

TestSuite(inbox, .init = setup, .fini = teardown, .timeout = 120);

static void publish(const char *subject, const char *data, const char *msg_id)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    cr_assert_eq(js_Publish(NULL, js, subject, data, (int)strlen(data), &po, NULL), NATS_OK);
}

static void publish_n(int n)
{
    for (int i = 1; i <= n; i++) {
        char data[32], id[32];
        snprintf(data, sizeof data, "event-%d", i);
        snprintf(id, sizeof id, "id-%d", i);
        publish("ev.x", data, id);
    }
}

static long applied(const char *where)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM applied %s", where);
    return (long)tu_db_int(db_path, sql, -1);
}

static sonar_status apply(sqlite3 *db, const sonar_inbox_msg *m, void *closure)
{
    int *fail_left = closure;
    if (m->len >= 6 && memcmp(m->data, "poison", 6) == 0)
        return sonar_inbox_error(SONAR_ERR_INVALID, "cannot apply poison");
    if (fail_left && m->len >= 5 && memcmp(m->data, "flaky", 5) == 0 && *fail_left > 0) {
        (*fail_left)--;
        return SONAR_ERR_TIMEOUT;
    }
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO applied(msg_id, data) VALUES (?1, ?2)", -1, &st, NULL);
    sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->data, (int)m->len, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SONAR_OK : SONAR_ERR_DB;
}

static sonar_inbox_stats stats_of(sonar_inbox *in)
{
    sonar_inbox_stats st;
    sonar_inbox_stats_get(in, &st);
    return st;
}

static sonar_inbox_config base_config(void)
{
    sonar_inbox_config cfg = {.name = "consumer", .stream = "EV", .filter_subject = "ev.>",
                              .ack_wait_ms = 1000, .fetch_wait_ms = 200, .retry_min_ms = 50,
                              .retry_max_ms = 200, .max_deliveries = 3};
    return cfg;
}

Test(inbox, consumer_killed_between_commit_and_ack_applies_each_message_once)
{
    publish_n(40);
    const char *bin = test_bin("SONAR_INBOX_CONSUMER_BIN");
    pid_t pid = fork();
    if (pid == 0) {
        char log[320];
        snprintf(log, sizeof log, "%s/consumer.log", dir);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "--db", db_path, "--url", natsd.url, "--kill-after", "10", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    cr_assert(TEST_WAIT_UNTIL(waitpid(pid, &status, WNOHANG) == pid, 60000));
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "consumer was not killed after its 10th commit (status %d)", status);
    cr_assert_eq(applied(""), 10, "the 10th message was not committed before the kill");

    sonar_inbox_config cfg = base_config();
    sonar_inbox *in = NULL;
    cr_assert_eq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, NULL), SONAR_OK, "%s",
                 sonar_last_error());
    /* The unacked 10th message comes back after the ack wait and is skipped. */
    cr_assert(TEST_WAIT_UNTIL(applied("") >= 40 && stats_of(in).duplicates >= 1, 30000),
              "applied %ld, duplicates %lld", applied(""), (long long)stats_of(in).duplicates);
    sonar_inbox_destroy(in);
    cr_assert_eq(applied(""), 40);
    cr_assert_eq(tu_db_int(db_path, "SELECT count(DISTINCT data) FROM applied", -1), 40,
                 "a message was applied twice");
    cr_assert_eq(applied("WHERE msg_id='id-10'"), 1);
}

Test(inbox, failing_handler_is_retried_then_dead_lettered_without_blocking_others)
{
    publish("ev.a", "poison", "p1");
    publish("ev.a", "flaky", "f1");
    publish("ev.b", "fine", "g1");
    int fail_left = 2;
    sonar_inbox_config cfg = base_config();
    /* Redeliveries come from the inbox's NAKs only: a 1 s ack wait can
     * expire on a loaded machine (or under the sanitizers) and deliver p1
     * once more than it was handled. */
    cfg.ack_wait_ms = 30000;
    sonar_inbox *in = NULL;
    cr_assert_eq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, &fail_left), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(stats_of(in).dead == 1 && applied("") == 2, 20000));
    sonar_inbox_stats st = stats_of(in);
    cr_assert_eq(st.retries, 2 + 2, "poison retried twice before the 3rd delivery, flaky twice");
    cr_assert_eq(fail_left, 0);
    json_t *j = sonar_inbox_stats_json(in);
    cr_assert_eq(json_integer_value(json_object_get(j, "dead")), 1);
    json_decref(j);
    sonar_inbox_destroy(in);
    cr_assert_eq(applied("WHERE data='flaky'"), 1);
    long deliveries = tu_db_int(db_path,
                                "SELECT deliveries FROM sonar_inbox_dead WHERE msg_id='p1'", -1);
    cr_assert_eq(deliveries, 3, "p1 dead-lettered after %ld deliveries", deliveries);
    cr_assert_eq(tu_db_int(db_path,
                           "SELECT count(*) FROM sonar_inbox_dead WHERE msg_id='p1'"
                           " AND error LIKE '%cannot apply poison%'",
                           -1),
                 1);

    /* The operator functions (what `sonar inbox` shows and repairs). */
    sonar_inbox_db_status ds;
    cr_assert_eq(sonar_inbox_db_status_read(&ds, db_path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(ds.n, 1);
    cr_assert_str_eq(ds.consumers[0].name, cfg.name);
    cr_assert_eq(ds.consumers[0].dead, 1);
    cr_assert_eq(ds.consumers[0].recorded, 3, "two applied, one dead (kept to skip redeliveries)");
    cr_assert_gt(ds.consumers[0].last_applied_ms, 0);
    sonar_inbox_db_status_finish(&ds);
    sonar_inbox_dead_row *rows = NULL;
    size_t n = 0;
    cr_assert_eq(sonar_inbox_dead_list(&rows, &n, db_path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(n, 1);
    cr_assert_str_eq(rows[0].msg_id, "p1");
    cr_assert_str_eq(rows[0].subject, "ev.a");
    cr_assert_str_eq((const char *)rows[0].payload, "poison");
    cr_assert_eq(rows[0].deliveries, 3);
    cr_assert(strstr(rows[0].error, "cannot apply poison") != NULL, "%s", rows[0].error);
    int64_t id = rows[0].id;
    sonar_inbox_dead_rows_free(rows, n);
    cr_assert_eq(sonar_inbox_drop(db_path, id), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(sonar_inbox_drop(db_path, id), SONAR_ERR_NOT_FOUND);
    cr_assert_eq(sonar_inbox_dead_list(&rows, &n, db_path), SONAR_OK);
    cr_assert_eq(n, 0);
    sonar_inbox_dead_rows_free(rows, n);
}

/* ---- requeueing a dead letter ------------------------------------------- */

typedef struct requeue_case {
    const char *inbox; /* which inbox this handler belongs to */
    _Atomic bool broken; /* the cause: poison fails while set */
} requeue_case;

/* Records (inbox, id, data, X-Kind header) in `got`; poison fails while broken. */
static sonar_status apply_got(sqlite3 *db, const sonar_inbox_msg *m, void *closure)
{
    requeue_case *rc = closure;
    if (rc->broken && m->len >= 6 && memcmp(m->data, "poison", 6) == 0)
        return sonar_inbox_error(SONAR_ERR_INVALID, "cannot apply poison yet");
    const char *kind = NULL;
    natsMsgHeader_Get(m->msg, "X-Kind", &kind);
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO got(inbox, msg_id, data, kind) VALUES (?1, ?2, ?3, ?4)",
                       -1, &st, NULL);
    sqlite3_bind_text(st, 1, rc->inbox, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, m->data, (int)m->len, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, kind ? kind : "", -1, SQLITE_STATIC);
    int rc2 = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc2 == SQLITE_DONE ? SONAR_OK : SONAR_ERR_DB;
}

static long got(const char *where)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM got WHERE %s", where);
    return (long)tu_db_int(db_path, sql, -1);
}

/* Runs `sonar inbox requeue` for row id against the server at url; its
 * output (stdout and stderr) in out; the exit code. */
static int cli_requeue(int64_t id, char *out, size_t outlen, const char *url)
{
    char id_text[32];
    snprintf(id_text, sizeof id_text, "%lld", (long long)id);
    const char *argv[] = {test_bin("SONAR_CLI_BIN"), "inbox", "requeue", "--db", db_path,
                          id_text, "--server", url, NULL};
    test_proc p = {0};
    int rc = test_proc_run(&p, dir, argv, NULL, 30000);
    snprintf(out, outlen, "%s%s", p.out ? p.out : "", p.err ? p.err : "");
    test_proc_finish(&p);
    return rc;
}

/* Two inboxes on one stream: "a" gives up on two poison messages (one with
 * an id and a header, one without an id), "b" applies them. Once the cause
 * is fixed, requeueing (the function, then the CLI) makes "a" apply each
 * once, with its header, while "b" skips the copies by id; a requeue within
 * the stream's duplicate window is refused and loses nothing. */
Test(inbox, a_requeued_dead_letter_is_applied_by_its_inbox_and_skipped_by_the_others)
{
    sqlite3 *db = tu_db_open(db_path);
    sqlite3_exec(db, "CREATE TABLE got(inbox TEXT, msg_id TEXT, data TEXT, kind TEXT)", NULL,
                 NULL, NULL);
    sqlite3_close(db);
    const char *subjects[] = {"rq.>", NULL};
    sonar_stream_config sc = {.name = "RQ", .subjects = subjects};
    cr_assert_eq(sonar_stream_ensure(nc, &sc), SONAR_OK, "%s", sonar_last_error());
    natsMsg *m = NULL;
    cr_assert_eq(natsMsg_Create(&m, "rq.a", NULL, "poison-1", 8), NATS_OK);
    natsMsgHeader_Set(m, "Nats-Msg-Id", "r1");
    natsMsgHeader_Set(m, "X-Kind", "hot");
    cr_assert_eq(js_PublishMsg(NULL, js, m, NULL, NULL), NATS_OK);
    natsMsg_Destroy(m);
    cr_assert_eq(js_Publish(NULL, js, "rq.b", "poison-2", 8, NULL, NULL), NATS_OK); /* no id */

    requeue_case ca = {.inbox = "a", .broken = true}, cb = {.inbox = "b", .broken = false};
    sonar_inbox_config cfg = base_config();
    cfg.filter_subject = "rq.>";
    cfg.stream = "RQ";
    cfg.max_deliveries = 2;
    cfg.ack_wait_ms = 30000;
    sonar_inbox *a = NULL, *b = NULL;
    cfg.name = "a";
    cr_assert_eq(sonar_inbox_create(&a, nc, db_path, &cfg, apply_got, &ca), SONAR_OK, "%s",
                 sonar_last_error());
    cfg.name = "b";
    cr_assert_eq(sonar_inbox_create(&b, nc, db_path, &cfg, apply_got, &cb), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(stats_of(a).dead == 2 && got("inbox='b'") == 2, 20000));
    cr_assert_eq(got("inbox='a'"), 0);

    sonar_inbox_dead_row *rows = NULL;
    size_t n = 0;
    cr_assert_eq(sonar_inbox_dead_list(&rows, &n, db_path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(n, 2);
    cr_assert_str_eq(rows[0].msg_id, "r1");
    json_t *h = json_loads(rows[0].headers, 0, NULL);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(h, "X-Kind"), 0)), "hot",
                     "%s", rows[0].headers);
    cr_assert_null(json_object_get(h, "Nats-Msg-Id"), "the id is msg_id, not a header");
    json_decref(h);
    cr_assert_str_eq(rows[1].msg_id, "RQ:2", "no Nats-Msg-Id: stream:sequence");
    int64_t first = rows[0].id, second = rows[1].id;
    sonar_inbox_dead_rows_free(rows, n);

    /* Within the duplicate window (2 minutes) of r1's publish: refused, kept. */
    ca.broken = false; /* the cause is fixed */
    char *stream = NULL;
    uint64_t seq = 0;
    cr_assert_eq(sonar_inbox_requeue(nc, db_path, first, &stream, &seq), SONAR_ERR_STATE);
    cr_assert(strstr(sonar_last_error(), "duplicate window") != NULL, "%s", sonar_last_error());
    cr_assert_eq(tu_db_int(db_path, "SELECT count(*) FROM sonar_inbox_dead", -1), 2);
    cr_assert_eq(tu_db_int(db_path, "SELECT count(*) FROM sonar_inbox WHERE name='a'"
                                    " AND msg_id='r1'", -1), 1, "the id is handled again");
    char out[2048];
    cr_assert_eq(cli_requeue(first, out, sizeof out, natsd.url), 3, "%s", out);
    cr_assert(strstr(out, "duplicate window") != NULL, "%s", out);
    cr_assert_eq(cli_requeue(first, out, sizeof out, "nats://127.0.0.1:1"), 3, "%s", out);
    cr_assert(strstr(out, "cannot connect") != NULL, "%s", out);
    cr_assert_eq(tu_db_int(db_path, "SELECT count(*) FROM sonar_inbox_dead", -1), 2,
                 "a failed requeue loses nothing");

    /* Once the window is short enough to have passed, it goes through. */
    sc.duplicate_window_ms = 100;
    cr_assert_eq(sonar_stream_ensure(nc, &sc), SONAR_OK, "%s", sonar_last_error());
    sonar_status s = SONAR_ERR_STATE;
    cr_assert(TEST_WAIT_UNTIL((s = sonar_inbox_requeue(nc, db_path, first, &stream, &seq)) !=
                                  SONAR_ERR_STATE, 10000), "still refused: %s",
              sonar_last_error());
    cr_assert_eq(s, SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(stream, "RQ");
    cr_assert_eq(seq, 3);
    free(stream);
    cr_assert_eq(cli_requeue(second, out, sizeof out, natsd.url), 0, "%s", out);
    cr_assert(strstr(out, "stream RQ (sequence 4)") != NULL, "%s", out);

    cr_assert(TEST_WAIT_UNTIL(got("inbox='a'") == 2, 20000), "the requeued copies were not applied");
    cr_assert_eq(got("inbox='a' AND msg_id='r1' AND data='poison-1' AND kind='hot'"), 1);
    cr_assert_eq(got("inbox='a' AND msg_id='RQ:2' AND data='poison-2'"), 1);
    cr_assert(TEST_WAIT_UNTIL(stats_of(b).duplicates == 2, 20000), "b saw the copies");
    cr_assert_eq(got("inbox='b'"), 2, "b applied nothing twice");
    cr_assert_eq(tu_db_int(db_path, "SELECT count(*) FROM sonar_inbox_dead", -1), 0);
    cr_assert_eq(sonar_inbox_requeue(nc, db_path, first, NULL, NULL), SONAR_ERR_NOT_FOUND);
    sonar_inbox_destroy(a);
    sonar_inbox_destroy(b);
}

Test(inbox, recorded_ids_are_pruned_after_retention)
{
    publish_n(5);
    sonar_inbox_config cfg = base_config();
    cfg.retention_ms = 400;
    sonar_inbox *in = NULL;
    cr_assert_eq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, NULL), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(applied("") == 5, 10000));
    cr_assert(TEST_WAIT_UNTIL(tu_db_int(db_path, "SELECT count(*) FROM sonar_inbox", -1) == 0,
                              10000));
    sonar_inbox_destroy(in);
}

Test(inbox, idle_inbox_stops_within_its_fetch_wait)
{
    /* Relies on natsSubscription_Fetch honouring its timeout with no messages. */
    sonar_inbox_config cfg = base_config();
    cfg.fetch_wait_ms = 300;
    sonar_inbox *in = NULL;
    cr_assert_eq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, NULL), SONAR_OK, "%s",
                 sonar_last_error());
    int64_t t0 = test_now_ms();
    TEST_WAIT_UNTIL(test_now_ms() - t0 >= 700, 2000); /* several empty fetches */
    publish("ev.late", "late", "l1");
    cr_assert(TEST_WAIT_UNTIL(applied("") == 1, 5000), "a message after empty fetches was missed");
    int64_t t1 = test_now_ms();
    sonar_inbox_destroy(in);
    cr_assert_lt(test_now_ms() - t1, 3000, "destroy hung in Fetch");
}

Test(inbox, keeps_consuming_across_a_nats_server_restart)
{
    publish_n(20);
    sonar_inbox_config cfg = base_config();
    sonar_inbox *in = NULL;
    cr_assert_eq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, NULL), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert(TEST_WAIT_UNTIL(applied("") == 20, 10000));
    test_natsd_stop(&natsd);
    int64_t down_at = test_now_ms();
    TEST_WAIT_UNTIL(test_now_ms() - down_at >= 1000, 2000);
    cr_assert(test_natsd_restart(&natsd));
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED, 10000));
    for (int i = 21; i <= 40; i++) {
        char data[32], id[32];
        snprintf(data, sizeof data, "event-%d", i);
        snprintf(id, sizeof id, "id-%d", i);
        publish("ev.x", data, id);
    }
    cr_assert(TEST_WAIT_UNTIL(applied("") >= 40, 30000), "applied %ld after the restart",
              applied(""));
    sonar_inbox_destroy(in);
    cr_assert_eq(applied(""), 40);
    cr_assert_eq(tu_db_int(db_path, "SELECT count(DISTINCT data) FROM applied", -1), 40);
}

Test(inbox, create_refuses_bad_config)
{
    sonar_inbox *in = NULL;
    sonar_inbox_config cfg = base_config();
    cfg.name = "bad.name";
    cr_assert_eq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, NULL), SONAR_ERR_INVALID);
    cfg = base_config();
    cfg.stream = "NOPE";
    cr_assert_neq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, NULL), SONAR_OK);
    cr_assert(strstr(sonar_last_error(), "NOPE") != NULL, "%s", sonar_last_error());
    cfg = base_config();
    cfg.filter_subject = "";
    cr_assert_eq(sonar_inbox_create(&in, nc, db_path, &cfg, apply, NULL), SONAR_ERR_INVALID);
    cr_assert_null(in);
}
