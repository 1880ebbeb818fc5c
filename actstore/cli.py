"""The `actstore` command line. One config dataclass per command; each field's help text is its CLI help.

    actstore info STORE [--json]      what a store holds, whether it is complete, its size
    actstore verify STORE             read every shard and check every checksum
    actstore demo --out DIR           the end-to-end chain on the built-in synthetic world
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any


def arg(help: str, default: Any = dataclasses.MISSING, positional: bool = False, **kwargs) -> Any:
    """A dataclass field that carries its CLI help text (and whether it is positional)."""
    return field(default=default, metadata={"help": help, "positional": positional, **kwargs})


@dataclass
class InfoConfig:
    """Show what a store holds: model, layers, groups and rows, completeness, bytes on disk."""

    store: str = arg("path of the store (a .zarr directory)", positional=True)
    json: bool = arg("print machine-readable JSON instead of a table", default=False)


@dataclass
class VerifyConfig:
    """Read every shard of a store and check its manifest, files and checksums; exit 1 on any problem."""

    store: str = arg("path of the store (a .zarr directory)", positional=True)
    json: bool = arg("print the problems as JSON", default=False)


@dataclass
class DemoConfig:
    """Run the pipeline end to end on the built-in synthetic world and check what it produced."""

    out: str = arg("directory for the demo's outputs (created; reused when it exists)", default="demo_out")
    seed: int = arg("random seed of the synthetic world", default=0)


def cmd_info(cfg: InfoConfig) -> int:
    from actstore.store import ActivationStore

    info = ActivationStore.open(cfg.store, require_complete=False).info()
    if cfg.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"store        {info['path']}  (format {info['format_version']}, actstore {info['actstore_version']})")
    print(f"model        {info['model']}" + (f" @ {info['revision']}" if info["revision"] else ""))
    print(f"layers       {info['layers']}  ({info['hook']}, d_model {info['d_model']}, {info['dtype']})")
    print(f"shards       {info['shard_rows']} rows, chunks of {info['chunk_rows']}, codec {info['codec']}")
    for name, rows in info["groups"].items():
        print(f"group        {name}: {rows} rows")
    status = "yes" if info["complete"] else f"NO: {sum(info['missing_shards'].values())} shards missing"
    print(f"complete     {status}")
    print(f"on disk      {info['bytes_on_disk'] / 1e6:.1f} MB")
    return 0


def cmd_verify(cfg: VerifyConfig) -> int:
    from actstore.store import ActivationStore

    store = ActivationStore.open(cfg.store, require_complete=False)  # incomplete shards become problems
    problems = store.verify(progress=sys.stderr.isatty())
    if cfg.json:
        print(json.dumps([p._asdict() for p in problems], indent=2))
    elif problems:
        for p in problems:
            print(f"{p.kind:10s} {p.array} shard {p.shard} (rows {p.rows[0]}-{p.rows[1] - 1}): {p.detail}")
    else:
        print(f"{cfg.store}: every shard present and every checksum correct")
    return 1 if problems else 0


def cmd_demo(cfg: DemoConfig) -> int:
    from actstore.demo import run_demo

    return run_demo(cfg.out, seed=cfg.seed)


COMMANDS = {
    "info": (InfoConfig, cmd_info),
    "verify": (VerifyConfig, cmd_verify),
    "demo": (DemoConfig, cmd_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actstore", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (config, _) in COMMANDS.items():
        p = sub.add_parser(name, help=config.__doc__.split("\n")[0], description=config.__doc__)
        for f in dataclasses.fields(config):
            meta = f.metadata
            if meta.get("positional"):
                p.add_argument(f.name, help=meta["help"])
            elif f.type in (bool, "bool"):
                p.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", help=meta["help"])
            else:
                kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
                p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default,
                               help=f"{meta['help']} (default: {f.default})")
    return parser


def main(argv: list[str] | None = None) -> int:
    from actstore.store import StoreError

    args = build_parser().parse_args(argv)
    config_cls, run = COMMANDS[args.command]
    cfg = config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})
    try:
        return run(cfg)
    except BrokenPipeError:  # `actstore info ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (StoreError, KeyError, ValueError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"actstore {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
