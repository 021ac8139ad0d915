/* Health checks: classification, one HTTP check, threshold state machine. */
#include "sonar/health.h"

#include <ctype.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "sonar/http.h"
#include "sonar/util.h"

/* Longest URL accepted for a target. */
#define URL_MAX 2048

const char *sonar_health_status_str(sonar_health_status status)
{
    switch (status) {
    case SONAR_HEALTH_PASSING: return "passing";
    case SONAR_HEALTH_WARNING: return "warning";
    case SONAR_HEALTH_CRITICAL: return "critical";
    case SONAR_HEALTH_UNKNOWN: break;
    }
    return "unknown";
}

sonar_status sonar_health_status_parse(const char *text, sonar_health_status *out)
{
    static const sonar_health_status all[] = {SONAR_HEALTH_UNKNOWN, SONAR_HEALTH_PASSING,
                                              SONAR_HEALTH_WARNING, SONAR_HEALTH_CRITICAL};
    for (size_t i = 0; text != NULL && i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(text, sonar_health_status_str(all[i])) == 0) {
            *out = all[i];
            return SONAR_OK;
        }
    }
    return sonar__fail(SONAR_ERR_INVALID,
                       "health status \"%.40s\" is not unknown, passing, warning or critical",
                       text != NULL ? text : "(null)");
}

/* ---- classification ---- */

/* Appends to a fixed buffer, truncating with "..." when full. */
static void append(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t n = strlen(buf);
    if (n + 1 >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
    if (w >= 0 && (size_t)w >= cap - n && cap > 4)
        memcpy(buf + cap - 4, "...", 4);
}

/* Maps a health-check format status word; UNKNOWN when unrecognised. */
static sonar_health_status status_word(const char *s)
{
    if (s == NULL)
        return SONAR_HEALTH_UNKNOWN;
    if (strcasecmp(s, "pass") == 0 || strcasecmp(s, "ok") == 0 || strcasecmp(s, "up") == 0)
        return SONAR_HEALTH_PASSING;
    if (strcasecmp(s, "warn") == 0)
        return SONAR_HEALTH_WARNING;
    if (strcasecmp(s, "fail") == 0 || strcasecmp(s, "error") == 0 ||
        strcasecmp(s, "down") == 0)
        return SONAR_HEALTH_CRITICAL;
    return SONAR_HEALTH_UNKNOWN;
}

/* Appends "name: status (output)" for one entry of "checks" that is not passing. */
static void describe_check(char *err, size_t cap, const char *name, json_t *item, bool *first)
{
    if (!json_is_object(item))
        return;
    const char *st = json_string_value(json_object_get(item, "status"));
    if (status_word(st) == SONAR_HEALTH_PASSING)
        return;
    const char *output = json_string_value(json_object_get(item, "output"));
    append(err, cap, "%s%.80s: %.16s", *first ? "" : "; ", name, st != NULL ? st : "?");
    if (output != NULL && output[0] != '\0')
        append(err, cap, " (%.160s)", output);
    *first = false;
}

void sonar_health_classify(long http_code, const char *body, size_t body_len,
                           sonar_health_result *out)
{
    bool ok_code = http_code >= 200 && http_code <= 299;
    out->status = ok_code ? SONAR_HEALTH_PASSING : SONAR_HEALTH_CRITICAL;
    out->error[0] = '\0';
    if (!ok_code)
        append(out->error, sizeof out->error, "HTTP %ld", http_code);

    size_t i = 0;
    while (body != NULL && i < body_len && isspace((unsigned char)body[i]))
        i++;
    if (body == NULL || i == body_len || body[i] != '{')
        return;
    json_t *doc = json_loadb(body, body_len, 0, NULL);
    const char *word = json_string_value(json_object_get(doc, "status"));
    if (word == NULL) {
        json_decref(doc); /* JSON without a status: the HTTP code decides */
        return;
    }
    sonar_health_status st = status_word(word);
    if (ok_code)
        out->status = st == SONAR_HEALTH_UNKNOWN ? SONAR_HEALTH_WARNING : st;
    if (st == SONAR_HEALTH_UNKNOWN)
        append(out->error, sizeof out->error, "%sunknown health status \"%.40s\"",
               ok_code ? "" : "; ", word);
    else if (st != SONAR_HEALTH_PASSING)
        append(out->error, sizeof out->error, "%shealth status \"%.16s\"",
               ok_code ? "" : "; ", word);
    if (st != SONAR_HEALTH_PASSING) {
        const char *output = json_string_value(json_object_get(doc, "output"));
        if (output != NULL && output[0] != '\0')
            append(out->error, sizeof out->error, ": %.200s", output);
        json_t *checks = json_object_get(doc, "checks");
        const char *name;
        json_t *val;
        bool first = true;
        if (json_is_object(checks)) {
            size_t before = strlen(out->error);
            append(out->error, sizeof out->error, "; checks: ");
            json_object_foreach(checks, name, val) {
                if (json_is_array(val)) {
                    size_t k;
                    json_t *item;
                    json_array_foreach(val, k, item)
                        describe_check(out->error, sizeof out->error, name, item, &first);
                } else {
                    describe_check(out->error, sizeof out->error, name, val, &first);
                }
            }
            if (first)
                out->error[before] = '\0'; /* no failing check named */
        }
    }
    json_decref(doc);
}

/* ---- one HTTP check ---- */

static sonar_status check_url(const char *url)
{
    if (url == NULL || url[0] == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "health target URL is missing");
    size_t n = strnlen(url, URL_MAX + 1);
    if (n > URL_MAX)
        return sonar__fail(SONAR_ERR_INVALID, "health target URL longer than %d bytes",
                           URL_MAX);
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return sonar__fail(SONAR_ERR_INVALID,
                           "health target URL \"%.100s\" is not http:// or https://", url);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f)
            return sonar__fail(SONAR_ERR_INVALID,
                               "health target URL \"%.100s\" contains a space or control "
                               "character", url);
    return SONAR_OK;
}

