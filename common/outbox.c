/*
 * Transactional outbox: tables, enqueue, the relay thread, operator
 * functions and the stream helper. Design and guarantees: docs/outbox.md.
 *
 * Threads: the relay thread owns its SQLite connection and the jsCtx
 * publishing state; the PubAck handler runs on a nats.c thread and only
 * records answers in the window under `mu` (no SQLite there).
 */
#include "sonar/outbox.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus_internal.h"
#include "db_internal.h"
#include "internal.h"
#include "sonar/util.h"

#define MSG_ID_HEADER "Nats-Msg-Id"
#define PRUNE_BATCH 500
#define MAX_SUBJECT_STATES 256
/* Answered rows are recorded at least this often (or at a quarter window):
 * fewer write transactions competing with the producer for the lock. */
#define SETTLE_EVERY_MS 5
/* After a read that found every pending row, the next read waits at least
 * this long: a producer committing one row per transaction then costs one
 * relay read per millisecond instead of one per commit (and per wake-up). */
#define LOAD_GAP_NS 1000000

/* ---- Schema ------------------------------------------------------------ */

/* The pending table. No AUTOINCREMENT (it costs every insert a write to
 * sqlite_sequence): SQLite gives a new row max(id)+1, so an id can only be
 * handed out again if the row holding the highest id leaves the table. The
 * trigger puts a *ceiling row* (empty subject, never published) back at
 * that id whenever the highest row is deleted, by anyone, so max(id) never
 * goes down and no id is ever reused; the older ceiling row is removed at
 * that moment, so there is at most one. Inserts pay nothing for this (the
 * partial index holds ceiling rows only); a delete pays one max(id) seek.
 * Argument: docs/outbox.md. */
#define OUTBOX_TABLE_SQL                                                                        \
    "CREATE TABLE IF NOT EXISTS sonar_outbox ("                                                 \
    "  id INTEGER PRIMARY KEY,"                                                                 \
    "  subject TEXT NOT NULL,"                                                                  \
    "  payload BLOB NOT NULL,"                                                                  \
    "  headers TEXT,"                                                                           \
    "  created_ms INTEGER NOT NULL,"                                                            \
    "  attempts INTEGER NOT NULL DEFAULT 0,"                                                    \
    "  last_error TEXT);"
#define OUTBOX_CEILING_SQL                                                                      \
    "CREATE INDEX IF NOT EXISTS sonar_outbox_ceiling ON sonar_outbox(id) WHERE subject = '';"   \
    "CREATE TRIGGER IF NOT EXISTS sonar_outbox_keep_ceiling AFTER DELETE ON sonar_outbox"       \
    " WHEN old.id > coalesce((SELECT max(id) FROM sonar_outbox), 0)"                            \
    " BEGIN"                                                                                    \
    "  INSERT INTO sonar_outbox(id, subject, payload, created_ms, last_error)"                  \
    "   VALUES (old.id, '', x'', 0, 'ceiling row: keeps row ids from being reused');"           \
    "  DELETE FROM sonar_outbox WHERE subject = '' AND id < old.id;"                            \
    " END;"
/* Pending rows, ceiling rows excluded. */
#define PENDING_WHERE "subject <> ''"
/* Their number: count(*) is a fast b-tree count, ceiling rows come from the
 * partial index. */
#define PENDING_COUNT_SQL                                                                       \
    "(SELECT count(*) FROM sonar_outbox) -"                                                     \
    " (SELECT count(*) FROM sonar_outbox WHERE subject = '')"

static const char schema_v3[] =
    OUTBOX_TABLE_SQL OUTBOX_CEILING_SQL
    /* Published rows kept for the retention period (none by default). A
     * separate table keeps the pending table free of secondary indexes:
     * enqueue is one B-tree insert. */
    "CREATE TABLE IF NOT EXISTS sonar_outbox_sent ("
    "  id INTEGER PRIMARY KEY,"
    "  subject TEXT NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  headers TEXT,"
    "  created_ms INTEGER NOT NULL,"
    "  sent_ms INTEGER NOT NULL,"
    "  stream_seq INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS sonar_outbox_sent_at ON sonar_outbox_sent(sent_ms);"
    "CREATE TABLE IF NOT EXISTS sonar_outbox_dead ("
    "  id INTEGER PRIMARY KEY,"
    "  subject TEXT NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  headers TEXT,"
    "  created_ms INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL,"
    "  error TEXT NOT NULL,"
    "  dead_ms INTEGER NOT NULL);";

/* Version 1 kept published rows in sonar_outbox (sent_ms, stream_seq) with
 * two partial indexes; version 2 moves them to sonar_outbox_sent so the
 * pending table has no secondary index. The old columns stay, unused. */
static sonar_status upgrade_v1(sqlite3 *db)
{
    static const char sql[] =
        "DROP INDEX IF EXISTS sonar_outbox_pending;"
        "DROP INDEX IF EXISTS sonar_outbox_sent;"
        "CREATE TABLE IF NOT EXISTS sonar_outbox_sent ("
        "  id INTEGER PRIMARY KEY, subject TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT,"
        "  created_ms INTEGER NOT NULL, sent_ms INTEGER NOT NULL, stream_seq INTEGER NOT NULL);"
        "CREATE INDEX IF NOT EXISTS sonar_outbox_sent_at ON sonar_outbox_sent(sent_ms);"
        "INSERT OR REPLACE INTO sonar_outbox_sent(id, subject, payload, headers, created_ms,"
        "  sent_ms, stream_seq) SELECT id, subject, payload, headers, created_ms, sent_ms,"
        "  coalesce(stream_seq, 0) FROM sonar_outbox WHERE sent_ms IS NOT NULL;"
        "DELETE FROM sonar_outbox WHERE sent_ms IS NOT NULL;"
        "UPDATE sonar_outbox_meta SET value='2' WHERE key='schema_version';";
    return sonar__db_exec(db, sql);
}

/* Version 2 had `id INTEGER PRIMARY KEY AUTOINCREMENT`; version 3 drops
 * AUTOINCREMENT (a table must be rebuilt for that) and adds the ceiling
 * row. Every row keeps its id, so a row published before the upgrade and
 * retried after it has the same message id. The last id ever handed out
 * (sqlite_sequence) becomes the ceiling, so ids continue above it. */
static sonar_status upgrade_v2(sqlite3 *db)
{
    static const char sql[] =
        "CREATE TABLE sonar_outbox_v3 ("
        "  id INTEGER PRIMARY KEY, subject TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT,"
        "  created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);"
        "INSERT INTO sonar_outbox_v3(id, subject, payload, headers, created_ms, attempts,"
        "  last_error) SELECT id, subject, payload, headers, created_ms, attempts, last_error"
        "  FROM sonar_outbox ORDER BY id;"
        "INSERT INTO sonar_outbox_v3(id, subject, payload, created_ms, last_error)"
        "  SELECT seq, '', x'', 0, 'ceiling row: keeps row ids from being reused'"
        "  FROM sqlite_sequence WHERE name = 'sonar_outbox'"
        "  AND seq > coalesce((SELECT max(id) FROM sonar_outbox_v3), 0);"
        "DROP TABLE sonar_outbox;"
        "ALTER TABLE sonar_outbox_v3 RENAME TO sonar_outbox;" OUTBOX_CEILING_SQL
        "UPDATE sonar_outbox_meta SET value='3' WHERE key='schema_version';";
    return sonar__db_exec(db, sql);
}

static sonar_status meta_get(sqlite3 *db, const char *key, char *buf, size_t buflen, bool *found)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT value FROM sonar_outbox_meta WHERE key=?1", -1, &st,
                           NULL) != SQLITE_OK)
        return sonar__db_fail(db, "reading outbox metadata");
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *found = rc == SQLITE_ROW;
    if (rc == SQLITE_ROW)
        snprintf(buf, buflen, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return sonar__db_fail(db, "reading outbox metadata");
    return SONAR_OK;
}

sonar_status sonar_outbox_migrate(sqlite3 *db)
{
    if (db == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "outbox migrate: db is NULL");
    if (!sqlite3_get_autocommit(db))
        return sonar__fail(SONAR_ERR_STATE,
                           "outbox migrate: call it outside a transaction (it switches to WAL)");
    sonar_status s = sonar__db_exec(db, "PRAGMA journal_mode=WAL");
    if (s != SONAR_OK)
        return s;
    if ((s = sonar__db_exec(db, "BEGIN IMMEDIATE")) != SONAR_OK)
        return s;
    s = sonar__db_exec(db, "CREATE TABLE IF NOT EXISTS sonar_outbox_meta("
                           "key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID");
    char ver[32];
    bool found = false;
    if (s == SONAR_OK)
        s = meta_get(db, "schema_version", ver, sizeof ver, &found);
    if (s == SONAR_OK && found && atoi(ver) > SONAR_OUTBOX_SCHEMA_VERSION)
        s = sonar__fail(SONAR_ERR_DB,
                        "outbox schema version %s is newer than this library (%d)", ver,
                        SONAR_OUTBOX_SCHEMA_VERSION);
    if (s == SONAR_OK && found && atoi(ver) == 1)
        s = upgrade_v1(db);
    if (s == SONAR_OK && found && atoi(ver) <= 2)
        s = upgrade_v2(db);
    if (s == SONAR_OK && !found) {
        char id[23], sql[512];
        sonar_random_id(id);
        s = sonar__db_exec(db, schema_v3);
        snprintf(sql, sizeof sql,
                 "INSERT INTO sonar_outbox_meta(key, value) VALUES"
                 " ('schema_version', '%d'), ('outbox_id', '%s'), ('published', '0'),"
                 " ('retries', '0'), ('dead', '0')",
                 SONAR_OUTBOX_SCHEMA_VERSION, id);
        if (s == SONAR_OK)
            s = sonar__db_exec(db, sql);
    }
    if (s == SONAR_OK)
        return sonar__db_exec(db, "COMMIT");
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", sonar_last_error());
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return sonar__fail(s, "%s", saved);
}

