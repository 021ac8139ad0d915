/* Scatter-gather of checks for announced changes. */
#include "gather.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "sonar/reply.h"
#include "sonar/bus.h"
#include "sonar/service.h"
#include "sonar/util.h"

/* ---- The tally ------------------------------------------------------------- */

typedef struct answer {
    bool answered;
    sonar_result_msg res;
} answer;

struct sonar_tally {
    char *change_id, *service, *version, *address;
    int64_t started_wall, started_ms;
    sonar_expected exp;
    answer *live;          /* parallel to exp.live */
    answer *down;          /* parallel to exp.down */
    sonar_result_msg *extra; /* answers from services not expected */
    bool *extra_known;       /* parallel: the service is in the registry */
    size_t n_extra, cap_extra;
    size_t answered;
    bool reported;
};

sonar_status sonar_tally_create(sonar_tally **out, const sonar_change_msg *change,
                                sonar_expected *expected, int64_t started_wall_ms,
                                int64_t started_ms)
{
    sonar_tally *t = calloc(1, sizeof *t);
    if (t == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
    t->change_id = sonar__strdup(change->change_id);
    t->service = sonar__strdup(change->service);
    t->version = sonar__strdup(change->version ? change->version : "");
    t->address = sonar__strdup(change->address ? change->address : "");
    t->live = calloc(expected->n_live ? expected->n_live : 1, sizeof *t->live);
    t->down = calloc(expected->n_down ? expected->n_down : 1, sizeof *t->down);
    if (!t->change_id || !t->service || !t->version || !t->address || !t->live || !t->down) {
        sonar_tally_destroy(t);
        return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
    }
    t->exp = *expected;
    memset(expected, 0, sizeof *expected);
    t->started_wall = started_wall_ms;
    t->started_ms = started_ms;
    *out = t;
    return SONAR_OK;
}

void sonar_tally_destroy(sonar_tally *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; t->live && i < t->exp.n_live; i++)
        sonar_result_finish(&t->live[i].res);
    for (size_t i = 0; t->down && i < t->exp.n_down; i++)
        sonar_result_finish(&t->down[i].res);
    for (size_t i = 0; i < t->n_extra; i++)
        sonar_result_finish(&t->extra[i]);
    free(t->live);
    free(t->down);
    free(t->extra);
    free(t->extra_known);
    sonar_expected_finish(&t->exp);
    free(t->change_id);
    free(t->service);
    free(t->version);
    free(t->address);
    free(t);
}

static int cmp_name(const void *key, const void *elem)
{
    return strcmp(key, *(char *const *)elem);
}

static long index_of(char **names, size_t n, const char *name)
{
    char **hit = n ? bsearch(name, names, n, sizeof *names, cmp_name) : NULL;
    return hit ? (long)(hit - names) : -1;
}

sonar_status sonar_tally_add(sonar_tally *t, sonar_result_msg *res, bool known)
{
    if (t->reported)
        return sonar__fail(SONAR_ERR_STATE, "the report of change %s was already built",
                           t->change_id);
    if (res->change_id == NULL || strcmp(res->change_id, t->change_id) != 0)
        return sonar__fail(SONAR_ERR_INVALID, "result is for change %s, not %s",
                           res->change_id ? res->change_id : "(none)", t->change_id);
    if (res->status != SONAR_PASS && res->status != SONAR_FAIL && res->status != SONAR_NONE)
        return sonar__fail(SONAR_ERR_INVALID, "result status must be pass, fail or none");
    answer *slot = NULL;
    long i = index_of(t->exp.live, t->exp.n_live, res->service);
    if (i >= 0) {
        slot = &t->live[i];
        if (!slot->answered)
            t->answered++;
    } else if ((i = index_of(t->exp.down, t->exp.n_down, res->service)) >= 0) {
        slot = &t->down[i];
    }
    if (slot != NULL) {
        if (slot->answered)
            return SONAR_OK; /* first answer wins */
        slot->answered = true;
        slot->res = *res;
        memset(res, 0, sizeof *res);
        return SONAR_OK;
    }
    for (size_t k = 0; k < t->n_extra; k++)
        if (strcmp(t->extra[k].service, res->service) == 0)
            return SONAR_OK;
    if (t->n_extra == t->cap_extra) {
        if (t->cap_extra >= SONAR_MAX_LIST)
            return sonar__fail(SONAR_ERR_LIMIT, "too many unregistered answers");
        size_t cap = t->cap_extra ? t->cap_extra * 2 : 4;
        sonar_result_msg *v = realloc(t->extra, cap * sizeof *v);
        if (v != NULL)
            t->extra = v;
        bool *k = realloc(t->extra_known, cap * sizeof *k);
        if (k != NULL)
            t->extra_known = k;
        if (v == NULL || k == NULL)
            return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
        t->cap_extra = cap;
    }
    t->extra_known[t->n_extra] = known;
    t->extra[t->n_extra++] = *res;
    memset(res, 0, sizeof *res);
    return SONAR_OK;
}

