"""The CUDA sampler (arssr_rt/engines/sampler.cu): compiles, has the launch ABI Python uses,
and its math (mirrored line by line in numpy) equals the CPU sampler and torch grid_sample.

Compile checks need no GPU (NVRTC from the nvidia-cuda-nvrtc wheel, or nvcc), and skip with
the reason when neither is installed. The GPU test runs the kernel itself against the mirror.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from arssr_rt.engines import sampler
from arssr_rt.engines.gpu_probe import gpu_unavailable_reason
from arssr_rt.sampling import PHASE_EPS, BoxSpec, axis_weights, box_coords, needed_input_range, sample_box

from kernel_mirror import reference_sample_rows

KERNEL = Path(sampler.__file__).with_name("sampler.cu")
ENTRY_POINTS = {"arssr_sample_f32_f32", "arssr_sample_f32_f16", "arssr_sample_f16_f32", "arssr_sample_f16_f16"}


def nvrtc_reason() -> str:
    try:
        from cuda.bindings import nvrtc

        err, *_ = nvrtc.nvrtcVersion()
        return "" if err == nvrtc.nvrtcResult.NVRTC_SUCCESS else f"NVRTC unusable: {err}"
    except Exception as exc:  # not installed, or libnvrtc missing
        return f"NVRTC is not available ({type(exc).__name__}: {exc}); pip install 'nvidia-cuda-nvrtc==13.0.*' cuda-bindings"


# ---------------------------------------------------------------- compile checks (no GPU)


@pytest.mark.skipif(bool(nvrtc_reason()), reason=nvrtc_reason() or "-")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_every_entry_point(arch):
    ptx = sampler.compile_ptx(arch).decode()
    entries = {line.split()[-1].rstrip("(") for line in ptx.splitlines() if line.lstrip().startswith(".visible .entry")}
    assert entries == ENTRY_POINTS
    assert f".target {arch}" in ptx
    assert "fma.rn" not in ptx  # no contraction: the float math must round like numpy's


@pytest.mark.skipif(bool(nvrtc_reason()), reason=nvrtc_reason() or "-")
def test_nvrtc_builds_machine_code_for_an_exact_gpu():
    assert sampler.compile_cubin("sm_90")[:4] == b"\x7fELF"


@pytest.mark.skipif(bool(nvrtc_reason()), reason=nvrtc_reason() or "-")
def test_nvrtc_rejects_a_bad_arch_with_a_typed_error():
    from arssr_rt.errors import BackendError

    with pytest.raises(BackendError):
        sampler.compile_ptx("ampere")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_nvcc_compiles_the_kernel_to_ptx(tmp_path):
    out = tmp_path / "sampler.ptx"
    subprocess.run(["nvcc", "-ptx", "-arch=sm_80", "--std=c++17", "-o", str(out), str(KERNEL)], check=True, capture_output=True)
    assert all(f".entry {name}" in out.read_text() for name in ENTRY_POINTS)


def test_launch_arguments_match_the_kernel_signature():
    """The parameter list in sampler.cu and the arrays Python packs must agree in count and type."""
    source = KERNEL.read_text()
    macro = re.search(r"#define ARSSR_SAMPLER_ENTRY\(NAME, TIN, TOUT\)(.*?)\{", source, re.S).group(1)
    params = re.search(r"NAME\((.*)\)", macro.replace("\\\n", " "), re.S).group(1)
    c_types = []
    for p in params.split(","):
        p = " ".join(p.split())
        c_types.append(np.uint64 if "*" in p else np.int64 if p.startswith("long long") else np.int32 if p.startswith("int ") else None)
    assert None not in c_types
    names = [p.split()[-1] for p in params.split(",")]
    spec = BoxSpec.make((4, 4, 4), (0, 0, 0), (4, 4, 4), (8, 8, 8), (0, 0, 0), (8, 8, 8), "phase")
    args = sampler._launch_args(1, (64, 16, 4, 1), spec, 2, 0, 512, 2, 2, 3, 3, 4)
    assert [a.dtype.type for a in args] == c_types
    assert all(a.shape == (1,) for a in args)
    assert args[names.index("coord_mode")][0] == 1  # "phase"
    assert args[names.index("coord_stride")][0] == 3 and args[names.index("status")][0] == 4


def test_kernel_coordinate_mode_codes_match_the_source():
    source = KERNEL.read_text()
    for mode, code in sampler.COORD_MODE_CODES.items():
        assert f"#define ARSSR_COORD_{mode.upper()} {code}" in source
    assert float(re.search(r"#define ARSSR_PHASE_EPS (\S+)", source).group(1)) == PHASE_EPS


# ---------------------------------------------------------------- the kernel's math, in numpy


CASES = [
    # in_shape, out_shape, block offset, block shape, out start, out stop
    ((11, 9, 13), (25, 20, 17), (2, 0, 3), (9, 9, 10), (6, 0, 5), (20, 20, 17)),  # non-integer, anisotropic
    ((8, 8, 8), (16, 16, 16), (0, 0, 0), (8, 8, 8), (0, 0, 0), (16, 16, 16)),  # x2, whole volume, borders
    ((20, 7, 5), (20, 21, 16), (4, 0, 0), (8, 7, 5), (5, 0, 0), (11, 21, 16)),  # x1 on one axis, x3 and x3.2
    ((10, 10, 10), (7, 13, 10), (0, 2, 0), (10, 7, 10), (0, 3, 2), (7, 10, 9)),  # down-sampling on one axis
]


@pytest.mark.parametrize("in_shape, out_shape, offset, block_shape, start, stop", CASES)
def test_kernel_math_equals_the_cpu_sampler_bit_for_bit(in_shape, out_shape, offset, block_shape, start, stop):
    rng = np.random.default_rng(sum(in_shape))
    block = rng.standard_normal((6, *block_shape)).astype(np.float32)
    spec = BoxSpec.make(block_shape, offset, in_shape, out_shape, start, stop)
    rows, coords, bad = reference_sample_rows(block, spec)
    cpu = sample_box(np.moveaxis(block, 0, -1).copy(), offset, in_shape, out_shape, start, stop).reshape(-1, 6)
    assert not bad
    np.testing.assert_array_equal(rows, cpu)
    np.testing.assert_array_equal(coords, box_coords(out_shape, start, stop))


@pytest.mark.parametrize("mode", ["global", "phase"])
@pytest.mark.parametrize("in_shape, out_shape, offset, block_shape, start, stop", CASES)
def test_kernel_coords_equal_the_cpu_pipeline_in_both_modes(mode, in_shape, out_shape, offset, block_shape, start, stop):
    """The decoder coords the kernel writes are the CPU pipeline's (sampling.box_coords) bit for bit."""
    block = np.random.default_rng(7).standard_normal((2, *block_shape)).astype(np.float32)
    spec = BoxSpec.make(block_shape, offset, in_shape, out_shape, start, stop, mode)
    rows, coords, bad = reference_sample_rows(block, spec)
    assert not bad and coords.dtype == np.float32
    np.testing.assert_array_equal(coords, box_coords(out_shape, start, stop, in_shape, mode))
    np.testing.assert_array_equal(rows, reference_sample_rows(block, BoxSpec.make(block_shape, offset, in_shape, out_shape, start, stop))[0])
    for first, count in [(0, 1), (13, 50), (spec.points - 3, 3)]:  # chunks are slices of the box
        np.testing.assert_array_equal(reference_sample_rows(block, spec, first, count)[1], coords[first:first + count])


