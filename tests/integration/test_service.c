/*
 * libsonar service runtime against a real nats-server: registration and
 * heartbeat, check requests answered (none / pass / fail / timed out), one
 * answer per service with two instances, $SRV discovery, endpoints, and
 * garbage survived.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "collector.h"
#include "natsd.h"
#include "sonar/sonar.h"

static test_natsd natsd;
static sonar_bus *bus;       /* the services' connection */
static natsConnection *test_nc; /* the test's own connection */

static void setup(void)
{
    cr_assert(test_natsd_start(&natsd), "nats-server did not start");
    sonar_bus_config cfg = {.urls = natsd.url, .name = "service-under-test"};
    cr_assert_eq(sonar_bus_connect(&bus, &cfg), SONAR_OK, "%s", sonar_last_error());
    cr_assert_eq(natsConnection_ConnectTo(&test_nc, natsd.url), NATS_OK);
}

static void teardown(void)
{
    natsConnection_Destroy(test_nc);
    sonar_bus_destroy(bus);
    test_natsd_destroy(&natsd);
    nats_Close();
}

TestSuite(service, .init = setup, .fini = teardown, .timeout = 60);

/* ---- checks used by the tests ------------------------------------------ */

static sonar_check_status check_pass(sonar_check_ctx *ctx, void *closure)
{
    (void)closure;
    return sonar_check_pass(ctx, "candidate %s at %s looks fine", sonar_check_version(ctx),
                            sonar_check_address(ctx));
}

static sonar_check_status check_fail(sonar_check_ctx *ctx, void *closure)
{
    (void)closure;
    return sonar_check_fail(ctx, "GET /pick?name=cheese → 404, expected 200");
}

/* Hangs until released or the deadline is long gone; proves the runner
 * reports it at the deadline without waiting. */
static pthread_mutex_t hang_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hang_cond = PTHREAD_COND_INITIALIZER;
static bool hang_released;

static sonar_check_status check_hang(sonar_check_ctx *ctx, void *closure)
{
    (void)closure;
    pthread_mutex_lock(&hang_lock);
    while (!hang_released)
        pthread_cond_wait(&hang_cond, &hang_lock);
    pthread_mutex_unlock(&hang_lock);
    return sonar_check_pass(ctx, "too late");
}

static void release_hang(void)
{
    pthread_mutex_lock(&hang_lock);
    hang_released = true;
    pthread_cond_broadcast(&hang_cond);
    pthread_mutex_unlock(&hang_lock);
}

/* ---- helpers ------------------------------------------------------------ */

static sonar_service *join(const char *name, const char *instance)
{
    sonar_service_config cfg = {.name = name, .version = "1.2.3", .instance = instance,
                                .address = "http://127.0.0.1:9/", .heartbeat_ms = 200,
                                .description = "a test service"};
    sonar_service *svc = NULL;
    cr_assert_eq(sonar_service_create(&svc, bus, &cfg), SONAR_OK, "%s", sonar_last_error());
    return svc;
}

static void start(sonar_service *svc)
{
    cr_assert_eq(sonar_service_start(svc), SONAR_OK, "%s", sonar_last_error());
}

static void publish_check(const char *service, const char *change_id, int64_t timeout_ms)
{
    sonar_check_msg m = {.change_id = (char *)change_id, .service = (char *)service,
                         .version = "2.0.0", .address = "http://10.0.0.5:8081",
                         .timeout_ms = timeout_ms};
    char *json = NULL;
    cr_assert_eq(sonar_check_encode(&m, &json), SONAR_OK, "%s", sonar_last_error());
    char subject[128];
    snprintf(subject, sizeof subject, "sonar.check.%s", service);
    cr_assert_eq(natsConnection_PublishString(test_nc, subject, json), NATS_OK);
    natsConnection_Flush(test_nc);
    free(json);
}

static void decode_result(test_collector *c, size_t i, sonar_result_msg *out)
{
    const char *data = test_collector_data(c, i);
    cr_assert_not_null(data);
    cr_assert_eq(sonar_result_decode(out, data, strlen(data)), SONAR_OK, "%s: %s",
                 sonar_last_error(), data);
}

static natsMsg *request(const char *subject, const char *body)
{
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_RequestString(&reply, test_nc, subject, body, 10000);
    cr_assert_eq(s, NATS_OK, "request on %s: %s", subject, natsStatus_GetText(s));
    return reply;
}

/* ---- tests -------------------------------------------------------------- */

