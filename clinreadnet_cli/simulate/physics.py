"""CT acquisition physics for low-dose simulation: HU <-> attenuation, ASTRA projection and FBP,
and projection-domain dose reduction.

Geometry: 2-D parallel beam over 180 degrees, detector bin = pixel spacing, ASTRA's CPU
``linear`` projector (ASTRA's CPU FBP supports parallel beam only; fan beam would need CUDA).
Sinogram values are line integrals of mu (1/mm) x length (mm), so pixel spacing is honoured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import astra
import numpy as np

from ..patient_size import MU_WATER_PER_MM
FBP_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def check_filter(spec: str) -> tuple[str, float | None]:
    """``name`` or ``name:cutoff`` (cutoff in (0, 1], a fraction of the Nyquist frequency: a
    smoother kernel) -> (ASTRA filter name, cutoff); ValueError for anything else."""
    name, _, cutoff = spec.partition(":")
    if name not in FBP_FILTERS:
        raise ValueError(f"unknown FBP filter {spec!r}; choose from {', '.join(FBP_FILTERS)} (optionally :cutoff)")
    if not cutoff:
        return name, None
    try:
        value = float(cutoff)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise ValueError(f"FBP filter cutoff must be a number in (0, 1], got {spec!r}")
    return name, value


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation (1/mm); air and scanner padding below -1000 HU attenuate nothing."""
    return np.clip(mu_water * (1.0 + hu.astype(np.float32) / 1000.0), 0.0, None).astype(np.float32)


