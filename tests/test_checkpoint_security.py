"""A checkpoint is data: a crafted ``checkpoint.pt`` runs no code on ``--resume`` (library and command
line), a checkpoint that lacks a field or holds the wrong type is refused with one line naming the file
and the field, and the saved state (CUDA's random state included) round-trips as plain containers."""

import json
import pickle

import pytest
import torch
import yaml

from hardneg import runs
from hardneg.train import checkpoint as ck
from hardneg.train.trainer import Trainer
from tests.cli_helpers import run_cli
from tests.test_train_trainer import BASE, cfg, literal_nt_xent


class _Crafted:
    """Unpickling this calls ``open(marker, "w")``: a file appears when the pickle is executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cli(args, capsys):
    code, _, err = run_cli(args, capsys)
    return code, err


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _cli_run(tmp_path, capsys):
    """A finished 1-epoch run made by ``hardneg train``, and its config file."""
    raw = json.loads(json.dumps(BASE))
    raw["train"].update({"epochs": 1, "threads": 1})
    raw["bounds"]["enabled"] = False
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(raw))
    d = tmp_path / "r"
    assert _cli(["train", "--config", conf, "--out", d], capsys)[0] == 0
    return conf, d


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_checkpoint_runs_no_code_on_resume(tmp_path, capsys, writer):
    conf, d = _cli_run(tmp_path, capsys)
    marker = tmp_path / "code_ran"
    crafted = {**torch.load(d / runs.CHECKPOINT, weights_only=True), "model": _Crafted(marker)}
    with open(d / runs.CHECKPOINT, "wb") as f:
        torch.save(crafted, f) if writer == "torch.save" else pickle.dump(crafted, f)
    # the file is a real attack: unpickled the way pickle does it, it runs the code
    probe = tmp_path / "probe.pt"
    torch.save({"x": _Crafted(tmp_path / "probe_ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe_ran").exists()
    before = _snapshot(d)
    # the library call
    with pytest.raises(ValueError, match=r"^checkpoint .*r/checkpoint\.pt (is refused|cannot be read)") as e:
        ck.load_checkpoint(d)
    assert "\n" not in str(e.value)
    # the command line: one line naming the file, exit 2, nothing changed
    code, err = _cli(["train", "--config", conf, "--out", d, "--resume"], capsys)
    assert code == 2 and err.count("\n") == 0 and err.startswith("hardneg: error: checkpoint ")
    assert str(d / runs.CHECKPOINT) in err
    if writer == "torch.save":  # torch's own format names the callable the file refers to
        assert f"it refers to {open.__module__}.{open.__name__}," in err
    assert not marker.exists()
    assert _snapshot(d) == before


def _real_checkpoint(tmp_path):
    """A run folder with the checkpoint of a finished 1-epoch run."""
    d = tmp_path / "r"
    Trainer(cfg(train__epochs=1), d, loss_fn=literal_nt_xent).fit()
    return d, torch.load(d / runs.CHECKPOINT, weights_only=True)


def test_checkpoint_lacking_a_field_or_of_the_wrong_type_is_named(tmp_path, capsys):
    d, st = _real_checkpoint(tmp_path)
    p = d / runs.CHECKPOINT
    for key in set(ck.FIELDS) - set(ck.OPTIONAL):
        torch.save({k: v for k, v in st.items() if k != key}, p)
        with pytest.raises(ValueError) as e:
            Trainer(cfg(train__epochs=1), d, loss_fn=literal_nt_xent, resume=True)
        assert str(e.value).startswith(f"checkpoint {p} ") and f"lacks {key!r}" in str(e.value)
        assert "\n" not in str(e.value)
    for key, bad in (("step", "7"), ("metrics_bytes", 1.5), ("g_data", [1, 2]), ("epoch", True),
                     ("perm", "x"), ("epoch_loss", [1.0]), ("cuda_rng", [3]), ("batch_idx", -1)):
        torch.save({**st, key: bad}, p)
        with pytest.raises(ValueError, match=rf"^checkpoint {p}: '{key}' must be "):
            ck.load_checkpoint(d)
    # an optional field may be left out: a checkpoint without GPU random states loads with none
    torch.save({k: v for k, v in st.items() if k != "cuda_rng"}, p)
    assert ck.load_checkpoint(d)["cuda_rng"] == []
    torch.save([1, 2], p)
    with pytest.raises(ValueError, match=r"is not a hardneg training checkpoint \(it holds a list\)"):
        ck.load_checkpoint(d)
    # the command line: one line, exit 2, naming the file and the field; the folder is left as it was
    torch.save({k: v for k, v in st.items() if k != "metrics_bytes"}, p)
    raw = json.loads(json.dumps(BASE))
    raw["train"]["epochs"] = 1
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(raw))
    before = _snapshot(d)
    code, err = _cli(["train", "--config", conf, "--out", d, "--resume"], capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert f"checkpoint {p} " in err and "lacks 'metrics_bytes'" in err
    assert _snapshot(d) == before


def _plain(v):
    """True when ``v`` is made of tensors, numbers, strings, None, lists, tuples and dicts only."""
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _plain(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (torch.Tensor, bool, int, float, str))


def test_saved_state_round_trips_as_plain_data(tmp_path):
    """A stateful strategy (MoCHi: a queue, a key encoder, the mixing generator's state, the step
    counter) and the random states: every field written is read back equal by
    ``torch.load(weights_only=True)``."""
    d = tmp_path / "r"
    tr = Trainer(cfg(train__epochs=1, loss__name="mochi", loss__params={"size": 64}), d)
    tr.fit()
    st = tr.state()
    assert set(st) == set(ck.FIELDS)
    assert st["cuda_rng"] == ([] if not torch.cuda.is_available() else torch.cuda.get_rng_state_all())
    back = ck.load_checkpoint(d, tr._config_text)
    assert _plain(back) and set(back) == set(ck.FIELDS)
    assert back["strategy"] is not None and back["key_encoder"] is not None
    for k in ("g_data", "g_aug", "torch_rng"):
        assert torch.equal(back[k], st[k])
    assert back["step"] == st["step"] == 4 and back["metrics_bytes"] == (d / runs.METRICS).stat().st_size
    assert all(torch.equal(back["strategy"][k], v) for k, v in st["strategy"].items() if torch.is_tensor(v))


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
])
def test_resume_restores_the_global_random_state(tmp_path, device):
    """What dropout draws after ``--resume`` equals what it drew after the checkpoint: the global
    random state of the CPU and, on a GPU, of CUDA."""
    d = tmp_path / "r"
    tr = Trainer(cfg(train__epochs=1), d, loss_fn=literal_nt_xent)
    torch.rand(1000, device=device)  # move the generator away from its seeded state
    tr.save_checkpoint()
    tr.close()
    expected = torch.rand(1000, device=device)
    resumed = Trainer(cfg(train__epochs=1), d, loss_fn=literal_nt_xent, resume=True)  # seeds, then restores
    try:
        assert torch.equal(torch.rand(1000, device=device), expected)
    finally:
        resumed.close()
