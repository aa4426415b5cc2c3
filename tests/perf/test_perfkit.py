"""The benchmarks leave the machine and the docs as they found them unless asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from perf import perfkit

BENCHMARKS = ("bench_audit", "bench_connections", "bench_dispatch", "bench_footprint", "bench_store")


def test_a_row_is_printed_but_written_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    before = perfkit.PERF_DOC.read_bytes()
    perfkit.record("zz test row", "1 thing/s", "2 things/s", "0.5x", "none", "python -c pass", write=False)
    assert "| zz test row | 1 thing/s |" in capsys.readouterr().out
    assert perfkit.PERF_DOC.read_bytes() == before


def test_a_benchmark_removes_the_work_directory_it_made_and_keeps_one_it_was_given(tmp_path: Path) -> None:
    seen: list[Path] = []

    @perfkit.temporary_workdir("coact-bench-test-")
    def bench(*, workdir: Path) -> None:
        (workdir / "relay").mkdir()
        seen.append(workdir)

    bench()
    assert seen[0].name.startswith("coact-bench-test-")
    assert not seen[0].exists()
    bench(workdir=tmp_path)
    assert seen[1] == tmp_path
    assert (tmp_path / "relay").is_dir()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_writes_the_docs_only_with_record(name: str) -> None:
    script = Path(perfkit.__file__).with_name(f"{name}.py")
    shown = subprocess.run([sys.executable, str(script), *(["ingest"] if name == "bench_audit" else []), "--help"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert "--record" in shown.stdout
