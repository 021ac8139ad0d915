/*
 * Benchmark: announce -> report latency through sonard against a raw nats.c
 * scatter-gather over the same responder connections, in the same run; and
 * sonard's resident memory with 1000 registered services.
 *
 *   meson test -C build --benchmark --suite bench -v      (or run the binary:
 *   SONARD_BIN=build/services/coordinator/sonard build/tests/bench/bench_gather [sizes...])
 *
 * Each responder is its own NATS connection (global message delivery, so
 * 500 connections do not mean 500 delivery threads). It registers as a
 * service, answers `sonar.check.*` in a queue group named after itself:
 * the first three answer `pass` with one check, the rest `none`.
 * The raw baseline publishes the same check request itself and waits for
 * the N answers on `sonar.result.<id>.*`; the sonard path sends
 * `sonar.change.bench` and waits for the report. Iterations alternate.
 * A third measurement, also alternated, is a bare request/reply from the
 * same client to a responder that answers at once: the round trip that a
 * coordinator answering a request puts in front of the raw scatter-gather.
 * The "floor" column is (raw + round trip) / raw; "over floor" is sonard
 * minus (raw + round trip), negative when sonard's own hops cost less than
 * the bench's round trip (its answers then overlap the gather's wait).
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <nats/nats.h>

#include "natsd.h"

#define MAX_RESPONDERS 500
#define PASSING 3

typedef struct responder {
    natsConnection *nc;
    natsSubscription *sub;
    char name[32];
    bool pass;
} responder;

static test_natsd nd;
static char dir[256];
static responder resp[MAX_RESPONDERS];
static int n_resp;
static natsConnection *client;
static natsConnection *echo_nc; /* answers bench.echo at once */

static pid_t sonards[2]; /* started, for die() to stop */

static void die(const char *what)
{
    fprintf(stderr, "bench_gather: %s\n", what);
    /* Nothing left running behind: a later test could meet it on a reused port. */
    for (int i = 0; i < 2; i++)
        if (sonards[i] > 0) {
            kill(sonards[i], SIGKILL);
            waitpid(sonards[i], NULL, 0);
        }
    test_natsd_destroy(&nd);
    exit(1);
}

static void on_check(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    responder *r = closure;
    json_t *doc = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    const char *cid = json_string_value(json_object_get(doc, "change_id"));
    if (cid != NULL) {
        char subject[160], body[512];
        snprintf(subject, sizeof subject, "sonar.result.%s.%s", cid, r->name);
        if (r->pass)
            snprintf(body, sizeof body,
                     "{\"type\":\"sonar.result.v1\",\"change_id\":\"%s\",\"service\":\"%s\","
                     "\"instance\":\"i1\",\"status\":\"pass\",\"duration_ms\":0,\"checks\":"
                     "[{\"name\":\"probe\",\"status\":\"pass\",\"duration_ms\":0,"
                     "\"message\":\"ok\"}]}", cid, r->name);
        else
            snprintf(body, sizeof body,
                     "{\"type\":\"sonar.result.v1\",\"change_id\":\"%s\",\"service\":\"%s\","
                     "\"instance\":\"i1\",\"status\":\"none\",\"duration_ms\":0,\"checks\":[]}",
                     cid, r->name);
        natsConnection_PublishString(nc, subject, body);
    }
    json_decref(doc);
    natsMsg_Destroy(msg);
}

static natsConnection *connect_one(bool global_delivery)
{
    natsOptions *o;
    natsConnection *nc = NULL;
    natsOptions_Create(&o);
    natsOptions_SetURL(o, nd.url);
    natsOptions_SetSendAsap(o, true);
    natsOptions_UseGlobalMessageDelivery(o, global_delivery);
    natsOptions_SetMaxPendingMsgs(o, 1000000);
    if (natsConnection_Connect(&nc, o) != NATS_OK)
        die("cannot connect");
    natsOptions_Destroy(o);
    return nc;
}

static void register_responder(responder *r)
{
    char subject[64], body[512];
    snprintf(subject, sizeof subject, "sonar.register.%s", r->name);
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.register.v1\",\"service\":\"%s\",\"instance\":\"i1\","
             "\"version\":\"1.0.0\",\"address\":\"\",\"depends_on\":[%s],\"checks\":{%s},"
             "\"heartbeat_ms\":3600000}", r->name, r->pass ? "\"bench\"" : "",
             r->pass ? "\"bench\":[\"probe\"]" : "");
    natsConnection_PublishString(r->nc, subject, body);
}