def test_phase_coords_are_the_cell_phase_of_each_point():
    """Phase = where the point sits between its trilinear corners; -1 exactly on a scale-1 axis."""
    in_shape, out_shape, offset, block_shape, start, stop = CASES[2]  # axis 0: 20 -> 20 (x1)
    spec = BoxSpec.make(block_shape, offset, in_shape, out_shape, start, stop, "phase")
    _, coords, _ = reference_sample_rows(np.zeros((1, *block_shape), np.float32), spec)
    assert np.all(coords[:, 0] == -1.0)
    assert np.all((coords >= -1.0) & (coords < 1.0))
    # x2 from 8: p = j/2 - 0.25 -> fractions 0.75, 0.25 alternate -> phases 0.5, -0.5
    spec = BoxSpec.make((8, 8, 8), (0, 0, 0), (8, 8, 8), (16, 16, 16), (0, 0, 0), (4, 1, 1), "phase")
    _, coords, _ = reference_sample_rows(np.zeros((1, 8, 8, 8), np.float32), spec)
    np.testing.assert_array_equal(coords[:, 0], [0.5, -0.5, 0.5, -0.5])
    # non-integer scale: (phase + 1) / 2 is the upper corner's trilinear weight (away from cell edges)
    h, H = 11, 25
    j = np.arange(H)
    p = (j + 0.5) * h / H - 0.5
    spec = BoxSpec.make((h, 1, 1), (0, 0, 0), (h, 1, 1), (H, 1, 1), (0, 0, 0), (H, 1, 1), "phase")
    _, coords, _ = reference_sample_rows(np.zeros((1, h, 1, 1), np.float32), spec)
    np.testing.assert_allclose((coords[:, 0] + 1) / 2, p - np.floor(p), atol=1e-6)


