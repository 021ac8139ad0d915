/*
 * sonar test --checks FILE --target DEPENDENCY=ADDRESS ... [--tap] [--junit FILE]
 *
 * Runs a check table's cases locally, without sonard: the integration-test
 * utility for CI. Exit codes: 0 all cases passed, 1 some failed, 2 invalid
 * table or flags.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <nats/nats.h>

#include "commands.h"

#include "sonar/sonar.h"

#define DEFAULT_CASE_TIMEOUT_MS 30000
#define MAX_TARGETS 64

typedef struct target {
    char *dependency;
    char *address;
    char *prefix; /* NATS subject prefix, or NULL: the dependency name */
} target;

typedef struct outcome {
    const sonar_checkcase *c;
    bool ran;
    sonar_checkrun_result res;
} outcome;

static void usage(FILE *to)
{
    fprintf(to,
            "usage: sonar test --checks FILE --target DEPENDENCY=ADDRESS [--target ...]\n"
            "                  [--tap] [--junit FILE] [--timeout DURATION]\n"
            "                  [--prefix DEPENDENCY=SUBJECT_PREFIX] [--server URL]\n"
            "\n"
            "Runs the check table's cases for each targeted dependency against ADDRESS\n"
            "(an HTTP base URL), without a bus. Cases of dependencies without a target\n"
            "are skipped. NATS steps use --server (or NATS_URL) and the subject prefix\n"
            "(default: the dependency's name).\n"
            "\n"
            "  --checks FILE      the check table (JSON; see docs/checks.md)\n"
            "  --target DEP=ADDR  where the candidate of DEP serves (repeatable)\n"
            "  --tap              TAP version 13 on stdout instead of human output\n"
            "  --junit FILE       also write JUnit XML to FILE\n"
            "  --timeout DURATION limit per case (default 30s; a case's timeout_ms may be less)\n"
            "  --prefix DEP=P     NATS subject prefix for DEP's steps\n"
            "  --server URL       NATS server for NATS steps (default NATS_URL or "
            SONAR_DEFAULT_NATS_URL ")\n"
            "\n"
            "Exit status: 0 all cases passed, 1 a case failed, 2 invalid table or flags.\n");
}

/* Parses "DEP=VALUE" into list; false (message printed) when malformed. */
static bool parse_pair(const char *flag, const char *arg, target *list, size_t *n, bool prefix)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg || eq[1] == '\0') {
        fprintf(stderr, "sonar test: %s \"%s\": expected DEPENDENCY=%s\n", flag, arg,
                prefix ? "PREFIX" : "ADDRESS");
        return false;
    }
    char dep[SONAR_NAME_MAX + 2];
    snprintf(dep, sizeof dep, "%.*s", (int)(eq - arg), arg);
    if ((size_t)(eq - arg) > SONAR_NAME_MAX || !sonar_name_valid(dep)) {
        fprintf(stderr, "sonar test: %s \"%s\": dependency name must match ^[A-Za-z0-9_-]{1,64}$\n",
                flag, arg);
        return false;
    }
    target *t = NULL;
    for (size_t i = 0; i < *n; i++)
        if (strcmp(list[i].dependency, dep) == 0)
            t = &list[i];
    if (t == NULL) {
        if (*n == MAX_TARGETS) {
            fprintf(stderr, "sonar test: more than %d dependencies\n", MAX_TARGETS);
            return false;
        }
        t = &list[(*n)++];
        t->dependency = strdup(dep);
    }
    char **slot = prefix ? &t->prefix : &t->address;
    if (*slot != NULL) {
        fprintf(stderr, "sonar test: %s given twice for %s\n", flag, dep);
        return false;
    }
    *slot = strdup(eq + 1);
    return true;
}

/* Replaces control characters so a text stays on one line. */
static void one_line(const char *in, char *out, size_t len)
{
    size_t i = 0;
    for (; in[i] && i + 1 < len; i++)
        out[i] = (unsigned char)in[i] < 0x20 || in[i] == 0x7f ? ' ' : in[i];
    out[i] = '\0';
}

