// The Tokenizer factories and StreamingDetokenizer.
#include "worker/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "worker/common/status_macros.h"
#include "worker/tokenizer/bpe_tokenizer.h"
#include "worker/tokenizer/gguf_tokenizer.h"
#include "worker/tokenizer/tokenizer_json.h"
#include "worker/tokenizer/utf8.h"

namespace shoal::worker {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(fmt::format("{}: cannot open", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::DataLossError(fmt::format("{}: read failed", path));
  return buf.str();
}

// A special token in tokenizer_config.json is a string or {"content": ...}.
std::optional<std::string> TokenContent(const nlohmann::json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return std::nullopt;
}

// BOS/EOS live beside tokenizer.json in an HF directory: tokenizer_config.json names the
// tokens and whether BOS is added; generation_config.json may list several EOS ids.
std::optional<int32_t> LookupId(const BpeTokenizerSpec& spec, std::string_view content) {
  for (const AddedToken& t : spec.added_tokens) {
    if (t.content == content) return t.id;
  }
  auto it = spec.vocab.find(content);
  if (it == spec.vocab.end()) return std::nullopt;
  return it->second;
}

void ApplySiblingConfigs(const std::string& tokenizer_json_path, BpeTokenizerSpec* spec) {
  const std::filesystem::path dir = std::filesystem::path(tokenizer_json_path).parent_path();
  auto load = [](const std::filesystem::path& p) -> nlohmann::json {
    absl::StatusOr<std::string> text = ReadWholeFile(p.string());
    if (!text.ok()) return nullptr;
    nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    return j.is_object() ? j : nlohmann::json(nullptr);
  };
  const nlohmann::json cfg = load(dir / "tokenizer_config.json");
  if (cfg.is_object()) {
    if (auto bos = TokenContent(cfg, "bos_token")) {
      if (auto id = LookupId(*spec, *bos)) spec->bos_id = id;
    }
    if (auto eos = TokenContent(cfg, "eos_token")) {
      if (auto id = LookupId(*spec, *eos)) spec->eos_ids.push_back(*id);
    }
    if (auto it = cfg.find("add_bos_token"); it != cfg.end() && it->is_boolean()) {
      spec->add_bos = it->get<bool>() && spec->bos_id.has_value();
    }
  }
  const nlohmann::json gen = load(dir / "generation_config.json");
  if (gen.is_object()) {
    auto add = [&](const nlohmann::json& v) {
      if (!v.is_number_integer()) return;
      const auto id = v.get<int64_t>();
      if (id < 0 || id > INT32_MAX) return;
      if (std::find(spec->eos_ids.begin(), spec->eos_ids.end(), id) == spec->eos_ids.end()) {
        spec->eos_ids.push_back(static_cast<int32_t>(id));
      }
    };
    if (auto it = gen.find("eos_token_id"); it != gen.end()) {
      if (it->is_array()) {
        for (const auto& v : *it) add(v);
      } else {
        add(*it);
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJson(
    std::string_view json, std::string_view source_name) {
  ASSIGN_OR_RETURN(BpeTokenizerSpec spec, ParseTokenizerJson(json, source_name));
  auto tok = BpeTokenizer::Create(std::move(spec));
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        fmt::format("{}: model: {}", source_name, std::string(tok.status().message())));
  }
  return std::unique_ptr<Tokenizer>(std::move(*tok));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJsonFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path));
  ASSIGN_OR_RETURN(BpeTokenizerSpec spec, ParseTokenizerJson(text, path));
  ApplySiblingConfigs(path, &spec);
  auto tok = BpeTokenizer::Create(std::move(spec));
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        fmt::format("{}: model: {}", path, std::string(tok.status().message())));
  }
  return std::unique_ptr<Tokenizer>(std::move(*tok));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufVocab& vocab) {
  ASSIGN_OR_RETURN(BpeTokenizerSpec spec, SpecFromGguf(vocab));
  auto tok = BpeTokenizer::Create(std::move(spec));
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        fmt::format("GGUF tokenizer: {}", std::string(tok.status().message())));
  }
  return std::unique_ptr<Tokenizer>(std::move(*tok));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::ForModel(const LoadedModel& model) {
  if (model.gguf_vocab) return FromGguf(*model.gguf_vocab);
  if (!model.tokenizer_json_path.empty()) return FromTokenizerJsonFile(model.tokenizer_json_path);
  return absl::NotFoundError(fmt::format("{}: the model carries no tokenizer", model.path));
}

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

// Idea: append the token's bytes to what is pending; emit everything except a trailing
// sequence that is still an incomplete-but-valid UTF-8 prefix. Bytes that can never become
// valid are emitted as U+FFFD right away, exactly where whole-text decoding puts them.
std::string StreamingDetokenizer::Push(int32_t id) {
  if (skip_special_ && tokenizer_.IsSpecial(id)) return {};
  pending_ += tokenizer_.TokenBytes(id);
  const size_t stable = StableUtf8Prefix(pending_);
  std::string out = LossyUtf8(std::string_view(pending_).substr(0, stable));
  pending_.erase(0, stable);
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out = LossyUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace shoal::worker
