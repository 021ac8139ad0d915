/* sonar history: the last reports of a service. */
#include <errno.h>
#include <stdlib.h>

#include "cli_common.h"
#include "cli_format.h"
#include "commands.h"

#define HISTORY_DEFAULT 20
#define HISTORY_MAX 1000

static const char usage_text[] =
    "usage: sonar history <service> [--limit N] [--json]\n"
    "\n"
    "Lists the last reports of changes announced for <service>, newest first.\n"
    "\n"
    "Options:\n"
    "  -n, --limit N      how many reports, 1 to 1000 (default 20)\n"
    "  --json             print the answer (sonar.history.v1) as JSON\n"
    "\n"
    "Exit codes: 0 success, 2 bad arguments, 3 error (bus unreachable, no coordinator).\n";

/* Set by the option parser (main thread only). */
static const char *limit_text;

static int make_body(const sonar_cli_args *args, json_t **body)
{
    if (args->n_pos != 1)
        return sonar_cli_die("history", SONAR_CLI_EXIT_USAGE, "missing <service> (see --help)");
    if (sonar_name_check("service name", args->pos[0]) != SONAR_OK)
        return sonar_cli_die("history", SONAR_CLI_EXIT_USAGE, "%s", sonar_last_error());
    long limit = HISTORY_DEFAULT;
    if (limit_text) {
        char *end = NULL;
        errno = 0;
        limit = strtol(limit_text, &end, 10);
        if (errno || *end != '\0' || limit < 1 || limit > HISTORY_MAX)
            return sonar_cli_die("history", SONAR_CLI_EXIT_USAGE,
                                 "--limit must be a number from 1 to %d, not '%s'", HISTORY_MAX,
                                 limit_text);
    }
    *body = json_pack("{s:s, s:I}", "service", args->pos[0], "limit", (json_int_t)limit);
    return *body ? SONAR_CLI_EXIT_OK
                 : sonar_cli_die("history", SONAR_CLI_EXIT_ERROR, "out of memory");
}

int sonar_cmd_history(int argc, char **argv)
{
    static const sonar_cli_opt opts[] = {{"limit", 'n', &limit_text, NULL},
                                         {NULL, 0, NULL, NULL}};
    static const sonar_cli_read_cmd cmd = {
        .name = "history",
        .usage = usage_text,
        .subject = "sonar.api.history",
        .want_type = "sonar.history.v1",
        .max_pos = 1,
        .opts = opts,
        .make_body = make_body,
        .print = sonar_cli_print_history,
    };
    return sonar_cli_read(&cmd, argc, argv);
}
