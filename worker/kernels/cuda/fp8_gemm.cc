#include "worker/kernels/cuda/fp8_gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/dl_library.h"
#include "worker/kernels/cuda/gemm.h"

namespace shoal::worker::cuda {
namespace {

struct LtApi {
  decltype(&cublasLtCreate) create = nullptr;
  decltype(&cublasLtDestroy) destroy = nullptr;
  decltype(&cublasLtMatmulDescCreate) desc_create = nullptr;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set = nullptr;
  decltype(&cublasLtMatrixLayoutCreate) layout_create = nullptr;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create = nullptr;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic = nullptr;
  decltype(&cublasLtMatmul) matmul = nullptr;
};

struct LoadedLt {
  LtApi api;
  std::string error;  // empty when loaded
};

const LoadedLt& Lt() {
  static const LoadedLt* loaded = [] {
    auto* l = new LoadedLt();  // never freed: cuBLASLt stays loaded for the process
    void* h = OpenLibrary({"libcublasLt.so.13", "libcublasLt.so"}, "cuBLASLt", &l->error);
    if (h == nullptr) return l;
    const char* what = "cuBLASLt";
    ResolveSymbol(h, "cublasLtCreate", what, &l->api.create, &l->error);
    ResolveSymbol(h, "cublasLtDestroy", what, &l->api.destroy, &l->error);
    ResolveSymbol(h, "cublasLtMatmulDescCreate", what, &l->api.desc_create, &l->error);
    ResolveSymbol(h, "cublasLtMatmulDescDestroy", what, &l->api.desc_destroy, &l->error);
    ResolveSymbol(h, "cublasLtMatmulDescSetAttribute", what, &l->api.desc_set, &l->error);
    ResolveSymbol(h, "cublasLtMatrixLayoutCreate", what, &l->api.layout_create, &l->error);
    ResolveSymbol(h, "cublasLtMatrixLayoutDestroy", what, &l->api.layout_destroy, &l->error);
    ResolveSymbol(h, "cublasLtMatmulPreferenceCreate", what, &l->api.pref_create, &l->error);
    ResolveSymbol(h, "cublasLtMatmulPreferenceDestroy", what, &l->api.pref_destroy, &l->error);
    ResolveSymbol(h, "cublasLtMatmulPreferenceSetAttribute", what, &l->api.pref_set, &l->error);
    ResolveSymbol(h, "cublasLtMatmulAlgoGetHeuristic", what, &l->api.heuristic, &l->error);
    ResolveSymbol(h, "cublasLtMatmul", what, &l->api.matmul, &l->error);
    return l;
  }();
  return *loaded;
}

const LtApi& Api() { return Lt().api; }  // callers have checked Lt().error

constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's advice for Hopper
constexpr size_t kAlign = 256;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

cudaDataType_t OutputType(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: DieOnCudaError("FP8 GEMM output type", DTypeName(t).data(), __FILE__, __LINE__);
  }
}

// Where Run's pieces lie in its scratch.
struct ScratchParts {
  size_t x_scales = 0, w_scales = 0, bytes = 0;  // offsets; x codes at 0
  int64_t x_ld = 0;
};

ScratchParts Parts(const Fp8GemmLayouts& l, int64_t T, int64_t rows, int64_t cols) {
  ScratchParts p;
  const int64_t blocks = Fp8ScaleCols(cols);
  p.x_ld = l.pad_to_4 ? (T + 3) / 4 * 4 : T;
  p.x_scales = RoundUp(static_cast<size_t>(T * cols), kAlign);
  const size_t x_scale_floats = l.activations_by_block ? blocks * p.x_ld : T * blocks;
  p.w_scales = RoundUp(p.x_scales + x_scale_floats * sizeof(float), kAlign);
  p.bytes = p.w_scales + (l.weights_by_block ? static_cast<size_t>(blocks * rows) * sizeof(float) : 0);
  return p;
}

}  // namespace

