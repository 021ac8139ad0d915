/*
 * sonard end to end: a real nats-server, the real sonard binary, and real
 * services (tests/integration/fake_service.c, built on libsonar).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <sys/resource.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <nats/nats.h>

#include "fake_service.h"
#include "natsd.h"
#include "sonar/util.h"
#include "proc.h"

#define MAX_PIDS 32

static test_natsd nd;
static char dir[256];
static natsConnection *nc;
static test_proc procs[MAX_PIDS];
static int n_pids;
static pid_t sonard_pid;

/* Starts a process with its output in files under dir; killed by teardown. */
static pid_t spawn(const char *const argv[])
{
    cr_assert_lt(n_pids, MAX_PIDS);
    test_proc *p = &procs[n_pids];
    cr_assert(test_proc_start(p, dir, argv, NULL), "cannot start %s", argv[0]);
    n_pids++;
    return p->pid;
}

/* The process started with `pid` (the newest, should a pid be reused). */
static test_proc *proc_of(pid_t pid)
{
    for (int i = n_pids - 1; i >= 0; i--)
        if (procs[i].pid == pid)
            return &procs[i];
    cr_assert_fail("pid %d was not started by this test", (int)pid);
    return NULL;
}

/* Sends `sig` and reaps the process; for SIGSTOP, waits until it stopped. */
static void stop_pid(pid_t pid, int sig)
{
    if (pid <= 0)
        return;
    test_proc *p = proc_of(pid);
    if (sig == SIGSTOP) {
        cr_assert(test_pid_freeze(pid, 10000), "pid %d did not stop", (int)pid);
        return;
    }
    test_proc_signal(p, sig);
    cr_assert(test_proc_wait(p, 30000), "pid %d did not stop on signal %d", (int)pid, sig);
    /* A graceful stop of sonard (SIGTERM) is clean: under ASan+UBSan, no
     * leak or error report at exit. */
    if (sig == SIGTERM)
        cr_expect(p->err == NULL || (strstr(p->err, "Sanitizer") == NULL &&
                                     strstr(p->err, "runtime error") == NULL),
                  "pid %d: %s", (int)pid, p->err);
}

/* Request/reply; returns the parsed body (new) or NULL on timeout. *out_msg keeps the message. */
static json_t *request_raw(const char *subject, const char *body, size_t len, int64_t timeout_ms,
                           natsMsg **out_msg)
{
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, nc, subject, body, (int)len, timeout_ms);
    if (s != NATS_OK)
        return NULL;
    json_t *doc = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    if (out_msg != NULL)
        *out_msg = reply;
    else
        natsMsg_Destroy(reply);
    return doc;
}

static json_t *request(const char *subject, const char *body, int64_t timeout_ms)
{
    return request_raw(subject, body, strlen(body), timeout_ms, NULL);
}

static bool sonard_answers(void)
{
    json_t *doc = request("sonar.api.services", "", 200);
    bool ok = doc != NULL;
    json_decref(doc);
    return ok;
}

/* Publishes an empty request on `subject` and hands every reply that comes
 * within 300 ms of the previous one (parsed, or NULL; borrowed) to `fn`
 * unless NULL. Returns how many came: one per sonard for $SRV subjects. */
static int each_reply(const char *subject, void (*fn)(json_t *doc, void *arg), void *arg)
{
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    int n = 0;
    if (natsInbox_Create(&inbox) == NATS_OK &&
        natsConnection_SubscribeSync(&sub, nc, inbox) == NATS_OK &&
        natsConnection_PublishRequestString(nc, subject, inbox, "") == NATS_OK) {
        natsMsg *m = NULL;
        while (natsSubscription_NextMsg(&m, sub, 300) == NATS_OK) {
            if (fn != NULL) {
                json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m),
                                         0, NULL);
                fn(doc, arg);
                json_decref(doc);
            }
            natsMsg_Destroy(m);
            n++;
        }
    }
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    return n;
}

/* How many sonard instances answer $SRV.PING.sonard. */
static int sonard_instances(void)
{
    return each_reply("$SRV.PING.sonard", NULL, NULL);
}

static pid_t start_sonard(const char *db_name)
{
    char db[400];
    snprintf(db, sizeof db, "%s/%s", dir, db_name);
    const char *argv[] = {test_bin("SONARD_BIN"), "--server", nd.url, "--db", db,
                          "--default-timeout", "5s", NULL};
    int before = sonard_instances();
    pid_t pid = spawn(argv);
    /* Another sonard may answer the read API already: wait for this one itself. */
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() > before, 10000), "sonard does not answer");
    cr_assert(TEST_WAIT_UNTIL(sonard_answers(), 10000), "sonard does not answer");
    return pid;
}

static pid_t start_service(const char *name, const char *dep, const char *check,
                           const char *message, const char *heartbeat)
{
    const char *argv[16];
    fake_service_argv(argv, nd.url, name, dep, check, message, heartbeat);
    return spawn(argv);
}

/* The services document's entry for `name`, or NULL (borrowed from *doc). */
static json_t *service_entry(json_t *doc, const char *name)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(doc, "services"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "service")), name) == 0)
            return s;
    }
    return NULL;
}

static bool is_live(const char *name)
{
    json_t *doc = request("sonar.api.services", "", 1000);
    json_t *s = doc ? service_entry(doc, name) : NULL;
    bool live = s && json_is_true(json_object_get(s, "live"));
    json_decref(doc);
    return live;
}

static bool all_live(const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!is_live(names[i]))
            return false;
    return true;
}

static json_t *announce(const char *service, const char *change_id, int64_t timeout_ms)
{
    json_t *body = json_pack("{s:s, s:s, s:s, s:s}", "type", "sonar.change.v1", "service",
                             service, "version", "2.0.0", "address", "http://127.0.0.1:9");
    if (change_id)
        json_object_set_new(body, "change_id", json_string(change_id));
    if (timeout_ms)
        json_object_set_new(body, "timeout_ms", json_integer(timeout_ms));
    char *text = json_dumps(body, JSON_COMPACT);
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.change.%s", service);
    json_t *report = request(subject, text, (timeout_ms ? timeout_ms : 5000) + 5000);
    free(text);
    json_decref(body);
    cr_assert_not_null(report, "no reply to the announcement of %s", service);
    return report;
}

static json_t *result_of(json_t *report, const char *service)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(report, "results"), i, r) {
        if (strcmp(json_string_value(json_object_get(r, "service")), service) == 0)
            return r;
    }
    cr_assert_fail("no result for %s in the report", service);
    return NULL;
}

static const char *str(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static json_int_t count(json_t *report, const char *k)
{
    return json_integer_value(json_object_get(json_object_get(report, "counts"), k));
}

static void setup(void)
{
    cr_assert(test_natsd_start(&nd));
    cr_assert(test_mkdtemp(dir, sizeof dir, "coord"));
    natsOptions *o;
    cr_assert_eq(natsOptions_Create(&o), NATS_OK);
    natsOptions_SetURL(o, nd.url);
    natsOptions_SetSendAsap(o, true);
    cr_assert_eq(natsConnection_Connect(&nc, o), NATS_OK);
    natsOptions_Destroy(o);
    n_pids = 0;
    sonard_pid = start_sonard("sonard.db");
}

static void teardown(void)
{
    for (int i = 0; i < n_pids; i++)
        test_proc_finish(&procs[i]); /* SIGCONT, SIGKILL, reap */
    natsConnection_Destroy(nc);
    nats_Close();
    test_natsd_destroy(&nd);
    test_rmtree(dir);
}

TestSuite(coordinator, .init = setup, .fini = teardown, .timeout = 90);

Test(coordinator, five_services_two_dependents_report_checks_and_none)
{
    const char *names[] = {"alpha", "beta", "gamma", "delta", "epsilon"};
    start_service("alpha", "chillybin", "pass", "pick ok", NULL);
    start_service("beta", "chillybin", "pass", "list ok", NULL);
    start_service("gamma", NULL, NULL, NULL, NULL);
    start_service("delta", "other", NULL, NULL, NULL);
    start_service("epsilon", NULL, NULL, NULL, NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 5), 10000));
    /* A long deadline: everyone answers, so the report comes long before it. */
    json_t *r = announce("chillybin", "chg-1", 30000);
    cr_assert_str_eq(str(r, "type"), "sonar.report.v1");
    cr_assert_str_eq(str(r, "change_id"), "chg-1");
    cr_assert_str_eq(str(r, "verdict"), "pass");
    cr_assert_eq(count(r, "expected"), 5);
    cr_assert_eq(count(r, "pass"), 2);
    cr_assert_eq(count(r, "none"), 3);
    cr_assert_eq(count(r, "fail") + count(r, "incomplete"), 0);
    json_t *a = result_of(r, "alpha");
    cr_assert_str_eq(str(a, "status"), "pass");
    json_t *chk = json_array_get(json_object_get(a, "checks"), 0);
    cr_assert_str_eq(str(chk, "name"), "probe");
    cr_assert_str_eq(str(chk, "message"), "pick ok");
    cr_assert_str_eq(str(result_of(r, "delta"), "status"), "none");
    cr_assert_lt(json_integer_value(json_object_get(r, "duration_ms")), 15000,
                 "returned as soon as everyone answered, not at the 30 s deadline");
    json_decref(r);
}

