/* sonar watch: a live feed of what happens on the bus. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "cli_common.h"
#include "cli_format.h"
#include "commands.h"

/* Where reports are replayed from by --since (sonard's outbox stream). */
#define REPORT_STREAM SONAR_EVENTS_STREAM
#define REPORT_STREAM_SUBJECTS SONAR_SUBJ_REPORT_PREFIX "*"
#define HEALTH_STREAM_SUBJECTS "sonar.health.*"

/* Gap fills after a reconnect get tags GAP_TAG_BASE, GAP_TAG_BASE + 1, ... */
enum { TAG_LIVE = 1, TAG_REPLAY = 2, /* and 3 */ GAP_TAG_BASE = 100 };

/* Stored events (reports, health transitions) remembered for de-duplication
 * before the memory is reset. */
#define STORED_SEEN_MAX 10000

static const char usage_text[] =
    "usage: sonar watch [service] [--json] [--since DURATION]\n"
    "\n"
    "Prints what happens on the bus as it happens, one line per event:\n"
    "registrations (first sighting of an instance, and when its version or\n"
    "address changes; heartbeats are not repeated), leaves, change\n"
    "announcements, gathers, check results, reports and health transitions\n"
    "(statusd). With a service, only events about that service (its changes'\n"
    "gathers and results included).\n"
    "Runs until interrupted (Ctrl-C or SIGTERM, exit 0). When the bus is lost it\n"
    "says so, reconnects by itself and says when it is back; the reports and health\n"
    "transitions published meanwhile are replayed from the " REPORT_STREAM " stream\n"
    "when it exists, other events in between are missed.\n"
    "\n"
    "Options:\n"
    "  --json             one JSON object per line:\n"
    "                     {\"time\",\"event\",\"subject\",\"message\",\"replayed\"?}\n"
    "                     (a lost bus: {\"time\",\"event\":\"disconnected\",\"server\"},\n"
    "                     then \"reconnected\" with \"replaying\": true|false)\n"
    "  --since DURATION   first replay the reports and health transitions of the\n"
    "                     last DURATION (e.g. 1h)\n"
    "                     from the " REPORT_STREAM " JetStream stream\n"
    "\n"
    "Exit codes: 0 interrupted, 2 bad arguments, 3 error (bus unreachable).\n";

/* Set by the signal thread; read by the main loop. */
static atomic_bool stop_requested;

typedef struct signal_waiter {
    sigset_t set;
    sonar_cli_queue *q;
} signal_waiter;

/* Waits for SIGINT/SIGTERM (blocked in every thread) and wakes the loop. */
static void *wait_for_signal(void *arg)
{
    signal_waiter *w = arg;
    int sig = 0;
    sigwait(&w->set, &sig);
    atomic_store(&stop_requested, true);
    sonar_cli_queue_wake(w->q);
    return NULL;
}

/* Validates a feed message against the protocol. Returns false with the
 * reason in \p why. */
