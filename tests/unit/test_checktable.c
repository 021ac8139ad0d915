/* Check tables: loading and validation, data-driven from tests/data/checktables. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonar/sonar.h"

static const char *data_dir(void)
{
    const char *d = getenv("SONAR_TEST_DATA");
    cr_assert_not_null(d, "SONAR_TEST_DATA is not set (run through meson test)");
    return d;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Reads the two lines of an .expect file: location, reason substring. */
static void read_expect(const char *path, char *loc, size_t loclen, char *reason, size_t rlen)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "missing %s", path);
    loc[0] = reason[0] = '\0';
    if (fgets(loc, (int)loclen, f) == NULL)
        loc[0] = '\0';
    if (fgets(reason, (int)rlen, f) == NULL)
        reason[0] = '\0';
    fclose(f);
    loc[strcspn(loc, "\n")] = '\0';
    reason[strcspn(reason, "\n")] = '\0';
}

Test(checktable, every_valid_table_loads)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/checktables/valid", data_dir());
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ends_with(e->d_name, ".json"))
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        sonar_checktable *t = NULL;
        cr_expect_eq(sonar_checktable_load(&t, path), SONAR_OK, "%s: %s", e->d_name,
                     sonar_last_error());
        cr_expect_gt(sonar_checktable_case_count(t ? t : NULL) , 0);
        sonar_checktable_destroy(t);
        n++;
    }
    closedir(d);
    cr_assert_geq(n, 3);
}

Test(checktable, every_invalid_table_is_refused_with_location_and_reason)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/checktables/invalid", data_dir());
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ends_with(e->d_name, ".json"))
            continue;
        char path[2048], expect[2048], loc[512], reason[512], want[2600];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(expect, sizeof expect, "%.*s.expect", (int)(strlen(path) - 5), path);
        read_expect(expect, loc, sizeof loc, reason, sizeof reason);
        sonar_checktable *t = NULL;
        sonar_status st = sonar_checktable_load(&t, path);
        cr_expect_eq(st, SONAR_ERR_INVALID, "%s loaded (status %d)", e->d_name, st);
        cr_expect_null(t);
        const char *err = sonar_last_error();
        if (strncmp(loc, "line ", 5) == 0)
            snprintf(want, sizeof want, "%s:%s:", path, loc + 5);
        else
            snprintf(want, sizeof want, "%s: %s: ", path, loc);
        cr_expect(strncmp(err, want, strlen(want)) == 0, "%s: error \"%s\" does not start with \"%s\"",
                  e->d_name, err, want);
        cr_expect(strstr(err, reason) != NULL, "%s: error \"%s\" does not mention \"%s\"",
                  e->d_name, err, reason);
        n++;
    }
    closedir(d);
    cr_assert_geq(n, 40);
}

Test(checktable, accessors_describe_the_table)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/checktables/valid/jafflr.json", data_dir());
    sonar_checktable *t = NULL;
    cr_assert_eq(sonar_checktable_load(&t, path), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(sonar_checktable_service(t), "jafflr");
    cr_assert_str_eq(sonar_checktable_version(t), "1.4.0");
    cr_assert_str_eq(sonar_checktable_description(t), "jafflr's checks on its dependencies");
    cr_assert(sonar_checktable_uses_nats(t));
    cr_assert_eq(sonar_checktable_dependency_count(t), 2);
    cr_assert_str_eq(sonar_checktable_dependency(t, 0), "chillybin");
    cr_assert_str_eq(sonar_checktable_dependency(t, 1), "auth-svc");
    cr_assert_null(sonar_checktable_dependency(t, 2));
    cr_assert_eq(sonar_checktable_case_count(t), 3);
    const sonar_checkcase *c = sonar_checktable_case(t, 0);
    cr_assert_str_eq(sonar_checkcase_name(c), "pick lowers stock by one");
    cr_assert_str_eq(sonar_checkcase_dependency(c), "chillybin");
    cr_assert_eq(sonar_checkcase_timeout_ms(c), 5000);
    c = sonar_checktable_case(t, 2);
    cr_assert_str_eq(sonar_checkcase_dependency(c), "auth-svc");
    cr_assert_eq(sonar_checkcase_timeout_ms(c), 0);
    cr_assert_null(sonar_checktable_case(t, 3));
    sonar_checktable_destroy(t);
    sonar_checktable_destroy(NULL);
}

Test(checktable, defaults_and_http_only_tables)
{
    const char *text = "{\"service\":\"a\",\"checks\":{\"b\":[{\"name\":\"n\",\"steps\":"
                       "[{\"http\":{\"path\":\"/\"}}]}]}}";
    sonar_checktable *t = NULL;
    cr_assert_eq(sonar_checktable_parse(&t, text, strlen(text), "inline"), SONAR_OK, "%s",
                 sonar_last_error());
    cr_assert_str_eq(sonar_checktable_version(t), "0.0.0");
    cr_assert_null(sonar_checktable_description(t));
    cr_assert_not(sonar_checktable_uses_nats(t));
    sonar_checktable_destroy(t);
}

Test(checktable, unreadable_and_oversized_files_are_refused)
{
    sonar_checktable *t = NULL;
    cr_assert_eq(sonar_checktable_load(&t, "/nonexistent/table.json"), SONAR_ERR_IO);
    cr_assert(strstr(sonar_last_error(), "/nonexistent/table.json") != NULL);
    cr_assert_eq(sonar_checktable_load(&t, "/"), SONAR_ERR_IO);
    cr_assert_null(t);
    size_t len = SONAR_CHECKTABLE_MAX_BYTES + 1;
    char *big = malloc(len);
    cr_assert_not_null(big);
    memset(big, ' ', len);
    cr_assert_eq(sonar_checktable_parse(&t, big, len, "big"), SONAR_ERR_LIMIT);
    free(big);
    cr_assert_null(t);
}
