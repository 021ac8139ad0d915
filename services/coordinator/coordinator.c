/* sonard: registry subscriptions, change announcements, the read API. */
#include "coordinator.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gather.h"
#include "internal.h"
#include "registry.h"
#include "remote.h"
#include "sdmetrics.h"
#include "sonar/reply.h"
#include "sonar/log.h"
#include "sonar/outbox.h"
#include "sonar/protocol.h"
#include "sonar/service.h"
#include "sonar/util.h"
#include "catchup.h"
#include "claims.h"
#include "store.h"

/* Header on reports this coordinator publishes, so it does not store them twice. */
#define HDR_COORDINATOR "Sonar-Coordinator"

/* The replay at start begins this long before the newest stored report:
 * reports published just before it may have been stored later here, and
 * the server's clock and ours differ a little. */
#define SONARD_CATCHUP_BACK_MS 120000
/* A read of stored reports waits at most this long for replied ones to be stored. */
#define SONARD_SETTLE_MS 2000
/* The catch-up waits for the writer after this many replayed reports. */
#define CATCHUP_SYNC_EVERY 256

/* A coordinator heard from (registration, gather) counts as present this long. */
#define PEER_PRESENT_MS 15000

/* Bloom filter of change ids that may have a stored report: 2^20 bits. */
#define SEEN_WORDS (1u << 14)

struct sonar_coordinator {
    sonar_coordinator_config cfg;
    char *db_path;
    char *version;
    sonar_bus *bus;
    natsConnection *nc;
    sonar_store *store;
    sonar_registry *reg;
    sonar_gatherer *gatherer;
    sonar_remote *remote; /* gathers of other coordinators */
    sonar_service *svc;
    sonar_outbox *outbox; /* NULL when the server has no JetStream */
    sonard_metrics *metrics;
    natsSubscription *sub_register, *sub_leave, *sub_report, *sub_gather, *sub_discover;
    bool have_stream;        /* SONAR_EVENTS exists (the server has JetStream) */
    sonar_catchup *catchup;  /* reports missed while down or disconnected; NULL without */
    int replayed_unsynced;   /* catch-up thread only: reports queued since its last sync */
    /* Claims (claims.h, sonar_gatherer_set_claimer()), made only while
     * another coordinator is known. */
    sonar_claims *claims;         /* NULL without JetStream */
    _Atomic int64_t peer_until_ms; /* another coordinator was heard from; monotonic */
    atomic_llong reports_adopted;
    /* Every change id that was gathered, stored or received since start, and
     * every stored one: an id not in it has no stored report, so its gather
     * starts on the NATS thread without asking SQLite. Bits are never
     * cleared (pruned reports stay "maybe"); a false "maybe" only costs a
     * lookup on a worker. Lock-free. */
    _Atomic uint64_t seen[SEEN_WORDS];
};

/* ---- change ids that may have a stored report ------------------------------- */

static uint64_t id_hash(const char *id)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211u;
    return h;
}

/* Three 20-bit positions from one hash. */
static void seen_add(sonar_coordinator *c, const char *id)
{
    uint64_t h = id_hash(id);
    for (int k = 0; k < 3; k++, h >>= 20)
        atomic_fetch_or(&c->seen[(h & 0xfffff) >> 6], (uint64_t)1 << (h & 63));
}

static bool seen_maybe(sonar_coordinator *c, const char *id)
{
    uint64_t h = id_hash(id);
    for (int k = 0; k < 3; k++, h >>= 20)
        if (!(atomic_load(&c->seen[(h & 0xfffff) >> 6]) & ((uint64_t)1 << (h & 63))))
            return false;
    return true;
}

static void restore_report_id(void *closure, const char *change_id)
{
    seen_add(closure, change_id);
}

/* ---- restoring the registry from the store ---------------------------- */

static void restore_service(void *closure, const char *service, const char *version,
                            const char *depends_on_json, const char *checks_json,
                            int64_t wall_ms)
{
    sonar_coordinator *c = closure;
    json_t *deps = json_loads(depends_on_json, 0, NULL);
    json_t *checks = json_loads(checks_json, 0, NULL);
    if (sonar_registry_restore_service(c->reg, service, version, deps, checks, wall_ms) !=
        SONAR_OK)
        sonar_log(SONAR_LOG_WARN, "stored service skipped: %s", sonar_last_error());
    json_decref(deps);
    json_decref(checks);
}

static void restore_instance(void *closure, const char *service, const char *instance,
                             const char *version, const char *address, int64_t heartbeat_ms,
                             int64_t wall_ms)
{
    sonar_coordinator *c = closure;
    sonar_registry_restore_instance(c->reg, service, instance, version, address, heartbeat_ms,
                                    wall_ms, sonar_now_ms(), sonar_wall_ms());
}

/* ---- other coordinators ------------------------------------------------- */

/* Another coordinator is around for at least `for_ms` more. */
static void peer_heard(sonar_coordinator *c, int64_t for_ms)
{
    int64_t until = sonar_now_ms() + (for_ms > PEER_PRESENT_MS ? for_ms : PEER_PRESENT_MS);
    int64_t was = atomic_load(&c->peer_until_ms);
    while (was < until && !atomic_compare_exchange_weak(&c->peer_until_ms, &was, until)) {
    }
}

/* sonar_gather_claim_fn: claims change_id when another coordinator is
 * around (alone, every gather is ours: no claim, no cost). */
