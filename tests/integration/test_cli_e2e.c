/*
 * The `sonar` CLI end to end: a real nats-server, the real sonard
 * (SONARD_BIN), real services built on libsonar (SONAR_FAKE_SERVICE_BIN,
 * from tests/integration/fake_service.c) and the real CLI (SONAR_CLI_BIN).
 */
#include <criterion/criterion.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "fake_service.h"
#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"

#define MAX_PIDS 16

static test_natsd natsd;
static natsConnection *nc;
static char dir[256];
static test_proc daemons[MAX_PIDS];
static int n_pids;
static test_proc proc;

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd), "nats-server did not start");
    cr_assert(test_mkdtemp(dir, sizeof dir, "cli-e2e"));
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
}

static void teardown(void)
{
    test_proc_finish(&proc);
    for (int i = 0; i < n_pids; i++) {
        test_proc_signal(&daemons[i], SIGCONT);
        test_proc_signal(&daemons[i], SIGTERM);
        test_proc_wait(&daemons[i], 10000);
        test_proc_finish(&daemons[i]);
    }
    n_pids = 0;
    natsConnection_Destroy(nc);
    nc = NULL;
    test_natsd_destroy(&natsd);
    test_rmtree(dir);
}

/* Starts a daemon with its output in files under dir; stopped by teardown. */
static pid_t spawn(const char *const argv[])
{
    cr_assert_lt(n_pids, MAX_PIDS);
    test_proc *p = &daemons[n_pids];
    cr_assert(test_proc_start(p, dir, argv, NULL), "cannot start %s", argv[0]);
    n_pids++;
    return p->pid;
}

/* The read API's answer (new), or NULL. */
static json_t *api(const char *subject, const char *body)
{
    natsMsg *reply = NULL;
    if (natsConnection_RequestString(&reply, nc, subject, body, 500) != NATS_OK)
        return NULL;
    json_t *v = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    return v;
}

static bool sonard_answers(void)
{
    json_t *v = api("sonar.api.services", "{}");
    json_decref(v);
    return v != NULL;
}

static void start_sonard(void)
{
    char db[400];
    snprintf(db, sizeof db, "%s/sonard.db", dir);
    const char *argv[] = {test_bin("SONARD_BIN"), "--server", natsd.url, "--db", db, NULL};
    spawn(argv);
    cr_assert(TEST_WAIT_UNTIL(sonard_answers(), 10000), "sonard does not answer");
}

/* A service named \p name; with \p dep it depends on it, with \p check
 * ("pass"/"fail") it runs one check "probe" on it saying \p message. */
static pid_t start_service(const char *name, const char *dep, const char *check,
                           const char *message)
{
    const char *argv[16];
    fake_service_argv(argv, natsd.url, name, dep, check, message, "500");
    return spawn(argv);
}

static bool is_live(const char *name)
{
    json_t *v = api("sonar.api.services", "{}");
    bool live = false;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(v, "services"), i, s) {
        const char *n = json_string_value(json_object_get(s, "service"));
        if (n && strcmp(n, name) == 0)
            live = json_is_true(json_object_get(s, "live"));
    }
    json_decref(v);
    return live;
}

static void wait_live(const char *name)
{
    cr_assert(TEST_WAIT_UNTIL(is_live(name), 10000), "%s never became live", name);
}

/* Runs `sonar <args...> --server <url>`; returns the exit code. */
static int cli(const char *const *args)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = test_bin("SONAR_CLI_BIN");
    for (; *args && n < 28; args++)
        argv[n++] = *args;
    argv[n++] = "--server";
    argv[n++] = natsd.url;
    argv[n] = NULL;
    test_proc_finish(&proc);
    return test_proc_run(&proc, dir, argv, NULL, 60000);
}

static const char *fail_msg = "GET /pick?name=cheese \xe2\x86\x92 404, expected 200";

