/* sonar-gateway: HTTP server, routing and replies. See gateway.h. */
#include "gateway_internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

/* Per-connection request state across libmicrohttpd's calls. */
typedef struct conn_state {
    int64_t start_ns;
    char *body;
    size_t len, cap;
    bool too_big;
} conn_state;

typedef struct route {
    const char *path;       /* exact path, or prefix ending in '/' when templated */
    bool templated;
    const char *label;      /* metrics label */
    sonar_gw_handler get, post, del;
} route;

static void handle_health(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);
static void handle_metrics(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp);

static const route routes[] = {
    {"/api/v1/services", false, "/api/v1/services", sonar_gw_api_services, NULL, NULL},
    {"/api/v1/graph", false, "/api/v1/graph", sonar_gw_api_graph, NULL, NULL},
    {"/api/v1/checks", false, "/api/v1/checks", sonar_gw_api_checks, NULL, NULL},
    {"/api/v1/metrics", false, "/api/v1/metrics", sonar_gw_api_metrics, NULL, NULL},
    {"/api/v1/reports", false, "/api/v1/reports", sonar_gw_api_reports, NULL, NULL},
    {"/api/v1/reports/", true, "/api/v1/reports/{change_id}", sonar_gw_api_report, NULL, NULL},
    {"/api/v1/targets", false, "/api/v1/targets", sonar_gw_api_targets, sonar_gw_api_target_add,
     NULL},
    {"/api/v1/targets/", true, "/api/v1/targets/{name}", NULL, NULL, sonar_gw_api_target_remove},
    {"/api/v1/events", false, "/api/v1/events", sonar_gw_api_events, NULL, NULL},
    {"/health", false, "/health", handle_health, NULL, NULL},
    {"/metrics", false, "/metrics", handle_metrics, NULL, NULL},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

/* ---- Replies ---------------------------------------------------------------- */

void sonar_gw_reply_json(sonar_gw_reply *rp, int status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL) {
        static const char oom[] = "{\"code\":500,\"message\":\"out of memory\"}";
        rp->status = 500;
        rp->static_body = (const unsigned char *)oom;
        rp->body_len = sizeof oom - 1;
    } else {
        rp->status = status;
        rp->body = text;
        rp->body_len = strlen(text);
    }
    rp->content_type = "application/json";
}

void sonar_gw_reply_error(sonar_gw_reply *rp, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *text = json_string(msg);
    if (text == NULL) {
        /* the message quotes client input that is not UTF-8: keep it ASCII */
        for (unsigned char *c = (unsigned char *)msg; *c; c++)
            if (*c >= 0x80 || *c < 0x20)
                *c = '?';
        text = json_string(msg);
    }
    sonar_gw_reply_json(rp, status, json_pack("{s:i, s:o}", "code", status, "message", text));
}

const char *sonar_gw_query(const sonar_gw_req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
}

typedef struct query_scan {
    const char *const *allowed;
    const char *seen[16];
    size_t n_seen;
    char why[256];
} query_scan;

static enum MHD_Result scan_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    (void)value;
    query_scan *q = cls;
    bool known = false;
    for (const char *const *a = q->allowed; *a; a++)
        if (strcmp(*a, key) == 0)
            known = true;
    if (!known) {
        char list[160] = "";
        for (const char *const *a = q->allowed; *a; a++) {
            strncat(list, list[0] ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, *a, sizeof list - strlen(list) - 1);
        }
        snprintf(q->why, sizeof q->why, "unknown parameter \"%.64s\" (%s%s)", key,
                 list[0] ? "allowed: " : "this route takes none", list);
        return MHD_NO;
    }
    for (size_t i = 0; i < q->n_seen; i++) {
        if (strcmp(q->seen[i], key) == 0) {
            snprintf(q->why, sizeof q->why, "parameter \"%s\" is given more than once", key);
            return MHD_NO;
        }
    }
    if (q->n_seen < 16)
        q->seen[q->n_seen++] = key;
    return MHD_YES;
}

