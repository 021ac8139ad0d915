/*
 * wells and aquifers (services/examples/wells, services/examples/aquifers),
 * run as built against a real nats-server with JetStream, each with its own
 * SQLite file in a temp dir:
 * - five wells reach aquifers exactly once although aquifers is killed
 *   (SIGKILL) and restarted between the creates;
 * - a well for an unknown aquifer is refused (404), bad fields are 400s;
 * - aquifers' checks on a wells candidate (nats:<prefix>) pass against a
 *   real candidate and fail against a missing or a wrong one, asked for by
 *   a hand-published sonar.check.v1;
 * - SIGTERM finishes the creates in flight, leaves the bus and exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <criterion/criterion.h>
#include <jansson.h>
#include <nats/nats.h>

#include "natsd.h"
#include "proc.h"

static test_natsd natsd;
static natsConnection *nc;
static char dir[256];

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd));
    cr_assert(test_mkdtemp(dir, sizeof dir, "wells"));
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
}

static void teardown(void)
{
    natsConnection_Destroy(nc);
    test_natsd_destroy(&natsd);
    if (getenv("WELLS_LOGS") == NULL)
        test_rmtree(dir);
    else
        fprintf(stderr, "logs kept in %s\n", dir);
}

TestSuite(wells, .init = setup, .fini = teardown, .timeout = 120);

/* ---- Processes ------------------------------------------------------------- */

/* Starts a service binary with --db <dir>/<db> and extra args; waits for "ready". */
static test_proc *start(const char *bin_var, const char *db, const char *const *extra)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", dir, db);
    const char *argv[16] = { test_bin(bin_var), "--db", path, "--server", natsd.url };
    size_t n = 5;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 15; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    test_proc *p = calloc(1, sizeof *p);
    cr_assert(test_proc_start(p, dir, argv, NULL));
    cr_assert(test_proc_wait_output(p, "ready ", 20000), "%s did not start: %s", argv[0],
              test_proc_stderr(p));
    return p;
}

static test_proc *wells_start(const char *db, const char *const *extra)
{
    return start("SONAR_WELLS_BIN", db, extra);
}

static test_proc *aquifers_start(void)
{
    return start("SONAR_AQUIFERS_BIN", "aquifers.db", NULL);
}

/* SIGTERM (or another signal), wait, free; returns the exit code (-1: killed or hung). */
static int stop(test_proc *p, int sig)
{
    test_proc_signal(p, sig);
    int code = test_proc_wait(p, 15000) ? test_proc_exit_code(p) : -1;
    test_proc_kill(p);
    /* Under ASan/UBSan a child's report lands in its stderr, not in ours. */
    char *err = test_proc_stderr(p);
    cr_expect(strstr(err, "Sanitizer") == NULL && strstr(err, "runtime error") == NULL,
              "sanitizer report from a child:\n%s", err);
    free(err);
    free(p);
    return code;
}

/* ---- Requests ---------------------------------------------------------------- */

/* Request/reply with a JSON body; the reply as JSON (new), NULL on no answer. */
static json_t *ask(const char *subject, const char *body)
{
    natsMsg *m = NULL;
    if (natsConnection_RequestString(&m, nc, subject, body, 5000) != NATS_OK)
        return NULL;
    json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    natsMsg_Destroy(m);
    return doc;
}

/* Code of a sonar.error.v1 reply, 0 for anything else. */
static int error_code(const json_t *r)
{
    const char *type = json_string_value(json_object_get(r, "type"));
    return type != NULL && strcmp(type, "sonar.error.v1") == 0
               ? (int)json_integer_value(json_object_get(r, "code"))
               : 0;
}

static void create_aquifer(const char *name)
{
    char body[128];
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"region\":\"Great Artesian Basin\"}", name);
    json_t *r = ask("aquifers.create", body);
    cr_assert_not_null(r, "no answer from aquifers.create");
    cr_assert_str_eq(json_string_value(json_object_get(r, "name")), name);
    json_decref(r);
}

/* Inbox figure "applied" of service \p name, from its $SRV.STATS endpoint data (-1 if none). */
static long long inbox_applied(const char *name)
{
    char subject[96];
    snprintf(subject, sizeof subject, "$SRV.STATS.%s", name);
    json_t *r = ask(subject, "");
    long long n = -1;
    size_t i;
    json_t *ep;
    json_array_foreach(json_object_get(r, "endpoints"), i, ep) {
        json_t *in = json_object_get(json_object_get(ep, "data"), "inbox");
        if (in != NULL)
            n = json_integer_value(json_object_get(in, "applied"));
    }
    json_decref(r);
    return n;
}

