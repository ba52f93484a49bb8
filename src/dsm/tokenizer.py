"""The SentencePiece text tokenizer shipped with each checkpoint."""

from __future__ import annotations

from pathlib import Path

from dsm.errors import CheckpointError

__all__ = ["TextTokenizer"]


class TextTokenizer:
    """Thin typed wrapper over ``sentencepiece.SentencePieceProcessor``."""

    def __init__(self, path: str | Path) -> None:
        import sentencepiece

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"text tokenizer not found: {path}")
        self.path = path
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            ok = self._sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} is not a SentencePiece model ({exc}); check the tokenizer_name of the "
                "checkpoint or pass the right .model file"
            ) from exc
        if not ok:  # pragma: no cover - Load raises on failure in current versions
            raise CheckpointError(f"could not load SentencePiece model {path}")

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS)."""
        return [int(i) for i in self._sp.EncodeAsIds(text)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (pieces joined, word boundaries restored)."""
        return str(self._sp.DecodeIds([int(i) for i in ids]))

    def id_to_piece(self, token_id: int) -> str:
        return str(self._sp.IdToPiece(int(token_id)))

    def eos_id(self) -> int:
        return int(self._sp.eos_id())
