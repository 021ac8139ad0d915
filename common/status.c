/* Status names and the thread-local error text. */
#include "sonar/status.h"

#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static _Thread_local char last_error[1024];

const char *sonar_status_str(sonar_status status)
{
    switch (status) {
    case SONAR_OK: return "ok";
    case SONAR_ERR_INVALID: return "invalid argument";
    case SONAR_ERR_PROTOCOL: return "protocol error";
    case SONAR_ERR_VERSION: return "unsupported message type or version";
    case SONAR_ERR_NOMEM: return "out of memory";
    case SONAR_ERR_IO: return "i/o error";
    case SONAR_ERR_NATS: return "nats error";
    case SONAR_ERR_TIMEOUT: return "timeout";
    case SONAR_ERR_NO_RESPONDERS: return "no responders";
    case SONAR_ERR_DB: return "database error";
    case SONAR_ERR_NOT_FOUND: return "not found";
    case SONAR_ERR_STATE: return "invalid state";
    case SONAR_ERR_HTTP: return "http error";
    case SONAR_ERR_LIMIT: return "limit exceeded";
    }
    return "unknown status";
}

const char *sonar_last_error(void)
{
    return last_error;
}

sonar_status sonar__fail(sonar_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

void sonar__clear_error(void)
{
    last_error[0] = '\0';
}
