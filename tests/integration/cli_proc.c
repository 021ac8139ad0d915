#include "cli_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "natsd.h"

bool test_proc_start(test_proc *p, char *const argv[])
{
    memset(p, 0, sizeof *p);
    p->out_fd = p->err_fd = -1;
    p->exit_code = -1;
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0)
        return false;
    if (pipe2(err, O_CLOEXEC) != 0) {
        close(out[0]);
        close(out[1]);
        return false;
    }
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    p->pid = pid;
    p->out_fd = out[0];
    p->err_fd = err[0];
    p->out = calloc(1, 1);
    p->err = calloc(1, 1);
    return p->out && p->err;
}

bool test_proc_start_pty(test_proc *p, char *const argv[])
{
    memset(p, 0, sizeof *p);
    p->out_fd = p->err_fd = -1;
    p->exit_code = -1;
    int master = -1;
    struct winsize ws = {.ws_row = 24, .ws_col = 120};
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    if (pid < 0)
        return false;
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    fcntl(master, F_SETFD, FD_CLOEXEC);
    p->pid = pid;
    p->out_fd = master; /* EIO once the child is gone: treated as EOF */
    p->out = calloc(1, 1);
    p->err = calloc(1, 1);
    return p->out && p->err;
}

/* Appends what is readable on *fd to *buf; closes it at EOF. */
static void drain(int *fd, char **buf, size_t *len)
{
    char chunk[4096];
    ssize_t n = read(*fd, chunk, sizeof chunk);
    if (n > 0) {
        char *grown = realloc(*buf, *len + (size_t)n + 1);
        if (grown == NULL)
            return;
        memcpy(grown + *len, chunk, (size_t)n);
        *len += (size_t)n;
        grown[*len] = '\0';
        *buf = grown;
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        close(*fd);
        *fd = -1;
    }
}

void test_proc_pump(test_proc *p, int timeout_ms)
{
    struct pollfd fds[2] = {{.fd = p->out_fd, .events = POLLIN}, {.fd = p->err_fd, .events = POLLIN}};
    if (p->out_fd < 0 && p->err_fd < 0)
        return;
    if (poll(fds, 2, timeout_ms) <= 0)
        return;
    if (p->out_fd >= 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
        drain(&p->out_fd, &p->out, &p->out_len);
    if (p->err_fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR)))
        drain(&p->err_fd, &p->err, &p->err_len);
}

bool test_proc_wait_output(test_proc *p, const char *needle, int timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    while (strstr(p->out, needle) == NULL) {
        int64_t left = deadline - test_now_ms();
        if (left <= 0 || (p->out_fd < 0 && p->err_fd < 0))
            return strstr(p->out, needle) != NULL;
        test_proc_pump(p, (int)left);
    }
    return true;
}

static int decode_status(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

int test_proc_wait(test_proc *p, int timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    while (p->out_fd >= 0 || p->err_fd >= 0) {
        int64_t left = deadline - test_now_ms();
        if (left <= 0)
            break;
        test_proc_pump(p, (int)left);
    }
    int status;
    for (;;) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            p->exit_code = decode_status(status);
            return p->exit_code;
        }
        if (test_now_ms() > deadline) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
            p->pid = 0;
            p->exit_code = -1;
            return -1;
        }
        test_pause_briefly();
    }
}

void test_proc_finish(test_proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        p->pid = 0;
    }
    if (p->out_fd >= 0)
        close(p->out_fd);
    if (p->err_fd >= 0)
        close(p->err_fd);
    p->out_fd = p->err_fd = -1;
    free(p->out);
    free(p->err);
    p->out = p->err = NULL;
}

int test_proc_run(test_proc *p, char *const argv[], int timeout_ms)
{
    if (!test_proc_start(p, argv))
        return -1;
    return test_proc_wait(p, timeout_ms);
}