bool sonar_tally_complete(const sonar_tally *t)
{
    return t->answered == t->exp.n_live;
}

size_t sonar_tally_answered(const sonar_tally *t)
{
    return t->answered;
}

/* Fills `e` from an answer (moving its checks) or as incomplete with `reason`. */
static sonar_status fill_entry(sonar_report_entry *e, const char *service, answer *a,
                               const char *reason, bool unregistered)
{
    e->service = strdup(service);
    e->unregistered = unregistered;
    if (a != NULL && a->answered) {
        e->status = a->res.status;
        e->duration_ms = a->res.duration_ms;
        e->checks = a->res.checks;
        e->n_checks = a->res.n_checks;
        a->res.checks = NULL;
        a->res.n_checks = 0;
        e->reason = strdup(unregistered ? SONARD_REASON_UNREGISTERED : "");
    } else {
        e->status = SONAR_INCOMPLETE;
        e->reason = strdup(reason);
    }
    if (e->service == NULL || e->reason == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
    return SONAR_OK;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const sonar_report_entry *)a)->service,
                  ((const sonar_report_entry *)b)->service);
}

sonar_status sonar_tally_report(sonar_tally *t, int64_t now_ms, const char *silent_reason,
                                sonar_report_msg *out)
{
    if (t->reported)
        return sonar__fail(SONAR_ERR_STATE, "the report of change %s was already built",
                           t->change_id);
    t->reported = true;
    sonar_report_msg r = {0};
    char started[40];
    sonar_format_rfc3339(t->started_wall, started, sizeof started);
    r.change_id = strdup(t->change_id);
    r.service = strdup(t->service);
    r.version = strdup(t->version);
    r.address = strdup(t->address);
    r.started_at = strdup(started);
    r.duration_ms = now_ms - t->started_ms;
    size_t n = t->exp.n_live + t->exp.n_down + t->n_extra;
    r.results = calloc(n ? n : 1, sizeof *r.results);
    if (!r.change_id || !r.service || !r.version || !r.address || !r.started_at || !r.results)
        goto oom;
    sonar_status s = SONAR_OK;
    for (size_t i = 0; s == SONAR_OK && i < t->exp.n_live; i++) {
        s = fill_entry(&r.results[r.n_results++], t->exp.live[i], &t->live[i],
                       silent_reason ? silent_reason : SONARD_REASON_NO_ANSWER, false);
    }
    for (size_t i = 0; s == SONAR_OK && i < t->exp.n_down; i++)
        s = fill_entry(&r.results[r.n_results++], t->exp.down[i], &t->down[i],
                       SONARD_REASON_NOT_LIVE, false);
    for (size_t i = 0; s == SONAR_OK && i < t->n_extra; i++) {
        answer a = {.answered = true, .res = t->extra[i]};
        s = fill_entry(&r.results[r.n_results++], t->extra[i].service, &a, "",
                       !t->extra_known[i]);
        t->extra[i] = a.res;
    }
    if (s != SONAR_OK)
        goto oom;
    qsort(r.results, r.n_results, sizeof *r.results, cmp_entry);
    r.counts.expected = (int64_t)t->exp.n_live;
    for (size_t i = 0; i < r.n_results; i++) {
        switch (r.results[i].status) {
        case SONAR_PASS: r.counts.pass++; break;
        case SONAR_FAIL: r.counts.fail++; break;
        case SONAR_NONE: r.counts.none++; break;
        case SONAR_INCOMPLETE: r.counts.incomplete++; break;
        }
    }
    r.verdict = r.counts.fail ? SONAR_FAIL : r.counts.incomplete ? SONAR_INCOMPLETE : SONAR_PASS;
    *out = r;
    return SONAR_OK;
oom:
    sonar_report_finish(&r);
    return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
}

/* ---- The gatherer ----------------------------------------------------------- */

#define BUCKETS 256

/* Result messages a gather keeps for destroying together (beyond this, a
 * message is destroyed at once: a flood cannot grow a gather without bound). */
#define SPENT_MAX (2 * SONAR_MAX_LIST)

/* A change request answered by whoever builds the report, and what to call
 * after (outside the gather's lock); under ga->mu. */
typedef struct waiter {
    struct waiter *next;
    sonar_request *req;
    sonar_gather_end_fn on_end;
    void *arg;
} waiter;

/* With several coordinators, which of two gathers of one change id reports
 * (see sonar_gatherer_set_claimer()). */
enum { CLAIM_NONE, CLAIM_PENDING, CLAIM_WON, CLAIM_LOST };

