"""Load EMO Model: a checkpoint of the EMO family + its VAE + its audio encoder -> EMO_MODEL."""

from __future__ import annotations

from ..emo_model import demo
from ..emo_model.app.session import Session
from ..emo_model.families import FAMILIES, published_labels, supported_files
from ..emo_model.weights.checkpoints import variants
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
    if value.endswith("/"):  # a family folder: the family it names exactly, else the one its name starts with
        key = name.lower()
        folders = [fam for fam in FAMILIES if "/" in fam.sources]
        squash = lambda text: text.replace("_", "").replace("-", "")  # noqa: E731  ("<family>_v1", "<family>-x", ...)
        named = [fam for fam in folders if key in fam.folder_names or squash(key).startswith(squash(fam.name))
                 or any(f.folder == "emo" and f.dest.split("/")[0] == key for f in fam.downloads)]
        named = named or [fam for fam in folders if key.startswith(fam.name.split("-")[0])]  # "<family>_weights/"
        return named[0].sources["/"] if len(named) == 1 else None
    owners = [fam for fam in FAMILIES if name in fam.sources and name != "/"]
    owner = next((fam for fam in owners if folder in fam.folder_names), owners[0] if owners else None)
    return owner.sources[name] if owner else None


def hub_files(folder: str, value: str, optional: bool = False) -> list:
    """The published files (families' ``downloads``; their optional extras only with ``optional``) a list entry of a
    model folder stands for: the file itself, or every file under a folder entry ("sd-vae-ft-mse/")."""
    name = value.rstrip("/")
    found = [f for fam in FAMILIES for f in fam.downloads
             if f.folder == folder and (optional or not f.optional) and (f.dest == value or f.dest.startswith(name + "/"))]
    return list(dict.fromkeys(found))


def hub_source(folder: str, value: str) -> str | None:
    """'config.json + diffusion_pytorch_model.safetensors, from Hugging Face: stabilityai/sd-vae-ft-mse' for an entry
    whose files some family downloads (None if none). Also for the optional files (e.g. models/emo's "face/...")."""
    files = hub_files(folder, value, optional=True)
    if not files:
        return None
    repos = {}
    for f in files:
        repos.setdefault(f.repo, []).append(f.path)
    return "; ".join(f"{' + '.join(paths)}, from Hugging Face: {repo}" for repo, paths in repos.items())


def published_entries(folder: str) -> str:
    """Every entry of a model folder that some family publishes, with where it comes from, e.g. "sd-vae-ft-mse/
    (config.json + diffusion_pytorch_model.safetensors, from Hugging Face: stabilityai/sd-vae-ft-mse)": the fallback
    of a missing-file line whose entry no family names."""
    entries = dict.fromkeys(f.dest.split("/", 1)[0] + ("/" if "/" in f.dest else "")
                            for fam in FAMILIES for f in fam.downloads if f.folder == folder and not f.optional)
    return "; or ".join(f"{entry} ({hub_source(folder, entry)})" for entry in entries)


def _place(folder: str, value: str) -> str:
    roots = _comfy.folder_paths_for(folder)
    default = _comfy.models_dir() / folder  # ComfyUI/models/<folder> first, then extra folders (extra_model_paths.yaml)
    roots.sort(key=lambda root: root != default)
    return (roots[0] / value).as_posix() + ("/" if value.endswith("/") else "") if roots else f"ComfyUI/models/{folder}/{value}"


DOWNLOAD_HINT = "or switch on download_missing to fetch it"


def missing_model_message(value: str) -> str:
    """One line for a model entry that is not in models/emo: the exact place it goes, and where it comes from."""
    source = _source(value) or (FOLDER_SOURCES if value.endswith("/") and FOLDER_SOURCES else supported_files())
    hint = f", {DOWNLOAD_HINT}" if hub_files("emo", value) else ""
    return (
        f"the model {value!r} is not in models/emo: put it at {_place('emo', value)} ({source}), then press R in the browser to "
        f"refresh the list, or pick another model (the workflow's Note lists every file it needs){hint}"
    )


