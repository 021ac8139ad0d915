#include "proc.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "natsd.h"

static int counter;

/* Output buffers are tracked, so that what a test leaves unfinished (a
 * test_proc on the stack of a failed or older test) is freed when the test
 * process exits instead of being reported as a leak. */
typedef struct buf_node {
    struct buf_node *prev, *next;
} buf_node;

static buf_node buffers = {&buffers, &buffers};

static void buf_link(buf_node *n)
{
    n->next = buffers.next;
    n->prev = &buffers;
    buffers.next->prev = n;
    buffers.next = n;
}

static void buf_unlink(buf_node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
}

static void buf_free_all(void)
{
    while (buffers.next != &buffers) {
        buf_node *n = buffers.next;
        buf_unlink(n);
        free(n);
    }
}

/* A new empty string, or NULL. */
static char *buf_new(void)
{
    static bool registered;
    if (!registered && atexit(buf_free_all) == 0)
        registered = true;
    buf_node *n = calloc(1, sizeof *n + 1);
    if (n == NULL)
        return NULL;
    buf_link(n);
    return (char *)(n + 1);
}

/* Grows buf to hold size bytes; NULL (buf untouched) when out of memory. */
static char *buf_grow(char *buf, size_t size)
{
    buf_node *n = (buf_node *)(void *)buf - 1;
    buf_unlink(n);
    buf_node *grown = realloc(n, sizeof *n + size);
    if (grown == NULL) {
        buf_link(n);
        return NULL;
    }
    buf_link(grown);
    return (char *)(grown + 1);
}

static void buf_free(char *buf)
{
    if (buf == NULL)
        return;
    buf_node *n = (buf_node *)(void *)buf - 1;
    buf_unlink(n);
    free(n);
}

static void init(test_proc *p)
{
    memset(p, 0, sizeof *p);
    p->out_fd = p->err_fd = -1;
}

static bool alloc_buffers(test_proc *p)
{
    p->out = buf_new();
    p->err = buf_new();
    return p->out != NULL && p->err != NULL;
}

/* In the child: add the environment, unblock signals a test may have
 * blocked, and run argv. Never returns. */
static void exec_child(const char *const *argv, const char *const *env)
{
    for (const char *const *e = env; e && *e; e++)
        putenv((char *)*e);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
}

