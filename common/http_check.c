/*
 * sonar_check_http(): one HTTP request against the candidate inside a
 * check, with the check's deadline, asserting status and body. Kept apart
 * from http.c because it needs the check context of service.c.
 */
#include "sonar/http.h"

#include <inttypes.h>
#include <string.h>

#include "sonar/service.h"
#include "sonar/util.h"
#include "internal.h"

sonar_check_status sonar_check_http(sonar_check_ctx *ctx, const char *method,
                                    const char *path, const char *body,
                                    long expect_status, const char *body_contains,
                                    sonar_http_response *out_resp)
{
    if (method == NULL)
        method = "GET";
    if (path == NULL)
        path = "/";
    const char *address = sonar_check_address(ctx);
    if (address == NULL || address[0] == '\0')
        return sonar_check_fail(ctx, "%s %s: the candidate announced no address", method, path);

    char *url = NULL;
    if (sonar_http_join(&url, address, path) != SONAR_OK)
        return sonar_check_fail(ctx, "%s %s: %s", method, path, sonar_last_error());

    int64_t start = sonar_now_ms();
    sonar_http_request req = {
        .method = method,
        .url = url,
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .deadline_ms = sonar_check_deadline_ms(ctx),
    };
    sonar_http_response resp = {0};
    sonar_status st = sonar_http_perform(&req, &resp);
    sonar_check_status result;
    if (st == SONAR_ERR_TIMEOUT)
        result = sonar_check_fail(ctx, "%s %s: timed out after %" PRId64 " ms", method, path,
                                  req.deadline_ms > start ? req.deadline_ms - start : 0);
    else if (st != SONAR_OK)
        result = sonar_check_fail(ctx, "%s %s: %s", method, path, sonar_last_error());
    else if (resp.status != expect_status)
        result = sonar_check_fail(ctx, "%s %s → %ld, expected %ld", method, path, resp.status,
                                  expect_status);
    else if (body_contains != NULL && strstr(resp.body, body_contains) == NULL)
        result = sonar_check_fail(ctx, "%s %s: body does not contain \"%s\"", method, path,
                                  body_contains);
    else
        result = sonar_check_pass(ctx, "%s %s → %ld in %" PRId64 " ms", method, path,
                                  resp.status, resp.duration_ms);
    free(url);
    if (st == SONAR_OK && out_resp != NULL)
        *out_resp = resp;
    else
        sonar_http_response_finish(&resp);
    return result;
}