/* Creates a well on <prefix>.create; the well (new). */
static json_t *create_well(const char *prefix, const char *aquifer, const char *owner, double depth)
{
    char subject[96], body[256];
    snprintf(subject, sizeof subject, "%s.create", prefix);
    snprintf(body, sizeof body, "{\"aquifer\":\"%s\",\"owner\":\"%s\",\"depth\":%g}", aquifer,
             owner, depth);
    json_t *r = ask(subject, body);
    cr_assert_not_null(r, "no answer on %s", subject);
    cr_assert_eq(error_code(r), 0, "create refused: %s",
                 json_string_value(json_object_get(r, "message")));
    return r;
}

/* True once the wells instance named \p name applied an aquifers event (it knows an aquifer). */
static bool wells_knows_an_aquifer(const char *name)
{
    return inbox_applied(name) >= 1;
}

/* The count of wells in \p aquifer according to aquifers (-1: unknown); the reply in *out. */
static long long aquifer_wells(const char *aquifer, json_t **out)
{
    char body[128];
    snprintf(body, sizeof body, "{\"name\":\"%s\"}", aquifer);
    json_t *r = ask("aquifers.get", body);
    long long n = r != NULL && error_code(r) == 0
                      ? (long long)json_integer_value(json_object_get(r, "wells"))
                      : -1;
    if (out != NULL) {
        json_decref(*out);
        *out = r;
    } else {
        json_decref(r);
    }
    return n;
}

/* ---- Exactly once across restarts ------------------------------------------ */

/* True when the durable consumer has delivered everything and has nothing
 * waiting for an ack (so no redelivery can still come). */
static bool consumer_settled(const char *stream, const char *consumer)
{
    jsCtx *js = NULL;
    jsConsumerInfo *ci = NULL;
    bool settled = false;
    if (natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_GetConsumerInfo(&ci, js, stream, consumer, NULL, NULL) == NATS_OK)
        settled = ci->NumPending == 0 && ci->NumAckPending == 0;
    jsConsumerInfo_Destroy(ci);
    jsCtx_Destroy(js);
    return settled;
}

Test(wells, five_wells_reach_aquifers_exactly_once_across_aquifers_restarts)
{
    test_proc *aq = aquifers_start();
    test_proc *w = wells_start("wells.db", NULL);
    create_aquifer("gab");
    cr_assert(TEST_WAIT_UNTIL(wells_knows_an_aquifer("wells"), 15000),
              "wells never learned of aquifer gab");

    /* aquifers is killed hard (SIGKILL) before the 3rd create and restarted after
     * it (so one well is created while it is down), and killed again right
     * after the 4th: wells keeps accepting (it knows gab), events wait in the stream. */
    json_t *ids = json_array();
    for (int i = 0; i < 5; i++) {
        char owner[32];
        snprintf(owner, sizeof owner, "owner-%d", i);
        if (i == 2)
            cr_assert_eq(stop(aq, SIGKILL), -1);
        json_t *well = create_well("wells", "gab", owner, 100.0 + i);
        cr_assert_str_eq(json_string_value(json_object_get(well, "aquifer")), "gab");
        cr_assert_str_eq(json_string_value(json_object_get(well, "owner")), owner);
        cr_assert_float_eq(json_number_value(json_object_get(well, "depth")), 100.0 + i, 1e-9);
        cr_assert_gt(strlen(json_string_value(json_object_get(well, "id"))), 0);
        json_array_append(ids, json_object_get(well, "id"));
        json_decref(well);
        if (i == 3)
            cr_assert_eq(stop(aq, SIGKILL), -1);
        if (i == 2 || i == 3)
            aq = aquifers_start();
    }
    json_t *got = NULL;
    cr_assert(TEST_WAIT_UNTIL(aquifer_wells("gab", &got) >= 5, 20000),
              "aquifers counted %lld wells, expected 5", aquifer_wells("gab", NULL));
    /* Nothing arrives twice, even once every unacked delivery was redelivered. */
    cr_assert(TEST_WAIT_UNTIL(consumer_settled("WELLS", "aquifers"), 20000));
    cr_assert_eq(aquifer_wells("gab", &got), 5);
    cr_expect_eq(json_integer_value(json_object_get(got, "duplicate_events")), 0);
    json_t *seen = json_object_get(got, "well_ids");
    cr_assert_eq(json_array_size(seen), 5);
    size_t i;
    json_t *id;
    json_array_foreach(ids, i, id) {
        bool found = false;
        for (size_t k = 0; k < json_array_size(seen); k++)
            found = found || json_equal(json_array_get(seen, k), id);
        cr_expect(found, "well %s never reached aquifers", json_string_value(id));
    }
    /* wells lists the same five. */
    json_t *list = ask("wells.list", "{\"aquifer\":\"gab\"}");
    cr_expect_eq(json_integer_value(json_object_get(list, "count")), 5);
    json_decref(list);
    json_decref(got);
    json_decref(ids);
    cr_expect_eq(stop(w, SIGTERM), 0);
    cr_expect_eq(stop(aq, SIGTERM), 0);
}

