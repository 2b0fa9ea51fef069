"""Training layout: channels-last 3-D weights where measured faster (CPU, fp32), the same
outputs and gradients as the default layout on real data, and an adapted model handed back
in the default layout (inference is slower in channels-last)."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest

from conftest import FIXTURE_PATH

torch = pytest.importorskip("torch")


def _conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv3d)]


def test_cpu_fp32_trains_channels_last_and_other_precisions_keep_the_layout():
    from arssr_rt.backends.torch_backend import load_bundle_model
    from arssr_rt.bundle import resolve_model
    from arssr_rt.network.memory_format import training_layout

    model = load_bundle_model(resolve_model("default"))
    bf16 = training_layout(copy.deepcopy(model), "cpu", "bf16")
    assert all(w.is_contiguous() for w in _conv_weights(bf16))
    fp32 = training_layout(copy.deepcopy(model), "cpu", "fp32")
    weights = _conv_weights(fp32)
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights)
    assert all(not w.is_contiguous() for w in weights if w.shape[1] > 1)  # one input channel: both layouts agree


def test_channels_last_gives_the_same_loss_and_gradients_on_the_fixture():
    """One training step's output and encoder gradients on a Colin27 patch agree to 1e-5."""
    from arssr_rt.backends.torch_backend import load_bundle_model
    from arssr_rt.bundle import resolve_model
    from arssr_rt.network.memory_format import training_layout

    vol = np.asarray(nib.load(str(FIXTURE_PATH)).dataobj, dtype=np.float32)
    vol /= vol.max()
    lr = torch.from_numpy(np.ascontiguousarray(vol[::2, ::2, ::2][8:24, 8:24, 8:24]))[None, None]
    rng = np.random.default_rng(0)
    coords = torch.from_numpy(rng.uniform(-0.9, 0.9, (1, 512, 3)).astype(np.float32))
    plain = load_bundle_model(resolve_model("default")).train()
    fast = training_layout(copy.deepcopy(plain), "cpu", "fp32")
    outs, grads = [], []
    for model in (plain, fast):
        out = model(lr, coords)
        out.abs().mean().backward()
        outs.append(out.detach())
        grads.append(_conv_weights(model)[0].grad.detach())
    assert float(outs[0].abs().max()) > 0.05  # a real image, not zeros
    assert float((outs[0] - outs[1]).abs().max()) < 1e-5
    assert float((grads[0] - grads[1]).abs().max()) < 1e-5 * max(1.0, float(grads[0].abs().max()))


def test_the_adapted_model_comes_back_in_the_default_layout(tmp_path):
    from arssr_rt.adapt.plan import AdaptOptions
    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.bundle import resolve_model
    from arssr_rt.degrade import degrade
    from arssr_rt.geometry import output_affine
    from arssr_rt.readers import read_volume

    img = nib.load(str(FIXTURE_PATH))
    hr = np.asarray(img.get_fdata(dtype=np.float32))
    lr = degrade(hr, (1, 1, 4), "slice").astype(np.float32)
    path = tmp_path / "thick.nii.gz"
    nib.Nifti1Image(lr, output_affine(img.affine, hr.shape, lr.shape)).to_filename(path)
    volume = read_volume(path)
    adapted = adapt_volume(volume, resolve_model("default"), AdaptOptions(steps=2, precision="fp32"), threads=1)
    assert all(w.is_contiguous() for w in _conv_weights(adapted.model))
