/* sonar announce: announce a candidate version, follow its checks, gate
 * the deploy with the exit code. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_common.h"
#include "cli_format.h"
#include "commands.h"

/* Exit codes of announce. */
enum { EXIT_PASS = 0, EXIT_FAIL = 1, EXIT_INCOMPLETE = 2, EXIT_ERROR = 3 };

/* How much longer than the gather's timeout we wait for the report. */
#define REPORT_MARGIN_MS 5000
#define DEFAULT_TIMEOUT_MS 10000

enum { TAG_REPLY = 1, TAG_GATHER, TAG_RESULT };

static const char usage_text[] =
    "usage: sonar announce <service> --address URL --version VERSION [options]\n"
    "\n"
    "Announces that <service> is about to change to VERSION, reachable at URL.\n"
    "The coordinator (sonard) asks every live service to run its checks against\n"
    "the candidate; each result is printed as it arrives, then the report.\n"
    "\n"
    "Options:\n"
    "  --address URL      where the candidate can be reached (required)\n"
    "  --version VERSION  the candidate's version (required)\n"
    "  --timeout DURATION how long the services have to answer, e.g. 500ms, 10s, 2m\n"
    "                     (default 10s)\n"
    "  --change-id ID     id of this change (default: a new random id); announcing\n"
    "                     the same id again returns the same report\n"
    "  --json             print only the final report as JSON\n"
    "\n"
    "Exit codes: 0 pass, 1 fail, 2 incomplete (someone did not answer),\n"
    "            3 error (bad arguments, bus unreachable, no coordinator answering).\n";

/* State of one announcement while its gather runs. */
typedef struct announce {
    const char *change_id;
    bool json;
    bool tty;           /* stdout is a terminal: draw the live progress line */
    bool progress_shown;
    int64_t expected;   /* -1 until the gather message arrives */
    json_t *expected_names; /* service -> true, from the gather message */
    json_t *answered;   /* responder -> true */
    int64_t deadline;   /* monotonic ms: the gather's end */
} announce;

static void clear_progress(announce *a)
{
    if (a->progress_shown) {
        fputs("\r\033[K", stdout);
        a->progress_shown = false;
    }
}

/* Answers from expected services (others may answer too, e.g. unregistered). */
static size_t expected_answers(const announce *a)
{
    size_t n = 0;
    const char *name;
    json_t *v;
    json_object_foreach(a->answered, name, v)
        n += json_object_get(a->expected_names, name) != NULL;
    return n;
}

static void draw_progress(announce *a)
{
    if (!a->tty || a->json)
        return;
    int64_t left = a->deadline - sonar_now_ms();
    if (left < 0)
        left = 0;
    fputs("\r\033[K", stdout);
    if (a->expected >= 0)
        printf("%zu of %" PRId64 " answered, %" PRId64 " s left", expected_answers(a),
               a->expected, (left + 999) / 1000);
    else
        printf("%zu answered, waiting for the coordinator...", json_object_size(a->answered));
    fflush(stdout);
    a->progress_shown = true;
}

static void on_gather(announce *a, const char *data, size_t len)
{
    json_t *g = sonar_cli_parse_object(data, len);
    if (g == NULL)
        return;
    const char *type = json_string_value(json_object_get(g, "type"));
    json_t *expected = json_object_get(g, "expected");
    /* Only the first: a coordinator announces a running gather again when
     * another one starts ("again": true). */
    if (a->expected < 0 && type && strcmp(type, "sonar.gather.v1") == 0 &&
        json_is_array(expected)) {
        a->expected = (int64_t)json_array_size(expected);
        size_t i;
        json_t *name;
        json_array_foreach(expected, i, name)
            if (json_is_string(name))
                json_object_set_new(a->expected_names, json_string_value(name), json_true());
        if (!a->tty && !a->json) {
            printf("waiting for %" PRId64 " service%s to answer\n", a->expected,
                   a->expected == 1 ? "" : "s");
            fflush(stdout);
        }
    }
    json_decref(g);
}

static void on_result(announce *a, const char *data, size_t len)
{
    sonar_result_msg r;
    memset(&r, 0, sizeof r);
    if (sonar_result_decode(&r, data, len) != SONAR_OK) {
        if (!a->json) {
            clear_progress(a);
            fprintf(stderr, "sonar announce: ignored an invalid result: %s\n",
                    sonar_last_error());
        }
        return;
    }
    bool ours = strcmp(r.change_id, a->change_id) == 0;
    if (ours)
        json_object_set_new(a->answered, r.service, json_true());
    sonar_result_finish(&r);
    if (!ours || a->json)
        return;
    json_t *v = sonar_cli_parse_object(data, len);
    if (v) {
        clear_progress(a);
        sonar_cli_print_result_line(stdout, v);
        fflush(stdout);
        json_decref(v);
    }
}

/* Validates the reply to the change request. Returns the exit code; on
 * success *out_report is the report (new). */
