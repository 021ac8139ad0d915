/* sonard's live registry: known services, live instances, lazy expiry. */
#include "registry.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/util.h"

typedef struct instance {
    char *id;
    char *version;
    char *address;
    int64_t heartbeat_ms;
    int64_t seen_ms;    /* monotonic */
    int64_t seen_wall;  /* wall clock, for display */
} instance;

typedef struct service {
    char *name;
    char *version;      /* of the last registration */
    char **deps;
    size_t n_deps;
    json_t *checks;     /* object {"dep":["name",...]} (owned) */
    bool silent;        /* registered with "answers_checks": false: never expected */
    int64_t seen_wall;
    instance *inst;
    size_t n_inst, cap_inst;
} service;

/* Per-service summary kept in an array parallel to svcs, so that computing a
 * gather's expected set reads one contiguous array instead of chasing every
 * service's pointers (a registry keeps every service it ever saw). */
typedef struct summary {
    int64_t live_until; /* max over instances of seen_ms + 3 * heartbeat_ms; 0: none */
    uint64_t deps_bloom; /* bit hash(dep) % 64 set for every dependency */
    bool silent;        /* answers no check requests */
} summary;

struct sonar_registry {
    pthread_mutex_t mu;
    char *self;
    service **svcs;     /* sorted by name */
    summary *sum;       /* parallel to svcs */
    size_t n, cap;
};

