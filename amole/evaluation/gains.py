"""Each site's personalized model against its untrained one, on the same test examples: the product's claim,
checked per site. The untrained scores are round 0 (``federation.eval_round0``); the personalized ones are the
last round's (chosen by no test score, unlike a best round).

The two scores come from the same examples, so a paired standard error would be smaller; per-example values
are not kept, so the difference's standard error is taken as ``sqrt(se0² + se1²)``, which overstates it. A site
is *ahead* when the difference exceeds two of those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Gain:
    client: str
    task: str
    metric: str
    untrained: float
    untrained_se: float
    trained: float
    trained_se: float

    @property
    def diff(self) -> float:
        return self.trained - self.untrained

    @property
    def diff_se(self) -> float:
        return math.hypot(self.untrained_se, self.trained_se)

    @property
    def verdict(self) -> str:
        if not (math.isfinite(self.diff) and math.isfinite(self.diff_se)):
            return "no standard error"
        if self.diff > 2 * self.diff_se:
            return "ahead"
        return "behind" if self.diff < -2 * self.diff_se else "within noise"


def site_gains(metrics: dict[str, Any]) -> list[Gain]:
    """One row per client scored both in round 0 and in the last round, in client order."""
    before = (metrics.get("round0") or {}).get("clients", {})
    rounds = metrics.get("rounds") or []
    after = rounds[-1].get("clients", {}) if rounds else {}
    out = []
    for client in sorted(set(before) & set(after), key=lambda c: (len(c), c)):
        b, a = before[client], after[client]
        out.append(Gain(client, str(a.get("task", b.get("task", "?"))), str(a.get("metric", b.get("metric", "?"))),
                        float(b["score"]), float(b.get("score_se", math.nan)), float(a["score"]),
                        float(a.get("score_se", math.nan))))
    return out


def _pm(value: float, se: float) -> str:
    return f"{value:.3f} ± {se:.3f}" if math.isfinite(se) else f"{value:.3f}"


def gains_markdown(gains: list[Gain], last_round: int) -> list[str]:
    """The table of a run report: untrained vs personalized (round ``last_round``) per site, and a verdict."""
    if not gains:
        return []
    ahead = sum(g.verdict == "ahead" for g in gains)
    lines = ["## Each site against its untrained model", "",
             f"Same test examples; ± one standard error. **{ahead} of {len(gains)} sites are ahead of their "
             f"untrained model by more than two standard errors** (of the difference, taken unpaired: "
             f"conservative).", "",
             f"| client | task | metric | untrained (round 0) | personalized (round {last_round}) | difference | |",
             "|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {g.client} | {g.task} | {g.metric} | {_pm(g.untrained, g.untrained_se)} | "
              f"{_pm(g.trained, g.trained_se)} | {_pm(g.diff, g.diff_se)} | {g.verdict} |" for g in gains]
    return [*lines, ""]


def gains_text(gains: list[Gain]) -> list[str]:
    """The same table for a terminal (fixed-width columns)."""
    if not gains:
        return []
    width = max(len(g.task) for g in gains)
    head = f"{'site':>4}  {'task':<{width}}  {'untrained':>15}  {'personalized':>15}  {'difference':>16}"
    return [head, *(f"{g.client:>4}  {g.task:<{width}}  {_pm(g.untrained, g.untrained_se):>15}  "
                    f"{_pm(g.trained, g.trained_se):>15}  {_pm(g.diff, g.diff_se):>16}  {g.verdict}"
                    for g in gains)]
