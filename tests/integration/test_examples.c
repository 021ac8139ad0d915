/*
 * The example services chillybin and jafflr, as built: real binaries
 * (paths from SONAR_CHILLYBIN_BIN / SONAR_JAFFLR_BIN set by meson), a real
 * nats-server per test, SQLite in a temp dir, HTTP through libcurl.
 *
 * Covered: chillybin's endpoints and error codes, stock changes, schema
 * migrations across restarts, the three variants; jafflr's toasties through
 * chillybin (and its failures); jafflr's sonar checks on chillybin, asked
 * for by hand-publishing `sonar.check.v1` and reading
 * `sonar.result.<change_id>.jafflr` — passing against v1 and v2, failing
 * against the breaking `nome` variant with a message naming the endpoint;
 * the same through the real sonard (`sonar.change.chillybin` -> report);
 * graceful shutdown finishing a request in flight and exiting 0.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <sqlite3.h>

#include "natsd.h"
#include "proc.h"
#include "sonar/promtext.h"

/* ---- Fixture: a nats-server and a temp dir per test ---------------------- */

#define MAX_PROCS 8

typedef test_proc proc;

static test_natsd natsd;
static char tmpdir[256];
static proc *procs[MAX_PROCS];
static size_t n_procs;
static natsConnection *nc;

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd), "nats-server did not start");
    cr_assert(test_mkdtemp(tmpdir, sizeof tmpdir, "examples"));
    /* The services read these; a test sets them explicitly or not at all. */
    unsetenv("CHILLYBIN_VARIANT");
    unsetenv("JAFFLR_USE_V2_PICK");
    cr_assert_eq(natsConnection_ConnectTo(&nc, natsd.url), NATS_OK);
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static bool proc_reaped(proc *p)
{
    return test_proc_wait(p, 0);
}

/* Its stdout then stderr on ours, each line prefixed. */
static void dump_log(proc *p)
{
    test_proc_pump(p, 0);
    const char *parts[] = {p->out, p->err};
    for (size_t i = 0; i < 2; i++) {
        const char *line = parts[i] ? parts[i] : "";
        while (*line != '\0') {
            size_t len = strcspn(line, "\n");
            fprintf(stderr, "  | %.*s\n", (int)len, line);
            line += len + (line[len] == '\n');
        }
    }
}

static void teardown(void)
{
    for (size_t i = 0; i < n_procs; i++) {
        test_proc_kill(procs[i]);
        if (getenv("EXAMPLES_LOGS") != NULL) /* EXAMPLES_LOGS=1 meson test examples */
            dump_log(procs[i]);
        test_proc_finish(procs[i]);
        free(procs[i]);
    }
    n_procs = 0;
    natsConnection_Destroy(nc);
    nc = NULL;
    test_natsd_destroy(&natsd);
    test_rmtree(tmpdir);
    curl_global_cleanup();
}

TestSuite(examples, .init = setup, .fini = teardown, .timeout = 120);

/* ---- Processes ----------------------------------------------------------- */

/*
 * Starts the binary named by \p bin_var with \p args (NULL-terminated),
 * NATS_URL pointing at the test's server, plus \p env ("NAME=VALUE",
 * NULL-terminated, may be NULL). Its output is kept (see dump_log); \p tag
 * names it in messages.
 */
