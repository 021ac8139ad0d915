/*
 * Prometheus text parser throughput.
 *
 * Generates a large exposition in memory (default 50 MB; first argument
 * overrides, in MB) shaped like real scrapes: labelled counters and gauges,
 * histograms with 12 buckets, summaries, HELP/TYPE lines, some timestamps.
 * Measures, best of a few rounds, in MB/s:
 *   - baseline A: memchr line splitting of the same buffer;
 *   - baseline B: line splitting plus strtod over each sample's value token
 *     (the least any parser must do);
 *   - sonar_promtext_parse() of the whole buffer (families, labels, checks);
 * and prints the parser's throughput as a ratio of each baseline.
 *
 * Run: meson test -C build --benchmark promtext --verbose
 *  or: build/tests/bench/bench_promtext [MB]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "sonar/sonar.h"

typedef struct buf {
    char *s;
    size_t n, cap;
} buf;

static void add(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#include <stdarg.h>

static void add(buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int need = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if ((size_t)need < b->cap - b->n) {
            b->n += (size_t)need;
            return;
        }
        b->cap = b->cap * 2 + (size_t)need + 1;
        b->s = realloc(b->s, b->cap);
        if (b->s == NULL) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
}

static const char *methods[] = {"GET", "POST", "PUT", "DELETE"};
static const char *codes[] = {"200", "201", "404", "500"};
static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static void generate(buf *b, size_t target)
{
    unsigned seed = 12345;
    for (int fam = 0; b->n < target; fam++) {
        switch (fam % 4) {
        case 0:
            add(b, "# HELP app_requests_total_%d Requests handled, by method and code.\n"
                   "# TYPE app_requests_total_%d counter\n", fam, fam);
            for (int i = 0; i < 200; i++)
                add(b, "app_requests_total_%d{instance=\"host-%d:9100\",method=\"%s\","
                       "code=\"%s\",path=\"/api/v1/items/%d\"} %u\n",
                    fam, i % 17, methods[i % 4], codes[(i / 4) % 4], i,
                    (seed = seed * 1103515245 + 12345) % 1000000);
            break;
        case 1:
            add(b, "# HELP app_temperature_%d A gauge with timestamps.\n"
                   "# TYPE app_temperature_%d gauge\n", fam, fam);
            for (int i = 0; i < 200; i++)
                add(b, "app_temperature_%d{sensor=\"s%d\",room=\"r\\\"%d\\\"\"} %d.%03u "
                       "1700000000%03d\n",
                    fam, i, i % 9, i - 50, (seed = seed * 1103515245 + 12345) % 1000, i);
            break;
        case 2:
            add(b, "# HELP app_latency_seconds_%d Request latency.\n"
                   "# TYPE app_latency_seconds_%d histogram\n", fam, fam);
            for (int s = 0; s < 20; s++) {
                unsigned cum = 0;
                for (size_t k = 0; k < sizeof bounds / sizeof bounds[0]; k++) {
                    cum += (seed = seed * 1103515245 + 12345) % 100;
                    add(b, "app_latency_seconds_%d_bucket{handler=\"/h%d\",le=\"%g\"} %u\n",
                        fam, s, bounds[k], cum);
                }
                add(b, "app_latency_seconds_%d_bucket{handler=\"/h%d\",le=\"+Inf\"} %u\n"
                       "app_latency_seconds_%d_sum{handler=\"/h%d\"} %u.25\n"
                       "app_latency_seconds_%d_count{handler=\"/h%d\"} %u\n",
                    fam, s, cum, fam, s, cum / 3, fam, s, cum);
            }
            break;
        default:
            add(b, "# TYPE rpc_duration_seconds_%d summary\n", fam);
            for (int s = 0; s < 40; s++)
                add(b, "rpc_duration_seconds_%d{service=\"svc%d\",quantile=\"0.5\"} 0.0%u\n"
                       "rpc_duration_seconds_%d{service=\"svc%d\",quantile=\"0.99\"} NaN\n"
                       "rpc_duration_seconds_%d_sum{service=\"svc%d\"} 1.7560473e+07\n"
                       "rpc_duration_seconds_%d_count{service=\"svc%d\"} 2693\n",
                    fam, s, (seed = seed * 1103515245 + 12345) % 1000, fam, s, fam, s, fam, s);
            break;
        }
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static volatile size_t sink;

static void baseline_split(const char *s, size_t n)
{
    size_t lines = 0;
    for (const char *p = s, *end = s + n; p < end; lines++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        p = nl != NULL ? nl + 1 : end;
    }
    sink = lines;
}

static void baseline_split_strtod(const char *s, size_t n)
{
    double total = 0;
    char tok[64];
    for (const char *p = s, *end = s + n; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl != NULL ? nl : end;
        if (*p != '#') {
            /* the value follows the last '}' or the name */
            const char *v = memchr(p, '}', (size_t)(le - p));
            v = v != NULL ? v + 1 : p;
            while (v < le && *v != ' ')
                v++;
            while (v < le && *v == ' ')
                v++;
            size_t k = 0;
            while (v + k < le && v[k] != ' ' && k < sizeof tok - 1) {
                tok[k] = v[k];
                k++;
            }
            tok[k] = '\0';
            total += strtod(tok, NULL);
        }
        p = nl != NULL ? nl + 1 : end;
    }
    sink = (size_t)total;
}

static size_t parsed_samples;

static void run_parser(const char *s, size_t n)
{
    sonar_promtext *r = NULL;
    sonar_promtext_error err;
    sonar_status st = sonar_promtext_parse(&r, s, n, &err);
    if (st != SONAR_OK) {
        fprintf(stderr, "parse failed: line %zu: %s\n", err.line, err.reason);
        exit(1);
    }
    parsed_samples = sonar_promtext_sample_count(r);
    sonar_promtext_destroy(r);
}

/* Best MB/s over `rounds` runs of fn. */
static double measure(void (*fn)(const char *, size_t), const char *s, size_t n, int rounds)
{
    double best = 0;
    for (int i = 0; i < rounds; i++) {
        double t0 = now_s();
        fn(s, n);
        double dt = now_s() - t0;
        double mbs = (double)n / 1e6 / dt;
        if (mbs > best)
            best = mbs;
    }
    return best;
}

static long max_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

int main(int argc, char **argv)
{
    size_t mb = argc > 1 ? strtoul(argv[1], NULL, 10) : 50;
    if (mb == 0)
        mb = 50;
    buf b = {.cap = 1 << 20};
    b.s = malloc(b.cap);
    generate(&b, mb * 1000 * 1000);

    double split = measure(baseline_split, b.s, b.n, 5);
    double strtod_mbs = measure(baseline_split_strtod, b.s, b.n, 3);
    long rss_before = max_rss_kb();
    double parse = measure(run_parser, b.s, b.n, 3);
    long rss_after = max_rss_kb();

    printf("Prometheus text parser, %.1f MB, %zu samples\n", (double)b.n / 1e6,
           parsed_samples);
    printf("  baseline A, memchr line split:        %8.1f MB/s\n", split);
    printf("  baseline B, line split + strtod value: %8.1f MB/s\n", strtod_mbs);
    printf("  sonar_promtext_parse:                  %8.1f MB/s\n", parse);
    printf("  parser / baseline A = %.3f, parser / baseline B = %.3f\n", parse / split,
           parse / strtod_mbs);
    printf("  peak RSS growth while parsing (the result): %.1f MB\n",
           (double)(rss_after - rss_before) / 1024.0);
    free(b.s);
    return 0;
}