Test(cli_e2e, announce_fail_then_report_history_services_graph, .init = setup,
     .fini = teardown, .timeout = 120)
{
    start_sonard();
    start_service("orders", "chillybin", "pass", "ok");
    start_service("menu", "chillybin", "fail", fail_msg);
    start_service("billing", NULL, NULL, NULL);
    wait_live("orders");
    wait_live("menu");
    wait_live("billing");

    const char *args[] = {"announce", "chillybin", "--address", "http://127.0.0.1:9",
                          "--version", "2.0.0", "--timeout", "60s", "--change-id", "e2e-fail",
                          NULL};
    int64_t t0 = test_now_ms();
    int rc = cli(args);
    cr_assert_eq(rc, 1, "exit %d\nstdout:\n%s\nstderr:\n%s", rc, proc.out, proc.err);
    /* A deadline far beyond any slow start-up: finishing well before it
     * shows the gather did not wait it out. */
    cr_assert_lt(test_now_ms() - t0, 30000, "everyone answered: no waiting out the deadline");
    const char *line = strstr(proc.out, "menu: fail");
    const char *table = strstr(proc.out, "SERVICE");
    cr_assert(line && table && line < table, "results first, then the table:\n%s", proc.out);
    cr_assert(strstr(table, fail_msg) != NULL, "failing message in the table:\n%s", proc.out);
    cr_assert(strstr(proc.out, "verdict: FAIL") != NULL);

    /* Announcing the same change id again is safe: the same report. */
    char *first_out = strdup(strstr(proc.out, "SERVICE"));
    rc = cli(args);
    cr_assert_eq(rc, 1, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    cr_assert(strstr(proc.out, first_out) != NULL, "re-announce shows the stored report:\n%s\n%s",
              first_out, proc.out);
    free(first_out);

    const char *report[] = {"report", "e2e-fail", NULL};
    cr_assert_eq(cli(report), 0, "%s", proc.err);
    cr_assert(strstr(proc.out, fail_msg) != NULL, "%s", proc.out);
    cr_assert(strstr(proc.out, "orders") && strstr(proc.out, "billing"), "%s", proc.out);

    const char *missing[] = {"report", "no-such-change", NULL};
    cr_assert_eq(cli(missing), 1, "%s", proc.err);

    const char *history[] = {"history", "chillybin", "--json", NULL};
    cr_assert_eq(cli(history), 0, "%s", proc.err);
    json_t *h = json_loads(proc.out, 0, NULL);
    cr_assert_not_null(h, "%s", proc.out);
    json_t *first = json_array_get(json_object_get(h, "reports"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(first, "change_id")), "e2e-fail");
    json_decref(h);

    const char *services[] = {"services", NULL};
    cr_assert_eq(cli(services), 0, "%s", proc.err);
    cr_assert(strstr(proc.out, "orders") && strstr(proc.out, "menu") &&
              strstr(proc.out, "billing"), "%s", proc.out);

    const char *graph[] = {"graph", NULL};
    cr_assert_eq(cli(graph), 0, "%s", proc.err);
    cr_assert(strncmp(proc.out, "digraph sonar {", 15) == 0, "%s", proc.out);
    cr_assert(strstr(proc.out, "\"orders\" -> \"chillybin\" [label=\"probe\"];") != NULL, "%s",
              proc.out);
    cr_assert(strstr(proc.out, "\"menu\" -> \"chillybin\"") != NULL, "%s", proc.out);
}

Test(cli_e2e, announce_pass_exits_0_and_json_parses, .init = setup, .fini = teardown,
     .timeout = 120)
{
    start_sonard();
    start_service("orders", "chillybin", "pass", "ok");
    start_service("billing", NULL, NULL, NULL);
    wait_live("orders");
    wait_live("billing");
    const char *args[] = {"announce", "chillybin", "--address", "http://127.0.0.1:9",
                          "--version", "2.0.0", "--json", NULL};
    int rc = cli(args);
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    json_t *v = json_loads(proc.out, 0, NULL);
    cr_assert_not_null(v, "%s", proc.out);
    cr_assert_str_eq(json_string_value(json_object_get(v, "verdict")), "pass");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(v, "counts"), "pass")), 1);
    json_decref(v);
}

Test(cli_e2e, frozen_dependent_makes_announce_incomplete_exit_2, .init = setup,
     .fini = teardown, .timeout = 120)
{
    start_sonard();
    start_service("orders", "chillybin", "pass", "ok");
    pid_t frozen = start_service("frozen", "chillybin", "pass", "ok");
    wait_live("orders");
    wait_live("frozen");
    cr_assert(test_pid_freeze(frozen, 10000), "the dependent did not stop");
    const char *args[] = {"announce", "chillybin", "--address", "http://127.0.0.1:9",
                          "--version", "2.0.0", "--timeout", "1s", NULL};
    int rc = cli(args);
    kill(frozen, SIGCONT);
    cr_assert_eq(rc, 2, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    char *row = strstr(proc.out, "\nfrozen");
    cr_assert_not_null(row, "%s", proc.out);
    cr_assert(strstr(row, "incomplete") != NULL, "%s", proc.out);
    cr_assert(strstr(proc.out, "verdict: INCOMPLETE") != NULL);
}

Test(cli_e2e, watch_json_sees_a_service_join, .init = setup, .fini = teardown, .timeout = 120)
{
    const char *argv[] = {test_bin("SONAR_CLI_BIN"), "watch", "--json", "--server", natsd.url,
                          NULL};
    cr_assert(test_proc_start(&proc, dir, argv, NULL));
    int64_t deadline = test_now_ms() + 10000;
    while (strstr(proc.err, "watching") == NULL && test_now_ms() < deadline)
        test_proc_pump(&proc, 100);
    cr_assert(strstr(proc.err, "watching") != NULL, "%s", proc.err);
    start_service("orders", "chillybin", "pass", "ok");
    cr_assert(test_proc_wait_output(&proc, "\"event\":\"register\"", 10000), "%s", proc.out);
    char *line = strstr(proc.out, "{\"time\"");
    cr_assert_not_null(line);
    char *end = strchr(line, '\n');
    cr_assert_not_null(end);
    json_t *v = json_loadb(line, (size_t)(end - line), 0, NULL);
    cr_assert_not_null(v, "%s", proc.out);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(v, "message"), "service")),
                     "orders");
    json_decref(v);
    test_proc_signal(&proc, SIGTERM);
    cr_assert(test_proc_wait(&proc, 10000), "watch did not stop: %s", proc.err);
    cr_assert_eq(test_proc_exit_code(&proc), 0, "%s", proc.err);
}

