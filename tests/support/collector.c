#include "collector.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct item {
    char *subject;
    char *data;
} item;

struct test_collector {
    natsSubscription *sub;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    item *items;
    size_t n, cap;
};

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    test_collector *c = closure;
    int len = natsMsg_GetDataLength(msg);
    char *data = malloc((size_t)len + 1);
    char *subject = strdup(natsMsg_GetSubject(msg));
    if (data && len > 0)
        memcpy(data, natsMsg_GetData(msg), (size_t)len);
    if (data)
        data[len] = '\0';
    pthread_mutex_lock(&c->lock);
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        item *items = realloc(c->items, cap * sizeof *items);
        if (items) {
            c->items = items;
            c->cap = cap;
        }
    }
    if (c->n < c->cap && data && subject) {
        c->items[c->n++] = (item){subject, data};
        data = NULL;
        subject = NULL;
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    free(data);
    free(subject);
    natsMsg_Destroy(msg);
}

test_collector *test_collector_create(natsConnection *nc, const char *subject)
{
    test_collector *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    if (natsConnection_Subscribe(&c->sub, nc, subject, on_msg, c) != NATS_OK ||
        natsConnection_Flush(nc) != NATS_OK) {
        test_collector_destroy(c);
        return NULL;
    }
    return c;
}

size_t test_collector_count(test_collector *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = c->n;
    pthread_mutex_unlock(&c->lock);
    return n;
}

bool test_collector_wait(test_collector *c, size_t n, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->lock);
    int rc = 0;
    while (c->n < n && rc == 0)
        rc = pthread_cond_timedwait(&c->cond, &c->lock, &ts);
    bool ok = c->n >= n;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

const char *test_collector_data(test_collector *c, size_t i)
{
    pthread_mutex_lock(&c->lock);
    const char *d = i < c->n ? c->items[i].data : NULL;
    pthread_mutex_unlock(&c->lock);
    return d;
}

const char *test_collector_subject(test_collector *c, size_t i)
{
    pthread_mutex_lock(&c->lock);
    const char *d = i < c->n ? c->items[i].subject : NULL;
    pthread_mutex_unlock(&c->lock);
    return d;
}

void test_collector_destroy(test_collector *c)
{
    if (c == NULL)
        return;
    if (c->sub) {
        /* Drain so no callback is still running when we free. */
        if (natsSubscription_Drain(c->sub) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(c->sub, 5000);
        else
            natsSubscription_Unsubscribe(c->sub);
        natsSubscription_Destroy(c->sub);
    }
    for (size_t i = 0; i < c->n; i++) {
        free(c->items[i].subject);
        free(c->items[i].data);
    }
    free(c->items);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
}
