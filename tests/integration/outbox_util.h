/*
 * Helpers shared by the outbox/inbox integration tests and their helper
 * programs: a NATS connection that reconnects forever, reading a stream
 * back, and small SQLite helpers.
 */
#ifndef SONAR_TEST_OUTBOX_UTIL_H
#define SONAR_TEST_OUTBOX_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>
#include <sqlite3.h>

#include "sonar/bus.h"

/* Connects to url with unlimited reconnects (100 ms apart) and
 * retry-on-failed-connect. Returns NULL (message on stderr) on failure. */
natsConnection *tu_connect(const char *url);

/* A sonar bus on url (the outbox relay opens its connections from it),
 * with retry-on-failed-connect. Returns NULL (message on stderr) on failure. */
sonar_bus *tu_bus(const char *url);

/* One stored message of a stream. */
typedef struct tu_msg {
    uint64_t seq;
    char subject[128];
    char data[256];
    char msg_id[96];
} tu_msg;

/* Reads every message of `stream` (sequence order) into a new array.
 * Returns the count, or -1 on error. */
long tu_read_stream(natsConnection *nc, const char *stream, tu_msg **out);

/* Opens (creating) a database file with a busy timeout; NULL on failure. */
sqlite3 *tu_db_open(const char *path);

/* First column of the first row of sql as an integer; `def` on any error. */
int64_t tu_db_int(const char *path, const char *sql, int64_t def);

#endif