/* True once the events stream holds at least \p n messages. */
static bool stream_has_messages(jsCtx *js, uint64_t n)
{
    jsStreamInfo *si = NULL;
    if (js_GetStreamInfo(&si, js, SONAR_EVENTS_STREAM, NULL, NULL) != NATS_OK)
        return false;
    bool ok = si->State.Msgs >= n;
    jsStreamInfo_Destroy(si);
    return ok;
}

Test(cli_e2e, watch_since_replays_reports_from_the_stream, .init = setup, .fini = teardown,
     .timeout = 120)
{
    /* sonard stores each report and, in the same transaction, queues it in its
     * outbox; the relay publishes it into the SONAR_EVENTS stream. */
    start_sonard();
    start_service("orders", "chillybin", "pass", "ok");
    wait_live("orders");
    const char *first[] = {"announce", "chillybin", "--address", "http://x", "--version", "2.0.0",
                           "--change-id", "old-change", NULL};
    cr_assert_eq(cli(first), 0, "%s\n%s", proc.out, proc.err);

    /* The report reached the stream (it is replayable), through the outbox. */
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    cr_assert(TEST_WAIT_UNTIL(stream_has_messages(js, 1), 10000),
              "the report never reached the " SONAR_EVENTS_STREAM " stream");

    const char *argv[] = {test_bin("SONAR_CLI_BIN"), "watch", "chillybin", "--since", "1h",
                          "--server", natsd.url, NULL};
    test_proc_finish(&proc); /* the announce's output, before proc is reused */
    cr_assert(test_proc_start(&proc, dir, argv, NULL));
    cr_assert(test_proc_wait_output(&proc, "old-change", 10000), "%s\n%s", proc.out, proc.err);
    cr_assert(strstr(proc.out, "report   change old-change of chillybin 2.0.0: pass") != NULL,
              "%s", proc.out);
    cr_assert(strstr(proc.out, "[replayed]") != NULL, "%s", proc.out);

    /* A new report reaches watch through the stream and live: shown once. */
    const char *second[] = {test_bin("SONAR_CLI_BIN"), "announce", "chillybin", "--address",
                            "http://x", "--version", "2.0.1", "--change-id", "new-change",
                            "--server", natsd.url, NULL};
    test_proc announcer;
    int rc = test_proc_run(&announcer, dir, second, NULL, 60000);
    cr_assert_eq(rc, 0, "%s\n%s", announcer.out, announcer.err);
    test_proc_finish(&announcer);
    cr_assert(test_proc_wait_output(&proc, "new-change", 10000), "%s", proc.out);
    cr_assert(TEST_WAIT_UNTIL(stream_has_messages(js, 2), 10000));
    /* A sentinel on the same subject, published after: once it shows, any
     * duplicate of new-change would have shown too. */
    sonar_report_msg r = {.change_id = "sentinel", .service = "chillybin", .version = "1.0.0",
                          .address = "http://x", .verdict = SONAR_PASS,
                          .started_at = "2026-11-23T18:00:00.000Z", .duration_ms = 5};
    char *text = NULL;
    cr_assert_eq(sonar_report_encode(&r, &text), SONAR_OK);
    natsConnection_PublishString(nc, "sonar.report.chillybin", text);
    natsConnection_Flush(nc);
    free(text);
    cr_assert(test_proc_wait_output(&proc, "sentinel", 10000), "%s", proc.out);
    const char *once = strstr(proc.out, "report   change new-change");
    cr_assert_not_null(once, "%s", proc.out);
    cr_assert(strstr(once + 1, "report   change new-change") == NULL, "shown twice:\n%s",
              proc.out);
    test_proc_signal(&proc, SIGINT);
    cr_assert(test_proc_wait(&proc, 10000), "watch did not stop: %s", proc.err);
    cr_assert_eq(test_proc_exit_code(&proc), 0, "%s", proc.err);
    jsCtx_Destroy(js);
}
