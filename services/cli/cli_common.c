/* Shared options, connection, read-API requests and the message queue of
 * the `sonar` CLI (see cli_common.h). */
#include "cli_common.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- Errors -------------------------------------------------------------- */

static _Thread_local char last_error[1024];

const char *sonar_cli_last_error(void)
{
    return last_error;
}

__attribute__((format(printf, 2, 3))) static sonar_status fail(sonar_status s,
                                                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

int sonar_cli_die(const char *cmd, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One line: a detail carrying newlines must not break it. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "sonar %s: %s\n", cmd, msg);
    return code;
}

/* ---- Options ------------------------------------------------------------- */

typedef struct common_opt {
    const char *name;
    size_t offset; /* of the const char * field in sonar_bus_config */
} common_opt;

static const common_opt common_opts[] = {
    {"server", offsetof(sonar_bus_config, urls)},
    {"user", offsetof(sonar_bus_config, user)},
    {"password", offsetof(sonar_bus_config, password)},
    {"token", offsetof(sonar_bus_config, token)},
    {"creds", offsetof(sonar_bus_config, creds_file)},
    {"nkey", offsetof(sonar_bus_config, nkey_public)},
    {"nkey-seed", offsetof(sonar_bus_config, nkey_seed_file)},
    {"tlsca", offsetof(sonar_bus_config, tls_ca)},
    {"tlscert", offsetof(sonar_bus_config, tls_cert)},
    {"tlskey", offsetof(sonar_bus_config, tls_key)},
};

/* Finds the option named \p name (length \p len; short when len == 0 and
 * \p short_name set). Returns the command option or sets *common. */
static const sonar_cli_opt *find_opt(const sonar_cli_opt *opts, const char *name, size_t len,
                                     char short_name, const common_opt **common)
{
    *common = NULL;
    for (const sonar_cli_opt *o = opts; o && o->name; o++) {
        if (short_name ? o->short_name == short_name
                       : strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    }
    if (short_name)
        return NULL;
    for (size_t i = 0; i < sizeof common_opts / sizeof common_opts[0]; i++)
        if (strlen(common_opts[i].name) == len && strncmp(common_opts[i].name, name, len) == 0)
            *common = &common_opts[i];
    return NULL;
}

bool sonar_cli_parse(sonar_cli_args *out, int argc, char **argv, const sonar_cli_opt *opts,
                     size_t max_pos, char *err, size_t errlen)
{
    sonar_cli_args a;
    memset(&a, 0, sizeof a);
    if (max_pos > SONAR_CLI_MAX_POS)
        max_pos = SONAR_CLI_MAX_POS;
    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (options_done || arg[0] != '-' || arg[1] == '\0') {
            if (a.n_pos >= max_pos) {
                snprintf(err, errlen, "unexpected argument '%s'", arg);
                return false;
            }
            a.pos[a.n_pos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            a.help = true;
            *out = a;
            return true;
        }
        const char *name, *inline_value = NULL;
        size_t len;
        char short_name = 0;
        if (arg[1] == '-') {
            name = arg + 2;
            const char *eq = strchr(name, '=');
            len = eq ? (size_t)(eq - name) : strlen(name);
            if (eq)
                inline_value = eq + 1;
        } else {
            if (arg[2] != '\0') {
                snprintf(err, errlen, "unknown option '%s'", arg);
                return false;
            }
            name = arg + 1;
            len = 0;
            short_name = arg[1];
        }
        const common_opt *common;
        const sonar_cli_opt *o = find_opt(opts, name, len, short_name, &common);
        if (o == NULL && common == NULL) {
            snprintf(err, errlen, "unknown option '%.*s' (see --help)",
                     (int)(inline_value ? (size_t)(inline_value - 1 - arg) : strlen(arg)), arg);
            return false;
        }
        if (o && o->flag) {
            if (inline_value) {
                snprintf(err, errlen, "option '--%s' takes no value", o->name);
                return false;
            }
            *o->flag = true;
            continue;
        }
        const char *value = inline_value;
        if (value == NULL) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "option '%s' needs a value", arg);
                return false;
            }
            value = argv[++i];
        }
        if (*value == '\0') {
            snprintf(err, errlen, "option '--%s' needs a non-empty value",
                     o ? o->name : common->name);
            return false;
        }
        if (o)
            *o->value = value;
        else
            *(const char **)((char *)&a.bus + common->offset) = value;
    }
    *out = a;
    return true;
}

