/* Prometheus text exposition format 0.0.4 parser. */
#include "sonar/promtext.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- arena: every string and label array of a result lives here ---- */

enum { CHUNK_SIZE = 64 * 1024 };

typedef struct chunk {
    struct chunk *next;
    size_t used;
    size_t cap;
    _Alignas(max_align_t) char data[];
} chunk;

struct sonar_promtext {
    chunk *chunks;
    sonar_promtext_family *families;
    size_t n_families;
    size_t cap_families;
    sonar_promtext_sample *samples;
    size_t n_samples;
    size_t cap_samples;
    size_t *index;       /* open addressing over family names: family index + 1, 0 empty */
    size_t index_cap;    /* power of two */
};

static void *arena_alloc(sonar_promtext *r, size_t size)
{
    size = (size + _Alignof(max_align_t) - 1) & ~(size_t)(_Alignof(max_align_t) - 1);
    chunk *c = r->chunks;
    if (c == NULL || c->cap - c->used < size) {
        size_t cap = size > CHUNK_SIZE / 4 ? size : CHUNK_SIZE;
        chunk *n = malloc(sizeof *n + cap);
        if (n == NULL)
            return NULL;
        n->used = 0;
        n->cap = cap;
        if (c != NULL && cap != CHUNK_SIZE) {
            /* A dedicated chunk: keep filling the current one afterwards. */
            n->next = c->next;
            c->next = n;
        } else {
            n->next = c;
            r->chunks = n;
        }
        c = n;
    }
    void *p = c->data + c->used;
    c->used += size;
    return p;
}

static char *arena_strndup(sonar_promtext *r, const char *s, size_t n)
{
    char *p = arena_alloc(r, n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- small helpers ---- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

static bool metric_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}

static bool metric_char(unsigned char c)
{
    return metric_start(c) || (c >= '0' && c <= '9');
}

static bool label_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool label_char(unsigned char c)
{
    return label_start(c) || (c >= '0' && c <= '9');
}

static bool str_eq(const char *a, const char *b, size_t blen)
{
    return strncmp(a, b, blen) == 0 && a[blen] == '\0';
}

static bool same(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* True when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates). */
static bool utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return false;
        i += len;
    }
    return true;
}

/* ---- parser state ---- */

enum { KIND_PLAIN = 0, KIND_BUCKET, KIND_SUM, KIND_COUNT };

typedef struct fam_meta {
    size_t start;      /* first sample index */
    bool typed;
    bool has_help;
} fam_meta;

typedef struct parser {
    sonar_promtext *r;
    fam_meta *meta;            /* parallel to r->families */
    size_t cur;                /* current family index, SIZE_MAX: none */
    size_t cur_len;            /* strlen of its name */
    const char *suffix_names[4]; /* interned sample names of the current family by kind */
    /* per-sample side data for the current family (reset at each family) */
    unsigned char *kind;
    double *special;
    size_t side_cap;
    const char *prev_label_names[SONAR_PROMTEXT_MAX_LABELS];
    size_t prev_label_lens[SONAR_PROMTEXT_MAX_LABELS];
    size_t prev_n_labels;
    sonar_promtext_error *err;
    sonar_status status;
} parser;

static sonar_status perr(parser *ps, sonar_status status, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static sonar_status perr(parser *ps, sonar_status status, size_t line, const char *fmt, ...)
{
    if (ps->status != SONAR_OK && ps->err->line != 0 && ps->err->line <= line)
        return ps->status; /* keep the earliest fault */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err->reason, sizeof ps->err->reason, fmt, ap);
    va_end(ap);
    ps->err->line = line;
    ps->status = status;
    return status;
}

static sonar_status nomem(parser *ps)
{
    ps->status = SONAR_ERR_NOMEM;
    ps->err->line = 0;
    snprintf(ps->err->reason, sizeof ps->err->reason, "out of memory");
    return SONAR_ERR_NOMEM;
}

/* Resizes array `ptr` to `cap` elements, or returns SONAR_ERR_NOMEM from the caller. */
#define GROW(ps, ptr, cap)                                                         \
    do {                                                                           \
        void *grown_ = realloc((ptr), (cap) * sizeof *(ptr));                      \
        if (grown_ == NULL)                                                        \
            return nomem(ps);                                                      \
        (ptr) = grown_;                                                            \
    } while (0)

/* Quoted, bounded copy of untrusted text for an error message. */
static const char *shown(char *buf, size_t buflen, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < buflen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f) {
            buf[o++] = (char)c;
        } else {
            o += (size_t)snprintf(buf + o, buflen - o, "\\x%02x", c);
        }
    }
    if (o + 5 >= buflen && o >= 3)
        memcpy(buf + o - 3, "...", 3);
    buf[o] = '\0';
    return buf;
}

#define SHOW(s, n) shown((char[72]){0}, 72, (s), (n))

