/*
 * Check tables: loading and validation. A table that loads is one the
 * runner (checkrun.c) can run without meeting a malformed field: every
 * field, regular expression, JSON path and variable reference is checked
 * here, and errors name the file and the JSON path of the offending value.
 */
#include "sonar/checktable.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "sonar/protocol.h"
#include "sonar/util.h"
#include "checktable_internal.h"
#include "internal.h"

/* ---- Templates ---------------------------------------------------------- */

static bool ident_start(char c)
{
    return isalpha((unsigned char)c) || c == '_';
}

static bool ident_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

int sonar__tmpl_next(const char *s, size_t pos, size_t *start, size_t *end,
                     sonar__tmpl_expr *e, char *err, size_t errlen)
{
    const char *open = strstr(s + pos, "{{");
    if (open == NULL)
        return 0;
    const char *close = strstr(open + 2, "}}");
    if (close == NULL) {
        snprintf(err, errlen, "\"{{\" without a closing \"}}\"");
        return -1;
    }
    const char *p = open + 2;
    while (p < close && isspace((unsigned char)*p))
        p++;
    memset(e, 0, sizeof *e);
    if (close - p > 4 && strncmp(p, "env.", 4) == 0) {
        e->env = true;
        p += 4;
    }
    const char *name = p;
    if (p < close && ident_start(*p))
        while (p < close && (ident_char(*p)))
            p++;
    if (p == name) {
        snprintf(err, errlen, "template \"%.*s\" does not name a variable",
                 (int)(close + 2 - open), open);
        return -1;
    }
    e->name = name;
    e->name_len = (size_t)(p - name);
    while (p < close && isspace((unsigned char)*p))
        p++;
    if (p < close && (*p == '+' || *p == '-') && !e->env) {
        int sign = *p == '-' ? -1 : 1;
        p++;
        while (p < close && isspace((unsigned char)*p))
            p++;
        if (p == close || !isdigit((unsigned char)*p)) {
            snprintf(err, errlen, "template \"%.*s\": expected a whole number after the sign",
                     (int)(close + 2 - open), open);
            return -1;
        }
        int64_t n = 0;
        while (p < close && isdigit((unsigned char)*p) && n < INT64_MAX / 10 - 10)
            n = n * 10 + (*p++ - '0');
        e->add = sign * n;
        while (p < close && isspace((unsigned char)*p))
            p++;
    }
    if (p != close) {
        snprintf(err, errlen,
                 "template \"%.*s\" is not {{name}}, {{name+N}}, {{name-N}} or {{env.NAME}}",
                 (int)(close + 2 - open), open);
        return -1;
    }
    *start = (size_t)(open - s);
    *end = (size_t)(close + 2 - s);
    return 1;
}

/* ---- JSON paths --------------------------------------------------------- */

/* Walks path; with root NULL only checks syntax. Returns the value or NULL. */
static json_t *jsonpath_walk(json_t *root, const char *path, bool *ok, char *err, size_t errlen)
{
    *ok = false;
    if (path[0] != '$') {
        snprintf(err, errlen, "JSON path \"%s\" must start with \"$\"", path);
        return NULL;
    }
    json_t *cur = root;
    const char *p = path + 1;
    char key[512];
    while (*p) {
        if (*p == '.') {
            p++;
            size_t n = strcspn(p, ".[");
            if (n == 0 || n >= sizeof key) {
                snprintf(err, errlen, "JSON path \"%s\": empty or overlong name after \".\"", path);
                return NULL;
            }
            memcpy(key, p, n);
            key[n] = '\0';
            p += n;
            cur = cur ? (json_is_object(cur) ? json_object_get(cur, key) : NULL) : NULL;
        } else if (*p == '[' && (p[1] == '"' || p[1] == '\'')) {
            char quote = p[1];
            const char *q = strchr(p + 2, quote);
            if (q == NULL || q[1] != ']' || (size_t)(q - p - 2) >= sizeof key) {
                snprintf(err, errlen, "JSON path \"%s\": unterminated [\"name\"]", path);
                return NULL;
            }
            memcpy(key, p + 2, (size_t)(q - p - 2));
            key[q - p - 2] = '\0';
            p = q + 2;
            cur = cur ? (json_is_object(cur) ? json_object_get(cur, key) : NULL) : NULL;
        } else if (*p == '[') {
            char *endp;
            errno = 0;
            long long idx = strtoll(p + 1, &endp, 10);
            if (endp == p + 1 || *endp != ']' || errno != 0) {
                snprintf(err, errlen, "JSON path \"%s\": expected [index] or [\"name\"]", path);
                return NULL;
            }
            p = endp + 1;
            if (cur && json_is_array(cur)) {
                long long size = (long long)json_array_size(cur);
                if (idx < 0)
                    idx += size;
                cur = idx >= 0 && idx < size ? json_array_get(cur, (size_t)idx) : NULL;
            } else {
                cur = NULL;
            }
        } else {
            snprintf(err, errlen, "JSON path \"%s\": unexpected \"%c\" (use .name, [index] or "
                     "[\"name\"])", path, *p);
            return NULL;
        }
    }
    *ok = true;
    return cur;
}