/* ---- Enqueue ----------------------------------------------------------- */

void sonar_outbox_set_busy_handler(sqlite3 *db)
{
    if (db)
        sonar__db_fast_busy(db);
}

bool sonar_outbox_subject_valid(const char *subject)
{
    if (subject == NULL || *subject == '\0')
        return false;
    size_t len = strlen(subject);
    if (len > SONAR_OUTBOX_MAX_SUBJECT || subject[0] == '.' || subject[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)subject[i];
        if (c <= ' ' || c >= 127 || c == '*' || c == '>')
            return false;
        if (c == '.' && subject[i + 1] == '.')
            return false;
    }
    return true;
}

static sonar_status header_check(const char *name, const char *value)
{
    size_t n = strlen(name);
    if (n == 0 || n > 128)
        return sonar__fail(SONAR_ERR_INVALID, "outbox header name must be 1..128 bytes");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c >= 127 || c == ':')
            return sonar__fail(SONAR_ERR_INVALID,
                               "outbox header name \"%.128s\" has a forbidden character", name);
    }
    if (strcasecmp(name, MSG_ID_HEADER) == 0 || strncasecmp(name, "Nats-Expected-", 14) == 0)
        return sonar__fail(SONAR_ERR_INVALID,
                           "outbox header \"%s\" is reserved (the relay sets message ids)",
                           name);
    if (value == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "outbox header \"%s\" has no value", name);
    if (strlen(value) > 4096 || strpbrk(value, "\r\n") != NULL)
        return sonar__fail(SONAR_ERR_INVALID,
                           "outbox header \"%s\" value must be one line of at most 4096 bytes",
                           name);
    return SONAR_OK;
}

static sonar_status headers_to_json(const char *const *headers, char **out)
{
    *out = NULL;
    if (headers == NULL || headers[0] == NULL)
        return SONAR_OK;
    json_t *arr = json_array();
    if (arr == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    for (size_t i = 0; headers[i] != NULL; i += 2) {
        sonar_status s = header_check(headers[i], headers[i + 1]);
        if (s != SONAR_OK) {
            json_decref(arr);
            return s;
        }
        json_array_append_new(arr, json_pack("[ss]", headers[i], headers[i + 1]));
    }
    *out = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return *out ? SONAR_OK : sonar__fail(SONAR_ERR_NOMEM, "out of memory");
}

#define INSERT_SQL                                                                              \
    "INSERT INTO sonar_outbox(subject, payload, headers, created_ms) VALUES (?1, ?2, ?3, ?4)"
#define NOT_MIGRATED_HINT "(did sonar_outbox_migrate run?)"

/* Checks an event and encodes its headers (*hjson: new, or NULL). */
static sonar_status enqueue_check(const char *subject, const void *payload, size_t len,
                                  const char *const *headers, char **hjson)
{
    if (!sonar_outbox_subject_valid(subject))
        return sonar__fail(SONAR_ERR_INVALID,
                           "outbox enqueue: subject \"%.80s\" is not a concrete NATS subject "
                           "(tokens separated by '.', no wildcards or whitespace, <= %d bytes)",
                           subject ? subject : "(null)", SONAR_OUTBOX_MAX_SUBJECT);
    if (payload == NULL && len > 0)
        return sonar__fail(SONAR_ERR_INVALID, "outbox enqueue: payload is NULL");
    if (len > SONAR_OUTBOX_MAX_PAYLOAD)
        return sonar__fail(SONAR_ERR_LIMIT, "outbox enqueue: payload of %zu bytes exceeds %d",
                           len, SONAR_OUTBOX_MAX_PAYLOAD);
    return headers_to_json(headers, hjson);
}

/* Binds and runs the prepared INSERT \p st, then resets it. */
static sonar_status enqueue_run(int64_t *out_id, sqlite3 *db, sqlite3_stmt *st,
                                const char *subject, const void *payload, size_t len,
                                const char *hjson)
{
    sonar_status s = SONAR_OK;
    sqlite3_bind_text(st, 1, subject, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 2, len ? payload : "", len, SQLITE_STATIC);
    if (hjson)
        sqlite3_bind_text(st, 3, hjson, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, sonar_wall_ms());
    if (sqlite3_step(st) != SQLITE_DONE)
        s = sonar__db_fail(db, "outbox enqueue");
    else if (out_id)
        *out_id = sqlite3_last_insert_rowid(db);
    sqlite3_reset(st);
    return s;
}

sonar_status sonar_outbox_enqueue(int64_t *out_id, sqlite3 *db, const char *subject,
                                  const void *payload, size_t len,
                                  const char *const *headers)
{
    if (db == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "outbox enqueue: db is NULL");
    char *hjson = NULL;
    sonar_status s = enqueue_check(subject, payload, len, headers, &hjson);
    if (s != SONAR_OK)
        return s;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, INSERT_SQL, -1, &st, NULL) != SQLITE_OK) {
        free(hjson);
        return sonar__db_fail(db, "outbox enqueue " NOT_MIGRATED_HINT);
    }
    s = enqueue_run(out_id, db, st, subject, payload, len, hjson);
    sqlite3_finalize(st);
    free(hjson);
    return s;
}

struct sonar_outbox_writer {
    sqlite3 *db;
    sqlite3_stmt *insert;
};

sonar_status sonar_outbox_writer_create(sonar_outbox_writer **out, sqlite3 *db)
{
    if (out == NULL || db == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "outbox writer: out and db are required");
    sonar_outbox_writer *w = calloc(1, sizeof *w);
    if (w == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    w->db = db;
    if (sqlite3_prepare_v3(db, INSERT_SQL, -1, SQLITE_PREPARE_PERSISTENT, &w->insert, NULL) !=
        SQLITE_OK) {
        sonar_status s = sonar__db_fail(db, "outbox writer " NOT_MIGRATED_HINT);
        free(w);
        return s;
    }
    *out = w;
    return SONAR_OK;
}

sonar_status sonar_outbox_writer_enqueue(int64_t *out_id, sonar_outbox_writer *w,
                                         const char *subject, const void *payload, size_t len,
                                         const char *const *headers)
{
    if (w == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "outbox enqueue: writer is NULL");
    char *hjson = NULL;
    sonar_status s = enqueue_check(subject, payload, len, headers, &hjson);
    if (s == SONAR_OK)
        s = enqueue_run(out_id, w->db, w->insert, subject, payload, len, hjson);
    free(hjson);
    return s;
}

void sonar_outbox_writer_destroy(sonar_outbox_writer *w)
{
    if (w == NULL)
        return;
    sqlite3_finalize(w->insert);
    free(w);
}

/* ---- Relay ------------------------------------------------------------- */

typedef enum slot_state {
    SLOT_IDLE = 0,   /* loaded, not sent */
    SLOT_SENT,       /* published, no answer yet */
    SLOT_OK,         /* PubAck received */
    SLOT_FAILED,     /* refused or failed; see err/errcode */
} slot_state;

typedef struct slot {
    int64_t id;
    char *subject;
    void *payload;
    size_t len;
    char *headers;
    int64_t created_ms;
    int64_t sent_at_ms;  /* monotonic, when published */
    slot_state state;
    bool duplicate;
    bool permanent;      /* decided before publishing (e.g. too large) */
    uint64_t seq;
    natsStatus err;
    int errcode;
    char errtext[160];
} slot;

typedef struct subject_state {
    char *subject;
    int64_t fail_since_ms;  /* monotonic; 0: last attempt succeeded */
    int64_t next_try_ms;    /* monotonic; blocked until then */
    int64_t backoff_ms;
    int64_t last_id;        /* highest row id acked on this subject */
    uint64_t last_seq;      /* its stream sequence */
} subject_state;

struct sonar_outbox {
    sonar_bus *bus;            /* borrowed; the relay's connections come from it */
    natsConnection *nc;        /* relay thread: its own direct connection, or NULL */
    jsCtx *js;                 /* on nc */
    bool warned_connect;       /* the last failed connect was logged */
    char *db_path;
    char *name;
    sonar_outbox_config cfg;
    char obid[32];
    sqlite3 *db;
    sqlite3_stmt *st_select, *st_delete, *st_mark, *st_fail, *st_dead_ins, *st_dead_del;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;       /* notify/stop and answers for the relay */
    bool stop;
    bool notified;
    bool in_load_gap;          /* the relay waits out LOAD_GAP_NS: notify need not wake it */

    /* The window: rows loaded and not yet settled, ids ascending, at
     * slots[head .. head + n_slots) of an array of 2 * max_in_flight.
     * The PubAck handler reads and writes slot states under mu. */
    slot *slots;
    size_t cap, head, n_slots;
    int64_t cursor;            /* highest id loaded in this pass */
    bool draining;             /* let the window empty, then restart the pass */
    char *last_blocked;        /* blocked-subject list of this pass */
    int64_t inflight;          /* published and not yet answered or reclaimed */
    int64_t answered;          /* answers since the relay last woke */
    int64_t wake_at;           /* the handler wakes the relay at this many answers */
    int64_t batch_failures;    /* failed answers/publishes in the window */
    bool saw_retry_all;        /* a connection-level failure in this pass */

    subject_state *subs;       /* relay thread only */
    size_t n_subs;
    int64_t backoff_ms;        /* global transient back-off (relay thread) */
    int64_t idle_ms;
    int64_t prune_due_ms;      /* wall clock; INT64_MAX: nothing retained */
    int64_t pending_refresh_ms;
    int64_t last_settle_ms;
    int64_t last_load_ns;      /* monotonic, when load_more last found no more rows */
    unsigned rng;

    sonar_outbox_stats st;     /* guarded by mu */
};

static int64_t jitter(sonar_outbox *ob, int64_t d)
{
    /* "Equal jitter": uniformly in [d/2, d]. */
    if (d <= 1)
        return d;
    return d / 2 + (int64_t)(rand_r(&ob->rng) % (unsigned)(d / 2 + 1));
}

static int64_t grow(int64_t cur, int64_t lo, int64_t hi)
{
    if (cur <= 0)
        return lo;
    return cur * 2 > hi ? hi : cur * 2;
}

/* Waits on the relay's condition until notified, stopped or ms passed. */
static void relay_wait(sonar_outbox *ob, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (ms % 1000) * 1000000;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&ob->mu);
    while (!ob->stop && !ob->notified) {
        if (pthread_cond_timedwait(&ob->cond, &ob->mu, &ts) == ETIMEDOUT)
            break;
    }
    ob->notified = false;
    pthread_mutex_unlock(&ob->mu);
}

