// Test harness for docs/examples/arssr_contract.h (no onnxruntime needed):
//   contract_harness base LOBES D H W D2 H2 W2 IN.raw OUT.raw   the Lanczos base, float32 C order
//   contract_harness spec MODEL.json                            prints "coords=<mode> lobes=<n>" or exits 2
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../../docs/examples/arssr_contract.h"

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  if (what == "spec" && argc == 3) {
    const auto text = arssr::read_text(argv[2]);
    if (!text) return 2;
    const auto mode = arssr::coord_mode(*text);
    const auto lobes = arssr::base_lobes(*text);
    if (!mode || !lobes) return 2;
    std::printf("coords=%s lobes=%d\n", *mode == arssr::CoordMode::Phase ? "phase" : "global", *lobes);
    return 0;
  }
  if (what == "base" && argc == 11) {
    const int lobes = std::atoi(argv[2]);
    const std::array<int64_t, 3> in{std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5])};
    const std::array<int64_t, 3> out{std::atoll(argv[6]), std::atoll(argv[7]), std::atoll(argv[8])};
    std::vector<float> lr(static_cast<size_t>(in[0] * in[1] * in[2]));
    std::FILE* f = std::fopen(argv[9], "rb");
    if (f == nullptr || std::fread(lr.data(), sizeof(float), lr.size(), f) != lr.size()) return 1;
    std::fclose(f);
    std::vector<float> base(static_cast<size_t>(out[0] * out[1] * out[2]), 0.0f);
    arssr::add_lanczos_base(lr, in, out, lobes, base);
    std::FILE* g = std::fopen(argv[10], "wb");
    if (g == nullptr || std::fwrite(base.data(), sizeof(float), base.size(), g) != base.size()) return 1;
    std::fclose(g);
    return 0;
  }
  std::fprintf(stderr, "usage: contract_harness base|spec ...\n");
  return 2;
}
