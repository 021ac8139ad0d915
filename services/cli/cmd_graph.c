/* sonar graph: who depends on whom, as Graphviz DOT. */
#include "cli_common.h"
#include "cli_format.h"
#include "commands.h"

static const char usage_text[] =
    "usage: sonar graph [--json]\n"
    "\n"
    "Prints the dependency graph as Graphviz DOT: an edge from each service to\n"
    "each service it depends on, labelled with the checks it runs against it.\n"
    "Render it with e.g. `sonar graph | dot -Tsvg > graph.svg`.\n"
    "\n"
    "Options:\n"
    "  --json             print the coordinator's answer (sonar.graph.v1) as JSON\n"
    "\n"
    "Exit codes: 0 success, 2 bad arguments, 3 error (bus unreachable, no coordinator).\n";

int sonar_cmd_graph(int argc, char **argv)
{
    static const sonar_cli_read_cmd cmd = {
        .name = "graph",
        .usage = usage_text,
        .subject = "sonar.api.graph",
        .want_type = "sonar.graph.v1",
        .print = sonar_cli_print_dot,
    };
    return sonar_cli_read(&cmd, argc, argv);
}
