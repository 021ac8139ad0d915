/*
 * The sonar wire protocol: JSON messages encoded and decoded with jansson,
 * validated at the boundary. See docs/protocol.md and protocol.h.
 *
 * Shape: every kind has a `<kind>_from_json` that walks a parsed object and
 * fills a struct (validating every field), and a `<kind>_to_json` that
 * builds the object from a struct. Decoders parse, check `type`, then call
 * from_json; encoders call to_json and then run from_json on the result, so
 * an encoder can never emit a message its decoder would refuse.
 */
#include "sonar/protocol.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define ONE_DAY_MS ((int64_t)24 * 60 * 60 * 1000)
#define MAX_COUNT ((int64_t)1000 * 1000 * 1000)
#define HEARTBEAT_MIN_MS 100
#define HEARTBEAT_MAX_MS 3600000
#define WHERE_MAX 160

/* ---- Kinds ------------------------------------------------------------- */

static const struct {
    sonar_msg_kind kind;
    const char *name; /* the <kind> token */
    const char *type; /* full type string, major version 1 */
} kinds[] = {
    {SONAR_MSG_REGISTER, "register", "sonar.register.v1"},
    {SONAR_MSG_LEAVE, "leave", "sonar.leave.v1"},
    {SONAR_MSG_DISCOVER, "discover", "sonar.discover.v1"},
    {SONAR_MSG_CHECK, "check", "sonar.check.v1"},
    {SONAR_MSG_RESULT, "result", "sonar.result.v1"},
    {SONAR_MSG_CHANGE, "change", "sonar.change.v1"},
    {SONAR_MSG_REPORT, "report", "sonar.report.v1"},
    {SONAR_MSG_ERROR, "error", "sonar.error.v1"},
    {SONAR_MSG_GATHER, "gather", "sonar.gather.v1"},
    {SONAR_MSG_SERVICES, "services", "sonar.services.v1"},
    {SONAR_MSG_HISTORY, "history", "sonar.history.v1"},
    {SONAR_MSG_GRAPH, "graph", "sonar.graph.v1"},
};

const char *sonar_msg_kind_type(sonar_msg_kind kind)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (kinds[i].kind == kind)
            return kinds[i].type;
    return NULL;
}

/*
 * Length of the longest prefix of \p s of at most \p max bytes that does
 * not end inside a UTF-8 sequence, so quoted values in error texts stay
 * valid UTF-8 (they travel on in sonar.error.v1 messages).
 */
static int utf8_prefix(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return (int)n;
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
        max--;
    return (int)max;
}

/* "%.*s%s" arguments printing at most 80 bytes of \p s, then "..." if cut. */
#define SHOWN(s) utf8_prefix((s), 80), (s), (strlen(s) > 80 ? "..." : "")

/* Maps a type string to a kind; SONAR_ERR_VERSION for anything unknown. */
static sonar_status kind_from_type(const char *type, sonar_msg_kind *out)
{
    static const char prefix[] = "sonar.";
    size_t plen = sizeof prefix - 1;
    const char *dot = strrchr(type, '.');
    if (strncmp(type, prefix, plen) != 0 || dot == NULL || dot < type + plen)
        return sonar__fail(SONAR_ERR_VERSION,
                           "unknown message type \"%.*s%s\": expected sonar.<kind>.v<major>",
                           SHOWN(type));
    const char *kind = type + plen;
    size_t klen = (size_t)(dot - kind);
    const char *ver = dot + 1;
    bool ver_ok = ver[0] == 'v' && ver[1] != '\0';
    for (const char *p = ver + 1; ver_ok && *p; p++)
        ver_ok = *p >= '0' && *p <= '9';
    for (size_t i = 0; ver_ok && i < sizeof kinds / sizeof kinds[0]; i++) {
        if (strlen(kinds[i].name) != klen || memcmp(kinds[i].name, kind, klen) != 0)
            continue;
        if (strcmp(ver, "v1") != 0)
            return sonar__fail(SONAR_ERR_VERSION,
                               "unsupported message version \"%.*s%s\": this build speaks %s",
                               SHOWN(type), kinds[i].type);
        *out = kinds[i].kind;
        return SONAR_OK;
    }
    return sonar__fail(SONAR_ERR_VERSION, "unknown message type \"%.*s%s\"", SHOWN(type));
}

/* ---- Outcomes ---------------------------------------------------------- */

const char *sonar_outcome_str(sonar_outcome o)
{
    switch (o) {
    case SONAR_PASS: return "pass";
    case SONAR_FAIL: return "fail";
    case SONAR_NONE: return "none";
    case SONAR_INCOMPLETE: return "incomplete";
    }
    return "invalid";
}

sonar_status sonar_outcome_parse(const char *s, sonar_outcome *out)
{
    static const sonar_outcome all[] = {SONAR_PASS, SONAR_FAIL, SONAR_NONE, SONAR_INCOMPLETE};
    if (s == NULL || out == NULL)
        return sonar__fail(SONAR_ERR_PROTOCOL, "outcome is missing");
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(s, sonar_outcome_str(all[i])) == 0) {
            *out = all[i];
            return SONAR_OK;
        }
    }
    return sonar__fail(SONAR_ERR_PROTOCOL,
                       "outcome \"%.*s%s\" is not one of pass, fail, none, incomplete",
                       SHOWN(s));
}

/* Bit for an outcome in an "allowed" mask. */
#define OUT_BIT(o) (1u << (unsigned)(o))
#define ALLOW_PF (OUT_BIT(SONAR_PASS) | OUT_BIT(SONAR_FAIL))
#define ALLOW_PFN (ALLOW_PF | OUT_BIT(SONAR_NONE))
#define ALLOW_PFI (ALLOW_PF | OUT_BIT(SONAR_INCOMPLETE))
#define ALLOW_ALL (ALLOW_PFN | OUT_BIT(SONAR_INCOMPLETE))

/* ---- Field helpers ----------------------------------------------------- */

/* How a string field is checked. */
typedef enum str_rule {
    RULE_NAME,     /* sonar_name_valid (SONAR_ERR_INVALID otherwise) */
    RULE_TEXT,     /* 1..256 bytes printable UTF-8 */
    RULE_ADDRESS,  /* 1..2048 bytes printable UTF-8 */
    RULE_ENDPOINT, /* "nats" or an http(s) URL, 1..2048 bytes printable */
    RULE_MESSAGE,  /* 0..4096 bytes UTF-8, line breaks allowed */
    RULE_TIME,     /* RFC 3339 timestamp */
} str_rule;

static void join_where(char *buf, const char *pre, const char *key)
{
    if (pre == NULL || *pre == '\0')
        snprintf(buf, WHERE_MAX, "%.*s", utf8_prefix(key, WHERE_MAX - 1), key);
    else
        snprintf(buf, WHERE_MAX, "%.*s.%.*s", utf8_prefix(pre, 100), pre, utf8_prefix(key, 50),
                 key);
}

static void index_where(char *buf, const char *pre, size_t i)
{
    snprintf(buf, WHERE_MAX, "%.*s[%zu]", WHERE_MAX - 24, pre, i);
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

/*
 * Decodes one UTF-8 sequence at \p s (n bytes left); returns its length and
 * the code point, or 0 when the sequence is invalid.
 */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t len;
    uint32_t min;
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2, min = 0x80, *cp = s[0] & 0x1fu;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3, min = 0x800, *cp = s[0] & 0x0fu;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4, min = 0x10000, *cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        *cp = (*cp << 6) | (s[i] & 0x3fu);
    }
    if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff))
        return 0;
    return len;
}

/* Checks UTF-8 validity and, when \p printable, refuses control characters. */
static sonar_status check_utf8(const char *where, const char *s, size_t len, bool printable)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp = 0;
        size_t n = utf8_next(p + i, len - i, &cp);
        if (n == 0)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is not valid UTF-8", where);
        if (cp == 0)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" contains a NUL byte", where);
        if (printable && (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)))
            return sonar__fail(SONAR_ERR_PROTOCOL,
                               "field \"%s\" contains control character U+%04" PRIX32
                               " at byte %zu", where, cp, i);
        i += n;
    }
    return SONAR_OK;
}