Test(service, registers_and_heartbeats)
{
    test_collector *regs = test_collector_create(test_nc, "sonar.register.jafflr");
    sonar_service *svc = join("jafflr", NULL);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "pick cheese", check_pass, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_depend(svc, "aquifers"), SONAR_OK);
    start(svc);
    /* The first registration at start, then heartbeats every 200 ms. */
    cr_assert(test_collector_wait(regs, 3, 5000), "expected registration + 2 heartbeats, got %zu",
              test_collector_count(regs));
    sonar_register_msg r = {0};
    const char *data = test_collector_data(regs, 2);
    cr_assert_eq(sonar_register_decode(&r, data, strlen(data)), SONAR_OK, "%s", sonar_last_error());
    cr_assert_str_eq(r.service, "jafflr");
    cr_assert_str_eq(r.version, "1.2.3");
    cr_assert_str_eq(r.instance, sonar_service_instance(svc));
    cr_assert_eq(r.heartbeat_ms, 200);
    cr_assert_eq(r.n_depends_on, 2);
    cr_assert_eq(r.n_checks, 1);
    cr_assert_str_eq(r.checks[0].dependency, "chillybin");
    cr_assert_eq(r.checks[0].n_names, 1);
    cr_assert_str_eq(r.checks[0].names[0], "pick cheese");
    sonar_register_finish(&r);

    /* Leaving publishes sonar.leave.<service> with the instance. */
    test_collector *leaves = test_collector_create(test_nc, "sonar.leave.jafflr");
    char instance[64];
    snprintf(instance, sizeof instance, "%s", sonar_service_instance(svc));
    sonar_service_destroy(svc);
    cr_assert(test_collector_wait(leaves, 1, 10000), "no leave message");
    sonar_leave_msg lm = {0};
    data = test_collector_data(leaves, 0);
    cr_assert_eq(sonar_leave_decode(&lm, data, strlen(data)), SONAR_OK);
    cr_assert_str_eq(lm.instance, instance);
    sonar_leave_finish(&lm);
    test_collector_destroy(leaves);
    test_collector_destroy(regs);
}

Test(service, discover_makes_services_register_again)
{
    sonar_service_config cfg = {.name = "slowbeat", .version = "1.0.0", .heartbeat_ms = 3600000};
    sonar_service *svc = NULL;
    cr_assert_eq(sonar_service_create(&svc, bus, &cfg), SONAR_OK);
    test_collector *regs = test_collector_create(test_nc, "sonar.register.slowbeat");
    start(svc);
    cr_assert(test_collector_wait(regs, 1, 10000));
    natsConnection_PublishString(test_nc, "sonar.discover", "{\"type\":\"sonar.discover.v1\"}");
    cr_assert(test_collector_wait(regs, 2, 10000), "discover did not trigger a registration");
    natsConnection_PublishString(test_nc, "sonar.discover", "");
    cr_assert(test_collector_wait(regs, 3, 10000), "an empty discover must work too");
    sonar_service_destroy(svc);
    test_collector_destroy(regs);
}

Test(service, non_dependent_answers_none_at_once)
{
    sonar_service *svc = join("wells", NULL);
    cr_assert_eq(sonar_service_add_check(svc, "aquifers", "create", check_pass, NULL), SONAR_OK);
    start(svc);
    test_collector *results = test_collector_create(test_nc, "sonar.result.c1.*");
    publish_check("chillybin", "c1", 5000);
    cr_assert(test_collector_wait(results, 1, 10000));
    cr_assert_str_eq(test_collector_subject(results, 0), "sonar.result.c1.wells");
    sonar_result_msg r = {0};
    decode_result(results, 0, &r);
    cr_assert_eq(r.status, SONAR_NONE);
    cr_assert_str_eq(r.service, "wells");
    cr_assert_str_eq(r.change_id, "c1");
    cr_assert_eq(r.n_checks, 0);
    sonar_result_finish(&r);
    sonar_service_destroy(svc);
    test_collector_destroy(results);
}

