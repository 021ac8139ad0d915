/*
 * Inbox: a durable pull consumer whose messages are applied exactly once
 * to SQLite (id recorded in the same transaction as the handler's writes,
 * ack after commit). See inbox.h and docs/outbox.md ("Inbox").
 */
#include "sonar/inbox.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "db_internal.h"
#include "internal.h"
#include "sonar/util.h"

#define PRUNE_BATCH 500

static const char inbox_schema[] =
    "CREATE TABLE IF NOT EXISTS sonar_inbox ("
    "  name TEXT NOT NULL,"
    "  msg_id TEXT NOT NULL,"
    "  done_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (name, msg_id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS sonar_inbox_done ON sonar_inbox(name, done_ms);"
    "CREATE TABLE IF NOT EXISTS sonar_inbox_dead ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL,"
    "  msg_id TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  stream_seq INTEGER NOT NULL,"
    "  deliveries INTEGER NOT NULL,"
    "  error TEXT NOT NULL,"
    "  dead_ms INTEGER NOT NULL);";

struct sonar_inbox {
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;
    sqlite3 *db;
    sqlite3_stmt *st_record, *st_dead;
    char *name, *stream, *filter;
    sonar_inbox_config cfg;
    sonar_inbox_fn fn;
    void *closure;
    int64_t prune_every_ms, next_prune_ms;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stop;
    sonar_inbox_stats st; /* guarded by mu */
};

sonar_status sonar_inbox_error(sonar_status status, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return sonar__fail(status, "%s", buf);
}

static void bump(sonar_inbox *in, int64_t *field)
{
    pthread_mutex_lock(&in->mu);
    (*field)++;
    pthread_mutex_unlock(&in->mu);
}

static bool inbox_stopping(sonar_inbox *in)
{
    pthread_mutex_lock(&in->mu);
    bool s = in->stop;
    pthread_mutex_unlock(&in->mu);
    return s;
}

static void inbox_wait(sonar_inbox *in, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (ms % 1000) * 1000000;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&in->mu);
    while (!in->stop && pthread_cond_timedwait(&in->cond, &in->mu, &ts) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&in->mu);
}

static int64_t nak_delay(const sonar_inbox *in, uint64_t deliveries)
{
    int64_t d = in->cfg.retry_min_ms;
    for (uint64_t i = 1; i < deliveries && d < in->cfg.retry_max_ms; i++)
        d *= 2;
    return d > in->cfg.retry_max_ms ? in->cfg.retry_max_ms : d;
}

/* The headers of msg but its id, as compact JSON {"key":["value",...]}
 * (new string; "{}" when it has none; NULL when out of memory). */