static bool digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" */
static bool rfc3339_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2) ||
        s[13] != ':' || !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
        return false;
    int month = (s[5] - '0') * 10 + (s[6] - '0');
    int day = (s[8] - '0') * 10 + (s[9] - '0');
    int hour = (s[11] - '0') * 10 + (s[12] - '0');
    int min = (s[14] - '0') * 10 + (s[15] - '0');
    int sec = (s[17] - '0') * 10 + (s[18] - '0');
    if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60)
        return false;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        const char *start = p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == start)
            return false;
    }
    if ((*p == 'Z' || *p == 'z') && p[1] == '\0')
        return true;
    return (*p == '+' || *p == '-') && strlen(p) == 6 && digits(p + 1, 2) && p[3] == ':' &&
           digits(p + 4, 2);
}

/* Validates a string value against \p rule; \p where names the field. */
static sonar_status check_string(const char *where, const char *s, size_t len, str_rule rule)
{
    if (strlen(s) != len)
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" contains a NUL byte", where);
    size_t min = 1, max = SONAR_MAX_TEXT_BYTES;
    bool printable = true;
    switch (rule) {
    case RULE_NAME:
        if (check_utf8(where, s, len, false) != SONAR_OK)
            return SONAR_ERR_PROTOCOL;
        if (!sonar_name_valid(s))
            return sonar__fail(SONAR_ERR_INVALID,
                               "%s \"%.*s%s\" is invalid: it must match ^[A-Za-z0-9_-]{1,64}$",
                               where, SHOWN(s));
        return SONAR_OK;
    case RULE_TEXT:
    case RULE_TIME:
        break;
    case RULE_ADDRESS:
    case RULE_ENDPOINT:
        max = SONAR_MAX_ADDRESS_BYTES;
        break;
    case RULE_MESSAGE:
        min = 0, max = SONAR_MAX_MESSAGE_TEXT, printable = false;
        break;
    }
    if (len < min)
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is empty", where);
    if (len > max)
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is %zu bytes, over the limit of %zu",
                           where, len, max);
    sonar_status st = check_utf8(where, s, len, printable);
    if (st != SONAR_OK)
        return st;
    if (rule == RULE_TIME && !rfc3339_valid(s))
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"%s\" is \"%.*s%s\", not an RFC 3339 timestamp", where,
                           SHOWN(s));
    if (rule == RULE_ENDPOINT && strcmp(s, "nats") != 0 && strncmp(s, "http://", 7) != 0 &&
        strncmp(s, "https://", 8) != 0)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"%s\" is \"%.*s%s\": expected \"nats\" or an http(s):// URL",
                           where, SHOWN(s));
    return SONAR_OK;
}

/* Validates a JSON value as a string under \p rule and returns a new copy. */
static sonar_status take_string(const char *where, const json_t *v, str_rule rule, char **out)
{
    if (!json_is_string(v))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be a string, got %s", where,
                           json_type_name(v));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    sonar_status st = check_string(where, s, len, rule);
    if (st != SONAR_OK)
        return st;
    char *copy = strdup(s);
    if (copy == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory copying field \"%s\"", where);
    *out = copy;
    return SONAR_OK;
}

/*
 * Reads string field \p key of \p obj. A missing (or, when optional, null)
 * field leaves *out alone and is an error only when \p required.
 */
static sonar_status get_string(const json_t *obj, const char *pre, const char *key,
                               str_rule rule, bool required, char **out)
{
    char where[WHERE_MAX];
    join_where(where, pre, key);
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || (!required && json_is_null(v))) {
        if (required)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is missing", where);
        return SONAR_OK;
    }
    return take_string(where, v, rule, out);
}

static sonar_status get_int(const json_t *obj, const char *pre, const char *key, bool required,
                            int64_t min, int64_t max, int64_t *out)
{
    char where[WHERE_MAX];
    join_where(where, pre, key);
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || (!required && json_is_null(v))) {
        if (required)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is missing", where);
        return SONAR_OK;
    }
    if (!json_is_integer(v))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be an integer, got %s", where,
                           json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < min || x > max)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"%s\" is %" JSON_INTEGER_FORMAT ", out of range %" PRId64
                           "..%" PRId64, where, x, min, max);
    *out = (int64_t)x;
    return SONAR_OK;
}

/* "pass|fail|..." for the outcomes in \p allowed. */
static void allowed_list(char list[64], unsigned allowed)
{
    static const sonar_outcome all[] = {SONAR_PASS, SONAR_FAIL, SONAR_NONE, SONAR_INCOMPLETE};
    list[0] = '\0';
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (!(allowed & OUT_BIT(all[i])))
            continue;
        if (list[0])
            strcat(list, "|");
        strcat(list, sonar_outcome_str(all[i]));
    }
}

static sonar_status get_outcome(const json_t *obj, const char *pre, const char *key,
                                unsigned allowed, sonar_outcome *out)
{
    char where[WHERE_MAX];
    join_where(where, pre, key);
    char *s = NULL;
    sonar_status st = get_string(obj, pre, key, RULE_TEXT, true, &s);
    if (st != SONAR_OK)
        return st;
    sonar_outcome o = SONAR_PASS;
    bool ok = sonar_outcome_parse(s, &o) == SONAR_OK && (allowed & OUT_BIT(o));
    if (!ok) {
        char list[64];
        allowed_list(list, allowed);
        st = sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is \"%.*s%s\": expected %s", where,
                         SHOWN(s), list);
    } else {
        *out = o;
    }
    free(s);
    return st;
}

/* Returns the array at \p key (NULL when absent and optional) after checking its length. */
static sonar_status get_array(const json_t *obj, const char *key, bool required,
                              const json_t **out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || (!required && json_is_null(v))) {
        if (required)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is missing", key);
        *out = NULL;
        return SONAR_OK;
    }
    if (!json_is_array(v))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be an array, got %s", key,
                           json_type_name(v));
    if (json_array_size(v) > SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"%s\" has %zu entries, over the limit of %d", key,
                           json_array_size(v), SONAR_MAX_LIST);
    *out = v;
    return SONAR_OK;
}

/* Reads an array of strings into a new vector (count written at once, so finish works). */
static sonar_status get_string_list(const json_t *obj, const char *pre, const char *key,
                                    str_rule rule, bool required, char ***out, size_t *out_n)
{
    char where[WHERE_MAX];
    join_where(where, pre, key);
    const json_t *arr = json_object_get(obj, key);
    if (arr == NULL || (!required && json_is_null(arr))) {
        if (required)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is missing", where);
        return SONAR_OK;
    }
    if (!json_is_array(arr))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be an array, got %s", where,
                           json_type_name(arr));
    size_t n = json_array_size(arr);
    if (n > SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"%s\" has %zu entries, over the limit of %d", where, n,
                           SONAR_MAX_LIST);
    if (n == 0)
        return SONAR_OK;
    char **v = calloc(n, sizeof *v);
    if (v == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory reading field \"%s\"", where);
    *out = v;
    *out_n = n;
    for (size_t i = 0; i < n; i++) {
        char item[WHERE_MAX];
        index_where(item, where, i);
        sonar_status st = take_string(item, json_array_get(arr, i), rule, &v[i]);
        if (st != SONAR_OK)
            return st;
        for (size_t j = 0; j < i; j++)
            if (strcmp(v[j], v[i]) == 0)
                return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" lists \"%s\" twice", where,
                                   v[i]);
    }
    return SONAR_OK;
}

static void free_string_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* ---- Building JSON ----------------------------------------------------- */

