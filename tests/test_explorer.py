"""Per-token records, absorbers and the explorer: the records against the scorer's means and an independent
dense recomputation, the planted truth, and the page driven in headless Chromium through Selenium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from actstore.report.explorer import neuronpedia_base, write_explorer
from actstore.run.runner import ScoreCommandConfig, run_score


@pytest.fixture(scope="module")
def results(planted_store, planted_saes, tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "results"
    root = planted_saes[0].parents[2]  # OUT/layer_0/width_1500/absorption_PP: the layer comes from the path
    run_score(ScoreCommandConfig(str(planted_store), str(out), [str(root)], local=True), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def explorer(results):
    return Path(write_explorer(results)["html"]).parent


def table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_token_records_average_to_the_letter_means(results):
    tokens, letters = table(results / "tokens.parquet"), table(results / "letters.parquet")
    assert tokens and pq.read_schema(results / "tokens.parquet").field("text").type.value_type == "string"
    for row in letters:
        mine = [t for t in tokens if t["sae_key"] == row["sae_key"] and t["letter"] == row["letter"]]
        assert len(mine) == row["num_probe_true_positives"]
        mean = sum(t["absorption_fraction"] for t in mine) / len(mine)
        assert mean == pytest.approx(row["mean_absorption_fraction"], abs=1e-6)  # float32 storage
        assert sum(t["full_absorption"] for t in mine) == row["num_full_absorption"]
        assert all(len(t["main_acts"]) == row["num_split_features"] for t in mine)


def test_token_records_equal_a_dense_recomputation(planted_store, planted_saes, results):
    """act, the main latents' projection and activations, the absorbers and the top latent, recomputed here
    from the dense encoding of each row and the probe (no sparse path, no metrics module)."""
    from actstore.store.layers import load_layer
    from actstore.score.probes import load_probe
    from actstore.saes.loading import load_params_npz
    from actstore.store.zarrstore import ActivationStore

    store = ActivationStore.open(planted_store)
    data, probe = load_layer(store, 0), load_probe(store, 0)
    letters = {(r["sae_key"], r["letter"]): r for r in table(results / "letters.parquet")}
    tokens = table(results / "tokens.parquet")
    folder = planted_saes[-1]  # 50% absorbed
    sae = load_params_npz(folder / "params.npz", folder.name, layer=0)
    norms = sae.w_dec.norm(dim=1)
    mine = [t for t in tokens if t["sae_key"] == str(folder.resolve())][::7]
    assert len(mine) > 20
    for t in mine:
        c = ord(t["letter"]) - 97
        p = probe.weight[c] / probe.weight[c].norm()
        s = sae.encode(data.x[t["row"]][None])[0] * norms  # folded activations (m,)
        cos = (sae.w_dec @ p) / norms
        proj = s * cos
        main = letters[(t["sae_key"], t["letter"])]["split_latents"]
        assert t["probe_projection"] == pytest.approx(float(data.x[t["row"]] @ p), rel=1e-5, abs=1e-5)
        assert t["main_projection"] == pytest.approx(float(proj[main].sum()), rel=1e-5, abs=1e-5)
        assert t["main_acts"] == pytest.approx(s[main].tolist(), rel=1e-5, abs=1e-5)
        eligible = [i for i in range(sae.width) if i not in main and cos[i] >= 0.1 and proj[i] > 0]
        expected = sorted(eligible, key=lambda i: -float(proj[i]))[:3]
        assert t["absorber_latents"] == expected
        assert t["top_latent"] == int(proj.argmax())
        assert t["token_id"] == int(data.token_id[t["row"]])
    assert sum(t["absorption_fraction"] > 0 for t in mine) > 5  # the check covered absorbed tokens


def test_text_l0_is_measured_on_alphabetic_context_tokens(planted_store, planted_saes, results):
    from actstore.store.layers import load_layer
    from actstore.saes.loading import load_params_npz
    from actstore.store.zarrstore import ActivationStore

    data = load_layer(ActivationStore.open(planted_store), 0)
    saes = {r["sae_key"]: r for r in table(results / "saes.parquet")}
    for folder in planted_saes:
        sae = load_params_npz(folder / "params.npz", folder.name, layer=0)
        x = data.context_x[data.context_labels >= 0].float()  # fewer than the 8192 rows measured at most
        expected = float((sae.encode(x) > 0).sum(dim=1).float().mean())
        row = saes[str(folder.resolve())]
        assert row["l0_text"] == pytest.approx(expected, rel=1e-6) and row["l0_text"] != row["l0_vocab"]


def test_absorbers_are_the_planted_token_aligned_latents(planted_saes, results):
    tokens, absorbers = table(results / "tokens.parquet"), table(results / "absorbers.parquet")
    for folder in planted_saes:
        truth = json.loads((folder / "truth.json").read_text())
        key = str(folder.resolve())
        planted = {latent: row for letter in truth["evaluated_classes"]
                   for row, latent in truth["classes"][letter].get("absorbed_rows", [])}
        mine = {a["latent"]: a for a in absorbers if a["sae_key"] == key}
        assert set(mine) == set(planted)
        texts = {t["row"]: t["text"] for t in tokens if t["sae_key"] == key}
        for latent, a in mine.items():
            assert a["rows"] == [planted[latent]] and a["num_tokens"] == 1
            assert a["top_tokens"] == [texts[planted[latent]]]  # it fires on its own token only: token-aligned
            assert 0.4 <= a["mean_share"]  # proj / act >= 0.4 by construction


def test_neuronpedia_links_only_for_gemma_scope():
    assert neuronpedia_base("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82", 12) == \
        "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/"
    assert neuronpedia_base("gemma-scope-2b-pt-res-canonical", "layer_5/width_1m/canonical", 5) == \
        "https://www.neuronpedia.org/gemma-2-2b/5-gemmascope-res-1m/"
    assert neuronpedia_base("saes", "layer_0/width_1500/absorption_30", 0) is None


def test_explore_command_and_its_errors(results, tmp_path, capsys):
    from actstore.cli.main import main

    assert main(["explore", str(results), "--out", str(tmp_path / "x")]) == 0
    assert "3 SAEs" in capsys.readouterr().out and (tmp_path / "x" / "data" / "sae_0002.js").exists()
    assert main(["explore", str(tmp_path / "nothing")]) == 2
    assert "not a results folder of `actstore score`" in capsys.readouterr().err  # checks.py, before any work


# ---- in the browser ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(driver_path).exists() or shutil.which("chromium") is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition: str, timeout: float = 10):
    """Poll `condition` (JavaScript) every 20 ms: Selenium's default 0.5 s would make each page step cost half a
    second, since a render after a hash change is never done by the first look."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: d.execute_script(f"return {condition};"))