static char *headers_json(natsMsg *msg)
{
    json_t *o = json_object();
    const char **keys = NULL;
    int n = 0;
    if (msg != NULL && natsMsgHeader_Keys(msg, &keys, &n) == NATS_OK) {
        for (int i = 0; i < n; i++) {
            if (strcasecmp(keys[i], "Nats-Msg-Id") == 0)
                continue; /* kept as msg_id */
            const char **vals = NULL;
            int nv = 0;
            json_t *arr = json_array();
            if (natsMsgHeader_Values(msg, keys[i], &vals, &nv) == NATS_OK)
                for (int k = 0; k < nv; k++)
                    json_array_append_new(arr, json_string(vals[k]));
            free((void *)vals);
            json_object_set_new(o, keys[i], arr);
        }
        free((void *)keys);
    }
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

/* Records the message as dead (and its id as handled) in one transaction. */
static sonar_status record_dead(sonar_inbox *in, const sonar_inbox_msg *m, const char *why)
{
    char *headers = headers_json(m->msg);
    if (headers == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    sonar_status s = sonar__db_exec(in->db, "BEGIN IMMEDIATE");
    if (s != SONAR_OK) {
        free(headers);
        return s;
    }
    sqlite3_stmt *st = in->st_dead;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, in->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, m->subject, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 4, m->len ? m->data : "", m->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)m->stream_seq);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)m->deliveries);
    sqlite3_bind_text(st, 7, why, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 8, sonar_wall_ms());
    sqlite3_bind_text(st, 9, headers, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    free(headers);
    sqlite3_reset(in->st_record);
    sqlite3_bind_text(in->st_record, 1, in->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(in->st_record, 2, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(in->st_record, 3, sonar_wall_ms());
    int rc2 = sqlite3_step(in->st_record);
    sqlite3_reset(in->st_record);
    if (rc != SQLITE_DONE || rc2 != SQLITE_DONE) {
        s = sonar__db_fail(in->db, "inbox: recording a dead message");
        sqlite3_exec(in->db, "ROLLBACK", NULL, NULL, NULL);
        return s;
    }
    return sonar__db_exec(in->db, "COMMIT");
}

static void handle(sonar_inbox *in, natsMsg *msg)
{
    jsMsgMetaData *meta = NULL;
    sonar_inbox_msg m = {0};
    char idbuf[160];
    bump(in, &in->st.received);
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        m.stream_seq = meta->Sequence.Stream;
        m.deliveries = meta->NumDelivered;
        pthread_mutex_lock(&in->mu);
        in->st.pending = (int64_t)meta->NumPending;
        pthread_mutex_unlock(&in->mu);
        jsMsgMetaData_Destroy(meta);
    }
    const char *hid = NULL;
    if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &hid) == NATS_OK && hid && *hid)
        snprintf(idbuf, sizeof idbuf, "%s", hid);
    else
        snprintf(idbuf, sizeof idbuf, "%s:%" PRIu64, in->stream, m.stream_seq);
    m.id = idbuf;
    m.subject = natsMsg_GetSubject(msg);
    m.data = natsMsg_GetData(msg);
    m.len = (size_t)natsMsg_GetDataLength(msg);
    m.msg = msg;

    if (sonar__db_exec(in->db, "BEGIN IMMEDIATE") != SONAR_OK) {
        sonar_log(SONAR_LOG_WARN, "inbox %s: %s", in->name, sonar_last_error());
        bump(in, &in->st.errors);
        natsMsg_NakWithDelay(msg, in->cfg.retry_min_ms, NULL);
        return;
    }
    sqlite3_reset(in->st_record);
    sqlite3_bind_text(in->st_record, 1, in->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(in->st_record, 2, m.id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(in->st_record, 3, sonar_wall_ms());
    int rc = sqlite3_step(in->st_record);
    sqlite3_reset(in->st_record);
    if (rc != SQLITE_DONE) {
        sonar_log(SONAR_LOG_WARN, "inbox %s: recording %s: %s", in->name, m.id,
                  sqlite3_errmsg(in->db));
        sqlite3_exec(in->db, "ROLLBACK", NULL, NULL, NULL);
        bump(in, &in->st.errors);
        natsMsg_NakWithDelay(msg, in->cfg.retry_min_ms, NULL);
        return;
    }
    if (sqlite3_changes(in->db) == 0) {
        /* Applied before (crash or lost ack after commit): ack and skip. */
        sqlite3_exec(in->db, "ROLLBACK", NULL, NULL, NULL);
        natsMsg_Ack(msg, NULL);
        bump(in, &in->st.duplicates);
        return;
    }
    char why[512];
    sonar_status s;
    if (m.deliveries > (uint64_t)in->cfg.max_deliveries) {
        /* Delivered more often than handled: the process died in the handler. */
        s = SONAR_ERR_STATE;
        snprintf(why, sizeof why, "delivered %" PRIu64 " times without being applied",
                 m.deliveries);
    } else {
        sonar__clear_error();
        s = in->fn(in->db, &m, in->closure);
        if (s != SONAR_OK)
            snprintf(why, sizeof why, "%s%s%s", sonar_status_str(s),
                     *sonar_last_error() ? ": " : "", sonar_last_error());
    }
    if (s == SONAR_OK) {
        if (sonar__db_exec(in->db, "COMMIT") != SONAR_OK) {
            sonar_log(SONAR_LOG_WARN, "inbox %s: %s", in->name, sonar_last_error());
            sqlite3_exec(in->db, "ROLLBACK", NULL, NULL, NULL);
            bump(in, &in->st.errors);
            natsMsg_NakWithDelay(msg, nak_delay(in, m.deliveries), NULL);
            return;
        }
        if (in->cfg.after_commit)
            in->cfg.after_commit(&m, in->closure);
        if (natsMsg_Ack(msg, NULL) != NATS_OK)
            bump(in, &in->st.errors); /* the redelivery will be skipped as a duplicate */
        bump(in, &in->st.applied);
        return;
    }
    sqlite3_exec(in->db, "ROLLBACK", NULL, NULL, NULL);
    if (m.deliveries >= (uint64_t)in->cfg.max_deliveries) {
        if (record_dead(in, &m, why) != SONAR_OK) {
            sonar_log(SONAR_LOG_WARN, "inbox %s: %s", in->name, sonar_last_error());
            bump(in, &in->st.errors);
            natsMsg_NakWithDelay(msg, nak_delay(in, m.deliveries), NULL);
            return;
        }
        natsMsg_Term(msg, NULL);
        bump(in, &in->st.dead);
        sonar_log(SONAR_LOG_ERROR, "inbox %s: message %s on %s dead after %" PRIu64
                  " deliveries: %s", in->name, m.id, m.subject, m.deliveries, why);
        return;
    }
    natsMsg_NakWithDelay(msg, nak_delay(in, m.deliveries), NULL);
    bump(in, &in->st.retries);
    sonar_log(SONAR_LOG_DEBUG, "inbox %s: message %s failed (delivery %" PRIu64 "): %s",
              in->name, m.id, m.deliveries, why);
}

static void inbox_prune(sonar_inbox *in)
{
    int64_t now = sonar_now_ms();
    if (now < in->next_prune_ms)
        return;
    sqlite3_stmt *st = NULL;
    int deleted = 0;
    if (sqlite3_prepare_v2(in->db,
                           "DELETE FROM sonar_inbox WHERE name=?1 AND msg_id IN (SELECT msg_id"
                           " FROM sonar_inbox WHERE name=?1 AND done_ms < ?2 LIMIT ?3)",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, in->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, sonar_wall_ms() - in->cfg.retention_ms);
        sqlite3_bind_int(st, 3, PRUNE_BATCH);
        if (sqlite3_step(st) == SQLITE_DONE)
            deleted = sqlite3_changes(in->db);
    }
    sqlite3_finalize(st);
    /* Small batches; come back soon while there is more. */
    in->next_prune_ms = now + (deleted >= PRUNE_BATCH ? 0 : in->prune_every_ms);
}

static void *inbox_main(void *arg)
{
    sonar_inbox *in = arg;
    int64_t backoff = 0;
    while (!inbox_stopping(in)) {
        inbox_prune(in);
        natsMsgList list = {0};
        jsErrCode ec = 0;
        natsStatus ns = natsSubscription_Fetch(&list, in->sub, in->cfg.batch,
                                               in->cfg.fetch_wait_ms, &ec);
        if (ns == NATS_TIMEOUT) {
            backoff = 0;
            continue;
        }
        if (ns != NATS_OK) {
            bump(in, &in->st.errors);
            backoff = backoff ? (backoff * 2 > 2000 ? 2000 : backoff * 2) : 100;
            sonar_log(SONAR_LOG_DEBUG, "inbox %s: fetch: %s", in->name, natsStatus_GetText(ns));
            inbox_wait(in, backoff);
            continue;
        }
        backoff = 0;
        for (int i = 0; i < list.Count; i++)
            handle(in, list.Msgs[i]);
        natsMsgList_Destroy(&list);
    }
    return NULL;
}

static void inbox_free(sonar_inbox *in)
{
    natsSubscription_Destroy(in->sub);
    if (in->js)
        jsCtx_Destroy(in->js);
    sqlite3_finalize(in->st_record);
    sqlite3_finalize(in->st_dead);
    sqlite3_close(in->db);
    pthread_mutex_destroy(&in->mu);
    pthread_cond_destroy(&in->cond);
    free(in->name);
    free(in->stream);
    free(in->filter);
    free(in);
}

static sonar_status inbox_config(sonar_inbox_config *c)
{
    sonar_status s = sonar_name_check("inbox name", c->name);
    if (s == SONAR_OK)
        s = sonar_name_check("inbox stream", c->stream);
    if (s != SONAR_OK)
        return s;
    if (c->filter_subject == NULL || *c->filter_subject == '\0' ||
        strpbrk(c->filter_subject, " \t\r\n") != NULL)
        return sonar__fail(SONAR_ERR_INVALID, "inbox %s: filter_subject is missing or invalid",
                           c->name);
    if (c->batch < 0 || c->fetch_wait_ms < 0 || c->max_deliveries < 0 || c->retry_min_ms < 0 ||
        c->retry_max_ms < 0 || c->ack_wait_ms < 0 || c->retention_ms < 0)
        return sonar__fail(SONAR_ERR_INVALID, "inbox %s: values must not be negative", c->name);
    if (c->batch == 0)
        c->batch = 64;
    if (c->fetch_wait_ms == 0)
        c->fetch_wait_ms = 1000;
    if (c->max_deliveries == 0)
        c->max_deliveries = 5;
    if (c->retry_min_ms == 0)
        c->retry_min_ms = 200;
    if (c->retry_max_ms == 0)
        c->retry_max_ms = 10000;
    if (c->ack_wait_ms == 0)
        c->ack_wait_ms = 30000;
    if (c->retention_ms == 0)
        c->retention_ms = 7LL * 24 * 3600 * 1000;
    if (c->retry_max_ms < c->retry_min_ms)
        return sonar__fail(SONAR_ERR_INVALID, "inbox %s: retry_max_ms below retry_min_ms",
                           c->name);
    return SONAR_OK;
}

/* Whether sonar_inbox_dead has the headers column (added later: a database
 * made by an older libsonar lacks it until an inbox migrates it). */
static bool dead_has_headers(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    bool has = sqlite3_prepare_v2(db, "SELECT headers FROM sonar_inbox_dead LIMIT 0", -1, &st,
                                  NULL) == SQLITE_OK;
    sqlite3_finalize(st);
    return has;
}

sonar_status sonar_inbox_migrate(sqlite3 *db)
{
    if (db == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "inbox migrate: no database");
    sonar_status s = sonar__db_exec(db, "PRAGMA journal_mode=WAL");
    if (s == SONAR_OK)
        s = sonar__db_exec(db, inbox_schema);
    /* The headers a dead message had (a JSON object of value arrays), so a
     * requeue publishes it as it was. */
    if (s == SONAR_OK && !dead_has_headers(db))
        s = sonar__db_exec(db, "ALTER TABLE sonar_inbox_dead"
                               " ADD COLUMN headers TEXT NOT NULL DEFAULT '{}'");
    return s;
}

static sonar_status open_db(sonar_inbox *in, const char *path)
{
    if (sqlite3_open_v2(path, &in->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK)
        return sonar__db_fail(in->db, path);
    sonar__db_fast_busy(in->db);
    sonar_status s = sonar_inbox_migrate(in->db);
    if (s == SONAR_OK)
        s = sonar__db_prepare(in->db,
                              "INSERT OR IGNORE INTO sonar_inbox(name, msg_id, done_ms)"
                              " VALUES (?1, ?2, ?3)",
                              &in->st_record);
    if (s == SONAR_OK)
        s = sonar__db_prepare(in->db,
                              "INSERT INTO sonar_inbox_dead(name, msg_id, subject, payload,"
                              " stream_seq, deliveries, error, dead_ms, headers)"
                              " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                              &in->st_dead);
    return s;
}

/* Creates the durable consumer when missing, then binds a pull
 * subscription to it (bound: the library never deletes it). */
static sonar_status subscribe(sonar_inbox *in)
{
    natsStatus ns = natsConnection_JetStream(&in->js, in->nc, NULL);
    if (ns != NATS_OK)
        return sonar__fail(SONAR_ERR_NATS, "inbox %s: %s", in->name, natsStatus_GetText(ns));
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    ns = js_GetConsumerInfo(&ci, in->js, in->stream, in->name, NULL, &ec);
    if (ns == NATS_NOT_FOUND || ec == JSConsumerNotFoundErr) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = in->name;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = in->cfg.ack_wait_ms * 1000000;
        cc.MaxDeliver = -1; /* the inbox terminates failing messages itself */
        cc.FilterSubject = in->filter;
        cc.DeliverPolicy = js_DeliverAll;
        ec = 0;
        ns = js_AddConsumer(&ci, in->js, in->stream, &cc, NULL, &ec);
    }
    jsConsumerInfo_Destroy(ci);
    if (ns != NATS_OK)
        return sonar__fail(ec ? SONAR_ERR_INVALID : SONAR_ERR_NATS,
                           "inbox %s: consumer on stream %s: %s (%s, code %d)", in->name,
                           in->stream, natsStatus_GetText(ns), nats_GetLastError(NULL), (int)ec);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = in->stream;
    so.Consumer = in->name;
    ec = 0;
    ns = js_PullSubscribe(&in->sub, in->js, in->filter, in->name, NULL, &so, &ec);
    if (ns != NATS_OK)
        return sonar__fail(SONAR_ERR_NATS, "inbox %s: pull subscribe: %s (%s)", in->name,
                           natsStatus_GetText(ns), nats_GetLastError(NULL));
    return SONAR_OK;
}

sonar_status sonar_inbox_create(sonar_inbox **out, natsConnection *nc, const char *db_path,
                                const sonar_inbox_config *cfg, sonar_inbox_fn fn, void *closure)
{
    if (out == NULL || nc == NULL || db_path == NULL || cfg == NULL || fn == NULL)
        return sonar__fail(SONAR_ERR_INVALID,
                           "inbox create: out, nc, db_path, cfg and fn are required");
    sonar_inbox_config c = *cfg;
    sonar_status s = inbox_config(&c);
    if (s != SONAR_OK)
        return s;
    sonar_inbox *in = calloc(1, sizeof *in);
    if (in == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&in->mu, NULL);
    sonar_cond_init_monotonic(&in->cond);
    in->nc = nc;
    in->fn = fn;
    in->closure = closure;
    in->name = strdup(c.name);
    in->stream = strdup(c.stream);
    in->filter = strdup(c.filter_subject);
    c.name = c.stream = c.filter_subject = NULL;
    in->cfg = c;
    in->prune_every_ms = c.retention_ms / 4;
    if (in->prune_every_ms < 100)
        in->prune_every_ms = 100;
    if (in->prune_every_ms > 60000)
        in->prune_every_ms = 60000;
    if (in->name == NULL || in->stream == NULL || in->filter == NULL)
        s = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    if (s == SONAR_OK)
        s = open_db(in, db_path);
    if (s == SONAR_OK)
        s = subscribe(in);
    if (s == SONAR_OK) {
        if (pthread_create(&in->thread, NULL, inbox_main, in) != 0)
            s = sonar__fail(SONAR_ERR_NOMEM, "inbox: cannot start its thread");
        else
            in->thread_started = true;
    }
    if (s != SONAR_OK) {
        char saved[1024];
        snprintf(saved, sizeof saved, "%s", sonar_last_error());
        inbox_free(in);
        return sonar__fail(s, "%s", saved);
    }
    *out = in;
    return SONAR_OK;
}

void sonar_inbox_destroy(sonar_inbox *in)
{
    if (in == NULL)
        return;
    pthread_mutex_lock(&in->mu);
    in->stop = true;
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->mu);
    if (in->thread_started)
        pthread_join(in->thread, NULL);
    inbox_free(in);
}

void sonar_inbox_stats_get(sonar_inbox *in, sonar_inbox_stats *out)
{
    pthread_mutex_lock(&in->mu);
    *out = in->st;
    pthread_mutex_unlock(&in->mu);
}

json_t *sonar_inbox_stats_json(sonar_inbox *in)
{
    sonar_inbox_stats st;
    sonar_inbox_stats_get(in, &st);
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "name", in->name, "stream",
                     in->stream, "received", (json_int_t)st.received, "applied",
                     (json_int_t)st.applied, "duplicates", (json_int_t)st.duplicates, "retries",
                     (json_int_t)st.retries, "dead", (json_int_t)st.dead, "errors",
                     (json_int_t)st.errors, "pending", (json_int_t)st.pending);
}