static bool stopping(sonar_outbox *ob)
{
    pthread_mutex_lock(&ob->mu);
    bool s = ob->stop;
    pthread_mutex_unlock(&ob->mu);
    return s;
}

static void count_query(sonar_outbox *ob)
{
    pthread_mutex_lock(&ob->mu);
    ob->st.db_queries++;
    pthread_mutex_unlock(&ob->mu);
}

static subject_state *subject_find(sonar_outbox *ob, const char *subject, bool create)
{
    for (size_t i = 0; i < ob->n_subs; i++)
        if (strcmp(ob->subs[i].subject, subject) == 0)
            return &ob->subs[i];
    if (!create)
        return NULL;
    if (ob->n_subs >= MAX_SUBJECT_STATES) {
        /* Forget healthy subjects first; their only state is the order probe. */
        size_t w = 0;
        for (size_t i = 0; i < ob->n_subs; i++) {
            if (ob->subs[i].fail_since_ms == 0) {
                free(ob->subs[i].subject);
                continue;
            }
            ob->subs[w++] = ob->subs[i];
        }
        ob->n_subs = w;
        if (ob->n_subs >= MAX_SUBJECT_STATES)
            return NULL;
    }
    if (ob->subs == NULL) {
        ob->subs = calloc(MAX_SUBJECT_STATES, sizeof *ob->subs);
        if (ob->subs == NULL)
            return NULL;
    }
    subject_state *s = &ob->subs[ob->n_subs];
    memset(s, 0, sizeof *s);
    s->subject = strdup(subject);
    if (s->subject == NULL)
        return NULL;
    ob->n_subs++;
    return s;
}

/* Frees the first k slots of the window (caller holds mu). */
static void window_drop(sonar_outbox *ob, size_t k)
{
    for (size_t i = ob->head; i < ob->head + k; i++) {
        free(ob->slots[i].subject);
        free(ob->slots[i].payload);
        free(ob->slots[i].headers);
    }
    ob->head += k;
    ob->n_slots -= k;
    if (ob->n_slots == 0)
        ob->head = 0;
}

/* The PubAck handler: runs on a nats.c thread; records the answer only. */
static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    sonar_outbox *ob = closure;
    const char *mid = NULL;
    int64_t id = -1;
    if (natsMsgHeader_Get(msg, MSG_ID_HEADER, &mid) == NATS_OK && mid != NULL) {
        const char *dash = strrchr(mid, '-');
        if (dash)
            id = strtoll(dash + 1, NULL, 10);
    }
    pthread_mutex_lock(&ob->mu);
    size_t lo = ob->head, hi = ob->head + ob->n_slots;
    while (lo < hi) {
        size_t mid_i = (lo + hi) / 2;
        if (ob->slots[mid_i].id < id)
            lo = mid_i + 1;
        else
            hi = mid_i;
    }
    if (lo < ob->head + ob->n_slots && ob->slots[lo].id == id &&
        ob->slots[lo].state == SLOT_SENT) {
        slot *s = &ob->slots[lo];
        if (pa != NULL) {
            s->state = SLOT_OK;
            s->duplicate = pa->Duplicate;
            s->seq = pa->Sequence;
        } else {
            s->state = SLOT_FAILED;
            s->err = pae ? pae->Err : NATS_ERR;
            s->errcode = pae ? (int)pae->ErrCode : 0;
            snprintf(s->errtext, sizeof s->errtext, "%s",
                     pae && pae->ErrText ? pae->ErrText
                                         : natsStatus_GetText(pae ? pae->Err : NATS_ERR));
            ob->batch_failures++;
        }
    }
    natsMsg_Destroy(msg);
    ob->answered++;
    if ((--ob->inflight <= 0 || ob->answered >= ob->wake_at || ob->batch_failures > 0) &&
        !ob->in_load_gap) /* the relay looks at the answers after its gap */
        pthread_cond_broadcast(&ob->cond);
    pthread_mutex_unlock(&ob->mu);
}

static bool conn_up(sonar_outbox *ob)
{
    bool up = ob->nc != NULL && natsConnection_Status(ob->nc) == NATS_CONN_STATUS_CONNECTED;
    pthread_mutex_lock(&ob->mu);
    ob->st.connected = up;
    pthread_mutex_unlock(&ob->mu);
    return up;
}

/* JSON array of subjects blocked by their back-off now (new), and the
 * earliest moment one of them unblocks. */
static char *blocked_subjects(sonar_outbox *ob, int64_t now, int64_t *next_unblock)
{
    json_t *arr = json_array();
    *next_unblock = INT64_MAX;
    for (size_t i = 0; i < ob->n_subs; i++) {
        if (ob->subs[i].next_try_ms > now) {
            json_array_append_new(arr, json_string(ob->subs[i].subject));
            if (ob->subs[i].next_try_ms < *next_unblock)
                *next_unblock = ob->subs[i].next_try_ms;
        }
    }
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return s;
}

/* Appends up to `want` pending rows with id > cursor (id order) of
 * unblocked subjects to the window. Returns the number loaded, or -1. */
static long load_more(sonar_outbox *ob, const char *blocked, size_t want)
{
    pthread_mutex_lock(&ob->mu);
    if (ob->head + ob->n_slots + want > ob->cap) {
        memmove(ob->slots, ob->slots + ob->head, ob->n_slots * sizeof *ob->slots);
        ob->head = 0;
    }
    size_t at = ob->head + ob->n_slots;
    pthread_mutex_unlock(&ob->mu);
    sqlite3_stmt *st = ob->st_select;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, blocked ? blocked : "[]", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)want);
    sqlite3_bind_int64(st, 3, ob->cursor);
    count_query(ob);
    size_t n = 0;
    int rc;
    /* Slots past the window are the relay's own until n_slots grows. */
    while (n < want && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        slot *s = &ob->slots[at + n];
        memset(s, 0, sizeof *s);
        s->id = sqlite3_column_int64(st, 0);
        s->subject = strdup((const char *)sqlite3_column_text(st, 1));
        s->len = (size_t)sqlite3_column_bytes(st, 2);
        s->payload = malloc(s->len ? s->len : 1);
        if (s->len && s->payload)
            memcpy(s->payload, sqlite3_column_blob(st, 2), s->len);
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            s->headers = strdup((const char *)sqlite3_column_text(st, 3));
        s->created_ms = sqlite3_column_int64(st, 4);
        n++;
        if (s->subject == NULL || s->payload == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
    }
    if (n == want)
        rc = SQLITE_DONE;
    sqlite3_reset(st);
    pthread_mutex_lock(&ob->mu);
    ob->n_slots += n;
    pthread_mutex_unlock(&ob->mu);
    if (n > 0)
        ob->cursor = ob->slots[at + n - 1].id;
    if (rc != SQLITE_DONE) {
        sonar__db_fail(ob->db, "outbox relay: reading pending rows");
        return -1;
    }
    return (long)n;
}

static natsStatus build_msg(natsMsg **out, const slot *s)
{
    natsMsg *m = NULL;
    natsStatus ns = natsMsg_Create(&m, s->subject, NULL, s->payload, (int)s->len);
    if (ns == NATS_OK && s->headers) {
        json_t *arr = json_loads(s->headers, 0, NULL);
        size_t i;
        json_t *pair;
        json_array_foreach(arr, i, pair) {
            const char *k = json_string_value(json_array_get(pair, 0));
            const char *v = json_string_value(json_array_get(pair, 1));
            if (k && v && ns == NATS_OK)
                ns = natsMsgHeader_Add(m, k, v);
        }
        json_decref(arr);
    }
    if (ns != NATS_OK) {
        natsMsg_Destroy(m);
        return ns;
    }
    *out = m;
    return NATS_OK;
}

static void slot_fail(sonar_outbox *ob, slot *s, natsStatus err, bool permanent, const char *fmt,
                      ...) __attribute__((format(printf, 5, 6)));
static void slot_fail(sonar_outbox *ob, slot *s, natsStatus err, bool permanent, const char *fmt,
                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&ob->mu);
    ob->batch_failures++;
    s->state = SLOT_FAILED;
    s->err = err;
    s->permanent = permanent;
    vsnprintf(s->errtext, sizeof s->errtext, fmt, ap);
    pthread_mutex_unlock(&ob->mu);
    va_end(ap);
}

