/*
 * sonar_bus against real nats-servers that require authentication: the
 * options reach the server from the config and from the environment, and
 * a refusal is a clear error.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/bus_internal.h"
#include "natsd.h"
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
