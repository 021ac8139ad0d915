/*
 * The `sonar` CLI as a user runs it: the real binary (SONAR_CLI_BIN) as a
 * child process against a real nats-server.
 *
 * Peers: where a test needs a coordinator whose answers it controls
 * exactly (each verdict, an error reply, a garbage result mid-gather), the
 * test process plays sonard's side of the protocol itself: it answers
 * sonar.change.<service> with a gather message, results and a report built
 * with libsonar's encoders, and answers the read API subjects. The tests
 * in test_cli_e2e.c run the real sonard and real services instead.
 */
#include <criterion/criterion.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"

static test_natsd natsd;
static natsConnection *nc;
static test_proc proc;
static char dir[256]; /* the CLI's captured output */

static void setup_dir(void)
{
    cr_assert(test_mkdtemp(dir, sizeof dir, "cli"));
}

static void teardown_dir(void)
{
    test_proc_finish(&proc);
    test_rmtree(dir);
}

static void setup(void)
{
    setup_dir();
    cr_assert(test_natsd_start(&natsd), "nats-server did not start");
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
}

static void teardown(void)
{
    teardown_dir();
    natsConnection_Destroy(nc);
    nc = NULL;
    test_natsd_destroy(&natsd);
}

/* Runs `sonar <args...> --server <url>` to completion; returns the exit code. */
static int cli(const char *server, const char *const *args)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = test_bin("SONAR_CLI_BIN");
    for (; *args && n < 28; args++)
        argv[n++] = *args;
    if (server) {
        argv[n++] = "--server";
        argv[n++] = server;
    }
    argv[n] = NULL;
    test_proc_finish(&proc);
    return test_proc_run(&proc, dir, argv, NULL, 30000);
}

/* stderr is exactly one line. */
static void assert_one_line_reason(void)
{
    cr_assert(proc.err_len > 0, "no reason on stderr");
    char *nl = strchr(proc.err, '\n');
    cr_assert(nl && nl[1] == '\0', "reason must be one line: '%s'", proc.err);
}

/* ---- A coordinator whose answers the test scripts ------------------------ */

typedef struct scripted_entry {
    const char *service;
    sonar_outcome status;     /* PASS, FAIL, NONE: it answers; INCOMPLETE: silent */
    const char *check;        /* one check, or NULL */
    const char *message;      /* the check's message */
    const char *reason;       /* report reason when incomplete */
} scripted_entry;

typedef struct scripted {
    natsSubscription *sub;
    const scripted_entry *entries;
    size_t n_entries;
    const char *error_reply;  /* non-NULL: reply with this sonar.error.v1 instead */
    bool garbage_result;      /* publish a garbage result first */
    char request[4096];       /* the last change request received */
    atomic_int requests;
    atomic_bool encode_failed; /* the callback could not build a message */
} scripted;

static void publish_json_str(const char *subject, const char *json)
{
    natsConnection_PublishString(nc, subject, json);
}

