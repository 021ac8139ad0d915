/*
 * HTTP transfers for checks: libcurl's easy API, one handle per call, the
 * caller's deadline turned into curl's timeout.
 */
#include "sonar/http.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <curl/curl.h>

#include "sonar/util.h"
#include "internal.h"

/* Response headers kept per transfer; more is an error (a server gone wrong). */
#define MAX_HEADERS 256

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init_once(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_ALL);
}

sonar_status sonar_http_global_init(void)
{
    pthread_once(&global_once, global_init_once);
    if (global_rc != CURLE_OK)
        return sonar__fail(SONAR_ERR_HTTP, "curl_global_init failed: %s",
                           curl_easy_strerror(global_rc));
    return SONAR_OK;
}

/* What the curl callbacks fill while a transfer runs. */
typedef struct transfer {
    char *body;
    size_t len, cap;
    bool over_limit;
    bool out_of_memory;
    sonar_http_header *headers;
    size_t n_headers;
    bool too_many_headers;
} transfer;

static size_t on_body(char *data, size_t size, size_t nmemb, void *user)
{
    transfer *t = user;
    size_t n = size * nmemb;
    if (t->len + n > SONAR_HTTP_MAX_BODY) {
        t->over_limit = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *grown = realloc(t->body, cap);
        if (grown == NULL) {
            t->out_of_memory = true;
            return 0;
        }
        t->body = grown;
        t->cap = cap;
    }
    memcpy(t->body + t->len, data, n);
    t->len += n;
    t->body[t->len] = '\0';
    return n;
}

static void free_headers(sonar_http_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        free(h[i].value);
    }
    free(h);
}

static char *dup_trimmed(const char *s, size_t n)
{
    while (n > 0 && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    char *out = malloc(n + 1);
    if (out) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *user)
{
    transfer *t = user;
    size_t n = size * nmemb;
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* A new status line (after 1xx or a redirect): forget earlier headers. */
        free_headers(t->headers, t->n_headers);
        t->headers = NULL;
        t->n_headers = 0;
        return n;
    }
    const char *colon = memchr(data, ':', n);
    if (colon == NULL || colon == data)
        return n; /* the blank line that ends the block, or a malformed line */
    if (t->n_headers >= MAX_HEADERS) {
        t->too_many_headers = true;
        return 0;
    }
    sonar_http_header *grown = realloc(t->headers, (t->n_headers + 1) * sizeof *grown);
    if (grown == NULL) {
        t->out_of_memory = true;
        return 0;
    }
    t->headers = grown;
    char *name = dup_trimmed(data, (size_t)(colon - data));
    char *value = dup_trimmed(colon + 1, n - (size_t)(colon + 1 - data));
    if (name == NULL || value == NULL) {
        free(name);
        free(value);
        t->out_of_memory = true;
        return 0;
    }
    t->headers[t->n_headers].name = name;
    t->headers[t->n_headers].value = value;
    t->n_headers++;
    return n;
}

/* Maps a failed transfer to a status and an error text naming the URL. */
static sonar_status transfer_error(CURL *h, CURLcode rc, const transfer *t, const char *url,
                                   int64_t budget_ms, const char *errbuf)
{
    if (t->over_limit)
        return sonar__fail(SONAR_ERR_LIMIT, "response body larger than %d bytes (%s)",
                           SONAR_HTTP_MAX_BODY, url);
    if (t->out_of_memory)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory reading the response (%s)", url);
    if (t->too_many_headers)
        return sonar__fail(SONAR_ERR_LIMIT, "more than %d response headers (%s)", MAX_HEADERS,
                           url);
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return sonar__fail(SONAR_ERR_TIMEOUT, "timed out after %" PRId64 " ms (%s)", budget_ms,
                           url);
    long os_errno = 0;
    curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os_errno);
    if (rc == CURLE_COULDNT_CONNECT && os_errno == ECONNREFUSED)
        return sonar__fail(SONAR_ERR_HTTP, "connection refused (%s)", url);
    if (rc == CURLE_COULDNT_RESOLVE_HOST)
        return sonar__fail(SONAR_ERR_HTTP, "could not resolve host (%s)", url);
    const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    return sonar__fail(SONAR_ERR_HTTP, "%s (%s)", detail, url);
}

