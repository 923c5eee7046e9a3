"""Every shipped training config validates with the config class of the family it names (the registry's)."""

from __future__ import annotations

import pytest
import yaml

from finegrain.tests.helpers import CONFIGS
from finegrain.trainables.protocol import FAMILIES, trainer_for
from finegrain.trainables.train_config import ConfigError

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def test_there_is_a_config_for_every_trainable_family():
    named = {(yaml.safe_load(p.read_text()) or {}).get("family") or "cvae" for p in SHIPPED}
    assert named == {name for name, fam in FAMILIES.items() if fam.trainable}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_validates(path, tmp_path):
    family = (yaml.safe_load(path.read_text()) or {}).get("family") or "cvae"
    config_cls, _ = trainer_for(family)
    cfg = config_cls.from_yaml(path, [f"data.shards={tmp_path}"])
    assert cfg.data.shards == tmp_path and cfg.flat()  # every setting renders as an MLflow param
    with pytest.raises(ConfigError, match="model.no_such_field|model': unknown|key 'model"):
        config_cls.from_yaml(path, [f"data.shards={tmp_path}", "model.no_such_field=1"])


@pytest.mark.parametrize("text", ["3e-4", "1E5", "-2.5e+3", ".5", "1.0e-3"])
def test_exponent_floats_are_numbers_on_the_command_line_and_in_files(text, tmp_path):
    """YAML 1.2's float rule (PyYAML's 1.1 reads ``3e-4`` as text): checked against Python's float()."""
    from finegrain.trainables.train_config import parse_override, yaml_load

    assert parse_override(f"model.learning_rate={text}") == ("model.learning_rate", float(text))
    assert yaml_load(f"model:\n  learning_rate: {text}\n") == {"model": {"learning_rate": float(text)}}
    assert parse_override("tracking.run_name=3e") == ("tracking.run_name", "3e")  # not a number stays text