/* Publishes window slots from index `from` on; stops at the first
 * connection-level failure and skips later rows of a subject whose earlier
 * row failed (they are read again after the window drained). */
static void publish_from(sonar_outbox *ob, size_t from)
{
    int64_t max_payload = natsConnection_GetMaxPayload(ob->nc);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ob->cfg.ack_timeout_ms;
    char mid[64];
    for (size_t i = from; i < ob->head + ob->n_slots; i++) {
        slot *s = &ob->slots[i];
        bool skip = false;
        pthread_mutex_lock(&ob->mu);
        if (ob->batch_failures > 0)
            for (size_t j = ob->head; j < i && !skip; j++)
                skip = ob->slots[j].state == SLOT_FAILED && !ob->slots[j].permanent &&
                       strcmp(ob->slots[j].subject, s->subject) == 0;
        pthread_mutex_unlock(&ob->mu);
        if (skip)
            continue;
        size_t hlen = s->headers ? strlen(s->headers) : 0;
        if (max_payload > 0 && (int64_t)(s->len + hlen) > max_payload) {
            slot_fail(ob, s, NATS_MAX_PAYLOAD, true,
                      "payload of %zu bytes (+headers) exceeds the server's max_payload %" PRId64,
                      s->len, max_payload);
            continue;
        }
        if (!conn_up(ob))
            break;
        natsMsg *m = NULL;
        natsStatus ns = build_msg(&m, s);
        if (ns != NATS_OK) {
            slot_fail(ob, s, ns, false, "building message: %s", natsStatus_GetText(ns));
            break;
        }
        snprintf(mid, sizeof mid, "%s-%" PRId64, ob->obid, s->id);
        po.MsgId = mid;
        pthread_mutex_lock(&ob->mu);
        s->state = SLOT_SENT;
        s->sent_at_ms = sonar_now_ms();
        ob->inflight++;
        pthread_mutex_unlock(&ob->mu);
        ns = js_PublishMsgAsync(ob->js, &m, &po);
        if (ns != NATS_OK) {
            pthread_mutex_lock(&ob->mu);
            ob->inflight--;
            pthread_mutex_unlock(&ob->mu);
            natsMsg_Destroy(m);
            bool perm = ns == NATS_MAX_PAYLOAD;
            slot_fail(ob, s, ns, perm, "publish: %s", natsStatus_GetText(ns));
            if (!perm)
                break;
        }
    }
}

/* Takes back publishes still unanswered: they count as timed out and are
 * retried after the window drained. */
static void reclaim(sonar_outbox *ob)
{
    natsMsgList pending = {0};
    if (ob->js != NULL && js_PublishAsyncGetPendingList(&pending, ob->js) == NATS_OK) {
        pthread_mutex_lock(&ob->mu);
        ob->inflight -= pending.Count;
        pthread_mutex_unlock(&ob->mu);
        natsMsgList_Destroy(&pending);
    }
    /* Handlers already running finish quickly; wait for them. */
    pthread_mutex_lock(&ob->mu);
    while (ob->inflight > 0)
        pthread_cond_wait(&ob->cond, &ob->mu);
    for (size_t i = ob->head; i < ob->head + ob->n_slots; i++) {
        slot *s = &ob->slots[i];
        if (s->state == SLOT_SENT) {
            s->state = SLOT_FAILED;
            s->err = NATS_TIMEOUT;
            snprintf(s->errtext, sizeof s->errtext, "no PubAck within %" PRId64 " ms",
                     ob->cfg.ack_timeout_ms);
            ob->batch_failures++;
        }
    }
    pthread_mutex_unlock(&ob->mu);
}

/* Waits until enough answers arrived to be worth a transaction (a quarter
 * of the window, or all when draining or when no more rows wait), a
 * failure, new work with room in the window, or the oldest publish timed
 * out (then reclaims). */
static void await_some(sonar_outbox *ob, bool more_waiting)
{
    bool timed_out = false;
    pthread_mutex_lock(&ob->mu);
    int64_t quarter = ob->cfg.max_in_flight / 4 > 0 ? ob->cfg.max_in_flight / 4 : 1;
    bool all = ob->draining || !more_waiting;
    ob->wake_at = all ? INT64_MAX : quarter;
    while (!ob->stop && ob->inflight > 0 && ob->answered < ob->wake_at &&
           (ob->batch_failures == 0 || ob->draining)) {
        /* New rows and room for them: go publish (pipelining). */
        if (!ob->draining && ob->notified && ob->n_slots < (size_t)ob->cfg.max_in_flight)
            break;
        /* The oldest unanswered publish is the first SENT slot. */
        int64_t sent = 0;
        for (size_t i = ob->head; i < ob->head + ob->n_slots; i++)
            if (ob->slots[i].state == SLOT_SENT) {
                sent = ob->slots[i].sent_at_ms;
                break;
            }
        if (sent && sonar_now_ms() - sent > ob->cfg.ack_timeout_ms + 500) {
            timed_out = true;
            break;
        }
        pthread_mutex_unlock(&ob->mu);
        bool up = conn_up(ob);
        pthread_mutex_lock(&ob->mu);
        if (!up) {
            timed_out = true; /* lost connection: unanswered publishes are retried */
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&ob->cond, &ob->mu, &ts);
    }
    ob->answered = 0;
    pthread_mutex_unlock(&ob->mu);
    if (timed_out)
        reclaim(ob);
}

/* The classification rule (docs/outbox.md, "Failures"). */
typedef enum verdict { V_DONE, V_RETRY_SUBJECT, V_RETRY_ALL, V_DEAD } verdict;

static bool transient_js_code(int code)
{
    switch (code) {
    case 10008: /* JetStream system temporarily unavailable */
    case 10009: /* not leader */
    case 10023: /* insufficient resources */
    case 10028: /* memory resources exceeded */
    case 10047: /* storage resources exceeded */
    case 10077: /* store failed (e.g. discard-new limits: space may free up) */
    case 10118: /* stream offline */
    case 10076: /* JetStream not enabled (server restarting) */
        return true;
    default:
        return false;
    }
}

static verdict classify(sonar_outbox *ob, const slot *s, subject_state *ss, int64_t now)
{
    if (s->state == SLOT_OK)
        return V_DONE;
    if (s->permanent)
        return V_DEAD;
    if (s->err == NATS_NO_RESPONDERS) {
        /* No stream listens on this subject -- or JetStream is not up yet.
         * Permanent only after no_stream_grace_ms without a success here. */
        if (ss && ss->fail_since_ms > 0 && now - ss->fail_since_ms >= ob->cfg.no_stream_grace_ms)
            return V_DEAD;
        return V_RETRY_SUBJECT;
    }
    if (s->errcode != 0)
        return transient_js_code(s->errcode) ? V_RETRY_SUBJECT : V_DEAD;
    return V_RETRY_ALL; /* timeouts, connection errors */
}

/* Deletes the pending rows lo..hi (all confirmed). */
static sonar_status delete_range(sonar_outbox *ob, int64_t lo, int64_t hi)
{
    sqlite3_reset(ob->st_delete);
    sqlite3_bind_int64(ob->st_delete, 1, lo);
    sqlite3_bind_int64(ob->st_delete, 2, hi);
    int rc = sqlite3_step(ob->st_delete);
    sqlite3_reset(ob->st_delete);
    return rc == SQLITE_DONE ? SONAR_OK : sonar__db_fail(ob->db, "outbox: deleting sent rows");
}

/* A confirmed row: copied to sonar_outbox_sent when retained, then deleted.
 * (Without retention settle_prefix() deletes runs of ids at once.) */
static sonar_status step_done(sonar_outbox *ob, const slot *s, int64_t wall)
{
    int rc = SQLITE_DONE;
    if (ob->cfg.retention_ms > 0) {
        sqlite3_stmt *st = ob->st_mark;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, wall);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)s->seq);
        sqlite3_bind_int64(st, 3, s->id);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
    }
    if (rc == SQLITE_DONE)
        return delete_range(ob, s->id, s->id);
    return sonar__db_fail(ob->db, "outbox: recording a sent row");
}