Test(coordinator, a_failing_check_fails_the_verdict_with_its_message)
{
    const char *names[] = {"alpha", "beta"};
    start_service("alpha", "chillybin", "fail", "GET /pick?name=cheese -> 404, expected 200", NULL);
    start_service("beta", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    json_t *r = announce("chillybin", NULL, 5000);
    cr_assert_str_eq(str(r, "verdict"), "fail");
    cr_assert_eq(count(r, "fail"), 1);
    cr_assert_eq(strlen(str(r, "change_id")), 22, "a change id was generated");
    json_t *chk = json_array_get(json_object_get(result_of(r, "alpha"), "checks"), 0);
    cr_assert_str_eq(str(chk, "message"), "GET /pick?name=cheese -> 404, expected 200");
    json_decref(r);
}

Test(coordinator, a_frozen_service_is_incomplete_with_no_answer)
{
    const char *names[] = {"alpha", "frozen"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    pid_t frozen = start_service("frozen", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    stop_pid(frozen, SIGSTOP);
    /* While the gather waits for the frozen one, a service nobody registered answers. */
    natsInbox *inbox;
    natsSubscription *sub, *gathering;
    natsInbox_Create(&inbox);
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, inbox), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&gathering, nc, "sonar.gather.chg-frozen"), NATS_OK);
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox,
        "{\"type\":\"sonar.change.v1\",\"change_id\":\"chg-frozen\",\"service\":\"chillybin\","
        "\"version\":\"2\",\"address\":\"http://h:1\",\"timeout_ms\":1500}"), NATS_OK);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, gathering, 10000), NATS_OK);
    natsMsg_Destroy(m);
    cr_assert_eq(natsConnection_PublishString(nc, "sonar.result.chg-frozen.stranger",
        "{\"type\":\"sonar.result.v1\",\"change_id\":\"chg-frozen\",\"service\":\"stranger\","
        "\"instance\":\"s1\",\"status\":\"none\",\"duration_ms\":1,\"checks\":[]}"), NATS_OK);
    cr_assert_eq(natsSubscription_NextMsg(&m, sub, 10000), NATS_OK);
    json_t *r = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    natsSubscription_Destroy(gathering);
    natsInbox_Destroy(inbox);
    kill(frozen, SIGCONT);
    json_t *stranger = result_of(r, "stranger");
    cr_assert(json_is_true(json_object_get(stranger, "unregistered")), "flagged");
    cr_assert_str_eq(str(stranger, "status"), "none");
    cr_assert_eq(count(r, "expected"), 2, "an unregistered answer is not expected");
    cr_assert_str_eq(str(r, "verdict"), "incomplete");
    json_t *f = result_of(r, "frozen");
    cr_assert_str_eq(str(f, "status"), "incomplete");
    cr_assert(strstr(str(f, "reason"), "no answer") != NULL, "%s", str(f, "reason"));
    cr_assert_str_eq(str(result_of(r, "alpha"), "status"), "pass");
    cr_assert_geq(json_integer_value(json_object_get(r, "duration_ms")), 1400);
    json_decref(r);
}

Test(coordinator, a_dependent_whose_instances_left_is_incomplete_with_no_live_instance)
{
    const char *names[] = {"alpha", "beta"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    pid_t beta = start_service("beta", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    stop_pid(beta, SIGTERM); /* graceful: leaves the bus */
    cr_assert(TEST_WAIT_UNTIL(!is_live("beta"), 5000));
    json_t *r = announce("chillybin", "chg-down", 5000);
    cr_assert_str_eq(str(r, "verdict"), "incomplete");
    json_t *b = result_of(r, "beta");
    cr_assert_str_eq(str(b, "status"), "incomplete");
    cr_assert(strstr(str(b, "reason"), "no live instance") != NULL, "%s", str(b, "reason"));
    cr_assert_eq(count(r, "expected"), 1);
    cr_assert_lt(json_integer_value(json_object_get(r, "duration_ms")), 4000);
    json_decref(r);
}

Test(coordinator, announcing_a_change_id_again_returns_the_same_report)
{
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    json_t *first = announce("chillybin", "chg-again", 5000);
    json_t *second = announce("chillybin", "chg-again", 5000);
    cr_assert(json_equal(first, second), "the same report is returned");
    /* Stored right after the reply. */
    json_t *stored = NULL;
    cr_assert(TEST_WAIT_UNTIL((json_decref(stored),
                               stored = request("sonar.api.report", "{\"change_id\":\"chg-again\"}", 1000),
                               json_equal(first, stored)), 3000));
    json_t *third = announce("chillybin", "chg-again", 5000);
    cr_assert(json_equal(first, third), "the stored report is returned");
    json_decref(third);
    json_t *hist = request("sonar.api.history", "{\"service\":\"chillybin\",\"limit\":5}", 2000);
    cr_assert_str_eq(str(hist, "type"), "sonar.history.v1");
    cr_assert_eq(json_array_size(json_object_get(hist, "reports")), 1);
    json_decref(first);
    json_decref(second);
    json_decref(stored);
    json_decref(hist);
}

/* Published outbox figures of sonard's "change" endpoint, or -1. */
static json_int_t outbox_published(void)
{
    json_t *stats = request("$SRV.STATS.sonard", "", 2000);
    json_int_t n = -1;
    size_t i;
    json_t *ep;
    json_array_foreach(json_object_get(stats, "endpoints"), i, ep) {
        if (strcmp(str(ep, "name"), "change") == 0) {
            json_t *ob = json_object_get(json_object_get(ep, "data"), "outbox");
            json_t *pub = json_object_get(ob, "published");
            if (json_is_integer(pub))
                n = json_integer_value(pub);
        }
    }
    json_decref(stats);
    return n;
}

Test(coordinator, reports_go_through_the_outbox_into_the_events_stream_once)
{
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    json_t *first = announce("chillybin", "chg-stream", 5000);
    json_t *again = announce("chillybin", "chg-stream", 5000); /* a retry: not published twice */
    json_decref(again);
    cr_assert(TEST_WAIT_UNTIL(outbox_published() == 1, 10000), "published %lld",
              (long long)outbox_published());
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsStreamInfo *si = NULL;
    cr_assert_eq(js_GetStreamInfo(&si, js, "SONAR_EVENTS", NULL, NULL), NATS_OK);
    cr_assert_eq(si->State.Msgs, 1);
    jsStreamInfo_Destroy(si);
    natsMsg *stored = NULL;
    cr_assert_eq(js_GetLastMsg(&stored, js, "SONAR_EVENTS", "sonar.report.chillybin", NULL, NULL),
                 NATS_OK);
    json_t *doc = json_loadb(natsMsg_GetData(stored), (size_t)natsMsg_GetDataLength(stored), 0,
                             NULL);
    cr_assert(json_equal(doc, first), "the stream holds the report that was replied");
    json_decref(doc);
    natsMsg_Destroy(stored);
    jsCtx_Destroy(js);
    json_decref(first);
    /* Storing and publishing are background work in sonard: its store
     * writer and outbox relay threads run 10 nice steps below the rest. */
    errno = 0;
    int base = getpriority(PRIO_PROCESS, (id_t)sonard_pid);
    int want = base + 10 > 19 ? 19 : base + 10;
    cr_assert_eq(test_thread_nice(sonard_pid, "sonard-store"), want);
    cr_assert_eq(test_thread_nice(sonard_pid, "sonar-outbox"), want);
}

Test(coordinator, a_retry_during_the_gather_joins_it)
{
    const char *names[] = {"alpha", "frozen"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    pid_t frozen = start_service("frozen", NULL, NULL, NULL, NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    stop_pid(frozen, SIGSTOP); /* keeps the gather running until its deadline */
    const char *body = "{\"type\":\"sonar.change.v1\",\"change_id\":\"chg-join\",\"service\":"
                       "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
                       "\"timeout_ms\":1500}";
    natsInbox *inbox1, *inbox2;
    natsSubscription *s1, *s2;
    natsInbox_Create(&inbox1);
    natsInbox_Create(&inbox2);
    cr_assert_eq(natsConnection_SubscribeSync(&s1, nc, inbox1), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&s2, nc, inbox2), NATS_OK);
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox1, body),
                 NATS_OK);
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox2, body),
                 NATS_OK);
    natsMsg *m1 = NULL, *m2 = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m1, s1, 10000), NATS_OK);
    cr_assert_eq(natsSubscription_NextMsg(&m2, s2, 10000), NATS_OK);
    kill(frozen, SIGCONT);
    cr_assert_eq(natsMsg_GetDataLength(m1), natsMsg_GetDataLength(m2));
    cr_assert(memcmp(natsMsg_GetData(m1), natsMsg_GetData(m2),
                     (size_t)natsMsg_GetDataLength(m1)) == 0, "one gather, one report");
    natsMsg_Destroy(m1);
    natsMsg_Destroy(m2);
    natsSubscription_Destroy(s1);
    natsSubscription_Destroy(s2);
    natsInbox_Destroy(inbox1);
    natsInbox_Destroy(inbox2);
}

