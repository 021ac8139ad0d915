/* statusd's own HTTP listener: GET /metrics (Prometheus text) and GET /health. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "internal.h"
#include "statusd.h"

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

sonar_status statusd_http_start(statusd_http **out, statusd *d, const char *listen)
{
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    if (colon == NULL || colon == listen || colon[1] == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "--listen '%s': expected ADDR:PORT, e.g. 127.0.0.1:9464",
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
