"""The documentation: docs/cli.md is the parser's own --help (it cannot drift), the pages build with
`mkdocs build --strict` (no broken link, anchor or nav entry), the built pages fetch nothing from the network,
and the README stays a front door whose links land and whose test command is CI's."""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_the_cli_reference_is_the_parsers_help():
    from actstore.cli.reference import PAGE, render

    page = render()
    committed = PAGE.read_text() if PAGE.is_file() else ""
    if committed != page:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), page.splitlines(True),
                                                 "docs/cli.md (committed)", "docs/cli.md (from the parser)"))[:40])
        pytest.fail("docs/cli.md differs from the parser's --help: run `make docs` (or `python -m "
                    f"actstore.cli.reference`) and commit docs/cli.md. First differences:\n{diff}")


def test_the_cli_reference_has_every_command_and_option():
    from actstore.cli.main import COMMANDS, build_parser
    from actstore.cli.reference import render, subparsers

    page = render()
    for name, sub in subparsers(build_parser()).items():
        assert f"\n## actstore {name}\n" in page, f"docs/cli.md has no section for `actstore {name}`"
        section = page.split(f"\n## actstore {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:  # noqa: SLF001 - every option the parser shows, positional or not
            if action.help == argparse.SUPPRESS:  # a hidden alias (an old spelling), not in --help by design
                continue
            for flag in action.option_strings or [action.dest]:
                assert flag in section, f"docs/cli.md's `actstore {name}` section does not show {flag}"
    assert len(COMMANDS) == page.count("\n## actstore ")


def test_the_check_mode_says_what_to_run(tmp_path, capsys):
    from actstore.cli.reference import main

    stale = tmp_path / "cli.md"
    stale.write_text("# an old page\n")
    assert main(["--check", "--out", str(stale)]) == 1
    assert "make docs" in capsys.readouterr().err
    assert main(["--out", str(stale)]) == 0 and main(["--check", "--out", str(stale)]) == 0


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The documentation built strict into a temporary folder (a warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_mkdocs_builds_strict_with_every_page_in_the_nav(site):
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = {page for entry in config["nav"] for page in entry.values()}
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert in_nav == on_disk, f"pages not in mkdocs.yml's nav: {on_disk - in_nav}; in the nav, not on disk: " \
                              f"{in_nav - on_disk}"
    for page in in_nav:
        assert (site / page.replace(".md", ".html")).is_file(), f"{page} was not built"


def test_the_built_pages_fetch_nothing_from_the_network(site):
    for html in site.rglob("*.html"):
        fetched = re.findall(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"", html.read_text())
        assert not fetched, f"{html.relative_to(site)} loads from the network: {fetched}"


def test_the_readme_is_a_front_door_whose_links_land(site):
    text = README.read_text()
    assert len(text.splitlines()) <= 200, f"README.md has {len(text.splitlines())} lines; keep it a front door " \
                                          "(at most 200) and move detail to docs/"
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "the README links no documentation"
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        assert (ROOT / target).exists(), f"README.md links {link}: {target} does not exist"
        if anchor:
            assert target.startswith("docs/") and target.endswith(".md"), f"README.md links an anchor in {target}"
            html = (site / Path(target).relative_to("docs").with_suffix(".html")).read_text()
            assert f'id="{anchor}"' in html, f"README.md links {link}: {target} has no heading #{anchor}"


def test_the_readmes_test_command_is_cis():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run no longer runs `make test`"
    assert "make test " in README.read_text(), "README.md does not give `make test` as the test command"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs: ", makefile, re.M) and "actstore.cli.reference" in makefile, \
        "the Makefile's `docs` target no longer regenerates docs/cli.md"