static proc *start(const char *bin_var, const char *tag, const char *const *args,
                   const char *const *env)
{
    cr_assert_lt(n_procs, MAX_PROCS);
    proc *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    const char *argv[32];
    size_t n = 0;
    argv[n++] = test_bin(bin_var);
    for (size_t i = 0; args != NULL && args[i] != NULL && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char nats_url[128];
    snprintf(nats_url, sizeof nats_url, "NATS_URL=%s", natsd.url);
    const char *envv[16];
    size_t m = 0;
    envv[m++] = nats_url;
    for (size_t i = 0; env != NULL && env[i] != NULL && m < 15; i++)
        envv[m++] = env[i];
    envv[m] = NULL;
    cr_assert(test_proc_start(p, tmpdir, argv, envv), "cannot start %s", tag);
    procs[n_procs++] = p;
    return p;
}

/* Sends \p sig and waits for the exit; returns the exit code, or -1 when it did not exit. */
static int stop(proc *p, int sig)
{
    test_proc_signal(p, sig);
    if (!test_proc_wait(p, 15000)) {
        dump_log(p);
        return -1;
    }
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 128 + WTERMSIG(p->status);
}

/* ---- HTTP through libcurl ------------------------------------------------ */

typedef struct reply {
    long status;        /* 0: no answer (connection refused, ...) */
    char *body;
    size_t len;
    char headers[4096];
    json_t *json;       /* body parsed, or NULL */
} reply;

static size_t on_body(char *data, size_t size, size_t n, void *cls)
{
    reply *r = cls;
    char *grown = realloc(r->body, r->len + size * n + 1);
    if (grown == NULL)
        return 0;
    memcpy(grown + r->len, data, size * n);
    r->body = grown;
    r->len += size * n;
    r->body[r->len] = '\0';
    return size * n;
}

static size_t on_header(char *data, size_t size, size_t n, void *cls)
{
    reply *r = cls;
    size_t used = strlen(r->headers);
    if (used + size * n < sizeof r->headers)
        memcpy(r->headers + used, data, size * n);
    return size * n;
}

static void reply_free(reply *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* A request on \p keep (a handle whose connection is reused), or on a
 * handle of its own when \p keep is NULL. */
static reply http_on(CURL *keep, const char *method, const char *base, const char *path,
                     const char *body)
{
    reply r;
    memset(&r, 0, sizeof r);
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    CURL *c = keep != NULL ? keep : curl_easy_init();
    cr_assert_not_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    if (keep == NULL)
        curl_easy_cleanup(c);
    if (r.body != NULL)
        r.json = json_loads(r.body, 0, NULL);
    return r;
}

static reply http(const char *method, const char *base, const char *path, const char *body)
{
    return http_on(NULL, method, base, path, body);
}

static long status_of(const char *method, const char *base, const char *path)
{
    reply r = http(method, base, path, NULL);
    long s = r.status;
    reply_free(&r);
    return s;
}

/* The "error" text of a reply, or "". */
static const char *error_of(const reply *r)
{
    const char *e = json_string_value(json_object_get(r->json, "error"));
    return e != NULL ? e : "";
}

/* Value of response header \p name (copied into \p buf), or NULL. */
static const char *header_of(const reply *r, const char *name, char *buf, size_t len)
{
    char want[64];
    snprintf(want, sizeof want, "\n%s:", name);
    const char *h = strcasestr(r->headers, want);
    if (h == NULL)
        return NULL;
    h += strlen(want);
    while (*h == ' ')
        h++;
    size_t n = strcspn(h, "\r\n");
    snprintf(buf, len, "%.*s", (int)n, h);
    return buf;
}

/* Units of \p name on chillybin's shelf (GET /), -1 when absent. */
static long long stock_of(const char *base, const char *name)
{
    reply r = http("GET", base, "/", NULL);
    cr_assert_eq(r.status, 200, "GET / → %ld", r.status);
    json_t *units = json_object_get(json_object_get(r.json, "stock"), name);
    long long v = json_is_integer(units) ? json_integer_value(units) : -1;
    reply_free(&r);
    return v;
}

/* Value of the Prometheus sample starting with \p sample (name and labels), or -1. */
static double metric_on(CURL *keep, const char *base, const char *sample)
{
    reply r = http_on(keep, "GET", base, "/metrics", NULL);
    double v = -1;
    for (char *line = r.body; line != NULL && *line != '\0';) {
        size_t n = strlen(sample);
        if (strncmp(line, sample, n) == 0 && line[n] == ' ')
            v = strtod(line + n + 1, NULL);
        char *nl = strchr(line, '\n');
        line = nl != NULL ? nl + 1 : NULL;
    }
    reply_free(&r);
    return v;
}

static double metric(const char *base, const char *sample)
{
    return metric_on(NULL, base, sample);
}

/* ---- Starting the services ----------------------------------------------- */

typedef struct service {
    proc *proc;
    char base[64];
    int port;
} service;

static void wait_healthy(service *s)
{
    bool up = TEST_WAIT_UNTIL(status_of("GET", s->base, "/health") == 200 || proc_reaped(s->proc),
                              15000);
    if (!up || s->proc->reaped)
        dump_log(s->proc);
    cr_assert(up && !s->proc->reaped, "%s did not become healthy", s->base);
}

/* chillybin \p variant on a fresh port with database \p db (a file in tmpdir). */
static service chillybin_start(const char *variant, const char *db, const char *const *extra)
{
    service s;
    s.port = test_free_port();
    snprintf(s.base, sizeof s.base, "http://127.0.0.1:%d", s.port);
    char port[16], dbpath[320], tag[64];
    snprintf(port, sizeof port, "%d", s.port);
    snprintf(dbpath, sizeof dbpath, "%s/%s", tmpdir, db);
    snprintf(tag, sizeof tag, "chillybin-%s-%d", variant, s.port);
    const char *args[16] = { "--db", dbpath, "--port", port, "--variant", variant };
    size_t n = 6;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 15; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    s.proc = start("SONAR_CHILLYBIN_BIN", tag, args, NULL);
    wait_healthy(&s);
    return s;
}

static service jafflr_start(const char *chillybin_base, bool use_v2)
{
    service s;
    s.port = test_free_port();
    snprintf(s.base, sizeof s.base, "http://127.0.0.1:%d", s.port);
    char port[16], tag[64];
    snprintf(port, sizeof port, "%d", s.port);
    snprintf(tag, sizeof tag, "jafflr-%d", s.port);
    const char *args[] = { "--port", port, "--chillybin", chillybin_base, NULL };
    const char *env[] = { use_v2 ? "JAFFLR_USE_V2_PICK=1" : "JAFFLR_USE_V2_PICK=0", NULL };
    s.proc = start("SONAR_JAFFLR_BIN", tag, args, env);
    wait_healthy(&s);
    return s;
}

/* ---- chillybin ----------------------------------------------------------- */

Test(examples, chillybin_picks_and_restocks_stock)
{
    service cb = chillybin_start("v1", "stock.db", NULL);
    cr_expect_eq(stock_of(cb.base, "cheese"), 20, "a fresh shelf holds 20 cheese");

    reply r = http("GET", cb.base, "/pick?name=cheese&quantity=3", NULL);
    cr_assert_eq(r.status, 200, "pick → %ld %s", r.status, r.body);
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "name")), "cheese");
    cr_expect_eq(json_integer_value(json_object_get(r.json, "quantity")), 3);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "remaining")), 17);
    reply_free(&r);
    cr_expect_eq(stock_of(cb.base, "cheese"), 17);

    r = http("POST", cb.base, "/restock", "{\"name\":\"pickle\",\"quantity\":4}");
    cr_assert_eq(r.status, 200, "restock → %ld %s", r.status, r.body);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "remaining")), 4);
    reply_free(&r);
    r = http("POST", cb.base, "/restock", "{\"name\":\"cheese\",\"quantity\":3}");
    cr_expect_eq(json_integer_value(json_object_get(r.json, "remaining")), 20);
    reply_free(&r);
    cr_expect_eq(stock_of(cb.base, "pickle"), 4);

    /* Taking the last units is fine; one more is a conflict that changes nothing. */
    r = http("GET", cb.base, "/pick?name=pickle&quantity=4", NULL);
    cr_expect_eq(r.status, 200);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "remaining")), 0);
    reply_free(&r);
    r = http("GET", cb.base, "/pick?name=pickle&quantity=1", NULL);
    cr_expect_eq(r.status, 409);
    cr_expect(strstr(error_of(&r), "not enough pickle") != NULL, "409 says: %s", error_of(&r));
    reply_free(&r);
    cr_expect_eq(stock_of(cb.base, "pickle"), 0);

    cr_expect_eq(metric(cb.base, "chillybin_picks_total"), 2);
    cr_expect_eq(metric(cb.base, "chillybin_stock{ingredient=\"cheese\"}"), 20);
    cr_expect_eq(metric(cb.base, "chillybin_http_requests_total{path=\"/pick\",code=\"409\"}"), 1);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

/* One bad request and what chillybin must answer. */
typedef struct bad_case {
    const char *method, *path, *body;
    long status;
    const char *error;   /* substring of the "error" text */
} bad_case;

