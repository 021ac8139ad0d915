/*
 * aquifers' checks on a wells candidate. The part to copy when your service
 * depends on a NATS (not HTTP) service.
 *
 * A wells candidate is addressed by its subject prefix: the address
 * "nats:<prefix>" means "send requests to <prefix>.create and
 * <prefix>.list". Each check runs on its own worker thread within the
 * deadline of the check request.
 *
 *   create a well        create one in an aquifer we know; expect an id and
 *                        the aquifer, owner and depth we sent
 *   unknown aquifer      expect 404 for an aquifer nobody created
 *   bad depth            expect 400 for a negative depth
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aquifers.h"

#define CHECK_OWNER "sonar-check"
#define CHECK_DEPTH 42.5

/* The candidate's "<prefix>.<verb>" into buf; false (check failed) when the address is not nats:<name>. */
static bool candidate_subject(sonar_check_ctx *ctx, const char *verb, char *buf, size_t len)
{
    const char *addr = sonar_check_address(ctx);
    if (strncmp(addr, "nats:", 5) != 0 || !sonar_name_valid(addr + 5))
        return false;
    snprintf(buf, len, "%s.%s", addr + 5, verb);
    return true;
}

/*
 * Sends \p body to the candidate's \p verb endpoint within the check's
 * deadline. Returns the reply as JSON (new) or NULL after recording the
 * failure in ctx (*verdict set).
 */
static json_t *ask(sonar_check_ctx *ctx, void *closure, const char *verb, json_t *body,
                   sonar_check_status *verdict)
{
    choreo_app *app = closure;
    char subject[96];
    if (!candidate_subject(ctx, verb, subject, sizeof subject)) {
        json_decref(body);
        *verdict = sonar_check_fail(ctx, "address \"%.100s\" is not nats:<subject prefix>",
                                    sonar_check_address(ctx));
        return NULL;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    int64_t wait = sonar_check_remaining_ms(ctx);
    natsMsg *reply = NULL;
    natsStatus s = text != NULL && wait > 0
                       ? natsConnection_RequestString(&reply, sonar_bus_nats(app->bus), subject,
                                                      text, wait)
                       : NATS_TIMEOUT;
    free(text);
    if (s != NATS_OK) {
        *verdict = s == NATS_NO_RESPONDERS
                       ? sonar_check_fail(ctx, "%s: no wells candidate listens there", subject)
                       : sonar_check_fail(ctx, "%s: %s", subject, natsStatus_GetText(s));
        return NULL;
    }
    json_t *out = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0,
                             NULL);
    natsMsg_Destroy(reply);
    if (!json_is_object(out)) {
        json_decref(out);
        *verdict = sonar_check_fail(ctx, "%s answered something that is not a JSON object",
                                    subject);
        return NULL;
    }
    return out;
}

/* "<code>: <message>" of a sonar.error.v1 reply, or 0 when \p r is not one. */
static int error_code(const json_t *r, const char **message)
{
    const char *type = json_string_value(json_object_get(r, "type"));
    if (type == NULL || strcmp(type, "sonar.error.v1") != 0)
        return 0;
    const char *m = json_string_value(json_object_get(r, "message"));
    *message = m != NULL ? m : "";
    return (int)json_integer_value(json_object_get(r, "code"));
}

/* Some aquifer we know (copied into buf), false when we know none. */
static bool known_aquifer(choreo_app *app, char *buf, size_t len)
{
    sqlite3 *db = choreo_db_lock(app->db);
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db, "SELECT name FROM aquifers ORDER BY created, name LIMIT 1", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        snprintf(buf, len, "%s", (const char *)sqlite3_column_text(st, 0));
        found = true;
    }
    sqlite3_finalize(st);
    choreo_db_unlock(app->db);
    return found;
}

