"""Train a tiny SentencePiece tokenizer at test time (no tokenizer can be downloaded)."""

from __future__ import annotations

from pathlib import Path

_TEXT = """In the heart of an ancient forest, where the trees whispered secrets of the past,
there lived a peculiar rabbit named Luna. She loved to hop between the roots and listen.
Hello world, this is a test of the streaming speech to text model.
Bonjour tout le monde, voici une recette de crepes pour le petit dejeuner.
The quick brown fox jumps over the lazy dog near the river bank every morning.
Numbers like one two three four five six seven eight nine ten are spoken slowly.
"""


def train_tiny_tokenizer(directory: Path, vocab_size: int = 60, name: str = "tok.model") -> Path:
    """A SentencePiece model with Kyutai's special ids: 0 unk, 1 bos, 2 eos, 3 pad."""
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text(_TEXT * 3)
    prefix = directory / Path(name).stem
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    model = prefix.with_suffix(".model")
    if model.name != name:
        model = model.rename(directory / name)
    return model
