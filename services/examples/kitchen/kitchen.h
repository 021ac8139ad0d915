/**
 * \file kitchen.h
 * \brief The small HTTP toolkit the example services chillybin and jafflr
 *        share: a libmicrohttpd server driven by a route table, JSON
 *        replies, request metrics, strict parsing of numbers and names,
 *        and graceful shutdown on SIGTERM/SIGINT.
 *
 * It is deliberately small: everything a service does with HTTP is here in
 * one place, so each example's main.c reads as "routes, handlers, join".
 *
 * A service's main() goes:
 * \code
 *   kitchen_block_signals();                 // first, before any thread starts
 *   ... parse flags (kitchen_flag), open storage ...
 *   kitchen_server *srv;
 *   kitchen_server_create(&srv, &cfg);       // listening, handlers on their own threads
 *   ... join sonar (sonar_service_create/start) ...
 *   kitchen_serve_until_signal(srv);         // SIGTERM/SIGINT: stop accepting, finish requests in flight
 *   sonar_service_destroy(svc);              // leave the bus
 *   kitchen_server_destroy(srv);
 * \endcode
 *
 * Threads: the server runs one thread per connection (libmicrohttpd's
 * MHD_USE_THREAD_PER_CONNECTION); a handler may block (SQLite, an HTTP
 * call to another service) without holding up other clients. Handlers
 * therefore run concurrently and must protect shared state themselves.
 */
#ifndef SONAR_EXAMPLES_KITCHEN_H
#define SONAR_EXAMPLES_KITCHEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <getopt.h>
#include <stdio.h>

#include <jansson.h>

#include "sonar/status.h"

/** Largest request body accepted; more is answered 413. */
#define KITCHEN_MAX_BODY (64 * 1024)

/** Ingredient names (and other names in URLs): `^[a-z0-9_-]{1,64}$`. */
#define KITCHEN_NAME_RULE "^[a-z0-9_-]{1,64}$"

/** One request being served. Borrowed by a handler for the call only. */
typedef struct kitchen_request kitchen_request;

/**
 * A route handler. Runs on the connection's thread. It must reply exactly
 * once with one of the kitchen_reply_* functions; if it returns without
 * replying, the server answers 500.
 */
typedef void (*kitchen_handler)(kitchen_request *req, void *closure);

/** One line of a route table: exact method and path. */
typedef struct kitchen_route {
    const char *method;       /**< "GET", "POST", ... */
    const char *path;         /**< exact path, e.g. "/pick" (no query) */
    kitchen_handler handler;
} kitchen_route;

/**
 * Writes service-specific Prometheus lines after the server's own
 * (`<prefix>_http_requests_total`, `<prefix>_http_requests_in_flight`).
 * Runs on the /metrics request's thread.
 */
typedef void (*kitchen_metrics_fn)(FILE *out, void *closure);

/** Server configuration; strings and the route table are borrowed and must outlive the server. */
typedef struct kitchen_server_config {
    const char *service;        /**< name used in logs and as the metric prefix */
    const char *address;        /**< IPv4 address to bind, e.g. "127.0.0.1" or "0.0.0.0" */
    int port;                   /**< 1..65535 */
    const kitchen_route *routes;/**< the route table */
    size_t n_routes;
    void *closure;              /**< passed to every handler and to metrics */
    kitchen_metrics_fn metrics; /**< NULL: no extra metrics; GET /metrics is always served */
} kitchen_server_config;

typedef struct kitchen_server kitchen_server;

/**
 * \brief Starts listening and serving. `GET /metrics` is answered by the
 *        server itself (request counters, then \p cfg->metrics); paths
 *        outside the table get 404, a known path with another method 405.
 * \param out new server, written on success.
 * \return SONAR_OK; SONAR_ERR_INVALID (bad address or port);
 *         SONAR_ERR_IO (cannot bind, e.g. port in use).
 */
sonar_status kitchen_server_create(kitchen_server **out, const kitchen_server_config *cfg);

/**
 * \brief Graceful stop: closes the listening socket (new connections are
 *        refused), then waits until requests in flight are answered, at
 *        most \p timeout_ms.
 * \return true when every request in flight finished in time.
 */
bool kitchen_server_drain(kitchen_server *srv, int64_t timeout_ms);

/** \brief Stops the server (closing any remaining connections) and frees it. Accepts NULL. */
void kitchen_server_destroy(kitchen_server *srv);

/* ---- Requests ---------------------------------------------------------- */

const char *kitchen_request_method(const kitchen_request *req);
const char *kitchen_request_path(const kitchen_request *req);