/* ---- Operator functions ------------------------------------------------------ */

static sonar_status open_inbox_db(sqlite3 **out, const char *path, bool read_only)
{
    static const char *const tables[] = {"sonar_inbox", "sonar_inbox_dead", NULL};
    return sonar__db_open_with_tables(out, path, read_only, tables, "inbox");
}

void sonar_inbox_db_status_finish(sonar_inbox_db_status *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < st->n; i++)
        free(st->consumers[i].name);
    free(st->consumers);
    memset(st, 0, sizeof *st);
}

static bool consumer_fill(sqlite3_stmt *st, void *elem)
{
    sonar_inbox_consumer_status *c = elem;
    c->name = sonar__strdup((const char *)sqlite3_column_text(st, 0));
    c->recorded = sqlite3_column_int64(st, 1);
    c->last_applied_ms = sqlite3_column_int64(st, 2);
    c->dead = sqlite3_column_int64(st, 3);
    return c->name != NULL;
}

sonar_status sonar_inbox_db_status_read(sonar_inbox_db_status *out, const char *db_path)
{
    sqlite3 *db = NULL;
    sonar_status s = open_inbox_db(&db, db_path, true);
    if (s != SONAR_OK)
        return s;
    sonar_inbox_db_status r = {0};
    void *consumers = NULL;
    s = sonar__db_rows(db,
                       "SELECT name, sum(recorded), max(last_ms), sum(dead) FROM ("
                       " SELECT name, count(*) AS recorded, max(done_ms) AS last_ms, 0 AS dead"
                       " FROM sonar_inbox GROUP BY name"
                       " UNION ALL SELECT name, 0, 0, count(*) FROM sonar_inbox_dead"
                       " GROUP BY name) GROUP BY name ORDER BY name",
                       sizeof(sonar_inbox_consumer_status), consumer_fill, &consumers, &r.n);
    sqlite3_close(db);
    r.consumers = consumers;
    if (s != SONAR_OK) {
        sonar_inbox_db_status_finish(&r);
        return s;
    }
    for (size_t i = 0; i < r.n; i++) {
        r.recorded_total += r.consumers[i].recorded;
        r.dead_total += r.consumers[i].dead;
    }
    *out = r;
    return SONAR_OK;
}

