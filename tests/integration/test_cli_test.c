/*
 * `sonar test`: runs the built CLI (SONAR_BIN) on check tables against a
 * real local HTTP server; checks exit codes, human output, TAP and JUnit
 * XML (parsed by a real XML parser, python3's minidom).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "httpd.h"
#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"

static test_httpd *srv;
static char dir[256];

static void setup(void)
{
    srv = test_httpd_start();
    cr_assert_not_null(srv);
    cr_assert(test_mkdtemp(dir, sizeof dir, "clitest"));
}

static void teardown(void)
{
    test_httpd_stop(srv);
    test_rmtree(dir);
}

TestSuite(cli_test, .init = setup, .fini = teardown, .timeout = 120);

typedef struct ran {
    int code;
    char *out;
    char *err;
} ran;

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot read %s", path);
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(f);
    fclose(mem);
    return buf;
}

/* Runs argv (argv[0] looked up in PATH unless it has a '/'), capturing output. */
static ran run(char *const argv[])
{
    test_proc p;
    int code = test_proc_run(&p, dir, (const char *const *)argv, NULL, 60000);
    cr_assert_neq(code, -1, "%s did not finish: %s", argv[0], p.err ? p.err : "");
    ran r = {.code = code, .out = strdup(p.out), .err = strdup(p.err)};
    test_proc_finish(&p);
    return r;
}

static void ran_free(ran *r)
{
    free(r->out);
    free(r->err);
}

