"""Model hyper-parameters are declared once (type and bounds on the dataclass field) and enforced twice: by the
dataclass on torch-only machines and by pydantic in a training config's ``model`` section. The two must agree on
every field of every family, and the section must keep a preset's own values."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest

from finegrain.trainables.model_config import ModelConfigError, check_field
from finegrain.trainables.protocol import FAMILIES
from finegrain.trainables.train_config import ConfigError

#: values every field is tried with: types, bounds edges, non-finite numbers, text, null, lists
PROBES = [True, False, 0, 1, 2, 3, -1, 8, 0.0, 0.5, 1.0, 1.5, -0.5, 1e4, math.nan, math.inf, -math.inf, "x", "1",
          "rk4", "euler", "dopri5", "exact", "hutchinson", "cyclic", "constant", None, [], [1], [2, 1], [3], [1.0],
          (1, 2), {"a": 1}]


def _config_classes():
    out = {}
    for name, fam in FAMILIES.items():
        if fam.config:
            module, cls = fam.config.split(":")
            train_cls = getattr(importlib.import_module(module), cls)
            model_cls = next(iter(train_cls.PRESETS.values()))
            model_cls = getattr(model_cls, "__self__", model_cls)  # a classmethod preset -> its class
            out[model_cls.__name__] = (train_cls, model_cls)
    return sorted(out.items())


CLASSES = _config_classes()


@pytest.mark.parametrize("name,classes", CLASSES, ids=[c[0] for c in CLASSES])
def test_dataclass_and_pydantic_section_agree_on_every_field(name, classes):
    train_cls, model_cls = classes
    section = train_cls.model_fields["model"].annotation
    fields = [f.name for f in dataclasses.fields(model_cls)]
    assert set(section.model_fields) == set(fields) | {"preset"}
    checked = 0
    for field in fields:
        for value in PROBES:
            problem, _ = check_field(model_cls, field, value)
            try:
                section.model_validate({field: value})
                accepted = True
            except ValueError:
                accepted = False
            assert accepted == (problem is None), f"{name}.{field} = {value!r}: pydantic {accepted}, dataclass {problem}"
            checked += 1
    assert checked == len(fields) * len(PROBES)


def test_bad_fields_are_named_by_both_enforcers():
    from finegrain.trainables.flow.config import FlowConfig
    from finegrain.trainables.flow.train_config import FlowTrainConfig

    for field, value in [("hidden", True), ("hidden", 1.0), ("prev_dropout", 1.5), ("method", "midpoint"),
                         ("rtol", math.nan), ("chiral", "yes")]:
        with pytest.raises(ModelConfigError) as exc:
            FlowConfig(**{field: value})
        assert exc.value.field == field and f"FlowConfig.{field}" in str(exc.value)
        with pytest.raises(ConfigError, match=rf"key 'model\.{field}'"):
            FlowTrainConfig.from_dict({"data": {"shards": "/x"}, "model": {field: value}})


def test_section_keeps_the_presets_values_through_dumps_and_overrides():
    from finegrain.trainables.cvae.config import CVAEConfig
    from finegrain.trainables.cvae.train_config import TrainConfig

    cfg = TrainConfig.from_dict({"data": {"shards": "/x"}, "model": {"preset": "chignolin", "d_latent": 16}})
    assert cfg.model.model_dump() == {"preset": "chignolin", "d_latent": 16}
    again = cfg.with_overrides(["training.max_steps=5"]).with_values({"model.frame_based": True})
    assert again.cvae() == CVAEConfig.chignolin(d_latent=16, frame_based=True, max_steps=5)
    assert again.cvae().grid_width == 5.5 != CVAEConfig().grid_width  # the preset's, not the dataclass default
    # a constraint between fields is named by the field the config names
    with pytest.raises(ConfigError, match=r"key 'model\.d_latent'.*multiple of 8"):
        cfg.with_values({"model.d_latent": 12})
    # lists from YAML become the tuple the dataclass holds
    assert TrainConfig.from_dict({"data": {"shards": "/x"}, "model": {"encoder_strides": [2, 1]}}
                                 ).cvae().encoder_strides == (2, 1)
