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
};

typedef struct source {
    const char *subject, *event;
    natsSubscription *sub;
} source;

struct sonar_gw_events {
    pthread_mutex_t mu;
    pthread_cond_t idle;      /* signalled when a client closes */
    sonar_gw_metrics *metrics;
    sonar_gw_client **clients;
    size_t n_clients, max_clients, queue_max;
    uint64_t seq;
    bool stopping;
    source sources[6];
};

static const source source_table[6] = {
    {"sonar.gather.*", "gather", NULL},     {"sonar.result.*.*", "result", NULL},
    {"sonar.report.*", "report", NULL},     {"sonar.register.*", "register", NULL},
    {"sonar.leave.*", "leave", NULL},       {"sonar.health.*", "health", NULL},
};

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

static bool is_change_event(const char *event)
{
    return strcmp(event, "gather") == 0 || strcmp(event, "result") == 0 ||
           strcmp(event, "report") == 0;
}

/* Queues one event to every client whose filter it passes (hub mutex held). */
static void fan_out(sonar_gw_events *ev, const char *event, const char *text,
                    const char *change_id)
{
    frame *f = frame_make(ev, event, text);
    if (f == NULL)
        return;
    bool report = strcmp(event, "report") == 0;
    for (size_t i = 0; i < ev->n_clients; i++) {
        sonar_gw_client *c = ev->clients[i];
        if (c->change_id != NULL) {
            if (!is_change_event(event) || change_id == NULL ||
                strcmp(change_id, c->change_id) != 0)
                continue;
            client_push(c, f);
            if (report)
                c->ending = true;
        } else {
            client_push(c, f);
        }
    }
    frame_unref(f);
}

/* NATS thread: validate, format, queue. Never waits on a client. */
static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    sonar_gw_events *ev = closure;
    const char *event = NULL;
    for (size_t i = 0; i < 6; i++)
        if (ev->sources[i].sub == sub)
            event = ev->sources[i].event;
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
        fan_out(ev, event, text, json_string_value(json_object_get(doc, "change_id")));
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
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&ev->idle, &attr);
    pthread_condattr_destroy(&attr);
    ev->metrics = metrics;
    ev->max_clients = max_clients;
    ev->queue_max = queue_max;
    memcpy(ev->sources, source_table, sizeof source_table);
    for (size_t i = 0; i < 6; i++) {
        natsStatus s = natsConnection_Subscribe(&ev->sources[i].sub, nc, ev->sources[i].subject,
                                                on_msg, ev);
        if (s != NATS_OK) {
            sonar_gw_events_destroy(ev);
            return sonar_bus_status(s, "subscribing the event stream");
        }
    }
    natsStatus s = natsConnection_Flush(nc);
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
    for (size_t i = 0; i < 6; i++) {
        natsSubscription *sub = ev->sources[i].sub;
        if (sub == NULL)
            continue;
        /* Drain, then wait: after completion no callback can touch the hub. */
        if (natsSubscription_Drain(sub) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(sub, 2000);
        else
            natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
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
    if (c->queue == NULL || (change_id && c->change_id == NULL)) {
        free(c->queue);
        free(c->change_id);
        free(c);
        return SONAR_ERR_NOMEM;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &attr);
    pthread_condattr_destroy(&attr);
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
    if (!c->ending && !c->dropped) {
        frame *f = frame_make(ev, "report", text);
        if (f != NULL) {
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
    pthread_cond_broadcast(&ev->idle);
    pthread_mutex_unlock(&ev->mu);
    sonar_gw_metrics_sse_clients(ev->metrics, -1);
    pthread_cond_destroy(&c->cond);
    free(c->queue);
    free(c->change_id);
    free(c);
}
