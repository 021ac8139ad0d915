#include "gateway_env.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sonar/sonar.h"

/* ---- scripted statusd ---------------------------------------------------------- */

static void reply_json(natsConnection *nc, natsMsg *msg, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    natsConnection_PublishString(nc, natsMsg_GetReply(msg), text);
    free(text);
    json_decref(doc);
}

static void reply_error(natsConnection *nc, natsMsg *msg, int code, const char *text)
{
    natsMsg *r = NULL;
    char *body = NULL;
    json_t *doc = json_pack("{s:s, s:i, s:s}", "type", "sonar.error.v1", "code", code,
                            "message", text);
    body = json_dumps(doc, JSON_COMPACT);
    natsMsg_Create(&r, natsMsg_GetReply(msg), NULL, body, (int)strlen(body));
    char c[8];
    snprintf(c, sizeof c, "%d", code);
    natsMsgHeader_Set(r, "Nats-Service-Error", text);
    natsMsgHeader_Set(r, "Nats-Service-Error-Code", c);
    natsConnection_PublishMsg(nc, r);
    natsMsg_Destroy(r);
    free(body);
    json_decref(doc);
}

static json_t *target(const char *name, const char *service, const char *source,
                      const char *status)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:n, s:i, s:i, s:s, s:n}", "name", name, "service",
                     service, "source", source, "health", "http://127.0.0.1:9/health",
                     "metrics", "interval_ms", 10000, "timeout_ms", 2000, "status", status,
                     "last_check");
}

static void on_status(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    gw_env *e = closure;
    const char *subj = natsMsg_GetSubject(msg);
    json_t *req = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    if (e->statusd_silent || natsMsg_GetReply(msg) == NULL) {
        /* say nothing */
    } else if (strcmp(subj, "sonar.status.targets") == 0) {
        reply_json(nc, msg, json_pack("{s:s, s:[o, o, o]}", "type", "sonar.status.targets.v1",
                                      "targets",
                                      target("chillybin-http", "chillybin", "registry", "critical"),
                                      target("chillybin-2", "chillybin", "config", "passing"),
                                      target("plainweb", "plainweb", "api", "passing")));
    } else if (strcmp(subj, "sonar.status.checks") == 0) {
        const char *svc = json_string_value(json_object_get(req, "service"));
        json_int_t limit = json_integer_value(json_object_get(req, "limit"));
        json_t *checks = json_array();
        for (json_int_t i = 0; i < limit && i < 5; i++)
            json_array_append_new(checks, json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:n}",
                "target", "t", "service", svc ? svc : "chillybin", "time",
                "2026-11-23T18:30:00.000Z", "status", "passing", "http_code", 200,
                "duration_ms", 3, "error"));
        reply_json(nc, msg, json_pack("{s:s, s:o}", "type", "sonar.status.checks.v1", "checks",
                                      checks));
    } else if (strcmp(subj, "sonar.status.metrics") == 0) {
        /* echoes the query in the labels of one sample */
        char from[32], to[32], limit[32];
        snprintf(from, sizeof from, "%lld", (long long)json_integer_value(json_object_get(req, "from")));
        snprintf(to, sizeof to, "%lld", (long long)json_integer_value(json_object_get(req, "to")));
        snprintf(limit, sizeof limit, "%lld", (long long)json_integer_value(json_object_get(req, "limit")));
        const char *name = json_string_value(json_object_get(req, "name"));
        const char *svc = json_string_value(json_object_get(req, "service"));
        reply_json(nc, msg, json_pack("{s:s, s:[{s:s, s:s, s:s, s:{s:s, s:s, s:s}, s:s, s:s}]}",
            "type", "sonar.status.metrics.v1", "samples", "service", svc ? svc : "any",
            "target", "t", "name", name ? name : "any", "labels", "from", from, "to", to,
            "limit", limit, "value", "+Inf", "time", "2026-11-23T18:30:00.000Z"));
    } else if (strcmp(subj, "sonar.status.targets.add") == 0) {
        const char *name = json_string_value(json_object_get(req, "name"));
        if (name && strcmp(name, "taken") == 0) {
            reply_error(nc, msg, 400, "target \"taken\" exists already");
        } else {
            json_t *t = target(name ? name : "?", name ? name : "?", "api", "unknown");
            json_object_set(t, "health", json_object_get(req, "health"));
            reply_json(nc, msg, t);
        }
    } else if (strcmp(subj, "sonar.status.targets.remove") == 0) {
        const char *name = json_string_value(json_object_get(req, "name"));
        if (name && strcmp(name, "ghost") == 0)
            reply_error(nc, msg, 404, "no target named ghost");
        else
            reply_json(nc, msg, json_pack("{s:s, s:s}", "type", "sonar.status.removed.v1",
                                          "name", name ? name : "?"));
    } else {
        reply_error(nc, msg, 404, "unknown subject");
    }
    json_decref(req);
    natsMsg_Destroy(msg);
}

