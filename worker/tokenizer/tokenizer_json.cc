#include "worker/tokenizer/tokenizer_json.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "worker/common/status_macros.h"

namespace shoal::worker {
namespace {

using Json = nlohmann::json;

// Walks the document with the JSON path of the current value, so every error can say
// where it is.
class JsonReader {
 public:
  explicit JsonReader(std::string_view source) : source_(source) {}

  absl::Status Error(const std::string& path, std::string_view what) const {
    return absl::InvalidArgumentError(fmt::format("{}: {}: {}", source_, path, what));
  }
  absl::Status Unsupported(const std::string& path, std::string_view what) const {
    return absl::UnimplementedError(fmt::format("{}: {}: {}", source_, path, what));
  }

  absl::StatusOr<const Json*> Object(const Json& parent, const std::string& path,
                                     std::string_view key, bool required) const {
    auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) {
      if (required) return Error(Join(path, key), "missing");
      return nullptr;
    }
    if (!it->is_object()) return Error(Join(path, key), "expected an object");
    return &*it;
  }
  absl::StatusOr<bool> Bool(const Json& parent, const std::string& path, std::string_view key,
                            bool fallback) const {
    auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) return Error(Join(path, key), "expected true or false");
    return it->get<bool>();
  }
  absl::StatusOr<std::optional<std::string>> String(const Json& parent, const std::string& path,
                                                    std::string_view key) const {
    auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) return std::optional<std::string>();
    if (!it->is_string()) return Error(Join(path, key), "expected a string");
    return std::optional<std::string>(it->get<std::string>());
  }
  absl::StatusOr<int32_t> Id(const Json& value, const std::string& path) const {
    if (!value.is_number_integer()) return Error(path, "expected a token id (integer)");
    const auto v = value.get<int64_t>();
    if (v < 0 || v > INT32_MAX) return Error(path, fmt::format("token id {} out of range", v));
    return static_cast<int32_t>(v);
  }
  absl::StatusOr<std::string> Type(const Json& obj, const std::string& path) const {
    auto it = obj.find("type");
    if (it == obj.end() || !it->is_string()) return Error(Join(path, "type"), "missing or not a string");
    return it->get<std::string>();
  }
  static std::string Join(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
  }

 private:
  std::string_view source_;
};

absl::Status ParseNormalizer(const JsonReader& r, const Json& n, const std::string& path,
                             std::vector<Normalizer::Form>* forms) {
  if (n.is_null()) return absl::OkStatus();
  if (!n.is_object()) return r.Error(path, "expected an object or null");
  ASSIGN_OR_RETURN(std::string type, r.Type(n, path));
  if (type == "NFC") forms->push_back(Normalizer::Form::kNfc);
  else if (type == "NFD") forms->push_back(Normalizer::Form::kNfd);
  else if (type == "NFKC") forms->push_back(Normalizer::Form::kNfkc);
  else if (type == "NFKD") forms->push_back(Normalizer::Form::kNfkd);
  else if (type == "Sequence") {
    auto it = n.find("normalizers");
    const std::string list_path = JsonReader::Join(path, "normalizers");
    if (it == n.end() || !it->is_array()) return r.Error(list_path, "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      RETURN_IF_ERROR(ParseNormalizer(r, (*it)[i], fmt::format("{}[{}]", list_path, i), forms));
    }
  } else {
    return r.Unsupported(path, fmt::format("normalizer type '{}' is not supported", type));
  }
  return absl::OkStatus();
}

absl::StatusOr<SplitBehavior> ParseBehavior(const JsonReader& r, const Json& obj,
                                            const std::string& path) {
  auto it = obj.find("behavior");
  const std::string p = JsonReader::Join(path, "behavior");
  if (it == obj.end() || !it->is_string()) return r.Error(p, "missing or not a string");
  const std::string b = it->get<std::string>();
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return r.Error(p, fmt::format("unknown split behavior '{}'", b));
}