static sonar_status step_dead(sonar_outbox *ob, const slot *s, const char *why, int64_t wall)
{
    sqlite3_reset(ob->st_dead_ins);
    sqlite3_bind_text(ob->st_dead_ins, 1, why, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(ob->st_dead_ins, 2, wall);
    sqlite3_bind_int64(ob->st_dead_ins, 3, s->id);
    int rc = sqlite3_step(ob->st_dead_ins);
    sqlite3_reset(ob->st_dead_ins);
    if (rc != SQLITE_DONE)
        return sonar__db_fail(ob->db, "outbox: moving row to dead-letter");
    sqlite3_reset(ob->st_dead_del);
    sqlite3_bind_int64(ob->st_dead_del, 1, s->id);
    rc = sqlite3_step(ob->st_dead_del);
    sqlite3_reset(ob->st_dead_del);
    return rc == SQLITE_DONE ? SONAR_OK : sonar__db_fail(ob->db, "outbox: moving row to dead-letter");
}

static sonar_status step_fail(sonar_outbox *ob, const slot *s)
{
    sqlite3_reset(ob->st_fail);
    sqlite3_bind_text(ob->st_fail, 1, s->errtext, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(ob->st_fail, 2, s->id);
    int rc = sqlite3_step(ob->st_fail);
    sqlite3_reset(ob->st_fail);
    return rc == SQLITE_DONE ? SONAR_OK : sonar__db_fail(ob->db, "outbox: recording failure");
}

static void order_probe(sonar_outbox *ob, subject_state *ss, const slot *s)
{
    if (ss == NULL)
        return;
    /* Row order and stream order must agree: an earlier row stored after a
     * later one, or (a duplicate's sequence is its first copy's) a later row
     * stored before an earlier one. */
    bool inverted = ss->last_id != 0 && s->id != ss->last_id &&
                    (s->id < ss->last_id ? s->seq > ss->last_seq : s->seq < ss->last_seq);
    if (inverted) {
        pthread_mutex_lock(&ob->mu);
        ob->st.order_anomalies++;
        pthread_mutex_unlock(&ob->mu);
        sonar_log(SONAR_LOG_ERROR,
                  "outbox %s: row %" PRId64 " on %s stored at sequence %" PRIu64
                  ", row %" PRId64 " at sequence %" PRIu64 ": per-subject order broken",
                  ob->name, s->id, s->subject, s->seq, ss->last_id, ss->last_seq);
    }
    if (s->id > ss->last_id) {
        ss->last_id = s->id;
        ss->last_seq = s->seq;
    }
}

/* Records the outcome of the first k window slots (all answered or not
 * sent) in one transaction, updates back-offs, and drops them. */
static sonar_status settle_prefix(sonar_outbox *ob, size_t k)
{
    int64_t now = sonar_now_ms(), wall = sonar_wall_ms();
    int64_t n_ok = 0, n_dup = 0, n_retry = 0, n_dead = 0;
    bool retry_all = false;
    sonar_status s = sonar__db_exec(ob->db, "BEGIN IMMEDIATE");
    count_query(ob);
    if (s != SONAR_OK)
        return s;
    /* Without retention, confirmed rows with consecutive ids go in one
     * DELETE: no other row can hold an id between them. */
    int64_t run_lo = 0, run_hi = -1;
    for (size_t i = ob->head; i < ob->head + k && s == SONAR_OK; i++) {
        slot *sl = &ob->slots[i];
        if (sl->state == SLOT_IDLE)
            continue;
        /* Subject state exists only for subjects that failed lately, so the
         * common case (nothing failing) costs no lookup. */
        subject_state *ss = ob->n_subs || sl->state != SLOT_OK
                                ? subject_find(ob, sl->subject, sl->state != SLOT_OK)
                                : NULL;
        verdict v = classify(ob, sl, ss, now);
        count_query(ob);
        switch (v) {
        case V_DONE:
            if (ob->cfg.retention_ms > 0) {
                s = step_done(ob, sl, wall);
            } else if (run_hi >= run_lo && sl->id == run_hi + 1) {
                run_hi = sl->id;
            } else {
                if (run_hi >= run_lo)
                    s = delete_range(ob, run_lo, run_hi);
                run_lo = run_hi = sl->id;
            }
            n_ok++;
            n_dup += sl->duplicate;
            order_probe(ob, ss, sl);
            if (ss) {
                ss->fail_since_ms = 0;
                ss->backoff_ms = 0;
                ss->next_try_ms = 0;
            }
            break;
        case V_DEAD: {
            char why[256];
            snprintf(why, sizeof why, "%s%s", sl->errtext,
                     sl->err == NATS_NO_RESPONDERS ? " (no stream for this subject)" : "");
            s = step_dead(ob, sl, why, wall);
            n_dead++;
            sonar_log(SONAR_LOG_ERROR,
                      "outbox %s: row %" PRId64 " on %s moved to dead-letter: %s", ob->name,
                      sl->id, sl->subject, why);
            break;
        }
        case V_RETRY_SUBJECT:
        case V_RETRY_ALL:
            s = step_fail(ob, sl);
            n_retry++;
            if (ss) {
                if (ss->fail_since_ms == 0)
                    ss->fail_since_ms = now;
                ss->backoff_ms = grow(ss->backoff_ms, ob->cfg.retry_min_ms, ob->cfg.retry_max_ms);
                ss->next_try_ms = now + jitter(ob, ss->backoff_ms);
            }
            if (v == V_RETRY_ALL)
                retry_all = true;
            sonar_log(SONAR_LOG_DEBUG, "outbox %s: row %" PRId64 " on %s will be retried: %s",
                      ob->name, sl->id, sl->subject, sl->errtext);
            break;
        }
    }
    if (s == SONAR_OK && run_hi >= run_lo)
        s = delete_range(ob, run_lo, run_hi);
    if (s == SONAR_OK && (n_ok || n_retry || n_dead)) {
        char sql[256];
        snprintf(sql, sizeof sql,
                 "UPDATE sonar_outbox_meta SET value = CAST(value AS INTEGER) + CASE key"
                 " WHEN 'published' THEN %" PRId64 " WHEN 'retries' THEN %" PRId64
                 " WHEN 'dead' THEN %" PRId64 " END"
                 " WHERE key IN ('published','retries','dead')",
                 n_ok, n_retry, n_dead);
        s = sonar__db_exec(ob->db, sql);
        count_query(ob);
    }
    if (s == SONAR_OK)
        s = sonar__db_exec(ob->db, "COMMIT");
    if (s != SONAR_OK) {
        sqlite3_exec(ob->db, "ROLLBACK", NULL, NULL, NULL);
        return s;
    }
    if (n_ok && ob->cfg.retention_ms > 0 && wall + ob->cfg.retention_ms < ob->prune_due_ms)
        ob->prune_due_ms = wall + ob->cfg.retention_ms;
    if (retry_all)
        ob->saw_retry_all = true;
    else if (n_ok > 0)
        ob->backoff_ms = 0;
    pthread_mutex_lock(&ob->mu);
    window_drop(ob, k);
    ob->st.published += n_ok;
    /* The counted backlog shrinks now, not at the next count (rows enqueued
     * since that count are added by it, about once a second). */
    ob->st.pending = ob->st.pending > n_ok + n_dead ? ob->st.pending - n_ok - n_dead : 0;
    if (ob->st.pending == 0)
        ob->st.oldest_pending_age_ms = 0;
    ob->st.duplicates += n_dup;
    ob->st.retries += n_retry;
    ob->st.dead += n_dead;
    ob->st.dead_total += n_dead;
    ob->st.batches++;
    ob->st.backoff_ms = ob->backoff_ms;
    pthread_mutex_unlock(&ob->mu);
    return SONAR_OK;
}

static void refresh_pending(sonar_outbox *ob)
{
    sqlite3_stmt *st = NULL;
    int64_t pending = 0, oldest = 0, dead = 0;
    if (sqlite3_prepare_v2(ob->db,
                           "SELECT " PENDING_COUNT_SQL ","
                           " (SELECT created_ms FROM sonar_outbox WHERE " PENDING_WHERE
                           " ORDER BY id LIMIT 1),"
                           " (SELECT count(*) FROM sonar_outbox_dead)",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        pending = sqlite3_column_int64(st, 0);
        if (sqlite3_column_type(st, 1) != SQLITE_NULL)
            oldest = sonar_wall_ms() - sqlite3_column_int64(st, 1);
        dead = sqlite3_column_int64(st, 2);
    }
    sqlite3_finalize(st);
    pthread_mutex_lock(&ob->mu);
    ob->st.db_queries++;
    ob->st.pending = pending;
    ob->st.oldest_pending_age_ms = oldest < 0 ? 0 : oldest;
    ob->st.dead_total = dead;
    pthread_mutex_unlock(&ob->mu);
    ob->pending_refresh_ms = sonar_now_ms();
}

static void prune(sonar_outbox *ob)
{
    int64_t wall = sonar_wall_ms();
    if (ob->cfg.retention_ms <= 0 || wall < ob->prune_due_ms)
        return;
    sqlite3_stmt *st = NULL;
    int deleted = 0;
    if (sqlite3_prepare_v2(ob->db,
                           "DELETE FROM sonar_outbox_sent WHERE id IN (SELECT id FROM"
                           " sonar_outbox_sent WHERE sent_ms < ?1 ORDER BY sent_ms LIMIT ?2)",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, wall - ob->cfg.retention_ms);
        sqlite3_bind_int(st, 2, PRUNE_BATCH);
        if (sqlite3_step(st) == SQLITE_DONE)
            deleted = sqlite3_changes(ob->db);
        else
            sonar_log(SONAR_LOG_WARN, "outbox %s: prune failed: %s", ob->name,
                      sqlite3_errmsg(ob->db));
    }
    sqlite3_finalize(st);
    count_query(ob);
    if (deleted >= PRUNE_BATCH) {
        ob->prune_due_ms = wall; /* more to do: next cycle, in small steps */
        return;
    }
    int64_t oldest = INT64_MAX;
    sonar__db_int(ob->db, "SELECT min(sent_ms) FROM sonar_outbox_sent",
                  NULL, INT64_MAX, &oldest);
    count_query(ob);
    ob->prune_due_ms = oldest == INT64_MAX ? INT64_MAX : oldest + ob->cfg.retention_ms;
}

static void warn_beyond_window(sonar_outbox *ob)
{
    int64_t n = 0;
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM sonar_outbox WHERE attempts > 0 AND " PENDING_WHERE
             " AND created_ms < %" PRId64,
             sonar_wall_ms() - ob->cfg.duplicate_window_ms);
    if (sonar__db_int(ob->db, sql, NULL, 0, &n) == SONAR_OK && n > 0)
        sonar_log(SONAR_LOG_WARN,
                  "outbox %s: %" PRId64 " pending rows were attempted before and are older than"
                  " the %" PRId64 " ms duplicate window; if the server stored them, consumers"
                  " will see them twice",
                  ob->name, n, ob->cfg.duplicate_window_ms);
}

/* Index of the first slot still waiting for its answer, i.e. the number
 * of window slots that can be settled now. */
static size_t resolved_prefix(sonar_outbox *ob)
{
    pthread_mutex_lock(&ob->mu);
    size_t k = 0;
    while (k < ob->n_slots && ob->slots[ob->head + k].state != SLOT_SENT)
        k++;
    if (ob->batch_failures > 0)
        ob->draining = true;
    pthread_mutex_unlock(&ob->mu);
    return k;
}

/* After the window drained: restart the pass from the oldest pending row,
 * backing off first if the connection failed during the pass. */
static void end_pass(sonar_outbox *ob)
{
    bool retry = ob->saw_retry_all;
    pthread_mutex_lock(&ob->mu);
    ob->draining = false;
    ob->batch_failures = 0;
    pthread_mutex_unlock(&ob->mu);
    ob->saw_retry_all = false;
    ob->cursor = 0;
    ob->backoff_ms = retry ? grow(ob->backoff_ms, ob->cfg.retry_min_ms, ob->cfg.retry_max_ms) : 0;
    pthread_mutex_lock(&ob->mu);
    ob->st.backoff_ms = ob->backoff_ms;
    pthread_mutex_unlock(&ob->mu);
    if (retry)
        relay_wait(ob, jitter(ob, ob->backoff_ms));
}

static void idle_wait(sonar_outbox *ob, int64_t now, int64_t next_unblock)
{
    if (next_unblock == INT64_MAX) {
        pthread_mutex_lock(&ob->mu);
        ob->st.pending = 0;
        ob->st.oldest_pending_age_ms = 0;
        pthread_mutex_unlock(&ob->mu);
    } else if (now - ob->pending_refresh_ms >= 1000) {
        refresh_pending(ob);
    }
    int64_t wait = ob->idle_ms;
    if (next_unblock != INT64_MAX && next_unblock - now < wait)
        wait = next_unblock - now < 1 ? 1 : next_unblock - now;
    ob->idle_ms = grow(ob->idle_ms, ob->cfg.idle_min_ms, ob->cfg.idle_max_ms);
    relay_wait(ob, wait);
}

/* Loads more rows into the window and publishes them. Returns false when
 * there was nothing to do and the relay waited idle. */
/* Waits until LOAD_GAP_NS passed since the last read that caught up (or a
 * stop request). Notifications do not cut it short. */
static void load_gap(sonar_outbox *ob)
{
    int64_t left = ob->last_load_ns + LOAD_GAP_NS - sonar_now_ns();
    if (ob->last_load_ns == 0 || left <= 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)left;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&ob->mu);
    ob->in_load_gap = true;
    while (!ob->stop && pthread_cond_timedwait(&ob->cond, &ob->mu, &ts) != ETIMEDOUT)
        ;
    ob->in_load_gap = false;
    pthread_mutex_unlock(&ob->mu);
}

static bool fill_window(sonar_outbox *ob, bool *more_waiting, long *loaded_out)
{
    size_t w = (size_t)ob->cfg.max_in_flight;
    load_gap(ob);
    int64_t now = sonar_now_ms(), next_unblock;
    char *blocked = blocked_subjects(ob, now, &next_unblock);
    if (blocked == NULL)
        return true;
    if (ob->n_slots > 0 && ob->last_blocked && strcmp(blocked, ob->last_blocked) != 0) {
        /* A subject's back-off ended or began: finish this pass first, so
         * its rows are read again in id order. */
        pthread_mutex_lock(&ob->mu);
        ob->draining = true;
        pthread_mutex_unlock(&ob->mu);
        free(blocked);
        return true;
    }
    if (ob->n_slots == 0) {
        ob->cursor = 0;
        free(ob->last_blocked);
        ob->last_blocked = strdup(blocked);
    }
    pthread_mutex_lock(&ob->mu);
    ob->notified = false;
    pthread_mutex_unlock(&ob->mu);
    size_t want = w - ob->n_slots;
    long loaded = load_more(ob, blocked, want);
    free(blocked);
    *loaded_out = loaded > 0 ? loaded : 0;
    if (loaded < 0) {
        sonar_log(SONAR_LOG_WARN, "outbox %s: %s", ob->name, sonar_last_error());
        if (ob->n_slots == 0)
            relay_wait(ob, 1000);
        return true;
    }
    *more_waiting = (size_t)loaded == want;
    ob->last_load_ns = *more_waiting ? 0 : sonar_now_ns();
    if (loaded == 0) {
        if (ob->n_slots == 0) {
            idle_wait(ob, now, next_unblock);
            return false;
        }
        return true;
    }
    ob->idle_ms = ob->cfg.idle_min_ms;
    size_t from = ob->head + ob->n_slots - (size_t)loaded;
    publish_from(ob, from);
    /* A row left unsent (connection lost, or an earlier row of its subject
     * failed) must not be overtaken: restart the pass once drained. */
    pthread_mutex_lock(&ob->mu);
    for (size_t i = from; i < ob->head + ob->n_slots; i++)
        if (ob->slots[i].state == SLOT_IDLE)
            ob->draining = true;
    pthread_mutex_unlock(&ob->mu);
    return true;
}

/* At stop: wait (at most the ack timeout) for the answers of publishes in
 * flight and record them, so confirmed rows are not published again. */
static void final_flush(sonar_outbox *ob)
{
    if (ob->n_slots == 0)
        return;
    int64_t deadline = sonar_now_ms() + ob->cfg.ack_timeout_ms;
    pthread_mutex_lock(&ob->mu);
    while (ob->inflight > 0 && sonar_now_ms() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 20 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&ob->cond, &ob->mu, &ts);
    }
    pthread_mutex_unlock(&ob->mu);
    reclaim(ob);
    if (settle_prefix(ob, ob->n_slots) != SONAR_OK)
        sonar_log(SONAR_LOG_WARN, "outbox %s: %s (rows stay pending)", ob->name,
                  sonar_last_error());
}