static bool claim_change(void *closure, const char *change_id)
{
    sonar_coordinator *c = closure;
    if (c->claims == NULL || sonar_now_ms() >= atomic_load(&c->peer_until_ms))
        return false;
    /* Gathered anew because the coordinator that gathered it is presumed
     * gone: its claim stands, and would only make this gather wait again. */
    if (sonar_remote_gone(c->remote, change_id))
        return false;
    return sonar_claims_send(c->claims, change_id, sonar_service_instance(c->svc));
}

/* ---- plain subscriptions (NATS threads: decode and memory only) -------- */

/* The token after `prefix` in the subject, if it is one valid name. */
static const char *subject_name(natsMsg *msg, const char *prefix)
{
    const char *subject = natsMsg_GetSubject(msg);
    size_t n = strlen(prefix);
    if (strncmp(subject, prefix, n) != 0 || !sonar_name_valid(subject + n))
        return NULL;
    return subject + n;
}

static void on_register(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    sonar_coordinator *c = closure;
    const char *reply = natsMsg_GetReply(msg);
    const char *name = subject_name(msg, SONAR_SUBJ_REGISTER_PREFIX);
    sonar_register_msg r = {0};
    char *deps = NULL, *checks = NULL;
    sonar_status s = name ? sonar_register_decode(&r, natsMsg_GetData(msg),
                                                  (size_t)natsMsg_GetDataLength(msg))
                          : sonar__fail(SONAR_ERR_INVALID, "bad subject %.200s",
                                        natsMsg_GetSubject(msg));
    if (s == SONAR_OK && strcmp(r.service, name) != 0)
        s = sonar__fail(SONAR_ERR_INVALID, "registration of %s published on the subject of %s",
                        r.service, name);
    if (s != SONAR_OK) {
        sonar_log(SONAR_LOG_DEBUG, "registration refused: %s", sonar_last_error());
        sonar_reply_error(nc, reply, sonar_reply_code(s), "invalid registration: %s",
                          sonar_last_error());
        goto out;
    }
    int64_t wall = sonar_wall_ms();
    bool fresh = false;
    s = sonar_registry_register(c->reg, &r, sonar_now_ms(), wall, &fresh);
    if (s == SONAR_ERR_STATE) { /* a coordinator's registration: ours, or a peer's */
        if (strcmp(r.instance, sonar_service_instance(c->svc)) != 0)
            peer_heard(c, 3 * r.heartbeat_ms);
        goto out;
    }
    if (s == SONAR_OK)
        s = sonar_registry_info_json(&r, &deps, &checks);
    if (s == SONAR_OK)
        s = sonar_store_enqueue_register(c->store, r.service, r.version, deps, checks,
                                         r.instance, r.address, r.heartbeat_ms, wall);
    if (s != SONAR_OK)
        sonar_log(SONAR_LOG_WARN, "registration of %s: %s", r.service, sonar_last_error());
    else if (fresh)
        sonar_log(SONAR_LOG_INFO, "instance %s of %s %s joined", r.instance, r.service,
                  r.version);
out:
    free(deps);
    free(checks);
    sonar_register_finish(&r);
    natsMsg_Destroy(msg);
}

static void on_leave(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    sonar_coordinator *c = closure;
    const char *reply = natsMsg_GetReply(msg);
    const char *name = subject_name(msg, SONAR_SUBJ_LEAVE_PREFIX);
    sonar_leave_msg l = {0};
    sonar_status s = name ? sonar_leave_decode(&l, natsMsg_GetData(msg),
                                               (size_t)natsMsg_GetDataLength(msg))
                          : sonar__fail(SONAR_ERR_INVALID, "bad subject %.200s",
                                        natsMsg_GetSubject(msg));
    if (s == SONAR_OK && strcmp(l.service, name) != 0)
        s = sonar__fail(SONAR_ERR_INVALID, "leave of %s published on the subject of %s",
                        l.service, name);
    if (s != SONAR_OK) {
        sonar_reply_error(nc, reply, sonar_reply_code(s), "invalid leave: %s",
                          sonar_last_error());
        goto out;
    }
    if (sonar_registry_leave(c->reg, l.service, l.instance) == SONAR_OK) {
        sonar_log(SONAR_LOG_INFO, "instance %s of %s left", l.instance, l.service);
        if (sonar_store_enqueue_leave(c->store, l.service, l.instance) != SONAR_OK)
            sonar_log(SONAR_LOG_WARN, "leave of %s: %s", l.service, sonar_last_error());
    }
out:
    sonar_leave_finish(&l);
    natsMsg_Destroy(msg);
}

/* A report of another coordinator, live or replayed from the stream: stored
 * too (the first stored copy of a change id stays), so history and a retry
 * that lands here find it, and handed to retries waiting for it. Quick: a
 * decode and queueing. A garbage message gets an error reply if it has a
 * reply subject. */
