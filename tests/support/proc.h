/*
 * Test support: run one of our real binaries as a child process, with its
 * stdout and stderr captured to files in a temp dir, and stop it.
 * Not thread-safe: use from the test's main thread.
 */
#ifndef SONAR_TEST_PROC_H
#define SONAR_TEST_PROC_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct test_proc {
    pid_t pid;
    int status;        /* wait status once reaped */
    bool reaped;
    char out_path[300];
    char err_path[300];
} test_proc;

/* Starts argv[0] (a path) with argv; extra environment "K=V" strings in env
 * (NULL-terminated, may be NULL) are added to the current environment.
 * Output goes to files under dir. Returns false on failure. */
bool test_proc_start(test_proc *p, const char *dir, const char *const *argv,
                     const char *const *env);
/* Sends a signal. */
void test_proc_signal(test_proc *p, int sig);
/* Waits up to timeout_ms for exit; true if it exited (status in p->status). */
bool test_proc_wait(test_proc *p, int timeout_ms);
/* Exit code if it exited normally, -1 otherwise (e.g. killed). */
int test_proc_exit_code(const test_proc *p);
/* SIGKILL and reap if still running. */
void test_proc_kill(test_proc *p);
/* Reads the captured stdout/stderr (new, free()); "" when empty. */
char *test_proc_stdout(const test_proc *p);
char *test_proc_stderr(const test_proc *p);
/* Waits until the captured stdout contains `text`, up to timeout_ms. */
bool test_proc_wait_output(const test_proc *p, const char *text, int timeout_ms);

/* Runs a command to completion (up to timeout_ms); returns its exit code or
 * -1; captured output in p as above. */
int test_proc_run(test_proc *p, const char *dir, const char *const *argv,
                  const char *const *env, int timeout_ms);

#endif
