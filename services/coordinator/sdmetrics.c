/* sonard's Prometheus metrics and their HTTP endpoint. */
#include "sdmetrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/util.h"

/* Gather duration buckets, in seconds. */
static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25, 0.5, 1, 2.5, 5, 10, 30};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])

struct sonard_metrics {
    pthread_mutex_t mu;
    sonar_registry *reg;
    sonar_outbox *outbox;
    struct MHD_Daemon *httpd;
    uint64_t changes;
    uint64_t reports[3]; /* pass, fail, incomplete */
    uint64_t bucket_counts[N_BUCKETS];
    uint64_t gathers;
    double gather_seconds;
};

sonar_status sonard_metrics_create(sonard_metrics **out, sonar_registry *reg,
                                   sonar_outbox *outbox)
{
    sonard_metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&m->mu, NULL);
    m->reg = reg;
    m->outbox = outbox;
    *out = m;
    return SONAR_OK;
}

void sonard_metrics_change(sonard_metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    m->changes++;
    pthread_mutex_unlock(&m->mu);
}

void sonard_metrics_report(sonard_metrics *m, sonar_outcome verdict, int64_t duration_ms)
{
    if (m == NULL)
        return;
    double secs = (double)duration_ms / 1000.0;
    pthread_mutex_lock(&m->mu);
    int k = verdict == SONAR_PASS ? 0 : verdict == SONAR_FAIL ? 1 : 2;
    m->reports[k]++;
    m->gathers++;
    m->gather_seconds += secs;
    for (size_t i = 0; i < N_BUCKETS; i++)
        if (secs <= buckets[i])
            m->bucket_counts[i]++;
    pthread_mutex_unlock(&m->mu);
}

/* A growing text buffer; on allocation failure it stays NULL. */
typedef struct text {
    char *s;
    size_t len, cap;
} text;

__attribute__((format(printf, 2, 3))) static void put(text *t, const char *fmt, ...)
{
    if (t->s == NULL && t->cap != 0)
        return; /* failed before */
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (t->s != NULL && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)n;
        char *s = realloc(t->s, cap);
        if (s == NULL) {
            free(t->s);
            t->s = NULL;
            t->cap = 1;
            return;
        }
        t->s = s;
        t->cap = cap;
    }
}

char *sonard_metrics_render(sonard_metrics *m)
{
    size_t known = sonar_registry_count(m->reg);
    size_t live = sonar_registry_live_count(m->reg, sonar_now_ms());
    sonar_outbox_stats ob = {0};
    if (m->outbox != NULL)
        sonar_outbox_stats_get(m->outbox, &ob);
    pthread_mutex_lock(&m->mu);
    sonard_metrics c = *m;
    pthread_mutex_unlock(&m->mu);

    text t = {0};
    put(&t, "# HELP sonard_changes_total Change announcements received.\n"
            "# TYPE sonard_changes_total counter\n"
            "sonard_changes_total %llu\n", (unsigned long long)c.changes);
    put(&t, "# HELP sonard_reports_total Reports produced, by verdict.\n"
            "# TYPE sonard_reports_total counter\n");
    static const char *verdicts[] = {"pass", "fail", "incomplete"};
    for (int i = 0; i < 3; i++)
        put(&t, "sonard_reports_total{verdict=\"%s\"} %llu\n", verdicts[i],
            (unsigned long long)c.reports[i]);
    put(&t, "# HELP sonard_gather_duration_seconds Time from announcement to report.\n"
            "# TYPE sonard_gather_duration_seconds histogram\n");
    for (size_t i = 0; i < N_BUCKETS; i++)
        put(&t, "sonard_gather_duration_seconds_bucket{le=\"%g\"} %llu\n", buckets[i],
            (unsigned long long)c.bucket_counts[i]);
    put(&t, "sonard_gather_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
            "sonard_gather_duration_seconds_sum %.6f\n"
            "sonard_gather_duration_seconds_count %llu\n",
        (unsigned long long)c.gathers, c.gather_seconds, (unsigned long long)c.gathers);
    put(&t, "# HELP sonard_services Services in the registry.\n"
            "# TYPE sonard_services gauge\n"
            "sonard_services{state=\"known\"} %zu\n"
            "sonard_services{state=\"live\"} %zu\n", known, live);
    put(&t, "# HELP sonard_outbox_pending Reports waiting in the outbox.\n"
            "# TYPE sonard_outbox_pending gauge\n"
            "sonard_outbox_pending %lld\n"
            "# HELP sonard_outbox_oldest_pending_seconds Age of the oldest pending report.\n"
            "# TYPE sonard_outbox_oldest_pending_seconds gauge\n"
            "sonard_outbox_oldest_pending_seconds %.3f\n"
            "# HELP sonard_outbox_published_total Reports confirmed by JetStream.\n"
            "# TYPE sonard_outbox_published_total counter\n"
            "sonard_outbox_published_total %lld\n"
            "# HELP sonard_outbox_retries_total Transient publish failures retried.\n"
            "# TYPE sonard_outbox_retries_total counter\n"
            "sonard_outbox_retries_total %lld\n"
            "# HELP sonard_outbox_dead Reports in the dead-letter table.\n"
            "# TYPE sonard_outbox_dead gauge\n"
            "sonard_outbox_dead %lld\n",
        (long long)ob.pending, (double)ob.oldest_pending_age_ms / 1000.0,
        (long long)ob.published, (long long)ob.retries, (long long)ob.dead_total);
    return t.s;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)state;
    sonard_metrics *m = cls;
    unsigned int code = MHD_HTTP_OK;
    char *body = NULL;
    const char *type = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
        body = strdup("{\"code\":405,\"message\":\"only GET\"}");
        type = "application/json";
    } else if (strcmp(url, "/metrics") == 0) {
        body = sonard_metrics_render(m);
        type = "text/plain; version=0.0.4; charset=utf-8";
        if (body == NULL)
            code = MHD_HTTP_INTERNAL_SERVER_ERROR;
    } else if (strcmp(url, "/health") == 0) {
        body = strdup("{\"status\":\"pass\"}");
        type = "application/json";
    } else {
        code = MHD_HTTP_NOT_FOUND;
        body = strdup("{\"code\":404,\"message\":\"try /metrics or /health\"}");
        type = "application/json";
    }
    if (body == NULL)
        body = strdup("");
    struct MHD_Response *r = MHD_create_response_from_buffer(
        body ? strlen(body) : 0, body ? body : (char *)"", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

sonar_status sonard_metrics_listen(sonard_metrics *m, const char *listen)
{
    char host[64];
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    if (colon == NULL || (size_t)(colon - listen) >= sizeof host)
        return sonar__fail(SONAR_ERR_INVALID, "--metrics-listen \"%s\": expected ADDR:PORT",
                           listen ? listen : "");
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    if (end == colon + 1 || *end != '\0' || port < 0 || port > 65535 ||
        inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return sonar__fail(SONAR_ERR_INVALID,
                           "--metrics-listen \"%s\": expected an IPv4 address and a port 0..65535",
                           listen);
    sa.sin_port = htons((uint16_t)port);
    m->httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                                (uint16_t)port, NULL, NULL, answer, m, MHD_OPTION_SOCK_ADDR,
                                (struct sockaddr *)&sa, MHD_OPTION_END);
    if (m->httpd == NULL)
        return sonar__fail(SONAR_ERR_IO, "cannot listen on %s for /metrics", listen);
    return SONAR_OK;
}

void sonard_metrics_destroy(sonard_metrics *m)
{
    if (m == NULL)
        return;
    if (m->httpd != NULL)
        MHD_stop_daemon(m->httpd);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