static int on_reply(announce *a, natsMsg *msg, const char *subject, json_t **out_report)
{
    if (natsMsg_IsNoResponders(msg))
        return sonar_cli_die("announce", EXIT_ERROR,
                             "no coordinator answering on %s (is sonard running?)", subject);
    const char *data = natsMsg_GetData(msg);
    size_t len = (size_t)natsMsg_GetDataLength(msg);
    if (sonar_cli_check_error_reply(msg, data, len) != SONAR_OK)
        return sonar_cli_die("announce", EXIT_ERROR, "the coordinator refused the change: %s",
                             sonar_cli_last_error());
    sonar_report_msg r;
    memset(&r, 0, sizeof r);
    if (sonar_report_decode(&r, data, len) != SONAR_OK)
        return sonar_cli_die("announce", EXIT_ERROR, "invalid report from the coordinator: %s",
                             sonar_last_error());
    bool ours = strcmp(r.change_id, a->change_id) == 0;
    sonar_report_finish(&r);
    if (!ours)
        return sonar_cli_die("announce", EXIT_ERROR,
                             "the coordinator answered with a report for another change");
    json_t *v = sonar_cli_parse_object(data, len);
    if (v == NULL)
        return sonar_cli_die("announce", EXIT_ERROR, "invalid report: %s",
                             sonar_cli_last_error());
    *out_report = v;
    return EXIT_PASS;
}

/* Validates the arguments; fills *msg (borrowing from argv and id_buf). */
static int check_args(const sonar_cli_args *args, const char *address, const char *version,
                      const char *timeout, const char *change_id, char *id_buf,
                      sonar_change_msg *msg)
{
    if (args->n_pos != 1)
        return sonar_cli_die("announce", EXIT_ERROR, "missing <service> (see --help)");
    if (sonar_name_check("service name", args->pos[0]) != SONAR_OK)
        return sonar_cli_die("announce", EXIT_ERROR, "%s", sonar_last_error());
    if (address == NULL)
        return sonar_cli_die("announce", EXIT_ERROR, "--address is required");
    if (strlen(address) > SONAR_MAX_ADDRESS_BYTES)
        return sonar_cli_die("announce", EXIT_ERROR, "--address is longer than %d bytes",
                             SONAR_MAX_ADDRESS_BYTES);
    if (version == NULL)
        return sonar_cli_die("announce", EXIT_ERROR, "--version is required");
    if (strlen(version) > SONAR_MAX_TEXT_BYTES)
        return sonar_cli_die("announce", EXIT_ERROR, "--version is longer than %d bytes",
                             SONAR_MAX_TEXT_BYTES);
    int64_t timeout_ms = DEFAULT_TIMEOUT_MS;
    if (timeout && sonar_parse_duration_ms(timeout, &timeout_ms) != SONAR_OK)
        return sonar_cli_die("announce", EXIT_ERROR, "--timeout: %s", sonar_last_error());
    if (timeout_ms < 1 || timeout_ms > SONAR_MAX_TIMEOUT_MS)
        return sonar_cli_die("announce", EXIT_ERROR,
                             "--timeout must be between 1ms and %dm", SONAR_MAX_TIMEOUT_MS / 60000);
    if (change_id) {
        if (sonar_name_check("change id", change_id) != SONAR_OK)
            return sonar_cli_die("announce", EXIT_ERROR, "%s", sonar_last_error());
    } else {
        sonar_random_id(id_buf);
        change_id = id_buf;
    }
    msg->change_id = (char *)change_id;
    msg->service = (char *)args->pos[0];
    msg->version = (char *)version;
    msg->address = (char *)address;
    msg->timeout_ms = timeout_ms;
    return EXIT_PASS;
}

