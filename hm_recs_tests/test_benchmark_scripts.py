"""The prepared scripts that run where the tests cannot (a lent GPU, official-format files) still run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_tiny_on_the_cpu():
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| measurement | unit | GPU |")
    rows = table[2:]
    assert (
        sum("BART" in r for r in rows) == 6
        and any("VQGAN" in r for r in rows)
        and any("GRU4Rec" in r for r in rows)
    )
    for row in rows:
        cpu = row.split("|")[5].strip().replace(",", "")
        assert float(cpu) > 0, row


def test_gru4rec_parity_mode_reads_official_files(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for session in range(120):
        chain = rng.integers(0, 3)
        for pos in range(4):  # three chains of four items: A -> B -> C -> D
            rows.append((session, chain * 4 + pos, 1_000 * session + pos))
    frame = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    frame[frame.SessionId < 100].to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    frame[frame.SessionId >= 100].to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    ps = (
        "loss=cross-entropy,layers=16,batch_size=8,learning_rate=0.2,n_sample=0,n_epochs=8,"
        "constrained_embedding=True"
    )
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_gru4rec.py"),
            "--official-train",
            str(tmp_path / "train.tsv"),
            "--official-test",
            str(tmp_path / "test.tsv"),
            "--ps",
            ps,
            "--seeds",
            "0",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| hm_recs |")]
    assert [r[2].strip() for r in rows] == ["0", "1"]
    recall20, mrr = (float(rows[0][i].split()[0]) for i in (5, 6))
    assert recall20 == 1.0  # 12 items: everything is in the top 20
    assert mrr > 0.9  # the chains are deterministic, so a trained model ranks the next item first
    assert "Test: 60 events" in out.stdout  # 20 test sessions of 4 items
