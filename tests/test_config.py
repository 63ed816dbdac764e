import json

import pytest

from musc.config import DEFAULT_METHOD, METHODS, MuScConfig
from musc.errors import ConfigError


@pytest.mark.parametrize("values,named", [
    ({"image_size": 0}, "image_size"),
    ({"r_values": ()}, "r_values"),
    ({"r_values": (1, 2)}, "odd"),
    ({"r_values": (3, 3)}, "r_values name an aggregation degree more than once"),
    ({"layers": ()}, "layers"),
    ({"layers": (-1, 3)}, "layers"),
    ({"layers": (5, 5)}, "layers name a block more than once"),
    ({"interval": 0.0}, "interval"),
    ({"interval": 1.5}, "interval"),
    ({"interval_skip": -0.1}, "interval_skip"),
    ({"interval_skip": 0.3}, "interval_skip"),
    ({"rscin_windows": (0, 2)}, "RsCIN windows"),
    ({"subsets": 0}, "subsets"),
    ({"device": "tpu"}, "device"),
    ({"batch_size": 0}, "batch_size"),
    ({"memory_budget_mb": 0}, "memory_budget_mb"),
    ({"score_dtype": "int8"}, "score_dtype"),
    ({"mode": "patchcore"}, "mode"),
    ({"aggregation": "mean"}, "aggregation"),
    ({"map_rule": "max"}, "map_rule"),
    ({"image_score": "top3"}, "image_score"),
    ({"rescoring": "none"}, "rescoring"),
    ({"tile_scale": "big"}, "tile_scale"),
    ({"tile_scale": 0.0}, "tile_scale"),
    ({"tile_scale": 9.0}, "tile_scale"),
    ({"tile_overlap": 0.95}, "tile_overlap"),
    ({"tile_matching": "nearest"}, "tile_matching"),
    ({"engine": "spark"}, "engine"),
    ({"ray_address": "auto"}, "ray engine"),
    ({"projection_dim": 4}, "projection_dim"),
])
def test_validate_names_the_bad_setting(values, named):
    config = MuScConfig(**values)  # constructing only stores values
    with pytest.raises(ConfigError, match=named):
        config.validate()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_preset_is_valid(method):
    config = MuScConfig.for_method(method, device="cpu", subsets=2, tile_overlap=0.1)
    config.validate()
    assert all(getattr(config, key) == value for key, value in METHODS[method].items() if key != "tile_overlap")
    assert DEFAULT_METHOD in METHODS


def test_unknown_method():
    with pytest.raises(ConfigError, match="method must be one of"):
        MuScConfig.for_method("patchcore")


def test_saved_configuration_loads_back(tmp_path):
    config = MuScConfig.for_method(DEFAULT_METHOD, backbone="dinov2_vits14", image_size=224, layers=(2, 5, 8))
    path = tmp_path / "config.json"
    config.save(path, extra={"timings": {"scoring": 1.0}})
    assert json.loads(path.read_text())["timings"] == {"scoring": 1.0}
    assert MuScConfig.load(path) == config
    assert MuScConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown configuration keys: colour"):
        MuScConfig.from_dict({**config.to_dict(), "colour": "red"})