/* Writes s as XML character data / attribute text: escapes markup and
 * replaces characters XML 1.0 forbids. Inputs are valid UTF-8 already (case
 * names come through jansson; run messages are made valid by the runner). */
static void xml_text(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        case '\t': fputs("&#9;", f); break;
        case '\n': fputs("&#10;", f); break;
        case '\r': fputs("&#13;", f); break;
        default: fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f); break;
        }
    }
}

static bool write_junit(FILE *f, const sonar_checktable *table, const outcome *runs, size_t n,
                        int64_t total_ms)
{
    size_t failures = 0, skipped = 0;
    for (size_t i = 0; i < n; i++) {
        failures += runs[i].ran && !runs[i].res.passed;
        skipped += !runs[i].ran;
    }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<testsuites name=\"sonar test ");
    xml_text(f, sonar_checktable_service(table));
    fprintf(f, "\" tests=\"%zu\" failures=\"%zu\" errors=\"0\" skipped=\"%zu\" time=\"%.3f\">\n",
            n, failures, skipped, (double)total_ms / 1000.0);
    for (size_t d = 0; d < sonar_checktable_dependency_count(table); d++) {
        const char *dep = sonar_checktable_dependency(table, d);
        size_t tests = 0, fails = 0, skips = 0;
        int64_t ms = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(sonar_checkcase_dependency(runs[i].c), dep) != 0)
                continue;
            tests++;
            fails += runs[i].ran && !runs[i].res.passed;
            skips += !runs[i].ran;
            ms += runs[i].ran ? runs[i].res.duration_ms : 0;
        }
        fprintf(f, "  <testsuite name=\"");
        xml_text(f, dep);
        fprintf(f, "\" tests=\"%zu\" failures=\"%zu\" errors=\"0\" skipped=\"%zu\" time=\"%.3f\">\n",
                tests, fails, skips, (double)ms / 1000.0);
        for (size_t i = 0; i < n; i++) {
            const outcome *o = &runs[i];
            if (strcmp(sonar_checkcase_dependency(o->c), dep) != 0)
                continue;
            fprintf(f, "    <testcase classname=\"");
            xml_text(f, sonar_checktable_service(table));
            fputc('.', f);
            xml_text(f, dep);
            fprintf(f, "\" name=\"");
            xml_text(f, sonar_checkcase_name(o->c));
            fprintf(f, "\" time=\"%.3f\"", o->ran ? (double)o->res.duration_ms / 1000.0 : 0.0);
            if (!o->ran) {
                fprintf(f, ">\n      <skipped message=\"no --target for ");
                xml_text(f, dep);
                fprintf(f, "\"/>\n    </testcase>\n");
            } else if (!o->res.passed) {
                fprintf(f, ">\n      <failure message=\"");
                xml_text(f, o->res.message);
                fprintf(f, "\" type=\"check\">");
                xml_text(f, o->res.message);
                fprintf(f, "</failure>\n    </testcase>\n");
            } else {
                fprintf(f, "/>\n");
            }
        }
        fprintf(f, "  </testsuite>\n");
    }
    fprintf(f, "</testsuites>\n");
    return fflush(f) == 0 && !ferror(f);
}

/* TAP descriptions: one line, '#' escaped (it starts a directive). */
static void tap_description(const outcome *o, char *out, size_t len)
{
    char raw[600], line[600];
    snprintf(raw, sizeof raw, "%s / %s", sonar_checkcase_dependency(o->c),
             sonar_checkcase_name(o->c));
    one_line(raw, line, sizeof line);
    size_t j = 0;
    for (size_t i = 0; line[i] && j + 2 < len; i++) {
        if (line[i] == '#' || line[i] == '\\')
            out[j++] = '\\';
        out[j++] = line[i];
    }
    out[j] = '\0';
}

