"""benchmarks/score_bench.py at tiny sizes: the code before issue 23 (a git worktree of d38bcc4) and this tree score
the same SAEs on the same store, every number of every part equal, and the table has what the issue asks for."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_score_benchmark_scores_as_the_baseline_does_and_reports_phases(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "score_bench.py"), "--widths", "2k",
                           "--layers", "1", "--saes-per-layer", "3", "--vocab-rows", "512", "--context-rows", "256",
                           "--scratch", str(tmp_path / "scratch"), "--out", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    width = json.loads((tmp_path / "s.json").read_text())["widths"]["2048"]
    agreement = width["agreement"]
    assert agreement["saes"] == 3 and agreement["numbers_compared"] > 1000
    assert agreement["numbers_differing"] == 0, agreement["first_differing"]  # bit for bit, summaries and classes
    base, current = width["versions"]["baseline"], width["versions"]["current"]
    assert base["other_encode_steady_s_per_sae"] > 0  # the old second encode, for the L0 on text
    assert current["other_encode_steady_s_per_sae"] == 0  # one pass now
    for phase in ("encode", "cosines", "l1_probe", "seeds", "bootstrap"):
        assert current["phases_steady"][phase] > 0, phase
    assert "text_l0" not in current["phases_steady"] and base["phases_steady"]["text_l0"] > 0
    assert list((tmp_path / "scratch").iterdir()) == []  # the worktree and the store are removed afterwards
