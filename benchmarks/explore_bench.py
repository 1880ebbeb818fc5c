"""The explorer on a whole-set results folder: page weight and time to first view in headless Chromium.

    python benchmarks/explore_bench.py [--test-tokens 9000] [--absorbed 0.2]

Builds, in a scratch folder, a synthetic results folder of the 316 SAEs of gemma-scope-2b-pt-res (ids,
layers, widths and L0s from sae-lens's catalog): for each SAE a part record of 24 evaluated letters and a
per-token file of `--test-tokens` probe true positives (the same vocabulary rows for every SAE, as one store
gives; random pseudo-words), of which `--absorbed` are absorbed by 1 to 3 latents. Then `actstore explore`
on it, and Chromium (Selenium, Debian's chromium-driver) opens the page from file://:
- first view: navigation start to the first SAE drawn (the page's own performance.now()), the files the
  page read by then and their bytes;
- another SAE: from choosing it to its letters drawn (its data file loaded on demand);
- first search: from submitting a token to the results drawn (the search index loaded on demand).
Writes benchmarks/results/explore_bench.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from store_bench import environment, print_table, write_result  # noqa: E402

from actstore.run.results import part_name, write_tables  # noqa: E402
from actstore.score.absorption import TOKEN_COLUMNS  # noqa: E402
from actstore.run.tokens import tokens_path, write_tokens  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def pseudo_words(n: int, rng) -> list[str]:
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    out = set()
    while len(out) < n:
        k = rng.integers(2, 6)
        out.add(LETTERS[rng.integers(26)] + "".join(rng.choice(list(vowels if i % 2 else consonants)) for i in range(k)))
    return sorted(out)


def synthetic_results(out: Path, n_tokens: int, absorbed_share: float, seed: int = 0) -> dict:
    """A results folder shaped like a whole-set score of Gemma Scope; returns its sizes."""
    from actstore.saes.loading import gemma_scope_catalog

    rng = np.random.default_rng(seed)
    entries = gemma_scope_catalog("gemma-scope-2b-pt-res")
    words = pseudo_words(n_tokens, rng)
    letters_of = np.array([LETTERS.index(w[0]) for w in words])
    (out / "parts").mkdir(parents=True, exist_ok=True)
    evaluated = [c for c in LETTERS if c not in "qx"]
    token_bytes = []
    for e in entries:
        key = f"{e.release}/{e.id}"
        width = e.width
        n = n_tokens
        absorbed = rng.random(n) < absorbed_share
        k_abs = rng.integers(1, 4, n) * absorbed
        act = rng.uniform(2, 20, n)
        fraction = np.where(absorbed, rng.uniform(0.05, 1, n), 0.0)
        latents = [rng.integers(0, width, k).tolist() for k in k_abs]
        cos = [rng.uniform(0.1, 0.6, len(l)).tolist() for l in latents]
        proj = [(rng.uniform(0.1, 0.6, len(l)) * a).tolist() for l, a in zip(latents, act)]
        keep = np.isin(letters_of, [LETTERS.index(c) for c in evaluated])
        rows = np.nonzero(keep)[0]
        tokens = {
            "letter": [words[r][0] for r in rows], "row": rows.tolist(), "token_id": (rows * 7).tolist(),
            "text": [words[r] for r in rows], "probe_projection": act[rows].tolist(),
            "main_projection": (act[rows] * (1 - fraction[rows])).tolist(),
            "main_acts": [[float(x)] for x in act[rows] * (1 - fraction[rows])],
            "absorber_latents": [latents[r] for r in rows], "absorber_acts": [proj[r] for r in rows],
            "absorber_cos": [cos[r] for r in rows], "absorber_projections": [proj[r] for r in rows],
            "top_latent": [latents[r][0] if latents[r] else 7 for r in rows],
            "top_cos": [cos[r][0] if cos[r] else 0.3 for r in rows],
            "top_projection_ratio": [proj[r][0] / act[r] if proj[r] else 0.5 for r in rows],
            "absorption_fraction": fraction[rows].tolist(), "full_absorption": (fraction[rows] > 0.9).tolist(),
            "k_sparse_miss": (fraction[rows] > 0.5).tolist(),
        }
        assert list(tokens) == list(TOKEN_COLUMNS)
        part = out / "parts" / part_name(key)
        token_bytes.append(write_tokens(tokens_path(part), tokens))
        absorbing = sorted({i for r in rows for i in latents[r]})
        top = {str(i): [[int(r), words[r], float(v)] for r, v in zip(rng.integers(0, n, 8), np.sort(rng.uniform(1, 9, 8))[::-1])]
               for i in absorbing}
        letter_rows = []
        for c in evaluated:
            mine = letters_of[rows] == LETTERS.index(c)
            k = int(rng.integers(1, 4))
            letter_rows.append({
                "letter": c, "probe_test_f1": 0.95, "probe_test_precision": 0.94, "probe_test_recall": 0.96,
                "num_probe_true_positives": int(mine.sum()),
                "mean_absorption_fraction": float(fraction[rows][mine].mean()) if mine.any() else 0.0,
                "full_absorption_rate": float((fraction[rows][mine] > 0.9).mean()) if mine.any() else 0.0,
                "num_full_absorption": int((fraction[rows][mine] > 0.9).sum()), "num_split_features": k,
                "split_latents": rng.integers(0, width, k).tolist(),
                "k_sparse_f1": sorted(rng.uniform(0.5, 0.9, k + 1).tolist()),
                "split_cos_dec": rng.uniform(0.3, 0.9, k).tolist(), "main_precision": 0.8, "main_recall": 0.7,
                "main_f1": 0.75, "single_latent": int(rng.integers(width)), "single_latent_enc_cos": 0.5,
                "single_precision": 0.8, "single_recall": 0.6, "single_f1": 0.69})
        summary = {"status": "ok", "reason": "", "letters_evaluated": len(evaluated), "l0_vocab": 2.0 * (e.l0 or 50),
                   "l0_text": float(e.l0 or 50),
                   "mean_absorption_fraction": float(np.mean([r["mean_absorption_fraction"] for r in letter_rows])),
                   "mean_full_absorption": float(np.mean([r["full_absorption_rate"] for r in letter_rows])),
                   "mean_num_split_features": 2.0, "mean_single_f1": 0.69}
        for name in ("std_absorption_fraction", "std_full_absorption", "std_num_split_features"):
            summary[name] = 0.1
        part.write_text(json.dumps({"sae_key": key, "release": e.release, "sae_id": e.id, "layer": e.layer,
                                    "width": width, "l0_reported": e.l0, "fingerprint": "", "seconds": 1.0,
                                    "letters": letter_rows, "summary": summary, "latent_top_tokens": top}))
    t = time.perf_counter()
    write_tables(out)
    return {"saes": len(entries), "tokens_per_sae": int(keep.sum()), "token_file_bytes_per_sae": float(np.mean(token_bytes)),
            "tokens_parquet_bytes": (out / "tokens.parquet").stat().st_size,
            "absorbers_parquet_bytes": (out / "absorbers.parquet").stat().st_size,
            "write_tables_seconds": time.perf_counter() - t}


def browse(explorer: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 120)
    try:
        first = []
        for _ in range(3):  # cold, then warm
            driver.get("about:blank")
            driver.get(explorer.joinpath("index.html").resolve().as_uri())
            wait.until(lambda d: d.execute_script("return document.body.dataset.state === 'ready'"))
            first.append(float(driver.execute_script("return Number(document.body.dataset.firstViewMs);")))
        files = ["index.html", "explorer.css", "explorer.js", "data/index.js"] + \
            ["data/" + f for f in driver.execute_script("return ACTSTORE.loadedFiles;")]
        weight = sum((explorer / f).stat().st_size for f in files)
        last = driver.execute_script("return ACTSTORE.loadedFiles.length;")
        t0 = driver.execute_script("return performance.now();")
        driver.execute_script("location.hash = '#sae=200';")
        wait.until(lambda d: d.execute_script("return document.body.dataset.sae === '200' && "
                                              "!document.getElementById('letter-panel').hidden"))
        switch = driver.execute_script("return performance.now();") - t0
        other_sae_file = driver.execute_script("return ACTSTORE.loadedFiles;")[last:]
        box = driver.find_element(By.ID, "search-input")
        word = driver.execute_script("return document.querySelector('#absorbed tbody .token').textContent;")
        box.send_keys(word)
        t0 = driver.execute_script("return performance.now();")
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: d.execute_script(f"return document.body.dataset.searched === {json.dumps(word.lower())}"))
        search = driver.execute_script("return performance.now();") - t0
        hits = len(driver.find_elements(By.CSS_SELECTOR, "#search-results tbody tr"))
        return {"first_view_ms": first, "first_view_files": files, "first_view_bytes": weight,
                "switch_sae_ms": switch, "switch_loaded": other_sae_file, "first_search_ms": search,
                "search_hits": hits, "chromium": driver.capabilities.get("browserVersion")}
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-tokens", type=int, default=9000,
                        help="probe true positives per SAE on the test split (Gemma-2-2b: about 9000, see NOTES.md)")
    parser.add_argument("--absorbed", type=float, default=0.2, help="share of them absorbed")
    parser.add_argument("--out", default=str(HERE / "results" / "explore_bench.json"))
    args = parser.parse_args()
    from actstore.report.explorer import write_explorer

    with tempfile.TemporaryDirectory(dir=HERE) as scratch:
        results = Path(scratch) / "results"
        t = time.perf_counter()
        built = synthetic_results(results, args.test_tokens, args.absorbed)
        built["build_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        written = write_explorer(results)
        built["explore_seconds"] = time.perf_counter() - t
        explorer = Path(written["html"]).parent
        page = browse(explorer)
    result = {"benchmark": "explore_bench", "environment": environment(), "args": vars(args), "results_folder": built,
              "explorer_bytes": written["bytes"], "browser": page}
    total = sum(written["bytes"].values())
    print_table(["SAEs", "tokens/SAE", "tokens file/SAE", "explorer total", "first view", "first view ms",
                 "switch SAE ms", "first search ms"],
                [[built["saes"], built["tokens_per_sae"], f"{built['token_file_bytes_per_sae'] / 1e3:.0f} kB",
                  f"{total / 1e6:.1f} MB", f"{page['first_view_bytes'] / 1e3:.0f} kB", f"{min(page['first_view_ms']):.0f}",
                  f"{page['switch_sae_ms']:.0f}", f"{page['first_search_ms']:.0f}"]])
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
