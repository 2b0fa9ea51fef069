// ArSSR trilinear feature sampler: writes the decoder's input rows straight into device memory.
//
// For every point of a chunk of an output box it samples the encoder's feature block
// (F, b0, b1, b2) and writes
//   rows[r * row_stride + c]     = trilinear feature c            (c = 0 .. F-1)
//   coords[r * coord_stride + a] = the decoder coordinate of axis a (a = 0, 1, 2; array axis order):
//     coord_mode 0 "global" (published ArSSR): -1 + (2 * j_a + 1) / H_a
//     coord_mode 1 "phase": 2 * (p_a - floor(p_a + 1e-4)) - 1, the sub-voxel phase of the point
//                           in its trilinear cell (p_a its continuous input index, see below)
// With row_stride = F and coord_stride = 3 these are the decoder's two dense inputs
// ("features" [N, F], "coords" [N, 3]); with row_stride = coord_stride = F + 3 and
// coords = rows + F they form one [N, F + 3] matrix for a decoder that takes the concatenation.
//
// The formula is exactly the CPU path's (arssr_rt/sampling.py), which equals
// torch grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False):
//   output voxel j of an axis with h input and H output voxels sits at the continuous input
//   index p = (j + 0.5) * h / H - 0.5 (global indices); its corners are i0 = floor(p) and
//   i0 + 1 with weights 1 - (p - i0) and p - i0; a corner outside the VOLUME [0, h) weighs 0.
//   The block holds input voxels [offset, offset + b) of each axis.
// Index math and both coordinates are done in double with _rn intrinsics (no FMA contraction),
// exactly as arssr_rt/geometry.py (cell_phase, normalized_centres) in float64; weights and
// coordinates are rounded to float, and the three 1-D blends run in the CPU path's order (axis 0, then 1, then 2) with
// float _rn operations, so a float32 run reproduces the numpy result bit for bit.
//
// Self-contained on purpose (no headers): NVRTC and nvcc compile it as is, and a C++ product
// can compile it into its own binary. Entry points: arssr_sample_<in>_<out>, in/out in
// {f32, f16}; fp16 is handled as raw 16-bit words converted with cvt.rn.

typedef unsigned short half_bits;

__device__ __forceinline__ float load_value(const float* p) { return *p; }

__device__ __forceinline__ float load_value(const half_bits* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));
    return f;
}

__device__ __forceinline__ void store_value(float* p, float v) { *p = v; }

__device__ __forceinline__ void store_value(half_bits* p, float v) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}

struct AxisCorners {
    int lo;      // block index of the lower corner (clamped into the block)
    int hi;      // block index of the upper corner (clamped into the block)
    float w_lo;  // weight of the lower corner (0 outside the volume)
    float w_hi;  // weight of the upper corner (0 outside the volume)
    bool bad;    // a weighted corner lies outside the block: the caller's tiling is wrong
};

__device__ __forceinline__ int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// Continuous input index of output voxel j's centre: ((j + 0.5) * h) / H - 0.5, in that order.
__device__ __forceinline__ double input_index(int j, int h, int H) {
    return __dadd_rn(__ddiv_rn(__dmul_rn(__dadd_rn((double)j, 0.5), (double)h), (double)H), -0.5);
}

// Corners and weights of output voxel j (global) of one axis: h input voxels -> H output voxels,
// block of blen voxels starting at global input index off.
__device__ __forceinline__ AxisCorners axis_corners(int j, int h, int H, int off, int blen) {
    const double p = input_index(j, h, H);
    const double fl = floor(p);
    const double t = __dadd_rn(p, -fl);
    const int i0 = (int)fl;
    const int i1 = i0 + 1;
    AxisCorners c;
    c.w_lo = (i0 >= 0 && i0 < h) ? (float)__dadd_rn(1.0, -t) : 0.0f;
    c.w_hi = (i1 >= 0 && i1 < h) ? (float)t : 0.0f;
    const int l0 = i0 - off;
    const int l1 = i1 - off;
    c.bad = (c.w_lo != 0.0f && (l0 < 0 || l0 >= blen)) || (c.w_hi != 0.0f && (l1 < 0 || l1 >= blen));
    c.lo = clamp_index(l0, blen);
    c.hi = clamp_index(l1, blen);
    return c;
}

__device__ __forceinline__ float blend(float w_lo, float a, float w_hi, float b) {
    return __fadd_rn(__fmul_rn(a, w_lo), __fmul_rn(b, w_hi));
}

#define ARSSR_COORD_GLOBAL 0
#define ARSSR_COORD_PHASE 1
#define ARSSR_PHASE_EPS 1e-4  // geometry.PHASE_EPS: a point on a cell edge (up to rounding) gets phase -1

// "global": the voxel centre over the whole output axis, -1 + (2j + 1) / H.
__device__ __forceinline__ float network_coord(int j, int n) {
    return (float)__dadd_rn(-1.0, __ddiv_rn(__dadd_rn(__dmul_rn(2.0, (double)j), 1.0), (double)n));
}