sonar_status sonar_health_check_http(const char *url, int64_t timeout_ms,
                                     sonar_health_result *out)
{
    sonar_status st = check_url(url);
    if (st != SONAR_OK)
        return st;
    if (out == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_health_check_http: missing result");
    if (timeout_ms < 0)
        return sonar__fail(SONAR_ERR_INVALID, "health check timeout %lld ms is negative",
                           (long long)timeout_ms);
    if (timeout_ms == 0)
        timeout_ms = SONAR_HEALTH_DEFAULT_TIMEOUT_MS;
    sonar_http_request req = {.method = "GET", .url = url, .timeout_ms = timeout_ms};
    sonar_http_response resp = {0};
    sonar_health_result r = {.checked_at_ms = sonar_wall_ms()};
    int64_t t0 = sonar_now_ms();
    st = sonar_http_perform(&req, &resp);
    r.duration_ms = sonar_now_ms() - t0;
    switch (st) {
    case SONAR_OK:
        r.http_code = resp.status;
        sonar_health_classify(resp.status, resp.body, resp.body_len, &r);
        sonar_http_response_finish(&resp);
        break;
    case SONAR_ERR_TIMEOUT:
    case SONAR_ERR_HTTP:
    case SONAR_ERR_LIMIT:
        /* The target failed the check: a result, not a failure of ours. */
        r.status = SONAR_HEALTH_CRITICAL;
        snprintf(r.error, sizeof r.error, "%s", sonar_last_error());
        break;
    default:
        return st;
    }
    *out = r;
    return SONAR_OK;
}

size_t sonar_health_result_samples(const sonar_health_result *result,
                                   sonar_health_sample out[SONAR_HEALTH_N_SAMPLES])
{
    size_t n = 0;
    out[n++] = (sonar_health_sample){"probe_success",
                                     result->status == SONAR_HEALTH_CRITICAL ? 0.0 : 1.0};
    out[n++] = (sonar_health_sample){"probe_duration_seconds",
                                     (double)result->duration_ms / 1000.0};
    if (result->http_code > 0)
        out[n++] = (sonar_health_sample){"probe_http_status_code", (double)result->http_code};
    return n;
}

/* ---- threshold state machine ---- */

static sonar_status resolve_thresholds(const sonar_health_thresholds *t, int *failures,
                                       int *successes)
{
    int f = t != NULL ? t->failure_threshold : 0;
    int s = t != NULL ? t->success_threshold : 0;
    if (f < 0 || s < 0 || f > SONAR_HEALTH_MAX_THRESHOLD || s > SONAR_HEALTH_MAX_THRESHOLD)
        return sonar__fail(SONAR_ERR_INVALID,
                           "health thresholds must be from 1 to %d (0 for the default); "
                           "got failures %d, successes %d",
                           SONAR_HEALTH_MAX_THRESHOLD, f, s);
    *failures = f != 0 ? f : SONAR_HEALTH_DEFAULT_FAILURES;
    *successes = s != 0 ? s : SONAR_HEALTH_DEFAULT_SUCCESSES;
    return SONAR_OK;
}

sonar_status sonar_health_state_init(sonar_health_state *state,
                                     const sonar_health_thresholds *thresholds)
{
    int f = 0, s = 0;
    if (state == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_health_state_init: missing state");
    sonar_status st = resolve_thresholds(thresholds, &f, &s);
    if (st != SONAR_OK)
        return st;
    *state = (sonar_health_state){.status = SONAR_HEALTH_UNKNOWN, .failure_threshold = f,
                                  .success_threshold = s};
    return SONAR_OK;
}

bool sonar_health_state_apply(sonar_health_state *state, sonar_health_status observed,
                              sonar_health_transition *out)
{
    if (observed == SONAR_HEALTH_UNKNOWN)
        return false;
    state->observations++;
    sonar_health_status next = state->status;
    int streak;
    if (observed == SONAR_HEALTH_CRITICAL) {
        state->consecutive_successes = 0;
        if (state->consecutive_failures < SONAR_HEALTH_MAX_THRESHOLD)
            state->consecutive_failures++;
        streak = state->consecutive_failures;
        if (streak >= state->failure_threshold)
            next = SONAR_HEALTH_CRITICAL;
    } else {
        state->consecutive_failures = 0;
        if (state->consecutive_successes < SONAR_HEALTH_MAX_THRESHOLD)
            state->consecutive_successes++;
        streak = state->consecutive_successes;
        bool guarded = state->status == SONAR_HEALTH_CRITICAL ||
                       state->status == SONAR_HEALTH_UNKNOWN;
        if (!guarded || streak >= state->success_threshold)
            next = observed;
    }
    if (next == state->status)
        return false;
    if (out != NULL)
        *out = (sonar_health_transition){.from = state->status, .to = next, .streak = streak};
    state->status = next;
    return true;
}

/* ---- checker ---- */

struct sonar_health_checker {
    char *url;
    int64_t timeout_ms;
    sonar_health_state state;
};

sonar_status sonar_health_checker_create(sonar_health_checker **out,
                                         const sonar_health_target *target)
{
    if (out == NULL || target == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_health_checker_create: missing %s",
                           out == NULL ? "out" : "target");
    sonar_status st = check_url(target->url);
    if (st != SONAR_OK)
        return st;
    if (target->timeout_ms < 0)
        return sonar__fail(SONAR_ERR_INVALID, "health check timeout %lld ms is negative",
                           (long long)target->timeout_ms);
    sonar_health_state state;
    st = sonar_health_state_init(&state, &target->thresholds);
    if (st != SONAR_OK)
        return st;
    sonar_health_checker *c = calloc(1, sizeof *c);
    if (c == NULL || (c->url = sonar__strdup(target->url)) == NULL) {
        free(c);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    c->timeout_ms = target->timeout_ms != 0 ? target->timeout_ms
                                            : SONAR_HEALTH_DEFAULT_TIMEOUT_MS;
    c->state = state;
    *out = c;
    return SONAR_OK;
}

void sonar_health_checker_destroy(sonar_health_checker *checker)
{
    if (checker == NULL)
        return;
    free(checker->url);
    free(checker);
}

sonar_status sonar_health_checker_run(sonar_health_checker *checker,
                                      sonar_health_result *result,
                                      sonar_health_transition *transition, bool *changed)
{
    if (checker == NULL || result == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_health_checker_run: missing %s",
                           checker == NULL ? "checker" : "result");
    sonar_health_result r;
    sonar_status st = sonar_health_check_http(checker->url, checker->timeout_ms, &r);
    if (st != SONAR_OK)
        return st;
    bool ch = sonar_health_state_apply(&checker->state, r.status, transition);
    if (changed != NULL)
        *changed = ch;
    *result = r;
    return SONAR_OK;
}

const sonar_health_state *sonar_health_checker_state(const sonar_health_checker *checker)
{
    return checker != NULL ? &checker->state : NULL;
}

const char *sonar_health_checker_url(const sonar_health_checker *checker)
{
    return checker != NULL ? checker->url : NULL;
}