/** \brief First value of query parameter \p name (borrowed; "" for `?name`), or NULL when absent. */
const char *kitchen_request_query(const kitchen_request *req, const char *name);

/**
 * \brief All values of a repeated query parameter (`?i=a&i=b`), in order.
 * \param values receives up to \p max borrowed pointers.
 * \return how many values there are in total (may exceed \p max).
 */
size_t kitchen_request_query_all(const kitchen_request *req, const char *name,
                                 const char **values, size_t max);

/** \brief The request body (borrowed, NUL-terminated) and its length in \p len. */
const char *kitchen_request_body(const kitchen_request *req, size_t *len);

/**
 * \brief Adds a header to the reply (both strings borrowed until the reply
 *        is sent). At most 8 per request; more are ignored.
 */
void kitchen_request_add_header(kitchen_request *req, const char *name, const char *value);

/* ---- Replies (exactly one per request) --------------------------------- */

/** \brief Replies with \p body (takes the reference) as compact JSON. */
void kitchen_reply_json(kitchen_request *req, unsigned status, json_t *body);

/** \brief Replies `{"error":"<formatted message>"}` with \p status. */
void kitchen_reply_error(kitchen_request *req, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** \brief Replies with text \p body of \p content_type. */
void kitchen_reply_text(kitchen_request *req, unsigned status, const char *content_type,
                        const char *body, size_t len);

/* ---- Parsing at the boundary ------------------------------------------- */

/**
 * \brief Parses a decimal integer in [\p min, \p max]: digits only (an
 *        optional leading '-' when min < 0), no spaces, no overflow.
 * \param out written on success.
 * \return false for anything else (NULL, "", "1.5", "12abc", " 3", too big).
 */
bool kitchen_parse_int(const char *text, long long min, long long max, long long *out);

/** \brief True when \p name matches KITCHEN_NAME_RULE. */
bool kitchen_name_valid(const char *name);

/* ---- Flags every example takes ------------------------------------------- */

/** The flags both examples share; fill the defaults, then feed getopt_long's results to kitchen_flag(). */
typedef struct kitchen_flags {
    const char *address;   /**< --address IP (IPv4 to listen on) */
    long long port;        /**< --port N */
    const char *version;   /**< --version VERSION reported to sonar; NULL when not given */
    const char *advertise; /**< --advertise URL announced to sonar; NULL when not given */
    bool join;             /**< false with --no-sonar */
} kitchen_flags;

/** getopt_long entries for the shared flags (their short codes: a p v A n). */
#define KITCHEN_OPTIONS                                                                    \
    { "address", required_argument, NULL, 'a' }, { "port", required_argument, NULL, 'p' }, \
    { "version", required_argument, NULL, 'v' },                                         \
    { "advertise", required_argument, NULL, 'A' }, { "no-sonar", no_argument, NULL, 'n' }

/**
 * \brief Applies one getopt_long result \p c with argument \p arg.
 * \return 1 when it was a shared flag; 0 when it is not one (the caller
 *         handles it); -1 for a bad value (a message naming \p prog and
 *         the flag is printed on stderr).
 */
int kitchen_flag(kitchen_flags *f, const char *prog, int c, const char *arg);

/* ---- Announced addresses ------------------------------------------------ */

/** Longest announced base URL (--advertise), in bytes with the NUL. */
#define KITCHEN_URL_MAX 300

/** The URLs a service announces to sonar. */
typedef struct kitchen_urls {
    char base[KITCHEN_URL_MAX]; /**< e.g. "http://127.0.0.1:8081" */
    char health[340];   /**< base + "/health" */
    char metrics[340];  /**< base + "/metrics" */
} kitchen_urls;

/**
 * \brief Fills \p out from \p advertise (the --advertise flag, may be NULL)
 *        or else from the listening \p address and \p port (0.0.0.0 is
 *        announced as 127.0.0.1).
 */
void kitchen_urls_init(kitchen_urls *out, const char *advertise, const char *address, int port);

/* ---- Signals ----------------------------------------------------------- */

/**
 * \brief Blocks SIGTERM and SIGINT in the calling thread (so in every
 *        thread started after it) and ignores SIGPIPE. Call first in main().
 */
void kitchen_block_signals(void);

/** \brief Waits for SIGTERM or SIGINT (sigwait) and returns its number. */
int kitchen_wait_for_signal(void);

/**
 * \brief Serves until SIGTERM or SIGINT, then drains \p srv (stops
 *        accepting, waits up to 10 s for requests in flight), logging each
 *        step. The caller then leaves the bus and destroys the server.
 */
void kitchen_serve_until_signal(kitchen_server *srv);

#endif
