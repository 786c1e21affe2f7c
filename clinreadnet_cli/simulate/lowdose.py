"""One source slice -> its low-dose / sparse-view versions over a dose x views grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import measures
from .physics import ParallelScanner, hu_to_mu, mu_to_hu, reduce_dose, view_subset

I0_REFERENCE = 1e5  # photons per detector bin and view for the noise calibration scan
I0_LIMITS = (1e4, 1e8)


@dataclass(frozen=True)
class Acquisition:
    """How each simulated slice is scanned. ``views`` counts out of ``full_views`` per 180 degrees."""

    doses: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)
    views: tuple[int, ...] = (1000, 720, 360, 180)
    full_views: int = 1000
    fbp_filter: str = "ram-lak"
    electronic_sd: float = 10.0  # detector electronic noise, photon-count units
    default_i0: float = 1e6  # used when a slice has too little soft tissue to calibrate on
    # True: add what dose and views change (the FBP difference from the full-dose, full-view
    # reconstruction) to the source, so its own resolution and noise texture are kept and
    # (1.0, full_views) is the source itself. False: the FBP reconstruction as it comes, which
    # also carries the projector's slight blur.
    add_to_source: bool = True

    def __post_init__(self):
        if any(not 0.0 < d <= 1.0 for d in self.doses):
            raise ValueError(f"dose fractions must lie in (0, 1], got {self.doses}")
        if any(not 1 <= v <= self.full_views for v in self.views):
            raise ValueError(f"view counts must lie in 1..{self.full_views}, got {self.views}")


@dataclass
class SimulatedSlice:
    i0: float  # photons per bin and view at the source's dose, as calibrated
    source_noise_hu: float
    images: dict[tuple[float, int], np.ndarray] = field(default_factory=dict)  # (dose, views) -> HU


def calibrate_i0(scanner: ParallelScanner, line_integrals: np.ndarray, source_noise_hu: float,
                 tissue: np.ndarray, acquisition: Acquisition, rng: np.random.Generator) -> float:
    """Photon flux at which this reconstruction's quantum noise equals the noise measured in the source.

    Reconstructed noise variance scales as 1 / i0: reconstruct pure quantum noise for a reference
    flux (log-domain variance exp(p) / i0) and scale the flux by (sigma_ref / sigma_source)^2.
    """
    if not np.isfinite(source_noise_hu) or source_noise_hu <= 0:
        return acquisition.default_i0
    noise = rng.standard_normal(line_integrals.shape) * np.sqrt(np.exp(line_integrals) / I0_REFERENCE)
    noise_hu = mu_to_hu(scanner.reconstruct(noise.astype(np.float32))) + 1000.0  # noise only, no offset
    reference_sd = measures.noise_sd_hu(noise_hu, tissue)
    return float(np.clip(I0_REFERENCE * (reference_sd / source_noise_hu) ** 2, *I0_LIMITS))


def simulate_slice(hu: np.ndarray, pixel_mm: float, acquisition: Acquisition,
                   rng: np.random.Generator) -> SimulatedSlice:
    """Forward-project the source once at full views, reduce the dose in the projections,
    subsample the views, and reconstruct every grid point with FBP, in HU (added to the source as
    a difference image when ``acquisition.add_to_source``)."""
    scanner = ParallelScanner(hu.shape, pixel_mm, acquisition.full_views, acquisition.fbp_filter)
    line_integrals = scanner.project(hu_to_mu(hu))
    tissue = measures.tissue_mask(hu)
    source_noise = measures.noise_sd_hu(hu, tissue)
    i0 = calibrate_i0(scanner, line_integrals, source_noise, tissue, acquisition, rng)
    result = SimulatedSlice(i0=i0, source_noise_hu=source_noise)
    by_dose = reduce_dose(line_integrals, acquisition.doses, i0, acquisition.electronic_sd, rng)
    reference = mu_to_hu(scanner.reconstruct(line_integrals)) if acquisition.add_to_source else None
    for dose in acquisition.doses:
        for views in acquisition.views:
            indices = view_subset(acquisition.full_views, views)
            image = mu_to_hu(scanner.reconstruct(by_dose[dose], indices))
            result.images[(dose, views)] = image if reference is None else hu + (image - reference)
    return result
