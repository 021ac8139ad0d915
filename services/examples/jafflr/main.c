/*
 * jafflr — an example sonar service: a toastie (jaffle) maker that depends
 * on chillybin for its ingredients.
 *
 *   GET /toastie?i=cheese&i=vegemite   picks one of each from chillybin, toasts
 *                                      -> 200 {"toastie","ingredients","toasties_made"}
 *                                         409 an ingredient is out or unknown
 *                                         502 chillybin is down or answered nonsense
 *   GET /         state: toasties made, failures, which chillybin API is used
 *   GET /health   {"status":"pass"}
 *   GET /metrics  Prometheus text
 *
 * If a later ingredient fails, the ones already picked are put back
 * (POST /restock): a small compensating action, as a saga would do.
 *
 * Feature flag: JAFFLR_USE_V2_PICK=1 moves this instance to chillybin's
 * /v2/pick. The checks jafflr registers with sonar follow the flag, so a
 * chillybin candidate is always checked against the API jafflr really uses
 * (see checks.c).
 */
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jafflr.h"
#include "kitchen.h"
#include "sonar/bus.h"
#include "sonar/http.h"
#include "sonar/log.h"
#include "sonar/service.h"

/** Most ingredients in one toastie. */
#define MAX_INGREDIENTS 8
/** How long one call to chillybin may take. */
#define CHILLYBIN_TIMEOUT_MS 3000

/* Why a toastie could not be made; also the `reason` label of the failure metric. */
typedef enum failure {
    FAIL_OUT_OF_STOCK,
    FAIL_UNKNOWN_INGREDIENT,
    FAIL_CHILLYBIN,
    N_FAILURES,
} failure;
static const char *const failure_names[] = { "out_of_stock", "unknown_ingredient",
                                             "chillybin_unavailable" };

typedef struct jafflr {
    const char *chillybin;          /* base URL, e.g. http://127.0.0.1:8081 */
    const jafflr_pick_api *api;     /* /pick or /v2/pick, from the feature flag */
    const char *version;
    atomic_ullong toasties;
    atomic_ullong failures[N_FAILURES];
} jafflr;

/* ---- Talking to chillybin ------------------------------------------------ */

/* The outcome of one call to chillybin: status 0 when no answer came. */
typedef struct call {
    long status;
    json_t *doc;        /* the parsed body, or NULL */
    char error[512];    /* transport error, when status is 0 */
} call;

static void call_chillybin(const jafflr *jf, const char *method, const char *path,
                           const char *body, call *out)
{
    memset(out, 0, sizeof *out);
    char *url = NULL;
    if (sonar_http_join(&url, jf->chillybin, path) != SONAR_OK) {
        snprintf(out->error, sizeof out->error, "bad chillybin URL: %s", sonar_last_error());
        return;
    }
    const char *json_header[] = { "Content-Type: application/json", NULL };
    sonar_http_request req = {
        .method = method, .url = url, .timeout_ms = CHILLYBIN_TIMEOUT_MS,
        .body = body, .body_len = body != NULL ? strlen(body) : 0,
        .headers = body != NULL ? json_header : NULL,
    };
    sonar_http_response resp = { 0 };
    if (sonar_http_perform(&req, &resp) == SONAR_OK) {
        out->status = resp.status;
        out->doc = json_loadb(resp.body, resp.body_len, 0, NULL);
    } else {
        snprintf(out->error, sizeof out->error, "%s", sonar_last_error());
    }
    sonar_http_response_finish(&resp);
    free(url);
}

/* Puts one unit of \p name back on chillybin's shelf (best effort). */
static void put_back(const jafflr *jf, const char *name)
{
    char body[128];
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"quantity\":1}", name);
    call c;
    call_chillybin(jf, "POST", "/restock", body, &c);
    if (c.status != 200)
        sonar_log(SONAR_LOG_WARN, "could not put %s back on chillybin's shelf (%ld %s)", name,
                  c.status, c.error);
    json_decref(c.doc);
}

/*
 * Picks one unit of \p name. On failure, replies to \p req, counts the
 * failure and returns false.
 */