static void on_change(natsConnection *conn, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)conn;
    (void)sub;
    scripted *s = closure;
    snprintf(s->request, sizeof s->request, "%.*s", natsMsg_GetDataLength(msg), natsMsg_GetData(msg));
    sonar_change_msg change;
    memset(&change, 0, sizeof change);
    if (sonar_change_decode(&change, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg)) !=
        SONAR_OK) {
        natsConnection_PublishString(nc, natsMsg_GetReply(msg), "{\"type\":\"sonar.error.v1\",\"code\":400,"
                                              "\"message\":\"bad change\"}");
        goto done;
    }
    if (s->error_reply) {
        natsConnection_PublishString(nc, natsMsg_GetReply(msg), s->error_reply);
        goto done;
    }
    char subject[256];
    json_t *expected = json_array();
    for (size_t i = 0; i < s->n_entries; i++)
        json_array_append_new(expected, json_string(s->entries[i].service));
    json_t *gather = json_pack("{s:s, s:s, s:s, s:O, s:I}", "type", "sonar.gather.v1",
                               "change_id", change.change_id, "service", change.service,
                               "expected", expected, "timeout_ms", (json_int_t)change.timeout_ms);
    char *gtext = json_dumps(gather, JSON_COMPACT);
    snprintf(subject, sizeof subject, "sonar.gather.%s", change.change_id);
    publish_json_str(subject, gtext);
    free(gtext);
    json_decref(gather);
    json_decref(expected);
    if (s->garbage_result) {
        snprintf(subject, sizeof subject, "sonar.result.%s.junk", change.change_id);
        publish_json_str(subject, "{not json");
    }

    sonar_report_entry entries[8];
    sonar_check_result checks[8];
    memset(entries, 0, sizeof entries);
    memset(checks, 0, sizeof checks);
    sonar_report_msg report = {
        .change_id = change.change_id, .service = change.service, .version = change.version,
        .address = change.address, .verdict = SONAR_PASS,
        .started_at = "2026-11-23T18:30:00.000Z", .duration_ms = 12,
        .results = entries, .n_results = s->n_entries,
    };
    report.counts.expected = (int64_t)s->n_entries;
    for (size_t i = 0; i < s->n_entries && i < 8; i++) {
        const scripted_entry *e = &s->entries[i];
        checks[i] = (sonar_check_result){.name = (char *)(e->check ? e->check : ""),
                                         .status = e->status == SONAR_FAIL ? SONAR_FAIL : SONAR_PASS,
                                         .duration_ms = 3,
                                         .message = (char *)(e->message ? e->message : "")};
        entries[i] = (sonar_report_entry){.service = (char *)e->service, .status = e->status,
                                          .reason = (char *)(e->reason ? e->reason : ""),
                                          .duration_ms = 3, .checks = &checks[i],
                                          .n_checks = e->check ? 1 : 0};
        switch (e->status) {
        case SONAR_PASS: report.counts.pass++; break;
        case SONAR_FAIL: report.counts.fail++; break;
        case SONAR_NONE: report.counts.none++; break;
        case SONAR_INCOMPLETE: report.counts.incomplete++; break;
        }
        if (e->status == SONAR_INCOMPLETE)
            continue;
        sonar_result_msg r = {.change_id = change.change_id, .service = (char *)e->service,
                              .instance = "i1", .status = e->status, .duration_ms = 3,
                              .checks = &checks[i], .n_checks = e->check ? 1 : 0};
        char *rtext = NULL;
        if (sonar_result_encode(&r, &rtext) != SONAR_OK) {
            s->encode_failed = true; /* asserted by the test's thread */
            continue;
        }
        snprintf(subject, sizeof subject, "sonar.result.%s.%s", change.change_id, e->service);
        publish_json_str(subject, rtext);
        free(rtext);
    }
    report.verdict = report.counts.fail ? SONAR_FAIL
                     : report.counts.incomplete ? SONAR_INCOMPLETE : SONAR_PASS;
    char *text = NULL;
    if (sonar_report_encode(&report, &text) != SONAR_OK) {
        s->encode_failed = true;
        goto done;
    }
    natsConnection_Flush(nc); /* results first, as sonard does */
    natsConnection_PublishString(nc, natsMsg_GetReply(msg), text);
    natsConnection_Flush(nc);
    free(text);
done:
    sonar_change_finish(&change);
    atomic_fetch_add(&s->requests, 1);
    natsMsg_Destroy(msg);
}