/* Drops the relay's connection (its window is empty: nothing in flight). */
static void relay_disconnect(sonar_outbox *ob)
{
    if (ob->js) {
        jsCtx_Destroy(ob->js);
        ob->js = NULL;
    }
    if (ob->nc) {
        natsConnection_Close(ob->nc);
        natsConnection_Destroy(ob->nc);
        ob->nc = NULL;
    }
}

/*
 * Opens the relay's own connection: one that never reconnects by itself
 * (see sonar__bus_connect_direct()). With nats.c's reconnect, a publish made
 * while the client notices the loss waits in the reconnect buffer and
 * reaches the new server before the retry of an earlier row of its subject
 * that the old socket lost -- a per-subject order break. Here such a
 * publish fails; the relay drains its window and reconnects itself.
 */
static bool relay_connect(sonar_outbox *ob)
{
    natsConnection *nc = NULL;
    if (sonar__bus_connect_direct(ob->bus, &nc) != SONAR_OK) {
        if (!ob->warned_connect)
            sonar_log(SONAR_LOG_WARN, "outbox %s: %s (retrying with back-off)", ob->name,
                      sonar_last_error());
        ob->warned_connect = true;
        return false;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = ob->cfg.max_in_flight;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = ob;
    natsStatus ns = natsConnection_JetStream(&ob->js, nc, &jo);
    if (ns != NATS_OK) {
        sonar_log(SONAR_LOG_WARN, "outbox %s: JetStream context: %s", ob->name,
                  natsStatus_GetText(ns));
        natsConnection_Destroy(nc);
        ob->js = NULL;
        return false;
    }
    ob->nc = nc;
    if (ob->warned_connect)
        sonar_log(SONAR_LOG_INFO, "outbox %s: connected again", ob->name);
    ob->warned_connect = false;
    return true;
}

static void *relay_main(void *arg)
{
    sonar_outbox *ob = arg;
    /* For top -H, perf and gdb; the threads nats.c starts for the relay's
     * connection (started from here) inherit the name. */
    pthread_setname_np(pthread_self(), "sonar-outbox");
    if (ob->cfg.relay_nice > 0 && sonar_thread_lower_priority(ob->cfg.relay_nice) != SONAR_OK)
        sonar_log(SONAR_LOG_WARN, "outbox %s: relay priority unchanged: %s", ob->name,
                  sonar_last_error());
    warn_beyond_window(ob);
    refresh_pending(ob);
    ob->idle_ms = ob->cfg.idle_min_ms;
    while (!stopping(ob)) {
        prune(ob);
        bool up = conn_up(ob);
        if (!up && ob->n_slots == 0) {
            relay_disconnect(ob);
            if (relay_connect(ob)) {
                ob->cursor = 0; /* a new pass from the oldest pending row */
                continue;
            }
            ob->backoff_ms = grow(ob->backoff_ms, ob->cfg.retry_min_ms, ob->cfg.retry_max_ms);
            pthread_mutex_lock(&ob->mu);
            ob->st.backoff_ms = ob->backoff_ms;
            pthread_mutex_unlock(&ob->mu);
            /* Re-check the (cheap, in-memory) status at least every second. */
            int64_t w = jitter(ob, ob->backoff_ms);
            relay_wait(ob, w > 1000 ? 1000 : w);
            ob->cursor = 0;
            continue;
        }
        if (!up) {
            /* Connection lost with publishes in flight: reclaim and retry. */
            pthread_mutex_lock(&ob->mu);
            ob->draining = true;
            pthread_mutex_unlock(&ob->mu);
        }
        bool more_waiting = false;
        long loaded = 0;
        if (up && !ob->draining && ob->n_slots < (size_t)ob->cfg.max_in_flight) {
            if (!fill_window(ob, &more_waiting, &loaded))
                continue; /* idle */
        }
        if (ob->n_slots == 0)
            continue;
        if (ob->n_slots >= (size_t)ob->cfg.max_in_flight)
            more_waiting = true; /* full window: settle a quarter, then refill */
        await_some(ob, more_waiting);
        size_t k = resolved_prefix(ob);
        size_t quarter = (size_t)ob->cfg.max_in_flight / 4;
        int64_t now = sonar_now_ms();
        bool due = ob->draining || k >= quarter || ob->n_slots >= (size_t)ob->cfg.max_in_flight ||
                   now - ob->last_settle_ms >= SETTLE_EVERY_MS;
        if (k > 0 && due) {
            sonar_status s = settle_prefix(ob, k);
            ob->last_settle_ms = now;
            if (s != SONAR_OK) {
                sonar_log(SONAR_LOG_WARN, "outbox %s: %s (rows stay pending)", ob->name,
                          sonar_last_error());
                relay_wait(ob, 100);
            }
        } else if (k > 0 && loaded == 0) {
            pthread_mutex_lock(&ob->mu);
            bool quiet = ob->inflight == 0;
            pthread_mutex_unlock(&ob->mu);
            if (quiet) /* nothing to publish or await: record the answers soon */
                relay_wait(ob, SETTLE_EVERY_MS - (now - ob->last_settle_ms));
        }
        if (ob->n_slots == 0 && ob->draining)
            end_pass(ob);
        if (sonar_now_ms() - ob->pending_refresh_ms >= 1000)
            refresh_pending(ob);
    }
    final_flush(ob);
    relay_disconnect(ob);
    return NULL;
}

static void outbox_free(sonar_outbox *ob)
{
    sqlite3_finalize(ob->st_select);
    sqlite3_finalize(ob->st_delete);
    sqlite3_finalize(ob->st_mark);
    sqlite3_finalize(ob->st_fail);
    sqlite3_finalize(ob->st_dead_ins);
    sqlite3_finalize(ob->st_dead_del);
    sqlite3_close(ob->db);
    relay_disconnect(ob);
    if (ob->slots)
        window_drop(ob, ob->n_slots);
    free(ob->slots);
    free(ob->last_blocked);
    for (size_t i = 0; i < ob->n_subs; i++)
        free(ob->subs[i].subject);
    free(ob->subs);
    pthread_mutex_destroy(&ob->mu);
    pthread_cond_destroy(&ob->cond);
    free(ob->db_path);
    free(ob->name);
    free(ob);
}

static sonar_status config_defaults(sonar_outbox_config *c)
{
    if (c->max_in_flight < 0 || c->ack_timeout_ms < 0 || c->idle_min_ms < 0 ||
        c->idle_max_ms < 0 || c->retry_min_ms < 0 || c->retry_max_ms < 0 ||
        c->retention_ms < 0 || c->no_stream_grace_ms < 0 || c->duplicate_window_ms < 0 ||
        c->relay_nice < 0)
        return sonar__fail(SONAR_ERR_INVALID, "outbox config: values must not be negative");
    if (c->relay_nice > 39)
        return sonar__fail(SONAR_ERR_INVALID, "outbox config: relay_nice over 39");
    if (c->max_in_flight == 0)
        c->max_in_flight = 1024;
    if (c->max_in_flight > 65536)
        return sonar__fail(SONAR_ERR_INVALID, "outbox config: max_in_flight over 65536");
    if (c->ack_timeout_ms == 0)
        c->ack_timeout_ms = 5000;
    if (c->idle_min_ms == 0)
        c->idle_min_ms = 10;
    if (c->idle_max_ms == 0)
        c->idle_max_ms = 1000;
    if (c->retry_min_ms == 0)
        c->retry_min_ms = 100;
    if (c->retry_max_ms == 0)
        c->retry_max_ms = 30000;
    if (c->no_stream_grace_ms == 0)
        c->no_stream_grace_ms = 10000;
    if (c->duplicate_window_ms == 0)
        c->duplicate_window_ms = 120000;
    if (c->idle_max_ms < c->idle_min_ms || c->retry_max_ms < c->retry_min_ms)
        return sonar__fail(SONAR_ERR_INVALID, "outbox config: a max is below its min");
    return SONAR_OK;
}

sonar_status sonar_outbox_create(sonar_outbox **out, sonar_bus *bus, const char *db_path,
                                 const sonar_outbox_config *cfg)
{
    if (out == NULL || bus == NULL || db_path == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "outbox create: out, bus and db_path are required");
    sonar_outbox_config c = {0};
    if (cfg)
        c = *cfg;
    sonar_status s = config_defaults(&c);
    if (s != SONAR_OK)
        return s;
    sonar_outbox *ob = calloc(1, sizeof *ob);
    if (ob == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&ob->mu, NULL);
    sonar_cond_init_monotonic(&ob->cond);
    ob->bus = bus;
    ob->cfg = c;
    ob->db_path = strdup(db_path);
    const char *base = strrchr(db_path, '/');
    ob->name = strdup(c.name ? c.name : base ? base + 1 : db_path);
    ob->cfg.name = NULL;
    ob->prune_due_ms = 0;
    ob->rng = (unsigned)sonar_now_ns();
    ob->cap = 2 * (size_t)c.max_in_flight;
    ob->slots = calloc(ob->cap, sizeof *ob->slots);
    if (ob->db_path == NULL || ob->name == NULL || ob->slots == NULL) {
        outbox_free(ob);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    s = sonar__db_open_existing(&ob->db, db_path, false);
    if (s == SONAR_OK && !sonar__db_has_table(ob->db, "sonar_outbox_meta"))
        s = sonar__fail(SONAR_ERR_DB, "%s: not an outbox database (run sonar_outbox_migrate)",
                        db_path);
    bool found = false;
    if (s == SONAR_OK)
        s = meta_get(ob->db, "outbox_id", ob->obid, sizeof ob->obid, &found);
    if (s == SONAR_OK && !found)
        s = sonar__fail(SONAR_ERR_DB, "%s: outbox id missing", db_path);
    if (s == SONAR_OK)
        s = sonar__db_exec(ob->db, "PRAGMA synchronous=NORMAL");
    if (s == SONAR_OK)
        s = sonar__db_prepare(ob->db,
                              "SELECT id, subject, payload, headers, created_ms FROM sonar_outbox"
                              " WHERE id > ?3 AND " PENDING_WHERE " AND subject NOT IN"
                              " (SELECT value FROM json_each(?1)) ORDER BY id LIMIT ?2",
                              &ob->st_select);
    if (s == SONAR_OK)
        s = sonar__db_prepare(ob->db, "DELETE FROM sonar_outbox WHERE id BETWEEN ?1 AND ?2",
                              &ob->st_delete);
    if (s == SONAR_OK)
        s = sonar__db_prepare(ob->db,
                              "INSERT OR REPLACE INTO sonar_outbox_sent(id, subject, payload,"
                              " headers, created_ms, sent_ms, stream_seq) SELECT id, subject,"
                              " payload, headers, created_ms, ?1, ?2 FROM sonar_outbox WHERE id=?3",
                              &ob->st_mark);
    if (s == SONAR_OK)
        s = sonar__db_prepare(ob->db,
                              "UPDATE sonar_outbox SET attempts=attempts+1, last_error=?1"
                              " WHERE id=?2",
                              &ob->st_fail);
    if (s == SONAR_OK)
        s = sonar__db_prepare(ob->db,
                              "INSERT OR REPLACE INTO sonar_outbox_dead(id, subject, payload,"
                              " headers, created_ms, attempts, error, dead_ms)"
                              " SELECT id, subject, payload, headers, created_ms, attempts+1,"
                              " ?1, ?2 FROM sonar_outbox WHERE id=?3",
                              &ob->st_dead_ins);
    if (s == SONAR_OK)
        s = sonar__db_prepare(ob->db, "DELETE FROM sonar_outbox WHERE id=?1", &ob->st_dead_del);
    if (s == SONAR_OK) {
        if (pthread_create(&ob->thread, NULL, relay_main, ob) != 0)
            s = sonar__fail(SONAR_ERR_NOMEM, "outbox: cannot start the relay thread");
        else
            ob->thread_started = true;
    }
    if (s != SONAR_OK) {
        char saved[1024];
        snprintf(saved, sizeof saved, "%s", sonar_last_error());
        outbox_free(ob);
        return sonar__fail(s, "%s", saved);
    }
    *out = ob;
    return SONAR_OK;
}

void sonar_outbox_notify(sonar_outbox *ob)
{
    if (ob == NULL)
        return;
    pthread_mutex_lock(&ob->mu);
    ob->notified = true;
    if (!ob->in_load_gap) /* it reads right after the gap anyway */
        pthread_cond_broadcast(&ob->cond);
    pthread_mutex_unlock(&ob->mu);
}

void sonar_outbox_destroy(sonar_outbox *ob)
{
    if (ob == NULL)
        return;
    pthread_mutex_lock(&ob->mu);
    ob->stop = true;
    pthread_cond_broadcast(&ob->cond);
    pthread_mutex_unlock(&ob->mu);
    if (ob->thread_started)
        pthread_join(ob->thread, NULL);
    outbox_free(ob);
}

void sonar_outbox_stats_get(sonar_outbox *ob, sonar_outbox_stats *out)
{
    pthread_mutex_lock(&ob->mu);
    *out = ob->st;
    pthread_mutex_unlock(&ob->mu);
}

json_t *sonar_outbox_stats_json(sonar_outbox *ob)
{
    sonar_outbox_stats st;
    sonar_outbox_stats_get(ob, &st);
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:I}", "name", ob->name,
                     "pending", (json_int_t)st.pending, "oldest_pending_age_ms",
                     (json_int_t)st.oldest_pending_age_ms, "published", (json_int_t)st.published,
                     "duplicates", (json_int_t)st.duplicates, "retries", (json_int_t)st.retries,
                     "dead", (json_int_t)st.dead, "dead_total", (json_int_t)st.dead_total,
                     "order_anomalies", (json_int_t)st.order_anomalies, "connected",
                     st.connected, "backoff_ms", (json_int_t)st.backoff_ms);
}