Test(examples, chillybin_refuses_bad_input_with_clear_errors)
{
    static const bad_case cases[] = {
        { "GET", "/pick?name=unicorn&quantity=1", NULL, 404, "no such ingredient: unicorn" },
        { "GET", "/pick?name=cheese&quantity=21", NULL, 409, "not enough cheese" },
        { "GET", "/pick?quantity=1", NULL, 400, "missing name" },
        { "GET", "/pick?name=&quantity=1", NULL, 400, "missing name" },
        { "GET", "/pick?name=Cheese&quantity=1", NULL, 400, "name must match" },
        { "GET", "/pick?name=..%2Fetc&quantity=1", NULL, 400, "name must match" },
        { "GET", "/pick?name=cheese", NULL, 400, "missing quantity" },
        { "GET", "/pick?name=cheese&quantity=0", NULL, 400, "quantity must be" },
        { "GET", "/pick?name=cheese&quantity=-1", NULL, 400, "quantity must be" },
        { "GET", "/pick?name=cheese&quantity=1.5", NULL, 400, "quantity must be" },
        { "GET", "/pick?name=cheese&quantity=2x", NULL, 400, "quantity must be" },
        { "GET", "/pick?name=cheese&quantity=101", NULL, 400, "quantity must be" },
        { "GET", "/pick?name=cheese&quantity=99999999999999999999", NULL, 400, "quantity must be" },
        { "POST", "/restock", "", 400, "missing body" },
        { "POST", "/restock", "{\"name\":\"ham\"", 400, "JSON object" },
        { "POST", "/restock", "[1,2]", 400, "JSON object" },
        { "POST", "/restock", "{\"quantity\":1}", 400, "name must be a string" },
        { "POST", "/restock", "{\"name\":7,\"quantity\":1}", 400, "name must be a string" },
        { "POST", "/restock", "{\"name\":\"HAM\",\"quantity\":1}", 400, "name must match" },
        { "POST", "/restock", "{\"name\":\"ham\"}", 400, "quantity must be" },
        { "POST", "/restock", "{\"name\":\"ham\",\"quantity\":\"5\"}", 400, "quantity must be" },
        { "POST", "/restock", "{\"name\":\"ham\",\"quantity\":2.5}", 400, "quantity must be" },
        { "POST", "/restock", "{\"name\":\"ham\",\"quantity\":0}", 400, "quantity must be" },
        { "POST", "/restock", "{\"name\":\"ham\",\"quantity\":10001}", 400, "quantity must be" },
        { "POST", "/restock", "{\"name\":\"ham\",\"name\":\"x\",\"quantity\":1}", 400, "JSON object" },
        { "GET", "/restock", NULL, 405, "method not allowed" },
        { "DELETE", "/pick", NULL, 405, "method not allowed" },
        { "GET", "/v2/pick?name=cheese&quantity=1", NULL, 404, "no such endpoint" },
        { "GET", "/nowhere", NULL, 404, "no such endpoint" },
    };
    service cb = chillybin_start("v1", "stock.db", NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        reply r = http(c->method, cb.base, c->path, c->body);
        cr_expect_eq(r.status, c->status, "%s %s %s → %ld, expected %ld (%s)", c->method,
                     c->path, c->body ? c->body : "", r.status, c->status, r.body);
        cr_expect(strstr(error_of(&r), c->error) != NULL, "%s %s: error \"%s\" lacks \"%s\"",
                  c->method, c->path, error_of(&r), c->error);
        reply_free(&r);
    }
    /* A body over the limit is refused, and nothing above changed the shelf. */
    char *big = malloc(70 * 1024);
    cr_assert_not_null(big);
    memset(big, ' ', 70 * 1024 - 1);
    big[70 * 1024 - 1] = '\0';
    reply r = http("POST", cb.base, "/restock", big);
    free(big);
    cr_expect_eq(r.status, 413);
    reply_free(&r);
    cr_expect_eq(stock_of(cb.base, "cheese"), 20);
    cr_expect_eq(stock_of(cb.base, "ham"), 20);
    cr_expect_eq(status_of("GET", cb.base, "/health"), 200, "still serving after bad input");
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

/* A client that connected before SIGTERM and sends its request just after
 * still gets an answer: the drain waits for accepted connections to begin
 * their request (for a second), not only for requests already begun. */
Test(examples, a_request_sent_on_a_connection_accepted_before_sigterm_is_answered)
{
    service cb = chillybin_start("v1", "fresh.db", NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cb.port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    /* Accepted: chillybin counts it (and the scrape's own connection). */
    cr_assert(TEST_WAIT_UNTIL(metric(cb.base, "chillybin_http_connections_open") >= 2, 10000),
              "the connection was not accepted");
    test_proc_signal(cb.proc, SIGTERM);
    int64_t deadline = test_now_ms() + 10000;
    while (strstr(cb.proc->err, "stopping") == NULL && test_now_ms() < deadline)
        test_proc_pump(cb.proc, 50);
    cr_assert(strstr(cb.proc->err, "stopping") != NULL, "no drain began: %s", cb.proc->err);
    /* The client under test is slow: its request follows 200 ms after the
     * drain began (chillybin's own shutdown is over well before that). */
    poll(NULL, 0, 200);
    const char *req = "GET /health HTTP/1.1\r\nHost: chillybin\r\nConnection: close\r\n\r\n";
    cr_assert_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    char buf[1024];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    cr_assert(strncmp(buf, "HTTP/1.1 200", 12) == 0, "no answer after SIGTERM: \"%s\"", buf);
    cr_assert_eq(stop(cb.proc, SIGTERM), 0, "chillybin did not stop cleanly");
}

Test(examples, chillybin_migrates_once_and_keeps_stock_across_restarts)
{
    service cb = chillybin_start("v1", "stock.db", NULL);
    cr_assert_eq(status_of("GET", cb.base, "/pick?name=ham&quantity=5"), 200);
    cr_assert_eq(stop(cb.proc, SIGTERM), 0);

    cb = chillybin_start("v1", "stock.db", NULL);
    cr_expect_eq(stock_of(cb.base, "ham"), 15, "not seeded again, the pick kept");
    reply r = http("GET", cb.base, "/", NULL);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "schema_version")), 2);
    reply_free(&r);
    cr_assert_eq(stop(cb.proc, SIGTERM), 0);

    /* The database knows its history: one row in schema_version, a ledger line per change. */
    char path[320];
    snprintf(path, sizeof path, "%s/stock.db", tmpdir);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM schema_version), "
                                        "(SELECT version FROM schema_version), "
                                        "(SELECT change FROM ledger WHERE name = 'ham' "
                                        " ORDER BY id DESC LIMIT 1)", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_expect_eq(sqlite3_column_int(st, 0), 1);
    cr_expect_eq(sqlite3_column_int(st, 1), 2);
    cr_expect_eq(sqlite3_column_int(st, 2), -5);
    sqlite3_finalize(st);

    /* A database from a newer chillybin is refused rather than misread. */
    cr_assert_eq(sqlite3_exec(db, "UPDATE schema_version SET version = 99", NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    char port[16];
    snprintf(port, sizeof port, "%d", test_free_port());
    const char *args[] = { "--db", path, "--port", port, NULL };
    proc *p = start("SONAR_CHILLYBIN_BIN", "chillybin-newer-schema", args, NULL);
    cr_assert(TEST_WAIT_UNTIL(proc_reaped(p), 15000));
    cr_expect(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 1);
}

Test(examples, chillybin_v2_adds_v2_pick_and_marks_pick_deprecated)
{
    service v2 = chillybin_start("v2", "v2.db", NULL);
    reply r = http("GET", v2.base, "/v2/pick?name=tomato&quantity=2", NULL);
    cr_assert_eq(r.status, 200, "/v2/pick → %ld %s", r.status, r.body);
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "ingredient")), "tomato");
    cr_expect_eq(json_integer_value(json_object_get(r.json, "taken")), 2);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "remaining")), 18);
    char h[256];
    cr_expect_null(header_of(&r, "Deprecation", h, sizeof h), "/v2/pick is not deprecated");
    reply_free(&r);

    /* The old endpoint keeps working, and says where to go. */
    r = http("GET", v2.base, "/pick?name=tomato&quantity=1", NULL);
    cr_assert_eq(r.status, 200);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "remaining")), 17);
    cr_expect_str_eq(header_of(&r, "Deprecation", h, sizeof h), "true");
    cr_expect(header_of(&r, "Link", h, sizeof h) != NULL && strstr(h, "</v2/pick>") &&
                  strstr(h, "successor-version"), "Link: %s", h);
    reply_free(&r);
    r = http("GET", v2.base, "/", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "variant")), "v2");
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "version")), "2.0.0");
    reply_free(&r);

    /* v1 has neither. */
    service v1 = chillybin_start("v1", "v1.db", NULL);
    r = http("GET", v1.base, "/pick?name=tomato&quantity=1", NULL);
    cr_expect_eq(r.status, 200);
    cr_expect_null(header_of(&r, "Deprecation", h, sizeof h));
    reply_free(&r);
    cr_expect_eq(status_of("GET", v1.base, "/v2/pick?name=tomato&quantity=1"), 404);
    cr_expect_eq(stop(v1.proc, SIGTERM), 0);
    cr_expect_eq(stop(v2.proc, SIGTERM), 0);
}