typedef struct report_count {
    pthread_mutex_t mu;
    int total;
    json_t *ids; /* change_id -> count */
} report_count;

static void on_report(natsConnection *c, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)c;
    (void)sub;
    report_count *rc = closure;
    json_t *doc = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    const char *cid = str(doc, "change_id");
    pthread_mutex_lock(&rc->mu);
    json_int_t n = json_integer_value(json_object_get(rc->ids, cid));
    json_object_set_new(rc->ids, cid, json_integer(n + 1));
    rc->total++;
    pthread_mutex_unlock(&rc->mu);
    json_decref(doc);
    natsMsg_Destroy(msg);
}

static int total_reports(report_count *rc)
{
    pthread_mutex_lock(&rc->mu);
    int n = rc->total;
    pthread_mutex_unlock(&rc->mu);
    return n;
}

typedef struct range {
    const char *key, *sub; /* the integer (or boolean: 0, 1) at key, then sub in it unless NULL */
    long least, most, sum;
    int n; /* how many had it */
} range;

static void range_of_change_data(json_t *doc, void *arg)
{
    range *r = arg;
    size_t i;
    json_t *ep;
    json_array_foreach(json_object_get(doc, "endpoints"), i, ep) {
        json_t *v = json_object_get(json_object_get(ep, "data"), r->key);
        if (r->sub != NULL)
            v = json_object_get(v, r->sub);
        if (json_is_integer(v) || json_is_boolean(v)) {
            long x = json_is_boolean(v) ? (long)json_is_true(v) : (long)json_integer_value(v);
            r->least = x < r->least ? x : r->least;
            r->most = x > r->most ? x : r->most;
            r->sum += x;
            r->n++;
        }
    }
}

/* Over every sonard answering $SRV.STATS: the least and the most of an
 * integer in the change endpoint's data, and how many had it. */
static range change_data_range(const char *key, const char *sub)
{
    range r = {.key = key, .sub = sub, .least = LONG_MAX, .most = -1};
    each_reply("$SRV.STATS.sonard", range_of_change_data, &r);
    return r;
}

/* The most remote gathers any sonard reports in its $SRV.STATS: a
 * coordinator that noted another's running gather. */
static long max_remote_gathers(void)
{
    return change_data_range("remote_gathers", NULL).most;
}

/* Whether each of `coordinators` sonards has at least `live` services with
 * a live instance in its own registry. all_live() asks only one of them
 * (queue group), and a registration reaches each on its own thread: a
 * change it takes before that would not expect the newcomer. */
static bool every_sonard_sees_live(int coordinators, long live)
{
    range r = change_data_range("services", "live");
    return r.n == coordinators && r.least >= live;
}

/* Whether both sonards know another coordinator (so they claim). */
static bool sonards_know_each_other(void)
{
    range peers = change_data_range("claims", "peers");
    return peers.n == 2 && peers.least == 1;
}

/* A second sonard beside the first, alpha (passes its check on chillybin)
 * and beta (no checks), known live to both coordinators. */
static void second_sonard_alpha_and_beta(void)
{
    start_sonard("second.db");
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 2, 10000), "the second sonard is up");
    const char *names[] = {"alpha", "beta"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    start_service("beta", NULL, NULL, NULL, NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    cr_assert(TEST_WAIT_UNTIL(every_sonard_sees_live(2, 2), 10000),
              "a coordinator does not know both services");
}

Test(coordinator, two_coordinators_give_one_report_per_change)
{
    second_sonard_alpha_and_beta();
    report_count rc = {.ids = json_object()};
    pthread_mutex_init(&rc.mu, NULL);
    natsSubscription *sub;
    cr_assert_eq(natsConnection_Subscribe(&sub, nc, "sonar.report.chillybin", on_report, &rc),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    for (int i = 0; i < 8; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "two-%d", i);
        json_t *r = announce("chillybin", cid, 5000);
        cr_assert_str_eq(str(r, "verdict"), "pass");
        cr_assert_eq(count(r, "expected"), 2, "both coordinators know both services");
        json_decref(r);
    }
    cr_assert(TEST_WAIT_UNTIL(total_reports(&rc) >= 8, 5000));
    /* A duplicate would arrive within moments; give it a second to show up. */
    cr_assert_not(TEST_WAIT_UNTIL(total_reports(&rc) > 8, 1000), "a change got two reports");
    for (int i = 0; i < 8; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "two-%d", i);
        cr_assert_eq(json_integer_value(json_object_get(rc.ids, cid)), 1, "%s", cid);
    }
    /* Each coordinator stores the other's reports: asked often enough, both answer. */
    for (int i = 0; i < 8; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"change_id\":\"two-%d\"}", i);
        for (int k = 0; k < 6; k++) {
            json_t *stored = NULL;
            cr_assert(TEST_WAIT_UNTIL(
                (json_decref(stored), stored = request("sonar.api.report", body, 1000),
                 strcmp(str(stored, "type"), "sonar.report.v1") == 0), 3000), "%s", body);
            json_decref(stored);
        }
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    json_decref(rc.ids);
}

/* Two announcements of one new change id at the same moment, each taken by
 * another coordinator (queue group): both begin a gather, but only the one
 * that claims the id first (SONAR_CLAIMS) reports; the other answers its
 * requester with that report. */
Test(coordinator, simultaneous_announcements_of_one_change_on_two_coordinators_give_one_report)
{
    second_sonard_alpha_and_beta();
    cr_assert(TEST_WAIT_UNTIL(sonards_know_each_other(), 10000),
              "the coordinators do not know each other");
    report_count rc = {.ids = json_object()};
    pthread_mutex_init(&rc.mu, NULL);
    natsSubscription *reports = NULL;
    cr_assert_eq(natsConnection_Subscribe(&reports, nc, "sonar.report.chillybin", on_report, &rc),
                 NATS_OK);
    enum { CHANGES = 20 };
    natsInbox *inboxes[CHANGES];
    natsSubscription *replies[CHANGES];
    for (int i = 0; i < CHANGES; i++) {
        natsInbox_Create(&inboxes[i]);
        cr_assert_eq(natsConnection_SubscribeSync(&replies[i], nc, inboxes[i]), NATS_OK);
    }
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    for (int i = 0; i < CHANGES; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"type\":\"sonar.change.v1\",\"change_id\":\"same-%d\",\"service\":"
                 "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
                 "\"timeout_ms\":5000}", i);
        /* Back to back: the second is on its way before the first gather began. */
        cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin",
                                                         inboxes[i], body), NATS_OK);
        cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin",
                                                         inboxes[i], body), NATS_OK);
    }
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    for (int i = 0; i < CHANGES; i++) {
        natsMsg *a = NULL, *b = NULL;
        cr_assert_eq(natsSubscription_NextMsg(&a, replies[i], 10000), NATS_OK, "same-%d", i);
        cr_assert_eq(natsSubscription_NextMsg(&b, replies[i], 10000), NATS_OK, "same-%d", i);
        json_t *ra = json_loadb(natsMsg_GetData(a), (size_t)natsMsg_GetDataLength(a), 0, NULL);
        json_t *rb = json_loadb(natsMsg_GetData(b), (size_t)natsMsg_GetDataLength(b), 0, NULL);
        cr_assert_str_eq(str(ra, "type"), "sonar.report.v1", "%.*s", natsMsg_GetDataLength(a),
                         natsMsg_GetData(a));
        cr_assert_str_eq(str(ra, "verdict"), "pass");
        cr_assert(json_equal(ra, rb), "same-%d got two reports: %.*s / %.*s", i,
                  natsMsg_GetDataLength(a), natsMsg_GetData(a), natsMsg_GetDataLength(b),
                  natsMsg_GetData(b));
        json_decref(ra);
        json_decref(rb);
        natsMsg_Destroy(a);
        natsMsg_Destroy(b);
        natsSubscription_Destroy(replies[i]);
        natsInbox_Destroy(inboxes[i]);
    }
    cr_assert(TEST_WAIT_UNTIL(total_reports(&rc) >= CHANGES, 10000));
    /* A second report of a change would be published within moments. */
    cr_assert_not(TEST_WAIT_UNTIL(total_reports(&rc) > CHANGES, 2000), "%d reports",
                  total_reports(&rc));
    for (int i = 0; i < CHANGES; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "same-%d", i);
        cr_assert_eq(json_integer_value(json_object_get(rc.ids, cid)), 1, "%s", cid);
    }
    /* Every gather claimed (both know another coordinator). Whether a pair
     * was split over both -- one claim lost -- depends on timing: a request
     * reaching a coordinator after the other's gather announcement waits
     * for that gather's report without gathering. */
    cr_assert_geq(change_data_range("claims", "made").sum, CHANGES);
    natsSubscription_Unsubscribe(reports);
    natsSubscription_Destroy(reports);
    json_decref(rc.ids);
}

/* A second sonard beside the first, alpha (passes its check on chillybin)
 * and a dependent frozen with SIGSTOP, so a gather of chillybin runs until
 * its deadline. Returns the second sonard's pid; *frozen the frozen one's. */
