// `shoal generate` (one completion) and `shoal chat` (a REPL that keeps the conversation),
// in this process by default or against a server with --server.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tools/shoal/commands.h"
#include "tools/shoal/generation_backend.h"
#include "worker/common/log.h"

namespace shoal::cli {
namespace {

// Flags shared by generate and chat: where the model is and how to sample.
struct GenerationFlags {
  std::string model;
  std::string server;
  int threads = 0;
  int kv_cache_mb = 256;
  int max_model_len = 0;
  std::string log_level = "warn";
  int max_tokens = 256;
  float temperature = 0.7f;
  float top_p = 1.0f;
  int top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  int64_t seed = -1;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool stats = false;
};

void AddGenerationFlags(CLI::App* cmd, GenerationFlags* f) {
  cmd->add_option("--model", f->model,
                  "a .gguf file or Hugging Face directory (in-process), or a served model name (--server); "
                  "empty = the default model");
  cmd->add_option("--server", f->server, "HOST:PORT of a running shoal server; empty = run the model in-process");
  cmd->add_option("--threads", f->threads, "CPU threads (in-process); 0 = one per core");
  cmd->add_option("--kv-cache-mb", f->kv_cache_mb, "KV cache budget in MiB (in-process)")->capture_default_str();
  cmd->add_option("--max-model-len", f->max_model_len, "context length (in-process); 0 = the model's own");
  cmd->add_option("--log-level", f->log_level, "engine log level on stderr")->capture_default_str();
  cmd->add_option("--max-tokens", f->max_tokens, "tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", f->temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", f->top_p, "nucleus sampling threshold, (0, 1]")->capture_default_str();
  cmd->add_option("--top-k", f->top_k, "keep the k most likely tokens; 0 = off")->capture_default_str();
  cmd->add_option("--min-p", f->min_p, "drop tokens below min_p * p_max; 0 = off")->capture_default_str();
  cmd->add_option("--repetition-penalty", f->repetition_penalty, "1 = off")->capture_default_str();
  cmd->add_option("--seed", f->seed, "sampling seed; -1 = fresh entropy")->capture_default_str();
  cmd->add_option("--stop", f->stop, "stop string (repeatable)");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "keep generating past the end-of-sequence token");
  cmd->add_flag("--stats", f->stats, "print token counts and speed on stderr at the end");
}

void FillSampling(const GenerationFlags& f, v1::GenerateRequest* r) {
  if (!f.model.empty() && !f.server.empty()) r->set_model(f.model);
  r->set_max_tokens(f.max_tokens);
  v1::SamplingParams* s = r->mutable_sampling();
  s->set_temperature(f.temperature);
  s->set_top_p(f.top_p);
  s->set_top_k(f.top_k);
  s->set_min_p(f.min_p);
  s->set_repetition_penalty(f.repetition_penalty);
  if (f.seed >= 0) s->set_seed(static_cast<uint64_t>(f.seed));
  for (const std::string& stop : f.stop) r->mutable_stop()->add_stop(stop);
  r->mutable_stop()->set_ignore_eos(f.ignore_eos);
}

absl::StatusOr<std::unique_ptr<GenerationBackend>> OpenBackend(const GenerationFlags& f) {
  InitLogging(f.log_level);
  if (!f.server.empty()) return ConnectRemoteBackend(f.server);
  worker::ModelRuntimeOptions options;
  options.model = f.model;
  options.num_threads = f.threads;
  options.engine.kv_cache_bytes = static_cast<size_t>(std::max(1, f.kv_cache_mb)) << 20;
  options.engine.max_model_len = f.max_model_len;
  options.engine.max_num_seqs = 8;
  return LoadLocalBackend(options, [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  });
}

// Streams one request to stdout; returns the whole completion text.
absl::StatusOr<std::string> StreamToStdout(GenerationBackend& backend, const v1::GenerateRequest& request,
                                           bool stats) {
  std::string text;
  v1::Usage usage;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status status = backend.Generate(request, [&](const v1::GenerateResponse& r) {
    if (!r.text().empty()) {
      std::fwrite(r.text().data(), 1, r.text().size(), stdout);
      std::fflush(stdout);
      text += r.text();
    }
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finish = r.finish_reason();
      usage = r.usage();
    }
  });
  if (!text.empty() && text.back() != '\n') std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!status.ok()) return status;
  if (stats) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double decode_seconds = seconds - usage.time_to_first_token_seconds();
    std::fprintf(stderr,
                 "[finish=%s prompt_tokens=%d cached_prompt_tokens=%d completion_tokens=%d ttft_s=%.3f "
                 "decode_tokens_per_s=%.1f]\n",
                 v1::FinishReason_Name(finish).c_str(), usage.prompt_tokens(), usage.cached_prompt_tokens(),
                 usage.completion_tokens(), usage.time_to_first_token_seconds(),
                 usage.completion_tokens() > 1 && decode_seconds > 0
                     ? (usage.completion_tokens() - 1) / decode_seconds
                     : 0.0);
  }
  return text;
}