static void take_report(sonar_coordinator *c, natsMsg *msg, const char *reply,
                        int64_t stored_wall_ms)
{
    const char *from = NULL;
    if (natsMsgHeader_Get(msg, HDR_COORDINATOR, &from) == NATS_OK && from != NULL &&
        strcmp(from, sonar_service_instance(c->svc)) == 0)
        return;
    const char *name = subject_name(msg, SONAR_SUBJ_REPORT_PREFIX);
    sonar_report_msg r = {0};
    const char *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);
    sonar_status s = name ? sonar_report_decode(&r, data, (size_t)len)
                          : sonar__fail(SONAR_ERR_INVALID, "bad subject %.200s",
                                        natsMsg_GetSubject(msg));
    if (s == SONAR_OK && strcmp(r.service, name) != 0)
        s = sonar__fail(SONAR_ERR_INVALID, "report of %s published on the subject of %s",
                        r.service, name);
    if (s != SONAR_OK) {
        sonar_reply_error(c->nc, reply, sonar_reply_code(s), "invalid report: %s",
                          sonar_last_error());
    } else {
        seen_add(c, r.change_id);
        peer_heard(c, PEER_PRESENT_MS);
        sonar_remote_report(c->remote, r.change_id, data, (size_t)len);
        char *text = strndup(data, (size_t)len);
        if (text == NULL ||
            sonar_store_enqueue_report(c->store, r.change_id, r.service,
                                       sonar_outcome_str(r.verdict), stored_wall_ms,
                                       text) != SONAR_OK)
            sonar_log(SONAR_LOG_WARN, "report of change %s not stored", r.change_id);
        free(text);
        /* Queued to the store first: a gather here that adopts it leaves the
         * table only once it is stored (change_ended()). */
        if (sonar_gatherer_adopt(c->gatherer, r.change_id, data, (size_t)len, r.verdict))
            atomic_fetch_add(&c->reports_adopted, 1);
    }
    sonar_report_finish(&r);
}

static void on_report(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    take_report(closure, msg, natsMsg_GetReply(msg), sonar_wall_ms());
    natsMsg_Destroy(msg);
}

/* On the catch-up thread: a report from the stream (see catchup.h). Its
 * reply subject is the consumer's acknowledgement, not a requester. */
static void on_replayed_report(void *closure, natsMsg *msg, int64_t stored_wall_ms)
{
    sonar_coordinator *c = closure;
    take_report(c, msg, NULL, stored_wall_ms);
    /* A long replay (a new coordinator takes the whole stream) must not
     * outrun the writer: its queue is bounded, and registrations share it. */
    if (++c->replayed_unsynced >= CATCHUP_SYNC_EVERY) {
        c->replayed_unsynced = 0;
        sonar_store_sync(c->store);
    }
}

/* sonar.discover (a coordinator or collector that just started): our
 * running gathers are announced again, so a coordinator started while they
 * run knows them and a retry landing there waits for their reports. Garbage
 * is answered by the libsonar service, which listens here too. */
static void on_discover(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    sonar_coordinator *c = closure;
    if (sonar_discover_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg)) ==
        SONAR_OK)
        sonar_gatherer_reannounce(c->gatherer);
    natsMsg_Destroy(msg);
}

/* Gathers announced on sonar.gather.<id>: another coordinator's is noted, so
 * a retry of that change landing here waits for its report. Ours are in
 * the gatherer's table already (it announces after adding them). */
static void on_gather(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    sonar_coordinator *c = closure;
    const char *reply = natsMsg_GetReply(msg);
    const char *name = subject_name(msg, "sonar.gather.");
    json_t *v = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    const char *type = json_string_value(json_object_get(v, "type"));
    const char *cid = json_string_value(json_object_get(v, "change_id"));
    json_t *timeout = json_object_get(v, "timeout_ms");
    if (name == NULL || type == NULL || strcmp(type, "sonar.gather.v1") != 0 ||
        !sonar_name_valid(cid) || strcmp(cid, name) != 0 || !json_is_integer(timeout) ||
        json_integer_value(timeout) <= 0 || json_integer_value(timeout) > SONAR_MAX_TIMEOUT_MS) {
        sonar_reply_error(nc, reply, 400,
                          "invalid gather announcement on %.200s: needs type sonar.gather.v1,"
                          " the change_id of its subject and a timeout_ms in 1..%d",
                          natsMsg_GetSubject(msg), SONAR_MAX_TIMEOUT_MS);
    } else {
        sonar_gather *mine = NULL;
        if (sonar_gatherer_join(c->gatherer, cid, &mine) == SONAR_OK) {
            sonar_gatherer_release(c->gatherer, mine);
        } else {
            peer_heard(c, PEER_PRESENT_MS);
            seen_add(c, cid); /* a retry goes to a worker, which waits on it */
            sonar_remote_begun(c->remote, cid, sonar_now_ms() + json_integer_value(timeout));
        }
    }
    json_decref(v);
    natsMsg_Destroy(msg);
}

/* ---- endpoints (worker threads) ------------------------------------------ */

static sonar_status respond_json(sonar_request *req, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (text == NULL)
        return sonar_request_respond_error(req, 500, "out of memory");
    sonar_status s = sonar_request_respond(req, text, strlen(text));
    free(text);
    return s;
}

/* The request body: empty (NULL in *out) or a JSON object; otherwise a 400 reply. */
static bool request_body(sonar_request *req, json_t **out)
{
    *out = NULL;
    size_t len = sonar_request_len(req);
    const char *data = sonar_request_data(req);
    bool blank = true;
    for (size_t i = 0; i < len && blank; i++)
        blank = data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n';
    if (blank)
        return true;
    json_error_t err;
    json_t *doc = len <= SONAR_MAX_MESSAGE_BYTES ? json_loadb(data, len, 0, &err) : NULL;
    if (!json_is_object(doc)) {
        json_decref(doc);
        sonar_request_respond_error(req, 400, "the request body must be empty or a JSON object%s%s",
                                    len > SONAR_MAX_MESSAGE_BYTES ? " (too large)" : ": ",
                                    len > SONAR_MAX_MESSAGE_BYTES ? "" : err.text);
        return false;
    }
    *out = doc;
    return true;
}