static bool valid_event(sonar_cli_event ev, const char *subject, const char *data, size_t len,
                        const json_t *v, char *why, size_t whylen)
{
    sonar_status s = SONAR_OK;
    const char *token = strrchr(subject, '.') + 1;
    switch (ev) {
    case SONAR_CLI_EV_REGISTER: {
        sonar_register_msg m;
        memset(&m, 0, sizeof m);
        s = sonar_register_decode(&m, data, len);
        if (s == SONAR_OK && strcmp(m.service, token) != 0) {
            snprintf(why, whylen, "registration of %s published on the subject of %s",
                     m.service, token);
            sonar_register_finish(&m);
            return false;
        }
        sonar_register_finish(&m);
        break;
    }
    case SONAR_CLI_EV_LEAVE: {
        sonar_leave_msg m;
        memset(&m, 0, sizeof m);
        s = sonar_leave_decode(&m, data, len);
        sonar_leave_finish(&m);
        break;
    }
    case SONAR_CLI_EV_CHANGE: {
        sonar_change_msg m;
        memset(&m, 0, sizeof m);
        s = sonar_change_decode(&m, data, len);
        sonar_change_finish(&m);
        break;
    }
    case SONAR_CLI_EV_GATHER: {
        /* No codec for sonar.gather.v1 in protocol.h: check its fields here. */
        const char *type = json_string_value(json_object_get(v, "type"));
        json_t *expected = json_object_get(v, "expected");
        if (type == NULL || strcmp(type, "sonar.gather.v1") != 0) {
            snprintf(why, whylen, "type is not sonar.gather.v1");
            return false;
        }
        if (!sonar_name_valid(json_string_value(json_object_get(v, "change_id"))) ||
            !sonar_name_valid(json_string_value(json_object_get(v, "service"))) ||
            !json_is_array(expected)) {
            snprintf(why, whylen, "gather needs a valid change_id, service and expected list");
            return false;
        }
        return true;
    }
    case SONAR_CLI_EV_RESULT: {
        sonar_result_msg m;
        memset(&m, 0, sizeof m);
        s = sonar_result_decode(&m, data, len);
        sonar_result_finish(&m);
        break;
    }
    case SONAR_CLI_EV_REPORT: {
        sonar_report_msg m;
        memset(&m, 0, sizeof m);
        s = sonar_report_decode(&m, data, len);
        sonar_report_finish(&m);
        break;
    }
    case SONAR_CLI_EV_HEALTH: {
        /* statusd's sonar.health.v1 (docs/statusd.md): no codec in protocol.h. */
        const char *type = json_string_value(json_object_get(v, "type"));
        const char *service = json_string_value(json_object_get(v, "service"));
        const char *target = json_string_value(json_object_get(v, "target"));
        const char *from = json_string_value(json_object_get(v, "from"));
        const char *to = json_string_value(json_object_get(v, "to"));
        json_t *err = json_object_get(v, "error");
        sonar_health_status st;
        if (type == NULL || strcmp(type, "sonar.health.v1") != 0) {
            snprintf(why, whylen, "type is not sonar.health.v1");
            return false;
        }
        if (!sonar_name_valid(service) || strcmp(service, token) != 0) {
            snprintf(why, whylen, "health event needs the service of its subject");
            return false;
        }
        if (target == NULL || *target == '\0' || from == NULL || to == NULL ||
            sonar_health_status_parse(from, &st) != SONAR_OK ||
            sonar_health_status_parse(to, &st) != SONAR_OK ||
            !json_is_string(json_object_get(v, "time")) ||
            !json_is_integer(json_object_get(v, "http_code")) ||
            !json_is_integer(json_object_get(v, "duration_ms")) ||
            !(err == NULL || json_is_null(err) || json_is_string(err))) {
            snprintf(why, whylen, "health event needs target, from, to (health statuses),"
                                  " time, http_code and duration_ms");
            return false;
        }
        return true;
    }
    case SONAR_CLI_EV_UNKNOWN:
        snprintf(why, whylen, "unexpected subject");
        return false;
    }
    if (s != SONAR_OK) {
        snprintf(why, whylen, "%s", sonar_last_error());
        return false;
    }
    return true;
}

typedef struct watch {
    bool json;
    int64_t started_wall_ms;
    sonar_cli_watch_filter *filter;
    json_t *stored_seen;  /* report change id or health key -> tag of the path that showed it */
    sonar_cli_queue *q;
    int gaps;             /* gap fills started */
} watch;

