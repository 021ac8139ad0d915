/**
 * \file claims.h
 * \brief Claims of change ids: which of several coordinators reports a
 *        change announced to two of them at the same moment.
 *
 * A claim is an asynchronous JetStream publish on `sonar.claim.<change_id>`
 * into the stream `SONAR_CLAIMS` (memory storage, kept an hour) that
 * expects no message on that subject yet, so the server stores only the
 * first claim of a change id; every later one is refused with "wrong last
 * sequence". The answer goes to the gatherer (sonar_gatherer_claimed()):
 * won, or lost to another coordinator. Any other failure counts as won
 * (better a second report than none). See gather.h for what a gather does
 * with it.
 *
 * Lifetime: nats.c may call the answer's callback after the context and
 * even the connection were destroyed (nats.c issue #735), so the claims
 * object is reference counted: one reference for its owner, one per claim
 * awaiting its answer. After sonar_claims_close() no answer reaches the
 * gatherer; the object is freed with the last reference.
 *
 * Thread-safety: send and stats from any thread; open and close from one.
 */
#ifndef SONARD_CLAIMS_H
#define SONARD_CLAIMS_H

#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

#include "gather.h"
#include "sonar/status.h"

#define SONAR_CLAIMS_STREAM "SONAR_CLAIMS"
#define SONAR_CLAIM_PREFIX "sonar.claim."
/** Claims are kept longer than any gather and its retries. */
#define SONAR_CLAIMS_MAX_AGE_MS (60LL * 60 * 1000)

typedef struct sonar_claims sonar_claims;

/**
 * \brief Ensures the claims stream and opens an asynchronous JetStream
 *        context on \p nc (borrowed) whose answers go to \p g (borrowed
 *        until sonar_claims_close()).
 * \return SONAR_OK; SONAR_ERR_NATS (no JetStream, stream refused);
 *         SONAR_ERR_NOMEM.
 */
sonar_status sonar_claims_open(sonar_claims **out, natsConnection *nc, sonar_gatherer *g);

/**
 * \brief Claims \p change_id for \p owner (this coordinator's instance id,
 *        the claim's payload). Quick: never waits for the server.
 * \return true when the claim went out (its answer will follow), false
 *         when it could not be sent (then the gather is simply ours).
 */
bool sonar_claims_send(sonar_claims *cl, const char *change_id, const char *owner);

/** \brief Claims sent, and claims lost to another coordinator. */
void sonar_claims_counts(sonar_claims *cl, int64_t *made, int64_t *lost);

/** \brief No answer reaches the gatherer after this returns. Accepts NULL. */
void sonar_claims_close(sonar_claims *cl);

#endif