def open_page(driver, explorer: Path, hash_: str = ""):
    driver.get(explorer.joinpath("index.html").resolve().as_uri() + hash_)
    wait_for(driver, "document.body.dataset.state === 'ready'")


def index_of(explorer: Path) -> list[dict]:
    text = (explorer / "data" / "index.js").read_text()
    return json.loads(text[text.index("(") + 1:text.rindex(")")])["saes"]


SHOWN_TOKENS = """return Array.from(document.querySelectorAll('#absorbed tbody tr'), function (tr) {
  var cells = tr.querySelectorAll('td');
  return [tr.dataset.row, cells[0].innerText, cells[4].innerText, cells[5].innerText,
          Array.from(tr.querySelectorAll('button.follow'), function (b) { return b.dataset.latent; })];
});"""
"""The absorbed-token table as the page shows it, read in one script call: a Selenium round trip per cell costs
seconds for the hundreds of rows of the 50% SAE."""


def shown_tokens(driver) -> list[tuple]:
    """(row, token text, absorption fraction, full absorption, absorber latents) of each row of the table."""
    return [(int(row), text.strip(), float(fraction), full.strip() == "yes", [int(l) for l in latents])
            for row, text, fraction, full, latents in driver.execute_script(SHOWN_TOKENS)]


def expected_tokens(results: Path, key: str, letter: str) -> list[tuple]:
    from actstore.run.tokens import absorbed, token_absorbers

    return [(t["row"], t["text"], round(t["absorption_fraction"], 3), t["full_absorption"],
             [latent for latent, _, _ in token_absorbers(t)])
            for t in table(results / "tokens.parquet")
            if t["sae_key"] == key and t["letter"] == letter and absorbed(t)]


