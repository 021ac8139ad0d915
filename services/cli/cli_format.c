/* Output formatting for the `sonar` CLI (see cli_format.h). */
#include "cli_format.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "sonar/util.h"

/* ---- Small JSON readers (tolerant: display only) ----------------------- */

static const char *jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s;
}

static const char *jstr_or(const json_t *o, const char *key, const char *dflt)
{
    const char *s = jstr(o, key);
    return s && *s ? s : dflt;
}

static int64_t jint(const json_t *o, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* New string: the string items of \p arr joined by \p sep, or "-" if none. */
static char *join_strings(const json_t *arr, const char *sep)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return NULL;
    size_t i, n = 0;
    json_t *item;
    json_array_foreach(arr, i, item) {
        const char *s = json_string_value(item);
        if (s == NULL)
            continue;
        fprintf(f, "%s%s", n++ ? sep : "", s);
    }
    if (n == 0)
        fputs("-", f);
    fclose(f);
    return buf;
}

/* Formats into a new string (NULL when out of memory). */
__attribute__((format(printf, 1, 2))) static char *fmt(const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    char *s = NULL;
    if (vasprintf(&s, format, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* Writes \p s with control characters replaced (see sonar_cli_sanitize). */
static void put_clean(FILE *out, const char *s)
{
    char *c = sonar_cli_sanitize(s);
    if (c)
        fputs(c, out);
    free(c);
}

char *sonar_cli_sanitize(const char *s)
{
    if (s == NULL)
        s = "-";
    char *c = strdup(s);
    if (c == NULL)
        return NULL;
    for (unsigned char *p = (unsigned char *)c; *p; p++) {
        if (*p == '\t' || *p == '\n' || *p == '\r')
            *p = ' ';
        else if (*p < 0x20 || *p == 0x7f)
            *p = '?';
    }
    return c;
}

/* Like sonar_cli_sanitize, but keeps '\n' (a line break inside a table cell). */
static char *sanitize_lines(const char *s)
{
    char *c = strdup(s ? s : "-");
    if (c == NULL)
        return NULL;
    for (unsigned char *p = (unsigned char *)c; *p; p++) {
        if (*p == '\t' || *p == '\r')
            *p = ' ';
        else if ((*p < 0x20 && *p != '\n') || *p == 0x7f)
            *p = '?';
    }
    return c;
}

size_t sonar_cli_text_width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            w++;
    return w;
}

/* ---- Tables ------------------------------------------------------------ */

struct sonar_cli_table {
    size_t ncols;
    size_t nrows; /* including the header row */
    size_t cap;
    char **cells; /* nrows * ncols */
};

sonar_cli_table *sonar_cli_table_create(size_t ncols, const char *const *headers)
{
    sonar_cli_table *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ncols = ncols;
    if (!sonar_cli_table_add(t, headers)) {
        sonar_cli_table_destroy(t);
        return NULL;
    }
    return t;
}

bool sonar_cli_table_add(sonar_cli_table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        char **grown = realloc(t->cells, cap * t->ncols * sizeof *grown);
        if (grown == NULL)
            return false;
        t->cells = grown;
        t->cap = cap;
    }
    char **row = t->cells + t->nrows * t->ncols;
    for (size_t c = 0; c < t->ncols; c++) {
        row[c] = sanitize_lines(cells[c]);
        if (row[c] == NULL) {
            for (size_t k = 0; k < c; k++)
                free(row[k]);
            return false;
        }
    }
    t->nrows++;
    return true;
}

/* Width of the widest line of a cell. */
static size_t cell_width(const char *cell)
{
    size_t best = 0;
    while (cell) {
        const char *nl = strchr(cell, '\n');
        size_t len = nl ? (size_t)(nl - cell) : strlen(cell);
        char *line = strndup(cell, len);
        size_t w = line ? sonar_cli_text_width(line) : len;
        free(line);
        if (w > best)
            best = w;
        cell = nl ? nl + 1 : NULL;
    }
    return best;
}

/* Line \p k of a cell (borrowed, up to *len bytes), or "" past its end. */
static const char *cell_line(const char *cell, size_t k, size_t *len)
{
    for (; k > 0 && cell; k--) {
        cell = strchr(cell, '\n');
        if (cell)
            cell++;
    }
    if (cell == NULL) {
        *len = 0;
        return "";
    }
    const char *nl = strchr(cell, '\n');
    *len = nl ? (size_t)(nl - cell) : strlen(cell);
    return cell;
}

static size_t cell_lines(const char *cell)
{
    size_t n = 1;
    for (const char *p = cell; *p; p++)
        n += *p == '\n';
    return n;
}

void sonar_cli_table_print(const sonar_cli_table *t, FILE *out)
{
    size_t *width = calloc(t->ncols, sizeof *width);
    if (width == NULL)
        return;
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = cell_width(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        char **row = t->cells + r * t->ncols;
        size_t lines = 1;
        for (size_t c = 0; c < t->ncols; c++)
            if (cell_lines(row[c]) > lines)
                lines = cell_lines(row[c]);
        for (size_t k = 0; k < lines; k++) {
            /* Continuation lines print only up to their last non-empty cell. */
            size_t last = 0;
            for (size_t c = 0; c < t->ncols; c++) {
                size_t len;
                cell_line(row[c], k, &len);
                if (len > 0)
                    last = c;
            }
            for (size_t c = 0; c <= last; c++) {
                size_t len;
                const char *line = cell_line(row[c], k, &len);
                char *text = strndup(line, len);
                if (text == NULL)
                    break;
                fputs(text, out);
                if (c < last) {
                    size_t pad = width[c] - sonar_cli_text_width(text) + 2;
                    fprintf(out, "%*s", (int)pad, "");
                }
                free(text);
            }
            fputc('\n', out);
        }
    }
    free(width);
}

void sonar_cli_table_destroy(sonar_cli_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* ---- Reports ------------------------------------------------------------ */

int sonar_cli_verdict_exit(const json_t *report)
{
    const char *v = jstr(report, "verdict");
    if (v == NULL)
        return 3;
    if (strcmp(v, "pass") == 0)
        return 0;
    if (strcmp(v, "fail") == 0)
        return 1;
    if (strcmp(v, "incomplete") == 0)
        return 2;
    return 3;
}

/* Counts checks of an answer: total and failed. */
static void count_checks(const json_t *checks, size_t *total, size_t *failed)
{
    size_t i;
    json_t *c;
    *total = *failed = 0;
    json_array_foreach(checks, i, c) {
        (*total)++;
        const char *st = jstr(c, "status");
        if (st && strcmp(st, "pass") != 0)
            (*failed)++;
    }
}

/* New string: "name: message" of every failing check, control characters
 * replaced, joined by \p sep; "" when none failed. */
static char *failing_checks(const json_t *checks, const char *sep)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return NULL;
    size_t i, n = 0;
    json_t *c;
    json_array_foreach(checks, i, c) {
        const char *st = jstr(c, "status");
        if (st == NULL || strcmp(st, "pass") == 0)
            continue;
        const char *msg = jstr(c, "message");
        fputs(n++ ? sep : "", f);
        put_clean(f, jstr_or(c, "name", "?"));
        if (msg && *msg) {
            fputs(": ", f);
            put_clean(f, msg);
        }
    }
    fclose(f);
    return buf;
}

/* New string for the CHECKS column: "2/2 passed", "1 of 2 failed", "-". */
static char *checks_cell(const json_t *checks)
{
    size_t total, failed;
    count_checks(checks, &total, &failed);
    if (total == 0)
        return strdup("-");
    if (failed == 0)
        return fmt("%zu/%zu passed", total, total);
    return fmt("%zu of %zu failed", failed, total);
}

/* New string for the REASON column: one line per thing to say. */
static char *reason_cell(const json_t *entry)
{
    const char *reason = jstr(entry, "reason");
    char *failing = failing_checks(json_object_get(entry, "checks"), "\n");
    char *clean_reason = sonar_cli_sanitize(reason ? reason : "");
    char *out = NULL;
    if (failing && clean_reason) {
        bool unregistered = json_is_true(json_object_get(entry, "unregistered"));
        out = fmt("%s%s%s%s%s", unregistered ? "not in the registry" : "",
                  unregistered && (*clean_reason || *failing) ? "\n" : "", clean_reason,
                  *clean_reason && *failing ? "\n" : "", failing);
    }
    free(failing);
    free(clean_reason);
    if (out && *out == '\0') {
        free(out);
        out = strdup("-");
    }
    return out;
}

void sonar_cli_print_report(FILE *out, const json_t *report)
{
    fprintf(out, "change ");
    put_clean(out, jstr_or(report, "change_id", "-"));
    fprintf(out, ": ");
    put_clean(out, jstr_or(report, "service", "-"));
    fputc(' ', out);
    put_clean(out, jstr_or(report, "version", "-"));
    fprintf(out, " at ");
    put_clean(out, jstr_or(report, "address", "-"));
    const char *started = jstr(report, "started_at");
    if (started) {
        fprintf(out, " (started ");
        put_clean(out, started);
        fputc(')', out);
    }
    fprintf(out, "\n\n");

    static const char *const headers[] = {"SERVICE", "STATUS", "CHECKS", "REASON"};
    sonar_cli_table *t = sonar_cli_table_create(4, headers);
    if (t == NULL)
        return;
    json_t *results = json_object_get(report, "results");
    size_t i;
    json_t *e;
    json_array_foreach(results, i, e) {
        char *checks = checks_cell(json_object_get(e, "checks"));
        char *reason = reason_cell(e);
        const char *row[] = {jstr_or(e, "service", "?"), jstr_or(e, "status", "?"),
                             checks ? checks : "?", reason ? reason : "?"};
        sonar_cli_table_add(t, row);
        free(checks);
        free(reason);
    }
    if (json_array_size(results) == 0)
        fprintf(out, "no service was expected to answer\n");
    else
        sonar_cli_table_print(t, out);
    sonar_cli_table_destroy(t);

    const char *verdict = jstr_or(report, "verdict", "unknown");
    json_t *counts = json_object_get(report, "counts");
    fprintf(out, "\nverdict: ");
    for (const char *p = verdict; *p; p++)
        fputc(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : (*p < 0x20 ? '?' : *p), out);
    fprintf(out,
            " (expected %" PRId64 ": %" PRId64 " pass, %" PRId64 " fail, %" PRId64
            " none, %" PRId64 " incomplete) in %" PRId64 " ms\n",
            jint(counts, "expected", 0), jint(counts, "pass", 0), jint(counts, "fail", 0),
            jint(counts, "none", 0), jint(counts, "incomplete", 0),
            jint(report, "duration_ms", 0));
}

/* New string summarising an answer (a result or a report entry), control
 * characters replaced; the failing checks follow \p lead, separated by
 * \p sep. */
static char *answer_summary(const json_t *r, const char *lead, const char *sep)
{
    char *service = sonar_cli_sanitize(jstr_or(r, "service", "?"));
    char *status = sonar_cli_sanitize(jstr_or(r, "status", "?"));
    size_t total, failed;
    json_t *checks = json_object_get(r, "checks");
    count_checks(checks, &total, &failed);
    int64_t ms = jint(r, "duration_ms", 0);
    char *s = NULL;
    if (service == NULL || status == NULL) {
        s = NULL;
    } else if (strcmp(status, "none") == 0) {
        s = fmt("%s: none, no checks on this service (%" PRId64 " ms)", service, ms);
    } else if (failed == 0) {
        s = fmt("%s: %s, %zu check%s passed (%" PRId64 " ms)", service, status, total,
                total == 1 ? "" : "s", ms);
    } else {
        char *failing = failing_checks(checks, sep);
        s = fmt("%s: %s, %zu of %zu check%s failed (%" PRId64 " ms):%s%s", service, status,
                failed, total, total == 1 ? "" : "s", ms, lead, failing ? failing : "?");
        free(failing);
    }
    free(service);
    free(status);
    return s;
}

void sonar_cli_print_result_line(FILE *out, const json_t *result)
{
    char *s = answer_summary(result, "\n    ", "\n    ");
    fputs(s ? s : "?", out);
    fputc('\n', out);
    free(s);
}

/* ---- Read API answers --------------------------------------------------- */

void sonar_cli_print_services(FILE *out, const json_t *services)
{
    json_t *list = json_object_get(services, "services");
    if (json_array_size(list) == 0) {
        fprintf(out, "no services known\n");
        return;
    }
    static const char *const headers[] = {"SERVICE", "LIVE", "VERSIONS", "LAST SEEN",
                                          "DEPENDS ON"};
    sonar_cli_table *t = sonar_cli_table_create(5, headers);
    if (t == NULL)
        return;
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s) {
        size_t live = json_is_true(json_object_get(s, "live"))
                          ? json_array_size(json_object_get(s, "instances"))
                          : 0;
        char *live_s = live ? fmt("%zu", live) : strdup("0 (down)");
        char *versions = join_strings(json_object_get(s, "versions"), ", ");
        char *deps = join_strings(json_object_get(s, "depends_on"), ", ");
        const char *row[] = {jstr_or(s, "service", "?"), live_s ? live_s : "?",
                             versions ? versions : "?", jstr_or(s, "last_seen", "-"),
                             deps ? deps : "?"};
        sonar_cli_table_add(t, row);
        free(live_s);
        free(versions);
        free(deps);
    }
    sonar_cli_table_print(t, out);
    sonar_cli_table_destroy(t);
}

