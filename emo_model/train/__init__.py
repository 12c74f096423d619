"""Training EMO: data preprocessing and the three-stage recipe (paper §3.3), on HF accelerate.

* :mod:`emo_model.train.preprocess` (``python -m emo_model preprocess``): videos -> tar shards of
  3-12 s face-cropped segments with audio features, face masks and head-speed labels.
* :mod:`emo_model.train.head_pose`: the speed-label estimators (a documented optical-flow proxy by
  default; replaceable by name).
* :mod:`emo_model.train.dataset`: streaming reads, per-stage samples, a resumable sampler.
* :mod:`emo_model.train.trainer` (``python -m emo_model train``): stages 1-3, checkpoints in the
  native format, exact resume, samples, DDP / FSDP / DeepSpeed through ``accelerate launch``.

``configs/`` holds example training configs (``emo_stage{1,2,3}.yaml`` full size, ``tiny_stage{1,2,3}.yaml``
for CPU runs), ``accelerate/`` the multi-GPU launcher configs. docs/training.md is the user guide.
Nothing here is imported by the inference code or the ComfyUI nodes.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
ACCELERATE_DIR = Path(__file__).parent / "accelerate"
