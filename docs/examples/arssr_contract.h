// The arssr-rt ONNX contract's pure arithmetic (docs/onnx-contract.md), without onnxruntime:
// model.json spec fields, the decoder's coordinates, trilinear feature sampling and the
// residual bundles' windowed-sinc base. ort_contract.cpp runs a bundle with it; the tests
// compile it alone and compare it with the Python runtime (tests/cpp/contract_harness.cpp).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace arssr {

enum class CoordMode { Global, Phase };

constexpr double kPhaseEps = 1e-4;  // a point on a cell edge (up to rounding) gets phase -1

// The string value of "key" in model.json (a plain text search: "coords" and "base" are keys
// only in "spec"; the "onnx" section lists names as values, never before ':'). nullopt when
// the key is absent; "" when its value is not a string.
inline std::optional<std::string> spec_string(const std::string& text, const std::string& name) {
  const std::string key = "\"" + name + "\"";
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
    size_t k = text.find_first_not_of(" \t\r\n", at + key.size());
    if (k == std::string::npos || text[k] != ':') continue;
    k = text.find_first_not_of(" \t\r\n", k + 1);
    if (k == std::string::npos || text[k] != '"') return std::string();
    const size_t end = text.find('"', k + 1);
    return end == std::string::npos ? std::string() : text.substr(k + 1, end - k - 1);
  }
  return std::nullopt;
}

inline std::optional<std::string> read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// spec.coords: "global" (published ArSSR, and when absent) or "phase".
inline std::optional<CoordMode> coord_mode(const std::string& model_json) {
  const std::optional<std::string> value = spec_string(model_json, "coords");
  if (!value || *value == "global") return CoordMode::Global;
  if (*value == "phase") return CoordMode::Phase;
  std::fprintf(stderr, "model.json: unknown spec.coords \"%s\" (expected \"global\" or \"phase\")\n", value->c_str());
  return std::nullopt;
}

// spec.base: 0 lobes for "none" (and when absent), 3 for "lanczos3", 8 for "lanczos8"; an
// unknown base is refused, never ignored (ignoring it would return a wrong image).
inline std::optional<int> base_lobes(const std::string& model_json) {
  const std::optional<std::string> value = spec_string(model_json, "base");
  if (!value || *value == "none") return 0;
  if (*value == "lanczos3") return 3;
  if (*value == "lanczos8") return 8;
  std::fprintf(stderr, "model.json: unknown spec.base \"%s\" (expected none, lanczos3 or lanczos8)\n", value->c_str());
  return std::nullopt;
}

// Continuous input index of output voxel j (h input, H output voxels, FOV-preserving grid).
inline double input_index(int64_t j, int64_t h, int64_t H) {
  return (static_cast<double>(j) + 0.5) * static_cast<double>(h) / static_cast<double>(H) - 0.5;
}

// One output voxel j of an axis: its trilinear corners in the input, exactly
// grid_sample(bilinear, padding zeros, align_corners=false), and its decoder coordinate.
// Double math, rounded once to float, as the Python runtime.
struct AxisPoint {
  int64_t lo;    // lower corner floor(p); the upper one is lo + 1
  float w_lo;    // 1 - (p - lo), 0 when the corner is outside the volume
  float w_hi;    // p - lo, 0 when the corner is outside the volume
  float coord;   // the decoder's coordinate for this axis
};

inline std::vector<AxisPoint> axis_points(int64_t h, int64_t H, CoordMode mode) {
  std::vector<AxisPoint> points(static_cast<size_t>(H));
  for (int64_t j = 0; j < H; ++j) {
    const double p = input_index(j, h, H);
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
inline void sample_features(const float* feat, int64_t channels, const std::array<int64_t, 3>& dims,
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

constexpr double kPi = 3.14159265358979323846;

inline double sinc(double x) {
  if (x == 0.0) return 1.0;
  const double px = kPi * x;
  return std::sin(px) / px;
}

// Lanczos-a taps of output voxel j: indices floor(p) - a + 1 .. floor(p) + a clamped to
// [0, h - 1], weights sinc(t) sinc(t / a) (0 for |t| >= a) normalised to sum 1.
inline void lanczos_taps(int64_t j, int64_t h, int64_t H, int lobes, std::vector<int64_t>& taps, std::vector<double>& weights) {
  const double p = input_index(j, h, H);
  const int64_t first = static_cast<int64_t>(std::floor(p)) - (lobes - 1);
  taps.resize(static_cast<size_t>(2 * lobes));
  weights.resize(static_cast<size_t>(2 * lobes));
  double total = 0.0;
  for (int k = 0; k < 2 * lobes; ++k) {
    const double t = p - static_cast<double>(first + k);
    const double w = std::fabs(t) < lobes ? sinc(t) * sinc(t / lobes) : 0.0;
    taps[k] = std::clamp<int64_t>(first + k, 0, h - 1);
    weights[k] = w;
    total += w;
  }
  for (double& w : weights) w /= total;
}

// output[D', H', W'] (C order) += the separable Lanczos base of lr[D, H, W], one axis at a time
// in double (axis 0, then 1, then 2, as arssr_rt/windowed_sinc.py), rounded once to float.
inline void add_lanczos_base(const std::vector<float>& lr, const std::array<int64_t, 3>& in, const std::array<int64_t, 3>& out,
                             int lobes, std::vector<float>& output) {
  std::vector<double> cur(lr.begin(), lr.end());
  std::array<int64_t, 3> dims = in;
  std::vector<int64_t> taps;
  std::vector<double> weights;
  for (int axis = 0; axis < 3; ++axis) {
    std::array<int64_t, 3> next_dims = dims;
    next_dims[axis] = out[axis];
    const int64_t outer = axis == 0 ? 1 : (axis == 1 ? dims[0] : dims[0] * dims[1]);
    const int64_t inner = axis == 0 ? dims[1] * dims[2] : (axis == 1 ? dims[2] : 1);
    std::vector<double> next(static_cast<size_t>(outer * out[axis] * inner), 0.0);
    for (int64_t j = 0; j < out[axis]; ++j) {
      lanczos_taps(j, dims[axis], out[axis], lobes, taps, weights);
      for (int64_t o = 0; o < outer; ++o) {
        double* dst = &next[static_cast<size_t>((o * out[axis] + j) * inner)];
        for (size_t k = 0; k < taps.size(); ++k) {
          if (weights[k] == 0.0) continue;
          const double* src = &cur[static_cast<size_t>((o * dims[axis] + taps[k]) * inner)];
          for (int64_t i = 0; i < inner; ++i) dst[i] += weights[k] * src[i];
        }
      }
    }
    cur.swap(next);
    dims = next_dims;
  }
  for (size_t i = 0; i < output.size(); ++i) output[i] += static_cast<float>(cur[i]);
}

}  // namespace arssr
