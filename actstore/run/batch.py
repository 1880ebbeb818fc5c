"""The batch runner behind `actstore score`: SAEs grouped by layer, scored by workers that load a layer's
rows once, in kernel-sized groups, with the SAEs read ahead on reader threads and the results written behind.

    plan_jobs(sources, ...) -> [Job(layer, [[SAE, ...] group, ...])]     no weights read
    LayerScorer(cfg, device).run(jobs)                                    in this process, or as a Ray actor

Every job scores one task (`ScoreCommandConfig.task`): its rows (store.layers.load_layer), its probe
(score.probes.load_probe) and its part files (results.part_name).

With Ray (the default) there is one `LayerScorer` actor per GPU, or one CPU worker without a GPU; each
actor is given its whole list of layers in one call, so it reads ahead across them. A crashed actor is
restarted and its call retried once (Ray's max_restarts and max_task_retries); SAEs already written to
RESULTS/parts are skipped, so the retry and any rerun after a kill compute only what is missing, and
identically.

The pipeline of a worker (`stream.py`): reader threads load the next SAEs of all its layers (file into a
pinned host buffer, CRC, asynchronous copy to the device on a stream of their own, finiteness checked there)
while the scorer computes; the scorer's records go to a writer thread. The read is the only stage that waits.

Memory: a group holds at most `group_size` SAEs and half the budget of weights; the reader threads hold at most
max(group_size, 2) SAEs and the other half beyond what the scorer has taken; an SAE larger than that is read
alone. Groups matter only where they share kernel launches (CUDA, fused backend); elsewhere (the CPU) each SAE
is scored as soon as it is read, and the readers hold at most 2 beyond it. Weights are float32 on the device
(the kernel's exact recheck and the torch path read them). When a group shares kernel launches, its encoders
are also copied, converted on the device to the encode dtype (--dtype), into one (d, M) buffer; with --dtype
float32 each SAE's encoder becomes its slice of it, so a group's encoders exist once.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from actstore.errors import InputError, NotScorable, RunFailed
from actstore.run.provenance import Provenance, part_done
from actstore.run.results import part_name, record_failure, record_result, write_atomic
from actstore.run.stream import READERS, PartWriter, read_ahead
from actstore.saes.loading import SAEError, SAEWeights, degeneracies
from actstore.score.probes import load_probe
from actstore.score.encode import encode_group_fused, pick_backend
from actstore.score.scorer import encoded_rows, score_sae
from actstore.store.layers import load_layer
from actstore.tasks.base import FIRST_LETTER
from actstore.tasks.registry import get_task


class WorkerError(RunFailed):
    """A worker's failure as one plain, picklable line (what failed and why), so it crosses Ray intact."""


@dataclass
class Job:
    """One layer's SAEs for one worker, in groups."""

    layer: int | None
    groups: list[list]
    """lists of runner.SAESource"""


def plan_jobs(sources: list, budget_bytes: float, group_size: int) -> list[Job]:
    """Sources grouped by layer (unknown layers last), then cut into groups of at most `group_size` SAEs and
    budget_bytes / 2 of weights."""
    by_layer: dict[int | None, list] = {}
    for source in sources:
        by_layer.setdefault(source.layer, []).append(source)
    jobs = []
    for layer in sorted(by_layer, key=lambda l: (l is None, l or 0)):
        groups, current, size = [], [], 0
        for source in by_layer[layer]:
            if current and (len(current) == group_size or size + source.nbytes > budget_bytes / 2):
                groups.append(current)
                current, size = [], 0
            current.append(source)
            size += source.nbytes
        groups.append(current)
        jobs.append(Job(layer, groups))
    return jobs


def memory_budget(device: str, memory_gb: float | None) -> float:
    """Bytes of SAE weights a worker may hold: --memory-gb, else half the GPU's memory or a third of RAM."""
    if memory_gb:
        return memory_gb * 2**30
    if device.startswith("cuda"):
        return 0.5 * torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 3


