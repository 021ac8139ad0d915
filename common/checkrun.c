/*
 * Check tables: running one case against a candidate. The table was
 * validated at load (checktable.c), so this file trusts the shape of the
 * JSON and only meets the failures a run can have: the candidate's answers,
 * variables without values, the deadline.
 */
#include "sonar/checktable.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sonar/http.h"
#include "sonar/util.h"
#include "checktable_internal.h"
#include "internal.h"

/* A step's cap when neither the step nor the run sets a deadline. */
#define DEFAULT_STEP_TIMEOUT_MS 30000
/* Teardown may run this long past the case's deadline, to clean up. */
#define TEARDOWN_GRACE_MS 1000
/* How much of a body a failure message quotes. */
#define SNIPPET_BYTES 80

typedef struct run {
    const sonar_checkcase *c;
    const sonar_checkrun_target *tgt;
    json_t *vars;
    int64_t start, deadline;
    char label[512];
    sonar_checkrun_result *out;
    bool failed;
} run;

/*
 * Makes a message one line of valid UTF-8 in place (it goes into JSON
 * results, TAP and XML): control characters become spaces, bytes that are
 * not part of a UTF-8 sequence (e.g. a body snippet cut mid-character)
 * become '?'.
 */
static void one_utf8_line(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = n > 0;
        for (size_t k = 1; k < n && ok; k++)
            ok = (p[k] & 0xC0) == 0x80;
        if (!ok) {
            *p++ = '?';
            continue;
        }
        if (n == 1 && (c < 0x20 || c == 0x7f))
            *p = ' ';
        p += n;
    }
}

/* Records the first failure as "<label>: <reason>"; returns false. */
static bool failf(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool failf(run *r, const char *fmt, ...)
{
    if (r->failed)
        return false;
    r->failed = true;
    char reason[SONAR_CHECKRUN_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (snprintf(r->out->message, sizeof r->out->message, "%s: %s", r->label, reason) < 0)
        r->out->message[0] = '\0';
    one_utf8_line(r->out->message);
    return false;
}

/* ---- Variables and templates ------------------------------------------- */

/* New text for a JSON value: strings as they are, the rest as compact JSON. */
static char *value_text(json_t *v)
{
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_real(v)) {
        double d = json_real_value(v);
        char buf[64];
        if (d == floor(d) && fabs(d) < 1e15)
            snprintf(buf, sizeof buf, "%.0f", d);
        else
            snprintf(buf, sizeof buf, "%.17g", d);
        return strdup(buf);
    }
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Quoted, shortened text of a value for messages (into buf). */
static const char *shown(json_t *v, char *buf, size_t len)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text == NULL)
        snprintf(buf, len, "?");
    else if (strlen(text) > SNIPPET_BYTES)
        snprintf(buf, len, "%.*s...", SNIPPET_BYTES, text);
    else
        snprintf(buf, len, "%s", text);
    free(text);
    return buf;
}

/* The value of a template (new reference), or NULL with the reason in err. */
static json_t *resolve(run *r, const sonar__tmpl_expr *e, char *err, size_t errlen)
{
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)e->name_len, e->name);
    if (e->env) {
        const char *val = getenv(name);
        if (val == NULL) {
            snprintf(err, errlen, "environment variable %s is not set", name);
            return NULL;
        }
        return json_string(val);
    }
    json_t *val = json_object_get(r->vars, name);
    if (val == NULL) {
        snprintf(err, errlen, "variable \"%s\" has no value (the step capturing it did not run)",
                 name);
        return NULL;
    }
    if (e->add == 0)
        return json_incref(val);
    if (json_is_integer(val))
        return json_integer(json_integer_value(val) + e->add);
    if (json_is_real(val))
        return json_real(json_real_value(val) + (double)e->add);
    char buf[128];
    snprintf(err, errlen, "{{%s%+" PRId64 "}}: %s is %s, not a number", name, e->add, name,
             shown(val, buf, sizeof buf));
    return NULL;
}

