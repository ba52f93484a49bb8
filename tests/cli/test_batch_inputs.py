"""The inputs of ``dsm transcribe --ray`` (files, globs, folders, manifests, URLs), the
``--ray [ADDRESS]`` value, and the results table's rerun rule (no Ray needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dsm.commands.batch_inputs import expand_inputs, is_url
from dsm.commands.batch_results import ResultsTable
from dsm.commands.ray_args import ray_address
from dsm.errors import DsmError


def _tree(root: Path) -> list[Path]:
    (root / "a" / "b").mkdir(parents=True)
    files = [root / "a" / "x.wav", root / "a" / "b" / "y.flac", root / "z.mp3"]
    for f in files:
        f.write_bytes(b"")
    (root / "a" / "notes.md").write_text("not audio")
    return files


def test_folders_globs_manifests(tmp_path: Path) -> None:
    x, y, z = _tree(tmp_path)
    assert expand_inputs([str(tmp_path / "a")]) == [str(y), str(x)]  # sorted, recursive
    assert expand_inputs([str(tmp_path / "**" / "*.wav")]) == [str(x)]
    listing = tmp_path / "list.txt"
    listing.write_text("z.mp3\n\n# a comment\na/x.wav\n")
    assert expand_inputs([str(listing)]) == [str(z), str(x)]  # relative to the manifest
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "z.mp3", "text": "t"}) + "\n"
                        + json.dumps({"audio_filepath": str(y)}) + "\n")  # fmt: skip
    assert expand_inputs([str(manifest), str(z)]) == [str(z), str(y)]  # each input once
    assert expand_inputs(["missing.wav"]) == ["missing.wav"]  # fails on its own, later


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DsmError, match="holds no audio file"):
        expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(DsmError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.wav")])
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"path": "x.wav"}\n')
    with pytest.raises(DsmError, match=r'm.jsonl:1: each line needs "audio"'):
        expand_inputs([str(bad)])


def test_urls_through_pyarrow(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="URLs need pyarrow: pip install 'dsm[ray]'")
    x, y, z = _tree(tmp_path)
    assert is_url("s3://bucket/key.wav") and not is_url(str(x)) and not is_url("C:/x.wav")
    assert expand_inputs([f"file://{tmp_path / 'a'}"]) == [f"file://{y}", f"file://{x}"]
    assert expand_inputs([f"file://{z}"]) == [f"file://{z}"]


def test_fsspec_urls(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec", reason="needs fsspec")
    pytest.importorskip("pyarrow", reason="URLs need pyarrow: pip install 'dsm[ray]'")
    from dsm.commands.ray_transcribe import _local_copy

    memory = fsspec.filesystem("memory")
    memory.pipe("/dsm-test/a.wav", b"RIFF a")
    memory.pipe("/dsm-test/sub/b.flac", b"fLaC b")
    memory.pipe("/dsm-test/notes.txt", b"not audio")
    try:
        urls = expand_inputs(["memory://dsm-test"])
        assert urls == ["memory:///dsm-test/a.wav", "memory:///dsm-test/sub/b.flac"]
        local = Path(_local_copy(urls[1], tmp_path, 7))  # what an actor reads
        assert local.parent == tmp_path and local.read_bytes() == b"fLaC b"
    finally:
        memory.rm("/dsm-test", recursive=True)
    with pytest.raises(DsmError, match="can't open nosuchscheme://x"):
        expand_inputs(["nosuchscheme://x"])


@pytest.mark.parametrize(
    ("value", "address", "files"),
    [
        ("local", None, ["b.wav"]),
        ("auto", "auto", ["b.wav"]),
        ("ray://head:10001", "ray://head:10001", ["b.wav"]),
        ("10.0.0.5:6379", "10.0.0.5:6379", ["b.wav"]),
        ("a.wav", None, ["a.wav", "b.wav"]),  # an input argparse gave to --ray goes back
        ("clips/", None, ["clips/", "b.wav"]),
    ],
)
def test_ray_address_or_input(value: str, address: str | None, files: list[str]) -> None:
    args = argparse.Namespace(ray=value, files=["b.wav"])
    assert ray_address(args) == address
    assert args.files == files


def test_results_table_replaces_the_rows_of_the_inputs_it_redoes(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path)
    table.open({"a", "b", "c"})
    for name, ok in (("a", True), ("b", False), ("c", True)):
        table.add({"input": name, "ok": ok})
    table.close()
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"input": "torn')  # a killed run's last line
    table.open({"b", "d"})  # a rerun that skips a and c, tries b again, and adds d
    table.add({"input": "d", "ok": True})
    table.add({"input": "b", "ok": True})
    table.close()
    rows = [(r["input"], r["ok"]) for r in table.rows()]
    assert rows == [("a", True), ("c", True), ("d", True), ("b", True)]
    with pytest.raises(DsmError, match="jsonl or parquet"):
        ResultsTable(tmp_path, "csv")


def test_a_bad_model_fails_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dsm.cli import main

    argv = ["transcribe", "--ray", "x.wav", "-o", str(tmp_path / "o"), "--model", "/no/ckpt"]
    assert main(argv) == 1
    assert "neither an existing file or directory nor a hub repo id" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_actor_errors_come_unwrapped() -> None:
    from dsm.commands.ray_transcribe import run_failure
    from dsm.errors import CheckpointError

    class RayTaskError(Exception):  # how Ray wraps an actor's exception: ``.cause``
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback (most recent call last):\n  ... remote frames ...")
            self.cause = cause

    wrapped = RayTaskError(CheckpointError("no checkpoint at /x"))
    assert str(run_failure(wrapped)) == "an actor failed: no checkpoint at /x"
    quoted = "Traceback ...\ndsm.errors.CheckpointError: config.json not found\n"
    died = RuntimeError(f"The actor died because of an error in its creation task\n{quoted}")
    assert str(run_failure(died)) == "an actor failed: config.json not found"
    other = run_failure(RuntimeError("the raylet died\nmore"))
    assert str(other) == "the Ray run failed: RuntimeError: the raylet died"
