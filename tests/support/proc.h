/*
 * Test support: run one of our real binaries (or any program) as a child
 * process and watch it, with deadlines, never sleeps.
 *
 * Two ways to start it:
 * - test_proc_start: stdin is /dev/null, stdout and stderr go to files in a
 *   temp dir (so a chatty daemon never blocks on a full pipe, and a test
 *   may leave it running unattended);
 * - test_proc_start_pty: stdin, stdout and stderr on a new pseudo-terminal
 *   (isatty is true in the child); everything it writes lands in p->out
 *   with the terminal's "\r\n" line ends. The terminal is drained only
 *   while the test calls pump/wait functions.
 *
 * p->out and p->err hold everything read so far (NUL-terminated, never
 * NULL after a successful start); test_proc_pump, test_proc_wait_output,
 * test_proc_wait and test_proc_run refresh them. test_proc_finish releases
 * a test_proc (and kills a child still running); a zeroed test_proc may be
 * finished too. Buffers of a test_proc never finished are freed when the
 * test process exits; a child left running is not killed, so stop it.
 *
 * Not thread-safe: use from the test's main thread.
 */
#ifndef SONAR_TEST_PROC_H
#define SONAR_TEST_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct test_proc {
    pid_t pid;           /* > 0 once started */
    int status;          /* wait status once reaped */
    bool reaped;
    bool pty;
    int out_fd, err_fd;  /* read ends (files or the pty master); -1 when closed */
    char *out, *err;     /* everything read so far */
    size_t out_len, err_len;
    char out_path[300];  /* capture files (empty for a pty) */
    char err_path[300];
} test_proc;

/* Starts argv[0] (a path, or a name looked up in PATH) with argv; extra environment "K=V" strings in env
 * (NULL-terminated, may be NULL) are added to the current environment.
 * stdout and stderr go to new files under dir. Returns false on failure. */
bool test_proc_start(test_proc *p, const char *dir, const char *const *argv,
                     const char *const *env);
/* Like test_proc_start with the child on a new pseudo-terminal (24x120). */
bool test_proc_start_pty(test_proc *p, const char *const *argv, const char *const *env);

/* Reads whatever the child wrote, waiting up to timeout_ms for something
 * new (returns early on output). */
void test_proc_pump(test_proc *p, int timeout_ms);
/* Reads until stdout contains `text` or timeout_ms passed; true if found. */
bool test_proc_wait_output(test_proc *p, const char *text, int timeout_ms);
/* Sends a signal (nothing once reaped). */
void test_proc_signal(test_proc *p, int sig);

/* Whether every thread of process `pid` is stopped (SIGSTOP took effect). */
bool test_pid_stopped(pid_t pid);
/* Sends SIGSTOP and waits (at most timeout_ms) until every thread of `pid`
 * has stopped: kill() returns before that, and under load the threads of a
 * multithreaded process can go on running for milliseconds (the stop is
 * carried out by the thread that takes the signal, once it gets the CPU).
 * True when stopped. */
bool test_pid_freeze(pid_t pid, int timeout_ms);
/* Waits up to timeout_ms for exit, reading its output meanwhile; true if it
 * exited (then all its output is in p->out/p->err). */
bool test_proc_wait(test_proc *p, int timeout_ms);
/* Exit status if it exited normally; -1 if a signal killed it or it has not
 * been reaped (see p->status for the signal). */
int test_proc_exit_code(const test_proc *p);
/* SIGKILL (after SIGCONT) and reap if still running. */
void test_proc_kill(test_proc *p);
/* Kills a child still running, closes and frees everything. */
void test_proc_finish(test_proc *p);

/* Copies of the captured stdout/stderr (new, free()); "" when empty. */
char *test_proc_stdout(test_proc *p);
char *test_proc_stderr(test_proc *p);

/* Runs a command to completion (up to timeout_ms, then kills it); returns
 * its exit code as test_proc_exit_code, or -1 on failure to start or
 * timeout. The output stays in p until test_proc_finish. */
int test_proc_run(test_proc *p, const char *dir, const char *const *argv,
                  const char *const *env, int timeout_ms);

/* The nice value of the first thread of process `pid` (0: this process)
 * whose name (/proc/.../comm) is `comm`; INT_MIN when there is none. */
int test_thread_nice(pid_t pid, const char *comm);

#endif
