/*
 * statusd's target specifications (services/statusd/targets.c): config
 * files from tests/data/statusd/valid (with the specs they must give) and
 * invalid (each with the JSON path and reason its error must name).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "targets.h"

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    int c;
    while ((c = fgetc(f)) != EOF)
        fputc(c, out);
    fclose(f);
    fclose(out);
    return buf;
}

/* Calls fn(dir, base) for every "<base>.json" in SONAR_TEST_DATA/statusd/<sub>; returns how many. */
static int each_case(const char *sub, void (*fn)(const char *dir, const char *base))
{
    const char *root = getenv("SONAR_TEST_DATA");
    cr_assert_not_null(root, "SONAR_TEST_DATA is not set");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/statusd/%s", root, sub);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        char base[256];
        snprintf(base, sizeof base, "%.*s", (int)(len - 5), e->d_name);
        fn(dir, base);
        n++;
    }
    closedir(d);
    return n;
}

static void check_valid(const char *dir, const char *base)
{
    char path[1024], expected_path[1024];
    snprintf(path, sizeof path, "%s/%s.json", dir, base);
    snprintf(expected_path, sizeof expected_path, "%s/%s.expected", dir, base);
    statusd_target_spec *specs = NULL;
    size_t n = 0;
    cr_assert_eq(statusd_config_load(path, &specs, &n), SONAR_OK, "%s: %s", base,
                 sonar_last_error());
    char *got = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&got, &len);
    for (size_t i = 0; i < n; i++) {
        const statusd_target_spec *s = &specs[i];
        fprintf(out, "%s %s %s %s %lld %lld %d %d\n", s->name, s->service, s->health,
                s->metrics ? s->metrics : "-", (long long)s->interval_ms,
                (long long)s->timeout_ms, s->thresholds.failure_threshold,
                s->thresholds.success_threshold);
        cr_expect_null(s->instance);
        statusd_spec_finish(&specs[i]);
    }
    fclose(out);
    free(specs);
    char *expected = read_file(expected_path);
    cr_expect_str_eq(got, expected, "%s", base);
    free(expected);
    free(got);
}

static void check_invalid(const char *dir, const char *base)
{
    char path[1024], expect_path[1024];
    snprintf(path, sizeof path, "%s/%s.json", dir, base);
    snprintf(expect_path, sizeof expect_path, "%s/%s.expect", dir, base);
    char *expect = read_file(expect_path);
    expect[strcspn(expect, "\n")] = '\0';
    statusd_target_spec *specs = (statusd_target_spec *)&specs; /* must stay untouched */
    statusd_target_spec *const before = specs;
    size_t n = 12345;
    cr_expect_eq(statusd_config_load(path, &specs, &n), SONAR_ERR_INVALID, "%s", base);
    const char *err = sonar_last_error();
    cr_expect(strstr(err, expect) != NULL, "%s: error \"%s\" lacks \"%s\"", base, err, expect);
    cr_expect(strstr(err, path) != NULL, "%s: error \"%s\" does not name the file", base, err);
    cr_expect(specs == before && n == 12345, "%s: outputs written on failure", base);
    free(expect);
}

Test(statusd_targets, valid_config_files_give_their_specs)
{
    cr_expect_geq(each_case("valid", check_valid), 3);
}

Test(statusd_targets, invalid_config_files_name_the_path_and_reason)
{
    cr_expect_geq(each_case("invalid", check_invalid), 20);
}

Test(statusd_targets, unreadable_file_is_an_io_error)
{
    statusd_target_spec *specs = NULL;
    size_t n = 0;
    cr_expect_eq(statusd_config_load("/nonexistent/targets.json", &specs, &n), SONAR_ERR_IO);
    cr_expect(strstr(sonar_last_error(), "/nonexistent/targets.json") != NULL);
}

Test(statusd_targets, endpoints_are_nats_or_http_urls_with_a_host)
{
    static const char *const good[] = {"nats", "http://h", "https://h:1/p?q=1", "http://[::1]/",
                                       "http://10.0.0.1:8080/health"};
    static const char *const bad[] = {NULL, "", "NATS", "nats ", "ftp://h", "http://", "http:///x",
                                      "http://:80/", "http://h/ x", "http://h/\x7f", "https//h"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        cr_expect(statusd_endpoint_valid(good[i]), "%s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect(!statusd_endpoint_valid(bad[i]), "%s", bad[i] ? bad[i] : "(null)");
    char big[2100] = "http://h/";
    memset(big + 9, 'a', sizeof big - 10);
    big[sizeof big - 1] = '\0';
    cr_expect(!statusd_endpoint_valid(big), "a URL over 2048 bytes");
}

Test(statusd_targets, api_bodies_use_the_same_rules_and_copy)
{
    json_t *body = json_pack("{s:s, s:s, s:I}", "name", "site", "health", "http://h/health",
                             "interval_ms", (json_int_t)500);
    statusd_target_spec s = {0}, c = {0};
    cr_assert_eq(statusd_spec_from_json(&s, body, "body"), SONAR_OK);
    cr_expect_str_eq(s.service, "site", "the service defaults to the name");
    cr_expect_eq(s.interval_ms, 500);
    cr_assert_eq(statusd_spec_copy(&c, &s), SONAR_OK);
    statusd_spec_finish(&s);
    cr_expect_str_eq(c.health, "http://h/health", "the copy is independent");
    json_t *shown = statusd_spec_json(&c, STATUSD_SOURCE_API);
    cr_expect_str_eq(json_string_value(json_object_get(shown, "source")), "api");
    cr_expect(json_is_null(json_object_get(shown, "metrics")));
    json_decref(shown);
    statusd_spec_finish(&c);
    statusd_spec_finish(&c); /* finishing twice is harmless */
    json_object_set_new(body, "timeout_ms", json_integer(0));
    cr_expect_eq(statusd_spec_from_json(&s, body, "body"), SONAR_ERR_INVALID);
    cr_expect(strstr(sonar_last_error(), "body.timeout_ms") != NULL, "%s", sonar_last_error());
    json_decref(body);
    cr_expect_str_eq(statusd_source_str(STATUSD_SOURCE_REGISTRY), "registry");
    cr_expect_str_eq(statusd_source_str(STATUSD_SOURCE_CONFIG), "config");
}