Test(examples, chillybin_nome_renames_the_name_parameter)
{
    service nome = chillybin_start("nome", "nome.db", NULL);
    reply r = http("GET", nome.base, "/pick?name=cheese&quantity=1", NULL);
    cr_expect_eq(r.status, 400);
    cr_expect_str_eq(error_of(&r), "missing nome");
    reply_free(&r);
    r = http("GET", nome.base, "/pick?nome=cheese&quantity=1", NULL);
    cr_expect_eq(r.status, 200);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "remaining")), 19);
    reply_free(&r);
    cr_expect_eq(stop(nome.proc, SIGTERM), 0);
}

/* Runs the binary with \p args and \p env and returns its exit code (it must exit by itself). */
static int run_to_exit(const char *bin_var, const char *tag, const char *const *args,
                       const char *const *env)
{
    proc *p = start(bin_var, tag, args, env);
    cr_assert(TEST_WAIT_UNTIL(proc_reaped(p), 15000), "%s did not exit", tag);
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

Test(examples, chillybin_variant_comes_from_the_environment_and_flags_are_validated)
{
    service s;
    s.port = test_free_port();
    snprintf(s.base, sizeof s.base, "http://127.0.0.1:%d", s.port);
    char port[16], db[320];
    snprintf(port, sizeof port, "%d", s.port);
    snprintf(db, sizeof db, "%s/env.db", tmpdir);
    const char *args[] = { "--db", db, "--port", port, NULL };
    const char *env_v2[] = { "CHILLYBIN_VARIANT=v2", NULL };
    s.proc = start("SONAR_CHILLYBIN_BIN", "chillybin-env", args, env_v2);
    wait_healthy(&s);
    reply r = http("GET", s.base, "/", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "variant")), "v2");
    reply_free(&r);
    cr_expect_eq(status_of("GET", s.base, "/v2/pick?name=ham&quantity=1"), 200);

    /* A second chillybin on the same port, or on a database it cannot create, exits 1. */
    char other_db[320];
    snprintf(other_db, sizeof other_db, "%s/other.db", tmpdir);
    const char *same_port[] = { "--db", other_db, "--port", port, NULL };
    cr_expect_eq(run_to_exit("SONAR_CHILLYBIN_BIN", "port-in-use", same_port, NULL), 1);
    cr_expect_eq(status_of("GET", s.base, "/health"), 200, "the first one is unharmed");
    cr_expect_eq(stop(s.proc, SIGTERM), 0);
    const char *no_dir[] = { "--db", "/nonexistent-dir/x.db", "--port", port, NULL };
    cr_expect_eq(run_to_exit("SONAR_CHILLYBIN_BIN", "bad-db", no_dir, NULL), 1);

    const char *env_bad[] = { "CHILLYBIN_VARIANT=v9", NULL };
    cr_expect_eq(run_to_exit("SONAR_CHILLYBIN_BIN", "bad-variant", args, env_bad), 2);
    const char *bad_port[] = { "--db", db, "--port", "80x", NULL };
    cr_expect_eq(run_to_exit("SONAR_CHILLYBIN_BIN", "bad-port", bad_port, NULL), 2);
    const char *bad_address[] = { "--db", db, "--port", port, "--address", "localhost:1", NULL };
    cr_expect_eq(run_to_exit("SONAR_CHILLYBIN_BIN", "bad-address", bad_address, NULL), 1);
    const char *bad_url[] = { "--port", port, "--chillybin", "ftp://x", NULL };
    cr_expect_eq(run_to_exit("SONAR_JAFFLR_BIN", "bad-url", bad_url, NULL), 2);
    const char *flag_bad[] = { "JAFFLR_USE_V2_PICK=maybe", NULL };
    const char *jargs[] = { "--port", port, NULL };
    cr_expect_eq(run_to_exit("SONAR_JAFFLR_BIN", "bad-flag", jargs, flag_bad), 2);
}

/* ---- jafflr -------------------------------------------------------------- */

Test(examples, jafflr_makes_toasties_through_chillybin)
{
    service cb = chillybin_start("v1", "stock.db", NULL);
    service jf = jafflr_start(cb.base, false);

    reply r = http("GET", jf.base, "/toastie?i=cheese&i=vegemite", NULL);
    cr_assert_eq(r.status, 200, "toastie → %ld %s", r.status, r.body);
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "toastie")),
                     "cheese & vegemite toastie");
    cr_expect_eq(json_array_size(json_object_get(r.json, "ingredients")), 2);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "toasties_made")), 1);
    reply_free(&r);
    cr_expect_eq(stock_of(cb.base, "cheese"), 19);
    cr_expect_eq(stock_of(cb.base, "vegemite"), 19);
    cr_expect_eq(stock_of(cb.base, "ham"), 20);

    /* One pickle on the shelf, two asked: the first is put back, the toastie refused. */
    r = http("POST", cb.base, "/restock", "{\"name\":\"pickle\",\"quantity\":1}");
    cr_assert_eq(r.status, 200);
    reply_free(&r);
    r = http("GET", jf.base, "/toastie?i=ham&i=pickle&i=pickle", NULL);
    cr_expect_eq(r.status, 409, "→ %ld %s", r.status, r.body);
    cr_expect(strstr(error_of(&r), "out of pickle") != NULL, "error: %s", error_of(&r));
    reply_free(&r);
    cr_expect_eq(stock_of(cb.base, "pickle"), 1, "the picked pickle was put back");
    cr_expect_eq(stock_of(cb.base, "ham"), 20, "the picked ham was put back");

    r = http("GET", jf.base, "/toastie?i=unicorn", NULL);
    cr_expect_eq(r.status, 409);
    cr_expect(strstr(error_of(&r), "does not stock unicorn") != NULL, "error: %s", error_of(&r));
    reply_free(&r);

    /* Bad requests never reach chillybin. */
    static const char *const bad[] = {
        "/toastie", "/toastie?i=", "/toastie?i=Cheese", "/toastie?i=a%20b",
        "/toastie?i=a&i=b&i=c&i=d&i=e&i=f&i=g&i=h&i=i",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = http("GET", jf.base, bad[i], NULL);
        cr_expect_eq(r.status, 400, "%s → %ld", bad[i], r.status);
        cr_expect_neq(*error_of(&r), '\0', "%s has an error text", bad[i]);
        reply_free(&r);
    }
    cr_expect_eq(metric(cb.base, "chillybin_picks_total"), 4, "2 + ham + pickle");

    r = http("GET", jf.base, "/", NULL);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "toasties_made")), 1);
    cr_expect_eq(json_integer_value(json_object_get(r.json, "failures")), 2);
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "pick_api")), "/pick");
    reply_free(&r);
    cr_expect_eq(metric(jf.base, "jafflr_toasties_total"), 1);
    cr_expect_eq(metric(jf.base, "jafflr_toastie_failures_total{reason=\"out_of_stock\"}"), 1);
    cr_expect_eq(stop(jf.proc, SIGINT), 0);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

