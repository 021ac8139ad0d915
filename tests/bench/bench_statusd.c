/*
 * Benchmark: statusd polling N HTTP targets (default 1000) on an interval,
 * its CPU (utime+stime from /proc/<pid>/stat) and memory (VmRSS, VmHWM),
 * against a baseline measured in the same run: the same kind of plain
 * libcurl GETs (a new easy handle per request, as a health check does)
 * made by this process, CPU of the requesting thread only.
 *
 *   meson test -C build --benchmark statusd -v      (or run the binary:
 *   SONAR_STATUSD_BIN=build/services/statusd/statusd \
 *     build/tests/bench/bench_statusd [targets] [interval_ms] [seconds])
 *
 * One local libmicrohttpd server answers every target: the targets differ
 * by query string (/health?t=<i>), so each is its own target and its own
 * connection. The interval is scaled down (default 1 s) to measure more
 * checks per second; figures are also given per check and converted to
 * "1000 targets every 10 s".
 */
#include <curl/curl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "httpd.h"
#include "natsd.h"
#include "proc.h"

static void die(const char *what)
{
    fprintf(stderr, "bench_statusd: %s\n", what);
    exit(1);
}

/* Waits \p ms (a benchmark's measuring window, not synchronisation). */
static void wait_ms(int64_t ms)
{
    int64_t end = test_now_ms() + ms;
    for (int64_t now = test_now_ms(); now < end; now = test_now_ms())
        poll(NULL, 0, (int)(end - now));
}

/* utime + stime of \p pid, in seconds. */
static double proc_cpu(pid_t pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command may contain spaces */
    if (p == NULL)
        return -1;
    unsigned long long utime = 0, stime = 0;
    /* fields after ")": state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
               &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* A "VmRSS:"-style line of /proc/<pid>/status, in MiB. */
static double proc_mem(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    double mib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0)
            mib = strtod(line + strlen(key), NULL) / 1024.0;
    if (f)
        fclose(f);
    return mib;
}

static size_t sink(char *data, size_t size, size_t n, void *closure)
{
    (void)data;
    (void)closure;
    return size * n;
}

/* statusd_checks_total{status="passing"} from its /metrics, or -1. */
static double checks_done(const char *metrics_url)
{
    CURL *c = curl_easy_init();
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    curl_easy_setopt(c, CURLOPT_URL, metrics_url);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, mem);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    fclose(mem);
    double v = -1;
    const char *key = "statusd_checks_total{status=\"passing\"} ";
    char *p = rc == CURLE_OK && buf ? strstr(buf, key) : NULL;
    if (p != NULL)
        v = strtod(p + strlen(key), NULL);
    free(buf);
    return v;
}

