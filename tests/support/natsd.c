#include "natsd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void test_pause_briefly(void)
{
    /* Between polls of a condition: give the other threads the CPU for ~1 ms. */
    poll(NULL, 0, 1);
}

bool test_mkdtemp(char *buf, size_t buflen, const char *tag)
{
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || *tmp == '\0')
        tmp = "/tmp";
    snprintf(buf, buflen, "%s/sonar-%s-XXXXXX", tmp, tag);
    return mkdtemp(buf) != NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

void test_rmtree(const char *path)
{
    if (path && *path)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    socklen_t len = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static bool port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* True once the log, from byte `from` on, says this server is ready: so a
 * port that someone else took between test_free_port and our bind (another
 * suite's server answering on it) is never mistaken for ours. */
static bool log_says_ready(const test_natsd *d, off_t from)
{
    FILE *f = fopen(d->log, "r");
    if (f == NULL)
        return false;
    bool ready = false;
    char line[512];
    if (fseeko(f, from, SEEK_SET) == 0)
        while (!ready && fgets(line, sizeof line, f) != NULL)
            ready = strstr(line, "Server is ready") != NULL;
    fclose(f);
    return ready;
}

static bool spawn(test_natsd *d)
{
    char port[16], store[300];
    struct stat st;
    off_t log_start = stat(d->log, &st) == 0 ? st.st_size : 0; /* restarts append */
    snprintf(port, sizeof port, "%d", d->port);
    snprintf(store, sizeof store, "%s/js", d->dir);
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        const char *argv[32] = {"nats-server", "-a", "127.0.0.1", "-p", port, "-js", "-sd", store};
        int n = 8;
        for (const char *const *e = d->extra_args; e && *e && n < 31; e++)
            argv[n++] = *e;
        argv[n] = NULL;
        execvp("nats-server", (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    int64_t deadline = test_now_ms() + 10000;
    while (test_now_ms() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "nats-server exited early; see %s\n", d->log);
            d->pid = 0;
            return false;
        }
        if (log_says_ready(d, log_start) && port_accepts(d->port))
            return true;
        test_pause_briefly();
    }
    fprintf(stderr, "nats-server did not accept connections within 10 s; see %s\n", d->log);
    return false;
}

bool test_natsd_start(test_natsd *d)
{
    return test_natsd_start_with(d, NULL);
}

bool test_natsd_start_with(test_natsd *d, const char *const *extra)
{
    memset(d, 0, sizeof *d);
    d->extra_args = extra;
    if (!test_mkdtemp(d->dir, sizeof d->dir, "natsd"))
        return false;
    snprintf(d->log, sizeof d->log, "%s/nats-server.log", d->dir);
    for (int attempt = 0; attempt < 5; attempt++) {
        d->port = test_free_port();
        snprintf(d->url, sizeof d->url, "nats://127.0.0.1:%d", d->port);
        if (spawn(d))
            return true;
    }
    return false;
}

bool test_natsd_restart(test_natsd *d)
{
    if (d->pid > 0)
        test_natsd_stop(d);
    int64_t deadline = test_now_ms() + 10000;
    /* The port may linger briefly after the old server exits. */
    while (test_now_ms() < deadline) {
        if (spawn(d))
            return true;
        test_pause_briefly();
    }
    return false;
}

void test_natsd_stop(test_natsd *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    int64_t deadline = test_now_ms() + 5000;
    int status;
    while (waitpid(d->pid, &status, WNOHANG) == 0) {
        if (test_now_ms() > deadline) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &status, 0);
            break;
        }
        test_pause_briefly();
    }
    d->pid = 0;
}

void test_natsd_destroy(test_natsd *d)
{
    test_natsd_stop(d);
    test_rmtree(d->dir);
    d->dir[0] = '\0';
}

/* Sums over the server's established client connections (from
 * /proc/net/tcp: "sl local rem st tx_queue:rx_queue ..." in hex; the
 * server's side of a connection has the server's port as its local port,
 * state 01): their count in *n, their unread bytes in *unread. */
static bool server_sockets(const test_natsd *d, long *n, long *unread)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (f == NULL)
        return false;
    char line[512];
    *n = *unread = 0;
    if (fgets(line, sizeof line, f) == NULL) { /* the header line */
        fclose(f);
        return false;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned local_port = 0, state = 0;
        unsigned long txq = 0, rxq = 0;
        if (sscanf(line, " %*d: %*x:%x %*x:%*x %x %lx:%lx", &local_port, &state, &txq, &rxq) != 4)
            continue;
        if ((int)local_port == d->port && state == 0x01) {
            (*n)++;
            *unread += (long)rxq;
        }
    }
    fclose(f);
    return true;
}

long test_natsd_unread_bytes(const test_natsd *d)
{
    long n, unread;
    return server_sockets(d, &n, &unread) ? unread : -1;
}

long test_natsd_clients(const test_natsd *d)
{
    long n, unread;
    return server_sockets(d, &n, &unread) ? n : -1;
}

const char *test_bin(const char *var)
{
    const char *v = getenv(var);
    if (v == NULL || *v == '\0') {
        fprintf(stderr, "environment variable %s is not set (run through meson test)\n", var);
        abort();
    }
    return v;
}
