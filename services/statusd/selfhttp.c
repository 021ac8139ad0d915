/* statusd's own HTTP listener: GET /metrics (Prometheus text) and GET /health. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "internal.h"
#include "statusd_internal.h"

/* ---- own figures ---------------------------------------------------------- */

char *statusd_metrics_text(statusd *d)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return NULL;
    static const sonar_health_status all[] = {SONAR_HEALTH_UNKNOWN, SONAR_HEALTH_PASSING,
                                              SONAR_HEALTH_WARNING, SONAR_HEALTH_CRITICAL};
    long long by_status[4] = {0}, by_source[3] = {0}, queued, n;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->n_targets; i++) {
        by_status[d->targets[i]->state.status & 3]++;
        by_source[d->targets[i]->source % 3]++;
    }
    queued = (long long)d->queue_len;
    n = (long long)d->n_targets;
    pthread_mutex_unlock(&d->lock);
    fprintf(f, "# HELP statusd_checks_total Health checks run, by the status each observed.\n"
               "# TYPE statusd_checks_total counter\n");
    for (int i = 1; i < 4; i++)
        fprintf(f, "statusd_checks_total{status=\"%s\"} %lld\n", sonar_health_status_str(all[i]),
                (long long)atomic_load(&d->checks[i]));
    fprintf(f, "# HELP statusd_targets Targets by reported health status.\n"
               "# TYPE statusd_targets gauge\n");
    for (int i = 0; i < 4; i++)
        fprintf(f, "statusd_targets{status=\"%s\"} %lld\n", sonar_health_status_str(all[i]),
                by_status[i]);
    fprintf(f, "# HELP statusd_targets_by_source Targets by where they were learnt.\n"
               "# TYPE statusd_targets_by_source gauge\n");
    for (int i = 0; i < 3; i++)
        fprintf(f, "statusd_targets_by_source{source=\"%s\"} %lld\n",
                statusd_source_str((statusd_source)i), by_source[i]);
    fprintf(f,
            "# HELP statusd_targets_total_count All targets.\n"
            "# TYPE statusd_targets_total_count gauge\nstatusd_targets_total_count %lld\n"
            "# HELP statusd_check_queue_length Due targets waiting for a worker.\n"
            "# TYPE statusd_check_queue_length gauge\nstatusd_check_queue_length %lld\n"
            "# HELP statusd_scrapes_total Metric scrapes attempted.\n"
            "# TYPE statusd_scrapes_total counter\nstatusd_scrapes_total %lld\n"
            "# HELP statusd_scrape_errors_total Scrapes that failed (transfer, HTTP status, "
            "parse or storage).\n"
            "# TYPE statusd_scrape_errors_total counter\nstatusd_scrape_errors_total %lld\n"
            "# HELP statusd_samples_stored_total Metric samples stored.\n"
            "# TYPE statusd_samples_stored_total counter\nstatusd_samples_stored_total %lld\n"
            "# HELP statusd_transitions_total Health transitions enqueued as events.\n"
            "# TYPE statusd_transitions_total counter\nstatusd_transitions_total %lld\n"
            "# HELP statusd_event_errors_total Health transitions that could not be enqueued.\n"
            "# TYPE statusd_event_errors_total counter\nstatusd_event_errors_total %lld\n"
            "# HELP statusd_store_errors_total Results or samples the database refused.\n"
            "# TYPE statusd_store_errors_total counter\nstatusd_store_errors_total %lld\n"
            "# HELP statusd_pruned_rows_total Checks and samples removed by retention.\n"
            "# TYPE statusd_pruned_rows_total counter\nstatusd_pruned_rows_total %lld\n",
            n, queued, (long long)atomic_load(&d->scrapes),
            (long long)atomic_load(&d->scrape_errors), (long long)atomic_load(&d->samples_stored),
            (long long)atomic_load(&d->transitions), (long long)atomic_load(&d->event_errors),
            (long long)atomic_load(&d->store_errors), (long long)atomic_load(&d->pruned_rows));
    sonar_outbox_stats os = {0};
    if (d->outbox != NULL)
        sonar_outbox_stats_get(d->outbox, &os);
    fprintf(f,
            "# HELP statusd_outbox_pending Health events waiting to be published.\n"
            "# TYPE statusd_outbox_pending gauge\nstatusd_outbox_pending %lld\n"
            "# HELP statusd_outbox_oldest_pending_age_seconds Age of the oldest pending event.\n"
            "# TYPE statusd_outbox_oldest_pending_age_seconds gauge\n"
            "statusd_outbox_oldest_pending_age_seconds %.3f\n"
            "# HELP statusd_outbox_published_total Events confirmed by JetStream.\n"
            "# TYPE statusd_outbox_published_total counter\nstatusd_outbox_published_total %lld\n"
            "# HELP statusd_outbox_retries_total Publish attempts that failed transiently.\n"
            "# TYPE statusd_outbox_retries_total counter\nstatusd_outbox_retries_total %lld\n"
            "# HELP statusd_outbox_dead Events in the dead-letter table.\n"
            "# TYPE statusd_outbox_dead gauge\nstatusd_outbox_dead %lld\n"
            "# HELP statusd_outbox_connected 1 when the relay's NATS connection is up.\n"
            "# TYPE statusd_outbox_connected gauge\nstatusd_outbox_connected %d\n",
            (long long)os.pending, (double)os.oldest_pending_age_ms / 1000.0,
            (long long)os.published, (long long)os.retries, (long long)os.dead_total,
            os.connected ? 1 : 0);
    fclose(f);
    return buf;
}


