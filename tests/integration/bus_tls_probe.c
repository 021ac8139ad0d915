/*
 * Helper of test_bus: connects to a TLS nats-server through sonar_bus, in a
 * process of its own. (Inside a criterion worker, OpenSSL's exit-time
 * cleanup crashed after a TLS connection -- OPENSSL_cleanup ->
 * OPENSSL_sk_pop_free, nats.c 3.4.1, OpenSSL 3.0 -- while plain programs
 * such as sonard exit cleanly; so the checks run here, as a program.)
 *
 *   bus_tls_probe URL CA_FILE OTHER_CA_FILE
 *
 * Prints one line per check; exits 0 when every check came out as expected.
 */
#include <stdio.h>
#include <string.h>

#include "../../common/bus_internal.h"
#include "sonar/sonar.h"

static int failures;

static void expect(bool ok, const char *what)
{
    printf("%s %s\n", ok ? "ok" : "FAILED", what);
    if (!ok) {
        printf("  (%s)\n", sonar_last_error());
        failures++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bus_tls_probe URL CA_FILE OTHER_CA_FILE\n");
        return 2;
    }
    sonar_bus *bus = NULL;
    sonar_bus_config good = {.urls = argv[1], .tls_ca = argv[2]};
    expect(sonar_bus_connect(&bus, &good) == SONAR_OK, "connects with the server's CA");
    if (bus != NULL) {
        natsConnection *direct = NULL;
        bool up = sonar__bus_connect_direct(bus, &direct) == SONAR_OK;
        expect(up, "the direct connection (the outbox relay's) connects with the same TLS");
        if (up)
            expect(natsConnection_PublishString(direct, "tls.x", "x") == NATS_OK &&
                       natsConnection_FlushTimeout(direct, 5000) == NATS_OK,
                   "the direct connection publishes and flushes");
        natsConnection_Destroy(direct);
        sonar_bus_destroy(bus);
        bus = NULL;
    }
    sonar_bus_config wrong = {.urls = argv[1], .tls_ca = argv[3]};
    expect(sonar_bus_connect(&bus, &wrong) == SONAR_ERR_NATS && bus == NULL,
           "a server certificate from another CA is refused");
    sonar_bus_destroy(bus);
    bus = NULL;
    sonar_bus_config plain = {.urls = argv[1]};
    expect(sonar_bus_connect(&bus, &plain) == SONAR_ERR_NATS && bus == NULL,
           "no TLS to a server that requires it is refused");
    sonar_bus_destroy(bus);
    nats_Close();
    return failures ? 1 : 0;
}