/* Handles one message from the queue. */
static void show(watch *w, natsMsg *msg, int tag)
{
    const char *subject = natsMsg_GetSubject(msg);
    const char *data = natsMsg_GetData(msg);
    size_t len = (size_t)natsMsg_GetDataLength(msg);
    int64_t now = sonar_wall_ms();
    sonar_cli_event ev = sonar_cli_event_kind(subject);
    char why[512] = "";
    json_t *v = sonar_cli_parse_object(data, len);
    /* Each line leaves at once, invalid ones too: a reader (a pipe, a
     * file, a test) must not wait for the next valid event to see it. */
    if (v == NULL) {
        sonar_cli_print_invalid(stdout, w->json, subject, sonar_cli_last_error(), now);
        fflush(stdout);
        return;
    }
    if (!valid_event(ev, subject, data, len, v, why, sizeof why)) {
        sonar_cli_print_invalid(stdout, w->json, subject, why, now);
        fflush(stdout);
        json_decref(v);
        return;
    }
    bool replayed = false;
    if (tag != TAG_LIVE) { /* from the stream: when it was stored */
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
            now = meta->Timestamp / 1000000;
            replayed = tag >= GAP_TAG_BASE || now < w->started_wall_ms;
            if (tag >= GAP_TAG_BASE && meta->NumPending == 0)
                sonar_cli_queue_unsubscribe(w->q, tag); /* caught up: the gap is filled */
            jsMsgMetaData_Destroy(meta);
        }
    }
    if (ev == SONAR_CLI_EV_REPORT || ev == SONAR_CLI_EV_HEALTH) {
        /* Stored events can come both from the stream and live: show them
         * once. A repeat on the same path (a re-announced change) is shown;
         * a gap fill shows only what no path showed yet. */
        char key[600];
        if (ev == SONAR_CLI_EV_REPORT)
            snprintf(key, sizeof key, "%s", json_string_value(json_object_get(v, "change_id")));
        else /* a transition: its target, time and new status */
            snprintf(key, sizeof key, "health %s %s %s %s",
                     json_string_value(json_object_get(v, "service")),
                     json_string_value(json_object_get(v, "target")),
                     json_string_value(json_object_get(v, "time")),
                     json_string_value(json_object_get(v, "to")));
        json_t *seen = json_object_get(w->stored_seen, key);
        if (seen && (tag >= GAP_TAG_BASE || json_integer_value(seen) != tag)) {
            json_decref(v);
            return;
        }
        if (seen == NULL) {
            if (json_object_size(w->stored_seen) >= STORED_SEEN_MAX)
                json_object_clear(w->stored_seen);
            json_object_set_new(w->stored_seen, key, json_integer(tag));
        }
    }
    if (sonar_cli_watch_filter_pass(w->filter, ev, subject, v)) {
        if (w->json)
            sonar_cli_print_event_json(stdout, ev, subject, v, now, replayed);
        else
            sonar_cli_print_event(stdout, ev, subject, v, now, replayed);
        fflush(stdout);
    }
    json_decref(v);
}

/* Whether the reports stream exists (creating *js when needed). When it
 * does not and \p say, says so on stderr: the feed goes on live. */
