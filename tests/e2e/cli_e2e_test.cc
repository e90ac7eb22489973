// The built binaries as a user runs them: `shoal generate`, `shoal chat`, `shoal serve
// --once`, `shoal-worker` with `shoal generate --server` and `shoal bench` against it.
// Each runs as a subprocess with its stdout and stderr captured apart, because the
// contract is that stdout carries only the product.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "worker/server/model_location.h"

extern char** environ;

namespace shoal {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kBinDir = SHOAL_BIN_DIR;

struct ProcessResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "." + std::to_string(getpid()) + "." + std::to_string(rand())))
      .string();
}

// A child with stdin from `input`, stdout and stderr into files.
class Subprocess {
 public:
  Subprocess(std::vector<std::string> argv, const std::string& input = "")
      : out_path_(TempPath("shoal-e2e-out")), err_path_(TempPath("shoal-e2e-err")), in_path_(TempPath("shoal-e2e-in")) {
    std::ofstream(in_path_) << input;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, in_path_.c_str(), O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~Subprocess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove(out_path_);
    std::filesystem::remove(err_path_);
    std::filesystem::remove(in_path_);
  }

  pid_t pid() const { return pid_; }
  std::string err_so_far() const { return ReadFile(err_path_); }
  std::string out_so_far() const { return ReadFile(out_path_); }

  // Waits up to `timeout`, then kills it; the result carries what it wrote.
  ProcessResult Wait(std::chrono::seconds timeout) {
    ProcessResult r;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (pid_ > 0) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) break;
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        ADD_FAILURE() << "timed out after " << timeout.count() << "s";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    reaped_ = true;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = ReadFile(out_path_);
    r.err = ReadFile(err_path_);
    return r;
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  std::string out_path_, err_path_, in_path_;
};

ProcessResult RunToEnd(std::vector<std::string> argv, const std::string& input = "",
                  std::chrono::seconds timeout = std::chrono::seconds(240)) {
  Subprocess p(std::move(argv), input);
  EXPECT_GT(p.pid(), 0) << "cannot start the binary";
  return p.Wait(timeout);
}

// Text a small English model plausibly wrote: printable, several words, and some of the
// commonest English words among them. Checks the plumbing (decoding, streaming, chat
// template) without pinning what the model says.
::testing::AssertionResult LooksLikeEnglish(const std::string& text) {
  size_t printable = 0;
  for (unsigned char c : text) printable += (std::isprint(c) || std::isspace(c) || c >= 0x80) ? 1 : 0;
  if (text.empty() || printable < text.size()) return ::testing::AssertionFailure() << "unprintable: " << text;
  static const std::regex kWord("[A-Za-z]{2,}");
  const auto words = std::distance(std::sregex_iterator(text.begin(), text.end(), kWord), std::sregex_iterator());
  if (words < 3) return ::testing::AssertionFailure() << "fewer than 3 words: " << text;
  static const std::regex kCommon("\\b(the|a|an|is|are|of|and|to|in|it|you|I|that|this|be|with|for|on)\\b",
                                  std::regex::icase);
  if (!std::regex_search(text, kCommon)) return ::testing::AssertionFailure() << "no common English word: " << text;
  return ::testing::AssertionSuccess();
}

// Nothing a log line or progress message would put there.
void ExpectOnlyProduct(const std::string& out) {
  EXPECT_THAT(out, Not(HasSubstr("listening")));
  EXPECT_THAT(out, Not(HasSubstr("loading")));
  EXPECT_THAT(out, Not(HasSubstr("request_id=")));
  EXPECT_THAT(out, Not(HasSubstr(" info ")));
  EXPECT_THAT(out, Not(HasSubstr("warning")));
}

class CliEndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = worker::ResolveModelPath("");
    ASSERT_TRUE(model.ok()) << model.status().message();
    ASSERT_TRUE(std::filesystem::exists(kBinDir + "/shoal")) << "build the shoal target first";
  }
};

