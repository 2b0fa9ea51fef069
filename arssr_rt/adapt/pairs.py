"""Training pairs from the scan itself: in-plane crops degraded along one in-plane axis.

HR = a crop of the normalised scan (normalised as the pipeline does, so the model sees the
same intensities when it adapts and when it infers). LR = the crop with one in-plane axis
``a`` acquired by the slice profile at the through-plane ratio (``training.acquisition``'s
operator, which is ``degrade.slice_matrix`` on the mirrored patch: the profile weights of
``evaluate`` and ``--keep-acquired``). The crop is then transposed so that ``a`` sits where the
real thick axis sits in the volume: at inference the model up-samples that array axis, so it
learns the mapping in the array position it will use it in. The other in-plane axis and the
natively thick axis take the two remaining positions (randomly swapped per batch), and every
axis may be flipped.

The natively thick axis is the one mismatch: in a pair it is thick and left at scale 1, at
inference that position holds a fine in-plane axis. ``context`` chooses how the patch carries
it: ``3d`` keeps ``native`` real slices, ``slab`` repeats one slice (the model sees in-plane
context only, and nothing it could mistake for through-plane structure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import windowed_sinc
from ..geometry import input_index_of_output, normalized_centres
from ..sampling import decoder_axis_coords
from ..training.acquisition import axis_operator
from .plan import AdaptPlan


@dataclass(frozen=True)
class PairConfig:
    """Patch sizes in voxels (LR voxels along the degraded axis) and supervision density."""

    lr_thick: int = 8  # LR voxels along the degraded axis; its HR crop is round(lr_thick * ratio)
    fine: int = 24  # voxels along the other in-plane axis
    native: int = 8  # slices along the natively thick axis (context "3d")
    points: int = 2048  # supervised HR voxels per patch
    margin: int = 2  # supervise only voxels this many LR voxels inside the patch (as training does)
    foreground_bias: float = 0.9  # probability of centring a patch on a voxel above 10 % of the range
    context: str = "3d"
    coords: str = "phase"  # the model's decoder coordinate mode
    feature_scale: int = 1
    base: str = "none"


class ScanPairSampler:
    """Deterministic (seeded) batches of (lr, coords, decoder coords, target, base) from one scan."""

    def __init__(self, volume: np.ndarray, plan: AdaptPlan, config: PairConfig, seed: int = 0):
        self.data = np.ascontiguousarray(volume, dtype=np.float32)
        self.plan, self.cfg = plan, config
        self.rng = np.random.default_rng(seed)
        self.foreground = np.flatnonzero(self.data > 0.1)

    def _crop(self, sizes: list[int]) -> np.ndarray:
        shape = np.array(self.data.shape)
        size = np.array(sizes)
        data = self.data
        if np.any(size > shape):  # a small scan: pad the far side with air
            data = np.pad(data, [(0, max(0, int(s - n))) for s, n in zip(size, shape)])
            shape = np.array(data.shape)
        r = self.rng
        if r.random() < self.cfg.foreground_bias and len(self.foreground):
            centre = np.array(np.unravel_index(self.foreground[r.integers(len(self.foreground))], self.data.shape))
            start = np.clip(centre - size // 2, 0, shape - size)
        else:
            start = np.array([r.integers(0, n - s + 1) for n, s in zip(shape, size)])
        return data[tuple(slice(int(a), int(a + s)) for a, s in zip(start, size))]

    def _layout(self) -> tuple[int, int, list[int], int, int]:
        """(degraded in-plane axis, other in-plane axis, volume axis at each array position, HR, LR length)."""
        c, p, r = self.cfg, self.plan, self.rng
        a = p.in_plane[int(r.integers(2))]
        b = p.in_plane[0] if a == p.in_plane[1] else p.in_plane[1]
        h = c.lr_thick
        H = max(h + 1, int(round(h * p.ratios[a])))
        rest = [b, p.thick_axis] if r.random() < 0.5 else [p.thick_axis, b]
        order = [0, 0, 0]
        order[p.thick_axis] = a
        others = [pos for pos in range(3) if pos != p.thick_axis]
        order[others[0]], order[others[1]] = rest
        return a, b, order, H, h

    def _patch(self, a: int, b: int, order: list[int], H: int) -> np.ndarray:
        """HR patch in the model's array layout (position thick_axis holds the degraded axis)."""
        c, t = self.cfg, self.plan.thick_axis
        sizes = [0, 0, 0]
        sizes[a], sizes[b] = H, c.fine
        sizes[t] = c.native if c.context == "3d" else 1
        crop = self._crop(sizes)
        if c.context == "slab":  # one native slice, repeated: in-plane context only
            crop = np.repeat(crop, c.native, axis=t)
        hr = np.transpose(crop, order)
        for axis in range(3):
            if self.rng.random() < 0.5:
                hr = np.flip(hr, axis)
        return np.ascontiguousarray(hr, dtype=np.float32)

    def _sample(self, a: int, b: int, order: list[int], H: int, h: int):
        c, t = self.cfg, self.plan.thick_axis
        hr = self._patch(a, b, order, H)
        op = axis_operator("slice", H, h, 1.0 - self.plan.gap, self.plan.profile)
        lr = np.moveaxis(np.tensordot(op, hr.astype(np.float64), axes=([1], [t])), 0, t).astype(np.float32)
        hr_shape, lr_shape = hr.shape, lr.shape
        idx = []
        for n_hr, n_lr in zip(hr_shape, lr_shape):
            pos = input_index_of_output(np.arange(n_hr), n_lr, n_hr)
            m = min(c.margin, (n_lr - 1) // 2)
            ok = np.flatnonzero((pos >= m - 0.5) & (pos <= n_lr - m - 0.5))
            idx.append(ok if len(ok) else np.arange(n_hr))
        picks = [self.rng.choice(ix, size=c.points) for ix in idx]
        coords = np.stack([normalized_centres(n)[picks[k]] for k, n in enumerate(hr_shape)], axis=1)
        dec = np.stack([decoder_axis_coords(lr_shape[k], n, 0, n, c.coords, c.feature_scale)[picks[k]]
                        for k, n in enumerate(hr_shape)], axis=1)
        target = hr[picks[0], picks[1], picks[2]]
        base = windowed_sinc.bases_at_picks(lr, hr_shape, picks, c.base)
        return (lr, coords.astype(np.float32), dec.astype(np.float32), target.astype(np.float32), base.astype(np.float32),
                np.stack(picks, axis=1).astype(np.int64), hr_shape)

    def batch(self, n: int) -> PairBatch:
        """``n`` pairs in one layout (so the patches stack)."""
        layout = self._layout()
        samples = [self._sample(*layout) for _ in range(n)]
        return PairBatch(
            lr=np.stack([s[0] for s in samples])[:, None], coords=np.stack([s[1] for s in samples]),
            dec=np.stack([s[2] for s in samples]), target=np.stack([s[3] for s in samples])[..., None],
            base=np.stack([s[4] for s in samples]), picks=np.stack([s[5] for s in samples]),
            hr_shape=tuple(samples[0][6]),
        )


@dataclass
class PairBatch:
    """A batch of pairs: LR patches (n,1,l0,l1,l2), the supervised HR voxels of each patch as
    network coordinates (n,K,3) and as integer indices into its HR grid ``hr_shape`` (n,K,3),
    their decoder coordinates (n,K,3), targets and residual bases (n,K,C)."""

    lr: np.ndarray
    coords: np.ndarray
    dec: np.ndarray
    target: np.ndarray
    base: np.ndarray
    picks: np.ndarray
    hr_shape: tuple[int, ...]