/* New string: "1 pass, 1 fail, 3 none, 0 incomplete" from counts. */
static char *counts_cell(const json_t *counts)
{
    return fmt("%" PRId64 " pass, %" PRId64 " fail, %" PRId64 " none, %" PRId64 " incomplete",
               jint(counts, "pass", 0), jint(counts, "fail", 0), jint(counts, "none", 0),
               jint(counts, "incomplete", 0));
}

void sonar_cli_print_history(FILE *out, const json_t *history)
{
    json_t *reports = json_object_get(history, "reports");
    if (json_array_size(reports) == 0) {
        fprintf(out, "no reports for ");
        put_clean(out, jstr_or(history, "service", "this service"));
        fputc('\n', out);
        return;
    }
    static const char *const headers[] = {"STARTED", "CHANGE", "VERSION", "VERDICT",
                                          "RESULTS", "DURATION"};
    sonar_cli_table *t = sonar_cli_table_create(6, headers);
    if (t == NULL)
        return;
    size_t i;
    json_t *r;
    json_array_foreach(reports, i, r) {
        char *counts = counts_cell(json_object_get(r, "counts"));
        char *dur = fmt("%" PRId64 " ms", jint(r, "duration_ms", 0));
        const char *row[] = {jstr_or(r, "started_at", "-"), jstr_or(r, "change_id", "-"),
                             jstr_or(r, "version", "-"), jstr_or(r, "verdict", "-"),
                             counts ? counts : "?", dur ? dur : "?"};
        sonar_cli_table_add(t, row);
        free(counts);
        free(dur);
    }
    sonar_cli_table_print(t, out);
    sonar_cli_table_destroy(t);
}