static size_t family_find_idx(const sonar_promtext *r, const char *name, size_t n)
{
    if (r->index_cap == 0)
        return SIZE_MAX;
    size_t mask = r->index_cap - 1;
    for (size_t i = hash_bytes(name, n) & mask;; i = (i + 1) & mask) {
        size_t v = r->index[i];
        if (v == 0)
            return SIZE_MAX;
        if (str_eq(r->families[v - 1].name, name, n))
            return v - 1;
    }
}

static bool index_insert(sonar_promtext *r, size_t fam)
{
    if ((r->n_families + 1) * 2 > r->index_cap) {
        size_t cap = r->index_cap ? r->index_cap * 2 : 64;
        size_t *idx = calloc(cap, sizeof *idx);
        if (idx == NULL)
            return false;
        for (size_t i = 0; i < r->index_cap; i++) {
            size_t v = r->index[i];
            if (v == 0)
                continue;
            const char *nm = r->families[v - 1].name;
            size_t j = hash_bytes(nm, strlen(nm)) & (cap - 1);
            while (idx[j] != 0)
                j = (j + 1) & (cap - 1);
            idx[j] = v;
        }
        free(r->index);
        r->index = idx;
        r->index_cap = cap;
    }
    const char *nm = r->families[fam].name;
    size_t j = hash_bytes(nm, strlen(nm)) & (r->index_cap - 1);
    while (r->index[j] != 0)
        j = (j + 1) & (r->index_cap - 1);
    r->index[j] = fam + 1;
    return true;
}

/* ---- family validation (runs when a family's group ends) ---- */

typedef struct entry {
    size_t series;
    size_t idx;
    double special;
    unsigned char kind;
} entry;

static int entry_cmp(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->series != y->series)
        return x->series < y->series ? -1 : 1;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    if (x->special != y->special)
        return x->special < y->special ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static uint64_t labels_hash(const sonar_promtext_sample *s, const char *excl)
{
    uint64_t h = 0;
    for (size_t i = 0; i < s->n_labels; i++) {
        const sonar_promtext_label *l = &s->labels[i];
        if (excl != NULL && strcmp(l->name, excl) == 0)
            continue;
        h += mix64(hash_bytes(l->name, strlen(l->name)) * 31 +
                   hash_bytes(l->value, strlen(l->value)));
    }
    return h;
}

static bool labels_equal(const sonar_promtext_sample *a, const sonar_promtext_sample *b,
                         const char *excl)
{
    size_t na = 0, nb = 0;
    for (size_t i = 0; i < a->n_labels; i++)
        na += excl == NULL || strcmp(a->labels[i].name, excl) != 0;
    for (size_t i = 0; i < b->n_labels; i++)
        nb += excl == NULL || strcmp(b->labels[i].name, excl) != 0;
    if (na != nb)
        return false;
    for (size_t i = 0; i < a->n_labels; i++) {
        const sonar_promtext_label *l = &a->labels[i];
        if (excl != NULL && strcmp(l->name, excl) == 0)
            continue;
        const char *v = sonar_promtext_label_get(b, l->name);
        if (v == NULL || strcmp(v, l->value) != 0)
            return false;
    }
    return true;
}

static const char *kind_suffix(unsigned char kind)
{
    switch (kind) {
    case KIND_BUCKET: return "_bucket";
    case KIND_SUM: return "_sum";
    case KIND_COUNT: return "_count";
    default: return "";
    }
}

/* Checks the histogram series held in entries [from, to) (sorted by kind, then le). */
static void check_histogram_series(parser *ps, const sonar_promtext_family *f,
                                   const sonar_promtext_sample *base, const entry *e,
                                   size_t from, size_t to)
{
    size_t first_line = SIZE_MAX;
    const entry *inf_bucket = NULL, *count = NULL, *prev = NULL;
    for (size_t i = from; i < to; i++) {
        const sonar_promtext_sample *s = &base[e[i].idx];
        if (s->line < first_line)
            first_line = s->line;
        if (e[i].kind == KIND_COUNT)
            count = &e[i];
        if (e[i].kind != KIND_BUCKET)
            continue;
        if (prev != NULL && s->value < base[prev->idx].value)
            perr(ps, SONAR_ERR_PROTOCOL, s->line,
                 "histogram %s: bucket le=\"%s\" holds %.17g, less than %.17g in the "
                 "smaller bucket le=\"%s\" (buckets are cumulative)",
                 f->name, sonar_promtext_label_get(s, "le"), s->value,
                 base[prev->idx].value, sonar_promtext_label_get(&base[prev->idx], "le"));
        if (isinf(e[i].special) && e[i].special > 0)
            inf_bucket = &e[i];
        prev = &e[i];
    }
    if (inf_bucket == NULL) {
        perr(ps, SONAR_ERR_PROTOCOL, first_line,
             "histogram %s: series has no le=\"+Inf\" bucket", f->name);
        return;
    }
    if (count != NULL && base[count->idx].value != base[inf_bucket->idx].value)
        perr(ps, SONAR_ERR_PROTOCOL, base[count->idx].line,
             "histogram %s: _count %.17g differs from the +Inf bucket %.17g", f->name,
             base[count->idx].value, base[inf_bucket->idx].value);
}

