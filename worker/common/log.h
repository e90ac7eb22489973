#pragma once
// Logging goes through spdlog with key=value fields; this header only fixes the one
// process-wide setup so every binary logs the same way (to stderr: stdout is for output).
#include <spdlog/spdlog.h>
#include <string_view>

namespace shoal {
// Sends the default logger to stderr at `level` ("debug", "info", "warn", "error").
void InitLogging(std::string_view level);
}  // namespace shoal
