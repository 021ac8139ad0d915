/* The gateway's own metrics. See gwmetrics.h. */
#include "gwmetrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HTTP 256
#define MAX_ROUTES 32
#define MAX_BUS 64

static const double buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])

typedef struct http_count {
    const char *route, *method;
    int code;
    uint64_t n;
} http_count;

typedef struct route_hist {
    const char *route;
    uint64_t bucket[N_BUCKETS]; /* non-cumulative; summed when rendered */
    uint64_t count;
    double sum;
} route_hist;

typedef struct bus_count {
    const char *subject, *error; /* error NULL: the request total */
    uint64_t n;
} bus_count;

struct sonar_gw_metrics {
    pthread_mutex_t mu;
    char *version;
    http_count http[MAX_HTTP];
    size_t n_http;
    route_hist hist[MAX_ROUTES];
    size_t n_hist;
    bus_count bus[MAX_BUS];
    size_t n_bus;
    int64_t sse_clients;
    uint64_t sse_events, sse_dropped;
};

sonar_status sonar_gw_metrics_create(sonar_gw_metrics **out, const char *version)
{
    sonar_gw_metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return SONAR_ERR_NOMEM;
    m->version = strdup(version ? version : "0.0.0");
    if (m->version == NULL) {
        free(m);
        return SONAR_ERR_NOMEM;
    }
    pthread_mutex_init(&m->mu, NULL);
    *out = m;
    return SONAR_OK;
}

void sonar_gw_metrics_destroy(sonar_gw_metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m->version);
    free(m);
}

void sonar_gw_metrics_http(sonar_gw_metrics *m, const char *route, const char *method, int code,
                           double seconds)
{
    pthread_mutex_lock(&m->mu);
    size_t i;
    for (i = 0; i < m->n_http; i++)
        if (m->http[i].code == code && strcmp(m->http[i].route, route) == 0 &&
            strcmp(m->http[i].method, method) == 0)
            break;
    if (i == m->n_http && i < MAX_HTTP)
        m->http[m->n_http++] = (http_count){route, method, code, 0};
    if (i < MAX_HTTP)
        m->http[i].n++;
    for (i = 0; i < m->n_hist; i++)
        if (strcmp(m->hist[i].route, route) == 0)
            break;
    if (i == m->n_hist && i < MAX_ROUTES) {
        memset(&m->hist[i], 0, sizeof m->hist[i]);
        m->hist[m->n_hist++].route = route;
    }
    if (i < MAX_ROUTES) {
        route_hist *h = &m->hist[i];
        for (size_t b = 0; b < N_BUCKETS; b++)
            if (seconds <= buckets[b]) {
                h->bucket[b]++;
                break;
            }
        h->count++;
        h->sum += seconds;
    }
    pthread_mutex_unlock(&m->mu);
}

static void bus_add(sonar_gw_metrics *m, const char *subject, const char *error)
{
    size_t i;
    for (i = 0; i < m->n_bus; i++)
        if (strcmp(m->bus[i].subject, subject) == 0 &&
            ((error == NULL && m->bus[i].error == NULL) ||
             (error && m->bus[i].error && strcmp(error, m->bus[i].error) == 0)))
            break;
    if (i == m->n_bus && i < MAX_BUS)
        m->bus[m->n_bus++] = (bus_count){subject, error, 0};
    if (i < MAX_BUS)
        m->bus[i].n++;
}

void sonar_gw_metrics_bus(sonar_gw_metrics *m, const char *subject, const char *error)
{
    pthread_mutex_lock(&m->mu);
    bus_add(m, subject, NULL);
    if (error)
        bus_add(m, subject, error);
    pthread_mutex_unlock(&m->mu);
}

void sonar_gw_metrics_sse_clients(sonar_gw_metrics *m, int delta)
{
    pthread_mutex_lock(&m->mu);
    m->sse_clients += delta;
    pthread_mutex_unlock(&m->mu);
}

void sonar_gw_metrics_sse_events(sonar_gw_metrics *m, uint64_t n)
{
    pthread_mutex_lock(&m->mu);
    m->sse_events += n;
    pthread_mutex_unlock(&m->mu);
}