static sonar_status api_services(sonar_request *req, void *closure)
{
    sonar_coordinator *c = closure;
    json_t *body, *doc;
    if (!request_body(req, &body))
        return SONAR_OK;
    json_decref(body);
    if (sonar_registry_services_json(c->reg, sonar_now_ms(), &doc) != SONAR_OK)
        return sonar_request_respond_error(req, 500, "%s", sonar_last_error());
    return respond_json(req, doc);
}

static sonar_status api_graph(sonar_request *req, void *closure)
{
    sonar_coordinator *c = closure;
    json_t *body, *doc;
    if (!request_body(req, &body))
        return SONAR_OK;
    json_decref(body);
    if (sonar_registry_graph_json(c->reg, &doc) != SONAR_OK)
        return sonar_request_respond_error(req, 500, "%s", sonar_last_error());
    return respond_json(req, doc);
}

/* A required name field of the body; replies 400 and returns NULL when absent or invalid. */
static const char *body_name(sonar_request *req, json_t *body, const char *field)
{
    const char *v = json_string_value(json_object_get(body, field));
    if (!sonar_name_valid(v)) {
        sonar_request_respond_error(req, 400, "\"%s\" is %s: it must match ^[A-Za-z0-9_-]{1,64}$",
                                    field, v ? "invalid" : "missing");
        return NULL;
    }
    return v;
}

/* Reads of stored reports see every report already replied: the reply
 * leaves before the report is stored (storing is background work), and a
 * client may ask right after. Waits until those are stored (at most
 * SONARD_SETTLE_MS; the read goes ahead anyway then). On a worker. */
static void settle(sonar_coordinator *c)
{
    if (!sonar_gatherer_wait_settled(c->gatherer, SONARD_SETTLE_MS))
        sonar_log(SONAR_LOG_WARN, "reports replied %d ms ago are not stored yet: the read may "
                  "miss them", SONARD_SETTLE_MS);
}

static sonar_status api_report(sonar_request *req, void *closure)
{
    sonar_coordinator *c = closure;
    json_t *body;
    if (!request_body(req, &body))
        return SONAR_OK;
    const char *cid = body_name(req, body, "change_id");
    if (cid != NULL) {
        char *text = NULL;
        settle(c);
        sonar_status s = sonar_store_get_report(c->store, cid, &text);
        if (s == SONAR_OK)
            sonar_request_respond(req, text, strlen(text));
        else
            sonar_request_respond_error(req, s == SONAR_ERR_NOT_FOUND ? 404 : 500, "%s",
                                        sonar_last_error());
        free(text);
    }
    json_decref(body);
    return SONAR_OK;
}

static sonar_status api_history(sonar_request *req, void *closure)
{
    sonar_coordinator *c = closure;
    json_t *body;
    if (!request_body(req, &body))
        return SONAR_OK;
    const char *service = body_name(req, body, "service");
    json_t *limit_v = json_object_get(body, "limit");
    json_int_t limit = SONARD_HISTORY_DEFAULT;
    if (service == NULL)
        goto out;
    if (limit_v != NULL) {
        if (!json_is_integer(limit_v) || json_integer_value(limit_v) < 1 ||
            json_integer_value(limit_v) > SONARD_HISTORY_MAX) {
            sonar_request_respond_error(req, 400, "\"limit\" must be an integer from 1 to %d",
                                        SONARD_HISTORY_MAX);
            goto out;
        }
        limit = json_integer_value(limit_v);
    }
    json_t *reports = NULL;
    settle(c);
    if (sonar_store_history(c->store, service, (int)limit, &reports) != SONAR_OK) {
        sonar_request_respond_error(req, 500, "%s", sonar_last_error());
        goto out;
    }
    json_t *doc = json_pack("{s:s, s:s, s:o}", "type", "sonar.history.v1", "service", service,
                            "reports", reports);
    if (doc == NULL)
        sonar_request_respond_error(req, 500, "out of memory");
    else
        respond_json(req, doc);
out:
    json_decref(body);
    return SONAR_OK;
}

/* Publishes the report on sonar.report.<service>, marked as ours. */
static void publish_report(sonar_coordinator *c, const char *service, const char *json)
{
    char *subject = NULL;
    natsMsg *m = NULL;
    if (sonar_subject(&subject, SONAR_SUBJ_REPORT_PREFIX, service, NULL) != SONAR_OK)
        return;
    natsStatus ns = natsMsg_Create(&m, subject, NULL, json, (int)strlen(json));
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(m, HDR_COORDINATOR, sonar_service_instance(c->svc));
    if (ns == NATS_OK)
        ns = natsConnection_PublishMsg(c->nc, m);
    if (ns != NATS_OK)
        sonar_log(SONAR_LOG_WARN, "publishing the report on %s: %s", subject,
                  natsStatus_GetText(ns));
    natsMsg_Destroy(m);
    free(subject);
}

typedef struct change_job change_job;
static void change_stored(void *arg, sonar_status status, const char *why);