Test(service, dependent_answers_pass_and_fail_with_detail)
{
    sonar_service *svc = join("jafflr", NULL);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "stock is shown", check_pass, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "pick cheese", check_fail, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "other", "unrelated", check_fail, NULL), SONAR_OK);
    start(svc);
    test_collector *results = test_collector_create(test_nc, "sonar.result.c2.*");
    publish_check("chillybin", "c2", 5000);
    cr_assert(test_collector_wait(results, 1, 10000));
    sonar_result_msg r = {0};
    decode_result(results, 0, &r);
    cr_assert_eq(r.status, SONAR_FAIL);
    cr_assert_str_eq(r.instance, sonar_service_instance(svc));
    cr_assert_eq(r.n_checks, 2, "only the checks on chillybin run");
    const sonar_check_result *pass = strcmp(r.checks[0].name, "stock is shown") == 0 ? &r.checks[0] : &r.checks[1];
    const sonar_check_result *fail = pass == &r.checks[0] ? &r.checks[1] : &r.checks[0];
    cr_assert_eq(pass->status, SONAR_PASS);
    cr_assert(strstr(pass->message, "2.0.0") && strstr(pass->message, "http://10.0.0.5:8081"),
              "the check saw the candidate: %s", pass->message);
    cr_assert_eq(fail->status, SONAR_FAIL);
    cr_assert_str_eq(fail->message, "GET /pick?name=cheese → 404, expected 200");
    sonar_result_finish(&r);

    /* Only passing checks: the answer is pass. */
    sonar_service *svc2 = join("toaster", NULL);
    cr_assert_eq(sonar_service_add_check(svc2, "bread", "slice", check_pass, NULL), SONAR_OK);
    start(svc2);
    test_collector *r3 = test_collector_create(test_nc, "sonar.result.c3.toaster");
    publish_check("bread", "c3", 5000);
    cr_assert(test_collector_wait(r3, 1, 10000));
    decode_result(r3, 0, &r);
    cr_assert_eq(r.status, SONAR_PASS);
    sonar_result_finish(&r);
    sonar_service_destroy(svc2);
    sonar_service_destroy(svc);
    test_collector_destroy(r3);
    test_collector_destroy(results);
}

Test(service, hung_check_is_reported_timed_out_at_the_deadline)
{
    hang_released = false;
    sonar_service *svc = join("jafflr", NULL);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "hangs", check_hang, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "quick", check_pass, NULL), SONAR_OK);
    start(svc);
    test_collector *results = test_collector_create(test_nc, "sonar.result.c4.*");
    int64_t t0 = test_now_ms();
    publish_check("chillybin", "c4", 1000);
    /* Answered although the hung check never returns on its own (it is
     * released only below), and not before the 1 s deadline. */
    cr_assert(test_collector_wait(results, 1, 10000), "no answer while a check hangs");
    int64_t waited = test_now_ms() - t0;
    cr_assert_geq(waited, 900, "answered after %lld ms, before the deadline", (long long)waited);
    cr_assert_str_eq(test_collector_subject(results, 0), "sonar.result.c4.jafflr");
    sonar_result_msg r = {0};
    decode_result(results, 0, &r);
    cr_assert_eq(r.status, SONAR_FAIL);
    const sonar_check_result *hung = strcmp(r.checks[0].name, "hangs") == 0 ? &r.checks[0] : &r.checks[1];
    const sonar_check_result *quick = hung == &r.checks[0] ? &r.checks[1] : &r.checks[0];
    cr_assert_eq(hung->status, SONAR_FAIL);
    cr_assert(strstr(hung->message, "timed out after") != NULL, "message: %s", hung->message);
    cr_assert_eq(quick->status, SONAR_PASS);
    sonar_result_finish(&r);
    /* The late result is discarded: no second answer. A sentinel on the same
     * subscription, published once the service is gone, arrives after
     * anything the service sent. */
    release_hang();
    sonar_service_destroy(svc); /* waits for the released check thread */
    cr_assert_eq(natsConnection_PublishString(test_nc, "sonar.result.c4.sentinel", "{}"), NATS_OK);
    cr_assert(test_collector_wait(results, 2, 10000), "the sentinel did not arrive");
    cr_assert_str_eq(test_collector_subject(results, 1), "sonar.result.c4.sentinel",
                     "a second answer came: %s", test_collector_data(results, 1));
    cr_assert_eq(test_collector_count(results), 2);
    test_collector_destroy(results);
}

Test(service, two_instances_give_one_answer)
{
    sonar_service *a = join("jafflr", "one");
    sonar_service *b = join("jafflr", "two");
    cr_assert_eq(sonar_service_add_check(a, "chillybin", "x", check_pass, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(b, "chillybin", "x", check_pass, NULL), SONAR_OK);
    start(a);
    start(b);
    test_collector *results = test_collector_create(test_nc, "sonar.result.*.jafflr");
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "multi%d", i);
        publish_check("chillybin", id, 5000);
    }
    cr_assert(test_collector_wait(results, 10, 5000));
    /* Flush a round trip through the server, then make sure nothing more came. */
    test_collector *marker = test_collector_create(test_nc, "sonar.result.marker.*");
    sonar_service *c = join("marker", NULL);
    start(c);
    publish_check("chillybin", "marker", 5000);
    cr_assert(test_collector_wait(marker, 1, 10000));
    cr_assert(test_collector_wait(results, 11, 10000)); /* the marker's answers from jafflr */
    cr_assert_eq(test_collector_count(results), 11, "each change answered once per service");
    sonar_service_destroy(c);
    sonar_service_destroy(a);
    sonar_service_destroy(b);
    test_collector_destroy(marker);
    test_collector_destroy(results);
}

