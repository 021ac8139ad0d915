/* Server-sent events fed by NATS subscriptions. See events.h. */
#include "events.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "internal.h"
#include "sonar/bus.h"
#include "sonar/protocol.h"
#include "sonar/util.h"

/* How long a change's stream holds its report for a gather or results that
 * the report overtook. */
#define SONAR_GW_REPORT_HOLD_MS 1000

/* One formatted frame, shared by the clients it was queued to. */
typedef struct frame {
    int refs;     /* under the hub mutex */
    size_t len;
    char data[];
} frame;

struct sonar_gw_client {
    sonar_gw_events *ev;
    pthread_cond_t cond;
    char *change_id;  /* filter, or NULL */
    frame **queue;    /* ring of queue_max */
    size_t head, count;
    frame *cur;       /* being written */
    size_t off;
    bool hello_sent, dropped, ending;
    /* Change streams: gather, results and report travel on different
     * subjects, so on different delivery threads, and the report may
     * overtake the others. It is held until the gather and every result it
     * names came, or SONAR_GW_REPORT_HOLD_MS passed. */
    bool saw_gather;
    json_t *seen;     /* object used as a set: responders whose result came */
    frame *held;      /* the report, waiting */
    json_t *missing;  /* set: responders the held report names, not yet seen */
    int64_t held_until_ms;
};

/* Event kinds by subject: "sonar.<kind>.<token>" (result: two tokens). */
static const struct {
    const char *prefix, *event;
    int tokens; /* after the prefix */
} kinds[] = {
    {"sonar.gather.", "gather", 1},     {"sonar.result.", "result", 2},
    {"sonar.report.", "report", 1},     {"sonar.register.", "register", 1},
    {"sonar.leave.", "leave", 1},       {"sonar.health.", "health", 1},
};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

struct sonar_gw_events {
    pthread_mutex_t mu;
    pthread_cond_t idle;      /* signalled when a client closes */
    sonar_gw_metrics *metrics;
    sonar_gw_client **clients;
    size_t n_clients, max_clients, queue_max;
    uint64_t seq;
    bool stopping;
    /* One subscription per kind: a wildcard like sonar.> would count as a
     * responder on every request subject (sonar.api.*, sonar.status.*) and
     * hide "no responders" from everyone on the bus. */
    natsSubscription *subs[N_KINDS];
};

/* The event name for a subject, or NULL when it is not one we stream. */
static const char *event_of(const char *subject)
{
    for (size_t i = 0; i < N_KINDS; i++) {
        size_t n = strlen(kinds[i].prefix);
        if (strncmp(subject, kinds[i].prefix, n) != 0)
            continue;
        int tokens = 1;
        for (const char *c = subject + n; *c; c++)
            if (*c == '.')
                tokens++;
        return tokens == kinds[i].tokens && subject[n] != '\0' ? kinds[i].event : NULL;
    }
    return NULL;
}

static void frame_unref(frame *f)
{
    if (f != NULL && --f->refs == 0)
        free(f);
}

/* Empties a client's queue (hub mutex held). */
static void client_clear(sonar_gw_client *c)
{
    while (c->count > 0) {
        frame_unref(c->queue[c->head]);
        c->head = (c->head + 1) % c->ev->queue_max;
        c->count--;
    }
}

/* Queues f to c (hub mutex held); drops c when its queue is full. */
static void client_push(sonar_gw_client *c, frame *f)
{
    sonar_gw_events *ev = c->ev;
    if (c->dropped || c->ending)
        return;
    if (c->count == ev->queue_max) {
        c->dropped = true;
        client_clear(c);
        sonar_gw_metrics_sse_dropped(ev->metrics);
    } else {
        f->refs++;
        c->queue[(c->head + c->count) % ev->queue_max] = f;
        c->count++;
        sonar_gw_metrics_sse_events(ev->metrics, 1);
    }
    pthread_cond_signal(&c->cond);
}