static bool pick_one(jafflr *jf, kitchen_request *req, const char *name)
{
    char path[160];
    snprintf(path, sizeof path, "%s?name=%s&quantity=1", jf->api->path, name);
    call c;
    call_chillybin(jf, "GET", path, NULL, &c);
    const char *said = json_string_value(json_object_get(c.doc, "error"));
    failure why = FAIL_CHILLYBIN;
    if (c.status == 200) {
        const char *got = json_string_value(json_object_get(c.doc, jf->api->name_field));
        if (got != NULL && strcmp(got, name) == 0) {
            json_decref(c.doc);
            return true;
        }
        kitchen_reply_error(req, 502, "chillybin answered GET %s with an unexpected body", path);
    } else if (c.status == 409) {
        why = FAIL_OUT_OF_STOCK;
        kitchen_reply_error(req, 409, "out of %s (chillybin: %s)", name, said ? said : "?");
    } else if (c.status == 404 && said != NULL) {
        why = FAIL_UNKNOWN_INGREDIENT;
        kitchen_reply_error(req, 409, "chillybin does not stock %s", name);
    } else if (c.status == 0) {
        kitchen_reply_error(req, 502, "chillybin is unavailable at %s: %s", jf->chillybin,
                            c.error);
    } else {
        kitchen_reply_error(req, 502, "chillybin answered GET %s with %ld%s%s", path, c.status,
                            said ? ": " : "", said ? said : "");
    }
    atomic_fetch_add(&jf->failures[why], 1);
    json_decref(c.doc);
    return false;
}

/* ---- Handlers ------------------------------------------------------------ */

static void handle_toastie(kitchen_request *req, void *closure)
{
    jafflr *jf = closure;
    const char *items[MAX_INGREDIENTS];
    size_t n = kitchen_request_query_all(req, "i", items, MAX_INGREDIENTS);
    if (n == 0) {
        kitchen_reply_error(req, 400, "missing i: ask for ingredients, e.g. /toastie?i=cheese&i=vegemite");
        return;
    }
    if (n > MAX_INGREDIENTS) {
        kitchen_reply_error(req, 400, "at most %d ingredients in one toastie", MAX_INGREDIENTS);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        if (!kitchen_name_valid(items[k])) {
            kitchen_reply_error(req, 400, "i: ingredient names must match %s", KITCHEN_NAME_RULE);
            return;
        }
    }
    for (size_t k = 0; k < n; k++) {
        if (!pick_one(jf, req, items[k])) {
            while (k-- > 0) /* compensate: return what was already taken */
                put_back(jf, items[k]);
            return;
        }
    }
    unsigned long long made = atomic_fetch_add(&jf->toasties, 1) + 1;
    json_t *ingredients = json_array();
    char title[600] = "";
    for (size_t k = 0; k < n; k++) {
        json_array_append_new(ingredients, json_string(items[k]));
        snprintf(title + strlen(title), sizeof title - strlen(title), "%s%s",
                 k == 0 ? "" : " & ", items[k]);
    }
    strncat(title, " toastie", sizeof title - strlen(title) - 1);
    kitchen_reply_json(req, 200, json_pack("{s:s, s:o, s:I}", "toastie", title, "ingredients",
                                           ingredients, "toasties_made", (json_int_t)made));
}

static void handle_index(kitchen_request *req, void *closure)
{
    jafflr *jf = closure;
    json_t *failures = json_object();
    json_int_t total = 0;
    for (int f = 0; f < N_FAILURES; f++) {
        json_int_t v = (json_int_t)atomic_load(&jf->failures[f]);
        json_object_set_new(failures, failure_names[f], json_integer(v));
        total += v;
    }
    kitchen_reply_json(req, 200,
                       json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:o}", "service", "jafflr",
                                 "version", jf->version, "chillybin", jf->chillybin, "pick_api",
                                 jf->api->path, "toasties_made",
                                 (json_int_t)atomic_load(&jf->toasties), "failures", total,
                                 "failures_by_reason", failures));
}

static void handle_health(kitchen_request *req, void *closure)
{
    (void)closure;
    kitchen_reply_json(req, 200, json_pack("{s:s}", "status", "pass"));
}

static void write_metrics(FILE *out, void *closure)
{
    jafflr *jf = closure;
    fprintf(out, "# HELP jafflr_toasties_total Toasties made.\n"
                 "# TYPE jafflr_toasties_total counter\n"
                 "jafflr_toasties_total %llu\n",
            (unsigned long long)atomic_load(&jf->toasties));
    fprintf(out, "# HELP jafflr_toastie_failures_total Toasties refused, by reason.\n"
                 "# TYPE jafflr_toastie_failures_total counter\n");
    for (int f = 0; f < N_FAILURES; f++)
        fprintf(out, "jafflr_toastie_failures_total{reason=\"%s\"} %llu\n", failure_names[f],
                (unsigned long long)atomic_load(&jf->failures[f]));
}

static const kitchen_route routes[] = {
    { "GET", "/", handle_index },
    { "GET", "/toastie", handle_toastie },
    { "GET", "/health", handle_health },
};