static char *write_table(const char *name, const char *text)
{
    char *path = NULL;
    cr_assert(asprintf(&path, "%s/%s", dir, name) > 0);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static const char *const table_text =
    "{\"service\":\"jafflr\",\"checks\":{"
    " \"chillybin\":["
    "  {\"name\":\"health\",\"steps\":[{\"http\":{\"path\":\"/health\"},"
    "    \"expect\":{\"body\":{\"contains\":\"ok\"}}}]},"
    "  {\"name\":\"pick cheese & <brie> \\\"#1\\\"\",\"steps\":["
    "    {\"http\":{\"method\":\"POST\",\"path\":\"/pick\",\"query\":{\"name\":\"cheese\"}},"
    "     \"expect\":{\"status\":200}}]}],"
    " \"auth\":[{\"name\":\"whoami\",\"steps\":[{\"http\":{\"path\":\"/whoami\"}}]}]}}";

static char target_arg[128];

static const char *target_for(const char *dep)
{
    snprintf(target_arg, sizeof target_arg, "%s=%s", dep, test_httpd_url(srv));
    return target_arg;
}

Test(cli_test, all_passing_cases_exit_0_with_a_human_summary)
{
    test_httpd_route(srv, "GET", "/health", 200, "ok", NULL);
    test_httpd_route(srv, "POST", "/pick", 200, "{\"stock\":1}", NULL);
    char *table = write_table("t.json", table_text);
    char *argv[] = {(char *)test_bin("SONAR_BIN"), "test", "--checks", table, "--target",
                    (char *)target_for("chillybin"), NULL};
    ran r = run(argv);
    cr_assert_eq(r.code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert(strstr(r.out, "PASS  chillybin / health") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "SKIP  auth / whoami (no --target for auth)") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "2 passed, 0 failed, 1 skipped") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\033[") == NULL, "no colour when stdout is not a terminal");
    ran_free(&r);
    free(table);
}

Test(cli_test, a_failing_case_exits_1_and_names_the_step)
{
    test_httpd_route(srv, "GET", "/health", 200, "ok", NULL);
    test_httpd_route(srv, "POST", "/pick", 404, "{\"error\":\"unknown\"}", NULL);
    char *table = write_table("t.json", table_text);
    char *argv[] = {(char *)test_bin("SONAR_BIN"), "test", "--checks", table, "--target",
                    (char *)target_for("chillybin"), NULL};
    ran r = run(argv);
    cr_assert_eq(r.code, 1, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert(strstr(r.out, "FAIL  chillybin / pick cheese & <brie> \"#1\"") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "      step 1 POST /pick?name=cheese: status 404, expected 200\n") !=
              NULL, "%s", r.out);
    cr_assert(strstr(r.out, "1 passed, 1 failed, 1 skipped") != NULL, "%s", r.out);
    ran_free(&r);
    free(table);
}

Test(cli_test, tap_output_is_well_formed)
{
    test_httpd_route(srv, "GET", "/health", 200, "ok", NULL);
    test_httpd_route(srv, "POST", "/pick", 500, "boom", NULL);
    char *table = write_table("t.json", table_text);
    char *argv[] = {(char *)test_bin("SONAR_BIN"), "test", "--checks", table, "--tap",
                    "--target", (char *)target_for("chillybin"), NULL};
    ran r = run(argv);
    cr_assert_eq(r.code, 1, "stdout: %s\nstderr: %s", r.out, r.err);
    /* Line by line: version, plan, then numbered results with YAML blocks. */
    char *save = NULL;
    char *line = strtok_r(r.out, "\n", &save);
    cr_assert_str_eq(line, "TAP version 13");
    line = strtok_r(NULL, "\n", &save);
    cr_assert_str_eq(line, "1..3");
    int results = 0, in_yaml = 0;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        if (in_yaml) {
            if (strcmp(line, "  ...") == 0)
                in_yaml = 0;
            else
                cr_assert(strncmp(line, "  ", 2) == 0, "YAML line not indented: %s", line);
            continue;
        }
        if (strcmp(line, "  ---") == 0) {
            in_yaml = 1;
            continue;
        }
        results++;
        char ok[32];
        snprintf(ok, sizeof ok, "ok %d - ", results);
        char notok[32];
        snprintf(notok, sizeof notok, "not ok %d - ", results);
        cr_assert(strncmp(line, ok, strlen(ok)) == 0 || strncmp(line, notok, strlen(notok)) == 0,
                  "bad TAP line: %s", line);
        if (results == 2) {
            cr_assert_str_eq(line, "not ok 2 - chillybin / pick cheese & <brie> \"\\#1\"");
        }
        if (results == 3)
            cr_assert_str_eq(line, "ok 3 - auth / whoami # SKIP no --target for auth");
    }
    cr_assert_eq(results, 3);
    cr_assert_eq(in_yaml, 0, "unterminated YAML block");
    ran_free(&r);
    free(table);
}

Test(cli_test, junit_xml_is_well_formed_and_escaped)
{
    test_httpd_route(srv, "GET", "/health", 200, "<html>down & \"out\"</html>", NULL);
    test_httpd_route(srv, "POST", "/pick", 200, "", NULL);
    test_httpd_route(srv, "GET", "/whoami", 200, "jafflr", NULL);
    char *table = write_table("t.json", table_text);
    char xml[300];
    snprintf(xml, sizeof xml, "%s/junit.xml", dir);
    char auth[128];
    snprintf(auth, sizeof auth, "auth=%s", test_httpd_url(srv));
    char *argv[] = {(char *)test_bin("SONAR_BIN"), "test", "--checks", table, "--junit", xml,
                    "--target", (char *)target_for("chillybin"), "--target", auth, NULL};
    ran r = run(argv);
    cr_assert_eq(r.code, 1, "stdout: %s\nstderr: %s", r.out, r.err);
    ran_free(&r);

    char *parse[] = {"python3", "-c",
                     "import sys, xml.dom.minidom as m\n"
                     "d = m.parse(sys.argv[1])\n"
                     "cases = d.getElementsByTagName('testcase')\n"
                     "names = [c.getAttribute('name') for c in cases]\n"
                     "fails = d.getElementsByTagName('failure')\n"
                     "print(len(cases), len(fails), names[1])\n"
                     "print(fails[0].getAttribute('message'))\n",
                     xml, NULL};
    r = run(parse);
    cr_assert_eq(r.code, 0, "not well-formed XML: %s", r.err);
    cr_assert(strstr(r.out, "3 1 pick cheese & <brie> \"#1\"\n") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "step 1 GET /health: body does not contain \"ok\" (body: "
                            "\"<html>down & \"out\"</html>\")") != NULL, "%s", r.out);
    ran_free(&r);

    char *text = slurp(xml);
    cr_assert(strstr(text, "<testsuites name=\"sonar test jafflr\" tests=\"3\" failures=\"1\" "
                           "errors=\"0\" skipped=\"0\"") != NULL, "%s", text);
    cr_assert(strstr(text, "<testsuite name=\"chillybin\" tests=\"2\" failures=\"1\"") != NULL,
              "%s", text);
    free(text);
    free(table);
}

Test(cli_test, invalid_tables_exit_2_with_the_location)
{
    char *table = write_table("bad.json",
                              "{\"service\":\"jafflr\",\"checks\":{\"chillybin\":[{\"name\":\"a\","
                              "\"steps\":[{\"http\":{\"path\":\"/\"},\"expect\":{\"status\":"
                              "\"200 OK\"}}]}]}}");
    char *argv[] = {(char *)test_bin("SONAR_BIN"), "test", "--checks", table, "--target",
                    (char *)target_for("chillybin"), NULL};
    ran r = run(argv);
    cr_assert_eq(r.code, 2);
    cr_assert(strstr(r.err, "$.checks.chillybin[0].steps[0].expect.status") != NULL, "%s", r.err);
    cr_assert(strstr(r.err, table) != NULL, "%s", r.err);
    ran_free(&r);
    free(table);

    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.json", dir);
    char *argv2[] = {(char *)test_bin("SONAR_BIN"), "test", "--checks", missing, "--target",
                     (char *)target_for("chillybin"), NULL};
    r = run(argv2);
    cr_assert_eq(r.code, 2);
    cr_assert(strstr(r.err, missing) != NULL, "%s", r.err);
    ran_free(&r);
}