/* Builds a frame for `event` with the compact JSON `text` (hub mutex held). */
static frame *frame_make(sonar_gw_events *ev, const char *event, const char *text)
{
    size_t need = strlen(text) + strlen(event) + 64;
    frame *f = malloc(sizeof *f + need);
    if (f == NULL)
        return NULL;
    int n = snprintf(f->data, need, "id: %llu\nevent: %s\ndata: %s\n\n",
                     (unsigned long long)++ev->seq, event, text);
    f->len = (size_t)n;
    f->refs = 1; /* the builder's; dropped once queued */
    return f;
}

/* Queues the held report and ends the stream after it (hub mutex held). */
static void release_report(sonar_gw_client *c)
{
    frame *f = c->held;
    c->held = NULL;
    client_push(c, f);
    frame_unref(f);
    c->ending = true;
}

static void maybe_release(sonar_gw_client *c)
{
    if (c->held != NULL && c->saw_gather && json_object_size(c->missing) == 0)
        release_report(c);
}

/* One event of the change a filtered client follows (hub mutex held). */
static void change_event(sonar_gw_client *c, const char *event, frame *f, json_t *doc)
{
    if (c->ending || c->dropped)
        return;
    if (strcmp(event, "gather") == 0) {
        client_push(c, f);
        c->saw_gather = true;
    } else if (strcmp(event, "result") == 0) {
        client_push(c, f);
        const char *svc = json_string_value(json_object_get(doc, "service"));
        if (svc != NULL) {
            json_object_set_new(c->seen, svc, json_true());
            json_object_del(c->missing, svc);
        }
    } else if (strcmp(event, "report") == 0 && c->held == NULL) {
        f->refs++;
        c->held = f;
        c->held_until_ms = sonar_now_ms() + SONAR_GW_REPORT_HOLD_MS;
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(doc, "results"), i, r) {
            const char *svc = json_string_value(json_object_get(r, "service"));
            const char *st = json_string_value(json_object_get(r, "status"));
            /* an incomplete entry never sent a result */
            if (svc && st && strcmp(st, "incomplete") != 0 && !json_object_get(c->seen, svc))
                json_object_set_new(c->missing, svc, json_true());
        }
        pthread_cond_signal(&c->cond);
    }
    maybe_release(c);
}

/* Queues one event to every client whose filter it passes (hub mutex held). */
static void fan_out(sonar_gw_events *ev, const char *event, const char *text, json_t *doc)
{
    frame *f = frame_make(ev, event, text);
    if (f == NULL)
        return;
    const char *change_id = json_string_value(json_object_get(doc, "change_id"));
    bool change = strcmp(event, "gather") == 0 || strcmp(event, "result") == 0 ||
                  strcmp(event, "report") == 0;
    for (size_t i = 0; i < ev->n_clients; i++) {
        sonar_gw_client *c = ev->clients[i];
        if (c->change_id == NULL)
            client_push(c, f);
        else if (change && change_id != NULL && strcmp(change_id, c->change_id) == 0)
            change_event(c, event, f, doc);
    }
    frame_unref(f);
}