static sonar_status close_family(parser *ps)
{
    if (ps->cur == SIZE_MAX)
        return SONAR_OK;
    sonar_promtext *r = ps->r;
    const sonar_promtext_family *f = &r->families[ps->cur];
    size_t start = ps->meta[ps->cur].start;
    size_t n = r->n_samples - start;
    ps->cur = SIZE_MAX;
    memset(ps->suffix_names, 0, sizeof ps->suffix_names);
    if (n == 0 || (n == 1 && f->type != SONAR_PROMTEXT_HISTOGRAM))
        return SONAR_OK;

    const char *excl = f->type == SONAR_PROMTEXT_HISTOGRAM ? "le"
                     : f->type == SONAR_PROMTEXT_SUMMARY   ? "quantile"
                                                           : NULL;
    const sonar_promtext_sample *s = r->samples + start;
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    /* Series ids: samples with equal labels (ignoring le/quantile) share one. */
    size_t *table = calloc(cap, sizeof *table); /* first sample index + 1 */
    size_t *ids = malloc(cap * sizeof *ids);
    entry *e = malloc(n * sizeof *e);
    if (table == NULL || ids == NULL || e == NULL) {
        free(table);
        free(ids);
        free(e);
        return nomem(ps);
    }
    size_t n_series = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = labels_hash(&s[i], excl) & (cap - 1);
        for (;; j = (j + 1) & (cap - 1)) {
            if (table[j] == 0) {
                table[j] = i + 1;
                ids[j] = n_series++;
                break;
            }
            if (labels_equal(&s[table[j] - 1], &s[i], excl))
                break;
        }
        e[i] = (entry){.series = ids[j], .idx = i, .kind = ps->kind[i],
                       .special = ps->special[i]};
    }
    free(table);
    free(ids);
    qsort(e, n, sizeof *e, entry_cmp);

    size_t group = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i > 0 && i < n && e[i].series == e[i - 1].series && e[i].kind == e[i - 1].kind &&
            e[i].special == e[i - 1].special) {
            const sonar_promtext_sample *a = &s[e[i - 1].idx], *b = &s[e[i].idx];
            perr(ps, SONAR_ERR_PROTOCOL, a->line > b->line ? a->line : b->line,
                 "duplicate sample %s%s: same name and labels as line %zu", f->name,
                 kind_suffix(e[i].kind), a->line < b->line ? a->line : b->line);
        }
        if (i == n || e[i].series != e[group].series) {
            if (f->type == SONAR_PROMTEXT_HISTOGRAM)
                check_histogram_series(ps, f, s, e, group, i);
            group = i;
        }
    }
    free(e);
    return ps->status;
}

static sonar_status new_family(parser *ps, const char *name, size_t n, size_t *out)
{
    sonar_status st = close_family(ps);
    if (st != SONAR_OK)
        return st;
    sonar_promtext *r = ps->r;
    if (r->n_families == r->cap_families) {
        size_t cap = r->cap_families ? r->cap_families * 2 : 16;
        GROW(ps, r->families, cap);
        GROW(ps, ps->meta, cap);
        r->cap_families = cap;
    }
    char *copy = arena_strndup(r, name, n);
    if (copy == NULL)
        return nomem(ps);
    size_t i = r->n_families;
    r->families[i] = (sonar_promtext_family){.name = copy, .type = SONAR_PROMTEXT_UNTYPED};
    ps->meta[i] = (fam_meta){.start = r->n_samples};
    if (!index_insert(r, i))
        return nomem(ps);
    r->n_families++;
    ps->cur = i;
    ps->cur_len = n;
    *out = i;
    return SONAR_OK;
}

/* ---- lines ---- */

static const char *skip_blanks(const char *q, const char *le)
{
    while (q < le && is_blank(*q))
        q++;
    return q;
}

/* Family addressed by a HELP or TYPE line: the current one or a new one. */
static sonar_status meta_family(parser *ps, size_t line, const char *kw, const char *name,
                                size_t n, size_t *out)
{
    if (ps->cur != SIZE_MAX && same(ps->r->families[ps->cur].name, ps->cur_len, name, n)) {
        *out = ps->cur;
        return SONAR_OK;
    }
    if (family_find_idx(ps->r, name, n) != SIZE_MAX)
        return perr(ps, SONAR_ERR_PROTOCOL, line,
                    "%s for %s: that family appeared earlier; all lines of a family must "
                    "form one group", kw, SHOW(name, n));
    return new_family(ps, name, n, out);
}