/* New string with every template replaced by its value's text, or NULL (err). */
static char *expand_text(run *r, const char *s, char *err, size_t errlen)
{
    size_t cap = strlen(s) + 64, len = 0, pos = 0, start, end;
    char *out = malloc(cap);
    if (out == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sonar__tmpl_expr e;
    for (;;) {
        int rc = sonar__tmpl_next(s, pos, &start, &end, &e, err, errlen);
        size_t lit = rc == 1 ? start - pos : strlen(s + pos);
        char *val_text = NULL;
        if (rc == 1) {
            json_t *val = resolve(r, &e, err, errlen);
            if (val == NULL) {
                free(out);
                return NULL;
            }
            val_text = value_text(val);
            json_decref(val);
            if (val_text == NULL) {
                free(out);
                snprintf(err, errlen, "out of memory");
                return NULL;
            }
        }
        size_t need = len + lit + (val_text ? strlen(val_text) : 0) + 1;
        if (need > cap) {
            cap = need * 2;
            char *grown = realloc(out, cap);
            if (grown == NULL) {
                free(out);
                free(val_text);
                snprintf(err, errlen, "out of memory");
                return NULL;
            }
            out = grown;
        }
        memcpy(out + len, s + pos, lit);
        len += lit;
        if (val_text) {
            memcpy(out + len, val_text, strlen(val_text));
            len += strlen(val_text);
            free(val_text);
        }
        out[len] = '\0';
        if (rc != 1)
            return rc < 0 ? (free(out), NULL) : out;
        pos = end;
    }
}

/*
 * New JSON with templates expanded. A string that is exactly one template
 * becomes the variable's value with its type ("{{stock}}" -> 7); other
 * strings get text substitution.
 */
static json_t *expand_json(run *r, json_t *t, char *err, size_t errlen)
{
    if (json_is_string(t)) {
        const char *s = json_string_value(t);
        size_t start, end;
        sonar__tmpl_expr e;
        int rc = sonar__tmpl_next(s, 0, &start, &end, &e, err, errlen);
        if (rc < 0)
            return NULL;
        if (rc == 0)
            return json_incref(t);
        if (start == 0 && end == strlen(s))
            return resolve(r, &e, err, errlen);
        char *text = expand_text(r, s, err, errlen);
        json_t *out = text ? json_string(text) : NULL;
        free(text);
        return out;
    }
    if (json_is_array(t)) {
        json_t *out = json_array();
        size_t i;
        json_t *item;
        json_array_foreach(t, i, item) {
            json_t *x = expand_json(r, item, err, errlen);
            if (x == NULL || json_array_append_new(out, x) != 0) {
                json_decref(out);
                return NULL;
            }
        }
        return out;
    }
    if (json_is_object(t)) {
        json_t *out = json_object();
        const char *k;
        json_t *item;
        json_object_foreach(t, k, item) {
            json_t *x = expand_json(r, item, err, errlen);
            if (x == NULL || json_object_set_new(out, k, x) != 0) {
                json_decref(out);
                return NULL;
            }
        }
        return out;
    }
    return json_incref(t);
}

/* A number field that may be a template; false with err when it does not resolve to one. */
static bool number_of(run *r, json_t *field, double *out, char *err, size_t errlen)
{
    json_t *v = expand_json(r, field, err, errlen);
    if (v == NULL)
        return false;
    bool ok = json_is_number(v);
    if (ok)
        *out = json_number_value(v);
    else {
        char buf[128];
        snprintf(err, errlen, "%s is not a number", shown(v, buf, sizeof buf));
    }
    json_decref(v);
    return ok;
}

/* ---- Requests ----------------------------------------------------------- */

/* Appends s to the growing buffer, percent-encoding it when `encode`. */
static void append(char **buf, size_t *len, size_t *cap, const char *s, bool encode)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*len + 4 > *cap) {
            *cap = (*cap + 4) * 2;
            char *grown = realloc(*buf, *cap);
            if (grown == NULL)
                abort(); /* tiny strings; out of memory here is not recoverable */
            *buf = grown;
        }
        if (!encode || isalnum(*p) || strchr("-._~", *p)) {
            (*buf)[(*len)++] = (char)*p;
        } else {
            (*buf)[(*len)++] = '%';
            (*buf)[(*len)++] = hex[*p >> 4];
            (*buf)[(*len)++] = hex[*p & 15];
        }
        (*buf)[*len] = '\0';
    }
}