bool test_proc_start(test_proc *p, const char *dir, const char *const *argv,
                     const char *const *env)
{
    init(p);
    counter++;
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    snprintf(p->out_path, sizeof p->out_path, "%s/%s-%d-%d.out", dir, base, (int)getpid(), counter);
    snprintf(p->err_path, sizeof p->err_path, "%s/%s-%d-%d.err", dir, base, (int)getpid(), counter);
    int out_w = open(p->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err_w = open(p->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    p->out_fd = open(p->out_path, O_RDONLY | O_CLOEXEC);
    p->err_fd = open(p->err_path, O_RDONLY | O_CLOEXEC);
    bool ok = out_w >= 0 && err_w >= 0 && p->out_fd >= 0 && p->err_fd >= 0 && alloc_buffers(p);
    pid_t pid = -1;
    if (ok) {
        fflush(stdout);
        fflush(stderr);
        pid = fork();
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull < 0)
            _exit(126);
        dup2(devnull, 0);
        dup2(out_w, 1);
        dup2(err_w, 2);
        exec_child(argv, env);
    }
    if (out_w >= 0)
        close(out_w);
    if (err_w >= 0)
        close(err_w);
    if (pid < 0) {
        test_proc_finish(p);
        return false;
    }
    p->pid = pid;
    return true;
}

bool test_proc_start_pty(test_proc *p, const char *const *argv, const char *const *env)
{
    init(p);
    p->pty = true;
    if (!alloc_buffers(p)) {
        test_proc_finish(p);
        return false;
    }
    int master = -1;
    struct winsize ws = {.ws_row = 24, .ws_col = 120};
    fflush(stdout);
    fflush(stderr);
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    if (pid < 0) {
        test_proc_finish(p);
        return false;
    }
    if (pid == 0)
        exec_child(argv, env);
    fcntl(master, F_SETFD, FD_CLOEXEC);
    p->pid = pid;
    p->out_fd = master; /* EIO once the child is gone: treated as EOF */
    return true;
}

/* Appends what is readable on *fd to *buf. A pty or pipe is closed at EOF
 * (or EIO); a file stays open, as the child may still append to it.
 * Returns the number of bytes read. */
static size_t drain(test_proc *p, int *fd, char **buf, size_t *len)
{
    size_t total = 0;
    while (*fd >= 0) {
        char chunk[4096];
        ssize_t n = read(*fd, chunk, sizeof chunk);
        if (n > 0) {
            char *grown = buf_grow(*buf, *len + (size_t)n + 1);
            if (grown == NULL)
                return total;
            memcpy(grown + *len, chunk, (size_t)n);
            *len += (size_t)n;
            grown[*len] = '\0';
            *buf = grown;
            total += (size_t)n;
            if (p->pty)
                return total; /* one read per poll: the pty read would block */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (p->pty) {
            close(*fd);
            *fd = -1;
        }
        return total;
    }
    return total;
}

void test_proc_pump(test_proc *p, int timeout_ms)
{
    if (p->out == NULL)
        return;
    if (!p->pty) {
        if (drain(p, &p->out_fd, &p->out, &p->out_len) + drain(p, &p->err_fd, &p->err, &p->err_len) > 0)
            return;
        /* Nothing new: a regular file cannot be polled, so give the child
         * a moment (bounded by the caller's deadline) and look again. */
        if (timeout_ms > 0) {
            test_pause_briefly();
            drain(p, &p->out_fd, &p->out, &p->out_len);
            drain(p, &p->err_fd, &p->err, &p->err_len);
        }
        return;
    }
    if (p->out_fd < 0)
        return;
    struct pollfd fds = {.fd = p->out_fd, .events = POLLIN};
    if (poll(&fds, 1, timeout_ms) <= 0)
        return;
    if (fds.revents & (POLLIN | POLLHUP | POLLERR))
        drain(p, &p->out_fd, &p->out, &p->out_len);
}

bool test_proc_wait_output(test_proc *p, const char *text, int timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    for (;;) {
        if (p->out != NULL && strstr(p->out, text) != NULL)
            return true;
        int64_t left = deadline - test_now_ms();
        if (left <= 0 || p->out == NULL || (p->pty && p->out_fd < 0))
            return false;
        test_proc_pump(p, (int)left);
    }
}

void test_proc_signal(test_proc *p, int sig)
{
    if (p->pid > 0 && !p->reaped)
        kill(p->pid, sig);
}

bool test_pid_stopped(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return false;
    bool all = true, any = false;
    struct dirent *e;
    while (all && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[400], buf[512];
        snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue; /* the thread ended meanwhile */
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* "tid (comm) S ...": the state follows the last ')' */
        const char *close = strrchr(buf, ')');
        char state = close && close[1] == ' ' ? close[2] : '?';
        any = true;
        all = state == 'T' || state == 't';
    }
    closedir(d);
    return any && all;
}

bool test_pid_freeze(pid_t pid, int timeout_ms)
{
    if (kill(pid, SIGSTOP) != 0)
        return false;
    int64_t until = test_now_ms() + timeout_ms;
    while (!test_pid_stopped(pid)) {
        if (test_now_ms() > until)
            return false;
        test_pause_briefly();
    }
    return true;
}

/* Reads the rest of the output of a reaped child. */
static void drain_rest(test_proc *p)
{
    if (p->out == NULL)
        return;
    if (p->pty) {
        while (p->out_fd >= 0) {
            struct pollfd fds = {.fd = p->out_fd, .events = POLLIN};
            if (poll(&fds, 1, 0) <= 0)
                break;
            drain(p, &p->out_fd, &p->out, &p->out_len);
        }
        return;
    }
    drain(p, &p->out_fd, &p->out, &p->out_len);
    drain(p, &p->err_fd, &p->err, &p->err_len);
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
            drain_rest(p);
            return true;
        }
        int64_t left = deadline - test_now_ms();
        if (left < 0)
            return false;
        /* Keep reading meanwhile: a child blocked on a full terminal
         * would never exit. */
        if (p->pty && p->out_fd >= 0)
            test_proc_pump(p, left < 10 ? (int)left : 10);
        else
            test_pause_briefly();
    }
}

int test_proc_exit_code(const test_proc *p)
{
    if (!p->reaped)
        return -1;
    if (WIFEXITED(p->status))
        return WEXITSTATUS(p->status);
    return -1;
}

void test_proc_kill(test_proc *p)
{
    if (p->pid > 0 && !p->reaped) {
        kill(p->pid, SIGCONT);
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &p->status, 0);
        p->reaped = true;
        drain_rest(p);
    }
}

void test_proc_finish(test_proc *p)
{
    test_proc_kill(p);
    /* A zeroed test_proc (never started) has no descriptors of its own. */
    bool opened = p->pty || p->out_path[0] != '\0';
    if (opened && p->out_fd >= 0)
        close(p->out_fd);
    if (opened && p->err_fd >= 0)
        close(p->err_fd);
    p->out_fd = p->err_fd = -1;
    buf_free(p->out);
    buf_free(p->err);
    p->out = p->err = NULL;
    p->out_len = p->err_len = 0;
}

char *test_proc_stdout(test_proc *p)
{
    test_proc_pump(p, 0);
    return strdup(p->out ? p->out : "");
}

char *test_proc_stderr(test_proc *p)
{
    test_proc_pump(p, 0);
    return strdup(p->err ? p->err : "");
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

int test_thread_nice(pid_t pid, const char *comm)
{
    char dir_path[64];
    snprintf(dir_path, sizeof dir_path, "/proc/%d/task", pid > 0 ? (int)pid : (int)getpid());
    DIR *d = opendir(dir_path);
    int nice = INT_MIN;
    struct dirent *e;
    while (d != NULL && nice == INT_MIN && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[400], name[64] = "";
        snprintf(path, sizeof path, "%s/%s/comm", dir_path, e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        if (fgets(name, sizeof name, f) != NULL)
            name[strcspn(name, "\n")] = '\0';
        fclose(f);
        if (strcmp(name, comm) != 0)
            continue;
        errno = 0;
        int v = getpriority(PRIO_PROCESS, (id_t)atoi(e->d_name));
        if (!(v == -1 && errno != 0))
            nice = v;
    }
    if (d != NULL)
        closedir(d);
    return nice;
}
