/*
 * Joining the bus as a service.
 *
 * Thread map (see service.h):
 *  - NATS delivery threads run on_check, on_discover, on_srv and
 *    on_endpoint_msg. They decode, answer `none` and `$SRV` at once, and hand
 *    slow work over; they never run checks, handlers or SQLite.
 *  - One request thread per check request that has checks; it starts one
 *    thread per check and waits for them until the deadline.
 *  - The heartbeat thread re-publishes the registration.
 *  - endpoint_workers threads run endpoint handlers from a queue, and the
 *    continuations fast handlers hand over with sonar_request_defer().
 *    Fast handlers (sonar_service_add_fast_endpoint) run on the NATS thread.
 * Every thread we start is counted in svc->threads so stop() can wait for
 * them; late check results are discarded but the thread is still waited for.
 */
#include "sonar/service.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/http.h"
#include "sonar/reply.h"

#define SRV_VERBS 3
#define SRV_SUBS (SRV_VERBS * 3)
#define MAX_QUEUED_REQUESTS 10000
#define CHECK_ENDPOINT_NAME "sonar-check"

typedef struct check_def {
    char *dependency;
    char *name;
    sonar_check_fn fn;
    void *closure;
} check_def;

typedef struct endpoint {
    sonar_service *svc;
    char *name;
    char *subject;
    char *queue_group;
    sonar_endpoint_fn fn;
    void *closure;
    bool fast; /* fn runs on the NATS delivery thread */
    sonar_stats_fn stats_fn;
    void *stats_closure;
    natsSubscription *sub;
    /* Figures for $SRV.STATS, guarded by svc->lock. */
    int64_t num_requests;
    int64_t num_errors;
    int64_t processing_ns;
    char last_error[256];
} endpoint;

/* A queued handler run: a request of a plain endpoint (msg), or the
 * continuation of a fast handler's request (req, fn, closure). */
typedef struct job {
    struct job *next;
    endpoint *ep;
    natsMsg *msg;
    sonar_request *req;
    sonar_endpoint_fn fn;
    void *closure;
} job;

struct sonar_request {
    endpoint *ep;
    natsMsg *msg;
    int64_t started_ns;
    _Atomic bool responded; /* a kept request may be answered from another thread */
    bool failed;
    char error_text[256];
    job *deferred;          /* fast handlers: the continuation's reserved job */
    bool continuing;        /* running as a fast handler's continuation */
    bool on_stack;          /* a plain endpoint's request: cannot be kept */
    bool kept;              /* sonar_request_keep() was called (by the handler's thread) */
    atomic_int holds;       /* kept: the handler's and the keeper's; the last frees it */
};

static void request_release(sonar_request *req);

struct sonar_service {
    sonar_bus *bus;
    natsConnection *nc;
    char *name, *version, *address, *description, *instance, *health, *metrics;
    int64_t heartbeat_ms;
    json_t *metadata;
    char **deps;
    size_t n_deps;
    check_def *checks;
    size_t n_checks;
    endpoint **endpoints; /* [0] is the check endpoint unless no_check_endpoint */
    bool answers_checks;
    size_t n_endpoints;
    int n_workers;

    natsSubscription *srv_subs[SRV_SUBS];
    natsSubscription *discover_sub;
    char *registration_json; /* immutable after start */
    char *register_subject;
    int64_t started_wall_ms;

    pthread_mutex_t lock;
    pthread_cond_t cond;   /* signalled on stop and when threads/jobs change */
    pthread_cond_t job_cond; /* endpoint workers only: a job was queued, or stop */
    bool started;
    bool stopping;
    bool stopped;
    int threads;           /* request and check threads still running */
    int kept;              /* requests kept past their handler, not yet done */
    pthread_t heartbeat;
    bool heartbeat_running;
    pthread_t *workers;
    job *queue_head, *queue_tail;
    size_t queue_len;
};

/* ---- small helpers ------------------------------------------------------ */

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Loose SemVer: MAJOR.MINOR.PATCH with optional -prerelease and +build. */
static bool semver_valid(const char *v)
{
    const char *p = v;
    for (int part = 0; part < 3; part++) {
        if (*p < '0' || *p > '9')
            return false;
        if (*p == '0' && p[1] >= '0' && p[1] <= '9')
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
        if (part < 2) {
            if (*p != '.')
                return false;
            p++;
        }
    }
    if (*p == '-' || *p == '+') {
        p++;
        if (*p == '\0')
            return false;
        for (; *p; p++) {
            char c = *p;
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  c == '-' || c == '.' || c == '+'))
                return false;
        }
    }
    return *p == '\0';
}

static void publish_msg_json(sonar_service *svc, const char *subject, const char *json)
{
    natsStatus s = natsConnection_PublishString(svc->nc, subject, json);
    if (s != NATS_OK)
        sonar_log(SONAR_LOG_WARN, "%s: publish on %s failed: %s", svc->name, subject,
                  natsStatus_GetText(s));
}

static void thread_started(sonar_service *svc)
{
    pthread_mutex_lock(&svc->lock);
    svc->threads++;
    pthread_mutex_unlock(&svc->lock);
}

static void thread_finished(sonar_service *svc)
{
    pthread_mutex_lock(&svc->lock);
    svc->threads--;
    pthread_cond_broadcast(&svc->cond);
    pthread_mutex_unlock(&svc->lock);
}

static void record_endpoint(endpoint *ep, int64_t elapsed_ns, const char *error)
{
    sonar_service *svc = ep->svc;
    pthread_mutex_lock(&svc->lock);
    ep->num_requests++;
    ep->processing_ns += elapsed_ns;
    if (error != NULL) {
        ep->num_errors++;
        size_t len = strnlen(error, sizeof ep->last_error - 1);
        memcpy(ep->last_error, error, len);
        ep->last_error[len] = '\0';
    }
    pthread_mutex_unlock(&svc->lock);
}


/* ---- configuration ------------------------------------------------------ */

