"""What a batch run (``dsm transcribe --ray``) writes: output files and the results table.

Every file is written whole or not at all (a temporary name, then an atomic rename), so an
output that exists is complete and a rerun may skip its input. The results table is
``results.jsonl`` in the output folder, one JSON object per input, appended as each input
finishes; with ``--table parquet`` the same rows are also written to ``results.parquet`` at the
end of the run. A run replaces the rows of the inputs it transcribes (a failed input is tried
again, and its new row replaces the old one) and keeps all others.

A row: ``input`` (as given), ``name`` (the outputs' base name), ``ok``, ``error`` (null when
ok), ``text``, ``words`` (``[{"text", "start", "end"}]``, seconds), ``warnings`` (e.g. silent
audio), ``duration`` (seconds of audio), ``timings`` (``load_seconds``: the actor's model
load; ``batch_seconds`` and ``batch_files``: the actor call that transcribed it;
``seconds``: from that call's start to this input's result) and ``actor`` (``host:pid``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsm.errors import DsmError

__all__ = ["TABLE_FORMATS", "ResultsTable", "output_paths", "write_atomic"]

TABLE_FORMATS = ("jsonl", "parquet")
TABLE_NAME = "results"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def output_paths(out_dir: Path, name: str, formats: Sequence[str]) -> list[Path]:
    """The files one input's result is written to, one per format."""
    return [out_dir / f"{name}.{fmt}" for fmt in formats]


class ResultsTable:
    """``results.jsonl`` (and ``results.parquet``) of an output folder."""

    def __init__(self, out_dir: Path, table_format: str = "jsonl") -> None:
        if table_format not in TABLE_FORMATS:
            raise DsmError(
                f"unknown table format {table_format!r}: use {' or '.join(TABLE_FORMATS)}"
            )
        self.path = out_dir / f"{TABLE_NAME}.jsonl"
        self.parquet = out_dir / f"{TABLE_NAME}.parquet" if table_format == "parquet" else None
        self._file: Any = None

    def rows(self) -> list[dict[str, Any]]:
        """The rows written so far (a torn last line, from a killed run, is dropped)."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def open(self, redo: set[str]) -> None:
        """Start a run that (re)does the inputs in ``redo``: their old rows go (a new row comes
        as each finishes); every other input keeps its last row, from this folder's earlier
        runs on the same or other inputs."""
        last: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if row.get("input") not in redo:
                last[str(row.get("input"))] = row
        write_atomic(
            self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in last.values())
        )
        self._file = self.path.open("a", encoding="utf-8")

    def add(self, row: dict[str, Any]) -> None:
        """Append one input's row (flushed: the table follows the run)."""
        assert self._file is not None, "open() the table first"
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """End the run; write ``results.parquet`` when asked for."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.parquet is None:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.rows()
        tmp = self.parquet.with_name(f".{self.parquet.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
            os.replace(tmp, self.parquet)
        finally:
            tmp.unlink(missing_ok=True)