Test(examples, jafflr_answers_502_when_chillybin_is_down)
{
    char nowhere[64];
    snprintf(nowhere, sizeof nowhere, "http://127.0.0.1:%d", test_free_port());
    service jf = jafflr_start(nowhere, false);
    reply r = http("GET", jf.base, "/toastie?i=cheese", NULL);
    cr_expect_eq(r.status, 502);
    cr_expect(strstr(error_of(&r), "chillybin is unavailable") != NULL, "error: %s", error_of(&r));
    reply_free(&r);
    cr_expect_eq(metric(jf.base, "jafflr_toastie_failures_total{reason=\"chillybin_unavailable\"}"), 1);
    cr_expect_eq(stop(jf.proc, SIGTERM), 0);
}

Test(examples, jafflr_feature_flag_moves_it_to_v2_pick)
{
    service cb = chillybin_start("v2", "stock.db", NULL);
    service jf = jafflr_start(cb.base, true);
    reply r = http("GET", jf.base, "/toastie?i=ham&i=tomato", NULL);
    cr_expect_eq(r.status, 200, "→ %ld %s", r.status, r.body);
    reply_free(&r);
    cr_expect_eq(metric(cb.base, "chillybin_http_requests_total{path=\"/v2/pick\",code=\"200\"}"), 2);
    cr_expect_eq(metric(cb.base, "chillybin_http_requests_total{path=\"/pick\",code=\"200\"}"), -1,
                 "the deprecated endpoint is not used");
    r = http("GET", jf.base, "/", NULL);
    cr_expect_str_eq(json_string_value(json_object_get(r.json, "pick_api")), "/v2/pick");
    reply_free(&r);

    /* A flagged jafflr against the breaking variant gets a clear 502, never a crash. */
    service nome = chillybin_start("nome", "nome.db", NULL);
    service jf_nome = jafflr_start(nome.base, false);
    r = http("GET", jf_nome.base, "/toastie?i=ham", NULL);
    cr_expect_eq(r.status, 502);
    cr_expect(strstr(error_of(&r), "missing nome") != NULL, "error: %s", error_of(&r));
    reply_free(&r);
    cr_expect_eq(stop(jf_nome.proc, SIGTERM), 0);
    cr_expect_eq(stop(nome.proc, SIGTERM), 0);
    cr_expect_eq(stop(jf.proc, SIGTERM), 0);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

/* ---- jafflr's sonar checks on chillybin ---------------------------------- */

/* Waits for the next message on \p sub; returns it parsed (new), or NULL after \p timeout_ms. */
static json_t *next_json(natsSubscription *sub, int64_t timeout_ms)
{
    natsMsg *m = NULL;
    if (natsSubscription_NextMsg(&m, sub, timeout_ms) != NATS_OK)
        return NULL;
    json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    natsMsg_Destroy(m);
    return doc;
}

/* jafflr with its checks, joined: waits for its registration on the bus. */
static service jafflr_joined(const char *chillybin_base, bool use_v2)
{
    natsSubscription *sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, "sonar.register.jafflr"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    service jf = jafflr_start(chillybin_base, use_v2);
    json_t *reg = next_json(sub, 15000);
    natsSubscription_Destroy(sub);
    if (reg == NULL)
        dump_log(jf.proc);
    cr_assert_not_null(reg, "jafflr did not register (exited: %s; its log is above)",
                       proc_reaped(jf.proc) ? "yes" : "no");
    cr_expect_eq(json_array_size(json_object_get(json_object_get(reg, "checks"), "chillybin")), 5,
                 "five check cases on chillybin");
    char health[96];
    snprintf(health, sizeof health, "%s/health", jf.base);
    cr_expect_str_eq(json_string_value(json_object_get(reg, "health")), health);
    json_decref(reg);
    return jf;
}

/*
 * Announces \p candidate as chillybin by hand (sonar.check.v1 on
 * sonar.check.chillybin) and returns jafflr's sonar.result.v1 (new).
 */
static json_t *check_candidate(const char *change_id, const service *candidate,
                               const char *version)
{
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.result.%s.jafflr", change_id);
    natsSubscription *sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, subject), NATS_OK);
    json_t *req = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i}", "type", "sonar.check.v1",
                            "change_id", change_id, "service", "chillybin", "version", version,
                            "address", candidate->base, "timeout_ms", 10000);
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    cr_assert_eq(natsConnection_PublishString(nc, "sonar.check.chillybin", text), NATS_OK);
    free(text);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    json_t *result = next_json(sub, 20000);
    natsSubscription_Destroy(sub);
    cr_assert_not_null(result, "no answer from jafflr on %s", subject);
    return result;
}

/* The check named \p name in a result, or NULL. */
static json_t *check_named(json_t *result, const char *name)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(result, "checks"), i, c) {
        if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0)
            return c;
    }
    return NULL;
}

static const char *status_str(json_t *obj)
{
    const char *s = json_string_value(json_object_get(obj, "status"));
    return s != NULL ? s : "(none)";
}

/* Asserts check \p name of \p res has \p status and a message containing each of \p needles. */
static void expect_check(json_t *res, const char *name, const char *status,
                         const char *const *needles)
{
    json_t *check = check_named(res, name);
    cr_assert_not_null(check, "no check named \"%s\"", name);
    cr_expect_str_eq(status_str(check), status, "%s", name);
    const char *msg = json_string_value(json_object_get(check, "message"));
    for (size_t i = 0; needles[i] != NULL; i++)
        cr_expect(msg != NULL && strstr(msg, needles[i]) != NULL, "%s: \"%s\" lacks \"%s\"",
                  name, msg ? msg : "(no message)", needles[i]);
}