static pid_t two_coordinators_and_a_silent_dependent(pid_t *frozen)
{
    pid_t second = start_sonard("second.db");
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 2, 10000), "the second sonard is up");
    const char *names[] = {"alpha", "frozen"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    *frozen = start_service("frozen", NULL, NULL, NULL, NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    cr_assert(TEST_WAIT_UNTIL(every_sonard_sees_live(2, 2), 10000),
              "a coordinator does not know both services");
    stop_pid(*frozen, SIGSTOP);
    return second;
}

/* Announces `body` (a change of chillybin) with replies to a new inbox and
 * waits until the coordinator that did not take it noted its gather.
 * Returns the replies' subscription; *inbox is its subject. */
static natsSubscription *announce_until_noted(const char *body, natsInbox **inbox)
{
    natsSubscription *replies = NULL;
    natsInbox_Create(inbox);
    cr_assert_eq(natsConnection_SubscribeSync(&replies, nc, *inbox), NATS_OK);
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", *inbox, body),
                 NATS_OK);
    cr_assert(TEST_WAIT_UNTIL(max_remote_gathers() >= 1, 10000),
              "no coordinator noted the other's gather");
    return replies;
}

/* Retries land on either coordinator (queue group): the one not gathering
 * learned of the gather from sonar.gather.<id> and answers with the other's
 * report instead of gathering a second time. */
Test(coordinator, a_retry_on_the_other_coordinator_during_a_gather_gets_the_same_report)
{
    pid_t frozen = 0;
    two_coordinators_and_a_silent_dependent(&frozen);
    report_count rc = {.ids = json_object()};
    pthread_mutex_init(&rc.mu, NULL);
    natsSubscription *reports;
    cr_assert_eq(natsConnection_Subscribe(&reports, nc, "sonar.report.chillybin", on_report, &rc),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    const char *body = "{\"type\":\"sonar.change.v1\",\"change_id\":\"chg-remote\",\"service\":"
                       "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
                       "\"timeout_ms\":2500}";
    enum { RETRIES = 16 };
    natsInbox *inbox;
    natsSubscription *replies = announce_until_noted(body, &inbox);
    /* The other coordinator noted the gather: now retry, many times. */
    for (int i = 0; i < RETRIES; i++)
        cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox,
                                                         body), NATS_OK);
    natsMsg *first = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&first, replies, 10000), NATS_OK);
    for (int i = 0; i < RETRIES; i++) {
        natsMsg *m = NULL;
        cr_assert_eq(natsSubscription_NextMsg(&m, replies, 10000), NATS_OK, "reply %d", i);
        cr_assert_eq(natsMsg_GetDataLength(m), natsMsg_GetDataLength(first), "%.*s",
                     natsMsg_GetDataLength(m), natsMsg_GetData(m));
        cr_assert(memcmp(natsMsg_GetData(m), natsMsg_GetData(first),
                         (size_t)natsMsg_GetDataLength(m)) == 0,
                  "a retry got another report: %.*s", natsMsg_GetDataLength(m),
                  natsMsg_GetData(m));
        natsMsg_Destroy(m);
    }
    json_t *report = json_loadb(natsMsg_GetData(first), (size_t)natsMsg_GetDataLength(first), 0,
                                NULL);
    cr_assert_str_eq(str(report, "verdict"), "incomplete", "frozen stayed silent: %.*s",
                     natsMsg_GetDataLength(first), natsMsg_GetData(first));
    json_decref(report);
    natsMsg_Destroy(first);
    kill(frozen, SIGCONT);
    cr_assert(TEST_WAIT_UNTIL(total_reports(&rc) >= 1, 5000));
    /* A second gather would report within its 2.5 s deadline: wait that out. */
    cr_assert_not(TEST_WAIT_UNTIL(total_reports(&rc) > 1, 3500), "the change got two reports");
    natsSubscription_Destroy(replies);
    natsInbox_Destroy(inbox);
    natsSubscription_Unsubscribe(reports);
    natsSubscription_Destroy(reports);
    json_decref(rc.ids);
}

/* A coordinator started while another gathers did not hear that gather's
 * announcement; the running one announces it again when the newcomer
 * publishes sonar.discover at start. A retry landing on the newcomer then
 * gets the same report, and the change gets one report. */
Test(coordinator, a_coordinator_started_during_a_gather_learns_of_it_and_reports_nothing_twice)
{
    const char *names[] = {"alpha", "frozen"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    pid_t frozen = start_service("frozen", NULL, NULL, NULL, NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    stop_pid(frozen, SIGSTOP);
    report_count rc = {.ids = json_object()};
    pthread_mutex_init(&rc.mu, NULL);
    natsSubscription *reports = NULL, *gathers = NULL, *replies = NULL;
    cr_assert_eq(natsConnection_Subscribe(&reports, nc, "sonar.report.chillybin", on_report, &rc),
                 NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&gathers, nc, "sonar.gather.chg-late"), NATS_OK);
    natsInbox *inbox = NULL;
    natsInbox_Create(&inbox);
    cr_assert_eq(natsConnection_SubscribeSync(&replies, nc, inbox), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    const char *body = "{\"type\":\"sonar.change.v1\",\"change_id\":\"chg-late\",\"service\":"
                       "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
                       "\"timeout_ms\":60000}";
    /* Only the first sonard runs: it gathers (frozen stays silent). */
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox, body),
                 NATS_OK);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, gathers, 10000), NATS_OK, "no gather began");
    natsMsg_Destroy(m);
    start_sonard("second.db");
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 2, 10000), "the second sonard is up");
    /* Announced again, with the time it has left. */
    cr_assert_eq(natsSubscription_NextMsg(&m, gathers, 10000), NATS_OK, "not announced again");
    json_t *again = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    cr_assert(json_is_true(json_object_get(again, "again")), "%.*s", natsMsg_GetDataLength(m),
              natsMsg_GetData(m));
    json_int_t left = json_integer_value(json_object_get(again, "timeout_ms"));
    cr_assert(left > 0 && left < 60000, "time left %lld", (long long)left);
    json_decref(again);
    natsMsg_Destroy(m);
    cr_assert(TEST_WAIT_UNTIL(max_remote_gathers() >= 1, 10000),
              "the newcomer did not note the running gather");
    enum { RETRIES = 12 };
    for (int i = 0; i < RETRIES; i++)
        cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox,
                                                         body), NATS_OK);
    /* Every request is in (and waiting): the frozen service answers now,
     * which ends the gather (a long deadline keeps a slow machine from
     * ending it before the newcomer is up). */
    kill(frozen, SIGCONT);
    natsMsg *first = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&first, replies, 15000), NATS_OK);
    for (int i = 0; i < RETRIES; i++) {
        cr_assert_eq(natsSubscription_NextMsg(&m, replies, 15000), NATS_OK, "reply %d", i);
        cr_assert(natsMsg_GetDataLength(m) == natsMsg_GetDataLength(first) &&
                      memcmp(natsMsg_GetData(m), natsMsg_GetData(first),
                             (size_t)natsMsg_GetDataLength(m)) == 0,
                  "a retry got another report: %.*s", natsMsg_GetDataLength(m), natsMsg_GetData(m));
        natsMsg_Destroy(m);
    }
    json_t *report = json_loadb(natsMsg_GetData(first), (size_t)natsMsg_GetDataLength(first), 0,
                                NULL);
    cr_assert_str_eq(str(report, "verdict"), "pass", "%.*s", natsMsg_GetDataLength(first),
                     natsMsg_GetData(first));
    cr_assert_eq(count(report, "expected"), 2, "both services answered");
    json_decref(report);
    natsMsg_Destroy(first);
    cr_assert(TEST_WAIT_UNTIL(total_reports(&rc) >= 1, 5000));
    /* A second gather (begun by the newcomer) would have the frozen
     * service's answer too and report at once. */
    cr_assert_not(TEST_WAIT_UNTIL(total_reports(&rc) > 1, 2000), "the change got two reports");
    natsSubscription_Destroy(gathers);
    natsSubscription_Destroy(replies);
    natsInbox_Destroy(inbox);
    natsSubscription_Unsubscribe(reports);
    natsSubscription_Destroy(reports);
    json_decref(rc.ids);
}

static json_int_t reports_of(report_count *rc, const char *cid)
{
    pthread_mutex_lock(&rc->mu);
    json_int_t n = json_integer_value(json_object_get(rc->ids, cid));
    pthread_mutex_unlock(&rc->mu);
    return n;
}

static void register_by_hand(const char *name, int hb);

/* Claims change `cid` as another coordinator would (before sonard can). */
static void claim_first(const char *cid)
{
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.claim.%s", cid);
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.ExpectNoMessage = true;
    cr_assert_eq(js_Publish(NULL, js, subject, "test", 4, &po, NULL), NATS_OK);
    jsCtx_Destroy(js);
}

/* Announces a change of chillybin (deadline timeout_ms) with the replies to
 * a new inbox; returns the replies' subscription (*inbox its subject). */
