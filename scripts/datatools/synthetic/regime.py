"""Regimes of the synthetic generator: how much of what real difference images carry besides the
facial action (head pose and motion, blinks, low amplitude, pool pairs without any action).

``default`` is the generator's original data: the face is almost still between onset and apex,
so the difference image holds little but the action. ``realistic`` adds what real onset-apex
pairs have: head motion between the two frames (difference energy along every edge of the face,
in every class), blinks in every class, face position, scale and roll that vary from sample to
sample, actions of low amplitude, and a pool in which a third of the pairs has no action. Every
field is also a flag of `scripts/data/make_synthetic_casme3.py` that overrides the preset.

Lengths in pixels are stated at 72 px (`render.REFERENCE_SIZE`) and scale with the image size.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from util import NON_NEGATIVE, PROBABILITY


def _knob(default: float, help_text: str, kind: Callable[[str], Any] = NON_NEGATIVE) -> float:
    """A field with its help text and its flag's type (`util` range types: NON_NEGATIVE, PROBABILITY)."""
    return field(default=default, metadata={"help": help_text, "type": kind})


@dataclass(frozen=True)
class Regime:
    """Nuisance levels of one synthetic dataset (see the module docstring)."""

    position_jitter_px: float = _knob(0.6, "std of the face position from pair to pair, px at 72 px")
    scale_jitter_mm: float = _knob(3.0, "std of the head distance from pair to pair, mm (about 700 mm away)")
    roll_jitter_deg: float = _knob(1.0, "std of the head roll from pair to pair, degrees")
    head_motion_px: float = _knob(0.05, "std of the head translation between onset and apex, px at 72 px")
    head_roll_deg: float = _knob(0.06, "std of the head roll between onset and apex, degrees")
    head_dz_mm: float = _knob(0.3, "std of the head movement along the optical axis between onset and apex, mm")
    blink_rate: float = _knob(0.0, "share of pairs, of every class and of the pool, with a blink between onset "
                                    "and apex (eyes closing or opening)", PROBABILITY)
    amplitude: float = _knob(1.0, "scale of every facial action's amplitude (1: about 1 px at 72 px)")
    low_intensity_share: float = _knob(0.4, "share of pool pairs without facial action (noise, head motion and "
                                            "blinks only)", PROBABILITY)


REGIMES: dict[str, Regime] = {
    "default": Regime(),
    "realistic": Regime(position_jitter_px=3.0, scale_jitter_mm=25.0, roll_jitter_deg=4.0, head_motion_px=0.6,
                        head_roll_deg=0.5, head_dz_mm=3.0, blink_rate=0.4, amplitude=0.6,
                        low_intensity_share=1 / 3),
}


def knob_names() -> list[str]:
    """Every field of `Regime`, in declaration order."""
    return [f.name for f in fields(Regime)]


def knob_help(name: str) -> str:
    """The help text of field `name`."""
    return next(f.metadata["help"] for f in fields(Regime) if f.name == name)


def knob_type(name: str) -> Callable[[str], Any]:
    """The argparse type of field `name`'s flag: the range its values must lie in."""
    return next(f.metadata["type"] for f in fields(Regime) if f.name == name)


def make_regime(name: str, **overrides: float | None) -> Regime:
    """Preset `name` with the fields of `overrides` that are not None replaced."""
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r} (known: {', '.join(REGIMES)})")
    return replace(REGIMES[name], **{k: v for k, v in overrides.items() if v is not None})
