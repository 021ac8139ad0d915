/*
 * Test support: collects the messages arriving on a subject so a test can
 * wait for them with a deadline. Thread-safe: messages arrive on a NATS
 * thread while the test reads on its own.
 */
#ifndef SONAR_TEST_COLLECTOR_H
#define SONAR_TEST_COLLECTOR_H

#include <stdbool.h>
#include <stddef.h>

#include <nats/nats.h>

typedef struct test_collector test_collector;

/* Subscribes to `subject` on `nc`; returns NULL on failure. */
test_collector *test_collector_create(natsConnection *nc, const char *subject);
/* Number of messages received so far. */
size_t test_collector_count(test_collector *c);
/* Waits until at least `n` messages arrived or `timeout_ms` passed. */
bool test_collector_wait(test_collector *c, size_t n, int timeout_ms);
/* Payload of message `i` (NUL-terminated copy owned by the collector), or NULL. */
const char *test_collector_data(test_collector *c, size_t i);
/* Subject of message `i` (owned by the collector), or NULL. */
const char *test_collector_subject(test_collector *c, size_t i);
void test_collector_destroy(test_collector *c);

#endif