bool sonar__jsonpath_valid(const char *path, char *err, size_t errlen)
{
    bool ok;
    jsonpath_walk(NULL, path, &ok, err, errlen);
    return ok;
}

json_t *sonar__jsonpath_get(json_t *root, const char *path)
{
    bool ok;
    char err[256];
    return jsonpath_walk(root, path, &ok, err, sizeof err);
}

const char *sonar__json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

/* ---- Validation --------------------------------------------------------- */

typedef struct validator {
    const char *source;
    char path[1024];
    size_t plen;
    json_t *defined;   /* variable names usable at this point: object name -> true */
    bool uses_nats;
} validator;

static sonar_status vfail(validator *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static sonar_status vfail(validator *v, const char *fmt, ...)
{
    char reason[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return sonar__fail(SONAR_ERR_INVALID, "%s: %s: %s", v->source, v->path, reason);
}

static size_t push_key(validator *v, const char *key)
{
    size_t mark = v->plen;
    bool plain = ident_start(key[0]);
    for (const char *k = key; *k && plain; k++)
        plain = ident_char(*k) || *k == '-';
    int n = plain ? snprintf(v->path + v->plen, sizeof v->path - v->plen, ".%s", key)
                  : snprintf(v->path + v->plen, sizeof v->path - v->plen, "[\"%s\"]", key);
    if (n > 0)
        v->plen = v->plen + (size_t)n < sizeof v->path ? v->plen + (size_t)n : sizeof v->path - 1;
    return mark;
}

static size_t push_index(validator *v, size_t i)
{
    size_t mark = v->plen;
    int n = snprintf(v->path + v->plen, sizeof v->path - v->plen, "[%zu]", i);
    if (n > 0)
        v->plen = v->plen + (size_t)n < sizeof v->path ? v->plen + (size_t)n : sizeof v->path - 1;
    return mark;
}

static void pop(validator *v, size_t mark)
{
    v->plen = mark;
    v->path[mark] = '\0';
}

/* Refuses fields not in `allowed` (NULL-terminated); "comment" is always allowed. */
static sonar_status check_keys(validator *v, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        bool known = strcmp(key, "comment") == 0;
        for (size_t i = 0; allowed[i] && !known; i++)
            known = strcmp(key, allowed[i]) == 0;
        if (!known) {
            char list[256] = "";
            for (size_t i = 0; allowed[i]; i++) {
                strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
                strncat(list, allowed[i], sizeof list - strlen(list) - 1);
            }
            return vfail(v, "unknown field \"%s\" (known: %s)", key, list);
        }
    }
    return SONAR_OK;
}

/* Checks the templates in s and that each names a defined variable. */
static sonar_status check_templates(validator *v, const char *s)
{
    size_t pos = 0, start, end;
    sonar__tmpl_expr e;
    char err[256];
    int rc;
    while ((rc = sonar__tmpl_next(s, pos, &start, &end, &e, err, sizeof err)) == 1) {
        if (!e.env) {
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)e.name_len, e.name);
            if (json_object_get(v->defined, name) == NULL)
                return vfail(v, "variable \"%s\" is not defined by vars or an earlier capture",
                             name);
        }
        pos = end;
    }
    return rc < 0 ? vfail(v, "%s", err) : SONAR_OK;
}

static sonar_status check_json_templates(validator *v, json_t *val)
{
    if (json_is_string(val))
        return check_templates(v, json_string_value(val));
    sonar_status st = SONAR_OK;
    if (json_is_array(val)) {
        size_t i;
        json_t *item;
        json_array_foreach(val, i, item) {
            size_t m = push_index(v, i);
            st = check_json_templates(v, item);
            if (st != SONAR_OK)
                return st;
            pop(v, m);
        }
    } else if (json_is_object(val)) {
        const char *k;
        json_t *item;
        json_object_foreach(val, k, item) {
            size_t m = push_key(v, k);
            st = check_json_templates(v, item);
            if (st != SONAR_OK)
                return st;
            pop(v, m);
        }
    }
    return st;
}

