"""Loss Change Allocation (Lan et al. 2019): each parameter's share of a run's eval-loss change.

Along a training path ``theta_0 -> theta_T`` the change of the eval loss is a path integral,
``L(theta_T) - L(theta_0) = sum_t int grad L(theta(tau)) . d theta``, which splits exactly over
parameters: ``A_p = sum_t int grad_p L . d theta_p``. Here the path is cut into segments (one
per recorded interval of ``every`` optimizer steps, taken as straight lines from ``theta_a`` to
``theta_b``), and each segment's integral is a quadrature over three gradients of the eval
loss: at ``theta_a``, at the midpoint, at ``theta_b``. With ``delta = theta_b - theta_a`` and the
three dot products ``d0 = g_a . delta``, ``dm = g_mid . delta``, ``d1 = g_b . delta`` of one
parameter (:func:`dots`), the rules are

- ``trapezoid``: ``(d0 + d1) / 2``
- ``midpoint``: ``dm``
- ``simpson``: ``(d0 + 4 dm + d1) / 6``

Every rule is linear in the dot products, so a record keeps their running sums per parameter
(:class:`AttributionRecord`) and any rule is read off at the end. Its error is *measured*, not
assumed: the losses at both ends of each segment are measured too, and the residual
``(L_b - L_a) - sum_p A_p`` is what the rule leaves unexplained (:func:`residuals`).
A negative ``A_p`` means the parameter's updates lowered the eval loss.

Pure: tensors and numbers in, numbers out; the SFT hook that records a run lives in
:mod:`deadzone.training.attribution`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch

from deadzone.errors import DeadzoneError

# weights of (d0, dm, d1) in each rule
RULES: dict[str, tuple[float, float, float]] = {
    "trapezoid": (0.5, 0.0, 0.5),
    "midpoint": (0.0, 1.0, 0.0),
    "simpson": (1 / 6, 4 / 6, 1 / 6),
}
DEFAULT_RULE = "simpson"


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise DeadzoneError(f"unknown quadrature rule {rule!r}; known: {', '.join(RULES)}")
    return rule


def dots(grads: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{name: grads[name] . delta[name]}`` in float64, over the names of ``delta``."""
    return {n: float(torch.vdot(grads[n].double().flatten(), d.double().flatten()))
            for n, d in delta.items()}  # fmt: skip


def apply_rule(d: tuple[float, float, float] | list[float], rule: str) -> float:
    """The integral of one segment (or a sum of segments) from its dot products ``(d0, dm, d1)``."""
    w0, wm, w1 = RULES[check_rule(rule)]
    return w0 * d[0] + wm * d[1] + w1 * d[2]


@dataclass
class Segment:
    """One stretch of the path: optimizer steps ``start`` to ``end``, the eval losses measured at
    both ends, and the sums over parameters of its dot products ``(d0, dm, d1)``."""

    start: int
    end: int
    loss_start: float
    loss_end: float
    total: list[float]

    def residual(self, rule: str) -> float:
        """Measured loss change minus the rule's integral of it."""
        return (self.loss_end - self.loss_start) - apply_rule(self.total, rule)


@dataclass
class AttributionRecord:
    """What one run recorded: per parameter the running sums of ``(d0, dm, d1)`` over segments
    (``dots``), the segments, and from the training gradients of every step the sums of each
    parameter's squared gradient (``grad_sq``) and of ``|grad . weight|`` (``grad_weight``) over
    ``grad_steps[name]`` steps. ``seconds``: time spent recording (wall clock). JSON-ready."""

    rule: str = DEFAULT_RULE
    every: int = 1
    eval_batches: int = 0
    dots: dict[str, list[float]] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    grad_sq: dict[str, float] = field(default_factory=dict)
    grad_weight: dict[str, float] = field(default_factory=dict)
    grad_steps: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> AttributionRecord:
        segments = [Segment(**s) for s in d.get("segments", ())]
        return cls(**{**d, "segments": segments})

    def add_segment(self, segment: Segment, per_param: Mapping[str, tuple]) -> None:
        self.segments.append(segment)
        for name, d in per_param.items():
            running = self.dots.setdefault(name, [0.0, 0.0, 0.0])
            for i in range(3):
                running[i] += d[i]

    @property
    def loss_change(self) -> float:
        """Measured eval-loss change over the recorded path (last end minus first start)."""
        if not self.segments:
            raise DeadzoneError("the attribution record holds no segment: no step was recorded")
        return self.segments[-1].loss_end - self.segments[0].loss_start

    def allocation(self, rule: str | None = None) -> dict[str, float]:
        """``{parameter: A_p}`` under ``rule`` (default: the record's)."""
        rule = rule or self.rule
        return {n: apply_rule(d, rule) for n, d in self.dots.items()}

    def cost_fraction(self, run_seconds: float) -> float:
        """The time spent recording as a share of the run's (which includes it)."""
        return self.seconds / run_seconds if run_seconds > 0 else float("nan")


@dataclass(frozen=True)
class Residuals:
    """What a rule leaves unexplained: ``total`` = measured change minus the sum of every
    ``A_p``; ``absolute`` = the sum over segments of each segment's residual, in absolute value
    (no cancellation between segments); ``change``: the measured change itself; ``moved``: the
    sum over segments of each segment's measured change in absolute value."""

    rule: str
    change: float
    total: float
    absolute: float
    moved: float

    @property
    def relative(self) -> float:
        """``absolute`` as a share of ``moved`` (a net change near zero would make any error look
        large); inf when the loss never moved."""
        return self.absolute / self.moved if self.moved else float("inf")


def residuals(record: AttributionRecord, rule: str | None = None) -> Residuals:
    rule = check_rule(rule or record.rule)
    per_segment = [s.residual(rule) for s in record.segments]
    moved = sum(abs(s.loss_end - s.loss_start) for s in record.segments)
    return Residuals(rule, record.loss_change, sum(per_segment), sum(map(abs, per_segment)), moved)


def per_site(values: Mapping[str, float], sites: Iterable) -> dict[str, float | None]:
    """``{site: value of its parameter}`` (objects with ``name`` and ``param_name``; None for a
    parameter not recorded, e.g. one that never moved)."""
    return {s.name: values.get(s.param_name) for s in sites}


def share_of_decrease(record: AttributionRecord, sites: Iterable) -> dict[str, float | None]:
    """Each site's share of the eval-loss decrease, ``-A_s / (L_0 - L_T)``: 0.1 means its own
    updates made a tenth of the decrease. Refused when the run did not lower the eval loss."""
    decrease = -record.loss_change
    if not decrease > 0:
        raise DeadzoneError(
            f"the run did not lower its eval loss ({-decrease:+.4g} nats): a share of the "
            "decrease is undefined"
        )
    return {n: None if a is None else -a / decrease
            for n, a in per_site(record.allocation(), sites).items()}  # fmt: skip


def mean_per_step(sums: Mapping[str, float], steps: Mapping[str, int]) -> dict[str, float]:
    """Sums over steps divided by each parameter's count of steps."""
    return {n: v / steps[n] for n, v in sums.items() if steps.get(n)}
