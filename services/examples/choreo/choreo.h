/*
 * choreo — the small toolkit wells and aquifers share: two services that
 * cooperate only through events (choreography, no orchestrator).
 *
 * - choreo_db_open(): the service's own SQLite file in WAL mode, its schema
 *   migrated on start (a `schema_version` table; migration i takes the
 *   database from version i to i+1 in one transaction; a database newer
 *   than the program is refused), and the outbox tables migrated too.
 * - choreo_streams_ensure(): the two event streams, WELLS (`events.wells.>`)
 *   and AQUIFERS (`events.aquifers.>`), created with the same settings by
 *   whichever service starts first.
 * - choreo_body(), choreo_take_*(): strict validation of a request body;
 *   on a bad field they answer the request with a sonar.error.v1 400 that
 *   names the field, so a handler just returns.
 * - choreo_db_lock()/unlock(): one connection shared by the endpoint
 *   workers, used one at a time.
 *
 * Thread-safety: a choreo_db may be used from any thread between lock and
 * unlock. The rest is stateless.
 */
#ifndef CHOREO_H
#define CHOREO_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <sqlite3.h>

#include <sonar/sonar.h>

/* Stream names and subjects the two services agree on. */
#define CHOREO_WELLS_STREAM "WELLS"
#define CHOREO_WELLS_SUBJECTS "events.wells.>"
#define CHOREO_AQUIFERS_STREAM "AQUIFERS"
#define CHOREO_AQUIFERS_SUBJECTS "events.aquifers.>"

/* Longest owner/region text accepted. */
#define CHOREO_MAX_TEXT 128

typedef struct choreo_db choreo_db;

/*
 * Opens (creating if needed) the SQLite file \p path, switches it to WAL,
 * runs the pending \p migrations (n of them; entry i: version i → i+1) and
 * sonar_outbox_migrate(). \p who names the service in log lines.
 * Returns a new handle (choreo_db_close), or NULL with the reason logged.
 */
choreo_db *choreo_db_open(const char *path, const char *const *migrations, int n,
                          const char *who);
/* Closes the database. Accepts NULL. */
void choreo_db_close(choreo_db *d);
/* The connection (borrowed), locked for the caller until choreo_db_unlock(). */
sqlite3 *choreo_db_lock(choreo_db *d);
void choreo_db_unlock(choreo_db *d);
/* Schema version after open. */
int choreo_db_version(const choreo_db *d);

/* Runs \p sql (no results); false with the error logged. */
bool choreo_exec(sqlite3 *db, const char *sql);

/* Ensures both event streams (file storage, 2 min duplicate window, 7 days). */
sonar_status choreo_streams_ensure(natsConnection *nc);

/*
 * The request body as a JSON object whose keys are all in \p allowed
 * (NULL-terminated). An empty body counts as {}. On anything else it
 * answers 400 and returns NULL. New reference.
 */
json_t *choreo_body(sonar_request *req, const char *const *allowed);

/* Field readers: true with the value set (borrowed from \p body), or false
 * after answering 400 naming the field. When \p required is false and the
 * field is absent, *out is left as it was. */
bool choreo_take_name(sonar_request *req, json_t *body, const char *key, bool required,
                      const char **out);
bool choreo_take_text(sonar_request *req, json_t *body, const char *key, bool required,
                      const char **out);
bool choreo_take_number(sonar_request *req, json_t *body, const char *key, bool required,
                        double min, double max, double *out);
bool choreo_take_int(sonar_request *req, json_t *body, const char *key, bool required,
                     int64_t min, int64_t max, int64_t *out);

/* Answers with \p value as compact JSON and drops the reference. */
sonar_status choreo_respond(sonar_request *req, json_t *value);

/* RFC 3339 UTC time of now into buf (at least 32 bytes). */
void choreo_now_rfc3339(char *buf, size_t len);

/* ---- The whole life of a choreographed service ---------------------------- */

/*
 * What choreo_run() needs. Strings borrowed for the run. The inbox applies
 * messages of \p stream matching \p filter through the durable consumer
 * \p consumer with \p apply (on the inbox thread, inside a transaction).
 */
typedef struct choreo_app {
    /* configuration */
    const char *name;            /* service name on sonar */
    const char *version;
    const char *address;         /* registered address, e.g. "nats:wells" */
    const char *description;
    const char *server;          /* NATS URL(s); NULL: NATS_URL or the default */
    const char *db_path;
    const char *const *migrations;
    int n_migrations;
    const char *consumer;
    const char *stream;
    const char *filter;
    sonar_inbox_fn apply;
    /* adds endpoints, checks and dependencies before start */
    sonar_status (*setup)(struct choreo_app *app, sonar_service *svc);
    void *user;                  /* for the service's own use */
    /* filled by choreo_run, valid while it runs */
    choreo_db *db;
    sonar_bus *bus;
    sonar_outbox *outbox;
    sonar_inbox *inbox;
} choreo_app;

/*
 * Runs a service: blocks SIGINT/SIGTERM, opens and migrates the database,
 * connects, ensures the streams, starts the outbox relay and the inbox,
 * calls setup, joins sonar, prints "ready <instance>" on stdout, waits
 * for SIGINT/SIGTERM, then stops in order: leave the bus and finish
 * requests in flight, stop the inbox, stop the relay (unconfirmed events
 * stay for the next start), close the database and the connection.
 * Returns the exit code (0 after a signal, 1 when it could not start).
 */
int choreo_run(choreo_app *app);

/* JSON for $SRV.STATS endpoint data: {"outbox":{...},"inbox":{...}}. */
json_t *choreo_stats(void *app);

/* Blocks SIGINT and SIGTERM in the calling thread (call first in main, so
 * every thread inherits it) and fills \p set with them for choreo_wait_stop. */
void choreo_block_stop_signals(sigset_t *set);
/* Waits for one of them; returns the signal number. */
int choreo_wait_stop(const sigset_t *set);

#endif