std::string Fp8GemmLayouts::Describe() const {
  std::string s = std::string("weight scales ") + (weights_by_block ? "by block" : "by row") + ", activation scales " +
                  (activations_by_block ? "by block" : "by row");
  if (activations_by_block) s += pad_to_4 ? " (rows padded to 4)" : " (rows unpadded)";
  return s;
}

struct Fp8BlockGemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
  ~Plan() {
    if (desc != nullptr) Api().desc_destroy(desc);
    for (cublasLtMatrixLayout_t l : {a, b, c}) {
      if (l != nullptr) Api().layout_destroy(l);
    }
  }
};

Fp8BlockGemm::Fp8BlockGemm(cudaStream_t stream, Fp8GemmLayouts layouts, void* handle)
    : stream_(stream), layouts_(layouts), handle_(handle), workspace_(kWorkspaceBytes) {}

Fp8BlockGemm::~Fp8BlockGemm() {
  plans_.clear();
  if (handle_ != nullptr) Api().destroy(static_cast<cublasLtHandle_t>(handle_));
}

size_t Fp8BlockGemm::ScratchBytes(int64_t T, int64_t rows, int64_t cols) const {
  return Parts(layouts_, T, rows, cols).bytes;
}

// cuBLASLt is column-major: the row-major y[T, out] is yᵀ[out, T] = op(A) · B with A the
// weights' storage read as [in, out] and transposed, B the quantized x read as [in, T];
// both scale tables are one f32 per 128 of the `in` (inner) dimension.
Fp8BlockGemm::Plan* Fp8BlockGemm::PlanFor(int64_t T, int64_t rows, int64_t cols, DType y_type, bool accumulate) {
  auto key = std::make_tuple(T, rows, cols, y_type, accumulate);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second->ok ? it->second.get() : nullptr;
  if (plans_.size() >= kMaxPlans) plans_.clear();  // prompt lengths vary without end; plans are cheap to remake
  auto plan = std::make_unique<Plan>();
  Plan& p = *plan;
  const LtApi& api = Api();
  bool ok = api.desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
  auto set = [&](cublasLtMatmulDescAttributes_t attr, const auto& value) {
    ok = ok && api.desc_set(p.desc, attr, &value, sizeof(value)) == CUBLAS_STATUS_SUCCESS;
  };
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const void* any_scales = workspace_.data();  // the real tables are set per call
  set(CUBLASLT_MATMUL_DESC_TRANSA, ta);
  set(CUBLASLT_MATMUL_DESC_TRANSB, tb);
  set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, mode);
  set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, mode);
  set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, any_scales);
  set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, any_scales);
  ok = ok && api.layout_create(&p.a, CUDA_R_8F_E4M3, cols, rows, cols) == CUBLAS_STATUS_SUCCESS;
  ok = ok && api.layout_create(&p.b, CUDA_R_8F_E4M3, cols, T, cols) == CUBLAS_STATUS_SUCCESS;
  ok = ok && api.layout_create(&p.c, OutputType(y_type), rows, T, rows) == CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulPreference_t pref = nullptr;
  ok = ok && api.pref_create(&pref) == CUBLAS_STATUS_SUCCESS;
  const size_t workspace = workspace_.bytes();
  ok = ok && api.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)) ==
                 CUBLAS_STATUS_SUCCESS;
  // Callers pass row views (an expert's rows of a stack, its rows of the gathered
  // activations): 16-byte aligned, not necessarily 256 as cuBLASLt assumes by default.
  const uint32_t alignment = 16;
  for (const cublasLtMatmulPreferenceAttributes_t attr :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    ok = ok && api.pref_set(pref, attr, &alignment, sizeof(alignment)) == CUBLAS_STATUS_SUCCESS;
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  ok = ok && api.heuristic(static_cast<cublasLtHandle_t>(handle_), p.desc, p.a, p.b, p.c, p.c, pref, 1, &result,
                           &found) == CUBLAS_STATUS_SUCCESS;
  if (pref != nullptr) api.pref_destroy(pref);
  p.ok = ok && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  p.algo = result.algo;
  (void)accumulate;  // beta is a per-call value; the key keeps in-place and fresh outputs apart
  Plan* out = p.ok ? plan.get() : nullptr;
  plans_.emplace(key, std::move(plan));
  return out;
}