static sonar_status echo_handler(sonar_request *req, void *closure)
{
    (void)closure;
    if (sonar_request_len(req) == 0)
        return sonar_request_respond_error(req, 400, "empty request");
    return sonar_request_respond(req, sonar_request_data(req), sonar_request_len(req));
}

static sonar_status silent_handler(sonar_request *req, void *closure)
{
    (void)req;
    (void)closure;
    return SONAR_ERR_NOT_FOUND;
}

static json_t *echo_stats(void *closure)
{
    (void)closure;
    return json_pack("{s:i}", "pending", 7);
}

Test(service, srv_ping_info_stats_answer_with_the_right_fields)
{
    sonar_service *svc = join("wells", "inst1");
    cr_assert_eq(sonar_service_add_endpoint(svc, "echo", "wells.echo", NULL, echo_handler, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_endpoint(svc, "silent", "wells.silent", "custom", silent_handler, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_set_endpoint_stats(svc, "echo", echo_stats, NULL), SONAR_OK);
    start(svc);

    /* Endpoint traffic first, so STATS has something to count. */
    natsMsg *m = request("wells.echo", "hi");
    cr_assert_eq(natsMsg_GetDataLength(m), 2);
    natsMsg_Destroy(m);
    m = request("wells.echo", "");
    const char *code = NULL;
    cr_assert_eq(natsMsgHeader_Get(m, "Nats-Service-Error-Code", &code), NATS_OK);
    cr_assert_str_eq(code, "400");
    sonar_error_msg em = {0};
    cr_assert_eq(sonar_error_decode(&em, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)), SONAR_OK);
    cr_assert_eq(em.code, 400);
    cr_assert_str_eq(em.message, "empty request");
    sonar_error_finish(&em);
    natsMsg_Destroy(m);
    m = request("wells.silent", "x");
    cr_assert_eq(natsMsgHeader_Get(m, "Nats-Service-Error-Code", &code), NATS_OK);
    cr_assert_str_eq(code, "404");
    natsMsg_Destroy(m);

    const char *subjects[] = {"$SRV.PING", "$SRV.PING.wells", "$SRV.PING.wells.inst1"};
    for (int i = 0; i < 3; i++) {
        m = request(subjects[i], "");
        json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
        cr_assert_not_null(j);
        cr_assert_str_eq(json_string_value(json_object_get(j, "type")), "io.nats.micro.v1.ping_response");
        cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "wells");
        cr_assert_str_eq(json_string_value(json_object_get(j, "id")), "inst1");
        cr_assert_str_eq(json_string_value(json_object_get(j, "version")), "1.2.3");
        cr_assert(json_is_object(json_object_get(j, "metadata")));
        json_decref(j);
        natsMsg_Destroy(m);
    }

    m = request("$SRV.INFO.wells", "");
    json_t *info = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(info, "type")), "io.nats.micro.v1.info_response");
    cr_assert_str_eq(json_string_value(json_object_get(info, "description")), "a test service");
    json_t *eps = json_object_get(info, "endpoints");
    cr_assert_eq(json_array_size(eps), 3);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(eps, 0), "subject")), "sonar.check.*");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(eps, 0), "queue_group")), "wells");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(eps, 1), "name")), "echo");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(eps, 1), "queue_group")), "q");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(eps, 2), "queue_group")), "custom");
    json_decref(info);
    natsMsg_Destroy(m);

    m = request("$SRV.STATS.wells.inst1", "");
    json_t *stats = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(stats, "type")), "io.nats.micro.v1.stats_response");
    const char *started = json_string_value(json_object_get(stats, "started"));
    cr_assert(started && strlen(started) == 24 && started[23] == 'Z', "started: %s", started);
    eps = json_object_get(stats, "endpoints");
    json_t *echo = json_array_get(eps, 1);
    cr_assert_eq(json_integer_value(json_object_get(echo, "num_requests")), 2);
    cr_assert_eq(json_integer_value(json_object_get(echo, "num_errors")), 1);
    cr_assert_str_eq(json_string_value(json_object_get(echo, "last_error")), "empty request");
    cr_assert_gt(json_integer_value(json_object_get(echo, "processing_time")), 0);
    cr_assert(json_is_integer(json_object_get(echo, "average_processing_time")));
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(echo, "data"), "pending")), 7);
    json_t *silent = json_array_get(eps, 2);
    cr_assert_eq(json_integer_value(json_object_get(silent, "num_errors")), 1);
    cr_assert(strstr(json_string_value(json_object_get(silent, "last_error")), "not found") != NULL);
    json_decref(stats);
    natsMsg_Destroy(m);
    sonar_service_destroy(svc);
}

