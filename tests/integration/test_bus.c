/*
 * sonar_bus against real nats-servers that require authentication: the
 * options reach the server from the config and from the environment, and
 * a refusal is a clear error.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/bus_internal.h"
#include "natsd.h"
#include "proc.h"
#include "sonar/sonar.h"

static test_natsd natsd;

static void teardown(void)
{
    test_natsd_destroy(&natsd);
    unsetenv("NATS_USER");
    unsetenv("NATS_PASSWORD");
    unsetenv("NATS_TOKEN");
    unsetenv("NATS_URL");
    nats_Close();
}

TestSuite(bus, .fini = teardown, .timeout = 60);

static const char *const userpass_args[] = {"--user", "sonar", "--pass", "s3cret", NULL};
static const char *const token_args[] = {"--auth", "t0ken", NULL};

Test(bus, user_and_password_from_the_config)
{
    cr_assert(test_natsd_start_with(&natsd, userpass_args));
    sonar_bus *bus = NULL;
    sonar_bus_config good = {.urls = natsd.url, .user = "sonar", .password = "s3cret"};
    cr_assert_eq(sonar_bus_connect(&bus, &good), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(sonar_bus_url(bus), natsd.url);
    sonar_bus_destroy(bus);
    bus = NULL;
    sonar_bus_config bad = {.urls = natsd.url, .user = "sonar", .password = "wrong"};
    cr_assert_eq(sonar_bus_connect(&bus, &bad), SONAR_ERR_NATS);
    cr_assert(strstr(sonar_last_error(), "uthorization") != NULL, "%s", sonar_last_error());
    cr_assert_null(bus);
}

Test(bus, url_user_and_password_from_the_environment)
{
    cr_assert(test_natsd_start_with(&natsd, userpass_args));
    setenv("NATS_URL", natsd.url, 1);
    setenv("NATS_USER", "sonar", 1);
    setenv("NATS_PASSWORD", "s3cret", 1);
    sonar_bus_config cfg = {0};
    sonar_bus_config_from_env(&cfg);
    sonar_bus *bus = NULL;
    cr_assert_eq(sonar_bus_connect(&bus, &cfg), SONAR_OK, "%s", sonar_last_error());
    sonar_bus_destroy(bus);
}

Test(bus, token_from_the_environment_and_config_wins_over_it)
{
    cr_assert(test_natsd_start_with(&natsd, token_args));
    setenv("NATS_TOKEN", "t0ken", 1);
    sonar_bus_config cfg = {.urls = natsd.url};
    sonar_bus_config_from_env(&cfg);
    sonar_bus *bus = NULL;
    cr_assert_eq(sonar_bus_connect(&bus, &cfg), SONAR_OK, "%s", sonar_last_error());
    sonar_bus_destroy(bus);
    bus = NULL;
    sonar_bus_config wrong = {.urls = natsd.url, .token = "nope"};
    sonar_bus_config_from_env(&wrong); /* a field set in the config is kept */
    cr_assert_str_eq(wrong.token, "nope");
    cr_assert_eq(sonar_bus_connect(&bus, &wrong), SONAR_ERR_NATS);
}

Test(bus, a_url_list_falls_over_to_a_live_server)
{
    cr_assert(test_natsd_start(&natsd));
    char urls[200];
    snprintf(urls, sizeof urls, "nats://127.0.0.1:%d, %s", test_free_port(), natsd.url);
    sonar_bus_config cfg = {.urls = urls, .connect_timeout_ms = 500};
    sonar_bus *bus = NULL;
    cr_assert_eq(sonar_bus_connect(&bus, &cfg), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(sonar_bus_url(bus), natsd.url);
    sonar_bus_destroy(bus);
}

Test(bus, inconsistent_auth_options_are_refused_before_connecting)
{
    sonar_bus *bus = NULL;
    sonar_bus_config both = {.urls = "nats://127.0.0.1:1", .user = "u", .token = "t"};
    cr_assert_eq(sonar_bus_connect(&bus, &both), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "token") != NULL);
    sonar_bus_config half_tls = {.urls = "nats://127.0.0.1:1", .tls_cert = "/etc/hostname"};
    cr_assert_eq(sonar_bus_connect(&bus, &half_tls), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "together") != NULL);
    sonar_bus_config nkey = {.urls = "nats://127.0.0.1:1", .nkey_public = "UABC"};
    cr_assert_eq(sonar_bus_connect(&bus, &nkey), SONAR_ERR_INVALID);
    sonar_bus_config empty = {.urls = " , "};
    cr_assert_eq(sonar_bus_connect(&bus, &empty), SONAR_ERR_INVALID);
    cr_assert_null(bus);
}

