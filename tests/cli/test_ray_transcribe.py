"""``dsm transcribe --ray``: Ray Data actors give ``transcribe_many``'s results, a corrupt input
is reported while the others are written, and a rerun does no work (a local Ray of 2 CPUs)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import dsm
from dsm.cli import main
from dsm.commands.ray_transcribe import BatchOptions, run_batch
from dsm.stt.transcript import Transcript
from tests.audio.synth import write_audio
from tests.helpers.reference_mimi import speech_like

ray = pytest.importorskip("ray", reason="needs ray: pip install 'dsm[ray]'")
pytest.importorskip("ray.data", reason="needs ray[data]: pip install 'dsm[ray]'")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray of 2 CPUs for the module (the runs join it rather than start their own)."""
    src = str(Path(dsm.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()


def _inputs(folder: Path) -> list[Path]:
    folder.mkdir()
    files = []
    for i, seconds in enumerate((0.6, 1.1, 0.8)):
        pcm = speech_like(seconds, seed=10 + i)[0, 0].numpy().astype(np.float32)
        files.append(write_audio(folder / f"clip{i}.wav", pcm, 24000, kind="wav"))
    return files


def _rows(out: Path) -> list[dict[str, object]]:
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_ray_matches_transcribe_many_and_reruns_do_no_work(
    stt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    files = _inputs(tmp_path / "audio")
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x01not audio at all" * 10)
    out = tmp_path / "out"
    stt = dsm.load_stt(stt_dir, device="cpu")
    expected = stt.transcribe_many([str(f) for f in files], batch_size=2, progress=False)
    assert all(isinstance(r, Transcript) for r in expected)
    assert any(r.words for r in expected if isinstance(r, Transcript))  # words to compare

    # The CLI: a file and a folder URL; "--ray FILE" gives FILE back to the inputs. Without an
    # address (and no Ray in this process yet, unless another test started the module's) the
    # run starts a local Ray and stops it at the end.
    argv = ["transcribe", "--ray", str(bad), f"file://{tmp_path / 'audio'}", "-o", str(out), "-f",
            "all", "--model", str(stt_dir), "--device", "cpu", "--actors", "2",
            "--batch-size", "2", "--table", "parquet", "-q"]  # fmt: skip
    own_ray = not ray.is_initialized()
    assert main(argv) == 1  # one input failed
    assert ray.is_initialized() is not own_ray  # a Ray started for the run is stopped after it
    err = capsys.readouterr().err
    assert "broken.wav" in err and "3 transcribed" in err and "1 failed" in err
    for f, result in zip(files, expected, strict=True):
        assert isinstance(result, Transcript)
        assert json.loads((out / f"{f.stem}.json").read_text()) == result.to_dict()
        assert (out / f"{f.stem}.txt").read_text() == result.text + "\n"
        assert (out / f"{f.stem}.srt").is_file() and (out / f"{f.stem}.vtt").is_file()
    assert not list(out.glob("broken.*"))  # nothing written for the corrupt input
    rows = {Path(str(r["input"])).name: r for r in _rows(out)}
    assert set(rows) == {"broken.wav", *(f.name for f in files)}
    assert str(rows["clip0.wav"]["input"]).startswith("file://")
    assert rows["broken.wav"]["ok"] is False and "broken.wav" in str(rows["broken.wav"]["error"])
    for f, result in zip(files, expected, strict=True):
        row = rows[f.name]
        assert isinstance(result, Transcript)
        assert row["ok"] is True and row["text"] == result.text
        assert row["words"] == result.to_dict()["words"]
        assert row["duration"] == pytest.approx(result.duration)
        assert set(row["timings"]) == {"load_seconds", "batch_seconds", "batch_files", "seconds"}
    import pyarrow.parquet as pq

    assert pq.read_table(out / "results.parquet").num_rows == 4

    # A rerun writes no output again and tries only the failed input.
    request.getfixturevalue("local_ray")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("clip*")}
    inputs = [str(bad), *(f"file://{f}" for f in files)]
    opts = BatchOptions(inputs=inputs, out_dir=out, formats=("txt", "json", "srt", "vtt"),
                        model={"model": str(stt_dir), "device": "cpu"},
                        actors=1, progress=False)  # fmt: skip
    again = run_batch(opts)
    assert (again.skipped, again.done, again.failed) == (3, 0, 1)
    assert {p: p.stat().st_mtime_ns for p in out.glob("clip*")} == stamps
    assert len(_rows(out)) == 4  # the failure's row replaced, the others kept
    # Without the failing input there is nothing to do: no actor is started.
    done = run_batch(dataclasses.replace(opts, inputs=inputs[1:]))
    assert (done.skipped, done.done, done.failed, done.actors) == (3, 0, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in out.glob("clip*")} == stamps


def test_eval_on_ray_gives_the_local_hypotheses(
    local_ray: None, stt_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("jiwer", reason="dsm eval needs pip install 'dsm[eval]'")
    files = _inputs(tmp_path / "audio")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(f), "text": "a b"}) + "\n" for f in files))
    model = ["--model", str(stt_dir), "--device", "cpu", "-q", "--batch-size", "3"]
    assert main(["eval", str(manifest), "--out-dir", str(tmp_path / "local"), *model]) == 0
    ray_args = ["--ray", "--actors", "2", "--out-dir", str(tmp_path / "ray")]
    assert main(["eval", str(manifest), *ray_args, *model]) == 0

    def hyps(folder: str) -> list[str]:
        lines = (tmp_path / folder / "results.jsonl").read_text().splitlines()
        return [json.loads(line)["hyp"] for line in lines]

    assert hyps("ray") == hyps("local") and any(hyps("local"))