/* New "path?k=v&..." with templates expanded and query values encoded. */
static char *build_target(run *r, json_t *http, char *err, size_t errlen)
{
    char *path = expand_text(r, json_string_value(json_object_get(http, "path")), err, errlen);
    json_t *query = json_object_get(http, "query");
    if (path == NULL || query == NULL)
        return path;
    size_t len = strlen(path), cap = len + 64;
    char *out = malloc(cap);
    if (out == NULL) {
        free(path);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(out, path, len + 1);
    char sep = strchr(path, '?') ? '&' : '?';
    free(path);
    const char *k;
    json_t *v;
    json_object_foreach(query, k, v) {
        char *val = json_is_string(v) ? expand_text(r, json_string_value(v), err, errlen)
                                      : value_text(v);
        if (val == NULL) {
            free(out);
            return NULL;
        }
        char sepstr[2] = {sep, '\0'};
        append(&out, &len, &cap, sepstr, false);
        append(&out, &len, &cap, k, true);
        append(&out, &len, &cap, "=", false);
        append(&out, &len, &cap, val, true);
        free(val);
        sep = '&';
    }
    return out;
}

/* Body of a request: "json" (compact) or the text field; *out new or NULL. */
static bool build_body(run *r, json_t *req, const char *text_key, char **out, bool *is_json,
                       char *err, size_t errlen)
{
    *out = NULL;
    *is_json = false;
    json_t *tmpl = json_object_get(req, "json");
    if (tmpl) {
        json_t *doc = expand_json(r, tmpl, err, errlen);
        if (doc == NULL)
            return false;
        *out = json_dumps(doc, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(doc);
        *is_json = true;
        return *out != NULL;
    }
    json_t *text = json_object_get(req, text_key);
    if (text == NULL)
        return true;
    *out = expand_text(r, json_string_value(text), err, errlen);
    return *out != NULL;
}

/* "Name: value" lines (new, NULL-terminated); adds a JSON content type when needed. */
static char **build_headers(run *r, json_t *map, bool json_body, char *err, size_t errlen)
{
    size_t n = map ? json_object_size(map) : 0;
    char **lines = calloc(n + 2, sizeof *lines);
    if (lines == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t i = 0;
    bool has_type = false;
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) {
        char *val = expand_text(r, json_string_value(v), err, errlen);
        if (val == NULL || asprintf(&lines[i], "%s: %s", k, val) < 0) {
            free(val);
            lines[i] = NULL;
            for (size_t j = 0; j < i; j++)
                free(lines[j]);
            free(lines);
            return NULL;
        }
        free(val);
        i++;
        has_type = has_type || strcasecmp(k, "Content-Type") == 0;
    }
    if (json_body && !has_type)
        lines[i++] = strdup("Content-Type: application/json");
    return lines;
}

static void free_lines(char **lines)
{
    for (size_t i = 0; lines && lines[i]; i++)
        free(lines[i]);
    free(lines);
}

/* Time this step may take: the step's cap, the run's deadline, or the default. */
static int64_t step_budget(run *r, json_t *step)
{
    json_t *t = json_object_get(step, "timeout_ms");
    int64_t budget = t ? json_integer_value(t) : 0;
    if (r->deadline > 0) {
        int64_t left = r->deadline - sonar_now_ms();
        if (budget == 0 || left < budget)
            budget = left;
    } else if (budget == 0) {
        budget = DEFAULT_STEP_TIMEOUT_MS;
    }
    return budget;
}

static bool do_http(run *r, json_t *step, json_t *http, const char *target,
                    sonar_http_response *resp)
{
    char err[512];
    if (r->tgt->address == NULL || r->tgt->address[0] == '\0')
        return failf(r, "no address for %s to send HTTP requests to", r->c->dependency);
    char *url = NULL, *body = NULL, **headers = NULL;
    bool is_json, ok = false;
    if (sonar_http_join(&url, r->tgt->address, target) != SONAR_OK) {
        failf(r, "%s", sonar_last_error());
        goto done;
    }
    if (!build_body(r, http, "body", &body, &is_json, err, sizeof err) ||
        (headers = build_headers(r, json_object_get(http, "headers"), is_json, err,
                                 sizeof err)) == NULL) {
        failf(r, "%s", err);
        goto done;
    }
    json_t *m = json_object_get(http, "method");
    int64_t budget = step_budget(r, step);
    if (budget <= 0) {
        failf(r, "not started: the deadline passed after %" PRId64 " ms",
              sonar_now_ms() - r->start);
        goto done;
    }
    sonar_http_request req = {
        .method = m ? json_string_value(m) : "GET",
        .url = url,
        .headers = (const char *const *)headers,
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .deadline_ms = r->deadline,
        .timeout_ms = budget,
    };
    int64_t t0 = sonar_now_ms();
    sonar_status st = sonar_http_perform(&req, resp);
    if (st == SONAR_ERR_TIMEOUT)
        failf(r, "timed out after %" PRId64 " ms", sonar_now_ms() - t0);
    else if (st != SONAR_OK)
        failf(r, "%s", sonar_last_error());
    else
        ok = true;
done:
    free(url);
    free(body);
    free_lines(headers);
    return ok;
}

/* Copies a NATS reply into the HTTP response shape so expectations are shared. */
static bool nats_reply_to_response(natsMsg *reply, sonar_http_response *resp)
{
    int len = natsMsg_GetDataLength(reply);
    resp->body = malloc((size_t)len + 1);
    if (resp->body == NULL)
        return false;
    if (len > 0)
        memcpy(resp->body, natsMsg_GetData(reply), (size_t)len);
    resp->body[len] = '\0';
    resp->body_len = (size_t)len;
    resp->status = 200;
    const char **keys = NULL;
    int n = 0;
    if (natsMsgHeader_Keys(reply, &keys, &n) == NATS_OK && n > 0) {
        resp->headers = calloc((size_t)n, sizeof *resp->headers);
        for (int i = 0; resp->headers && i < n; i++) {
            const char *val = NULL;
            natsMsgHeader_Get(reply, keys[i], &val);
            resp->headers[i].name = strdup(keys[i]);
            resp->headers[i].value = strdup(val ? val : "");
            resp->n_headers++;
        }
    }
    free((void *)keys);
    const char *code = sonar_http_response_header(resp, "Nats-Service-Error-Code");
    if (code != NULL && atol(code) > 0)
        resp->status = atol(code);
    return true;
}

static bool do_nats(run *r, json_t *step, json_t *nats, const char *subject,
                    sonar_http_response *resp)
{
    char err[512];
    if (r->tgt->nc == NULL)
        return failf(r, "no NATS connection for NATS steps");
    char *body = NULL;
    bool is_json, ok = false;
    natsMsg *msg = NULL, *reply = NULL;
    if (!build_body(r, nats, "payload", &body, &is_json, err, sizeof err)) {
        failf(r, "%s", err);
        goto done;
    }
    natsStatus s = natsMsg_Create(&msg, subject, NULL, body ? body : "",
                                  body ? (int)strlen(body) : 0);
    json_t *hdrs = json_object_get(nats, "headers");
    const char *k;
    json_t *v;
    json_object_foreach(hdrs, k, v) {
        char *val = expand_text(r, json_string_value(v), err, sizeof err);
        if (val == NULL) {
            failf(r, "%s", err);
            goto done;
        }
        if (s == NATS_OK)
            s = natsMsgHeader_Set(msg, k, val);
        free(val);
    }
    int64_t budget = step_budget(r, step);
    if (budget <= 0) {
        failf(r, "not started: the deadline passed after %" PRId64 " ms",
              sonar_now_ms() - r->start);
        goto done;
    }
    int64_t t0 = sonar_now_ms();
    if (s == NATS_OK)
        s = natsConnection_RequestMsg(&reply, r->tgt->nc, msg, budget);
    if (s == NATS_TIMEOUT)
        failf(r, "timed out after %" PRId64 " ms", sonar_now_ms() - t0);
    else if (s == NATS_NO_RESPONDERS)
        failf(r, "no responders on %s", subject);
    else if (s != NATS_OK)
        failf(r, "NATS request failed: %s", natsStatus_GetText(s));
    else if (!nats_reply_to_response(reply, resp))
        failf(r, "out of memory");
    else {
        resp->duration_ms = sonar_now_ms() - t0;
        ok = true;
    }
done:
    free(body);
    natsMsg_Destroy(msg);
    natsMsg_Destroy(reply);
    return ok;
}

/* ---- Expectations ------------------------------------------------------- */

static bool status_ok(json_t *exp, long status, char *want, size_t wantlen)
{
    if (exp == NULL) {
        snprintf(want, wantlen, "2xx");
        return status >= 200 && status <= 299;
    }
    if (json_is_integer(exp)) {
        snprintf(want, wantlen, "%" JSON_INTEGER_FORMAT, json_integer_value(exp));
        return status == json_integer_value(exp);
    }
    if (json_is_string(exp)) {
        const char *cls = json_string_value(exp);
        snprintf(want, wantlen, "%s", cls);
        return status / 100 == cls[0] - '0';
    }
    if (json_is_array(exp)) {
        size_t i, n = 0;
        json_t *c;
        bool hit = false;
        n += (size_t)snprintf(want, wantlen, "one of ");
        json_array_foreach(exp, i, c) {
            hit = hit || status == json_integer_value(c);
            if (n < wantlen)
                n += (size_t)snprintf(want + n, wantlen - n, "%s%" JSON_INTEGER_FORMAT,
                                      i ? ", " : "", json_integer_value(c));
        }
        return hit;
    }
    json_t *lo = json_object_get(exp, "min"), *hi = json_object_get(exp, "max");
    long min = lo ? (long)json_integer_value(lo) : 100, max = hi ? (long)json_integer_value(hi) : 599;
    snprintf(want, wantlen, "%ld-%ld", min, max);
    return status >= min && status <= max;
}

static bool regex_match(const char *re, const char *text)
{
    regex_t rx;
    if (regcomp(&rx, re, REG_EXTENDED | REG_NOSUB) != 0)
        return false; /* validated at load; cannot happen */
    bool hit = regexec(&rx, text, 0, NULL, 0) == 0;
    regfree(&rx);
    return hit;
}

/* Checks text against {"equals","contains","matches"} or a plain string; what names it. */
static bool text_ok(run *r, json_t *m, const char *text, const char *what)
{
    char err[512];
    char snippet[SNIPPET_BYTES + 8];
    snprintf(snippet, sizeof snippet, "%.*s%s", SNIPPET_BYTES, text,
             strlen(text) > SNIPPET_BYTES ? "..." : "");
    json_t *eq = json_is_string(m) ? m : json_object_get(m, "equals");
    json_t *has = json_object_get(m, "contains");
    json_t *re = json_object_get(m, "matches");
    if (eq) {
        char *want = expand_text(r, json_string_value(eq), err, sizeof err);
        if (want == NULL)
            return failf(r, "%s", err);
        bool same = strcmp(text, want) == 0;
        if (!same)
            failf(r, "%s is \"%s\", expected \"%s\"", what, snippet, want);
        free(want);
        if (!same)
            return false;
    }
    if (has) {
        char *want = expand_text(r, json_string_value(has), err, sizeof err);
        if (want == NULL)
            return failf(r, "%s", err);
        bool found = strstr(text, want) != NULL;
        if (!found)
            failf(r, "%s does not contain \"%s\" (%s: \"%s\")", what, want, what, snippet);
        free(want);
        if (!found)
            return false;
    }
    if (re && !regex_match(json_string_value(re), text))
        return failf(r, "%s does not match /%s/ (%s: \"%s\")", what, json_string_value(re),
                     what, snippet);
    return true;
}

static bool headers_ok(run *r, json_t *exp, const sonar_http_response *resp)
{
    const char *name;
    json_t *m;
    json_object_foreach(exp, name, m) {
        const char *val = sonar_http_response_header(resp, name);
        json_t *exists = json_object_get(m, "exists");
        if (exists && !json_is_true(exists)) {
            if (val)
                return failf(r, "header %s is present (\"%s\"), expected it absent", name, val);
            continue;
        }
        if (val == NULL)
            return failf(r, "header %s missing", name);
        char what[300];
        snprintf(what, sizeof what, "header %s", name);
        if (!text_ok(r, m, val, what))
            return false;
    }
    return true;
}

static bool numbers_equal(json_t *a, json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal(a, b);
}

static bool json_item_ok(run *r, json_t *item, json_t *doc)
{
    char err[512], buf[SNIPPET_BYTES + 8], buf2[SNIPPET_BYTES + 8];
    const char *path = json_string_value(json_object_get(item, "path"));
    json_t *val = sonar__jsonpath_get(doc, path);
    json_t *exists = json_object_get(item, "exists");
    if (exists && json_is_false(exists))
        return val == NULL ? true
                           : failf(r, "%s is %s, expected it absent", path,
                                   shown(val, buf, sizeof buf));
    if (val == NULL)
        return failf(r, "%s missing", path);

    json_t *eq = json_object_get(item, "equals");
    if (eq) {
        json_t *want = expand_json(r, eq, err, sizeof err);
        if (want == NULL)
            return failf(r, "%s", err);
        bool same = numbers_equal(val, want);
        if (!same)
            failf(r, "%s is %s, expected %s", path, shown(val, buf, sizeof buf),
                  shown(want, buf2, sizeof buf2));
        json_decref(want);
        if (!same)
            return false;
    }
    json_t *type = json_object_get(item, "type");
    if (type) {
        const char *t = json_string_value(type);
        bool ok = strcmp(t, "number") == 0 ? json_is_number(val)
                  : strcmp(t, "integer") == 0
                      ? json_is_integer(val) ||
                            (json_is_real(val) && json_real_value(val) == floor(json_real_value(val)))
                      : strcmp(t, sonar__json_type_name(val)) == 0;
        if (!ok)
            return failf(r, "%s is %s %s, expected %s", path,
                         json_is_integer(val) || json_is_array(val) || json_is_object(val) ? "an" : "a",
                         json_is_integer(val) ? "integer" : sonar__json_type_name(val), t);
    }
    json_t *length = json_object_get(item, "length");
    if (length) {
        double want;
        if (!number_of(r, length, &want, err, sizeof err))
            return failf(r, "%s length: %s", path, err);
        size_t have;
        if (json_is_string(val))
            have = json_string_length(val);
        else if (json_is_array(val))
            have = json_array_size(val);
        else if (json_is_object(val))
            have = json_object_size(val);
        else
            return failf(r, "%s is %s, which has no length", path, shown(val, buf, sizeof buf));
        if ((double)have != want)
            return failf(r, "%s has length %zu, expected %.0f", path, have, want);
    }
    json_t *re = json_object_get(item, "matches");
    if (re) {
        if (!json_is_string(val))
            return failf(r, "%s is %s, not a string to match /%s/", path,
                         shown(val, buf, sizeof buf), json_string_value(re));
        if (!regex_match(json_string_value(re), json_string_value(val)))
            return failf(r, "%s is %s, which does not match /%s/", path,
                         shown(val, buf, sizeof buf), json_string_value(re));
    }
    static const char *const ops[] = {"gt", "ge", "lt", "le"};
    static const char *const signs[] = {">", ">=", "<", "<="};
    for (size_t i = 0; i < 4; i++) {
        json_t *bound = json_object_get(item, ops[i]);
        if (bound == NULL)
            continue;
        double want;
        if (!number_of(r, bound, &want, err, sizeof err))
            return failf(r, "%s %s: %s", path, signs[i], err);
        if (!json_is_number(val))
            return failf(r, "%s is %s, expected a number %s %g", path,
                         shown(val, buf, sizeof buf), signs[i], want);
        double have = json_number_value(val);
        bool ok = i == 0 ? have > want : i == 1 ? have >= want : i == 2 ? have < want : have <= want;
        if (!ok)
            return failf(r, "%s is %s, expected %s %g", path, shown(val, buf, sizeof buf),
                         signs[i], want);
    }
    return true;
}

/* Parses the body as JSON once per step (*doc new). */
static bool body_json(run *r, const sonar_http_response *resp, json_t **doc)
{
    if (*doc)
        return true;
    json_error_t jerr;
    *doc = json_loadb(resp->body, resp->body_len, JSON_DECODE_ANY, &jerr);
    if (*doc == NULL)
        return failf(r, "body is not JSON (%d:%d: %s)", jerr.line, jerr.column, jerr.text);
    return true;
}

static bool expectations_ok(run *r, json_t *exp, const sonar_http_response *resp, json_t **doc,
                            bool is_nats)
{
    char want[256];
    if (!status_ok(json_object_get(exp, "status"), resp->status, want, sizeof want)) {
        const char *why = is_nats ? sonar_http_response_header(resp, "Nats-Service-Error") : NULL;
        if (why)
            return failf(r, "status %ld (%s), expected %s", resp->status, why, want);
        return failf(r, "status %ld, expected %s", resp->status, want);
    }
    json_t *x;
    if ((x = json_object_get(exp, "headers")) && !headers_ok(r, x, resp))
        return false;
    if ((x = json_object_get(exp, "body")) && !text_ok(r, x, resp->body, "body"))
        return false;
    if ((x = json_object_get(exp, "json"))) {
        if (!body_json(r, resp, doc))
            return false;
        size_t i;
        json_t *item;
        json_array_foreach(x, i, item)
            if (!json_item_ok(r, item, *doc))
                return false;
    }
    if ((x = json_object_get(exp, "latency_ms")) && resp->duration_ms > json_integer_value(x))
        return failf(r, "took %" PRId64 " ms, limit %" JSON_INTEGER_FORMAT " ms",
                     resp->duration_ms, json_integer_value(x));
    return true;
}

static bool captures_ok(run *r, json_t *cap, const sonar_http_response *resp, json_t **doc)
{
    const char *name;
    json_t *src;
    json_object_foreach(cap, name, src) {
        json_t *header = json_object_get(src, "header");
        json_t *val;
        if (header) {
            const char *h = sonar_http_response_header(resp, json_string_value(header));
            if (h == NULL)
                return failf(r, "capture %s: header %s missing", name, json_string_value(header));
            val = json_string(h);
        } else {
            const char *path = json_is_string(src) ? json_string_value(src)
                                                   : json_string_value(json_object_get(src, "json"));
            if (!body_json(r, resp, doc))
                return false;
            val = json_incref(sonar__jsonpath_get(*doc, path));
            if (val == NULL)
                return failf(r, "capture %s: %s not found in the body", name, path);
        }
        json_object_set_new(r->vars, name, val);
    }
    return true;
}

/* ---- Steps and cases ---------------------------------------------------- */

static bool run_step(run *r, json_t *step, const char *phase, size_t number)
{
    char err[512];
    json_t *http = json_object_get(step, "http");
    json_t *nats = json_object_get(step, "nats");
    char *target = NULL;
    char subject[1024];
    if (http) {
        json_t *m = json_object_get(http, "method");
        target = build_target(r, http, err, sizeof err);
        snprintf(r->label, sizeof r->label, "%s %zu %s %s", phase, number,
                 m ? json_string_value(m) : "GET", target ? target : "?");
    } else {
        target = expand_text(r, json_string_value(json_object_get(nats, "subject")), err,
                             sizeof err);
        const char *prefix = r->tgt->subject_prefix ? r->tgt->subject_prefix : r->c->dependency;
        snprintf(subject, sizeof subject, "%s%s%s", prefix, prefix[0] ? "." : "",
                 target ? target : "?");
        if (snprintf(r->label, sizeof r->label, "%s %zu NATS %s", phase, number, subject) < 0)
            r->label[0] = '\0';
    }
    if (target == NULL)
        return failf(r, "%s", err);
    if (r->deadline > 0 && sonar_now_ms() >= r->deadline) {
        free(target);
        return failf(r, "not started: the deadline passed after %" PRId64 " ms",
                     sonar_now_ms() - r->start);
    }

    sonar_http_response resp = {0};
    json_t *doc = NULL;
    bool ok = http ? do_http(r, step, http, target, &resp) : do_nats(r, step, nats, subject, &resp);
    json_t *exp = json_object_get(step, "expect");
    json_t *empty = NULL;
    if (ok && exp == NULL)
        exp = empty = json_object();
    if (ok)
        ok = expectations_ok(r, exp, &resp, &doc, nats != NULL);
    json_t *cap = json_object_get(step, "capture");
    if (ok && cap)
        ok = captures_ok(r, cap, &resp, &doc);
    json_decref(empty);
    json_decref(doc);
    sonar_http_response_finish(&resp);
    free(target);
    return ok;
}

static bool run_steps(run *r, const char *key, const char *phase)
{
    json_t *steps = json_object_get(r->c->json, key);
    size_t i;
    json_t *step;
    json_array_foreach(steps, i, step)
        if (!run_step(r, step, phase, i + 1))
            return false;
    return true;
}

static void merge_vars(json_t *into, json_t *from)
{
    if (from)
        json_object_update(into, from);
}

sonar_status sonar_checkrun_case(const sonar_checkcase *c, const sonar_checkrun_target *target,
                                 sonar_checkrun_result *out)
{
    if (c == NULL || target == NULL || out == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_checkrun_case needs a case, a target and a "
                           "result");
    sonar_checkrun_result res = {.passed = false};
    run r = {.c = c, .tgt = target, .out = &res, .start = sonar_now_ms()};
    r.deadline = target->deadline_ms;
    if (c->timeout_ms > 0 && (r.deadline == 0 || r.start + c->timeout_ms < r.deadline))
        r.deadline = r.start + c->timeout_ms;
    r.vars = json_object();
    if (r.vars == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    char run_id[23];
    sonar_random_id(run_id);
    for (char *p = run_id; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    json_object_set_new(r.vars, SONAR__RUN_ID_VAR, json_string(run_id));
    merge_vars(r.vars, c->table->vars);
    merge_vars(r.vars, json_object_get(c->json, "vars"));

    if (run_steps(&r, "setup", "setup"))
        run_steps(&r, "steps", "step");
    /* Teardown always runs, with a little time past the deadline to clean up. */
    if (json_object_get(c->json, "teardown")) {
        int64_t now = sonar_now_ms();
        if (r.deadline > 0 && r.deadline < now + TEARDOWN_GRACE_MS)
            r.deadline = now + TEARDOWN_GRACE_MS;
        run_steps(&r, "teardown", "teardown");
    }
    json_decref(r.vars);
    res.passed = !r.failed;
    res.duration_ms = sonar_now_ms() - r.start;
    *out = res;
    return SONAR_OK;
}