static void scripted_start(scripted *s, const char *service)
{
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.change.%s", service);
    cr_assert_eq(natsConnection_Subscribe(&s->sub, nc, subject, on_change, s), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
}

static void scripted_stop(scripted *s)
{
    cr_assert_not(atomic_load(&s->encode_failed), "scripted coordinator could not encode");
    natsSubscription_Unsubscribe(s->sub);
    natsSubscription_Destroy(s->sub);
}

static const char *fail_msg = "GET /pick?name=cheese \xe2\x86\x92 404, expected 200";

/* ---- announce ------------------------------------------------------------ */

Test(cli, announce_passes_with_exit_0_results_first_then_table, .init = setup, .fini = teardown)
{
    static const scripted_entry entries[] = {
        {"orders", SONAR_PASS, "pick", "", NULL},
        {"billing", SONAR_NONE, NULL, NULL, NULL},
    };
    scripted s = {.entries = entries, .n_entries = 2};
    scripted_start(&s, "chillybin");
    const char *args[] = {"announce", "chillybin", "--address", "http://10.0.0.5:8081",
                          "--version", "2.0.0", "--timeout", "1.5s", "--change-id", "c-pass", NULL};
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", rc, proc.out, proc.err);
    const char *result = strstr(proc.out, "orders: pass, 1 check passed");
    const char *table = strstr(proc.out, "SERVICE");
    cr_assert(result && table && result < table, "results then table:\n%s", proc.out);
    cr_assert(strstr(proc.out, "billing: none") != NULL, "%s", proc.out);
    cr_assert(strstr(table, "orders") && strstr(table, "billing"), "%s", table);
    cr_assert(strstr(proc.out, "verdict: PASS") != NULL);
    cr_assert(strstr(proc.out, "waiting for 2 services") != NULL, "%s", proc.out);

    /* The request carried what the flags said. */
    sonar_change_msg sent;
    memset(&sent, 0, sizeof sent);
    cr_assert_eq(sonar_change_decode(&sent, s.request, strlen(s.request)), SONAR_OK, "%s", s.request);
    cr_assert_str_eq(sent.change_id, "c-pass");
    cr_assert_str_eq(sent.service, "chillybin");
    cr_assert_str_eq(sent.version, "2.0.0");
    cr_assert_str_eq(sent.address, "http://10.0.0.5:8081");
    cr_assert_eq(sent.timeout_ms, 1500);
    sonar_change_finish(&sent);
    scripted_stop(&s);
}

Test(cli, announce_on_a_terminal_draws_a_live_progress_line, .init = setup, .fini = teardown)
{
    scripted_entry entries[] = {{"orders", SONAR_FAIL, "pick", fail_msg, NULL},
                                {"menu", SONAR_PASS, "list", "", NULL}};
    scripted s = {.entries = entries, .n_entries = 2};
    scripted_start(&s, "chillybin");
    const char *argv[] = {test_bin("SONAR_CLI_BIN"), "announce", "chillybin", "--address",
                          "http://x", "--version", "2", "--server", natsd.url, NULL};
    cr_assert(test_proc_start_pty(&proc, argv, NULL));
    cr_assert(test_proc_wait(&proc, 30000), "announce did not finish: %s", proc.out);
    int rc = test_proc_exit_code(&proc);
    cr_assert_eq(rc, 1, "exit %d\n%s", rc, proc.out);
    /* The progress line is redrawn in place: carriage return + erase line. */
    cr_assert(strstr(proc.out, "\r\033[K") != NULL, "%s", proc.out);
    cr_assert(strstr(proc.out, " answered") != NULL, "%s", proc.out);
    cr_assert(strstr(proc.out, "waiting for 2 services") == NULL, "plain lines only off a terminal");
    const char *result = strstr(proc.out, "orders: fail");
    const char *table = strstr(proc.out, "SERVICE");
    cr_assert(result && table && result < table, "%s", proc.out);
    /* The progress line is erased before the table: nothing of it is left
     * on the table's lines. */
    cr_assert(strstr(table, "answered") == NULL, "%s", table);
    scripted_stop(&s);
}

Test(cli, announce_fail_shows_the_check_message_and_exits_1, .init = setup, .fini = teardown)
{
    scripted_entry entries[] = {{"orders", SONAR_FAIL, "pick", fail_msg, NULL},
                                {"menu", SONAR_PASS, "list", "", NULL}};
    scripted s = {.entries = entries, .n_entries = 2};
    scripted_start(&s, "chillybin");
    const char *args[] = {"announce", "chillybin", "--address", "http://x", "--version", "2", NULL};
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 1, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    const char *table = strstr(proc.out, "SERVICE");
    cr_assert_not_null(table);
    cr_assert(strstr(table, fail_msg) != NULL, "message missing from the table:\n%s", proc.out);
    cr_assert(strstr(proc.out, "verdict: FAIL") != NULL);
    /* A change id was generated and sent. */
    sonar_change_msg sent;
    memset(&sent, 0, sizeof sent);
    cr_assert_eq(sonar_change_decode(&sent, s.request, strlen(s.request)), SONAR_OK);
    cr_assert(sonar_name_valid(sent.change_id));
    cr_assert(strstr(proc.out, sent.change_id) != NULL, "change id shown");
    sonar_change_finish(&sent);
    scripted_stop(&s);
}

Test(cli, announce_incomplete_exits_2_with_the_reason, .init = setup, .fini = teardown)
{
    scripted_entry entries[] = {{"orders", SONAR_PASS, "pick", "", NULL},
                                {"frozen", SONAR_INCOMPLETE, NULL, NULL, "no answer by the deadline"}};
    scripted s = {.entries = entries, .n_entries = 2};
    scripted_start(&s, "chillybin");
    const char *args[] = {"announce", "chillybin", "--address", "http://x", "--version", "2", NULL};
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 2, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    cr_assert(strstr(proc.out, "no answer by the deadline") != NULL, "%s", proc.out);
    cr_assert(strstr(proc.out, "verdict: INCOMPLETE") != NULL);
    scripted_stop(&s);
}

Test(cli, announce_json_prints_only_the_report, .init = setup, .fini = teardown)
{
    scripted_entry entries[] = {{"orders", SONAR_FAIL, "pick", fail_msg, NULL}};
    scripted s = {.entries = entries, .n_entries = 1, .garbage_result = true};
    scripted_start(&s, "chillybin");
    const char *args[] = {"announce", "chillybin", "--address", "http://x", "--version", "2",
                          "--json", "--change-id", "c-json", NULL};
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 1, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    json_error_t e;
    json_t *v = json_loads(proc.out, 0, &e);
    cr_assert_not_null(v, "stdout is not one JSON document: %s\n%s", e.text, proc.out);
    cr_assert_str_eq(json_string_value(json_object_get(v, "type")), "sonar.report.v1");
    cr_assert_str_eq(json_string_value(json_object_get(v, "change_id")), "c-json");
    cr_assert_str_eq(json_string_value(json_object_get(v, "verdict")), "fail");
    json_decref(v);
    scripted_stop(&s);
}

Test(cli, announce_survives_a_garbage_result, .init = setup, .fini = teardown)
{
    scripted_entry entries[] = {{"orders", SONAR_PASS, "pick", "", NULL}};
    scripted s = {.entries = entries, .n_entries = 1, .garbage_result = true};
    scripted_start(&s, "chillybin");
    const char *args[] = {"announce", "chillybin", "--address", "http://x", "--version", "2", NULL};
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    cr_assert(strstr(proc.err, "ignored an invalid result") != NULL, "%s", proc.err);
    cr_assert(strstr(proc.out, "orders: pass") != NULL);
    scripted_stop(&s);
}

Test(cli, announce_error_reply_exits_3_with_its_message, .init = setup, .fini = teardown)
{
    scripted s = {.error_reply = "{\"type\":\"sonar.error.v1\",\"code\":503,"
                                 "\"message\":\"registry not loaded yet\"}"};
    scripted_start(&s, "chillybin");
    const char *args[] = {"announce", "chillybin", "--address", "http://x", "--version", "2", NULL};
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 3, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    cr_assert(strstr(proc.err, "registry not loaded yet") != NULL, "%s", proc.err);
    assert_one_line_reason();
    scripted_stop(&s);
}

Test(cli, announce_without_coordinator_exits_3_no_responders, .init = setup, .fini = teardown)
{
    const char *args[] = {"announce", "chillybin", "--address", "http://x", "--version", "2",
                          "--timeout", "20s", NULL};
    int64_t t0 = test_now_ms();
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 3, "exit %d\n%s\n%s", rc, proc.out, proc.err);
    cr_assert(strstr(proc.err, "no coordinator answering on sonar.change.chillybin") != NULL,
              "%s", proc.err);
    assert_one_line_reason();
    cr_assert_lt(test_now_ms() - t0, 10000, "no responders is known at once, not at the timeout");
}