/* A string field: present (or optional), a string, templates checked when `templated`. */
static sonar_status field_string(validator *v, json_t *obj, const char *key, bool required,
                                 bool templated, const char **out)
{
    json_t *val = json_object_get(obj, key);
    if (out)
        *out = NULL;
    if (val == NULL)
        return required ? vfail(v, "missing required field \"%s\"", key) : SONAR_OK;
    size_t m = push_key(v, key);
    sonar_status st = SONAR_OK;
    if (!json_is_string(val))
        st = vfail(v, "must be a string, not %s", sonar__json_type_name(val));
    else if (json_string_length(val) > SONAR_MAX_MESSAGE_TEXT)
        st = vfail(v, "longer than %d bytes", SONAR_MAX_MESSAGE_TEXT);
    else if (templated)
        st = check_templates(v, json_string_value(val));
    if (st == SONAR_OK) {
        pop(v, m);
        if (out)
            *out = json_string_value(val);
    }
    return st;
}

static sonar_status field_positive_ms(validator *v, json_t *obj, const char *key, int64_t *out)
{
    json_t *val = json_object_get(obj, key);
    if (out)
        *out = 0;
    if (val == NULL)
        return SONAR_OK;
    size_t m = push_key(v, key);
    if (!json_is_integer(val) || json_integer_value(val) <= 0 ||
        json_integer_value(val) > SONAR_MAX_TIMEOUT_MS)
        return vfail(v, "must be a whole number of milliseconds from 1 to %d",
                     SONAR_MAX_TIMEOUT_MS);
    pop(v, m);
    if (out)
        *out = json_integer_value(val);
    return SONAR_OK;
}

static sonar_status check_regex(validator *v, json_t *obj, const char *key)
{
    const char *re;
    sonar_status st = field_string(v, obj, key, false, false, &re);
    if (st != SONAR_OK || re == NULL)
        return st;
    regex_t rx;
    int rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[256];
        regerror(rc, &rx, msg, sizeof msg);
        size_t m = push_key(v, key);
        st = vfail(v, "regular expression /%s/ does not compile: %s", re, msg);
        pop(v, m);
        return st;
    }
    regfree(&rx);
    return SONAR_OK;
}

/* An object whose values are strings (headers, query). */
static sonar_status field_string_map(validator *v, json_t *obj, const char *key,
                                     bool numbers_too)
{
    json_t *map = json_object_get(obj, key);
    if (map == NULL)
        return SONAR_OK;
    size_t m = push_key(v, key);
    if (!json_is_object(map))
        return vfail(v, "must be an object of names to strings");
    const char *k;
    json_t *val;
    json_object_foreach(map, k, val) {
        size_t m2 = push_key(v, k);
        if (k[0] == '\0' || strpbrk(k, ":\r\n \t") != NULL)
            return vfail(v, "\"%s\" is not a valid name", k);
        if (!json_is_string(val) && !(numbers_too && json_is_number(val)))
            return vfail(v, "must be a string%s", numbers_too ? " or a number" : "");
        if (json_is_string(val)) {
            if (strpbrk(json_string_value(val), "\r\n") != NULL)
                return vfail(v, "must not contain line breaks");
            sonar_status st = check_templates(v, json_string_value(val));
            if (st != SONAR_OK)
                return st;
        }
        pop(v, m2);
    }
    pop(v, m);
    return SONAR_OK;
}

static sonar_status check_body_source(validator *v, json_t *obj, const char *text_key)
{
    json_t *json = json_object_get(obj, "json");
    if (json && json_object_get(obj, text_key))
        return vfail(v, "give either \"json\" or \"%s\", not both", text_key);
    if (json) {
        size_t m = push_key(v, "json");
        sonar_status st = check_json_templates(v, json);
        if (st != SONAR_OK)
            return st;
        pop(v, m);
    }
    return field_string(v, obj, text_key, false, true, NULL);
}

static const char *const http_methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                           "OPTIONS", NULL};

static sonar_status check_http(validator *v, json_t *http)
{
    static const char *const keys[] = {"method", "path", "query", "headers", "json", "body",
                                       NULL};
    if (!json_is_object(http))
        return vfail(v, "must be an object with at least \"path\"");
    sonar_status st = check_keys(v, http, keys);
    const char *method = NULL, *path = NULL;
    if (st == SONAR_OK)
        st = field_string(v, http, "method", false, false, &method);
    if (st == SONAR_OK && method) {
        bool known = false;
        for (size_t i = 0; http_methods[i] && !known; i++)
            known = strcmp(method, http_methods[i]) == 0;
        if (!known) {
            size_t m = push_key(v, "method");
            st = vfail(v, "unknown method \"%s\" (use GET, HEAD, POST, PUT, PATCH, DELETE or "
                       "OPTIONS)", method);
            pop(v, m);
        }
    }
    if (st == SONAR_OK)
        st = field_string(v, http, "path", true, true, &path);
    if (st == SONAR_OK && path[0] != '/') {
        size_t m = push_key(v, "path");
        st = vfail(v, "must start with \"/\" (it is relative to the candidate's address)");
        pop(v, m);
    }
    if (st == SONAR_OK)
        st = field_string_map(v, http, "query", true);
    if (st == SONAR_OK)
        st = field_string_map(v, http, "headers", false);
    if (st == SONAR_OK)
        st = check_body_source(v, http, "body");
    return st;
}

