"""Scan-specific adaptation for thick-slice scans (``--adapt``), SMORE/ECLARE style on ArSSR.

A 2-D multi-slice scan is fine in-plane and thick through-plane. Degrading its own in-plane
data along one in-plane axis with the slice profile gives training pairs whose LR looks like
the through-plane direction; fine-tuning a copy of the bundle's model on them teaches it this
scanner's, contrast's and profile's through-plane mapping, which the continuous decoder then
applies through-plane at any output spacing.

- ``plan``: which axis is thick, the ratio, the slice profile (numpy only, runs before work);
- ``pairs``: training pairs drawn from the normalised scan (numpy only);
- ``finetune`` / ``session``: the torch side (imported lazily: the core install has no torch).
"""

from .plan import AdaptOptions, AdaptPlan, check_adapt_options, plan_adaptation

__all__ = ["AdaptOptions", "AdaptPlan", "check_adapt_options", "plan_adaptation"]