/* Writes \p s as a DOT double-quoted string. */
static void put_dot_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            fputc('\\', out);
        fputc(*p < 0x20 || *p == 0x7f ? ' ' : *p, out);
    }
    fputc('"', out);
}

void sonar_cli_print_dot(FILE *out, const json_t *graph)
{
    fprintf(out, "digraph sonar {\n  rankdir=LR;\n  node [shape=box];\n");
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(graph, "nodes"), i, n) {
        if (!json_is_string(n))
            continue;
        fputs("  ", out);
        put_dot_string(out, json_string_value(n));
        fputs(";\n", out);
    }
    json_t *e;
    json_array_foreach(json_object_get(graph, "edges"), i, e) {
        const char *from = jstr(e, "from"), *to = jstr(e, "to");
        if (from == NULL || to == NULL)
            continue;
        fputs("  ", out);
        put_dot_string(out, from);
        fputs(" -> ", out);
        put_dot_string(out, to);
        json_t *checks = json_object_get(e, "checks");
        if (json_array_size(checks) > 0) {
            char *label = join_strings(checks, ", ");
            fputs(" [label=", out);
            put_dot_string(out, label ? label : "?");
            fputc(']', out);
            free(label);
        }
        fputs(";\n", out);
    }
    fputs("}\n", out);
}