static sonar_status check_nats(validator *v, json_t *nats)
{
    static const char *const keys[] = {"subject", "payload", "json", "headers", NULL};
    if (!json_is_object(nats))
        return vfail(v, "must be an object with at least \"subject\"");
    sonar_status st = check_keys(v, nats, keys);
    const char *subject = NULL;
    if (st == SONAR_OK)
        st = field_string(v, nats, "subject", true, true, &subject);
    if (st == SONAR_OK) {
        size_t n = strlen(subject);
        if (n == 0 || subject[0] == '.' || subject[n - 1] == '.' || strstr(subject, "..") ||
            strpbrk(subject, " \t\r\n*>") != NULL) {
            size_t m = push_key(v, "subject");
            st = vfail(v, "\"%s\" is not a relative subject (tokens separated by \".\", no "
                       "wildcards or spaces)", subject);
            pop(v, m);
        }
    }
    if (st == SONAR_OK)
        st = field_string_map(v, nats, "headers", false);
    if (st == SONAR_OK)
        st = check_body_source(v, nats, "payload");
    return st;
}

static bool status_code_ok(json_t *x)
{
    return json_is_integer(x) && json_integer_value(x) >= 100 && json_integer_value(x) <= 599;
}

static sonar_status check_status(validator *v, json_t *st)
{
    static const char *const why = "status must be a code (100-599), a list of codes, a class "
                                   "like \"2xx\" or {\"min\": 200, \"max\": 299}";
    if (status_code_ok(st))
        return SONAR_OK;
    if (json_is_string(st)) {
        const char *s = json_string_value(st);
        if (strlen(s) == 3 && s[0] >= '1' && s[0] <= '5' && s[1] == 'x' && s[2] == 'x')
            return SONAR_OK;
        return vfail(v, "%s; \"%s\" is none of these", why, s);
    }
    if (json_is_array(st) && json_array_size(st) > 0) {
        size_t i;
        json_t *c;
        json_array_foreach(st, i, c) {
            if (!status_code_ok(c)) {
                size_t m = push_index(v, i);
                sonar_status r = vfail(v, "%s", why);
                pop(v, m);
                return r;
            }
        }
        return SONAR_OK;
    }
    if (json_is_object(st)) {
        static const char *const keys[] = {"min", "max", NULL};
        sonar_status r = check_keys(v, st, keys);
        if (r != SONAR_OK)
            return r;
        json_t *lo = json_object_get(st, "min"), *hi = json_object_get(st, "max");
        if ((lo && !status_code_ok(lo)) || (hi && !status_code_ok(hi)) || (!lo && !hi))
            return vfail(v, "%s", why);
        if (lo && hi && json_integer_value(lo) > json_integer_value(hi))
            return vfail(v, "min %" JSON_INTEGER_FORMAT " is above max %" JSON_INTEGER_FORMAT,
                         json_integer_value(lo), json_integer_value(hi));
        return SONAR_OK;
    }
    return vfail(v, "%s", why);
}

/* {"equals"|"contains"|"matches": "...", "exists": bool}, or a plain string (equals). */
static sonar_status check_text_matcher(validator *v, json_t *m, bool allow_exists)
{
    static const char *const keys_exists[] = {"equals", "contains", "matches", "exists", NULL};
    static const char *const keys[] = {"equals", "contains", "matches", NULL};
    if (json_is_string(m))
        return check_templates(v, json_string_value(m));
    if (!json_is_object(m) || json_object_size(m) == 0)
        return vfail(v, "must be a string or an object with %s",
                     allow_exists ? "equals, contains, matches or exists"
                                  : "equals, contains or matches");
    sonar_status st = check_keys(v, m, allow_exists ? keys_exists : keys);
    if (st == SONAR_OK)
        st = field_string(v, m, "equals", false, true, NULL);
    if (st == SONAR_OK)
        st = field_string(v, m, "contains", false, true, NULL);
    if (st == SONAR_OK)
        st = check_regex(v, m, "matches");
    json_t *ex = json_object_get(m, "exists");
    if (st == SONAR_OK && ex && !json_is_boolean(ex)) {
        size_t mk = push_key(v, "exists");
        st = vfail(v, "must be true or false");
        pop(v, mk);
    }
    return st;
}

static const char *const json_types[] = {"string", "number", "integer", "boolean", "object",
                                         "array", "null", NULL};