Test(wells, wells_created_while_aquifers_is_down_arrive_when_it_starts)
{
    test_proc *aq = aquifers_start();
    test_proc *w = wells_start("wells.db", NULL);
    create_aquifer("otway");
    cr_assert(TEST_WAIT_UNTIL(wells_knows_an_aquifer("wells"), 15000));
    cr_assert_eq(stop(aq, SIGTERM), 0);
    for (int i = 0; i < 3; i++)
        json_decref(create_well("wells", "otway", "ann", 50));
    /* wells restarted too: its outbox rows were committed; nothing is lost. */
    cr_assert_eq(stop(w, SIGTERM), 0);
    w = wells_start("wells.db", NULL);
    aq = aquifers_start();
    cr_expect(TEST_WAIT_UNTIL(aquifer_wells("otway", NULL) == 3, 20000),
              "aquifers has %lld wells in otway", aquifer_wells("otway", NULL));
    cr_expect_eq(stop(w, SIGTERM), 0);
    cr_expect_eq(stop(aq, SIGTERM), 0);
}

/* ---- Refusals ------------------------------------------------------------------ */

Test(wells, a_well_for_an_unknown_aquifer_or_with_a_bad_field_is_refused)
{
    test_proc *aq = aquifers_start();
    test_proc *w = wells_start("wells.db", NULL);
    create_aquifer("gab");
    cr_assert(TEST_WAIT_UNTIL(wells_knows_an_aquifer("wells"), 15000));

    json_t *r = ask("wells.create", "{\"aquifer\":\"atlantis\",\"owner\":\"ann\",\"depth\":10}");
    cr_assert_eq(error_code(r), 404);
    cr_expect(strstr(json_string_value(json_object_get(r, "message")), "atlantis") != NULL);
    json_decref(r);

    static const struct { const char *body; const char *names; } bad[] = {
        { "{\"owner\":\"ann\",\"depth\":10}", "aquifer" },
        { "{\"aquifer\":\"gab\",\"depth\":10}", "owner" },
        { "{\"aquifer\":\"gab\",\"owner\":\"ann\"}", "depth" },
        { "{\"aquifer\":\"gab\",\"owner\":\"ann\",\"depth\":\"deep\"}", "depth" },
        { "{\"aquifer\":\"gab\",\"owner\":\"ann\",\"depth\":-3}", "depth" },
        { "{\"aquifer\":\"gab\",\"owner\":\"ann\",\"depth\":1e9}", "depth" },
        { "{\"aquifer\":\"g a b\",\"owner\":\"ann\",\"depth\":10}", "aquifer" },
        { "{\"aquifer\":\"gab\",\"owner\":\"\",\"depth\":10}", "owner" },
        { "{\"aquifer\":\"gab\",\"owner\":\"a\\nb\",\"depth\":10}", "owner" },
        { "{\"aquifer\":\"gab\",\"owner\":\"ann\",\"depth\":10,\"colour\":\"blue\"}", "colour" },
        { "[1,2]", "object" },
        { "not json", "JSON" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = ask("wells.create", bad[i].body);
        cr_assert_not_null(r, "no answer to %s", bad[i].body);
        cr_expect_eq(error_code(r), 400, "%s → %d", bad[i].body, error_code(r));
        const char *msg = json_string_value(json_object_get(r, "message"));
        cr_expect(msg != NULL && strstr(msg, bad[i].names) != NULL, "%s → %s", bad[i].body, msg);
        json_decref(r);
    }
    r = ask("aquifers.create", "{\"name\":\"gab\"}");
    cr_expect_eq(error_code(r), 409, "a second gab");
    json_decref(r);
    r = ask("aquifers.get", "{\"name\":\"atlantis\"}");
    cr_expect_eq(error_code(r), 404);
    json_decref(r);
    /* Nothing was stored: no wells, and aquifers never heard of one. */
    r = ask("wells.list", "");
    cr_expect_eq(json_integer_value(json_object_get(r, "count")), 0);
    json_decref(r);
    cr_expect_eq(aquifer_wells("gab", NULL), 0);
    /* Both still serve after the garbage. */
    json_decref(create_well("wells", "gab", "ann", 10));
    cr_expect_eq(stop(w, SIGTERM), 0);
    cr_expect_eq(stop(aq, SIGTERM), 0);
}

/* Inbox figure \p what of aquifers (from $SRV.STATS), -1 if none. */
static long long aquifers_inbox(const char *what)
{
    json_t *r = ask("$SRV.STATS.aquifers", "");
    long long n = -1;
    size_t i;
    json_t *ep;
    json_array_foreach(json_object_get(r, "endpoints"), i, ep) {
        json_t *in = json_object_get(json_object_get(ep, "data"), "inbox");
        if (in != NULL)
            n = json_integer_value(json_object_get(in, what));
    }
    json_decref(r);
    return n;
}

Test(wells, garbage_events_are_dead_lettered_and_never_stall_the_real_ones)
{
    test_proc *aq = aquifers_start();
    test_proc *w = wells_start("wells.db", NULL);
    create_aquifer("gab");
    cr_assert(TEST_WAIT_UNTIL(wells_knows_an_aquifer("wells"), 15000));
    /* Captured by the WELLS stream like real events. */
    const char *garbage[] = { "not json", "{\"type\":\"wells.created.v1\"}",
                              "{\"type\":\"wells.created.v1\",\"id\":\"x y\",\"aquifer\":\"gab\","
                              "\"owner\":\"o\",\"depth\":1,\"created\":\"t\"}" };
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(js_Publish(NULL, js, "events.wells.created", garbage[i],
                                (int)strlen(garbage[i]), NULL, NULL), NATS_OK);
    jsCtx_Destroy(js);
    json_decref(create_well("wells", "gab", "ann", 12));
    cr_expect(TEST_WAIT_UNTIL(aquifer_wells("gab", NULL) == 1, 20000),
              "the real well did not get past the garbage");
    cr_expect(TEST_WAIT_UNTIL(aquifers_inbox("dead") == 3, 30000), "dead: %lld",
              aquifers_inbox("dead"));
    cr_expect_eq(aquifer_wells("gab", NULL), 1);
    cr_expect_eq(stop(w, SIGTERM), 0);
    cr_expect_eq(stop(aq, SIGTERM), 0);
}

/* ---- aquifers' checks on a wells candidate ---------------------------------------- */

/* Publishes a sonar.check.v1 for wells at \p address; aquifers' sonar.result.v1 (new). */
static json_t *check_candidate(const char *change_id, const char *address)
{
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.result.%s.aquifers", change_id);
    natsSubscription *sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, subject), NATS_OK);
    json_t *req = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i}", "type", "sonar.check.v1",
                            "change_id", change_id, "service", "wells", "version", "1.1.0",
                            "address", address, "timeout_ms", 5000);
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    cr_assert_eq(natsConnection_PublishString(nc, "sonar.check.wells", text), NATS_OK);
    free(text);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, sub, 15000), NATS_OK, "no result from aquifers");
    json_t *result = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    cr_assert_not_null(result);
    return result;
}