/* Stores the report of cj's gather and publishes it on
 * sonar.report.<service>: through the outbox (in the same transaction,
 * into the SONAR_EVENTS stream) when the server has JetStream, else
 * directly on core NATS. Stored on the store's writer thread, at its lower
 * priority (the reply went out already); change_stored() runs there when
 * done. Quick: runs where the gather ended. */
static sonar_status store_and_publish(change_job *cj, const char *report, bool publish);

static json_t *change_stats(void *closure)
{
    sonar_coordinator *c = closure;
    json_t *data = json_object();
    json_object_set_new(data, "outbox", c->outbox ? sonar_outbox_stats_json(c->outbox) : json_null());
    /* Gathers of other coordinators this one would wait for on a retry. */
    json_object_set_new(data, "remote_gathers",
                        json_integer(c->remote ? (json_int_t)sonar_remote_count(c->remote) : 0));
    /* This coordinator's own view (each has its registry). */
    int64_t now = sonar_now_ms();
    json_object_set_new(data, "services",
                        json_pack("{s:I, s:I}", "known", (json_int_t)sonar_registry_count(c->reg),
                                  "live", (json_int_t)sonar_registry_live_count(c->reg, now)));
    /* Reports of others replayed from the stream after a start or reconnect. */
    json_t *cu = json_null();
    if (c->catchup != NULL) {
        sonar_catchup_stats cs;
        sonar_catchup_stats_get(c->catchup, &cs);
        cu = json_pack("{s:I, s:I, s:I}", "runs", (json_int_t)cs.runs, "replayed",
                       (json_int_t)cs.replayed, "failures", (json_int_t)cs.failures);
    }
    json_object_set_new(data, "catchup", cu);
    /* Claims (several coordinators): made, lost to another, reports adopted. */
    int64_t made = 0, lost = 0;
    if (c->claims != NULL)
        sonar_claims_counts(c->claims, &made, &lost);
    json_object_set_new(data, "claims",
                        json_pack("{s:b, s:I, s:I, s:I}", "peers",
                                  sonar_now_ms() < atomic_load(&c->peer_until_ms), "made",
                                  (json_int_t)made, "lost", (json_int_t)lost, "adopted",
                                  (json_int_t)atomic_load(&c->reports_adopted)));
    return data;
}

/* Ensures the events stream and starts the outbox relay; without JetStream
 * sonard still works, publishing reports on core NATS only. */
static void start_events(sonar_coordinator *c)
{
    const char *subjects[] = {SONAR_SUBJ_REPORT_PREFIX "*", SONAR_SUBJ_HEALTH_PREFIX "*", NULL};
    sonar_stream_config sc = {.name = SONAR_EVENTS_STREAM, .subjects = subjects,
                              .duplicate_window_ms = 120000,
                              .max_age_ms = SONAR_EVENTS_MAX_AGE_MS};
    /* Publishing reports is background work, like storing them. */
    sonar_outbox_config oc = {.name = SONARD_NAME, .relay_nice = SONARD_WRITER_NICE};
    if (sonar_stream_ensure(c->nc, &sc) != SONAR_OK) {
        sonar_log(SONAR_LOG_WARN,
                  "no %s stream (%s): reports are published on core NATS only, "
                  "`sonar watch --since` cannot replay them",
                  SONAR_EVENTS_STREAM, sonar_last_error());
        return;
    }
    c->have_stream = true;
    if (sonar_outbox_create(&c->outbox, c->bus, c->db_path, &oc) != SONAR_OK) {
        sonar_log(SONAR_LOG_WARN, "outbox relay not started (%s): reports on core NATS only",
                  sonar_last_error());
        c->outbox = NULL;
    }
}

/* Replays the other coordinators' reports this one missed while it was
 * down: from shortly before the newest report it stored (all within the
 * retention when it has none), and after every reconnect (catchup.h). */
static sonar_status start_catchup(sonar_coordinator *c)
{
    int64_t newest = 0;
    sonar_status s = sonar_store_newest_report_ms(c->store, &newest);
    if (s != SONAR_OK)
        return s;
    int64_t oldest_kept = sonar_wall_ms() - c->cfg.retention_ms;
    int64_t from = newest > 0 ? newest - SONARD_CATCHUP_BACK_MS : oldest_kept;
    if (from < oldest_kept)
        from = oldest_kept;
    return sonar_catchup_start(&c->catchup, c->nc, SONAR_EVENTS_STREAM,
                               SONAR_SUBJ_REPORT_PREFIX "*", from > 0 ? from : 0,
                               on_replayed_report, c);
}

/* A change request from its arrival until its report was stored (starter)
 * or its gather ended (joiner). The request is kept (sonar_request_keep())
 * while the gather runs, so that no worker waits for it. */
struct change_job {
    sonar_coordinator *c;
    sonar_request *req;
    sonar_change_msg ch;
    sonar_gather *ga; /* the gather begun or joined; NULL before */
    int64_t started_ms;
    sonar_outcome verdict; /* of the report, once the gather ended */
    bool joined;
};

static void change_job_free(change_job *cj)
{
    sonar_change_finish(&cj->ch);
    free(cj);
}

/* The report of our gather is stored (writer thread): the gather leaves the
 * table, so a later announcement of its id finds the stored report. */