void gw_env_statusd_start(gw_env *e)
{
    cr_assert_eq(natsConnection_QueueSubscribe(&e->statusd, e->nc, "sonar.status.>", "statusd",
                                               on_status, e), NATS_OK);
    cr_assert_eq(natsConnection_Flush(e->nc), NATS_OK);
}

void gw_env_statusd_stop(gw_env *e)
{
    if (e->statusd == NULL)
        return;
    if (natsSubscription_Drain(e->statusd) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(e->statusd, 2000);
    natsSubscription_Destroy(e->statusd);
    e->statusd = NULL;
    natsConnection_Flush(e->nc);
}

/* ---- HTTP ------------------------------------------------------------------------ */

void gw_http_do(gw_env *e, gw_http *out, const char *method, const char *path, const char *body)
{
    memset(out, 0, sizeof *out);
    char url[1024];
    snprintf(url, sizeof url, "%s%s", e->url, path);
    static const char *const json_hdr[] = {"Content-Type: application/json", NULL};
    sonar_http_request rq = {.method = method, .url = url, .body = body,
                             .body_len = body ? strlen(body) : 0,
                             .headers = body ? json_hdr : NULL, .timeout_ms = 15000};
    sonar_http_response rs = {0};
    sonar_status s = sonar_http_perform(&rq, &rs);
    cr_assert_eq(s, SONAR_OK, "%s %s: %s", method, path, sonar_last_error());
    out->status = rs.status;
    out->body = strdup(rs.body ? rs.body : "");
    out->json = json_loads(out->body, 0, NULL);
    const char *h;
    if ((h = sonar_http_response_header(&rs, "Location")))
        snprintf(out->location, sizeof out->location, "%s", h);
    if ((h = sonar_http_response_header(&rs, "Allow")))
        snprintf(out->allow, sizeof out->allow, "%s", h);
    if ((h = sonar_http_response_header(&rs, "Content-Type")))
        snprintf(out->content_type, sizeof out->content_type, "%s", h);
    sonar_http_response_finish(&rs);
}

void gw_http_finish(gw_http *h)
{
    free(h->body);
    json_decref(h->json);
    memset(h, 0, sizeof *h);
}

double gw_env_metric(gw_env *e, const char *prefix)
{
    gw_http h;
    gw_http_do(e, &h, "GET", "/metrics", NULL);
    double v = -1;
    for (char *line = h.body; line && *line;) {
        char *nl = strchr(line, '\n');
        if (strncmp(line, prefix, strlen(prefix)) == 0) {
            v = strtod(line + strlen(prefix), NULL);
            break;
        }
        line = nl ? nl + 1 : NULL;
    }
    gw_http_finish(&h);
    return v;
}

/* ---- the stack ------------------------------------------------------------------- */

static bool both_live(gw_env *e)
{
    gw_http h;
    gw_http_do(e, &h, "GET", "/api/v1/services", NULL);
    int live = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(h.json, "services"), i, s) {
        const char *n = json_string_value(json_object_get(s, "service"));
        if (n && (strcmp(n, "chillybin") == 0 || strcmp(n, "jafflr") == 0) &&
            json_is_true(json_object_get(s, "live")))
            live++;
    }
    gw_http_finish(&h);
    return live == 2;
}