static void print_tap(const outcome *runs, size_t n)
{
    printf("TAP version 13\n1..%zu\n", n);
    for (size_t i = 0; i < n; i++) {
        const outcome *o = &runs[i];
        char desc[1300];
        tap_description(o, desc, sizeof desc);
        if (!o->ran) {
            printf("ok %zu - %s # SKIP no --target for %s\n", i + 1, desc,
                   sonar_checkcase_dependency(o->c));
            continue;
        }
        printf("%s %zu - %s\n", o->res.passed ? "ok" : "not ok", i + 1, desc);
        if (!o->res.passed) {
            /* A YAML block; the message as a JSON string is valid YAML. */
            json_t *msg = json_string(o->res.message);
            char *quoted = msg ? json_dumps(msg, JSON_ENCODE_ANY) : NULL;
            printf("  ---\n  message: %s\n  duration_ms: %" PRId64 "\n  ...\n",
                   quoted ? quoted : "\"(message not valid UTF-8)\"", o->res.duration_ms);
            free(quoted);
            json_decref(msg);
        }
    }
}

static void print_human(const outcome *runs, size_t n, bool color)
{
    const char *green = color ? "\033[32m" : "", *red = color ? "\033[31m" : "",
               *dim = color ? "\033[2m" : "", *off = color ? "\033[0m" : "";
    size_t passed = 0, failed = 0, skipped = 0;
    for (size_t i = 0; i < n; i++) {
        const outcome *o = &runs[i];
        char name[600];
        one_line(sonar_checkcase_name(o->c), name, sizeof name);
        if (!o->ran) {
            skipped++;
            printf("%sSKIP  %s / %s (no --target for %s)%s\n", dim,
                   sonar_checkcase_dependency(o->c), name, sonar_checkcase_dependency(o->c), off);
        } else if (o->res.passed) {
            passed++;
            printf("%sPASS%s  %s / %s %s(%" PRId64 " ms)%s\n", green, off,
                   sonar_checkcase_dependency(o->c), name, dim, o->res.duration_ms, off);
        } else {
            failed++;
            printf("%sFAIL%s  %s / %s %s(%" PRId64 " ms)%s\n      %s\n", red, off,
                   sonar_checkcase_dependency(o->c), name, dim, o->res.duration_ms, off,
                   o->res.message);
        }
    }
    printf("\n%zu passed, %zu failed", passed, failed);
    if (skipped)
        printf(", %zu skipped", skipped);
    printf("\n");
}

static natsConnection *connect_nats(const char *server)
{
    if (server == NULL)
        server = getenv("NATS_URL");
    if (server == NULL || server[0] == '\0')
        server = SONAR_DEFAULT_NATS_URL;
    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, server);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(opts, true);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, opts);
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        fprintf(stderr, "sonar test: cannot connect to NATS at %s (%s); NATS steps will fail\n",
                server, natsStatus_GetText(s));
        return NULL;
    }
    return nc;
}