struct sonar_gather {
    sonar_gather *next;       /* bucket chain, under g->mu */
    waiter *waiters;          /* requests to answer with the report, under mu */
    atomic_int refs;
    char change_id[SONAR_NAME_MAX + 1];
    pthread_mutex_t mu;
    sonar_tally *tally;
    _Atomic int64_t deadline_ms; /* moved (earlier or by the grace) under g->mu */
    atomic_int claim;         /* CLAIM_*; written under mu once the scatter went out */
    bool held;                /* every answer is in, the end waits for the claim; under mu */
    bool grace_given;         /* a lost claim's deadline was moved once; under g->mu */
    bool adopted;             /* ended with another coordinator's report */
    char *adopt_json;         /* that report until end_locked() takes it; under mu */
    sonar_outcome adopt_verdict;
    atomic_bool done;         /* report built (written under mu; read anywhere) */
    bool cancelled;
    char *report_json;
    sonar_outcome verdict;
    sonar_status report_status;
    /* The result messages consumed, destroyed when the gather is freed.
     * nats.c hands every destroyed message to its garbage-collector
     * thread and wakes that thread when it is idle: destroying each answer
     * as it comes cost one wake-up per answer while the others were still
     * coming in (~0.05 ms per gather of 10 on 2 cores, docs/benchmarks.md).
     * Destroyed together after the report was stored, they cost one. */
    natsMsg **spent;          /* under mu */
    size_t n_spent, cap_spent;
};

struct sonar_gatherer {
    natsConnection *nc;
    natsSubscription *sub;
    sonar_registry *reg;
    char *self;
    pthread_mutex_t mu;
    sonar_gather *table[BUCKETS];
    size_t running;
    bool closing;
    /* The deadline thread ends gathers whose deadline passed; it sleeps
     * until next_deadline_ms (INT64_MAX: no gather running), so a gather
     * begun with a later deadline does not need to wake it. */
    pthread_t deadline_thread;
    bool deadline_running, stopping;
    pthread_cond_t deadline_cond; /* CLOCK_MONOTONIC; under mu */
    pthread_cond_t finished_cond; /* CLOCK_MONOTONIC; a gather left the table; under mu */
    int64_t next_deadline_ms;
    sonar_gather_claim_fn claim_fn; /* NULL: no claims (set before any gather) */
    void *claim_closure;
};

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % BUCKETS;
}

static sonar_gather *lookup(sonar_gatherer *g, const char *change_id)
{
    for (sonar_gather *ga = g->table[hash(change_id)]; ga; ga = ga->next)
        if (strcmp(ga->change_id, change_id) == 0)
            return ga;
    return NULL;
}

static void gather_unref(sonar_gather *ga)
{
    if (atomic_fetch_sub(&ga->refs, 1) != 1)
        return;
    while (ga->waiters != NULL) { /* only if the report was never built */
        waiter *w = ga->waiters;
        ga->waiters = w->next;
        free(w);
    }
    for (size_t i = 0; i < ga->n_spent; i++)
        natsMsg_Destroy(ga->spent[i]);
    free(ga->spent);
    sonar_tally_destroy(ga->tally);
    free(ga->report_json);
    free(ga->adopt_json);
    pthread_mutex_destroy(&ga->mu);
    free(ga);
}

int64_t sonar_gather_check_timeout(int64_t timeout_ms)
{
    int64_t margin = timeout_ms / 10;
    if (margin > 1000)
        margin = 1000;
    return timeout_ms - margin > 0 ? timeout_ms - margin : 1;
}

/* "sonar.result.<change_id>.<responder>" -> the two tokens (in `buf`). */
static bool split_result_subject(const char *subject, char *buf, size_t buflen,
                                 const char **cid, const char **who)
{
    size_t plen = strlen(SONAR_SUBJ_RESULT_PREFIX);
    if (strncmp(subject, SONAR_SUBJ_RESULT_PREFIX, plen) != 0 ||
        strlen(subject + plen) >= buflen)
        return false;
    strcpy(buf, subject + plen);
    char *dot = strchr(buf, '.');
    if (dot == NULL)
        return false;
    *dot = '\0';
    *cid = buf;
    *who = dot + 1;
    return true;
}

static waiter *end_locked(sonar_gather *ga);
static waiter *end_or_hold_locked(sonar_gatherer *g, sonar_gather *ga);

/* Under g->mu: wakes the deadline thread when deadline_ms is earlier than
 * the one it sleeps until (a later one needs no wake-up). */
static void deadline_earlier_locked(sonar_gatherer *g, int64_t deadline_ms)
{
    if (deadline_ms < g->next_deadline_ms) {
        g->next_deadline_ms = deadline_ms;
        pthread_cond_signal(&g->deadline_cond);
    }
}
static void run_enders(sonar_gather *ga, waiter *list);
static bool end_running(sonar_gatherer *g, bool cancel);
static void *deadline_main(void *arg);

/* Keeps \p msg for destroying with the gather (see spent); false when it
 * must be destroyed now (list full, or out of memory). */
static bool keep_spent(sonar_gather *ga, natsMsg *msg)
{
    pthread_mutex_lock(&ga->mu);
    if (ga->n_spent == ga->cap_spent && ga->cap_spent < SPENT_MAX) {
        size_t cap = ga->cap_spent ? 2 * ga->cap_spent : 16;
        natsMsg **v = realloc(ga->spent, cap * sizeof *v);
        if (v != NULL) {
            ga->spent = v;
            ga->cap_spent = cap;
        }
    }
    bool kept = ga->n_spent < ga->cap_spent;
    if (kept)
        ga->spent[ga->n_spent++] = msg;
    pthread_mutex_unlock(&ga->mu);
    return kept;
}