static void dead_row_finish(sonar_inbox_dead_row *r)
{
    free(r->name);
    free(r->msg_id);
    free(r->subject);
    free(r->payload);
    free(r->error);
    free(r->headers);
}

void sonar_inbox_dead_rows_free(sonar_inbox_dead_row *rows, size_t n)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        dead_row_finish(&rows[i]);
    free(rows);
}

/* The columns of a dead row as inbox_dead_row_fill() reads them (then headers). */
#define DEAD_COLUMNS "id, name, msg_id, subject, payload, stream_seq, deliveries, error, dead_ms"

static bool inbox_dead_row_fill(sqlite3_stmt *st, void *elem)
{
    sonar_inbox_dead_row *r = elem;
    r->id = sqlite3_column_int64(st, 0);
    r->name = sonar__strdup((const char *)sqlite3_column_text(st, 1));
    r->msg_id = sonar__strdup((const char *)sqlite3_column_text(st, 2));
    r->subject = sonar__strdup((const char *)sqlite3_column_text(st, 3));
    r->payload = sonar__db_blob_copy(st, 4, &r->payload_len);
    r->stream_seq = sqlite3_column_int64(st, 5);
    r->deliveries = sqlite3_column_int64(st, 6);
    r->error = sonar__strdup((const char *)sqlite3_column_text(st, 7));
    r->dead_ms = sqlite3_column_int64(st, 8);
    r->headers = sonar__strdup((const char *)sqlite3_column_text(st, 9));
    return r->name && r->msg_id && r->subject && r->payload && r->error && r->headers;
}