def mu_to_hu(mu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    return ((mu / mu_water - 1.0) * 1000.0).astype(np.float32)


def view_subset(full_views: int, views: int) -> np.ndarray:
    """Indices of ``views`` equally spaced angles out of ``full_views``; sparser sets are nested
    in denser ones when the counts halve (720 > 360 > 180), so streaks only ever add."""
    if not 1 <= views <= full_views:
        raise ValueError(f"view count {views} outside 1..{full_views}")
    return np.unique(np.round(np.arange(views) * full_views / views).astype(int) % full_views)


@dataclass(frozen=True)
class ReconGrid:
    """An FBP output grid centred on the scan's axis: ``size`` x ``size`` pixels of ``pixel_mm``, or
    (``pixel_mm`` None) of the source's field of view, so only the matrix changes."""

    size: int
    pixel_mm: float | None = None

    @classmethod
    def parse(cls, spec: str) -> "ReconGrid":
        """``SIZE`` or ``SIZE@MM`` (e.g. ``768``, ``512@0.9``); ValueError for anything else."""
        size, at, mm = spec.strip().partition("@")
        try:
            grid = cls(int(size), float(mm) if at else None)
        except ValueError:
            raise ValueError(f"reconstruction grid {spec!r}: expected SIZE or SIZE@MM (e.g. 768, 512@0.9)") from None
        if not 16 <= grid.size <= 4096 or (grid.pixel_mm is not None and not 0.05 <= grid.pixel_mm <= 5.0):
            raise ValueError(f"reconstruction grid {spec!r}: size must lie in 16..4096 and pixels in 0.05..5 mm")
        return grid

    def __str__(self) -> str:
        return f"{self.size}" if self.pixel_mm is None else f"{self.size}@{self.pixel_mm:g}"

    def spacing(self, field_of_view_mm: float) -> float:
        return field_of_view_mm / self.size if self.pixel_mm is None else self.pixel_mm


def grid_name(grid: ReconGrid | None) -> str:
    """How the manifest names a grid: ``str(grid)``, or "" for the source's own (None)."""
    return "" if grid is None else str(grid)


@dataclass
class ParallelScanner:
    """One slice size and pixel spacing; forward projection at full views, FBP from any subset,
    onto the source's grid or another (``ReconGrid``)."""

    shape: tuple[int, int]
    pixel_mm: float
    full_views: int = 1000
    fbp_filter: str = "ram-lak"

    def __post_init__(self):
        rows, cols = self.shape
        half_x, half_y = cols * self.pixel_mm / 2, rows * self.pixel_mm / 2
        self._vol = astra.create_vol_geom(rows, cols, -half_x, half_x, -half_y, half_y)
        self.detectors = int(math.ceil(math.hypot(rows, cols))) + 4  # the whole square, any angle
        self.angles = np.linspace(0.0, np.pi, self.full_views, endpoint=False)

    def _geometry(self, indices: np.ndarray | None = None):
        angles = self.angles if indices is None else self.angles[indices]
        return astra.create_proj_geom("parallel", self.pixel_mm, self.detectors, angles)

    def project(self, mu: np.ndarray) -> np.ndarray:
        """Line integrals (views, detectors) at all ``full_views`` angles."""
        projector = astra.create_projector("linear", self._geometry(), self._vol)
        try:
            sino_id, sino = astra.create_sino(np.ascontiguousarray(mu, np.float32), projector)
            astra.data2d.delete(sino_id)
        finally:
            astra.projector.delete(projector)
        return sino.astype(np.float32)

    def _volume(self, grid: ReconGrid | None):
        if grid is None:
            return self._vol
        half = grid.size * grid.spacing(max(self.shape) * self.pixel_mm) / 2
        return astra.create_vol_geom(grid.size, grid.size, -half, half, -half, half)

    def reconstruct(self, sinogram: np.ndarray, indices: np.ndarray | None = None,
                    fbp_filter: str | None = None, grid: ReconGrid | None = None) -> np.ndarray:
        """FBP of the rows ``indices`` of a full-view sinogram (all rows when None) -> mu, with
        ``fbp_filter`` (``name`` or ``name:cutoff``; default the scanner's), onto ``grid`` (default
        the source's)."""
        name, cutoff = check_filter(fbp_filter or self.fbp_filter)
        option = {"FilterType": name} if cutoff is None else {"FilterType": name, "FilterD": cutoff}
        geometry = self._geometry(indices)
        rows = sinogram if indices is None else sinogram[indices]
        volume = self._volume(grid)
        projector = astra.create_projector("linear", geometry, volume)
        sino_id = astra.data2d.create("-sino", geometry, np.ascontiguousarray(rows, np.float32))
        rec_id = astra.data2d.create("-vol", volume)
        config = astra.astra_dict("FBP")
        config.update(ProjectorId=projector, ProjectionDataId=sino_id, ReconstructionDataId=rec_id,
                      option=option)
        algorithm = astra.algorithm.create(config)
        try:
            astra.algorithm.run(algorithm)
            return astra.data2d.get(rec_id).astype(np.float32)
        finally:
            astra.algorithm.delete(algorithm)
            astra.data2d.delete([sino_id, rec_id])
            astra.projector.delete(projector)


def reduce_dose(line_integrals: np.ndarray, doses: tuple[float, ...], i0: float, electronic_sd: float,
                rng: np.random.Generator) -> dict[float, np.ndarray]:
    """Line integrals of the same scan at each of ``doses`` x the source's photon flux.

    Source counts N = i0 exp(-p) are thinned binomially: when N is Poisson, keeping each photon
    with probability d leaves exactly Poisson counts at d x the flux, so the source's own quantum
    noise is carried over, not added twice. Doses are thinned in turn from the highest, each from
    the one before, so a lower dose is always the higher one with more photons removed. Thinning
    scales the source's electronic noise variance by d^2; a Gaussian top-up of
    electronic_sd^2 (1 - d^2), from one shared draw, restores the detector's noise floor.
    """
    counts = np.rint(i0 * np.exp(-line_integrals.astype(np.float64))).astype(np.int64)
    electronic = rng.standard_normal(line_integrals.shape)
    out: dict[float, np.ndarray] = {}
    kept, kept_fraction = counts, 1.0
    for dose in sorted(set(doses), reverse=True):
        if not 0.0 < dose <= 1.0:
            raise ValueError(f"dose fraction {dose} outside (0, 1]")
        if dose == 1.0:
            out[dose] = line_integrals
            continue
        kept = rng.binomial(kept, dose / kept_fraction)
        kept_fraction = dose
        measured = kept + electronic_sd * math.sqrt(1.0 - dose * dose) * electronic
        measured = np.maximum(measured, 1.0)  # a photon-starved reading: log of the floor, not of <= 0
        out[dose] = (-np.log(measured / (dose * i0))).astype(np.float32)
    return out