/* Request headers for curl: ours first ("Expect:" drops 100-continue), then the caller's. */
static sonar_status build_headers(struct curl_slist **out, const char *const *headers)
{
    struct curl_slist *list = curl_slist_append(NULL, "Expect:");
    if (list == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    for (size_t i = 0; headers && headers[i]; i++) {
        if (strchr(headers[i], ':') == NULL || strpbrk(headers[i], "\r\n") != NULL) {
            curl_slist_free_all(list);
            return sonar__fail(SONAR_ERR_INVALID,
                               "request header \"%s\" is not a \"Name: value\" line", headers[i]);
        }
        struct curl_slist *next = curl_slist_append(list, headers[i]);
        if (next == NULL) {
            curl_slist_free_all(list);
            return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
        }
        list = next;
    }
    *out = list;
    return SONAR_OK;
}

sonar_status sonar_http_perform(const sonar_http_request *req, sonar_http_response *out)
{
    if (req == NULL || out == NULL || req->url == NULL || req->url[0] == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "HTTP request without a URL");
    if (req->body == NULL && req->body_len > 0)
        return sonar__fail(SONAR_ERR_INVALID, "HTTP request body is NULL but body_len is %zu",
                           req->body_len);
    sonar_status st = sonar_http_global_init();
    if (st != SONAR_OK)
        return st;

    int64_t start = sonar_now_ms();
    int64_t budget = req->timeout_ms > 0 ? req->timeout_ms : 0;
    if (req->deadline_ms > 0) {
        int64_t left = req->deadline_ms - start;
        if (left <= 0)
            return sonar__fail(SONAR_ERR_TIMEOUT, "timed out after 0 ms (%s): the deadline "
                               "had passed before the request started", req->url);
        if (budget == 0 || left < budget)
            budget = left;
    }

    const char *method = req->method ? req->method : "GET";
    char errbuf[CURL_ERROR_SIZE] = "";
    transfer t = {0};
    struct curl_slist *headers = NULL;
    CURL *h = curl_easy_init();
    if (h == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "curl_easy_init failed");
    st = build_headers(&headers, req->headers);
    if (st != SONAR_OK)
        goto cleanup;

    curl_easy_setopt(h, CURLOPT_URL, req->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (budget > 0) {
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)budget);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)budget);
    }
    if (req->body != NULL) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }

    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        st = transfer_error(h, rc, &t, req->url, budget, errbuf);
        goto cleanup;
    }
    if (t.body == NULL) {
        t.body = calloc(1, 1);
        if (t.body == NULL) {
            st = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    out->status = status;
    out->body = t.body;
    out->body_len = t.len;
    out->headers = t.headers;
    out->n_headers = t.n_headers;
    out->duration_ms = sonar_now_ms() - start;
    t.body = NULL;
    t.headers = NULL;
    t.n_headers = 0;

cleanup:
    free(t.body);
    free_headers(t.headers, t.n_headers);
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    return st;
}

void sonar_http_response_finish(sonar_http_response *resp)
{
    if (resp == NULL)
        return;
    free(resp->body);
    free_headers(resp->headers, resp->n_headers);
    memset(resp, 0, sizeof *resp);
}

const char *sonar_http_response_header(const sonar_http_response *resp, const char *name)
{
    if (resp == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < resp->n_headers; i++)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

sonar_status sonar_http_join(char **out, const char *base, const char *path)
{
    if (out == NULL || base == NULL || base[0] == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "no base address to join \"%s\" to",
                           path ? path : "");
    if (path == NULL)
        path = "";
    /* A base without a scheme ("10.0.0.7:8080") is taken as plain HTTP. */
    const char *scheme = strstr(base, "://") ? "" : "http://";
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    while (*path == '/')
        path++;
    size_t n = strlen(scheme) + blen + 1 + strlen(path) + 1;
    char *url = malloc(n);
    if (url == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    snprintf(url, n, "%s%.*s/%s", scheme, (int)blen, base, path);
    *out = url;
    return SONAR_OK;
}
