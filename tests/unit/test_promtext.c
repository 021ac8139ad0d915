/*
 * Prometheus text parser: data-driven valid/invalid cases from
 * tests/data/promtext, API behaviour, and a robustness sweep feeding
 * truncated and mutated versions of the valid files.
 *
 * Expected-output format of valid/<case>.expected (one line each):
 *   # <family> <type> <help as a quoted, escaped string | ->
 *   <family>|<type>|<sample name>{<label>="<escaped value>",...}|<value>|<timestamp | ->
 * Values print as the shortest text that reads back exactly (NaN, +Inf, -Inf).
 *
 * invalid/<case>.expect holds "line: N", "reason: <substring>" and
 * optionally "status: limit" (default: protocol).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonar/sonar.h"

static const char *data_dir(void)
{
    const char *d = getenv("SONAR_TEST_DATA");
    cr_assert(d != NULL, "SONAR_TEST_DATA is not set");
    return d;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* A growable string. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_add(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)need + 1 > b->cap) {
        b->cap = (b->n + (size_t)need + 1) * 2;
        b->s = realloc(b->s, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)need;
}

static void sb_escaped(sbuf *b, const char *s)
{
    sb_add(b, "\"");
    for (; *s; s++) {
        if (*s == '\\')
            sb_add(b, "\\\\");
        else if (*s == '"')
            sb_add(b, "\\\"");
        else if (*s == '\n')
            sb_add(b, "\\n");
        else
            sb_add(b, "%c", *s);
    }
    sb_add(b, "\"");
}

static void sb_value(sbuf *b, double v)
{
    if (isnan(v)) {
        sb_add(b, "NaN");
    } else if (isinf(v)) {
        sb_add(b, v > 0 ? "+Inf" : "-Inf");
    } else {
        char buf[64];
        snprintf(buf, sizeof buf, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, sizeof buf, "%.17g", v);
        sb_add(b, "%s", buf);
    }
}

/* Canonical dump of a parse result (format in the file comment). */
static char *dump(const sonar_promtext *r)
{
    sbuf b = {0};
    sb_add(&b, "%s", "");
    for (size_t i = 0; i < sonar_promtext_family_count(r); i++) {
        const sonar_promtext_family *f = sonar_promtext_family_at(r, i);
        const char *type = sonar_promtext_type_str(f->type);
        sb_add(&b, "# %s %s ", f->name, type);
        if (f->help != NULL)
            sb_escaped(&b, f->help);
        else
            sb_add(&b, "-");
        sb_add(&b, "\n");
        for (size_t j = 0; j < f->n_samples; j++) {
            const sonar_promtext_sample *s = &f->samples[j];
            sb_add(&b, "%s|%s|%s{", f->name, type, s->name);
            for (size_t k = 0; k < s->n_labels; k++) {
                sb_add(&b, "%s%s=", k ? "," : "", s->labels[k].name);
                sb_escaped(&b, s->labels[k].value);
            }
            sb_add(&b, "}|");
            sb_value(&b, s->value);
            if (s->has_timestamp)
                sb_add(&b, "|%lld\n", (long long)s->timestamp_ms);
            else
                sb_add(&b, "|-\n");
        }
    }
    return b.s;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* path with ".prom" replaced by suffix (new). */
static char *sibling(const char *path, const char *suffix)
{
    size_t base = strlen(path) - strlen(".prom");
    char *p = malloc(base + strlen(suffix) + 1);
    memcpy(p, path, base);
    strcpy(p + base, suffix);
    return p;
}

/* A case: the .prom text and its sibling file with the expectation. */
typedef struct test_case {
    char *text;
    size_t len;
    char *side_path;
    char *side;
} test_case;

static void case_load(test_case *c, const char *path, const char *side_suffix)
{
    size_t side_len;
    c->text = read_all(path, &c->len);
    c->side_path = sibling(path, side_suffix);
    c->side = read_all(c->side_path, &side_len);
    cr_assert(c->text != NULL && c->side != NULL, "cannot read %s or %s", path, c->side_path);
}

static void case_free(test_case *c)
{
    free(c->text);
    free(c->side_path);
    free(c->side);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted list of the *.prom files in a folder (new; free each and the array). */
static char **list_cases(const char *sub, size_t *count)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/promtext/%s", data_dir(), sub);
    DIR *d = opendir(dir);
    cr_assert(d != NULL, "cannot open %s", dir);
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!has_suffix(de->d_name, ".prom"))
            continue;
        names = realloc(names, (n + 1) * sizeof *names);
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        names[n] = malloc(len);
        snprintf(names[n], len, "%s/%s", dir, de->d_name);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    *count = n;
    return names;
}

