"""Weights: checkpoint files read safely, recognised, loaded strictly; the native format; training inits; the hub download.

One module per concept: :mod:`.files` (reading: safetensors, or ``torch.load(weights_only=True)``), :mod:`.shapes`
(matching tensor names and shapes against the known architectures), :mod:`.checkpoints` (what a set of files is and
loading it), :mod:`.native` (our one-file format), :mod:`.training_init` (SD1.5 UNet and AnimateDiff weights as the
start of training), :mod:`.vae_files` (the VAE's files) and :mod:`.hub` (fetching published files). The names most
callers need are importable from the package itself.
"""

from .checkpoints import Checkpoint, inspect_checkpoint, load_emo_model, variants
from .files import TensorFile, WeightsError, open_tensors, read_state_dict
from .native import save_native
from .shapes import MatchReport, closest_config, compare_shapes, model_shapes
from .training_init import InitReport, load_animatediff_motion_module, load_sd15_unet_weights
from .vae_files import load_bundled_vae, load_vae

__all__ = [
    "Checkpoint", "InitReport", "MatchReport", "TensorFile", "WeightsError", "closest_config", "compare_shapes",
    "inspect_checkpoint", "load_animatediff_motion_module", "load_bundled_vae", "load_emo_model", "load_sd15_unet_weights",
    "load_vae", "model_shapes", "open_tensors", "read_state_dict", "save_native", "variants",
]