def test_an_unknown_coordinate_mode_is_a_model_error():
    from arssr_rt.errors import ModelError

    with pytest.raises(ModelError, match="spec.coords"):
        BoxSpec.make((4, 4, 4), (0, 0, 0), (4, 4, 4), (8, 8, 8), (0, 0, 0), (8, 8, 8), "local")


@pytest.mark.parametrize("in_shape, out_shape, offset, block_shape, start, stop", CASES)
def test_kernel_math_equals_grid_sample_zeros_padding(in_shape, out_shape, offset, block_shape, start, stop):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    volume = rng.standard_normal((5, *in_shape)).astype(np.float32)
    block = volume[:, offset[0]:offset[0] + block_shape[0], offset[1]:offset[1] + block_shape[1], offset[2]:offset[2] + block_shape[2]]
    spec = BoxSpec.make(block_shape, offset, in_shape, out_shape, start, stop)
    rows, coords, _ = reference_sample_rows(block, spec)
    grid = torch.from_numpy(coords).flip(-1).view(1, 1, 1, -1, 3)  # grid_sample wants (x, y, z) = (W, H, D)
    ref = torch.nn.functional.grid_sample(torch.from_numpy(volume)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    np.testing.assert_allclose(rows, ref.view(5, -1).T.numpy(), atol=2e-5, rtol=0)


def test_chunks_are_slices_of_the_whole_box():
    in_shape, out_shape, offset, block_shape, start, stop = CASES[0]
    block = np.random.default_rng(2).standard_normal((3, *block_shape)).astype(np.float32)
    spec = BoxSpec.make(block_shape, offset, in_shape, out_shape, start, stop)
    rows, coords, _ = reference_sample_rows(block, spec)
    for first, count in [(0, 1), (17, 300), (spec.points - 5, 5)]:
        r, c, _ = reference_sample_rows(block, spec, first, count)
        np.testing.assert_array_equal(r, rows[first:first + count])
        np.testing.assert_array_equal(c, coords[first:first + count])


def test_a_block_missing_a_weighted_corner_raises_the_status_flag():
    spec = BoxSpec(block_shape=(4, 8, 8), in_offset=(2, 0, 0), in_shape=(8, 8, 8), out_shape=(16, 16, 16), out_start=(0, 0, 0), out_stop=(16, 16, 16))
    _, _, bad = reference_sample_rows(np.zeros((1, 4, 8, 8), np.float32), spec)
    assert bad
    with pytest.raises(ValueError, match="does not cover"):
        spec.validate()


@pytest.mark.parametrize("h, H, start, stop", [(8, 16, 0, 16), (11, 25, 6, 20), (10, 7, 2, 5), (9, 21, 20, 21), (5, 16, 0, 1)])
def test_needed_input_range_is_what_the_cpu_sampler_uses(h, H, start, stop):
    lo, hi = needed_input_range(h, H, start, stop)
    axis_weights(h, H, start, stop, lo, hi - lo + 1)  # covers: no ValueError
    for o, b in ((lo + 1, hi - lo), (lo, hi - lo)):  # one voxel less on either side
        if b >= 1 and (o > lo or o + b <= hi):
            with pytest.raises(ValueError):
                axis_weights(h, H, start, stop, o, b)


# ---------------------------------------------------------------- the kernel on a GPU


def kernel_skip_reason() -> str:
    return gpu_unavailable_reason() or nvrtc_reason()


@pytest.mark.gpu
@pytest.mark.skipif(bool(kernel_skip_reason()), reason=kernel_skip_reason() or "-")
@pytest.mark.parametrize("in_dtype, out_dtype", [(np.float32, np.float32), (np.float32, np.float16), (np.float16, np.float32), (np.float16, np.float16)])
@pytest.mark.parametrize("mode", ["global", "phase"])
@pytest.mark.parametrize("in_shape, out_shape, offset, block_shape, start, stop", CASES[:3])
def test_kernel_on_the_gpu_equals_its_numpy_mirror(in_dtype, out_dtype, mode, in_shape, out_shape, offset, block_shape, start, stop):
    from arssr_rt.engines.device import CudaRuntime
    from arssr_rt.engines.gpu_probe import require_gpu

    gpu = require_gpu(0)
    dev = CudaRuntime(0)
    kernel = sampler.SamplerKernel(gpu.sm)
    stream = dev.create_stream()
    f = 7
    block = np.random.default_rng(3).standard_normal((f, *block_shape)).astype(in_dtype)
    spec = BoxSpec.make(block_shape, offset, in_shape, out_shape, start, stop, mode)
    n = spec.points
    feat = dev.malloc(block.nbytes)
    rows = dev.malloc(n * (f + 3) * np.dtype(out_dtype).itemsize)
    status = dev.malloc(4)
    try:
        dev.upload(feat, block, stream)
        dev.memset(status, 0, 4, stream)
        strides = tuple(s // block.itemsize for s in block.strides)
        # one [N, F + 3] matrix: features then coords in each row (the concatenated layout)
        half = n // 2
        for first, count in ((0, half), (half, n - half)):
            kernel.launch(dev.stream_handle(stream), feat, block.dtype, strides, f, spec, first, count,
                          rows + first * (f + 3) * np.dtype(out_dtype).itemsize, f + 3,
                          rows + (first * (f + 3) + f) * np.dtype(out_dtype).itemsize, f + 3, out_dtype, status)
        got = np.empty((n, f + 3), dtype=out_dtype)
        flag = np.zeros(1, np.int32)
        dev.download(got, rows, stream)
        dev.download(flag, status, stream)
        dev.synchronize(stream)
    finally:
        for p in (feat, rows, status):
            dev.free(p)
        dev.destroy_stream(stream)
        kernel.close()
    want_rows, want_coords, _ = reference_sample_rows(block.astype(np.float32), spec)
    assert flag[0] == 0
    if out_dtype == np.float32:
        np.testing.assert_array_equal(got[:, :f], want_rows)
        np.testing.assert_array_equal(got[:, f:], want_coords)
    else:  # one fp16 rounding of the same float32 value
        np.testing.assert_array_equal(got[:, :f], want_rows.astype(np.float16))
        np.testing.assert_array_equal(got[:, f:], want_coords.astype(np.float16))