/* Status of the check named \p name in a result ("" when absent); its message in *msg. */
static const char *check_status(json_t *result, const char *name, const char **msg)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(result, "checks"), i, c) {
        if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0) {
            *msg = json_string_value(json_object_get(c, "message"));
            return json_string_value(json_object_get(c, "status"));
        }
    }
    *msg = "";
    return "";
}

/* A wrong wells: answers every create with a well, but with another owner. */
static void wrong_wells(natsConnection *conn, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    json_t *req = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *well = json_pack("{s:s, s:O?, s:s, s:O?}", "id", "w1", "aquifer",
                             json_object_get(req, "aquifer"), "owner", "somebody-else", "depth",
                             json_object_get(req, "depth"));
    char *text = json_dumps(well, JSON_COMPACT);
    natsConnection_PublishString(conn, natsMsg_GetReply(msg), text);
    free(text);
    json_decref(well);
    json_decref(req);
    natsMsg_Destroy(msg);
}

Test(wells, aquifers_checks_pass_on_a_good_candidate_and_fail_on_a_missing_or_wrong_one)
{
    test_proc *aq = aquifers_start();
    create_aquifer("gab");
    const char *cand_args[] = { "--subject-prefix", "wells-candidate", "--name",
                                "wells-candidate", "--version", "1.1.0", NULL };
    test_proc *cand = wells_start("candidate.db", cand_args);
    cr_assert(TEST_WAIT_UNTIL(wells_knows_an_aquifer("wells-candidate"), 15000));

    json_t *r = check_candidate("good1", "nats:wells-candidate");
    const char *msg = NULL;
    cr_expect_str_eq(json_string_value(json_object_get(r, "status")), "pass");
    cr_expect_eq(json_array_size(json_object_get(r, "checks")), 3);
    cr_expect_str_eq(check_status(r, "create a well", &msg), "pass", "%s", msg);
    cr_expect(strstr(msg, "created well") != NULL, "%s", msg);
    cr_expect_str_eq(check_status(r, "unknown aquifer refused", &msg), "pass", "%s", msg);
    cr_expect_str_eq(check_status(r, "bad depth refused", &msg), "pass", "%s", msg);
    json_decref(r);
    /* The check's well is real on the candidate. */
    r = ask("wells-candidate.list", "");
    cr_expect_eq(json_integer_value(json_object_get(r, "count")), 1);
    json_decref(r);

    /* Nobody at the address. */
    r = check_candidate("missing1", "nats:nobody-here");
    cr_expect_str_eq(json_string_value(json_object_get(r, "status")), "fail");
    cr_expect_str_eq(check_status(r, "create a well", &msg), "fail");
    cr_expect(strstr(msg, "nobody-here.create") != NULL, "%s", msg);
    json_decref(r);

    /* Not a NATS address. */
    r = check_candidate("http1", "http://127.0.0.1:1");
    cr_expect_str_eq(check_status(r, "create a well", &msg), "fail");
    cr_expect(strstr(msg, "nats:<subject prefix>") != NULL, "%s", msg);
    json_decref(r);

    /* A wells that answers with the wrong owner and accepts any aquifer. */
    natsSubscription *fake = NULL;
    cr_assert_eq(natsConnection_Subscribe(&fake, nc, "wrong-wells.create", wrong_wells, NULL),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    r = check_candidate("wrong1", "nats:wrong-wells");
    cr_expect_str_eq(json_string_value(json_object_get(r, "status")), "fail");
    cr_expect_str_eq(check_status(r, "create a well", &msg), "fail");
    cr_expect(strstr(msg, "owner") != NULL, "%s", msg);
    cr_expect_str_eq(check_status(r, "unknown aquifer refused", &msg), "fail");
    cr_expect(strstr(msg, "accepted, expected 404") != NULL, "%s", msg);
    json_decref(r);
    natsSubscription_Destroy(fake);

    cr_expect_eq(stop(cand, SIGTERM), 0);
    cr_expect_eq(stop(aq, SIGTERM), 0);
}

/* ---- Graceful shutdown -------------------------------------------------------------- */

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static bool slow_creates_running(test_proc *p, int n)
{
    char *err = test_proc_stderr(p);
    bool ok = count_of(err, "slow create") >= n;
    free(err);
    return ok;
}

Test(wells, sigterm_answers_the_creates_in_flight_leaves_the_bus_and_exits_0)
{
    test_proc *aq = aquifers_start();
    const char *slow[] = { "--slow-ms", "1500", NULL };
    test_proc *w = wells_start("wells.db", slow);
    create_aquifer("gab");
    cr_assert(TEST_WAIT_UNTIL(wells_knows_an_aquifer("wells"), 15000));

    natsSubscription *replies = NULL, *leave = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&replies, nc, "test.replies.*"), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&leave, nc, "sonar.leave.wells"), NATS_OK);
    for (int i = 0; i < 3; i++) {
        char reply[32];
        snprintf(reply, sizeof reply, "test.replies.%d", i);
        cr_assert_eq(natsConnection_PublishRequestString(
                         nc, "wells.create", reply,
                         "{\"aquifer\":\"gab\",\"owner\":\"ann\",\"depth\":30}"),
                     NATS_OK);
    }
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    cr_assert(TEST_WAIT_UNTIL(slow_creates_running(w, 3), 10000), "the creates never started");
    test_proc_signal(w, SIGTERM);

    for (int i = 0; i < 3; i++) {
        natsMsg *m = NULL;
        cr_assert_eq(natsSubscription_NextMsg(&m, replies, 10000), NATS_OK,
                     "create %d in flight was not answered", i);
        json_t *well = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
        cr_expect_not_null(json_string_value(json_object_get(well, "id")), "%.*s",
                           natsMsg_GetDataLength(m), natsMsg_GetData(m));
        json_decref(well);
        natsMsg_Destroy(m);
    }
    cr_assert(test_proc_wait(w, 15000), "wells did not exit");
    cr_expect_eq(test_proc_exit_code(w), 0);
    char *err = test_proc_stderr(w);
    cr_expect(strstr(err, "Sanitizer") == NULL, "%s", err);
    free(err);
    natsMsg *m = NULL;
    cr_expect_eq(natsSubscription_NextMsg(&m, leave, 5000), NATS_OK, "no sonar.leave.wells");
    natsMsg_Destroy(m);
    natsSubscription_Destroy(replies);
    natsSubscription_Destroy(leave);
    free(w);

    /* The three answered wells were committed and reach aquifers. */
    w = wells_start("wells.db", NULL);
    json_t *list = ask("wells.list", "");
    cr_expect_eq(json_integer_value(json_object_get(list, "count")), 3);
    json_decref(list);
    cr_expect(TEST_WAIT_UNTIL(aquifer_wells("gab", NULL) == 3, 20000));
    cr_expect_eq(stop(w, SIGTERM), 0);
    cr_expect_eq(stop(aq, SIGTERM), 0);
}

