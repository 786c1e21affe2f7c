"""The proxy label model: a 0-4 quality score for each simulated slice from how much its
acquisition degraded it. Physics-derived, not radiologists' scores.

degradation = RMS, inside the body, of (image - the full-dose, full-view reconstruction with the
              same mode and filter) / the quantum noise that filter shows at the source's own dose
score       = 4 x exp(-degradation / SCALE)

Measured against the same kernel's full-dose reconstruction, a kernel's texture is not a
degradation; measured in units of the source-dose noise, the same dose loss gives the same label
on a small and a large patient (pure quantum noise at dose d gives sqrt(1/d - 1) on every slice:
1.0 at 50 %, 1.73 at 25 %, 3.0 at 10 %); view-aliasing streaks and the electronic noise floor add
to it. SCALE puts 50 % dose at about 2.8, 25 % at 2.1 and 10 % at 1.3, the spread the earlier
SSIM labels had over the same grid (docs/simulation.md).
"""

from __future__ import annotations

import math
from typing import Mapping

SCALE = 2.8


def degradation_to_score(degradation: float) -> float:
    return float(4.0 * math.exp(-max(degradation, 0.0) / SCALE))


def monotone_scores(raw: Mapping[tuple[float, int], float]) -> dict[tuple[float, int], float]:
    """Scores over a (dose, views) grid made monotone: each point gets the lowest raw score of
    the points at least as good as it (dose and views both >=), so less dose or fewer views
    never scores better. With nested noise and view sets this rarely changes anything."""
    return {point: min(score for (d, v), score in raw.items() if d >= point[0] and v >= point[1])
            for point in raw}