Test(cli, announce_with_unreachable_bus_exits_3, .init = setup, .fini = teardown)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", test_free_port());
    const char *args[] = {"announce", "chillybin", "--address", "http://x", "--version", "2", NULL};
    int rc = cli(url, args);
    cr_assert_eq(rc, 3, "exit %d\n%s", rc, proc.err);
    cr_assert(strstr(proc.err, "cannot connect") != NULL, "%s", proc.err);
    assert_one_line_reason();
    /* The read commands say the same, with their own exit code 3. */
    const char *svc[] = {"services", NULL};
    cr_assert_eq(cli(url, svc), 3);
    assert_one_line_reason();
    const char *watch[] = {"watch", NULL};
    cr_assert_eq(cli(url, watch), 3, "%s", proc.err);
    assert_one_line_reason();
}

Test(cli, announce_bad_arguments_exit_3_before_touching_the_bus, .init = setup_dir, .fini = teardown_dir)
{
    /* No server at all: every case must fail in argument checking. */
    const char *cases[][12] = {
        {"announce", "--address", "http://x", "--version", "2", NULL},
        {"announce", "bad.name", "--address", "http://x", "--version", "2", NULL},
        {"announce", "svc", "--version", "2", NULL},
        {"announce", "svc", "--address", "http://x", NULL},
        {"announce", "svc", "--address", "", "--version", "2", NULL},
        {"announce", "svc", "--address", "http://x", "--version", "2", "--timeout", "10x", NULL},
        {"announce", "svc", "--address", "http://x", "--version", "2", "--timeout", "0", NULL},
        {"announce", "svc", "--address", "http://x", "--version", "2", "--timeout", "11m", NULL},
        {"announce", "svc", "--address", "http://x", "--version", "2", "--change-id", "a b", NULL},
        {"announce", "svc", "--address", "http://x", "--version", "2", "--frobnicate", NULL},
        {"announce", "svc", "extra", "--address", "http://x", "--version", "2", NULL},
    };
    const char *reasons[] = {"missing <service>", "bad.name", "--address is required",
                             "--version is required", "non-empty", "10x", "between",
                             "between", "a b", "unknown option '--frobnicate'",
                             "unexpected argument 'extra'"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = cli("nats://127.0.0.1:1", cases[i]);
        cr_assert_eq(rc, 3, "case %zu: exit %d: %s", i, rc, proc.err);
        cr_assert(strstr(proc.err, reasons[i]) != NULL, "case %zu: '%s'", i, proc.err);
        assert_one_line_reason();
        cr_assert_eq(proc.out_len, 0, "case %zu printed on stdout", i);
    }
    test_proc_finish(&proc);
}

