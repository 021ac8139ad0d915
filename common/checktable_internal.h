/* Check tables: what checktable.c (load) and checkrun.c (run) share. */
#ifndef SONAR_CHECKTABLE_INTERNAL_H
#define SONAR_CHECKTABLE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sonar/checktable.h"

struct sonar_checkcase {
    const char *name;
    const char *dependency;
    json_t *json;                  /* the case object, borrowed from the table's root */
    const sonar_checktable *table;
    int64_t timeout_ms;
};

struct sonar_checktable {
    json_t *root;                  /* the validated document (the runner reads it) */
    char *source;
    const char *service, *version, *description;
    json_t *vars;                  /* may be NULL */
    sonar_checkcase *cases;
    size_t n_cases;
    const char **deps;
    size_t n_deps;
    bool uses_nats;
};

/* Built-in variable: a fresh random id per case run, lower case [a-z0-9]{22}. */
#define SONAR__RUN_ID_VAR "run_id"

/* A template "{{ name }}", "{{ name + 3 }}", "{{ env.HOME }}". */
typedef struct sonar__tmpl_expr {
    const char *name;   /* without "env." */
    size_t name_len;
    bool env;
    int64_t add;        /* +N / -N */
} sonar__tmpl_expr;

/*
 * Finds the next template in s at or after *pos. Returns 1 with [*start,*end)
 * spanning "{{...}}" and the parsed expression, 0 when there is none, -1 when
 * malformed (reason in err).
 */
int sonar__tmpl_next(const char *s, size_t pos, size_t *start, size_t *end,
                     sonar__tmpl_expr *e, char *err, size_t errlen);

/* Checks a JSON path ("$", "$.a.b", "$.items[0]", "$[\"odd key\"]", "$.x[-1]");
 * false with the reason in err. */
bool sonar__jsonpath_valid(const char *path, char *err, size_t errlen);
/* The value at path in root (borrowed), or NULL. path must be valid. */
json_t *sonar__jsonpath_get(json_t *root, const char *path);

/* "number", "string", ... of a JSON value. */
const char *sonar__json_type_name(const json_t *v);

#endif
