/*
 * chillybin — an example sonar service: a fridge of sandwich ingredients.
 *
 *   GET  /pick?name=cheese&quantity=1   take stock   -> {"name","quantity","remaining"}
 *   GET  /v2/pick?name=cheese&quantity=1 (v2 only)   -> {"ingredient","taken","remaining"}
 *   GET  /                              the shelf    -> {"service","version","variant","stock":{..}}
 *   POST /restock  {"name","quantity"}  add stock    -> {"name","added","remaining"}
 *   GET  /health                        -> {"status":"pass"}
 *   GET  /metrics                       Prometheus text
 *
 * The three variants tell the change-management story sonar is for:
 *   v1    the API as it has always been.
 *   v2    adds /v2/pick and keeps /pick working, marked deprecated
 *         (`Deprecation: true` and a `Link` to the successor): a compatible
 *         change that every client survives.
 *   nome  renames /pick's `name` parameter to `nome`: a breaking change.
 *         jafflr's checks catch it, so sonar stops it before it ships.
 *
 * chillybin depends on nothing, so it joins sonar without checks: it only
 * registers (address, health and metrics URLs) and answers `none` when
 * anything else changes.
 */
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kitchen.h"
#include "sonar/bus.h"
#include "sonar/log.h"
#include "sonar/service.h"
#include "stock.h"

/** Most units one pick may take. */
#define MAX_PICK 100

typedef enum variant { VARIANT_V1, VARIANT_V2, VARIANT_NOME } variant;

static const char *const variant_names[] = { "v1", "v2", "nome" };
/* The version each variant reports to sonar unless --version says otherwise. */
static const char *const variant_versions[] = { "1.0.0", "2.0.0", "3.0.0" };

typedef struct chillybin {
    stock *stock;
    variant variant;
    const char *version;
    long long slow_ms;        /* --slow-ms: each pick waits this long first (tests, demos) */
    atomic_ullong picks;      /* successful picks since start */
    atomic_ullong units_picked;
} chillybin;

/* ---- Handlers ------------------------------------------------------------ */

