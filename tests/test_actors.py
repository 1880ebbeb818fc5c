"""Ray actors start under a guard (actstore/actors.py): a constructor's failure reaches the driver as one line, is
never retried, and the command ends with one line and a non-zero exit, whatever Ray would have printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actstore.errors import InputError, RunFailed

# The options extraction and scoring use: a crash after start is restarted and its calls retried once.
OPTIONS = dict(max_restarts=1, max_task_retries=1, num_cpus=0)


def make_worker(failure: BaseException | None):
    """A class (defined here, so Ray pickles it by value) whose constructor appends a line to a file each time
    it runs, then raises `failure` (if any)."""

    class Worker:
        def __init__(self, log: str):
            with open(log, "a") as f:
                f.write("constructed\n")
            if failure is not None:
                raise failure

        def double(self, x: int) -> int:
            return 2 * x

    return Worker


def test_actors_that_start_work_as_usual(ray_session, tmp_path):
    from actstore.cluster import get, kill, start

    actors = start(make_worker(None), 2, OPTIONS, "test worker", str(tmp_path / "log"))
    assert get([a.double.remote(i) for i, a in enumerate(actors)], "test worker") == [0, 2]
    kill(actors)
    assert (tmp_path / "log").read_text() == "constructed\n" * 2


@pytest.mark.parametrize("failure, kind, line", [
    (RuntimeError("CUDA out of memory\nmore detail"), RunFailed,
     "a test worker could not start: RuntimeError: CUDA out of memory"),
    (InputError("could not load the model at /m: damaged"), InputError, "could not load the model at /m: damaged"),
    (ImportError("cannot import name 'CUDAProperties' from 'kernels'"), RunFailed,
     "a test worker could not start: ImportError: cannot import name 'CUDAProperties' from 'kernels'. "
     "Python cannot import what actstore needs: reinstall the environment (`make setup`), and check that nothing "
     "in the working folder {cwd} is named like an installed package (a folder with an __init__.py shadows it)"),
])
def test_a_constructor_that_raises_is_one_line_in_the_driver_runs_once_and_ray_prints_nothing(
        ray_session, tmp_path, capfd, failure, kind, line):
    """Unguarded, Ray 2.60 prints the creation task's traceback on the driver's stderr ("The actor died because of
    an error raised in its creation task", about 20 lines) and fails each call with that text again."""
    import os
    import time

    import ray

    from actstore.cluster import start

    log = tmp_path / "log"
    with pytest.raises(kind) as caught:
        start(make_worker(failure), 2, OPTIONS, "test worker", str(log))
    assert str(caught.value) == line.format(cwd=os.getcwd())
    if kind is RunFailed:  # not bad input: the worker's traceback rides along for the log
        assert caught.value.remote_traceback.startswith("Traceback") and str(failure) in caught.value.remote_traceback
    ray.get(ray.remote(lambda: None).remote())
    time.sleep(1)  # Ray prints its errors from a background thread: give it the time it would take
    assert capfd.readouterr().err == ""
    assert log.read_text() == "constructed\n" * 2  # once per actor: nothing ran the constructor again


def test_an_extraction_whose_model_cannot_load_in_the_workers_ends_in_one_line(synth_model, tmp_path, capfd,
                                                                               ray_session):
    """The driver reads only the config and tokenizer; the workers load the weights. Damaged weights: one line
    naming the model and what to do, exit 2, none of Ray's output, and the store keeps what it has (nothing)."""
    import shutil

    from actstore.cli.main import main

    model = tmp_path / "model"
    shutil.copytree(synth_model, model)
    (model / "model.safetensors").write_bytes(b"not safetensors at all")
    out = tmp_path / "s.zarr"
    code = main(["extract", "--model", str(model), "--out", str(out), "--max-vocab", "50", "--layers", "0"])
    stdout, stderr = capfd.readouterr()
    assert code == 2
    assert stderr.strip().splitlines() == [stderr.strip()], stderr
    assert re.fullmatch(rf"actstore extract: error: could not load the model at {re.escape(str(model))}: "
                        r"SafetensorError: .+; its files are damaged or not a model transformers can read: fetch or "
                        r"copy it again", stderr.strip()), stderr
    assert "ray" not in stderr.lower() and "Traceback" not in stderr
    # the rerun after a fix resumes the same store
    shutil.copy(Path(synth_model) / "model.safetensors", model / "model.safetensors")
    assert main(["extract", "--model", str(model), "--out", str(out), "--max-vocab", "50", "--layers", "0",
                 "--resume"]) == 0