/* ---- Operators --------------------------------------------------------- */

static sonar_status open_outbox_db(sqlite3 **out, const char *path, bool read_only)
{
    static const char *const tables[] = {"sonar_outbox_meta", "sonar_outbox",
                                        "sonar_outbox_dead", "sonar_outbox_sent", NULL};
    return sonar__db_open_with_tables(out, path, read_only, tables, "outbox");
}

sonar_status sonar_outbox_db_status_read(sonar_outbox_db_status *out, const char *db_path)
{
    sqlite3 *db = NULL;
    sonar_status s = open_outbox_db(&db, db_path, true);
    if (s != SONAR_OK)
        return s;
    sonar_outbox_db_status r = {0};
    char buf[64];
    bool found = false;
    int64_t oldest = 0;
    s = meta_get(db, "outbox_id", r.outbox_id, sizeof r.outbox_id, &found);
    if (s == SONAR_OK && (s = meta_get(db, "schema_version", buf, sizeof buf, &found)) == SONAR_OK)
        r.schema_version = found ? atoi(buf) : 0;
    if (s == SONAR_OK)
        s = sonar__db_int(db, "SELECT " PENDING_COUNT_SQL, NULL, 0, &r.pending);
    if (s == SONAR_OK)
        s = sonar__db_int(db, "SELECT created_ms FROM sonar_outbox WHERE " PENDING_WHERE
                          " ORDER BY id LIMIT 1",
                          NULL, 0, &oldest);
    if (s == SONAR_OK)
        s = sonar__db_int(db, "SELECT count(*) FROM sonar_outbox_sent",
                          NULL, 0, &r.sent_retained);
    if (s == SONAR_OK)
        s = sonar__db_int(db, "SELECT count(*) FROM sonar_outbox_dead", NULL, 0, &r.dead);
    const char *q = "SELECT CAST(value AS INTEGER) FROM sonar_outbox_meta WHERE key=?1";
    if (s == SONAR_OK)
        s = sonar__db_int(db, q, "published", 0, &r.published_total);
    if (s == SONAR_OK)
        s = sonar__db_int(db, q, "retries", 0, &r.retries_total);
    if (s == SONAR_OK)
        s = sonar__db_int(db, q, "dead", 0, &r.dead_total);
    sqlite3_close(db);
    if (s != SONAR_OK)
        return s;
    if (oldest > 0) {
        r.oldest_pending_age_ms = sonar_wall_ms() - oldest;
        if (r.oldest_pending_age_ms < 0)
            r.oldest_pending_age_ms = 0;
    }
    *out = r;
    return SONAR_OK;
}

