"""Load EMO Model: a checkpoint of the EMO family + its VAE + its audio encoder -> EMO_MODEL."""

from __future__ import annotations

from ..emo_model import demo
from ..emo_model.families import FAMILIES, published_labels, supported_files
from ..emo_model.session import Session
from ..emo_model.weights import variants
from . import _comfy
from .presets import preset_summary, resolved_preset

DEMO_ENTRY = "emo-tiny-demo (built in, CPU)"
BUNDLED_VAE = "(bundled with the model / not needed)"
NO_ENCODER = "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)"

ENCODER_FILES = {"wav2vec2": "wav2vec2-base-960h", "whisper": "whisper_tiny.pt"}


def _encoders_by_family() -> str:
    """Each encoder file with the families that need it, e.g. 'wav2vec2-base-960h for A, B; whisper_tiny.pt for C'."""
    users: dict[str, list[str]] = {}
    for fam in FAMILIES:
        kind = fam.config().audio.kind
        if kind in ENCODER_FILES:
            users.setdefault(ENCODER_FILES[kind], []).append(fam.label)
    return "; ".join(f"{name} for {', '.join(labels)}" for name, labels in users.items())


FAMILY_FILES = (
    "Put one of these in ComfyUI/models/emo: " + "; or ".join(fam.files for fam in FAMILIES) + ". Published "
    "families also need sd-vae-ft-mse in models/vae and their audio encoder in models/audio_encoders ("
    + _encoders_by_family() + ")."
)


# where a model file named in a workflow comes from (by file or folder name), for the "missing file" message;
# "/" holds what a family folder is
FOLDER_SOURCES = "; or ".join(where for fam in FAMILIES for name, where in fam.sources.items() if name == "/")


def _source(value: str) -> str | None:
    """Where a workflow's model entry comes from: the family that claims its folder name first, then the first
    family that publishes a file of that name."""
    parts = value.rstrip("/").split("/")
    name, folder = parts[-1], (parts[-2].lower() if len(parts) > 1 else "")
    if value.endswith("/"):  # a family folder: the one family its name starts with ("<family>/", "<family>_weights/"), if any
        named = [fam for fam in FAMILIES if "/" in fam.sources
                 and (name.lower() in fam.folder_names or name.lower().startswith(fam.name.split("-")[0]))]
        return named[0].sources["/"] if len(named) == 1 else None
    owners = [fam for fam in FAMILIES if name in fam.sources and name != "/"]
    owner = next((fam for fam in owners if folder in fam.folder_names), owners[0] if owners else None)
    return owner.sources[name] if owner else None


def missing_model_message(value: str) -> str:
    """One line for a model entry that is not in models/emo: the exact place it goes, and where it comes from."""
    roots = _comfy.folder_paths_for("emo")
    default = _comfy.models_dir() / "emo"  # ComfyUI/models/emo first, then extra folders (extra_model_paths.yaml)
    roots.sort(key=lambda root: root != default)
    place = (roots[0] / value).as_posix() + ("/" if value.endswith("/") else "") if roots else f"ComfyUI/models/emo/{value}"
    source = _source(value) or (FOLDER_SOURCES if value.endswith("/") and FOLDER_SOURCES else supported_files())
    return (
        f"the model {value!r} is not in models/emo: put it at {place} ({source}), then press R in the browser to refresh "
        f"the list, or pick another model (the workflow's Note lists every file it needs)"
    )


class LoadEMOModel:
    DESCRIPTION = (
        "Loads an EMO-family talking-head model (EMO checkpoints trained with this pack, " + published_labels() + ", or the "
        "built-in CPU demo) with the VAE and the audio encoder its family needs. The family is detected from the "
        "tensors, not the file name. " + FAMILY_FILES
    )
    CATEGORY = "EMO"
    FUNCTION = "load"
    RETURN_TYPES = ("EMO_MODEL",)
    RETURN_NAMES = ("emo_model",)
    OUTPUT_TOOLTIPS = ("The loaded model with its preset (fps, clip length, sampler settings); wire it to every EMO node.",)

    @classmethod
    def INPUT_TYPES(cls):
        models = [DEMO_ENTRY] + _comfy.list_entries("emo", folders=True)
        vaes = [BUNDLED_VAE] + _comfy.list_entries("vae", folders=True)
        encoders = [NO_ENCODER] + _comfy.list_entries("audio_encoders", folders=True)
        return {
            "required": {
                "model": (models, {"tooltip": "A file or family folder in models/emo. " + FAMILY_FILES}),
                "vae": (vaes, {"tooltip": "sd-vae-ft-mse from models/vae (folder or vae-ft-mse-840000-ema-pruned.safetensors). The demo model bundles its own tiny VAE. A core VAE wired to the optional input wins."}),
                "audio_encoder": (encoders, {"tooltip": "From models/audio_encoders: " + _encoders_by_family() + ". Not needed by the demo, or when Audio Encode gets a core AUDIO_ENCODER_OUTPUT."}),
                "dtype": (["auto", "fp16", "bf16", "fp32"], {"default": "auto", "tooltip": "Weight precision. auto: bf16 (or fp16) on GPU, fp32 on CPU."}),
                "variant": (list(variants()), {"default": "standard", "tooltip": "For families published in variants with the same tensors: " + "; ".join(f"{name}: {what}" for fam in FAMILIES for name, what in fam.variants.items()) + ". Others: standard."}),
            },
            "optional": {
                "vae_override": ("VAE", {"tooltip": "A core VAE (e.g. from Load VAE) to use instead of the vae list."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        """Refused when queued, as ComfyUI's own list check would, but saying where the missing file goes.
        (ComfyUI then skips its list check for ``model``; vae and audio_encoder keep it.)"""
        if model is None or model == DEMO_ENTRY or model in _comfy.list_entries("emo", folders=True):
            return True
        return missing_model_message(model)

    def load(self, model, vae, audio_encoder, dtype, variant, vae_override=None):
        path = demo.model_path() if model == DEMO_ENTRY else _comfy.resolve("emo", model)
        if model == DEMO_ENTRY and not path.exists():
            raise FileNotFoundError(
                f"the built-in demo model is missing: {path} ships with ComfyUI-EMO; reinstall or update the pack "
                "(or rebuild it with `python -m emo_model make-demo`), or pick a model from models/emo"
            )
        if not path.exists():
            raise FileNotFoundError(f"the model {model!r} is missing. " + FAMILY_FILES)
        device = _comfy.torch_device()
        codec = None
        if vae_override is not None:
            from .vae_adapter import ComfyVAE

            codec = ComfyVAE(vae_override)
        elif vae != BUNDLED_VAE:
            codec = _comfy.resolve("vae", vae)
        encoder = None if audio_encoder == NO_ENCODER else _comfy.resolve("audio_encoders", audio_encoder)
        session = Session.load(
            path,
            vae=codec,
            audio_encoder=encoder,
            device=_comfy.offload_device(),
            dtype=_comfy.pick_dtype(dtype, device),
            variant=variant,
        )
        session.info["run_device"] = str(device)
        ui = {"emo_summary": [preset_summary(session)], "emo_preset": [resolved_preset(session)]}  # what 'preset' widgets mean
        return {"ui": ui, "result": (session,)}
