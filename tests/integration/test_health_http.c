/*
 * Health checks against a real HTTP server (libmicrohttpd on a free
 * loopback port, started inside the test): up → down → up transitions with
 * thresholds, JSON health bodies, timeouts, and parallel checks.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "natsd.h"
#include "sonar/sonar.h"

enum mode { MODE_OK, MODE_WARN, MODE_FAIL_JSON, MODE_503, MODE_BIG };

typedef struct server {
    struct MHD_Daemon *daemon;
    int port;
    atomic_int mode;
    atomic_int hits;
} server;

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **req_cls)
{
    (void)url, (void)method, (void)version, (void)upload_data, (void)upload_data_size,
        (void)req_cls;
    server *s = cls;
    atomic_fetch_add(&s->hits, 1);
    unsigned code = MHD_HTTP_OK;
    const char *body = "OK";
    char *big = NULL;
    switch ((enum mode)atomic_load(&s->mode)) {
    case MODE_OK:
        break;
    case MODE_WARN:
        body = "{\"status\":\"warn\",\"checks\":{\"db:connections\":"
               "[{\"status\":\"warn\",\"output\":\"pool at 95%\"}]}}";
        break;
    case MODE_FAIL_JSON:
        body = "{\"status\":\"fail\",\"output\":\"disk full\"}";
        break;
    case MODE_503:
        code = MHD_HTTP_SERVICE_UNAVAILABLE;
        body = "maintenance";
        break;
    case MODE_BIG:
        big = malloc(1 << 20);
        memset(big, ' ', 1 << 20);
        memcpy(big, "{\"status\":\"fail\"", 16);
        body = big;
        break;
    }
    size_t len = big != NULL ? (size_t)1 << 20 : strlen(body);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    free(big);
    MHD_add_response_header(resp, "Content-Type", "application/health+json");
    enum MHD_Result rc = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return rc;
}

static bool server_start(server *s, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->port = port;
    s->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION,
                                 (uint16_t)port, NULL, NULL, handle, s, MHD_OPTION_SOCK_ADDR,
                                 (struct sockaddr *)&sa, MHD_OPTION_END);
    return s->daemon != NULL;
}

static void server_stop(server *s)
{
    if (s->daemon != NULL)
        MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}

static void url_of(char *buf, size_t n, int port)
{
    snprintf(buf, n, "http://127.0.0.1:%d/health", port);
}

static server srv;

static void setup(void)
{
    memset(&srv, 0, sizeof srv);
    int port = test_free_port();
    cr_assert_gt(port, 0);
    cr_assert(server_start(&srv, port), "cannot start libmicrohttpd on port %d", port);
}

static void teardown(void)
{
    server_stop(&srv);
}

TestSuite(health_http, .init = setup, .fini = teardown);

typedef struct step {
    sonar_health_result r;
    bool changed;
    sonar_health_transition t;
} step;

static step run_once(sonar_health_checker *c)
{
    step s = {0};
    cr_assert_eq(sonar_health_checker_run(c, &s.r, &s.t, &s.changed), SONAR_OK, "%s",
                 sonar_last_error());
    return s;
}

Test(health_http, up_down_up_makes_transitions_with_thresholds)
{
    char url[128];
    url_of(url, sizeof url, srv.port);
    sonar_health_target t = {.url = url, .timeout_ms = 3000,
                             .thresholds = {.failure_threshold = 2, .success_threshold = 2}};
    sonar_health_checker *c = NULL;
    cr_assert_eq(sonar_health_checker_create(&c, &t), SONAR_OK);

    /* up: two successes needed to leave unknown */
    step s = run_once(c);
    cr_assert_eq(s.r.status, SONAR_HEALTH_PASSING);
    cr_assert_eq(s.r.http_code, 200);
    cr_assert_str_eq(s.r.error, "");
    cr_assert_gt(s.r.checked_at_ms, 1700000000000LL);
    cr_assert_not(s.changed);
    s = run_once(c);
    cr_assert(s.changed);
    cr_assert_eq(s.t.from, SONAR_HEALTH_UNKNOWN);
    cr_assert_eq(s.t.to, SONAR_HEALTH_PASSING);
    cr_assert_eq(s.t.streak, 2);
    cr_assert_eq(atomic_load(&srv.hits), 2);

    /* down: connection refused; critical after two failures */
    server_stop(&srv);
    s = run_once(c);
    cr_assert_eq(s.r.status, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(s.r.http_code, 0);
    cr_assert(strstr(s.r.error, "connection refused") != NULL, "%s", s.r.error);
    cr_assert_not(s.changed);
    cr_assert_eq(sonar_health_checker_state(c)->status, SONAR_HEALTH_PASSING);
    s = run_once(c);
    cr_assert(s.changed);
    cr_assert_eq(s.t.from, SONAR_HEALTH_PASSING);
    cr_assert_eq(s.t.to, SONAR_HEALTH_CRITICAL);
    s = run_once(c);
    cr_assert_not(s.changed);

    /* up again on the same port: passing after two successes */
    cr_assert(server_start(&srv, srv.port), "cannot restart on port %d", srv.port);
    s = run_once(c);
    cr_assert_eq(s.r.status, SONAR_HEALTH_PASSING);
    cr_assert_not(s.changed);
    cr_assert_eq(sonar_health_checker_state(c)->status, SONAR_HEALTH_CRITICAL);
    s = run_once(c);
    cr_assert(s.changed);
    cr_assert_eq(s.t.from, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(s.t.to, SONAR_HEALTH_PASSING);
    cr_assert_eq(sonar_health_checker_state(c)->observations, 7);
    sonar_health_checker_destroy(c);
}

Test(health_http, json_bodies_and_status_codes_refine_the_result)
{
    char url[128];
    url_of(url, sizeof url, srv.port);
    sonar_health_result r;

    atomic_store(&srv.mode, MODE_WARN);
    cr_assert_eq(sonar_health_check_http(url, 3000, &r), SONAR_OK);
    cr_assert_eq(r.status, SONAR_HEALTH_WARNING);
    cr_assert_eq(r.http_code, 200);
    cr_assert(strstr(r.error, "db:connections: warn (pool at 95%)") != NULL, "%s", r.error);

    atomic_store(&srv.mode, MODE_FAIL_JSON);
    cr_assert_eq(sonar_health_check_http(url, 3000, &r), SONAR_OK);
    cr_assert_eq(r.status, SONAR_HEALTH_CRITICAL);
    cr_assert(strstr(r.error, "disk full") != NULL, "%s", r.error);

    atomic_store(&srv.mode, MODE_503);
    cr_assert_eq(sonar_health_check_http(url, 3000, &r), SONAR_OK);
    cr_assert_eq(r.status, SONAR_HEALTH_CRITICAL);
    cr_assert_eq(r.http_code, 503);
    cr_assert_str_eq(r.error, "HTTP 503");
    sonar_health_sample samples[SONAR_HEALTH_N_SAMPLES];
    cr_assert_eq(sonar_health_result_samples(&r, samples), 3);
    cr_assert_eq(samples[0].value, 0.0);
    cr_assert_eq(samples[2].value, 503.0);
    cr_assert_geq(samples[1].value, 0.0);

    /* A 1 MB body that is not complete JSON: the status code decides. */
    atomic_store(&srv.mode, MODE_BIG);
    cr_assert_eq(sonar_health_check_http(url, 5000, &r), SONAR_OK);
    cr_assert_eq(r.status, SONAR_HEALTH_PASSING);
    cr_assert_eq(r.http_code, 200);
}

/* A socket that accepts connections in the kernel but never answers. */
static int blackhole(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
              listen(fd, 16) == 0 && getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

Test(health_http, a_silent_target_times_out_as_critical)
{
    int port;
    int fd = blackhole(&port);
    char url[128];
    url_of(url, sizeof url, port);
    sonar_health_result r;
    cr_assert_eq(sonar_health_check_http(url, 300, &r), SONAR_OK);
    cr_assert_eq(r.status, SONAR_HEALTH_CRITICAL);
    cr_assert(strstr(r.error, "timed out after 300 ms") != NULL, "%s", r.error);
    cr_assert_eq(r.http_code, 0);
    cr_assert_geq(r.duration_ms, 250);
    cr_assert_lt(r.duration_ms, 5000);
    close(fd);
}

typedef struct worker {
    const char *url;
    int64_t timeout_ms;
    int checks;
    int passing;
    atomic_bool done;
    atomic_bool *other_done; /* the other worker's flag, read when this one ends */
    bool other_was_done;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    sonar_health_target t = {.url = w->url, .timeout_ms = w->timeout_ms};
    sonar_health_checker *c = NULL;
    if (sonar_health_checker_create(&c, &t) != SONAR_OK)
        return NULL;
    for (int i = 0; i < w->checks; i++) {
        sonar_health_result r;
        if (sonar_health_checker_run(c, &r, NULL, NULL) == SONAR_OK &&
            r.status == SONAR_HEALTH_PASSING)
            w->passing++;
    }
    sonar_health_checker_destroy(c);
    if (w->other_done != NULL)
        w->other_was_done = atomic_load(w->other_done);
    atomic_store(&w->done, true);
    return NULL;
}

Test(health_http, a_slow_target_does_not_block_checks_of_others)
{
    int port;
    int fd = blackhole(&port);
    char slow_url[128], fast_url[128];
    url_of(slow_url, sizeof slow_url, port);
    url_of(fast_url, sizeof fast_url, srv.port);
    /* The slow check's timeout is the time the 20 fast ones get: generous,
     * so a loaded machine (or the sanitizers) cannot make it a speed test. */
    worker slow = {.url = slow_url, .timeout_ms = 6000, .checks = 1};
    worker fast = {.url = fast_url, .timeout_ms = 3000, .checks = 20};
    slow.other_done = &fast.done;
    pthread_t a, b;
    cr_assert_eq(pthread_create(&a, NULL, work, &slow), 0);
    cr_assert_eq(pthread_create(&b, NULL, work, &fast), 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    cr_assert_eq(fast.passing, 20);
    cr_assert_eq(slow.passing, 0);
    cr_assert(slow.other_was_done, "20 fast checks did not finish within the slow one's 6 s");
    cr_assert_geq(atomic_load(&srv.hits), 20);
    close(fd);
}