static natsSubscription *announce_async(const char *cid, int timeout_ms, natsInbox **inbox)
{
    natsSubscription *replies = NULL;
    natsInbox_Create(inbox);
    cr_assert_eq(natsConnection_SubscribeSync(&replies, nc, *inbox), NATS_OK);
    char body[256];
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.change.v1\",\"change_id\":\"%s\",\"service\":"
             "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
             "\"timeout_ms\":%d}", cid, timeout_ms);
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", *inbox, body),
                 NATS_OK);
    return replies;
}

/* Claims seen by one sonard, the other coordinator played by the test: it
 * registers as another sonard (so sonard claims) and claims change ids
 * first. A gather that lost its claim does not report at its deadline: it
 * answers with the winner's report when that comes within a grace, and
 * reports itself only when none came (the winner is presumed gone). */
Test(coordinator, a_gather_that_lost_its_claim_adopts_the_winners_report_or_reports_after_a_grace)
{
    const char *names[] = {"alpha", "frozen"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    pid_t frozen = start_service("frozen", NULL, NULL, NULL, NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    stop_pid(frozen, SIGSTOP); /* every gather runs to its deadline */
    register_by_hand("sonard", 60000); /* "another coordinator" */
    cr_assert(TEST_WAIT_UNTIL(change_data_range("claims", "peers").most == 1, 10000),
              "sonard did not take the registration for another coordinator");
    report_count rc = {.ids = json_object()};
    pthread_mutex_init(&rc.mu, NULL);
    natsSubscription *reports = NULL;
    cr_assert_eq(natsConnection_Subscribe(&reports, nc, "sonar.report.chillybin", on_report, &rc),
                 NATS_OK);

    /* The winner reports after our deadline, within the grace: adopted. */
    claim_first("lost-a");
    natsInbox *inbox = NULL;
    natsSubscription *replies = announce_async("lost-a", 1000, &inbox);
    cr_assert(TEST_WAIT_UNTIL(change_data_range("claims", "lost").most == 1, 10000),
              "the claim was not lost");
    natsMsg *m = NULL;
    cr_assert_neq(natsSubscription_NextMsg(&m, replies, 1500), NATS_OK,
                  "reported at its deadline although it lost the claim: %.*s",
                  m ? natsMsg_GetDataLength(m) : 0, m ? natsMsg_GetData(m) : "");
    const char *winners =
        "{\"type\":\"sonar.report.v1\",\"change_id\":\"lost-a\",\"service\":\"chillybin\","
        "\"version\":\"2\",\"address\":\"http://h:1\",\"verdict\":\"pass\","
        "\"started_at\":\"2026-12-06T00:00:00.000Z\",\"duration_ms\":7,\"counts\":{"
        "\"expected\":0,\"pass\":0,\"fail\":0,\"none\":0,\"incomplete\":0},\"results\":[]}";
    natsMsg *w = NULL;
    cr_assert_eq(natsMsg_Create(&w, "sonar.report.chillybin", NULL, winners, (int)strlen(winners)),
                 NATS_OK);
    natsMsgHeader_Set(w, "Sonar-Coordinator", "the-winner");
    cr_assert_eq(natsConnection_PublishMsg(nc, w), NATS_OK);
    natsMsg_Destroy(w);
    cr_assert_eq(natsSubscription_NextMsg(&m, replies, 10000), NATS_OK, "no reply for lost-a");
    cr_assert_eq(natsMsg_GetDataLength(m), (int)strlen(winners), "%.*s",
                 natsMsg_GetDataLength(m), natsMsg_GetData(m));
    cr_assert(memcmp(natsMsg_GetData(m), winners, strlen(winners)) == 0,
              "the reply is not the winner's report");
    natsMsg_Destroy(m);
    cr_assert_eq(change_data_range("claims", "adopted").most, 1);
    /* Only the winner's report was published (by the test). */
    cr_assert_not(TEST_WAIT_UNTIL(reports_of(&rc, "lost-a") > 1, 1000), "lost-a: two reports");
    natsSubscription_Destroy(replies);
    natsInbox_Destroy(inbox);

    /* No winner's report at all: after the deadline and the grace, its own. */
    claim_first("lost-b");
    replies = announce_async("lost-b", 1000, &inbox);
    cr_assert_eq(natsSubscription_NextMsg(&m, replies, 15000), NATS_OK, "no reply for lost-b");
    json_t *report = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    cr_assert_str_eq(str(report, "change_id"), "lost-b", "%.*s", natsMsg_GetDataLength(m),
                     natsMsg_GetData(m));
    cr_assert_str_eq(str(report, "verdict"), "incomplete", "frozen stayed silent");
    cr_assert_geq(json_integer_value(json_object_get(report, "duration_ms")), 1000 + 2000,
                  "reported before its deadline and the grace: %lld ms",
                  (long long)json_integer_value(json_object_get(report, "duration_ms")));
    json_decref(report);
    natsMsg_Destroy(m);
    cr_assert(TEST_WAIT_UNTIL(reports_of(&rc, "lost-b") == 1, 5000), "its own report published");
    kill(frozen, SIGCONT);
    natsSubscription_Destroy(replies);
    natsInbox_Destroy(inbox);
    natsSubscription_Unsubscribe(reports);
    natsSubscription_Destroy(reports);
    json_decref(rc.ids);
}

/* A claim that fails for another reason than "claimed already" (here: its
 * stream was deleted) counts as won: the gather reports at once, without
 * waiting out the claim. */
Test(coordinator, a_failed_claim_counts_as_won)
{
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    register_by_hand("sonard", 60000); /* "another coordinator": sonard claims */
    cr_assert(TEST_WAIT_UNTIL(change_data_range("claims", "peers").most == 1, 10000));
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    cr_assert_eq(js_DeleteStream(js, "SONAR_CLAIMS", NULL, NULL), NATS_OK);
    jsCtx_Destroy(js);
    json_t *r = announce("chillybin", "claim-fails", 10000);
    cr_assert_str_eq(str(r, "type"), "sonar.report.v1");
    cr_assert_str_eq(str(r, "verdict"), "pass");
    cr_assert_lt(json_integer_value(json_object_get(r, "duration_ms")), 2000,
                 "held for the claim's answer as if none came");
    json_decref(r);
    cr_assert_eq(change_data_range("claims", "made").most, 1);
    cr_assert_eq(change_data_range("claims", "lost").most, 0);
}

/* The coordinator that gathers dies: a retry on the other one waits until
 * that gather's deadline (plus grace) and then gathers itself. */
Test(coordinator, a_retry_gathers_anew_when_the_coordinator_that_gathered_died)
{
    pid_t frozen = 0;
    pid_t second = two_coordinators_and_a_silent_dependent(&frozen);
    /* Long enough to outlast finding out which coordinator gathers. */
    const char *body = "{\"type\":\"sonar.change.v1\",\"change_id\":\"chg-dead\",\"service\":"
                       "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
                       "\"timeout_ms\":4000}";
    natsInbox *inbox;
    natsSubscription *replies = announce_until_noted(body, &inbox);
    /* Which one gathers? Freeze the first: if the one left noted a remote
     * gather, the first was gathering. */
    stop_pid(sonard_pid, SIGSTOP);
    long noted = -1; /* -1: the running one did not answer (yet) */
    cr_assert(TEST_WAIT_UNTIL((noted = max_remote_gathers()) >= 0, 10000),
              "the second sonard does not answer $SRV.STATS");
    bool first_gathers = noted >= 1;
    test_proc_signal(proc_of(sonard_pid), SIGCONT);
    stop_pid(first_gathers ? sonard_pid : second, SIGKILL);
    char killed_at[48];
    sonar_format_rfc3339(sonar_wall_ms(), killed_at, sizeof killed_at);
    /* Retried every second, as a deploy script would: until the server has
     * noticed the kill, the queue group may still hand a request to the dead
     * coordinator's subscription, and it is lost. The retries that reach the
     * survivor all wait for the same outcome. */
    natsMsg *m = NULL;
    int64_t until = test_now_ms() + 30000;
    while (m == NULL && test_now_ms() < until) {
        cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox,
                                                         body), NATS_OK);
        if (natsSubscription_NextMsg(&m, replies, 1000) != NATS_OK)
            m = NULL;
    }
    cr_assert_not_null(m, "the retries got no reply");
    json_t *report = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    cr_assert_str_eq(str(report, "type"), "sonar.report.v1", "%.*s", natsMsg_GetDataLength(m),
                     natsMsg_GetData(m));
    cr_assert_str_eq(str(report, "change_id"), "chg-dead");
    cr_assert_str_eq(str(report, "verdict"), "incomplete");
    /* Not the dead one's gather (it never reported): a new one, begun after
     * the kill (once the dead gather's deadline and grace had passed).
     * RFC 3339 UTC times of one format compare as strings. */
    cr_assert(strcmp(str(report, "started_at"), killed_at) > 0,
              "the report's gather began at %s, before the kill at %s", str(report, "started_at"),
              killed_at);
    json_decref(report);
    natsMsg_Destroy(m);
    kill(frozen, SIGCONT);
    natsSubscription_Destroy(replies);
    natsInbox_Destroy(inbox);
}