void sonar_outbox_dead_rows_free(sonar_outbox_dead_row *rows, size_t n)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(rows[i].subject);
        free(rows[i].payload);
        free(rows[i].headers_json);
        free(rows[i].error);
    }
    free(rows);
}

static bool outbox_dead_row_fill(sqlite3_stmt *st, void *elem)
{
    sonar_outbox_dead_row *r = elem;
    r->id = sqlite3_column_int64(st, 0);
    r->subject = sonar__strdup((const char *)sqlite3_column_text(st, 1));
    r->payload = sonar__db_blob_copy(st, 2, &r->payload_len);
    if (sqlite3_column_type(st, 3) != SQLITE_NULL)
        r->headers_json = sonar__strdup((const char *)sqlite3_column_text(st, 3));
    r->error = sonar__strdup((const char *)sqlite3_column_text(st, 4));
    r->attempts = sqlite3_column_int64(st, 5);
    r->created_ms = sqlite3_column_int64(st, 6);
    r->dead_ms = sqlite3_column_int64(st, 7);
    return r->subject && r->payload && r->error;
}

sonar_status sonar_outbox_dead_list(sonar_outbox_dead_row **out_rows, size_t *out_n,
                                    const char *db_path)
{
    sqlite3 *db = NULL;
    sonar_status s = open_outbox_db(&db, db_path, true);
    if (s != SONAR_OK)
        return s;
    void *rows = NULL;
    size_t n = 0;
    s = sonar__db_rows(db,
                       "SELECT id, subject, payload, headers, error, attempts, created_ms,"
                       " dead_ms FROM sonar_outbox_dead ORDER BY id",
                       sizeof(sonar_outbox_dead_row), outbox_dead_row_fill, &rows, &n);
    sqlite3_close(db);
    if (s != SONAR_OK) {
        sonar_outbox_dead_rows_free(rows, n);
        return s;
    }
    *out_rows = rows;
    *out_n = n;
    return SONAR_OK;
}

/* Runs `move` (optional) then `del` for dead row id in one transaction. */
static sonar_status dead_apply(const char *db_path, int64_t id, const char *move, const char *what)
{
    sqlite3 *db = NULL;
    sonar_status s = open_outbox_db(&db, db_path, false);
    if (s != SONAR_OK)
        return s;
    s = sonar__db_exec(db, "BEGIN IMMEDIATE");
    const char *sqls[2] = {move, "DELETE FROM sonar_outbox_dead WHERE id=?1"};
    for (int i = 0; i < 2 && s == SONAR_OK; i++) {
        if (sqls[i] == NULL)
            continue;
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, sqls[i], -1, &st, NULL) != SQLITE_OK) {
            s = sonar__db_fail(db, what);
            break;
        }
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) != SQLITE_DONE)
            s = sonar__db_fail(db, what);
        else if (sqlite3_changes(db) == 0)
            s = sonar__fail(SONAR_ERR_NOT_FOUND, "%s: no dead-letter row with id %" PRId64,
                            db_path, id);
        sqlite3_finalize(st);
    }
    if (s == SONAR_OK)
        s = sonar__db_exec(db, "COMMIT");
    if (s != SONAR_OK) {
        char saved[1024];
        snprintf(saved, sizeof saved, "%s", sonar_last_error());
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        sonar__fail(s, "%s", saved);
    }
    sqlite3_close(db);
    return s;
}

sonar_status sonar_outbox_requeue(const char *db_path, int64_t id)
{
    return dead_apply(db_path, id,
                      /* The row may have held the highest id: then a ceiling row
                       * holds its place, and the requeued row replaces it. */
                      "INSERT OR REPLACE INTO sonar_outbox(id, subject, payload, headers,"
                      " created_ms) SELECT id, subject, payload, headers, created_ms"
                      " FROM sonar_outbox_dead WHERE id=?1 AND NOT EXISTS (SELECT 1 FROM"
                      " sonar_outbox WHERE id=?1 AND " PENDING_WHERE ")",
                      "requeueing a dead-letter row");
}

sonar_status sonar_outbox_drop(const char *db_path, int64_t id)
{
    return dead_apply(db_path, id, NULL, "dropping a dead-letter row");
}

/* ---- Streams ----------------------------------------------------------- */

sonar_status sonar_stream_ensure(natsConnection *nc, const sonar_stream_config *cfg)
{
    if (nc == NULL || cfg == NULL || cfg->subjects == NULL || cfg->subjects[0] == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "stream ensure: connection, config and subjects"
                                              " are required");
    sonar_status s = sonar_name_check("stream name", cfg->name);
    if (s != SONAR_OK)
        return s;
    if (cfg->duplicate_window_ms < 0 || cfg->max_age_ms < 0 ||
        (cfg->max_age_ms > 0 && cfg->duplicate_window_ms > cfg->max_age_ms))
        return sonar__fail(SONAR_ERR_INVALID,
                           "stream %s: duplicate window must be >= 0 and <= max age", cfg->name);
    int n = 0;
    while (cfg->subjects[n])
        n++;
    jsCtx *js = NULL;
    natsStatus ns = natsConnection_JetStream(&js, nc, NULL);
    if (ns != NATS_OK)
        return sonar__fail(SONAR_ERR_NATS, "stream ensure: %s", natsStatus_GetText(ns));
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = cfg->name;
    sc.Subjects = (const char **)cfg->subjects;
    sc.SubjectsLen = n;
    sc.Storage = cfg->memory ? js_MemoryStorage : js_FileStorage;
    sc.Duplicates = cfg->duplicate_window_ms * 1000000;
    sc.MaxAge = cfg->max_age_ms * 1000000;
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    ns = js_AddStream(&si, js, &sc, NULL, &ec);
    if (ns != NATS_OK && ec == JSStreamNameExistErr) {
        ec = 0;
        ns = js_UpdateStream(&si, js, &sc, NULL, &ec);
    }
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    if (ns == NATS_OK)
        return SONAR_OK;
    if (ns == NATS_TIMEOUT || ns == NATS_NO_RESPONDERS)
        return sonar__fail(ns == NATS_TIMEOUT ? SONAR_ERR_TIMEOUT : SONAR_ERR_NO_RESPONDERS,
                           "stream %s: JetStream did not answer (%s)", cfg->name,
                           natsStatus_GetText(ns));
    if (ec != 0)
        return sonar__fail(SONAR_ERR_INVALID, "stream %s refused by the server: %s (code %d)",
                           cfg->name, nats_GetLastError(NULL), (int)ec);
    return sonar__fail(SONAR_ERR_NATS, "stream %s: %s", cfg->name, natsStatus_GetText(ns));
}