/* ---- sonar request (the CLI's way to the endpoints) --------------------------------- */

/* Runs `sonar request ARGS...` against the test server; exit code; stdout, stderr (new). */
static int sonar_request(const char *const *args, char **out, char **err)
{
    const char *argv[12] = { test_bin("SONAR_BIN"), "request", "--server", natsd.url };
    size_t n = 4;
    for (size_t i = 0; args[i] != NULL && n < 11; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    test_proc p;
    int code = test_proc_run(&p, dir, argv, NULL, 15000);
    *out = test_proc_stdout(&p);
    *err = test_proc_stderr(&p);
    return code;
}

Test(wells, sonar_request_prints_the_reply_and_exits_by_the_outcome)
{
    test_proc *aq = aquifers_start();
    char *out = NULL, *err = NULL;
    const char *create[] = { "aquifers.create", "{\"name\":\"gab\"}", "--compact", NULL };
    cr_expect_eq(sonar_request(create, &out, &err), 0, "%s", err);
    cr_expect(strstr(out, "\"name\":\"gab\"") != NULL, "%s", out);
    free(out);
    free(err);
    cr_expect_eq(sonar_request(create, &out, &err), 1, "a second gab is an error reply");
    cr_expect(strstr(err, "409") != NULL && strstr(err, "already exists") != NULL, "%s", err);
    free(out);
    free(err);
    const char *nobody[] = { "nobody.home", "{}", "--timeout", "2s", NULL };
    cr_expect_eq(sonar_request(nobody, &out, &err), 3);
    cr_expect(strstr(err, "nobody answers") != NULL, "%s", err);
    free(out);
    free(err);
    const char *not_json[] = { "aquifers.create", "{name", NULL };
    cr_expect_eq(sonar_request(not_json, &out, &err), 2);
    free(out);
    free(err);
    const char *wildcard[] = { "aquifers.*", NULL };
    cr_expect_eq(sonar_request(wildcard, &out, &err), 2);
    free(out);
    free(err);
    /* Pretty output by default, and $SRV works too. */
    const char *info[] = { "$SRV.INFO.aquifers", NULL };
    cr_expect_eq(sonar_request(info, &out, &err), 0, "%s", err);
    cr_expect(strstr(out, "\"aquifers.create\"") != NULL && strstr(out, "\n  ") != NULL, "%s",
              out);
    free(out);
    free(err);
    cr_expect_eq(stop(aq, SIGTERM), 0);
}
