/* sonar report: a stored report by change id. */
#include "cli_common.h"
#include "cli_format.h"
#include "commands.h"

static const char usage_text[] =
    "usage: sonar report <change_id> [--json]\n"
    "\n"
    "Shows the report of a change announced earlier (the table `sonar announce`\n"
    "prints at the end).\n"
    "\n"
    "Options:\n"
    "  --json             print the report (sonar.report.v1) as JSON\n"
    "\n"
    "Exit codes: 0 shown, 1 no such change, 2 bad arguments, 3 error (bus\n"
    "unreachable, no coordinator).\n";

static int make_body(const sonar_cli_args *args, json_t **body)
{
    if (args->n_pos != 1)
        return sonar_cli_die("report", SONAR_CLI_EXIT_USAGE, "missing <change_id> (see --help)");
    if (sonar_name_check("change id", args->pos[0]) != SONAR_OK)
        return sonar_cli_die("report", SONAR_CLI_EXIT_USAGE, "%s", sonar_last_error());
    *body = json_pack("{s:s}", "change_id", args->pos[0]);
    return *body ? SONAR_CLI_EXIT_OK
                 : sonar_cli_die("report", SONAR_CLI_EXIT_ERROR, "out of memory");
}

int sonar_cmd_report(int argc, char **argv)
{
    static const sonar_cli_read_cmd cmd = {
        .name = "report",
        .usage = usage_text,
        .subject = "sonar.api.report",
        .want_type = "sonar.report.v1",
        .max_pos = 1,
        .make_body = make_body,
        .print = sonar_cli_print_report,
    };
    return sonar_cli_read(&cmd, argc, argv);
}
