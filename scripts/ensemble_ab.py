"""A/B: the output average of the default and bandlimited models against each alone (dB over the best
classical baseline, head mask; the ab_eval.py acquisitions).  python scripts/ensemble_ab.py HR.nii.gz [...]"""
import numpy as np, nibabel as nib, torch, sys
from pathlib import Path
from arssr_rt.degrade import cubic_resample, lr_shape_for
from arssr_rt.evaluation.metrics import head_mask, psnr, ssim3d
from arssr_rt.fourier import sinc_upsample
from arssr_rt.network import build_model
from arssr_rt.training.acquisition import acquire
from arssr_rt.training.train import model_weights, predict_volume
torch.set_num_threads(1)
models = []
for ck in ["arssr_rt/models/default/weights.pt", "arssr_rt/models/bandlimited/weights.pt"]:
    st = torch.load(ck, map_location="cpu", weights_only=True); m = build_model(st["spec"]); m.load_state_dict(model_weights(st, Path(ck), "checkpoint")); models.append(m.eval())
for path in sys.argv[1:]:
    hr = np.squeeze(np.asarray(nib.load(path).get_fdata(dtype=np.float32))); mask, rng = head_mask(hr), float(hr.max()-hr.min())
    for kind, scale in [("kspace",(2,2,2)),("gaussian",(2,2,2)),("cubic",(2,2,2)),("slice",(1,1,4)),("kspace",(4,4,4)),("cubic",(4,4,4))]:
        lr = acquire(hr, lr_shape_for(hr.shape, scale), kind, np.random.default_rng(0), noise_sigma=0.02*float(np.percentile(hr[mask], 99.5)))
        lo, hi = float(lr.min()), float(lr.max())
        best = max(psnr(hr, cubic_resample(lr, hr.shape), mask, rng), psnr(hr, sinc_upsample(lr, hr.shape), mask, rng))
        outs = []
        for m in models:
            with torch.no_grad(): outs.append(predict_volume(m, (lr-lo)/(hi-lo), hr.shape)*(hi-lo)+lo)
        res = [psnr(hr, o, mask, rng)-best for o in outs] + [psnr(hr, (outs[0]+outs[1])/2, mask, rng)-best]
        print(Path(path).name[:12], kind, scale, " default %+.2f  bandlimited %+.2f  mean %+.2f" % tuple(res), flush=True)