/* ---- watch feed --------------------------------------------------------- */

static const struct {
    const char *prefix;
    sonar_cli_event ev;
} event_prefixes[] = {
    {"sonar.register.", SONAR_CLI_EV_REGISTER},
    {"sonar.leave.", SONAR_CLI_EV_LEAVE},
    {"sonar.change.", SONAR_CLI_EV_CHANGE},
    {"sonar.gather.", SONAR_CLI_EV_GATHER},
    {"sonar.result.", SONAR_CLI_EV_RESULT},
    {"sonar.report.", SONAR_CLI_EV_REPORT},
    {"sonar.health.", SONAR_CLI_EV_HEALTH},
};

sonar_cli_event sonar_cli_event_kind(const char *subject)
{
    if (subject == NULL)
        return SONAR_CLI_EV_UNKNOWN;
    for (size_t i = 0; i < sizeof event_prefixes / sizeof event_prefixes[0]; i++) {
        size_t n = strlen(event_prefixes[i].prefix);
        if (strncmp(subject, event_prefixes[i].prefix, n) == 0 && subject[n] != '\0')
            return event_prefixes[i].ev;
    }
    return SONAR_CLI_EV_UNKNOWN;
}

const char *sonar_cli_event_name(sonar_cli_event ev)
{
    switch (ev) {
    case SONAR_CLI_EV_REGISTER: return "register";
    case SONAR_CLI_EV_LEAVE: return "leave";
    case SONAR_CLI_EV_CHANGE: return "change";
    case SONAR_CLI_EV_GATHER: return "gather";
    case SONAR_CLI_EV_RESULT: return "result";
    case SONAR_CLI_EV_REPORT: return "report";
    case SONAR_CLI_EV_HEALTH: return "health";
    case SONAR_CLI_EV_UNKNOWN: break;
    }
    return "unknown";
}