static void free_cases(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

Test(promtext, valid_files_parse_to_their_expected_dump)
{
    size_t n;
    char **cases = list_cases("valid", &n);
    cr_assert_geq(n, 20, "expected at least 20 valid cases, found %zu", n);
    for (size_t i = 0; i < n; i++) {
        test_case c;
        case_load(&c, cases[i], ".expected");
        const char *expected = c.side;
        sonar_promtext *r = NULL;
        sonar_promtext_error err;
        sonar_status st = sonar_promtext_parse(&r, c.text, c.len, &err);
        cr_expect_eq(st, SONAR_OK, "%s: %s (line %zu: %s)", cases[i], sonar_status_str(st),
                     err.line, err.reason);
        if (st == SONAR_OK) {
            char *got = dump(r);
            cr_expect_str_eq(got, expected, "%s: dump differs\n--- got\n%s--- expected\n%s",
                             cases[i], got, expected);
            free(got);
        }
        sonar_promtext_destroy(r);
        case_free(&c);
    }
    free_cases(cases, n);
}

Test(promtext, invalid_files_are_refused_with_line_and_reason)
{
    size_t n;
    char **cases = list_cases("invalid", &n);
    cr_assert_geq(n, 25, "expected at least 25 invalid cases, found %zu", n);
    for (size_t i = 0; i < n; i++) {
        test_case c;
        case_load(&c, cases[i], ".expect");
        size_t want_line = 0;
        char want_reason[256] = "";
        sonar_status want_status = SONAR_ERR_PROTOCOL;
        for (char *ln = strtok(c.side, "\n"); ln != NULL; ln = strtok(NULL, "\n")) {
            if (strncmp(ln, "line: ", 6) == 0)
                want_line = strtoul(ln + 6, NULL, 10);
            else if (strncmp(ln, "reason: ", 8) == 0)
                snprintf(want_reason, sizeof want_reason, "%s", ln + 8);
            else if (strcmp(ln, "status: limit") == 0)
                want_status = SONAR_ERR_LIMIT;
        }
        cr_assert(want_line > 0 && want_reason[0] != '\0', "%s: malformed", c.side_path);

        sonar_promtext *r = (sonar_promtext *)&r; /* must stay untouched on failure */
        sonar_promtext *untouched = r;
        sonar_promtext_error err;
        sonar_status st = sonar_promtext_parse(&r, c.text, c.len, &err);
        cr_expect_eq(st, want_status, "%s: status %s, want %s", cases[i],
                     sonar_status_str(st), sonar_status_str(want_status));
        cr_expect_eq(r, untouched, "%s: out written on failure", cases[i]);
        cr_expect_eq(err.line, want_line, "%s: line %zu (%s), want %zu", cases[i], err.line,
                     err.reason, want_line);
        cr_expect(strstr(err.reason, want_reason) != NULL, "%s: reason \"%s\" lacks \"%s\"",
                  cases[i], err.reason, want_reason);
        char prefix[64];
        snprintf(prefix, sizeof prefix, "line %zu: ", want_line);
        cr_expect(strncmp(sonar_last_error(), prefix, strlen(prefix)) == 0,
                  "%s: last error \"%s\"", cases[i], sonar_last_error());
        if (st == SONAR_OK && r != untouched)
            sonar_promtext_destroy(r);
        case_free(&c);
    }
    free_cases(cases, n);
}

Test(promtext, accessors_find_families_and_labels)
{
    const char *text = "# TYPE rpc_seconds histogram\n"
                       "rpc_seconds_bucket{svc=\"a\",le=\"0.1\"} 2\n"
                       "rpc_seconds_bucket{svc=\"a\",le=\"+Inf\"} 3\n"
                       "rpc_seconds_sum{svc=\"a\"} 0.5\n"
                       "rpc_seconds_count{svc=\"a\"} 3\n"
                       "up 1\n";
    sonar_promtext *r = NULL;
    cr_assert_eq(sonar_promtext_parse(&r, text, strlen(text), NULL), SONAR_OK);
    cr_assert_eq(sonar_promtext_family_count(r), 2);
    cr_assert_eq(sonar_promtext_sample_count(r), 5);
    const sonar_promtext_family *h = sonar_promtext_family_find(r, "rpc_seconds");
    cr_assert(h != NULL);
    cr_assert_eq(h->type, SONAR_PROMTEXT_HISTOGRAM);
    cr_assert_eq(h->n_samples, 4);
    cr_assert_str_eq(sonar_promtext_label_get(&h->samples[1], "le"), "+Inf");
    cr_assert_str_eq(sonar_promtext_label_get(&h->samples[1], "svc"), "a");
    cr_assert_null(sonar_promtext_label_get(&h->samples[2], "le"));
    cr_assert_eq(h->samples[3].line, 5);
    cr_assert_null(sonar_promtext_family_find(r, "rpc_seconds_bucket"));
    cr_assert_null(sonar_promtext_family_find(r, "nope"));
    cr_assert_eq(sonar_promtext_family_at(r, 1), sonar_promtext_family_find(r, "up"));
    cr_assert_null(sonar_promtext_family_at(r, 2));
    cr_assert_null(h->help);
    sonar_promtext_destroy(r);
    sonar_promtext_destroy(NULL);
    cr_assert_eq(sonar_promtext_family_count(NULL), 0);
}

Test(promtext, bad_arguments_are_refused)
{
    sonar_promtext *r = NULL;
    cr_assert_eq(sonar_promtext_parse(NULL, "up 1\n", 5, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_promtext_parse(&r, NULL, 3, NULL), SONAR_ERR_INVALID);
    cr_assert_null(r);
    cr_assert_eq(sonar_promtext_parse(&r, NULL, 0, NULL), SONAR_OK);
    cr_assert_eq(sonar_promtext_family_count(r), 0);
    sonar_promtext_destroy(r);
}

Test(promtext, input_need_not_be_nul_terminated)
{
    char text[] = {'u', 'p', ' ', '4', '2', '9', '9'};
    sonar_promtext *r = NULL;
    cr_assert_eq(sonar_promtext_parse(&r, text, 5, NULL), SONAR_OK);
    cr_assert_eq(sonar_promtext_family_at(r, 0)->samples[0].value, 42.0);
    sonar_promtext_destroy(r);
}

Test(promtext, lines_over_the_limit_are_refused)
{
    size_t n = SONAR_PROMTEXT_MAX_LINE + 10;
    char *text = malloc(n + 32);
    strcpy(text, "ok 1\n# ");
    memset(text + 7, 'x', n);
    strcpy(text + 7 + n, "\nup 1\n");
    sonar_promtext *r = NULL;
    sonar_promtext_error err;
    cr_assert_eq(sonar_promtext_parse(&r, text, strlen(text), &err), SONAR_ERR_LIMIT);
    cr_assert_eq(err.line, 2);
    cr_assert(strstr(err.reason, "longer than") != NULL, "%s", err.reason);
    /* Exactly at the limit is fine. */
    text[5 + SONAR_PROMTEXT_MAX_LINE] = '\n';
    cr_assert_eq(sonar_promtext_parse(&r, text, 6 + SONAR_PROMTEXT_MAX_LINE, &err), SONAR_OK,
                 "%s", err.reason);
    cr_assert_eq(sonar_promtext_family_count(r), 1);
    sonar_promtext_destroy(r);
    free(text);
}

Test(promtext, label_count_limit_is_enforced)
{
    sbuf b = {0};
    sb_add(&b, "m{");
    for (int i = 0; i < SONAR_PROMTEXT_MAX_LABELS; i++)
        sb_add(&b, "l%d=\"%d\",", i, i);
    sb_add(&b, "} 1\n");
    sonar_promtext *r = NULL;
    cr_assert_eq(sonar_promtext_parse(&r, b.s, b.n, NULL), SONAR_OK);
    cr_assert_eq(sonar_promtext_family_at(r, 0)->samples[0].n_labels,
                 SONAR_PROMTEXT_MAX_LABELS);
    sonar_promtext_destroy(r);
    b.n -= 4;
    sb_add(&b, "extra=\"x\"} 1\n");
    sonar_promtext_error err;
    cr_assert_eq(sonar_promtext_parse(&r, b.s, b.n, &err), SONAR_ERR_LIMIT);
    cr_assert(strstr(err.reason, "more than 64 labels") != NULL, "%s", err.reason);
    free(b.s);
}

Test(promtext, many_families_and_series_are_indexed)
{
    sbuf b = {0};
    for (int f = 0; f < 500; f++) {
        sb_add(&b, "# TYPE fam_%d histogram\n", f);
        for (int s = 0; s < 20; s++) {
            sb_add(&b, "fam_%d_bucket{s=\"%d\",le=\"1\"} %d\n", f, s, s);
            sb_add(&b, "fam_%d_bucket{s=\"%d\",le=\"+Inf\"} %d\n", f, s, s + 1);
            sb_add(&b, "fam_%d_count{s=\"%d\"} %d\n", f, s, s + 1);
        }
    }
    sonar_promtext *r = NULL;
    sonar_promtext_error err;
    cr_assert_eq(sonar_promtext_parse(&r, b.s, b.n, &err), SONAR_OK, "%s", err.reason);
    cr_assert_eq(sonar_promtext_family_count(r), 500);
    cr_assert_eq(sonar_promtext_sample_count(r), 500 * 60);
    const sonar_promtext_family *f = sonar_promtext_family_find(r, "fam_377");
    cr_assert(f != NULL);
    cr_assert_eq(f->n_samples, 60);
    cr_assert_str_eq(f->samples[59].name, "fam_377_count");
    cr_assert_eq(f->samples[59].value, 20);
    sonar_promtext_destroy(r);
    /* The same with one duplicate deep inside is refused at its line. */
    b.n = 0;
    for (int s = 0; s < 1000; s++)
        sb_add(&b, "g{s=\"%d\"} 1\n", s == 700 ? 3 : s);
    cr_assert_eq(sonar_promtext_parse(&r, b.s, b.n, &err), SONAR_ERR_PROTOCOL);
    cr_assert_eq(err.line, 701);
    cr_assert(strstr(err.reason, "line 4") != NULL, "%s", err.reason);
    free(b.s);
}

/* ---- robustness: truncations and mutations of the valid files ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Parses and, on success, walks everything; checks the failure contract. */
static void parse_checked(const char *what, const char *text, size_t len, size_t *ok,
                          size_t *refused)
{
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    sonar_promtext *r = NULL;
    sonar_promtext_error err;
    sonar_status st = sonar_promtext_parse(&r, text, len, &err);
    if (st == SONAR_OK) {
        cr_assert(r != NULL, "%s: OK without a result", what);
        free(dump(r));
        sonar_promtext_destroy(r);
        (*ok)++;
        return;
    }
    cr_assert(st == SONAR_ERR_PROTOCOL || st == SONAR_ERR_LIMIT,
              "%s: unexpected status %s", what, sonar_status_str(st));
    cr_assert_null(r, "%s: result written on failure", what);
    cr_assert(err.line >= 1 && err.line <= lines, "%s: line %zu outside 1..%zu", what,
              err.line, lines);
    cr_assert(err.reason[0] != '\0', "%s: empty reason", what);
    (*refused)++;
}

Test(promtext, truncated_and_mutated_inputs_never_crash)
{
    static const char alphabet[] = "{}\",=\\ \t\n#_:le+-.eE0123456789NaInf\xff\xc3\x80";
    size_t n, ok = 0, refused = 0;
    char **cases = list_cases("valid", &n);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        char *text = read_all(cases[i], &len);
        cr_assert(text != NULL);
        /* Every prefix. */
        for (size_t cut = 0; cut < len; cut++) {
            char *copy = malloc(cut + 1); /* exact size: ASan sees any over-read */
            memcpy(copy, text, cut);
            parse_checked(cases[i], copy, cut, &ok, &refused);
            free(copy);
        }
        /* Random mutations: overwrite, insert, delete, duplicate a span. */
        for (int m = 0; m < 400 && len > 0; m++) {
            char *copy = malloc(len * 2 + 8);
            memcpy(copy, text, len);
            size_t clen = len;
            int edits = 1 + (int)(rng() % 4);
            for (int k = 0; k < edits && clen > 0; k++) {
                size_t at = rng() % clen;
                char c = alphabet[rng() % (sizeof alphabet - 1)];
                switch (rng() % 4) {
                case 0:
                    copy[at] = c;
                    break;
                case 1:
                    memmove(copy + at + 1, copy + at, clen - at);
                    copy[at] = c;
                    clen++;
                    break;
                case 2:
                    memmove(copy + at, copy + at + 1, clen - at - 1);
                    clen--;
                    break;
                default: {
                    size_t span = rng() % 8;
                    if (span > clen - at)
                        span = clen - at;
                    if (clen + span <= len * 2 + 8) {
                        memmove(copy + at + span, copy + at, clen - at);
                        clen += span;
                    }
                    break;
                }
                }
            }
            char *exact = malloc(clen + 1);
            memcpy(exact, copy, clen);
            parse_checked(cases[i], exact, clen, &ok, &refused);
            free(exact);
            free(copy);
        }
        free(text);
    }
    free_cases(cases, n);
    /* Both outcomes occur, so the sweep exercised the parser and its refusals. */
    cr_assert_gt(ok, 100);
    cr_assert_gt(refused, 100);
}

Test(promtext, name_validators_follow_the_format)
{
    cr_assert(sonar_promtext_name_valid("job:rate5m"));
    cr_assert(sonar_promtext_name_valid("_x"));
    cr_assert(sonar_promtext_name_valid(":a"));
    cr_assert_not(sonar_promtext_name_valid("5x"));
    cr_assert_not(sonar_promtext_name_valid("a-b"));
    cr_assert_not(sonar_promtext_name_valid(""));
    cr_assert_not(sonar_promtext_name_valid(NULL));
    cr_assert(sonar_promtext_label_name_valid("le"));
    cr_assert(sonar_promtext_label_name_valid("_a9"));
    cr_assert_not(sonar_promtext_label_name_valid("a:b"));
    cr_assert_not(sonar_promtext_label_name_valid("9"));
    cr_assert_not(sonar_promtext_label_name_valid(""));
}
