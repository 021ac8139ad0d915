/*
 * jafflr's integration checks on chillybin, written as a table of cases.
 *
 * When someone announces a new chillybin (`sonar.check.chillybin`), sonar
 * runs every case below against the candidate's address, each on its own
 * worker thread, within the request's deadline. A case:
 *
 *   1. sets up: restocks a fresh, uniquely named ingredient on the
 *      candidate (POST /restock) so cases never disturb each other or the
 *      real stock (stock 0 leaves it missing on purpose);
 *   2. picks it the way jafflr does (GET /pick or /v2/pick);
 *   3. asserts the status and the body: on 200 the ingredient, the units
 *      taken and the units remaining; on an error a JSON {"error": "..."}
 *      that mentions what was wrong (the ingredient, or the quantity).
 *
 * A failing case reports which request went wrong and how, e.g.
 *   GET /pick?name=probe-x&quantity=1 → 400, expected 200: missing nome
 * which is what the team announcing chillybin reads in sonar's report.
 *
 * To check something new, add a line to `cases`.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "jafflr.h"
#include "sonar/http.h"
#include "sonar/util.h"

const jafflr_pick_api jafflr_pick_v1 = { "/pick", "name", "quantity", false };
const jafflr_pick_api jafflr_pick_v2 = { "/v2/pick", "ingredient", "taken", true };

/* In the table: the error text must name the probe ingredient. */
static const char THE_INGREDIENT[] = "(the ingredient)";

typedef struct pick_case {
    const char *name;       /* the check's name in sonar's reports */
    int stock;              /* setup: units of a fresh ingredient put on the shelf (0: none) */
    const char *quantity;   /* the pick's quantity parameter, as sent */
    long status;            /* expected HTTP status */
    long long remaining;    /* on 200: expected units left (the taken units must equal quantity) */
    const char *mentions;   /* otherwise: what the "error" text must mention */
} pick_case;

static const pick_case cases[] = {
    /* name                       stock  quantity  status  remaining  error mentions */
    { "pick in stock",                3,      "1",    200,      2,    NULL },
    { "pick the last units",          2,      "2",    200,      0,    NULL },
    { "pick more than there is",      1,      "2",    409,     -1,    THE_INGREDIENT },
    { "pick a missing ingredient",    0,      "1",    404,     -1,    THE_INGREDIENT },
    { "pick with a bad quantity",     1,   "lots",    400,     -1,    "quantity" },
};

/* A fresh ingredient name, e.g. "probe-k3x9...": chillybin's names are lower case. */
static void probe_name(char *buf, size_t len)
{
    char id[23];
    sonar_random_id(id);
    for (char *c = id; *c != '\0'; c++)
        *c = (char)tolower((unsigned char)*c);
    snprintf(buf, len, "probe-%s", id);
}

/* The "error" text of a JSON error body, or "" (borrowed from \p doc). */
static const char *error_text(json_t *doc)
{
    const char *e = json_string_value(json_object_get(doc, "error"));
    return e != NULL ? e : "";
}

/* Asserts a 200 answer's fields. */
static sonar_check_status assert_picked(sonar_check_ctx *ctx, const jafflr_pick_api *api,
                                        const pick_case *c, const char *path,
                                        const char *ingredient, json_t *doc)
{
    const char *got = json_string_value(json_object_get(doc, api->name_field));
    json_t *taken = json_object_get(doc, api->taken_field);
    json_t *remaining = json_object_get(doc, "remaining");
    long long want_taken = 0;
    sscanf(c->quantity, "%lld", &want_taken);
    if (got == NULL || strcmp(got, ingredient) != 0)
        return sonar_check_fail(ctx, "GET %s → 200 but \"%s\" is %s, expected \"%s\"", path,
                                api->name_field, got != NULL ? got : "missing", ingredient);
    if (!json_is_integer(taken) || json_integer_value(taken) != want_taken)
        return sonar_check_fail(ctx, "GET %s → 200 but \"%s\" is not %lld", path,
                                api->taken_field, want_taken);
    if (!json_is_integer(remaining) || json_integer_value(remaining) != c->remaining)
        return sonar_check_fail(ctx, "GET %s → 200 but \"remaining\" is not %lld", path,
                                c->remaining);
    return SONAR_CHECK_PASS;
}

static sonar_check_status run_case(sonar_check_ctx *ctx, const jafflr_pick_api *api,
                                   const pick_case *c)
{
    char ingredient[40];
    probe_name(ingredient, sizeof ingredient);

    /* 1. Setup: stock the shelf. sonar_check_http names the request on failure. */
    if (c->stock > 0) {
        char body[128];
        snprintf(body, sizeof body, "{\"name\":\"%s\",\"quantity\":%d}", ingredient, c->stock);
        if (sonar_check_http(ctx, "POST", "/restock", body, 200, NULL, NULL) != SONAR_CHECK_PASS)
            return SONAR_CHECK_FAIL;
    }

    /* 2. Pick, as jafflr does. */
    char path[160];
    snprintf(path, sizeof path, "%s?name=%s&quantity=%s", api->path, ingredient, c->quantity);
    sonar_http_response resp = { 0 };
    sonar_check_status st = sonar_check_http(ctx, "GET", path, NULL, c->status, NULL, &resp);
    json_t *doc = resp.body != NULL ? json_loads(resp.body, 0, NULL) : NULL;

    /* 3. Assert the answer. */
    if (st != SONAR_CHECK_PASS) {
        if (resp.status != 0) /* a response with the wrong status: say what chillybin said */
            st = sonar_check_fail(ctx, "GET %s → %ld, expected %ld%s%s", path, resp.status,
                                  c->status, *error_text(doc) != '\0' ? ": " : "",
                                  error_text(doc));
    } else if (!json_is_object(doc)) {
        st = sonar_check_fail(ctx, "GET %s → %ld but the body is not a JSON object", path,
                              resp.status);
    } else if (c->status == 200) {
        st = assert_picked(ctx, api, c, path, ingredient, doc);
    } else {
        const char *want = c->mentions == THE_INGREDIENT ? ingredient : c->mentions;
        if (strstr(error_text(doc), want) == NULL)
            st = sonar_check_fail(ctx, "GET %s → %ld but the error \"%s\" does not mention %s",
                                  path, resp.status, error_text(doc), want);
    }

    /* A deprecated endpoint still passes, and the report says so. */
    const char *deprecated = sonar_http_response_header(&resp, "Deprecation");
    if (st == SONAR_CHECK_PASS && deprecated != NULL) {
        const char *link = sonar_http_response_header(&resp, "Link");
        st = sonar_check_pass(ctx, "GET %s is deprecated (successor: %s)", api->path,
                              link != NULL ? link : "not given");
    }
    json_decref(doc);
    sonar_http_response_finish(&resp);
    return st;
}

static sonar_check_status check_v1(sonar_check_ctx *ctx, void *closure)
{
    return run_case(ctx, &jafflr_pick_v1, closure);
}

static sonar_check_status check_v2(sonar_check_ctx *ctx, void *closure)
{
    return run_case(ctx, &jafflr_pick_v2, closure);
}

sonar_status jafflr_add_checks(sonar_service *svc, const jafflr_pick_api *api)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s%s", api->v2 ? "v2 " : "", cases[i].name);
        sonar_status s = sonar_service_add_check(svc, "chillybin", name,
                                                 api->v2 ? check_v2 : check_v1,
                                                 (void *)&cases[i]);
        if (s != SONAR_OK)
            return s;
    }
    return SONAR_OK;
}