/* Change ids remembered per filter before the memory is reset. */
#define WATCH_MEMORY_MAX 10000

struct sonar_cli_watch_filter {
    char *service;      /* NULL: everything */
    json_t *instances;  /* "service/instance" -> "version address" */
    json_t *changes;    /* change ids of the filtered service -> true */
};

sonar_cli_watch_filter *sonar_cli_watch_filter_create(const char *service)
{
    sonar_cli_watch_filter *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->instances = json_object();
    f->changes = json_object();
    if (service)
        f->service = strdup(service);
    if (f->instances == NULL || f->changes == NULL || (service && f->service == NULL)) {
        sonar_cli_watch_filter_destroy(f);
        return NULL;
    }
    return f;
}

void sonar_cli_watch_filter_destroy(sonar_cli_watch_filter *f)
{
    if (f == NULL)
        return;
    json_decref(f->instances);
    json_decref(f->changes);
    free(f->service);
    free(f);
}

/* The last token of a subject (borrowed from it). */
static const char *last_token(const char *subject)
{
    const char *dot = strrchr(subject, '.');
    return dot ? dot + 1 : subject;
}

static bool is_filtered(const sonar_cli_watch_filter *f, const char *service)
{
    return f->service == NULL || (service && strcmp(f->service, service) == 0);
}

static void remember_change(sonar_cli_watch_filter *f, const char *change_id)
{
    if (change_id == NULL)
        return;
    if (json_object_size(f->changes) >= WATCH_MEMORY_MAX)
        json_object_clear(f->changes);
    json_object_set_new(f->changes, change_id, json_true());
}

