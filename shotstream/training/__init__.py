"""Training infrastructure shared by every stage (see trainer.py for the Stage protocol)."""

from shotstream.training.trainer import (
    DivergenceError,
    OptimizerSpec,
    Stage,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    load_module_weights,
    run_config_class,
    train,
)

__all__ = [
    "DivergenceError",
    "OptimizerSpec",
    "Stage",
    "TrainConfig",
    "Trainer",
    "latest_checkpoint",
    "load_module_weights",
    "run_config_class",
    "train",
]
