#include "proc.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "natsd.h"

static int counter;

bool test_proc_start(test_proc *p, const char *dir, const char *const *argv,
                     const char *const *env)
{
    memset(p, 0, sizeof *p);
    counter++;
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    snprintf(p->out_path, sizeof p->out_path, "%s/%s-%d-%d.out", dir, base, (int)getpid(), counter);
    snprintf(p->err_path, sizeof p->err_path, "%s/%s-%d-%d.err", dir, base, (int)getpid(), counter);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        int out = open(p->out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(p->err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int devnull = open("/dev/null", O_RDONLY);
        if (out < 0 || err < 0 || devnull < 0)
            _exit(126);
        dup2(devnull, 0);
        dup2(out, 1);
        dup2(err, 2);
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)*e);
        /* Unblock signals a test may have blocked. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    p->pid = pid;
    return true;
}

void test_proc_signal(test_proc *p, int sig)
{
    if (p->pid > 0 && !p->reaped)
        kill(p->pid, sig);
}

bool test_proc_wait(test_proc *p, int timeout_ms)
{
    if (p->reaped)
        return true;
    if (p->pid <= 0)
        return false;
    int64_t deadline = test_now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(p->pid, &p->status, WNOHANG);
        if (r == p->pid) {
            p->reaped = true;
            return true;
        }
        if (test_now_ms() > deadline)
            return false;
        test_pause_briefly();
    }
}

int test_proc_exit_code(const test_proc *p)
{
    if (!p->reaped || !WIFEXITED(p->status))
        return -1;
    return WEXITSTATUS(p->status);
}

void test_proc_kill(test_proc *p)
{
    if (p->pid > 0 && !p->reaped) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &p->status, 0);
        p->reaped = true;
    }
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return strdup("");
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    return buf;
}

char *test_proc_stdout(const test_proc *p) { return slurp(p->out_path); }
char *test_proc_stderr(const test_proc *p) { return slurp(p->err_path); }

bool test_proc_wait_output(const test_proc *p, const char *text, int timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    for (;;) {
        char *out = slurp(p->out_path);
        bool found = out && strstr(out, text) != NULL;
        free(out);
        if (found)
            return true;
        if (test_now_ms() > deadline)
            return false;
        test_pause_briefly();
    }
}

int test_proc_run(test_proc *p, const char *dir, const char *const *argv,
                  const char *const *env, int timeout_ms)
{
    if (!test_proc_start(p, dir, argv, env))
        return -1;
    if (!test_proc_wait(p, timeout_ms)) {
        test_proc_kill(p);
        return -1;
    }
    return test_proc_exit_code(p);
}