/* Subscribes, announces, follows the gather; returns the exit code. */
static int run(announce *a, sonar_bus *bus, const sonar_change_msg *change, json_t **report)
{
    natsConnection *nc = sonar_bus_nats(bus);
    char *gather_subj = NULL, *result_subj = NULL, *change_subj = NULL, *payload = NULL;
    natsInbox *inbox = NULL;
    int rc = EXIT_ERROR;
    sonar_cli_queue *q = sonar_cli_queue_create();
    if (q == NULL || asprintf(&gather_subj, "sonar.gather.%s", change->change_id) < 0 ||
        asprintf(&result_subj, "sonar.result.%s.*", change->change_id) < 0 ||
        asprintf(&change_subj, "sonar.change.%s", change->service) < 0 ||
        natsInbox_Create(&inbox) != NATS_OK) {
        rc = sonar_cli_die("announce", EXIT_ERROR, "out of memory");
        goto cleanup;
    }
    /* Results first, then announce: nothing can be missed. */
    if (sonar_cli_queue_subscribe(q, nc, gather_subj, TAG_GATHER) != SONAR_OK ||
        sonar_cli_queue_subscribe(q, nc, result_subj, TAG_RESULT) != SONAR_OK ||
        sonar_cli_queue_subscribe(q, nc, inbox, TAG_REPLY) != SONAR_OK) {
        rc = sonar_cli_die("announce", EXIT_ERROR, "%s", sonar_cli_last_error());
        goto cleanup;
    }
    if (sonar_change_encode(change, &payload) != SONAR_OK) {
        rc = sonar_cli_die("announce", EXIT_ERROR, "%s", sonar_last_error());
        goto cleanup;
    }
    natsStatus ns = natsConnection_PublishRequestString(nc, change_subj, inbox, payload);
    if (ns == NATS_OK)
        ns = natsConnection_Flush(nc);
    if (ns != NATS_OK) {
        rc = sonar_cli_die("announce", EXIT_ERROR, "cannot announce on %s: %s", change_subj,
                           natsStatus_GetText(ns));
        goto cleanup;
    }
    a->deadline = sonar_now_ms() + change->timeout_ms;
    int64_t give_up = a->deadline + REPORT_MARGIN_MS;
    draw_progress(a);
    for (;;) {
        int64_t now = sonar_now_ms();
        if (now >= give_up) {
            clear_progress(a);
            rc = sonar_cli_die("announce", EXIT_ERROR,
                               "no report from the coordinator within %" PRId64 " ms",
                               change->timeout_ms + REPORT_MARGIN_MS);
            goto cleanup;
        }
        natsMsg *msg = NULL;
        int tag = 0;
        int64_t wait = give_up - now < 1000 ? give_up - now : 1000;
        if (!sonar_cli_queue_pop(q, wait, &msg, &tag)) {
            draw_progress(a);
            continue;
        }
        const char *data = natsMsg_GetData(msg);
        size_t len = (size_t)natsMsg_GetDataLength(msg);
        if (tag == TAG_GATHER) {
            on_gather(a, data, len);
        } else if (tag == TAG_RESULT) {
            on_result(a, data, len);
        } else {
            /* Results sent before the report may still sit in another
             * subscription's delivery thread: show them first. */
            sonar_cli_queue_settle(q, 1000);
            natsMsg *late = NULL;
            int late_tag = 0;
            while (sonar_cli_queue_pop(q, 0, &late, &late_tag)) {
                if (late_tag == TAG_RESULT)
                    on_result(a, natsMsg_GetData(late), (size_t)natsMsg_GetDataLength(late));
                else if (late_tag == TAG_GATHER)
                    on_gather(a, natsMsg_GetData(late), (size_t)natsMsg_GetDataLength(late));
                natsMsg_Destroy(late);
            }
            clear_progress(a);
            rc = on_reply(a, msg, change_subj, report);
            natsMsg_Destroy(msg);
            goto cleanup;
        }
        natsMsg_Destroy(msg);
        draw_progress(a);
    }
cleanup:
    clear_progress(a);
    sonar_cli_queue_destroy(q);
    natsInbox_Destroy(inbox);
    free(gather_subj);
    free(result_subj);
    free(change_subj);
    free(payload);
    return rc;
}

int sonar_cmd_announce(int argc, char **argv)
{
    const char *address = NULL, *version = NULL, *timeout = NULL, *change_id = NULL;
    bool json = false;
    const sonar_cli_opt opts[] = {
        {"address", 0, &address, NULL},     {"version", 0, &version, NULL},
        {"timeout", 0, &timeout, NULL},     {"change-id", 0, &change_id, NULL},
        {"json", 0, NULL, &json},           {NULL, 0, NULL, NULL},
    };
    sonar_cli_args args;
    char err[256];
    if (!sonar_cli_parse(&args, argc, argv, opts, 1, err, sizeof err))
        return sonar_cli_die("announce", EXIT_ERROR, "%s", err);
    if (args.help) {
        sonar_cli_usage(stdout, usage_text);
        return 0;
    }
    char id_buf[32];
    sonar_change_msg change;
    memset(&change, 0, sizeof change);
    int rc = check_args(&args, address, version, timeout, change_id, id_buf, &change);
    if (rc != EXIT_PASS)
        return rc;

    sonar_bus *bus = NULL;
    if (sonar_cli_connect(&bus, &args) != SONAR_OK)
        return sonar_cli_die("announce", EXIT_ERROR, "%s", sonar_cli_last_error());
    announce a = {
        .change_id = change.change_id,
        .json = json,
        .tty = isatty(STDOUT_FILENO) == 1,
        .expected = -1,
        .answered = json_object(),
        .expected_names = json_object(),
    };
    json_t *report = NULL;
    if (!json)
        printf("announcing %s %s at %s as change %s\n", change.service, change.version,
               change.address, change.change_id);
    rc = a.answered && a.expected_names ? run(&a, bus, &change, &report) : EXIT_ERROR;
    sonar_bus_destroy(bus);
    json_decref(a.answered);
    json_decref(a.expected_names);
    if (report == NULL)
        return rc;
    if (json) {
        sonar_cli_print_json(stdout, report);
    } else {
        fputc('\n', stdout);
        sonar_cli_print_report(stdout, report);
    }
    rc = sonar_cli_verdict_exit(report);
    json_decref(report);
    fflush(stdout);
    return rc;
}
