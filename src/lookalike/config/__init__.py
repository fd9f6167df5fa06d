"""The run config: one typed schema (`schema.py`), with YAML as its serialisation (`loading.py`).

Importing it loads no model and touches no file.
"""

from lookalike.config.loading import (
    DEFAULT_PRESET,
    PRESETS_DIR,
    config_to_yaml,
    iter_fields,
    load_config,
    preset_names,
    save_config,
)
from lookalike.config.schema import (
    Config,
    DatasetConfig,
    GenerateConfig,
    LoraConfig,
    LoraSpec,
    ModelConfig,
    RuntimeConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_PRESET", "PRESETS_DIR", "Config", "DatasetConfig", "GenerateConfig", "LoraConfig", "LoraSpec",
    "ModelConfig", "RuntimeConfig", "TrainConfig", "config_to_yaml", "iter_fields", "load_config",
    "preset_names", "save_config",
]