Test(service, garbage_on_check_and_discover_is_survived)
{
    sonar_service *svc = join("jafflr", NULL);
    cr_assert_eq(sonar_service_add_check(svc, "chillybin", "x", check_pass, NULL), SONAR_OK);
    start(svc);
    const char *garbage[] = {
        "", "not json", "{", "[]", "null", "{\"type\":\"sonar.check.v9\"}",
        "{\"type\":\"sonar.check.v1\",\"change_id\":\"a.b\",\"service\":\"chillybin\",\"version\":\"1\",\"address\":\"x\",\"timeout_ms\":5}",
        "{\"type\":\"sonar.check.v1\",\"change_id\":\"ok\",\"service\":\"other\",\"version\":\"1\",\"address\":\"x\",\"timeout_ms\":5}",
        "{\"type\":\"sonar.check.v1\",\"change_id\":\"ok\",\"service\":\"chillybin\",\"version\":\"1\",\"address\":\"x\",\"timeout_ms\":-1}",
        "\xff\xfe\x00\x01",
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        natsConnection_Publish(test_nc, "sonar.check.chillybin", garbage[i], (int)strlen(garbage[i]));
        natsConnection_PublishString(test_nc, "sonar.discover", garbage[i][0] ? garbage[i] : "x");
    }
    /* A request with a reply subject gets a sonar.error.v1 answer. */
    natsMsg *m = request("sonar.check.chillybin", "not json");
    sonar_error_msg em = {0};
    cr_assert_eq(sonar_error_decode(&em, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)), SONAR_OK);
    cr_assert_eq(em.code, 400);
    cr_assert_gt(strlen(em.message), 0);
    sonar_error_finish(&em);
    natsMsg_Destroy(m);
    /* Still alive and answering. */
    test_collector *results = test_collector_create(test_nc, "sonar.result.alive.jafflr");
    publish_check("chillybin", "alive", 5000);
    cr_assert(test_collector_wait(results, 1, 10000), "the service stopped answering after garbage");
    test_collector_destroy(results);
    sonar_service_destroy(svc);
}

Test(service, bad_configuration_is_refused_with_a_reason)
{
    sonar_service *svc = NULL;
    sonar_service_config bad_name = {.name = "bad.name", .version = "1.0.0"};
    cr_assert_eq(sonar_service_create(&svc, bus, &bad_name), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "bad.name") != NULL);
    sonar_service_config bad_version = {.name = "ok", .version = "one"};
    cr_assert_eq(sonar_service_create(&svc, bus, &bad_version), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "SemVer") != NULL);
    cr_assert_null(svc);
    svc = join("ok", NULL);
    cr_assert_eq(sonar_service_add_check(svc, "bad dep", "x", check_pass, NULL), SONAR_ERR_INVALID);
    cr_assert_eq(sonar_service_add_check(svc, "ok", "x", check_pass, NULL), SONAR_ERR_INVALID,
                 "depending on itself");
    cr_assert_eq(sonar_service_add_check(svc, "dep", "x", check_pass, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "dep", "x", check_pass, NULL), SONAR_ERR_INVALID,
                 "duplicate check name");
    cr_assert_eq(sonar_service_add_endpoint(svc, "e", "bad subject", NULL, echo_handler, NULL), SONAR_ERR_INVALID);
    start(svc);
    cr_assert_eq(sonar_service_add_check(svc, "dep", "y", check_pass, NULL), SONAR_ERR_STATE);
    sonar_service_destroy(svc);
}

Test(service, bus_refuses_unreachable_server_and_bad_auth_files)
{
    sonar_bus *b = NULL;
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", test_free_port());
    sonar_bus_config cfg = {.urls = url, .connect_timeout_ms = 500};
    cr_assert_eq(sonar_bus_connect(&b, &cfg), SONAR_ERR_NATS);
    cr_assert(strstr(sonar_last_error(), url) != NULL, "%s", sonar_last_error());
    sonar_bus_config creds = {.urls = natsd.url, .creds_file = "/nonexistent/user.creds"};
    cr_assert_eq(sonar_bus_connect(&b, &creds), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "user.creds") != NULL);
    cr_assert_null(b);
}

