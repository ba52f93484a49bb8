"""The ``cpu_matmul`` fixture's object (see ``tests/conftest.py``)."""

from __future__ import annotations

import torch

from dsm.nn import set_cpu_kernels

__all__ = ["CpuMatmul"]


class CpuMatmul:
    """The float32 CPU kernel a test runs its models' projections on: call it on the models."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.models: list[torch.nn.Module] = []

    def __call__(self, *models: torch.nn.Module) -> None:
        for model in models:
            set_cpu_kernels(model, self.mode)
            self.models.append(model)

    def __str__(self) -> str:
        return self.mode
