/*
 * kitchen: the HTTP toolkit shared by the example services (see kitchen.h).
 *
 * libmicrohttpd calls on_request() several times per request: once when
 * the headers arrived (we allocate our kitchen_request and count it "in
 * flight"), once per chunk of body, and once more with no data, when we
 * dispatch to the route's handler. on_completed() runs when the reply was
 * sent or the connection died; it frees the request and lowers the
 * in-flight count that kitchen_server_drain() waits on.
 */
#include "kitchen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "sonar/log.h"
#include "sonar/util.h"

#define MAX_REPLY_HEADERS 8
#define MAX_COUNTERS 256
/* How long the drain waits for accepted connections to begin their request. */
#define KITCHEN_FRESH_GRACE_MS 1000

/* Requests answered, by route path ("other" for unknown paths) and status code. */
typedef struct request_counter {
    const char *path;   /* borrowed from the route table, or a literal */
    unsigned code;
    uint64_t count;
} request_counter;

struct kitchen_server {
    kitchen_server_config cfg;
    struct MHD_Daemon *daemon;
    MHD_socket quiesced_fd;   /* listening socket handed back by MHD_quiesce_daemon */

    pthread_mutex_t lock;     /* guards everything below */
    pthread_cond_t idle;      /* signalled when in_flight or fresh drops */
    int in_flight;
    int open;                 /* connections open */
    int fresh;                /* of which no request has begun yet */
    request_counter counters[MAX_COUNTERS];
    size_t n_counters;
};

struct kitchen_request {
    kitchen_server *srv;
    struct MHD_Connection *conn;
    const char *method;       /* borrowed from libmicrohttpd, valid for the request */
    const char *path;
    const char *route_path;   /* label for the request counter */
    char *body;
    size_t body_len;
    bool body_too_large;
    bool replied;
    const char *headers[MAX_REPLY_HEADERS][2];
    size_t n_headers;
};

/* ---- Counters ------------------------------------------------------------ */

static void count_reply(kitchen_server *srv, const char *path, unsigned code)
{
    pthread_mutex_lock(&srv->lock);
    size_t i;
    for (i = 0; i < srv->n_counters; i++) {
        if (srv->counters[i].code == code && strcmp(srv->counters[i].path, path) == 0)
            break;
    }
    if (i == srv->n_counters && srv->n_counters < MAX_COUNTERS) {
        srv->counters[i] = (request_counter){ .path = path, .code = code, .count = 0 };
        srv->n_counters++;
    }
    if (i < srv->n_counters)
        srv->counters[i].count++;
    pthread_mutex_unlock(&srv->lock);
}

static void write_server_metrics(kitchen_server *srv, FILE *out)
{
    const char *p = srv->cfg.service;
    fprintf(out, "# HELP %s_http_requests_total HTTP requests answered, by route and status code.\n", p);
    fprintf(out, "# TYPE %s_http_requests_total counter\n", p);
    pthread_mutex_lock(&srv->lock);
    for (size_t i = 0; i < srv->n_counters; i++) {
        fprintf(out, "%s_http_requests_total{path=\"%s\",code=\"%u\"} %llu\n", p,
                srv->counters[i].path, srv->counters[i].code,
                (unsigned long long)srv->counters[i].count);
    }
    int in_flight = srv->in_flight, open = srv->open;
    pthread_mutex_unlock(&srv->lock);
    fprintf(out, "# HELP %s_http_requests_in_flight Requests being served now (this one included).\n", p);
    fprintf(out, "# TYPE %s_http_requests_in_flight gauge\n", p);
    fprintf(out, "%s_http_requests_in_flight %d\n", p, in_flight);
    fprintf(out, "# HELP %s_http_connections_open Client connections open now (this one included).\n", p);
    fprintf(out, "# TYPE %s_http_connections_open gauge\n", p);
    fprintf(out, "%s_http_connections_open %d\n", p, open);
}

/* ---- Replies ------------------------------------------------------------- */

static void reply_raw(kitchen_request *req, unsigned status, const char *content_type,
                      const char *body, size_t len)
{
    if (req->replied) {
        sonar_log(SONAR_LOG_ERROR, "%s %s: handler replied twice (bug)", req->method, req->path);
        return;
    }
    req->replied = true;
    count_reply(req->srv, req->route_path, status);

    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return; /* out of memory: libmicrohttpd closes the connection */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (size_t i = 0; i < req->n_headers; i++)
        MHD_add_response_header(resp, req->headers[i][0], req->headers[i][1]);
    MHD_queue_response(req->conn, status, resp);
    MHD_destroy_response(resp);
}