Test(cli, other_commands_refuse_bad_arguments_with_exit_2, .init = setup_dir, .fini = teardown_dir)
{
    const char *cases[][6] = {
        {"services", "--bogus", NULL},
        {"graph", "extra", NULL},
        {"report", NULL},
        {"report", "bad.id", NULL},
        {"history", "svc", "--limit", "0", NULL},
        {"history", "svc", "--limit", "abc", NULL},
        {"history", "svc", "--limit", "1001", NULL},
        {"watch", "--since", "soon", NULL},
        {"watch", "a.b", NULL},
        {"watch", "--frob", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = cli("nats://127.0.0.1:1", cases[i]);
        cr_assert_eq(rc, 2, "case %zu (%s): exit %d: %s", i, cases[i][0], rc, proc.err);
        assert_one_line_reason();
    }
    test_proc_finish(&proc);
}

Test(cli, every_command_has_help, .init = setup_dir, .fini = teardown_dir)
{
    const char *cmds[] = {"announce", "watch", "services", "report", "history", "graph"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        const char *args[] = {cmds[i], "--help", NULL};
        cr_assert_eq(cli(NULL, args), 0, "%s --help", cmds[i]);
        cr_assert(strstr(proc.out, "usage: sonar ") != NULL, "%s", proc.out);
        cr_assert(strstr(proc.out, "--server URL") != NULL, "common options listed");
        const char *short_args[] = {cmds[i], "-h", NULL};
        cr_assert_eq(cli(NULL, short_args), 0);
    }
    const char *top[] = {"--help", NULL};
    cr_assert_eq(cli(NULL, top), 0);
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        cr_assert(strstr(proc.out, cmds[i]) != NULL, "%s listed in sonar --help", cmds[i]);
    test_proc_finish(&proc);
}

/* ---- read commands --------------------------------------------------------- */

typedef struct api_reply {
    natsSubscription *sub;
    const char *reply;   /* JSON answered to every request */
    char request[1024];  /* last request body */
} api_reply;

static void on_api(natsConnection *conn, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)conn;
    (void)sub;
    api_reply *a = closure;
    snprintf(a->request, sizeof a->request, "%.*s", natsMsg_GetDataLength(msg), natsMsg_GetData(msg));
    natsConnection_PublishString(nc, natsMsg_GetReply(msg), a->reply);
    natsMsg_Destroy(msg);
}

static void api_start(api_reply *a, const char *subject, const char *reply)
{
    a->reply = reply;
    cr_assert_eq(natsConnection_Subscribe(&a->sub, nc, subject, on_api, a), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
}

static void api_stop(api_reply *a)
{
    natsSubscription_Unsubscribe(a->sub);
    natsSubscription_Destroy(a->sub);
}

Test(cli, graph_prints_dot, .init = setup, .fini = teardown)
{
    api_reply a;
    api_start(&a, "sonar.api.graph",
              "{\"type\":\"sonar.graph.v1\",\"nodes\":[\"orders\",\"chillybin\"],"
              "\"edges\":[{\"from\":\"orders\",\"to\":\"chillybin\",\"checks\":[\"pick\"]}]}");
    /* The server from NATS_URL when there is no --server. */
    setenv("NATS_URL", natsd.url, 1);
    const char *args[] = {"graph", NULL};
    cr_assert_eq(cli(NULL, args), 0, "%s", proc.err);
    cr_assert(strncmp(proc.out, "digraph sonar {\n", 16) == 0, "%s", proc.out);
    cr_assert(strstr(proc.out, "\"orders\" -> \"chillybin\" [label=\"pick\"];\n") != NULL);
    cr_assert(strcmp(proc.out + proc.out_len - 2, "}\n") == 0);
    api_stop(&a);
}

Test(cli, services_table_and_json, .init = setup, .fini = teardown)
{
    api_reply a;
    api_start(&a, "sonar.api.services",
              "{\"type\":\"sonar.services.v1\",\"services\":[{\"service\":\"orders\","
              "\"live\":true,\"last_seen\":\"2026-11-23T18:30:00.000Z\",\"versions\":[\"1.0.0\"],"
              "\"depends_on\":[\"chillybin\"],\"checks\":{\"chillybin\":[\"pick\"]},"
              "\"instances\":[{\"instance\":\"i1\",\"version\":\"1.0.0\",\"address\":\"http://o\","
              "\"last_seen\":\"2026-11-23T18:30:00.000Z\",\"heartbeat_ms\":1000}]}]}");
    const char *args[] = {"services", NULL};
    cr_assert_eq(cli(natsd.url, args), 0, "%s", proc.err);
    cr_assert(strstr(proc.out, "SERVICE") && strstr(proc.out, "orders"), "%s", proc.out);
    cr_assert(strstr(proc.out, "chillybin") != NULL);
    const char *jargs[] = {"services", "--json", NULL};
    cr_assert_eq(cli(natsd.url, jargs), 0);
    json_t *v = json_loads(proc.out, 0, NULL);
    cr_assert_not_null(v, "%s", proc.out);
    cr_assert_eq(json_array_size(json_object_get(v, "services")), 1);
    json_decref(v);
    api_stop(&a);
}

Test(cli, report_unknown_change_exits_1, .init = setup, .fini = teardown)
{
    api_reply a;
    api_start(&a, "sonar.api.report",
              "{\"type\":\"sonar.error.v1\",\"code\":404,\"message\":\"no change nope\"}");
    const char *args[] = {"report", "nope", NULL};
    int rc = cli(natsd.url, args);
    cr_assert_eq(rc, 1, "exit %d: %s", rc, proc.err);
    cr_assert(strstr(proc.err, "no change nope") != NULL, "%s", proc.err);
    json_t *req = json_loads(a.request, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(req, "change_id")), "nope");
    json_decref(req);
    api_stop(&a);
}