void sonar_cli_usage(FILE *to, const char *usage)
{
    fputs(usage, to);
    fputs("\nBus options (every command):\n"
          "  --server URL       NATS server(s), comma-separated (default: $NATS_URL or " SONAR_DEFAULT_NATS_URL ")\n"
          "  --user NAME        user name (or $NATS_USER); --password PW (or $NATS_PASSWORD)\n"
          "  --token TOKEN      token authentication (or $NATS_TOKEN)\n"
          "  --creds FILE       JWT user credentials file (or $NATS_CREDS)\n"
          "  --nkey PUBKEY      NKey public user key (or $NATS_NKEY), with\n"
          "  --nkey-seed FILE   the file holding its seed (or $NATS_NKEY_SEED)\n"
          "  --tlsca FILE       CA certificates, enables TLS (or $NATS_CA)\n"
          "  --tlscert FILE     client certificate (or $NATS_CERT); --tlskey FILE (or $NATS_KEY)\n"
          "  -h, --help         show this help\n",
          to);
}

/* ---- Connection and requests ---------------------------------------------- */

sonar_status sonar_cli_connect(sonar_bus **out, const sonar_cli_args *args)
{
    sonar_bus_config cfg = args->bus;
    sonar_bus_config_from_env(&cfg);
    cfg.name = "sonar-cli";
    if (cfg.connect_timeout_ms == 0)
        cfg.connect_timeout_ms = 2000;
    cfg.retry_on_failed_connect = false;
    sonar_bus *bus = NULL;
    sonar_status s = sonar_bus_connect(&bus, &cfg);
    if (s != SONAR_OK)
        return fail(s, "cannot connect to %s: %s", cfg.urls ? cfg.urls : SONAR_DEFAULT_NATS_URL,
                    sonar_last_error());
    *out = bus;
    return SONAR_OK;
}

