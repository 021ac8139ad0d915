/*
 * What every `sonar` subcommand shares: option parsing (the common bus
 * and auth flags plus the command's own), the bus connection, requests to
 * sonard's read API, and a queue that hands messages from NATS callback
 * threads to the command's main thread.
 *
 * Errors: functions returning sonar_status record a one-line detail that
 * sonar_cli_last_error() returns (thread-local, like sonar_last_error()).
 *
 * Thread-safety: parsing and connecting are called from the main thread;
 * a queue may be filled by any number of NATS threads while one thread
 * pops from it.
 */
#ifndef SONAR_CLI_COMMON_H
#define SONAR_CLI_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <nats/nats.h>

#include "sonar/sonar.h"

/* Exit codes shared by the read commands (announce has its own: 0 pass,
 * 1 fail, 2 incomplete, 3 error). */
#define SONAR_CLI_EXIT_OK 0
#define SONAR_CLI_EXIT_NOT_FOUND 1
#define SONAR_CLI_EXIT_USAGE 2
#define SONAR_CLI_EXIT_ERROR 3

/* Most positional arguments any subcommand takes. */
#define SONAR_CLI_MAX_POS 4

/* Timeout of a request to sonard's read API. */
#define SONAR_CLI_API_TIMEOUT_MS 5000

/* One command-specific option. Exactly one of value/flag is set. The
 * table ends with an entry whose name is NULL. */
typedef struct sonar_cli_opt {
    const char *name;   /* long name without "--" */
    char short_name;    /* 0 for none */
    const char **value; /* option with a value: where it goes (borrowed from argv) */
    bool *flag;         /* option without a value: set to true */
} sonar_cli_opt;

/* The parsed command line. Strings are borrowed from argv. */
typedef struct sonar_cli_args {
    sonar_bus_config bus;  /* --server, --user, --password, --token, --creds,
                              --nkey, --nkey-seed, --tlsca, --tlscert, --tlskey */
    bool help;             /* --help or -h was given: print usage, exit 0 */
    const char *pos[SONAR_CLI_MAX_POS];
    size_t n_pos;
} sonar_cli_args;

/*
 * Parses argv[1..argc-1] (argv[0] is the subcommand): the common options,
 * the command's own \p opts, and at most \p max_pos positional arguments.
 * Accepts "--name value", "--name=value", "-x value" and "--" (end of
 * options). Every option value must be non-empty. On --help/-h it stops
 * and reports success with help set.
 * \param out written on success only.
 * \return true, or false with a one-line message in \p err (unknown
 *         option, missing value, too many arguments).
 */
bool sonar_cli_parse(sonar_cli_args *out, int argc, char **argv, const sonar_cli_opt *opts,
                     size_t max_pos, char *err, size_t errlen);

/* Writes \p usage (the command's own text, ending in a newline) followed by
 * the common options. */
void sonar_cli_usage(FILE *to, const char *usage);