int ReportError(std::string_view what, const absl::Status& status) {
  std::fprintf(stderr, "shoal %.*s: %s\n", static_cast<int>(what.size()), what.data(), status.ToString().c_str());
  return 1;
}

struct GenerateCommandFlags {
  GenerationFlags gen;
  std::string prompt;
  std::string system;
  bool chat = false;
};

int RunGenerate(const GenerateCommandFlags& f) {
  v1::GenerateRequest request;
  FillSampling(f.gen, &request);
  if (f.chat) {
    if (!f.system.empty()) {
      v1::ChatMessage* m = request.mutable_chat()->add_messages();
      m->set_role("system");
      m->set_content(f.system);
    }
    v1::ChatMessage* m = request.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(f.prompt);
  } else {
    request.set_prompt(f.prompt);
  }
  auto backend = OpenBackend(f.gen);
  if (!backend.ok()) return ReportError("generate", backend.status());
  auto text = StreamToStdout(**backend, request, f.gen.stats);
  if (!text.ok()) return ReportError("generate", text.status());
  return 0;
}

struct ChatCommandFlags {
  GenerationFlags gen;
  std::string system;
};

// Each line from stdin is a user turn; the answer streams to stdout and joins the history
// so the next turn sees the whole conversation. "/reset" forgets it; EOF or "/exit" ends.
int RunChat(const ChatCommandFlags& f) {
  auto backend = OpenBackend(f.gen);
  if (!backend.ok()) return ReportError("chat", backend.status());
  const bool interactive = isatty(STDIN_FILENO);
  std::vector<v1::ChatMessage> history;
  auto reset = [&] {
    history.clear();
    if (!f.system.empty()) {
      v1::ChatMessage m;
      m.set_role("system");
      m.set_content(f.system);
      history.push_back(m);
    }
  };
  reset();
  if (interactive) std::fprintf(stderr, "chat ready; /reset forgets the conversation, /exit or Ctrl-D ends\n");
  std::string line;
  while (true) {
    if (interactive) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      reset();
      continue;
    }
    if (line.empty()) continue;
    v1::ChatMessage user;
    user.set_role("user");
    user.set_content(line);
    history.push_back(user);
    v1::GenerateRequest request;
    FillSampling(f.gen, &request);
    for (const v1::ChatMessage& m : history) *request.mutable_chat()->add_messages() = m;
    auto answer = StreamToStdout(**backend, request, f.gen.stats);
    if (!answer.ok()) {
      history.pop_back();
      ReportError("chat", answer.status());
      if (!interactive) return 1;
      continue;
    }
    v1::ChatMessage assistant;
    assistant.set_role("assistant");
    assistant.set_content(*answer);
    history.push_back(assistant);
  }
  return 0;
}

}  // namespace

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateCommandFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "complete one prompt; the completion streams to stdout");
  AddGenerationFlags(cmd, &flags->gen);
  cmd->add_option("--prompt,-p", flags->prompt, "the prompt text")->required();
  cmd->add_flag("--chat", flags->chat, "send the prompt as a user chat message (the chat template applies)");
  cmd->add_option("--system", flags->system, "system message with --chat");
  cmd->callback([flags, exit_code] { *exit_code = RunGenerate(*flags); });
}

void AddChatCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ChatCommandFlags>();
  CLI::App* cmd = app.add_subcommand("chat", "interactive chat: one user turn per stdin line");
  AddGenerationFlags(cmd, &flags->gen);
  cmd->add_option("--system", flags->system, "system message that opens the conversation");
  cmd->callback([flags, exit_code] { *exit_code = RunChat(*flags); });
}

}  // namespace shoal::cli
