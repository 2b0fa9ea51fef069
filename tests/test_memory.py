"""memory.py: the run's memory budget (tile size, output placement) and the slab-wise helpers
that keep a file-backed output file-backed (restore, transpose, page release)."""

from __future__ import annotations

import numpy as np
import pytest

from arssr_rt.intensity import Normalizer
from arssr_rt.memory import (encoder_bytes_per_voxel, is_file_backed, output_buffer, plan_memory, restore_in_place,
                             transposed)

RDN = {"encoder": "rdn", "feature_dim": 128, "encoder_args": {}}
RESCNN = {"encoder": "rescnn", "feature_dim": 128, "encoder_args": {}}


def test_file_backed_restore_and_transpose_match_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("ARSSR_RT_TMPDIR", str(tmp_path))
    values = np.random.default_rng(0).uniform(size=(7, 9, 11)).astype(np.float32)
    mapped = output_buffer(values.shape, in_memory=False)
    mapped[:] = values
    norm = Normalizer().fit(np.array([10.0, 250.0], dtype=np.float32))
    out = restore_in_place(norm, transposed(mapped))
    assert is_file_backed(out) and out.flags.c_contiguous
    np.testing.assert_allclose(out, norm.restore(values).transpose(2, 1, 0), rtol=1e-6)


def test_budget_sets_tile_size():
    spec = {"encoder": "rdn", "feature_dim": 128, "encoder_args": {}}
    kw = dict(encoder_bytes_per_voxel=encoder_bytes_per_voxel(spec), receptive_radius=28, feature_dim=128, chunk=1 << 17, model_bytes=25 << 20)
    small = plan_memory((200, 200, 200), (600, 600, 600), max_memory=2 << 30, **kw)
    large = plan_memory((200, 200, 200), (600, 600, 600), max_memory=16 << 30, **kw)
    whole = plan_memory((40, 40, 40), (80, 80, 80), max_memory=2 << 30, **kw)
    assert small.tile < large.tile < 200 and whole.tile == 40
    assert not small.output_in_memory and large.output_in_memory  # 864 MB output vs 1/8 of the budget


def test_encoder_cost_follows_the_architecture_and_the_feature_grid():
    assert encoder_bytes_per_voxel(RDN) > 3 * encoder_bytes_per_voxel(RESCNN)  # dense blocks keep every output
    finer = encoder_bytes_per_voxel({**RESCNN, "feature_scale": 2})
    assert finer > encoder_bytes_per_voxel(RESCNN) + 2 * 4 * 128 * 8  # the expansion and its shuffled copy


@pytest.mark.parametrize("budget", [1 << 30, 3 << 30])
def test_the_planned_tile_fits_the_encoder_budget(budget):
    kw = dict(encoder_bytes_per_voxel=encoder_bytes_per_voxel(RDN), receptive_radius=28, feature_dim=128, chunk=1 << 14, model_bytes=25 << 20)
    plan = plan_memory((300, 300, 300), (600, 600, 600), max_memory=budget, **kw)
    per_voxel = kw["encoder_bytes_per_voxel"] + 4 * 128
    assert (plan.tile + 2 * 29) ** 3 * per_voxel <= plan.encoder_budget or plan.tile == 8  # 8: the smallest core


def test_an_in_memory_output_stays_in_memory():
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = transposed(values.copy())
    assert not is_file_backed(out) and out.shape == (4, 3, 2)
    np.testing.assert_array_equal(out, values.transpose(2, 1, 0))


def test_test_time_averaging_plans_two_output_buffers():
    """--adapt-tta holds the running sum and the pass being decoded: the plan counts both, so an
    output that fits in memory alone is file-backed with TTA, and the encoder gets less."""
    kw = dict(encoder_bytes_per_voxel=encoder_bytes_per_voxel(RESCNN), receptive_radius=12, feature_dim=128, chunk=1 << 14,
              model_bytes=5 << 20)
    one = plan_memory((128, 128, 64), (384, 384, 192), max_memory=1 << 30, **kw)  # 108 MB output, 1/8 of 1 GiB = 134 MB
    two = plan_memory((128, 128, 64), (384, 384, 192), max_memory=1 << 30, outputs=2, **kw)
    assert one.output_in_memory and not two.output_in_memory
    roomy = plan_memory((128, 128, 64), (384, 384, 192), max_memory=4 << 30, **kw)
    roomy_two = plan_memory((128, 128, 64), (384, 384, 192), max_memory=4 << 30, outputs=2, **kw)
    assert roomy_two.output_in_memory and roomy.encoder_budget - roomy_two.encoder_budget == 4 * 384 * 384 * 192


def test_the_pipeline_plans_for_its_tta_passes():
    from arssr_rt.pipeline import VolumeEngine
    from arssr_rt.tta import symmetries

    with VolumeEngine("default", "onnxruntime", max_memory=1 << 30) as plain, \
            VolumeEngine("default", "onnxruntime", max_memory=1 << 30, tta=symmetries(2, (0, 1))) as averaged:
        assert plain.memory_plan((128, 128, 64), (384, 384, 192)).output_in_memory
        assert not averaged.memory_plan((128, 128, 64), (384, 384, 192)).output_in_memory


def test_max_memory_bounds_what_is_read_from_the_header_before_the_data(cli, tmp_path, monkeypatch):
    """A budget too small for the input's float32 copies refuses the input from its header (one
    line naming the setting, nothing read or written); a budget that fits reads it as before."""
    from arssr_rt import nifti_io
    from arssr_rt.errors import InputTooLargeError
    from arssr_rt.memory import RUNTIME_BASE_BYTES, input_voxel_limit
    from arssr_rt.render import read_input
    from conftest import FIXTURE_PATH

    voxels = 64 ** 3  # the fixture
    assert input_voxel_limit(RUNTIME_BASE_BYTES + 12 * voxels, 10**9) == voxels
    assert input_voxel_limit(RUNTIME_BASE_BYTES + 12 * voxels, 1000) == 1000  # the input limit still caps it
    volume, _ = read_input(FIXTURE_PATH, RUNTIME_BASE_BYTES + 12 * voxels)
    assert volume.shape == (64, 64, 64)
    with pytest.raises(InputTooLargeError, match="max.memory 0.315 GiB leaves for the input"):
        read_input(FIXTURE_PATH, RUNTIME_BASE_BYTES + 12 * voxels - 12)

    reads: list[object] = []
    real = nifti_io.read_checked_voxels
    monkeypatch.setattr(nifti_io, "read_checked_voxels", lambda *a, **k: reads.append(a) or real(*a, **k))
    out = tmp_path / "o.nii.gz"
    code, err = cli("upsample", FIXTURE_PATH, "--scale", "2", "--max-memory", "321M", "-o", out)
    assert code == 2 and err.count("\n") == 1 and "--max-memory" in err and "262,144 voxels" in err, err
    assert not out.exists() and reads == []
