"""The documentation site: `mkdocs build --strict` (warnings are errors) over the docs and the API reference
generated from the docstrings; the navigation keeps guides, results and the API apart and holds every page
(a page left out of it fails the strict build); no reStructuredText role reaches the HTML."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

_RAW_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|math|ref):`")


def _build(tmp_path: Path, extra_page: bool) -> subprocess.CompletedProcess:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    if extra_page:  # a page nobody added to the navigation
        (docs / "zz_new_page.md").write_text("# A new page\n\nSee [the losses](losses.md).\n")
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    cfg["docs_dir"] = str(docs)
    cfg["site_dir"] = str(tmp_path / "site")
    cfg["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                           "NO_MKDOCS_2_WARNING": "1"})


def _nav_pages(nav: list) -> list[str]:
    out = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_strict_build_renders_every_page_and_no_raw_role(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = _build(tmp_path, extra_page=False)
    assert out.returncode == 0, out.stdout + out.stderr
    site, docs = tmp_path / "site", tmp_path / "docs"
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert [next(iter(e)) for e in cfg["nav"]] == ["Home", "Guides", "Results", "API reference"]
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    assert sorted(_nav_pages(cfg["nav"])) == pages
    home = (site / "index.html").read_text()
    for page in pages:
        stem = page[: -len(".md")]
        assert (site / stem / "index.html").is_file() or stem == "index", page
        assert stem == "index" or f'href="{stem}/"' in home, f"{page} is not in the navigation"
    raw = [f"{p.relative_to(site)}: {m.group(0)}"
           for p in site.rglob("*.html") for m in _RAW_ROLE.finditer(p.read_text())]
    assert not raw, f"{len(raw)} raw reStructuredText roles in the HTML: {raw[:10]}"
    # the API reference is generated from the docstrings
    api = (site / "api" / "mining" / "index.html").read_text()
    assert "mine_hard_negatives" in api and "relative_margin" in api
    assert "weighted_info_nce" in (site / "api" / "losses" / "index.html").read_text()
    crossmodal = (site / "api" / "crossmodal" / "index.html").read_text()
    assert "ClipLoss" in crossmodal and "LogitScale" in crossmodal and "one_edit_swaps" in crossmodal


def test_a_page_left_out_of_the_navigation_fails_the_strict_build(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = _build(tmp_path, extra_page=True)
    assert out.returncode != 0
    assert "zz_new_page.md" in out.stdout + out.stderr