/* Whether the events stream's last report of `service` is that of `cid`. */
static bool stream_has_report(const char *service, const char *cid)
{
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.report.%s", service);
    jsCtx *js = NULL;
    natsMsg *m = NULL;
    bool has = false;
    if (natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_GetLastMsg(&m, js, "SONAR_EVENTS", subject, NULL, NULL) == NATS_OK) {
        json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
        has = strcmp(str(doc, "change_id"), cid) == 0;
        json_decref(doc);
    }
    natsMsg_Destroy(m);
    jsCtx_Destroy(js);
    return has;
}

/* A counter of the catch-up in the $SRV.STATS of the sonard that answers
 * first (-1 when none answers or it has no catch-up). */
static json_int_t catchup_stat(const char *key)
{
    json_t *stats = request("$SRV.STATS.sonard", "", 2000);
    json_int_t n = -1;
    size_t i;
    json_t *ep;
    json_array_foreach(json_object_get(stats, "endpoints"), i, ep) {
        json_t *v = json_object_get(json_object_get(json_object_get(ep, "data"), "catchup"), key);
        if (json_is_integer(v))
            n = json_integer_value(v);
    }
    json_decref(stats);
    return n;
}

/* Stops the first sonard, then waits until the one left (the only one
 * answering now) has the report `expected` of change `cid`. */
static void only_the_other_has(const char *cid, json_t *expected, const char *why)
{
    stop_pid(sonard_pid, SIGTERM);
    sonard_pid = 0;
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 1, 10000), "the other sonard answers");
    char body[128];
    snprintf(body, sizeof body, "{\"change_id\":\"%s\"}", cid);
    json_t *got = NULL;
    bool has = TEST_WAIT_UNTIL((json_decref(got), got = request("sonar.api.report", body, 1000),
                                strcmp(str(got, "type"), "sonar.report.v1") == 0),
                               10000);
    cr_assert(has, "%s: %s", why, got ? json_dumps(got, 0) : "no answer");
    cr_assert(json_equal(got, expected), "the report stored is the one published");
    json_decref(got);
}

/* A report published while a coordinator was down reaches it from the
 * events stream when it starts again: every coordinator's history holds
 * every report. */
Test(coordinator, a_coordinator_that_was_down_catches_up_on_the_reports_it_missed)
{
    pid_t second = start_sonard("second.db");
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 2, 10000), "the second sonard is up");
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    /* One report both have: the second's replay starts shortly before it. */
    json_decref(announce("chillybin", "chg-both", 5000));
    cr_assert(TEST_WAIT_UNTIL(stream_has_report("chillybin", "chg-both"), 10000));
    stop_pid(second, SIGTERM);
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 1, 10000), "the second sonard stopped");
    /* Garbage the stream took in meanwhile is replayed too, and survived. */
    const char *garbage[] = {"", "not json", "{\"type\":\"sonar.report.v1\"}",
                             "{\"type\":\"sonar.report.v1\",\"change_id\":\"x\",\"service\":7}"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++)
        cr_assert_eq(natsConnection_PublishString(nc, "sonar.report.chillybin", garbage[i]),
                     NATS_OK);
    json_t *missed = announce("chillybin", "chg-missed", 5000);
    cr_assert_str_eq(str(missed, "type"), "sonar.report.v1");
    /* In the stream before the second starts: it cannot see it go by live. */
    cr_assert(TEST_WAIT_UNTIL(stream_has_report("chillybin", "chg-missed"), 10000));
    start_sonard("second.db");
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 2, 10000), "the second sonard is back");
    only_the_other_has("chg-missed", missed, "the restarted coordinator lacks the report it missed");
    cr_assert_geq(catchup_stat("replayed"), 1 + (json_int_t)(sizeof garbage / sizeof garbage[0]));
    cr_assert_geq(catchup_stat("runs"), 1);
    json_decref(missed);
}

/* The server drops a coordinator that stopped answering its pings (here:
 * frozen); a report published meanwhile goes by it. Once it is back on the
 * bus it replays what it missed. */
Test(coordinator, a_coordinator_cut_off_the_bus_catches_up_after_reconnecting)
{
    /* A server that drops a client silent for about two seconds. */
    static char conf[400];
    static const char *extra[] = {"-c", conf, NULL};
    snprintf(conf, sizeof conf, "%s/ping.conf", dir);
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs("ping_interval: \"1s\"\nping_max: 1\n", f);
    fclose(f);
    test_natsd_stop(&nd);
    nd.extra_args = extra;
    cr_assert(test_natsd_restart(&nd));
    cr_assert(TEST_WAIT_UNTIL(sonard_answers(), 15000), "the first sonard is back on the bus");
    pid_t second = start_sonard("second.db");
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 2, 10000), "the second sonard is up");
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    long clients = test_natsd_clients(&nd);
    cr_assert_gt(clients, 0);
    stop_pid(second, SIGSTOP);
    /* Both of its connections (the bus and its outbox relay's) dropped. */
    cr_assert(TEST_WAIT_UNTIL(test_natsd_clients(&nd) <= clients - 2, 15000),
              "the server kept the frozen coordinator's connections");
    json_t *gap = announce("chillybin", "chg-gap", 5000);
    cr_assert_str_eq(str(gap, "type"), "sonar.report.v1");
    cr_assert(TEST_WAIT_UNTIL(stream_has_report("chillybin", "chg-gap"), 10000));
    test_proc_signal(proc_of(second), SIGCONT);
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 2, 15000), "the second sonard reconnected");
    only_the_other_has("chg-gap", gap, "the reconnected coordinator lacks the report it missed");
    json_decref(gap);
}

Test(coordinator, a_restarted_coordinator_keeps_history_and_rebuilds_the_registry)
{
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    json_t *before = announce("chillybin", "chg-keep", 5000);
    /* The report is stored right after the reply. */
    json_t *stored = NULL;
    cr_assert(TEST_WAIT_UNTIL((json_decref(stored),
                               stored = request("sonar.api.report", "{\"change_id\":\"chg-keep\"}", 1000),
                               json_equal(stored, before)), 3000));
    json_decref(stored);
    stop_pid(sonard_pid, SIGKILL);
    /* Registered while no coordinator runs, beating only every minute: only
     * sonar.discover at the restart can make it known quickly. */
    start_service("latecomer", "chillybin", "pass", "ok", "60000");
    sonard_pid = start_sonard("sonard.db");
    json_t *after = request("sonar.api.report", "{\"change_id\":\"chg-keep\"}", 2000);
    cr_assert(json_equal(before, after), "history survives the restart");
    const char *all[] = {"alpha", "latecomer"};
    cr_assert(TEST_WAIT_UNTIL(all_live(all, 2), 5000), "discover rebuilt the registry");
    /* The stored ids are known again at start: a retry gets the stored
     * report, not a new gather (which would now include the latecomer). */
    json_t *retry = announce("chillybin", "chg-keep", 5000);
    cr_assert(json_equal(before, retry), "a retry after the restart gets the stored report");
    json_decref(retry);
    json_t *r = announce("chillybin", "chg-after", 5000);
    cr_assert_eq(count(r, "pass"), 2);
    json_decref(r);
    json_decref(before);
    json_decref(after);
}

/* Publishes by hand a registration of `name` beating every `hb` ms. */
static void register_by_hand(const char *name, int hb)
{
    char subject[128], body[512];
    snprintf(subject, sizeof subject, "sonar.register.%s", name);
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.register.v1\",\"service\":\"%s\",\"instance\":\"i1\","
             "\"version\":\"1.0.0\",\"address\":\"\",\"depends_on\":[],\"checks\":{},"
             "\"heartbeat_ms\":%d}", name, hb);
    cr_assert_eq(natsConnection_PublishString(nc, subject, body), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
}

static void publish_result(const char *change_id, const char *service, const char *status)
{
    char subject[160], body[512];
    snprintf(subject, sizeof subject, "sonar.result.%s.%s", change_id, service);
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.result.v1\",\"change_id\":\"%s\",\"service\":\"%s\","
             "\"instance\":\"i1\",\"status\":\"%s\",\"checks\":[]}", change_id, service,
             status);
    cr_assert_eq(natsConnection_PublishString(nc, subject, body), NATS_OK);
}

/* sonard keeps a gather's answers to free them together when it ends, up
 * to a limit: a flood of answers past it is freed as it comes, and the
 * first answer of each service still counts. */
