"""A score worker's background stages (actstore/run/stream.py, used by run/batch.py): SAEs read ahead across
layers within a bound, one SAE's failure its own, and part files written behind the scorer with errors raised
in the scorer's thread. Events, not clocks: a read that must start first is waited for, with a timeout that only
a broken pipeline reaches."""

import threading
from dataclasses import replace

import pytest

from actstore.run.stream import PartWriter, read_ahead


def test_reads_run_ahead_of_the_consumer_within_the_count_and_byte_bounds():
    sizes = [3, 1, 1, 4, 1, 2, 2, 1, 5, 1]
    started: list[int] = []
    lock = threading.Lock()

    def load(i):
        with lock:
            started.append(i)
        return i * 10

    ahead, budget = 3, 5
    for k, (item, result, seconds) in enumerate(read_ahead(range(len(sizes)), load, lambda i: sizes[i], ahead,
                                                           budget)):
        assert (item, result) == (k, 10 * k) and seconds >= 0
        with lock:
            waiting = [i for i in started if i > k]  # read or being read, not yet handed over
        assert len(waiting) <= ahead
        assert len(waiting) <= 1 or sum(sizes[i] for i in waiting) <= budget  # one is let through, however large
    assert sorted(started) == list(range(len(sizes)))


def test_one_items_error_is_that_items_result_and_the_rest_load():
    def load(i):
        if i == 1:
            raise ValueError("bad file 1")
        return i

    results = [(item, result) for item, result, _ in read_ahead(range(3), load, lambda i: 1, 2, 10)]
    assert results[0] == (0, 0) and results[2] == (2, 2)
    assert isinstance(results[1][1], ValueError) and str(results[1][1]) == "bad file 1"


def test_the_next_layers_first_sae_is_read_while_this_layers_last_is_scored():
    """The consumer holds the last SAE of job 1 until the first of job 2 has started loading: only a reader
    that crosses the job boundary lets it go on."""
    jobs = [["a1", "a2"], ["b1", "b2"]]
    b1_started = threading.Event()

    def load(name):
        if name == "b1":
            b1_started.set()
        return name

    stream = read_ahead([s for job in jobs for s in job], load, lambda s: 1, ahead=2, budget=10)
    for job in jobs:
        got = [next(stream)[1] for _ in job]
        assert got == job
        if job is jobs[0]:
            assert b1_started.wait(timeout=30)  # "scoring" job 1 waits for job 2's read
    stream.close()


def test_the_writer_writes_in_order_and_raises_its_first_error_in_the_callers_thread():
    done: list[int] = []
    writer = PartWriter(depth=2)
    for i in range(5):
        writer.put(done.append, i)
    writer.close()
    assert done == [0, 1, 2, 3, 4]

    def write(i):
        if i == 1:
            raise OSError(28, "No space left on device")
        done.append(i)

    done.clear()
    writer = PartWriter(depth=2)
    writer.put(write, 0)
    writer.put(write, 1)
    with pytest.raises(OSError, match="No space left on device"):
        writer.close()
    assert done == [0]
    writer = PartWriter(depth=1)
    writer.put(write, 1)
    writer.queue.join()  # the failed write is done: the next put raises its error
    with pytest.raises(OSError, match="No space left"):
        writer.put(write, 2)
    writer.close(check=False)
    assert done == [0]


def test_a_worker_reads_the_next_layers_sae_before_it_finishes_scoring_this_layers(planted_store, planted_saes,
                                                                                    tmp_path):
    """The real LayerScorer on CPU, two jobs of one SAE each: the second SAE's load starts while the first is
    scored (the scorer asks for the layer's rows only after the second read has begun: a reader that stops at
    the job boundary never lets it go on), and both parts are written by the writer thread."""
    import json

    from actstore.run.batch import Job, LayerScorer
    from actstore.run.runner import ScoreCommandConfig
    from actstore.run.sources import resolve_saes

    first, second = resolve_saes([str(planted_saes[0]), str(planted_saes[1])])
    second_started = threading.Event()

    def load_second(*args, load=second.load):
        second_started.set()
        return load(*args)

    second = replace(second, load=load_second)
    cfg = ScoreCommandConfig(str(planted_store), str(tmp_path / "r"), local=True, group_size=1, bootstrap=0)
    for folder in ("parts", "saebench"):  # as run_score makes them
        (tmp_path / "r" / folder).mkdir(parents=True)
    scorer = LayerScorer(cfg, "cpu")
    layer_data, waited = scorer._layer_data, []

    def layer_data_after_the_second_read(layer):
        waited.append(second_started.wait(timeout=60))
        return layer_data(layer)

    scorer._layer_data = layer_data_after_the_second_read
    records = []
    assert scorer.run([Job(0, [[first]]), Job(0, [[second]])], on_done=records.append) == 2
    scorer.close()
    assert waited[0] and [r["sae_id"] for r in records] == [first.name, second.name]
    parts = sorted((tmp_path / "r" / "parts").glob("*.json"))
    assert len(parts) == 2 and all(json.loads(p.read_text())["summary"]["status"] == "ok" for p in parts)
