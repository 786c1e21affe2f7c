"""The LDCTIQAG2023 metrics (paper §4.2, Eq. 31-34), computed by scipy.stats."""

from __future__ import annotations

import math
from typing import Sequence

from scipy import stats


def correlation_metrics(predicted: Sequence[float], target: Sequence[float]) -> dict[str, float]:
    """PLCC (Pearson), SROCC (Spearman), KROCC (Kendall tau-b) and Score = |PLCC| + |SROCC| + |KROCC|.

    Undefined correlations (fewer than two images, or a constant side) come back as NaN.
    """
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predictions for {len(target)} targets")
    if len(predicted) < 2 or len(set(predicted)) < 2 or len(set(target)) < 2:
        nan = math.nan
        return {"plcc": nan, "srocc": nan, "krocc": nan, "score": nan}
    plcc = float(stats.pearsonr(predicted, target).statistic)  # Eq. 31
    srocc = float(stats.spearmanr(predicted, target).statistic)  # Eq. 32
    krocc = float(stats.kendalltau(predicted, target, variant="b").statistic)  # Eq. 33, ties counted
    return {"plcc": plcc, "srocc": srocc, "krocc": krocc, "score": abs(plcc) + abs(srocc) + abs(krocc)}  # Eq. 34