Test(coordinator, a_flood_of_answers_to_a_running_gather_is_survived)
{
    register_by_hand("noisy", 60000);
    register_by_hand("quiet", 60000);
    const char *names[] = {"noisy", "quiet"};
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    natsSubscription *gather = NULL, *reply = NULL;
    natsInbox *inbox = NULL;
    natsInbox_Create(&inbox);
    cr_assert_eq(natsConnection_SubscribeSync(&gather, nc, "sonar.gather.chg-flood"), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&reply, nc, inbox), NATS_OK);
    const char *body = "{\"type\":\"sonar.change.v1\",\"change_id\":\"chg-flood\",\"service\":"
                       "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
                       "\"timeout_ms\":60000}";
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox, body),
                 NATS_OK);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, gather, 10000), NATS_OK, "the gather never began");
    natsMsg_Destroy(m);
    publish_result("chg-flood", "noisy", "pass");
    for (int i = 0; i < 5000; i++)
        publish_result("chg-flood", "noisy", "fail"); /* the first answer wins */
    publish_result("chg-flood", "quiet", "none"); /* the last expected: the report now */
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    cr_assert_eq(natsSubscription_NextMsg(&m, reply, 20000), NATS_OK, "no report");
    json_t *report = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    natsMsg_Destroy(m);
    cr_assert_not_null(report);
    cr_assert_str_eq(str(report, "verdict"), "pass", "%s", str(report, "verdict"));
    cr_assert_str_eq(str(result_of(report, "noisy"), "status"), "pass");
    cr_assert_str_eq(str(result_of(report, "quiet"), "status"), "none");
    cr_assert_eq(count(report, "expected"), 2);
    json_decref(report);
    cr_assert(sonard_answers(), "sonard stopped answering after the flood");
    natsSubscription_Destroy(gather);
    natsSubscription_Destroy(reply);
    natsInbox_Destroy(inbox);
}

/* No worker waits for a gather: with one endpoint worker and four gathers
 * waiting for a silent service, the read API still answers at once, and
 * the deadline thread ends all four, each stored. */
Test(coordinator, more_running_gathers_than_workers_block_neither_the_api_nor_deadlines)
{
    stop_pid(sonard_pid, SIGTERM);
    cr_assert(TEST_WAIT_UNTIL(sonard_instances() == 0, 10000));
    char db[400];
    snprintf(db, sizeof db, "%s/one-worker.db", dir);
    const char *argv[] = {test_bin("SONARD_BIN"), "--server", nd.url, "--db", db,
                          "--workers", "1", NULL};
    spawn(argv);
    cr_assert(TEST_WAIT_UNTIL(sonard_answers(), 10000), "sonard does not answer");
    register_by_hand("silent", 60000);
    const char *names[] = {"silent"};
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    natsSubscription *gathers = NULL, *replies = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&gathers, nc, "sonar.gather.*"), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&replies, nc, "test.many.*"), NATS_OK);
    for (int i = 0; i < 4; i++) {
        char body[256], reply[64];
        snprintf(body, sizeof body,
                 "{\"type\":\"sonar.change.v1\",\"change_id\":\"chg-many-%d\",\"service\":"
                 "\"chillybin\",\"version\":\"2\",\"address\":\"http://h:1\","
                 "\"timeout_ms\":2000}", i);
        snprintf(reply, sizeof reply, "test.many.%d", i);
        cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", reply,
                                                         body), NATS_OK);
    }
    natsMsg *m = NULL;
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(natsSubscription_NextMsg(&m, gathers, 10000), NATS_OK, "gather %d never began",
                     i);
        natsMsg_Destroy(m);
    }
    /* All four wait for "silent"; the one worker is free for the read API. */
    json_t *services = request("sonar.api.services", "", 10000);
    cr_assert_not_null(services, "the read API did not answer");
    json_decref(services);
    cr_assert_eq(natsSubscription_NextMsg(&m, replies, 0), NATS_TIMEOUT,
                 "a report came before the read API answered: it waited for a gather");
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(natsSubscription_NextMsg(&m, replies, 20000), NATS_OK, "report %d missing", i);
        json_t *report = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
        natsMsg_Destroy(m);
        cr_assert_str_eq(str(report, "verdict"), "incomplete");
        cr_assert_str_eq(str(result_of(report, "silent"), "reason"), "no answer by the deadline");
        char body[128];
        snprintf(body, sizeof body, "{\"change_id\":\"%s\"}", str(report, "change_id"));
        json_t *stored = NULL;
        cr_assert(TEST_WAIT_UNTIL((json_decref(stored),
                                   stored = request("sonar.api.report", body, 1000),
                                   stored != NULL && json_object_get(stored, "results") != NULL),
                                  10000),
                  "report %s not stored", str(report, "change_id"));
        json_decref(stored);
        json_decref(report);
    }
    natsSubscription_Destroy(gathers);
    natsSubscription_Destroy(replies);
}

/* The reply leaves before the report is stored (storing is background
 * work); a read right after the reply still finds it, by id and in the
 * history. Thirty times, with the store writer busy with the others. */
Test(coordinator, a_report_is_readable_as_soon_as_it_was_replied)
{
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    for (int i = 0; i < 30; i++) {
        char cid[32], body[96];
        snprintf(cid, sizeof cid, "read-%d", i);
        json_t *replied = announce("chillybin", cid, 5000);
        cr_assert_str_eq(str(replied, "type"), "sonar.report.v1");
        snprintf(body, sizeof body, "{\"change_id\":\"%s\"}", cid);
        json_t *stored = request("sonar.api.report", body, 5000);
        cr_assert(json_equal(stored, replied), "%s: %s", cid, stored ? json_dumps(stored, 0) : "-");
        json_decref(stored);
        json_t *hist = request("sonar.api.history", "{\"service\":\"chillybin\",\"limit\":1}",
                               5000);
        json_t *newest = json_array_get(json_object_get(hist, "reports"), 0);
        cr_assert_str_eq(str(newest, "change_id"), cid, "history lacks %s", cid);
        json_decref(hist);
        json_decref(replied);
    }
}

Test(coordinator, an_instance_expires_after_three_missed_heartbeats)
{
    /* t0 before the heartbeat is sent: sonard sees it no earlier, so the
     * bound holds however slowly the first is_live() below comes back. */
    int64_t t0 = test_now_ms();
    register_by_hand("ghost", 200);
    cr_assert(TEST_WAIT_UNTIL(is_live("ghost"), 5000));
    cr_assert(TEST_WAIT_UNTIL(!is_live("ghost"), 5000));
    int64_t took = test_now_ms() - t0;
    cr_assert_geq(took, 600, "expired after %lld ms, before 3 heartbeats of 200 ms", (long long)took);
    json_t *doc = request("sonar.api.services", "{}", 1000);
    cr_assert_not_null(service_entry(doc, "ghost"), "an expired service stays known");
    json_decref(doc);
}

Test(coordinator, the_read_api_lists_services_and_the_graph)
{
    const char *names[] = {"alpha"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    json_t *doc = request("sonar.api.services", "", 1000);
    json_t *a = service_entry(doc, "alpha");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(a, "depends_on"), 0)), "chillybin");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(a, "versions"), 0)), "1.0.0");
    json_t *inst = json_array_get(json_object_get(a, "instances"), 0);
    cr_assert_gt(json_integer_value(json_object_get(inst, "heartbeat_ms")), 0);
    cr_assert_eq(strlen(str(inst, "last_seen")), 24, "RFC 3339 with milliseconds");
    json_decref(doc);
    json_t *g = request("sonar.api.graph", "", 1000);
    cr_assert_str_eq(str(g, "type"), "sonar.graph.v1");
    json_t *edge = json_array_get(json_object_get(g, "edges"), 0);
    cr_assert_str_eq(str(edge, "from"), "alpha");
    cr_assert_str_eq(str(edge, "to"), "chillybin");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(edge, "checks"), 0)), "probe");
    json_decref(g);
    json_t *nf = request("sonar.api.report", "{\"change_id\":\"nope\"}", 1000);
    cr_assert_eq(json_integer_value(json_object_get(nf, "code")), 404);
    json_decref(nf);
    /* sonard answers NATS service discovery too. */
    json_t *ping = request("$SRV.PING.sonard", "", 1000);
    cr_assert_str_eq(str(ping, "name"), "sonard");
    json_decref(ping);
}