static sonar_status parse_comment(parser *ps, const char *q, const char *le, size_t line)
{
    q = skip_blanks(q + 1, le);
    const char *kw = q;
    while (q < le && !is_blank(*q))
        q++;
    size_t kwlen = (size_t)(q - kw);
    bool help = kwlen == 4 && memcmp(kw, "HELP", 4) == 0;
    bool type = kwlen == 4 && memcmp(kw, "TYPE", 4) == 0;
    if (!help && !type)
        return SONAR_OK; /* a plain comment */
    const char *kws = help ? "HELP" : "TYPE";
    q = skip_blanks(q, le);
    if (q == le)
        return perr(ps, SONAR_ERR_PROTOCOL, line, "%s without a metric name", kws);
    const char *name = q;
    if (!metric_start((unsigned char)*q))
        return perr(ps, SONAR_ERR_PROTOCOL, line, "%s: invalid metric name start '%s'", kws,
                    SHOW(q, 1));
    while (q < le && metric_char((unsigned char)*q))
        q++;
    size_t nlen = (size_t)(q - name);
    if (q < le && !is_blank(*q))
        return perr(ps, SONAR_ERR_PROTOCOL, line, "%s: invalid character '%s' in metric name",
                    kws, SHOW(q, 1));
    q = skip_blanks(q, le);
    size_t fi;
    sonar_status st = meta_family(ps, line, kws, name, nlen, &fi);
    if (st != SONAR_OK)
        return st;
    sonar_promtext_family *f = &ps->r->families[fi];
    fam_meta *m = &ps->meta[fi];
    bool has_samples = ps->r->n_samples > m->start;

    if (help) {
        if (m->has_help)
            return perr(ps, SONAR_ERR_PROTOCOL, line, "second HELP line for %s", f->name);
        if (has_samples)
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "HELP for %s after its samples (HELP and TYPE come first)", f->name);
        size_t raw = (size_t)(le - q);
        if (!utf8_valid(q, raw))
            return perr(ps, SONAR_ERR_PROTOCOL, line, "HELP for %s is not valid UTF-8",
                        f->name);
        char *text = arena_alloc(ps->r, raw + 1);
        if (text == NULL)
            return nomem(ps);
        size_t o = 0;
        for (const char *c = q; c < le; c++) {
            if (*c == '\0')
                return perr(ps, SONAR_ERR_PROTOCOL, line, "NUL byte in HELP for %s", f->name);
            if (*c != '\\') {
                text[o++] = *c;
                continue;
            }
            if (++c == le)
                return perr(ps, SONAR_ERR_PROTOCOL, line,
                            "HELP for %s ends in a lone backslash", f->name);
            if (*c == '\\')
                text[o++] = '\\';
            else if (*c == 'n')
                text[o++] = '\n';
            else
                return perr(ps, SONAR_ERR_PROTOCOL, line,
                            "invalid escape \\%s in HELP for %s (only \\\\ and \\n)",
                            SHOW(c, 1), f->name);
        }
        text[o] = '\0';
        f->help = text;
        m->has_help = true;
        return SONAR_OK;
    }

    const char *t = q;
    while (q < le && !is_blank(*q))
        q++;
    size_t tlen = (size_t)(q - t);
    if (skip_blanks(q, le) != le)
        return perr(ps, SONAR_ERR_PROTOCOL, line, "unexpected text after the type of %s",
                    f->name);
    if (tlen == 0)
        return perr(ps, SONAR_ERR_PROTOCOL, line, "TYPE for %s without a type", f->name);
    static const struct { const char *s; sonar_promtext_type t; } types[] = {
        {"counter", SONAR_PROMTEXT_COUNTER}, {"gauge", SONAR_PROMTEXT_GAUGE},
        {"histogram", SONAR_PROMTEXT_HISTOGRAM}, {"summary", SONAR_PROMTEXT_SUMMARY},
        {"untyped", SONAR_PROMTEXT_UNTYPED},
    };
    size_t k = 0;
    while (k < sizeof types / sizeof types[0] && !(strlen(types[k].s) == tlen &&
                                                   memcmp(types[k].s, t, tlen) == 0))
        k++;
    if (k == sizeof types / sizeof types[0])
        return perr(ps, SONAR_ERR_PROTOCOL, line,
                    "unknown type '%s' for %s (counter, gauge, histogram, summary, untyped)",
                    SHOW(t, tlen), f->name);
    if (m->typed)
        return perr(ps, SONAR_ERR_PROTOCOL, line, "second TYPE line for %s", f->name);
    if (has_samples)
        return perr(ps, SONAR_ERR_PROTOCOL, line,
                    "TYPE for %s after its samples (HELP and TYPE come first)", f->name);
    f->type = types[k].t;
    m->typed = true;
    return SONAR_OK;
}

