/* statusd target specifications: validation of config entries and API bodies. */
#include "targets.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/protocol.h"
#include "sonar/util.h"

const char *statusd_source_str(statusd_source source)
{
    switch (source) {
    case STATUSD_SOURCE_CONFIG:
        return "config";
    case STATUSD_SOURCE_API:
        return "api";
    default:
        return "registry";
    }
}

void statusd_spec_finish(statusd_target_spec *spec)
{
    if (spec == NULL)
        return;
    free(spec->name);
    free(spec->service);
    free(spec->instance);
    free(spec->health);
    free(spec->metrics);
    memset(spec, 0, sizeof *spec);
}

sonar_status statusd_spec_copy(statusd_target_spec *dst, const statusd_target_spec *src)
{
    statusd_target_spec c = *src;
    c.name = sonar__strdup(src->name);
    c.service = sonar__strdup(src->service);
    c.instance = sonar__strdup(src->instance);
    c.health = sonar__strdup(src->health);
    c.metrics = sonar__strdup(src->metrics);
    if ((src->name && !c.name) || (src->service && !c.service) ||
        (src->instance && !c.instance) || (src->health && !c.health) ||
        (src->metrics && !c.metrics)) {
        statusd_spec_finish(&c);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    *dst = c;
    return SONAR_OK;
}

bool statusd_endpoint_valid(const char *text)
{
    if (text == NULL)
        return false;
    if (strcmp(text, "nats") == 0)
        return true;
    size_t len = strlen(text);
    if (len > SONAR_MAX_ADDRESS_BYTES)
        return false;
    const char *host = strncmp(text, "http://", 7) == 0    ? text + 7
                       : strncmp(text, "https://", 8) == 0 ? text + 8
                                                           : NULL;
    if (host == NULL || *host == '\0' || *host == '/' || *host == ':')
        return false;
    for (const char *p = text; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return false;
    return true;
}

static const char *const known_fields[] = {
    "name", "service", "health", "metrics", "interval_ms", "timeout_ms",
    "failure_threshold", "success_threshold", NULL,
};

static sonar_status int_field(const json_t *obj, const char *where, const char *field,
                              long long min, long long max, int64_t *out)
{
    const json_t *v = json_object_get(obj, field);
    if (v == NULL)
        return SONAR_OK;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return sonar__fail(SONAR_ERR_INVALID, "%s.%s: must be an integer from %lld to %lld",
                           where, field, min, max);
    *out = (int64_t)json_integer_value(v);
    return SONAR_OK;
}

static sonar_status endpoint_field(const json_t *obj, const char *where, const char *field,
                                   bool required, char **out)
{
    const json_t *v = json_object_get(obj, field);
    if (v == NULL || json_is_null(v)) {
        if (required)
            return sonar__fail(SONAR_ERR_INVALID, "%s.%s: missing (an http(s):// URL or \"nats\")",
                               where, field);
        return SONAR_OK;
    }
    if (!json_is_string(v) || !statusd_endpoint_valid(json_string_value(v)))
        return sonar__fail(SONAR_ERR_INVALID,
                           "%s.%s: must be an http(s):// URL with a host (printable, no blanks, "
                           "at most %d bytes) or \"nats\"",
                           where, field, SONAR_MAX_ADDRESS_BYTES);
    *out = strdup(json_string_value(v));
    return *out ? SONAR_OK : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
}

static sonar_status name_field(const json_t *obj, const char *where, const char *field,
                               bool required, char **out)
{
    const json_t *v = json_object_get(obj, field);
    if (v == NULL && !required)
        return SONAR_OK;
    if (v == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "%s.%s: missing", where, field);
    if (!json_is_string(v) || !sonar_name_valid(json_string_value(v)))
        return sonar__fail(SONAR_ERR_INVALID,
                           "%s.%s: must be a name matching ^[A-Za-z0-9_-]{1,64}$",
                           where, field);
    *out = strdup(json_string_value(v));
    return *out ? SONAR_OK : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
}

sonar_status statusd_spec_from_json(statusd_target_spec *out, const json_t *obj,
                                    const char *where)
{
    if (!json_is_object(obj))
        return sonar__fail(SONAR_ERR_INVALID, "%s: must be a JSON object", where);
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        bool known = false;
        for (size_t i = 0; known_fields[i] && !known; i++)
            known = strcmp(key, known_fields[i]) == 0;
        if (!known)
            return sonar__fail(SONAR_ERR_INVALID,
                               "%s: unknown field \"%.64s\" (known: name, service, health, "
                               "metrics, interval_ms, timeout_ms, failure_threshold, "
                               "success_threshold)",
                               where, key);
    }
    statusd_target_spec s = {0};
    int64_t fails = 0, succ = 0;
    sonar_status rc = name_field(obj, where, "name", true, &s.name);
    if (rc == SONAR_OK)
        rc = name_field(obj, where, "service", false, &s.service);
    if (rc == SONAR_OK && s.service == NULL) {
        s.service = strdup(s.name);
        if (s.service == NULL)
            rc = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    if (rc == SONAR_OK)
        rc = endpoint_field(obj, where, "health", true, &s.health);
    if (rc == SONAR_OK)
        rc = endpoint_field(obj, where, "metrics", false, &s.metrics);
    if (rc == SONAR_OK)
        rc = int_field(obj, where, "interval_ms", STATUSD_INTERVAL_MIN, STATUSD_INTERVAL_MAX,
                       &s.interval_ms);
    if (rc == SONAR_OK)
        rc = int_field(obj, where, "timeout_ms", STATUSD_TIMEOUT_MIN, STATUSD_TIMEOUT_MAX,
                       &s.timeout_ms);
    if (rc == SONAR_OK)
        rc = int_field(obj, where, "failure_threshold", 1, SONAR_HEALTH_MAX_THRESHOLD, &fails);
    if (rc == SONAR_OK)
        rc = int_field(obj, where, "success_threshold", 1, SONAR_HEALTH_MAX_THRESHOLD, &succ);
    if (rc != SONAR_OK) {
        statusd_spec_finish(&s);
        return rc;
    }
    s.thresholds.failure_threshold = (int)fails;
    s.thresholds.success_threshold = (int)succ;
    *out = s;
    return SONAR_OK;
}

static void free_specs(statusd_target_spec *specs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        statusd_spec_finish(&specs[i]);
    free(specs);
}

sonar_status statusd_config_load(const char *path, statusd_target_spec **out_specs,
                                 size_t *out_n)
{
    json_error_t err;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return sonar__fail(SONAR_ERR_IO, "%s: cannot read the config file", path);
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &err);
    fclose(f);
    if (root == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "%s: line %d, column %d: %s", path, err.line,
                           err.column, err.text);
    sonar_status rc = SONAR_OK;
    statusd_target_spec *specs = NULL;
    size_t n = 0;
    const char *key;
    json_t *value;
    if (!json_is_object(root)) {
        rc = sonar__fail(SONAR_ERR_INVALID, "%s: $: must be an object {\"targets\":[...]}", path);
        goto out;
    }
    json_object_foreach(root, key, value) {
        if (strcmp(key, "targets") != 0) {
            rc = sonar__fail(SONAR_ERR_INVALID, "%s: $: unknown field \"%.64s\" (known: targets)",
                             path, key);
            goto out;
        }
    }
    json_t *arr = json_object_get(root, "targets");
    if (!json_is_array(arr)) {
        rc = sonar__fail(SONAR_ERR_INVALID, "%s: $.targets: %s", path,
                         arr ? "must be an array" : "missing");
        goto out;
    }
    if (json_array_size(arr) > STATUSD_MAX_STATIC_TARGETS) {
        rc = sonar__fail(SONAR_ERR_INVALID, "%s: $.targets: more than %d targets", path,
                         STATUSD_MAX_STATIC_TARGETS);
        goto out;
    }
    specs = calloc(json_array_size(arr) + 1, sizeof *specs);
    if (specs == NULL) {
        rc = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        char where[64];
        snprintf(where, sizeof where, "$.targets[%zu]", i);
        rc = statusd_spec_from_json(&specs[n], json_array_get(arr, i), where);
        if (rc != SONAR_OK) {
            char why[1024];
            snprintf(why, sizeof why, "%s", sonar_last_error());
            rc = sonar__fail(rc, "%s: %s", path, why);
            goto out;
        }
        n++;
        for (size_t j = 0; j + 1 < n; j++)
            if (strcmp(specs[j].name, specs[n - 1].name) == 0) {
                rc = sonar__fail(SONAR_ERR_INVALID,
                                 "%s: %s.name: \"%s\" is already the name of $.targets[%zu]", path,
                                 where, specs[n - 1].name, j);
                goto out;
            }
    }
out:
    json_decref(root);
    if (rc != SONAR_OK) {
        free_specs(specs, n);
        return rc;
    }
    *out_specs = specs;
    *out_n = n;
    return SONAR_OK;
}

json_t *statusd_spec_json(const statusd_target_spec *spec, statusd_source source)
{
    return json_pack("{s:s, s:s, s:s, s:s?, s:s?}", "name", spec->name, "service",
                     spec->service, "source", statusd_source_str(source), "health",
                     spec->health, "metrics", spec->metrics);
}