bool Fp8BlockGemm::Supports(int64_t T, int64_t rows, int64_t cols, DType y_type, bool accumulate) {
  if (T <= 0 || rows % 16 != 0 || cols % kFp8ScaleBlock != 0) return false;
  return PlanFor(T, rows, cols, y_type, accumulate) != nullptr;
}

void Fp8BlockGemm::Run(const Fp8Matrix& w, DType x_type, const void* x, int64_t T, DType y_type, void* y,
                       bool accumulate, void* scratch) {
  SHOAL_CUBLAS_CHECK(static_cast<cublasStatus_t>(Enqueue(w, x_type, x, T, y_type, y, accumulate, scratch)));
}

int Fp8BlockGemm::Enqueue(const Fp8Matrix& w, DType x_type, const void* x, int64_t T, DType y_type, void* y,
                          bool accumulate, void* scratch) {
  Plan* p = PlanFor(T, w.rows, w.cols, y_type, accumulate);
  if (p == nullptr) DieOnCudaError("Fp8BlockGemm::Run", "a shape Supports() refuses", __FILE__, __LINE__);
  const ScratchParts parts = Parts(layouts_, T, w.rows, w.cols);
  auto* base = static_cast<uint8_t*>(scratch);
  uint8_t* x_codes = base;
  auto* x_scales = reinterpret_cast<float*>(base + parts.x_scales);
  Fp8QuantizeRows(stream_, x_type, x, T, w.cols, x_codes, x_scales,
                  Fp8ScaleLayout{layouts_.activations_by_block, parts.x_ld});
  const float* w_scales = w.scales;
  if (layouts_.weights_by_block) {
    auto* by_block = reinterpret_cast<float*>(base + parts.w_scales);
    Fp8ScalesByBlock(stream_, w.scales, w.rows, Fp8ScaleCols(w.cols), by_block, w.rows);
    w_scales = by_block;
  }
  const LtApi& api = Api();
  cublasStatus_t st = api.desc_set(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scales, sizeof(w_scales));
  const float* xs = x_scales;
  if (st == CUBLAS_STATUS_SUCCESS) st = api.desc_set(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof(xs));
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = api.matmul(static_cast<cublasLtHandle_t>(handle_), p->desc, &alpha, w.codes, p->a, x_codes, p->b, &beta, y,
                    p->c, y, p->c, &p->algo, workspace_.data(), workspace_.bytes(), stream_);
  }
  return st;
}

