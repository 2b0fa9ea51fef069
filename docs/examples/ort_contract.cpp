// Run an arssr-rt model bundle from C++ with onnxruntime, following docs/onnx-contract.md.
//
// Build (Debian 13: apt-get install libonnxruntime-dev; or the release tarball's include/ and lib/):
//   g++ -std=c++17 -O2 ort_contract.cpp -I/usr/include/onnxruntime -lonnxruntime -o ort_contract
// Use:
//   ./ort_contract BUNDLE_DIR D H W SCALE [OUT.raw]
// runs a synthetic [0,1] volume (voxel i = (i % 97) / 96 in C order), prints the output mean and
// optionally writes the output as raw float32 (C order) for comparison with the Python runtime.
//
// The decoder's "coords" input depends on the bundle's coordinate mode, model.json "spec":
// {"coords": ...} ("global" when absent), read here with a plain text search:
//   global (published ArSSR): c = -1 + (2j + 1) / H        (output voxel centre over the whole axis)
//   phase:                    c = 2 * (p - floor(p + 1e-4)) - 1, p = (j + 0.5) * h / H - 0.5
//                             (where the point sits inside its trilinear cell)
// per axis (h input, H output voxels, j the output index), computed in double, rounded once to float.
//
// The input must already be normalised to [0, 1] (min-max) and in the bundle's axis order
// (model.json "axis_order": xyz = NIfTI (i,j,k) arrays, zyx = the reverse); the output is in
// [0, 1]-space too: restore with out * (max - min) + min. Output geometry (FOV-preserving
// grid, spacing = old * h / H) is the caller's job; see docs/onnx-contract.md.
// The whole volume goes through the encoder at once here; real products tile it with a halo of
// receptive_radius + 1 voxels (model.json) to bound memory.

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

enum class CoordMode { Global, Phase };

constexpr double kPhaseEps = 1e-4;  // a point on a cell edge (up to rounding) gets phase -1

// model.json "spec": {"coords": "global" | "phase"}; absent means "global". A text search is
// enough: "coords" is a key only there (the "onnx" section lists it as a value, never before ':').
std::optional<CoordMode> read_coord_mode(const std::string& model_json) {
  std::ifstream in(model_json);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", model_json.c_str());
    return std::nullopt;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const std::string key = "\"coords\"";
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
    size_t k = text.find_first_not_of(" \t\r\n", at + key.size());
    if (k == std::string::npos || text[k] != ':') continue;
    k = text.find_first_not_of(" \t\r\n", k + 1);
    if (k != std::string::npos && text.compare(k, 8, "\"global\"") == 0) return CoordMode::Global;
    if (k != std::string::npos && text.compare(k, 7, "\"phase\"") == 0) return CoordMode::Phase;
    std::fprintf(stderr, "%s: unknown spec.coords (expected \"global\" or \"phase\")\n", model_json.c_str());
    return std::nullopt;
  }
  return CoordMode::Global;
}

// One output voxel j of an axis (h input voxels -> H output voxels): its trilinear corners in
// the input, exactly grid_sample(bilinear, padding zeros, align_corners=false), and its decoder
// coordinate. Double math, rounded once to float, as the Python runtime.
struct AxisPoint {
  int64_t lo;    // lower corner floor(p); the upper one is lo + 1
  float w_lo;    // 1 - (p - lo), 0 when the corner is outside the volume
  float w_hi;    // p - lo, 0 when the corner is outside the volume
  float coord;   // the decoder's coordinate for this axis
};

std::vector<AxisPoint> axis_points(int64_t h, int64_t H, CoordMode mode) {
  std::vector<AxisPoint> points(static_cast<size_t>(H));
  for (int64_t j = 0; j < H; ++j) {
    const double p = (static_cast<double>(j) + 0.5) * static_cast<double>(h) / static_cast<double>(H) - 0.5;  // input index
    const double fl = std::floor(p);
    const double t = p - fl;
    AxisPoint& pt = points[static_cast<size_t>(j)];
    pt.lo = static_cast<int64_t>(fl);
    pt.w_lo = (pt.lo >= 0 && pt.lo < h) ? static_cast<float>(1.0 - t) : 0.0f;
    pt.w_hi = (pt.lo + 1 >= 0 && pt.lo + 1 < h) ? static_cast<float>(t) : 0.0f;
    pt.coord = mode == CoordMode::Phase
                   ? static_cast<float>(2.0 * (p - std::floor(p + kPhaseEps)) - 1.0)
                   : static_cast<float>(-1.0 + (2.0 * static_cast<double>(j) + 1.0) / static_cast<double>(H));
  }
  return points;
}