Test(service, no_check_endpoint_never_answers_checks)
{
    sonar_service_config cfg = {.name = "coord", .version = "1.0.0", .instance = "c1",
                                .no_check_endpoint = true};
    sonar_service *svc = NULL;
    cr_assert_eq(sonar_service_create(&svc, bus, &cfg), SONAR_OK);
    cr_assert_eq(sonar_service_add_check(svc, "x", "y", check_pass, NULL), SONAR_ERR_STATE);
    cr_assert_eq(sonar_service_add_endpoint(svc, "echo", "coord.echo", NULL, echo_handler, NULL), SONAR_OK);
    start(svc);
    /* A service that does answer, as a marker that the request went round. */
    sonar_service *other = join("other", NULL);
    start(other);
    test_collector *results = test_collector_create(test_nc, "sonar.result.nc1.*");
    publish_check("chillybin", "nc1", 5000);
    cr_assert(test_collector_wait(results, 1, 10000));
    natsMsg *m = request("$SRV.INFO.coord", "");
    json_t *info = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *eps = json_object_get(info, "endpoints");
    cr_assert_eq(json_array_size(eps), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(eps, 0), "name")), "echo");
    json_decref(info);
    natsMsg_Destroy(m);
    m = request("coord.echo", "ping");
    cr_assert_eq(natsMsg_GetDataLength(m), 4);
    natsMsg_Destroy(m);
    cr_assert_eq(test_collector_count(results), 1, "only the marker answered");
    cr_assert_str_eq(test_collector_subject(results, 0), "sonar.result.nc1.other");
    test_collector_destroy(results);
    sonar_service_destroy(other);
    sonar_service_destroy(svc);
}

/* ---- fast endpoints ------------------------------------------------------ */

typedef struct fast_job {
    pthread_t handler_thread; /* the NATS thread the fast handler ran on */
    pthread_t helper;         /* "other": the thread that answers */
    bool has_helper;
    sonar_status second_defer;
} fast_job;

static _Atomic int second_answer = -1;

static void *answer_from_helper(void *arg)
{
    sonar_request_respond(arg, "other", 5);
    return NULL;
}

static sonar_status fast_continue(sonar_request *req, void *closure)
{
    fast_job *fj = closure;
    bool same_thread = pthread_equal(fj->handler_thread, pthread_self());
    if (fj->has_helper) {
        pthread_join(fj->helper, NULL);
        /* Answered by the helper already: a second answer is refused. */
        atomic_store(&second_answer, sonar_request_respond(req, "again", 5));
        free(fj);
        return SONAR_OK;
    }
    char text[64];
    snprintf(text, sizeof text, "later:%s:%s", same_thread ? "same-thread" : "worker",
             sonar_status_str(fj->second_defer));
    free(fj);
    return sonar_request_respond(req, text, strlen(text));
}

static sonar_status fast_handler(sonar_request *req, void *closure)
{
    (void)closure;
    const char *body = sonar_request_data(req);
    size_t len = sonar_request_len(req);
    if (len == 3 && memcmp(body, "now", 3) == 0)
        return sonar_request_respond(req, "now", 3);
    if (len == 7 && memcmp(body, "nothing", 7) == 0)
        return SONAR_ERR_NOT_FOUND;
    fast_job *fj = calloc(1, sizeof *fj);
    cr_assert_not_null(fj);
    fj->handler_thread = pthread_self();
    if (sonar_request_defer(req, fast_continue, fj) != SONAR_OK) {
        free(fj);
        return SONAR_ERR_STATE;
    }
    /* fj belongs to the continuation now, which runs after we return. */
    if (len == 5 && memcmp(body, "other", 5) == 0) {
        fj->has_helper = true;
        cr_assert_eq(pthread_create(&fj->helper, NULL, answer_from_helper, req), 0);
    }
    fj->second_defer = sonar_request_defer(req, fast_continue, fj);
    return SONAR_OK;
}

static sonar_status plain_defer_handler(sonar_request *req, void *closure)
{
    (void)closure;
    sonar_status s = sonar_request_defer(req, fast_continue, NULL);
    const char *text = sonar_status_str(s);
    return sonar_request_respond(req, text, strlen(text));
}

static void assert_reply(const char *subject, const char *body, const char *want)
{
    natsMsg *m = request(subject, body);
    cr_assert_eq((size_t)natsMsg_GetDataLength(m), strlen(want), "reply to %s: %.*s", body,
                 natsMsg_GetDataLength(m), natsMsg_GetData(m));
    cr_assert_eq(memcmp(natsMsg_GetData(m), want, strlen(want)), 0, "reply to %s: %.*s", body,
                 natsMsg_GetDataLength(m), natsMsg_GetData(m));
    natsMsg_Destroy(m);
}

