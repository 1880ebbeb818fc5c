"""The install: nothing at the repo root shadows an installed package (Hugging Face's `kernels`, which transformers
imports, was shadowed by our kernels/), actstore.kernels ships in a wheel, and the lock pins every dependency."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def python_at_root(code: str, cwd: Path = ROOT, **env) -> subprocess.CompletedProcess:
    """`python -c code` started in `cwd` (the repo root: sys.path[0] is the root, as for pytest, `python -m` and
    Ray's workers)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": "", **env})


def test_nothing_at_the_repo_root_is_an_importable_package_but_actstore():
    importable = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} | \
                 {p.stem for p in ROOT.glob("*.py")}
    assert importable == {"actstore"}, "a regular package at the root shadows an installed one of its name"
    assert (ROOT / "kernels").is_dir() and not (ROOT / "kernels" / "__init__.py").exists()
    assert (ROOT / "actstore" / "kernels").resolve() == (ROOT / "kernels").resolve()


def test_transformers_imports_hugging_faces_kernels_from_the_repo_root():
    """The issue's own command: transformers >= 5.25 imports `kernels` at `import transformers.activations`."""
    result = python_at_root("import transformers.activations, kernels; print(kernels.__file__)")
    assert result.returncode == 0, result.stderr[-2000:]
    installed = Path(importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py"))
    assert Path(result.stdout.strip()) == installed


def test_no_folder_at_the_repo_root_takes_the_name_of_an_installed_package(tmp_path):
    """Folders without __init__.py (kernels, tests, docs, ...) are namespace portions, which lose to an installed
    package of their name: each such name imports the same thing from the repo root as from any other folder."""
    installed = importlib.metadata.packages_distributions()
    clashes = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name in installed and p.name != "actstore")
    assert "kernels" in clashes  # the case that broke fresh clones, kept in view
    code = ("import importlib\n"
            f"for name in {clashes!r}:\n"
            "    m = importlib.import_module(name)\n"
            "    print(name, getattr(m, '__file__', None) or list(m.__path__))\n")
    here, elsewhere = python_at_root(code), python_at_root(code, cwd=tmp_path)
    assert here.returncode == 0, here.stderr[-2000:]
    assert here.stdout == elsewhere.stdout and len(here.stdout.splitlines()) == len(clashes)


@pytest.mark.slow
def test_a_ray_worker_started_from_the_repo_root_loads_a_transformers_model(synth_model):
    code = f"""
import os, sys, ray, torch
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

@ray.remote
def load(path):
    import kernels
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path)
    return os.getcwd(), sys.path[0], kernels.__file__, sum(p.numel() for p in model.parameters())

print(*ray.get(load.remote({str(synth_model)!r})), sep="\\n")
ray.shutdown()
"""
    result = python_at_root(code)
    assert result.returncode == 0, result.stderr[-3000:]
    cwd, path0, hf_kernels, params = result.stdout.strip().splitlines()[-4:]
    assert cwd == path0 == str(ROOT)  # the worker searches the repo root first, as the bug needed
    assert Path(hf_kernels) == Path(importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py"))
    from transformers import AutoModelForCausalLM

    assert int(params) == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(synth_model).parameters())


@pytest.mark.slow
def test_a_wheel_installs_the_kernels_as_actstore_kernels_and_nothing_top_level(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("actstore-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert {"actstore/kernels/jumprelu_probe.py", "actstore/kernels/codegen.py"} <= set(names)
    assert {n.split("/")[0] for n in names if not n.startswith("actstore-")} == {"actstore"}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    result = python_at_root("import actstore, actstore.kernels.jumprelu_probe as k; print(k.__file__)",
                            cwd=tmp_path, PYTHONPATH=str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(tmp_path / "site" / "actstore" / "kernels" / "jumprelu_probe.py")


# ---------------------------------------------------------------------------- the lock


def locked() -> dict[str, str]:
    """requirements.lock as {canonical name: version}; every line that is not a comment is NAME==VERSION."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.!]*)", line)
        assert match, f"requirements.lock: {line!r} is not NAME==VERSION"
        name = canonicalize_name(match[1])
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = match[2]
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


@pytest.mark.skipif(os.environ.get("ACTSTORE_LOCK") == "", reason="resolving without the lock (`make upgrade-deps`): "
                    "the lock is rewritten from this environment once the suite passes")
def test_the_lock_pins_every_requirement_inside_pyprojects_bounds():
    pins = locked()
    assert "actstore" not in pins
    for req in project_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run `make upgrade-deps`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock has {name}=={pins[name]}, outside pyproject.toml's {req}"


def test_the_majors_that_broke_us_have_upper_bounds():
    bounded = {canonicalize_name(r.name) for r in project_requirements() if any(s.operator == "<" for s in r.specifier)}
    assert {"transformers", "zarr", "ray", "sae-lens", "numpy"} <= bounded


@pytest.mark.skipif(not os.environ.get("ACTSTORE_LOCK"), reason="ACTSTORE_LOCK unset: not a locked install "
                    "(`make test` sets it; `make upgrade-deps` tests the newest releases instead)")
def test_this_environment_has_exactly_the_locked_versions():
    pins = locked()
    differ = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        version = dist.version.split("+")[0]
        if name in pins and pins[name] != version:
            differ[name] = (pins[name], version)
    assert not differ, f"(locked, installed) differ: {differ}; `make setup` reinstalls from the lock"
