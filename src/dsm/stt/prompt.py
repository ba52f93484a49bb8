"""Text prompts: force each slot's model to "say" a given text first (steers spelling).

While a slot has prompt tokens left, every text logit except the padding ids and the next
prompt token is set to ``-inf``; when the model emits that token, the slot moves on to the next
one (model-spec §4.7). All state is per slot on the device, so the hooks need no host sync.
"""

from __future__ import annotations

import torch

__all__ = ["PromptForcer"]


class PromptForcer:
    """Per-slot prompt state for the generator's text-logits and text hooks."""

    def __init__(
        self, batch_size: int, max_tokens: int, padding_ids: tuple[int, ...], device: torch.device
    ) -> None:
        self.max_tokens = max_tokens
        self.tokens = torch.zeros(batch_size, max_tokens, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.pointer = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.padding_ids = torch.tensor(padding_ids, dtype=torch.long, device=device)
        self.last_forced = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self._next = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._forcing = torch.zeros(batch_size, dtype=torch.bool, device=device)

    def set(self, slot: int, tokens: list[int]) -> None:
        """Give ``slot`` a new prompt (empty: no forcing)."""
        if len(tokens) > self.max_tokens:
            raise ValueError(
                f"prompt has {len(tokens)} tokens; at most {self.max_tokens} are allowed"
            )
        self.tokens[slot].zero_()
        if tokens:
            self.tokens[slot, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        self.lengths[slot] = len(tokens)
        self.pointer[slot] = 0

    def on_logits(self, logits: torch.Tensor) -> None:
        """Text-logits hook: ``[B, N]`` logits, masked in place for slots still forcing."""
        self._forcing.copy_(self.pointer < self.lengths)
        index = self.pointer.clamp(max=self.max_tokens - 1)[:, None]
        self._next.copy_(self.tokens.gather(1, index)[:, 0])
        N = logits.shape[1]
        ids = torch.arange(N, device=logits.device)
        allowed = (ids[None, :] == self._next[:, None]) | torch.isin(ids, self.padding_ids)[None, :]
        blocked = self._forcing[:, None] & ~allowed
        logits.masked_fill_(blocked, float("-inf"))

    def on_token(self, token: torch.Tensor, exec_mask: torch.Tensor) -> None:
        """Text hook: advance the slots that emitted their next prompt token."""
        match = self._forcing & (token == self._next) & exec_mask
        self.last_forced.copy_(match)
        self.pointer.add_(match.long())