static uint64_t bloom_bit(const char *name)
{
    uint64_t h = 1469598103934665603ull;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 1099511628211ull;
    return 1ull << (h % 64);
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void instance_free(instance *in)
{
    free(in->id);
    free(in->version);
    free(in->address);
}

static void service_free(service *s)
{
    if (s == NULL)
        return;
    free(s->name);
    free(s->version);
    free_strv(s->deps, s->n_deps);
    json_decref(s->checks);
    for (size_t i = 0; i < s->n_inst; i++)
        instance_free(&s->inst[i]);
    free(s->inst);
    free(s);
}

sonar_status sonar_registry_create(sonar_registry **out, const char *self_name)
{
    sonar_registry *reg = calloc(1, sizeof *reg);
    if (reg == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
    if (self_name != NULL && (reg->self = strdup(self_name)) == NULL) {
        free(reg);
        return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
    }
    pthread_mutex_init(&reg->mu, NULL);
    *out = reg;
    return SONAR_OK;
}

void sonar_registry_destroy(sonar_registry *reg)
{
    if (reg == NULL)
        return;
    for (size_t i = 0; i < reg->n; i++)
        service_free(reg->svcs[i]);
    free(reg->svcs);
    free(reg->sum);
    free(reg->self);
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

/* Index of `name`, or the insertion point with *found = false. */
static size_t find_index(const sonar_registry *reg, const char *name, bool *found)
{
    size_t lo = 0, hi = reg->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(reg->svcs[mid]->name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static service *find(const sonar_registry *reg, const char *name)
{
    bool found;
    size_t i = find_index(reg, name, &found);
    return found ? reg->svcs[i] : NULL;
}

/* Finds or inserts a service; NULL when out of memory. */
static service *find_or_add(sonar_registry *reg, const char *name)
{
    bool found;
    size_t i = find_index(reg, name, &found);
    if (found)
        return reg->svcs[i];
    if (reg->n == reg->cap) {
        size_t cap = reg->cap ? reg->cap * 2 : 16;
        service **v = realloc(reg->svcs, cap * sizeof *v);
        if (v != NULL)
            reg->svcs = v;
        summary *m = realloc(reg->sum, cap * sizeof *m);
        if (m != NULL)
            reg->sum = m;
        if (v == NULL || m == NULL)
            return NULL;
        reg->cap = cap;
    }
    service *s = calloc(1, sizeof *s);
    if (s == NULL || (s->name = strdup(name)) == NULL) {
        free(s);
        return NULL;
    }
    memmove(&reg->svcs[i + 1], &reg->svcs[i], (reg->n - i) * sizeof *reg->svcs);
    memmove(&reg->sum[i + 1], &reg->sum[i], (reg->n - i) * sizeof *reg->sum);
    reg->svcs[i] = s;
    reg->sum[i] = (summary){0, 0, false};
    reg->n++;
    return s;
}

static bool instance_live(const instance *in, int64_t now_ms)
{
    return now_ms - in->seen_ms <= SONARD_MISSED_HEARTBEATS * in->heartbeat_ms;
}

/* Drops expired instances of `s`. */
static void prune(service *s, int64_t now_ms)
{
    size_t j = 0;
    for (size_t i = 0; i < s->n_inst; i++) {
        if (instance_live(&s->inst[i], now_ms))
            s->inst[j++] = s->inst[i];
        else
            instance_free(&s->inst[i]);
    }
    s->n_inst = j;
}

static instance *find_instance(service *s, const char *id)
{
    for (size_t i = 0; i < s->n_inst; i++)
        if (strcmp(s->inst[i].id, id) == 0)
            return &s->inst[i];
    return NULL;
}

/* Recomputes the summary of the service named `name` (after any change to it). */
static void summarize(sonar_registry *reg, const char *name)
{
    bool found;
    size_t i = find_index(reg, name, &found);
    if (!found)
        return;
    const service *s = reg->svcs[i];
    summary m = {0, 0, s->silent};
    for (size_t k = 0; k < s->n_inst; k++) {
        int64_t until = s->inst[k].seen_ms + SONARD_MISSED_HEARTBEATS * s->inst[k].heartbeat_ms;
        if (until > m.live_until)
            m.live_until = until;
    }
    for (size_t k = 0; k < s->n_deps; k++)
        m.deps_bloom |= bloom_bit(s->deps[k]);
    reg->sum[i] = m;
}

static instance *add_instance(service *s, const char *id)
{
    if (s->n_inst == s->cap_inst) {
        size_t cap = s->cap_inst ? s->cap_inst * 2 : 2;
        instance *v = realloc(s->inst, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        s->inst = v;
        s->cap_inst = cap;
    }
    instance *in = &s->inst[s->n_inst];
    memset(in, 0, sizeof *in);
    if ((in->id = strdup(id)) == NULL)
        return NULL;
    s->n_inst++;
    return in;
}

/* Replaces *dst with a copy of src (NULL stays NULL); false when out of memory. */
static bool set_str(char **dst, const char *src)
{
    char *c = NULL;
    if (src != NULL && (c = strdup(src)) == NULL)
        return false;
    free(*dst);
    *dst = c;
    return true;
}

static json_t *checks_json(const sonar_register_msg *msg)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < msg->n_checks; i++) {
        json_t *names = json_array();
        for (size_t k = 0; names != NULL && k < msg->checks[i].n_names; k++)
            json_array_append_new(names, json_string(msg->checks[i].names[k]));
        if (names == NULL || json_object_set_new(o, msg->checks[i].dependency, names) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* Dependencies are depends_on plus every key of checks (a check implies a dependency). */
static bool set_deps(service *s, const sonar_register_msg *msg)
{
    size_t cap = msg->n_depends_on + msg->n_checks;
    char **deps = calloc(cap ? cap : 1, sizeof *deps);
    size_t n = 0;
    if (deps == NULL)
        return false;
    for (size_t i = 0; i < cap; i++) {
        const char *d = i < msg->n_depends_on ? msg->depends_on[i]
                                              : msg->checks[i - msg->n_depends_on].dependency;
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++)
            dup = strcmp(deps[k], d) == 0;
        if (dup)
            continue;
        if ((deps[n] = strdup(d)) == NULL) {
            free_strv(deps, n);
            return false;
        }
        n++;
    }
    free_strv(s->deps, s->n_deps);
    s->deps = deps;
    s->n_deps = n;
    return true;
}

sonar_status sonar_registry_register(sonar_registry *reg, const sonar_register_msg *msg,
                                     int64_t now_ms, int64_t wall_ms, bool *out_new_instance)
{
    if (reg->self != NULL && strcmp(msg->service, reg->self) == 0)
        return sonar__fail(SONAR_ERR_STATE, "registration of the coordinator itself ignored");
    json_t *checks = checks_json(msg);
    if (checks == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
    sonar_status st = SONAR_OK;
    pthread_mutex_lock(&reg->mu);
    service *s = find_or_add(reg, msg->service);
    if (s == NULL) {
        st = sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
        goto out;
    }
    prune(s, now_ms);
    instance *in = find_instance(s, msg->instance);
    bool fresh = in == NULL;
    if (fresh && (in = add_instance(s, msg->instance)) == NULL) {
        st = sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
        goto out;
    }
    if (!set_str(&in->version, msg->version) || !set_str(&in->address, msg->address) ||
        !set_str(&s->version, msg->version) || !set_deps(s, msg)) {
        st = sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
        goto out;
    }
    in->heartbeat_ms = msg->heartbeat_ms;
    s->silent = msg->no_check_endpoint;
    in->seen_ms = now_ms;
    in->seen_wall = wall_ms;
    s->seen_wall = wall_ms;
    json_decref(s->checks);
    s->checks = checks;
    checks = NULL;
    summarize(reg, s->name);
    if (out_new_instance != NULL)
        *out_new_instance = fresh;
out:
    pthread_mutex_unlock(&reg->mu);
    json_decref(checks);
    return st;
}

sonar_status sonar_registry_leave(sonar_registry *reg, const char *service_name,
                                  const char *instance_id)
{
    sonar_status st = SONAR_ERR_NOT_FOUND;
    pthread_mutex_lock(&reg->mu);
    service *s = find(reg, service_name);
    for (size_t i = 0; s != NULL && i < s->n_inst; i++) {
        if (strcmp(s->inst[i].id, instance_id) == 0) {
            instance_free(&s->inst[i]);
            s->inst[i] = s->inst[s->n_inst - 1];
            s->n_inst--;
            summarize(reg, s->name);
            st = SONAR_OK;
            break;
        }
    }
    pthread_mutex_unlock(&reg->mu);
    if (st != SONAR_OK)
        return sonar__fail(st, "instance %s of %s is not registered", instance_id, service_name);
    return st;
}

sonar_status sonar_registry_restore_service(sonar_registry *reg, const char *name,
                                            const char *version, const json_t *depends_on,
                                            const json_t *checks, int64_t wall_ms)
{
    if (!sonar_name_valid(name) || (reg->self != NULL && strcmp(name, reg->self) == 0))
        return sonar__fail(SONAR_ERR_INVALID, "stored service name is invalid");
    sonar_status st = SONAR_OK;
    pthread_mutex_lock(&reg->mu);
    bool found;
    find_index(reg, name, &found);
    service *s = found ? NULL : find_or_add(reg, name);
    if (found)
        goto out; /* live data wins */
    if (s == NULL || !set_str(&s->version, version ? version : "")) {
        st = sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
        goto out;
    }
    s->seen_wall = wall_ms;
    s->checks = json_object();
    size_t n = json_is_array(depends_on) ? json_array_size(depends_on) : 0;
    s->deps = calloc(n ? n : 1, sizeof *s->deps);
    if (s->checks == NULL || s->deps == NULL) {
        st = sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *d = json_string_value(json_array_get(depends_on, i));
        if (sonar_name_valid(d) && (s->deps[s->n_deps] = strdup(d)) != NULL)
            s->n_deps++;
    }
    const char *key;
    json_t *names;
    json_object_foreach((json_t *)checks, key, names) {
        if (!sonar_name_valid(key) || !json_is_array(names))
            continue;
        json_t *copy = json_array();
        size_t k;
        json_t *v;
        json_array_foreach(names, k, v) {
            if (json_is_string(v))
                json_array_append(copy, v);
        }
        json_object_set_new(s->checks, key, copy);
    }
    summarize(reg, s->name);
out:
    pthread_mutex_unlock(&reg->mu);
    return st;
}

sonar_status sonar_registry_restore_instance(sonar_registry *reg, const char *name,
                                             const char *instance_id, const char *version,
                                             const char *address, int64_t heartbeat_ms,
                                             int64_t seen_wall_ms, int64_t now_ms, int64_t wall_ms)
{
    if (!sonar_name_valid(name) || instance_id == NULL || heartbeat_ms <= 0)
        return sonar__fail(SONAR_ERR_INVALID, "stored instance is invalid");
    int64_t age = wall_ms - seen_wall_ms;
    if (age < 0)
        age = 0;
    if (age > SONARD_MISSED_HEARTBEATS * heartbeat_ms)
        return SONAR_OK; /* expired while we were away */
    sonar_status st = SONAR_OK;
    pthread_mutex_lock(&reg->mu);
    service *s = find(reg, name);
    instance *in = NULL;
    if (s != NULL && find_instance(s, instance_id) == NULL) {
        in = add_instance(s, instance_id);
        if (in == NULL || !set_str(&in->version, version ? version : "") ||
            !set_str(&in->address, address ? address : "")) {
            st = sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
            goto out;
        }
        in->heartbeat_ms = heartbeat_ms;
        in->seen_ms = now_ms - age;
        in->seen_wall = seen_wall_ms;
        summarize(reg, s->name);
    }
out:
    pthread_mutex_unlock(&reg->mu);
    return st;
}

void sonar_expected_finish(sonar_expected *e)
{
    free_strv(e->live, e->n_live);
    free_strv(e->down, e->n_down);
    memset(e, 0, sizeof *e);
}

static bool depends_on(const service *s, const char *dep)
{
    for (size_t i = 0; i < s->n_deps; i++)
        if (strcmp(s->deps[i], dep) == 0)
            return true;
    return false;
}

sonar_status sonar_registry_expected(sonar_registry *reg, const char *changed, int64_t now_ms,
                                     sonar_expected *out)
{
    sonar_expected e = {0};
    sonar_status st = SONAR_OK;
    pthread_mutex_lock(&reg->mu);
    e.live = calloc(reg->n ? reg->n : 1, sizeof *e.live);
    e.down = calloc(reg->n ? reg->n : 1, sizeof *e.down);
    if (e.live == NULL || e.down == NULL)
        goto oom;
    uint64_t bit = bloom_bit(changed);
    for (size_t i = 0; i < reg->n; i++) {
        /* A service that answers no checks (gateway, collectors) is never waited for. */
        if (reg->sum[i].silent)
            continue;
        /* Live iff some instance's seen + 3 heartbeats is still ahead (see summarize). */
        if (reg->sum[i].live_until >= now_ms) {
            if ((e.live[e.n_live] = strdup(reg->svcs[i]->name)) == NULL)
                goto oom;
            e.n_live++;
        } else if ((reg->sum[i].deps_bloom & bit) && depends_on(reg->svcs[i], changed)) {
            if ((e.down[e.n_down] = strdup(reg->svcs[i]->name)) == NULL)
                goto oom;
            e.n_down++;
        }
    }
    pthread_mutex_unlock(&reg->mu);
    *out = e;
    return st;
oom:
    pthread_mutex_unlock(&reg->mu);
    sonar_expected_finish(&e);
    return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
}

bool sonar_registry_known(sonar_registry *reg, const char *name)
{
    pthread_mutex_lock(&reg->mu);
    bool known = find(reg, name) != NULL;
    pthread_mutex_unlock(&reg->mu);
    return known;
}

bool sonar_registry_live(sonar_registry *reg, const char *name, int64_t now_ms)
{
    pthread_mutex_lock(&reg->mu);
    service *s = find(reg, name);
    if (s != NULL)
        prune(s, now_ms);
    bool live = s != NULL && s->n_inst > 0;
    pthread_mutex_unlock(&reg->mu);
    return live;
}

size_t sonar_registry_live_count(sonar_registry *reg, int64_t now_ms)
{
    pthread_mutex_lock(&reg->mu);
    size_t n = 0;
    for (size_t i = 0; i < reg->n; i++)
        n += reg->sum[i].live_until >= now_ms;
    pthread_mutex_unlock(&reg->mu);
    return n;
}

size_t sonar_registry_count(sonar_registry *reg)
{
    pthread_mutex_lock(&reg->mu);
    size_t n = reg->n;
    pthread_mutex_unlock(&reg->mu);
    return n;
}

static json_t *time_json(int64_t wall_ms)
{
    char buf[40];
    sonar_format_rfc3339(wall_ms, buf, sizeof buf);
    return json_string(buf);
}

static json_t *strv_json(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *service_json(service *s)
{
    json_t *versions = json_array();
    json_t *instances = json_array();
    int64_t last = s->seen_wall;
    for (size_t i = 0; i < s->n_inst; i++) {
        const instance *in = &s->inst[i];
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = strcmp(s->inst[k].version, in->version) == 0;
        if (!seen)
            json_array_append_new(versions, json_string(in->version));
        if (in->seen_wall > last)
            last = in->seen_wall;
        json_array_append_new(instances,
            json_pack("{s:s, s:s, s:s, s:o, s:I}", "instance", in->id, "version", in->version,
                      "address", in->address ? in->address : "", "last_seen", time_json(in->seen_wall),
                      "heartbeat_ms", (json_int_t)in->heartbeat_ms));
    }
    if (s->n_inst == 0 && s->version != NULL && *s->version)
        json_array_append_new(versions, json_string(s->version));
    return json_pack("{s:s, s:b, s:o, s:o, s:o, s:O, s:o}", "service", s->name,
                     "live", s->n_inst > 0, "last_seen", time_json(last),
                     "versions", versions, "depends_on", strv_json(s->deps, s->n_deps),
                     "checks", s->checks, "instances", instances);
}

sonar_status sonar_registry_services_json(sonar_registry *reg, int64_t now_ms, json_t **out)
{
    json_t *list = json_array();
    bool ok = list != NULL;
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; ok && i < reg->n; i++) {
        prune(reg->svcs[i], now_ms);
        json_t *one = service_json(reg->svcs[i]);
        ok = one != NULL && json_array_append_new(list, one) == 0;
    }
    pthread_mutex_unlock(&reg->mu);
    json_t *doc = ok ? json_pack("{s:s, s:o}", "type", "sonar.services.v1", "services", list)
                     : (json_decref(list), NULL);
    if (doc == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
    *out = doc;
    return SONAR_OK;
}

sonar_status sonar_registry_graph_json(sonar_registry *reg, json_t **out)
{
    json_t *nodes = json_array();
    json_t *edges = json_array();
    json_t *seen = json_object();
    bool ok = nodes && edges && seen;
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; ok && i < reg->n; i++)
        json_object_set_new(seen, reg->svcs[i]->name, json_true());
    for (size_t i = 0; ok && i < reg->n; i++) {
        service *s = reg->svcs[i];
        for (size_t k = 0; k < s->n_deps; k++) {
            /* Dependencies nobody registered yet are nodes too. */
            json_object_set_new(seen, s->deps[k], json_true());
            json_t *names = json_object_get(s->checks, s->deps[k]);
            json_t *edge = json_pack("{s:s, s:s, s:o}", "from", s->name, "to", s->deps[k],
                                     "checks", names ? json_copy(names) : json_array());
            ok = edge != NULL && json_array_append_new(edges, edge) == 0;
        }
    }
    pthread_mutex_unlock(&reg->mu);
    const char *key;
    json_t *v;
    json_object_foreach(seen, key, v) {
        if (ok)
            ok = json_array_append_new(nodes, json_string(key)) == 0;
    }
    json_decref(seen);
    json_t *doc = ok ? json_pack("{s:s, s:o, s:o}", "type", "sonar.graph.v1", "nodes", nodes,
                                 "edges", edges)
                     : NULL;
    if (doc == NULL) {
        if (!ok) {
            json_decref(nodes);
            json_decref(edges);
        }
        return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
    }
    *out = doc;
    return SONAR_OK;
}

sonar_status sonar_registry_info_json(const sonar_register_msg *msg, char **out_depends_on,
                                      char **out_checks)
{
    service tmp = {0};
    json_t *checks = checks_json(msg);
    if (checks == NULL || !set_deps(&tmp, msg)) {
        json_decref(checks);
        return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
    }
    json_t *deps = strv_json(tmp.deps, tmp.n_deps);
    free_strv(tmp.deps, tmp.n_deps);
    char *d = deps ? json_dumps(deps, JSON_COMPACT) : NULL;
    char *c = json_dumps(checks, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(deps);
    json_decref(checks);
    if (d == NULL || c == NULL) {
        free(d);
        free(c);
        return sonar__fail(SONAR_ERR_NOMEM, "registry: out of memory");
    }
    *out_depends_on = d;
    *out_checks = c;
    return SONAR_OK;
}