Test(cli, history_sends_service_and_limit, .init = setup, .fini = teardown)
{
    api_reply a;
    api_start(&a, "sonar.api.history",
              "{\"type\":\"sonar.history.v1\",\"service\":\"chillybin\",\"reports\":[]}");
    const char *args[] = {"history", "chillybin", "--limit", "7", NULL};
    cr_assert_eq(cli(natsd.url, args), 0, "%s", proc.err);
    cr_assert(strstr(proc.out, "no reports for chillybin") != NULL, "%s", proc.out);
    json_t *req = json_loads(a.request, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(req, "service")), "chillybin");
    cr_assert_eq(json_integer_value(json_object_get(req, "limit")), 7);
    json_decref(req);
    api_stop(&a);
}

Test(cli, read_commands_refuse_a_reply_of_the_wrong_type, .init = setup, .fini = teardown)
{
    api_reply a;
    api_start(&a, "sonar.api.graph", "{\"type\":\"sonar.services.v1\",\"services\":[]}");
    const char *args[] = {"graph", NULL};
    cr_assert_eq(cli(natsd.url, args), 3);
    cr_assert(strstr(proc.err, "expected sonar.graph.v1") != NULL, "%s", proc.err);
    api_stop(&a);
    const char *none[] = {"services", NULL};
    cr_assert_eq(cli(natsd.url, none), 3, "no sonard: no responders");
    cr_assert(strstr(proc.err, "no coordinator") != NULL, "%s", proc.err);
}

/* ---- watch ----------------------------------------------------------------- */

static void start_watch(const char *const *extra)
{
    const char *argv[16];
    size_t n = 0;
    argv[n++] = test_bin("SONAR_CLI_BIN");
    argv[n++] = "watch";
    for (; extra && *extra; extra++)
        argv[n++] = *extra;
    argv[n++] = "--server";
    argv[n++] = natsd.url;
    argv[n] = NULL;
    cr_assert(test_proc_start(&proc, dir, argv, NULL));
}

/* Waits until the watcher has subscribed (its "watching" line on stderr). */
static void wait_watch_ready(void)
{
    int64_t deadline = test_now_ms() + 10000;
    while (strstr(proc.err, "watching") == NULL && test_now_ms() < deadline)
        test_proc_pump(&proc, 100);
    cr_assert(strstr(proc.err, "watching") != NULL, "watch did not start: %s", proc.err);
}

static char *register_json(const char *service, const char *instance)
{
    char *deps[] = {"chillybin"};
    sonar_register_msg r = {.service = (char *)service, .instance = (char *)instance,
                            .version = "1.0.0", .address = "http://o:1", .depends_on = deps,
                            .n_depends_on = 1, .heartbeat_ms = 1000};
    char *text = NULL;
    cr_assert_eq(sonar_register_encode(&r, &text), SONAR_OK, "%s", sonar_last_error());
    return text;
}