json_t *sonar_cli_parse_object(const char *data, size_t len)
{
    json_error_t jerr;
    json_t *v = json_loadb(data ? data : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL) {
        fail(SONAR_ERR_PROTOCOL, "not JSON: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        fail(SONAR_ERR_PROTOCOL, "not a JSON object");
        return NULL;
    }
    return v;
}

static sonar_status status_for_code(int code)
{
    switch (code) {
    case 400: return SONAR_ERR_INVALID;
    case 404: return SONAR_ERR_NOT_FOUND;
    default: return SONAR_ERR_STATE;
    }
}

sonar_status sonar_cli_check_error_reply(natsMsg *msg, const char *data, size_t len)
{
    sonar_msg_kind kind = SONAR_MSG_UNKNOWN;
    if (len > 0 && sonar_msg_peek(data, len, &kind) == SONAR_OK && kind == SONAR_MSG_ERROR) {
        sonar_error_msg e;
        memset(&e, 0, sizeof e);
        if (sonar_error_decode(&e, data, len) != SONAR_OK)
            return fail(SONAR_ERR_PROTOCOL, "malformed error reply: %s", sonar_last_error());
        sonar_status s = fail(status_for_code(e.code), "%d: %s", e.code, e.message);
        sonar_error_finish(&e);
        return s;
    }
    const char *code = NULL, *text = NULL;
    if (msg && natsMsgHeader_Get(msg, SONAR_HDR_SERVICE_ERROR_CODE, &code) == NATS_OK) {
        natsMsgHeader_Get(msg, SONAR_HDR_SERVICE_ERROR, &text);
        int c = atoi(code);
        return fail(status_for_code(c), "%d: %s", c, text ? text : "error");
    }
    return SONAR_OK;
}

sonar_status sonar_cli_request(json_t **out, sonar_bus *bus, const char *subject,
                               const json_t *body, const char *want_type, int64_t timeout_ms)
{
    char *payload = body ? json_dumps(body, JSON_COMPACT) : strdup("{}");
    if (payload == NULL)
        return fail(SONAR_ERR_NOMEM, "out of memory");
    natsMsg *reply = NULL;
    natsStatus ns = natsConnection_RequestString(&reply, sonar_bus_nats(bus), subject, payload,
                                                 timeout_ms);
    free(payload);
    if (ns == NATS_NO_RESPONDERS)
        return fail(SONAR_ERR_NO_RESPONDERS,
                    "no coordinator answering on %s (is sonard running?)", subject);
    if (ns == NATS_TIMEOUT)
        return fail(SONAR_ERR_TIMEOUT, "no answer on %s within %lld ms", subject,
                    (long long)timeout_ms);
    if (ns != NATS_OK)
        return fail(SONAR_ERR_NATS, "request on %s failed: %s", subject,
                    natsStatus_GetText(ns));
    const char *data = natsMsg_GetData(reply);
    size_t len = (size_t)natsMsg_GetDataLength(reply);
    sonar_status s = sonar_cli_check_error_reply(reply, data, len);
    json_t *v = NULL;
    if (s == SONAR_OK) {
        v = sonar_cli_parse_object(data, len);
        if (v == NULL) {
            s = fail(SONAR_ERR_PROTOCOL, "bad reply on %s: %s", subject, sonar_cli_last_error());
        } else {
            const char *type = json_string_value(json_object_get(v, "type"));
            if (type == NULL || strcmp(type, want_type) != 0)
                s = fail(SONAR_ERR_PROTOCOL, "bad reply on %s: type is %s, expected %s",
                         subject, type ? type : "missing", want_type);
        }
    }
    natsMsg_Destroy(reply);
    if (s != SONAR_OK) {
        json_decref(v);
        return s;
    }
    *out = v;
    return SONAR_OK;
}

int sonar_cli_api(json_t **out, const char *cmd, const sonar_cli_args *args,
                  const char *subject, const json_t *body, const char *want_type)
{
    sonar_bus *bus = NULL;
    if (sonar_cli_connect(&bus, args) != SONAR_OK)
        return sonar_cli_die(cmd, SONAR_CLI_EXIT_ERROR, "%s", sonar_cli_last_error());
    json_t *reply = NULL;
    sonar_status s = sonar_cli_request(&reply, bus, subject, body, want_type,
                                       SONAR_CLI_API_TIMEOUT_MS);
    sonar_bus_destroy(bus);
    if (s != SONAR_OK)
        return sonar_cli_die(cmd, s == SONAR_ERR_NOT_FOUND ? SONAR_CLI_EXIT_NOT_FOUND
                                                          : SONAR_CLI_EXIT_ERROR,
                             "%s", sonar_cli_last_error());
    *out = reply;
    return SONAR_CLI_EXIT_OK;
}

int sonar_cli_read(const sonar_cli_read_cmd *cmd, int argc, char **argv)
{
    bool json = false;
    sonar_cli_opt opts[8];
    size_t n = 0;
    for (const sonar_cli_opt *o = cmd->opts; o && o->name && n + 2 < 8; o++)
        opts[n++] = *o;
    opts[n++] = (sonar_cli_opt){"json", 0, NULL, &json};
    opts[n] = (sonar_cli_opt){NULL, 0, NULL, NULL};
    sonar_cli_args args;
    char err[256];
    if (!sonar_cli_parse(&args, argc, argv, opts, cmd->max_pos, err, sizeof err))
        return sonar_cli_die(cmd->name, SONAR_CLI_EXIT_USAGE, "%s", err);
    if (args.help) {
        sonar_cli_usage(stdout, cmd->usage);
        return SONAR_CLI_EXIT_OK;
    }
    json_t *body = NULL, *reply = NULL;
    int rc = cmd->make_body ? cmd->make_body(&args, &body) : SONAR_CLI_EXIT_OK;
    if (rc == SONAR_CLI_EXIT_OK)
        rc = sonar_cli_api(&reply, cmd->name, &args, cmd->subject, body, cmd->want_type);
    json_decref(body);
    if (rc != SONAR_CLI_EXIT_OK)
        return rc;
    if (json)
        sonar_cli_print_json(stdout, reply);
    else
        cmd->print(stdout, reply);
    json_decref(reply);
    fflush(stdout);
    return SONAR_CLI_EXIT_OK;
}

void sonar_cli_print_json(FILE *out, const json_t *value)
{
    char *text = json_dumps(value, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text)
        fprintf(out, "%s\n", text);
    free(text);
}

/* ---- Message queue ------------------------------------------------------- */

typedef struct queue_item {
    natsMsg *msg;
    int tag;
    struct queue_item *next;
} queue_item;

typedef struct queue_sub {
    struct sonar_cli_queue *q;
    int tag;
    natsSubscription *sub;
    uint64_t enqueued; /* messages this subscription put in the queue (under q->lock) */
} queue_sub;

struct sonar_cli_queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    queue_item *head, *tail;
    bool woken;
    queue_sub **subs;
    size_t n_subs;
};

sonar_cli_queue *sonar_cli_queue_create(void)
{
    sonar_cli_queue *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    pthread_mutex_init(&q->lock, NULL);
    sonar_cond_init_monotonic(&q->cond);
    return q;
}

/* Runs on a NATS delivery thread: only enqueues, never does I/O. */
static void on_queue_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    queue_sub *qs = closure;
    queue_item *it = malloc(sizeof *it);
    if (it == NULL) {
        natsMsg_Destroy(msg);
        return;
    }
    it->msg = msg;
    it->tag = qs->tag;
    it->next = NULL;
    sonar_cli_queue *q = qs->q;
    pthread_mutex_lock(&q->lock);
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    qs->enqueued++;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* A new subscription record for \p q (not yet subscribed); NULL if no memory. */
static queue_sub *new_sub(sonar_cli_queue *q, int tag)
{
    queue_sub **grown = realloc(q->subs, (q->n_subs + 1) * sizeof *grown);
    if (grown == NULL)
        return NULL;
    q->subs = grown;
    queue_sub *qs = calloc(1, sizeof *qs);
    if (qs == NULL)
        return NULL;
    qs->q = q;
    qs->tag = tag;
    return qs;
}

