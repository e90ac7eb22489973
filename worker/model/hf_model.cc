#include "worker/model/hf_model.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "worker/common/status_macros.h"
#include "worker/model/hf_config.h"
#include "worker/model/mapped_file.h"
#include "worker/model/mapped_weight_store.h"
#include "worker/model/model_checks.h"
#include "worker/model/safetensors_file.h"

namespace shoal::worker {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// std::filesystem::exists throws on errors such as EACCES; here they read as "absent" and
// the open that follows reports the real errno.
bool Exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    std::string msg = fmt::format("{}: cannot open: {}", path, std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// weight_map of model.safetensors.index.json: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ParseShardIndex(const std::string& source,
                                                                   const std::string& text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(fmt::format("{}: not a valid JSON object", source));
  }
  auto it = j.find("weight_map");
  if (it == j.end() || !it->is_object()) {
    return absl::InvalidArgumentError(fmt::format("{}: missing object 'weight_map'", source));
  }
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : it->items()) {
    // A shard must be a plain file name inside the directory, never a path out of it.
    if (!shard.is_string() || shard.get<std::string>().empty() ||
        shard.get<std::string>().find('/') != std::string::npos ||
        shard.get<std::string>() == "..") {
      return absl::InvalidArgumentError(fmt::format(
          "{}: weight_map entry for '{}' is not a file name in the model directory", source, name));
    }
    out.emplace(name, shard.get<std::string>());
  }
  return out;
}

// Maps each shard once and collects its tensors. With an index, every tensor the index
// lists must be in the shard it names.
absl::Status LoadSafetensorsWeights(const std::string& dir, LoadedModel* model) {
  fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  fs::path single_path = fs::path(dir) / "model.safetensors";
  std::vector<TensorView> views;
  std::vector<MappedFile> files;
  std::string source;

  if (Exists(index_path)) {
    source = index_path.string();
    ASSIGN_OR_RETURN(std::string text, ReadTextFile(source));
    ASSIGN_OR_RETURN(auto weight_map, ParseShardIndex(source, text));
    std::map<std::string, std::set<std::string>> by_shard;
    for (const auto& [name, shard] : weight_map) by_shard[shard].insert(name);
    for (const auto& [shard, names] : by_shard) {
      std::string shard_path = (fs::path(dir) / shard).string();
      absl::StatusOr<MappedFile> mapped = MappedFile::Open(shard_path);
      if (!mapped.ok()) {
        return absl::Status(mapped.status().code(),
                            fmt::format("{}: shard '{}' listed in the weight_map: {}", source,
                                        shard, std::string(mapped.status().message())));
      }
      ASSIGN_OR_RETURN(std::vector<TensorView> shard_views,
                       ParseSafetensors(shard_path, mapped->bytes()));
      std::set<std::string> found;
      for (TensorView& v : shard_views) found.insert(v.name);
      for (const std::string& name : names) {
        if (!found.count(name)) {
          return absl::InvalidArgumentError(fmt::format(
              "{}: tensor '{}' is mapped to shard '{}', which does not contain it", source, name,
              shard));
        }
      }
      for (TensorView& v : shard_views) views.push_back(std::move(v));
      files.push_back(std::move(*mapped));
    }
  } else if (Exists(single_path)) {
    source = single_path.string();
    ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(source));
    ASSIGN_OR_RETURN(views, ParseSafetensors(source, mapped.bytes()));
    files.push_back(std::move(mapped));
  } else {
    return absl::NotFoundError(fmt::format(
        "{}: no model.safetensors or model.safetensors.index.json in the directory", dir));
  }
  ASSIGN_OR_RETURN(model->weights,
                   MappedWeightStore::Create(source, std::move(views), std::move(files)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LoadedModel> LoadHfModel(const std::string& dir) {
  LoadedModel model;
  model.path = dir;
  std::string config_path = (fs::path(dir) / "config.json").string();
  ASSIGN_OR_RETURN(std::string config_text, ReadTextFile(config_path));
  ASSIGN_OR_RETURN(model.config, ParseHfConfig(config_path, config_text));

  // generation_config.json decides when `generate` stops; its eos ids join config.json's.
  std::string gen_path = (fs::path(dir) / "generation_config.json").string();
  if (Exists(gen_path)) {
    ASSIGN_OR_RETURN(std::string gen_text, ReadTextFile(gen_path));
    ASSIGN_OR_RETURN(std::vector<int32_t> eos, ParseGenerationConfigEos(gen_path, gen_text));
    for (int32_t id : eos) {
      std::vector<int32_t>& ids = model.config.eos_token_ids;
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
  }
  RETURN_IF_ERROR(ValidateModelConfig(config_path, &model.config));

  std::string tokenizer_path = (fs::path(dir) / "tokenizer.json").string();
  if (Exists(tokenizer_path)) model.tokenizer_json_path = tokenizer_path;
  std::string tok_config_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (Exists(tok_config_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadTextFile(tok_config_path));
    ASSIGN_OR_RETURN(model.chat_template, ParseTokenizerConfigChatTemplate(tok_config_path, text));
  }
  // Newer checkpoints keep the template in its own file.
  std::string jinja_path = (fs::path(dir) / "chat_template.jinja").string();
  if (model.chat_template.empty() && Exists(jinja_path)) {
    ASSIGN_OR_RETURN(model.chat_template, ReadTextFile(jinja_path));
  }

  RETURN_IF_ERROR(LoadSafetensorsWeights(dir, &model));
  RETURN_IF_ERROR(CheckModelTensors(model.config, *model.weights));
  return model;
}

}  // namespace shoal::worker