Test(cli, watch_json_prints_a_registration_line_then_stops_cleanly, .init = setup, .fini = teardown)
{
    const char *extra[] = {"--json", NULL};
    start_watch(extra);
    wait_watch_ready();
    char *reg = register_json("orders", "i1");
    char *sentinel = register_json("orders", "i2");
    natsConnection_PublishString(nc, "sonar.result.x.y", "garbage");
    natsConnection_PublishString(nc, "sonar.register.orders", reg);
    natsConnection_PublishString(nc, "sonar.register.orders", reg); /* heartbeat: not repeated */
    natsConnection_PublishString(nc, "sonar.register.orders", sentinel);
    natsConnection_Flush(nc);
    free(reg);
    free(sentinel);
    /* Same subscription, so in order: once i2 shows, i1's heartbeat was seen. */
    cr_assert(test_proc_wait_output(&proc, "\"instance\":\"i2\"", 10000), "%s", proc.out);
    natsConnection_PublishString(nc, "sonar.leave.orders",
                                 "{\"type\":\"sonar.leave.v1\",\"service\":\"orders\",\"instance\":\"i1\"}");
    natsConnection_Flush(nc);
    cr_assert(test_proc_wait_output(&proc, "\"event\":\"leave\"", 10000), "%s", proc.out);
    cr_assert(test_proc_wait_output(&proc, "\"event\":\"invalid\"", 10000), "%s", proc.out);
    natsConnection_PublishString(nc, "sonar.health.websvc",
                                 "{\"type\":\"sonar.health.v1\",\"service\":\"websvc\","
                                 "\"target\":\"web\",\"from\":\"unknown\",\"to\":\"passing\","
                                 "\"time\":\"2026-12-05T10:00:00.000Z\",\"http_code\":200,"
                                 "\"duration_ms\":3,\"error\":null}");
    natsConnection_Flush(nc);
    cr_assert(test_proc_wait_output(&proc, "\"event\":\"health\"", 10000), "%s", proc.out);
    /* A health event about another service than its subject's: invalid. */
    natsConnection_PublishString(nc, "sonar.health.websvc",
                                 "{\"type\":\"sonar.health.v1\",\"service\":\"other\","
                                 "\"target\":\"web\",\"from\":\"unknown\",\"to\":\"passing\","
                                 "\"time\":\"2026-12-05T10:00:00.000Z\",\"http_code\":200,"
                                 "\"duration_ms\":3,\"error\":null}");
    natsConnection_Flush(nc);
    cr_assert(TEST_WAIT_UNTIL((test_proc_pump(&proc, 50),
                               strstr(proc.out, "health event needs the service") != NULL),
                              10000),
              "%s", proc.out);

    /* Every line is a JSON object; two invalid, one register, one leave. */
    int registers = 0, invalid = 0, leaves = 0;
    char *copy = strdup(proc.out), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *v = json_loads(line, 0, NULL);
        cr_assert_not_null(v, "not JSON: %s", line);
        const char *ev = json_string_value(json_object_get(v, "event"));
        json_t *m = json_object_get(v, "message");
        if (strcmp(ev, "register") == 0 &&
            strcmp(json_string_value(json_object_get(m, "instance")), "i1") == 0) {
            registers++;
            cr_assert_str_eq(json_string_value(json_object_get(m, "service")), "orders");
        }
        invalid += strcmp(ev, "invalid") == 0;
        leaves += strcmp(ev, "leave") == 0;
        json_decref(v);
    }
    free(copy);
    cr_assert_eq(registers, 1, "%s", proc.out);
    cr_assert_eq(invalid, 2, "%s", proc.out);
    cr_assert_eq(leaves, 1);

    test_proc_signal(&proc, SIGTERM);
    cr_assert(test_proc_wait(&proc, 10000), "watch did not stop on SIGTERM: %s", proc.err);
    cr_assert_eq(test_proc_exit_code(&proc), 0, "watch exits 0 on SIGTERM: %s", proc.err);
}

Test(cli, watch_filters_by_service_and_says_when_there_is_nothing_to_replay,
     .init = setup, .fini = teardown)
{
    const char *extra[] = {"chillybin", "--since", "1h", NULL};
    start_watch(extra);
    wait_watch_ready();
    cr_assert(strstr(proc.err, "no stream SONAR_EVENTS") != NULL, "%s", proc.err);
    char *other = register_json("orders", "i1");
    char *mine = register_json("chillybin", "c1");
    natsConnection_PublishString(nc, "sonar.register.orders", other);
    natsConnection_PublishString(nc, "sonar.register.chillybin", mine);
    natsConnection_Flush(nc);
    free(other);
    free(mine);
    cr_assert(test_proc_wait_output(&proc, "register chillybin/c1 1.0.0", 10000), "%s", proc.out);
    cr_assert(strstr(proc.out, "orders/i1") == NULL, "filtered out: %s", proc.out);
    test_proc_signal(&proc, SIGINT);
    cr_assert(test_proc_wait(&proc, 10000), "watch did not stop on SIGINT: %s", proc.err);
    cr_assert_eq(test_proc_exit_code(&proc), 0, "watch exits 0 on SIGINT: %s", proc.err);
}

Test(cli, watch_says_when_the_bus_is_lost_and_back_and_keeps_watching, .init = setup,
     .fini = teardown)
{
    const char *extra[] = {"--json", NULL};
    start_watch(extra);
    wait_watch_ready();
    test_natsd_stop(&natsd);
    cr_assert(test_proc_wait_output(&proc, "\"event\":\"disconnected\"", 10000), "%s",
              proc.out);
    cr_assert(test_natsd_restart(&natsd));
    cr_assert(test_proc_wait_output(&proc, "\"event\":\"reconnected\"", 20000), "%s",
              proc.out);
    cr_assert(strstr(proc.out, natsd.url) != NULL, "the server is named: %s", proc.out);
    /* Subscribed again: a registration after the return is shown. */
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED, 10000));
    char *reg = register_json("orders", "back");
    bool shown = false;
    /* The watcher's subscriptions reach the server a moment after its
     * reconnect: publish until the line shows (each publish is one try). */
    for (int i = 0; i < 100 && !shown; i++) {
        natsConnection_PublishString(nc, "sonar.register.orders", reg);
        natsConnection_Flush(nc);
        shown = test_proc_wait_output(&proc, "\"instance\":\"back\"", 100);
    }
    free(reg);
    cr_assert(shown, "no event after the reconnect: %s", proc.out);
    test_proc_signal(&proc, SIGTERM);
    cr_assert(test_proc_wait(&proc, 10000), "%s", proc.err);
    cr_assert_eq(test_proc_exit_code(&proc), 0, "%s", proc.err);
}

