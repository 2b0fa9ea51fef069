"""Evaluation against the tricubic baseline: metrics, the per-volume runner and reports.

``arssr-rt evaluate`` and training validation both use these functions, so a number in the
README, in a model card and in a training log means the same thing.
"""

from .metrics import head_mask, psnr, ssim3d, ssim_map

__all__ = ["head_mask", "psnr", "ssim3d", "ssim_map"]