TEST_F(CliEndToEnd, GenerateInProcessPrintsOnlyTheCompletion) {
  ProcessResult r = RunToEnd({kBinDir + "/shoal", "generate", "--prompt", "The capital of France is", "--max-tokens",
                         "24", "--temperature", "0", "--threads", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(LooksLikeEnglish(r.out));
  ExpectOnlyProduct(r.out);
  EXPECT_THAT(r.err, HasSubstr("loaded"));  // progress goes to stderr
}

TEST_F(CliEndToEnd, GenerateChatAppliesTheTemplate) {
  ProcessResult r = RunToEnd({kBinDir + "/shoal", "generate", "--chat", "--prompt", "Name three colors of the rainbow.",
                         "--max-tokens", "32", "--temperature", "0", "--threads", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(LooksLikeEnglish(r.out));
  // The template's control tokens are special and never reach the text.
  EXPECT_THAT(r.out, Not(HasSubstr("<|im_start|>")));
  EXPECT_THAT(r.out, Not(HasSubstr("<|im_end|>")));
}

TEST_F(CliEndToEnd, MissingModelPathFailsNamingThePath) {
  const std::string missing = "/nonexistent/shoal-e2e/model.gguf";
  ProcessResult r = RunToEnd({kBinDir + "/shoal", "generate", "--model", missing, "--prompt", "Hi"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr(missing));
  EXPECT_EQ(r.out, "");
}

TEST_F(CliEndToEnd, ChatKeepsAConversationFromStdin) {
  ProcessResult r = RunToEnd({kBinDir + "/shoal", "chat", "--max-tokens", "24", "--temperature", "0", "--threads", "2"},
                        "Hello! My name is Ada.\nWhat is my name?\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(LooksLikeEnglish(r.out));
  ExpectOnlyProduct(r.out);
}

TEST_F(CliEndToEnd, ServeOnceAnswersOverGrpcAndShutsDownCleanly) {
  ProcessResult r = RunToEnd({kBinDir + "/shoal", "serve", "--once", "Why is the sky blue? Answer in two sentences.",
                         "--max-tokens", "64", "--threads", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(LooksLikeEnglish(r.out));
  ExpectOnlyProduct(r.out);
  EXPECT_THAT(r.err, HasSubstr("listening grpc="));  // the worker's ready line, on stderr
}

// The same tree with the worker group as tensor x pipeline processes: a pipeline-only
// group computes exactly what one process does, so the greedy answer is the same text;
// with tensor ranks too (3 x 2 = 6 processes) the answer is still the model's English.
TEST_F(CliEndToEnd, ServeOnceRunsTheGroupAsTensorTimesPipelineProcesses) {
  const std::vector<std::string> ask = {kBinDir + "/shoal", "serve", "--once", "Name three colours.", "--max-tokens",
                                        "24", "--temperature", "0", "--threads", "1", "--kv-cache-mb", "32"};
  ProcessResult one = RunToEnd(ask);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  std::vector<std::string> pipeline = ask;
  pipeline.insert(pipeline.end(), {"--pipeline", "2"});
  ProcessResult pp = RunToEnd(pipeline);
  EXPECT_EQ(pp.exit_code, 0) << pp.err;
  EXPECT_EQ(pp.out, one.out);
  std::vector<std::string> both = pipeline;
  both.insert(both.end(), {"--tensor", "3"});
  ProcessResult tp_pp = RunToEnd(both);
  EXPECT_EQ(tp_pp.exit_code, 0) << tp_pp.err;
  EXPECT_TRUE(LooksLikeEnglish(tp_pp.out)) << tp_pp.out;
  ExpectOnlyProduct(tp_pp.out);
}

// shoal-worker on its own: the ready line names a free port, clients reach it, SIGTERM
// ends it with status 0.
TEST_F(CliEndToEnd, WorkerServesGenerateAndBenchThenStopsOnSigterm) {
  Subprocess worker({kBinDir + "/shoal-worker", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                     "--threads", "2", "--kv-cache-mb", "64"});
  ASSERT_GT(worker.pid(), 0);
  std::smatch m;
  std::string err;
  static const std::regex kReady("listening grpc=([0-9.]+:[0-9]+) metrics=([0-9.]+:[0-9]+)");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::regex_search(err = worker.err_so_far(), m, kReady)) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no ready line; stderr:\n" << err;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::string address = m[1];

  ProcessResult gen = RunToEnd({kBinDir + "/shoal", "generate", "--server", address, "--prompt",
                           "Once upon a time, there was a", "--max-tokens", "24", "--temperature", "0"});
  EXPECT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_TRUE(LooksLikeEnglish(gen.out));
  ExpectOnlyProduct(gen.out);

  ProcessResult bad = RunToEnd({kBinDir + "/shoal", "generate", "--server", address, "--prompt", "Hi", "--top-p", "2"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.err, HasSubstr("sampling.top_p"));

  ProcessResult bench = RunToEnd({kBinDir + "/shoal", "bench", "--server", address, "--qps", "4", "--duration", "2",
                             "--concurrency", "2", "--prompt-tokens", "16", "--max-tokens", "8"});
  EXPECT_EQ(bench.exit_code, 0) << bench.err;
  EXPECT_THAT(bench.out, HasSubstr("requests_ok: "));
  EXPECT_THAT(bench.out, HasSubstr("requests_failed: 0"));
  EXPECT_THAT(bench.out, HasSubstr("ttft_p99_ms: "));
  EXPECT_THAT(bench.out, HasSubstr("tpot_p50_ms: "));

  kill(worker.pid(), SIGTERM);
  ProcessResult stopped = worker.Wait(std::chrono::seconds(60));
  EXPECT_EQ(stopped.exit_code, 0) << stopped.err;
  EXPECT_THAT(stopped.err, HasSubstr("shutdown done"));
}

// `shoal serve` as a long-running tree: it prints the endpoint on stdout once the worker is
// healthy, the endpoint answers, and SIGTERM to shoal stops the worker and exits 0.
TEST_F(CliEndToEnd, ServeForwardsSigtermToTheTreeAndExitsCleanly) {
  Subprocess serve({kBinDir + "/shoal", "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
                    "--metrics-port", "0", "--threads", "2", "--kv-cache-mb", "64"});
  ASSERT_GT(serve.pid(), 0);
  std::smatch m;
  std::string out;
  static const std::regex kEndpoint("grpc=([0-9.]+:[0-9]+)\n");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::regex_search(out = serve.out_so_far(), m, kEndpoint)) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no endpoint; stderr:\n" << serve.err_so_far();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ProcessResult gen = RunToEnd({kBinDir + "/shoal", "generate", "--server", std::string(m[1]), "--prompt",
                                "Rivers flow to the", "--max-tokens", "12", "--temperature", "0"});
  EXPECT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_FALSE(gen.out.empty());

  kill(serve.pid(), SIGTERM);
  ProcessResult stopped = serve.Wait(std::chrono::seconds(60));
  EXPECT_EQ(stopped.exit_code, 0) << stopped.err;
  EXPECT_THAT(stopped.err, HasSubstr("shutdown done"));  // the worker drained, it was not killed
  EXPECT_THAT(stopped.err, HasSubstr("router stopped"));
  // Nothing but the endpoints (router gRPC, then router HTTP) on stdout.
  EXPECT_TRUE(std::regex_match(stopped.out, std::regex("grpc=[0-9.]+:[0-9]+\nhttp=[0-9.]+:[0-9]+\n")))
      << stopped.out;
}

}  // namespace
}  // namespace shoal