bool sonar_cli_watch_filter_pass(sonar_cli_watch_filter *f, sonar_cli_event ev,
                                 const char *subject, const json_t *msg)
{
    const char *svc = last_token(subject);
    switch (ev) {
    case SONAR_CLI_EV_REGISTER:
    case SONAR_CLI_EV_LEAVE: {
        if (!is_filtered(f, svc))
            return false;
        char *key = fmt("%s/%s", svc, jstr_or(msg, "instance", "?"));
        if (key == NULL)
            return true;
        bool show = true;
        if (ev == SONAR_CLI_EV_LEAVE) {
            json_object_del(f->instances, key);
        } else {
            char *val = fmt("%s %s", jstr_or(msg, "version", ""), jstr_or(msg, "address", ""));
            const char *seen = json_string_value(json_object_get(f->instances, key));
            show = val == NULL || seen == NULL || strcmp(seen, val) != 0;
            if (show && val) {
                if (json_object_size(f->instances) >= WATCH_MEMORY_MAX)
                    json_object_clear(f->instances);
                json_object_set_new(f->instances, key, json_string(val));
            }
            free(val);
        }
        free(key);
        return show;
    }
    case SONAR_CLI_EV_CHANGE:
        if (!is_filtered(f, svc))
            return false;
        if (f->service)
            remember_change(f, jstr(msg, "change_id"));
        return true;
    case SONAR_CLI_EV_GATHER:
        if (!is_filtered(f, jstr(msg, "service")))
            return false;
        if (f->service)
            remember_change(f, jstr(msg, "change_id"));
        return true;
    case SONAR_CLI_EV_RESULT: {
        if (f->service == NULL || strcmp(svc, f->service) == 0)
            return true;
        const char *cid = jstr(msg, "change_id");
        return cid && json_object_get(f->changes, cid) != NULL;
    }
    case SONAR_CLI_EV_REPORT:
    case SONAR_CLI_EV_HEALTH:
        return is_filtered(f, jstr(msg, "service"));
    case SONAR_CLI_EV_UNKNOWN:
        break;
    }
    return false;
}

/* "HH:MM:SS.mmm" (UTC) of a wall-clock time, into buf (>= 40 bytes). */
static const char *clock_of(int64_t wall_ms, char *buf, size_t len)
{
    sonar_format_rfc3339(wall_ms, buf, len);
    char *t = strchr(buf, 'T');
    return t ? t + 1 : buf;
}

/* New string: the human detail of an event. */
static char *event_detail(sonar_cli_event ev, const char *subject, const json_t *msg)
{
    switch (ev) {
    case SONAR_CLI_EV_REGISTER: {
        char *deps = join_strings(json_object_get(msg, "depends_on"), ", ");
        char *s = fmt("%s/%s %s at %s, depends on %s, heartbeat %" PRId64 " ms",
                      jstr_or(msg, "service", "?"), jstr_or(msg, "instance", "?"),
                      jstr_or(msg, "version", "?"), jstr_or(msg, "address", "-"),
                      deps ? deps : "?", jint(msg, "heartbeat_ms", 0));
        free(deps);
        return s;
    }
    case SONAR_CLI_EV_LEAVE:
        return fmt("%s/%s", jstr_or(msg, "service", "?"), jstr_or(msg, "instance", "?"));
    case SONAR_CLI_EV_CHANGE:
        return fmt("%s %s at %s (change %s, timeout %" PRId64 " ms)", last_token(subject),
                   jstr_or(msg, "version", "?"), jstr_or(msg, "address", "?"),
                   jstr_or(msg, "change_id", "to be assigned"), jint(msg, "timeout_ms", 0));
    case SONAR_CLI_EV_GATHER: {
        json_t *expected = json_object_get(msg, "expected");
        char *names = join_strings(expected, ", ");
        bool again = json_is_true(json_object_get(msg, "again"));
        char *s = fmt(again ? "change %s of %s: still gathering, expecting %zu (%s), %" PRId64
                              " ms left"
                            : "change %s of %s: expecting %zu (%s), timeout %" PRId64 " ms",
                      jstr_or(msg, "change_id", "?"), jstr_or(msg, "service", "?"),
                      json_array_size(expected), names ? names : "?", jint(msg, "timeout_ms", 0));
        free(names);
        return s;
    }
    case SONAR_CLI_EV_RESULT: {
        char *summary = answer_summary(msg, " ", "; ");
        char *s = fmt("change %s: %s", jstr_or(msg, "change_id", "?"), summary ? summary : "?");
        free(summary);
        return s;
    }
    case SONAR_CLI_EV_REPORT: {
        json_t *counts = json_object_get(msg, "counts");
        char *c = counts_cell(counts);
        char *s = fmt("change %s of %s %s: %s (expected %" PRId64 ": %s) in %" PRId64 " ms",
                      jstr_or(msg, "change_id", "?"), jstr_or(msg, "service", "?"),
                      jstr_or(msg, "version", "?"), jstr_or(msg, "verdict", "?"),
                      jint(counts, "expected", 0), c ? c : "?", jint(msg, "duration_ms", 0));
        free(c);
        return s;
    }
    case SONAR_CLI_EV_HEALTH: {
        const char *err = jstr(msg, "error");
        int64_t code = jint(msg, "http_code", 0);
        char codebuf[32] = "no response";
        if (code > 0)
            snprintf(codebuf, sizeof codebuf, "HTTP %" PRId64, code);
        return fmt("%s/%s: %s -> %s (%s, %" PRId64 " ms)%s%s", jstr_or(msg, "service", "?"),
                   jstr_or(msg, "target", "?"), jstr_or(msg, "from", "?"),
                   jstr_or(msg, "to", "?"), codebuf, jint(msg, "duration_ms", 0),
                   err && *err ? ": " : "", err && *err ? err : "");
    }
    case SONAR_CLI_EV_UNKNOWN:
        break;
    }
    return strdup(subject);
}

