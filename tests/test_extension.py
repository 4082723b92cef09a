"""A component written outside the package works by name everywhere: from_config, the
sentence-transformers loss and offline mining (the subclass registers itself by ``kind``)."""

import numpy as np
import pytest
import torch

from hardneg.losses.checks import check_number
from hardneg.mining.mine import MineConfig, mine_embeddings
from hardneg.negatives import Strategy, Weighting, from_config
from tests.negatives_reference import in_batch_valid, ref_weighted_infonce, two_view_pos, unit


class FarOnly(Weighting):
    """Keep only candidates with similarity below ``cap`` (log-weight 0 there, −∞ elsewhere),
    plus a linear bonus ``gain · s`` — a weighting no hardneg module defines."""

    kind = "test_far_only"

    def __init__(self, cap: float = 0.5, gain: float = 1.0) -> None:
        super().__init__()
        self.cap = check_number("weighting option 'cap'", cap, -1.0, 1.0)
        self.gain = check_number("weighting option 'gain'", gain)

    def log_weights(self, S, rows, ctx, valid):
        return torch.where(self.cap > S, self.gain * S, torch.full_like(S, float("-inf")))


def _views(B=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.7 * torch.randn(B, d, generator=g, dtype=torch.float64)


def _reference(z1, z2, cap, gain, t):
    B = z1.shape[0]
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    logw = np.where(cap > S, gain * S, -np.inf)
    return ref_weighted_infonce(z, z, two_view_pos(B), in_batch_valid(B), logw=logw, t=t)


def test_custom_weighting_by_name_in_from_config():
    z1, z2 = _views()
    s = from_config({"name": "ucl", "temperature": 0.4, "weighting": [{"kind": "test_far_only", "cap": 0.3}]})
    assert isinstance(s, Strategy) and type(s.weightings[0]) is FarOnly
    assert s(z1, z2).item() == pytest.approx(_reference(z1, z2, 0.3, 1.0, 0.4), rel=1e-10)


def test_custom_weighting_in_the_sentence_transformers_loss():
    from hardneg.integrations.sentence_transformers import HardNegativeRankingLoss

    g = torch.Generator().manual_seed(3)
    q, p, n = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    loss = HardNegativeRankingLoss(
        None, logit_scale=10.0, strategy={"name": "ucl", "weighting": [{"kind": "test_far_only"}]}
    )
    got = loss.compute_loss_from_embeddings([q, p, n]).item()
    # literal: anchors q, candidates [p; n], positive p_i, π ∝ exp(s) on candidates with s < 0.5
    qn, k = unit(q.numpy()), unit(np.concatenate([p.numpy(), n.numpy()]))
    S = qn @ k.T
    valid = np.ones_like(S, dtype=bool)
    valid[np.arange(5), np.arange(5)] = False
    ref = ref_weighted_infonce(qn, k, list(range(5)), valid, logw=np.where(S < 0.5, S, -np.inf), t=0.1)
    assert got == pytest.approx(ref, rel=1e-9)


def test_custom_weighting_in_mining():
    rng = np.random.default_rng(0)
    c = unit(rng.standard_normal((60, 8)).astype(np.float32))
    q = unit(c[:10] + 0.2 * rng.standard_normal((10, 8)).astype(np.float32))
    pos = np.arange(10)
    cfg = MineConfig(num_negatives=3, range_max=40)
    got = mine_embeddings(q, c, pos, cfg, weighting=[{"kind": "test_far_only", "cap": 0.2}], show_progress=False)
    # literal: the 3 highest-ranked of the top-40 non-positive candidates with cosine below 0.2
    for i in range(10):
        s = c @ q[i]
        order = [j for j in np.argsort(-s, kind="stable") if j != pos[i]][:40]
        want = [j for j in order if s[j] < 0.2][:3]
        assert got.neg_ids[i][got.neg_ids[i] >= 0].tolist() == want


def test_a_kind_taken_by_another_class_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        class Clash(Weighting):  # noqa: F841
            kind = "topk"


def test_custom_weighting_by_name_in_a_training_config(tmp_path):
    """The trainer's ``strategy:`` block reaches the custom kind; its loss on the first batch is the
    reference value computed from the same embeddings."""
    from hardneg.train.config import validate_config
    from hardneg.train.trainer import Trainer

    raw = {
        "data": {"name": "digits", "train_limit": 64, "test_limit": 40},
        "model": {"encoder": "mlp", "hidden": 16, "depth": 1, "head_hidden": 16, "proj_dim": 8},
        "train": {"epochs": 1, "batch_size": 32, "progress": False, "threads": 1},
        "eval": {"knn_k": 5, "probe_max_iter": 10, "linear_probe": False},
        "strategy": {"name": "ucl", "temperature": 0.5, "weighting": [{"kind": "test_far_only", "cap": 0.9}]},
    }
    tr = Trainer(validate_config(raw), tmp_path / "run")
    assert type(tr.loss_fn.weightings[0]) is FarOnly
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    got = tr.loss_fn(z1, z2).item()
    assert got == pytest.approx(_reference(z1, z2, 0.9, 1.0, 0.5), rel=1e-10)
    tr.fit()
    assert (tmp_path / "run" / "model.pt").exists()


# A component by import path: a class with no kind of its own, in a module outside the package,
# named ``"module:Class"`` wherever a kind is accepted.
USER_MODULE = '''
import torch
from hardneg.negatives import Weighting


class NearOnly(Weighting):
    """pi over candidates with similarity above ``floor`` only (log-weight 0 there, -inf elsewhere)."""

    def __init__(self, floor: float = -0.2) -> None:
        super().__init__()
        self.floor = float(floor)

    def log_weights(self, S, rows, ctx, valid):
        return torch.where(S > self.floor, torch.zeros_like(S), torch.full_like(S, float("-inf")))
'''
USER_KIND = "hardneg_user_components:NearOnly"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "hardneg_user_components.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    return tmp_path


def _near_reference(z1, z2, floor, t):
    B = z1.shape[0]
    z = unit(np.concatenate([z1.numpy(), z2.numpy()]))
    S = z @ z.T
    return ref_weighted_infonce(z, z, two_view_pos(B), in_batch_valid(B), logw=np.where(floor < S, 0.0, -np.inf), t=t)


def test_component_by_import_path_from_python_and_back(user_module):
    from hardneg.negatives.registry import strategy_config

    z1, z2 = _views()
    s = from_config({"name": "ucl", "temperature": 0.4, "weighting": [{"kind": USER_KIND, "floor": -0.1}]})
    assert type(s.weightings[0]).__name__ == "NearOnly"
    assert s(z1, z2).item() == pytest.approx(_near_reference(z1, z2, -0.1, 0.4), rel=1e-10)
    # the saved configuration names the class by its path, and rebuilds the same strategy
    cfg = strategy_config(s)
    assert {"kind": USER_KIND, "floor": -0.1} in cfg["weighting"]
    assert from_config(cfg)(z1, z2).item() == pytest.approx(s(z1, z2).item(), rel=1e-12)


def test_component_by_import_path_refused_in_one_line(user_module):
    for kind, why in (("hardneg_no_such_module:X", "cannot be imported"),
                      ("hardneg_user_components:Missing", "has no 'Missing'"),
                      ("hardneg.negatives:Strategy", "must name a subclass of hardneg.negatives.Weighting")):
        with pytest.raises(ValueError, match=why) as e:
            from_config({"name": "ucl", "weighting": [{"kind": kind}]})
        assert "\n" not in str(e.value) and kind in str(e.value)


def test_component_by_import_path_in_a_yaml_config_and_on_the_command_line(user_module, tmp_path, capsys):
    import yaml

    from hardneg.cli.app import main
    from hardneg.train.config import validate_config
    from hardneg.train.trainer import Trainer

    raw = {
        "data": {"name": "digits", "train_limit": 64, "test_limit": 40},
        "model": {"encoder": "mlp", "hidden": 16, "depth": 1, "head_hidden": 16, "proj_dim": 8},
        "train": {"epochs": 1, "batch_size": 32, "progress": False, "threads": 1},
        "eval": {"knn_k": 5, "probe_max_iter": 10, "linear_probe": False},
        "strategy": {"name": "ucl", "temperature": 0.5, "weighting": [{"kind": USER_KIND, "floor": 0.0}]},
    }
    tr = Trainer(validate_config(raw), tmp_path / "direct")
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    assert tr.loss_fn(z1, z2).item() == pytest.approx(_near_reference(z1, z2, 0.0, 0.5), rel=1e-10)
    tr.close()
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(conf), "--out", str(tmp_path / "run")])
    assert e.value.code == 0
    assert USER_KIND in (tmp_path / "run" / "config.yaml").read_text()
    assert (tmp_path / "run" / "model.pt").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["strategies", "ucl", "--option", f"weighting=[{{kind: '{USER_KIND}', floor: 0.25}}]"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "NearOnly" in out, out
