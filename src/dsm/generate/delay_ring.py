"""The per-slot delay ring of streaming generation (model-spec §2.4).

Stream ``k`` runs ``delays[k]`` steps behind time. The ring keeps ``CT = max_delay + 2`` columns
of tokens per stream and slot, and every slot has its own offset ``o`` (steps since its reset):

* input-only streams are written ``delay_k`` columns ahead, at ``(o + delay_k) % CT``;
* the model reads column ``o % CT``; streams still within their delay (``o <= delay_k``) read
  their initial token instead;
* the tokens generated at step ``o`` are written at ``(o + 1) % CT``;
* after that, column ``(o + 1 - max_delay + delay_k) % CT`` of every generated stream holds
  the token of time ``o - max_delay``: gathering them gives an undelayed frame.

Every operation is a handful of gathers/scatters over all slots, masked by the exec mask, so a
paused slot's columns and offset stay bit-identical and nothing syncs with the host.
"""

from __future__ import annotations

import torch

__all__ = ["UNGENERATED_TOKEN_ID", "DelayRing"]

UNGENERATED_TOKEN_ID = -2  # "still to be sampled": ring columns not written yet, invalid frames


class DelayRing:
    """Token ring ``[B, K, CT]`` plus per-slot offsets ``[B]`` (allocated once).

    Args:
        batch_size: slots ``B``.
        delays: ``K`` per-stream delays (stream 0 is text).
        initial: ``K`` initial tokens (fed while a stream is within its delay).
        num_generated: ``G = 1 + dep_q`` streams written by :meth:`commit` (text first).
        device: where to allocate.
    """

    def __init__(
        self,
        batch_size: int,
        delays: list[int],
        initial: list[int],
        num_generated: int,
        device: torch.device,
    ) -> None:
        if len(delays) != len(initial):
            raise ValueError(f"{len(delays)} delays for {len(initial)} initial tokens")
        B, K = batch_size, len(delays)
        self.max_delay = max(delays)
        self.num_generated = num_generated
        CT = self.max_delay + 2
        self.tokens = torch.full((B, K, CT), UNGENERATED_TOKEN_ID, dtype=torch.long, device=device)
        self.offsets = torch.zeros(B, dtype=torch.long, device=device)
        self.delays = torch.tensor(delays, dtype=torch.long, device=device)  # [K]
        self.initial = torch.tensor(initial, dtype=torch.long, device=device)  # [K]

    @property
    def columns(self) -> int:
        return int(self.tokens.shape[2])

    def reset(self, mask: torch.Tensor) -> None:
        """Slots in ``mask [B]`` restart: offset 0, every column ungenerated."""
        self.offsets.masked_fill_(mask, 0)
        self.tokens.masked_fill_(mask[:, None, None], UNGENERATED_TOKEN_ID)

    def write_inputs(self, inputs: torch.Tensor, exec_mask: torch.Tensor) -> None:
        """Write input-only streams ``inputs [B, n_in]`` (the last ``n_in`` streams) ahead."""
        n_in = inputs.shape[1]
        if n_in == 0:
            return
        K, CT = self.tokens.shape[1], self.columns
        ring = self.tokens[:, K - n_in :]  # [B, n_in, CT]
        col = ((self.offsets[:, None] + self.delays[None, K - n_in :]) % CT)[..., None]
        keep = ring.gather(2, col)
        ring.scatter_(2, col, torch.where(exec_mask[:, None, None], inputs[..., None], keep))

    def read(self, exec_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input ``[B, K]`` for this step and ``is_init [B, K]`` (initial token fed:
        stream within its delay, or slot paused)."""
        B, K, CT = self.tokens.shape
        col = (self.offsets % CT).view(B, 1, 1).expand(B, K, 1)
        is_init = (self.offsets[:, None] <= self.delays[None]) | ~exec_mask[:, None]
        tokens = torch.where(is_init, self.initial[None], self.tokens.gather(2, col)[..., 0])
        return tokens, is_init

    def commit(
        self, generated: torch.Tensor, exec_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's ``generated [B, G]`` tokens, advance the executing slots and return
        the undelayed frame ``[B, G]`` of time ``o - max_delay`` (-2 where not valid) and
        ``valid [B]``."""
        B, G, CT = generated.shape[0], self.num_generated, self.columns
        offsets = self.offsets + exec_mask.long()
        ring = self.tokens[:, :G]  # [B, G, CT]
        col = (offsets % CT).view(B, 1, 1).expand(B, G, 1)
        keep = ring.gather(2, col)
        ring.scatter_(2, col, torch.where(exec_mask[:, None, None], generated[..., None], keep))
        self.offsets.copy_(offsets)
        out_col = (offsets[:, None] - self.max_delay + self.delays[None, :G]) % CT
        frame = ring.gather(2, out_col[..., None])[..., 0]
        valid = (offsets > self.max_delay) & exec_mask
        return torch.where(valid[:, None], frame, UNGENERATED_TOKEN_ID), valid
