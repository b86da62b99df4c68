/* cli.h - one function per subcommand; main.c dispatches on argv[1].
 * Each returns the process exit status (0 ok, 1 error after printing
 * "anvil: <message>" to stderr). argv[0] is the subcommand name. */
#ifndef ANVIL_CLI_H
#define ANVIL_CLI_H

int cmd_train(int argc, char **argv);
int cmd_prepare(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_cost(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_launch(int argc, char **argv);
int cmd_embed(int argc, char **argv);

#endif
