#include "worker/models/step_plan.h"

#include <algorithm>
#include <numeric>
#include <unordered_map>

namespace shoal::worker {

void PlanQueryTiles(std::span<const cpu::AttentionSequence> seqs, int64_t min_rows,
                    std::vector<cuda::QueryTile>* tiles, std::vector<int32_t>* untiled) {
  tiles->clear();
  untiled->clear();
  // A decode-only step (the common one) tiles nothing and lists nothing.
  if (std::none_of(seqs.begin(), seqs.end(), [&](const cpu::AttentionSequence& q) { return q.num_tokens >= min_rows; })) {
    return;
  }
  for (size_t s = 0; s < seqs.size(); ++s) {
    const cpu::AttentionSequence& q = seqs[s];
    if (q.num_tokens < min_rows) {
      for (int64_t i = 0; i < q.num_tokens; ++i) untiled->push_back(static_cast<int32_t>(q.first_row + i));
      continue;
    }
    for (int64_t i = 0; i < q.num_tokens; i += cuda::kQueryTileRows) {
      cuda::QueryTile t;
      t.first_row = static_cast<int32_t>(q.first_row + i);
      t.num_rows = static_cast<int32_t>(std::min<int64_t>(cuda::kQueryTileRows, q.num_tokens - i));
      t.seq = static_cast<int32_t>(s);
      t.first_pos = q.start_pos + i;
      tiles->push_back(t);
    }
  }
}

void PlanSampling(std::span<const RowSampling> rows, std::vector<cuda::SamplingRow>* params,
                  std::vector<cuda::PenaltyToken>* penalties) {
  params->resize(rows.size());
  penalties->clear();
  std::unordered_map<int32_t, int32_t> output_counts;
  for (size_t i = 0; i < rows.size(); ++i) {
    const RowSampling& in = rows[i];
    cuda::SamplingRow& p = (*params)[i];
    p = in.params;
    p.penalty_begin = static_cast<int32_t>(penalties->size());
    if (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
      output_counts.clear();
      const int64_t n = static_cast<int64_t>(in.tokens.size());
      const int64_t prompt = std::clamp<int64_t>(in.num_prompt_tokens, 0, n);
      for (int64_t t = 0; t < n; ++t) {
        int32_t& c = output_counts[in.tokens[t]];
        if (t >= prompt) ++c;
      }
      for (const auto& [token, count] : output_counts) penalties->push_back({token, count});
    }
    p.penalty_end = static_cast<int32_t>(penalties->size());
  }
}

void PlanExpertSlots(const Routing& r, int64_t T, ExpertRange local, ExpertSlots* plan) {
  const int64_t k = r.k, slots = T * k, experts = local.end - local.begin;
  ExpertSlots& out = *plan;
  out.count.assign(experts, 0);
  out.offset.assign(experts + 1, 0);
  for (int64_t i = 0; i < slots; ++i) {
    if (local.Contains(r.ids[i])) ++out.count[r.ids[i] - local.begin];
  }
  for (int64_t e = 0; e < experts; ++e) out.offset[e + 1] = out.offset[e] + out.count[e];
  out.small.clear();
  out.large.clear();
  for (int64_t e = 0; e < experts; ++e) {
    if (out.count[e] == 0) continue;
    if (out.count[e] > cuda::kGroupedGemvMaxRows) {
      out.large.push_back(e);
    } else {
      out.small.push_back({static_cast<int32_t>(e), static_cast<int32_t>(out.offset[e]),
                           static_cast<int32_t>(out.count[e]), 0});
    }
  }
  out.gather.resize(out.offset[experts]);
  std::vector<int32_t>& row_of = out.row_of;
  row_of.assign(slots, -1);
  std::vector<int64_t>& next = out.next;
  next.assign(out.offset.begin(), out.offset.end() - 1);
  for (int64_t i = 0; i < slots; ++i) {
    if (!local.Contains(r.ids[i])) continue;
    const int64_t row = next[r.ids[i] - local.begin]++;
    out.gather[row] = static_cast<int32_t>(i / k);
    row_of[i] = static_cast<int32_t>(row);
  }
  out.slot_rows.resize(slots);
  out.slot_weights.resize(slots);
  std::vector<int64_t>& order = out.order;
  order.resize(k);
  for (int64_t t = 0; t < T; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return r.ids[t * k + a] < r.ids[t * k + b]; });
    for (int64_t j = 0; j < k; ++j) {
      out.slot_rows[t * k + j] = row_of[t * k + order[j]];
      out.slot_weights[t * k + j] = r.weights[t * k + order[j]];
    }
  }
}

}  // namespace shoal::worker
