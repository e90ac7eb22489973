// shoal: the command line for Shoal. `generate` and `chat` run a model in this process
// (or against --server), `bench` loads a server, `serve` runs the serving tree here.
#include <CLI/CLI.hpp>

#include "tools/shoal/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"shoal: serve and query LLMs with Shoal"};
  app.require_subcommand(1);
  int exit_code = 0;
  shoal::cli::AddGenerateCommand(app, &exit_code);
  shoal::cli::AddChatCommand(app, &exit_code);
  shoal::cli::AddBenchCommand(app, &exit_code);
  shoal::cli::AddServeCommand(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