static void on_result(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    sonar_gatherer *g = closure;
    const char *reply = natsMsg_GetReply(msg);
    char buf[2 * SONAR_NAME_MAX + 2];
    const char *cid = NULL, *who = NULL;
    if (!split_result_subject(natsMsg_GetSubject(msg), buf, sizeof buf, &cid, &who)) {
        sonar_reply_error(nc, reply, 400, "bad result subject %.200s", natsMsg_GetSubject(msg));
        goto out;
    }
    pthread_mutex_lock(&g->mu);
    sonar_gather *ga = lookup(g, cid);
    if (ga != NULL)
        atomic_fetch_add(&ga->refs, 1);
    pthread_mutex_unlock(&g->mu);
    if (ga == NULL && (reply == NULL || *reply == '\0'))
        goto out; /* another coordinator's change, or a late answer: not ours */
    sonar_result_msg res = {0};
    sonar_status s = sonar_result_decode(&res, natsMsg_GetData(msg),
                                         (size_t)natsMsg_GetDataLength(msg));
    if (s == SONAR_OK && (strcmp(res.change_id, cid) != 0 || strcmp(res.service, who) != 0))
        s = sonar__fail(SONAR_ERR_PROTOCOL,
                        "result body (change %s from %s) does not match its subject",
                        res.change_id, res.service);
    if (s != SONAR_OK) {
        sonar_reply_error(nc, reply, sonar_reply_code(s), "invalid result: %s",
                          sonar_last_error());
    } else if (ga != NULL && (g->self == NULL || strcmp(res.service, g->self) != 0)) {
        bool known = sonar_registry_known(g->reg, res.service);
        waiter *enders = NULL;
        pthread_mutex_lock(&ga->mu);
        if (!ga->done) {
            s = sonar_tally_add(ga->tally, &res, known);
            /* The last expected answer: report and reply from here at once
             * (unless the claim is still open or was lost). */
            if (s == SONAR_OK && sonar_tally_complete(ga->tally))
                enders = end_or_hold_locked(g, ga);
        }
        pthread_mutex_unlock(&ga->mu);
        run_enders(ga, enders);
        if (s != SONAR_OK)
            sonar_reply_error(nc, reply, sonar_reply_code(s), "result refused: %s",
                              sonar_last_error());
    }
    sonar_result_finish(&res);
    if (ga != NULL) {
        if (keep_spent(ga, msg))
            msg = NULL;
        gather_unref(ga);
    }
out:
    natsMsg_Destroy(msg);
}

