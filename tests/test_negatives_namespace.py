"""`hardneg.negatives` holds the core; each specialised group is imported from its own module. Every
public name lives in exactly one of these places, which the package docstring and the API pages name,
and every component kind is registered by importing the package alone."""

import importlib
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import hardneg.negatives as N
from tests.test_docs_api import _documented, _home

ROOT = Path(__file__).resolve().parents[1]

#: the core, importable from hardneg.negatives
CORE = {
    "Strategy", "create_strategy", "from_config", "list_strategies", "describe_strategies",
    "build_source", "build_filter", "build_weighting",
    "Source", "Filter", "Weighting", "StepContext", "Anchors", "Candidates",
    "InBatch", "MemoryQueue", "MomentumEncoder", "ExternalPool", "Mixing", "AdversarialBank", "NegativeGenerator",
    "LabelFilter", "IdFilter", "SimilarityFilter", "GuideFilter",
    "Uniform", "TopK", "SemiHard", "Tilt", "DistanceWeighted", "ClusterGuided", "Calibrated",
    "Constant", "Linear", "Cosine", "Step", "make_schedule",
}
#: the specialised groups, each imported from its own module
GROUPS = {
    "hardneg.negatives.cross_modal": {"CrossModal", "CrossModalQueue", "CrossModalClusters", "LogitScale", "pair_ids"},
    "hardneg.negatives.pixels": {"PixelGrid", "NeighbourhoodFilter", "InputSimilarityFilter", "Proximity",
                                 "ClassMemory"},
    "hardneg.negatives.text_negatives": {"TextNegatives", "negate", "swap_antonym", "swap_entities", "shuffle_words"},
    "hardneg.negatives.caption_edits": {"EDIT_KINDS", "EditVocabulary", "one_edit_swaps", "swap_colour",
                                        "swap_shape", "swap_size", "swap_count", "swap_relation"},
    "hardneg.negatives.diagnostics": {"DiagnosticsAccumulator", "negative_diagnostics"},
    "hardneg.negatives.filters": {"similarity_drops"},
    "hardneg.negatives.weighting": {"topk_mask", "semihard_mask", "distance_weighted_log_weights"},
    "hardneg.negatives.mixing": {"mochi_mix"},
}


def test_the_package_exports_the_core_only():
    assert set(N.__all__) == CORE and len(N.__all__) == len(CORE)
    public = {n for n, v in vars(N).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == CORE  # no specialised name is reachable from the package as well


def test_each_specialised_name_has_one_documented_home():
    documented = _documented()
    doc = N.__doc__
    for module_name, names in GROUPS.items():
        mod = importlib.import_module(module_name)
        assert f"`{module_name}`" in doc or f"`.{module_name.rsplit('.', 1)[1]}`" in doc, module_name
        declared = getattr(mod, "__all__", None)
        if declared is not None:  # the groups' own modules declare exactly their group
            assert set(declared) == names, module_name
        for name in sorted(names):
            obj = getattr(mod, name)
            assert name not in CORE and not hasattr(N, name), name
            assert f"`{name}`" in doc, f"{name} is not listed in the hardneg.negatives docstring"
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert _home(obj) in documented, f"{module_name}.{name} has no API entry under docs/api/"
    assert all(f"`{name}`" in doc for name in CORE)


def test_importing_the_package_registers_every_kind():
    """A configuration names a specialised component (``cross_modal``, ``neighbourhood``, …) by kind
    after ``import hardneg.negatives`` alone, as it does after the whole package is loaded."""
    code = textwrap.dedent("""
        import json
        import hardneg.negatives
        from hardneg.negatives.filters import FILTERS
        from hardneg.negatives.sources import SOURCES
        from hardneg.negatives.weighting import WEIGHTINGS
        print(json.dumps([sorted(SOURCES), sorted(FILTERS), sorted(WEIGHTINGS)]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    alone = json.loads(out.stdout.strip().splitlines()[-1])
    import hardneg.dense  # noqa: F401  (everything that defines components, loaded in this session)
    import hardneg.integrations.open_clip  # noqa: F401
    from hardneg.negatives.filters import FILTERS
    from hardneg.negatives.sources import SOURCES
    from hardneg.negatives.weighting import WEIGHTINGS

    # hardneg's own kinds: other tests and the docs' snippets register kinds of their own in this session
    everything = [sorted(k for k, cls in t.items() if cls.__module__.startswith("hardneg."))
                  for t in (SOURCES, FILTERS, WEIGHTINGS)]
    assert alone == everything
    assert {"cross_modal", "class_memory"} <= set(alone[0]) and "neighbourhood" in alone[1]
