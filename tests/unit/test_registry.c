#include <criterion/criterion.h>
#include <string.h>

#include "registry.h"
#include "sonar/sonar.h"

static char *deps_x[] = {"x"};
static char *names_pick[] = {"pick cheese", "list"};

static sonar_register_msg reg_msg(char *service, char *instance, int64_t hb)
{
    sonar_register_msg m = {0};
    m.service = service;
    m.instance = instance;
    m.version = "1.0.0";
    m.address = "http://h:1";
    m.heartbeat_ms = hb;
    return m;
}

static sonar_registry *reg;

static void setup(void)
{
    cr_assert_eq(sonar_registry_create(&reg, "sonard"), SONAR_OK);
}

static void teardown(void)
{
    sonar_registry_destroy(reg);
}

TestSuite(registry, .init = setup, .fini = teardown);

Test(registry, a_registration_makes_the_service_live_and_expected)
{
    sonar_register_msg m = reg_msg("a", "a1", 1000);
    bool fresh = false;
    cr_assert_eq(sonar_registry_register(reg, &m, 1000, 5000, &fresh), SONAR_OK);
    cr_assert(fresh);
    cr_assert_eq(sonar_registry_register(reg, &m, 1500, 5500, &fresh), SONAR_OK);
    cr_assert_not(fresh, "a heartbeat of a live instance is not a new instance");
    cr_assert(sonar_registry_live(reg, "a", 1600));
    sonar_expected e;
    cr_assert_eq(sonar_registry_expected(reg, "x", 1600, &e), SONAR_OK);
    cr_assert_eq(e.n_live, 1);
    cr_assert_str_eq(e.live[0], "a");
    cr_assert_eq(e.n_down, 0);
    sonar_expected_finish(&e);
}

Test(registry, a_service_without_a_check_endpoint_is_never_expected)
{
    sonar_register_msg gw = reg_msg("gateway", "g1", 1000);
    gw.no_check_endpoint = true;
    sonar_register_msg a = reg_msg("a", "a1", 1000);
    cr_assert_eq(sonar_registry_register(reg, &gw, 1000, 5000, NULL), SONAR_OK);
    cr_assert_eq(sonar_registry_register(reg, &a, 1000, 5000, NULL), SONAR_OK);
    cr_assert(sonar_registry_live(reg, "gateway", 1100), "it is live and listed");
    sonar_expected e;
    cr_assert_eq(sonar_registry_expected(reg, "x", 1100, &e), SONAR_OK);
    cr_assert_eq(e.n_live, 1);
    cr_assert_str_eq(e.live[0], "a");
    sonar_expected_finish(&e);
    /* Re-registering with a check endpoint makes it expected again. */
    gw.no_check_endpoint = false;
    cr_assert_eq(sonar_registry_register(reg, &gw, 1200, 5200, NULL), SONAR_OK);
    cr_assert_eq(sonar_registry_expected(reg, "x", 1300, &e), SONAR_OK);
    cr_assert_eq(e.n_live, 2);
    sonar_expected_finish(&e);
}

Test(registry, an_instance_expires_after_three_missed_heartbeats)
{
    sonar_register_msg m = reg_msg("a", "a1", 100);
    cr_assert_eq(sonar_registry_register(reg, &m, 1000, 1, NULL), SONAR_OK);
    cr_assert(sonar_registry_live(reg, "a", 1300), "still live at exactly 3 heartbeats");
    cr_assert_not(sonar_registry_live(reg, "a", 1301), "expired after the third missed one");
    cr_assert(sonar_registry_known(reg, "a"), "an expired service stays known");
}

Test(registry, leave_removes_at_once_and_down_dependents_are_listed)
{
    sonar_register_msg m = reg_msg("dep", "d1", 1000);
    m.depends_on = deps_x;
    m.n_depends_on = 1;
    sonar_register_msg other = reg_msg("other", "o1", 1000);
    cr_assert_eq(sonar_registry_register(reg, &m, 0, 0, NULL), SONAR_OK);
    cr_assert_eq(sonar_registry_register(reg, &other, 0, 0, NULL), SONAR_OK);
    cr_assert_eq(sonar_registry_leave(reg, "dep", "d1"), SONAR_OK);
    cr_assert_eq(sonar_registry_leave(reg, "dep", "d1"), SONAR_ERR_NOT_FOUND);
    cr_assert_eq(sonar_registry_leave(reg, "other", "o1"), SONAR_OK);
    cr_assert_not(sonar_registry_live(reg, "dep", 1));
    sonar_expected e;
    cr_assert_eq(sonar_registry_expected(reg, "x", 1, &e), SONAR_OK);
    cr_assert_eq(e.n_live, 0);
    cr_assert_eq(e.n_down, 1, "only the down service that depends on x is listed");
    cr_assert_str_eq(e.down[0], "dep");
    sonar_expected_finish(&e);
}

Test(registry, the_coordinator_itself_is_ignored)
{
    sonar_register_msg m = reg_msg("sonard", "s1", 1000);
    cr_assert_eq(sonar_registry_register(reg, &m, 0, 0, NULL), SONAR_ERR_STATE);
    cr_assert_not(sonar_registry_known(reg, "sonard"));
    cr_assert_eq(sonar_registry_count(reg), 0);
}