/* Sets \p key to string \p s; a NULL \p s is omitted (the validation pass reports it). */
static sonar_status put_str(json_t *obj, const char *key, const char *s)
{
    if (s == NULL)
        return SONAR_OK;
    json_t *v = json_string(s);
    if (v == NULL)
        return check_utf8(key, s, strlen(s), false) != SONAR_OK
                   ? SONAR_ERR_PROTOCOL
                   : sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding field \"%s\"", key);
    if (json_object_set_new(obj, key, v) != 0)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding field \"%s\"", key);
    return SONAR_OK;
}

static sonar_status put_int(json_t *obj, const char *key, int64_t x)
{
    if (json_object_set_new(obj, key, json_integer((json_int_t)x)) != 0)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding field \"%s\"", key);
    return SONAR_OK;
}

static sonar_status put_json(json_t *obj, const char *key, json_t *v /* takes */)
{
    if (v == NULL || json_object_set_new(obj, key, v) != 0)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding field \"%s\"", key);
    return SONAR_OK;
}

static sonar_status put_str_list(json_t *obj, const char *key, char *const *v, size_t n)
{
    if (n > 0 && v == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "field \"%s\" has %zu entries but no array", key,
                           n);
    json_t *arr = json_array();
    sonar_status st = put_json(obj, key, arr);
    for (size_t i = 0; st == SONAR_OK && i < n; i++) {
        if (v[i] == NULL)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s[%zu]\" is missing", key, i);
        json_t *s = json_string(v[i]);
        if (s == NULL) {
            char item[WHERE_MAX];
            index_where(item, key, i);
            return check_utf8(item, v[i], strlen(v[i]), false) != SONAR_OK
                       ? SONAR_ERR_PROTOCOL
                       : sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding \"%s\"", key);
        }
        if (json_array_append_new(arr, s) != 0)
            st = sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding field \"%s\"", key);
    }
    return st;
}

static sonar_status new_message(sonar_msg_kind kind, json_t **out)
{
    json_t *root = json_object();
    if (root == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding a message");
    sonar_status st = put_str(root, "type", sonar_msg_kind_type(kind));
    if (st != SONAR_OK) {
        json_decref(root);
        return st;
    }
    *out = root;
    return SONAR_OK;
}

/* Serialises \p root compactly and checks the size limit. */
static sonar_status dump_message(const json_t *root, char **out_json)
{
    char *text = json_dumps(root, JSON_COMPACT);
    if (text == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory serialising a message");
    size_t len = strlen(text);
    if (len > SONAR_MAX_MESSAGE_BYTES) {
        free(text);
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "message would be %zu bytes, over the limit of %d bytes", len,
                           SONAR_MAX_MESSAGE_BYTES);
    }
    *out_json = text;
    return SONAR_OK;
}

/* ---- Parsing ----------------------------------------------------------- */

/*
 * Replaces invalid UTF-8 and control characters in \p s with '?' (jansson
 * quotes raw input bytes in its error text: "... near '\xff'").
 */
static void sanitize_text(char *s)
{
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0;
        size_t n = utf8_next((const unsigned char *)s + i, len - i, &cp);
        if (n == 0 || cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) {
            s[i++] = '?';
            continue;
        }
        i += n;
    }
}

/* Parses \p data as a JSON object and maps its type to a kind. */
static sonar_status parse_message(const char *data, size_t len, json_t **out_root,
                                  sonar_msg_kind *out_kind)
{
    if (data == NULL || len == 0)
        return sonar__fail(SONAR_ERR_PROTOCOL, "empty message: expected a JSON object");
    if (len > SONAR_MAX_MESSAGE_BYTES)
        return sonar__fail(SONAR_ERR_PROTOCOL, "message is %zu bytes, over the limit of %d bytes",
                           len, SONAR_MAX_MESSAGE_BYTES);
    /*
     * JSON_ALLOW_NUL: a "\u0000" is then refused by the field checks, which
     * can name the field; JSON_DECODE_ANY: a scalar root gets a clear error.
     */
    json_error_t jerr;
    json_t *root =
        json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        sanitize_text(jerr.text);
        return sonar__fail(SONAR_ERR_PROTOCOL, "malformed JSON at line %d column %d: %s",
                           jerr.line, jerr.column, jerr.text);
    }
    sonar_status st = SONAR_OK;
    const json_t *type = json_object_get(root, "type");
    if (!json_is_object(root))
        st = sonar__fail(SONAR_ERR_PROTOCOL, "message is %s, expected a JSON object",
                         json_type_name(root));
    else if (type == NULL)
        st = sonar__fail(SONAR_ERR_PROTOCOL, "field \"type\" is missing");
    else if (!json_is_string(type))
        st = sonar__fail(SONAR_ERR_PROTOCOL, "field \"type\" must be a string, got %s",
                         json_type_name(type));
    else if (strlen(json_string_value(type)) != json_string_length(type))
        st = sonar__fail(SONAR_ERR_PROTOCOL, "field \"type\" contains a NUL byte");
    else
        st = kind_from_type(json_string_value(type), out_kind);
    if (st != SONAR_OK) {
        json_decref(root);
        return st;
    }
    *out_root = root;
    return SONAR_OK;
}

/* Parses and insists on kind \p want. */
static sonar_status parse_expect(const char *data, size_t len, sonar_msg_kind want,
                                 json_t **out_root)
{
    json_t *root = NULL;
    sonar_msg_kind kind = SONAR_MSG_UNKNOWN;
    sonar_status st = parse_message(data, len, &root, &kind);
    if (st != SONAR_OK)
        return st;
    if (kind != want) {
        json_decref(root);
        return sonar__fail(SONAR_ERR_PROTOCOL, "expected %s, got %s", sonar_msg_kind_type(want),
                           sonar_msg_kind_type(kind));
    }
    *out_root = root;
    return SONAR_OK;
}

sonar_status sonar_msg_peek(const char *data, size_t len, sonar_msg_kind *out_kind)
{
    if (out_kind == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_msg_peek: out_kind is NULL");
    json_t *root = NULL;
    sonar_msg_kind kind = SONAR_MSG_UNKNOWN;
    sonar_status st = parse_message(data, len, &root, &kind);
    if (st != SONAR_OK)
        return st;
    json_decref(root);
    *out_kind = kind;
    return SONAR_OK;
}

/*
 * The generic decode and encode drivers. from_json fills a zeroed struct
 * and may leave it half-filled on failure; finish releases that.
 */
typedef sonar_status (*from_json_fn)(const json_t *root, void *msg);
typedef sonar_status (*to_json_fn)(const void *msg, json_t *root);
typedef void (*finish_fn)(void *msg);

static sonar_status decode_generic(sonar_msg_kind kind, const char *data, size_t len, void *out,
                                   void *local, size_t size, from_json_fn from,
                                   finish_fn finish)
{
    if (out == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "decode %s: out is NULL", sonar_msg_kind_type(kind));
    json_t *root = NULL;
    sonar_status st = parse_expect(data, len, kind, &root);
    if (st != SONAR_OK)
        return st;
    memset(local, 0, size);
    st = from(root, local);
    json_decref(root);
    if (st != SONAR_OK) {
        finish(local);
        return st;
    }
    memcpy(out, local, size);
    return SONAR_OK;
}

static sonar_status encode_generic(sonar_msg_kind kind, const void *msg, char **out_json,
                                   void *check, size_t size, to_json_fn to, from_json_fn from,
                                   finish_fn finish)
{
    if (msg == NULL || out_json == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "encode %s: NULL argument",
                           sonar_msg_kind_type(kind));
    json_t *root = NULL;
    sonar_status st = new_message(kind, &root);
    if (st != SONAR_OK)
        return st;
    st = to(msg, root);
    if (st == SONAR_OK) {
        /* Never emit what a decoder would refuse. */
        memset(check, 0, size);
        st = from(root, check);
        finish(check);
    }
    if (st == SONAR_OK)
        st = dump_message(root, out_json);
    json_decref(root);
    return st;
}


/* finish_fn adapters (calling through a cast function pointer is undefined). */
#define FINISH_ANY(kind, type)                                                    \
    static void kind##_finish_any(void *msg) { sonar_##kind##_finish((type *)msg); }

/*
 * The public sonar_<kind>_encode / sonar_<kind>_decode of each kind: thin
 * wrappers over encode_generic / decode_generic (declared in protocol.h).
 */
#define DEFINE_ENCODE(fn, type, KIND, to, from, fin)                                  \
    sonar_status fn(const type *msg, char **out_json)                                 \
    {                                                                                 \
        type check;                                                                   \
        return encode_generic(KIND, msg, out_json, &check, sizeof check, to, from, fin); \
    }
#define DEFINE_DECODE(fn, type, KIND, from, fin)                                      \
    sonar_status fn(type *out, const char *data, size_t len)                          \
    {                                                                                 \
        type local;                                                                   \
        return decode_generic(KIND, data, len, out, &local, sizeof local, from, fin); \
    }

/* ---- Check results (shared by result and report) ----------------------- */

static void check_result_finish(sonar_check_result *c)
{
    free(c->name);
    free(c->message);
    memset(c, 0, sizeof *c);
}

static void check_results_free(sonar_check_result *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        check_result_finish(&v[i]);
    free(v);
}

static sonar_status check_result_from_json(const json_t *v, const char *where,
                                           sonar_check_result *c)
{
    if (!json_is_object(v))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be an object, got %s", where,
                           json_type_name(v));
    sonar_status st = get_string(v, where, "name", RULE_TEXT, true, &c->name);
    if (st == SONAR_OK)
        st = get_outcome(v, where, "status", ALLOW_PF, &c->status);
    if (st == SONAR_OK)
        st = get_int(v, where, "duration_ms", false, 0, ONE_DAY_MS, &c->duration_ms);
    if (st == SONAR_OK)
        st = get_string(v, where, "message", RULE_MESSAGE, false, &c->message);
    if (st == SONAR_OK && c->message == NULL && (c->message = strdup("")) == NULL)
        st = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    return st;
}