Test(examples, chillybin_joins_sonar_without_dependencies_and_answers_none)
{
    natsSubscription *sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, "sonar.register.chillybin"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
    service cb = chillybin_start("v2", "stock.db", NULL);
    json_t *reg = next_json(sub, 15000);
    natsSubscription_Destroy(sub);
    if (reg == NULL)
        dump_log(cb.proc);
    cr_assert_not_null(reg, "chillybin did not register (exited: %s; its log is above)",
                       proc_reaped(cb.proc) ? "yes" : "no");
    cr_expect_str_eq(json_string_value(json_object_get(reg, "version")), "2.0.0");
    cr_expect_str_eq(json_string_value(json_object_get(reg, "address")), cb.base);
    cr_expect_eq(json_array_size(json_object_get(reg, "depends_on")), 0);
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", cb.base);
    cr_expect_str_eq(json_string_value(json_object_get(reg, "metrics")), url);
    snprintf(url, sizeof url, "%s/health", cb.base);
    cr_expect_str_eq(json_string_value(json_object_get(reg, "health")), url);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(reg, "metadata"), "variant")),
                     "v2");
    json_decref(reg);

    /* A change to some other service: chillybin has no checks on it and says so. */
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, "sonar.result.other-change.chillybin"),
                 NATS_OK);
    cr_assert_eq(natsConnection_PublishString(
                     nc, "sonar.check.jafflr",
                     "{\"type\":\"sonar.check.v1\",\"change_id\":\"other-change\",\"service\":"
                     "\"jafflr\",\"version\":\"9.9.9\",\"address\":\"http://127.0.0.1:1\","
                     "\"timeout_ms\":5000}"), NATS_OK);
    json_t *res = next_json(sub, 15000);
    natsSubscription_Destroy(sub);
    cr_assert_not_null(res, "no answer from chillybin");
    cr_expect_str_eq(json_string_value(json_object_get(res, "status")), "none");
    json_decref(res);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

Test(examples, jafflr_checks_pass_against_v1_and_v2_and_fail_against_nome)
{
    service stable = chillybin_start("v1", "stable.db", NULL);
    service jf = jafflr_joined(stable.base, false);
    service v1 = chillybin_start("v1", "v1.db", NULL);
    service v2 = chillybin_start("v2", "v2.db", NULL);
    service nome = chillybin_start("nome", "nome.db", NULL);

    json_t *res = check_candidate("change-v1", &v1, "1.0.1");
    cr_expect_str_eq(status_str(res), "pass", "v1: status %s", status_str(res));
    cr_expect_eq(json_array_size(json_object_get(res, "checks")), 5);
    json_decref(res);

    res = check_candidate("change-v2", &v2, "2.0.0");
    cr_expect_str_eq(status_str(res), "pass", "v2: status %s", status_str(res));
    /* The report tells jafflr's team that /pick is deprecated, and what replaces it. */
    expect_check(res, "pick in stock", "pass",
                 (const char *const[]){ "GET /pick is deprecated", "</v2/pick>", NULL });
    json_decref(res);

    res = check_candidate("change-nome", &nome, "3.0.0");
    cr_expect_str_eq(status_str(res), "fail", "nome: status %s", status_str(res));
    /* The message names the endpoint and what was wrong. */
    expect_check(res, "pick in stock", "fail",
                 (const char *const[]){ "GET /pick?name=probe-", "→ 400, expected 200",
                                        "missing nome", NULL });
    expect_check(res, "pick a missing ingredient", "fail",
                 (const char *const[]){ "→ 400, expected 404", NULL });
    json_decref(res);

    /* The candidates' shelves got only probe ingredients; the stable chillybin was untouched. */
    cr_expect_eq(stock_of(stable.base, "cheese"), 20);
    cr_expect_eq(stop(jf.proc, SIGTERM), 0);
}

Test(examples, jafflr_on_v2_pick_checks_v2_pick)
{
    service stable = chillybin_start("v2", "stable.db", NULL);
    service jf = jafflr_joined(stable.base, true);
    service v1 = chillybin_start("v1", "v1.db", NULL);
    service v2 = chillybin_start("v2", "v2.db", NULL);

    json_t *res = check_candidate("flag-v2", &v2, "2.0.1");
    cr_expect_str_eq(status_str(res), "pass", "v2: status %s", status_str(res));
    expect_check(res, "v2 pick in stock", "pass",
                 (const char *const[]){ "GET /v2/pick?name=probe-", "→ 200", NULL });
    json_decref(res);

    /* Rolling chillybin back to v1 would break this jafflr: sonar says so. */
    res = check_candidate("flag-v1", &v1, "1.0.0");
    cr_expect_str_eq(status_str(res), "fail");
    expect_check(res, "v2 pick in stock", "fail",
                 (const char *const[]){ "GET /v2/pick?name=probe-", "→ 404, expected 200", NULL });
    /* Even the case expecting 404 fails: v1's 404 is "no such endpoint", not the ingredient. */
    expect_check(res, "v2 pick a missing ingredient", "fail",
                 (const char *const[]){ "does not mention probe-", NULL });
    json_decref(res);
    cr_expect_eq(stop(jf.proc, SIGTERM), 0);
}

/* ---- Through the coordinator: the gate a pipeline runs --------------------- */

/* Request/reply on the bus; the parsed reply (new) or NULL. */
static json_t *bus_request(const char *subject, const char *body, int64_t timeout_ms)
{
    natsMsg *m = NULL;
    if (natsConnection_RequestString(&m, nc, subject, body, timeout_ms) != NATS_OK)
        return NULL;
    json_t *doc = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    natsMsg_Destroy(m);
    return doc;
}

static bool sonard_answers(void)
{
    json_t *doc = bus_request("sonar.api.services", "{}", 200);
    bool answered = doc != NULL;
    json_decref(doc);
    return answered;
}

/* True when sonard lists \p name as live. */
static bool sonard_knows(const char *name)
{
    json_t *doc = bus_request("sonar.api.services", "{}", 1000);
    bool live = false;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(doc, "services"), i, s) {
        const char *n = json_string_value(json_object_get(s, "service"));
        if (n != NULL && strcmp(n, name) == 0)
            live = json_is_true(json_object_get(s, "live"));
    }
    json_decref(doc);
    return live;
}

