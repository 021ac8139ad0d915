/**
 * \file registry.h
 * \brief sonard's live registry: every service ever seen (known services
 *        persist) and its live instances, fed by `sonar.register.*`
 *        heartbeats and `sonar.leave.*`.
 *
 * An instance is live while `now - last_seen <= 3 * heartbeat_ms` (it
 * expires after three missed heartbeats); expiry is evaluated lazily on
 * every call that looks at liveness, so no sweeper thread is needed. A
 * leave removes the instance at once. A service stays known after its
 * last instance went away, with the dependencies and checks of its last
 * registration.
 *
 * Clocks: every call takes `now_ms` (monotonic, sonar_now_ms()) and, where
 * wall-clock times are recorded, `wall_ms` (sonar_wall_ms()), so tests
 * drive time by hand.
 *
 * Thread-safety: all functions may be called from any thread (one mutex
 * inside, held only for in-memory work; no I/O happens under it), so NATS
 * callbacks may call sonar_registry_register() directly.
 */
#ifndef SONARD_REGISTRY_H
#define SONARD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sonar/protocol.h"
#include "sonar/status.h"

/** Missed heartbeats after which an instance expires. */
#define SONARD_MISSED_HEARTBEATS 3

typedef struct sonar_registry sonar_registry;

/**
 * \brief Creates an empty registry.
 * \param out new registry, written on success.
 * \param self_name registrations of this service (the coordinator's own
 *        libsonar identity) are ignored; may be NULL. Copied.
 * \return SONAR_OK or SONAR_ERR_NOMEM.
 */
sonar_status sonar_registry_create(sonar_registry **out, const char *self_name);

/** \brief Frees the registry. Accepts NULL. */
void sonar_registry_destroy(sonar_registry *reg);

/**
 * \brief Records a registration or heartbeat (\p msg borrowed, validated
 *        by the caller with sonar_register_decode()).
 * \param out_new_instance when not NULL, true if the instance was not live before.
 * \return SONAR_OK; SONAR_ERR_STATE when \p msg names the ignored self
 *         service; SONAR_ERR_NOMEM.
 */
sonar_status sonar_registry_register(sonar_registry *reg, const sonar_register_msg *msg,
                                     int64_t now_ms, int64_t wall_ms, bool *out_new_instance);

/**
 * \brief Removes an instance at once (graceful leave).
 * \return SONAR_OK, or SONAR_ERR_NOT_FOUND when it was not registered.
 */
sonar_status sonar_registry_leave(sonar_registry *reg, const char *service, const char *instance);

/**
 * \brief Restores a known service from the store (a coordinator restart).
 * \param depends_on borrowed JSON array of names; may be NULL.
 * \param checks borrowed JSON object {"dep":["check",...]}; may be NULL.
 * \param wall_ms when the service was last seen.
 * Entries that break the name rule are skipped. Existing live data wins.
 */
sonar_status sonar_registry_restore_service(sonar_registry *reg, const char *service,
                                            const char *version, const json_t *depends_on,
                                            const json_t *checks, int64_t wall_ms);

/**
 * \brief Restores an instance from the store. It is live only if its
 *        last heartbeat (wall clock \p seen_wall_ms) is recent enough
 *        compared with \p wall_ms; otherwise it is ignored.
 */
sonar_status sonar_registry_restore_instance(sonar_registry *reg, const char *service,
                                             const char *instance, const char *version,
                                             const char *address, int64_t heartbeat_ms,
                                             int64_t seen_wall_ms, int64_t now_ms,
                                             int64_t wall_ms);

/** Who a gather expects to answer, computed from the registry at one instant. */
typedef struct sonar_expected {
    char **live;          /**< services with a live instance, sorted by name */
    size_t n_live;
    char **down;          /**< known dependents of the changed service with no live instance, sorted */
    size_t n_down;
} sonar_expected;

/**
 * \brief Fills \p out (new; release with sonar_expected_finish()) for a
 *        change of \p changed. Services registered with
 *        `"answers_checks": false` are in neither list.
 * \return SONAR_OK or SONAR_ERR_NOMEM.
 */
sonar_status sonar_registry_expected(sonar_registry *reg, const char *changed, int64_t now_ms,
                                     sonar_expected *out);

/** \brief Releases and zeroes \p e. Accepts a zeroed struct. */
void sonar_expected_finish(sonar_expected *e);

/** \brief True when \p service is known (live or not). */
bool sonar_registry_known(sonar_registry *reg, const char *service);

/** \brief True when \p service has a live instance. */
bool sonar_registry_live(sonar_registry *reg, const char *service, int64_t now_ms);

/** \brief Number of known services. */
size_t sonar_registry_count(sonar_registry *reg);

/** \brief Number of services with a live instance at \p now_ms. */
size_t sonar_registry_live_count(sonar_registry *reg, int64_t now_ms);

/**
 * \brief The `sonar.services.v1` document of the read API (see
 *        docs/coordinator.md). Expired instances are left out.
 * \param out new reference, written on success.
 */
sonar_status sonar_registry_services_json(sonar_registry *reg, int64_t now_ms, json_t **out);

/**
 * \brief The `sonar.graph.v1` document: every known service a node (and
 *        every named dependency), an edge per dependent → dependency with
 *        its check names.
 * \param out new reference, written on success.
 */
sonar_status sonar_registry_graph_json(sonar_registry *reg, json_t **out);

/**
 * \brief The JSON texts the store keeps for a service: depends_on array
 *        and checks object of \p msg (new strings, free()).
 */
sonar_status sonar_registry_info_json(const sonar_register_msg *msg, char **out_depends_on,
                                      char **out_checks);

#endif