static sonar_status check_results_from_json(const json_t *obj, const char *pre, bool required,
                                            sonar_check_result **out, size_t *out_n)
{
    char where[WHERE_MAX];
    join_where(where, pre, "checks");
    const json_t *arr = json_object_get(obj, "checks");
    if (arr == NULL || (!required && json_is_null(arr))) {
        if (required)
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is missing", where);
        return SONAR_OK;
    }
    if (!json_is_array(arr))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be an array, got %s", where,
                           json_type_name(arr));
    size_t n = json_array_size(arr);
    if (n > SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"%s\" has %zu entries, over the limit of %d", where, n,
                           SONAR_MAX_LIST);
    if (n == 0)
        return SONAR_OK;
    sonar_check_result *v = calloc(n, sizeof *v);
    if (v == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory reading field \"%s\"", where);
    *out = v;
    *out_n = n;
    for (size_t i = 0; i < n; i++) {
        char item[WHERE_MAX];
        index_where(item, where, i);
        sonar_status st = check_result_from_json(json_array_get(arr, i), item, &v[i]);
        if (st != SONAR_OK)
            return st;
    }
    return SONAR_OK;
}

static sonar_status check_results_to_json(json_t *obj, const sonar_check_result *v, size_t n)
{
    if (n > 0 && v == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "field \"checks\" has %zu entries but no array",
                           n);
    json_t *arr = json_array();
    sonar_status st = put_json(obj, "checks", arr);
    for (size_t i = 0; st == SONAR_OK && i < n; i++) {
        json_t *c = json_object();
        st = c == NULL || json_array_append_new(arr, c) != 0
                 ? sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding field \"checks\"")
                 : SONAR_OK;
        if (st == SONAR_OK)
            st = put_str(c, "name", v[i].name);
        if (st == SONAR_OK)
            st = put_str(c, "status", sonar_outcome_str(v[i].status));
        if (st == SONAR_OK)
            st = put_int(c, "duration_ms", v[i].duration_ms);
        if (st == SONAR_OK)
            st = put_str(c, "message", v[i].message ? v[i].message : "");
    }
    return st;
}

sonar_status sonar_check_result_copy(sonar_check_result *dst, const sonar_check_result *src)
{
    if (dst == NULL || src == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_check_result_copy: NULL argument");
    sonar_check_result c = *src;
    c.name = sonar__strdup(src->name);
    c.message = sonar__strdup(src->message);
    if ((src->name && !c.name) || (src->message && !c.message)) {
        check_result_finish(&c);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory copying a check result");
    }
    *dst = c;
    return SONAR_OK;
}

/* ---- sonar.register.v1 ------------------------------------------------- */

void sonar_register_finish(sonar_register_msg *m)
{
    if (m == NULL)
        return;
    free(m->service);
    free(m->instance);
    free(m->version);
    free(m->address);
    free_string_list(m->depends_on, m->n_depends_on);
    for (size_t i = 0; i < m->n_checks; i++) {
        free(m->checks[i].dependency);
        free_string_list(m->checks[i].names, m->checks[i].n_names);
    }
    free(m->checks);
    free(m->health);
    free(m->metrics);
    json_decref(m->metadata);
    memset(m, 0, sizeof *m);
}

FINISH_ANY(register, sonar_register_msg)

static sonar_status metadata_from_json(const json_t *v, json_t **out)
{
    if (v == NULL || json_is_null(v))
        return SONAR_OK;
    if (!json_is_object(v))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"metadata\" must be an object, got %s",
                           json_type_name(v));
    if (json_object_size(v) > SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"metadata\" has %zu entries, over the limit of %d",
                           json_object_size(v), SONAR_MAX_LIST);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        char where[WHERE_MAX];
        join_where(where, "metadata", key);
        sonar_status st = check_string("metadata key", key, strlen(key), RULE_TEXT);
        if (st != SONAR_OK)
            return st;
        if (!json_is_string(val))
            return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be a string, got %s",
                               where, json_type_name(val));
        st = check_string(where, json_string_value(val), json_string_length(val),
                          RULE_MESSAGE);
        if (st != SONAR_OK)
            return st;
    }
    json_t *copy = json_deep_copy(v);
    if (copy == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory copying field \"metadata\"");
    *out = copy;
    return SONAR_OK;
}

static sonar_status dep_checks_from_json(const json_t *root, sonar_register_msg *m)
{
    const json_t *obj = json_object_get(root, "checks");
    if (obj == NULL || json_is_null(obj))
        return SONAR_OK;
    if (!json_is_object(obj))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"checks\" must be an object, got %s",
                           json_type_name(obj));
    size_t n = json_object_size(obj);
    if (n > SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"checks\" has %zu entries, over the limit of %d", n,
                           SONAR_MAX_LIST);
    if (n == 0)
        return SONAR_OK;
    m->checks = calloc(n, sizeof *m->checks);
    if (m->checks == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory reading field \"checks\"");
    m->n_checks = n;
    size_t i = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        (void)val;
        sonar_status st = check_string("checks key", key, strlen(key), RULE_NAME);
        if (st != SONAR_OK)
            return st;
        sonar_dep_checks *d = &m->checks[i++];
        if ((d->dependency = strdup(key)) == NULL)
            return sonar__fail(SONAR_ERR_NOMEM, "out of memory reading field \"checks\"");
        st = get_string_list(obj, "checks", key, RULE_TEXT, true, &d->names, &d->n_names);
        if (st != SONAR_OK)
            return st;
    }
    return SONAR_OK;
}