sonar_status sonar_gatherer_create(sonar_gatherer **out, natsConnection *nc,
                                   sonar_registry *reg, const char *self_name)
{
    sonar_gatherer *g = calloc(1, sizeof *g);
    if (g == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
    g->nc = nc;
    g->reg = reg;
    pthread_mutex_init(&g->mu, NULL);
    sonar_cond_init_monotonic(&g->deadline_cond);
    sonar_cond_init_monotonic(&g->finished_cond);
    g->next_deadline_ms = INT64_MAX;
    if (pthread_create(&g->deadline_thread, NULL, deadline_main, g) != 0) {
        sonar_gatherer_destroy(g);
        return sonar__fail(SONAR_ERR_IO, "gather: cannot start the deadline thread");
    }
    g->deadline_running = true;
    if (self_name != NULL && (g->self = strdup(self_name)) == NULL) {
        sonar_gatherer_destroy(g);
        return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
    }
    natsStatus ns = natsConnection_Subscribe(&g->sub, nc, SONAR_SUBJ_RESULT_PREFIX "*.*",
                                             on_result, g);
    /* Hundreds of services answer at once: no message limit, 256 MiB. */
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(g->sub, -1, 256 * 1024 * 1024);
    if (ns == NATS_OK)
        ns = natsConnection_FlushTimeout(nc, 5000);
    if (ns != NATS_OK) {
        sonar_status s = sonar_bus_status(ns, "subscribing to sonar.result.*.*");
        sonar_gatherer_destroy(g);
        return s;
    }
    *out = g;
    return SONAR_OK;
}

void sonar_gatherer_destroy(sonar_gatherer *g)
{
    if (g == NULL)
        return;
    if (g->deadline_running) {
        pthread_mutex_lock(&g->mu);
        g->stopping = true;
        pthread_cond_signal(&g->deadline_cond);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->deadline_thread, NULL);
    }
    if (g->sub != NULL) {
        /* Drain: once complete, the callback is not running any more. */
        if (natsConnection_Status(g->nc) == NATS_CONN_STATUS_CONNECTED &&
            natsSubscription_Drain(g->sub) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(g->sub, 5000);
        else
            natsSubscription_Unsubscribe(g->sub);
        natsSubscription_Destroy(g->sub);
    }
    pthread_mutex_lock(&g->mu);
    for (size_t b = 0; b < BUCKETS; b++) {
        while (g->table[b] != NULL) {
            sonar_gather *ga = g->table[b];
            g->table[b] = ga->next;
            gather_unref(ga);
        }
    }
    pthread_mutex_unlock(&g->mu);
    free(g->self);
    pthread_cond_destroy(&g->deadline_cond);
    pthread_cond_destroy(&g->finished_cond);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

void sonar_gatherer_cancel_all(sonar_gatherer *g)
{
    pthread_mutex_lock(&g->mu);
    g->closing = true;
    pthread_mutex_unlock(&g->mu);
    while (!end_running(g, true))
        continue;
}

size_t sonar_gatherer_running(sonar_gatherer *g)
{
    pthread_mutex_lock(&g->mu);
    size_t n = g->running;
    pthread_mutex_unlock(&g->mu);
    return n;
}

static sonar_status gather_new(sonar_gather **out, sonar_gatherer *g,
                               const sonar_change_msg *change)
{
    sonar_gather *ga = calloc(1, sizeof *ga);
    if (ga == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
    atomic_init(&ga->refs, 2); /* the table's and the starter's */
    snprintf(ga->change_id, sizeof ga->change_id, "%s", change->change_id);
    pthread_mutex_init(&ga->mu, NULL);
    atomic_init(&ga->done, false);
    atomic_init(&ga->claim, CLAIM_NONE);
    int64_t now = sonar_now_ms();
    atomic_init(&ga->deadline_ms, now + change->timeout_ms);
    sonar_expected exp = {0};
    sonar_status s = sonar_registry_expected(g->reg, change->service, now, &exp);
    if (s == SONAR_OK)
        s = sonar_tally_create(&ga->tally, change, &exp, sonar_wall_ms(), now);
    sonar_expected_finish(&exp);
    if (s != SONAR_OK) {
        atomic_init(&ga->refs, 1);
        gather_unref(ga);
        return s;
    }
    *out = ga;
    return SONAR_OK;
}

/* {"type":"sonar.gather.v1","change_id","service","expected":[...],"timeout_ms"}
 * plus "again":true when announced again (timeout_ms is then the time left). */
static char *gather_announcement(const sonar_tally *t, int64_t timeout_ms, bool again)
{
    json_t *expected = json_array();
    for (size_t i = 0; expected && i < t->exp.n_live; i++)
        json_array_append_new(expected, json_string(t->exp.live[i]));
    json_t *doc = json_pack("{s:s, s:s, s:s, s:o, s:I}", "type", "sonar.gather.v1",
                            "change_id", t->change_id, "service", t->service,
                            "expected", expected, "timeout_ms", (json_int_t)timeout_ms);
    if (doc != NULL && again)
        json_object_set_new(doc, "again", json_true());
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    return text;
}

/* An announcement built under the gatherer's lock, published after it. */
typedef struct announcement {
    struct announcement *next;
    char *subject, *text;
} announcement;

size_t sonar_gatherer_reannounce(sonar_gatherer *g)
{
    /* The tallies' change and expected set do not change once made. */
    announcement *list = NULL;
    int64_t now = sonar_now_ms();
    pthread_mutex_lock(&g->mu);
    for (size_t b = 0; b < BUCKETS; b++) {
        for (sonar_gather *ga = g->table[b]; ga; ga = ga->next) {
            int64_t left = atomic_load(&ga->deadline_ms) - now;
            announcement *a = atomic_load(&ga->done) || left <= 0 ? NULL : calloc(1, sizeof *a);
            if (a == NULL)
                continue;
            a->text = gather_announcement(ga->tally, left, true);
            if (a->text == NULL ||
                sonar_subject(&a->subject, "sonar.gather.", ga->change_id, NULL) != SONAR_OK) {
                free(a->text);
                free(a);
                continue;
            }
            a->next = list;
            list = a;
        }
    }
    pthread_mutex_unlock(&g->mu);
    size_t sent = 0;
    while (list != NULL) {
        announcement *a = list;
        list = a->next;
        if (natsConnection_PublishString(g->nc, a->subject, a->text) == NATS_OK)
            sent++;
        free(a->subject);
        free(a->text);
        free(a);
    }
    return sent;
}

static sonar_status scatter(sonar_gatherer *g, const sonar_change_msg *change,
                            const sonar_tally *t)
{
    sonar_check_msg check = *change;
    check.timeout_ms = sonar_gather_check_timeout(change->timeout_ms);
    char *body = NULL, *subject = NULL, *gsubject = NULL;
    char *announce = NULL;
    sonar_status s = sonar_check_encode(&check, &body);
    if (s == SONAR_OK)
        s = sonar_subject(&subject, SONAR_SUBJ_CHECK_PREFIX, change->service, NULL);
    natsStatus ns = NATS_OK;
    if (s == SONAR_OK)
        ns = natsConnection_PublishString(g->nc, subject, body);
    /* The check request goes out first; the announcement is built meanwhile. */
    if (s == SONAR_OK && ns == NATS_OK) {
        s = sonar_subject(&gsubject, "sonar.gather.", change->change_id, NULL);
        if (s == SONAR_OK && (announce = gather_announcement(t, change->timeout_ms, false)) == NULL)
            s = sonar__fail(SONAR_ERR_NOMEM, "gather: out of memory");
        if (s == SONAR_OK)
            ns = natsConnection_PublishString(g->nc, gsubject, announce);
    }
    if (s == SONAR_OK && ns != NATS_OK)
        s = sonar_bus_status(ns, "publishing the check request");
    free(body);
    free(subject);
    free(gsubject);
    free(announce);
    return s;
}

sonar_status sonar_gatherer_join(sonar_gatherer *g, const char *change_id, sonar_gather **out)
{
    pthread_mutex_lock(&g->mu);
    sonar_gather *ga = lookup(g, change_id);
    if (ga != NULL)
        atomic_fetch_add(&ga->refs, 1);
    pthread_mutex_unlock(&g->mu);
    if (ga == NULL)
        return sonar__fail(SONAR_ERR_NOT_FOUND, "no gather of change %s is running", change_id);
    *out = ga;
    return SONAR_OK;
}

sonar_status sonar_gatherer_begin(sonar_gatherer *g, const sonar_change_msg *change,
                                  sonar_gather **out, bool *out_joined)
{
    if (!sonar_name_valid(change->change_id) || !sonar_name_valid(change->service) ||
        change->timeout_ms <= 0)
        return sonar__fail(SONAR_ERR_INVALID, "a gather needs a change id, a service and a timeout");
    pthread_mutex_lock(&g->mu);
    if (g->closing) {
        pthread_mutex_unlock(&g->mu);
        return sonar__fail(SONAR_ERR_STATE, "the coordinator is shutting down");
    }
    sonar_gather *ga = lookup(g, change->change_id);
    if (ga != NULL) {
        atomic_fetch_add(&ga->refs, 1);
        pthread_mutex_unlock(&g->mu);
        *out = ga;
        *out_joined = true;
        return SONAR_OK;
    }
    sonar_status s = gather_new(&ga, g, change);
    if (s == SONAR_OK) {
        unsigned b = hash(ga->change_id);
        ga->next = g->table[b];
        g->table[b] = ga;
        g->running++;
        deadline_earlier_locked(g, atomic_load(&ga->deadline_ms));
    }
    pthread_mutex_unlock(&g->mu);
    if (s != SONAR_OK)
        return s;
    /* Claimed before the scatter (so no answer can find the claim unset);
     * open before the claim is sent (its answer may come at once). */
    if (g->claim_fn != NULL) {
        atomic_store(&ga->claim, CLAIM_PENDING);
        if (!g->claim_fn(g->claim_closure, ga->change_id))
            atomic_store(&ga->claim, CLAIM_NONE); /* not claimed, so no answer comes: ours */
    }
    /* The result subscription exists since create: no answer can be missed. */
    s = scatter(g, change, ga->tally);
    if (s != SONAR_OK) {
        sonar_gatherer_finish(g, ga);
        return s;
    }
    /* Nobody to wait for: the report is ready at once (nothing is attached
     * yet, so there is nobody to answer or call either). */
    pthread_mutex_lock(&ga->mu);
    waiter *enders = sonar_tally_complete(ga->tally) ? end_or_hold_locked(g, ga) : NULL;
    pthread_mutex_unlock(&ga->mu);
    run_enders(ga, enders);
    *out = ga;
    *out_joined = false;
    return SONAR_OK;
}

/* Answers one waiting request with the report (or a 500 when it could not be built). */
static void reply_report(const sonar_gather *ga, sonar_request *req)
{
    if (ga->report_status == SONAR_OK)
        sonar_request_respond(req, ga->report_json, strlen(ga->report_json));
    else
        sonar_request_respond_error(req, 500, "the report of change %s could not be built",
                                    ga->change_id);
}

/* Under ga->mu, on whichever thread sees the gather end: the result
 * callback when the last expected answer arrives, the deadline thread, or
 * cancel. Builds the report once and answers every waiting request (the
 * reply leaves before anything else happens); returns the waiters, whose
 * on_end the caller runs with run_enders() after unlocking. Encoding and
 * one publish per waiter are quick, so this may run on a NATS thread. */
static waiter *end_locked(sonar_gather *ga)
{
    if (ga->done)
        return NULL;
    if (ga->adopt_json != NULL) {
        /* Another coordinator reported this change: its report is the one. */
        ga->report_json = ga->adopt_json;
        ga->adopt_json = NULL;
        ga->verdict = ga->adopt_verdict;
        ga->report_status = SONAR_OK;
        ga->adopted = true;
    } else {
        sonar_report_msg r = {0};
        const char *why = ga->cancelled && !sonar_tally_complete(ga->tally) &&
                                  sonar_now_ms() < atomic_load(&ga->deadline_ms)
                              ? SONARD_REASON_SHUTDOWN
                              : NULL;
        sonar_status s = sonar_tally_report(ga->tally, sonar_now_ms(), why, &r);
        if (s == SONAR_OK)
            s = sonar_report_encode(&r, &ga->report_json);
        ga->verdict = r.verdict;
        ga->report_status = s;
        if (s != SONAR_OK)
            sonar_log(SONAR_LOG_ERROR, "gather %s: building the report: %s", ga->change_id,
                      sonar_last_error());
        sonar_report_finish(&r);
    }
    atomic_store(&ga->done, true);
    for (waiter *w = ga->waiters; w != NULL; w = w->next)
        reply_report(ga, w->req);
    waiter *list = ga->waiters;
    ga->waiters = NULL;
    return list;
}

/* Brings g's deadline thread forward to ga's (moved) deadline. */
static void deadline_moved(sonar_gatherer *g, int64_t deadline_ms)
{
    pthread_mutex_lock(&g->mu);
    deadline_earlier_locked(g, deadline_ms);
    pthread_mutex_unlock(&g->mu);
}

/* Under ga->mu, when every expected answer is in: ends the gather, unless
 * its claim is open (the end waits for the claim's answer, at most
 * SONAR_GATHER_CLAIM_WAIT_MS) or was lost (the end waits for the winner's
 * report, see end_running()). */
static waiter *end_or_hold_locked(sonar_gatherer *g, sonar_gather *ga)
{
    int claim = atomic_load(&ga->claim);
    if (claim != CLAIM_PENDING && claim != CLAIM_LOST)
        return end_locked(ga);
    if (!ga->held && claim == CLAIM_PENDING) {
        int64_t by = sonar_now_ms() + SONAR_GATHER_CLAIM_WAIT_MS;
        if (by < atomic_load(&ga->deadline_ms)) {
            atomic_store(&ga->deadline_ms, by);
            deadline_moved(g, by); /* g->mu inside ga->mu: never the other way round */
        }
    }
    ga->held = true;
    return NULL;
}

/* Whether ga is in g's table (under g->mu). */
static bool in_table(sonar_gatherer *g, const sonar_gather *ga)
{
    for (const sonar_gather *x = g->table[hash(ga->change_id)]; x; x = x->next)
        if (x == ga)
            return true;
    return false;
}

bool sonar_gatherer_wait_settled(sonar_gatherer *g, int64_t timeout_ms)
{
    /* Only the gathers ended by now: under a steady stream of changes there
     * is always one ending, and waiting for "none" could last for ever. */
    enum { MAX_WATCHED = 256 };
    sonar_gather *watched[MAX_WATCHED];
    size_t n = 0;
    int64_t until = sonar_now_ms() + timeout_ms;
    pthread_mutex_lock(&g->mu);
    for (size_t b = 0; b < BUCKETS && n < MAX_WATCHED; b++)
        for (sonar_gather *ga = g->table[b]; ga && n < MAX_WATCHED; ga = ga->next)
            if (atomic_load(&ga->done)) {
                atomic_fetch_add(&ga->refs, 1);
                watched[n++] = ga;
            }
    bool settled = false;
    for (;;) {
        settled = true;
        for (size_t i = 0; i < n && settled; i++)
            settled = !in_table(g, watched[i]);
        if (settled || sonar_now_ms() >= until)
            break;
        sonar_cond_wait_until(&g->finished_cond, &g->mu, until);
    }
    pthread_mutex_unlock(&g->mu);
    for (size_t i = 0; i < n; i++)
        gather_unref(watched[i]);
    return settled;
}

void sonar_gatherer_set_claimer(sonar_gatherer *g, sonar_gather_claim_fn fn, void *closure)
{
    g->claim_fn = fn;
    g->claim_closure = closure;
}

void sonar_gatherer_claimed(sonar_gatherer *g, const char *change_id, bool won)
{
    sonar_gather *ga = NULL;
    if (sonar_gatherer_join(g, change_id, &ga) != SONAR_OK)
        return; /* ended meanwhile */
    waiter *enders = NULL;
    pthread_mutex_lock(&ga->mu);
    if (!ga->done && atomic_load(&ga->claim) == CLAIM_PENDING) {
        atomic_store(&ga->claim, won ? CLAIM_WON : CLAIM_LOST);
        if (won && ga->held)
            enders = end_locked(ga);
    }
    pthread_mutex_unlock(&ga->mu);
    run_enders(ga, enders);
    gather_unref(ga);
}

bool sonar_gatherer_adopt(sonar_gatherer *g, const char *change_id, const char *report,
                          size_t len, sonar_outcome verdict)
{
    sonar_gather *ga = NULL;
    if (sonar_gatherer_join(g, change_id, &ga) != SONAR_OK)
        return false;
    waiter *enders = NULL;
    pthread_mutex_lock(&ga->mu);
    bool adopt = !ga->done && (ga->adopt_json = strndup(report, len)) != NULL;
    if (adopt) {
        ga->adopt_verdict = verdict;
        enders = end_locked(ga);
    }
    pthread_mutex_unlock(&ga->mu);
    run_enders(ga, enders);
    gather_unref(ga);
    return adopt;
}

bool sonar_gather_adopted(const sonar_gather *ga)
{
    return ga->adopted;
}

/* Runs (and frees) the on_end of waiters end_locked() returned; not under ga->mu. */
static void run_enders(sonar_gather *ga, waiter *list)
{
    while (list != NULL) {
        waiter *w = list;
        list = w->next;
        if (w->on_end != NULL)
            w->on_end(w->arg, ga, ga->report_status, ga->report_json, ga->verdict);
        free(w);
    }
}

/* Ends the gathers of the table: those past their deadline, or every one
 * when cancelling (shutdown). Not under any lock. False when some were
 * left for lack of memory. */
static bool end_running(sonar_gatherer *g, bool cancel)
{
    int64_t now = sonar_now_ms();
    bool all = true;
    size_t n = 0, cap = 0;
    sonar_gather **due = NULL;
    pthread_mutex_lock(&g->mu);
    for (size_t b = 0; b < BUCKETS; b++) {
        for (sonar_gather *ga = g->table[b]; ga; ga = ga->next) {
            if (atomic_load(&ga->done) || (!cancel && atomic_load(&ga->deadline_ms) > now))
                continue;
            /* Lost its claim: the winner's report ends it (adopted); only if
             * none came by the deadline plus a grace, the winner is presumed
             * gone and this gather reports itself. */
            if (!cancel && atomic_load(&ga->claim) == CLAIM_LOST && !ga->grace_given) {
                ga->grace_given = true;
                atomic_store(&ga->deadline_ms, now + SONAR_GATHER_CLAIM_GRACE_MS);
                continue;
            }
            if (n == cap) {
                size_t c = cap ? 2 * cap : 16;
                sonar_gather **v = realloc(due, c * sizeof *v);
                if (v == NULL) {
                    all = false; /* the rest is ended on the next round */
                    break;
                }
                due = v;
                cap = c;
            }
            atomic_fetch_add(&ga->refs, 1);
            due[n++] = ga;
        }
    }
    pthread_mutex_unlock(&g->mu);
    for (size_t i = 0; i < n; i++) {
        sonar_gather *ga = due[i];
        pthread_mutex_lock(&ga->mu);
        if (cancel)
            ga->cancelled = true;
        waiter *enders = end_locked(ga);
        pthread_mutex_unlock(&ga->mu);
        run_enders(ga, enders);
        gather_unref(ga);
    }
    free(due);
    return all;
}

/* The deadline thread: sleeps until the earliest deadline of a running
 * gather, then ends those past it with the silent services incomplete. */
static void *deadline_main(void *arg)
{
    sonar_gatherer *g = arg;
    pthread_setname_np(pthread_self(), "sonard-deadline");
    pthread_mutex_lock(&g->mu);
    while (!g->stopping) {
        int64_t next = INT64_MAX;
        for (size_t b = 0; b < BUCKETS; b++)
            for (sonar_gather *ga = g->table[b]; ga; ga = ga->next)
                if (!atomic_load(&ga->done) && atomic_load(&ga->deadline_ms) < next)
                    next = atomic_load(&ga->deadline_ms);
        g->next_deadline_ms = next;
        if (next > sonar_now_ms()) {
            if (next == INT64_MAX)
                pthread_cond_wait(&g->deadline_cond, &g->mu);
            else
                sonar_cond_wait_until(&g->deadline_cond, &g->mu, next);
            continue;
        }
        pthread_mutex_unlock(&g->mu);
        end_running(g, false);
        pthread_mutex_lock(&g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

void sonar_gather_attach(sonar_gather *ga, sonar_request *req, sonar_gather_end_fn on_end,
                         void *arg)
{
    waiter *w = malloc(sizeof *w);
    pthread_mutex_lock(&ga->mu);
    bool now = ga->done || w == NULL;
    if (ga->done)
        reply_report(ga, req);
    else if (w == NULL)
        sonar_request_respond_error(req, 500, "gather: out of memory");
    else {
        *w = (waiter){.next = ga->waiters, .req = req, .on_end = on_end, .arg = arg};
        ga->waiters = w;
    }
    pthread_mutex_unlock(&ga->mu);
    if (now) {
        free(w);
        if (on_end != NULL)
            on_end(arg, ga, ga->done ? ga->report_status : SONAR_ERR_NOMEM, ga->report_json,
                   ga->verdict);
    }
}

void sonar_gatherer_finish(sonar_gatherer *g, sonar_gather *ga)
{
    if (ga == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    sonar_gather **pp = &g->table[hash(ga->change_id)];
    while (*pp != NULL && *pp != ga)
        pp = &(*pp)->next;
    bool in_table = *pp == ga;
    if (in_table) {
        *pp = ga->next;
        g->running--;
        pthread_cond_broadcast(&g->finished_cond);
    }
    pthread_mutex_unlock(&g->mu);
    if (in_table)
        gather_unref(ga);
    gather_unref(ga);
}

void sonar_gatherer_release(sonar_gatherer *g, sonar_gather *ga)
{
    (void)g;
    if (ga != NULL)
        gather_unref(ga);
}