/* Parses a float token: decimal, NaN, Inf with optional sign (case-insensitive). */
static bool parse_float(const char *t, size_t n, double *out, bool *range)
{
    *range = false;
    char buf[128];
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, t, n);
    buf[n] = '\0';
    const char *u = buf + (buf[0] == '+' || buf[0] == '-');
    if (*u == 'i' || *u == 'I' || *u == 'n' || *u == 'N') {
        if (strcasecmp(u, "inf") == 0) {
            *out = buf[0] == '-' ? -INFINITY : INFINITY;
            return true;
        }
        if (strcasecmp(buf, "nan") == 0) {
            *out = NAN;
            return true;
        }
        return false;
    }
    size_t i = (size_t)(u - buf), digits = 0;
    /* Fast path: up to 15 digits convert exactly without strtod. */
    uint64_t iv = 0;
    while (buf[i] >= '0' && buf[i] <= '9' && digits < 15)
        iv = iv * 10 + (uint64_t)(buf[i++] - '0'), digits++;
    if (i == n && digits > 0) {
        *out = buf[0] == '-' ? -(double)iv : (double)iv;
        return true;
    }
    while (buf[i] >= '0' && buf[i] <= '9')
        i++, digits++;
    if (buf[i] == '.') {
        i++;
        while (buf[i] >= '0' && buf[i] <= '9')
            i++, digits++;
    }
    if (digits == 0)
        return false;
    if (buf[i] == 'e' || buf[i] == 'E') {
        i++;
        if (buf[i] == '+' || buf[i] == '-')
            i++;
        size_t ed = 0;
        while (buf[i] >= '0' && buf[i] <= '9')
            i++, ed++;
        if (ed == 0)
            return false;
    }
    if (i != n)
        return false;
    errno = 0;
    char *end;
    double v = strtod(buf, &end);
    if (end != buf + n)
        return false;
    if (isinf(v)) {
        *range = true;
        return false;
    }
    *out = v;
    return true;
}