static sonar_status register_from_json(const json_t *root, void *msg)
{
    sonar_register_msg *m = msg;
    sonar_status st = get_string(root, NULL, "service", RULE_NAME, true, &m->service);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "instance", RULE_TEXT, true, &m->instance);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "version", RULE_TEXT, true, &m->version);
    if (st == SONAR_OK) {
        const json_t *a = json_object_get(root, "address");
        if (json_is_string(a) && json_string_length(a) == 0)
            m->address = strdup("");
        else
            st = get_string(root, NULL, "address", RULE_ADDRESS, false, &m->address);
        if (st == SONAR_OK && m->address == NULL && (m->address = strdup("")) == NULL)
            st = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    }
    if (st == SONAR_OK)
        st = get_string_list(root, NULL, "depends_on", RULE_NAME, false, &m->depends_on,
                             &m->n_depends_on);
    if (st == SONAR_OK)
        st = dep_checks_from_json(root, m);
    if (st == SONAR_OK)
        st = get_int(root, NULL, "heartbeat_ms", true, HEARTBEAT_MIN_MS, HEARTBEAT_MAX_MS,
                     &m->heartbeat_ms);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "health", RULE_ENDPOINT, false, &m->health);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "metrics", RULE_ENDPOINT, false, &m->metrics);
    if (st == SONAR_OK) {
        const json_t *a = json_object_get(root, "answers_checks");
        if (a != NULL && !json_is_null(a) && !json_is_boolean(a))
            st = sonar__fail(SONAR_ERR_PROTOCOL,
                             "field \"answers_checks\" must be a boolean, got %s",
                             json_type_name(a));
        else
            m->no_check_endpoint = json_is_false(a);
    }
    if (st == SONAR_OK)
        st = metadata_from_json(json_object_get(root, "metadata"), &m->metadata);
    return st;
}

static sonar_status register_to_json(const void *msg, json_t *root)
{
    const sonar_register_msg *m = msg;
    sonar_status st = put_str(root, "service", m->service);
    if (st == SONAR_OK)
        st = put_str(root, "instance", m->instance);
    if (st == SONAR_OK)
        st = put_str(root, "version", m->version);
    if (st == SONAR_OK && m->address != NULL && m->address[0] != '\0')
        st = put_str(root, "address", m->address);
    if (st == SONAR_OK)
        st = put_str_list(root, "depends_on", m->depends_on, m->n_depends_on);
    if (st == SONAR_OK && m->n_checks > 0 && m->checks == NULL)
        st = sonar__fail(SONAR_ERR_INVALID, "field \"checks\" has %zu entries but no array",
                         m->n_checks);
    if (st == SONAR_OK) {
        json_t *checks = json_object();
        st = put_json(root, "checks", checks);
        for (size_t i = 0; st == SONAR_OK && i < m->n_checks; i++) {
            const sonar_dep_checks *d = &m->checks[i];
            if (d->dependency == NULL)
                return sonar__fail(SONAR_ERR_PROTOCOL, "checks[%zu].dependency is missing", i);
            st = check_string("checks key", d->dependency, strlen(d->dependency), RULE_NAME);
            if (st == SONAR_OK && json_object_get(checks, d->dependency) != NULL)
                st = sonar__fail(SONAR_ERR_PROTOCOL, "field \"checks\" lists \"%s\" twice",
                                 d->dependency);
            if (st == SONAR_OK)
                st = put_str_list(checks, d->dependency, d->names, d->n_names);
        }
    }
    if (st == SONAR_OK)
        st = put_int(root, "heartbeat_ms", m->heartbeat_ms);
    if (st == SONAR_OK)
        st = put_str(root, "health", m->health);
    if (st == SONAR_OK)
        st = put_str(root, "metrics", m->metrics);
    if (st == SONAR_OK && m->no_check_endpoint)
        st = put_json(root, "answers_checks", json_false());
    if (st == SONAR_OK && m->metadata != NULL)
        st = put_json(root, "metadata", json_deep_copy(m->metadata));
    return st;
}

DEFINE_ENCODE(sonar_register_encode, sonar_register_msg, SONAR_MSG_REGISTER,
              register_to_json, register_from_json, register_finish_any)

DEFINE_DECODE(sonar_register_decode, sonar_register_msg, SONAR_MSG_REGISTER,
              register_from_json, register_finish_any)

sonar_status sonar_register_copy(sonar_register_msg *dst, const sonar_register_msg *src)
{
    if (dst == NULL || src == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_register_copy: NULL argument");
    sonar_register_msg c;
    memset(&c, 0, sizeof c);
    bool ok = true;
#define DUP(field) do { c.field = sonar__strdup(src->field); ok = ok && (!src->field || c.field); } while (0)
    DUP(service);
    DUP(instance);
    DUP(version);
    DUP(address);
    DUP(health);
    DUP(metrics);
#undef DUP
    c.heartbeat_ms = src->heartbeat_ms;
    c.no_check_endpoint = src->no_check_endpoint;
    if (ok && src->n_depends_on > 0) {
        ok = (c.depends_on = calloc(src->n_depends_on, sizeof *c.depends_on)) != NULL;
        if (ok)
            c.n_depends_on = src->n_depends_on;
        for (size_t i = 0; ok && i < src->n_depends_on; i++)
            ok = (c.depends_on[i] = sonar__strdup(src->depends_on[i])) != NULL ||
                 src->depends_on[i] == NULL;
    }
    if (ok && src->n_checks > 0) {
        ok = (c.checks = calloc(src->n_checks, sizeof *c.checks)) != NULL;
        if (ok)
            c.n_checks = src->n_checks;
        for (size_t i = 0; ok && i < src->n_checks; i++) {
            const sonar_dep_checks *s = &src->checks[i];
            sonar_dep_checks *d = &c.checks[i];
            ok = (d->dependency = sonar__strdup(s->dependency)) != NULL || !s->dependency;
            if (ok && s->n_names > 0) {
                ok = (d->names = calloc(s->n_names, sizeof *d->names)) != NULL;
                if (ok)
                    d->n_names = s->n_names;
                for (size_t j = 0; ok && j < s->n_names; j++)
                    ok = (d->names[j] = sonar__strdup(s->names[j])) != NULL || !s->names[j];
            }
        }
    }
    if (ok && src->metadata != NULL)
        ok = (c.metadata = json_deep_copy(src->metadata)) != NULL;
    if (!ok) {
        sonar_register_finish(&c);
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory copying a registration");
    }
    *dst = c;
    return SONAR_OK;
}

/* ---- sonar.leave.v1 ---------------------------------------------------- */

void sonar_leave_finish(sonar_leave_msg *m)
{
    if (m == NULL)
        return;
    free(m->service);
    free(m->instance);
    memset(m, 0, sizeof *m);
}

FINISH_ANY(leave, sonar_leave_msg)

static sonar_status leave_from_json(const json_t *root, void *msg)
{
    sonar_leave_msg *m = msg;
    sonar_status st = get_string(root, NULL, "service", RULE_NAME, true, &m->service);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "instance", RULE_TEXT, true, &m->instance);
    return st;
}

static sonar_status leave_to_json(const void *msg, json_t *root)
{
    const sonar_leave_msg *m = msg;
    sonar_status st = put_str(root, "service", m->service);
    if (st == SONAR_OK)
        st = put_str(root, "instance", m->instance);
    return st;
}

DEFINE_ENCODE(sonar_leave_encode, sonar_leave_msg, SONAR_MSG_LEAVE,
              leave_to_json, leave_from_json, leave_finish_any)

DEFINE_DECODE(sonar_leave_decode, sonar_leave_msg, SONAR_MSG_LEAVE,
              leave_from_json, leave_finish_any)

/* ---- sonar.discover ---------------------------------------------------- */

sonar_status sonar_discover_decode(const char *data, size_t len)
{
    if (len == 0)
        return SONAR_OK;
    json_t *root = NULL;
    sonar_status st = parse_expect(data, len, SONAR_MSG_DISCOVER, &root);
    json_decref(root);
    return st;
}