absl::Status ParsePreTokenizer(const JsonReader& r, const Json& p, const std::string& path,
                               PreTokenizer* out) {
  if (p.is_null()) return absl::OkStatus();
  if (!p.is_object()) return r.Error(path, "expected an object or null");
  ASSIGN_OR_RETURN(std::string type, r.Type(p, path));
  if (type == "Sequence") {
    auto it = p.find("pretokenizers");
    const std::string list_path = JsonReader::Join(path, "pretokenizers");
    if (it == p.end() || !it->is_array()) return r.Error(list_path, "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      RETURN_IF_ERROR(ParsePreTokenizer(r, (*it)[i], fmt::format("{}[{}]", list_path, i), out));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool prefix, r.Bool(p, path, "add_prefix_space", true));
    ASSIGN_OR_RETURN(bool use_regex, r.Bool(p, path, "use_regex", true));
    return out->AddByteLevel(prefix, use_regex);
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(bool individual, r.Bool(p, path, "individual_digits", false));
    return out->AddDigits(individual);
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(const Json* pattern, r.Object(p, path, "pattern", /*required=*/true));
    const std::string pattern_path = JsonReader::Join(path, "pattern");
    std::string regex;
    if (auto it = pattern->find("Regex"); it != pattern->end() && it->is_string()) {
      regex = it->get<std::string>();
    } else if (auto it2 = pattern->find("String"); it2 != pattern->end() && it2->is_string()) {
      regex = EscapeRegexLiteral(it2->get<std::string>());
    } else {
      return r.Error(pattern_path, "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(r, p, path));
    ASSIGN_OR_RETURN(bool invert, r.Bool(p, path, "invert", false));
    absl::Status s = out->AddSplit(regex, behavior, invert);
    if (!s.ok()) return r.Error(pattern_path, std::string(s.message()));
    return absl::OkStatus();
  }
  return r.Unsupported(path, fmt::format("pre_tokenizer type '{}' is not supported", type));
}

absl::Status ParseModel(const JsonReader& r, const Json& root, BpeTokenizerSpec* spec) {
  ASSIGN_OR_RETURN(const Json* model, r.Object(root, "", "model", /*required=*/true));
  if (auto it = model->find("type"); it != model->end()) {
    if (!it->is_string()) return r.Error("model.type", "expected a string");
    if (it->get<std::string>() != "BPE") {
      return r.Unsupported("model.type", fmt::format("model type '{}' is not supported (only BPE)",
                                                     it->get<std::string>()));
    }
  }
  if (auto it = model->find("dropout"); it != model->end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0) {
      return r.Unsupported("model.dropout", "BPE dropout is not supported at inference");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    ASSIGN_OR_RETURN(std::optional<std::string> v, r.String(*model, "model", key));
    if (v && !v->empty()) {
      return r.Unsupported(JsonReader::Join("model", key), "is not supported for byte-level BPE");
    }
  }
  ASSIGN_OR_RETURN(spec->model_options.unk_token, r.String(*model, "model", "unk_token"));
  ASSIGN_OR_RETURN(spec->model_options.fuse_unk, r.Bool(*model, "model", "fuse_unk", false));
  ASSIGN_OR_RETURN(spec->model_options.byte_fallback,
                   r.Bool(*model, "model", "byte_fallback", false));
  ASSIGN_OR_RETURN(spec->model_options.ignore_merges,
                   r.Bool(*model, "model", "ignore_merges", false));

  ASSIGN_OR_RETURN(const Json* vocab, r.Object(*model, "model", "vocab", /*required=*/true));
  spec->vocab.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    ASSIGN_OR_RETURN(int32_t id, r.Id(it.value(), fmt::format("model.vocab['{}']", it.key())));
    spec->vocab.insert_or_assign(it.key(), id);
  }

  auto merges = model->find("merges");
  if (merges == model->end() || merges->is_null()) return absl::OkStatus();
  if (!merges->is_array()) return r.Error("model.merges", "expected an array");
  spec->merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& m = (*merges)[i];
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space != std::string::npos && s.find(' ', space + 1) == std::string::npos) {
        spec->merges.emplace_back(s.substr(0, space), s.substr(space + 1));
        continue;
      }
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      spec->merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      continue;
    }
    return r.Error(fmt::format("model.merges[{}]", i), "expected 'a b' or [a, b]");
  }
  return absl::OkStatus();
}

absl::Status ParseAddedTokens(const JsonReader& r, const Json& root, BpeTokenizerSpec* spec) {
  auto list = root.find("added_tokens");
  if (list == root.end() || list->is_null()) return absl::OkStatus();
  if (!list->is_array()) return r.Error("added_tokens", "expected an array");
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& t = (*list)[i];
    const std::string path = fmt::format("added_tokens[{}]", i);
    if (!t.is_object()) return r.Error(path, "expected an object");
    AddedToken token;
    auto id = t.find("id");
    if (id == t.end()) return r.Error(path + ".id", "missing");
    ASSIGN_OR_RETURN(token.id, r.Id(*id, path + ".id"));
    ASSIGN_OR_RETURN(std::optional<std::string> content, r.String(t, path, "content"));
    if (!content) return r.Error(path + ".content", "missing");
    token.content = std::move(*content);
    ASSIGN_OR_RETURN(token.special, r.Bool(t, path, "special", false));
    ASSIGN_OR_RETURN(token.lstrip, r.Bool(t, path, "lstrip", false));
    ASSIGN_OR_RETURN(token.rstrip, r.Bool(t, path, "rstrip", false));
    ASSIGN_OR_RETURN(token.normalized, r.Bool(t, path, "normalized", true));
    ASSIGN_OR_RETURN(token.single_word, r.Bool(t, path, "single_word", false));
    spec->added_tokens.push_back(std::move(token));
  }
  return absl::OkStatus();
}