/* A minimal valid report of change `cid` of chillybin, stored in the
 * events stream (the request waits for the PubAck). */
static void store_report(const char *cid)
{
    sonar_report_msg r = {.change_id = (char *)cid, .service = "chillybin", .version = "2.1.0",
                          .address = "http://c:1", .verdict = SONAR_PASS,
                          .started_at = "2026-12-05T18:30:00.000Z", .duration_ms = 31};
    char *text = NULL;
    cr_assert_eq(sonar_report_encode(&r, &text), SONAR_OK, "%s", sonar_last_error());
    natsMsg *ack = NULL;
    cr_assert_eq(natsConnection_RequestString(&ack, nc, "sonar.report.chillybin", text, 5000),
                 NATS_OK, "no PubAck for %s", cid);
    cr_assert(strstr(natsMsg_GetData(ack), "\"seq\"") != NULL, "not stored: %.*s",
              natsMsg_GetDataLength(ack), natsMsg_GetData(ack));
    natsMsg_Destroy(ack);
    free(text);
}

/* A health transition of websvc/web at `time`, stored in the events stream. */
static void store_health(const char *time, const char *to)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.health.v1\",\"service\":\"websvc\",\"target\":\"web\","
             "\"from\":\"passing\",\"to\":\"%s\",\"time\":\"%s\",\"http_code\":503,"
             "\"duration_ms\":2,\"error\":\"HTTP 503\"}",
             to, time);
    natsMsg *ack = NULL;
    cr_assert_eq(natsConnection_RequestString(&ack, nc, "sonar.health.websvc", body, 5000),
                 NATS_OK, "no PubAck for the health event at %s", time);
    natsMsg_Destroy(ack);
}

static int occurrences(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* Reports published while the watcher was cut off are replayed from the
 * events stream once it is back; a report it showed before is not repeated. */
Test(cli, watch_replays_the_reports_it_missed_while_the_bus_was_lost, .init = setup,
     .fini = teardown)
{
    const char *subjects[] = {"sonar.report.*", "sonar.health.*", NULL};
    sonar_stream_config sc = {.name = SONAR_EVENTS_STREAM, .subjects = subjects};
    cr_assert_eq(sonar_stream_ensure(nc, &sc), SONAR_OK, "%s", sonar_last_error());
    const char *extra[] = {"--json", NULL};
    start_watch(extra);
    wait_watch_ready();
    store_report("before-gap");
    store_health("2026-12-05T10:00:00.000Z", "critical");
    cr_assert(test_proc_wait_output(&proc, "\"change_id\":\"before-gap\"", 10000), "%s",
              proc.out);
    cr_assert(test_proc_wait_output(&proc, "\"time\":\"2026-12-05T10:00:00.000Z\"", 10000),
              "%s", proc.out);
    test_natsd_stop(&natsd);
    cr_assert(test_proc_wait_output(&proc, "\"event\":\"disconnected\"", 10000), "%s",
              proc.out);
    /* Frozen, the watcher cannot reconnect before the report is stored. */
    cr_assert(test_pid_freeze(proc.pid, 10000), "the watcher did not stop");
    cr_assert(test_natsd_restart(&natsd));
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED, 10000));
    store_report("in-the-gap");
    store_health("2026-12-05T10:00:05.000Z", "passing");
    test_proc_signal(&proc, SIGCONT);
    cr_assert(test_proc_wait_output(&proc, "\"replaying\":true", 20000), "%s", proc.out);
    cr_assert(test_proc_wait_output(&proc, "\"change_id\":\"in-the-gap\"", 10000), "%s",
              proc.out);
    const char *line = strstr(proc.out, "\"change_id\":\"in-the-gap\"");
    const char *start = line;
    while (start > proc.out && start[-1] != '\n')
        start--;
    cr_assert(strstr(start, "\"replayed\":true") != NULL &&
                  strstr(start, "\"replayed\":true") < strchr(line, '\n'),
              "the missed report is not marked replayed: %s", proc.out);
    cr_assert_eq(occurrences(proc.out, "\"change_id\":\"before-gap\""), 1,
                 "a report shown before the gap was shown again: %s", proc.out);
    /* Health transitions too: the one of the gap replayed, the earlier one not repeated. */
    cr_assert(test_proc_wait_output(&proc, "\"time\":\"2026-12-05T10:00:05.000Z\"", 10000),
              "%s", proc.out);
    cr_assert_eq(occurrences(proc.out, "\"time\":\"2026-12-05T10:00:00.000Z\""), 1,
                 "a health event shown before the gap was shown again: %s", proc.out);
    test_proc_signal(&proc, SIGTERM);
    cr_assert(test_proc_wait(&proc, 10000), "%s", proc.err);
    cr_assert_eq(test_proc_exit_code(&proc), 0, "%s", proc.err);
}
