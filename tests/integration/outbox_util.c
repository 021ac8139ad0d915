#include "outbox_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

natsConnection *tu_connect(const char *url)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, url);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 100);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(o, true, NULL, NULL);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK) {
        fprintf(stderr, "connect %s: %s\n", url, natsStatus_GetText(s));
        return NULL;
    }
    return nc;
}

sonar_bus *tu_bus(const char *url)
{
    sonar_bus *bus = NULL;
    sonar_bus_config bc = {.urls = url, .retry_on_failed_connect = true};
    if (sonar_bus_connect(&bus, &bc) != SONAR_OK) {
        fprintf(stderr, "bus %s: %s\n", url, sonar_last_error());
        return NULL;
    }
    return bus;
}

long tu_read_stream(natsConnection *nc, const char *stream, tu_msg **out)
{
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    if (natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
        return -1;
    if (js_GetStreamInfo(&si, js, stream, NULL, NULL) != NATS_OK) {
        jsCtx_Destroy(js);
        return -1;
    }
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    tu_msg *msgs = calloc(last - first + 2, sizeof *msgs);
    long n = 0;
    for (uint64_t seq = first; seq <= last && seq > 0; seq++) {
        natsMsg *m = NULL;
        if (js_GetMsg(&m, js, stream, seq, NULL, NULL) != NATS_OK)
            continue; /* deleted sequence */
        tu_msg *t = &msgs[n++];
        t->seq = seq;
        snprintf(t->subject, sizeof t->subject, "%s", natsMsg_GetSubject(m));
        snprintf(t->data, sizeof t->data, "%.*s", natsMsg_GetDataLength(m), natsMsg_GetData(m));
        const char *id = NULL;
        if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id)
            snprintf(t->msg_id, sizeof t->msg_id, "%s", id);
        natsMsg_Destroy(m);
    }
    jsCtx_Destroy(js);
    *out = msgs;
    return n;
}

sqlite3 *tu_db_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "open %s: %s\n", path, db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 10000);
    return db;
}

int64_t tu_db_int(const char *path, const char *sql, int64_t def)
{
    sqlite3 *db = NULL;
    int64_t v = def;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return v;
}