bool sonar_gw_query_check(const sonar_gw_req *rq, sonar_gw_reply *rp,
                          const char *const *allowed)
{
    query_scan q = {.allowed = allowed};
    MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, scan_arg, &q);
    if (q.why[0] != '\0') {
        sonar_gw_reply_error(rp, 400, "%s", q.why);
        return false;
    }
    return true;
}

/* ---- Own endpoints ------------------------------------------------------------ */

static void handle_health(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const none[] = {NULL};
    if (!sonar_gw_query_check(rq, rp, none))
        return;
    natsConnection *nc = sonar_bus_nats(gw->bus);
    bool up = natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
    json_t *doc = json_pack("{s:s, s:s, s:{s:[{s:s, s:s}]}}", "status", up ? "pass" : "fail",
                            "version", gw->version, "checks", "nats:connection", "status",
                            up ? "pass" : "fail", "observedValue",
                            up ? sonar_bus_url(gw->bus) : "disconnected");
    sonar_gw_reply_json(rp, up ? 200 : 503, doc);
    rp->content_type = "application/health+json";
}

static void handle_metrics(sonar_gateway *gw, const sonar_gw_req *rq, sonar_gw_reply *rp)
{
    static const char *const none[] = {NULL};
    if (!sonar_gw_query_check(rq, rp, none))
        return;
    char *text = sonar_gw_metrics_render(gw->metrics);
    if (text == NULL) {
        sonar_gw_reply_error(rp, 500, "out of memory");
        return;
    }
    rp->status = 200;
    rp->body = text;
    rp->body_len = strlen(text);
    rp->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

static const sonar_gw_asset *find_asset(const char *path)
{
    if (strcmp(path, "/") == 0)
        path = "/index.html";
    for (size_t i = 0; i < sonar_gw_n_assets; i++)
        if (strcmp(sonar_gw_assets[i].path, path) == 0)
            return &sonar_gw_assets[i];
    return NULL;
}

/* ---- Dispatch ----------------------------------------------------------------- */

static enum MHD_Result send_reply(struct MHD_Connection *conn, sonar_gw_reply *rp)
{
    struct MHD_Response *r = rp->response;
    if (r == NULL) {
        if (rp->static_body)
            r = MHD_create_response_from_buffer(rp->body_len, (void *)rp->static_body,
                                                MHD_RESPMEM_PERSISTENT);
        else
            r = MHD_create_response_from_buffer(rp->body_len, rp->body ? rp->body : (void *)"",
                                                rp->body ? MHD_RESPMEM_MUST_FREE
                                                         : MHD_RESPMEM_PERSISTENT);
        if (r == NULL) {
            free(rp->body);
            rp->body = NULL;
            return MHD_NO;
        }
        rp->body = NULL;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                rp->content_type ? rp->content_type : "application/json");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    }
    if (rp->location[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, rp->location);
    if (rp->allow[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, rp->allow);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned int)rp->status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Routes the request and fills rp; returns the metrics label. */
static const char *dispatch(sonar_gateway *gw, sonar_gw_req *rq, sonar_gw_reply *rp,
                            const char *method)
{
    for (size_t i = 0; i < N_ROUTES; i++) {
        const route *r = &routes[i];
        if (r->templated) {
            size_t n = strlen(r->path);
            if (strncmp(rq->path, r->path, n) != 0 || rq->path[n] == '\0' ||
                strchr(rq->path + n, '/') != NULL)
                continue;
            rq->param = rq->path + n;
        } else if (strcmp(rq->path, r->path) != 0) {
            continue;
        }
        /* HEAD is GET without the body (libmicrohttpd leaves it out) */
        bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        sonar_gw_handler h = get                             ? r->get
                             : strcmp(method, "POST") == 0   ? r->post
                             : strcmp(method, "DELETE") == 0 ? r->del
                                                             : NULL;
        if (h == NULL) {
            snprintf(rp->allow, sizeof rp->allow, "%s%s%s%s%s", r->get ? "GET" : "",
                     r->get && (r->post || r->del) ? ", " : "", r->post ? "POST" : "",
                     r->post && r->del ? ", " : "", r->del ? "DELETE" : "");
            sonar_gw_reply_error(rp, 405, "method %.16s is not allowed on %s (allowed: %s)",
                                 method, r->label, rp->allow);
            return r->label;
        }
        h(gw, rq, rp);
        return r->label;
    }
    const sonar_gw_asset *a = find_asset(rq->path);
    if (a != NULL) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
            snprintf(rp->allow, sizeof rp->allow, "GET");
            sonar_gw_reply_error(rp, 405, "method %.16s is not allowed on %s (allowed: GET)",
                                 method, a->path);
        } else {
            rp->status = 200;
            rp->static_body = a->data;
            rp->body_len = a->len;
            rp->content_type = a->content_type;
        }
        return "static";
    }
    sonar_gw_reply_error(rp, 404, "no such resource: %.200s", rq->path);
    return "unmatched";
}

