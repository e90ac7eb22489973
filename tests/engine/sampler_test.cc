#include "worker/engine/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <map>
#include <numeric>

namespace shoal::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::FloatNear;
using ::testing::Pointwise;

std::vector<float> LogitsOf(std::vector<double> probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

std::vector<int> Kept(const std::vector<float>& probs) {
  std::vector<int> k;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] > 0) k.push_back(static_cast<int>(i));
  }
  return k;
}

TEST(Sampler, GreedyTakesTheArgmaxLowestIdOnTies) {
  std::vector<float> l{0.5f, 3.0f, -1.0f, 3.0f};
  std::mt19937_64 rng(1);
  SampleResult r = Sampler::Sample(l, SamplingOptions{}, {}, 0, &rng, false, 0);
  EXPECT_EQ(r.token_id, 1);
}

TEST(Sampler, GreedyDoesNotDrawFromTheRng) {
  std::vector<float> l{0.5f, 3.0f};
  std::mt19937_64 rng(7), fresh(7);
  Sampler::Sample(l, SamplingOptions{}, {}, 0, &rng, false, 0);
  EXPECT_EQ(rng(), fresh());
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  std::vector<float> l{2.0f, -2.0f, 1.0f, 4.0f};
  SamplingOptions o;
  o.repetition_penalty = 2.0f;
  std::vector<int32_t> tokens{0, 1, 1, 3};  // prompt {0, 1}, output {1, 3}
  Sampler::ApplyPenalties(l, o, tokens, 2);
  EXPECT_THAT(l, ElementsAre(1.0f, -4.0f, 1.0f, 2.0f));
}

TEST(Sampler, PresenceAndFrequencyCountOutputTokensOnly) {
  std::vector<float> l{1.0f, 1.0f, 1.0f, 1.0f};
  SamplingOptions o;
  o.presence_penalty = 0.5f;
  o.frequency_penalty = 0.25f;
  std::vector<int32_t> tokens{0, 3, 1, 1, 2};  // prompt {0, 3}
  Sampler::ApplyPenalties(l, o, tokens, 2);
  EXPECT_THAT(l, Pointwise(FloatNear(1e-6), std::vector<float>{1.0f, 0.0f, 0.25f, 1.0f}));
}

TEST(Sampler, RepetitionPenaltyTurnsGreedyAway) {
  std::vector<float> l{2.0f, 1.5f};
  SamplingOptions o;
  o.repetition_penalty = 1.5f;
  std::vector<int32_t> tokens{0};
  std::mt19937_64 rng(1);
  EXPECT_EQ(Sampler::Sample(l, o, tokens, 1, &rng, false, 0).token_id, 1);
}

TEST(Sampler, TopKKeepsTheKMostLikely) {
  auto p = Sampler::TruncatedProbs(LogitsOf({0.1, 0.4, 0.2, 0.3}), 2, 1.0f, 0.0f);
  EXPECT_THAT(Kept(p), ElementsAre(1, 3));
  EXPECT_NEAR(p[1], 4.0 / 7, 1e-6);
  EXPECT_NEAR(p[3], 3.0 / 7, 1e-6);
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  auto l = LogitsOf({0.15, 0.5, 0.05, 0.3});
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 0, 0.75f, 0.0f)), ElementsAre(1, 3));
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 0, 0.85f, 0.0f)), ElementsAre(0, 1, 3));
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 0, 0.4f, 0.0f)), ElementsAre(1));
  auto p = Sampler::TruncatedProbs(l, 0, 0.75f, 0.0f);
  EXPECT_NEAR(p[1], 0.625, 1e-6);
}

TEST(Sampler, TopPAppliesToWhatTopKKept) {
  // top-k 3 keeps {0.5, 0.3, 0.15}: renormalized {0.526, 0.316, 0.158}; p = 0.8 needs all
  // three of them, p = 0.8 of the full distribution would not.
  auto l = LogitsOf({0.15, 0.5, 0.05, 0.3});
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 3, 0.85f, 0.0f)), ElementsAre(0, 1, 3));
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 3, 0.8f, 0.0f)), ElementsAre(1, 3));
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheMax) {
  auto l = LogitsOf({0.15, 0.5, 0.05, 0.3});
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 0, 1.0f, 0.2f)), ElementsAre(0, 1, 3));
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 0, 1.0f, 0.5f)), ElementsAre(1, 3));
  EXPECT_THAT(Kept(Sampler::TruncatedProbs(l, 0, 1.0f, 1.0f)), ElementsAre(1));
}

TEST(Sampler, TopPOverALargeVocabularyMatchesAFullSort) {
  std::mt19937_64 gen(3);
  std::vector<float> l(5000);
  for (float& x : l) x = static_cast<float>(Sampler::Uniform(&gen) * 6.0);
  for (float top_p : {0.1f, 0.5f, 0.9f, 0.99f}) {
    auto p = Sampler::TruncatedProbs(l, 0, top_p, 0.0f);
    auto full = Sampler::TruncatedProbs(l, 0, 1.0f, 0.0f);
    std::vector<int> order(l.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return full[a] > full[b]; });
    double cum = 0;
    size_t n = 0;
    while (cum < top_p) cum += full[order[n++]];
    EXPECT_EQ(Kept(p).size(), n) << "top_p " << top_p;
    for (size_t i = 0; i < n; ++i) EXPECT_GT(p[order[i]], 0.0f);
  }
}