/* ---- HTTP listener ---- */

struct statusd_http {
    struct MHD_Daemon *mhd;
    statusd *d;
};

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *type,
                              const char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    (void)upload_data;
    statusd_http *h = cls;
    if (*con_cls == NULL) { /* first call: headers only */
        *con_cls = h;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* bodies are ignored */
        return MHD_YES;
    }
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static const char msg[] = "only GET\n";
        return answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text, msg, sizeof msg - 1,
                      MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(url, "/metrics") == 0) {
        char *body = statusd_metrics_text(h->d);
        if (body == NULL)
            return MHD_NO;
        return answer(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body,
                      strlen(body), MHD_RESPMEM_MUST_FREE);
    }
    if (strcmp(url, "/health") == 0) {
        static const char ok[] = "{\"status\":\"pass\"}";
        return answer(conn, MHD_HTTP_OK, "application/health+json", ok, sizeof ok - 1,
                      MHD_RESPMEM_PERSISTENT);
    }
    static const char missing[] = "not found: try /metrics or /health\n";
    return answer(conn, MHD_HTTP_NOT_FOUND, text, missing, sizeof missing - 1,
                  MHD_RESPMEM_PERSISTENT);
}

/* "ADDR:PORT" (IPv4 or localhost) into \p sa. */
static sonar_status parse_listen(const char *listen, struct sockaddr_in *out)
{
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    if (colon == NULL || colon == listen || colon[1] == '\0')
        return sonar__fail(SONAR_ERR_INVALID,
                           "--listen '%s': expected ADDR:PORT, e.g. 127.0.0.1:9464",
                           listen ? listen : "");
    char host[64];
    size_t hlen = (size_t)(colon - listen);
    if (hlen >= sizeof host)
        return sonar__fail(SONAR_ERR_INVALID, "--listen '%s': address too long", listen);
    memcpy(host, listen, hlen);
    host[hlen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535)
        return sonar__fail(SONAR_ERR_INVALID, "--listen '%s': port must be 1..65535", listen);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return sonar__fail(SONAR_ERR_INVALID, "--listen '%s': '%s' is not an IPv4 address",
                           listen, host);
    *out = sa;
    return SONAR_OK;
}

sonar_status statusd_http_check(const char *listen)
{
    struct sockaddr_in sa;
    return parse_listen(listen, &sa);
}

sonar_status statusd_http_start(statusd_http **out, statusd *d, const char *listen)
{
    struct sockaddr_in sa;
    sonar_status st = parse_listen(listen, &sa);
    if (st != SONAR_OK)
        return st;
    long port = ntohs(sa.sin_port);
    statusd_http *h = calloc(1, sizeof *h);
    if (h == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    h->d = d;
    h->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                              (uint16_t)port, NULL, NULL, on_request, h,
                              MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (h->mhd == NULL) {
        free(h);
        return sonar__fail(SONAR_ERR_IO, "--listen %s: cannot listen (address in use?)", listen);
    }
    *out = h;
    return SONAR_OK;
}

void statusd_http_stop(statusd_http *h)
{
    if (h == NULL)
        return;
    MHD_stop_daemon(h->mhd);
    free(h);
}