static void grow_to(int n)
{
    for (; n_resp < n; n_resp++) {
        responder *r = &resp[n_resp];
        snprintf(r->name, sizeof r->name, "svc%03d", n_resp);
        r->pass = n_resp < PASSING;
        r->nc = connect_one(true);
        if (natsConnection_QueueSubscribe(&r->sub, r->nc, "sonar.check.*", r->name, on_check, r) !=
            NATS_OK)
            die("subscribe");
        natsConnection_Flush(r->nc);
        register_responder(r);
    }
    for (int i = 0; i < n_resp; i++)
        natsConnection_Flush(resp[i].nc);
}

static int live_services(void)
{
    natsMsg *m = NULL;
    if (natsConnection_RequestString(&m, client, "sonar.api.services", "", 5000) != NATS_OK)
        return -1;
    json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    int live = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(doc, "services"), i, s)
        live += json_is_true(json_object_get(s, "live"));
    json_decref(doc);
    natsMsg_Destroy(m);
    return live;
}

/* With BENCH_COORDINATORS=2: how many sonards answer $SRV.STATS saying they
 * see `live` live services and know another coordinator (so they claim). */
static int coordinators_ready(int live)
{
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    int ready = 0;
    if (natsInbox_Create(&inbox) == NATS_OK &&
        natsConnection_SubscribeSync(&sub, client, inbox) == NATS_OK &&
        natsConnection_PublishRequestString(client, "$SRV.STATS.sonard", inbox, "") == NATS_OK) {
        natsMsg *m = NULL;
        while (natsSubscription_NextMsg(&m, sub, 300) == NATS_OK) {
            json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0,
                                     NULL);
            size_t i;
            json_t *ep;
            json_array_foreach(json_object_get(doc, "endpoints"), i, ep) {
                json_t *data = json_object_get(ep, "data");
                json_t *seen = json_object_get(json_object_get(data, "services"), "live");
                json_t *peers = json_object_get(json_object_get(data, "claims"), "peers");
                /* (a sonard without claims -- an older build, for A/B -- has no peers field) */
                if (json_is_integer(seen) && json_integer_value(seen) == live &&
                    (json_is_true(peers) || peers == NULL))
                    ready++;
            }
            json_decref(doc);
            natsMsg_Destroy(m);
        }
    }
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    return ready;
}

/* ---- raw scatter-gather ---------------------------------------------------- */

typedef struct gather {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int got;
} gather;

static void on_raw_result(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    gather *g = closure;
    pthread_mutex_lock(&g->mu);
    g->got++;
    pthread_cond_signal(&g->cond);
    pthread_mutex_unlock(&g->mu);
    natsMsg_Destroy(msg);
}

static int run_no; /* makes change ids unique when a size is repeated */

static int64_t raw_once(int n, int iter)
{
    gather g = {.got = 0};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cond, NULL);
    char cid[48], subject[96], body[512];
    snprintf(cid, sizeof cid, "raw-%d-%d-%d", run_no, n, iter);
    snprintf(subject, sizeof subject, "sonar.result.%s.*", cid);
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.check.v1\",\"change_id\":\"%s\",\"service\":\"bench\","
             "\"version\":\"2.0.0\",\"address\":\"http://h:1\",\"timeout_ms\":9000}", cid);
    int64_t ns0;
    struct timespec ts;
    natsSubscription *sub;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns0 = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (natsConnection_Subscribe(&sub, client, subject, on_raw_result, &g) != NATS_OK)
        die("raw subscribe");
    natsSubscription_SetPendingLimits(sub, -1, -1);
    natsConnection_PublishString(client, "sonar.check.bench", body);
    pthread_mutex_lock(&g.mu);
    while (g.got < n)
        pthread_cond_wait(&g.cond, &g.mu);
    pthread_mutex_unlock(&g.mu);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t took = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - ns0;
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cond);
    return took;
}

