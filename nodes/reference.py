"""EMO Reference Encode: the portrait -> its latent and ReferenceNet bank, computed once per video."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..emo_model.families import quoted_presets
from ..emo_model.sampling.reference_state import ReferenceState
from . import _comfy
from .presets import resolved_preset


@dataclass
class EMOReference:
    """The EMO_REFERENCE value: the encoded portrait, tied to the model that encoded it."""

    state: ReferenceState
    model_id: int
    model_name: str


class EMOReferenceEncode:
    DESCRIPTION = (
        "Encodes the portrait once per video: its latent and the ReferenceNet features every backbone layer attends to "
        "(reference-attention). Feed it the 'portrait' output of EMO Face Mask (or any image; it is padded to a square "
        "and resized to the model size)."
    )
    CATEGORY = "EMO"
    FUNCTION = "encode"
    RETURN_TYPES = ("EMO_REFERENCE",)
    RETURN_NAMES = ("emo_reference",)
    OUTPUT_TOOLTIPS = ("The encoded portrait for EMO Sampler (use it with the same model).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "emo_model": ("EMO_MODEL", {"tooltip": "From Load EMO Model."}),
                "image": ("IMAGE", {"tooltip": "The portrait, ideally the face-centred crop from EMO Face Mask. Only the first image of a batch is used."}),
                "size": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64, "tooltip": "Generation size in pixels (a multiple of 64). 0 = the model's preset (" + quoted_presets(lambda c: c.preset.resolution) + "). The portrait is padded to a square and resized to it."}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Optional core VAE to encode the portrait with (default: the model's own VAE)."}),
            },
        }

    def encode(self, emo_model, image, size=0, vae=None):
        session = emo_model
        if vae is not None:
            from .vae_adapter import ComfyVAE

            session = type(emo_model)(emo_model.model, ComfyVAE(vae), emo_model.audio_encoder, emo_model.device, emo_model.name, emo_model.info)
        portrait = _comfy.image_at(_comfy.check_image(image, label="image", channels=(1, 3, 4)))  # one line for an empty / 0-255 / meta batch
        with _comfy.running_on(session):
            state = session.encode_reference(portrait, size=size or None, identity_image=portrait, models_dir=str(_comfy.models_dir()))
        result = (EMOReference(state.to("cpu"), id(emo_model.model), emo_model.name),)
        h, w = state.size
        summary = f"portrait encoded at {w}x{h}" + (" (the model's preset size)" if not size else "")
        if state.note:  # the node shows the what; ComfyUI's log the whole line (what to do too)
            short, cut = _comfy.summary_note(state.note)
            logging.getLogger("ComfyUI-EMO").log(logging.WARNING if cut else logging.INFO, "EMO Reference Encode: %s", state.note)
            summary = f"{summary} · {short}" + (" (see the log)" if cut else "")
        return {"ui": {"emo_summary": [summary], "emo_preset": [resolved_preset(emo_model)]}, "result": result}