static void change_stored(void *arg, sonar_status status, const char *why)
{
    change_job *cj = arg;
    sonar_coordinator *c = cj->c;
    const sonar_change_msg *ch = &cj->ch;
    if (status != SONAR_OK)
        sonar_log(SONAR_LOG_ERROR, "change %s: storing the report: %s", ch->change_id, why);
    else if (c->outbox != NULL)
        sonar_outbox_notify(c->outbox);
    /* Logged here, on the writer's lower priority, not right after the reply. */
    sonar_log(SONAR_LOG_INFO, "change %s of %s %s: %s", ch->change_id, ch->service, ch->version,
              sonar_outcome_str(cj->verdict));
    sonar_gatherer_finish(c->gatherer, cj->ga);
    sonar_request_done(cj->req);
    change_job_free(cj);
}

static sonar_status store_and_publish(change_job *cj, const char *report, bool publish)
{
    sonar_coordinator *c = cj->c;
    const sonar_change_msg *ch = &cj->ch;
    const char *headers[] = {HDR_COORDINATOR, sonar_service_instance(c->svc), NULL};
    char *subject = NULL; /* NULL: the report row only, no outbox row */
    sonar_status s = SONAR_OK;
    if (publish && c->outbox == NULL)
        publish_report(c, ch->service, report);
    else if (publish)
        s = sonar_subject(&subject, SONAR_SUBJ_REPORT_PREFIX, ch->service, NULL);
    if (s == SONAR_OK)
        s = sonar_store_submit_report_event(c->store, ch->change_id, ch->service,
                                            sonar_outcome_str(cj->verdict), sonar_wall_ms(),
                                            report, subject, subject ? headers : NULL,
                                            change_stored, cj);
    free(subject);
    return s;
}

/* The gather ended and the request was answered with its report (the
 * thread that ended it: a NATS thread, the deadline thread, or cancel). A
 * starter stores and publishes the report; a joiner is done. */
static void change_ended(void *arg, sonar_gather *ga, sonar_status status, const char *report,
                         sonar_outcome verdict)
{
    change_job *cj = arg;
    sonar_coordinator *c = cj->c;
    const sonar_change_msg *ch = &cj->ch;
    if (cj->joined) {
        sonar_gatherer_release(c->gatherer, ga);
        sonar_request_done(cj->req);
        change_job_free(cj);
        return;
    }
    if (status == SONAR_OK) {
        sonard_metrics_report(c->metrics, verdict, sonar_now_ms() - cj->started_ms);
        cj->verdict = verdict;
        /* The gather stays in the table until stored: a retry meanwhile joins
         * it. Another coordinator's report it adopted is theirs to publish
         * (and queued to our store already): stored only, so that the gather
         * leaves the table after it. */
        if (store_and_publish(cj, report, !sonar_gather_adopted(ga)) == SONAR_OK)
            return; /* change_stored() follows */
        sonar_log(SONAR_LOG_ERROR, "change %s: storing the report: %s", ch->change_id,
                  sonar_last_error());
    } else {
        sonar_log(SONAR_LOG_ERROR, "change %s: %s", ch->change_id, sonar_status_str(status));
    }
    sonar_gatherer_finish(c->gatherer, ga);
    sonar_request_done(cj->req);
    change_job_free(cj);
}

/* Keeps the request and attaches it to the gather (begun or joined): the
 * report is the reply, and change_ended() follows. From here the gather's
 * end owns cj and the request. */
static void change_attach(change_job *cj, sonar_request *req)
{
    if (sonar_request_keep(req) != SONAR_OK) { /* cannot happen: the handlers are fit */
        sonar_request_respond_error(req, 500, "change %s: %s", cj->ch.change_id,
                                    sonar_last_error());
        if (cj->joined)
            sonar_gatherer_release(cj->c->gatherer, cj->ga);
        else
            sonar_gatherer_finish(cj->c->gatherer, cj->ga);
        change_job_free(cj);
        return;
    }
    cj->req = req;
    sonar_gather_attach(cj->ga, req, change_ended, cj);
}

/* Validates and decodes the announcement, fills in a generated id and the
 * default timeout. Replies with an error and returns false when invalid. */
static bool change_prepare(sonar_coordinator *c, sonar_request *req, sonar_change_msg *ch,
                           bool *fresh_id)
{
    const char *subject = sonar_request_subject(req);
    size_t plen = strlen(SONAR_SUBJ_CHANGE_PREFIX);
    const char *name = strncmp(subject, SONAR_SUBJ_CHANGE_PREFIX, plen) == 0 ? subject + plen
                                                                              : "";
    if (!sonar_name_valid(name)) {
        sonar_request_respond_error(req, 400, "bad change subject %.200s", subject);
        return false;
    }
    sonar_log(SONAR_LOG_DEBUG, "announcement on %s: %.*s", subject, (int)sonar_request_len(req),
              sonar_request_data(req));
    sonar_status s = sonar_change_decode(ch, sonar_request_data(req), sonar_request_len(req));
    if (s != SONAR_OK) {
        sonar_request_respond_error(req, sonar_reply_code(s), "invalid change: %s",
                                    sonar_last_error());
        return false;
    }
    if (strcmp(ch->service, name) != 0) {
        sonar_request_respond_error(req, 400, "change of %s announced on the subject of %s",
                                    ch->service, name);
        return false;
    }
    *fresh_id = ch->change_id == NULL;
    if (ch->change_id == NULL) {
        char generated[32];
        sonar_random_id(generated);
        if ((ch->change_id = strdup(generated)) == NULL) {
            sonar_request_respond_error(req, 500, "out of memory");
            return false;
        }
    }
    if (ch->timeout_ms <= 0)
        ch->timeout_ms = c->cfg.default_timeout_ms;
    return true;
}

