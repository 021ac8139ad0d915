/* Error replies (sonar.error.v1) with the NATS service error headers. */
#include "sonar/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/protocol.h"
#include "sonar/bus.h"

int sonar_reply_code(sonar_status s)
{
    switch (s) {
    case SONAR_ERR_INVALID:
    case SONAR_ERR_PROTOCOL:
    case SONAR_ERR_VERSION:
    case SONAR_ERR_LIMIT:
        return 400;
    case SONAR_ERR_NOT_FOUND:
        return 404;
    case SONAR_ERR_STATE:
        return 503;
    default:
        return 500;
    }
}

sonar_status sonar_reply_error(natsConnection *nc, const char *reply, int code,
                               const char *fmt, ...)
{
    if (reply == NULL || *reply == '\0')
        return SONAR_OK;
    char text[SONAR_MAX_MESSAGE_TEXT];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    sonar_error_msg err = {.code = code, .message = text};
    char *body = NULL;
    sonar_status s = sonar_error_encode(&err, &body);
    if (s != SONAR_OK)
        return s;
    /* Header values are one line: control characters become spaces. */
    for (char *p = text; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    char codebuf[16];
    snprintf(codebuf, sizeof codebuf, "%d", code);
    natsMsg *m = NULL;
    natsStatus ns = natsMsg_Create(&m, reply, NULL, body, (int)strlen(body));
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(m, SONAR_HDR_SERVICE_ERROR, text);
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(m, SONAR_HDR_SERVICE_ERROR_CODE, codebuf);
    if (ns == NATS_OK)
        ns = natsConnection_PublishMsg(nc, m);
    natsMsg_Destroy(m);
    free(body);
    return ns == NATS_OK ? SONAR_OK : sonar_bus_status(ns, "replying with an error");
}
