// Run an arssr-rt model bundle from C++ with onnxruntime, following docs/onnx-contract.md.
//
// Build (Debian 13: apt-get install libonnxruntime-dev; or the release tarball's include/ and lib/):
//   g++ -std=c++17 -O2 ort_contract.cpp -I/usr/include/onnxruntime -lonnxruntime -o ort_contract
// Use:
//   ./ort_contract BUNDLE_DIR D H W SCALE [OUT.raw]
// runs a synthetic [0,1] volume (voxel i = (i % 97) / 96 in C order), prints the output mean and
// optionally writes the output as raw float32 (C order) for comparison with the Python runtime.
//
// A residual bundle (model.json spec.base "lanczos3" | "lanczos8") adds the separable Lanczos
// interpolation of the normalised input to the decoder's output (arssr_contract.h); any other
// base is refused.
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
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "arssr_contract.h"  // the contract's arithmetic: spec fields, coords, sampling, residual base

using arssr::AxisPoint;
using arssr::CoordMode;

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
  const std::optional<std::string> model_json = arssr::read_text(bundle + "/model.json");
  if (!model_json) {
    std::fprintf(stderr, "cannot read %s/model.json\n", bundle.c_str());
    return 2;
  }
  const std::optional<CoordMode> mode = arssr::coord_mode(*model_json);
  const std::optional<int> lobes = arssr::base_lobes(*model_json);  // residual bundles add a Lanczos base
  if (!mode || !lobes) return 2;

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
  for (int a = 0; a < 3; ++a) axes[a] = arssr::axis_points(grid_dims[a], out_dims[a], *mode);

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
      arssr::sample_features(features, channels, grid_dims, pt, &sampled[p * channels]);
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

  if (*lobes > 0) arssr::add_lanczos_base(lr, in_dims, out_dims, *lobes, output);  // on the input grid, not the feature grid

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
  std::printf("output %lld x %lld x %lld (%s coords, base lobes %d), mean %.6f\n", static_cast<long long>(out_dims[0]),
              static_cast<long long>(out_dims[1]), static_cast<long long>(out_dims[2]), *mode == CoordMode::Phase ? "phase" : "global",
              *lobes, sum / static_cast<double>(total));
  return 0;
}