Test(service, fast_endpoint_answers_on_the_nats_thread_or_defers_to_a_worker)
{
    sonar_service *svc = join("speedy", "s1");
    cr_assert_eq(sonar_service_add_fast_endpoint(svc, "fast", "speedy.fast", NULL, fast_handler, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_endpoint(svc, "plain", "speedy.plain", NULL, plain_defer_handler, NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_fast_endpoint(svc, "fast", "speedy.other", NULL, fast_handler, NULL),
                 SONAR_ERR_INVALID, "names stay unique");
    start(svc);

    assert_reply("speedy.fast", "now", "now");
    /* Deferred: the continuation runs on a worker, and only one defer is allowed. */
    assert_reply("speedy.fast", "later", "later:worker:invalid state");
    /* Answered by another thread while the continuation waits for it. */
    assert_reply("speedy.fast", "other", "other");
    cr_assert(TEST_WAIT_UNTIL(atomic_load(&second_answer) != -1, 5000));
    cr_assert_eq(atomic_load(&second_answer), SONAR_ERR_STATE, "a second answer is refused");
    /* Neither answered nor deferred: the service answers with the status. */
    natsMsg *m = request("speedy.fast", "nothing");
    const char *code = NULL;
    cr_assert_eq(natsMsgHeader_Get(m, "Nats-Service-Error-Code", &code), NATS_OK);
    cr_assert_str_eq(code, "404");
    natsMsg_Destroy(m);
    /* A plain endpoint's handler already runs on a worker: it cannot defer. */
    assert_reply("speedy.plain", "x", "invalid state");

    m = request("$SRV.INFO.speedy", "");
    json_t *info = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *fast = json_array_get(json_object_get(info, "endpoints"), 1);
    cr_assert_str_eq(json_string_value(json_object_get(fast, "name")), "fast");
    cr_assert_str_eq(json_string_value(json_object_get(fast, "subject")), "speedy.fast");
    json_decref(info);
    natsMsg_Destroy(m);
    m = request("$SRV.STATS.speedy", "");
    json_t *stats = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    fast = json_array_get(json_object_get(stats, "endpoints"), 1);
    cr_assert_eq(json_integer_value(json_object_get(fast, "num_requests")), 4,
                 "each request counted once, whichever thread answered");
    cr_assert_eq(json_integer_value(json_object_get(fast, "num_errors")), 1);
    cr_assert(strstr(json_string_value(json_object_get(fast, "last_error")), "not found") != NULL);
    json_decref(stats);
    natsMsg_Destroy(m);
    sonar_service_destroy(svc);
}

/* ---- kept requests ------------------------------------------------------ */

static pthread_mutex_t kept_mu = PTHREAD_MUTEX_INITIALIZER;
static sonar_request *kept_req; /* a kept request waiting for the test to answer it */
static _Atomic int keep_again = -1;   /* a second keep by the fast handler */
static _Atomic int keep_deferred = -1; /* a keep by a fast handler that deferred */

static void hand_over(sonar_request *req)
{
    pthread_mutex_lock(&kept_mu);
    kept_req = req;
    pthread_mutex_unlock(&kept_mu);
}

static sonar_request *take_kept(void)
{
    pthread_mutex_lock(&kept_mu);
    sonar_request *req = kept_req;
    kept_req = NULL;
    pthread_mutex_unlock(&kept_mu);
    return req;
}

static bool kept_waiting(void)
{
    pthread_mutex_lock(&kept_mu);
    bool waiting = kept_req != NULL;
    pthread_mutex_unlock(&kept_mu);
    return waiting;
}

static sonar_status keep_continue(sonar_request *req, void *closure)
{
    (void)closure;
    if (sonar_request_keep(req) == SONAR_OK)
        hand_over(req);
    return SONAR_OK;
}

static sonar_status keep_handler(sonar_request *req, void *closure)
{
    (void)closure;
    const char *body = sonar_request_data(req);
    if (strcmp(body, "keep") == 0) {
        if (sonar_request_keep(req) != SONAR_OK)
            return SONAR_ERR_STATE;
        atomic_store(&keep_again, sonar_request_keep(req));
        hand_over(req); /* the test answers it, maybe before we return */
        return SONAR_OK;
    }
    if (strcmp(body, "drop") == 0) { /* done at once, unanswered, before returning */
        if (sonar_request_keep(req) != SONAR_OK)
            return SONAR_ERR_STATE;
        sonar_request_done(req);
        return SONAR_OK;
    }
    /* "defer": a fast handler that deferred cannot keep; its continuation can. */
    if (sonar_request_defer(req, keep_continue, NULL) != SONAR_OK)
        return SONAR_ERR_STATE;
    atomic_store(&keep_deferred, sonar_request_keep(req));
    return SONAR_OK;
}

static sonar_status plain_keep_handler(sonar_request *req, void *closure)
{
    (void)closure;
    const char *text = sonar_status_str(sonar_request_keep(req));
    return sonar_request_respond(req, text, strlen(text));
}

static natsSubscription *request_async(const char *subject, const char *body, const char *reply)
{
    natsSubscription *sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&sub, test_nc, reply), NATS_OK);
    cr_assert_eq(natsConnection_PublishRequestString(test_nc, subject, reply, body), NATS_OK);
    return sub;
}

typedef struct stopper {
    sonar_service *svc;
    _Atomic bool stopped;
} stopper;