sonar_status sonar_discover_encode(char **out_json)
{
    if (out_json == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_discover_encode: out_json is NULL");
    json_t *root = NULL;
    sonar_status st = new_message(SONAR_MSG_DISCOVER, &root);
    if (st != SONAR_OK)
        return st;
    st = dump_message(root, out_json);
    json_decref(root);
    return st;
}

/* ---- sonar.check.v1 / sonar.change.v1 ---------------------------------- */

void sonar_check_finish(sonar_check_msg *m)
{
    if (m == NULL)
        return;
    free(m->change_id);
    free(m->service);
    free(m->version);
    free(m->address);
    memset(m, 0, sizeof *m);
}

FINISH_ANY(check, sonar_check_msg)

static sonar_status checklike_from_json(const json_t *root, sonar_check_msg *m, bool is_change)
{
    sonar_status st = get_string(root, NULL, "change_id", RULE_NAME, !is_change, &m->change_id);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "service", RULE_NAME, true, &m->service);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "version", RULE_TEXT, true, &m->version);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "address", RULE_ADDRESS, true, &m->address);
    if (st == SONAR_OK)
        st = get_int(root, NULL, "timeout_ms", !is_change, 1, SONAR_MAX_TIMEOUT_MS,
                     &m->timeout_ms);
    return st;
}

static sonar_status check_from_json(const json_t *root, void *msg)
{
    return checklike_from_json(root, msg, false);
}

static sonar_status change_from_json(const json_t *root, void *msg)
{
    return checklike_from_json(root, msg, true);
}

static sonar_status check_to_json(const void *msg, json_t *root)
{
    const sonar_check_msg *m = msg;
    sonar_status st = put_str(root, "change_id", m->change_id);
    if (st == SONAR_OK)
        st = put_str(root, "service", m->service);
    if (st == SONAR_OK)
        st = put_str(root, "version", m->version);
    if (st == SONAR_OK)
        st = put_str(root, "address", m->address);
    /* In a change, 0 means "absent: the coordinator picks its default". */
    if (st == SONAR_OK && m->timeout_ms != 0)
        st = put_int(root, "timeout_ms", m->timeout_ms);
    return st;
}

DEFINE_ENCODE(sonar_check_encode, sonar_check_msg, SONAR_MSG_CHECK,
              check_to_json, check_from_json, check_finish_any)

DEFINE_DECODE(sonar_check_decode, sonar_check_msg, SONAR_MSG_CHECK,
              check_from_json, check_finish_any)

DEFINE_ENCODE(sonar_change_encode, sonar_change_msg, SONAR_MSG_CHANGE,
              check_to_json, change_from_json, check_finish_any)

DEFINE_DECODE(sonar_change_decode, sonar_change_msg, SONAR_MSG_CHANGE,
              change_from_json, check_finish_any)

/* ---- sonar.result.v1 --------------------------------------------------- */

void sonar_result_finish(sonar_result_msg *m)
{
    if (m == NULL)
        return;
    free(m->change_id);
    free(m->service);
    free(m->instance);
    check_results_free(m->checks, m->n_checks);
    memset(m, 0, sizeof *m);
}

FINISH_ANY(result, sonar_result_msg)

static sonar_status result_from_json(const json_t *root, void *msg)
{
    sonar_result_msg *m = msg;
    sonar_status st = get_string(root, NULL, "change_id", RULE_NAME, true, &m->change_id);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "service", RULE_NAME, true, &m->service);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "instance", RULE_TEXT, true, &m->instance);
    if (st == SONAR_OK)
        st = get_outcome(root, NULL, "status", ALLOW_PFN, &m->status);
    if (st == SONAR_OK)
        st = get_int(root, NULL, "duration_ms", false, 0, ONE_DAY_MS, &m->duration_ms);
    if (st == SONAR_OK)
        st = check_results_from_json(root, NULL, false, &m->checks, &m->n_checks);
    if (st == SONAR_OK && m->status == SONAR_NONE && m->n_checks > 0)
        st = sonar__fail(SONAR_ERR_PROTOCOL,
                         "field \"status\" is \"none\" but \"checks\" has %zu entries",
                         m->n_checks);
    for (size_t i = 0; st == SONAR_OK && m->status == SONAR_PASS && i < m->n_checks; i++)
        if (m->checks[i].status == SONAR_FAIL)
            st = sonar__fail(SONAR_ERR_PROTOCOL,
                             "field \"status\" is \"pass\" but checks[%zu] (\"%s\") failed", i,
                             m->checks[i].name);
    return st;
}

static sonar_status result_to_json(const void *msg, json_t *root)
{
    const sonar_result_msg *m = msg;
    sonar_status st = put_str(root, "change_id", m->change_id);
    if (st == SONAR_OK)
        st = put_str(root, "service", m->service);
    if (st == SONAR_OK)
        st = put_str(root, "instance", m->instance);
    if (st == SONAR_OK)
        st = put_str(root, "status", sonar_outcome_str(m->status));
    if (st == SONAR_OK)
        st = put_int(root, "duration_ms", m->duration_ms);
    if (st == SONAR_OK)
        st = check_results_to_json(root, m->checks, m->n_checks);
    return st;
}

DEFINE_ENCODE(sonar_result_encode, sonar_result_msg, SONAR_MSG_RESULT,
              result_to_json, result_from_json, result_finish_any)

DEFINE_DECODE(sonar_result_decode, sonar_result_msg, SONAR_MSG_RESULT,
              result_from_json, result_finish_any)

/* ---- sonar.error.v1 ---------------------------------------------------- */

void sonar_error_finish(sonar_error_msg *m)
{
    if (m == NULL)
        return;
    free(m->message);
    memset(m, 0, sizeof *m);
}

FINISH_ANY(error, sonar_error_msg)

static sonar_status error_from_json(const json_t *root, void *msg)
{
    sonar_error_msg *m = msg;
    int64_t code = 0;
    sonar_status st = get_int(root, NULL, "code", true, 100, 599, &code);
    if (st == SONAR_OK) {
        m->code = (int)code;
        st = get_string(root, NULL, "message", RULE_MESSAGE, true, &m->message);
    }
    return st;
}

static sonar_status error_to_json(const void *msg, json_t *root)
{
    const sonar_error_msg *m = msg;
    sonar_status st = put_int(root, "code", m->code);
    if (st == SONAR_OK)
        st = put_str(root, "message", m->message);
    return st;
}

DEFINE_ENCODE(sonar_error_encode, sonar_error_msg, SONAR_MSG_ERROR,
              error_to_json, error_from_json, error_finish_any)

DEFINE_DECODE(sonar_error_decode, sonar_error_msg, SONAR_MSG_ERROR,
              error_from_json, error_finish_any)

/* ---- sonar.report.v1 --------------------------------------------------- */

void sonar_report_finish(sonar_report_msg *m)
{
    if (m == NULL)
        return;
    free(m->change_id);
    free(m->service);
    free(m->version);
    free(m->address);
    free(m->started_at);
    for (size_t i = 0; i < m->n_results; i++) {
        sonar_report_entry *e = &m->results[i];
        free(e->service);
        free(e->reason);
        check_results_free(e->checks, e->n_checks);
    }
    free(m->results);
    memset(m, 0, sizeof *m);
}

FINISH_ANY(report, sonar_report_msg)

static sonar_status report_entry_from_json(const json_t *v, const char *where,
                                           sonar_report_entry *e)
{
    if (!json_is_object(v))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" must be an object, got %s", where,
                           json_type_name(v));
    sonar_status st = get_string(v, where, "service", RULE_NAME, true, &e->service);
    if (st == SONAR_OK)
        st = get_outcome(v, where, "status", ALLOW_ALL, &e->status);
    if (st == SONAR_OK)
        st = get_string(v, where, "reason", RULE_MESSAGE, false, &e->reason);
    if (st == SONAR_OK && e->reason == NULL && (e->reason = strdup("")) == NULL)
        st = sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    if (st == SONAR_OK) {
        const json_t *u = json_object_get(v, "unregistered");
        if (u != NULL && !json_is_null(u) && !json_is_boolean(u))
            st = sonar__fail(SONAR_ERR_PROTOCOL,
                             "field \"%s.unregistered\" must be a boolean, got %s", where,
                             json_type_name(u));
        else
            e->unregistered = json_is_true(u);
    }
    if (st == SONAR_OK)
        st = get_int(v, where, "duration_ms", false, 0, ONE_DAY_MS, &e->duration_ms);
    if (st == SONAR_OK)
        st = check_results_from_json(v, where, false, &e->checks, &e->n_checks);
    return st;
}