void kitchen_reply_text(kitchen_request *req, unsigned status, const char *content_type,
                        const char *body, size_t len)
{
    reply_raw(req, status, content_type, body, len);
}

void kitchen_reply_json(kitchen_request *req, unsigned status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        reply_raw(req, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    reply_raw(req, status, "application/json", text, strlen(text));
    free(text);
}

void kitchen_reply_error(kitchen_request *req, unsigned status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kitchen_reply_json(req, status, json_pack("{s:s}", "error", msg));
}

void kitchen_request_add_header(kitchen_request *req, const char *name, const char *value)
{
    if (req->n_headers == MAX_REPLY_HEADERS)
        return;
    req->headers[req->n_headers][0] = name;
    req->headers[req->n_headers][1] = value;
    req->n_headers++;
}

/* ---- Requests ------------------------------------------------------------ */

const char *kitchen_request_method(const kitchen_request *req) { return req->method; }
const char *kitchen_request_path(const kitchen_request *req) { return req->path; }

const char *kitchen_request_query(const kitchen_request *req, const char *name)
{
    if (!MHD_lookup_connection_value_n(req->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name),
                                       NULL, NULL))
        return NULL;
    const char *v = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
    return v != NULL ? v : "";
}

typedef struct query_collect {
    const char *name;
    const char **values;
    size_t max, n;
} query_collect;

static enum MHD_Result collect_value(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    query_collect *c = cls;
    if (key != NULL && strcmp(key, c->name) == 0) {
        if (c->n < c->max)
            c->values[c->n] = value != NULL ? value : "";
        c->n++;
    }
    return MHD_YES;
}

size_t kitchen_request_query_all(const kitchen_request *req, const char *name,
                                 const char **values, size_t max)
{
    query_collect c = { .name = name, .values = values, .max = max, .n = 0 };
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, collect_value, &c);
    return c.n;
}

const char *kitchen_request_body(const kitchen_request *req, size_t *len)
{
    if (len != NULL)
        *len = req->body_len;
    return req->body != NULL ? req->body : "";
}

/* ---- Dispatch ------------------------------------------------------------ */

static void serve_metrics(kitchen_request *req)
{
    kitchen_server *srv = req->srv;
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (out == NULL) {
        kitchen_reply_error(req, 500, "out of memory");
        return;
    }
    write_server_metrics(srv, out);
    if (srv->cfg.metrics != NULL)
        srv->cfg.metrics(out, srv->cfg.closure);
    fclose(out);
    kitchen_reply_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static void dispatch(kitchen_request *req)
{
    kitchen_server *srv = req->srv;
    const kitchen_route *route = NULL;
    bool path_known = false;
    for (size_t i = 0; i < srv->cfg.n_routes; i++) {
        const kitchen_route *r = &srv->cfg.routes[i];
        if (strcmp(r->path, req->path) != 0)
            continue;
        path_known = true;
        req->route_path = r->path;
        if (strcmp(r->method, req->method) == 0) {
            route = r;
            break;
        }
    }
    if (req->body_too_large) {
        kitchen_reply_error(req, 413, "request body larger than %d bytes", KITCHEN_MAX_BODY);
        return;
    }
    if (route != NULL) {
        route->handler(req, srv->cfg.closure);
        if (!req->replied)
            kitchen_reply_error(req, 500, "%s %s: the handler gave no answer", req->method,
                                req->path);
        return;
    }
    if (strcmp(req->path, "/metrics") == 0) {
        req->route_path = "/metrics";
        if (strcmp(req->method, "GET") == 0)
            serve_metrics(req);
        else
            kitchen_reply_error(req, 405, "%s /metrics: only GET is allowed", req->method);
        return;
    }
    if (path_known)
        kitchen_reply_error(req, 405, "%s %s: method not allowed", req->method, req->path);
    else
        kitchen_reply_error(req, 404, "no such endpoint: %s %s", req->method, req->path);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)version;
    kitchen_server *srv = cls;
    kitchen_request *req = *req_cls;

    if (req == NULL) { /* headers arrived: a new request is in flight */
        req = calloc(1, sizeof *req);
        if (req == NULL)
            return MHD_NO;
        req->srv = srv;
        req->conn = conn;
        req->method = method;
        req->path = url;
        req->route_path = "other";
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        bool *fresh = ci ? ci->socket_context : NULL;
        pthread_mutex_lock(&srv->lock);
        srv->in_flight++;
        if (fresh && *fresh) {
            *fresh = false;
            srv->fresh--;
        }
        pthread_mutex_unlock(&srv->lock);
        *req_cls = req;
        return MHD_YES;
    }

    if (*upload_data_size > 0) { /* a chunk of body */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->body_too_large || req->body_len + n > KITCHEN_MAX_BODY) {
            req->body_too_large = true; /* keep reading, answer 413 at the end */
            return MHD_YES;
        }
        char *grown = realloc(req->body, req->body_len + n + 1);
        if (grown == NULL)
            return MHD_NO;
        memcpy(grown + req->body_len, upload_data, n);
        req->body = grown;
        req->body_len += n;
        req->body[req->body_len] = '\0';
        return MHD_YES;
    }

    dispatch(req);
    return req->replied ? MHD_YES : MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode why)
{
    (void)conn;
    (void)why;
    kitchen_server *srv = cls;
    kitchen_request *req = *req_cls;
    if (req == NULL)
        return;
    *req_cls = NULL;
    free(req->body);
    free(req);
    pthread_mutex_lock(&srv->lock);
    if (--srv->in_flight == 0)
        pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);
}