static void *stop_service(void *arg)
{
    stopper *st = arg;
    sonar_service_stop(st->svc);
    atomic_store(&st->stopped, true);
    return NULL;
}

/* A kept request outlives its handler: another thread answers it and hands
 * it back; unanswered, it gets a 500; stop waits for it. */
Test(service, a_kept_request_is_answered_after_its_handler_and_stop_waits_for_it)
{
    sonar_service *svc = join("keeper", "k1");
    cr_assert_eq(sonar_service_add_fast_endpoint(svc, "keep", "keeper.fast", NULL, keep_handler,
                                                 NULL), SONAR_OK);
    cr_assert_eq(sonar_service_add_endpoint(svc, "plain", "keeper.plain", NULL,
                                            plain_keep_handler, NULL), SONAR_OK);
    start(svc);
    /* Kept by the fast handler (once), answered by the test thread. */
    natsSubscription *sub = request_async("keeper.fast", "keep", "test.keep.1");
    cr_assert(TEST_WAIT_UNTIL(kept_waiting(), 5000), "the handler did not hand the request over");
    sonar_request *req = take_kept();
    cr_assert_eq(sonar_request_respond(req, "kept", 4), SONAR_OK);
    sonar_request_done(req);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, sub, 10000), NATS_OK);
    cr_assert_eq(natsMsg_GetDataLength(m), 4);
    cr_assert_eq(memcmp(natsMsg_GetData(m), "kept", 4), 0);
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    cr_assert_eq(atomic_load(&keep_again), SONAR_ERR_STATE, "kept twice");
    /* Handed back unanswered (before the handler even returned): a 500. */
    m = request("keeper.fast", "drop");
    const char *code = NULL;
    cr_assert_eq(natsMsgHeader_Get(m, "Nats-Service-Error-Code", &code), NATS_OK);
    cr_assert_str_eq(code, "500");
    cr_assert(strstr(natsMsg_GetData(m), "never answered") != NULL, "%s", natsMsg_GetData(m));
    natsMsg_Destroy(m);
    /* A plain endpoint's request cannot be kept. */
    m = request("keeper.plain", "x");
    cr_assert_eq(natsMsg_GetDataLength(m), (int)strlen("invalid state"));
    natsMsg_Destroy(m);
    /* Kept by a continuation; stop does not return before it is handed back. */
    sub = request_async("keeper.fast", "defer", "test.keep.2");
    cr_assert(TEST_WAIT_UNTIL(kept_waiting(), 5000), "the continuation did not keep it");
    req = take_kept();
    cr_assert_eq(atomic_load(&keep_deferred), SONAR_ERR_STATE, "kept after a defer");
    natsSubscription *leave = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&leave, test_nc, "sonar.leave.keeper"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(test_nc), NATS_OK);
    stopper st = {.svc = svc};
    atomic_init(&st.stopped, false);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, stop_service, &st), 0);
    /* Stop has begun (it leaves first), and cannot end while req is kept. */
    cr_assert_eq(natsSubscription_NextMsg(&m, leave, 10000), NATS_OK);
    natsMsg_Destroy(m);
    natsSubscription_Destroy(leave);
    cr_assert_not(atomic_load(&st.stopped), "stop returned while a request was kept");
    cr_assert_eq(sonar_request_respond(req, "late", 4), SONAR_OK);
    sonar_request_done(req);
    pthread_join(t, NULL);
    cr_assert(atomic_load(&st.stopped));
    cr_assert_eq(natsSubscription_NextMsg(&m, sub, 10000), NATS_OK);
    cr_assert_eq(memcmp(natsMsg_GetData(m), "late", 4), 0);
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    sonar_service_destroy(svc);
}

Test(service, every_endpoint_request_is_answered_promptly_one_after_another)
{
    /* One worker and the heartbeat thread share a condition variable: each
     * queued request must wake a worker, never only the heartbeat. */
    sonar_service_config cfg = {.name = "seq", .version = "1.0.0", .endpoint_workers = 1};
    sonar_service *svc = NULL;
    cr_assert_eq(sonar_service_create(&svc, bus, &cfg), SONAR_OK);
    cr_assert_eq(sonar_service_add_endpoint(svc, "echo", "seq.echo", NULL, echo_handler, NULL),
                 SONAR_OK);
    start(svc);
    for (int i = 0; i < 20; i++) {
        natsMsg *m = NULL;
        natsStatus s = natsConnection_RequestString(&m, test_nc, "seq.echo", "ping", 2000);
        cr_assert_eq(s, NATS_OK, "request %d: %s", i, natsStatus_GetText(s));
        cr_assert_eq(natsMsg_GetDataLength(m), 4);
        natsMsg_Destroy(m);
    }
    sonar_service_destroy(svc);
}
