"""Model configs, presets and checkpoints: `resolve_model(ref) -> ModelSource`.

Weights are loaded by `services.models.checkpoint.load_source_weights` (it imports torch; this
package's top level does not, so the tokenizer service can resolve models cheaply)."""

from services.models.config import ModelConfig, RopeScaling, UnsupportedModelError
from services.models.presets import PRESETS
from services.models.source import ModelNotFoundError, ModelSource, resolve_model

__all__ = [
    "PRESETS",
    "ModelConfig",
    "ModelNotFoundError",
    "ModelSource",
    "RopeScaling",
    "UnsupportedModelError",
    "resolve_model",
]