/* Connections opened and closed. A connection is "fresh" until its first
 * request begins: at shutdown the drain waits (briefly) for fresh ones too,
 * so a request already sent on an accepted connection is still served. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)conn;
    kitchen_server *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        bool *fresh = malloc(sizeof *fresh);
        if (fresh != NULL)
            *fresh = true;
        *socket_context = fresh;
        pthread_mutex_lock(&srv->lock);
        srv->open++;
        srv->fresh += fresh != NULL;
        pthread_mutex_unlock(&srv->lock);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        bool *fresh = *socket_context;
        pthread_mutex_lock(&srv->lock);
        srv->open--;
        if (fresh && *fresh) {
            srv->fresh--;
            pthread_cond_broadcast(&srv->idle);
        }
        pthread_mutex_unlock(&srv->lock);
        free(fresh);
        *socket_context = NULL;
    }
}

/* ---- Lifecycle ----------------------------------------------------------- */

sonar_status kitchen_server_create(kitchen_server **out, const kitchen_server_config *cfg)
{
    if (cfg == NULL || cfg->service == NULL || cfg->address == NULL || cfg->port < 1 ||
        cfg->port > 65535 || (cfg->n_routes > 0 && cfg->routes == NULL)) {
        sonar_log(SONAR_LOG_ERROR, "kitchen: invalid server configuration");
        return SONAR_ERR_INVALID;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->address, &sa.sin_addr) != 1) {
        sonar_log(SONAR_LOG_ERROR, "--address %s: not an IPv4 address", cfg->address);
        return SONAR_ERR_INVALID;
    }

    kitchen_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return SONAR_ERR_NOMEM;
    srv->cfg = *cfg;
    srv->quiesced_fd = MHD_INVALID_SOCKET;
    pthread_mutex_init(&srv->lock, NULL);
    sonar_cond_init_monotonic(&srv->idle);

    /* One thread per connection: a handler may block without stalling
     * other clients. MHD_USE_ITC lets MHD_quiesce_daemon() wake the
     * listening thread. */
    srv->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
            MHD_USE_ERROR_LOG,
        (uint16_t)cfg->port, NULL, NULL, on_request, srv,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)256,
        MHD_OPTION_END);
    if (srv->daemon == NULL) {
        sonar_log(SONAR_LOG_ERROR, "cannot listen on %s:%d (port in use?)", cfg->address,
                  cfg->port);
        kitchen_server_destroy(srv);
        return SONAR_ERR_IO;
    }
    *out = srv;
    return SONAR_OK;
}