void sonar_cli_print_event(FILE *out, sonar_cli_event ev, const char *subject,
                           const json_t *msg, int64_t wall_ms, bool replayed)
{
    char ts[48];
    char *detail = event_detail(ev, subject, msg);
    fprintf(out, "%s %-8s ", clock_of(wall_ms, ts, sizeof ts), sonar_cli_event_name(ev));
    put_clean(out, detail ? detail : "?");
    fprintf(out, "%s\n", replayed ? " [replayed]" : "");
    free(detail);
}

void sonar_cli_print_event_json(FILE *out, sonar_cli_event ev, const char *subject,
                                const json_t *msg, int64_t wall_ms, bool replayed)
{
    char ts[48];
    sonar_format_rfc3339(wall_ms, ts, sizeof ts);
    json_t *line = json_pack("{s:s, s:s, s:s, s:O}", "time", ts, "event",
                             sonar_cli_event_name(ev), "subject", subject, "message", msg);
    if (line == NULL)
        return;
    if (replayed)
        json_object_set_new(line, "replayed", json_true());
    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text)
        fprintf(out, "%s\n", text);
    free(text);
    json_decref(line);
}

/* Writes \p line (stolen; NULL writes nothing) as one compact JSON line. */
static void put_json_line(FILE *out, json_t *line)
{
    char *text = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (text)
        fprintf(out, "%s\n", text);
    free(text);
    json_decref(line);
}

void sonar_cli_print_connection(FILE *out, bool json, bool up, const char *server,
                                bool replaying, int64_t wall_ms)
{
    char ts[48];
    sonar_format_rfc3339(wall_ms, ts, sizeof ts);
    const char *ev = up ? "reconnected" : "disconnected";
    if (json) {
        json_t *line = json_pack("{s:s, s:s, s:s}", "time", ts, "event", ev, "server",
                                 server ? server : "");
        if (line && up)
            json_object_set_new(line, "replaying", json_boolean(replaying));
        put_json_line(out, line);
        return;
    }
    char *t = strchr(ts, 'T');
    fprintf(out, "%s %-8s ", t ? t + 1 : ts, "bus");
    if (up) {
        fputs("reconnected to ", out);
        put_clean(out, server ? server : "");
        fputs(replaying ? "; replaying the reports of the gap, other events in between were"
                          " missed\n"
                        : "; events in between were missed\n",
              out);
    } else {
        fputs("lost ", out);
        put_clean(out, server ? server : "the server");
        fputs("; reconnecting, events are missed until then\n", out);
    }
}

void sonar_cli_print_invalid(FILE *out, bool json, const char *subject, const char *reason,
                             int64_t wall_ms)
{
    char ts[48];
    sonar_format_rfc3339(wall_ms, ts, sizeof ts);
    if (json) {
        json_t *line = json_pack("{s:s, s:s, s:s, s:s}", "time", ts, "event", "invalid",
                                 "subject", subject, "error", reason);
        put_json_line(out, line);
        return;
    }
    char *t = strchr(ts, 'T');
    fprintf(out, "%s %-8s ", t ? t + 1 : ts, "invalid");
    put_clean(out, subject);
    fputs(": ", out);
    put_clean(out, reason);
    fputc('\n', out);
}
