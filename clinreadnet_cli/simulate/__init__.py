"""Physics-based low-dose CT simulation: normal-dose slices -> labelled LDCTIQAG2023-style data."""

from .dataset import SimulationRun, Window, existing_dataset, simulate_dataset
from .lowdose import Acquisition, degraded_in, simulate_slice
from .physics import ReconGrid
from .sources import SourceSlice, find_sources

__all__ = ["Acquisition", "ReconGrid", "SimulationRun", "SourceSlice", "Window", "existing_dataset", "find_sources",
           "simulate_dataset", "simulate_slice"]
