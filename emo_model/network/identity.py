"""Face-identity tokens (configs with an ``image_proj``; EMO has no such input).

An insightface face-recognition embedding (512 values) goes through the image projection (``proj`` +
LayerNorm ``norm``) to 4 tokens of 768 that both UNets read in ``attn2``.

The embedding (:func:`face_identity_embedding`): the insightface ``FaceAnalysis`` detector + ArcFace
recognition model on the portrait (BGR), the largest face by box area, and its raw ``embedding`` (not
the L2-normalised ``normed_embedding``: the published weights were trained on raw embeddings; the family
module says which original computes it so). insightface is optional and imported only here; its model
pack must already be on disk (nothing is downloaded): ``<models_dir>/insightface/models/antelopev2``
(also accepted as ``<models_dir>/face_analysis/models``, the folder name some originals ship it under) or
``<models_dir>/insightface/models/buffalo_l``.

Neutral fallback: without insightface, its files or a detectable face, the embedding is None and
the identity tokens are ``imageproj(zeros)``: the unconditional identity of the originals (their
guidance branch, and their own choice when no face is found), so identity then comes from
reference-attention alone. Expect somewhat weaker identity preservation in that case; this has not
been measured (no published weights are available here).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..configs import ImageProjConfig

# Where a local insightface model pack may live under the models folder, in order of preference.
INSIGHTFACE_PACKS = ("insightface/models/antelopev2", "face_analysis/models", "insightface/models/buffalo_l")


class IdentityProjection(nn.Module):
    def __init__(self, cfg: ImageProjConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.embed_dim, cfg.tokens * cfg.cross_attention_dim)
        self.norm = nn.LayerNorm(cfg.cross_attention_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, embed_dim] -> [B, tokens, cross_attention_dim]."""
        x = self.proj(embedding.to(self.proj.weight.dtype))
        return self.norm(x.reshape(-1, self.cfg.tokens, self.cfg.cross_attention_dim))


def find_insightface_pack(models_dir: str | os.PathLike) -> Path | None:
    """The first local insightface model pack (a ``models/<pack>`` folder with ``.onnx`` files)."""
    for relative in INSIGHTFACE_PACKS:
        pack = Path(models_dir) / relative
        if pack.is_dir() and any(pack.glob("*.onnx")):
            return pack
    return None


def face_identity_embedding(image: np.ndarray, models_dir: str | os.PathLike | None) -> torch.Tensor | None:
    """The identity embedding of the largest face in ``image`` (H x W x 3 uint8 RGB): float32 [512].

    None (use the neutral identity, see the module docstring) when insightface is not installed,
    its model pack is not under ``models_dir``, or no face is found.
    """
    pack = None if models_dir is None else find_insightface_pack(models_dir)
    if pack is None:
        return None
    app = _face_analysis(str(pack))
    if app is None:
        return None
    faces = app.get(np.ascontiguousarray(image[..., ::-1]))  # insightface reads BGR, as cv2 does
    faces = [f for f in faces if f.get("embedding") is not None]
    if not faces:
        return None
    largest = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
    return torch.from_numpy(np.asarray(largest["embedding"], dtype=np.float32))


@lru_cache(maxsize=2)
def _face_analysis(pack: str):
    """insightface's FaceAnalysis on a local pack (detector + recognition only, CPU), or None."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError:
        return None
    path = Path(pack)
    # FaceAnalysis reads <root>/models/<name> and downloads only when that folder is missing; ours exists.
    root, name = (path.parent, "") if path.name == "models" else (path.parent.parent, path.name)
    try:
        app = FaceAnalysis(
            name=name, root=str(root), allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"]
        )
    except AssertionError:  # insightface's way of saying the pack has no detection model
        return None
    if "recognition" not in app.models:
        return None
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app