absl::Status ParseDecoder(const JsonReader& r, const Json& root, BpeTokenizerSpec* spec) {
  auto d = root.find("decoder");
  if (d == root.end() || d->is_null()) {
    spec->byte_level_decoder = false;
    return absl::OkStatus();
  }
  if (!d->is_object()) return r.Error("decoder", "expected an object or null");
  ASSIGN_OR_RETURN(std::string type, r.Type(*d, "decoder"));
  if (type != "ByteLevel") {
    return r.Unsupported("decoder", fmt::format("decoder type '{}' is not supported", type));
  }
  spec->byte_level_decoder = true;
  return absl::OkStatus();
}

// A TemplateProcessing post-processor whose single-sequence template starts with a special
// token is how HF says "prepend BOS" (Llama 3). Found at the top or inside a Sequence.
void FindBos(const Json& p, BpeTokenizerSpec* spec) {
  if (!p.is_object()) return;
  auto type = p.find("type");
  if (type == p.end() || !type->is_string()) return;
  if (*type == "Sequence") {
    if (auto list = p.find("processors"); list != p.end() && list->is_array()) {
      for (const Json& child : *list) FindBos(child, spec);
    }
    return;
  }
  if (*type != "TemplateProcessing") return;
  auto single = p.find("single");
  if (single == p.end() || !single->is_array() || single->empty()) return;
  const Json& first = (*single)[0];
  if (!first.is_object()) return;
  auto special = first.find("SpecialToken");
  if (special == first.end() || !special->is_object()) return;
  auto name = special->find("id");
  if (name == special->end() || !name->is_string()) return;
  const std::string& content = name->get_ref<const std::string&>();
  for (const AddedToken& t : spec->added_tokens) {
    if (t.content == content) {
      spec->bos_id = t.id;
      spec->add_bos = true;
      return;
    }
  }
  if (auto it = spec->vocab.find(content); it != spec->vocab.end()) {
    spec->bos_id = it->second;
    spec->add_bos = true;
  }
}

absl::StatusOr<BpeTokenizerSpec> ParseDocument(const JsonReader& r, const Json& root) {
  if (!root.is_object()) return r.Error("$", "expected a JSON object at the top level");
  BpeTokenizerSpec spec;
  RETURN_IF_ERROR(ParseAddedTokens(r, root, &spec));
  std::vector<Normalizer::Form> forms;
  if (auto n = root.find("normalizer"); n != root.end()) {
    RETURN_IF_ERROR(ParseNormalizer(r, *n, "normalizer", &forms));
  }
  ASSIGN_OR_RETURN(spec.normalizer, Normalizer::Create(std::move(forms)));
  if (auto p = root.find("pre_tokenizer"); p != root.end()) {
    RETURN_IF_ERROR(ParsePreTokenizer(r, *p, "pre_tokenizer", &spec.pre_tokenizer));
  }
  RETURN_IF_ERROR(ParseModel(r, root, &spec));
  RETURN_IF_ERROR(ParseDecoder(r, root, &spec));
  if (spec.byte_level_decoder && !spec.pre_tokenizer.byte_level()) {
    return r.Unsupported("pre_tokenizer",
                         "a ByteLevel decoder needs a ByteLevel pre-tokenizer (not byte-level BPE?)");
  }
  if (auto p = root.find("post_processor"); p != root.end()) FindBos(*p, &spec);
  return spec;
}

}  // namespace

absl::StatusOr<BpeTokenizerSpec> ParseTokenizerJson(std::string_view json,
                                                    std::string_view source_name) {
  JsonReader reader(source_name);
  try {
    Json root;
    try {
      root = Json::parse(json.begin(), json.end());
    } catch (const Json::parse_error& e) {
      return reader.Error("$", fmt::format("not valid JSON: {}", e.what()));
    }
    return ParseDocument(reader, root);
  } catch (const std::exception& e) {
    // The checks above should leave nothing for the library to throw; stay a value anyway.
    return reader.Error("$", fmt::format("unexpected JSON content: {}", e.what()));
  }
}

}  // namespace shoal::worker