/* Method names as metrics labels (string literals: the metrics keep pointers). */
static const char *method_label(const char *m)
{
    static const char *const known[] = {"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD",
                                        "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(m, known[i]) == 0)
            return known[i];
    return "other";
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    sonar_gateway *gw = cls;
    conn_state *st = *con_cls;
    if (st == NULL) {
        st = calloc(1, sizeof *st);
        if (st == NULL)
            return MHD_NO;
        st->start_ns = sonar_now_ns();
        *con_cls = st;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (st->too_big || st->len + n > SONAR_GW_MAX_BODY) {
            st->too_big = true;
            return MHD_YES;
        }
        if (st->len + n + 1 > st->cap) {
            size_t cap = (st->len + n + 1) * 2;
            char *b = realloc(st->body, cap);
            if (b == NULL)
                return MHD_NO;
            st->body = b;
            st->cap = cap;
        }
        memcpy(st->body + st->len, upload_data, n);
        st->len += n;
        st->body[st->len] = '\0';
        return MHD_YES;
    }
    sonar_gw_req rq = {.conn = conn, .method = method, .path = url,
                       .body = st->body ? st->body : "", .body_len = st->len};
    sonar_gw_reply rp = {0};
    const char *label;
    if (st->too_big) {
        sonar_gw_reply_error(&rp, 413, "request body larger than %d bytes", SONAR_GW_MAX_BODY);
        label = "too_large";
    } else {
        label = dispatch(gw, &rq, &rp, method);
    }
    double secs = (double)(sonar_now_ns() - st->start_ns) / 1e9;
    sonar_gw_metrics_http(gw->metrics, label, method_label(method), rp.status, secs);
    return send_reply(conn, &rp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    conn_state *st = *con_cls;
    if (st != NULL) {
        free(st->body);
        free(st);
        *con_cls = NULL;
    }
}

/* ---- Lifecycle ------------------------------------------------------------------ */

/* Resolves "ADDR:PORT" / "[V6]:PORT" into *out. */
static sonar_status parse_listen(const char *listen, struct sockaddr_storage *out,
                                 socklen_t *out_len, bool *ipv6)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || colon == listen || colon[1] == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "listen address \"%s\": expected ADDR:PORT", listen);
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof host)
        return sonar__fail(SONAR_ERR_INVALID, "listen address \"%s\": host too long", listen);
    memcpy(host, listen, hl);
    host[hl] = '\0';
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']')
            return sonar__fail(SONAR_ERR_INVALID, "listen address \"%s\": bad [IPv6]", listen);
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535)
        return sonar__fail(SONAR_ERR_INVALID, "listen address \"%s\": port must be 0..65535",
                           listen);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0 || res == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "listen address \"%s\": %s", listen,
                           gai_strerror(rc));
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *out_len = res->ai_addrlen;
    *ipv6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return SONAR_OK;
}

sonar_status sonar_gateway_listen_check(const char *listen)
{
    struct sockaddr_storage addr;
    socklen_t alen = 0;
    bool ipv6 = false;
    return parse_listen(listen, &addr, &alen, &ipv6);
}