sonar_status sonar_service_create(sonar_service **out, sonar_bus *bus,
                                  const sonar_service_config *cfg)
{
    if (out == NULL || bus == NULL || cfg == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_service_create: NULL argument");
    sonar_status st = sonar_name_check("service name", cfg->name);
    if (st != SONAR_OK)
        return st;
    if (cfg->version == NULL || !semver_valid(cfg->version) ||
        strlen(cfg->version) > SONAR_MAX_TEXT_BYTES)
        return sonar__fail(SONAR_ERR_INVALID,
                           "service version \"%s\" is invalid: expected SemVer such as 1.2.3",
                           cfg->version ? cfg->version : "(missing)");
    if (cfg->instance != NULL && (st = sonar_name_check("instance id", cfg->instance)) != SONAR_OK)
        return st;
    if (cfg->address != NULL && strlen(cfg->address) > SONAR_MAX_ADDRESS_BYTES)
        return sonar__fail(SONAR_ERR_INVALID, "service address is longer than %d bytes",
                           SONAR_MAX_ADDRESS_BYTES);
    if (cfg->heartbeat_ms != 0 && (cfg->heartbeat_ms < 100 || cfg->heartbeat_ms > 3600000))
        return sonar__fail(SONAR_ERR_INVALID, "heartbeat_ms %lld is out of range 100..3600000",
                           (long long)cfg->heartbeat_ms);

    sonar_service *svc = calloc(1, sizeof *svc);
    if (svc == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&svc->lock, NULL);
    pthread_cond_init(&svc->cond, NULL);
    pthread_cond_init(&svc->job_cond, NULL);
    svc->bus = bus;
    svc->nc = sonar_bus_nats(bus);
    svc->name = xstrdup(cfg->name);
    svc->version = xstrdup(cfg->version);
    svc->address = xstrdup(cfg->address ? cfg->address : "");
    svc->description = xstrdup(cfg->description ? cfg->description : "");
    svc->health = xstrdup(cfg->health);
    svc->metrics = xstrdup(cfg->metrics);
    svc->heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : SONAR_DEFAULT_HEARTBEAT_MS;
    svc->n_workers = cfg->endpoint_workers > 0 ? cfg->endpoint_workers : 4;
    if (cfg->instance) {
        svc->instance = xstrdup(cfg->instance);
    } else {
        char id[23];
        sonar_random_id(id);
        svc->instance = xstrdup(id);
    }
    svc->metadata = json_object();
    if (cfg->metadata) {
        for (const char *const *kv = cfg->metadata; kv[0]; kv += 2) {
            if (kv[1] == NULL) {
                sonar_service_destroy(svc);
                return sonar__fail(SONAR_ERR_INVALID, "metadata key \"%s\" has no value", kv[0]);
            }
            json_object_set_new(svc->metadata, kv[0], json_string(kv[1]));
        }
    }
    if (!svc->name || !svc->version || !svc->address || !svc->description || !svc->instance ||
        !svc->metadata) {
        sonar_service_destroy(svc);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    sonar_http_global_init();

    svc->answers_checks = !cfg->no_check_endpoint;
    if (!svc->answers_checks) {
        *out = svc;
        return SONAR_OK;
    }
    /* The check endpoint comes first so $SRV lists it first. */
    endpoint *ep = calloc(1, sizeof *ep);
    svc->endpoints = calloc(1, sizeof *svc->endpoints);
    if (ep == NULL || svc->endpoints == NULL) {
        free(ep);
        sonar_service_destroy(svc);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    ep->svc = svc;
    ep->name = xstrdup(CHECK_ENDPOINT_NAME);
    ep->subject = xstrdup(SONAR_SUBJ_CHECK_PREFIX "*");
    ep->queue_group = xstrdup(svc->name);
    svc->endpoints[0] = ep;
    svc->n_endpoints = 1;
    *out = svc;
    return SONAR_OK;
}

static sonar_status require_configurable(sonar_service *svc)
{
    if (svc->started)
        return sonar__fail(SONAR_ERR_STATE, "the service is already started");
    return SONAR_OK;
}

sonar_status sonar_service_depend(sonar_service *svc, const char *dependency)
{
    sonar_status st = require_configurable(svc);
    if (st == SONAR_OK)
        st = sonar_name_check("dependency name", dependency);
    if (st != SONAR_OK)
        return st;
    if (strcmp(dependency, svc->name) == 0)
        return sonar__fail(SONAR_ERR_INVALID, "a service cannot depend on itself (%s)", dependency);
    for (size_t i = 0; i < svc->n_deps; i++)
        if (strcmp(svc->deps[i], dependency) == 0)
            return SONAR_OK;
    if (svc->n_deps >= SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_LIMIT, "too many dependencies (max %d)", SONAR_MAX_LIST);
    char **deps = realloc(svc->deps, (svc->n_deps + 1) * sizeof *deps);
    if (deps == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    svc->deps = deps;
    if ((deps[svc->n_deps] = strdup(dependency)) == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    svc->n_deps++;
    return SONAR_OK;
}

sonar_status sonar_service_add_check(sonar_service *svc, const char *dependency,
                                     const char *check_name, sonar_check_fn fn, void *closure)
{
    if (!svc->answers_checks)
        return sonar__fail(SONAR_ERR_STATE, "this service was created with no_check_endpoint");
    sonar_status st = sonar_service_depend(svc, dependency);
    if (st != SONAR_OK)
        return st;
    if (fn == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "check \"%s\" has no function",
                           check_name ? check_name : "(null)");
    if (check_name == NULL || *check_name == '\0' || strlen(check_name) > SONAR_MAX_TEXT_BYTES)
        return sonar__fail(SONAR_ERR_INVALID, "check name must be 1..%d bytes",
                           SONAR_MAX_TEXT_BYTES);
    for (const char *p = check_name; *p; p++)
        if ((unsigned char)*p < 0x20)
            return sonar__fail(SONAR_ERR_INVALID, "check name contains a control character");
    for (size_t i = 0; i < svc->n_checks; i++)
        if (strcmp(svc->checks[i].dependency, dependency) == 0 &&
            strcmp(svc->checks[i].name, check_name) == 0)
            return sonar__fail(SONAR_ERR_INVALID, "check \"%s\" on %s is already registered",
                               check_name, dependency);
    if (svc->n_checks >= SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_LIMIT, "too many checks (max %d)", SONAR_MAX_LIST);
    check_def *checks = realloc(svc->checks, (svc->n_checks + 1) * sizeof *checks);
    if (checks == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    svc->checks = checks;
    check_def *c = &checks[svc->n_checks];
    c->dependency = strdup(dependency);
    c->name = strdup(check_name);
    c->fn = fn;
    c->closure = closure;
    if (c->dependency == NULL || c->name == NULL) {
        free(c->dependency);
        free(c->name);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    svc->n_checks++;
    return SONAR_OK;
}

static endpoint *find_endpoint(sonar_service *svc, const char *name)
{
    for (size_t i = 0; i < svc->n_endpoints; i++)
        if (strcmp(svc->endpoints[i]->name, name) == 0)
            return svc->endpoints[i];
    return NULL;
}

static sonar_status add_endpoint(sonar_service *svc, const char *name, const char *subject,
                                 const char *queue_group, sonar_endpoint_fn fn, void *closure,
                                 bool fast)
{
    sonar_status st = require_configurable(svc);
    if (st == SONAR_OK)
        st = sonar_name_check("endpoint name", name);
    if (st != SONAR_OK)
        return st;
    if (fn == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "endpoint \"%s\" has no handler", name);
    if (subject == NULL || *subject == '\0' || strlen(subject) > 256 ||
        strpbrk(subject, " \t\r\n") != NULL || subject[0] == '.' ||
        subject[strlen(subject) - 1] == '.' || strstr(subject, "..") != NULL)
        return sonar__fail(SONAR_ERR_INVALID, "endpoint \"%s\" has an invalid subject \"%s\"", name,
                           subject ? subject : "(null)");
    if (queue_group != NULL && (st = sonar_name_check("queue group", queue_group)) != SONAR_OK)
        return st;
    if (find_endpoint(svc, name) != NULL)
        return sonar__fail(SONAR_ERR_INVALID, "endpoint \"%s\" already exists", name);
    endpoint **eps = realloc(svc->endpoints, (svc->n_endpoints + 1) * sizeof *eps);
    if (eps == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    svc->endpoints = eps;
    endpoint *ep = calloc(1, sizeof *ep);
    if (ep == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    ep->svc = svc;
    ep->name = strdup(name);
    ep->subject = strdup(subject);
    ep->queue_group = strdup(queue_group ? queue_group : SONAR_DEFAULT_QUEUE_GROUP);
    ep->fn = fn;
    ep->closure = closure;
    ep->fast = fast;
    if (!ep->name || !ep->subject || !ep->queue_group) {
        free(ep->name);
        free(ep->subject);
        free(ep->queue_group);
        free(ep);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    eps[svc->n_endpoints++] = ep;
    return SONAR_OK;
}

sonar_status sonar_service_add_endpoint(sonar_service *svc, const char *name, const char *subject,
                                        const char *queue_group, sonar_endpoint_fn fn,
                                        void *closure)
{
    return add_endpoint(svc, name, subject, queue_group, fn, closure, false);
}

sonar_status sonar_service_add_fast_endpoint(sonar_service *svc, const char *name,
                                             const char *subject, const char *queue_group,
                                             sonar_endpoint_fn fn, void *closure)
{
    return add_endpoint(svc, name, subject, queue_group, fn, closure, true);
}

sonar_status sonar_service_set_endpoint_stats(sonar_service *svc, const char *name,
                                              sonar_stats_fn fn, void *closure)
{
    sonar_status st = require_configurable(svc);
    if (st != SONAR_OK)
        return st;
    endpoint *ep = name ? find_endpoint(svc, name) : NULL;
    if (ep == NULL)
        return sonar__fail(SONAR_ERR_NOT_FOUND, "no endpoint named \"%s\"", name ? name : "(null)");
    ep->stats_fn = fn;
    ep->stats_closure = closure;
    return SONAR_OK;
}

const char *sonar_service_instance(const sonar_service *svc)
{
    return svc->instance;
}

const char *sonar_service_name(const sonar_service *svc)
{
    return svc->name;
}

sonar_bus *sonar_service_bus(sonar_service *svc)
{
    return svc->bus;
}

sonar_status sonar_service_registration(const sonar_service *svc, sonar_register_msg *out)
{
    sonar_register_msg r = {0};
    r.service = xstrdup(svc->name);
    r.instance = xstrdup(svc->instance);
    r.version = xstrdup(svc->version);
    r.address = xstrdup(svc->address);
    r.heartbeat_ms = svc->heartbeat_ms;
    r.no_check_endpoint = !svc->answers_checks;
    r.health = xstrdup(svc->health);
    r.metrics = xstrdup(svc->metrics);
    r.metadata = json_deep_copy(svc->metadata);
    r.depends_on = calloc(svc->n_deps + 1, sizeof *r.depends_on);
    r.checks = calloc(svc->n_deps + 1, sizeof *r.checks);
    bool ok = r.service && r.instance && r.version && r.address && r.metadata && r.depends_on &&
              r.checks && (!svc->health || r.health) && (!svc->metrics || r.metrics);
    for (size_t i = 0; ok && i < svc->n_deps; i++) {
        r.depends_on[r.n_depends_on] = xstrdup(svc->deps[i]);
        ok = r.depends_on[r.n_depends_on] != NULL;
        r.n_depends_on += ok;
        size_t n = 0;
        for (size_t c = 0; c < svc->n_checks; c++)
            n += strcmp(svc->checks[c].dependency, svc->deps[i]) == 0;
        if (!ok || n == 0)
            continue;
        sonar_dep_checks *dc = &r.checks[r.n_checks];
        dc->dependency = xstrdup(svc->deps[i]);
        dc->names = calloc(n, sizeof *dc->names);
        ok = dc->dependency && dc->names;
        r.n_checks += ok || dc->dependency || dc->names;
        for (size_t c = 0; ok && c < svc->n_checks; c++) {
            if (strcmp(svc->checks[c].dependency, svc->deps[i]) != 0)
                continue;
            dc->names[dc->n_names] = xstrdup(svc->checks[c].name);
            ok = dc->names[dc->n_names] != NULL;
            dc->n_names += ok;
        }
    }
    if (!ok) {
        sonar_register_finish(&r);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    *out = r;
    return SONAR_OK;
}

/* ---- check context ------------------------------------------------------ */

typedef struct check_request check_request;

struct sonar_check_ctx {
    check_request *req;
    check_def *def;
    size_t index;
    char message[SONAR_MAX_MESSAGE_TEXT];
};

/* One check request being served; shared by its request thread and check
 * threads, freed by whoever drops the last reference. */
struct check_request {
    sonar_service *svc;
    sonar_check_msg msg;
    int64_t received_ns;
    int64_t deadline_ms;   /* sonar_now_ms() clock */
    int64_t budget_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    size_t n;
    size_t done;
    bool closed;           /* result published: late results are discarded */
    sonar_check_result *results;
};

const char *sonar_check_address(const sonar_check_ctx *ctx) { return ctx->req->msg.address; }
const char *sonar_check_version(const sonar_check_ctx *ctx) { return ctx->req->msg.version; }
const char *sonar_check_service(const sonar_check_ctx *ctx) { return ctx->req->msg.service; }
const char *sonar_check_change_id(const sonar_check_ctx *ctx) { return ctx->req->msg.change_id; }
int64_t sonar_check_deadline_ms(const sonar_check_ctx *ctx) { return ctx->req->deadline_ms; }

int64_t sonar_check_remaining_ms(const sonar_check_ctx *ctx)
{
    int64_t left = ctx->req->deadline_ms - sonar_now_ms();
    return left > 0 ? left : 0;
}

bool sonar_check_expired(const sonar_check_ctx *ctx)
{
    return sonar_now_ms() >= ctx->req->deadline_ms;
}

static void set_message(sonar_check_ctx *ctx, const char *fmt, va_list ap)
{
    vsnprintf(ctx->message, sizeof ctx->message, fmt, ap);
}

sonar_check_status sonar_check_fail(sonar_check_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_message(ctx, fmt, ap);
    va_end(ap);
    return SONAR_CHECK_FAIL;
}

sonar_check_status sonar_check_pass(sonar_check_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_message(ctx, fmt, ap);
    va_end(ap);
    return SONAR_CHECK_PASS;
}

static void request_unref(check_request *req)
{
    pthread_mutex_lock(&req->lock);
    bool last = --req->refs == 0;
    pthread_mutex_unlock(&req->lock);
    if (!last)
        return;
    for (size_t i = 0; i < req->n; i++) {
        free(req->results[i].name);
        free(req->results[i].message);
    }
    free(req->results);
    sonar_check_finish(&req->msg);
    pthread_mutex_destroy(&req->lock);
    pthread_cond_destroy(&req->cond);
    free(req);
}

typedef struct check_job {
    check_request *req;
    check_def *def;
    size_t index;
} check_job;

static void *check_thread(void *arg)
{
    check_job *job = arg;
    check_request *req = job->req;
    sonar_service *svc = req->svc;
    sonar_check_ctx ctx = {.req = req, .def = job->def, .index = job->index};
    int64_t t0 = sonar_now_ms();
    sonar_check_status cs = job->def->fn(&ctx, job->def->closure);
    int64_t elapsed = sonar_now_ms() - t0;

    pthread_mutex_lock(&req->lock);
    if (!req->closed) {
        sonar_check_result *r = &req->results[job->index];
        r->status = cs == SONAR_CHECK_PASS ? SONAR_PASS : SONAR_FAIL;
        r->duration_ms = elapsed;
        free(r->message);
        r->message = strdup(ctx.message);
        req->done++;
        pthread_cond_broadcast(&req->cond);
    } else {
        sonar_log(SONAR_LOG_WARN, "%s: check \"%s\" finished after its deadline; result discarded",
                  svc->name, job->def->name);
    }
    pthread_mutex_unlock(&req->lock);
    free(job);
    request_unref(req);
    thread_finished(svc);
    return NULL;
}

static bool spawn_detached(sonar_service *svc, void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    thread_started(svc);
    int rc = pthread_create(&t, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        thread_finished(svc);
        return false;
    }
    return true;
}

static void publish_result(sonar_service *svc, const sonar_result_msg *res)
{
    char *subject = NULL;
    char *json = NULL;
    if (sonar_subject(&subject, SONAR_SUBJ_RESULT_PREFIX, res->change_id, res->service) != SONAR_OK ||
        sonar_result_encode(res, &json) != SONAR_OK) {
        sonar_log(SONAR_LOG_ERROR, "%s: cannot build the result for change %s: %s", svc->name,
                  res->change_id, sonar_last_error());
    } else {
        publish_msg_json(svc, subject, json);
    }
    free(subject);
    free(json);
}

static void *request_thread(void *arg)
{
    check_request *req = arg;
    sonar_service *svc = req->svc;

    for (size_t i = 0, k = 0; i < svc->n_checks; i++) {
        if (strcmp(svc->checks[i].dependency, req->msg.service) != 0)
            continue;
        check_job *job = malloc(sizeof *job);
        bool ok = false;
        if (job != NULL) {
            *job = (check_job){.req = req, .def = &svc->checks[i], .index = k};
            pthread_mutex_lock(&req->lock);
            req->refs++;
            pthread_mutex_unlock(&req->lock);
            ok = spawn_detached(svc, check_thread, job);
            if (!ok) {
                free(job);
                pthread_mutex_lock(&req->lock);
                req->refs--;
                pthread_mutex_unlock(&req->lock);
            }
        }
        if (!ok) {
            pthread_mutex_lock(&req->lock);
            req->results[k].status = SONAR_FAIL;
            req->results[k].message = strdup("could not start a thread for this check");
            req->done++;
            pthread_mutex_unlock(&req->lock);
        }
        k++;
    }

    /* Wait for every check or the deadline, whichever comes first. */
    pthread_mutex_lock(&req->lock);
    while (req->done < req->n) {
        int64_t left = req->deadline_ms - sonar_now_ms();
        if (left <= 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = ts.tv_nsec + (left % 1000) * 1000000;
        ts.tv_sec += left / 1000 + ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&req->cond, &req->lock, &ts);
    }
    req->closed = true;
    sonar_result_msg res = {
        .change_id = req->msg.change_id,
        .service = svc->name,
        .instance = svc->instance,
        .status = SONAR_PASS,
        .duration_ms = (sonar_now_ns() - req->received_ns) / 1000000,
        .checks = req->results,
        .n_checks = req->n,
    };
    for (size_t i = 0; i < req->n; i++) {
        sonar_check_result *r = &req->results[i];
        if (r->message == NULL) { /* still running: report it timed out */
            r->status = SONAR_FAIL;
            r->duration_ms = req->budget_ms;
            char text[96];
            snprintf(text, sizeof text, "timed out after %lld ms", (long long)req->budget_ms);
            r->message = strdup(text);
        }
        if (r->status == SONAR_FAIL)
            res.status = SONAR_FAIL;
    }
    /* Counted before the answer leaves (see sonar_request_respond). */
    record_endpoint(svc->endpoints[0], sonar_now_ns() - req->received_ns, NULL);
    publish_result(svc, &res);
    pthread_mutex_unlock(&req->lock);

    request_unref(req);
    thread_finished(svc);
    return NULL;
}

/* Time left for checks: the request's timeout minus a margin so the answer
 * (even "timed out") reaches the coordinator before its own deadline. */
static int64_t check_budget_ms(int64_t timeout_ms)
{
    int64_t margin = timeout_ms / 10;
    if (margin > 500)
        margin = 500;
    return timeout_ms - margin;
}

static void on_check(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    sonar_service *svc = closure;
    int64_t t0 = sonar_now_ns();
    const char *subject = natsMsg_GetSubject(msg);
    const char *reply = natsMsg_GetReply(msg);
    sonar_check_msg cm = {0};
    sonar_status st = sonar_check_decode(&cm, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    char err[512];
    if (st == SONAR_OK && strcmp(subject + strlen(SONAR_SUBJ_CHECK_PREFIX), cm.service) != 0) {
        st = sonar__fail(SONAR_ERR_PROTOCOL, "check request for \"%s\" arrived on subject %s",
                         cm.service, subject);
    }
    if (st != SONAR_OK) {
        snprintf(err, sizeof err, "%s", sonar_last_error());
        sonar_log(SONAR_LOG_WARN, "%s: refused a message on %s: %s", svc->name, subject, err);
        sonar_reply_error(svc->nc, reply, 400, "%s", err);
        record_endpoint(svc->endpoints[0], sonar_now_ns() - t0, err);
        sonar_check_finish(&cm);
        natsMsg_Destroy(msg);
        return;
    }
    natsMsg_Destroy(msg);

    size_t n = 0;
    for (size_t i = 0; i < svc->n_checks; i++)
        n += strcmp(svc->checks[i].dependency, cm.service) == 0;
    if (n == 0) {
        sonar_result_msg res = {.change_id = cm.change_id, .service = svc->name,
                                .instance = svc->instance, .status = SONAR_NONE};
        record_endpoint(svc->endpoints[0], sonar_now_ns() - t0, NULL);
        publish_result(svc, &res);
        sonar_check_finish(&cm);
        return;
    }

    check_request *req = calloc(1, sizeof *req);
    sonar_check_result *results = calloc(n, sizeof *results);
    if (req == NULL || results == NULL) {
        free(req);
        free(results);
        sonar_check_finish(&cm);
        record_endpoint(svc->endpoints[0], sonar_now_ns() - t0, "out of memory");
        return;
    }
    req->svc = svc;
    req->msg = cm;
    req->received_ns = t0;
    req->budget_ms = check_budget_ms(cm.timeout_ms);
    req->deadline_ms = t0 / 1000000 + req->budget_ms;
    req->refs = 1;
    req->n = n;
    req->results = results;
    pthread_mutex_init(&req->lock, NULL);
    /* The request thread waits against the monotonic clock (deadlines must
     * not move with wall-clock changes). */
    sonar_cond_init_monotonic(&req->cond);
    for (size_t i = 0, k = 0; i < svc->n_checks; i++)
        if (strcmp(svc->checks[i].dependency, cm.service) == 0)
            results[k++].name = strdup(svc->checks[i].name);
    if (!spawn_detached(svc, request_thread, req)) {
        sonar_log(SONAR_LOG_ERROR, "%s: could not start a thread for change %s", svc->name,
                  req->msg.change_id);
        record_endpoint(svc->endpoints[0], sonar_now_ns() - t0, "could not start a thread");
        request_unref(req);
    }
}

/* ---- discover, $SRV ----------------------------------------------------- */

static void on_discover(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    sonar_service *svc = closure;
    if (sonar_discover_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg)) != SONAR_OK) {
        sonar_log(SONAR_LOG_WARN, "%s: refused a message on %s: %s", svc->name,
                  natsMsg_GetSubject(msg), sonar_last_error());
        sonar_reply_error(svc->nc, natsMsg_GetReply(msg), 400, "%s", sonar_last_error());
    } else {
        publish_msg_json(svc, svc->register_subject, svc->registration_json);
    }
    natsMsg_Destroy(msg);
}

enum srv_verb { SRV_PING, SRV_INFO, SRV_STATS };
static const char *const srv_verb_names[SRV_VERBS] = {"PING", "INFO", "STATS"};
static const char *const srv_types[SRV_VERBS] = {
    "io.nats.micro.v1.ping_response", "io.nats.micro.v1.info_response",
    "io.nats.micro.v1.stats_response"};

static json_t *srv_body(sonar_service *svc, enum srv_verb verb)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:O}", "type", srv_types[verb], "name",
                          svc->name, "id", svc->instance, "version", svc->version, "metadata",
                          svc->metadata);
    if (o == NULL || verb == SRV_PING)
        return o;
    json_t *eps = json_array();
    if (verb == SRV_INFO) {
        json_object_set_new(o, "description", json_string(svc->description));
        for (size_t i = 0; i < svc->n_endpoints; i++) {
            endpoint *ep = svc->endpoints[i];
            json_array_append_new(eps, json_pack("{s:s, s:s, s:s, s:{}}", "name", ep->name,
                                                 "subject", ep->subject, "queue_group",
                                                 ep->queue_group, "metadata"));
        }
    } else {
        char started[40];
        sonar_format_rfc3339(svc->started_wall_ms, started, sizeof started);
        json_object_set_new(o, "started", json_string(started));
        for (size_t i = 0; i < svc->n_endpoints; i++) {
            endpoint *ep = svc->endpoints[i];
            pthread_mutex_lock(&svc->lock);
            int64_t n = ep->num_requests, errs = ep->num_errors, ns = ep->processing_ns;
            char last[sizeof ep->last_error];
            memcpy(last, ep->last_error, sizeof last);
            pthread_mutex_unlock(&svc->lock);
            json_t *e = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:I, s:I}", "name", ep->name,
                                  "subject", ep->subject, "queue_group", ep->queue_group,
                                  "num_requests", (json_int_t)n, "num_errors", (json_int_t)errs,
                                  "last_error", last, "processing_time", (json_int_t)ns,
                                  "average_processing_time", (json_int_t)(n ? ns / n : 0));
            if (e != NULL && ep->stats_fn != NULL) {
                json_t *data = ep->stats_fn(ep->stats_closure);
                if (data != NULL)
                    json_object_set_new(e, "data", data);
            }
            json_array_append_new(eps, e);
        }
    }
    json_object_set_new(o, "endpoints", eps);
    return o;
}

static void on_srv(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    sonar_service *svc = closure;
    enum srv_verb verb = SRV_PING;
    const char *subject = natsMsg_GetSubject(msg);
    /* "$SRV.<VERB>[...]": the verb is the second token. */
    const char *v = subject + 5;
    for (int i = 0; i < SRV_VERBS; i++) {
        size_t len = strlen(srv_verb_names[i]);
        if (strncmp(v, srv_verb_names[i], len) == 0 && (v[len] == '.' || v[len] == '\0'))
            verb = (enum srv_verb)i;
    }
    const char *reply = natsMsg_GetReply(msg);
    if (reply != NULL && *reply != '\0') {
        json_t *body = srv_body(svc, verb);
        char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        if (text != NULL)
            natsConnection_PublishString(svc->nc, reply, text);
        free(text);
        json_decref(body);
    }
    natsMsg_Destroy(msg);
}

/* ---- endpoints ---------------------------------------------------------- */

const char *sonar_request_subject(const sonar_request *req) { return natsMsg_GetSubject(req->msg); }
const char *sonar_request_data(const sonar_request *req) { return natsMsg_GetData(req->msg); }
size_t sonar_request_len(const sonar_request *req) { return (size_t)natsMsg_GetDataLength(req->msg); }

const char *sonar_request_header(const sonar_request *req, const char *name)
{
    const char *value = NULL;
    if (natsMsgHeader_Get(req->msg, name, &value) != NATS_OK)
        return NULL;
    return value;
}

sonar_status sonar_request_respond(sonar_request *req, const char *data, size_t len)
{
    if (atomic_exchange(&req->responded, true))
        return sonar__fail(SONAR_ERR_STATE, "the request was already answered");
    const char *reply = natsMsg_GetReply(req->msg);
    /* Counted before the reply leaves, so a STATS request sent after the
     * reply arrived always sees it. */
    record_endpoint(req->ep, sonar_now_ns() - req->started_ns, NULL);
    if (reply == NULL || *reply == '\0')
        return SONAR_OK;
    natsStatus s = natsConnection_Publish(req->ep->svc->nc, reply, data, (int)len);
    return sonar_bus_status(s, "replying to a request");
}

sonar_status sonar_request_respond_error(sonar_request *req, int code, const char *fmt, ...)
{
    if (atomic_exchange(&req->responded, true))
        return sonar__fail(SONAR_ERR_STATE, "the request was already answered");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(req->error_text, sizeof req->error_text, fmt, ap);
    va_end(ap);
    req->failed = true;
    record_endpoint(req->ep, sonar_now_ns() - req->started_ns, req->error_text);
    return sonar_reply_error(req->ep->svc->nc, natsMsg_GetReply(req->msg), code, "%s",
                             req->error_text);
}

sonar_status sonar_request_respond_json(sonar_request *req, json_t *doc)
{
    char *text = doc != NULL ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL)
        return sonar_request_respond_error(req, 500, "out of memory encoding the reply");
    sonar_status st = sonar_request_respond(req, text, strlen(text));
    free(text);
    return st;
}

/* After a handler returned: answers with an error if nobody replied. */
static void settle_request(sonar_request *req, sonar_status st)
{
    if (!atomic_load(&req->responded)) {
        const char *detail = sonar_last_error();
        sonar_request_respond_error(req, sonar_reply_code(st), "%s%s%s", sonar_status_str(st),
                                    *detail ? ": " : "", detail);
    }
}

static void run_job(job *j)
{
    sonar__clear_error();
    if (j->req != NULL) { /* a fast handler's continuation */
        sonar_request *req = j->req;
        req->continuing = true;
        sonar_status st = j->fn(req, j->closure);
        if (req->kept) {
            request_release(req);
        } else {
            settle_request(req, st);
            natsMsg_Destroy(req->msg);
            free(req);
        }
    } else {
        sonar_request req = {.ep = j->ep, .msg = j->msg, .started_ns = sonar_now_ns(),
                             .on_stack = true};
        settle_request(&req, j->ep->fn(&req, j->ep->closure));
        natsMsg_Destroy(j->msg);
    }
    free(j);
}

/* Under svc->lock. */
static void enqueue_job(sonar_service *svc, job *j)
{
    if (svc->queue_tail)
        svc->queue_tail->next = j;
    else
        svc->queue_head = j;
    svc->queue_tail = j;
    /* Its own condition: a signal on svc->cond could wake the heartbeat
     * thread instead of a worker and leave the job queued. */
    pthread_cond_signal(&svc->job_cond);
}

sonar_status sonar_request_defer(sonar_request *req, sonar_endpoint_fn fn, void *closure)
{
    endpoint *ep = req->ep;
    sonar_service *svc = ep->svc;
    if (!ep->fast || req->deferred != NULL || fn == NULL)
        return sonar__fail(SONAR_ERR_STATE, "only a fast handler can defer its request, once");
    job *j = malloc(sizeof *j);
    if (j == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    /* The slot is reserved now, so the continuation is certain to run; the
     * job is queued when the fast handler returned (it still uses req). */
    pthread_mutex_lock(&svc->lock);
    bool full = svc->queue_len >= MAX_QUEUED_REQUESTS || svc->stopping;
    if (!full)
        svc->queue_len++;
    pthread_mutex_unlock(&svc->lock);
    if (full) {
        free(j);
        return sonar__fail(SONAR_ERR_STATE, "service busy or stopping");
    }
    *j = (job){.ep = ep, .req = req, .fn = fn, .closure = closure};
    req->deferred = j;
    return SONAR_OK;
}

/* Drops one hold on a kept request; the last frees it. */
static void request_release(sonar_request *req)
{
    if (atomic_fetch_sub(&req->holds, 1) != 1)
        return;
    sonar_service *svc = req->ep->svc;
    natsMsg_Destroy(req->msg);
    free(req);
    pthread_mutex_lock(&svc->lock);
    svc->kept--;
    pthread_cond_broadcast(&svc->cond);
    pthread_mutex_unlock(&svc->lock);
}

sonar_status sonar_request_keep(sonar_request *req)
{
    if (req->kept || req->on_stack || (req->deferred != NULL && !req->continuing))
        return sonar__fail(SONAR_ERR_STATE, "only a fast handler that did not defer, or a"
                                            " continuation, can keep its request, once");
    sonar_service *svc = req->ep->svc;
    pthread_mutex_lock(&svc->lock);
    svc->kept++;
    pthread_mutex_unlock(&svc->lock);
    /* The keeper may be done before the handler returned: whichever of the
     * two lets go last frees the request. */
    atomic_store(&req->holds, 2);
    req->kept = true;
    return SONAR_OK;
}

void sonar_request_done(sonar_request *req)
{
    if (req == NULL)
        return;
    if (!atomic_load(&req->responded))
        sonar_request_respond_error(req, 500, "the request was kept but never answered");
    request_release(req);
}

/* A fast endpoint's request, on the NATS thread. */
static void run_fast(endpoint *ep, natsMsg *msg)
{
    sonar_service *svc = ep->svc;
    sonar_request *req = calloc(1, sizeof *req);
    if (req == NULL) {
        sonar_reply_error(svc->nc, natsMsg_GetReply(msg), 500, "out of memory");
        record_endpoint(ep, 0, "out of memory");
        natsMsg_Destroy(msg);
        return;
    }
    *req = (sonar_request){.ep = ep, .msg = msg, .started_ns = sonar_now_ns()};
    sonar__clear_error();
    sonar_status st = ep->fn(req, ep->closure);
    if (req->kept) {
        request_release(req); /* from here on its keeper owns req */
        return;
    }
    if (req->deferred != NULL) {
        pthread_mutex_lock(&svc->lock);
        enqueue_job(svc, req->deferred); /* from here on a worker owns req */
        pthread_mutex_unlock(&svc->lock);
        return;
    }
    settle_request(req, st);
    natsMsg_Destroy(msg);
    free(req);
}

static void *worker_thread(void *arg)
{
    sonar_service *svc = arg;
    pthread_mutex_lock(&svc->lock);
    for (;;) {
        while (svc->queue_head == NULL && !svc->stopping)
            pthread_cond_wait(&svc->job_cond, &svc->lock);
        job *j = svc->queue_head;
        if (j == NULL)
            break; /* stopping and drained */
        svc->queue_head = j->next;
        if (svc->queue_head == NULL)
            svc->queue_tail = NULL;
        svc->queue_len--;
        pthread_mutex_unlock(&svc->lock);
        run_job(j);
        pthread_mutex_lock(&svc->lock);
    }
    pthread_mutex_unlock(&svc->lock);
    return NULL;
}

static void on_endpoint_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    endpoint *ep = closure;
    sonar_service *svc = ep->svc;
    if (ep->fast) {
        run_fast(ep, msg);
        return;
    }
    job *j = malloc(sizeof *j);
    pthread_mutex_lock(&svc->lock);
    bool full = svc->queue_len >= MAX_QUEUED_REQUESTS || svc->stopping || j == NULL;
    if (!full) {
        *j = (job){.ep = ep, .msg = msg};
        svc->queue_len++;
        enqueue_job(svc, j);
    }
    pthread_mutex_unlock(&svc->lock);
    if (full) {
        free(j);
        sonar_reply_error(svc->nc, natsMsg_GetReply(msg), 503, "service busy or stopping");
        record_endpoint(ep, 0, "service busy or stopping");
        natsMsg_Destroy(msg);
    }
}

/* ---- lifecycle ---------------------------------------------------------- */

static void *heartbeat_thread(void *arg)
{
    sonar_service *svc = arg;
    pthread_mutex_lock(&svc->lock);
    while (!svc->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (svc->heartbeat_ms % 1000) * 1000000;
        ts.tv_sec += svc->heartbeat_ms / 1000 + ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        int rc = 0;
        while (!svc->stopping && rc == 0)
            rc = pthread_cond_timedwait(&svc->cond, &svc->lock, &ts);
        if (svc->stopping)
            break;
        pthread_mutex_unlock(&svc->lock);
        publish_msg_json(svc, svc->register_subject, svc->registration_json);
        pthread_mutex_lock(&svc->lock);
    }
    pthread_mutex_unlock(&svc->lock);
    return NULL;
}

sonar_status sonar_service_start(sonar_service *svc)
{
    if (svc->started)
        return sonar__fail(SONAR_ERR_STATE, "the service is already started");
    sonar_register_msg reg;
    sonar_status st = sonar_service_registration(svc, &reg);
    if (st != SONAR_OK)
        return st;
    st = sonar_register_encode(&reg, &svc->registration_json);
    sonar_register_finish(&reg);
    if (st == SONAR_OK)
        st = sonar_subject(&svc->register_subject, SONAR_SUBJ_REGISTER_PREFIX, svc->name, NULL);
    if (st != SONAR_OK)
        return st;
    svc->started = true;
    svc->started_wall_ms = sonar_wall_ms();

    natsStatus s = NATS_OK;
    if (svc->answers_checks)
        s = natsConnection_QueueSubscribe(&svc->endpoints[0]->sub, svc->nc,
                                          svc->endpoints[0]->subject,
                                          svc->endpoints[0]->queue_group, on_check, svc);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&svc->discover_sub, svc->nc, SONAR_SUBJ_DISCOVER, on_discover,
                                     svc);
    for (size_t i = svc->answers_checks ? 1 : 0; s == NATS_OK && i < svc->n_endpoints; i++) {
        endpoint *ep = svc->endpoints[i];
        s = natsConnection_QueueSubscribe(&ep->sub, svc->nc, ep->subject, ep->queue_group,
                                          on_endpoint_msg, ep);
    }
    for (int v = 0; s == NATS_OK && v < SRV_VERBS; v++) {
        char subj[3][256];
        snprintf(subj[0], sizeof subj[0], "$SRV.%s", srv_verb_names[v]);
        snprintf(subj[1], sizeof subj[1], "$SRV.%s.%s", srv_verb_names[v], svc->name);
        snprintf(subj[2], sizeof subj[2], "$SRV.%s.%s.%s", srv_verb_names[v], svc->name,
                 svc->instance);
        for (int k = 0; s == NATS_OK && k < 3; k++)
            s = natsConnection_Subscribe(&svc->srv_subs[v * 3 + k], svc->nc, subj[k], on_srv, svc);
    }
    if (s == NATS_OK)
        s = natsConnection_Flush(svc->nc);
    if (s != NATS_OK) {
        st = sonar_bus_status(s, "subscribing");
        sonar_service_stop(svc);
        return st;
    }

    svc->workers = calloc((size_t)svc->n_workers, sizeof *svc->workers);
    if (svc->workers == NULL) {
        sonar_service_stop(svc);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < svc->n_workers; i++)
        if (pthread_create(&svc->workers[i], NULL, worker_thread, svc) != 0) {
            svc->n_workers = i;
            sonar_service_stop(svc);
            return sonar__fail(SONAR_ERR_IO, "could not start endpoint worker threads");
        }
    publish_msg_json(svc, svc->register_subject, svc->registration_json);
    natsConnection_Flush(svc->nc);
    if (pthread_create(&svc->heartbeat, NULL, heartbeat_thread, svc) != 0) {
        sonar_service_stop(svc);
        return sonar__fail(SONAR_ERR_IO, "could not start the heartbeat thread");
    }
    svc->heartbeat_running = true;
    sonar_log(SONAR_LOG_DEBUG, "%s %s joined as instance %s", svc->name, svc->version,
              svc->instance);
    return SONAR_OK;
}

/* Unsubscribes and waits until the subscription's callbacks have returned. */
static void close_sub(natsConnection *nc, natsSubscription **sub)
{
    if (*sub == NULL)
        return;
    /* Draining needs the server: while disconnected it could only time out. */
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED &&
        natsSubscription_Drain(*sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(*sub, 5000);
    else
        natsSubscription_Unsubscribe(*sub);
    natsSubscription_Destroy(*sub);
    *sub = NULL;
}

void sonar_service_stop(sonar_service *svc)
{
    if (svc == NULL || !svc->started || svc->stopped)
        return;
    svc->stopped = true;

    /* Leave first so the coordinator stops expecting us at once. */
    sonar_leave_msg leave = {.service = svc->name, .instance = svc->instance};
    char *json = NULL;
    char *subject = NULL;
    if (sonar_leave_encode(&leave, &json) == SONAR_OK &&
        sonar_subject(&subject, SONAR_SUBJ_LEAVE_PREFIX, svc->name, NULL) == SONAR_OK)
        publish_msg_json(svc, subject, json);
    free(json);
    free(subject);

    close_sub(svc->nc, &svc->discover_sub);
    for (int i = 0; i < SRV_SUBS; i++)
        close_sub(svc->nc, &svc->srv_subs[i]);
    for (size_t i = 0; i < svc->n_endpoints; i++)
        close_sub(svc->nc, &svc->endpoints[i]->sub);
    natsConnection_FlushTimeout(svc->nc, 1000);

    pthread_mutex_lock(&svc->lock);
    svc->stopping = true;
    pthread_cond_broadcast(&svc->cond);
    pthread_cond_broadcast(&svc->job_cond);
    pthread_mutex_unlock(&svc->lock);
    if (svc->heartbeat_running)
        pthread_join(svc->heartbeat, NULL);
    svc->heartbeat_running = false;
    for (int i = 0; svc->workers && i < svc->n_workers; i++)
        pthread_join(svc->workers[i], NULL);
    /* Checks still running (even past their deadline) and kept requests
     * (whose keepers answer and release them) are waited for. */
    pthread_mutex_lock(&svc->lock);
    while (svc->threads > 0 || svc->kept > 0)
        pthread_cond_wait(&svc->cond, &svc->lock);
    pthread_mutex_unlock(&svc->lock);
}

void sonar_service_destroy(sonar_service *svc)
{
    if (svc == NULL)
        return;
    sonar_service_stop(svc);
    for (size_t i = 0; i < svc->n_checks; i++) {
        free(svc->checks[i].dependency);
        free(svc->checks[i].name);
    }
    free(svc->checks);
    for (size_t i = 0; i < svc->n_deps; i++)
        free(svc->deps[i]);
    free(svc->deps);
    for (size_t i = 0; i < svc->n_endpoints; i++) {
        endpoint *ep = svc->endpoints[i];
        free(ep->name);
        free(ep->subject);
        free(ep->queue_group);
        free(ep);
    }
    free(svc->endpoints);
    free(svc->workers);
    json_decref(svc->metadata);
    free(svc->registration_json);
    free(svc->register_subject);
    free(svc->name);
    free(svc->version);
    free(svc->address);
    free(svc->description);
    free(svc->instance);
    free(svc->health);
    free(svc->metrics);
    pthread_mutex_destroy(&svc->lock);
    pthread_cond_destroy(&svc->cond);
    pthread_cond_destroy(&svc->job_cond);
    free(svc);
}