/* A number, or a string that is a single template (resolved when the step runs). */
static sonar_status check_number_or_template(validator *v, json_t *obj, const char *key,
                                             bool whole)
{
    json_t *val = json_object_get(obj, key);
    if (val == NULL)
        return SONAR_OK;
    size_t m = push_key(v, key);
    sonar_status st = SONAR_OK;
    if (json_is_string(val)) {
        size_t start, end;
        sonar__tmpl_expr e;
        char err[256];
        const char *s = json_string_value(val);
        int rc = sonar__tmpl_next(s, 0, &start, &end, &e, err, sizeof err);
        if (rc != 1 || start != 0 || end != strlen(s))
            st = vfail(v, "must be a number or a single template like \"{{stock}}\"");
        else
            st = check_templates(v, s);
    } else if (whole ? !json_is_integer(val) || json_integer_value(val) < 0
                     : !json_is_number(val)) {
        st = vfail(v, "must be %s", whole ? "a whole number (0 or more)" : "a number");
    }
    if (st == SONAR_OK)
        pop(v, m);
    return st;
}

static sonar_status check_json_expect(validator *v, json_t *item)
{
    static const char *const keys[] = {"path", "equals", "exists", "type", "length", "matches",
                                       "gt", "ge", "lt", "le", NULL};
    if (!json_is_object(item))
        return vfail(v, "must be an object like {\"path\": \"$.stock\", \"equals\": 3}");
    sonar_status st = check_keys(v, item, keys);
    const char *path = NULL, *type = NULL;
    if (st == SONAR_OK)
        st = field_string(v, item, "path", true, false, &path);
    if (st == SONAR_OK) {
        char err[256];
        if (!sonar__jsonpath_valid(path, err, sizeof err)) {
            size_t m = push_key(v, "path");
            st = vfail(v, "%s", err);
            pop(v, m);
        }
    }
    if (st == SONAR_OK && json_object_size(item) < 2 + (json_object_get(item, "comment") != NULL))
        st = vfail(v, "says nothing to check at %s (add equals, exists, type, length, matches, "
                   "gt, ge, lt or le)", path);
    json_t *eq = json_object_get(item, "equals");
    if (st == SONAR_OK && eq) {
        size_t m = push_key(v, "equals");
        st = check_json_templates(v, eq);
        if (st == SONAR_OK)
            pop(v, m);
    }
    json_t *ex = json_object_get(item, "exists");
    if (st == SONAR_OK && ex && !json_is_boolean(ex)) {
        size_t m = push_key(v, "exists");
        st = vfail(v, "must be true or false");
        pop(v, m);
    }
    if (st == SONAR_OK)
        st = field_string(v, item, "type", false, false, &type);
    if (st == SONAR_OK && type) {
        bool known = false;
        for (size_t i = 0; json_types[i] && !known; i++)
            known = strcmp(type, json_types[i]) == 0;
        if (!known) {
            size_t m = push_key(v, "type");
            st = vfail(v, "unknown type \"%s\" (use string, number, integer, boolean, object, "
                       "array or null)", type);
            pop(v, m);
        }
    }
    if (st == SONAR_OK)
        st = check_number_or_template(v, item, "length", true);
    static const char *const cmps[] = {"gt", "ge", "lt", "le"};
    for (size_t i = 0; i < 4 && st == SONAR_OK; i++)
        st = check_number_or_template(v, item, cmps[i], false);
    if (st == SONAR_OK)
        st = check_regex(v, item, "matches");
    return st;
}

static sonar_status check_expect(validator *v, json_t *ex)
{
    static const char *const keys[] = {"status", "headers", "body", "json", "latency_ms", NULL};
    if (!json_is_object(ex))
        return vfail(v, "must be an object");
    sonar_status st = check_keys(v, ex, keys);
    if (st != SONAR_OK)
        return st;
    json_t *val;
    size_t m;
    if ((val = json_object_get(ex, "status"))) {
        m = push_key(v, "status");
        if ((st = check_status(v, val)) != SONAR_OK)
            return st;
        pop(v, m);
    }
    if ((val = json_object_get(ex, "headers"))) {
        m = push_key(v, "headers");
        if (!json_is_object(val))
            return vfail(v, "must be an object of header names to expectations");
        const char *k;
        json_t *hv;
        json_object_foreach(val, k, hv) {
            size_t m2 = push_key(v, k);
            if ((st = check_text_matcher(v, hv, true)) != SONAR_OK)
                return st;
            pop(v, m2);
        }
        pop(v, m);
    }
    if ((val = json_object_get(ex, "body"))) {
        m = push_key(v, "body");
        if (json_is_string(val))
            return vfail(v, "must be an object like {\"contains\": \"...\"}");
        if ((st = check_text_matcher(v, val, false)) != SONAR_OK)
            return st;
        pop(v, m);
    }
    if ((val = json_object_get(ex, "json"))) {
        m = push_key(v, "json");
        if (!json_is_array(val) || json_array_size(val) == 0)
            return vfail(v, "must be a non-empty list of {\"path\": ..., <assertion>}");
        size_t i;
        json_t *item;
        json_array_foreach(val, i, item) {
            size_t m2 = push_index(v, i);
            if ((st = check_json_expect(v, item)) != SONAR_OK)
                return st;
            pop(v, m2);
        }
        pop(v, m);
    }
    return field_positive_ms(v, ex, "latency_ms", NULL);
}

