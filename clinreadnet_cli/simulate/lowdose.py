"""One source slice -> its low-dose / sparse-view versions over a dose x views grid, reconstructed
two ways: added to the source (its own kernel and texture) and as a full FBP reconstruction
with a filter drawn per slice (other kernels' textures)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import measures
from .physics import (ParallelScanner, ReconGrid, check_filter, grid_name, hu_to_mu, mu_to_hu, reduce_dose,
                      view_subset)

I0_REFERENCE = 1e5  # photons per detector bin and view for the noise calibration scan
I0_LIMITS = (1e4, 1e8)
MODES = ("add-difference", "full", "both")


@dataclass(frozen=True)
class Acquisition:
    """How each simulated slice is scanned and reconstructed.

    ``views`` count out of ``full_views`` per 180 degrees. ``mode``: ``add-difference`` adds what
    dose and views change (the FBP difference from the full-dose, full-view reconstruction, with
    ``fbp_filter``) to the source, so its resolution and texture are kept and (1.0, full_views) is
    the source itself; ``full`` keeps the FBP reconstruction, with one of ``full_filters`` drawn
    per slice; ``both`` writes both from the same projections. The detector's electronic noise SD
    is drawn per slice, log-uniformly, from ``electronic_sd`` (low, high) photons.

    ``photon_budget`` (low, high), photons per bin and view, drawn per slice (log-uniform), sets
    the full dose of the full reconstructions as an absolute flux, as a scanner without tube
    current modulation gives it: a larger body is then noisier at the same protocol. Without it
    (the default) each slice's full dose is its source's own dose, the flux calibrated to the
    source's noise. A budget above that flux gives the source's dose (a simulation cannot take
    noise away).

    ``grids``: further grids (``ReconGrid``) each full reconstruction is also made on, from the same
    projections, as a scanner reconstructs one scan at another matrix or pixel size.
    """

    doses: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)
    views: tuple[int, ...] = (1000, 720, 360, 180)
    full_views: int = 1000
    fbp_filter: str = "ram-lak"
    full_filters: tuple[str, ...] = ("ram-lak",)
    electronic_sd: tuple[float, float] = (10.0, 10.0)
    default_i0: float = 1e6  # used when a slice has too little soft tissue to calibrate on
    mode: str = "add-difference"
    photon_budget: tuple[float, float] | None = None
    grids: tuple[ReconGrid, ...] = ()

    def __post_init__(self):
        if any(not 0.0 < d <= 1.0 for d in self.doses):
            raise ValueError(f"dose fractions must lie in (0, 1], got {self.doses}")
        if any(not 1 <= v <= self.full_views for v in self.views):
            raise ValueError(f"view counts must lie in 1..{self.full_views}, got {self.views}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        low, high = self.electronic_sd
        if not 0.0 <= low <= high:
            raise ValueError(f"electronic noise range must be 0 <= low <= high, got {self.electronic_sd}")
        if self.photon_budget is not None and not 0.0 < self.photon_budget[0] <= self.photon_budget[1]:
            raise ValueError(f"photon budget range must be 0 < low <= high, got {self.photon_budget}")
        if self.photon_budget is not None and self.mode == "add-difference":
            raise ValueError("a photon budget sets the full reconstructions' dose: use it with mode full or both")
        if self.grids and self.mode == "add-difference":
            raise ValueError("other grids are for full reconstructions: use them with mode full or both")
        if not self.full_filters:
            raise ValueError("full reconstructions need at least one FBP filter")
        for name in (self.fbp_filter, *self.full_filters):
            check_filter(name)

    @property
    def modes(self) -> tuple[str, ...]:
        return ("add-difference", "full") if self.mode == "both" else (self.mode,)

    def reconstructions(self) -> list[tuple[str, ReconGrid | None]]:
        """(mode, grid) of every image series of a slice; None is the source's own grid."""
        return [(mode, grid) for mode in self.modes
                for grid in ((None, *self.grids) if mode == "full" else (None,))]


@dataclass
class Reconstruction:
    mode: str  # add-difference | full
    fbp_filter: str
    dose: float
    views: int
    image: np.ndarray  # HU
    degradation_hu: float  # RMS in the body of image - reference (same mode, filter and grid)
    degradation: float  # degradation_hu / the source-dose quantum noise of that filter: the label's input
    noise_hu: float  # the classical noise figure in the soft tissue of its grid
    grid: str = ""  # the ReconGrid it was made on; "" for the source's own


@dataclass
class SimulatedSlice:
    i0: float  # photons per bin and view at the source's dose, as calibrated
    source_noise_hu: float
    electronic_sd: float
    full_dose_fraction: float = 1.0  # the full reconstructions' full dose, as a share of the source's
    images: list[Reconstruction] = field(default_factory=list)

    def image(self, dose: float, views: int, mode: str = "add-difference", grid: str = "") -> np.ndarray:
        return next(r.image for r in self.images if (r.mode, r.dose, r.views, r.grid) == (mode, dose, views, grid))