std::unique_ptr<Fp8BlockGemm> Fp8BlockGemm::Create(cudaStream_t stream, CublasGemm* reference, std::string* why_not) {
  if (!Lt().error.empty()) {
    *why_not = Lt().error;
    return nullptr;
  }
  int device = 0, major = 0, minor = 0;
  SHOAL_CUDA_CHECK(cudaGetDevice(&device));
  SHOAL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  SHOAL_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major != 9) {  // cuBLASLt's 128-element FP32 block scaling is Hopper's
    *why_not = "cuBLASLt's 128-block-scaled FP8 GEMM is Hopper's (sm_90); this GPU is sm_" + std::to_string(major) +
               std::to_string(minor);
    return nullptr;
  }
  cublasLtHandle_t handle = nullptr;
  if (const cublasStatus_t st = Api().create(&handle); st != CUBLAS_STATUS_SUCCESS) {
    *why_not = std::string("cublasLtCreate: ") + CublasStatusName(st);
    return nullptr;
  }

  // The probe: 256 x 384 weights (3 scale blocks a row) times 37 rows (odd, so padded and
  // unpadded block-by-block tables differ), scales that differ from block to block and
  // row to row, so a table read in the wrong layout gives a wrong product.
  const int64_t rows = 256, cols = 384, T = 37, blocks = Fp8ScaleCols(cols);
  std::mt19937 rng(20261202);
  std::vector<uint8_t> codes(rows * cols);
  for (uint8_t& c : codes) {
    do {
      c = static_cast<uint8_t>(rng());
    } while ((c & 0x7f) == 0x7f || (c & 0x7f) > 0x70);  // no NaN, nothing near the top of the range
  }
  std::vector<float> scales(rows * blocks), x(T * cols);
  for (float& s : scales) s = std::ldexp(1.0f, static_cast<int>(rng() % 9) - 12);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < cols; ++c) {
      const float u = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;
      x[t * cols + c] = std::ldexp(u, static_cast<int>((t * 3 + c / kFp8ScaleBlock) % 7) - 3);
    }
  }
  DeviceBuffer d_codes(codes.size()), d_scales(scales.size() * 4), d_x(x.size() * 4);
  // On the stream, which may not order itself after the legacy stream's copies.
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(d_codes.data(), codes.data(), codes.size(), cudaMemcpyHostToDevice, stream));
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(d_scales.data(), scales.data(), scales.size() * 4, cudaMemcpyHostToDevice, stream));
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(d_x.data(), x.data(), x.size() * 4, cudaMemcpyHostToDevice, stream));
  const Fp8Matrix w{d_codes.as<uint8_t>(), d_scales.as<float>(), rows, cols};

  // The exact product of the same quantized x: both operands widened to f32, cuBLAS.
  DeviceBuffer xq_codes(T * cols), xq_scales(T * blocks * 4), x_wide(T * cols * 4), w_wide(rows * cols * 4),
      y_ref(T * rows * 4), y(T * rows * 4);
  Fp8QuantizeRows(stream, DType::kF32, d_x.data(), T, cols, xq_codes.as<uint8_t>(), xq_scales.as<float>(),
                  Fp8ScaleLayout{});
  Fp8Dequantize(stream, Fp8Matrix{xq_codes.as<uint8_t>(), xq_scales.as<float>(), T, cols}, DType::kF32,
                x_wide.data());
  Fp8Dequantize(stream, w, DType::kF32, w_wide.data());
  reference->Run(DType::kF32, x_wide.data(), w_wide.data(), T, cols, rows, DType::kF32, y_ref.data(), false);
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> want(T * rows), got(T * rows);
  y_ref.CopyToHost(want.data(), want.size() * 4);
  double largest = 0;
  for (float v : want) largest = std::max(largest, std::fabs(static_cast<double>(v)));
  if (!(largest > 0)) DieOnCudaError("Fp8BlockGemm probe", "the reference product is zero", __FILE__, __LINE__);

  std::unique_ptr<Fp8BlockGemm> gemm(new Fp8BlockGemm(stream, Fp8GemmLayouts{}, handle));
  std::string tried;
  // The documented layout first (both tables block by block, as PyTorch's 1x128 scales
  // are: stride 1 along the rows), then the others.
  const Fp8GemmLayouts candidates[] = {{true, true, false}, {true, true, true},  {false, true, false},
                                       {false, true, true}, {true, false, false}, {false, false, false}};
  for (const Fp8GemmLayouts& layouts : candidates) {
    gemm->layouts_ = layouts;
    gemm->plans_.clear();
    tried += (tried.empty() ? "" : "; ") + gemm->layouts_.Describe() + ": ";
    if (!gemm->Supports(T, rows, cols, DType::kF32, false)) {
      tried += "no kernel";
      continue;
    }
    DeviceBuffer scratch(gemm->ScratchBytes(T, rows, cols));
    const int st = gemm->Enqueue(w, DType::kF32, d_x.data(), T, DType::kF32, y.data(), false, scratch.data());
    SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (st != CUBLAS_STATUS_SUCCESS) {
      tried += std::string("cublasLtMatmul: ") + CublasStatusName(static_cast<cublasStatus_t>(st));
      continue;
    }
    y.CopyToHost(got.data(), got.size() * 4);
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
      worst = std::isnan(e) ? INFINITY : std::max(worst, e);
    }
    // The same quantized operands on both sides: only the summation order differs.
    if (worst <= 5e-3 * largest) return gemm;
    tried += "worst error " + std::to_string(worst / largest) + " of the largest value";
  }
  *why_not = "no scale layout gave the exact product (" + tried + ")";
  return nullptr;
}

}  // namespace shoal::worker::cuda