sonar_status sonar_inbox_dead_list(sonar_inbox_dead_row **out_rows, size_t *out_n,
                                   const char *db_path)
{
    sqlite3 *db = NULL;
    sonar_status s = open_inbox_db(&db, db_path, true);
    if (s != SONAR_OK)
        return s;
    void *rows = NULL;
    size_t n = 0;
    s = sonar__db_rows(db,
                       dead_has_headers(db)
                           ? "SELECT " DEAD_COLUMNS ", headers FROM sonar_inbox_dead ORDER BY id"
                           : "SELECT " DEAD_COLUMNS ", '{}' FROM sonar_inbox_dead ORDER BY id",
                       sizeof(sonar_inbox_dead_row), inbox_dead_row_fill, &rows, &n);
    sqlite3_close(db);
    if (s != SONAR_OK) {
        sonar_inbox_dead_rows_free(rows, n);
        return s;
    }
    *out_rows = rows;
    *out_n = n;
    return SONAR_OK;
}

sonar_status sonar_inbox_drop(const char *db_path, int64_t id)
{
    sqlite3 *db = NULL;
    sonar_status s = open_inbox_db(&db, db_path, false);
    if (s != SONAR_OK)
        return s;
    sqlite3_stmt *st = NULL;
    s = sonar__db_prepare(db, "DELETE FROM sonar_inbox_dead WHERE id=?1", &st);
    if (s == SONAR_OK) {
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) != SQLITE_DONE)
            s = sonar__db_fail(db, "dropping an inbox dead-letter row");
        else if (sqlite3_changes(db) == 0)
            s = sonar__fail(SONAR_ERR_NOT_FOUND, "%s: no inbox dead-letter row with id %" PRId64,
                            db_path, id);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return s;
}