static sonar_status report_counts_from_json(const json_t *root, sonar_report_counts *c)
{
    const json_t *v = json_object_get(root, "counts");
    if (v == NULL)
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"counts\" is missing");
    if (!json_is_object(v))
        return sonar__fail(SONAR_ERR_PROTOCOL, "field \"counts\" must be an object, got %s",
                           json_type_name(v));
    sonar_status st = get_int(v, "counts", "expected", true, 0, MAX_COUNT, &c->expected);
    if (st == SONAR_OK)
        st = get_int(v, "counts", "pass", true, 0, MAX_COUNT, &c->pass);
    if (st == SONAR_OK)
        st = get_int(v, "counts", "fail", true, 0, MAX_COUNT, &c->fail);
    if (st == SONAR_OK)
        st = get_int(v, "counts", "none", true, 0, MAX_COUNT, &c->none);
    if (st == SONAR_OK)
        st = get_int(v, "counts", "incomplete", true, 0, MAX_COUNT, &c->incomplete);
    return st;
}

static sonar_status report_from_json(const json_t *root, void *msg)
{
    sonar_report_msg *m = msg;
    sonar_status st = get_string(root, NULL, "change_id", RULE_NAME, true, &m->change_id);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "service", RULE_NAME, true, &m->service);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "version", RULE_TEXT, true, &m->version);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "address", RULE_ADDRESS, true, &m->address);
    if (st == SONAR_OK)
        st = get_outcome(root, NULL, "verdict", ALLOW_PFI, &m->verdict);
    if (st == SONAR_OK)
        st = get_string(root, NULL, "started_at", RULE_TIME, true, &m->started_at);
    if (st == SONAR_OK)
        st = get_int(root, NULL, "duration_ms", true, 0, ONE_DAY_MS, &m->duration_ms);
    if (st == SONAR_OK)
        st = report_counts_from_json(root, &m->counts);
    const json_t *arr = NULL;
    if (st == SONAR_OK)
        st = get_array(root, "results", true, &arr);
    size_t n = st == SONAR_OK ? json_array_size(arr) : 0;
    if (n > 0) {
        if ((m->results = calloc(n, sizeof *m->results)) == NULL)
            return sonar__fail(SONAR_ERR_NOMEM, "out of memory reading field \"results\"");
        m->n_results = n;
    }
    for (size_t i = 0; st == SONAR_OK && i < n; i++) {
        char where[WHERE_MAX];
        index_where(where, "results", i);
        st = report_entry_from_json(json_array_get(arr, i), where, &m->results[i]);
    }
    return st;
}

/*
 * The report is written straight to text instead of through a jansson
 * tree: it is the reply to an announcement, built after the last answer
 * arrived, so its encoding is on the latency a deploy waits for. Building
 * the tree, checking it with the decoder and dumping it took ~25 us for 10
 * results; checking each field with the decoder's rules and writing the
 * text takes a tenth of that (docs/benchmarks.md, Protocol). The text is
 * byte for byte what json_dumps(JSON_COMPACT) gives for the same fields in
 * the same order (tests/unit/test_protocol.c checks both).
 */

typedef struct text_out {
    char *buf;
    size_t len, cap;
    bool too_big; /* over SONAR_MAX_MESSAGE_BYTES: writing stopped */
    bool no_memory;
} text_out;

static void out_raw(text_out *o, const char *s, size_t n)
{
    if (o->too_big || o->no_memory)
        return;
    if (o->len + n > SONAR_MAX_MESSAGE_BYTES) {
        o->too_big = true;
        return;
    }
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 1024;
        while (o->len + n + 1 > cap)
            cap *= 2;
        char *buf = realloc(o->buf, cap);
        if (buf == NULL) {
            o->no_memory = true;
            return;
        }
        o->buf = buf;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

#define OUT_LIT(o, lit) out_raw((o), (lit), sizeof(lit) - 1)

/* A JSON string, escaped as jansson does: quote, backslash and control
 * characters; everything else (already checked to be UTF-8) as it is. */
static void out_str(text_out *o, const char *s)
{
    OUT_LIT(o, "\"");
    const char *run = s;
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        out_raw(o, run, (size_t)(p - run));
        run = p + 1;
        char esc[8];
        switch (c) {
        case '"': OUT_LIT(o, "\\\""); break;
        case '\\': OUT_LIT(o, "\\\\"); break;
        case '\b': OUT_LIT(o, "\\b"); break;
        case '\f': OUT_LIT(o, "\\f"); break;
        case '\n': OUT_LIT(o, "\\n"); break;
        case '\r': OUT_LIT(o, "\\r"); break;
        case '\t': OUT_LIT(o, "\\t"); break;
        default:
            snprintf(esc, sizeof esc, "\\u%04X", c);
            out_raw(o, esc, 6);
        }
    }
    out_raw(o, run, strlen(run));
    OUT_LIT(o, "\"");
}

static void out_int(text_out *o, int64_t x)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%" PRId64, x);
    out_raw(o, num, (size_t)n);
}

/* A key (with its separator) and its value. */
#define OUT_STR(o, lit, s) (OUT_LIT(o, lit), out_str((o), (s)))
#define OUT_INT(o, lit, x) (OUT_LIT(o, lit), out_int((o), (x)))

/* The decoder's name for a report field: "key", "results[i].key" or
 * "results[i].checks[j].key" (SIZE_MAX: no such level). Built only when a
 * check fails, so that valid reports pay nothing for it. */
static const char *report_where(char buf[WHERE_MAX], size_t entry, size_t check, const char *key)
{
    if (entry == SIZE_MAX)
        return key;
    if (check == SIZE_MAX)
        snprintf(buf, WHERE_MAX, "results[%zu].%s", entry, key);
    else
        snprintf(buf, WHERE_MAX, "results[%zu].checks[%zu].%s", entry, check, key);
    return buf;
}

/* Checks a string field with the decoder's rule; NULL is "missing" when required. */
static sonar_status want_string(size_t entry, size_t check, const char *key, const char *s,
                                str_rule rule, bool required)
{
    char where[WHERE_MAX];
    if (s == NULL)
        return required ? sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is missing",
                                      report_where(where, entry, check, key))
                        : SONAR_OK;
    if (check_string(key, s, strlen(s), rule) == SONAR_OK)
        return SONAR_OK;
    /* Again, for the message with the field's full name. */
    return check_string(report_where(where, entry, check, key), s, strlen(s), rule);
}

static sonar_status want_int(size_t entry, size_t check, const char *key, int64_t x,
                             int64_t min, int64_t max)
{
    char where[WHERE_MAX];
    if (x >= min && x <= max)
        return SONAR_OK;
    return sonar__fail(SONAR_ERR_PROTOCOL,
                       "field \"%s\" is %" PRId64 ", out of range %" PRId64 "..%" PRId64,
                       report_where(where, entry, check, key), x, min, max);
}

static sonar_status want_outcome(size_t entry, size_t check, const char *key, sonar_outcome o,
                                 unsigned allowed)
{
    char where[WHERE_MAX], list[64];
    if ((unsigned)o <= (unsigned)SONAR_INCOMPLETE && (allowed & OUT_BIT(o)))
        return SONAR_OK;
    allowed_list(list, allowed);
    return sonar__fail(SONAR_ERR_PROTOCOL, "field \"%s\" is \"%s\": expected %s",
                       report_where(where, entry, check, key), sonar_outcome_str(o), list);
}

static sonar_status want_list(size_t entry, const char *key, const void *v, size_t n)
{
    char where[WHERE_MAX];
    if (n > 0 && v == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "field \"%s\" has %zu entries but no array",
                           report_where(where, entry, SIZE_MAX, key), n);
    if (n > SONAR_MAX_LIST)
        return sonar__fail(SONAR_ERR_PROTOCOL,
                           "field \"%s\" has %zu entries, over the limit of %d",
                           report_where(where, entry, SIZE_MAX, key), n, SONAR_MAX_LIST);
    return SONAR_OK;
}

