/*
 * bench_outbox: outbox throughput and lag against the raw baselines, in one
 * run on one machine (meson benchmark "outbox"; figures in docs/benchmarks.md).
 *
 *   1. raw SQLite commit rate, one row per transaction, WAL, synchronous
 *      NORMAL and FULL, at the start and again at the end (the higher
 *      counts);
 *   2. raw js_PublishAsync with a Nats-Msg-Id per message (bounded in flight);
 *   3. outbox, batched producer (100 rows per transaction), NORMAL;
 *      producers enqueue with a sonar_outbox_writer (cached INSERT);
 *   4. outbox, one row per transaction, NORMAL and FULL;
 *   5. relay idle CPU over a window.
 *
 * Throughput of 3/4 is end to end: first commit until every row is
 * confirmed by its PubAck. Lag is commit -> delivery to a core subscriber
 * on the stream's subjects (the server forwards a stored message when it
 * sends the PubAck, so this is within microseconds of commit -> PubAck).
 *
 * Environment: BENCH_SCALE (default 1) multiplies every count;
 * BENCH_INFLIGHT sets the relay's max_in_flight.
 */
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "natsd.h"
#include "outbox_util.h"
#include "sonar/sonar.h"

static test_natsd natsd;
static char dir[256];
static double scale = 1.0;

static long scaled(long n)
{
    long v = (long)((double)n * scale);
    return v < 100 ? 100 : v;
}

/* BENCH_INFLIGHT overrides the relay's max_in_flight (0: its default). */
static int inflight(void)
{
    const char *v = getenv("BENCH_INFLIGHT");
    return v ? atoi(v) : 0;
}

static double secs(int64_t ns)
{
    return (double)ns / 1e9;
}

/* ---- 1. raw SQLite ----------------------------------------------------- */

