"""Token sampling with per-slot settings and no host synchronisation (model-spec §2.6).

Every slot of a batch may use its own temperature and top-k: both are ``[B]`` tensors. A slot
whose temperature is ``<= 0`` is decoded greedily (argmax, first maximum on ties), exactly like
the reference's ``use_sampling=False`` / ``temp=0`` path.

Sampling uses the "exponential race": with ``E_i ~ Exp(1)`` i.i.d., ``argmax_i p_i / E_i`` is
distributed as a categorical draw from ``p``. It needs no ``torch.multinomial`` and therefore no
host synchronisation. Top-k uses one static bound ``max_top_k`` (a Python int fixed when the
generator is built) so that every slot runs the same kernels: the ``max_top_k`` best candidates
are kept and, per slot, the ones ranked at or beyond that slot's own ``k`` get probability 0.

When a slot's ``k`` equals ``max_top_k`` the noise has exactly the shape the reference draws
(``[..., k]`` after ``topk``, or ``[..., N]`` without top-k), so with the same seeded generator
the reference's ``sample_token`` and :func:`sample_tokens` pick the same token.
"""

from __future__ import annotations

import torch

__all__ = ["SlotSampler", "greedy_tokens", "resolve_max_top_k", "sample_tokens"]


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` logits -> ``[...]`` argmax (first maximum on ties)."""
    return logits.argmax(dim=-1)


def resolve_max_top_k(top_ks: list[int], cardinality: int) -> int:
    """Static top-k bound covering every requested ``k`` (``k = 0`` disables top-k).

    Returns 0 (no top-k at all, the reference's unsorted path) when every ``k`` is 0, the
    vocabulary size when only some are 0, else the largest ``k`` (clamped to the vocabulary).
    """
    if any(k < 0 for k in top_ks):
        raise ValueError(f"top_k must be >= 0 (0 disables top-k), got {top_ks}")
    if not top_ks or all(k == 0 for k in top_ks):
        return 0
    if any(k == 0 for k in top_ks):
        return cardinality
    return min(max(top_ks), cardinality)


def _per_slot(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a ``[B]`` tensor so that it broadcasts against ``like`` ``[B, ..., N]``."""
    return value.view(value.shape[0], *([1] * (like.dim() - 1)))


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    *,
    max_top_k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one token per row of ``logits``.

    Args:
        logits: ``[B, ..., N]`` (any float dtype; the math is float32 like the reference).
        temperature: ``[B]`` float; ``<= 0`` means greedy for that slot.
        top_k: ``[B]`` long; ``0`` means no top-k (only honoured over the ``max_top_k`` bound).
        max_top_k: static bound on ``k``; 0 disables top-k for every slot (see
            :func:`resolve_max_top_k`).
        generator: optional seeded generator for the exponential noise.

    Returns:
        ``[B, ...]`` long tokens.
    """
    x = logits.float()
    N = x.shape[-1]
    temp = _per_slot(temperature.to(torch.float32), x)
    sampling = temp > 0
    probs = torch.softmax(x / torch.where(sampling, temp, torch.ones_like(temp)), dim=-1)
    if max_top_k > 0:
        max_top_k = min(max_top_k, N)
        top_probs, top_index = probs.topk(max_top_k, dim=-1)
        k = _per_slot(top_k, x)
        k = torch.where(k > 0, k.clamp(max=max_top_k), torch.full_like(k, max_top_k))
        rank = torch.arange(max_top_k, device=x.device)
        top_probs = torch.where(rank < k, top_probs, torch.zeros_like(top_probs))
        noise = torch.empty_like(top_probs).exponential_(1, generator=generator)
        choice = (top_probs / noise).argmax(dim=-1, keepdim=True)
        sampled = top_index.gather(-1, choice)[..., 0]
    else:
        noise = torch.empty_like(probs).exponential_(1, generator=generator)
        sampled = (probs / noise).argmax(dim=-1)
    return torch.where(sampling[..., 0], sampled, x.argmax(dim=-1))


class SlotSampler:
    """Per-slot settings on the device, with what does not change between steps precomputed.

    The step only runs the kernels it needs: no argmax/``where`` when every slot samples, no
    top-k masking when every slot uses ``max_top_k``, only an argmax when every slot is greedy.
    Those choices are host-side flags, computed by :meth:`update` (call it after changing
    ``temperature`` or ``top_k``; it may synchronise, so keep it out of the step). Code captured
    in a CUDA graph must be captured again after an :meth:`update` that changes the flags.

    Args:
        temperature: ``[B]`` float32, ``<= 0`` = greedy (owned and mutated by the caller).
        top_k: ``[B]`` long, 0 = no top-k (owned and mutated by the caller).
        max_top_k: static top-k bound (:func:`resolve_max_top_k`; 0 = no top-k).
        cardinality: vocabulary size ``N``.
        generator: optional seeded generator.
    """

    def __init__(
        self,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        *,
        max_top_k: int,
        cardinality: int,
        generator: torch.Generator | None = None,
    ) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.max_top_k = min(max_top_k, cardinality)
        self.generator = generator
        self.update()

    def update(self) -> tuple[bool, bool, bool]:
        """Recompute the derived tensors and flags; returns the flags (any, all, masked)."""
        sampling = self.temperature > 0
        self._sampling = sampling
        self._temp = torch.where(sampling, self.temperature, torch.ones_like(self.temperature))
        self._temp = self._temp[:, None].to(torch.float32)  # [B, 1]
        self.any_sampling = bool(sampling.any())
        self.all_sampling = bool(sampling.all())
        self.masked = False
        if self.max_top_k > 0:
            K = self.max_top_k
            k = self.top_k
            k = torch.where(k > 0, k.clamp(max=K), torch.full_like(k, K))
            self._keep = torch.arange(K, device=k.device)[None] < k[:, None]  # [B, K]
            self.masked = not bool(self._keep.all())
        return self.any_sampling, self.all_sampling, self.masked

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` logits -> ``[B]`` tokens (float32 math, like the reference)."""
        x = logits.float()
        if not self.any_sampling:
            return x.argmax(dim=-1)
        probs = torch.softmax(x / self._temp, dim=-1)
        if self.max_top_k > 0:
            top_probs, top_index = probs.topk(self.max_top_k, dim=-1)
            if self.masked:
                top_probs = torch.where(self._keep, top_probs, torch.zeros_like(top_probs))
            noise = torch.empty_like(top_probs).exponential_(1, generator=self.generator)
            choice = (top_probs / noise).argmax(dim=-1, keepdim=True)
            sampled = top_index.gather(-1, choice)[:, 0]
        else:
            noise = torch.empty_like(probs).exponential_(1, generator=self.generator)
            sampled = (probs / noise).argmax(dim=-1)
        if self.all_sampling:
            return sampled
        return torch.where(self._sampling, sampled, x.argmax(dim=-1))
