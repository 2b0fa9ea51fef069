"""Training data made on the fly: random HR crops, random (per-axis) scale, simulated LR.

Each sample is an LR patch of ``lr_patch`` voxels per axis, the HR crop it was made from
(``round(lr_patch * s)`` voxels per axis, so the LR grid covers exactly the HR crop's field
of view, centre-aligned), and ``points`` HR voxels to supervise with their network coordinates.
Intensities are min-max normalised per volume exactly as the runtime does.
"""

from __future__ import annotations

import csv
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import windowed_sinc
from ..degrade import add_rician_noise, cubic_resample, degrade, gaussian_blur_down
from ..errors import InputError
from ..geometry import input_index_of_output, normalized_centres
from ..sampling import decoder_axis_coords
from .acquisition import acquire, gamma_and_bias


@dataclass
class TrainVolume:
    """A normalised HR training volume and a foreground mask for crop placement."""

    name: str
    data: np.ndarray
    foreground: np.ndarray  # flat indices of voxels above the background threshold
    weight: float = 1.0  # relative probability of drawing a patch from this volume


@dataclass
class SamplerConfig:
    lr_patch: int = 16
    points: int = 4096
    margin: int = 2
    scale_min: float = 2.0
    scale_max: float = 4.0
    anisotropic: float = 0.0  # probability of a per-axis scale (incl. thick-slice 1x1xk)
    degradations: dict[str, float] = field(default_factory=lambda: {"cubic": 1.0})
    noise: float = 0.0  # probability of adding mild Gaussian noise to the LR
    # probability of a random gain/offset on the patch (LR and target alike): the runtime's
    # min-max normalisation of a ringing or noisy LR moves air off 0 and rescales tissue by a few
    # per cent, and a model that only ever saw air at exactly 0 pulls it back (wrong intensities)
    intensity: float = 0.0
    intensity_gain: tuple[float, float] = (0.9, 1.1)
    intensity_offset: tuple[float, float] = (0.0, 0.05)
    flips: bool = True
    foreground_bias: float = 0.9
    # MR-like acquisitions (training/acquisition.py): every degradation as a separable operator
    # with mirrored patch edges (no k-space wrap-around), plus Rician noise, slice gaps, deeper
    # thick-slice scales, and contrast / bias-field changes of the HR patch
    separable: bool = False
    thick_max: float = 0.0  # through-plane scale of thick-slice draws ~ U(scale_min, thick_max); 0: scale_max + 1
    noise_sigma: tuple[float, float] = (0.005, 0.04)  # Rician sigma of `kspace-noise`, normalised units
    slice_gap: float = 0.0  # gap ~ U(0, slice_gap) of the slice spacing
    slice_profiles: tuple[str, ...] = ("box",)
    contrast: float = 0.0  # probability of a gamma / bias-field change of the HR patch
    # probability of Rician noise on the HR patch *before* the degradation (LR and target share
    # it): a real single scan's target is noisy too, so the in-band noise the LR carries is part
    # of the answer, not something to remove (templates and averages have none)
    hr_noise: float = 0.0
    hr_noise_sigma: tuple[float, float] = (0.005, 0.03)  # normalised units
    gamma: float = 0.2  # gamma ~ exp(U(-gamma, gamma))
    bias: float = 0.1  # bias field exp(sum c_k u_k), c_k ~ U(-bias, bias)
    coords: str = "global"  # decoder coordinate mode of the model being trained
    feature_scale: int = 1  # the model's feature grid is this many times finer than the LR
    base: str = "none"  # the model's residual base (windowed_sinc.BASES)


def expand_data_arg(data: str | Sequence[str]) -> list[Path]:
    """Files from a directory, a glob, a CSV (first column) or a list of those."""
    items = [data] if isinstance(data, (str, Path)) else list(data)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(x for x in p.iterdir() if x.name.endswith((".nii", ".nii.gz")))
        elif p.suffix == ".csv" and p.is_file():
            with open(p) as f:
                rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
            if rows and rows[0][0].strip().lower() in ("input", "path", "file"):
                rows = rows[1:]
            out += [Path(r[0].strip()) if Path(r[0].strip()).is_absolute() else p.parent / r[0].strip() for r in rows]
        elif p.is_file():
            out.append(p)
        else:
            out += [Path(x) for x in sorted(glob.glob(str(item)))]
    if not out:
        raise InputError(f"no training volumes found in {data}")
    return out