/* NATS thread: validate, format, queue. Never waits on a client. */
static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    sonar_gw_events *ev = closure;
    (void)sub;
    const char *event = event_of(natsMsg_GetSubject(msg));
    pthread_mutex_lock(&ev->mu);
    bool idle = ev->n_clients == 0 || ev->stopping;
    pthread_mutex_unlock(&ev->mu);
    int len = natsMsg_GetDataLength(msg);
    if (idle || event == NULL || len <= 0 || len > SONAR_MAX_MESSAGE_BYTES) {
        natsMsg_Destroy(msg);
        return;
    }
    json_t *doc = json_loadb(natsMsg_GetData(msg), (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    natsMsg_Destroy(msg);
    if (doc == NULL || !json_is_object(doc) ||
        !json_is_string(json_object_get(doc, "type"))) {
        json_decref(doc);
        return;
    }
    char *text = json_dumps(doc, JSON_COMPACT); /* one line: newlines stay escaped */
    if (text != NULL) {
        pthread_mutex_lock(&ev->mu);
        fan_out(ev, event, text, doc);
        pthread_mutex_unlock(&ev->mu);
        free(text);
    }
    json_decref(doc);
}

sonar_status sonar_gw_events_create(sonar_gw_events **out, natsConnection *nc,
                                    sonar_gw_metrics *metrics, size_t max_clients,
                                    size_t queue_max)
{
    sonar_gw_events *ev = calloc(1, sizeof *ev);
    if (ev == NULL)
        return SONAR_ERR_NOMEM;
    ev->clients = calloc(max_clients, sizeof *ev->clients);
    if (ev->clients == NULL) {
        free(ev);
        return SONAR_ERR_NOMEM;
    }
    pthread_mutex_init(&ev->mu, NULL);
    sonar_cond_init_monotonic(&ev->idle);
    ev->metrics = metrics;
    ev->max_clients = max_clients;
    ev->queue_max = queue_max;
    natsStatus s = NATS_OK;
    for (size_t i = 0; i < N_KINDS && s == NATS_OK; i++) {
        char subject[64];
        snprintf(subject, sizeof subject, "%s%s", kinds[i].prefix,
                 kinds[i].tokens == 2 ? "*.*" : "*");
        s = natsConnection_Subscribe(&ev->subs[i], nc, subject, on_msg, ev);
    }
    if (s == NATS_OK)
        s = natsConnection_Flush(nc);
    if (s != NATS_OK) {
        sonar_gw_events_destroy(ev);
        return sonar_bus_status(s, "flushing the event subscriptions");
    }
    *out = ev;
    return SONAR_OK;
}

void sonar_gw_events_shutdown(sonar_gw_events *ev)
{
    if (ev == NULL)
        return;
    pthread_mutex_lock(&ev->mu);
    ev->stopping = true;
    for (size_t i = 0; i < ev->n_clients; i++)
        pthread_cond_broadcast(&ev->clients[i]->cond);
    pthread_mutex_unlock(&ev->mu);
}

void sonar_gw_events_destroy(sonar_gw_events *ev)
{
    if (ev == NULL)
        return;
    for (size_t i = 0; i < N_KINDS; i++) {
        if (ev->subs[i] == NULL)
            continue;
        /* Drain, then wait: after completion no callback can touch the hub. */
        if (natsSubscription_Drain(ev->subs[i]) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(ev->subs[i], 2000);
        else
            natsSubscription_Unsubscribe(ev->subs[i]);
        natsSubscription_Destroy(ev->subs[i]);
    }
    SONAR_REQUIRE(ev->n_clients == 0);
    pthread_cond_destroy(&ev->idle);
    pthread_mutex_destroy(&ev->mu);
    free(ev->clients);
    free(ev);
}

bool sonar_gw_events_wait_idle(sonar_gw_events *ev, int64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&ev->mu);
    while (ev->n_clients > 0)
        if (pthread_cond_timedwait(&ev->idle, &ev->mu, &until) == ETIMEDOUT)
            break;
    bool idle = ev->n_clients == 0;
    pthread_mutex_unlock(&ev->mu);
    return idle;
}

size_t sonar_gw_events_clients(sonar_gw_events *ev)
{
    pthread_mutex_lock(&ev->mu);
    size_t n = ev->n_clients;
    pthread_mutex_unlock(&ev->mu);
    return n;
}

sonar_status sonar_gw_client_open(sonar_gw_client **out, sonar_gw_events *ev,
                                  const char *change_id)
{
    sonar_gw_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return SONAR_ERR_NOMEM;
    c->ev = ev;
    c->queue = calloc(ev->queue_max, sizeof *c->queue);
    c->change_id = change_id ? strdup(change_id) : NULL;
    c->seen = json_object();
    c->missing = json_object();
    if (c->queue == NULL || (change_id && c->change_id == NULL) || c->seen == NULL ||
        c->missing == NULL) {
        json_decref(c->seen);
        json_decref(c->missing);
        free(c->queue);
        free(c->change_id);
        free(c);
        return SONAR_ERR_NOMEM;
    }
    sonar_cond_init_monotonic(&c->cond);
    sonar_status st = SONAR_OK;
    pthread_mutex_lock(&ev->mu);
    if (ev->stopping)
        st = SONAR_ERR_STATE;
    else if (ev->n_clients == ev->max_clients)
        st = SONAR_ERR_LIMIT;
    else
        ev->clients[ev->n_clients++] = c;
    pthread_mutex_unlock(&ev->mu);
    if (st != SONAR_OK) {
        pthread_cond_destroy(&c->cond);
        json_decref(c->seen);
        json_decref(c->missing);
        free(c->queue);
        free(c->change_id);
        free(c);
        return st;
    }
    sonar_gw_metrics_sse_clients(ev->metrics, 1);
    *out = c;
    return SONAR_OK;
}

void sonar_gw_client_push_report(sonar_gw_client *c, const char *json, size_t len)
{
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL)
        return;
    sonar_gw_events *ev = c->ev;
    pthread_mutex_lock(&ev->mu);
    if (!c->ending && !c->dropped && c->held == NULL) {
        frame *f = frame_make(ev, "report", text);
        if (f != NULL) { /* finished before we subscribed: nothing else will come */
            client_push(c, f);
            c->ending = true;
            frame_unref(f);
        }
    }
    pthread_mutex_unlock(&ev->mu);
    free(text);
}