sonar_status sonar_gateway_start(sonar_gateway **out, sonar_bus *bus,
                                 const sonar_gateway_config *cfg)
{
    struct sockaddr_storage addr;
    socklen_t alen = 0;
    bool ipv6 = false;
    sonar_status s = parse_listen(cfg->listen ? cfg->listen : SONAR_GATEWAY_DEFAULT_LISTEN,
                                  &addr, &alen, &ipv6);
    if (s != SONAR_OK)
        return s;
    sonar_gateway *gw = calloc(1, sizeof *gw);
    if (gw == NULL)
        return SONAR_ERR_NOMEM;
    gw->bus = bus;
    gw->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : SONAR_GATEWAY_DEFAULT_TIMEOUT_MS;
    gw->version = strdup(cfg->version ? cfg->version : "0.0.0");
    if (gw->version == NULL) {
        free(gw);
        return SONAR_ERR_NOMEM;
    }
    s = sonar_gw_metrics_create(&gw->metrics, gw->version);
    if (s == SONAR_OK)
        s = sonar_gw_events_create(&gw->events, sonar_bus_nats(bus), gw->metrics,
                                   cfg->max_sse_clients > 0 ? (size_t)cfg->max_sse_clients : 64,
                                   cfg->sse_queue > 0 ? (size_t)cfg->sse_queue : 512);
    if (s != SONAR_OK) {
        sonar_gateway_stop(gw);
        return s;
    }
    unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                         MHD_USE_ERROR_LOG | MHD_USE_ITC | (ipv6 ? MHD_USE_IPv6 : 0);
    gw->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, gw,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                               MHD_OPTION_CONNECTION_LIMIT,
                               (unsigned int)(cfg->max_connections > 0 ? cfg->max_connections
                                                                       : 256),
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)60,
                               MHD_OPTION_NOTIFY_COMPLETED, on_completed, gw,
                               MHD_OPTION_END);
    if (gw->mhd == NULL) {
        sonar_gateway_stop(gw);
        return sonar__fail(SONAR_ERR_IO, "cannot listen on %s (address in use?)",
                           cfg->listen ? cfg->listen : SONAR_GATEWAY_DEFAULT_LISTEN);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(gw->mhd, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info ? info->port : 0;
    char host[INET6_ADDRSTRLEN] = "127.0.0.1";
    if (ipv6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&addr)->sin6_addr, host, sizeof host);
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)&addr)->sin_addr, host, sizeof host);
    if (strcmp(host, "0.0.0.0") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    else if (strcmp(host, "::") == 0)
        snprintf(host, sizeof host, "::1");
    snprintf(gw->url, sizeof gw->url, ipv6 ? "http://[%s]:%u" : "http://%s:%u", host, port);

    char health[160], metrics[160];
    snprintf(health, sizeof health, "%s/health", gw->url);
    snprintf(metrics, sizeof metrics, "%s/metrics", gw->url);
    sonar_service_config sc = {
        .name = SONAR_GATEWAY_NAME,
        .version = gw->version,
        .address = gw->url,
        .description = "HTTP gateway: REST API, event stream and dashboard over the bus",
        .health = health,
        .metrics = metrics,
        /* The gateway depends on nothing and answers no check requests; its
         * registration says so ("answers_checks": false) and sonard does not
         * wait for it. */
        .no_check_endpoint = true,
    };
    s = sonar_service_create(&gw->svc, bus, &sc);
    if (s == SONAR_OK)
        s = sonar_service_start(gw->svc);
    if (s != SONAR_OK) {
        sonar_gateway_stop(gw);
        return s;
    }
    *out = gw;
    return SONAR_OK;
}

const char *sonar_gateway_url(const sonar_gateway *gw)
{
    return gw->url;
}

void sonar_gateway_stop(sonar_gateway *gw)
{
    if (gw == NULL)
        return;
    /* Stop accepting, let every event stream finish its last chunk, then
     * stop the server (which waits for requests in flight). */
    MHD_socket listen_fd = gw->mhd ? MHD_quiesce_daemon(gw->mhd) : MHD_INVALID_SOCKET;
    sonar_gw_events_shutdown(gw->events);
    if (gw->events != NULL)
        sonar_gw_events_wait_idle(gw->events, 2000);
    if (gw->mhd != NULL)
        MHD_stop_daemon(gw->mhd);
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    sonar_service_destroy(gw->svc);
    sonar_gw_events_destroy(gw->events);
    sonar_gw_metrics_destroy(gw->metrics);
    free(gw->version);
    free(gw);
}