def test_choosing_a_letter_shows_its_absorbed_tokens_as_in_tokens_parquet(browser, explorer, results, planted_saes):
    from selenium.webdriver.common.by import By

    saes = index_of(explorer)
    sae = next(s for s in saes if s["key"] == str(planted_saes[-1].resolve()))
    open_page(browser, explorer)
    # first view: the index and the first SAE's data only; no other SAE's file, no search index
    assert browser.execute_script("return ACTSTORE.loadedFiles;") == [saes[0]["file"]]
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "sae")).select_by_value(str(sae["n"]))  # choose it in the SAE menu
    wait_for(browser, f"document.body.dataset.sae === '{sae['n']}' && document.body.dataset.state === 'ready'")
    letters = table(results / "letters.parquet")
    absorbing = [r for r in letters if r["sae_key"] == sae["key"] and r["mean_absorption_fraction"] > 0]
    for row in absorbing[:2]:
        browser.find_element(By.CSS_SELECTOR, f"#classes button[data-class='{row['class']}']").click()
        wait_for(browser, f"document.body.dataset['class'] === '{row['class']}'")
        shown = shown_tokens(browser)
        expected = expected_tokens(results, sae["key"], row["letter"])
        assert len(shown) == len(expected) > 0
        assert [s[:2] for s in shown] == [e[:2] for e in expected]
        assert [s[2] for s in shown] == pytest.approx([e[2] for e in expected], abs=5e-4)  # shown to 3 places
        assert [(s[3], s[4]) for s in shown] == [(e[3], e[4]) for e in expected]
        prf = [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "#prf tbody tr")]
        assert prf[0].split()[-1] == f"{row['probe_test_f1']:.3f}" and prf[1].split()[-1] == f"{row['main_f1']:.3f}"
        assert prf[2].split()[-1] == f"{row['single_f1']:.3f}"
        # no Neuronpedia link for SAEs that are not Gemma Scope's
        assert not browser.find_elements(By.CSS_SELECTOR, "a.np")


def test_following_an_absorber_shows_its_tokens(browser, explorer, results, planted_saes):
    from selenium.webdriver.common.by import By

    sae = next(s for s in index_of(explorer) if s["key"] == str(planted_saes[-1].resolve()))
    absorbers = {a["latent"]: a for a in table(results / "absorbers.parquet") if a["sae_key"] == sae["key"]}
    letter = next(iter(absorbers.values()))["classes"][0]
    open_page(browser, explorer, f"#sae={sae['n']}&class={letter}")
    button = browser.find_element(By.CSS_SELECTOR, "#absorbed tbody button.follow")
    latent = int(button.get_attribute("data-latent"))
    button.click()
    wait_for(browser, f"!document.getElementById('absorber-panel').hidden && "
                      f"document.getElementById('absorber-id').dataset.latent === '{latent}'")
    top = [li.find_element(By.CLASS_NAME, "token").text for li in browser.find_elements(By.CSS_SELECTOR, "#absorber-top li")]
    assert top == absorbers[latent]["top_tokens"]
    absorbed_tokens = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#absorber-tokens .token")]
    assert absorbed_tokens == absorbers[latent]["tokens"]
    assert f"{absorbers[latent]['mean_share']:.3f}" in browser.find_element(By.ID, "absorber-summary").text