/* Announces \p candidate as chillybin \p version to sonard; returns the report (new). */
static json_t *announce(const service *candidate, const char *version)
{
    json_t *change = json_pack("{s:s, s:s, s:s, s:s, s:i}", "type", "sonar.change.v1", "service",
                               "chillybin", "version", version, "address", candidate->base,
                               "timeout_ms", 10000);
    char *text = json_dumps(change, JSON_COMPACT);
    json_decref(change);
    json_t *report = bus_request("sonar.change.chillybin", text, 30000);
    free(text);
    cr_assert_not_null(report, "no report from sonard");
    return report;
}

/* The entry of service \p name in a report, or NULL. */
static json_t *report_entry(json_t *report, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(report, "results"), i, e) {
        const char *n = json_string_value(json_object_get(e, "service"));
        if (n != NULL && strcmp(n, name) == 0)
            return e;
    }
    return NULL;
}

Test(examples, sonard_passes_chillybin_v2_and_stops_nome_naming_jafflrs_check)
{
    char db[320];
    snprintf(db, sizeof db, "%s/sonard.db", tmpdir);
    const char *args[] = { "--server", natsd.url, "--db", db, "--default-timeout", "10s", NULL };
    start("SONARD_BIN", "sonard", args, NULL);
    cr_assert(TEST_WAIT_UNTIL(sonard_answers(), 15000), "sonard does not answer");

    service stable = chillybin_start("v1", "stable.db", NULL);
    service jf = jafflr_start(stable.base, false);
    cr_assert(TEST_WAIT_UNTIL(sonard_knows("jafflr"), 15000), "sonard never saw jafflr");
    service v2 = chillybin_start("v2", "v2.db", NULL);
    service nome = chillybin_start("nome", "nome.db", NULL);

    json_t *report = announce(&v2, "2.0.0");
    cr_expect_str_eq(json_string_value(json_object_get(report, "verdict")), "pass");
    json_t *entry = report_entry(report, "jafflr");
    cr_assert_not_null(entry, "jafflr is in the report");
    cr_expect_str_eq(status_str(entry), "pass");
    expect_check(entry, "pick in stock", "pass",
                 (const char *const[]){ "GET /pick is deprecated", NULL });
    json_decref(report);

    report = announce(&nome, "3.0.0");
    cr_expect_str_eq(json_string_value(json_object_get(report, "verdict")), "fail");
    entry = report_entry(report, "jafflr");
    cr_assert_not_null(entry, "jafflr is in the report");
    cr_expect_str_eq(status_str(entry), "fail");
    expect_check(entry, "pick in stock", "fail",
                 (const char *const[]){ "GET /pick?name=", "missing nome", NULL });
    json_decref(report);
    cr_expect_eq(stop(jf.proc, SIGTERM), 0);
}

/* Parses \p base's /metrics with libsonar's Prometheus 0.0.4 parser (new result). */
static sonar_promtext *scrape(const char *base)
{
    reply r = http("GET", base, "/metrics", NULL);
    cr_assert_eq(r.status, 200);
    char type[128];
    cr_expect(header_of(&r, "Content-Type", type, sizeof type) != NULL &&
                  strstr(type, "text/plain") && strstr(type, "version=0.0.4"),
              "Content-Type: %s", type);
    sonar_promtext *parsed = NULL;
    sonar_promtext_error err;
    sonar_status st = sonar_promtext_parse(&parsed, r.body, r.len, &err);
    cr_assert_eq(st, SONAR_OK, "%s/metrics line %zu: %s", base, err.line, err.reason);
    reply_free(&r);
    return parsed;
}

static void expect_family(const sonar_promtext *p, const char *name, sonar_promtext_type type,
                          size_t min_samples)
{
    const sonar_promtext_family *f = sonar_promtext_family_find(p, name);
    cr_assert_not_null(f, "no family %s", name);
    cr_expect_eq(f->type, type, "%s is a %s", name, sonar_promtext_type_str(f->type));
    cr_expect_geq(f->n_samples, min_samples, "%s has %zu samples", name, f->n_samples);
    cr_expect_not_null(f->help, "%s has HELP", name);
}

