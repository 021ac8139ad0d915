/* sonar — the command line for announcing changes and inspecting the bus. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

#include "sonar/sonar.h"

/* One line per subcommand; keep alphabetical. */
static const sonar_cli_command commands[] = {
    {"agent", sonar_cmd_agent, "join the bus for a service in any language, checks from a table"},
    {"announce", sonar_cmd_announce, "announce a change and wait for its checks (gates a deploy)"},
    {"graph", sonar_cmd_graph, "print who depends on whom as Graphviz DOT"},
    {"history", sonar_cmd_history, "list the last reports of a service"},
    {"inbox", sonar_cmd_inbox, "inspect a service's exactly-once consumers and their dead letters"},
    {"outbox", sonar_cmd_outbox, "inspect and repair a service's event outbox"},
    {"report", sonar_cmd_report, "show the report of a change"},
    {"request", sonar_cmd_request, "send one request (JSON) on a subject and print the reply"},
    {"services", sonar_cmd_services, "list known services, instances and versions"},
    {"test", sonar_cmd_test, "run a check table's cases locally, without a bus (CI)"},
    {"version", sonar_cmd_version, "print the version"},
    {"watch", sonar_cmd_watch, "live feed of registrations, changes, results and reports"},
};

static void usage(FILE *to)
{
    fprintf(to, "usage: sonar <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(to, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(to, "\nRun 'sonar <command> --help' for a command's options.\n"
                "The bus is NATS_URL (default " SONAR_DEFAULT_NATS_URL ") or --server URL.\n");
}

int sonar_cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("sonar %s\n", SONAR_VERSION);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0)
        return sonar_cmd_version(argc - 1, argv + 1);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "sonar: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
