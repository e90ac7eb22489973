// GenerateRequest.separate_reasoning through the real worker: a WorkerServer on a free
// port serving a tiny DeepSeek-V3 checkpoint (tests/oracle/fixtures/fp8_deepseek_v3_tiny)
// with a byte-level tokenizer and DeepSeek-R1's chat template, against a real gRPC client.
// The model's weights are random, so its output is arbitrary bytes with no </think>: with
// R1's template the prompt has opened <think>, so all of it is reasoning.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "worker/engine/reasoning_splitter.h"
#include "worker/server/model_runtime.h"
#include "worker/server/worker_server.h"
#include "worker/tokenizer/byte_level.h"

namespace shoal::worker {
namespace {

namespace fs = std::filesystem;

std::string SourceDir() {
  if (const char* d = std::getenv("SHOAL_SOURCE_DIR")) return d;
  return SHOAL_TEST_SOURCE_DIR;
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f) << path;
  return nlohmann::json::parse(f);
}

// A tokenizer.json of the 256 byte tokens (the model's vocabulary) and no merges.
void WriteByteTokenizer(const fs::path& dir) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[std::string(ByteLevelAlphabet::Get().Spell(static_cast<uint8_t>(b)))] = b;
  const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false},
                                     {"trim_offsets", true}, {"use_regex", false}};
  const nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
  };
  std::ofstream(dir / "tokenizer.json") << tok.dump();
}

struct Streamed {
  std::string text, reasoning;
  std::vector<int32_t> ids;
  grpc::Status status;
};

class SeparateReasoningServer : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string fixture = SourceDir() + "/tests/oracle/fixtures/fp8_deepseek_v3_tiny";
    dir_ = fs::temp_directory_path() / ("shoal-reasoning-" + GetParam() + "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* f : {"config.json", "model.safetensors", "generation_config.json"}) {
      fs::create_symlink(fixture + "/" + f, dir_ / f);
    }
    WriteByteTokenizer(dir_);
    const auto templates = ReadJson(SourceDir() + "/tests/tokenizer/fixtures/deepseek_chat_templates.json");
    nlohmann::json config = {{"chat_template", templates["templates"][GetParam()]}};
    std::ofstream(dir_ / "tokenizer_config.json") << config.dump();

    ModelRuntimeOptions options;
    options.model = dir_.string();
    options.num_threads = 2;
    options.engine.kv_cache_bytes = 8ull << 20;
    options.engine.max_model_len = 256;
    auto runtime = ModelRuntime::Load(options);
    ASSERT_TRUE(runtime.ok()) << runtime.status();
    runtime_ = std::move(*runtime);
    WorkerServerOptions server_options;
    server_options.host = "127.0.0.1";
    server_options.port = 0;
    server_options.metrics_port = -1;
    auto server = WorkerServer::Start(server_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Serve(runtime_.get());
    stub_ = v1::Generation::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::seconds(1));
    server_.reset();
    runtime_.reset();
    fs::remove_all(dir_);
  }

  Streamed Generate(bool chat, bool separate) {
    v1::GenerateRequest r;
    if (chat) {
      v1::ChatMessage* m = r.mutable_chat()->add_messages();
      m->set_role("user");
      m->set_content("What is 2+2?");
    } else {
      r.set_prompt("Question: what is 2+2?");
    }
    r.set_max_tokens(24);
    r.mutable_stop()->set_ignore_eos(true);
    r.set_separate_reasoning(separate);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto reader = stub_->Generate(&context, r);
    Streamed out;
    v1::GenerateResponse piece;
    while (reader->Read(&piece)) {
      out.text += piece.text();
      out.reasoning += piece.reasoning_text();
      out.ids.insert(out.ids.end(), piece.token_ids().begin(), piece.token_ids().end());
    }
    out.status = reader->Finish();
    return out;
  }

  fs::path dir_;
  std::unique_ptr<ModelRuntime> runtime_;
  std::unique_ptr<WorkerServer> server_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

TEST_P(SeparateReasoningServer, RoutesOutputByTheTemplate) {
  const bool r1 = GetParam() == "DeepSeekR1";
  ASSERT_NE(runtime_->chat_template(), nullptr);
  EXPECT_EQ(runtime_->chat_template()->reasoning(), r1);

  const Streamed plain = Generate(/*chat=*/true, /*separate=*/false);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  ASSERT_EQ(plain.ids.size(), 24u);
  EXPECT_EQ(plain.reasoning, "");
  ASSERT_EQ(plain.text.find("</think>"), std::string::npos) << "the random model wrote </think>: pick another prompt";

  const Streamed split = Generate(/*chat=*/true, /*separate=*/true);
  ASSERT_TRUE(split.status.ok()) << split.status.error_message();
  EXPECT_EQ(split.ids, plain.ids);  // greedy: the same tokens, only their text moves
  if (r1) {
    // The prompt opened <think> and nothing closed it: all reasoning (leading whitespace
    // trimmed, as the splitter trims next to its tags).
    ReasoningSplitter whole(/*starts_in_reasoning=*/true);
    ReasoningSplitter::Piece want = whole.Push(plain.text);
    want.reasoning += whole.Flush().reasoning;
    EXPECT_EQ(split.text, "");
    EXPECT_EQ(split.reasoning, want.reasoning);
    EXPECT_FALSE(split.reasoning.empty());
  } else {
    // V3 does not reason: separate_reasoning changes nothing.
    EXPECT_EQ(split.text, plain.text);
    EXPECT_EQ(split.reasoning, "");
  }

  // A raw prompt was not rendered by the template, so nothing opened <think>; the output
  // does not open one either, so it is all answer.
  const Streamed raw = Generate(/*chat=*/false, /*separate=*/true);
  ASSERT_TRUE(raw.status.ok()) << raw.status.error_message();
  const Streamed raw_plain = Generate(/*chat=*/false, /*separate=*/false);
  EXPECT_EQ(raw.text, raw_plain.text);
  EXPECT_EQ(raw.reasoning, "");
}

INSTANTIATE_TEST_SUITE_P(Templates, SeparateReasoningServer, ::testing::Values("DeepSeekR1", "DeepSeekV3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace shoal::worker
