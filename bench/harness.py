"""Side-by-side timing: contenders of one comparison run alternately, medians compared.

Every sample of every contender is taken in the same run, interleaved (the order
rotates each round), so a noisy neighbour on a shared machine slows all of them
alike; ratios of medians are what the report trusts, never absolute figures.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Contender:
    """One way of doing the comparison's work.

    ``run`` is timed; ``setup`` (before each sample) and ``check`` (given what
    ``run`` returned; raises ``AssertionError`` when it is wrong) are not.
    """

    name: str
    run: Callable[[], Any]
    role: str = "marketstore"  # marketstore | reference | sqlalchemy | peewee | pandas
    setup: Callable[[], None] | None = None
    check: Callable[[Any], None] | None = None
    note: str = ""
    times: list[float] = field(default_factory=list)  # seconds per operation, one per sample
    inner: int = 1


@dataclass
class Target:
    """``contender`` vs ``reference`` must satisfy ``kind`` (as the targets are worded).

    ``speed>=``: reference time / contender time >= value (throughput ratio).
    ``time<=``:  contender time / reference time <= value.
    """

    contender: str
    reference: str
    kind: str
    value: float
    label: str = ""

    def ratio(self, medians: dict[str, float]) -> float | None:
        mine, ref = medians.get(self.contender), medians.get(self.reference)
        if not mine or not ref:
            return None
        return ref / mine if self.kind == "speed>=" else mine / ref

    def met(self, medians: dict[str, float]) -> bool | None:
        ratio = self.ratio(medians)
        if ratio is None:
            return None
        return ratio >= self.value if self.kind == "speed>=" else ratio <= self.value


@dataclass
class Finding:
    """A figure judged on its own (scaling flatness, peak memory), not a ratio of two contenders."""

    label: str
    value: float
    goal: str  # e.g. "<= 1.2", "< 150 MB"
    met: bool

    def to_dict(self) -> dict:
        return {"label": self.label, "value": self.value, "goal": self.goal, "met": self.met}


@dataclass
class Comparison:
    """Contenders measured side by side against ``baseline`` (a contender name)."""

    case: str
    title: str
    units: int  # rows (or transactions) one operation handles; 0 when not meaningful
    unit: str
    baseline: str
    contenders: list[Contender]
    targets: list[Target] = field(default_factory=list)
    warmup: bool = True  # heavy writes skip it: every sample is already a full load
    sample_seconds: float = 0.25  # light operations repeat inside a sample up to this long
    min_repeat: int = 0  # samples per contender at least (small differences need more), except --quick
    findings: list[Finding] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        return {c.name: statistics.median(c.times) for c in self.contenders if c.times}

    def to_dict(self) -> dict:
        medians = self.medians()
        base = medians.get(self.baseline)
        return {
            "case": self.case,
            "title": self.title,
            "baseline": self.baseline,
            "units": self.units,
            "unit": self.unit,
            "contenders": [
                {
                    "name": c.name,
                    "role": c.role,
                    "note": c.note,
                    "inner": c.inner,
                    "times": c.times,
                    "median": medians.get(c.name),
                    "per_second": (self.units / medians[c.name]) if self.units and medians.get(c.name) else None,
                    "time_ratio": (medians[c.name] / base) if base and medians.get(c.name) else None,
                }
                for c in self.contenders
            ],
            "targets": [
                {
                    "contender": t.contender,
                    "reference": t.reference,
                    "kind": t.kind,
                    "value": t.value,
                    "label": t.label,
                    "ratio": t.ratio(medians),
                    "met": t.met(medians),
                }
                for t in self.targets
            ],
            "findings": [f.to_dict() for f in self.findings],
        }


def _sample(contender: Contender) -> float:
    if contender.setup:
        contender.setup()
    gc.collect()
    started = time.perf_counter()
    for _ in range(contender.inner):
        result = contender.run()
    elapsed = time.perf_counter() - started
    if contender.check:
        contender.check(result)
    return elapsed / contender.inner


def measure(comparison: Comparison, repeat: int, log: Callable[[str], None] = lambda _: None,
            quick: bool = False) -> Comparison:
    """Fill every contender's ``times`` with ``repeat`` alternated samples.

    A warm-up round (checked, untimed) also sizes ``inner`` so that a light
    operation's sample lasts about ``sample_seconds`` (one operation when
    ``quick``). A failed check raises.
    """
    contenders = comparison.contenders
    if comparison.warmup:
        for c in contenders:
            c.inner = 1
            once = _sample(c)
            if not quick:
                c.inner = max(1, min(10_000, math.ceil(comparison.sample_seconds / max(once, 1e-6))))
    for round_ in range(repeat):
        shift = round_ % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            c.times.append(_sample(c))
            log(f"  {comparison.case}: {c.name} {c.times[-1]:.4g} s")
    return comparison