def test_token_search_lists_every_sae_where_it_is_absorbed(browser, explorer, results):
    from selenium.webdriver.common.by import By

    from actstore.run.tokens import absorbed, token_absorbers

    tokens = [t for t in table(results / "tokens.parquet") if absorbed(t)]
    text = max({t["text"] for t in tokens}, key=lambda x: sum(t["text"] == x for t in tokens))
    expected = sorted((t["sae_key"], t["letter"], latent) for t in tokens if t["text"] == text
                      for latent, _, _ in token_absorbers(t))
    open_page(browser, explorer)
    box = browser.find_element(By.ID, "search-input")
    box.clear()
    box.send_keys(text.upper())  # the search ignores case
    browser.find_element(By.ID, "search-button").click()
    wait_for(browser, f"document.body.dataset.searched === {json.dumps(text.lower())}")
    keys = {s["n"]: s["key"] for s in index_of(explorer)}
    rows = browser.find_elements(By.CSS_SELECTOR, "#search-results tbody tr")
    shown = sorted((keys[int(r.get_attribute("data-sae"))], r.get_attribute("data-class"),
                    int(r.get_attribute("data-latent"))) for r in rows)
    assert shown == expected and len({k for k, _, _ in expected}) >= 2  # found in several SAEs
    searched = [f for f in browser.execute_script("return ACTSTORE.loadedFiles;") if f.startswith("search")]
    assert searched == [f"search_{text[0]}.js"]  # the index of tokens starting with its letter, nothing else
    rows[0].click()  # a result opens that SAE and letter
    first = rows[0].get_attribute("data-sae")
    wait_for(browser, f"document.body.dataset.sae === '{first}' && document.body.dataset.state === 'ready'")


def test_the_page_lists_exactly_the_planted_absorptions(browser, explorer, planted_saes):
    """Every SAE, every evaluated letter: the rows the page lists are the planted absorbed tokens, each with
    exactly its planted absorber (truth.json from synth-saes)."""
    saes = {s["key"]: s for s in index_of(explorer)}
    open_page(browser, explorer)
    listed_any = 0
    for folder in planted_saes:
        truth = json.loads((folder / "truth.json").read_text())
        sae = saes[str(folder.resolve())]
        for letter in truth["evaluated_classes"]:  # through the URLs before tasks: #letter= reads as #class=
            browser.execute_script(f"location.hash = '#sae={sae['n']}&letter={letter}';")
            wait_for(browser, f"document.body.dataset.sae === '{sae['n']}' && document.body.dataset['class'] === "
                              f"'{letter}' && document.body.dataset.state === 'ready'")
            planted = sorted((row, [latent]) for row, latent in truth["classes"][letter].get("absorbed_rows", []))
            shown = sorted((row, latents) for row, _, _, _, latents in shown_tokens(browser))
            assert shown == planted, (folder.name, letter)
            listed_any += len(shown)
    assert listed_any > 20


# ---- two tasks side by side -------------------------------------------------------------------------------------

def labels_file(store: Path, path: Path) -> Path:
    """A user's labels (labels:FILE, no template: it relabels the first-letter rows): a vocabulary token's class is
    whether its first letter is a vowel."""
    from actstore.store.zarrstore import ActivationStore

    with ActivationStore.open(store) as s:
        texts = [str(t) for t in s.column("vocab", "text")]
    path.write_text("token,class\n" + "".join(f"{t},{'vowel' if t[0] in 'aeiou' else 'consonant'}\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def two_tasks(planted_store, planted_saes, tmp_path_factory):
    """A results folder holding first_letter and a second task (the user's vowel labels) for two SAEs; the
    store is a copy (the second task's probes are added to it) and the probes are trained by the CLI."""
    from actstore.cli.main import main

    root = tmp_path_factory.mktemp("two_tasks")
    store = root / "s.zarr"
    shutil.copytree(planted_store, store)
    spec = f"labels:{labels_file(store, root / 'vowels.csv')}"
    assert main(["probe", str(store), "--task", spec]) == 0
    out = root / "results"
    saes = [str(p) for p in planted_saes[1:]]
    first = run_score(ScoreCommandConfig(str(store), str(out), saes, local=True, bootstrap=0), log=lambda _: None)
    parts = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "parts").iterdir()}
    second = run_score(ScoreCommandConfig(str(store), str(out), saes, local=True, bootstrap=0, task=spec),
                       log=lambda _: None)
    return {"store": store, "out": out, "spec": spec, "saes": saes,
            "first_parts": parts, "summaries": (first, second)}


