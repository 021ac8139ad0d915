/* sonard's /metrics text: valid Prometheus 0.0.4 with the right figures. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "registry.h"
#include "sdmetrics.h"
#include "sonar/sonar.h"
#include "sonar/promtext.h"

static double sample(const sonar_promtext *p, const char *family, const char *label,
                     const char *value, const char *name)
{
    const sonar_promtext_family *f = sonar_promtext_family_find(p, family);
    cr_assert_not_null(f, "no family %s", family);
    for (size_t i = 0; i < f->n_samples; i++) {
        const sonar_promtext_sample *s = &f->samples[i];
        if (name && strcmp(s->name, name) != 0)
            continue;
        const char *v = label ? sonar_promtext_label_get(s, label) : NULL;
        if (label == NULL || (v != NULL && strcmp(v, value) == 0))
            return s->value;
    }
    cr_assert_fail("no sample %s{%s=%s}", family, label ? label : "", value ? value : "");
    return NAN;
}

Test(sdmetrics, renders_counts_histogram_and_registry_figures)
{
    sonar_registry *reg = NULL;
    cr_assert_eq(sonar_registry_create(&reg, "sonard"), SONAR_OK);
    sonar_register_msg m = {.service = "a", .instance = "a1", .version = "1.0.0",
                            .address = "", .heartbeat_ms = 60000};
    int64_t now = sonar_now_ms();
    cr_assert_eq(sonar_registry_register(reg, &m, now, sonar_wall_ms(), NULL), SONAR_OK);
    m.service = "b";
    cr_assert_eq(sonar_registry_register(reg, &m, now - 10 * 60000, sonar_wall_ms(), NULL), SONAR_OK);

    sonard_metrics *sm = NULL;
    cr_assert_eq(sonard_metrics_create(&sm, reg, NULL), SONAR_OK);
    sonard_metrics_change(sm);
    sonard_metrics_change(sm);
    sonard_metrics_change(sm);
    sonard_metrics_report(sm, SONAR_PASS, 3);
    sonard_metrics_report(sm, SONAR_FAIL, 40);
    sonard_metrics_report(sm, SONAR_INCOMPLETE, 10000);
    char *text = sonard_metrics_render(sm);
    cr_assert_not_null(text);

    sonar_promtext *p = NULL;
    sonar_promtext_error err;
    cr_assert_eq(sonar_promtext_parse(&p, text, strlen(text), &err), SONAR_OK,
                 "line %zu: %s\n%s", err.line, err.reason, text);
    cr_assert_eq(sample(p, "sonard_changes_total", NULL, NULL, NULL), 3);
    cr_assert_eq(sample(p, "sonard_reports_total", "verdict", "pass", NULL), 1);
    cr_assert_eq(sample(p, "sonard_reports_total", "verdict", "fail", NULL), 1);
    cr_assert_eq(sample(p, "sonard_reports_total", "verdict", "incomplete", NULL), 1);
    cr_assert_eq(sample(p, "sonard_gather_duration_seconds", "le", "0.005",
                        "sonard_gather_duration_seconds_bucket"), 1);
    cr_assert_eq(sample(p, "sonard_gather_duration_seconds", "le", "0.05",
                        "sonard_gather_duration_seconds_bucket"), 2);
    cr_assert_eq(sample(p, "sonard_gather_duration_seconds", "le", "+Inf",
                        "sonard_gather_duration_seconds_bucket"), 3);
    cr_assert_float_eq(sample(p, "sonard_gather_duration_seconds", NULL, NULL,
                              "sonard_gather_duration_seconds_sum"), 10.043, 1e-9);
    cr_assert_eq(sample(p, "sonard_services", "state", "known", NULL), 2);
    cr_assert_eq(sample(p, "sonard_services", "state", "live", NULL), 1, "b expired");
    cr_assert_eq(sample(p, "sonard_outbox_pending", NULL, NULL, NULL), 0);
    sonar_promtext_destroy(p);
    free(text);
    sonard_metrics_destroy(sm);
    sonar_registry_destroy(reg);
}

Test(sdmetrics, a_bad_listen_address_is_refused)
{
    sonard_metrics *sm = NULL;
    sonar_registry *reg = NULL;
    cr_assert_eq(sonar_registry_create(&reg, "sonard"), SONAR_OK);
    cr_assert_eq(sonard_metrics_create(&sm, reg, NULL), SONAR_OK);
    cr_assert_eq(sonard_metrics_listen(sm, "nohost"), SONAR_ERR_INVALID);
    cr_assert_eq(sonard_metrics_listen(sm, "localhost:80"), SONAR_ERR_INVALID,
                 "an IPv4 literal is required");
    cr_assert_eq(sonard_metrics_listen(sm, "127.0.0.1:99999"), SONAR_ERR_INVALID);
    cr_assert(strstr(sonar_last_error(), "99999") != NULL);
    sonard_metrics_destroy(sm);
    sonar_registry_destroy(reg);
}
