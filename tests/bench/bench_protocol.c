/*
 * Report encoding, the one message on sonard's latency path: the reply to
 * an announcement is encoded after the last answer arrived.
 *
 * For reports of 10, 100 and 1000 results (3 of them `pass` with one
 * check, the rest `none`, like tests/bench/bench_gather.c) it measures,
 * best of 5 rounds, microseconds per report:
 *   - baseline: building the same document as a jansson tree and
 *     json_dumps(JSON_COMPACT) — what a plain jansson encoder costs, with
 *     no validation at all;
 *   - sonar_report_encode(): every field checked with the decoder's rules,
 *     then written;
 *   - sonar_report_decode() of the text, for scale;
 * and prints sonar_report_encode() as a ratio of the baseline.
 *
 * Run: meson test -C build --benchmark protocol --verbose
 *  or: build/tests/bench/bench_protocol
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sonar/sonar.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_protocol: %s: %s\n", what, sonar_last_error());
    exit(1);
}

/* The jansson tree of the same report, dumped: the baseline. */
static char *jansson_encode(const sonar_report_msg *r)
{
    json_t *results = json_array();
    for (size_t i = 0; i < r->n_results; i++) {
        const sonar_report_entry *e = &r->results[i];
        json_t *checks = json_array();
        for (size_t j = 0; j < e->n_checks; j++)
            json_array_append_new(
                checks, json_pack("{s:s, s:s, s:I, s:s}", "name", e->checks[j].name, "status",
                                  sonar_outcome_str(e->checks[j].status), "duration_ms",
                                  (json_int_t)e->checks[j].duration_ms, "message",
                                  e->checks[j].message));
        json_array_append_new(results, json_pack("{s:s, s:s, s:I, s:o}", "service", e->service,
                                                 "status", sonar_outcome_str(e->status),
                                                 "duration_ms", (json_int_t)e->duration_ms,
                                                 "checks", checks));
    }
    json_t *doc = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:{s:I, s:I, s:I, s:I, s:I}, s:o}", "type",
        "sonar.report.v1", "change_id", r->change_id, "service", r->service, "version",
        r->version, "address", r->address, "verdict", sonar_outcome_str(r->verdict),
        "started_at", r->started_at, "duration_ms", (json_int_t)r->duration_ms, "counts",
        "expected", (json_int_t)r->counts.expected, "pass", (json_int_t)r->counts.pass, "fail",
        (json_int_t)r->counts.fail, "none", (json_int_t)r->counts.none, "incomplete",
        (json_int_t)r->counts.incomplete, "results", results);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    return text;
}

int main(void)
{
    static const size_t sizes[] = {10, 100, 1000};
    printf("%-6s %12s %12s %12s %8s\n", "results", "jansson us", "encode us", "decode us",
           "ratio");
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        static sonar_check_result check = {.name = "ping", .status = SONAR_PASS,
                                           .duration_ms = 1, .message = ""};
        sonar_report_entry *entries = calloc(n, sizeof *entries);
        char(*names)[32] = calloc(n, sizeof *names);
        if (entries == NULL || names == NULL)
            die("out of memory");
        for (size_t i = 0; i < n; i++) {
            snprintf(names[i], sizeof names[i], "svc-%04zu", i);
            entries[i] = (sonar_report_entry){.service = names[i], .reason = "",
                                              .status = i < 3 ? SONAR_PASS : SONAR_NONE,
                                              .checks = i < 3 ? &check : NULL,
                                              .n_checks = i < 3 ? 1 : 0};
        }
        sonar_report_msg r = {
            .change_id = "c-0123456789abcdef", .service = "bench", .version = "2.0.0",
            .address = "http://10.0.0.5:8081", .verdict = SONAR_PASS,
            .started_at = "2026-12-06T01:02:03.456Z", .duration_ms = 4,
            .counts = {.expected = (int64_t)n, .pass = 3, .none = (int64_t)n - 3},
            .results = entries, .n_results = n,
        };
        /* The two encoders must agree before their speed means anything. */
        char *ours = NULL, *base = jansson_encode(&r);
        if (sonar_report_encode(&r, &ours) != SONAR_OK)
            die("sonar_report_encode");
        if (base == NULL || strcmp(ours, base) != 0)
            die("the encoders disagree");
        int iters = (int)(200000 / n);
        double best[3] = {1e18, 1e18, 1e18};
        for (int round = 0; round < 5; round++) {
            double t0 = now_us();
            for (int i = 0; i < iters; i++)
                free(jansson_encode(&r));
            double t1 = now_us();
            for (int i = 0; i < iters; i++) {
                char *text = NULL;
                if (sonar_report_encode(&r, &text) != SONAR_OK)
                    die("sonar_report_encode");
                free(text);
            }
            double t2 = now_us();
            for (int i = 0; i < iters; i++) {
                sonar_report_msg back = {0};
                if (sonar_report_decode(&back, ours, strlen(ours)) != SONAR_OK)
                    die("sonar_report_decode");
                sonar_report_finish(&back);
            }
            double t3 = now_us();
            double d[3] = {(t1 - t0) / iters, (t2 - t1) / iters, (t3 - t2) / iters};
            for (int k = 0; k < 3; k++)
                if (d[k] < best[k])
                    best[k] = d[k];
        }
        printf("%-6zu %12.2f %12.2f %12.2f %7.2fx\n", n, best[0], best[1], best[2],
               best[1] / best[0]);
        free(ours);
        free(base);
        free(entries);
        free(names);
    }
    return 0;
}
