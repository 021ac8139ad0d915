/*
 * sonar-gateway's command line: --help, bad flags and listen addresses
 * (exit 2 with the reason), an unreachable bus (exit 1). A binary of its
 * own: no bus stack is needed.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "natsd.h"
#include "proc.h"

TestSuite(gateway_flags, .timeout = 60);

static int run_gateway(const char *const *args, char **out, char **err)
{
    char dir[256];
    cr_assert(test_mkdtemp(dir, sizeof dir, "gwflags"));
    const char *argv[12] = {test_bin("SONAR_GATEWAY_BIN")};
    size_t n = 1;
    for (; args[n - 1] && n < 11; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    test_proc p;
    int rc = test_proc_run(&p, dir, argv, NULL, 10000);
    *out = test_proc_stdout(&p);
    *err = test_proc_stderr(&p);
    test_proc_finish(&p);
    test_rmtree(dir);
    return rc;
}

Test(gateway_flags, help_bad_flags_and_bad_listen_addresses)
{
    char *out, *err;
    const char *help[] = {"--help", NULL};
    cr_assert_eq(run_gateway(help, &out, &err), 0);
    cr_assert(strstr(out, "--listen ADDR:PORT") != NULL && strstr(out, "--timeout") != NULL,
              "%s", out);
    free(out);
    free(err);
    const char *bad[][3] = {
        {"--frobnicate", NULL, "unknown or incomplete option"},
        {"--timeout", "soon", "--timeout 'soon'"},
        {"--timeout", "11m", "--timeout"},
        {"--sse-queue", "2", "--sse-queue"},
        {"--listen", "127.0.0.1", "expected ADDR:PORT"},
        {"--listen", "127.0.0.1:70000", "port must be 0..65535"},
        {"--listen", "[::1:80", "bad [IPv6]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *args[] = {bad[i][0], bad[i][1], NULL};
        cr_assert_eq(run_gateway(args, &out, &err), 2, "%s %s: %s", bad[i][0], bad[i][1], err);
        cr_assert(strstr(err, bad[i][2]) != NULL, "%s %s: %s", bad[i][0], bad[i][1], err);
        free(out);
        free(err);
    }
}

Test(gateway_flags, an_unreachable_bus_exits_1_with_the_reason)
{
    char *out, *err;
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", test_free_port());
    const char *args[] = {"--server", url, "--listen", "127.0.0.1:0", NULL};
    cr_assert_eq(run_gateway(args, &out, &err), 1, "%s", err);
    cr_assert(strstr(err, "cannot connect to the bus") != NULL, "%s", err);
    free(out);
    free(err);
}
