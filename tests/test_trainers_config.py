"""Trainer config: strict keys and types, YAML/JSON round trip, resolved defaults."""

import json

import pytest

from trainers.config import Config, config_from_dict, config_to_dict, load_config, save_config


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) optim.lerning_rate"):
        config_from_dict({"optim": {"lerning_rate": 1e-4}})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) modle"):
        config_from_dict({"modle": {}})


def test_types_and_choices_are_checked():
    with pytest.raises(ValueError, match="config key train.batch_size must be int, got '2'"):
        config_from_dict({"train": {"batch_size": "2"}})
    with pytest.raises(ValueError, match=r"model.mode must be one of \('lora', 'full'\), got 'qlora'"):
        config_from_dict({"model": {"mode": "qlora"}})
    with pytest.raises(ValueError, match="data.resolution must be a multiple of 32, got 1000"):
        config_from_dict({"data": {"resolution": 1000}})
    with pytest.raises(ValueError, match="weights_dtype is 'bf16' but train.mixed_precision is 'no'"):
        config_from_dict({"train": {"mixed_precision": "no"}})
    with pytest.raises(ValueError, match="both false"):
        config_from_dict({"distill": {"scm": False, "ladd": False}})
    with pytest.raises(ValueError, match="distill.head_blocks must hold int values"):
        config_from_dict({"distill": {"head_blocks": [2.5]}})
    with pytest.raises(ValueError, match="config section model. must be a mapping"):
        config_from_dict({"model": [1]})


def test_fsdp_refuses_what_it_cannot_shard():
    with pytest.raises(ValueError, match="'fsdp' needs optim.optimizer 'adamw': adafactor factors"):
        config_from_dict({"train": {"distributed": "fsdp"}, "optim": {"optimizer": "adafactor"}})
    with pytest.raises(ValueError, match="'fsdp' supports train.mixed_precision 'bf16' or 'no', got 'fp16'"):
        config_from_dict({"train": {"distributed": "fsdp", "mixed_precision": "fp16"}, "model": {"weights_dtype": "fp16"}})
    control = {"mode": "train", "backbone": "sprint.safetensors"}
    with pytest.raises(ValueError, match="controlnet.mode 'train' trains a ControlNet on a frozen backbone, use"):
        config_from_dict({"train": {"distributed": "fsdp"}, "controlnet": control,
                          "distill": {"scm": False, "ladd": False}})
    assert config_from_dict({"train": {"distributed": "fsdp"}, "model": {"mode": "full"}}).train.distributed == "fsdp"
    # the same settings with DDP are accepted
    config_from_dict({"optim": {"optimizer": "adafactor"}, "controlnet": control, "distill": {"scm": False, "ladd": False}})


def test_ints_become_floats_and_lr_defaults_follow_the_mode():
    cfg = config_from_dict({"optim": {"weight_decay": 0}, "model": {"mode": "full"}})
    assert isinstance(cfg.optim.weight_decay, float)
    assert cfg.optim.lr == 2e-6 and cfg.optim.disc_lr == 2e-6
    cfg = config_from_dict({"optim": {"lr": 3e-4}})
    assert cfg.model.mode == "lora" and cfg.optim.lr == 3e-4 and cfg.optim.disc_lr == 3e-4


def test_yaml_and_json_round_trip(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  lora_rank: 8\ntrain:\n  max_steps: 7\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.lora_rank == 8 and cfg.train.max_steps == 7
    save_config(cfg, tmp_path / "resolved.json")
    again = load_config(tmp_path / "resolved.json")
    assert again == cfg
    assert json.loads((tmp_path / "resolved.json").read_text())["optim"]["lr"] == 1e-4
    assert config_to_dict(Config())["distill"]["head_blocks"] == [2, 8, 14, 19]


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(ValueError, match="must end in .yaml, .yml or .json"):
        load_config(tmp_path / "c.toml")


def test_example_configs_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "trainers" / "configs"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) == 6
    for path in files:
        cfg = load_config(path)
        assert cfg.train.distributed == ("fsdp" if path.stem.endswith("_fsdp") else "ddp")
        assert cfg.train.mixed_precision == "bf16"
        if cfg.personalize.enabled:
            assert cfg.model.teacher and cfg.personalize.sprint and cfg.model.mode == "lora"
        if cfg.controlnet.mode == "off":
            assert cfg.model.teacher
        else:  # the teacher's base comes from the ControlNet file
            assert cfg.controlnet.backbone and cfg.controlnet.teacher_controlnet and cfg.controlnet.hed_model
