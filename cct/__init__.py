"""Compact Convolutional Transformers: models, device-resident data, training, measurement.

Pure PyTorch: nothing here imports Ray or MLflow, so `python -m cct.train` runs on a bare
GPU machine.
"""

from cct.config import ConfigError, DataConfig, ModelConfig, OptimConfig, TrainConfig
from cct.models import CCT, CCTSettings, create_model, resolve_settings, variant_names

__all__ = [
    "CCT",
    "CCTSettings",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "create_model",
    "resolve_settings",
    "variant_names",
]
