"""The generic loop on a toy task: the sampling covers every item once an epoch; a resumed run,
a run with gradient accumulation and one without give the same curve; metrics and state files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from dsm.train.loop import LossSum, TrainConfig, lr_at, micro_batches, step_items, train

ITEMS = 12


class ToyTask:
    """Least squares on a fixed random set; per-item target counts differ (weights 1..3)."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.model: nn.Module = nn.Linear(4, 1)
        with torch.no_grad():
            self.model.weight.copy_(torch.randn(1, 4, generator=gen))
            self.model.bias.zero_()
        self.x = torch.randn(ITEMS, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        self.count = torch.arange(ITEMS) % 3 + 1
        self.saved: list[Path] = []

    def __len__(self) -> int:
        return ITEMS

    def collate(self, indices: Sequence[int]) -> list[int]:
        return list(indices)

    def loss(self, model: nn.Module, batch: list[int]) -> LossSum:
        idx = torch.tensor(batch)
        err = (model(self.x[idx])[:, 0] - self.y[idx]) ** 2
        return LossSum((err * self.count[idx]).sum(), float(self.count[idx].sum()), 1.0)

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(((self.model(self.x)[:, 0] - self.y) ** 2).mean())}

    def save(self, directory: Path) -> list[Path]:
        path = directory / "toy.pt"
        torch.save(self.model.state_dict(), path)
        return [path]


def _curve(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def _config(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(steps=8, lr=0.2, batch_size=4, progress=False, warmup_steps=2)
    base.update(kw)
    return TrainConfig(out, **base)  # type: ignore[arg-type]


def test_sampling_covers_each_epoch() -> None:
    seen = [i for step in range(3) for i in step_items(ITEMS, 4, step, seed=7)]
    assert sorted(seen) == list(range(ITEMS))  # one epoch = 3 steps of 4
    assert step_items(ITEMS, 4, 1, seed=7) == step_items(ITEMS, 4, 1, seed=7)
    assert step_items(5, 4, 1, seed=0)[:1] == step_items(5, 4, 1, seed=0)[:1]
    parts = micro_batches([10, 11, 12, 13, 14, 15], rank=1, world_size=2, accum=2)
    assert parts == [[11, 13], [15]]


def test_lr_schedule() -> None:
    config = _config(Path("."), steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(55, config) == pytest.approx(0.5)
    assert lr_at(99, config) < 0.01


class Interrupted(Exception):
    pass


class StopsAt(ToyTask):
    """A run that dies when it reaches step ``stop`` (one micro-batch a step)."""

    def __init__(self, stop: int) -> None:
        super().__init__()
        self.calls, self.stop = 0, stop

    def collate(self, indices: Sequence[int]) -> list[int]:
        if self.calls == self.stop:
            raise Interrupted
        self.calls += 1
        return super().collate(indices)


def test_accumulation_and_resume_give_the_same_curve(tmp_path: Path) -> None:
    task = ToyTask()
    before = task.validate()["mse"]
    plain = train(task, _config(tmp_path / "plain"))
    accum = train(ToyTask(), _config(tmp_path / "accum", grad_accum=4))
    with pytest.raises(Interrupted):
        train(StopsAt(5), _config(tmp_path / "resumed", save_every=3))
    state = torch.load(tmp_path / "resumed" / "train_state" / "state.pt", weights_only=True)
    assert state["step"] == 3
    # The metrics of the lost steps 4-5 are logged again after resuming: keep the first three.
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:3]))
    result = train(ToyTask(), _config(tmp_path / "resumed", resume=True))
    curve = _curve(tmp_path / "plain")
    assert len(curve) == 8 and len(set(curve)) == 8
    assert plain.validation["val_mse"] < 0.5 * before
    assert _curve(tmp_path / "accum") == pytest.approx(curve, rel=1e-5)
    assert _curve(tmp_path / "resumed") == pytest.approx(curve, rel=1e-6)
    assert result.loss == pytest.approx(plain.loss, rel=1e-6)
    assert accum.loss == pytest.approx(plain.loss, rel=1e-5)
    assert result.artefacts == [tmp_path / "resumed" / "toy.pt"]
    last = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_mse" in last


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="batch-size"):
        _config(Path("."), batch_size=3).check(world_size=2)
    with pytest.raises(ValueError, match="precision"):
        _config(Path("."), precision="fp16").check()
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(ToyTask(), _config(Path("/nonexistent-dsm-test"), resume=True))