/* Starts (or, in a race, joins) the gather and attaches the request to it,
 * so the report is the reply. Quick: runs on the NATS thread or a worker.
 * Owns cj: on failure it answers the request and frees cj. */
static void change_begin(change_job *cj, sonar_request *req)
{
    seen_add(cj->c, cj->ch.change_id); /* before it can be stored */
    sonar_status s = sonar_gatherer_begin(cj->c->gatherer, &cj->ch, &cj->ga, &cj->joined);
    if (s != SONAR_OK) {
        sonar_request_respond_error(req, sonar_reply_code(s), "change %s: %s", cj->ch.change_id,
                                    sonar_last_error());
        change_job_free(cj);
        return;
    }
    change_attach(cj, req);
}

/* On a worker, for an id that may have a report already: another
 * coordinator's gather, or the stored report, else our gather begins. */
static sonar_status change_continue(sonar_request *req, void *closure)
{
    change_job *cj = closure;
    sonar_coordinator *c = cj->c;
    const sonar_change_msg *ch = &cj->ch;
    char *report = NULL;
    /* Another coordinator gathers this change: its report is the answer. */
    bool found = sonar_remote_wait(c->remote, ch->change_id, &report);
    if (!found) {
        sonar_status s = sonar_store_get_report(c->store, ch->change_id, &report);
        if (s != SONAR_OK && s != SONAR_ERR_NOT_FOUND)
            sonar_log(SONAR_LOG_WARN, "change %s: %s", ch->change_id, sonar_last_error());
        found = s == SONAR_OK;
    }
    if (!found) {
        change_begin(cj, req);
        return SONAR_OK;
    }
    sonar_request_respond(req, report, strlen(report));
    free(report);
    change_job_free(cj);
    return SONAR_OK;
}

/* The change endpoint's fast handler, on the NATS thread: decoding, a
 * running gather joined or a new one begun (both in memory) with the
 * request kept until the gather ends. Only an id that may have a stored
 * report goes to a worker, to ask SQLite before its gather begins. */
static sonar_status on_change(sonar_request *req, void *closure)
{
    sonar_coordinator *c = closure;
    sonard_metrics_change(c->metrics);
    change_job *cj = calloc(1, sizeof *cj);
    if (cj == NULL)
        return sonar_request_respond_error(req, 500, "out of memory");
    cj->c = c;
    cj->started_ms = sonar_now_ms();
    bool fresh_id = false;
    if (!change_prepare(c, req, &cj->ch, &fresh_id)) {
        change_job_free(cj);
        return SONAR_OK;
    }
    if (sonar_gatherer_join(c->gatherer, cj->ch.change_id, &cj->ga) == SONAR_OK) {
        cj->joined = true;
        change_attach(cj, req);
    } else if (fresh_id || !seen_maybe(c, cj->ch.change_id)) {
        change_begin(cj, req);
    } else if (sonar_request_defer(req, change_continue, cj) != SONAR_OK) {
        sonar_request_respond_error(req, 503, "change %s: %s", cj->ch.change_id,
                                    sonar_last_error());
        change_job_free(cj);
    }
    return SONAR_OK;
}

/* ---- lifecycle ------------------------------------------------------------- */

static sonar_status subscribe(sonar_coordinator *c, natsSubscription **sub, const char *subject,
                              natsMsgHandler cb)
{
    natsStatus ns = natsConnection_Subscribe(sub, c->nc, subject, cb, c);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(*sub, -1, 256 * 1024 * 1024);
    return ns == NATS_OK ? SONAR_OK : sonar_bus_status(ns, subject);
}

static void drain(natsConnection *nc, natsSubscription *sub)
{
    if (sub == NULL)
        return;
    /* Draining needs the server: while disconnected it could only time out. */
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED &&
        natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, 5000);
    else
        natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
}

static sonar_status add_endpoints(sonar_coordinator *c)
{
    /* The change endpoint is fast: its handler runs on the NATS thread. */
    sonar_status s = sonar_service_add_fast_endpoint(c->svc, "change",
                                                     SONAR_SUBJ_CHANGE_PREFIX "*", SONARD_NAME,
                                                     on_change, c);
    static const struct {
        const char *name, *subject;
        sonar_endpoint_fn fn;
    } eps[] = {
        {"services", "sonar.api.services", api_services},
        {"report", "sonar.api.report", api_report},
        {"history", "sonar.api.history", api_history},
        {"graph", "sonar.api.graph", api_graph},
    };
    for (size_t i = 0; s == SONAR_OK && i < sizeof eps / sizeof eps[0]; i++)
        s = sonar_service_add_endpoint(c->svc, eps[i].name, eps[i].subject, SONARD_NAME,
                                       eps[i].fn, c);
    return s;
}

/* Pruning runs every quarter of the retention, between 100 ms and a minute. */
static int64_t prune_interval(int64_t retention_ms)
{
    int64_t every = retention_ms / 4;
    return every < 100 ? 100 : every > 60000 ? 60000 : every;
}

