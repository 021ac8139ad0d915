/*
 * statusd storage throughput: scrapes stored as one transaction each, health
 * results one per transaction, a sample query and batched pruning.
 *
 * Default: 100 scrapes of 2,000 samples (20 metrics x 100 label sets, 3
 * labels each) from 10 services, 5,000 check results; the first argument
 * overrides the number of scrapes. The file lives in a temp dir.
 *
 * Run: meson test -C build --benchmark statusstore --verbose
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "natsd.h"
#include "sonar/sonar.h"

enum { PER_SCRAPE = 2000, METRICS = 20, CHECKS = 5000 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void must(sonar_status st, const char *what)
{
    if (st != SONAR_OK) {
        fprintf(stderr, "%s: %s: %s\n", what, sonar_status_str(st), sonar_last_error());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    int scrapes = argc > 1 ? atoi(argv[1]) : 100;
    if (scrapes <= 0)
        scrapes = 100;
    char dir[256], path[300];
    if (!test_mkdtemp(dir, sizeof dir, "bench-statusstore")) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/status.db", dir);
    sonar_statusstore *s = NULL;
    must(sonar_statusstore_create(&s, path), "create");

    /* One scrape's samples; names and label values fixed, values vary. */
    static char names[METRICS][32];
    static char vals[PER_SCRAPE][3][16];
    static sonar_promtext_label labels[PER_SCRAPE][3];
    static sonar_statusstore_sample_in in[PER_SCRAPE];
    static char services[10][16];
    for (int i = 0; i < 10; i++)
        snprintf(services[i], sizeof services[i], "svc%d", i);
    for (int m = 0; m < METRICS; m++)
        snprintf(names[m], sizeof names[m], "app_metric_%d_total", m);
    for (int i = 0; i < PER_SCRAPE; i++) {
        snprintf(vals[i][0], sizeof vals[i][0], "host-%d", i % 7);
        snprintf(vals[i][1], sizeof vals[i][1], "/p/%d", (i / METRICS) % 50);
        snprintf(vals[i][2], sizeof vals[i][2], "%d", 200 + (i / METRICS) / 50);
        labels[i][0] = (sonar_promtext_label){"instance", vals[i][0]};
        labels[i][1] = (sonar_promtext_label){"path", vals[i][1]};
        labels[i][2] = (sonar_promtext_label){"code", vals[i][2]};
        in[i] = (sonar_statusstore_sample_in){.name = names[i % METRICS],
                                              .labels = labels[i], .n_labels = 3};
    }

    double t0 = now_s();
    for (int k = 0; k < scrapes; k++) {
        for (int i = 0; i < PER_SCRAPE; i++) {
            in[i].service = services[k % 10];
            in[i].value = k * 1.5 + i;
            in[i].at_ms = 1000000 + (int64_t)k * 10000;
        }
        must(sonar_statusstore_add_samples(s, in, PER_SCRAPE), "add_samples");
    }
    double t_samples = now_s() - t0;
    long n_samples = (long)scrapes * PER_SCRAPE;

    t0 = now_s();
    for (int i = 0; i < CHECKS; i++) {
        sonar_statusstore_check c = {.service = services[i % 10], .target = "http://h/health",
                                     .observed = SONAR_HEALTH_PASSING,
                                     .reported = SONAR_HEALTH_PASSING, .http_code = 200,
                                     .duration_ms = 3, .at_ms = 1000000 + i};
        must(sonar_statusstore_add_check(s, &c, NULL), "add_check");
    }
    double t_checks = now_s() - t0;

    t0 = now_s();
    sonar_statusstore_sample_query q = {.name = "app_metric_7_total", .service = "svc3",
                                        .limit = 1000};
    sonar_statusstore_samples r;
    must(sonar_statusstore_query_samples(s, &q, &r), "query");
    size_t got = r.count;
    sonar_statusstore_samples_finish(&r);
    double t_query = now_s() - t0;

    t0 = now_s();
    sonar_statusstore_pruned p;
    must(sonar_statusstore_prune(s, 1000000 + (int64_t)scrapes * 5000, 0, &p), "prune");
    double t_prune = now_s() - t0;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("statusstore (SQLite WAL, synchronous=NORMAL)\n");
    printf("  samples: %ld in %d scrape transactions: %.0f samples/s (%.1f ms per scrape of %d)\n",
           n_samples, scrapes, (double)n_samples / t_samples, t_samples * 1000 / scrapes,
           PER_SCRAPE);
    printf("  checks: %d, one transaction each: %.0f checks/s\n", CHECKS, CHECKS / t_checks);
    printf("  query name+service, newest %zu samples: %.1f ms\n", got, t_query * 1000);
    printf("  prune: %llu samples + %llu checks in %llu batches: %.0f rows/s\n",
           (unsigned long long)p.samples, (unsigned long long)p.checks,
           (unsigned long long)p.batches, (double)(p.samples + p.checks) / t_prune);
    printf("  peak RSS: %.1f MB\n", (double)ru.ru_maxrss / 1024.0);
    sonar_statusstore_destroy(s);
    test_rmtree(dir);
    return 0;
}
