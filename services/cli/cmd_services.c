/* sonar services: the registry as sonard sees it. */
#include "cli_common.h"
#include "cli_format.h"
#include "commands.h"

static const char usage_text[] =
    "usage: sonar services [--json]\n"
    "\n"
    "Lists every service the coordinator knows: live instances, versions, when\n"
    "it was last seen and what it depends on.\n"
    "\n"
    "Options:\n"
    "  --json             print the coordinator's answer (sonar.services.v1) as JSON\n"
    "\n"
    "Exit codes: 0 success, 2 bad arguments, 3 error (bus unreachable, no coordinator).\n";

int sonar_cmd_services(int argc, char **argv)
{
    static const sonar_cli_read_cmd cmd = {
        .name = "services",
        .usage = usage_text,
        .subject = "sonar.api.services",
        .want_type = "sonar.services.v1",
        .print = sonar_cli_print_services,
    };
    return sonar_cli_read(&cmd, argc, argv);
}