/* ---- Flags --------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: jafflr [--chillybin URL] [--address IP] [--port N] [--version VERSION]\n"
            "              [--advertise URL] [--no-sonar]\n"
            "  --chillybin URL    chillybin's base URL (default http://127.0.0.1:8081)\n"
            "  --address IP       IPv4 address to listen on (default 127.0.0.1)\n"
            "  --port N           port (default 8080)\n"
            "  --version VERSION  version reported to sonar (default 1.0.0)\n"
            "  --advertise URL    address announced to sonar (default http://ADDRESS:PORT)\n"
            "  --no-sonar         serve HTTP without joining the bus\n"
            "Environment: JAFFLR_USE_V2_PICK=1 uses chillybin's /v2/pick; NATS_URL.\n");
}

/* The feature flag: unset, "", "0", "false" -> off; "1", "true" -> on; anything else refused. */
static bool flag_from_env(const char *name, bool *out)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0' || strcmp(v, "0") == 0 || strcmp(v, "false") == 0)
        *out = false;
    else if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0)
        *out = true;
    else
        return false;
    return true;
}

int main(int argc, char **argv)
{
    kitchen_block_signals(); /* before any thread exists */
    sonar_log_set_name("jafflr");

    jafflr jf = { .chillybin = "http://127.0.0.1:8081", .version = "1.0.0" };
    kitchen_flags flags = { .address = "127.0.0.1", .port = 8080, .join = true };
    bool use_v2 = false;
    static const struct option opts[] = {
        KITCHEN_OPTIONS,
        { "chillybin", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int shared = kitchen_flag(&flags, "jafflr", c, optarg);
        if (shared < 0)
            return 2;
        if (shared > 0)
            continue;
        if (c == 'c') {
            jf.chillybin = optarg;
        } else {
            usage(c == 'h' ? stdout : stderr);
            return c == 'h' ? 0 : 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "jafflr: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    if (flags.version != NULL)
        jf.version = flags.version;
    if ((strncmp(jf.chillybin, "http://", 7) != 0 && strncmp(jf.chillybin, "https://", 8) != 0) ||
        strlen(jf.chillybin) > 1024) {
        fprintf(stderr, "jafflr: --chillybin %s: expected an http:// or https:// URL\n",
                jf.chillybin);
        return 2;
    }
    if (!flag_from_env("JAFFLR_USE_V2_PICK", &use_v2)) {
        fprintf(stderr, "jafflr: JAFFLR_USE_V2_PICK=%s: expected 1, true, 0 or false\n",
                getenv("JAFFLR_USE_V2_PICK"));
        return 2;
    }
    jf.api = use_v2 ? &jafflr_pick_v2 : &jafflr_pick_v1;
    kitchen_urls urls;
    kitchen_urls_init(&urls, flags.advertise, flags.address, (int)flags.port);

    int rc = 1;
    kitchen_server *srv = NULL;
    sonar_bus *bus = NULL;
    sonar_service *svc = NULL;
    kitchen_server_config scfg = {
        .service = "jafflr", .address = flags.address, .port = (int)flags.port,
        .routes = routes, .n_routes = sizeof routes / sizeof routes[0],
        .closure = &jf, .metrics = write_metrics,
    };
    if (sonar_http_global_init() != SONAR_OK || kitchen_server_create(&srv, &scfg) != SONAR_OK)
        goto out;

    if (flags.join) {
        /* Joining sonar with checks on chillybin: whenever a new chillybin is
         * announced, the cases in checks.c run against its address. */
        sonar_bus_config bcfg = { .name = "jafflr" };
        sonar_bus_config_from_env(&bcfg);
        const char *metadata[] = { "pick_api", jf.api->path, NULL };
        sonar_service_config svcfg = {
            .name = "jafflr", .version = jf.version, .address = urls.base,
            .description = "toastie maker (example); depends on chillybin",
            .health = urls.health, .metrics = urls.metrics, .metadata = metadata,
        };
        if (sonar_bus_connect(&bus, &bcfg) != SONAR_OK ||
            sonar_service_create(&svc, bus, &svcfg) != SONAR_OK ||
            jafflr_add_checks(svc, jf.api) != SONAR_OK || sonar_service_start(svc) != SONAR_OK) {
            sonar_log(SONAR_LOG_ERROR, "cannot join sonar: %s", sonar_last_error());
            goto out;
        }
    }
    sonar_log(SONAR_LOG_INFO, "jafflr %s serving on %s, chillybin %s via %s", jf.version,
              urls.base, jf.chillybin, jf.api->path);

    kitchen_serve_until_signal(srv);
    rc = 0;
out:
    sonar_service_destroy(svc); /* leaves the bus, waits for running checks */
    sonar_bus_destroy(bus);
    kitchen_server_destroy(srv);
    if (rc == 0)
        sonar_log(SONAR_LOG_INFO, "stopped");
    return rc;
}