def minmax(data: np.ndarray) -> np.ndarray:
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        raise InputError("constant training volume")
    return ((data - lo) / (hi - lo)).astype(np.float32)


PYRAMID_KINDS = ("gaussian", "cubic", "linear")


def coarser(level: np.ndarray, kind: str) -> np.ndarray:
    """The volume at twice the voxel size: ``gaussian`` anti-aliased (FWHM = new spacing), or
    ``cubic`` / ``linear`` point resampling, which is how registration tools make 2 mm
    templates-space images (sharper, aliased)."""
    half = [max(1, round(n / 2)) for n in level.shape]
    if kind == "gaussian":
        return minmax(gaussian_blur_down(level, half))
    if kind in ("cubic", "linear"):
        return minmax(cubic_resample(level, half, order=3 if kind == "cubic" else 1))
    raise ValueError(f"unknown pyramid kind {kind!r}; known: {', '.join(PYRAMID_KINDS)}")


def load_training_volumes(paths: Sequence[Path], pyramid: int = 1, min_size: int = 48,
                          kinds: Sequence[str] = ("gaussian",), weights: dict[str, float] | None = None) -> list[TrainVolume]:
    """Load volumes, normalise, and add ``pyramid`` coarser copies (x2 each) per pyramid kind.

    ``weights`` maps a file name to its sampling weight (default 1), shared by its levels:
    e.g. to draw more patches from the one volume with skull and scalp when the target
    scans have them.
    """
    import nibabel as nib

    vols: list[TrainVolume] = []
    for path in paths:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
        data = np.squeeze(data)
        if data.ndim != 3:
            raise InputError(f"{path}: training volumes must be 3-D")
        weight = float((weights or {}).get(Path(path).name, 1.0))
        levels = [("", minmax(data))]
        for k in range(pyramid + 1):
            nxt = []
            for tag, level in levels:
                if min(level.shape) < min_size:
                    continue
                vols.append(TrainVolume(f"{Path(path).name}@{2 ** k}x{tag}", level, np.flatnonzero(level > 0.1), weight))
                if k < pyramid:
                    nxt += [(f"{tag}/{kind}", coarser(level, kind)) for kind in kinds]
            levels = nxt
    return vols