static bool var_name_ok(const char *name)
{
    if (!ident_start(name[0]) || strlen(name) > 64 || strcmp(name, "env") == 0 ||
        strcmp(name, SONAR__RUN_ID_VAR) == 0)
        return false;
    for (const char *p = name; *p; p++)
        if (!ident_char(*p))
            return false;
    return true;
}

static sonar_status check_capture(validator *v, json_t *cap)
{
    if (!json_is_object(cap))
        return vfail(v, "must be an object of variable names to \"$.json.path\" or "
                     "{\"header\": \"Name\"}");
    const char *name;
    json_t *src;
    json_object_foreach(cap, name, src) {
        size_t m = push_key(v, name);
        if (!var_name_ok(name))
            return vfail(v, "\"%s\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*, up to 64, "
                         "not \"env\" or \"run_id\")", name);
        const char *path = NULL;
        if (json_is_string(src)) {
            path = json_string_value(src);
        } else if (json_is_object(src) && json_object_size(src) == 1 &&
                   json_is_string(json_object_get(src, "json"))) {
            path = json_string_value(json_object_get(src, "json"));
        } else if (!(json_is_object(src) && json_object_size(src) == 1 &&
                     json_is_string(json_object_get(src, "header")))) {
            return vfail(v, "must be \"$.json.path\", {\"json\": \"$.path\"} or "
                         "{\"header\": \"Name\"}");
        }
        char err[256];
        if (path && !sonar__jsonpath_valid(path, err, sizeof err))
            return vfail(v, "%s", err);
        pop(v, m);
    }
    /* Defined for the steps after this one. */
    json_object_foreach(cap, name, src)
        json_object_set_new(v->defined, name, json_true());
    return SONAR_OK;
}

static sonar_status check_step(validator *v, json_t *step, bool *uses_http)
{
    static const char *const keys[] = {"name", "http", "nats", "timeout_ms", "expect",
                                       "capture", NULL};
    if (!json_is_object(step))
        return vfail(v, "a step must be an object with \"http\" or \"nats\"");
    sonar_status st = check_keys(v, step, keys);
    if (st == SONAR_OK)
        st = field_string(v, step, "name", false, false, NULL);
    if (st != SONAR_OK)
        return st;
    json_t *http = json_object_get(step, "http"), *nats = json_object_get(step, "nats");
    if ((http == NULL) == (nats == NULL))
        return vfail(v, "a step needs exactly one of \"http\" or \"nats\"");
    size_t m = push_key(v, http ? "http" : "nats");
    st = http ? check_http(v, http) : check_nats(v, nats);
    if (st != SONAR_OK)
        return st;
    pop(v, m);
    if (nats)
        v->uses_nats = true;
    else
        *uses_http = true;
    if ((st = field_positive_ms(v, step, "timeout_ms", NULL)) != SONAR_OK)
        return st;
    json_t *ex = json_object_get(step, "expect");
    if (ex) {
        m = push_key(v, "expect");
        if ((st = check_expect(v, ex)) != SONAR_OK)
            return st;
        pop(v, m);
    }
    json_t *cap = json_object_get(step, "capture");
    if (cap) {
        m = push_key(v, "capture");
        if ((st = check_capture(v, cap)) != SONAR_OK)
            return st;
        pop(v, m);
    }
    return SONAR_OK;
}

static sonar_status check_steps(validator *v, json_t *kase, const char *key, bool required)
{
    json_t *steps = json_object_get(kase, key);
    bool uses_http = false;
    if (steps == NULL)
        return required ? vfail(v, "missing required field \"%s\"", key) : SONAR_OK;
    size_t m = push_key(v, key);
    if (!json_is_array(steps) || (required && json_array_size(steps) == 0))
        return vfail(v, "must be a %slist of steps", required ? "non-empty " : "");
    if (json_array_size(steps) > SONAR_MAX_LIST)
        return vfail(v, "more than %d steps", SONAR_MAX_LIST);
    size_t i;
    json_t *step;
    json_array_foreach(steps, i, step) {
        size_t m2 = push_index(v, i);
        sonar_status st = check_step(v, step, &uses_http);
        if (st != SONAR_OK)
            return st;
        pop(v, m2);
    }
    pop(v, m);
    return SONAR_OK;
}

