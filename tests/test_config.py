import dataclasses

import pytest
import yaml

from supcon.config import COMMANDS, Config, fields_for


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = Config(dataset="digits", epochs=3, temperature=0.2)
    cfg.save(tmp_path / "config.yaml")
    assert Config.from_yaml(tmp_path / "config.yaml") == cfg


def test_every_option_has_help_and_at_least_one_command():
    for f in dataclasses.fields(Config):
        assert f.metadata["help"], f.name
        assert set(f.metadata["commands"]) <= set(COMMANDS) and f.metadata["commands"], f.name
    assert {f.name for f in fields_for("compare")} >= {"temperature", "epochs", "linear_lr", "patience"}
    assert "temperature" not in {f.name for f in fields_for("ce")}


def test_unknown_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 2, "temprature": 0.1}))
    with pytest.raises(ValueError, match=r"unknown option\(s\) in .*c.yaml: temprature; valid options: .*temperature"):
        Config.from_yaml(path)


def test_dashes_are_accepted_in_yaml_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch-size: 32\nimage-size: 16\n")
    cfg = Config.from_yaml(path)
    assert (cfg.batch_size, cfg.image_size) == (32, 16)


@pytest.mark.parametrize("changes, message", [
    ({"temperature": 0}, "temperature must be positive"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of auto, sgd, adam, adamw, rmsprop"),
    ({"val_fraction": 1.5}, "val_fraction must be between 0 and 1"),
    ({"crop_scale": 0}, r"crop_scale must be in \(0, 1\]"),
    ({"image_size": -3}, "image_size must be positive"),
    ({"patience": -1}, "must not be negative"),
])
def test_invalid_values_raise_one_line_errors(changes, message):
    with pytest.raises(ValueError, match=message) as err:
        Config(**changes)
    assert "\n" not in str(err.value)


def test_bad_yaml_is_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: [1,\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        Config.from_yaml(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        Config.from_yaml(path)
    with pytest.raises(ValueError, match="config file not found"):
        Config.from_yaml(tmp_path / "missing.yaml")


def test_optimizer_auto_trains_each_method_with_its_own_optimizer_and_rate():
    cfg = Config()
    assert cfg.optimizer == "auto"
    assert (cfg.resolved_optimizer("supcon"), cfg.resolved_lr("supcon")) == ("sgd", 0.1)
    assert (cfg.resolved_optimizer("ce"), cfg.resolved_lr("ce")) == ("adamw", 1e-3)
    # a named optimizer (the study's same-optimizer comparison) trains both, and --lr sets both rates
    same = Config(optimizer="rmsprop", lr=0.01)
    assert {same.resolved_optimizer(m) for m in ("supcon", "ce")} == {"rmsprop"}
    assert same.resolved_lr("ce") == same.resolved_lr("supcon") == 0.01
    assert Config(lr_scale="linear", batch_size=512).resolved_lr("supcon") == 0.1 * 512 / 256