class PatchSampler:
    """Draws training batches; deterministic for a given seed."""

    def __init__(self, volumes: list[TrainVolume], config: SamplerConfig, seed: int = 0):
        self.volumes = volumes
        self.cfg = config
        self.rng = np.random.default_rng(seed)
        kinds = list(config.degradations)
        w = np.array([config.degradations[k] for k in kinds], dtype=np.float64)
        self.kinds, self.kind_p = kinds, w / w.sum()
        vw = np.array([v.weight for v in volumes], dtype=np.float64)
        self.volume_p = vw / vw.sum()

    def draw_scale(self) -> np.ndarray:
        c, r = self.cfg, self.rng
        if r.random() < c.anisotropic:
            if r.random() < 0.5:  # thick-slice: in-plane 1, through-plane k
                s = np.ones(3)
                s[r.integers(3)] = r.uniform(c.scale_min, c.thick_max or c.scale_max + 1.0)
                return s
            return r.uniform(1.0, c.scale_max, size=3)
        return np.full(3, r.uniform(c.scale_min, c.scale_max))

    def crop(self, vol: TrainVolume, size: Sequence[int]) -> np.ndarray:
        shape = np.array(vol.data.shape)
        size_a = np.array(size)
        if np.any(size_a > shape):
            pad = [(0, max(0, int(s - n))) for s, n in zip(size_a, shape)]
            data = np.pad(vol.data, pad)
        else:
            data = vol.data
        shape = np.array(data.shape)
        if self.rng.random() < self.cfg.foreground_bias and len(vol.foreground):
            centre = np.array(np.unravel_index(vol.foreground[self.rng.integers(len(vol.foreground))], vol.data.shape))
            start = np.clip(centre - size_a // 2, 0, shape - size_a)
        else:
            start = np.array([self.rng.integers(0, n - s + 1) for n, s in zip(shape, size_a)])
        sl = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size_a))
        return data[sl]

    def degrade(self, hr: np.ndarray, lr_shape: Sequence[int], scale: Sequence[float]) -> np.ndarray:
        """The LR patch: a degradation drawn from the configured mix."""
        c, r = self.cfg, self.rng
        kind = self.kinds[r.choice(len(self.kinds), p=self.kind_p)]
        if not c.separable:
            return degrade(hr, scale, kind)
        thickness = 1.0 - r.uniform(0.0, c.slice_gap) if c.slice_gap else 1.0
        profile = c.slice_profiles[r.integers(len(c.slice_profiles))]
        return acquire(hr, lr_shape, kind, r, float(r.uniform(*c.noise_sigma)), thickness, profile)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One (lr (p,p,p), coords (K,3), decoder coords (K,3), target (K,), base (K,)) sample."""
        c, r = self.cfg, self.rng
        scale = self.draw_scale()
        p = c.lr_patch
        hr_size = [max(p, int(round(p * s))) for s in scale]
        vol = self.volumes[r.choice(len(self.volumes), p=self.volume_p)]
        hr = self.crop(vol, hr_size)
        if c.flips:
            for axis in range(3):
                if r.random() < 0.5:
                    hr = np.flip(hr, axis)
        hr = np.ascontiguousarray(hr, dtype=np.float32)
        if c.intensity and r.random() < c.intensity:  # degradation is linear: LR and target move together
            hr = hr * np.float32(r.uniform(*c.intensity_gain)) + np.float32(r.uniform(*c.intensity_offset))
        if c.contrast and r.random() < c.contrast:
            hr = gamma_and_bias(hr, r, c.gamma, c.bias)
        if c.hr_noise and r.random() < c.hr_noise:
            hr = add_rician_noise(hr, float(r.uniform(*c.hr_noise_sigma)), r)
        lr = self.degrade(hr, [p, p, p], [H / p for H in hr_size])
        if c.noise and r.random() < c.noise:
            lr = lr + r.normal(0.0, r.uniform(0.005, 0.02), size=lr.shape).astype(np.float32)
        # supervise HR voxels whose LR position lies at least `margin` voxels inside the patch
        idx = []
        for H in hr_size:
            pos = (np.arange(H) + 0.5) * p / H - 0.5
            ok = np.flatnonzero((pos >= c.margin - 0.5) & (pos <= p - c.margin - 0.5))
            idx.append(ok if len(ok) else np.arange(H))
        picks = [r.choice(ix, size=c.points) for ix in idx]
        axes = [normalized_centres(H) for H in hr_size]
        coords = np.stack([axes[a][picks[a]] for a in range(3)], axis=1).astype(np.float32)
        dec = np.stack([decoder_axis_coords(p, H, 0, H, c.coords, c.feature_scale)[picks[a]] for a, H in enumerate(hr_size)], axis=1)
        target = hr[picks[0], picks[1], picks[2]]
        base = windowed_sinc.bases_at_picks(lr, hr_size, picks, c.base)
        return lr.astype(np.float32), coords, dec.astype(np.float32), target.astype(np.float32), base

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(lr (n,1,p,p,p), coords (n,K,3), decoder coords (n,K,3), target (n,K,1), base (n,K,C))."""
        samples = [self.sample() for _ in range(n)]
        lr = np.stack([s[0] for s in samples])[:, None]
        coords = np.stack([s[1] for s in samples])
        dec = np.stack([s[2] for s in samples])
        target = np.stack([s[3] for s in samples])[..., None]
        base = np.stack([s[4] for s in samples])
        return lr, coords, dec, target, base