/* Reads dead row id (with its headers) from an open database. */
static sonar_status dead_row_read(sqlite3 *db, const char *db_path, int64_t id,
                                  sonar_inbox_dead_row *out)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT " DEAD_COLUMNS ", %s FROM sonar_inbox_dead WHERE id=?1",
             dead_has_headers(db) ? "headers" : "'{}'");
    sqlite3_stmt *st = NULL;
    sonar_status s = sonar__db_prepare(db, sql, &st);
    if (s != SONAR_OK)
        return s;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    memset(out, 0, sizeof *out);
    if (rc == SQLITE_DONE)
        s = sonar__fail(SONAR_ERR_NOT_FOUND, "%s: no inbox dead-letter row with id %" PRId64,
                        db_path, id);
    else if (rc != SQLITE_ROW)
        s = sonar__db_fail(db, "reading an inbox dead-letter row");
    else if (!inbox_dead_row_fill(st, out))
        s = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    sqlite3_finalize(st);
    return s;
}

/* Runs sql with ?1 = name, ?2 = msg_id of row r. */
static sonar_status exec_for_row(sqlite3 *db, const char *sql, const sonar_inbox_dead_row *r,
                                 const char *what)
{
    sqlite3_stmt *st = NULL;
    sonar_status s = sonar__db_prepare(db, sql, &st);
    if (s == SONAR_OK) {
        sqlite3_bind_text(st, 1, r->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, r->msg_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, r->id);
        sqlite3_bind_int64(st, 4, sonar_wall_ms());
        if (sqlite3_step(st) != SQLITE_DONE)
            s = sonar__db_fail(db, what);
    }
    sqlite3_finalize(st);
    return s;
}