static sonar_status check_vars(validator *v, json_t *obj)
{
    json_t *vars = json_object_get(obj, "vars");
    if (vars == NULL)
        return SONAR_OK;
    size_t m = push_key(v, "vars");
    if (!json_is_object(vars))
        return vfail(v, "must be an object of variable names to values");
    const char *name;
    json_t *val;
    json_object_foreach(vars, name, val) {
        if (!var_name_ok(name)) {
            size_t m2 = push_key(v, name);
            sonar_status st = vfail(v, "\"%s\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*, "
                                    "up to 64, not \"env\" or \"run_id\")", name);
            pop(v, m2);
            return st;
        }
        json_object_set_new(v->defined, name, json_true());
    }
    pop(v, m);
    return SONAR_OK;
}

static sonar_status check_case(validator *v, json_t *kase, const char *dep, json_t *names,
                               sonar_checkcase *out)
{
    static const char *const keys[] = {"name", "timeout_ms", "vars", "setup", "steps",
                                       "teardown", NULL};
    if (!json_is_object(kase))
        return vfail(v, "a case must be an object with \"name\" and \"steps\"");
    sonar_status st = check_keys(v, kase, keys);
    const char *name = NULL;
    if (st == SONAR_OK)
        st = field_string(v, kase, "name", true, false, &name);
    if (st == SONAR_OK && (name[0] == '\0' || strlen(name) > SONAR_MAX_TEXT_BYTES)) {
        size_t m = push_key(v, "name");
        st = vfail(v, "a case name must be 1 to %d bytes", SONAR_MAX_TEXT_BYTES);
        pop(v, m);
    }
    if (st == SONAR_OK && json_object_get(names, name)) {
        size_t m = push_key(v, "name");
        st = vfail(v, "case \"%s\" appears twice under \"%s\"", name, dep);
        pop(v, m);
    }
    if (st != SONAR_OK)
        return st;
    json_object_set_new(names, name, json_true());
    if ((st = field_positive_ms(v, kase, "timeout_ms", &out->timeout_ms)) != SONAR_OK)
        return st;

    json_t *outer = v->defined;
    v->defined = json_deep_copy(outer);
    if (v->defined == NULL) {
        v->defined = outer;
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    st = check_vars(v, kase);
    if (st == SONAR_OK)
        st = check_steps(v, kase, "setup", false);
    if (st == SONAR_OK)
        st = check_steps(v, kase, "steps", true);
    if (st == SONAR_OK)
        st = check_steps(v, kase, "teardown", false);
    json_decref(v->defined);
    v->defined = outer;
    out->name = name;
    out->dependency = dep;
    out->json = kase;
    return st;
}

static sonar_status check_table(validator *v, sonar_checktable *t)
{
    static const char *const keys[] = {"$schema", "service", "version", "description", "vars",
                                       "checks", NULL};
    json_t *root = t->root;
    if (!json_is_object(root))
        return vfail(v, "a check table is a JSON object with \"service\" and \"checks\"");
    sonar_status st = check_keys(v, root, keys);
    if (st == SONAR_OK)
        st = field_string(v, root, "service", true, false, &t->service);
    if (st == SONAR_OK && !sonar_name_valid(t->service)) {
        size_t m = push_key(v, "service");
        st = vfail(v, "service name \"%s\" is invalid: it must match ^[A-Za-z0-9_-]{1,64}$",
                   t->service);
        pop(v, m);
    }
    if (st == SONAR_OK)
        st = field_string(v, root, "version", false, false, &t->version);
    if (st == SONAR_OK && t->version &&
        (t->version[0] == '\0' || strlen(t->version) > SONAR_MAX_TEXT_BYTES)) {
        size_t m = push_key(v, "version");
        st = vfail(v, "a version must be 1 to %d bytes", SONAR_MAX_TEXT_BYTES);
        pop(v, m);
    }
    if (st == SONAR_OK)
        st = field_string(v, root, "description", false, false, &t->description);
    if (st == SONAR_OK)
        st = check_vars(v, root);
    if (st != SONAR_OK)
        return st;
    if (t->version == NULL)
        t->version = "0.0.0";
    t->vars = json_object_get(root, "vars");

    json_t *checks = json_object_get(root, "checks");
    if (checks == NULL)
        return vfail(v, "missing required field \"checks\"");
    size_t m = push_key(v, "checks");
    if (!json_is_object(checks) || json_object_size(checks) == 0)
        return vfail(v, "must be an object of dependency names to lists of cases");
    size_t total = 0;
    const char *dep;
    json_t *cases;
    json_object_foreach(checks, dep, cases)
        total += json_is_array(cases) ? json_array_size(cases) : 0;
    t->cases = calloc(total ? total : 1, sizeof *t->cases);
    t->deps = calloc(json_object_size(checks), sizeof *t->deps);
    if (t->cases == NULL || t->deps == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    json_object_foreach(checks, dep, cases) {
        size_t m2 = push_key(v, dep);
        if (!sonar_name_valid(dep))
            return vfail(v, "dependency name \"%s\" is invalid: it must match "
                         "^[A-Za-z0-9_-]{1,64}$", dep);
        if (strcmp(dep, t->service) == 0)
            return vfail(v, "a service cannot depend on itself");
        if (!json_is_array(cases) || json_array_size(cases) == 0)
            return vfail(v, "must be a non-empty list of cases");
        if (json_array_size(cases) > SONAR_MAX_LIST)
            return vfail(v, "more than %d cases", SONAR_MAX_LIST);
        t->deps[t->n_deps++] = dep;
        json_t *names = json_object();
        if (names == NULL)
            return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
        size_t i;
        json_t *kase;
        json_array_foreach(cases, i, kase) {
            size_t m3 = push_index(v, i);
            sonar_checkcase *c = &t->cases[t->n_cases];
            c->table = t;
            st = check_case(v, kase, dep, names, c);
            if (st != SONAR_OK) {
                json_decref(names);
                return st;
            }
            t->n_cases++;
            pop(v, m3);
        }
        json_decref(names);
        pop(v, m2);
    }
    pop(v, m);
    t->uses_nats = v->uses_nats;
    return SONAR_OK;
}

sonar_status sonar_checktable_parse(sonar_checktable **out, const char *text, size_t len,
                                    const char *source)
{
    if (out == NULL || text == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "no check table given");
    if (source == NULL)
        source = "<check table>";
    if (len > SONAR_CHECKTABLE_MAX_BYTES)
        return sonar__fail(SONAR_ERR_LIMIT, "%s: larger than %d bytes", source,
                           SONAR_CHECKTABLE_MAX_BYTES);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "%s:%d:%d: %s", source, jerr.line, jerr.column,
                           jerr.text);
    sonar_checktable *t = calloc(1, sizeof *t);
    if (t == NULL) {
        json_decref(root);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    t->root = root;
    t->source = strdup(source);
    validator v = {.source = source, .path = "$", .plen = 1, .defined = json_object()};
    if (v.defined)
        json_object_set_new(v.defined, SONAR__RUN_ID_VAR, json_true());
    sonar_status st = t->source && v.defined ? check_table(&v, t)
                                             : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    json_decref(v.defined);
    if (st != SONAR_OK) {
        sonar_checktable_destroy(t);
        return st;
    }
    *out = t;
    return SONAR_OK;
}

sonar_status sonar_checktable_load(sonar_checktable **out, const char *path)
{
    if (out == NULL || path == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "no check table file given");
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return sonar__fail(SONAR_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return sonar__fail(SONAR_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size > SONAR_CHECKTABLE_MAX_BYTES) {
        fclose(f);
        return sonar__fail(SONAR_ERR_LIMIT, "%s: larger than %d bytes", path,
                           SONAR_CHECKTABLE_MAX_BYTES);
    }
    size_t size = (size_t)sb.st_size;
    char *text = malloc(size + 1);
    if (text == NULL) {
        fclose(f);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    size_t got = fread(text, 1, size, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed || got != size) {
        free(text);
        return sonar__fail(SONAR_ERR_IO, "%s: read failed", path);
    }
    sonar_status st = sonar_checktable_parse(out, text, size, path);
    free(text);
    return st;
}

void sonar_checktable_destroy(sonar_checktable *table)
{
    if (table == NULL)
        return;
    json_decref(table->root);
    free(table->source);
    free(table->cases);
    free(table->deps);
    free(table);
}

const char *sonar_checktable_service(const sonar_checktable *table)
{
    return table->service;
}

const char *sonar_checktable_version(const sonar_checktable *table)
{
    return table->version;
}

const char *sonar_checktable_description(const sonar_checktable *table)
{
    return table->description;
}

bool sonar_checktable_uses_nats(const sonar_checktable *table)
{
    return table->uses_nats;
}

size_t sonar_checktable_dependency_count(const sonar_checktable *table)
{
    return table->n_deps;
}

const char *sonar_checktable_dependency(const sonar_checktable *table, size_t i)
{
    return i < table->n_deps ? table->deps[i] : NULL;
}

size_t sonar_checktable_case_count(const sonar_checktable *table)
{
    return table->n_cases;
}

const sonar_checkcase *sonar_checktable_case(const sonar_checktable *table, size_t i)
{
    return i < table->n_cases ? &table->cases[i] : NULL;
}

const char *sonar_checkcase_name(const sonar_checkcase *c)
{
    return c->name;
}

const char *sonar_checkcase_dependency(const sonar_checkcase *c)
{
    return c->dependency;
}

int64_t sonar_checkcase_timeout_ms(const sonar_checkcase *c)
{
    return c->timeout_ms;
}
