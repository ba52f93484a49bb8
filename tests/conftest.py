"""Test-wide settings: the reference (moshi) must not torch.compile on CPU (slow, not exact)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("NO_CUDA_GRAPH", "1")
os.environ.setdefault("DSM_NO_CUDA_GRAPH", "1")