void sonar_gw_metrics_sse_dropped(sonar_gw_metrics *m)
{
    pthread_mutex_lock(&m->mu);
    m->sse_dropped++;
    pthread_mutex_unlock(&m->mu);
}

/* A growing text buffer; on allocation failure it turns into a NULL result. */
typedef struct buf {
    char *data;
    size_t len, cap;
    bool failed;
} buf;

__attribute__((format(printf, 2, 3)))
static void put(buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *d = realloc(b->data, cap);
        if (d == NULL) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
}

char *sonar_gw_metrics_render(sonar_gw_metrics *m)
{
    buf b = {.data = malloc(4096), .cap = 4096};
    if (b.data == NULL)
        return NULL;
    b.data[0] = '\0';
    pthread_mutex_lock(&m->mu);
    put(&b, "# HELP sonar_gateway_info The gateway's version.\n"
            "# TYPE sonar_gateway_info gauge\n"
            "sonar_gateway_info{version=\"%s\"} 1\n", m->version);
    put(&b, "# HELP sonar_gateway_http_requests_total HTTP requests answered, by route "
            "template, method and status code.\n"
            "# TYPE sonar_gateway_http_requests_total counter\n");
    for (size_t i = 0; i < m->n_http; i++)
        put(&b, "sonar_gateway_http_requests_total{route=\"%s\",method=\"%s\",code=\"%d\"} %llu\n",
            m->http[i].route, m->http[i].method, m->http[i].code,
            (unsigned long long)m->http[i].n);
    put(&b, "# HELP sonar_gateway_http_request_duration_seconds Time to answer an HTTP "
            "request (for the event stream: until it started), by route template.\n"
            "# TYPE sonar_gateway_http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < m->n_hist; i++) {
        const route_hist *h = &m->hist[i];
        uint64_t cum = 0;
        for (size_t k = 0; k < N_BUCKETS; k++) {
            cum += h->bucket[k];
            put(&b, "sonar_gateway_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                h->route, buckets[k], (unsigned long long)cum);
        }
        put(&b, "sonar_gateway_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n"
                "sonar_gateway_http_request_duration_seconds_sum{route=\"%s\"} %.9g\n"
                "sonar_gateway_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
            h->route, (unsigned long long)h->count, h->route, h->sum, h->route,
            (unsigned long long)h->count);
    }
    put(&b, "# HELP sonar_gateway_bus_requests_total Requests sent over the bus, by subject.\n"
            "# TYPE sonar_gateway_bus_requests_total counter\n");
    for (size_t i = 0; i < m->n_bus; i++)
        if (m->bus[i].error == NULL)
            put(&b, "sonar_gateway_bus_requests_total{subject=\"%s\"} %llu\n", m->bus[i].subject,
                (unsigned long long)m->bus[i].n);
    put(&b, "# HELP sonar_gateway_bus_request_errors_total Bus requests that failed, by "
            "subject and reason (no_responders, timeout, nats, error_reply, bad_reply).\n"
            "# TYPE sonar_gateway_bus_request_errors_total counter\n");
    for (size_t i = 0; i < m->n_bus; i++)
        if (m->bus[i].error != NULL)
            put(&b, "sonar_gateway_bus_request_errors_total{subject=\"%s\",reason=\"%s\"} %llu\n",
                m->bus[i].subject, m->bus[i].error, (unsigned long long)m->bus[i].n);
    put(&b, "# HELP sonar_gateway_sse_clients Event-stream clients connected now.\n"
            "# TYPE sonar_gateway_sse_clients gauge\n"
            "sonar_gateway_sse_clients %lld\n"
            "# HELP sonar_gateway_sse_events_total Events queued to event-stream clients.\n"
            "# TYPE sonar_gateway_sse_events_total counter\n"
            "sonar_gateway_sse_events_total %llu\n"
            "# HELP sonar_gateway_sse_dropped_total Event-stream clients dropped because "
            "their queue was full (too slow).\n"
            "# TYPE sonar_gateway_sse_dropped_total counter\n"
            "sonar_gateway_sse_dropped_total %llu\n",
        (long long)m->sse_clients, (unsigned long long)m->sse_events,
        (unsigned long long)m->sse_dropped);
    pthread_mutex_unlock(&m->mu);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    return b.data;
}
