"""Ctrl-C and SIGTERM at any moment of a command, and a full disk under Ray's workers, end in one line: real
processes (`python -m actstore.cli.main`, through actstore/__main__.py's entry point), their stderr read whole.

Each process starts with SIGINT's default action, as a command typed at a terminal does: a suite run in the
background by a non-interactive shell ignores SIGINT, every child inherits that, and a Ctrl-C test would then test
nothing (see test_extract's Ctrl-C test). "Early" moments are counted from when the entry point's handlers are in
place (the process then catches SIGTERM: /proc/PID/status), not from the start: the ~40 ms before (Python's own
startup, `import actstore`) are not actstore's to handle, and counting from the start made the earliest moment a
race with the machine's load.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from actstore.cli.main import main
from actstore.run.results import read_part
from actstore.store.zarrstore import ActivationStore
from conftest import resize
from test_fuzz import tiny_store, write_sae

INTERRUPTED = "interrupted; what finished is kept: run the same command again to resume"  # checks.failure_line
TERMINATED = "stopped (SIGTERM); what finished is kept: run the same command again to resume"
NOISE = ("Traceback", "KeyboardInterrupt", 'File "', "*** SIGTERM", "SIGTERM received", "ray::", "(raylet)",
         "Exception ignored", "Task exception")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny store (probes with every metric the scorer reads), 40 one-latent-group SAEs, and a results folder of
    two of them for `explore`."""
    root = tmp_path_factory.mktemp("signals")
    tiny_store(root / "store.zarr")
    with ActivationStore.open(root / "store.zarr", mode="a") as store:
        for layer in store.layers:
            store.save_probe(layer, np.ones((26, 16), np.float32), np.zeros(26, np.float32),
                             {"metrics": {"test": {k: [0.9] * 26 for k in ("f1", "precision", "recall")}}})
    for i in range(40):
        write_sae(root / "saes" / "layer_0" / "width_8" / f"sae{i:02d}" / "params.npz")
    two = [str(root / "saes" / "layer_0" / "width_8" / f"sae{i:02d}") for i in range(2)]
    assert main(["score", str(root / "store.zarr"), "--saes", *two, "--out", str(root / "results"), "--local",
                 "--bootstrap", "0"]) == 0
    return root


def start(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    """`python -m actstore.cli.main ARGV` in its own process group, SIGINT at its default action, stdout and stderr to
    files (a pipe's reader could hold the writer up)."""
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "actstore.cli.main", *argv], stdout=out, stderr=err,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def handlers_in_place(run: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until the entry point's handlers are in place: the process catches SIGTERM (Python does not)."""
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        status = Path(f"/proc/{run.pid}/status").read_text()
        if int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16) & 1 << signal.SIGTERM - 1:
            return
        time.sleep(0.001)
    pytest.fail(f"no SIGTERM handler within {timeout} s (exit {run.poll()})")


def finish(run: subprocess.Popen, tmp_path: Path, timeout: float = 120) -> tuple[str, str]:
    """Wait for the process, then end what is left of its group (Ray's agents); returns (stdout, stderr)."""
    try:
        run.wait(timeout=timeout)
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()


def assert_one_line(out: str, err: str, line: str) -> None:
    assert [l for l in err.splitlines() if l.strip()] == [line], err[-3000:]
    assert not [n for n in NOISE if n in out + err], (out + err)[-3000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command,signum,delay", [
    ("score", signal.SIGINT, 0.0),  # the entry point's imports begin (the signal is acted on at their end)
    ("score", signal.SIGINT, 0.3),  # importing torch
    ("score", signal.SIGINT, 1.0),  # parsing, checking, or scoring, as fast as the machine is
    ("score", signal.SIGTERM, 0.3),
    ("explore", signal.SIGINT, 0.0),
    ("explore", signal.SIGINT, 1.0),
])
def test_a_signal_at_an_early_moment_is_one_line_and_the_rerun_completes(world, tmp_path, command, signum, delay):
    out, saes = tmp_path / "out", world / "saes" / "layer_0" / "width_8"
    argv = {"score": ["score", str(world / "store.zarr"), "--saes", str(saes / "sae00"), str(saes / "sae01"),
                      "--out", str(out), "--local", "--bootstrap", "0"],
            "explore": ["explore", str(world / "results"), "--out", str(out)]}[command]
    run = start(argv, tmp_path)
    handlers_in_place(run)
    time.sleep(delay)
    run.send_signal(signum)
    stdout, stderr = finish(run, tmp_path)
    assert run.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr[-3000:]
    assert_one_line(stdout, stderr, f"actstore {command}: {INTERRUPTED if signum == signal.SIGINT else TERMINATED}")
    assert not list(tmp_path.rglob("*.partial"))
    assert main(argv) == 0  # nothing it wrote is in the way: the same command completes


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_ends_a_ray_score_in_one_line_keeps_its_parts_and_the_rerun_resumes(world, tmp_path, capsys):
    """SIGTERM to the driver (`kill PID`) while Ray's worker scores the 40 SAEs one at a time: no stack dump of
    Ray's, one line, exit 143; every part written is whole and counts on the rerun."""
    out = tmp_path / "results"
    argv = ["score", str(world / "store.zarr"), "--saes", str(world / "saes"), "--out", str(out), "--group-size", "1",
            "--bootstrap", "0"]
    run = start(argv, tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and run.poll() is None and not list((out / "parts").glob("*.json")):
        time.sleep(0.01)
    assert run.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
    run.send_signal(signal.SIGTERM)
    stdout, stderr = finish(run, tmp_path)
    assert run.returncode == 143, stderr[-3000:]
    assert_one_line(stdout, stderr, f"actstore score: {TERMINATED}")
    parts = list((out / "parts").glob("*.json"))
    assert 1 <= len(parts) < 40 and all(read_part(p) is not None for p in parts)
    assert main(argv + ["--local"]) == 0
    assert f"40 SAEs named, {len(parts)} already in" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_disk_under_rays_store_writer_is_one_line_and_the_resume_completes(synth_model, tmp_path, ray_session,
                                                                                   small_disk):
    """The store's disk fills while Ray's StoreWriter writes shards: one line on stderr (after the run's own progress
    lines), nothing of Ray's ("(raylet) Task ... failed. There are 1 retries remaining" went to stdout); the finished
    shards are kept and --resume completes the store once there is space."""
    # the store's metadata and a shard or two fit; all 3 vocab shards of 2 layers (about 590 KB) do not
    disk = small_disk("300k")
    argv = ["extract", "--model", str(synth_model), "--out", str(disk / "s.zarr"), "--max-vocab", "600",
            "--shard-rows", "256", "--batch-size", "8", "--layers", "0,1", "--log-interval", "600"]
    run = start(argv, tmp_path)
    stdout, stderr = finish(run, tmp_path, timeout=240)
    assert run.returncode == 1, stderr[-3000:]
    lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith("extract: ")]  # progress lines
    assert lines == ["actstore extract: error: no space left on the device; free space, then run the same "
                     "command again to resume"], stderr[-3000:]
    assert stdout == "" and not [n for n in NOISE if n in stderr], (stdout + stderr)[-3000:]
    resize(disk, "64m")
    assert main(argv + ["--resume"]) == 0
    with ActivationStore.open(disk / "s.zarr") as store:  # complete: open refuses an incomplete store
        assert store.layers == [0, 1]