int sonar_cmd_test(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"checks", required_argument, NULL, 'c'}, {"target", required_argument, NULL, 't'},
        {"tap", no_argument, NULL, 'T'},          {"junit", required_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 'o'}, {"prefix", required_argument, NULL, 'p'},
        {"server", required_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *checks = NULL, *junit = NULL, *server = NULL;
    bool tap = false, bad = false;
    int64_t timeout_ms = DEFAULT_CASE_TIMEOUT_MS;
    target targets[MAX_TARGETS];
    size_t n_targets = 0;
    memset(targets, 0, sizeof targets);
    int rc = 2;
    sonar_checktable *table = NULL;
    outcome *runs = NULL;
    FILE *junit_file = NULL;
    natsConnection *nc = NULL;

    optind = 1;
    opterr = 0;
    int opt;
    while (!bad && (opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': checks = optarg; break;
        case 't': bad = !parse_pair("--target", optarg, targets, &n_targets, false); break;
        case 'p': bad = !parse_pair("--prefix", optarg, targets, &n_targets, true); break;
        case 'T': tap = true; break;
        case 'j': junit = optarg; break;
        case 's': server = optarg; break;
        case 'o':
            if (sonar_parse_duration_ms(optarg, &timeout_ms) != SONAR_OK || timeout_ms <= 0) {
                fprintf(stderr, "sonar test: --timeout \"%s\": expected a duration like 10s or "
                                "500ms\n", optarg);
                bad = true;
            }
            break;
        case 'h':
            usage(stdout);
            rc = 0;
            goto done;
        case ':':
            fprintf(stderr, "sonar test: %s needs a value\n", argv[optind - 1]);
            bad = true;
            break;
        default:
            fprintf(stderr, "sonar test: unknown option \"%s\"\n", argv[optind - 1]);
            bad = true;
            break;
        }
    }
    if (!bad && optind < argc) {
        fprintf(stderr, "sonar test: unexpected argument \"%s\"\n", argv[optind]);
        bad = true;
    }
    if (!bad && checks == NULL) {
        fprintf(stderr, "sonar test: --checks FILE is required\n");
        bad = true;
    }
    size_t n_addressed = 0;
    for (size_t i = 0; i < n_targets; i++)
        n_addressed += targets[i].address != NULL;
    if (!bad && n_addressed == 0) {
        fprintf(stderr, "sonar test: give at least one --target DEPENDENCY=ADDRESS\n");
        bad = true;
    }
    if (bad) {
        usage(stderr);
        goto done;
    }
    if (sonar_checktable_load(&table, checks) != SONAR_OK) {
        fprintf(stderr, "sonar test: invalid check table: %s\n", sonar_last_error());
        goto done;
    }
    for (size_t i = 0; i < n_targets; i++) {
        bool known = false;
        for (size_t d = 0; d < sonar_checktable_dependency_count(table) && !known; d++)
            known = strcmp(sonar_checktable_dependency(table, d), targets[i].dependency) == 0;
        if (!known) {
            fprintf(stderr, "sonar test: %s has no checks on %s (it checks:", checks,
                    targets[i].dependency);
            for (size_t d = 0; d < sonar_checktable_dependency_count(table); d++)
                fprintf(stderr, " %s", sonar_checktable_dependency(table, d));
            fprintf(stderr, ")\n");
            goto done;
        }
    }
    if (junit && (junit_file = fopen(junit, "w")) == NULL) {
        fprintf(stderr, "sonar test: --junit %s: cannot write: %s\n", junit, strerror(errno));
        goto done;
    }
    if (sonar_checktable_uses_nats(table))
        nc = connect_nats(server);

    size_t n = sonar_checktable_case_count(table);
    runs = calloc(n, sizeof *runs);
    if (runs == NULL) {
        fprintf(stderr, "sonar test: out of memory\n");
        rc = 3;
        goto done;
    }
    int64_t start = sonar_now_ms();
    bool any_failed = false;
    for (size_t i = 0; i < n; i++) {
        outcome *o = &runs[i];
        o->c = sonar_checktable_case(table, i);
        const target *t = NULL;
        for (size_t k = 0; k < n_targets; k++)
            if (strcmp(targets[k].dependency, sonar_checkcase_dependency(o->c)) == 0)
                t = &targets[k];
        if (t == NULL || t->address == NULL)
            continue;
        sonar_checkrun_target where = {
            .address = t->address,
            .subject_prefix = t->prefix,
            .nc = nc,
            .deadline_ms = sonar_now_ms() + timeout_ms,
        };
        o->ran = sonar_checkrun_case(o->c, &where, &o->res) == SONAR_OK;
        if (!o->ran) {
            snprintf(o->res.message, sizeof o->res.message, "%s", sonar_last_error());
            o->ran = true;
            o->res.passed = false;
        }
        any_failed = any_failed || !o->res.passed;
    }
    int64_t total = sonar_now_ms() - start;
    if (tap)
        print_tap(runs, n);
    else
        print_human(runs, n, isatty(STDOUT_FILENO) && getenv("NO_COLOR") == NULL);
    rc = any_failed ? 1 : 0;
    if (junit_file) {
        bool ok = write_junit(junit_file, table, runs, n, total);
        ok = fclose(junit_file) == 0 && ok;
        junit_file = NULL;
        if (!ok) {
            fprintf(stderr, "sonar test: --junit %s: write failed\n", junit);
            rc = 3;
        }
    }

done:
    if (junit_file)
        fclose(junit_file);
    free(runs);
    if (nc)
        natsConnection_Destroy(nc);
    sonar_checktable_destroy(table);
    for (size_t i = 0; i < n_targets; i++) {
        free(targets[i].dependency);
        free(targets[i].address);
        free(targets[i].prefix);
    }
    return rc;
}