Test(cli_test, bad_flags_exit_2)
{
    char *table = write_table("t.json", table_text);
    char junit_dir[300];
    snprintf(junit_dir, sizeof junit_dir, "%s/no/such/dir/j.xml", dir);
    const char *bin = test_bin("SONAR_BIN");
    struct {
        char *argv[10];
        const char *says;
    } cases[] = {
        {{(char *)bin, "test", "--target", "chillybin=http://x", NULL}, "--checks FILE is required"},
        {{(char *)bin, "test", "--checks", table, NULL}, "at least one --target"},
        {{(char *)bin, "test", "--checks", table, "--target", "chillybin", NULL},
         "expected DEPENDENCY=ADDRESS"},
        {{(char *)bin, "test", "--checks", table, "--target", "a.b=http://x", NULL},
         "dependency name must match"},
        {{(char *)bin, "test", "--checks", table, "--target", "pantry=http://x", NULL},
         "has no checks on pantry (it checks: chillybin auth)"},
        {{(char *)bin, "test", "--checks", table, "--target", "chillybin=http://x", "--target",
          "chillybin=http://y", NULL}, "--target given twice for chillybin"},
        {{(char *)bin, "test", "--checks", table, "--target", "chillybin=http://x", "--timeout",
          "soon", NULL}, "--timeout \"soon\""},
        {{(char *)bin, "test", "--checks", table, "--target", "chillybin=http://x", "--bogus",
          NULL}, "unknown option \"--bogus\""},
        {{(char *)bin, "test", "--checks", table, "--target", "chillybin=http://x", "--junit",
          junit_dir, NULL}, "cannot write"},
        {{(char *)bin, "test", "--checks", NULL}, "--checks needs a value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ran r = run(cases[i].argv);
        cr_expect_eq(r.code, 2, "case %zu: exit %d", i, r.code);
        cr_expect(strstr(r.err, cases[i].says) != NULL, "case %zu: stderr lacks \"%s\": %s", i,
                  cases[i].says, r.err);
        ran_free(&r);
    }
    free(table);
}

/* ---- The shipped table: jafflr's checks on the real chillybin example ---- */

static bool answers_health(const char *base)
{
    char url[128];
    snprintf(url, sizeof url, "%s/health", base);
    sonar_http_request req = {.url = url, .timeout_ms = 500};
    sonar_http_response resp = {0};
    bool ok = sonar_http_perform(&req, &resp) == SONAR_OK && resp.status == 200;
    sonar_http_response_finish(&resp);
    return ok;
}

/* Starts chillybin (variant v1 or nome) without a bus; base URL into base. */
static void start_chillybin(test_proc *p, const char *variant, char *base, size_t len)
{
    char db[300], port[16];
    snprintf(db, sizeof db, "%s/chillybin-%s.db", dir, variant);
    snprintf(port, sizeof port, "%d", test_free_port());
    snprintf(base, len, "http://127.0.0.1:%s", port);
    const char *argv[] = {test_bin("SONAR_CHILLYBIN_BIN"), "--db", db, "--port", port,
                          "--variant", variant, "--no-sonar", NULL};
    cr_assert(test_proc_start(p, dir, argv, NULL));
    cr_assert(TEST_WAIT_UNTIL(answers_health(base), 10000), "chillybin did not start: %s",
              test_proc_stderr(p));
}

Test(cli_test, the_jafflr_table_passes_on_chillybin_v1_and_catches_nome)
{
    const char *checks = test_bin("SONAR_JAFFLR_CHECKS");
    test_proc v1, nome;
    char v1_base[64], nome_base[64], target[96];
    start_chillybin(&v1, "v1", v1_base, sizeof v1_base);
    start_chillybin(&nome, "nome", nome_base, sizeof nome_base);

    snprintf(target, sizeof target, "chillybin=%s", v1_base);
    char *argv[] = {(char *)test_bin("SONAR_BIN"), "test", "--checks", (char *)checks,
                    "--target", target, NULL};
    ran r = run(argv);
    cr_assert_eq(r.code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert(strstr(r.out, "5 passed, 0 failed") != NULL, "%s", r.out);
    ran_free(&r);

    snprintf(target, sizeof target, "chillybin=%s", nome_base);
    r = run(argv);
    cr_assert_eq(r.code, 1, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert(strstr(r.out, "FAIL  chillybin / pick in stock") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "step 1 GET /pick?name=probe-") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, ": status 400, expected 200") != NULL, "%s", r.out);
    ran_free(&r);

    test_proc_signal(&v1, SIGTERM);
    test_proc_signal(&nome, SIGTERM);
    cr_assert(test_proc_wait(&v1, 15000));
    cr_assert(test_proc_wait(&nome, 15000));
    test_proc_finish(&v1);
    test_proc_finish(&nome);
}