static bool reports_stream(natsConnection *nc, jsCtx **js, bool say)
{
    natsStatus ns = *js ? NATS_OK : natsConnection_JetStream(js, nc, NULL);
    if (ns != NATS_OK) {
        if (say)
            fprintf(stderr, "sonar watch: JetStream unavailable (%s): showing live events only\n",
                    natsStatus_GetText(ns));
        return false;
    }
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    ns = js_GetStreamInfo(&si, *js, REPORT_STREAM, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (ns == NATS_OK)
        return true;
    if (!say)
        return false;
    if (ns == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr)
        fprintf(stderr, "sonar watch: no stream %s on this server (is sonard's outbox "
                        "enabled?): nothing to replay, showing live events only\n",
                REPORT_STREAM);
    else
        fprintf(stderr, "sonar watch: cannot replay reports from %s: %s; showing live "
                        "events only\n", REPORT_STREAM, natsStatus_GetText(ns));
    return false;
}

/* Replays the reports (tagged \p tag) and the health transitions (tagged
 * \p tag + 1: each consumer is dropped on its own once caught up) stored
 * since \p from_wall_ms. */
static bool replay_reports(sonar_cli_queue *q, jsCtx *js, int64_t from_wall_ms, int tag)
{
    static const char *const subjects[] = {REPORT_STREAM_SUBJECTS, HEALTH_STREAM_SUBJECTS};
    for (int i = 0; i < 2; i++) {
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = REPORT_STREAM;
        so.Ordered = true;
        so.Config.DeliverPolicy = js_DeliverByStartTime;
        so.Config.OptStartTime = from_wall_ms * 1000000;
        if (sonar_cli_queue_subscribe_js(q, js, subjects[i], &so, tag + i) != SONAR_OK) {
            fprintf(stderr, "sonar watch: cannot replay %s: %s; showing live events only\n",
                    subjects[i], sonar_cli_last_error());
            return false;
        }
    }
    return true;
}

/* After a reconnect: replays the reports published since shortly before the
 * bus was lost (those also seen live are not shown twice). The consumer is
 * dropped once it caught up (see show()). */
static bool fill_gap(watch *w, natsConnection *nc, jsCtx **js, int64_t lost_wall_ms)
{
    if (!reports_stream(nc, js, false))
        return false;
    int tag = GAP_TAG_BASE + 2 * w->gaps++; /* and tag + 1 */
    return replay_reports(w->q, *js, lost_wall_ms - 2000, tag);
}

/* Subscribes the live feed, narrowed to one service where the subject allows. */
static int subscribe_live(sonar_cli_queue *q, natsConnection *nc, const char *service)
{
    static const char *const per_service[] = {"sonar.register.", "sonar.leave.",
                                              "sonar.change.", "sonar.report.",
                                              "sonar.health."};
    char subject[128];
    for (size_t i = 0; i < sizeof per_service / sizeof per_service[0]; i++) {
        snprintf(subject, sizeof subject, "%s%s", per_service[i], service ? service : "*");
        if (sonar_cli_queue_subscribe(q, nc, subject, TAG_LIVE) != SONAR_OK)
            return sonar_cli_die("watch", SONAR_CLI_EXIT_ERROR, "%s", sonar_cli_last_error());
    }
    if (sonar_cli_queue_subscribe(q, nc, "sonar.gather.*", TAG_LIVE) != SONAR_OK ||
        sonar_cli_queue_subscribe(q, nc, "sonar.result.*.*", TAG_LIVE) != SONAR_OK)
        return sonar_cli_die("watch", SONAR_CLI_EXIT_ERROR, "%s", sonar_cli_last_error());
    return SONAR_CLI_EXIT_OK;
}

int sonar_cmd_watch(int argc, char **argv)
{
    bool json = false;
    const char *since = NULL;
    const sonar_cli_opt opts[] = {
        {"json", 0, NULL, &json}, {"since", 0, &since, NULL}, {NULL, 0, NULL, NULL}};
    sonar_cli_args args;
    char err[256];
    if (!sonar_cli_parse(&args, argc, argv, opts, 1, err, sizeof err))
        return sonar_cli_die("watch", SONAR_CLI_EXIT_USAGE, "%s", err);
    if (args.help) {
        sonar_cli_usage(stdout, usage_text);
        return SONAR_CLI_EXIT_OK;
    }
    const char *service = args.n_pos ? args.pos[0] : NULL;
    if (service && sonar_name_check("service name", service) != SONAR_OK)
        return sonar_cli_die("watch", SONAR_CLI_EXIT_USAGE, "%s", sonar_last_error());
    int64_t since_ms = 0;
    if (since && sonar_parse_duration_ms(since, &since_ms) != SONAR_OK)
        return sonar_cli_die("watch", SONAR_CLI_EXIT_USAGE, "--since: %s", sonar_last_error());
    if (since && since_ms <= 0)
        return sonar_cli_die("watch", SONAR_CLI_EXIT_USAGE, "--since must be more than zero");

    /* Block the stop signals before any thread exists, so every thread
     * (nats.c's included) inherits the mask and only sigwait sees them. */
    signal_waiter waiter;
    sigemptyset(&waiter.set);
    sigaddset(&waiter.set, SIGINT);
    sigaddset(&waiter.set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &waiter.set, NULL);

    watch w = {.json = json, .started_wall_ms = sonar_wall_ms()};
    w.filter = sonar_cli_watch_filter_create(service);
    w.stored_seen = json_object();
    sonar_bus *bus = NULL;
    sonar_cli_queue *q = NULL;
    jsCtx *js = NULL;
    bool waiter_started = false;
    pthread_t waiter_thread;
    int rc = SONAR_CLI_EXIT_ERROR;
    if (w.filter == NULL || w.stored_seen == NULL || (q = sonar_cli_queue_create()) == NULL) {
        rc = sonar_cli_die("watch", SONAR_CLI_EXIT_ERROR, "out of memory");
        goto cleanup;
    }
    waiter.q = q;
    w.q = q;
    if (pthread_create(&waiter_thread, NULL, wait_for_signal, &waiter) != 0) {
        rc = sonar_cli_die("watch", SONAR_CLI_EXIT_ERROR, "cannot start the signal thread");
        goto cleanup;
    }
    waiter_started = true;
    if (sonar_cli_connect(&bus, &args) != SONAR_OK) {
        rc = sonar_cli_die("watch", SONAR_CLI_EXIT_ERROR, "%s", sonar_cli_last_error());
        goto cleanup;
    }
    natsConnection *nc = sonar_bus_nats(bus);
    rc = subscribe_live(q, nc, service);
    if (rc == SONAR_CLI_EXIT_OK && since_ms > 0 && reports_stream(nc, &js, true))
        replay_reports(q, js, sonar_wall_ms() - since_ms, TAG_REPLAY);
    if (rc != SONAR_CLI_EXIT_OK)
        goto cleanup;
    if (natsConnection_Flush(nc) != NATS_OK) {
        rc = sonar_cli_die("watch", SONAR_CLI_EXIT_ERROR, "lost the bus while subscribing");
        goto cleanup;
    }
    char server[512];
    snprintf(server, sizeof server, "%s", sonar_bus_url(bus));
    fprintf(stderr, "sonar watch: watching %s on %s (Ctrl-C to stop)\n",
            service ? service : "all services", server);
    bool up = true;
    int64_t lost_at = 0;
    while (!atomic_load(&stop_requested)) {
        natsMsg *msg = NULL;
        int tag = 0;
        /* A lost bus is a gap in the feed: say so when it starts and ends
         * (nats.c reconnects and subscribes again by itself), and replay
         * the reports of the gap when the stream has them. */
        bool now_up = natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
        if (now_up != up) {
            up = now_up;
            bool replaying = false;
            if (up) {
                snprintf(server, sizeof server, "%s", sonar_bus_url(bus));
                replaying = fill_gap(&w, nc, &js, lost_at);
            } else {
                lost_at = sonar_wall_ms();
            }
            sonar_cli_print_connection(stdout, json, up, server, replaying, sonar_wall_ms());
            fflush(stdout);
        }
        if (!sonar_cli_queue_pop(q, 250, &msg, &tag))
            continue;
        show(&w, msg, tag);
        natsMsg_Destroy(msg);
    }
    rc = SONAR_CLI_EXIT_OK;
cleanup:
    if (waiter_started) {
        if (!atomic_load(&stop_requested))
            pthread_kill(waiter_thread, SIGTERM); /* blocked: sigwait takes it */
        pthread_join(waiter_thread, NULL);
    }
    sonar_cli_queue_destroy(q);
    jsCtx_Destroy(js);
    sonar_bus_destroy(bus);
    sonar_cli_watch_filter_destroy(w.filter);
    json_decref(w.stored_seen);
    return rc;
}