static double thread_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    int targets = argc > 1 ? atoi(argv[1]) : 1000;
    int interval_ms = argc > 2 ? atoi(argv[2]) : 1000;
    int seconds = argc > 3 ? atoi(argv[3]) : 20;
    if (targets < 1 || interval_ms < 50 || seconds < 1)
        die("usage: bench_statusd [targets] [interval_ms] [seconds]");
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
    const char *bin = test_bin("SONAR_STATUSD_BIN");

    char dir[256];
    test_natsd nd;
    if (!test_mkdtemp(dir, sizeof dir, "bench-statusd") || !test_natsd_start(&nd))
        die("cannot start nats-server");
    test_httpd *web = test_httpd_start();
    if (web == NULL)
        die("cannot start the HTTP server");
    test_httpd_route(web, "GET", "/health", 200, "{\"status\":\"pass\"}", NULL);

    char cfg[320], db[320], listen[64], metrics_url[96], interval[32];
    snprintf(cfg, sizeof cfg, "%s/targets.json", dir);
    snprintf(db, sizeof db, "%s/statusd.db", dir);
    int port = test_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(metrics_url, sizeof metrics_url, "http://%s/metrics", listen);
    snprintf(interval, sizeof interval, "%dms", interval_ms);
    FILE *f = fopen(cfg, "w");
    if (f == NULL)
        die("cannot write the config");
    fputs("{\"targets\":[", f);
    for (int i = 0; i < targets; i++)
        fprintf(f, "%s{\"name\":\"t%d\",\"service\":\"bench%d\",\"health\":\"%s/health?t=%d\"}",
                i ? "," : "", i, i % 100, test_httpd_url(web), i);
    fputs("]}", f);
    fclose(f);

    const char *args[] = {bin, "--server", nd.url, "--db", db, "--config", cfg, "--interval",
                          interval, "--timeout", "5s", "--listen", listen, NULL};
    test_proc p;
    if (!test_proc_start(&p, dir, args, NULL))
        die("cannot start statusd");
    /* warm-up: every target checked once */
    if (!TEST_WAIT_UNTIL(checks_done(metrics_url) >= targets, 60000))
        die("statusd did not check every target within 60 s");
    wait_ms(interval_ms);

    double cpu0 = proc_cpu(p.pid), checks0 = checks_done(metrics_url);
    int64_t t0 = test_now_ms();
    double rss_max = 0;
    for (int s = 0; s < seconds; s++) {
        wait_ms(1000);
        double rss = proc_mem(p.pid, "VmRSS:");
        if (rss > rss_max)
            rss_max = rss;
    }
    double cpu1 = proc_cpu(p.pid), checks1 = checks_done(metrics_url);
    double wall = (double)(test_now_ms() - t0) / 1000.0;
    double hwm = proc_mem(p.pid, "VmHWM:");
    test_proc_signal(&p, SIGTERM);
    test_proc_wait(&p, 20000);
    test_proc_kill(&p);

    double checks = checks1 - checks0, cpu = cpu1 - cpu0;
    double expected = (double)targets * wall * 1000.0 / interval_ms;

    /* baseline: the same number of GETs (up to 20000), plain libcurl, this thread */
    int n_base = checks > 20000 ? 20000 : (int)checks;
    double b0 = thread_cpu();
    int64_t w0 = test_now_ms();
    char url[256];
    for (int i = 0; i < n_base; i++) {
        snprintf(url, sizeof url, "%s/health?t=%d", test_httpd_url(web), i % targets);
        CURL *c = curl_easy_init();
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        if (curl_easy_perform(c) != CURLE_OK)
            die("baseline request failed");
        curl_easy_cleanup(c);
    }
    double base_cpu = thread_cpu() - b0;
    double base_wall = (double)(test_now_ms() - w0) / 1000.0;

    double per_check_us = checks > 0 ? cpu / checks * 1e6 : 0;
    double base_us = n_base > 0 ? base_cpu / n_base * 1e6 : 0;
    printf("statusd: %d HTTP targets every %d ms, measured %.1f s\n", targets, interval_ms, wall);
    printf("  checks done          %.0f of %.0f scheduled (%.1f%%)\n", checks, expected,
           expected > 0 ? 100.0 * checks / expected : 0);
    printf("  statusd CPU          %.2f s = %.1f%% of one core; %.1f us per check\n", cpu,
           100.0 * cpu / wall, per_check_us);
    printf("  statusd RSS          max %.1f MiB during the run, peak (VmHWM) %.1f MiB\n", rss_max,
           hwm);
    printf("  baseline (curl)      %d GETs: %.2f s CPU, %.1f us per request (%.1f s wall)\n",
           n_base, base_cpu, base_us, base_wall);
    printf("  ratio                statusd costs %.2fx a bare curl GET per check\n",
           base_us > 0 ? per_check_us / base_us : 0);
    printf("  at %d targets every 10 s: statusd %.2f%% of one core, bare curl %.2f%%\n", targets,
           per_check_us * targets / 10.0 / 1e4, base_us * targets / 10.0 / 1e4);

    test_httpd_stop(web);
    test_natsd_destroy(&nd);
    test_rmtree(dir);
    curl_global_cleanup();
    return 0;
}