static int64_t sonard_once(int n, int iter)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"sonar.change.v1\",\"change_id\":\"co-%d-%d-%d\",\"service\":\"bench\","
             "\"version\":\"2.0.0\",\"address\":\"http://h:1\",\"timeout_ms\":10000}", run_no, n,
             iter);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns0 = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    natsMsg *m = NULL;
    natsStatus rs = natsConnection_RequestString(&m, client, "sonar.change.bench", body, 20000);
    if (rs != NATS_OK) {
        fprintf(stderr, "announce co-%d-%d: %s\n", n, iter, natsStatus_GetText(rs));
        die("announce: no reply");
    }
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t took = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - ns0;
    json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *counts = json_object_get(doc, "counts");
    const char *verdict = json_string_value(json_object_get(doc, "verdict"));
    if (json_integer_value(json_object_get(counts, "expected")) != n ||
        json_integer_value(json_object_get(counts, "pass")) != PASSING ||
        verdict == NULL || strcmp(verdict, "pass") != 0) {
        fprintf(stderr, "unexpected report: %.*s\n", natsMsg_GetDataLength(m), natsMsg_GetData(m));
        die("report does not match the responders");
    }
    json_decref(doc);
    natsMsg_Destroy(m);
    return took;
}

static void on_echo(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    natsConnection_PublishString(nc, natsMsg_GetReply(msg), "{}");
    natsMsg_Destroy(msg);
}

