"""Frozen, validated configuration for the mixing graph functions.

Names and meanings follow timm's ``Mixup`` (``mixup_alpha``, ``cutmix_alpha``,
``cutmix_minmax``, ``prob``, ``switch_prob``, ``mode``, ``correct_lam``,
``label_smoothing``, ``num_classes``) so that a timm user reads them as before.
The defaults differ where the project's purpose asks for it: CutMix on,
MixUp off, per-sample draws (``mode="elem"``) and no label smoothing.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from typing import Any


class MixMode(str, enum.Enum):
    """How random draws are shared across a batch (timm's ``mode``).

    * ``BATCH``: one decision, lambda and box for the whole batch; each sample
      is mixed with a random other sample (the paper's code).
    * ``PAIR``: the batch is flipped (sample ``i`` pairs with ``N-1-i``, as in
      timm) and each pair shares its draws. Needs full batches, which DALI
      readers always produce; in an odd batch the middle sample is left unmixed.
    * ``ELEM``: every sample draws its own partner, decision, lambda and box.
    """

    BATCH = "batch"
    PAIR = "pair"
    ELEM = "elem"


def _check_range(
    name: str, value: float, low: float, high: float, *, high_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (value >= high if high_open else value > high):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """What mixing to apply, with timm's names and meanings.

    Attributes:
        num_classes: number of classes; targets have shape ``[num_classes]``.
        mixup_alpha: Beta(alpha, alpha) parameter of MixUp; 0 turns MixUp off.
        cutmix_alpha: Beta(alpha, alpha) parameter of CutMix; 0 turns CutMix off.
        cutmix_minmax: ``(min, max)`` fractions of each side for the CutMix box,
            drawn uniformly instead of from lambda (turns CutMix on, as in timm).
        prob: probability of mixing a sample (elem/pair) or a batch (batch).
        switch_prob: with both CutMix and MixUp on, probability of CutMix.
        mode: ``"batch"``, ``"pair"`` or ``"elem"``; see :class:`MixMode`.
        correct_lam: label weight = exact pasted-pixel fraction of the clipped
            box (the paper's code and timm's default). ``False`` keeps the drawn
            lambda, so labels no longer match pixels when the box is clipped.
        label_smoothing: timm's smoothing: off = s / num_classes, on = 1 - s + off.
    """

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 1.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: MixMode = MixMode.ELEM
    correct_lam: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ValueError(f"num_classes must be an int >= 1, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        _check_range("mixup_alpha", self.mixup_alpha, 0.0, math.inf)
        _check_range("cutmix_alpha", self.cutmix_alpha, 0.0, math.inf)
        _check_range("prob", self.prob, 0.0, 1.0)
        _check_range("switch_prob", self.switch_prob, 0.0, 1.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        if not isinstance(self.correct_lam, bool):
            raise ValueError(f"correct_lam must be True or False, got {self.correct_lam!r}")
        try:
            object.__setattr__(self, "mode", MixMode(self.mode))
        except ValueError:
            allowed = ", ".join(m.value for m in MixMode)
            raise ValueError(f"mode must be one of {allowed}, got {self.mode!r}") from None
        if self.cutmix_minmax is not None:
            minmax = tuple(self.cutmix_minmax)
            if len(minmax) != 2:
                raise ValueError(f"cutmix_minmax must be (min, max), got {self.cutmix_minmax!r}")
            for value in minmax:
                _check_range("cutmix_minmax", value, 0.0, 1.0)
            if minmax[0] > minmax[1]:
                raise ValueError(f"cutmix_minmax must have min <= max, got {self.cutmix_minmax!r}")
            object.__setattr__(self, "cutmix_minmax", (float(minmax[0]), float(minmax[1])))

    @property
    def cutmix_enabled(self) -> bool:
        return self.cutmix_alpha > 0 or self.cutmix_minmax is not None

    @property
    def mixup_enabled(self) -> bool:
        return self.mixup_alpha > 0

    @property
    def enabled(self) -> bool:
        """True when any mixing can happen (``prob > 0`` and a method is on)."""
        return self.prob > 0 and (self.cutmix_enabled or self.mixup_enabled)

    @property
    def cutmix_share(self) -> float:
        """Probability that a mixed sample uses CutMix rather than MixUp."""
        if not self.cutmix_enabled:
            return 0.0
        return self.switch_prob if self.mixup_enabled else 1.0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mode"] = self.mode.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MixConfig field(s): {', '.join(unknown)}")
        return cls(**data)