// Trilinear sample of features [F, D, H, W] (C order) at one output point (its three axis
// points); corners outside the volume weigh 0.
void sample_features(const float* feat, int64_t channels, const std::array<int64_t, 3>& dims,
                     const std::array<const AxisPoint*, 3>& pt, float* out) {
  std::fill(out, out + channels, 0.0f);
  const int64_t volume = dims[0] * dims[1] * dims[2];
  for (int corner = 0; corner < 8; ++corner) {
    float weight = 1.0f;
    int64_t offset = 0;
    for (int a = 0; a < 3; ++a) {
      const int bit = (corner >> (2 - a)) & 1;
      weight *= bit ? pt[a]->w_hi : pt[a]->w_lo;
      offset = offset * dims[a] + std::clamp<int64_t>(pt[a]->lo + bit, 0, dims[a] - 1);  // weight 0 when clamped
    }
    if (weight == 0.0f) continue;
    for (int64_t f = 0; f < channels; ++f) out[f] += weight * feat[f * volume + offset];
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6 && argc != 7) {
    std::fprintf(stderr, "usage: %s BUNDLE_DIR D H W SCALE [OUT.raw]\n", argv[0]);
    return 2;
  }
  const std::string bundle = argv[1];
  const std::array<int64_t, 3> in_dims{std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4])};
  const double scale = std::atof(argv[5]);
  std::array<int64_t, 3> out_dims{};
  for (int a = 0; a < 3; ++a) out_dims[a] = static_cast<int64_t>(std::llround(in_dims[a] * scale));  // H = round(h * s)
  const std::optional<CoordMode> mode = read_coord_mode(bundle + "/model.json");
  if (!mode) return 2;

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "arssr-rt");
  Ort::SessionOptions options;
  options.SetIntraOpNumThreads(1);
  options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  Ort::Session encoder(env, (bundle + "/encoder.onnx").c_str(), options);
  Ort::Session decoder(env, (bundle + "/decoder.onnx").c_str(), options);
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);

  // encoder: "lr" float32 [1, 1, D, H, W] -> "features" float32 [1, F, rD, rH, rW]
  std::vector<float> lr(static_cast<size_t>(in_dims[0] * in_dims[1] * in_dims[2]));
  for (size_t i = 0; i < lr.size(); ++i) lr[i] = static_cast<float>(i % 97) / 96.0f;  // stand-in for a normalised volume
  const std::array<int64_t, 5> lr_shape{1, 1, in_dims[0], in_dims[1], in_dims[2]};
  Ort::Value lr_tensor = Ort::Value::CreateTensor<float>(cpu, lr.data(), lr.size(), lr_shape.data(), lr_shape.size());
  const char* enc_inputs[] = {"lr"};
  const char* enc_outputs[] = {"features"};
  std::vector<Ort::Value> enc_result = encoder.Run(Ort::RunOptions{nullptr}, enc_inputs, &lr_tensor, 1, enc_outputs, 1);
  const float* features = enc_result[0].GetTensorData<float>();
  const std::vector<int64_t> feature_shape = enc_result[0].GetTensorTypeAndShapeInfo().GetShape();
  const int64_t channels = feature_shape[1];
  // The feature map covers the LR field of view on its own grid: r times finer than the input
  // when model.json spec.feature_scale = r (1 for published models). Sample it, and derive the
  // decoder coords, on THAT grid: h = the feature map's size along each axis.
  const std::array<int64_t, 3> grid_dims{feature_shape[2], feature_shape[3], feature_shape[4]};
  std::array<std::vector<AxisPoint>, 3> axes;
  for (int a = 0; a < 3; ++a) axes[a] = axis_points(grid_dims[a], out_dims[a], *mode);

  // decoder: "features" float32 [N, F] + "coords" float32 [N, 3] -> "intensity" float32 [N, 1], in chunks
  const int64_t total = out_dims[0] * out_dims[1] * out_dims[2];
  const int64_t chunk = 65536;
  std::vector<float> output(static_cast<size_t>(total));
  std::vector<float> sampled, coords;
  const char* dec_inputs[] = {"features", "coords"};
  const char* dec_outputs[] = {"intensity"};
  for (int64_t start = 0; start < total; start += chunk) {
    const int64_t n = std::min(chunk, total - start);
    sampled.resize(static_cast<size_t>(n * channels));
    coords.resize(static_cast<size_t>(n * 3));
    for (int64_t p = 0; p < n; ++p) {
      const int64_t flat = start + p;  // C order over the output grid
      const int64_t idx[3] = {flat / (out_dims[1] * out_dims[2]), (flat / out_dims[2]) % out_dims[1], flat % out_dims[2]};
      const std::array<const AxisPoint*, 3> pt{&axes[0][idx[0]], &axes[1][idx[1]], &axes[2][idx[2]]};
      for (int a = 0; a < 3; ++a) coords[p * 3 + a] = pt[a]->coord;
      sample_features(features, channels, grid_dims, pt, &sampled[p * channels]);
    }
    const std::array<int64_t, 2> f_shape{n, channels};
    const std::array<int64_t, 2> c_shape{n, 3};
    std::array<Ort::Value, 2> inputs{
        Ort::Value::CreateTensor<float>(cpu, sampled.data(), sampled.size(), f_shape.data(), f_shape.size()),
        Ort::Value::CreateTensor<float>(cpu, coords.data(), coords.size(), c_shape.data(), c_shape.size())};
    std::vector<Ort::Value> result = decoder.Run(Ort::RunOptions{nullptr}, dec_inputs, inputs.data(), inputs.size(), dec_outputs, 1);
    const float* intensity = result[0].GetTensorData<float>();
    std::copy(intensity, intensity + n, output.begin() + start);
  }

  if (argc == 7) {
    std::FILE* raw = std::fopen(argv[6], "wb");
    if (raw == nullptr || std::fwrite(output.data(), sizeof(float), output.size(), raw) != output.size()) {
      std::fprintf(stderr, "cannot write %s\n", argv[6]);
      return 1;
    }
    std::fclose(raw);
  }
  double sum = 0.0;
  for (float v : output) sum += v;
  std::printf("output %lld x %lld x %lld (%s coords), mean %.6f\n", static_cast<long long>(out_dims[0]), static_cast<long long>(out_dims[1]),
              static_cast<long long>(out_dims[2]), *mode == CoordMode::Phase ? "phase" : "global", sum / static_cast<double>(total));
  return 0;
}