def test_two_tasks_side_by_side_in_one_results_folder(two_tasks):
    from actstore.run.results import part_name
    from actstore.tasks.registry import get_task

    out, spec, saes = two_tasks["out"], two_tasks["spec"], two_tasks["saes"]
    task = get_task(spec)
    assert [s["computed"] for s in two_tasks["summaries"]] == [2, 2] and all(s["failed"] == 0
                                                                             for s in two_tasks["summaries"])
    rows = table(out / "saes.parquet")
    assert sorted((r["task"], r["status"]) for r in rows) == sorted([("first_letter", "ok")] * 2 + [(task.name, "ok")] * 2)
    classes = table(out / "letters.parquet")
    assert {r["task"] for r in classes} == {"first_letter", task.name}
    assert {r["class"] for r in classes if r["task"] == task.name} == {"consonant", "vowel"}
    assert all(r["letter"] == r["class"] for r in classes if r["task"] == "first_letter")
    assert all(r["letter"] is None for r in classes if r["task"] == task.name)  # the alias is first_letter's only
    tokens = table(out / "tokens.parquet")
    assert {(t["task"], t["class"] in task.classes) for t in tokens} == {("first_letter", False), (task.name, True)}
    assert {a["task"] for a in table(out / "absorbers.parquet")} <= {"first_letter", task.name}
    assert len(list((out / "saebench").iterdir())) == 2  # SAEBench has the first-letter task only
    for key in {r["sae_key"] for r in rows}:  # parts side by side: first_letter's name unchanged, the other's keyed
        assert (out / "parts" / part_name(key)).exists() and (out / "parts" / part_name(key, task)).exists()
        assert part_name(key, task) == part_name(key).replace(".json", f".{task.key}.json")

    def untouched():
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in two_tasks["first_parts"]} == two_tasks["first_parts"]

    assert untouched()  # scoring the second task wrote nothing of the first's
    store = str(two_tasks["store"])
    assert run_score(ScoreCommandConfig(store, str(out), saes, local=True, bootstrap=0),
                     log=lambda _: None)["computed"] == 0  # and invalidated nothing of it
    logs = []
    again = run_score(ScoreCommandConfig(store, str(out), saes, local=True, bootstrap=0, task=spec, min_probe_f1=0.5),
                      log=logs.append)
    assert again["computed"] == 2 and any("min_probe_f1 0.6 -> 0.5" in line for line in logs), logs
    assert untouched()  # rescoring the second task leaves the first one's parts as they were, bytes and times
    assert {r["task"] for r in table(out / "saes.parquet")} == {"first_letter", task.name}


def test_report_and_explorer_show_both_tasks(two_tasks):
    from actstore.report.pages import write_report
    from actstore.tasks.registry import get_task

    out, task = two_tasks["out"], get_task(two_tasks["spec"])
    written = write_report(out)
    assert written["tasks"] == ["first_letter", task.name] and len(written["figures"]) == 16
    page = (out / "report" / "report.html").read_text()
    assert 'data-task="first_letter"' in page and f'data-task="{task.name}"' in page
    assert (out / "report" / "absorption_per_class.png").exists()  # first_letter's figures where they were
    assert (out / "report" / task.key / "absorption_per_class.png").exists()
    meta = json.loads((out / "report" / "report.json").read_text())
    assert set(meta["tasks"]) == {"first_letter", task.name} and meta["tasks"][task.name]["scored"] == 2

    explorer = Path(write_explorer(out)["html"]).parent
    text = (explorer / "data" / "index.js").read_text()
    index = json.loads(text[text.index("(") + 1:text.rindex(")")])
    assert [t["name"] for t in index["tasks"]] == ["first_letter", task.name]
    assert index["tasks"][1]["classes"] == ["consonant", "vowel"]
    assert sorted(s["task"] for s in index["saes"]) == sorted(["first_letter"] * 2 + [task.name] * 2)