def missing_file_message(what: str, folder: str, value: str, fallback: str) -> str:
    """The same line for another model folder's entry (a VAE, an audio encoder): where it goes, where it comes from."""
    source = hub_source(folder, value) or fallback
    hint = f", {DOWNLOAD_HINT}" if hub_files(folder, value) else ""
    return (
        f"the {what} {value!r} is not in models/{folder}: put it at {_place(folder, value)} ({source}), then press R in the "
        f"browser to refresh the list, or pick another{hint}"
    )


DOWNLOAD_TOOLTIP = (
    "Off (default): nothing is downloaded. On: the files the chosen model, VAE and audio encoder entries need that are not "
    "in ComfyUI's model folders are fetched from Hugging Face before loading (sizes in the log, ComfyUI's progress bar, "
    "checksums verified, an interrupted download resumes). Files already there are never replaced. "
    "The same from a terminal: emo download FAMILY --models ComfyUI/models."
)


def download_missing_files(model: str, vae: str, audio_encoder: str) -> str:
    """Fetch what the entries need and is not there; return what was fetched, in a few words ("" if nothing)."""
    import logging

    from ..emo_model.weights import hub

    wanted = hub_files("emo", model) + hub_files("vae", vae) + hub_files("audio_encoders", audio_encoder)
    wanted = [f for f in dict.fromkeys(wanted) if not any((root / f.dest).exists() for root in _comfy.folder_paths_for(f.folder))]
    if not wanted:
        return ""
    log = logging.getLogger("ComfyUI-EMO")
    try:
        planned = hub.plan(wanted, _comfy.models_dir(), check="size")
        todo = sum(p.todo for p in planned)
        log.info("EMO: downloading %s: %s", hub.size_text(todo),
                 ", ".join(f"{p.label} ({hub.size_text(p.size)}, {p.file.repo})" for p in planned if p.todo))
        hub.check_space(planned)
        bar = _comfy.Progress(max(1, todo // hub.CHUNK))
        got = [0]

        def on_bytes(n: int) -> None:
            got[0] += n
            bar.set(min(got[0], todo) // hub.CHUNK)
            if _comfy.interrupted():
                _comfy.raise_interrupt()

        fetched = hub.fetch(planned, on_bytes=on_bytes, quiet=True)
    except hub.DownloadError as exc:
        raise RuntimeError(f"download_missing: {exc}") from None
    differs = [p.label for p in planned if p.state == "differs"]
    if differs:
        log.warning("EMO: %s differ from the published files; left as they are", ", ".join(differs))
    log.info("EMO: downloaded and verified %s", ", ".join(p.label for p in fetched))
    if not fetched:
        return ""
    return f"downloaded {len(fetched)} files ({hub.size_text(sum(p.size for p in fetched))}), checksums verified"


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
                "download_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model, vae=None, audio_encoder=None, download_missing=None):
        """Refused when queued, as ComfyUI's own list check would, but saying where the missing file goes and where it
        comes from. (ComfyUI then skips its list check for these inputs.) With ``download_missing`` on, an entry whose
        files a family publishes is accepted: the run fetches it."""
        checks = (
            (model, DEMO_ENTRY, "emo", lambda value: missing_model_message(value)),
            (vae, BUNDLED_VAE, "vae", lambda value: missing_file_message("VAE", "vae", value, published_entries("vae") or "sd-vae-ft-mse")),
            (audio_encoder, NO_ENCODER, "audio_encoders",
             lambda value: missing_file_message("audio encoder", "audio_encoders", value,
                                                f"{_encoders_by_family()}: {published_entries('audio_encoders')}")),
        )
        for value, builtin, folder, message in checks:
            if value is None or value == builtin or value in _comfy.list_entries(folder, folders=True):
                continue
            if download_missing and hub_files(folder, value):
                continue
            return message(value)
        return True

    def load(self, model, vae, audio_encoder, dtype, variant, vae_override=None, download_missing=False):
        fetched = ""
        if download_missing:  # opt-in: nothing is downloaded otherwise
            fetched = download_missing_files(model, BUNDLED_VAE if vae_override is not None else vae, audio_encoder)
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
        summary = (fetched + "\n" if fetched else "") + preset_summary(session)
        ui = {"emo_summary": [summary], "emo_preset": [resolved_preset(session)]}  # what 'preset' widgets mean
        return {"ui": ui, "result": (session,)}
