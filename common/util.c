/* Names, clocks, ids and durations. */
#include "sonar/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/resource.h>

#include "internal.h"

bool sonar_name_valid(const char *name)
{
    if (name == NULL)
        return false;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        unsigned char c = (unsigned char)*p;
        if (n >= SONAR_NAME_MAX)
            return false;
        if (!(isalnum(c) && c < 128) && c != '_' && c != '-')
            return false;
    }
    return n > 0;
}

sonar_status sonar_name_check(const char *what, const char *name)
{
    if (name == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "%s is missing", what);
    if (!sonar_name_valid(name)) {
        /* Quote at most 80 bytes, with anything but printable ASCII shown as
         * '?', so the text stays valid UTF-8 inside a sonar.error.v1 reply. */
        char shown[81];
        size_t len = strlen(name), n = len > 80 ? 80 : len;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)name[i];
            shown[i] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
        }
        shown[n] = '\0';
        return sonar__fail(SONAR_ERR_INVALID,
                           "%s \"%s%s\" is invalid: it must match ^[A-Za-z0-9_-]{1,64}$", what,
                           shown, len > 80 ? "..." : "");
    }
    return SONAR_OK;
}

int64_t sonar_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t sonar_now_ms(void)
{
    return sonar_now_ns() / 1000000;
}

void sonar_cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

void sonar_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t deadline_ms)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_ms / 1000),
                          .tv_nsec = (long)(deadline_ms % 1000) * 1000000L};
    pthread_cond_timedwait(cond, mu, &ts);
}

int64_t sonar_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sonar_format_rfc3339(int64_t wall_ms, char *buf, size_t buflen)
{
    time_t secs = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, buflen, "%s.%03dZ", base, (int)(wall_ms % 1000));
}

void sonar_random_id(char *buf)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char raw[22];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* getrandom cannot fail on Linux >= 3.17 with flags 0 except EINTR. */
            SONAR_REQUIRE(!"getrandom failed");
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof raw; i++)
        buf[i] = alphabet[raw[i] % 62];
    buf[sizeof raw] = '\0';
}

sonar_status sonar_parse_duration_ms(const char *text, int64_t *out_ms)
{
    if (text == NULL || *text == '\0')
        return sonar__fail(SONAR_ERR_INVALID, "empty duration");
    errno = 0;
    char *end = NULL;
    double v = strtod(text, &end);
    if (end == text || errno != 0 || v < 0 || v != v)
        return sonar__fail(SONAR_ERR_INVALID,
                           "invalid duration \"%s\": expected e.g. 500ms, 10s, 2m, 1h, 7d", text);
    double mult;
    if (*end == '\0' || strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0)
        mult = 86400000;
    else
        return sonar__fail(SONAR_ERR_INVALID,
                           "invalid duration \"%s\": unit must be ms, s, m, h or d", text);
    double ms = v * mult;
    if (ms > 9.0e15)
        return sonar__fail(SONAR_ERR_INVALID, "duration \"%s\" is too large", text);
    *out_ms = (int64_t)ms;
    return SONAR_OK;
}

char *sonar__strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void stop_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
}

void sonar_stop_signals_block(void)
{
    sigset_t set;
    stop_set(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int sonar_stop_signal_wait(void)
{
    sigset_t set;
    stop_set(&set);
    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    return sig;
}

sonar_status sonar_thread_lower_priority(int increment)
{
    if (increment < 0 || increment > 39)
        return sonar__fail(SONAR_ERR_INVALID, "nice increment %d is not in 0..39", increment);
    /* Linux: PRIO_PROCESS with a thread id sets that thread's nice only. */
    id_t self = (id_t)gettid();
    errno = 0;
    int now = getpriority(PRIO_PROCESS, self);
    if (now == -1 && errno != 0)
        return sonar__fail(SONAR_ERR_IO, "getpriority: %s", strerror(errno));
    int want = now + increment > 19 ? 19 : now + increment;
    if (setpriority(PRIO_PROCESS, self, want) != 0)
        return sonar__fail(SONAR_ERR_IO, "setpriority %d: %s", want, strerror(errno));
    return SONAR_OK;
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_name[64] = "sonar";

void sonar_log_set_name(const char *who)
{
    pthread_mutex_lock(&log_lock);
    snprintf(log_name, sizeof log_name, "%s", who ? who : "sonar");
    pthread_mutex_unlock(&log_lock);
}

void sonar_log(sonar_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level == SONAR_LOG_DEBUG) {
        const char *env = getenv("SONAR_LOG");
        if (env == NULL || strcmp(env, "debug") != 0)
            return;
    }
    char ts[40];
    sonar_format_rfc3339(sonar_wall_ms(), ts, sizeof ts);
    /* One line, one write(): lines of several threads or processes sharing
     * the file never interleave (PIPE_BUF bytes at most), and a line costs
     * one system call. Longer lines are cut, ending in "...". */
    char line[4096];
    const size_t room = sizeof line - 1; /* the newline always fits */
    pthread_mutex_lock(&log_lock);
    int n = snprintf(line, room, "%s %s %s: ", ts, names[level], log_name);
    pthread_mutex_unlock(&log_lock);
    size_t len = n < 0 ? 0 : (size_t)n >= room ? room - 1 : (size_t)n;
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(line + len, room - len, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n >= room - len) {
        len = room - 1;
        memcpy(line + len - 3, "...", 3);
    } else if (n > 0) {
        len += (size_t)n;
    }
    line[len++] = '\n';
    for (size_t off = 0; off < len;) {
        ssize_t w = write(STDERR_FILENO, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}