sonar_status sonar_cli_queue_subscribe(sonar_cli_queue *q, natsConnection *nc,
                                       const char *subject, int tag)
{
    queue_sub *qs = new_sub(q, tag);
    if (qs == NULL)
        return fail(SONAR_ERR_NOMEM, "out of memory");
    natsStatus ns = natsConnection_Subscribe(&qs->sub, nc, subject, on_queue_msg, qs);
    if (ns != NATS_OK) {
        free(qs);
        return fail(SONAR_ERR_NATS, "cannot subscribe to %s: %s", subject,
                    natsStatus_GetText(ns));
    }
    q->subs[q->n_subs++] = qs;
    return SONAR_OK;
}

sonar_status sonar_cli_queue_subscribe_js(sonar_cli_queue *q, jsCtx *js, const char *subject,
                                          jsSubOptions *so, int tag)
{
    queue_sub *qs = new_sub(q, tag);
    if (qs == NULL)
        return fail(SONAR_ERR_NOMEM, "out of memory");
    jsErrCode jerr = 0;
    natsStatus ns = js_Subscribe(&qs->sub, js, subject, on_queue_msg, qs, NULL, so, &jerr);
    if (ns != NATS_OK) {
        free(qs);
        if (ns == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr)
            return fail(SONAR_ERR_NOT_FOUND, "stream %s not found", so->Stream ? so->Stream : "?");
        return fail(SONAR_ERR_NATS, "cannot subscribe to %s: %s (%s)", subject,
                    natsStatus_GetText(ns), nats_GetLastError(NULL));
    }
    q->subs[q->n_subs++] = qs;
    return SONAR_OK;
}

void sonar_cli_queue_unsubscribe(sonar_cli_queue *q, int tag)
{
    for (size_t i = 0; i < q->n_subs; i++)
        if (q->subs[i]->tag == tag)
            natsSubscription_Unsubscribe(q->subs[i]->sub);
}

bool sonar_cli_queue_pop(sonar_cli_queue *q, int64_t timeout_ms, natsMsg **out_msg,
                         int *out_tag)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms < 0)
        timeout_ms = 0;
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->lock);
    while (q->head == NULL && !q->woken) {
        if (pthread_cond_timedwait(&q->cond, &q->lock, &until) == ETIMEDOUT)
            break;
    }
    queue_item *it = q->head;
    if (it) {
        q->head = it->next;
        if (q->head == NULL)
            q->tail = NULL;
    }
    pthread_mutex_unlock(&q->lock);
    if (it == NULL)
        return false;
    *out_msg = it->msg;
    *out_tag = it->tag;
    free(it);
    return true;
}

/* True when every message nats.c received for the queue's subscriptions
 * is in the queue: none pending in the library, no callback half-way. */
static bool settled(sonar_cli_queue *q)
{
    for (size_t i = 0; i < q->n_subs; i++) {
        int pending = 0, bytes = 0;
        int64_t delivered = 0;
        natsSubscription *sub = q->subs[i]->sub;
        if (natsSubscription_GetPending(sub, &pending, &bytes) != NATS_OK ||
            natsSubscription_GetDelivered(sub, &delivered) != NATS_OK)
            continue; /* closed: nothing more will come */
        if (pending > 0 || (uint64_t)delivered != q->subs[i]->enqueued)
            return false;
    }
    return true;
}

bool sonar_cli_queue_settle(sonar_cli_queue *q, int64_t timeout_ms)
{
    int64_t deadline = sonar_now_ms() + timeout_ms;
    pthread_mutex_lock(&q->lock);
    bool ok;
    while (!(ok = settled(q)) && sonar_now_ms() < deadline) {
        /* Callbacks broadcast on every message; wake at least each ms to
         * see messages still pending in nats.c. */
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&q->cond, &q->lock, &until);
    }
    pthread_mutex_unlock(&q->lock);
    return ok;
}

void sonar_cli_queue_wake(sonar_cli_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->woken = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

void sonar_cli_queue_destroy(sonar_cli_queue *q)
{
    if (q == NULL)
        return;
    for (size_t i = 0; i < q->n_subs; i++) {
        natsSubscription *sub = q->subs[i]->sub;
        /* Drain, then wait: after completion no callback can touch the queue. */
        if (natsSubscription_Drain(sub) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(sub, 2000);
        else
            natsSubscription_Unsubscribe(sub);
    }
    for (size_t i = 0; i < q->n_subs; i++) {
        natsSubscription_Destroy(q->subs[i]->sub);
        free(q->subs[i]);
    }
    free(q->subs);
    for (queue_item *it = q->head, *next; it; it = next) {
        next = it->next;
        natsMsg_Destroy(it->msg);
        free(it);
    }
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q);
}