/* The message of dead row r as it was: subject, payload, its headers but
 * the NATS control ones ("Nats-..."), and its id as Nats-Msg-Id. */
static sonar_status dead_row_message(natsMsg **out, const sonar_inbox_dead_row *r)
{
    natsMsg *m = NULL;
    natsStatus ns = natsMsg_Create(&m, r->subject, NULL, r->payload, (int)r->payload_len);
    json_t *h = ns == NATS_OK ? json_loads(r->headers, 0, NULL) : NULL;
    if (ns == NATS_OK && !json_is_object(h))
        ns = NATS_INVALID_ARG;
    const char *key;
    json_t *vals;
    if (ns == NATS_OK) {
        json_object_foreach(h, key, vals) {
            if (strncasecmp(key, "Nats-", 5) == 0)
                continue; /* publish expectations and the like: not the message's own */
            size_t i;
            json_t *v;
            json_array_foreach(vals, i, v) {
                if (ns == NATS_OK && json_is_string(v))
                    ns = natsMsgHeader_Add(m, key, json_string_value(v));
            }
        }
    }
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(m, "Nats-Msg-Id", r->msg_id);
    json_decref(h);
    if (ns != NATS_OK) {
        natsMsg_Destroy(m);
        return sonar__fail(ns == NATS_INVALID_ARG ? SONAR_ERR_INVALID : SONAR_ERR_NATS,
                           "dead-letter row %" PRId64 ": cannot rebuild its message (%s)", r->id,
                           natsStatus_GetText(ns));
    }
    *out = m;
    return SONAR_OK;
}

