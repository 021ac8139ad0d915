#include "httpd.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <microhttpd.h>

#define MAX_ROUTES 64
#define MAX_REPLY_HEADERS 16
#define MAX_REQUEST_BODY (16 * 1024 * 1024)

typedef struct route {
    char *method; /* NULL: any */
    char *path;
    int status;
    char *body;
    size_t body_len;
    char **headers; /* name, value, ..., NULL */
    test_httpd_fn fn;
    void *closure;
    int64_t delay_ms;
    int hits;
} route;

struct test_httpd {
    struct MHD_Daemon *daemon;
    int port;
    char url[64];
    pthread_mutex_t mu;
    pthread_cond_t wake;
    bool stopping;
    route routes[MAX_ROUTES];
    size_t n_routes;
};

struct test_httpd_reply_t {
    int status;
    char *body;
    size_t body_len;
    char *headers[2 * MAX_REPLY_HEADERS];
    size_t n_headers;
};

/* Per-request state across MHD's calls: the uploaded body. */
typedef struct pending {
    char *body;
    size_t len;
    bool too_big;
} pending;

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static route *find_route(test_httpd *d, const char *method, const char *path)
{
    for (size_t i = 0; i < d->n_routes; i++) {
        route *r = &d->routes[i];
        if (strcmp(r->path, path) != 0)
            continue;
        if (r->method == NULL || method == NULL || strcmp(r->method, method) == 0)
            return r;
    }
    return NULL;
}

/* Finds or adds the route for exactly (method, path); caller holds mu. */
static route *slot(test_httpd *d, const char *method, const char *path)
{
    for (size_t i = 0; i < d->n_routes; i++) {
        route *r = &d->routes[i];
        bool same_method = (r->method == NULL && method == NULL) ||
                           (r->method && method && strcmp(r->method, method) == 0);
        if (same_method && strcmp(r->path, path) == 0) {
            free(r->body);
            if (r->headers)
                for (char **h = r->headers; *h; h++)
                    free(*h);
            free(r->headers);
            r->body = NULL;
            r->headers = NULL;
            r->fn = NULL;
            return r;
        }
    }
    if (d->n_routes == MAX_ROUTES) {
        fprintf(stderr, "test_httpd: more than %d routes\n", MAX_ROUTES);
        abort();
    }
    route *r = &d->routes[d->n_routes++];
    memset(r, 0, sizeof *r);
    r->method = dup_or_null(method);
    r->path = strdup(path);
    return r;
}

static void wait_delay(test_httpd *d, int64_t delay_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += delay_ms / 1000;
    until.tv_nsec += (delay_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&d->mu);
    while (!d->stopping) {
        if (pthread_cond_timedwait(&d->wake, &d->mu, &until) != 0)
            break; /* timed out: the delay is over */
    }
    pthread_mutex_unlock(&d->mu);
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **con_cls)
{
    (void)version;
    test_httpd *d = cls;
    pending *p = *con_cls;
    if (p == NULL) {
        p = calloc(1, sizeof *p);
        if (p == NULL)
            return MHD_NO;
        *con_cls = p;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (p->len + *upload_data_size > MAX_REQUEST_BODY) {
            p->too_big = true;
        } else {
            char *grown = realloc(p->body, p->len + *upload_data_size + 1);
            if (grown == NULL)
                return MHD_NO;
            p->body = grown;
            memcpy(p->body + p->len, upload_data, *upload_data_size);
            p->len += *upload_data_size;
            p->body[p->len] = '\0';
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    test_httpd_reply_t reply = {.status = 404};
    test_httpd_fn fn = NULL;
    void *closure = NULL;
    int64_t delay = 0;
    pthread_mutex_lock(&d->mu);
    route *r = find_route(d, method, url);
    if (r) {
        r->hits++;
        reply.status = r->status;
        delay = r->delay_ms;
        fn = r->fn;
        closure = r->closure;
        if (fn == NULL) {
            reply.body = malloc(r->body_len + 1);
            if (reply.body) {
                memcpy(reply.body, r->body, r->body_len);
                reply.body[r->body_len] = '\0';
                reply.body_len = r->body_len;
            }
            for (size_t i = 0; r->headers && r->headers[i] && r->headers[i + 1] &&
                               reply.n_headers < 2 * MAX_REPLY_HEADERS;
                 i += 2) {
                reply.headers[reply.n_headers++] = strdup(r->headers[i]);
                reply.headers[reply.n_headers++] = strdup(r->headers[i + 1]);
            }
        }
    } else {
        reply.body = strdup("no such route\n");
        reply.body_len = strlen(reply.body);
    }
    pthread_mutex_unlock(&d->mu);

    if (delay > 0)
        wait_delay(d, delay);
    if (p->too_big) {
        test_httpd_reply(&reply, 413, "request body too large\n");
    } else if (fn) {
        test_httpd_request req = {
            .method = method,
            .path = url,
            .body = p->body ? p->body : "",
            .body_len = p->len,
            .conn_ = conn,
        };
        fn(&req, &reply, closure);
    }

    struct MHD_Response *resp = MHD_create_response_from_buffer(
        reply.body_len, reply.body ? reply.body : (char *)"", MHD_RESPMEM_MUST_COPY);
    enum MHD_Result rc = MHD_NO;
    if (resp) {
        for (size_t i = 0; i + 1 < reply.n_headers; i += 2)
            if (reply.headers[i] && reply.headers[i + 1])
                MHD_add_response_header(resp, reply.headers[i], reply.headers[i + 1]);
        rc = MHD_queue_response(conn, (unsigned)reply.status, resp);
        MHD_destroy_response(resp);
    }
    free(reply.body);
    for (size_t i = 0; i < reply.n_headers; i++)
        free(reply.headers[i]);
    return rc;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    pending *p = *con_cls;
    if (p) {
        free(p->body);
        free(p);
        *con_cls = NULL;
    }
}

test_httpd *test_httpd_start(void)
{
    test_httpd *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->wake, NULL);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0; /* the kernel picks a free port; we ask MHD which */
    d->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                     MHD_USE_ERROR_LOG,
                                 0, NULL, NULL, answer, d, MHD_OPTION_SOCK_ADDR,
                                 (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, completed,
                                 d, MHD_OPTION_END);
    if (d->daemon == NULL) {
        fprintf(stderr, "test_httpd: MHD_start_daemon failed\n");
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->wake);
        free(d);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d->daemon, MHD_DAEMON_INFO_BIND_PORT);
    d->port = info ? info->port : 0;
    snprintf(d->url, sizeof d->url, "http://127.0.0.1:%d", d->port);
    return d;
}

