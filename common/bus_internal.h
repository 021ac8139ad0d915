/*
 * What libsonar's modules may ask of a bus beyond the public API (not
 * installed).
 */
#ifndef SONAR_BUS_INTERNAL_H
#define SONAR_BUS_INTERNAL_H

#include <nats/nats.h>

#include "sonar/bus.h"

/*
 * Opens a new connection with the bus's settings but no reconnect and no
 * SendAsap: once the socket is lost the connection closes, and every
 * publish made after that fails instead of waiting in nats.c's reconnect
 * buffer. The outbox relay publishes on one so that a publish can never
 * overtake, after a reconnect, an earlier one lost with the old socket.
 * The caller owns *out (natsConnection_Destroy). Safe from any thread.
 */
sonar_status sonar__bus_connect_direct(sonar_bus *bus, natsConnection **out);

#endif