sonar_status sonar_coordinator_start(sonar_coordinator **out, sonar_bus *bus,
                                     const sonar_coordinator_config *cfg)
{
    sonar_coordinator *c = calloc(1, sizeof *c);
    if (c == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    c->cfg = *cfg;
    c->db_path = sonar__strdup(cfg->db_path);
    c->version = sonar__strdup(cfg->version ? cfg->version : "0.0.0");
    c->cfg.db_path = c->db_path;
    c->cfg.version = c->version;
    c->bus = bus;
    c->nc = sonar_bus_nats(bus);
    sonar_status s = c->db_path && c->version ? SONAR_OK
                                              : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    if (s == SONAR_OK)
        s = sonar_store_open(&c->store, c->db_path);
    if (s == SONAR_OK)
        s = sonar_registry_create(&c->reg, SONARD_NAME);
    if (s == SONAR_OK)
        s = sonar_store_load(c->store, restore_service, restore_instance, c);
    if (s == SONAR_OK)
        s = sonar_store_report_ids(c->store, restore_report_id, c);
    if (s == SONAR_OK)
        s = sonar_store_start_writer(c->store, c->cfg.retention_ms, prune_interval(c->cfg.retention_ms));
    if (s == SONAR_OK) {
        sonar_service_config sc = {
            .name = SONARD_NAME,
            .version = c->version,
            .description = "sonar coordinator: gathers checks for announced changes",
            .endpoint_workers = cfg->workers,
            .no_check_endpoint = true, /* a coordinator does not answer checks */
        };
        s = sonar_service_create(&c->svc, bus, &sc);
    }
    if (s == SONAR_OK)
        s = add_endpoints(c);
    if (s == SONAR_OK) {
        start_events(c);
        s = sonar_service_set_endpoint_stats(c->svc, "change", change_stats, c);
    }
    if (s == SONAR_OK)
        s = sonard_metrics_create(&c->metrics, c->reg, c->outbox);
    if (s == SONAR_OK && cfg->metrics_listen != NULL)
        s = sonard_metrics_listen(c->metrics, cfg->metrics_listen);
    if (s == SONAR_OK)
        s = sonar_gatherer_create(&c->gatherer, c->nc, c->reg, SONARD_NAME);
    if (s == SONAR_OK && c->have_stream) {
        if (sonar_claims_open(&c->claims, c->nc, c->gatherer) == SONAR_OK)
            sonar_gatherer_set_claimer(c->gatherer, claim_change, c);
        else
            sonar_log(SONAR_LOG_WARN, "no claims (%s): with several coordinators, two "
                      "announcements of one change at the same moment can give two reports",
                      sonar_last_error());
    }
    if (s == SONAR_OK)
        s = sonar_remote_create(&c->remote);
    if (s == SONAR_OK)
        s = subscribe(c, &c->sub_register, SONAR_SUBJ_REGISTER_PREFIX "*", on_register);
    if (s == SONAR_OK)
        s = subscribe(c, &c->sub_leave, SONAR_SUBJ_LEAVE_PREFIX "*", on_leave);
    if (s == SONAR_OK)
        s = subscribe(c, &c->sub_report, SONAR_SUBJ_REPORT_PREFIX "*", on_report);
    if (s == SONAR_OK)
        s = subscribe(c, &c->sub_gather, "sonar.gather.*", on_gather);
    if (s == SONAR_OK)
        s = subscribe(c, &c->sub_discover, SONAR_SUBJ_DISCOVER, on_discover);
    /* After the live subscription, on the same connection: the server has
     * it before the replay's consumer, so no report falls between them. */
    if (s == SONAR_OK && c->have_stream)
        s = start_catchup(c);
    /* Before taking changes: services re-register and the other
     * coordinators announce their running gathers again (on_discover), so
     * a retry of one of those landing here waits for its report. Their
     * answers arrive within a round trip. */
    if (s == SONAR_OK)
        s = sonar_bus_discover(c->bus);
    if (s == SONAR_OK)
        s = sonar_service_start(c->svc); /* flushes our subscriptions too */
    if (s != SONAR_OK) {
        sonar_status keep = s;
        char why[1024];
        snprintf(why, sizeof why, "%s", sonar_last_error());
        sonar_coordinator_stop(c);
        return sonar__fail(keep, "%s", why);
    }
    sonar_log(SONAR_LOG_INFO, "sonard %s up: %zu known services, database %s", c->version,
              sonar_registry_count(c->reg), c->db_path);
    *out = c;
    return SONAR_OK;
}

void sonar_coordinator_stop(sonar_coordinator *c)
{
    if (c == NULL)
        return;
    if (c->gatherer != NULL)
        sonar_gatherer_cancel_all(c->gatherer);
    if (c->remote != NULL)
        sonar_remote_cancel(c->remote);
    drain(c->nc, c->sub_register);
    drain(c->nc, c->sub_leave);
    drain(c->nc, c->sub_report);
    drain(c->nc, c->sub_gather);
    drain(c->nc, c->sub_discover);
    sonar_catchup_destroy(c->catchup);
    sonar_service_destroy(c->svc); /* waits for the change handlers to reply */
    sonard_metrics_destroy(c->metrics);
    sonar_outbox_destroy(c->outbox); /* unpublished reports stay for the next start */
    sonar_claims_close(c->claims); /* no claim's answer reaches the gatherer after this */
    sonar_gatherer_destroy(c->gatherer);
    sonar_remote_destroy(c->remote);
    sonar_store_close(c->store);
    sonar_registry_destroy(c->reg);
    free(c->db_path);
    free(c->version);
    free(c);
}