Test(examples, metrics_are_valid_prometheus_text)
{
    service cb = chillybin_start("v2", "stock.db", NULL);
    service jf = jafflr_start(cb.base, false);
    cr_assert_eq(status_of("GET", jf.base, "/toastie?i=cheese&i=ham"), 200);
    cr_assert_eq(status_of("GET", jf.base, "/toastie?i=unicorn"), 409);

    sonar_promtext *p = scrape(cb.base);
    expect_family(p, "chillybin_http_requests_total", SONAR_PROMTEXT_COUNTER, 2);
    expect_family(p, "chillybin_http_requests_in_flight", SONAR_PROMTEXT_GAUGE, 1);
    expect_family(p, "chillybin_picks_total", SONAR_PROMTEXT_COUNTER, 1);
    expect_family(p, "chillybin_stock", SONAR_PROMTEXT_GAUGE, 5);
    expect_family(p, "chillybin_info", SONAR_PROMTEXT_GAUGE, 1);
    const sonar_promtext_family *stock = sonar_promtext_family_find(p, "chillybin_stock");
    for (size_t i = 0; i < stock->n_samples; i++) {
        const char *ing = sonar_promtext_label_get(&stock->samples[i], "ingredient");
        cr_assert_not_null(ing);
        if (strcmp(ing, "cheese") == 0 || strcmp(ing, "ham") == 0)
            cr_expect_eq(stock->samples[i].value, 19.0, "%s", ing);
    }
    sonar_promtext_destroy(p);

    p = scrape(jf.base);
    expect_family(p, "jafflr_http_requests_total", SONAR_PROMTEXT_COUNTER, 2);
    expect_family(p, "jafflr_toasties_total", SONAR_PROMTEXT_COUNTER, 1);
    expect_family(p, "jafflr_toastie_failures_total", SONAR_PROMTEXT_COUNTER, 3);
    sonar_promtext_destroy(p);
    cr_expect_eq(stop(jf.proc, SIGTERM), 0);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

/* ---- Concurrency and garbage ---------------------------------------------- */

typedef struct picker {
    const char *base;
    int ok, conflict, other;
} picker;

static void *pick_three(void *arg)
{
    picker *p = arg;
    for (int i = 0; i < 3; i++) {
        long s = status_of("GET", p->base, "/pick?name=olive&quantity=1");
        if (s == 200)
            p->ok++;
        else if (s == 409)
            p->conflict++;
        else
            p->other++;
    }
    return NULL;
}

Test(examples, concurrent_picks_never_take_more_than_there_is)
{
    service cb = chillybin_start("v1", "stock.db", NULL);
    reply r = http("POST", cb.base, "/restock", "{\"name\":\"olive\",\"quantity\":20}");
    cr_assert_eq(r.status, 200);
    reply_free(&r);

    enum { N = 8 };
    picker pickers[N];
    pthread_t threads[N];
    for (int i = 0; i < N; i++) {
        pickers[i] = (picker){ .base = cb.base };
        cr_assert_eq(pthread_create(&threads[i], NULL, pick_three, &pickers[i]), 0);
    }
    int ok = 0, conflict = 0, other = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        ok += pickers[i].ok;
        conflict += pickers[i].conflict;
        other += pickers[i].other;
    }
    cr_expect_eq(ok, 20, "exactly the 20 olives were picked");
    cr_expect_eq(conflict, 4, "the other 4 picks were refused");
    cr_expect_eq(other, 0);
    cr_expect_eq(stock_of(cb.base, "olive"), 0);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

/* Writes \p len bytes to a fresh connection, reads whatever comes back, closes. */
static void send_raw(int port, const char *bytes, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(write(fd, bytes, len), (ssize_t)len);
    shutdown(fd, SHUT_WR);
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
}

Test(examples, garbage_connections_do_not_hurt_either_service)
{
    service cb = chillybin_start("v1", "stock.db", NULL);
    service jf = jafflr_start(cb.base, false);
    static const char binary[] = "\x00\x01\x02\xff\xfe garbage\r\n\r\n";
    send_raw(cb.port, binary, sizeof binary - 1);
    send_raw(jf.port, binary, sizeof binary - 1);
    static const char *const junk[] = {
        "GET /pick?name=cheese&quantity=1 HTTP/9.9\r\n\r\n",
        "POST /restock HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
        "POST /restock HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET /toastie?i=%ZZ&i=%00cheese HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /",
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        send_raw(cb.port, junk[i], strlen(junk[i]));
        send_raw(jf.port, junk[i], strlen(junk[i]));
    }
    cr_expect_eq(status_of("GET", cb.base, "/health"), 200);
    cr_expect_eq(status_of("GET", jf.base, "/health"), 200);
    cr_expect_eq(stock_of(cb.base, "cheese"), 20, "no garbage took stock");
    cr_expect_eq(stop(jf.proc, SIGTERM), 0);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}

/* ---- Graceful shutdown --------------------------------------------------- */

typedef struct slow_pick {
    const char *base;
    const char *path;
    long status;
    bool done;
    pthread_mutex_t lock;
} slow_pick;

static void *do_slow_pick(void *arg)
{
    slow_pick *sp = arg;
    long s = status_of("GET", sp->base, sp->path);
    pthread_mutex_lock(&sp->lock);
    sp->status = s;
    sp->done = true;
    pthread_mutex_unlock(&sp->lock);
    return NULL;
}

static bool slow_pick_done(slow_pick *sp)
{
    pthread_mutex_lock(&sp->lock);
    bool d = sp->done;
    pthread_mutex_unlock(&sp->lock);
    return d;
}

/*
 * Starts GET \p path on \p base on a thread and returns once chillybin
 * (\p chillybin_base, started with --slow-ms) is serving a pick: its
 * in-flight gauge counts that pick and the /metrics request asking.
 */
static void start_in_flight(slow_pick *sp, pthread_t *t, const char *base, const char *path,
                            const char *chillybin_base)
{
    *sp = (slow_pick){ .base = base, .path = path };
    pthread_mutex_init(&sp->lock, NULL);
    cr_assert_eq(pthread_create(t, NULL, do_slow_pick, sp), 0);
    /* The gauge counts a request until its completion runs, which may be just
     * after the client read the answer: on a new connection, the previous
     * scrape could still count. On one kept-alive connection the server
     * completes each scrape before it reads the next. */
    CURL *scraper = curl_easy_init();
    cr_assert_not_null(scraper);
    bool in_flight = TEST_WAIT_UNTIL(
        metric_on(scraper, chillybin_base, "chillybin_http_requests_in_flight") >= 2, 10000);
    curl_easy_cleanup(scraper);
    cr_assert(in_flight, "the request never got in flight");
    /* In front of chillybin, jafflr must count the toastie too. */
    if (strcmp(base, chillybin_base) != 0)
        cr_assert(TEST_WAIT_UNTIL(metric(base, "jafflr_http_requests_in_flight") >= 2, 10000),
                  "the toastie never got in flight at jafflr");
}

Test(examples, sigterm_finishes_the_request_in_flight_leaves_the_bus_and_exits_0)
{
    const char *slow[] = { "--slow-ms", "1500", NULL };
    service cb = chillybin_start("v1", "stock.db", slow);
    natsSubscription *leave = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&leave, nc, "sonar.leave.chillybin"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    slow_pick sp;
    pthread_t t;
    start_in_flight(&sp, &t, cb.base, "/pick?name=cheese&quantity=1", cb.base);

    kill(cb.proc->pid, SIGTERM);
    /* New connections are refused at once, while the pick is still being served. */
    cr_expect(TEST_WAIT_UNTIL(status_of("GET", cb.base, "/health") == 0, 5000),
              "still accepting after SIGTERM");
    cr_assert(TEST_WAIT_UNTIL(proc_reaped(cb.proc), 15000), "did not exit");
    pthread_join(t, NULL);
    cr_expect(slow_pick_done(&sp));
    cr_expect_eq(sp.status, 200, "the request in flight was answered");
    cr_expect(WIFEXITED(cb.proc->status) && WEXITSTATUS(cb.proc->status) == 0);

    json_t *left = next_json(leave, 5000);
    cr_expect_not_null(left, "no sonar.leave.chillybin");
    cr_expect_str_eq(json_string_value(json_object_get(left, "type")), "sonar.leave.v1");
    json_decref(left);
    natsSubscription_Destroy(leave);
    pthread_mutex_destroy(&sp.lock);

    /* The stock change of the finished request is kept. */
    cb = chillybin_start("v1", "stock.db", NULL);
    cr_expect_eq(stock_of(cb.base, "cheese"), 19);
    cr_expect_eq(stop(cb.proc, SIGINT), 0);
}

Test(examples, jafflr_finishes_a_toastie_in_flight_on_sigterm)
{
    const char *slow[] = { "--slow-ms", "1000", NULL };
    service cb = chillybin_start("v1", "stock.db", slow);
    service jf = jafflr_start(cb.base, false);

    slow_pick sp;
    pthread_t t;
    start_in_flight(&sp, &t, jf.base, "/toastie?i=ham", cb.base);
    kill(jf.proc->pid, SIGTERM);
    cr_assert(TEST_WAIT_UNTIL(proc_reaped(jf.proc), 15000), "jafflr did not exit");
    pthread_join(t, NULL);
    if (sp.status != 200) {
        dump_log(jf.proc);
        dump_log(cb.proc);
    }
    cr_expect_eq(sp.status, 200, "the toastie in flight was made (status %ld; logs above)",
                 sp.status);
    cr_expect(WIFEXITED(jf.proc->status) && WEXITSTATUS(jf.proc->status) == 0);
    pthread_mutex_destroy(&sp.lock);
    cr_expect_eq(stock_of(cb.base, "ham"), 19);
    cr_expect_eq(stop(cb.proc, SIGTERM), 0);
}
