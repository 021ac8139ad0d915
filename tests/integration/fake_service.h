/*
 * The command line of the fake service (tests/integration/fake_service.c,
 * its path in SONAR_FAKE_SERVICE_BIN), for the tests that start it.
 */
#ifndef SONAR_TEST_FAKE_SERVICE_H
#define SONAR_TEST_FAKE_SERVICE_H

#include <stddef.h>

#include "natsd.h"

/* Fills argv (room for 16, NULL-terminated) to run the fake service `name`
 * on the server at url; each of dep, check ("pass"/"fail"), message and
 * heartbeat (ms) is passed on only when not NULL. Borrowed strings. */
static inline void fake_service_argv(const char *argv[16], const char *url, const char *name,
                                     const char *dep, const char *check, const char *message,
                                     const char *heartbeat)
{
    const char *opt[] = {"--depends", "--check", "--message", "--heartbeat"};
    const char *val[] = {dep, check, message, heartbeat};
    size_t n = 0;
    argv[n++] = test_bin("SONAR_FAKE_SERVICE_BIN");
    argv[n++] = "--server";
    argv[n++] = url;
    argv[n++] = "--name";
    argv[n++] = name;
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++) {
        if (val[i] != NULL) {
            argv[n++] = opt[i];
            argv[n++] = val[i];
        }
    }
    argv[n] = NULL;
}

#endif
