/*
 * Test support: a real HTTP server (libmicrohttpd) on a free loopback port,
 * started and stopped by a test. Routes are registered by method and path
 * (the query string is not part of the match) and answer either a fixed
 * status/body/headers or through a handler function. A route may be
 * delayed: the answer waits on a condition variable for that long, and
 * test_httpd_stop() wakes every waiting request at once.
 *
 * Thread-safety: routes may be added and counters read from any thread
 * while the server runs; requests are served on one thread per connection
 * (handlers must be thread-safe). start/stop from the test's main thread.
 */
#ifndef SONAR_TEST_HTTPD_H
#define SONAR_TEST_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct test_httpd test_httpd;

/* A request as a handler sees it (borrowed for the call). */
typedef struct test_httpd_request {
    const char *method;
    const char *path;      /* without the query string */
    const char *body;      /* NUL-terminated */
    size_t body_len;
    void *conn_;           /* internal */
} test_httpd_request;

/* What a handler answers; fill with test_httpd_reply*(). */
typedef struct test_httpd_reply_t test_httpd_reply_t;

typedef void (*test_httpd_fn)(const test_httpd_request *req, test_httpd_reply_t *reply,
                              void *closure);

/* Starts the server on 127.0.0.1 and a free port; NULL (message on stderr) on failure. */
test_httpd *test_httpd_start(void);
/* Wakes delayed requests, stops the server and frees it. Accepts NULL. */
void test_httpd_stop(test_httpd *d);

/* "http://127.0.0.1:<port>" (borrowed). */
const char *test_httpd_url(const test_httpd *d);
int test_httpd_port(const test_httpd *d);

/* A fixed answer. `method` NULL matches any method. `headers` is a
 * NULL-terminated list of "Name", "value" pairs (may be NULL). Copied. */
void test_httpd_route(test_httpd *d, const char *method, const char *path, int status,
                      const char *body, const char *const *headers);
/* Same with a body of `len` bytes (may hold NULs, may be large). */
void test_httpd_route_bytes(test_httpd *d, const char *method, const char *path, int status,
                            const char *body, size_t len);
/* An answer computed by `fn` (run on the connection's thread). */
void test_httpd_handle(test_httpd *d, const char *method, const char *path, test_httpd_fn fn,
                       void *closure);
/* Delays every answer of an existing route by `delay_ms`. */
void test_httpd_delay(test_httpd *d, const char *method, const char *path, int64_t delay_ms);
/* How many requests the route answered (or started answering). */
int test_httpd_hits(test_httpd *d, const char *method, const char *path);

/* In a handler: query argument / request header (borrowed), or NULL. */
const char *test_httpd_query(const test_httpd_request *req, const char *name);
const char *test_httpd_header(const test_httpd_request *req, const char *name);

/* In a handler: set the status and body (printf-style), add a header. */
void test_httpd_reply(test_httpd_reply_t *reply, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void test_httpd_reply_header(test_httpd_reply_t *reply, const char *name, const char *value);

#endif
