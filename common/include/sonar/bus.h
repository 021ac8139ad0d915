/**
 * \file bus.h
 * \brief A connection to the NATS bus, configured from code or environment.
 *
 * A `sonar_bus` wraps one `natsConnection` with the options sonar relies
 * on: reconnect forever with jitter, SendAsap (request and reply paths
 * never wait for the background flusher), and the authentication options
 * of nats.c passed through. The bus keeps those settings: an outbox relay
 * created on the bus opens its own connection with them (one that does not
 * reconnect by itself, see outbox.h).
 *
 * Thread-safety: a bus may be shared by any number of threads once
 * created; create and destroy must not race with other calls on it.
 */
#ifndef SONAR_BUS_H
#define SONAR_BUS_H

#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

#include "sonar/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Default server when neither the config nor NATS_URL names one. */
#define SONAR_DEFAULT_NATS_URL "nats://127.0.0.1:4222"

/**
 * Connection settings. All strings are borrowed for the duration of
 * sonar_bus_connect() only (they are copied). NULL means "not set".
 */
typedef struct sonar_bus_config {
    const char *urls;          /**< comma-separated server URLs */
    const char *name;          /**< connection name shown by the server */
    const char *user;          /**< user/password authentication */
    const char *password;
    const char *token;         /**< token authentication */
    const char *creds_file;    /**< JWT user credentials file (.creds) */
    const char *nkey_public;   /**< NKey public key (user "U..."); needs nkey_seed_file */
    const char *nkey_seed_file;/**< file holding the NKey seed that signs the server nonce */
    const char *tls_ca;        /**< CA certificates file; setting any TLS field enables TLS */
    const char *tls_cert;      /**< client certificate chain file */
    const char *tls_key;       /**< client private key file */
    int64_t connect_timeout_ms;/**< 0: 2000 ms */
    bool retry_on_failed_connect; /**< when no server answers at first, connect returns at once
                                       and nats.c keeps trying in the background (an info line
                                       is logged when it connects); publishes are buffered
                                       meanwhile */
    bool no_echo;              /**< the server does not deliver this connection's own
                                    publishes to its own subscriptions (NATS no_echo; the
                                    direct connections are not affected). For a process that
                                    listens on subjects it also publishes on and has no use
                                    for its own messages, e.g. sonard and its gather
                                    announcements: each one coming back costs a delivery. */
} sonar_bus_config;

/**
 * \brief Fills unset fields of \p cfg from the environment: NATS_URL,
 *        NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_CREDS, NATS_NKEY
 *        (public key), NATS_NKEY_SEED (seed file), NATS_CA, NATS_CERT, NATS_KEY. Fields already set are
 *        kept. The strings are borrowed from the environment.
 */
void sonar_bus_config_from_env(sonar_bus_config *cfg);

typedef struct sonar_bus sonar_bus;

/**
 * \brief Connects to the bus.
 * \param out new bus, written on success; free with sonar_bus_destroy().
 * \return SONAR_OK, SONAR_ERR_INVALID (bad config, e.g. unreadable creds
 *         file), SONAR_ERR_NATS (server unreachable; detail in
 *         sonar_last_error()).
 */
sonar_status sonar_bus_connect(sonar_bus **out, const sonar_bus_config *cfg);

/** \brief The underlying connection (borrowed, valid until destroy). */
natsConnection *sonar_bus_nats(sonar_bus *bus);

/** \brief The URL actually connected to (borrowed), or "" when disconnected. */
const char *sonar_bus_url(sonar_bus *bus);

/**
 * \brief Asks every joined service to re-publish its registration now:
 *        publishes `sonar.discover` and flushes (at most 5 s). Coordinators
 *        and collectors call it at start to rebuild their view at once.
 */
sonar_status sonar_bus_discover(sonar_bus *bus);

/** \brief Flushes and closes the connection and frees the bus. Accepts NULL. */
void sonar_bus_destroy(sonar_bus *bus);

/**
 * \brief Converts a nats.c status into a sonar status and records
 *        "<what>: <nats text> (<nats last error>)" as the error text.
 */
sonar_status sonar_bus_status(natsStatus s, const char *what);

#ifdef __cplusplus
}
#endif
#endif