def test_the_page_switches_tasks_and_their_class_buttons(browser, two_tasks):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from actstore.tasks.registry import get_task

    task = get_task(two_tasks["spec"])
    explorer = Path(write_explorer(two_tasks["out"], two_tasks["out"] / "explorer2")["html"]).parent
    entries = index_of(explorer)
    open_page(browser, explorer)
    assert browser.find_element(By.ID, "task-choice").is_displayed()  # several tasks: the selector shows
    assert browser.execute_script("return document.body.dataset.task;") == "first_letter"
    buttons = [b.get_attribute("data-class") for b in browser.find_elements(By.CSS_SELECTOR, "#classes button")]
    assert len(buttons) > 2 and all(len(b) == 1 for b in buttons)
    shown = browser.execute_script("return document.body.dataset.sae;")
    key = next(s["key"] for s in entries if str(s["n"]) == shown)
    Select(browser.find_element(By.ID, "task")).select_by_value(task.name)
    wait_for(browser, f"document.body.dataset.task === {json.dumps(task.name)} && document.body.dataset.state === 'ready'")
    now = browser.execute_script("return document.body.dataset.sae;")
    assert next(s for s in entries if str(s["n"]) == now)["key"] == key  # the same SAE, on the other task
    buttons = [b.get_attribute("data-class") for b in browser.find_elements(By.CSS_SELECTOR, "#classes button")]
    assert buttons == ["consonant", "vowel"]
    browser.find_element(By.CSS_SELECTOR, "#classes button[data-class='vowel']").click()
    wait_for(browser, "document.body.dataset['class'] === 'vowel'")
    assert "#sae=" + now + "&class=vowel" in browser.current_url
    sae_menu = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "sae")).options]
    assert sorted(sae_menu) == sorted(str(s["n"]) for s in entries if s["task"] == task.name)  # this task's only


def test_one_task_hides_the_task_selector(browser, explorer):
    from selenium.webdriver.common.by import By

    open_page(browser, explorer)
    assert not browser.find_element(By.ID, "task-choice").is_displayed()


def test_an_old_results_folder_still_reports_and_explores(results, tmp_path):
    """A folder written before tasks: tables with `letter` and no `task` or `class`, parts with `letters`."""
    import pyarrow.parquet as pq

    from actstore.report.pages import write_report
    from actstore.run.results import read_classes, write_tables

    old = tmp_path / "old"
    shutil.copytree(results, old, ignore=shutil.ignore_patterns("explorer", "report"))
    for path in [old / "saes.parquet", old / "letters.parquet", old / "tokens.parquet", old / "absorbers.parquet",
                 *(old / "parts").glob("*.tokens.parquet")]:
        t = pq.read_table(path)
        if "class" in t.column_names and "letter" not in t.column_names:  # a part's own records: `letter` then
            t = t.rename_columns(["letter" if c == "class" else c for c in t.column_names])
        t = t.drop_columns([c for c in ("task", "class", "classes") if c in t.column_names])
        pq.write_table(t, path)
        assert "task" not in pq.read_table(path).column_names
    assert "letter" in pq.read_table(old / "letters.parquet").column_names
    written = write_report(old)
    assert written["tasks"] == ["first_letter"] and written["scored"] == 3 and len(written["figures"]) == 8
    explorer = Path(write_explorer(old)["html"]).parent
    text = (explorer / "data" / "index.js").read_text()
    index = json.loads(text[text.index("(") + 1:text.rindex(")")])
    assert [t["name"] for t in index["tasks"]] == ["first_letter"] and len(index["saes"]) == 3
    assert all(s["classes"] for s in index["saes"])  # the classes come from the `letter` column
    for part in (old / "parts").glob("*.json"):  # parts before tasks: `letters`, no `task`
        record = json.loads(part.read_text())
        record["letters"] = record.pop("classes")
        record.pop("task")
        part.write_text(json.dumps(record))
    assert write_tables(old) == (3, 0)
    rows = read_classes(old)
    assert {r["task"] for r in rows} == {"first_letter"} and all(r["class"] == r["letter"] for r in rows)
    assert rows == read_classes(results)