/* Prints "sonar <cmd>: <message>" on stderr and returns \p code. */
int sonar_cli_die(const char *cmd, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Detail of this thread's last failure in the functions below ("" if none). */
const char *sonar_cli_last_error(void);

/*
 * Connects to the bus: the URL from --server, else NATS_URL, else the
 * default; auth options from the flags, else the environment.
 * \param out new bus (sonar_bus_destroy), written on success.
 * \return SONAR_OK, SONAR_ERR_INVALID (bad auth file), SONAR_ERR_NATS
 *         (unreachable).
 */
sonar_status sonar_cli_connect(sonar_bus **out, const sonar_cli_args *args);

/*
 * Request/reply with sonard's read API: sends \p body (borrowed; NULL sends
 * "{}") to \p subject and waits at most \p timeout_ms for the reply, which
 * must be a JSON object whose type is \p want_type.
 * \param out new reply object (json_decref), written on success.
 * \return SONAR_OK; SONAR_ERR_NO_RESPONDERS (no sonard running);
 *         SONAR_ERR_TIMEOUT; SONAR_ERR_NOT_FOUND / SONAR_ERR_INVALID /
 *         SONAR_ERR_STATE for a sonar.error.v1 reply with code 404 / 400 /
 *         other (its message in the error text); SONAR_ERR_PROTOCOL for a
 *         reply that is not what was asked; SONAR_ERR_NATS.
 */
sonar_status sonar_cli_request(json_t **out, sonar_bus *bus, const char *subject,
                               const json_t *body, const char *want_type, int64_t timeout_ms);

/*
 * The whole of a read command's bus work: connects, sends one request
 * (see sonar_cli_request), disconnects. Prints a one-line reason on stderr
 * on failure.
 * \param out new reply, written on success.
 * \return exit code: SONAR_CLI_EXIT_OK, SONAR_CLI_EXIT_NOT_FOUND (404),
 *         SONAR_CLI_EXIT_ERROR (anything else).
 */
int sonar_cli_api(json_t **out, const char *cmd, const sonar_cli_args *args,
                  const char *subject, const json_t *body, const char *want_type);

/* How a read command (services, report, history, graph) works. */
typedef struct sonar_cli_read_cmd {
    const char *name;        /* subcommand, for messages */
    const char *usage;       /* its usage text */
    const char *subject;     /* read API subject, e.g. "sonar.api.services" */
    const char *want_type;   /* reply type, e.g. "sonar.services.v1" */
    size_t max_pos;          /* positional arguments it takes */
    /* Own options besides --json (may be NULL), table ending in {NULL}. */
    const sonar_cli_opt *opts;
    /* Validates the arguments and builds the request body (NULL: none).
     * May be NULL. Returns an exit code; on 0, *body (new) may be set. */
    int (*make_body)(const sonar_cli_args *args, json_t **body);
    /* Prints the reply for people (the --json output is the reply itself). */
    void (*print)(FILE *out, const json_t *reply);
} sonar_cli_read_cmd;

/* Runs a read command: parses (unknown flag: exit 2), --help, builds the
 * body, asks sonard (sonar_cli_api), prints. Returns the exit code. */
int sonar_cli_read(const sonar_cli_read_cmd *cmd, int argc, char **argv);

/*
 * If \p data is a sonar.error.v1 reply (by body or by the service-error
 * headers of \p msg, which may be NULL), records "<code>: <message>" and
 * returns the status for its code (see sonar_cli_request); else SONAR_OK.
 */
sonar_status sonar_cli_check_error_reply(natsMsg *msg, const char *data, size_t len);

/* ---- Message queue ------------------------------------------------------ */

typedef struct sonar_cli_queue sonar_cli_queue;

/* New empty queue; NULL when out of memory. */
sonar_cli_queue *sonar_cli_queue_create(void);

/*
 * Subscribes \p subject on \p nc; every message lands in the queue tagged
 * with \p tag. The subscription lives until the queue is destroyed.
 * \return SONAR_OK, SONAR_ERR_NATS, SONAR_ERR_NOMEM.
 */
sonar_status sonar_cli_queue_subscribe(sonar_cli_queue *q, natsConnection *nc,
                                       const char *subject, int tag);

/*
 * Like sonar_cli_queue_subscribe, for a JetStream push subscription with
 * the options \p so (borrowed) on \p js (borrowed; must outlive the queue).
 * \return SONAR_OK; SONAR_ERR_NOT_FOUND when the stream does not exist;
 *         SONAR_ERR_NATS.
 */
sonar_status sonar_cli_queue_subscribe_js(sonar_cli_queue *q, jsCtx *js, const char *subject,
                                          jsSubOptions *so, int tag);

/* Stops the subscriptions tagged \p tag; their messages already queued
 * stay. (The records are freed with the queue.) */
void sonar_cli_queue_unsubscribe(sonar_cli_queue *q, int tag);

/*
 * Waits at most \p timeout_ms (0: do not wait) for the next message.
 * \return true with *out_msg (new, natsMsg_Destroy) and *out_tag set, or
 *         false when none came in time.
 */
bool sonar_cli_queue_pop(sonar_cli_queue *q, int64_t timeout_ms, natsMsg **out_msg,
                         int *out_tag);

/*
 * Waits (at most \p timeout_ms) until every message nats.c has received
 * for the queue's subscriptions is in the queue. Each subscription has its
 * own delivery thread, so messages of different subscriptions can reach
 * the queue out of wire order; after this returns true, everything that
 * arrived on the wire before the last popped message can be popped.
 */
bool sonar_cli_queue_settle(sonar_cli_queue *q, int64_t timeout_ms);

/* Wakes a thread blocked in sonar_cli_queue_pop (e.g. from a signal-free
 * thread); safe from any thread. */
void sonar_cli_queue_wake(sonar_cli_queue *q);

/* Unsubscribes (waiting until no callback runs), frees queued messages and
 * the queue. Call before destroying the connection. Accepts NULL. */
void sonar_cli_queue_destroy(sonar_cli_queue *q);

/* ---- Small shared helpers ------------------------------------------------ */

/* Parses \p data as a JSON object; records the reason and returns NULL
 * when it is not one. New reference. */
json_t *sonar_cli_parse_object(const char *data, size_t len);

/* Writes \p value as pretty JSON followed by a newline. */
void sonar_cli_print_json(FILE *out, const json_t *value);

#endif