void test_httpd_stop(test_httpd *d)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_broadcast(&d->wake);
    pthread_mutex_unlock(&d->mu);
    MHD_stop_daemon(d->daemon);
    for (size_t i = 0; i < d->n_routes; i++) {
        route *r = &d->routes[i];
        free(r->method);
        free(r->path);
        free(r->body);
        if (r->headers)
            for (char **h = r->headers; *h; h++)
                free(*h);
        free(r->headers);
    }
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->wake);
    free(d);
}

const char *test_httpd_url(const test_httpd *d)
{
    return d->url;
}

int test_httpd_port(const test_httpd *d)
{
    return d->port;
}

static void set_fixed(test_httpd *d, const char *method, const char *path, int status,
                      const char *body, size_t len, const char *const *headers)
{
    size_t n = 0;
    while (headers && headers[n])
        n++;
    pthread_mutex_lock(&d->mu);
    route *r = slot(d, method, path);
    r->status = status;
    r->body = malloc(len + 1);
    r->headers = calloc(n + 1, sizeof *r->headers);
    if (r->body == NULL || r->headers == NULL)
        abort();
    if (len)
        memcpy(r->body, body, len);
    r->body[len] = '\0';
    r->body_len = len;
    for (size_t i = 0; i < n; i++)
        r->headers[i] = strdup(headers[i]);
    pthread_mutex_unlock(&d->mu);
}

void test_httpd_route_bytes(test_httpd *d, const char *method, const char *path, int status,
                            const char *body, size_t len)
{
    set_fixed(d, method, path, status, body, len, NULL);
}

void test_httpd_route(test_httpd *d, const char *method, const char *path, int status,
                      const char *body, const char *const *headers)
{
    set_fixed(d, method, path, status, body ? body : "", body ? strlen(body) : 0, headers);
}

void test_httpd_handle(test_httpd *d, const char *method, const char *path, test_httpd_fn fn,
                       void *closure)
{
    pthread_mutex_lock(&d->mu);
    route *r = slot(d, method, path);
    r->status = 200;
    r->fn = fn;
    r->closure = closure;
    pthread_mutex_unlock(&d->mu);
}

void test_httpd_delay(test_httpd *d, const char *method, const char *path, int64_t delay_ms)
{
    pthread_mutex_lock(&d->mu);
    route *r = find_route(d, method, path);
    if (r)
        r->delay_ms = delay_ms;
    pthread_mutex_unlock(&d->mu);
    if (r == NULL) {
        fprintf(stderr, "test_httpd_delay: no route %s %s\n", method ? method : "*", path);
        abort();
    }
}

int test_httpd_hits(test_httpd *d, const char *method, const char *path)
{
    pthread_mutex_lock(&d->mu);
    route *r = find_route(d, method, path);
    int hits = r ? r->hits : 0;
    pthread_mutex_unlock(&d->mu);
    return hits;
}

const char *test_httpd_query(const test_httpd_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn_, MHD_GET_ARGUMENT_KIND, name);
}

const char *test_httpd_header(const test_httpd_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn_, MHD_HEADER_KIND, name);
}

void test_httpd_reply(test_httpd_reply_t *reply, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *body = NULL;
    int n = vasprintf(&body, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    free(reply->body);
    reply->status = status;
    reply->body = body;
    reply->body_len = (size_t)n;
}

void test_httpd_reply_header(test_httpd_reply_t *reply, const char *name, const char *value)
{
    if (reply->n_headers + 2 > 2 * MAX_REPLY_HEADERS)
        return;
    reply->headers[reply->n_headers++] = strdup(name);
    reply->headers[reply->n_headers++] = strdup(value);
}
