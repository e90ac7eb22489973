#pragma once
// The `shoal` subcommands. Each Add*Command registers its flags on `app` and, when the
// subcommand is chosen, runs it and stores the process exit status in *exit_code.
// Output contract shared by all of them: stdout carries only the product (completion
// text, bench numbers, the endpoint), everything else goes to stderr.
#include <CLI/CLI.hpp>

namespace shoal::cli {

void AddGenerateCommand(CLI::App& app, int* exit_code);
void AddChatCommand(CLI::App& app, int* exit_code);
void AddBenchCommand(CLI::App& app, int* exit_code);
void AddServeCommand(CLI::App& app, int* exit_code);

}  // namespace shoal::cli