static bool parse_int64(const char *t, size_t n, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (n > 0 && (t[0] == '+' || t[0] == '-')) {
        neg = t[0] == '-';
        i = 1;
    }
    if (i == n)
        return false;
    uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (t[i] < '0' || t[i] > '9')
            return false;
        unsigned d = (unsigned)(t[i] - '0');
        if (v > (limit - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

static const char *intern_label_name(parser *ps, size_t pos, const char *name, size_t n)
{
    if (pos < ps->prev_n_labels && same(ps->prev_label_names[pos], ps->prev_label_lens[pos],
                                        name, n))
        return ps->prev_label_names[pos];
    return arena_strndup(ps->r, name, n);
}

/* Parses `{...}` starting at *pp (pointing at '{'). */
static sonar_status parse_labels(parser *ps, const char **pp, const char *le, size_t line,
                                 sonar_promtext_label *labels, size_t *lens,
                                 size_t *n_labels)
{
    const char *q = *pp + 1;
    size_t n = 0;
    for (;;) {
        q = skip_blanks(q, le);
        if (q == le)
            return perr(ps, SONAR_ERR_PROTOCOL, line, "unterminated label set (missing '}')");
        if (*q == '}') {
            q++;
            break;
        }
        if (!label_start((unsigned char)*q))
            return perr(ps, SONAR_ERR_PROTOCOL, line, "invalid label name start '%s'",
                        SHOW(q, 1));
        const char *name = q;
        while (q < le && label_char((unsigned char)*q))
            q++;
        size_t nlen = (size_t)(q - name);
        q = skip_blanks(q, le);
        if (q == le || *q != '=')
            return perr(ps, SONAR_ERR_PROTOCOL, line, "expected '=' after label name %s",
                        SHOW(name, nlen));
        q = skip_blanks(q + 1, le);
        if (q == le || *q != '"')
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "expected '\"' to open the value of label %s", SHOW(name, nlen));
        const char *v = ++q;
        while (q < le && *q != '"') {
            if (*q == '\\' && q + 1 < le)
                q++;
            q++;
        }
        if (q >= le)
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "unterminated value of label %s (missing '\"')", SHOW(name, nlen));
        size_t raw = (size_t)(q - v);
        q++; /* the closing quote */
        for (size_t i = 0; i < n; i++)
            if (same(labels[i].name, lens[i], name, nlen))
                return perr(ps, SONAR_ERR_PROTOCOL, line, "duplicate label name %s",
                            SHOW(name, nlen));
        if (n == SONAR_PROMTEXT_MAX_LABELS)
            return perr(ps, SONAR_ERR_LIMIT, line, "more than %d labels",
                        SONAR_PROMTEXT_MAX_LABELS);
        if (!utf8_valid(v, raw))
            return perr(ps, SONAR_ERR_PROTOCOL, line, "value of label %s is not valid UTF-8",
                        SHOW(name, nlen));
        const char *lname = intern_label_name(ps, n, name, nlen);
        char *val = arena_alloc(ps->r, raw + 1);
        if (lname == NULL || val == NULL)
            return nomem(ps);
        size_t o = 0;
        for (size_t i = 0; i < raw; i++) {
            char c = v[i];
            if (c == '\0')
                return perr(ps, SONAR_ERR_PROTOCOL, line, "NUL byte in the value of label %s",
                            lname);
            if (c != '\\') {
                val[o++] = c;
                continue;
            }
            c = v[++i];
            if (c == '\\' || c == '"')
                val[o++] = c;
            else if (c == 'n')
                val[o++] = '\n';
            else
                return perr(ps, SONAR_ERR_PROTOCOL, line,
                            "invalid escape \\%s in the value of label %s (only \\\\, \\\" "
                            "and \\n)", SHOW(&v[i], 1), lname);
        }
        val[o] = '\0';
        labels[n].name = lname;
        labels[n].value = val;
        lens[n] = nlen;
        n++;
        q = skip_blanks(q, le);
        if (q < le && *q == ',') {
            q++;
            continue;
        }
        if (q < le && *q == '}') {
            q++;
            break;
        }
        if (q == le)
            return perr(ps, SONAR_ERR_PROTOCOL, line, "unterminated label set (missing '}')");
        return perr(ps, SONAR_ERR_PROTOCOL, line,
                    "expected ',' or '}' after the value of label %s", lname);
    }
    *pp = q;
    *n_labels = n;
    return SONAR_OK;
}

/* Maps a sample name to its family (the current one or a new untyped one). */
static sonar_status sample_family(parser *ps, const char *name, size_t n, size_t line,
                                  size_t *fam, unsigned char *kind)
{
    static const struct { const char *s; size_t n; unsigned char kind; } suffixes[] = {
        {"_bucket", 7, KIND_BUCKET}, {"_sum", 4, KIND_SUM}, {"_count", 6, KIND_COUNT},
    };
    sonar_promtext *r = ps->r;
    if (ps->cur != SIZE_MAX) {
        const sonar_promtext_family *f = &r->families[ps->cur];
        if (same(f->name, ps->cur_len, name, n)) {
            *fam = ps->cur;
            *kind = KIND_PLAIN;
            return SONAR_OK;
        }
        if (f->type == SONAR_PROMTEXT_HISTOGRAM || f->type == SONAR_PROMTEXT_SUMMARY) {
            size_t fl = ps->cur_len;
            for (size_t k = 0; k < 3; k++) {
                if (suffixes[k].kind == KIND_BUCKET && f->type == SONAR_PROMTEXT_SUMMARY)
                    continue;
                if (n == fl + suffixes[k].n && memcmp(name, f->name, fl) == 0 &&
                    memcmp(name + fl, suffixes[k].s, suffixes[k].n) == 0) {
                    *fam = ps->cur;
                    *kind = suffixes[k].kind;
                    return SONAR_OK;
                }
            }
        }
    }
    bool seen = family_find_idx(r, name, n) != SIZE_MAX;
    for (size_t k = 0; k < 3 && !seen; k++) {
        if (n <= suffixes[k].n || memcmp(name + n - suffixes[k].n, suffixes[k].s,
                                         suffixes[k].n) != 0)
            continue;
        size_t b = family_find_idx(r, name, n - suffixes[k].n);
        if (b != SIZE_MAX && (r->families[b].type == SONAR_PROMTEXT_HISTOGRAM ||
                              (r->families[b].type == SONAR_PROMTEXT_SUMMARY &&
                               suffixes[k].kind != KIND_BUCKET)))
            seen = true;
    }
    if (seen)
        return perr(ps, SONAR_ERR_PROTOCOL, line,
                    "sample %s: its family appeared earlier; all lines of a family must form "
                    "one group", SHOW(name, n));
    *kind = KIND_PLAIN;
    return new_family(ps, name, n, fam);
}

static sonar_status parse_sample(parser *ps, const char *q, const char *le, size_t line)
{
    sonar_promtext *r = ps->r;
    const char *name = q;
    if (!metric_start((unsigned char)*q))
        return perr(ps, SONAR_ERR_PROTOCOL, line, "invalid metric name start '%s'",
                    SHOW(q, 1));
    while (q < le && metric_char((unsigned char)*q))
        q++;
    size_t nlen = (size_t)(q - name);
    sonar_promtext_label labels[SONAR_PROMTEXT_MAX_LABELS];
    size_t lens[SONAR_PROMTEXT_MAX_LABELS];
    size_t n_labels = 0;
    if (q < le && is_blank(*q)) {
        q = skip_blanks(q, le); /* blanks may separate the name from '{' */
    } else if (q < le && *q != '{') {
        return perr(ps, SONAR_ERR_PROTOCOL, line, "invalid character '%s' in metric name %s",
                    SHOW(q, 1), SHOW(name, nlen));
    }
    if (q < le && *q == '{') {
        sonar_status st = parse_labels(ps, &q, le, line, labels, lens, &n_labels);
        if (st != SONAR_OK)
            return st;
    }
    q = skip_blanks(q, le);
    const char *vt = q;
    while (q < le && !is_blank(*q))
        q++;
    size_t vlen = (size_t)(q - vt);
    if (vlen == 0)
        return perr(ps, SONAR_ERR_PROTOCOL, line, "sample %s has no value", SHOW(name, nlen));
    double value;
    bool range;
    if (!parse_float(vt, vlen, &value, &range))
        return perr(ps, SONAR_ERR_PROTOCOL, line, "%s '%s' of sample %s",
                    range ? "out-of-range value" : "invalid value", SHOW(vt, vlen),
                    SHOW(name, nlen));
    q = skip_blanks(q, le);
    bool has_ts = false;
    int64_t ts = 0;
    if (q < le) {
        const char *tt = q;
        while (q < le && !is_blank(*q))
            q++;
        if (!parse_int64(tt, (size_t)(q - tt), &ts))
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "invalid timestamp '%s' of sample %s (int64 milliseconds)",
                        SHOW(tt, (size_t)(q - tt)), SHOW(name, nlen));
        has_ts = true;
        if (skip_blanks(q, le) != le)
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "unexpected text after the timestamp of sample %s", SHOW(name, nlen));
    }

    size_t fi;
    unsigned char kind;
    sonar_status st = sample_family(ps, name, nlen, line, &fi, &kind);
    if (st != SONAR_OK)
        return st;
    const sonar_promtext_family *f = &r->families[fi];

    /* Per-type rules for the sample's kind. */
    double special = 0;
    const char *le_v = NULL, *q_v = NULL;
    for (size_t i = 0; i < n_labels; i++) {
        if (strcmp(labels[i].name, "le") == 0)
            le_v = labels[i].value;
        else if (strcmp(labels[i].name, "quantile") == 0)
            q_v = labels[i].value;
    }
    if (f->type == SONAR_PROMTEXT_HISTOGRAM) {
        if (kind == KIND_PLAIN)
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "histogram %s: sample %s must be %s_bucket, %s_sum or %s_count",
                        f->name, f->name, f->name, f->name, f->name);
        if (kind == KIND_BUCKET) {
            if (le_v == NULL)
                return perr(ps, SONAR_ERR_PROTOCOL, line, "histogram %s: bucket without le",
                            f->name);
            if (!parse_float(le_v, strlen(le_v), &special, &range) || isnan(special))
                return perr(ps, SONAR_ERR_PROTOCOL, line,
                            "histogram %s: invalid le=\"%s\"", f->name,
                            SHOW(le_v, strlen(le_v)));
        } else if (le_v != NULL) {
            return perr(ps, SONAR_ERR_PROTOCOL, line, "histogram %s: le label on %s%s",
                        f->name, f->name, kind_suffix(kind));
        }
        if ((kind == KIND_BUCKET || kind == KIND_COUNT) && !(value >= 0))
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "histogram %s: %s%s must be a non-negative count, not %g", f->name,
                        f->name, kind_suffix(kind), value);
    } else if (f->type == SONAR_PROMTEXT_SUMMARY) {
        if (kind == KIND_PLAIN) {
            if (q_v == NULL)
                return perr(ps, SONAR_ERR_PROTOCOL, line,
                            "summary %s: sample without a quantile label", f->name);
            if (!parse_float(q_v, strlen(q_v), &special, &range) || !(special >= 0) ||
                special > 1)
                return perr(ps, SONAR_ERR_PROTOCOL, line,
                            "summary %s: invalid quantile=\"%s\" (a number from 0 to 1)",
                            f->name, SHOW(q_v, strlen(q_v)));
        } else if (q_v != NULL) {
            return perr(ps, SONAR_ERR_PROTOCOL, line, "summary %s: quantile label on %s%s",
                        f->name, f->name, kind_suffix(kind));
        }
        if (kind == KIND_COUNT && !(value >= 0))
            return perr(ps, SONAR_ERR_PROTOCOL, line,
                        "summary %s: %s_count must be a non-negative count, not %g", f->name,
                        f->name, value);
    }

    /* Store. */
    if (r->n_samples == r->cap_samples) {
        size_t cap = r->cap_samples ? r->cap_samples * 2 : 64;
        GROW(ps, r->samples, cap);
        r->cap_samples = cap;
    }
    size_t pos = r->n_samples - ps->meta[fi].start;
    if (pos == ps->side_cap) {
        size_t cap = ps->side_cap ? ps->side_cap * 2 : 64;
        GROW(ps, ps->kind, cap);
        GROW(ps, ps->special, cap);
        ps->side_cap = cap;
    }
    const char *sname = f->name;
    if (kind != KIND_PLAIN) {
        if (ps->suffix_names[kind] == NULL &&
            (ps->suffix_names[kind] = arena_strndup(r, name, nlen)) == NULL)
            return nomem(ps);
        sname = ps->suffix_names[kind];
    }
    sonar_promtext_label *stored = NULL;
    if (n_labels > 0) {
        stored = arena_alloc(r, n_labels * sizeof *stored);
        if (stored == NULL)
            return nomem(ps);
        memcpy(stored, labels, n_labels * sizeof *stored);
        for (size_t i = 0; i < n_labels; i++) {
            ps->prev_label_names[i] = labels[i].name;
            ps->prev_label_lens[i] = lens[i];
        }
    }
    ps->prev_n_labels = n_labels;
    ps->kind[pos] = kind;
    ps->special[pos] = special;
    r->samples[r->n_samples++] = (sonar_promtext_sample){
        .name = sname, .labels = stored, .n_labels = n_labels, .value = value,
        .has_timestamp = has_ts, .timestamp_ms = ts, .line = line};
    return SONAR_OK;
}

