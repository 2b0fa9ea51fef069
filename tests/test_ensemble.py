"""``--ensemble MODEL``: the outputs of several fixed models averaged (pipeline.VolumeEngine).

Why it exists: the default model is ahead on interpolated input and thick slices, the
bandlimited one on band-limited and PSF-blurred input, and their mean was within 0.03 dB of
the better one or above both on 14 of 18 held-out cases (scripts/ensemble_ab.py). Real data:
the shipped Colin27 fixture."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from conftest import FIXTURE_PATH


def crop():
    from arssr_rt.volume import Volume

    img = nib.load(str(FIXTURE_PATH))
    return Volume(data=np.asarray(img.dataobj, dtype=np.float32)[:32, :40, :24], affine=img.affine)


def test_the_ensemble_is_the_mean_of_its_models_and_names_them_all():
    from arssr_rt.pipeline import VolumeEngine, plan_grid

    volume = crop()
    grid = plan_grid(volume, scale=(2.0, 2.0, 2.5))
    with VolumeEngine("default", "onnxruntime") as a, VolumeEngine("bandlimited", "onnxruntime") as b:
        want = (a.run(volume, grid) + b.run(volume, grid)) / 2
        assert np.abs(a.run(volume, grid) - b.run(volume, grid)).max() > 1e-2 * float(np.ptp(want))  # the models differ
    sent = []
    with VolumeEngine("default", "onnxruntime", ensemble=["bandlimited"]) as both:
        got = both.run(volume, grid, progress=sent.append)
        assert both.model_name == "arssr-lite-default+arssr-lite-bandlimited"
        assert both.model_label.count("version") == 2 and both.held_outputs == 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.ptp(want)))
    assert sum(sent) == grid.voxels  # one progress total for all members


def test_cli_ensemble_output_records_both_models(cli, tmp_path):
    out = tmp_path / "e.nii.gz"
    code, err = cli("upsample", FIXTURE_PATH, "--scale", "1.5", "--ensemble", "bandlimited", "-o", out, "-q")
    assert code == 0, err
    descrip = nib.load(str(out)).header["descrip"].tobytes().decode()
    assert "arssr-lite-default+arssr-lite-bandlimited" in descrip


def test_ensemble_refusals_are_one_line_and_write_nothing(cli, tmp_path):
    out = tmp_path / "o.nii.gz"
    for args, text in ((["--ensemble", "bandlimited", "--adapt"], "does not go with --adapt"),
                       (["--ensemble", "bandlimited", "--interp", "cubic"], "does not apply to --interp cubic"),
                       (["--ensemble", "no-such-model"], "no model named 'no-such-model'")):
        code, err = cli("upsample", FIXTURE_PATH, "--scale", "2", "-o", out, *args)
        assert code == 2 and text in err and "Traceback" not in err, (args, err)
    assert not out.exists()


def test_batch_records_the_ensemble_in_sidecars_and_fingerprints(cli, tmp_path):
    import json

    from arssr_rt.batch.runner import BatchOptions

    assert "ensemble" not in BatchOptions().fingerprint("2")  # earlier sidecars stay up to date
    assert BatchOptions(ensemble=("bandlimited",)).fingerprint("2")["ensemble"] == ["bandlimited"]
    code, err = cli("batch", FIXTURE_PATH, "-o", tmp_path / "out", "--scale", "1.5", "--ensemble", "bandlimited", "-q")
    assert code == 0, err
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json") if p.name != "batch_report.json"]
    assert sidecars and sidecars[0]["model"] == "arssr-lite-default+arssr-lite-bandlimited"
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert report["model"]["name"] == "arssr-lite-default+arssr-lite-bandlimited" and len(report["model"]["ensemble"]) == 2