Test(coordinator, garbage_on_every_subject_gets_errors_and_is_survived)
{
    static const char *subjects[] = {
        "sonar.register.x", "sonar.leave.x", "sonar.result.c1.x", "sonar.report.x",
        "sonar.gather.x",
        "sonar.change.x", "sonar.api.services", "sonar.api.report", "sonar.api.history",
        "sonar.api.graph",
    };
    static const char *bodies[] = {
        "not json", "[1,2]", "{\"type\":\"sonar.register.v9\"}", "{\"type\":42}", "\"str\"",
        "{\"type\":\"sonar.change.v1\",\"service\":\"a b\",\"version\":\"1\",\"address\":\"x\"}",
        "{\"type\":\"sonar.change.v1\",\"service\":\"y\",\"version\":\"1\",\"address\":\"x\"}",
        "{\"service\":\"bad name\",\"limit\":5000}", "{\"change_id\":7}", "{",
    };
    size_t n_subjects = sizeof subjects / sizeof subjects[0];
    size_t n_bodies = sizeof bodies / sizeof bodies[0];
    int errors = 0, expected_errors = 0;
    for (size_t i = 0; i < n_subjects; i++) {
        for (size_t k = 0; k < n_bodies; k++) {
            /* A JSON object can be a valid request to the read API (extra
             * fields are ignored): then any well-formed answer will do. */
            json_t *as_json = json_loads(bodies[k], 0, NULL);
            bool api_ok = strncmp(subjects[i], "sonar.api.", 10) == 0 && json_is_object(as_json);
            json_decref(as_json);
            /* sonar.report.* is also the SONAR_EVENTS stream's subject: a
             * request there gets JetStream's PubAck, so garbage is published. */
            if (strncmp(subjects[i], "sonar.report.", 13) == 0) {
                natsConnection_PublishString(nc, subjects[i], bodies[k]);
                continue;
            }
            natsMsg *m = NULL;
            json_t *doc = request_raw(subjects[i], bodies[k], strlen(bodies[k]), 3000, &m);
            if (api_ok) {
                cr_assert(strncmp(str(doc, "type"), "sonar.", 6) == 0, "%s <- %s", subjects[i],
                          bodies[k]);
                json_decref(doc);
                natsMsg_Destroy(m);
                continue;
            }
            expected_errors++;
            cr_assert_not_null(doc, "no reply on %s to %s", subjects[i], bodies[k]);
            cr_assert_str_eq(str(doc, "type"), "sonar.error.v1", "%s <- %s", subjects[i],
                             bodies[k]);
            json_int_t code = json_integer_value(json_object_get(doc, "code"));
            cr_assert(code == 400 || code == 404, "%s <- %s: code %lld", subjects[i], bodies[k],
                      (long long)code);
            const char *hdr = NULL;
            cr_assert_eq(natsMsgHeader_Get(m, "Nats-Service-Error-Code", &hdr), NATS_OK,
                         "%s <- %s: no error header", subjects[i], bodies[k]);
            cr_assert_eq(atoi(hdr), code);
            errors++;
            json_decref(doc);
            natsMsg_Destroy(m);
        }
    }
    cr_assert_eq(errors, expected_errors);
    /* Oversized, and binary. */
    size_t big = 600 * 1024;
    char *huge = malloc(big);
    memset(huge, '{', big);
    for (size_t i = 0; i < n_subjects; i++) {
        if (strncmp(subjects[i], "sonar.report.", 13) == 0) { /* the stream's: see above */
            natsConnection_Publish(nc, subjects[i], huge, (int)big);
            continue;
        }
        json_t *doc = request_raw(subjects[i], huge, big, 3000, NULL);
        cr_assert_str_eq(str(doc, "type"), "sonar.error.v1", "oversized on %s", subjects[i]);
        json_decref(doc);
        static const char bin[] = {0, 1, 2, (char)0xff, (char)0xfe, '{', 0};
        doc = request_raw(subjects[i], bin, sizeof bin, 3000, NULL);
        cr_assert_str_eq(str(doc, "type"), "sonar.error.v1", "binary on %s", subjects[i]);
        json_decref(doc);
    }
    free(huge);
    /* Plain garbage without a reply subject, everywhere. */
    for (size_t i = 0; i < n_subjects; i++)
        natsConnection_PublishString(nc, subjects[i], "\x01garbage");
    natsConnection_PublishString(nc, "sonar.discover", "garbage");
    natsConnection_PublishString(nc, "sonar.check.x", "garbage");
    natsConnection_Flush(nc);
    /* Still alive and working. */
    const char *names[] = {"alpha"};
    start_service("alpha", "x", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 1), 10000));
    json_t *r = announce("x", "after-garbage", 5000);
    cr_assert_str_eq(str(r, "verdict"), "pass");
    json_decref(r);
    cr_assert_not(test_proc_wait(proc_of(sonard_pid), 0), "sonard is still running");
}

Test(coordinator, sigterm_ends_running_gathers_and_stops_sonard_gracefully)
{
    const char *names[] = {"alpha", "frozen"};
    start_service("alpha", "chillybin", "pass", "ok", NULL);
    pid_t frozen = start_service("frozen", "chillybin", "pass", "ok", NULL);
    cr_assert(TEST_WAIT_UNTIL(all_live(names, 2), 10000));
    json_t *done = announce("chillybin", "before-stop", 5000);
    json_decref(done);
    stop_pid(frozen, SIGSTOP);
    natsInbox *inbox;
    natsSubscription *sub;
    natsSubscription *gathering;
    natsInbox_Create(&inbox);
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, inbox), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&gathering, nc, "sonar.gather.at-stop"), NATS_OK);
    cr_assert_eq(natsConnection_PublishRequestString(nc, "sonar.change.chillybin", inbox,
        "{\"type\":\"sonar.change.v1\",\"change_id\":\"at-stop\",\"service\":\"chillybin\","
        "\"version\":\"2\",\"address\":\"http://h:1\",\"timeout_ms\":60000}"), NATS_OK);
    /* The gather is under way once sonard announced it. */
    natsMsg *g = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&g, gathering, 10000), NATS_OK);
    json_t *gdoc = json_loadb(natsMsg_GetData(g), (size_t)natsMsg_GetDataLength(g), 0, NULL);
    cr_assert_str_eq(str(gdoc, "type"), "sonar.gather.v1");
    cr_assert_eq(json_array_size(json_object_get(gdoc, "expected")), 2);
    json_decref(gdoc);
    natsMsg_Destroy(g);
    natsSubscription_Destroy(gathering);
    int64_t t0 = test_now_ms();
    kill(sonard_pid, SIGTERM);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, sub, 20000), NATS_OK, "the waiting caller is answered");
    cr_assert_lt(test_now_ms() - t0, 20000, "not at the 60 s deadline");
    json_t *r = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    cr_assert_str_eq(str(r, "verdict"), "incomplete");
    cr_assert_str_eq(str(result_of(r, "frozen"), "reason"),
                     "no answer before the coordinator shut down");
    json_decref(r);
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    kill(frozen, SIGCONT);
    test_proc *sonard = proc_of(sonard_pid);
    cr_assert(test_proc_wait(sonard, 10000), "sonard did not stop");
    cr_assert_eq(test_proc_exit_code(sonard), 0, "%s", sonard->err);
}

Test(coordinator, reports_past_the_retention_are_pruned)
{
    stop_pid(sonard_pid, SIGTERM);
    char db[400];
    snprintf(db, sizeof db, "%s/short.db", dir);
    const char *argv[] = {test_bin("SONARD_BIN"), "--server", nd.url, "--db", db,
                          "--retention", "1s", NULL};
    spawn(argv);
    cr_assert(TEST_WAIT_UNTIL(sonard_answers(), 10000));
    json_t *r = announce("chillybin", "short-lived", 2000);
    cr_assert_str_eq(str(r, "type"), "sonar.report.v1");
    json_decref(r);
    json_t *got = NULL;
    cr_assert(TEST_WAIT_UNTIL((json_decref(got),
                               got = request("sonar.api.report", "{\"change_id\":\"short-lived\"}", 1000),
                               strcmp(str(got, "type"), "sonar.report.v1") == 0), 3000), "stored first");
    int64_t t0 = test_now_ms();
    cr_assert(TEST_WAIT_UNTIL((json_decref(got),
                               got = request("sonar.api.report", "{\"change_id\":\"short-lived\"}", 1000),
                               json_integer_value(json_object_get(got, "code")) == 404), 10000),
              "pruned after the retention");
    cr_assert_geq(test_now_ms() - t0, 500, "not before it was a second old");
    json_decref(got);
}

static char sonard_said[8192]; /* stdout then stderr of the last run_sonard */

/* Runs sonard with `args` to completion; returns its exit status (-1 if it
 * did not finish), its output in sonard_said. */
static int run_sonard(const char *const *args, int n)
{
    const char *argv[16];
    argv[0] = test_bin("SONARD_BIN");
    for (int i = 0; i < n && i < 14; i++)
        argv[i + 1] = args[i];
    argv[n + 1] = NULL;
    test_proc p;
    int rc = test_proc_run(&p, dir, argv, NULL, 15000);
    snprintf(sonard_said, sizeof sonard_said, "%s%s", p.out ? p.out : "", p.err ? p.err : "");
    test_proc_finish(&p);
    return rc;
}

Test(coordinator, flags_are_validated_with_clear_exit_codes)
{
    const char *help[] = {"--help"};
    cr_assert_eq(run_sonard(help, 1), 0);
    cr_assert(strstr(sonard_said, "usage: sonard") != NULL, "%s", sonard_said);
    const char *bad_retention[] = {"--retention", "forever"};
    cr_assert_eq(run_sonard(bad_retention, 2), 2);
    cr_assert(strstr(sonard_said, "--retention 'forever' is not a duration") != NULL, "%s",
              sonard_said);
    const char *bad_timeout[] = {"--default-timeout", "11m"};
    cr_assert_eq(run_sonard(bad_timeout, 2), 2);
    const char *bad_workers[] = {"--workers", "0"};
    cr_assert_eq(run_sonard(bad_workers, 2), 2);
    const char *unknown[] = {"--frobnicate"};
    cr_assert_eq(run_sonard(unknown, 1), 2);
    const char *extra[] = {"stray"};
    cr_assert_eq(run_sonard(extra, 1), 2);
    const char *bad_db[] = {"--server", nd.url, "--db", "/nonexistent-dir/x/sonard.db"};
    cr_assert_eq(run_sonard(bad_db, 4), 1, "a database that cannot be opened");
    cr_assert(strstr(sonard_said, "cannot open database") != NULL, "%s", sonard_said);
}