// "phase": where the point sits in its trilinear cell, 2 * (p - floor(p + eps)) - 1.
__device__ __forceinline__ float cell_phase(int j, int h, int H) {
    const double p = input_index(j, h, H);
    const double cell = floor(__dadd_rn(p, ARSSR_PHASE_EPS));
    return (float)__dadd_rn(__dmul_rn(2.0, __dadd_rn(p, -cell)), -1.0);
}

__device__ __forceinline__ float decoder_coord(int mode, int j, int h, int H) {
    return mode == ARSSR_COORD_PHASE ? cell_phase(j, h, H) : network_coord(j, H);
}

template <typename TIn, typename TOut>
__device__ __forceinline__ void sample_rows(
    const TIn* __restrict__ feat, long long sF, long long s0, long long s1, long long s2,
    int F, int b0, int b1, int b2,
    int o0, int o1, int o2,
    int h0, int h1, int h2,
    int H0, int H1, int H2,
    int a0, int a1, int a2,
    int n1, int n2,
    long long first, long long count,
    TOut* __restrict__ rows, long long row_stride,
    TOut* __restrict__ coords, long long coord_stride, int coord_mode,
    int* __restrict__ status) {
    const long long plane = (long long)n1 * (long long)n2;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < count;
         r += (long long)gridDim.x * blockDim.x) {
        const long long q = first + r;  // C-order index of the point inside the box
        const int g0 = a0 + (int)(q / plane);
        const int g1 = a1 + (int)((q / n2) % n1);
        const int g2 = a2 + (int)(q % n2);
        const AxisCorners c0 = axis_corners(g0, h0, H0, o0, b0);
        const AxisCorners c1 = axis_corners(g1, h1, H1, o1, b1);
        const AxisCorners c2 = axis_corners(g2, h2, H2, o2, b2);
        if (c0.bad || c1.bad || c2.bad) atomicExch(status, 1);

        const long long i00 = c1.lo * s1 + c2.lo * s2;  // (axis1, axis2) corner offsets
        const long long i01 = c1.lo * s1 + c2.hi * s2;
        const long long i10 = c1.hi * s1 + c2.lo * s2;
        const long long i11 = c1.hi * s1 + c2.hi * s2;
        const long long lo0 = c0.lo * s0;
        const long long hi0 = c0.hi * s0;
        TOut* out = rows + r * row_stride;
        for (int ch = 0; ch < F; ++ch) {
            const TIn* f = feat + ch * sF;
            // axis 0 first, then 1, then 2: the CPU path's order
            const float t00 = blend(c0.w_lo, load_value(f + lo0 + i00), c0.w_hi, load_value(f + hi0 + i00));
            const float t01 = blend(c0.w_lo, load_value(f + lo0 + i01), c0.w_hi, load_value(f + hi0 + i01));
            const float t10 = blend(c0.w_lo, load_value(f + lo0 + i10), c0.w_hi, load_value(f + hi0 + i10));
            const float t11 = blend(c0.w_lo, load_value(f + lo0 + i11), c0.w_hi, load_value(f + hi0 + i11));
            const float u0 = blend(c1.w_lo, t00, c1.w_hi, t10);
            const float u1 = blend(c1.w_lo, t01, c1.w_hi, t11);
            store_value(out + ch, blend(c2.w_lo, u0, c2.w_hi, u1));
        }
        TOut* xyz = coords + r * coord_stride;
        store_value(xyz + 0, decoder_coord(coord_mode, g0, h0, H0));
        store_value(xyz + 1, decoder_coord(coord_mode, g1, h1, H1));
        store_value(xyz + 2, decoder_coord(coord_mode, g2, h2, H2));
    }
}

#define ARSSR_SAMPLER_ENTRY(NAME, TIN, TOUT)                                                         \
    extern "C" __global__ void NAME(                                                                 \
        const TIN* __restrict__ feat, long long sF, long long s0, long long s1, long long s2,       \
        int F, int b0, int b1, int b2, int o0, int o1, int o2, int h0, int h1, int h2,             \
        int H0, int H1, int H2, int a0, int a1, int a2, int n1, int n2,                            \
        long long first, long long count,                                                          \
        TOUT* __restrict__ rows, long long row_stride, TOUT* __restrict__ coords,                  \
        long long coord_stride, int coord_mode, int* __restrict__ status) {                        \
        sample_rows<TIN, TOUT>(feat, sF, s0, s1, s2, F, b0, b1, b2, o0, o1, o2, h0, h1, h2,        \
                               H0, H1, H2, a0, a1, a2, n1, n2, first, count, rows, row_stride,     \
                               coords, coord_stride, coord_mode, status);                          \
    }

ARSSR_SAMPLER_ENTRY(arssr_sample_f32_f32, float, float)
ARSSR_SAMPLER_ENTRY(arssr_sample_f32_f16, float, half_bits)
ARSSR_SAMPLER_ENTRY(arssr_sample_f16_f32, half_bits, float)
ARSSR_SAMPLER_ENTRY(arssr_sample_f16_f16, half_bits, half_bits)
