/*
 * Test support: a real nats-server (JetStream on, file storage in a temp
 * dir, free port) started and stopped by a test, plus small helpers for
 * temp dirs and waiting on conditions with a deadline.
 *
 * Not thread-safe: call start/stop from the test's main thread.
 */
#ifndef SONAR_TEST_NATSD_H
#define SONAR_TEST_NATSD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct test_natsd {
    pid_t pid;
    const char *const *extra_args; /* more nats-server arguments (borrowed), or NULL */
    int port;
    char url[64];
    char dir[256];     /* temp dir holding JetStream storage and the log */
    char log[300];
} test_natsd;

/* Starts nats-server on a free port, waits until it accepts clients.
 * Returns false (with a message on stderr) on failure. */
bool test_natsd_start(test_natsd *d);
/* Like test_natsd_start with more nats-server arguments (e.g. "--user",
 * "u", "--pass", "p"); `extra` must stay valid while the server may restart. */
bool test_natsd_start_with(test_natsd *d, const char *const *extra);
/* Restarts on the same port and storage dir (after test_natsd_stop or kill). */
bool test_natsd_restart(test_natsd *d);
/* Stops the server (SIGTERM, then SIGKILL after 5 s) and reaps it. Keeps the dir. */
void test_natsd_stop(test_natsd *d);
/* Stops and removes the temp dir. */
void test_natsd_destroy(test_natsd *d);

/* Bytes clients sent that the server has not read yet, summed over its
 * established connections (from /proc/net/tcp; -1 when unreadable). With
 * the server stopped (SIGSTOP) these are publishes in flight. */
long test_natsd_unread_bytes(const test_natsd *d);
/* Client connections the server holds open (established; -1 when unreadable). */
long test_natsd_clients(const test_natsd *d);

/* Creates a fresh temp dir under $TMPDIR (or /tmp); path written to buf. */
bool test_mkdtemp(char *buf, size_t buflen, const char *tag);
/* rm -rf of a temp dir made by test_mkdtemp. */
void test_rmtree(const char *path);
/* A free TCP port on 127.0.0.1 (bound then released). */
int test_free_port(void);
/* Monotonic milliseconds. */
int64_t test_now_ms(void);

/* Waits until `cond` is true, polling every millisecond or so, for at most
 * `timeout_ms`. Evaluates to true when the condition held. Not a sleep:
 * it returns as soon as the condition holds. */
#define TEST_WAIT_UNTIL(cond, timeout_ms)                                          \
    __extension__({                                                                \
        int64_t _deadline = test_now_ms() + (timeout_ms);                          \
        bool _ok = false;                                                          \
        for (;;) {                                                                 \
            if (cond) { _ok = true; break; }                                       \
            if (test_now_ms() > _deadline) break;                                  \
            test_pause_briefly();                                                  \
        }                                                                          \
        _ok;                                                                       \
    })

/* Yields the CPU for about a millisecond between condition polls. */
void test_pause_briefly(void);

/* Path of a built binary, from the environment variable `var` set by meson
 * (e.g. SONAR_HELLO_BIN); aborts the test with a message when unset. */
const char *test_bin(const char *var);

#endif