static sonar_check_status check_create(sonar_check_ctx *ctx, void *closure)
{
    char aquifer[80];
    if (!known_aquifer(closure, aquifer, sizeof aquifer))
        return sonar_check_fail(ctx, "no aquifer exists yet to create a test well in "
                                     "(create one with aquifers.create)");
    sonar_check_status verdict = SONAR_CHECK_FAIL;
    json_t *r = ask(ctx, closure, "create",
                    json_pack("{s:s, s:s, s:f}", "aquifer", aquifer, "owner", CHECK_OWNER,
                              "depth", CHECK_DEPTH),
                    &verdict);
    if (r == NULL)
        return verdict;
    const char *msg = NULL;
    int code = error_code(r, &msg);
    const char *id = json_string_value(json_object_get(r, "id"));
    const char *got_aquifer = json_string_value(json_object_get(r, "aquifer"));
    const char *owner = json_string_value(json_object_get(r, "owner"));
    json_t *depth = json_object_get(r, "depth");
    if (code != 0)
        verdict = sonar_check_fail(ctx, "create in %s → %d, expected a well: %.200s", aquifer,
                                   code, msg);
    else if (id == NULL || id[0] == '\0')
        verdict = sonar_check_fail(ctx, "create in %s → no \"id\" in the well", aquifer);
    else if (got_aquifer == NULL || strcmp(got_aquifer, aquifer) != 0)
        verdict = sonar_check_fail(ctx, "create in %s → \"aquifer\" is %s", aquifer,
                                   got_aquifer != NULL ? "wrong" : "missing");
    else if (owner == NULL || strcmp(owner, CHECK_OWNER) != 0)
        verdict = sonar_check_fail(ctx, "create in %s → \"owner\" is %s", aquifer,
                                   owner != NULL ? "wrong" : "missing");
    else if (!json_is_number(depth) || json_number_value(depth) != CHECK_DEPTH)
        verdict = sonar_check_fail(ctx, "create in %s → \"depth\" is not %g", aquifer,
                                   CHECK_DEPTH);
    else
        verdict = sonar_check_pass(ctx, "created well %.64s in %s", id, aquifer);
    json_decref(r);
    return verdict;
}

/* Sends a create the candidate must refuse with \p want; passes when it does. */
static sonar_check_status expect_refusal(sonar_check_ctx *ctx, void *closure, json_t *body,
                                         int want, const char *what)
{
    sonar_check_status verdict = SONAR_CHECK_FAIL;
    json_t *r = ask(ctx, closure, "create", body, &verdict);
    if (r == NULL)
        return verdict;
    const char *msg = NULL;
    int code = error_code(r, &msg);
    if (code == want)
        verdict = sonar_check_pass(ctx, "%s → %d: %.200s", what, code, msg);
    else if (code == 0)
        verdict = sonar_check_fail(ctx, "%s → accepted, expected %d", what, want);
    else
        verdict = sonar_check_fail(ctx, "%s → %d, expected %d: %.200s", what, code, want, msg);
    json_decref(r);
    return verdict;
}

static sonar_check_status check_unknown_aquifer(sonar_check_ctx *ctx, void *closure)
{
    char name[64], id[32];
    sonar_random_id(id);
    snprintf(name, sizeof name, "no-such-aquifer-%s", id);
    return expect_refusal(ctx, closure,
                          json_pack("{s:s, s:s, s:f}", "aquifer", name, "owner", CHECK_OWNER,
                                    "depth", CHECK_DEPTH),
                          404, "create in an unknown aquifer");
}

static sonar_check_status check_bad_depth(sonar_check_ctx *ctx, void *closure)
{
    return expect_refusal(ctx, closure,
                          json_pack("{s:s, s:s, s:f}", "aquifer", "any", "owner", CHECK_OWNER,
                                    "depth", -5.0),
                          400, "create with depth -5");
}

sonar_status aquifers_add_checks(sonar_service *svc, choreo_app *app)
{
    sonar_status st = sonar_service_add_check(svc, "wells", "create a well", check_create, app);
    if (st == SONAR_OK)
        st = sonar_service_add_check(svc, "wells", "unknown aquifer refused",
                                     check_unknown_aquifer, app);
    if (st == SONAR_OK)
        st = sonar_service_add_check(svc, "wells", "bad depth refused", check_bad_depth, app);
    return st;
}
