/*
 * Internal helpers shared by libsonar's modules (not installed).
 * Naming: `sonar__` for internal non-static functions.
 */
#ifndef SONAR_INTERNAL_H
#define SONAR_INTERNAL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "sonar/status.h"

/* Records the error text for this thread and returns \p status. */
sonar_status sonar__fail(sonar_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Forgets this thread's error text. */
void sonar__clear_error(void);

/* Always-on invariant check: a broken invariant is a bug, so abort loudly. */
#define SONAR_REQUIRE(cond)                                                        \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "sonar: invariant failed: %s (%s:%d)\n", #cond,        \
                    __FILE__, __LINE__);                                           \
            abort();                                                               \
        }                                                                          \
    } while (0)

/* strdup that treats NULL as NULL. */
char *sonar__strdup(const char *s);

#include "sonar/log.h"

#endif