/* Copies up to max bytes of s into buf. */
static ssize_t put_text(char *buf, size_t max, const char *s)
{
    size_t n = strlen(s);
    if (n > max)
        n = max;
    memcpy(buf, s, n);
    return (ssize_t)n;
}

ssize_t sonar_gw_client_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    sonar_gw_client *c = cls;
    sonar_gw_events *ev = c->ev;
    ssize_t n = 0;
    pthread_mutex_lock(&ev->mu);
    if (!c->hello_sent) {
        c->hello_sent = true;
        n = put_text(buf, max, "retry: 3000\n: connected\n\n");
        goto out;
    }
    bool waited = false;
    while (c->cur == NULL) {
        if (c->dropped) {
            n = MHD_CONTENT_READER_END_WITH_ERROR;
            goto out;
        }
        if (c->count > 0) {
            c->cur = c->queue[c->head];
            c->head = (c->head + 1) % ev->queue_max;
            c->count--;
            c->off = 0;
            break;
        }
        if (c->held != NULL && !ev->stopping) {
            int64_t left = c->held_until_ms - sonar_now_ms();
            if (left <= 0) {
                release_report(c); /* what overtook it will not come */
            } else {
                struct timespec until;
                clock_gettime(CLOCK_MONOTONIC, &until);
                until.tv_sec += left / 1000;
                until.tv_nsec += (left % 1000) * 1000000L;
                if (until.tv_nsec >= 1000000000L) {
                    until.tv_sec++;
                    until.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&c->cond, &ev->mu, &until);
            }
            continue;
        }
        if (ev->stopping || c->ending) {
            n = MHD_CONTENT_READER_END_OF_STREAM;
            goto out;
        }
        if (waited) {
            n = put_text(buf, max, ": keepalive\n\n");
            goto out;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += SONAR_GW_SSE_KEEPALIVE_S;
        if (pthread_cond_timedwait(&c->cond, &ev->mu, &until) == ETIMEDOUT)
            waited = true;
    }
    size_t left = c->cur->len - c->off;
    size_t k = left < max ? left : max;
    memcpy(buf, c->cur->data + c->off, k);
    c->off += k;
    if (c->off == c->cur->len) {
        frame_unref(c->cur);
        c->cur = NULL;
    }
    n = (ssize_t)k;
out:
    pthread_mutex_unlock(&ev->mu);
    return n;
}

void sonar_gw_client_close(void *cls)
{
    sonar_gw_client *c = cls;
    sonar_gw_events *ev = c->ev;
    pthread_mutex_lock(&ev->mu);
    for (size_t i = 0; i < ev->n_clients; i++) {
        if (ev->clients[i] == c) {
            ev->clients[i] = ev->clients[--ev->n_clients];
            break;
        }
    }
    client_clear(c);
    frame_unref(c->cur);
    frame_unref(c->held);
    pthread_cond_broadcast(&ev->idle);
    pthread_mutex_unlock(&ev->mu);
    sonar_gw_metrics_sse_clients(ev->metrics, -1);
    pthread_cond_destroy(&c->cond);
    json_decref(c->seen);
    json_decref(c->missing);
    free(c->queue);
    free(c->change_id);
    free(c);
}
