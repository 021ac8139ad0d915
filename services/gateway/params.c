/* Parameter validation for the gateway. See params.h. */
#include "params.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Reads exactly n digits at *p into *out and advances. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && leap(y) ? 29 : d[m - 1];
}

static bool parse_rfc3339(const char *s, int64_t *out)
{
    int y, mo, d, h, mi, sec;
    const char *p = s;
    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d))
        return false;
    if (*p != 'T' && *p != 't')
        return false;
    p++;
    if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || *p++ != ':' ||
        !digits(&p, 2, &sec))
        return false;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 ||
        mi > 59 || sec > 60)
        return false;
    int64_t ms = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        int64_t scale = 100;
        while (*p >= '0' && *p <= '9') {
            ms += (*p - '0') * scale;
            scale /= 10;
            p++;
            n++;
        }
        if (n == 0 || n > 9)
            return false;
    }
    int64_t offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        int oh, om;
        p++;
        if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_s = sign * (oh * 3600 + om * 60);
    } else {
        return false;
    }
    if (*p != '\0')
        return false;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec > 59 ? 59 : sec;
    time_t t = timegm(&tm);
    int64_t v = ((int64_t)t - offset_s) * 1000 + ms;
    if (v < 0)
        return false;
    *out = v;
    return true;
}

bool sonar_gw_parse_time(const char *text, int64_t *out_ms, char *why, size_t whylen)
{
    if (text == NULL || *text == '\0') {
        snprintf(why, whylen, "is empty: expected RFC 3339 (e.g. 2026-11-23T18:30:00Z) "
                 "or milliseconds since the epoch");
        return false;
    }
    bool all_digits = true;
    for (const char *c = text; *c; c++)
        if (*c < '0' || *c > '9')
            all_digits = false;
    if (all_digits) {
        int64_t v;
        if (strlen(text) > 15 || !sonar_gw_parse_int(text, 0, 253402300799999LL, &v)) {
            snprintf(why, whylen, "is out of range: milliseconds since the epoch up to year 9999");
            return false;
        }
        *out_ms = v;
        return true;
    }
    int64_t v;
    if (strlen(text) > 40 || !parse_rfc3339(text, &v)) {
        snprintf(why, whylen, "is not a time: expected RFC 3339 (e.g. 2026-11-23T18:30:00Z) "
                 "or milliseconds since the epoch");
        return false;
    }
    *out_ms = v;
    return true;
}

bool sonar_gw_parse_int(const char *text, int64_t min, int64_t max, int64_t *out)
{
    if (text == NULL || *text == '\0' || isspace((unsigned char)*text) || *text == '+')
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool sonar_gw_metric_name_valid(const char *name)
{
    if (name == NULL || *name == '\0' || strlen(name) > SONAR_GW_METRIC_NAME_MAX)
        return false;
    for (const char *c = name; *c; c++) {
        bool alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
                     *c == ':';
        bool digit = *c >= '0' && *c <= '9';
        if (!alpha && !(digit && c != name))
            return false;
    }
    return true;
}

bool sonar_gw_url_valid(const char *url)
{
    if (url == NULL)
        return false;
    size_t n = strlen(url);
    if (n > SONAR_GW_URL_MAX)
        return false;
    const char *rest;
    if (strncmp(url, "http://", 7) == 0)
        rest = url + 7;
    else if (strncmp(url, "https://", 8) == 0)
        rest = url + 8;
    else
        return false;
    if (*rest == '\0' || *rest == '/' || *rest == '?' || *rest == '#')
        return false;
    for (const unsigned char *c = (const unsigned char *)url; *c; c++)
        if (*c <= 0x20 || *c == 0x7f)
            return false;
    return true;
}
