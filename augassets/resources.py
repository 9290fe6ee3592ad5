"""Dagster resources: configuration and expensive handles, defaulted from the active profile."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import torch

from .core.warehouse import Warehouse
from .profiles import Profile, get_profile


class WarehouseResource(dg.ConfigurableResource):
    """The study's DuckDB file. Writers run in the ``duckdb`` concurrency pool (limit 1)."""

    path: str

    def get(self) -> Warehouse:
        return Warehouse(self.path)


class ImageStoreResource(dg.ConfigurableResource):
    """Root folder for image files (dataset exports, augmentation images, sample grids) and models."""

    root: str

    def path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)


class ComputeResource(dg.ConfigurableResource):
    """Where training runs: ``device`` (cpu, cuda, cuda:1 …) and CPU threads (0: torch's default).
    GPU-bound assets also sit in the ``gpu`` concurrency pool, sized to the machine's GPUs."""

    device: str = "cpu"
    torch_threads: int = 0

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"ComputeResource.device is {self.device!r} but no CUDA device is visible; set it to 'cpu'")


def default_resources(profile: Profile | None = None) -> dict[str, dg.ConfigurableResource]:
    profile = profile or get_profile()
    return {
        "warehouse": WarehouseResource(path=str(profile.home / "catalog.duckdb")),
        "image_store": ImageStoreResource(root=str(profile.home / "store")),
        "compute": ComputeResource(
            device=profile.classifier.device if torch.cuda.is_available() else "cpu",
            torch_threads=profile.torch_threads,
        ),
    }