/* The outbox relay publishes on a direct connection so that nothing it
 * publishes while the client notices a loss can wait in nats.c's reconnect
 * buffer and overtake, on the next connection, a retry of what the old
 * socket lost. The bus connection itself does buffer (for contrast). */
Test(bus, a_direct_connection_refuses_publishes_after_a_loss_instead_of_buffering_them)
{
    cr_assert(test_natsd_start(&natsd));
    sonar_bus *bus = NULL;
    sonar_bus_config bc = {.urls = natsd.url, .name = "direct-test"};
    cr_assert_eq(sonar_bus_connect(&bus, &bc), SONAR_OK, "%s", sonar_last_error());
    natsConnection *direct = NULL;
    cr_assert_eq(sonar__bus_connect_direct(bus, &direct), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(natsConnection_PublishString(direct, "direct.a", "a"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(direct), NATS_OK);

    test_natsd_stop(&natsd);
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(direct) == NATS_CONN_STATUS_CLOSED, 10000),
              "the direct connection did not close (status %d)", natsConnection_Status(direct));
    cr_assert_neq(natsConnection_PublishString(direct, "direct.b", "b"), NATS_OK,
                  "a publish after the loss was accepted");
    natsConnection *shared = sonar_bus_nats(bus);
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(shared) == NATS_CONN_STATUS_RECONNECTING,
                              10000));
    cr_assert_eq(natsConnection_PublishString(shared, "direct.c", "c"), NATS_OK,
                 "the bus connection buffers while reconnecting");

    cr_assert(test_natsd_restart(&natsd));
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(shared) == NATS_CONN_STATUS_CONNECTED, 10000));
    cr_assert_eq(natsConnection_Status(direct), NATS_CONN_STATUS_CLOSED,
                 "the direct connection reconnected by itself");
    natsConnection *again = NULL;
    cr_assert_eq(sonar__bus_connect_direct(bus, &again), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(natsConnection_Status(again), NATS_CONN_STATUS_CONNECTED);
    natsConnection_Destroy(again);
    natsConnection_Destroy(direct);
    sonar_bus_destroy(bus);
}

Test(bus, retry_on_failed_connect_returns_at_once_and_connects_when_the_server_comes)
{
    cr_assert(test_natsd_start(&natsd));
    char url[64];
    snprintf(url, sizeof url, "%s", natsd.url);
    test_natsd_stop(&natsd);
    sonar_bus *bus = NULL;
    sonar_bus_config bc = {.urls = url, .retry_on_failed_connect = true};
    int64_t t0 = test_now_ms();
    cr_assert_eq(sonar_bus_connect(&bus, &bc), SONAR_OK, "%s", sonar_last_error());
    cr_assert_lt(test_now_ms() - t0, 5000, "connect blocked while no server answered");
    cr_assert_neq(natsConnection_Status(sonar_bus_nats(bus)), NATS_CONN_STATUS_CONNECTED);
    cr_assert(test_natsd_restart(&natsd));
    cr_assert(TEST_WAIT_UNTIL(natsConnection_Status(sonar_bus_nats(bus)) ==
                                  NATS_CONN_STATUS_CONNECTED,
                              10000),
              "never connected");
    sonar_bus_destroy(bus);
    /* Without the flag, an absent server is an error at once. */
    test_natsd_stop(&natsd);
    sonar_bus_config strict = {.urls = url};
    cr_assert_eq(sonar_bus_connect(&bus, &strict), SONAR_ERR_NATS);
}

typedef struct seen {
    pthread_mutex_t mu;
    int own, other;
} seen;

static void on_echo_test(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    seen *s = closure;
    pthread_mutex_lock(&s->mu);
    if (strcmp(natsMsg_GetData(msg), "own") == 0)
        s->own++;
    else
        s->other++;
    pthread_mutex_unlock(&s->mu);
    natsMsg_Destroy(msg);
}

