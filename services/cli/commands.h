/*
 * The `sonar` CLI's subcommands. Each is `int sonar_cmd_<name>(int argc, char **argv)`
 * with argv[0] the subcommand's name, returning the process exit code.
 * Exit codes shared by all subcommands: 0 success, 2 invalid arguments
 * (unless a subcommand documents otherwise), 3 runtime error.
 */
#ifndef SONAR_CLI_COMMANDS_H
#define SONAR_CLI_COMMANDS_H

typedef struct sonar_cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} sonar_cli_command;

int sonar_cmd_test(int argc, char **argv);
int sonar_cmd_agent(int argc, char **argv);
int sonar_cmd_announce(int argc, char **argv);
int sonar_cmd_graph(int argc, char **argv);
int sonar_cmd_history(int argc, char **argv);
int sonar_cmd_report(int argc, char **argv);
int sonar_cmd_request(int argc, char **argv);
int sonar_cmd_services(int argc, char **argv);
int sonar_cmd_outbox(int argc, char **argv);
int sonar_cmd_inbox(int argc, char **argv);
int sonar_cmd_version(int argc, char **argv);
int sonar_cmd_watch(int argc, char **argv);

#endif