sonar_status sonar_inbox_requeue(natsConnection *nc, const char *db_path, int64_t id,
                                 char **out_stream, uint64_t *out_seq)
{
    if (nc == NULL || db_path == NULL || id <= 0)
        return sonar__fail(SONAR_ERR_INVALID, "inbox requeue: missing argument");
    sqlite3 *db = NULL;
    sonar_status s = open_inbox_db(&db, db_path, false);
    if (s != SONAR_OK)
        return s;
    sonar_inbox_dead_row r;
    s = dead_row_read(db, db_path, id, &r);
    natsMsg *m = NULL;
    if (s == SONAR_OK)
        s = dead_row_message(&m, &r);
    /* The inbox recorded the id as handled when it gave up (so that a
     * redelivery is skipped): forget it first, or the copy would be skipped
     * too. The dead row stays until the copy is in the stream. */
    if (s == SONAR_OK)
        s = exec_for_row(db, "DELETE FROM sonar_inbox WHERE name=?1 AND msg_id=?2", &r,
                         "forgetting a dead message's id");
    jsCtx *js = NULL;
    jsPubAck *ack = NULL;
    jsErrCode jerr = 0;
    if (s == SONAR_OK) {
        natsStatus ns = natsConnection_JetStream(&js, nc, NULL);
        if (ns == NATS_OK)
            ns = js_PublishMsg(&ack, js, m, NULL, &jerr);
        if (ns != NATS_OK)
            s = sonar__fail(SONAR_ERR_NATS, "publishing dead-letter row %" PRId64 " on %s: %s%s",
                            id, r.subject, natsStatus_GetText(ns),
                            ns == NATS_NO_RESPONDERS ? " (no stream for this subject)" : "");
        else if (ack->Duplicate)
            s = sonar__fail(SONAR_ERR_STATE,
                            "stream %s still remembers message id %s from its first publish"
                            " (the stream's duplicate window): requeue it once that passed",
                            ack->Stream, r.msg_id);
        if (s != SONAR_OK) /* the id is handled again, as before */
            exec_for_row(db, "INSERT OR IGNORE INTO sonar_inbox(name, msg_id, done_ms)"
                             " VALUES (?1, ?2, ?4)", &r, "restoring a dead message's id");
    }
    if (s == SONAR_OK) {
        s = exec_for_row(db, "DELETE FROM sonar_inbox_dead WHERE id=?3", &r,
                         "removing a requeued dead row");
        if (s != SONAR_OK)
            s = sonar__fail(s, "dead-letter row %" PRId64 " was published again (stream %s,"
                            " sequence %" PRIu64 ") but is still listed: drop it (%s)",
                            id, ack->Stream, ack->Sequence, sonar_last_error());
    }
    if (s == SONAR_OK) {
        if (out_stream != NULL)
            *out_stream = sonar__strdup(ack->Stream);
        if (out_seq != NULL)
            *out_seq = ack->Sequence;
    }
    jsPubAck_Destroy(ack);
    jsCtx_Destroy(js);
    natsMsg_Destroy(m);
    dead_row_finish(&r);
    sqlite3_close(db);
    return s;
}
