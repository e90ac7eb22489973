#pragma once
// Drives a CausalLM the way an engine would, without one: each sequence gets its own
// block table over a private range of KV blocks, prompts are fed in chunks, and tokens
// are chosen greedily. Several sequences can share every step (continuous batching).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "worker/models/causal_lm.h"

namespace shoal::worker::testing {

inline std::string SourceDir() {
  if (const char* d = std::getenv("SHOAL_SOURCE_DIR")) return d;
  return SHOAL_TEST_SOURCE_DIR;
}

inline std::string ModelsDir() {
  if (const char* d = std::getenv("SHOAL_MODELS_DIR")) return d;
  return std::string(std::getenv("HOME")) + "/.cache/shoal/models";
}

// tests/oracle/fixtures/<name>/expected.json: what transformers computed for a fixture's
// checkpoint (in the same directory).
struct OracleExpectation {
  std::string dir;
  std::vector<int32_t> prompt;
  std::map<int, std::vector<float>> logits;  // by prompt position
  std::vector<int32_t> greedy;               // the greedy continuation of the prompt
  nlohmann::json json;                       // all of it, for what only some fixtures record
  const std::vector<float>& last_logits() const { return logits.at(static_cast<int>(prompt.size()) - 1); }
};

// False, saying why in *error, when the file is missing (the generator in tests/oracle/
// makes it) or lacks the common fields.
inline bool ReadOracleExpectation(const std::string& name, OracleExpectation* out, std::string* error) {
  out->dir = SourceDir() + "/tests/oracle/fixtures/" + name;
  std::ifstream f(out->dir + "/expected.json");
  if (!f) {
    *error = out->dir + "/expected.json is missing (the generators in tests/oracle/ make it)";
    return false;
  }
  out->json = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (!out->json.contains("prompt") || !out->json.contains("logits") || !out->json.contains("greedy")) {
    *error = out->dir + "/expected.json has no prompt, logits or greedy";
    return false;
  }
  out->prompt = out->json["prompt"].get<std::vector<int32_t>>();
  for (const auto& [pos, v] : out->json["logits"].items()) out->logits[std::stoi(pos)] = v.get<std::vector<float>>();
  out->greedy = out->json["greedy"].get<std::vector<int32_t>>();
  return true;
}

// Every position with recorded logits as its own sequence, the prompt's prefix ending
// there, all in one batch (sequence i on KV blocks i, i + 4, ... of a cache of at least
// 4 * 6 blocks). On success *positions lists them in order and *logits holds one vocab
// row for each.
inline bool ForwardRecordedPrefixes(CausalLM& lm, const std::vector<int32_t>& prompt,
                                    const std::map<int, std::vector<float>>& recorded, std::vector<int>* positions,
                                    std::vector<float>* logits) {
  ForwardBatch batch;
  std::vector<std::vector<int32_t>> prefixes, tables;
  positions->clear();
  for (const auto& [pos, v] : recorded) {
    positions->push_back(pos);
    prefixes.emplace_back(prompt.begin(), prompt.begin() + pos + 1);
    std::vector<int32_t> table;
    for (int b = 0; b < 6; ++b) table.push_back(static_cast<int32_t>(positions->size() - 1) + 4 * b);
    tables.push_back(table);
  }
  for (size_t i = 0; i < prefixes.size(); ++i) batch.seqs.push_back({prefixes[i], 0, tables[i], true});
  return lm.Forward(batch, logits).ok() &&
         logits->size() == positions->size() * static_cast<size_t>(lm.config().vocab_size);
}

inline int32_t ArgMax(const float* v, int64_t n) {
  return static_cast<int32_t>(std::max_element(v, v + n) - v);
}

// max|a-b| / max|b|
inline double RelativeError(const float* a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return num / den;
}

struct SequenceRun {
  std::vector<int32_t> prompt;
  std::vector<int> chunk_sizes;  // prompt split; empty = whole prompt in one step
  int num_new = 0;
  // filled in:
  std::vector<int32_t> tokens;        // all tokens so far (prompt + generated)
  std::vector<int32_t> generated;
  std::vector<float> prompt_logits;   // logits after the whole prompt
  std::vector<int32_t> block_table;
  int64_t computed = 0;               // tokens already in the KV cache
  size_t next_chunk = 0;
  bool done() const { return static_cast<int>(generated.size()) >= num_new; }
};

// Runs all sequences together, one step at a time, until each has its tokens. Each
// sequence owns blocks [i * blocks_per_seq, (i + 1) * blocks_per_seq), listed in reverse
// so that block order and position order differ.
// Three sequences that share steps with a fixture's prompt: an unrelated 11-token prompt
// (index 0, 20 new tokens, the one a solo run is compared with), the fixture's prompt in
// chunks of 6 (index 1, `fixture_new` tokens) and a 4-token prefix of the unrelated one
// fed a token at a time (index 2). Batching must not change what any of them generates.
inline const std::vector<int32_t>& UnrelatedPrompt() {
  static const std::vector<int32_t> prompt = {5, 9, 250, 31, 17, 2, 64, 64, 100, 3, 8};
  return prompt;
}
inline std::vector<SequenceRun> SharedStepRuns(const std::vector<int32_t>& fixture_prompt, int fixture_new) {
  const std::vector<int32_t>& other = UnrelatedPrompt();
  std::vector<SequenceRun> runs(3);
  runs[0].prompt = other;
  runs[0].num_new = 20;
  runs[1].prompt = fixture_prompt;
  runs[1].chunk_sizes = {6};
  runs[1].num_new = fixture_new;
  runs[2].prompt = {other.begin(), other.begin() + 4};
  runs[2].chunk_sizes = {1};
  runs[2].num_new = 5;
  return runs;
}

inline void RunGreedy(CausalLM& lm, std::vector<SequenceRun>& runs, int block_size,
                      int blocks_per_seq) {
  const int64_t vocab = lm.config().vocab_size;
  for (size_t i = 0; i < runs.size(); ++i) {
    runs[i].tokens = runs[i].prompt;
    runs[i].block_table.resize(blocks_per_seq);
    for (int b = 0; b < blocks_per_seq; ++b) {
      runs[i].block_table[b] = static_cast<int32_t>((i + 1) * blocks_per_seq - 1 - b);
    }
  }
  std::vector<float> logits;
  for (int step = 0; step < 10000; ++step) {
    ForwardBatch batch;
    std::vector<SequenceRun*> wanting;
    for (SequenceRun& r : runs) {
      if (r.done()) continue;
      int64_t n;
      if (r.computed < static_cast<int64_t>(r.prompt.size())) {
        n = r.chunk_sizes.empty() ? static_cast<int64_t>(r.prompt.size())
                                  : std::min<int64_t>(r.chunk_sizes[r.next_chunk++ % r.chunk_sizes.size()],
                                                      r.prompt.size() - r.computed);
      } else {
        n = 1;
      }
      SequenceChunk c;
      c.tokens = std::span<const int32_t>(r.tokens).subspan(r.computed, n);
      c.start_pos = r.computed;
      c.block_table = r.block_table;
      c.want_logits = r.computed + n >= static_cast<int64_t>(r.prompt.size());
      batch.seqs.push_back(c);
      if (c.want_logits) wanting.push_back(&r);
      r.computed += n;
    }
    if (batch.seqs.empty()) return;
    absl::Status st = lm.Forward(batch, &logits);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(logits.size(), wanting.size() * vocab);
    for (size_t k = 0; k < wanting.size(); ++k) {
      SequenceRun& r = *wanting[k];
      const float* row = logits.data() + k * vocab;
      for (int64_t i = 0; i < vocab; ++i) ASSERT_TRUE(std::isfinite(row[i])) << "logit " << i;
      if (r.generated.empty()) r.prompt_logits.assign(row, row + vocab);
      const int32_t next = ArgMax(row, vocab);
      r.generated.push_back(next);
      r.tokens.push_back(next);
    }
  }
  FAIL() << "greedy loop did not finish";
}

}  // namespace shoal::worker::testing