static int seen_other(seen *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->other;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* With no_echo, a bus's own publishes do not come back to its subscriptions;
 * another connection's do. Without it, they do (the default). */
Test(bus, no_echo_keeps_a_bus_from_receiving_its_own_publishes)
{
    cr_assert(test_natsd_start(&natsd));
    natsConnection *other = NULL;
    cr_assert_eq(natsConnection_ConnectTo(&other, natsd.url), NATS_OK);
    for (int no_echo = 0; no_echo <= 1; no_echo++) {
        sonar_bus *bus = NULL;
        sonar_bus_config bc = {.urls = natsd.url, .no_echo = no_echo};
        cr_assert_eq(sonar_bus_connect(&bus, &bc), SONAR_OK, "%s", sonar_last_error());
        natsConnection *nc = sonar_bus_nats(bus);
        seen s = {.own = 0};
        pthread_mutex_init(&s.mu, NULL);
        natsSubscription *sub = NULL;
        cr_assert_eq(natsConnection_Subscribe(&sub, nc, "echo.test", on_echo_test, &s), NATS_OK);
        cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
        cr_assert_eq(natsConnection_PublishString(nc, "echo.test", "own"), NATS_OK);
        cr_assert_eq(natsConnection_Flush(nc), NATS_OK);
        /* The other connection's message comes after ours on the server:
         * once it arrived, ours would have too. */
        cr_assert_eq(natsConnection_PublishString(other, "echo.test", "other"), NATS_OK);
        cr_assert_eq(natsConnection_Flush(other), NATS_OK);
        cr_assert(TEST_WAIT_UNTIL(seen_other(&s) == 1, 5000), "the other message never came");
        pthread_mutex_lock(&s.mu);
        cr_assert_eq(s.own, no_echo ? 0 : 1, "no_echo %d: own message received %d times",
                     no_echo, s.own);
        pthread_mutex_unlock(&s.mu);
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
        sonar_bus_destroy(bus);
        pthread_mutex_destroy(&s.mu);
    }
    natsConnection_Destroy(other);
}

/* Runs a shell command line in `dir`; true when it exited 0. */
static bool sh_in(const char *dir, const char *cmd)
{
    char line[2048];
    snprintf(line, sizeof line, "cd '%s' && %s >/dev/null 2>&1", dir, cmd);
    return system(line) == 0;
}

/* A CA and a server certificate for 127.0.0.1 signed by it, made with the
 * openssl command (Debian's openssl package). */
static bool make_certs(const char *dir)
{
    return sh_in(dir, "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem"
                      " -days 2 -subj /CN=sonar-test-ca") &&
           sh_in(dir, "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr"
                      " -subj /CN=127.0.0.1") &&
           sh_in(dir, "printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf && openssl x509 -req"
                      " -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem"
                      " -days 2 -extfile ext.cnf") &&
           sh_in(dir, "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key"
                      " -out other.pem -days 2 -subj /CN=another-ca");
}

/* TLS options reach the server, for the bus and for the direct connections
 * the outbox relay opens from it (checked by bus_tls_probe, see there why
 * in a program of its own). */
Test(bus, tls_with_the_right_ca_connects_and_the_direct_connection_too)
{
    if (system("command -v openssl >/dev/null 2>&1") != 0)
        cr_skip_test("openssl is not installed: no certificates to test TLS with");
    char dir[256], ca[300], other[300], cert[300], key[300];
    cr_assert(test_mkdtemp(dir, sizeof dir, "tls"));
    cr_assert(make_certs(dir), "openssl could not make the test certificates in %s", dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(other, sizeof other, "%s/other.pem", dir);
    snprintf(cert, sizeof cert, "%s/server.pem", dir);
    snprintf(key, sizeof key, "%s/server.key", dir);
    const char *const tls_args[] = {"--tls", "--tlscert", cert, "--tlskey", key, NULL};
    cr_assert(test_natsd_start_with(&natsd, tls_args));
    const char *argv[] = {test_bin("SONAR_BUS_TLS_PROBE_BIN"), natsd.url, ca, other, NULL};
    test_proc p;
    int rc = test_proc_run(&p, dir, argv, NULL, 60000);
    char *out = test_proc_stdout(&p);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "ok the direct connection publishes and flushes") != NULL, "%s", out);
    cr_assert(strstr(out, "ok a server certificate from another CA is refused") != NULL, "%s",
              out);
    free(out);
    test_proc_finish(&p);
    test_rmtree(dir);
}