def calibrate_i0(scanner: ParallelScanner, line_integrals: np.ndarray, source_noise_hu: float,
                 tissue: np.ndarray, acquisition: Acquisition, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(flux at which this reconstruction's quantum noise equals the noise measured in the source,
    the log-domain quantum noise sinogram at ``I0_REFERENCE``).

    Reconstructed noise variance scales as 1 / i0: reconstruct pure quantum noise for a reference
    flux (log-domain variance exp(p) / i0) and scale the flux by (sigma_ref / sigma_source)^2.
    """
    noise = (rng.standard_normal(line_integrals.shape) * np.sqrt(np.exp(line_integrals) / I0_REFERENCE))
    noise = noise.astype(np.float32)
    if not np.isfinite(source_noise_hu) or source_noise_hu <= 0:
        return acquisition.default_i0, noise
    reference_sd = measures.noise_sd_hu(_noise_hu(scanner, noise, acquisition.fbp_filter), tissue)
    return float(np.clip(I0_REFERENCE * (reference_sd / source_noise_hu) ** 2, *I0_LIMITS)), noise


def _noise_hu(scanner: ParallelScanner, noise_sinogram: np.ndarray, fbp_filter: str,
              grid: ReconGrid | None = None) -> np.ndarray:
    """A noise-only sinogram reconstructed in HU (no -1000 offset)."""
    return mu_to_hu(scanner.reconstruct(noise_sinogram, fbp_filter=fbp_filter, grid=grid)) + 1000.0


def _draw_log_uniform(low: float, high: float, rng: np.random.Generator) -> float:
    """Log-uniform in [low, high] (uniform when it starts at 0); no draw for a fixed value."""
    if low == high:
        return low
    return float(math.exp(rng.uniform(math.log(low), math.log(high)))) if low > 0 else float(rng.uniform(0, high))


def _draw_filter(acquisition: Acquisition, rng: np.random.Generator) -> str:
    filters = acquisition.full_filters
    return filters[0] if len(filters) == 1 else filters[rng.integers(len(filters))]


def simulate_slice(hu: np.ndarray, pixel_mm: float, acquisition: Acquisition,
                   rng: np.random.Generator) -> SimulatedSlice:
    """Forward-project the source once at full views, reduce the dose in the projections,
    subsample the views, and reconstruct every grid point with FBP in each of the acquisition's
    modes, in HU, each with its degradation measured against the full-dose, full-view
    reconstruction of the same mode and filter."""
    scanner = ParallelScanner(hu.shape, pixel_mm, acquisition.full_views, acquisition.fbp_filter)
    line_integrals = scanner.project(hu_to_mu(hu))
    body, tissue = measures.body_mask(hu), measures.tissue_mask(hu)
    source_noise = measures.noise_sd_hu(hu, tissue)
    i0, calibration_noise = calibrate_i0(scanner, line_integrals, source_noise, tissue, acquisition, rng)
    electronic_sd, full_filter = _draw_log_uniform(*acquisition.electronic_sd, rng), _draw_filter(acquisition, rng)
    result = SimulatedSlice(i0=i0, source_noise_hu=source_noise, electronic_sd=electronic_sd)
    by_dose = reduce_dose(line_integrals, acquisition.doses, i0, electronic_sd, rng)
    full_by_dose = by_dose
    if acquisition.photon_budget is not None:
        result.full_dose_fraction = min(1.0, _draw_log_uniform(*acquisition.photon_budget, rng) / i0)
        if result.full_dose_fraction < 1.0:
            protocol = (1.0, *acquisition.doses)
            scaled = reduce_dose(line_integrals, tuple(result.full_dose_fraction * d for d in protocol), i0,
                                 electronic_sd, rng)
            full_by_dose = {d: scaled[result.full_dose_fraction * d] for d in protocol}
    for mode, grid in acquisition.reconstructions():
        fbp_filter = acquisition.fbp_filter if mode == "add-difference" else full_filter
        acquired = by_dose if mode == "add-difference" else full_by_dose
        # Degradation is measured against this mode's full-dose, full-view reconstruction on the
        # same grid (with a photon budget, the budget's own full dose: the protocol's reference, label 4).
        reference = mu_to_hu(scanner.reconstruct(acquired.get(1.0, line_integrals), fbp_filter=fbp_filter, grid=grid))
        # Another grid has its own body and tissue: found in its reference, as in the source on its own grid
        grid_body, grid_tissue = (body, tissue) if grid is None else (measures.body_mask(reference),
                                                                     measures.tissue_mask(reference))
        # The quantum noise this filter shows at the source's own dose on this grid: the unit of
        # degradation, so the same dose loss measures the same on every patient, kernel and grid.
        noise_unit = measures.rms_hu(_noise_hu(scanner, calibration_noise, fbp_filter, grid), grid_body) * math.sqrt(
            I0_REFERENCE / i0)
        for dose in acquisition.doses:
            for views in acquisition.views:
                if mode == "add-difference" and (dose, views) == (1.0, acquisition.full_views):
                    continue  # that is the source itself, written (or not) as such
                indices = view_subset(acquisition.full_views, views)
                image = mu_to_hu(scanner.reconstruct(acquired[dose], indices, fbp_filter=fbp_filter, grid=grid))
                difference = image - reference
                rms = measures.rms_hu(difference, grid_body)
                image = hu + difference if mode == "add-difference" else image
                result.images.append(Reconstruction(
                    mode=mode, fbp_filter=fbp_filter, dose=dose, views=views, image=image,
                    degradation_hu=rms, degradation=rms / noise_unit,
                    noise_hu=measures.noise_sd_hu(image, grid_tissue), grid=grid_name(grid)))
    return result


def degraded_in(hu: np.ndarray, pixel_mm: float, region: np.ndarray, dose: float, views: int,
                rng: np.random.Generator, full_views: int = 1000) -> np.ndarray:
    """``hu`` with the degradation of one acquisition (add-difference) added inside ``region`` only.

    Used to check where quality maps look: the rest of the slice keeps its own image.
    """
    acquisition = Acquisition(doses=tuple(sorted({1.0, dose})), views=tuple(sorted({full_views, views})),
                              full_views=full_views)
    degradation = simulate_slice(hu, pixel_mm, acquisition, rng).image(dose, views) - hu
    return hu + degradation * region
