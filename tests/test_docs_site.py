"""The documentation site: `mkdocs build --strict` (warnings are errors) over the docs and the API reference
generated from the docstrings, and every page under docs/ reachable from the navigation."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_strict_build_reaches_every_page_including_a_new_one(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    # a page nobody added to any list: the navigation must pick it up and the strict build must pass
    (docs / "zz_new_page.md").write_text("# A new page\n\nSee [the losses](losses.md).\n")
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    cfg["docs_dir"] = str(docs)
    cfg["site_dir"] = str(tmp_path / "site")
    cfg["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
                         capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                          "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    site = tmp_path / "site"
    home = (site / "index.html").read_text()
    pages = [p.relative_to(docs).with_suffix("") for p in docs.rglob("*.md")]
    for page in pages:
        href = "." if page.name == "index" else f"{page.as_posix()}/"
        assert (site / page / "index.html").is_file() or page.name == "index", page
        assert f'href="{href}"' in home, f"{page} is not in the navigation"
    # the API reference is generated from the docstrings
    api = (site / "api" / "mining" / "index.html").read_text()
    assert "mine_hard_negatives" in api and "relative_margin" in api
    assert "weighted_info_nce" in (site / "api" / "losses" / "index.html").read_text()
