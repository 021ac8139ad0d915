/*
 * Test support for running a real binary as a child process: its stdout
 * and stderr are collected through pipes, with deadlines, never sleeps.
 *
 * Not thread-safe: use from the test's main thread.
 */
#ifndef SONAR_TEST_CLI_PROC_H
#define SONAR_TEST_CLI_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct test_proc {
    pid_t pid;
    int out_fd, err_fd;   /* -1 once at EOF */
    char *out, *err;      /* everything read so far, NUL-terminated */
    size_t out_len, err_len;
    int exit_code;        /* after test_proc_wait: exit status, 128+signal, or -1 */
} test_proc;

/* Starts argv[0] with argv; stdin is /dev/null. Returns false on failure. */
bool test_proc_start(test_proc *p, char *const argv[]);

/* Like test_proc_start, with stdin, stdout and stderr on a new
 * pseudo-terminal (isatty is true in the child); everything it writes
 * lands in p->out (with the terminal's "\r\n" line ends). */
bool test_proc_start_pty(test_proc *p, char *const argv[]);

/* Reads whatever the child wrote within \p timeout_ms (returns early on
 * output). */
void test_proc_pump(test_proc *p, int timeout_ms);

/* Reads until stdout contains \p needle or \p timeout_ms passed; true if found. */
bool test_proc_wait_output(test_proc *p, const char *needle, int timeout_ms);

/* Reads until both pipes close and the child exits, for at most
 * \p timeout_ms (then kills it). Returns the exit code (also in
 * p->exit_code): the exit status, 128+signal, or -1 on timeout. */
int test_proc_wait(test_proc *p, int timeout_ms);

/* Frees the buffers; kills and reaps a child still running. */
void test_proc_finish(test_proc *p);

/* Runs argv to completion (at most timeout_ms) and returns the exit code;
 * p holds its output until test_proc_finish. */
int test_proc_run(test_proc *p, char *const argv[], int timeout_ms);

#endif