static bool gateway_url(gw_env *e)
{
    char *out = test_proc_stdout(&e->gateway);
    char *p = strstr(out, "listening on ");
    bool ok = false;
    if (p != NULL && strchr(p, '\n') != NULL) {
        sscanf(p + strlen("listening on "), "%127s", e->url);
        ok = true;
    }
    free(out);
    return ok;
}

void gw_env_start(gw_env *e)
{
    memset(e, 0, sizeof *e);
    cr_assert(test_natsd_start(&e->nd));
    cr_assert(test_mkdtemp(e->dir, sizeof e->dir, "gateway"));
    natsOptions *o;
    cr_assert_eq(natsOptions_Create(&o), NATS_OK);
    natsOptions_SetURL(o, e->nd.url);
    natsOptions_SetSendAsap(o, true);
    cr_assert_eq(natsConnection_Connect(&e->nc, o), NATS_OK);
    natsOptions_Destroy(o);
    gw_env_statusd_start(e);

    char db[400];
    snprintf(db, sizeof db, "%s/sonard.db", e->dir);
    const char *sonard[] = {test_bin("SONARD_BIN"), "--server", e->nd.url, "--db", db,
                            "--default-timeout", "5s", NULL};
    cr_assert(test_proc_start(&e->sonard, e->dir, sonard, NULL));
    const char *fake = test_bin("SONAR_FAKE_SERVICE_BIN");
    const char *chilly[] = {fake, "--server", e->nd.url, "--name", "chillybin", NULL};
    cr_assert(test_proc_start(&e->chillybin, e->dir, chilly, NULL));
    const char *jafflr[] = {fake, "--server", e->nd.url, "--name", "jafflr", "--depends",
                            "chillybin", "--check", "fail", "--message",
                            "GET /pick?name=cheese → 404, expected 200", NULL};
    cr_assert(test_proc_start(&e->jafflr, e->dir, jafflr, NULL));
    const char *gw[] = {test_bin("SONAR_GATEWAY_BIN"), "--server", e->nd.url, "--listen",
                        "127.0.0.1:0", "--timeout", "3s", "--sse-queue", "64", NULL};
    cr_assert(test_proc_start(&e->gateway, e->dir, gw, NULL));
    cr_assert(TEST_WAIT_UNTIL(gateway_url(e), 10000), "the gateway did not say where it listens");
    cr_assert(TEST_WAIT_UNTIL(both_live(e), 15000), "services not live through the gateway");
}

void gw_env_stop(gw_env *e)
{
    test_proc *procs[] = {&e->gateway, &e->jafflr, &e->chillybin, &e->sonard};
    for (size_t i = 0; i < 4; i++) {
        if (procs[i]->pid > 0) {
            test_proc_signal(procs[i], SIGTERM);
            if (!test_proc_wait(procs[i], 5000))
                test_proc_kill(procs[i]);
        }
    }
    /* Under the sanitizers the gateway reports leaks and errors on its own
     * stderr, which the suite would not see otherwise. */
    char *err = e->gateway.pid > 0 ? test_proc_stderr(&e->gateway) : NULL;
    bool clean = err == NULL || (strstr(err, "Sanitizer") == NULL &&
                                 strstr(err, "runtime error:") == NULL);
    for (size_t i = 0; i < 4; i++)
        test_proc_finish(procs[i]);
    gw_env_statusd_stop(e);
    natsConnection_Destroy(e->nc);
    nats_Close();
    test_natsd_destroy(&e->nd);
    test_rmtree(e->dir);
    cr_assert(clean, "sonar-gateway stderr: %s", err);
    free(err);
}

json_t *gw_env_announce(gw_env *e, const char *id)
{
    json_t *body = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i}", "type", "sonar.change.v1",
                             "change_id", id, "service", "chillybin", "version", "2.0.0",
                             "address", "http://127.0.0.1:9", "timeout_ms", 5000);
    char *text = json_dumps(body, JSON_COMPACT);
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_RequestString(&reply, e->nc, "sonar.change.chillybin", text,
                                                10000);
    free(text);
    json_decref(body);
    cr_assert_eq(s, NATS_OK, "announce: %s", natsStatus_GetText(s));
    json_t *doc = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0,
                             NULL);
    natsMsg_Destroy(reply);
    cr_assert_not_null(doc);
    return doc;
}