bool kitchen_server_drain(kitchen_server *srv, int64_t timeout_ms)
{
    if (srv->quiesced_fd == MHD_INVALID_SOCKET) {
        /* MHD stops polling the listening socket; shutting it down makes
         * the kernel refuse new connections at once. It is closed only
         * after MHD_stop_daemon(), as libmicrohttpd asks. */
        srv->quiesced_fd = MHD_quiesce_daemon(srv->daemon);
        if (srv->quiesced_fd != MHD_INVALID_SOCKET)
            shutdown(srv->quiesced_fd, SHUT_RDWR);
    }
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    /* Requests in flight are finished; connections accepted but not yet read
     * get KITCHEN_FRESH_GRACE_MS to begin theirs (a client that connects and
     * says nothing does not hold the shutdown longer). */
    int64_t fresh_until = sonar_now_ms() + KITCHEN_FRESH_GRACE_MS;
    pthread_mutex_lock(&srv->lock);
    int rc = 0;
    while (rc != ETIMEDOUT &&
           (srv->in_flight > 0 || (srv->fresh > 0 && sonar_now_ms() < fresh_until))) {
        if (srv->in_flight == 0) /* only fresh ones left: wake at the grace's end */
            sonar_cond_wait_until(&srv->idle, &srv->lock, fresh_until);
        else
            rc = pthread_cond_timedwait(&srv->idle, &srv->lock, &until);
    }
    bool drained = srv->in_flight == 0;
    pthread_mutex_unlock(&srv->lock);
    return drained;
}

void kitchen_server_destroy(kitchen_server *srv)
{
    if (srv == NULL)
        return;
    if (srv->daemon != NULL)
        MHD_stop_daemon(srv->daemon);
    if (srv->quiesced_fd != MHD_INVALID_SOCKET)
        close(srv->quiesced_fd);
    pthread_cond_destroy(&srv->idle);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
}

/* ---- Parsing ------------------------------------------------------------- */

bool kitchen_parse_int(const char *text, long long min, long long max, long long *out)
{
    if (text == NULL || *text == '\0')
        return false;
    const char *p = text;
    if (*p == '-' && min < 0)
        p++;
    if (*p == '\0' || strlen(p) > 18)
        return false;
    for (const char *c = p; *c != '\0'; c++) {
        if (*c < '0' || *c > '9')
            return false;
    }
    errno = 0;
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool kitchen_name_valid(const char *name)
{
    if (name == NULL)
        return false;
    size_t n = strlen(name);
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* ---- Signals ------------------------------------------------------------- */

static void termination_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
}

void kitchen_block_signals(void)
{
    sigset_t set;
    termination_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, NULL);
}

int kitchen_wait_for_signal(void)
{
    sigset_t set;
    termination_signals(&set);
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    return sig;
}

void kitchen_serve_until_signal(kitchen_server *srv)
{
    int sig = kitchen_wait_for_signal();
    sonar_log(SONAR_LOG_INFO, "%s: stopping: no new connections, finishing requests in flight",
              sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (!kitchen_server_drain(srv, 10000))
        sonar_log(SONAR_LOG_WARN, "requests still in flight after 10 s: closing them");
}

/* ---- Flags --------------------------------------------------------------- */

int kitchen_flag(kitchen_flags *f, const char *prog, int c, const char *arg)
{
    switch (c) {
    case 'a': f->address = arg; return 1;
    case 'v': f->version = arg; return 1;
    case 'A':
        if ((strncmp(arg, "http://", 7) == 0 || strncmp(arg, "https://", 8) == 0) &&
            strlen(arg) < KITCHEN_URL_MAX) {
            f->advertise = arg;
            return 1;
        }
        fprintf(stderr, "%s: --advertise %s: expected an http:// or https:// URL (under 300 bytes)\n",
                prog, arg);
        return -1;
    case 'n': f->join = false; return 1;
    case 'p':
        if (kitchen_parse_int(arg, 1, 65535, &f->port))
            return 1;
        fprintf(stderr, "%s: --port %s: expected 1..65535\n", prog, arg);
        return -1;
    default: return 0;
    }
}

/* ---- Announced addresses ------------------------------------------------- */

void kitchen_urls_init(kitchen_urls *out, const char *advertise, const char *address, int port)
{
    if (advertise != NULL)
        snprintf(out->base, sizeof out->base, "%s", advertise);
    else
        snprintf(out->base, sizeof out->base, "http://%s:%d",
                 strcmp(address, "0.0.0.0") == 0 ? "127.0.0.1" : address, port);
    snprintf(out->health, sizeof out->health, "%s/health", out->base);
    snprintf(out->metrics, sizeof out->metrics, "%s/metrics", out->base);
}