Test(registry, expected_services_are_sorted)
{
    char *names[] = {"m", "b", "z", "a"};
    char inst[4][4] = {"1", "2", "3", "4"};
    for (int i = 0; i < 4; i++) {
        sonar_register_msg m = reg_msg(names[i], inst[i], 1000);
        cr_assert_eq(sonar_registry_register(reg, &m, 0, 0, NULL), SONAR_OK);
    }
    sonar_expected e;
    cr_assert_eq(sonar_registry_expected(reg, "q", 1, &e), SONAR_OK);
    cr_assert_eq(e.n_live, 4);
    cr_assert_str_eq(e.live[0], "a");
    cr_assert_str_eq(e.live[1], "b");
    cr_assert_str_eq(e.live[2], "m");
    cr_assert_str_eq(e.live[3], "z");
    sonar_expected_finish(&e);
}

Test(registry, services_json_lists_instances_versions_and_checks)
{
    sonar_dep_checks dc = {.dependency = "x", .names = names_pick, .n_names = 2};
    sonar_register_msg m = reg_msg("a", "a1", 1000);
    m.checks = &dc;
    m.n_checks = 1;
    sonar_register_msg m2 = reg_msg("a", "a2", 1000);
    m2.version = "2.0.0";
    cr_assert_eq(sonar_registry_register(reg, &m, 0, 1700000000000, NULL), SONAR_OK);
    cr_assert_eq(sonar_registry_register(reg, &m2, 0, 1700000000000, NULL), SONAR_OK);
    json_t *doc;
    cr_assert_eq(sonar_registry_services_json(reg, 10, &doc), SONAR_OK);
    cr_assert_str_eq(json_string_value(json_object_get(doc, "type")), "sonar.services.v1");
    json_t *svc = json_array_get(json_object_get(doc, "services"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(svc, "service")), "a");
    cr_assert(json_is_true(json_object_get(svc, "live")));
    cr_assert_eq(json_array_size(json_object_get(svc, "instances")), 2);
    cr_assert_eq(json_array_size(json_object_get(svc, "versions")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(svc, "last_seen")),
                     "2023-11-14T22:13:20.000Z");
    /* m2 (the latest registration) has no checks: the service's info follows it. */
    cr_assert_eq(json_object_size(json_object_get(svc, "checks")), 0);
    json_decref(doc);
}

Test(registry, a_check_implies_a_dependency_and_appears_in_the_graph)
{
    sonar_dep_checks dc = {.dependency = "x", .names = names_pick, .n_names = 2};
    sonar_register_msg m = reg_msg("a", "a1", 1000);
    m.checks = &dc;
    m.n_checks = 1;
    cr_assert_eq(sonar_registry_register(reg, &m, 0, 0, NULL), SONAR_OK);
    json_t *g;
    cr_assert_eq(sonar_registry_graph_json(reg, &g), SONAR_OK);
    cr_assert_str_eq(json_string_value(json_object_get(g, "type")), "sonar.graph.v1");
    cr_assert_eq(json_array_size(json_object_get(g, "nodes")), 2, "a and its dependency x");
    json_t *edge = json_array_get(json_object_get(g, "edges"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(edge, "from")), "a");
    cr_assert_str_eq(json_string_value(json_object_get(edge, "to")), "x");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(edge, "checks"), 1)),
                     "list");
    json_decref(g);
    sonar_expected e;
    cr_assert_eq(sonar_registry_expected(reg, "x", 5000, &e), SONAR_OK); /* a expired */
    cr_assert_eq(e.n_down, 1);
    sonar_expected_finish(&e);
}

Test(registry, restored_services_are_known_and_recent_instances_live)
{
    json_t *deps = json_pack("[s]", "x");
    json_t *checks = json_pack("{s:[s]}", "x", "ping");
    cr_assert_eq(sonar_registry_restore_service(reg, "a", "1.0.0", deps, checks, 1000), SONAR_OK);
    cr_assert_eq(sonar_registry_restore_service(reg, "b", "1.0.0", NULL, NULL, 1000), SONAR_OK);
    cr_assert_eq(sonar_registry_restore_service(reg, "bad name", "1", NULL, NULL, 1),
                 SONAR_ERR_INVALID);
    /* a's instance beat 200 ms ago (hb 100: live), b's 400 ms ago (expired). */
    cr_assert_eq(sonar_registry_restore_instance(reg, "a", "a1", "1.0.0", "", 100, 99800, 50,
                                                 100000), SONAR_OK);
    cr_assert_eq(sonar_registry_restore_instance(reg, "b", "b1", "1.0.0", "", 100, 99600, 50,
                                                 100000), SONAR_OK);
    cr_assert(sonar_registry_live(reg, "a", 50));
    cr_assert_not(sonar_registry_live(reg, "a", 151), "expires 300 ms after its last beat");
    cr_assert_not(sonar_registry_live(reg, "b", 50));
    cr_assert(sonar_registry_known(reg, "b"));
    sonar_expected e;
    cr_assert_eq(sonar_registry_expected(reg, "x", 200, &e), SONAR_OK);
    cr_assert_eq(e.n_down, 1);
    cr_assert_str_eq(e.down[0], "a");
    sonar_expected_finish(&e);
    json_decref(deps);
    json_decref(checks);
}

Test(registry, info_json_merges_depends_on_and_check_keys)
{
    sonar_dep_checks dc = {.dependency = "y", .names = names_pick, .n_names = 1};
    sonar_register_msg m = reg_msg("a", "a1", 1000);
    m.depends_on = deps_x;
    m.n_depends_on = 1;
    m.checks = &dc;
    m.n_checks = 1;
    char *d, *c;
    cr_assert_eq(sonar_registry_info_json(&m, &d, &c), SONAR_OK);
    cr_assert_str_eq(d, "[\"x\",\"y\"]");
    cr_assert_str_eq(c, "{\"y\":[\"pick cheese\"]}");
    free(d);
    free(c);
}