static int64_t rtt_once(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns0 = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    natsMsg *m = NULL;
    if (natsConnection_RequestString(&m, client, "bench.echo", "{}", 5000) != NATS_OK)
        die("echo: no reply");
    clock_gettime(CLOCK_MONOTONIC, &ts);
    natsMsg_Destroy(m);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - ns0;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(int64_t *v, int n, double p)
{
    int i = (int)(p * (n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

int main(int argc, char **argv)
{
    int sizes[8] = {10, 100, 500};
    int n_sizes = 3;
    if (argc > 1) {
        n_sizes = 0;
        for (int i = 1; i < argc && n_sizes < 8; i++)
            sizes[n_sizes++] = atoi(argv[i]);
    }
    const char *bin = getenv("SONARD_BIN");
    if (bin == NULL)
        die("set SONARD_BIN");
    if (!test_natsd_start(&nd) || !test_mkdtemp(dir, sizeof dir, "bench"))
        die("cannot start nats-server");
    char db[400], log[400];
    snprintf(db, sizeof db, "%s/sonard.db", dir);
    snprintf(log, sizeof log, "%s/sonard.log", dir);
    /* BENCH_COORDINATORS=2: a second sonard beside the first; the announcements
     * are shared between them and every gather claims its change id. */
    bool two = getenv("BENCH_COORDINATORS") != NULL && atoi(getenv("BENCH_COORDINATORS")) == 2;
    pid_t pid = 0, pid2 = 0;
    for (int k = 0; k < (two ? 2 : 1); k++) {
        if (k == 1)
            snprintf(db, sizeof db, "%s/second.db", dir);
        pid_t p = fork();
        if (p == 0) {
            int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
            dup2(fd, 1);
            dup2(fd, 2);
            execl(bin, bin, "--server", nd.url, "--db", db, (char *)NULL);
            _exit(127);
        }
        *(k == 0 ? &pid : &pid2) = p;
        sonards[k] = p;
    }
    if (two)
        printf("two coordinators: announcements shared, every gather claimed\n");
    client = connect_one(false);
    echo_nc = connect_one(false); /* like sonard's: a delivery thread per subscription */
    natsSubscription *echo_sub = NULL;
    if (natsConnection_Subscribe(&echo_sub, echo_nc, "bench.echo", on_echo, NULL) != NATS_OK ||
        natsConnection_Flush(echo_nc) != NATS_OK)
        die("echo subscribe");
    if (!TEST_WAIT_UNTIL(live_services() >= 0, 10000))
        die("sonard does not answer");
    long rss_idle = rss_kib(pid);

    /* Memory: 1000 registered services (depending on something else, so that
     * after they leave they stay known but play no part in the gathers below). */
    for (int i = 0; i < 1000; i++) {
        char subject[64], body[512];
        snprintf(subject, sizeof subject, "sonar.register.mem%04d", i);
        snprintf(body, sizeof body,
                 "{\"type\":\"sonar.register.v1\",\"service\":\"mem%04d\",\"instance\":\"i1\","
                 "\"version\":\"1.0.0\",\"address\":\"http://10.0.0.1:8080\",\"depends_on\":"
                 "[\"elsewhere\"],\"checks\":{\"elsewhere\":[\"probe\"]},\"heartbeat_ms\":3600000}", i);
        natsConnection_PublishString(client, subject, body);
    }
    natsConnection_Flush(client);
    if (!TEST_WAIT_UNTIL(live_services() >= 1000, 30000))
        die("sonard does not see 1000 services");
    printf("sonard RSS: %ld KiB idle, %ld KiB with %d registered live services\n", rss_idle,
           rss_kib(pid), live_services());
    for (int i = 0; i < 1000; i++) {
        char subject[64], body[256];
        snprintf(subject, sizeof subject, "sonar.leave.mem%04d", i);
        snprintf(body, sizeof body,
                 "{\"type\":\"sonar.leave.v1\",\"service\":\"mem%04d\",\"instance\":\"i1\"}", i);
        natsConnection_PublishString(client, subject, body);
    }
    natsConnection_Flush(client);
    if (!TEST_WAIT_UNTIL(live_services() == 0, 30000))
        die("the memory services did not leave");

    printf("%-6s %10s %10s %10s %10s %8s %8s %9s %7s %10s\n", "N", "raw p50", "raw p99",
           "sonard p50", "sonard p99", "p50 x", "p99 x", "rtt p50", "floor", "over floor");
    for (int s = 0; s < n_sizes; s++) {
        int n = sizes[s] > MAX_RESPONDERS ? MAX_RESPONDERS : sizes[s];
        grow_to(n);
        if (!TEST_WAIT_UNTIL(live_services() == n, 30000))
            die("sonard does not see every responder");
        if (two && !TEST_WAIT_UNTIL(coordinators_ready(n) == 2, 30000))
            die("the two coordinators do not both see every responder and each other");
        run_no = s;
        /* Many iterations where they are cheap: medians of a few hundred
         * sub-millisecond gathers move by several percent between runs here. */
        int iters = n <= 10 ? 1500 : n <= 100 ? 300 : 100;
        if (getenv("BENCH_ITERS") != NULL)
            iters = atoi(getenv("BENCH_ITERS"));
        int64_t *raw = calloc((size_t)iters, sizeof *raw);
        int64_t *co = calloc((size_t)iters, sizeof *co);
        int64_t *rtt = calloc((size_t)iters, sizeof *rtt);
        for (int w = 0; w < 5; w++) {
            raw_once(n, -1 - w);
            sonard_once(n, -1 - w);
        }
        bool skip_raw = getenv("BENCH_NO_RAW") != NULL;
        for (int i = 0; i < iters; i++) {
            raw[i] = skip_raw ? 1 : raw_once(n, i);
            co[i] = sonard_once(n, i);
            rtt[i] = rtt_once();
        }
        qsort(raw, (size_t)iters, sizeof *raw, cmp64);
        qsort(co, (size_t)iters, sizeof *co, cmp64);
        qsort(rtt, (size_t)iters, sizeof *rtt, cmp64);
        double r50 = pct(raw, iters, 0.5), r99 = pct(raw, iters, 0.99);
        double c50 = pct(co, iters, 0.5), c99 = pct(co, iters, 0.99);
        double e50 = pct(rtt, iters, 0.5);
        printf("%-6d %8.3fms %8.3fms %8.3fms %8.3fms %7.2fx %7.2fx %7.3fms %6.2fx %8.3fms\n", n,
               r50, r99, c50, c99, c50 / r50, c99 / r99, e50, (r50 + e50) / r50,
               c50 - (r50 + e50));
        printf("       sonard RSS now %ld KiB\n", rss_kib(pid));
        fflush(stdout);
        free(raw);
        free(co);
        free(rtt);
    }

    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    if (pid2 > 0) {
        kill(pid2, SIGTERM);
        waitpid(pid2, NULL, 0);
    }
    for (int i = 0; i < n_resp; i++) {
        natsSubscription_Destroy(resp[i].sub);
        natsConnection_Destroy(resp[i].nc);
    }
    natsSubscription_Destroy(echo_sub);
    natsConnection_Destroy(echo_nc);
    natsConnection_Destroy(client);
    test_natsd_destroy(&nd);
    if (getenv("BENCH_KEEP") == NULL)
        test_rmtree(dir);
    else
        printf("sonard log kept in %s\n", log);
    return 0;
}