static void pause_ms(long long ms)
{
    struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/*
 * Reads and validates /pick's query: the ingredient (`name`, or `nome` in
 * the breaking variant) and the quantity. Replies 400 and returns false
 * when either is missing or malformed.
 */
static bool pick_args(kitchen_request *req, const chillybin *cb, const char **name,
                      long long *quantity)
{
    /* The breaking change: variant `nome` calls the parameter `nome`. */
    const char *param = cb->variant == VARIANT_NOME ? "nome" : "name";
    const char *qtext = kitchen_request_query(req, "quantity");
    *name = kitchen_request_query(req, param);
    if (*name == NULL || **name == '\0')
        kitchen_reply_error(req, 400, "missing %s", param);
    else if (!kitchen_name_valid(*name))
        kitchen_reply_error(req, 400, "%s must match %s", param, KITCHEN_NAME_RULE);
    else if (qtext == NULL || *qtext == '\0')
        kitchen_reply_error(req, 400, "missing quantity");
    else if (!kitchen_parse_int(qtext, 1, MAX_PICK, quantity))
        kitchen_reply_error(req, 400, "quantity must be a whole number from 1 to %d", MAX_PICK);
    else
        return true;
    return false;
}

/* /pick and /v2/pick share everything but the shape of the answer. */
static void pick(kitchen_request *req, chillybin *cb, bool v2)
{
    if (!v2 && cb->variant == VARIANT_V2) {
        /* The Deprecation header (RFC 9745) and where to go instead (RFC 8288). */
        kitchen_request_add_header(req, "Deprecation", "true");
        kitchen_request_add_header(req, "Link", "</v2/pick>; rel=\"successor-version\"");
    }
    const char *name;
    long long quantity;
    if (!pick_args(req, cb, &name, &quantity))
        return;
    if (cb->slow_ms > 0)
        pause_ms(cb->slow_ms);

    long long remaining = 0;
    switch (stock_pick(cb->stock, name, quantity, &remaining)) {
    case STOCK_OK:
        atomic_fetch_add(&cb->picks, 1);
        atomic_fetch_add(&cb->units_picked, (unsigned long long)quantity);
        if (v2)
            kitchen_reply_json(req, 200,
                               json_pack("{s:s, s:I, s:I}", "ingredient", name, "taken",
                                         (json_int_t)quantity, "remaining", (json_int_t)remaining));
        else
            kitchen_reply_json(req, 200,
                               json_pack("{s:s, s:I, s:I}", "name", name, "quantity",
                                         (json_int_t)quantity, "remaining", (json_int_t)remaining));
        break;
    case STOCK_UNKNOWN:
        kitchen_reply_error(req, 404, "no such ingredient: %s", name);
        break;
    case STOCK_SHORT:
        kitchen_reply_error(req, 409, "not enough %s: %lld left, %lld asked", name, remaining,
                            quantity);
        break;
    case STOCK_FAILED:
        kitchen_reply_error(req, 500, "the stock database failed");
        break;
    }
}

static void handle_pick(kitchen_request *req, void *closure)
{
    pick(req, closure, false);
}

static void handle_v2_pick(kitchen_request *req, void *closure)
{
    chillybin *cb = closure;
    if (cb->variant == VARIANT_V2)
        pick(req, cb, true);
    else
        kitchen_reply_error(req, 404, "no such endpoint: GET /v2/pick (this is chillybin %s)",
                            variant_names[cb->variant]);
}

static void handle_restock(kitchen_request *req, void *closure)
{
    chillybin *cb = closure;
    size_t len = 0;
    const char *body = kitchen_request_body(req, &len);
    if (len == 0) {
        kitchen_reply_error(req, 400, "missing body: expected a JSON object {\"name\",\"quantity\"}");
        return;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL || !json_is_object(doc)) {
        kitchen_reply_error(req, 400, "body must be a JSON object {\"name\",\"quantity\"}%s%s",
                            doc == NULL ? ": " : "", doc == NULL ? jerr.text : "");
        json_decref(doc);
        return;
    }
    json_t *jname = json_object_get(doc, "name");
    json_t *jqty = json_object_get(doc, "quantity");
    const char *name = json_string_value(jname);
    const char *why = NULL;
    if (name == NULL)
        why = "name must be a string";
    else if (!kitchen_name_valid(name))
        why = "name must match " KITCHEN_NAME_RULE;
    else if (!json_is_integer(jqty) || json_integer_value(jqty) < 1 ||
             json_integer_value(jqty) > STOCK_MAX_RESTOCK)
        why = "quantity must be a whole number from 1 to 10000";
    if (why != NULL) {
        kitchen_reply_error(req, 400, "%s", why);
        json_decref(doc);
        return;
    }
    long long quantity = json_integer_value(jqty);
    long long remaining = 0;
    switch (stock_restock(cb->stock, name, quantity, &remaining)) {
    case STOCK_OK:
        kitchen_reply_json(req, 200, json_pack("{s:s, s:I, s:I}", "name", name, "added",
                                               (json_int_t)quantity, "remaining",
                                               (json_int_t)remaining));
        break;
    case STOCK_SHORT:
        kitchen_reply_error(req, 409, "the shelf holds at most %d %s (%lld now)",
                            STOCK_MAX_UNITS, name, remaining);
        break;
    case STOCK_UNKNOWN:
    case STOCK_FAILED:
        kitchen_reply_error(req, 500, "the stock database failed");
        break;
    }
    json_decref(doc);
}

static void handle_index(kitchen_request *req, void *closure)
{
    chillybin *cb = closure;
    json_t *shelf = stock_list(cb->stock);
    if (shelf == NULL) {
        kitchen_reply_error(req, 500, "the stock database failed");
        return;
    }
    kitchen_reply_json(req, 200,
                       json_pack("{s:s, s:s, s:s, s:i, s:o}", "service", "chillybin", "version",
                                 cb->version, "variant", variant_names[cb->variant],
                                 "schema_version", stock_schema_version(cb->stock), "stock",
                                 shelf));
}

static void handle_health(kitchen_request *req, void *closure)
{
    chillybin *cb = closure;
    if (stock_healthy(cb->stock))
        kitchen_reply_json(req, 200, json_pack("{s:s}", "status", "pass"));
    else
        kitchen_reply_json(req, 503, json_pack("{s:s, s:s}", "status", "fail", "output",
                                               "the stock database does not answer"));
}

static void write_metrics(FILE *out, void *closure)
{
    chillybin *cb = closure;
    fprintf(out, "# HELP chillybin_picks_total Successful picks.\n"
                 "# TYPE chillybin_picks_total counter\n"
                 "chillybin_picks_total %llu\n",
            (unsigned long long)atomic_load(&cb->picks));
    fprintf(out, "# HELP chillybin_picked_units_total Units taken by successful picks.\n"
                 "# TYPE chillybin_picked_units_total counter\n"
                 "chillybin_picked_units_total %llu\n",
            (unsigned long long)atomic_load(&cb->units_picked));
    fprintf(out, "# HELP chillybin_info The running variant and version.\n"
                 "# TYPE chillybin_info gauge\n"
                 "chillybin_info{variant=\"%s\",version=\"%s\"} 1\n",
            variant_names[cb->variant], cb->version);
    json_t *shelf = stock_list(cb->stock);
    fprintf(out, "# HELP chillybin_stock Units on the shelf, by ingredient.\n"
                 "# TYPE chillybin_stock gauge\n");
    const char *name;
    json_t *units;
    /* Ingredient names match ^[a-z0-9_-]+$: nothing to escape in the label. */
    json_object_foreach(shelf, name, units)
        fprintf(out, "chillybin_stock{ingredient=\"%s\"} %lld\n", name,
                (long long)json_integer_value(units));
    json_decref(shelf);
}

/* The route table: the whole HTTP API at a glance. */
static const kitchen_route routes[] = {
    { "GET", "/", handle_index },
    { "GET", "/pick", handle_pick },
    { "GET", "/v2/pick", handle_v2_pick },
    { "POST", "/restock", handle_restock },
    { "GET", "/health", handle_health },
};

/* ---- Flags --------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: chillybin [--db PATH] [--variant v1|v2|nome] [--address IP] [--port N]\n"
            "                 [--version VERSION] [--advertise URL] [--slow-ms N] [--no-sonar]\n"
            "  --db PATH          SQLite database (default chillybin.db), migrated on start\n"
            "  --variant V        v1 (default), v2 (adds /v2/pick, deprecates /pick) or nome\n"
            "                     (the breaking rename); also CHILLYBIN_VARIANT\n"
            "  --address IP       IPv4 address to listen on (default 127.0.0.1)\n"
            "  --port N           port (default 8081)\n"
            "  --version VERSION  version reported to sonar (default per variant: 1.0.0,\n"
            "                     2.0.0, 3.0.0)\n"
            "  --advertise URL    address announced to sonar (default http://ADDRESS:PORT)\n"
            "  --slow-ms N        each pick waits N ms first (to watch graceful shutdown)\n"
            "  --no-sonar         serve HTTP without joining the bus\n"
            "The bus is NATS_URL (default " SONAR_DEFAULT_NATS_URL "); see bus.h for auth.\n");
}

static bool parse_variant(const char *text, variant *out)
{
    for (int v = VARIANT_V1; v <= VARIANT_NOME; v++) {
        if (strcmp(text, variant_names[v]) == 0) {
            *out = (variant)v;
            return true;
        }
    }
    return false;
}

int main(int argc, char **argv)
{
    kitchen_block_signals(); /* before any thread exists */
    sonar_log_set_name("chillybin");

    const char *db_path = "chillybin.db", *variant_text = getenv("CHILLYBIN_VARIANT");
    long long slow_ms = 0;
    kitchen_flags flags = { .address = "127.0.0.1", .port = 8081, .join = true };
    static const struct option opts[] = {
        KITCHEN_OPTIONS,
        { "db", required_argument, NULL, 'd' },
        { "variant", required_argument, NULL, 'V' },
        { "slow-ms", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int shared = kitchen_flag(&flags, "chillybin", c, optarg);
        if (shared < 0)
            return 2;
        if (shared > 0)
            continue;
        if (c == 'd') {
            db_path = optarg;
        } else if (c == 'V') {
            variant_text = optarg;
        } else if (c == 's') {
            if (!kitchen_parse_int(optarg, 0, 60000, &slow_ms)) {
                fprintf(stderr, "chillybin: --slow-ms %s: expected 0..60000\n", optarg);
                return 2;
            }
        } else {
            usage(c == 'h' ? stdout : stderr);
            return c == 'h' ? 0 : 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "chillybin: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    chillybin cb = { .slow_ms = slow_ms, .variant = VARIANT_V1 };
    if (variant_text != NULL && *variant_text != '\0' && !parse_variant(variant_text, &cb.variant)) {
        fprintf(stderr, "chillybin: variant %s: expected v1, v2 or nome\n", variant_text);
        return 2;
    }
    cb.version = flags.version != NULL ? flags.version : variant_versions[cb.variant];
    kitchen_urls urls;
    kitchen_urls_init(&urls, flags.advertise, flags.address, (int)flags.port);

    int rc = 1;
    kitchen_server *srv = NULL;
    sonar_bus *bus = NULL;
    sonar_service *svc = NULL;
    if (stock_open(&cb.stock, db_path) != SONAR_OK)
        goto out;

    /* Serve first, then join: the address sonar hands to checks already answers. */
    kitchen_server_config scfg = {
        .service = "chillybin", .address = flags.address, .port = (int)flags.port,
        .routes = routes, .n_routes = sizeof routes / sizeof routes[0],
        .closure = &cb, .metrics = write_metrics,
    };
    if (kitchen_server_create(&srv, &scfg) != SONAR_OK)
        goto out;

    if (flags.join) {
        /* Joining sonar: connect to the bus, describe ourselves, start. */
        sonar_bus_config bcfg = { .name = "chillybin" };
        sonar_bus_config_from_env(&bcfg);
        const char *metadata[] = { "variant", variant_names[cb.variant], NULL };
        sonar_service_config svcfg = {
            .name = "chillybin", .version = cb.version, .address = urls.base,
            .description = "sandwich ingredient stock (example)",
            .health = urls.health, .metrics = urls.metrics, .metadata = metadata,
        };
        if (sonar_bus_connect(&bus, &bcfg) != SONAR_OK ||
            sonar_service_create(&svc, bus, &svcfg) != SONAR_OK ||
            sonar_service_start(svc) != SONAR_OK) {
            sonar_log(SONAR_LOG_ERROR, "cannot join sonar: %s", sonar_last_error());
            goto out;
        }
    }
    sonar_log(SONAR_LOG_INFO, "chillybin %s (variant %s) serving on %s, database %s", cb.version,
              variant_names[cb.variant], urls.base, db_path);

    kitchen_serve_until_signal(srv);
    rc = 0;
out:
    sonar_service_destroy(svc); /* leaves the bus */
    sonar_bus_destroy(bus);
    kitchen_server_destroy(srv);
    stock_close(cb.stock);
    if (rc == 0)
        sonar_log(SONAR_LOG_INFO, "stopped");
    return rc;
}