static double sqlite_commit_rate(const char *sync, long n)
{
    char path[320];
    static int nth;
    snprintf(path, sizeof path, "%s/raw-%s-%d.db", dir, sync, nth++);
    sqlite3 *db = tu_db_open(path);
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", sync);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
    sqlite3_exec(db, pragma, NULL, NULL, NULL);
    sqlite3_exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, subject TEXT, payload BLOB)", NULL,
                 NULL, NULL);
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO t(subject, payload) VALUES ('bench.raw', ?1)", -1, &st,
                       NULL);
    char payload[100];
    memset(payload, 'x', sizeof payload);
    int64_t t0 = sonar_now_ns();
    for (long i = 0; i < n; i++) {
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        sqlite3_bind_blob(st, 1, payload, sizeof payload, SQLITE_STATIC);
        sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    double rate = (double)n / secs(sonar_now_ns() - t0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rate;
}

/* Enqueues one event through the writer when there is one, else through
 * sonar_outbox_enqueue() (which prepares the INSERT on every call). */
static void bench_enqueue(sqlite3 *db, sonar_outbox_writer *w, const char *subject,
                          const char *payload, size_t len)
{
    sonar_status s = w ? sonar_outbox_writer_enqueue(NULL, w, subject, payload, len, NULL)
                       : sonar_outbox_enqueue(NULL, db, subject, payload, len, NULL);
    if (s != SONAR_OK) {
        fprintf(stderr, "enqueue: %s\n", sonar_last_error());
        exit(1);
    }
}

/* Producer cost alone: one enqueue per transaction, no relay; with the
 * cached-statement writer or with sonar_outbox_enqueue(). */
static double enqueue_rate(long n, bool writer)
{
    char path[320];
    snprintf(path, sizeof path, "%s/enqueue-only-%d.db", dir, writer);
    sqlite3 *db = tu_db_open(path);
    sonar_outbox_migrate(db);
    sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    sonar_outbox_writer *w = NULL;
    if (writer)
        sonar_outbox_writer_create(&w, db);
    char payload[128];
    int64_t t0 = sonar_now_ns();
    for (long i = 0; i < n; i++) {
        int len = snprintf(payload, sizeof payload, "%ld %-90s", i, "x");
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        bench_enqueue(db, w, "bench.enqueue", payload, (size_t)len);
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    double rate = (double)n / secs(sonar_now_ns() - t0);
    sonar_outbox_writer_destroy(w);
    sqlite3_close(db);
    return rate;
}

/* ---- 2. raw js_PublishAsync --------------------------------------------- */

static double raw_publish_rate(natsConnection *nc, long n)
{
    jsCtx *js = NULL;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 1024;
    natsConnection_JetStream(&js, nc, &jo);
    char payload[100], id[64];
    memset(payload, 'x', sizeof payload);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    int64_t t0 = sonar_now_ns();
    for (long i = 0; i < n; i++) {
        snprintf(id, sizeof id, "raw-%ld", i);
        po.MsgId = id;
        if (js_PublishAsync(js, "raw.x", payload, sizeof payload, &po) != NATS_OK)
            i--; /* stalled at MaxPending: retry */
    }
    jsPubOptions cpo;
    jsPubOptions_Init(&cpo);
    cpo.MaxWait = 60000;
    js_PublishAsyncComplete(js, &cpo);
    double rate = (double)n / secs(sonar_now_ns() - t0);
    jsCtx_Destroy(js);
    return rate;
}

/* ---- 3/4. outbox --------------------------------------------------------- */

typedef struct lagrec {
    int64_t *commit_ns;   /* per event: just before its COMMIT */
    int64_t *lag_ns;      /* per event: delivery - commit */
    long n;
    long received;
    pthread_mutex_t mu;
} lagrec;

static void on_msg(natsConnection *c, natsSubscription *s, natsMsg *m, void *closure)
{
    (void)c;
    (void)s;
    lagrec *lr = closure;
    int64_t now = sonar_now_ns();
    long idx = atol(natsMsg_GetData(m));
    pthread_mutex_lock(&lr->mu);
    if (idx >= 0 && idx < lr->n && lr->lag_ns[idx] == 0) {
        lr->lag_ns[idx] = now - lr->commit_ns[idx];
        lr->received++;
    }
    pthread_mutex_unlock(&lr->mu);
    natsMsg_Destroy(m);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

typedef struct result {
    double commit_rate;   /* producer transactions/s while the relay ran */
    double events_rate;   /* end-to-end events/s */
    double p50_ms, p99_ms;
} result;

static result run_outbox(sonar_bus *bus, natsConnection *subnc, const char *tag,
                         const char *sync, long n, int per_tx)
{
    char path[320], subj[64], filter[64];
    snprintf(path, sizeof path, "%s/outbox-%s.db", dir, tag);
    snprintf(subj, sizeof subj, "bench.%s", tag);
    snprintf(filter, sizeof filter, "bench.%s", tag);
    sqlite3 *db = tu_db_open(path);
    sonar_outbox_migrate(db);
    if (getenv("BENCH_DEFAULT_BUSY") == NULL)
        sonar_outbox_set_busy_handler(db);
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", sync);
    sqlite3_exec(db, pragma, NULL, NULL, NULL);
    lagrec lr = {.n = n};
    lr.commit_ns = calloc((size_t)n, sizeof(int64_t));
    lr.lag_ns = calloc((size_t)n, sizeof(int64_t));
    pthread_mutex_init(&lr.mu, NULL);
    natsSubscription *sub = NULL;
    natsConnection_Subscribe(&sub, subnc, filter, on_msg, &lr);
    natsSubscription_SetPendingLimits(sub, -1, -1);
    natsConnection_Flush(subnc);
    sonar_outbox *ob = NULL;
    sonar_outbox_config ocfg = {.max_in_flight = inflight()};
    if (sonar_outbox_create(&ob, bus, path, &ocfg) != SONAR_OK) {
        fprintf(stderr, "outbox create: %s\n", sonar_last_error());
        exit(1);
    }
    /* The producers use the cached-statement writer (sonar/outbox.h). */
    sonar_outbox_writer *w = NULL;
    if (sonar_outbox_writer_create(&w, db) != SONAR_OK) {
        fprintf(stderr, "outbox writer: %s\n", sonar_last_error());
        exit(1);
    }
    char payload[128];
    int64_t t0 = sonar_now_ns();
    long tx = 0;
    for (long i = 0; i < n;) {
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        long first = i;
        for (int k = 0; k < per_tx && i < n; k++, i++) {
            int len = snprintf(payload, sizeof payload, "%ld %-90s", i, "x");
            bench_enqueue(db, w, subj, payload, (size_t)len);
        }
        int64_t tc = sonar_now_ns();
        for (long j = first; j < i; j++)
            lr.commit_ns[j] = tc;
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        sonar_outbox_notify(ob);
        tx++;
    }
    int64_t t_committed = sonar_now_ns();
    sonar_outbox_stats st;
    for (;;) {
        sonar_outbox_stats_get(ob, &st);
        pthread_mutex_lock(&lr.mu);
        long got = lr.received;
        pthread_mutex_unlock(&lr.mu);
        if (st.published >= n && got >= n)
            break;
        poll(NULL, 0, 1);
    }
    int64_t t_done = sonar_now_ns();
    result r = {0};
    r.commit_rate = (double)tx / secs(t_committed - t0);
    r.events_rate = (double)n / secs(t_done - t0);
    qsort(lr.lag_ns, (size_t)n, sizeof(int64_t), cmp64);
    r.p50_ms = (double)lr.lag_ns[n / 2] / 1e6;
    r.p99_ms = (double)lr.lag_ns[(n * 99) / 100] / 1e6;
    sonar_outbox_destroy(ob);
    natsSubscription_Destroy(sub);
    sonar_outbox_writer_destroy(w);
    sqlite3_close(db);
    free(lr.commit_ns);
    free(lr.lag_ns);
    pthread_mutex_destroy(&lr.mu);
    return r;
}

/* Relay drain rate: rows committed first (relay stopped), then the time
 * until every PubAck arrived. The relay alone, without a producer
 * competing for CPU and the write lock. */
static double drain_rate(sonar_bus *bus, long n)
{
    char path[320];
    snprintf(path, sizeof path, "%s/drain.db", dir);
    sqlite3 *db = tu_db_open(path);
    sonar_outbox_migrate(db);
    char payload[128];
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    for (long i = 0; i < n; i++) {
        int len = snprintf(payload, sizeof payload, "%ld %-90s", i, "x");
        sonar_outbox_enqueue(NULL, db, "bench.drain", payload, (size_t)len, NULL);
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sonar_outbox *ob = NULL;
    sonar_outbox_config ocfg = {.max_in_flight = inflight()};
    int64_t t0 = sonar_now_ns();
    sonar_outbox_create(&ob, bus, path, &ocfg);
    sonar_outbox_stats st;
    do {
        poll(NULL, 0, 1);
        sonar_outbox_stats_get(ob, &st);
    } while (st.published < n);
    double rate = (double)n / secs(sonar_now_ns() - t0);
    sonar_outbox_destroy(ob);
    sqlite3_close(db);
    return rate;
}

/* ---- 5. idle CPU --------------------------------------------------------- */

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void idle_cpu(sonar_bus *bus, double *pct, double *queries_per_s)
{
    char path[320];
    snprintf(path, sizeof path, "%s/idle.db", dir);
    sqlite3 *db = tu_db_open(path);
    sonar_outbox_migrate(db);
    sonar_outbox *ob = NULL;
    sonar_outbox_create(&ob, bus, path, NULL);
    int64_t t0 = sonar_now_ns();
    while (sonar_now_ns() - t0 < 3000000000LL) /* let the idle back-off settle */
        poll(NULL, 0, 100);
    sonar_outbox_stats a, b;
    sonar_outbox_stats_get(ob, &a);
    double c0 = cpu_s();
    int64_t w0 = sonar_now_ns();
    while (sonar_now_ns() - w0 < 10000000000LL)
        poll(NULL, 0, 500);
    double wall = secs(sonar_now_ns() - w0);
    *pct = (cpu_s() - c0) / wall * 100.0;
    sonar_outbox_stats_get(ob, &b);
    *queries_per_s = (double)(b.db_queries - a.db_queries) / wall;
    sonar_outbox_destroy(ob);
    sqlite3_close(db);
}

int main(void)
{
    const char *sc = getenv("BENCH_SCALE");
    if (sc && atof(sc) > 0)
        scale = atof(sc);
    if (!test_natsd_start(&natsd) || !test_mkdtemp(dir, sizeof dir, "bench-outbox"))
        return 1;
    natsConnection *nc = tu_connect(natsd.url), *subnc = tu_connect(natsd.url);
    sonar_bus *bus = tu_bus(natsd.url);
    if (nc == NULL || subnc == NULL || bus == NULL)
        return 1;
    const char *subjects[] = {"bench.>", "raw.>", NULL};
    sonar_stream_config scfg = {.name = "BENCH", .subjects = subjects};
    if (sonar_stream_ensure(nc, &scfg) != SONAR_OK) {
        fprintf(stderr, "%s\n", sonar_last_error());
        return 1;
    }
    double sq_normal = sqlite_commit_rate("NORMAL", scaled(50000));
    double sq_full = sqlite_commit_rate("FULL", scaled(3000));
    double enq = enqueue_rate(scaled(50000), false);
    double enq_w = enqueue_rate(scaled(50000), true);
    double raw = raw_publish_rate(nc, scaled(100000));
    double drain = drain_rate(bus, scaled(100000));
    result batched = run_outbox(bus, subnc, "batched", "NORMAL", scaled(100000), 100);
    result single = run_outbox(bus, subnc, "single", "NORMAL", scaled(50000), 1);
    result full = run_outbox(bus, subnc, "full", "FULL", scaled(3000), 1);
    /* The raw baselines again, after everything else: the first phase of a
     * run tends to be slower (fresh process, files growing). The ratios use
     * the higher of the two measurements. */
    double sq_normal_first = sq_normal, sq_full_first = sq_full;
    double sq_normal2 = sqlite_commit_rate("NORMAL", scaled(50000));
    double sq_full2 = sqlite_commit_rate("FULL", scaled(3000));
    if (sq_normal2 > sq_normal)
        sq_normal = sq_normal2;
    if (sq_full2 > sq_full)
        sq_full = sq_full2;
    double idle_pct = 0, idle_q = 0;
    idle_cpu(bus, &idle_pct, &idle_q);

    printf("baseline  sqlite one-row tx, WAL, synchronous=NORMAL  %10.0f tx/s (first %.0f, last %.0f)\n",
           sq_normal, sq_normal_first, sq_normal2);
    printf("baseline  sqlite one-row tx, WAL, synchronous=FULL    %10.0f tx/s (first %.0f, last %.0f)\n",
           sq_full, sq_full_first, sq_full2);
    printf("producer  sonar_outbox_enqueue, one row/tx, NORMAL, no relay %8.0f tx/s (%.0f%% of raw commit)\n",
           enq, 100 * enq / sq_normal);
    printf("producer  sonar_outbox_writer_enqueue, one row/tx, NORMAL, no relay %8.0f tx/s (%.0f%% of raw commit)\n",
           enq_w, 100 * enq_w / sq_normal);
    printf("baseline  js_PublishAsync + Msg-Id (1024 in flight)   %10.0f msg/s\n", raw);
    printf("outbox    relay drain of a committed backlog %10.0f ev/s  (%.0f%% of raw publish)\n",
           drain, 100 * drain / raw);
    printf("outbox    batched 100/tx, NORMAL    %10.0f ev/s  (%.0f%% of raw publish)  lag p50 %.1f ms"
           " p99 %.1f ms\n",
           batched.events_rate, 100 * batched.events_rate / raw, batched.p50_ms, batched.p99_ms);
    printf("outbox    1 row/tx, NORMAL          %10.0f ev/s  (%.0f%% of raw publish, %.0f%% of raw"
           " commit; producer %.0f tx/s)  lag p50 %.1f ms p99 %.1f ms\n",
           single.events_rate, 100 * single.events_rate / raw,
           100 * single.events_rate / sq_normal, single.commit_rate, single.p50_ms,
           single.p99_ms);
    printf("outbox    1 row/tx, FULL            %10.0f ev/s  (%.0f%% of raw FULL commit; producer"
           " %.0f tx/s)  lag p50 %.1f ms p99 %.1f ms\n",
           full.events_rate, 100 * full.events_rate / sq_full, full.commit_rate, full.p50_ms,
           full.p99_ms);
    printf("outbox    idle relay: %.3f%% of a core (whole process), %.2f SQLite queries/s\n",
           idle_pct, idle_q);
    natsConnection_Destroy(subnc);
    sonar_bus_destroy(bus);
    natsConnection_Destroy(nc);
    test_natsd_destroy(&natsd);
    test_rmtree(dir);
    nats_Close();
    return 0;
}
