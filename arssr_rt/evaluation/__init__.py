"""Evaluation against the classical baselines (tricubic, zero-filled k-space sinc): metrics, the per-volume runner and reports.

``arssr-rt evaluate`` and training validation both use these functions, so a number in the
README, in a model card and in a training log means the same thing.
"""

from .case import DegradationSpec, evaluate_case
from .metrics import head_mask, psnr, ssim3d, ssim_map

__all__ = ["DegradationSpec", "evaluate_case", "head_mask", "psnr", "ssim3d", "ssim_map"]