static sonar_status report_check_write(text_out *o, size_t entry, size_t i,
                                       const sonar_check_result *c)
{
    const char *message = c->message ? c->message : "";
    sonar_status st = want_string(entry, i, "name", c->name, RULE_TEXT, true);
    if (st == SONAR_OK)
        st = want_outcome(entry, i, "status", c->status, ALLOW_PF);
    if (st == SONAR_OK)
        st = want_int(entry, i, "duration_ms", c->duration_ms, 0, ONE_DAY_MS);
    if (st == SONAR_OK)
        st = want_string(entry, i, "message", message, RULE_MESSAGE, false);
    if (st != SONAR_OK)
        return st;
    OUT_STR(o, "{\"name\":", c->name);
    OUT_STR(o, ",\"status\":", sonar_outcome_str(c->status));
    OUT_INT(o, ",\"duration_ms\":", c->duration_ms);
    OUT_STR(o, ",\"message\":", message);
    OUT_LIT(o, "}");
    return SONAR_OK;
}

static sonar_status report_entry_write(text_out *o, size_t i, const sonar_report_entry *e)
{
    bool reason = e->reason != NULL && e->reason[0] != '\0';
    sonar_status st = want_string(i, SIZE_MAX, "service", e->service, RULE_NAME, true);
    if (st == SONAR_OK)
        st = want_outcome(i, SIZE_MAX, "status", e->status, ALLOW_ALL);
    if (st == SONAR_OK && reason)
        st = want_string(i, SIZE_MAX, "reason", e->reason, RULE_MESSAGE, false);
    if (st == SONAR_OK)
        st = want_int(i, SIZE_MAX, "duration_ms", e->duration_ms, 0, ONE_DAY_MS);
    if (st == SONAR_OK)
        st = want_list(i, "checks", e->checks, e->n_checks);
    if (st != SONAR_OK)
        return st;
    OUT_STR(o, "{\"service\":", e->service);
    OUT_STR(o, ",\"status\":", sonar_outcome_str(e->status));
    if (reason) {
        OUT_STR(o, ",\"reason\":", e->reason);
    }
    if (e->unregistered)
        OUT_LIT(o, ",\"unregistered\":true");
    OUT_INT(o, ",\"duration_ms\":", e->duration_ms);
    OUT_LIT(o, ",\"checks\":[");
    for (size_t j = 0; st == SONAR_OK && j < e->n_checks; j++) {
        if (j > 0)
            OUT_LIT(o, ",");
        st = report_check_write(o, i, j, &e->checks[j]);
    }
    OUT_LIT(o, "]}");
    return st;
}

static sonar_status report_write(text_out *o, const sonar_report_msg *m)
{
    static const struct {
        const char *key;
        size_t offset;
    } counts[] = {
        {"counts.expected", offsetof(sonar_report_counts, expected)},
        {"counts.pass", offsetof(sonar_report_counts, pass)},
        {"counts.fail", offsetof(sonar_report_counts, fail)},
        {"counts.none", offsetof(sonar_report_counts, none)},
        {"counts.incomplete", offsetof(sonar_report_counts, incomplete)},
    };
    sonar_status st = want_string(SIZE_MAX, SIZE_MAX, "change_id", m->change_id, RULE_NAME, true);
    if (st == SONAR_OK)
        st = want_string(SIZE_MAX, SIZE_MAX, "service", m->service, RULE_NAME, true);
    if (st == SONAR_OK)
        st = want_string(SIZE_MAX, SIZE_MAX, "version", m->version, RULE_TEXT, true);
    if (st == SONAR_OK)
        st = want_string(SIZE_MAX, SIZE_MAX, "address", m->address, RULE_ADDRESS, true);
    if (st == SONAR_OK)
        st = want_outcome(SIZE_MAX, SIZE_MAX, "verdict", m->verdict, ALLOW_PFI);
    if (st == SONAR_OK)
        st = want_string(SIZE_MAX, SIZE_MAX, "started_at", m->started_at, RULE_TIME, true);
    if (st == SONAR_OK)
        st = want_int(SIZE_MAX, SIZE_MAX, "duration_ms", m->duration_ms, 0, ONE_DAY_MS);
    for (size_t i = 0; st == SONAR_OK && i < sizeof counts / sizeof counts[0]; i++) {
        int64_t x;
        memcpy(&x, (const char *)&m->counts + counts[i].offset, sizeof x);
        st = want_int(SIZE_MAX, SIZE_MAX, counts[i].key, x, 0, MAX_COUNT);
    }
    if (st == SONAR_OK)
        st = want_list(SIZE_MAX, "results", m->results, m->n_results);
    if (st != SONAR_OK)
        return st;
    OUT_STR(o, "{\"type\":", sonar_msg_kind_type(SONAR_MSG_REPORT));
    OUT_STR(o, ",\"change_id\":", m->change_id);
    OUT_STR(o, ",\"service\":", m->service);
    OUT_STR(o, ",\"version\":", m->version);
    OUT_STR(o, ",\"address\":", m->address);
    OUT_STR(o, ",\"verdict\":", sonar_outcome_str(m->verdict));
    OUT_STR(o, ",\"started_at\":", m->started_at);
    OUT_INT(o, ",\"duration_ms\":", m->duration_ms);
    OUT_INT(o, ",\"counts\":{\"expected\":", m->counts.expected);
    OUT_INT(o, ",\"pass\":", m->counts.pass);
    OUT_INT(o, ",\"fail\":", m->counts.fail);
    OUT_INT(o, ",\"none\":", m->counts.none);
    OUT_INT(o, ",\"incomplete\":", m->counts.incomplete);
    OUT_LIT(o, "},\"results\":[");
    for (size_t i = 0; st == SONAR_OK && i < m->n_results; i++) {
        if (i > 0)
            OUT_LIT(o, ",");
        st = report_entry_write(o, i, &m->results[i]);
    }
    OUT_LIT(o, "]}");
    return st;
}

sonar_status sonar_report_encode(const sonar_report_msg *msg, char **out_json)
{
    if (msg == NULL || out_json == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "encode report: NULL argument");
    text_out o = {0};
    /* Room for a typical report at once: the header and ~150 bytes a result. */
    size_t guess = 512 + (msg->n_results < SONAR_MAX_LIST ? msg->n_results : 0) * 160;
    if ((o.buf = malloc(guess)) == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory encoding a message");
    o.cap = guess;
    sonar_status st = report_write(&o, msg);
    if (st == SONAR_OK && o.too_big)
        st = sonar__fail(SONAR_ERR_PROTOCOL, "message would be over the limit of %d bytes",
                         SONAR_MAX_MESSAGE_BYTES);
    if (st == SONAR_OK && o.no_memory)
        st = sonar__fail(SONAR_ERR_NOMEM, "out of memory serialising a message");
    if (st != SONAR_OK) {
        free(o.buf);
        return st;
    }
    *out_json = o.buf;
    return SONAR_OK;
}

DEFINE_DECODE(sonar_report_decode, sonar_report_msg, SONAR_MSG_REPORT,
              report_from_json, report_finish_any)

/* ---- Subjects ---------------------------------------------------------- */

sonar_status sonar_subject(char **out, const char *prefix, const char *a, const char *b)
{
    if (out == NULL || prefix == NULL)
        return sonar__fail(SONAR_ERR_INVALID, "sonar_subject: NULL argument");
    sonar_status st = sonar_name_check("subject token", a);
    if (st == SONAR_OK && b != NULL)
        st = sonar_name_check("subject token", b);
    if (st != SONAR_OK)
        return st;
    char *s = NULL;
    int n = b ? asprintf(&s, "%s%s.%s", prefix, a, b) : asprintf(&s, "%s%s", prefix, a);
    if (n < 0)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory building a subject");
    *out = s;
    return SONAR_OK;
}