std::map<int32_t, double> Frequencies(std::vector<float> logits, SamplingOptions o, int draws,
                                      uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::map<int32_t, double> f;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> l = logits;
    ++f[Sampler::Sample(l, o, {}, 0, &rng, false, 0).token_id];
  }
  for (auto& [k, v] : f) v /= draws;
  return f;
}

TEST(Sampler, TemperatureOneFollowsTheDistribution) {
  SamplingOptions o;
  o.temperature = 1.0f;
  auto f = Frequencies(LogitsOf({0.7, 0.2, 0.1}), o, 20000, 42);
  EXPECT_NEAR(f[0], 0.7, 0.015);
  EXPECT_NEAR(f[1], 0.2, 0.015);
  EXPECT_NEAR(f[2], 0.1, 0.015);
}

// Below kGreedyTemperature the sampler is greedy and takes no draw: 1 / T would overflow
// (1e-40 is subnormal) and turn every logit into an infinity or a NaN.
TEST(Sampler, TemperaturesTooSmallToDivideByAreGreedyAndDrawNothing) {
  for (float t : {1e-40f, 1e-7f, 9e-6f}) {
    SamplingOptions o;
    o.temperature = t;
    EXPECT_TRUE(Sampler::IsGreedy(o)) << t;
    std::mt19937_64 rng(9), untouched(9);
    std::vector<float> l = {0.5f, 3.0f, -1.0f, 3.0f};
    EXPECT_EQ(Sampler::Sample(l, o, {}, 0, &rng, false, 0).token_id, 1) << t;
    EXPECT_EQ(rng(), untouched()) << "a greedy choice consumed a draw";
  }
  SamplingOptions o;
  o.temperature = 1e-5f;
  EXPECT_FALSE(Sampler::IsGreedy(o));
}

TEST(Sampler, LowTemperatureSharpens) {
  SamplingOptions o;
  o.temperature = 0.5f;  // p^2 renormalized: 0.907, 0.074, 0.019
  auto f = Frequencies(LogitsOf({0.7, 0.2, 0.1}), o, 20000, 43);
  EXPECT_NEAR(f[0], 0.49 / 0.54, 0.015);
  EXPECT_NEAR(f[1], 0.04 / 0.54, 0.01);
  EXPECT_NEAR(f[2], 0.01 / 0.54, 0.005);
}

TEST(Sampler, TruncatedTokensAreNeverDrawn) {
  SamplingOptions o;
  o.temperature = 1.5f;
  o.top_k = 2;
  auto f = Frequencies(LogitsOf({0.4, 0.1, 0.35, 0.15}), o, 5000, 44);
  EXPECT_EQ(f.count(1) + f.count(3), 0u);
  EXPECT_GT(f[0], f[2]);
}

TEST(Sampler, SameSeedSameDraws) {
  SamplingOptions o;
  o.temperature = 1.0f;
  std::vector<float> base(64);
  for (size_t i = 0; i < base.size(); ++i) base[i] = static_cast<float>(i % 7) * 0.3f;
  std::mt19937_64 a(99), b(99), c(100);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 50; ++i) {
    std::vector<float> la = base, lb = base, lc = base;
    ta.push_back(Sampler::Sample(la, o, {}, 0, &a, false, 0).token_id);
    tb.push_back(Sampler::Sample(lb, o, {}, 0, &b, false, 0).token_id);
    tc.push_back(Sampler::Sample(lc, o, {}, 0, &c, false, 0).token_id);
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Sampler, LogprobsAreTheLogSoftmaxAfterPenaltiesAndTemperature) {
  SamplingOptions o;
  o.temperature = 2.0f;
  o.top_k = 1;  // truncation does not change the reported logprobs
  std::vector<float> l = LogitsOf({0.5, 0.25, 0.25});
  std::mt19937_64 rng(5);
  SampleResult r = Sampler::Sample(l, o, {}, 0, &rng, true, 2);
  EXPECT_EQ(r.token_id, 0);
  // T = 2: probs proportional to sqrt(p): 0.7071, 0.5, 0.5.
  double z = std::sqrt(0.5) + 2 * std::sqrt(0.25);
  EXPECT_NEAR(r.logprob, std::log(std::sqrt(0.5) / z), 1e-5);
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].first, 0);
  EXPECT_EQ(r.top[1].first, 1);  // tie: lower id first
  EXPECT_NEAR(r.top[1].second, std::log(0.5 / z), 1e-5);
}

TEST(Sampler, GreedyLogprobsUseTheRawDistribution) {
  std::vector<float> l = LogitsOf({0.6, 0.3, 0.1});
  std::mt19937_64 rng(5);
  SampleResult r = Sampler::Sample(l, SamplingOptions{}, {}, 0, &rng, true, 0);
  EXPECT_EQ(r.token_id, 0);
  EXPECT_NEAR(r.logprob, std::log(0.6), 1e-5);
  EXPECT_TRUE(r.top.empty());
}

}  // namespace
}  // namespace shoal::worker