FAILURES = (SAEError, NotScorable, FileNotFoundError)
"""what fails one SAE alone: recorded as its part, the run goes on"""


class LayerScorer:
    """Scores jobs; holds one layer's rows at a time. Runs in the driver or as a Ray actor."""

    def __init__(self, cfg, device: str, threads: int | None = None):
        from actstore.store.zarrstore import ActivationStore

        if threads:
            torch.set_num_threads(threads)
        self.cfg, self.device, self.encode_dtype = cfg, device, getattr(torch, cfg.dtype)
        self.budget = memory_budget(device, cfg.memory_gb)
        self.shares = device.startswith("cuda") and cfg.backend in ("auto", "triton")
        """whether a group may share kernel launches (CUDA, fused backend); elsewhere groups share nothing"""
        self.score_cfg = cfg.score_config()
        self.task = get_task(cfg.task, cfg.template)
        self.store = ActivationStore.open(cfg.store, require_complete=True)
        self.provenance = Provenance(self.store, cfg, device, self.task)
        self.out = Path(cfg.out)
        self.layer, self.data, self.probe = None, None, None
        self.scored = 0
        self.causal = None  # the store's model for --causal, loaded on first use
        _fault_hooks(self)

    def _causal_runner(self):
        from actstore.score.causal import CausalRunner

        if self.causal is None:
            self.causal = CausalRunner.from_store(self.store, self.device, self.task, self.score_cfg.causal)
        return self.causal

    def run(self, jobs: list[Job] | Job, on_done=None) -> int:
        """Score jobs' groups, in order; each SAE's record is written to RESULTS/parts as it finishes (and passed
        to on_done). Returns how many SAEs were scored or failed: the records themselves stay on disk. The SAEs
        of all the jobs are read ahead as one stream, across layers (`stream.read_ahead`).

        A failure of the input, the disk or the code ends the call: input errors (the store's among them) and
        OSError as they are (they pickle), anything else as a WorkerError of one line with its traceback."""
        jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
        self.job_layer = jobs[0].layer if jobs else None
        try:
            return self._run(jobs, on_done)
        except (InputError, OSError, RunFailed):  # bad input, the disk, a worker: as they are (they pickle)
            raise
        except Exception as err:  # noqa: BLE001 - the type may not cross Ray; its message and traceback do
            detail = str(err).splitlines()[0] if str(err) else ""
            raise WorkerError(f"scoring layer {self.job_layer} failed: internal error (a bug in actstore): "
                              f"{type(err).__name__}: {detail}", "".join(traceback.format_exception(err))) from None

    def _run(self, jobs: list[Job], on_done=None) -> int:
        count = 0
        groups = [(job.layer, [s for s in g if not part_done(self.out, s, self.provenance, self.task)])
                  for job in jobs for g in job.groups]  # a retried call resumes
        groups = [(layer, g) for layer, g in groups if g]
        # Where groups share no launches each SAE is scored as soon as it is read: reading further ahead than the
        # reader threads would only front-load the same work.
        saes = read_ahead([s for _, g in groups for s in g], self._load, lambda s: s.nbytes,
                          max(self.cfg.group_size, READERS) if self.shares else READERS, self.budget / 2)
        self.writer = PartWriter()
        try:
            for layer, group in groups:
                self.job_layer = layer
                for batch in [group] if self.shares else [[s] for s in group]:
                    loaded = [next(saes) for _ in batch]
                    for record in self._score_group(loaded, self._shared_encoders(loaded)):
                        count += 1
                        if on_done is not None:
                            on_done(record)
                    del loaded
        except BaseException:
            self.writer.close(check=False)  # what is computed is written, whatever ends the run
            raise
        finally:
            saes.close()
        self.writer.close()
        return count

    def _load(self, source) -> SAEWeights:
        """One SAE's weights in float32 on the device (a reader thread). On CUDA the copies run on a stream of
        their own, so they overlap the scorer's kernels; the tensors are then marked as used by the scorer's
        stream, so their memory is not reused before its kernels are done with them."""
        side = torch.cuda.Stream(torch.device(self.device)) if self.device.startswith("cuda") else None
        try:
            with torch.cuda.stream(side):  # None: no stream to set (CPU)
                sae = source.load(self.store.spec.d_model, self.device, torch.float32)
                if isinstance(sae, SAEWeights):
                    sae.enc_norm  # noqa: B018 - computed here, off the scorer's critical path, and kept
            if side is None:
                return sae
            side.synchronize()
        except SAEError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever is wrong with one SAE's file fails that SAE alone
            detail = str(err).splitlines()[0] if str(err) else ""
            raise SAEError(f"SAE {source.name}: cannot be loaded ({type(err).__name__}: {detail})") from err
        scorer_stream = torch.cuda.default_stream(torch.device(self.device))
        for t in vars(sae).values():
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(scorer_stream)
        return sae

    def _shared_encoders(self, loaded: list[tuple]) -> torch.Tensor | None:
        """When a group will share kernel launches (CUDA, fused backend, JumpReLU or ReLU, all loaded): one (d, M)
        buffer of the encoders side by side in the kernel's encode dtype (--dtype), converted on the device from
        each SAE's float32 W_enc. The SAEs keep their float32 encoders (the exact recheck reads them) unless the
        buffer is float32 too, when each SAE's encoder becomes its slice and its own copy is freed."""
        saes = [sae for _, sae, _ in loaded]
        if len(saes) < 2 or not self.shares or \
                not all(isinstance(sae, SAEWeights) and sae.architecture in ("jumprelu", "relu") for sae in saes):
            return None
        shared = torch.empty(self.store.spec.d_model, sum(sae.width for sae in saes), dtype=self.encode_dtype,
                             device=self.device)
        at = 0
        for sae in saes:
            shared[:, at:at + sae.width].copy_(sae.w_enc)
            if shared.dtype == sae.w_enc.dtype:
                sae.w_enc = shared[:, at:at + sae.width]
            at += sae.width
        return shared

    def _layer_data(self, layer: int):
        """The layer's rows and probe, read once per layer."""
        if layer != self.layer:
            self.layer, self.data, self.probe = None, None, None  # free the previous layer first
            try:
                probe = load_probe(self.store, layer, self.task)
            except KeyError as err:
                task = "" if self.task.name == FIRST_LETTER else f" --task {self.task.name}"
                raise NotScorable(f"the store has no {self.task.name} probe for layer {layer}: run `actstore probe "
                                  f"{self.cfg.store} --layers {layer}{task}`") from err
            self.data, self.probe, self.layer = load_layer(self.store, layer, self.task), probe, layer
        return self.data, self.probe

    def _score_group(self, loaded: list[tuple], shared: torch.Tensor | None):
        ok = [(source, sae) for source, sae, _ in loaded if isinstance(sae, SAEWeights)]
        encoded = self._encode_together(ok, shared)
        for source, sae, load_seconds in loaded:
            t = time.perf_counter()
            layer = None
            if isinstance(sae, SAEWeights):
                try:
                    layer = self._layer_of(source, sae)
                    record = self._score_one(source, sae, layer, encoded.get(source.key))
                except FAILURES as err:
                    record = record_failure(self.out, source, err, self.task)
            # Its read failed: recorded, not raised here (a raise would tie the traceback, this frame and the
            # group's weights in a cycle that only the garbage collector frees).
            elif isinstance(sae, FAILURES):
                record = record_failure(self.out, source, sae, self.task)
            else:
                raise sae
            record["seconds"] = time.perf_counter() - t + load_seconds
            record["provenance"] = self.provenance.of(layer if layer is not None else source.layer)
            self._write(source, record)
            self.scored += 1
            yield record

    def _score_one(self, source, sae: SAEWeights, layer: int, acts) -> dict:
        """One loaded SAE's record (`acts`: its share of a group launch, or None)."""
        flags = degeneracies(sae)  # an SAE that cannot be measured raises SAEError here
        result = score_sae(sae, *self._layer_data(layer), self.score_cfg, acts=acts)
        if self.score_cfg.causal is not None:
            from actstore.score.causal import add_causal

            add_causal(result, sae, layer, self.probe, self._causal_runner())
        dead = result.summary.get("dead_latent_share", 0.0)
        if dead > self.cfg.max_dead_share:
            flags.append(f"{dead:.1%} of its latents never fire on the vocabulary task (more than "
                         f"--max-dead-share {self.cfg.max_dead_share:g})")
        if flags:
            result.summary.update(status="flagged", reason="; ".join(flags))
        return record_result(self.out, source, sae, result, self.score_cfg, self.store.spec, self.task)

    def _encode_together(self, ok: list[tuple], shared: torch.Tensor | None) -> dict:
        """With the fused kernel and the group's encoders in one buffer, one launch per token chunk serves
        every SAE of the group; otherwise score_sae encodes each SAE itself."""
        from actstore.kernels.jumprelu_probe import pack_group

        saes = [sae for _, sae in ok]
        if shared is None or len(saes) < 2 or any(pick_backend(self.score_cfg.backend, sae) != "triton"
                                                  or sae.apply_b_dec_to_input for sae in saes):
            return {}
        try:  # an SAE that cannot be scored fails alone, in _score_group
            layers = {self._layer_of(source, sae) for source, sae in ok}
            if len(layers) != 1:
                return {}
            data = self._layer_data(layers.pop())[0]
        except NotScorable:
            return {}
        group = pack_group(saes, torch.zeros(0, saes[0].d_model, device=shared.device), shared.dtype, w_enc=shared)
        acts = encode_group_fused(encoded_rows(data, self.score_cfg), saes, self.score_cfg.token_chunk, group=group,
                                  dtype=self.score_cfg.encode_dtype)
        return {source.key: a for (source, _), a in zip(ok, acts)}

    def _layer_of(self, source, sae: SAEWeights) -> int:
        layer = sae.layer if sae.layer is not None else source.layer if source.layer is not None else self.cfg.layer
        if layer is None:
            raise NotScorable(f"SAE {source.name}: its layer is unknown (not in its id or config); pass --layer")
        if layer not in self.store.layers:
            raise NotScorable(f"SAE {source.name} reads layer {layer}; the store has layers {self.store.layers}: "
                              f"extract it with `actstore extract ... --layers {layer} --resume`")
        sae.layer = layer
        return layer

    def _write(self, source, record: dict) -> None:
        """Queue the part file (written on the writer thread; `stream.PartWriter`)."""
        self.writer.put(self._write_part, source, record)

    def _write_part(self, source, record: dict) -> None:
        write_atomic(self.out / "parts" / part_name(source.key, self.task), json.dumps(record))

    def close(self) -> None:
        self.store.close()


def _fault_hooks(scorer: LayerScorer) -> None:
    """Test-only faults, asked for through the workers' environment (ScoreCommandConfig.worker_env); with the
    variable unset the scorer is left as it is, and its loop runs no extra check.

    ACTSTORE_FAULT_SCORE_CRASH_ONCE=FLAGFILE:N   the process dies as a killed worker would (no exception, no
                                                 cleanup) instead of writing its N-th part (0-based), if FLAGFILE
                                                 does not exist yet (it is created first, so the restart goes on)
    """
    crash = os.environ.get("ACTSTORE_FAULT_SCORE_CRASH_ONCE")
    if not crash:
        return
    flag, at = crash.rsplit(":", 1)
    write = scorer._write

    def crashing_write(source, record: dict) -> None:
        if scorer.scored == int(at) and not os.path.exists(flag):
            Path(flag).touch()
            os._exit(1)
        write(source, record)

    scorer._write = crashing_write
