"""Checks of where the work runs: the device and dtype (a tiny tensor on the device), a Ray cluster's address (a
TCP connect with a short timeout), how many workers this machine can place, its memory. Part of cli/checks.py's one
place for every argument check.

    dev = device("--device", "auto")       # cuda when torch sees a GPU, else cpu
    ray_address("--address", "auto")       # BadArgument when no cluster answers
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from actstore.cli.check_values import BadArgument, choice


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device(name: str, value: str | None) -> str:
    """A device that exists here: cpu, cuda or cuda:N (N < the GPU count), mps where available; returns it
    (auto and None become cuda when available, else cpu)."""
    import torch

    if value in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return value
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BadArgument(f"{name} {value}: this machine has no CUDA GPU visible to torch; use {name} cpu")
        if match[1] is not None and int(match[1]) >= count:
            raise BadArgument(f"{name} {value}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return value
    if value == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return value
    raise BadArgument(f"{name} {value!r}: expected cpu, cuda or cuda:N (a device this machine has)")


def dtype_on_device(name: str, dtype: str | None, dev: str) -> None:
    """The dtype exists and the operations the scorer and extractor use run in it on the device."""
    import torch

    if dtype is None:
        return
    choice(name, dtype, {"float32", "bfloat16", "float16"})
    t = getattr(torch, dtype)
    try:
        x = torch.ones(4, 8, dtype=t, device=dev)
        w = torch.ones(8, 16, dtype=t, device=dev)
        pre = torch.addmm(torch.zeros(16, dtype=t, device=dev), x, w)
        (pre * (pre > 0)).nonzero()
        pre.topk(2, dim=-1)
    except (RuntimeError, TypeError) as err:
        raise BadArgument(f"{name} {dtype} does not work on {dev} here ({str(err).splitlines()[0]}); use "
                          f"{name} float32") from None


def ray_address(name: str, address: str | None, timeout: float = 3.0) -> None:
    """A Ray cluster answers at `address` (host:port, ray://host:port, or auto: the running local cluster)
    within `timeout` seconds."""
    if address in (None, "local"):
        return
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or ""
        current = Path("/tmp/ray/ray_current_cluster")
        if not target and current.is_file():
            target = current.read_text().strip()
        if not target:
            raise BadArgument(f"{name} auto: no Ray cluster is running on this machine (start one with `ray start "
                              f"--head`, or leave {name} out to start a private one)")
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", target)
    if not match:
        raise BadArgument(f"{name} {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as err:
        raise BadArgument(f"{name} {address}: no Ray cluster answers at {match[1]}:{match[2]} within {timeout:g} s "
                          f"({err.strerror or err}); start it (`ray up cluster.yaml`) or check the address") from None


def workers_placeable(name: str, workers: int | None, dev: str, address: str | None) -> None:
    """On this machine (no --address), each worker needs a GPU (cuda) or a CPU core: more cannot be placed
    and would wait forever. A cluster is checked once joined (its resources are unknown until then)."""
    import torch

    if not workers or address not in (None, "local"):
        return
    if dev.startswith("cuda"):
        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(), "CPU cores"
    if workers > have:
        raise BadArgument(f"{name} {workers}: this machine has {have} {what}, one per worker; use {name} {have} "
                          f"or fewer")
