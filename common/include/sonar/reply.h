/**
 * \file reply.h
 * \brief Error replies on raw NATS subscriptions: a `sonar.error.v1` body
 *        with the `Nats-Service-Error` and `Nats-Service-Error-Code`
 *        headers (ADR-32). The service API's sonar_request_respond_error()
 *        uses it for endpoints.
 *
 * Thread-safety: callable from any thread, NATS callbacks included (it
 * only encodes and publishes).
 */
#ifndef SONAR_REPLY_H
#define SONAR_REPLY_H

#include <nats/nats.h>

#include "sonar/status.h"

/**
 * \brief Publishes the error to \p reply (borrowed; nothing happens when
 *        NULL or empty). \p fmt is printf-style and truncated to
 *        SONAR_MAX_MESSAGE_TEXT.
 */
sonar_status sonar_reply_error(natsConnection *nc, const char *reply, int code,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/** \brief The HTTP-like code for a decode failure: 400 for input errors, 500 otherwise. */
int sonar_reply_code(sonar_status s);

#endif
