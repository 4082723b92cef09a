"""Config validation, overrides, the loss mapping and LR schedules."""

import math
import re

import pytest
import torch

from hardneg.cli import main
from hardneg.train.config import CompareConfig, RunConfig, apply_overrides, load_config, validate_config
from hardneg.train.losses_from_config import build_loss
from hardneg.train.trainer import lr_lambda


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ValueError, match=r"train\.epoch: unknown key"):
        validate_config({"train": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"train\.epochs: Input should be a valid integer"):
        validate_config({"train": {"epochs": "three"}})
    with pytest.raises(ValueError, match=r"optim\.lr: Input should be greater than 0"):
        validate_config({"optim": {"lr": -1}})
    with pytest.raises(ValueError, match=r"data\.name"):
        validate_config({"data": {"name": "imagenet"}})
    with pytest.raises(ValueError, match=r"grid: unknown key"):
        validate_config({"grid": {"losses": [{"name": "ucl"}]}}, RunConfig)
    with pytest.raises(ValueError, match="distinct"):
        validate_config({"grid": {"losses": [{"name": "ucl"}], "seeds": [0, 0]}}, CompareConfig)
    with pytest.raises(ValueError, match="crop_scale"):
        validate_config({"augment": {"crop_scale": [0.9, 0.5]}})


def test_overrides_and_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 4}\nloss: {name: hscl, params: {beta: 1.0}}\n")
    c = load_config(p, ["train.epochs=2", "loss.params.beta=0.5", "model.encoder=mlp"])
    assert c.train.epochs == 2 and c.loss.params == {"beta": 0.5} and c.model.encoder == "mlp"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_cli_bad_config_exit_2(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 1, colour: red}\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(p), "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "train.colour: unknown key" in err and "\n" not in err
    assert not (tmp_path / "r").exists()  # nothing created for an invalid config
    with pytest.raises(SystemExit) as e:
        main(["compare", "--config", str(tmp_path / "none.yaml")])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "yaml_text,override,where,new",
    [
        ("strategy: {name: mochi, beta_max: 0.3}\n", None, "strategy.beta_max", "query_mix_max"),
        ("strategy: {name: ucl, source: [in_batch, {kind: mixing, beta_max: 0.3}]}\n", None,
         r"strategy.source\[1\].beta_max", "query_mix_max"),
        ("loss: {name: ucl}\n", "strategy.beta_max=0.3", "beta_max", "query_mix_max"),
        ("loss: {name: ucl}\ninit_temperature: 0.07\n", None, "init_temperature", "temperature"),
        ("strategy: {name: adco, t_neg: 0.05}\n", None, "strategy.t_neg", "bank_temperature"),
    ],
)
def test_a_config_with_a_renamed_option_is_refused_naming_the_option_to_use(
    tmp_path, capsys, yaml_text, override, where, new
):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    args = ["train", "--config", str(p), "--out", str(tmp_path / "r")] + (["--set", override] if override else [])
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hardneg: error: ") and "\n" not in err
    assert re.search(rf"{where}: unknown option '\w+'; the option is '{new}'", err), err
    assert not (tmp_path / "r").exists()


def test_triplet_in_a_config_refuses_a_temperature_naming_tilt_scale():
    with pytest.raises(ValueError, match=r"does not take \['t'\]; it has no softmax temperature .*'tilt_scale'"):
        build_loss("triplet", {"t": 0.5})
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    from hardneg import losses

    got = build_loss("margin", {"beta": 1.0, "tilt_scale": 0.5})(z1, z2, y)
    assert torch.equal(got, losses.margin(z1, z2, y, beta=2.0, tilt_scale=1.0))


def test_build_loss_maps_to_the_named_losses():
    from hardneg import losses

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.equal(build_loss("ucl", {"t": 0.3})(z1, z2, y), losses.ucl(z1, z2, t=0.3))
    assert torch.equal(build_loss("hscl", {"beta": 2.0})(z1, z2, y), losses.hscl(z1, z2, y, beta=2.0))
    assert torch.equal(build_loss("dcl", {"tau_plus": 0.2})(z1, z2, y), losses.dcl(z1, z2, tau_plus=0.2))
    with pytest.raises(ValueError, match=r"does not take \['gamma'\]"):
        build_loss("hucl", {"gamma": 1.0})
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("no_such_loss")
    # other names fall back to the strategy presets of hardneg.negatives.registry
    from hardneg.negatives.registry import create_strategy

    assert torch.equal(build_loss("topk", {"k": 4})(z1, z2, y), create_strategy("topk", k=4)(z1, z2, y))
    with pytest.raises(ValueError, match="unknown option"):
        build_loss("topk", {"kk": 4})


def test_lr_schedules_follow_their_formula():
    c = validate_config({"optim": {"schedule": "cosine", "warmup_steps": 4}})
    f = lr_lambda(c, 24)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for s in (4, 10, 24):
        assert f(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 4) / 20)))
    f = lr_lambda(validate_config({"optim": {"schedule": "step", "step_every": 5, "step_gamma": 0.5}}), 20)
    assert [f(s) for s in (0, 4, 5, 12)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_lambda(validate_config({"optim": {"schedule": "constant"}}), 10)(7) == 1.0
