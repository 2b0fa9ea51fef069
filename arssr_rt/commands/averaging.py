"""Options that average several estimates (upsample, batch, evaluate): ``--tta N`` (and its older
spelling ``--adapt-tta N``, one setting) and ``--ensemble MODEL``."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..errors import InputError

TTA_HELP = ("Average N inference passes (1, 2, 4 or 8) over flips of the input, each undone: 2 = the plain pass + the flip of "
            "the most up-sampled axis. Each pass costs one up-sampling. Default 1; with --adapt 2, over the flips / in-plane swap it adapted under.")


def tta_option() -> Optional[int]:
    return typer.Option(None, "--tta", help=TTA_HELP)


def resolve_passes(tta: Optional[int], adapt_tta: Optional[int], adapting: bool) -> tuple[int, Optional[int]]:
    """(passes of a plain run, passes of an adapted run or None = the adaptation's default).
    With --adapt, --tta and --adapt-tta mean the same; both, disagreeing, is an error."""
    from ..tta import check_passes

    if tta is not None:
        check_passes(tta)
    if adapting:
        if tta is not None and adapt_tta is not None and tta != adapt_tta:
            raise InputError(f"--tta {tta} and --adapt-tta {adapt_tta} disagree: they are the same setting, give one")
        return 1, adapt_tta if adapt_tta is not None else tta
    return tta if tta is not None else 1, None


ENSEMBLE_HELP = ("Average this model's output with --model's (repeatable; e.g. --ensemble bandlimited: measured within "
                 "0.03 dB of the better of the two or above both on 14 of 18 held-out cases). Each model costs one up-sampling.")


def ensemble_option() -> Optional[List[str]]:
    return typer.Option(None, "--ensemble", help=ENSEMBLE_HELP)


def check_averaging(plain_passes: int, ensemble: Optional[List[str]], adapt: bool, interp: Optional[str]) -> tuple[str, ...]:
    """The extra models, or a one-line refusal where averaging does not apply: both options
    average model outputs, so neither goes with --interp; --ensemble not with --adapt."""
    if interp not in (None, "model") and plain_passes != 1:
        raise InputError(f"--tta averages model passes; it does not apply to --interp {interp}")
    if not ensemble:
        return ()
    if adapt:
        raise InputError("--ensemble averages fixed models; it does not go with --adapt (adapt one model)")
    if interp not in (None, "model"):
        raise InputError(f"--ensemble averages models; it does not apply to --interp {interp}")
    return tuple(ensemble)