static sonar_status parse_line(parser *ps, const char *p, const char *le, size_t line)
{
    const char *q = skip_blanks(p, le);
    if (q == le)
        return SONAR_OK;
    if (*q == '#')
        return parse_comment(ps, q, le, line);
    return parse_sample(ps, q, le, line);
}

sonar_status sonar_promtext_parse(sonar_promtext **out, const char *text, size_t len,
                                  sonar_promtext_error *err)
{
    sonar_promtext_error local;
    if (err == NULL)
        err = &local;
    memset(err, 0, sizeof *err);
    if (out == NULL || (text == NULL && len > 0)) {
        snprintf(err->reason, sizeof err->reason, "missing %s", out == NULL ? "out" : "text");
        return sonar__fail(SONAR_ERR_INVALID, "sonar_promtext_parse: missing %s",
                           out == NULL ? "out" : "text");
    }
    sonar_promtext *r = calloc(1, sizeof *r);
    parser ps = {.r = r, .cur = SIZE_MAX, .err = err, .status = SONAR_OK};
    if (r == NULL) {
        nomem(&ps);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    const char *p = text, *end = text + len;
    size_t line = 0;
    sonar_status st = SONAR_OK;
    while (st == SONAR_OK && p < end) {
        line++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl != NULL ? nl : end;
        if ((size_t)(le - p) > SONAR_PROMTEXT_MAX_LINE)
            st = perr(&ps, SONAR_ERR_LIMIT, line, "line longer than %d bytes",
                      SONAR_PROMTEXT_MAX_LINE);
        else
            st = parse_line(&ps, p, le, line);
        p = nl != NULL ? nl + 1 : end;
    }
    if (st == SONAR_OK)
        st = close_family(&ps);
    if (st == SONAR_OK) {
        /* Families own contiguous runs of samples, in family order. */
        for (size_t i = 0; i < r->n_families; i++) {
            size_t from = ps.meta[i].start;
            size_t to = i + 1 < r->n_families ? ps.meta[i + 1].start : r->n_samples;
            r->families[i].samples = to > from ? r->samples + from : NULL;
            r->families[i].n_samples = to - from;
        }
    }
    free(ps.meta);
    free(ps.kind);
    free(ps.special);
    if (st != SONAR_OK) {
        sonar_promtext_destroy(r);
        if (err->line > 0)
            return sonar__fail(st, "line %zu: %s", err->line, err->reason);
        return sonar__fail(st, "%s", err->reason);
    }
    *out = r;
    return SONAR_OK;
}

void sonar_promtext_destroy(sonar_promtext *r)
{
    if (r == NULL)
        return;
    for (chunk *c = r->chunks, *next; c != NULL; c = next) {
        next = c->next;
        free(c);
    }
    free(r->families);
    free(r->samples);
    free(r->index);
    free(r);
}

size_t sonar_promtext_family_count(const sonar_promtext *r)
{
    return r != NULL ? r->n_families : 0;
}

const sonar_promtext_family *sonar_promtext_family_at(const sonar_promtext *r, size_t i)
{
    return r != NULL && i < r->n_families ? &r->families[i] : NULL;
}

const sonar_promtext_family *sonar_promtext_family_find(const sonar_promtext *r,
                                                        const char *name)
{
    if (r == NULL || name == NULL)
        return NULL;
    size_t i = family_find_idx(r, name, strlen(name));
    return i != SIZE_MAX ? &r->families[i] : NULL;
}

size_t sonar_promtext_sample_count(const sonar_promtext *r)
{
    return r != NULL ? r->n_samples : 0;
}

const char *sonar_promtext_label_get(const sonar_promtext_sample *s, const char *name)
{
    if (s == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < s->n_labels; i++)
        if (strcmp(s->labels[i].name, name) == 0)
            return s->labels[i].value;
    return NULL;
}

const char *sonar_promtext_type_str(sonar_promtext_type type)
{
    switch (type) {
    case SONAR_PROMTEXT_COUNTER: return "counter";
    case SONAR_PROMTEXT_GAUGE: return "gauge";
    case SONAR_PROMTEXT_HISTOGRAM: return "histogram";
    case SONAR_PROMTEXT_SUMMARY: return "summary";
    case SONAR_PROMTEXT_UNTYPED: break;
    }
    return "untyped";
}

bool sonar_promtext_name_valid(const char *name)
{
    if (name == NULL || !metric_start((unsigned char)name[0]))
        return false;
    for (const char *p = name + 1; *p; p++)
        if (!metric_char((unsigned char)*p))
            return false;
    return true;
}

bool sonar_promtext_label_name_valid(const char *name)
{
    if (name == NULL || !label_start((unsigned char)name[0]))
        return false;
    for (const char *p = name + 1; *p; p++)
        if (!label_char((unsigned char)*p))
            return false;
    return true;
}
